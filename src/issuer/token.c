/* token — see token.h.
 *
 * Every grant follows the same steps: authenticate the client, read the grant's own
 * parameters, resolve the scope to one resource, check consent, mint, answer. A step that
 * fails fills an oerr and returns false; token_endpoint() turns it into Entra's JSON in
 * one place.
 */
#include "issuer/token.h"

#include "core/b64.h"
#include "core/log.h"
#include "core/util.h"
#include "jose/oidc.h"

#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Wire names (RFC 6749, RFC 7521/7523, Entra's extensions) in one place. */
#define P_GRANT_TYPE        "grant_type"
#define P_CLIENT_ID         "client_id"
#define P_CLIENT_SECRET     "client_secret"
#define P_ASSERTION_TYPE    "client_assertion_type"
#define P_CLIENT_ASSERTION  "client_assertion"
#define P_SCOPE             "scope"
#define P_FMI_PATH          "fmi_path"
#define P_ASSERTION         "assertion"
#define P_TOKEN_USE         "requested_token_use"
#define P_USER_FIC          "user_federated_identity_credential"
#define P_USERNAME          "username"
#define P_USER_ID           "user_id"
#define P_PASSWORD          "password"
#define P_REFRESH_TOKEN     "refresh_token"
#define P_CLIENT_INFO       "client_info"
#define P_RESOURCE          "resource"
#define JWT_BEARER          "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#define GRANT_JWT_BEARER    "urn:ietf:params:oauth:grant-type:jwt-bearer"
#define GRANT_DEVICE_CODE   "urn:ietf:params:oauth:grant-type:device_code"

#define ASSERTION_SKEW_S 300   /* Entra allows five minutes (docs/README, issuer decision 4) */
#define REFRESH_LIFETIME_S (90 * 24 * 3600)

typedef struct {
    int status;
    const char *error;
    int code;
    const char *suberror;
    char msg[1024];
} oerr;

static bool fail(oerr *e, int status, const char *error, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static bool fail(oerr *e, int status, const char *error, int code, const char *fmt, ...)
{
    e->status = status;
    e->error = error;
    e->code = code;
    e->suberror = NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return false;
}

static bool missing(oerr *e, const char *name)
{
    return fail(e, 400, "invalid_request", 900144,
                "The request body must contain the following parameter: '%s'.", name);
}

/* The state of one request as it is worked through. */
typedef struct {
    const token_req *r;
    const directory *d;
    int64_t now;
    char *iss_v2, *iss_v1;
    const char *corr;
    /* set by authenticate() */
    const dir_app *client;
    const char *acr;           /* "0" public, "1" secret, "2" certificate or assertion */
    const char *cred;          /* how: client_secret, certificate, federated, t1, none (logged) */
    const char *fmi;           /* T1: the agent of fmi_path (logged) */
    /* set by parse_scope() */
    const dir_app *resource;
    char *resource_name;       /* the resource as requested, for v1 aud */
    json_t *scopes;            /* requested permission names (without the resource) */
    bool dflt, openid, profile, offline, email;
    const char *nonce, *sid;   /* authorization code: echoed in the id_token */
} tctx;

static const char *param(const tctx *c, const char *name)
{
    const char *v = form_get(c->r->body, name);
    return v && *v ? v : NULL;
}

/* ---- small helpers ---------------------------------------------------------------------- */

static bool is_token_exchange(const char *aud)
{
    return aud && (strcasecmp(aud, DIR_TOKEN_EXCHANGE_APPID) == 0 ||
                   strcasecmp(aud, DIR_TOKEN_EXCHANGE_URI) == 0 ||
                   strcasecmp(aud, DIR_TOKEN_EXCHANGE_URI "/") == 0);
}

/* Entra's pairwise subject for a user: stable per (user, client app), 43 chars. */
static char *pairwise_sub(const char *user_oid, const char *app_id)
{
    char *in = xasprintf("%s|%s", user_oid, app_id);
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)in, strlen(in), d);
    free(in);
    return b64url_encode(d, sizeof d);
}

/* The FMI path subject of T1: /eid1/c/pub/t/{tid}/a/{blueprint}/{fmi_path}, where the
 * GUIDs are base64url of their .NET byte order (entra-protocol.md §1e). */
static char *fmi_subject(const char *tid, const char *blueprint, const char *fmi_path)
{
    unsigned char t[16], a[16];
    util_guid_bytes_le(tid, t);
    util_guid_bytes_le(blueprint, a);
    char *tb = b64url_encode(t, 16), *ab = b64url_encode(a, 16);
    char *s = xasprintf("/eid1/c/pub/t/%s/a/%s/%s", tb, ab, fmi_path);
    free(tb);
    free(ab);
    return s;
}

static bool is_issuer(const tctx *c, const char *iss)
{
    return iss && (strcmp(iss, c->iss_v2) == 0 || strcmp(iss, c->iss_v1) == 0);
}

/* Verify a token this issuer signed: signature with a published key, then time. On
 * failure *t is cleared, so callers only clear it after success. */
static bool verify_own(const tctx *c, const char *token, jwt *t, oerr *e, int status,
                       const char *error, const char *what)
{
    char err[256];
    if (jwt_decode(token, t, err, sizeof err) != 0)
        return fail(e, status, error, 50013, "Assertion is malformed: %s. [%s]", err, what);
    const jwk *k = jwks_find(dir_keys(c->d), jwt_kid(t), NULL);
    int64_t exp = 0, nbf = 0;
    if (!k || jwt_verify(t, k, err, sizeof err) != 0)
        fail(e, status, error, 50013, "Assertion failed signature validation. [Reason - %s, %s]",
             k ? err : "The key was not found", what);
    else if (!is_issuer(c, jwt_claim_str(t, "iss")))
        fail(e, status, error, 50013, "Assertion issuer is not this tenant. [%s]", what);
    else if (!jwt_claim_int(t, "exp", &exp) || exp + ASSERTION_SKEW_S < c->now ||
             (jwt_claim_int(t, "nbf", &nbf) && nbf - ASSERTION_SKEW_S > c->now)) {
        char now[40], ex[40];
        util_fmt_time_iso(c->now, now);
        util_fmt_time_iso(exp, ex);
        fail(e, status, error, 500133,
             "Assertion is not within its valid time range. Ensure that the access token "
             "is not expired before using it for user assertion, or request a new token. "
             "Current time: %s, expiry time of assertion %s. [%s]", now, ex, what);
    } else {
        return true;
    }
    jwt_clear(t);
    return false;
}

/* ---- client authentication (RFC 6749 §2.3, RFC 7523 §2.2) ------------------------------- */

static bool assertion_time(const tctx *c, const jwt *t, oerr *e)
{
    int64_t exp = 0, nbf = 0;
    bool has_nbf = jwt_claim_int(t, "nbf", &nbf);
    if (!jwt_claim_int(t, "exp", &exp) || exp + ASSERTION_SKEW_S < c->now ||
        (has_nbf && nbf - ASSERTION_SKEW_S > c->now)) {
        char now[40], from[40], to[40];
        util_fmt_time_iso(c->now, now);
        util_fmt_time_iso(has_nbf ? nbf : 0, from);
        util_fmt_time_iso(exp, to);
        return fail(e, 401, "invalid_client", 700024,
                    "Client assertion is not within its valid time range. Current time: %s, "
                    "assertion valid from %s, expiry time of assertion %s. Review the documentation "
                    "at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                    now, from, to);
    }
    return true;
}

/* private_key_jwt: signed by a certificate registered on the app (x5t or x5t#S256). */
static bool cert_assertion(tctx *c, const jwt *t, oerr *e)
{
    const char *x5t = json_string_value(json_object_get(t->header, "x5t"));
    const char *x5t256 = json_string_value(json_object_get(t->header, "x5t#S256"));
    const dir_cert *cert = dir_app_cert(c->client, x5t, x5t256);
    char err[256];
    if (!cert)
        return fail(e, 401, "invalid_client", 700027,
                    "Client assertion contains an invalid signature. [Reason - The key was not "
                    "found., Thumbprint of key used by client: '%s', Please visit the Azure Portal, "
                    "Graph Explorer or directly use MS Graph to see configured keys for app Id '%s'.]",
                    x5t256 ? x5t256 : x5t ? x5t : "(none)", c->client->app_id);
    if (jwt_verify(t, cert->key, err, sizeof err) != 0)
        return fail(e, 401, "invalid_client", 700027,
                    "Client assertion failed signature validation. [Reason - %s]", err);
    const char *sub = jwt_claim_str(t, "sub");
    if (!sub || strcasecmp(sub, c->client->app_id) != 0)
        return fail(e, 401, "invalid_client", 50013,
                    "Assertion is invalid: the 'sub' claim must be the client id '%s'.",
                    c->client->app_id);
    /* aud is this token endpoint (v2 or v1 form), under the tenant id or a domain name. */
    const json_t *aud = json_object_get(t->claims, "aud");
    const char *a = json_is_array(aud) ? json_string_value(json_array_get(aud, 0))
                                       : json_string_value(aud);
    bool aud_ok = false;
    size_t bl = strlen(c->r->base_url);
    if (a && strncasecmp(a, c->r->base_url, bl) == 0 && a[bl] == '/') {
        const char *rest = a + bl + 1, *slash = strchr(rest, '/');
        if (slash) {
            char *tn = xstrndup(rest, (size_t)(slash - rest));
            aud_ok = (dir_is_tenant(c->d, tn) || strcmp(tn, "common") == 0 ||
                      strcmp(tn, "organizations") == 0) &&
                     (strcmp(slash, "/oauth2/v2.0/token") == 0 || strcmp(slash, "/oauth2/token") == 0);
            free(tn);
        }
    }
    if (!aud_ok)
        return fail(e, 401, "invalid_client", 50013,
                    "Assertion audience claim does not match the required value. The audience must "
                    "be the token endpoint %s/%s/oauth2/v2.0/token.",
                    c->r->base_url, dir_tenant_id(c->d));
    return assertion_time(c, t, e);
}

static bool fic_audience_ok(const json_t *fic, const jwt *t);

/* A token this issuer signed, used as a credential: T1 for an agent identity
 * (entra-protocol.md §1b), or a federated identity credential (§5). */
static bool issued_assertion(tctx *c, const jwt *t, oerr *e)
{
    char err[256];
    const jwk *k = jwks_find(dir_keys(c->d), jwt_kid(t), NULL);
    if (!k || jwt_verify(t, k, err, sizeof err) != 0)
        return fail(e, 401, "invalid_client", 700027,
                    "Client assertion failed signature validation. [Reason - %s]",
                    k ? err : "The key was not found.");
    if (!assertion_time(c, t, e)) return false;
    const char *idtyp = jwt_claim_str(t, "idtyp");
    if (!idtyp || strcmp(idtyp, "app") != 0)
        return fail(e, 400, "invalid_request", 700229,
                    "ForbiddenTokenType - Only app-only tokens can be used as Federated Identity "
                    "Credentials for Microsoft Entra issuer.");
    const char *aud = jwt_claim_str(t, "aud"), *sub = jwt_claim_str(t, "sub"),
               *azp = jwt_claim_str(t, "azp");
    if (!is_token_exchange(aud))
        return fail(e, 401, "invalid_client", 50013,
                    "Assertion audience is invalid: a token used as a client credential must be "
                    "issued for %s.", DIR_TOKEN_EXCHANGE_URI);
    if (c->client->type == APP_AGENT_IDENTITY) {
        /* T1: issued to the agent's own blueprint, with fmi_path naming this agent. */
        const char *tail = sub ? strrchr(sub, '/') : NULL;
        if (azp && strcasecmp(azp, c->client->parent) == 0 && tail &&
            strcasecmp(tail + 1, c->client->app_id) == 0)
            return c->cred = "t1", true;
        return fail(e, 401, "invalid_client", 70021,
                    "No matching federated identity record found for presented assertion. "
                    "Assertion Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'. "
                    "The assertion must be a token of the agent identity's parent blueprint '%s' "
                    "requested with fmi_path '%s'.",
                    jwt_claim_str(t, "iss"), sub ? sub : "", aud, c->client->parent,
                    c->client->app_id);
    }
    size_t i;
    const json_t *f;
    json_array_foreach(dir_app_list(c->client, "federated_credentials"), i, f) {
        const char *fi = json_string_value(json_object_get(f, "issuer"));
        const char *fs = json_string_value(json_object_get(f, "subject"));
        if (fi && fs && sub && strcmp(fi, jwt_claim_str(t, "iss")) == 0 && strcmp(fs, sub) == 0 &&
            fic_audience_ok(f, t))
            return c->cred = "federated", true;
    }
    return fail(e, 401, "invalid_client", 70021,
                "No matching federated identity record found for presented assertion. Assertion "
                "Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'.",
                jwt_claim_str(t, "iss"), sub ? sub : "", aud);
}

/* Does the assertion's aud name one of the credential's audiences (default: token exchange)? */
static bool fic_audience_ok(const json_t *fic, const jwt *t)
{
    const json_t *want = json_object_get(fic, "audiences"), *aud = json_object_get(t->claims, "aud");
    size_t n = json_is_array(aud) ? json_array_size(aud) : 1;
    for (size_t i = 0; i < n; i++) {
        const char *a = json_string_value(json_is_array(aud) ? json_array_get(aud, i) : aud);
        if (!a) continue;
        if (json_array_size(want) == 0 && is_token_exchange(a)) return true;
        size_t j;
        const json_t *w;
        json_array_foreach(want, j, w) {
            const char *ws = json_string_value(w);
            if (!strcmp(ws, a) || (is_token_exchange(ws) && is_token_exchange(a))) return true;
        }
    }
    return false;
}

/* A token from another issuer (Kubernetes service account, another cloud) matching one of the
 * app's federated identity credentials, verified with that issuer's published keys. */
static bool federated_assertion(tctx *c, const jwt *t, oerr *e)
{
    const char *iss = jwt_claim_str(t, "iss"), *sub = jwt_claim_str(t, "sub");
    const json_t *fic = NULL, *f;
    size_t i;
    json_array_foreach(dir_app_list(c->client, "federated_credentials"), i, f) {
        if (iss && sub && !strcmp(json_string_value(json_object_get(f, "issuer")), iss) &&
            !strcmp(json_string_value(json_object_get(f, "subject")), sub)) {
            fic = f;
            break;
        }
    }
    if (!fic)
        return fail(e, 401, "invalid_client", 70021,
                    "No matching federated identity record found for presented assertion. Assertion "
                    "Issuer: '%s'. Assertion Subject: '%s'.", iss ? iss : "", sub ? sub : "");
    oidc *p = dir_fic_provider(c->d, iss);
    jwt v;
    char err[300];
    const char *token = form_get(c->r->body, P_CLIENT_ASSERTION);
    if (!p || oidc_verify(p, token, &v, err, sizeof err) != 0)
        return fail(e, 401, "invalid_client", 700027,
                    "Client assertion failed signature validation. [Reason - %s, issuer '%s']",
                    p ? err : "no provider", iss);
    jwt_clear(&v);
    if (!assertion_time(c, t, e)) return false;
    if (!fic_audience_ok(fic, t))
        return fail(e, 401, "invalid_client", 700212,
                    "No matching federated identity record found for presented assertion audience "
                    "'%s'.", jwt_claim_str(t, "aud") ? jwt_claim_str(t, "aud") : "");
    c->cred = "federated";
    return true;
}

static bool authenticate(tctx *c, bool allow_public, oerr *e)
{
    char *basic_id = NULL, *basic_secret = NULL;
    bool ok = false;
    const char *auth = c->r->authorization;
    if (auth && strncasecmp(auth, "Basic ", 6) == 0) {
        /* RFC 6749 §2.3.1: form-urlencoded id and secret, base64, colon between. */
        size_t n;
        unsigned char *raw = b64_decode(auth + 6, strlen(auth + 6), &n);
        char *colon = raw ? strchr((char *)raw, ':') : NULL;
        if (!colon) {
            free(raw);
            return fail(e, 401, "invalid_client", 7000218,
                        "The Authorization header is not valid HTTP Basic client authentication.");
        }
        *colon = '\0';
        form *f = form_parse((char *)raw, strlen((char *)raw));
        form *g = form_parse(colon + 1, strlen(colon + 1));
        basic_id = f && f->n ? xstrdup(f->name[0]) : xstrdup("");
        basic_secret = g && g->n ? xstrdup(g->name[0]) : xstrdup("");
        form_free(f);
        form_free(g);
        free(raw);
    }
    const char *id = param(c, P_CLIENT_ID), *secret = param(c, P_CLIENT_SECRET);
    const char *atype = param(c, P_ASSERTION_TYPE), *assertion = param(c, P_CLIENT_ASSERTION);
    if (basic_id) {
        if (id && strcasecmp(id, basic_id) != 0) {
            fail(e, 401, "invalid_client", 50148,
                 "The client_id in the request body does not match the one in the Authorization header.");
            goto end;
        }
        id = basic_id;
        if (!secret) secret = basic_secret;
    }
    if (!id) { missing(e, P_CLIENT_ID); goto end; }
    if (!(c->client = dir_app_find(c->d, id)) || !util_is_guid(id)) {
        c->client = NULL;
        fail(e, 400, "unauthorized_client", 700016,
             "Application with identifier '%s' was not found in the directory '%s'. This can happen "
             "if the application has not been installed by the administrator of the tenant or "
             "consented to by any user in the tenant. You may have sent your authentication request "
             "to the wrong tenant.", id, dir_tenant_id(c->d));
        goto end;
    }
    if (assertion) {
        if (!atype || strcmp(atype, JWT_BEARER) != 0) {
            fail(e, 400, "invalid_request", 90006,
                 "The client_assertion_type must be '" JWT_BEARER "'.");
            goto end;
        }
        jwt t;
        char err[256];
        if (jwt_decode(assertion, &t, err, sizeof err) != 0) {
            fail(e, 401, "invalid_client", 50013, "Assertion is malformed: %s.", err);
            goto end;
        }
        const char *alg = jwt_alg(&t), *iss = jwt_claim_str(&t, "iss");
        if (!alg || (strcmp(alg, "RS256") != 0 && strcmp(alg, "PS256") != 0))
            fail(e, 401, "invalid_client", 700027,
                 "Client assertion failed signature validation. [Reason - The signing algorithm "
                 "'%s' is not allowed; use RS256 or PS256.]", alg ? alg : "(none)");
        else if (is_issuer(c, iss))
            ok = issued_assertion(c, &t, e);
        else if (iss && strcasecmp(iss, c->client->app_id) == 0)
            ok = (c->cred = "certificate", cert_assertion(c, &t, e));
        else
            ok = federated_assertion(c, &t, e);
        jwt_clear(&t);
        c->acr = "2";
    } else if (secret) {
        if (!(ok = dir_app_secret_ok(c->client, secret)))
            fail(e, 401, "invalid_client", 7000215,
                 "Invalid client secret provided. Ensure the secret being sent in the request is the "
                 "client secret value, not the client secret ID, for a secret added to app '%s'.",
                 c->client->app_id);
        c->acr = "1";
        c->cred = "client_secret";
    } else if (allow_public && c->client->public_client) {
        c->acr = "0";
        c->cred = "none";
        ok = true;
    } else {
        fail(e, 401, "invalid_client", 7000218,
             "The request body must contain the following parameter: 'client_assertion' or "
             "'client_secret'.");
    }
end:
    free(basic_id);
    free(basic_secret);
    return ok;
}

/* ---- scope (one resource per request, as Entra requires) --------------------------------- */

static bool parse_scope(tctx *c, const char *scope, bool app_only, oerr *e)
{
    if (!scope) return missing(e, P_SCOPE);
    c->scopes = json_array();
    char *copy = xstrdup(scope), *save = NULL;
    bool ok = false;
    for (char *s = strtok_r(copy, " ", &save); s; s = strtok_r(NULL, " ", &save)) {
        if (!strcmp(s, "openid")) { c->openid = true; continue; }
        if (!strcmp(s, "profile")) { c->profile = true; continue; }
        if (!strcmp(s, "offline_access")) { c->offline = true; continue; }
        if (!strcmp(s, "email")) { c->email = true; continue; }
        /* "<resource>/<permission>"; a bare permission means Microsoft Graph, as in Entra. */
        char *slash = strrchr(s, '/');
        char *res = slash ? xstrndup(s, (size_t)(slash - s)) : xstrdup("https://graph.microsoft.com");
        const char *perm = slash ? slash + 1 : s;
        if (c->resource_name && strcasecmp(c->resource_name, res) != 0) {
            fail(e, 400, "invalid_scope", 28000,
                 "Provided value for the input parameter scope is not valid because it contains "
                 "more than one resource. Scope %s is not valid.", scope);
            free(res);
            goto end;
        }
        if (!c->resource_name) c->resource_name = res;
        else free(res);
        if (!(c->resource = dir_app_by_resource(c->d, c->resource_name))) {
            fail(e, 400, "invalid_resource", 500011,
                 "The resource principal named %s was not found in the tenant named %s. This can "
                 "happen if the application has not been installed by the administrator of the "
                 "tenant or consented to by any user in the tenant. You might have sent your "
                 "authentication request to the wrong tenant.", c->resource_name, dir_tenant_id(c->d));
            goto end;
        }
        if (strcmp(perm, ".default") == 0) {
            c->dflt = true;
        } else if (app_only) {
            fail(e, 400, "invalid_scope", 1002012,
                 "The provided value for scope %s is not valid. Client credential flows must have a "
                 "scope value with /.default suffixed to the resource identifier (application ID URI).",
                 s);
            goto end;
        } else if (!dir_app_has_scope(c->resource, perm)) {
            fail(e, 400, "invalid_scope", 70011,
                 "The provided value for the input parameter 'scope' isn't valid. The scope %s isn't "
                 "valid.", s);
            goto end;
        } else {
            json_array_append_new(c->scopes, json_string(perm));
        }
    }
    if (!c->resource) {
        if (app_only || !(c->resource = dir_app_by_resource(c->d, "https://graph.microsoft.com"))) {
            fail(e, 400, "invalid_scope", 70011,
                 "The provided value for the input parameter 'scope' isn't valid. The scope %s isn't "
                 "valid.", scope);
            goto end;
        }
        c->resource_name = xstrdup("https://graph.microsoft.com");
        c->dflt = true;
    }
    ok = true;
end:
    free(copy);
    return ok;
}

/* Delegated permissions the client may use on the resource for this request. */
static bool consented_scopes(tctx *c, json_t **out, oerr *e)
{
    json_t *granted = dir_consented_scopes(c->d, c->client->app_id, c->resource->app_id);
    size_t i;
    json_t *s;
    if (!c->dflt) {
        json_array_foreach(c->scopes, i, s) {
            if (!dir_consented(c->d, c->client->app_id, c->resource->app_id, json_string_value(s)))
                goto denied;
        }
        json_decref(granted);
        *out = json_deep_copy(c->scopes);
        return true;
    }
    if (json_array_size(granted) == 0) goto denied;
    *out = granted;
    return true;
denied:
    json_decref(granted);
    fail(e, 400, "invalid_grant", 65001,
         "The user or administrator has not consented to use the application with ID '%s' named "
         "'%s'. Send an interactive authorization request for this user and resource.",
         c->client->app_id, c->client->name);
    e->suberror = "consent_required";
    return false;
}

/* ---- minting ---------------------------------------------------------------------------- */

static json_t *base_claims(const tctx *c, int version, int64_t exp)
{
    /* The random claims uti, aio and rh (16, 36 and 30 bytes) come from one draw. */
    unsigned char rnd[16 + 36 + 30];
    util_random(rnd, sizeof rnd);
    char *uti = b64url_encode(rnd, 16), *aio = b64url_encode(rnd + 16, 36),
         *rh_raw = b64url_encode(rnd + 52, 30);
    char *rh = xasprintf("1.%s.", rh_raw);
    const char *aud = c->resource->app_id;
    /* v1 tokens carry the resource as it was asked for (an App ID URI); v2 the app id. */
    if (version == 1 && c->resource_name && !util_is_guid(c->resource_name)) aud = c->resource_name;
    json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:s, s:s, s:s}", "aud", aud, "iss",
                          version == 1 ? c->iss_v1 : c->iss_v2, "iat", (json_int_t)c->now, "nbf",
                          (json_int_t)c->now, "exp", (json_int_t)exp, "aio", aio, "rh", rh, "tid",
                          dir_tenant_id(c->d), "uti", uti, "ver", version == 1 ? "1.0" : "2.0");
    if (version == 1) json_object_set_new(o, "idp", json_string(c->iss_v1));
    free(uti);
    free(aio);
    free(rh_raw);
    free(rh);
    return o;
}

static void client_claims(const tctx *c, json_t *o, int version)
{
    json_object_set_new(o, version == 1 ? "appid" : "azp", json_string(c->client->app_id));
    json_object_set_new(o, version == 1 ? "appidacr" : "azpacr", json_string(c->acr));
    if (c->client->type == APP_AGENT_IDENTITY) {
        /* entra-protocol.md §2: 11 = AgentIdentity; the parent blueprint is named. */
        json_object_set_new(o, "xms_act_fct", json_string("11"));
        json_object_set_new(o, "xms_par_app_azp", json_string(c->client->parent));
    }
}

static char *sign(const tctx *c, json_t *claims, int version)
{
    const jwk *k = dir_signing_key(c->d);
    json_t *hdr = version == 1 && jwk_x5t(k) ? json_pack("{s:s}", "x5t", jwk_x5t(k)) : NULL;
    char err[256];
    char *tok = jwt_sign(k, hdr, claims, err, sizeof err);
    if (!tok) log_msg(LOG_ERROR, "sign_failed", "signing a token failed: %s", err);
    json_decref(hdr);
    return tok;
}

static json_t *token_response(const tctx *c, char *access_token, int64_t exp)
{
    json_int_t left = (json_int_t)(exp - c->now);
    /* jwt_sign writes base64url and dots: ASCII, so jansson's UTF-8 check of the ~1.3 KB
     * string ("s" in json_pack) is skipped. */
    json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:o}", "token_type", "Bearer", "expires_in", left,
                          "ext_expires_in", left, "refresh_in", left / 2, "access_token",
                          json_stringn_nocheck(access_token, strlen(access_token)));
    free(access_token);
    return o;
}

/* An app-only token for c->resource (client_credentials, including T1 and T2). */
static json_t *mint_app(tctx *c, const char *fmi_path, oerr *e)
{
    int64_t exp = c->now + dir_token_lifetime(c->d);
    int version = c->resource->token_version;
    json_t *o = base_claims(c, version, exp);
    client_claims(c, o, version);
    json_object_set_new(o, "idtyp", json_string("app"));
    json_object_set_new(o, "oid", json_string(c->client->object_id));
    if (fmi_path) {
        char *sub = fmi_subject(dir_tenant_id(c->d), c->client->app_id, fmi_path);
        json_object_set_new(o, "sub", json_string(sub));
        free(sub);
        json_object_set_new(o, "xms_act_fct", json_string("1 9"));
        json_object_set_new(o, "xms_sub_fct", json_string("1 9"));
    } else {
        json_object_set_new(o, "sub", json_string(c->client->object_id));
        if (c->client->type == APP_AGENT_IDENTITY)
            json_object_set_new(o, "xms_sub_fct", json_string("11"));
    }
    json_object_set_new(o, "xms_idrel", json_string("7"));
    json_t *roles = dir_app_roles(c->d, c->client->app_id, c->resource->app_id);
    if (json_array_size(roles)) json_object_set(o, "roles", roles);
    json_decref(roles);
    char *tok = sign(c, o, version);
    json_decref(o);
    if (!tok) return fail(e, 500, "server_error", 90033, "The token could not be signed."), NULL;
    return token_response(c, tok, exp);
}

static char *mint_refresh(const tctx *c, const dir_user *u, const char *scope)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I}", "typ", "refresh", "iss", c->iss_v2,
                          "aud", c->client->app_id, "oid", u->object_id, "scope", scope, "iat",
                          (json_int_t)c->now, "exp", (json_int_t)(c->now + REFRESH_LIFETIME_S));
    char *t = sign(c, o, 2);
    json_decref(o);
    return t;
}

/* A delegated token for user u, and the user-flow extras MSAL caches an account from:
 * scope, id_token, client_info (entra-protocol.md §1f, §3a). */
static json_t *mint_user(tctx *c, const dir_user *u, json_t *scp, bool agent_user, oerr *e)
{
    int64_t exp = c->now + dir_token_lifetime(c->d);
    int version = c->resource->token_version;
    json_t *o = base_claims(c, version, exp), *resp = NULL;
    char *sub = pairwise_sub(u->object_id, c->client->app_id);
    char *scp_str = NULL, *full = NULL, *tok = NULL;
    client_claims(c, o, version);
    json_object_set_new(o, "idtyp", json_string("user"));
    json_object_set_new(o, "oid", json_string(u->object_id));
    json_object_set_new(o, "sub", json_string(sub));
    json_object_set_new(o, "name", json_string(u->display_name));
    if (version == 1) {
        json_object_set_new(o, "upn", json_string(u->upn));
        json_object_set_new(o, "unique_name", json_string(u->upn));
    } else {
        json_object_set_new(o, "preferred_username", json_string(u->upn));
    }
    if (agent_user) json_object_set_new(o, "xms_sub_fct", json_string("13"));
    json_object_set_new(o, "xms_idrel", json_string("1"));
    /* scp: space-separated permission names; "scope" in the response: full names. */
    size_t i;
    json_t *s;
    size_t cap = 1, fcap = 1;
    json_array_foreach(scp, i, s) {
        cap += json_string_length(s) + 1;
        fcap += strlen(c->resource_name) + json_string_length(s) + 2;
    }
    fcap += 40;
    scp_str = xcalloc(1, cap);
    full = xcalloc(1, fcap);
    json_array_foreach(scp, i, s) {
        if (i) strcat(scp_str, " "), strcat(full, " ");
        strcat(scp_str, json_string_value(s));
        strcat(full, c->resource_name);
        strcat(full, "/");
        strcat(full, json_string_value(s));
    }
    json_object_set_new(o, "scp", json_string(scp_str));
    if (!(tok = sign(c, o, version))) {
        fail(e, 500, "server_error", 90033, "The token could not be signed.");
        goto end;
    }
    resp = token_response(c, tok, exp);
    if (c->openid) strcat(full, " openid");
    if (c->profile) strcat(full, " profile");
    if (c->email) strcat(full, " email");
    if (c->offline) strcat(full, " offline_access");
    json_object_set_new(resp, "scope", json_string(full));

    /* As Entra: an id_token only for the openid scope, client_info only for client_info=1
     * (MSAL sends both whenever it wants an account). */
    if (c->openid) {
        json_t *id = json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:s, s:s, s:s, s:s}", "aud",
                               c->client->app_id, "iss", c->iss_v2, "iat", (json_int_t)c->now, "nbf",
                               (json_int_t)c->now, "exp", (json_int_t)exp, "name", u->display_name,
                               "oid", u->object_id, "preferred_username", u->upn, "sub", sub, "tid",
                               dir_tenant_id(c->d), "ver", "2.0");
        if (c->nonce) json_object_set_new(id, "nonce", json_string(c->nonce));
        if (c->sid) json_object_set_new(id, "sid", json_string(c->sid));
        char *idt = sign(c, id, 2);
        json_decref(id);
        if (idt) json_object_set_new(resp, "id_token", json_string(idt));
        free(idt);
    }
    const char *want_ci = param(c, P_CLIENT_INFO);
    if (want_ci && strcmp(want_ci, "1") == 0) {
        char *ci_json = xasprintf("{\"uid\":\"%s\",\"utid\":\"%s\"}", u->object_id,
                                  dir_tenant_id(c->d));
        char *ci = b64url_encode(ci_json, strlen(ci_json));
        json_object_set_new(resp, "client_info", json_string(ci));
        free(ci_json);
        free(ci);
    }
    if (c->offline) {
        char *rt = mint_refresh(c, u, full);
        if (rt) json_object_set_new(resp, "refresh_token", json_string(rt));
        free(rt);
    }
end:
    json_decref(o);
    free(sub);
    free(scp_str);
    free(full);
    return resp;
}

/* ---- grants ----------------------------------------------------------------------------- */

static json_t *grant_client_credentials(tctx *c, oerr *e)
{
    if (!authenticate(c, false, e) || !parse_scope(c, param(c, P_SCOPE), true, e)) return NULL;
    const char *fmi = param(c, P_FMI_PATH);
    if (!fmi) fmi = c->r->fmi_path_query && *c->r->fmi_path_query ? c->r->fmi_path_query : NULL;
    if (fmi) {
        /* Agent ID leg 1: only a blueprint, only for token exchange, only for its own agents. */
        const dir_app *agent = dir_app_find(c->d, fmi);
        if (c->client->type != APP_AGENT_BLUEPRINT)
            return fail(e, 400, "unauthorized_client", 82001,
                        "fmi_path is only accepted from an agent identity blueprint; '%s' is not one.",
                        c->client->app_id), NULL;
        if (strcmp(c->resource->app_id, DIR_TOKEN_EXCHANGE_APPID) != 0)
            return fail(e, 400, "invalid_scope", 70011,
                        "The provided value for the input parameter 'scope' isn't valid. With "
                        "fmi_path the scope must be %s/.default.", DIR_TOKEN_EXCHANGE_URI), NULL;
        if (!agent || agent->type != APP_AGENT_IDENTITY || !util_is_guid(fmi))
            return fail(e, 400, "unauthorized_client", 700016,
                        "Application with identifier '%s' was not found in the directory '%s'. "
                        "fmi_path must name an agent identity.", fmi, dir_tenant_id(c->d)), NULL;
        if (strcasecmp(agent->parent, c->client->app_id) != 0)
            return fail(e, 400, "unauthorized_client", 82002,
                        "The agent identity '%s' is not a child of the agent identity blueprint "
                        "'%s'.", agent->app_id, c->client->app_id), NULL;
        c->fmi = agent->app_id;
        return mint_app(c, agent->app_id, e);
    }
    return mint_app(c, NULL, e);
}

/* The app a user assertion must be addressed to: the client itself or, for an agent
 * identity, its blueprint (entra-protocol.md §1c). */
static bool audience_is_self(const tctx *c, const char *aud)
{
    const dir_app *self = c->client->type == APP_AGENT_IDENTITY ? dir_app_find(c->d, c->client->parent)
                                                                 : c->client;
    return aud && self && (strcasecmp(aud, self->app_id) == 0 || dir_app_has_uri(self, aud));
}

static json_t *grant_user_fic(tctx *c, const char *cred, oerr *e);

static json_t *grant_obo(tctx *c, oerr *e)
{
    if (!authenticate(c, false, e)) return NULL;
    const char *use = param(c, P_TOKEN_USE), *assertion = param(c, P_ASSERTION);
    if (!use || strcmp(use, "on_behalf_of") != 0)
        return missing(e, P_TOKEN_USE), NULL;
    if (!assertion) return missing(e, P_ASSERTION), NULL;
    /* The older agent-user form: jwt-bearer with T2 as assertion and a username. */
    if (c->client->type == APP_AGENT_IDENTITY && (param(c, P_USERNAME) || param(c, P_USER_ID)))
        return grant_user_fic(c, assertion, e);
    jwt t;
    json_t *out = NULL, *scp = NULL;
    if (!verify_own(c, assertion, &t, e, 400, "invalid_grant", "user assertion")) return NULL;
    const char *idtyp = jwt_claim_str(&t, "idtyp"), *aud = jwt_claim_str(&t, "aud");
    const dir_user *u = dir_user_find(c->d, jwt_claim_str(&t, "oid"));
    if (!idtyp || strcmp(idtyp, "user") != 0)
        fail(e, 400, "invalid_grant", 50013,
             "Assertion is not a user token: on-behalf-of needs a token issued to a user.");
    else if (!audience_is_self(c, aud))
        fail(e, 400, "invalid_grant", 50013,
             "Assertion audience does not match the Client app presenting the assertion. The "
             "audience in the assertion was '%s' and the expected audience is '%s'.",
             aud ? aud : "", c->client->type == APP_AGENT_IDENTITY ? c->client->parent
                                                                    : c->client->app_id);
    else if (!u)
        fail(e, 400, "invalid_grant", 50034, "The user account does not exist in the directory.");
    else if (parse_scope(c, param(c, P_SCOPE), false, e) && consented_scopes(c, &scp, e))
        out = mint_user(c, u, scp, u->agent_identity != NULL, e);
    json_decref(scp);
    jwt_clear(&t);
    return out;
}

/* Agent user (entra-protocol.md §1d): T1 authenticates the agent, T2 proves it. */
static json_t *grant_user_fic(tctx *c, const char *cred, oerr *e)
{
    if (!c->client && !authenticate(c, false, e)) return NULL;
    if (c->client->type != APP_AGENT_IDENTITY)
        return fail(e, 400, "unauthorized_client", 82003,
                    "The user_fic grant is only for agent identities; '%s' is not one.",
                    c->client->app_id), NULL;
    if (!cred) return missing(e, P_USER_FIC), NULL;
    const char *username = param(c, P_USERNAME), *user_id = param(c, P_USER_ID);
    if (!username && !user_id) return missing(e, "username' or 'user_id"), NULL;
    jwt t;
    json_t *out = NULL, *scp = NULL;
    if (!verify_own(c, cred, &t, e, 400, "invalid_grant", "user_federated_identity_credential"))
        return NULL;
    const char *azp = jwt_claim_str(&t, "azp");
    const dir_user *u = dir_user_find(c->d, user_id ? user_id : username);
    if (!is_token_exchange(jwt_claim_str(&t, "aud")) || !azp ||
        strcasecmp(azp, c->client->app_id) != 0)
        fail(e, 400, "invalid_grant", 50013,
             "Assertion is invalid: user_federated_identity_credential must be a token the agent "
             "identity '%s' obtained for %s.", c->client->app_id, DIR_TOKEN_EXCHANGE_URI);
    else if (!u)
        fail(e, 400, "invalid_grant", 50034,
             "The user account %s does not exist in the %s directory.",
             user_id ? user_id : username, dir_tenant_id(c->d));
    else if (!u->agent_identity || strcasecmp(u->agent_identity, c->client->app_id) != 0)
        fail(e, 400, "invalid_grant", 82004,
             "The user %s is not an agent user of the agent identity '%s'.", u->upn,
             c->client->app_id);
    else if (parse_scope(c, param(c, P_SCOPE), false, e) && consented_scopes(c, &scp, e))
        out = mint_user(c, u, scp, true, e);
    json_decref(scp);
    jwt_clear(&t);
    return out;
}

static json_t *grant_password(tctx *c, oerr *e)
{
    if (!authenticate(c, true, e)) return NULL;
    const char *username = param(c, P_USERNAME), *password = param(c, P_PASSWORD);
    if (!username) return missing(e, P_USERNAME), NULL;
    if (!password) return missing(e, P_PASSWORD), NULL;
    const dir_user *u = dir_user_find(c->d, username);
    if (!u || !u->password || !util_streq_ct(u->password, password))
        return fail(e, 400, "invalid_grant", 50126,
                    "Error validating credentials due to invalid username or password."), NULL;
    json_t *scp = NULL, *out = NULL;
    if (parse_scope(c, param(c, P_SCOPE), false, e) && consented_scopes(c, &scp, e))
        out = mint_user(c, u, scp, u->agent_identity != NULL, e);
    json_decref(scp);
    return out;
}

/* RFC 7636 §4.6: S256 is BASE64URL(SHA256(verifier)); plain compares directly. */
static bool pkce_ok(const authz_code *ac, const char *verifier)
{
    if (!ac->challenge) return true;
    if (!verifier) return false;
    if (!strcmp(ac->challenge_method, "plain")) return util_streq_ct(ac->challenge, verifier);
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)verifier, strlen(verifier), d);
    char *enc = b64url_encode(d, sizeof d);
    bool ok = util_streq_ct(enc, ac->challenge);
    free(enc);
    return ok;
}

static json_t *grant_authorization_code(tctx *c, oerr *e)
{
    if (!authenticate(c, true, e)) return NULL;
    const char *code = param(c, "code"), *redirect = param(c, "redirect_uri");
    if (!code) return missing(e, "code"), NULL;
    authz_code ac = {0};
    json_t *out = NULL, *scp = NULL;
    const dir_user *u = NULL;
    if (!c->r->az || !authz_redeem(c->r->az, code, &ac)) {
        fail(e, 400, "invalid_grant", 70008,
             "The provided authorization code or refresh token has expired due to inactivity, was "
             "already redeemed, or was not issued by this issuer. Send a new interactive "
             "authorization request for this user and resource.");
    } else if (strcasecmp(ac.client_id, c->client->app_id) != 0) {
        fail(e, 400, "invalid_grant", 70000, "The provided authorization code was issued to another client.");
    } else if (!redirect || strcmp(redirect, ac.redirect_uri) != 0) {
        fail(e, 400, "invalid_grant", 50011,
             "The redirect URI '%s' does not match the one the authorization code was issued for.",
             redirect ? redirect : "");
    } else if (!pkce_ok(&ac, param(c, "code_verifier"))) {
        fail(e, 400, "invalid_grant", 501481,
             "The Code_Verifier does not match the code_challenge supplied in the authorization request.");
    } else if (!(u = dir_user_find(c->d, ac.user_oid))) {
        fail(e, 400, "invalid_grant", 50034, "The user account does not exist in the directory.");
    } else {
        c->nonce = ac.nonce;
        c->sid = ac.sid;
        const char *scope = param(c, P_SCOPE);
        if (parse_scope(c, scope ? scope : ac.scope, false, e) && consented_scopes(c, &scp, e))
            out = mint_user(c, u, scp, u->agent_identity != NULL, e);
    }
    json_decref(scp);
    authz_code_clear(&ac);
    return out;
}

static json_t *grant_refresh(tctx *c, oerr *e)
{
    if (!authenticate(c, true, e)) return NULL;
    const char *rt = param(c, P_REFRESH_TOKEN);
    if (!rt) return missing(e, P_REFRESH_TOKEN), NULL;
    jwt t;
    json_t *scp = NULL, *out = NULL;
    if (!verify_own(c, rt, &t, e, 400, "invalid_grant", "refresh_token")) {
        if (e->code == 500133)   /* Entra's code for a refresh token past its lifetime */
            fail(e, 400, "invalid_grant", 700082,
                 "The refresh token has expired. Sign in again to get a new one.");
        else                     /* malformed, or not signed by a published key */
            fail(e, 400, "invalid_grant", 9002313,
                 "Invalid request. Request is malformed or invalid: the refresh token is not valid.");
        return NULL;
    }
    const char *typ = jwt_claim_str(&t, "typ"), *aud = jwt_claim_str(&t, "aud");
    const dir_user *u = dir_user_find(c->d, jwt_claim_str(&t, "oid"));
    const char *scope = param(c, P_SCOPE);
    if (!typ || strcmp(typ, "refresh") != 0 || !aud || strcasecmp(aud, c->client->app_id) != 0)
        fail(e, 400, "invalid_grant", 9002313,
             "Invalid request. Request is malformed or invalid: the refresh token was not issued "
             "to this client.");
    else if (!u)
        fail(e, 400, "invalid_grant", 50034, "The user account does not exist in the directory.");
    else if (parse_scope(c, scope ? scope : jwt_claim_str(&t, "scope"), false, e) &&
             consented_scopes(c, &scp, e))
        out = mint_user(c, u, scp, u->agent_identity != NULL, e);
    json_decref(scp);
    jwt_clear(&t);
    return out;
}

/* RFC 8628 §3.4-3.5 with Entra's errors (entra-docs v2-oauth2-device-code.md): the client polls
 * until the person signs in on the page; then the same user token as the authorization code. */
static json_t *grant_device_code(tctx *c, oerr *e)
{
    if (!authenticate(c, true, e)) return NULL;
    const char *code = param(c, "device_code");
    if (!code) return missing(e, "device_code"), NULL;
    char *user = NULL, *scope = NULL;
    json_t *out = NULL, *scp = NULL;
    const dir_user *u = NULL;
    device_state st = c->r->dev ? device_poll(c->r->dev, code, c->client->app_id, &user, &scope)
                                : DEVICE_UNKNOWN;
    if (st == DEVICE_PENDING) {
        fail(e, 400, "authorization_pending", 70016,
             "OAuth 2.0 device flow error. Authorization is pending. Continue polling.");
    } else if (st == DEVICE_SLOW_DOWN) {
        fail(e, 400, "slow_down", 70016,
             "OAuth 2.0 device flow error. Authorization is pending, and the client polled again "
             "sooner than the interval. Poll less often.");
    } else if (st == DEVICE_DECLINED) {
        fail(e, 400, "authorization_declined", 65004,
             "UserDeclinedConsent - The user declined to sign in to the application on the device.");
    } else if (st == DEVICE_EXPIRED) {
        fail(e, 400, "expired_token", 70020,
             "The provided value for the input parameter 'device_code' is not valid. This device "
             "code has expired.");
    } else if (st == DEVICE_WRONG_CLIENT) {
        fail(e, 400, "invalid_grant", 70000,
             "The provided value for the input parameter 'device_code' is not valid: it was issued "
             "to another client.");
    } else if (st != DEVICE_APPROVED) {
        fail(e, 400, "invalid_grant", 70000,
             "The provided value for the input parameter 'device_code' is not valid: it was not "
             "issued by this issuer, or it was already redeemed.");
    } else if (!(u = dir_user_find(c->d, user))) {
        fail(e, 400, "invalid_grant", 50034, "The user account does not exist in the directory.");
    } else {
        const char *asked = param(c, P_SCOPE);
        if (parse_scope(c, asked ? asked : scope, false, e) && consented_scopes(c, &scp, e))
            out = mint_user(c, u, scp, u->agent_identity != NULL, e);
    }
    json_decref(scp);
    free(user);
    free(scope);
    return out;
}

/* ---- the endpoint ----------------------------------------------------------------------- */

char *token_issuer_v2(const char *base_url, const directory *d)
{
    return xasprintf("%s/%s/v2.0", base_url, dir_tenant_id(d));
}

char *token_issuer_v1(const char *base_url, const directory *d)
{
    return xasprintf("%s/%s/", base_url, dir_tenant_id(d));
}

/* Length of the valid UTF-8 sequence at p (as jansson checks it: no overlong forms, no
 * surrogates, nothing past U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *p)
{
    unsigned v;
    size_t n;
    if (p[0] < 0x80) return 1;
    if (p[0] >= 0xC2 && p[0] <= 0xDF) n = 2, v = p[0] & 0x1F;
    else if (p[0] >= 0xE0 && p[0] <= 0xEF) n = 3, v = p[0] & 0x0F;
    else if (p[0] >= 0xF0 && p[0] <= 0xF4) n = 4, v = p[0] & 0x07;
    else return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;   /* stops at the NUL too */
        v = v << 6 | (p[i] & 0x3F);
    }
    if ((n == 3 && (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF))) ||
        (n == 4 && (v < 0x10000 || v > 0x10FFFF)))
        return 0;
    return n;
}

/* Only what jwt_sign writes (base64url and dots): nothing JSON would escape. */
static bool jws_text(const char *s, size_t n)
{
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") == n;
}

char *token_answer_text(const json_t *answer, size_t *len)
{
    /* json_dumps checks and escapes every character of every string: for a token answer that
     * is mostly the 1.3 KB access token, and it cost more than the rest of the answer. Strings
     * of at least 64 characters that are JWS text go out as they are; the rest through jansson. */
    enum { MAX_RAW = 8 };
    const char *rk[MAX_RAW], *rv[MAX_RAW];
    size_t rvn[MAX_RAW], nraw = 0, n = 2;
    if (!json_is_object(answer)) return NULL;
    json_t *rest = json_object();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)answer, k, v) {
        size_t vn = json_string_length(v);
        if (nraw < MAX_RAW && json_is_string(v) && vn >= 64 && jws_text(k, strlen(k)) &&
            jws_text(json_string_value(v), vn)) {
            rk[nraw] = k;
            rv[nraw] = json_string_value(v);
            rvn[nraw++] = vn;
            n += strlen(k) + vn + 6;   /* "k":"v", */
        } else {
            json_object_set_nocheck(rest, k, v);
        }
    }
    bool more = json_object_size(rest) > 0;
    char *tail = json_dumps(rest, JSON_COMPACT);   /* "{...}" */
    json_decref(rest);
    if (!tail) return NULL;
    n += strlen(tail);
    char *out = xmalloc(n), *p = out;
    *p++ = '{';
    for (size_t i = 0; i < nraw; i++) {
        p += sprintf(p, "%s\"%s\":\"", i ? "," : "", rk[i]);
        memcpy(p, rv[i], rvn[i]);
        p += rvn[i];
        *p++ = '"';
    }
    if (more) p += sprintf(p, "%s%s", nraw ? "," : "", tail + 1);
    else p += sprintf(p, "}");
    free(tail);
    *len = (size_t)(p - out);
    return out;
}

json_t *token_error_json(const char *base_url, const char *error, int code, const char *suberror,
                         const char *correlation_id, const char *msg_in)
{
    char trace[37], corr[37], ts[32];
    /* Messages quote what the client sent (ids, scopes, tenants), and a JSON string must be
     * UTF-8: any other byte, or a character cut by truncation, becomes '?'. */
    char *msg = xstrdup(msg_in);
    for (unsigned char *p = (unsigned char *)msg; *p;) {
        size_t n = utf8_seq(p);
        if (n) p += n;
        else *p++ = '?';
    }
    util_guid(trace);
    if (correlation_id && util_is_guid(correlation_id)) snprintf(corr, sizeof corr, "%s", correlation_id);
    else util_guid(corr);
    util_fmt_time(util_now(), ts);
    char *desc = xasprintf("AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s", code,
                           msg, trace, corr, ts);
    char *uri = xasprintf("%s/error?code=%d", base_url, code);
    json_t *o = json_pack("{s:s, s:s, s:[i], s:s, s:s, s:s, s:s}", "error", error,
                          "error_description", desc, "error_codes", code, "timestamp", ts,
                          "trace_id", trace, "correlation_id", corr, "error_uri", uri);
    if (suberror) json_object_set_new(o, "suberror", json_string(suberror));
    free(desc);
    free(uri);
    free(msg);
    return o;
}

/* Add name = a copy of value to the request's log line (token_log in token.h). A NULL value,
 * a full list or a full buffer leaves the field out. */
static void tlog(token_log *l, const char *name, const char *value)
{
    size_t len = value ? strlen(value) + 1 : 0;
    if (!l || !value || l->n + 3 > sizeof l->fields / sizeof l->fields[0] || len > sizeof l->buf - l->used)
        return;
    char *copy = memcpy(l->buf + l->used, value, len);
    l->used += len;
    l->fields[l->n++] = name;
    l->fields[l->n++] = copy;
    l->fields[l->n] = NULL;
}

int token_endpoint(const token_req *r, json_t **out)
{
    tctx c = {.r = r, .d = r->dir, .now = util_now()};
    oerr e = {0};
    json_t *ok = NULL;
    c.iss_v2 = token_issuer_v2(r->base_url, r->dir);
    c.iss_v1 = token_issuer_v1(r->base_url, r->dir);
    /* msal-js sends client-request-id in the form body, MSAL.NET as a header. */
    c.corr = r->client_request_id ? r->client_request_id : form_get(r->body, "client-request-id");

    const char *gt = param(&c, P_GRANT_TYPE);
    if (!gt) {
        missing(&e, P_GRANT_TYPE);
    } else if (r->v1_endpoint && param(&c, P_RESOURCE) && !param(&c, P_SCOPE)) {
        fail(&e, 400, "invalid_request", 90008,
             "The v1 token endpoint is not served; use /oauth2/v2.0/token with scope=%s/.default.",
             param(&c, P_RESOURCE));
    } else if (!strcmp(gt, "client_credentials")) {
        ok = grant_client_credentials(&c, &e);
    } else if (!strcmp(gt, GRANT_JWT_BEARER) || !strcmp(gt, "jwt_bearer")) {
        ok = grant_obo(&c, &e);
    } else if (!strcmp(gt, "user_fic")) {
        ok = grant_user_fic(&c, param(&c, P_USER_FIC), &e);
    } else if (!strcmp(gt, "authorization_code")) {
        ok = grant_authorization_code(&c, &e);
    } else if (!strcmp(gt, "password")) {
        ok = grant_password(&c, &e);
    } else if (!strcmp(gt, "refresh_token")) {
        ok = grant_refresh(&c, &e);
    } else if (!strcmp(gt, GRANT_DEVICE_CODE) || !strcmp(gt, "device_code")) {
        ok = grant_device_code(&c, &e);   /* msal-js sends the short form */
    } else {
        fail(&e, 400, "unsupported_grant_type", 70003,
             "The app requested an unsupported grant type '%s'.", gt);
    }

    int status = 200;
    if (ok) {
        *out = ok;
        tlog(r->log, "token", "issued");
        tlog(r->log, "grant", gt);
        tlog(r->log, "client", c.client ? c.client->app_id : "-");
        tlog(r->log, "credential", c.cred ? c.cred : "-");
        tlog(r->log, "azpacr", c.acr ? c.acr : "-");
        tlog(r->log, "resource", c.resource ? c.resource->app_id : "-");
        tlog(r->log, "fmi_path", c.fmi);
    } else {
        status = e.status ? e.status : 500;
        *out = token_error_json(r->base_url, e.error ? e.error : "server_error", e.code, e.suberror,
                                c.corr, e.msg);
        char code[24];
        snprintf(code, sizeof code, "AADSTS%d", e.code);
        tlog(r->log, "token", "refused");
        tlog(r->log, "grant", gt ? gt : "-");
        tlog(r->log, "client", c.client ? c.client->app_id : (param(&c, P_CLIENT_ID) ? "unknown" : "-"));
        tlog(r->log, "aadsts", code);
    }
    json_decref(c.scopes);
    free(c.resource_name);
    free(c.iss_v2);
    free(c.iss_v1);
    return status;
}

int token_device_authorization(const token_req *r, json_t **out)
{
    tctx c = {.r = r, .d = r->dir, .now = util_now()};
    oerr e = {0};
    json_t *scp = NULL;
    char user_code[DEVICE_USER_CODE_LEN + 1], *device_code = NULL;
    c.iss_v2 = token_issuer_v2(r->base_url, r->dir);
    c.iss_v1 = token_issuer_v1(r->base_url, r->dir);
    c.corr = r->client_request_id ? r->client_request_id : form_get(r->body, "client-request-id");
    const char *scope = param(&c, P_SCOPE);
    int lifetime = dir_device_code_lifetime(r->dir), interval = dir_device_code_interval(r->dir);
    /* The page has no consent step, so a scope nobody consented to fails here, before anyone
     * signs in, and the grant checks again. */
    if (authenticate(&c, true, &e) && parse_scope(&c, scope, false, &e) &&
        consented_scopes(&c, &scp, &e) &&
        !(r->dev && device_start(r->dev, c.client->app_id, scope, lifetime, interval, user_code,
                                 &device_code)))
        fail(&e, 503, "temporarily_unavailable", 90033,
             "Too many device code sign-ins are pending. Try again later.");
    int status = 200;
    if (device_code) {
        char *uri = xasprintf("%s/devicelogin", r->base_url);
        char *msg = xasprintf("To sign in, use a web browser to open the page %s and enter the code "
                              "%s to authenticate.", uri, user_code);
        *out = json_pack("{s:s, s:s, s:s, s:i, s:i, s:s}", "user_code", user_code, "device_code",
                         device_code, "verification_uri", uri, "expires_in", lifetime, "interval",
                         interval, "message", msg);
        log_msg(LOG_INFO, "device_code_issued", "client=%s user_code=%s resource=%s",
                c.client->app_id, user_code, c.resource->app_id);
        free(uri);
        free(msg);
        free(device_code);
    } else {
        status = e.status ? e.status : 500;
        *out = token_error_json(r->base_url, e.error ? e.error : "server_error", e.code, e.suberror,
                                c.corr, e.msg);
        log_msg(LOG_INFO, "device_code_refused", "client=%s AADSTS%d",
                c.client ? c.client->app_id : (param(&c, P_CLIENT_ID) ? "unknown" : "-"), e.code);
    }
    json_decref(scp);
    json_decref(c.scopes);
    free(c.resource_name);
    free(c.iss_v2);
    free(c.iss_v1);
    return status;
}

int token_managed_identity(const directory *d, const char *base_url, const dir_app *mi,
                           const char *resource, json_t **out, token_log *log)
{
    form none = {0};
    token_req r = {.dir = d, .base_url = base_url, .body = &none};
    tctx c = {.r = &r, .d = d, .now = util_now(), .client = mi, .acr = "2"};
    oerr e = {0};
    json_t *ok = NULL;
    c.iss_v2 = token_issuer_v2(base_url, d);
    c.iss_v1 = token_issuer_v1(base_url, d);
    /* IMDS speaks v1: a resource, not a scope. */
    char *scope = xasprintf("%s%s.default", resource, util_str_ends_with(resource, "/") ? "" : "/");
    if (parse_scope(&c, scope, true, &e)) ok = mint_app(&c, NULL, &e);
    free(scope);
    int status = 200;
    if (ok) {
        /* The IMDS shape: every value a string, expires_on in epoch seconds (entra-protocol.md §3d). */
        json_int_t left = json_integer_value(json_object_get(ok, "expires_in"));
        char ein[24], eon[24], nb[24];
        snprintf(ein, sizeof ein, "%lld", (long long)left);
        snprintf(eon, sizeof eon, "%lld", (long long)(c.now + left));
        snprintf(nb, sizeof nb, "%lld", (long long)c.now);
        *out = json_pack("{s:O, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "access_token",
                         json_object_get(ok, "access_token"), "refresh_token", "", "expires_in", ein,
                         "expires_on", eon, "ext_expires_in", ein, "not_before", nb, "resource",
                         resource, "token_type", "Bearer", "client_id", mi->app_id);
        json_decref(ok);
        tlog(log, "token", "issued");
        tlog(log, "grant", "managed_identity");
        tlog(log, "client", mi->app_id);
        tlog(log, "resource", c.resource->app_id);
    } else {
        status = 400;
        *out = json_pack("{s:s, s:s}", "error", "invalid_resource", "error_description", e.msg);
    }
    json_decref(c.scopes);
    free(c.resource_name);
    free(c.iss_v2);
    free(c.iss_v1);
    return status;
}
