/* forward.h: the fp32 CPU reference forward of one decoder layer and of the
 * output head, over a batch of equal-length sequences (positions 0..T-1). */
#ifndef MOEQ_MODEL_FORWARD_H
#define MOEQ_MODEL_FORWARD_H

#include "backend/cpu/cpu_ops.h"
#include "model/config.h"
#include "model/weights.h"

/* Intermediate values a caller may want (the quantization pipeline captures
 * the inputs of every linear; tests compare block outputs). Each pointer is
 * optional: NULL skips it. Sizes use N = n_seqs * seq_len tokens. */
typedef struct moeq_layer_trace {
    float *attn_in;   /* [N, H]      normed input of q/k/v */
    float *o_in;      /* [N, Hq*D]   input of o_proj (linear layers: out_proj, [N, Hv*Dv];
                       * MLA: [N, Hq*v_head_dim]) */
    float *q_b_in;    /* [N, q_lora_rank]  MLA: input of q_b_proj */
    float *kv_b_in;   /* [N, kv_lora_rank] MLA: input of kv_b_proj */
    float *attn_out;  /* [N, H]      attention block output before the residual */
    float *mlp_in;    /* [N, H]      normed input of the MLP / router / experts */
    float *mlp_out;   /* [N, H]      MLP / MoE block output before the residual */
    int32_t *topk_experts; /* [N, k] routed experts (MoE layers) */
    float *topk_weights;   /* [N, k] their weights */
} moeq_layer_trace;

/* Precomputed RoPE frequencies for a config. */
typedef struct moeq_rope_cache {
    float *inv_freq; /* [rotary_dim / 2] */
    int rotary_dim;
    float attention_factor;
} moeq_rope_cache;

moeq_code moeq_rope_cache_init(const moeq_config *cfg, moeq_rope_cache *rc, moeq_error *err);
void moeq_rope_cache_free(moeq_rope_cache *rc);

/* The router settings of cfg's architecture for cpu_router_topk. */
cpu_router_params moeq_router_params(const moeq_config *cfg);

/* g = act(g, u) over n elements: the gating of the architecture's MLPs
 * (silu(g) * u, or gpt-oss's clamped SwiGLU with the config's alpha and
 * limit). */
void moeq_mlp_gate(const moeq_config *cfg, float *g, const float *u, size_t n);
/* Llama-4's attention temperature tuning on layers without RoPE: the
 * factor log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1 that
 * multiplies the query at position pos (0-based), in fp32 (transformers
 * Llama4TextAttention.forward, attn_scales). */
float moeq_attn_temperature(const moeq_config *cfg, int pos);
/* Width of o_proj's input: heads * head_dim, or heads * v_head_dim for MLA. */
int moeq_o_proj_in_dim(const moeq_config *cfg);

/* out = x + attention(attn_norm(x)): the attention half of a layer. */
moeq_code moeq_attention_block(const moeq_config *cfg, const moeq_layer_weights *lw,
                               const moeq_rope_cache *rope, const float *x, int n_seqs,
                               int seq_len, float *out, moeq_layer_trace *trace,
                               moeq_error *err);
/* The router of a MoE layer on its normed input x[n, H]: the top-k experts
 * of each token and their weights [n, k] as the model's router picks them
 * (softmax_topk or sigmoid_topk with its correction bias, groups and
 * scaling), and, when scores is not NULL, every expert's score [n, E]: the
 * softmax probability or the sigmoid of the logit (the weights before
 * renormalisation and scaling). */
moeq_code moeq_route(const moeq_config *cfg, const moeq_layer_weights *lw, const float *x, int n,
                     float *weights, int32_t *experts, float *scores, moeq_error *err);

/* out = x + mlp(mlp_norm(x)) over n tokens, the MoE block with real top-k
 * routing on MoE layers: the MLP half of a layer. */
moeq_code moeq_mlp_block(const moeq_config *cfg, const moeq_layer_weights *lw, const float *x,
                         int n, float *out, moeq_layer_trace *trace, moeq_error *err);

/* out = layer(x); x and out are [n_seqs * seq_len, H] and may not alias. */
moeq_code moeq_layer_forward(const moeq_config *cfg, const moeq_layer_weights *lw,
                             const moeq_rope_cache *rope, const float *x, int n_seqs,
                             int seq_len, float *out, moeq_layer_trace *trace,
                             moeq_error *err);

/* logits[n, V] = lm_head(final_norm(x[n, H])) */
moeq_code moeq_head_forward(const moeq_config *cfg, const moeq_head_weights *hw,
                            const float *x, size_t n, float *logits, moeq_error *err);

#endif
