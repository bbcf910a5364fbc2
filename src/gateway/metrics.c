/* metrics — see metrics.h. One open-addressed table of series, each key written once under the
 * mutex and published with its state (release); counters in STRIPES cache-line-aligned copies,
 * a thread using the stripe it was given on its first count. */
#include "gateway/metrics.h"
#include "core/util.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define STRIPES 4
#define NBUCKETS 11
static const double BOUNDS[NBUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
static const char *const LE[NBUCKETS] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10"};

typedef struct {
    _Alignas(64) _Atomic uint64_t count;
    _Atomic uint64_t sum_us;             /* the durations' sum, in microseconds */
    _Atomic uint64_t bucket[NBUCKETS];   /* not cumulative here; summed up when rendered */
} stripe;

typedef struct {
    _Atomic int state;                   /* 0 free, 2 ready (key written) */
    unsigned port;
    int status;
    char method[8];
    char route[64];
    stripe st[STRIPES];
} series;

static series table[METRICS_SERIES];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static size_t used;                      /* under mu */
static atomic_uint next_stripe;
static _Thread_local int my_stripe = -1;

static const char *method_label(const char *m)
{
    static const char *const KNOWN[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE"};
    for (size_t i = 0; m && i < sizeof KNOWN / sizeof *KNOWN; i++)
        if (!strcmp(m, KNOWN[i])) return KNOWN[i];
    return "OTHER";
}

static bool same(const series *s, unsigned port, const char *route, const char *method, int status)
{
    return s->port == port && s->status == status && !strcmp(s->method, method) && !strcmp(s->route, route);
}

static uint64_t key_hash(unsigned port, const char *route, const char *method, int status)
{
    uint64_t h = util_fnv1a(UTIL_FNV_BASIS, route, strlen(route));
    h = util_fnv1a(h, method, strlen(method));
    unsigned nums[2] = {port, (unsigned)status};
    return util_fnv1a(h, nums, sizeof nums);
}

/* The series of this key: found without a lock, or added under mu; NULL if the table is full.
 * The last free slot is kept for the "(other)" series (last_slot). */
static series *find(unsigned port, const char *route, const char *method, int status, bool last_slot)
{
    size_t start = (size_t)(key_hash(port, route, method, status) % METRICS_SERIES);
    for (size_t i = 0; i < METRICS_SERIES; i++) {
        series *s = &table[(start + i) % METRICS_SERIES];
        int st = atomic_load_explicit(&s->state, memory_order_acquire);
        if (st == 2 && same(s, port, route, method, status)) return s;
        if (st == 0) break;
    }
    pthread_mutex_lock(&mu);
    series *found = NULL;
    for (size_t i = 0; i < METRICS_SERIES && !found; i++) { /* again: another thread may have added it */
        series *s = &table[(start + i) % METRICS_SERIES];
        if (atomic_load_explicit(&s->state, memory_order_relaxed) == 2) {
            if (same(s, port, route, method, status)) found = s;
            continue;
        }
        if (used + (last_slot ? 0 : 1) >= METRICS_SERIES) break;
        s->port = port;
        s->status = status;
        snprintf(s->method, sizeof s->method, "%s", method);
        snprintf(s->route, sizeof s->route, "%s", route);
        used++;
        atomic_store_explicit(&s->state, 2, memory_order_release);
        found = s;
    }
    pthread_mutex_unlock(&mu);
    return found;
}

void metrics_count(unsigned port, const char *route, const char *method, int status, double seconds)
{
    char cut[64];
    snprintf(cut, sizeof cut, "%s", route ? route : "");
    const char *m = method_label(method);
    if (status < 100 || status > 599) status = 0;
    series *s = find(port, cut, m, status, false);
    if (!s) s = find(port, "(other)", "OTHER", 0, true); /* full: the rest counts there */
    if (!s) return; /* (other) of another port took the last slot */
    if (my_stripe < 0) my_stripe = (int)(atomic_fetch_add(&next_stripe, 1) % STRIPES);
    stripe *t = &s->st[my_stripe];
    if (seconds < 0) seconds = 0;
    atomic_fetch_add_explicit(&t->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->sum_us, (uint64_t)(seconds * 1e6), memory_order_relaxed);
    for (int b = 0; b < NBUCKETS; b++)
        if (seconds <= BOUNDS[b]) {
            atomic_fetch_add_explicit(&t->bucket[b], 1, memory_order_relaxed);
            break;
        }
}

/* A label value as the text format wants it: \, " and newlines escaped. */
static void put_escaped(char **buf, size_t *len, size_t *cap, const char *v)
{
    for (; *v; v++) {
        if (*v == '\n') {
            util_buf_add(buf, len, cap, "\\n", 2);
            continue;
        }
        if (*v == '\\' || *v == '"') util_buf_add(buf, len, cap, "\\", 1);
        util_buf_add(buf, len, cap, v, 1);
    }
}

static void put(char **buf, size_t *len, size_t *cap, const char *s) { util_buf_add(buf, len, cap, s, strlen(s)); }

/* A short formatted piece (a number, a label): at most 255 bytes. */
static void putf(char **buf, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void putf(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) util_buf_add(buf, len, cap, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void put_labels(char **buf, size_t *len, size_t *cap, const series *s)
{
    putf(buf, len, cap, "{bind=\"%u\",route=\"", s->port);
    put_escaped(buf, len, cap, s->route);
    putf(buf, len, cap, "\",method=\"%s\",status=\"%d\"", s->method, s->status);
}

char *metrics_render(size_t *len)
{
    char *buf = NULL;
    size_t n = 0, cap = 0;
    put(&buf, &n, &cap, "# HELP agentgateway_requests_total Requests answered, by bind, route, method and status.\n"
                        "# TYPE agentgateway_requests_total counter\n");
    for (size_t i = 0; i < METRICS_SERIES; i++) {
        const series *s = &table[i];
        if (atomic_load_explicit(&s->state, memory_order_acquire) != 2) continue;
        uint64_t c = 0;
        for (int k = 0; k < STRIPES; k++) c += atomic_load_explicit(&s->st[k].count, memory_order_relaxed);
        put(&buf, &n, &cap, "agentgateway_requests_total");
        put_labels(&buf, &n, &cap, s);
        putf(&buf, &n, &cap, "} %llu\n", (unsigned long long)c);
    }
    put(&buf, &n, &cap, "# HELP agentgateway_request_duration_seconds Time to the answer's headers.\n"
                        "# TYPE agentgateway_request_duration_seconds histogram\n");
    for (size_t i = 0; i < METRICS_SERIES; i++) {
        const series *s = &table[i];
        if (atomic_load_explicit(&s->state, memory_order_acquire) != 2) continue;
        uint64_t b[NBUCKETS] = {0}, c = 0, sum = 0;
        for (int k = 0; k < STRIPES; k++) {
            for (int j = 0; j < NBUCKETS; j++) b[j] += atomic_load_explicit(&s->st[k].bucket[j], memory_order_relaxed);
            sum += atomic_load_explicit(&s->st[k].sum_us, memory_order_relaxed);
            c += atomic_load_explicit(&s->st[k].count, memory_order_relaxed);
        }
        uint64_t cum = 0;
        for (int j = 0; j < NBUCKETS; j++) {
            cum += b[j];
            put(&buf, &n, &cap, "agentgateway_request_duration_seconds_bucket");
            put_labels(&buf, &n, &cap, s);
            putf(&buf, &n, &cap, ",le=\"%s\"} %llu\n", LE[j], (unsigned long long)cum);
        }
        if (cum > c) c = cum; /* a count read a moment before its bucket */
        put(&buf, &n, &cap, "agentgateway_request_duration_seconds_bucket");
        put_labels(&buf, &n, &cap, s);
        putf(&buf, &n, &cap, ",le=\"+Inf\"} %llu\n", (unsigned long long)c);
        put(&buf, &n, &cap, "agentgateway_request_duration_seconds_sum");
        put_labels(&buf, &n, &cap, s);
        putf(&buf, &n, &cap, "} %.6f\n", (double)sum / 1e6);
        put(&buf, &n, &cap, "agentgateway_request_duration_seconds_count");
        put_labels(&buf, &n, &cap, s);
        putf(&buf, &n, &cap, "} %llu\n", (unsigned long long)c);
    }
    *len = n;
    return buf;
}
