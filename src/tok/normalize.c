/* normalize.c: the normalizer section of tokenizer.json (NFC, NFD, NFKC,
 * NFKD, Lowercase, Prepend, Replace, Strip, Sequence), as `tokenizers`'
 * normalizers/ module defines them. Unicode forms come from utf8proc. */
#include "tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

typedef enum norm_kind {
    NORM_UNICODE, /* NFC/NFD/NFKC/NFKD: options in utf8proc_options */
    NORM_LOWERCASE,
    NORM_PREPEND,
    NORM_REPLACE,
    NORM_STRIP,
} norm_kind;

struct tok_norm_step {
    norm_kind kind;
    int utf8proc_options;
    char *str; /* Prepend: prefix; Replace: content */
    size_t str_len;
    tok_pattern pattern;
    int strip_left, strip_right;
};

static moeq_code parse_step(const cJSON *j, const char *path, const char *type,
                            tok_norm_step *st, moeq_error *err)
{
    static const struct {
        const char *name;
        int options;
    } forms[] = {
        {"NFC", UTF8PROC_STABLE | UTF8PROC_COMPOSE},
        {"NFD", UTF8PROC_STABLE | UTF8PROC_DECOMPOSE},
        {"NFKC", UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT},
        {"NFKD", UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT},
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        if (strcmp(type, forms[i].name) == 0) {
            st->kind = NORM_UNICODE;
            st->utf8proc_options = forms[i].options;
            return MOEQ_OK;
        }
    }
    if (strcmp(type, "Lowercase") == 0) {
        st->kind = NORM_LOWERCASE;
        return MOEQ_OK;
    }
    if (strcmp(type, "Prepend") == 0) {
        st->kind = NORM_PREPEND;
        return tok_json_string_copy(j, "prepend", path, "normalizer", type, &st->str,
                                    &st->str_len, err);
    }
    if (strcmp(type, "Replace") == 0) {
        st->kind = NORM_REPLACE;
        moeq_code rc = tok_json_string_copy(j, "content", path, "normalizer", type, &st->str,
                                            &st->str_len, err);
        if (rc)
            return rc;
        return tok_pattern_parse(cJSON_GetObjectItemCaseSensitive(j, "pattern"), path,
                                 "normalizer Replace", &st->pattern, err);
    }
    if (strcmp(type, "Strip") == 0) {
        st->kind = NORM_STRIP;
        moeq_code rc = tok_json_bool(j, "strip_left", path, type, 1, &st->strip_left, err);
        if (rc)
            return rc;
        return tok_json_bool(j, "strip_right", path, type, 1, &st->strip_right, err);
    }
    return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                     "tokenizer.json %s: normalizer type \"%s\" is not supported", path, type);
}

static moeq_code add_step(const cJSON *j, const char *path, const char *type, void *normalizer,
                          moeq_error *err)
{
    tok_normalizer *out = normalizer;
    tok_norm_step *steps = realloc(out->steps, (out->n_steps + 1) * sizeof *steps);
    if (!steps)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    out->steps = steps;
    tok_norm_step *st = &steps[out->n_steps++];
    memset(st, 0, sizeof *st);
    return parse_step(j, path, type, st, err);
}

moeq_code tok_normalizer_parse(const cJSON *j, const char *path, tok_normalizer *out,
                               moeq_error *err)
{
    static const tok_section section = {"normalizer", "normalizers", add_step};
    memset(out, 0, sizeof *out);
    return tok_section_parse(&section, j, path, out, err);
}

void tok_normalizer_free(tok_normalizer *n)
{
    for (size_t i = 0; i < n->n_steps; i++) {
        free(n->steps[i].str);
        tok_pattern_free(&n->steps[i].pattern);
    }
    free(n->steps);
    memset(n, 0, sizeof *n);
}

/* Rust's char::to_lowercase: utf8proc's simple mapping, except U+0130,
 * whose full lowercase is two code points (SpecialCasing.txt). */
static int lowercase(const char *s, size_t n, tok_buf *out)
{
    char enc[4];
    for (size_t i = 0; i < n;) {
        int32_t cp;
        i += tok_utf8_decode(s + i, &cp);
        if (cp == 0x130) {
            if (tok_buf_append(out, "i\xCC\x87", 3))
                return -1;
            continue;
        }
        size_t k = tok_utf8_encode(utf8proc_tolower(cp), enc);
        if (tok_buf_append(out, enc, k))
            return -1;
    }
    return 0;
}

static int strip(const char *s, size_t n, int left, int right, tok_buf *out)
{
    size_t a = 0, b = n;
    while (left && a < b) {
        int32_t cp;
        size_t k = tok_utf8_decode(s + a, &cp);
        if (!tok_is_whitespace(cp))
            break;
        a += k;
    }
    while (right && b > a) {
        size_t k = 1;
        while (k < b - a && ((unsigned char)s[b - k] & 0xC0) == 0x80)
            k++;
        int32_t cp;
        tok_utf8_decode(s + b - k, &cp);
        if (!tok_is_whitespace(cp))
            break;
        b -= k;
    }
    return tok_buf_append(out, s + a, b - a);
}

static moeq_code apply_step(const tok_norm_step *st, const char *s, size_t n,
                            pcre2_match_data *md, tok_buf *out, moeq_error *err)
{
    out->len = 0;
    int oom = 0;
    switch (st->kind) {
    case NORM_UNICODE: {
        if (!n)
            break;
        utf8proc_uint8_t *dst = NULL;
        utf8proc_ssize_t k = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n,
                                          &dst, (utf8proc_option_t)st->utf8proc_options);
        if (k < 0)
            return moeq_fail(err, k == UTF8PROC_ERROR_NOMEM ? MOEQ_ERR_OOM : MOEQ_ERR_FORMAT,
                             "tokenizer normalizer: utf8proc: %s", utf8proc_errmsg(k));
        oom = tok_buf_append(out, dst, (size_t)k);
        free(dst);
        break;
    }
    case NORM_LOWERCASE:
        oom = lowercase(s, n, out);
        break;
    case NORM_PREPEND:
        /* `tokenizers` prepends only to non-empty strings. */
        if (n)
            oom = tok_buf_append(out, st->str, st->str_len) || tok_buf_append(out, s, n);
        break;
    case NORM_REPLACE:
        return tok_pattern_replace(&st->pattern, s, n, st->str, st->str_len, md, out, err);
    case NORM_STRIP:
        oom = strip(s, n, st->strip_left, st->strip_right, out);
        break;
    }
    if (oom)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer normalizer: out of memory");
    return MOEQ_OK;
}

moeq_code tok_normalize(const tok_normalizer *nz, const char *s, size_t n,
                        pcre2_match_data *md, tok_buf *out, moeq_error *err)
{
    out->len = 0;
    if (tok_buf_append(out, s, n))
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer normalizer: out of memory");
    tok_buf tmp = {0};
    moeq_code rc = MOEQ_OK;
    for (size_t i = 0; i < nz->n_steps && !rc; i++) {
        rc = apply_step(&nz->steps[i], out->data, out->len, md, &tmp, err);
        tok_buf swap = *out;
        *out = tmp;
        tmp = swap;
    }
    tok_buf_free(&tmp);
    return rc;
}
