/* testutil — small helpers the unit tests share: sleeping, a monotonic clock, writing a whole
 * buffer to a socket, and a scripted HTTP/1.1 upstream on raw sockets. Header-only, for tests
 * only. */
#ifndef AGENTID_TESTS_UNIT_TESTUTIL_H
#define AGENTID_TESTS_UNIT_TESTUTIL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

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

/* ---- a scripted HTTP/1.1 upstream on 127.0.0.1 ------------------------------------------
 * Every connection gets a thread that reads its requests one after the other (the head, then a
 * body of Content-Length bytes) and hands each to serve(fd, path, body, body_len), which writes
 * the whole answer itself and returns false to close the connection. accepts and closes count
 * the connections. Set serve, then test_upstream_start; the upstream lives as long as the test. */
typedef struct test_upstream {
    bool (*serve)(int fd, const char *path, const char *body, size_t body_len);
    const char *unread_prefix;   /* paths starting with it are served without reading their body */
    void (*saw)(const char *head, size_t len); /* optional: each request's head, before serve */
    int lfd;
    unsigned port;
    atomic_int accepts, closes;
} test_upstream;

typedef struct {
    test_upstream *u;
    int fd;
} test_upstream_conn;

static inline void *test_upstream_conn_main(void *arg)
{
    test_upstream_conn c = *(test_upstream_conn *)arg;
    free(arg);
    char req[16384];
    size_t have = 0;
    for (;;) {
        char *end;
        while (!(end = memmem(req, have, "\r\n\r\n", 4))) {
            if (have == sizeof req) goto out;
            ssize_t k = recv(c.fd, req + have, sizeof req - have, 0);
            if (k <= 0) goto out;
            have += (size_t)k;
        }
        size_t head = (size_t)(end + 4 - req), blen = 0;
        char path[256] = "";
        sscanf(req, "%*s %255s", path);
        if (c.u->saw) c.u->saw(req, head);
        const char *cl = strcasestr(req, "\r\nContent-Length:");
        if (cl && cl < end) blen = strtoul(cl + 17, NULL, 10);
        if (c.u->unread_prefix && !strncmp(path, c.u->unread_prefix, strlen(c.u->unread_prefix))) {
            c.u->serve(c.fd, path, "", 0);
            goto out;
        }
        if (blen > sizeof req - head) goto out;
        while (have < head + blen) {
            ssize_t k = recv(c.fd, req + have, sizeof req - have, 0);
            if (k <= 0) goto out;
            have += (size_t)k;
        }
        if (!c.u->serve(c.fd, path, req + head, blen)) goto out;
        memmove(req, req + head + blen, have - head - blen);
        have -= head + blen;
    }
out:
    close(c.fd);
    atomic_fetch_add(&c.u->closes, 1);
    return NULL;
}

static inline void *test_upstream_accept(void *arg)
{
    test_upstream *u = arg;
    for (;;) {
        int fd = accept(u->lfd, NULL, NULL);
        if (fd < 0) return NULL;
        atomic_fetch_add(&u->accepts, 1);
        test_upstream_conn *c = malloc(sizeof *c);
        c->u = u, c->fd = fd;
        pthread_t t;
        if (pthread_create(&t, NULL, test_upstream_conn_main, c) == 0) {
            pthread_detach(t);
        } else {
            free(c);
            close(fd);
        }
    }
}

/* Listen on a free port of 127.0.0.1 (u->port) and accept in a thread of its own. */
static inline bool test_upstream_start(test_upstream *u)
{
    u->lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(u->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (bind(u->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(u->lfd, 128) != 0 ||
        getsockname(u->lfd, (struct sockaddr *)&a, &al) != 0)
        return false;
    u->port = ntohs(a.sin_port);
    pthread_t t;
    if (pthread_create(&t, NULL, test_upstream_accept, u) != 0) return false;
    pthread_detach(t);
    return true;
}

#endif
