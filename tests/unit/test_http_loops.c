/* Unit tests for core/http_server's event loops (opts.event_loops) with core/http_client's
 * loop-bound transfers (httpc_loop, httpc_async_start_on) as their loop source: a small proxy
 * built here the way the gateway is, in front of an upstream written here on raw sockets, and
 * clients on raw sockets too, so the tests see connections as the kernel spreads them, a slow
 * upstream next to a quick one on the same loop, a client that goes away mid-stream, and a
 * stop with transfers still running (ASan checks that nothing leaks). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include "core/http_client.h"
#include "core/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int up_gone;       /* /endless connections the upstream saw closed */
static atomic_int dones;         /* proxied transfers closed by the proxy */
static atomic_int started;       /* proxied transfers started */
static atomic_long big_sent;     /* /big bytes the upstream got out */
#define BIG_SIZE (64L * 1024 * 1024) /* more than every socket buffer on the way holds */

/* ---- the upstream: one thread per connection, keep-alive -------------------------------- */

static bool up_serve(int fd, const char *path, const char *body, size_t blen)
{
    (void)body, (void)blen; /* GETs only */
    static const char HELLO[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    if (!strcmp(path, "/hello")) return send_all(fd, HELLO, sizeof HELLO - 1);
    if (!strcmp(path, "/slow")) { /* the answer after 1.5 s */
        sleep_ms(1500);
        return send_all(fd, HELLO, sizeof HELLO - 1);
    }
    static const char CH[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    char h[64];
    if (!strcmp(path, "/stream")) { /* ten pieces, 30 ms apart */
        if (!send_all(fd, CH, sizeof CH - 1)) return false;
        for (int i = 0; i < 10; i++) {
            int k = snprintf(h, sizeof h, "2\r\n%d;\r\n", i);
            if (!send_all(fd, h, (size_t)k)) return false;
            sleep_ms(30);
        }
        return send_all(fd, "0\r\n\r\n", 5);
    }
    if (!strcmp(path, "/endless")) { /* a piece every 20 ms until the proxy hangs up */
        if (!send_all(fd, CH, sizeof CH - 1)) return false;
        for (;;) {
            if (!send_all(fd, "6\r\ntick.\n\r\n", 11)) {
                atomic_fetch_add(&up_gone, 1);
                return false;
            }
            sleep_ms(20);
        }
    }
    if (!strcmp(path, "/big")) { /* BIG_SIZE bytes as fast as they are taken */
        int k = snprintf(h, sizeof h, "HTTP/1.1 200 OK\r\nContent-Length: %ld\r\n\r\n", BIG_SIZE);
        if (!send_all(fd, h, (size_t)k)) return false;
        static char block[65536];
        memset(block, 'b', sizeof block);
        for (long off = 0; off < BIG_SIZE; off += (long)sizeof block) {
            if (!send_all(fd, block, sizeof block)) return false;
            atomic_store(&big_sent, off + (long)sizeof block);
        }
        return true;
    }
    static const char NF[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    return send_all(fd, NF, sizeof NF - 1);
}

static test_upstream up = {.serve = up_serve};

/* ---- the proxy: /p/PATH goes to the upstream's PATH, /loop names the loop --------------- */

typedef struct {
    httpc_async *a;
    http_waker *w;
} px;

static void px_notify(void *ctx) { http_wake(((px *)ctx)->w); }

static long px_read(void *ctx, char *buf, size_t max)
{
    long n = httpc_async_read(((px *)ctx)->a, buf, max);
    return n == HTTPC_AGAIN ? HTTP_STREAM_AGAIN : n;
}

static void px_done(void *ctx)
{
    px *p = ctx;
    httpc_async_close(p->a);
    free(p);
    atomic_fetch_add(&dones, 1);
}

static void px_resumed(http_req *r, void *arg, bool cancelled)
{
    px *p = arg;
    if (cancelled) { /* the server answered 503 */
        px_done(p);
        return;
    }
    httpc_async_state st = httpc_async_poll(p->a);
    if (st == HTTPC_ASYNC_WAITING) {
        if (!http_wait(r, px_resumed, p)) {
            http_reply_text(r, 503, "stopping");
            px_done(p);
        }
        return;
    }
    if (st == HTTPC_ASYNC_FAILED) {
        http_reply_text(r, 502, "upstream failed");
        px_done(p);
        return;
    }
    http_reply_stream(r, (int)httpc_async_status(p->a), "text/plain", px_read, p, px_done);
}

static void handler(http_req *r, void *ctx)
{
    (void)ctx;
    const char *path = http_req_path(r);
    if (!http_loop_state()) { /* every handler runs on a loop with its client */
        http_reply_text(r, 500, "no loop state");
        return;
    }
    if (!strcmp(path, "/loop")) {
        char b[32];
        snprintf(b, sizeof b, "%p", http_loop_state());
        http_reply_text(r, 200, b);
        return;
    }
    if (strncmp(path, "/p/", 3) != 0) {
        http_reply_text(r, 404, "no");
        return;
    }
    char url[300], err[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", up.port, path + 2);
    httpc_request req = {.url = url, .timeout_ms = 0};
    px *p = calloc(1, sizeof *p);
    p->w = http_req_waker(r);
    p->a = httpc_async_start_on(http_loop_state(), &req, px_notify, p, err, sizeof err);
    if (!p->a) {
        free(p);
        http_reply_text(r, 502, err);
        return;
    }
    atomic_fetch_add(&started, 1);
    px_resumed(r, p, false);
}

static void *src_start(void *ctx) { (void)ctx; return httpc_loop_new(); }
static int src_fd(void *s) { return httpc_loop_fd(s); }
static long src_timeout(void *s) { return httpc_loop_timeout(s); }
static void src_run(void *s) { httpc_loop_run(s); }
static void src_stop(void *s) { httpc_loop_free(s); }
static const http_loop_source SRC = {src_start, src_fd, src_timeout, src_run, src_stop, NULL};

static http_server *start_proxy(unsigned loops)
{
    char err[256];
    http_server_opts o = {.listen = "127.0.0.1:0", .event_loops = loops, .loop_source = &SRC};
    http_server *s = http_server_start(&o, handler, NULL, err, sizeof err);
    if (!s) fprintf(stderr, "start: %s\n", err);
    assert_non_null(s);
    return s;
}

/* ---- a client on raw sockets ---------------------------------------------------------------- */

static int dial(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 8};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* GET path with Connection: close; the whole answer (NUL-terminated, caller frees). */
static char *get(unsigned port, const char *path)
{
    int fd = dial(port);
    char rq[300];
    int n = snprintf(rq, sizeof rq, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path);
    assert_true(send_all(fd, rq, (size_t)n));
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    ssize_t k;
    while ((k = recv(fd, out + len, cap - len - 1, 0)) > 0) {
        len += (size_t)k;
        if (cap - len < 2) out = realloc(out, cap *= 2);
    }
    out[len] = '\0';
    close(fd);
    return out;
}

static const char *body_of(const char *resp)
{
    const char *b = strstr(resp, "\r\n\r\n");
    return b ? b + 4 : "";
}

static int group_setup(void **state)
{
    (void)state;
    httpc_global_init();
    return test_upstream_start(&up) ? 0 : -1;
}

static void wait_for(atomic_int *v, int want)
{
    for (int i = 0; i < 500 && atomic_load(v) < want; i++) sleep_ms(10);
    assert_true(atomic_load(v) >= want);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_proxy_and_stream(void **state)
{
    (void)state;
    http_server *s = start_proxy(2);
    int d0 = atomic_load(&dones);
    char *a = get(http_server_port(s), "/p/hello");
    assert_non_null(strstr(a, "HTTP/1.1 200"));
    assert_string_equal(body_of(a), "5\r\nhello\r\n0\r\n\r\n");
    free(a);
    a = get(http_server_port(s), "/p/stream"); /* chunks as they came, in order */
    const char *b = body_of(a);
    for (int i = 0; i < 10; i++) {
        char piece[16];
        snprintf(piece, sizeof piece, "%d;", i);
        const char *at = strstr(b, piece);
        assert_non_null(at);
        b = at + 2;
    }
    free(a);
    a = get(http_server_port(s), "/p/missing");
    assert_non_null(strstr(a, "HTTP/1.1 404"));
    free(a);
    wait_for(&dones, d0 + 3);
    http_server_stop(s);
}

/* New connections land on every loop: the kernel spreads them (SO_REUSEPORT). */
static void test_connections_spread(void **state)
{
    (void)state;
    http_server *s = start_proxy(3);
    char seen[3][32] = {{0}};
    int distinct = 0;
    for (int i = 0; i < 60 && distinct < 3; i++) {
        char *a = get(http_server_port(s), "/loop");
        assert_non_null(strstr(a, "HTTP/1.1 200"));
        const char *id = body_of(a);
        bool known = false;
        for (int k = 0; k < distinct; k++) known = known || !strcmp(seen[k], id);
        if (!known) snprintf(seen[distinct++], sizeof seen[0], "%s", id);
        free(a);
    }
    assert_int_equal(distinct, 3);
    http_server_stop(s);
}

typedef struct {
    unsigned port;
    const char *path;
    char *answer;
    long ms;
} fetch;

static void *fetch_main(void *arg)
{
    fetch *f = arg;
    double t0 = now_ms();
    f->answer = get(f->port, f->path);
    f->ms = now_ms() - t0;
    return NULL;
}

/* One loop: a request whose upstream takes 1.5 s does not hold up the others on that loop. */
static void test_slow_upstream_does_not_stall(void **state)
{
    (void)state;
    http_server *s = start_proxy(1);
    fetch slow[3];
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        slow[i] = (fetch){.port = http_server_port(s), .path = "/p/slow"};
        assert_int_equal(pthread_create(&t[i], NULL, fetch_main, &slow[i]), 0);
    }
    sleep_ms(200);
    for (int i = 0; i < 5; i++) {
        double t0 = now_ms();
        char *a = get(http_server_port(s), "/p/hello");
        assert_non_null(strstr(a, "hello"));
        free(a);
        assert_true(now_ms() - t0 < 500);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        assert_non_null(strstr(slow[i].answer, "HTTP/1.1 200"));
        assert_true(slow[i].ms >= 1200);
        free(slow[i].answer);
    }
    http_server_stop(s);
}

/* The client hangs up while the upstream still sends: the proxy closes its transfer, so the
 * upstream sees its connection closed too. */
static void test_client_gone_mid_stream(void **state)
{
    (void)state;
    http_server *s = start_proxy(2);
    int g0 = atomic_load(&up_gone), d0 = atomic_load(&dones);
    int fd = dial(http_server_port(s));
    static const char RQ[] = "GET /p/endless HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_true(send_all(fd, RQ, sizeof RQ - 1));
    char buf[4096];
    size_t got = 0;
    while (got < 200) { /* a few ticks came through */
        ssize_t k = recv(fd, buf, sizeof buf, 0);
        assert_true(k > 0);
        got += (size_t)k;
    }
    close(fd);
    wait_for(&dones, d0 + 1);
    wait_for(&up_gone, g0 + 1);
    http_server_stop(s);
}

/* A client that does not read: the proxy stops reading the upstream (which stalls), holding
 * only its bounded buffer; once the client reads, all of it comes. */
static void test_slow_client_holds_upstream(void **state)
{
    (void)state;
    http_server *s = start_proxy(1);
    atomic_store(&big_sent, 0);
    int fd = dial(http_server_port(s));
    static const char RQ[] = "GET /p/big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    assert_true(send_all(fd, RQ, sizeof RQ - 1));
    sleep_ms(700);
    long sent = atomic_load(&big_sent);
    sleep_ms(300);
    assert_int_equal(atomic_load(&big_sent), sent); /* stuck while the client reads nothing */
    assert_true(sent < BIG_SIZE);
    static char buf[1 << 16];
    long total = 0;
    char tail[8] = "";
    ssize_t k;
    while ((k = recv(fd, buf, sizeof buf, 0)) > 0) {
        total += k;
        if (k >= 5) memcpy(tail, buf + k - 5, 5);
    }
    close(fd);
    assert_true(total > BIG_SIZE); /* the body, chunked, and the head */
    assert_int_equal(atomic_load(&big_sent), BIG_SIZE);
    assert_memory_equal(tail, "0\r\n\r\n", 5); /* the last chunk: it ended whole */
    http_server_stop(s);
}

/* Stopping with a request waiting for its upstream and a stream still running: the first is
 * answered 503, the second cut; both transfers are closed before the loops' clients go. */
/* Clients that go away (a reset) while their requests wait for the upstream: whether
 * libmicrohttpd then calls the handler again or closes the connection at once (as it does when
 * it sees the reset first), every transfer is released (the second way leaked it before). */
static void test_client_gone_while_waiting(void **state)
{
    (void)state;
    http_server *s = start_proxy(1);
    static const char rq[] = "GET /p/hello HTTP/1.1\r\nHost: t\r\n\r\n";
    for (int round = 0; round < 20; round++) { /* as wrk ends a run: requests out, then close */
        int fd[32];
        for (int i = 0; i < 32; i++) fd[i] = dial(http_server_port(s));
        for (int i = 0; i < 32; i++) assert_true(send_all(fd[i], rq, sizeof rq - 1));
        for (int i = 0; i < 32; i++) close(fd[i]);
    }
    char *a = get(http_server_port(s), "/p/hello"); /* the loop still serves */
    assert_non_null(strstr(a, "HTTP/1.1 200"));
    free(a);
    for (int i = 0; i < 500 && atomic_load(&dones) < atomic_load(&started); i++) sleep_ms(10);
    assert_int_equal(atomic_load(&dones), atomic_load(&started));
    http_server_stop(s);
}

static void test_stop_with_transfers_in_flight(void **state)
{
    (void)state;
    http_server *s = start_proxy(2);
    int d0 = atomic_load(&dones);
    fetch f[2] = {{.port = http_server_port(s), .path = "/p/slow"},
                  {.port = http_server_port(s), .path = "/p/endless"}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&t[i], NULL, fetch_main, &f[i]), 0);
    sleep_ms(300);
    double t0 = now_ms();
    http_server_stop(s);
    assert_true(now_ms() - t0 < 3000);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    assert_non_null(strstr(f[0].answer, "HTTP/1.1 503"));
    assert_non_null(strstr(f[1].answer, "HTTP/1.1 200"));      /* began, then cut: */
    assert_null(strstr(body_of(f[1].answer), "\r\n0\r\n\r\n")); /* no last chunk */
    assert_true(atomic_load(&dones) >= d0 + 2);
    free(f[0].answer);
    free(f[1].answer);
}

static void test_bad_options(void **state)
{
    (void)state;
    char err[256];
    http_server_opts o = {.listen = "127.0.0.1:0", .event_loops = 2, .thread_per_connection = true};
    assert_null(http_server_start(&o, handler, NULL, err, sizeof err));
    assert_non_null(strstr(err, "event_loops"));
    assert_null(http_loop_state()); /* not a loop thread */
}

/* A port the loops serve is in use: a second server (loops or not) is refused, it does not join
 * the loops' SO_REUSEPORT group and take some of their connections. */
static void test_port_in_use(void **state)
{
    (void)state;
    http_server *s = start_proxy(2);
    char listen[64], err[256];
    snprintf(listen, sizeof listen, "127.0.0.1:%u", http_server_port(s));
    http_server_opts o = {.listen = listen, .event_loops = 2, .loop_source = &SRC};
    assert_null(http_server_start(&o, handler, NULL, err, sizeof err));
    assert_non_null(strstr(err, "in use"));
    http_server_opts plain = {.listen = listen};
    assert_null(http_server_start(&plain, handler, NULL, err, sizeof err));
    http_server_stop(s);
    /* once it is free again, the loops get it */
    http_server *again = http_server_start(&o, handler, NULL, err, sizeof err);
    if (!again) fprintf(stderr, "start: %s\n", err);
    assert_non_null(again);
    http_server_stop(again);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_proxy_and_stream),
        cmocka_unit_test(test_connections_spread),
        cmocka_unit_test(test_slow_upstream_does_not_stall),
        cmocka_unit_test(test_client_gone_mid_stream),
        cmocka_unit_test(test_slow_client_holds_upstream),
        cmocka_unit_test(test_client_gone_while_waiting),
        cmocka_unit_test(test_stop_with_transfers_in_flight),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_port_in_use),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
