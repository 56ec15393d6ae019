#!/usr/bin/env bash
# bench/synthetic/sweep.sh: the benchmark set of bench/RESULTS.md on one GPU:
# the Qwen3-30B-A3B shape in the three expert-calibration modes (overlapped),
# bypass mode with --wait-for-layer, and bypass mode under 24 and 12 GiB
# budgets. Extra shapes as arguments (e.g. glm45-air) run in bypass mode.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=bench/synthetic/run.sh
MODES="all weighted routed" $R qwen3-30b-a3b
MODES=all MEMORY=wait $R qwen3-30b-a3b
MODES=all BUDGET=24GiB $R qwen3-30b-a3b
MODES=all BUDGET=12GiB $R qwen3-30b-a3b
for shape in "$@"; do
    MODES=all LAYERS=2 $R "$shape"
done
