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
# Knobs (environment): OLD_CONFIG=1 (leave out the config of the stream and bound rows, for
# an older PORTCULLIS_BIN; run those rows only without it), DURATION (s, default 10), WARMUP (s, 2), CONNS (32), ROUNDS (1;
# the table shows the median of each column over the rounds), PORT_BASE (18000),
# GEN_CPU (0), PROXY_CPU (1), PC_THREADS (portcullis's --threads, 1), PC_CPUS (the CPUs
# portcullis may use, $PROXY_CPU; "0,1" for the two-thread rows), PORTCULLIS_RUNTIME
# (shared | per-core: portcullis's --runtime), MISS_TOKENS (50000), CACHE_TOKENS (1024),
# ROUTE_COUNT (10000: the routes of the portcullis-hit-10k-routes row's gateway), EXTRA_CLIENTS and EXTRA_USERS
# (0: that many more [[client]]s and [[user]]s in the main gateway's config, for issue 17's
# growth figures; all share one precomputed hash, so the config builds at once), TOKEN_PAD
# (0: a scope that many characters longer in the tokens of the hit and miss rows),
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
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
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
    cargo build --release --quiet --bin portcullis --example loadkit --example streamkit --example boundkit
fi
BIN=${PORTCULLIS_BIN:-$ROOT/target/release/portcullis}
KIT=$ROOT/target/release/examples/loadkit
SKIT=$ROOT/target/release/examples/streamkit

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
# The many-routes row (issue 17): a second gateway, the same config plus ROUTE_COUNT routes.
PCR=$((PORT_BASE + 37)) PCRS=$((PORT_BASE + 34)) PCRADMIN=$((PORT_BASE + 38))
ROUTE_COUNT=${ROUTE_COUNT:-10000}
IDP=$((PORT_BASE + 36))
# The stream rows (issue 12): a WebSocket echo upstream, a gRPC (h2c) upstream, and nginx
# proxying each (upgrade headers; grpc_pass behind an h2 TLS listener).
WSUP=$((PORT_BASE + 2)) GRPCUP=$((PORT_BASE + 3))
NGXWS=$((PORT_BASE + 12)) NGXG=$((PORT_BASE + 13))
# The HTTP/2 rows (issue 17): nginx's reverse proxy on an h2 TLS listener.
NGXH2=$((PORT_BASE + 14))

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
# The mTLS-bound row's client: a self-signed certificate (self_signed_tls_client_auth).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-client \
    -addext basicConstraints=critical,CA:FALSE -keyout "$ETC/client.key" -out "$ETC/client.crt" 2>/dev/null

SECRET=bench-secret
HASH=$(printf %s "$SECRET" | "$BIN" hash-secret)
ISSUER=https://bench.local

# portcullis: EdDSA signs (token endpoint); the ES256 key verifies the tokens minted below,
# which HAProxy verifies too (HAProxy 2.6 has no EdDSA).
# The sections of the bound and stream rows (issues 12, 13). OLD_CONFIG=1 leaves them out,
# so that a binary from before those issues (PORTCULLIS_BIN) can run the other rows.
CFG_TLS="" CFG_CLIENTS="" CFG_ROUTES=""
if [ "${OLD_CONFIG:-0}" != 1 ]; then
CFG_TLS=$(cat <<EOF
# The bound rows (issue 13): certificates asked for, not required (wrk presents none).
client_auth = "optional"
client_ca = "$ETC/tls.crt"
EOF
)
CFG_CLIENTS=$(cat <<EOF
# The bound rows (issue 13): a DPoP-bound and an mTLS-bound client.
[[client]]
id = "bench-dpop"
secret_hash = "$HASH"
grants = ["client_credentials"]
scopes = ["read"]
token_binding = "dpop"
[[client]]
id = "bench-mtls"
token_endpoint_auth_method = "self_signed_tls_client_auth"
certificate = "$ETC/client.crt"
grants = ["client_credentials"]
scopes = ["read"]
token_binding = "mtls"
EOF
)
CFG_ROUTES=$(cat <<EOF
# The stream rows: a WebSocket route and a gRPC route (h2c upstream).
[[route]]
prefix = "/ws"
upstream = "http://127.0.0.1:$WSUP"
scopes = ["read"]
websocket = true
[[route]]
prefix = "/bench.Echo"
upstream = "h2c://127.0.0.1:$GRPCUP"
scopes = ["read"]
EOF
)
fi
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
$CFG_TLS
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
# Verify-only RS256 key: the portcullis-miss-rs256 rows' tokens (issue 17.2).
[[key]]
id = "bench-rs256"
algorithm = "RS256"
file = "$WORK/rs256.pem"
active = false
[[client]]
id = "bench"
secret_hash = "$HASH"
grants = ["client_credentials"]
scopes = ["read"]
$CFG_CLIENTS
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
$CFG_ROUTES
[[trusted_issuer]]
name = "idp"
issuer = "http://127.0.0.1:$IDP"
algorithms = ["ES256"]
audience = "http://127.0.0.1:$IDP"
EOF
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/rs256.pem" 2>/dev/null
# The many-routes gateway: the same config on its own ports and store, plus ROUTE_COUNT
# public routes that a scan (longest prefix first) examines before /api: half under /api
# (/api/r<i>, one trie node with ROUTE_COUNT/2 children), half elsewhere (/s<i>/x).
sed -e "s/127.0.0.1:$PC\"/127.0.0.1:$PCR\"/; s/127.0.0.1:$PCS\"/127.0.0.1:$PCRS\"/" \
    -e "s/127.0.0.1:$PCADMIN\"/127.0.0.1:$PCRADMIN\"/; s#$RUN/portcullis.redb#$RUN/portcullis-routes.redb#" \
    "$ETC/portcullis.toml" >"$ETC/routes.toml"
awk -v n="$ROUTE_COUNT" -v up="http://127.0.0.1:$UP" 'BEGIN {
    for (i = 0; i < n; i++) {
        prefix = (i % 2 == 0) ? sprintf("/api/r%d", i) : sprintf("/s%d/x", i)
        printf "[[route]]\nprefix = \"%s\"\nupstream = \"%s\"\npublic = true\n", prefix, up
    }
}' >>"$ETC/routes.toml"
# Growth (issue 17): more clients and users in the main gateway's config (not the one above).
awk -v c="${EXTRA_CLIENTS:-0}" -v u="${EXTRA_USERS:-0}" -v h="$HASH" 'BEGIN {
    for (i = 0; i < c; i++)
        printf "[[client]]\nid = \"grow-%d\"\nsecret_hash = \"%s\"\ngrants = [\"client_credentials\"]\nscopes = [\"read\"]\n", i, h
    for (i = 0; i < u; i++)
        printf "[[user]]\nusername = \"user-%d\"\npassword_hash = \"%s\"\n", i, h
}' >>"$ETC/portcullis.toml"
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
# TOKEN_PAD (0): a scope of that many more characters in the gateway's tokens (issue 17:
# the cost of long tokens; the routes ask for "read" only).
SCOPE=read
[ "${TOKEN_PAD:-0}" -gt 0 ] && SCOPE="read $(head -c "$TOKEN_PAD" /dev/zero | tr '\0' p)"
log "minting 1 + $MISS_TOKENS ES256 tokens"
"$KIT" mint --config "$ETC/mint.toml" --scope "$SCOPE" --count 1 --out "$WORK/token.txt"
"$KIT" mint --config "$ETC/mint.toml" --scope "$SCOPE" --count "$MISS_TOKENS" --out "$WORK/tokens.txt"
log "token length $(($(wc -c <"$WORK/token.txt") - 1)) bytes"
# The EdDSA and RS256 miss rows (issue 17.2): the same request and claims, signed by the
# gateway's EdDSA key and by its verify-only RS256 key.
for alg in eddsa rs256; do
    sed -e '/^\[\[key\]\]$/,$d' "$ETC/portcullis.toml" >"$ETC/mint-$alg.toml"
    if [ $alg = eddsa ]; then kid=bench-ed25519 kalg=EdDSA kfile=ed25519.pem; else kid=bench-rs256 kalg=RS256 kfile=rs256.pem; fi
    cat >>"$ETC/mint-$alg.toml" <<EOF
[[key]]
id = "$kid"
algorithm = "$kalg"
file = "$WORK/$kfile"
[[client]]
id = "bench"
secret_hash = "$HASH"
grants = ["client_credentials"]
scopes = ["read"]
EOF
    log "minting $MISS_TOKENS $kalg tokens"
    "$KIT" mint --config "$ETC/mint-$alg.toml" --count "$MISS_TOKENS" --out "$WORK/tokens-$alg.txt"
done
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
    # The stream rows: WebSocket with the upgrade headers; gRPC over h2 TLS to h2c.
    server {
        listen 127.0.0.1:$NGXWS;
        location / {
            proxy_pass http://127.0.0.1:$WSUP;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host \$host;
            proxy_read_timeout 300s;
        }
    }
    # The h2 rows: the same reverse proxy as above, HTTP/2 by ALPN on the client side.
    server {
        listen 127.0.0.1:$NGXH2 ssl http2;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
    upstream grpcup { server 127.0.0.1:$GRPCUP; keepalive 16; }
    server {
        listen 127.0.0.1:$NGXG ssl http2;
        location / {
            grpc_pass grpc://grpcup;
            grpc_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
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
# PC_THREADS / PC_CPUS / PORTCULLIS_RUNTIME: the both-cores comparison (docs/performance.md);
# by default one worker thread on $PROXY_CPU like the other proxies.
PORTCULLIS_WORKER_THREADS=${PC_THREADS:-1} start portcullis "${PC_CPUS:-$PROXY_CPU}" "$BIN" serve --config "$ETC/portcullis.toml"
PORTCULLIS_PID=$!
# The floor: the least a hyper + tokio proxy does (no auth, no header work, no log).
start hyper-floor "$PROXY_CPU" "$KIT" bare-proxy --listen "127.0.0.1:$BARE" --upstream "127.0.0.1:$UP"
BARE_PID=$!
start ws-echo "$GEN_CPU" "$SKIT" ws-echo --listen "127.0.0.1:$WSUP"
WSUP_PID=$!
start grpc-upstream "$GEN_CPU" "$SKIT" grpc-upstream --listen "127.0.0.1:$GRPCUP"
GRPCUP_PID=$!

wait_port() {
    # Up to a minute: a config of 100k clients and users takes seconds to load.
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on $1 (logs in $WORK; KEEP=1 keeps them)"
}
for p in $IDP $UP $UPS $NGX $NGXS $HAP $HAPS $PC $PCS $PCADMIN $BARE $WSUP $GRPCUP $NGXWS $NGXG $NGXH2; do wait_port "$p"; done
# After the first gateway has written the key files they share.
PORTCULLIS_WORKER_THREADS=1 start portcullis-routes "$PROXY_CPU" "$BIN" serve --config "$ETC/routes.toml"
PORTCULLIS_ROUTES_PID=$!
for p in $PCR $PCRS $PCRADMIN; do wait_port "$p"; done
# What a config's size costs before any request: validation time (`check`) and resident memory.
for c in portcullis routes; do
    t0=$(date +%s%N)
    "$BIN" check --config "$ETC/$c.toml" >/dev/null 2>&1 || die "$c.toml refused by check"
    t1=$(date +%s%N)
    pid=$PORTCULLIS_PID
    [ "$c" = routes ] && pid=$PORTCULLIS_ROUTES_PID
    log "config $c.toml: $(wc -l <"$ETC/$c.toml") lines, check $(((t1 - t0) / 1000000)) ms, gateway RSS $(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status") kB"
done
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
{ echo 'BENCH_TOKENS_VAR = "BENCH_EDDSA_TOKENS"'; cat "$WORK/rotate.lua"; } >"$WORK/rotate-eddsa.lua"
{ echo 'BENCH_TOKENS_VAR = "BENCH_RS256_TOKENS"'; cat "$WORK/rotate.lua"; } >"$WORK/rotate-rs256.lua"
cat >"$WORK/token.lua" <<'EOF'
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=read"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BENCH_BASIC")
EOF
BASIC=$(printf %s "bench:$SECRET" | base64 -w0)
export BENCH_TOKEN=$TOKEN BENCH_TOKENS=$WORK/tokens.txt BENCH_BASIC=$BASIC
export BENCH_EXT_TOKEN=$EXT_TOKEN BENCH_EXT_TOKENS=$WORK/ext-tokens.txt
export BENCH_EDDSA_TOKENS=$WORK/tokens-eddsa.txt BENCH_RS256_TOKENS=$WORK/tokens-rs256.txt

# scenario -> "port_http port_https path lua expected_status"
declare -A SC=(
    [direct]="$UP $UPS $PATH_UNDER_TEST bearer 200"
    [nginx]="$NGX $NGXS $PATH_UNDER_TEST bearer 200"
    [hyper-floor]="$BARE - $PATH_UNDER_TEST bearer 200"
    [haproxy-jwt]="$HAP $HAPS $PATH_UNDER_TEST bearer 200"
    [portcullis-hit]="$PC $PCS $PATH_UNDER_TEST bearer 200"
    [portcullis-hit-10k-routes]="$PCR - $PATH_UNDER_TEST bearer 200"
    [portcullis-miss]="$PC $PCS $PATH_UNDER_TEST rotate 200"
    [portcullis-miss-eddsa]="$PC $PCS $PATH_UNDER_TEST rotate-eddsa 200"
    [portcullis-miss-rs256]="$PC $PCS $PATH_UNDER_TEST rotate-rs256 200"
    [portcullis-401]="$PC $PCS $PATH_UNDER_TEST none 401"
    [portcullis-token]="$PC $PCS /oauth/token token 200"
    [portcullis-ext-hit]="$PC $PCS /ext/hello extbearer 200"
    [portcullis-ext-miss]="$PC $PCS /ext/hello extrotate 200"
)
ORDER=(direct nginx hyper-floor haproxy-jwt portcullis-hit portcullis-hit-10k-routes portcullis-miss portcullis-miss-eddsa portcullis-miss-rs256 portcullis-401 portcullis-token
    portcullis-ext-hit portcullis-ext-miss)

# Check each endpoint answers as expected before measuring it.
check() { # proto scenario url lua want
    local args=(-s -k -o /dev/null -w '%{http_code}')
    case $4 in
        bearer | rotate) args+=(-H "Authorization: Bearer $TOKEN") ;;
        rotate-eddsa) args+=(-H "Authorization: Bearer $(head -1 "$BENCH_EDDSA_TOKENS")") ;;
        rotate-rs256) args+=(-H "Authorization: Bearer $(head -1 "$BENCH_RS256_TOKENS")") ;;
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

metric() { curl -s "http://127.0.0.1:${METRIC_PORT:-$PCADMIN}/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

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
        portcullis-hit-10k-routes) pids=$PORTCULLIS_ROUTES_PID ;;
        *) pids=$PORTCULLIS_PID ;;
    esac
    local METRIC_PORT=$PCADMIN
    [ "$name" = portcullis-hit-10k-routes ] && METRIC_PORT=$PCRADMIN
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
    if [[ $name == portcullis-hit* || $name == portcullis-miss* || $name == portcullis-ext-* ]]; then
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
# 4b. Stream rows (issue 12), same table: proto "ws" is WebSocket echo over ONE upgraded
# connection, one message in flight (each message a round trip through the proxy); "ws32"
# the same with up to 32 messages in flight; "grpc" is unary calls over h2 with TLS
# (h2load, -c $GRPC_CONNS connections x -m $GRPC_STREAMS streams; "direct" is h2c to the
# upstream). For these rows "req/s" is messages or calls per second and the CPU column is
# per message or call; p50/p99 are not measured (0) — h2load's mean latency is in the note.
WS_MESSAGES=${WS_MESSAGES:-100000}
WS32_MESSAGES=${WS32_MESSAGES:-1000000}
GRPC_CONNS=${GRPC_CONNS:-4}
GRPC_STREAMS=${GRPC_STREAMS:-8}
"$SKIT" grpc-body --text "hello from the bench" --out "$WORK/grpc-body.bin"
GRPC_BODY_LEN=$(stat -c %s "$WORK/grpc-body.bin")
run_stream() { # round proto scenario
    local round=$1 proto=$2 name=$3 pids out n="" note=""
    case $name in
        direct) pids=$([ "$proto" = grpc ] && echo "$GRPCUP_PID" || echo "$WSUP_PID") ;;
        nginx) pids=$(pgrep -P "$NGINX_PID" | tr '\n' ' ') ;;
        *) pids=$PORTCULLIS_PID ;;
    esac
    local user0 sys0 user1 sys1
    case $proto in
        ws | ws32)
            local window=1 url msgs=$WS_MESSAGES
            [ "$proto" = ws32 ] && window=32 msgs=$WS32_MESSAGES
            case $name in
                direct) url=ws://127.0.0.1:$WSUP/ws ;;
                nginx) url=ws://127.0.0.1:$NGXWS/ws ;;
                *) url=ws://127.0.0.1:$PC/ws ;;
            esac
            taskset -c "$GEN_CPU" "$SKIT" ws-client --url "$url" --token "$TOKEN" --messages $((msgs / 10)) \
                --window "$window" >/dev/null || die "$proto/$name: the WebSocket warm-up failed"
            read -r user0 sys0 < <(cpu_ticks $pids)
            if ! out=$(taskset -c "$GEN_CPU" "$SKIT" ws-client --url "$url" --token "$TOKEN" \
                --messages "$msgs" --window "$window" 2>&1); then
                out="msgs_per_s 0"
                note="NOT VALID: the client failed"
            fi
            read -r user1 sys1 < <(cpu_ticks $pids)
            rps=$(awk '$1 == "msgs_per_s" { print $2 }' <<<"$out")
            n=$(awk '$1 == "messages" { print $2 }' <<<"$out")
            n=${n:-0}
            [ "$n" = "$msgs" ] || note="NOT VALID: $n of $msgs echoes"
            ;;
        grpc)
            local url
            case $name in
                direct) url=http://127.0.0.1:$GRPCUP/bench.Echo/Unary ;;
                nginx) url=https://127.0.0.1:$NGXG/bench.Echo/Unary ;;
                *) url=https://127.0.0.1:$PCS/bench.Echo/Unary ;;
            esac
            local h2=(h2load -t1 -c"$GRPC_CONNS" -m"$GRPC_STREAMS" -d "$WORK/grpc-body.bin"
                -H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $TOKEN")
            # One call first: it must be answered by the upstream (grpc-status 0, an echo).
            local probe h2flag=--http2
            [ "$name" = direct ] && h2flag=--http2-prior-knowledge
            probe=$(curl -sk "$h2flag" -o /dev/null -D - --data-binary @"$WORK/grpc-body.bin" \
                -H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $TOKEN" \
                "$url" | tr -d '\r') || true
            grep -qi '^grpc-status: 0' <<<"$probe" || die "$proto/$name: $url did not answer grpc-status 0: $probe"
            taskset -c "$GEN_CPU" "${h2[@]}" -D "$WARMUP" "$url" >/dev/null
            read -r user0 sys0 < <(cpu_ticks $pids)
            out=$(taskset -c "$GEN_CPU" "${h2[@]}" -D "$DURATION" "$url")
            read -r user1 sys1 < <(cpu_ticks $pids)
            echo "$out" >"$WORK/h2load-$round-$proto-$name.txt"
            rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' <<<"$out")
            n=$(awk '/^requests:/ { print $8 }' <<<"$out")
            local ok2xx data mean
            ok2xx=$(awk '/^status codes:/ { print $3 }' <<<"$out")
            # Every answer must carry the echo: DATA bytes = calls x the message's length.
            data=$(awk '/^traffic:/ { for (i = 1; i <= NF; i++) if ($(i + 1) == "data") { gsub(/[()]/, "", $i); print $i } }' <<<"$out")
            mean=$(awk '/^time for request:/ { print $6 }' <<<"$out")
            note="mean latency $mean"
            if [ "${ok2xx:-0}" != "$n" ] || [ "${data:-0}" != $((n * GRPC_BODY_LEN)) ]; then
                note="$note; NOT VALID: $ok2xx of $n 2xx, $data data bytes for $((n * GRPC_BODY_LEN)) expected"
            fi
            ;;
    esac
    per_req() { awk -v t="$1" -v n="$n" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }'; }
    local cpu_us user_us sys_us
    cpu_us=$(per_req $((user1 - user0 + sys1 - sys0)))
    user_us=$(per_req $((user1 - user0)))
    sys_us=$(per_req $((sys1 - sys0)))
    local invalid=0
    [[ $note == *"NOT VALID"* ]] && invalid=1
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$proto" "${rps:-0}" 0 0 "$invalid" "$cpu_us" "$user_us" "$sys_us" "$note" >>"$RAW"
    log "$(printf '%-6s %-18s %10s msg/s  cpu %s us/msg (user %s, sys %s)  %s' "$proto" "$name" "$rps" "$cpu_us" "$user_us" "$sys_us" "$note")"
}
# The bound rows (issue 13), proto "tls1" (HTTP/1.1 over TLS): all three on boundkit, one
# client for all (wrk can neither sign a proof per request nor present a certificate).
# bearer-hit: the bearer token of the wrk rows; dpop-hit: a DPoP-bound token, a fresh
# proof per request (the client signs on the generator's core); mtls-hit: an mTLS-bound
# token on connections presenting its certificate.
BKIT=$ROOT/target/release/examples/boundkit
run_bound() { # round proto scenario
    local round=$1 proto=$2 name=$3 args=(--url "https://127.0.0.1:$PCS$PATH_UNDER_TEST" --conns "$CONNS")
    case $name in
        bearer-hit) args+=(--mode bearer --token "$TOKEN") ;;
        dpop-hit) args+=(--mode dpop --basic "bench-dpop:$SECRET") ;;
        mtls-hit)
            local mtoken
            mtoken=$(curl -sk --cert "$ETC/client.crt" --key "$ETC/client.key" -d grant_type=client_credentials \
                -d client_id=bench-mtls -d scope=read "https://127.0.0.1:$PCS/oauth/token" |
                sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
            [ -n "$mtoken" ] || die "tls1/mtls-hit: no mTLS-bound token from the token endpoint"
            args+=(--mode mtls --token "$mtoken" --cert "$ETC/client.crt" --key "$ETC/client.key")
            ;;
    esac
    taskset -c "$GEN_CPU" "$BKIT" load "${args[@]}" --seconds "$WARMUP" >/dev/null || die "$proto/$name: warm-up failed"
    local user0 sys0 user1 sys1 hits0 miss0 out
    hits0=$(metric portcullis_validation_cache_hits_total)
    miss0=$(metric portcullis_validation_cache_misses_total)
    read -r user0 sys0 < <(cpu_ticks $PORTCULLIS_PID)
    out=$(taskset -c "$GEN_CPU" "$BKIT" load "${args[@]}" --seconds "$DURATION") || die "$proto/$name: the client failed"
    read -r user1 sys1 < <(cpu_ticks $PORTCULLIS_PID)
    local n ok rps note
    n=$(awk '$1 == "requests" { print $2 }' <<<"$out")
    ok=$(awk '$1 == "ok" { print $2 }' <<<"$out")
    rps=$(awk '$1 == "rps" { print $2 }' <<<"$out")
    per_req() { awk -v t="$1" -v n="$n" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }'; }
    local cpu_us user_us sys_us
    cpu_us=$(per_req $((user1 - user0 + sys1 - sys0)))
    user_us=$(per_req $((user1 - user0)))
    sys_us=$(per_req $((sys1 - sys0)))
    note="cache hits $(($(metric portcullis_validation_cache_hits_total) - hits0)) misses $(($(metric portcullis_validation_cache_misses_total) - miss0))"
    [ "$ok" = "$n" ] || note="$note; NOT VALID: $((n - ok)) answers were not 200"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$proto" "${rps:-0}" 0 0 "$((n - ok))" "$cpu_us" "$user_us" "$sys_us" "$note" >>"$RAW"
    log "$(printf '%-6s %-18s %10s req/s  cpu %s us/req (user %s, sys %s)  %s' "$proto" "$name" "$rps" "$cpu_us" "$user_us" "$sys_us" "$note")"
}
for round in $(seq "$ROUNDS"); do
    for row in tls1/bearer-hit tls1/dpop-hit tls1/mtls-hit; do
        if [ -n "$ONLY" ] && ! [[ "$row" =~ $ONLY ]]; then continue; fi
        run_bound "$round" "${row%%/*}" "${row#*/}"
    done
done

STREAM_ORDER=(ws/direct ws/nginx ws/portcullis-ws ws32/direct ws32/nginx ws32/portcullis-ws
    grpc/direct grpc/nginx grpc/portcullis-grpc)
for round in $(seq "$ROUNDS"); do
    for row in "${STREAM_ORDER[@]}"; do
        if [ -n "$ONLY" ] && ! [[ "$row" =~ $ONLY ]]; then continue; fi
        run_stream "$round" "${row%%/*}" "${row#*/}"
    done
done

# The HTTP/2 rows (issue 17), proto "h2": h2load over TLS (ALPN h2), the wrk rows' $CONNS
# connections with $H2_STREAMS streams each, the same request and token. "req/s" and the
# CPU column are per request; p50/p99 are not measured (0), h2load's mean is in the note. A
# row is NOT VALID unless every request done got the expected status class (h2load counts
# them by class: 2xx for nginx and the hit, 4xx for the 401 row, checked as 401 first).
H2_STREAMS=${H2_STREAMS:-10}
run_h2() { # round proto scenario
    local round=$1 proto=$2 name=$3 url pids want=200 auth=(-H "authorization: Bearer $TOKEN")
    case $name in
        nginx) url=https://127.0.0.1:$NGXH2$PATH_UNDER_TEST pids=$(pgrep -P "$NGINX_PID" | tr '\n' ' ') ;;
        portcullis-hit) url=https://127.0.0.1:$PCS$PATH_UNDER_TEST pids=$PORTCULLIS_PID ;;
        portcullis-401) url=https://127.0.0.1:$PCS$PATH_UNDER_TEST pids=$PORTCULLIS_PID want=401 auth=() ;;
    esac
    local probe
    probe=$(curl -sk --http2 -o /dev/null -w '%{http_code} %{http_version}' "${auth[@]}" "$url") || true
    [ "$probe" = "$want 2" ] || die "$proto/$name: $url answered \"$probe\", expected \"$want 2\" (status, HTTP version)"
    local h2=(h2load -t1 -c"$CONNS" -m"$H2_STREAMS" "${auth[@]}")
    [ "$WARMUP" -gt 0 ] && taskset -c "$GEN_CPU" "${h2[@]}" -D "$WARMUP" "$url" >/dev/null
    local user0 sys0 user1 sys1 out
    read -r user0 sys0 < <(cpu_ticks $pids)
    out=$(taskset -c "$GEN_CPU" "${h2[@]}" -D "$DURATION" "$url")
    read -r user1 sys1 < <(cpu_ticks $pids)
    echo "$out" >"$WORK/h2load-$round-$proto-$name.txt"
    local rps n class got mean note
    rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' <<<"$out")
    n=$(awk '/^requests:/ { print $6 }' <<<"$out")
    # "status codes: A 2xx, B 3xx, C 4xx, D 5xx"
    class=$([ "$want" = 200 ] && echo 3 || echo 7)
    got=$(awk -v f="$class" '/^status codes:/ { print $f }' <<<"$out")
    mean=$(awk '/^time for request:/ { print $6 }' <<<"$out")
    note="mean latency $mean; $H2_STREAMS streams/conn"
    if [ -z "$n" ] || [ "$n" = 0 ] || [ "${got:-0}" != "$n" ]; then
        note="$note; NOT VALID: ${got:-0} of ${n:-0} requests answered ${want:0:1}xx"
    fi
    per_req() { awk -v t="$1" -v n="$n" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0) }'; }
    local cpu_us user_us sys_us invalid=0
    cpu_us=$(per_req $((user1 - user0 + sys1 - sys0)))
    user_us=$(per_req $((user1 - user0)))
    sys_us=$(per_req $((sys1 - sys0)))
    [[ $note == *"NOT VALID"* ]] && invalid=$((n - ${got:-0}))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$proto" "${rps:-0}" 0 0 "$invalid" "$cpu_us" "$user_us" "$sys_us" "$note" >>"$RAW"
    log "$(printf '%-6s %-18s %10s req/s  cpu %s us/req (user %s, sys %s)  %s' "$proto" "$name" "$rps" "$cpu_us" "$user_us" "$sys_us" "$note")"
}
H2_ORDER=(h2/nginx h2/portcullis-hit h2/portcullis-401)
for round in $(seq "$ROUNDS"); do
    for row in "${H2_ORDER[@]}"; do
        if [ -n "$ONLY" ] && ! [[ "$row" =~ $ONLY ]]; then continue; fi
        run_h2 "$round" "${row%%/*}" "${row#*/}"
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
