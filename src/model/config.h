/* config.h: the model spec moeq works from, read from a checkpoint's
 * config.json through its architecture file. Both transformers 4.x and 5.x
 * spellings are accepted (num_experts / num_local_experts / n_routed_experts,
 * rope_theta + rope_scaling vs rope_parameters, head_dim absent or null). */
#ifndef MOEQ_MODEL_CONFIG_H
#define MOEQ_MODEL_CONFIG_H

#include "model/arch.h"
#include "model/rope.h"
#include "moeq/moeq.h"

typedef struct moeq_config {
    char model_type[64];
    int hidden_size;
    int num_layers;
    int num_heads;
    int num_kv_heads;
    int head_dim;
    int intermediate_size; /* dense MLP layers */
    int vocab_size;
    int max_position_embeddings;
    float rms_norm_eps;
    int tie_word_embeddings;
    int qkv_bias;
    int o_bias;
    int mlp_bias;
    int qk_norm;
    int sliding_window; /* 0: full attention */
    /* [num_layers] from layer_types: 1 where the layer is "sliding_attention"
     * (gpt-oss alternates); NULL without layer_types, when sliding_window
     * applies to every layer. moeq_config_layer_window() reads it. */
    unsigned char *layer_sliding;
    int router_bias;       /* the router linear has a bias (gpt-oss) */
    moeq_router_kind router; /* the architecture's router, for the forward */
    /* Llama-4 attention. layer_rope [num_layers] from no_rope_layers (1: the
     * layer applies RoPE), NULL when every layer does; layer_chunked from
     * layer_types "chunked_attention": causal attention within chunks of
     * attention_chunk_size tokens. On RoPE layers qk_l2_norm normalises q
     * and k per head (RMS, no weight) after the rotation; on the others
     * attn_temperature_tuning scales q by
     * log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1. */
    unsigned char *layer_rope;
    unsigned char *layer_chunked;
    int attention_chunk_size;
    int rope_interleaved; /* RoPE on adjacent pairs (2i, 2i + 1), not halves */
    int qk_l2_norm;
    int attn_temperature_tuning;
    float floor_scale, attn_scale;
    float swiglu_alpha;    /* MOEQ_MLP_ACT_SWIGLU_CLAMPED: sigmoid(alpha * gate) */
    float swiglu_limit;    /* MOEQ_MLP_ACT_SWIGLU_CLAMPED: the clamp (> 0); 0 otherwise */
    /* MoE; num_experts == 0 for dense models */
    int num_experts;
    int num_experts_per_tok;
    int moe_intermediate_size;
    int shared_expert_intermediate_size; /* 0: no shared expert */
    int norm_topk_prob;
    int n_group, topk_group;       /* sigmoid router: group-limited selection (1: none) */
    float routed_scaling_factor;   /* multiplies the routed experts' weights (1: none) */
    int first_k_dense_replace;     /* first_k_dense layers: layers below it are dense */
    int qk_norm_full;              /* q/k RMSNorm over the whole projection (MiniMax-M2) */
    /* MLA (attention == MOEQ_ATTENTION_MLA); head_dim is qk_rope_head_dim there */
    moeq_attention_kind attention;
    int q_lora_rank;               /* 0: q_proj instead of q_a/q_b */
    int kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    unsigned char *layer_is_moe; /* [num_layers] */
    moeq_rope_params rope;
    /* Hybrid models (Gated DeltaNet linear attention beside full attention);
     * layer_is_linear is all zeros for other models. */
    unsigned char *layer_is_linear; /* [num_layers] */
    int la_num_k_heads, la_num_v_heads, la_k_head_dim, la_v_head_dim, la_conv_kernel;
    int attn_output_gate; /* q_proj also yields a per-head gate: o_proj(attn * sigmoid(gate)) */
    /* Multi-token prediction (architectures with mtp_layer_prefix). */
    int mtp_num_layers;          /* mtp_num_hidden_layers (default 1) */
    int mtp_dedicated_embedding; /* mtp_use_dedicated_embeddings */
    /* From quantization_config (a GPTQ, AWQ or compressed-tensors checkpoint
     * moeq or another tool wrote); quant_bits == 0 for an unquantized one. */
    int quant_bits;
    int quant_group_size;
    /* A block-scaled FP8 source (quant_method "fp8"), dequantized on load:
     * weight_block_size; 0 otherwise (model/fp8_blocks.h). */
    int fp8_block_rows, fp8_block_cols;
    int mxfp4; /* quant_method "mxfp4": fused experts as MXFP4 blocks (model/mxfp4.h) */
    int quant_format; /* moeq_format: gptq, awq or compressed-tensors */
    int quant_sym;    /* compressed-tensors: symmetric (no zero point tensors) */
} moeq_config;

/* Reads path (a config.json) with arch's parameter mapping. */
moeq_code moeq_config_load(const char *path, const moeq_arch *arch, moeq_config *cfg,
                           moeq_error *err);
/* Same, from text; path only names the source in messages. */
moeq_code moeq_config_parse(const char *json, const char *path, const moeq_arch *arch,
                            moeq_config *cfg, moeq_error *err);
/* model_type of a config.json, without needing an architecture. */
moeq_code moeq_config_model_type(const char *path, char *buf, size_t bytes, moeq_error *err);
void moeq_config_free(moeq_config *cfg);

/* Whether layer l applies RoPE (Llama-4's no_rope_layers). */
int moeq_config_layer_rope(const moeq_config *cfg, int layer);

/* The sliding window of layer l's attention; 0 for full attention. */
int moeq_config_layer_window(const moeq_config *cfg, int layer);

#endif
