#!/usr/bin/env bash
# CPU µs per cache hit (user / sys, from /proc) of one gateway worker pinned to CPU 1, while
# h2load (HTTP/1.1, 8 connections) and the nginx upstream share CPU 0. For A/B runs of two
# builds on a 2-core machine, where req/s is noise:
#
#   KEEP=1 ONLY=portcullis/http benches/hitcost.sh     # prints "kept <dir>": config, token
#   W=<dir> DIR=<dir with pc-old and pc-new> benches/hit-ab.sh old new old new old new
#
# Interleave the builds and compare the means: one pair alone is within the noise.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${W:?set W to a directory kept by KEEP=1 benches/hitcost.sh}
DIR=${DIR:-/tmp}
N=${N:-200000}
KIT=${LOADKIT:-$ROOT/target/release/examples/loadkit}
cd "$W"
# A fresh token for every invocation (the kept one expires an hour after hitcost.sh made
# it; every run would then be a 401), signed with the kept config's key.
if [ -x "$KIT" ]; then
    "$KIT" mint --config etc/portcullis.toml --count 1 --out token.txt
fi
TOKEN=$(cat token.txt)
# The plaintext listener of the kept config (hitcost.sh's PORT_BASE + 1).
URL="http://$(grep -m1 -o '127\.0\.0\.1:[0-9]*' etc/portcullis.toml)/api/hello"
taskset -c 0 nginx -p "$W" -c "$W/etc/up.conf" >/dev/null 2>&1 &
UP=$!
pid=
# A failed run (a refused request, h2load missing) leaves no gateway or upstream behind.
trap 'kill $UP $pid 2>/dev/null || true' EXIT
sleep 1
hz=$(getconf CLK_TCK)
for b in "$@"; do
    PORTCULLIS_WORKER_THREADS=1 taskset -c 1 "$DIR/pc-$b" serve --config etc/portcullis.toml >"run/gw-$b.log" 2>&1 &
    pid=$!
    sleep 1.5
    taskset -c 0 h2load --h1 -n 5000 -c 8 -H "authorization: Bearer $TOKEN" "$URL" >/dev/null
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    out=$(taskset -c 0 h2load --h1 -n "$N" -c 8 -H "authorization: Bearer $TOKEN" "$URL")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    grep -q "status codes: $N 2xx" <<<"$out" || { echo "hit-ab.sh: not all 200 for $b" >&2; exit 1; }
    rps=$(grep -o "[0-9.]* req/s" <<<"$out" | head -1)
    python3 -c "u=($u1-$u0)/$hz*1e6/$N; s=($s1-$s0)/$hz*1e6/$N; print(f'$b: {u+s:.2f} µs/hit (user {u:.2f} / sys {s:.2f}), $rps')"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
done
