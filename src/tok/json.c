/* json.c: typed access to tokenizer.json members with errors that name the
 * file, the section and the field, and the walk shared by the sections that
 * are lists of steps. */
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

moeq_code tok_json_string_copy(const cJSON *obj, const char *key, const char *path,
                               const char *section, const char *type, char **out, size_t *len,
                               moeq_error *err)
{
    const char *s;
    moeq_code rc = tok_json_string(obj, key, path, type, &s, err);
    if (rc)
        return rc;
    if (!s)
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: %s %s.%s missing", path,
                         section, type, key);
    if (!(*out = strdup(s)))
        return moeq_fail(err, MOEQ_ERR_OOM, "tokenizer.json %s: out of memory", path);
    *len = strlen(s);
    return MOEQ_OK;
}

static moeq_code add_steps(const tok_section *sec, const cJSON *j, const char *path, void *out,
                           moeq_error *err)
{
    const char *type;
    moeq_code rc = tok_json_string(j, "type", path, sec->name, &type, err);
    if (rc)
        return rc;
    if (!type)
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: %s.type missing", path,
                         sec->name);
    if (strcmp(type, "Sequence") != 0)
        return sec->add_step(j, path, type, out, err);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, sec->list_key);
    if (!cJSON_IsArray(list))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: %s Sequence.%s is not a list",
                         path, sec->name, sec->list_key);
    const cJSON *child;
    cJSON_ArrayForEach(child, list)
    {
        if ((rc = add_steps(sec, child, path, out, err)))
            return rc;
    }
    return MOEQ_OK;
}

moeq_code tok_section_parse(const tok_section *sec, const cJSON *j, const char *path, void *out,
                            moeq_error *err)
{
    if (!j || cJSON_IsNull(j))
        return MOEQ_OK;
    if (!cJSON_IsObject(j))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "tokenizer.json %s: %s is not an object", path,
                         sec->name);
    return add_steps(sec, j, path, out, err);
}
