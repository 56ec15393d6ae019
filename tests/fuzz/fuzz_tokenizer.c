/* fuzz_tokenizer.c: tokenizer.json loading (src/tok) on arbitrary files; a
 * file that loads then encodes and decodes a fixed multilingual text. */
#include "fuzz.h"

#include "tok/tokenizer.h"

static const char TEXT[] = "Hello, world! Grüße aus Köln. 你好，世界。 def f(x):\n\treturn x + 1  "
                           "<|im_start|>user\n¿Qué tal?<|im_end|> \xf0\x9f\x98\x80";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_input(data, size, "-tokenizer.json");
    if (!path)
        return 0;
    moeq_tokenizer *tok = NULL;
    moeq_error err = {0};
    if (moeq_tokenizer_load(path, &tok, &err) != MOEQ_OK) {
        if (!err.msg[0])
            abort();
        return 0;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (moeq_tokenizer_encode(tok, TEXT, sizeof TEXT - 1, 1, &ids, &n, &err) == MOEQ_OK) {
        char *back = NULL;
        if (moeq_tokenizer_decode(tok, ids, n, &back, &err) == MOEQ_OK)
            free(back);
        free(ids);
    }
    moeq_tokenizer_free(tok);
    return 0;
}
