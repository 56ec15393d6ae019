/* documents.c: reads text, JSONL ("text" or chat "messages") and
 * directories of them into documents. Chat transcripts are rendered as
 * "role: content" lines, one per message: calibration needs the words and
 * the turn structure, not a particular model's chat template. */
#include "calib/documents.h"

#include "common/fileio.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_INPUT_BYTES = 1 << 30 };

static char *dup_or_null(const cJSON *s)
{
    if (!cJSON_IsString(s))
        return NULL;
    size_t n = strlen(s->valuestring) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s->valuestring, n);
    return d;
}

static moeq_code push(moeq_documents *docs, char *text, size_t bytes, char *lang, char *domain,
                      const char *path, moeq_error *err)
{
    if (docs->count == docs->capacity) {
        size_t cap = docs->capacity ? docs->capacity * 2 : 64;
        moeq_document *d = realloc(docs->docs, cap * sizeof *d);
        if (!d) {
            free(text);
            free(lang);
            free(domain);
            return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", path);
        }
        docs->docs = d;
        docs->capacity = cap;
    }
    docs->docs[docs->count++] = (moeq_document){text, bytes, lang, domain};
    return MOEQ_OK;
}

/* A growing text buffer for rendering transcripts. */
typedef struct text_buf {
    char *data;
    size_t len, cap;
} text_buf;

static int buf_add(text_buf *b, const char *s)
{
    size_t n = strlen(s);
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n + 1);
    b->len += n;
    return 0;
}

/* Adds the compact JSON of item; -1 on failure. */
static int buf_add_json(text_buf *b, const cJSON *item)
{
    char *j = cJSON_PrintUnformatted(item);
    int rc = j ? buf_add(b, j) : -1;
    cJSON_free(j);
    return rc;
}

/* A chat transcript as plain text: "tools: [...]" when the record declares
 * tools, then "role: content" per message, with each tool call as
 * "call: {name, arguments}" on its own line. Calibration needs the words,
 * the turn structure and the JSON of tool use, not one model's template. */
static moeq_code render_chat(const cJSON *record, const cJSON *messages, const char *path,
                             size_t line, char **out, size_t *bytes, moeq_error *err)
{
    text_buf b = {0};
    int fail = 0;
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(record, "tools");
    if (cJSON_IsArray(tools))
        fail |= buf_add(&b, "tools: ") || buf_add_json(&b, tools) || buf_add(&b, "\n");
    const cJSON *m;
    cJSON_ArrayForEach(m, messages)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        const cJSON *calls = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        int has_calls = cJSON_IsArray(calls) && cJSON_GetArraySize(calls) > 0;
        if (!cJSON_IsString(role) ||
            !(cJSON_IsString(content) || (has_calls && (!content || cJSON_IsNull(content))))) {
            free(b.data);
            return moeq_fail(err, MOEQ_ERR_FORMAT,
                             "%s:%zu: each of \"messages\" needs a string \"role\" and a string "
                             "\"content\" (or \"tool_calls\")",
                             path, line);
        }
        fail |= buf_add(&b, role->valuestring) || buf_add(&b, ":");
        if (cJSON_IsString(content))
            fail |= buf_add(&b, " ") || buf_add(&b, content->valuestring);
        const cJSON *call;
        if (has_calls)
            cJSON_ArrayForEach(call, calls)
            {
                const cJSON *fn = cJSON_GetObjectItemCaseSensitive(call, "function");
                fail |= buf_add(&b, "\ncall: ") || buf_add_json(&b, fn ? fn : call);
            }
        fail |= buf_add(&b, "\n");
    }
    if (fail || !b.data) {
        free(b.data);
        return moeq_fail(err, MOEQ_ERR_OOM, "%s:%zu: out of memory", path, line);
    }
    *out = b.data;
    *bytes = b.len;
    return MOEQ_OK;
}

/* Whether lang is one of the comma-separated codes in filter. */
static int lang_matches(const char *filter, const char *lang)
{
    size_t n = strlen(lang);
    for (const char *p = filter; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, lang, n))
            return 1;
        p += len + (end != NULL);
    }
    return 0;
}

static moeq_code load_jsonl(const char *path, const char *lang_filter, moeq_documents *docs,
                            moeq_error *err)
{
    char *data;
    size_t n;
    moeq_code rc = moeq_read_file(path, MAX_INPUT_BYTES, &data, &n, err);
    if (rc)
        return rc;
    size_t line = 0;
    for (char *p = data; p < data + n;) {
        char *eol = memchr(p, '\n', (size_t)(data + n - p));
        if (!eol)
            eol = data + n;
        *eol = '\0';
        line++;
        char *s = p;
        p = eol + 1;
        while (*s == ' ' || *s == '\t' || *s == '\r')
            s++;
        if (!*s)
            continue;
        cJSON *obj = cJSON_Parse(s);
        if (!cJSON_IsObject(obj)) {
            cJSON_Delete(obj);
            rc = moeq_fail(err, MOEQ_ERR_FORMAT, "%s:%zu: not a JSON object", path, line);
            break;
        }
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(obj, "text");
        const cJSON *messages = cJSON_GetObjectItemCaseSensitive(obj, "messages");
        const cJSON *lang = cJSON_GetObjectItemCaseSensitive(obj, "lang");
        if (lang_filter && (!cJSON_IsString(lang) || !lang_matches(lang_filter, lang->valuestring))) {
            cJSON_Delete(obj);
            continue;
        }
        char *body = NULL;
        size_t bytes = 0;
        if (cJSON_IsString(text)) {
            body = dup_or_null(text);
            bytes = body ? strlen(body) : 0;
            if (!body)
                rc = moeq_fail(err, MOEQ_ERR_OOM, "%s:%zu: out of memory", path, line);
        } else if (cJSON_IsArray(messages)) {
            rc = render_chat(obj, messages, path, line, &body, &bytes, err);
        } else {
            rc = moeq_fail(err, MOEQ_ERR_FORMAT,
                           "%s:%zu: needs a string \"text\" field or a \"messages\" array", path,
                           line);
        }
        if (!rc)
            rc = push(docs, body, bytes, dup_or_null(lang),
                      dup_or_null(cJSON_GetObjectItemCaseSensitive(obj, "domain")), path, err);
        cJSON_Delete(obj);
        if (rc)
            break;
    }
    free(data);
    return rc;
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static moeq_code load_dir(const char *path, const char *lang_filter, moeq_documents *docs,
                          moeq_error *err)
{
    DIR *d = opendir(path);
    if (!d)
        return moeq_fail(err, MOEQ_ERR_IO, "%s: cannot open directory", path);
    char **names = NULL;
    size_t count = 0, cap = 0;
    moeq_code rc = MOEQ_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!has_suffix(e->d_name, ".txt") && !has_suffix(e->d_name, ".jsonl"))
            continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) {
                rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", path);
                break;
            }
            names = nn;
        }
        size_t len = strlen(path) + strlen(e->d_name) + 2;
        if (!(names[count] = malloc(len))) {
            rc = moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory", path);
            break;
        }
        snprintf(names[count++], len, "%s/%s", path, e->d_name);
    }
    closedir(d);
    if (!rc && count == 0)
        rc = moeq_fail(err, MOEQ_ERR_NOT_FOUND, "%s: no *.txt or *.jsonl files", path);
    if (!rc) {
        qsort(names, count, sizeof *names, cmp_str);
        for (size_t i = 0; i < count && !rc; i++)
            rc = moeq_documents_load(names[i], lang_filter, docs, err);
    }
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
    return rc;
}

moeq_code moeq_documents_load(const char *path, const char *lang_filter, moeq_documents *docs,
                              moeq_error *err)
{
    if (moeq_dir_exists(path))
        return load_dir(path, lang_filter, docs, err);
    if (has_suffix(path, ".jsonl") || has_suffix(path, ".json"))
        return load_jsonl(path, lang_filter, docs, err);
    if (lang_filter)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "%s: a language filter needs JSONL input with a \"lang\" field", path);
    char *text;
    size_t n;
    moeq_code rc = moeq_read_file(path, MAX_INPUT_BYTES, &text, &n, err);
    if (rc)
        return rc;
    return push(docs, text, n, NULL, NULL, path, err);
}

void moeq_documents_free(moeq_documents *docs)
{
    for (size_t i = 0; i < docs->count; i++) {
        free(docs->docs[i].text);
        free(docs->docs[i].lang);
        free(docs->docs[i].domain);
    }
    free(docs->docs);
    memset(docs, 0, sizeof *docs);
}
