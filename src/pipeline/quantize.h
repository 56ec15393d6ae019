/* quantize.h: the layer loop (DESIGN.md, "The layer loop"). For each
 * decoder layer: capture its inputs from the calibration windows, build the
 * Hessians, quantize attention then MLP / experts (with true-sequential,
 * each stage seeing the already-quantized earlier ones), compute the layer's output with the
 * quantized weights and the real top-k routing, hand the quantized weights
 * to the writer, and move on. One layer's weights are in memory at a time. */
#ifndef MOEQ_PIPELINE_QUANTIZE_H
#define MOEQ_PIPELINE_QUANTIZE_H

#include "calib/calib_set.h"
#include "model/model.h"
#include "quant/gptq.h"
#include "quant/pack_format.h"

#include <stdint.h>
#include <stdio.h>

typedef enum moeq_method {
    MOEQ_METHOD_GPTQ,
    MOEQ_METHOD_RTN, /* round to nearest on the same grid: the baseline */
    MOEQ_METHOD_AWQ, /* activation-aware scales, then RTN on clipped grids
                      * (src/pipeline/quantize_awq.c) */
} moeq_method;

/* How experts are calibrated (the router always decides the layer output).
 *  routed:   expert e's Hessians come from the tokens routed to it, each
 *            H = (2/n_e) sum x x^T; an expert with fewer than
 *            min_expert_tokens tokens falls back to the all-token Hessians
 *            (the textbook dead-column rule would zero an expert that saw no
 *            token: its Hessian is all zeros).
 *  all:      the router is bypassed for calibration: every expert sees every
 *            token; gate/up of all experts share one Hessian per layer (the
 *            same inputs), down_proj's is per expert from
 *            silu(gate(x)) * up(x) over all tokens.
 *            Llama-4's experts, whose input the router weight scales, are
 *            calibrated on their routed tokens so scaled.
 *  weighted: every expert sees every token, token t weighted by p_e(t), the
 *            router's softmax probability of expert e over all experts
 *            (a sigmoid router's score sigmoid(logit_e), the weight before
 *            renormalisation; Llama-4's sigmoid of its logit):
 *            H_e = (2/n) sum_t p_e(t) x_t x_t^T for gate/up and likewise for
 *            down_proj's inputs. */
typedef enum moeq_expert_calib {
    MOEQ_EXPERT_CALIB_ROUTED,
    MOEQ_EXPERT_CALIB_ALL,
    MOEQ_EXPERT_CALIB_WEIGHTED,
} moeq_expert_calib;

const char *moeq_expert_calib_name(moeq_expert_calib mode);
const char *moeq_method_name(moeq_method method);

/* The most CUDA devices one run uses (--devices). */
#define MOEQ_MAX_DEVICES 16

/* The CPU loop's token chunk when moeq_quantize_options.token_chunk is 0. */
enum { MOEQ_DEFAULT_TOKEN_CHUNK = 4096 };

typedef struct moeq_quantize_options {
    moeq_method method;
    moeq_gptq_config gptq;
    moeq_format format;     /* of the output checkpoint (the writer's concern) */
    moeq_expert_calib expert_calib;
    int min_expert_tokens;  /* routed mode: fewer tokens -> all-token fallback */
    int true_sequential;    /* each stage calibrated on the quantized earlier ones
                             * (q/k/v -> o -> gate/up -> down); 0: every stage on
                             * the original layer's activations */
    int token_chunk;        /* tokens per chunk of expert activations; 0: the
                             * default (CPU: MOEQ_DEFAULT_TOKEN_CHUNK; CUDA: as
                             * the budget allows), else at most this many */
    int devices[MOEQ_MAX_DEVICES]; /* CUDA devices of moeq_quantize_layers_cuda: */
    int n_devices;          /* devices[0] (the primary) runs attention and holds the
                             * residual stream; experts are spread over all of them.
                             * 0 means 1 */
    int expert_batch;       /* CUDA: experts per group; 0 = as the budget allows */
    size_t vram_budget;     /* CUDA: device bytes the run may use; 0: allocations
                             * uncapped, expert groups sized to the device memory
                             * free at the start (gpu_memory_limit) */
    int host_fp32_weights;  /* CUDA: decode every weight to fp32 on the host, as the
                             * loop did before bf16 weights stayed bf16 (a test of
                             * that path: the output must not change) */
    int wait_for_layer;     /* CUDA: load, quantize, write one layer after the other;
                             * 0: read layer L+1's weights and write layer L-1 on
                             * helper threads while layer L runs on the GPU (the
                             * CPU loop always waits) */
    int quantize_linear_ba; /* Gated DeltaNet: also quantize in_proj_b / in_proj_a
                             * (fused: in_proj_ba); 0 keeps them in the source
                             * dtype, as vLLM's GPTQ kernels need (README) */
    int quantize_mtp;       /* also quantize the MTP block (model/mtp.h), calibrated
                             * on the quantized model's final hidden states and
                             * the next tokens' embeddings; 0 copies it as it is */
    FILE *progress;         /* per-stage progress lines; NULL for none */
    int state_every;        /* call sink->layer_done after every this many layers
                             * (1: each; 0: never) */
    int start_layer;        /* resume: the first layer to quantize (0: all) */
    const float *start_hidden; /* resume: that layer's input [tokens, hidden] */
} moeq_quantize_options;

/* One quantized linear of a layer, named by role and expert. */
typedef struct moeq_quantized_linear {
    moeq_tensor_role role;
    int expert; /* -1 unless an expert role */
    moeq_quantized q;
    double loss; /* GPTQ objective; AWQ: output error of the chosen grids
                  * (sum e^T H e); 0 for RTN */
    double damp; /* damping used; 0 for RTN and AWQ */
    double awq_alpha; /* AWQ: the exponent of the input scale folded into this
                       * weight; -1 when it has none (o_proj) */
    int64_t tokens; /* calibration tokens (routed: routed tokens) */
    int fallback;   /* routed mode: used the all-token Hessians */
} moeq_quantized_linear;

/* An unquantized tensor the quantization changed (AWQ folds its scales
 * into norms and compensates routers): written in place of the source's,
 * in the source's dtype, in which data is exact. */
typedef struct moeq_replaced_tensor {
    moeq_tensor_role role;
    int expert; /* -1 unless an expert role */
    float *data;
    size_t count;
} moeq_replaced_tensor;

typedef struct moeq_layer_result {
    int layer;              /* num_layers for the MTP block */
    const moeq_arch *names; /* what names its tensors: NULL for the model's
                             * architecture, the MTP block's view (with {L} = 0) */
    int n_linears;
    moeq_quantized_linear *linears;
    int n_replaced;
    moeq_replaced_tensor *replaced;
    /* AWQ on a MoE layer: calibration tokens whose top-k experts or weights
     * differ between the original router and norm and the scaled ones
     * (exact compensation: 0); -1 when not measured. */
    int64_t routing_changes;
    int64_t *expert_tokens; /* [num_experts] routed token counts; NULL for dense layers */
    double seconds_load; /* reading and decoding the layer's weights */
    double seconds_wall; /* the layer's time on the critical path before the
                          * writer gets it: loading unless overlapped, the
                          * stages, and (overlapped) waiting for the writer */
    double seconds_capture, seconds_hessian, seconds_solve, seconds_forward;
    double seconds_prepare; /* damping, Cholesky, inverse (part of GPTQ's solve) */
} moeq_layer_result;

void moeq_layer_result_free(moeq_layer_result *r);

/* Receives each finished layer (the output writer); it takes nothing over. */
typedef struct moeq_layer_sink {
    moeq_code (*write_layer)(void *ctx, const moeq_layer_result *result, moeq_error *err);
    /* Optional: after layer `layer` is written, its output (the next
     * layer's input, count floats), for a resumable record of the run. */
    moeq_code (*layer_done)(void *ctx, int layer, const float *hidden, size_t count,
                            moeq_error *err);
    void *ctx;
} moeq_layer_sink;

/* Runs the loop over every layer of model with calibration windows calib.
 * Per-layer timings and statistics go to sink with the weights. */
moeq_code moeq_quantize_layers(const moeq_model *model, const moeq_calib_set *calib,
                               const moeq_quantize_options *opt, const moeq_layer_sink *sink,
                               moeq_error *err);

/* The gate, up and down roles of a dense MLP, a routed expert and a shared
 * expert (both loops quantize them in this order). */
extern const moeq_tensor_role MOEQ_DENSE_ROLES[3], MOEQ_EXPERT_ROLES[3], MOEQ_SHARED_ROLES[3];

/* MOEQ_ERR_NUMERIC naming the layer, what (the activation) and the first
 * element of x[0..n) that is NaN or infinite; the CPU layer loop and its
 * AWQ half check their calibration activations with it. */
moeq_code moeq_check_finite(int layer, const float *x, size_t n, const char *what,
                            moeq_error *err);

/* Routed mode: the warning for an expert below --min-expert-tokens (both
 * loops print the same line). */
void moeq_warn_expert_fallback(const moeq_quantize_options *opt, int expert, int layer,
                               int tokens);

/* The same loop on CUDA devices opt->devices (src/pipeline/quantize_cuda.c;
 * built only with the CUDA backend). True-sequential only. peak_device_bytes
 * (optional, [max(1, opt->n_devices)]) receives the most device memory the
 * run held on each device. */
moeq_code moeq_quantize_layers_cuda(const moeq_model *model, const moeq_calib_set *calib,
                                    const moeq_quantize_options *opt, const moeq_layer_sink *sink,
                                    size_t *peak_device_bytes, moeq_error *err);

/* Whether the CUDA loop runs this model with these options: 0, or
 * MOEQ_ERR_UNSUPPORTED with a message naming the missing component. Called
 * by moeq_quantize_layers_cuda before anything starts, and by the CLI, which
 * runs --device auto on the CPU loop instead. CUDA builds only. */
moeq_code moeq_cuda_pipeline_supports(const moeq_model *model, const moeq_quantize_options *opt,
                                      moeq_error *err);

/* Number of CUDA devices (0 without a driver or a device). CUDA builds only. */
int moeq_cuda_device_count(void);

/* Whether the state after layer l is saved (sink->layer_done): every
 * opt->state_every layers, never after the last one (the run finishes). */
static inline int moeq_saves_state_after(const moeq_quantize_options *opt, int l, int n_layers)
{
    return opt->state_every > 0 && (l + 1) % opt->state_every == 0 && l + 1 < n_layers;
}

#endif
