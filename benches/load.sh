#!/usr/bin/env bash
# Side-by-side load benchmark: direct upstream, nginx (plain reverse proxy), HAProxy 2.6
# (jwt_verify + exp check) and portcullis (cache hit, cache miss, 401, token endpoint, and
# hit and miss for ES256 tokens of a trusted external issuer: a second portcullis process
# as the IdP, serving discovery and its JWK Set), over HTTP and over TLS, on loopback.
# One command:
#
#   benches/load.sh
#
# Pinning (2-core machine): the load generator (wrk) and the upstream (nginx, one worker)
# share CPU $GEN_CPU; the proxy under test (nginx one worker / HAProxy nbthread 1 /
# portcullis one worker thread) runs on CPU $PROXY_CPU. All proxies stay up for the whole
# run; only the one being measured gets traffic.
#
# Knobs (environment): DURATION (s, default 10), WARMUP (s, 2), CONNS (32), ROUNDS (1;
# the table shows the median of each column over the rounds), PORT_BASE (18000),
# GEN_CPU (0), PROXY_CPU (1), MISS_TOKENS (50000), CACHE_TOKENS (1024),
# ONLY (extended regex over "proto/scenario", e.g. 'portcullis'), RSS_TOKENS
# (1000000; 0 skips the memory bench), KEEP=1 keeps the work directory, NO_BUILD=1 uses
# the binaries already in target/release, PERF (extended regex over "proto/scenario":
# `perf record` the portcullis process during those runs; reports land in
# benches/results/perf-*.txt).
#
# Besides wrk's req/s and latency, each row has the CPU time the process under test used
# per request (user + system, all its threads; for "direct" the upstream's): on a shared
# machine it moves less than throughput does.
#
# Results: the table on stdout, benches/results/load.{csv,json} and benches/results/rss.json,
# overwritten by each run: one latest file per kind (earlier runs live in git history).
# See docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-1}
PORT_BASE=${PORT_BASE:-18000}
GEN_CPU=${GEN_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
MISS_TOKENS=${MISS_TOKENS:-50000}
CACHE_TOKENS=${CACHE_TOKENS:-1024}
ONLY=${ONLY:-}
RSS_TOKENS=${RSS_TOKENS:-1000000}
PATH_UNDER_TEST=/api/hello

# The miss row means nothing if the rotated tokens fit in the cache.
[ "$MISS_TOKENS" -gt $((CACHE_TOKENS * 2)) ] || {
    echo "load.sh: MISS_TOKENS ($MISS_TOKENS) must be well above CACHE_TOKENS ($CACHE_TOKENS)" >&2
    exit 1
}

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'load.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
# 1. What it needs: Debian's nginx, haproxy, wrk (and openssl, curl, procps); a release build.
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
    log "installing ${need[*]} (apt-get)"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"
# The packages may start system instances on port 80; ours use their own ports and configs.

[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPUs (generator+upstream on one, proxy on the other)"

if [ "${NO_BUILD:-0}" != 1 ]; then
    log "building portcullis and the bench helper (release)"
    cargo build --release --quiet --bin portcullis --example loadkit
fi
BIN=${PORTCULLIS_BIN:-$ROOT/target/release/portcullis}
KIT=$ROOT/target/release/examples/loadkit

for p in $(seq "$PORT_BASE" $((PORT_BASE + 40))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "port $p is in use; set PORT_BASE to a free range of 40 ports"
    fi
done
UP=$PORT_BASE UPS=$((PORT_BASE + 1))
NGX=$((PORT_BASE + 10)) NGXS=$((PORT_BASE + 11))
HAP=$((PORT_BASE + 20)) HAPS=$((PORT_BASE + 21))
PC=$((PORT_BASE + 30)) PCS=$((PORT_BASE + 31)) PCADMIN=$((PORT_BASE + 39))
BARE=$((PORT_BASE + 35))
IDP=$((PORT_BASE + 36))

WORK=$(mktemp -d /tmp/portcullis-load.XXXXXX)
chmod 755 "$WORK"
# portcullis watches the directories of its config and TLS files for changes: keep
# everything written during the run (logs, store, temp files) out of etc/.
ETC=$WORK/etc RUN=$WORK/run
mkdir -p "$ETC" "$RUN"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------
# 2. One self-signed certificate for every TLS listener; keys; configs.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$ETC/tls.key" -out "$ETC/tls.crt" 2>/dev/null
cat "$ETC/tls.crt" "$ETC/tls.key" >"$ETC/tls.pem"

SECRET=bench-secret
HASH=$(printf %s "$SECRET" | "$BIN" hash-secret)
ISSUER=https://bench.local

# portcullis: EdDSA signs (token endpoint); the ES256 key verifies the tokens minted below,
# which HAProxy verifies too (HAProxy 2.6 has no EdDSA).
cat >"$ETC/portcullis.toml" <<EOF
issuer = "$ISSUER"
[[listener]]
address = "127.0.0.1:$PC"
tls = false
[[listener]]
address = "127.0.0.1:$PCS"
tls = true
[tls]
cert = "$ETC/tls.crt"
key = "$ETC/tls.key"
[admin]
address = "127.0.0.1:$PCADMIN"
[cache]
max_tokens = $CACHE_TOKENS
# Every request comes from one address: the per-IP limit would answer most of the token
# endpoint's with 429 (measuring the limiter, not issuance).
[rate_limit]
enabled = false
[store]
path = "$RUN/portcullis.redb"
[[key]]
id = "bench-ed25519"
algorithm = "EdDSA"
file = "$WORK/ed25519.pem"
[[key]]
id = "bench-es256"
algorithm = "ES256"
file = "$WORK/es256.pem"
active = false
[[client]]
id = "bench"
secret_hash = "$HASH"
grants = ["client_credentials"]
scopes = ["read"]
[[route]]
prefix = "/api"
upstream = "http://127.0.0.1:$UP"
scopes = ["read"]
# The external-issuer rows: tokens of the IdP below, on a route that accepts only them.
[[route]]
prefix = "/ext"
upstream = "http://127.0.0.1:$UP"
scopes = ["read"]
issuers = ["idp"]
[[trusted_issuer]]
name = "idp"
issuer = "http://127.0.0.1:$IDP"
algorithms = ["ES256"]
audience = "http://127.0.0.1:$IDP"
EOF
# The IdP: another portcullis, plaintext on loopback, signing with its own ES256 key;
# `loadkit mint` with this config makes its tokens (the gateway finds its keys by discovery).
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/idp-es256.pem" 2>/dev/null
cat >"$ETC/idp.toml" <<EOF
issuer = "http://127.0.0.1:$IDP"
[[listener]]
address = "127.0.0.1:$IDP"
tls = false
[admin]
enabled = false
[store]
path = "$RUN/idp.redb"
[[key]]
id = "idp-es256"
algorithm = "ES256"
file = "$WORK/idp-es256.pem"
[[client]]
id = "bench"
secret_hash = "$HASH"
grants = ["client_credentials"]
scopes = ["read"]
EOF
# The same ES256 key as the only (active) one: what `loadkit mint` signs with.
sed -e '/^\[\[key\]\]$/,$d' "$ETC/portcullis.toml" >"$ETC/mint.toml"
cat >>"$ETC/mint.toml" <<EOF
[[key]]
id = "bench-es256"
algorithm = "ES256"
file = "$WORK/es256.pem"
[[client]]
id = "bench"
secret_hash = "$HASH"
grants = ["client_credentials"]
scopes = ["read"]
EOF
log "minting 1 + $MISS_TOKENS ES256 tokens"
"$KIT" mint --config "$ETC/mint.toml" --count 1 --out "$WORK/token.txt"
"$KIT" mint --config "$ETC/mint.toml" --count "$MISS_TOKENS" --out "$WORK/tokens.txt"
log "minting 1 + $MISS_TOKENS ES256 tokens of the external issuer"
"$KIT" mint --config "$ETC/idp.toml" --count 1 --out "$WORK/ext-token.txt"
"$KIT" mint --config "$ETC/idp.toml" --count "$MISS_TOKENS" --out "$WORK/ext-tokens.txt"
openssl pkey -in "$WORK/es256.pem" -pubout -out "$WORK/es256.pub.pem"
TOKEN=$(cat "$WORK/token.txt")
EXT_TOKEN=$(cat "$WORK/ext-token.txt")

user_line=""
[ "$(id -u)" -eq 0 ] && user_line="user root;"
nginx_common() {
    cat <<EOF
$user_line
worker_processes 1;
daemon off;
pid $RUN/$1.pid;
error_log $RUN/$1-error.log warn;
events { worker_connections 4096; }
http {
    client_body_temp_path $RUN/$1-body;
    proxy_temp_path $RUN/$1-proxy;
    fastcgi_temp_path $RUN/$1-fastcgi;
    uwsgi_temp_path $RUN/$1-uwsgi;
    scgi_temp_path $RUN/$1-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    ssl_certificate $ETC/tls.crt;
    ssl_certificate_key $ETC/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
EOF
}
# The upstream: a fixed small body, no logging.
{
    nginx_common up
    cat <<EOF
    access_log off;
    server {
        listen 127.0.0.1:$UP;
        listen 127.0.0.1:$UPS ssl;
        location / { default_type text/plain; return 200 "hello from upstream\n"; }
    }
}
EOF
} >"$ETC/up.conf"
# nginx as a plain reverse proxy: pooled keep-alive upstream, X-Forwarded-*, an access log
# line per request (buffered, as portcullis's is).
{
    nginx_common nginx
    cat <<EOF
    access_log $RUN/nginx-access.log combined buffer=64k flush=1s;
    upstream up { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:$NGX;
        listen 127.0.0.1:$NGXS ssl;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
} >"$ETC/nginx.conf"
# HAProxy 2.6: jwt_verify with the algorithm pinned here (never taken from the token) and
# the public key as a PEM file, then exp against the clock via jwt_payload_query.
cat >"$ETC/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:$HAP
    bind 127.0.0.1:$HAPS ssl crt $ETC/tls.pem alpn http/1.1
    option forwardfor
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.now) date
    http-request deny status 401 unless { var(txn.bearer),jwt_verify("ES256","$WORK/es256.pub.pem") -m int 1 }
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request deny status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }
    default_backend be
backend be
    server up 127.0.0.1:$UP maxconn 1000
EOF
haproxy -c -q -f "$ETC/haproxy.cfg" || die "haproxy config refused"

# ---------------------------------------------------------------------------------------
# 3. Start everything, pinned.
start() { # name cpu cmd...
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$RUN/$name.out" 2>&1 &
    PIDS+=($!)
}
# The IdP first: the gateway fetches its keys in the background at start.
start idp "$GEN_CPU" "$BIN" serve --config "$ETC/idp.toml"
start upstream "$GEN_CPU" nginx -p "$WORK" -c "$ETC/up.conf"
UPSTREAM_PID=$!
start nginx "$PROXY_CPU" nginx -p "$WORK" -c "$ETC/nginx.conf"
NGINX_PID=$!
start haproxy "$PROXY_CPU" haproxy -db -f "$ETC/haproxy.cfg"
HAPROXY_PID=$!
PORTCULLIS_WORKER_THREADS=1 start portcullis "$PROXY_CPU" "$BIN" serve --config "$ETC/portcullis.toml"
PORTCULLIS_PID=$!
# The floor: the least a hyper + tokio proxy does (no auth, no header work, no log).
start hyper-floor "$PROXY_CPU" "$KIT" bare-proxy --listen "127.0.0.1:$BARE" --upstream "127.0.0.1:$UP"
BARE_PID=$!

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on $1 (logs in $WORK; KEEP=1 keeps them)"
}
for p in $IDP $UP $UPS $NGX $NGXS $HAP $HAPS $PC $PCS $PCADMIN $BARE; do wait_port "$p"; done
for _ in $(seq 100); do
    [ "$(curl -s "http://127.0.0.1:$PCADMIN/metrics" | awk '$1 == "portcullis_issuer_keys{issuer=\"idp\"}" { print $2 }')" = 1 ] && break
    sleep 0.1
done

# ---------------------------------------------------------------------------------------
# 4. Scenarios.
cat >"$WORK/bearer.lua" <<'EOF'
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
EOF
cat >"$WORK/extbearer.lua" <<'EOF'
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_EXT_TOKEN")
EOF
cat >"$WORK/rotate.lua" <<'EOF'
-- Every request carries the next of many distinct tokens (more than the cache holds).
-- Built in init, after wrk has set the Host header (a request without one is a 400).
local reqs, i = {}, 0
init = function()
    for t in io.lines(os.getenv(BENCH_TOKENS_VAR or "BENCH_TOKENS")) do
        reqs[#reqs + 1] = wrk.format("GET", nil, { ["Host"] = wrk.headers["Host"], ["Authorization"] = "Bearer " .. t })
    end
end
request = function()
    i = i % #reqs + 1
    return reqs[i]
end
EOF
{ echo 'BENCH_TOKENS_VAR = "BENCH_EXT_TOKENS"'; cat "$WORK/rotate.lua"; } >"$WORK/extrotate.lua"
cat >"$WORK/token.lua" <<'EOF'
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=read"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BENCH_BASIC")
EOF
BASIC=$(printf %s "bench:$SECRET" | base64 -w0)
export BENCH_TOKEN=$TOKEN BENCH_TOKENS=$WORK/tokens.txt BENCH_BASIC=$BASIC
export BENCH_EXT_TOKEN=$EXT_TOKEN BENCH_EXT_TOKENS=$WORK/ext-tokens.txt

# scenario -> "port_http port_https path lua expected_status"
declare -A SC=(
    [direct]="$UP $UPS $PATH_UNDER_TEST bearer 200"
    [nginx]="$NGX $NGXS $PATH_UNDER_TEST bearer 200"
    [hyper-floor]="$BARE - $PATH_UNDER_TEST bearer 200"
    [haproxy-jwt]="$HAP $HAPS $PATH_UNDER_TEST bearer 200"
    [portcullis-hit]="$PC $PCS $PATH_UNDER_TEST bearer 200"
    [portcullis-miss]="$PC $PCS $PATH_UNDER_TEST rotate 200"
    [portcullis-401]="$PC $PCS $PATH_UNDER_TEST none 401"
    [portcullis-token]="$PC $PCS /oauth/token token 200"
    [portcullis-ext-hit]="$PC $PCS /ext/hello extbearer 200"
    [portcullis-ext-miss]="$PC $PCS /ext/hello extrotate 200"
)
ORDER=(direct nginx hyper-floor haproxy-jwt portcullis-hit portcullis-miss portcullis-401 portcullis-token
    portcullis-ext-hit portcullis-ext-miss)

# Check each endpoint answers as expected before measuring it.
check() { # proto scenario url lua want
    local args=(-s -k -o /dev/null -w '%{http_code}')
    case $4 in
        bearer | rotate) args+=(-H "Authorization: Bearer $TOKEN") ;;
        extbearer | extrotate) args+=(-H "Authorization: Bearer $EXT_TOKEN") ;;
        token) args+=(-u "bench:$SECRET" -d grant_type=client_credentials -d scope=read) ;;
    esac
    local got
    got=$(curl "${args[@]}" "$3") || true
    [ "$got" = "$5" ] || die "$1/$2: $3 answered $got, expected $5"
}

# CPU time used so far by these processes, all threads: "user system" in clock ticks.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() {
    local user=0 sys=0 pid u s
    for pid in "$@"; do
        # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
        read -r u s < <(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12, $13 }')
        user=$((user + u)) sys=$((sys + s))
    done
    echo "$user $sys"
}

metric() { curl -s "http://127.0.0.1:$PCADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

to_ms() { # wrk latency ("812.00us", "1.20ms", "1.01s") -> milliseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}

RAW=$WORK/raw.tsv
: >"$RAW"
run() { # round proto scenario
    local round=$1 proto=$2 name=$3
    # shellcheck disable=SC2086
    set -- ${SC[$name]}
    local port=$1 path=$3 lua=$4 want=$5
    [ "$proto" = https ] && port=$2
    [ "$port" = - ] && return 0
    local url="$proto://127.0.0.1:$port$path"
    check "$proto" "$name" "$url" "$lua" "$want"
    local script=()
    [ "$lua" != none ] && script=(-s "$WORK/$lua.lua")
    if [ "$WARMUP" -gt 0 ]; then
        taskset -c "$GEN_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "${script[@]}" "$url" >/dev/null
    fi
    local pids
    case $name in
        direct) pids=$(pgrep -P "$UPSTREAM_PID" | tr '\n' ' ') ;;
        nginx) pids=$(pgrep -P "$NGINX_PID" | tr '\n' ' ') ;;
        haproxy-jwt) pids=$HAPROXY_PID ;;
        hyper-floor) pids=$BARE_PID ;;
        *) pids=$PORTCULLIS_PID ;;
    esac
    local user0 sys0
    read -r user0 sys0 < <(cpu_ticks $pids)
    local hits0 miss0 note=""
    hits0=$(metric portcullis_validation_cache_hits_total)
    miss0=$(metric portcullis_validation_cache_misses_total)
    local out perf_pid=""
    if [ -n "${PERF:-}" ] && [[ "$proto/$name" =~ $PERF ]]; then
        mkdir -p "$ROOT/benches/results"
        perf record -q -F 1999 ${PERF_CALLGRAPH:+--call-graph $PERF_CALLGRAPH} -p "$PORTCULLIS_PID" \
            -o "$WORK/perf-$proto-$name.data" -- sleep "$DURATION" 2>/dev/null &
        perf_pid=$!
    fi
    out=$(taskset -c "$GEN_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${script[@]}" "$url")
    if [ -n "$perf_pid" ]; then
        wait "$perf_pid" || true
        perf report -i "$WORK/perf-$proto-$name.data" --no-children --percent-limit 0.3 --stdio \
            ${PERF_CALLGRAPH:+-g caller,0.5,callee --percent-limit 2} 2>/dev/null \
            >"$ROOT/benches/results/perf-$proto-$name.txt" || true
    fi
    local user1 sys1
    read -r user1 sys1 < <(cpu_ticks $pids)
    echo "$out" >"$WORK/wrk-$round-$proto-$name.txt"
    local rps p50 p99 non2xx errors
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
    errors=$(awk '/Socket errors:/ { print }' <<<"$out")
    local total cpu_us user_us sys_us
    total=$(awk '/requests in/ { print $1 }' <<<"$out")
    per_req() { awk -v t="$1" -v n="$total" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }'; }
    cpu_us=$(per_req $((user1 - user0 + sys1 - sys0)))
    user_us=$(per_req $((user1 - user0)))
    sys_us=$(per_req $((sys1 - sys0)))
    [ -n "$errors" ] && note="wrk: ${errors#*: }"
    if [ "$want" = 200 ] && [ "${non2xx:-0}" -gt 0 ]; then
        note="${note:+$note; }NOT VALID: ${non2xx} answers were not 2xx"
    fi
    if [[ $name == portcullis-hit || $name == portcullis-miss || $name == portcullis-ext-* ]]; then
        local hits miss
        hits=$(($(metric portcullis_validation_cache_hits_total) - hits0))
        miss=$(($(metric portcullis_validation_cache_misses_total) - miss0))
        note="${note:+$note; }cache hits $hits misses $miss"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$proto" "$rps" "$p50" "$p99" "${non2xx:-0}" "$cpu_us" "$user_us" "$sys_us" "$note" >>"$RAW"
    log "$(printf '%-6s %-18s %10s req/s  p50 %s ms  p99 %s ms  cpu %s us/req (user %s, sys %s)  %s' "$proto" "$name" "$rps" "$p50" "$p99" "$cpu_us" "$user_us" "$sys_us" "$note")"
}

log "measuring: wrk -t1 -c$CONNS -d${DURATION}s (warm-up ${WARMUP}s), $ROUNDS round(s)"
for round in $(seq "$ROUNDS"); do
    for proto in http https; do
        for name in "${ORDER[@]}"; do
            if [ -n "$ONLY" ] && ! [[ "$proto/$name" =~ $ONLY ]]; then continue; fi
            run "$round" "$proto" "$name"
        done
    done
done

# ---------------------------------------------------------------------------------------
# 5. The table, CSV and JSON.
mkdir -p "$ROOT/benches/results"
STAMP=$(date -u +%Y%m%d-%H%M%S)
cpu_model=$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)
cat >"$WORK/meta.json" <<EOF
{
  "date_utc": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "git": "$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo -dirty)",
  "portcullis_bin": "$BIN",
  "cpus": $(nproc),
  "cpu_model": "$cpu_model",
  "kernel": "$(uname -r)",
  "load_generator": "wrk -t1 -c$CONNS -d${DURATION}s (warm-up ${WARMUP}s)",
  "rounds": $ROUNDS,
  "pinning": "wrk + upstream nginx on CPU $GEN_CPU; proxy under test on CPU $PROXY_CPU (nginx 1 worker, haproxy nbthread 1, portcullis 1 worker thread)",
  "cache_max_tokens": $CACHE_TOKENS,
  "miss_tokens": $MISS_TOKENS,
  "nginx": "$(nginx -v 2>&1 | sed 's/.*\///')",
  "haproxy": "$(haproxy -v | awk 'NR == 1 { print $3 }')",
  "wrk": "$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')",
  "load_average_before": "$(cut -d' ' -f1-3 /proc/loadavg)"
}
EOF
echo
"$KIT" report --raw "$RAW" --meta "$WORK/meta.json" --out "$ROOT/benches/results/load"
log "wrote benches/results/load.csv and .json (run $STAMP; earlier runs are in git history)"

# ---------------------------------------------------------------------------------------
# 6. Memory: N distinct valid tokens in one validation cache.
if [ "$RSS_TOKENS" -gt 0 ]; then
    log "filling a validation cache with $RSS_TOKENS distinct tokens"
    "$KIT" fill-cache --count "$RSS_TOKENS" | tee "$ROOT/benches/results/rss.json"
fi
