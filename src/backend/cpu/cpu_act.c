/* cpu_act.c: elementwise activations and row softmax, fp32. */
#include "backend/cpu/cpu_ops.h"

#include <math.h>

void cpu_softmax_rows(const float *x, int rows, int cols, float *y)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * cols;
        float *yr = y + (size_t)r * cols;
        float max = xr[0];
        for (int c = 1; c < cols; c++)
            if (xr[c] > max)
                max = xr[c];
        float sum = 0.0f;
        for (int c = 0; c < cols; c++) {
            yr[c] = expf(xr[c] - max);
            sum += yr[c];
        }
        for (int c = 0; c < cols; c++)
            yr[c] /= sum;
    }
}

void cpu_sigmoid(const float *x, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++)
        y[i] = 1.0f / (1.0f + expf(-x[i]));
}

void cpu_silu_mul(const float *gate, const float *up, size_t n, float *out)
{
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void cpu_swiglu_clamped(const float *gate, const float *up, size_t n, float alpha, float limit,
                        float *out)
{
    for (size_t i = 0; i < n; i++) {
        float g = gate[i] > limit ? limit : gate[i];
        float u = up[i] > limit ? limit : up[i] < -limit ? -limit : up[i];
        float glu = g * (1.0f / (1.0f + expf(-(g * alpha))));
        out[i] = (u + 1.0f) * glu;
    }
}
