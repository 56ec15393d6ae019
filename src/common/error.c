/* error.c: the moeq_error value every failing function fills in. */
#include "moeq/moeq.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

moeq_code moeq_fail(moeq_error *err, moeq_code code, const char *fmt, ...)
{
    if (!err)
        return code;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return code;
}

moeq_code moeq_wrap(moeq_error *err, const char *fmt, ...)
{
    if (!err)
        return MOEQ_ERR_INVALID_ARG;
    char prefix[MOEQ_ERROR_MSG_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* Shift the old message right and put the prefix in front; the end
     * is cut if the whole no longer fits. */
    size_t prefix_len = strlen(prefix);
    size_t old_len = strnlen(err->msg, sizeof err->msg - 1);
    if (prefix_len > sizeof err->msg - 1)
        prefix_len = sizeof err->msg - 1;
    if (prefix_len + old_len > sizeof err->msg - 1)
        old_len = sizeof err->msg - 1 - prefix_len;
    memmove(err->msg + prefix_len, err->msg, old_len);
    memcpy(err->msg, prefix, prefix_len);
    err->msg[prefix_len + old_len] = '\0';
    return err->code;
}

const char *moeq_code_name(moeq_code code)
{
    switch (code) {
    case MOEQ_OK: return "ok";
    case MOEQ_ERR_INVALID_ARG: return "invalid argument";
    case MOEQ_ERR_IO: return "I/O error";
    case MOEQ_ERR_FORMAT: return "format error";
    case MOEQ_ERR_NOT_FOUND: return "not found";
    case MOEQ_ERR_UNSUPPORTED: return "unsupported";
    case MOEQ_ERR_OOM: return "out of memory";
    case MOEQ_ERR_NUMERIC: return "numeric error";
    }
    return "unknown error";
}
