/* token_stream.c: documents -> token id stream; token files. */
#include "calib/token_stream.h"

#include "common/fileio.h"

#include <stdlib.h>
#include <string.h>

int32_t moeq_document_separator(const moeq_tokenizer *tok)
{
    static const char *const names[] = {"<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int32_t id = moeq_tokenizer_token_id(tok, names[i]);
        if (id >= 0)
            return id;
    }
    return -1;
}

moeq_code moeq_tokenize_documents(const moeq_tokenizer *tok, const moeq_documents *docs,
                                  int32_t **ids, size_t *n_ids, moeq_error *err)
{
    int32_t sep = moeq_document_separator(tok);
    size_t n = 0, cap = 1024;
    int32_t *out = malloc(cap * sizeof *out);
    if (!out)
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for token ids");
    for (size_t d = 0; d < docs->count; d++) {
        int32_t *doc_ids;
        size_t m;
        moeq_code rc = moeq_tokenizer_encode(tok, docs->docs[d].text, docs->docs[d].bytes, 0,
                                             &doc_ids, &m, err);
        if (rc) {
            free(out);
            return moeq_wrap(err, "document %zu: ", d);
        }
        if (n + m + 1 > cap) {
            while (n + m + 1 > cap)
                cap *= 2;
            int32_t *grown = realloc(out, cap * sizeof *out);
            if (!grown) {
                free(doc_ids);
                free(out);
                return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for %zu token ids", cap);
            }
            out = grown;
        }
        memcpy(out + n, doc_ids, m * sizeof *out);
        n += m;
        free(doc_ids);
        if (sep >= 0)
            out[n++] = sep;
    }
    *ids = out;
    *n_ids = n;
    return MOEQ_OK;
}

moeq_code moeq_read_token_file(const char *path, int32_t **ids, size_t *n_ids, moeq_error *err)
{
    char *data;
    size_t bytes;
    moeq_code rc = moeq_read_file(path, (size_t)1 << 34, &data, &bytes, err);
    if (rc)
        return rc;
    if (bytes % 4) {
        free(data);
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "%s: %zu bytes is not a whole number of int32 token ids", path, bytes);
    }
    size_t n = bytes / 4;
    int32_t *out = malloc((n ? n : 1) * sizeof *out);
    if (!out) {
        free(data);
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", path);
    }
    const unsigned char *p = (const unsigned char *)data;
    for (size_t i = 0; i < n; i++)
        out[i] = (int32_t)((uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                           (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24);
    free(data);
    *ids = out;
    *n_ids = n;
    return MOEQ_OK;
}
