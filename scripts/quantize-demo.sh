#!/usr/bin/env bash
# The main job on the bundled demo model: installs dependencies, builds
# moeq, quantizes demo/qwen3-moe-demo to 4-bit GPTQ (group 128) with the
# bundled calibration data, then scores the result against the original on
# held-out text (demo/eval-sample.jsonl).
#   scripts/quantize-demo.sh [extra moeq quantize flags...]
# Output: out/demo-gptq (replaced on each run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j"$(nproc)" >/dev/null
# --device auto (the default) runs on the first GPU when this build has the
# CUDA backend (CMake found nvcc) and a GPU is present, else on the CPU.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1 &&
    ! build/release/moeq --version | grep -q cuda; then
    echo "moeq: a GPU is present, but no CUDA compiler was found at build time: running on the CPU"
fi
rm -rf out/demo-gptq
mkdir -p out
build/release/moeq quantize --model demo/qwen3-moe-demo --out out/demo-gptq "$@"
build/release/moeq eval out/demo-gptq --reference demo/qwen3-moe-demo \
    --text demo/eval-sample.jsonl --seqlen 512
