/* hash.h: FNV-1a (64 bits), the checksum moeq uses to recognise its own
 * files and inputs again (resume). Not for security. */
#ifndef MOEQ_COMMON_HASH_H
#define MOEQ_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

#define MOEQ_FNV1A64_INIT 14695981039346656037ull

static inline uint64_t moeq_fnv1a64(const void *data, size_t n, uint64_t h)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

#endif
