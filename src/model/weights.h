/* weights.h: one decoder layer's weights, decoded to fp32 from the
 * checkpoint (bf16/fp16/fp32 sources), with shapes checked against the
 * config. Only one layer is held at a time by the layer loop and by eval. */
#ifndef MOEQ_MODEL_WEIGHTS_H
#define MOEQ_MODEL_WEIGHTS_H

#include "model/model.h"

/* One SwiGLU MLP (dense MLP, routed expert or shared expert):
 * down(act(gate(x), up(x))), act as the architecture's mlp_act (forward.h,
 * moeq_mlp_gate); weights [out, in] as nn.Linear stores them. */
typedef struct moeq_mlp_weights {
    int intermediate;
    float *gate, *up, *down;             /* [I, H], [I, H], [H, I] */
    /* MOEQ_WEIGHTS_KEEP_BF16: the same as stored, in place of gate, up,
     * down (then NULL), when the checkpoint holds them as plain bf16 */
    uint16_t *gate16, *up16, *down16;
    float *gate_bias, *up_bias, *down_bias; /* NULL unless mlp_bias */
} moeq_mlp_weights;

/* The Gated DeltaNet token mixer of a linear-attention layer (deltanet.h):
 * the separate input projections (Qwen3.5) or the fused, head-group
 * interleaved ones (Qwen3-Next); the others NULL. */
typedef struct moeq_deltanet_weights {
    float *in_qkv, *in_z, *in_b, *in_a;  /* [2Kd+Vd, H], [Vd, H], [Hv, H], [Hv, H] */
    float *in_qkvz, *in_ba;              /* [2Kd+2Vd, H], [2Hv, H] */
    float *conv;                         /* [2Kd+Vd, kernel] depthwise conv1d */
    float *dt_bias, *a_log;              /* [Hv] */
    float *norm;                         /* [Dv] gated RMSNorm weight */
    float *out;                          /* [H, Vd] out_proj */
} moeq_deltanet_weights;

typedef struct moeq_layer_weights {
    int layer;
    int is_moe;
    int is_linear;                       /* Gated DeltaNet instead of attention */
    moeq_deltanet_weights la;            /* linear layers */
    float *attn_norm;                    /* [H] */
    float *q, *k, *v, *o;                /* [Hq*D, H] ([2*Hq*D, H] with the output
                                          * gate), [Hkv*D, H], [Hkv*D, H], [H, Hq*D] */
    float *q_bias, *k_bias, *v_bias, *o_bias; /* NULL when absent */
    float *q_norm, *k_norm;              /* [D] ([Hq*D], [Hkv*D] with qk_norm_full), NULL
                                          * without qk_norm */
    float *sinks;                        /* [Hq] attention sink logits, NULL without */
    /* MLA (q is q_proj when q_lora_rank is 0, else q_b(norm(q_a(x)))):
     * q_a [R_q, H], q_a_norm [R_q], q_b [Hq*(N+P), R_q],
     * kv_a [R_kv+P, H], kv_a_norm [R_kv], kv_b [Hq*(N+V), R_kv], o [H, Hq*V]
     * with N, P, V the nope, rope and v head dims; q_a/kv_a biases with
     * attention_bias. NULL for GQA. */
    float *q_a, *q_a_bias, *q_a_norm, *q_b;
    float *kv_a, *kv_a_bias, *kv_a_norm, *kv_b;
    float *mlp_norm;                     /* [H] */
    moeq_mlp_weights dense;              /* dense layers */
    float *router;                       /* [E, H] */
    float *router_bias;                  /* [E], NULL unless router_bias */
    float *router_correction_bias;       /* [E] e_score_correction_bias of sigmoid_topk */
    moeq_mlp_weights *experts;           /* [n_experts] */
    int n_experts;
    int has_shared;
    moeq_mlp_weights shared;
    float *shared_gate;                  /* [1, H], NULL unless sigmoid-gated (a plain
                                          * shared expert is added ungated) */
} moeq_layer_weights;

/* A norm weight w[n] as the forward applies it: 1 + w for architectures
 * with zero-centered RMSNorm, w otherwise (in place). */
void moeq_model_center_norm(const moeq_model *model, float *w, int64_t n);

moeq_code moeq_layer_weights_load(const moeq_model *model, int layer, moeq_layer_weights *lw,
                                  moeq_error *err);
/* Flags of moeq_layer_weights_load_flags. KEEP_BF16: the weights of the
 * dense MLP, the experts and the shared expert that the checkpoint stores
 * as plain bf16 (one tensor each) are kept as such (gate16, up16, down16):
 * half the host memory, no decoding, half the bytes to pin and upload (the
 * CUDA loop widens them on the device). Others are decoded to fp32. */
#define MOEQ_WEIGHTS_KEEP_BF16 1u
moeq_code moeq_layer_weights_load_flags(const moeq_model *model, int layer, unsigned flags,
                                        moeq_layer_weights *lw, moeq_error *err);
void moeq_layer_weights_free(moeq_layer_weights *lw);

/* Embedding rows for tokens: out[n, H]. Ids outside the vocabulary fail. */
moeq_code moeq_model_embed(const moeq_model *model, const int32_t *tokens, size_t n, float *out,
                           moeq_error *err);

/* The final norm and lm_head (the embedding when tied), decoded to fp32. */
typedef struct moeq_head_weights {
    float *final_norm; /* [H] */
    float *lm_head;    /* [V, H] */
} moeq_head_weights;
moeq_code moeq_head_weights_load(const moeq_model *model, moeq_head_weights *hw,
                                 moeq_error *err);
void moeq_head_weights_free(moeq_head_weights *hw);

#endif
