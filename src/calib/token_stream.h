/* token_stream.h: documents -> one stream of token ids, each document
 * tokenized on its own (no special tokens) and followed by the end-of-text
 * token when the tokenizer has one, so documents do not run into each other. */
#ifndef MOEQ_CALIB_TOKEN_STREAM_H
#define MOEQ_CALIB_TOKEN_STREAM_H

#include "calib/documents.h"
#include "tok/tokenizer.h"

#include <stdint.h>

/* The separator moeq uses: the first of <|endoftext|>, </s>, <|end_of_text|>,
 * <eos> the tokenizer knows, or -1. */
int32_t moeq_document_separator(const moeq_tokenizer *tok);

moeq_code moeq_tokenize_documents(const moeq_tokenizer *tok, const moeq_documents *docs,
                                  int32_t **ids, size_t *n_ids, moeq_error *err);

/* Reads little-endian int32 ids from path (--tokens). */
moeq_code moeq_read_token_file(const char *path, int32_t **ids, size_t *n_ids, moeq_error *err);

#endif
