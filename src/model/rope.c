/* rope.c: inv_freq and attention factor of each RoPE variant.
 *
 * Formulas and their order of float32 operations follow transformers 5.x,
 * modeling_rope_utils.py (_compute_*_parameters) and the default in
 * modeling_llama.py. torch evaluates `python_float OP float32_tensor` in
 * float32 with the scalar rounded to float first, so every step here is a
 * float operation on (float)-cast scalars, except where transformers works on
 * Python floats (yarn's correction range, the attention factor), which are
 * doubles here too. torch evaluates `scalar / tensor` as
 * scalar * reciprocal(tensor) (Tensor.__rtruediv__), which rounds differently
 * from a division, so that is what is written below. Only pow differs: torch uses a vectorised powf accurate to
 * 1 ulp; powf of the double result rounded to float is the closest we can get
 * without that library, and agrees with torch on almost every element. */
#include "model/rope.h"

#include <math.h>
#include <string.h>

static const struct {
    const char *name;
    moeq_rope_type type;
} rope_names[] = {
    {"default", MOEQ_ROPE_DEFAULT}, {"linear", MOEQ_ROPE_LINEAR}, {"dynamic", MOEQ_ROPE_DYNAMIC},
    {"yarn", MOEQ_ROPE_YARN},       {"llama3", MOEQ_ROPE_LLAMA3},
};

moeq_code moeq_rope_type_from_name(const char *name, moeq_rope_type *type, moeq_error *err)
{
    for (size_t i = 0; i < sizeof rope_names / sizeof rope_names[0]; i++) {
        if (strcmp(name, rope_names[i].name) == 0) {
            *type = rope_names[i].type;
            return MOEQ_OK;
        }
    }
    return moeq_fail(err, MOEQ_ERR_UNSUPPORTED,
                     "unsupported rope_type \"%s\" (known: default, linear, dynamic, yarn, llama3)",
                     name);
}

double moeq_rope_yarn_mscale(double scale, double mscale)
{
    if (scale <= 1.0)
        return 1.0;
    return 0.1 * mscale * log(scale) + 1.0;
}

/* float32 base ** exponent, as torch's pow on float tensors. */
static float pow_f32(float base, float exponent)
{
    return (float)pow((double)base, (double)exponent);
}

/* The classic RoPE frequencies 1 / base ** (arange(0, dim, 2).float() / dim). */
static void default_inv_freq(float base, int dim, float *inv_freq)
{
    for (int i = 0; i < dim / 2; i++) {
        float exponent = (float)(2 * i) / (float)dim;
        inv_freq[i] = 1.0f / pow_f32(base, exponent);
    }
}

/* Llama 3.1: frequencies with wavelength above original/low_freq_factor are
 * divided by factor, those below original/high_freq_factor kept, and the band
 * between interpolated smoothly (_compute_llama3_parameters). */
static void llama3_inv_freq(const moeq_rope_params *p, float *inv_freq)
{
    int half = p->rotary_dim / 2;
    default_inv_freq((float)p->theta, p->rotary_dim, inv_freq);
    float factor = (float)p->factor;
    float old_context = (float)p->original_max_position_embeddings;
    float low_wavelen = (float)(p->original_max_position_embeddings / p->low_freq_factor);
    float high_wavelen = (float)(p->original_max_position_embeddings / p->high_freq_factor);
    float low = (float)p->low_freq_factor;
    float band = (float)(p->high_freq_factor - p->low_freq_factor);
    for (int i = 0; i < half; i++) {
        float inv = inv_freq[i];
        float wavelen = (float)(2.0 * M_PI) * (1.0f / inv);
        float inv_llama = wavelen > low_wavelen ? inv / factor : inv;
        if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
            float smooth = (old_context * (1.0f / wavelen) - low) / band;
            inv_llama = (1.0f - smooth) * inv_llama / factor + smooth * inv_llama;
        }
        inv_freq[i] = inv_llama;
    }
}

/* Dimension index at which a frequency completes num_rotations turns over
 * max_positions (find_correction_dim). */
static double yarn_correction_dim(double num_rotations, int dim, double base, int max_positions)
{
    return dim * log(max_positions / (num_rotations * 2.0 * M_PI)) / (2.0 * log(base));
}

/* YaRN (arXiv:2309.00071 section 3.2): pairs below the correction range keep
 * their frequency (extrapolation), pairs above it are divided by factor
 * (interpolation), with a linear ramp between (_compute_yarn_parameters). */
static void yarn_inv_freq(const moeq_rope_params *p, double factor, float *inv_freq)
{
    int dim = p->rotary_dim;
    double beta_fast = p->beta_fast != 0.0 ? p->beta_fast : 32.0;
    double beta_slow = p->beta_slow != 0.0 ? p->beta_slow : 1.0;
    double low = yarn_correction_dim(beta_fast, dim, p->theta, p->original_max_position_embeddings);
    double high = yarn_correction_dim(beta_slow, dim, p->theta, p->original_max_position_embeddings);
    if (p->truncate) {
        low = floor(low);
        high = ceil(high);
    }
    if (low < 0.0)
        low = 0.0;
    if (high > dim - 1)
        high = dim - 1;
    if (low == high)
        high += 0.001; /* transformers' guard against a zero-width ramp */
    float low_f = (float)low;
    float width = (float)(high - low);
    float factor_f = (float)factor;
    for (int i = 0; i < dim / 2; i++) {
        float pos_freq = pow_f32((float)p->theta, (float)(2 * i) / (float)dim);
        float extrapolation = 1.0f / pos_freq;
        float interpolation = 1.0f / (factor_f * pos_freq);
        float ramp = ((float)i - low_f) / width;
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        float extrapolation_factor = 1.0f - ramp;
        inv_freq[i] = interpolation * (1.0f - extrapolation_factor) +
                      extrapolation * extrapolation_factor;
    }
}

/* Dynamic NTK: past max_position_embeddings the base grows to
 * base * (factor * seq_len / max - (factor - 1)) ** (dim / (dim - 2)).
 * transformers gets seq_len as a tensor there, so this runs in float32. */
static float dynamic_base(const moeq_rope_params *p, int seq_len)
{
    if (seq_len <= p->max_position_embeddings)
        return (float)p->theta;
    int dim = p->rotary_dim;
    float ratio = (float)p->factor * (float)seq_len / (float)p->max_position_embeddings -
                  (float)(p->factor - 1.0);
    float scale = pow_f32(ratio, (float)((double)dim / (dim - 2)));
    return (float)p->theta * scale;
}

static moeq_code check_params(const moeq_rope_params *p, moeq_error *err)
{
    if (p->rotary_dim <= 0 || p->rotary_dim % 2)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "rope: rotary_dim %d must be positive and even",
                         p->rotary_dim);
    if (!(p->theta > 1.0))
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "rope: rope_theta %g must be > 1", p->theta);
    if (p->type != MOEQ_ROPE_DEFAULT && p->type != MOEQ_ROPE_YARN && !(p->factor > 0.0))
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "rope: factor %g must be > 0", p->factor);
    if (p->type == MOEQ_ROPE_LLAMA3) {
        if (!(p->low_freq_factor > 0.0) || !(p->high_freq_factor > p->low_freq_factor))
            return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                             "rope llama3: need 0 < low_freq_factor (%g) < high_freq_factor (%g)",
                             p->low_freq_factor, p->high_freq_factor);
    }
    if ((p->type == MOEQ_ROPE_LLAMA3 || p->type == MOEQ_ROPE_YARN) &&
        p->original_max_position_embeddings <= 0)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "rope: original_max_position_embeddings %d must be > 0",
                         p->original_max_position_embeddings);
    if (p->type == MOEQ_ROPE_DYNAMIC && (p->max_position_embeddings <= 0 || p->rotary_dim < 4))
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "rope dynamic: need max_position_embeddings > 0 (%d) and rotary_dim >= 4",
                         p->max_position_embeddings);
    return MOEQ_OK;
}

moeq_code moeq_rope_compute(const moeq_rope_params *p, int seq_len, float *inv_freq,
                            float *attention_factor, moeq_error *err)
{
    moeq_code rc = check_params(p, err);
    if (rc)
        return rc;
    double attention = 1.0;
    switch (p->type) {
    case MOEQ_ROPE_DEFAULT:
        default_inv_freq((float)p->theta, p->rotary_dim, inv_freq);
        break;
    case MOEQ_ROPE_LINEAR:
        /* Dividing positions by factor, done on inv_freq instead. */
        default_inv_freq((float)p->theta, p->rotary_dim, inv_freq);
        for (int i = 0; i < p->rotary_dim / 2; i++)
            inv_freq[i] /= (float)p->factor;
        break;
    case MOEQ_ROPE_DYNAMIC:
        default_inv_freq(dynamic_base(p, seq_len), p->rotary_dim, inv_freq);
        break;
    case MOEQ_ROPE_LLAMA3:
        llama3_inv_freq(p, inv_freq);
        break;
    case MOEQ_ROPE_YARN: {
        /* DeepSeek-V3 style configs may leave factor out: use the ratio of
         * the extended to the original context. */
        double factor = p->factor > 0.0 ? p->factor
                                        : (double)p->max_position_embeddings /
                                              p->original_max_position_embeddings;
        if (!(factor > 0.0))
            return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "rope yarn: factor %g must be > 0",
                             factor);
        yarn_inv_freq(p, factor, inv_freq);
        if (p->attention_factor != 0.0)
            attention = p->attention_factor;
        else if (p->mscale != 0.0 && p->mscale_all_dim != 0.0)
            attention = moeq_rope_yarn_mscale(factor, p->mscale) /
                        moeq_rope_yarn_mscale(factor, p->mscale_all_dim);
        else
            attention = moeq_rope_yarn_mscale(factor, 1.0);
        break;
    }
    default:
        return moeq_fail(err, MOEQ_ERR_UNSUPPORTED, "rope: unknown type %d", (int)p->type);
    }
    *attention_factor = (float)attention;
    return MOEQ_OK;
}
