/* cpu_router.c: MoE top-k routing from router logits, the two schemes in use:
 * softmax then top-k (Mixtral, Qwen2/3-MoE: their *TopKRouter.forward in
 * transformers; DeepSeek-V2 with group_limited_greedy limits it to the groups
 * of highest maximum probability, DeepseekV2TopkRouter.forward) and sigmoid
 * with bias-corrected, group-limited selection (DeepSeek-V3 section 2.1.2
 * "auxiliary-loss-free load balancing"; GLM-4.5; DeepseekV3TopkRouter.forward). */
#include "backend/cpu/cpu_ops.h"

#include <math.h>
#include <stdlib.h>

/* Index of the largest score among those not yet taken; the lower index wins
 * a tie. -1 if every entry is taken. */
static int argmax_free(const float *score, const unsigned char *taken, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (!taken[i] && (best < 0 || score[i] > score[best]))
            best = i;
    return best;
}

/* Masks (taken = 1) every expert outside the topk_group groups with the
 * highest group score: the sum of a group's two best choice scores
 * (best_two, DeepSeek-V3) or its best one (DeepSeek-V2). */
static void limit_to_best_groups(const float *choice, int E, int n_group, int topk_group,
                                 int best_two, float *group_score, unsigned char *group_taken,
                                 unsigned char *taken)
{
    int size = E / n_group;
    for (int g = 0; g < n_group; g++) {
        const float *c = choice + (size_t)g * size;
        int first = 0;
        for (int i = 1; i < size; i++)
            if (c[i] > c[first])
                first = i;
        int second = first == 0 ? 1 : 0;
        for (int i = 0; i < size; i++)
            if (i != first && c[i] > c[second])
                second = i;
        group_score[g] = best_two ? c[first] + c[second] : c[first];
        group_taken[g] = 0;
    }
    /* group_taken marks the kept groups here. */
    for (int kept = 0; kept < topk_group; kept++)
        group_taken[argmax_free(group_score, group_taken, n_group)] = 1;
    for (int e = 0; e < E; e++)
        taken[e] = !group_taken[e / size];
}

static moeq_code check_router(int T, int E, const cpu_router_params *p, moeq_error *err)
{
    if (T < 0 || E <= 0 || p->top_k <= 0 || p->top_k > E)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "router: bad sizes T=%d E=%d top_k=%d", T, E,
                         p->top_k);
    if (p->scoring != CPU_ROUTER_SOFTMAX && p->scoring != CPU_ROUTER_SIGMOID)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "router: unknown scoring %d", (int)p->scoring);
    if (p->n_group > 1) {
        int size = E / p->n_group;
        if (E % p->n_group || size < 2 || p->topk_group < 1 || p->topk_group > p->n_group ||
            p->top_k > p->topk_group * size)
            return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                             "router: %d experts do not split into n_group=%d groups of >= 2 "
                             "with top_k=%d inside topk_group=%d of them",
                             E, p->n_group, p->top_k, p->topk_group);
    }
    return MOEQ_OK;
}

moeq_code cpu_router_topk(const float *logits, int T, int E, const cpu_router_params *p,
                          float *weights, int32_t *experts, moeq_error *err)
{
    moeq_code rc = check_router(T, E, p, err);
    if (rc)
        return rc;
    int grouped = p->n_group > 1;
    int n_group = grouped ? p->n_group : 1;
    /* One block: score[E], choice[E], group_score[n_group], taken[E], group_taken[n_group]. */
    float *score = malloc((2 * (size_t)E + n_group) * sizeof(float) + (size_t)E + n_group);
    if (!score)
        return moeq_fail(err, MOEQ_ERR_OOM, "router: out of memory for %d experts", E);
    float *choice = score + E;
    float *group_score = choice + E;
    unsigned char *taken = (unsigned char *)(group_score + n_group);
    unsigned char *group_taken = taken + E;
    float scaling = p->routed_scaling_factor != 0.0f ? p->routed_scaling_factor : 1.0f;
    int k = p->top_k;

    for (int t = 0; t < T; t++) {
        const float *lt = logits + (size_t)t * E;
        float *wt = weights + (size_t)t * k;
        int32_t *et = experts + (size_t)t * k;
        if (p->scoring == CPU_ROUTER_SOFTMAX) {
            cpu_softmax_rows(lt, 1, E, score);
            for (int e = 0; e < E; e++)
                choice[e] = score[e];
        } else {
            cpu_sigmoid(lt, (size_t)E, score);
            for (int e = 0; e < E; e++)
                choice[e] = score[e] + (p->e_score_correction_bias ? p->e_score_correction_bias[e]
                                                                   : 0.0f);
        }
        if (grouped)
            limit_to_best_groups(choice, E, n_group, p->topk_group,
                                 p->scoring == CPU_ROUTER_SIGMOID, group_score, group_taken,
                                 taken);
        else
            for (int e = 0; e < E; e++)
                taken[e] = 0;
        float sum = 0.0f;
        for (int j = 0; j < k; j++) {
            int e = argmax_free(choice, taken, E);
            taken[e] = 1;
            et[j] = e;
            wt[j] = score[e];
            sum += wt[j];
        }
        if (p->norm_topk_prob) {
            /* DeepSeek-V3 guards the sum of sigmoids against zero. */
            if (p->scoring == CPU_ROUTER_SIGMOID)
                sum += 1e-20f;
            for (int j = 0; j < k; j++)
                wt[j] /= sum;
        }
        for (int j = 0; j < k; j++)
            wt[j] *= scaling;
    }
    free(score);
    return MOEQ_OK;
}
