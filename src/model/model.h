/* model.h: an opened checkpoint directory: its architecture, its config and
 * its safetensors shards (memory-mapped; tensors are decoded on demand). */
#ifndef MOEQ_MODEL_MODEL_H
#define MOEQ_MODEL_MODEL_H

#include "model/arch.h"
#include "model/config.h"
#include "moeq/moeq.h"
#include "moeq/safetensors.h"

#include <stdint.h>

typedef struct moeq_model {
    char *dir;
    moeq_arch arch;
    moeq_config cfg;
    st_checkpoint ckpt;
} moeq_model;

/* Opens dir (config.json + *.safetensors). arch_file overrides the built-in
 * architecture lookup by model_type; NULL to use the built-ins. */
moeq_code moeq_model_open(const char *dir, const char *arch_file, moeq_model *model,
                          moeq_error *err);
void moeq_model_close(moeq_model *model);

/* The checkpoint tensor for role at layer/expert, or NULL (err set) when the
 * architecture names none or the checkpoint lacks it. */
const st_tensor *moeq_model_find(const moeq_model *model, moeq_tensor_role role, int layer,
                                 int expert, moeq_error *err);

/* Decodes the tensor for role into a new fp32 buffer after checking its shape
 * is [rows, cols] (cols == 0: a 1-D tensor of rows). */
moeq_code moeq_model_load_f32(const moeq_model *model, moeq_tensor_role role, int layer,
                              int expert, int64_t rows, int64_t cols, float **out,
                              moeq_error *err);
/* A copy of the tensor for role in *out when the checkpoint stores it as
 * plain bf16 of shape [rows, cols]; *out NULL (and 0) when it is stored
 * otherwise (another dtype, or packed by a quantized checkpoint): then
 * moeq_model_load_f32 decodes it. */
moeq_code moeq_model_load_bf16(const moeq_model *model, moeq_tensor_role role, int layer,
                               int expert, int64_t rows, int64_t cols, uint16_t **out,
                               moeq_error *err);
/* Same for the bias beside a weight (the name with "weight" -> "bias"). */
moeq_code moeq_model_load_bias_f32(const moeq_model *model, moeq_tensor_role role, int layer,
                                   int expert, int64_t rows, float **out, moeq_error *err);

#endif
