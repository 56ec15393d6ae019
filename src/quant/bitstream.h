/* bitstream.h: unsigned fields of `bits` bits laid end to end in a
 * little-endian stream of 32-bit words, field i at bit bits * i of the
 * stream; word k of a stream is words[k * stride], so one stream may run
 * along a row (stride 1) or down a column (stride = row length). GPTQ v1
 * (pack_gptq.c) and compressed-tensors' pack-quantized (pack_ct.c) use this
 * exact stream for every width; for 3 bits a field straddles two words
 * where the stream says so. */
#ifndef MOEQ_QUANT_BITSTREAM_H
#define MOEQ_QUANT_BITSTREAM_H

#include <stddef.h>
#include <stdint.h>

/* ORs field i (value v < 2^bits) into the stream. */
static inline void moeq_stream_put(uint32_t *words, size_t stride, size_t i, int bits, uint32_t v)
{
    size_t bit = i * (size_t)bits, k = bit / 32;
    unsigned shift = (unsigned)(bit % 32);
    words[k * stride] |= v << shift;
    if (shift + (unsigned)bits > 32)
        words[(k + 1) * stride] |= v >> (32 - shift);
}

static inline uint32_t moeq_stream_get(const uint32_t *words, size_t stride, size_t i, int bits)
{
    size_t bit = i * (size_t)bits, k = bit / 32;
    unsigned shift = (unsigned)(bit % 32);
    uint32_t v = words[k * stride] >> shift;
    if (shift + (unsigned)bits > 32)
        v |= words[(k + 1) * stride] << (32 - shift);
    return v & ((1u << bits) - 1u);
}

#endif
