/* fuzz_config.c: config.json (src/model/config.c) read through the
 * parameter mapping of the architecture its model_type names (qwen3_moe
 * when it names none that moeq knows), and the same text read as an
 * architecture file (--arch-file, src/model/arch.c). */
#include "fuzz.h"

#include "model/arch.h"
#include "model/config.h"

#include <cjson/cJSON.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *json = fuzz_string(data, size);
    if (!json)
        return 0;
    moeq_error err = {0};
    moeq_arch arch;
    char name[64] = "qwen3_moe";
    cJSON *root = cJSON_Parse(json);
    const cJSON *mt = root ? cJSON_GetObjectItemCaseSensitive(root, "model_type") : NULL;
    if (cJSON_IsString(mt) && strlen(mt->valuestring) < sizeof name)
        strcpy(name, mt->valuestring);
    cJSON_Delete(root);
    if (moeq_arch_for_model_type(name, &arch, &err) == MOEQ_OK ||
        moeq_arch_for_model_type("qwen3_moe", &arch, &err) == MOEQ_OK) {
        moeq_config cfg;
        if (moeq_config_parse(json, "fuzz/config.json", &arch, &cfg, &err) == MOEQ_OK)
            moeq_config_free(&cfg);
        else if (!err.msg[0])
            abort();
        moeq_arch_free(&arch);
    }
    moeq_arch parsed;
    if (moeq_arch_parse(json, "fuzz/arch.json", &parsed, &err) == MOEQ_OK)
        moeq_arch_free(&parsed);
    else if (!err.msg[0])
        abort();
    free(json);
    return 0;
}
