// grid.cuh: the grid of src/quant/grid.h on the device, operation for
// operation (the _rn intrinsics keep nvcc from contracting products into
// FMAs that the C reference does not use; divisions are IEEE), shared by
// the GPTQ sweep (gptq_sweep.cu) and AWQ's kernels (awq.cu). Keep it in
// step with grid.c: the parity tests fail on any difference.
#ifndef MOEQ_KERNELS_GRID_CUH
#define MOEQ_KERNELS_GRID_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace moeq_grid_dev {

struct grid_t {
    float scale;
    int32_t zero;
};

// round_scale of src/quant/grid.c: v rounded to fp16, or (scale_bf16) to
// bf16 first and then to fp16, so the scale is a value both formats hold.
// Both roundings are to nearest, ties to even, as common/dtype.c's.
static __device__ inline float round_scale(float v, int scale_bf16)
{
    if (scale_bf16)
        v = __bfloat162float(__float2bfloat16_rn(v));
    return __half2float(__float2half_rn(v));
}

// moeq_grid_fit of src/quant/grid.c given the slice's min and max (each
// started at 0, so the range always contains 0). Keep the two in step: the
// parity test fails on any difference.
static __device__ inline grid_t grid_from_range(float xmin, float xmax, int bits, int sym,
                                                int scale_bf16)
{
    const int32_t maxq = (1 << bits) - 1;
    if (sym) {
        xmax = fabsf(xmin) > xmax ? fabsf(xmin) : xmax;
        if (xmin < 0.0f)
            xmin = -xmax;
    }
    if (xmin == 0.0f && xmax == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    grid_t g;
    g.scale = round_scale(__fdiv_rn(__fsub_rn(xmax, xmin), (float)maxq), scale_bf16);
    if (g.scale == 0.0f) // below fp16's smallest subnormal
        g.scale = __half2float(__ushort_as_half((unsigned short)1));
    if (sym) {
        g.zero = (maxq + 1) / 2;
    } else {
        float z = rintf(__fdiv_rn(-xmin, g.scale));
        g.zero = z < 0.0f ? 0 : z > (float)maxq ? maxq : (int32_t)z;
        if (g.zero == 0) { // GPTQ v1 cannot store zero 0: grid.c's zero 1, stretched scale
            g.zero = 1;
            g.scale = round_scale(__fdiv_rn(xmax, (float)(maxq - 1)), scale_bf16);
            if (g.scale == 0.0f)
                g.scale = __half2float(__ushort_as_half((unsigned short)1));
        }
    }
    return g;
}

static __device__ inline int32_t grid_code(grid_t g, float x, int32_t maxq)
{
    float r = __fadd_rn(rintf(__fdiv_rn(x, g.scale)), (float)g.zero);
    return r < 0.0f ? 0 : r > (float)maxq ? maxq : (int32_t)r;
}

// moeq_grid_value of grid.h.
static __device__ inline float grid_value(grid_t g, int32_t code)
{
    return __fmul_rn(g.scale, (float)(code - g.zero));
}

} // namespace moeq_grid_dev

#endif
