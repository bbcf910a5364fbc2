/* device — see device.h. RFC 8628 in Entra's shape (entra-docs v2-oauth2-device-code.md);
 * the page's texts follow Entra's devicelogin page. */
#include "issuer/device.h"

#include "core/b64.h"
#include "core/form.h"
#include "core/log.h"
#include "core/util.h"
#include "issuer/authorize.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* No 0/O, 1/I/L: a person types the code from another screen. */
static const char ALPHABET[] = "ABCDEFGHJKMNPQRSTUVWXYZ23456789";

typedef enum { ST_PENDING, ST_APPROVED, ST_DECLINED } flow_state;

typedef struct entry {
    unsigned char hash[SHA256_DIGEST_LENGTH];   /* of the device code */
    char user_code[DEVICE_USER_CODE_LEN + 1];
    char *flow;          /* the page's hidden value for this code (CSRF) */
    char *client_id, *scope;
    char *user_oid;      /* once approved */
    flow_state st;
    int64_t exp;         /* util_now() seconds */
    int interval_ms;
    int64_t last_poll_ms;   /* monotonic; 0 before the first poll */
    struct entry *next;
} entry;

struct device_store {
    pthread_mutex_t mu;
    entry *head;
    size_t n;
};

device_store *device_store_new(void)
{
    device_store *s = xcalloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

static void entry_free(entry *e)
{
    free(e->flow);
    free(e->client_id);
    free(e->scope);
    free(e->user_oid);
    free(e);
}

void device_store_free(device_store *s)
{
    if (!s) return;
    for (entry *e = s->head, *n; e; e = n) {
        n = e->next;
        entry_free(e);
    }
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* Drop entries DEVICE_PURGE_AFTER_S past their expiry; with s->mu held. */
static void purge(device_store *s, int64_t now)
{
    for (entry **pp = &s->head; *pp;) {
        if ((*pp)->exp + DEVICE_PURGE_AFTER_S <= now) {
            entry *dead = *pp;
            *pp = dead->next;
            entry_free(dead);
            s->n--;
        } else {
            pp = &(*pp)->next;
        }
    }
}

static void unlink_entry(device_store *s, entry *e)
{
    for (entry **pp = &s->head; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            s->n--;
            entry_free(e);
            return;
        }
}

static entry *by_user_code(device_store *s, const char *user_code)
{
    for (entry *e = s->head; e; e = e->next)
        if (!strcmp(e->user_code, user_code)) return e;
    return NULL;
}

static void random_user_code(char out[DEVICE_USER_CODE_LEN + 1])
{
    const unsigned n = sizeof ALPHABET - 1, limit = 256 - 256 % n;   /* no modulo bias */
    for (size_t i = 0; i < DEVICE_USER_CODE_LEN;) {
        unsigned char b;
        util_random(&b, 1);
        if (b < limit) out[i++] = ALPHABET[b % n];
    }
    out[DEVICE_USER_CODE_LEN] = '\0';
}

static char *random_token(size_t n)
{
    unsigned char b[64];
    util_random(b, n);
    return b64url_encode(b, n);
}

bool device_start(device_store *s, const char *client_id, const char *scope, int lifetime_s,
                  int interval_s, char user_code[DEVICE_USER_CODE_LEN + 1], char **device_code)
{
    entry *e = xcalloc(1, sizeof *e);
    char *dc = random_token(48);
    SHA256((const unsigned char *)dc, strlen(dc), e->hash);
    e->flow = random_token(24);
    e->client_id = xstrdup(client_id);
    e->scope = xstrdup(scope);
    e->st = ST_PENDING;
    e->interval_ms = interval_s * 1000;
    int64_t now = util_now();
    e->exp = now + lifetime_s;
    bool ok = false;
    pthread_mutex_lock(&s->mu);
    purge(s, now);
    if (s->n < DEVICE_MAX_PENDING) {
        do random_user_code(e->user_code);
        while (by_user_code(s, e->user_code));
        e->next = s->head;
        s->head = e;
        s->n++;
        memcpy(user_code, e->user_code, sizeof e->user_code);
        ok = true;
    }
    pthread_mutex_unlock(&s->mu);
    if (!ok) {
        entry_free(e);
        free(dc);
        return false;
    }
    *device_code = dc;
    return true;
}

device_state device_poll(device_store *s, const char *device_code, const char *client_id,
                         char **user_oid, char **scope)
{
    unsigned char h[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)device_code, strlen(device_code), h);
    int64_t now = util_now(), ms = util_mono_ms();
    device_state st = DEVICE_UNKNOWN;
    pthread_mutex_lock(&s->mu);
    purge(s, now);
    entry *e = s->head;
    while (e && CRYPTO_memcmp(e->hash, h, sizeof h) != 0) e = e->next;
    if (!e) {
        st = DEVICE_UNKNOWN;
    } else if (strcasecmp(e->client_id, client_id) != 0) {
        st = DEVICE_WRONG_CLIENT;
    } else if (e->st == ST_DECLINED) {
        st = DEVICE_DECLINED;
    } else if (e->exp <= now) {
        st = DEVICE_EXPIRED;
    } else if (e->st == ST_APPROVED) {
        *user_oid = e->user_oid;
        *scope = e->scope;
        e->user_oid = e->scope = NULL;
        unlink_entry(s, e);   /* single use */
        st = DEVICE_APPROVED;
    } else {
        st = e->last_poll_ms && ms - e->last_poll_ms < e->interval_ms ? DEVICE_SLOW_DOWN
                                                                      : DEVICE_PENDING;
        e->last_poll_ms = ms;
    }
    pthread_mutex_unlock(&s->mu);
    return st;
}

/* ---- the page ---------------------------------------------------------------------------- */

/* What a person typed, as a user code: letters upper-cased, spaces and dashes dropped. False
 * if it cannot be one. */
static bool normalise(const char *in, char out[DEVICE_USER_CODE_LEN + 1])
{
    size_t n = 0;
    for (const char *p = in ? in : ""; *p; p++) {
        if (*p == ' ' || *p == '-' || *p == '\t') continue;
        if (n == DEVICE_USER_CODE_LEN) return false;
        char c = (*p >= 'a' && *p <= 'z') ? (char)(*p - 'a' + 'A') : *p;
        out[n++] = c;
    }
    out[n] = '\0';
    return n == DEVICE_USER_CODE_LEN;
}

/* The first page: "Enter code". */
static void code_page(http_req *r, int status, const char *error)
{
    char *err = error ? authz_html_escape(error) : NULL;
    char *body = xasprintf(
        "<h1>Enter code</h1><p class=\"app\">Enter the code displayed on your app or device.</p>"
        "%s%s%s<form method=\"post\" autocomplete=\"off\">"
        "<label for=\"otc\">Code</label>"
        "<input id=\"otc\" name=\"otc\" type=\"text\" maxlength=\"16\" autofocus required "
        "autocapitalize=\"characters\" spellcheck=\"false\">"
        "<button id=\"next\" type=\"submit\">Next</button></form>",
        err ? "<div class=\"err\" role=\"alert\">" : "", err ? err : "", err ? "</div>" : "");
    authz_page(r, status, body);
    free(body);
    free(err);
}

typedef enum { LOOK_OK, LOOK_UNKNOWN, LOOK_EXPIRED, LOOK_USED } lookup;

/* The pending flow of a user code: copies of its client id and its page's hidden value. */
static lookup look(device_store *s, const char *code, char **client_id, char **flow)
{
    int64_t now = util_now();
    lookup l = LOOK_UNKNOWN;
    pthread_mutex_lock(&s->mu);
    purge(s, now);
    entry *e = by_user_code(s, code);
    if (!e) l = LOOK_UNKNOWN;
    else if (e->st != ST_PENDING) l = LOOK_USED;
    else if (e->exp <= now) l = LOOK_EXPIRED;
    else {
        l = LOOK_OK;
        *client_id = xstrdup(e->client_id);
        *flow = xstrdup(e->flow);
    }
    pthread_mutex_unlock(&s->mu);
    return l;
}

/* Answer a pending flow: approve for user_oid, or decline with NULL. False if it is no longer
 * pending (answered in another window, or expired). */
static bool answer(device_store *s, const char *code, const char *user_oid)
{
    bool ok = false;
    int64_t now = util_now();
    pthread_mutex_lock(&s->mu);
    entry *e = by_user_code(s, code);
    if (e && e->st == ST_PENDING && e->exp > now) {
        e->st = user_oid ? ST_APPROVED : ST_DECLINED;
        if (user_oid) e->user_oid = xstrdup(user_oid);
        ok = true;
    }
    pthread_mutex_unlock(&s->mu);
    return ok;
}

static void lookup_error(http_req *r, lookup l)
{
    code_page(r, 200, l == LOOK_EXPIRED ? "That code has expired. Go back to your device and start "
                                          "again to get a new code."
                      : l == LOOK_USED  ? "That code has already been used. Go back to your device "
                                          "and start again to get a new code."
                                        : "That code didn't work. Check the code and try again.");
}

static void sign_in(http_req *r, const char *code, const char *flow, const char *app,
                    const char *error, const char *login)
{
    const char *hidden[] = {"otc", code, "flow", flow, NULL};
    authz_sign_in_page(r, app, hidden, error, login,
                       "<button id=\"deny\" name=\"deny\" value=\"1\" type=\"submit\" formnovalidate "
                       "style=\"background:#fff;color:#2f5fd0;border:1px solid #c5cbd3\">"
                       "Cancel: this is not my sign-in</button>");
}

void device_page(device_store *s, http_req *r, const directory *d)
{
    const char *method = http_req_method(r);
    if (!strcmp(method, "GET") || !strcmp(method, "HEAD")) {
        code_page(r, 200, NULL);
        return;
    }
    if (strcmp(method, "POST") != 0) {
        http_add_header(r, "Allow", "GET, POST");
        authz_message_page(r, 405, "Method not allowed", "Use GET or POST.");
        return;
    }
    size_t len;
    const char *b = http_req_body(r, &len);
    form *f = form_parse(b, len);
    char code[DEVICE_USER_CODE_LEN + 1];
    char *client_id = NULL, *flow = NULL;
    if (!f) {
        authz_message_page(r, 400, "Bad request", "The form could not be read.");
        goto end;
    }
    if (!normalise(form_get(f, "otc"), code)) {
        code_page(r, 200, "That code didn't work. Check the code and try again.");
        goto end;
    }
    lookup l = look(s, code, &client_id, &flow);
    if (l != LOOK_OK) {
        lookup_error(r, l);
        log_msg(LOG_INFO, "device_code_refused", "user_code=%s", code);
        goto end;
    }
    const dir_app *app = dir_app_find(d, client_id);
    const char *app_name = app ? app->name : client_id;
    const char *sent_flow = form_get(f, "flow");
    if (!sent_flow) {   /* the code form: on to signing in */
        sign_in(r, code, flow, app_name, NULL, NULL);
        goto end;
    }
    if (!util_streq_ct(sent_flow, flow)) {
        authz_message_page(r, 400, "Sign-in failed",
                           "This sign-in page is out of date. Open the sign-in page again and "
                           "enter the code from your device.");
        goto end;
    }
    char *msg = NULL;
    if (form_get(f, "deny")) {
        if (!answer(s, code, NULL)) {
            lookup_error(r, LOOK_USED);
            goto end;
        }
        msg = xasprintf("You have declined to sign in to the %s application on your device. You may "
                        "now close this window.", app_name);
        authz_message_page(r, 200, "Sign-in declined", msg);
        log_msg(LOG_INFO, "device_code_declined", "client=%s user_code=%s", client_id, code);
        free(msg);
        goto end;
    }
    const char *login = form_get(f, "login"), *pw = form_get(f, "passwd");
    const dir_user *u = login ? dir_user_find(d, login) : NULL;
    if (!u || !u->password || !pw || !util_streq_ct(u->password, pw)) {
        sign_in(r, code, flow, app_name, "Your account or password is incorrect.", login);
        log_msg(LOG_INFO, "sign_in_failed", "client=%s user_code=%s", client_id, code);
        goto end;
    }
    if (!answer(s, code, u->object_id)) {
        lookup_error(r, LOOK_USED);
        goto end;
    }
    msg = xasprintf("You have signed in to the %s application on your device. You may now close "
                    "this window.", app_name);
    authz_message_page(r, 200, "Signed in", msg);
    log_msg(LOG_INFO, "device_code_approved", "client=%s user=%s user_code=%s", client_id,
            u->object_id, code);
    free(msg);
end:
    free(client_id);
    free(flow);
    form_free(f);
}
