/* cmd_inspect.c: `moeq inspect MODEL_DIR`: what moeq sees in a checkpoint:
 * architecture, layers, experts, parameter counts and bytes per dtype, and
 * which tensors a quantization run would quantize. Every tensor the
 * architecture expects is looked up, so a missing one is reported here. */
#include "cli/args.h"
#include "cli/commands.h"
#include "model/fused_experts.h"
#include "model/model.h"
#include "model/mtp.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t params[ST_DTYPE_COUNT];
    int64_t bytes[ST_DTYPE_COUNT];
    int64_t quantized_params;
    int64_t quantized_tensors;
} tally;

static int64_t numel(const st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* Looks up every tensor the architecture expects for layer l; counts the
 * quantizable linears. */
static moeq_code check_layer(const moeq_model *m, int l, tally *t, moeq_error *err)
{
    static const moeq_tensor_role attention[] = {MOEQ_T_ATTN_NORM, MOEQ_T_Q_PROJ, MOEQ_T_K_PROJ,
                                                 MOEQ_T_V_PROJ, MOEQ_T_O_PROJ, MOEQ_T_MLP_NORM};
    static const moeq_tensor_role dense[] = {MOEQ_T_GATE_PROJ, MOEQ_T_UP_PROJ, MOEQ_T_DOWN_PROJ};
    static const moeq_tensor_role expert[] = {MOEQ_T_EXPERT_GATE_PROJ, MOEQ_T_EXPERT_UP_PROJ,
                                              MOEQ_T_EXPERT_DOWN_PROJ};
    static const moeq_tensor_role shared[] = {MOEQ_T_SHARED_GATE_PROJ, MOEQ_T_SHARED_UP_PROJ,
                                              MOEQ_T_SHARED_DOWN_PROJ};
    /* Gated DeltaNet layers: the quantized in_proj and out_proj first (by
     * default in_proj_b/a or in_proj_ba stay as they are), then the rest. */
    static const moeq_tensor_role linear_fused[] = {
        MOEQ_T_LA_IN_QKVZ, MOEQ_T_LA_OUT_PROJ, MOEQ_T_LA_IN_BA,    MOEQ_T_LA_CONV,
        MOEQ_T_LA_DT_BIAS, MOEQ_T_LA_A_LOG,    MOEQ_T_LA_NORM,     MOEQ_T_ATTN_NORM,
        MOEQ_T_MLP_NORM};
    static const moeq_tensor_role linear_separate[] = {
        MOEQ_T_LA_IN_QKV,  MOEQ_T_LA_IN_Z,  MOEQ_T_LA_OUT_PROJ, MOEQ_T_LA_IN_B,
        MOEQ_T_LA_IN_A,    MOEQ_T_LA_CONV,  MOEQ_T_LA_DT_BIAS,  MOEQ_T_LA_A_LOG,
        MOEQ_T_LA_NORM,    MOEQ_T_ATTN_NORM, MOEQ_T_MLP_NORM};
    /* MLA: its quantized linears first (q_proj alone without q_lora_rank,
     * else the q_a/q_b pair), then its norms. */
    static const moeq_tensor_role mla_lora[] = {
        MOEQ_T_Q_A_PROJ,  MOEQ_T_Q_B_PROJ,  MOEQ_T_KV_A_PROJ, MOEQ_T_KV_B_PROJ, MOEQ_T_O_PROJ,
        MOEQ_T_Q_A_NORM,  MOEQ_T_KV_A_NORM, MOEQ_T_ATTN_NORM, MOEQ_T_MLP_NORM};
    static const moeq_tensor_role mla_q_proj[] = {MOEQ_T_Q_PROJ,    MOEQ_T_KV_A_PROJ,
                                                  MOEQ_T_KV_B_PROJ, MOEQ_T_O_PROJ,
                                                  MOEQ_T_KV_A_NORM, MOEQ_T_ATTN_NORM,
                                                  MOEQ_T_MLP_NORM};
    const moeq_config *c = &m->cfg;
    const st_tensor *x;
    const moeq_tensor_role *mixer = attention;
    size_t n_mixer = sizeof attention / sizeof attention[0], n_quantized = 4;
    if (c->layer_is_linear[l] && m->arch.tensors[MOEQ_T_LA_IN_QKVZ]) {
        mixer = linear_fused;
        n_mixer = sizeof linear_fused / sizeof linear_fused[0];
        n_quantized = 2;
    } else if (c->layer_is_linear[l]) {
        mixer = linear_separate;
        n_mixer = sizeof linear_separate / sizeof linear_separate[0];
        n_quantized = 3;
    } else if (c->attention == MOEQ_ATTENTION_MLA && c->q_lora_rank) {
        mixer = mla_lora;
        n_mixer = sizeof mla_lora / sizeof mla_lora[0];
        n_quantized = 5;
    } else if (c->attention == MOEQ_ATTENTION_MLA) {
        mixer = mla_q_proj;
        n_mixer = sizeof mla_q_proj / sizeof mla_q_proj[0];
        n_quantized = 4;
    }
    for (size_t i = 0; i < n_mixer; i++) {
        if (!(x = moeq_model_find(m, mixer[i], l, -1, err)))
            return err->code;
        int quantized = mixer == attention ? mixer[i] != MOEQ_T_ATTN_NORM &&
                                                 mixer[i] != MOEQ_T_MLP_NORM
                                           : i < n_quantized;
        if (quantized) {
            t->quantized_params += numel(x);
            t->quantized_tensors++;
        }
    }
    if (!c->layer_is_moe[l]) {
        for (int i = 0; i < 3; i++) {
            if (!(x = moeq_model_find(m, dense[i], l, -1, err)))
                return err->code;
            t->quantized_params += numel(x);
            t->quantized_tensors++;
        }
        return MOEQ_OK;
    }
    if (!moeq_model_find(m, MOEQ_T_ROUTER, l, -1, err) ||
        (c->router == MOEQ_ROUTER_SIGMOID_TOPK &&
         !moeq_model_find(m, MOEQ_T_ROUTER_CORRECTION, l, -1, err)))
        return err->code;
    /* All experts in two fused tensors: gpt-oss's and Llama-4's (fused_*
     * experts), or Qwen3.5-MoE's (experts_gate_up / experts_down). */
    char fused_name[512];
    if (moeq_experts_fused(m)) {
        moeq_code rc = moeq_fused_experts_check(m, l, err);
        if (rc)
            return rc;
        t->quantized_params += 3 * (int64_t)c->num_experts * c->hidden_size *
                               c->moe_intermediate_size;
        t->quantized_tensors += 3 * (int64_t)c->num_experts;
    } else if (!moeq_arch_tensor_name(&m->arch, MOEQ_T_EXPERTS_GATE_UP, l, -1, fused_name,
                                      sizeof fused_name) &&
               st_checkpoint_find(&m->ckpt, fused_name)) {
        moeq_tensor_role fused[2] = {MOEQ_T_EXPERTS_GATE_UP, MOEQ_T_EXPERTS_DOWN};
        for (int i = 0; i < 2; i++) {
            if (!(x = moeq_model_find(m, fused[i], l, -1, err)))
                return err->code;
            t->quantized_params += numel(x);
            t->quantized_tensors += (i ? 1 : 2) * (int64_t)c->num_experts;
        }
    } else {
        for (int e = 0; e < c->num_experts; e++)
            for (int i = 0; i < 3; i++) {
                if (!(x = moeq_model_find(m, expert[i], l, e, err)))
                    return err->code;
                t->quantized_params += numel(x);
                t->quantized_tensors++;
            }
    }
    if (m->arch.shared_expert != MOEQ_SHARED_EXPERT_NONE && c->shared_expert_intermediate_size)
        for (int i = 0; i < 3; i++) {
            if (!(x = moeq_model_find(m, shared[i], l, -1, err)))
                return err->code;
            t->quantized_params += numel(x);
            t->quantized_tensors++;
        }
    return MOEQ_OK;
}

static void print_model(const moeq_model *m, const tally *t)
{
    const moeq_config *c = &m->cfg;
    int moe_layers = 0;
    for (int l = 0; l < c->num_layers; l++)
        moe_layers += c->layer_is_moe[l];
    printf("model         %s\n", m->dir);
    printf("architecture  %s (%s)\n", m->arch.name, m->arch.source);
    printf("              %s\n", m->arch.doc);
    printf("layers        %d (%d MoE, %d dense)\n", c->num_layers, moe_layers,
           c->num_layers - moe_layers);
    printf("hidden        %d; vocabulary %d; tied embeddings %s\n", c->hidden_size,
           c->vocab_size, c->tie_word_embeddings ? "yes" : "no");
    if (c->attention == MOEQ_ATTENTION_MLA)
        printf("attention     MLA, %d heads, q_lora_rank %d, kv_lora_rank %d, qk dims %d nope "
               "+ %d rope, v %d; RoPE theta %g\n",
               c->num_heads, c->q_lora_rank, c->kv_lora_rank, c->qk_nope_head_dim,
               c->qk_rope_head_dim, c->v_head_dim, c->rope.theta);
    else
        printf("attention     %d heads, %d kv heads, head_dim %d%s%s; RoPE theta %g, rotary dim "
               "%d\n",
               c->num_heads, c->num_kv_heads, c->head_dim, c->qkv_bias ? ", q/k/v bias" : "",
               c->qk_norm ? (c->qk_norm_full ? ", q/k norm over all heads" : ", q/k norm") : "",
               c->rope.theta, c->rope.rotary_dim);
    int linear_layers = 0;
    for (int l = 0; l < c->num_layers; l++)
        linear_layers += c->layer_is_linear[l];
    if (linear_layers)
        printf("linear attn   %d of %d layers Gated DeltaNet: %d key / %d value heads of %d / %d, "
               "conv %d; full attention output-gated %s\n",
               linear_layers, c->num_layers, c->la_num_k_heads, c->la_num_v_heads,
               c->la_k_head_dim, c->la_v_head_dim, c->la_conv_kernel,
               c->attn_output_gate ? "yes" : "no");
    if (moeq_mtp_present(m))
        printf("mtp           %d multi-token-prediction layer(s) (%s*): copied unchanged, or "
               "calibrated and quantized with --quantize-mtp\n",
               c->mtp_num_layers, m->arch.mtp_prefix_to);
    if (c->num_experts)
        printf("experts       %d per MoE layer, top-%d (%s%s), intermediate %d, norm_topk_prob "
               "%s, scaling %g; shared expert %s\n",
               c->num_experts, c->num_experts_per_tok,
               c->router == MOEQ_ROUTER_SIGMOID_TOPK ? "sigmoid" : "softmax",
               c->n_group > 1 ? ", grouped" : "", c->moe_intermediate_size,
               c->norm_topk_prob ? "on" : "off", c->routed_scaling_factor,
               c->shared_expert_intermediate_size ? "yes" : "none");
    if (moe_layers < c->num_layers)
        printf("dense MLP     intermediate %d\n", c->intermediate_size);
    int64_t total = 0, total_bytes = 0;
    printf("tensors       %zu in %zu file(s)\n", m->ckpt.n_tensors, m->ckpt.n_files);
    for (int d = 0; d < ST_DTYPE_COUNT; d++) {
        if (!t->params[d])
            continue;
        printf("  %-10s  %14lld parameters %16lld bytes\n", st_dtype_name((st_dtype)d),
               (long long)t->params[d], (long long)t->bytes[d]);
        total += t->params[d];
        total_bytes += t->bytes[d];
    }
    printf("  %-10s  %14lld parameters %16lld bytes\n", "total", (long long)total,
           (long long)total_bytes);
    printf("quantized     %lld linear weights, %lld parameters (%.1f%%): attention, MLP and "
           "expert gate/up/down\n",
           (long long)t->quantized_tensors, (long long)t->quantized_params,
           total ? 100.0 * (double)t->quantized_params / (double)total : 0.0);
    printf("kept          embeddings, norms, router%s%s, lm_head, and every other tensor\n",
           m->cfg.router == MOEQ_ROUTER_SIGMOID_TOPK ? " and its correction bias" : "",
           m->arch.shared_expert == MOEQ_SHARED_EXPERT_SIGMOID_GATED ? ", shared expert gate"
                                                                      : "");
}

int moeq_cmd_inspect(int argc, char **argv)
{
    const char *arch_file = NULL;
    int help = 0;
    const arg_spec specs[] = {
        {"arch-file", ARG_STRING, &arch_file, "FILE", "architecture file to use instead of the built-in one"},
        {"help", ARG_FLAG, &help, NULL, "show this help"},
        {0},
    };
    static const char usage[] = "usage: moeq inspect MODEL_DIR [options]\n\n";
    moeq_error err = {0};
    const char *pos[1];
    int n_pos;
    int exit_status =
        args_parse_command("inspect", usage, specs, &help, argc, argv, pos, 1, &n_pos);
    if (exit_status >= 0)
        return exit_status;
    if (n_pos != 1) {
        args_print_usage(stderr, usage, specs);
        return 2;
    }
    moeq_model m;
    if (moeq_model_open(pos[0], arch_file, &m, &err))
        return moeq_cli_report("inspect", 1, err.msg);
    tally t = {0};
    for (size_t i = 0; i < m.ckpt.n_tensors; i++) {
        const st_tensor *x = m.ckpt.tensors[i];
        size_t len = strlen(x->name);
        /* MXFP4 blocks hold two parameters a byte (model/mxfp4.h). */
        int per_byte = m.cfg.mxfp4 && x->dtype == ST_U8 && len > 7 &&
                               !strcmp(x->name + len - 7, "_blocks")
                           ? 2
                           : 1;
        t.params[x->dtype] += per_byte * numel(x);
        t.bytes[x->dtype] += (int64_t)x->nbytes;
    }
    int status = 0;
    moeq_code rc = MOEQ_OK;
    if (!m.cfg.tie_word_embeddings && !moeq_model_find(&m, MOEQ_T_LM_HEAD, -1, -1, &err))
        rc = err.code;
    if (!rc && !moeq_model_find(&m, MOEQ_T_EMBED, -1, -1, &err))
        rc = err.code;
    if (!rc && !moeq_model_find(&m, MOEQ_T_FINAL_NORM, -1, -1, &err))
        rc = err.code;
    for (int l = 0; l < m.cfg.num_layers && !rc; l++)
        rc = check_layer(&m, l, &t, &err);
    if (rc)
        status = moeq_cli_report("inspect", 1, err.msg);
    else
        print_model(&m, &t);
    moeq_model_close(&m);
    return status;
}
