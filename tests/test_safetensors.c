/* test_safetensors.c: the safetensors reader, checkpoint directories and
 * writer (include/moeq/safetensors.h), against the format spec. */
#include "moeq/safetensors.h"
#include "test.h"

enum { PATH_BYTES = 4096 };

/* A fresh directory for one test, copied out of test_tmpdir's static buffer. */
static void fresh_dir(const char *name, char dir[PATH_BYTES])
{
    if (snprintf(dir, PATH_BYTES, "%s", test_tmpdir(name)) >= PATH_BYTES)
        exit(2);
}

static void join(char out[PATH_BYTES], const char *dir, const char *name)
{
    if (snprintf(out, PATH_BYTES, "%s/%s", dir, name) >= PATH_BYTES)
        exit(2);
}

/* A file written by hand: the 8-byte little-endian length of header, header
 * verbatim (no padding), then data_bytes bytes of 0xAB. */
static void write_raw(const char *path, const char *header, size_t data_bytes)
{
    size_t header_bytes = strlen(header), total = 8 + header_bytes + data_bytes;
    unsigned char *buf = malloc(total);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)header_bytes >> (8 * i));
    memcpy(buf + 8, header, header_bytes);
    memset(buf + 8 + header_bytes, 0xAB, data_bytes);
    test_write_file(path, buf, total);
    free(buf);
}

/* Opening a hand-written file fails with code, and the message names the
 * file and contains fragment (a tensor name, a field) when one is given. */
static void expect_rejected(const char *test, const char *header, size_t data_bytes,
                            moeq_code code, const char *fragment)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir(test, dir);
    join(path, dir, "bad.safetensors");
    write_raw(path, header, data_bytes);
    st_file f;
    moeq_error err = {0};
    CHECK_INT_EQ(st_file_open(&f, path, &err), code);
    CHECK_CONTAINS(err.msg, path);
    if (fragment)
        CHECK_CONTAINS(err.msg, fragment);
    CHECK(f.map == NULL && f.tensors == NULL);
    st_file_close(&f);
}

/* Writes one F32 tensor of shape [1] per name, holding value i + 1. */
static void write_shard(const char *path, size_t n, const char *const *names)
{
    static const float values[] = {1, 2, 3, 4, 5, 6, 7, 8};
    st_writer w;
    st_writer_init(&w);
    moeq_error err = {0};
    int64_t shape[1] = {1};
    for (size_t i = 0; i < n; i++)
        CHECK_INT_EQ(st_writer_add(&w, names[i], ST_F32, 1, shape, &values[i], 4, &err), MOEQ_OK);
    CHECK_INT_EQ(st_writer_write(&w, path, &err), MOEQ_OK);
    st_writer_free(&w);
}

static float f32_at(const st_tensor *t)
{
    float v;
    memcpy(&v, t->data, sizeof v);
    return v;
}

/* ---- round trips ---- */

static void test_round_trip_keeps_every_dtype_and_its_bytes(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_every_dtype", dir);
    join(path, dir, "all.safetensors");
    test_rng rng = {0x5DEECE66Dull};
    unsigned char bytes[ST_DTYPE_COUNT][6 * 8];
    char names[ST_DTYPE_COUNT][32];
    int64_t shape[2] = {2, 3};
    st_writer w;
    st_writer_init(&w);
    moeq_error err = {0};
    for (int d = 0; d < ST_DTYPE_COUNT; d++) {
        for (size_t i = 0; i < sizeof bytes[d]; i++)
            bytes[d][i] = (unsigned char)test_rng_next(&rng);
        snprintf(names[d], sizeof names[d], "t.%s", st_dtype_name((st_dtype)d));
        CHECK_INT_EQ(st_writer_add(&w, names[d], (st_dtype)d, 2, shape, bytes[d],
                                   6 * st_dtype_size((st_dtype)d), &err),
                     MOEQ_OK);
    }
    CHECK_INT_EQ(st_writer_write(&w, path, &err), MOEQ_OK);
    st_writer_free(&w);

    st_file f;
    CHECK_INT_EQ(st_file_open(&f, path, &err), MOEQ_OK);
    CHECK_INT_EQ(f.n_tensors, ST_DTYPE_COUNT);
    for (int d = 0; d < ST_DTYPE_COUNT; d++) {
        const st_tensor *t = st_file_find(&f, names[d]);
        CHECK(t != NULL);
        if (!t)
            continue;
        CHECK_INT_EQ(t->dtype, d);
        CHECK_INT_EQ(t->ndim, 2);
        CHECK_INT_EQ(t->shape[0], 2);
        CHECK_INT_EQ(t->shape[1], 3);
        CHECK_INT_EQ(t->nbytes, 6 * st_dtype_size((st_dtype)d));
        CHECK(memcmp(t->data, bytes[d], t->nbytes) == 0);
    }
    st_file_close(&f);
}

static void test_dtype_names_match_the_spec(void)
{
    static const struct {
        const char *name;
        st_dtype dtype;
        size_t bytes;
    } table[] = {
        {"BOOL", ST_BOOL, 1}, {"U8", ST_U8, 1},   {"I8", ST_I8, 1},
        {"U16", ST_U16, 2},   {"I16", ST_I16, 2}, {"F16", ST_F16, 2},
        {"BF16", ST_BF16, 2}, {"U32", ST_U32, 4}, {"I32", ST_I32, 4},
        {"F32", ST_F32, 4},   {"U64", ST_U64, 8}, {"I64", ST_I64, 8},
        {"F64", ST_F64, 8},   {"F8_E4M3", ST_F8_E4M3, 1}, {"F8_E5M2", ST_F8_E5M2, 1},
        {"F8_E8M0", ST_F8_E8M0, 1},
    };
    CHECK_INT_EQ(sizeof table / sizeof table[0], ST_DTYPE_COUNT);
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        st_dtype got = ST_DTYPE_COUNT;
        CHECK(st_dtype_from_name(table[i].name, &got));
        CHECK_INT_EQ(got, table[i].dtype);
        CHECK_STR_EQ(st_dtype_name(table[i].dtype), table[i].name);
        CHECK_INT_EQ(st_dtype_size(table[i].dtype), table[i].bytes);
    }
    st_dtype unused;
    CHECK(!st_dtype_from_name("bf16", &unused));
    CHECK(!st_dtype_from_name("F4", &unused));
}

static void test_round_trip_keeps_scalar_and_zero_size_shapes(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_shapes", dir);
    join(path, dir, "shapes.safetensors");
    float scalar = 3.25f;
    int64_t empty_2d[2] = {0, 5}, empty_3d[3] = {4, 0, 2};
    st_writer w;
    st_writer_init(&w);
    moeq_error err = {0};
    CHECK_INT_EQ(st_writer_add(&w, "scalar", ST_F32, 0, NULL, &scalar, 4, &err), MOEQ_OK);
    CHECK_INT_EQ(st_writer_add(&w, "empty_2d", ST_BF16, 2, empty_2d, NULL, 0, &err), MOEQ_OK);
    CHECK_INT_EQ(st_writer_add(&w, "empty_3d", ST_I64, 3, empty_3d, NULL, 0, &err), MOEQ_OK);
    CHECK_INT_EQ(st_writer_write(&w, path, &err), MOEQ_OK);
    st_writer_free(&w);

    st_file f;
    CHECK_INT_EQ(st_file_open(&f, path, &err), MOEQ_OK);
    const st_tensor *s = st_file_find(&f, "scalar");
    const st_tensor *e2 = st_file_find(&f, "empty_2d");
    const st_tensor *e3 = st_file_find(&f, "empty_3d");
    CHECK(s && e2 && e3);
    if (s && e2 && e3) {
        CHECK_INT_EQ(s->ndim, 0);
        CHECK_INT_EQ(s->nbytes, 4);
        CHECK(f32_at(s) == 3.25f);
        CHECK_INT_EQ(e2->ndim, 2);
        CHECK_INT_EQ(e2->shape[0], 0);
        CHECK_INT_EQ(e2->shape[1], 5);
        CHECK_INT_EQ(e2->nbytes, 0);
        CHECK_INT_EQ(e3->ndim, 3);
        CHECK_INT_EQ(e3->shape[2], 2);
        CHECK_INT_EQ(e3->nbytes, 0);
    }
    CHECK_INT_EQ(f.data_bytes, 4);
    st_file_close(&f);
}

static void test_round_trip_keeps_metadata_strings(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_metadata", dir);
    join(path, dir, "meta.safetensors");
    const char *odd = "quote \" backslash \\ newline \n tab \t caf\xc3\xa9";
    st_writer w;
    st_writer_init(&w);
    moeq_error err = {0};
    CHECK_INT_EQ(st_writer_set_metadata(&w, "format", "np", &err), MOEQ_OK);
    CHECK_INT_EQ(st_writer_set_metadata(&w, "note", odd, &err), MOEQ_OK);
    CHECK_INT_EQ(st_writer_set_metadata(&w, "format", "pt", &err), MOEQ_OK);
    CHECK_INT_EQ(st_writer_write(&w, path, &err), MOEQ_OK);
    st_writer_free(&w);

    st_file f;
    CHECK_INT_EQ(st_file_open(&f, path, &err), MOEQ_OK);
    CHECK_INT_EQ(f.n_metadata, 2);
    CHECK_STR_EQ(st_file_metadata(&f, "format"), "pt");
    CHECK_STR_EQ(st_file_metadata(&f, "note"), odd);
    CHECK(st_file_metadata(&f, "absent") == NULL);
    CHECK_INT_EQ(f.n_tensors, 0);
    st_file_close(&f);
}

static void test_writer_writes_spec_header_padded_with_spaces(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_header_bytes", dir);
    join(path, dir, "one.safetensors");
    uint16_t data[2] = {0x3F80, 0xC000};
    int64_t shape[1] = {2};
    st_writer w;
    st_writer_init(&w);
    moeq_error err = {0};
    CHECK_INT_EQ(st_writer_add(&w, "w", ST_BF16, 1, shape, data, 4, &err), MOEQ_OK);
    CHECK_INT_EQ(st_writer_write(&w, path, &err), MOEQ_OK);
    st_writer_free(&w);

    const char *json = "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}";
    size_t padded = (strlen(json) + 7) / 8 * 8;
    unsigned char buf[256] = {0};
    FILE *fp = fopen(path, "rb");
    size_t got = fp ? fread(buf, 1, sizeof buf, fp) : 0;
    if (fp)
        fclose(fp);
    CHECK_INT_EQ(got, 8 + padded + 4);
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; i--)
        header_bytes = header_bytes << 8 | buf[i];
    CHECK_INT_EQ(header_bytes, padded);
    CHECK(memcmp(buf + 8, json, strlen(json)) == 0);
    for (size_t i = strlen(json); i < padded; i++)
        CHECK_INT_EQ(buf[8 + i], ' ');
    CHECK(memcmp(buf + 8 + padded, data, 4) == 0);
}

static void test_reader_accepts_unpadded_file_and_sorts_tensors_by_name(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_hand_written", dir);
    join(path, dir, "hand.safetensors");
    /* Header length 97 leaves the data unaligned; "b" comes first in the
     * header and second in the buffer's name order. */
    const char *header = "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    size_t header_bytes = strlen(header);
    unsigned char buf[512];
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)header_bytes >> (8 * i));
    memcpy(buf + 8, header, header_bytes);
    float values[2] = {1.5f, -7.0f};
    memcpy(buf + 8 + header_bytes, values, sizeof values);
    test_write_file(path, buf, 8 + header_bytes + sizeof values);

    st_file f;
    moeq_error err = {0};
    CHECK_INT_EQ(st_file_open(&f, path, &err), MOEQ_OK);
    CHECK_INT_EQ(f.n_tensors, 2);
    CHECK_STR_EQ(f.tensors[0].name, "a");
    CHECK_STR_EQ(f.tensors[1].name, "b");
    CHECK(f32_at(st_file_find(&f, "a")) == 1.5f);
    CHECK(f32_at(st_file_find(&f, "b")) == -7.0f);
    CHECK(st_file_find(&f, "c") == NULL);
    CHECK(st_file_find(&f, "") == NULL);
    st_file_close(&f);
}

static void test_tensor_points_back_to_its_file(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_back_pointer", dir);
    join(path, dir, "x.safetensors");
    const char *names[] = {"x"};
    write_shard(path, 1, names);
    st_file f;
    moeq_error err = {0};
    CHECK_INT_EQ(st_file_open(&f, path, &err), MOEQ_OK);
    const st_tensor *t = st_file_find(&f, "x");
    CHECK(t && t->file == &f);
    CHECK_STR_EQ(t ? t->file->path : NULL, path);
    st_file_close(&f);
}

static void test_empty_header_with_no_data_is_a_valid_file(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_empty", dir);
    join(path, dir, "empty.safetensors");
    write_raw(path, "{}", 0);
    st_file f;
    moeq_error err = {0};
    CHECK_INT_EQ(st_file_open(&f, path, &err), MOEQ_OK);
    CHECK_INT_EQ(f.n_tensors, 0);
    st_file_close(&f);
}

static void test_writer_rejects_duplicate_name(void)
{
    float v = 1;
    int64_t shape[1] = {1};
    st_writer w;
    st_writer_init(&w);
    moeq_error err = {0};
    CHECK_INT_EQ(st_writer_add(&w, "dup", ST_F32, 1, shape, &v, 4, &err), MOEQ_OK);
    CHECK_INT_EQ(st_writer_add(&w, "dup", ST_F32, 1, shape, &v, 4, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "\"dup\"");
    CHECK_INT_EQ(w.n_entries, 1);
    st_writer_free(&w);
}

static void test_writer_finds_duplicates_among_many_names(void)
{
    st_writer w;
    st_writer_init(&w);
    moeq_error err = {0};
    int64_t shape[1] = {0};
    char name[32];
    int failures = 0;
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "layers.%d.weight", i);
        failures += st_writer_add(&w, name, ST_F32, 1, shape, NULL, 0, &err) != MOEQ_OK;
    }
    CHECK_INT_EQ(failures, 0);
    CHECK_INT_EQ(st_writer_add(&w, "layers.517.weight", ST_F32, 1, shape, NULL, 0, &err),
                 MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "layers.517.weight");
    st_writer_free(&w);
}

static void test_writer_rejects_nbytes_not_matching_shape(void)
{
    float v[4] = {0};
    int64_t shape[2] = {2, 2};
    st_writer w;
    st_writer_init(&w);
    moeq_error err = {0};
    CHECK_INT_EQ(st_writer_add(&w, "w", ST_F32, 2, shape, v, 8, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "\"w\"");
    CHECK_CONTAINS(err.msg, "nbytes 8");
    int64_t negative[1] = {-1};
    CHECK_INT_EQ(st_writer_add(&w, "n", ST_F32, 1, negative, v, 0, &err), MOEQ_ERR_INVALID_ARG);
    CHECK_CONTAINS(err.msg, "\"n\"");
    CHECK_INT_EQ(w.n_entries, 0);
    st_writer_free(&w);
}

/* ---- bad files ---- */

static void test_rejects_missing_file_as_not_found(void)
{
    st_file f;
    moeq_error err = {0};
    CHECK_INT_EQ(st_file_open(&f, "test-tmp/does-not-exist.safetensors", &err),
                 MOEQ_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.msg, "test-tmp/does-not-exist.safetensors");
}

static void test_rejects_file_shorter_than_8_bytes(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_short", dir);
    join(path, dir, "short.safetensors");
    test_write_file(path, "\x02\0\0\0\0", 5);
    st_file f;
    moeq_error err = {0};
    CHECK_INT_EQ(st_file_open(&f, path, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, path);
    CHECK_CONTAINS(err.msg, "5 bytes");
}

static void test_rejects_header_length_beyond_the_file(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_long_header", dir);
    join(path, dir, "long.safetensors");
    unsigned char buf[8 + 2] = {0xE8, 0x03, 0, 0, 0, 0, 0, 0, '{', '}'}; /* says 1000 */
    test_write_file(path, buf, sizeof buf);
    st_file f;
    moeq_error err = {0};
    CHECK_INT_EQ(st_file_open(&f, path, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, path);
    CHECK_CONTAINS(err.msg, "header length 1000");
}

static void test_rejects_truncated_data_naming_the_cut_tensor(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_truncated", dir);
    join(path, dir, "cut.safetensors");
    const char *names[] = {"first", "second"};
    write_shard(path, 2, names);
    /* Drop the last 2 bytes of the second tensor. */
    unsigned char buf[4096];
    FILE *fp = fopen(path, "rb");
    size_t n = fp ? fread(buf, 1, sizeof buf, fp) : 0;
    if (fp)
        fclose(fp);
    CHECK(n > 2);
    test_write_file(path, buf, n - 2);
    st_file f;
    moeq_error err = {0};
    CHECK_INT_EQ(st_file_open(&f, path, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, path);
    CHECK_CONTAINS(err.msg, "\"second\"");
    CHECK_CONTAINS(err.msg, "data_offsets");
}

static void test_rejects_non_json_header(void)
{
    expect_rejected("st_non_json", "{\"a\": nope}", 0, MOEQ_ERR_FORMAT, "not valid JSON");
}

static void test_rejects_header_that_is_not_an_object(void)
{
    expect_rejected("st_not_object", "[1, 2]", 0, MOEQ_ERR_FORMAT, "not a JSON object");
}

static void test_rejects_bytes_after_the_header_json(void)
{
    expect_rejected("st_trailing", "{} x", 0, MOEQ_ERR_FORMAT, "after the JSON");
}

static void test_rejects_unknown_dtype(void)
{
    expect_rejected("st_unknown_dtype",
                    "{\"w\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                    MOEQ_ERR_FORMAT, "tensor \"w\" has unknown dtype \"F33\"");
}

static void test_rejects_entry_without_dtype(void)
{
    expect_rejected("st_no_dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                    MOEQ_ERR_FORMAT, "tensor \"w\" has no string \"dtype\"");
}

static void test_rejects_shape_size_not_matching_data_range(void)
{
    expect_rejected("st_size_mismatch",
                    "{\"w\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                    MOEQ_ERR_FORMAT, "tensor \"w\" \"shape\" x BF16 needs 6 bytes");
}

static void test_rejects_negative_shape_entry(void)
{
    expect_rejected("st_negative_dim",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[2,-1],\"data_offsets\":[0,0]}}", 0,
                    MOEQ_ERR_FORMAT, "tensor \"w\" \"shape\"[1] is not a non-negative integer");
}

static void test_rejects_fractional_shape_entry(void)
{
    expect_rejected("st_fractional_dim",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 1,
                    MOEQ_ERR_FORMAT, "tensor \"w\" \"shape\"[0] is not a non-negative integer");
}

static void test_rejects_string_shape_entry(void)
{
    expect_rejected("st_string_dim",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[\"4\"],\"data_offsets\":[0,4]}}", 4,
                    MOEQ_ERR_FORMAT, "tensor \"w\" \"shape\"[0] is not a non-negative integer");
}

static void test_rejects_more_than_8_dimensions(void)
{
    expect_rejected("st_nine_dims",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                    "\"data_offsets\":[0,1]}}",
                    1, MOEQ_ERR_FORMAT, "tensor \"w\" \"shape\" has 9 dimensions");
}

static void test_rejects_shape_whose_byte_size_overflows(void)
{
    expect_rejected("st_overflow",
                    "{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],"
                    "\"data_offsets\":[0,0]}}",
                    0, MOEQ_ERR_FORMAT, "tensor \"w\" \"shape\" byte size overflows");
}

static void test_rejects_malformed_data_offsets(void)
{
    expect_rejected("st_offsets_shape",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0]}}", 4,
                    MOEQ_ERR_FORMAT, "tensor \"w\" \"data_offsets\" is not [begin, end]");
}

static void test_rejects_data_offsets_past_the_data(void)
{
    expect_rejected("st_offsets_past",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 4,
                    MOEQ_ERR_FORMAT, "tensor \"w\" \"data_offsets\" end 8 is past the 4-byte");
}

static void test_rejects_data_offsets_begin_after_end(void)
{
    expect_rejected("st_offsets_reversed",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
                    MOEQ_ERR_FORMAT, "tensor \"w\" \"data_offsets\" begin 4 > end 0");
}

static void test_rejects_overlapping_ranges(void)
{
    expect_rejected("st_overlap",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
                    6, MOEQ_ERR_FORMAT, "tensor \"b\" data_offsets [2, 6] overlap tensor \"a\"");
}

static void test_rejects_hole_between_ranges(void)
{
    expect_rejected("st_hole",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[6,8]}}",
                    8, MOEQ_ERR_FORMAT, "bytes [4, 6) before tensor \"b\" belong to no tensor");
}

static void test_rejects_unindexed_bytes_after_the_last_tensor(void)
{
    expect_rejected("st_tail",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 6,
                    MOEQ_ERR_FORMAT, "bytes [4, 6) at the end of the data buffer");
}

static void test_rejects_duplicate_tensor_names(void)
{
    expect_rejected("st_duplicate",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                    "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}",
                    4, MOEQ_ERR_FORMAT, "tensor \"a\" appears more than once");
}

static void test_rejects_metadata_that_is_not_an_object(void)
{
    expect_rejected("st_metadata_array", "{\"__metadata__\":[\"pt\"]}", 0, MOEQ_ERR_FORMAT,
                    "\"__metadata__\" is not an object");
}

static void test_rejects_metadata_with_non_string_value(void)
{
    expect_rejected("st_metadata_number", "{\"__metadata__\":{\"format\":\"pt\",\"n\":3}}", 0,
                    MOEQ_ERR_FORMAT, "value for key \"n\" is not a string");
}

/* ---- checkpoint directories ---- */

/* Two shards and an index mapping a, b to shard 1 and c to shard 2. */
static void write_two_shard_checkpoint(const char *dir, const char *index_json)
{
    char path[PATH_BYTES];
    const char *first[] = {"b", "a"}, *second[] = {"c"};
    join(path, dir, "model-00001-of-00002.safetensors");
    write_shard(path, 2, first);
    join(path, dir, "model-00002-of-00002.safetensors");
    write_shard(path, 1, second);
    join(path, dir, "model.safetensors.index.json");
    test_write_file(path, index_json, strlen(index_json));
}

static const char *const good_index =
    "{\"metadata\":{\"total_size\":12},\"weight_map\":{"
    "\"a\":\"model-00001-of-00002.safetensors\","
    "\"b\":\"model-00001-of-00002.safetensors\","
    "\"c\":\"model-00002-of-00002.safetensors\"}}";

static void test_checkpoint_index_finds_tensors_across_two_shards(void)
{
    char dir[PATH_BYTES];
    fresh_dir("st_ckpt_index", dir);
    write_two_shard_checkpoint(dir, good_index);
    /* A stray file beside an index is not part of the checkpoint. */
    char stray[PATH_BYTES];
    join(stray, dir, "stray.safetensors");
    const char *names[] = {"z"};
    write_shard(stray, 1, names);

    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_OK);
    CHECK_INT_EQ(c.n_files, 2);
    CHECK_INT_EQ(c.n_tensors, 3);
    const st_tensor *b = st_checkpoint_find(&c, "b"), *cc = st_checkpoint_find(&c, "c");
    CHECK(b && cc);
    if (b && cc) {
        CHECK(f32_at(b) == 1.0f); /* b was written first in its shard */
        CHECK(f32_at(cc) == 1.0f);
        CHECK_CONTAINS(b->file->path, "model-00001-of-00002.safetensors");
        CHECK_CONTAINS(cc->file->path, "model-00002-of-00002.safetensors");
    }
    CHECK(st_checkpoint_find(&c, "z") == NULL);
    st_checkpoint_close(&c);
}

static void test_checkpoint_lists_tensors_in_name_order(void)
{
    char dir[PATH_BYTES];
    fresh_dir("st_ckpt_order", dir);
    write_two_shard_checkpoint(dir, good_index);
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_OK);
    CHECK_INT_EQ(c.n_tensors, 3);
    if (c.n_tensors == 3) {
        CHECK_STR_EQ(c.tensors[0]->name, "a");
        CHECK_STR_EQ(c.tensors[1]->name, "b");
        CHECK_STR_EQ(c.tensors[2]->name, "c");
    }
    st_checkpoint_close(&c);
}

static void test_checkpoint_prefers_model_safetensors_without_index(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_ckpt_single", dir);
    const char *model[] = {"w"}, *other[] = {"golden"};
    join(path, dir, "model.safetensors");
    write_shard(path, 1, model);
    join(path, dir, "golden.safetensors");
    write_shard(path, 1, other);
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_OK);
    CHECK_INT_EQ(c.n_files, 1);
    CHECK(st_checkpoint_find(&c, "w") != NULL);
    CHECK(st_checkpoint_find(&c, "golden") == NULL);
    st_checkpoint_close(&c);
}

static void test_checkpoint_opens_every_safetensors_file_in_sorted_order(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_ckpt_glob", dir);
    const char *b[] = {"from_b"}, *a[] = {"from_a"};
    join(path, dir, "b.safetensors");
    write_shard(path, 1, b);
    join(path, dir, "a.safetensors");
    write_shard(path, 1, a);
    join(path, dir, "notes.txt");
    test_write_file(path, "x", 1);
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_OK);
    CHECK_INT_EQ(c.n_files, 2);
    if (c.n_files == 2) {
        CHECK_CONTAINS(c.files[0].path, "/a.safetensors");
        CHECK_CONTAINS(c.files[1].path, "/b.safetensors");
    }
    CHECK(st_checkpoint_find(&c, "from_a") && st_checkpoint_find(&c, "from_b"));
    st_checkpoint_close(&c);
}

static void test_checkpoint_opens_the_qwen3_moe_fixture(void)
{
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, MOEQ_SOURCE_DIR "/tests/fixtures/golden/qwen3_moe", &err),
                 MOEQ_OK);
    CHECK_INT_EQ(c.n_files, 4);
    const st_tensor *t = st_checkpoint_find(&c, "lm_head.weight");
    CHECK(t != NULL);
    if (t) {
        CHECK_INT_EQ(t->dtype, ST_BF16);
        CHECK_INT_EQ(t->ndim, 2);
        CHECK_INT_EQ(t->shape[0], 160);
        CHECK_INT_EQ(t->shape[1], 64);
    }
    st_checkpoint_close(&c);
}

static void test_checkpoint_rejects_directory_without_safetensors(void)
{
    char dir[PATH_BYTES];
    fresh_dir("st_ckpt_empty", dir);
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.msg, dir);
}

static void test_checkpoint_rejects_index_pointing_to_a_missing_shard(void)
{
    char dir[PATH_BYTES], index[PATH_BYTES];
    fresh_dir("st_ckpt_missing_shard", dir);
    write_two_shard_checkpoint(dir, "{\"weight_map\":{"
                                    "\"a\":\"model-00001-of-00002.safetensors\","
                                    "\"d\":\"model-00003-of-00002.safetensors\"}}");
    join(index, dir, "model.safetensors.index.json");
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.msg, index);
    CHECK_CONTAINS(err.msg, "tensor \"d\"");
    CHECK_CONTAINS(err.msg, "model-00003-of-00002.safetensors");
    CHECK(c.files == NULL && c.tensors == NULL);
}

static void test_checkpoint_rejects_index_tensor_absent_from_its_shard(void)
{
    char dir[PATH_BYTES], index[PATH_BYTES];
    fresh_dir("st_ckpt_absent", dir);
    write_two_shard_checkpoint(dir, "{\"weight_map\":{"
                                    "\"a\":\"model-00001-of-00002.safetensors\","
                                    "\"c\":\"model-00001-of-00002.safetensors\"}}");
    join(index, dir, "model.safetensors.index.json");
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, index);
    CHECK_CONTAINS(err.msg, "tensor \"c\" is not in its shard");
    CHECK_CONTAINS(err.msg, "model-00001-of-00002.safetensors");
}

static void test_checkpoint_rejects_shard_name_leaving_the_directory(void)
{
    char dir[PATH_BYTES], index[PATH_BYTES];
    fresh_dir("st_ckpt_dotdot", dir);
    write_two_shard_checkpoint(dir, "{\"weight_map\":{\"a\":\"../model.safetensors\"}}");
    join(index, dir, "model.safetensors.index.json");
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, index);
    CHECK_CONTAINS(err.msg, "tensor \"a\"");
    CHECK_CONTAINS(err.msg, "\"../model.safetensors\", not a plain file name");

    write_two_shard_checkpoint(dir, "{\"weight_map\":{\"a\":\"..\"}}");
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "\"..\", not a plain file name");
}

static void test_checkpoint_rejects_index_without_weight_map(void)
{
    char dir[PATH_BYTES], index[PATH_BYTES];
    fresh_dir("st_ckpt_no_map", dir);
    write_two_shard_checkpoint(dir, "{\"metadata\":{}}");
    join(index, dir, "model.safetensors.index.json");
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, index);
    CHECK_CONTAINS(err.msg, "\"weight_map\"");
}

static void test_checkpoint_rejects_tensor_present_in_two_shards(void)
{
    char dir[PATH_BYTES], a[PATH_BYTES], b[PATH_BYTES];
    fresh_dir("st_ckpt_twice", dir);
    const char *names[] = {"shared.weight"};
    join(a, dir, "a.safetensors");
    write_shard(a, 1, names);
    join(b, dir, "b.safetensors");
    write_shard(b, 1, names);
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "tensor \"shared.weight\" is in two shards");
    CHECK_CONTAINS(err.msg, a);
    CHECK_CONTAINS(err.msg, b);
}

static void test_checkpoint_rejects_tensor_in_two_shards_despite_index(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_ckpt_twice_index", dir);
    write_two_shard_checkpoint(dir, good_index);
    /* Shard 2 now also holds "a", which the index maps to shard 1. */
    const char *second[] = {"c", "a"};
    join(path, dir, "model-00002-of-00002.safetensors");
    write_shard(path, 2, second);
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "tensor \"a\" is in two shards");
    CHECK_CONTAINS(err.msg, "model-00001-of-00002.safetensors");
    CHECK_CONTAINS(err.msg, "model-00002-of-00002.safetensors");
}

static void test_checkpoint_reports_a_corrupt_shard_by_path(void)
{
    char dir[PATH_BYTES], path[PATH_BYTES];
    fresh_dir("st_ckpt_corrupt", dir);
    join(path, dir, "model.safetensors");
    write_raw(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4);
    st_checkpoint c;
    moeq_error err = {0};
    CHECK_INT_EQ(st_checkpoint_open(&c, dir, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, path);
    CHECK_CONTAINS(err.msg, "tensor \"w\"");
}

int main(void)
{
    RUN(test_dtype_names_match_the_spec);
    RUN(test_round_trip_keeps_every_dtype_and_its_bytes);
    RUN(test_round_trip_keeps_scalar_and_zero_size_shapes);
    RUN(test_round_trip_keeps_metadata_strings);
    RUN(test_writer_writes_spec_header_padded_with_spaces);
    RUN(test_reader_accepts_unpadded_file_and_sorts_tensors_by_name);
    RUN(test_tensor_points_back_to_its_file);
    RUN(test_empty_header_with_no_data_is_a_valid_file);
    RUN(test_writer_rejects_duplicate_name);
    RUN(test_writer_finds_duplicates_among_many_names);
    RUN(test_writer_rejects_nbytes_not_matching_shape);

    RUN(test_rejects_missing_file_as_not_found);
    RUN(test_rejects_file_shorter_than_8_bytes);
    RUN(test_rejects_header_length_beyond_the_file);
    RUN(test_rejects_truncated_data_naming_the_cut_tensor);
    RUN(test_rejects_non_json_header);
    RUN(test_rejects_header_that_is_not_an_object);
    RUN(test_rejects_bytes_after_the_header_json);
    RUN(test_rejects_unknown_dtype);
    RUN(test_rejects_entry_without_dtype);
    RUN(test_rejects_shape_size_not_matching_data_range);
    RUN(test_rejects_negative_shape_entry);
    RUN(test_rejects_fractional_shape_entry);
    RUN(test_rejects_string_shape_entry);
    RUN(test_rejects_more_than_8_dimensions);
    RUN(test_rejects_shape_whose_byte_size_overflows);
    RUN(test_rejects_malformed_data_offsets);
    RUN(test_rejects_data_offsets_past_the_data);
    RUN(test_rejects_data_offsets_begin_after_end);
    RUN(test_rejects_overlapping_ranges);
    RUN(test_rejects_hole_between_ranges);
    RUN(test_rejects_unindexed_bytes_after_the_last_tensor);
    RUN(test_rejects_duplicate_tensor_names);
    RUN(test_rejects_metadata_that_is_not_an_object);
    RUN(test_rejects_metadata_with_non_string_value);

    RUN(test_checkpoint_index_finds_tensors_across_two_shards);
    RUN(test_checkpoint_lists_tensors_in_name_order);
    RUN(test_checkpoint_prefers_model_safetensors_without_index);
    RUN(test_checkpoint_opens_every_safetensors_file_in_sorted_order);
    RUN(test_checkpoint_opens_the_qwen3_moe_fixture);
    RUN(test_checkpoint_rejects_directory_without_safetensors);
    RUN(test_checkpoint_rejects_index_pointing_to_a_missing_shard);
    RUN(test_checkpoint_rejects_index_tensor_absent_from_its_shard);
    RUN(test_checkpoint_rejects_shard_name_leaving_the_directory);
    RUN(test_checkpoint_rejects_index_without_weight_map);
    RUN(test_checkpoint_rejects_tensor_present_in_two_shards);
    RUN(test_checkpoint_rejects_tensor_in_two_shards_despite_index);
    RUN(test_checkpoint_reports_a_corrupt_shard_by_path);
    return test_summary();
}
