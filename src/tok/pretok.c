/* pretok.c: the pre_tokenizer section of tokenizer.json (Split, ByteLevel,
 * Metaspace, Digits, Whitespace, WhitespaceSplit, Sequence), following
 * `tokenizers`' pre_tokenizers/ module. Each step maps the list of words
 * to a new list. */
#include "tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

/* GPT-2's pre-tokenizer regex (openai/gpt-2 encoder.py), used by
 * ByteLevel when use_regex is true. */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

typedef enum pretok_kind {
    PT_SPLIT,     /* also Digits, Whitespace, WhitespaceSplit */
    PT_BYTELEVEL,
    PT_METASPACE,
} pretok_kind;

typedef enum prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } prepend_scheme;

struct tok_pretok_step {
    pretok_kind kind;
    tok_pattern pattern; /* Split; ByteLevel with use_regex */
    int has_pattern;
    tok_split_behavior behavior;
    int invert;
    int add_prefix_space; /* ByteLevel */
    char *replacement;    /* Metaspace, UTF-8 of one character */
    size_t replacement_len;
    prepend_scheme prepend;
    int split;
};

int32_t tok_byte_char(uint8_t b)
{
    if (b <= 0x20)
        return 256 + b;
    if (b >= 0x7F && b <= 0xA0)
        return 256 + 33 + (b - 0x7F);
    if (b == 0xAD)
        return 256 + 33 + 34;
    return b;
}

int tok_char_byte(int32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return cp;
    if (cp >= 256 && cp < 256 + 33)
        return cp - 256;
    if (cp >= 256 + 33 && cp < 256 + 33 + 34)
        return cp - 256 - 33 + 0x7F;
    if (cp == 256 + 33 + 34)
        return 0xAD;
    return -1;
}

static moeq_code parse_metaspace(const cJSON *j, const char *path, tok_pretok_step *st,
                                 moeq_error *err)
{
    const char *rep, *scheme;
    moeq_code rc = tok_json_string(j, "replacement", path, "pre_tokenizer Metaspace", &rep, err);
    if (!rc)
        rc = tok_json_string(j, "prepend_scheme", path, "pre_tokenizer Metaspace", &scheme, err);
    if (!rc)
        rc = tok_json_bool(j, "split", path, "pre_tokenizer Metaspace", 1, &st->split, err);
    if (rc)
        return rc;
    if (!rep || !rep[0] || tok_utf8_len((unsigned char)rep[0]) != strlen(rep))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "tokenizer.json %s: pre_tokenizer Metaspace.replacement must be one "
                         "character",
                         path);
    st->replacement = strdup(rep);
    if (!st->replacement)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    st->replacement_len = strlen(rep);
    if (!scheme) {
        /* Older files: add_prefix_space true = "always", false = "never". */
        int add_prefix_space;
        rc = tok_json_bool(j, "add_prefix_space", path, "pre_tokenizer Metaspace", 1,
                           &add_prefix_space, err);
        st->prepend = add_prefix_space ? PREPEND_ALWAYS : PREPEND_NEVER;
        return rc;
    }
    if (strcmp(scheme, "always") == 0)
        st->prepend = PREPEND_ALWAYS;
    else if (strcmp(scheme, "first") == 0)
        st->prepend = PREPEND_FIRST;
    else if (strcmp(scheme, "never") == 0)
        st->prepend = PREPEND_NEVER;
    else
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                         "tokenizer.json %s: pre_tokenizer Metaspace.prepend_scheme \"%s\" is "
                         "not supported",
                         path, scheme);
    return MOEQ_OK;
}

static moeq_code parse_step(const cJSON *j, const char *path, const char *type,
                            tok_pretok_step *st, moeq_error *err)
{
    moeq_code rc;
    if (strcmp(type, "Split") == 0) {
        st->kind = PT_SPLIT;
        if ((rc = tok_split_behavior_parse(j, path, &st->behavior, err)) ||
            (rc = tok_json_bool(j, "invert", path, "pre_tokenizer Split", 0, &st->invert, err)))
            return rc;
        st->has_pattern = 1;
        return tok_pattern_parse(cJSON_GetObjectItemCaseSensitive(j, "pattern"), path,
                                 "pre_tokenizer Split", &st->pattern, err);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        int use_regex;
        st->kind = PT_BYTELEVEL;
        if ((rc = tok_json_bool(j, "add_prefix_space", path, "pre_tokenizer ByteLevel", 1,
                                &st->add_prefix_space, err)) ||
            (rc = tok_json_bool(j, "use_regex", path, "pre_tokenizer ByteLevel", 1, &use_regex,
                                err)))
            return rc;
        if (!use_regex)
            return MOEQ_OK;
        st->has_pattern = 1;
        st->behavior = TOK_SPLIT_ISOLATED;
        return tok_pattern_regex(gpt2_regex, path, "pre_tokenizer ByteLevel", &st->pattern, err);
    }
    if (strcmp(type, "Metaspace") == 0) {
        st->kind = PT_METASPACE;
        return parse_metaspace(j, path, st, err);
    }
    if (strcmp(type, "Digits") == 0) {
        int individual;
        if ((rc = tok_json_bool(j, "individual_digits", path, "pre_tokenizer Digits", 0,
                                &individual, err)))
            return rc;
        /* char::is_numeric is the Unicode N category. */
        st->kind = PT_SPLIT;
        st->behavior = individual ? TOK_SPLIT_ISOLATED : TOK_SPLIT_CONTIGUOUS;
        st->has_pattern = 1;
        return tok_pattern_regex("\\p{N}", path, "pre_tokenizer Digits", &st->pattern, err);
    }
    if (strcmp(type, "Whitespace") == 0) {
        /* Keeps the matches of \w+|[^\w\s]+ (pre_tokenizers/whitespace.rs). */
        st->kind = PT_SPLIT;
        st->behavior = TOK_SPLIT_REMOVED;
        st->invert = 1;
        st->has_pattern = 1;
        return tok_pattern_regex("\\w+|[^\\w\\s]+", path, "pre_tokenizer Whitespace",
                                 &st->pattern, err);
    }
    if (strcmp(type, "WhitespaceSplit") == 0) {
        st->kind = PT_SPLIT;
        st->behavior = TOK_SPLIT_REMOVED;
        st->has_pattern = 1;
        return tok_pattern_regex("\\s+", path, "pre_tokenizer WhitespaceSplit", &st->pattern,
                                 err);
    }
    return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                     "tokenizer.json %s: pre_tokenizer type \"%s\" is not supported", path,
                     type);
}

static moeq_code add_step(const cJSON *j, const char *path, const char *type,
                          void *pretokenizer, moeq_error *err)
{
    tok_pretokenizer *out = pretokenizer;
    tok_pretok_step *steps = realloc(out->steps, (out->n_steps + 1) * sizeof *steps);
    if (!steps)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    out->steps = steps;
    tok_pretok_step *st = &steps[out->n_steps++];
    memset(st, 0, sizeof *st);
    moeq_code rc = parse_step(j, path, type, st, err);
    if (st->kind == PT_BYTELEVEL)
        out->byte_level = 1;
    return rc;
}

moeq_code tok_pretokenizer_parse(const cJSON *j, const char *path, tok_pretokenizer *out,
                                 moeq_error *err)
{
    static const tok_section section = {"pre_tokenizer", "pretokenizers", add_step};
    memset(out, 0, sizeof *out);
    return tok_section_parse(&section, j, path, out, err);
}

void tok_pretokenizer_free(tok_pretokenizer *p)
{
    for (size_t i = 0; i < p->n_steps; i++) {
        tok_pattern_free(&p->steps[i].pattern);
        free(p->steps[i].replacement);
    }
    free(p->steps);
    memset(p, 0, sizeof *p);
}

/* Pushes the spans of s as words; only a span at offset 0 of a word that
 * starts the input still starts the input. */
static int push_spans(tok_pieces *out, const char *s, const tok_spans *spans, int at_start)
{
    for (size_t i = 0; i < spans->len; i++) {
        const tok_span *sp = &spans->data[i];
        if (tok_pieces_push(out, s + sp->start, sp->len, at_start && sp->start == 0))
            return -1;
    }
    return 0;
}

/* Appends the GPT-2 byte-to-unicode image of s to buf. */
static int byte_map(const char *s, size_t n, tok_buf *buf)
{
    if (tok_buf_reserve(buf, 2 * n))
        return -1;
    for (size_t i = 0; i < n; i++)
        buf->len += tok_utf8_encode(tok_byte_char((uint8_t)s[i]), buf->data + buf->len);
    return 0;
}

static moeq_code apply_step(const tok_pretok_step *st, const char *s, size_t n, int at_start,
                            tok_pieces *out, pcre2_match_data *md, tok_spans *spans,
                            tok_buf *work, moeq_error *err)
{
    int oom = 0;
    moeq_code rc;
    switch (st->kind) {
    case PT_SPLIT:
        if ((rc = tok_pattern_split(&st->pattern, st->behavior, st->invert, s, n, md, spans,
                                    err)))
            return rc;
        oom = push_spans(out, s, spans, at_start);
        break;
    case PT_BYTELEVEL: {
        work->len = 0;
        if (st->add_prefix_space && (n == 0 || s[0] != ' '))
            oom = tok_buf_append(work, " ", 1);
        if (oom || tok_buf_append(work, s, n)) {
            oom = 1;
            break;
        }
        tok_buf mapped = {0};
        if (!st->has_pattern) {
            oom = byte_map(work->data, work->len, &mapped) ||
                  tok_pieces_push(out, mapped.data, mapped.len, at_start);
            tok_buf_free(&mapped);
            break;
        }
        if ((rc = tok_pattern_split(&st->pattern, st->behavior, 0, work->data, work->len, md,
                                    spans, err)))
            return rc;
        for (size_t i = 0; i < spans->len && !oom; i++) {
            mapped.len = 0;
            oom = byte_map(work->data + spans->data[i].start, spans->data[i].len, &mapped) ||
                  tok_pieces_push(out, mapped.data, mapped.len,
                                  at_start && spans->data[i].start == 0);
        }
        tok_buf_free(&mapped);
        break;
    }
    case PT_METASPACE: {
        work->len = 0;
        int starts = n >= st->replacement_len &&
                     memcmp(s, st->replacement, st->replacement_len) == 0;
        int prepend = !starts && (st->prepend == PREPEND_ALWAYS ||
                                  (st->prepend == PREPEND_FIRST && at_start));
        /* Leading spaces become the replacement too, so check after it. */
        if (!starts && n && s[0] == ' ')
            prepend = 0;
        if (prepend)
            oom = tok_buf_append(work, st->replacement, st->replacement_len);
        for (size_t i = 0; i < n && !oom; i++) {
            if (s[i] == ' ')
                oom = tok_buf_append(work, st->replacement, st->replacement_len);
            else
                oom = tok_buf_append(work, s + i, 1);
        }
        if (oom)
            break;
        if (!st->split) {
            oom = tok_pieces_push(out, work->data, work->len, at_start);
            break;
        }
        tok_pattern lit = {.literal = st->replacement, .literal_len = st->replacement_len};
        if ((rc = tok_pattern_split(&lit, TOK_SPLIT_MERGED_WITH_NEXT, 0, work->data, work->len,
                                    md, spans, err)))
            return rc;
        oom = push_spans(out, work->data, spans, at_start);
        break;
    }
    }
    if (oom)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer pre_tokenizer: out of memory");
    return MOEQ_OK;
}

moeq_code tok_pretokenize(const tok_pretokenizer *pt, tok_pieces *words, tok_pieces *tmp,
                          pcre2_match_data *md, tok_spans *spans, moeq_error *err)
{
    tok_buf work = {0};
    moeq_code rc = MOEQ_OK;
    for (size_t k = 0; k < pt->n_steps && !rc; k++) {
        tok_pieces_clear(tmp);
        for (size_t i = 0; i < words->len && !rc; i++) {
            const tok_span *w = &words->spans[i];
            rc = apply_step(&pt->steps[k], words->text.data + w->start, w->len,
                            words->at_start[i], tmp, md, spans, &work, err);
        }
        tok_pieces swap = *words;
        *words = *tmp;
        *tmp = swap;
    }
    tok_buf_free(&work);
    return rc;
}
