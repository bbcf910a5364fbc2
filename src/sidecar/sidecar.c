/* sidecar — see sidecar.h.
 *
 * Each request goes: caller check -> route -> options (configured API merged with allowed
 * overrides) -> agent parameters -> inbound token (authenticated routes) -> token from the
 * cache or the identity provider -> answer. Every error becomes RFC 7807 problem details in
 * problem(), the one place that shapes them.
 *
 * Threads: the HTTP server's pool (one thread per CPU) answers what cannot block inline —
 * /healthz, /metrics, errors in the request itself and tokens already in the cache. Whatever
 * may wait on another server (a cache miss, the inbound token's check, which can fetch the
 * provider's keys, a downstream call) is handed to the server's workers with http_defer, so a
 * slow identity provider never holds up cached answers on other connections.
 */
#include "sidecar/sidecar.h"

#include "core/args.h"
#include "core/config.h"
#include "core/form.h"
#include "core/http_client.h"
#include "core/http_server.h"
#include "core/log.h"
#include "core/util.h"
#include "sidecar/settings.h"
#include "sidecar/tokens.h"

#include <ctype.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define SKEW_S 300          /* Microsoft.IdentityModel's default clock skew */
#define MAX_SCOPES 32
#define MAX_EXTRA 16
#define DEFER_WORKERS 16    /* identity-provider and downstream calls in flight at once */
#define THREAD_STACK (512 * 1024)

typedef struct {
    settings *s;
    tokens *tok;
    atomic_ulong requests[ROUTE_COUNT + 3][6];   /* route x status class (1xx..5xx, other) */
} sidecar;

enum { R_VALIDATE = ROUTE_COUNT, R_HEALTH, R_OTHER };
static const char *const ROUTE_NAME[] = {"AuthorizationHeader", "AuthorizationHeaderUnauthenticated",
                                         "DownstreamApi", "DownstreamApiUnauthenticated", "Validate",
                                         "healthz", "other"};

/* ---- problem details (RFC 7807 / RFC 9110 type URIs, as ASP.NET Core writes them) ---------- */

static void problem(http_req *r, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void problem(http_req *r, int status, const char *fmt, ...)
{
    static const struct { int status; const char *title, *section; } T[] = {
        {400, "Bad Request", "15.5.1"}, {401, "Unauthorized", "15.5.2"}, {403, "Forbidden", "15.5.4"},
        {404, "Not Found", "15.5.5"}, {405, "Method Not Allowed", "15.5.6"},
        {500, "An error occurred while processing your request.", "15.6.1"},
        {502, "Bad Gateway", "15.6.3"}, {503, "Service Unavailable", "15.6.4"},
        {504, "Gateway Timeout", "15.6.5"},
    };
    const char *title = "Error", *section = "15.6.1";
    for (size_t i = 0; i < ARRAY_LEN(T); i++)
        if (T[i].status == status) title = T[i].title, section = T[i].section;
    char detail[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    log_redact(detail);   /* a detail never echoes a token back */
    char type[80];
    snprintf(type, sizeof type, "https://tools.ietf.org/html/rfc9110#section-%s", section);
    http_reply_json_type(r, status, "application/problem+json",
                         json_pack("{s:s, s:s, s:i, s:s}", "type", type, "title", title, "status",
                                   status, "detail", detail));
}

static void no_cache(http_req *r)
{
    http_add_header(r, "Cache-Control", "no-cache, no-store, must-revalidate");
    http_add_header(r, "Pragma", "no-cache");
    http_add_header(r, "Expires", "0");
}

/* A correlation id for requests that bring none: a random-looking GUID (version 4 layout) from a
 * per-thread xoshiro128** generator seeded once from getrandom(2). It only tells requests apart
 * in logs and downstream calls, so it need not be unpredictable; it costs no RAND_bytes (and no
 * OpenSSL start-up in a sidecar that has only answered /healthz). */
static void correlation_id(char out[37])
{
    static __thread uint32_t st[4];
    static __thread bool seeded;
    if (!seeded) {
        if (getrandom(st, sizeof st, 0) != (ssize_t)sizeof st) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            st[0] = (uint32_t)ts.tv_nsec, st[1] = (uint32_t)ts.tv_sec;
            st[2] = (uint32_t)(uintptr_t)&ts, st[3] = (uint32_t)getpid();
        }
        st[0] |= 1;   /* never all zero */
        seeded = true;
    }
    unsigned char b[16];
    for (int i = 0; i < 16; i += 4) {
        uint32_t x = st[1] * 5, r = ((x << 7) | (x >> 25)) * 9, t = st[1] << 9;
        st[2] ^= st[0], st[3] ^= st[1], st[1] ^= st[2], st[0] ^= st[3], st[2] ^= t;
        st[3] = (st[3] << 11) | (st[3] >> 21);
        memcpy(b + i, &r, 4);
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0, k = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[k++] = '-';
        out[k++] = hex[b[i] >> 4];
        out[k++] = hex[b[i] & 15];
    }
    out[36] = '\0';
}

/* {"authorizationHeader":"Bearer <token>"}. A token of JWT characters only needs no JSON
 * escaping, so it is printed straight (these bytes are what jansson would write); anything
 * else goes through jansson. */
static void reply_authorization(http_req *r, const char *tok)
{
    static const char JWT_CHARS[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
    size_t n = strlen(tok);
    no_cache(r);
    if (strspn(tok, JWT_CHARS) == n) {
        char stackbuf[4096], *b = n + 64 <= sizeof stackbuf ? stackbuf : xmalloc(n + 64);
        int len = snprintf(b, n + 64, "{\"authorizationHeader\":\"Bearer %s\"}", tok);
        http_reply(r, 200, "application/json; charset=utf-8", b, (size_t)len);
        if (b != stackbuf) free(b);
        return;
    }
    char *h = xasprintf("Bearer %s", tok);
    http_reply_json(r, 200, json_pack("{s:s}", "authorizationHeader", h));
    free(h);
}

/* ---- per-request options ------------------------------------------------------------------ */

typedef struct {
    const char *agent_identity, *agent_username, *agent_user_id;
    const char *scopes[MAX_SCOPES + 1];
    size_t n_scopes;
    int request_app_token;    /* -1 not given, 0 false, 1 true */
    bool force_refresh;
    const char *relative_path, *http_method, *content_type, *accept, *correlation_id;
    const char *hdr_name[MAX_EXTRA], *hdr_value[MAX_EXTRA], *q_name[MAX_EXTRA], *q_value[MAX_EXTRA];
    size_t n_hdr, n_q;
    bool any_override;        /* optionsOverride.* or agent parameters present */
    char bad[200];            /* a parameter that cannot be honoured */
} req_opts;

static bool truthy(const char *v) { return v && (!strcasecmp(v, "true") || !strcmp(v, "1")); }

static void collect(void *ctx, const char *name, const char *value)
{
    req_opts *o = ctx;
    static const char OO[] = "optionsOverride.";
    if (!value) value = "";
    if (!strcasecmp(name, "AgentIdentity")) { o->agent_identity = *value ? value : NULL; o->any_override = true; return; }
    if (!strcasecmp(name, "AgentUsername")) { o->agent_username = *value ? value : NULL; o->any_override = true; return; }
    if (!strcasecmp(name, "AgentUserId")) { o->agent_user_id = *value ? value : NULL; o->any_override = true; return; }
    if (strncasecmp(name, OO, sizeof OO - 1) != 0) return;   /* unknown parameters are ignored */
    const char *k = name + sizeof OO - 1;
    o->any_override = true;
    if (!strcasecmp(k, "Scopes")) {
        if (!*value) return;                                  /* blanks dropped, as Microsoft does */
        if (o->n_scopes == MAX_SCOPES) snprintf(o->bad, sizeof o->bad, "too many optionsOverride.Scopes");
        else o->scopes[o->n_scopes++] = value;
    } else if (!strcasecmp(k, "RequestAppToken")) {
        /* An explicit false is honoured (Microsoft's merger can only turn it on): it asks for a
         * delegated token for the validated caller, never a broader one. */
        if (truthy(value)) o->request_app_token = 1;
        else if (!strcasecmp(value, "false") || !strcmp(value, "0")) o->request_app_token = 0;
        else
            snprintf(o->bad, sizeof o->bad, "optionsOverride.RequestAppToken must be true or false");
    } else if (!strcasecmp(k, "RelativePath")) o->relative_path = value;
    else if (!strcasecmp(k, "HttpMethod")) o->http_method = value;
    else if (!strcasecmp(k, "ContentType")) o->content_type = value;
    else if (!strcasecmp(k, "AcceptHeader")) o->accept = value;
    else if (!strcasecmp(k, "AcquireTokenOptions.ForceRefresh")) o->force_refresh = truthy(value);
    else if (!strcasecmp(k, "AcquireTokenOptions.CorrelationId")) o->correlation_id = value;
    else if (!strncasecmp(k, "ExtraHeaderParameters.", 22) && o->n_hdr < MAX_EXTRA) {
        o->hdr_name[o->n_hdr] = k + 22;
        o->hdr_value[o->n_hdr++] = value;
    } else if (!strncasecmp(k, "ExtraQueryParameters.", 21) && o->n_q < MAX_EXTRA) {
        o->q_name[o->n_q] = k + 21;
        o->q_value[o->n_q++] = value;
    } else if (!strcasecmp(k, "BaseUrl")) {
        /* Never honoured: it would send the token wherever the caller likes (MIW PR #3794). */
        log_msg(LOG_WARN, "override_ignored", "optionsOverride.BaseUrl is ignored");
    } else if (!strcasecmp(k, "AcquireTokenOptions.Tenant") || !strcasecmp(k, "AcquireTokenOptions.FmiPath") ||
               !strcasecmp(k, "AcquireTokenOptions.Claims") || !strcasecmp(k, "AcquireTokenOptions.PopPublicKey") ||
               !strcasecmp(k, "AcquireTokenOptions.LongRunningWebApiSessionKey") ||
               !strcasecmp(k, "AcquireTokenOptions.ManagedIdentity.UserAssignedClientId")) {
        /* Silently ignoring these could hand out a broader token than asked for: refuse. */
        snprintf(o->bad, sizeof o->bad, "optionsOverride.%s is not supported by agentid sidecar", k);
    }
}

/* ---- inbound token ------------------------------------------------------------------------ */

static void unauthorized(http_req *r, const char *desc)
{
    /* RFC 6750 §3: a quoted-string; drop quotes and backslashes from the description. */
    char clean[256], h[360];
    size_t k = 0;
    for (const char *p = desc; *p && k < sizeof clean - 1; p++)
        if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) clean[k++] = *p;
    clean[k] = '\0';
    snprintf(h, sizeof h, "Bearer error=\"invalid_token\", error_description=\"%s\"", clean);
    http_add_header(r, "WWW-Authenticate", h);
    problem(r, 401, "The bearer token is not valid: %s.", desc);
}

/* Validate the Authorization header; 0 and *t, else the reply was made. */
static int inbound(sidecar *sc, http_req *r, jwt *t, const char **raw)
{
    const char *auth = http_req_header(r, "Authorization");
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0 || !auth[7]) {
        http_add_header(r, "WWW-Authenticate", "Bearer");
        problem(r, 401, "This route needs the caller's token: Authorization: Bearer <token>.");
        return -1;
    }
    *raw = auth + 7;
    char err[256];
    bool down = false;
    if (tokens_verify_inbound(sc->tok, *raw, t, &down, err, sizeof err) != 0) {
        if (down) problem(r, 503, "The identity provider's keys could not be fetched: %s", err);
        else unauthorized(r, err);
        return -1;
    }
    const settings *s = sc->s;
    char api_uri[200];
    snprintf(api_uri, sizeof api_uri, "api://%s", s->client_id);
    const char *auds[3 + 16] = {s->client_id, api_uri};
    size_t n = 2;
    for (char **a = s->audiences; *a && n < ARRAY_LEN(auds) - 1; a++) auds[n++] = *a;
    auds[n] = NULL;
    jwt_expect ex = {.issuers = tokens_issuers(sc->tok), .audiences = auds, .skew_s = SKEW_S,
                     .require_exp = true};
    jwt_check c = jwt_check_claims(t, &ex, err, sizeof err);
    if (c != JWT_CHECK_OK) {
        unauthorized(r, err);
        jwt_clear(t);
        return -1;
    }
    return 0;
}

/* ---- token acquisition -------------------------------------------------------------------- */

/* The token request for these options; false when it cannot be made (the reply was made). */
static bool token_request(http_req *r, int route, const req_opts *o, const char *user_token,
                          const downstream_api *api, const char *api_name,
                          const char *scopes[MAX_SCOPES + 1], tok_request *out)
{
    size_t n = 0;
    if (o->n_scopes) {                     /* override scopes replace configured ones */
        for (size_t i = 0; i < o->n_scopes; i++) scopes[n++] = o->scopes[i];
    } else if (api) {
        for (char **p = api->scopes; *p && n < MAX_SCOPES; p++) scopes[n++] = *p;
    }
    scopes[n] = NULL;
    if (n == 0) {
        problem(r, 400, "No scopes found for the API '%s' or in optionsOverride. 'scopes' needs to be "
                        "either a single value or a list of values.", api_name);
        return false;
    }
    bool app = o->request_app_token >= 0 ? o->request_app_token == 1 : api && api->request_app_token;
    bool authed = route == ROUTE_AUTH_HEADER || route == ROUTE_DOWNSTREAM;
    tok_request tr = {.scopes = scopes, .agent_identity = o->agent_identity,
                      .agent_username = o->agent_username, .agent_user_id = o->agent_user_id,
                      .force_refresh = o->force_refresh};
    if (!o->agent_username && !o->agent_user_id && !app) {
        if (!authed && !o->agent_identity) {
            problem(r, 400, "The API '%s' asks for a user token (RequestAppToken is not true) but this "
                            "route has no user. Set DownstreamApis__%s__RequestAppToken=true, pass "
                            "optionsOverride.RequestAppToken=true, or call the authenticated route with "
                            "the user's token.", api_name, api_name);
            return false;
        }
        tr.user_token = authed ? user_token : NULL;
    }
    *out = tr;
    return true;
}

static char *get_token(sidecar *sc, http_req *r, int route, const req_opts *o, const char *user_token,
                       const downstream_api *api, const char *api_name)
{
    const char *scopes[MAX_SCOPES + 1];
    tok_request tr;
    if (!token_request(r, route, o, user_token, api, api_name, scopes, &tr)) return NULL;
    tok_err e;
    char *tok = tokens_get(sc->tok, &tr, &e);
    if (tok) return tok;
    switch (e.status) {
    case TOK_REFUSED: problem(r, 401, "%s", e.detail); break;
    case TOK_UNREACHABLE: problem(r, 503, "%s", e.detail); break;
    case TOK_TIMEOUT: problem(r, 504, "%s", e.detail); break;
    case TOK_BAD_RESPONSE: problem(r, 502, "%s", e.detail); break;
    default: problem(r, 500, "%s", e.detail); break;
    }
    return NULL;
}

/* ---- downstream call ---------------------------------------------------------------------- */

static bool is_content_header(const char *name, size_t n)
{
    /* .NET's HttpContent.Headers: what Microsoft's sidecar returns (sidecar-api.md §2). */
    static const char *const H[] = {"Content-Type", "Content-Length", "Content-Encoding",
                                    "Content-Language", "Content-Location", "Content-Disposition",
                                    "Content-Range", "Content-MD5", "Expires", "Last-Modified", "Allow"};
    for (size_t i = 0; i < ARRAY_LEN(H); i++)
        if (strlen(H[i]) == n && !strncasecmp(H[i], name, n)) return true;
    return false;
}

static json_t *content_headers(const char *raw)
{
    json_t *o = json_object();
    for (const char *p = raw; p && *p;) {
        const char *eol = strstr(p, "\r\n");
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        const char *colon = memchr(p, ':', len);
        if (colon && is_content_header(p, (size_t)(colon - p))) {
            char *name = xstrndup(p, (size_t)(colon - p));
            const char *v = colon + 1;
            while (*v == ' ') v++;
            char *val = xstrndup(v, len - (size_t)(v - p));
            /* Canonical casing, as .NET prints header names. */
            for (char *c = name, up = 1; *c; c++) {
                *c = up ? (char)toupper((unsigned char)*c) : (char)tolower((unsigned char)*c);
                up = *c == '-';
            }
            json_t *arr = json_object_get(o, name);
            if (!arr) json_object_set_new(o, name, arr = json_array());
            json_array_append_new(arr, json_string(val));
            free(name);
            free(val);
        }
        p = eol ? eol + 2 : NULL;
    }
    return o;
}

static void downstream(sidecar *sc, http_req *r, const req_opts *o, const downstream_api *api,
                       const char *api_name, const char *token, const char *corr)
{
    if (!api || !api->base_url) {
        problem(r, 400, "DownstreamApis__%s__BaseUrl is not configured.", api_name);
        return;
    }
    const char *rel = o->relative_path ? o->relative_path : api->relative_path ? api->relative_path : "";
    const char *method = o->http_method && *o->http_method ? o->http_method
                         : api->http_method ? api->http_method : "GET";
    /* URL: BaseUrl + RelativePath, then configured and per-call extra query parameters. */
    size_t cap = strlen(api->base_url) + strlen(rel) + 2;
    char *url = xmalloc(cap);
    snprintf(url, cap, "%s%s%s", api->base_url,
             (*rel && !util_str_ends_with(api->base_url, "/") && rel[0] != '/') ? "/" : "", rel);
    char sep = strchr(url, '?') ? '&' : '?';
    for (int pass = 0; pass < 2; pass++) {
        size_t n = pass ? o->n_q : 0;
        for (size_t i = 0; pass == 0 ? api->extra_query_names[i] != NULL : i < n; i++) {
            const char *k = pass ? o->q_name[i] : api->extra_query_names[i];
            const char *v = pass ? o->q_value[i] : api->extra_query_values[i];
            char *ek = form_escape(k), *ev = form_escape(v);
            char *nu = xasprintf("%s%c%s=%s", url, sep, ek, ev);
            free(url);
            free(ek);
            free(ev);
            url = nu;
            sep = '&';
        }
    }
    const char *hdrs[8 + 2 * MAX_EXTRA + 16];
    char *owned[8 + 2 * MAX_EXTRA + 16];
    size_t nh = 0, no = 0;
    owned[no++] = xasprintf("Authorization: Bearer %s", token);
    size_t blen;
    const char *body = http_req_body(r, &blen);
    const char *ct = http_req_header(r, "Content-Type");
    if (o->content_type) ct = o->content_type;
    else if (!ct && api->content_type) ct = api->content_type;
    if (ct && blen) owned[no++] = xasprintf("Content-Type: %s", ct);
    const char *accept = o->accept ? o->accept : api->accept;
    if (accept) owned[no++] = xasprintf("Accept: %s", accept);
    const char *tp = http_req_header(r, "traceparent");
    if (tp) owned[no++] = xasprintf("traceparent: %s", tp);
    owned[no++] = xasprintf("client-request-id: %s", corr);
    for (size_t i = 0; api->extra_header_names[i] && no < ARRAY_LEN(owned) - MAX_EXTRA; i++)
        owned[no++] = xasprintf("%s: %s", api->extra_header_names[i], api->extra_header_values[i]);
    for (size_t i = 0; i < o->n_hdr; i++) owned[no++] = xasprintf("%s: %s", o->hdr_name[i], o->hdr_value[i]);
    for (size_t i = 0; i < no; i++) {
        if (strpbrk(owned[i], "\r\n")) {      /* header injection through overrides */
            problem(r, 400, "A header value contains a line break.");
            goto end;
        }
        hdrs[nh++] = owned[i];
    }
    hdrs[nh] = NULL;
    httpc_request rq = {.method = method, .url = url, .headers = hdrs, .body = blen ? body : NULL,
                        .body_len = blen, .timeout_ms = sc->s->timeout_ms, .ca_file = sc->s->ca_file,
                        .max_response = 16 * 1024 * 1024};
    httpc_response rs = {0};
    char err[300];
    httpc_result res = httpc_do(&rq, &rs, err, sizeof err);
    if (res == HTTPC_TIMEOUT) {
        problem(r, 504, "The downstream API '%s' did not answer in time: %s", api_name, err);
    } else if (res != HTTPC_OK) {
        problem(r, 502, "The downstream API '%s' could not be reached: %s", api_name, err);
    } else {
        /* A downstream error still comes back inside the 200 wrapper, as Microsoft's does. */
        json_t *content = json_null();
        if (rs.body_len && !(content = json_stringn(rs.body, rs.body_len)))
            content = json_string("(binary content)");   /* not UTF-8: keep it JSON-safe */
        json_t *out = json_pack("{s:I, s:o, s:o}", "statusCode", (json_int_t)rs.status, "headers",
                                content_headers(rs.headers), "content", content);
        no_cache(r);
        http_reply_json(r, 200, out);
    }
    httpc_response_free(&rs);
end:
    for (size_t i = 0; i < no; i++) free(owned[i]);
    free(url);
}

/* ---- routes ------------------------------------------------------------------------------- */

static void metrics(sidecar *sc, http_req *r)
{
    tokens_stats st;
    tokens_get_stats(sc->tok, &st);
    size_t cap = 8192, len = 0;
    char *b = xmalloc(cap);
#define P(...) len += (size_t)snprintf(b + len, cap - len, __VA_ARGS__)
    P("# HELP agentid_sidecar_requests_total Requests by route and status class.\n"
      "# TYPE agentid_sidecar_requests_total counter\n");
    static const char *const cls[] = {"1xx", "2xx", "3xx", "4xx", "5xx", "other"};
    for (int i = 0; i < ROUTE_COUNT + 3; i++)
        for (int c = 0; c < 6; c++) {
            unsigned long v = atomic_load(&sc->requests[i][c]);
            if (v) P("agentid_sidecar_requests_total{route=\"%s\",code=\"%s\"} %lu\n", ROUTE_NAME[i], cls[c], v);
        }
    P("# TYPE agentid_sidecar_token_cache_hits_total counter\nagentid_sidecar_token_cache_hits_total %lu\n"
      "# TYPE agentid_sidecar_token_cache_misses_total counter\nagentid_sidecar_token_cache_misses_total %lu\n"
      "# TYPE agentid_sidecar_token_cache_refreshes_total counter\nagentid_sidecar_token_cache_refreshes_total %lu\n"
      "# TYPE agentid_sidecar_token_cache_evictions_total counter\nagentid_sidecar_token_cache_evictions_total %lu\n"
      "# TYPE agentid_sidecar_token_cache_entries gauge\nagentid_sidecar_token_cache_entries %lu\n"
      "# TYPE agentid_sidecar_idp_requests_total counter\nagentid_sidecar_idp_requests_total %lu\n"
      "# TYPE agentid_sidecar_idp_errors_total counter\nagentid_sidecar_idp_errors_total %lu\n"
      "# TYPE agentid_sidecar_idp_request_seconds_sum counter\nagentid_sidecar_idp_request_seconds_sum %.6f\n",
      st.hits, st.misses, st.refreshes, st.evictions, st.entries, st.idp_calls, st.idp_errors,
      st.idp_seconds);
#undef P
    http_reply(r, 200, "text/plain; version=0.0.4", b, len < cap ? len : cap - 1);
    free(b);
}

static void validate(sidecar *sc, http_req *r)
{
    jwt t;
    const char *raw;
    if (inbound(sc, r, &t, &raw) != 0) return;
    if (sc->s->scopes[0]) {
        /* Any one configured scope suffices (agentid decision 6). */
        const char *scp = jwt_claim_str(&t, "scp");
        bool ok = false;
        for (char **want = sc->s->scopes; *want && !ok && scp; want++) {
            char *copy = xstrdup(scp), *save = NULL;
            for (char *s = strtok_r(copy, " ", &save); s && !ok; s = strtok_r(NULL, " ", &save))
                ok = !strcmp(s, *want);
            free(copy);
        }
        if (!ok) {
            jwt_clear(&t);
            problem(r, 403, "IDW10203: The 'scope' or 'scp' claim does not contain scopes '%s' or was not "
                            "found.", sc->s->scopes[0]);
            return;
        }
    }
    no_cache(r);
    http_reply_json(r, 200, json_pack("{s:s, s:s, s:O}", "protocol", "Bearer", "token", raw, "claims",
                                      t.claims));
    jwt_clear(&t);
}

static int route_of(const char *path, const char **api)
{
    static const struct { const char *prefix; int route; } R[] = {
        {"/AuthorizationHeaderUnauthenticated/", ROUTE_AUTH_HEADER_UNAUTH},
        {"/AuthorizationHeader/", ROUTE_AUTH_HEADER},
        {"/DownstreamApiUnauthenticated/", ROUTE_DOWNSTREAM_UNAUTH},
        {"/DownstreamApi/", ROUTE_DOWNSTREAM},
    };
    for (size_t i = 0; i < ARRAY_LEN(R); i++) {
        size_t n = strlen(R[i].prefix);
        if (!strncasecmp(path, R[i].prefix, n) && path[n] && !strchr(path + n, '/')) {
            *api = path + n;
            return R[i].route;
        }
    }
    if (!strcasecmp(path, "/Validate")) return R_VALIDATE;
    return -1;
}

/* The request's options, checked; false when they are refused (the reply was made). */
static bool token_options(sidecar *sc, http_req *r, int route, req_opts *o)
{
    *o = (req_opts){.request_app_token = -1};
    http_req_query_each(r, collect, o);
    if (o->any_override && !sc->s->allow_overrides[route]) {
        problem(r, 403, "This request carries optionsOverride or agent parameters, which are disabled "
                        "on this route. Set %s=true to allow them.", SETTINGS_ROUTE_GATES[route]);
        return false;
    }
    if (o->bad[0]) { problem(r, 400, "%s.", o->bad); return false; }
    /* Agent parameters are checked, not silently dropped (agentid decision 2). */
    if (o->agent_username && o->agent_user_id) { problem(r, 400, "AgentUsername and AgentUserId are mutually exclusive"); return false; }
    if ((o->agent_username || o->agent_user_id) && !o->agent_identity) {
        problem(r, 400, "%s requires AgentIdentity to be specified", o->agent_username ? "AgentUsername" : "AgentUserId");
        return false;
    }
    if (o->agent_user_id && !util_is_guid(o->agent_user_id)) { problem(r, 400, "AgentUserId must be a valid GUID"); return false; }
    if (o->agent_identity && !util_is_guid(o->agent_identity)) { problem(r, 400, "AgentIdentity must be a valid GUID (the agent identity's client id)"); return false; }
    return true;
}

/* The token routes after their options were checked: may block (runs on a worker). */
static void token_route(sidecar *sc, http_req *r, int route, const char *api_name, const req_opts *o,
                        const char *corr)
{
    const downstream_api *api = settings_api(sc->s, api_name);
    jwt t = {0};
    const char *user_token = NULL;
    bool authed = route == ROUTE_AUTH_HEADER || route == ROUTE_DOWNSTREAM;
    if (authed && inbound(sc, r, &t, &user_token) != 0) return;
    char *tok = get_token(sc, r, route, o, user_token, api, api_name);
    if (tok) {
        if (route == ROUTE_AUTH_HEADER || route == ROUTE_AUTH_HEADER_UNAUTH)
            reply_authorization(r, tok);
        else
            downstream(sc, r, o, api, api_name, tok, o->correlation_id ? o->correlation_id : corr);
        free(tok);
    }
    if (authed) jwt_clear(&t);
}

/* A token already in the cache, answered on the server thread: the unauthenticated
 * AuthorizationHeader route without ForceRefresh. True when the reply was made. */
static bool token_inline(sidecar *sc, http_req *r, int route, const char *api_name, const req_opts *o)
{
    if (route != ROUTE_AUTH_HEADER_UNAUTH || o->force_refresh) return false;
    const char *scopes[MAX_SCOPES + 1];
    tok_request tr;
    if (!token_request(r, route, o, NULL, settings_api(sc->s, api_name), api_name, scopes, &tr))
        return true;   /* refused: the reply was made */
    char *tok = tokens_peek(sc->tok, &tr);
    if (!tok) return false;
    reply_authorization(r, tok);
    free(tok);
    return true;
}

/* The end of every request, on whichever thread answered it: count it and log it. */
static void done(sidecar *sc, http_req *r, int route, const struct timespec *a, const char *corr)
{
    struct timespec b;
    clock_gettime(CLOCK_MONOTONIC, &b);
    int st = http_reply_status(r);
    int cls = st >= 100 && st < 600 ? st / 100 - 1 : 5;
    atomic_fetch_add(&sc->requests[route][cls], 1);
    log_request(http_req_method(r), http_req_path(r), st,
                (double)(b.tv_sec - a->tv_sec) * 1e3 + (double)(b.tv_nsec - a->tv_nsec) / 1e6, corr);
}

/* A request handed to a worker (http_defer): everything it needs past the handler. */
typedef struct {
    sidecar *sc;
    int route;
    const char *api;          /* in the request's path: valid while the request is */
    req_opts o;
    char corr[37];
    struct timespec start;
} deferred;

static void run_deferred(http_req *r, void *arg, bool cancelled)
{
    deferred *d = arg;
    if (!cancelled) {
        if (d->route == R_VALIDATE) validate(d->sc, r);
        else token_route(d->sc, r, d->route, d->api, &d->o, d->corr);
    }
    done(d->sc, r, d->route, &d->start, d->corr);
    free(d);
}

/* Hand the rest of the request to a worker; false if the server declined (then do it inline). */
static bool defer(sidecar *sc, http_req *r, int route, const char *api, const req_opts *o,
                  const char *corr, const struct timespec *start)
{
    deferred *d = xmalloc(sizeof *d);
    d->sc = sc;
    d->route = route;
    d->api = api;
    if (o) d->o = *o;
    snprintf(d->corr, sizeof d->corr, "%s", corr);
    d->start = *start;
    if (http_defer(r, run_deferred, d)) return true;
    free(d);
    return false;
}

static void handle(http_req *r, void *ctx)
{
    sidecar *sc = ctx;
    struct timespec a;
    clock_gettime(CLOCK_MONOTONIC, &a);
    const char *path = http_req_path(r), *method = http_req_method(r), *api = NULL;
    const char *corr = http_req_header(r, "x-ms-client-request-id");
    if (!corr) corr = http_req_header(r, "client-request-id");
    char gen[37];
    if (!corr || !util_is_guid(corr)) correlation_id(gen), corr = gen;
    int route = R_OTHER;
    if (!strcasecmp(path, "/healthz")) {
        route = R_HEALTH;
        http_reply_text(r, 200, "Healthy");
    } else if (!http_req_peer_is_loopback(r)) {
        /* Only the pod's own processes may ask for tokens (Microsoft's 1.1 rule). */
        problem(r, 403, "Only local callers are served.");
    } else if (!strcasecmp(path, "/metrics")) {
        metrics(sc, r);
    } else if ((route = route_of(path, &api)) < 0) {
        route = R_OTHER;
        problem(r, 404, "No route %s.", path);
    } else {
        bool post = route == ROUTE_DOWNSTREAM || route == ROUTE_DOWNSTREAM_UNAUTH;
        if (strcmp(method, post ? "POST" : "GET") != 0) {
            http_add_header(r, "Allow", post ? "POST" : "GET");
            problem(r, 405, "%s is not allowed on this route; use %s.", method, post ? "POST" : "GET");
        } else if (route == R_VALIDATE) {
            if (defer(sc, r, route, NULL, NULL, corr, &a)) return;
            validate(sc, r);
        } else {
            req_opts o;
            if (token_options(sc, r, route, &o) && !token_inline(sc, r, route, api, &o)) {
                if (defer(sc, r, route, api, &o, corr, &a)) return;
                token_route(sc, r, route, api, &o, corr);
            }
        }
    }
    done(sc, r, route, &a, corr);
}

int sidecar_main(const char *config_file, const char *listen)
{
    char err[600];
    int rc = 1;
    sidecar sc = {0};
    http_server *srv = NULL;
    log_init("sidecar", LOG_INFO);
    /* glibc gives each thread that allocates its own arena, up to 8 per CPU; the workers and
     * refresh threads would spread the cache over them. One per CPU: 0.9 MiB less at 10,000
     * tokens, the same at idle and speed (measured, docs/performance.md). */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    mallopt(M_ARENA_MAX, ncpu > 0 ? (int)ncpu : 1);
    /* No httpc_global_init here: http_client starts libcurl (and OpenSSL's TLS) on its first
     * call, thread-safely, so a sidecar that has not fetched a token yet does not carry them. */
    const char *cf = config_file ? config_file : "appsettings.json";
    if (config_file && access(config_file, R_OK) != 0) {
        fprintf(stderr, "agentid sidecar: --config: cannot read %s\n", config_file);
        return 1;
    }
    config *c = config_load(cf, environ, err, sizeof err);
    if (!c || !(sc.s = settings_load(c, listen, err, sizeof err)) ||
        !(sc.tok = tokens_new(sc.s, err, sizeof err))) {
        fprintf(stderr, "agentid sidecar: %s\n", err);
        goto end;
    }
    sigset_t set;
    args_block_stop_signals(&set, false);
    http_server_opts so = {.listen = sc.s->listen, .max_body = 4 << 20, .defer_workers = DEFER_WORKERS,
                           .thread_stack = THREAD_STACK};
    if (!(srv = http_server_start(&so, handle, &sc, err, sizeof err))) {
        fprintf(stderr, "agentid sidecar: %s: %s\n", sc.s->listen, err);
        goto end;
    }
    log_msg(LOG_INFO, "listening", "sidecar for client %s, tenant %s, on http://%s (%zu downstream APIs)",
            sc.s->client_id, sc.s->tenant_id, sc.s->listen, sc.s->n_apis);
    args_wait_for_stop(&set);
    rc = 0;
end:
    http_server_stop(srv);
    tokens_free(sc.tok);
    settings_free(sc.s);
    config_free(c);
    return rc;
}
