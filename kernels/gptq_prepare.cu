// gptq_prepare.cu: the elementwise steps of GPTQ's preparation on the GPU
// (the factorisations are cuSOLVER calls in src/backend/cuda/cuda_gptq.c):
// the diagonal, the act-order permutation with dead columns, and damping.
#include "kernels.h"

namespace {

__global__ void diag_kernel(const float *H, int n, float *diag)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        diag[i] = H[(size_t)i * n + i];
}

__global__ void permute_hessian_kernel(const float *H, int n, const int32_t *perm,
                                       const uint8_t *dead, float *work)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int i = blockIdx.y;
    if (j >= n)
        return;
    int ci = perm[i], cj = perm[j];
    float h = dead[ci] || dead[cj] ? 0.0f : H[(size_t)ci * n + cj];
    work[(size_t)i * n + j] = ci == cj && dead[ci] ? 1.0f : h;
}

__global__ void copy_add_diag_kernel(const float *src, int n, float lambda, float *dst)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int i = blockIdx.y;
    if (j < n) {
        float v = src[(size_t)i * n + j];
        dst[(size_t)i * n + j] = i == j ? __fadd_rn(v, lambda) : v;
    }
}

} // namespace

extern "C" cudaError_t moeq_k_diag(const float *H, int n, float *diag, cudaStream_t stream)
{
    if (n <= 0)
        return cudaSuccess;
    diag_kernel<<<(unsigned)((n + 255) / 256), 256, 0, stream>>>(H, n, diag);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_gptq_permute_hessian(const float *H, int n, const int32_t *perm,
                                                   const uint8_t *dead, float *work,
                                                   cudaStream_t stream)
{
    if (n <= 0)
        return cudaSuccess;
    permute_hessian_kernel<<<dim3((unsigned)((n + 255) / 256), (unsigned)n), 256, 0, stream>>>(
        H, n, perm, dead, work);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_copy_add_diag(const float *src, int n, float lambda, float *dst,
                                            cudaStream_t stream)
{
    if (n <= 0)
        return cudaSuccess;
    copy_add_diag_kernel<<<dim3((unsigned)((n + 255) / 256), (unsigned)n), 256, 0, stream>>>(
        src, n, lambda, dst);
    return cudaGetLastError();
}
