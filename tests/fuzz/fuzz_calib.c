/* fuzz_calib.c: calibration JSONL (src/calib/documents.c): "text"
 * documents, chat "messages" with tools and tool calls, the "lang" filter. */
#include "fuzz.h"

#include "calib/documents.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_input(data, size, ".jsonl");
    if (!path)
        return 0;
    static const char *const filters[3] = {NULL, "en", "de,fr,zh"};
    moeq_documents docs = {0};
    moeq_error err = {0};
    if (moeq_documents_load(path, filters[size % 3], &docs, &err) != MOEQ_OK && !err.msg[0])
        abort();
    for (size_t i = 0; i < docs.count; i++)
        if (!docs.docs[i].text)
            abort();
    moeq_documents_free(&docs);
    return 0;
}
