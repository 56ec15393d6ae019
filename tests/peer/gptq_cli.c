/* gptq_cli.c: moeq's GPTQ solver and GPTQ v1 packer behind files, for the
 * peer checks in check_gptq_peer.py (built by that script, not by CMake).
 *
 *   gptq_cli IN.safetensors OUT.safetensors BITS GROUP_SIZE SYM DESC_ACT STATIC_GROUPS
 *
 * IN holds W [rows, cols] and H [cols, cols], both F32. OUT receives the
 * solver's result (codes U8 [rows, cols], scales F32 and zeros I32
 * [n_groups, rows], g_idx I32 [cols], dequant F32 [rows, cols]), the packed
 * tensors (qweight, qzeros I32, scales_f16 F16) and metadata loss and
 * damp_used. Damping 0.01 and block 128 are moeq's defaults. */
#include "moeq/safetensors.h"
#include "quant/gptq.h"
#include "quant/pack_gptq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const st_tensor *f32_matrix(const st_file *f, const char *name, moeq_error *err)
{
    const st_tensor *t = st_file_find(f, name);
    if (!t || t->dtype != ST_F32 || t->ndim != 2) {
        moeq_fail(err, MOEQ_ERR_FORMAT, "%s: needs a 2-D F32 tensor %s", f->path, name);
        return NULL;
    }
    return t;
}

static float *copy_f32(const st_tensor *t)
{
    float *p = malloc(t->nbytes);
    if (p)
        memcpy(p, t->data, t->nbytes); /* the map may be unaligned */
    return p;
}

static moeq_code run(int argc, char **argv, moeq_error *err)
{
    if (argc != 8)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                         "usage: gptq_cli IN OUT BITS GROUP_SIZE SYM DESC_ACT STATIC_GROUPS");
    moeq_gptq_config cfg = moeq_gptq_default_config();
    cfg.bits = atoi(argv[3]);
    cfg.group_size = atoi(argv[4]);
    cfg.sym = atoi(argv[5]);
    cfg.desc_act = atoi(argv[6]);
    cfg.static_groups = atoi(argv[7]);

    st_file in = {0};
    moeq_gptq_prepared prep = {0};
    moeq_quantized q = {0};
    moeq_packed_gptq p = {0};
    st_writer w;
    st_writer_init(&w);
    float *W = NULL, *H = NULL, *deq = NULL;
    moeq_code rc = st_file_open(&in, argv[1], err);
    if (rc)
        goto done;
    const st_tensor *tw = f32_matrix(&in, "W", err), *th = f32_matrix(&in, "H", err);
    if (!tw || !th) {
        rc = err->code;
        goto done;
    }
    const int rows = (int)tw->shape[0], cols = (int)tw->shape[1];
    W = copy_f32(tw);
    H = copy_f32(th);
    deq = malloc(sizeof(float) * (size_t)rows * cols);
    if (!W || !H || !deq) {
        rc = moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
        goto done;
    }
    double loss = 0;
    if ((rc = moeq_gptq_prepare(H, cols, &cfg, &prep, err)) ||
        (rc = moeq_gptq_sweep(&prep, &cfg, W, rows, &q, &loss, err)) ||
        (rc = moeq_pack_gptq(&q, &p, err)))
        goto done;
    moeq_quantized_dequantize(&q, deq);

    const int64_t ng = q.n_groups;
    const int64_t s_codes[2] = {rows, cols}, s_grid[2] = {ng, rows}, s_gidx[1] = {cols};
    const int64_t s_qw[2] = {moeq_gptq_qweight_rows(q.bits, cols), rows};
    const int64_t s_qz[2] = {ng, moeq_gptq_qzeros_cols(q.bits, rows)};
    const size_t rc_n = (size_t)rows * cols, g_n = (size_t)ng * rows;
    char loss_text[64], damp_text[64];
    snprintf(loss_text, sizeof loss_text, "%.17g", loss);
    snprintf(damp_text, sizeof damp_text, "%.17g", prep.damp_used);
    if ((rc = st_writer_add(&w, "codes", ST_U8, 2, s_codes, q.codes, rc_n, err)) ||
        (rc = st_writer_add(&w, "scales", ST_F32, 2, s_grid, q.scales, g_n * 4, err)) ||
        (rc = st_writer_add(&w, "zeros", ST_I32, 2, s_grid, q.zeros, g_n * 4, err)) ||
        (rc = st_writer_add(&w, "g_idx", ST_I32, 1, s_gidx, q.g_idx, (size_t)cols * 4, err)) ||
        (rc = st_writer_add(&w, "dequant", ST_F32, 2, s_codes, deq, rc_n * 4, err)) ||
        (rc = st_writer_add(&w, "qweight", ST_I32, 2, s_qw, p.qweight,
                            (size_t)(s_qw[0] * s_qw[1]) * 4, err)) ||
        (rc = st_writer_add(&w, "qzeros", ST_I32, 2, s_qz, p.qzeros,
                            (size_t)(s_qz[0] * s_qz[1]) * 4, err)) ||
        (rc = st_writer_add(&w, "scales_f16", ST_F16, 2, s_grid, p.scales, g_n * 2, err)) ||
        (rc = st_writer_set_metadata(&w, "loss", loss_text, err)) ||
        (rc = st_writer_set_metadata(&w, "damp_used", damp_text, err)))
        goto done;
    rc = st_writer_write(&w, argv[2], err);
done:
    st_writer_free(&w);
    moeq_packed_gptq_free(&p);
    moeq_quantized_free(&q);
    moeq_gptq_prepared_free(&prep);
    st_file_close(&in);
    free(W);
    free(H);
    free(deq);
    return rc;
}

int main(int argc, char **argv)
{
    moeq_error err = {0};
    if (run(argc, argv, &err)) {
        fprintf(stderr, "gptq_cli: %s\n", err.msg);
        return 1;
    }
    return 0;
}
