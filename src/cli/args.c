/* args.c: table-driven option parsing for the subcommands. */
#include "cli/args.h"

#include <errno.h>
#include <limits.h>
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
