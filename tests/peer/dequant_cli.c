/* dequant_cli.c: every quantized linear of a checkpoint as moeq reads it
 * (GPTQ, AWQ or compressed-tensors, dequantized to fp32), for the format
 * checks in check_formats_peer.py (built by that script, not by CMake).
 *
 *   dequant_cli MODEL_DIR OUT.safetensors
 *
 * OUT holds one F32 tensor per linear, named as the source weight
 * ("model.layers.1.mlp.experts.3.down_proj.weight"), [out, in]. */
#include "model/model.h"
#include "model/weights.h"
#include "moeq/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct dump {
    st_writer w;
    char (*names)[512];
    int n, cap;
} dump;

static moeq_code add(dump *d, const moeq_model *m, moeq_tensor_role role, int layer, int expert,
                     const float *data, int64_t rows, int64_t cols, moeq_error *err)
{
    if (!data)
        return MOEQ_OK;
    if (d->n == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 64;
        d->names = realloc(d->names, sizeof *d->names * (size_t)d->cap);
        if (!d->names)
            return moeq_fail(err, MOEQ_ERR_OOM, "out of memory");
    }
    char *name = d->names[d->n++];
    if (moeq_arch_tensor_name(&m->arch, role, layer, expert, name, 512))
        return moeq_fail(err, MOEQ_ERR_FORMAT, "cannot name %s", moeq_tensor_role_key(role));
    int64_t shape[2] = {rows, cols};
    return st_writer_add(&d->w, name, ST_F32, 2, shape, data,
                         sizeof(float) * (size_t)rows * (size_t)cols, err);
}

static moeq_code add_mlp(dump *d, const moeq_model *m, const moeq_mlp_weights *mlp,
                         const moeq_tensor_role roles[3], int layer, int expert, moeq_error *err)
{
    const int H = m->cfg.hidden_size, I = mlp->intermediate;
    moeq_code rc = add(d, m, roles[0], layer, expert, mlp->gate, I, H, err);
    if (!rc)
        rc = add(d, m, roles[1], layer, expert, mlp->up, I, H, err);
    if (!rc)
        rc = add(d, m, roles[2], layer, expert, mlp->down, H, I, err);
    return rc;
}

static const moeq_tensor_role dense_roles[3] = {MOEQ_T_GATE_PROJ, MOEQ_T_UP_PROJ,
                                                MOEQ_T_DOWN_PROJ};
static const moeq_tensor_role expert_roles[3] = {MOEQ_T_EXPERT_GATE_PROJ, MOEQ_T_EXPERT_UP_PROJ,
                                                 MOEQ_T_EXPERT_DOWN_PROJ};
static const moeq_tensor_role shared_roles[3] = {MOEQ_T_SHARED_GATE_PROJ, MOEQ_T_SHARED_UP_PROJ,
                                                 MOEQ_T_SHARED_DOWN_PROJ};

int main(int argc, char **argv)
{
    moeq_error err = {0};
    if (argc != 3) {
        fprintf(stderr, "usage: dequant_cli MODEL_DIR OUT.safetensors\n");
        return 2;
    }
    moeq_model m;
    if (moeq_model_open(argv[1], NULL, &m, &err)) {
        fprintf(stderr, "dequant_cli: %s\n", err.msg);
        return 1;
    }
    const moeq_config *c = &m.cfg;
    const int H = c->hidden_size, qd = c->num_heads * c->head_dim,
              kvd = c->num_kv_heads * c->head_dim;
    int L = c->num_layers;
    moeq_layer_weights *lw = calloc((size_t)L, sizeof *lw);
    dump d = {0};
    st_writer_init(&d.w);
    moeq_code rc = lw ? MOEQ_OK : moeq_fail(&err, MOEQ_ERR_OOM, "out of memory");
    for (int l = 0; l < L && !rc; l++) {
        if ((rc = moeq_layer_weights_load(&m, l, &lw[l], &err)))
            break;
        const moeq_layer_weights *w = &lw[l];
        rc = add(&d, &m, MOEQ_T_Q_PROJ, l, -1, w->q, qd, H, &err);
        if (!rc)
            rc = add(&d, &m, MOEQ_T_K_PROJ, l, -1, w->k, kvd, H, &err);
        if (!rc)
            rc = add(&d, &m, MOEQ_T_V_PROJ, l, -1, w->v, kvd, H, &err);
        if (!rc)
            rc = add(&d, &m, MOEQ_T_O_PROJ, l, -1, w->o, H, qd, &err);
        if (!rc && !w->is_moe)
            rc = add_mlp(&d, &m, &w->dense, dense_roles, l, -1, &err);
        for (int e = 0; !rc && w->is_moe && e < w->n_experts; e++)
            rc = add_mlp(&d, &m, &w->experts[e], expert_roles, l, e, &err);
        if (!rc && w->is_moe && w->has_shared)
            rc = add_mlp(&d, &m, &w->shared, shared_roles, l, -1, &err);
    }
    if (!rc)
        rc = st_writer_write(&d.w, argv[2], &err);
    for (int l = 0; lw && l < L; l++)
        moeq_layer_weights_free(&lw[l]);
    free(lw);
    free(d.names);
    st_writer_free(&d.w);
    moeq_model_close(&m);
    if (rc) {
        fprintf(stderr, "dequant_cli: %s\n", err.msg);
        return 1;
    }
    return 0;
}
