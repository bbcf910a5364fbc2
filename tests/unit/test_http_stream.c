/* Unit tests for the streaming parts of core/http_server (http_reply_stream, http_req_on_done,
 * http_req_target, http_req_header_each) and core/http_client (httpc_stream_*): a real server
 * on 127.0.0.1 (port 0), one thread per connection. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/http_client.h"
#include "core/http_server.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static http_server *srv;
static char base[64];

/* Lock-step: the server sends piece i only after the client has read piece i-1, so the test
 * deadlocks (and fails on the semaphore timeout) unless every piece goes out at once. */
static sem_t client_got;
static atomic_int dones, hooks, order_ok;

typedef struct {
    int next, count;
    bool lockstep;
    bool fail_at_2;
} gen;

static long gen_read(void *ctx, char *buf, size_t max)
{
    gen *g = ctx;
    if (g->next == g->count) return 0;
    if (g->fail_at_2 && g->next == 2) return -1;
    if (g->lockstep && g->next > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 5;
        if (sem_timedwait(&client_got, &ts) != 0) return -1;
    }
    int n = snprintf(buf, max, "data: piece %d\n\n", g->next);
    g->next++;
    return n;
}

static void gen_done(void *ctx)
{
    atomic_fetch_add(&dones, 1);
    free(ctx);
}

static void hook(void *ctx)
{
    (void)ctx;
    /* runs after the stream's done callback */
    if (atomic_load(&dones) > atomic_load(&hooks)) atomic_fetch_add(&order_ok, 1);
    atomic_fetch_add(&hooks, 1);
}

static void add_header(void *ctx, const char *name, const char *value)
{
    json_object_set_new(ctx, name, json_string(value));
}

static void handler(http_req *r, void *ctx)
{
    const char *p = http_req_path(r);
    (void)ctx;
    if (!strcmp(p, "/target")) {
        json_t *h = json_object();
        http_req_header_each(r, add_header, h);
        http_reply_json(r, 200, json_pack("{s:s, s:s, s:o}", "target", http_req_target(r), "path", p,
                                          "headers", h));
        return;
    }
    if (!strcmp(p, "/sleep")) { /* a handler that blocks longer than the idle timeout */
        sleep(3);
        http_reply_text(r, 200, "slept");
        return;
    }
    gen *g = calloc(1, sizeof *g);
    g->count = 5;
    g->lockstep = !strcmp(p, "/lockstep");
    g->fail_at_2 = !strcmp(p, "/fail");
    if (!strcmp(p, "/long")) g->count = 1000000;
    http_req_on_done(r, hook, NULL);
    http_add_header(r, "X-Stream", "yes");
    http_reply_stream(r, 207, "text/event-stream", gen_read, g, gen_done);
    if (!strcmp(p, "/twice")) { /* an ignored second reply still releases its context */
        gen *g2 = calloc(1, sizeof *g2);
        http_reply_stream(r, 200, "text/plain", gen_read, g2, gen_done);
    }
}

static int group_setup(void **state)
{
    (void)state;
    char err[256] = "";
    httpc_global_init();
    sem_init(&client_got, 0, 0);
    http_server_opts o = { .listen = "127.0.0.1:0", .thread_per_connection = true, .timeout_s = 2 };
    srv = http_server_start(&o, handler, NULL, err, sizeof err);
    if (!srv) fail_msg("http_server_start: %s", err);
    snprintf(base, sizeof base, "http://127.0.0.1:%u", http_server_port(srv));
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    http_server_stop(srv);
    sem_destroy(&client_got);
    return 0;
}

static httpc_stream *open_stream(const char *path)
{
    char url[128], err[256] = "";
    httpc_stream *st = NULL;
    snprintf(url, sizeof url, "%s%s", base, path);
    httpc_request rq = { .url = url, .timeout_ms = 10000 };
    assert_int_equal(httpc_stream_open(&rq, &st, err, sizeof err), HTTPC_OK);
    return st;
}

static void wait_for(atomic_int *v, int want)
{
    for (int i = 0; i < 200 && atomic_load(v) < want; i++) usleep(10000);
    assert_int_equal(atomic_load(v), want);
}

static void test_lockstep_stream(void **state)
{
    (void)state;
    int d0 = atomic_load(&dones), h0 = atomic_load(&hooks), o0 = atomic_load(&order_ok);
    httpc_stream *st = open_stream("/lockstep");
    assert_int_equal(httpc_stream_status(st), 207);
    assert_non_null(strstr(httpc_stream_headers(st), "X-Stream: yes"));
    assert_non_null(strstr(httpc_stream_headers(st), "text/event-stream"));
    assert_non_null(strstr(httpc_stream_headers(st), "chunked"));

    char buf[256], all[1024] = "";
    long n;
    int pieces = 0;
    while ((n = httpc_stream_read(st, buf, sizeof buf - 1)) > 0) {
        buf[n] = '\0';
        strcat(all, buf);
        /* a piece arrived on its own: let the server produce the next one */
        for (const char *p = buf; (p = strstr(p, "\n\n")); p += 2) pieces++, sem_post(&client_got);
    }
    assert_int_equal(n, 0);
    assert_int_equal(pieces, 5);
    assert_string_equal(all, "data: piece 0\n\ndata: piece 1\n\ndata: piece 2\n\n"
                             "data: piece 3\n\ndata: piece 4\n\n");
    httpc_stream_close(st);
    while (sem_trywait(&client_got) == 0) {}
    wait_for(&dones, d0 + 1);
    wait_for(&hooks, h0 + 1);
    assert_int_equal(atomic_load(&order_ok), o0 + 1);
}

/* httpc_do reads a streamed reply whole; the connection stays usable afterwards. */
static void test_stream_whole(void **state)
{
    (void)state;
    char url[128], err[256];
    snprintf(url, sizeof url, "%s/plain", base);
    httpc_request rq = { .url = url };
    for (int i = 0; i < 3; i++) {
        httpc_response resp;
        assert_int_equal(httpc_do(&rq, &resp, err, sizeof err), HTTPC_OK);
        assert_int_equal(resp.status, 207);
        assert_int_equal(resp.body_len, 5 * strlen("data: piece 0\n\n"));
        httpc_response_free(&resp);
    }
}

/* The producer fails mid-way: the client sees an incomplete answer (read -1). */
static void test_stream_fail(void **state)
{
    (void)state;
    int d0 = atomic_load(&dones);
    httpc_stream *st = open_stream("/fail");
    char buf[256], err[256];
    long n, total = 0;
    while ((n = httpc_stream_read(st, buf, sizeof buf)) > 0) total += n;
    assert_int_equal(n, -1);
    assert_int_equal(total, 2 * (long)strlen("data: piece 0\n\n"));
    assert_int_not_equal(httpc_stream_error(st, err, sizeof err), HTTPC_OK);
    assert_true(strlen(err) > 0);
    httpc_stream_close(st);
    wait_for(&dones, d0 + 1);
}

/* The client goes away mid-stream: done and the hooks still run once. */
static void test_client_gone(void **state)
{
    (void)state;
    int d0 = atomic_load(&dones), h0 = atomic_load(&hooks);
    httpc_stream *st = open_stream("/long");
    char buf[1024];
    assert_true(httpc_stream_read(st, buf, sizeof buf) > 0);
    httpc_stream_close(st);
    wait_for(&dones, d0 + 1);
    wait_for(&hooks, h0 + 1);
}

static void test_second_reply_ignored(void **state)
{
    (void)state;
    int d0 = atomic_load(&dones);
    httpc_stream *st = open_stream("/twice");
    assert_int_equal(httpc_stream_status(st), 207);
    char buf[256];
    while (httpc_stream_read(st, buf, sizeof buf) > 0) {}
    httpc_stream_close(st);
    wait_for(&dones, d0 + 2);
}

/* The idle timeout (2 s here) does not cut a stream that waits longer for its next piece. */
static void test_slow_stream(void **state)
{
    (void)state;
    httpc_stream *st = open_stream("/lockstep");
    char buf[256];
    long n = httpc_stream_read(st, buf, sizeof buf);
    assert_true(n > 0);
    sleep(3);
    for (int i = 0; i < 4; i++) sem_post(&client_got);
    long total = n;
    while ((n = httpc_stream_read(st, buf, sizeof buf)) > 0) total += n;
    assert_int_equal(n, 0);
    assert_int_equal(total, 5 * (long)strlen("data: piece 0\n\n"));
    httpc_stream_close(st);
}

static void test_target_and_headers(void **state)
{
    (void)state;
    char url[128], err[256];
    snprintf(url, sizeof url, "%s/tar%%67et?a=%%20b&c", base);
    const char *hdrs[] = { "X-One: 1", "x-two: two", NULL };
    httpc_request rq = { .url = url, .headers = hdrs };
    httpc_response resp;
    assert_int_equal(httpc_do(&rq, &resp, err, sizeof err), HTTPC_OK);
    assert_int_equal(resp.status, 200);
    json_t *j = json_loadb(resp.body, resp.body_len, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "target")), "/tar%67et?a=%20b&c");
    assert_string_equal(json_string_value(json_object_get(j, "path")), "/target");
    json_t *h = json_object_get(j, "headers");
    assert_string_equal(json_string_value(json_object_get(h, "X-One")), "1");
    assert_string_equal(json_string_value(json_object_get(h, "x-two")), "two");
    assert_non_null(json_object_get(h, "Host"));
    json_decref(j);
    httpc_response_free(&resp);
}

/* A handler may block longer than the idle timeout (2 s here): its answer still goes out. */
static void test_slow_handler(void **state)
{
    (void)state;
    char url[128], err[256];
    snprintf(url, sizeof url, "%s/sleep", base);
    httpc_request rq = { .url = url };
    httpc_response resp;
    assert_int_equal(httpc_do(&rq, &resp, err, sizeof err), HTTPC_OK);
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.body, "slept");
    httpc_response_free(&resp);
}

static void test_stream_connect_refused(void **state)
{
    (void)state;
    char err[256] = "";
    httpc_stream *st = (httpc_stream *)1;
    httpc_request rq = { .url = "http://127.0.0.1:1/x" };
    assert_int_equal(httpc_stream_open(&rq, &st, err, sizeof err), HTTPC_CONNECT);
    assert_null(st);
    assert_non_null(strstr(err, "127.0.0.1:1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lockstep_stream),
        cmocka_unit_test(test_stream_whole),
        cmocka_unit_test(test_stream_fail),
        cmocka_unit_test(test_client_gone),
        cmocka_unit_test(test_second_reply_ignored),
        cmocka_unit_test(test_slow_stream),
        cmocka_unit_test(test_target_and_headers),
        cmocka_unit_test(test_slow_handler),
        cmocka_unit_test(test_stream_connect_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
