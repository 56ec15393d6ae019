/* test_tokenizer.c: tokenizer.json reader against Hugging Face `tokenizers`.
 *
 * tests/fixtures/tok/cases.jsonl holds, for four small tokenizers trained by
 * tests/fixtures/tok/make_fixtures.py, the ids `tokenizers` gives for
 * validation text in every corpus language and for edge cases. */
#include "test.h"

#include <cjson/cJSON.h>
#include <utf8proc.h>

#include "tok/tokenizer.h"

#define FIXTURE_DIR MOEQ_SOURCE_DIR "/tests/fixtures/tok"

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s)
        s[n] = '\0';
    fclose(f);
    return s;
}

static moeq_tokenizer *load_fixture(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/tokenizer.json", FIXTURE_DIR, name);
    moeq_tokenizer *tok = NULL;
    moeq_error err = {0};
    if (moeq_tokenizer_load(path, &tok, &err)) {
        fprintf(stderr, "  cannot load %s: %s\n", path, err.msg);
        return NULL;
    }
    return tok;
}

/* Calls fn for every case of the named tokenizer in cases.jsonl. */
typedef void (*case_fn)(const moeq_tokenizer *tok, size_t index, const char *text,
                        int add_special, const cJSON *ids, void *ctx);

static size_t for_each_case(const char *name, case_fn fn, void *ctx)
{
    char *all = read_text(FIXTURE_DIR "/cases.jsonl");
    moeq_tokenizer *tok = load_fixture(name);
    CHECK(all != NULL);
    CHECK(tok != NULL);
    size_t count = 0, index = 0;
    for (char *line = all; all && tok && *line; index++) {
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        cJSON *c = cJSON_Parse(line);
        CHECK(c != NULL);
        const cJSON *tname = cJSON_GetObjectItem(c, "tokenizer");
        if (c && strcmp(tname->valuestring, name) == 0) {
            fn(tok, index, cJSON_GetObjectItem(c, "text")->valuestring,
               cJSON_IsTrue(cJSON_GetObjectItem(c, "add_special")), cJSON_GetObjectItem(c, "ids"),
               ctx);
            count++;
        }
        cJSON_Delete(c);
        line = end ? end + 1 : line + strlen(line);
    }
    moeq_tokenizer_free(tok);
    free(all);
    return count;
}

typedef struct match_stats {
    size_t passed, failed;
} match_stats;

static void check_ids(const moeq_tokenizer *tok, size_t index, const char *text,
                      int add_special, const cJSON *want, void *ctx)
{
    match_stats *st = ctx;
    int32_t *ids = NULL;
    size_t n = 0;
    moeq_error err = {0};
    moeq_code rc = moeq_tokenizer_encode(tok, text, strlen(text), add_special, &ids, &n, &err);
    size_t n_want = (size_t)cJSON_GetArraySize(want);
    size_t pos = 0;
    while (!rc && pos < n && pos < n_want && ids[pos] == cJSON_GetArrayItem(want, (int)pos)->valueint)
        pos++;
    if (rc || pos != n || pos != n_want) {
        if (st->failed == 0) /* the first mismatch tells the most */
            fprintf(stderr,
                    "  case %zu (add_special=%d): %s; first difference at id %zu of %zu/%zu "
                    "(got %d, want %d)\n  text: \"%.200s\"\n",
                    index, add_special, rc ? err.msg : "ids differ", pos, n, n_want,
                    pos < n ? ids[pos] : -1,
                    pos < n_want ? cJSON_GetArrayItem(want, (int)pos)->valueint : -1, text);
        st->failed++;
    } else {
        st->passed++;
    }
    free(ids);
}

static void check_fixture_cases(const char *name)
{
    match_stats st = {0};
    size_t n = for_each_case(name, check_ids, &st);
    CHECK(n > 60);
    if (st.failed)
        fprintf(stderr, "  %s: %zu of %zu cases differ from tokenizers\n", name, st.failed, n);
    CHECK_INT_EQ(st.failed, 0);
}

static void test_bytelevel_qwen_style_matches_hf_ids(void)
{
    check_fixture_cases("bytelevel");
}

static void test_gpt2style_with_string_merges_matches_hf_ids(void)
{
    check_fixture_cases("gpt2style");
}

static void test_sentencepiece_style_matches_hf_ids_with_and_without_bos(void)
{
    check_fixture_cases("sentencepiece");
}

static void test_metaspace_style_matches_hf_ids_with_and_without_bos(void)
{
    check_fixture_cases("metaspace");
}

static void check_roundtrip(const moeq_tokenizer *tok, size_t index, const char *text,
                            int add_special, const cJSON *want, void *ctx)
{
    (void)want;
    (void)add_special;
    /* A tokenizer with an NFC normalizer (ctx non-NULL) decodes to the NFC
     * form of the text. */
    char *nfc = ctx ? (char *)utf8proc_NFC((const utf8proc_uint8_t *)text) : strdup(text);
    int32_t *ids = NULL;
    size_t n = 0;
    char *back = NULL;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_tokenizer_decode(tok, ids, n, &back, &err), MOEQ_OK);
    if (!back || !nfc || strcmp(back, nfc) != 0) {
        fprintf(stderr, "  case %zu does not round-trip: \"%.100s\" -> \"%.100s\"\n", index,
                text, back ? back : "(null)");
        CHECK(0);
    }
    free(nfc);
    free(ids);
    free(back);
}

static void test_bytelevel_decode_inverts_encode(void)
{
    int nfc = 1;
    CHECK(for_each_case("bytelevel", check_roundtrip, &nfc) > 60);
    CHECK(for_each_case("gpt2style", check_roundtrip, NULL) > 60);
}

/* Random code points from every UTF-8 length, ASCII-heavy. */
static size_t random_utf8(test_rng *rng, char *out, size_t n_chars)
{
    size_t len = 0;
    for (size_t i = 0; i < n_chars; i++) {
        uint64_t r = test_rng_next(rng);
        int32_t cp;
        switch (r % 5) {
        case 0: cp = (int32_t)(0x20 + (r >> 8) % 0x5F); break;
        case 1: cp = (int32_t)((r >> 8) % 0x80); break;
        case 2: cp = (int32_t)(0x80 + (r >> 8) % 0x780); break;
        case 3: cp = (int32_t)(0x800 + (r >> 8) % 0xF800); break;
        default: cp = (int32_t)(0x10000 + (r >> 8) % 0x100000); break;
        }
        if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF)) /* decode gives a C string */
            cp = 'x';
        len += (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)out + len);
    }
    out[len] = '\0';
    return len;
}

static void test_gpt2style_round_trips_random_utf8(void)
{
    moeq_tokenizer *tok = load_fixture("gpt2style");
    CHECK(tok != NULL);
    test_rng rng = {0x5eed1234abcdull};
    char text[4 * 200 + 1];
    for (int trial = 0; tok && trial < 200; trial++) {
        size_t len = random_utf8(&rng, text, 1 + test_rng_next(&rng) % 200);
        int32_t *ids = NULL;
        size_t n = 0;
        char *back = NULL;
        moeq_error err = {0};
        CHECK_INT_EQ(moeq_tokenizer_encode(tok, text, len, 0, &ids, &n, &err), MOEQ_OK);
        CHECK_INT_EQ(moeq_tokenizer_decode(tok, ids, n, &back, &err), MOEQ_OK);
        CHECK(back && strlen(back) == len && memcmp(back, text, len) == 0);
        free(ids);
        free(back);
    }
    moeq_tokenizer_free(tok);
}

/* Encodes bytes and returns the ids as a string "1 2 3" for comparison. */
static char *ids_string(const moeq_tokenizer *tok, const char *text, size_t len)
{
    int32_t *ids = NULL;
    size_t n = 0;
    moeq_error err = {0};
    if (moeq_tokenizer_encode(tok, text, len, 0, &ids, &n, &err)) {
        fprintf(stderr, "  encode failed: %s\n", err.msg);
        return NULL;
    }
    char *s = malloc(12 * n + 1);
    size_t at = 0;
    s[0] = '\0';
    for (size_t i = 0; i < n; i++)
        at += (size_t)snprintf(s + at, 13, "%d ", ids[i]);
    free(ids);
    return s;
}

static void test_invalid_utf8_is_replaced_by_u_fffd_per_maximal_subpart(void)
{
    static const char *names[] = {"bytelevel", "gpt2style", "sentencepiece", "metaspace"};
    /* Each pair: invalid input, and the same with U+FFFD where Rust's
     * from_utf8_lossy puts them. */
    static const struct {
        const char *bad, *fixed;
    } cases[] = {
        {"a\xFF b", "a\xEF\xBF\xBD b"},
        {"cut \xE2\x82 euro", "cut \xEF\xBF\xBD euro"},
        {"cut \xF0\x9F\x98", "cut \xEF\xBF\xBD"},
        {"surrogate \xED\xA0\x80!", "surrogate \xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD!"},
        {"overlong \xC0\xAF.", "overlong \xEF\xBF\xBD\xEF\xBF\xBD."},
        {"\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD"},
    };
    for (size_t t = 0; t < 4; t++) {
        moeq_tokenizer *tok = load_fixture(names[t]);
        CHECK(tok != NULL);
        for (size_t i = 0; tok && i < sizeof cases / sizeof cases[0]; i++) {
            char *got = ids_string(tok, cases[i].bad, strlen(cases[i].bad));
            char *want = ids_string(tok, cases[i].fixed, strlen(cases[i].fixed));
            CHECK_STR_EQ(got, want);
            free(got);
            free(want);
        }
        moeq_tokenizer_free(tok);
    }
}

static void test_random_bytes_encode_deterministically(void)
{
    moeq_tokenizer *tok = load_fixture("bytelevel");
    CHECK(tok != NULL);
    test_rng rng = {0xbadc0ffeeull};
    char text[512];
    for (int trial = 0; tok && trial < 300; trial++) {
        size_t len = test_rng_next(&rng) % sizeof text;
        for (size_t i = 0; i < len; i++)
            text[i] = (char)(test_rng_next(&rng) >> 24);
        char *a = ids_string(tok, text, len);
        char *b = ids_string(tok, text, len);
        CHECK(a != NULL);
        CHECK_STR_EQ(a, b);
        free(a);
        free(b);
    }
    moeq_tokenizer_free(tok);
}

static void test_embedded_nul_is_an_ordinary_character(void)
{
    moeq_tokenizer *tok = load_fixture("gpt2style");
    int32_t *ids = NULL;
    size_t n = 0;
    char *back = NULL;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_tokenizer_encode(tok, "a\0b", 3, 0, &ids, &n, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_tokenizer_decode(tok, ids, n, &back, &err), MOEQ_OK);
    CHECK(back && memcmp(back, "a\0b", 4) == 0);
    free(ids);
    free(back);
    moeq_tokenizer_free(tok);
}

static void test_long_whitespace_run_encodes(void)
{
    moeq_tokenizer *tok = load_fixture("bytelevel");
    size_t len = 200000;
    char *text = malloc(len);
    memset(text, ' ', len);
    memcpy(text + len / 2, "word\n\t", 6);
    int32_t *ids = NULL;
    size_t n = 0;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_tokenizer_encode(tok, text, len, 0, &ids, &n, &err), MOEQ_OK);
    CHECK(n > 0);
    free(ids);
    free(text);
    moeq_tokenizer_free(tok);
}

static void test_special_tokens_and_vocab_size_are_reported(void)
{
    moeq_tokenizer *tok = load_fixture("bytelevel");
    CHECK_INT_EQ(moeq_tokenizer_vocab_size(tok), 4096);
    CHECK_INT_EQ(moeq_tokenizer_token_id(tok, "<|endoftext|>"), 4093);
    CHECK_INT_EQ(moeq_tokenizer_token_id(tok, "<|im_end|>"), 4095);
    CHECK_INT_EQ(moeq_tokenizer_token_id(tok, "<|not_a_token|>"), -1);
    moeq_tokenizer_free(tok);
    tok = load_fixture("sentencepiece");
    CHECK_INT_EQ(moeq_tokenizer_vocab_size(tok), 2048);
    CHECK_INT_EQ(moeq_tokenizer_token_id(tok, "<s>"), 1);
    CHECK_INT_EQ(moeq_tokenizer_token_id(tok, "<0x41>"), 3 + 0x41);
    moeq_tokenizer_free(tok);
}

static void test_sentencepiece_decode_strips_the_prefix_space(void)
{
    static const char *names[] = {"sentencepiece", "metaspace"};
    for (int t = 0; t < 2; t++) {
        moeq_tokenizer *tok = load_fixture(names[t]);
        const char *text = "Hello world, \xE2\x9C\x93 done";
        int32_t *ids = NULL;
        size_t n = 0;
        char *back = NULL;
        moeq_error err = {0};
        CHECK_INT_EQ(moeq_tokenizer_encode(tok, text, strlen(text), 1, &ids, &n, &err), MOEQ_OK);
        CHECK_INT_EQ(ids[0], 1);
        CHECK_INT_EQ(moeq_tokenizer_decode(tok, ids + 1, n - 1, &back, &err), MOEQ_OK);
        CHECK_STR_EQ(back, text);
        free(ids);
        free(back);
        moeq_tokenizer_free(tok);
    }
}

/* Loads JSON text written to a temporary file; returns the code and err. */
static moeq_code load_text(const char *name, const char *json, moeq_error *err)
{
    /* Files go to test-tmp/ of the build tree (the working directory). */
    char path[256];
    mkdir("test-tmp", 0755);
    snprintf(path, sizeof path, "test-tmp/%s.tokenizer.json", name);
    test_write_file(path, json, strlen(json));
    moeq_tokenizer *tok = NULL;
    moeq_code rc = moeq_tokenizer_load(path, &tok, err);
    moeq_tokenizer_free(tok);
    return rc;
}

#define TINY_MODEL(extra) \
    "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, " \
    "\"merges\": [\"a b\"]}" extra "}"

static void test_tiny_handwritten_tokenizer_loads(void)
{
    moeq_error err = {0};
    CHECK_INT_EQ(load_text("tok_tiny", TINY_MODEL(""), &err), MOEQ_OK);
}

static void test_missing_file_is_not_found_with_path(void)
{
    moeq_tokenizer *tok = NULL;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_tokenizer_load("/nonexistent/tokenizer.json", &tok, &err),
                 MOEQ_ERR_NOT_FOUND);
    CHECK(tok == NULL);
    CHECK_CONTAINS(err.msg, "/nonexistent/tokenizer.json");
}

static void test_non_json_is_a_format_error(void)
{
    moeq_error err = {0};
    CHECK_INT_EQ(load_text("tok_nonjson", "{\"model\": [1, 2,", &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "not valid JSON");
    CHECK_CONTAINS(err.msg, "tok_nonjson.tokenizer.json");
}

static void test_wordpiece_and_unigram_models_are_unsupported_by_name(void)
{
    moeq_error err = {0};
    CHECK_INT_EQ(load_text("tok_wp", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", &err),
                 MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "model type \"WordPiece\"");
    CHECK_CONTAINS(err.msg, "tok_wp.tokenizer.json");
    CHECK_INT_EQ(load_text("tok_uni", "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", &err),
                 MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "model type \"Unigram\"");
}

static void test_unknown_component_types_are_unsupported_by_section(void)
{
    moeq_error err = {0};
    CHECK_INT_EQ(load_text("tok_norm", TINY_MODEL(", \"normalizer\": {\"type\": \"BertNormalizer\"}"), &err),
                 MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "normalizer type \"BertNormalizer\"");
    CHECK_INT_EQ(load_text("tok_pre", TINY_MODEL(", \"pre_tokenizer\": {\"type\": \"Sequence\", "
                                                 "\"pretokenizers\": [{\"type\": \"Punctuation\"}]}"),
                           &err),
                 MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "pre_tokenizer type \"Punctuation\"");
    CHECK_INT_EQ(load_text("tok_post", TINY_MODEL(", \"post_processor\": {\"type\": \"BertProcessing\"}"), &err),
                 MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "post_processor type \"BertProcessing\"");
    CHECK_INT_EQ(load_text("tok_dec", TINY_MODEL(", \"decoder\": {\"type\": \"CTC\"}"), &err),
                 MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "decoder type \"CTC\"");
}

/* Found by fuzz_tokenizer (tests/fuzz/regressions/tokenizer): one huge id
 * made the loader ask for gigabytes; sparse ids are now a format error. */
static void test_vocab_id_far_past_the_entries_is_a_format_error(void)
{
    moeq_error err = {0};
    CHECK_INT_EQ(load_text("tok_sparse",
                           "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": "
                           "577777777}, \"merges\": []}}",
                           &err),
                 MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "2 entries but ids up to 577777777");
    /* A few gaps, as some real vocabularies have, stay fine. */
    CHECK_INT_EQ(load_text("tok_gaps",
                           "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 7}, "
                           "\"merges\": []}}",
                           &err),
                 MOEQ_OK);
}

static void test_merge_of_unknown_token_is_a_format_error_naming_it(void)
{
    moeq_error err = {0};
    CHECK_INT_EQ(load_text("tok_merge",
                           "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"ab\": 1}, "
                           "\"merges\": [[\"a\", \"zz\"]]}}",
                           &err),
                 MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "model.merges[0]");
    CHECK_CONTAINS(err.msg, "\"zz\"");
    CHECK_INT_EQ(load_text("tok_merge2",
                           "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, "
                           "\"merges\": [\"a b\"]}}",
                           &err),
                 MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "token \"ab\"");
    CHECK_INT_EQ(load_text("tok_merge3",
                           "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                           "\"merges\": [\"a\"]}}",
                           &err),
                 MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "is not \"a b\"");
}

static void test_dropout_set_is_unsupported(void)
{
    moeq_error err = {0};
    CHECK_INT_EQ(load_text("tok_dropout",
                           "{\"model\": {\"type\": \"BPE\", \"dropout\": 0.1, "
                           "\"vocab\": {\"a\": 0}, \"merges\": []}}",
                           &err),
                 MOEQ_ERR_UNSUPPORTED);
    CHECK_CONTAINS(err.msg, "dropout");
}

int main(void)
{
    RUN(test_bytelevel_qwen_style_matches_hf_ids);
    RUN(test_gpt2style_with_string_merges_matches_hf_ids);
    RUN(test_sentencepiece_style_matches_hf_ids_with_and_without_bos);
    RUN(test_metaspace_style_matches_hf_ids_with_and_without_bos);
    RUN(test_bytelevel_decode_inverts_encode);
    RUN(test_gpt2style_round_trips_random_utf8);
    RUN(test_invalid_utf8_is_replaced_by_u_fffd_per_maximal_subpart);
    RUN(test_random_bytes_encode_deterministically);
    RUN(test_embedded_nul_is_an_ordinary_character);
    RUN(test_long_whitespace_run_encodes);
    RUN(test_special_tokens_and_vocab_size_are_reported);
    RUN(test_sentencepiece_decode_strips_the_prefix_space);
    RUN(test_tiny_handwritten_tokenizer_loads);
    RUN(test_missing_file_is_not_found_with_path);
    RUN(test_non_json_is_a_format_error);
    RUN(test_wordpiece_and_unigram_models_are_unsupported_by_name);
    RUN(test_unknown_component_types_are_unsupported_by_section);
    RUN(test_vocab_id_far_past_the_entries_is_a_format_error);
    RUN(test_merge_of_unknown_token_is_a_format_error_naming_it);
    RUN(test_dropout_set_is_unsupported);
    return test_summary();
}
