/* fuzz_tokenize.c: encoding arbitrary bytes (valid UTF-8 or not) with the
 * test fixtures' tokenizers (byte-level and SentencePiece-style), then
 * decoding: every id must lie inside the vocabulary. */
#include "fuzz.h"

#include "tok/tokenizer.h"

#ifndef MOEQ_SOURCE_DIR
#define MOEQ_SOURCE_DIR "."
#endif

static moeq_tokenizer *toks[2];

static void load_once(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    const char *names[2] = {"bytelevel", "sentencepiece"};
    for (int i = 0; i < 2; i++) {
        char path[1024];
        moeq_error err = {0};
        snprintf(path, sizeof path, "%s/tests/fixtures/tok/%s/tokenizer.json", MOEQ_SOURCE_DIR,
                 names[i]);
        if (moeq_tokenizer_load(path, &toks[i], &err)) {
            fprintf(stderr, "fuzz_tokenize: %s\n", err.msg);
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    load_once();
    const char *text = (const char *)data;
    for (int i = 0; i < 2; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        moeq_error err = {0};
        if (moeq_tokenizer_encode(toks[i], text, size, 0, &ids, &n, &err) != MOEQ_OK) {
            if (!err.msg[0])
                abort();
            continue;
        }
        for (size_t k = 0; k < n; k++)
            if (ids[k] < 0 || (size_t)ids[k] >= moeq_tokenizer_vocab_size(toks[i]))
                abort();
        char *back = NULL;
        if (moeq_tokenizer_decode(toks[i], ids, n, &back, &err) == MOEQ_OK)
            free(back);
        free(ids);
    }
    return 0;
}
