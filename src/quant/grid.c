/* grid.c: fitting the per-row, per-group uniform grid (see grid.h). */
#include "quant/grid.h"

#include "common/dtype.h"

#include <math.h>

/* v rounded to fp16, or (scale_bf16) to a value fp16 and bf16 both hold:
 * bf16 first (8 significant bits, exact in fp16's normal range), then fp16
 * (which only drops bits below its normal range). */
static float round_scale(float v, int scale_bf16)
{
    if (scale_bf16)
        v = moeq_bf16_to_f32(moeq_f32_to_bf16(v));
    return moeq_f16_to_f32(moeq_f32_to_f16(v));
}

/* The grid of the range [xmin, xmax] (xmin <= 0 <= xmax, already made
 * symmetric when sym). */
static moeq_grid grid_from_range(float xmin, float xmax, int bits, int sym, int scale_bf16)
{
    const int32_t maxq = (1 << bits) - 1;
    if (xmin == 0.0f && xmax == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    moeq_grid g;
    g.scale = round_scale((xmax - xmin) / (float)maxq, scale_bf16);
    if (g.scale == 0.0f) /* range below fp16's smallest subnormal */
        g.scale = moeq_f16_to_f32(1);
    if (sym) {
        g.zero = (maxq + 1) / 2;
    } else {
        float z = rintf(-xmin / g.scale);
        g.zero = z < 0.0f ? 0 : z > (float)maxq ? maxq : (int32_t)z;
        if (g.zero == 0) {
            /* GPTQ v1 stores zero - 1, so a zero point of 0 wraps to
             * 2^bits - 1, which GPTQModel's v1 loader (used by
             * transformers) and vLLM misread (docs/formats.md). Use zero 1
             * and stretch the scale so xmax stays on the grid; xmin lies
             * within half a step of 0, inside [-scale, 0]. */
            g.zero = 1;
            g.scale = round_scale(xmax / (float)(maxq - 1), scale_bf16);
            if (g.scale == 0.0f)
                g.scale = moeq_f16_to_f32(1);
        }
    }
    return g;
}

/* min(0, min x) and max(0, max x), made symmetric when sym. */
static void grid_range(const float *x, int n, int sym, float *lo, float *hi)
{
    float xmin = 0.0f, xmax = 0.0f;
    for (int i = 0; i < n; i++) {
        xmin = x[i] < xmin ? x[i] : xmin;
        xmax = x[i] > xmax ? x[i] : xmax;
    }
    if (sym) {
        xmax = fabsf(xmin) > xmax ? fabsf(xmin) : xmax;
        if (xmin < 0.0f)
            xmin = -xmax;
    }
    *lo = xmin;
    *hi = xmax;
}

moeq_grid moeq_grid_fit(const float *x, int n, int bits, int sym, int scale_bf16)
{
    float xmin, xmax;
    grid_range(x, n, sym, &xmin, &xmax);
    return grid_from_range(xmin, xmax, bits, sym, scale_bf16);
}

moeq_grid moeq_grid_fit_shrunk(const float *x, int n, int bits, int sym, int scale_bf16, float p)
{
    float xmin, xmax;
    grid_range(x, n, sym, &xmin, &xmax);
    return grid_from_range(p * xmin, p * xmax, bits, sym, scale_bf16);
}

float moeq_grid_clip_error(moeq_grid g, const float *x, int n, int bits, float norm)
{
    const int32_t maxq = (1 << bits) - 1;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        float d = fabsf(moeq_grid_value(g, moeq_grid_code(g, x[i], maxq)) - x[i]);
        sum += norm == 2.0f ? d * d : powf(d, norm);
    }
    return sum;
}

moeq_grid moeq_grid_fit_mse(const float *x, int n, int bits, int sym, int scale_bf16, float norm)
{
    float xmin, xmax;
    grid_range(x, n, sym, &xmin, &xmax);
    moeq_grid best = grid_from_range(xmin, xmax, bits, sym, scale_bf16);
    if (norm <= 0.0f)
        return best;
    float best_err = moeq_grid_clip_error(best, x, n, bits, norm);
    for (int i = 1; i < MOEQ_GRID_MSE_STEPS; i++) {
        float p = 1.0f - (float)i / (float)MOEQ_GRID_MSE_GRID;
        moeq_grid g = grid_from_range(p * xmin, p * xmax, bits, sym, scale_bf16);
        float e = moeq_grid_clip_error(g, x, n, bits, norm);
        if (e < best_err) {
            best_err = e;
            best = g;
        }
    }
    return best;
}
