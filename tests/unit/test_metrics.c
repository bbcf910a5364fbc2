/* Unit tests for gateway/metrics: counts from several threads add up exactly, the histogram is
 * cumulative, labels are escaped and bounded, and a table that fills up counts the rest under
 * "(other)". The table is process-wide, so the tests run in order on what the earlier left. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "gateway/metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The value of the line that starts with prefix (followed by a space), or -1. */
static double value_of(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, prefix, n) && p[n] == ' ') return strtod(p + n + 1, NULL);
    return -1;
}

static void *hammer(void *arg)
{
    (void)arg;
    for (int i = 0; i < 50000; i++) metrics_count(8080, "api", "GET", 200, (i % 4) * 0.02); /* 0, 20, 40, 60 ms */
    return NULL;
}

static void test_threads_add_up(void **state)
{
    (void)state;
    pthread_t t[4];
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&t[i], NULL, hammer, NULL), 0);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    size_t len;
    char *text = metrics_render(&len);
    assert_int_equal(strlen(text), len);
    const char *L = "{bind=\"8080\",route=\"api\",method=\"GET\",status=\"200\"";
    char k[256];
    snprintf(k, sizeof k, "agentgateway_requests_total%s}", L);
    assert_true(value_of(text, k) == 200000);
    snprintf(k, sizeof k, "agentgateway_request_duration_seconds_bucket%s,le=\"0.005\"}", L);
    assert_true(value_of(text, k) == 50000); /* the 0 ms ones */
    snprintf(k, sizeof k, "agentgateway_request_duration_seconds_bucket%s,le=\"0.025\"}", L);
    assert_true(value_of(text, k) == 100000); /* and the 20 ms ones: cumulative */
    snprintf(k, sizeof k, "agentgateway_request_duration_seconds_bucket%s,le=\"0.1\"}", L);
    assert_true(value_of(text, k) == 200000);
    snprintf(k, sizeof k, "agentgateway_request_duration_seconds_bucket%s,le=\"+Inf\"}", L);
    assert_true(value_of(text, k) == 200000);
    snprintf(k, sizeof k, "agentgateway_request_duration_seconds_sum%s}", L);
    double sum = value_of(text, k);
    assert_true(sum > 5999.9 && sum < 6000.1); /* 50000 × (0 + 0.02 + 0.04 + 0.06) */
    free(text);
}

static void test_labels(void **state)
{
    (void)state;
    metrics_count(8080, "say \"hi\"\\\nnow", "BREW", 999, 0.001);
    metrics_count(8080, "say \"hi\"\\\nnow", "BREW", 999, 0.001);
    char longname[200];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    metrics_count(9090, longname, "DELETE", 204, 0.001);
    metrics_count(9090, NULL, "GET", 404, 0.001);
    size_t len;
    char *text = metrics_render(&len);
    assert_true(value_of(text, "agentgateway_requests_total{bind=\"8080\",route=\"say \\\"hi\\\"\\\\\\nnow\","
                               "method=\"OTHER\",status=\"0\"}") == 2);
    char k[300];
    snprintf(k, sizeof k, "agentgateway_requests_total{bind=\"9090\",route=\"%.63s\",method=\"DELETE\",status=\"204\"}",
             longname);
    assert_true(value_of(text, k) == 1); /* cut at 63 bytes */
    assert_true(value_of(text, "agentgateway_requests_total{bind=\"9090\",route=\"\",method=\"GET\",status=\"404\"}") == 1);
    assert_null(strstr(text, "BREW"));
    free(text);
}

static void test_full_table(void **state)
{
    (void)state;
    for (int i = 0; i < METRICS_SERIES + 100; i++) {
        char name[32];
        snprintf(name, sizeof name, "r%d", i);
        metrics_count(7070, name, "GET", 200, 0.001);
    }
    size_t len;
    char *text = metrics_render(&len);
    size_t series = 0;
    for (const char *p = text; (p = strstr(p, "\nagentgateway_requests_total{")); p++) series++;
    assert_int_equal(series, METRICS_SERIES);
    double other = value_of(text, "agentgateway_requests_total{bind=\"7070\",route=\"(other)\",method=\"OTHER\",status=\"0\"}");
    assert_true(other > 100); /* the routes that found no slot, all of them there */
    assert_true(value_of(text, "agentgateway_requests_total{bind=\"7070\",route=\"r0\",method=\"GET\",status=\"200\"}") == 1);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_add_up),
        cmocka_unit_test(test_labels),
        cmocka_unit_test(test_full_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
