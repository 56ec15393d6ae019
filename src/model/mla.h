/* mla.h: multi-head latent attention (DeepSeek-V2 paper, section 2.1), the
 * attention of DeepSeek-V2/V3 and Kimi-K2: q from q_proj or through a
 * low-rank q_a/q_b pair, keys and values expanded from one normed latent per
 * token by kv_b_proj, RoPE only on a qk_rope_head_dim part of each head, the
 * rope part of the key shared by all heads. */
#ifndef MOEQ_MODEL_MLA_H
#define MOEQ_MODEL_MLA_H

#include "model/forward.h"

/* The eps of q_a_layernorm and kv_a_layernorm: DeepseekV3RMSNorm's default
 * (transformers modeling_deepseek_v3.py builds both without
 * config.rms_norm_eps). */
#define MOEQ_MLA_LATENT_NORM_EPS 1e-6f

/* attn[N, Hq * v_head_dim] = attention of the normed input h[N, H] (the
 * input of o_proj), N = n_seqs * seq_len. trace->q_b_in and trace->kv_b_in,
 * when set, receive the inputs of q_b_proj [N, q_lora_rank] and kv_b_proj
 * [N, kv_lora_rank]. */
moeq_code moeq_mla_attention(const moeq_config *cfg, const moeq_layer_weights *lw,
                             const moeq_rope_cache *rope, const float *h, int n_seqs,
                             int seq_len, float *attn, moeq_layer_trace *trace, moeq_error *err);

/* The softmax scale: qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)
 * squared under a scaled RoPE (transformers' yarn_apply_mscale). */
double moeq_mla_softmax_scale(const moeq_config *cfg);

#endif
