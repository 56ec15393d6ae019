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
 * loader reconstructs. With scale_bf16 it is rounded to a value both fp16
 * and bf16 hold (formats that store or run their scales in a bf16 model's
 * dtype: compressed-tensors, vLLM's AWQ kernels; see pack_format.h).
 *
 * Clipping search (moeq_grid_fit_mse, GPTQ's reference quantizer with
 * mse=True, GPTQModel's `mse` option): the range is shrunk to p [xmin, xmax]
 * for p = 1, 0.99, ..., 0.21 (grid 100, max shrink 0.8) and the p with the
 * smallest sum |x^ - x|^norm (the reference uses norm 2.4) wins; p = 1 is the
 * plain grid, so the search never does worse in that norm. Ties keep the
 * larger range. */
#ifndef MOEQ_QUANT_GRID_H
#define MOEQ_QUANT_GRID_H

#include <math.h>
#include <stdint.h>

typedef struct moeq_grid {
    float scale; /* fp16-representable */
    int32_t zero;
} moeq_grid;

/* Fits the grid to x[0..n) (one row's slice of a group). */
moeq_grid moeq_grid_fit(const float *x, int n, int bits, int sym, int scale_bf16);

/* The grid of x's range shrunk to p [xmin, xmax] (0 < p <= 1): one
 * candidate of a clipping search. */
moeq_grid moeq_grid_fit_shrunk(const float *x, int n, int bits, int sym, int scale_bf16, float p);

#define MOEQ_GRID_MSE_GRID 100
#define MOEQ_GRID_MSE_STEPS 80 /* max shrink 0.8 of grid 100 */

/* The clipping search above; norm <= 0 is moeq_grid_fit. */
moeq_grid moeq_grid_fit_mse(const float *x, int n, int bits, int sym, int scale_bf16, float norm);

/* sum |x^ - x|^norm over x[0..n) on grid g (summed in order, in float). */
float moeq_grid_clip_error(moeq_grid g, const float *x, int n, int bits, float norm);

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
