/* fileio.h: whole-file reads with size limits and clear errors. */
#ifndef MOEQ_COMMON_FILEIO_H
#define MOEQ_COMMON_FILEIO_H

#include "moeq/moeq.h"

#include <stddef.h>

/* Reads path into a NUL-terminated malloc'ed buffer; fails on files larger
 * than max_bytes. *out_bytes (optional) gets the length. */
moeq_code moeq_read_file(const char *path, size_t max_bytes, char **out, size_t *out_bytes,
                         moeq_error *err);
static inline moeq_code moeq_read_text_file(const char *path, size_t max_bytes, char **out,
                                            moeq_error *err)
{
    return moeq_read_file(path, max_bytes, out, NULL, err);
}
int moeq_file_exists(const char *path);
int moeq_dir_exists(const char *path);

#endif
