/* fused_experts.h: MoE experts stored as one tensor per projection for all
 * experts of a layer, split into per-expert weights on load.
 *
 * gpt-oss (transformers modeling_gpt_oss.py, GptOssExperts) stores, per
 * layer, tensors.experts_gate_up = gate_up_proj [E, H, 2I] (x @ W layout:
 * input rows, output columns) whose even columns are the gate and odd
 * columns the up projection (_apply_gate: gate_up[..., ::2],
 * gate_up[..., 1::2]), tensors.experts_down = down_proj [E, I, H], and
 * beside them gate_up_proj_bias [E, 2I] (interleaved the same way) and
 * down_proj_bias [E, H]: the template name + "_bias". Each expert becomes
 * gate, up [I, H] and down [H, I] in nn.Linear's [out, in] layout, so that
 * it is quantized and written like any per-expert checkpoint. Llama-4
 * (modeling_llama4.py, Llama4TextExperts) stores the same tensors without
 * biases, gate in the first and up in the second half of the columns
 * (gate_up.chunk(2, dim=-1)).
 *
 * An MXFP4 source (quantization_config quant_method "mxfp4", as gpt-oss
 * ships) stores gate_up_proj and down_proj as _blocks and _scales in
 * [out, in] order instead (model/mxfp4.h); biases stay bf16. */
#ifndef MOEQ_MODEL_FUSED_EXPERTS_H
#define MOEQ_MODEL_FUSED_EXPERTS_H

#include "model/model.h"
#include "model/weights.h"

/* Whether m's experts are read from fused tensors: the architecture fuses
 * them and m is a source, not a GPTQ checkpoint (which moeq writes, and
 * reads back, per expert under the expert_* names). */
int moeq_experts_fused(const moeq_model *m);

/* Loads expert e of layer l from the fused tensors into w (with biases
 * when config.json's mlp_bias holds). Shapes are checked against the
 * config; a missing or mis-shaped tensor fails naming it. */
moeq_code moeq_fused_expert_load(const moeq_model *m, int layer, int expert,
                                 moeq_mlp_weights *w, moeq_error *err);

/* Checks that layer l's fused expert tensors are present and shaped as the
 * config says (moeq inspect). */
moeq_code moeq_fused_experts_check(const moeq_model *m, int layer, moeq_error *err);

/* Copies the bias of expert e's gate, up or down projection (role
 * MOEQ_T_EXPERT_GATE_PROJ, _UP_PROJ or _DOWN_PROJ) out of the fused bias
 * tensor, in its stored dtype, into a new buffer *out of *rows elements of
 * *dtype (the output checkpoint keeps the source's bytes). */
moeq_code moeq_fused_expert_bias_raw(const moeq_model *m, moeq_tensor_role role, int layer,
                                     int expert, void **out, st_dtype *dtype, int64_t *rows,
                                     moeq_error *err);

/* Calls fn(ctx, name) for each source tensor name of layer l's fused
 * experts that the checkpoint holds (weights, biases and, for MXFP4
 * sources, blocks and scales): the writer replaces them all. */
void moeq_fused_experts_each_source(const moeq_model *m, int layer,
                                    void (*fn)(void *ctx, const char *name), void *ctx);

#endif
