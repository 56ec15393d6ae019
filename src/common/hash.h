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

/* The same recurrence over 64-bit little-endian words (a tail of bytes
 * last): about eight times faster, for gigabytes of hidden states. */
static inline uint64_t moeq_fnv1a64_words(const void *data, size_t n, uint64_t h)
{
    const unsigned char *p = data;
    size_t words = n / 8;
    for (size_t i = 0; i < words; i++) {
        uint64_t w = 0;
        for (int b = 0; b < 8; b++)
            w |= (uint64_t)p[8 * i + b] << (8 * b);
        h = (h ^ w) * 1099511628211ull;
    }
    return moeq_fnv1a64(p + 8 * words, n - 8 * words, h);
}

#endif
