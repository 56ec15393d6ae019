#!/usr/bin/env bash
# bench/kernels/run.sh: kernel timings at Qwen3-30B-A3B layer shapes on a GPU
# machine (build as tests/gpu/run.sh does). The GPTQ sweep: the gate/up
# weights of 128 experts against the shared Hessian (196608 x 2048) and their
# down_proj weights, 128 segments of 2048 x 768, each setting of the clipping
# search. Output on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=build/gpu
mkdir -p "$BUILD"
. tests/gpu/env.sh
build_moeq_cuda "$BUILD/build.log" || { tail -30 "$BUILD/build.log"; exit 1; }
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
for mse in 0 2 2.4; do
    "$BUILD/bench_gptq_sweep" 196608 2048 "$mse"
    "$BUILD/bench_gptq_sweep" 262144 768 "$mse" 4 128 128
done
