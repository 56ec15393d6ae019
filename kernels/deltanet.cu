// deltanet.cu: the Gated DeltaNet token mixer's kernels (the fp32 CPU
// reference is src/model/deltanet.c, after transformers'
// modeling_qwen3_next.py): the projections unpacked into their parts, the
// causal depthwise conv1d with SiLU, the L2 norm of q and k, the decay and
// write-strength gates, the gated delta rule as a recurrence, and the
// gated RMSNorm. Element ops round as the CPU does (_rn intrinsics keep
// nvcc from fusing what the reference computes as separate roundings).
#include "kernels.h"
#include "launch.cuh"

#include <cuda_bf16.h>
#include <math.h>

namespace {

__device__ float sigmoid(float x)
{
    return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x)));
}

__device__ float silu(float x)
{
    return __fdiv_rn(x, __fadd_rn(1.0f, expf(-x)));
}

// One thread per element of a token's projections: column c of proj
// [tokens, C + vd] and of pba [tokens, 2 Hv] to its place in qkv
// [tokens, C], z [tokens, vd], b and a [tokens, Hv]. Fused (Qwen3-Next's
// in_proj_qkvz / in_proj_ba): key-head group g holds [q (Dk) | k (Dk) |
// v (r Dv) | z (r Dv)] and [b (r) | a (r)], r = Hv / Hk (split_fused in
// deltanet.c); otherwise the parts follow each other.
__global__ void unpack_kernel(const float *proj, const float *pba, int tokens, int Hk, int Hv,
                              int Dk, int Dv, int fused, float *qkv, float *z, float *b, float *a)
{
    const int kd = Hk * Dk, vd = Hv * Dv, C = 2 * kd + vd, r = Hv / Hk;
    const int width = C + vd + 2 * Hv, group = 2 * Dk + 2 * r * Dv;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < (size_t)tokens * width;
         e += (size_t)gridDim.x * blockDim.x) {
        const size_t t = e / width;
        const int c = (int)(e % width);
        if (c < C + vd) {
            const float x = proj[t * (C + vd) + c];
            int dst; // column of [q | k | v | z]
            if (!fused) {
                dst = c;
            } else {
                const int g = c / group, o = c % group;
                dst = o < Dk ? g * Dk + o
                      : o < 2 * Dk ? kd + g * Dk + o - Dk
                      : o < 2 * Dk + r * Dv ? 2 * kd + g * r * Dv + o - 2 * Dk
                                            : C + g * r * Dv + o - 2 * Dk - r * Dv;
            }
            if (dst < C)
                qkv[t * C + dst] = x;
            else
                z[t * vd + dst - C] = x;
        } else {
            const int o = c - C - vd;
            const float x = pba[t * 2 * Hv + o];
            int head, is_a;
            if (!fused) {
                is_a = o >= Hv;
                head = o - is_a * Hv;
            } else {
                const int g = o / (2 * r), j = o % (2 * r);
                is_a = j >= r;
                head = g * r + j - is_a * r;
            }
            (is_a ? a : b)[t * Hv + head] = x;
        }
    }
}

// One thread per (token, channel): the causal depthwise conv over the
// token's window (zeros before its start), then SiLU.
__global__ void conv_silu_kernel(const float *x, const float *w, int T, int tokens, int C, int K,
                                 float *y)
{
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < (size_t)tokens * C;
         e += (size_t)gridDim.x * blockDim.x) {
        const size_t t = e / C;
        const int ch = (int)(e % C), pos = (int)(t % T);
        float acc = 0.0f;
        for (int j = 0; j < K; j++) {
            int back = K - 1 - j; // tokens before t
            if (pos - back >= 0)
                acc = __fadd_rn(acc, __fmul_rn(w[(size_t)ch * K + j], x[(t - back) * C + ch]));
        }
        y[e] = silu(acc);
    }
}

// One warp per (token, head) vector of dim at x + t ld + h dim:
// v * rsqrt(sum v^2 + 1e-6) * scale, the sum in double as l2norm_rows.
__global__ void l2norm_kernel(float *x, int tokens, int heads, int dim, int ld, float scale)
{
    const int lane = threadIdx.x & 31;
    const long long rows = (long long)tokens * heads;
    for (long long r = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32; r < rows;
         r += (long long)gridDim.x * blockDim.x / 32) {
        float *v = x + (r / heads) * (long long)ld + (r % heads) * (long long)dim;
        double ss = 0.0;
        for (int i = lane; i < dim; i += 32)
            ss += (double)v[i] * v[i];
        for (int off = 16; off > 0; off >>= 1)
            ss += __shfl_xor_sync(kFull, ss, off);
        const float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn((float)ss, 1e-6f)));
        for (int i = lane; i < dim; i += 32)
            v[i] = __fmul_rn(__fmul_rn(v[i], inv), scale);
    }
}

// beta = sigmoid(b); g = -exp(A_log) softplus(a + dt_bias) (softplus with
// torch's threshold 20), per (token, value head).
__global__ void gates_kernel(float *b, float *a, const float *a_log, const float *dt_bias,
                             int tokens, int Hv)
{
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < (size_t)tokens * Hv;
         e += (size_t)gridDim.x * blockDim.x) {
        const int h = (int)(e % Hv);
        b[e] = sigmoid(b[e]);
        const float x = __fadd_rn(a[e], dt_bias[h]);
        const float sp = x > 20.0f ? x : log1pf(expf(x));
        a[e] = __fmul_rn(-expf(a_log[h]), sp);
    }
}

// The delta rule of one (sequence, value head) per block, token by token
// (moeq_delta_rule_recurrent). Thread (d, p), d < Dv, p < kLanes, holds
// rows i = p + kLanes j of column d of the state S [Dk, Dv] in registers;
// the kLanes threads of a column are neighbouring lanes of one warp and
// sum their parts with shuffles. k and q of the token are staged in shared
// memory, double-buffered so that one barrier per token suffices.
constexpr int kLanes = 4;
constexpr int kRows = MOEQ_K_DELTA_MAX_DK / kLanes;

__global__ void __launch_bounds__(MOEQ_K_DELTA_MAX_DV * kLanes)
    delta_rule_kernel(moeq_k_delta_args a)
{
    extern __shared__ float stage[]; // [2][2][Dk]: k then q, two tokens
    const int h = blockIdx.x, s = blockIdx.y, Dk = a.Dk, Dv = a.Dv;
    const int kh = h / (a.Hv / a.Hk);
    const int d = threadIdx.x / kLanes, p = threadIdx.x % kLanes;
    const int rows = (Dk - p + kLanes - 1) / kLanes; // this thread's rows
    // The column's lanes (a block of Dv kLanes threads may end mid-warp).
    const unsigned lanes = ((1u << kLanes) - 1) << (threadIdx.x & 31 & ~(kLanes - 1));
    float S[kRows];
#pragma unroll
    for (int j = 0; j < kRows; j++)
        S[j] = 0.0f;
    for (int t = 0; t < a.T; t++) {
        const size_t tok = (size_t)s * a.T + t;
        float *ks = stage + (t & 1) * 2 * Dk, *qs = ks + Dk;
        const float *k = a.k + tok * a.ld_qk + (size_t)kh * Dk;
        const float *q = a.q + tok * a.ld_qk + (size_t)kh * Dk;
        for (int i = threadIdx.x; i < Dk; i += blockDim.x) {
            ks[i] = k[i];
            qs[i] = q[i];
        }
        __syncthreads();
        const float decay = expf(a.g[tok * a.Hv + h]), beta = a.beta[tok * a.Hv + h];
        const float v = a.v[tok * a.ld_v + (size_t)h * Dv + d];
        float mem = 0.0f;
#pragma unroll
        for (int j = 0; j < kRows; j++)
            if (j < rows) {
                S[j] = __fmul_rn(S[j], decay);
                mem = __fadd_rn(mem, __fmul_rn(S[j], ks[p + kLanes * j]));
            }
        for (int off = 1; off < kLanes; off <<= 1)
            mem = __fadd_rn(mem, __shfl_xor_sync(lanes, mem, off));
        // delta = beta (v - S^T k): what the state does not yet predict.
        const float delta = __fmul_rn(__fsub_rn(v, mem), beta);
        float o = 0.0f;
#pragma unroll
        for (int j = 0; j < kRows; j++)
            if (j < rows) {
                S[j] = __fadd_rn(S[j], __fmul_rn(ks[p + kLanes * j], delta));
                o = __fadd_rn(o, __fmul_rn(S[j], qs[p + kLanes * j]));
            }
        for (int off = 1; off < kLanes; off <<= 1)
            o = __fadd_rn(o, __shfl_xor_sync(lanes, o, off));
        if (p == 0)
            a.out[(tok * a.Hv + h) * Dv + d] = o;
    }
}

// One block per (token, value head) row of dim: rmsnorm(x) * w (as
// cpu_rmsnorm: the sum of squares in double), times silu(z), rounded once
// to bf16.
__global__ void gated_rmsnorm_kernel(const float *x, const float *z, const float *w, int dim,
                                     float eps, uint16_t *y)
{
    __shared__ double partial[kThreads / 32];
    const float *xr = x + (size_t)blockIdx.x * dim, *zr = z + (size_t)blockIdx.x * dim;
    uint16_t *yr = y + (size_t)blockIdx.x * dim;
    double sum_sq = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        sum_sq += (double)xr[i] * xr[i];
    for (int off = 16; off > 0; off >>= 1)
        sum_sq += __shfl_xor_sync(kFull, sum_sq, off);
    if ((threadIdx.x & 31) == 0)
        partial[threadIdx.x / 32] = sum_sq;
    __syncthreads();
    double total = 0.0;
    for (int k = 0; k < kThreads / 32; k++)
        total += partial[k];
    const float inv_rms = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn((float)(total / dim), eps)));
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = __fmul_rn(__fmul_rn(w[i], __fmul_rn(xr[i], inv_rms)), silu(zr[i]));
        yr[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    }
}

} // namespace

extern "C" cudaError_t moeq_k_deltanet_unpack(const float *proj, const float *pba, int tokens,
                                              int Hk, int Hv, int Dk, int Dv, int fused,
                                              float *qkv, float *z, float *b, float *a,
                                              cudaStream_t stream)
{
    if (Hk <= 0 || Hv % Hk)
        return cudaErrorInvalidValue;
    const size_t n = (size_t)tokens * (2 * Hk * Dk + 2 * Hv * Dv + 2 * Hv);
    if (n)
        unpack_kernel<<<blocks_for(n), kThreads, 0, stream>>>(proj, pba, tokens, Hk, Hv, Dk, Dv,
                                                              fused, qkv, z, b, a);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_causal_conv_silu(const float *x, const float *w, int T, int tokens,
                                               int C, int K, float *y, cudaStream_t stream)
{
    if (T <= 0 || tokens % T)
        return cudaErrorInvalidValue;
    const size_t n = (size_t)tokens * C;
    if (n)
        conv_silu_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, w, T, tokens, C, K, y);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_l2norm_heads(float *x, int tokens, int heads, int dim, int ld,
                                           float scale, cudaStream_t stream)
{
    const size_t threads = (size_t)tokens * heads * 32;
    if (threads)
        l2norm_kernel<<<blocks_for(threads), kThreads, 0, stream>>>(x, tokens, heads, dim, ld,
                                                                    scale);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_deltanet_gates(float *b, float *a, const float *a_log,
                                             const float *dt_bias, int tokens, int Hv,
                                             cudaStream_t stream)
{
    const size_t n = (size_t)tokens * Hv;
    if (n)
        gates_kernel<<<blocks_for(n), kThreads, 0, stream>>>(b, a, a_log, dt_bias, tokens, Hv);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_delta_rule(const moeq_k_delta_args *a, cudaStream_t stream)
{
    if (a->Dk < 1 || a->Dk > MOEQ_K_DELTA_MAX_DK || a->Dv < 1 || a->Dv > MOEQ_K_DELTA_MAX_DV ||
        a->Hk < 1 || a->Hv % a->Hk || a->T < 0 || a->seqs < 0 || a->seqs > 65535)
        return cudaErrorInvalidValue;
    if (a->T == 0 || a->seqs == 0 || a->Hv == 0)
        return cudaSuccess;
    const dim3 grid((unsigned)a->Hv, (unsigned)a->seqs);
    delta_rule_kernel<<<grid, (unsigned)(a->Dv * kLanes), sizeof(float) * 4 * a->Dk, stream>>>(
        *a);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_gated_rmsnorm_bf16(const float *x, const float *z, const float *w,
                                                 long long rows, int dim, float eps, uint16_t *y,
                                                 cudaStream_t stream)
{
    if (rows > 2147483647LL)
        return cudaErrorInvalidValue;
    if (rows > 0 && dim > 0)
        gated_rmsnorm_kernel<<<(unsigned)rows, kThreads, 0, stream>>>(x, z, w, dim, eps, y);
    return cudaGetLastError();
}
