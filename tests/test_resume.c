/* test_resume.c: interrupted runs and --resume, through the command line as
 * a user runs it. A real quantization of the demo model is killed (SIGKILL,
 * through the MOEQ_FAILPOINT test hook of src/common/failpoint.h) mid-layer,
 * during the write of a shard (the shard cut in half), and between a
 * layer's hidden states and its state record (also before the first record
 * exists: the resume starts over); each is resumed and must
 * write exactly the files of an uninterrupted run (report.json aside: it
 * holds timings). Also: two uninterrupted runs write the same bytes, and a
 * resume with other settings, or with nothing to resume, is refused. */
#include "test.h"

#include "common/fileio.h"

#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#define DEMO MOEQ_SOURCE_DIR "/demo/qwen3-moe-demo"

static char calib[4200], work[4000];
static char log_text[1 << 16];

/* Runs moeq quantize of model with args into out, the failpoint armed when
 * not NULL, files limited to file_limit bytes when not 0 (writes past it
 * fail with EFBIG: a full disk); returns the exit status, or 128 + signal
 * when killed. The output (stdout and stderr) is in log_text. */
static int quantize_at(const char *model, const char *out, const char *failpoint,
                       const char *extra, rlim_t file_limit)
{
    char cmd[16384], log_path[4200];
    snprintf(log_path, sizeof log_path, "%s/quantize.log", work);
    snprintf(cmd, sizeof cmd,
             "%s%s '%s' quantize --model '%s' --out '%s' --calib '%s' --nsamples 4 "
             "--seqlen 64 --mse 0 --device cpu %s > '%s' 2>&1",
             failpoint ? "MOEQ_FAILPOINT=" : "", failpoint ? failpoint : "", MOEQ_BINARY, model,
             out, calib, extra ? extra : "", log_path);
    struct rlimit saved, limited;
    getrlimit(RLIMIT_FSIZE, &saved);
    if (file_limit) { /* inherited by the command; SIGXFSZ ignored, so writes fail */
        limited = saved;
        limited.rlim_cur = file_limit;
        signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &limited);
    }
    int status = system(cmd);
    if (file_limit) {
        setrlimit(RLIMIT_FSIZE, &saved);
        signal(SIGXFSZ, SIG_DFL);
    }
    char *text = NULL;
    log_text[0] = '\0';
    if (moeq_read_text_file(log_path, sizeof log_text - 1, &text, NULL) == MOEQ_OK) {
        snprintf(log_text, sizeof log_text, "%s", text);
        free(text);
    }
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The demo model into work/name. */
static int quantize(const char *name, const char *failpoint, const char *extra)
{
    char out[4200];
    snprintf(out, sizeof out, "%s/%s", work, name);
    return quantize_at(DEMO, out, failpoint, extra, 0);
}

/* Every file of dir a (but report.json) equals the file of the same name in
 * b, and both hold the same number of files. Returns the files compared. */
static int same_files(const char *a, const char *b)
{
    int compared = 0, count_a = 0, count_b = 0;
    DIR *d = opendir(a);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        count_a++;
        if (!strcmp(e->d_name, "report.json"))
            continue;
        char pa[4200], pb[4200], *x = NULL, *y = NULL;
        size_t nx = 0, ny = 0;
        snprintf(pa, sizeof pa, "%s/%s", a, e->d_name);
        snprintf(pb, sizeof pb, "%s/%s", b, e->d_name);
        moeq_error err = {0};
        int ok = moeq_read_file(pa, (size_t)1 << 30, &x, &nx, &err) == MOEQ_OK &&
                 moeq_read_file(pb, (size_t)1 << 30, &y, &ny, &err) == MOEQ_OK && nx == ny &&
                 memcmp(x, y, nx) == 0;
        if (!ok)
            fprintf(stderr, "  %s differs from %s\n", pa, pb);
        CHECK(ok);
        compared += ok;
        free(x);
        free(y);
    }
    if (d)
        closedir(d);
    d = opendir(b);
    while (d && (e = readdir(d)))
        count_b += e->d_name[0] != '.';
    if (d)
        closedir(d);
    CHECK_INT_EQ(count_a, count_b);
    return compared;
}

static void setup(void)
{
    char *cwd = getcwd(NULL, 0);
    snprintf(work, sizeof work, "%.2000s/%.1000s", cwd, test_tmpdir("resume"));
    free(cwd);
    snprintf(calib, sizeof calib, "%s/calib.txt", work);
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "cp '%s/docs/adding-a-model.md' '%s'", MOEQ_SOURCE_DIR, calib);
    CHECK(system(cmd) == 0);
}

static void test_uninterrupted_runs_write_identical_files(void)
{
    CHECK_INT_EQ(quantize("ref", NULL, NULL), 0);
    CHECK_INT_EQ(quantize("ref2", NULL, NULL), 0);
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/ref", work);
    snprintf(b, sizeof b, "%s/ref2", work);
    /* 5 shards, index, config.json, quantize_config.json, tokenizer files */
    CHECK(same_files(a, b) >= 8);
    snprintf(a, sizeof a, "%s/ref/state.json", work);
    CHECK(!moeq_file_exists(a)); /* no resume record in a finished checkpoint */
}

/* Kill at failpoint, check what is left, resume, compare with "ref". */
static void kill_and_resume(const char *name, const char *failpoint)
{
    char out[4200], partial[4200], ref[4200];
    snprintf(out, sizeof out, "%s/%s", work, name);
    snprintf(partial, sizeof partial, "%s/%s.moeq-partial", work, name);
    snprintf(ref, sizeof ref, "%s/ref", work);
    CHECK_INT_EQ(quantize(name, failpoint, NULL), 128 + SIGKILL);
    CHECK(!moeq_dir_exists(out));    /* never a directory that looks finished */
    CHECK(moeq_dir_exists(partial)); /* the work so far, for --resume */
    /* Without --resume the partial run is not overwritten. */
    CHECK_INT_EQ(quantize(name, NULL, NULL), 1);
    CHECK_CONTAINS(log_text, "add --resume to continue it");
    CHECK_INT_EQ(quantize(name, NULL, "--resume"), 0);
    CHECK(moeq_dir_exists(out));
    CHECK(!moeq_dir_exists(partial));
    printf("     killed at %s, resumed: %d files identical to the uninterrupted run\n",
           failpoint, same_files(out, ref));
}

static void test_killed_mid_layer_resumes_to_identical_output(void)
{
    kill_and_resume("mid", "layer-2-mid");
    kill_and_resume("early", "layer-0-mid"); /* before any layer was recorded */
}

static void test_killed_while_writing_a_shard_resumes_to_identical_output(void)
{
    kill_and_resume("shard", "layer-1-shard");
    kill_and_resume("last_shard", "layer-3-shard");
}

static void test_killed_between_hidden_states_and_record_resumes_to_identical_output(void)
{
    kill_and_resume("state0", "layer-0-state");
    kill_and_resume("state2", "layer-2-state");
}

/* The disk fills up (a file size limit, so that the writes fail with
 * EFBIG) while the last shard is written: the run fails naming the file,
 * keeps the completed layers, and --resume finishes it to the same bytes.
 * An output that cannot be created at all fails up front, leaving nothing. */
static void test_disk_full_keeps_the_work_and_unwritable_output_is_refused(void)
{
    char out[4200], partial[4200], ref[4200];
    snprintf(out, sizeof out, "%s/full", work);
    snprintf(partial, sizeof partial, "%s/full.moeq-partial", work);
    snprintf(ref, sizeof ref, "%s/ref", work);
    /* Layer shards are about 1 MB, the last one (embeddings, lm_head) 4 MB:
     * 2 MiB lets the layers through and stops the last shard. */
    CHECK_INT_EQ(quantize_at(DEMO, out, NULL, NULL, 2 << 20), 1);
    CHECK_CONTAINS(log_text, "model-00005-of-00005.safetensors");
    CHECK_CONTAINS(log_text, "File too large");
    CHECK_CONTAINS(log_text, "the completed layers are kept in");
    CHECK(!moeq_dir_exists(out));
    CHECK(moeq_dir_exists(partial));
    CHECK_INT_EQ(quantize("full", NULL, "--resume"), 0);
    printf("     disk full at the last shard, resumed: %d files identical\n", same_files(out, ref));
    /* An output directory that cannot be created. */
    CHECK_INT_EQ(quantize_at(DEMO, "/proc/moeq-no-such-place/out", NULL, NULL, 0), 1);
    CHECK_CONTAINS(log_text, "cannot create /proc/moeq-no-such-place/out.moeq-partial");
}

static void test_resume_with_other_settings_or_nothing_to_resume_is_refused(void)
{
    char partial[4200];
    snprintf(partial, sizeof partial, "%s/other.moeq-partial", work);
    CHECK_INT_EQ(quantize("other", "layer-1-mid", NULL), 128 + SIGKILL);
    CHECK_INT_EQ(quantize("other", NULL, "--resume --bits 8"), 1);
    CHECK_CONTAINS(log_text, "had another bits");
    CHECK_INT_EQ(quantize("other", NULL, "--resume --expert-calib routed"), 1);
    CHECK_CONTAINS(log_text, "had another expert calibration");
    CHECK_INT_EQ(quantize("other", NULL, "--resume --seed 5"), 1);
    CHECK_CONTAINS(log_text, "had another calibration tokens");
    CHECK(moeq_dir_exists(partial)); /* a refused resume leaves it as it was */
    CHECK_INT_EQ(quantize("never", NULL, "--resume"), 1);
    CHECK_CONTAINS(log_text, "no interrupted run of");
    /* A changed model: the same run on a copy of the demo, killed, then
     * the copy's config.json edited (one more space) before --resume. */
    char copy[4200], changed[4200], cmd[8500];
    snprintf(copy, sizeof copy, "%s/model-copy", work);
    snprintf(changed, sizeof changed, "%s/changed", work);
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", DEMO, copy);
    CHECK(system(cmd) == 0);
    CHECK_INT_EQ(quantize_at(copy, changed, "layer-1-mid", NULL, 0), 128 + SIGKILL);
    snprintf(cmd, sizeof cmd, "printf ' ' >> '%s/config.json'", copy);
    CHECK(system(cmd) == 0);
    CHECK_INT_EQ(quantize_at(copy, changed, NULL, "--resume", 0), 1);
    CHECK_CONTAINS(log_text, "had another model");
}

int main(void)
{
    setup();
    RUN(test_uninterrupted_runs_write_identical_files);
    RUN(test_killed_mid_layer_resumes_to_identical_output);
    RUN(test_killed_while_writing_a_shard_resumes_to_identical_output);
    RUN(test_killed_between_hidden_states_and_record_resumes_to_identical_output);
    RUN(test_disk_full_keeps_the_work_and_unwritable_output_is_refused);
    RUN(test_resume_with_other_settings_or_nothing_to_resume_is_refused);
    return test_summary();
}
