/* test_documents.c: reading users' text: plain text, JSONL "text", JSONL
 * chat "messages", directories, the language filter, token files, and the
 * errors for malformed input (file and line named). */
#include "test.h"

#include "calib/documents.h"
#include "calib/token_stream.h"

static const char *write_tmp(const char *dir, const char *name, const char *text)
{
    static char path[2048];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    test_write_file(path, text, strlen(text));
    return path;
}

static void test_plain_text_file_is_one_document(void)
{
    const char *dir = test_tmpdir("docs_plain");
    const char *p = write_tmp(dir, "a.txt", "line one\n\nline two\n");
    moeq_documents d = {0};
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_documents_load(p, NULL, &d, &err), MOEQ_OK);
    CHECK_INT_EQ(d.count, 1);
    CHECK_STR_EQ(d.docs[0].text, "line one\n\nline two\n");
    CHECK_INT_EQ(d.docs[0].bytes, 19);
    moeq_documents_free(&d);
}

static void test_jsonl_text_and_messages_with_lang_filter(void)
{
    const char *dir = test_tmpdir("docs_jsonl");
    const char *p = write_tmp(
        dir, "a.jsonl",
        "{\"text\": \"bonjour\", \"lang\": \"fr\", \"domain\": \"prose\"}\n"
        "\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"},"
        " {\"role\": \"assistant\", \"content\": \"hello\"}], \"lang\": \"en\"}\n"
        "{\"text\": \"hallo\", \"lang\": \"de\"}\n");
    moeq_documents d = {0};
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_documents_load(p, NULL, &d, &err), MOEQ_OK);
    CHECK_INT_EQ(d.count, 3);
    CHECK_STR_EQ(d.docs[0].text, "bonjour");
    CHECK_STR_EQ(d.docs[0].lang, "fr");
    CHECK_STR_EQ(d.docs[0].domain, "prose");
    CHECK_STR_EQ(d.docs[1].text, "user: hi\nassistant: hello\n");
    moeq_documents_free(&d);
    CHECK_INT_EQ(moeq_documents_load(p, "de", &d, &err), MOEQ_OK);
    CHECK_INT_EQ(d.count, 1);
    CHECK_STR_EQ(d.docs[0].text, "hallo");
    moeq_documents_free(&d);
    CHECK_INT_EQ(moeq_documents_load(p, "fr,de", &d, &err), MOEQ_OK);
    CHECK_INT_EQ(d.count, 2);
    moeq_documents_free(&d);
    CHECK_INT_EQ(moeq_documents_load(p, "d,e", &d, &err), MOEQ_OK); /* whole codes only */
    CHECK_INT_EQ(d.count, 0);
    moeq_documents_free(&d);
}

static void test_tool_use_transcripts_keep_tools_and_calls(void)
{
    const char *dir = test_tmpdir("docs_tools");
    const char *p = write_tmp(
        dir, "t.jsonl",
        "{\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"clock\"}}],"
        " \"messages\": [{\"role\": \"user\", \"content\": \"time?\"},"
        " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"c1\","
        " \"function\": {\"name\": \"clock\", \"arguments\": {\"tz\": \"UTC\"}}}]},"
        " {\"role\": \"tool\", \"content\": \"{\\\"t\\\": 5}\"},"
        " {\"role\": \"assistant\", \"content\": \"5 o'clock\"}]}\n");
    moeq_documents d = {0};
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_documents_load(p, NULL, &d, &err), MOEQ_OK);
    CHECK_INT_EQ(d.count, 1);
    if (d.count == 1)
        CHECK_STR_EQ(d.docs[0].text,
                     "tools: [{\"type\":\"function\",\"function\":{\"name\":\"clock\"}}]\n"
                     "user: time?\n"
                     "assistant:\ncall: {\"name\":\"clock\",\"arguments\":{\"tz\":\"UTC\"}}\n"
                     "tool: {\"t\": 5}\n"
                     "assistant: 5 o'clock\n");
    moeq_documents_free(&d);
}

static void test_directory_reads_txt_and_jsonl_in_name_order(void)
{
    const char *dir = test_tmpdir("docs_dir");
    write_tmp(dir, "b.txt", "second");
    write_tmp(dir, "a.jsonl", "{\"text\": \"first\"}\n");
    write_tmp(dir, "c.md", "ignored");
    moeq_documents d = {0};
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_documents_load(dir, NULL, &d, &err), MOEQ_OK);
    CHECK_INT_EQ(d.count, 2);
    if (d.count == 2) {
        CHECK_STR_EQ(d.docs[0].text, "first");
        CHECK_STR_EQ(d.docs[1].text, "second");
    }
    moeq_documents_free(&d);
}

static void expect_jsonl_error(const char *text, const char *fragment)
{
    const char *dir = test_tmpdir("docs_bad");
    const char *p = write_tmp(dir, "bad.jsonl", text);
    moeq_documents d = {0};
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_documents_load(p, NULL, &d, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "bad.jsonl");
    CHECK_CONTAINS(err.msg, fragment);
    moeq_documents_free(&d);
}

static void test_malformed_jsonl_names_file_and_line(void)
{
    expect_jsonl_error("{\"text\": \"ok\"}\n{\"text\": \n", "bad.jsonl:2: not a JSON object");
    expect_jsonl_error("{\"title\": \"no text\"}\n", ":1: needs a string \"text\"");
    expect_jsonl_error("{\"messages\": [{\"role\": \"user\"}]}\n", ":1: each of \"messages\"");
    expect_jsonl_error("{\"messages\": [{\"role\": \"user\", \"content\": 3}]}\n",
                       ":1: each of \"messages\"");
}

static void test_missing_input_and_empty_directory_are_errors(void)
{
    moeq_documents d = {0};
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_documents_load("test-tmp/no-such-file.txt", NULL, &d, &err),
                 MOEQ_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.msg, "no-such-file.txt");
    const char *dir = test_tmpdir("docs_empty");
    CHECK_INT_EQ(moeq_documents_load(dir, NULL, &d, &err), MOEQ_ERR_NOT_FOUND);
    CHECK_CONTAINS(err.msg, "no *.txt or *.jsonl files");
}

static void test_token_file_is_little_endian_int32(void)
{
    const char *dir = test_tmpdir("docs_tokens");
    const unsigned char bytes[] = {1, 0, 0, 0, 0x10, 0x27, 0, 0, 0xff, 0xff, 0xff, 0x7f};
    char path[2048];
    snprintf(path, sizeof path, "%s/t.bin", dir);
    test_write_file(path, bytes, sizeof bytes);
    int32_t *ids;
    size_t n;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_read_token_file(path, &ids, &n, &err), MOEQ_OK);
    CHECK_INT_EQ(n, 3);
    CHECK_INT_EQ(ids[0], 1);
    CHECK_INT_EQ(ids[1], 10000);
    CHECK_INT_EQ(ids[2], 2147483647);
    free(ids);
    test_write_file(path, bytes, 7);
    CHECK_INT_EQ(moeq_read_token_file(path, &ids, &n, &err), MOEQ_ERR_FORMAT);
    CHECK_CONTAINS(err.msg, "7 bytes is not a whole number of int32");
}

static void test_documents_are_tokenized_apart_and_separated_by_end_of_text(void)
{
    char tok_path[4096];
    snprintf(tok_path, sizeof tok_path, "%s/tests/fixtures/tok/bytelevel/tokenizer.json",
             MOEQ_SOURCE_DIR);
    moeq_tokenizer *tok;
    moeq_error err = {0};
    CHECK_INT_EQ(moeq_tokenizer_load(tok_path, &tok, &err), MOEQ_OK);
    int32_t sep = moeq_document_separator(tok);
    CHECK(sep >= 0);
    CHECK_INT_EQ(sep, moeq_tokenizer_token_id(tok, "<|endoftext|>"));
    moeq_document docs[2] = {{"Hello world", 11, NULL, NULL}, {"Bonjour", 7, NULL, NULL}};
    moeq_documents d = {docs, 2, 2};
    int32_t *ids, *a, *b;
    size_t n, na, nb;
    CHECK_INT_EQ(moeq_tokenize_documents(tok, &d, &ids, &n, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_tokenizer_encode(tok, "Hello world", 11, 0, &a, &na, &err), MOEQ_OK);
    CHECK_INT_EQ(moeq_tokenizer_encode(tok, "Bonjour", 7, 0, &b, &nb, &err), MOEQ_OK);
    CHECK_INT_EQ(n, na + nb + 2);
    if (n == na + nb + 2) {
        CHECK(memcmp(ids, a, na * sizeof *a) == 0);
        CHECK_INT_EQ(ids[na], sep);
        CHECK(memcmp(ids + na + 1, b, nb * sizeof *b) == 0);
        CHECK_INT_EQ(ids[n - 1], sep);
    }
    free(ids);
    free(a);
    free(b);
    moeq_tokenizer_free(tok);
}

int main(void)
{
    RUN(test_plain_text_file_is_one_document);
    RUN(test_jsonl_text_and_messages_with_lang_filter);
    RUN(test_tool_use_transcripts_keep_tools_and_calls);
    RUN(test_directory_reads_txt_and_jsonl_in_name_order);
    RUN(test_malformed_jsonl_names_file_and_line);
    RUN(test_missing_input_and_empty_directory_are_errors);
    RUN(test_token_file_is_little_endian_int32);
    RUN(test_documents_are_tokenized_apart_and_separated_by_end_of_text);
    return test_summary();
}
