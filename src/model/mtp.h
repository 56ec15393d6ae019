/* mtp.h: the multi-token-prediction (MTP) block Qwen3-Next and Qwen3.5
 * checkpoints carry (mtp.*) and vLLM runs as the speculative-decoding
 * drafter (vLLM qwen3_5_mtp.py, Qwen3_5MultiTokenPredictor.forward): at
 * position t it reads the main model's final normed hidden state h_t and the
 * embedding of token t + 1, RMS-normalises each, projects [embedding; hidden]
 * through fc, runs one full-attention decoder layer (the model's own kind,
 * its tensors under mtp.layers.0) and mtp.norm; the shared lm_head then
 * drafts token t + 2. DeepSeek-V3 / Kimi-K2's and GLM-4.5's next-n layer
 * (model.layers.{num_hidden_layers}.*) is the same computation under other
 * names (vLLM deepseek_mtp.py, glm4_moe_mtp.py: enorm, hnorm, eh_proj, the
 * decoder layer, shared_head.norm), with the embedding at position 0 zeroed
 * and eh_proj left unquantized (arch.h: mtp_zero_first_embedding,
 * mtp_keep_fc); docs/formats.md has the details. */
#ifndef MOEQ_MODEL_MTP_H
#define MOEQ_MODEL_MTP_H

#include "model/forward.h"
#include "model/model.h"
#include "model/weights.h"

/* The model seen through the MTP layer's tensor names: its layer 0 is the
 * MTP decoder layer (a full-attention layer, MoE when the model is). */
typedef struct moeq_mtp {
    moeq_model view;              /* shares the model's checkpoint and config */
    char *renamed[MOEQ_T_COUNT];  /* the layer templates the view rewrote */
    unsigned char is_linear, is_moe;
} moeq_mtp;

/* Whether the architecture names an MTP block and the checkpoint has it. */
int moeq_mtp_present(const moeq_model *model);
moeq_code moeq_mtp_open(const moeq_model *model, moeq_mtp *mtp, moeq_error *err);
void moeq_mtp_close(moeq_mtp *mtp);

typedef struct moeq_mtp_weights {
    float *fc;                                  /* [H, 2H] */
    float *norm_embedding, *norm_hidden, *norm; /* [H], as applied (zero-centered: 1 + w) */
    moeq_layer_weights layer;
} moeq_mtp_weights;

moeq_code moeq_mtp_weights_load(const moeq_mtp *mtp, moeq_mtp_weights *w, moeq_error *err);
void moeq_mtp_weights_free(moeq_mtp_weights *w);

/* fc's input for windows of T tokens: row (s, t) for t < T - 1 is
 * [norm_embedding(embed(tokens[s, t + 1])); norm_hidden(hidden[s, t])], with
 * hidden [S * T, H] the main model's final normed hidden states (the
 * embedding part zero at t = 0 where the architecture masks it).
 * fc_in [S * (T - 1), 2H]. */
moeq_code moeq_mtp_input(const moeq_mtp *mtp, const moeq_mtp_weights *w, const int32_t *tokens,
                         const float *hidden, int S, int T, float *fc_in, moeq_error *err);

/* out [S * T1, H] = norm(layer(fc(fc_in))) over S sequences of T1 tokens. */
moeq_code moeq_mtp_forward(const moeq_mtp *mtp, const moeq_mtp_weights *w,
                           const moeq_rope_cache *rope, const float *fc_in, int S, int T1,
                           float *out, moeq_error *err);

#endif
