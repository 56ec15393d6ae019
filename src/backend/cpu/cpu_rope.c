/* cpu_rope.c: applies rotary position embeddings (Su et al. 2021, RoFormer)
 * in place, as transformers' apply_rotary_pos_emb does in fp32:
 * x * cos + rotate(x) * sin, cos and sin of position * inv_freq, each scaled by
 * the attention factor. */
#include "backend/cpu/cpu_ops.h"

#include <math.h>

/* Turns the pair (a, b) by the angle whose scaled cosine and sine are c, s,
 * with the same two products and one sum per element as x*cos + rotate(x)*sin. */
static void rotate_pair(float *a, float *b, float c, float s)
{
    float x0 = *a, x1 = *b;
    *a = x0 * c - x1 * s;
    *b = x1 * c + x0 * s;
}

void cpu_rope_apply(float *x, int tokens, int heads, int head_dim, int rotary_dim,
                    const int32_t *positions, const float *inv_freq, float attention_factor,
                    int interleaved)
{
    int half = rotary_dim / 2;
    for (int t = 0; t < tokens; t++) {
        float position = (float)positions[t];
        float *xt = x + (size_t)t * heads * head_dim;
        for (int i = 0; i < half; i++) {
            float angle = position * inv_freq[i];
            float c = cosf(angle) * attention_factor;
            float s = sinf(angle) * attention_factor;
            for (int h = 0; h < heads; h++) {
                float *xh = xt + (size_t)h * head_dim;
                if (interleaved)
                    rotate_pair(&xh[2 * i], &xh[2 * i + 1], c, s);
                else
                    rotate_pair(&xh[i], &xh[i + half], c, s);
            }
        }
    }
}
