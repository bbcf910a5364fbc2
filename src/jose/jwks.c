/* jwks — see jwks.h. Key sets are RFC 7517 §5 documents; the cache follows what OpenID
 * Connect Core §10.1.1 expects of a relying party: keys rotate, so an unknown kid means
 * "fetch the set again", but not more often than a floor, or forged kids become a
 * denial-of-service lever against the provider.
 */
#include "jose/jwks.h"

#include "core/http_client.h"
#include "core/log.h"
#include "core/util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct jwks {
    atomic_int refs;
    size_t n;
    jwk **keys;
};

static jwks *set_new(size_t cap)
{
    jwks *s = xcalloc(1, sizeof *s);
    atomic_init(&s->refs, 1);
    s->keys = xcalloc(cap ? cap : 1, sizeof *s->keys);
    return s;
}

jwks *jwks_parse(const char *json, size_t len, char *err, size_t errlen)
{
    if (!json || len > JWKS_MAX_BYTES) {
        if (err && errlen) snprintf(err, errlen, "JWKS missing or too large");
        return NULL;
    }
    json_t *doc = json_loadb(json, len, JSON_REJECT_DUPLICATES, NULL);
    json_t *keys = json_object_get(doc, "keys");
    if (!json_is_array(keys)) {
        if (err && errlen) snprintf(err, errlen, "JWKS is not an object with a keys array");
        json_decref(doc);
        return NULL;
    }
    jwks *s = set_new(json_array_size(keys));
    size_t i;
    json_t *entry;
    json_array_foreach(keys, i, entry) {
        /* RFC 7517 §5: entries we cannot use (other kty, use "enc", bad n/e) are
         * ignored rather than failing the whole set. */
        jwk *k = jwk_from_json(entry, NULL, 0);
        if (k) s->keys[s->n++] = k;
    }
    json_decref(doc);
    return s;
}

jwks *jwks_from_keys(jwk *const *keys, size_t n)
{
    jwks *s = set_new(n);
    for (size_t i = 0; i < n; i++)
        if (keys[i]) s->keys[s->n++] = jwk_ref(keys[i]);
    return s;
}

jwks *jwks_ref(jwks *s)
{
    if (s) atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void jwks_unref(jwks *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1) return;
    for (size_t i = 0; i < s->n; i++) jwk_unref(s->keys[i]);
    free(s->keys);
    free(s);
}

size_t jwks_count(const jwks *s) { return s ? s->n : 0; }

const jwk *jwks_find(const jwks *s, const char *kid, const char *x5t)
{
    for (size_t i = 0; s && i < s->n; i++) {
        const char *have = kid ? jwk_kid(s->keys[i]) : jwk_x5t(s->keys[i]);
        const char *want = kid ? kid : x5t;
        if (want && have && strcmp(want, have) == 0) return s->keys[i];
    }
    return NULL;
}

json_t *jwks_to_json(const jwks *s)
{
    json_t *arr = json_array();
    for (size_t i = 0; s && i < s->n; i++) {
        json_t *k = jwk_public_json(s->keys[i]);
        if (k) json_array_append_new(arr, k);
    }
    return json_pack("{so}", "keys", arr);
}

/* ---- cache ---------------------------------------------------------------------- */

struct jwks_cache {
    char *uri, *ca_file;
    int64_t max_age_ms, min_refresh_ms;
    long timeout_ms;
    /* Two locks: `mu` guards the fields below and is only ever held for a few
     * instructions; `fetch_mu` is held across an HTTP fetch so that concurrent callers
     * wanting a refresh wait for one fetch instead of each making their own. Order:
     * fetch_mu before mu. */
    pthread_mutex_t mu, fetch_mu;
    jwks *set;                 /* current set, NULL until the first good fetch */
    unsigned long gen;         /* bumped every time `set` is replaced */
    int64_t fetched_at;        /* monotonic ms of the last good fetch */
    int64_t attempted_at;      /* monotonic ms of the last fetch attempt, 0 = never */
    atomic_ulong fetches;
};

/* Monotonic milliseconds: wall-clock jumps must not stretch or shrink the intervals. */
static bool is_loopback_http(const char *uri)
{
    static const char *const ok[] = { "http://127.0.0.1:", "http://127.0.0.1/", "http://localhost:",
                                      "http://localhost/", "http://[::1]:", "http://[::1]/" };
    for (size_t i = 0; i < ARRAY_LEN(ok); i++)
        if (util_str_starts_with(uri, ok[i])) return true;
    return false;
}

jwks_cache *jwks_cache_new(const jwks_cache_opts *o)
{
    if (!o || !o->jwks_uri) return NULL;
    /* Keys fetched over plain HTTP from another host could be swapped in transit, and
     * whoever controls the keys mints tokens: only https, or http on loopback. */
    if (!util_str_starts_with(o->jwks_uri, "https://") && !is_loopback_http(o->jwks_uri)) {
        log_msg(LOG_ERROR, "jwks_uri_rejected", "jwks_uri must be https:// or http:// on loopback");
        return NULL;
    }
    jwks_cache *c = xcalloc(1, sizeof *c);
    c->uri = xstrdup(o->jwks_uri);
    c->ca_file = o->ca_file ? xstrdup(o->ca_file) : NULL;
    c->max_age_ms = (int64_t)(o->max_age_s > 0 ? o->max_age_s : 3600) * 1000;
    c->min_refresh_ms = (int64_t)(o->min_refresh_s > 0 ? o->min_refresh_s : 10) * 1000;
    c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 5000;
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->fetch_mu, NULL);
    atomic_init(&c->fetches, 0);
    return c;
}

void jwks_cache_free(jwks_cache *c)
{
    if (!c) return;
    jwks_unref(c->set);
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->fetch_mu);
    free(c->uri);
    free(c->ca_file);
    free(c);
}

unsigned long jwks_cache_fetches(const jwks_cache *c)
{
    return c ? atomic_load(&c->fetches) : 0;
}

/* A reference to the current set (or NULL) and its generation, taken under the lock. */
static jwks *snapshot(jwks_cache *c, unsigned long *gen, bool *stale)
{
    pthread_mutex_lock(&c->mu);
    jwks *s = jwks_ref(c->set);
    *gen = c->gen;
    *stale = !s || util_mono_ms() - c->fetched_at >= c->max_age_ms;
    pthread_mutex_unlock(&c->mu);
    return s;
}

/* GET the set. Runs with fetch_mu held but not mu. */
static jwks *fetch(jwks_cache *c, char *err, size_t errlen)
{
    static const char *const headers[] = { "Accept: application/json", NULL };
    httpc_request req = { .url = c->uri, .headers = headers, .timeout_ms = c->timeout_ms,
                          .ca_file = c->ca_file, .max_response = JWKS_MAX_BYTES };
    httpc_response resp = { 0 };
    char why[256] = "";
    jwks *s = NULL;
    atomic_fetch_add(&c->fetches, 1);
    httpc_result r = httpc_do(&req, &resp, why, sizeof why);
    if (r != HTTPC_OK)
        snprintf(err, errlen, "JWKS fetch failed: %s", why);
    else if (resp.status != 200)
        snprintf(err, errlen, "JWKS fetch failed: HTTP %ld", resp.status);
    else
        s = jwks_parse(resp.body, resp.body_len, err, errlen);
    httpc_response_free(&resp);
    if (!s) log_msg(LOG_WARN, "jwks_fetch_failed", "%s", err);
    return s;
}

/* Replace the set, unless another thread already did since generation *gen or the
 * min_refresh floor forbids a fetch now. `old` is the caller's reference, consumed;
 * returns a reference to the newest set (possibly `old` again, or NULL if there is
 * none, with err set) and its generation in *gen. With wait false and a fetch already
 * in flight, returns `old` at once: a stale set is good enough meanwhile. */
static jwks *refresh(jwks_cache *c, unsigned long *gen, bool wait, jwks *old,
                     char *err, size_t errlen)
{
    if (wait) pthread_mutex_lock(&c->fetch_mu);
    else if (pthread_mutex_trylock(&c->fetch_mu) != 0) return old;
    pthread_mutex_lock(&c->mu);
    int64_t now = util_mono_ms();
    /* The floor applies to every attempt, failed ones included, so an unreachable
     * provider is not retried on every request either. */
    bool allowed = c->gen == *gen &&
                   (c->attempted_at == 0 || now - c->attempted_at >= c->min_refresh_ms);
    if (allowed) c->attempted_at = now;
    pthread_mutex_unlock(&c->mu);

    jwks *fresh = allowed ? fetch(c, err, errlen) : NULL;
    pthread_mutex_lock(&c->mu);
    if (fresh) {   /* a failed fetch keeps the old set: stale keys beat no keys */
        jwks_unref(c->set);
        c->set = fresh;
        c->gen++;
        c->fetched_at = util_mono_ms();
    }
    jwks *s = jwks_ref(c->set);
    *gen = c->gen;
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&c->fetch_mu);

    if (!s && !allowed) snprintf(err, errlen, "JWKS not available (fetch rate-limited)");
    jwks_unref(old);
    return s;
}

/* Would a refresh after generation gen fetch now (not rate-limited, nobody newer)? */
static bool refetch_allowed(jwks_cache *c, unsigned long gen)
{
    pthread_mutex_lock(&c->mu);
    bool allowed = c->gen == gen && (c->attempted_at == 0 || util_mono_ms() - c->attempted_at >= c->min_refresh_ms);
    pthread_mutex_unlock(&c->mu);
    return allowed;
}

static int verify(jwks_cache *c, const char *token, jwt *out, char *err, size_t errlen, bool may_fetch);

int jwks_cache_verify(jwks_cache *c, const char *token, jwt *out, char *err, size_t errlen)
{
    return verify(c, token, out, err, errlen, true);
}

int jwks_cache_verify_cached(jwks_cache *c, const char *token, jwt *out, char *err, size_t errlen)
{
    return verify(c, token, out, err, errlen, false);
}

static int verify(jwks_cache *c, const char *token, jwt *out, char *err, size_t errlen, bool may_fetch)
{
    char e[256] = "";
    if (!c || !out) {
        snprintf(err, errlen, "no cache or output");
        return -1;
    }
    if (jwt_decode(token, out, err, errlen) != 0) return -1;
    const char *kid = jwt_kid(out);
    const char *x5t = json_string_value(json_object_get(out->header, "x5t"));
    if (!kid && !x5t) {
        snprintf(err, errlen, "token names no key (kid or x5t)");
        jwt_clear(out);
        return -1;
    }

    unsigned long gen;
    bool stale;
    jwks *s = snapshot(c, &gen, &stale);
    const jwk *k = NULL;
    if (!may_fetch) { /* decide only what needs no fetch */
        k = s && !stale ? jwks_find(s, kid, x5t) : NULL;
        if (!k && (!s || stale || refetch_allowed(c, gen))) {
            jwks_unref(s);
            jwt_clear(out);
            snprintf(err, errlen, "the key set must be fetched first");
            return JWKS_WOULD_FETCH;
        }
    } else {
        if (stale) s = refresh(c, &gen, s == NULL, s, e, sizeof e);
        k = jwks_find(s, kid, x5t);
        if (!k && s) {   /* maybe the keys rotated: refetch, subject to the min_refresh floor */
            s = refresh(c, &gen, true, s, e, sizeof e);
            k = jwks_find(s, kid, x5t);
        }
    }

    int rc = s ? -1 : JWKS_UNAVAILABLE;
    if (!k)
        snprintf(err, errlen, "%s", s ? "no key in the JWKS matches the token's kid" : e);
    else
        rc = jwt_verify(out, k, err, errlen);   /* outside every lock; s keeps k alive */
    jwks_unref(s);
    if (rc != 0) jwt_clear(out);
    return rc;
}
