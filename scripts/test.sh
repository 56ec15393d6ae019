#!/usr/bin/env bash
# Runs the whole test suite: installs dependencies, builds the sanitizer
# build (AddressSanitizer + UBSan, CPU only) and runs every test in it, then
# builds the release build (with the CUDA backend when nvcc is present) and
# runs the tests again against it.
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
