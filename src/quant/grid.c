/* grid.c: fitting the per-row, per-group uniform grid (see grid.h). */
#include "quant/grid.h"

#include "common/dtype.h"

#include <math.h>

moeq_grid moeq_grid_fit(const float *x, int n, int bits, int sym)
{
    const int32_t maxq = (1 << bits) - 1;
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
    if (xmin == 0.0f && xmax == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    moeq_grid g;
    g.scale = moeq_f16_to_f32(moeq_f32_to_f16((xmax - xmin) / (float)maxq));
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
            g.scale = moeq_f16_to_f32(moeq_f32_to_f16(xmax / (float)(maxq - 1)));
            if (g.scale == 0.0f)
                g.scale = moeq_f16_to_f32(1);
        }
    }
    return g;
}
