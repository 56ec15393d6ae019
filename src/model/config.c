/* config.c: config.json -> moeq_config. Every value is looked up through
 * the architecture file's params (a list of candidate config keys and a
 * default, or a fixed value), falling back to the common Hugging Face keys
 * below. Values that are absent or null take the default. */
#include "model/config.h"

#include "quant/pack_format.h"

#include "common/fileio.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const cJSON *root; /* the language model's config: text_config when nested */
    const cJSON *top;  /* the whole config.json */
    const moeq_arch *arch;
    const char *path;
    moeq_error *err;
} reader;

/* The config keys tried for each parameter when the architecture file does
 * not say otherwise (transformers 4.x and 5.x names). */
static const struct {
    const char *param;
    const char *keys[4];
} DEFAULT_KEYS[] = {
    {"hidden_size", {"hidden_size"}},
    {"num_hidden_layers", {"num_hidden_layers"}},
    {"num_attention_heads", {"num_attention_heads"}},
    {"num_key_value_heads", {"num_key_value_heads"}},
    {"head_dim", {"head_dim"}},
    {"intermediate_size", {"intermediate_size"}},
    {"vocab_size", {"vocab_size"}},
    {"rms_norm_eps", {"rms_norm_eps"}},
    {"max_position_embeddings", {"max_position_embeddings"}},
    {"tie_word_embeddings", {"tie_word_embeddings"}},
    {"qkv_bias", {"attention_bias"}},
    {"o_bias", {NULL}},
    {"mlp_bias", {"mlp_bias"}},
    {"qk_norm", {NULL}},
    {"num_experts", {"num_experts", "num_local_experts", "n_routed_experts"}},
    {"num_experts_per_tok", {"num_experts_per_tok", "moe_topk"}},
    {"moe_intermediate_size", {"moe_intermediate_size"}},
    {"shared_expert_intermediate_size", {"shared_expert_intermediate_size"}},
    {"norm_topk_prob", {"norm_topk_prob"}},
    {"decoder_sparse_step", {"decoder_sparse_step"}},
    {"mlp_only_layers", {"mlp_only_layers"}},
    {"hidden_act", {"hidden_act", "hidden_activation"}},
    {"sliding_window", {"sliding_window"}},
    {"attn_output_gate", {NULL}},
    {"layer_types", {"layer_types"}},
    {"full_attention_interval", {"full_attention_interval"}},
    {"linear_num_key_heads", {"linear_num_key_heads"}},
    {"linear_num_value_heads", {"linear_num_value_heads"}},
    {"linear_key_head_dim", {"linear_key_head_dim"}},
    {"linear_value_head_dim", {"linear_value_head_dim"}},
    {"linear_conv_kernel_dim", {"linear_conv_kernel_dim"}},
    {"mtp_num_hidden_layers", {"mtp_num_hidden_layers"}},
    {"mtp_use_dedicated_embeddings", {"mtp_use_dedicated_embeddings"}},
    {"n_group", {"n_group"}},
    {"topk_group", {"topk_group"}},
    {"routed_scaling_factor", {"routed_scaling_factor"}},
    {"first_k_dense_replace", {"first_k_dense_replace"}},
    {"n_shared_experts", {"n_shared_experts"}},
    {"qk_norm_full", {NULL}},
    {"q_lora_rank", {"q_lora_rank"}},
    {"kv_lora_rank", {"kv_lora_rank"}},
    {"qk_nope_head_dim", {"qk_nope_head_dim"}},
    {"qk_rope_head_dim", {"qk_rope_head_dim"}},
    {"v_head_dim", {"v_head_dim"}},
    {"partial_rotary_factor", {"partial_rotary_factor"}},
};

/* Finds the JSON value for param: the arch's fixed value, the first present
 * non-null key, the arch's default; NULL when none. *key_used names it. */
static const cJSON *lookup(const reader *r, const char *param, const char **key_used)
{
    const cJSON *spec = cJSON_GetObjectItemCaseSensitive(r->arch->params, param);
    *key_used = param;
    if (spec) {
        const cJSON *value = cJSON_GetObjectItemCaseSensitive(spec, "value");
        if (value) {
            *key_used = "(fixed by the architecture file)";
            return value;
        }
        const cJSON *k;
        cJSON_ArrayForEach(k, cJSON_GetObjectItemCaseSensitive(spec, "keys"))
        {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->root, k->valuestring);
            if (v && !cJSON_IsNull(v)) {
                *key_used = k->valuestring;
                return v;
            }
        }
        const cJSON *def = cJSON_GetObjectItemCaseSensitive(spec, "default");
        if (def)
            *key_used = "(architecture default)";
        return def;
    }
    for (size_t i = 0; i < sizeof DEFAULT_KEYS / sizeof DEFAULT_KEYS[0]; i++) {
        if (strcmp(DEFAULT_KEYS[i].param, param))
            continue;
        for (int j = 0; j < 4 && DEFAULT_KEYS[i].keys[j]; j++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->root, DEFAULT_KEYS[i].keys[j]);
            if (v && !cJSON_IsNull(v)) {
                *key_used = DEFAULT_KEYS[i].keys[j];
                return v;
            }
        }
    }
    return NULL;
}

/* Reads an integer parameter; required ones fail when absent, others take
 * def. Values must lie in [lo, hi]. */
static moeq_code read_int(const reader *r, const char *param, int required, int def, int lo,
                          int hi, int *out)
{
    const char *key;
    const cJSON *v = lookup(r, param, &key);
    if (!v) {
        if (required)
            return moeq_fail(r->err, MOEQ_ERR_NOT_FOUND,
                             "config.json %s: required field \"%s\" is missing", r->path, param);
        *out = def;
        return MOEQ_OK;
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!cJSON_IsNumber(v) || d != floor(d) || d < lo || d > hi)
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: field \"%s\" must be an integer in [%d, %d]", r->path,
                         key, lo, hi);
    *out = (int)d;
    return MOEQ_OK;
}

static moeq_code read_bool(const reader *r, const char *param, int def, int *out)
{
    const char *key;
    const cJSON *v = lookup(r, param, &key);
    if (!v) {
        *out = def;
        return MOEQ_OK;
    }
    if (!cJSON_IsBool(v))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: field \"%s\" must be true or false", r->path, key);
    *out = cJSON_IsTrue(v);
    return MOEQ_OK;
}

/* Reads a finite number parameter; def when absent. */
static moeq_code read_number(const reader *r, const char *param, double def, double *out)
{
    const char *key;
    const cJSON *v = lookup(r, param, &key);
    if (!v) {
        *out = def;
        return MOEQ_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT, "config.json %s: field \"%s\" must be a number",
                         r->path, key);
    *out = v->valuedouble;
    return MOEQ_OK;
}

static moeq_code read_double(const cJSON *obj, const char *key, double def, const char *path,
                             const char *where, double *out, moeq_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return MOEQ_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "config.json %s: field \"%s%s\" must be a number",
                         path, where, key);
    *out = v->valuedouble;
    return MOEQ_OK;
}

/* RoPE: transformers 5.x writes rope_parameters {rope_type, rope_theta,
 * factor, ...}; 4.x writes rope_theta at the top and rope_scaling {type or
 * rope_type, factor, ...} (null when unscaled). */
static moeq_code read_rope(const reader *r, moeq_config *cfg)
{
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(r->root, "rope_parameters");
    const char *where = "rope_parameters.";
    if (!params || cJSON_IsNull(params)) {
        params = cJSON_GetObjectItemCaseSensitive(r->root, "rope_scaling");
        where = "rope_scaling.";
    }
    if (params && !cJSON_IsNull(params) && !cJSON_IsObject(params))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT, "config.json %s: \"%.*s\" must be an object",
                         r->path, (int)strlen(where) - 1, where);
    if (params && cJSON_IsNull(params))
        params = NULL;
    const cJSON *type = params ? cJSON_GetObjectItemCaseSensitive(params, "rope_type") : NULL;
    if (params && !type)
        type = cJSON_GetObjectItemCaseSensitive(params, "type");
    if (type && !cJSON_IsString(type))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT, "config.json %s: \"%srope_type\" must be a string",
                         r->path, where);
    const char *type_name = type ? type->valuestring : "default";
    moeq_code rc = moeq_rope_type_from_name(type_name, &cfg->rope.type, r->err);
    if (rc)
        return moeq_wrap(r->err, "config.json %s: %srope_type: ", r->path, where);

    double theta = 10000.0;
    /* rope_theta lives inside rope_parameters (5.x) or at the top (4.x). */
    const cJSON *theta_obj = params && cJSON_GetObjectItemCaseSensitive(params, "rope_theta")
                                 ? params
                                 : r->root;
    if ((rc = read_double(theta_obj, "rope_theta", 10000.0, r->path,
                          theta_obj == params ? where : "", &theta, r->err)))
        return rc;
    /* The rotated fraction of each head: rope_parameters (5.x), else the
     * parameter partial_rotary_factor (top level, or the architecture's
     * default: transformers' Glm4MoeConfig assumes 0.5), else MiniMax-M2's
     * rotary_dim (MiniMaxM2Config.convert_rope_params_to_dict turns it into
     * rotary_dim / head_dim), else 1. */
    double partial = 1.0;
    const char *key = "partial_rotary_factor";
    const cJSON *pv = params ? cJSON_GetObjectItemCaseSensitive(params, key) : NULL;
    if (!pv)
        pv = lookup(r, key, &key);
    const cJSON *rotary_dim = cJSON_GetObjectItemCaseSensitive(r->root, "rotary_dim");
    if (!pv && rotary_dim && !cJSON_IsNull(rotary_dim)) {
        pv = rotary_dim;
        key = "rotary_dim";
    }
    if (pv && !cJSON_IsNull(pv)) {
        if (!cJSON_IsNumber(pv))
            return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                             "config.json %s: field \"%s\" must be a number", r->path, key);
        partial = pv == rotary_dim ? pv->valuedouble / cfg->head_dim : pv->valuedouble;
    }
    if (!(partial > 0.0 && partial <= 1.0))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: partial_rotary_factor must be in (0, 1]", r->path);
    moeq_rope_params *rp = &cfg->rope;
    rp->theta = theta;
    rp->rotary_dim = (int)(cfg->head_dim * partial);
    rp->max_position_embeddings = cfg->max_position_embeddings;
    cJSON *empty = cJSON_CreateObject();
    if (!empty)
        return moeq_fail(r->err, MOEQ_ERR_OOM, "config.json %s: out of memory", r->path);
    const cJSON *src = params ? params : empty;
    double orig = cfg->max_position_embeddings;
    if (!(rc = read_double(src, "factor", 0.0, r->path, where, &rp->factor, r->err)) &&
        !(rc = read_double(src, "low_freq_factor", 1.0, r->path, where, &rp->low_freq_factor,
                           r->err)) &&
        !(rc = read_double(src, "high_freq_factor", 4.0, r->path, where, &rp->high_freq_factor,
                           r->err)) &&
        !(rc = read_double(src, "beta_fast", 0.0, r->path, where, &rp->beta_fast, r->err)) &&
        !(rc = read_double(src, "beta_slow", 0.0, r->path, where, &rp->beta_slow, r->err)) &&
        !(rc = read_double(src, "mscale", 0.0, r->path, where, &rp->mscale, r->err)) &&
        !(rc = read_double(src, "mscale_all_dim", 0.0, r->path, where, &rp->mscale_all_dim,
                           r->err)) &&
        !(rc = read_double(src, "attention_factor", 0.0, r->path, where, &rp->attention_factor,
                           r->err)) &&
        !(rc = read_double(src, "original_max_position_embeddings", orig, r->path, where, &orig,
                           r->err))) {
        rp->original_max_position_embeddings = (int)orig;
        const cJSON *trunc = cJSON_GetObjectItemCaseSensitive(src, "truncate");
        rp->truncate = trunc ? cJSON_IsTrue(trunc) : 1;
    }
    cJSON_Delete(empty);
    return rc;
}

/* quantization_config of a block-scaled FP8 source (transformers'
 * FineGrainedFP8Config, DeepSeek-V3's config.json): weight_block_size
 * [rows, cols] of the scale blocks; fmt, when given, must be e4m3. A
 * per-tensor FP8 checkpoint (no weight_block_size) is refused. */
static moeq_code read_fp8_quantization(const reader *r, const cJSON *q, moeq_config *cfg)
{
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(q, "fmt");
    if (fmt && (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "e4m3")))
        return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                         "config.json %s: quantization_config.fmt %s cannot be read (moeq reads "
                         "e4m3 FP8 weights)",
                         r->path, cJSON_IsString(fmt) ? fmt->valuestring : "(not a string)");
    const cJSON *block = cJSON_GetObjectItemCaseSensitive(q, "weight_block_size");
    if (!block || cJSON_IsNull(block))
        return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                         "config.json %s: FP8 quantization_config without weight_block_size "
                         "(per-tensor scales) is not supported",
                         r->path);
    const cJSON *bm = cJSON_GetArrayItem(block, 0), *bn = cJSON_GetArrayItem(block, 1);
    if (!cJSON_IsArray(block) || cJSON_GetArraySize(block) != 2 || !cJSON_IsNumber(bm) ||
        !cJSON_IsNumber(bn) || bm->valuedouble != floor(bm->valuedouble) ||
        bn->valuedouble != floor(bn->valuedouble) || bm->valuedouble < 1 ||
        bn->valuedouble < 1 || bm->valuedouble > 65536 || bn->valuedouble > 65536)
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: quantization_config.weight_block_size must be two "
                         "positive integers [rows, cols]",
                         r->path);
    cfg->fp8_block_rows = (int)bm->valuedouble;
    cfg->fp8_block_cols = (int)bn->valuedouble;
    return MOEQ_OK;
}

/* quantization_config of a GPTQ v1 checkpoint: bits and group size are
 * what reading its weights needs. Other methods and formats are refused
 * here, naming them, rather than misread later. */
/* compressed-tensors (quant_method "compressed-tensors"): the weights of
 * the first config group, in the pack-quantized format only. */
static moeq_code read_ct_quantization(const reader *r, const cJSON *q, moeq_config *cfg)
{
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(q, "format");
    if (!cJSON_IsString(format) || strcmp(format->valuestring, "pack-quantized"))
        return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                         "config.json %s: compressed-tensors format %s cannot be read (moeq "
                         "reads pack-quantized)",
                         r->path, cJSON_IsString(format) ? format->valuestring : "(missing)");
    const cJSON *groups = cJSON_GetObjectItemCaseSensitive(q, "config_groups");
    const cJSON *group = cJSON_IsObject(groups) ? groups->child : NULL;
    const cJSON *w = group ? cJSON_GetObjectItemCaseSensitive(group, "weights") : NULL;
    const cJSON *bits = cJSON_GetObjectItemCaseSensitive(w, "num_bits");
    const cJSON *gs = cJSON_GetObjectItemCaseSensitive(w, "group_size");
    const cJSON *sym = cJSON_GetObjectItemCaseSensitive(w, "symmetric");
    const cJSON *strategy = cJSON_GetObjectItemCaseSensitive(w, "strategy");
    if (!cJSON_IsNumber(bits) || !cJSON_IsBool(sym) || !cJSON_IsString(strategy) ||
        (!cJSON_IsNumber(gs) && !strcmp(strategy->valuestring, "group")))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: quantization_config.config_groups needs a group with "
                         "weights.num_bits, symmetric, strategy (and group_size for \"group\")",
                         r->path);
    if (strcmp(strategy->valuestring, "group") && strcmp(strategy->valuestring, "channel"))
        return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                         "config.json %s: compressed-tensors weight strategy %s cannot be read "
                         "(group or channel)",
                         r->path, strategy->valuestring);
    cfg->quant_format = MOEQ_FORMAT_COMPRESSED_TENSORS;
    cfg->quant_bits = bits->valueint;
    cfg->quant_group_size = strcmp(strategy->valuestring, "group") ? -1 : gs->valueint;
    cfg->quant_sym = cJSON_IsTrue(sym);
    return MOEQ_OK;
}

static moeq_code read_quantization(const reader *r, moeq_config *cfg)
{
    /* A multimodal checkpoint carries it at the top, beside text_config. */
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(r->top, "quantization_config");
    if (!q || cJSON_IsNull(q))
        q = cJSON_GetObjectItemCaseSensitive(r->root, "quantization_config");
    if (!q || cJSON_IsNull(q))
        return MOEQ_OK;
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(q, "quant_method");
    if (cJSON_IsString(method) && !strcmp(method->valuestring, "fp8"))
        return read_fp8_quantization(r, q, cfg);
    if (cJSON_IsString(method) && !strcmp(method->valuestring, "mxfp4")) {
        /* gpt-oss: the experts as MXFP4 blocks (model/mxfp4.h); the other
         * tensors (modules_to_not_convert) are plain. */
        if (r->arch->experts == MOEQ_EXPERTS_SEPARATE)
            return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                             "config.json %s: MXFP4 sources are read for fused experts "
                             "(gpt-oss) only, not for architecture %s",
                             r->path, r->arch->name);
        cfg->mxfp4 = 1;
        return MOEQ_OK;
    }
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(q, "checkpoint_format");
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(q, "version");
    const cJSON *bits = cJSON_GetObjectItemCaseSensitive(q, "bits");
    const cJSON *group = cJSON_GetObjectItemCaseSensitive(q, "group_size");
    const char *m = cJSON_IsString(method) ? method->valuestring : "(missing)";
    if (!strcmp(m, "compressed-tensors"))
        return read_ct_quantization(r, q, cfg);
    if (strcmp(m, "gptq") && strcmp(m, "awq"))
        return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                         "config.json %s: quantization_config.quant_method %s cannot be read "
                         "(moeq reads gptq, awq and compressed-tensors checkpoints and fp8 and mxfp4 sources)",
                         r->path, m);
    int awq = !strcmp(m, "awq");
    if (!awq && format && (!cJSON_IsString(format) || strcmp(format->valuestring, "gptq")))
        return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                         "config.json %s: quantization_config.checkpoint_format %s cannot be "
                         "read (moeq reads the gptq v1 format)",
                         r->path, cJSON_IsString(format) ? format->valuestring : "(not a string)");
    if (awq && version && (!cJSON_IsString(version) || strcmp(version->valuestring, "gemm")))
        return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                         "config.json %s: AWQ version %s cannot be read (moeq reads gemm)",
                         r->path, cJSON_IsString(version) ? version->valuestring : "(not a string)");
    if (!cJSON_IsNumber(bits) || !cJSON_IsNumber(group))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: quantization_config needs numeric bits and group_size",
                         r->path);
    cfg->quant_format = awq ? MOEQ_FORMAT_AWQ : MOEQ_FORMAT_GPTQ;
    cfg->quant_bits = bits->valueint;
    cfg->quant_group_size = group->valueint;
    return MOEQ_OK;
}

/* layer_types (transformers 5.x; gpt-oss, Gemma-style alternation): which
 * layers use sliding_window. */
static moeq_code read_layer_types(const reader *r, moeq_config *cfg)
{
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(r->root, "layer_types");
    if (!types || cJSON_IsNull(types))
        return MOEQ_OK;
    if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != cfg->num_layers)
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: \"layer_types\" must be an array of %d strings (one "
                         "per layer)",
                         r->path, cfg->num_layers);
    if (!(cfg->layer_sliding = calloc((size_t)cfg->num_layers, 1)) ||
        !(cfg->layer_chunked = calloc((size_t)cfg->num_layers, 1)))
        return moeq_fail(r->err, MOEQ_ERR_OOM, "config.json %s: out of memory", r->path);
    int l = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, types)
    {
        const char *s = cJSON_IsString(t) ? t->valuestring : "(not a string)";
        /* linear_attention layers are read by read_linear_attention. */
        int linear = !strcmp(s, "linear_attention") &&
                     r->arch->linear_attention != MOEQ_LINEAR_ATTENTION_NONE;
        if (!strcmp(s, "sliding_attention"))
            cfg->layer_sliding[l] = 1;
        else if (!strcmp(s, "chunked_attention") && cfg->attention_chunk_size > 0)
            cfg->layer_chunked[l] = 1;
        else if (strcmp(s, "full_attention") && !linear)
            return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                             "config.json %s: layer_types[%d] = %s is not supported "
                             "(sliding_attention, full_attention, chunked_attention with "
                             "attention_chunk_size)",
                             r->path, l, s);
        l++;
    }
    return MOEQ_OK;
}

/* A config.json array of layer indices (moe_layers) or of per-layer 0/1
 * flags (no_rope_layers) as flags[num_layers]. */
static moeq_code read_layer_list(const reader *r, const char *key, int indices,
                                 unsigned char *flags, const moeq_config *cfg)
{
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(r->root, key);
    if (!cJSON_IsArray(list) || (!indices && cJSON_GetArraySize(list) != cfg->num_layers))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: \"%s\" must be an array of %s", r->path, key,
                         indices ? "layer indices" : "one 0/1 flag per layer");
    int l = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, list)
    {
        double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (v != floor(v) || v < 0 || (indices ? v >= cfg->num_layers : v > 1))
            return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                             "config.json %s: \"%s\"[%d] must be %s", r->path, key, l,
                             indices ? "a layer index" : "0 or 1");
        if (indices)
            flags[(int)v] = 1;
        else
            flags[l] = (unsigned char)v;
        l++;
    }
    return MOEQ_OK;
}

/* Llama-4's attention settings (config.h). */
static moeq_code read_llama4_attention(const reader *r, moeq_config *cfg)
{
    double floor_scale = 0, attn_scale = 0;
    moeq_code rc;
    if ((rc = read_bool(r, "rope_interleaved", 0, &cfg->rope_interleaved)) ||
        (rc = read_bool(r, "qk_l2_norm", 0, &cfg->qk_l2_norm)) ||
        (rc = read_bool(r, "attn_temperature_tuning", 0, &cfg->attn_temperature_tuning)) ||
        (rc = read_number(r, "floor_scale", 8192, &floor_scale)) ||
        (rc = read_number(r, "attn_scale", 0.1, &attn_scale)) ||
        (rc = read_int(r, "attention_chunk_size", 0, 0, 0, 1 << 30, &cfg->attention_chunk_size)))
        return rc;
    if (cfg->attn_temperature_tuning && !(floor_scale > 0))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT, "config.json %s: floor_scale must be positive",
                         r->path);
    cfg->floor_scale = (float)floor_scale;
    cfg->attn_scale = (float)attn_scale;
    if (!cJSON_GetObjectItemCaseSensitive(r->root, "no_rope_layers"))
        return MOEQ_OK;
    if (!(cfg->layer_rope = calloc((size_t)cfg->num_layers, 1)))
        return moeq_fail(r->err, MOEQ_ERR_OOM, "config.json %s: out of memory", r->path);
    return read_layer_list(r, "no_rope_layers", 0, cfg->layer_rope, cfg);
}

static moeq_code read_moe_layers(const reader *r, moeq_config *cfg)
{
    cfg->layer_is_moe = calloc((size_t)cfg->num_layers, 1);
    if (!cfg->layer_is_moe)
        return moeq_fail(r->err, MOEQ_ERR_OOM, "config.json %s: out of memory", r->path);
    if (cfg->num_experts == 0)
        return MOEQ_OK;
    if (r->arch->moe_layers == MOEQ_MOE_LAYERS_ALL) {
        memset(cfg->layer_is_moe, 1, (size_t)cfg->num_layers);
        return MOEQ_OK;
    }
    if (r->arch->moe_layers == MOEQ_MOE_LAYERS_LIST)
        return read_layer_list(r, "moe_layers", 1, cfg->layer_is_moe, cfg);
    if (r->arch->moe_layers == MOEQ_MOE_LAYERS_FIRST_K_DENSE) {
        /* DeepseekV3DecoderLayer / Glm4MoeDecoderLayer: MoE from layer
         * first_k_dense_replace on. transformers ignores moe_layer_freq;
         * a value other than 1 would mean another layout, so it is refused. */
        const cJSON *freq = cJSON_GetObjectItemCaseSensitive(r->root, "moe_layer_freq");
        if (freq && !cJSON_IsNull(freq) && !(cJSON_IsNumber(freq) && freq->valuedouble == 1))
            return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                             "config.json %s: moe_layer_freq other than 1 is not supported",
                             r->path);
        for (int l = 0; l < cfg->num_layers; l++)
            cfg->layer_is_moe[l] = l >= cfg->first_k_dense_replace;
        return MOEQ_OK;
    }
    /* Qwen-MoE rule: layer L is sparse unless listed in mlp_only_layers,
     * and only every decoder_sparse_step-th layer ((L + 1) % step == 0). */
    int step;
    moeq_code rc = read_int(r, "decoder_sparse_step", 0, 1, 1, 1 << 20, &step);
    if (rc)
        return rc;
    for (int l = 0; l < cfg->num_layers; l++)
        cfg->layer_is_moe[l] = (l + 1) % step == 0;
    const char *key;
    const cJSON *only = lookup(r, "mlp_only_layers", &key);
    if (only && !cJSON_IsArray(only))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: \"%s\" must be an array of layer indices", r->path, key);
    const cJSON *e;
    cJSON_ArrayForEach(e, only)
    {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) ||
            e->valuedouble < 0 || e->valuedouble >= cfg->num_layers)
            return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                             "config.json %s: \"%s\" holds %g, not a layer index in [0, %d)",
                             r->path, key, cJSON_IsNumber(e) ? e->valuedouble : NAN,
                             cfg->num_layers);
        cfg->layer_is_moe[(int)e->valuedouble] = 0;
    }
    return MOEQ_OK;
}

/* Hybrid models: which layers are Gated DeltaNet ("linear_attention" in
 * layer_types, else every layer but each full_attention_interval-th, as
 * Qwen3NextConfig derives it) and the DeltaNet head shapes. */
static moeq_code read_linear_attention(const reader *r, moeq_config *cfg)
{
    cfg->layer_is_linear = calloc((size_t)cfg->num_layers, 1);
    if (!cfg->layer_is_linear)
        return moeq_fail(r->err, MOEQ_ERR_OOM, "config.json %s: out of memory", r->path);
    if (r->arch->linear_attention == MOEQ_LINEAR_ATTENTION_NONE)
        return MOEQ_OK;
    const int BIG = 1 << 20;
    moeq_code rc;
    if ((rc = read_int(r, "linear_num_key_heads", 1, 0, 1, BIG, &cfg->la_num_k_heads)) ||
        (rc = read_int(r, "linear_num_value_heads", 1, 0, 1, BIG, &cfg->la_num_v_heads)) ||
        (rc = read_int(r, "linear_key_head_dim", 1, 0, 1, BIG, &cfg->la_k_head_dim)) ||
        (rc = read_int(r, "linear_value_head_dim", 1, 0, 1, BIG, &cfg->la_v_head_dim)) ||
        (rc = read_int(r, "linear_conv_kernel_dim", 0, 4, 1, 64, &cfg->la_conv_kernel)))
        return rc;
    if (cfg->la_num_v_heads % cfg->la_num_k_heads)
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: linear_num_value_heads (%d) is not a multiple of "
                         "linear_num_key_heads (%d)",
                         r->path, cfg->la_num_v_heads, cfg->la_num_k_heads);
    const char *key;
    const cJSON *types = lookup(r, "layer_types", &key);
    if (!types) {
        int interval;
        if ((rc = read_int(r, "full_attention_interval", 0, 4, 1, 1 << 20, &interval)))
            return rc;
        for (int l = 0; l < cfg->num_layers; l++)
            cfg->layer_is_linear[l] = (l + 1) % interval != 0;
        return MOEQ_OK;
    }
    if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != cfg->num_layers)
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: \"%s\" must be an array of %d layer types", r->path,
                         key, cfg->num_layers);
    int l = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, types)
    {
        int linear = cJSON_IsString(t) && !strcmp(t->valuestring, "linear_attention");
        if (!linear && !(cJSON_IsString(t) && !strcmp(t->valuestring, "full_attention")))
            return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                             "config.json %s: \"%s\"[%d] is %s; moeq knows \"linear_attention\" "
                             "and \"full_attention\"",
                             r->path, key, l, cJSON_IsString(t) ? t->valuestring : "not a string");
        cfg->layer_is_linear[l++] = (unsigned char)linear;
    }
    return MOEQ_OK;
}

/* The DeepSeek-V3 family's routing and layout parameters: sigmoid-router
 * groups and scaling, dense first layers, shared experts counted in units of
 * moe_intermediate_size (DeepseekV3MoE: moe_intermediate_size *
 * n_shared_experts). Every architecture reads them; their defaults change
 * nothing. */
static moeq_code read_routing(const reader *r, moeq_config *cfg)
{
    const int E = cfg->num_experts;
    int n_shared;
    moeq_code rc;
    double scaling = 1.0;
    if ((rc = read_int(r, "n_group", 0, 1, 1, 1 << 16, &cfg->n_group)) ||
        (rc = read_int(r, "topk_group", 0, 1, 1, 1 << 16, &cfg->topk_group)) ||
        (rc = read_number(r, "routed_scaling_factor", 1.0, &scaling)) ||
        (rc = read_int(r, "first_k_dense_replace", 0, 0, 0, cfg->num_layers,
                       &cfg->first_k_dense_replace)) ||
        (rc = read_int(r, "n_shared_experts", 0, 0, 0, 1 << 16, &n_shared)) ||
        (rc = read_bool(r, "qk_norm_full", 0, &cfg->qk_norm_full)))
        return rc;
    if (!(scaling > 0))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: routed_scaling_factor must be positive", r->path);
    cfg->routed_scaling_factor = (float)scaling;
    if (cfg->shared_expert_intermediate_size == 0 &&
        r->arch->shared_expert != MOEQ_SHARED_EXPERT_NONE)
        cfg->shared_expert_intermediate_size = n_shared * cfg->moe_intermediate_size;
    /* DeepSeek's topk_method says whether n_group applies: "greedy" is the
     * plain top-k whatever n_group says (DeepseekV2TopkRouter). */
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(r->root, "topk_method");
    if (method && !cJSON_IsNull(method)) {
        const char *m = cJSON_IsString(method) ? method->valuestring : "";
        int greedy = !strcmp(m, "greedy");
        if (!greedy && strcmp(m, "group_limited_greedy") && strcmp(m, "noaux_tc"))
            return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                             "config.json %s: topk_method \"%s\" is not supported (known: "
                             "greedy, group_limited_greedy, noaux_tc)",
                             r->path, m);
        if (greedy)
            cfg->n_group = cfg->topk_group = 1;
    }
    if (E > 0 && cfg->n_group > 1) {
        int size = E / cfg->n_group;
        if (E % cfg->n_group || size < 2 || cfg->topk_group > cfg->n_group ||
            cfg->num_experts_per_tok > cfg->topk_group * size)
            return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                             "config.json %s: %d experts do not split into n_group = %d groups "
                             "of at least 2 with num_experts_per_tok = %d inside topk_group = "
                             "%d of them",
                             r->path, E, cfg->n_group, cfg->num_experts_per_tok,
                             cfg->topk_group);
    }
    return MOEQ_OK;
}

/* Multi-head latent attention sizes (DeepseekV3Config). RoPE turns the
 * qk_rope_head_dim part of each head only, so that is head_dim here, as
 * transformers sets it (DeepseekV3Config.__post_init__). */
static moeq_code read_mla(const reader *r, moeq_config *cfg)
{
    cfg->attention = r->arch->attention;
    moeq_code rc;
    if (cfg->attention != MOEQ_ATTENTION_MLA)
        return MOEQ_OK;
    const int BIG = 1 << 20;
    if ((rc = read_int(r, "q_lora_rank", 0, 0, 0, BIG, &cfg->q_lora_rank)) ||
        (rc = read_int(r, "kv_lora_rank", 1, 0, 1, BIG, &cfg->kv_lora_rank)) ||
        (rc = read_int(r, "qk_nope_head_dim", 1, 0, 1, BIG, &cfg->qk_nope_head_dim)) ||
        (rc = read_int(r, "qk_rope_head_dim", 1, 0, 2, BIG, &cfg->qk_rope_head_dim)) ||
        (rc = read_int(r, "v_head_dim", 1, 0, 1, BIG, &cfg->v_head_dim)))
        return rc;
    cfg->head_dim = cfg->qk_rope_head_dim;
    return MOEQ_OK;
}

static moeq_code read_all(const reader *r, moeq_config *cfg)
{
    const int BIG = 1 << 24;
    moeq_code rc;
    const char *key;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(r->root, "model_type");
    if (cJSON_IsString(mt))
        snprintf(cfg->model_type, sizeof cfg->model_type, "%s", mt->valuestring);
    if ((rc = read_int(r, "hidden_size", 1, 0, 1, BIG, &cfg->hidden_size)) ||
        (rc = read_int(r, "num_hidden_layers", 1, 0, 1, 100000, &cfg->num_layers)) ||
        (rc = read_int(r, "num_attention_heads", 1, 0, 1, 65536, &cfg->num_heads)) ||
        (rc = read_int(r, "num_key_value_heads", 0, cfg->num_heads, 1, 65536,
                       &cfg->num_kv_heads)) ||
        (rc = read_int(r, "head_dim", 0, cfg->hidden_size / cfg->num_heads, 1, 65536,
                       &cfg->head_dim)) ||
        (rc = read_int(r, "vocab_size", 1, 0, 1, 1 << 28, &cfg->vocab_size)) ||
        (rc = read_int(r, "max_position_embeddings", 0, 4096, 1, 1 << 30,
                       &cfg->max_position_embeddings)) ||
        (rc = read_int(r, "num_experts", 0, 0, 0, 1 << 16, &cfg->num_experts)) ||
        (rc = read_int(r, "intermediate_size", cfg->num_experts == 0, 0, 0, BIG,
                       &cfg->intermediate_size)) ||
        (rc = read_int(r, "num_experts_per_tok", cfg->num_experts > 0, 0, 0, 1 << 16,
                       &cfg->num_experts_per_tok)) ||
        (rc = read_int(r, "moe_intermediate_size", 0, cfg->intermediate_size, 0, BIG,
                       &cfg->moe_intermediate_size)) ||
        (rc = read_int(r, "shared_expert_intermediate_size", 0, 0, 0, BIG,
                       &cfg->shared_expert_intermediate_size)) ||
        (rc = read_int(r, "sliding_window", 0, 0, 0, 1 << 30, &cfg->sliding_window)) ||
        (rc = read_bool(r, "tie_word_embeddings", 0, &cfg->tie_word_embeddings)) ||
        (rc = read_bool(r, "qkv_bias", 0, &cfg->qkv_bias)) ||
        (rc = read_bool(r, "o_bias", 0, &cfg->o_bias)) ||
        (rc = read_bool(r, "mlp_bias", 0, &cfg->mlp_bias)) ||
        (rc = read_bool(r, "qk_norm", 0, &cfg->qk_norm)) ||
        (rc = read_bool(r, "norm_topk_prob", 0, &cfg->norm_topk_prob)) ||
        (rc = read_bool(r, "attn_output_gate", 0, &cfg->attn_output_gate)) ||
        (rc = read_bool(r, "router_bias", 0, &cfg->router_bias)))
        return rc;
    double alpha = 0, limit = 0;
    if ((rc = read_number(r, "swiglu_alpha", 1.0, &alpha)) ||
        (rc = read_number(r, "swiglu_limit", 0.0, &limit)))
        return rc;
    if (r->arch->mlp_act == MOEQ_MLP_ACT_SWIGLU_CLAMPED && !(limit > 0))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: the clamped SwiGLU of architecture %s needs a positive "
                         "swiglu_limit",
                         r->path, r->arch->name);
    cfg->swiglu_alpha = (float)alpha;
    cfg->swiglu_limit = r->arch->mlp_act == MOEQ_MLP_ACT_SWIGLU_CLAMPED ? (float)limit : 0.0f;
    /* Qwen configs carry a sliding_window that applies only when
     * use_sliding_window is true, and then only from max_window_layers on. */
    const cJSON *use_swa = cJSON_GetObjectItemCaseSensitive(r->root, "use_sliding_window");
    if (cJSON_IsFalse(use_swa))
        cfg->sliding_window = 0;
    else if (cJSON_IsTrue(use_swa))
        return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                         "config.json %s: use_sliding_window = true (per-layer sliding window "
                         "from max_window_layers) is not supported",
                         r->path);
    if (cfg->num_heads % cfg->num_kv_heads)
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: num_attention_heads (%d) is not a multiple of "
                         "num_key_value_heads (%d)",
                         r->path, cfg->num_heads, cfg->num_kv_heads);
    if (cfg->num_experts > 0 && r->arch->moe_layers == MOEQ_MOE_LAYERS_NONE)
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: %d experts, but architecture %s is dense", r->path,
                         cfg->num_experts, r->arch->name);
    if (r->arch->moe_layers != MOEQ_MOE_LAYERS_NONE && cfg->num_experts == 0)
        return moeq_fail(r->err, MOEQ_ERR_NOT_FOUND,
                         "config.json %s: architecture %s is MoE but no expert count was found "
                         "(num_experts / num_local_experts / n_routed_experts)",
                         r->path, r->arch->name);
    if (cfg->num_experts > 0 &&
        (cfg->num_experts_per_tok < 1 || cfg->num_experts_per_tok > cfg->num_experts))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: num_experts_per_tok (%d) must be in [1, %d]", r->path,
                         cfg->num_experts_per_tok, cfg->num_experts);
    if (cfg->num_experts > 0 && cfg->moe_intermediate_size < 1)
        return moeq_fail(r->err, MOEQ_ERR_NOT_FOUND,
                         "config.json %s: moe_intermediate_size is missing", r->path);
    const cJSON *eps = lookup(r, "rms_norm_eps", &key);
    if (eps && (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0)))
        return moeq_fail(r->err, MOEQ_ERR_FORMAT,
                         "config.json %s: \"%s\" must be a positive number", r->path, key);
    cfg->rms_norm_eps = eps ? (float)eps->valuedouble : 1e-6f;
    const cJSON *act = lookup(r, "hidden_act", &key);
    if (act && (!cJSON_IsString(act) ||
                (strcmp(act->valuestring, "silu") && strcmp(act->valuestring, "swish"))))
        return moeq_fail(r->err, MOEQ_ERR_UNSUPPORTED,
                         "config.json %s: \"%s\" = %s is not supported (only silu)", r->path, key,
                         cJSON_IsString(act) ? act->valuestring : "(not a string)");
    cfg->router = r->arch->router;
    if ((rc = read_routing(r, cfg)) || (rc = read_mla(r, cfg)))
        return rc;
    if ((rc = read_rope(r, cfg)) || (rc = read_quantization(r, cfg)) ||
        (rc = read_linear_attention(r, cfg)) || (rc = read_llama4_attention(r, cfg)) ||
        (rc = read_layer_types(r, cfg)))
        return rc;
    if (r->arch->mtp_prefix_from &&
        ((rc = read_int(r, "mtp_num_hidden_layers", 0, 1, 0, 1 << 10, &cfg->mtp_num_layers)) ||
         (rc = read_bool(r, "mtp_use_dedicated_embeddings", 0, &cfg->mtp_dedicated_embedding))))
        return rc;
    return read_moe_layers(r, cfg);
}

moeq_code moeq_config_parse(const char *json, const char *path, const moeq_arch *arch,
                            moeq_config *cfg, moeq_error *err)
{
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return moeq_fail(err, MOEQ_ERR_FORMAT, "config.json %s: not a JSON object", path);
    }
    /* Multimodal checkpoints nest the language model's config. */
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    reader r = {cJSON_IsObject(text) ? text : root, root, arch, path, err};
    moeq_code rc = read_all(&r, cfg);
    cJSON_Delete(root);
    if (rc)
        moeq_config_free(cfg);
    return rc;
}

moeq_code moeq_config_load(const char *path, const moeq_arch *arch, moeq_config *cfg,
                           moeq_error *err)
{
    char *text;
    moeq_code rc = moeq_read_text_file(path, 1 << 24, &text, err);
    if (rc)
        return rc;
    rc = moeq_config_parse(text, path, arch, cfg, err);
    free(text);
    return rc;
}

moeq_code moeq_config_model_type(const char *path, char *buf, size_t bytes, moeq_error *err)
{
    char *text;
    moeq_code rc = moeq_read_text_file(path, 1 << 24, &text, err);
    if (rc)
        return rc;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return moeq_fail(err, MOEQ_ERR_FORMAT, "config.json %s: not a JSON object", path);
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt)) {
        cJSON_Delete(root);
        return moeq_fail(err, MOEQ_ERR_NOT_FOUND,
                         "config.json %s: \"model_type\" is missing or not a string", path);
    }
    snprintf(buf, bytes, "%s", mt->valuestring);
    cJSON_Delete(root);
    return MOEQ_OK;
}

void moeq_config_free(moeq_config *cfg)
{
    free(cfg->layer_is_moe);
    cfg->layer_is_moe = NULL;
    free(cfg->layer_is_linear);
    cfg->layer_is_linear = NULL;
    free(cfg->layer_sliding);
    cfg->layer_sliding = NULL;
    free(cfg->layer_chunked);
    cfg->layer_chunked = NULL;
    free(cfg->layer_rope);
    cfg->layer_rope = NULL;
}

int moeq_config_layer_window(const moeq_config *cfg, int layer)
{
    if (cfg->layer_sliding && !cfg->layer_sliding[layer])
        return 0;
    return cfg->sliding_window;
}

int moeq_config_layer_rope(const moeq_config *cfg, int layer)
{
    return !cfg->layer_rope || cfg->layer_rope[layer];
}
