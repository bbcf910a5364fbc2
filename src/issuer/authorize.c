/* authorize — see authorize.h. OAuth 2.0 authorization code grant (RFC 6749 §4.1) with PKCE
 * (RFC 7636), shaped as Entra answers msal-browser (shared docs msal-browser.md). */
#include "issuer/authorize.h"

#include "core/b64.h"
#include "core/form.h"
#include "core/log.h"
#include "core/util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CODE_LIFETIME_S 600
#define SESSION_LIFETIME_S (8 * 3600)
#define COOKIE "agentid_session"

typedef struct item {
    char *id;                  /* the code, or the session id */
    int64_t exp;
    authz_code code;           /* codes: what it was issued for */
    char *user_oid;            /* sessions: who signed in */
    struct item *next;
} item;

struct authz {
    pthread_mutex_t mu;
    item *codes, *sessions;
};

authz *authz_new(void)
{
    authz *az = xcalloc(1, sizeof *az);
    pthread_mutex_init(&az->mu, NULL);
    return az;
}

void authz_code_clear(authz_code *c)
{
    free(c->client_id);
    free(c->redirect_uri);
    free(c->user_oid);
    free(c->scope);
    free(c->nonce);
    free(c->challenge);
    free(c->challenge_method);
    free(c->sid);
    memset(c, 0, sizeof *c);
}

static void item_free(item *it)
{
    authz_code_clear(&it->code);
    free(it->id);
    free(it->user_oid);
    free(it);
}

static void free_list(item *it)
{
    while (it) {
        item *n = it->next;
        item_free(it);
        it = n;
    }
}

void authz_free(authz *az)
{
    if (!az) return;
    free_list(az->codes);
    free_list(az->sessions);
    pthread_mutex_destroy(&az->mu);
    free(az);
}

/* Drop expired entries; with az->mu held. */
static void sweep(item **head, int64_t now)
{
    for (item **pp = head; *pp;) {
        if ((*pp)->exp <= now) {
            item *dead = *pp;
            *pp = dead->next;
            item_free(dead);
        } else {
            pp = &(*pp)->next;
        }
    }
}

static char *random_id(void)
{
    unsigned char b[32];
    util_random(b, sizeof b);
    return b64url_encode(b, sizeof b);
}

bool authz_redeem(authz *az, const char *code, authz_code *out)
{
    bool ok = false;
    int64_t now = util_now();
    pthread_mutex_lock(&az->mu);
    sweep(&az->codes, now);
    for (item **pp = &az->codes; *pp; pp = &(*pp)->next) {
        if (util_streq_ct((*pp)->id, code)) {
            item *it = *pp;
            *pp = it->next;            /* single use: gone whether or not the rest checks out */
            *out = it->code;
            memset(&it->code, 0, sizeof it->code);
            item_free(it);
            ok = true;
            break;
        }
    }
    pthread_mutex_unlock(&az->mu);
    return ok;
}

/* The signed-in user of this browser, from the session cookie; NULL if none. Caller frees. */
static char *session_user(authz *az, http_req *r, char **sid)
{
    const char *cookie = http_req_header(r, "Cookie");
    const char *p = cookie ? strstr(cookie, COOKIE "=") : NULL;
    if (!p) return NULL;
    p += sizeof COOKIE;
    char *id = xstrndup(p, strcspn(p, "; "));
    char *user = NULL;
    pthread_mutex_lock(&az->mu);
    sweep(&az->sessions, util_now());
    for (item *it = az->sessions; it; it = it->next)
        if (util_streq_ct(it->id, id)) user = xstrdup(it->user_oid);
    pthread_mutex_unlock(&az->mu);
    if (user && sid) *sid = id;
    else free(id);
    return user;
}

/* ---- pages ------------------------------------------------------------------------------- */

char *authz_html_escape(const char *s)
{
    size_t n = 1;
    for (const char *p = s; *p; p++) n += 6;
    char *out = xmalloc(n), *o = out;
    for (; *s; s++) {
        switch (*s) {
        case '&': o += sprintf(o, "&amp;"); break;
        case '<': o += sprintf(o, "&lt;"); break;
        case '>': o += sprintf(o, "&gt;"); break;
        case '"': o += sprintf(o, "&quot;"); break;
        case '\'': o += sprintf(o, "&#39;"); break;
        default: *o++ = *s;
        }
    }
    *o = '\0';
    return out;
}

static const char PAGE_HEAD[] =
    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
    "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
    "<title>Sign in - agentid</title><style>"
    "body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;background:#eef1f5;"
    "color:#1b1f24;display:flex;min-height:100vh;align-items:center;justify-content:center}"
    ".card{background:#fff;width:340px;padding:36px 40px;border-radius:10px;"
    "box-shadow:0 4px 24px rgba(0,0,0,.08)}"
    ".brand{font-weight:600;color:#2f5fd0;letter-spacing:.02em;margin-bottom:18px}"
    "h1{font-size:22px;font-weight:600;margin:0 0 6px}p.app{margin:0 0 22px;color:#5a6270}"
    "label{display:block;font-size:13px;color:#5a6270;margin:14px 0 4px}"
    "input{width:100%;box-sizing:border-box;padding:9px 10px;border:1px solid #c5cbd3;"
    "border-radius:6px;font:inherit}input:focus{outline:2px solid #2f5fd0;border-color:#2f5fd0}"
    "button{margin-top:22px;width:100%;padding:10px;border:0;border-radius:6px;background:#2f5fd0;"
    "color:#fff;font:inherit;font-weight:600;cursor:pointer}button:hover{background:#244db0}"
    ".err{background:#fdecec;color:#a4262c;padding:8px 10px;border-radius:6px;font-size:13px;"
    "margin-bottom:8px}.foot{margin-top:20px;font-size:12px;color:#8a919c}"
    "</style></head><body><main class=\"card\">";

void authz_page(http_req *r, int status, const char *body_html)
{
    char *page = xasprintf("%s<div class=\"brand\">agentid</div>%s<div class=\"foot\">Local identity "
                           "provider &middot; agentid issuer</div></main></body></html>",
                           PAGE_HEAD, body_html);
    http_add_header(r, "Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'");
    http_add_header(r, "X-Frame-Options", "DENY");
    http_add_header(r, "Cache-Control", "no-store");
    http_reply(r, status, "text/html; charset=utf-8", page, strlen(page));
    free(page);
}

void authz_message_page(http_req *r, int status, const char *title, const char *msg)
{
    char *t = authz_html_escape(title), *m = authz_html_escape(msg);
    char *body = xasprintf("<h1>%s</h1><p class=\"app\">%s</p>", t, m);
    authz_page(r, status, body);
    free(body);
    free(t);
    free(m);
}

static void error_page(http_req *r, int status, const char *title, const char *msg)
{
    authz_message_page(r, status, title, msg);
}

typedef struct {
    size_t n;
    const char *name[32], *value[32];
} params;

static void collect(void *ctx, const char *name, const char *value)
{
    params *p = ctx;
    if (p->n < 32 && value) {
        p->name[p->n] = name;
        p->value[p->n++] = value;
    }
}

static const char *get(const params *p, const char *name)
{
    for (size_t i = 0; i < p->n; i++)
        if (!strcmp(p->name[i], name)) return p->value[i];
    return NULL;
}

void authz_sign_in_page(http_req *r, const char *app_name, const char *const *hidden,
                        const char *error, const char *login, const char *extra_html)
{
    char *fields = xstrdup("");
    for (const char *const *p = hidden; p && *p; p += 2) {
        char *n = authz_html_escape(p[0]), *v = authz_html_escape(p[1]);
        char *more = xasprintf("%s<input type=\"hidden\" name=\"%s\" value=\"%s\">", fields, n, v);
        free(fields);
        fields = more;
        free(n);
        free(v);
    }
    char *app = authz_html_escape(app_name), *lg = authz_html_escape(login ? login : "");
    char *err = error ? authz_html_escape(error) : NULL;
    char *body = xasprintf(
        "<h1>Sign in</h1><p class=\"app\">to continue to %s</p>"
        "%s%s%s<form method=\"post\" autocomplete=\"on\">%s"
        "<label for=\"login\">Email or username</label>"
        "<input id=\"login\" name=\"login\" type=\"text\" value=\"%s\" autofocus required>"
        "<label for=\"passwd\">Password</label>"
        "<input id=\"passwd\" name=\"passwd\" type=\"password\" required>"
        "<button id=\"submit\" type=\"submit\">Sign in</button>%s</form>",
        app, err ? "<div class=\"err\" role=\"alert\">" : "", err ? err : "", err ? "</div>" : "",
        fields, lg, extra_html ? extra_html : "");
    authz_page(r, 200, body);
    free(body);
    free(fields);
    free(app);
    free(lg);
    free(err);
}

static void sign_in_page(http_req *r, const params *q, const dir_app *client, const char *error,
                         const char *login)
{
    const char *kv[2 * 32 + 1];
    size_t k = 0;
    for (size_t i = 0; i < q->n; i++) kv[k++] = q->name[i], kv[k++] = q->value[i];
    kv[k] = NULL;
    authz_sign_in_page(r, client->name, kv, error, login, NULL);
}

/* Send the browser back to the client: code or error in the fragment or the query. */
static void back_to_client(http_req *r, const char *redirect_uri, bool fragment, const char *const *kv)
{
    size_t cap = strlen(redirect_uri) + 8;
    for (const char *const *p = kv; *p; p += 2) cap += strlen(p[0]) + strlen(p[1]) * 3 + 2;
    char *url = xmalloc(cap);
    size_t len = (size_t)snprintf(url, cap, "%s", redirect_uri);
    char sep = fragment ? '#' : strchr(redirect_uri, '?') ? '&' : '?';
    for (const char *const *p = kv; *p; p += 2) {
        char *v = form_escape(p[1]);
        len += (size_t)snprintf(url + len, cap - len, "%c%s=%s", sep, p[0], v);
        free(v);
        sep = '&';
    }
    http_add_header(r, "Location", url);
    http_add_header(r, "Cache-Control", "no-store");
    http_reply(r, 302, "text/plain", "", 0);
    free(url);
}

static bool redirect_registered(const dir_app *a, const char *uri)
{
    size_t i;
    const json_t *v;
    json_array_foreach(dir_app_list(a, "redirect_uris"), i, v)
        if (!strcmp(json_string_value(v), uri)) return true;
    return false;
}

/* ---- the authorize endpoint -------------------------------------------------------------- */

static void issue_code(authz *az, http_req *r, const params *q, const dir_app *client,
                       const char *user_oid, const char *tid, const char *sid, bool fragment)
{
    item *it = xcalloc(1, sizeof *it);
    it->id = random_id();
    it->exp = util_now() + CODE_LIFETIME_S;
    const char *nonce = get(q, "nonce"), *ch = get(q, "code_challenge"), *m = get(q, "code_challenge_method");
    it->code = (authz_code){
        .client_id = xstrdup(client->app_id),
        .redirect_uri = xstrdup(get(q, "redirect_uri")),
        .user_oid = xstrdup(user_oid),
        .scope = xstrdup(get(q, "scope") ? get(q, "scope") : "openid profile"),
        .nonce = nonce ? xstrdup(nonce) : NULL,
        .challenge = ch ? xstrdup(ch) : NULL,
        .challenge_method = xstrdup(m ? m : "plain"),
        .sid = xstrdup(sid),
    };
    char *code = xstrdup(it->id);
    pthread_mutex_lock(&az->mu);
    sweep(&az->codes, util_now());
    it->next = az->codes;
    az->codes = it;
    pthread_mutex_unlock(&az->mu);
    char *ci_json = xasprintf("{\"uid\":\"%s\",\"utid\":\"%s\"}", user_oid, tid);
    char *ci = b64url_encode(ci_json, strlen(ci_json));
    const char *state = get(q, "state"), *kv[9];
    size_t k = 0;
    kv[k++] = "code", kv[k++] = code, kv[k++] = "client_info", kv[k++] = ci;
    if (state) kv[k++] = "state", kv[k++] = state;   /* echoed unchanged: msal's bridge needs it */
    kv[k++] = "session_state", kv[k++] = sid, kv[k] = NULL;
    back_to_client(r, get(q, "redirect_uri"), fragment, kv);
    log_msg(LOG_INFO, "code_issued", "client=%s user=%s", client->app_id, user_oid);
    free(code);
    free(ci_json);
    free(ci);
}

void authz_handle(authz *az, http_req *r, const directory *d, const char *base_url, const char *tenant)
{
    (void)base_url;
    (void)tenant;
    params q = {0};
    form *body = NULL;
    bool post = !strcmp(http_req_method(r), "POST");
    http_req_query_each(r, collect, &q);
    if (post) {
        size_t len;
        const char *b = http_req_body(r, &len);
        if (!(body = form_parse(b, len))) {
            error_page(r, 400, "Bad request", "The form could not be read.");
            return;
        }
        for (size_t i = 0; i < body->n && q.n < 32; i++)
            if (!get(&q, body->name[i]) && strcmp(body->name[i], "passwd") && strcmp(body->name[i], "login")) {
                q.name[q.n] = body->name[i];
                q.value[q.n++] = body->value[i];
            }
    } else if (strcmp(http_req_method(r), "GET") != 0) {
        error_page(r, 405, "Method not allowed", "Use GET or POST.");
        return;
    }
    const char *client_id = get(&q, "client_id"), *redirect = get(&q, "redirect_uri");
    const dir_app *client = client_id && util_is_guid(client_id) ? dir_app_find(d, client_id) : NULL;
    const char *mode = get(&q, "response_mode");
    bool fragment = mode ? !strcmp(mode, "fragment") : false;
    char *user = NULL, *sid = NULL;
    /* Errors that cannot go back to the client are shown here (RFC 6749 §4.1.2.1). */
    if (!client) {
        error_page(r, 400, "Sign-in failed", "AADSTS700016: The application was not found in the directory.");
        goto end;
    }
    if (!redirect || !redirect_registered(client, redirect)) {
        error_page(r, 400, "Sign-in failed",
                   "AADSTS50011: The redirect URI specified in the request does not match the redirect "
                   "URIs configured for the application.");
        goto end;
    }
    const char *state = get(&q, "state"), *rt = get(&q, "response_type"), *prompt = get(&q, "prompt");
    const char *ch = get(&q, "code_challenge"), *chm = get(&q, "code_challenge_method");
    if (!rt || strcmp(rt, "code") != 0) {
        const char *kv[] = {"error", "unsupported_response_type", "error_description",
                            "AADSTS70005: response_type must be 'code'.", "state", state ? state : "", NULL};
        back_to_client(r, redirect, fragment, kv);
        goto end;
    }
    if ((ch && chm && strcmp(chm, "S256") && strcmp(chm, "plain")) || (client->public_client && !ch)) {
        const char *kv[] = {"error", "invalid_request", "error_description",
                            "AADSTS9002325: Proof Key for Code Exchange is required for cross-origin "
                            "authorization code redemption (code_challenge with method S256).",
                            "state", state ? state : "", NULL};
        back_to_client(r, redirect, fragment, kv);
        goto end;
    }
    if (post) {
        const char *login = form_get(body, "login"), *pw = form_get(body, "passwd");
        const dir_user *u = login ? dir_user_find(d, login) : NULL;
        if (!u || !u->password || !pw || !util_streq_ct(u->password, pw)) {
            sign_in_page(r, &q, client, "Your account or password is incorrect.", login);
            log_msg(LOG_INFO, "sign_in_failed", "client=%s", client->app_id);
            goto end;
        }
        /* A session for single sign-on in this browser (first-party cookie on the issuer). */
        item *s = xcalloc(1, sizeof *s);
        s->id = random_id();
        s->exp = util_now() + SESSION_LIFETIME_S;
        s->user_oid = xstrdup(u->object_id);
        sid = xstrdup(s->id);
        pthread_mutex_lock(&az->mu);
        s->next = az->sessions;
        az->sessions = s;
        pthread_mutex_unlock(&az->mu);
        char *cookie = xasprintf(COOKIE "=%s; Path=/; HttpOnly; SameSite=None%s; Max-Age=%d", sid,
                                 http_req_is_tls(r) ? "; Secure" : "", SESSION_LIFETIME_S);
        http_add_header(r, "Set-Cookie", cookie);
        free(cookie);
        issue_code(az, r, &q, client, u->object_id, dir_tenant_id(d), sid, fragment);
        goto end;
    }
    user = session_user(az, r, &sid);
    bool force_login = prompt && (!strcmp(prompt, "login") || !strcmp(prompt, "select_account"));
    if (user && !force_login && dir_user_find(d, user)) {
        issue_code(az, r, &q, client, user, dir_tenant_id(d), sid, fragment);
    } else if (prompt && !strcmp(prompt, "none")) {
        const char *kv[] = {"error", "login_required", "error_description",
                            "AADSTS50058: A silent sign-in request was sent but no user is signed in.",
                            "state", state ? state : "", NULL};
        back_to_client(r, redirect, fragment, kv);
    } else {
        sign_in_page(r, &q, client, NULL, get(&q, "login_hint"));
    }
end:
    free(user);
    free(sid);
    form_free(body);
}

void authz_logout(authz *az, http_req *r, const directory *d)
{
    char *sid = NULL, *user = session_user(az, r, &sid);
    if (sid) {
        pthread_mutex_lock(&az->mu);
        for (item **pp = &az->sessions; *pp; pp = &(*pp)->next)
            if (!strcmp((*pp)->id, sid)) {
                item *dead = *pp;
                *pp = dead->next;
                item_free(dead);
                break;
            }
        pthread_mutex_unlock(&az->mu);
    }
    http_add_header(r, "Set-Cookie", COOKIE "=; Path=/; Max-Age=0; HttpOnly; SameSite=None");
    const char *post = http_req_query(r, "post_logout_redirect_uri"), *state = http_req_query(r, "state");
    bool known = false;
    for (size_t i = 0; post && !known && i < dir_app_count(d); i++)
        known = redirect_registered(dir_app_at(d, i), post);
    if (known) {
        const char *kv[] = {"state", state ? state : "", NULL};
        back_to_client(r, post, false, state ? kv : kv + 2);
    } else {
        error_page(r, 200, "You signed out", "You can close this window.");
    }
    free(user);
    free(sid);
}
