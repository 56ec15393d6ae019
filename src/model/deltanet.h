/* deltanet.h: Gated DeltaNet linear attention (Yang, Kautz, Hatamizadeh,
 * "Gated Delta Networks", arXiv:2412.06464), the token mixer of the linear
 * layers of Qwen3-Next and Qwen3.5: input projections, a causal depthwise
 * conv1d with SiLU, the gated delta rule over the sequence, a gated RMSNorm
 * and the output projection. The fp32 CPU reference, following transformers'
 * modeling_qwen3_next.py (Qwen3NextGatedDeltaNet) and modeling_qwen3_5.py
 * (Qwen3_5GatedDeltaNet) operation by operation.
 *
 * The delta rule per value head, with state S [Dk, Dv] starting at zero:
 *   S_t = exp(g_t) S_{t-1} + k_t (beta_t (v_t - exp(g_t) S_{t-1}^T k_t))^T
 *   o_t = S_t^T q_t
 * It has two implementations that must agree: the recurrence as written
 * (one token at a time) and the chunked form (the WY / UT-transform form of
 * the paper's section 3, what transformers' torch_chunk_gated_delta_rule and
 * the FLA kernels compute), which is the one the forward uses. */
#ifndef MOEQ_MODEL_DELTANET_H
#define MOEQ_MODEL_DELTANET_H

#include "model/config.h"
#include "model/weights.h"
#include "model/forward.h"

/* Chunk length of the chunked delta rule (transformers and FLA use 64). */
enum { MOEQ_DELTA_CHUNK = 64 };

/* One sequence of T tokens. q, k [T, Hk, Dk] (already L2-normalised, q
 * scaled), v [T, Hv, Dv], g [T, Hv] (log decay, <= 0), beta [T, Hv];
 * value head h reads key head h / (Hv / Hk). out [T, Hv, Dv]. */
typedef struct moeq_delta_inputs {
    const float *q, *k, *v, *g, *beta;
    int T, Hk, Hv, Dk, Dv;
} moeq_delta_inputs;

/* The recurrence, token by token: the definition. MOEQ_ERR_OOM. */
moeq_code moeq_delta_rule_recurrent(const moeq_delta_inputs *in, float *out, moeq_error *err);

/* The chunked form with chunks of `chunk` tokens (the last may be shorter):
 * within a chunk the updates are solved as one unit lower-triangular system,
 * between chunks the state is carried. Value heads run in parallel (the
 * result does not depend on the schedule). MOEQ_ERR_INVALID_ARG, MOEQ_ERR_OOM. */
moeq_code moeq_delta_rule_chunked(const moeq_delta_inputs *in, int chunk, float *out,
                                  moeq_error *err);

/* out = x + deltanet(attn_norm(x)): the token-mixer half of a linear
 * layer. trace->attn_in receives the normed input (of every in_proj),
 * trace->o_in the input of out_proj [N, Hv * Dv], trace->attn_out the
 * block output before the residual. */
moeq_code moeq_linear_attention_block(const moeq_config *cfg, const moeq_layer_weights *lw,
                                      const float *x, int n_seqs, int seq_len, float *out,
                                      moeq_layer_trace *trace, moeq_error *err);

/* The core of the block from the normed input h [N, H] (projections with
 * lw's current weights) to out_proj's input o_in [N, Hv * Dv], one window
 * of seq_len tokens at a time (its scratch is that of one window). */
moeq_code moeq_deltanet_core(const moeq_config *cfg, const moeq_layer_weights *lw,
                             const float *h, int n_seqs, int seq_len, float *o_in,
                             moeq_error *err);

#endif
