/* bpe.c: the BPE model of tokenizer.json: vocabulary, merges, and the merge
 * loop of `tokenizers`' models/bpe/word.rs. Symbols of a word form a linked
 * list; a min-heap keyed by (merge rank, position) picks the next merge, so
 * a word of n characters costs O(n log n). */
#include "tok/tok_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* (left id, right id) -> (rank, merged id); open addressing. */
struct tok_bpe_merge_map {
    uint64_t *keys; /* UINT64_MAX = empty */
    int32_t *rank, *merged;
    size_t n_slots;
};

typedef struct tok_bpe_symbol {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    uint32_t len;       /* bytes; 0 once merged into its left neighbour */
} tok_bpe_symbol;

typedef struct tok_bpe_candidate {
    int32_t rank, pos, merged;
} tok_bpe_candidate;

static uint64_t pair_key(int32_t a, int32_t b)
{
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

static size_t pair_slot(const tok_bpe_merge_map *m, uint64_t key)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    size_t i = (size_t)(h >> 20) & (m->n_slots - 1);
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key)
        i = (i + 1) & (m->n_slots - 1);
    return i;
}

/* Rank and merged id of the pair, or 0 when the pair does not merge. */
static int pair_lookup(const tok_bpe_merge_map *m, int32_t a, int32_t b, int32_t *rank,
                       int32_t *merged)
{
    if (!m->n_slots)
        return 0;
    size_t i = pair_slot(m, pair_key(a, b));
    if (m->keys[i] == UINT64_MAX)
        return 0;
    *rank = m->rank[i];
    *merged = m->merged[i];
    return 1;
}

static moeq_code vocab_parse(const cJSON *vocab, const char *path, tok_bpe *bpe,
                             moeq_error *err)
{
    if (!cJSON_IsObject(vocab))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: model.vocab is not an object",
                         path);
    int64_t max_id = -1, entries = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab)
    {
        entries++;
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > INT32_MAX - 1 ||
            e->valuedouble != (double)(int64_t)e->valuedouble)
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "tokenizer.json %s: model.vocab[\"%s\"] is not a valid id", path,
                             e->string);
        int32_t id = (int32_t)e->valuedouble;
        if (tok_strmap_put(&bpe->vocab, e->string, strlen(e->string), id))
            return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
        if (id > max_id)
            max_id = id;
    }
    /* Ids index a table: a real vocabulary numbers its tokens densely, so
     * an id far past the number of entries is a damaged file (found by
     * fuzz_tokenizer: a 9-digit id asked for gigabytes). */
    if (max_id >= 2 * entries + 65536)
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "tokenizer.json %s: model.vocab has %lld entries but ids up to %lld: "
                         "ids must number the tokens densely",
                         path, (long long)entries, (long long)max_id);
    bpe->n_ids = (size_t)(max_id + 1);
    bpe->id_to_token = calloc(bpe->n_ids ? bpe->n_ids : 1, sizeof *bpe->id_to_token);
    if (!bpe->id_to_token)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    cJSON_ArrayForEach(e, vocab)
    {
        char **slot = &bpe->id_to_token[(int32_t)e->valuedouble];
        free(*slot); /* two tokens with one id: the later one decodes */
        *slot = strdup(e->string);
        if (!*slot)
            return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    }
    return MOEQ_OK;
}

/* Splits merge i into its two tokens: "a b" or ["a", "b"]. */
static moeq_code merge_parts(const cJSON *m, size_t i, const char *path, tok_buf *a,
                             tok_buf *b, moeq_error *err)
{
    a->len = b->len = 0;
    int oom = 0;
    if (cJSON_IsString(m)) {
        const char *s = m->valuestring;
        const char *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "tokenizer.json %s: model.merges[%zu] \"%s\" is not \"a b\"", path,
                             i, s);
        oom = tok_buf_append(a, s, (size_t)(sp - s)) || tok_buf_append(b, sp + 1, strlen(sp + 1));
    } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 &&
               cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
               cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
        const char *sa = cJSON_GetArrayItem(m, 0)->valuestring;
        const char *sb = cJSON_GetArrayItem(m, 1)->valuestring;
        oom = tok_buf_append(a, sa, strlen(sa)) || tok_buf_append(b, sb, strlen(sb));
    } else {
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "tokenizer.json %s: model.merges[%zu] is neither \"a b\" nor [\"a\", "
                         "\"b\"]",
                         path, i);
    }
    if (oom || tok_buf_append(a, "", 1) || tok_buf_append(b, "", 1))
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    a->len--;
    b->len--;
    return MOEQ_OK;
}

static moeq_code merges_parse(const cJSON *merges, const char *path, tok_bpe *bpe,
                              moeq_error *err)
{
    if (!cJSON_IsArray(merges))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: model.merges is not a list",
                         path);
    size_t n = (size_t)cJSON_GetArraySize(merges);
    tok_bpe_merge_map *m = calloc(1, sizeof *m);
    if (!m)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    bpe->merges = m;
    m->n_slots = 16;
    while (m->n_slots < 2 * n)
        m->n_slots *= 2;
    m->keys = malloc(m->n_slots * sizeof *m->keys);
    m->rank = malloc(m->n_slots * sizeof *m->rank);
    m->merged = malloc(m->n_slots * sizeof *m->merged);
    if (!m->keys || !m->rank || !m->merged)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    memset(m->keys, 0xFF, m->n_slots * sizeof *m->keys);

    size_t prefix_len = bpe->prefix ? strlen(bpe->prefix) : 0;
    tok_buf a = {0}, b = {0}, ab = {0};
    moeq_code rc = MOEQ_OK;
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, merges)
    {
        if ((rc = merge_parts(e, i, path, &a, &b, err)))
            break;
        int32_t ia = tok_strmap_get(&bpe->vocab, a.data, a.len);
        int32_t ib = tok_strmap_get(&bpe->vocab, b.data, b.len);
        /* The right part's continuing_subword_prefix is dropped on merging. */
        size_t skip = prefix_len && b.len >= prefix_len &&
                              memcmp(b.data, bpe->prefix, prefix_len) == 0
                          ? prefix_len
                          : 0;
        ab.len = 0;
        if (tok_buf_append(&ab, a.data, a.len) ||
            tok_buf_append(&ab, b.data + skip, b.len - skip)) {
            rc = moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
            break;
        }
        int32_t iab = tok_strmap_get(&bpe->vocab, ab.data, ab.len);
        const char *missing = ia < 0 ? a.data : ib < 0 ? b.data : NULL;
        if (missing || iab < 0) {
            if (!missing) {
                if (tok_buf_append(&ab, "", 1)) {
                    rc = moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
                    break;
                }
                missing = ab.data;
            }
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "tokenizer.json %s: model.merges[%zu] (\"%s\" \"%s\"): token \"%s\" "
                           "is not in model.vocab",
                           path, i, a.data, b.data, missing);
            break;
        }
        /* Later duplicates win, as when `tokenizers` collects into a map. */
        size_t s = pair_slot(m, pair_key(ia, ib));
        m->keys[s] = pair_key(ia, ib);
        m->rank[s] = (int32_t)i;
        m->merged[s] = iab;
        i++;
    }
    tok_buf_free(&a);
    tok_buf_free(&b);
    tok_buf_free(&ab);
    return rc;
}

moeq_code tok_bpe_parse(const cJSON *model, const char *path, tok_bpe *bpe, moeq_error *err)
{
    memset(bpe, 0, sizeof *bpe);
    bpe->unk_id = -1;
    for (int b = 0; b < 256; b++)
        bpe->byte_ids[b] = -1;
    if (!cJSON_IsObject(model))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: model is missing", path);
    const char *type;
    moeq_code rc = tok_json_string(model, "type", path, "model", &type, err);
    if (rc)
        return rc;
    if (type && strcmp(type, "BPE") != 0)
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "tokenizer.json %s: model type \"%s\" is not supported (only BPE)",
                         path, type);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout))
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "tokenizer.json %s: model.dropout is set; BPE dropout is random and "
                         "only for training, it must be null",
                         path);
    const char *unk, *prefix, *suffix;
    if ((rc = tok_json_string(model, "unk_token", path, "model", &unk, err)) ||
        (rc = tok_json_string(model, "continuing_subword_prefix", path, "model", &prefix,
                              err)) ||
        (rc = tok_json_string(model, "end_of_word_suffix", path, "model", &suffix, err)) ||
        (rc = tok_json_bool(model, "fuse_unk", path, "model", 0, &bpe->fuse_unk, err)) ||
        (rc = tok_json_bool(model, "byte_fallback", path, "model", 0, &bpe->byte_fallback,
                            err)) ||
        (rc = tok_json_bool(model, "ignore_merges", path, "model", 0, &bpe->ignore_merges,
                            err)))
        return rc;
    if ((prefix && prefix[0] && !(bpe->prefix = strdup(prefix))) ||
        (suffix && suffix[0] && !(bpe->suffix = strdup(suffix))))
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    if ((rc = vocab_parse(cJSON_GetObjectItemCaseSensitive(model, "vocab"), path, bpe, err)) ||
        (rc = merges_parse(cJSON_GetObjectItemCaseSensitive(model, "merges"), path, bpe, err)))
        return rc;
    if (unk)
        bpe->unk_id = tok_strmap_get(&bpe->vocab, unk, strlen(unk));
    if (bpe->byte_fallback) {
        for (int b = 0; b < 256; b++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            bpe->byte_ids[b] = tok_strmap_get(&bpe->vocab, name, strlen(name));
        }
    }
    return MOEQ_OK;
}

void tok_bpe_free(tok_bpe *bpe)
{
    tok_strmap_free(&bpe->vocab);
    for (size_t i = 0; i < bpe->n_ids; i++)
        free(bpe->id_to_token[i]);
    free(bpe->id_to_token);
    if (bpe->merges) {
        free(bpe->merges->keys);
        free(bpe->merges->rank);
        free(bpe->merges->merged);
        free(bpe->merges);
    }
    free(bpe->prefix);
    free(bpe->suffix);
    memset(bpe, 0, sizeof *bpe);
}

void tok_bpe_scratch_free(tok_bpe_scratch *s)
{
    free(s->symbols);
    free(s->heap);
    tok_buf_free(&s->key);
    memset(s, 0, sizeof *s);
}

/* ---- the merge loop */

static int cand_less(const tok_bpe_candidate *x, const tok_bpe_candidate *y)
{
    return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

static void heap_push(tok_bpe_candidate *h, size_t *n, tok_bpe_candidate c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static tok_bpe_candidate heap_pop(tok_bpe_candidate *h, size_t *n)
{
    tok_bpe_candidate top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const tok_bpe_candidate *best = &last;
        if (l < *n && cand_less(&h[l], best)) {
            m = l;
            best = &h[l];
        }
        if (r < *n && cand_less(&h[r], best))
            m = r;
        if (m == i)
            break;
        h[i] = h[m];
        i = m;
    }
    h[i] = last;
    return top;
}

static void push_pair(const tok_bpe *bpe, tok_bpe_scratch *s, size_t *n_heap, int32_t pos)
{
    const tok_bpe_symbol *sym = s->symbols;
    int32_t next = sym[pos].next;
    int32_t rank, merged;
    if (next >= 0 && pair_lookup(bpe->merges, sym[pos].id, sym[next].id, &rank, &merged))
        heap_push(s->heap, n_heap, (tok_bpe_candidate){rank, pos, merged});
}

static void add_symbol(tok_bpe_scratch *s, size_t *n, int32_t id, size_t len)
{
    s->symbols[*n] = (tok_bpe_symbol){id, (int32_t)*n - 1, (int32_t)*n + 1, (uint32_t)len};
    (*n)++;
}

/* Initial symbols of a word: one per character, or its <0xNN> bytes with
 * byte_fallback, or unk (fused when fuse_unk); BPE::merge_word in
 * models/bpe/model.rs, including where a pending unk is flushed. */
static int initial_symbols(const tok_bpe *bpe, const char *w, size_t n, tok_bpe_scratch *s,
                           size_t *n_sym)
{
    size_t extra = (bpe->prefix ? strlen(bpe->prefix) : 0) + (bpe->suffix ? strlen(bpe->suffix) : 0);
    int32_t unk_id = -1;
    size_t unk_len = 0;
    *n_sym = 0;
    for (size_t i = 0; i < n;) {
        size_t k = tok_utf8_len((unsigned char)w[i]);
        if (k > n - i)
            k = n - i;
        const char *key = w + i;
        size_t key_len = k;
        if (extra && ((bpe->prefix && i > 0) || (bpe->suffix && i + k == n))) {
            s->key.len = 0;
            if ((bpe->prefix && i > 0 && tok_buf_append(&s->key, bpe->prefix, strlen(bpe->prefix))) ||
                tok_buf_append(&s->key, w + i, k) ||
                (bpe->suffix && i + k == n &&
                 tok_buf_append(&s->key, bpe->suffix, strlen(bpe->suffix))))
                return -1;
            key = s->key.data;
            key_len = s->key.len;
        }
        int32_t id = tok_strmap_get(&bpe->vocab, key, key_len);
        if (id >= 0) {
            if (unk_id >= 0) {
                add_symbol(s, n_sym, unk_id, unk_len);
                unk_id = -1;
            }
            add_symbol(s, n_sym, id, k);
            i += k;
            continue;
        }
        int bytes_ok = bpe->byte_fallback;
        for (size_t j = 0; j < key_len && bytes_ok; j++)
            bytes_ok = bpe->byte_ids[(unsigned char)key[j]] >= 0;
        if (bytes_ok) {
            for (size_t j = 0; j < key_len; j++)
                add_symbol(s, n_sym, bpe->byte_ids[(unsigned char)key[j]], 1);
        } else if (bpe->unk_id >= 0) {
            if (unk_id >= 0 && bpe->fuse_unk) {
                unk_len += k;
            } else {
                if (unk_id >= 0)
                    add_symbol(s, n_sym, unk_id, unk_len);
                unk_id = bpe->unk_id;
                unk_len = k;
            }
        }
        i += k;
    }
    if (unk_id >= 0)
        add_symbol(s, n_sym, unk_id, unk_len);
    if (*n_sym)
        s->symbols[*n_sym - 1].next = -1;
    return 0;
}

moeq_code tok_bpe_encode_word(const tok_bpe *bpe, const char *w, size_t n,
                              tok_bpe_scratch *s, tok_ids *out, moeq_error *err)
{
    if (!n)
        return MOEQ_OK;
    if (bpe->ignore_merges) {
        int32_t id = tok_strmap_get(&bpe->vocab, w, n);
        if (id >= 0) {
            if (tok_ids_push(out, id))
                return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory");
            return MOEQ_OK;
        }
    }
    /* At most one symbol per byte (byte_fallback with a prefix/suffix can
     * add that many bytes more). */
    size_t need = n + 1 + (bpe->prefix ? strlen(bpe->prefix) : 0) * n +
                  (bpe->suffix ? strlen(bpe->suffix) : 0);
    if (need > s->symbols_cap) {
        free(s->symbols);
        free(s->heap);
        s->symbols = malloc(need * sizeof *s->symbols);
        s->heap = malloc(2 * need * sizeof *s->heap);
        s->symbols_cap = s->heap_cap = 0;
        if (!s->symbols || !s->heap)
            return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory");
        s->symbols_cap = need;
        s->heap_cap = 2 * need;
    }
    size_t n_sym;
    if (initial_symbols(bpe, w, n, s, &n_sym))
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory");

    /* Each merge pushes at most two candidates and removes one symbol, so
     * the heap never holds more than 3 * n_sym entries; n_sym - 1 initially
     * and at most 2 per merge. Rebuild it larger if a word needs more. */
    if (s->heap_cap < 3 * n_sym) {
        free(s->heap);
        s->heap = malloc(3 * n_sym * sizeof *s->heap);
        s->heap_cap = s->heap ? 3 * n_sym : 0;
        if (!s->heap)
            return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory");
    }
    size_t n_heap = 0;
    for (size_t i = 0; i + 1 < n_sym; i++)
        push_pair(bpe, s, &n_heap, (int32_t)i);
    tok_bpe_symbol *sym = s->symbols;
    while (n_heap) {
        tok_bpe_candidate c = heap_pop(s->heap, &n_heap);
        tok_bpe_symbol *left = &sym[c.pos];
        if (!left->len || left->next < 0)
            continue;
        int32_t right_pos = left->next;
        int32_t rank, merged;
        /* Stale candidate: the pair at pos changed since it was pushed. */
        if (!pair_lookup(bpe->merges, left->id, sym[right_pos].id, &rank, &merged) ||
            merged != c.merged)
            continue;
        left->id = merged;
        left->len += sym[right_pos].len;
        left->next = sym[right_pos].next;
        sym[right_pos].len = 0;
        if (left->next >= 0)
            sym[left->next].prev = c.pos;
        if (left->prev >= 0)
            push_pair(bpe, s, &n_heap, left->prev);
        push_pair(bpe, s, &n_heap, c.pos);
    }
    for (size_t i = 0; i < n_sym; i++) {
        if (sym[i].len && tok_ids_push(out, sym[i].id))
            return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory");
    }
    return MOEQ_OK;
}
