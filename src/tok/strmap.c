/* strmap.c: open-addressing hash map from byte strings to int32 ids
 * (vocabularies of up to a few hundred thousand tokens). */
#include "tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

/* FNV-1a, 64-bit. */
static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int rehash(tok_strmap *m, size_t n_slots)
{
    uint32_t *slots = calloc(n_slots, sizeof *slots);
    if (!slots)
        return -1;
    for (size_t e = 0; e < m->len; e++) {
        size_t i = hash_bytes(m->keys.data + m->entries[e].off, m->entries[e].len) &
                   (n_slots - 1);
        while (slots[i])
            i = (i + 1) & (n_slots - 1);
        slots[i] = (uint32_t)(e + 1);
    }
    free(m->slots);
    m->slots = slots;
    m->n_slots = n_slots;
    return 0;
}

/* Slot holding key, or the empty slot where it would go. */
static size_t find_slot(const tok_strmap *m, const char *key, size_t n)
{
    size_t i = hash_bytes(key, n) & (m->n_slots - 1);
    for (;;) {
        uint32_t s = m->slots[i];
        if (!s)
            return i;
        const struct tok_strmap_entry *e = &m->entries[s - 1];
        if (e->len == n && memcmp(m->keys.data + e->off, key, n) == 0)
            return i;
        i = (i + 1) & (m->n_slots - 1);
    }
}

int tok_strmap_put(tok_strmap *m, const char *key, size_t n, int32_t value)
{
    if ((m->len + 1) * 2 > m->n_slots && rehash(m, m->n_slots ? m->n_slots * 2 : 64))
        return -1;
    size_t i = find_slot(m, key, n);
    if (m->slots[i]) {
        m->entries[m->slots[i] - 1].value = value;
        return 0;
    }
    if (m->len == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        void *p = realloc(m->entries, cap * sizeof *m->entries);
        if (!p)
            return -1;
        m->entries = p;
        m->cap = cap;
    }
    size_t off = m->keys.len;
    if (tok_buf_append(&m->keys, key, n))
        return -1;
    m->entries[m->len] = (struct tok_strmap_entry){off, n, value};
    m->slots[i] = (uint32_t)(++m->len);
    return 0;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t n)
{
    if (!m->n_slots)
        return -1;
    uint32_t s = m->slots[find_slot(m, key, n)];
    return s ? m->entries[s - 1].value : -1;
}

void tok_strmap_free(tok_strmap *m)
{
    tok_buf_free(&m->keys);
    free(m->slots);
    free(m->entries);
    memset(m, 0, sizeof *m);
}
