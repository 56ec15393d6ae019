/* moeq public API: error values shared by every stage.
 *
 * Every function that can fail returns a moeq_code and, on failure, leaves a
 * message in the caller's moeq_error saying what failed and where (file,
 * tensor, layer, expert, field). MOEQ_OK is zero so `if (rc) return rc;`
 * reads naturally. */
#ifndef MOEQ_MOEQ_H
#define MOEQ_MOEQ_H

#include <stddef.h>

#define MOEQ_VERSION "0.1.0"

typedef enum moeq_code {
    MOEQ_OK = 0,
    MOEQ_ERR_INVALID_ARG, /* bad flag or argument value */
    MOEQ_ERR_IO,          /* open/read/write/rename failed */
    MOEQ_ERR_FORMAT,      /* malformed file: JSON, safetensors header, tokenizer */
    MOEQ_ERR_NOT_FOUND,   /* missing tensor, field or file */
    MOEQ_ERR_UNSUPPORTED, /* unknown architecture, dtype or option */
    MOEQ_ERR_OOM,         /* host or device allocation failed */
    MOEQ_ERR_NUMERIC,     /* NaN/Inf, non-positive-definite Hessian */
} moeq_code;

enum { MOEQ_ERROR_MSG_BYTES = 1024 };

typedef struct moeq_error {
    moeq_code code;
    char msg[MOEQ_ERROR_MSG_BYTES];
} moeq_error;

/* Records code and a printf-style message in err (which may be NULL) and
 * returns code, so callers write `return moeq_fail(err, MOEQ_ERR_IO, ...)`. */
moeq_code moeq_fail(moeq_error *err, moeq_code code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Prepends context ("layer 3: ") to an existing message; returns err->code. */
moeq_code moeq_wrap(moeq_error *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

const char *moeq_code_name(moeq_code code);

#endif
