/* testutil — small helpers the unit tests share: sleeping, a monotonic clock, and writing a
 * whole buffer to a socket (for the raw-socket test servers). Header-only, for tests only. */
#ifndef AGENTID_TESTS_UNIT_TESTUTIL_H
#define AGENTID_TESTS_UNIT_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

static inline void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Milliseconds on the monotonic clock. */
static inline double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Send all n bytes (MSG_NOSIGNAL); false if the peer went away. */
static inline bool send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return false;
        p += k, n -= (size_t)k;
    }
    return true;
}

#endif
