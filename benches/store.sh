#!/usr/bin/env bash
# Token issuance and refresh rotation per second through the shared store (issue 14):
# against one Redis and against a Redis Cluster of 3 masters (no replicas), with 1 and with
# 3 gateway replicas sharing it, over plaintext HTTP on loopback.
#
#   benches/store.sh
#
# - issue: POST /oauth/token grant_type=client_credentials (client secret), a new access
#   token and, with `refresh_on_client_credentials`, a new refresh family stored in Redis.
# - rotate: POST /oauth/token grant_type=refresh_token, each request presenting the
#   refresh token the previous answer on that chain gave (wrk Lua: a queue of live tokens,
#   one taken per request, the answer's new one put back), so every request is a real
#   rotation (one atomic script on the family's keys).
# With 3 replicas, one wrk per replica runs at once (CONNS/3 connections each) and the
# figures are summed.
#
# Pinning (2-core machine): wrk and every redis-server on CPU $GEN_CPU, every gateway (one
# worker thread each) on $PROXY_CPU. So 3 replicas share one core: the 3-replica rows show
# what sharing one store costs (contention, cross-replica state), not scaling.
#
# Knobs: DURATION (s, 10), WARMUP (2), CONNS (30), PORT_BASE (18700), GEN_CPU (0),
# PROXY_CPU (1), NO_BUILD=1, KEEP=1, PORTCULLIS_BIN.
# Results: the table on stdout and benches/results/store.csv (overwritten), with the load
# average at each row. See docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-30}
PORT_BASE=${PORT_BASE:-18700}
GEN_CPU=${GEN_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
export PATH="$PATH:/usr/sbin:/sbin"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'store.sh: %s\n' "$*" >&2; exit 1; }
for tool in wrk redis-server redis-cli curl taskset; do
    command -v "$tool" >/dev/null 2>&1 || die "needs $tool (Debian: wrk redis-server redis-tools curl util-linux)"
done
if [ "${NO_BUILD:-0}" != 1 ]; then
    log "building portcullis (release)"
    cargo build --release --quiet --bin portcullis
fi
BIN=${PORTCULLIS_BIN:-$ROOT/target/release/portcullis}

REDIS=$((PORT_BASE + 1))
CLUSTER=($((PORT_BASE + 2)) $((PORT_BASE + 3)) $((PORT_BASE + 4)))
GW=($((PORT_BASE + 10)) $((PORT_BASE + 11)) $((PORT_BASE + 12)))
ADM=($((PORT_BASE + 20)) $((PORT_BASE + 21)) $((PORT_BASE + 22)))
for p in $REDIS "${CLUSTER[@]}" "${GW[@]}" "${ADM[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is in use; set PORT_BASE"; fi
done

WORK=$(mktemp -d /tmp/portcullis-store.XXXXXX)
ETC=$WORK/etc RUN=$WORK/run
mkdir -p "$ETC" "$RUN"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
start() { # name cpu cmd...
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$RUN/$name.out" 2>&1 &
    PIDS+=($!)
}
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on $1 (KEEP=1 keeps the logs)"
}

# Redis: one standalone server, and a cluster of 3 masters.
start redis "$GEN_CPU" redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no
REDIS_PIDS=$!
CLUSTER_PIDS=()
for p in "${CLUSTER[@]}"; do
    mkdir -p "$RUN/c$p"
    start "cluster-$p" "$GEN_CPU" redis-server --port "$p" --bind 127.0.0.1 --save "" --dir "$RUN/c$p" \
        --appendonly no --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000
    CLUSTER_PIDS+=($!)
done
for p in $REDIS "${CLUSTER[@]}"; do wait_port "$p"; done
redis-cli --cluster create "${CLUSTER[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$RUN/cluster-create.out" 2>&1 ||
    die "redis-cli --cluster create failed: $(tail -3 "$RUN/cluster-create.out")"
for _ in $(seq 100); do
    redis-cli -p "${CLUSTER[0]}" cluster info | grep -q 'cluster_state:ok' && break
    sleep 0.1
done

SECRET=bench-secret
HASH=$(printf %s "$SECRET" | "$BIN" hash-secret)
"$BIN" gen-key --out "$WORK/ed25519.pem" >/dev/null
config() { # i store-lines
    cat <<EOF
issuer = "https://bench.local"
[[listener]]
address = "127.0.0.1:${GW[$1]}"
tls = false
[admin]
address = "127.0.0.1:${ADM[$1]}"
[rate_limit]
enabled = false
$2
[[key]]
id = "bench"
file = "$WORK/ed25519.pem"
generate = false
[[client]]
id = "bench"
secret_hash = "$HASH"
grants = ["client_credentials", "refresh_token"]
scopes = ["read"]
refresh_on_client_credentials = true
EOF
}
store_single="[store]
kind = \"redis\"
url = \"redis://127.0.0.1:$REDIS/\"
timeout = \"1s\""
store_cluster="[store]
kind = \"redis\"
cluster = [\"redis://127.0.0.1:${CLUSTER[0]}/\", \"redis://127.0.0.1:${CLUSTER[1]}/\", \"redis://127.0.0.1:${CLUSTER[2]}/\"]
timeout = \"1s\""

cat >"$WORK/issue.lua" <<'EOF'
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=read"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BENCH_BASIC")
EOF
cat >"$WORK/rotate.lua" <<'EOF'
-- A queue of live refresh tokens: each request takes one, each 200 puts the new one back.
local queue, head, tail = {}, 1, 0
init = function(args)
    for t in io.lines(args[1]) do tail = tail + 1; queue[tail] = t end
end
request = function()
    local t = "exhausted"
    if head <= tail then t = queue[head]; queue[head] = nil; head = head + 1 end
    return wrk.format("POST", nil, {
        ["Host"] = wrk.headers["Host"],
        ["Content-Type"] = "application/x-www-form-urlencoded",
        ["Authorization"] = "Basic " .. os.getenv("BENCH_BASIC"),
    }, "grant_type=refresh_token&refresh_token=" .. t)
end
response = function(status, headers, body)
    local t = body:match('"refresh_token":"([^"]+)"')
    if status == 200 and t then tail = tail + 1; queue[tail] = t end
end
EOF
export BENCH_BASIC
BENCH_BASIC=$(printf %s "bench:$SECRET" | base64 -w0)

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pids... -> user+system ticks
    local t=0 pid
    for pid in "$@"; do
        t=$((t + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')))
    done
    echo "$t"
}

CSV=$ROOT/benches/results/store.csv
echo "store,replicas,scenario,req_per_s,gateway_cpu_us_per_req,redis_cpu_us_per_req,non_2xx,load_avg,note" >"$CSV"
GW_PIDS=()
start_gateways() { # store-lines n
    GW_PIDS=()
    local i
    for i in $(seq 0 $(($2 - 1))); do
        config "$i" "$1" >"$ETC/gw$i.toml"
        PORTCULLIS_WORKER_THREADS=1 start "gw$i-$RANDOM" "$PROXY_CPU" "$BIN" serve --config "$ETC/gw$i.toml"
        GW_PIDS+=($!)
    done
    for i in $(seq 0 $(($2 - 1))); do wait_port "${GW[$i]}"; done
}
stop_gateways() {
    local pid
    for pid in "${GW_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${GW_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
# Refresh tokens to start the chains with: CONNS/n per replica, from that replica, plus
# one: wrk calls request() once before the run to check the script (that token is never
# sent, and without the spare one connection would send "exhausted" all along).
seed_tokens() { # n
    local i k per=$((CONNS / $1 + 1))
    for i in $(seq 0 $(($1 - 1))); do
        : >"$WORK/seed$i.txt"
        for k in $(seq "$per"); do
            curl -fsS -u "bench:$SECRET" -d grant_type=client_credentials -d scope=read "http://127.0.0.1:${GW[$i]}/oauth/token" |
                grep -o '"refresh_token":"[^"]*"' | cut -d'"' -f4 >>"$WORK/seed$i.txt"
        done
        [ "$(wc -l <"$WORK/seed$i.txt")" = "$per" ] || die "replica $i gave no refresh tokens"
    done
}
measure() { # store n scenario redis-pids...
    local store=$1 n=$2 scenario=$3 i
    shift 3
    local per=$((CONNS / n)) wrkpids=()
    [ "$scenario" = rotate ] && seed_tokens "$n"
    run_wrk() { # i secs out
        local args=(-t1 -c"$per" -d"$2s" -s "$WORK/$scenario.lua" "http://127.0.0.1:${GW[$1]}/oauth/token")
        [ "$scenario" = rotate ] && args+=(-- "$WORK/seed$1.txt")
        taskset -c "$GEN_CPU" wrk "${args[@]}" >"$3"
    }
    for i in $(seq 0 $((n - 1))); do run_wrk "$i" "$WARMUP" /dev/null & wrkpids+=($!); done
    wait "${wrkpids[@]}"
    [ "$scenario" = rotate ] && seed_tokens "$n"
    local load g0 r0 g1 r1
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    g0=$(cpu_ticks "${GW_PIDS[@]}")
    r0=$(cpu_ticks "$@")
    wrkpids=()
    for i in $(seq 0 $((n - 1))); do run_wrk "$i" "$DURATION" "$WORK/wrk-$store-$n-$scenario-$i.txt" & wrkpids+=($!); done
    wait "${wrkpids[@]}"
    g1=$(cpu_ticks "${GW_PIDS[@]}")
    r1=$(cpu_ticks "$@")
    local rps=0 total=0 bad=0 note="" f
    for i in $(seq 0 $((n - 1))); do
        f=$WORK/wrk-$store-$n-$scenario-$i.txt
        rps=$(awk -v a="$rps" '/^Requests\/sec:/ { printf "%.0f", a + $2 }' "$f")
        total=$((total + $(awk '/requests in/ { print $1 }' "$f")))
        bad=$((bad + $(awk '/Non-2xx/ { print $NF } END { print 0 }' "$f" | head -1)))
        grep -q 'Socket errors' "$f" && note="${note:+$note; }wrk replica $i: $(grep 'Socket errors' "$f" | sed 's/.*: //')"
    done
    [ "$bad" -gt 0 ] && note="${note:+$note; }NOT VALID: $bad answers were not 2xx"
    local gus rus
    gus=$(awk -v t=$((g1 - g0)) -v n="$total" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }')
    rus=$(awk -v t=$((r1 - r0)) -v n="$total" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }')
    echo "$store,$n,$scenario,$rps,$gus,$rus,$bad,$load,\"$note\"" >>"$CSV"
    printf '%-8s %d replica(s)  %-7s %8s req/s  gateway %6s us/req  redis %6s us/req  non-2xx %s  load %s  %s\n' \
        "$store" "$n" "$scenario" "$rps" "$gus" "$rus" "$bad" "$load" "$note"
}

log "measuring: wrk -t1, $CONNS connections in all, -d${DURATION}s (warm-up ${WARMUP}s)"
for store in single cluster; do
    for n in 1 3; do
        if [ "$store" = single ]; then lines=$store_single; rpids=("$REDIS_PIDS"); else lines=$store_cluster; rpids=("${CLUSTER_PIDS[@]}"); fi
        start_gateways "$lines" "$n"
        measure "$store" "$n" issue "${rpids[@]}"
        measure "$store" "$n" rotate "${rpids[@]}"
        stop_gateways
    done
done
log "results in $CSV"
