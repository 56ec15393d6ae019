/* tokenizer.h: Hugging Face tokenizer.json reader (BPE models).
 *
 * Produces the same ids as the `tokenizers` library for byte-level BPE
 * (GPT-2, Qwen2/3, DeepSeek) and SentencePiece-style BPE (Llama-2,
 * Mixtral), so calibration text is tokenized exactly as the model saw it.
 *
 * Input text is UTF-8. Invalid UTF-8 is replaced before anything else, the
 * way Rust's String::from_utf8_lossy does: each maximal invalid subsequence
 * becomes one U+FFFD. The result is deterministic and never fails. */
#ifndef MOEQ_TOK_TOKENIZER_H
#define MOEQ_TOK_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "moeq/moeq.h"

typedef struct moeq_tokenizer moeq_tokenizer;

/* Loads tokenizer.json at path. Unknown component types fail with
 * MOEQ_ERR_UNSUPPORTED naming the file, the section and the type. */
moeq_code moeq_tokenizer_load(const char *path, moeq_tokenizer **out, moeq_error *err);
void moeq_tokenizer_free(moeq_tokenizer *tok);

/* Encodes len bytes of UTF-8 text. add_special applies the post_processor
 * template (e.g. BOS for Llama). *ids is malloc'ed; the caller frees it. */
moeq_code moeq_tokenizer_encode(const moeq_tokenizer *tok, const char *text, size_t len,
                                int add_special, int32_t **ids, size_t *n_ids,
                                moeq_error *err);

/* Decodes ids to UTF-8 through the file's decoder; special tokens are kept.
 * *out is malloc'ed and NUL-terminated; the caller frees it. */
moeq_code moeq_tokenizer_decode(const moeq_tokenizer *tok, const int32_t *ids, size_t n,
                                char **out, moeq_error *err);

/* Max id + 1 over the model vocabulary and the added tokens. */
size_t moeq_tokenizer_vocab_size(const moeq_tokenizer *tok);

/* Id of a token string (vocabulary or added token), or -1 if absent. */
int32_t moeq_tokenizer_token_id(const moeq_tokenizer *tok, const char *token);

#endif
