/* arch.h: architecture files: which known components a model uses and how
 * its tensors are named. One file per family in archs/ (embedded into the
 * binary) or a user's own with --arch-file; format in docs/adding-a-model.md. */
#ifndef MOEQ_MODEL_ARCH_H
#define MOEQ_MODEL_ARCH_H

#include "moeq/moeq.h"

#include <cjson/cJSON.h>

typedef enum moeq_attention_kind {
    MOEQ_ATTENTION_GQA, /* grouped-query attention, RoPE on q and k */
    MOEQ_ATTENTION_MLA, /* DeepSeek-V2/V3 multi-head latent attention (mla.c) */
} moeq_attention_kind;

typedef enum moeq_router_kind {
    MOEQ_ROUTER_NONE,         /* dense model */
    MOEQ_ROUTER_SOFTMAX_TOPK, /* softmax over all experts, top-k, optional renorm */
    MOEQ_ROUTER_TOPK_SIGMOID_INPUT, /* Llama-4: top-k of the logits, sigmoid(logit) scales the
                                     * expert's input */
    MOEQ_ROUTER_SIGMOID_TOPK, /* sigmoid scores, top-k of score + correction bias within
                               * the best groups, routed_scaling_factor (DeepSeek-V3) */
} moeq_router_kind;

typedef enum moeq_shared_expert_kind {
    MOEQ_SHARED_EXPERT_NONE,
    MOEQ_SHARED_EXPERT_SIGMOID_GATED, /* Qwen2-MoE: sigmoid(x . g) * shared(x) */
    MOEQ_SHARED_EXPERT_PLAIN,         /* Llama-4, DeepSeek, GLM-4.5: shared(x) added ungated */
} moeq_shared_expert_kind;

/* How routed experts are stored. */
typedef enum moeq_experts_kind {
    MOEQ_EXPERTS_SEPARATE,          /* one tensor per expert and projection, or (when
                                     * experts_gate_up is named and present) Qwen3.5-MoE's
                                     * [E, 2I, H] and [E, H, I] in nn.Linear order */
    MOEQ_EXPERTS_FUSED_INTERLEAVED, /* gpt-oss: per layer gate_up [E, H, 2I] with gate in the
                                     * even and up in the odd columns, down [E, I, H]
                                     * (model/fused_experts.h) */
    MOEQ_EXPERTS_FUSED_CONCAT,      /* Llama-4: the same tensors with gate in the first and up
                                     * in the second half of the columns */
} moeq_experts_kind;

/* The gating of an MLP's gate and up projections. */
typedef enum moeq_mlp_act_kind {
    MOEQ_MLP_ACT_SILU,           /* silu(gate) * up */
    MOEQ_MLP_ACT_SWIGLU_CLAMPED, /* gpt-oss: gate clamped above at limit, up to [-limit, limit],
                                  * gate * sigmoid(alpha * gate) * (up + 1) */
} moeq_mlp_act_kind;

typedef enum moeq_moe_layers_kind {
    MOEQ_MOE_LAYERS_NONE,        /* dense model */
    MOEQ_MOE_LAYERS_ALL,         /* every layer is sparse (Mixtral) */
    MOEQ_MOE_LAYERS_SPARSE_STEP, /* Qwen-MoE: decoder_sparse_step, mlp_only_layers */
    MOEQ_MOE_LAYERS_LIST,        /* Llama-4: config.json moe_layers lists the sparse layers */
    MOEQ_MOE_LAYERS_FIRST_K_DENSE, /* DeepSeek, GLM-4.5: dense below first_k_dense_replace */
} moeq_moe_layers_kind;

typedef enum moeq_linear_attention_kind {
    MOEQ_LINEAR_ATTENTION_NONE,
    MOEQ_LINEAR_ATTENTION_GATED_DELTANET, /* Qwen3-Next / Qwen3.5 hybrids (deltanet.h) */
} moeq_linear_attention_kind;

typedef enum moeq_norm_kind {
    MOEQ_NORM_RMS,               /* w * x / rms(x) */
    MOEQ_NORM_RMS_ZERO_CENTERED, /* (1 + w) * x / rms(x): Qwen3-Next, Qwen3.5 (Gemma style) */
} moeq_norm_kind;

/* The tensors an architecture names; the JSON key of each is in
 * moeq_tensor_role_key(). Layer roles carry {L}, expert roles {E}. */
typedef enum moeq_tensor_role {
    MOEQ_T_EMBED,
    MOEQ_T_FINAL_NORM,
    MOEQ_T_LM_HEAD,
    MOEQ_T_ATTN_NORM,
    MOEQ_T_Q_PROJ,
    MOEQ_T_K_PROJ,
    MOEQ_T_V_PROJ,
    MOEQ_T_O_PROJ,
    MOEQ_T_Q_NORM,
    MOEQ_T_K_NORM,
    MOEQ_T_MLP_NORM,
    MOEQ_T_GATE_PROJ,
    MOEQ_T_UP_PROJ,
    MOEQ_T_DOWN_PROJ,
    MOEQ_T_ROUTER,
    MOEQ_T_EXPERT_GATE_PROJ,
    MOEQ_T_EXPERT_UP_PROJ,
    MOEQ_T_EXPERT_DOWN_PROJ,
    MOEQ_T_SHARED_GATE_PROJ,
    MOEQ_T_SHARED_UP_PROJ,
    MOEQ_T_SHARED_DOWN_PROJ,
    MOEQ_T_SHARED_EXPERT_GATE,
    MOEQ_T_LA_IN_QKV,   /* Gated DeltaNet (linear layers) */
    MOEQ_T_LA_IN_Z,
    MOEQ_T_LA_IN_B,
    MOEQ_T_LA_IN_A,
    MOEQ_T_LA_IN_QKVZ,  /* fused q/k/v/z and b/a of Qwen3-Next */
    MOEQ_T_LA_IN_BA,
    MOEQ_T_LA_CONV,
    MOEQ_T_LA_DT_BIAS,
    MOEQ_T_LA_A_LOG,
    MOEQ_T_LA_NORM,
    MOEQ_T_LA_OUT_PROJ,
    MOEQ_T_EXPERTS_GATE_UP, /* all experts of a layer in one tensor: [E, 2I, H] (Qwen3.5-MoE),
                             * [E, H, 2I] with fused_* experts (gpt-oss, Llama-4) */
    MOEQ_T_EXPERTS_DOWN,    /* [E, H, I]; [E, I, H] with fused_* experts */
    MOEQ_T_MTP_FC,          /* multi-token prediction (mtp.h): [H, 2H] over [embedding; hidden] */
    MOEQ_T_MTP_NORM_EMBEDDING,
    MOEQ_T_MTP_NORM_HIDDEN,
    MOEQ_T_MTP_NORM,
    MOEQ_T_ATTN_SINKS,      /* gpt-oss: per-head sink logits [Hq] */
    MOEQ_T_ROUTER_CORRECTION, /* e_score_correction_bias of a sigmoid router */
    MOEQ_T_Q_A_PROJ,    /* MLA: q_lora_rank compression of q */
    MOEQ_T_Q_A_NORM,
    MOEQ_T_Q_B_PROJ,
    MOEQ_T_KV_A_PROJ,   /* MLA: kv_a_proj_with_mqa, latent kv and the shared rope key */
    MOEQ_T_KV_A_NORM,
    MOEQ_T_KV_B_PROJ,
    MOEQ_T_COUNT
} moeq_tensor_role;

typedef struct moeq_arch {
    char *name;
    char *doc;
    char *source; /* "built-in archs/NAME.json" or the file's path */
    char **model_types;
    int n_model_types;
    cJSON *params; /* canonical parameter -> {keys, default} or {value}; owned */
    moeq_attention_kind attention;
    moeq_router_kind router;
    moeq_shared_expert_kind shared_expert;
    moeq_moe_layers_kind moe_layers;
    moeq_linear_attention_kind linear_attention;
    moeq_norm_kind norm;
    moeq_experts_kind experts;
    moeq_mlp_act_kind mlp_act;
    char *tensors[MOEQ_T_COUNT]; /* name templates; NULL where absent */
    /* Modules of the checkpoint outside the language model (a vision tower,
     * multi-token-prediction layers) that stay unquantized: named in the
     * output's quantization_config so that loaders do not expect GPTQ
     * tensors for them. */
    char **keep_modules;
    int n_keep_modules;
    /* The MTP decoder layer's tensors: the layer templates with this prefix
     * replaced ("mtp_layer_prefix": [from, to]); NULL without MTP. A "{N}"
     * in any template stands for the first layer past the numbered ones
     * (num_hidden_layers), where DeepSeek-V3 and GLM-4.5 keep their next-n
     * layer; moeq_arch_bind_next_layer replaces it once the config is read. */
    char *mtp_prefix_from, *mtp_prefix_to;
    /* "mtp_keep_fc": the MTP fc stays unquantized with --quantize-mtp (vLLM
     * builds DeepSeek's and GLM-4.5's eh_proj as a plain nn.Linear). */
    int mtp_keep_fc;
    /* "mtp_zero_first_embedding": the drafter sees a zero embedding at
     * position 0 (vLLM deepseek_mtp.py and glm4_moe_mtp.py mask it). */
    int mtp_zero_first_embedding;
} moeq_arch;

const char *moeq_tensor_role_key(moeq_tensor_role role);

/* Parses and validates one architecture file's text; source names it in
 * messages. */
moeq_code moeq_arch_parse(const char *json, const char *source, moeq_arch *arch,
                          moeq_error *err);
moeq_code moeq_arch_load_file(const char *path, moeq_arch *arch, moeq_error *err);
/* The built-in architecture serving model_type; an unknown type fails with
 * the list of supported ones and a pointer to docs/adding-a-model.md. */
moeq_code moeq_arch_for_model_type(const char *model_type, moeq_arch *arch,
                                   moeq_error *err);
/* Comma-separated model types of every built-in architecture. */
void moeq_arch_supported_list(char *buf, size_t bytes);
void moeq_arch_free(moeq_arch *arch);

/* Replaces "{N}" in every tensor template and the MTP prefix with
 * next_layer (the config's num_hidden_layers). */
moeq_code moeq_arch_bind_next_layer(moeq_arch *arch, int next_layer, moeq_error *err);

/* Fills buf with the tensor name for role at layer/expert. Returns 0, or -1
 * when the architecture has no such tensor or buf is too small. */
int moeq_arch_tensor_name(const moeq_arch *arch, moeq_tensor_role role, int layer,
                          int expert, char *buf, size_t bytes);

#endif
