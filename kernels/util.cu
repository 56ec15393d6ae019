// util.cu: small matrix utilities shared by the Hessian and GPTQ host glue:
// counting non-finite values, and making a square matrix symmetric or
// triangular in place (32 x 32 tiles through shared memory, so both the read
// of the transposed tile and the write are coalesced).
#include "kernels.h"

#include <math.h>

namespace {

constexpr int kTile = 32;

__global__ void count_nonfinite_kernel(const float *x, size_t n, int *count)
{
    int found = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        found += !isfinite(x[i]);
    if (found)
        atomicAdd(count, found);
}

// Tile (bx, by) with bx < by lies in the lower triangle; it takes the
// transpose of tile (by, bx) of the upper one. Diagonal tiles mirror inside.
__global__ void mirror_upper_kernel(float *H, int n)
{
    __shared__ float tile[kTile][kTile + 1];
    int tr = blockIdx.y, tc = blockIdx.x; // destination tile row, column
    if (tc > tr)
        return;
    int x = threadIdx.x;
    for (int y = threadIdx.y; y < kTile; y += blockDim.y) {
        int src_r = tc * kTile + y, src_c = tr * kTile + x; // upper tile (tc, tr)
        if (src_r < n && src_c < n)
            tile[y][x] = H[(size_t)src_r * n + src_c];
    }
    __syncthreads();
    for (int y = threadIdx.y; y < kTile; y += blockDim.y) {
        int r = tr * kTile + y, c = tc * kTile + x;
        if (r < n && c < n && r > c)
            H[(size_t)r * n + c] = tile[x][y];
    }
}

__global__ void zero_lower_kernel(float *A, int n)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int r = blockIdx.y;
    if (c < n && r > c)
        A[(size_t)r * n + c] = 0.0f;
}

} // namespace

extern "C" cudaError_t moeq_k_count_nonfinite(const float *x, size_t n, int *count,
                                              cudaStream_t stream)
{
    if (n == 0)
        return cudaSuccess;
    size_t blocks = (n + 255) / 256;
    count_nonfinite_kernel<<<(unsigned)(blocks < 4096 ? blocks : 4096), 256, 0, stream>>>(x, n,
                                                                                         count);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_mirror_upper(float *H, int n, cudaStream_t stream)
{
    if (n <= 0)
        return cudaSuccess;
    unsigned tiles = (unsigned)((n + kTile - 1) / kTile);
    mirror_upper_kernel<<<dim3(tiles, tiles), dim3(kTile, 8), 0, stream>>>(H, n);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_zero_lower(float *A, int n, cudaStream_t stream)
{
    if (n <= 0)
        return cudaSuccess;
    zero_lower_kernel<<<dim3((unsigned)((n + 255) / 256), (unsigned)n), 256, 0, stream>>>(A, n);
    return cudaGetLastError();
}
