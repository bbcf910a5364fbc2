/* Unit tests for core/h1client: exchanges driven by an epoll loop of the test's own, against
 * the scripted upstream of testutil.h (raw sockets), so the test sees the wire: what the request
 * looked like, how many connections were opened, what a server that closes, cuts short, talks
 * nonsense or never answers leads to. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include "core/h1client.h"

#include <poll.h>
#include <sys/epoll.h>

static test_upstream up;
static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;
static char seen[8192];           /* the last request head the upstream read */
static atomic_int calls;          /* serve() calls of the current test */

static void saw(const char *head, size_t len)
{
    pthread_mutex_lock(&seen_mu);
    snprintf(seen, sizeof seen, "%.*s", (int)len, head);
    pthread_mutex_unlock(&seen_mu);
}

static bool serve(int fd, const char *path, const char *body, size_t blen)
{
    int n = atomic_fetch_add(&calls, 1);
    char h[512];
    if (!strcmp(path, "/hello")) {
        static const char R[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: yes\r\n\r\nhello";
        return send_all(fd, R, sizeof R - 1);
    }
    if (!strcmp(path, "/echo")) {
        int k = snprintf(h, sizeof h, "HTTP/1.1 201 Created\r\nContent-Length: %zu\r\n\r\n", blen);
        return send_all(fd, h, (size_t)k) && send_all(fd, body, blen);
    }
    if (!strcmp(path, "/chunked")) {
        static const char R[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        return send_all(fd, R, sizeof R - 1);
    }
    if (!strcmp(path, "/trailers")) { /* a chunked body with trailer fields after it, 70 KiB */
        static const char R[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                                "3\r\nabc\r\n0\r\nX-Sum: 42\r\nX-More: ";
        static char v[70 * 1024];
        memset(v, 'm', sizeof v);
        return send_all(fd, R, sizeof R - 1) && send_all(fd, v, sizeof v) && send_all(fd, "\r\n\r\n", 4);
    }
    if (!strcmp(path, "/close")) { /* answer, then close: not to be reused */
        static const char R[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
        send_all(fd, R, sizeof R - 1);
        return false;
    }
    if (!strcmp(path, "/idle-close")) { /* answer, then close while the client keeps it idle */
        static const char R[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        send_all(fd, R, sizeof R - 1);
        sleep_ms(50);
        return false;
    }
    if (!strcmp(path, "/race")) { /* the second request on the kept connection finds it closing */
        static const char R[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        if (n == 1) return false;
        return send_all(fd, R, sizeof R - 1);
    }
    if (!strcmp(path, "/nothing")) return false;
    if (!strcmp(path, "/short")) { /* 10 announced, 5 sent */
        static const char R[] = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello";
        send_all(fd, R, sizeof R - 1);
        return false;
    }
    if (!strcmp(path, "/until-close")) { /* no length: the body runs to the close */
        static const char R[] = "HTTP/1.1 200 OK\r\n\r\nall of it";
        send_all(fd, R, sizeof R - 1);
        return false;
    }
    if (!strcmp(path, "/head")) {
        static const char R[] = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        return send_all(fd, R, sizeof R - 1);
    }
    if (!strcmp(path, "/continue")) {
        static const char R[] = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: 1\r\n\r\nok";
        return send_all(fd, R, sizeof R - 1);
    }
    if (!strcmp(path, "/garbage")) {
        static const char R[] = "SSH-2.0-OpenSSH_9.2\r\n";
        send_all(fd, R, sizeof R - 1);
        sleep_ms(100);
        return false;
    }
    if (!strcmp(path, "/huge-headers")) {
        static const char R[] = "HTTP/1.1 200 OK\r\nX-Big: ";
        send_all(fd, R, sizeof R - 1);
        char *v = malloc(70 * 1024);
        memset(v, 'a', 70 * 1024);
        send_all(fd, v, 70 * 1024);
        free(v);
        send_all(fd, "\r\n\r\n", 4);
        sleep_ms(100);
        return false;
    }
    if (!strcmp(path, "/silent")) { /* no answer; closed once the client goes, or after 600 ms */
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        poll(&pf, 1, 600);
        return false;
    }
    if (!strcmp(path, "/big")) { /* 1 MiB, as fast as the client takes it */
        static char B[1 << 20];
        memset(B, 'b', sizeof B);
        int k = snprintf(h, sizeof h, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", sizeof B);
        return send_all(fd, h, (size_t)k) && send_all(fd, B, sizeof B);
    }
    if (!strcmp(path, "/extra")) { /* an answer and bytes nobody asked for */
        static const char R[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n";
        return send_all(fd, R, sizeof R - 1);
    }
    static const char R[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    return send_all(fd, R, sizeof R - 1);
}

/* ---- a loop of the test's own -------------------------------------------------------------- */

typedef struct {
    long status;
    char headers[4096];
    char *body;
    size_t body_len;
    int heads, ends;
    h1_result result;
    bool hold;                 /* body returns false */
} outcome;

static void ev_head(void *ctx, long status, const char *h, size_t len)
{
    outcome *o = ctx;
    o->status = status;
    snprintf(o->headers, sizeof o->headers, "%.*s", (int)len, h);
    o->heads++;
}

static bool ev_body(void *ctx, const char *data, size_t len)
{
    outcome *o = ctx;
    o->body = realloc(o->body, o->body_len + len + 1);
    memcpy(o->body + o->body_len, data, len);
    o->body_len += len;
    o->body[o->body_len] = '\0';
    return !o->hold;
}

static void ev_end(void *ctx, h1_result r)
{
    outcome *o = ctx;
    o->result = r;
    o->ends++;
}

static const h1_events events = {ev_head, ev_body, ev_end};

static int ep = -1;
static h1_pool *P;

/* Run the pool until *ends is nonzero or ms passed. */
static void run(const int *ends, long ms)
{
    double until = now_ms() + (double)ms;
    while ((!ends || !*ends) && now_ms() < until) {
        long t = h1_pool_timeout(P);
        struct epoll_event evs[16];
        int n = epoll_wait(ep, evs, 16, t < 0 || t > 20 ? 20 : (int)t);
        for (int i = 0; i < n; i++) h1_pool_event(P, evs[i].data.u64, evs[i].events);
        h1_pool_run(P);
    }
}

/* One exchange, to the end; returns the outcome (free its body). */
static outcome exchange(const char *method, const char *path, const char *const *headers, const char *body,
                        long timeout_ms)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", up.port, path);
    h1_target t;
    assert_true(h1_target_parse(url, &t));
    h1_request rq = {.method = method, .headers = headers, .body = body, .body_len = body ? strlen(body) : 0,
                     .timeout_ms = timeout_ms};
    outcome o = {0};
    h1_xfer *x = h1_start(P, &t, &rq, &events, &o);
    run(&o.ends, 5000);
    h1_close(x);
    assert_int_equal(o.ends, 1);
    return o;
}

/* A TCP socket on a free port of 127.0.0.1, listening or (refusing connections) not; the
 * address in *a. */
static int loopback_socket(bool listening, struct sockaddr_in *a)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    *a = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof *a;
    assert_int_equal(bind(s, (struct sockaddr *)a, sizeof *a), 0);
    if (listening) assert_int_equal(listen(s, 4), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)a, &al), 0);
    return s;
}

static int setup(void **state)
{
    (void)state;
    ep = epoll_create1(EPOLL_CLOEXEC);
    P = h1_pool_new(ep);
    atomic_store(&calls, 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    h1_pool_free(P);
    close(ep);
    return 0;
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_target_parse(void **state)
{
    (void)state;
    h1_target t;
    assert_true(h1_target_parse("http://127.0.0.1:8080/a/b?c=d#frag", &t));
    assert_string_equal(t.authority, "127.0.0.1:8080");
    assert_int_equal(t.target_len, 8);
    assert_memory_equal(t.target, "/a/b?c=d", 8);
    assert_true(h1_target_parse("http://10.1.2.3", &t));
    assert_string_equal(t.authority, "10.1.2.3");
    assert_int_equal(t.target_len, 0);
    assert_true(h1_target_parse("http://[::1]:9000/x", &t));
    assert_string_equal(t.authority, "[::1]:9000");
    assert_int_equal(t.n_addrs, 1);
    assert_int_equal(t.addr[0].ss_family, AF_INET6);
    assert_true(h1_target_parse("http://[::1]/", &t));
    assert_string_equal(t.authority, "[::1]");
    /* not h1's: https, userinfo, bad ports, a name in brackets */
    assert_false(h1_target_parse("https://127.0.0.1/", &t));
    assert_false(h1_target_parse("http://[localhost]/", &t));
    assert_false(h1_target_parse("http://a%41.example/", &t));
    assert_false(h1_target_parse("http://user@127.0.0.1/", &t));
    assert_false(h1_target_parse("http://127.0.0.1:0/", &t));
    assert_false(h1_target_parse("http://127.0.0.1:65536/", &t));
    assert_false(h1_target_parse("http://127.0.0.1:/", &t));
    assert_false(h1_target_parse("http://127.0.0.1:8o/", &t));
    assert_false(h1_target_parse("http://[::1/", &t));
    assert_false(h1_target_parse("http://[::1]x/", &t));
    assert_false(h1_target_parse("http:///x", &t));
    assert_false(h1_target_parse(NULL, &t));
}

/* Three exchanges, one connection; the request as the caller's headers and h1's rules make it. */
/* A name (from /etc/hosts): not known at first (its lookup starts), then its addresses, IPv4
 * first. */
static void test_target_names(void **state)
{
    (void)state;
    h1_target t;
    double until = now_ms() + 5000;
    while (!h1_target_parse("http://localhost:8080/x", &t) && now_ms() < until) sleep_ms(10);
    assert_true(t.n_addrs >= 1);
    assert_string_equal(t.authority, "localhost:8080");
    assert_int_equal(t.addr[0].ss_family, AF_INET);
    const struct sockaddr_in *a = (const struct sockaddr_in *)&t.addr[0];
    assert_int_equal(ntohl(a->sin_addr.s_addr), INADDR_LOOPBACK);
    assert_int_equal(ntohs(a->sin_port), 8080);
    assert_true(h1_target_parse("http://LOCALHOST/", &t)); /* the same name, known now */
    assert_string_equal(t.authority, "LOCALHOST");
    assert_int_equal(ntohs(((const struct sockaddr_in *)&t.addr[0])->sin_port), 80);
    /* (A name that does not resolve is not tried here: its lookup would ask a DNS server, and
     * tests talk to 127.0.0.1 only.) */
}

/* Of several addresses, one refusing: the next takes the connection, and later connections go
 * to that one first. */
static void test_address_fallback(void **state)
{
    (void)state;
    struct sockaddr_in a;
    int s = loopback_socket(false, &a); /* connecting is refused there */
    h1_target t = {.n_addrs = 2, .target = "/close", .target_len = 6};
    memcpy(&t.addr[0], &a, sizeof a);
    a.sin_port = htons((uint16_t)up.port);
    memcpy(&t.addr[1], &a, sizeof a);
    t.addr_len[0] = t.addr_len[1] = sizeof a;
    snprintf(t.authority, sizeof t.authority, "backend.test");
    h1_request rq = {.timeout_ms = 2000};
    for (int i = 0; i < 2; i++) {
        size_t opened = h1_pool_opened(P);
        outcome o = {0};
        h1_xfer *x = h1_start(P, &t, &rq, &events, &o);
        run(&o.ends, 3000);
        h1_close(x);
        assert_int_equal(o.result, H1_OK);
        assert_string_equal(o.body, "ok");
        free(o.body);
        if (i == 1) assert_int_equal(h1_pool_opened(P), opened + 1); /* straight to the good one */
    }
    assert_non_null(strstr(seen, "\r\nHost: backend.test\r\n"));
    close(s);
}

static void test_keepalive_and_request(void **state)
{
    (void)state;
    const char *const hdrs[] = {"Accept:", "X-One: 1", "Content-Length: 99", "Transfer-Encoding: chunked",
                                "X-Bad: a\r\nX-Injected: b", "X-Two:   two", "X-Empty;", "Not a header", NULL};
    for (int i = 0; i < 3; i++) {
        outcome o = exchange(NULL, "/hello", hdrs, NULL, 2000);
        assert_int_equal(o.result, H1_OK);
        assert_int_equal(o.status, 200);
        assert_int_equal(o.heads, 1);
        assert_string_equal(o.headers, "Content-Length: 5\r\nX-Test: yes\r\n");
        assert_string_equal(o.body, "hello");
        free(o.body);
    }
    assert_int_equal(h1_pool_opened(P), 1);
    assert_int_equal(h1_pool_idle(P), 1);
    pthread_mutex_lock(&seen_mu);
    char s[8192];
    snprintf(s, sizeof s, "%s", seen);
    pthread_mutex_unlock(&seen_mu);
    char want[256];
    snprintf(want, sizeof want, "GET /hello HTTP/1.1\r\nX-One: 1\r\nX-Two:   two\r\nX-Empty:\r\nHost: 127.0.0.1:%u\r\n\r\n", up.port);
    assert_string_equal(s, want);
}

static void test_post_and_chunked(void **state)
{
    (void)state;
    outcome o = exchange(NULL, "/echo", NULL, "{\"a\":1}", 2000); /* a body: POST */
    assert_int_equal(o.result, H1_OK);
    assert_int_equal(o.status, 201);
    assert_string_equal(o.body, "{\"a\":1}");
    free(o.body);
    assert_non_null(strstr(seen, "POST /echo HTTP/1.1\r\n"));
    assert_non_null(strstr(seen, "\r\nContent-Length: 7\r\n"));
    o = exchange("POST", "/echo", NULL, NULL, 2000); /* POST without one: length 0 */
    assert_int_equal(o.result, H1_OK);
    assert_int_equal(o.body_len, 0);
    assert_non_null(strstr(seen, "\r\nContent-Length: 0\r\n"));
    o = exchange(NULL, "/chunked", NULL, NULL, 2000);
    assert_int_equal(o.result, H1_OK);
    assert_string_equal(o.body, "hello world"); /* the chunked coding is gone */
    free(o.body);
    o = exchange(NULL, "/trailers", NULL, NULL, 2000);
    assert_int_equal(o.result, H1_OK);
    assert_string_equal(o.body, "abc");
    assert_string_equal(o.headers, "Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n"); /* not the trailer, */
    /* which is not held to the header block's bound either (http_parser's own bound applies) */
    free(o.body);
    assert_int_equal(h1_pool_opened(P), 1);
}

/* A server that closes, now or later: the next exchange opens another connection. */
static void test_server_closes(void **state)
{
    (void)state;
    outcome o = exchange(NULL, "/close", NULL, NULL, 2000);
    assert_int_equal(o.result, H1_OK);
    free(o.body);
    assert_int_equal(h1_pool_idle(P), 0);
    o = exchange(NULL, "/idle-close", NULL, NULL, 2000);
    assert_int_equal(o.result, H1_OK);
    free(o.body);
    assert_int_equal(h1_pool_idle(P), 1);
    run(NULL, 200); /* the server closes the idle connection: it is dropped */
    assert_int_equal(h1_pool_idle(P), 0);
    o = exchange(NULL, "/hello", NULL, NULL, 2000);
    assert_int_equal(o.result, H1_OK);
    free(o.body);
    assert_int_equal(h1_pool_opened(P), 3);
}

/* The kept connection closes as the request arrives, before any answer: sent again on a new
 * one, once. A fresh connection closed without an answer is a failure. */
static void test_resent_once(void **state)
{
    (void)state;
    outcome o = exchange(NULL, "/race", NULL, NULL, 2000);
    assert_int_equal(o.result, H1_OK);
    free(o.body);
    o = exchange(NULL, "/race", NULL, NULL, 2000);
    assert_int_equal(o.result, H1_OK);
    assert_string_equal(o.body, "ok");
    free(o.body);
    assert_int_equal(atomic_load(&calls), 3);
    assert_int_equal(h1_pool_opened(P), 2);
    o = exchange(NULL, "/nothing", NULL, NULL, 2000); /* on the kept one: once more, then given up */
    assert_int_equal(o.result, H1_NOTHING);
    assert_int_equal(o.heads, 0);
    assert_int_equal(h1_pool_opened(P), 3);
}

static void test_cut_short_and_until_close(void **state)
{
    (void)state;
    outcome o = exchange(NULL, "/short", NULL, NULL, 2000);
    assert_int_equal(o.heads, 1);
    assert_int_equal(o.result, H1_RECV);
    assert_string_equal(o.body, "hello");
    free(o.body);
    o = exchange(NULL, "/until-close", NULL, NULL, 2000);
    assert_int_equal(o.result, H1_OK);
    assert_string_equal(o.body, "all of it");
    free(o.body);
    assert_int_equal(h1_pool_idle(P), 0);
}

static void test_head_and_interim(void **state)
{
    (void)state;
    outcome o = exchange("HEAD", "/head", NULL, NULL, 2000);
    assert_int_equal(o.result, H1_OK);
    assert_int_equal(o.status, 200);
    assert_int_equal(o.body_len, 0);
    assert_int_equal(h1_pool_idle(P), 1); /* no body was waited for: kept */
    o = exchange(NULL, "/continue", NULL, NULL, 2000);
    assert_int_equal(o.result, H1_OK);
    assert_int_equal(o.heads, 1);
    assert_int_equal(o.status, 200);
    assert_string_equal(o.headers, "Content-Length: 2\r\nX-Final: 1\r\n");
    free(o.body);
    assert_int_equal(h1_pool_opened(P), 1);
}

static void test_bad_answers(void **state)
{
    (void)state;
    outcome o = exchange(NULL, "/garbage", NULL, NULL, 2000);
    assert_int_equal(o.result, H1_PROTOCOL);
    assert_int_equal(o.heads, 0);
    o = exchange(NULL, "/huge-headers", NULL, NULL, 2000);
    assert_int_equal(o.result, H1_TOO_LARGE);
    assert_int_equal(o.heads, 0);
    o = exchange(NULL, "/extra", NULL, NULL, 2000); /* fine, but the connection is not kept */
    assert_int_equal(o.result, H1_OK);
    assert_string_equal(o.body, "ok");
    free(o.body);
    assert_int_equal(h1_pool_idle(P), 0);
}

static void test_timeout_and_refused(void **state)
{
    (void)state;
    double t0 = now_ms();
    outcome o = exchange(NULL, "/silent", NULL, NULL, 200);
    assert_int_equal(o.result, H1_TIMEOUT);
    assert_true(now_ms() - t0 < 550);
    assert_int_equal(h1_pool_idle(P), 0);
    struct sockaddr_in a;
    int s = loopback_socket(false, &a); /* a port nobody listens on */
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", ntohs(a.sin_port));
    h1_target t;
    assert_true(h1_target_parse(url, &t));
    h1_request rq = {.timeout_ms = 2000};
    o = (outcome){0};
    h1_xfer *x = h1_start(P, &t, &rq, &events, &o);
    run(&o.ends, 3000);
    h1_close(x);
    close(s);
    assert_int_equal(o.ends, 1);
    assert_int_equal(o.result, H1_CONNECT);
}

/* A reader that holds: the connection is not read past what came with one read, until
 * resumed; then the rest comes whole. */
static void test_hold_and_resume(void **state)
{
    (void)state;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/big", up.port);
    h1_target t;
    assert_true(h1_target_parse(url, &t));
    h1_request rq = {.timeout_ms = 10000};
    outcome o = {.hold = true};
    h1_xfer *x = h1_start(P, &t, &rq, &events, &o);
    run(NULL, 300);
    assert_int_equal(o.heads, 1);
    assert_int_equal(o.ends, 0);
    assert_true(o.body_len > 0);
    assert_true(o.body_len <= 16384);
    o.hold = false;
    h1_resume(x);
    run(&o.ends, 5000);
    h1_close(x);
    assert_int_equal(o.result, H1_OK);
    assert_int_equal(o.body_len, 1 << 20);
    free(o.body);
}

/* A server that answers as soon as it has a request's head, then reads the rest of the body
 * slowly: the answer is the client's, but the connection is not kept (the rest of the body is
 * still in it, or still to go). */
static int early_lfd;
static atomic_long early_read;
static void *early_server(void *arg)
{
    (void)arg;
    int fd = accept(early_lfd, NULL, NULL);
    if (fd < 0) return NULL;
    char buf[65536];
    ssize_t k = recv(fd, buf, sizeof buf, 0); /* the head and the body's start */
    static const char R[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly";
    send_all(fd, R, sizeof R - 1);
    sleep_ms(300);
    while (k > 0) { /* then the rest, until the client goes */
        atomic_fetch_add(&early_read, k);
        k = recv(fd, buf, sizeof buf, 0);
    }
    close(fd);
    return NULL;
}

static void test_answer_before_body(void **state)
{
    (void)state;
    struct sockaddr_in a;
    early_lfd = loopback_socket(true, &a);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, early_server, NULL), 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/upload", ntohs(a.sin_port));
    h1_target tg;
    assert_true(h1_target_parse(url, &tg));
    size_t big = 32u << 20; /* more than the socket buffers on the way take at once */
    char *body = malloc(big + 1);
    memset(body, 'u', big);
    body[big] = '\0';
    h1_request rq = {.method = "PUT", .body = body, .body_len = big, .timeout_ms = 5000};
    outcome o = {0};
    h1_xfer *x = h1_start(P, &tg, &rq, &events, &o);
    run(&o.ends, 5000);
    h1_close(x);
    assert_int_equal(o.ends, 1);
    assert_int_equal(o.result, H1_OK);
    assert_string_equal(o.body, "early");
    free(o.body);
    assert_int_equal(h1_pool_idle(P), 0); /* not kept: the body had not all gone */
    pthread_join(t, NULL);
    assert_true(atomic_load(&early_read) < (long)big);
    close(early_lfd);
    free(body);
}

/* Closed mid-way: no event after, the connection closed (the server sees it go). */
static void test_close_unfinished(void **state)
{
    (void)state;
    sleep_ms(200); /* connections of earlier tests, closed by their pool's free, are counted */
    int closes0 = atomic_load(&up.closes);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/silent", up.port);
    h1_target t;
    assert_true(h1_target_parse(url, &t));
    h1_request rq = {.timeout_ms = 10000};
    outcome o = {0};
    h1_xfer *x = h1_start(P, &t, &rq, &events, &o);
    run(NULL, 100);
    h1_close(x);
    h1_xfer *q = h1_start(P, &t, &rq, &events, &o); /* and one closed before it even went out */
    h1_close(q);
    run(NULL, 300);
    assert_int_equal(o.ends, 0);
    assert_int_equal(o.heads, 0);
    assert_int_equal(atomic_load(&up.closes), closes0 + 1);
    assert_int_equal(h1_pool_idle(P), 0);
    assert_int_equal(h1_pool_opened(P), 1);
}

int main(void)
{
    up.serve = serve;
    up.saw = saw;
    if (!test_upstream_start(&up)) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_target_parse),
        cmocka_unit_test(test_target_names),
        cmocka_unit_test_setup_teardown(test_address_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_and_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_and_chunked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resent_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_short_and_until_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_and_interim, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_and_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hold_and_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_unfinished, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answer_before_body, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
