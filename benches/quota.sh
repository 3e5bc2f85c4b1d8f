#!/usr/bin/env bash
# What a route quota costs on the proxy hit path (issue 14), next to benches/load.sh:
# portcullis with the embedded store and with a Redis store, each serving one route
# without a quota (/api) and one with (/q, a budget far above what the run spends, so
# every request is admitted and pays for the decision), over plaintext HTTP on loopback.
# Then Redis is stopped: the route without a quota must not notice, the quota route falls
# back to the local limiter.
#
#   benches/quota.sh
#
# Pinning (2-core machine), as load.sh: wrk, the upstream (nginx, one worker) and
# redis-server on CPU $GEN_CPU; portcullis (one worker thread) on $PROXY_CPU. Redis on the
# generator's core stands for a Redis on another machine: its own CPU is not charged to
# the gateway, its round trip is.
#
# Knobs: DURATION (s, default 10), WARMUP (2), CONNS (32), PORT_BASE (18500), GEN_CPU (0),
# PROXY_CPU (1), NO_BUILD=1 (use target/release as is), KEEP=1 (keep the work directory).
# Results: the table on stdout and benches/results/quota.csv (overwritten). See
# docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
PORT_BASE=${PORT_BASE:-18500}
GEN_CPU=${GEN_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
export PATH="$PATH:/usr/sbin:/sbin"

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'quota.sh: %s\n' "$*" >&2; exit 1; }
for tool in nginx wrk redis-server redis-cli curl taskset; do
    command -v "$tool" >/dev/null 2>&1 || die "needs $tool (Debian: nginx wrk redis-server curl util-linux)"
done

if [ "${NO_BUILD:-0}" != 1 ]; then
    log "building portcullis (release)"
    cargo build --release --quiet --bin portcullis
fi
BIN=$ROOT/target/release/portcullis

UP=$PORT_BASE REDIS=$((PORT_BASE + 1))
EMB=$((PORT_BASE + 10)) EMBADMIN=$((PORT_BASE + 11))
RED=$((PORT_BASE + 20)) REDADMIN=$((PORT_BASE + 21))
for p in $UP $REDIS $EMB $EMBADMIN $RED $REDADMIN; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is in use; set PORT_BASE"; fi
done

WORK=$(mktemp -d /tmp/portcullis-quota.XXXXXX)
ETC=$WORK/etc RUN=$WORK/run
mkdir -p "$ETC" "$RUN"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

user_line=""
[ "$(id -u)" -eq 0 ] && user_line="user root;"
cat >"$ETC/up.conf" <<EOF
$user_line
worker_processes 1;
daemon off;
pid $RUN/up.pid;
error_log $RUN/up-error.log warn;
events { worker_connections 4096; }
http {
    client_body_temp_path $RUN/body;
    proxy_temp_path $RUN/proxy;
    fastcgi_temp_path $RUN/fastcgi;
    uwsgi_temp_path $RUN/uwsgi;
    scgi_temp_path $RUN/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    access_log off;
    server {
        listen 127.0.0.1:$UP;
        location / { default_type text/plain; return 200 "hello from upstream\n"; }
    }
}
EOF

SECRET=bench-secret
HASH=$(printf %s "$SECRET" | "$BIN" hash-secret)
"$BIN" gen-key --out "$WORK/ed25519.pem" >/dev/null

config() { # listener admin store-lines
    cat <<EOF
issuer = "https://bench.local"
[[listener]]
address = "127.0.0.1:$1"
tls = false
[admin]
address = "127.0.0.1:$2"
[rate_limit]
enabled = false
$3
[[key]]
id = "bench"
file = "$WORK/ed25519.pem"
generate = false
[[client]]
id = "bench"
secret_hash = "$HASH"
grants = ["client_credentials"]
scopes = ["read"]
[[route]]
prefix = "/api"
upstream = "http://127.0.0.1:$UP"
scopes = ["read"]
[[route]]
prefix = "/q"
upstream = "http://127.0.0.1:$UP"
scopes = ["read"]
quota = { per = "client", rate = 1000000, window = "1s", burst = 1000000 }
EOF
}
config "$EMB" "$EMBADMIN" "[store]
path = \"$RUN/emb.redb\"" >"$ETC/embedded.toml"
config "$RED" "$REDADMIN" "[store]
kind = \"redis\"
url = \"redis://127.0.0.1:$REDIS/\"
timeout = \"200ms\"" >"$ETC/redis.toml"

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
    die "nothing listens on $1"
}
start upstream "$GEN_CPU" nginx -p "$WORK" -c "$ETC/up.conf"
start redis "$GEN_CPU" redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no
REDIS_PID=$!
wait_port "$UP"
wait_port "$REDIS"
PORTCULLIS_WORKER_THREADS=1 start embedded "$PROXY_CPU" "$BIN" serve --config "$ETC/embedded.toml"
PORTCULLIS_WORKER_THREADS=1 start redis-gw "$PROXY_CPU" "$BIN" serve --config "$ETC/redis.toml"
wait_port "$EMB"
wait_port "$RED"

TOKEN=$(curl -fsS -u "bench:$SECRET" -d grant_type=client_credentials "http://127.0.0.1:$EMB/oauth/token" |
    sed -e 's/.*"access_token":"\([^"]*\)".*/\1/')
[ -n "$TOKEN" ] || die "no token"
for port in $EMB $RED; do
    for path in /api/hello /q/hello; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port$path")
        [ "$code" = 200 ] || die "GET :$port$path answered $code"
    done
done

CSV=$ROOT/benches/results/quota.csv
echo "scenario,req_per_s,p50_ms,p99_ms,non_2xx" >"$CSV"
measure() { # label port path
    local url="http://127.0.0.1:$2$3" out rps p50 p99 bad
    taskset -c "$GEN_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H "Authorization: Bearer $TOKEN" "$url" >/dev/null
    out=$(taskset -c "$GEN_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "$url")
    rps=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    bad=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
    echo "$1,$rps,$p50,$p99,${bad:-0}" >>"$CSV"
    printf '%-40s %10s req/s  p50 %8s  p99 %8s  non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "${bad:-0}"
}
log "measuring: wrk -t1 -c$CONNS -d${DURATION}s (warm-up ${WARMUP}s)"
measure "embedded, no quota (cache hit)" "$EMB" /api/hello
measure "embedded, quota (local GCRA)" "$EMB" /q/hello
measure "redis, no quota (cache hit)" "$RED" /api/hello
measure "redis, quota (one script per request)" "$RED" /q/hello
log "stopping redis-server"
kill "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
sleep 1
measure "redis down, no quota (cache hit)" "$RED" /api/hello
measure "redis down, quota (local fallback)" "$RED" /q/hello
curl -s "http://127.0.0.1:$REDADMIN/metrics" | grep -E '^portcullis_ratelimit_(shared|fallback_total) ' >&2 || true
log "results in $CSV"
