/* decode.c: the decoder section of tokenizer.json (ByteLevel, Metaspace,
 * Replace, ByteFallback, Fuse, Strip, Sequence), as `tokenizers`'
 * decoders/ module defines them. Each step maps the token strings to new
 * strings; the result is their concatenation. */
#include "tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

typedef enum dec_kind {
    DEC_BYTELEVEL,
    DEC_METASPACE,
    DEC_REPLACE,
    DEC_BYTEFALLBACK,
    DEC_FUSE,
    DEC_STRIP,
} dec_kind;

struct tok_dec_step {
    dec_kind kind;
    char *str; /* Metaspace: replacement; Replace: content; Strip: content */
    size_t str_len;
    tok_pattern pattern;
    int drop_first; /* Metaspace: prepend_scheme is not "never" */
    int strip_start, strip_stop;
};

static moeq_code dup_field(const cJSON *j, const char *key, const char *path, const char *type,
                           tok_dec_step *st, moeq_error *err)
{
    return tok_json_string_copy(j, key, path, "decoder", type, &st->str, &st->str_len, err);
}

static moeq_code read_count(const cJSON *j, const char *key, const char *path, int *out,
                            moeq_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    *out = 0;
    if (!v || cJSON_IsNull(v))
        return MOEQ_OK;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 1e6)
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: decoder Strip.%s is not a count",
                         path, key);
    *out = (int)v->valuedouble;
    return MOEQ_OK;
}

static moeq_code parse_step(const cJSON *j, const char *path, const char *type,
                            tok_dec_step *st, moeq_error *err)
{
    moeq_code rc;
    if (strcmp(type, "ByteLevel") == 0) {
        st->kind = DEC_BYTELEVEL;
        return MOEQ_OK;
    }
    if (strcmp(type, "ByteFallback") == 0) {
        st->kind = DEC_BYTEFALLBACK;
        return MOEQ_OK;
    }
    if (strcmp(type, "Fuse") == 0) {
        st->kind = DEC_FUSE;
        return MOEQ_OK;
    }
    if (strcmp(type, "Metaspace") == 0) {
        st->kind = DEC_METASPACE;
        const char *scheme;
        int add_prefix_space;
        if ((rc = dup_field(j, "replacement", path, type, st, err)) ||
            (rc = tok_json_string(j, "prepend_scheme", path, type, &scheme, err)) ||
            (rc = tok_json_bool(j, "add_prefix_space", path, type, 1, &add_prefix_space, err)))
            return rc;
        st->drop_first = scheme ? strcmp(scheme, "never") != 0 : add_prefix_space;
        return MOEQ_OK;
    }
    if (strcmp(type, "Replace") == 0) {
        st->kind = DEC_REPLACE;
        if ((rc = dup_field(j, "content", path, type, st, err)))
            return rc;
        return tok_pattern_parse(cJSON_GetObjectItemCaseSensitive(j, "pattern"), path,
                                 "decoder Replace", &st->pattern, err);
    }
    if (strcmp(type, "Strip") == 0) {
        st->kind = DEC_STRIP;
        if ((rc = dup_field(j, "content", path, type, st, err)) ||
            (rc = read_count(j, "start", path, &st->strip_start, err)) ||
            (rc = read_count(j, "stop", path, &st->strip_stop, err)))
            return rc;
        return MOEQ_OK;
    }
    return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                     "tokenizer.json %s: decoder type \"%s\" is not supported", path, type);
}

static moeq_code add_step(const cJSON *j, const char *path, const char *type, void *decoder,
                          moeq_error *err)
{
    tok_decoder *out = decoder;
    tok_dec_step *steps = realloc(out->steps, (out->n_steps + 1) * sizeof *steps);
    if (!steps)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    out->steps = steps;
    tok_dec_step *st = &steps[out->n_steps++];
    memset(st, 0, sizeof *st);
    return parse_step(j, path, type, st, err);
}

moeq_code tok_decoder_parse(const cJSON *j, const char *path, tok_decoder *out,
                            moeq_error *err)
{
    static const tok_section section = {"decoder", "decoders", add_step};
    memset(out, 0, sizeof *out);
    return tok_section_parse(&section, j, path, out, err);
}

void tok_decoder_free(tok_decoder *d)
{
    for (size_t i = 0; i < d->n_steps; i++) {
        free(d->steps[i].str);
        tok_pattern_free(&d->steps[i].pattern);
    }
    free(d->steps);
    memset(d, 0, sizeof *d);
}

/* <0xNN> -> NN, else -1. */
static int byte_token(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0'
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* ByteFallback: a run of byte tokens becomes its UTF-8 text when valid,
 * else one U+FFFD per byte (decoders/byte_fallback.rs). */
static int flush_bytes(tok_buf *bytes, tok_pieces *out)
{
    if (!bytes->len)
        return 0;
    tok_buf fixed = {0};
    int rc = tok_utf8_sanitize(bytes->data, bytes->len, &fixed);
    if (!rc && fixed.len == bytes->len && memcmp(fixed.data, bytes->data, bytes->len) == 0) {
        rc = tok_pieces_push(out, bytes->data, bytes->len, 0);
    } else if (!rc) {
        fixed.len = 0;
        for (size_t i = 0; i < bytes->len && !rc; i++)
            rc = tok_buf_append(&fixed, "\xEF\xBF\xBD", 3);
        rc = rc || tok_pieces_push(out, fixed.data, fixed.len, 0);
    }
    tok_buf_free(&fixed);
    bytes->len = 0;
    return rc;
}

static moeq_code apply_step(const tok_dec_step *st, const tok_pieces *in, tok_pieces *out,
                            pcre2_match_data *md, moeq_error *err)
{
    tok_buf b = {0};
    int oom = 0;
    moeq_code rc = MOEQ_OK;
    for (size_t i = 0; i < in->len && !oom && !rc; i++) {
        const char *s = in->text.data + in->spans[i].start;
        size_t n = in->spans[i].len;
        switch (st->kind) {
        case DEC_BYTELEVEL: {
            /* All tokens become one byte string; a token with a character
             * outside the byte map keeps its own UTF-8. */
            size_t mark = b.len;
            for (size_t k = 0; k < n && !oom;) {
                int32_t cp;
                k += tok_utf8_decode(s + k, &cp);
                int byte = tok_char_byte(cp);
                if (byte < 0) {
                    b.len = mark;
                    oom = tok_buf_append(&b, s, n);
                    break;
                }
                char c = (char)byte;
                oom = tok_buf_append(&b, &c, 1);
            }
            break;
        }
        case DEC_METASPACE:
            b.len = 0;
            for (size_t k = 0; k < n && !oom;) {
                size_t step = tok_utf8_len((unsigned char)s[k]);
                if (st->str_len == step && k + step <= n && memcmp(s + k, st->str, step) == 0) {
                    if (!(i == 0 && st->drop_first))
                        oom = tok_buf_append(&b, " ", 1);
                } else {
                    oom = tok_buf_append(&b, s + k, step);
                }
                k += step;
            }
            oom = oom || tok_pieces_push(out, b.data, b.len, 0);
            break;
        case DEC_REPLACE:
            b.len = 0;
            rc = tok_pattern_replace(&st->pattern, s, n, st->str, st->str_len, md, &b, err);
            oom = !rc && tok_pieces_push(out, b.data, b.len, 0);
            break;
        case DEC_BYTEFALLBACK: {
            int byte = byte_token(s, n);
            if (byte >= 0) {
                char c = (char)byte;
                oom = tok_buf_append(&b, &c, 1);
            } else {
                oom = flush_bytes(&b, out) || tok_pieces_push(out, s, n, 0);
            }
            break;
        }
        case DEC_FUSE:
            oom = tok_buf_append(&b, s, n);
            break;
        case DEC_STRIP: {
            size_t a = 0, z = n;
            for (int k = 0; k < st->strip_start && z - a >= st->str_len &&
                            memcmp(s + a, st->str, st->str_len) == 0;
                 k++)
                a += st->str_len;
            for (int k = 0; k < st->strip_stop && z - a >= st->str_len &&
                            memcmp(s + z - st->str_len, st->str, st->str_len) == 0;
                 k++)
                z -= st->str_len;
            oom = tok_pieces_push(out, s + a, z - a, 0);
            break;
        }
        }
    }
    if (!oom && !rc) {
        if (st->kind == DEC_BYTEFALLBACK) {
            oom = flush_bytes(&b, out);
        } else if (st->kind == DEC_FUSE) {
            oom = tok_pieces_push(out, b.data, b.len, 0);
        } else if (st->kind == DEC_BYTELEVEL) {
            tok_buf fixed = {0};
            oom = tok_utf8_sanitize(b.data ? b.data : "", b.len, &fixed) ||
                  tok_pieces_push(out, fixed.data, fixed.len, 0);
            tok_buf_free(&fixed);
        }
    }
    tok_buf_free(&b);
    if (oom)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer decoder: out of memory");
    return rc;
}

moeq_code tok_decode_tokens(const tok_decoder *d, tok_pieces *tokens, tok_buf *out,
                            moeq_error *err)
{
    tok_pieces tmp = {0};
    pcre2_match_data *md = tok_match_data();
    moeq_code rc = md ? MOEQ_OK : moeq_fail(err, MOEQ_ERR_OOM, "tokenizer decoder: out of memory");
    for (size_t k = 0; k < d->n_steps && !rc; k++) {
        tok_pieces_clear(&tmp);
        rc = apply_step(&d->steps[k], tokens, &tmp, md, err);
        tok_pieces swap = *tokens;
        *tokens = tmp;
        tmp = swap;
    }
    for (size_t i = 0; i < tokens->len && !rc; i++) {
        if (tok_buf_append(out, tokens->text.data + tokens->spans[i].start, tokens->spans[i].len))
            rc = moeq_fail(err, MOEQ_ERR_OOM, "tokenizer decoder: out of memory");
    }
    tok_pieces_free(&tmp);
    pcre2_match_data_free(md);
    return rc;
}
