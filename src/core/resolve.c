/* resolve — see resolve.h. A fixed table of names; an entry never moves or goes, so the lookup
 * thread of a name writes into it (under the mutex) without further bookkeeping. */
#include "core/resolve.h"
#include "core/util.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef struct {
    char *name;                               /* set once, under mu */
    struct sockaddr_storage addr[RESOLVE_MAX];/* port 0: set on the way out */
    socklen_t len[RESOLVE_MAX];
    size_t n;
    int64_t at;                               /* when the last lookup ended (monotonic s); -1: none */
    bool pending;                             /* a lookup runs */
} entry;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static entry table[RESOLVE_NAMES];
static size_t n_names;

static void *lookup_main(void *arg)
{
    entry *e = arg;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    struct sockaddr_storage addr[RESOLVE_MAX];
    socklen_t len[RESOLVE_MAX];
    size_t n = 0;
    if (getaddrinfo(e->name, NULL, &hints, &res) == 0) {
        for (int family = AF_INET; family; family = family == AF_INET ? AF_INET6 : 0) /* IPv4 first */
            for (const struct addrinfo *ai = res; ai && n < RESOLVE_MAX; ai = ai->ai_next) {
                if (ai->ai_family != family || ai->ai_addrlen > sizeof addr[0]) continue;
                memcpy(&addr[n], ai->ai_addr, ai->ai_addrlen);
                len[n++] = ai->ai_addrlen;
            }
        freeaddrinfo(res);
    }
    pthread_mutex_lock(&mu);
    memcpy(e->addr, addr, n * sizeof addr[0]);
    memcpy(e->len, len, n * sizeof len[0]);
    e->n = n;
    e->at = util_mono_ms() / 1000;
    e->pending = false;
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void set_port(struct sockaddr_storage *a, unsigned port)
{
    if (a->ss_family == AF_INET) ((struct sockaddr_in *)a)->sin_port = htons((uint16_t)port);
    else ((struct sockaddr_in6 *)a)->sin6_port = htons((uint16_t)port);
}

/* A literal address: at once. */
static bool literal(const char *host, unsigned port, struct sockaddr_storage *out, socklen_t *len)
{
    memset(out, 0, sizeof *out);
    struct sockaddr_in *a4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        *len = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        *len = sizeof *a6;
    } else {
        return false;
    }
    set_port(out, port);
    return true;
}

size_t resolve_cached(const char *host, unsigned port, struct sockaddr_storage *out, socklen_t *lens, size_t max)
{
    if (!host || !*host || !max) return 0;
    if (literal(host, port, out, lens)) return 1;
    if (max > RESOLVE_MAX) max = RESOLVE_MAX;
    pthread_mutex_lock(&mu);
    entry *e = NULL;
    for (size_t i = 0; i < n_names && !e; i++)
        if (!strcasecmp(table[i].name, host)) e = &table[i];
    if (!e && n_names < RESOLVE_NAMES) {
        e = &table[n_names++];
        e->name = xstrdup(host);
        e->at = -1;
    }
    if (!e) {
        pthread_mutex_unlock(&mu);
        return 0;
    }
    bool start = !e->pending && (e->at < 0 || util_mono_ms() / 1000 - e->at >= (e->n ? RESOLVE_FRESH_S : RESOLVE_NEGATIVE_S));
    if (start) e->pending = true;
    size_t n = e->n < max ? e->n : max;
    memcpy(out, e->addr, n * sizeof out[0]);
    memcpy(lens, e->len, n * sizeof lens[0]);
    pthread_mutex_unlock(&mu);
    for (size_t i = 0; i < n; i++) set_port(&out[i], port);

    if (start) {
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &at, lookup_main, e) != 0) { /* asked again next time */
            pthread_mutex_lock(&mu);
            e->pending = false;
            pthread_mutex_unlock(&mu);
        }
        pthread_attr_destroy(&at);
    }
    return n;
}
