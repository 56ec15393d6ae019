/* pattern.c: the String/Regex patterns of tokenizer.json, used by Split,
 * Replace and the built-in ByteLevel regex.
 *
 * `tokenizers` compiles regexes with Oniguruma; here PCRE2 (UTF + UCP)
 * runs them. The two agree on \p{..}, (?i:..) (both fold with Unicode
 * case folding, e.g. U+017F matches 's'), and lookahead. They differ on
 * \s: Oniguruma's is Unicode White_Space, which includes U+0085 (NEL);
 * PCRE2's is Z plus \t\n\v\f\r, which does not. Patterns are rewritten so
 * \s includes U+0085 (\S inside a class is left as is; no known
 * tokenizer uses it). */
#include "tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

/* Rewrites \s and \S (outside classes) so that they match U+0085 like
 * Oniguruma's. Returns a malloc'ed pattern or NULL on OOM. */
static char *onig_to_pcre2(const char *re)
{
    tok_buf b = {0};
    int in_class = 0;
    for (size_t i = 0; re[i]; i++) {
        char c = re[i];
        if (c == '\\' && re[i + 1]) {
            char e = re[i + 1];
            const char *put = NULL;
            if (e == 's')
                put = in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
            else if (e == 'S' && !in_class)
                put = "[^\\s\\x{85}]";
            if (put) {
                if (tok_buf_append(&b, put, strlen(put)))
                    goto oom;
            } else if (tok_buf_append(&b, re + i, 2)) {
                goto oom;
            }
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            if (tok_buf_append(&b, re + i, 1))
                goto oom;
            /* A ']' right after '[' or '[^' is a literal. */
            if (re[i + 1] == '^') {
                if (tok_buf_append(&b, "^", 1))
                    goto oom;
                i++;
            }
            if (re[i + 1] == ']') {
                if (tok_buf_append(&b, "]", 1))
                    goto oom;
                i++;
            }
            continue;
        }
        if (c == ']' && in_class)
            in_class = 0;
        if (tok_buf_append(&b, &c, 1))
            goto oom;
    }
    if (tok_buf_append(&b, "", 1))
        goto oom;
    return b.data;
oom:
    tok_buf_free(&b);
    return NULL;
}

moeq_code tok_pattern_regex(const char *regex, const char *path, const char *what,
                            tok_pattern *out, moeq_error *err)
{
    memset(out, 0, sizeof *out);
    char *re = onig_to_pcre2(regex);
    if (!re)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: %s: out of memory", path, what);
    int code;
    PCRE2_SIZE at;
    out->re = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                            &code, &at, NULL);
    free(re);
    if (!out->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "tokenizer.json %s: %s: regex \"%s\" does not compile: %s", path,
                         what, regex, (const char *)msg);
    }
    /* JIT makes matching several times faster; without it PCRE2 still
     * matches (interpreted), so a JIT failure is not an error. */
    (void)pcre2_jit_compile(out->re, PCRE2_JIT_COMPLETE);
    return MOEQ_OK;
}

moeq_code tok_pattern_parse(const cJSON *j, const char *path, const char *what,
                            tok_pattern *out, moeq_error *err)
{
    memset(out, 0, sizeof *out);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "String");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "Regex");
    if (cJSON_IsString(s)) {
        out->literal = strdup(s->valuestring);
        if (!out->literal)
            return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: %s: out of memory", path,
                             what);
        out->literal_len = strlen(s->valuestring);
        return MOEQ_OK;
    }
    if (cJSON_IsString(r))
        return tok_pattern_regex(r->valuestring, path, what, out, err);
    return moeq_fail(err, MOEQ_ERR_FORMAT,
                     "tokenizer.json %s: %s.pattern must be {\"String\": ...} or "
                     "{\"Regex\": ...}",
                     path, what);
}

void tok_pattern_free(tok_pattern *p)
{
    free(p->literal);
    pcre2_code_free(p->re);
    memset(p, 0, sizeof *p);
}

pcre2_match_data *tok_match_data(void)
{
    /* Only the whole match (pair 0) is read. */
    return pcre2_match_data_create(1, NULL);
}

/* First occurrence of lit in s[from..n), or NULL (memmem is a GNU
 * extension, not POSIX). */
static const char *find_literal(const char *s, size_t n, size_t from, const char *lit,
                                size_t lit_len)
{
    while (from + lit_len <= n) {
        const char *hit = memchr(s + from, lit[0], n - from - lit_len + 1);
        if (!hit)
            return NULL;
        if (memcmp(hit, lit, lit_len) == 0)
            return hit;
        from = (size_t)(hit - s) + 1;
    }
    return NULL;
}

/* Finds the next non-empty match at or after from; returns 1 found,
 * 0 none, -1 error (message in err). */
static int next_match(const tok_pattern *p, const char *s, size_t n, size_t from,
                      pcre2_match_data *md, size_t *ms, size_t *me, moeq_error *err)
{
    if (p->literal) {
        if (!p->literal_len || from >= n)
            return 0;
        const char *hit = find_literal(s, n, from, p->literal, p->literal_len);
        if (!hit)
            return 0;
        *ms = (size_t)(hit - s);
        *me = *ms + p->literal_len;
        return 1;
    }
    while (from <= n) {
        /* The text is valid UTF-8 (sanitized on entry), so PCRE2 need not
         * re-check the whole subject on every call. */
        int rc = pcre2_match(p->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            return 0;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer regex match failed: %s",
                      (const char *)msg);
            return -1;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] > ov[0]) {
            *ms = ov[0];
            *me = ov[1];
            return 1;
        }
        /* An empty match splits nothing: search again one character on. */
        if (ov[0] >= n)
            return 0;
        from = ov[0] + tok_utf8_len((unsigned char)s[ov[0]]);
    }
    return 0;
}

/* Applies a split behaviour to the stream of (piece, is_match) in order;
 * mirrors SplitDelimiterBehavior in tokenizers' normalizer.rs. */
typedef struct split_state {
    tok_split_behavior behavior;
    tok_spans *out;
    int prev_match;
    int have_pending;    /* MergedWithNext: a match waiting for its next piece */
    size_t pending_start, pending_end;
} split_state;

static int emit(split_state *st, size_t start, size_t end, int is_match)
{
    tok_spans *o = st->out;
    int rc = 0;
    switch (st->behavior) {
    case TOK_SPLIT_REMOVED:
        if (!is_match)
            rc = tok_spans_push(o, start, end - start);
        break;
    case TOK_SPLIT_ISOLATED:
        rc = tok_spans_push(o, start, end - start);
        break;
    case TOK_SPLIT_MERGED_WITH_PREVIOUS:
        if (is_match && !st->prev_match && o->len)
            o->data[o->len - 1].len = end - o->data[o->len - 1].start;
        else
            rc = tok_spans_push(o, start, end - start);
        break;
    case TOK_SPLIT_CONTIGUOUS:
        if (is_match == st->prev_match && o->len)
            o->data[o->len - 1].len = end - o->data[o->len - 1].start;
        else
            rc = tok_spans_push(o, start, end - start);
        break;
    case TOK_SPLIT_MERGED_WITH_NEXT:
        if (st->have_pending) {
            st->have_pending = 0;
            if (!is_match) {
                rc = tok_spans_push(o, st->pending_start, end - st->pending_start);
                break;
            }
            rc = tok_spans_push(o, st->pending_start, st->pending_end - st->pending_start);
            if (rc)
                break;
        }
        if (is_match) {
            st->have_pending = 1;
            st->pending_start = start;
            st->pending_end = end;
        } else {
            rc = tok_spans_push(o, start, end - start);
        }
        break;
    }
    st->prev_match = is_match;
    return rc;
}

moeq_code tok_pattern_split(const tok_pattern *p, tok_split_behavior behavior, int invert,
                            const char *s, size_t n, pcre2_match_data *md,
                            tok_spans *out, moeq_error *err)
{
    out->len = 0;
    split_state st = {.behavior = behavior, .out = out};
    size_t prev = 0, ms, me;
    int found;
    int oom = 0;
    while (!oom && (found = next_match(p, s, n, prev, md, &ms, &me, err)) == 1) {
        if (ms > prev)
            oom |= emit(&st, prev, ms, invert);
        oom |= emit(&st, ms, me, !invert);
        prev = me;
    }
    if (!oom && found < 0)
        return err ? err->code : MOEQ_ERR_FORMAT;
    if (!oom && prev < n)
        oom |= emit(&st, prev, n, invert);
    if (!oom && st.have_pending)
        oom |= tok_spans_push(out, st.pending_start, st.pending_end - st.pending_start);
    if (oom)
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory splitting text");
    return MOEQ_OK;
}

moeq_code tok_pattern_replace(const tok_pattern *p, const char *s, size_t n,
                              const char *content, size_t content_len,
                              pcre2_match_data *md, tok_buf *out, moeq_error *err)
{
    size_t prev = 0, ms, me;
    int found;
    while ((found = next_match(p, s, n, prev, md, &ms, &me, err)) == 1) {
        if (tok_buf_append(out, s + prev, ms - prev) ||
            tok_buf_append(out, content, content_len))
            return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory replacing text");
        prev = me;
    }
    if (found < 0)
        return err ? err->code : MOEQ_ERR_FORMAT;
    if (tok_buf_append(out, s + prev, n - prev))
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory replacing text");
    return MOEQ_OK;
}

moeq_code tok_split_behavior_parse(const cJSON *j, const char *path,
                                   tok_split_behavior *out, moeq_error *err)
{
    static const struct {
        const char *name;
        tok_split_behavior b;
    } names[] = {
        {"Removed", TOK_SPLIT_REMOVED},
        {"Isolated", TOK_SPLIT_ISOLATED},
        {"MergedWithPrevious", TOK_SPLIT_MERGED_WITH_PREVIOUS},
        {"MergedWithNext", TOK_SPLIT_MERGED_WITH_NEXT},
        {"Contiguous", TOK_SPLIT_CONTIGUOUS},
    };
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "behavior");
    if (!cJSON_IsString(v))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "tokenizer.json %s: pre_tokenizer Split.behavior missing", path);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(v->valuestring, names[i].name) == 0) {
            *out = names[i].b;
            return MOEQ_OK;
        }
    }
    return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                     "tokenizer.json %s: pre_tokenizer Split.behavior \"%s\" is not supported",
                     path, v->valuestring);
}
