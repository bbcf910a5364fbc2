/* Unit tests for http_defer (core/http_server): real servers on 127.0.0.1 (port 0), clients
 * on plain sockets, one thread per client so that requests are really in flight together. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include "core/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static atomic_int fn_runs, fn_cancelled, inline_calls;

/* ---- the server side ---------------------------------------------------------- */

typedef struct {
    int ms;
} slow_arg;

static void slow(http_req *r, void *arg, bool cancelled)
{
    slow_arg *a = arg;
    atomic_fetch_add(&fn_runs, 1);
    if (cancelled) {
        atomic_fetch_add(&fn_cancelled, 1);
        assert_int_equal(http_reply_status(r), 503); /* answered already */
        free(a);
        return;
    }
    usleep((useconds_t)a->ms * 1000);
    /* Everything of the request is still there on the worker. */
    const char *who = http_req_query(r, "who");
    if (strcmp(http_req_path(r), "/noreply") == 0) {
        http_add_header(r, "X-Lost", "1");
    } else {
        http_add_header(r, "X-Deferred", "yes");
        char body[128];
        snprintf(body, sizeof body, "slow %s %s", http_req_method(r), who ? who : "-");
        http_reply_text(r, 200, body);
    }
    free(a);
}

static void handler(http_req *r, void *ctx)
{
    (void)ctx;
    const char *p = http_req_path(r);
    if (strcmp(p, "/slow") == 0 || strcmp(p, "/noreply") == 0) {
        const char *ms = http_req_query(r, "ms");
        slow_arg *a = malloc(sizeof *a);
        a->ms = ms ? atoi(ms) : 0;
        if (http_defer(r, slow, a)) return;
        free(a);
        atomic_fetch_add(&inline_calls, 1);
        http_reply_text(r, 200, "inline");
        return;
    }
    http_reply_text(r, 200, "fast");
}

static http_server *start(unsigned threads, unsigned workers, unsigned *port)
{
    char err[256] = "";
    http_server_opts o = {.listen = "127.0.0.1:0", .threads = threads, .defer_workers = workers,
                          .thread_stack = 256 * 1024};
    http_server *s = http_server_start(&o, handler, NULL, err, sizeof err);
    if (!s) fail_msg("http_server_start: %s", err);
    *port = http_server_port(s);
    return s;
}

/* ---- a plain-socket client ---------------------------------------------------- */

typedef struct {
    unsigned port;
    char target[128];
    int status;            /* 0: no answer */
    char resp[2048];
    double ms;
    pthread_t th;
} call;

static void do_call(call *c)
{
    double t0 = now_ms();
    c->status = 0;
    c->resp[0] = '\0';
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        char req[256];
        int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                         c->target);
        if (write(fd, req, (size_t)n) == n) {
            size_t got = 0;
            ssize_t k;
            while (got < sizeof c->resp - 1 && (k = read(fd, c->resp + got, sizeof c->resp - 1 - got)) > 0)
                got += (size_t)k;
            c->resp[got] = '\0';
            if (!strncmp(c->resp, "HTTP/1.1 ", 9)) c->status = atoi(c->resp + 9);
        }
    }
    close(fd);
    c->ms = now_ms() - t0;
}

static void *call_main(void *arg)
{
    do_call(arg);
    return NULL;
}

static void call_start(call *c, unsigned port, const char *target)
{
    c->port = port;
    snprintf(c->target, sizeof c->target, "%s", target);
    assert_int_equal(pthread_create(&c->th, NULL, call_main, c), 0);
}

static void call_wait(call *c) { pthread_join(c->th, NULL); }

static const char *body_of(const call *c)
{
    const char *b = strstr(c->resp, "\r\n\r\n");
    return b ? b + 4 : "";
}

static void reset(void)
{
    atomic_store(&fn_runs, 0);
    atomic_store(&fn_cancelled, 0);
    atomic_store(&inline_calls, 0);
}

/* ---- tests -------------------------------------------------------------------- */

/* One server thread; six requests deferred for 400 ms each. Fast requests are answered
 * meanwhile, and the slow ones run side by side on the workers, not one after another. */
static void test_slow_deferred_do_not_block_fast(void **state)
{
    (void)state;
    reset();
    unsigned port;
    http_server *s = start(1, 8, &port);
    call slow_calls[6], fast;
    double t0 = now_ms();
    for (int i = 0; i < 6; i++) {
        char t[64];
        snprintf(t, sizeof t, "/slow?ms=400&who=%d", i);
        call_start(&slow_calls[i], port, t);
    }
    usleep(100 * 1000); /* all six parked on workers by now */
    for (int i = 0; i < 5; i++) {
        fast.port = port;
        snprintf(fast.target, sizeof fast.target, "/fast");
        do_call(&fast);
        assert_int_equal(fast.status, 200);
        assert_string_equal(body_of(&fast), "fast");
        assert_true(fast.ms < 150); /* the slow ones still have about 300 ms to go */
    }
    for (int i = 0; i < 6; i++) {
        call_wait(&slow_calls[i]);
        char want[64];
        snprintf(want, sizeof want, "slow GET %d", i);
        assert_int_equal(slow_calls[i].status, 200);
        assert_string_equal(body_of(&slow_calls[i]), want);
        assert_non_null(strstr(slow_calls[i].resp, "X-Deferred: yes"));
        assert_true(slow_calls[i].ms >= 390);
    }
    assert_true(now_ms() - t0 < 1500); /* serially it would be 2400 ms */
    assert_int_equal(atomic_load(&fn_runs), 6);
    assert_int_equal(atomic_load(&fn_cancelled), 0);
    assert_int_equal(atomic_load(&inline_calls), 0);
    http_server_stop(s);
}

/* Keep-alive: a connection whose request was deferred carries on with the next request. */
static void test_keepalive_after_defer(void **state)
{
    (void)state;
    reset();
    unsigned port;
    http_server *s = start(2, 2, &port);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    for (int i = 0; i < 20; i++) {
        const char *req = i % 2 ? "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
                                : "GET /slow?ms=1&who=k HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
        char buf[1024];
        size_t got = 0;
        const char *want = i % 2 ? "fast" : "slow GET k";
        while (got < sizeof buf - 1) {
            ssize_t k = read(fd, buf + got, sizeof buf - 1 - got);
            assert_true(k > 0);
            got += (size_t)k;
            buf[got] = '\0';
            const char *b = strstr(buf, "\r\n\r\n");
            if (b && strlen(b + 4) >= strlen(want)) break;
        }
        assert_int_equal(strncmp(buf, "HTTP/1.1 200", 12), 0);
        assert_string_equal(strstr(buf, "\r\n\r\n") + 4, want);
    }
    close(fd);
    assert_int_equal(atomic_load(&fn_runs), 10);
    http_server_stop(s);
}

/* A deferred fn that makes no reply: 500, and its pending headers do not leak into it. */
static void test_deferred_no_reply_is_500(void **state)
{
    (void)state;
    reset();
    unsigned port;
    http_server *s = start(1, 1, &port);
    call c = {.port = port};
    snprintf(c.target, sizeof c.target, "/noreply");
    do_call(&c);
    assert_int_equal(c.status, 500);
    assert_null(strstr(c.resp, "X-Lost"));
    assert_int_equal(atomic_load(&fn_runs), 1);
    http_server_stop(s);
}

/* Without defer_workers http_defer declines and the handler answers inline. */
static void test_defer_off(void **state)
{
    (void)state;
    reset();
    unsigned port;
    http_server *s = start(1, 0, &port);
    call c = {.port = port};
    snprintf(c.target, sizeof c.target, "/slow?ms=1");
    do_call(&c);
    assert_int_equal(c.status, 200);
    assert_string_equal(body_of(&c), "inline");
    assert_int_equal(atomic_load(&fn_runs), 0);
    assert_int_equal(atomic_load(&inline_calls), 1);
    http_server_stop(s);

    char err[200] = "";
    http_server_opts o = {.listen = "127.0.0.1:0", .thread_per_connection = true, .defer_workers = 2};
    assert_null(http_server_start(&o, handler, NULL, err, sizeof err));
    assert_non_null(strstr(err, "thread_per_connection"));
}

/* Stopping with requests deferred: the one running finishes and is answered, the queued
 * ones get 503 (fn runs once each, cancelled); nothing leaks (ASan build). */
static void test_stop_with_pending(void **state)
{
    (void)state;
    reset();
    unsigned port;
    http_server *s = start(1, 1, &port);
    call c[4];
    for (int i = 0; i < 4; i++) {
        char t[64];
        snprintf(t, sizeof t, "/slow?ms=500&who=%d", i);
        call_start(&c[i], port, t);
    }
    usleep(150 * 1000); /* one running on the only worker, three queued */
    double t0 = now_ms();
    http_server_stop(s);
    double took = now_ms() - t0;
    int ok = 0, unavailable = 0;
    for (int i = 0; i < 4; i++) {
        call_wait(&c[i]);
        if (c[i].status == 200) ok++;
        if (c[i].status == 503) {
            unavailable++;
            assert_non_null(strstr(body_of(&c[i]), "temporarily_unavailable"));
        }
    }
    assert_int_equal(ok, 1);
    assert_int_equal(unavailable, 3);
    assert_int_equal(atomic_load(&fn_runs), 4);
    assert_int_equal(atomic_load(&fn_cancelled), 3);
    assert_true(took >= 250 && took < 2500); /* waited for the running one, not for the rest */
}

/* Many deferred requests at once, more than workers: all answered, each fn once. */
static void test_many_deferred(void **state)
{
    (void)state;
    reset();
    unsigned port;
    http_server *s = start(2, 4, &port);
    enum { N = 40 };
    call *c = calloc(N, sizeof *c);
    for (int i = 0; i < N; i++) {
        char t[64];
        snprintf(t, sizeof t, "/slow?ms=20&who=%d", i);
        call_start(&c[i], port, t);
    }
    for (int i = 0; i < N; i++) {
        call_wait(&c[i]);
        assert_int_equal(c[i].status, 200);
    }
    assert_int_equal(atomic_load(&fn_runs), N);
    free(c);
    http_server_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slow_deferred_do_not_block_fast),
        cmocka_unit_test(test_keepalive_after_defer),
        cmocka_unit_test(test_deferred_no_reply_is_500),
        cmocka_unit_test(test_defer_off),
        cmocka_unit_test(test_stop_with_pending),
        cmocka_unit_test(test_many_deferred),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
