/* utf8.c: UTF-8 decoding, lossy repair of invalid input, White_Space. */
#include "tok/tok_internal.h"

static const char replacement_char[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

/* Length of the longest valid prefix of a sequence at s (at most n bytes)
 * and whether it is complete, following Unicode Table 3-7 (Well-Formed
 * UTF-8 Byte Sequences). Returns the full length if valid, else 0 and the
 * count of bytes forming the maximal invalid subpart in *bad. */
static size_t valid_sequence(const unsigned char *s, size_t n, size_t *bad)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        *bad = 1;
        return 0;
    }
    size_t i = 1;
    for (; i < need; i++) {
        if (i >= n)
            break;
        unsigned char b = s[i];
        unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h)
            break;
    }
    if (i == need)
        return need;
    *bad = i;
    return 0;
}

int tok_utf8_sanitize(const char *s, size_t n, tok_buf *out)
{
    out->len = 0;
    if (tok_buf_reserve(out, n))
        return -1;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of the pending valid bytes */
    while (i < n) {
        size_t bad = 0;
        size_t k = valid_sequence(u + i, n - i, &bad);
        if (k) {
            i += k;
            continue;
        }
        if (tok_buf_append(out, s + run, i - run) ||
            tok_buf_append(out, replacement_char, sizeof replacement_char))
            return -1;
        i += bad;
        run = i;
    }
    if (tok_buf_append(out, s + run, n - run))
        return -1;
    out->data[out->len] = '\0';
    return 0;
}

size_t tok_utf8_len(unsigned char lead)
{
    if (lead < 0x80)
        return 1;
    if (lead < 0xE0)
        return 2;
    if (lead < 0xF0)
        return 3;
    return 4;
}

size_t tok_utf8_decode(const char *s, int32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t k = tok_utf8_len(u[0]);
    int32_t c;
    switch (k) {
    case 1: c = u[0]; break;
    case 2: c = ((u[0] & 0x1F) << 6) | (u[1] & 0x3F); break;
    case 3: c = ((u[0] & 0x0F) << 12) | ((u[1] & 0x3F) << 6) | (u[2] & 0x3F); break;
    default:
        c = ((u[0] & 0x07) << 18) | ((u[1] & 0x3F) << 12) | ((u[2] & 0x3F) << 6) |
            (u[3] & 0x3F);
    }
    *cp = c;
    return k;
}

size_t tok_utf8_encode(int32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Unicode PropList.txt White_Space, which Rust's char::is_whitespace uses. */
int tok_is_whitespace(int32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}
