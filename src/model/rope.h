/* rope.h: rotary position embedding parameters. From a config's RoPE
 * variant this computes inv_freq (one frequency per rotated pair) and the
 * attention factor that multiplies cos and sin, exactly as transformers'
 * modeling_rope_utils.py does, in the same float32 steps, so that angles at
 * long positions agree to the last bit or two. Applying the rotation is
 * cpu_rope_apply (backend/cpu/cpu_ops.h). */
#ifndef MOEQ_MODEL_ROPE_H
#define MOEQ_MODEL_ROPE_H

#include "moeq/moeq.h"

/* The "rope_type" of config.json ("type" in transformers 4.x rope_scaling). */
typedef enum moeq_rope_type {
    MOEQ_ROPE_DEFAULT, /* "default": theta ** (-2i / dim) */
    MOEQ_ROPE_LINEAR,  /* "linear": position interpolation, inv_freq / factor */
    MOEQ_ROPE_DYNAMIC, /* "dynamic": NTK-aware base that grows past max_position_embeddings */
    MOEQ_ROPE_YARN,    /* "yarn": ramp between interpolation and extrapolation, mscale */
    MOEQ_ROPE_LLAMA3,  /* "llama3": Llama 3.1 wavelength bands */
} moeq_rope_type;

/* One layer's RoPE settings, with config.json's names. A field marked
 * "0 = absent" takes the value transformers derives when the key is missing. */
typedef struct moeq_rope_params {
    moeq_rope_type type;
    double theta;    /* rope_theta */
    int rotary_dim;  /* int(head_dim * partial_rotary_factor); even */
    double factor;   /* linear, dynamic, llama3, yarn; yarn: 0 = absent (max/original) */
    double low_freq_factor, high_freq_factor; /* llama3 */
    double beta_fast, beta_slow;              /* yarn; 0 = absent (32, 1) */
    double mscale, mscale_all_dim;            /* yarn; 0 = absent */
    double attention_factor;                  /* yarn; 0 = absent (derived from factor) */
    int original_max_position_embeddings;     /* llama3, yarn */
    int max_position_embeddings;              /* dynamic; yarn when factor is absent */
    int truncate;                             /* yarn: floor/ceil the correction range (default 1) */
} moeq_rope_params;

/* Maps a rope_type name to the enum; MOEQ_ERR_UNSUPPORTED for names moeq
 * does not implement (longrope, proportional, ...), naming them. */
moeq_code moeq_rope_type_from_name(const char *name, moeq_rope_type *type, moeq_error *err);

/* Fills inv_freq[rotary_dim / 2] and *attention_factor for p.
 * seq_len matters only for "dynamic": the largest position + 1 of the
 * sequence being run (0 = at initialisation, i.e. max_position_embeddings);
 * transformers recomputes the base when a sequence grows past
 * max_position_embeddings. MOEQ_ERR_INVALID_ARG names a bad parameter. */
moeq_code moeq_rope_compute(const moeq_rope_params *p, int seq_len, float *inv_freq,
                            float *attention_factor, moeq_error *err);

/* YaRN's magnitude scale 0.1 * mscale * ln(scale) + 1 (1 for scale <= 1),
 * get_mscale in modeling_rope_utils.py. DeepSeek-V3 also multiplies its
 * softmax scale by get_mscale(factor, mscale_all_dim) squared. */
double moeq_rope_yarn_mscale(double scale, double mscale);

#endif
