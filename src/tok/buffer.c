/* buffer.c: growable byte buffers, id lists, span lists and piece lists. */
#include "tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

/* Grows *data (elem bytes each) so that need elements fit. */
static int grow(void **data, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t cap_new = *cap ? *cap : 16;
    while (cap_new < need)
        cap_new *= 2;
    void *p = realloc(*data, cap_new * elem);
    if (!p)
        return -1;
    *data = p;
    *cap = cap_new;
    return 0;
}

int tok_buf_reserve(tok_buf *b, size_t extra)
{
    /* One byte more so that callers may NUL-terminate. */
    return grow((void **)&b->data, &b->cap, b->len + extra + 1, 1);
}

int tok_buf_append(tok_buf *b, const void *p, size_t n)
{
    if (tok_buf_reserve(b, n))
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void tok_buf_free(tok_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int tok_ids_push(tok_ids *v, int32_t id)
{
    if (grow((void **)&v->data, &v->cap, v->len + 1, sizeof *v->data))
        return -1;
    v->data[v->len++] = id;
    return 0;
}

int tok_spans_push(tok_spans *v, size_t start, size_t len)
{
    if (grow((void **)&v->data, &v->cap, v->len + 1, sizeof *v->data))
        return -1;
    v->data[v->len++] = (tok_span){start, len};
    return 0;
}

int tok_pieces_push(tok_pieces *p, const char *s, size_t n, int at_start)
{
    size_t cap = p->cap;
    if (grow((void **)&p->spans, &cap, p->len + 1, sizeof *p->spans))
        return -1;
    size_t cap2 = p->cap;
    if (grow((void **)&p->at_start, &cap2, p->len + 1, 1))
        return -1;
    p->cap = cap < cap2 ? cap : cap2;
    size_t start = p->text.len;
    if (tok_buf_append(&p->text, s, n))
        return -1;
    p->spans[p->len] = (tok_span){start, n};
    p->at_start[p->len] = (uint8_t)(at_start != 0);
    p->len++;
    return 0;
}

void tok_pieces_clear(tok_pieces *p)
{
    p->text.len = 0;
    p->len = 0;
}

void tok_pieces_free(tok_pieces *p)
{
    tok_buf_free(&p->text);
    free(p->spans);
    free(p->at_start);
    memset(p, 0, sizeof *p);
}
