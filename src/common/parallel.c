/* parallel.c: see parallel.h. Items are handed out one at a time from a
 * shared counter under a mutex (items are large: a tensor each). */
#include "common/parallel.h"

#include <pthread.h>
#include <string.h>
#include <unistd.h>

enum { MAX_THREADS = 16 };

typedef struct pool {
    moeq_parallel_fn fn;
    void *ctx;
    int n, next;
    int failed_at;       /* lowest failing index, n when none */
    moeq_code rc;
    moeq_error err;
    pthread_mutex_t mu;
} pool;

static void *worker(void *arg)
{
    pool *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        int i = p->failed_at < p->n ? p->n : p->next++;
        pthread_mutex_unlock(&p->mu);
        if (i >= p->n)
            return NULL;
        moeq_error e = {0};
        moeq_code rc = p->fn(p->ctx, i, &e);
        if (rc) {
            pthread_mutex_lock(&p->mu);
            if (i < p->failed_at) {
                p->failed_at = i;
                p->rc = rc;
                p->err = e;
            }
            pthread_mutex_unlock(&p->mu);
        }
    }
}

moeq_code moeq_parallel_for(int n, int threads, moeq_parallel_fn fn, void *ctx, moeq_error *err)
{
    if (n <= 0)
        return MOEQ_OK;
    if (threads <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cores > 0 ? (int)cores : 1;
    }
    threads = threads > MAX_THREADS ? MAX_THREADS : threads > n ? n : threads;
    pool p = {.fn = fn, .ctx = ctx, .n = n, .failed_at = n};
    pthread_mutex_init(&p.mu, NULL);
    pthread_t tids[MAX_THREADS];
    int started = 0;
    for (int t = 1; t < threads; t++) /* this thread is worker 0 */
        if (pthread_create(&tids[started], NULL, worker, &p) == 0)
            started++;
    worker(&p);
    for (int t = 0; t < started; t++)
        pthread_join(tids[t], NULL);
    pthread_mutex_destroy(&p.mu);
    if (p.failed_at < n) {
        *err = p.err;
        return p.rc;
    }
    return MOEQ_OK;
}
