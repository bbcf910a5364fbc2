/* tokens — see tokens.h. */
#include "sidecar/tokens.h"

#include "core/b64.h"
#include "core/form.h"
#include "core/http_client.h"
#include "core/log.h"
#include "core/util.h"
#include "jose/oidc.h"
#include "jose/pki.h"

#include <jansson.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define TOKEN_EXCHANGE_SCOPE "api://AzureADTokenExchange/.default"
#define EXPIRY_MARGIN_S 60           /* never hand out a token with less than this left */
#define BUCKETS 16384

/* ---- cache -------------------------------------------------------------------------------- */

typedef enum { E_PENDING, E_READY, E_FAILED } entry_state;

typedef struct entry {
    char *key;
    uint32_t hash;
    entry_state state;
    char *token;
    int64_t exp, refresh_at;
    bool refreshing, linked;
    int refs;                        /* the table's link counts as one */
    tok_err err;
    pthread_cond_t done;
    struct entry *hnext, *prev, *next;
} entry;

struct tokens {
    const settings *s;
    oidc *idp;
    char *issuers[4];
    jwk *cert_key;                   /* CertificateDiskPath credential, if any */
    char *cert_x5t;
    pthread_mutex_t mu;
    entry *buckets[BUCKETS];
    entry *lru_head, *lru_tail;      /* head = most recently used */
    size_t count;
    tokens_stats st;
};

static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static void lru_unlink(tokens *t, entry *e)
{
    if (e->prev) e->prev->next = e->next; else t->lru_head = e->next;
    if (e->next) e->next->prev = e->prev; else t->lru_tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_front(tokens *t, entry *e)
{
    e->next = t->lru_head;
    e->prev = NULL;
    if (t->lru_head) t->lru_head->prev = e;
    t->lru_head = e;
    if (!t->lru_tail) t->lru_tail = e;
}

static void entry_put(entry *e)   /* with t->mu held */
{
    if (--e->refs > 0) return;
    pthread_cond_destroy(&e->done);
    free(e->key);
    free(e->token);
    free(e);
}

static void table_remove(tokens *t, entry *e)   /* with t->mu held */
{
    if (!e->linked) return;
    entry **pp = &t->buckets[e->hash % BUCKETS];
    while (*pp && *pp != e) pp = &(*pp)->hnext;
    if (*pp) *pp = e->hnext;
    lru_unlink(t, e);
    e->linked = false;
    t->count--;
    entry_put(e);
}

static entry *table_find(tokens *t, const char *key, uint32_t h)
{
    for (entry *e = t->buckets[h % BUCKETS]; e; e = e->hnext)
        if (e->hash == h && strcmp(e->key, key) == 0) return e;
    return NULL;
}

static entry *table_add(tokens *t, const char *key, uint32_t h)
{
    entry *e = xcalloc(1, sizeof *e);
    e->key = xstrdup(key);
    e->hash = h;
    e->state = E_PENDING;
    e->refs = 1;
    e->linked = true;
    pthread_cond_init(&e->done, NULL);
    e->hnext = t->buckets[h % BUCKETS];
    t->buckets[h % BUCKETS] = e;
    lru_front(t, e);
    t->count++;
    /* Bounded: evict least recently used entries nobody is waiting on. */
    for (entry *v = t->lru_tail; t->count > t->s->cache_size && v;) {
        entry *prev = v->prev;
        if (v->state != E_PENDING && v != e) {
            table_remove(t, v);
            t->st.evictions++;
        }
        v = prev;
    }
    return e;
}

/* ---- talking to the identity provider ----------------------------------------------------- */

typedef struct {
    char *s;
    size_t len, cap;
} sbuf;

static void add(sbuf *b, const char *name, const char *value)
{
    char *v = form_escape(value);
    size_t need = strlen(name) + strlen(v) + 3;
    if (b->len + need >= b->cap) {
        b->cap = (b->len + need) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    b->len += (size_t)snprintf(b->s + b->len, b->cap - b->len, "%s%s=%s", b->len ? "&" : "", name, v);
    free(v);
}

static bool errf(tok_err *e, tok_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool errf(tok_err *e, tok_status st, const char *fmt, ...)
{
    e->status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->detail, sizeof e->detail, fmt, ap);
    va_end(ap);
    return false;
}

static const char *token_endpoint(tokens *t, tok_err *e)
{
    char err[300];
    httpc_result kind = HTTPC_OK;
    if (oidc_ready(t->idp, &kind, err, sizeof err) != 0) {
        errf(e, kind == HTTPC_TIMEOUT ? TOK_TIMEOUT : kind == HTTPC_OK ? TOK_BAD_RESPONSE : TOK_UNREACHABLE,
             "identity provider discovery failed: %s", err);
        return NULL;
    }
    return oidc_token_endpoint(t->idp);
}

/* POST a token request; on success *exp and *refresh_at are set and the token returned. */
static char *post_token(tokens *t, sbuf *body, int64_t *exp, int64_t *refresh_at, tok_err *e)
{
    const char *url = token_endpoint(t, e);
    if (!url) return NULL;
    static const char *const hdrs[] = {"Content-Type: application/x-www-form-urlencoded",
                                       "Accept: application/json", NULL};
    httpc_request rq = {.url = url, .method = "POST", .headers = hdrs, .body = body->s,
                        .body_len = body->len, .timeout_ms = t->s->timeout_ms,
                        .ca_file = t->s->ca_file, .max_response = 256 * 1024};
    httpc_response rs = {0};
    char err[300];
    char *tok = NULL;
    json_t *doc = NULL;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    httpc_result r = httpc_do(&rq, &rs, err, sizeof err);
    clock_gettime(CLOCK_MONOTONIC, &b);
    pthread_mutex_lock(&t->mu);
    t->st.idp_calls++;
    t->st.idp_seconds += (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    pthread_mutex_unlock(&t->mu);
    if (r != HTTPC_OK) {
        errf(e, r == HTTPC_TIMEOUT ? TOK_TIMEOUT : TOK_UNREACHABLE, "identity provider %s: %s",
             r == HTTPC_TIMEOUT ? "timed out" : "unreachable", err);
        goto end;
    }
    e->idp_status = (int)rs.status;
    doc = json_loadb(rs.body, rs.body_len, 0, NULL);
    const char *at = json_string_value(json_object_get(doc, "access_token"));
    if (rs.status != 200 || !at) {
        const char *desc = json_string_value(json_object_get(doc, "error_description"));
        const char *code = json_string_value(json_object_get(doc, "error"));
        if (desc || code) {
            /* Keep the first line: "AADSTS<code>: <text>" (the rest is trace ids). */
            size_t n = desc ? strcspn(desc, "\r\n") : 0;
            errf(e, TOK_REFUSED, "%s%s%.*s", code ? code : "", desc ? ": " : "", (int)n, desc ? desc : "");
        } else {
            errf(e, TOK_BAD_RESPONSE, "identity provider answered HTTP %ld without a token", rs.status);
        }
        goto end;
    }
    int64_t now = util_now();
    json_t *ei = json_object_get(doc, "expires_in"), *ri = json_object_get(doc, "refresh_in");
    int64_t expires_in = json_is_integer(ei) ? json_integer_value(ei)
                         : json_is_string(ei) ? strtoll(json_string_value(ei), NULL, 10) : 3600;
    int64_t refresh_in = json_is_integer(ri) ? json_integer_value(ri)
                         : json_is_string(ri) ? strtoll(json_string_value(ri), NULL, 10) : expires_in / 2;
    *exp = now + expires_in;
    *refresh_at = now + (refresh_in > 0 && refresh_in < expires_in ? refresh_in : expires_in / 2);
    tok = xstrdup(at);
end:
    if (!tok) {
        pthread_mutex_lock(&t->mu);
        t->st.idp_errors++;
        pthread_mutex_unlock(&t->mu);
        log_msg(LOG_WARN, "idp_error", "%s", e->detail);
    }
    json_decref(doc);
    httpc_response_free(&rs);
    return tok;
}

static char *cached(tokens *t, const char *key, bool force, tok_err *e,
                    char *(*fetch)(tokens *, void *, int64_t *, int64_t *, tok_err *), void *ctx);

/* Managed identity: an app token for api://AzureADTokenExchange from IMDS or App Service. */
static char *fetch_mi(tokens *t, void *ctx, int64_t *exp, int64_t *refresh_at, tok_err *e)
{
    const cred_source *c = ctx;
    const char *ep = getenv("IDENTITY_ENDPOINT"), *hdr = getenv("IDENTITY_HEADER");
    const char *imds = getenv("AZURE_POD_IDENTITY_AUTHORITY_HOST");
    char *url, *h1 = NULL;
    char *res = form_escape("api://AzureADTokenExchange");
    char *cid = c->mi_client_id ? form_escape(c->mi_client_id) : NULL;
    if (ep && hdr) {   /* App Service */
        url = xasprintf("%s?api-version=2019-08-01&resource=%s%s%s", ep, res, cid ? "&client_id=" : "",
                        cid ? cid : "");
        h1 = xasprintf("X-IDENTITY-HEADER: %s", hdr);
    } else {           /* IMDS */
        url = xasprintf("%s/metadata/identity/oauth2/token?api-version=2018-02-01&resource=%s%s%s",
                        imds ? imds : "http://169.254.169.254", res, cid ? "&client_id=" : "",
                        cid ? cid : "");
        h1 = xstrdup("Metadata: true");
    }
    const char *hdrs[] = {h1, NULL};
    httpc_request rq = {.url = url, .headers = hdrs, .timeout_ms = t->s->timeout_ms,
                        .max_response = 256 * 1024};
    httpc_response rs = {0};
    char err[300];
    char *tok = NULL;
    json_t *doc = NULL;
    httpc_result r = httpc_do(&rq, &rs, err, sizeof err);
    if (r != HTTPC_OK) {
        errf(e, TOK_NO_CREDENTIAL, "managed identity endpoint %s: %s",
             r == HTTPC_TIMEOUT ? "timed out" : "unreachable", err);
        goto end;
    }
    doc = json_loadb(rs.body, rs.body_len, 0, NULL);
    const char *at = json_string_value(json_object_get(doc, "access_token"));
    json_t *eo = json_object_get(doc, "expires_on");
    if (rs.status != 200 || !at) {
        const char *d = json_string_value(json_object_get(doc, "error_description"));
        errf(e, TOK_NO_CREDENTIAL, "managed identity endpoint answered HTTP %ld: %s", rs.status,
             d ? d : "no token");
        goto end;
    }
    *exp = json_is_string(eo) ? strtoll(json_string_value(eo), NULL, 10)
           : json_is_integer(eo) ? json_integer_value(eo) : util_now() + 3600;
    *refresh_at = util_now() + (*exp - util_now()) / 2;
    tok = xstrdup(at);
end:
    json_decref(doc);
    httpc_response_free(&rs);
    free(url);
    free(h1);
    free(res);
    free(cid);
    return tok;
}

/* A client assertion signed with the certificate (RFC 7523 §3, Entra certificate credentials). */
static char *cert_assertion(tokens *t, const char *aud)
{
    char jti[37];
    util_guid(jti);
    int64_t now = util_now();
    json_t *claims = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "aud", aud, "iss", t->s->client_id,
                               "sub", t->s->client_id, "jti", jti, "nbf", (json_int_t)now, "iat",
                               (json_int_t)now, "exp", (json_int_t)(now + 600));
    json_t *hdr = json_pack("{s:s}", "x5t", t->cert_x5t);
    char err[200];
    char *a = jwt_sign(t->cert_key, hdr, claims, err, sizeof err);
    json_decref(claims);
    json_decref(hdr);
    return a;
}

/* The configured app's credential: the first source that produces one (Microsoft.Identity.Web
 * tries them in order too). */
static bool add_credential(tokens *t, sbuf *f, tok_err *e)
{
    char why[1024] = "";
    for (size_t i = 0; i < t->s->n_creds; i++) {
        const cred_source *c = &t->s->creds[i];
        char *a = NULL;
        size_t w = strlen(why);
        switch (c->type) {
        case CRED_CLIENT_SECRET:
            add(f, "client_secret", c->secret);
            return true;
        case CRED_CERTIFICATE_PATH: {
            const char *ep = token_endpoint(t, e);
            if (!ep) return false;
            if (t->cert_key && (a = cert_assertion(t, ep))) break;
            snprintf(why + w, sizeof why - w, "%scertificate %s could not be used", w ? "; " : "", c->path);
            continue;
        }
        case CRED_SIGNED_ASSERTION_FILE: {
            /* Re-read every time: the kubelet rotates projected tokens in place. */
            size_t n;
            a = util_read_file(c->path, 64 * 1024, &n);
            if (a) {
                while (n && (a[n - 1] == '\n' || a[n - 1] == '\r' || a[n - 1] == ' ')) a[--n] = '\0';
                if (n) break;
                free(a);
                a = NULL;
            }
            snprintf(why + w, sizeof why - w, "%sassertion file %s is missing or empty", w ? "; " : "", c->path);
            continue;
        }
        case CRED_MANAGED_IDENTITY: {
            tok_err me = {0};
            char key[160];
            snprintf(key, sizeof key, "mi|%s", c->mi_client_id ? c->mi_client_id : "system");
            a = cached(t, key, false, &me, fetch_mi, (void *)c);
            if (a) break;
            snprintf(why + w, sizeof why - w, "%s%.300s", w ? "; " : "", me.detail);
            continue;
        }
        }
        add(f, "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
        add(f, "client_assertion", a);
        free(a);
        return true;
    }
    errf(e, TOK_NO_CREDENTIAL, "no client credential could be used: %s",
         t->s->n_creds ? why : "AzureAd__ClientCredentials is empty");
    return false;
}

/* ---- the flows ---------------------------------------------------------------------------- */

typedef struct {
    const tok_request *r;
    const char *scope;       /* space-joined */
    char *t1, *t2;           /* fetched by the flow */
} flow;

static char *fetch_t1(tokens *t, void *ctx, int64_t *exp, int64_t *ra, tok_err *e)
{
    const char *agent = ctx;
    sbuf f = {0};
    add(&f, "grant_type", "client_credentials");
    add(&f, "client_id", t->s->client_id);
    add(&f, "scope", TOKEN_EXCHANGE_SCOPE);
    add(&f, "fmi_path", agent);
    char *tok = add_credential(t, &f, e) ? post_token(t, &f, exp, ra, e) : NULL;
    free(f.s);
    return tok;
}

static char *fetch_t2(tokens *t, void *ctx, int64_t *exp, int64_t *ra, tok_err *e)
{
    flow *fl = ctx;
    sbuf f = {0};
    add(&f, "grant_type", "client_credentials");
    add(&f, "client_id", fl->r->agent_identity);
    add(&f, "scope", TOKEN_EXCHANGE_SCOPE);
    add(&f, "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    add(&f, "client_assertion", fl->t1);
    char *tok = post_token(t, &f, exp, ra, e);
    free(f.s);
    return tok;
}

static char *fetch_final(tokens *t, void *ctx, int64_t *exp, int64_t *ra, tok_err *e)
{
    flow *fl = ctx;
    const tok_request *r = fl->r;
    sbuf f = {0};
    char *tok = NULL;
    const char *client = r->agent_identity ? r->agent_identity : t->s->client_id;
    add(&f, "client_id", client);
    add(&f, "scope", fl->scope);
    if (r->agent_identity && (r->agent_username || r->agent_user_id)) {
        add(&f, "grant_type", "user_fic");
        add(&f, "user_federated_identity_credential", fl->t2);
        add(&f, r->agent_username ? "username" : "user_id",
            r->agent_username ? r->agent_username : r->agent_user_id);
    } else if (r->user_token) {
        add(&f, "grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer");
        add(&f, "requested_token_use", "on_behalf_of");
        add(&f, "assertion", r->user_token);
    } else {
        add(&f, "grant_type", "client_credentials");
    }
    if (r->agent_identity) {
        add(&f, "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
        add(&f, "client_assertion", fl->t1);
    } else if (!add_credential(t, &f, e)) {
        goto end;
    }
    tok = post_token(t, &f, exp, ra, e);
end:
    free(f.s);
    return tok;
}

/* ---- single flight ------------------------------------------------------------------------ */

typedef struct {
    tokens *t;
    entry *e;
    char *(*fetch)(tokens *, void *, int64_t *, int64_t *, tok_err *);
    void *ctx;
} refresh_job;

static void finish(tokens *t, entry *e, char *tok, int64_t exp, int64_t ra, const tok_err *err)
{
    pthread_mutex_lock(&t->mu);
    if (tok) {
        free(e->token);
        e->token = tok;
        e->exp = exp;
        e->refresh_at = ra;
        e->state = E_READY;
    } else if (e->state == E_PENDING) {
        e->state = E_FAILED;
        e->err = *err;
        table_remove(t, e);      /* the next request tries again */
    }
    e->refreshing = false;
    pthread_cond_broadcast(&e->done);
    entry_put(e);
    pthread_mutex_unlock(&t->mu);
}

/* Look the key up; on a miss, fetch once however many threads ask. Returns a new string. */
static char *cached(tokens *t, const char *key, bool force, tok_err *err,
                    char *(*fetch)(tokens *, void *, int64_t *, int64_t *, tok_err *), void *ctx)
{
    uint32_t h = fnv1a(key);
    int64_t now = util_now();
    pthread_mutex_lock(&t->mu);
    entry *e = table_find(t, key, h);
    if (e && force && e->state == E_READY) {
        table_remove(t, e);
        e = NULL;
    }
    if (e && e->state == E_READY && e->exp - EXPIRY_MARGIN_S > now) {
        lru_unlink(t, e);
        lru_front(t, e);
        t->st.hits++;
        char *tok = xstrdup(e->token);
        bool refresh = now >= e->refresh_at && !e->refreshing;
        if (refresh) e->refreshing = true, e->refs++, t->st.refreshes++;
        pthread_mutex_unlock(&t->mu);
        if (refresh) {
            /* Background refresh: the caller keeps the token it has; a failure leaves the old
             * token in place until it expires. Done inline (with the lock released) by the
             * one caller that noticed, after its answer is computed, to keep this simple. */
            int64_t exp = 0, ra = 0;
            tok_err re = {0};
            char *nt = fetch(t, ctx, &exp, &ra, &re);
            finish(t, e, nt, exp, ra, &re);
        }
        return tok;
    }
    if (e && e->state == E_PENDING) {   /* somebody is fetching it: wait */
        e->refs++;
        t->st.hits++;
        while (e->state == E_PENDING) pthread_cond_wait(&e->done, &t->mu);
        char *tok = e->state == E_READY ? xstrdup(e->token) : NULL;
        if (!tok) *err = e->err;
        entry_put(e);
        pthread_mutex_unlock(&t->mu);
        return tok;
    }
    if (e) table_remove(t, e);          /* expired */
    e = table_add(t, key, h);
    e->refs++;                          /* ours, dropped by finish() */
    t->st.misses++;
    pthread_mutex_unlock(&t->mu);
    int64_t exp = 0, ra = 0;
    char *tok = fetch(t, ctx, &exp, &ra, err);
    char *copy = tok ? xstrdup(tok) : NULL;
    finish(t, e, tok, exp, ra, err);
    return copy;
}

static void key_hash(char out[65], const char *s)
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)s, strlen(s), d);
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

char *tokens_get(tokens *t, const tok_request *r, tok_err *e)
{
    memset(e, 0, sizeof *e);
    flow fl = {.r = r};
    size_t n = 1;
    for (const char *const *s = r->scopes; *s; s++) n += strlen(*s) + 1;
    char *scope = xcalloc(1, n);
    for (const char *const *s = r->scopes; *s; s++) {
        if (s != r->scopes) strcat(scope, " ");
        strcat(scope, *s);
    }
    fl.scope = scope;
    char *tok = NULL;
    char ukey[65] = "-";
    /* OBO tokens are keyed by the inbound token itself (hashed): two users never share one. */
    if (r->user_token) key_hash(ukey, r->user_token);
    if (r->agent_identity) {
        char k1[200];
        snprintf(k1, sizeof k1, "t1|%s|%s|%s", t->s->tenant_id, t->s->client_id, r->agent_identity);
        if (!(fl.t1 = cached(t, k1, false, e, fetch_t1, (void *)r->agent_identity))) goto end;
        if (r->agent_username || r->agent_user_id) {
            char k2[200];
            snprintf(k2, sizeof k2, "t2|%s|%s", t->s->tenant_id, r->agent_identity);
            if (!(fl.t2 = cached(t, k2, false, e, fetch_t2, &fl))) goto end;
        }
    }
    const char *kind = r->agent_identity && (r->agent_username || r->agent_user_id) ? "agentuser"
                       : r->user_token ? "obo" : "app";
    char *key = xasprintf("%s|%s|%s|%s|%s|%s|%s|%s", kind, t->s->tenant_id, t->s->client_id,
                          r->agent_identity ? r->agent_identity : "-",
                          r->agent_username ? r->agent_username : "-",
                          r->agent_user_id ? r->agent_user_id : "-", ukey, scope);
    tok = cached(t, key, r->force_refresh, e, fetch_final, &fl);
    free(key);
end:
    free(fl.t1);
    free(fl.t2);
    free(scope);
    return tok;
}

/* ---- set-up ------------------------------------------------------------------------------- */

tokens *tokens_new(const settings *s, char *err, size_t errlen)
{
    tokens *t = xcalloc(1, sizeof *t);
    t->s = s;
    pthread_mutex_init(&t->mu, NULL);
    const char *inst = s->instance;
    char *meta = xasprintf("%s%s%s/v2.0/.well-known/openid-configuration", inst,
                           util_str_ends_with(inst, "/") ? "" : "/", s->tenant_id);
    t->idp = oidc_new(meta, s->ca_file, s->timeout_ms);
    free(meta);
    for (size_t i = 0; i < s->n_creds; i++) {
        if (s->creds[i].type != CRED_CERTIFICATE_PATH || t->cert_key) continue;
        char *pem = util_read_file(s->creds[i].path, 1 << 20, NULL);
        if (!pem) {
            snprintf(err, errlen, "AzureAd__ClientCredentials__%zu__CertificateDiskPath: cannot read %s",
                     i, s->creds[i].path);
            goto fail;
        }
        t->cert_key = jwk_from_pem(pem, NULL, err, errlen);
        t->cert_x5t = t->cert_key ? pki_cert_thumbprint(pem, false, err, errlen) : NULL;
        free(pem);
        if (!t->cert_key || !t->cert_x5t || !jwk_is_private(t->cert_key)) {
            snprintf(err, errlen, "AzureAd__ClientCredentials__%zu__CertificateDiskPath: %s must hold a "
                     "PEM private key and its certificate", i, s->creds[i].path);
            goto fail;
        }
    }
    return t;
fail:
    tokens_free(t);
    return NULL;
}

void tokens_free(tokens *t)
{
    if (!t) return;
    for (size_t b = 0; b < BUCKETS; b++)
        for (entry *e = t->buckets[b], *nx; e; e = nx) {
            nx = e->hnext;
            pthread_cond_destroy(&e->done);
            free(e->key);
            free(e->token);
            free(e);
        }
    oidc_free(t->idp);
    if (t->cert_key) jwk_unref(t->cert_key);
    free(t->cert_x5t);
    for (int i = 0; i < 4; i++) free(t->issuers[i]);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

int tokens_verify_inbound(tokens *t, const char *token, jwt *out, bool *unreachable, char *err,
                          size_t errlen)
{
    httpc_result kind = HTTPC_OK;
    *unreachable = false;
    if (oidc_ready(t->idp, &kind, err, errlen) != 0) {
        *unreachable = true;
        return -1;
    }
    return oidc_verify(t->idp, token, out, err, errlen);
}

const char *const *tokens_issuers(tokens *t)
{
    char err[200];
    if (oidc_ready(t->idp, NULL, err, sizeof err) != 0) return NULL;
    pthread_mutex_lock(&t->mu);
    if (!t->issuers[0]) {
        /* v2 from discovery; v1 is the same base without "v2.0", and Entra's sts.windows.net. */
        const char *v2 = oidc_issuer(t->idp);
        size_t n = strlen(v2);
        t->issuers[1] = util_str_ends_with(v2, "/v2.0") ? xstrndup(v2, n - 4) : xstrdup(v2);
        t->issuers[2] = xasprintf("https://sts.windows.net/%s/", t->s->tenant_id);
        t->issuers[0] = xstrdup(v2);
    }
    pthread_mutex_unlock(&t->mu);
    return (const char *const *)t->issuers;
}

void tokens_get_stats(tokens *t, tokens_stats *out)
{
    pthread_mutex_lock(&t->mu);
    *out = t->st;
    out->entries = t->count;
    pthread_mutex_unlock(&t->mu);
}
