/* mcp — see mcp.h. The gateway's MCP multiplexer.
 *
 * Shape
 *  - A client session (session) is created by an initialize POST without Mcp-Session-Id and
 *    holds one upstream session (upstream) per target. Sessions live in one list under the
 *    mux lock, are reference-counted by the requests using them, and end on DELETE, after
 *    MCP_SESSION_TTL_S idle seconds (a reaper thread) or in mcp_mux_free(). There are at most
 *    MCP_MAX_SESSIONS, and one client identity (iss + sub) holds at most a quarter of them:
 *    an initialize past either limit ends the least recently used idle session (the client's
 *    own, or anyone's), whose client gets 404 and starts again, as the transport spec says.
 *    So a client that never closes its sessions churns its own, and cannot lock others out
 *    for the idle lifetime; only when every session is in use does initialize get 503.
 *  - Each upstream has its own lock: it serialises the upstream's initialisation and, for a
 *    stdio target, the exchange on the child's pipes. A slow child therefore blocks only
 *    the requests of its own client session to that target, never the mux.
 *  - Streamable HTTP targets: one POST per JSON-RPC message, the upstream's Mcp-Session-Id
 *    and negotiated MCP-Protocol-Version echoed on later POSTs; answers may be JSON or SSE.
 *    An upstream 404 on a request with a session (the upstream forgot it) re-initialises
 *    that upstream once and retries (MCP 2025-06-18 transports, "Session Management" 4).
 *  - stdio targets: one child per client session (as agentgateway keeps one upstream
 *    session per client session), newline-delimited JSON-RPC (MCP transports, "stdio").
 *  - Upstream request ids are the mux's own counter, so responses are matched without
 *    trusting the client's ids; the client's id is put back on the answer.
 *
 * Errors go to the client in one place, reply_error(): JSON-RPC error objects, with the
 * HTTP status agentgateway uses (400 for protocol errors and refused tools, 404 for an
 * unknown session, 401 passed through from an upstream, 200 for the rest).
 */
#include "gateway/mcp.h"

#include "core/http_client.h"
#include "core/log.h"
#include "core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#ifndef AGENTID_VERSION
#define AGENTID_VERSION "0.1.0"
#endif

#define MCP_SERVER_NAME       "agentid-gateway"
#define MCP_MAX_TARGETS       64
#define MCP_MAX_SESSIONS      1024
#define MCP_MAX_MSG           (4u * 1024 * 1024)   /* upstream answer, stdio line */
#define MCP_MAX_PAGES         32                   /* tools/list pages per target */
#define MCP_MAX_TOOLS         4096                 /* tools kept per target */
#define MCP_MAX_UP_SID        256                  /* an upstream's Mcp-Session-Id */
#define MCP_SESSION_TTL_S     600                  /* idle client session lifetime */
#define MCP_DEFAULT_TIMEOUT   30000L
#define MCP_END_TIMEOUT_MS    2000L                /* DELETE upstream, child exit */
#define MCP_SIDECAR_MAX       (64 * 1024)

/* JSON-RPC 2.0 error codes (jsonrpc.org/specification 5.1) and the MCP SDKs' session code. */
#define RPC_PARSE_ERROR       (-32700)
#define RPC_INVALID_REQUEST   (-32600)
#define RPC_METHOD_NOT_FOUND  (-32601)
#define RPC_INVALID_PARAMS    (-32602)
#define RPC_INTERNAL_ERROR    (-32603)
#define RPC_SESSION_NOT_FOUND (-32001)

/* Protocol versions we accept in MCP-Protocol-Version, oldest first (date strings compare
 * in order). */
static const char *const known_versions[] = {"2024-11-05", "2025-03-26", "2025-06-18",
                                             "2025-11-25"};
#define LATEST_VERSION "2025-11-25"

/* ---- types ------------------------------------------------------------------- */

typedef struct {
    char *name;
    char *url;
    bool sse;              /* url speaks the legacy HTTP+SSE transport (2024-11-05) */
    char **cmd;
    char **env;
    mcp_identity identity;
    char *sidecar_url;
    char *sidecar_api;
    char *agent_identity;
} target;

typedef struct {
    const target *t;
    pthread_mutex_t lock;  /* everything below */
    bool ready;            /* initialize + notifications/initialized done */
    char *sid;             /* HTTP: the upstream's Mcp-Session-Id, may be NULL */
    char *version;         /* protocol version the upstream chose */
    json_t *init_result;   /* the upstream's InitializeResult */
    /* stdio */
    pid_t pid;             /* 0: no child */
    int in_fd, out_fd;     /* child's stdin (we write), stdout (we read) */
    char *buf;             /* bytes read, not yet a whole line (stdio) or event (sse) */
    size_t len, cap;
    bool skipping;         /* discarding an over-long line up to its newline */
    /* sse: the open GET stream, the URL its endpoint event named, and what wakes a reader */
    httpc_async *stream;
    char *post_url;
    pthread_mutex_t nmu;
    pthread_cond_t ncond;
    bool news;
} upstream;

typedef struct session {
    struct session *next;
    char id[65];
    char *bind;            /* "iss\nsub" of the creating caller, NULL without claims */
    json_t *init_params;   /* what we send upstream in initialize */
    char *client_version;  /* version the client asked for */
    int refs;              /* requests using it (mux lock) */
    bool gone;             /* unlinked from the list (mux lock) */
    int64_t last_ms;       /* last use (mux lock) */
    uint64_t last_use;     /* the mux's use count then: orders sessions for eviction */
    size_t n;
    upstream *ups;
} session;

struct mcp_mux {
    target *targets;
    size_t n;
    const cel_rules *authz;
    long timeout_ms;
    int ttl_s;
    size_t max_sessions, max_per_client; /* MCP_MAX_SESSIONS, a quarter of it */
    uint64_t uses;         /* session uses so far (lock) */
    atomic_llong next_id;

    pthread_mutex_t lock;  /* sessions, n_sessions, stopping */
    pthread_cond_t cond;
    session *sessions;
    size_t n_sessions;
    bool stopping;
    bool reaper_started;
    pthread_t reaper;
};

/* What one request carries to the upstream calls. */
typedef struct {
    const char *raw_token;
} call_ctx;

/* An upstream failure: the message for the client and, when not 0, the HTTP status to
 * answer with (an upstream 401 is passed through). */
typedef struct {
    int status;
    char msg[256];
} up_err;

#define UP_GONE (-2) /* the upstream no longer knows our session (HTTP 404) */

/* ---- small helpers ------------------------------------------------------------ */

/* A condition whose timed waits count on CLOCK_MONOTONIC (as util_mono_ms does). */
static void cond_init_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
}

static void set_err(up_err *e, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(up_err *e, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->status = status;
}

static char **strv_dup(const char *const *v)
{
    size_t n = 0;
    while (v && v[n]) n++;
    char **out = xcalloc(n + 1, sizeof *out);
    for (size_t i = 0; i < n; i++) out[i] = xstrdup(v[i]);
    return out;
}

static void strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++) free(v[i]);
    free(v);
}

static bool is_known_version(const char *v)
{
    for (size_t i = 0; i < ARRAY_LEN(known_versions); i++)
        if (strcmp(v, known_versions[i]) == 0) return true;
    return false;
}

/* Visible ASCII only (MCP transports: session ids are 0x21-0x7E); bounded. */
static bool is_visible_ascii(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (n >= max || (unsigned char)s[n] < 0x21 || (unsigned char)s[n] > 0x7e) return false;
    return n > 0;
}

/* Case-insensitive substring. */
static bool has_token(const char *h, const char *tok)
{
    return h && strcasestr(h, tok) != NULL;
}

/* Percent-encode everything but RFC 3986 unreserved characters. */
static char *url_encode(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *o = xmalloc(3 * n + 1), *p = o;
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if ((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
            *c == '-' || *c == '.' || *c == '_' || *c == '~') {
            *p++ = (char)*c;
        } else {
            *p++ = '%';
            *p++ = hex[*c >> 4];
            *p++ = hex[*c & 15];
        }
    }
    *p = '\0';
    return o;
}

static const target *find_target(const mcp_mux *m, const char *name, size_t len)
{
    for (size_t i = 0; i < m->n; i++)
        if (strlen(m->targets[i].name) == len && memcmp(m->targets[i].name, name, len) == 0)
            return &m->targets[i];
    return NULL;
}

static size_t target_index(const mcp_mux *m, const target *t)
{
    return (size_t)(t - m->targets);
}

/* ---- replies to the client ---------------------------------------------------- */

static json_t *rpc_id_or_null(const json_t *id)
{
    return id ? json_deep_copy(id) : json_null();
}

/* The one place errors become responses. data is stolen (may be NULL). */
static void reply_error(http_req *r, int status, const json_t *id, int code, const char *msg,
                        json_t *data)
{
    json_t *err = json_pack("{s:i, s:s}", "code", code, "message", msg);
    if (data) json_object_set_new(err, "data", data);
    json_t *o = json_pack("{s:s, s:o, s:o}", "jsonrpc", "2.0", "id", rpc_id_or_null(id), "error",
                          err);
    http_reply_json(r, status ? status : 200, o);
}

/* result is stolen. */
static void reply_result(http_req *r, const json_t *id, json_t *result)
{
    json_t *o = json_pack("{s:s, s:o, s:o}", "jsonrpc", "2.0", "id", rpc_id_or_null(id), "result",
                          result);
    http_reply_json(r, 200, o);
}

static void reply_up_err(http_req *r, const json_t *id, const up_err *e)
{
    reply_error(r, e->status, id, RPC_INTERNAL_ERROR, e->msg, NULL);
}

/* ---- authorization -------------------------------------------------------------- */

/* The CEL activation for this request: jwt (claims), request, and mcp filled per item. */
static json_t *activation_new(const json_t *claims, const json_t *request)
{
    json_t *a = json_object();
    if (claims) json_object_set(a, "jwt", (json_t *)claims);
    if (request) json_object_set(a, "request", (json_t *)request);
    return a;
}

/* kind: "tool", "prompt", "resource" (agentgateway's mcp.<kind>.{name,target}). */
static bool authorized(const mcp_mux *m, json_t *act, const char *kind, const char *name,
                       const char *tname)
{
    if (!m->authz) return true;
    json_object_set_new(act, "mcp", json_pack("{s:{s:s, s:s}}", kind, "name", name, "target", tname));
    return cel_rules_decide(m->authz, act);
}

/* ---- upstream identity ---------------------------------------------------------- */

/* The Authorization header line for a Streamable HTTP target, or NULL for none. 0, or -1
 * with e filled. The caller's token leaves only for PASSTHROUGH and to the sidecar. */
static int auth_header(const mcp_mux *m, const target *t, const call_ctx *cx, char **out,
                       up_err *e)
{
    *out = NULL;
    switch (t->identity) {
    case MCP_IDENTITY_NONE:
        return 0;
    case MCP_IDENTITY_PASSTHROUGH:
        if (cx->raw_token && *cx->raw_token && !strpbrk(cx->raw_token, "\r\n"))
            *out = xasprintf("Authorization: Bearer %s", cx->raw_token);
        return 0;
    case MCP_IDENTITY_SIDECAR_OBO:
    case MCP_IDENTITY_SIDECAR_APP:
        break;
    }

    bool obo = t->identity == MCP_IDENTITY_SIDECAR_OBO;
    if (obo && (!cx->raw_token || !*cx->raw_token || strpbrk(cx->raw_token, "\r\n"))) {
        set_err(e, 0, "target %s: no caller token to exchange at the sidecar", t->name);
        return -1;
    }
    int rc = -1;
    char *api = url_encode(t->sidecar_api);
    char *agent = t->agent_identity ? url_encode(t->agent_identity) : NULL;
    size_t bl = strlen(t->sidecar_url);
    while (bl > 0 && t->sidecar_url[bl - 1] == '/') bl--;
    char *url = xasprintf("%.*s/%s/%s%s%s", (int)bl, t->sidecar_url,
                          obo ? "AuthorizationHeader" : "AuthorizationHeaderUnauthenticated", api,
                          agent ? "?AgentIdentity=" : "", agent ? agent : "");
    char *bearer = obo ? xasprintf("Authorization: Bearer %s", cx->raw_token) : NULL;
    const char *hdrs[] = {"Accept: application/json", bearer, NULL};
    httpc_request rq = {.method = "GET", .url = url, .headers = hdrs,
                        .timeout_ms = m->timeout_ms, .max_response = MCP_SIDECAR_MAX};
    httpc_response rs;
    char herr[256];
    json_t *j = NULL;

    if (httpc_do(&rq, &rs, herr, sizeof herr) != HTTPC_OK) {
        set_err(e, 0, "target %s: sidecar unreachable: %s", t->name, herr);
        goto end;
    }
    if (rs.status != 200) {
        set_err(e, 0, "target %s: the sidecar answered HTTP %ld", t->name, rs.status);
        goto end;
    }
    j = json_loadb(rs.body, rs.body_len, 0, NULL);
    const char *h = json_string_value(json_object_get(j, "authorizationHeader"));
    if (!h || !*h || strpbrk(h, "\r\n")) {
        set_err(e, 0, "target %s: the sidecar gave no authorizationHeader", t->name);
        goto end;
    }
    *out = xasprintf("Authorization: %s", h);
    rc = 0;
end:
    json_decref(j);
    httpc_response_free(&rs);
    free(url);
    free(api);
    free(agent);
    if (bearer) {
        explicit_bzero(bearer, strlen(bearer));
        free(bearer);
    }
    return rc;
}

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* ---- Streamable HTTP upstream ----------------------------------------------------- */

/* j is the JSON-RPC response to request id: matches, has a result or an error, and is not
 * a request of the server's own. */
static bool is_response_to(const json_t *j, json_int_t id)
{
    const json_t *jid = json_object_get(j, "id");
    return json_is_integer(jid) && json_integer_value(jid) == id && !json_object_get(j, "method") &&
           (json_object_get(j, "result") || json_object_get(j, "error"));
}

/* The next whole event at buf[0..len) of a text/event-stream (MCP transports: "event:" and
 * "data:" lines, data lines of one event joined by "\n", an event ends at a blank line; with
 * at_end, the end of the body ends the last one too). The bytes it spans, or 0 if none is
 * whole yet. *data (malloc'd; NULL for an event without data, e.g. a comment) and its name
 * in ev ("message" when it has none). */
static size_t sse_event(const char *buf, size_t len, bool at_end, char ev[32], char **data, size_t *dlen)
{
    size_t dcap = 0;
    bool any = false; /* a field line seen */
    *data = NULL;
    *dlen = 0;
    snprintf(ev, 32, "message");
    if (!len) return 0;
    const char *p = buf, *end = buf + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl && !at_end) break; /* the rest of the event is still to come */
        const char *le = nl ? nl : end, *next = nl ? nl + 1 : end;
        size_t ll = (size_t)(le - p);
        if (ll > 0 && p[ll - 1] == '\r') ll--;
        if (ll == 0) {
            if (any) return (size_t)(next - buf);
            p = next; /* a blank line before any field: nothing to dispatch */
            continue;
        }
        any = true;
        bool is_data = ll >= 5 && memcmp(p, "data:", 5) == 0;
        if (is_data || (ll >= 6 && memcmp(p, "event:", 6) == 0)) {
            const char *v = p + (is_data ? 5 : 6);
            size_t vl = ll - (is_data ? 5 : 6);
            if (vl > 0 && *v == ' ') v++, vl--;
            if (!is_data) {
                snprintf(ev, 32, "%.*s", (int)(vl < 31 ? vl : 31), v);
            } else {
                if (*dlen + vl + 2 > dcap) {
                    dcap = (*dlen + vl + 2) * 2;
                    *data = xrealloc(*data, dcap);
                }
                if (*dlen > 0) (*data)[(*dlen)++] = '\n';
                memcpy(*data + *dlen, v, vl);
                *dlen += vl;
                (*data)[*dlen] = '\0';
            }
        } /* "id:", "retry:" and comments (":...") are of no use here */
        p = next;
    }
    if (at_end && any) return len; /* the body's end ends the last event */
    free(*data);
    *data = NULL;
    *dlen = 0;
    return at_end ? (size_t)(p - buf) : 0; /* at the end only blank lines may be left */
}

/* The response to request id in an SSE body. Other events (progress notifications, requests
 * we cannot relay) are skipped. New reference or NULL. */
static json_t *sse_find(const char *body, size_t len, json_int_t id)
{
    json_t *found = NULL;
    char ev[32], *data;
    size_t dlen, k;
    while (!found && (k = sse_event(body, len, true, ev, &data, &dlen)) > 0) {
        json_t *j = data ? json_loadb(data, dlen, 0, NULL) : NULL;
        if (is_response_to(j, id)) found = j;
        else json_decref(j);
        free(data);
        body += k;
        len -= k;
    }
    return found;
}

/* POST one JSON-RPC message to url with the target's identity and the extra header lines
 * (NULL-terminated, may be NULL). 0 with *rs (a 2xx answer; the caller frees it), UP_GONE for a
 * 404 when gone404 (the upstream forgot the session), -1 with e. */
static int post_json(const mcp_mux *m, const target *t, const call_ctx *cx, const char *url,
                     const char *const *extra, bool gone404, json_t *msg, httpc_response *rs, up_err *e)
{
    int rc = -1;
    char *auth = NULL, *body = NULL, herr[256];
    const char *hdrs[8];
    size_t k = 0;
    if (auth_header(m, t, cx, &auth, e) != 0) return -1;
    if (!(body = json_dumps(msg, JSON_COMPACT))) {
        set_err(e, 0, "target %s: cannot encode the request", t->name);
        goto end;
    }
    hdrs[k++] = "Content-Type: application/json";
    for (const char *const *x = extra; x && *x && k < 6; x++) hdrs[k++] = *x;
    if (auth) hdrs[k++] = auth;
    hdrs[k] = NULL;
    httpc_request rq = {.method = "POST", .url = url, .headers = hdrs, .body = body,
                        .body_len = strlen(body), .timeout_ms = m->timeout_ms,
                        .max_response = MCP_MAX_MSG};
    httpc_result hr = httpc_do(&rq, rs, herr, sizeof herr);
    if (hr != HTTPC_OK) {
        set_err(e, 0, "target %s: %s: %s", t->name,
                hr == HTTPC_TIMEOUT ? "upstream timed out"
                : hr == HTTPC_TOO_LARGE ? "upstream answer too large"
                                        : "upstream unreachable",
                herr);
        goto end;
    }
    if (rs->status == 404 && gone404) {
        rc = UP_GONE;
        set_err(e, 0, "target %s: upstream session ended", t->name);
    } else if (rs->status == 401) { /* as agentgateway: the upstream's 401 reaches the client */
        set_err(e, 401, "target %s: upstream answered HTTP 401", t->name);
    } else if (rs->status < 200 || rs->status > 299) {
        set_err(e, 0, "target %s: upstream answered HTTP %ld", t->name, rs->status);
    } else {
        rc = 0;
    }
    if (rc != 0) httpc_response_free(rs);
end:
    free_secret(auth);
    free(body);
    return rc;
}

/* POST one message (a request when id > 0, else a notification) to a Streamable HTTP target.
 * 0 with *resp (requests), UP_GONE for 404 on a session, -1 with e. *sid_out (may be NULL)
 * receives the upstream's Mcp-Session-Id. */
static int http_post(const mcp_mux *m, const target *t, const call_ctx *cx, const char *sid,
                     const char *version, json_t *msg, json_int_t id, json_t **resp, up_err *e,
                     char **sid_out)
{
    if (resp) *resp = NULL;
    if (sid_out) *sid_out = NULL;
    char *h_sid = sid ? xasprintf("Mcp-Session-Id: %s", sid) : NULL;
    char *h_ver = version ? xasprintf("MCP-Protocol-Version: %s", version) : NULL;
    const char *extra[4] = {"Accept: application/json, text/event-stream", NULL, NULL, NULL};
    size_t k = 1;
    if (h_sid) extra[k++] = h_sid;
    if (h_ver) extra[k++] = h_ver;
    httpc_response rs;
    int rc = post_json(m, t, cx, t->url, extra, sid != NULL, msg, &rs, e);
    free(h_sid);
    free(h_ver);
    if (rc != 0) return rc;
    if (sid_out) {
        char *s = httpc_response_header(&rs, "Mcp-Session-Id");
        if (s && is_visible_ascii(s, MCP_MAX_UP_SID)) *sid_out = s;
        else free(s);
    }
    if (id > 0) { /* a request: its response is the answer's body, JSON or SSE */
        json_t *j = NULL;
        if (rs.content_type && has_token(rs.content_type, "text/event-stream")) {
            j = sse_find(rs.body, rs.body_len, id);
        } else {
            j = json_loadb(rs.body, rs.body_len, 0, NULL);
            if (!is_response_to(j, id)) {
                json_decref(j);
                j = NULL;
            }
        }
        if (j) {
            *resp = j;
        } else {
            set_err(e, 0, "target %s: no JSON-RPC response from upstream (HTTP %ld)", t->name, rs.status);
            if (sid_out) {
                free(*sid_out);
                *sid_out = NULL;
            }
            rc = -1;
        }
    } /* a notification: 202 (or any 2xx) is all there is */
    httpc_response_free(&rs);
    return rc;
}

/* Best effort: tell an HTTP upstream its session is over (MCP transports, DELETE). */
static void http_end_session(const mcp_mux *m, const target *t, const call_ctx *cx,
                             const char *sid, const char *version)
{
    char *auth = NULL;
    up_err e;
    if (auth_header(m, t, cx, &auth, &e) != 0) auth = NULL; /* then without: best effort */
    char *h_sid = xasprintf("Mcp-Session-Id: %s", sid);
    char *h_ver = version ? xasprintf("MCP-Protocol-Version: %s", version) : NULL;
    const char *hdrs[4] = {h_sid, NULL, NULL, NULL};
    size_t k = 1;
    if (h_ver) hdrs[k++] = h_ver;
    if (auth) hdrs[k++] = auth;
    httpc_request rq = {.method = "DELETE", .url = t->url, .headers = hdrs,
                        .timeout_ms = MCP_END_TIMEOUT_MS, .max_response = 64 * 1024};
    httpc_response rs;
    char herr[256];
    if (httpc_do(&rq, &rs, herr, sizeof herr) == HTTPC_OK) httpc_response_free(&rs);
    free_secret(auth);
    free(h_sid);
    free(h_ver);
}

/* ---- legacy HTTP+SSE upstream (MCP 2024-11-05) ------------------------------------------
 * One GET stream per upstream session; its first event, "endpoint", names where to POST
 * messages (on the target's origin), and the answers come back on the stream as "message"
 * events. The stream is an asynchronous transfer on the HTTP client's thread: the caller (a
 * deferred worker holding the upstream's lock, as for stdio) reads it, and waits for its
 * notify on the upstream's condition. Requests of the server's own are answered as for stdio. */

static void sse_notify(void *ctx)
{
    upstream *u = ctx;
    pthread_mutex_lock(&u->nmu);
    u->news = true;
    pthread_cond_signal(&u->ncond);
    pthread_mutex_unlock(&u->nmu);
}

/* Wait for the stream's next news; false if the deadline came first. */
static bool sse_wait(upstream *u, int64_t deadline)
{
    pthread_mutex_lock(&u->nmu);
    for (int64_t left; !u->news && (left = deadline - util_mono_ms()) > 0;) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += left / 1000;
        ts.tv_nsec += (left % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&u->ncond, &u->nmu, &ts);
    }
    bool news = u->news;
    u->news = false;
    pthread_mutex_unlock(&u->nmu);
    return news;
}

/* The upstream session ends with its stream. Lock held (or the session is being destroyed). */
static void sse_close(upstream *u)
{
    httpc_async_close(u->stream); /* no notify after this */
    u->stream = NULL;
    free(u->post_url);
    u->post_url = NULL;
    u->len = 0;
    u->ready = false;
}

/* The stream's next event: 1 with its name and data (NULL without; the caller frees it), 0 at
 * the deadline, -1 if the stream ended or failed. Lock held. */
static int sse_next(upstream *u, int64_t deadline, char ev[32], char **data, size_t *dlen, up_err *e)
{
    for (;;) {
        size_t k = sse_event(u->buf, u->len, false, ev, data, dlen);
        if (k) {
            memmove(u->buf, u->buf + k, u->len - k);
            u->len -= k;
            return 1;
        }
        if (u->len >= MCP_MAX_MSG) {
            set_err(e, 0, "target %s: an event over %u bytes on the SSE stream", u->t->name, MCP_MAX_MSG);
            return -1;
        }
        if (u->cap - u->len < 16384) {
            u->cap = u->cap ? 2 * u->cap : 65536;
            u->buf = xrealloc(u->buf, u->cap);
        }
        long n = httpc_async_read(u->stream, u->buf + u->len, u->cap - u->len);
        if (n > 0) {
            u->len += (size_t)n;
        } else if (n == HTTPC_AGAIN) {
            if (!sse_wait(u, deadline)) {
                set_err(e, 0, "target %s: upstream timed out", u->t->name);
                return 0;
            }
        } else {
            set_err(e, 0, "target %s: the SSE stream ended", u->t->name);
            return -1;
        }
    }
}

/* Where the endpoint event says to POST: an absolute URL on the target's origin (scheme, host
 * and port), an absolute path on it, or a path relative to the target's URL. NULL otherwise. */
static char *sse_endpoint(const char *base, const char *ep)
{
    for (const char *p = ep; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) return NULL;
    const char *auth = strstr(base, "://") + 3;
    size_t olen = (size_t)(auth - base) + strcspn(auth, "/?#");
    if (!strncmp(ep, "http://", 7) || !strncmp(ep, "https://", 8)) {
        if (strncasecmp(ep, base, olen) || (ep[olen] && !strchr("/?#", ep[olen]))) return NULL;
        return xstrdup(ep);
    }
    if (*ep == '/') return xasprintf("%.*s%s", (int)olen, base, ep);
    size_t dir = olen + strcspn(base + olen, "?#");
    while (dir > olen && base[dir - 1] != '/') dir--;
    return dir > olen ? xasprintf("%.*s%s", (int)dir, base, ep) : xasprintf("%.*s/%s", (int)olen, base, ep);
}

/* POST one message to the endpoint. 0 (with *direct if the server answered it in the POST's
 * own answer), UP_GONE if the server no longer knows the session (404), -1 with e. */
static int sse_post(const mcp_mux *m, upstream *u, const call_ctx *cx, json_t *msg, json_int_t id,
                    json_t **direct, up_err *e)
{
    if (direct) *direct = NULL;
    httpc_response rs;
    int rc = post_json(m, u->t, cx, u->post_url, NULL, true, msg, &rs, e);
    if (rc != 0) return rc;
    if (id > 0 && direct && rs.body_len) {
        json_t *j = json_loadb(rs.body, rs.body_len, 0, NULL);
        if (is_response_to(j, id)) *direct = j;
        else json_decref(j);
    }
    httpc_response_free(&rs);
    return 0;
}

/* Open the stream and wait for its endpoint event. Lock held. 0, or -1 with e. */
static int sse_open(const mcp_mux *m, upstream *u, const call_ctx *cx, up_err *e)
{
    char *auth = NULL, herr[256], ev[32], *data = NULL;
    size_t dlen;
    sse_close(u);
    if (auth_header(m, u->t, cx, &auth, e) != 0) return -1;
    const char *hdrs[] = {"Accept: text/event-stream", auth, NULL};
    httpc_request rq = {.url = u->t->url, .headers = hdrs}; /* no bound: it lasts the session */
    u->news = false;
    u->stream = httpc_async_start(&rq, sse_notify, u, herr, sizeof herr);
    free_secret(auth);
    if (!u->stream) {
        set_err(e, 0, "target %s: %s", u->t->name, herr);
        return -1;
    }
    int64_t deadline = util_mono_ms() + m->timeout_ms;
    httpc_async_state st;
    while ((st = httpc_async_poll(u->stream)) == HTTPC_ASYNC_WAITING)
        if (!sse_wait(u, deadline)) {
            set_err(e, 0, "target %s: upstream timed out", u->t->name);
            goto fail;
        }
    long status = httpc_async_status(u->stream);
    if (st == HTTPC_ASYNC_FAILED) {
        httpc_result hr = httpc_async_error(u->stream, herr, sizeof herr);
        set_err(e, 0, "target %s: %s: %s", u->t->name,
                hr == HTTPC_TIMEOUT ? "upstream timed out" : "upstream unreachable", herr);
        goto fail;
    }
    if (status != 200) {
        set_err(e, status == 401 ? 401 : 0, "target %s: the SSE stream answered HTTP %ld", u->t->name, status);
        goto fail;
    }
    for (;;) {
        int rc = sse_next(u, deadline, ev, &data, &dlen, e);
        if (rc <= 0) goto fail;
        if (data && !strcmp(ev, "endpoint")) break;
        free(data);
    }
    u->post_url = sse_endpoint(u->t->url, data);
    if (!u->post_url) {
        set_err(e, 0, "target %s: the endpoint event names a URL off the target's origin", u->t->name);
        goto fail;
    }
    free(data);
    return 0;
fail:
    free(data);
    sse_close(u);
    return -1;
}

/* A request of the server's own (stdio_other's answers), a ping or one we cannot relay. */
static void sse_other(const mcp_mux *m, upstream *u, const call_ctx *cx, json_t *j);

/* One message over the session: POST it, then (requests) read the stream until its answer.
 * Lock held. 0 with *resp for requests, UP_GONE, or -1 with e. */
static int sse_exchange(const mcp_mux *m, upstream *u, const call_ctx *cx, json_t *msg, json_int_t id,
                        json_t **resp, up_err *e)
{
    if (!u->stream) {
        set_err(e, 0, "target %s: no SSE stream", u->t->name);
        return UP_GONE;
    }
    int64_t deadline = util_mono_ms() + m->timeout_ms;
    json_t *direct = NULL;
    int rc = sse_post(m, u, cx, msg, id, &direct, e);
    if (rc == UP_GONE) sse_close(u);
    if (rc != 0 || id <= 0) return rc;
    if (direct) {
        *resp = direct;
        return 0;
    }
    for (;;) {
        char ev[32], *data;
        size_t dlen;
        int r = sse_next(u, deadline, ev, &data, &dlen, e);
        if (r < 0) sse_close(u); /* the session is over: the next request starts a new one */
        if (r <= 0) return -1;
        json_t *j = data && !strcmp(ev, "message") ? json_loadb(data, dlen, 0, NULL) : NULL;
        free(data);
        if (is_response_to(j, id)) {
            *resp = j;
            return 0;
        }
        if (json_is_object(j)) sse_other(m, u, cx, j);
        json_decref(j);
    }
}

/* ---- stdio upstream ------------------------------------------------------------------ */

/* environ, with the target's "K=V" entries replacing or adding. The array is new; its
 * strings are borrowed. */
static char **build_env(char *const *extra)
{
    size_t ne = 0, nx = 0;
    while (environ && environ[ne]) ne++;
    while (extra && extra[nx]) nx++;
    char **env = xcalloc(ne + nx + 1, sizeof *env);
    size_t k = 0;
    for (size_t i = 0; i < ne; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t kl = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        bool over = false;
        for (size_t j = 0; j < nx && !over; j++)
            over = strncmp(extra[j], environ[i], kl) == 0 && extra[j][kl] == '=';
        if (!over) env[k++] = environ[i];
    }
    for (size_t j = 0; j < nx; j++) env[k++] = extra[j];
    env[k] = NULL;
    return env;
}

/* Ends the child: EOF on its stdin, SIGTERM to its process group, SIGKILL after
 * MCP_END_TIMEOUT_MS, then reaps it. Lock held (or the upstream is private). */
static void stdio_kill(upstream *u)
{
    if (u->in_fd >= 0) close(u->in_fd);
    if (u->out_fd >= 0) close(u->out_fd);
    u->in_fd = u->out_fd = -1;
    u->len = 0;
    u->skipping = false;
    u->ready = false;
    if (u->pid <= 0) return;
    pid_t pid = u->pid;
    u->pid = 0;
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) return;
    kill(-pid, SIGTERM);
    kill(pid, SIGTERM);
    for (int64_t until = util_mono_ms() + MCP_END_TIMEOUT_MS; util_mono_ms() < until;) {
        if (waitpid(pid, &st, WNOHANG) != 0) return; /* reaped, or not ours any more */
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
}

static int stdio_spawn(const mcp_mux *m, upstream *u, up_err *e)
{
    const target *t = u->t;
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, def;
    char **env = NULL;
    pid_t pid = 0;
    (void)m;

    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
        set_err(e, 0, "target %s: pipe: %s", t->name, strerror(errno));
        goto fail;
    }
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);   /* dup2 clears CLOEXEC */
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    posix_spawnattr_init(&at);
    sigemptyset(&none);
    sigemptyset(&def);
    int sigs[] = {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < ARRAY_LEN(sigs); i++) sigaddset(&def, sigs[i]);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setpgroup(&at, 0); /* its own group: we can end its children too */
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETPGROUP);
    env = build_env(t->env);
    int rc = posix_spawnp(&pid, t->cmd[0], &fa, &at, t->cmd, env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    free(env);
    if (rc != 0) {
        set_err(e, 0, "target %s: cannot start %s: %s", t->name, t->cmd[0], strerror(rc));
        goto fail;
    }
    close(in[0]);
    close(out[1]);
    u->pid = pid;
    u->in_fd = in[1];
    u->out_fd = out[0];
    fcntl(u->in_fd, F_SETFL, fcntl(u->in_fd, F_GETFL) | O_NONBLOCK);
    fcntl(u->out_fd, F_SETFL, fcntl(u->out_fd, F_GETFL) | O_NONBLOCK);
    u->len = 0;
    u->skipping = false;
    log_msg(LOG_INFO, "mcp_stdio_start", "target %s: started %s (pid %d)", t->name, t->cmd[0],
            (int)pid);
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0) close(in[i]);
        if (out[i] >= 0) close(out[i]);
    }
    return -1;
}

/* Write all of s to the child's stdin by the deadline. */
static int stdio_write(upstream *u, const char *s, size_t n, int64_t deadline, up_err *e)
{
    while (n > 0) {
        ssize_t w = write(u->in_fd, s, n);
        if (w > 0) {
            s += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) {
            int64_t left = deadline - util_mono_ms();
            if (left <= 0) {
                set_err(e, 0, "target %s: timed out writing to the server", u->t->name);
                return -1;
            }
            struct pollfd p = {.fd = u->in_fd, .events = POLLOUT};
            poll(&p, 1, (int)(left > 1000 ? 1000 : left));
            continue;
        }
        set_err(e, 0, "target %s: the server process is gone", u->t->name);
        stdio_kill(u);
        return UP_GONE; /* nothing was delivered: the caller may start a new one and retry */
    }
    return 0;
}

static int stdio_send(upstream *u, json_t *msg, int64_t deadline, up_err *e)
{
    char *s = json_dumps(msg, JSON_COMPACT); /* escapes newlines: one line */
    if (!s) {
        set_err(e, 0, "target %s: cannot encode the request", u->t->name);
        return -1;
    }
    size_t n = strlen(s);
    s = xrealloc(s, n + 2);
    s[n++] = '\n';
    s[n] = '\0';
    int rc = stdio_write(u, s, n, deadline, e);
    free(s);
    return rc;
}

/* One line from the server that is not the awaited response. Requests from the server
 * cannot be relayed to the client (no server-to-client stream): answer them here so the
 * server does not wait (ping gets its empty result, anything else method-not-found). */
static json_t *other_answer(const json_t *j)
{
    json_t *id = json_object_get(j, "id");
    const char *method = json_string_value(json_object_get(j, "method"));
    if (!method || !id || json_is_null(id)) return NULL; /* notification or stray response */
    if (strcmp(method, "ping") == 0) return json_pack("{s:s, s:O, s:{}}", "jsonrpc", "2.0", "id", id, "result");
    return json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc", "2.0", "id", id, "error", "code",
                     RPC_METHOD_NOT_FOUND, "message", "Method not found");
}

static void stdio_other(upstream *u, json_t *j, int64_t deadline)
{
    json_t *a = other_answer(j);
    up_err e;
    if (a) (void)stdio_send(u, a, deadline, &e);
    json_decref(a);
}

static void sse_other(const mcp_mux *m, upstream *u, const call_ctx *cx, json_t *j)
{
    json_t *a = other_answer(j);
    up_err e;
    if (a) (void)sse_post(m, u, cx, a, 0, NULL, &e);
    json_decref(a);
}

/* Read lines until the response with this id. 0 with *resp, or -1. */
static int stdio_read_response(upstream *u, json_int_t id, int64_t deadline, json_t **resp,
                               up_err *e)
{
    for (;;) {
        /* whole lines already in the buffer */
        char *nl;
        while (u->len > 0 && (nl = memchr(u->buf, '\n', u->len)) != NULL) {
            size_t ll = (size_t)(nl - u->buf);
            json_t *j = NULL;
            if (!u->skipping && ll > 0) j = json_loadb(u->buf, ll, 0, NULL);
            u->skipping = false;
            memmove(u->buf, nl + 1, u->len - ll - 1);
            u->len -= ll + 1;
            if (!json_is_object(j)) {
                json_decref(j);
                continue; /* not JSON-RPC (a stray log line): ignored */
            }
            if (is_response_to(j, id)) {
                *resp = j;
                return 0;
            }
            stdio_other(u, j, deadline);
            json_decref(j);
            if (u->pid == 0) break;
        }
        if (u->pid == 0 || u->out_fd < 0) {
            set_err(e, 0, "target %s: the server process is gone", u->t->name);
            return -1;
        }
        if (u->len >= MCP_MAX_MSG) { /* bound the line: drop it up to its newline */
            log_msg(LOG_WARN, "mcp_stdio_line", "target %s: line over %u bytes dropped",
                    u->t->name, MCP_MAX_MSG);
            u->len = 0;
            u->skipping = true;
        }
        int64_t left = deadline - util_mono_ms();
        if (left <= 0) {
            set_err(e, 0, "target %s: upstream timed out", u->t->name);
            return -1;
        }
        struct pollfd p = {.fd = u->out_fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(left > 1000 ? 1000 : left));
        if (pr < 0 && errno != EINTR) {
            set_err(e, 0, "target %s: poll: %s", u->t->name, strerror(errno));
            return -1;
        }
        if (pr <= 0) continue;
        if (u->cap - u->len < 65536) {
            u->cap = u->cap ? u->cap * 2 : 65536;
            if (u->cap < u->len + 65536) u->cap = u->len + 65536;
            u->buf = xrealloc(u->buf, u->cap);
        }
        ssize_t r = read(u->out_fd, u->buf + u->len, u->cap - u->len);
        if (r > 0) {
            u->len += (size_t)r;
        } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
            log_msg(LOG_WARN, "mcp_stdio_exit", "target %s: the server process ended",
                    u->t->name);
            stdio_kill(u);
            set_err(e, 0, "target %s: the server process is gone", u->t->name);
            return -1;
        }
    }
}

/* ---- upstream sessions ------------------------------------------------------------ */

/* Send one message on the upstream's transport; lock held for stdio. For HTTP the
 * caller passes the session id and version it copied under the lock. */
static int up_exchange(mcp_mux *m, upstream *u, const call_ctx *cx, const char *sid,
                       const char *version, json_t *msg, json_int_t id, json_t **resp,
                       up_err *e, char **sid_out)
{
    if (sid_out) *sid_out = NULL;
    if (u->t->sse) return sse_exchange(m, u, cx, msg, id, resp, e);
    if (u->t->url) return http_post(m, u->t, cx, sid, version, msg, id, resp, e, sid_out);

    if (u->pid == 0) {
        set_err(e, 0, "target %s: the server process is gone", u->t->name);
        return -1;
    }
    int64_t deadline = util_mono_ms() + m->timeout_ms;
    int rc = stdio_send(u, msg, deadline, e);
    if (rc != 0) return rc;
    if (id <= 0) return 0;
    return stdio_read_response(u, id, deadline, resp, e);
}

static json_int_t new_id(mcp_mux *m)
{
    return (json_int_t)atomic_fetch_add(&m->next_id, 1);
}

static void up_reset_locked(upstream *u)
{
    u->ready = false;
    free(u->sid);
    free(u->version);
    json_decref(u->init_result);
    u->sid = u->version = NULL;
    u->init_result = NULL;
}

/* initialize + notifications/initialized on this upstream (MCP lifecycle). Lock held. */
static int up_init_locked(mcp_mux *m, session *s, upstream *u, const call_ctx *cx, up_err *e)
{
    int rc = -1;
    json_t *resp = NULL, *req = NULL, *note = NULL;
    char *sid = NULL;

    up_reset_locked(u);
    if (!u->t->url && u->pid == 0 && stdio_spawn(m, u, e) != 0) goto end;
    if (u->t->sse && sse_open(m, u, cx, e) != 0) goto end;

    json_int_t id = new_id(m);
    req = json_pack("{s:s, s:I, s:s, s:O}", "jsonrpc", "2.0", "id", id, "method", "initialize",
                    "params", s->init_params);
    if (up_exchange(m, u, cx, NULL, NULL, req, id, &resp, e, &sid) != 0) goto end;
    json_t *result = json_object_get(resp, "result");
    const char *v = json_string_value(json_object_get(result, "protocolVersion"));
    if (!json_is_object(result) || !v) {
        const char *em = json_string_value(json_object_get(json_object_get(resp, "error"), "message"));
        set_err(e, 0, "target %s: initialize failed: %.160s", u->t->name, em ? em : "no result");
        goto end;
    }
    note = json_pack("{s:s, s:s}", "jsonrpc", "2.0", "method", "notifications/initialized");
    if (up_exchange(m, u, cx, sid, v, note, 0, NULL, e, NULL) != 0) goto end;

    u->sid = sid;
    sid = NULL;
    u->version = xstrdup(v);
    u->init_result = json_incref(result);
    u->ready = true;
    rc = 0;
end:
    if (rc != 0 && !u->t->url && u->pid > 0) stdio_kill(u);
    if (rc != 0 && u->t->sse) sse_close(u);
    if (rc != 0 && sid) { /* the upstream made a session we will not use */
        http_end_session(m, u->t, cx, sid, NULL);
    }
    free(sid);
    json_decref(resp);
    json_decref(req);
    json_decref(note);
    return rc;
}

/* One JSON-RPC request to a target on this client session's upstream session. params is
 * borrowed (may be NULL). 0 with *resp, the whole response (result or error), or -1. */
static int up_request(mcp_mux *m, session *s, upstream *u, const call_ctx *cx,
                      const char *method, json_t *params, json_t **resp, up_err *e)
{
    *resp = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        json_int_t id = new_id(m);
        json_t *req = json_pack("{s:s, s:I, s:s}", "jsonrpc", "2.0", "id", id, "method", method);
        if (params) json_object_set(req, "params", params);
        int rc;

        pthread_mutex_lock(&u->lock);
        if (!u->ready && up_init_locked(m, s, u, cx, e) != 0) {
            pthread_mutex_unlock(&u->lock);
            json_decref(req);
            return -1;
        }
        if (!u->t->url || u->t->sse) { /* stdio and SSE: the exchange holds the lock */
            rc = up_exchange(m, u, cx, NULL, NULL, req, id, resp, e, NULL);
            pthread_mutex_unlock(&u->lock);
            json_decref(req);
            if (rc == UP_GONE) continue; /* the child (or the SSE session) was gone: a new one */
            return rc;
        }
        char *sid = u->sid ? xstrdup(u->sid) : NULL;
        char *ver = u->version ? xstrdup(u->version) : NULL;
        pthread_mutex_unlock(&u->lock);

        rc = up_exchange(m, u, cx, sid, ver, req, id, resp, e, NULL);
        json_decref(req);
        free(ver);
        if (rc == UP_GONE) {
            /* The upstream forgot the session: initialise a new one and retry once
             * (unless another request already did). */
            pthread_mutex_lock(&u->lock);
            if (u->ready && u->sid && strcmp(u->sid, sid) == 0) up_reset_locked(u);
            pthread_mutex_unlock(&u->lock);
            free(sid);
            log_msg(LOG_INFO, "mcp_upstream_session", "target %s: upstream session ended, "
                    "initialising a new one", u->t->name);
            continue;
        }
        free(sid);
        return rc;
    }
    return -1;
}

/* ---- running jobs on several targets at once ------------------------------------------- */

typedef struct job {
    mcp_mux *m;
    session *s;
    upstream *u;
    const call_ctx *cx;
    json_t *out;     /* job result */
    up_err e;
    int rc;
} job;

typedef void (*job_fn)(job *j);

typedef struct {
    job *j;
    job_fn fn;
} job_start;

static void *job_thread(void *arg)
{
    job_start *js = arg;
    js->fn(js->j);
    return NULL;
}

/* fn on every job, in parallel when there is more than one. */
static void run_jobs(job *jobs, size_t n, job_fn fn)
{
    if (n == 1) {
        fn(&jobs[0]);
        return;
    }
    pthread_t *th = xcalloc(n, sizeof *th);
    bool *started = xcalloc(n, sizeof *started);
    job_start *js = xcalloc(n, sizeof *js);
    for (size_t i = 0; i < n; i++) {
        js[i] = (job_start){&jobs[i], fn};
        started[i] = pthread_create(&th[i], NULL, job_thread, &js[i]) == 0;
        if (!started[i]) fn(&jobs[i]);
    }
    for (size_t i = 0; i < n; i++)
        if (started[i]) pthread_join(th[i], NULL);
    free(th);
    free(started);
    free(js);
}

static void job_init(job *j)
{
    pthread_mutex_lock(&j->u->lock);
    j->rc = j->u->ready ? 0 : up_init_locked(j->m, j->s, j->u, j->cx, &j->e);
    if (j->rc == 0) j->out = json_incref(j->u->init_result);
    pthread_mutex_unlock(&j->u->lock);
}

/* Every page of the target's tools/list. out: the tools array; a JSON-RPC error from the
 * target (it has no tools) gives an empty list. */
static void job_tools(job *j)
{
    json_t *all = json_array();
    char *cursor = NULL;
    j->rc = 0;
    for (int page = 0; page < MCP_MAX_PAGES; page++) {
        json_t *params = cursor ? json_pack("{s:s}", "cursor", cursor) : NULL;
        json_t *resp = NULL;
        free(cursor);
        cursor = NULL;
        j->rc = up_request(j->m, j->s, j->u, j->cx, "tools/list", params, &resp, &j->e);
        json_decref(params);
        if (j->rc != 0) break;
        json_t *result = json_object_get(resp, "result");
        json_t *tools = json_object_get(result, "tools");
        size_t i;
        json_t *tool;
        json_array_foreach(tools, i, tool) {
            if (json_array_size(all) >= MCP_MAX_TOOLS) {
                log_msg(LOG_WARN, "mcp_tools_list", "target %s: more than %d tools, the rest "
                        "dropped", j->u->t->name, MCP_MAX_TOOLS);
                break;
            }
            if (json_is_string(json_object_get(tool, "name"))) json_array_append(all, tool);
        }
        const char *next = json_string_value(json_object_get(result, "nextCursor"));
        if (next && *next && json_array_size(all) < MCP_MAX_TOOLS) cursor = xstrdup(next);
        json_decref(resp);
        if (!cursor) break;
    }
    free(cursor);
    if (j->rc != 0) {
        json_decref(all);
        all = NULL;
    }
    j->out = all;
}

/* ---- sessions ------------------------------------------------------------------ */

static char *bind_key(const json_t *claims)
{
    if (!claims) return NULL;
    const char *iss = json_string_value(json_object_get(claims, "iss"));
    const char *sub = json_string_value(json_object_get(claims, "sub"));
    if (!sub) sub = json_string_value(json_object_get(claims, "oid"));
    return xasprintf("%s\n%s", iss ? iss : "", sub ? sub : "");
}

static session *session_new(const mcp_mux *m)
{
    session *s = xcalloc(1, sizeof *s);
    unsigned char rnd[32];
    util_random(rnd, sizeof rnd);
    for (size_t i = 0; i < sizeof rnd; i++) snprintf(s->id + 2 * i, 3, "%02x", rnd[i]);
    s->n = m->n;
    s->ups = xcalloc(m->n, sizeof *s->ups);
    for (size_t i = 0; i < m->n; i++) {
        upstream *u = &s->ups[i];
        u->t = &m->targets[i];
        u->in_fd = u->out_fd = -1;
        pthread_mutex_init(&u->lock, NULL);
        pthread_mutex_init(&u->nmu, NULL);
        cond_init_monotonic(&u->ncond);
    }
    s->refs = 1;
    s->last_ms = util_mono_ms();
    return s;
}

/* Ends every upstream session and frees. Nobody else uses s any more. */
static void session_destroy(mcp_mux *m, session *s, const call_ctx *cx)
{
    for (size_t i = 0; i < s->n; i++) {
        upstream *u = &s->ups[i];
        if (u->t->url && u->sid) http_end_session(m, u->t, cx, u->sid, u->version);
        if (!u->t->url) stdio_kill(u);
        if (u->t->sse) sse_close(u);
        up_reset_locked(u);
        free(u->buf);
        pthread_mutex_destroy(&u->lock);
        pthread_mutex_destroy(&u->nmu);
        pthread_cond_destroy(&u->ncond);
    }
    free(s->ups);
    free(s->bind);
    free(s->client_version);
    json_decref(s->init_params);
    free(s);
}

static void session_log(const char *event, const session *s, const char *what)
{
    char fp[20];
    log_msg(LOG_INFO, event, "session %s %s", log_fingerprint(s->id, fp), what);
}

/* The live session with this id and caller, with a reference; NULL if none. */
static session *session_get(mcp_mux *m, const char *id, const char *bind)
{
    session *found = NULL;
    pthread_mutex_lock(&m->lock);
    for (session *s = m->sessions; s; s = s->next) {
        if (strcmp(s->id, id) != 0) continue;
        /* A session belongs to the caller that created it (MCP security best practices:
         * bind session ids to the user). Another caller's id is "not found". */
        if ((s->bind == NULL) != (bind == NULL) || (bind && strcmp(s->bind, bind) != 0)) break;
        s->refs++;
        s->last_ms = util_mono_ms();
        s->last_use = ++m->uses;
        found = s;
        break;
    }
    pthread_mutex_unlock(&m->lock);
    return found;
}

static void session_put(mcp_mux *m, session *s, const call_ctx *cx)
{
    pthread_mutex_lock(&m->lock);
    bool last = --s->refs == 0 && s->gone;
    s->last_ms = util_mono_ms();
    s->last_use = ++m->uses;
    pthread_mutex_unlock(&m->lock);
    if (last) session_destroy(m, s, cx);
}

/* Unlink (DELETE); the last reference frees. Lock held. */
static void session_unlink_locked(mcp_mux *m, session *s)
{
    if (s->gone) return;
    for (session **pp = &m->sessions; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    s->gone = true;
    m->n_sessions--;
}

/* Unlink idle sessions nobody uses; returns them as a list to destroy. Lock held. */
static session *reap_locked(mcp_mux *m, int64_t now)
{
    session *dead = NULL;
    for (session **pp = &m->sessions; *pp;) {
        session *s = *pp;
        if (s->refs == 0 && now - s->last_ms > (int64_t)m->ttl_s * 1000) {
            *pp = s->next;
            s->gone = true;
            m->n_sessions--;
            s->next = dead;
            dead = s;
        } else {
            pp = &s->next;
        }
    }
    return dead;
}

/* Unlink the least recently used session nobody uses, among those of bind (any if NULL);
 * put it on *dead. False if there is none. Lock held. */
static bool evict_lru_locked(mcp_mux *m, const char *bind, session **dead)
{
    session **victim = NULL;
    for (session **pp = &m->sessions; *pp; pp = &(*pp)->next) {
        const session *s = *pp;
        if (s->refs || (bind && (!s->bind || strcmp(s->bind, bind) != 0))) continue;
        if (!victim || s->last_use < (*victim)->last_use) victim = pp;
    }
    if (!victim) return false;
    session *s = *victim;
    *victim = s->next;
    s->gone = true;
    m->n_sessions--;
    s->next = *dead;
    *dead = s;
    return true;
}

/* How many sessions bind holds (0 for NULL: no identity to count by). Lock held. */
static size_t sessions_of_locked(const mcp_mux *m, const char *bind)
{
    size_t n = 0;
    for (const session *s = m->sessions; bind && s; s = s->next)
        if (s->bind && strcmp(s->bind, bind) == 0) n++;
    return n;
}

/* Room for one more session of bind: expired ones reaped, then the client's own least
 * recently used one if it holds its share, then anyone's if the mux is full. Returns what to
 * destroy (outside the lock), and in *evicted how many were evicted that were not idle long
 * enough to expire. Lock held. */
static session *make_room_locked(mcp_mux *m, const char *bind, size_t *evicted)
{
    session *dead = NULL;
    *evicted = 0;
    if (m->n_sessions >= m->max_sessions || sessions_of_locked(m, bind) >= m->max_per_client)
        dead = reap_locked(m, util_mono_ms());
    /* counted again: reaping may have made room */
    if (sessions_of_locked(m, bind) >= m->max_per_client && evict_lru_locked(m, bind, &dead))
        (*evicted)++;
    if (m->n_sessions >= m->max_sessions && evict_lru_locked(m, NULL, &dead)) (*evicted)++;
    return dead;
}

static void destroy_list(mcp_mux *m, session *dead, const char *why)
{
    call_ctx none = {0};
    while (dead) {
        session *n = dead->next;
        session_log("mcp_session_end", dead, why);
        session_destroy(m, dead, &none);
        dead = n;
    }
}

static void *reaper_main(void *arg)
{
    mcp_mux *m = arg;
    pthread_mutex_lock(&m->lock);
    while (!m->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int step = m->ttl_s / 4;
        ts.tv_sec += step < 1 ? 1 : step > 30 ? 30 : step;
        pthread_cond_timedwait(&m->cond, &m->lock, &ts);
        if (m->stopping) break;
        session *dead = reap_locked(m, util_mono_ms());
        if (dead) {
            pthread_mutex_unlock(&m->lock);
            destroy_list(m, dead, "idle");
            pthread_mutex_lock(&m->lock);
        }
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* ---- method handlers -------------------------------------------------------------- */

typedef struct {
    mcp_mux *m;
    http_req *r;
    session *s;
    const call_ctx *cx;
    json_t *act;          /* CEL activation */
    const json_t *id;     /* the client's request id */
    json_t *params;       /* borrowed, may be NULL */
} rq_ctx;

static const char *min_version(const char *a, const char *b)
{
    if (!a) return b;
    if (!b) return a;
    return strcmp(a, b) <= 0 ? a : b;
}

static void do_initialize(mcp_mux *m, http_req *r, const json_t *id, json_t *params,
                          const json_t *claims, const call_ctx *cx)
{
    const char *want = json_string_value(json_object_get(params, "protocolVersion"));
    if (!want) {
        reply_error(r, 400, id, RPC_INVALID_PARAMS, "initialize needs params.protocolVersion", NULL);
        return;
    }

    char *bind = bind_key(claims);
    size_t evicted;
    pthread_mutex_lock(&m->lock);
    session *dead = make_room_locked(m, bind, &evicted);
    bool full = m->n_sessions >= m->max_sessions;
    pthread_mutex_unlock(&m->lock);
    destroy_list(m, dead, evicted ? "evicted (the least recently used, to make room)" : "idle");
    if (full) {
        free(bind);
        reply_error(r, 503, id, RPC_INTERNAL_ERROR, "too many MCP sessions, all in use", NULL);
        return;
    }

    session *s = session_new(m);
    s->bind = bind;
    s->client_version = xstrdup(want);
    /* Upstreams see the client's version and clientInfo, but no client capabilities: we
     * cannot relay server-to-client requests (sampling, roots, elicitation). */
    json_t *ci = json_object_get(params, "clientInfo");
    json_t *cinfo = json_is_object(ci) ? json_incref(ci)
                                       : json_pack("{s:s, s:s}", "name", MCP_SERVER_NAME,
                                                   "version", AGENTID_VERSION);
    s->init_params = json_pack("{s:s, s:{}, s:o}", "protocolVersion", want, "capabilities",
                               "clientInfo", cinfo);

    /* Initialise every target, each on its own upstream session. */
    job *jobs = xcalloc(m->n, sizeof *jobs);
    for (size_t i = 0; i < m->n; i++)
        jobs[i] = (job){.m = m, .s = s, .u = &s->ups[i], .cx = cx};
    run_jobs(jobs, m->n, job_init);

    const up_err *fail = NULL;
    for (size_t i = 0; i < m->n && !fail; i++)
        if (jobs[i].rc != 0) fail = &jobs[i].e;
    if (fail) {
        /* fail closed, as agentgateway's default failureMode */
        log_msg(LOG_WARN, "mcp_initialize", "%s", fail->msg);
        reply_up_err(r, id, fail);
        goto end;
    }

    json_t *result;
    if (m->n == 1) {
        result = json_deep_copy(jobs[0].out); /* one target: its own InitializeResult */
    } else {
        const char *v = is_known_version(want) ? want : LATEST_VERSION;
        char *instr = NULL;
        for (size_t i = 0; i < m->n; i++) {
            v = min_version(v, json_string_value(json_object_get(jobs[i].out, "protocolVersion")));
            const char *in = json_string_value(json_object_get(jobs[i].out, "instructions"));
            if (in && *in) {
                char *n = xasprintf("%s%s[%s]\n%s", instr ? instr : "", instr ? "\n\n" : "",
                                    m->targets[i].name, in);
                free(instr);
                instr = n;
            }
        }
        result = json_pack("{s:s, s:{s:{s:b}}, s:{s:s, s:s}}", "protocolVersion", v,
                           "capabilities", "tools", "listChanged", 0, "serverInfo", "name",
                           MCP_SERVER_NAME, "version", AGENTID_VERSION);
        if (instr) json_object_set_new(result, "instructions", json_string(instr));
        free(instr);
    }

    pthread_mutex_lock(&m->lock);
    dead = make_room_locked(m, s->bind, &evicted); /* others may have started meanwhile */
    full = m->n_sessions >= m->max_sessions;
    if (!full) {
        s->next = m->sessions;
        m->sessions = s;
        m->n_sessions++;
        s->refs = 0;
        s->last_ms = util_mono_ms();
        s->last_use = ++m->uses;
    }
    pthread_mutex_unlock(&m->lock);
    destroy_list(m, dead, evicted ? "evicted (the least recently used, to make room)" : "idle");
    if (full) {
        json_decref(result);
        reply_error(r, 503, id, RPC_INTERNAL_ERROR, "too many MCP sessions, all in use", NULL);
        goto end;
    }
    session_log("mcp_session_start", s, "started");
    http_add_header(r, "Mcp-Session-Id", s->id);
    reply_result(r, id, result);
    s = NULL;
end:
    for (size_t i = 0; i < m->n; i++) json_decref(jobs[i].out);
    free(jobs);
    if (s) session_destroy(m, s, cx);
}

static void do_tools_list(rq_ctx *q)
{
    mcp_mux *m = q->m;
    job *jobs = xcalloc(m->n, sizeof *jobs);
    for (size_t i = 0; i < m->n; i++)
        jobs[i] = (job){.m = m, .s = q->s, .u = &q->s->ups[i], .cx = q->cx};
    run_jobs(jobs, m->n, job_tools);

    json_t *tools = json_array();
    const up_err *fail = NULL;
    for (size_t i = 0; i < m->n && !fail; i++) {
        if (jobs[i].rc != 0) {
            fail = &jobs[i].e;
            break;
        }
        size_t k;
        json_t *tool;
        json_array_foreach(jobs[i].out, k, tool) {
            const char *name = json_string_value(json_object_get(tool, "name"));
            if (!authorized(m, q->act, "tool", name, m->targets[i].name)) continue;
            json_t *c = json_copy(tool);
            if (m->n > 1) {
                char *full = xasprintf("%s_%s", m->targets[i].name, name);
                json_object_set_new(c, "name", json_string(full));
                free(full);
            }
            json_array_append_new(tools, c);
        }
    }
    if (fail) {
        log_msg(LOG_WARN, "mcp_tools_list", "%s", fail->msg);
        reply_up_err(q->r, q->id, fail);
        json_decref(tools);
    } else {
        reply_result(q->r, q->id, json_pack("{s:o}", "tools", tools));
    }
    for (size_t i = 0; i < m->n; i++) json_decref(jobs[i].out);
    free(jobs);
}

/* Forward a request to one target and give the client its answer (with the client's id).
 * params is borrowed. */
static void forward(rq_ctx *q, const target *t, const char *method, json_t *params,
                    json_t **result_out)
{
    json_t *resp = NULL;
    up_err e;
    if (result_out) *result_out = NULL;
    if (up_request(q->m, q->s, &q->s->ups[target_index(q->m, t)], q->cx, method, params, &resp,
                   &e) != 0) {
        log_msg(LOG_WARN, "mcp_forward", "%s: %s", method, e.msg);
        reply_up_err(q->r, q->id, &e);
        return;
    }
    json_t *err = json_object_get(resp, "error");
    if (err) {
        json_t *o = json_pack("{s:s, s:o, s:O}", "jsonrpc", "2.0", "id", rpc_id_or_null(q->id),
                              "error", err);
        http_reply_json(q->r, 200, o);
    } else if (result_out) {
        *result_out = json_incref(json_object_get(resp, "result"));
    } else {
        reply_result(q->r, q->id, json_incref(json_object_get(resp, "result")));
    }
    json_decref(resp);
}

static void do_tools_call(rq_ctx *q)
{
    mcp_mux *m = q->m;
    const char *name = json_string_value(json_object_get(q->params, "name"));
    if (!name) {
        reply_error(q->r, 400, q->id, RPC_INVALID_PARAMS, "tools/call needs params.name", NULL);
        return;
    }
    const target *t = NULL;
    const char *tool = name;
    if (m->n == 1) {
        t = &m->targets[0];
    } else {
        const char *us = strchr(name, '_'); /* the FIRST "_": tool names may hold more */
        if (us) {
            t = find_target(m, name, (size_t)(us - name));
            tool = us + 1;
        }
    }
    if (!t || !*tool || !authorized(m, q->act, "tool", tool, t->name)) {
        /* agentgateway: denied and unknown look the same, 400 + -32602 */
        char *msg = xasprintf("Unknown tool: %s", name);
        reply_error(q->r, 400, q->id, RPC_INVALID_PARAMS, msg, NULL);
        free(msg);
        return;
    }
    json_t *p = json_copy(q->params);
    json_object_set_new(p, "name", json_string(tool));
    forward(q, t, "tools/call", p, NULL);
    json_decref(p);
}

/* Single target: prompts and resources are forwarded, filtered by the same rules
 * (mcp.prompt.* / mcp.resource.*, name = the resource URI). */
static void filter_list(rq_ctx *q, const target *t, const char *key, const char *kind,
                        const char *name_key, json_t *result)
{
    json_t *items = json_object_get(result, key);
    if (!json_is_array(items)) return;
    json_t *kept = json_array();
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it) {
        const char *n = json_string_value(json_object_get(it, name_key));
        if (n && authorized(q->m, q->act, kind, n, t->name)) json_array_append(kept, it);
    }
    json_object_set_new(result, key, kept);
}

static void do_forward_single(rq_ctx *q, const char *method)
{
    const target *t = &q->m->targets[0];
    static const struct {
        const char *method, *key, *kind, *name_key;
    } lists[] = {
        {"prompts/list", "prompts", "prompt", "name"},
        {"resources/list", "resources", "resource", "uri"},
        {"resources/templates/list", "resourceTemplates", "resource", "uriTemplate"},
    };
    static const struct {
        const char *method, *kind, *param, *what;
    } gets[] = {
        {"prompts/get", "prompt", "name", "prompt"},
        {"resources/read", "resource", "uri", "resource"},
        {"resources/subscribe", "resource", "uri", "resource"},
        {"resources/unsubscribe", "resource", "uri", "resource"},
    };

    if (q->m->authz) {
        for (size_t i = 0; i < ARRAY_LEN(gets); i++) {
            if (strcmp(method, gets[i].method) != 0) continue;
            const char *n = json_string_value(json_object_get(q->params, gets[i].param));
            if (!n || !authorized(q->m, q->act, gets[i].kind, n, t->name)) {
                char *msg = xasprintf("Unknown %s: %s", gets[i].what, n ? n : "");
                reply_error(q->r, 400, q->id, RPC_INVALID_PARAMS, msg, NULL);
                free(msg);
                return;
            }
        }
        for (size_t i = 0; i < ARRAY_LEN(lists); i++) {
            if (strcmp(method, lists[i].method) != 0) continue;
            json_t *result = NULL;
            forward(q, t, method, q->params, &result);
            if (!result) return; /* answered */
            json_t *c = json_copy(result);
            json_decref(result);
            filter_list(q, t, lists[i].key, lists[i].kind, lists[i].name_key, c);
            reply_result(q->r, q->id, c);
            return;
        }
    }
    forward(q, t, method, q->params, NULL);
}

/* ---- the endpoint -------------------------------------------------------------------- */

static bool check_protocol_header(http_req *r)
{
    const char *v = http_req_header(r, "MCP-Protocol-Version");
    if (!v || is_known_version(v)) return true;
    json_t *sup = json_array();
    for (size_t i = 0; i < ARRAY_LEN(known_versions); i++)
        json_array_append_new(sup, json_string(known_versions[i]));
    char *msg = xasprintf("Unsupported protocol version: %.64s", v);
    reply_error(r, 400, NULL, RPC_INVALID_REQUEST, msg,
                json_pack("{s:o, s:s}", "supported", sup, "requested", v));
    free(msg);
    return false;
}

static void handle_post(mcp_mux *m, http_req *r, const json_t *claims, const call_ctx *cx,
                        const json_t *request)
{
    const char *accept = http_req_header(r, "Accept");
    if (!has_token(accept, "application/json") || !has_token(accept, "text/event-stream")) {
        reply_error(r, 406, NULL, RPC_INVALID_REQUEST,
                    "Not Acceptable: client must accept both application/json and "
                    "text/event-stream", NULL);
        return;
    }
    const char *ct = http_req_header(r, "Content-Type");
    if (!ct || strncasecmp(ct, "application/json", 16) != 0 ||
        (ct[16] && ct[16] != ';' && ct[16] != ' ')) {
        reply_error(r, 415, NULL, RPC_INVALID_REQUEST,
                    "Unsupported Media Type: Content-Type must be application/json", NULL);
        return;
    }

    size_t len;
    const char *body = http_req_body(r, &len);
    json_error_t je;
    json_t *msg = json_loadb(body, len, 0, &je);
    session *s = NULL;
    json_t *act = NULL;
    if (!msg) {
        char *em = xasprintf("Parse error: %s", je.text);
        reply_error(r, 400, NULL, RPC_PARSE_ERROR, em, NULL);
        free(em);
        goto end;
    }
    if (!json_is_object(msg)) { /* batches went away in 2025-06-18 */
        reply_error(r, 400, NULL, RPC_INVALID_REQUEST,
                    json_is_array(msg) ? "Invalid Request: batches are not supported"
                                       : "Invalid Request", NULL);
        goto end;
    }
    json_t *id = json_object_get(msg, "id");
    json_t *jm = json_object_get(msg, "method");
    const char *method = json_string_value(jm);
    bool valid_id = json_is_string(id) || json_is_integer(id) || json_is_real(id);
    bool is_request = method && id && !json_is_null(id);
    bool is_note = method && !id;
    bool is_response = !jm && id && (json_object_get(msg, "result") || json_object_get(msg, "error"));
    if (!json_is_string(json_object_get(msg, "jsonrpc")) ||
        strcmp(json_string_value(json_object_get(msg, "jsonrpc")), "2.0") != 0 ||
        (jm && !method) || (is_request && !valid_id) ||
        !(is_request || is_note || is_response)) {
        reply_error(r, 400, valid_id ? id : NULL, RPC_INVALID_REQUEST, "Invalid Request", NULL);
        goto end;
    }
    json_t *params = json_object_get(msg, "params");
    if (params && !json_is_object(params)) {
        reply_error(r, 400, id, RPC_INVALID_PARAMS, "Invalid params", NULL);
        goto end;
    }

    const char *sid = http_req_header(r, "Mcp-Session-Id");
    if (is_request && strcmp(method, "initialize") == 0) {
        if (sid) {
            reply_error(r, 400, id, RPC_INVALID_REQUEST,
                        "initialize must not carry Mcp-Session-Id", NULL);
            goto end;
        }
        do_initialize(m, r, id, params, claims, cx);
        goto end;
    }
    if (!sid) {
        reply_error(r, 400, is_request ? id : NULL, RPC_INVALID_REQUEST,
                    "Bad Request: session header is required for non-initialize requests", NULL);
        goto end;
    }
    char *bind = bind_key(claims);
    s = session_get(m, sid, bind);
    free(bind);
    if (!s) {
        reply_error(r, 404, is_request ? id : NULL, RPC_SESSION_NOT_FOUND, "Session not found",
                    NULL);
        goto end;
    }
    if (!is_request) { /* notifications and responses: accepted, nothing to relay */
        http_reply(r, 202, "text/plain", "", 0);
        goto end;
    }

    act = activation_new(claims, request);
    rq_ctx q = {.m = m, .r = r, .s = s, .cx = cx, .act = act, .id = id, .params = params};
    if (strcmp(method, "ping") == 0)
        reply_result(r, id, json_object());
    else if (strcmp(method, "tools/list") == 0)
        do_tools_list(&q);
    else if (strcmp(method, "tools/call") == 0)
        do_tools_call(&q);
    else if (m->n == 1)
        do_forward_single(&q, method);
    else
        reply_error(r, 200, id, RPC_METHOD_NOT_FOUND, "Method not found", NULL);
end:
    if (s) session_put(m, s, cx);
    json_decref(act);
    json_decref(msg);
}

static void handle_delete(mcp_mux *m, http_req *r, const json_t *claims, const call_ctx *cx)
{
    const char *sid = http_req_header(r, "Mcp-Session-Id");
    if (!sid) {
        reply_error(r, 400, NULL, RPC_INVALID_REQUEST, "Bad Request: Mcp-Session-Id required",
                    NULL);
        return;
    }
    char *bind = bind_key(claims);
    session *s = session_get(m, sid, bind);
    free(bind);
    if (!s) {
        reply_error(r, 404, NULL, RPC_SESSION_NOT_FOUND, "Session not found", NULL);
        return;
    }
    pthread_mutex_lock(&m->lock);
    session_unlink_locked(m, s);
    pthread_mutex_unlock(&m->lock);
    session_log("mcp_session_end", s, "deleted");
    session_put(m, s, cx); /* ends the upstreams unless a request still runs */
    http_reply(r, 200, "text/plain", "", 0);
}

void mcp_mux_handle(mcp_mux *m, http_req *r, const json_t *claims, const char *raw_token,
                    const json_t *request)
{
    call_ctx cx = {.raw_token = raw_token};
    const char *method = http_req_method(r);

    if (!check_protocol_header(r)) return;
    if (strcmp(method, "POST") == 0) {
        handle_post(m, r, claims, &cx, request);
    } else if (strcmp(method, "DELETE") == 0) {
        handle_delete(m, r, claims, &cx);
    } else {
        /* No server-initiated stream: GET is 405, which MCP transports allow. */
        http_add_header(r, "Allow", "POST, DELETE");
        reply_error(r, 405, NULL, RPC_INVALID_REQUEST, "Method Not Allowed", NULL);
    }
    if (!http_replied(r)) reply_error(r, 500, NULL, RPC_INTERNAL_ERROR, "Internal error", NULL);
}

/* ---- life cycle ------------------------------------------------------------------ */

static bool valid_name(const char *n)
{
    if (!n || !*n || strlen(n) > 64) return false;
    for (const char *p = n; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-'))
            return false;
    return true;
}

static int check_target(const mcp_target *t, const mcp_target *all, size_t i, char *err,
                        size_t errlen)
{
    if (!valid_name(t->name)) {
        snprintf(err, errlen, "MCP target %zu: name must be 1-64 letters, digits or '-' "
                 "(no '_', which separates target and tool)", i + 1);
        return -1;
    }
    for (size_t j = 0; j < i; j++)
        if (strcmp(all[j].name, t->name) == 0) {
            snprintf(err, errlen, "MCP target %s: duplicate name", t->name);
            return -1;
        }
    if (!!t->url == !!t->cmd || (t->sse && !t->url)) {
        snprintf(err, errlen, "MCP target %s: needs exactly one of a URL or a command", t->name);
        return -1;
    }
    if (t->url && strncmp(t->url, "http://", 7) != 0 && strncmp(t->url, "https://", 8) != 0) {
        snprintf(err, errlen, "MCP target %s: URL must be http:// or https://", t->name);
        return -1;
    }
    if (t->cmd && (!t->cmd[0] || !*t->cmd[0])) {
        snprintf(err, errlen, "MCP target %s: empty command", t->name);
        return -1;
    }
    for (const char *const *e = t->env; e && *e; e++)
        if (!strchr(*e, '=') || **e == '=') {
            snprintf(err, errlen, "MCP target %s: environment entries must be NAME=VALUE", t->name);
            return -1;
        }
    if (t->cmd && t->identity != MCP_IDENTITY_NONE) {
        snprintf(err, errlen, "MCP target %s: an upstream identity needs a URL target", t->name);
        return -1;
    }
    if ((t->identity == MCP_IDENTITY_SIDECAR_OBO || t->identity == MCP_IDENTITY_SIDECAR_APP) &&
        (!t->sidecar_url || !t->sidecar_api || !*t->sidecar_api ||
         (strncmp(t->sidecar_url, "http://", 7) != 0 && strncmp(t->sidecar_url, "https://", 8) != 0))) {
        snprintf(err, errlen, "MCP target %s: a sidecar identity needs the sidecar's http(s) URL "
                 "and API name", t->name);
        return -1;
    }
    if (t->identity > MCP_IDENTITY_SIDECAR_APP) {
        snprintf(err, errlen, "MCP target %s: unknown identity", t->name);
        return -1;
    }
    return 0;
}

mcp_mux *mcp_mux_new(const mcp_config *c, char *err, size_t errlen)
{
    char dummy[1];
    if (!err || !errlen) err = dummy, errlen = sizeof dummy;
    if (!c || !c->targets || c->n_targets == 0) {
        snprintf(err, errlen, "MCP backend: no targets");
        return NULL;
    }
    if (c->n_targets > MCP_MAX_TARGETS) {
        snprintf(err, errlen, "MCP backend: more than %d targets", MCP_MAX_TARGETS);
        return NULL;
    }
    for (size_t i = 0; i < c->n_targets; i++)
        if (check_target(&c->targets[i], c->targets, i, err, errlen) != 0) return NULL;

    httpc_global_init();
    mcp_mux *m = xcalloc(1, sizeof *m);
    m->n = c->n_targets;
    m->targets = xcalloc(m->n, sizeof *m->targets);
    for (size_t i = 0; i < m->n; i++) {
        const mcp_target *s = &c->targets[i];
        target *t = &m->targets[i];
        t->name = xstrdup(s->name);
        t->url = s->url ? xstrdup(s->url) : NULL;
        t->sse = s->sse;
        t->cmd = s->cmd ? strv_dup(s->cmd) : NULL;
        t->env = s->env ? strv_dup(s->env) : NULL;
        t->identity = s->identity;
        t->sidecar_url = s->sidecar_url ? xstrdup(s->sidecar_url) : NULL;
        t->sidecar_api = s->sidecar_api ? xstrdup(s->sidecar_api) : NULL;
        t->agent_identity = s->agent_identity ? xstrdup(s->agent_identity) : NULL;
    }
    m->authz = c->authz;
    m->timeout_ms = c->timeout_ms > 0 ? c->timeout_ms : MCP_DEFAULT_TIMEOUT;
    m->ttl_s = c->session_ttl_s > 0 ? c->session_ttl_s : MCP_SESSION_TTL_S;
    m->max_sessions = MCP_MAX_SESSIONS;
    const char *max = getenv("AGENTID_MCP_MAX_SESSIONS"); /* for tests */
    if (max && atoi(max) > 0) m->max_sessions = (size_t)atoi(max);
    m->max_per_client = m->max_sessions / 4 ? m->max_sessions / 4 : 1;
    atomic_init(&m->next_id, 1);
    pthread_mutex_init(&m->lock, NULL);
    cond_init_monotonic(&m->cond);
    m->reaper_started = pthread_create(&m->reaper, NULL, reaper_main, m) == 0;
    return m;
}

void mcp_mux_free(mcp_mux *m)
{
    if (!m) return;
    pthread_mutex_lock(&m->lock);
    m->stopping = true;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    if (m->reaper_started) pthread_join(m->reaper, NULL);

    /* The caller stopped the server first: no request holds a session now. */
    session *all = m->sessions;
    m->sessions = NULL;
    m->n_sessions = 0;
    destroy_list(m, all, "shutdown");

    for (size_t i = 0; i < m->n; i++) {
        target *t = &m->targets[i];
        free(t->name);
        free(t->url);
        strv_free(t->cmd);
        strv_free(t->env);
        free(t->sidecar_url);
        free(t->sidecar_api);
        free(t->agent_identity);
    }
    free(m->targets);
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
    free(m);
}
