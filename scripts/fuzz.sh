#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (ASan + UBSan) and
# runs each for a bounded time, starting from its seed corpus:
#     scripts/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET...]
# New inputs go to build/fuzz/corpus-TARGET (not into the repository). A
# crash stops the script with the input saved as build/fuzz/crash-TARGET-*;
# keep it as tests/fuzz/regressions/TARGET/NAME (ctest replays those on
# every build) once the bug is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors config tokenizer tokenize calib)
scripts/deps.sh
CC=clang cmake -S . -B build/fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEQ_FUZZ=ON \
    -DMOEQ_CUDA=OFF >/dev/null
cmake --build build/fuzz -j"$(nproc)" --target $(printf 'fuzz_%s ' "${targets[@]}") >/dev/null
for t in "${targets[@]}"; do
    work=build/fuzz/corpus-$t
    mkdir -p "$work"
    echo "fuzz_$t: ${secs} s"
    # A slow input (over 10 s) or a leak counts as a failure too.
    log=build/fuzz/fuzz_$t.log
    if ! ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        "build/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="build/fuzz/crash-$t-" \
        "$work" "tests/fuzz/corpus/$t" > "$log" 2>&1; then
        grep -v "^#" "$log" | tail -40
        echo "fuzz_$t FAILED: the input is saved under build/fuzz (log: $log)"
        exit 1
    fi
    grep -E "stat::(number_of_executed_units|new_units_added)|^Done" "$log"
done
echo "fuzz: all targets ran ${secs} s without a failure"
