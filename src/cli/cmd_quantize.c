/* cmd_quantize.c: `moeq quantize`: the main job. Reads the calibration
 * text, runs the layer loop, writes the checkpoint (GPTQ, AWQ or
 * compressed-tensors), prints a progress
 * line per layer and a summary table at the end. */
#include "calib/calib_set.h"
#include "calib/documents.h"
#include "calib/token_stream.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "common/clock.h"
#include "io/gptq_writer.h"
#include "common/fileio.h"
#include "common/hash.h"
#include "model/mtp.h"
#include "pipeline/quantize.h"
#include "quant/pack_format.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#ifndef MOEQ_DEFAULT_CALIB_DIR
#define MOEQ_DEFAULT_CALIB_DIR "calib_data"
#endif

static double peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux reports KiB */
}

/* Summary of one finished layer, kept for the table at the end. */
typedef struct layer_summary {
    double seconds;
    int modules;
    double loss_sum;
    int64_t min_tokens, max_tokens; /* -1 for dense layers */
    int fallbacks;
} layer_summary;

/* Wraps the writer: progress line and summary bookkeeping per layer. */
typedef struct run_ctx {
    moeq_gptq_writer *writer;
    FILE *progress;
    int tty;
    int n_layers, num_experts; /* n_layers counts the MTP block when it is quantized */
    int model_layers;          /* its decoder layers: the rows before the MTP block */
    double start, last;
    layer_summary *layers;
} run_ctx;

static moeq_code on_layer(void *ctx, const moeq_layer_result *r, moeq_error *err)
{
    run_ctx *c = ctx;
    double t0 = moeq_now_seconds();
    moeq_code rc = moeq_gptq_writer_write_layer(c->writer, r, err);
    if (rc)
        return rc;
    double t = moeq_now_seconds();
    layer_summary *s = &c->layers[r->layer];
    s->seconds = t - c->last;
    s->modules = r->n_linears;
    s->min_tokens = s->max_tokens = -1;
    for (int i = 0; i < r->n_linears; i++) {
        s->loss_sum += r->linears[i].loss;
        s->fallbacks += r->linears[i].fallback && r->linears[i].role == MOEQ_T_EXPERT_DOWN_PROJ;
    }
    if (r->expert_tokens)
        for (int e = 0; e < c->num_experts; e++) {
            int64_t k = r->expert_tokens[e];
            s->min_tokens = s->min_tokens < 0 || k < s->min_tokens ? k : s->min_tokens;
            s->max_tokens = k > s->max_tokens ? k : s->max_tokens;
        }
    c->last = t;
    if (c->progress) {
        double elapsed = t - c->start;
        double eta = elapsed / (r->layer + 1) * (c->n_layers - r->layer - 1);
        fprintf(c->progress,
                "%slayer %d/%d  %.2f s (load %.2f, capture %.2f, hessian %.2f, prepare %.2f, "
                "solve %.2f, forward %.2f, write %.2f)  elapsed %.1f s  eta %.1f s  peak rss "
                "%.0f MiB%s",
                c->tty ? "\r\033[K" : "", r->layer + 1, c->n_layers, s->seconds,
                r->seconds_load, r->seconds_capture, r->seconds_hessian, r->seconds_prepare,
                r->seconds_solve, r->seconds_forward,
                t - t0, elapsed, eta, peak_rss_mib(), c->tty ? "" : "\n");
        fflush(c->progress);
    }
    return MOEQ_OK;
}

static void print_summary(const run_ctx *c, double total)
{
    printf("\n%-6s %9s %8s %14s %18s %9s\n", "layer", "seconds", "modules", "gptq loss",
           "expert tokens", "fallback");
    for (int l = 0; l < c->n_layers; l++) {
        const layer_summary *s = &c->layers[l];
        char tokens[40] = "-";
        if (s->min_tokens >= 0)
            snprintf(tokens, sizeof tokens, "%lld..%lld", (long long)s->min_tokens,
                     (long long)s->max_tokens);
        char row[16];
        snprintf(row, sizeof row, l < c->model_layers ? "%d" : "mtp", l);
        printf("%-6s %9.2f %8d %14.6g %18s %9d\n", row, s->seconds, s->modules, s->loss_sum,
               tokens, s->fallbacks);
    }
    printf("total  %9.2f s, peak host memory %.0f MiB\n", total, peak_rss_mib());
}

static const char quantize_usage[] =
    "usage: moeq quantize --model DIR --out DIR [options]\n"
    "\n"
    "Quantizes a Hugging Face checkpoint one decoder layer at a time and writes a GPTQ,\n"
    "AWQ or compressed-tensors checkpoint (quantization_config in config.json,\n"
    "report.json) that vLLM and transformers load. The output appears only when\n"
    "complete.\n"
    "True-sequential by default: each linear is calibrated on inputs computed with\n"
    "the already-quantized linears before it in the layer.\n"
    "\n"
    "expert calibration (--expert-calib):\n"
    "  routed    each expert on the tokens the router sends it; experts with fewer than\n"
    "            --min-expert-tokens tokens fall back to all tokens (with a warning)\n"
    "  all       router bypassed: every expert on every token; gate/up of all experts\n"
    "            share one Hessian per layer\n"
    "  weighted  every expert on every token, weighted by its router probability\n"
    "\n";

static moeq_code load_calibration(const char *calib, const char *lang, const char *tokenizer_path,
                                  const char *model_dir, int nsamples, int seqlen,
                                  uint64_t seed, moeq_calib_set *set, moeq_error *err)
{
    size_t len = strlen(calib);
    if (len > 4 && !strcmp(calib + len - 4, ".bin")) {
        /* Pre-tokenized: little-endian int32 ids, as moeq eval --tokens. */
        int32_t *ids;
        size_t n;
        moeq_code rc = moeq_read_token_file(calib, &ids, &n, err);
        if (!rc) {
            rc = moeq_calib_set_sample(ids, n, nsamples, seqlen, seed, set, err);
            free(ids);
        }
        return rc ? moeq_wrap(err, "calibration tokens %s: ", calib) : MOEQ_OK;
    }
    char default_tok[4096];
    snprintf(default_tok, sizeof default_tok, "%s/tokenizer.json", model_dir);
    moeq_tokenizer *tok = NULL;
    moeq_documents docs = {0};
    int32_t *ids = NULL;
    size_t n = 0;
    moeq_code rc = moeq_tokenizer_load(tokenizer_path ? tokenizer_path : default_tok, &tok, err);
    if (!rc)
        rc = moeq_documents_load(calib, lang, &docs, err);
    if (!rc && docs.count == 0)
        rc = moeq_fail(err, MOEQ_ERR_INVALID_ARG, "calibration data %s holds no documents%s%s",
                       calib, lang ? " in languages " : "", lang ? lang : "");
    if (!rc)
        rc = moeq_tokenize_documents(tok, &docs, &ids, &n, err);
    if (!rc)
        rc = moeq_calib_set_sample(ids, n, nsamples, seqlen, seed, set, err);
    if (rc && rc != MOEQ_ERR_OOM && !strstr(err->msg, calib))
        moeq_wrap(err, "calibration data %s: ", calib);
    free(ids);
    moeq_documents_free(&docs);
    moeq_tokenizer_free(tok);
    return rc;
}

/* What a resumed run must share with the interrupted one: the settings that
 * change the output, the backend (the CPU and CUDA results differ), the
 * model (config.json and every shard's size and header) and the
 * calibration tokens. */
static cJSON *run_fingerprint(const moeq_model *m, const moeq_calib_set *set,
                              const moeq_quantize_options *opt, int use_cuda, moeq_error *err)
{
    char path[4200], hex[32], *text = NULL;
    size_t n = 0;
    snprintf(path, sizeof path, "%s/config.json", m->dir);
    if (moeq_read_file(path, (size_t)1 << 26, &text, &n, err))
        return NULL;
    uint64_t h = moeq_fnv1a64(text, n, MOEQ_FNV1A64_INIT);
    free(text);
    for (size_t i = 0; i < m->ckpt.n_files; i++) {
        const st_file *f = &m->ckpt.files[i];
        const char *base = strrchr(f->path, '/');
        base = base ? base + 1 : f->path;
        h = moeq_fnv1a64(base, strlen(base), h);
        h = moeq_fnv1a64(&f->map_bytes, sizeof f->map_bytes, h);
        h = moeq_fnv1a64(f->map, 8 + f->header_bytes, h);
    }
    const moeq_gptq_config *g = &opt->gptq;
    cJSON *fp = cJSON_CreateObject();
    cJSON_AddStringToObject(fp, "moeq_version", MOEQ_VERSION);
    cJSON_AddStringToObject(fp, "backend", use_cuda ? "cuda" : "cpu");
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
    cJSON_AddStringToObject(fp, "model", hex);
    h = moeq_fnv1a64(set->tokens, sizeof(int32_t) * (size_t)set->nsamples * set->seqlen,
                     MOEQ_FNV1A64_INIT);
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
    cJSON_AddStringToObject(fp, "calibration tokens", hex);
    cJSON_AddStringToObject(fp, "method", moeq_method_name(opt->method));
    cJSON_AddStringToObject(fp, "format", moeq_format_name(opt->format));
    cJSON_AddNumberToObject(fp, "bits", g->bits);
    cJSON_AddNumberToObject(fp, "group size", g->group_size);
    cJSON_AddBoolToObject(fp, "sym", g->sym);
    cJSON_AddBoolToObject(fp, "desc_act", g->desc_act);
    cJSON_AddBoolToObject(fp, "static_groups", g->static_groups);
    cJSON_AddNumberToObject(fp, "mse", g->mse);
    cJSON_AddNumberToObject(fp, "damp_percent", g->damp_percent);
    cJSON_AddBoolToObject(fp, "true_sequential", opt->true_sequential);
    cJSON_AddStringToObject(fp, "expert calibration", moeq_expert_calib_name(opt->expert_calib));
    cJSON_AddNumberToObject(fp, "min_expert_tokens", opt->min_expert_tokens);
    cJSON_AddBoolToObject(fp, "quantize_linear_ba", opt->quantize_linear_ba);
    cJSON_AddBoolToObject(fp, "quantize_mtp", opt->quantize_mtp);
    return fp;
}

static moeq_code on_layer_done(void *ctx, int layer, const float *hidden, size_t count,
                               moeq_error *err)
{
    run_ctx *c = ctx;
    return moeq_gptq_writer_layer_done(c->writer, layer, hidden, count, err);
}

static int parse_choice(const char *value, const char *const *names, int count, int *out)
{
    for (int i = 0; i < count; i++)
        if (!strcmp(value, names[i])) {
            *out = i;
            return 0;
        }
    return -1;
}

/* "24GiB", "512MiB", "1.5G", "2000000000": bytes, binary units (K/M/G/T,
 * with or without "iB"). */
static int parse_size(const char *s, size_t *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v > 0))
        return -1;
    double unit = 1;
    if (*end) {
        const char *units = "KMGT";
        const char *u = strchr(units, *end);
        if (!u)
            return -1;
        for (const char *k = units; k <= u; k++)
            unit *= 1024;
        end++;
        if (!strcmp(end, "iB") || !strcmp(end, "B"))
            end += strlen(end);
        if (*end)
            return -1;
    }
    *out = (size_t)(v * unit);
    return 0;
}

int moeq_cmd_quantize(int argc, char **argv)
{
    const char *model_dir = NULL, *out_dir = NULL, *calib = NULL, *arch_file = NULL,
               *tokenizer = NULL, *method = "gptq", *expert_calib = "weighted", *calib_lang = NULL,
               *format = "gptq";
    moeq_gptq_config g = moeq_gptq_default_config();
    int nsamples = 128, seqlen = 512, seed = 0, help = 0, quiet = 0, min_expert_tokens = 16;
    int true_sequential = 1, expert_batch = 0, wait_for_layer = 0, resume = 0, state_every = 1;
    int quantize_linear_ba = 0, quantize_mtp = 0;
    const char *device = "auto", *devices = NULL, *vram_budget = NULL;
    const arg_spec specs[] = {
        {"model", ARG_STRING, &model_dir, "DIR", "source checkpoint (config.json, *.safetensors, tokenizer.json)"},
        {"out", ARG_STRING, &out_dir, "DIR", "output directory; must not exist"},
        {"method", ARG_STRING, &method, "gptq|awq|rtn", "GPTQ, AWQ or round-to-nearest (default gptq)"},
        {"format", ARG_STRING, &format, "gptq|awq|compressed-tensors", "output checkpoint format (default gptq; awq: 4 bits only; awq and compressed-tensors store no g_idx)"},
        {"bits", ARG_INT, &g.bits, "N", "2, 3, 4 or 8 (default 4)"},
        {"group-size", ARG_INT, &g.group_size, "N", "-1 (per row) or a divisor of each input dim (default 128)"},
        {"sym", ARG_BOOL, &g.sym, "true|false", "symmetric grid (default true)"},
        {"desc-act", ARG_BOOL, &g.desc_act, "true|false", "act-order: columns by decreasing Hessian diagonal (default false)"},
        {"static-groups", ARG_BOOL, &g.static_groups, "true|false", "with act-order: fit groups before the sweep (default false)"},
        {"mse", ARG_DOUBLE, &g.mse, "NORM", "GPTQ and RTN: clip each grid to the range minimising sum |error|^NORM, 0 = min/max grids (default 2.4, as GPTQ's reference quantizer with mse); AWQ clips by its own output-error search"},
        {"damp-percent", ARG_DOUBLE, &g.damp_percent, "F", "damping, a fraction of the mean Hessian diagonal (default 0.01)"},
        {"true-sequential", ARG_BOOL, &true_sequential, "true|false", "calibrate each stage on the quantized earlier ones (default true)"},
        {"expert-calib", ARG_STRING, &expert_calib, "MODE", "routed | all | weighted (default weighted)"},
        {"quantize-mtp", ARG_BOOL, &quantize_mtp, "true|false", "also quantize the multi-token-prediction block (mtp.*), calibrated on the model's final hidden states and the next tokens' embeddings (default false: copied unchanged)"},
        {"quantize-linear-ba", ARG_BOOL, &quantize_linear_ba, "true|false", "Gated DeltaNet layers: also quantize in_proj_b/in_proj_a (in_proj_ba); vLLM's GPTQ kernels need them unquantized (default false)"},
        {"min-expert-tokens", ARG_INT, &min_expert_tokens, "N", "routed: fewer tokens -> all-token fallback (default 16)"},
        {"calib", ARG_STRING, &calib, "FILE|DIR", "text, JSONL (\"text\" or chat \"messages\"), a directory of them, or *.bin token ids (int32 LE) (default: the bundled calib_data)"},
        {"calib-lang", ARG_STRING, &calib_lang, "CODES", "only JSONL documents whose \"lang\" is one of these (e.g. en or de,fr)"},
        {"nsamples", ARG_INT, &nsamples, "N", "calibration windows (default 128)"},
        {"seqlen", ARG_INT, &seqlen, "N", "tokens per window (default 512)"},
        {"seed", ARG_INT, &seed, "N", "picks the windows (default 0)"},
        {"device", ARG_STRING, &device, "auto|cpu|cuda[:N]", "where the layer loop runs (default auto: the first GPU, else the CPU)"},
        {"devices", ARG_STRING, &devices, "N,N,...", "CUDA: several GPUs of this host, e.g. 0,1: experts split over them by FLOPs (NCCL); the first also runs attention and holds the residual stream"},
        {"vram-budget", ARG_STRING, &vram_budget, "SIZE", "CUDA: device memory the run may hold on each GPU, e.g. 24GiB (default: expert groups sized to the free device memory)"},
        {"resume", ARG_FLAG, &resume, NULL, "continue an interrupted run of the same --out from its last completed layer (same model, data and settings)"},
        {"state-every", ARG_INT, &state_every, "N", "save the state --resume needs after every N layers (default 1; 0: never); each save writes the calibration set's hidden states (tokens x hidden x 4 bytes)"},
        {"wait-for-layer", ARG_FLAG, &wait_for_layer, NULL, "CUDA: read, quantize and write one layer after the other (lowest memory); default: read the next layer and write the previous one beside the GPU work"},
        {"expert-batch", ARG_INT, &expert_batch, "N", "CUDA: experts quantized per group (default: as many as the budget allows)"},
        {"tokenizer", ARG_STRING, &tokenizer, "FILE", "tokenizer.json (default MODEL/tokenizer.json)"},
        {"arch-file", ARG_STRING, &arch_file, "FILE", "architecture file instead of the built-in one"},
        {"quiet", ARG_FLAG, &quiet, NULL, "no progress output"},
        {"help", ARG_FLAG, &help, NULL, "show this help"},
        {0},
    };
    moeq_error err = {0};
    const char *pos[1];
    int n_pos;
    int exit_status = args_parse_command("quantize", quantize_usage, specs, &help, argc, argv, pos,
                                         0, &n_pos);
    if (exit_status >= 0)
        return exit_status;
    if (!model_dir || !out_dir)
        return moeq_cli_report("quantize", 2, "--model and --out are required (see --help)");
    static const char *const methods[] = {"gptq", "rtn", "awq"};
    static const char *const modes[] = {"routed", "all", "weighted"};
    moeq_quantize_options opt = {.gptq = g, .min_expert_tokens = min_expert_tokens,
                                 .true_sequential = true_sequential,
                                 .quantize_linear_ba = quantize_linear_ba,
                                 .quantize_mtp = quantize_mtp};
    int choice;
    if (parse_choice(method, methods, 3, &choice))
        return moeq_cli_report("quantize", 2, "--method must be gptq, awq or rtn");
    opt.method = (moeq_method)choice;
    if (parse_choice(expert_calib, modes, 3, &choice))
        return moeq_cli_report("quantize", 2, "--expert-calib must be routed, all or weighted");
    opt.expert_calib = (moeq_expert_calib)choice;
    if (moeq_format_parse(format, &opt.format))
        return moeq_cli_report("quantize", 2, "--format must be gptq, awq or compressed-tensors");
    if (g.static_groups && !g.desc_act)
        return moeq_cli_report("quantize", 2, "--static-groups only applies with --desc-act true");
    if (min_expert_tokens < 1)
        return moeq_cli_report("quantize", 2,
                               "--min-expert-tokens must be at least 1: an expert calibrated on "
                               "no token would have an all-zero Hessian and be zeroed");
    int use_cuda = 0;
    char msg[512];
    if (args_pick_devices(device, devices, &use_cuda, opt.devices, &opt.n_devices, msg,
                          sizeof msg))
        return moeq_cli_report("quantize", 2, msg);
    if (devices)
        device = "cuda"; /* named explicitly: refused, not moved to the CPU, if unsupported */
    if (vram_budget && parse_size(vram_budget, &opt.vram_budget))
        return moeq_cli_report("quantize", 2,
                               "--vram-budget must be a size such as 24GiB, 512MiB or a byte count");
    if (expert_batch < 0)
        return moeq_cli_report("quantize", 2, "--expert-batch must be positive (0: automatic)");
    opt.expert_batch = expert_batch;
    if (state_every < 0)
        return moeq_cli_report("quantize", 2, "--state-every must be 0 (never) or positive");
    opt.state_every = state_every;
    if (seed < 0)
        return moeq_cli_report("quantize", 2, "--seed must not be negative");
    if (moeq_gptq_check_config(&opt.gptq, opt.gptq.group_size > 0 ? opt.gptq.group_size : 1,
                               &err))
        return moeq_cli_report("quantize", 2, err.msg);
    if (access(out_dir, F_OK) == 0) {
        moeq_fail(&err, MOEQ_ERR_INVALID_ARG,
                  "output directory %s already exists: choose another --out or remove it",
                  out_dir);
        return moeq_cli_report("quantize", 2, err.msg);
    }
    const char *env_calib = getenv("MOEQ_CALIB_DIR");
    if (!calib)
        calib = env_calib ? env_calib : MOEQ_DEFAULT_CALIB_DIR;
    FILE *progress = quiet ? NULL : stderr;
    opt.progress = progress;

    double start = moeq_now_seconds();
    moeq_model model;
    if (moeq_model_open(model_dir, arch_file, &model, &err))
        return moeq_cli_report("quantize", 1, err.msg);
    int status = 1;
    moeq_calib_set set = {0};
    moeq_gptq_writer writer = {0};
    run_ctx ctx = {&writer, progress, progress && isatty(fileno(progress)),
                   model.cfg.num_layers + (opt.quantize_mtp ? 1 : 0), model.cfg.num_experts,
                   model.cfg.num_layers, 0, 0, NULL};
    ctx.layers = calloc((size_t)ctx.n_layers, sizeof *ctx.layers);
    if (!ctx.layers) {
        moeq_fail(&err, MOEQ_ERR_OOM, "out of memory");
        goto done;
    }
    /* Every linear's dimensions must suit the group size and the packing
     * before any work starts. */
    /* intermediate_size only matters when some layer is dense (MoE configs
     * often carry one for layers the model does not have). */
    int any_dense = model.cfg.num_experts == 0;
    for (int l = 0; l < model.cfg.num_layers && !any_dense; l++)
        any_dense = !model.cfg.layer_is_moe[l];
    const moeq_config *mc = &model.cfg;
    int la_kd = mc->la_num_k_heads * mc->la_k_head_dim, la_vd = mc->la_num_v_heads * mc->la_v_head_dim;
    /* Inputs and outputs of linears, then dims that are only outputs (no
     * group size applies): kv heads, Gated DeltaNet in_proj_qkv and b/a. */
    int dims[9] = {mc->hidden_size, mc->num_heads * mc->head_dim,
                   any_dense ? mc->intermediate_size : 0, mc->moe_intermediate_size,
                   mc->shared_expert_intermediate_size, la_vd,
                   mc->num_kv_heads * mc->head_dim, la_vd ? 2 * la_kd + la_vd : 0,
                   quantize_linear_ba ? mc->la_num_v_heads : 0};
    for (int i = 0; i < 9; i++)
        if (dims[i] > 0 && ((i < 6 && moeq_gptq_check_config(&opt.gptq, dims[i], &err)) ||
                            moeq_format_check(opt.format, &opt.gptq, dims[i], dims[i], &err)))
            goto done;
    if (opt.quantize_mtp && !moeq_mtp_present(&model)) {
        moeq_fail(&err, MOEQ_ERR_INVALID_ARG,
                  "--quantize-mtp: %s has no MTP block that architecture %s names (tensors.mtp_fc "
                  "and mtp_layer_prefix)",
                  model_dir, model.arch.name);
        goto done;
    }
    /* Their configs name no hybrid or kept-aside modules yet. */
    int linear_layers = 0;
    for (int l = 0; l < mc->num_layers; l++)
        linear_layers += mc->layer_is_linear[l];
    if (opt.format != MOEQ_FORMAT_GPTQ && (linear_layers || model.arch.n_keep_modules)) {
        moeq_fail(&err, MOEQ_ERR_UNSUPPORTED,
                  "--format %s is not implemented for architecture %s (linear-attention layers "
                  "or modules kept unquantized): use --format gptq",
                  moeq_format_name(opt.format), model.arch.name);
        goto done;
    }
    /* Scales the format keeps in (or a loader casts to) a bf16 model's dtype
     * must be exact in bf16 too. */
    const st_tensor *embed = moeq_model_find(&model, MOEQ_T_EMBED, -1, -1, &err);
    if (!embed)
        goto done;
    opt.gptq.scale_bf16 = moeq_format_needs_bf16_scales(opt.format, embed->dtype);
    if (model.cfg.quant_bits) {
        moeq_fail(&err, MOEQ_ERR_INVALID_ARG, "%s is already quantized (%d-bit %s)", model_dir,
                  model.cfg.quant_bits, moeq_format_name((moeq_format)model.cfg.quant_format));
        goto done;
    }
#ifdef MOEQ_HAVE_CUDA
    /* A model or setting the CUDA loop lacks: --device auto runs it on the
     * CPU and says so; an explicit --device cuda stops here. */
    if (use_cuda && moeq_cuda_pipeline_supports(&model, &opt, &err)) {
        if (strcmp(device, "auto"))
            goto done;
        if (progress)
            fprintf(progress, "moeq quantize: running on the CPU: %s\n", err.msg);
        use_cuda = 0;
    }
#endif
    opt.wait_for_layer = wait_for_layer || !use_cuda;
    if (load_calibration(calib, calib_lang, tokenizer, model_dir, nsamples, seqlen, (uint64_t)seed, &set,
                         &err))
        goto done;
    if (progress)
        fprintf(progress,
                "moeq quantize: %s (%s, %d layers) -> %s (%s)\n  %s %d-bit group %d %s, experts: "
                "%s; calibration %d x %d tokens from %s (%zu tokens available); backend %s\n",
                model_dir, model.arch.name, model.cfg.num_layers, out_dir,
                moeq_format_name(opt.format), moeq_method_name(opt.method), g.bits, g.group_size,
                g.sym ? "sym" : "asym",
                model.cfg.num_experts ? moeq_expert_calib_name(opt.expert_calib) : "none",
                nsamples, seqlen, calib, set.stream_tokens, use_cuda ? "cuda" : "cpu");
    cJSON *fingerprint = run_fingerprint(&model, &set, &opt, use_cuda, &err);
    if (!fingerprint)
        goto done;
    moeq_code opened = moeq_gptq_writer_open(&writer, &model, &opt, out_dir, fingerprint, resume,
                                             (size_t)nsamples * seqlen * model.cfg.hidden_size,
                                             &err);
    cJSON_Delete(fingerprint);
    if (opened)
        goto done;
    if (resume) {
        opt.start_layer = writer.resume_layer;
        opt.start_hidden = writer.resume_hidden;
        if (progress)
            fprintf(progress, "resuming after layer %d/%d of the interrupted run\n",
                    writer.resume_layer, model.cfg.num_layers);
    }
    ctx.start = ctx.last = moeq_now_seconds();
    moeq_layer_sink sink = {on_layer, on_layer_done, &ctx};
    size_t peak_device[MOEQ_MAX_DEVICES] = {0};
#ifdef MOEQ_HAVE_CUDA
    if (use_cuda) {
        if (moeq_quantize_layers_cuda(&model, &set, &opt, &sink, peak_device, &err))
            goto done;
    } else
#endif
        if (moeq_quantize_layers(&model, &set, &opt, &sink, &err))
        goto done;
    if (progress && ctx.tty)
        fprintf(progress, "\n");
    double total = moeq_now_seconds() - start;
    cJSON *settings = cJSON_CreateObject();
    cJSON_AddStringToObject(settings, "moeq_version", MOEQ_VERSION);
    cJSON_AddStringToObject(settings, "model", model_dir);
    cJSON_AddStringToObject(settings, "architecture", model.arch.name);
    cJSON_AddStringToObject(settings, "method", moeq_method_name(opt.method));
    cJSON_AddStringToObject(settings, "format", moeq_format_name(opt.format));
    cJSON_AddStringToObject(settings, "expert_calib", moeq_expert_calib_name(opt.expert_calib));
    cJSON_AddBoolToObject(settings, "quantize_linear_ba", opt.quantize_linear_ba);
    cJSON_AddBoolToObject(settings, "quantize_mtp", opt.quantize_mtp);
    cJSON_AddNumberToObject(settings, "min_expert_tokens", min_expert_tokens);
    cJSON_AddStringToObject(settings, "calib", calib);
    if (calib_lang)
        cJSON_AddStringToObject(settings, "calib_lang", calib_lang);
    cJSON_AddNumberToObject(settings, "nsamples", nsamples);
    cJSON_AddNumberToObject(settings, "seqlen", seqlen);
    cJSON_AddNumberToObject(settings, "seed", seed);
    cJSON_AddNumberToObject(settings, "calib_stream_tokens", (double)set.stream_tokens);
    cJSON_AddStringToObject(settings, "backend", use_cuda ? "cuda" : "cpu");
    if (use_cuda) {
        cJSON_AddNumberToObject(settings, "device", opt.devices[0]);
        cJSON_AddItemToObject(settings, "devices", cJSON_CreateIntArray(opt.devices, opt.n_devices));
    }
    if (opt.vram_budget)
        cJSON_AddNumberToObject(settings, "vram_budget_bytes", (double)opt.vram_budget);
    cJSON_AddStringToObject(settings, "memory_mode",
                            opt.wait_for_layer ? "wait-for-layer" : "overlapped");
    cJSON_AddNumberToObject(settings, "total_seconds", total);
    cJSON_AddNumberToObject(settings, "peak_host_bytes", peak_rss_mib() * 1048576.0);
    /* Each GPU has its own budget: the largest peak, and each one's. */
    size_t peak_max = 0;
    cJSON *peaks = cJSON_CreateArray();
    for (int i = 0; i < (use_cuda ? opt.n_devices : 0); i++) {
        peak_max = peak_device[i] > peak_max ? peak_device[i] : peak_max;
        cJSON_AddItemToArray(peaks, cJSON_CreateNumber((double)peak_device[i]));
    }
    cJSON_AddNumberToObject(settings, "peak_device_bytes", (double)peak_max);
    cJSON_AddItemToObject(settings, "peak_device_bytes_per_device", peaks);
    moeq_code rc = moeq_gptq_writer_finish(&writer, settings, &err);
    cJSON_Delete(settings);
    if (rc)
        goto done;
    if (!quiet)
        print_summary(&ctx, total);
    printf("wrote %s\n", out_dir);
    status = 0;
done:
    if (status)
        status = moeq_cli_report("quantize", 1, err.msg);
    /* A failure of the machine (disk full, unwritable files, out of
     * memory), not of the inputs: keep the completed layers for --resume. */
    if (status && (err.code == MOEQ_ERR_IO || err.code == MOEQ_ERR_OOM) &&
        moeq_gptq_writer_keep_for_resume(&writer))
        fprintf(stderr,
                "moeq quantize: the completed layers are kept in %s.moeq-partial: fix the cause "
                "and run the same command with --resume\n",
                writer.out_dir);
    moeq_gptq_writer_close(&writer);
    moeq_calib_set_free(&set);
    free(ctx.layers);
    moeq_model_close(&model);
    return status;
}
