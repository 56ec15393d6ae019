/* awq.c: AWQ's activation statistics, scales, pseudo-quantization and
 * clipping search (see awq.h). */
#include "quant/awq.h"

#include "quant/grid.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void moeq_awq_act_abs_sum(const float *x, int rows, int cols, const float *w, double *acc)
{
    for (int t = 0; t < rows; t++) {
        const float *xt = x + (size_t)t * cols;
        double wt = w ? w[t] : 1.0;
        for (int j = 0; j < cols; j++)
            acc[j] += wt * fabsf(xt[j]);
    }
}

void moeq_awq_weight_abs_sum(const float *W, int rows, int cols, int group_size, double *acc)
{
    const int gs = group_size > 0 ? group_size : cols;
    for (int r = 0; r < rows; r++)
        for (int g0 = 0; g0 < cols; g0 += gs) {
            const float *w = W + (size_t)r * cols + g0;
            float m = 0.0f;
            for (int c = 0; c < gs; c++)
                m = fabsf(w[c]) > m ? fabsf(w[c]) : m;
            if (m > 0.0f)
                for (int c = 0; c < gs; c++)
                    acc[g0 + c] += fabsf(w[c]) / m;
        }
}

void moeq_awq_scales(const double *x_mean, const double *w_mean, int cols, double alpha,
                     int pow2, float *s)
{
    double lo = INFINITY, hi = 0.0;
    double *v = malloc(sizeof(double) * (size_t)cols);
    for (int j = 0; j < cols; j++) {
        double x = pow(x_mean[j], alpha) / (pow(w_mean[j], 1.0 - alpha) + 1e-4);
        x = x < 1e-4 ? 1e-4 : x;
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
        if (v)
            v[j] = x;
        else
            s[j] = (float)x;
    }
    double norm = sqrt(lo * hi);
    for (int j = 0; j < cols; j++) {
        double x = (v ? v[j] : s[j]) / norm;
        s[j] = pow2 ? ldexpf(1.0f, (int)lround(log2(x))) : (float)x;
    }
    free(v);
}

void moeq_awq_pseudo_quantize(const float *W, int rows, int cols, const float *s,
                              const moeq_gptq_config *cfg, float *out)
{
    const int gs = cfg->group_size > 0 ? cfg->group_size : cols;
    const int32_t maxq = (1 << cfg->bits) - 1;
    for (int r = 0; r < rows; r++) {
        float *o = out + (size_t)r * cols;
        const float *w = W + (size_t)r * cols;
        for (int c = 0; c < cols; c++)
            o[c] = s ? w[c] * s[c] : w[c];
        for (int g0 = 0; g0 < cols; g0 += gs) {
            moeq_grid g = moeq_grid_fit(o + g0, gs, cfg->bits, cfg->sym, cfg->scale_bf16);
            for (int c = g0; c < g0 + gs; c++)
                o[c] = moeq_grid_value(g, moeq_grid_code(g, o[c], maxq));
        }
        if (s)
            for (int c = 0; c < cols; c++)
                o[c] /= s[c];
    }
}

/* e^T H_gg e for the group starting at column g0 (e of length gs). */
static double group_loss(const float *H, int cols, int g0, int gs, const float *e)
{
    double sum = 0.0;
    for (int a = 0; a < gs; a++) {
        const float *h = H + (size_t)(g0 + a) * cols + g0;
        double row = 0.0;
        for (int b = 0; b < gs; b++)
            row += (double)h[b] * e[b];
        sum += row * e[a];
    }
    return sum;
}

moeq_code moeq_awq_quantize(const float *W, int rows, int cols, const float *H,
                            const moeq_gptq_config *cfg, moeq_quantized *out, double *loss,
                            moeq_error *err)
{
    moeq_code rc = moeq_gptq_check_config(cfg, cols, err);
    if (rc || (rc = moeq_quantized_alloc(out, rows, cols, cfg->bits, cfg->group_size, err)))
        return rc;
    const int gs = cfg->group_size > 0 ? cfg->group_size : cols;
    const int32_t maxq = (1 << cfg->bits) - 1;
    float *e = malloc(sizeof(float) * (size_t)gs);
    if (!e) {
        moeq_quantized_free(out);
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for AWQ's clipping search");
    }
    double total = 0.0;
    for (int c = 0; c < cols; c++)
        out->g_idx[c] = c / gs;
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < out->n_groups; g++) {
            const float *x = W + (size_t)r * cols + (size_t)g * gs;
            moeq_grid best = moeq_grid_fit(x, gs, cfg->bits, cfg->sym, cfg->scale_bf16);
            double best_loss = 0.0;
            for (int i = 0; H && i < MOEQ_AWQ_CLIP_STEPS; i++) {
                float p = 1.0f - (float)i / (float)MOEQ_AWQ_CLIP_GRID;
                moeq_grid cand = moeq_grid_fit_shrunk(x, gs, cfg->bits, cfg->sym,
                                                      cfg->scale_bf16, p);
                for (int c = 0; c < gs; c++)
                    e[c] = moeq_grid_value(cand, moeq_grid_code(cand, x[c], maxq)) - x[c];
                double l = group_loss(H, cols, g * gs, gs, e);
                if (i == 0 || l < best_loss) { /* ties keep the wider range */
                    best_loss = l;
                    best = cand;
                }
            }
            total += best_loss;
            out->scales[(size_t)g * rows + r] = best.scale;
            out->zeros[(size_t)g * rows + r] = best.zero;
            for (int c = 0; c < gs; c++)
                out->codes[(size_t)r * cols + (size_t)g * gs + c] =
                    (uint8_t)moeq_grid_code(best, x[c], maxq);
        }
    free(e);
    if (loss)
        *loss = total;
    return MOEQ_OK;
}
