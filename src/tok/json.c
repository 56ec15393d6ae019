/* json.c: typed access to tokenizer.json members with errors that name the
 * file, the section and the field. */
#include "tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

moeq_code tok_json_string(const cJSON *obj, const char *key, const char *path,
                          const char *section, const char **out, moeq_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v))
        return MOEQ_OK;
    if (!cJSON_IsString(v))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: %s.%s is not a string",
                         path, section, key);
    *out = v->valuestring;
    return MOEQ_OK;
}

moeq_code tok_json_bool(const cJSON *obj, const char *key, const char *path,
                        const char *section, int dflt, int *out, moeq_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = dflt;
    if (!v || cJSON_IsNull(v))
        return MOEQ_OK;
    if (!cJSON_IsBool(v))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: %s.%s is not a boolean",
                         path, section, key);
    *out = cJSON_IsTrue(v);
    return MOEQ_OK;
}

char *tok_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}
