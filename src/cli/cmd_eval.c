/* cmd_eval.c: `moeq eval`: perplexity of a checkpoint, and KL divergence and
 * top-1 agreement against a reference checkpoint. */
#include "calib/documents.h"
#include "calib/token_stream.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "pipeline/evaluate.h"
#include "pipeline/quantize.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char eval_usage[] =
    "usage: moeq eval MODEL_DIR (--text FILE | --tokens FILE) [options]\n"
    "\n"
    "Scores MODEL_DIR on a token stream; with --reference ORIG_DIR also the mean\n"
    "token KL divergence KL(reference || model) and the top-1 agreement.\n"
    "\n"
    "Protocol: the token stream is cut into non-overlapping windows of --seqlen\n"
    "tokens (a shorter tail is dropped); each window is scored independently from\n"
    "its first token (positions 0..seqlen-1, no context carried over). Position t\n"
    "predicts token t+1, so a window has seqlen-1 predicted positions. Perplexity is\n"
    "exp of the mean negative log-likelihood over all predicted positions; KL and\n"
    "top-1 agreement are averaged over the same positions. Text input: each\n"
    "document (a .txt file, or each JSONL line's \"text\" / chat \"messages\") is\n"
    "tokenized on its own and followed by the end-of-text token.\n"
    "\n";

int moeq_cmd_eval(int argc, char **argv)
{
    const char *text = NULL, *tokens_path = NULL, *reference_dir = NULL, *arch_file = NULL,
               *logits_out = NULL, *lang = NULL, *tokenizer_path = NULL;
    const char *device = "auto", *devices = NULL;
    int seqlen = 512, max_windows = 0, help = 0, quiet = 0;
    const arg_spec specs[] = {
        {"text", ARG_STRING, &text, "FILE|DIR", "text, JSONL (\"text\" or \"messages\") or a directory of them"},
        {"tokens", ARG_STRING, &tokens_path, "FILE", "pre-tokenized input: little-endian int32 ids"},
        {"reference", ARG_STRING, &reference_dir, "DIR", "original checkpoint for KL and top-1 agreement"},
        {"seqlen", ARG_INT, &seqlen, "N", "window length in tokens (default 512)"},
        {"max-windows", ARG_INT, &max_windows, "N", "score at most N windows (default: all)"},
        {"lang", ARG_STRING, &lang, "CODES", "only JSONL documents whose \"lang\" is one of CODES (e.g. en or de,fr)"},
        {"tokenizer", ARG_STRING, &tokenizer_path, "FILE", "tokenizer.json (default MODEL_DIR/tokenizer.json)"},
        {"arch-file", ARG_STRING, &arch_file, "FILE", "architecture file to use instead of the built-in one"},
        {"logits-out", ARG_STRING, &logits_out, "FILE", "write logits: float32 LE, windows x seqlen x vocab"},
        {"device", ARG_STRING, &device, "auto|cpu|cuda[:N]", "where the decoder layers run (default auto: the first GPU, else the CPU); the head and the scores run on the CPU"},
        {"devices", ARG_STRING, &devices, "N,N,...", "CUDA: several GPUs of this host (experts split over them, as in quantize)"},
        {"quiet", ARG_FLAG, &quiet, NULL, "no progress output"},
        {"help", ARG_FLAG, &help, NULL, "show this help"},
        {0},
    };
    moeq_error err = {0};
    const char *pos[1];
    int n_pos;
    int exit_status =
        args_parse_command("eval", eval_usage, specs, &help, argc, argv, pos, 1, &n_pos);
    if (exit_status >= 0)
        return exit_status;
    if (n_pos != 1 || !text == !tokens_path) {
        args_print_usage(stderr, eval_usage, specs);
        return moeq_cli_report("eval", 2, "give MODEL_DIR and exactly one of --text and --tokens");
    }
    if (max_windows < 0)
        return moeq_cli_report("eval", 2, "--max-windows must not be negative");
    int use_cuda = 0, gpus[MOEQ_MAX_DEVICES], n_gpus = 0;
    char msg[512];
    if (args_pick_devices(device, devices, &use_cuda, gpus, &n_gpus, msg, sizeof msg))
        return moeq_cli_report("eval", 2, msg);

    moeq_model model = {0}, reference = {0};
    int have_model = 0, have_ref = 0, status = 1;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    moeq_documents docs = {0};
    moeq_tokenizer *tok = NULL;
    FILE *progress = quiet ? NULL : stderr;
    if (moeq_model_open(pos[0], arch_file, &model, &err))
        goto done;
    have_model = 1;
    if (reference_dir) {
        if (moeq_model_open(reference_dir, arch_file, &reference, &err))
            goto done;
        have_ref = 1;
    }
    if (tokens_path) {
        if (moeq_read_token_file(tokens_path, &ids, &n_ids, &err))
            goto done;
    } else {
        char default_tok[4096];
        snprintf(default_tok, sizeof default_tok, "%s/tokenizer.json", pos[0]);
        if (moeq_tokenizer_load(tokenizer_path ? tokenizer_path : default_tok, &tok, &err) ||
            moeq_documents_load(text, lang, &docs, &err) ||
            moeq_tokenize_documents(tok, &docs, &ids, &n_ids, &err))
            goto done;
        if (docs.count == 0) {
            moeq_fail(&err, MOEQ_ERR_INVALID_ARG, "%s: no documents%s%s", text,
                      lang ? " with lang " : "", lang ? lang : "");
            goto done;
        }
    }
#ifdef MOEQ_HAVE_CUDA
    /* A model the GPU loop does not run: --device auto evaluates it on the
     * CPU and says so; a device named explicitly stops here. */
    moeq_quantize_options gpu_opt = {.method = MOEQ_METHOD_RTN, .true_sequential = 1};
    if (use_cuda && (moeq_cuda_pipeline_supports(&model, &gpu_opt, &err) ||
                     (have_ref && moeq_cuda_pipeline_supports(&reference, &gpu_opt, &err)))) {
        if (strcmp(device, "auto") || devices)
            goto done;
        if (progress)
            fprintf(progress, "moeq eval: running on the CPU: %s\n", err.msg);
        use_cuda = 0;
    }
#endif
    moeq_eval_result r;
    if (moeq_evaluate_on(&model, have_ref ? &reference : NULL, ids, n_ids, seqlen,
                         (size_t)max_windows, logits_out, gpus, use_cuda ? n_gpus : 0, progress,
                         &r, &err))
        goto done;
    printf("model       %s\n", pos[0]);
    printf("device      %s\n", use_cuda ? "cuda" : "cpu");
    printf("windows     %zu x %d tokens (%zu predicted positions)\n", r.windows, seqlen,
           r.predicted);
    printf("nll         %.6f\n", r.nll);
    printf("perplexity  %.4f\n", r.perplexity);
    if (r.has_reference) {
        printf("reference   %s\n", reference_dir);
        printf("ref_ppl     %.4f\n", r.ref_perplexity);
        printf("kl          %.6f\n", r.kl);
        printf("top1_agree  %.6f\n", r.top1_agreement);
    }
    status = 0;
done:
    if (status)
        status = moeq_cli_report("eval", 1, err.msg);
    free(ids);
    moeq_documents_free(&docs);
    moeq_tokenizer_free(tok);
    if (have_model)
        moeq_model_close(&model);
    if (have_ref)
        moeq_model_close(&reference);
    return status;
}
