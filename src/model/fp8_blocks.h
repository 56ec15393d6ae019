/* fp8_blocks.h: block-scaled FP8 source weights, dequantized on load.
 *
 * DeepSeek-V3, MiniMax-M2 and the Qwen3 FP8 checkpoints store a linear's
 * weight W [out, in] as F8_E4M3 with a sibling "<name>_scale_inv" (for
 * "x.weight": "x.weight_scale_inv") of shape [ceil(out / bm), ceil(in / bn)],
 * (bm, bn) = quantization_config.weight_block_size (128 x 128 in every
 * shipped model); the last block row and column may be partial. Each
 * element is W[i, j] = fp8(W[i, j]) * scale_inv[i / bm, j / bn] in fp32, as
 * transformers' integrations/finegrained_fp8.py (_dequantize_fp8_weight,
 * Fp8Dequantize) and vLLM's block-FP8 linear (scale [ceil(N/bn), ceil(K/bk)]
 * over the weight [N, K]) read it. scale_inv is F32 (DeepSeek-V3, Qwen3),
 * BF16, or E8M0 (transformers' scale_fmt "ue8m0"). */
#ifndef MOEQ_MODEL_FP8_BLOCKS_H
#define MOEQ_MODEL_FP8_BLOCKS_H

#include "moeq/moeq.h"
#include "moeq/safetensors.h"

#include <stddef.h>

/* The name of weight's scale tensor: weight + "_scale_inv". Returns 0, or
 * -1 when buf is too small. */
int moeq_fp8_scale_name(const char *weight, char *buf, size_t bytes);

/* Dequantizes the 2-D F8_E4M3 tensor weight [rows, cols] with its
 * per-block scale_inv into out[rows * cols] (fp32). A scale of another
 * dtype or shape than [ceil(rows / block_rows), ceil(cols / block_cols)]
 * fails with MOEQ_ERR_FORMAT naming both tensors; block sizes below 1 fail
 * with MOEQ_ERR_INVALID_ARG. */
moeq_code moeq_fp8_block_dequant(const st_tensor *weight, const st_tensor *scale_inv,
                                 int block_rows, int block_cols, float *out, moeq_error *err);

#endif
