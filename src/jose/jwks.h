/* jwks — JSON Web Key Sets, and a fetching cache for a remote jwks_uri.
 *
 * Contract
 *  - jwks is immutable once parsed and reference-counted: readers take a reference and
 *    may use it while another thread swaps in a newer set.
 *  - jwks_cache is thread-safe. It fetches the set on first use, keeps it for max_age_s,
 *    and when a token names a kid it does not know, refetches at most once every
 *    min_refresh_s (so a stream of forged kids cannot make it hammer the provider).
 *  - Errors: NULL / -1 with a token-free reason in err.
 */
#ifndef AGENTID_JOSE_JWKS_H
#define AGENTID_JOSE_JWKS_H

#include "jose/jwt.h"

#define JWKS_MAX_BYTES (512 * 1024)

typedef struct jwks jwks;

/* Parse a JWKS document; entries that are not usable RSA signature keys are skipped. */
jwks *jwks_parse(const char *json, size_t len, char *err, size_t errlen);
/* Build a set from keys (each gets a new reference). */
jwks *jwks_from_keys(jwk *const *keys, size_t n);
jwks *jwks_ref(jwks *s);
void jwks_unref(jwks *s);
size_t jwks_count(const jwks *s);
/* The key with this kid (or, when kid is NULL, with this x5t); borrowed, NULL if none. */
const jwk *jwks_find(const jwks *s, const char *kid, const char *x5t);
/* {"keys":[...]} public form. New reference. */
json_t *jwks_to_json(const jwks *s);

typedef struct jwks_cache jwks_cache;

typedef struct {
    const char *jwks_uri;     /* https:// or http:// (loopback only makes sense) */
    const char *ca_file;      /* extra trust anchor, may be NULL */
    int max_age_s;            /* 0 => 3600 */
    int min_refresh_s;        /* 0 => 10 */
    long timeout_ms;          /* 0 => 5000 */
} jwks_cache_opts;

jwks_cache *jwks_cache_new(const jwks_cache_opts *o);
void jwks_cache_free(jwks_cache *c);
#define JWKS_UNAVAILABLE (-2)

/* Decode token, find its key (refetching on an unknown kid, rate-limited), verify the
 * signature. 0 and a decoded *out (caller jwt_clear()s); -1 with err when the token is bad;
 * JWKS_UNAVAILABLE with err when no key set could be had at all (the provider is down, not
 * the caller's fault). Claims are not checked here: use jwt_check_claims(). */
int jwks_cache_verify(jwks_cache *c, const char *token, jwt *out, char *err, size_t errlen);
#define JWKS_WOULD_FETCH (-3)
/* jwks_cache_verify without ever fetching, for a caller that must not block: the same answers
 * where the key set in hand decides, JWKS_WOULD_FETCH where jwks_cache_verify would fetch first
 * (no set yet, a stale one, or an unknown key while a refetch is allowed). */
int jwks_cache_verify_cached(jwks_cache *c, const char *token, jwt *out, char *err, size_t errlen);
/* Counters for /metrics. */
unsigned long jwks_cache_fetches(const jwks_cache *c);

#endif
