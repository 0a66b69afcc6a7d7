#!/usr/bin/env bash
# Builds every fuzz target and runs each from its seed corpus, failing on the first crash,
# timeout or leak (libFuzzer writes the input to fuzz/artifacts/<target>/).
#
#   fuzz/run-all.sh [SECONDS_PER_TARGET]      # CI: a bounded run (default 20 s each)
#   RUNS=2000000 fuzz/run-all.sh 3600         # a campaign: up to RUNS executions or SECONDS
#   TARGETS="packet_rewrite net_ring" fuzz/run-all.sh 60
#
# Needs the nightly toolchain and cargo-fuzz (.ci/install-fuzz.sh). New inputs that grow
# coverage go to a scratch corpus (CORPUS_DIR, default target/fuzz-corpus), never into the
# seed corpus in fuzz/corpus/; minimise and copy them by hand when they are worth keeping.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
runs=${RUNS:-0}
scratch=${CORPUS_DIR:-target/fuzz-corpus}
targets=${TARGETS:-$(cargo +nightly fuzz list)}

cargo +nightly fuzz build
summary=()
for t in $targets; do
    mkdir -p "$scratch/$t"
    log="$scratch/$t.log"
    echo "== fuzz $t (${secs} s${runs:+, at most $runs runs})"
    if ! cargo +nightly fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -runs="$([ "$runs" -gt 0 ] && echo "$runs" || echo -1)" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz $t FAILED: see fuzz/artifacts/$t/ and $log" >&2
        exit 1
    fi
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
    summary+=("$t: ${execs:-?} executions, $cov, no crash")
done
printf '%s\n' "${summary[@]}"
