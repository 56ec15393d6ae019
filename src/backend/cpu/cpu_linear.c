/* cpu_linear.c: nn.Linear on the CPU, y = x w^T + b, through OpenBLAS. */
#include "backend/cpu/cpu_ops.h"

#include <cblas.h>

void cpu_linear(const float *x, int rows, int in, const float *w, const float *bias, int out,
                float *y)
{
    if (rows <= 0 || out <= 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, x, in, w, in, 0.0f,
                y, out);
    if (!bias)
        return;
    for (int r = 0; r < rows; r++) {
        float *yr = y + (size_t)r * out;
        for (int o = 0; o < out; o++)
            yr[o] += bias[o];
    }
}
