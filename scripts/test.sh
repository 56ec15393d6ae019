#!/usr/bin/env bash
# Runs the whole test suite: installs dependencies, builds the sanitizer
# build (AddressSanitizer + UBSan, CPU only) and runs every test in it, then
# builds the release build (with the CUDA backend when nvcc is present) and
# runs the tests again against it, then fuzzes each parser for a bounded
# time (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)

cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Asan -DMOEQ_CUDA=OFF >/dev/null
cmake --build build/asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build/asan --output-on-failure -j"$jobs"

cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j"$jobs"
ctest --test-dir build/release --output-on-failure -j"$jobs"

# Bounded fuzzing of the parsers (clang, libFuzzer): MOEQ_FUZZ_SECONDS per
# target (default 60; 0 skips). ctest above already replayed the seed
# corpora and the regression inputs.
fuzz_seconds=${MOEQ_FUZZ_SECONDS:-60}
if [ "$fuzz_seconds" -gt 0 ]; then
    scripts/fuzz.sh "$fuzz_seconds"
fi
