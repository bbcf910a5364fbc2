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
#define REFRESH_STACK (1024 * 1024)  /* a background refresh: curl, OpenSSL, jansson */

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
    tok_err *err;                    /* E_FAILED only: kept out of line, 1 KiB each */
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
    int jobs;                        /* background refreshes running */
    bool stopping;
    pthread_cond_t jobs_done;
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
    free(e->err);
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

/* Bounded: evict least recently used entries nobody is waiting on, except keep. Entries still
 * pending cannot go, so a burst of misses may overshoot; finish() evicts again once they are
 * ready. With t->mu held. */
static void evict(tokens *t, const entry *keep)
{
    for (entry *v = t->lru_tail; t->count > t->s->cache_size && v;) {
        entry *prev = v->prev;
        if (v->state != E_PENDING && v != keep) {
            table_remove(t, v);
            t->st.evictions++;
        }
        v = prev;
    }
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
    evict(t, e);
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
    const char *ep = oidc_token_endpoint(t->idp);
    if (!ep)
        errf(e, TOK_BAD_RESPONSE, "identity provider discovery document has no token_endpoint");
    return ep;
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

/* What one cache entry is made from. Small and copyable, so a background refresh can take
 * its own copy; dependencies (T1, T2, a managed-identity token) come from the cache too. */
typedef enum { F_MI, F_T1, F_T2, F_FINAL } fetch_kind;

typedef struct {
    fetch_kind kind;
    const cred_source *mi;         /* F_MI (settings outlive the cache) */
    char *agent;                   /* agent identity, or NULL */
    char *username, *user_id;      /* agent user */
    char *user_token;              /* OBO assertion */
    char *scope;                   /* space-joined */
} fetch_spec;

static char *cached(tokens *t, const fetch_spec *f, bool force, tok_err *e);

static void spec_key(const tokens *t, const fetch_spec *f, char **key)
{
    char ukey[65] = "-";
    if (f->user_token) {
        /* OBO tokens are keyed by the inbound token itself (hashed): two users never share one. */
        unsigned char d[SHA256_DIGEST_LENGTH];
        SHA256((const unsigned char *)f->user_token, strlen(f->user_token), d);
        for (int i = 0; i < 32; i++) snprintf(ukey + 2 * i, 3, "%02x", d[i]);
    }
    static const char *const K[] = {"mi", "t1", "t2", "final"};
    *key = xasprintf("%s|%s|%s|%s|%s|%s|%s|%s|%s", K[f->kind], t->s->tenant_id, t->s->client_id,
                     f->mi && f->mi->mi_client_id ? f->mi->mi_client_id : "-",
                     f->agent ? f->agent : "-", f->username ? f->username : "-",
                     f->user_id ? f->user_id : "-", ukey, f->scope ? f->scope : "-");
}

static fetch_spec *spec_copy(const fetch_spec *f)
{
    fetch_spec *c = xcalloc(1, sizeof *c);
    c->kind = f->kind;
    c->mi = f->mi;
#define DUP(x) c->x = f->x ? xstrdup(f->x) : NULL
    DUP(agent); DUP(username); DUP(user_id); DUP(user_token); DUP(scope);
#undef DUP
    return c;
}

static void spec_free(fetch_spec *f)
{
    if (!f) return;
    free(f->agent);
    free(f->username);
    free(f->user_id);
    free(f->user_token);
    free(f->scope);
    free(f);
}

/* Managed identity: an app token for api://AzureADTokenExchange from IMDS or App Service. */
static char *fetch_mi(tokens *t, const cred_source *c, int64_t *exp, int64_t *refresh_at, tok_err *e)
{
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
        /* MSAL.NET sets the path on the host's URI, so "http://host:port/" works as well. */
        if (!imds || !*imds) imds = "http://169.254.169.254";
        int n = (int)strlen(imds);
        while (n > 0 && imds[n - 1] == '/') n--;
        url = xasprintf("%.*s/metadata/identity/oauth2/token?api-version=2018-02-01&resource=%s%s%s",
                        n, imds, res, cid ? "&client_id=" : "", cid ? cid : "");
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
    /* msal computes the lifetime from expires_on and so do we (entra-protocol.md §3c). */
    int64_t now = util_now();
    *exp = json_is_string(eo) ? strtoll(json_string_value(eo), NULL, 10)
           : json_is_integer(eo) ? json_integer_value(eo) : now + 3600;
    *refresh_at = now + (*exp - now) / 2;
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
            fetch_spec ms = {.kind = F_MI, .mi = c};
            if ((a = cached(t, &ms, false, &me))) break;
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

#define JWT_BEARER_ASSERTION "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

static char *fetch(tokens *t, const fetch_spec *f, int64_t *exp, int64_t *ra, tok_err *e)
{
    if (f->kind == F_MI) return fetch_mi(t, f->mi, exp, ra, e);
    sbuf b = {0};
    char *tok = NULL, *t1 = NULL, *t2 = NULL;
    if (f->kind != F_T1 && f->agent) {
        /* Every agent flow starts with T1: the blueprint's token for this agent (fmi_path). */
        fetch_spec s1 = {.kind = F_T1, .agent = f->agent};
        if (!(t1 = cached(t, &s1, false, e))) goto end;
    }
    switch (f->kind) {
    case F_T1:
        add(&b, "grant_type", "client_credentials");
        add(&b, "client_id", t->s->client_id);
        add(&b, "scope", TOKEN_EXCHANGE_SCOPE);
        add(&b, "fmi_path", f->agent);
        if (!add_credential(t, &b, e)) goto end;
        break;
    case F_T2:
        add(&b, "grant_type", "client_credentials");
        add(&b, "client_id", f->agent);
        add(&b, "scope", TOKEN_EXCHANGE_SCOPE);
        break;
    default:
        add(&b, "client_id", f->agent ? f->agent : t->s->client_id);
        add(&b, "scope", f->scope);
        if (f->agent && (f->username || f->user_id)) {
            fetch_spec s2 = {.kind = F_T2, .agent = f->agent};
            if (!(t2 = cached(t, &s2, false, e))) goto end;
            add(&b, "grant_type", "user_fic");
            add(&b, "user_federated_identity_credential", t2);
            add(&b, f->username ? "username" : "user_id", f->username ? f->username : f->user_id);
        } else if (f->user_token) {
            add(&b, "grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer");
            add(&b, "requested_token_use", "on_behalf_of");
            add(&b, "assertion", f->user_token);
        } else {
            add(&b, "grant_type", "client_credentials");
        }
        if (!f->agent && !add_credential(t, &b, e)) goto end;
        break;
    }
    if (t1) {                        /* the agent authenticates with T1 */
        add(&b, "client_assertion_type", JWT_BEARER_ASSERTION);
        add(&b, "client_assertion", t1);
    }
    tok = post_token(t, &b, exp, ra, e);
end:
    free(b.s);
    free(t1);
    free(t2);
    return tok;
}

/* ---- single flight and background refresh ------------------------------------------------- */

static void finish(tokens *t, entry *e, char *tok, int64_t exp, int64_t ra, const tok_err *err)
{
    pthread_mutex_lock(&t->mu);
    if (tok) {
        free(e->token);
        e->token = tok;
        e->exp = exp;
        e->refresh_at = ra;
        e->state = E_READY;
        evict(t, e);
    } else if (e->state == E_PENDING) {
        e->state = E_FAILED;
        e->err = xmalloc(sizeof *e->err);
        *e->err = *err;
        table_remove(t, e);      /* the next request tries again */
    }
    /* A failed background refresh leaves the old token, served until it expires. */
    e->refreshing = false;
    pthread_cond_broadcast(&e->done);
    entry_put(e);
    pthread_mutex_unlock(&t->mu);
}

typedef struct {
    tokens *t;
    entry *e;
    fetch_spec *spec;
} refresh_job;

static void *refresh_main(void *arg)
{
    refresh_job *j = arg;
    int64_t exp = 0, ra = 0;
    tok_err e = {0};
    char *tok = fetch(j->t, j->spec, &exp, &ra, &e);
    finish(j->t, j->e, tok, exp, ra, &e);
    pthread_mutex_lock(&j->t->mu);
    j->t->jobs--;
    pthread_cond_broadcast(&j->t->jobs_done);
    pthread_mutex_unlock(&j->t->mu);
    spec_free(j->spec);
    free(j);
    return NULL;
}

/* Look the spec up; on a miss fetch once however many threads ask. Returns a new string.
 * peek: only a ready, fresh entry counts; anything else gives NULL at once, untouched. */
static char *cached_or_peek(tokens *t, const fetch_spec *f, bool force, tok_err *err, bool peek)
{
    char *key;
    spec_key(t, f, &key);
    uint32_t h = fnv1a(key);
    int64_t now = util_now();
    char *tok = NULL;
    pthread_mutex_lock(&t->mu);
    entry *e = table_find(t, key, h);
    if (peek && (force || !e || e->state != E_READY || e->exp - EXPIRY_MARGIN_S <= now)) {
        pthread_mutex_unlock(&t->mu);
        free(key);
        return NULL;
    }
    if (e && force && e->state == E_READY) {
        table_remove(t, e);
        e = NULL;
    }
    if (e && e->state == E_READY && e->exp - EXPIRY_MARGIN_S > now) {
        lru_unlink(t, e);
        lru_front(t, e);
        t->st.hits++;
        tok = xstrdup(e->token);
        if (now >= e->refresh_at && !e->refreshing && !t->stopping) {
            /* Refresh in the background; this caller and the next keep the current token. */
            refresh_job *j = xcalloc(1, sizeof *j);
            *j = (refresh_job){t, e, spec_copy(f)};
            e->refreshing = true;
            e->refs++;
            t->st.refreshes++;
            t->jobs++;
            pthread_t th;
            pthread_attr_t at;
            pthread_attr_init(&at);
            pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
            pthread_attr_setstacksize(&at, REFRESH_STACK);
            if (pthread_create(&th, &at, refresh_main, j) != 0) {
                e->refreshing = false;
                e->refs--;
                t->jobs--;
                spec_free(j->spec);
                free(j);
            }
            pthread_attr_destroy(&at);
        }
        pthread_mutex_unlock(&t->mu);
        free(key);
        return tok;
    }
    if (e && e->state == E_PENDING) {   /* somebody is fetching it: wait for that */
        e->refs++;
        t->st.hits++;
        while (e->state == E_PENDING) pthread_cond_wait(&e->done, &t->mu);
        if (e->state == E_READY) tok = xstrdup(e->token);
        else *err = *e->err;
        entry_put(e);
        pthread_mutex_unlock(&t->mu);
        free(key);
        return tok;
    }
    if (e) table_remove(t, e);          /* expired */
    e = table_add(t, key, h);
    e->refs++;                          /* ours, dropped by finish() */
    t->st.misses++;
    pthread_mutex_unlock(&t->mu);
    free(key);
    int64_t exp = 0, ra = 0;
    tok = fetch(t, f, &exp, &ra, err);
    char *copy = tok ? xstrdup(tok) : NULL;
    finish(t, e, tok, exp, ra, err);
    return copy;
}

static char *cached(tokens *t, const fetch_spec *f, bool force, tok_err *err)
{
    return cached_or_peek(t, f, force, err, false);
}

/* tokens_get and tokens_peek: the final token's spec from the request. */
static char *final_token(tokens *t, const tok_request *r, tok_err *e, bool peek)
{
    size_t n = 1;
    for (const char *const *s = r->scopes; *s; s++) n += strlen(*s) + 1;
    char *scope = xcalloc(1, n);
    for (const char *const *s = r->scopes; *s; s++) {
        if (s != r->scopes) strcat(scope, " ");
        strcat(scope, *s);
    }
    fetch_spec f = {.kind = F_FINAL, .agent = (char *)r->agent_identity,
                    .username = r->agent_identity ? (char *)r->agent_username : NULL,
                    .user_id = r->agent_identity && !r->agent_username ? (char *)r->agent_user_id : NULL,
                    .user_token = (char *)r->user_token, .scope = scope};
    if (f.username || f.user_id) f.user_token = NULL;   /* agent users are not OBO */
    char *tok = cached_or_peek(t, &f, r->force_refresh, e, peek);
    free(scope);
    return tok;
}

char *tokens_get(tokens *t, const tok_request *r, tok_err *e)
{
    memset(e, 0, sizeof *e);
    return final_token(t, r, e, false);
}

char *tokens_peek(tokens *t, const tok_request *r)
{
    tok_err unused;
    return final_token(t, r, &unused, true);
}

/* ---- set-up ------------------------------------------------------------------------------- */

/* The "-----BEGIN [RSA |EC |ENCRYPTED ]PRIVATE KEY-----" block of a PEM file, or NULL. */
static char *private_key_block(const char *pem)
{
    static const char BEGIN[] = "-----BEGIN ", DASHES[] = "-----", PK[] = "PRIVATE KEY";
    for (const char *p = strstr(pem, BEGIN); p; p = strstr(p + 1, BEGIN)) {
        const char *label = p + strlen(BEGIN), *close = strstr(label, DASHES);
        if (!close) break;
        size_t n = (size_t)(close - label);
        if (n < strlen(PK) || strncmp(close - strlen(PK), PK, strlen(PK)) != 0) continue;
        char *end = xasprintf("-----END %.*s-----", (int)n, label);
        const char *e = strstr(close, end);
        char *out = e ? xstrndup(p, (size_t)(e - p) + strlen(end)) : NULL;
        free(end);
        return out;
    }
    return NULL;
}

tokens *tokens_new(const settings *s, char *err, size_t errlen)
{
    tokens *t = xcalloc(1, sizeof *t);
    t->s = s;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->jobs_done, NULL);
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
        /* One PEM with the key and the certificate, in either order: the key from its own
         * block (jwk_from_pem would take the certificate's public key), then the certificate
         * attached, which also checks that it holds this key. */
        char *key_pem = private_key_block(pem);
        t->cert_key = key_pem ? jwk_from_pem(key_pem, NULL, err, errlen) : NULL;
        if (t->cert_key && jwk_set_cert(t->cert_key, pem, err, errlen) == 0)
            t->cert_x5t = xstrdup(jwk_x5t(t->cert_key));
        free(key_pem);
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
    pthread_mutex_lock(&t->mu);          /* let background refreshes finish first */
    t->stopping = true;
    while (t->jobs > 0) pthread_cond_wait(&t->jobs_done, &t->mu);
    pthread_mutex_unlock(&t->mu);
    pthread_cond_destroy(&t->jobs_done);
    for (size_t b = 0; b < BUCKETS; b++)
        for (entry *e = t->buckets[b], *nx; e; e = nx) {
            nx = e->hnext;
            pthread_cond_destroy(&e->done);
            free(e->err);
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
    int rc = oidc_verify(t->idp, token, out, err, errlen);
    if (rc == JWKS_UNAVAILABLE) *unreachable = true;
    return rc == 0 ? 0 : -1;
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
