/* added.c: added_tokens of tokenizer.json. The input is split on them
 * before normalization (tokens with normalized=false) and again after it
 * (normalized=true), leftmost-longest as `tokenizers`' added_vocabulary.rs
 * does with its Aho-Corasick automata; lstrip/rstrip absorb neighbouring
 * whitespace and single_word rejects matches inside words. */
#include "tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

moeq_code tok_added_parse(const cJSON *j, const char *path, const tok_normalizer *nz,
                          tok_added *out, moeq_error *err)
{
    memset(out, 0, sizeof *out);
    if (!j || cJSON_IsNull(j))
        return MOEQ_OK;
    if (!cJSON_IsArray(j))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: added_tokens is not a list",
                         path);
    size_t n = (size_t)cJSON_GetArraySize(j);
    out->tokens = calloc(n ? n : 1, sizeof *out->tokens);
    if (!out->tokens)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    tok_buf norm = {0};
    pcre2_match_data *md = tok_match_data();
    moeq_code rc = md ? MOEQ_OK : moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    const cJSON *e;
    cJSON_ArrayForEach(e, j)
    {
        if (rc)
            break;
        tok_added_token *t = &out->tokens[out->n];
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > INT32_MAX - 1 ||
            !cJSON_IsString(content) || !content->valuestring[0]) {
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "tokenizer.json %s: added_tokens[%zu] needs an id and a non-empty "
                           "content",
                           path, out->n);
            break;
        }
        t->id = (int32_t)id->valuedouble;
        if ((rc = tok_json_bool(e, "special", path, "added_tokens", 0, &t->special, err)) ||
            (rc = tok_json_bool(e, "lstrip", path, "added_tokens", 0, &t->lstrip, err)) ||
            (rc = tok_json_bool(e, "rstrip", path, "added_tokens", 0, &t->rstrip, err)) ||
            (rc = tok_json_bool(e, "single_word", path, "added_tokens", 0, &t->single_word,
                                err)) ||
            (rc = tok_json_bool(e, "normalized", path, "added_tokens", !t->special,
                                &t->normalized, err)))
            break;
        const char *text = content->valuestring;
        size_t len = strlen(text);
        /* A normalized token is matched against normalized text, so it is
         * stored normalized. */
        if (t->normalized && nz->n_steps) {
            if ((rc = tok_normalize(nz, text, len, md, &norm, err)))
                break;
            text = norm.data;
            len = norm.len;
        }
        if (!len) {
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "tokenizer.json %s: added_tokens[%zu] normalizes to nothing", path,
                           out->n);
            break;
        }
        t->content = malloc(len + 1);
        if (!t->content) {
            rc = moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
            break;
        }
        memcpy(t->content, text, len);
        t->content[len] = '\0';
        t->len = len;
        out->starts[t->normalized][(unsigned char)text[0]] = 1;
        out->n++;
    }
    tok_buf_free(&norm);
    pcre2_match_data_free(md);
    return rc;
}

void tok_added_free(tok_added *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->tokens[i].content);
    free(a->tokens);
    memset(a, 0, sizeof *a);
}

/* Word characters for single_word: letters, numbers and '_'. */
static int is_word_char(int32_t cp)
{
    if (cp == '_')
        return 1;
    utf8proc_category_t c = utf8proc_category(cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
           (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

/* Start of the character that ends at s[end] (exclusive). */
static size_t prev_char(const char *s, size_t end)
{
    size_t k = end - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    return k;
}

static int push_segment(tok_segments *out, size_t start, size_t len, int32_t id)
{
    if (out->len == out->cap) {
        size_t cap = out->cap ? out->cap * 2 : 16;
        tok_segment *p = realloc(out->data, cap * sizeof *p);
        if (!p)
            return -1;
        out->data = p;
        out->cap = cap;
    }
    out->data[out->len++] = (tok_segment){start, len, id};
    return 0;
}

int tok_added_split(const tok_added *a, int normalized, const char *s, size_t n,
                    tok_segments *out)
{
    out->len = 0;
    size_t done = 0; /* text before this is already in out */
    size_t i = 0;
    while (i < n) {
        const tok_added_token *best = NULL;
        if (!a->starts[normalized != 0][(unsigned char)s[i]]) {
            i++;
            continue;
        }
        for (size_t t = 0; t < a->n; t++) {
            const tok_added_token *tk = &a->tokens[t];
            if (tk->normalized != normalized || tk->content[0] != s[i] || tk->len > n - i ||
                (best && tk->len <= best->len))
                continue;
            if (memcmp(s + i, tk->content, tk->len) == 0)
                best = tk;
        }
        if (!best) {
            i++;
            continue;
        }
        size_t start = i, stop = i + best->len;
        int32_t cp;
        if (best->single_word) {
            int word_before = start > 0 && (tok_utf8_decode(s + prev_char(s, start), &cp),
                                            is_word_char(cp));
            int word_after = stop < n && (tok_utf8_decode(s + stop, &cp), is_word_char(cp));
            if (word_before || word_after) {
                i = stop; /* the automaton resumes after a rejected match */
                continue;
            }
        }
        if (best->lstrip) {
            while (start > done) {
                size_t k = prev_char(s, start);
                tok_utf8_decode(s + k, &cp);
                if (!tok_is_whitespace(cp))
                    break;
                start = k;
            }
        }
        if (best->rstrip) {
            while (stop < n) {
                size_t k = tok_utf8_decode(s + stop, &cp);
                if (!tok_is_whitespace(cp))
                    break;
                stop += k;
            }
        }
        if ((start > done && push_segment(out, done, start - done, -1)) ||
            push_segment(out, start, stop - start, best->id))
            return -1;
        done = i = stop;
    }
    if (n > done && push_segment(out, done, n - done, -1))
        return -1;
    return 0;
}
