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


/* Writes bytes to path (created or truncated), flushed to disk. */
moeq_code moeq_write_file(const char *path, const void *data, size_t bytes, moeq_error *err);
/* Writes bytes to path atomically: to path.tmp, then renamed over path, so
 * path holds either its old or its new content after a kill. durable: the
 * data is also flushed to the disk before the rename (survives a power
 * loss); without it a power loss can leave a short file, which the caller
 * must be able to detect (a checksum). */
moeq_code moeq_write_file_atomic(const char *path, const void *data, size_t bytes, int durable,
                                 moeq_error *err);
/* Copies src to dst byte for byte. */
moeq_code moeq_copy_file(const char *src, const char *dst, moeq_error *err);
/* Removes path and everything below it; a missing path is not an error. */
void moeq_remove_tree(const char *path);
#endif
