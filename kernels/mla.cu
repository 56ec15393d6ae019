// mla.cu: the key/value assembly of multi-head latent attention (DeepSeek-V2
// paper, section 2.1; src/model/mla.c is the reference). kv_b_proj expands
// each token's latent to [k_nope | v] per head; the rope part of the key,
// k_rot, is one per token and shared by every head. The attention GEMMs
// want k [tokens, heads, nope + rot] and v [tokens, heads, vd] in bf16.
#include "kernels.h"
#include "launch.cuh"

#include <cuda_bf16.h>

namespace {

// One thread per output element of a (token, head): first the nope + rot of
// k, then the vd of v; each value is a copy rounded once to bf16.
__global__ void mla_split_kv_kernel(const float *kv, const float *k_rot, int tokens, int heads,
                                    int nope, int rot, int vd, uint16_t *k, uint16_t *v)
{
    const int qk = nope + rot, row = qk + vd;
    const size_t total = (size_t)tokens * heads * row;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t th = i / row; // token * heads + head
        const int c = (int)(i % row);
        const float *src = kv + th * (size_t)(nope + vd);
        float x;
        if (c < nope)
            x = src[c];
        else if (c < qk)
            x = k_rot[(th / heads) * rot + (c - nope)];
        else
            x = src[nope + (c - qk)];
        uint16_t b = __bfloat16_as_ushort(__float2bfloat16_rn(x));
        if (c < qk)
            k[th * qk + c] = b;
        else
            v[th * vd + (c - qk)] = b;
    }
}

} // namespace

extern "C" cudaError_t moeq_k_mla_split_kv_bf16(const float *kv, const float *k_rot, int tokens,
                                                int heads, int nope, int rot, int vd,
                                                uint16_t *k, uint16_t *v, cudaStream_t stream)
{
    if (tokens < 0 || heads < 0 || nope < 0 || rot < 0 || vd < 0)
        return cudaErrorInvalidValue;
    const size_t total = (size_t)tokens * heads * (nope + rot + vd);
    if (total)
        mla_split_kv_kernel<<<blocks_for(total), kThreads, 0, stream>>>(kv, k_rot, tokens, heads,
                                                                        nope, rot, vd, k, v);
    return cudaGetLastError();
}
