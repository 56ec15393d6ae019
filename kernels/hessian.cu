// hessian.cu: the elementwise parts of the GPTQ Hessian update; the product
// itself is a cuBLAS GEMM (src/backend/cuda/cuda_hessian.c).
#include "kernels.h"

#include <cuda_bf16.h>
#include <math.h>

namespace {

__global__ void scale_rows_kernel(const void *x, int is_bf16, const float *w, int rows, int n,
                                  void *y)
{
    // One row per block, its columns over the threads (no 64-bit division
    // per element).
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float s = w[r];
        for (int c = threadIdx.x; c < n; c += blockDim.x) {
            size_t i = (size_t)r * n + c;
            if (is_bf16) {
                float v = __bfloat162float(((const __nv_bfloat16 *)x)[i]);
                ((__nv_bfloat16 *)y)[i] = __float2bfloat16_rn(__fmul_rn(v, s));
            } else {
                ((float *)y)[i] = __fmul_rn(((const float *)x)[i], s);
            }
        }
    }
}

__global__ void count_bad_weights_kernel(const float *w, int rows, int *bad)
{
    int found = 0;
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < rows; r += gridDim.x * blockDim.x)
        found += !(w[r] >= 0.0f) || !isfinite(w[r]);
    if (found)
        atomicAdd(bad, found);
}

unsigned grid_for(size_t n)
{
    size_t blocks = (n + 255) / 256;
    return (unsigned)(blocks < 8192 ? blocks : 8192);
}

} // namespace

extern "C" cudaError_t moeq_k_scale_rows(const void *x, int is_bf16, const float *w, int rows,
                                         int n, void *y, cudaStream_t stream)
{
    size_t total = (size_t)rows * n;
    if (total == 0)
        return cudaSuccess;
    scale_rows_kernel<<<rows < 65535 ? rows : 65535, 256, 0, stream>>>(x, is_bf16, w, rows, n, y);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_count_bad_weights(const float *w, int rows, int *bad,
                                                cudaStream_t stream)
{
    if (rows <= 0)
        return cudaSuccess;
    count_bad_weights_kernel<<<grid_for((size_t)rows), 256, 0, stream>>>(w, rows, bad);
    return cudaGetLastError();
}
