/* test_model.c: opening checkpoints: a complete one loads; a missing
 * config, shard or tensor, a mis-shaped tensor, an unknown model_type and
 * an architecture file for another family are clear errors naming the file,
 * the tensor or the field. Broken checkpoints are made from a golden fixture
 * by rewriting its safetensors with st_writer. */
#include "test.h"

#include <string.h>

#include "model/model.h"
#include "model/weights.h"
#include "moeq/safetensors.h"

static const char *fixture(const char *name)
{
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/golden/%s", MOEQ_SOURCE_DIR, name);
    return dir;
}

/* Copies the llama fixture's config.json into dir and writes its weights
 * with `drop` left out and `reshape` given the wrong shape (either may be
 * NULL). */
static void make_variant(const char *dir, const char *drop, const char *reshape)
{
    char cmd[8400], src[4200], dst[4200];
    snprintf(cmd, sizeof cmd, "cp '%s/config.json' '%s/'", fixture("llama"), dir);
    CHECK(system(cmd) == 0);
    snprintf(src, sizeof src, "%s/model.safetensors", fixture("llama"));
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    st_file f;
    st_writer w;
    moeq_error err = {0};
    CHECK_INT_EQ(st_file_open(&f, src, &err), MOEQ_OK);
    st_writer_init(&w);
    for (size_t i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        if (drop && !strcmp(t->name, drop))
            continue;
        int64_t shape[8];
        memcpy(shape, t->shape, sizeof shape);
        int ndim = t->ndim;
        if (reshape && !strcmp(t->name, reshape) && ndim == 2) {
            shape[0] = t->shape[1]; /* transposed: same bytes, wrong shape */
            shape[1] = t->shape[0];
        }
        CHECK_INT_EQ(st_writer_add(&w, t->name, t->dtype, ndim, shape, t->data, t->nbytes, &err),
                     MOEQ_OK);
    }
    CHECK_INT_EQ(st_writer_write(&w, dst, &err), MOEQ_OK);
    st_writer_free(&w);
    st_file_close(&f);
}

static void test_every_golden_checkpoint_opens_and_loads_each_layer(void)
{
    const char *names[] = {"qwen3_moe", "qwen2_moe", "mixtral", "llama", "qwen2", "qwen3"};
    for (int i = 0; i < 6; i++) {
        moeq_model m;
        moeq_error err = {0};
        CHECK_INT_EQ(moeq_model_open(fixture(names[i]), NULL, &m, &err), MOEQ_OK);
        for (int l = 0; l < m.cfg.num_layers; l++) {
            moeq_layer_weights lw;
            CHECK_INT_EQ(moeq_layer_weights_load(&m, l, &lw, &err), MOEQ_OK);
            moeq_layer_weights_free(&lw);
        }
        moeq_model_close(&m);
    }
}

/* MOEQ_WEIGHTS_KEEP_BF16: MLP and expert weights stored as plain bf16 stay
 * bf16 (the same bits the fp32 decode widens), the attention stays fp32;
 * an FP8 block-scaled checkpoint's experts are decoded to fp32 as before.
 * (The first MoE layer of each fixture.) */
static void test_bf16_weights_are_kept_as_stored_on_request(void)
{
    const char *names[] = {"qwen3_moe", "qwen3_moe_fp8", "qwen2_moe"};
    for (int i = 0; i < 3; i++) {
        moeq_model m;
        moeq_error err = {0};
        CHECK_INT_EQ(moeq_model_open(fixture(names[i]), NULL, &m, &err), MOEQ_OK);
        int l = 0;
        while (l + 1 < m.cfg.num_layers && !m.cfg.layer_is_moe[l])
            l++;
        moeq_layer_weights f, b;
        CHECK_INT_EQ(moeq_layer_weights_load(&m, l, &f, &err), MOEQ_OK);
        CHECK_INT_EQ(moeq_layer_weights_load_flags(&m, l, MOEQ_WEIGHTS_KEEP_BF16, &b, &err),
                     MOEQ_OK);
        CHECK(f.is_moe && b.is_moe && b.q && !f.experts[1].gate16);
        const int fp8 = i == 1;
        int same = 0, checked = 0;
        for (int e = 0; e < b.n_experts; e++) {
            const moeq_mlp_weights *x = &b.experts[e], *y = &f.experts[e];
            const float *full[3] = {y->gate, y->up, y->down};
            const uint16_t *half[3] = {x->gate16, x->up16, x->down16};
            const float *kept[3] = {x->gate, x->up, x->down};
            size_t n = (size_t)m.cfg.hidden_size * x->intermediate;
            for (int k = 0; k < 3; k++) {
                checked++;
                if (fp8) {
                    same += !half[k] && kept[k] && !memcmp(kept[k], full[k], 4 * n);
                    continue;
                }
                int ok = half[k] && !kept[k];
                for (size_t j = 0; ok && j < n; j++) {
                    uint32_t bits = (uint32_t)half[k][j] << 16;
                    ok = !memcmp(&bits, &full[k][j], 4);
                }
                same += ok;
            }
        }
        CHECK(checked > 0);
        CHECK_INT_EQ(same, checked);
        if (b.has_shared)
            CHECK(b.shared.gate16 && !b.shared.gate);
        moeq_layer_weights_free(&f);
        moeq_layer_weights_free(&b);
        moeq_model_close(&m);
    }
}

static void test_missing_tensor_is_named_with_its_layer(void)
{
    const char *dir = test_tmpdir("model_missing_tensor");
    make_variant(dir, "model.layers.1.self_attn.k_proj.weight", NULL);
    moeq_model m;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_model_open(dir, NULL, &m, &err), MOEQ_OK);
    moeq_layer_weights lw;
    CHECK_INT_EQ(moeq_layer_weights_load(&m, 1, &lw, &err), MOEQ_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.msg, "model.layers.1.self_attn.k_proj.weight");
    CHECK_CONTAINS(err.msg, "k_proj of layer 1");
    CHECK_CONTAINS(err.msg, dir);
    moeq_model_close(&m);
}

static void test_misshaped_tensor_reports_both_shapes(void)
{
    const char *dir = test_tmpdir("model_bad_shape");
    make_variant(dir, NULL, "model.layers.0.mlp.down_proj.weight");
    moeq_model m;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_model_open(dir, NULL, &m, &err), MOEQ_OK);
    moeq_layer_weights lw;
    CHECK_INT_EQ(moeq_layer_weights_load(&m, 0, &lw, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "model.layers.0.mlp.down_proj.weight");
    CHECK_CONTAINS(err.msg, "[112, 64]");
    CHECK_CONTAINS(err.msg, "expected [64, 112]");
    moeq_model_close(&m);
}

static void test_missing_config_and_missing_directory_are_not_found(void)
{
    const char *dir = test_tmpdir("model_no_config");
    moeq_model m;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_model_open(dir, NULL, &m, &err), MOEQ_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.msg, "config.json");
    CHECK_INT_EQ(moeq_model_open("test-tmp/does-not-exist", NULL, &m, &err), MOEQ_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.msg, "test-tmp/does-not-exist");
}

static void test_missing_shard_of_an_index_is_named(void)
{
    const char *dir = test_tmpdir("model_missing_shard");
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "cp '%s'/*.json '%s'/model-0000[123]-of-00004.safetensors '%s/'",
             fixture("qwen3_moe"), fixture("qwen3_moe"), dir);
    CHECK(system(cmd) == 0);
    moeq_model m;
    moeq_error err = {0};
    CHECK(moeq_model_open(dir, NULL, &m, &err) != MOEQ_OK);
    CHECK_CONTAINS(err.msg, "model-00004-of-00004.safetensors");
}

static void test_unknown_model_type_is_unsupported(void)
{
    const char *dir = test_tmpdir("model_unknown_type");
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    const char *cfg = "{\"model_type\": \"mamba2\", \"hidden_size\": 64}";
    test_write_file(path, cfg, strlen(cfg));
    moeq_model m;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_model_open(dir, NULL, &m, &err), MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "mamba2");
    CHECK_CONTAINS(err.msg, "qwen3_moe");
}

static void test_arch_file_for_another_model_type_is_refused(void)
{
    char arch[4200];
    snprintf(arch, sizeof arch, "%s/archs/mixtral.json", MOEQ_SOURCE_DIR);
    moeq_model m;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_model_open(fixture("llama"), arch, &m, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "mixtral.json");
    CHECK_CONTAINS(err.msg, "\"llama\"");
}

static void test_arch_file_given_explicitly_is_used(void)
{
    char arch[4200];
    snprintf(arch, sizeof arch, "%s/archs/qwen3_moe.json", MOEQ_SOURCE_DIR);
    moeq_model m;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_model_open(fixture("qwen3_moe"), arch, &m, &err), MOEQ_OK);
    CHECK_STR_EQ(m.arch.source, arch);
    moeq_model_close(&m);
}

int main(void)
{
    RUN(test_every_golden_checkpoint_opens_and_loads_each_layer);
    RUN(test_bf16_weights_are_kept_as_stored_on_request);
    RUN(test_missing_tensor_is_named_with_its_layer);
    RUN(test_misshaped_tensor_reports_both_shapes);
    RUN(test_missing_config_and_missing_directory_are_not_found);
    RUN(test_missing_shard_of_an_index_is_named);
    RUN(test_unknown_model_type_is_unsupported);
    RUN(test_arch_file_for_another_model_type_is_refused);
    RUN(test_arch_file_given_explicitly_is_used);
    return test_summary();
}
