/* fileio.c: whole-file reads and writes, file copies, tree removal. */
/* nftw() is an XSI extension. */
#define _XOPEN_SOURCE 700
#include "common/fileio.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <ftw.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

static moeq_code write_file(const char *path, const void *data, size_t bytes, int durable,
                            moeq_error *err)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return moeq_fail(err, MOEQ_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    int ok = fwrite(data, 1, bytes, f) == bytes && fflush(f) == 0 &&
             (!durable || fsync(fileno(f)) == 0);
    int saved = errno;
    ok = fclose(f) == 0 && ok;
    if (!ok) {
        remove(path);
        return moeq_fail(err, MOEQ_ERR_IO, "%s: write failed: %s", path, strerror(saved));
    }
    return MOEQ_OK;
}

moeq_code moeq_write_file(const char *path, const void *data, size_t bytes, moeq_error *err)
{
    return write_file(path, data, bytes, 1, err);
}

moeq_code moeq_copy_file(const char *src, const char *dst, moeq_error *err)
{
    char *data;
    size_t n = 0;
    moeq_code rc = moeq_read_file(src, (size_t)1 << 40, &data, &n, err);
    if (rc)
        return rc;
    rc = moeq_write_file(dst, data, n, err);
    free(data);
    return rc;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void moeq_remove_tree(const char *path)
{
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

moeq_code moeq_write_file_atomic(const char *path, const void *data, size_t bytes, int durable,
                                 moeq_error *err)
{
    size_t n = strlen(path) + 5;
    char *tmp = malloc(n);
    if (!tmp)
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
    snprintf(tmp, n, "%s.tmp", path);
    moeq_code rc = write_file(tmp, data, bytes, durable, err);
    if (!rc && rename(tmp, path) != 0)
        rc = moeq_fail(err, MOEQ_ERR_IO, "cannot rename %s to %s: %s", tmp, path,
                       strerror(errno));
    if (rc)
        unlink(tmp);
    free(tmp);
    return rc;
}
