/* grid.h: the uniform integer grid GPTQ and RTN quantize onto, one (scale,
 * zero) pair per row and group, as GPTQ's reference quantizer defines it
 * (Frantar et al. 2022, and the AutoGPTQ/GPTQModel Quantizer):
 *   asymmetric: xmin = min(0, min x), xmax = max(0, max x),
 *               scale = (xmax - xmin) / maxq, zero = round(-xmin / scale)
 *   symmetric:  xmax = max(|xmin|, xmax), xmin = -xmax,
 *               scale = 2 xmax / maxq, zero = (maxq + 1) / 2
 *   (an all-zero range becomes [-1, 1])
 * with one departure: an asymmetric zero point of 0 (a group with no
 * negative value) becomes 1 with scale = xmax / (maxq - 1), because the
 * GPTQ v1 format cannot store 0 faithfully (see grid.c).
 *   q = clamp(round(x / scale) + zero, 0, maxq), x^ = scale (q - zero)
 * The scale is rounded to fp16 before use, because checkpoints store it in
 * fp16: the values GPTQ feeds its error back from are then exactly the ones a
 * loader reconstructs. */
#ifndef MOEQ_QUANT_GRID_H
#define MOEQ_QUANT_GRID_H

#include <math.h>
#include <stdint.h>

typedef struct moeq_grid {
    float scale; /* fp16-representable */
    int32_t zero;
} moeq_grid;

/* Fits the grid to x[0..n) (one row's slice of a group). */
moeq_grid moeq_grid_fit(const float *x, int n, int bits, int sym);

static inline int32_t moeq_grid_code(moeq_grid g, float x, int32_t maxq)
{
    float r = rintf(x / g.scale) + (float)g.zero;
    return r < 0.0f ? 0 : r > (float)maxq ? maxq : (int32_t)r;
}

static inline float moeq_grid_value(moeq_grid g, int32_t code)
{
    return g.scale * (float)(code - g.zero);
}

#endif
