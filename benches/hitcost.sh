#!/usr/bin/env bash
# Load-independent cost of one cache hit: instructions (valgrind's callgrind) and heap
# allocations per request, for portcullis and for the hyper-floor (`loadkit bare-proxy`),
# over HTTP/1.1 and over TLS. On a machine shared with other work, wall-clock figures are
# noise; these are not. One command:
#
#   benches/hitcost.sh            # N=2000 requests per row, after 300 of warm-up
#
# Knobs: PORTCULLIS_BIN (another build, for a before/after), N, WARM, CONNS (4),
# PORT_BASE (18100), ONLY (extended regex over "target/proto", e.g. 'portcullis/http'),
# KEEP=1 keeps the work directory (callgrind files, logs), ROUTE_ACCESS (the route's access
# line; default `scopes = ["read"]`; `public = true` for a route without authentication).
# With RUST_LOG=warn the gateway writes no access line. The two together bound what the
# gateway's own checks cost (docs/performance.md, "sixth round").
#
# Method: the process runs under callgrind with one worker thread; after the warm-up (the
# token's first use is a miss; connections open), the counters are zeroed, N requests
# sent with h2load (HTTP/1.1, CONNS connections, every answer checked to be a 200), and
# the counters dumped. Ir / N is the instruction count per request, every thread of the
# process included (the access log's writer thread too); the calls to malloc, calloc and
# realloc in the same dump / N are the allocations per request.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-2000}
WARM=${WARM:-300}
CONNS=${CONNS:-4}
PORT_BASE=${PORT_BASE:-18100}
ONLY=${ONLY:-}
BIN=${PORTCULLIS_BIN:-$ROOT/target/release/portcullis}
ROUTE_ACCESS=${ROUTE_ACCESS:-'scopes = ["read"]'}
KIT=${LOADKIT:-$ROOT/target/release/examples/loadkit}
[ -x "$BIN" ] || { echo "hitcost.sh: no $BIN (cargo build --release)" >&2; exit 1; }
[ -x "$KIT" ] || { echo "hitcost.sh: no $KIT (cargo build --release --example loadkit)" >&2; exit 1; }
for t in valgrind callgrind_control h2load nginx openssl; do
    command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || { echo "hitcost.sh: needs $t" >&2; exit 1; }
done
export PATH="$PATH:/usr/sbin"

UP=$PORT_BASE PC=$((PORT_BASE + 1)) PCS=$((PORT_BASE + 2)) BARE=$((PORT_BASE + 3))
WORK=$(mktemp -d /tmp/portcullis-hitcost.XXXXXX)
ETC=$WORK/etc RUN=$WORK/run
mkdir -p "$ETC" "$RUN"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$ETC/tls.key" -out "$ETC/tls.crt" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/es256.pem" 2>/dev/null
HASH=$(printf %s bench-secret | "$BIN" hash-secret)
# The same request as load.sh's hit row: one route, ES256 token, access log on (stderr).
cat >"$ETC/portcullis.toml" <<EOF
issuer = "https://bench.local"
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
enabled = false
[rate_limit]
enabled = false
[store]
path = "$RUN/portcullis.redb"
[[key]]
id = "bench-es256"
algorithm = "ES256"
file = "$WORK/es256.pem"
[[client]]
id = "bench"
secret_hash = "$HASH"
grants = ["client_credentials"]
scopes = ["read"]
[[route]]
prefix = "/api"
upstream = "http://127.0.0.1:$UP"
$ROUTE_ACCESS
EOF
"$KIT" mint --config "$ETC/portcullis.toml" --count 1 --out "$WORK/token.txt"
TOKEN=$(cat "$WORK/token.txt")
cat >"$ETC/up.conf" <<EOF
worker_processes 1;
daemon off;
pid $RUN/up.pid;
error_log $RUN/up-error.log warn;
events { worker_connections 1024; }
http {
    client_body_temp_path $RUN/b; proxy_temp_path $RUN/p; fastcgi_temp_path $RUN/f;
    uwsgi_temp_path $RUN/u; scgi_temp_path $RUN/s;
    keepalive_requests 10000000;
    access_log off;
    server {
        listen 127.0.0.1:$UP;
        location / { default_type text/plain; return 200 "hello from upstream\n"; }
    }
}
EOF
nginx -p "$WORK" -c "$ETC/up.conf" >"$RUN/up.out" 2>&1 &
PIDS+=($!)

wait_port() {
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "hitcost.sh: nothing listens on $1" >&2
    exit 1
}

# h2load over HTTP/1.1: COUNT requests, all must be 200.
send() { # url count
    local out
    out=$(h2load --h1 -n "$2" -c "$CONNS" -H "authorization: Bearer $TOKEN" "$1" 2>&1)
    grep -q "status codes: $2 2xx" <<<"$out" || { echo "hitcost.sh: not all 200 at $1:" >&2; echo "$out" >&2; exit 1; }
}

# Instructions and allocation calls in a callgrind dump.
tally() { # file
    python3 - "$1" "$N" <<'PY'
import re, sys
path, n = sys.argv[1], int(sys.argv[2])
# The allocator's entry points (mimalloc's, then libc's), called from outside the allocator.
alloc_fns = {"mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned", "mi_malloc", "mi_zalloc",
             "mi_realloc", "mi_calloc", "malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc"}
names, total, allocs, fn, cfn = {}, 0, 0, None, None
def name(kind, line):
    m = re.match(kind + r"=\((\d+)\)(?: (.*))?", line)
    if not m:
        return line[len(kind) + 1:]
    if m.group(2):
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1))
for line in open(path, errors="replace"):
    line = line.rstrip("\n")
    if line.startswith("summary:") or line.startswith("totals:"):
        total = int(line.split()[1])
    elif line.startswith("fn="):
        fn = name("fn", line)
    elif line.startswith("cfn="):
        cfn = name("cfn", line)
    elif line.startswith("calls=") and cfn is not None:
        if cfn in alloc_fns and not (fn or "").startswith(("mi_", "_mi")):
            allocs += int(line.split("=")[1].split()[0])
        cfn = None
print(f"{total / n:.0f}\t{allocs / n:.2f}")
PY
}

row() { # target proto url cmd...
    local target=$1 proto=$2 url=$3
    shift 3
    [ -n "$ONLY" ] && ! [[ "$target/$proto" =~ $ONLY ]] && return 0
    local out=$WORK/callgrind.$target-$proto
    PORTCULLIS_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out.%p" \
        --dump-instr=no --collect-atstart=yes "$@" >"$RUN/$target-$proto.log" 2>&1 &
    local pid=$!
    PIDS+=($pid)
    local port=${url#*//127.0.0.1:}
    wait_port "${port%%/*}"
    send "$url" "$WARM"
    callgrind_control -z "$pid" >/dev/null
    send "$url" "$N"
    callgrind_control -d "$pid" >/dev/null
    sleep 0.5
    local dump
    dump=$(ls -t "$out.$pid".* 2>/dev/null | head -1)
    printf '%s\t%s\t%s\n' "$target" "$proto" "$(tally "$dump")"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

printf 'target\tproto\tIr/req\tallocs/req\n'
row portcullis http "http://127.0.0.1:$PC/api/hello" "$BIN" serve --config "$ETC/portcullis.toml"
row portcullis tls "https://127.0.0.1:$PCS/api/hello" "$BIN" serve --config "$ETC/portcullis.toml"
row hyper-floor http "http://127.0.0.1:$BARE/api/hello" "$KIT" bare-proxy --listen "127.0.0.1:$BARE" \
    --upstream "127.0.0.1:$UP"
