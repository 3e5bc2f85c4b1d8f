#!/usr/bin/env bash
# The `fuzz` command: build the cargo-fuzz targets and run each for N seconds (default 30),
# one after the other on one core. Exits non-zero if any target crashed (or failed to run);
# crash inputs land in fuzz/artifacts/<target>/. Not part of `cargo test` or .ci/run.
#
#   fuzz/run.sh [seconds] [target ...]      e.g. fuzz/run.sh 600 jwt
#
# cargo fuzz wants nightly flags (-Z sanitizer, -Z ...); this machine has only stable, so
# RUSTC_BOOTSTRAP=1 lets the stable compiler accept them. See docs/fuzzing.md.
set -uo pipefail
cd "$(dirname "$0")"

seconds="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(token_request bearer jwt authorize config header_hygiene upstream_headers peer_params jws dpop assertion cnf dn websocket ecdsa_p256 route)
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || exit 1
fi

export RUSTC_BOOTSTRAP=1
# Address sanitizer (the default) works with RUSTC_BOOTSTRAP=1; 16 codegen units keep the
# build of the whole gateway (aws-lc, tokio, hyper, redb, ...) to a few minutes on 2 cores.
build_flags=(--codegen-units 16)
cargo fuzz build "${build_flags[@]}" || exit 1

mkdir -p logs
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    echo "== $t: ${seconds}s"
    # corpus/<t> receives new inputs; seeds/<t> is only read.
    cargo fuzz run "${build_flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"logs/$t.log" 2>&1
    status=$?
    after=$(find "artifacts/$t" -type f | wc -l)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "logs/$t.log" | tail -1)
    corpus=$(find "corpus/$t" -type f | wc -l)
    crashes=$((after - before))
    line="$t: ${seconds}s, ${runs:-?} execs, ${rate:-?} exec/s, corpus ${corpus} (+$(find "seeds/$t" -type f | wc -l) seeds), crashes ${crashes}, exit ${status}"
    echo "$line"
    summary+=("$line")
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed+=("$t")
        tail -40 "logs/$t.log"
    fi
done

echo
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "FAILED: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/logs/)"
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s each without a crash"
