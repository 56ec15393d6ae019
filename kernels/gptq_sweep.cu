// gptq_sweep.cu: the GPTQ column sweep (Frantar et al. 2022, Algorithm 1)
// for all rows at once, reproducing src/quant/gptq.c bit for bit inside a
// block: one warp per weight row, the block's columns spread over the lanes
// (column c of the block lives in lane c % 32, slot c / 32), and the block of
// U = chol(H^-1)^T staged in shared memory, since every row reads it.
//
// Exactness: every product and difference of the error feedback uses the
// _rn intrinsics, so nvcc cannot contract them into FMAs that the CPU
// reference does not use; divisions are IEEE (_rn) as on the CPU. Group
// grids are fitted from global memory, which holds each block as it was
// before the block's sweep (in-block updates stay in registers): exactly the
// block-start copy gptq.c fits dynamic groups on.
#include "grid.cuh"
#include "kernels.h"
#include "launch.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

namespace {

using namespace moeq_grid_dev;

constexpr int kSlots = MOEQ_K_GPTQ_MAX_BLOCK / 32;
constexpr int kSweepWarps = 16;
__device__ float warp_sum(float x)
{
    for (int off = 16; off > 0; off >>= 1)
        x += __shfl_xor_sync(kFull, x, off);
    return x;
}

// The range of the lane's values reduced over the warp, made symmetric when
// sym (grid_range of grid.c). Min and max are exact, so the order of the
// reduction cannot change them.
__device__ void warp_range(float xmin, float xmax, int sym, float *lo, float *hi)
{
    for (int off = 16; off > 0; off >>= 1) {
        float omin = __shfl_xor_sync(kFull, xmin, off);
        float omax = __shfl_xor_sync(kFull, xmax, off);
        xmin = omin < xmin ? omin : xmin;
        xmax = omax > xmax ? omax : xmax;
    }
    if (sym) {
        xmax = fabsf(xmin) > xmax ? fabsf(xmin) : xmax;
        if (xmin < 0.0f)
            xmin = -xmax;
    }
    *lo = xmin;
    *hi = xmax;
}

// The clipping search's candidate grids spread over the lanes: lane l
// holds candidates l, l + 32 and l + 64 (those below MOEQ_K_GRID_MSE_STEPS),
// each with its reciprocal scale, so the search fits each grid once rather
// than once per candidate in every lane. Candidate 0 is the full range.
struct candidates_t {
    float scale[3], inv[3];
    int32_t zero[3];
};

__device__ candidates_t lane_candidates(float xmin, float xmax, int bits, int sym,
                                        int scale_bf16, int lane)
{
    candidates_t c;
#pragma unroll
    for (int r = 0; r < 3; r++) {
        int i = r * 32 + lane;
        float p = 1.0f - (float)i / (float)MOEQ_K_GRID_MSE_GRID;
        grid_t g = grid_from_range(i == 0 ? xmin : p * xmin, i == 0 ? xmax : p * xmax, bits, sym,
                                   scale_bf16);
        c.scale[r] = g.scale;
        c.inv[r] = 1.0f / g.scale;
        c.zero[r] = g.zero;
    }
    return c;
}

// |x^ - x|^norm of one value on the grid (scale, 1 / scale, zero). The
// search rounds x * (1 / scale) where grid_code divides (a value exactly
// between two codes may round the other way: it only scores a candidate;
// the chosen grid quantizes with grid_code). d^norm goes through the
// special-function unit: powf's exact path costs about as much as the rest
// of the search. Relative error ~3e-7 (lg2.approx's 2^-22.6 absolute error
// times norm ln 2); log2(0) is -inf, so d = 0 scores exp2(-inf) = 0.
__device__ inline float clip_error_of(float v, float scale, float inv, float lo, float hi,
                                      float norm)
{
    float c = fminf(fmaxf(rintf(v * inv), lo), hi); // the code minus the zero point
    float d = fabsf(scale * c - v);
    return norm == 2.0f ? d * d : exp2f(norm * __log2f(d));
}

// The search over the candidates of cand (the first one the full range):
// the candidate of least summed error, the first among equals, as
// moeq_grid_fit_mse. score(scale, inv, lo, hi) is the warp-summed error of
// one candidate, the same value in every lane.
template <typename Score>
__device__ grid_t search_candidates(const candidates_t &cand, int bits, Score score)
{
    const int32_t maxq = (1 << bits) - 1;
    grid_t best = {0.0f, 0};
    float best_err = 0.0f;
#pragma unroll
    for (int r = 0; r < 3; r++) {
        for (int k = 0; k < 32 && r * 32 + k < MOEQ_K_GRID_MSE_STEPS; k++) {
            float scale = __shfl_sync(kFull, cand.scale[r], k);
            float inv = __shfl_sync(kFull, cand.inv[r], k);
            int32_t zero = __shfl_sync(kFull, cand.zero[r], k);
            float e = score(scale, inv, (float)-zero, (float)(maxq - zero));
            if ((r == 0 && k == 0) || e < best_err) { // warp-uniform after the warp sum
                best_err = e;
                best.scale = scale;
                best.zero = zero;
            }
        }
    }
    return best;
}

// The grid of the values a warp's lanes visit with for_each(f) (f(v) for
// each of the lane's values, in order), with the clipping search when
// norm > 0: moeq_grid_fit_mse of grid.c. Each lane sums its values in order
// and the warp then sums the lanes: another order than grid.c's loop, so a
// candidate within float rounding of the best may win on one side only.
template <typename ForEach>
__device__ grid_t fit_lane_values(ForEach for_each, int bits, int sym, int scale_bf16,
                                  float norm, int lane)
{
    float xmin = 0.0f, xmax = 0.0f;
    for_each([&](float v) {
        xmin = v < xmin ? v : xmin;
        xmax = v > xmax ? v : xmax;
    });
    warp_range(xmin, xmax, sym, &xmin, &xmax);
    if (norm <= 0.0f)
        return grid_from_range(xmin, xmax, bits, sym, scale_bf16);
    const candidates_t cand = lane_candidates(xmin, xmax, bits, sym, scale_bf16, lane);
    return search_candidates(cand, bits, [&](float scale, float inv, float lo, float hi) {
        float sum = 0.0f;
        for_each([&](float v) { sum += clip_error_of(v, scale, inv, lo, hi, norm); });
        return warp_sum(sum);
    });
}

// The grid of x[0..n) (stride 1; dead[i] marks values read as 0): lane l
// visits x[l + 32 k].
__device__ grid_t warp_fit(const float *x, int n, const uint8_t *dead, int bits, int sym,
                           int scale_bf16, float norm, int lane)
{
    auto for_each = [&](auto f) {
        for (int i = lane; i < n; i += 32)
            f(dead && dead[i] ? 0.0f : x[i]);
    };
    return fit_lane_values(for_each, bits, sym, scale_bf16, norm, lane);
}

// warp_fit for a group of at most 32 * kSlots values with none dead (the
// sweep's dynamic groups), its values loaded once into registers for the
// range and every candidate; the same values in the same order.
__device__ grid_t warp_fit_small(const float *x, int n, int bits, int sym, int scale_bf16,
                                 float norm, int lane)
{
    float xs[kSlots];
#pragma unroll
    for (int s = 0; s < kSlots; s++)
        xs[s] = s * 32 + lane < n ? x[s * 32 + lane] : 0.0f;
    auto for_each = [&](auto f) {
#pragma unroll
        for (int s = 0; s < kSlots; s++)
            if (s * 32 + lane < n)
                f(xs[s]);
    };
    return fit_lane_values(for_each, bits, sym, scale_bf16, norm, lane);
}

// The segment of row r: the Hessian (hinv, perm, dead) its rows share.
__device__ int segment_of(const moeq_k_gptq_args &a, long long r)
{
    return a.seg_rows > 0 ? (int)(r / a.seg_rows) : 0;
}

__device__ const int32_t *perm_of(const moeq_k_gptq_args &a, int seg)
{
    return a.perm + (size_t)seg * a.cols;
}

__device__ const uint8_t *dead_of(const moeq_k_gptq_args &a, int seg)
{
    return a.dead + (size_t)seg * a.cols;
}

__device__ int group_of(const moeq_k_gptq_args &a, const int32_t *perm, int i)
{
    if (a.group_size <= 0)
        return 0;
    return a.static_groups ? perm[i] / a.group_size : i / a.group_size;
}

__global__ void gather_kernel(const float *W, moeq_k_gptq_args a, int *nonfinite)
{
    size_t total = (size_t)a.rows * a.cols;
    int found = 0;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        size_t r = k / (size_t)a.cols;
        int i = (int)(k - r * (size_t)a.cols), seg = segment_of(a, (long long)r);
        int col = perm_of(a, seg)[i];
        float v = W[r * a.cols + col];
        found += !isfinite(v);
        a.w[k] = dead_of(a, seg)[col] ? 0.0f : v;
    }
    if (found)
        atomicAdd(nonfinite, found);
}

// One warp per (group, row): the static grids on the natural column order.
__global__ void fit_static_kernel(const float *W, moeq_k_gptq_args a)
{
    int lane = threadIdx.x & 31;
    long long task = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int n_groups = a.cols / a.group_size;
    if (task >= (long long)n_groups * a.rows)
        return;
    int g = (int)(task / a.rows), r = (int)(task % a.rows);
    const float *x = W + (size_t)r * a.cols + (size_t)g * a.group_size;
    grid_t gr = warp_fit(x, a.group_size, dead_of(a, segment_of(a, r)) + (size_t)g * a.group_size,
                         a.bits, a.sym, a.scale_bf16, a.mse, lane);
    if (lane == 0) {
        a.scales[(size_t)g * a.rows + r] = gr.scale;
        a.zeros[(size_t)g * a.rows + r] = gr.zero;
    }
}

// The block's column c in the sweep's shared memory: its group, as -1 - g
// when the group's grid is fitted at c (a dynamic group's first column, or
// column 0 without groups), so the rows need no division per column.
__device__ int column_group(const moeq_k_gptq_args &a, const int32_t *perm, int i)
{
    const int g = group_of(a, perm, i);
    const bool fit = a.group_size > 0 ? !a.static_groups && i % a.group_size == 0 : i == 0;
    return fit ? -1 - g : g;
}

// Shared memory of the sweep of a block of nb columns: U's block, padded by
// 32 * kSlots floats (the update of a partial block's last columns reads
// past its last row into values it never stores), then the column groups.
size_t sweep_smem_bytes(int nb)
{
    return sizeof(float) * ((size_t)nb * nb + 32 * kSlots) + sizeof(int) * (size_t)nb;
}

__global__ void __launch_bounds__(kSweepWarps * 32)
    sweep_block_kernel(moeq_k_gptq_args a, int i1, int nb)
{
    extern __shared__ float u_s[]; // U[i1 + c][i1 + j] at u_s[c * nb + j]
    int *col_group = (int *)(u_s + nb * nb + 32 * kSlots);
    // Every row of the block is in one segment (seg_rows is a multiple of
    // kSweepWarps).
    const int seg = segment_of(a, (long long)blockIdx.x * kSweepWarps);
    const float *hinv = a.hinv + (size_t)seg * a.cols * a.cols;
    const int32_t *perm = perm_of(a, seg);
    for (int k = threadIdx.x; k < nb * nb; k += blockDim.x) {
        int c = k / nb, j = k - c * nb;
        u_s[k] = hinv[(size_t)(i1 + c) * a.cols + i1 + j];
    }
    for (int k = threadIdx.x; k < 32 * kSlots; k += blockDim.x)
        u_s[nb * nb + k] = 0.0f;
    for (int c = threadIdx.x; c < nb; c += blockDim.x)
        col_group[c] = column_group(a, perm, i1 + c);
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * kSweepWarps + threadIdx.x / 32;
    if (r >= a.rows)
        return; // whole warps leave together
    const int32_t maxq = (1 << a.bits) - 1;
    const int gs = a.group_size;
    const int fit_n = gs > 0 ? gs : a.cols;
    float *wr = a.w + (size_t)r * a.cols;
    float v[kSlots];
#pragma unroll
    for (int s = 0; s < kSlots; s++) {
        int j = s * 32 + lane;
        v[s] = j < nb ? wr[i1 + j] : 0.0f;
    }
    uint32_t q_slot[kSlots] = {0};
    float e_slot[kSlots] = {0.0f};
    int g_cur = -1;
    grid_t gr = {1.0f, 0};
    double loss = 0.0;
    // Column c = 32 s + k lives in lane k's slot s. Slots are unrolled, so
    // v, q_slot and e_slot stay in registers; a lane's columns after c are
    // updated with c's error (the lanes past nb update values never stored).
#pragma unroll
    for (int s = 0; s < kSlots; s++) {
        const int kmax = nb - s * 32 < 32 ? nb - s * 32 : 32;
        for (int k = 0; k < kmax; k++) {
            const int c = s * 32 + k;
            const float wi = __shfl_sync(kFull, v[s], k);
            const int cg = col_group[c];
            if (cg < 0) {
                const int g = -1 - cg;
                gr = fit_n <= 32 * kSlots
                         ? warp_fit_small(wr + i1 + c, fit_n, a.bits, a.sym, a.scale_bf16, a.mse,
                                          lane)
                         : warp_fit(wr + i1 + c, fit_n, nullptr, a.bits, a.sym, a.scale_bf16,
                                    a.mse, lane);
                if (lane == 0) {
                    a.scales[(size_t)g * a.rows + r] = gr.scale;
                    a.zeros[(size_t)g * a.rows + r] = gr.zero;
                }
                g_cur = g;
            } else if (cg != g_cur) {
                gr.scale = a.scales[(size_t)cg * a.rows + r];
                gr.zero = a.zeros[(size_t)cg * a.rows + r];
                g_cur = cg;
            }
            const float d = u_s[c * nb + c];
            const int32_t q = grid_code(gr, wi, maxq);
            const float value = __fmul_rn(gr.scale, (float)(q - gr.zero));
            const float e = __fdiv_rn(__fsub_rn(wi, value), d);
            loss += 0.5 * (double)e * e;
            q_slot[s] = lane == k ? (uint32_t)q : q_slot[s];
            e_slot[s] = lane == k ? e : e_slot[s];
            const float *u = u_s + c * nb + lane;
            if (lane > k)
                v[s] = __fsub_rn(v[s], __fmul_rn(e, u[s * 32]));
#pragma unroll
            for (int t = s + 1; t < kSlots; t++)
                v[t] = __fsub_rn(v[t], __fmul_rn(e, u[t * 32]));
        }
    }
    // One coalesced store per slot instead of one lane's store per column.
#pragma unroll
    for (int s = 0; s < kSlots; s++) {
        int c = s * 32 + lane;
        if (c < nb) {
            a.codes_perm[(size_t)r * a.cols + i1 + c] = (uint8_t)q_slot[s];
            a.err_block[(size_t)r * a.block_size + c] = e_slot[s];
        }
    }
    if (lane == 0)
        a.loss_rows[r] += loss;
}

__global__ void scatter_codes_kernel(moeq_k_gptq_args a, uint8_t *codes)
{
    size_t total = (size_t)a.rows * a.cols;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < total;
         k += (size_t)gridDim.x * blockDim.x) {
        size_t r = k / (size_t)a.cols;
        int i = (int)(k - r * (size_t)a.cols);
        codes[r * a.cols + perm_of(a, segment_of(a, (long long)r))[i]] = a.codes_perm[k];
    }
}

unsigned grid_for(size_t n)
{
    size_t blocks = (n + 255) / 256;
    return (unsigned)(blocks < 16384 ? blocks : 16384);
}

} // namespace

extern "C" cudaError_t moeq_k_gptq_gather(const float *W, const moeq_k_gptq_args *a,
                                          int *nonfinite, cudaStream_t stream)
{
    size_t total = (size_t)a->rows * a->cols;
    if (total == 0)
        return cudaSuccess;
    gather_kernel<<<grid_for(total), 256, 0, stream>>>(W, *a, nonfinite);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_gptq_fit_static(const float *W, const moeq_k_gptq_args *a,
                                              cudaStream_t stream)
{
    if (a->group_size <= 0 || a->rows <= 0)
        return cudaSuccess;
    long long tasks = (long long)(a->cols / a->group_size) * a->rows;
    const int warps = 8;
    fit_static_kernel<<<(unsigned)((tasks + warps - 1) / warps), warps * 32, 0, stream>>>(
        W, *a);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_gptq_sweep_block(const moeq_k_gptq_args *a, int i1, int nb,
                                               cudaStream_t stream)
{
    if (nb <= 0 || nb > MOEQ_K_GPTQ_MAX_BLOCK || nb > a->block_size)
        return cudaErrorInvalidValue;
    if (a->rows <= 0)
        return cudaSuccess;
    size_t smem = sweep_smem_bytes(nb);
    cudaError_t e = cudaFuncSetAttribute(sweep_block_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess)
        return e;
    unsigned blocks = (unsigned)((a->rows + kSweepWarps - 1) / kSweepWarps);
    sweep_block_kernel<<<blocks, kSweepWarps * 32, smem, stream>>>(*a, i1, nb);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_gptq_scatter_codes(const moeq_k_gptq_args *a, uint8_t *codes,
                                                 cudaStream_t stream)
{
    size_t total = (size_t)a->rows * a->cols;
    if (total == 0)
        return cudaSuccess;
    scatter_codes_kernel<<<grid_for(total), 256, 0, stream>>>(*a, codes);
    return cudaGetLastError();
}
