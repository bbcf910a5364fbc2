/* Unit tests for log_request (core/log): the request line, printed without jansson, must be
 * one valid JSON object per line whatever the path holds, with JWTs redacted. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/log.h"

#include <ctype.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *const *g_fields;   /* extra fields for the next logged() (log_request_fields) */

/* Run log_request with stderr on a pipe; the line it wrote, parsed (decref it). */
static json_t *logged(const char *method, const char *path, int status, double ms, const char *corr,
                      char *raw, size_t rawlen)
{
    int p[2], saved = dup(2);
    assert_int_equal(pipe(p), 0);
    dup2(p[1], 2);
    if (g_fields) log_request_fields(method, path, status, ms, corr, g_fields);
    else log_request(method, path, status, ms, corr);
    dup2(saved, 2);
    close(saved);
    close(p[1]);
    ssize_t n = read(p[0], raw, rawlen - 1);
    close(p[0]);
    assert_true(n > 0);
    raw[n] = '\0';
    assert_int_equal(raw[n - 1], '\n');
    assert_null(memchr(raw, '\n', (size_t)n - 1)); /* one line */
    json_error_t e;
    json_t *o = json_loads(raw, 0, &e);
    if (!o) fail_msg("not JSON (%s): %s", e.text, raw);
    return o;
}

static void test_fields_and_order(void **state)
{
    (void)state;
    char raw[8192];
    json_t *o = logged("GET", "/healthz", 200, 1.2345, "0f8fad5b-d9cb-469f-a165-70867728950e", raw, sizeof raw);
    assert_string_equal(json_string_value(json_object_get(o, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(o, "component")), "test");
    assert_string_equal(json_string_value(json_object_get(o, "event")), "request");
    assert_string_equal(json_string_value(json_object_get(o, "method")), "GET");
    assert_string_equal(json_string_value(json_object_get(o, "path")), "/healthz");
    assert_int_equal(json_integer_value(json_object_get(o, "status")), 200);
    assert_true(json_is_real(json_object_get(o, "ms")));
    assert_true(json_real_value(json_object_get(o, "ms")) == 1.23);
    assert_string_equal(json_string_value(json_object_get(o, "correlation_id")),
                        "0f8fad5b-d9cb-469f-a165-70867728950e");
    assert_int_equal(strncmp(raw, "{\"ts\":\"", 7), 0);
    /* ts: UTC with milliseconds, e.g. 2026-11-26T03:45:07.123Z, and now */
    const char *ts = json_string_value(json_object_get(o, "ts"));
    assert_non_null(ts);
    assert_int_equal(strlen(ts), 24);
    struct tm tm = {0};
    const char *end = strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm);
    assert_non_null(end);
    assert_true(end[0] == '.' && isdigit((unsigned char)end[1]) && isdigit((unsigned char)end[2]) &&
                isdigit((unsigned char)end[3]) && end[4] == 'Z');
    time_t then = timegm(&tm), now = time(NULL);
    assert_true(then <= now && now - then <= 2);
    assert_non_null(strstr(raw, "\"component\":\"test\",\"event\":\"request\",\"method\":\"GET\",\"path\":"));
    assert_non_null(strstr(raw, ",\"status\":200,\"ms\":1.23,\"correlation_id\":"));
    json_decref(o);

    o = logged("POST", "/x", 503, 0, NULL, raw, sizeof raw); /* no id: no field; 0 ms a real */
    assert_null(json_object_get(o, "correlation_id"));
    assert_true(json_is_real(json_object_get(o, "ms")));
    assert_non_null(strstr(raw, "\"ms\":0.0}"));
    json_decref(o);
}

static void test_hostile_paths(void **state)
{
    (void)state;
    char raw[8192];
    /* quotes, backslash, control characters, DEL, bad UTF-8, good UTF-8 */
    json_t *o = logged("GET", "/a\"b\\c\n\x01\x7f\xff\xc3(\xc3\xa9", 404, 0.5, NULL, raw, sizeof raw);
    assert_string_equal(json_string_value(json_object_get(o, "path")),
                        "/a\"b\\c\n\x01\x7f\xef\xbf\xbd\xef\xbf\xbd(\xc3\xa9");
    json_decref(o);

    /* a JWT in the path is redacted */
    o = logged("GET", "/AuthorizationHeader/eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", 400, 0, NULL,
               raw, sizeof raw);
    assert_null(strstr(raw, "eyJzdWIiOiJ4In0"));
    assert_non_null(strstr(json_string_value(json_object_get(o, "path")), "[redacted-jwt]"));
    json_decref(o);

    /* a very long path is cut, the line still JSON and whole */
    char *longp = malloc(20000);
    memset(longp, '"', 19999);
    longp[19999] = '\0';
    o = logged("GET", longp, 414, 0, "id", raw, sizeof raw);
    const char *p = json_string_value(json_object_get(o, "path"));
    assert_true(strlen(p) > 1000 && strlen(p) < 4096);
    assert_string_equal(json_string_value(json_object_get(o, "correlation_id")), "id");
    json_decref(o);
    free(longp);
}

/* log_request_fields: the extra pairs after the fixed ones, in order, as strings; NULL values left
 * out; at most 8 pairs, values cut at 256 bytes; hostile values and the longest path still make
 * one JSON line, and a JWT in a value is redacted. */
static void test_extra_fields(void **state)
{
    (void)state;
    char raw[16384];
    const char *const f[] = {"token", "issued", "grant", "client_credentials", "fmi_path", NULL,
                             "client", "11111111-2222-3333-4444-555555555555", NULL};
    g_fields = f;
    json_t *o = logged("POST", "/t/oauth2/v2.0/token", 200, 0, "id", raw, sizeof raw);
    assert_string_equal(json_string_value(json_object_get(o, "token")), "issued");
    assert_string_equal(json_string_value(json_object_get(o, "grant")), "client_credentials");
    assert_string_equal(json_string_value(json_object_get(o, "client")), "11111111-2222-3333-4444-555555555555");
    assert_null(json_object_get(o, "fmi_path"));
    assert_string_equal(json_string_value(json_object_get(o, "correlation_id")), "id");
    assert_non_null(strstr(raw, "\"correlation_id\":\"id\",\"token\":\"issued\",\"grant\":"));
    json_decref(o);

    /* hostile and long values, more pairs than are printed, the longest path, a JWT */
    char *longp = malloc(20000), big[1000], jwt[] = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";
    memset(longp, '"', 19999);
    longp[19999] = '\0';
    memset(big, '\n', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    const char *const g[] = {"a", big, "b", big, "c", big, "d", big, "e", big, "f", big, "g", jwt,
                             "h", "\xff\"", "i", "never", NULL};
    g_fields = g;
    o = logged("POST", longp, 200, 0, "id", raw, sizeof raw);
    g_fields = NULL;
    assert_true(strlen(json_string_value(json_object_get(o, "a"))) < 256 / 6 + 1);
    assert_string_equal(json_string_value(json_object_get(o, "g")), "[redacted-jwt]");
    assert_string_equal(json_string_value(json_object_get(o, "h")), "\xef\xbf\xbd\"");
    assert_null(json_object_get(o, "i"));
    json_decref(o);
    free(longp);
}

static void test_level_off(void **state)
{
    (void)state;
    log_init("test", LOG_WARN);
    int p[2], saved = dup(2);
    assert_int_equal(pipe(p), 0);
    dup2(p[1], 2);
    log_request("GET", "/", 200, 0, NULL);
    dup2(saved, 2);
    close(saved);
    close(p[1]);
    char b[16];
    assert_int_equal(read(p[0], b, sizeof b), 0);
    close(p[0]);
    log_init("test", LOG_INFO);
}

/* log_batch: a thread's lines wait for log_flush, then go out together, whole and in order, in
 * writes of at most PIPE_BUF bytes; a line longer than that goes out at once; log_batch(false)
 * flushes. Another thread's lines are not batched. stderr is a SOCK_SEQPACKET socket here, so
 * every read returns exactly one write. */
static void *other_thread(void *arg)
{
    (void)arg;
    log_request("GET", "/other", 200, 0, NULL);
    return NULL;
}

static ssize_t one_write(int fd, char *buf, size_t cap)
{
    ssize_t n = recv(fd, buf, cap - 1, MSG_DONTWAIT);
    if (n >= 0) buf[n] = '\0';
    return n;
}

static void test_batch(void **state)
{
    (void)state;
    int sp[2], saved = dup(2);
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp), 0);
    int big = 1 << 20;
    setsockopt(sp[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    dup2(sp[1], 2);
    static char buf[65536];
    log_batch(true);
    log_request("GET", "/one", 200, 0, NULL);
    log_msg(LOG_WARN, "note", "between");
    log_request("GET", "/two", 200, 0, NULL);
    assert_int_equal(one_write(sp[0], buf, sizeof buf), -1); /* nothing yet */
    pthread_t t;
    pthread_create(&t, NULL, other_thread, NULL);
    pthread_join(t, NULL);
    assert_true(one_write(sp[0], buf, sizeof buf) > 0);     /* the other thread's, at once */
    assert_non_null(strstr(buf, "\"/other\""));
    log_flush();
    assert_true(one_write(sp[0], buf, sizeof buf) > 0);     /* one write, three lines, in order */
    char *one = strstr(buf, "\"/one\""), *mid = strstr(buf, "between"), *two = strstr(buf, "\"/two\"");
    assert_true(one && mid && two && one < mid && mid < two);
    log_flush();                                              /* nothing left */
    assert_int_equal(one_write(sp[0], buf, sizeof buf), -1);
    /* 40 lines of about 400 bytes: written as the batch fills, each write whole lines */
    char path[300];
    memset(path, 'p', sizeof path - 1);
    path[0] = '/', path[sizeof path - 1] = '\0';
    for (int i = 0; i < 40; i++) log_request("GET", path, 200, 0, NULL);
    /* a line longer than PIPE_BUF: what was batched goes first, then the line, at once */
    char longp[6000];
    memset(longp, 'q', sizeof longp - 1);
    longp[0] = '/', longp[sizeof longp - 1] = '\0';
    log_request("GET", longp, 200, 0, NULL);
    log_batch(false);
    dup2(saved, 2);
    close(saved);
    close(sp[1]);
    int lines = 0, writes = 0;
    ssize_t n;
    bool long_seen = false;
    while ((n = one_write(sp[0], buf, sizeof buf)) > 0) {
        writes++;
        assert_int_equal(buf[n - 1], '\n');
        for (char *q = buf; (q = strchr(q, '\n')); q++) lines++;
        if (strstr(buf, "qqqq")) {
            long_seen = true;
            assert_true(n > PIPE_BUF);
            assert_null(strstr(buf, "pppp"));
        } else {
            assert_true(n <= PIPE_BUF);
        }
    }
    close(sp[0]);
    assert_true(long_seen);
    assert_int_equal(lines, 41);
    assert_true(writes > 2 && writes < 41);
}

int main(void)
{
    unsetenv("AGENTID_LOG_LEVEL");
    log_init("test", LOG_INFO);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fields_and_order),
        cmocka_unit_test(test_hostile_paths),
        cmocka_unit_test(test_extra_fields),
        cmocka_unit_test(test_level_off),
        cmocka_unit_test(test_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
