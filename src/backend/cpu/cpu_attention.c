/* cpu_attention.c: causal softmax attention of one sequence, as transformers'
 * eager_attention_forward computes it in fp32 (scores = q k^T * scaling, mask,
 * softmax, times v), with grouped-query heads, an optional sliding window and
 * optional gpt-oss sink logits. Queries go in blocks so that the score scratch
 * is ATTENTION_BLOCK_ROWS x T rather than T x T, and each block only meets the
 * keys it can see. */
#include "backend/cpu/cpu_ops.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

enum { ATTENTION_BLOCK_ROWS = 64 };

/* First key query i may see. */
static int first_visible_key(int i, int sliding_window)
{
    if (sliding_window > 0 && i - sliding_window + 1 > 0)
        return i - sliding_window + 1;
    return 0;
}

/* Turns one row of scores over keys [key0, key0 + n) into probabilities for
 * query i: keys outside [first_visible_key(i), i] get 0; the sink, when
 * present, takes part in the max and the sum only. */
static void softmax_visible(float *row, int n, int key0, int i, int sliding_window,
                            const float *sink)
{
    int lo = first_visible_key(i, sliding_window) - key0;
    int hi = i - key0; /* inclusive */
    float max = sink ? *sink : -INFINITY;
    for (int j = lo; j <= hi; j++)
        if (row[j] > max)
            max = row[j];
    float sum = sink ? expf(*sink - max) : 0.0f;
    for (int j = 0; j < n; j++) {
        if (j < lo || j > hi) {
            row[j] = 0.0f;
            continue;
        }
        row[j] = expf(row[j] - max);
        sum += row[j];
    }
    for (int j = lo; j <= hi; j++)
        row[j] /= sum;
}

moeq_code cpu_attention_causal(const float *q, const float *k, const float *v, int T, int Hq,
                               int Hkv, int D, int Dv, float scale, int sliding_window,
                               const float *sinks, float *out, moeq_error *err)
{
    if (T < 0 || Hq <= 0 || Hkv <= 0 || D <= 0 || Dv <= 0 || Hq % Hkv != 0 || sliding_window < 0)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "attention: bad shape T=%d Hq=%d Hkv=%d D=%d Dv=%d window=%d "
                         "(Hq must be a multiple of Hkv)",
                         T, Hq, Hkv, D, Dv, sliding_window);
    if (T == 0)
        return MOEQ_OK;
    int block = T < ATTENTION_BLOCK_ROWS ? T : ATTENTION_BLOCK_ROWS;
    float *scores = malloc((size_t)block * T * sizeof *scores);
    if (!scores)
        return moeq_fail(err, MOEQ_ERR_OOM, "attention: out of memory for %d x %d scores", block,
                         T);
    int group = Hq / Hkv;
    size_t q_stride = (size_t)Hq * D, k_stride = (size_t)Hkv * D;
    size_t v_stride = (size_t)Hkv * Dv, out_stride = (size_t)Hq * Dv;
    for (int h = 0; h < Hq; h++) {
        int kv = h / group;
        for (int i0 = 0; i0 < T; i0 += block) {
            int rows = T - i0 < block ? T - i0 : block;
            int key0 = first_visible_key(i0, sliding_window);
            int keys = i0 + rows - key0;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, D, scale,
                        q + (size_t)i0 * q_stride + (size_t)h * D, (int)q_stride,
                        k + (size_t)key0 * k_stride + (size_t)kv * D, (int)k_stride, 0.0f,
                        scores, keys);
            for (int r = 0; r < rows; r++)
                softmax_visible(scores + (size_t)r * keys, keys, key0, i0 + r, sliding_window,
                                sinks ? &sinks[h] : NULL);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, Dv, keys, 1.0f, scores,
                        keys, v + (size_t)key0 * v_stride + (size_t)kv * Dv, (int)v_stride, 0.0f,
                        out + (size_t)i0 * out_stride + (size_t)h * Dv, (int)out_stride);
        }
    }
    free(scores);
    return MOEQ_OK;
}
