/* gptq_writer.c: the GPTQ v1 output checkpoint (see gptq_writer.h; tensor
 * layout in docs/formats.md). */
#include "io/gptq_writer.h"

#include "common/fileio.h"
#include "common/parallel.h"
#include "quant/pack_gptq.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static char *dup_string(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static void shard_name(const moeq_gptq_writer *w, int index, char *buf, size_t bytes)
{
    snprintf(buf, bytes, "model-%05d-of-%05d.safetensors", index + 1, w->n_shards);
}

moeq_code moeq_gptq_writer_open(moeq_gptq_writer *w, const moeq_model *src,
                                const moeq_quantize_options *opt, const char *out_dir,
                                moeq_error *err)
{
    memset(w, 0, sizeof *w);
    struct stat st;
    if (stat(out_dir, &st) == 0)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "output directory %s already exists: choose another --out or remove it",
                         out_dir);
    w->src = src;
    w->opt = opt;
    w->n_shards = src->cfg.num_layers + 1;
    w->out_dir = dup_string(out_dir);
    size_t len = w->out_dir ? strlen(w->out_dir) : 0;
    while (len > 1 && w->out_dir[len - 1] == '/') /* "out/" -> "out" */
        w->out_dir[--len] = '\0';
    w->tmp_dir = malloc(len + 32);
    w->written = calloc(src->ckpt.n_tensors ? src->ckpt.n_tensors : 1, 1);
    w->weight_map = cJSON_CreateObject();
    w->report_layers = cJSON_CreateArray();
    if (!w->out_dir || !w->tmp_dir || !w->written || !w->weight_map || !w->report_layers) {
        moeq_gptq_writer_close(w);
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
    }
    snprintf(w->tmp_dir, len + 32, "%s.moeq-partial-XXXXXX", w->out_dir);
    if (!mkdtemp(w->tmp_dir)) {
        moeq_code rc = moeq_fail(err, MOEQ_ERR_IO, "cannot create %s: %s", w->tmp_dir,
                                 strerror(errno));
        free(w->tmp_dir);
        w->tmp_dir = NULL;
        moeq_gptq_writer_close(w);
        return rc;
    }
    return MOEQ_OK;
}

/* Index of a checkpoint tensor by name, or -1. */
static long tensor_index(const st_checkpoint *c, const char *name)
{
    size_t lo = 0, hi = c->n_tensors;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int cmp = strcmp(c->tensors[mid]->name, name);
        if (!cmp)
            return (long)mid;
        if (cmp < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* Everything one shard needs to stay alive until it is written. */
typedef struct shard {
    st_writer st;
    moeq_packed_gptq *packed;
    int n_packed;
    char (*names)[4][600];
} shard;

static moeq_code add_copy(moeq_gptq_writer *w, shard *s, const char *shard_file, long idx,
                          moeq_error *err)
{
    const st_tensor *t = w->src->ckpt.tensors[idx];
    moeq_code rc = st_writer_add(&s->st, t->name, t->dtype, t->ndim, t->shape, t->data,
                                 t->nbytes, err);
    if (rc)
        return rc;
    w->written[idx] = 1;
    w->total_bytes += (int64_t)t->nbytes;
    cJSON_AddStringToObject(w->weight_map, t->name, shard_file);
    return MOEQ_OK;
}

/* The packed GPTQ tensors of one linear, named after its weight's template
 * with "weight" replaced by qweight, qzeros, scales and g_idx. */
typedef struct pack_job {
    const moeq_layer_result *r;
    moeq_packed_gptq *packed; /* [n_linears] */
} pack_job;

static moeq_code pack_one(void *ctx, int i, moeq_error *err)
{
    const pack_job *j = ctx;
    const moeq_quantized_linear *ql = &j->r->linears[i];
    moeq_code rc = moeq_pack_gptq(&ql->q, &j->packed[i], err);
    if (rc && ql->expert >= 0)
        moeq_wrap(err, "expert %d %s: ", ql->expert, moeq_tensor_role_key(ql->role));
    else if (rc)
        moeq_wrap(err, "%s: ", moeq_tensor_role_key(ql->role));
    return rc;
}

/* Adds the next packed linear (s->packed[s->n_packed], packed from ql) to
 * the shard under its checkpoint names. */
static moeq_code add_quantized(moeq_gptq_writer *w, shard *s, const char *shard_file,
                               const moeq_quantized_linear *ql, int layer, moeq_error *err)
{
    char base[512];
    if (moeq_arch_tensor_name(&w->src->arch, ql->role, layer, ql->expert, base, sizeof base))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "layer %d: cannot name %s", layer,
                         moeq_tensor_role_key(ql->role));
    size_t len = strlen(base);
    if (len < 6 || strcmp(base + len - 6, "weight"))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "architecture %s: tensors.%s = %s must end in \"weight\" to name its "
                         "GPTQ tensors",
                         w->src->arch.name, moeq_tensor_role_key(ql->role), base);
    base[len - 6] = '\0';
    const moeq_packed_gptq *p = &s->packed[s->n_packed];
    char (*names)[600] = s->names[s->n_packed];
    s->n_packed++;
    moeq_code rc;
    const char *suffix[4] = {"qweight", "qzeros", "scales", "g_idx"};
    int64_t shapes[4][2] = {
        {moeq_gptq_qweight_rows(p->bits, p->in_features), p->out_features},
        {p->n_groups, moeq_gptq_qzeros_cols(p->bits, p->out_features)},
        {p->n_groups, p->out_features},
        {p->in_features, 0},
    };
    const void *data[4] = {p->qweight, p->qzeros, p->scales, p->g_idx};
    st_dtype dtypes[4] = {ST_I32, ST_I32, ST_F16, ST_I32};
    for (int i = 0; i < 4; i++) {
        snprintf(names[i], 600, "%s%s", base, suffix[i]);
        int ndim = i == 3 ? 1 : 2;
        size_t bytes = (size_t)shapes[i][0] * (ndim == 2 ? (size_t)shapes[i][1] : 1) *
                       st_dtype_size(dtypes[i]);
        if ((rc = st_writer_add(&s->st, names[i], dtypes[i], ndim, shapes[i], data[i], bytes,
                                err)))
            return rc;
        w->total_bytes += (int64_t)bytes;
        cJSON_AddStringToObject(w->weight_map, names[i], shard_file);
    }
    /* The weight is replaced; its bias, if any, is copied as it is. */
    char name[600];
    snprintf(name, sizeof name, "%sweight", base);
    long widx = tensor_index(&w->src->ckpt, name);
    if (widx >= 0)
        w->written[widx] = 1;
    snprintf(name, sizeof name, "%sbias", base);
    long bidx = tensor_index(&w->src->ckpt, name);
    if (bidx >= 0 && !w->written[bidx])
        return add_copy(w, s, shard_file, bidx, err);
    return MOEQ_OK;
}

/* Copies every unquantized tensor the architecture names for layer l (norms,
 * router, q/k-norm, shared expert gate, biases) into the layer's shard. */
static moeq_code add_layer_copies(moeq_gptq_writer *w, shard *s, const char *shard_file, int l,
                                  moeq_error *err)
{
    const moeq_arch *a = &w->src->arch;
    int n_exp = w->src->cfg.num_experts;
    for (int role = 0; role < MOEQ_T_COUNT; role++) {
        if (role == MOEQ_T_EMBED || role == MOEQ_T_FINAL_NORM || role == MOEQ_T_LM_HEAD ||
            !a->tensors[role])
            continue;
        int expert_role = strstr(a->tensors[role], "{E}") != NULL;
        for (int e = 0; e < (expert_role ? n_exp : 1); e++) {
            char name[512];
            if (moeq_arch_tensor_name(a, (moeq_tensor_role)role, l, expert_role ? e : -1, name,
                                      sizeof name))
                continue;
            for (int bias = 0; bias < 2; bias++) {
                if (bias) {
                    size_t len = strlen(name);
                    if (len < 6 || strcmp(name + len - 6, "weight"))
                        break;
                    memcpy(name + len - 6, "bias", 5);
                }
                long idx = tensor_index(&w->src->ckpt, name);
                if (idx >= 0 && !w->written[idx]) {
                    moeq_code rc = add_copy(w, s, shard_file, idx, err);
                    if (rc)
                        return rc;
                }
            }
        }
    }
    return MOEQ_OK;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static cJSON *layer_report(const moeq_gptq_writer *w, const moeq_layer_result *r,
                           double seconds_write)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "layer", r->layer);
    cJSON *sec = cJSON_AddObjectToObject(o, "seconds");
    cJSON_AddNumberToObject(sec, "wall", r->seconds_wall); /* the critical path before writing */
    cJSON_AddNumberToObject(sec, "load", r->seconds_load);
    cJSON_AddNumberToObject(sec, "capture", r->seconds_capture);
    cJSON_AddNumberToObject(sec, "hessian", r->seconds_hessian);
    cJSON_AddNumberToObject(sec, "prepare", r->seconds_prepare);
    cJSON_AddNumberToObject(sec, "solve", r->seconds_solve);
    cJSON_AddNumberToObject(sec, "forward", r->seconds_forward);
    cJSON_AddNumberToObject(sec, "write", seconds_write); /* packing and the shard file */
    if (r->expert_tokens) {
        cJSON *tok = cJSON_AddArrayToObject(o, "expert_tokens");
        for (int e = 0; e < w->src->cfg.num_experts; e++)
            cJSON_AddItemToArray(tok, cJSON_CreateNumber((double)r->expert_tokens[e]));
    }
    cJSON *mods = cJSON_AddArrayToObject(o, "modules");
    for (int i = 0; i < r->n_linears; i++) {
        const moeq_quantized_linear *ql = &r->linears[i];
        char name[512];
        moeq_arch_tensor_name(&w->src->arch, ql->role, r->layer, ql->expert, name, sizeof name);
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "name", name);
        cJSON_AddNumberToObject(m, "loss", ql->loss);
        cJSON_AddNumberToObject(m, "damp", ql->damp);
        cJSON_AddNumberToObject(m, "tokens", (double)ql->tokens);
        if (ql->fallback)
            cJSON_AddBoolToObject(m, "all_token_fallback", 1);
        cJSON_AddItemToArray(mods, m);
    }
    return o;
}

moeq_code moeq_gptq_writer_write_layer(void *writer, const moeq_layer_result *r,
                                       moeq_error *err)
{
    moeq_gptq_writer *w = writer;
    const double t0 = now_seconds();
    char file[64], path[4200];
    shard_name(w, r->layer, file, sizeof file);
    snprintf(path, sizeof path, "%s/%s", w->tmp_dir, file);
    shard s = {0};
    st_writer_init(&s.st);
    s.packed = calloc((size_t)r->n_linears + 1, sizeof *s.packed);
    s.names = calloc((size_t)r->n_linears + 1, sizeof *s.names);
    moeq_code rc = MOEQ_OK;
    if (!s.packed || !s.names)
        rc = moeq_fail(err, MOEQ_ERR_OOM, "layer %d: out of memory packing", r->layer);
    /* Pack every linear first, in parallel (each packs into its own slot),
     * then add them to the shard in order. */
    pack_job job = {r, s.packed};
    if (!rc && (rc = moeq_parallel_for(r->n_linears, 0, pack_one, &job, err)))
        moeq_wrap(err, "layer %d: ", r->layer);
    for (int i = 0; i < r->n_linears && !rc; i++)
        rc = add_quantized(w, &s, file, &r->linears[i], r->layer, err);
    if (!rc)
        rc = add_layer_copies(w, &s, file, r->layer, err);
    if (!rc)
        rc = st_writer_write(&s.st, path, err);
    if (!rc)
        cJSON_AddItemToArray(w->report_layers, layer_report(w, r, now_seconds() - t0));
    for (int i = 0; s.packed && i < r->n_linears; i++)
        moeq_packed_gptq_free(&s.packed[i]);
    free(s.packed);
    free(s.names);
    st_writer_free(&s.st);
    return rc;
}

static cJSON *quantization_config(const moeq_gptq_writer *w)
{
    const moeq_gptq_config *g = &w->opt->gptq;
    cJSON *q = cJSON_CreateObject();
    cJSON_AddNumberToObject(q, "bits", g->bits);
    cJSON_AddNumberToObject(q, "group_size", g->group_size);
    cJSON_AddBoolToObject(q, "desc_act", g->desc_act);
    cJSON_AddBoolToObject(q, "sym", g->sym);
    cJSON_AddBoolToObject(q, "static_groups", g->static_groups);
    cJSON_AddBoolToObject(q, "true_sequential", w->opt->true_sequential);
    cJSON_AddNumberToObject(q, "damp_percent", g->damp_percent);
    cJSON_AddNumberToObject(q, "mse", g->mse);
    cJSON_AddBoolToObject(q, "lm_head", 0);
    cJSON_AddStringToObject(q, "quant_method", "gptq");
    cJSON_AddStringToObject(q, "checkpoint_format", "gptq");
    cJSON *meta = cJSON_AddObjectToObject(q, "meta");
    cJSON_AddStringToObject(meta, "quantizer", "moeq:" MOEQ_VERSION);
    cJSON_AddStringToObject(meta, "method", moeq_method_name(w->opt->method));
    cJSON_AddStringToObject(meta, "expert_calib", moeq_expert_calib_name(w->opt->expert_calib));
    return q;
}

static moeq_code write_json(const char *dir, const char *name, const cJSON *json,
                            moeq_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = cJSON_Print(json);
    if (!text)
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory writing %s", path);
    size_t n = strlen(text);
    text[n] = '\n'; /* replaces the terminator: written with its length */
    moeq_code rc = moeq_write_file(path, text, n + 1, err);
    cJSON_free(text);
    return rc;
}

/* config.json of the source with quantization_config added (or replaced). */
static moeq_code write_config(const moeq_gptq_writer *w, moeq_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", w->src->dir);
    char *text;
    moeq_code rc = moeq_read_text_file(path, 1 << 24, &text, err);
    if (rc)
        return rc;
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    if (!cfg)
        return moeq_fail(err, MOEQ_ERR_FORMAT, "%s: not JSON", path);
    cJSON_DeleteItemFromObjectCaseSensitive(cfg, "quantization_config");
    cJSON *q = quantization_config(w);
    cJSON_AddItemToObject(cfg, "quantization_config", cJSON_Duplicate(q, 1));
    rc = write_json(w->tmp_dir, "config.json", cfg, err);
    if (!rc)
        rc = write_json(w->tmp_dir, "quantize_config.json", q, err);
    cJSON_Delete(q);
    cJSON_Delete(cfg);
    return rc;
}

/* Copies the source directory's other files: tokenizer, generation config,
 * chat template, README... (not its weights, index or config.json). */
static moeq_code copy_other_files(const moeq_gptq_writer *w, moeq_error *err)
{
    DIR *d = opendir(w->src->dir);
    if (!d)
        return moeq_fail(err, MOEQ_ERR_IO, "%s: cannot list", w->src->dir);
    moeq_code rc = MOEQ_OK;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        if (n[0] == '.' || !strcmp(n, "config.json") || !strcmp(n, "quantize_config.json") ||
            !strcmp(n, "report.json") || !strcmp(n, "model.safetensors.index.json") ||
            (len > 12 && !strcmp(n + len - 12, ".safetensors")))
            continue;
        char src[4200], dst[4200];
        snprintf(src, sizeof src, "%s/%s", w->src->dir, n);
        snprintf(dst, sizeof dst, "%s/%s", w->tmp_dir, n);
        if (moeq_file_exists(src))
            rc = moeq_copy_file(src, dst, err);
    }
    closedir(d);
    return rc;
}

moeq_code moeq_gptq_writer_finish(moeq_gptq_writer *w, const cJSON *settings, moeq_error *err)
{
    char file[64], path[4200];
    shard_name(w, w->n_shards - 1, file, sizeof file);
    snprintf(path, sizeof path, "%s/%s", w->tmp_dir, file);
    shard s = {0};
    st_writer_init(&s.st);
    moeq_code rc = MOEQ_OK;
    for (size_t i = 0; i < w->src->ckpt.n_tensors && !rc; i++)
        if (!w->written[i])
            rc = add_copy(w, &s, file, (long)i, err);
    if (!rc)
        rc = st_writer_write(&s.st, path, err);
    st_writer_free(&s.st);
    if (rc)
        return rc;
    cJSON *index = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)w->total_bytes);
    cJSON_AddItemToObject(index, "weight_map", cJSON_Duplicate(w->weight_map, 1));
    rc = write_json(w->tmp_dir, "model.safetensors.index.json", index, err);
    cJSON_Delete(index);
    if (rc || (rc = write_config(w, err)) || (rc = copy_other_files(w, err)))
        return rc;
    cJSON *report = settings ? cJSON_Duplicate(settings, 1) : cJSON_CreateObject();
    cJSON_AddItemToObject(report, "quantization_config", quantization_config(w));
    cJSON_AddItemToObject(report, "layers", cJSON_Duplicate(w->report_layers, 1));
    rc = write_json(w->tmp_dir, "report.json", report, err);
    cJSON_Delete(report);
    if (rc)
        return rc;
    if (rename(w->tmp_dir, w->out_dir) != 0)
        return moeq_fail(err, MOEQ_ERR_IO, "cannot rename %s to %s: %s", w->tmp_dir, w->out_dir,
                         strerror(errno));
    free(w->tmp_dir);
    w->tmp_dir = NULL; /* nothing left to remove */
    return MOEQ_OK;
}

void moeq_gptq_writer_close(moeq_gptq_writer *w)
{
    if (w->tmp_dir)
        moeq_remove_tree(w->tmp_dir);
    free(w->tmp_dir);
    free(w->out_dir);
    free(w->written);
    cJSON_Delete(w->weight_map);
    cJSON_Delete(w->report_layers);
    memset(w, 0, sizeof *w);
}
