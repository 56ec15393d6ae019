/* arch.c: parses and validates architecture files and expands their tensor
 * name templates. Built-in files are embedded by cmake/embed_archs.cmake. */
#include "model/arch.h"

#include "common/fileio.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *file;
    const char *json;
} moeq_embedded_arch;
extern const moeq_embedded_arch moeq_embedded_archs[];

static const char *const ROLE_KEYS[MOEQ_T_COUNT] = {
    [MOEQ_T_EMBED] = "embed",
    [MOEQ_T_FINAL_NORM] = "final_norm",
    [MOEQ_T_LM_HEAD] = "lm_head",
    [MOEQ_T_ATTN_NORM] = "attn_norm",
    [MOEQ_T_Q_PROJ] = "q_proj",
    [MOEQ_T_K_PROJ] = "k_proj",
    [MOEQ_T_V_PROJ] = "v_proj",
    [MOEQ_T_O_PROJ] = "o_proj",
    [MOEQ_T_Q_NORM] = "q_norm",
    [MOEQ_T_K_NORM] = "k_norm",
    [MOEQ_T_MLP_NORM] = "mlp_norm",
    [MOEQ_T_GATE_PROJ] = "gate_proj",
    [MOEQ_T_UP_PROJ] = "up_proj",
    [MOEQ_T_DOWN_PROJ] = "down_proj",
    [MOEQ_T_ROUTER] = "router",
    [MOEQ_T_EXPERT_GATE_PROJ] = "expert_gate_proj",
    [MOEQ_T_EXPERT_UP_PROJ] = "expert_up_proj",
    [MOEQ_T_EXPERT_DOWN_PROJ] = "expert_down_proj",
    [MOEQ_T_SHARED_GATE_PROJ] = "shared_gate_proj",
    [MOEQ_T_SHARED_UP_PROJ] = "shared_up_proj",
    [MOEQ_T_SHARED_DOWN_PROJ] = "shared_down_proj",
    [MOEQ_T_SHARED_EXPERT_GATE] = "shared_expert_gate",
    [MOEQ_T_LA_IN_QKV] = "linear_in_qkv",
    [MOEQ_T_LA_IN_Z] = "linear_in_z",
    [MOEQ_T_LA_IN_B] = "linear_in_b",
    [MOEQ_T_LA_IN_A] = "linear_in_a",
    [MOEQ_T_LA_IN_QKVZ] = "linear_in_qkvz",
    [MOEQ_T_LA_IN_BA] = "linear_in_ba",
    [MOEQ_T_LA_CONV] = "linear_conv",
    [MOEQ_T_LA_DT_BIAS] = "linear_dt_bias",
    [MOEQ_T_LA_A_LOG] = "linear_a_log",
    [MOEQ_T_LA_NORM] = "linear_norm",
    [MOEQ_T_LA_OUT_PROJ] = "linear_out_proj",
    [MOEQ_T_EXPERTS_GATE_UP] = "experts_gate_up",
    [MOEQ_T_EXPERTS_DOWN] = "experts_down",
    [MOEQ_T_MTP_FC] = "mtp_fc",
    [MOEQ_T_MTP_NORM_EMBEDDING] = "mtp_norm_embedding",
    [MOEQ_T_MTP_NORM_HIDDEN] = "mtp_norm_hidden",
    [MOEQ_T_MTP_NORM] = "mtp_norm",
    [MOEQ_T_ATTN_SINKS] = "attn_sinks",
    [MOEQ_T_ROUTER_CORRECTION] = "router_correction_bias",
    [MOEQ_T_Q_A_PROJ] = "q_a_proj",
    [MOEQ_T_Q_A_NORM] = "q_a_norm",
    [MOEQ_T_Q_B_PROJ] = "q_b_proj",
    [MOEQ_T_KV_A_PROJ] = "kv_a_proj",
    [MOEQ_T_KV_A_NORM] = "kv_a_norm",
    [MOEQ_T_KV_B_PROJ] = "kv_b_proj",
};

const char *moeq_tensor_role_key(moeq_tensor_role role)
{
    return role < MOEQ_T_COUNT ? ROLE_KEYS[role] : "?";
}

static int role_is_global(moeq_tensor_role r)
{
    return r == MOEQ_T_EMBED || r == MOEQ_T_FINAL_NORM || r == MOEQ_T_LM_HEAD ||
           r == MOEQ_T_MTP_FC || r == MOEQ_T_MTP_NORM_EMBEDDING || r == MOEQ_T_MTP_NORM_HIDDEN ||
           r == MOEQ_T_MTP_NORM;
}

static int role_is_expert(moeq_tensor_role r)
{
    return r == MOEQ_T_EXPERT_GATE_PROJ || r == MOEQ_T_EXPERT_UP_PROJ ||
           r == MOEQ_T_EXPERT_DOWN_PROJ;
}

/* One allowed string value of a component and the enum it selects. */
typedef struct {
    const char *name;
    int value;
} choice;

static const choice ATTENTION_CHOICES[] = {{"gqa", MOEQ_ATTENTION_GQA},
                                           {"mla", MOEQ_ATTENTION_MLA},
                                           {NULL, 0}};
static const choice ROUTER_CHOICES[] = {{"none", MOEQ_ROUTER_NONE},
                                        {"softmax_topk", MOEQ_ROUTER_SOFTMAX_TOPK},
                                        {"topk_sigmoid_input", MOEQ_ROUTER_TOPK_SIGMOID_INPUT},
                                        {"sigmoid_topk", MOEQ_ROUTER_SIGMOID_TOPK},
                                        {NULL, 0}};
static const choice SHARED_CHOICES[] = {{"none", MOEQ_SHARED_EXPERT_NONE},
                                        {"sigmoid_gated", MOEQ_SHARED_EXPERT_SIGMOID_GATED},
                                        {"plain", MOEQ_SHARED_EXPERT_PLAIN},
                                        {NULL, 0}};
static const choice MOE_LAYER_CHOICES[] = {{"none", MOEQ_MOE_LAYERS_NONE},
                                           {"all", MOEQ_MOE_LAYERS_ALL},
                                           {"sparse_step", MOEQ_MOE_LAYERS_SPARSE_STEP},
                                           {"list", MOEQ_MOE_LAYERS_LIST},
                                           {"first_k_dense", MOEQ_MOE_LAYERS_FIRST_K_DENSE},
                                           {NULL, 0}};
static const choice LINEAR_ATTENTION_CHOICES[] = {
    {"none", MOEQ_LINEAR_ATTENTION_NONE},
    {"gated_deltanet", MOEQ_LINEAR_ATTENTION_GATED_DELTANET},
    {NULL, 0}};
static const choice NORM_CHOICES[] = {{"rmsnorm", MOEQ_NORM_RMS},
                                      {"zero_centered_rmsnorm", MOEQ_NORM_RMS_ZERO_CENTERED},
                                      {NULL, 0}};

static const choice EXPERTS_CHOICES[] = {{"separate", MOEQ_EXPERTS_SEPARATE},
                                         {"fused_interleaved", MOEQ_EXPERTS_FUSED_INTERLEAVED},
                                         {"fused_concat", MOEQ_EXPERTS_FUSED_CONCAT},
                                         {NULL, 0}};
static const choice MLP_ACT_CHOICES[] = {{"silu", MOEQ_MLP_ACT_SILU},
                                         {"swiglu_clamped", MOEQ_MLP_ACT_SWIGLU_CLAMPED},
                                         {NULL, 0}};

static moeq_code parse_choice(const cJSON *components, const char *key, const choice *choices,
                              int default_value, const char *source, int *out,
                              moeq_error *err)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(components, key);
    if (!item) {
        *out = default_value;
        return MOEQ_OK;
    }
    if (cJSON_IsString(item)) {
        for (const choice *c = choices; c->name; c++) {
            if (!strcmp(c->name, item->valuestring)) {
                *out = c->value;
                return MOEQ_OK;
            }
        }
    }
    char known[256] = "";
    for (const choice *c = choices; c->name; c++) {
        strncat(known, c->name, sizeof known - strlen(known) - 1);
        if (c[1].name)
            strncat(known, ", ", sizeof known - strlen(known) - 1);
    }
    return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                     "architecture file %s: components.%s must be one of: %s", source, key,
                     known);
}

/* Parameter names an architecture file may set; config.c reads them. */
static const char *const PARAM_NAMES[] = {
    "hidden_size",       "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads",
    "head_dim",          "intermediate_size",
    "vocab_size",        "rms_norm_eps",
    "max_position_embeddings", "tie_word_embeddings",
    "qkv_bias",          "o_bias",
    "mlp_bias",          "qk_norm",
    "num_experts",       "num_experts_per_tok",
    "moe_intermediate_size", "shared_expert_intermediate_size",
    "norm_topk_prob",    "decoder_sparse_step",
    "mlp_only_layers",   "hidden_act",
    "sliding_window",    "attn_output_gate",
    "layer_types",       "full_attention_interval",
    "linear_num_key_heads", "linear_num_value_heads",
    "linear_key_head_dim", "linear_value_head_dim",
    "linear_conv_kernel_dim", "mtp_num_hidden_layers",
    "mtp_use_dedicated_embeddings", "router_bias",
    "swiglu_alpha",      "swiglu_limit",
    "rope_interleaved",  "qk_l2_norm",
    "attn_temperature_tuning", "floor_scale",
    "attn_scale",        "attention_chunk_size",
    "n_group",           "topk_group",
    "routed_scaling_factor", "first_k_dense_replace",
    "n_shared_experts",  "qk_norm_full",
    "q_lora_rank",       "kv_lora_rank",
    "qk_nope_head_dim",  "qk_rope_head_dim",
    "v_head_dim",        "partial_rotary_factor",
    NULL,
};

static moeq_code validate_params(const cJSON *params, const char *source, moeq_error *err)
{
    if (!cJSON_IsObject(params))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "architecture file %s: \"params\" must be an object", source);
    const cJSON *p;
    cJSON_ArrayForEach(p, params)
    {
        int known = 0;
        for (const char *const *n = PARAM_NAMES; *n; n++)
            known |= !strcmp(*n, p->string);
        if (!known)
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "architecture file %s: unknown parameter params.%s", source,
                             p->string);
        if (!cJSON_IsObject(p))
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "architecture file %s: params.%s must be an object with "
                             "\"keys\"/\"default\" or \"value\"",
                             source, p->string);
        const cJSON *keys = cJSON_GetObjectItemCaseSensitive(p, "keys");
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(p, "value");
        if (!keys == !value)
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "architecture file %s: params.%s needs exactly one of "
                             "\"keys\" and \"value\"",
                             source, p->string);
        if (keys) {
            const cJSON *k;
            int n = 0;
            if (!cJSON_IsArray(keys))
                n = -1;
            else
                cJSON_ArrayForEach(k, keys) n = cJSON_IsString(k) && n >= 0 ? n + 1 : -1;
            if (n <= 0)
                return moeq_fail(err, MOEQ_ERR_FORMAT,
                                 "architecture file %s: params.%s.keys must be a non-empty "
                                 "array of config.json field names",
                                 source, p->string);
        }
    }
    return MOEQ_OK;
}

static moeq_code parse_tensors(const cJSON *tensors, const char *source, moeq_arch *arch,
                               moeq_error *err)
{
    if (!cJSON_IsObject(tensors))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "architecture file %s: \"tensors\" must be an object", source);
    const cJSON *t;
    cJSON_ArrayForEach(t, tensors)
    {
        int role = -1;
        for (int r = 0; r < MOEQ_T_COUNT; r++)
            if (!strcmp(ROLE_KEYS[r], t->string))
                role = r;
        if (role < 0)
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "architecture file %s: unknown tensor role tensors.%s", source,
                             t->string);
        if (!cJSON_IsString(t))
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "architecture file %s: tensors.%s must be a string", source,
                             t->string);
        if (arch->tensors[role])
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "architecture file %s: tensors.%s is given twice", source,
                             t->string);
        const char *tpl = t->valuestring;
        int has_l = strstr(tpl, "{L}") != NULL, has_e = strstr(tpl, "{E}") != NULL;
        if (has_l == role_is_global(role) || has_e != role_is_expert(role))
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "architecture file %s: tensors.%s = \"%s\" must %s {L} and %s "
                             "{E}",
                             source, t->string, tpl, role_is_global(role) ? "not contain" : "contain",
                             role_is_expert(role) ? "contain" : "not contain");
        if (!(arch->tensors[role] = strdup(tpl)))
            return moeq_fail(err, MOEQ_ERR_OOM, "architecture file %s: out of memory", source);
    }
    return MOEQ_OK;
}

static moeq_code check_required_roles(const moeq_arch *arch, const char *source,
                                      moeq_error *err)
{
    moeq_tensor_role always[] = {MOEQ_T_EMBED, MOEQ_T_FINAL_NORM, MOEQ_T_ATTN_NORM,
                                 MOEQ_T_Q_PROJ, MOEQ_T_O_PROJ, MOEQ_T_MLP_NORM};
    for (size_t i = 0; i < sizeof always / sizeof always[0]; i++)
        if (!arch->tensors[always[i]])
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "architecture file %s: tensors.%s is required", source,
                             ROLE_KEYS[always[i]]);
    moeq_tensor_role need[MOEQ_T_COUNT];
    int n = 0;
    if (arch->attention == MOEQ_ATTENTION_GQA) {
        need[n++] = MOEQ_T_K_PROJ;
        need[n++] = MOEQ_T_V_PROJ;
    } else {
        /* q_proj serves q_lora_rank = null; the a/b pair the others. */
        need[n++] = MOEQ_T_Q_A_PROJ;
        need[n++] = MOEQ_T_Q_A_NORM;
        need[n++] = MOEQ_T_Q_B_PROJ;
        need[n++] = MOEQ_T_KV_A_PROJ;
        need[n++] = MOEQ_T_KV_A_NORM;
        need[n++] = MOEQ_T_KV_B_PROJ;
    }
    if (arch->router == MOEQ_ROUTER_SIGMOID_TOPK)
        need[n++] = MOEQ_T_ROUTER_CORRECTION;
    if (arch->moe_layers != MOEQ_MOE_LAYERS_NONE) {
        need[n++] = MOEQ_T_ROUTER;
        need[n++] = MOEQ_T_EXPERT_GATE_PROJ;
        need[n++] = MOEQ_T_EXPERT_UP_PROJ;
        need[n++] = MOEQ_T_EXPERT_DOWN_PROJ;
    }
    if (arch->moe_layers != MOEQ_MOE_LAYERS_ALL) {
        need[n++] = MOEQ_T_GATE_PROJ;
        need[n++] = MOEQ_T_UP_PROJ;
        need[n++] = MOEQ_T_DOWN_PROJ;
    }
    if (arch->shared_expert == MOEQ_SHARED_EXPERT_SIGMOID_GATED) {
        need[n++] = MOEQ_T_SHARED_EXPERT_GATE;
    }
    if (arch->linear_attention == MOEQ_LINEAR_ATTENTION_GATED_DELTANET) {
        need[n++] = MOEQ_T_LA_CONV;
        need[n++] = MOEQ_T_LA_DT_BIAS;
        need[n++] = MOEQ_T_LA_A_LOG;
        need[n++] = MOEQ_T_LA_NORM;
        need[n++] = MOEQ_T_LA_OUT_PROJ;
        int separate = arch->tensors[MOEQ_T_LA_IN_QKV] && arch->tensors[MOEQ_T_LA_IN_Z] &&
                       arch->tensors[MOEQ_T_LA_IN_B] && arch->tensors[MOEQ_T_LA_IN_A];
        int fused = arch->tensors[MOEQ_T_LA_IN_QKVZ] && arch->tensors[MOEQ_T_LA_IN_BA];
        if (separate == fused)
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "architecture file %s: gated_deltanet needs either "
                             "tensors.linear_in_qkv, linear_in_z, linear_in_b and linear_in_a, "
                             "or the fused tensors.linear_in_qkvz and linear_in_ba (not both)",
                             source);
    }
    /* gpt-oss's and Llama-4's experts are read from their fused tensors;
     * the per-expert names above still name the quantized output. */
    if (arch->experts != MOEQ_EXPERTS_SEPARATE) {
        need[n++] = MOEQ_T_EXPERTS_GATE_UP;
        need[n++] = MOEQ_T_EXPERTS_DOWN;
    }
    for (int i = 0; i < n; i++)
        if (!arch->tensors[need[i]])
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "architecture file %s: tensors.%s is required by its components",
                             source, ROLE_KEYS[need[i]]);
    if (!arch->tensors[MOEQ_T_EXPERTS_GATE_UP] != !arch->tensors[MOEQ_T_EXPERTS_DOWN])
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "architecture file %s: tensors.experts_gate_up and experts_down go "
                         "together",
                         source);
    if (arch->shared_expert != MOEQ_SHARED_EXPERT_NONE &&
        (!arch->tensors[MOEQ_T_SHARED_GATE_PROJ] || !arch->tensors[MOEQ_T_SHARED_UP_PROJ] ||
         !arch->tensors[MOEQ_T_SHARED_DOWN_PROJ]))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "architecture file %s: a shared expert needs tensors.shared_gate_proj, "
                         "shared_up_proj and shared_down_proj",
                         source);
    if ((arch->moe_layers == MOEQ_MOE_LAYERS_NONE) != (arch->router == MOEQ_ROUTER_NONE))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "architecture file %s: components.router and components.moe_layers "
                         "must both be \"none\" (dense) or both be set (MoE)",
                         source);
    return MOEQ_OK;
}

/* "keep_modules": module names (letters, digits, '_') such as "visual". */
static moeq_code parse_keep_modules(const cJSON *keep, const char *source, moeq_arch *arch,
                                    moeq_error *err)
{
    int n = cJSON_IsArray(keep) ? cJSON_GetArraySize(keep) : -1;
    if (n < 0)
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "architecture file %s: \"keep_modules\" must be an array of module "
                         "names",
                         source);
    if (!(arch->keep_modules = calloc(n ? (size_t)n : 1, sizeof *arch->keep_modules)))
        return moeq_fail(err, MOEQ_ERR_OOM, "architecture file %s: out of memory", source);
    const cJSON *k;
    cJSON_ArrayForEach(k, keep)
    {
        int ok = cJSON_IsString(k) && k->valuestring[0];
        for (const char *c = ok ? k->valuestring : ""; *c; c++)
            ok &= (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || *c == '_';
        if (!ok)
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "architecture file %s: keep_modules entries must be module names "
                             "(letters, digits, '_')",
                             source);
        if (!(arch->keep_modules[arch->n_keep_modules++] = strdup(k->valuestring)))
            return moeq_fail(err, MOEQ_ERR_OOM, "architecture file %s: out of memory", source);
    }
    return MOEQ_OK;
}

moeq_code moeq_arch_parse(const char *json, const char *source, moeq_arch *arch,
                          moeq_error *err)
{
    memset(arch, 0, sizeof *arch);
    cJSON *root = cJSON_Parse(json);
    moeq_code rc = MOEQ_OK;
    if (!root || !cJSON_IsObject(root)) {
        rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                       "architecture file %s: not a JSON object (error near \"%.20s\")", source,
                       cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "");
        goto done;
    }
    arch->source = strdup(source);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "name");
    const cJSON *doc = cJSON_GetObjectItemCaseSensitive(root, "doc");
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(root, "model_types");
    if (!cJSON_IsString(name)) {
        rc = moeq_fail(err, MOEQ_ERR_FORMAT, "architecture file %s: \"name\" must be a string",
                       source);
        goto done;
    }
    arch->name = strdup(name->valuestring);
    arch->doc = strdup(cJSON_IsString(doc) ? doc->valuestring : "");
    int n_types = cJSON_IsArray(types) ? cJSON_GetArraySize(types) : 0;
    if (n_types <= 0) {
        rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                       "architecture file %s: \"model_types\" must be a non-empty array of "
                       "strings",
                       source);
        goto done;
    }
    arch->model_types = calloc((size_t)n_types, sizeof *arch->model_types);
    const cJSON *t;
    cJSON_ArrayForEach(t, types)
    {
        if (!cJSON_IsString(t)) {
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "architecture file %s: \"model_types\" entries must be strings",
                           source);
            goto done;
        }
        arch->model_types[arch->n_model_types++] = strdup(t->valuestring);
    }
    const cJSON *keep = cJSON_GetObjectItemCaseSensitive(root, "keep_modules");
    if (keep && (rc = parse_keep_modules(keep, source, arch, err)))
        goto done;
    const cJSON *mtp = cJSON_GetObjectItemCaseSensitive(root, "mtp_layer_prefix");
    if (mtp) {
        const cJSON *from = cJSON_GetArrayItem(mtp, 0), *to = cJSON_GetArrayItem(mtp, 1);
        if (!cJSON_IsArray(mtp) || cJSON_GetArraySize(mtp) != 2 || !cJSON_IsString(from) ||
            !cJSON_IsString(to) || !strstr(from->valuestring, "{L}") ||
            (!strstr(to->valuestring, "{L}") && !strstr(to->valuestring, "{N}"))) {
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "architecture file %s: \"mtp_layer_prefix\" must be [from, to], two "
                           "tensor-name prefixes, from with {L}, to with {L} or {N}",
                           source);
            goto done;
        }
        arch->mtp_prefix_from = strdup(from->valuestring);
        arch->mtp_prefix_to = strdup(to->valuestring);
    }
    const char *mtp_flags[2] = {"mtp_keep_fc", "mtp_zero_first_embedding"};
    int *mtp_flag_fields[2] = {&arch->mtp_keep_fc, &arch->mtp_zero_first_embedding};
    for (int i = 0; i < 2; i++) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, mtp_flags[i]);
        if (f && (!cJSON_IsBool(f) || !mtp)) {
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "architecture file %s: \"%s\" must be true or false, beside "
                           "\"mtp_layer_prefix\"",
                           source, mtp_flags[i]);
            goto done;
        }
        *mtp_flag_fields[i] = f && cJSON_IsTrue(f);
    }
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "params");
    if (params) {
        if ((rc = validate_params(params, source, err)))
            goto done;
        arch->params = cJSON_Duplicate(params, 1);
    } else {
        arch->params = cJSON_CreateObject();
    }
    const cJSON *comp = cJSON_GetObjectItemCaseSensitive(root, "components");
    if (!cJSON_IsObject(comp)) {
        rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                       "architecture file %s: \"components\" must be an object", source);
        goto done;
    }
    const cJSON *c;
    cJSON_ArrayForEach(c, comp)
    {
        const char *k = c->string;
        if (strcmp(k, "attention") && strcmp(k, "router") && strcmp(k, "shared_expert") &&
            strcmp(k, "moe_layers") && strcmp(k, "linear_attention") && strcmp(k, "norm") &&
            strcmp(k, "experts") && strcmp(k, "mlp_act")) {
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "architecture file %s: unknown component components.%s", source, k);
            goto done;
        }
    }
    int v;
    if ((rc = parse_choice(comp, "attention", ATTENTION_CHOICES, MOEQ_ATTENTION_GQA, source, &v,
                           err)))
        goto done;
    arch->attention = (moeq_attention_kind)v;
    if ((rc = parse_choice(comp, "router", ROUTER_CHOICES, MOEQ_ROUTER_NONE, source, &v, err)))
        goto done;
    arch->router = (moeq_router_kind)v;
    if ((rc = parse_choice(comp, "shared_expert", SHARED_CHOICES, MOEQ_SHARED_EXPERT_NONE,
                           source, &v, err)))
        goto done;
    arch->shared_expert = (moeq_shared_expert_kind)v;
    if ((rc = parse_choice(comp, "moe_layers", MOE_LAYER_CHOICES, MOEQ_MOE_LAYERS_NONE, source,
                           &v, err)))
        goto done;
    arch->moe_layers = (moeq_moe_layers_kind)v;
    if ((rc = parse_choice(comp, "linear_attention", LINEAR_ATTENTION_CHOICES,
                           MOEQ_LINEAR_ATTENTION_NONE, source, &v, err)))
        goto done;
    arch->linear_attention = (moeq_linear_attention_kind)v;
    if ((rc = parse_choice(comp, "norm", NORM_CHOICES, MOEQ_NORM_RMS, source, &v, err)))
        goto done;
    arch->norm = (moeq_norm_kind)v;
    if ((rc = parse_choice(comp, "experts", EXPERTS_CHOICES, MOEQ_EXPERTS_SEPARATE, source, &v,
                           err)))
        goto done;
    arch->experts = (moeq_experts_kind)v;
    if ((rc = parse_choice(comp, "mlp_act", MLP_ACT_CHOICES, MOEQ_MLP_ACT_SILU, source, &v, err)))
        goto done;
    arch->mlp_act = (moeq_mlp_act_kind)v;
    if ((rc = parse_tensors(cJSON_GetObjectItemCaseSensitive(root, "tensors"), source, arch,
                            err)))
        goto done;
    rc = check_required_roles(arch, source, err);
done:
    cJSON_Delete(root);
    if (rc)
        moeq_arch_free(arch);
    return rc;
}

moeq_code moeq_arch_load_file(const char *path, moeq_arch *arch, moeq_error *err)
{
    char *text;
    moeq_code rc = moeq_read_text_file(path, 1 << 24, &text, err);
    if (rc)
        return moeq_wrap(err, "architecture file: ");
    rc = moeq_arch_parse(text, path, arch, err);
    free(text);
    return rc;
}

void moeq_arch_supported_list(char *buf, size_t bytes)
{
    buf[0] = '\0';
    for (const moeq_embedded_arch *e = moeq_embedded_archs; e->file; e++) {
        size_t len = strlen(e->file) - strlen(".json");
        size_t used = strlen(buf);
        snprintf(buf + used, bytes - used, "%s%.*s", used ? ", " : "", (int)len, e->file);
    }
}

moeq_code moeq_arch_for_model_type(const char *model_type, moeq_arch *arch, moeq_error *err)
{
    for (const moeq_embedded_arch *e = moeq_embedded_archs; e->file; e++) {
        char source[256];
        snprintf(source, sizeof source, "built-in archs/%s", e->file);
        moeq_arch candidate;
        moeq_code rc = moeq_arch_parse(e->json, source, &candidate, err);
        if (rc)
            return rc;
        for (int i = 0; i < candidate.n_model_types; i++) {
            if (!strcmp(candidate.model_types[i], model_type)) {
                *arch = candidate;
                return MOEQ_OK;
            }
        }
        moeq_arch_free(&candidate);
    }
    char list[1024];
    moeq_arch_supported_list(list, sizeof list);
    return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                     "model_type \"%s\" is not supported; supported model types: %s. To add a "
                     "model, write an architecture file (see docs/adding-a-model.md) and pass "
                     "it with --arch-file",
                     model_type, list);
}

void moeq_arch_free(moeq_arch *arch)
{
    free(arch->name);
    free(arch->doc);
    free(arch->source);
    for (int i = 0; i < arch->n_model_types; i++)
        free(arch->model_types[i]);
    free(arch->model_types);
    cJSON_Delete(arch->params);
    for (int r = 0; r < MOEQ_T_COUNT; r++)
        free(arch->tensors[r]);
    for (int i = 0; i < arch->n_keep_modules; i++)
        free(arch->keep_modules[i]);
    free(arch->keep_modules);
    free(arch->mtp_prefix_from);
    free(arch->mtp_prefix_to);
    memset(arch, 0, sizeof *arch);
}

/* tpl with every "{N}" replaced by n, in a new string; NULL without memory. */
static char *bind_next(const char *tpl, int n)
{
    char num[24];
    snprintf(num, sizeof num, "%d", n);
    size_t len = 1;
    for (const char *p = tpl; *p; p++)
        len += strncmp(p, "{N}", 3) ? 1 : strlen(num);
    char *out = malloc(len), *o = out;
    if (!out)
        return NULL;
    for (const char *p = tpl; *p;) {
        if (!strncmp(p, "{N}", 3)) {
            o += sprintf(o, "%s", num);
            p += 3;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

moeq_code moeq_arch_bind_next_layer(moeq_arch *arch, int next_layer, moeq_error *err)
{
    for (int r = 0; r <= MOEQ_T_COUNT; r++) {
        char **t = r < MOEQ_T_COUNT ? &arch->tensors[r] : &arch->mtp_prefix_to;
        if (!*t || !strstr(*t, "{N}"))
            continue;
        char *bound = bind_next(*t, next_layer);
        if (!bound)
            return moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
        free(*t);
        *t = bound;
    }
    return MOEQ_OK;
}

int moeq_arch_tensor_name(const moeq_arch *arch, moeq_tensor_role role, int layer, int expert,
                          char *buf, size_t bytes)
{
    const char *tpl = role < MOEQ_T_COUNT ? arch->tensors[role] : NULL;
    if (!tpl)
        return -1;
    size_t out = 0;
    for (const char *p = tpl; *p;) {
        char num[24];
        const char *piece = NULL;
        size_t len = 1;
        if (!strncmp(p, "{L}", 3)) {
            snprintf(num, sizeof num, "%d", layer);
            piece = num;
            p += 3;
        } else if (!strncmp(p, "{E}", 3)) {
            snprintf(num, sizeof num, "%d", expert);
            piece = num;
            p += 3;
        } else {
            piece = p++;
        }
        if (piece == num)
            len = strlen(num);
        if (out + len >= bytes)
            return -1;
        memcpy(buf + out, piece, len);
        out += len;
    }
    buf[out] = '\0';
    return 0;
}
