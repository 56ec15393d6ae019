#!/usr/bin/env bash
# Quality of the demo model against the amount of calibration data, per
# expert-calibration mode (4-bit g128, the bundled calib_data, seqlen 512),
# evaluated on demo/eval-sample.jsonl; and the routed token counts per
# expert and layer at 128 windows. Needs gnuplot (Debian: gnuplot-nox).
#   bench/quality/calib_size.sh
# Writes bench/results/demo_calib_size.tsv, demo_calib_size.png and
# demo_expert_tokens.png.
set -euo pipefail
cd "$(dirname "$0")/../.."
moeq=build/release/moeq
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j"$(nproc)" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
res=bench/results
tsv=$res/demo_calib_size.tsv
printf 'mode\tnsamples\ttokens\tppl\tref_ppl\tkl\ttop1\n' > "$tsv"
for mode in all routed weighted; do
    for ns in 8 16 32 64 128; do
        q=$work/q-$mode-$ns
        "$moeq" quantize --model demo/qwen3-moe-demo --out "$q" --expert-calib "$mode" \
            --nsamples "$ns" --seqlen 512 --quiet > /dev/null
        "$moeq" eval "$q" --reference demo/qwen3-moe-demo --text demo/eval-sample.jsonl \
            --quiet > "$work/e.txt"
        awk -v m="$mode" -v n="$ns" '
            /^perplexity/ {p=$2} /^ref_ppl/ {r=$2} /^kl/ {k=$2} /^top1_agree/ {t=$2}
            END {printf "%s\t%d\t%d\t%s\t%s\t%s\t%s\n", m, n, n * 512, p, r, k, t}' \
            "$work/e.txt" >> "$tsv"
        if [ "$mode" = routed ] && [ "$ns" = 128 ]; then
            python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
for L in r['layers']:
    for e, t in enumerate(L.get('expert_tokens', [])):
        print(L['layer'], e, t)
    print()" "$q/report.json" > "$work/tokens.dat"
        fi
        rm -rf "$q"
    done
done
gnuplot <<GP
set terminal pngcairo size 900,560 font ",11"
set output "$res/demo_calib_size.png"
set logscale x 2
set xlabel "calibration tokens (windows of 512)"
set ylabel "KL divergence to bf16 (nats per token)"
set title "demo MoE, 4-bit g128 GPTQ: quality vs calibration data"
set key top right
set grid
plot for [m in "all routed weighted"] "< awk -F'\t' -v m=".m." 'NR > 1 && \$1 == m' $tsv" \
     using 3:6 with linespoints lw 2 title m
set output "$res/demo_expert_tokens.png"
unset logscale x
set title "routed calibration tokens per expert (128 x 512 tokens, top-2 of 16)"
set xlabel "expert"
set ylabel "layer"
set cblabel "tokens"
set view map
set xrange [-0.5:15.5]
set yrange [-0.5:3.5]
set ytics 1
set xtics 1
plot "$work/tokens.dat" using 2:1:3 with image notitle
GP
echo "wrote $tsv and the plots in $res"
