/* cpu_norm.c: RMSNorm (Zhang & Sennrich 2019) as transformers' LlamaRMSNorm
 * computes it in fp32: variance = mean(x^2), x * rsqrt(variance + eps), and
 * only then the weight. */
#include "backend/cpu/cpu_ops.h"

#include <math.h>

void cpu_rmsnorm(const float *x, const float *w, int rows, int dim, float eps, float *y)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        float *yr = y + (size_t)r * dim;
        /* torch sums in float with pairwise blocking; a double sum rounded
         * once is closer to it than a running float sum. */
        double sum_sq = 0.0;
        for (int i = 0; i < dim; i++)
            sum_sq += (double)xr[i] * xr[i];
        float variance = (float)(sum_sq / dim);
        float inv_rms = 1.0f / sqrtf(variance + eps);
        for (int i = 0; i < dim; i++)
            yr[i] = w[i] * (xr[i] * inv_rms);
    }
}
