/* gptq_writer.h: writes the output checkpoint of a quantization run in the
 * GPTQ v1 format, one safetensors shard per decoder layer as the layer loop
 * finishes it, then a last shard with every other tensor (embeddings, final
 * norm, lm_head, anything the architecture does not name), the index,
 * config.json with quantization_config, quantize_config.json, report.json
 * and the source's other files (tokenizer, generation config, ...).
 *
 * Everything is written into OUT.moeq-partial beside the output and renamed
 * into place only when complete: an interrupted or failed run never leaves
 * a directory that looks like a finished checkpoint. After each layer the
 * next layer's input hidden states and a record of the run (state.json:
 * the fingerprint of model, calibration tokens and settings, the layers
 * written, the index so far) are saved atomically there, so that a killed
 * run continues with --resume and writes the same bytes as an uninterrupted
 * one. A failed run removes the directory, unless the CLI keeps it for
 * --resume after a failure of the machine (moeq_gptq_writer_keep_for_resume). */
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
    cJSON *fingerprint;     /* what a resumed run must match */
    int resume_layer;       /* 0, or the first layer still to do */
    float *resume_hidden;   /* that layer's input, when resuming */
} moeq_gptq_writer;

/* Refuses an existing out_dir (nothing is written then) and creates
 * OUT.moeq-partial, refusing an existing one unless resume. With resume,
 * reads the interrupted run's state back (resume_layer, resume_hidden of
 * hidden_count floats), refusing a fingerprint that differs from the
 * interrupted run's and naming the first field that does. */
moeq_code moeq_gptq_writer_open(moeq_gptq_writer *w, const moeq_model *src,
                                const moeq_quantize_options *opt, const char *out_dir,
                                const cJSON *fingerprint, int resume, size_t hidden_count,
                                moeq_error *err);
/* The moeq_layer_sink layer_done callback: saves the state after a layer
 * (hidden: the next layer's input, count floats). */
moeq_code moeq_gptq_writer_layer_done(void *writer, int layer, const float *hidden, size_t count,
                                      moeq_error *err);
/* The moeq_layer_sink callback: packs and writes one layer's shard. */
moeq_code moeq_gptq_writer_write_layer(void *writer, const moeq_layer_result *result,
                                       moeq_error *err);
/* Writes the last shard, the index, the configs and report.json (settings
 * merged with the per-layer entries), copies the other source files and
 * renames the temporary directory to out_dir. settings is borrowed. */
moeq_code moeq_gptq_writer_finish(moeq_gptq_writer *w, const cJSON *settings, moeq_error *err);
/* After a failure: when the partial directory holds a resume record, keeps
 * it (moeq_gptq_writer_close will not remove it) and returns 1; else 0. */
int moeq_gptq_writer_keep_for_resume(moeq_gptq_writer *w);
/* Removes the temporary directory and frees w (after a failure, or after
 * finish to free). */
void moeq_gptq_writer_close(moeq_gptq_writer *w);

#endif
