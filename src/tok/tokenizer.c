/* tokenizer.c: loads tokenizer.json and runs its pipeline: split on added
 * tokens, normalize, split on normalized added tokens, pre-tokenize, BPE
 * per word, then the post_processor template. Decoding maps ids to token
 * strings and runs the decoder. */
#include "tok/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok_internal.h"

struct moeq_tokenizer {
    tok_normalizer normalizer;
    tok_pretokenizer pretok;
    tok_bpe bpe;
    tok_added added;
    tok_decoder decoder;
    int has_decoder;
    /* post_processor template for a single sequence: ids before and after
     * the text ("$A"). */
    tok_ids template_before, template_after;
    size_t vocab_size;
};

static moeq_code read_file(const char *path, char **out, moeq_error *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return moeq_fail(err, errno == ENOENT ? MOEQ_ERR_NOT_FOUND : MOEQ_ERR_IO,
                         "tokenizer.json %s: cannot open: %s", path, strerror(errno));
    tok_buf b = {0};
    char chunk[65536];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (tok_buf_append(&b, chunk, k)) {
            fclose(f);
            tok_buf_free(&b);
            return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad || tok_buf_append(&b, "", 1)) {
        tok_buf_free(&b);
        return moeq_fail(err, MOEQ_ERR_IO, "tokenizer.json %s: read failed", path);
    }
    *out = b.data;
    return MOEQ_OK;
}

/* Looks up a TemplateProcessing special token's ids in special_tokens. */
static moeq_code template_special(const cJSON *specials, const char *name, const char *path,
                                  tok_ids *out, moeq_error *err)
{
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(specials, name);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(entry, "ids");
    if (!cJSON_IsArray(ids))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "tokenizer.json %s: post_processor.special_tokens[\"%s\"].ids missing",
                         path, name);
    const cJSON *id;
    cJSON_ArrayForEach(id, ids)
    {
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > INT32_MAX - 1)
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "tokenizer.json %s: post_processor.special_tokens[\"%s\"].ids has "
                             "a bad id",
                             path, name);
        if (tok_ids_push(out, (int32_t)id->valuedouble))
            return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    }
    return MOEQ_OK;
}

static moeq_code parse_template(const cJSON *j, const char *path, moeq_tokenizer *tok,
                                moeq_error *err)
{
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(j, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(j, "special_tokens");
    if (!cJSON_IsArray(single))
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "tokenizer.json %s: post_processor TemplateProcessing.single is not a "
                         "list",
                         path);
    int seen_sequence = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, single)
    {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(item, "SpecialToken");
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(item, "Sequence");
        if (seq) {
            seen_sequence = 1;
            continue;
        }
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(sp, "id");
        if (!cJSON_IsString(name))
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "tokenizer.json %s: post_processor TemplateProcessing.single has "
                             "an item that is neither SpecialToken nor Sequence",
                             path);
        moeq_code rc = template_special(specials, name->valuestring, path,
                                        seen_sequence ? &tok->template_after
                                                      : &tok->template_before,
                                        err);
        if (rc)
            return rc;
    }
    return MOEQ_OK;
}

static moeq_code parse_post_processor(const cJSON *j, const char *path, moeq_tokenizer *tok,
                                      moeq_error *err)
{
    if (!j || cJSON_IsNull(j))
        return MOEQ_OK;
    const char *type;
    moeq_code rc = tok_json_string(j, "type", path, "post_processor", &type, err);
    if (rc)
        return rc;
    if (!type)
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: post_processor.type missing",
                         path);
    if (strcmp(type, "ByteLevel") == 0) /* offsets only; ids unchanged */
        return MOEQ_OK;
    if (strcmp(type, "TemplateProcessing") == 0) {
        if (tok->template_before.len || tok->template_after.len)
            return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                             "tokenizer.json %s: post_processor has two TemplateProcessing",
                             path);
        return parse_template(j, path, tok, err);
    }
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "processors");
        if (!cJSON_IsArray(list))
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "tokenizer.json %s: post_processor Sequence.processors is not a list",
                             path);
        const cJSON *child;
        cJSON_ArrayForEach(child, list)
        {
            if ((rc = parse_post_processor(child, path, tok, err)))
                return rc;
        }
        return MOEQ_OK;
    }
    return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                     "tokenizer.json %s: post_processor type \"%s\" is not supported", path,
                     type);
}

static moeq_code load_json(const cJSON *root, const char *path, moeq_tokenizer *tok,
                           moeq_error *err)
{
    if (!cJSON_IsObject(root))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: top level is not an object",
                         path);
    moeq_code rc;
    const cJSON *decoder = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if ((rc = tok_bpe_parse(cJSON_GetObjectItemCaseSensitive(root, "model"), path, &tok->bpe,
                            err)) ||
        (rc = tok_normalizer_parse(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path,
                                   &tok->normalizer, err)) ||
        (rc = tok_pretokenizer_parse(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
                                     path, &tok->pretok, err)) ||
        (rc = tok_added_parse(cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), path,
                              &tok->normalizer, &tok->added, err)) ||
        (rc = tok_decoder_parse(decoder, path, &tok->decoder, err)) ||
        (rc = parse_post_processor(cJSON_GetObjectItemCaseSensitive(root, "post_processor"),
                                   path, tok, err)))
        return rc;
    tok->has_decoder = decoder && !cJSON_IsNull(decoder);
    tok->vocab_size = tok->bpe.n_ids;
    for (size_t i = 0; i < tok->added.n; i++) {
        if ((size_t)tok->added.tokens[i].id + 1 > tok->vocab_size)
            tok->vocab_size = (size_t)tok->added.tokens[i].id + 1;
    }
    return MOEQ_OK;
}

moeq_code moeq_tokenizer_load(const char *path, moeq_tokenizer **out, moeq_error *err)
{
    *out = NULL;
    char *text;
    moeq_code rc = read_file(path, &text, err);
    if (rc)
        return rc;
    cJSON *root = cJSON_Parse(text);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t offset = at && at >= text ? (size_t)(at - text) : 0;
        free(text);
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: not valid JSON (near byte %zu)",
                         path, offset);
    }
    free(text);
    moeq_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        cJSON_Delete(root);
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    }
    rc = load_json(root, path, tok, err);
    cJSON_Delete(root);
    if (rc) {
        moeq_tokenizer_free(tok);
        return rc;
    }
    *out = tok;
    return MOEQ_OK;
}

void moeq_tokenizer_free(moeq_tokenizer *tok)
{
    if (!tok)
        return;
    tok_normalizer_free(&tok->normalizer);
    tok_pretokenizer_free(&tok->pretok);
    tok_bpe_free(&tok->bpe);
    tok_added_free(&tok->added);
    tok_decoder_free(&tok->decoder);
    free(tok->template_before.data);
    free(tok->template_after.data);
    free(tok);
}

/* Working memory of one encode call. */
typedef struct encode_state {
    tok_buf clean, norm;
    tok_segments raw_segments, norm_segments;
    tok_pieces words, tmp;
    tok_spans spans;
    tok_bpe_scratch bpe;
    pcre2_match_data *md;
    tok_ids ids;
} encode_state;

static void encode_state_free(encode_state *st)
{
    tok_buf_free(&st->clean);
    tok_buf_free(&st->norm);
    free(st->raw_segments.data);
    free(st->norm_segments.data);
    tok_pieces_free(&st->words);
    tok_pieces_free(&st->tmp);
    free(st->spans.data);
    tok_bpe_scratch_free(&st->bpe);
    pcre2_match_data_free(st->md);
    free(st->ids.data);
}

static moeq_code push_ids(tok_ids *v, const tok_ids *more, moeq_error *err)
{
    for (size_t i = 0; i < more->len; i++) {
        if (tok_ids_push(v, more->data[i]))
            return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory");
    }
    return MOEQ_OK;
}

/* Normalizes, pre-tokenizes and BPE-encodes one text segment that holds no
 * unnormalized added token. */
static moeq_code encode_segment(const moeq_tokenizer *tok, encode_state *st, const char *s,
                                size_t n, int at_start, moeq_error *err)
{
    moeq_code rc = tok_normalize(&tok->normalizer, s, n, st->md, &st->norm, err);
    if (rc)
        return rc;
    if (tok_added_split(&tok->added, 1, st->norm.data, st->norm.len, &st->norm_segments))
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory");
    for (size_t i = 0; i < st->norm_segments.len; i++) {
        const tok_segment *seg = &st->norm_segments.data[i];
        if (seg->id >= 0) {
            if (tok_ids_push(&st->ids, seg->id))
                return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory");
            continue;
        }
        tok_pieces_clear(&st->words);
        if (tok_pieces_push(&st->words, st->norm.data + seg->start, seg->len,
                            at_start && seg->start == 0))
            return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory");
        if ((rc = tok_pretokenize(&tok->pretok, &st->words, &st->tmp, st->md, &st->spans, err)))
            return rc;
        for (size_t w = 0; w < st->words.len; w++) {
            const tok_span *sp = &st->words.spans[w];
            if ((rc = tok_bpe_encode_word(&tok->bpe, st->words.text.data + sp->start, sp->len,
                                          &st->bpe, &st->ids, err)))
                return rc;
        }
    }
    return MOEQ_OK;
}

moeq_code moeq_tokenizer_encode(const moeq_tokenizer *tok, const char *text, size_t len,
                                int add_special, int32_t **ids, size_t *n_ids,
                                moeq_error *err)
{
    *ids = NULL;
    *n_ids = 0;
    if (!tok || (!text && len))
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "tokenizer encode: no tokenizer or text");
    encode_state st = {0};
    moeq_code rc = MOEQ_OK;
    st.md = tok_match_data();
    if (!st.md || tok_utf8_sanitize(text ? text : "", len, &st.clean) ||
        tok_added_split(&tok->added, 0, st.clean.data, st.clean.len, &st.raw_segments))
        rc = moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory");
    if (!rc && add_special)
        rc = push_ids(&st.ids, &tok->template_before, err);
    for (size_t i = 0; i < st.raw_segments.len && !rc; i++) {
        const tok_segment *seg = &st.raw_segments.data[i];
        if (seg->id >= 0) {
            if (tok_ids_push(&st.ids, seg->id))
                rc = moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory");
            continue;
        }
        rc = encode_segment(tok, &st, st.clean.data + seg->start, seg->len, seg->start == 0,
                            err);
    }
    if (!rc && add_special)
        rc = push_ids(&st.ids, &tok->template_after, err);
    if (!rc) {
        /* Hand the id array to the caller (never NULL, even when empty). */
        if (!st.ids.data && tok_ids_push(&st.ids, 0) == 0)
            st.ids.len = 0;
        if (!st.ids.data) {
            rc = moeq_fail(err, MOEQ_ERR_OOM, "tokenizer: out of memory");
        } else {
            *ids = st.ids.data;
            *n_ids = st.ids.len;
            st.ids.data = NULL;
        }
    }
    encode_state_free(&st);
    return rc;
}

/* Token string of an id: added tokens first, as tokenizers' decode does. */
static const char *id_token(const moeq_tokenizer *tok, int32_t id)
{
    for (size_t i = 0; i < tok->added.n; i++) {
        if (tok->added.tokens[i].id == id)
            return tok->added.tokens[i].content;
    }
    if (id >= 0 && (size_t)id < tok->bpe.n_ids)
        return tok->bpe.id_to_token[id];
    return NULL;
}

moeq_code moeq_tokenizer_decode(const moeq_tokenizer *tok, const int32_t *ids, size_t n,
                                char **out, moeq_error *err)
{
    *out = NULL;
    if (!tok || (!ids && n))
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "tokenizer decode: no tokenizer or ids");
    tok_pieces tokens = {0};
    tok_buf text = {0};
    moeq_code rc = MOEQ_OK;
    for (size_t i = 0; i < n && !rc; i++) {
        const char *t = id_token(tok, ids[i]);
        if (!t)
            rc = moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                           "tokenizer decode: id %d (position %zu) is not in the vocabulary",
                           (int)ids[i], i);
        else if (tok_pieces_push(&tokens, t, strlen(t), 0))
            rc = moeq_fail(err, MOEQ_ERR_OOM, "tokenizer decode: out of memory");
    }
    if (!rc && tok->has_decoder) {
        rc = tok_decode_tokens(&tok->decoder, &tokens, &text, err);
    } else if (!rc) {
        /* Without a decoder `tokenizers` joins the tokens with spaces. */
        for (size_t i = 0; i < tokens.len && !rc; i++) {
            if ((i && tok_buf_append(&text, " ", 1)) ||
                tok_buf_append(&text, tokens.text.data + tokens.spans[i].start,
                               tokens.spans[i].len))
                rc = moeq_fail(err, MOEQ_ERR_OOM, "tokenizer decode: out of memory");
        }
    }
    if (!rc && tok_buf_append(&text, "", 1))
        rc = moeq_fail(err, MOEQ_ERR_OOM, "tokenizer decode: out of memory");
    tok_pieces_free(&tokens);
    if (rc) {
        tok_buf_free(&text);
        return rc;
    }
    *out = text.data;
    return MOEQ_OK;
}

size_t moeq_tokenizer_vocab_size(const moeq_tokenizer *tok)
{
    return tok ? tok->vocab_size : 0;
}

int32_t moeq_tokenizer_token_id(const moeq_tokenizer *tok, const char *token)
{
    if (!tok || !token)
        return -1;
    for (size_t i = 0; i < tok->added.n; i++) {
        if (strcmp(tok->added.tokens[i].content, token) == 0)
            return tok->added.tokens[i].id;
    }
    return tok_strmap_get(&tok->bpe.vocab, token, strlen(token));
}
