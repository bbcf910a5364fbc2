/* oidc — see oidc.h. OpenID Connect Discovery 1.0 §4. */
#include "jose/oidc.h"

#include "core/util.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OIDC_MAX_BYTES (256 * 1024)

struct oidc {
    char *metadata_url, *ca_file;
    long timeout_ms;
    pthread_mutex_t mu;
    bool ready;
    char *issuer, *token_endpoint, *jwks_uri;
    jwks_cache *keys;
    int64_t next_try;
    httpc_result last_kind;
    char last_err[256];
};

oidc *oidc_new(const char *metadata_url, const char *ca_file, long timeout_ms)
{
    oidc *o = xcalloc(1, sizeof *o);
    o->metadata_url = xstrdup(metadata_url);
    o->ca_file = ca_file ? xstrdup(ca_file) : NULL;
    o->timeout_ms = timeout_ms ? timeout_ms : 5000;
    pthread_mutex_init(&o->mu, NULL);
    return o;
}

void oidc_free(oidc *o)
{
    if (!o) return;
    jwks_cache_free(o->keys);
    free(o->metadata_url);
    free(o->ca_file);
    free(o->issuer);
    free(o->token_endpoint);
    free(o->jwks_uri);
    pthread_mutex_destroy(&o->mu);
    free(o);
}

static int fetch(oidc *o)
{
    httpc_request rq = {.url = o->metadata_url, .ca_file = o->ca_file, .timeout_ms = o->timeout_ms,
                        .max_response = OIDC_MAX_BYTES};
    httpc_response rs = {0};
    int rc = -1;
    json_t *doc = NULL;
    o->last_kind = httpc_do(&rq, &rs, o->last_err, sizeof o->last_err);
    if (o->last_kind != HTTPC_OK) goto end;
    if (rs.status != 200) {
        snprintf(o->last_err, sizeof o->last_err, "discovery document %s answered HTTP %ld",
                 o->metadata_url, rs.status);
        goto end;
    }
    doc = json_loadb(rs.body, rs.body_len, 0, NULL);
    const char *iss = json_string_value(json_object_get(doc, "issuer"));
    const char *tok = json_string_value(json_object_get(doc, "token_endpoint"));
    const char *keys = json_string_value(json_object_get(doc, "jwks_uri"));
    /* token_endpoint is optional: issuers that only sign tokens (Kubernetes service-account
     * issuers, GitHub Actions) publish none (OpenID Connect Discovery §3). */
    if (!iss || !keys) {
        snprintf(o->last_err, sizeof o->last_err, "discovery document %s lacks issuer or jwks_uri",
                 o->metadata_url);
        goto end;
    }
    o->issuer = xstrdup(iss);
    o->token_endpoint = tok ? xstrdup(tok) : NULL;
    o->jwks_uri = xstrdup(keys);
    jwks_cache_opts jo = {.jwks_uri = keys, .ca_file = o->ca_file, .timeout_ms = o->timeout_ms};
    o->keys = jwks_cache_new(&jo);
    o->ready = true;
    rc = 0;
end:
    json_decref(doc);
    httpc_response_free(&rs);
    return rc;
}

int oidc_ready(oidc *o, httpc_result *kind, char *err, size_t errlen)
{
    int rc = 0;
    pthread_mutex_lock(&o->mu);
    if (!o->ready) {
        int64_t now = util_now();
        if (now >= o->next_try && fetch(o) != 0) o->next_try = now + 2;
        if (!o->ready) {
            rc = -1;
            if (kind) *kind = o->last_kind;
            snprintf(err, errlen, "%s", o->last_err[0] ? o->last_err : "discovery failed");
        }
    }
    pthread_mutex_unlock(&o->mu);
    return rc;
}

/* ready is set once and never cleared, so these reads need no lock after oidc_ready(). */
const char *oidc_issuer(oidc *o) { return o->issuer; }
const char *oidc_token_endpoint(oidc *o) { return o->token_endpoint; }

int oidc_verify(oidc *o, const char *token, jwt *out, char *err, size_t errlen)
{
    if (oidc_ready(o, NULL, err, errlen) != 0) return JWKS_UNAVAILABLE;
    return jwks_cache_verify(o->keys, token, out, err, errlen);
}

unsigned long oidc_jwks_fetches(oidc *o)
{
    pthread_mutex_lock(&o->mu);
    unsigned long n = o->ready ? jwks_cache_fetches(o->keys) : 0;
    pthread_mutex_unlock(&o->mu);
    return n;
}
