/* Unit tests for core/http_client's asynchronous transfers (httpc_async_*), against a small
 * HTTP/1.1 server written here on raw sockets, so that the test sees what the client does on
 * the wire: how many connections it opens, how far the upstream got with a big body while the
 * reader was slow, when a cancelled connection is closed. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include "core/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BIG_SIZE (32L * 1024 * 1024)

static atomic_long big_sent;

/* ---- the test server: one thread per connection, keep-alive ---------------------------- */

/* Serve one request from the head in req (body, if any, already read into body). */
static bool serve(int fd, const char *path, const char *body, size_t blen)
{
    char h[256];
    if (!strcmp(path, "/hello")) {
        static const char R[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: yes\r\n\r\nhello";
        return send_all(fd, R, sizeof R - 1);
    }
    if (!strcmp(path, "/slow")) { /* as /hello, 100 ms later: transfers started together overlap */
        static const char R[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        sleep_ms(100);
        return send_all(fd, R, sizeof R - 1);
    }
    if (!strcmp(path, "/echo")) {
        int n = snprintf(h, sizeof h, "HTTP/1.1 201 Created\r\nContent-Length: %zu\r\n\r\n", blen);
        return send_all(fd, h, (size_t)n) && send_all(fd, body, blen);
    }
    if (!strcmp(path, "/chunked")) { /* five pieces, 50 ms apart */
        static const char H[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n";
        if (!send_all(fd, H, sizeof H - 1)) return false;
        for (int i = 0; i < 5; i++) {
            char piece[64];
            int n = snprintf(piece, sizeof piece, "data: %d\n\n", i);
            int k = snprintf(h, sizeof h, "%x\r\n%s\r\n", n, piece);
            if (!send_all(fd, h, (size_t)k)) return false;
            sleep_ms(50);
        }
        return send_all(fd, "0\r\n\r\n", 5);
    }
    if (!strcmp(path, "/big")) { /* BIG_SIZE bytes, byte i = i % 251 */
        int n = snprintf(h, sizeof h, "HTTP/1.1 200 OK\r\nContent-Length: %ld\r\n\r\n", BIG_SIZE);
        if (!send_all(fd, h, (size_t)n)) return false;
        static char block[65536];
        for (long off = 0; off < BIG_SIZE; off += (long)sizeof block) {
            for (size_t i = 0; i < sizeof block; i++) block[i] = (char)((off + (long)i) % 251);
            if (!send_all(fd, block, sizeof block)) return false;
            atomic_store(&big_sent, off + (long)sizeof block);
        }
        return true;
    }
    if (!strcmp(path, "/stall")) { /* headers, a little body, then nothing for 3 s */
        static const char H[] = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc";
        if (!send_all(fd, H, sizeof H - 1)) return false;
        sleep_ms(3000);
        return false;
    }
    if (!strcmp(path, "/hang")) { /* nothing at all until the client goes */
        char c;
        while (recv(fd, &c, 1, 0) > 0) {}
        return false;
    }
    if (!strcmp(path, "/early")) { /* answers at once, reads nothing of the body, closes */
        static const char R[] = "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno";
        send_all(fd, R, sizeof R - 1);
        return false;
    }
    static const char NF[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    return send_all(fd, NF, sizeof NF - 1);
}

static test_upstream up = {.serve = serve, .unread_prefix = "/early"};

static int group_setup(void **state)
{
    (void)state;
    httpc_global_init();
    if (!test_upstream_start(&up)) fail_msg("cannot listen");
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

typedef struct {
    sem_t sem;
    atomic_int notes;
} waiter;

static void note(void *ctx)
{
    waiter *w = ctx;
    atomic_fetch_add(&w->notes, 1);
    sem_post(&w->sem);
}

/* Wait (at most 5 s) for a notify. */
static void wait_note(waiter *w)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 5;
    if (sem_timedwait(&w->sem, &ts) != 0) fail_msg("no notify within 5 s");
}

static httpc_async *start(const char *path, long timeout_ms, waiter *w)
{
    char url[128], err[256] = "";
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", up.port, path);
    httpc_request rq = {.url = url, .timeout_ms = timeout_ms};
    sem_init(&w->sem, 0, 0);
    atomic_init(&w->notes, 0);
    httpc_async *a = httpc_async_start(&rq, note, w, err, sizeof err);
    if (!a) fail_msg("httpc_async_start: %s", err);
    return a;
}

/* Headers, the event-driven way: poll, and wait for a notify while WAITING. */
static httpc_async_state headers(httpc_async *a, waiter *w)
{
    httpc_async_state st;
    while ((st = httpc_async_poll(a)) == HTTPC_ASYNC_WAITING) wait_note(w);
    return st;
}

/* The whole body into out (cap bytes at most); the number of HTTPC_AGAIN answers in *agains. */
static long body(httpc_async *a, waiter *w, char *out, size_t cap, int *agains)
{
    size_t n = 0;
    for (;;) {
        char buf[4096];
        long k = httpc_async_read(a, buf, sizeof buf);
        if (k == HTTPC_AGAIN) {
            if (agains) (*agains)++;
            wait_note(w);
            continue;
        }
        if (k <= 0) return k < 0 ? -1 : (long)n;
        if (out && n + (size_t)k <= cap) memcpy(out + n, buf, (size_t)k);
        n += (size_t)k;
    }
}

static void wait_for(atomic_int *v, int want)
{
    for (int i = 0; i < 300 && atomic_load(v) < want; i++) sleep_ms(10);
    assert_true(atomic_load(v) >= want);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_basic(void **state)
{
    (void)state;
    waiter w;
    httpc_async *a = start("/hello", 5000, &w);
    assert_int_equal(headers(a, &w), HTTPC_ASYNC_HEADERS);
    assert_int_equal(httpc_async_status(a), 200);
    assert_non_null(strstr(httpc_async_headers(a), "X-Test: yes\r\n"));
    assert_null(strstr(httpc_async_headers(a), "HTTP/1.1")); /* no status line */
    char out[16] = "";
    assert_int_equal(body(a, &w, out, sizeof out - 1, NULL), 5);
    assert_string_equal(out, "hello");
    assert_int_equal(httpc_async_read(a, out, sizeof out), 0); /* the end stays the end */
    httpc_async_close(a);
}

/* A POST body is copied at start: the caller's buffer may go right away. */
static void test_post_body_copied(void **state)
{
    (void)state;
    char url[128], err[256], *b = strdup("payload-123");
    snprintf(url, sizeof url, "http://127.0.0.1:%u/echo", up.port);
    waiter w;
    sem_init(&w.sem, 0, 0);
    httpc_request rq = {.url = url, .method = "POST", .body = b, .body_len = strlen(b)};
    httpc_async *a = httpc_async_start(&rq, note, &w, err, sizeof err);
    memset(b, 'x', strlen(b));
    free(b);
    assert_non_null(a);
    assert_int_equal(httpc_async_wait(a, NULL), HTTPC_ASYNC_HEADERS); /* the blocking variant */
    assert_int_equal(httpc_async_status(a), 201);
    char out[32] = "";
    assert_int_equal(body(a, &w, out, sizeof out - 1, NULL), 11);
    assert_string_equal(out, "payload-123");
    httpc_async_close(a);
}

/* Transfers one after another reuse one kept-alive connection. */
static void test_keepalive_reuse(void **state)
{
    (void)state;
    waiter w;
    httpc_async *a = start("/hello", 5000, &w); /* make sure one connection is open */
    headers(a, &w);
    body(a, &w, NULL, 0, NULL);
    httpc_async_close(a);
    int before = atomic_load(&up.accepts);
    for (int i = 0; i < 10; i++) {
        a = start("/hello", 5000, &w);
        assert_int_equal(headers(a, &w), HTTPC_ASYNC_HEADERS);
        assert_int_equal(body(a, &w, NULL, 0, NULL), 5);
        httpc_async_close(a);
    }
    assert_int_equal(atomic_load(&up.accepts), before);
}

/* N transfers at once, each read to its end and closed. */
static void burst(const char *path, int n)
{
    waiter *w = calloc((size_t)n, sizeof *w);
    httpc_async **a = calloc((size_t)n, sizeof *a);
    for (int i = 0; i < n; i++) a[i] = start(path, 5000, &w[i]);
    for (int i = 0; i < n; i++) {
        assert_int_equal(headers(a[i], &w[i]), HTTPC_ASYNC_HEADERS);
        assert_int_equal(body(a[i], &w[i], NULL, 0, NULL), 5);
        httpc_async_close(a[i]);
        sem_destroy(&w[i].sem);
    }
    free(a);
    free(w);
}

/* The connections a busy moment opened stay open for the next one, however few transfers ran
 * in between (libcurl's default cache holds 4 per transfer in progress, so one quiet transfer
 * closed all but 4 of them and the next burst connected anew: a gateway under load opened one
 * connection per 100 requests), and however many ran at once. */
static void test_keepalive_bursts(void **state)
{
    (void)state;
    burst("/slow", 32);
    int before = atomic_load(&up.accepts);
    burst("/hello", 1);
    burst("/slow", 32);
    assert_int_equal(atomic_load(&up.accepts), before);
    /* More at once than any fixed cache size (256 per loop): a limit below the transfers in
     * flight closed nearly every connection as its transfer ended. */
    burst("/slow", 300);
    before = atomic_load(&up.accepts);
    burst("/slow", 300);
    assert_int_equal(atomic_load(&up.accepts), before);
}

/* A chunked answer arrives piece by piece: the reader is told "again" and notified. */
static void test_streaming(void **state)
{
    (void)state;
    waiter w;
    httpc_async *a = start("/chunked", 5000, &w);
    assert_int_equal(headers(a, &w), HTTPC_ASYNC_HEADERS);
    assert_non_null(strstr(httpc_async_headers(a), "text/event-stream"));
    char out[256] = "";
    int agains = 0;
    assert_int_equal(body(a, &w, out, sizeof out - 1, &agains), 5 * 9);
    assert_string_equal(out, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n");
    assert_true(agains >= 3); /* the pieces came 50 ms apart */
    assert_true(atomic_load(&w.notes) >= agains);
    httpc_async_close(a);
}

/* Many at once on the one client thread. */
static void test_concurrent(void **state)
{
    (void)state;
    enum { N = 24 };
    waiter w[N];
    httpc_async *a[N];
    for (int i = 0; i < N; i++) a[i] = start("/chunked", 5000, &w[i]);
    for (int i = 0; i < N; i++) {
        assert_int_equal(headers(a[i], &w[i]), HTTPC_ASYNC_HEADERS);
        assert_int_equal(body(a[i], &w[i], NULL, 0, NULL), 5 * 9);
        httpc_async_close(a[i]);
    }
}

/* A reader that does not read: the buffer stays bounded and the upstream is held back (the
 * transfer is paused); reading on resumes it and every byte arrives in order. */
static void test_backpressure(void **state)
{
    (void)state;
    waiter w;
    atomic_store(&big_sent, 0);
    httpc_async *a = start("/big", 0, &w);
    assert_int_equal(headers(a, &w), HTTPC_ASYNC_HEADERS);
    sleep_ms(500);
    size_t held = httpc_async_buffered(a);
    assert_true(held <= HTTPC_ASYNC_BUFFER + 16384);
    assert_true(held > 0);
    long sent = atomic_load(&big_sent);
    sleep_ms(300);
    assert_int_equal(atomic_load(&big_sent), sent); /* stuck: the client stopped reading */
    assert_true(sent < BIG_SIZE);
    long total = 0;
    bool ok = true;
    for (;;) {
        char buf[16384];
        long k = httpc_async_read(a, buf, sizeof buf);
        if (k == HTTPC_AGAIN) {
            wait_note(&w);
            continue;
        }
        if (k <= 0) {
            assert_int_equal(k, 0);
            break;
        }
        for (long i = 0; i < k; i++) ok = ok && buf[i] == (char)((total + i) % 251);
        total += k;
        if (httpc_async_buffered(a) > HTTPC_ASYNC_BUFFER + 16384) ok = false;
    }
    assert_true(ok);
    assert_int_equal(total, BIG_SIZE);
    httpc_async_close(a);
}

/* No answer within the timeout: FAILED, HTTPC_TIMEOUT, in about the time asked. */
static void test_timeout_before_headers(void **state)
{
    (void)state;
    waiter w;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    httpc_async *a = start("/hang", 300, &w);
    assert_int_equal(headers(a, &w), HTTPC_ASYNC_FAILED);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(ms >= 250 && ms < 2000);
    char err[256];
    assert_int_equal(httpc_async_error(a, err, sizeof err), HTTPC_TIMEOUT);
    assert_non_null(strstr(err, "127.0.0.1"));
    httpc_async_close(a);
}

/* The timeout bounds the body too: a read fails (-1) after the first bytes. */
static void test_timeout_mid_body(void **state)
{
    (void)state;
    waiter w;
    httpc_async *a = start("/stall", 400, &w);
    assert_int_equal(headers(a, &w), HTTPC_ASYNC_HEADERS);
    char out[16] = "";
    assert_int_equal(body(a, &w, out, sizeof out, NULL), -1);
    assert_memory_equal(out, "abc", 3);
    char err[256];
    assert_int_equal(httpc_async_error(a, err, sizeof err), HTTPC_TIMEOUT);
    httpc_async_close(a);
}

/* Closing an unfinished transfer closes its connection (the upstream sees it go) and no
 * notify comes afterwards. */
static void test_cancel(void **state)
{
    (void)state;
    waiter w;
    int c0 = atomic_load(&up.closes);
    httpc_async *a = start("/hang", 0, &w);
    assert_int_equal(httpc_async_poll(a), HTTPC_ASYNC_WAITING);
    atomic_bool cancel;
    atomic_init(&cancel, true);
    assert_int_equal(httpc_async_wait(a, &cancel), HTTPC_ASYNC_WAITING); /* gives up at once */
    sleep_ms(100);
    httpc_async_close(a);
    wait_for(&up.closes, c0 + 1);
    int notes = atomic_load(&w.notes);
    sleep_ms(100);
    assert_int_equal(atomic_load(&w.notes), notes);

    /* and mid-body */
    c0 = atomic_load(&up.closes);
    a = start("/big", 0, &w);
    assert_int_equal(headers(a, &w), HTTPC_ASYNC_HEADERS);
    char buf[1024];
    while (httpc_async_read(a, buf, sizeof buf) == HTTPC_AGAIN) wait_note(&w);
    httpc_async_close(a);
    wait_for(&up.closes, c0 + 1);
}

/* ---- streamed request bodies (body_read) ------------------------------------------------- */

/* A body handed over by a producer thread piece by piece, as a proxy gets it from its client. */
typedef struct {
    pthread_mutex_t mu;
    char data[12000];
    size_t have, taken;          /* produced, read by the transfer */
    bool end, fail;
    int agains, over;            /* HTTPC_AGAIN answers; calls with buf NULL */
    httpc_async *a;
    int pieces, gap_ms;
} producer;

static long produced(void *ctx, char *buf, size_t max)
{
    producer *p = ctx;
    pthread_mutex_lock(&p->mu);
    long n;
    if (!buf) {
        p->over++;
        n = 0;
    } else if (p->taken < p->have) {
        size_t k = p->have - p->taken < max ? p->have - p->taken : max;
        memcpy(buf, p->data + p->taken, k);
        p->taken += k;
        n = (long)k;
    } else if (p->fail) {
        n = -1;
    } else if (p->end) {
        n = 0;
    } else {
        p->agains++;
        n = HTTPC_AGAIN;
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

static void *produce(void *arg)
{
    producer *p = arg;
    size_t piece = sizeof p->data / (size_t)p->pieces;
    for (int i = 0; i < p->pieces; i++) {
        sleep_ms(p->gap_ms);
        pthread_mutex_lock(&p->mu);
        p->have += piece;
        if (i == p->pieces - 1) p->end = true;
        if (i == 1 && p->fail) p->have = piece; /* fail: nothing after the first piece */
        pthread_mutex_unlock(&p->mu);
        httpc_async_body_ready(p->a); /* from another thread than the client's */
    }
    return NULL;
}

static httpc_async *start_upload(const char *path, producer *p, waiter *w, pthread_t *t)
{
    char url[128], err[256] = "";
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", up.port, path);
    pthread_mutex_init(&p->mu, NULL);
    for (size_t i = 0; i < sizeof p->data; i++) p->data[i] = (char)('a' + i % 26);
    httpc_request rq = {.url = url, .method = "PUT", .body_len = sizeof p->data, .body_read = produced,
                        .body_ctx = p, .timeout_ms = 5000};
    sem_init(&w->sem, 0, 0);
    atomic_init(&w->notes, 0);
    p->a = httpc_async_start(&rq, note, w, err, sizeof err);
    if (!p->a) fail_msg("httpc_async_start: %s", err);
    pthread_create(t, NULL, produce, p);
    return p->a;
}

/* The upload waits for the producer between pieces and arrives whole. */
static void test_body_read(void **state)
{
    (void)state;
    producer p = {.pieces = 6, .gap_ms = 30};
    waiter w;
    pthread_t t;
    httpc_async *a = start_upload("/echo", &p, &w, &t);
    assert_int_equal(headers(a, &w), HTTPC_ASYNC_HEADERS);
    assert_int_equal(httpc_async_status(a), 201);
    static char out[sizeof p.data];
    assert_int_equal(body(a, &w, out, sizeof out, NULL), (long)sizeof p.data);
    assert_memory_equal(out, p.data, sizeof p.data);
    pthread_join(t, NULL);
    assert_true(p.agains > 0); /* it did wait for the producer */
    assert_int_equal(p.over, 0); /* read to its end: no "over" call */
    httpc_async_close(a);
    pthread_mutex_destroy(&p.mu);
}

/* A body that fails (the proxy's client went away) fails the transfer. */
static void test_body_read_fails(void **state)
{
    (void)state;
    producer p = {.pieces = 4, .gap_ms = 20, .fail = true};
    waiter w;
    pthread_t t;
    httpc_async *a = start_upload("/echo", &p, &w, &t);
    assert_int_equal(headers(a, &w), HTTPC_ASYNC_FAILED);
    char err[256];
    assert_int_equal(httpc_async_error(a, err, sizeof err), HTTPC_ERROR);
    pthread_join(t, NULL);
    httpc_async_close(a);
    pthread_mutex_destroy(&p.mu);
}

/* An upstream that answers without reading the body: the answer comes, the transfer ends
 * (no waiting for the rest of the body), and the reader is told nothing more will be read. */
static void test_body_read_unread(void **state)
{
    (void)state;
    producer p = {.pieces = 3, .gap_ms = 150};
    waiter w;
    pthread_t t;
    httpc_async *a = start_upload("/early", &p, &w, &t);
    assert_int_equal(headers(a, &w), HTTPC_ASYNC_HEADERS);
    assert_int_equal(httpc_async_status(a), 403);
    char out[8] = "";
    assert_int_equal(body(a, &w, out, sizeof out - 1, NULL), 2);
    pthread_mutex_lock(&p.mu);
    assert_int_equal(p.over, 1);
    pthread_mutex_unlock(&p.mu);
    pthread_join(t, NULL); /* its body_ready calls after the end are harmless */
    httpc_async_close(a);
    pthread_mutex_destroy(&p.mu);
}

static void test_connect_refused(void **state)
{
    (void)state;
    char err[256] = "";
    waiter w;
    sem_init(&w.sem, 0, 0);
    httpc_request rq = {.url = "http://127.0.0.1:1/x", .timeout_ms = 2000};
    httpc_async *a = httpc_async_start(&rq, note, &w, err, sizeof err);
    assert_non_null(a);
    assert_int_equal(headers(a, &w), HTTPC_ASYNC_FAILED);
    assert_int_equal(httpc_async_error(a, err, sizeof err), HTTPC_CONNECT);
    assert_non_null(strstr(err, "127.0.0.1:1"));
    char buf[8];
    assert_int_equal(httpc_async_read(a, buf, sizeof buf), -1);
    httpc_async_close(a);
    httpc_async_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_post_body_copied),
        cmocka_unit_test(test_keepalive_reuse),
        cmocka_unit_test(test_keepalive_bursts),
        cmocka_unit_test(test_streaming),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_timeout_before_headers),
        cmocka_unit_test(test_timeout_mid_body),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_body_read),
        cmocka_unit_test(test_body_read_fails),
        cmocka_unit_test(test_body_read_unread),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
