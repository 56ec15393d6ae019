// layer.cu: fp32 row and elementwise ops of a decoder layer, written to
// round as src/backend/cpu does (the _rn intrinsics keep nvcc from fusing
// what the CPU reference computes as separate roundings).
#include "kernels.h"

#include <cuda_bf16.h>
#include <math.h>

namespace {

constexpr int kNormThreads = 256;

__device__ void store(float *y, float v)
{
    *y = v;
}

__device__ void store(uint16_t *y, float v)
{
    *y = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// One block per row; the sum of squares in double as cpu_rmsnorm takes it.
// The output is fp32 (the CPU's values exactly) or bf16 (rounded once).
// Without a weight (w NULL: Llama-4's L2 norm) the product by 1 is left
// out, which changes no bit.
template <typename Out>
__global__ void __launch_bounds__(kNormThreads)
    rmsnorm_kernel(const float *x, const float *w, int dim, float eps, Out *y)
{
    __shared__ double partial[kNormThreads / 32];
    const float *xr = x + (size_t)blockIdx.x * dim;
    Out *yr = y + (size_t)blockIdx.x * dim;
    double sum_sq = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        sum_sq += (double)xr[i] * xr[i];
    for (int off = 16; off > 0; off >>= 1)
        sum_sq += __shfl_xor_sync(0xffffffffu, sum_sq, off);
    if ((threadIdx.x & 31) == 0)
        partial[threadIdx.x / 32] = sum_sq;
    __syncthreads();
    double total = 0.0;
    for (int k = 0; k < kNormThreads / 32; k++)
        total += partial[k];
    float variance = (float)(total / dim);
    float inv_rms = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(variance, eps)));
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = __fmul_rn(xr[i], inv_rms);
        store(&yr[i], w ? __fmul_rn(w[i], v) : v);
    }
}

__global__ void silu_mul_kernel(const float *gate, const float *up, size_t n, float *out)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up[i]);
    }
}

} // namespace

extern "C" cudaError_t moeq_k_rmsnorm(const float *x, const float *w, int rows, int dim, float eps,
                                      float *y, cudaStream_t stream)
{
    if (rows <= 0 || dim <= 0)
        return cudaSuccess;
    rmsnorm_kernel<float><<<(unsigned)rows, kNormThreads, 0, stream>>>(x, w, dim, eps, y);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_rmsnorm_bf16(const float *x, const float *w, int rows, int dim,
                                           float eps, uint16_t *y, cudaStream_t stream)
{
    if (rows > 0 && dim > 0)
        rmsnorm_kernel<uint16_t><<<(unsigned)rows, kNormThreads, 0, stream>>>(x, w, dim, eps, y);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_silu_mul(const float *gate, const float *up, size_t n, float *out,
                                       cudaStream_t stream)
{
    if (n == 0)
        return cudaSuccess;
    size_t blocks = (n + 255) / 256;
    silu_mul_kernel<<<(unsigned)(blocks < 16384 ? blocks : 16384), 256, 0, stream>>>(gate, up, n,
                                                                                    out);
    return cudaGetLastError();
}
