/* server — see server.h. */
#include "issuer/server.h"

#include "core/args.h"
#include "core/form.h"
#include "core/http_server.h"
#include "core/log.h"
#include "core/util.h"
#include "issuer/authorize.h"
#include "issuer/device.h"
#include "issuer/directory.h"
#include "issuer/token.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* What one load of the directory serves; the JSON documents are rendered once per load. */
#define MAX_DISCOVERY 16

typedef struct {
    char *tenant;        /* the {tenant} path segment it answers for */
    char *doc[2];        /* v2 and v1 openid-configuration */
} discovery;

typedef struct {
    atomic_int refs;
    directory *d;
    char *jwks;          /* {"keys":[...]} */
    discovery disc[MAX_DISCOVERY];   /* tenant id, domains, common, organizations */
    size_t n_disc;
} state;

static json_t *openid_configuration(const char *base, const directory *d, const char *tenant, bool v1);

typedef struct {
    const issuer_opts *o;
    char *base_url;
    char *dir_file;
    pthread_mutex_t mu;  /* guards cur, mtime */
    state *cur;
    struct timespec mtime;
    atomic_llong last_check;
    authz *az;           /* sign-in sessions and authorization codes */
    device_store *dev;   /* device code flows */
} issuer;

static void state_unref(state *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1) {
        dir_unref(s->d);
        free(s->jwks);
        for (size_t i = 0; i < s->n_disc; i++) {
            free(s->disc[i].tenant);
            free(s->disc[i].doc[0]);
            free(s->disc[i].doc[1]);
        }
        free(s);
    }
}

/* Discovery documents are the same for every request of a load: render them once. */
static void add_discovery(state *s, const char *base, const char *tenant)
{
    if (s->n_disc == MAX_DISCOVERY) return;   /* more domains are rendered per request */
    discovery *d = &s->disc[s->n_disc++];
    d->tenant = xstrdup(tenant);
    for (int v1 = 0; v1 < 2; v1++) {
        json_t *o = openid_configuration(base, s->d, tenant, v1);
        d->doc[v1] = json_dumps(o, JSON_COMPACT);
        json_decref(o);
    }
}

static const char *find_discovery(const state *s, const char *tenant, bool v1)
{
    for (size_t i = 0; i < s->n_disc; i++)
        if (!strcmp(s->disc[i].tenant, tenant)) return s->disc[i].doc[v1];
    return NULL;
}

static state *state_new(const issuer *is, directory *d)
{
    state *s = xcalloc(1, sizeof *s);
    atomic_init(&s->refs, 1);
    s->d = d;
    json_t *j = jwks_to_json(dir_keys(d));
    /* Entra's keys name the issuer they sign for (entra-protocol.md §3e); validators such as
     * Microsoft.IdentityModel compare it with the token's iss. */
    char *iss = xasprintf("%s/{tenantid}/v2.0", is->base_url);
    size_t i;
    json_t *k;
    json_array_foreach(json_object_get(j, "keys"), i, k)
        json_object_set_new(k, "issuer", json_string(iss));
    free(iss);
    s->jwks = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    add_discovery(s, is->base_url, dir_tenant_id(d));
    add_discovery(s, is->base_url, "common");
    add_discovery(s, is->base_url, "organizations");
    for (size_t n = 0; n < dir_domain_count(d); n++) add_discovery(s, is->base_url, dir_domain_at(d, n));
    return s;
}

/* Reload when directory.json changed (checked at most once a second) or when forced. */
static void maybe_reload(issuer *is, bool force)
{
    long long now = (long long)util_now();
    if (!force && atomic_exchange(&is->last_check, now) == now) return;
    struct stat st;
    if (stat(is->dir_file, &st) != 0) return;
    pthread_mutex_lock(&is->mu);
    if (!is->cur) {   /* not serving yet */
        pthread_mutex_unlock(&is->mu);
        return;
    }
    bool changed = st.st_mtim.tv_sec != is->mtime.tv_sec || st.st_mtim.tv_nsec != is->mtime.tv_nsec;
    if (changed || force) {
        char err[512];
        directory *d = dir_load(is->o->dir, err, sizeof err);
        if (d) {
            state *old = is->cur;
            is->cur = state_new(is, d);
            state_unref(old);
            log_msg(LOG_INFO, "directory_loaded", "loaded %s", is->dir_file);
        } else {
            log_msg(LOG_ERROR, "directory_invalid", "keeping the previous directory: %s", err);
        }
        is->mtime = st.st_mtim;
    }
    pthread_mutex_unlock(&is->mu);
}

static state *acquire(issuer *is)
{
    maybe_reload(is, false);
    pthread_mutex_lock(&is->mu);
    state *s = is->cur;
    if (s) atomic_fetch_add(&s->refs, 1);
    pthread_mutex_unlock(&is->mu);
    return s;
}

static void reply_error(http_req *r, issuer *is, int status, const char *error, int code,
                        const char *fmt, const char *arg)
{
    char msg[512];
    snprintf(msg, sizeof msg, fmt, arg);
    http_reply_json(r, status,
                    token_error_json(is->base_url, error, code, NULL,
                                     http_req_header(r, "client-request-id"), msg));
}

static json_t *openid_configuration(const char *base, const directory *d, const char *tenant, bool v1)
{
    bool multi = strcmp(tenant, "common") == 0 || strcmp(tenant, "organizations") == 0;
    const char *tid = multi ? "{tenantid}" : dir_tenant_id(d);
    const char *b = base;
    char *iss = v1 ? xasprintf("%s/%s/", b, tid) : xasprintf("%s/%s/v2.0", b, tid);
    const char *ver = v1 ? "" : "/v2.0";
    char *tok = xasprintf("%s/%s/oauth2%s/token", b, tenant, ver);
    char *authz_ep = xasprintf("%s/%s/oauth2%s/authorize", b, tenant, ver);
    char *dev = xasprintf("%s/%s/oauth2%s/devicecode", b, tenant, ver);
    char *logout = xasprintf("%s/%s/oauth2%s/logout", b, tenant, ver);
    char *keys = xasprintf("%s/%s/discovery%s/keys", b, tenant, ver);
    json_t *o = json_pack(
        "{s:s, s:[s,s,s], s:s, s:[s,s,s], s:[s], s:[s], s:[s,s,s,s], s:s, s:s, s:s, s:s,"
        " s:s, s:[s,s,s,s], s:b, s:b, s:b, s:s, s:s, s:s, s:s, s:s,"
        " s:[s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s,s]}",
        "token_endpoint", tok, "token_endpoint_auth_methods_supported", "client_secret_post",
        "private_key_jwt", "client_secret_basic", "jwks_uri", keys, "response_modes_supported",
        "query", "fragment", "form_post", "subject_types_supported", "pairwise",
        "id_token_signing_alg_values_supported", "RS256", "response_types_supported", "code",
        "id_token", "code id_token", "id_token token", "issuer", iss, "authorization_endpoint",
        authz_ep, "device_authorization_endpoint", dev, "end_session_endpoint", logout,
        "userinfo_endpoint", "https://graph.microsoft.com/oidc/userinfo", "scopes_supported",
        "openid", "profile", "email", "offline_access", "request_uri_parameter_supported", 0,
        "http_logout_supported", 1, "frontchannel_logout_supported", 1, "tenant_region_scope",
        "NA", "cloud_instance_name", "agentid.local", "cloud_graph_host_name", "graph.windows.net",
        "msgraph_host", "graph.microsoft.com", "rbac_url", "https://pas.windows.net",
        "claims_supported", "sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
        "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce",
        "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email", "oid", "idtyp");
    free(iss);
    free(tok);
    free(authz_ep);
    free(dev);
    free(logout);
    free(keys);
    return o;
}

/* GET /common/discovery/instance: the shape msal asks login.microsoftonline.com for. */
static json_t *instance_discovery(const issuer *is)
{
    const char *host = strstr(is->base_url, "://") + 3;
    char *tde = xasprintf("%s/{tenant}/v2.0/.well-known/openid-configuration", is->base_url);
    json_t *o = json_pack("{s:s, s:s, s:[{s:s, s:s, s:[s]}]}", "tenant_discovery_endpoint", tde,
                          "api-version", "1.1", "metadata", "preferred_network", host,
                          "preferred_cache", host, "aliases", host);
    free(tde);
    return o;
}

typedef struct {
    issuer *is;
    state *s;   /* a reference of its own */
    char tenant[128];
    bool v1;
} deferred_token;

static bool token(http_req *r, issuer *is, state *s, const char *tenant, bool v1, token_log *log,
                  bool may_defer);

/* On a deferred worker: a token request that may call another server (token() says which). */
static void token_deferred(http_req *r, void *arg, bool cancelled)
{
    deferred_token *dt = arg;
    if (!cancelled) {   /* else the server answers 503 */
        token_log tl = {0};
        token(r, dt->is, dt->s, dt->tenant, dt->v1, &tl, false);
        log_request_fields(http_req_method(r), http_req_path(r), http_reply_status(r), 0,
                           http_req_header(r, "client-request-id"), tl.fields);
    }
    state_unref(dt->s);
    free(dt);
}

/* The token and devicecode endpoints. The handlers run on event loops, which must not block:
 * a client assertion may be a federated credential, whose check can fetch the other issuer's
 * keys, so with may_defer such a request goes to a deferred worker (token_deferred) and this
 * returns true: the request is answered and logged there. Everything else is CPU work (the
 * RSA signature included) and is answered here. */
static bool token(http_req *r, issuer *is, state *s, const char *tenant, bool v1, token_log *log,
                  bool may_defer)
{
    const directory *d = s->d;
    if (strcmp(http_req_method(r), "POST") != 0) {
        http_add_header(r, "Allow", "POST");
        reply_error(r, is, 405, "invalid_request", 900561,
                    "The endpoint only accepts %s requests.", "POST");
        return false;
    }
    if (!dir_is_tenant(d, tenant) && strcmp(tenant, "organizations") != 0 &&
        strcmp(tenant, "common") != 0) {
        reply_error(r, is, 400, "invalid_request", 90002,
                    "Tenant '%s' not found. Check to make sure you have the correct tenant ID and "
                    "are signing into the correct cloud.", tenant);
        return false;
    }
    /* The media type exactly (any case), then nothing or parameters (RFC 9110 §8.3.1). */
    const char *ct = http_req_header(r, "Content-Type");
    if (!ct || strncasecmp(ct, "application/x-www-form-urlencoded", 33) != 0 ||
        (ct[33] && ct[33] != ';' && ct[33] != ' ' && ct[33] != '\t')) {
        reply_error(r, is, 400, "invalid_request", 900144,
                    "The request body must be %s.", "application/x-www-form-urlencoded");
        return false;
    }
    size_t len;
    const char *body = http_req_body(r, &len);
    form *f = form_parse(body, len);
    if (!f) {
        reply_error(r, is, 400, "invalid_request", 900144,
                    "The request body is not valid %s (bad escape, NUL byte, or too many fields).",
                    "application/x-www-form-urlencoded");
        return false;
    }
    if (may_defer && form_get(f, "client_assertion")) {
        deferred_token *dt = xcalloc(1, sizeof *dt);
        *dt = (deferred_token){.is = is, .s = s, .v1 = v1};
        snprintf(dt->tenant, sizeof dt->tenant, "%s", tenant);
        atomic_fetch_add(&s->refs, 1);
        if (http_defer(r, token_deferred, dt)) {
            form_free(f);
            return true;
        }
        state_unref(s);   /* not deferred (no workers): answered here */
        free(dt);
    }
    token_req tr = {
        .dir = d,
        .base_url = is->base_url,
        .tenant = tenant,
        .body = f,
        .fmi_path_query = http_req_query(r, "fmi_path"),
        .authorization = http_req_header(r, "Authorization"),
        .client_request_id = http_req_header(r, "client-request-id"),
        .v1_endpoint = v1,
        .az = is->az,
        .dev = is->dev,
        .log = log,
    };
    json_t *out = NULL;
    int status = util_str_ends_with(http_req_path(r), "/devicecode")
                     ? token_device_authorization(&tr, &out)
                     : token_endpoint(&tr, &out);
    form_free(f);
    http_add_header(r, "Cache-Control", "no-store, no-cache");
    http_add_header(r, "Pragma", "no-cache");
    size_t n = 0;
    char *text = token_answer_text(out, &n);
    json_decref(out);
    if (text) http_reply(r, status, "application/json; charset=utf-8", text, n);
    else http_reply_json(r, 500, NULL);   /* answers the server error */
    free(text);
    return false;
}

static void handle(http_req *r, void *ctx)
{
    issuer *is = ctx;
    const char *path = http_req_path(r), *method = http_req_method(r);
    if (strcmp(path, "/healthz") == 0) {
        http_reply_text(r, 200, "Healthy");
        return;
    }
    /* CORS: discovery and keys are public documents browsers (msal-browser) fetch. */
    http_add_header(r, "Access-Control-Allow-Origin", "*");
    if (strcmp(method, "OPTIONS") == 0) {
        http_add_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        http_add_header(r, "Access-Control-Allow-Headers", "*");
        http_reply(r, 204, NULL, "", 0);
        return;
    }
    state *s = acquire(is);
    if (!s) {   /* the first load is not published yet: only in the first microseconds */
        http_reply_text(r, 503, "starting");
        return;
    }
    const directory *d = s->d;
    char tenant[128];
    const char *rest = NULL;
    if (path[0] == '/') {
        const char *slash = strchr(path + 1, '/');
        size_t n = slash ? (size_t)(slash - path - 1) : strlen(path + 1);
        if (n > 0 && n < sizeof tenant) {
            memcpy(tenant, path + 1, n);
            tenant[n] = '\0';
            rest = slash ? slash : "";
        }
    }
    bool known = rest && (dir_is_tenant(d, tenant) || strcmp(tenant, "common") == 0 ||
                          strcmp(tenant, "organizations") == 0);
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    token_log tl = {0};   /* a token request's outcome, for its one log line */
    bool deferred = false;   /* then token_deferred answers and logs it */

    if (!strcmp(path, "/devicelogin") || (known && !strcmp(rest, "/oauth2/deviceauth"))) {
        device_page(is->dev, r, d);   /* the device code flow's verification page */
    } else if (!rest) {
        http_reply_json(r, 404, json_pack("{s:s}", "error", "not_found"));
    } else if (!strcmp(rest, "/oauth2/v2.0/token") || !strcmp(rest, "/oauth2/token")) {
        deferred = token(r, is, s, tenant, strcmp(rest, "/oauth2/token") == 0, &tl, true);
    } else if (!strcmp(rest, "/oauth2/v2.0/devicecode") || !strcmp(rest, "/oauth2/devicecode")) {
        deferred = token(r, is, s, tenant, strcmp(rest, "/oauth2/devicecode") == 0, &tl, true);
    } else if (!strcmp(rest, "/oauth2/v2.0/authorize") || !strcmp(rest, "/oauth2/authorize")) {
        authz_handle(is->az, r, d, is->base_url, tenant);
    } else if (!strcmp(rest, "/oauth2/v2.0/logout") || !strcmp(rest, "/oauth2/logout")) {
        authz_logout(is->az, r, d);
    } else if (!known && (strstr(rest, "well-known") || strstr(rest, "/discovery/"))) {
        reply_error(r, is, 400, "invalid_tenant", 90002,
                    "Tenant '%s' not found. Check to make sure you have the correct tenant ID and "
                    "are signing into the correct cloud.", tenant);
    } else if (get && (!strcmp(rest, "/v2.0/.well-known/openid-configuration") ||
                       !strcmp(rest, "/.well-known/openid-configuration"))) {
        bool v1 = rest[1] == '.';
        const char *doc = find_discovery(s, tenant, v1);
        if (doc) http_reply(r, 200, "application/json; charset=utf-8", doc, strlen(doc));
        else http_reply_json(r, 200, openid_configuration(is->base_url, d, tenant, v1));
    } else if (get && (!strcmp(rest, "/discovery/v2.0/keys") || !strcmp(rest, "/discovery/keys"))) {
        http_reply(r, 200, "application/json; charset=utf-8", s->jwks, strlen(s->jwks));
    } else if (get && !strcmp(tenant, "common") && !strcmp(rest, "/discovery/instance")) {
        http_reply_json(r, 200, instance_discovery(is));
    } else {
        http_reply_json(r, 404, json_pack("{s:s, s:s}", "error", "not_found", "error_description",
                                          "No such endpoint on this issuer."));
    }
    if (!deferred)
        log_request_fields(method, path, http_reply_status(r), 0, http_req_header(r, "client-request-id"), tl.fields);
    state_unref(s);
}

/* The managed-identity endpoint: what IMDS (169.254.169.254) and App Service's IDENTITY_ENDPOINT
 * answer (shared docs entra-protocol.md §3c, §3d). */
static void mi_handle(http_req *r, void *ctx)
{
    issuer *is = ctx;
    const char *path = http_req_path(r);
    if (!strcmp(path, "/healthz")) {
        http_reply_text(r, 200, "Healthy");
        return;
    }
    state *s = acquire(is);
    if (!s) {
        http_reply_text(r, 503, "starting");
        return;
    }
    /* msal-node asks for ".../oauth2/token/" when AZURE_POD_IDENTITY_AUTHORITY_HOST is set (its
     * URL canonicalisation appends a slash); IMDS answers both. */
    bool imds = !strcmp(path, "/metadata/identity/oauth2/token") ||
                !strcmp(path, "/metadata/identity/oauth2/token/"),
         appsvc = !strcmp(path, "/msi/token") || !strcmp(path, "/msi/token/");
    const char *resource = http_req_query(r, "resource");
    const char *hdr = dir_identity_header(s->d);
    const char *res_id = http_req_query(r, "mi_res_id");
    if (!res_id) res_id = http_req_query(r, "msi_res_id");
    const dir_app *mi = dir_managed_identity(s->d, http_req_query(r, "client_id"),
                                             http_req_query(r, "object_id"), res_id);
    token_log tl = {0};
    if (!imds && !appsvc) {
        http_reply_json(r, 404, json_pack("{s:s}", "error", "not_found"));
    } else if (strcmp(http_req_method(r), "GET") != 0) {
        http_reply_json(r, 405, json_pack("{s:s, s:s}", "error", "invalid_request", "error_description",
                                          "Only GET is supported."));
    } else if (imds && !(http_req_header(r, "Metadata") && !strcmp(http_req_header(r, "Metadata"), "true"))) {
        http_reply_json(r, 400, json_pack("{s:s, s:s}", "error", "invalid_request", "error_description",
                                          "Required metadata header not specified"));
    } else if (appsvc && (!hdr || !util_streq_ct(hdr, http_req_header(r, "X-IDENTITY-HEADER")))) {
        http_reply_json(r, 401, json_pack("{s:s, s:s}", "error", "invalid_request", "error_description",
                                          "The X-IDENTITY-HEADER is missing or wrong."));
    } else if (!resource || !*resource) {
        http_reply_json(r, 400, json_pack("{s:s, s:s}", "error", "invalid_request", "error_description",
                                          "Required query variable 'resource' is missing"));
    } else if (!mi) {
        http_reply_json(r, 400, json_pack("{s:s, s:s}", "error", "invalid_request", "error_description",
                                          "Identity not found"));
    } else {
        json_t *out = NULL;
        int status = token_managed_identity(s->d, is->base_url, mi, resource, &out, &tl);
        http_reply_json(r, status, out);
    }
    log_request_fields(http_req_method(r), path, http_reply_status(r), 0, NULL, tl.fields);
    state_unref(s);
}

static char *derive_base_url(const issuer_opts *o, unsigned port)
{
    /* The listen host, with a wildcard bind advertised as loopback. */
    const char *l = o->listen;
    const char *colon = strrchr(l, ':');
    char host[128] = "127.0.0.1";
    if (colon && colon > l) {
        size_t n = (size_t)(colon - l);
        if (n < sizeof host) {
            memcpy(host, l, n);
            host[n] = '\0';
        }
    }
    if (!strcmp(host, "0.0.0.0") || !strcmp(host, "[::]") || !host[0]) strcpy(host, "127.0.0.1");
    return xasprintf("%s://%s:%u", o->http ? "http" : "https", host, port);
}

int issuer_run(const issuer_opts *o)
{
    issuer is = {.o = o};
    char err[512];
    int rc = 1;
    char *cert = NULL, *key = NULL;
    http_server *srv = NULL, *mi = NULL;
    pthread_mutex_init(&is.mu, NULL);
    is.az = authz_new();
    is.dev = device_store_new();
    is.dir_file = xasprintf("%s/%s", o->dir, DIR_FILE);
    directory *d = dir_load(o->dir, err, sizeof err);
    if (!d) {
        fprintf(stderr, "agentid issuer: %s\n", err);
        goto end;
    }
    struct stat st;
    if (stat(is.dir_file, &st) == 0) is.mtime = st.st_mtim;
    if (!o->http) {
        if (!dir_tls_cert(d) || !dir_tls_key(d)) {
            fprintf(stderr, "agentid issuer: %s has no \"tls\" section; add one or use --http\n",
                    is.dir_file);
            goto end;
        }
        if (!(cert = util_read_file(dir_tls_cert(d), 1 << 20, NULL)) ||
            !(key = util_read_file(dir_tls_key(d), 1 << 20, NULL))) {
            fprintf(stderr, "agentid issuer: reading TLS files: %s\n", strerror(errno));
            goto end;
        }
    }

    /* Block the signals in every thread; the main thread waits for them below. */
    sigset_t set;
    args_block_stop_signals(&set, true);

    /* One event loop per CPU, each accepting on its own socket (SO_REUSEPORT: the kernel spreads
     * connections, where a shared socket let a burst of them land on one thread). The handlers
     * only compute, except token requests with a client assertion (token()), which go to a
     * few deferred workers per loop. */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    http_server_opts so = {.listen = o->listen, .tls_cert_pem = cert, .tls_key_pem = key,
                           .max_body = 256 * 1024, .event_loops = ncpu > 0 ? (unsigned)ncpu : 1,
                           .defer_workers = 4};
    if (!(srv = http_server_start(&so, handle, &is, err, sizeof err))) {
        fprintf(stderr, "agentid issuer: %s\n", err);
        goto end;
    }
    const char *pub = o->public_url ? o->public_url : dir_public_url(d);
    is.base_url = pub ? xstrndup(pub, strlen(pub) - (util_str_ends_with(pub, "/") ? 1 : 0))
                      : derive_base_url(o, http_server_port(srv));
    pthread_mutex_lock(&is.mu);
    is.cur = state_new(&is, d);
    pthread_mutex_unlock(&is.mu);
    if (o->mi_listen) {
        http_server_opts mo = {.listen = o->mi_listen, .max_body = 4096, .threads = 2};
        if (!(mi = http_server_start(&mo, mi_handle, &is, err, sizeof err))) {
            fprintf(stderr, "agentid issuer: --managed-identity-listen %s: %s\n", o->mi_listen, err);
            goto end;
        }
        log_msg(LOG_INFO, "listening", "managed-identity endpoint at http://%s (IMDS and App Service)",
                o->mi_listen);
    }
    log_msg(LOG_INFO, "listening", "issuer for tenant %s at %s/%s/v2.0 (directory %s)",
            dir_tenant_id(d), is.base_url, dir_tenant_id(d), dir_path(d));
    for (;;) {
        int sig = 0;
        sigwait(&set, &sig);
        if (sig == SIGHUP) {
            maybe_reload(&is, true);
            continue;
        }
        break;
    }
    log_msg(LOG_INFO, "stopping", "shutting down");
    rc = 0;
end:
    http_server_stop(mi);
    http_server_stop(srv);
    if (is.cur) state_unref(is.cur);
    else dir_unref(d);
    authz_free(is.az);
    device_store_free(is.dev);
    free(is.base_url);
    free(is.dir_file);
    free(cert);
    free(key);
    pthread_mutex_destroy(&is.mu);
    return rc;
}
