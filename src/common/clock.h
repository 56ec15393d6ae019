/* clock.h: the monotonic clock that progress lines and report.json's
 * per-stage seconds are measured with. */
#ifndef MOEQ_COMMON_CLOCK_H
#define MOEQ_COMMON_CLOCK_H

#include <time.h>

/* Seconds on CLOCK_MONOTONIC: only differences mean anything. */
static inline double moeq_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
