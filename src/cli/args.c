/* args.c: table-driven option parsing for the subcommands. */
#include "cli/args.h"

#include "cli/commands.h"
#include "pipeline/quantize.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

moeq_code args_parse_bytes(const char *text, int64_t *bytes, moeq_error *err)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || errno || v < 0)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "\"%s\" is not a size (e.g. 24GiB, 512M)",
                         text);
    double mult = 1;
    switch (*end) {
    case 'k': case 'K': mult = 1024.0; end++; break;
    case 'm': case 'M': mult = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mult = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mult = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (mult > 1 && (!strcmp(end, "iB") || !strcmp(end, "B")))
        end += strlen(end);
    if (*end || v * mult > 9.0e18)
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "\"%s\" is not a size (e.g. 24GiB, 512M)",
                         text);
    *bytes = (int64_t)(v * mult);
    return MOEQ_OK;
}

static moeq_code set_value(const arg_spec *s, const char *value, moeq_error *err)
{
    char *end;
    switch (s->type) {
    case ARG_FLAG:
        *(int *)s->dest = 1;
        return MOEQ_OK;
    case ARG_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1")) {
            *(int *)s->dest = 1;
            return MOEQ_OK;
        }
        if (!strcmp(value, "false") || !strcmp(value, "0")) {
            *(int *)s->dest = 0;
            return MOEQ_OK;
        }
        return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "--%s: \"%s\" is not true or false", s->name,
                         value);
    case ARG_INT: {
        errno = 0;
        long v = strtol(value, &end, 10);
        if (end == value || *end || errno || v < INT_MIN || v > INT_MAX)
            return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "--%s: \"%s\" is not an integer",
                             s->name, value);
        *(int *)s->dest = (int)v;
        return MOEQ_OK;
    }
    case ARG_DOUBLE: {
        errno = 0;
        double v = strtod(value, &end);
        if (end == value || *end || errno)
            return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "--%s: \"%s\" is not a number", s->name,
                             value);
        *(double *)s->dest = v;
        return MOEQ_OK;
    }
    case ARG_STRING:
        *(const char **)s->dest = value;
        return MOEQ_OK;
    case ARG_BYTES:
        if (args_parse_bytes(value, (int64_t *)s->dest, err))
            return moeq_wrap(err, "--%s: ", s->name);
        return MOEQ_OK;
    }
    return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "--%s: bad option type", s->name);
}

moeq_code args_parse(const arg_spec *specs, int argc, char **argv, const char **positional,
                     int max_positional, int *n_positional, moeq_error *err)
{
    *n_positional = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            if (*n_positional >= max_positional)
                return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "unexpected argument \"%s\"", a);
            positional[(*n_positional)++] = a;
            continue;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        const arg_spec *s = specs;
        while (s->name && (strlen(s->name) != name_len || strncmp(s->name, name, name_len)))
            s++;
        if (!s->name)
            return moeq_fail(err, MOEQ_ERR_INVALID_ARG,
                             "unknown option \"%.*s\" (see --help)", (int)name_len + 2, a);
        const char *value = NULL;
        if (s->type == ARG_FLAG) {
            if (eq)
                return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "--%s takes no value", s->name);
        } else if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            return moeq_fail(err, MOEQ_ERR_INVALID_ARG, "--%s needs a value (%s)", s->name,
                             s->metavar ? s->metavar : "VALUE");
        }
        moeq_code rc = set_value(s, value, err);
        if (rc)
            return rc;
    }
    return MOEQ_OK;
}

void args_print_help(FILE *out, const arg_spec *specs)
{
    for (const arg_spec *s = specs; s->name; s++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", s->name, s->metavar ? " " : "",
                 s->metavar ? s->metavar : "");
        fprintf(out, "  %-26s %s\n", left, s->help);
    }
}

void args_print_usage(FILE *out, const char *usage, const arg_spec *specs)
{
    fprintf(out, "%soptions:\n", usage);
    args_print_help(out, specs);
}

int args_parse_command(const char *cmd, const char *usage, const arg_spec *specs, const int *help,
                       int argc, char **argv, const char **positional, int max_positional,
                       int *n_positional)
{
    moeq_error err = {0};
    if (args_parse(specs, argc, argv, positional, max_positional, n_positional, &err))
        return moeq_cli_report(cmd, 2, err.msg);
    if (*help) {
        args_print_usage(stdout, usage, specs);
        return 0;
    }
    return -1;
}

/* --devices: distinct device numbers separated by commas, at most
 * MOEQ_MAX_DEVICES of them. */
static int parse_device_list(const char *s, int *out, int *count)
{
    int n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > 1024 || n == MOEQ_MAX_DEVICES || (*end && *end != ','))
            return -1;
        for (int i = 0; i < n; i++)
            if (out[i] == v)
                return -1;
        out[n++] = (int)v;
        s = *end ? end + 1 : end;
        if (*end && !*s)
            return -1; /* a trailing comma */
    }
    if (!n)
        return -1;
    *count = n;
    return 0;
}

/* --device: "auto" (the first GPU if there is one), "cpu", "cuda" or
 * "cuda:N". Sets *cuda and *index. */
static int parse_device(const char *s, int *cuda, int *index)
{
    *index = 0;
    if (!strcmp(s, "cpu")) {
        *cuda = 0;
        return 0;
    }
    if (!strcmp(s, "auto")) {
#ifdef MOEQ_HAVE_CUDA
        *cuda = moeq_cuda_device_count() > 0;
#else
        *cuda = 0;
#endif
        return 0;
    }
    if (strncmp(s, "cuda", 4))
        return -1;
    *cuda = 1;
    if (!s[4])
        return 0;
    char *end;
    long v = s[4] == ':' ? strtol(s + 5, &end, 10) : -1;
    if (v < 0 || v > 1024 || *end || end == s + 5)
        return -1;
    *index = (int)v;
    return 0;
}

int args_pick_devices(const char *device, const char *devices, int *cuda, int *out, int *n,
                      char *msg, size_t msg_size)
{
    *n = 1;
    if (parse_device(device, cuda, &out[0])) {
        snprintf(msg, msg_size, "--device must be auto, cpu, cuda or cuda:N");
        return -1;
    }
    if (devices) {
        if (strcmp(device, "auto") && strcmp(device, "cuda")) {
            snprintf(msg, msg_size, "--devices and --device name the GPUs twice: give one of them");
            return -1;
        }
        if (parse_device_list(devices, out, n)) {
            snprintf(msg, msg_size,
                     "--devices must list distinct CUDA device numbers, e.g. 0,1 (at most %d)",
                     MOEQ_MAX_DEVICES);
            return -1;
        }
        *cuda = 1;
    }
    if (!*cuda)
        return 0;
    const char *opt = devices ? "--devices" : "--device", *val = devices ? devices : device;
#ifdef MOEQ_HAVE_CUDA
    int count = moeq_cuda_device_count();
    for (int i = 0; i < *n; i++)
        if (out[i] >= count) {
            if (count)
                snprintf(msg, msg_size, "%s %s: no CUDA device %d (%d found)", opt, val, out[i],
                         count);
            else
                snprintf(msg, msg_size, "%s %s: no CUDA device is available (use --device cpu)",
                         opt, val);
            return -1;
        }
    return 0;
#else
    snprintf(msg, msg_size,
             "%s %s: this moeq was built without the CUDA backend (no CUDA compiler was found "
             "at build time)",
             opt, val);
    return -1;
#endif
}
