/* fp8_blocks.c: block-scaled FP8 dequantization (see fp8_blocks.h). */
#include "model/fp8_blocks.h"

#include "common/dtype.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int moeq_fp8_scale_name(const char *weight, char *buf, size_t bytes)
{
    int n = snprintf(buf, bytes, "%s_scale_inv", weight);
    return n < 0 || (size_t)n >= bytes ? -1 : 0;
}

moeq_code moeq_fp8_block_dequant(const st_tensor *weight, const st_tensor *scale_inv,
                                 int block_rows, int block_cols, float *out, moeq_error *err)
{
    if (block_rows < 1 || block_cols < 1)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "tensor %s: FP8 block size [%d, %d] must be positive", weight->name,
                         block_rows, block_cols);
    if (weight->dtype != ST_F8_E4M3 || weight->ndim != 2)
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "tensor %s: a block-scaled FP8 weight must be a 2-D F8_E4M3 tensor "
                         "(it is %d-D %s)",
                         weight->name, weight->ndim, st_dtype_name(weight->dtype));
    const int64_t rows = weight->shape[0], cols = weight->shape[1];
    const int64_t srows = (rows + block_rows - 1) / block_rows;
    const int64_t scols = (cols + block_cols - 1) / block_cols;
    st_dtype sd = scale_inv->dtype;
    if (sd != ST_F32 && sd != ST_BF16 && sd != ST_F8_E8M0)
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "tensor %s: scale of %s must be F32, BF16 or F8_E8M0, not %s",
                         scale_inv->name, weight->name, st_dtype_name(sd));
    if (scale_inv->ndim != 2 || scale_inv->shape[0] != srows || scale_inv->shape[1] != scols) {
        char shape[96] = "";
        for (int i = 0; i < scale_inv->ndim; i++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld",
                     i ? ", " : "", (long long)scale_inv->shape[i]);
        return moeq_fail(err, MOEQ_ERR_FORMAT,
                         "tensor %s has shape [%s], expected [%lld, %lld] for the [%d, %d] "
                         "blocks of %s [%lld, %lld]",
                         scale_inv->name, shape, (long long)srows, (long long)scols, block_rows,
                         block_cols, weight->name, (long long)rows, (long long)cols);
    }
    float *scale = malloc(sizeof(float) * (size_t)(srows * scols));
    if (!scale)
        return moeq_fail(err, MOEQ_ERR_OOM, "out of memory for the scales of %s", weight->name);
    moeq_code rc = moeq_to_f32(sd, scale_inv->data, (size_t)(srows * scols), scale, err);
    if (rc) {
        free(scale);
        return moeq_wrap(err, "tensor %s: ", scale_inv->name);
    }
    /* E4M3 has 256 codes: decode each once. */
    float lut[256];
    for (int c = 0; c < 256; c++)
        lut[c] = moeq_f8e4m3_to_f32((uint8_t)c);
    const unsigned char *q = weight->data;
    for (int64_t i = 0; i < rows; i++) {
        const float *srow = scale + (i / block_rows) * scols;
        const unsigned char *qrow = q + i * cols;
        float *orow = out + i * cols;
        for (int64_t j = 0; j < cols; j++)
            orow[j] = lut[qrow[j]] * srow[j / block_cols];
    }
    free(scale);
    return MOEQ_OK;
}
