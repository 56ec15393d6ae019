/* tok_internal.h: the pieces of the tokenizer shared between its files.
 *
 * A tokenizer.json is a pipeline (see the `tokenizers` docs, "The
 * tokenization pipeline"): added-token split -> normalizer -> pre-tokenizer
 * -> model (BPE) -> post-processor; decoding runs the decoder. Each stage is
 * parsed into a flat list of steps (a "Sequence" is flattened on load). */
#ifndef MOEQ_TOK_INTERNAL_H
#define MOEQ_TOK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <pcre2.h>

#include "moeq/moeq.h"

/* ---- growable byte buffer and id list (buffer.c) */
typedef struct tok_buf {
    char *data;
    size_t len, cap;
} tok_buf;

/* Return 0, or -1 when out of memory. */
int tok_buf_append(tok_buf *b, const void *p, size_t n);
int tok_buf_reserve(tok_buf *b, size_t extra);
void tok_buf_free(tok_buf *b);

typedef struct tok_ids {
    int32_t *data;
    size_t len, cap;
} tok_ids;

int tok_ids_push(tok_ids *v, int32_t id);

/* A span of a text: [start, start + len). */
typedef struct tok_span {
    size_t start, len;
} tok_span;

typedef struct tok_spans {
    tok_span *data;
    size_t len, cap;
} tok_spans;

int tok_spans_push(tok_spans *v, size_t start, size_t len);

/* A list of strings that share one byte buffer: pre-tokenizer words,
 * decoder tokens. at_start marks a piece that begins the input text
 * (Metaspace prepend_scheme "first" depends on it). */
typedef struct tok_pieces {
    tok_buf text;
    tok_span *spans;
    uint8_t *at_start;
    size_t len, cap;
} tok_pieces;

int tok_pieces_push(tok_pieces *p, const char *s, size_t n, int at_start);
void tok_pieces_clear(tok_pieces *p);
void tok_pieces_free(tok_pieces *p);

/* ---- UTF-8 (utf8.c) */
/* Copies s to out with every maximal invalid subsequence replaced by
 * U+FFFD (Unicode 15, section 3.9, "U+FFFD Substitution of Maximal
 * Subparts", as Rust's from_utf8_lossy). */
int tok_utf8_sanitize(const char *s, size_t n, tok_buf *out);
/* Length of the UTF-8 sequence starting at s (s is valid UTF-8). */
size_t tok_utf8_len(unsigned char lead);
/* Decodes one code point of valid UTF-8; returns its byte length. */
size_t tok_utf8_decode(const char *s, int32_t *cp);
/* Encodes cp into out (4 bytes room); returns the byte length. */
size_t tok_utf8_encode(int32_t cp, char *out);
/* Rust's char::is_whitespace (Unicode White_Space). */
int tok_is_whitespace(int32_t cp);

/* ---- string -> id map (strmap.c) */
typedef struct tok_strmap {
    tok_buf keys;     /* all keys, back to back */
    uint32_t *slots;  /* entry index + 1, 0 = empty */
    size_t n_slots;   /* power of two */
    struct tok_strmap_entry {
        size_t off, len;
        int32_t value;
    } *entries;
    size_t len, cap;
} tok_strmap;

/* Inserts or overwrites; returns 0, or -1 when out of memory. */
int tok_strmap_put(tok_strmap *m, const char *key, size_t n, int32_t value);
/* Value for key, or -1. */
int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t n);
void tok_strmap_free(tok_strmap *m);

/* ---- patterns: literal strings and regexes (pattern.c) */
typedef struct tok_pattern {
    char *literal; /* NULL for a regex */
    size_t literal_len;
    pcre2_code *re;
} tok_pattern;

/* Split behaviours of the `tokenizers` SplitDelimiterBehavior enum. */
typedef enum tok_split_behavior {
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_MERGED_WITH_PREVIOUS,
    TOK_SPLIT_MERGED_WITH_NEXT,
    TOK_SPLIT_CONTIGUOUS,
} tok_split_behavior;

/* Parses {"String": s} or {"Regex": r}; `what` names the field for errors. */
moeq_code tok_pattern_parse(const cJSON *j, const char *path, const char *what,
                            tok_pattern *out, moeq_error *err);
/* Compiles an Oniguruma-syntax regex (as `tokenizers` uses) with PCRE2. */
moeq_code tok_pattern_regex(const char *regex, const char *path, const char *what,
                            tok_pattern *out, moeq_error *err);
void tok_pattern_free(tok_pattern *p);

/* Splits s[0..n) into spans by the pattern's matches; spans are relative to
 * s and never empty. md is caller-owned match data (see tok_match_data). */
moeq_code tok_pattern_split(const tok_pattern *p, tok_split_behavior behavior, int invert,
                            const char *s, size_t n, pcre2_match_data *md,
                            tok_spans *out, moeq_error *err);
/* Replaces every match of p in s by content, appending to out. */
moeq_code tok_pattern_replace(const tok_pattern *p, const char *s, size_t n,
                              const char *content, size_t content_len,
                              pcre2_match_data *md, tok_buf *out, moeq_error *err);
pcre2_match_data *tok_match_data(void);
moeq_code tok_split_behavior_parse(const cJSON *j, const char *path,
                                   tok_split_behavior *out, moeq_error *err);

/* ---- normalizer (normalize.c) */
typedef struct tok_norm_step tok_norm_step;
typedef struct tok_normalizer {
    tok_norm_step *steps;
    size_t n_steps;
} tok_normalizer;

moeq_code tok_normalizer_parse(const cJSON *j, const char *path, tok_normalizer *out,
                               moeq_error *err);
void tok_normalizer_free(tok_normalizer *n);
/* Normalizes s into out (cleared first). */
moeq_code tok_normalize(const tok_normalizer *nz, const char *s, size_t n,
                        pcre2_match_data *md, tok_buf *out, moeq_error *err);

/* ---- pre-tokenizer (pretok.c) */
typedef struct tok_pretok_step tok_pretok_step;
typedef struct tok_pretokenizer {
    tok_pretok_step *steps;
    size_t n_steps;
    int byte_level; /* a ByteLevel step is present: words are byte-mapped */
} tok_pretokenizer;

moeq_code tok_pretokenizer_parse(const cJSON *j, const char *path, tok_pretokenizer *out,
                                 moeq_error *err);
void tok_pretokenizer_free(tok_pretokenizer *p);
/* Replaces the pieces in *words by their pre-tokenized words; tmp is
 * scratch of the caller. */
moeq_code tok_pretokenize(const tok_pretokenizer *pt, tok_pieces *words, tok_pieces *tmp,
                          pcre2_match_data *md, tok_spans *spans, moeq_error *err);

/* GPT-2's byte-to-unicode table (the `bytes_to_unicode` of openai/gpt-2
 * encoder.py): byte b is written as code point tok_byte_char(b). */
int32_t tok_byte_char(uint8_t b);
/* Byte for a byte-level code point, or -1. */
int tok_char_byte(int32_t cp);

/* ---- BPE model (bpe.c) */
typedef struct tok_bpe_merge_map tok_bpe_merge_map;
typedef struct tok_bpe {
    tok_strmap vocab;
    char **id_to_token; /* n_ids entries, NULL for holes */
    size_t n_ids;
    tok_bpe_merge_map *merges;
    int32_t unk_id; /* -1 without unk_token */
    int fuse_unk, byte_fallback, ignore_merges;
    char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix */
    int32_t byte_ids[256]; /* <0xNN> ids when byte_fallback, else -1 */
} tok_bpe;

/* Scratch space reused across words within one encode call. */
typedef struct tok_bpe_scratch {
    struct tok_bpe_symbol *symbols;
    size_t symbols_cap;
    struct tok_bpe_candidate *heap;
    size_t heap_cap;
    tok_buf key;
} tok_bpe_scratch;

moeq_code tok_bpe_parse(const cJSON *model, const char *path, tok_bpe *out, moeq_error *err);
void tok_bpe_free(tok_bpe *bpe);
/* Appends the ids of one pre-tokenized word to out. */
moeq_code tok_bpe_encode_word(const tok_bpe *bpe, const char *w, size_t n,
                              tok_bpe_scratch *scratch, tok_ids *out, moeq_error *err);
void tok_bpe_scratch_free(tok_bpe_scratch *s);

/* ---- added tokens (added.c) */
typedef struct tok_added_token {
    char *content; /* as matched: normalized already when normalized */
    size_t len;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} tok_added_token;

typedef struct tok_added {
    tok_added_token *tokens;
    size_t n;
    uint8_t starts[2][256]; /* [normalized][byte]: some token starts so */
} tok_added;

moeq_code tok_added_parse(const cJSON *j, const char *path, const tok_normalizer *nz,
                          tok_added *out, moeq_error *err);
void tok_added_free(tok_added *a);
/* Splits s into segments: text spans (id -1) and added tokens, using only
 * the tokens whose `normalized` flag equals `normalized`. */
typedef struct tok_segment {
    size_t start, len;
    int32_t id;
} tok_segment;
typedef struct tok_segments {
    tok_segment *data;
    size_t len, cap;
} tok_segments;
int tok_added_split(const tok_added *a, int normalized, const char *s, size_t n,
                    tok_segments *out);

/* ---- decoder (decode.c) */
typedef struct tok_dec_step tok_dec_step;
typedef struct tok_decoder {
    tok_dec_step *steps;
    size_t n_steps;
} tok_decoder;

moeq_code tok_decoder_parse(const cJSON *j, const char *path, tok_decoder *out,
                            moeq_error *err);
void tok_decoder_free(tok_decoder *d);
/* Runs the decoder over the tokens and appends the text to out. */
moeq_code tok_decode_tokens(const tok_decoder *d, tok_pieces *tokens, tok_buf *out,
                            moeq_error *err);

/* ---- JSON helpers (json.c) */
/* String member or NULL if absent/null; a non-string fails. */
moeq_code tok_json_string(const cJSON *obj, const char *key, const char *path,
                          const char *section, const char **out, moeq_error *err);
/* Boolean member with a default when absent or null. */
moeq_code tok_json_bool(const cJSON *obj, const char *key, const char *path,
                        const char *section, int dflt, int *out, moeq_error *err);
/* A required string member: a malloc'ed copy in *out, its length in *len.
 * section and type name it in errors ("decoder", "Replace"). */
moeq_code tok_json_string_copy(const cJSON *obj, const char *key, const char *path,
                               const char *section, const char *type, char **out, size_t *len,
                               moeq_error *err);

/* A section that is a list of steps (normalizer, pre_tokenizer, decoder):
 * absent or null is no step; otherwise an object whose "type" names one
 * step, or "Sequence", whose list (list_key) is flattened into its steps in
 * order. add_step appends the step j of that type to out. */
typedef struct tok_section {
    const char *name;     /* "pre_tokenizer": the section in errors */
    const char *list_key; /* "pretokenizers" */
    moeq_code (*add_step)(const cJSON *j, const char *path, const char *type, void *out,
                          moeq_error *err);
} tok_section;
moeq_code tok_section_parse(const tok_section *sec, const cJSON *j, const char *path, void *out,
                            moeq_error *err);

#endif
