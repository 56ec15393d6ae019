#!/usr/bin/env bash
# Quality sweep of one MoE checkpoint: GPTQ in each expert-calibration mode
# (routed, all, weighted) against bits, group size, calibration size and
# calibration language mix, one axis at a time around a base point, with RTN
# at every bits and group size as the floor. Calibration windows (512 tokens)
# are drawn from the corpus train split; every quantized model is evaluated on
# every language group of the valid split (moeq eval: perplexity, KL to the
# original, top-1 agreement). Needs gnuplot (Debian: gnuplot-nox).
#
#   bench/quality/sweep.sh MODEL_DIR [options]
#     --out DIR        results folder (default bench/results/sweep-MODEL_NAME)
#     --corpus DIR     folder with train.jsonl.xz and valid.jsonl.xz
#                      (default ../shared/corpus)
#     --axes LIST      which axes to sweep, of: size bits group mix (default all)
#     --modes LIST     expert-calibration modes (default "all routed weighted")
#     --nsamples LIST  calibration windows, size axis (default "8 16 32 64 128 256 512")
#     --bits LIST      bits axis (default "2 3 4")
#     --groups LIST    group-size axis (default "128 64 32")
#     --mixes LIST     calibration sets, mix axis, of: mix en-only no-en no-code
#                      no-european no-cjk (default all six)
#     --base "B G N"   base point: bits, group size, windows (default "4 128 128");
#                      every axis holds the other parameters there, on the whole mix
#     --windows N      evaluation windows of 512 tokens per language group (default 24)
#     (env MOEQ=PATH: the moeq binary to use instead of building build/release)
#     --device D       moeq quantize and eval --device: auto, cpu or cuda (default
#                      auto); the TSV records where each ran
#     --reduced        a small grid that runs in minutes on a CPU: nsamples "8 32",
#                      bits "3 4", groups "128 64", mixes "mix no-en", base
#                      "4 128 32", 8 evaluation windows (options given override it)
#
# Calibration sets: mix = every language of the train split; en-only; no-GROUP =
# every language but the group's. Evaluation groups: en; code (code-c,
# code-python); european (de it cs pl es pt fr ru bg eo sk ga); cjk (zh ja). The
# language id is in no group: it stays in every calibration set and is not
# evaluated on its own.
#
# Writes, in the results folder:
#   sweep.tsv            one row per quantized model and evaluation group; a
#                        second run with the same folder skips the rows it holds
#   summary.md           the rows as a table: perplexity / KL per evaluation group
#   calib_size.png       KL against calibration tokens per mode, one panel per
#                        evaluation group, RTN as the floor (size axis)
#   language_mix.png     KL per evaluation group for each calibration set, one
#                        panel per mode (mix axis)
#   expert_tokens-MODE.tsv and expert_tokens.png
#                        routed calibration tokens per expert and MoE layer at the
#                        base point, from report.json (the heat map shows the
#                        routed mode's when it ran, else the first mode's)
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-2}"; }
[ $# -ge 1 ] || usage
case $1 in -h|--help) usage 0 ;; esac
model=${1%/}
shift
[ -f "$model/config.json" ] || { echo "sweep.sh: $model/config.json not found" >&2; exit 2; }
name=$(basename "$model")

declare -A opt=()
reduced=0
while [ $# -gt 0 ]; do
    case $1 in
        --reduced) reduced=1; shift ;;
        --out|--corpus|--axes|--modes|--nsamples|--bits|--groups|--mixes|--base|--windows|--device)
            [ $# -ge 2 ] || { echo "sweep.sh: $1 needs a value" >&2; exit 2; }
            opt[${1#--}]=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "sweep.sh: unknown option $1 (--help lists them)" >&2; exit 2 ;;
    esac
done
if [ "$reduced" = 1 ]; then
    def_nsamples="8 32" def_bits="3 4" def_groups="128 64" def_mixes="mix no-en"
    def_base="4 128 32" def_windows=8
else
    def_nsamples="8 16 32 64 128 256 512" def_bits="2 3 4" def_groups="128 64 32"
    def_mixes="mix en-only no-en no-code no-european no-cjk" def_base="4 128 128" def_windows=24
fi
out=${opt[out]:-bench/results/sweep-$name}
corpus=${opt[corpus]:-../shared/corpus}
axes=${opt[axes]:-size bits group mix}
modes=${opt[modes]:-all routed weighted}
nsamples_list=${opt[nsamples]:-$def_nsamples}
bits_list=${opt[bits]:-$def_bits}
groups_list=${opt[groups]:-$def_groups}
mixes=${opt[mixes]:-$def_mixes}
read -r base_bits base_group base_n <<< "${opt[base]:-$def_base}"
windows=${opt[windows]:-$def_windows}
device=${opt[device]:-auto}
seqlen=512

declare -A groups=([en]=en [code]=code-c,code-python
                   [european]=de,it,cs,pl,es,pt,fr,ru,bg,eo,sk,ga [cjk]=zh,ja)
eval_groups=(en code european cjk)
for a in $axes; do
    case $a in size|bits|group|mix) ;; *) echo "sweep.sh: unknown axis $a" >&2; exit 2 ;; esac
done
for m in $modes; do
    case $m in all|routed|weighted) ;; *) echo "sweep.sh: unknown mode $m" >&2; exit 2 ;; esac
done
for c in $mixes; do
    case $c in mix|en-only|no-en|no-code|no-european|no-cjk) ;;
        *) echo "sweep.sh: unknown calibration set $c" >&2; exit 2 ;;
    esac
done
for f in train valid; do
    [ -f "$corpus/$f.jsonl.xz" ] || { echo "sweep.sh: $corpus/$f.jsonl.xz not found" >&2; exit 2; }
done

# MOEQ=path uses that binary (e.g. build/gpu/moeq from tests/gpu/env.sh on a
# GPU machine) instead of building build/release.
moeq=${MOEQ:-build/release/moeq}
if [ -z "${MOEQ:-}" ]; then
    cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build/release -j"$(nproc)" --target moeq >/dev/null
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
xz -dc "$corpus/valid.jsonl.xz" > "$work/valid.jsonl"
xz -dc "$corpus/train.jsonl.xz" > "$work/train.jsonl"

# The languages of each calibration set, from those of the train split.
all_langs=$(python3 -c "
import json, sys
print(','.join(sorted({json.loads(l)['lang'] for l in open(sys.argv[1]) if l.strip()})))" \
    "$work/train.jsonl")
calib_langs() { # set -> comma-separated languages
    case $1 in
        mix) echo "$all_langs" ;;
        en-only) echo en ;;
        no-*) python3 -c "
import sys
drop = set(sys.argv[2].split(','))
print(','.join(l for l in sys.argv[1].split(',') if l not in drop))" "$all_langs" "${groups[${1#no-}]}" ;;
    esac
}

# The points: method mode bits group nsamples calib (RTN: mode -, nsamples 0,
# calib none), each once whichever axes name it.
points=()
declare -A listed=()
add() {
    local key="$*"
    [ -n "${listed[$key]:-}" ] && return
    listed[$key]=1
    points+=("$key")
}
for a in $axes; do
    case $a in
        size) add rtn - "$base_bits" "$base_group" 0 none
              for m in $modes; do for n in $nsamples_list; do
                  add gptq "$m" "$base_bits" "$base_group" "$n" mix; done; done ;;
        bits) for b in $bits_list; do
                  add rtn - "$b" "$base_group" 0 none
                  for m in $modes; do add gptq "$m" "$b" "$base_group" "$base_n" mix; done
              done ;;
        group) for g in $groups_list; do
                  add rtn - "$base_bits" "$g" 0 none
                  for m in $modes; do add gptq "$m" "$base_bits" "$g" "$base_n" mix; done
              done ;;
        mix) add rtn - "$base_bits" "$base_group" 0 none
             for c in $mixes; do for m in $modes; do
                 add gptq "$m" "$base_bits" "$base_group" "$base_n" "$c"; done; done ;;
    esac
done

tsv=$out/sweep.tsv
header=$'method\texpert_calib\tbits\tgroup\tnsamples\tcalib\tcalib_tokens\teval_group\teval_windows\tppl\tref_ppl\tkl\ttop1\tquantize_s\tquantize_device\teval_device'
declare -A done_rows=()
if [ -f "$tsv" ]; then
    [ "$(head -n1 "$tsv")" = "$header" ] ||
        { echo "sweep.sh: $tsv has another header: move it away first" >&2; exit 2; }
    while IFS=$'\t' read -r me mo b g n c _ eg ew _; do
        done_rows["$me $mo $b $g $n $c $eg $ew"]=1
    done < <(tail -n +2 "$tsv")
else
    printf '%s\n' "$header" > "$tsv"
fi

i=0
for p in "${points[@]}"; do
    i=$((i + 1))
    read -r method mode bits group n calib <<< "$p"
    todo=0
    for eg in "${eval_groups[@]}"; do
        [ -z "${done_rows["$p $eg $windows"]:-}" ] && todo=1
    done
    if [ "$todo" = 0 ]; then
        echo "[$i/${#points[@]}] $p: in $tsv already"
        continue
    fi
    q=$work/q
    args=(--bits "$bits" --group-size "$group" --device "$device")
    if [ "$method" = rtn ]; then
        args+=(--method rtn)
    else
        args+=(--expert-calib "$mode" --calib "$work/train.jsonl" --calib-lang "$(calib_langs "$calib")"
               --nsamples "$n" --seqlen "$seqlen")
    fi
    "$moeq" quantize --model "$model" --out "$q" "${args[@]}" --quiet > /dev/null
    read -r secs qdev <<< "$(python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
print('%.1f' % r['total_seconds'], r['backend'])" "$q/report.json")"
    if [ "$method" = gptq ] && [ "$bits $group $n $calib" = "$base_bits $base_group $base_n mix" ]; then
        python3 -c "
import json, sys
for L in json.load(open(sys.argv[1]))['layers']:
    if L.get('expert_tokens'):
        for e, t in enumerate(L['expert_tokens']):
            print(L['layer'], e, t, sep='\t')
        print()" "$q/report.json" > "$out/expert_tokens-$mode.tsv"
    fi
    line="[$i/${#points[@]}] $p: quantize ${secs} s; KL"
    for eg in "${eval_groups[@]}"; do
        "$moeq" eval "$q" --reference "$model" --text "$work/valid.jsonl" --lang "${groups[$eg]}" \
            --seqlen "$seqlen" --max-windows "$windows" --device "$device" --quiet > "$work/e.txt"
        row=$(awk -v p="$p" -v eg="$eg" -v w="$windows" -v s="$secs" -v t=$((n * seqlen)) -v qd="$qdev" '
            /^perplexity/ {pp=$2} /^ref_ppl/ {r=$2} /^kl/ {k=$2} /^top1_agree/ {a=$2} /^device/ {d=$2}
            END {split(p, f, " ");
                 printf "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
                        f[1], f[2], f[3], f[4], f[5], f[6], t, eg, w, pp, r, k, a, s, qd, d}' "$work/e.txt")
        printf '%s\n' "$row" >> "$tsv"
        line+=" $eg $(cut -f12 <<< "$row")"
    done
    echo "$line"
    rm -rf "$q"
done

# summary.md: one line per model, perplexity / KL per evaluation group, for
# the evaluation windows of this run.
awk -F'\t' -v w="$windows" -v name="$name" '
    NR == 1 || $9 != w {next}
    { key = $1 FS $2 FS $3 FS $4 FS $5 FS $6
      if (!(key in seen)) {seen[key] = 1; order[++nk] = key}
      cell[key, $8] = $10 " / " $12; ref[$8] = $11 }
    END {
      printf "%s, %s evaluation windows of 512 tokens per group; cells: perplexity / KL\n\n", name, w
      printf "| method | expert calib | bits | group | windows | calibration | en | code | european | cjk |\n"
      printf "|---|---|---:|---:|---:|---|---|---|---|---|\n"
      printf "| bf16 | | | | | | %s | %s | %s | %s |\n", ref["en"], ref["code"], ref["european"], ref["cjk"]
      for (i = 1; i <= nk; i++) {
          split(order[i], f, FS)
          printf "| %s | %s | %s | %s | %s | %s |", f[1], f[2], f[3], f[4], f[5], f[6]
          printf " %s | %s | %s | %s |\n", cell[order[i], "en"], cell[order[i], "code"],
                 cell[order[i], "european"], cell[order[i], "cjk"]
      }
    }' "$tsv" > "$out/summary.md"

# Plots (a machine without gnuplot stops here; a second run where it is
# draws them from the same TSV). Rows are picked with awk over the TSV (columns: 1 method, 2 mode,
# 3 bits, 4 group, 5 nsamples, 6 calib, 7 calib tokens, 8 evaluation group,
# 9 evaluation windows, 12 KL).
command -v gnuplot >/dev/null ||
    { echo "sweep.sh: no gnuplot here: $out/sweep.tsv written, plots not drawn"; exit 0; }
sel="awk -F'\\t' -v w=$windows -v b=$base_bits -v g=$base_group"
gp_common="set terminal pngcairo size 1100,760 font ',10'
set grid
set key top right font ',9'"
if [[ " $axes " == *" size "* ]]; then
    # RTN's KL drawn as a line across the calibration sizes
    read -r tok_lo tok_hi <<< "$(tr ' ' '\n' <<< "$nsamples_list" | sort -n |
                                 awk -v s=$seqlen 'NR == 1 {lo = $1} {hi = $1} END {print lo * s, hi * s}')"
    gnuplot <<GP
$gp_common
set output "$out/calib_size.png"
set multiplot layout 2,2 title "$name, GPTQ $base_bits-bit g$base_group: KL to the original against calibration data (whole mix)"
set logscale x 2
set xlabel "calibration tokens (windows of 512)"
set ylabel "KL (nats per token)"
do for [eg in "${eval_groups[*]}"] {
    set title "evaluated on ".eg
    plot for [m in "$modes"] \
        "< $sel -v m=".m." -v e=".eg." 'NR > 1 && \$1 == \"gptq\" && \$2 == m && \$3 == b && \$4 == g && \$6 == \"mix\" && \$8 == e && \$9 == w' $tsv | sort -t'\t' -k5,5n" \
        using 7:12 with linespoints lw 2 title m, \
        "< $sel -v e=".eg." 'NR > 1 && \$1 == \"rtn\" && \$3 == b && \$4 == g && \$8 == e && \$9 == w {print $tok_lo, \$12; print $tok_hi, \$12}' $tsv" \
        using 1:2 with lines dt 2 lc rgb "black" title "RTN"
}
unset multiplot
GP
fi
if [[ " $axes " == *" mix "* ]]; then
    n_modes=$(wc -w <<< "$modes")
    gnuplot <<GP
$gp_common
set terminal pngcairo size $((520 * n_modes)),520 font ',10'
set output "$out/language_mix.png"
set multiplot layout 1,$n_modes title "$name: calibration language mix, GPTQ $base_bits-bit g$base_group, $base_n x 512 calibration tokens"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel "KL (nats per token)"
set xlabel "evaluation group"
set key top left font ',8'
set grid ytics
do for [m in "$modes"] {
    set title "expert calibration ".m
    plot for [c in "none $mixes"] \
        "< $sel -v c=".c." -v m=".m." 'NR > 1 && \$3 == b && \$4 == g && \$9 == w && \$6 == c && (c == \"none\" || (\$2 == m && \$5 == $base_n))' $tsv" \
        using 12:xtic(8) title (c eq "none" ? "RTN" : c)
}
unset multiplot
GP
fi
heat=""
for m in routed $modes; do
    if [ -s "$out/expert_tokens-$m.tsv" ]; then heat=$m; break; fi
done
if [ -n "$heat" ]; then
    read -r lo hi ne <<< "$(awk 'NF {if (lo == "" || $1 < lo) lo = $1; if ($1 > hi) hi = $1;
                                      if ($2 + 1 > ne) ne = $2 + 1} END {print lo, hi, ne}' \
                           "$out/expert_tokens-$heat.tsv")"
    gnuplot <<GP
set terminal pngcairo size 1100,$((200 + 60 * (hi - lo + 1))) font ',10'
set output "$out/expert_tokens.png"
set title "$name: routed calibration tokens per expert ($heat, $base_n x 512 tokens, whole mix)"
set xlabel "expert"
set ylabel "layer"
set cblabel "tokens"
set view map
set xrange [-0.5:$ne - 0.5]
set yrange [$lo - 0.5:$hi + 0.5]
set ytics 1
set xtics $(( ne > 16 ? 8 : 1 ))
plot "$out/expert_tokens-$heat.tsv" using 2:1:3 with image notitle
GP
fi
echo "wrote $tsv, $out/summary.md and the plots in $out"
