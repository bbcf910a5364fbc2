/* gateway — see gateway.h.
 *
 * One http_server per bind, event-driven: a pool of one thread per CPU serves every connection
 * and nothing blocks it. Proxied requests go upstream as asynchronous transfers
 * (httpc_async_*, on the HTTP client's own thread): the request waits for the answer's headers
 * parked (http_wait), and its streamed body says HTTP_STREAM_AGAIN when the upstream has sent
 * nothing new; the transfer's notify wakes the connection (http_wake). What would block — a
 * token not in the cache of verified tokens (its check may fetch the JWKS) and MCP routes
 * (calls to the targets, token exchanges) — runs on the server's deferred workers (http_defer),
 * where waiting is allowed. Every request takes a reference to the configuration current when
 * it arrived and drops it once its answer is out (http_req_on_done), so a reload never changes
 * or frees what a request in flight uses.
 *
 * Per request, in this order (each step may answer and stop):
 *   /healthz; /.well-known/oauth-protected-resource{path} (RFC 9728)
 *   route selection — exact path > longest prefix > method > header matches > file order
 *   CORS preflight, then the CORS headers every answer of the route carries
 *   localRateLimit (429), jwtAuth (401/503), authorization (403)
 *   backend: mcp → mcp_mux_handle; host/url/ai → proxy() with a streamed answer
 */
#include "gateway/gateway.h"

#include "core/args.h"
#include "core/http_client.h"
#include "core/http_server.h"
#include "core/log.h"
#include "core/util.h"
#include "gateway/config.h"
#include "gateway/metrics.h"
#include "gateway/tokcache.h"
#include "jose/jwt.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#define SKEW_S        60                 /* exp / nbf leeway, as agentgateway's jsonwebtoken */
#define MAX_BODY      (8 * 1024 * 1024)  /* the cap on request bodies, streamed or buffered */
#define STREAM_MIN    (64 * 1024)        /* bodies larger (or chunked) go upstream as they come */
#define IDLE_S        60                 /* keep-alive idle timeout of client connections */
#define PRM_PREFIX    "/.well-known/oauth-protected-resource"
#define MAX_UP_HDRS   128                /* request headers forwarded upstream */
#define VERIFIED_SLOTS 1024              /* tokens remembered as verified (tokcache.h) */
#define WHOLE_MAX     (16 * 1024)        /* an upstream answer all in by then goes out in one piece */
#define DOWN_MS 10000                    /* an unreachable backend of several: no first tries */
#define DEFER_WORKERS 64                 /* threads for MCP calls and token checks that may fetch */

static const char USAGE[] =
    "usage: agentid gateway --config FILE [--listen ADDR:PORT]\n"
    "  --config FILE       the YAML configuration (docs/gateway.md)\n"
    "  --listen ADDR:PORT  serve the configuration's only bind here instead\n"
    "  The file is reloaded on SIGHUP and when it changes. SSL_CERT_FILE names an extra CA\n"
    "  for https upstreams and JWKS URLs.\n";

typedef struct gateway gateway;

typedef struct {
    gateway *gw;
    size_t bind;                 /* index into the configuration's binds */
    char listen[80];
    unsigned port;               /* the bound port (metrics' bind label) */
    uint64_t tls_id;             /* tls_id() of the bind's certificate now: 0 for plain HTTP */
    http_server *srv;
} server;

/* Which certificate and key a bind serves (FNV-1a of both; 0: plain HTTP), so a reload sees a
 * new pair without the key being kept or compared anywhere else. */
static uint64_t tls_id(const gw_bind *b)
{
    if (!b->tls_cert_pem) return 0;
    uint64_t h = util_fnv1a(UTIL_FNV_BASIS, b->tls_cert_pem, strlen(b->tls_cert_pem));
    return util_fnv1a(h, b->tls_key_pem, strlen(b->tls_key_pem)) | 1;
}

struct gateway {
    const char *path;
    const char *listen_override;
    pthread_mutex_t mu;          /* guards cur, gen and mtime */
    gw_config *cur;
    uint64_t gen;                /* counts configurations swapped in: cached verdicts name it */
    tokcache *verified;          /* tokens that passed jwtAuth, by configuration and route */
    struct timespec mtime;
    server *servers;
    size_t n_servers;
    atomic_bool stopping;        /* cancels workers waiting on upstreams */
    const char *ca_file;         /* SSL_CERT_FILE */
    http_server *stats, *ready;  /* config.statsAddr, config.readinessAddr (ready NULL if the same) */
};

/* ---- configuration: load, swap, reload ------------------------------------------------------- */

/* The current configuration (a new reference) and, if gen is not NULL, its generation. */
static gw_config *acquire(gateway *gw, uint64_t *gen)
{
    pthread_mutex_lock(&gw->mu);
    gw_config *c = gw_config_ref(gw->cur);
    if (gen) *gen = gw->gen;
    pthread_mutex_unlock(&gw->mu);
    return c;
}

static void release(void *c) { gw_config_unref(c); }

static void warn_exposed(const gw_config *c, const gateway *gw)
{
    for (size_t i = 0; i < c->n_binds; i++)
        if (!gw_is_loopback(c->binds[i].address) && !(gw->listen_override && i == 0))
            log_msg(LOG_WARN, "non_loopback", "bind %s port %u is reachable from other machines "
                    "(config.allowNonLoopback)", c->binds[i].address, c->binds[i].port);
}

/* Look up the host names of c's host and ai backends now, so that their first requests already
 * go the direct way (http_client.h, httpc_prepare; https ones are left alone there). */
static void prepare_upstreams(const gw_config *c)
{
    for (size_t i = 0; i < c->n_binds; i++)
        for (size_t k = 0; k < c->binds[i].n_routes; k++) {
            const gw_backend *b = &c->binds[i].routes[k].backend;
            if (b->kind == GW_BACKEND_MCP) continue;
            if (b->base_url) httpc_prepare(b->base_url);
            for (size_t u = 0; u < b->n_urls; u++) httpc_prepare(b->urls[u]);
        }
}

static bool same_str(const char *a, const char *b) { return a == b || (a && b && !strcmp(a, b)); }

/* Parse the file again and swap it in if it loads and fits the running servers. */
static void reload(gateway *gw, const char *why)
{
    char err[512];
    struct stat st;
    bool have_st = stat(gw->path, &st) == 0;
    gw_config *prev = acquire(gw, NULL);
    gw_config *c = gw_config_load(gw->path, prev, err, sizeof err);
    gw_config_unref(prev);
    pthread_mutex_lock(&gw->mu);
    if (have_st) gw->mtime = st.st_mtim;
    if (c && c->n_binds != gw->n_servers) {
        snprintf(err, sizeof err, "%s: the new file has %zu binds, the running gateway %zu (binds "
                 "change only on restart)", gw->path, c->n_binds, gw->n_servers);
        gw_config_unref(c);
        c = NULL;
    }
    gw_config *old = c ? gw->cur : NULL;
    if (c) gw->cur = c, gw->gen++;
    pthread_mutex_unlock(&gw->mu);
    if (!c) {
        log_msg(LOG_ERROR, "config_invalid", "keeping the previous configuration: %s", err);
        return;
    }
    for (size_t i = 0; i < c->n_binds; i++) {
        server *s = &gw->servers[i];
        char want[80];
        snprintf(want, sizeof want, strchr(c->binds[i].address, ':') ? "[%s]:%u" : "%s:%u",
                 c->binds[i].address, c->binds[i].port);
        if (!gw->listen_override && strcmp(want, s->listen))
            log_msg(LOG_WARN, "bind_changed", "bind %zu is now %s in the file but stays %s until a restart",
                    i, want, s->listen);
        uint64_t id = tls_id(&c->binds[i]);
        if (id == s->tls_id) continue;
        if (!id || !s->tls_id) { /* HTTP <-> HTTPS: another daemon */
            log_msg(LOG_WARN, "bind_changed", "bind %zu: the new protocol takes effect on restart; %s "
                    "stays %s until then", i, s->listen, s->tls_id ? "HTTPS" : "HTTP");
            continue;
        }
        char terr[200];
        if (http_server_set_tls(s->srv, c->binds[i].tls_cert_pem, c->binds[i].tls_key_pem, terr, sizeof terr)) {
            s->tls_id = id;
            log_msg(LOG_INFO, "tls_reloaded", "bind %zu (%s): new connections get the new certificate; "
                    "open ones keep theirs", i, s->listen);
        } else {
            log_msg(LOG_ERROR, "tls_reload_failed", "bind %zu (%s) keeps its certificate: %s", i, s->listen, terr);
        }
    }
    warn_exposed(c, gw);
    prepare_upstreams(c);
    if (!same_str(c->stats_listen, old ? old->stats_listen : NULL) ||
        !same_str(c->ready_listen, old ? old->ready_listen : NULL))
        log_msg(LOG_WARN, "admin_changed", "config.statsAddr and readinessAddr change only on restart");
    size_t routes = 0;
    for (size_t i = 0; i < c->n_binds; i++) routes += c->binds[i].n_routes;
    log_msg(LOG_INFO, "config_loaded", "%s (%s): %zu routes", gw->path, why, routes);
    gw_config_unref(old); /* requests still using it hold their own references */
}

static void maybe_reload(gateway *gw)
{
    struct stat st;
    if (stat(gw->path, &st) != 0) return;
    pthread_mutex_lock(&gw->mu);
    bool changed = st.st_mtim.tv_sec != gw->mtime.tv_sec || st.st_mtim.tv_nsec != gw->mtime.tv_nsec;
    pthread_mutex_unlock(&gw->mu);
    if (changed) reload(gw, "file changed");
}

/* ---- small helpers -------------------------------------------------------------------------- */

/* Copy s for a quoted-string (RFC 7230 §3.2.6): no quotes, backslashes or control bytes. */
static void quoted_safe(char *out, size_t outlen, const char *s)
{
    size_t k = 0;
    for (; s && *s && k + 1 < outlen; s++)
        if (*s != '"' && *s != '\\' && (unsigned char)*s >= 0x20 && *s != 0x7f) out[k++] = *s;
    out[k] = '\0';
}

/* The request's Host header if it is a well-formed host[:port], else the address the server
 * listens on: what URLs handed back to the client are built from. */
static const char *client_host(http_req *r, const server *sv)
{
    static const char HOST_CHARS[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]";
    const char *host = http_req_header(r, "Host");
    return !host || !*host || strlen(host) > 255 || host[strspn(host, HOST_CHARS)] ? sv->listen : host;
}

/* The length of host[:port]'s host part ("[::1]" with its brackets). */
static size_t host_len(const char *host)
{
    if (host[0] != '[') return strcspn(host, ":");
    size_t n = strcspn(host, "]");
    return n + (host[n] == ']');
}

/* "scheme://authority" of this request as the client sees it: the route's configured
 * resource if any, else the Host header (only well-formed host[:port] names). */
static void request_base(http_req *r, const gw_route *rt, const server *sv, char *out, size_t outlen)
{
    if (rt && rt->meta.resource) {
        const char *p = strstr(rt->meta.resource, "://") + 3;
        snprintf(out, outlen, "%.*s", (int)(p - rt->meta.resource + strcspn(p, "/?#")), rt->meta.resource);
        return;
    }
    snprintf(out, outlen, "%s://%s", http_req_is_tls(r) ? "https" : "http", client_host(r, sv));
}

/* ---- routing -------------------------------------------------------------------------------- */

/* Origin-form (RFC 7230 §5.3.1) without "." or ".." segments once decoded (RFC 3986 §5.2.4):
 * routes match the path as sent, so "/api/../admin" would pass /api's policies and reach
 * whatever the upstream makes of it. Backslashes count as separators, as some servers treat them. */
static bool path_ok(const char *path, const char *target)
{
    if (path[0] != '/' || target[0] != '/') return false;
    for (const char *t = target; *t; t++) /* forwarded as sent: visible ASCII only (RFC 3986 §2) */
        if ((unsigned char)*t <= 0x20 || (unsigned char)*t >= 0x7f) return false;
    for (const char *p = path; *p;) {
        p += strspn(p, "/\\");
        size_t n = strcspn(p, "/\\");
        if ((n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return false;
        p += n;
    }
    return true;
}

/* Gateway API path-prefix semantics: "/llm" matches /llm, /llm/ and /llm/x, not /llmx. */
static bool prefix_match(const char *prefix, const char *path)
{
    size_t n = strlen(prefix);
    if (n && prefix[n - 1] == '/') {
        if (!strncmp(path, prefix, n)) return true;
        return n > 1 && strlen(path) == n - 1 && !strncmp(path, prefix, n - 1);
    }
    return !strncmp(path, prefix, n) && (path[n] == '\0' || path[n] == '/');
}

/* How specifically m matches; -1 for no match. With r NULL only the path counts. */
static long match_score(const gw_match *m, const char *path, http_req *r)
{
    long score;
    if (m->path_kind == GW_PATH_EXACT) {
        if (strcmp(m->path, path)) return -1;
        score = 1L << 40;
    } else if (m->path_kind == GW_PATH_REGEX) { /* ranked as a prefix of the pattern's length */
        if (regexec(m->path_re, path, 0, NULL, 0) != 0) return -1;
        score = (long)strlen(m->path) << 20;
    } else {
        if (!prefix_match(m->path, path)) return -1;
        score = (long)strlen(m->path) << 20;
    }
    if (!r) return score;
    if (m->method) {
        if (strcmp(m->method, http_req_method(r))) return -1;
        score += 1L << 16;
    }
    for (size_t i = 0; i < m->n_headers; i++) {
        if (!gw_value_matches(&m->headers[i], http_req_header(r, m->headers[i].name))) return -1;
        score += 1L << 8;
    }
    for (size_t i = 0; i < m->n_query; i++) {
        if (!gw_value_matches(&m->query[i], http_req_query(r, m->query[i].name))) return -1;
        score++;
    }
    return score;
}

/* How well a route's hostnames fit host (the Host header without its port): -1 not at all,
 * 0 the route names none (any host), else more for a closer fit — an exact name beats any
 * wildcard, a longer wildcard suffix a shorter one (Gateway API's precedence). */
static long host_score(char *const *names, const char *host, size_t hlen)
{
    if (!names) return 0;
    long best = -1;
    for (size_t i = 0; names[i]; i++) {
        const char *n = names[i];
        size_t nlen = strlen(n);
        if (n[0] == '*' && n[1] == '.') { /* one or more labels, then the suffix */
            size_t slen = nlen - 1; /* ".example.com" */
            if (hlen > slen && !strncasecmp(host + hlen - slen, n + 1, slen) && (long)slen > best) best = (long)slen;
        } else if (nlen == hlen && !strncasecmp(n, host, hlen)) {
            return 512;
        }
    }
    return best;
}

/* The best route for host and path (and r's method and headers when r is given); *matched gets
 * the match that chose it. With need_jwt only routes with jwtAuth count. A route's hostnames
 * come first: the closest host name fit wins, then the path, method and headers (match_score). */
static gw_route *route_for_host(const gw_bind *b, const char *path, const char *host, http_req *r,
                                bool need_jwt, const gw_match **matched)
{
    gw_route *best = NULL;
    long best_score = -1;
    if (!host) host = "";
    size_t hlen = host_len(host);
    for (size_t i = 0; i < b->n_routes; i++) {
        gw_route *rt = &b->routes[i];
        if (need_jwt && !rt->jwt) continue;
        long hs = host_score(rt->hostnames, host, hlen);
        if (hs < 0) continue;
        for (size_t k = 0; k < rt->n_matches; k++) {
            long s = match_score(&rt->matches[k], path, r);
            if (s >= 0) s += hs << 42;
            if (s > best_score) {
                best_score = s;
                best = rt;
                if (matched) *matched = &rt->matches[k];
            }
        }
    }
    return best;
}

static gw_route *route_for(const gw_bind *b, const char *path, http_req *r, bool need_jwt,
                           const gw_match **matched)
{
    return route_for_host(b, path, http_req_header(r, "Host"), r, need_jwt, matched);
}

/* ---- CORS --------------------------------------------------------------------------------- */

static bool origin_allowed(const gw_cors *c, const char *origin, bool *wildcard)
{
    *wildcard = false;
    for (char **o = c->allow_origins; o && *o; o++) {
        if (!strcmp(*o, "*")) *wildcard = true;
        if (!strcmp(*o, "*") || !strcasecmp(*o, origin)) return true;
    }
    return false;
}

/* The CORS headers for an allowed origin. Returns true if the request was a preflight, which
 * is then answered here (Fetch standard §3.2.2 "CORS-preflight request"). */
static bool cors(http_req *r, const gw_cors *c)
{
    const char *origin = http_req_header(r, "Origin");
    bool wildcard, allowed = c && origin && origin_allowed(c, origin, &wildcard);
    bool preflight = c && origin && !strcmp(http_req_method(r), "OPTIONS") &&
                     http_req_header(r, "Access-Control-Request-Method");
    if (allowed) {
        /* "*" cannot go with credentials: then the origin is echoed instead. */
        http_add_header(r, "Access-Control-Allow-Origin", wildcard && !c->allow_credentials ? "*" : origin);
        if (c->allow_credentials) http_add_header(r, "Access-Control-Allow-Credentials", "true");
        http_add_header(r, "Vary", "Origin");
        if (!preflight && c->expose_headers) http_add_header(r, "Access-Control-Expose-Headers", c->expose_headers);
    }
    if (!preflight) return false;
    if (allowed) {
        if (c->allow_methods) http_add_header(r, "Access-Control-Allow-Methods", c->allow_methods);
        if (c->allow_headers) http_add_header(r, "Access-Control-Allow-Headers", c->allow_headers);
        if (c->max_age_s >= 0) {
            char v[32];
            snprintf(v, sizeof v, "%ld", c->max_age_s);
            http_add_header(r, "Access-Control-Max-Age", v);
        }
    }
    http_reply(r, 200, NULL, "", 0); /* a refused origin gets no CORS headers: the browser stops */
    return true;
}

/* ---- local rate limit ------------------------------------------------------------------------ */

/* Take one token from every bucket; the x-ratelimit-* headers describe the tightest one. */
static bool rate_limit(http_req *r, gw_route *rt)
{
    bool ok = true;
    long limit = 0, remaining = LONG_MAX, reset_s = 0;
    for (size_t i = 0; i < rt->n_limits; i++) {
        gw_ratelimit *b = &rt->limits[i];
        int64_t now = util_mono_ms();
        pthread_mutex_lock(&b->mu);
        if (b->last_fill_ms < 0) b->last_fill_ms = now;
        int64_t fills = (now - b->last_fill_ms) / b->fill_ms;
        if (fills > 0) {
            int64_t t = b->tokens + fills * b->tokens_per_fill;
            b->tokens = t > b->max_tokens ? b->max_tokens : (long)t;
            b->last_fill_ms += fills * b->fill_ms;
        }
        bool got = b->tokens > 0;
        if (got) b->tokens--;
        long left = b->tokens, reset = (long)((b->last_fill_ms + b->fill_ms - now + 999) / 1000);
        pthread_mutex_unlock(&b->mu);
        ok = ok && got;
        if (left < remaining) remaining = left, limit = b->max_tokens, reset_s = reset;
    }
    if (!rt->n_limits) return true;
    char v[32];
    snprintf(v, sizeof v, "%ld", limit);
    http_add_header(r, "x-ratelimit-limit", v);
    snprintf(v, sizeof v, "%ld", remaining);
    http_add_header(r, "x-ratelimit-remaining", v);
    snprintf(v, sizeof v, "%ld", reset_s);
    http_add_header(r, "x-ratelimit-reset", v);
    if (!ok) http_reply_text(r, 429, "rate limit exceeded");
    return ok;
}

/* ---- jwtAuth ------------------------------------------------------------------------------- */

typedef struct {
    const char *check;           /* failed_check: missing, malformed, signature, expired, ... */
    char reason[300];
    int status;                  /* 401, or 503 when the keys could not be fetched */
} verdict;

static void failed(verdict *v, int status, const char *check, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void failed(verdict *v, int status, const char *check, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->reason, sizeof v->reason, fmt, ap);
    va_end(ap);
    log_redact(v->reason);
    v->check = check;
    v->status = status;
}

/* Signature with the route's keys, then the claims. 0 with *t filled, or -1 with *v. Without
 * may_fetch, 1 (undecided, nothing filled) where the key set would have to be fetched first. */
static int validate(const gw_jwt *j, const char *token, jwt *t, verdict *v, bool may_fetch)
{
    char err[256];
    if (jwt_decode(token, t, err, sizeof err) != 0) {
        failed(v, 401, "malformed", "%s", err);
        return -1;
    }
    const char *kid = jwt_kid(t), *x5t = json_string_value(json_object_get(t->header, "x5t"));
    if (j->require_kid && !kid) {
        failed(v, 401, "malformed", "token header has no kid");
        goto bad;
    }
    /* Of several providers, the token's iss names the one whose keys and audiences apply (a
     * token cannot pick another's keys: the issuer is checked against the same provider). */
    const gw_jwt_provider *p = &j->providers[0];
    if (j->n_providers > 1) {
        const char *iss = jwt_claim_str(t, "iss");
        p = NULL;
        for (size_t i = 0; iss && !p && i < j->n_providers; i++)
            if (!strcmp(iss, j->providers[i].issuer)) p = &j->providers[i];
        if (!p) {
            char *have = jwt_claim_text(t, "iss");
            failed(v, 401, "issuer", "iss %s is not the issuer of any of the route's %zu providers", have,
                   j->n_providers);
            free(have);
            goto bad;
        }
    }
    if (p->jwks_keys) {
        const jwk *k = kid || x5t ? jwks_find(p->jwks_keys, kid, x5t) : NULL;
        if (!k) {
            failed(v, 401, "signature", "no key in the JWKS matches the token's %s", kid ? "kid" : "x5t");
            goto bad;
        }
        if (jwt_verify(t, k, err, sizeof err) != 0) {
            failed(v, 401, "signature", "%s", err);
            goto bad;
        }
    } else {
        jwt_clear(t);
        int rc = may_fetch ? jwks_cache_verify(p->jwks_cache, token, t, err, sizeof err)
                           : jwks_cache_verify_cached(p->jwks_cache, token, t, err, sizeof err);
        if (rc == JWKS_WOULD_FETCH) return 1;
        if (rc != 0) {
            /* jwks.c words "no key set at all" as "JWKS ...": the provider is down. */
            bool down = util_str_starts_with(err, "JWKS ");
            failed(v, down ? 503 : 401, "signature", "%s%s", down ? "the keys could not be fetched: " : "", err);
            return -1;
        }
    }

    const char *issuers[] = {p->issuer, NULL};
    jwt_expect ex = {.issuers = issuers, .audiences = (const char *const *)p->audiences, .skew_s = SKEW_S,
                     .require_exp = p->required & GW_CLAIM_EXP};
    jwt_check c = jwt_check_claims(t, &ex, err, sizeof err);
    if (c == JWT_CHECK_OK) { /* jwtValidationOptions.requiredClaims: present (exp and iss are checked above) */
        static const struct { unsigned bit; const char *name; } REQ[] = {
            {GW_CLAIM_NBF, "nbf"}, {GW_CLAIM_AUD, "aud"}, {GW_CLAIM_SUB, "sub"}};
        for (size_t i = 0; i < ARRAY_LEN(REQ); i++)
            if ((p->required & REQ[i].bit) && !json_object_get(t->claims, REQ[i].name)) {
                failed(v, 401, "malformed", "token has no %s (a required claim)", REQ[i].name);
                goto bad;
            }
        return 0;
    }
    int64_t now = util_now(), exp = 0, nbf = 0;
    char *have = jwt_claim_text(t, c == JWT_CHECK_AUDIENCE ? "aud" : "iss");
    if (c == JWT_CHECK_EXPIRED && jwt_claim_int(t, "exp", &exp))
        failed(v, 401, "expired", "expired %lld s ago (%d s of clock skew allowed)", (long long)(now - exp), SKEW_S);
    else if (c == JWT_CHECK_NOT_YET_VALID && jwt_claim_int(t, "nbf", &nbf))
        failed(v, 401, "not_yet_valid", "not valid for another %lld s (nbf)", (long long)(nbf - now));
    else if (c == JWT_CHECK_ISSUER)
        failed(v, 401, "issuer", "iss %s is not %s", have, p->issuer);
    else if (c == JWT_CHECK_AUDIENCE)
        failed(v, 401, "audience", "aud %s is not an accepted audience", have);
    else
        failed(v, 401, c == JWT_CHECK_MISSING_EXP ? "malformed" : jwt_check_name(c), "%s", err);
    free(have);
bad:
    jwt_clear(t);
    return -1;
}

/* Does the route's jwtAuth let a request on without a valid token? optional lets one without
 * a token through, permissive any request. */
static bool jwt_lets_through(const gw_jwt *j, const char *token)
{
    return j->mode == GW_JWT_PERMISSIVE || (j->mode == GW_JWT_OPTIONAL && !token);
}

/* Does the route look at the claims after jwtAuth (authorization rules, claimsToHeaders, MCP)? */
static bool uses_claims(const gw_route *rt)
{
    return rt->authz || rt->n_claim_headers || rt->backend.kind == GW_BACKEND_MCP;
}

/* validate(), unless this token already passed this route's jwtAuth under this configuration
 * (scope) and its cache entry still holds (tokcache.h): then *t has the claims if the route
 * uses them, and nothing else. A token that passes in full is remembered until its exp plus
 * the allowed skew, at most TOKCACHE_MAX_TTL_S; refusals are not remembered. */
static bool token_cached(gateway *gw, uint64_t scope, const gw_route *rt, const char *token, jwt *t)
{
    bool need = uses_claims(rt);
    char *claims = NULL;
    if (!tokcache_get(gw->verified, scope, token, util_now(), need ? &claims : NULL)) return false;
    if (!need) return true;
    t->claims = claims ? json_loads(claims, 0, NULL) : NULL;
    free(claims);
    if (json_is_object(t->claims)) return true;
    jwt_clear(t); /* not expected: check in full */
    return false;
}

static int check_token(gateway *gw, uint64_t scope, const gw_route *rt, const char *token, jwt *t, verdict *v,
                       bool may_fetch)
{
    bool need = uses_claims(rt);
    int64_t now = util_now(), exp;
    if (token_cached(gw, scope, rt, token, t)) return 0;
    int rc = validate(rt->jwt, token, t, v, may_fetch);
    if (rc != 0) return rc;
    if (jwt_claim_int(t, "exp", &exp)) { /* a token without exp (requiredClaims without it) is never cached */
        int64_t until = exp + SKEW_S < now + TOKCACHE_MAX_TTL_S ? exp + SKEW_S : now + TOKCACHE_MAX_TTL_S;
        char *text = need ? json_dumps(t->claims, JSON_COMPACT) : NULL;
        if (!need || text) tokcache_put(gw->verified, scope, token, text, until);
        free(text);
    }
    return 0;
}

/* 401 (or 503) for a failed jwtAuth: RFC 6750 §3 challenge, RFC 9728 §5.1 resource_metadata on
 * MCP routes, and a JSON body naming the failed check. */
static void reject(http_req *r, const server *sv, const gw_route *rt, const verdict *v)
{
    char desc[400], h[1400], meta[800] = "";
    char line[360];
    snprintf(line, sizeof line, "%s: %s", v->check, v->reason);
    quoted_safe(desc, sizeof desc, line);
    if (rt->backend.kind == GW_BACKEND_MCP) {
        char base[300], path[360];
        request_base(r, rt, sv, base, sizeof base);
        const char *target = http_req_target(r);
        snprintf(line, sizeof line, "%.*s", (int)strcspn(target, "?"), target);
        quoted_safe(path, sizeof path, line);
        snprintf(meta, sizeof meta, "resource_metadata=\"%s%s%s\"", base, PRM_PREFIX, path);
    }
    if (v->status == 401) {
        if (!strcmp(v->check, "missing")) /* §3.1: no error code when no token was sent */
            snprintf(h, sizeof h, "Bearer%s%s", *meta ? " " : "", meta);
        else
            snprintf(h, sizeof h, "Bearer error=\"invalid_token\", error_description=\"%s\"%s%s", desc,
                     *meta ? ", " : "", meta);
        http_add_header(r, "WWW-Authenticate", h);
    }
    http_reply_json(r, v->status,
                    json_pack("{s:s, s:s, s:s}", "error", v->status == 401 ? "invalid_token" : "temporarily_unavailable",
                              "failed_check", v->check, "error_description", desc));
}

/* The bearer token of the request, or NULL (another scheme counts as none). */
static const char *bearer(http_req *r)
{
    const char *a = http_req_header(r, "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7)) return NULL;
    a += 7 + strspn(a + 7, " ");
    return *a ? a : NULL;
}

/* The value of cookie name in a Cookie header ("a=1; b=2"), at most max - 1 bytes into buf;
 * NULL if absent, empty or longer. */
/* The next "name=value" pair of a Cookie header at *p, its length in *len (up to the ';',
 * spaces after the value included); NULL at the end. *p moves past it. */
static const char *cookie_next(const char **p, size_t *len)
{
    *p += strspn(*p, " \t;");
    if (!**p) return NULL;
    const char *pair = *p;
    *len = strcspn(pair, ";");
    *p += *len;
    return pair;
}

/* Is the pair (len bytes) the cookie name? */
static bool cookie_is(const char *pair, size_t len, const char *name)
{
    size_t n = strlen(name);
    return len > n && !strncmp(pair, name, n) && pair[n] == '=';
}

static const char *cookie_in(const char *header, const char *name, char *buf, size_t max)
{
    size_t len, nlen = strlen(name);
    for (const char *p = header ? header : "", *pair; (pair = cookie_next(&p, &len));) {
        if (!cookie_is(pair, len, name)) continue;
        size_t vlen = len - nlen - 1;
        while (vlen && (pair[nlen + vlen] == ' ' || pair[nlen + vlen] == '\t')) vlen--;
        if (!vlen || vlen >= max) return NULL;
        memcpy(buf, pair + nlen + 1, vlen);
        buf[vlen] = '\0';
        return buf;
    }
    return NULL;
}

/* The verdict for a request without a token, naming where it was looked for. */
static void missing(verdict *v, const gw_jwt *j)
{
    if (!j->loc_name) failed(v, 401, "missing", "no bearer token in the Authorization header");
    else failed(v, 401, "missing", "no token in the %s %s%s%s", j->where == GW_JWT_IN_QUERY ? "query parameter"
                                                                : j->where == GW_JWT_IN_COOKIE ? "cookie" : "header",
                j->loc_name, j->loc_prefix ? " after " : "", j->loc_prefix ? j->loc_prefix : "");
}

/* The route's token, where its jwtAuth.location says (no jwtAuth, or none said: the
 * Authorization header's bearer token); NULL if there is none. A cookie's is copied into a
 * buffer of the thread's, valid until the thread's next call. */
static const char *token_in(http_req *r, const gw_jwt *j)
{
    static _Thread_local char cookie[JWT_MAX_BYTES + 1];
    if (!j || (j->where == GW_JWT_IN_HEADER && !j->loc_name)) return bearer(r);
    if (j->where == GW_JWT_IN_COOKIE) return cookie_in(http_req_header(r, "Cookie"), j->loc_name, cookie, sizeof cookie);
    const char *v = j->where == GW_JWT_IN_QUERY ? http_req_query(r, j->loc_name) : http_req_header(r, j->loc_name);
    if (v && j->where == GW_JWT_IN_HEADER && j->loc_prefix) {
        size_t n = strlen(j->loc_prefix);
        v = strncasecmp(v, j->loc_prefix, n) ? NULL : v + n;
    }
    if (v) v += strspn(v, " \t");
    return v && *v ? v : NULL;
}

/* ---- the CEL activation -------------------------------------------------------------------- */

static void add_header_json(void *ctx, const char *name, const char *value)
{
    char low[128];
    size_t n = strlen(name);
    if (n >= sizeof low) return;
    for (size_t i = 0; i <= n; i++) low[i] = (char)tolower((unsigned char)name[i]);
    if (!strcmp(low, "authorization")) return; /* rules see claims, never the raw token */
    json_t *obj = ctx, *have = json_object_get(obj, low);
    if (have) { /* repeated header: one comma-separated value (RFC 7230 §3.2.2) */
        char *joined = xasprintf("%s,%s", json_string_value(have), value);
        json_object_set_new(obj, low, json_string(joined));
        free(joined);
    } else {
        json_object_set_new(obj, low, json_string(value));
    }
}

/* {"method","path","headers":{lower-case name: value}} */
static json_t *request_json(http_req *r)
{
    json_t *h = json_object();
    http_req_header_each(r, add_header_json, h);
    return json_pack("{s:s, s:s, s:o}", "method", http_req_method(r), "path", http_req_path(r), "headers", h);
}

/* ---- proxying ----------------------------------------------------------------------------- */

/* What a request's log line and metrics name (log_line), kept by value: a callback copies it
 * out before the proxied request it belongs to may be freed. */
typedef struct {
    int64_t t0;                  /* when the request came (util_mono_us) */
    unsigned port;               /* the bind's */
    char route[64];
} log_tag;

/* A proxied request from the upstream transfer's start to the end of its streamed answer. */
typedef struct {
    httpc_async *a;
    http_waker *w;               /* the request's: the transfer's notify wakes it */
    log_tag tag;
    bool cors;                   /* the route sets CORS headers: the upstream's are dropped */
    const gw_header_mod *resp_mod; /* responseHeaderModifier (the config outlives the request) */
    char *pre;                   /* body bytes read before the stream began: pre[pre_off..pre_len) */
    size_t pre_len, pre_off;
    http_body *body;             /* the request's body as it arrives (streamed), else NULL */
    struct replay *rp;           /* retry: the request kept to send again; NULL: no retries */
    const gw_backend *be;        /* of several host backends (be->urls), the one this try went to: */
    size_t be_i;                 /* ... its index (be NULL: one backend) */
} pstream;

/* retry: what went upstream, kept to be sent again (a buffered body only). */
typedef struct replay {
    httpc_request req;           /* pointing at the below, or at the request's own body */
    char *url, *body;            /* body: an ai backend's rewritten one; NULL: the request's */
    char **lines;                /* header lines, NULL-terminated */
    const gw_route *rt;          /* its codes and backoff (the configuration outlives the request) */
    size_t base_len;             /* url starts with the backend's base URL, this long */
    size_t last;                 /* of several backends (rt->backend.urls), the last one tried */
    uint32_t tried;              /* ... and all tried so far */
    unsigned left;               /* tries left */
    const atomic_bool *stopping; /* the gateway's: a backoff is cut short */
} replay;

/* req's copy for later tries, its URL starting with base; owned_body (may be NULL) is taken over. */
static replay *replay_new(const httpc_request *req, const gw_route *rt, const char *base, char *owned_body,
                          const atomic_bool *stopping)
{
    replay *rp = xcalloc(1, sizeof *rp);
    size_t n = 0;
    while (req->headers[n]) n++;
    rp->lines = xcalloc(n + 1, sizeof *rp->lines);
    for (size_t i = 0; i < n; i++) rp->lines[i] = xstrdup(req->headers[i]);
    rp->req = *req;
    rp->req.url = rp->url = xstrdup(req->url);
    rp->req.headers = (const char *const *)rp->lines;
    if (owned_body) rp->req.body = rp->body = owned_body;
    rp->rt = rt;
    rp->base_len = strlen(base);
    for (rp->last = 0; rp->last < rt->backend.n_urls; rp->last++)
        if (rt->backend.urls[rp->last] == base) break;
    if (rp->last < rt->backend.n_urls) rp->tried = 1u << rp->last;
    rp->left = rt->retry_attempts;
    rp->stopping = stopping;
    return rp;
}

static uint64_t trace_rand(void);

/* Of b's backends not in skip (a bit per backend), one at random in proportion to its weight;
 * b->n_urls if none of them has a weight. */
static size_t pick_weighted(const gw_backend *b, uint32_t skip)
{
    unsigned long total = 0;
    for (size_t i = 0; i < b->n_urls; i++)
        if (!(skip >> i & 1)) total += b->weights[i];
    if (!total) return b->n_urls;
    unsigned long x = (unsigned long)(trace_rand() % total);
    for (size_t i = 0; i < b->n_urls; i++) {
        if (skip >> i & 1) continue;
        if (x < b->weights[i]) return i;
        x -= b->weights[i];
    }
    return b->n_urls; /* not reached */
}

/* Of several backends, the next try goes to one not tried yet (by weight), or once all have been,
 * to any other than the last: a backend that failed is not asked again while another may answer.
 * Not with urlRewrite.authority, whose Host was made for the first one's address. */
static void replay_next_backend(replay *rp)
{
    const gw_backend *b = &rp->rt->backend;
    if (b->n_urls < 2 || rp->last >= b->n_urls || rp->rt->rewrite_host || rp->rt->rewrite_port) return;
    size_t pick = pick_weighted(b, rp->tried);
    if (pick == b->n_urls) { /* all tried: start over, but not with the last one */
        rp->tried = 1u << rp->last;
        if ((pick = pick_weighted(b, rp->tried)) == b->n_urls) return; /* no other has a weight */
    }
    rp->tried |= 1u << pick;
    rp->last = pick;
    char *url = xasprintf("%s%s", b->urls[pick], rp->url + rp->base_len);
    free(rp->url);
    rp->req.url = rp->url = url;
    rp->base_len = strlen(b->urls[pick]);
}

static void replay_free(replay *rp)
{
    if (!rp) return;
    for (char **l = rp->lines; *l; l++) util_free_secret(*l); /* may carry a key or a token */
    free(rp->lines);
    free(rp->url);
    free(rp->body);
    free(rp);
}

static void proxy_notify(void *ctx)
{
    pstream *p = ctx;
    http_wake(p->w);
}

static long proxy_read(void *ctx, char *buf, size_t max)
{
    pstream *p = ctx;
    if (p->pre_off < p->pre_len) {
        size_t k = p->pre_len - p->pre_off < max ? p->pre_len - p->pre_off : max;
        memcpy(buf, p->pre + p->pre_off, k);
        p->pre_off += k;
        return (long)k;
    }
    long n = httpc_async_read(p->a, buf, max);
    if (n == HTTPC_AGAIN) return HTTP_STREAM_AGAIN;
    if (n < 0) {
        char err[256];
        httpc_async_error(p->a, err, sizeof err);
        log_msg(LOG_WARN, "upstream_stream_failed", "route %s: %s", p->tag.route, err);
    }
    return n;
}

static void proxy_free(pstream *p)
{
    httpc_async_close(p->a); /* no notify after this: the waker is not used again */
    http_body_release(p->body); /* after: the transfer reads it no more */
    replay_free(p->rp);
    free(p->pre);
    free(p);
}

/* A streamed request body, from the client's connection to the upstream transfer. */
static long up_body_read(void *ctx, char *buf, size_t max)
{
    pstream *p = ctx;
    if (!buf) { /* the transfer is over: what else comes is dropped */
        http_body_stop(p->body);
        return 0;
    }
    long n = http_body_read(p->body, buf, max);
    return n == HTTP_STREAM_AGAIN ? HTTPC_AGAIN : n;
}

static void up_body_more(void *ctx)
{
    pstream *p = ctx;
    httpc_async_body_ready(p->a);
}

static void proxy_done(void *ctx) { proxy_free(ctx); }

/* RFC 7230 §6.1 hop-by-hop headers, plus those the proxy sets itself. */
static bool hop_by_hop(const char *name, const char *connection)
{
    static const char *const HOP[] = {"Connection", "Keep-Alive", "TE", "Trailer", "Transfer-Encoding",
                                      "Upgrade", "Proxy-Connection", "Proxy-Authorization",
                                      "Proxy-Authenticate"};
    for (size_t i = 0; i < ARRAY_LEN(HOP); i++)
        if (!strcasecmp(name, HOP[i])) return true;
    if (!strncasecmp(name, "Proxy-", 6)) return true;
    /* Headers the Connection header names are hop-by-hop too. */
    size_t n = strlen(name);
    for (const char *p = connection; p && *p;) {
        p += strspn(p, " ,\t");
        size_t k = strcspn(p, " ,\t");
        if (k == n && !strncasecmp(p, name, n)) return true;
        p += k;
    }
    return false;
}

/* The header lines sent upstream. Most live in arena (no allocation per line); a line that
 * does not fit any more is allocated on its own (heap[i]). */
typedef struct {
    char *lines[MAX_UP_HDRS + 16 + 2 * GW_HEADER_MOD_MAX];
    bool heap[MAX_UP_HDRS + 16 + 2 * GW_HEADER_MOD_MAX];
    size_t n, used;
    char arena[8192];
    const gw_route *rt;
    const char *connection;
    bool strip_auth, has_accept, has_ctype;
    const char *strip_header;    /* jwtAuth.location's header, once its token passed: not forwarded */
    const char *strip_cookie;    /* jwtAuth.location's cookie, likewise (the other cookies go on) */
} up_headers;

/* One line, printf-style; dropped when there are too many. */
static void up_addf(up_headers *u, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void up_addf(up_headers *u, const char *fmt, ...)
{
    if (u->n >= ARRAY_LEN(u->lines) - 1) return;
    size_t room = sizeof u->arena - u->used;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(u->arena + u->used, room, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    if ((size_t)k < room) {
        u->lines[u->n] = u->arena + u->used;
        u->heap[u->n++] = false;
        u->used += (size_t)k + 1;
        return;
    }
    char *line = xmalloc((size_t)k + 1);
    va_start(ap, fmt);
    vsnprintf(line, (size_t)k + 1, fmt, ap);
    va_end(ap);
    u->lines[u->n] = line;
    u->heap[u->n++] = true;
}

static void up_free(up_headers *u)
{
    for (size_t i = 0; i < u->n; i++)
        if (u->heap[i]) free(u->lines[i]);
}

/* curl: "Name:" would remove a header, "Name;" sends it empty. */
static void up_set(up_headers *u, const char *name, const char *value)
{
    if (*value) up_addf(u, "%s: %s", name, value);
    else up_addf(u, "%s;", name);
}

static void copy_header(void *ctx, const char *name, const char *value)
{
    static const char *const OWN[] = {"Host", "Content-Length", "Expect", "X-Forwarded-For",
                                      "X-Forwarded-Proto", "X-Forwarded-Host", "traceparent", "tracestate"};
    up_headers *u = ctx;
    if (u->n >= MAX_UP_HDRS || hop_by_hop(name, u->connection)) return;
    for (size_t i = 0; i < ARRAY_LEN(OWN); i++)
        if (!strcasecmp(name, OWN[i])) return;
    if (!strcasecmp(name, "Authorization") && u->strip_auth) return;
    if (u->strip_header && !strcasecmp(name, u->strip_header)) return;
    if (u->strip_cookie && !strcasecmp(name, "Cookie")) { /* the others, as they were */
        size_t len, out = 0;
        char *kept = xmalloc(2 * strlen(value) + 1); /* "a=1;b=2" comes out as "a=1; b=2" */
        for (const char *p = value, *pair; (pair = cookie_next(&p, &len));) {
            if (cookie_is(pair, len, u->strip_cookie)) continue;
            if (out) memcpy(kept + out, "; ", 2), out += 2;
            memcpy(kept + out, pair, len);
            out += len;
        }
        kept[out] = '\0';
        if (out) up_set(u, name, kept);
        free(kept);
        return;
    }
    /* A client must not be able to pose as a claim the gateway forwards. */
    for (size_t i = 0; i < u->rt->n_claim_headers; i++)
        if (!strcasecmp(name, u->rt->claim_headers[i].header)) return;
    if (!strcasecmp(name, "Accept")) u->has_accept = true;
    if (!strcasecmp(name, "Content-Type")) u->has_ctype = true;
    up_set(u, name, value);
}

/* requestHeaderModifier, on the finished lines: what it removes or sets goes (the client's, the
 * gateway's own, curl's "Name:" suppressions alike), then its set and add lines follow. */
static void up_modify(up_headers *u, const gw_header_mod *m)
{
    size_t k = 0;
    for (size_t i = 0; i < u->n; i++) {
        char name[128];
        size_t nl = strcspn(u->lines[i], ":;");
        snprintf(name, sizeof name, "%.*s", (int)(nl < sizeof name ? nl : sizeof name - 1), u->lines[i]);
        if (gw_header_mod_drops(m, name)) {
            if (u->heap[i]) free(u->lines[i]);
            continue;
        }
        u->lines[k] = u->lines[i];
        u->heap[k++] = u->heap[i];
    }
    u->n = k;
    for (size_t i = 0; m->set_names && m->set_names[i]; i++) up_set(u, m->set_names[i], m->set_values[i]);
    for (size_t i = 0; m->add_names && m->add_names[i]; i++) up_set(u, m->add_names[i], m->add_values[i]);
}

/* W3C Trace Context §3.2: version 00, 32 hex trace-id, 16 hex parent-id, 2 hex flags. */
static bool traceparent_ok(const char *s)
{
    static const char HEX[] = "0123456789abcdef";
    if (!s || strlen(s) != 55 || strncmp(s, "00-", 3) || s[35] != '-' || s[52] != '-') return false;
    for (size_t i = 3; i < 55; i++)
        if (i != 35 && i != 52 && !strchr(HEX, s[i])) return false;
    return strspn(s + 3, "0") < 32 && strspn(s + 36, "0") < 16;
}

/* Trace and span ids need to be unique, not secret: a per-thread xorshift generator seeded
 * once from util_random (RAND_bytes) instead of RAND_bytes for every request. */
static uint64_t trace_rand(void)
{
    static _Thread_local uint64_t s[2];
    if (!s[0] && !s[1]) {
        util_random(s, sizeof s);
        s[0] |= 1;
    }
    uint64_t x = s[0], y = s[1]; /* xorshift128+ */
    s[0] = y;
    x ^= x << 23;
    s[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
    return s[1] + y;
}

static void new_traceparent(char out[56])
{
    static const char HEX[] = "0123456789abcdef";
    uint64_t v[3] = {trace_rand(), trace_rand(), trace_rand() | 1}; /* never an all-zero span id */
    memcpy(out, "00-", 3);
    char *p = out + 3;
    for (size_t i = 0; i < 24; i++) {
        unsigned b = (unsigned)(v[i / 8] >> (8 * (i % 8))) & 0xff;
        *p++ = HEX[b >> 4];
        *p++ = HEX[b & 15];
        if (i == 15) *p++ = '-';
    }
    memcpy(p, "-01", 4);
}

/* A validated claim as a header value: strings as they are, other JSON compactly; claims that
 * would not make a clean header line are skipped. */
static char *claim_header_value(const json_t *claims, const char *path)
{
    const json_t *v = claims;
    char *copy = xstrdup(path), *save = NULL;
    for (char *seg = strtok_r(copy, ".", &save); seg && v; seg = strtok_r(NULL, ".", &save))
        v = json_object_get(v, seg);
    free(copy);
    if (!v || json_is_null(v)) return NULL;
    char *s = json_is_string(v) ? xstrdup(json_string_value(v)) : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    for (const char *p = s; p && *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            free(s);
            return NULL;
        }
    return s;
}

/* The upstream URL: host/url backends keep the request target; ai backends send chat requests
 * (the route prefix itself, or .../chat/completions under it) to the provider's chat path and
 * any other path under the prefix as it is ("/llm/v1/models" → "/v1/models"). */
/* What follows the matched path prefix in target's path, taken as sent (still %-encoded): as
 * many segments skipped as the prefix has; for an exact match, nothing. */
static const char *after_prefix(const gw_match *m, const char *target, const char *end)
{
    if (m->path_kind != GW_PATH_PREFIX) return end;
    size_t segs = 0, n = strlen(m->path);
    for (size_t i = 0; i < n; i++) segs += m->path[i] == '/' && i + 1 < n;
    const char *rest = target;
    for (size_t i = 0; i < segs && rest < end; i++) {
        const char *next = memchr(rest + 1, '/', (size_t)(end - rest - 1));
        rest = next ? next : end;
    }
    return rest;
}

/* The target's path with pre in the place of what m's prefix matched (the whole path for an
 * exact match), one '/' where the two meet; target's query left out. */
static char *replace_prefix(const gw_match *m, const char *target, const char *end, const char *pre)
{
    const char *rest = after_prefix(m, target, end);
    size_t plen = strlen(pre);
    if (plen && pre[plen - 1] == '/' && *rest == '/') rest++;
    return xasprintf("%s%.*s", pre, (int)(end - rest), rest);
}

/* query ("?a=1&b=2", or NULL) without the parameters named name (as sent, not decoded): a new
 * string, "" when nothing is left. */
static char *query_without(const char *query, const char *name)
{
    size_t nlen = strlen(name), out = 0;
    char *q = xmalloc(query ? strlen(query) + 2 : 1);
    for (const char *p = query ? query + 1 : ""; *p;) {
        size_t len = strcspn(p, "&");
        bool drop = len >= nlen && !strncmp(p, name, nlen) && (len == nlen || p[nlen] == '=');
        if (!drop && len) {
            q[out] = out ? '&' : '?';
            out++;
            memcpy(q + out, p, len);
            out += len;
        }
        p += len + (p[len] == '&');
    }
    q[out] = '\0';
    return q;
}

/* upstream_url with the query given (NULL: none). */
static char *upstream_url_q(const gw_route *rt, const char *base, const gw_match *m, const char *target,
                            const char *end, const char *query)
{
    if (rt->backend.kind != GW_BACKEND_AI) {
        if (rt->rewrite_full) return xasprintf("%s%s%s", base, rt->rewrite_full, query ? query : "");
        if (!rt->rewrite_prefix) return xasprintf("%s%.*s%s", base, (int)(end - target), target, query ? query : "");
        char *path = replace_prefix(m, target, end, rt->rewrite_prefix);
        char *url = xasprintf("%s%s%s", base, path, query ? query : "");
        free(path);
        return url;
    }
    const char *rest = after_prefix(m, target, end);
    size_t rlen = (size_t)(end - rest);
    bool chat = rlen == 0 || (rlen == 1 && *rest == '/') ||
                (rlen >= 17 && !strncmp(end - 17, "/chat/completions", 17));
    return chat ? xasprintf("%s%s%s", base, rt->backend.chat_path, query ? query : "")
                : xasprintf("%s%.*s%s", base, (int)rlen, rest, query ? query : "");
}

/* The upstream URL. strip_query: a query parameter to leave out (jwtAuth.location's, once its
 * token passed), or NULL. */
static char *upstream_url(const gw_route *rt, const char *base, const gw_match *m, http_req *r, const char *strip_query)
{
    const char *target = http_req_target(r), *query = strchr(target, '?');
    const char *end = target + strcspn(target, "?");
    if (!strip_query) return upstream_url_q(rt, base, m, target, end, query);
    char *kept = query_without(query, strip_query);
    char *url = upstream_url_q(rt, base, m, target, end, *kept ? kept : NULL);
    free(kept);
    return url;
}

/* The request body, with the configured model for an ai backend (JSON objects only); NULL for
 * none. *owned is what to free afterwards (the rewritten body), else the request's is used. */
static const char *upstream_body(const gw_route *rt, http_req *r, size_t *len, char **owned)
{
    const char *body = http_req_body(r, len);
    *owned = NULL;
    if (rt->backend.kind == GW_BACKEND_AI && rt->backend.model && *len) {
        json_t *j = json_loadb(body, *len, 0, NULL);
        if (json_is_object(j)) {
            json_object_set_new(j, "model", json_string(rt->backend.model));
            char *s = json_dumps(j, JSON_COMPACT);
            json_decref(j);
            if (s) {
                *len = strlen(s);
                return *owned = s;
            }
        }
        json_decref(j);
    }
    return *len || !strcmp(http_req_method(r), "POST") ? body : NULL;
}

static void log_line(http_req *r, int64_t t0, const char *route, unsigned port);
static bool proxy_answer(http_req *r, pstream *p);
static bool proxy_try(http_req *r, pstream *p);

/* Does this try's outcome call for another (retry): a listed status, or no upstream reached? */
static bool retry_due(pstream *p)
{
    const replay *rp = p->rp;
    if (!rp || !rp->left) return false;
    if (httpc_async_poll(p->a) == HTTPC_ASYNC_HEADERS) {
        long st = httpc_async_status(p->a);
        for (size_t i = 0; i < rp->rt->n_retry_codes; i++)
            if (rp->rt->retry_codes[i] == st) return true;
        return false;
    }
    char err[8];
    return httpc_async_error(p->a, err, sizeof err) == HTTPC_CONNECT; /* a timeout: not again */
}

/* The backoff, on a worker; cut short when the gateway stops. */
static void retry_pause(const replay *rp)
{
    for (long left = rp->rt->retry_backoff_ms; left > 0 && !atomic_load(rp->stopping); left -= 20) {
        struct timespec ts = {0, (left < 20 ? left : 20) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* The HTTP client a transfer to rt's backend goes on. Host backends, and AI backends over plain
 * HTTP (a local Ollama), on a loop thread: the loop's own client, no other thread involved, and
 * upstream connections kept alive per loop (as nginx's per worker). AI backends over https, and
 * everything on a deferred worker: the shared client thread, whose one pool of kept-alive
 * connections serves every loop — a provider far away has a costly TLS handshake, so reusing
 * its connections matters more there than the hand-off between threads. */
static httpc_loop *client_for(const gw_route *rt)
{
    const gw_backend *b = &rt->backend;
    bool local = b->kind == GW_BACKEND_HOST || (b->kind == GW_BACKEND_AI && !strncmp(b->base_url, "http://", 7));
    return local ? http_loop_state() : NULL;
}

/* Send the kept request again. On a loop: 1 if the answer comes later, -1 if the request was
 * answered (p is gone). On a worker, which waits for the new try's headers: 0 (look at them),
 * or -1 (answered: the gateway stops). */
static int send_again(http_req *r, pstream *p)
{
    replay *rp = p->rp;
    bool on_loop = http_loop_state() != NULL;
    char err[300];
    replay_next_backend(rp);
    if (p->be && rp->last < p->be->n_urls) p->be_i = rp->last;
    p->a = httpc_async_start_on(client_for(rp->rt), &rp->req, proxy_notify, p, err, sizeof err);
    if (!p->a) log_msg(LOG_WARN, "upstream_failed", "route %s: %s", p->tag.route, err);
    else if (on_loop) return proxy_try(r, p) ? 1 : -1;
    else if (httpc_async_wait(p->a, rp->stopping) == HTTPC_ASYNC_WAITING) {
        http_reply_text(r, 503, "the gateway is stopping");
        proxy_free(p);
        return -1;
    }
    return 0;
}

/* On a worker: the backoff, then the next try and its answer. */
static void retry_later(http_req *r, void *arg, bool cancelled)
{
    pstream *p = arg;
    log_tag tag = p->tag; /* p may be gone when the line is written */
    if (cancelled) {
        proxy_free(p);
    } else {
        retry_pause(p->rp);
        if (send_again(r, p) == 0) proxy_answer(r, p);
    }
    log_line(r, tag.t0, tag.route, tag.port);
}

/* A backend of several that could not be reached, or did not answer in time, gets no first
 * tries for DOWN_MS (nginx's max_fails=1 fail_timeout=10s): requests go to the others. */
static void note_outcome(const pstream *p)
{
    if (!p->be || httpc_async_poll(p->a) == HTTPC_ASYNC_HEADERS) return;
    char err[8];
    httpc_result res = httpc_async_error(p->a, err, sizeof err);
    if (res != HTTPC_CONNECT && res != HTTPC_TIMEOUT) return;
    int64_t now = util_mono_ms();
    if (atomic_exchange(&p->be->down_until[p->be_i], now + DOWN_MS) <= now)
        log_msg(LOG_WARN, "backend_down", "route %s: %s %s; no first tries for %d s", p->tag.route, p->be->urls[p->be_i],
                res == HTTPC_TIMEOUT ? "did not answer in time" : "could not be reached", DOWN_MS / 1000);
}

/* Try again while the outcome calls for it (retry_due). 0: answer this outcome; 1: the answer
 * comes later (on a loop: the new try is awaited, or the backoff went to a worker); -1: the
 * request was answered. Every try's outcome is noted (note_outcome) on the way. */
static int maybe_retry(http_req *r, pstream *p)
{
    for (;;) {
        note_outcome(p);
        if (!retry_due(p)) break;
        replay *rp = p->rp;
        rp->left--;
        bool answered = httpc_async_poll(p->a) == HTTPC_ASYNC_HEADERS;
        log_msg(LOG_INFO, "upstream_retry", "route %s: %s %ld; again (%u more at most)", p->tag.route,
                answered ? "HTTP" : "unreachable", answered ? httpc_async_status(p->a) : 0L, rp->left);
        httpc_async_close(p->a);
        p->a = NULL;
        if (rp->rt->retry_backoff_ms) {
            if (http_loop_state()) { /* a loop does not sleep: a worker waits it out */
                if (http_defer(r, retry_later, p)) return 1;
            } else {
                retry_pause(rp);
            }
        }
        int rc = send_again(r, p);
        if (rc) return rc;
    }
    return 0;
}

/* The upstream's answer is in (or will never come): answer the client, and p goes to the
 * streamed body or is freed. True if the answer comes later instead (a retry). */
static bool proxy_answer(http_req *r, pstream *p)
{
    int retried = maybe_retry(r, p);
    if (retried) return retried > 0;
    char err[300];
    if (httpc_async_poll(p->a) != HTTPC_ASYNC_HEADERS) {
        httpc_result res = httpc_async_error(p->a, err, sizeof err);
        log_msg(LOG_WARN, "upstream_failed", "route %s: %s", p->tag.route, err);
        if (res == HTTPC_TIMEOUT) http_reply_text(r, 504, "upstream request timeout");
        else http_reply_text(r, 502, "upstream connect error");
        proxy_free(p);
        return false;
    }

    /* The answer's headers, minus hop-by-hop ones and what the server sets itself. */
    const char *hdrs = httpc_async_headers(p->a);
    char *conn = NULL, *ctype = NULL;
    {
        httpc_response tmp = {.headers = (char *)hdrs};
        conn = httpc_response_header(&tmp, "Connection");
        ctype = httpc_response_header(&tmp, "Content-Type");
    }
    for (const char *line = hdrs; *line;) {
        size_t llen = strcspn(line, "\r\n");
        const char *colon = memchr(line, ':', llen);
        if (colon && colon > line) {
            char name[128], val[8192];
            size_t nlen = (size_t)(colon - line);
            if (nlen < sizeof name) {
                memcpy(name, line, nlen);
                name[nlen] = '\0';
                const char *v = colon + 1, *ve = line + llen;
                while (v < ve && (*v == ' ' || *v == '\t')) v++;
                bool skip = hop_by_hop(name, conn) || !strcasecmp(name, "Content-Length") ||
                            !strcasecmp(name, "Content-Type") ||
                            (p->cors && !strncasecmp(name, "Access-Control-", 15)) ||
                            (p->resp_mod && gw_header_mod_drops(p->resp_mod, name));
                if (!skip && (size_t)(ve - v) < sizeof val) {
                    memcpy(val, v, (size_t)(ve - v));
                    val[ve - v] = '\0';
                    http_add_header(r, name, val);
                } else if (!skip) {
                    char *big = xstrndup(v, (size_t)(ve - v));
                    http_add_header(r, name, big);
                    free(big);
                }
            }
        }
        line += llen;
        line += strspn(line, "\r\n");
    }
    for (const gw_header_mod *m = p->resp_mod; m; m = NULL) {
        for (size_t i = 0; m->set_names && m->set_names[i]; i++) http_add_header(r, m->set_names[i], m->set_values[i]);
        for (size_t i = 0; m->add_names && m->add_names[i]; i++) http_add_header(r, m->add_names[i], m->add_values[i]);
    }
    free(conn);
    long status = httpc_async_status(p->a);
    bool no_body = !strcmp(http_req_method(r), "HEAD") || status == 204 || status == 304;
    if (no_body) {
        proxy_free(p);
        http_reply(r, (int)status, ctype, "", 0);
        free(ctype);
        return false;
    }
    /* What of the body is here already: if that is all of it, one plain answer (status, headers
     * and body in one send, with Content-Length) instead of a chunked stream of several. */
    /* Read into the thread's buffer (http_reply copies; a 16 KiB malloc per request costs
     * more than the copy), onto the heap only what a stream still has to send. */
    static _Thread_local char whole[WHOLE_MAX];
    size_t got = 0;
    long n;
    while (got < WHOLE_MAX && (n = httpc_async_read(p->a, whole + got, WHOLE_MAX - got)) > 0)
        got += (size_t)n;
    if (got < WHOLE_MAX && n == 0) {
        http_reply(r, (int)status, ctype, whole, got);
        proxy_free(p);
    } else { /* more to come (or a failure, which the stream's next read reports) */
        if (got) p->pre = memcpy(xmalloc(got), whole, got);
        p->pre_len = got;
        http_reply_stream(r, (int)status, ctype, proxy_read, p, proxy_done);
    }
    free(ctype);
    return false;
}

/* Answer if the upstream's headers are in, else wait for them without a thread. True if the
 * request waits (proxy_resumed answers it later). */
static void proxy_resumed(http_req *r, void *arg, bool cancelled);
static bool proxy_try(http_req *r, pstream *p)
{
    if (httpc_async_poll(p->a) == HTTPC_ASYNC_WAITING) {
        if (http_wait(r, proxy_resumed, p)) return true;
        /* the server is stopping */
        http_reply_text(r, 503, "the gateway is stopping");
        proxy_free(p);
        return false;
    }
    return proxy_answer(r, p);
}

static void proxy_resumed(http_req *r, void *arg, bool cancelled)
{
    pstream *p = arg;
    log_tag tag = p->tag; /* p may be gone when the line is written */
    if (cancelled) { /* answered 503 already */
        proxy_free(p);
        log_line(r, tag.t0, tag.route, tag.port);
        return;
    }
    if (!proxy_try(r, p)) log_line(r, tag.t0, tag.route, tag.port);
}

/* The backend this request goes to, its index in *i: of several, one at random in proportion
 * to its weight among those not marked down (note_outcome), or among all if every one is. */
static const char *pick_base(const gw_backend *b, size_t *i)
{
    *i = 0;
    if (!b->n_urls) return b->base_url;
    int64_t now = util_mono_ms();
    uint32_t down = 0; /* read once: another thread may mark one down meanwhile */
    for (size_t k = 0; k < b->n_urls; k++)
        if (atomic_load(&b->down_until[k]) > now) down |= 1u << k;
    if ((*i = pick_weighted(b, down)) == b->n_urls) *i = pick_weighted(b, 0); /* all down: all again */
    return b->urls[*i];
}

/* Send the request upstream. On a server thread (may_block false) the answer comes without
 * waiting: true if the request now waits for it (its log line is written then). On a worker
 * (may_block) this waits for the upstream's headers and answers before returning false. */
static bool proxy(server *sv, const gw_route *rt, const gw_match *m, http_req *r, const jwt *t, bool strip_cred,
                  int64_t t0, bool may_block)
{
    /* strip_cred: the token passed and goes no further, from wherever jwtAuth.location took it */
    const gw_jwt *j = rt->jwt;
    bool in_auth = !j || (j->where == GW_JWT_IN_HEADER && !j->loc_name);
    size_t be_i;
    const char *base = pick_base(&rt->backend, &be_i);
    up_headers u; /* not "= {...}": that would clear the arena on every request */
    u.n = u.used = 0;
    u.rt = rt;
    u.connection = http_req_header(r, "Connection");
    u.strip_auth = (strip_cred && in_auth) || rt->backend_key;
    u.strip_header = strip_cred && !in_auth && j->where == GW_JWT_IN_HEADER ? j->loc_name : NULL;
    u.strip_cookie = strip_cred && j && j->where == GW_JWT_IN_COOKIE ? j->loc_name : NULL;
    u.has_accept = u.has_ctype = false;
    http_req_header_each(r, copy_header, &u);

    /* Who asked, as de-facto standard proxies say it (RFC 7239 §5 names the same three). */
    const char *xff = http_req_header(r, "X-Forwarded-For"), *host = http_req_header(r, "Host");
    if (xff) up_addf(&u, "X-Forwarded-For: %s, %s", xff, http_req_peer(r));
    else up_addf(&u, "X-Forwarded-For: %s", http_req_peer(r));
    up_addf(&u, "%s", http_req_is_tls(r) ? "X-Forwarded-Proto: https" : "X-Forwarded-Proto: http");
    if (host) up_addf(&u, "X-Forwarded-Host: %s", host);
    const char *tp = http_req_header(r, "traceparent");
    char gen[56];
    if (traceparent_ok(tp)) {
        up_addf(&u, "traceparent: %s", tp);
        const char *ts = http_req_header(r, "tracestate");
        if (ts) up_addf(&u, "tracestate: %s", ts);
    } else {
        new_traceparent(gen);
        up_addf(&u, "traceparent: %s", gen);
    }
    for (size_t i = 0; t && i < rt->n_claim_headers; i++) {
        char *v = claim_header_value(t->claims, rt->claim_headers[i].claim);
        if (v) up_set(&u, rt->claim_headers[i].header, v);
        free(v);
    }
    if (rt->rewrite_host || rt->rewrite_port) { /* urlRewrite.authority, over the backend's own */
        const char *auth = strstr(base, "://") + 3;
        size_t alen = strcspn(auth, "/"), hlen = host_len(auth);
        if (hlen > alen) hlen = alen;
        const char *bport = hlen < alen && auth[hlen] == ':' ? auth + hlen + 1 : NULL;
        char port[16] = "";
        if (rt->rewrite_port) snprintf(port, sizeof port, ":%u", rt->rewrite_port);
        else if (bport) snprintf(port, sizeof port, ":%.*s", (int)(auth + alen - bport), bport);
        if (rt->rewrite_host) up_addf(&u, "Host: %s%s", rt->rewrite_host, port);
        else up_addf(&u, "Host: %.*s%s", (int)hlen, auth, port);
    }
    if (rt->backend_key) up_addf(&u, "Authorization: Bearer %s", rt->backend_key);
    /* Without these curl would add "Accept: any" and a form Content-Type to a body. */
    if (!u.has_accept) up_addf(&u, "%s", "Accept:");
    if (!u.has_ctype) up_addf(&u, "%s", "Content-Type:");
    if (rt->req_mod) up_modify(&u, rt->req_mod);
    u.lines[u.n] = NULL;

    size_t len = 0;
    char *owned = NULL, *url = upstream_url(rt, base, m, r, strip_cred && j && j->where == GW_JWT_IN_QUERY ? j->loc_name : NULL),
         err[300];
    const char *body = upstream_body(rt, r, &len, &owned);
    httpc_request req = {.method = http_req_method(r), .url = url, .headers = (const char *const *)u.lines,
                         .body = body, .body_len = len, .timeout_ms = rt->timeout_ms,
                         .ca_file = sv->gw->ca_file};
    pstream *p = xcalloc(1, sizeof *p);
    if ((p->body = http_req_body_reader(r))) { /* on its way still (early): passed on as it comes */
        const char *cl = http_req_header(r, "Content-Length");
        req.body = NULL;
        req.body_len = cl ? strtoull(cl, NULL, 10) : HTTPC_BODY_CHUNKED;
        req.body_read = up_body_read;
        req.body_ctx = p;
    }
    p->w = http_req_waker(r);
    p->tag.t0 = t0;
    if (rt->backend.n_urls) p->be = &rt->backend, p->be_i = be_i;
    p->cors = rt->cors != NULL;
    p->resp_mod = rt->resp_mod;
    snprintf(p->tag.route, sizeof p->tag.route, "%s", rt->name);
    p->tag.port = sv->port;
    p->a = httpc_async_start_on(client_for(rt), &req, proxy_notify, p, err, sizeof err); /* copies */
    if (rt->retry_attempts && !p->body) { /* a streamed body cannot be sent twice */
        p->rp = replay_new(&req, rt, base, owned, &sv->gw->stopping);
        owned = NULL;
    }
    free(owned);
    free(url);
    up_free(&u);
    if (!p->a) {
        log_msg(LOG_WARN, "upstream_failed", "route %s: %s", rt->name, err);
        http_reply_text(r, 502, "upstream connect error");
        proxy_free(p);
        return false;
    }
    http_body_on_more(p->body, up_body_more, p);
    if (!may_block) return proxy_try(r, p);
    if (httpc_async_wait(p->a, &sv->gw->stopping) == HTTPC_ASYNC_WAITING) {
        http_reply_text(r, 503, "the gateway is stopping");
        proxy_free(p);
        return false;
    }
    return proxy_answer(r, p);
}

/* ---- RFC 9728 protected-resource metadata --------------------------------------------------- */

static void serve_prm(server *sv, const gw_bind *b, http_req *r, const char *rest)
{
    const char *path = *rest ? rest : "/";
    gw_route *rt = route_for_host(b, path, http_req_header(r, "Host"), NULL, true, NULL); /* any method */
    http_add_header(r, "Access-Control-Allow-Origin", "*");
    http_add_header(r, "Access-Control-Allow-Methods", "GET, OPTIONS");
    if (!strcmp(http_req_method(r), "OPTIONS")) {
        http_reply(r, 200, NULL, "", 0);
        return;
    }
    if (!rt) {
        http_reply_json(r, 404, json_pack("{s:s, s:s}", "error", "not_found", "error_description",
                                          "no route with jwtAuth at this path"));
        return;
    }
    if (strcmp(http_req_method(r), "GET") && strcmp(http_req_method(r), "HEAD")) {
        http_add_header(r, "Allow", "GET, OPTIONS");
        http_reply_text(r, 405, "method not allowed");
        return;
    }
    char base[300];
    request_base(r, rt, sv, base, sizeof base);
    char *resource = xasprintf("%s%s", base, rest);
    json_t *servers = json_array();
    for (size_t i = 0; i < rt->jwt->n_providers; i++) /* every provider's issuer */
        json_array_append_new(servers, json_string(rt->jwt->providers[i].issuer));
    json_t *doc = json_pack("{s:s, s:o, s:[s]}", "resource", resource, "authorization_servers", servers,
                            "bearer_methods_supported", "header");
    free(resource);
    if (rt->meta.scopes_supported) {
        json_t *sc = json_array();
        for (char **s = rt->meta.scopes_supported; *s; s++) json_array_append_new(sc, json_string(*s));
        json_object_set_new(doc, "scopes_supported", sc);
    }
    http_add_header(r, "Cache-Control", "no-cache");
    http_reply_json(r, 200, doc);
}

/* ---- one request ------------------------------------------------------------------------- */

/* A route's request past CORS and the rate limit; scope names the configuration and the route,
 * for the cache of verified tokens. Copied to the heap when the request goes to a worker. */
typedef struct {
    server *sv;
    gw_route *rt;
    const gw_match *m;
    uint64_t scope;
    int64_t t0;
} route_ctx;

/* jwtAuth (with the claims of a token that passed already in *cached, or the verdict on one
 * that was refused already in *refused; else it is checked here), authorization, then the
 * backend. may_block: on a worker, where checking a token in full (which may fetch the JWKS),
 * MCP calls and waiting for an upstream are allowed. True if the answer comes later (the
 * proxy waits for the upstream; its log line is written then). */
static bool serve_checked(const route_ctx *c, http_req *r, jwt *cached, const verdict *refused, bool may_block)
{
    gw_route *rt = c->rt;
    jwt t = {0};
    bool validated = false, later = false;
    const char *token = token_in(r, rt->jwt);
    if (rt->jwt) {
        verdict v = {0};
        if (cached) t = *cached, validated = true;
        else if (refused) v = *refused;
        else if (!token) missing(&v, rt->jwt);
        else {
            int rc = check_token(c->sv->gw, c->scope, rt, token, &t, &v, may_block);
            validated = rc == 0;
            if (rc > 0) /* may not fetch here (a streamed body): its keys went since early */
                failed(&v, 503, "jwks", "the signing keys are not at hand; try again");
        }
        bool pass = jwt_lets_through(rt->jwt, token);
        if (!validated && !pass) {
            reject(r, c->sv, rt, &v);
            return false;
        }
        if (!validated && token)
            log_msg(LOG_INFO, "token_ignored", "route %s (%s): %s: %s", rt->name,
                    rt->jwt->mode == GW_JWT_PERMISSIVE ? "permissive" : "optional", v.check, v.reason);
    }

    /* The request as JSON only where it is looked at: rules and MCP. */
    json_t *req = rt->authz || rt->backend.kind == GW_BACKEND_MCP ? request_json(r) : NULL;
    if (rt->authz) {
        json_t *act = json_pack("{s:O, s:{s:s}}", "request", req, "source", "address", http_req_peer(r));
        if (validated) json_object_set(act, "jwt", t.claims);
        bool allowed = cel_rules_decide(rt->authz, act);
        json_decref(act);
        if (!allowed) {
            http_reply_text(r, 403, "authorization failed");
            goto end;
        }
    }
    if (rt->direct)
        http_reply(r, rt->direct_status, rt->direct_body ? "text/plain; charset=utf-8" : NULL,
                   rt->direct_body ? rt->direct_body : "", rt->direct_body ? strlen(rt->direct_body) : 0);
    else if (rt->backend.kind == GW_BACKEND_MCP)
        mcp_mux_handle(rt->backend.mcp->mux, r, validated ? t.claims : NULL, validated ? token : NULL, req);
    else
        later = proxy(c->sv, rt, c->m, r, validated ? &t : NULL, validated && !rt->passthrough, c->t0, may_block);
end:
    json_decref(req);
    jwt_clear(&t);
    return later;
}

/* On a worker (http_defer): everything that may block. */
static void serve_deferred(http_req *r, void *arg, bool cancelled)
{
    route_ctx *c = arg;
    if (!cancelled) serve_checked(c, r, NULL, NULL, true); /* answers before it returns */
    log_line(r, c->t0, c->rt->name, c->sv->port);
    free(c);
}

/* requestRedirect: Location is the request's URL with the configured parts replaced. */
static void redirect(http_req *r, const server *sv, const gw_route *rt, const gw_match *m)
{
    const gw_redirect *rd = rt->redirect;
    const char *scheme = rd->scheme ? rd->scheme : http_req_is_tls(r) ? "https" : "http";
    const char *h = client_host(r, sv);
    size_t hlen = host_len(h);
    const char *hport = h[hlen] == ':' ? h + hlen + 1 : NULL;
    char port[16] = "";
    if (rd->port) snprintf(port, sizeof port, ":%u", rd->port);
    /* Gateway API: a given scheme brings its well-known port; else the listener's stays */
    else if (!rd->full_authority && !rd->scheme && hport) snprintf(port, sizeof port, ":%.5s", hport);
    const char *target = http_req_target(r), *query = strchr(target, '?');
    const char *end = target + strcspn(target, "?");
    char *path;
    if (rd->path_full) {
        path = xstrdup(rd->path_full);
    } else if (rd->path_prefix) {
        path = replace_prefix(m, target, end, rd->path_prefix);
    } else {
        path = xstrndup(target, (size_t)(end - target));
    }
    char *loc = xasprintf("%s://%.*s%s%s%s", scheme, rd->host ? (int)strlen(rd->host) : (int)hlen,
                          rd->host ? rd->host : h, port, path, query ? query : "");
    http_add_header(r, "Location", loc);
    http_reply(r, rd->status, NULL, "", 0);
    free(loc);
    free(path);
}

/* True if the answer comes later (from a worker, or once the upstream answered). */
static bool serve_route(server *sv, gw_route *rt, const gw_match *m, http_req *r, uint64_t scope, int64_t t0)
{
    if (cors(r, rt->cors)) return false;
    if (!rate_limit(r, rt)) return false;
    if (rt->redirect) { /* before jwtAuth: a client is sent elsewhere (say to https) to sign in */
        redirect(r, sv, rt, m);
        return false;
    }

    route_ctx c = {.sv = sv, .rt = rt, .m = m, .scope = scope, .t0 = t0};
    const char *token = token_in(r, rt->jwt);
    jwt t = {0};
    verdict v = {0};
    bool streamed = http_req_body_streamed(r), mcp = rt->backend.kind == GW_BACKEND_MCP;
    bool passed = rt->jwt && token && token_cached(sv->gw, scope, rt, token, &t), refused = false;
    /* A token seen for the first time is checked here when its keys are at hand (an RSA
     * verification, tens of µs); only one whose keys must be fetched goes to a worker with its
     * request, as do MCP calls, which block. Not for a streamed body: early checked its token. */
    if (rt->jwt && token && !passed && !mcp && !streamed) {
        int rc = check_token(sv->gw, scope, rt, token, &t, &v, false);
        passed = rc == 0;
        refused = rc < 0;
        if (!passed) jwt_clear(&t);
    }
    if (!streamed && (mcp || (rt->jwt && token && !passed && !refused))) {
        jwt_clear(&t);
        route_ctx *d = xmalloc(sizeof *d);
        *d = c;
        if (http_defer(r, serve_deferred, d)) return true;
        free(d); /* no workers (not expected): inline */
        return serve_checked(&c, r, NULL, NULL, true);
    }
    /* may_block false: a token not checked yet is checked without fetching keys */
    return serve_checked(&c, r, passed ? &t : NULL, refused ? &v : NULL, false);
}

/* The request's log line and metrics, once its answer is made; route "" for none. */
static void log_line(http_req *r, int64_t t0, const char *route, unsigned port)
{
    const char *tp = http_req_header(r, "traceparent");
    char trace[33] = "";
    if (traceparent_ok(tp)) {
        memcpy(trace, tp + 3, 32);
        trace[32] = '\0';
    }
    int status = http_reply_status(r);
    if (!status) status = 499; /* the client went away, as nginx logs it */
    int64_t us = util_mono_us() - t0;
    log_request(http_req_method(r), http_req_path(r), status, (double)us / 1000, *trace ? trace : NULL);
    metrics_count(port, route, http_req_method(r), status, (double)us / 1e6);
}

/* The cache scope of a route: this configuration, this bind, this route (tokcache.h). */
static uint64_t route_scope(uint64_t gen, const server *sv, const gw_bind *b, const gw_route *rt)
{
    return gen << 32 | (uint64_t)sv->bind << 16 | (uint64_t)(rt - b->routes);
}

/* A request body goes upstream as it arrives (not buffered whole first) when it is chunked or
 * larger than STREAM_MIN, on a route with a host backend or an ai backend that leaves the body
 * as it is (one that sets the model rewrites it; MCP routes read it). Smaller ones are
 * buffered: all in one piece anyway, sent with the headers. */
static bool streams_body(http_req *r, const gw_route *rt)
{
    bool as_is = rt->backend.kind == GW_BACKEND_HOST || (rt->backend.kind == GW_BACKEND_AI && !rt->backend.model);
    if (!as_is || rt->direct) return false; /* direct: also requestRedirect's */
    const char *cl = http_req_header(r, "Content-Length");
    return !cl || strtoull(cl, NULL, 10) > STREAM_MIN; /* early: a body is coming */
}

/* Before a request's body is read (http_server_opts.early): refuse what the handler would
 * refuse anyway, without reading it — a bad path, no route, and on a jwtAuth route a missing
 * or invalid token — so that a caller without a valid token cannot make the gateway read and
 * hold a body of up to MAX_BODY. Only what needs no waiting is decided here: a token whose
 * check needs the key set fetched first is left to the handler. A token that passes is
 * remembered (tokcache), so the handler does not check it again. */
static void early(http_req *r, void *ctx)
{
    server *sv = ctx;
    const char *path = http_req_path(r);
    if (!strcmp(path, "/healthz") || util_str_starts_with(path, PRM_PREFIX)) return;
    int64_t t0 = util_mono_us(); /* log_line's */
    uint64_t gen;
    gw_config *c = acquire(sv->gw, &gen);
    const gw_bind *b = &c->binds[sv->bind];
    const gw_match *m = NULL;
    gw_route *rt = NULL;
    bool undecided = false; /* the token's check needs the key set fetched: the handler's */
    if (!path_ok(path, http_req_target(r))) {
        http_reply_text(r, 400, "bad request path");
    } else if (!(rt = route_for(b, path, r, false, &m))) {
        http_reply_text(r, 404, "route not found");
    } else if (rt->jwt && !rt->redirect && strcmp(http_req_method(r), "OPTIONS")) { /* preflights: the handler's */
        const char *token = token_in(r, rt->jwt);
        verdict v = {0};
        jwt t = {0};
        int rc = -1;
        uint64_t scope = route_scope(gen, sv, b, rt);
        if (!token) missing(&v, rt->jwt);
        else rc = check_token(sv->gw, scope, rt, token, &t, &v, false); /* the cache first, as always */
        jwt_clear(&t);
        undecided = rc > 0;
        if (rc < 0 && !jwt_lets_through(rt->jwt, token)) {
            cors(r, rt->cors); /* a browser must be able to read the 401 (MCP clients start there) */
            reject(r, sv, rt, &v);
        }
    }
    if (http_replied(r)) log_line(r, t0, rt ? rt->name : "", sv->port);
    else if (rt && !undecided && streams_body(r, rt)) http_req_stream_body(r);
    gw_config_unref(c);
}

static void handle(http_req *r, void *ctx)
{
    server *sv = ctx;
    int64_t t0 = util_mono_us(); /* log_line's */
    const char *path = http_req_path(r);
    uint64_t gen;
    gw_config *c = acquire(sv->gw, &gen);
    http_req_on_done(r, release, c); /* kept until the answer is out: streams use the config */
    const gw_bind *b = &c->binds[sv->bind];
    gw_route *rt = NULL;

    if (!path_ok(path, http_req_target(r))) {
        http_reply_text(r, 400, "bad request path");
    } else if (!strcmp(path, "/healthz")) {
        http_reply_text(r, 200, "Healthy");
    } else if (util_str_starts_with(path, PRM_PREFIX) && (!path[strlen(PRM_PREFIX)] || path[strlen(PRM_PREFIX)] == '/')) {
        serve_prm(sv, b, r, path + strlen(PRM_PREFIX));
    } else {
        const gw_match *m = NULL;
        rt = route_for(b, path, r, false, &m);
        if (!rt) http_reply_text(r, 404, "route not found");
        else if (serve_route(sv, rt, m, r, route_scope(gen, sv, b, rt), t0))
            return; /* answered later, and logged then */
    }
    log_line(r, t0, rt ? rt->name : "", sv->port);
}

/* ---- statsAddr and readinessAddr ------------------------------------------------------------ */

/* GET /metrics (Prometheus) on statsAddr, GET /healthz/ready on readinessAddr; either server
 * answers both when the two addresses are one. */
static void serve_admin(http_req *r, void *ctx)
{
    gateway *gw = ctx;
    const char *path = http_req_path(r), *m = http_req_method(r);
    if (strcmp(m, "GET") && strcmp(m, "HEAD")) {
        http_add_header(r, "Allow", "GET, HEAD");
        http_reply_text(r, 405, "method not allowed");
    } else if (!strcmp(path, "/metrics")) {
        size_t n;
        char *text = metrics_render(&n);
        http_reply(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, n);
        free(text);
    } else if (!strcmp(path, "/healthz/ready")) {
        if (atomic_load(&gw->stopping)) http_reply_text(r, 503, "stopping");
        else http_reply_text(r, 200, "ready");
    } else {
        http_reply_text(r, 404, "not found: /metrics, /healthz/ready");
    }
}

static http_server *start_admin(gateway *gw, const char *listen, const char *what, char *err, size_t errlen)
{
    http_server_opts o = {.listen = listen, .threads = 1, .timeout_s = IDLE_S};
    http_server *s = http_server_start(&o, serve_admin, gw, err, errlen);
    if (s) log_msg(LOG_INFO, "listening", "gateway %s on http://%s", what, listen);
    return s;
}

/* ---- main ------------------------------------------------------------------------------- */

/* Each event loop of the servers drives an HTTP client of its own (http_server.h, http_client.h). */
static void *loop_client_new(void *ctx) { (void)ctx; return httpc_loop_new(); }
static int loop_client_fd(void *L) { return httpc_loop_fd(L); }
static long loop_client_timeout(void *L) { return httpc_loop_timeout(L); }
static void loop_client_run(void *L) { httpc_loop_run(L); }
static void loop_client_free(void *L) { httpc_loop_free(L); }
static const http_loop_source CLIENT_LOOP = {
    .start = loop_client_new, .fd = loop_client_fd, .timeout_ms = loop_client_timeout,
    .run = loop_client_run, .stop = loop_client_free,
};

/* One loop per CPU. */
static unsigned event_loops(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

int gateway_main(int argc, char **argv)
{
    gateway gw = {0};
    int rc = 1;
    char err[512];
    gw_config *c = NULL;

    for (int i = 1; i < argc; i++) {
        bool missing = false;
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if ((v = args_value(argc, argv, &i, "--config", &missing))) gw.path = v;
        else if ((v = args_value(argc, argv, &i, "--listen", &missing))) gw.listen_override = v;
        else return args_usage_error("gateway", missing ? "option %s needs a value" : "unknown option %s", argv[i]);
    }
    if (!gw.path) return args_usage_error("gateway", "%s is required", "--config FILE");

    /* Block the signals before any thread exists (loading the configuration may start some,
     * MCP's among them), so that every thread inherits the mask and only the main thread,
     * in sigtimedwait below, ever takes them. */
    sigset_t set;
    args_block_stop_signals(&set, true);

    log_init("gateway", LOG_INFO);
    httpc_global_init();
    const char *ca = getenv("SSL_CERT_FILE");
    gw.ca_file = ca && *ca ? ca : NULL;
    atomic_init(&gw.stopping, false);
    pthread_mutex_init(&gw.mu, NULL);
    gw.verified = tokcache_new(VERIFIED_SLOTS);

    struct stat st;
    if (stat(gw.path, &st) == 0) gw.mtime = st.st_mtim;
    if (!(c = gw_config_load(gw.path, NULL, err, sizeof err))) {
        fprintf(stderr, "agentid gateway: %s\n", err);
        goto end;
    }
    if (gw.listen_override && c->n_binds != 1) {
        fprintf(stderr, "agentid gateway: --listen replaces the only bind, but %s has %zu\n", gw.path, c->n_binds);
        rc = 2;
        goto end;
    }
    gw.cur = c;
    warn_exposed(c, &gw);
    prepare_upstreams(c);

    gw.servers = xcalloc(c->n_binds, sizeof *gw.servers);
    for (size_t i = 0; i < c->n_binds; i++) {
        server *s = &gw.servers[i];
        s->gw = &gw;
        s->bind = i;
        if (gw.listen_override) snprintf(s->listen, sizeof s->listen, "%s", gw.listen_override);
        else snprintf(s->listen, sizeof s->listen, strchr(c->binds[i].address, ':') ? "[%s]:%u" : "%s:%u",
                      c->binds[i].address, c->binds[i].port);
        http_server_opts so = {.listen = s->listen, .event_loops = event_loops(),
                               .loop_source = &CLIENT_LOOP,
                               .defer_workers = (DEFER_WORKERS + event_loops() - 1) / event_loops(),
                               .max_body = MAX_BODY, .timeout_s = IDLE_S, .early = early,
                               .tls_cert_pem = c->binds[i].tls_cert_pem, .tls_key_pem = c->binds[i].tls_key_pem};
        s->tls_id = tls_id(&c->binds[i]);
        if (!(s->srv = http_server_start(&so, handle, s, err, sizeof err))) {
            fprintf(stderr, "agentid gateway: %s\n", err);
            goto end;
        }
        gw.n_servers++;
        s->port = http_server_port(s->srv);
        log_msg(LOG_INFO, "listening", "gateway on %s://%s: %zu routes from %s", s->tls_id ? "https" : "http", s->listen,
                c->binds[i].n_routes, gw.path);
    }

    if (c->stats_listen && !(gw.stats = start_admin(&gw, c->stats_listen, "metrics (statsAddr)", err, sizeof err))) {
        fprintf(stderr, "agentid gateway: config.statsAddr: %s\n", err);
        goto end;
    }
    if (c->ready_listen && (!c->stats_listen || strcmp(c->ready_listen, c->stats_listen)) &&
        !(gw.ready = start_admin(&gw, c->ready_listen, "readiness (readinessAddr)", err, sizeof err))) {
        fprintf(stderr, "agentid gateway: config.readinessAddr: %s\n", err);
        goto end;
    }

    for (;;) {
        struct timespec one = {.tv_sec = 1};
        int sig = sigtimedwait(&set, NULL, &one);
        if (sig == SIGHUP) reload(&gw, "SIGHUP");
        else if (sig < 0) maybe_reload(&gw); /* the once-a-second look at the file */
        else break;
    }
    log_msg(LOG_INFO, "stopping", "shutting down");
    rc = 0;
end:
    atomic_store(&gw.stopping, true);
    if (gw.ready) http_server_stop(gw.ready);
    if (gw.stats) http_server_stop(gw.stats);
    for (size_t i = 0; i < gw.n_servers; i++) http_server_stop(gw.servers[i].srv);
    free(gw.servers);
    gw_config_unref(gw.cur ? gw.cur : c);
    pthread_mutex_destroy(&gw.mu);
    tokcache_free(gw.verified);
    return rc;
}
