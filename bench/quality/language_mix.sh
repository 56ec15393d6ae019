#!/usr/bin/env bash
# Calibration language mix on the demo model: GPTQ 4-bit g128 calibrated on
# the corpus train split with every language (the whole mix), English only,
# and each language group left out in turn; every model evaluated on every
# language group of the valid split, for the expert-calibration modes given.
# RTN (no calibration) is the floor. Languages outside the four groups (id)
# stay in every calibration set. Needs gnuplot (Debian: gnuplot-nox).
#   bench/quality/language_mix.sh [CORPUS_DIR] [WINDOWS_PER_GROUP] [NSAMPLES] [MODES]
#   (defaults: ../shared/corpus 24 64 "all weighted")
# Writes bench/results/demo_language_mix.tsv (one row per model and
# evaluation group) and demo_language_mix.png (KL per evaluation group for
# each calibration set, one panel per mode).
set -euo pipefail
cd "$(dirname "$0")/../.."
corpus=${1:-../shared/corpus}
windows=${2:-24}
nsamples=${3:-64}
modes=${4:-all weighted}
moeq=build/release/moeq
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j"$(nproc)" --target moeq >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
xz -dc "$corpus/valid.jsonl.xz" > "$work/valid.jsonl"
xz -dc "$corpus/train.jsonl.xz" > "$work/train.jsonl"
declare -A groups=([en]=en [code]=code-c,code-python
                   [european]=de,it,cs,pl,es,pt,fr,ru,bg,eo,sk,ga [cjk]=zh,ja)
order=(en code european cjk)
# Every language of the train split, and the mix without one group.
all_langs=$(python3 -c "
import json, sys
print(','.join(sorted({json.loads(l)['lang'] for l in open(sys.argv[1])})))" "$work/train.jsonl")
without() { # group -> all languages but the group's
    python3 -c "
import sys
drop = set(sys.argv[2].split(','))
print(','.join(l for l in sys.argv[1].split(',') if l not in drop))" "$all_langs" "${groups[$1]}"
}
out=bench/results/demo_language_mix.tsv
printf 'calib\tmode\teval_group\tppl\tref_ppl\tkl\ttop1\n' > "$out"
evaluate() { # dir calib mode
    for g in "${order[@]}"; do
        "$moeq" eval "$1" --reference demo/qwen3-moe-demo --text "$work/valid.jsonl" \
            --lang "${groups[$g]}" --seqlen 512 --max-windows "$windows" --quiet > "$work/e.txt"
        awk -v c="$2" -v m="$3" -v g="$g" '
            /^perplexity/ {p=$2} /^ref_ppl/ {r=$2} /^kl/ {k=$2} /^top1_agree/ {t=$2}
            END {printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c, m, g, p, r, k, t}' \
            "$work/e.txt" >> "$out"
    done
}
"$moeq" quantize --model demo/qwen3-moe-demo --out "$work/rtn" --method rtn --quiet > /dev/null
evaluate "$work/rtn" none rtn
rm -rf "$work/rtn"
calibs=(mix en-only)
for g in "${order[@]}"; do calibs+=("no-$g"); done
for calib in "${calibs[@]}"; do
    case $calib in
        mix) langs=$all_langs ;;
        en-only) langs=en ;;
        no-*) langs=$(without "${calib#no-}") ;;
    esac
    for mode in $modes; do
        d=$work/q-$calib-$mode
        "$moeq" quantize --model demo/qwen3-moe-demo --out "$d" --expert-calib "$mode" \
            --calib "$work/train.jsonl" --calib-lang "$langs" --nsamples "$nsamples" \
            --seqlen 512 --quiet > /dev/null
        evaluate "$d" "$calib" "$mode"
        rm -rf "$d"
    done
done
n_modes=$(echo $modes | wc -w)
gnuplot <<GP
set terminal pngcairo size $((520 * n_modes)),520 font ",10"
set output "bench/results/demo_language_mix.png"
set multiplot layout 1,$n_modes
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel "KL to bf16 (nats per token)"
set xlabel "evaluation group"
set key top left font ",8"
set grid ytics
do for [m in "$modes"] {
    set title "demo MoE, GPTQ 4-bit g128 (".m."), $nsamples x 512 calibration tokens"
    plot for [c in "none mix en-only no-en no-code no-european no-cjk"] \
        "< awk -F'\t' -v c=".c." -v m=".m." 'NR > 1 && \$1 == c && (\$2 == m || c == \"none\")' $out" \
        using 6:xtic(3) title (c eq "none" ? "RTN" : c)
}
unset multiplot
GP
echo "wrote $out and bench/results/demo_language_mix.png"
