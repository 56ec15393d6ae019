/* fileio.c: whole-file reads with size limits and clear errors. */
#include "common/fileio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

moeq_code moeq_read_file(const char *path, size_t max_bytes, char **out, size_t *out_bytes,
                         moeq_error *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return moeq_fail(err, errno == ENOENT ? MOEQ_ERR_NOT_FOUND : MOEQ_ERR_IO,
                         "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return moeq_fail(err, MOEQ_ERR_IO, "%s: not a regular file", path);
    }
    if ((size_t)st.st_size > max_bytes) {
        fclose(f);
        return moeq_fail(err, MOEQ_ERR_FORMAT, "%s: %lld bytes, more than the %zu allowed", path,
                         (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return moeq_fail(err, MOEQ_ERR_OOM, "%s: out of memory reading %zu bytes", path, n);
    }
    if (fread(buf, 1, n, f) != n) {
        free(buf);
        fclose(f);
        return moeq_fail(err, MOEQ_ERR_IO, "%s: read failed", path);
    }
    fclose(f);
    buf[n] = '\0';
    *out = buf;
    if (out_bytes)
        *out_bytes = n;
    return MOEQ_OK;
}

int moeq_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int moeq_dir_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}
