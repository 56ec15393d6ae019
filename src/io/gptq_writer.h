/* gptq_writer.h: writes the output checkpoint of a quantization run in the
 * GPTQ v1 format, one safetensors shard per decoder layer as the layer loop
 * finishes it, then a last shard with every other tensor (embeddings, final
 * norm, lm_head, anything the architecture does not name), the index,
 * config.json with quantization_config, quantize_config.json, report.json
 * and the source's other files (tokenizer, generation config, ...).
 *
 * Everything is written into a temporary directory beside the output and
 * renamed into place only when complete: an interrupted or failed run never
 * leaves a directory that looks like a finished checkpoint. */
#ifndef MOEQ_IO_GPTQ_WRITER_H
#define MOEQ_IO_GPTQ_WRITER_H

#include "model/model.h"
#include "pipeline/quantize.h"

#include <cjson/cJSON.h>

typedef struct moeq_gptq_writer {
    const moeq_model *src;
    const moeq_quantize_options *opt;
    char *out_dir;
    char *tmp_dir;
    int n_shards;
    unsigned char *written; /* [src->ckpt.n_tensors]: copied into a layer shard */
    cJSON *weight_map;
    cJSON *report_layers;
    int64_t total_bytes;
} moeq_gptq_writer;

/* Refuses an existing out_dir (nothing is written then) and creates the
 * temporary directory. */
moeq_code moeq_gptq_writer_open(moeq_gptq_writer *w, const moeq_model *src,
                                const moeq_quantize_options *opt, const char *out_dir,
                                moeq_error *err);
/* The moeq_layer_sink callback: packs and writes one layer's shard. */
moeq_code moeq_gptq_writer_write_layer(void *writer, const moeq_layer_result *result,
                                       moeq_error *err);
/* Writes the last shard, the index, the configs and report.json (settings
 * merged with the per-layer entries), copies the other source files and
 * renames the temporary directory to out_dir. settings is borrowed. */
moeq_code moeq_gptq_writer_finish(moeq_gptq_writer *w, const cJSON *settings, moeq_error *err);
/* Removes the temporary directory and frees w (after a failure, or after
 * finish to free). */
void moeq_gptq_writer_close(moeq_gptq_writer *w);

#endif
