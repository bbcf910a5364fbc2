/* session — see session.h. RFC 8628 (device authorization grant), RFC 6749 §6 (refresh). */
#include "agent/session.h"

#include "core/form.h"
#include "core/http_client.h"
#include "core/util.h"
#include "jose/jwt.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MIN_LEFT_S      120       /* a cached token closer than this to expiry is refreshed */
#define HTTP_TIMEOUT_MS 15000
#define DEVICE_GRANT    "urn:ietf:params:oauth:grant-type:device_code"

char *session_default_path(void)
{
    const char *x = getenv("XDG_CONFIG_HOME"), *h = getenv("HOME");
    if (x && *x) return xasprintf("%s/agentid/agent-session.json", x);
    if (h && *h) return xasprintf("%s/.config/agentid/agent-session.json", h);
    return NULL;
}

void session_clear(session *s)
{
    if (s->access_token) explicit_bzero(s->access_token, strlen(s->access_token));
    if (s->refresh_token) explicit_bzero(s->refresh_token, strlen(s->refresh_token));
    free(s->access_token);
    free(s->refresh_token);
    free(s->username);
    *s = (session){0};
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

/* POST a form (or GET when form is NULL); the JSON answer in *out whatever the status.
 * -1 with err when nothing usable came back. */
static int call_json(const session_opts *o, const char *url, const char *body, long *status, json_t **out,
                     char *err, size_t errlen)
{
    const char *hdrs[] = {"Content-Type: application/x-www-form-urlencoded", "Accept: application/json", NULL};
    httpc_request rq = {.url = url, .body = body, .body_len = body ? strlen(body) : 0,
                        .headers = body ? hdrs : hdrs + 1, .timeout_ms = HTTP_TIMEOUT_MS, .ca_file = o->ca_file};
    httpc_response rs = {0};
    char why[256];
    *out = NULL;
    if (httpc_do(&rq, &rs, why, sizeof why) != HTTPC_OK) {
        snprintf(err, errlen, "cannot reach the identity provider at %s: %s", o->authority, why);
        return -1;
    }
    *status = rs.status;
    *out = json_loadb(rs.body ? rs.body : "", rs.body_len, 0, NULL);
    httpc_response_free(&rs);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        snprintf(err, errlen, "the identity provider answered %s with HTTP %ld and no JSON", url, *status);
        return -1;
    }
    return 0;
}

static const char *jstr(const json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

/* An OAuth error answer as one line: its error and the first line of error_description. */
static void oauth_error(const json_t *o, const char *what, char *err, size_t errlen)
{
    const char *e = jstr(o, "error"), *d = jstr(o, "error_description");
    size_t n = d ? strcspn(d, "\r\n") : 0;
    snprintf(err, errlen, "%s: %s%s%.*s", what, e ? e : "error", d ? ": " : "", (int)n, d ? d : "");
}

typedef struct {
    char *device_ep, *token_ep;
} endpoints;

static int discover(const session_opts *o, endpoints *ep, char *err, size_t errlen)
{
    char *url = xasprintf("%s/v2.0/.well-known/openid-configuration", o->authority);
    long status = 0;
    json_t *doc;
    int rc = call_json(o, url, NULL, &status, &doc, err, errlen);
    if (rc == 0 && status != 200) {
        snprintf(err, errlen, "%s answered HTTP %ld: is the authority %s right?", url, status, o->authority);
        rc = -1;
    }
    if (rc == 0) {
        const char *d = jstr(doc, "device_authorization_endpoint"), *t = jstr(doc, "token_endpoint");
        if (!t) {
            snprintf(err, errlen, "the discovery document %s names no token_endpoint", url);
            rc = -1;
        } else {
            ep->token_ep = xstrdup(t);
            /* Entra's documents omit it; its endpoint sits next to the token endpoint. */
            if (d) ep->device_ep = xstrdup(d);
            else {
                const char *slash = strrchr(t, '/');
                ep->device_ep = xasprintf("%.*s/devicecode", (int)(slash - t), t);
            }
        }
    }
    json_decref(doc);
    free(url);
    return rc;
}

/* Take a successful token answer into s. */
static int take_tokens(const json_t *o, session *s, char *err, size_t errlen)
{
    const char *at = jstr(o, "access_token"), *rt = jstr(o, "refresh_token"), *idt = jstr(o, "id_token");
    json_int_t exp_in = json_integer_value(json_object_get(o, "expires_in"));
    if (!at) {
        snprintf(err, errlen, "the token answer has no access_token");
        return -1;
    }
    session_clear(s);
    s->access_token = xstrdup(at);
    s->refresh_token = rt ? xstrdup(rt) : NULL;
    s->expires_at = util_now() + (exp_in > 0 ? exp_in : 3600);
    /* The name to greet: the ID token's (it came straight from the token endpoint over TLS),
     * else the access token's. Read, not verified: it is only displayed. */
    const char *srcs[] = {idt, at};
    for (size_t i = 0; i < ARRAY_LEN(srcs) && !s->username; i++) {
        jwt t;
        char e[128];
        if (!srcs[i] || jwt_decode(srcs[i], &t, e, sizeof e) != 0) continue;
        const char *n = jwt_claim_str(&t, "preferred_username");
        if (!n) n = jwt_claim_str(&t, "upn");
        if (!n) n = jwt_claim_str(&t, "unique_name");
        if (n) s->username = xstrdup(n);
        jwt_clear(&t);
    }
    if (!s->username) s->username = xstrdup("(unknown)");
    return 0;
}

/* ---- cache file ---------------------------------------------------------------------------- */

static void load_cache(const session_opts *o, session *s)
{
    size_t len;
    char *text = util_read_file(o->cache_path, 256 * 1024, &len);
    if (!text) return;
    json_t *c = json_loadb(text, len, 0, NULL);
    explicit_bzero(text, len);
    free(text);
    const char *auth = jstr(c, "authority"), *cid = jstr(c, "client_id"), *sc = jstr(c, "scope");
    if (auth && cid && sc && !strcmp(auth, o->authority) && !strcmp(cid, o->client_id) && !strcmp(sc, o->scope)) {
        const char *at = jstr(c, "access_token"), *rt = jstr(c, "refresh_token"), *u = jstr(c, "username");
        s->access_token = at ? xstrdup(at) : NULL;
        s->refresh_token = rt ? xstrdup(rt) : NULL;
        s->username = xstrdup(u ? u : "(unknown)");
        s->expires_at = json_integer_value(json_object_get(c, "expires_at"));
    }
    json_decref(c);
}

static int mkdir_p(char *path, mode_t mode)
{
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        int rc = mkdir(path, mode);
        *p = '/';
        if (rc != 0 && errno != EEXIST) return -1;
    }
    return mkdir(path, mode) != 0 && errno != EEXIST ? -1 : 0;
}

static int save_cache(const session_opts *o, const session *s, char *err, size_t errlen)
{
    char *dir = xstrdup(o->cache_path), *slash = strrchr(dir, '/');
    int rc = 0;
    if (slash && slash != dir) {
        *slash = '\0';
        if (mkdir_p(dir, 0700) != 0) rc = -1;
    }
    json_t *c = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:I}", "version", 1, "authority", o->authority,
                          "client_id", o->client_id, "scope", o->scope, "username", s->username,
                          "access_token", s->access_token, "expires_at", (json_int_t)s->expires_at);
    if (s->refresh_token) json_object_set_new(c, "refresh_token", json_string(s->refresh_token));
    char *text = json_dumps(c, JSON_INDENT(2));
    if (rc == 0 && util_write_file(o->cache_path, text, strlen(text), 0600) != 0) rc = -1;
    if (rc != 0) snprintf(err, errlen, "cannot write the sign-in cache %s: %s", o->cache_path, strerror(errno));
    explicit_bzero(text, strlen(text));
    free(text);
    json_decref(c);
    free(dir);
    return rc;
}

int session_logout(const char *cache_path, bool *existed, char *err, size_t errlen)
{
    *existed = access(cache_path, F_OK) == 0;
    if (*existed && unlink(cache_path) != 0) {
        snprintf(err, errlen, "cannot remove %s: %s", cache_path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- grants -------------------------------------------------------------------------------- */

static char *scope_with_extras(const char *scope)
{
    return xasprintf("%s openid profile offline_access", scope);
}

/* 0 refreshed; 1 the provider refused (sign in again); -1 transport failure (err). */
static int refresh(const session_opts *o, const endpoints *ep, session *s, char *err, size_t errlen)
{
    char *cid = form_escape(o->client_id), *rt = form_escape(s->refresh_token);
    char *sc0 = scope_with_extras(o->scope), *sc = form_escape(sc0);
    char *body = xasprintf("client_id=%s&grant_type=refresh_token&refresh_token=%s&scope=%s", cid, rt, sc);
    long status = 0;
    json_t *ans;
    int rc = call_json(o, ep->token_ep, body, &status, &ans, err, errlen);
    if (rc == 0) rc = status == 200 ? take_tokens(ans, s, err, errlen) : 1;
    if (rc == 1) oauth_error(ans, "the refresh token was refused", err, errlen);
    json_decref(ans);
    explicit_bzero(body, strlen(body));
    explicit_bzero(rt, strlen(rt));
    free(body);
    free(cid);
    free(rt);
    free(sc0);
    free(sc);
    return rc;
}

static int device_flow(const session_opts *o, const endpoints *ep, session *s, char *err, size_t errlen)
{
    char *cid = form_escape(o->client_id), *sc0 = scope_with_extras(o->scope), *sc = form_escape(sc0);
    char *body = xasprintf("client_id=%s&scope=%s", cid, sc), *poll = NULL;
    long status = 0;
    json_t *dc = NULL, *ans = NULL;
    int rc = call_json(o, ep->device_ep, body, &status, &dc, err, errlen);
    if (rc == 0 && status != 200) {
        oauth_error(dc, "the identity provider refused to start a device code sign-in", err, errlen);
        rc = -1;
    }
    const char *code = rc == 0 ? jstr(dc, "device_code") : NULL;
    if (rc == 0 && !code) {
        snprintf(err, errlen, "the device code answer has no device_code");
        rc = -1;
    }
    if (rc == 0) {
        const char *msg = jstr(dc, "message");
        if (msg) fprintf(o->out, "%s\n", msg);
        else fprintf(o->out, "To sign in, open %s and enter the code %s\n", jstr(dc, "verification_uri"),
                     jstr(dc, "user_code"));
        fflush(o->out);
        json_int_t interval = json_integer_value(json_object_get(dc, "interval"));
        json_int_t life = json_integer_value(json_object_get(dc, "expires_in"));
        if (interval <= 0) interval = 5;
        int64_t deadline = util_now() + (life > 0 ? life : 900);
        char *dcode = form_escape(code);
        poll = xasprintf("client_id=%s&grant_type=%s&device_code=%s", cid, DEVICE_GRANT, dcode);
        free(dcode);
        for (;;) {
            sleep((unsigned)interval);
            json_decref(ans);
            if ((rc = call_json(o, ep->token_ep, poll, &status, &ans, err, errlen)) != 0) break;
            if (status == 200) {
                rc = take_tokens(ans, s, err, errlen);
                break;
            }
            const char *e = jstr(ans, "error");
            e = e ? e : "";
            if (!strcmp(e, "authorization_pending") && util_now() < deadline) continue;
            if (!strcmp(e, "slow_down")) {
                interval += 5;
                continue;
            }
            rc = -1;
            if (!strcmp(e, "expired_token") || !strcmp(e, "authorization_pending"))
                snprintf(err, errlen, "the sign-in code expired before it was used: run the command again");
            else if (!strcmp(e, "access_denied") || !strcmp(e, "authorization_declined"))
                snprintf(err, errlen, "the sign-in was declined on the verification page");
            else oauth_error(ans, "the sign-in failed", err, errlen);
            break;
        }
    }
    json_decref(dc);
    json_decref(ans);
    if (poll) explicit_bzero(poll, strlen(poll));
    free(poll);
    free(body);
    free(cid);
    free(sc0);
    free(sc);
    return rc;
}

int session_get(const session_opts *o, session *s, char *err, size_t errlen)
{
    *s = (session){0};
    load_cache(o, s);
    if (s->access_token && s->expires_at - util_now() >= MIN_LEFT_S) {
        s->origin = SESSION_CACHED;
        return 0;
    }
    endpoints ep = {0};
    int rc = discover(o, &ep, err, errlen);
    if (rc == 0 && s->refresh_token) {
        rc = refresh(o, &ep, s, err, errlen);
        if (rc == 0) s->origin = SESSION_REFRESHED;
        if (rc == 1) {
            fprintf(o->out, "The saved sign-in has expired (%s); signing in again.\n", err);
            rc = 2;
        }
    } else if (rc == 0) {
        rc = 2;
    }
    if (rc == 2) {
        rc = device_flow(o, &ep, s, err, errlen);
        if (rc == 0) s->origin = SESSION_SIGNED_IN;
    }
    if (rc == 0) rc = save_cache(o, s, err, errlen);
    if (rc != 0) session_clear(s);
    free(ep.device_ep);
    free(ep.token_ep);
    return rc;
}
