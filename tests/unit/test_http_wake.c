/* Unit tests for waiting without a thread in core/http_server (opts.async: http_wait,
 * http_wake, HTTP_STREAM_AGAIN), on real sockets: a server with ONE pool thread, producers on
 * threads of their own, clients through core/http_client. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include "core/http_client.h"
#include "core/http_server.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static http_server *srv;
static char base[64];
static atomic_int dones, waited_ok, waited_cancelled, live_producers;

/* A producer: a thread that makes `count` pieces, one every `every_ms`, and wakes the
 * request's waker after each (count < 0: forever; every_ms < 0: never a piece). */
typedef struct {
    pthread_mutex_t mu;
    pthread_t t;
    http_waker *w;
    int count, every_ms, made, sent;
    bool stop;
} producer;

static void *producer_main(void *arg)
{
    producer *p = arg;
    for (;;) {
        sleep_ms(p->every_ms > 0 ? p->every_ms : 20);
        pthread_mutex_lock(&p->mu);
        bool stop = p->stop || (p->count >= 0 && p->made >= p->count);
        if (!stop && p->every_ms >= 0) p->made++;
        pthread_mutex_unlock(&p->mu);
        if (stop) break;
        if (p->every_ms >= 0) http_wake(p->w);
    }
    http_wake(p->w); /* the end, if it is one */
    return NULL;
}

static producer *producer_start(http_req *r, int count, int every_ms)
{
    producer *p = calloc(1, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    p->w = http_req_waker(r);
    p->count = count;
    p->every_ms = every_ms;
    atomic_fetch_add(&live_producers, 1);
    pthread_create(&p->t, NULL, producer_main, p);
    return p;
}

/* The stream's done: stop the producer (no wake after this returns) and free it. */
static void producer_done(void *ctx)
{
    producer *p = ctx;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->t, NULL);
    pthread_mutex_destroy(&p->mu);
    free(p);
    atomic_fetch_add(&dones, 1);
    atomic_fetch_sub(&live_producers, 1);
}

static long producer_read(void *ctx, char *buf, size_t max)
{
    producer *p = ctx;
    pthread_mutex_lock(&p->mu);
    long n;
    if (p->sent < p->made) n = snprintf(buf, max, "piece %d\n", p->sent++);
    else if (p->count >= 0 && p->sent >= p->count) n = 0;
    else n = HTTP_STREAM_AGAIN;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* http_wait's fn: answer once the producer made its first piece, else wait on. */
static void resumed(http_req *r, void *arg, bool cancelled)
{
    producer *p = arg;
    if (cancelled) {
        atomic_fetch_add(&waited_cancelled, 1);
        producer_done(p);
        return;
    }
    pthread_mutex_lock(&p->mu);
    bool ready = p->made > 0;
    pthread_mutex_unlock(&p->mu);
    if (!ready) {
        if (!http_wait(r, resumed, p)) http_reply_text(r, 500, "could not wait");
        return;
    }
    atomic_fetch_add(&waited_ok, 1);
    producer_done(p);
    http_reply_text(r, 200, "waited");
}

static int query_int(http_req *r, const char *name, int dflt)
{
    const char *v = http_req_query(r, name);
    return v ? atoi(v) : dflt;
}

static void handler(http_req *r, void *ctx)
{
    (void)ctx;
    const char *p = http_req_path(r);
    if (!strcmp(p, "/fast")) {
        http_reply_text(r, 200, "fast");
    } else if (!strcmp(p, "/wait")) { /* the answer once a producer (every ms) made one piece */
        producer *pr = producer_start(r, 1, query_int(r, "ms", 100));
        if (!http_wait(r, resumed, pr)) {
            producer_done(pr);
            http_reply_text(r, 500, "could not wait");
        }
    } else if (!strcmp(p, "/wait-early")) { /* a wake before the wait: no suspend at all */
        http_wake(http_req_waker(r));
        producer *pr = producer_start(r, 1, 1);
        sleep_ms(50); /* the piece is made and woken before http_wait is called */
        if (!http_wait(r, resumed, pr)) {
            producer_done(pr);
            http_reply_text(r, 500, "could not wait");
        }
    } else if (!strcmp(p, "/ticks")) { /* n pieces, one every ms; n < 0: forever; ms < 0: none */
        producer *pr = producer_start(r, query_int(r, "n", 5), query_int(r, "ms", 20));
        http_add_header(r, "X-Ticks", "yes");
        http_reply_stream(r, 200, "text/plain", producer_read, pr, producer_done);
    } else {
        http_reply_text(r, 404, "no");
    }
}

static http_server *start_server(char *b, size_t blen)
{
    char err[256] = "";
    http_server_opts o = {.listen = "127.0.0.1:0", .threads = 1, .async = true, .timeout_s = 5};
    http_server *s = http_server_start(&o, handler, NULL, err, sizeof err);
    if (!s) fail_msg("http_server_start: %s", err);
    snprintf(b, blen, "http://127.0.0.1:%u", http_server_port(s));
    return s;
}

static int group_setup(void **state)
{
    (void)state;
    httpc_global_init();
    srv = start_server(base, sizeof base);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    http_server_stop(srv);
    return 0;
}

static void get(const char *b, const char *path, long want_status, const char *want_body)
{
    char url[160], err[256];
    snprintf(url, sizeof url, "%s%s", b, path);
    httpc_request rq = {.url = url, .timeout_ms = 10000};
    httpc_response resp;
    assert_int_equal(httpc_do(&rq, &resp, err, sizeof err), HTTPC_OK);
    assert_int_equal(resp.status, want_status);
    if (want_body) assert_string_equal(resp.body, want_body);
    httpc_response_free(&resp);
}

/* Streams of earlier tests are released a little after their client saw the end. */
static void quiet(void)
{
    for (int i = 0; i < 300 && atomic_load(&live_producers) > 0; i++) sleep_ms(10);
    assert_int_equal(atomic_load(&live_producers), 0);
}

static void wait_for(atomic_int *v, int want)
{
    for (int i = 0; i < 500 && atomic_load(v) < want; i++) sleep_ms(10);
    assert_int_equal(atomic_load(v), want);
}

static void test_wait_then_answer(void **state)
{
    (void)state;
    quiet();
    int w0 = atomic_load(&waited_ok), d0 = atomic_load(&dones);
    double t0 = now_ms();
    get(base, "/wait?ms=150", 200, "waited");
    assert_true(now_ms() - t0 >= 140);
    get(base, "/wait-early", 200, "waited");
    assert_int_equal(atomic_load(&waited_ok), w0 + 2);
    wait_for(&dones, d0 + 2);
}

static void test_stream_again(void **state)
{
    (void)state;
    quiet();
    int d0 = atomic_load(&dones);
    get(base, "/ticks?n=5&ms=20", 200, "piece 0\npiece 1\npiece 2\npiece 3\npiece 4\n");
    get(base, "/ticks?n=0&ms=5", 200, ""); /* ends before the first piece */
    wait_for(&dones, d0 + 2);
}

typedef struct {
    const char *base, *path;
    long status;
    char body[4096];
} fetch;

static void *fetch_main(void *arg)
{
    fetch *f = arg;
    char url[160], err[256];
    snprintf(url, sizeof url, "%s%s", f->base ? f->base : base, f->path);
    httpc_request rq = {.url = url, .timeout_ms = 20000};
    httpc_response resp;
    if (httpc_do(&rq, &resp, err, sizeof err) == HTTPC_OK) {
        f->status = resp.status;
        snprintf(f->body, sizeof f->body, "%s", resp.body);
        httpc_response_free(&resp);
    }
    return NULL;
}

/* Slow streams and slow waits on the one pool thread do not hold up anybody else. */
static void test_slow_producers_do_not_block(void **state)
{
    (void)state;
    enum { N = 8 };
    pthread_t t[N];
    fetch f[N];
    for (int i = 0; i < N; i++) {
        memset(&f[i], 0, sizeof f[i]);
        f[i].path = i % 2 ? "/ticks?n=6&ms=200" : "/wait?ms=800";
        pthread_create(&t[i], NULL, fetch_main, &f[i]);
    }
    sleep_ms(100); /* all of them are waiting now */
    long worst = 0;
    for (int i = 0; i < 20; i++) {
        double t0 = now_ms();
        get(base, "/fast", 200, "fast");
        if (now_ms() - t0 > worst) worst = now_ms() - t0;
    }
    assert_true(worst < 100);
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(f[i].status, 200);
        assert_string_equal(f[i].body, i % 2 ? "piece 0\npiece 1\npiece 2\npiece 3\npiece 4\npiece 5\n" : "waited");
    }
}

/* The client goes away while its stream waits: once the producer has more, the send fails
 * and everything is released (done runs, the producer is stopped). */
static void test_client_gone_mid_stream(void **state)
{
    (void)state;
    quiet();
    int d0 = atomic_load(&dones);
    char url[160], err[256];
    snprintf(url, sizeof url, "%s/ticks?n=-1&ms=30", base);
    httpc_request rq = {.url = url, .timeout_ms = 10000};
    httpc_stream *st;
    assert_int_equal(httpc_stream_open(&rq, &st, err, sizeof err), HTTPC_OK);
    char buf[256];
    assert_true(httpc_stream_read(st, buf, sizeof buf) > 0);
    httpc_stream_close(st);
    wait_for(&dones, d0 + 1);
    get(base, "/fast", 200, "fast"); /* and the server is fine */
}

/* Stopping with a request in http_wait and a stream waiting for a piece that never comes:
 * stop returns promptly, the waiting one gets 503, the stream is cut, both are released. */
static void *stop_main(void *arg)
{
    http_server_stop(arg);
    return NULL;
}

static void test_stop_with_pending(void **state)
{
    (void)state;
    quiet();
    char b[64];
    http_server *s = start_server(b, sizeof b);
    int c0 = atomic_load(&waited_cancelled), d0 = atomic_load(&dones);

    char url[160], err[256];
    snprintf(url, sizeof url, "%s/ticks?n=-1&ms=-1", b); /* headers, then nothing ever */
    httpc_request rq = {.url = url, .timeout_ms = 10000};
    httpc_stream *st;
    assert_int_equal(httpc_stream_open(&rq, &st, err, sizeof err), HTTPC_OK);

    fetch f = {.base = b, .path = "/wait?ms=-1"}; /* never a piece: waits until the stop */
    pthread_t ft;
    pthread_create(&ft, NULL, fetch_main, &f);
    sleep_ms(200);

    double t0 = now_ms();
    pthread_t stopper;
    pthread_create(&stopper, NULL, stop_main, s);
    char buf[64];
    assert_int_equal(httpc_stream_read(st, buf, sizeof buf), -1); /* cut, not ended */
    httpc_stream_close(st);
    pthread_join(ft, NULL);
    assert_int_equal(f.status, 503);
    pthread_join(stopper, NULL);
    assert_true(now_ms() - t0 < 3000);
    assert_int_equal(atomic_load(&waited_cancelled), c0 + 1);
    assert_int_equal(atomic_load(&dones), d0 + 2);
}

/* Not async: http_wait says no, HTTP_STREAM_AGAIN cuts the stream. */
static void test_not_async(void **state)
{
    (void)state;
    char err[256] = "";
    http_server_opts o = {.listen = "127.0.0.1:0", .threads = 1, .async = true, .thread_per_connection = true};
    assert_null(http_server_start(&o, handler, NULL, err, sizeof err));
    assert_true(strlen(err) > 0);
    o.async = false;
    o.thread_per_connection = false;
    http_server *s = http_server_start(&o, handler, NULL, err, sizeof err);
    assert_non_null(s);
    char b[64], url[160];
    snprintf(b, sizeof b, "http://127.0.0.1:%u", http_server_port(s));
    get(b, "/wait?ms=10", 500, "could not wait");
    snprintf(url, sizeof url, "%s/ticks?n=3&ms=50", b);
    httpc_request rq = {.url = url, .timeout_ms = 5000};
    httpc_stream *st;
    assert_int_equal(httpc_stream_open(&rq, &st, err, sizeof err), HTTPC_OK);
    char buf[64];
    assert_int_equal(httpc_stream_read(st, buf, sizeof buf), -1);
    httpc_stream_close(st);
    http_server_stop(s);
    quiet();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wait_then_answer),
        cmocka_unit_test(test_stream_again),
        cmocka_unit_test(test_slow_producers_do_not_block),
        cmocka_unit_test(test_client_gone_mid_stream),
        cmocka_unit_test(test_stop_with_pending),
        cmocka_unit_test(test_not_async),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
