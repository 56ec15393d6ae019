/* cuda_hessian.h: GPTQ Hessian accumulation on the GPU, the counterpart of
 * cpu_hessian_accumulate{,_weighted} (backend/cpu/cpu_ops.h), with the same
 * contract: H [n, n] fp32 on the device, symmetric on entry and exactly
 * symmetric on return. The products run as cuBLAS GEMMs with fp32
 * accumulation: bf16 inputs use the tensor cores, fp32 inputs stay fp32
 * (no TF32). */
#ifndef MOEQ_BACKEND_CUDA_HESSIAN_H
#define MOEQ_BACKEND_CUDA_HESSIAN_H

#include "backend/cuda/cuda_ctx.h"

typedef enum moeq_cuda_dtype {
    MOEQ_CUDA_F32,
    MOEQ_CUDA_BF16,
} moeq_cuda_dtype;

/* H += alpha * x^T x for x [rows, n] of dtype on the device. */
moeq_code moeq_cuda_hessian_accumulate(moeq_cuda_ctx *ctx, float *H, const void *x,
                                       moeq_cuda_dtype dtype, int rows, int n, float alpha,
                                       moeq_error *err);

/* H += alpha * x^T diag(w) x with w [rows] >= 0 on the device. The rows of
 * x, scaled by w in fp32 and rounded once to dtype, form the GEMM's second
 * operand, in chunks that bound the scratch to about 64 MiB. A negative or
 * non-finite weight is MOEQ_ERR_INVALID_ARG and H is left as it was. */
moeq_code moeq_cuda_hessian_accumulate_weighted(moeq_cuda_ctx *ctx, float *H, const void *x,
                                                moeq_cuda_dtype dtype, const float *w, int rows,
                                                int n, float alpha, moeq_error *err);

#endif
