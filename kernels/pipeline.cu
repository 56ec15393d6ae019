// pipeline.cu: the kernels of the GPU layer loop (src/pipeline/quantize_cuda.c)
// besides the GEMMs and RMSNorm (layer.cu): bf16 conversion, RoPE, the causal
// softmax of attention scores (optionally within a sliding window, with
// gpt-oss's sink logits), top-k routing (softmax or sigmoid scores,
// group-limited), row gathers and the
// scatter-add of expert outputs, SwiGLU (or gpt-oss's clamped SwiGLU) on a
// stacked gate/up product, and
// the dequantization of GPTQ codes, and the query/gate split and sigmoid
// output gate of output-gated attention. bf16 is passed as uint16_t bits.
#include "kernels.h"
#include "launch.cuh"

#include <cuda_bf16.h>
#include <math.h>

namespace {

// Blocks for a one-row-per-block kernel over rows rows.
unsigned row_blocks(int rows)
{
    return (unsigned)(rows < 65535 ? (rows > 0 ? rows : 1) : 65535);
}

__device__ uint16_t to_bf16(float x)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

__global__ void to_bf16_kernel(const float *x, size_t n, uint16_t *y)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = to_bf16(x[i]);
}

__global__ void bf16_to_f32_kernel(const uint16_t *x, size_t n, float *y)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = __uint_as_float((unsigned)x[i] << 16);
}

// One thread per (token, pair); cpu_rope_apply's products and sums.
__global__ void rope_kernel(float *x, int tokens, int heads, int head_dim, int rotary_dim,
                            int seq_len, const float *inv_freq, float factor, int interleaved)
{
    const int half = rotary_dim / 2;
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < (size_t)tokens * half;
         k += (size_t)gridDim.x * blockDim.x) {
        int t = (int)(k / half), i = (int)(k % half);
        float angle = __fmul_rn((float)(t % seq_len), inv_freq[i]);
        float c = __fmul_rn(cosf(angle), factor), s = __fmul_rn(sinf(angle), factor);
        float *xt = x + (size_t)t * heads * head_dim;
        for (int h = 0; h < heads; h++) {
            float *a = xt + (size_t)h * head_dim + (interleaved ? 2 * i : i);
            float *b = a + (interleaved ? 1 : half);
            float x0 = *a, x1 = *b;
            *a = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
            *b = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
        }
    }
}

// The first key query i sees: i - window + 1 within a sliding window
// (window > 0), else 0 (first_visible_key of cpu_attention.c).
__device__ int first_visible_key(int i, int window)
{
    return window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
}

// One warp per score row: row r of the [T, T] block of head r / T is query
// i = r % T, which sees keys [first_visible_key(i), i]; the head's sink
// logit, when given, joins the max and the sum (cpu_attention.c,
// softmax_visible).
__global__ void causal_softmax_kernel(const float *s, int T, long long rows, int window,
                                      const float *sinks, uint16_t *p)
{
    long long r = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows)
        return;
    const int lane = threadIdx.x & 31, i = (int)(r % T), lo = first_visible_key(i, window);
    const float *sr = s + (size_t)r * T;
    uint16_t *pr = p + (size_t)r * T;
    const float sink = sinks ? sinks[r / T] : -INFINITY;
    float mx = sink;
    for (int j = lo + lane; j <= i; j += 32)
        mx = fmaxf(mx, sr[j]);
    for (int off = 16; off > 0; off >>= 1)
        mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
    float sum = 0.0f;
    for (int j = lo + lane; j <= i; j += 32)
        sum += expf(sr[j] - mx);
    for (int off = 16; off > 0; off >>= 1)
        sum += __shfl_xor_sync(kFull, sum, off);
    if (sinks)
        sum += expf(sink - mx);
    const float inv = 1.0f / sum;
    for (int j = lane; j < T; j += 32)
        pr[j] = to_bf16(j >= lo && j <= i ? expf(sr[j] - mx) * inv : 0.0f);
}

// The routing scores of one token (cpu_router.c): the softmax of its
// logits (max and sum given) or the sigmoid of each; and the score an
// expert is chosen by (sigmoid: plus its e_score_correction_bias).
struct token_router {
    const float *logits; // [E] of the token
    const moeq_k_router_args *a;
    float mx, sum;       // softmax only

    __device__ float score(int e) const
    {
        if (a->sigmoid)
            return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-logits[e])));
        return __fdiv_rn(expf(__fsub_rn(logits[e], mx)), sum);
    }
    __device__ float choice(int e) const
    {
        float v = score(e);
        return a->sigmoid && a->correction_bias ? __fadd_rn(v, a->correction_bias[e]) : v;
    }
    // limit_to_best_groups of cpu_router.c: the sum of the group's two best
    // choice scores (sigmoid, DeepSeek-V3) or its best (softmax, DeepSeek-V2);
    // ties to the lower index.
    __device__ float group_score(int g, int size) const
    {
        const int e0 = g * size;
        int first = 0;
        for (int i = 1; i < size; i++)
            if (choice(e0 + i) > choice(e0 + first))
                first = i;
        if (!a->sigmoid)
            return choice(e0 + first);
        int second = first == 0 ? 1 : 0;
        for (int i = 0; i < size; i++)
            if (i != first && choice(e0 + i) > choice(e0 + second))
                second = i;
        return __fadd_rn(choice(e0 + first), choice(e0 + second));
    }
};

// One thread per token: cpu_router_topk, the same sums in the same order;
// scores are recomputed where the CPU keeps them in a row (each is the same
// expression, so the same value).
__global__ void router_topk_kernel(const float *logits, moeq_k_router_args a, float *probs_t,
                                   float *topw, int32_t *tope)
{
    const int E = a.E, k = a.k;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < a.n; t += gridDim.x * blockDim.x) {
        token_router r = {logits + (size_t)t * E, &a, 0.0f, 0.0f};
        if (!a.sigmoid) {
            float mx = r.logits[0];
            for (int e = 1; e < E; e++)
                mx = r.logits[e] > mx ? r.logits[e] : mx;
            float sum = 0.0f;
            for (int e = 0; e < E; e++)
                sum = __fadd_rn(sum, expf(__fsub_rn(r.logits[e], mx)));
            r.mx = mx;
            r.sum = sum;
        }
        // The kept groups, best first (all of them without a group limit).
        const int grouped = a.n_group > 1, size = grouped ? E / a.n_group : E;
        unsigned long long kept = grouped ? 0ull : 1ull;
        for (int j = 0; grouped && j < a.topk_group; j++) {
            int best = -1;
            float bv = 0.0f;
            for (int g = 0; g < a.n_group; g++) {
                if (kept >> g & 1ull)
                    continue;
                float v = r.group_score(g, size);
                if (best < 0 || v > bv) {
                    best = g;
                    bv = v;
                }
            }
            kept |= 1ull << best;
        }
        float wsum = 0.0f;
        int32_t *et = tope + (size_t)t * k;
        float *wt = topw + (size_t)t * k;
        for (int j = 0; j < k; j++) {
            int best = -1;
            float bv = 0.0f;
            for (int e = 0; e < E; e++) {
                bool taken = !(kept >> (e / size) & 1ull);
                for (int q = 0; q < j; q++)
                    taken |= et[q] == e;
                if (taken)
                    continue;
                float v = r.choice(e);
                if (best < 0 || v > bv) {
                    best = e;
                    bv = v;
                }
            }
            et[j] = best;
            wt[j] = r.score(best);
            wsum = __fadd_rn(wsum, wt[j]);
        }
        if (a.norm_topk) {
            if (a.sigmoid) // DeepSeek-V3 guards the sum of sigmoids against zero
                wsum = __fadd_rn(wsum, 1e-20f);
            for (int j = 0; j < k; j++)
                wt[j] = __fdiv_rn(wt[j], wsum);
        }
        for (int j = 0; j < k; j++)
            wt[j] = __fmul_rn(wt[j], a.scaling);
        if (probs_t)
            for (int e = 0; e < E; e++)
                probs_t[(size_t)e * a.n + t] = r.score(e);
    }
}

// The row kernels below take one row per block (grid-stride over rows) and
// the row's columns over the threads: a 64-bit division per element cost
// more than the work itself.
__global__ void gather_rows_kernel(const uint16_t *x, int dim, const int32_t *idx, int m,
                                   uint16_t *y)
{
    for (int i = blockIdx.x; i < m; i += gridDim.x) {
        const uint16_t *src = x + (size_t)idx[i] * dim;
        uint16_t *dst = y + (size_t)i * dim;
        for (int c = threadIdx.x; c < dim; c += blockDim.x)
            dst[c] = src[c];
    }
}

__global__ void scatter_add_rows_kernel(const float *y, int dim, const int32_t *idx,
                                        const float *w, int m, float *out)
{
    for (int i = blockIdx.x; i < m; i += gridDim.x) {
        float *o = out + (size_t)idx[i] * dim;
        const float *yi = y + (size_t)i * dim;
        for (int c = threadIdx.x; c < dim; c += blockDim.x)
            o[c] = __fadd_rn(o[c], w ? __fmul_rn(w[i], yi[c]) : yi[c]);
    }
}

__global__ void gated_add_kernel(const float *y, const float *gate_logit, int m, int dim,
                                 float *out)
{
    for (int i = blockIdx.x; i < m; i += gridDim.x) {
        float g = gate_logit ? 1.0f / (1.0f + expf(-gate_logit[i])) : 1.0f;
        float *o = out + (size_t)i * dim;
        const float *yi = y + (size_t)i * dim;
        for (int c = threadIdx.x; c < dim; c += blockDim.x)
            o[c] = __fadd_rn(o[c], gate_logit ? __fmul_rn(g, yi[c]) : yi[c]);
    }
}

// One block per row (grid-stride), the row's columns over the threads: no
// 64-bit division per element, which cost more than the math.
// cpu_silu_mul (limit 0), or cpu_swiglu_clamped (limit > 0: the gate
// clamped from above, up from both sides, the gate's sigmoid of alpha g,
// up + 1), the same roundings, the result rounded once to bf16.
__global__ void swiglu_kernel(const float *gu, int m, int inter, float alpha, float limit,
                              uint16_t *a)
{
    for (int r = blockIdx.x; r < m; r += gridDim.x) {
        const float *g = gu + (size_t)r * 2 * inter, *u = g + inter;
        uint16_t *ar = a + (size_t)r * inter;
        for (int c = threadIdx.x; c < inter; c += blockDim.x) {
            float v;
            if (limit > 0.0f) {
                float gc = g[c] > limit ? limit : g[c];
                float uc = u[c] > limit ? limit : u[c] < -limit ? -limit : u[c];
                float glu = __fmul_rn(gc, __fdiv_rn(1.0f, __fadd_rn(1.0f,
                                                                    expf(-__fmul_rn(gc, alpha)))));
                v = __fmul_rn(__fadd_rn(uc, 1.0f), glu);
            } else {
                v = __fmul_rn(__fdiv_rn(g[c], __fadd_rn(1.0f, expf(-g[c]))), u[c]);
            }
            ar[c] = to_bf16(v);
        }
    }
}

// Row r of qg [rows, 2 D] is head r's query then its gate.
__global__ void split_query_gate_kernel(const float *qg, long long rows, int D, float *q,
                                        float *gate)
{
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < (size_t)rows * D;
         k += (size_t)gridDim.x * blockDim.x) {
        const size_t r = k / D, i = k % D;
        q[k] = qg[r * 2 * D + i];
        gate[k] = qg[r * 2 * D + D + i];
    }
}

// The per-head output gate: attention * sigmoid(gate) (gqa_attention in
// forward.c), the bf16 attention output widened, gated and rounded again.
__global__ void sigmoid_gate_kernel(uint16_t *o, const float *gate, size_t n)
{
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < n;
         k += (size_t)gridDim.x * blockDim.x) {
        const float x = __uint_as_float((unsigned)o[k] << 16);
        const float s = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-gate[k])));
        o[k] = to_bf16(__fmul_rn(x, s));
    }
}

__global__ void add_bias_kernel(float *y, int rows, int cols, const float *bias)
{
    for (size_t k = blockIdx.x * (size_t)blockDim.x + threadIdx.x; k < (size_t)rows * cols;
         k += (size_t)gridDim.x * blockDim.x)
        y[k] = __fadd_rn(y[k], bias[k % cols]);
}

__global__ void dequant_kernel(const uint8_t *codes, const float *scales, const int32_t *zeros,
                               const int32_t *g_idx, int seg_rows, int rows, int cols,
                               uint16_t *w)
{
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const int32_t *gi = g_idx + (size_t)(r / seg_rows) * cols;
        const uint8_t *cr = codes + (size_t)r * cols;
        uint16_t *wr = w + (size_t)r * cols;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            size_t g = (size_t)gi[c] * rows + r;
            wr[c] = to_bf16(__fmul_rn(scales[g], (float)((int32_t)cr[c] - zeros[g])));
        }
    }
}

} // namespace

extern "C" cudaError_t moeq_k_to_bf16(const float *x, size_t n, uint16_t *y, cudaStream_t stream)
{
    if (n)
        to_bf16_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, n, y);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_bf16_to_f32(const uint16_t *x, size_t n, float *y,
                                          cudaStream_t stream)
{
    if (n)
        bf16_to_f32_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, n, y);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_rope(float *x, int tokens, int heads, int head_dim, int rotary_dim,
                                   int seq_len, const float *inv_freq, float attention_factor,
                                   int interleaved, cudaStream_t stream)
{
    size_t n = (size_t)tokens * (rotary_dim / 2);
    if (n)
        rope_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, tokens, heads, head_dim,
                                                              rotary_dim, seq_len, inv_freq,
                                                              attention_factor, interleaved);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_causal_softmax_bf16(const float *scores, int T, long long rows,
                                                  int window, const float *sinks, uint16_t *p,
                                                  cudaStream_t stream)
{
    if (window < 0)
        return cudaErrorInvalidValue;
    if (rows > 0) {
        long long blocks = (rows + 7) / 8;
        causal_softmax_kernel<<<(unsigned)blocks, 256, 0, stream>>>(scores, T, rows, window,
                                                                    sinks, p);
    }
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_router_topk(const float *logits, const moeq_k_router_args *a,
                                          float *probs_t, float *topw, int32_t *tope,
                                          cudaStream_t stream)
{
    const int size = a->n_group > 1 ? a->E / a->n_group : a->E;
    if (a->E < 1 || a->k < 1 || a->k > a->E || a->n_group > MOEQ_K_ROUTER_MAX_GROUPS ||
        (a->n_group > 1 && (a->E % a->n_group || size < 2 || a->topk_group < 1 ||
                            a->topk_group > a->n_group || a->k > a->topk_group * size)))
        return cudaErrorInvalidValue;
    if (a->n > 0)
        router_topk_kernel<<<blocks_for((size_t)a->n), kThreads, 0, stream>>>(logits, *a, probs_t,
                                                                              topw, tope);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_gather_rows_bf16(const uint16_t *x, int dim, const int32_t *idx,
                                               int m, uint16_t *y, cudaStream_t stream)
{
    if (m > 0)
        gather_rows_kernel<<<row_blocks(m), kThreads, 0, stream>>>(x, dim, idx, m,
                                                                                 y);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_scatter_add_rows(const float *y, int dim, const int32_t *idx,
                                               const float *w, int m, float *out,
                                               cudaStream_t stream)
{
    if (m > 0)
        scatter_add_rows_kernel<<<row_blocks(m), kThreads, 0, stream>>>(
            y, dim, idx, w, m, out);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_gated_add(const float *y, const float *gate_logit, int m, int dim,
                                        float *out, cudaStream_t stream)
{
    if (m > 0)
        gated_add_kernel<<<row_blocks(m), kThreads, 0, stream>>>(y, gate_logit, m,
                                                                               dim, out);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_swiglu_bf16(const float *gate_up, int m, int inter, float alpha,
                                          float limit, uint16_t *a, cudaStream_t stream)
{
    if (m > 0)
        swiglu_kernel<<<row_blocks(m), kThreads, 0, stream>>>(gate_up, m, inter, alpha, limit,
                                                               a);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_split_query_gate(const float *qg, long long rows, int D, float *q,
                                               float *gate, cudaStream_t stream)
{
    if (rows > 0 && D > 0)
        split_query_gate_kernel<<<blocks_for((size_t)rows * D), kThreads, 0, stream>>>(
            qg, rows, D, q, gate);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_sigmoid_gate_bf16(uint16_t *o, const float *gate, size_t n,
                                               cudaStream_t stream)
{
    if (n)
        sigmoid_gate_kernel<<<blocks_for(n), kThreads, 0, stream>>>(o, gate, n);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_add_bias(float *y, int rows, int cols, const float *bias,
                                       cudaStream_t stream)
{
    if (rows > 0 && cols > 0)
        add_bias_kernel<<<blocks_for((size_t)rows * cols), kThreads, 0, stream>>>(y, rows, cols,
                                                                                  bias);
    return cudaGetLastError();
}

extern "C" cudaError_t moeq_k_dequant_bf16(const uint8_t *codes, const float *scales,
                                           const int32_t *zeros, const int32_t *g_idx,
                                           int seg_rows, int rows, int cols, uint16_t *w,
                                           cudaStream_t stream)
{
    if (rows > 0 && cols > 0)
        dequant_kernel<<<row_blocks(rows), kThreads, 0, stream>>>(
            codes, scales, zeros, g_idx, seg_rows > 0 ? seg_rows : rows, rows, cols, w);
    return cudaGetLastError();
}
