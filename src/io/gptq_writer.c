/* gptq_writer.c: the GPTQ v1 output checkpoint (see gptq_writer.h; tensor
 * layout in docs/formats.md). */
#include "io/gptq_writer.h"

#include "common/clock.h"
#include "common/dtype.h"
#include "common/failpoint.h"
#include "common/fileio.h"
#include "common/hash.h"
#include "common/parallel.h"
#include "model/fp8_blocks.h"
#include "model/fused_experts.h"
#include "model/mtp.h"
#include "quant/pack_format.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void shard_name(const moeq_gptq_writer *w, int index, char *buf, size_t bytes)
{
    snprintf(buf, bytes, "model-%05d-of-%05d.safetensors", index + 1, w->n_shards);
}

/* The checksum of the saved hidden states: FNV-1a over the FNV-1a of each
 * 64 MiB piece, the pieces hashed in parallel (gigabytes per layer). */
enum { HASH_PIECE = 64 << 20 };

typedef struct hash_job {
    const unsigned char *data;
    size_t bytes;
    uint64_t *piece;
} hash_job;

static moeq_code hash_piece(void *ctx, int i, moeq_error *err)
{
    (void)err;
    const hash_job *j = ctx;
    size_t off = (size_t)i * HASH_PIECE;
    size_t n = j->bytes - off < HASH_PIECE ? j->bytes - off : HASH_PIECE;
    j->piece[i] = moeq_fnv1a64_words(j->data + off, n, MOEQ_FNV1A64_INIT);
    return MOEQ_OK;
}

static uint64_t hidden_checksum(const void *data, size_t bytes)
{
    int pieces = (int)((bytes + HASH_PIECE - 1) / HASH_PIECE);
    uint64_t *piece = calloc(pieces > 0 ? (size_t)pieces : 1, sizeof *piece);
    if (!piece) /* no memory for the list: hash in one pass */
        return moeq_fnv1a64_words(data, bytes, MOEQ_FNV1A64_INIT);
    hash_job j = {data, bytes, piece};
    moeq_error err = {0};
    moeq_parallel_for(pieces, 0, hash_piece, &j, &err);
    uint64_t h = moeq_fnv1a64(piece, sizeof *piece * (size_t)pieces, MOEQ_FNV1A64_INIT);
    free(piece);
    return h;
}

static void hidden_name(const moeq_gptq_writer *w, int layer, char *buf, size_t bytes)
{
    snprintf(buf, bytes, "%s/hidden-%05d.bin", w->tmp_dir, layer);
}

/* Names the first top-level key whose value differs between two
 * fingerprints (JSON objects), for the refusal message. */
static const char *first_difference(const cJSON *a, const cJSON *b)
{
    const cJSON *x;
    cJSON_ArrayForEach(x, a)
    {
        const cJSON *y = cJSON_GetObjectItemCaseSensitive(b, x->string);
        if (!y || !cJSON_Compare(x, y, 1))
            return x->string;
    }
    cJSON_ArrayForEach(x, b)
    if (!cJSON_GetObjectItemCaseSensitive(a, x->string))
        return x->string;
    return NULL;
}

/* Reads the interrupted run's state.json and hidden states back. */
static moeq_code load_state(moeq_gptq_writer *w, const cJSON *fingerprint, size_t hidden_count,
                            moeq_error *err)
{
    char path[4200], *text = NULL;
    snprintf(path, sizeof path, "%s/state.json", w->tmp_dir);
    moeq_code rc = moeq_read_text_file(path, (size_t)1 << 30, &text, err);
    if (rc == MOEQ_ERR_NOT_FOUND) {
        /* Killed before the first layer was recorded: start over in it. */
        moeq_remove_tree(w->tmp_dir);
        if (mkdir(w->tmp_dir, 0777) != 0)
            return moeq_fail(err, MOEQ_ERR_IO, "cannot create %s: %s", w->tmp_dir,
                             strerror(errno));
        return MOEQ_OK;
    }
    if (rc)
        return rc;
    cJSON *st = cJSON_Parse(text);
    free(text);
    const cJSON *fp = cJSON_GetObjectItemCaseSensitive(st, "fingerprint");
    const cJSON *next = cJSON_GetObjectItemCaseSensitive(st, "next_layer");
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(st, "weight_map");
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(st, "report_layers");
    const cJSON *copied = cJSON_GetObjectItemCaseSensitive(st, "copied");
    const cJSON *total = cJSON_GetObjectItemCaseSensitive(st, "total_bytes");
    const cJSON *sum = cJSON_GetObjectItemCaseSensitive(st, "hidden_fnv1a");
    if (!st || !cJSON_IsObject(fp) || !cJSON_IsNumber(next) || !cJSON_IsObject(map) ||
        !cJSON_IsArray(layers) || !cJSON_IsArray(copied) || !cJSON_IsNumber(total) ||
        !cJSON_IsString(sum) || next->valueint < 1 || next->valueint > w->src->cfg.num_layers) {
        cJSON_Delete(st);
        return moeq_fail(err, MOEQ_ERR_FORMAT, "--resume: %s is damaged (remove %s and start "
                         "again)", path, w->tmp_dir);
    }
    const char *diff = first_difference(fingerprint, fp);
    if (diff) {
        rc = moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                       "--resume: the interrupted run in %s had another %s; resume with the "
                       "same model, calibration data and settings, or remove that directory",
                       w->tmp_dir, diff);
        cJSON_Delete(st);
        return rc;
    }
    w->resume_layer = next->valueint;
    cJSON_Delete(w->weight_map);
    cJSON_Delete(w->report_layers);
    w->weight_map = cJSON_Duplicate(map, 1);
    w->report_layers = cJSON_Duplicate(layers, 1);
    w->total_bytes = (int64_t)total->valuedouble;
    const cJSON *c;
    cJSON_ArrayForEach(c, copied)
    {
        if (!cJSON_IsNumber(c) || c->valueint < 0 || (size_t)c->valueint >= w->src->ckpt.n_tensors)
            continue;
        w->written[c->valueint] = 1;
    }
    char hpath[4200];
    hidden_name(w, w->resume_layer, hpath, sizeof hpath);
    size_t bytes = 0;
    rc = moeq_read_file(hpath, sizeof(float) * hidden_count + 1, (char **)&w->resume_hidden,
                        &bytes, err);
    char expect[32];
    if (!rc) {
        snprintf(expect, sizeof expect, "%016llx",
                 (unsigned long long)hidden_checksum(w->resume_hidden, bytes));
        if (bytes != sizeof(float) * hidden_count || strcmp(expect, sum->valuestring))
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "--resume: %s does not match state.json (remove %s and start again)",
                           hpath, w->tmp_dir);
    }
    cJSON_Delete(st);
    if (rc || !w->weight_map || !w->report_layers)
        return rc ? rc : moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
    return MOEQ_OK;
}

moeq_code moeq_gptq_writer_open(moeq_gptq_writer *w, const moeq_model *src,
                                const moeq_quantize_options *opt, const char *out_dir,
                                const cJSON *fingerprint, int resume, size_t hidden_count,
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
    w->n_shards = src->cfg.num_layers + 1 + (opt->quantize_mtp ? 1 : 0); /* + the MTP block */
    w->out_dir = strdup(out_dir);
    size_t len = w->out_dir ? strlen(w->out_dir) : 0;
    while (len > 1 && w->out_dir[len - 1] == '/') /* "out/" -> "out" */
        w->out_dir[--len] = '\0';
    w->tmp_dir = malloc(len + 32);
    w->written = calloc(src->ckpt.n_tensors ? src->ckpt.n_tensors : 1, 1);
    w->weight_map = cJSON_CreateObject();
    w->report_layers = cJSON_CreateArray();
    w->fingerprint = fingerprint ? cJSON_Duplicate(fingerprint, 1) : cJSON_CreateObject();
    if (!w->out_dir || !w->tmp_dir || !w->written || !w->weight_map || !w->report_layers ||
        !w->fingerprint) {
        moeq_gptq_writer_close(w);
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
    }
    /* A fixed name, so that an interrupted run can be found and resumed. */
    snprintf(w->tmp_dir, len + 32, "%s.moeq-partial", w->out_dir);
    moeq_code rc = MOEQ_OK;
    if (resume) {
        if (!moeq_dir_exists(w->tmp_dir))
            rc = moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                           "--resume: no interrupted run of %s to resume (%s does not exist)",
                           w->out_dir, w->tmp_dir);
        else
            rc = load_state(w, w->fingerprint, hidden_count, err);
        if (rc) { /* keep the interrupted run's directory as it is */
            free(w->tmp_dir);
            w->tmp_dir = NULL;
        }
    } else if (stat(w->tmp_dir, &st) == 0) {
        rc = moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                       "%s exists: an interrupted run of %s; add --resume to continue it, or "
                       "remove that directory",
                       w->tmp_dir, w->out_dir);
        free(w->tmp_dir);
        w->tmp_dir = NULL;
    } else if (mkdir(w->tmp_dir, 0777) != 0) {
        rc = moeq_fail(err, MOEQ_ERR_IO, "cannot create %s: %s", w->tmp_dir, strerror(errno));
        free(w->tmp_dir);
        w->tmp_dir = NULL;
    }
    if (rc)
        moeq_gptq_writer_close(w);
    return rc;
}

moeq_code moeq_gptq_writer_layer_done(void *writer, int layer, const float *hidden, size_t count,
                                      moeq_error *err)
{
    moeq_gptq_writer *w = writer;
    char path[4200], old[4200];
    /* The next layer's input, then the record naming it: killed between the
     * two, the record still points at the previous, complete pair. */
    hidden_name(w, layer + 1, path, sizeof path);
    /* Gigabytes for large runs: not flushed to the disk (a kill cannot tear
     * it; after a power loss the checksum in state.json tells). */
    moeq_code rc = moeq_write_file_atomic(path, hidden, sizeof(float) * count, 0, err);
    if (rc)
        return moeq_wrap(err, "saving the state after layer %d: ", layer);
    char name[32];
    snprintf(name, sizeof name, "layer-%d-state", layer);
    moeq_failpoint(name, NULL);
    cJSON *st = cJSON_CreateObject();
    cJSON *copied = cJSON_CreateArray();
    for (size_t i = 0; i < w->src->ckpt.n_tensors; i++)
        if (w->written[i])
            cJSON_AddItemToArray(copied, cJSON_CreateNumber((double)i));
    char sum[32];
    snprintf(sum, sizeof sum, "%016llx",
             (unsigned long long)hidden_checksum(hidden, sizeof(float) * count));
    cJSON_AddItemToObject(st, "fingerprint", cJSON_Duplicate(w->fingerprint, 1));
    cJSON_AddNumberToObject(st, "next_layer", layer + 1);
    cJSON_AddStringToObject(st, "hidden_fnv1a", sum);
    cJSON_AddNumberToObject(st, "total_bytes", (double)w->total_bytes);
    cJSON_AddItemToObject(st, "copied", copied);
    cJSON_AddItemToObject(st, "weight_map", cJSON_Duplicate(w->weight_map, 1));
    cJSON_AddItemToObject(st, "report_layers", cJSON_Duplicate(w->report_layers, 1));
    char *text = cJSON_PrintUnformatted(st);
    cJSON_Delete(st);
    if (!text)
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory saving the state after layer %d",
                         layer);
    snprintf(path, sizeof path, "%s/state.json", w->tmp_dir);
    rc = moeq_write_file_atomic(path, text, strlen(text), 1, err);
    cJSON_free(text);
    if (rc)
        return moeq_wrap(err, "saving the state after layer %d: ", layer);
    hidden_name(w, layer, old, sizeof old);
    unlink(old); /* the previous layer's input is no longer needed */
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
    moeq_packed_linear *packed;
    int n_packed;
    char (*names)[4][600];
    void **owned; /* buffers made for this shard (dequantized copies) */
    int n_owned;
} shard;

static void shard_free(shard *s)
{
    for (int i = 0; i < s->n_owned; i++)
        free(s->owned[i]);
    free(s->owned);
    s->owned = NULL;
    s->n_owned = 0;
    st_writer_free(&s->st);
}

/* Hands buf to the shard (freed with it); frees buf when that fails. */
static moeq_code shard_own(shard *s, void *buf, moeq_error *err)
{
    void **o = realloc(s->owned, sizeof *o * (size_t)(s->n_owned + 1));
    if (!o) {
        free(buf);
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory writing a shard");
    }
    s->owned = o;
    s->owned[s->n_owned++] = buf;
    return MOEQ_OK;
}

static moeq_code add_tensor(moeq_gptq_writer *w, shard *s, const char *shard_file,
                            const char *name, st_dtype dtype, int ndim, const int64_t *shape,
                            const void *data, size_t nbytes, moeq_error *err)
{
    moeq_code rc = st_writer_add(&s->st, name, dtype, ndim, shape, data, nbytes, err);
    if (rc)
        return rc;
    w->total_bytes += (int64_t)nbytes;
    cJSON_AddStringToObject(w->weight_map, name, shard_file);
    return MOEQ_OK;
}

/* In an FP8 source, the weight whose scale tensor is name ("x_scale_inv"
 * beside an F8_E4M3 "x"), or NULL. */
static const st_tensor *fp8_weight_of_scale(const moeq_gptq_writer *w, const char *name)
{
    size_t len = strlen(name), suffix = strlen("_scale_inv");
    char weight[600];
    if (!w->src->cfg.fp8_block_rows || len <= suffix || len - suffix >= sizeof weight ||
        strcmp(name + len - suffix, "_scale_inv"))
        return NULL;
    memcpy(weight, name, len - suffix);
    weight[len - suffix] = '\0';
    const st_tensor *t = st_checkpoint_find(&w->src->ckpt, weight);
    return t && t->dtype == ST_F8_E4M3 ? t : NULL;
}

/* An FP8 weight the run does not quantize is written dequantized, in bf16
 * (what transformers' Fp8Dequantize gives by default): the output declares
 * GPTQ, not fp8, so no block scales may remain. */
static moeq_code add_dequantized_fp8(moeq_gptq_writer *w, shard *s, const char *shard_file,
                                     const st_tensor *t, moeq_error *err)
{
    char name[600];
    const st_tensor *scale = NULL;
    if (!moeq_fp8_scale_name(t->name, name, sizeof name))
        scale = st_checkpoint_find(&w->src->ckpt, name);
    if (!scale)
        return moeq_fail(err, MOEQ_ERR_NOT_FOUND,
                         "%s: FP8 tensor %s has no scale tensor %s_scale_inv", w->src->dir,
                         t->name, t->name);
    size_t n = t->nbytes;
    float *f = malloc(sizeof(float) * (n ? n : 1));
    uint16_t *b = malloc(sizeof(uint16_t) * (n ? n : 1));
    moeq_code rc = MOEQ_OK;
    if (!f || !b)
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory dequantizing %s", t->name);
    else if ((rc = moeq_fp8_block_dequant(t, scale, w->src->cfg.fp8_block_rows,
                                          w->src->cfg.fp8_block_cols, f, err)))
        moeq_wrap(err, "%s: ", w->src->dir);
    for (size_t i = 0; !rc && i < n; i++)
        b[i] = moeq_f32_to_bf16(f[i]);
    free(f);
    if (rc) {
        free(b);
        return rc;
    }
    if ((rc = shard_own(s, b, err)))
        return rc;
    return add_tensor(w, s, shard_file, t->name, ST_BF16, t->ndim, t->shape, b, n * 2, err);
}

static moeq_code add_copy(moeq_gptq_writer *w, shard *s, const char *shard_file, long idx,
                          moeq_error *err)
{
    const st_tensor *t = w->src->ckpt.tensors[idx];
    moeq_code rc;
    if (fp8_weight_of_scale(w, t->name))
        rc = MOEQ_OK; /* consumed by its weight */
    else if (t->dtype == ST_F8_E4M3 && w->src->cfg.fp8_block_rows)
        rc = add_dequantized_fp8(w, s, shard_file, t, err);
    else
        rc = add_tensor(w, s, shard_file, t->name, t->dtype, t->ndim, t->shape, t->data,
                        t->nbytes, err);
    if (!rc)
        w->written[idx] = 1;
    return rc;
}

static const moeq_arch *names_of(const moeq_gptq_writer *w, const moeq_layer_result *r,
                                 int *layer);

/* The checkpoint name of a quantized linear's weight, without its final
 * "weight" (the packed tensors' suffixes replace it). */
static moeq_code linear_base_name(const moeq_arch *a, const moeq_quantized_linear *ql, int layer,
                                  char *base, size_t bytes, moeq_error *err)
{
    if (moeq_arch_tensor_name(a, ql->role, layer, ql->expert, base, bytes))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "layer %d: cannot name %s", layer,
                         moeq_tensor_role_key(ql->role));
    size_t len = strlen(base);
    if (len < 6 || strcmp(base + len - 6, "weight"))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "architecture %s: tensors.%s = %s must end in \"weight\" to name its "
                         "quantized tensors",
                         a->name, moeq_tensor_role_key(ql->role), base);
    base[len - 6] = '\0';
    return MOEQ_OK;
}

/* The packed tensors of one linear, in the output format, named after its
 * weight's template with "weight" replaced by each tensor's suffix. */
typedef struct pack_job {
    const moeq_gptq_writer *w;
    const moeq_layer_result *r;
    moeq_packed_linear *packed; /* [n_linears] */
} pack_job;

static moeq_code pack_one(void *ctx, int i, moeq_error *err)
{
    const pack_job *j = ctx;
    const moeq_quantized_linear *ql = &j->r->linears[i];
    char name[600];
    int layer;
    const moeq_arch *a = names_of(j->w, j->r, &layer);
    moeq_code rc = linear_base_name(a, ql, layer, name, 512, err);
    if (rc)
        return rc;
    /* compressed-tensors stores scales in the dtype of the weight replaced. */
    strcat(name, "weight");
    long widx = tensor_index(&j->w->src->ckpt, name);
    st_dtype dtype = widx >= 0 ? j->w->src->ckpt.tensors[widx]->dtype : ST_BF16;
    rc = moeq_pack_linear(j->w->opt->format, &ql->q, j->w->opt->gptq.sym, dtype, &j->packed[i],
                          err);
    if (rc && ql->expert >= 0)
        moeq_wrap(err, "expert %d %s: ", ql->expert, moeq_tensor_role_key(ql->role));
    else if (rc)
        moeq_wrap(err, "%s: ", moeq_tensor_role_key(ql->role));
    return rc;
}

/* A fused-experts source: expert ql->expert's bias (when the model has
 * expert biases) cut out of the fused bias tensor and written beside its
 * packed weight as <base>bias, in the source's dtype. */
static moeq_code add_fused_expert_bias(moeq_gptq_writer *w, shard *s, const char *shard_file,
                                       const moeq_quantized_linear *ql, int layer,
                                       const char *base, moeq_error *err)
{
    if (!w->src->cfg.mlp_bias)
        return MOEQ_OK;
    void *bias;
    st_dtype dtype;
    int64_t rows;
    moeq_code rc = moeq_fused_expert_bias_raw(w->src, ql->role, layer, ql->expert, &bias, &dtype,
                                              &rows, err);
    if (rc || (rc = shard_own(s, bias, err)))
        return rc;
    char name[600];
    snprintf(name, sizeof name, "%sbias", base);
    return add_tensor(w, s, shard_file, name, dtype, 1, &rows, bias,
                      (size_t)rows * st_dtype_size(dtype), err);
}

/* Marks a fused-experts source tensor as replaced by the per-expert output. */
static void mark_written(void *ctx, const char *name)
{
    moeq_gptq_writer *w = ctx;
    long idx = tensor_index(&w->src->ckpt, name);
    if (idx >= 0)
        w->written[idx] = 1;
}

/* Adds the next packed linear (s->packed[s->n_packed], packed from ql) to
 * the shard under its checkpoint names. */
static moeq_code add_quantized(moeq_gptq_writer *w, shard *s, const char *shard_file,
                               const moeq_arch *a, const moeq_quantized_linear *ql, int layer,
                               moeq_error *err)
{
    char base[512];
    moeq_code rc = linear_base_name(a, ql, layer, base, sizeof base, err);
    if (rc)
        return rc;
    const moeq_packed_linear *p = &s->packed[s->n_packed];
    char (*names)[600] = s->names[s->n_packed];
    s->n_packed++;
    for (int i = 0; i < p->n; i++) {
        const moeq_packed_tensor *t = &p->t[i];
        snprintf(names[i], 600, "%s%s", base, t->suffix);
        if ((rc = add_tensor(w, s, shard_file, names[i], t->dtype, t->ndim, t->shape, t->data,
                             t->bytes, err)))
            return rc;
    }
    if (ql->expert >= 0 && moeq_experts_fused(w->src))
        return add_fused_expert_bias(w, s, shard_file, ql, layer, base, err);
    /* The weight is replaced; its bias, if any, is copied as it is. */
    char name[600];
    snprintf(name, sizeof name, "%sweight", base);
    long widx = tensor_index(&w->src->ckpt, name);
    if (widx >= 0)
        w->written[widx] = 1;
    snprintf(name, sizeof name, "%sweight_scale_inv", base); /* an FP8 source's block scales */
    if ((widx = tensor_index(&w->src->ckpt, name)) >= 0)
        w->written[widx] = 1;
    snprintf(name, sizeof name, "%sbias", base);
    long bidx = tensor_index(&w->src->ckpt, name);
    if (bidx >= 0 && !w->written[bidx])
        return add_copy(w, s, shard_file, bidx, err);
    return MOEQ_OK;
}

/* Copies every unquantized tensor the architecture names for layer l (norms,
 * router, q/k-norm, shared expert gate, biases) into the layer's shard. */
/* A tensor the quantization changed (moeq_replaced_tensor) in place of the
 * source's, encoded in the source's dtype; a value that dtype does not hold
 * exactly is an error (the producer makes them exact). */
static moeq_code add_replaced(moeq_gptq_writer *w, shard *s, const char *shard_file, long idx,
                              const moeq_replaced_tensor *rep, moeq_error *err)
{
    const st_tensor *t = w->src->ckpt.tensors[idx];
    size_t count = t->nbytes / st_dtype_size(t->dtype);
    if (count != rep->count || (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: cannot write the changed %s (%zu values as %s, %zu expected)",
                         w->src->dir, t->name, rep->count, st_dtype_name(t->dtype), count);
    void *buf = malloc(t->nbytes ? t->nbytes : 1);
    if (!buf)
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory writing %s", t->name);
    for (size_t i = 0; i < count; i++) {
        float v = rep->data[i], back = v;
        if (t->dtype == ST_F32) {
            ((float *)buf)[i] = v;
        } else {
            uint16_t h = t->dtype == ST_F16 ? moeq_f32_to_f16(v) : moeq_f32_to_bf16(v);
            ((uint16_t *)buf)[i] = h;
            back = t->dtype == ST_F16 ? moeq_f16_to_f32(h) : moeq_bf16_to_f32(h);
        }
        if (back != v) {
            free(buf);
            return moeq_fail(err, MOEQ_ERR_NUMERIC,
                             "%s: the changed %s holds %.9g at %zu, which %s cannot store exactly",
                             w->src->dir, t->name, v, i, st_dtype_name(t->dtype));
        }
    }
    moeq_code rc = shard_own(s, buf, err);
    if (!rc)
        rc = add_tensor(w, s, shard_file, t->name, t->dtype, t->ndim, t->shape, buf, t->nbytes,
                        err);
    if (!rc)
        w->written[idx] = 1;
    return rc;
}

static const moeq_replaced_tensor *find_replaced(const moeq_layer_result *r,
                                                 moeq_tensor_role role, int expert)
{
    for (int i = 0; i < r->n_replaced; i++)
        if (r->replaced[i].role == role && r->replaced[i].expert == expert)
            return &r->replaced[i];
    return NULL;
}

static moeq_code add_layer_copies(moeq_gptq_writer *w, shard *s, const char *shard_file,
                                  const moeq_arch *a, int l, const moeq_layer_result *r,
                                  moeq_error *err)
{
    int n_exp = w->src->cfg.num_experts;
    for (int role = 0; role < MOEQ_T_COUNT; role++) {
        /* Only layer tensors; global ones (embeddings, heads, the MTP
         * block's fc and norms) go to the last shard. */
        if (!a->tensors[role] || !strstr(a->tensors[role], "{L}"))
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
                const moeq_replaced_tensor *rep =
                    bias ? NULL : find_replaced(r, (moeq_tensor_role)role, expert_role ? e : -1);
                if (idx >= 0 && !w->written[idx]) {
                    moeq_code rc = rep ? add_replaced(w, s, shard_file, idx, rep, err)
                                       : add_copy(w, s, shard_file, idx, err);
                    if (rc)
                        return rc;
                }
            }
        }
    }
    return MOEQ_OK;
}

/* The architecture naming r's tensors and the {L} it names them with: the
 * model's and r->layer, or the MTP block's view and its layer 0. */
static const moeq_arch *names_of(const moeq_gptq_writer *w, const moeq_layer_result *r,
                                 int *layer)
{
    *layer = r->names ? 0 : r->layer;
    return r->names ? r->names : &w->src->arch;
}

static cJSON *layer_report(const moeq_gptq_writer *w, const moeq_layer_result *r,
                           double seconds_write)
{
    int name_layer;
    const moeq_arch *a = names_of(w, r, &name_layer);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "layer", r->layer);
    if (r->layer >= w->src->cfg.num_layers)
        cJSON_AddBoolToObject(o, "mtp", 1); /* the MTP block after the last layer */
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
    if (w->opt->method == MOEQ_METHOD_AWQ && r->routing_changes >= 0)
        cJSON_AddNumberToObject(o, "awq_routing_changes", (double)r->routing_changes);
    cJSON *mods = cJSON_AddArrayToObject(o, "modules");
    for (int i = 0; i < r->n_linears; i++) {
        const moeq_quantized_linear *ql = &r->linears[i];
        char name[512];
        moeq_arch_tensor_name(a, ql->role, name_layer, ql->expert, name, sizeof name);
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "name", name);
        cJSON_AddNumberToObject(m, "loss", ql->loss);
        cJSON_AddNumberToObject(m, "damp", ql->damp);
        cJSON_AddNumberToObject(m, "tokens", (double)ql->tokens);
        if (ql->fallback)
            cJSON_AddBoolToObject(m, "all_token_fallback", 1);
        if (w->opt->method == MOEQ_METHOD_AWQ && ql->awq_alpha >= 0)
            cJSON_AddNumberToObject(m, "awq_alpha", ql->awq_alpha);
        cJSON_AddItemToArray(mods, m);
    }
    return o;
}

moeq_code moeq_gptq_writer_write_layer(void *writer, const moeq_layer_result *r,
                                       moeq_error *err)
{
    moeq_gptq_writer *w = writer;
    const double t0 = moeq_now_seconds();
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
    pack_job job = {w, r, s.packed};
    if (!rc && (rc = moeq_parallel_for(r->n_linears, 0, pack_one, &job, err)))
        moeq_wrap(err, "layer %d: ", r->layer);
    int experts = 0, name_layer;
    const moeq_arch *a = names_of(w, r, &name_layer);
    for (int i = 0; i < r->n_linears && !rc; i++) {
        rc = add_quantized(w, &s, file, a, &r->linears[i], name_layer, err);
        experts |= r->linears[i].expert >= 0;
    }
    /* Fused expert tensors of the source are replaced by the per-expert
     * GPTQ tensors (the names vLLM maps expert by expert). */
    moeq_tensor_role fused[2] = {MOEQ_T_EXPERTS_GATE_UP, MOEQ_T_EXPERTS_DOWN};
    for (int i = 0; i < 2 && experts; i++) {
        char name[512];
        long idx;
        if (!moeq_arch_tensor_name(a, fused[i], name_layer, -1, name, sizeof name) &&
            (idx = tensor_index(&w->src->ckpt, name)) >= 0)
            w->written[idx] = 1;
    }
    /* gpt-oss's and Llama-4's also have biases and MXFP4 blocks and scales. */
    if (!rc && experts && moeq_experts_fused(w->src))
        moeq_fused_experts_each_source(w->src, r->layer, mark_written, w);
    if (!rc)
        rc = add_layer_copies(w, &s, file, a, name_layer, r, err);
    if (!rc)
        rc = st_writer_write(&s.st, path, err);
    char point[32];
    snprintf(point, sizeof point, "layer-%d-shard", r->layer);
    moeq_failpoint(point, path); /* a test hook: a shard torn by a kill */
    if (!rc)
        cJSON_AddItemToArray(w->report_layers, layer_report(w, r, moeq_now_seconds() - t0));
    for (int i = 0; s.packed && i < r->n_linears; i++)
        moeq_packed_linear_free(&s.packed[i]);
    free(s.packed);
    free(s.names);
    shard_free(&s);
    return rc;
}

/* What moeq did, under quantization_config.meta (loaders ignore it). */
static void add_meta(const moeq_gptq_writer *w, cJSON *q)
{
    cJSON *meta = cJSON_AddObjectToObject(q, "meta");
    cJSON_AddStringToObject(meta, "quantizer", "moeq:" MOEQ_VERSION);
    cJSON_AddStringToObject(meta, "method", moeq_method_name(w->opt->method));
    cJSON_AddStringToObject(meta, "expert_calib", moeq_expert_calib_name(w->opt->expert_calib));
}

/* The part of a module name after its decoder layer ("layers.N."), or NULL
 * for a module outside the layers. */
static const char *name_in_block(const char *name)
{
    for (const char *p = strstr(name, "layers."); p; p = strstr(p + 1, "layers.")) {
        if (p != name && p[-1] != '.')
            continue;
        const char *d = p + strlen("layers.");
        if (*d < '0' || *d > '9')
            continue;
        while (*d >= '0' && *d <= '9')
            d++;
        if (*d == '.')
            return d + 1;
    }
    return NULL;
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Every module name quantized in some decoder layer, relative to its layer
 * ("self_attn.q_proj", "mlp.experts.3.gate_proj"), sorted and unique, as
 * GPTQConfig's modules_in_block_to_quantize (one list). transformers 4.x
 * loads GPTQ through optimum, whose GPTQQuantizer.convert_model replaces
 * every nn.Linear of every layer by a quantized module unless this list is
 * given, and then keeps only the names that end with one of its entries
 * (optimum gptq/quantizer.py, convert_model): without it a MoE router such
 * as mlp.gate, an nn.Linear moeq keeps in its dtype, would be built
 * quantized and left at random values (measured with transformers 4.57.6 and
 * optimum 2.0.0 on the demo model). Returns NULL when out of memory. */
static cJSON *modules_in_block(const cJSON *weight_map)
{
    static const char suffix[] = ".qweight";
    const size_t suffix_len = sizeof suffix - 1;
    int n = 0, cap = cJSON_GetArraySize(weight_map);
    char **names = calloc((size_t)cap + 1, sizeof *names);
    cJSON *outer = cJSON_CreateArray(), *list = cJSON_CreateArray();
    int ok = names && outer && list;
    const cJSON *t;
    cJSON_ArrayForEach(t, weight_map)
    {
        size_t len = strlen(t->string);
        const char *rel = name_in_block(t->string);
        if (!ok || !rel || len <= suffix_len || strcmp(t->string + len - suffix_len, suffix))
            continue;
        size_t rel_len = (size_t)(t->string + len - suffix_len - rel);
        if (!(names[n] = malloc(rel_len + 1))) {
            ok = 0;
            break;
        }
        memcpy(names[n], rel, rel_len);
        names[n++][rel_len] = '\0';
    }
    if (ok)
        qsort(names, (size_t)n, sizeof *names, compare_strings);
    for (int i = 0; ok && i < n; i++)
        if (i == 0 || strcmp(names[i], names[i - 1]))
            ok = cJSON_AddItemToArray(list, cJSON_CreateString(names[i]));
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (ok && cJSON_AddItemToArray(outer, list))
        return outer;
    cJSON_Delete(list); /* never attached to outer here */
    cJSON_Delete(outer);
    return NULL;
}

/* GPTQ v1 as AutoGPTQ/GPTQModel write it (quantize_config.json, the same
 * object under config.json's quantization_config). */
static cJSON *gptq_config(const moeq_gptq_writer *w)
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
    cJSON *in_block = modules_in_block(w->weight_map);
    if (in_block)
        cJSON_AddItemToObject(q, "modules_in_block_to_quantize", in_block);
    /* Linears a loader would otherwise expect quantized. vLLM builds one
     * GPTQ module per fused projection with the run's settings unless a
     * "dynamic" rule starting with "-:" matches its name (re.match; vLLM
     * quantization/utils/gptq_utils.py, get_dynamic_override). Its Gated
     * DeltaNet merges in_proj_b and in_proj_a (or reads the fused
     * in_proj_ba) into one "in_proj_ba" of 2 x linear_num_value_heads
     * outputs, split over tensor-parallel ranks: 8 per rank for Qwen3.5-35B
     * at TP 4, below the 64 output columns gptq_marlin needs per rank (vLLM
     * issue 35924), so moeq keeps them unquantized by default. */
    int linear_layers = 0;
    for (int l = 0; l < w->src->cfg.num_layers; l++)
        linear_layers += w->src->cfg.layer_is_linear[l];
    const moeq_arch *a = &w->src->arch;
    /* A next-n layer among the numbered ones (DeepSeek-V3, GLM-4.5:
     * model.layers.{N}.*, no keep_modules entry) copied as it is: vLLM
     * builds its decoder layer with the run's quantization (deepseek_mtp.py,
     * glm4_moe_mtp.py: mtp_block under the same prefix), so a rule excludes
     * it. */
    char nextn_rule[300] = "";
    if (!w->opt->quantize_mtp && a->mtp_prefix_to && !strstr(a->mtp_prefix_to, "{L}") &&
        moeq_mtp_present(w->src)) {
        size_t o = (size_t)snprintf(nextn_rule, sizeof nextn_rule, "-:");
        for (const char *p = a->mtp_prefix_to; *p && o + 4 < sizeof nextn_rule; p++) {
            if (*p == '.')
                nextn_rule[o++] = '\\';
            nextn_rule[o++] = *p;
        }
        snprintf(nextn_rule + o, sizeof nextn_rule - o, ".*");
    }
    if ((linear_layers && !w->opt->quantize_linear_ba) || a->n_keep_modules || nextn_rule[0]) {
        cJSON *dynamic = cJSON_AddObjectToObject(q, "dynamic");
        if (nextn_rule[0])
            cJSON_AddObjectToObject(dynamic, nextn_rule);
        if (linear_layers && !w->opt->quantize_linear_ba)
            cJSON_AddObjectToObject(dynamic, "-:.*linear_attn\\.in_proj_ba$");
        /* The architecture's other modules (vision tower, MTP layers),
         * copied as they are: "visual" excludes visual.* and x.visual.*. */
        for (int i = 0; i < a->n_keep_modules; i++) {
            char rule[160];
            size_t len = strlen(a->keep_modules[i]);
            if (w->opt->quantize_mtp && a->mtp_prefix_to &&
                !strncmp(a->mtp_prefix_to, a->keep_modules[i], len) &&
                a->mtp_prefix_to[len] == '.')
                continue; /* the MTP block's module, quantized with --quantize-mtp */
            snprintf(rule, sizeof rule, "-:(.*\\.)?%s\\..*", a->keep_modules[i]);
            cJSON_AddObjectToObject(dynamic, rule);
        }
        if (!cJSON_GetArraySize(dynamic))
            cJSON_DeleteItemFromObjectCaseSensitive(q, "dynamic");
    }
    return q;
}

/* AutoAWQ's GEMM config (transformers AwqConfig, vLLM AWQConfig and
 * AWQMarlinConfig read quant_method, bits, group_size, zero_point, version
 * and modules_to_not_convert). Zero points are always stored, so
 * zero_point is true for symmetric grids too (their zeros are 8). */
static cJSON *awq_config(const moeq_gptq_writer *w)
{
    const moeq_gptq_config *g = &w->opt->gptq;
    cJSON *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "quant_method", "awq");
    cJSON_AddNumberToObject(q, "bits", g->bits);
    cJSON_AddNumberToObject(q, "group_size", g->group_size);
    cJSON_AddBoolToObject(q, "zero_point", 1);
    cJSON_AddStringToObject(q, "version", "gemm");
    cJSON_AddNullToObject(q, "modules_to_not_convert");
    return q;
}

/* Adds the module name (the tensor name without ".weight") of role in
 * every layer that has it to list. */
static void add_module_names(const moeq_gptq_writer *w, moeq_tensor_role role, cJSON *list)
{
    for (int l = 0; l < w->src->cfg.num_layers; l++) {
        char name[512];
        if (moeq_arch_tensor_name(&w->src->arch, role, l, -1, name, sizeof name) ||
            tensor_index(&w->src->ckpt, name) < 0)
            continue;
        size_t len = strlen(name);
        if (len > 7 && !strcmp(name + len - 7, ".weight"))
            name[len - 7] = '\0';
        cJSON_AddItemToArray(list, cJSON_CreateString(name));
    }
}

/* compressed-tensors as llm-compressor writes a W{4,8}A16 group scheme
 * (compressed_tensors.config / quantization.quant_config): one config group
 * targeting Linear, and the Linear modules left unquantized in "ignore"
 * (lm_head, routers, shared-expert gates) so that loaders do not look for
 * packed tensors there. */
static cJSON *ct_config(const moeq_gptq_writer *w)
{
    const moeq_gptq_config *g = &w->opt->gptq;
    cJSON *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "quant_method", "compressed-tensors");
    cJSON_AddStringToObject(q, "format", "pack-quantized");
    cJSON_AddStringToObject(q, "quantization_status", "compressed");
    cJSON *group = cJSON_AddObjectToObject(cJSON_AddObjectToObject(q, "config_groups"), "group_0");
    cJSON *targets = cJSON_AddArrayToObject(group, "targets");
    cJSON_AddItemToArray(targets, cJSON_CreateString("Linear"));
    cJSON *wt = cJSON_AddObjectToObject(group, "weights");
    cJSON_AddNumberToObject(wt, "num_bits", g->bits);
    cJSON_AddStringToObject(wt, "type", "int");
    cJSON_AddBoolToObject(wt, "symmetric", g->sym);
    cJSON_AddStringToObject(wt, "strategy", g->group_size > 0 ? "group" : "channel");
    if (g->group_size > 0)
        cJSON_AddNumberToObject(wt, "group_size", g->group_size);
    else
        cJSON_AddNullToObject(wt, "group_size");
    cJSON_AddBoolToObject(wt, "dynamic", 0);
    /* Act-order with static groups leaves groups of consecutive columns:
     * compressed-tensors calls that actorder "weight" (no g_idx stored). */
    if (g->desc_act)
        cJSON_AddStringToObject(wt, "actorder", "weight");
    else
        cJSON_AddNullToObject(wt, "actorder");
    cJSON_AddNullToObject(group, "input_activations");
    cJSON_AddNullToObject(group, "output_activations");
    cJSON_AddStringToObject(group, "format", "pack-quantized");
    cJSON *ignore = cJSON_AddArrayToObject(q, "ignore");
    cJSON_AddItemToArray(ignore, cJSON_CreateString("lm_head"));
    add_module_names(w, MOEQ_T_ROUTER, ignore);
    add_module_names(w, MOEQ_T_SHARED_EXPERT_GATE, ignore);
    cJSON_AddNullToObject(q, "kv_cache_scheme");
    return q;
}

static cJSON *quantization_config(const moeq_gptq_writer *w)
{
    cJSON *q = w->opt->format == MOEQ_FORMAT_AWQ                  ? awq_config(w)
               : w->opt->format == MOEQ_FORMAT_COMPRESSED_TENSORS ? ct_config(w)
                                                                  : gptq_config(w);
    add_meta(w, q);
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
    /* AutoGPTQ's and GPTQModel's own copy of the config. */
    if (!rc && w->opt->format == MOEQ_FORMAT_GPTQ)
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
    shard_free(&s);
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
    /* The resume state has no place in the finished checkpoint. */
    char state[4200];
    snprintf(state, sizeof state, "%s/state.json", w->tmp_dir);
    unlink(state);
    for (int l = 0; l <= w->src->cfg.num_layers; l++) {
        hidden_name(w, l, state, sizeof state);
        unlink(state);
    }
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

int moeq_gptq_writer_keep_for_resume(moeq_gptq_writer *w)
{
    if (!w->tmp_dir)
        return 0;
    char path[4200];
    snprintf(path, sizeof path, "%s/state.json", w->tmp_dir);
    if (!moeq_file_exists(path))
        return 0;
    free(w->tmp_dir);
    w->tmp_dir = NULL;
    return 1;
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
    cJSON_Delete(w->fingerprint);
    free(w->resume_hidden);
    memset(w, 0, sizeof *w);
}
