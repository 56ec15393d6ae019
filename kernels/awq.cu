// awq.cu: AWQ's kernels (src/quant/awq.h on the device): per-column
// activation statistics, the fake quantization every scale candidate is
// scored with (scale, round, dequantize: moeq_awq_pseudo_quantize), the
// clipping search and rounding of the final weights (moeq_awq_quantize),
// and the squared output error a candidate is scored by. Sums run in a
// fixed order (per-part partial sums, then the parts in order), so a run
// repeats bit for bit.
#include "grid.cuh"
#include "kernels.h"
#include "launch.cuh"

#include <math.h>

namespace {

using namespace moeq_grid_dev;

constexpr int kColThreads = 128;
constexpr int kSumThreads = 256;

__device__ float load(const void *w, int w_bf16, size_t i)
{
    if (w_bf16)
        return __uint_as_float((unsigned)((const uint16_t *)w)[i] << 16);
    return ((const float *)w)[i];
}

__device__ void store(void *out, int out_bf16, size_t i, float v)
{
    if (out_bf16)
        ((uint16_t *)out)[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    else
        ((float *)out)[i] = v;
}

// min(0, min) and max(0, max) of the lane's values, over the warp (exact in
// any order).
__device__ void warp_min_max(float *lo, float *hi)
{
    for (int off = 16; off > 0; off >>= 1) {
        float omin = __shfl_xor_sync(kFull, *lo, off);
        float omax = __shfl_xor_sync(kFull, *hi, off);
        *lo = omin < *lo ? omin : *lo;
        *hi = omax > *hi ? omax : *hi;
    }
}

__device__ double warp_sum_double(double x)
{
    // A butterfly: every lane adds the same pairs (commuted), so all lanes
    // end with the same value.
    for (int off = 16; off > 0; off >>= 1)
        x += __shfl_xor_sync(kFull, x, off);
    return x;
}

// One warp per (row, group): v = w s, the group's min/max grid on v, then
// value(code(v)) / s, as moeq_awq_pseudo_quantize.
__global__ void fake_quant_kernel(const void *w, int w_bf16, int rows, int cols, const float *s,
                                  moeq_k_awq_grid q, void *out, int out_bf16)
{
    const int gs = q.group_size > 0 ? q.group_size : cols, n_groups = cols / gs;
    const int lane = threadIdx.x & 31, warps = blockDim.x / 32;
    const int32_t maxq = (1 << q.bits) - 1;
    const long long total = (long long)rows * n_groups;
    for (long long k = (long long)blockIdx.x * warps + threadIdx.x / 32; k < total;
         k += (long long)gridDim.x * warps) {
        const int r = (int)(k / n_groups), g0 = (int)(k % n_groups) * gs;
        const size_t base = (size_t)r * cols + g0;
        float lo = 0.0f, hi = 0.0f;
        for (int c = lane; c < gs; c += 32) {
            float v = load(w, w_bf16, base + c);
            if (s)
                v = __fmul_rn(v, s[g0 + c]);
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        warp_min_max(&lo, &hi);
        const grid_t grid = grid_from_range(lo, hi, q.bits, q.sym, q.scale_bf16);
        for (int c = lane; c < gs; c += 32) {
            float v = load(w, w_bf16, base + c);
            if (s)
                v = __fmul_rn(v, s[g0 + c]);
            float o = grid_value(grid, grid_code(grid, v, maxq));
            if (s)
                o = __fdiv_rn(o, s[g0 + c]);
            store(out, out_bf16, base + c, o);
        }
    }
}

// One warp per row: for each group, the clipping search of
// moeq_awq_quantize (p = 1, 0.99, ..., 0.21, each scored by e^T H_gg e with
// e the rounding error; ties keep the wider range; H NULL: p = 1 only),
// then the codes and grid of the winner. e lives in the warp's slice of
// shared memory; each lane sums H[a][b] e[b] over its own b for every a
// (in fp32: the search costs rows x 80 x group^2 products, the GPU's
// slower double would dominate the layer), weighted by e[a] in double, and
// one reduction gives the group's loss.
__global__ void clip_quantize_kernel(const float *W, int rows, int cols, const float *H,
                                     moeq_k_awq_grid q, uint8_t *codes, float *scales,
                                     int32_t *zeros, int grid_ld, double *row_loss)
{
    extern __shared__ float e_all[];
    const int gs = q.group_size > 0 ? q.group_size : cols, n_groups = cols / gs;
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const int32_t maxq = (1 << q.bits) - 1;
    const int steps = H ? MOEQ_K_AWQ_CLIP_STEPS : 1;
    float *e = e_all + (size_t)warp * gs;
    for (int r = blockIdx.x * warps + warp; r < rows; r += gridDim.x * warps) {
        const float *x_row = W + (size_t)r * cols;
        double loss_row = 0.0;
        for (int g = 0; g < n_groups; g++) {
            const int g0 = g * gs;
            const float *x = x_row + g0;
            float lo = 0.0f, hi = 0.0f;
            for (int c = lane; c < gs; c += 32) {
                lo = x[c] < lo ? x[c] : lo;
                hi = x[c] > hi ? x[c] : hi;
            }
            warp_min_max(&lo, &hi);
            grid_t best = grid_from_range(lo, hi, q.bits, q.sym, q.scale_bf16);
            double best_loss = 0.0;
            for (int i = 0; H && i < steps; i++) {
                const float p = __fsub_rn(1.0f, __fdiv_rn((float)i, (float)MOEQ_K_AWQ_CLIP_GRID));
                const grid_t cand = grid_from_range(__fmul_rn(p, lo), __fmul_rn(p, hi), q.bits,
                                                    q.sym, q.scale_bf16);
                __syncwarp();
                for (int c = lane; c < gs; c += 32)
                    e[c] = __fsub_rn(grid_value(cand, grid_code(cand, x[c], maxq)), x[c]);
                __syncwarp();
                double part = 0.0;
                for (int a = 0; a < gs; a++) {
                    const float *h = H + (size_t)(g0 + a) * cols + g0;
                    float row = 0.0f;
                    for (int b = lane; b < gs; b += 32)
                        row = fmaf(h[b], e[b], row);
                    part += (double)row * (double)e[a];
                }
                const double l = warp_sum_double(part);
                if (i == 0 || l < best_loss) {
                    best_loss = l;
                    best = cand;
                }
            }
            loss_row += best_loss;
            for (int c = lane; c < gs; c += 32)
                codes[(size_t)r * cols + g0 + c] = (uint8_t)grid_code(best, x[c], maxq);
            if (lane == 0) {
                scales[(size_t)g * grid_ld + r] = best.scale;
                zeros[(size_t)g * grid_ld + r] = best.zero;
            }
        }
        if (lane == 0)
            row_loss[r] = loss_row;
    }
}

// Part blockIdx.y of the rows, one thread per column: partial[part][j] =
// sum over the part's rows i of w[i] |x[idx[i]][j]|.
__global__ void act_abs_part_kernel(const uint16_t *x, int ld, const int32_t *idx,
                                    const float *w, int rows, int cols, double *partial)
{
    const int j = blockIdx.x * blockDim.x + threadIdx.x, part = blockIdx.y;
    if (j >= cols)
        return;
    const long long r0 = (long long)rows * part / MOEQ_K_AWQ_PARTS;
    const long long r1 = (long long)rows * (part + 1) / MOEQ_K_AWQ_PARTS;
    double sum = 0.0;
    for (long long i = r0; i < r1; i++) {
        const size_t t = idx ? (size_t)idx[i] : (size_t)i;
        double v = fabs((double)__uint_as_float((unsigned)x[t * ld + j] << 16));
        sum += w ? (double)w[i] * v : v;
    }
    partial[(size_t)part * cols + j] = sum;
}

__global__ void add_parts_kernel(const double *partial, int cols, double *acc)
{
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols)
        return;
    double sum = 0.0;
    for (int p = 0; p < MOEQ_K_AWQ_PARTS; p++)
        sum += partial[(size_t)p * cols + j];
    acc[j] += sum;
}

// Block p: the squared differences of its part of the rows (weighted by
// w[row]), reduced over the block in a fixed tree.
__global__ void sq_error_part_kernel(const float *y, const float *ref, int rows, int cols,
                                     const float *w, double *partial)
{
    __shared__ double red[kSumThreads];
    const int part = blockIdx.x;
    const long long r0 = (long long)rows * part / MOEQ_K_AWQ_PARTS;
    const long long r1 = (long long)rows * (part + 1) / MOEQ_K_AWQ_PARTS;
    double sum = 0.0;
    for (long long k = r0 * cols + threadIdx.x; k < r1 * cols; k += blockDim.x) {
        const double d = (double)y[k] - (double)ref[k];
        sum += w ? (double)w[k / cols] * d * d : d * d;
    }
    red[threadIdx.x] = sum;
    __syncthreads();
    for (int half = kSumThreads / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half)
            red[threadIdx.x] += red[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        partial[part] = red[0];
}

__global__ void add_total_kernel(const double *partial, double *total)
{
    double sum = 0.0;
    for (int p = 0; p < MOEQ_K_AWQ_PARTS; p++)
        sum += partial[p];
    *total += sum;
}

bool grid_ok(const moeq_k_awq_grid &q, int cols)
{
    const int gs = q.group_size > 0 ? q.group_size : cols;
    return cols > 0 && gs > 0 && cols % gs == 0 && q.bits >= 1 && q.bits <= 8;
}

} // namespace

extern "C" {

cudaError_t moeq_k_awq_fake_quant(const void *w, int w_bf16, int rows, int cols, const float *s,
                                  const moeq_k_awq_grid *q, void *out, int out_bf16,
                                  cudaStream_t stream)
{
    if (rows < 0 || !grid_ok(*q, cols))
        return cudaErrorInvalidValue;
    if (rows == 0)
        return cudaSuccess;
    const int gs = q->group_size > 0 ? q->group_size : cols;
    const long long warps = (long long)rows * (cols / gs);
    const int per_block = 8;
    long long blocks = (warps + per_block - 1) / per_block;
    fake_quant_kernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), per_block * 32, 0, stream>>>(
        w, w_bf16, rows, cols, s, *q, out, out_bf16);
    return cudaGetLastError();
}

cudaError_t moeq_k_awq_clip_quantize(const float *W, int rows, int cols, const float *H,
                                     const moeq_k_awq_grid *q, uint8_t *codes, float *scales,
                                     int32_t *zeros, int grid_ld, double *row_loss,
                                     cudaStream_t stream)
{
    if (rows < 0 || !grid_ok(*q, cols) || grid_ld < rows)
        return cudaErrorInvalidValue;
    if (rows == 0)
        return cudaSuccess;
    const int gs = q->group_size > 0 ? q->group_size : cols;
    const size_t per_warp = sizeof(float) * (size_t)gs, default_limit = 48 << 10;
    int per_block = (int)(default_limit / per_warp);
    per_block = per_block > 8 ? 8 : per_block < 1 ? 1 : per_block;
    const size_t shared = per_warp * per_block;
    if (shared > default_limit) { // a whole-row group wider than 12288 columns
        cudaError_t e = cudaFuncSetAttribute(clip_quantize_kernel,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)shared);
        if (e != cudaSuccess)
            return e;
    }
    const int blocks = (rows + per_block - 1) / per_block;
    clip_quantize_kernel<<<blocks < 65535 ? blocks : 65535, per_block * 32, shared, stream>>>(
        W, rows, cols, H, *q, codes, scales, zeros, grid_ld, row_loss);
    return cudaGetLastError();
}

cudaError_t moeq_k_awq_act_abs_sum(const uint16_t *x, int ld, const int32_t *idx, const float *w,
                                   int rows, int cols, double *partial, double *acc,
                                   cudaStream_t stream)
{
    if (rows < 0 || cols <= 0 || ld < cols)
        return cudaErrorInvalidValue;
    const unsigned col_blocks = (unsigned)((cols + kColThreads - 1) / kColThreads);
    act_abs_part_kernel<<<dim3(col_blocks, MOEQ_K_AWQ_PARTS), kColThreads, 0, stream>>>(
        x, ld, idx, w, rows, cols, partial);
    add_parts_kernel<<<col_blocks, kColThreads, 0, stream>>>(partial, cols, acc);
    return cudaGetLastError();
}

cudaError_t moeq_k_awq_sq_error(const float *y, const float *ref, int rows, int cols,
                                const float *w, double *partial, double *total,
                                cudaStream_t stream)
{
    if (rows < 0 || cols <= 0)
        return cudaErrorInvalidValue;
    sq_error_part_kernel<<<MOEQ_K_AWQ_PARTS, kSumThreads, 0, stream>>>(y, ref, rows, cols, w,
                                                                       partial);
    add_total_kernel<<<1, 1, 0, stream>>>(partial, total);
    return cudaGetLastError();
}

} // extern "C"
