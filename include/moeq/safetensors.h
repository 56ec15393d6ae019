/* safetensors.h: reader and writer for Hugging Face safetensors files and
 * checkpoint directories, header-only in the stb style.
 *
 * Declarations are always visible. Exactly one translation unit defines
 * MOEQ_SAFETENSORS_IMPLEMENTATION before including this file to compile the
 * implementation (in moeq that is src/io/safetensors.c). It needs only
 * moeq/moeq.h (moeq_error, moeq_fail) and cJSON.
 *
 * Format (https://huggingface.co/docs/safetensors, "Format"): an 8-byte
 * little-endian unsigned header length N, N bytes of UTF-8 JSON, then the
 * byte buffer. The JSON object maps each tensor name to
 * {"dtype", "shape", "data_offsets": [begin, end]} with offsets relative to
 * the start of the byte buffer, plus an optional "__metadata__" object of
 * string to string. The buffer must be entirely indexed: no holes, no
 * overlaps. Tensor data is little-endian and row-major.
 *
 * A file is memory-mapped read-only and its header fully validated at open,
 * so every st_tensor handed out describes bytes that exist. Tensor data
 * pointers are NOT necessarily aligned (the header length need not be a
 * multiple of 8 in files written by other tools): read elements with
 * memcpy, as common/dtype.c does. */
#ifndef MOEQ_SAFETENSORS_H
#define MOEQ_SAFETENSORS_H

#include "moeq/moeq.h"

#include <stddef.h>
#include <stdint.h>

enum {
    ST_MAX_DIMS = 8,
    /* Same cap as the reference implementation: a larger header is far more
     * likely a corrupt length than a real checkpoint. */
    ST_MAX_HEADER_BYTES = 100000000,
};

/* Element types, named as in the safetensors spec. Sub-byte types (F4, F6_*)
 * are not supported: they have no whole-byte element size. */
typedef enum st_dtype {
    ST_BOOL,
    ST_U8,
    ST_I8,
    ST_U16,
    ST_I16,
    ST_F16,
    ST_BF16,
    ST_U32,
    ST_I32,
    ST_F32,
    ST_U64,
    ST_I64,
    ST_F64,
    ST_F8_E4M3,
    ST_F8_E5M2,
    ST_F8_E8M0,
    ST_DTYPE_COUNT
} st_dtype;

/* Looks up a spec name ("BF16", "F8_E4M3", ...); returns 1 and sets *out when
 * known, 0 otherwise. Names are case-sensitive, as in the spec. */
int st_dtype_from_name(const char *name, st_dtype *out);
/* The spec name, or "?" for a value outside the enum. */
const char *st_dtype_name(st_dtype dtype);
/* Bytes per element, or 0 for a value outside the enum. */
size_t st_dtype_size(st_dtype dtype);

struct st_file;

typedef struct st_tensor {
    const char *name;             /* owned by the file */
    st_dtype dtype;
    int ndim;                     /* 0 for a scalar */
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;                /* product(shape) * st_dtype_size(dtype) */
    size_t data_offset;           /* begin of data_offsets, within the byte buffer */
    const void *data;             /* into the map; unaligned; valid until close */
    const struct st_file *file;   /* the file it lives in, for messages */
} st_tensor;

typedef struct st_metadata_entry {
    char *key;
    char *value;
} st_metadata_entry;

typedef struct st_file {
    char *path;
    void *map;                    /* the whole file, PROT_READ */
    size_t map_bytes;
    size_t header_bytes;          /* N, the JSON length */
    const unsigned char *data;    /* the byte buffer: map + 8 + N */
    size_t data_bytes;
    size_t n_tensors;
    st_tensor *tensors;           /* sorted by name */
    size_t n_metadata;
    st_metadata_entry *metadata;  /* in header order */
} st_file;

/* Maps path and validates its header. On failure *f is left zeroed (closing
 * it is harmless) and err names the path and, where there is one, the tensor
 * and field: MOEQ_ERR_NOT_FOUND (no such file), MOEQ_ERR_IO, MOEQ_ERR_OOM or
 * MOEQ_ERR_FORMAT. *f must not move while open: tensors point back to it. */
moeq_code st_file_open(st_file *f, const char *path, moeq_error *err);
void st_file_close(st_file *f);
/* Binary search by name; NULL when absent. */
const st_tensor *st_file_find(const st_file *f, const char *name);
/* The "__metadata__" value for key, or NULL. */
const char *st_file_metadata(const st_file *f, const char *key);

/* A checkpoint directory: one or more shards seen as one set of tensors. */
typedef struct st_checkpoint {
    char *dir;
    size_t n_files;
    st_file *files;               /* shards in sorted file-name order */
    size_t n_tensors;
    const st_tensor **tensors;    /* every tensor of every shard, sorted by name */
} st_checkpoint;

/* Opens dir: the shards listed in dir/model.safetensors.index.json when it
 * exists (each mapped tensor must be in its shard; shard names must be plain
 * file names), else dir/model.safetensors, else every dir/ *.safetensors in
 * sorted order. A tensor name in two shards is an error. Errors:
 * MOEQ_ERR_NOT_FOUND for a missing directory or shard, MOEQ_ERR_FORMAT for
 * bad headers, a bad index or a tensor missing from or duplicated across
 * shards, MOEQ_ERR_IO, MOEQ_ERR_OOM. On failure *c is left zeroed. */
moeq_code st_checkpoint_open(st_checkpoint *c, const char *dir, moeq_error *err);
void st_checkpoint_close(st_checkpoint *c);
const st_tensor *st_checkpoint_find(const st_checkpoint *c, const char *name);

/* Collects tensors, then writes one file. Data stays owned by the caller and
 * must stay valid until st_writer_write returns. */
typedef struct st_writer_entry {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
    size_t nbytes;
} st_writer_entry;

typedef struct st_writer {
    size_t n_entries, cap_entries;
    st_writer_entry *entries;     /* in the order added, which is the data order */
    size_t n_slots;               /* name hash table: entry index + 1, 0 = empty */
    size_t *slots;
    size_t n_metadata, cap_metadata;
    st_metadata_entry *metadata;
} st_writer;

void st_writer_init(st_writer *w);
/* Adds a tensor. MOEQ_ERR_INVALID_ARG for a duplicate or reserved name, a bad
 * dtype, ndim outside 0..ST_MAX_DIMS, a negative dimension, or nbytes that is
 * not product(shape) * dtype size. data may be NULL when nbytes is 0. */
moeq_code st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim,
                        const int64_t *shape, const void *data, size_t nbytes, moeq_error *err);
/* Sets a "__metadata__" string; a key set twice keeps the last value. */
moeq_code st_writer_set_metadata(st_writer *w, const char *key, const char *value,
                                 moeq_error *err);
/* Writes header (padded with spaces to a multiple of 8 bytes) and data in the
 * order added, flushes, fsyncs and closes. A failed write removes path. */
moeq_code st_writer_write(const st_writer *w, const char *path, moeq_error *err);
void st_writer_free(st_writer *w);

#endif /* MOEQ_SAFETENSORS_H */

#ifdef MOEQ_SAFETENSORS_IMPLEMENTATION
#ifndef MOEQ_SAFETENSORS_IMPLEMENTED
#define MOEQ_SAFETENSORS_IMPLEMENTED

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader hands out raw bytes"
#endif

/* ---- dtypes ---- */

static const struct {
    const char *name;
    size_t size;
} st__dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 1},     [ST_U8] = {"U8", 1},   [ST_I8] = {"I8", 1},
    [ST_U16] = {"U16", 2},       [ST_I16] = {"I16", 2}, [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2},     [ST_U32] = {"U32", 4}, [ST_I32] = {"I32", 4},
    [ST_F32] = {"F32", 4},       [ST_U64] = {"U64", 8}, [ST_I64] = {"I64", 8},
    [ST_F64] = {"F64", 8},       [ST_F8_E4M3] = {"F8_E4M3", 1},
    [ST_F8_E5M2] = {"F8_E5M2", 1}, [ST_F8_E8M0] = {"F8_E8M0", 1},
};

int st_dtype_from_name(const char *name, st_dtype *out)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        if (strcmp(name, st__dtypes[i].name) == 0) {
            *out = (st_dtype)i;
            return 1;
        }
    }
    return 0;
}

const char *st_dtype_name(st_dtype dtype)
{
    return (unsigned)dtype < ST_DTYPE_COUNT ? st__dtypes[dtype].name : "?";
}

size_t st_dtype_size(st_dtype dtype)
{
    return (unsigned)dtype < ST_DTYPE_COUNT ? st__dtypes[dtype].size : 0;
}

/* product(shape) * elem_bytes into *out; 0 on overflow of size_t. */
static int st__shape_bytes(int ndim, const int64_t *shape, size_t elem_bytes, size_t *out)
{
    size_t n = elem_bytes;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > SIZE_MAX)
            return 0;
        if (__builtin_mul_overflow(n, (size_t)shape[i], &n))
            return 0;
    }
    *out = n;
    return 1;
}

/* ---- small helpers ---- */

static char *st__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* dir + "/" + name, malloc'ed; NULL when out of memory. */
static char *st__join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + 1 + b + 1);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static int st__cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A JSON number that is a non-negative integer cJSON holds exactly (cJSON
 * parses numbers to double, exact up to 2^53). */
static int st__json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d > 9007199254740992.0 || floor(d) != d)
        return 0;
    *out = (uint64_t)d;
    return 1;
}

/* ---- reader ---- */

static int st__cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int st__cmp_tensor_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->data_offset != y->data_offset)
        return x->data_offset < y->data_offset ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

static moeq_code st__parse_metadata(st_file *f, const cJSON *obj, moeq_error *err)
{
    if (!cJSON_IsObject(obj))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: safetensors header: \"__metadata__\" is not an object", f->path);
    size_t n = (size_t)cJSON_GetArraySize(obj);
    f->metadata = calloc(n ? n : 1, sizeof *f->metadata);
    if (!f->metadata)
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory reading __metadata__", f->path);
    for (const cJSON *v = obj->child; v; v = v->next) {
        if (!cJSON_IsString(v))
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "%s: safetensors header: \"__metadata__\" value for key \"%s\" is "
                             "not a string",
                             f->path, v->string);
        st_metadata_entry *e = &f->metadata[f->n_metadata];
        e->key = st__strdup(v->string);
        e->value = e->key ? st__strdup(v->valuestring) : NULL;
        if (e->key)
            f->n_metadata++;
        if (!e->value)
            return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory reading __metadata__",
                             f->path);
    }
    return MOEQ_OK;
}

/* Fills t from one header entry; t->name is already set. */
static moeq_code st__parse_entry(st_file *f, const cJSON *item, st_tensor *t, moeq_error *err)
{
    const char *p = f->path, *n = t->name;
    if (!cJSON_IsObject(item))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: safetensors header: tensor \"%s\" is not an object", p, n);

    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    if (!cJSON_IsString(dtype))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: safetensors header: tensor \"%s\" has no string \"dtype\"", p, n);
    if (!st_dtype_from_name(dtype->valuestring, &t->dtype))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: safetensors header: tensor \"%s\" has unknown dtype \"%s\"", p, n,
                         dtype->valuestring);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    if (!cJSON_IsArray(shape))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: safetensors header: tensor \"%s\" has no array \"shape\"", p, n);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS)
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: safetensors header: tensor \"%s\" \"shape\" has %d dimensions, "
                         "more than %d",
                         p, n, ndim, ST_MAX_DIMS);
    t->ndim = ndim;
    int d = 0;
    for (const cJSON *v = shape->child; v; v = v->next, d++) {
        uint64_t dim;
        if (!st__json_uint(v, &dim) || dim > INT64_MAX)
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "%s: safetensors header: tensor \"%s\" \"shape\"[%d] is not a "
                             "non-negative integer",
                             p, n, d);
        t->shape[d] = (int64_t)dim;
    }

    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    uint64_t begin, end;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        !st__json_uint(offs->child, &begin) || !st__json_uint(offs->child->next, &end))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: safetensors header: tensor \"%s\" \"data_offsets\" is not "
                         "[begin, end] of non-negative integers",
                         p, n);
    if (begin > end)
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: safetensors header: tensor \"%s\" \"data_offsets\" begin %llu > "
                         "end %llu",
                         p, n, (unsigned long long)begin, (unsigned long long)end);
    if (end > f->data_bytes)
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: safetensors header: tensor \"%s\" \"data_offsets\" end %llu is "
                         "past the %zu-byte data buffer (truncated file?)",
                         p, n, (unsigned long long)end, f->data_bytes);

    size_t want;
    if (!st__shape_bytes(t->ndim, t->shape, st_dtype_size(t->dtype), &want))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: safetensors header: tensor \"%s\" \"shape\" byte size overflows",
                         p, n);
    if (want != end - begin)
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: safetensors header: tensor \"%s\" \"shape\" x %s needs %zu bytes "
                         "but \"data_offsets\" spans %llu",
                         p, n, st_dtype_name(t->dtype), want,
                         (unsigned long long)(end - begin));
    t->nbytes = want;
    t->data_offset = (size_t)begin;
    t->data = f->data + begin;
    t->file = f;
    return MOEQ_OK;
}

/* The spec requires the byte buffer to be entirely indexed: sorted by
 * offset, each range starts where the previous ended, and the last ends at
 * the end of the buffer. */
static moeq_code st__check_coverage(st_file *f, moeq_error *err)
{
    const st_tensor **by_offset = malloc((f->n_tensors ? f->n_tensors : 1) * sizeof *by_offset);
    if (!by_offset)
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory checking data_offsets", f->path);
    for (size_t i = 0; i < f->n_tensors; i++)
        by_offset[i] = &f->tensors[i];
    qsort(by_offset, f->n_tensors, sizeof *by_offset, st__cmp_tensor_offset);
    moeq_code rc = MOEQ_OK;
    size_t covered = 0;
    const st_tensor *prev = NULL;
    for (size_t i = 0; i < f->n_tensors && !rc; i++) {
        const st_tensor *t = by_offset[i];
        if (t->data_offset < covered)
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "%s: safetensors header: tensor \"%s\" data_offsets [%zu, %zu] overlap "
                           "tensor \"%s\" ending at %zu",
                           f->path, t->name, t->data_offset, t->data_offset + t->nbytes,
                           prev->name, covered);
        else if (t->data_offset > covered)
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "%s: safetensors header: bytes [%zu, %zu) before tensor \"%s\" belong "
                           "to no tensor (hole in the data buffer)",
                           f->path, covered, t->data_offset, t->name);
        covered = t->data_offset + t->nbytes;
        prev = t;
    }
    if (!rc && covered != f->data_bytes)
        rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                       "%s: safetensors header: bytes [%zu, %zu) at the end of the data buffer "
                       "belong to no tensor",
                       f->path, covered, f->data_bytes);
    free(by_offset);
    return rc;
}

static moeq_code st__parse_header(st_file *f, const char *json, moeq_error *err)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, f->header_bytes, &end, 0);
    if (!root) /* on failure cJSON points end at the error */
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: safetensors header is not valid JSON (near byte %zu)", f->path,
                         (size_t)(end ? end - json : 0));
    moeq_code rc = MOEQ_OK;
    for (const char *c = end; c < json + f->header_bytes && !rc; c++)
        if (*c != ' ' && *c != '\t' && *c != '\n' && *c != '\r')
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "%s: safetensors header has bytes after the JSON object", f->path);
    if (!rc && !cJSON_IsObject(root))
        rc = moeq_fail(err, MOEQ_ERR_FORMAT, "%s: safetensors header is not a JSON object",
                       f->path);
    size_t n = 0;
    int metadata_seen = 0;
    for (const cJSON *item = rc ? NULL : root->child; item; item = item->next)
        n += strcmp(item->string, "__metadata__") != 0;
    if (!rc && !(f->tensors = calloc(n ? n : 1, sizeof *f->tensors)))
        rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory for %zu tensors", f->path, n);
    for (const cJSON *item = rc ? NULL : root->child; item && !rc; item = item->next) {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (metadata_seen++)
                rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                               "%s: safetensors header: \"__metadata__\" appears twice", f->path);
            else
                rc = st__parse_metadata(f, item, err);
            continue;
        }
        st_tensor *t = &f->tensors[f->n_tensors];
        if (!(t->name = st__strdup(item->string))) {
            rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", f->path);
            break;
        }
        f->n_tensors++;
        rc = st__parse_entry(f, item, t, err);
    }
    cJSON_Delete(root);
    if (rc)
        return rc;

    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, st__cmp_tensor_name);
    for (size_t i = 1; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "%s: safetensors header: tensor \"%s\" appears more than once",
                             f->path, f->tensors[i].name);
    return st__check_coverage(f, err);
}

moeq_code st_file_open(st_file *f, const char *path, moeq_error *err)
{
    memset(f, 0, sizeof *f);
    if (!(f->path = st__strdup(path)))
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", path);
    moeq_code rc = MOEQ_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0) {
        rc = moeq_fail(err, errno == ENOENT ? MOEQ_ERR_NOT_FOUND : MOEQ_ERR_IO,
                       "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = moeq_fail(err, MOEQ_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    if (st.st_size < 8) {
        rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                       "%s: file is %lld bytes, too short for the 8-byte safetensors header "
                       "length",
                       path, (long long)st.st_size);
        goto fail;
    }
    f->map_bytes = (size_t)st.st_size;
    f->map = mmap(NULL, f->map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        rc = moeq_fail(err, MOEQ_ERR_IO, "%s: cannot mmap: %s", path, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;

    const unsigned char *bytes = f->map;
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; i--)
        header_bytes = header_bytes << 8 | bytes[i];
    if (header_bytes > f->map_bytes - 8) {
        rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                       "%s: safetensors header length %llu is beyond the end of the file "
                       "(%zu bytes follow the length)",
                       path, (unsigned long long)header_bytes, f->map_bytes - 8);
        goto fail;
    }
    if (header_bytes > ST_MAX_HEADER_BYTES) {
        rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                       "%s: safetensors header length %llu exceeds the %d-byte limit", path,
                       (unsigned long long)header_bytes, ST_MAX_HEADER_BYTES);
        goto fail;
    }
    f->header_bytes = (size_t)header_bytes;
    f->data = bytes + 8 + f->header_bytes;
    f->data_bytes = f->map_bytes - 8 - f->header_bytes;
    /* cJSON wants a terminated string; the map has none. */
    char *json = malloc(f->header_bytes + 1);
    if (!json) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory for the header", path);
        goto fail;
    }
    memcpy(json, bytes + 8, f->header_bytes);
    json[f->header_bytes] = '\0';
    rc = st__parse_header(f, json, err);
    free(json);
    if (rc)
        goto fail;
    return MOEQ_OK;
fail:
    if (fd >= 0)
        close(fd);
    st_file_close(f);
    return rc;
}

void st_file_close(st_file *f)
{
    if (f->map)
        munmap(f->map, f->map_bytes);
    for (size_t i = 0; i < f->n_tensors; i++)
        free((char *)f->tensors[i].name);
    free(f->tensors);
    for (size_t i = 0; i < f->n_metadata; i++) {
        free(f->metadata[i].key);
        free(f->metadata[i].value);
    }
    free(f->metadata);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_file_find(const st_file *f, const char *name)
{
    size_t lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->tensors[mid].name);
        if (c == 0)
            return &f->tensors[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *st_file_metadata(const st_file *f, const char *key)
{
    for (size_t i = 0; i < f->n_metadata; i++)
        if (strcmp(f->metadata[i].key, key) == 0)
            return f->metadata[i].value;
    return NULL;
}

/* ---- checkpoint directories ---- */

enum { ST__MAX_INDEX_BYTES = 256 * 1024 * 1024 };

static moeq_code st__read_text(const char *path, char **out, moeq_error *err)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return moeq_fail(err, errno == ENOENT ? MOEQ_ERR_NOT_FOUND : MOEQ_ERR_IO,
                         "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > ST__MAX_INDEX_BYTES) {
        fclose(fp);
        return moeq_fail(err, MOEQ_ERR_IO, "%s: not a regular file of at most %d bytes", path,
                         ST__MAX_INDEX_BYTES);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(fp);
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", path);
    }
    size_t got = fread(buf, 1, n, fp);
    int bad = ferror(fp) || got != n;
    fclose(fp);
    if (bad) {
        free(buf);
        return moeq_fail(err, MOEQ_ERR_IO, "%s: read failed", path);
    }
    buf[n] = '\0';
    *out = buf;
    return MOEQ_OK;
}

/* Opens shard names[i] of dir into c->files[i]; names are sorted. */
static moeq_code st__open_shards(st_checkpoint *c, char *const *names, size_t n,
                                 moeq_error *err)
{
    if (!(c->files = calloc(n ? n : 1, sizeof *c->files)))
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", c->dir);
    for (size_t i = 0; i < n; i++) {
        char *path = st__join(c->dir, names[i]);
        if (!path)
            return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", c->dir);
        moeq_code rc = st_file_open(&c->files[i], path, err);
        free(path);
        if (rc)
            return rc;
        c->n_files++;
    }
    return MOEQ_OK;
}

static int st__cmp_tensor_ptr_name(const void *a, const void *b)
{
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

/* Every tensor of every shard, sorted by name; a name in two shards fails. */
static moeq_code st__gather_tensors(st_checkpoint *c, moeq_error *err)
{
    size_t total = 0;
    for (size_t i = 0; i < c->n_files; i++)
        total += c->files[i].n_tensors;
    if (!(c->tensors = malloc((total ? total : 1) * sizeof *c->tensors)))
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory for %zu tensors", c->dir, total);
    for (size_t i = 0; i < c->n_files; i++)
        for (size_t j = 0; j < c->files[i].n_tensors; j++)
            c->tensors[c->n_tensors++] = &c->files[i].tensors[j];
    qsort(c->tensors, c->n_tensors, sizeof *c->tensors, st__cmp_tensor_ptr_name);
    for (size_t i = 1; i < c->n_tensors; i++)
        if (strcmp(c->tensors[i - 1]->name, c->tensors[i]->name) == 0)
            return moeq_fail(err, MOEQ_ERR_FORMAT, "%s: tensor \"%s\" is in two shards: %s and %s",
                             c->dir, c->tensors[i]->name, c->tensors[i - 1]->file->path,
                             c->tensors[i]->file->path);
    return MOEQ_OK;
}

/* A shard name from an index must name a file in dir itself. */
static int st__plain_file_name(const char *s)
{
    return *s && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") && strcmp(s, "..");
}

static moeq_code st__open_index(st_checkpoint *c, const char *index_path, moeq_error *err)
{
    char *text = NULL, **shards = NULL, **names = NULL;
    cJSON *root = NULL;
    moeq_code rc = st__read_text(index_path, &text, err);
    if (rc)
        return rc;
    root = cJSON_Parse(text);
    if (!root) {
        rc = moeq_fail(err, MOEQ_ERR_FORMAT, "%s: not valid JSON", index_path);
        goto done;
    }
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        rc = moeq_fail(err, MOEQ_ERR_FORMAT, "%s: \"weight_map\" is missing or not an object",
                       index_path);
        goto done;
    }
    size_t n = (size_t)cJSON_GetArraySize(map), n_shards = 0;
    shards = malloc((n ? n : 1) * sizeof *shards);
    names = malloc((n ? n : 1) * sizeof *names);
    if (!shards || !names) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", index_path);
        goto done;
    }
    size_t k = 0;
    for (const cJSON *v = map->child; v; v = v->next, k++) {
        if (!cJSON_IsString(v) || !st__plain_file_name(v->valuestring)) {
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "%s: weight_map: tensor \"%s\" maps to %s%s%s, not a plain file name "
                           "in the checkpoint directory",
                           index_path, v->string, cJSON_IsString(v) ? "\"" : "a non-string",
                           cJSON_IsString(v) ? v->valuestring : "", cJSON_IsString(v) ? "\"" : "");
            goto done;
        }
        names[k] = v->string;
        shards[k] = v->valuestring;
    }
    qsort(names, n, sizeof *names, st__cmp_str);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) {
            rc = moeq_fail(err, MOEQ_ERR_FORMAT, "%s: weight_map: tensor \"%s\" appears twice",
                           index_path, names[i]);
            goto done;
        }
    qsort(shards, n, sizeof *shards, st__cmp_str);
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(shards[i], shards[n_shards - 1]) != 0)
            shards[n_shards++] = shards[i];

    if ((rc = st__open_shards(c, shards, n_shards, err))) {
        /* Name one tensor that needs the shard that failed to open. */
        for (const cJSON *v = map->child; v; v = v->next)
            if (strcmp(v->valuestring, shards[c->n_files]) == 0) {
                moeq_wrap(err, "%s: weight_map: tensor \"%s\" is in shard \"%s\": ", index_path,
                          v->string, shards[c->n_files]);
                break;
            }
        goto done;
    }
    for (const cJSON *v = map->child; v; v = v->next) {
        const char **hit = bsearch(&v->valuestring, shards, n_shards, sizeof *shards, st__cmp_str);
        const st_file *shard = &c->files[(char **)hit - shards];
        if (!st_file_find(shard, v->string)) {
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "%s: weight_map: tensor \"%s\" is not in its shard \"%s\"", index_path,
                           v->string, v->valuestring);
            goto done;
        }
    }
done:
    free(names);
    free(shards);
    cJSON_Delete(root);
    free(text);
    return rc;
}

static int st__has_suffix(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a > b && strcmp(s + a - b, suffix) == 0;
}

/* Every regular dir/ *.safetensors (not hidden), sorted. */
static moeq_code st__open_all(st_checkpoint *c, moeq_error *err)
{
    DIR *d = opendir(c->dir);
    if (!d)
        return moeq_fail(err, errno == ENOENT ? MOEQ_ERR_NOT_FOUND : MOEQ_ERR_IO,
                         "%s: cannot open directory: %s", c->dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    moeq_code rc = MOEQ_OK;
    for (struct dirent *e; !rc && (e = readdir(d));) {
        if (e->d_name[0] == '.' || !st__has_suffix(e->d_name, ".safetensors"))
            continue;
        char *path = st__join(c->dir, e->d_name);
        struct stat st;
        int regular = path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
        free(path);
        if (!regular)
            continue;
        if (n == cap) {
            size_t new_cap = cap ? 2 * cap : 16;
            char **grown = realloc(names, new_cap * sizeof *names);
            if (!grown) {
                rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", c->dir);
                break;
            }
            names = grown;
            cap = new_cap;
        }
        if (!(names[n] = st__strdup(e->d_name)))
            rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", c->dir);
        else
            n++;
    }
    closedir(d);
    if (!rc && n == 0)
        rc = moeq_fail(err, MOEQ_ERR_NOT_FOUND,
                       "%s: no model.safetensors.index.json, model.safetensors or *.safetensors "
                       "file",
                       c->dir);
    if (!rc) {
        qsort(names, n, sizeof *names, st__cmp_str);
        rc = st__open_shards(c, names, n, err);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

moeq_code st_checkpoint_open(st_checkpoint *c, const char *dir, moeq_error *err)
{
    memset(c, 0, sizeof *c);
    if (!(c->dir = st__strdup(dir)))
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", dir);
    char *index = st__join(dir, "model.safetensors.index.json");
    char *single = st__join(dir, "model.safetensors");
    moeq_code rc = MOEQ_OK;
    struct stat st;
    if (!index || !single)
        rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", dir);
    else if (stat(index, &st) == 0)
        rc = st__open_index(c, index, err);
    else if (stat(single, &st) == 0) {
        char name[] = "model.safetensors", *names[] = {name};
        rc = st__open_shards(c, names, 1, err);
    } else
        rc = st__open_all(c, err);
    free(index);
    free(single);
    if (!rc)
        rc = st__gather_tensors(c, err);
    if (rc)
        st_checkpoint_close(c);
    return rc;
}

void st_checkpoint_close(st_checkpoint *c)
{
    for (size_t i = 0; i < c->n_files; i++)
        st_file_close(&c->files[i]);
    free(c->files);
    free(c->tensors);
    free(c->dir);
    memset(c, 0, sizeof *c);
}

const st_tensor *st_checkpoint_find(const st_checkpoint *c, const char *name)
{
    size_t lo = 0, hi = c->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int cmp = strcmp(name, c->tensors[mid]->name);
        if (cmp == 0)
            return c->tensors[mid];
        if (cmp < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* ---- writer ---- */

void st_writer_init(st_writer *w)
{
    memset(w, 0, sizeof *w);
}

/* FNV-1a: names are short and the table only guards against duplicates. */
static size_t st__hash(const char *s)
{
    uint64_t h = 14695981039346656037ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (size_t)h;
}

/* The slot holding name, or the empty slot where it would go. */
static size_t *st__slot(const st_writer *w, const char *name)
{
    size_t i = st__hash(name) & (w->n_slots - 1);
    while (w->slots[i] && strcmp(w->entries[w->slots[i] - 1].name, name) != 0)
        i = (i + 1) & (w->n_slots - 1);
    return &w->slots[i];
}

/* Keeps the table at most half full so probing stays short. */
static int st__grow_slots(st_writer *w)
{
    if (2 * (w->n_entries + 1) <= w->n_slots)
        return 1;
    size_t n = w->n_slots ? 2 * w->n_slots : 64;
    size_t *slots = calloc(n, sizeof *slots);
    if (!slots)
        return 0;
    free(w->slots);
    w->slots = slots;
    w->n_slots = n;
    for (size_t i = 0; i < w->n_entries; i++)
        *st__slot(w, w->entries[i].name) = i + 1;
    return 1;
}

moeq_code st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim,
                        const int64_t *shape, const void *data, size_t nbytes, moeq_error *err)
{
    if (!name || !*name || strcmp(name, "__metadata__") == 0)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "safetensors writer: bad tensor name \"%s\"",
                         name ? name : "(null)");
    if ((unsigned)dtype >= ST_DTYPE_COUNT)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "safetensors writer: tensor \"%s\": dtype %d is not an st_dtype", name,
                         (int)dtype);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "safetensors writer: tensor \"%s\": ndim %d is outside 0..%d", name, ndim,
                         ST_MAX_DIMS);
    size_t want;
    if (!st__shape_bytes(ndim, shape, st_dtype_size(dtype), &want))
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "safetensors writer: tensor \"%s\": shape has a negative dimension or "
                         "its byte size overflows",
                         name);
    if (want != nbytes)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "safetensors writer: tensor \"%s\": nbytes %zu != %zu from shape x %s",
                         name, nbytes, want, st_dtype_name(dtype));
    if (nbytes && !data)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "safetensors writer: tensor \"%s\": NULL data for %zu bytes", name,
                         nbytes);
    if (!st__grow_slots(w))
        return moeq_fail(err, MOEQ_ERR_OOM, "safetensors writer: out of memory");
    size_t *slot = st__slot(w, name);
    if (*slot)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "safetensors writer: tensor \"%s\" was already added", name);
    if (w->n_entries == w->cap_entries) {
        size_t cap = w->cap_entries ? 2 * w->cap_entries : 64;
        st_writer_entry *grown = realloc(w->entries, cap * sizeof *grown);
        if (!grown)
            return moeq_fail(err, MOEQ_ERR_OOM, "safetensors writer: out of memory");
        w->entries = grown;
        w->cap_entries = cap;
    }
    st_writer_entry *e = &w->entries[w->n_entries];
    memset(e, 0, sizeof *e);
    if (!(e->name = st__strdup(name)))
        return moeq_fail(err, MOEQ_ERR_OOM, "safetensors writer: out of memory");
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        e->shape[i] = shape[i];
    e->data = data;
    e->nbytes = nbytes;
    *slot = ++w->n_entries;
    return MOEQ_OK;
}

moeq_code st_writer_set_metadata(st_writer *w, const char *key, const char *value,
                                 moeq_error *err)
{
    char *v = st__strdup(value);
    if (!v)
        return moeq_fail(err, MOEQ_ERR_OOM, "safetensors writer: out of memory");
    for (size_t i = 0; i < w->n_metadata; i++)
        if (strcmp(w->metadata[i].key, key) == 0) {
            free(w->metadata[i].value);
            w->metadata[i].value = v;
            return MOEQ_OK;
        }
    if (w->n_metadata == w->cap_metadata) {
        size_t cap = w->cap_metadata ? 2 * w->cap_metadata : 8;
        st_metadata_entry *grown = realloc(w->metadata, cap * sizeof *grown);
        if (!grown) {
            free(v);
            return moeq_fail(err, MOEQ_ERR_OOM, "safetensors writer: out of memory");
        }
        w->metadata = grown;
        w->cap_metadata = cap;
    }
    char *k = st__strdup(key);
    if (!k) {
        free(v);
        return moeq_fail(err, MOEQ_ERR_OOM, "safetensors writer: out of memory");
    }
    w->metadata[w->n_metadata++] = (st_metadata_entry){k, v};
    return MOEQ_OK;
}

/* A growable byte string; ok drops to 0 on the first failed allocation. */
typedef struct st__buf {
    char *p;
    size_t len, cap;
    int ok;
} st__buf;

static void st__put(st__buf *b, const char *s, size_t n)
{
    if (!b->ok)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->ok = 0;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void st__putf(st__buf *b, const char *fmt, unsigned long long v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, fmt, v);
    st__put(b, tmp, (size_t)n);
}

/* A JSON string literal (RFC 8259 section 7): quote, backslash and control
 * characters escaped; other bytes, UTF-8 included, copied. */
static void st__put_json_string(st__buf *b, const char *s)
{
    st__put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            char esc[2] = {'\\', (char)ch};
            st__put(b, esc, 2);
        } else if (ch < 0x20) {
            st__putf(b, "\\u%04llx", ch);
        } else {
            st__put(b, s, 1);
        }
    }
    st__put(b, "\"", 1);
}

/* The header JSON, padded with spaces so that the data starts at a multiple
 * of 8 bytes, as the Python library writes it. */
static int st__build_header(const st_writer *w, st__buf *b)
{
    st__put(b, "{", 1);
    if (w->n_metadata) {
        st__put(b, "\"__metadata__\":{", 16);
        for (size_t i = 0; i < w->n_metadata; i++) {
            if (i)
                st__put(b, ",", 1);
            st__put_json_string(b, w->metadata[i].key);
            st__put(b, ":", 1);
            st__put_json_string(b, w->metadata[i].value);
        }
        st__put(b, "}", 1);
    }
    size_t offset = 0;
    for (size_t i = 0; i < w->n_entries; i++) {
        const st_writer_entry *e = &w->entries[i];
        if (i || w->n_metadata)
            st__put(b, ",", 1);
        st__put_json_string(b, e->name);
        st__put(b, ":{\"dtype\":", 10);
        st__put_json_string(b, st_dtype_name(e->dtype));
        st__put(b, ",\"shape\":[", 10);
        for (int d = 0; d < e->ndim; d++)
            st__putf(b, d ? ",%llu" : "%llu", (unsigned long long)e->shape[d]);
        st__putf(b, "],\"data_offsets\":[%llu,", offset);
        if (__builtin_add_overflow(offset, e->nbytes, &offset))
            return 0;
        st__putf(b, "%llu]}", offset);
    }
    st__put(b, "}", 1);
    while (b->ok && b->len % 8)
        st__put(b, " ", 1);
    return b->ok;
}

moeq_code st_writer_write(const st_writer *w, const char *path, moeq_error *err)
{
    st__buf header = {NULL, 0, 0, 1};
    if (!st__build_header(w, &header)) {
        free(header.p);
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory building the header", path);
    }
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        free(header.p);
        return moeq_fail(err, MOEQ_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    unsigned char len_le[8];
    for (int i = 0; i < 8; i++)
        len_le[i] = (unsigned char)((uint64_t)header.len >> (8 * i));
    int ok = fwrite(len_le, 1, 8, fp) == 8 && fwrite(header.p, 1, header.len, fp) == header.len;
    free(header.p);
    const char *failed_tensor = NULL;
    for (size_t i = 0; ok && i < w->n_entries; i++) {
        const st_writer_entry *e = &w->entries[i];
        if (e->nbytes && fwrite(e->data, 1, e->nbytes, fp) != e->nbytes) {
            ok = 0;
            failed_tensor = e->name;
        }
    }
    ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    int saved_errno = errno;
    ok = (fclose(fp) == 0) && ok;
    if (!ok) {
        if (!saved_errno)
            saved_errno = errno;
        unlink(path);
        if (failed_tensor)
            return moeq_fail(err, MOEQ_ERR_IO, "%s: writing tensor \"%s\" failed: %s", path,
                             failed_tensor, strerror(saved_errno));
        return moeq_fail(err, MOEQ_ERR_IO, "%s: write failed: %s", path, strerror(saved_errno));
    }
    return MOEQ_OK;
}

void st_writer_free(st_writer *w)
{
    for (size_t i = 0; i < w->n_entries; i++)
        free(w->entries[i].name);
    free(w->entries);
    free(w->slots);
    for (size_t i = 0; i < w->n_metadata; i++) {
        free(w->metadata[i].key);
        free(w->metadata[i].value);
    }
    free(w->metadata);
    memset(w, 0, sizeof *w);
}

#endif /* MOEQ_SAFETENSORS_IMPLEMENTED */
#endif /* MOEQ_SAFETENSORS_IMPLEMENTATION */
