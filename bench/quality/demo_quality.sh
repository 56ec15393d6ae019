#!/usr/bin/env bash
# Quality of the demo model after quantization, per language group of the
# corpus valid split: RTN and GPTQ (each expert-calibration mode) at 4 and 3
# bits, group 128, calibrated on the bundled mix (calib_data/, the default)
# and on the English documents of the corpus train split only (the
# calibration-shift experiment; the bundled set holds too little English for
# 128 windows of 512 tokens).
#   bench/quality/demo_quality.sh [CORPUS_DIR] [WINDOWS_PER_GROUP]
# Writes bench/results/demo_quality.tsv (one row per model and group).
set -euo pipefail
cd "$(dirname "$0")/../.."
corpus=${1:-../shared/corpus}
windows=${2:-24}
moeq=build/release/moeq
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j"$(nproc)" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
xz -dc "$corpus/valid.jsonl.xz" > "$work/valid.jsonl"
xz -dc "$corpus/train.jsonl.xz" > "$work/train.jsonl"
declare -A groups=([en]=en [code]=code-c,code-python
                   [european]=de,it,cs,pl,es,pt,fr,ru,bg,eo [cjk]=zh,ja)
out=bench/results/demo_quality.tsv
printf 'calib\tmethod\texpert_calib\tbits\tgroup\tppl\tref_ppl\tkl\ttop1\n' > "$out"
evaluate() { # name dir calib method mode bits
    for g in en code european cjk; do
        "$moeq" eval "$2" --reference demo/qwen3-moe-demo --text "$work/valid.jsonl" \
            --lang "${groups[$g]}" --seqlen 512 --max-windows "$windows" --quiet > "$work/e.txt"
        awk -v c="$3" -v m="$4" -v x="$5" -v b="$6" -v g="$g" '
            /^perplexity/ {p=$2} /^ref_ppl/ {r=$2} /^kl/ {k=$2} /^top1_agree/ {t=$2}
            END {printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c, m, x, b, g, p, r, k, t}' \
            "$work/e.txt" >> "$out"
    done
}
for bits in 4 3; do
    "$moeq" quantize --model demo/qwen3-moe-demo --out "$work/rtn$bits" --method rtn \
        --bits "$bits" --quiet > /dev/null
    evaluate rtn "$work/rtn$bits" - rtn - "$bits"
    rm -rf "$work/rtn$bits"
    for calib in mix en; do
        lang=(); [ "$calib" = en ] && lang=(--calib "$work/train.jsonl" --calib-lang en)
        for mode in all routed weighted; do
            d="$work/gptq-$calib-$mode-$bits"
            "$moeq" quantize --model demo/qwen3-moe-demo --out "$d" --bits "$bits" \
                --expert-calib "$mode" "${lang[@]}" --quiet > /dev/null
            evaluate "gptq" "$d" "$calib" gptq "$mode" "$bits"
            rm -rf "$d"
        done
    done
done
echo "wrote $out"
