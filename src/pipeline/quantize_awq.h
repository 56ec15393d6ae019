/* quantize_awq.h: AWQ on the CPU layer loop (src/pipeline/quantize_awq.c),
 * in two halves so that the loop can run its hooks between them. Both
 * quantize true-sequentially: the MLP half sees the quantized attention. */
#ifndef MOEQ_PIPELINE_QUANTIZE_AWQ_H
#define MOEQ_PIPELINE_QUANTIZE_AWQ_H

#include "model/forward.h"
#include "model/model.h"
#include "pipeline/quantize.h"

/* The component of model (or the setting of opt) that AWQ does not
 * implement, in words for an error message, or NULL when it runs: both
 * layer loops refuse the same. */
const char *moeq_awq_missing(const moeq_model *model, const moeq_quantize_options *opt);

/* v as the checkpoint stores it in dtype (norms and routers keep theirs). */
float moeq_awq_stored_value(float v, st_dtype dtype);
/* The dtype of layer's tensor role in model's checkpoint (bf16 when absent). */
st_dtype moeq_awq_source_dtype(const moeq_model *model, moeq_tensor_role role, int layer);
/* Records in res a copy of data [count], the new value of role's tensor
 * (not an expert's); out of memory names layer. */
moeq_code moeq_awq_add_replaced(moeq_layer_result *res, int layer, moeq_tensor_role role,
                                const float *data, size_t count, moeq_error *err);
/* W [rows, cols] column j times s[j]. */
void moeq_awq_scale_columns(float *W, int rows, int cols, const float *s);
/* Folds the scale s [n] into a norm weight: norm <- norm / s as stored in
 * dtype, and s <- the scale that division really applied (norm_old /
 * norm_new), so that the weights the norm feeds are scaled by exactly what
 * it lost; a zero norm weight keeps scale 1. */
void moeq_awq_fold_norm(float *norm, float *s, int n, st_dtype dtype);

/* q/k/v scaled by AWQ (the scale folded into input_layernorm), o_proj on
 * clipped grids; lw's q/k/v/o become their quantized values and its
 * attn_norm the folded one (also in res->replaced). x1 = x + attention of
 * the quantized block. */
moeq_code moeq_awq_attention(const moeq_model *model, const moeq_quantize_options *opt,
                             moeq_layer_weights *lw, const moeq_rope_cache *rope, const float *x,
                             int S, int T, float *x1, moeq_layer_result *res, moeq_error *err);

/* The MLP half on x1 [n, H]: dense MLP, or the experts with ONE gate/up
 * scale shared by all of them (and the shared expert) folded into
 * post_attention_layernorm, the router (and shared-expert gate) compensated
 * exactly, and each expert's own down_proj scale folded into its up_proj.
 * lw's weights become their quantized (and folded) values. */
moeq_code moeq_awq_mlp(const moeq_model *model, const moeq_quantize_options *opt,
                       moeq_layer_weights *lw, const float *x1, int n, moeq_layer_result *res,
                       moeq_error *err);

#endif
