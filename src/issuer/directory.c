/* directory — see directory.h. */
#include "issuer/directory.h"

#include "core/util.h"
#include "jose/pki.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define DIR_MAX_BYTES (4 * 1024 * 1024)

typedef struct {
    const char *client, *resource;   /* app_ids */
    const json_t *values;            /* scopes or roles */
} grant;

struct directory {
    atomic_int refs;
    char *path;
    json_t *root;
    json_t *builtin;                 /* the AzureADTokenExchange app */
    dir_app *apps;
    size_t n_apps;
    dir_user *users;
    size_t n_users;
    grant *consents, *roles;
    size_t n_consents, n_roles;
    jwk *signing;
    jwks *keys;
    char *tls_cert, *tls_key, *tls_ca;
    oidc **providers;                /* external federated-credential issuers */
    char **provider_iss;
    size_t n_providers;
};

/* ---- loading ---------------------------------------------------------------------------- */

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static char *join(const char *dir, const char *rel)
{
    return rel[0] == '/' ? xstrdup(rel) : xasprintf("%s/%s", dir, rel);
}

static char *read_rel(const directory *d, const char *rel, char *err, size_t errlen)
{
    char *p = join(d->path, rel);
    char *s = util_read_file(p, 1 << 20, NULL);
    if (!s) seterr(err, errlen, "%s: %s", p, strerror(errno));
    free(p);
    return s;
}

/* A string field; required or optional. */
static bool str_field(const json_t *o, const char *k, bool required, const char **out,
                      const char *where, char *err, size_t errlen)
{
    const json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) {
        *out = NULL;
        if (required) seterr(err, errlen, DIR_FILE ": %s.%s: missing", where, k);
        return !required;
    }
    if (!json_is_string(v) || json_string_length(v) == 0) {
        seterr(err, errlen, DIR_FILE ": %s.%s: must be a non-empty string", where, k);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static bool str_array(const json_t *o, const char *k, const char *where, char *err, size_t errlen)
{
    const json_t *v = json_object_get(o, k);
    if (!v) return true;
    if (!json_is_array(v)) {
        seterr(err, errlen, DIR_FILE ": %s.%s: must be an array of strings", where, k);
        return false;
    }
    size_t i;
    const json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_string(e)) {
            seterr(err, errlen, DIR_FILE ": %s.%s[%zu]: must be a string", where, k, i);
            return false;
        }
    }
    return true;
}

static bool load_app(directory *d, const json_t *o, dir_app *a, const char *where, char *err,
                     size_t errlen)
{
    const char *type = NULL;
    a->json = o;
    if (!json_is_object(o)) {
        seterr(err, errlen, DIR_FILE ": %s: must be an object", where);
        return false;
    }
    if (!str_field(o, "name", true, &a->name, where, err, errlen) ||
        !str_field(o, "app_id", true, &a->app_id, where, err, errlen) ||
        !str_field(o, "object_id", false, &a->object_id, where, err, errlen) ||
        !str_field(o, "type", false, &type, where, err, errlen) ||
        !str_field(o, "parent", false, &a->parent, where, err, errlen))
        return false;
    if (!util_is_guid(a->app_id)) {
        seterr(err, errlen, DIR_FILE ": %s.app_id: must be a GUID", where);
        return false;
    }
    if (!a->object_id) a->object_id = a->app_id;
    if (!type || strcmp(type, "application") == 0) a->type = APP_APPLICATION;
    else if (strcmp(type, "agent_blueprint") == 0) a->type = APP_AGENT_BLUEPRINT;
    else if (strcmp(type, "agent_identity") == 0) a->type = APP_AGENT_IDENTITY;
    else if (strcmp(type, "managed_identity") == 0) a->type = APP_MANAGED_IDENTITY;
    else {
        seterr(err, errlen,
               DIR_FILE ": %s.type: must be application, agent_blueprint, agent_identity or "
               "managed_identity", where);
        return false;
    }
    if (a->type == APP_AGENT_IDENTITY && !a->parent) {
        seterr(err, errlen, DIR_FILE ": %s.parent: an agent_identity needs its blueprint", where);
        return false;
    }
    static const char *const arrays[] = {"identifier_uris", "scopes", "app_roles", "secrets",
                                         "certificates", "redirect_uris"};
    for (size_t i = 0; i < ARRAY_LEN(arrays); i++)
        if (!str_array(o, arrays[i], where, err, errlen)) return false;
    const json_t *v = json_object_get(o, "access_token_version");
    a->token_version = v ? (int)json_integer_value(v) : 2;
    if (a->token_version != 1 && a->token_version != 2) {
        seterr(err, errlen, DIR_FILE ": %s.access_token_version: must be 1 or 2", where);
        return false;
    }
    a->public_client = json_is_true(json_object_get(o, "public_client"));
    const json_t *fics = json_object_get(o, "federated_credentials");
    if (fics && !json_is_array(fics)) {
        seterr(err, errlen, DIR_FILE ": %s.federated_credentials: must be an array", where);
        return false;
    }
    for (size_t i = 0; i < json_array_size(fics); i++) {
        char fw[96];
        const char *fi, *fs;
        snprintf(fw, sizeof fw, "%s.federated_credentials[%zu]", where, i);
        const json_t *f = json_array_get(fics, i);
        if (!json_is_object(f) || !str_field(f, "issuer", true, &fi, fw, err, errlen) ||
            !str_field(f, "subject", true, &fs, fw, err, errlen) || !str_array(f, "audiences", fw, err, errlen)) {
            if (!json_is_object(f)) seterr(err, errlen, DIR_FILE ": %s: must be an object", fw);
            return false;
        }
        if (strncmp(fi, "https://", 8) != 0 && strncmp(fi, "http://127.", 11) != 0 &&
            strncmp(fi, "http://localhost", 16) != 0) {
            seterr(err, errlen, DIR_FILE ": %s.issuer: must be an https:// URL (http only on loopback)", fw);
            return false;
        }
        bool known = false;
        for (size_t j = 0; j < d->n_providers && !known; j++) known = !strcmp(d->provider_iss[j], fi);
        if (!known) {
            d->providers = xrealloc(d->providers, (d->n_providers + 1) * sizeof *d->providers);
            d->provider_iss = xrealloc(d->provider_iss, (d->n_providers + 1) * sizeof *d->provider_iss);
            /* OpenID Connect Discovery §4: {issuer}/.well-known/openid-configuration. */
            char *meta = xasprintf("%s%s.well-known/openid-configuration", fi,
                                   util_str_ends_with(fi, "/") ? "" : "/");
            d->providers[d->n_providers] = oidc_new(meta, getenv("SSL_CERT_FILE"), 5000);
            d->provider_iss[d->n_providers++] = xstrdup(fi);
            free(meta);
        }
    }

    const json_t *certs = json_object_get(o, "certificates");
    a->n_certs = json_array_size(certs);
    a->certs = xcalloc(a->n_certs, sizeof *a->certs);
    for (size_t i = 0; i < a->n_certs; i++) {
        char *pem = read_rel(d, json_string_value(json_array_get(certs, i)), err, errlen);
        if (!pem) return false;
        dir_cert *c = &a->certs[i];
        c->x5t = pki_cert_thumbprint(pem, false, err, errlen);
        c->x5t_s256 = pki_cert_thumbprint(pem, true, err, errlen);
        c->key = jwk_from_pem(pem, NULL, err, errlen);
        free(pem);
        if (!c->x5t || !c->x5t_s256 || !c->key) return false;
    }
    return true;
}

static bool load_grants(directory *d, const char *field, const char *values, grant **out,
                        size_t *n, char *err, size_t errlen)
{
    const json_t *arr = json_object_get(d->root, field);
    if (!arr) return true;
    if (!json_is_array(arr)) {
        seterr(err, errlen, DIR_FILE ": %s: must be an array", field);
        return false;
    }
    *n = json_array_size(arr);
    *out = xcalloc(*n, sizeof **out);
    for (size_t i = 0; i < *n; i++) {
        const json_t *g = json_array_get(arr, i);
        char where[64];
        snprintf(where, sizeof where, "%s[%zu]", field, i);
        const char *client, *resource;
        if (!json_is_object(g) || !str_field(g, "client", true, &client, where, err, errlen) ||
            !str_field(g, "resource", true, &resource, where, err, errlen) ||
            !str_array(g, values, where, err, errlen)) {
            if (!json_is_object(g)) seterr(err, errlen, DIR_FILE ": %s: must be an object", where);
            return false;
        }
        const dir_app *c = dir_app_find(d, client), *r = dir_app_find(d, resource);
        if (!r) r = dir_app_by_resource(d, resource);
        if (!c || !r) {
            seterr(err, errlen, DIR_FILE ": %s.%s: no application '%s'", where,
                   c ? "resource" : "client", c ? resource : client);
            return false;
        }
        (*out)[i] = (grant){c->app_id, r->app_id, json_object_get(g, values)};
    }
    return true;
}

static bool load_keys(directory *d, char *err, size_t errlen)
{
    const json_t *arr = json_object_get(d->root, "signing_keys");
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        seterr(err, errlen, DIR_FILE ": signing_keys: needs at least one key");
        return false;
    }
    jwk **pub = xcalloc(json_array_size(arr), sizeof *pub);
    size_t n = 0;
    bool ok = false;
    size_t i;
    const json_t *k;
    json_array_foreach(arr, i, k) {
        char where[64];
        snprintf(where, sizeof where, "signing_keys[%zu]", i);
        const char *kid, *key, *cert, *status;
        if (!str_field(k, "kid", true, &kid, where, err, errlen) ||
            !str_field(k, "key", true, &key, where, err, errlen) ||
            !str_field(k, "cert", true, &cert, where, err, errlen) ||
            !str_field(k, "status", false, &status, where, err, errlen))
            goto end;
        if (!status) status = "active";
        if (strcmp(status, "retired") == 0) continue;
        bool active = strcmp(status, "active") == 0;
        if (!active && strcmp(status, "published") != 0) {
            seterr(err, errlen, DIR_FILE ": %s.status: must be active, published or retired", where);
            goto end;
        }
        char *kpem = read_rel(d, key, err, errlen), *cpem = kpem ? read_rel(d, cert, err, errlen) : NULL;
        jwk *j = cpem ? jwk_from_pem(kpem, kid, err, errlen) : NULL;
        if (j && jwk_set_cert(j, cpem, err, errlen) != 0) { jwk_unref(j); j = NULL; }
        free(kpem);
        free(cpem);
        if (!j) goto end;
        pub[n++] = j;
        if (active) {                      /* the last active key signs */
            if (d->signing) jwk_unref(d->signing);
            d->signing = jwk_ref(j);
        }
    }
    if (!d->signing) {
        seterr(err, errlen, DIR_FILE ": signing_keys: no key has status \"active\"");
        goto end;
    }
    d->keys = jwks_from_keys(pub, n);
    ok = true;
end:
    for (size_t j = 0; j < n; j++) jwk_unref(pub[j]);
    free(pub);
    return ok;
}

directory *dir_load(const char *dir, char *err, size_t errlen)
{
    directory *d = xcalloc(1, sizeof *d);
    atomic_init(&d->refs, 1);
    char real[PATH_MAX];
    d->path = xstrdup(realpath(dir, real) ? real : dir);
    char *file = join(d->path, DIR_FILE);
    json_error_t je;
    d->root = json_load_file(file, JSON_REJECT_DUPLICATES, &je);
    if (!d->root) {
        if (access(file, F_OK) != 0)
            seterr(err, errlen, "%s: no directory here; create one with `agentid issuer init --dir %s`",
                   file, dir);
        else
            seterr(err, errlen, "%s:%d:%d: %s", file, je.line, je.column, je.text);
        free(file);
        goto fail;
    }
    free(file);
    const char *tid;
    if (!json_is_object(d->root) || !str_field(d->root, "tenant_id", true, &tid, "$", err, errlen))
        goto fail;
    if (!util_is_guid(tid)) {
        seterr(err, errlen, DIR_FILE ": tenant_id: must be a GUID");
        goto fail;
    }
    const char *dummy;
    if (!str_field(d->root, "public_url", false, &dummy, "$", err, errlen) ||
        !str_array(d->root, "domains", "$", err, errlen))
        goto fail;

    /* Applications, then the built-in token-exchange resource every tenant has. */
    const json_t *apps = json_object_get(d->root, "applications");
    if (apps && !json_is_array(apps)) {
        seterr(err, errlen, DIR_FILE ": applications: must be an array");
        goto fail;
    }
    d->n_apps = json_array_size(apps);
    d->apps = xcalloc(d->n_apps + 1, sizeof *d->apps);
    for (size_t i = 0; i < d->n_apps; i++) {
        char where[64];
        snprintf(where, sizeof where, "applications[%zu]", i);
        if (!load_app(d, json_array_get(apps, i), &d->apps[i], where, err, errlen)) goto fail;
        for (size_t j = 0; j < i; j++)
            if (strcasecmp(d->apps[j].app_id, d->apps[i].app_id) == 0) {
                seterr(err, errlen, DIR_FILE ": %s.app_id: duplicate of applications[%zu]", where, j);
                goto fail;
            }
    }
    d->builtin = json_pack("{s:s, s:s, s:[s], s:i}", "name", "AAD Token Exchange Endpoint",
                           "app_id", DIR_TOKEN_EXCHANGE_APPID, "identifier_uris",
                           DIR_TOKEN_EXCHANGE_URI, "access_token_version", 2);
    if (!load_app(d, d->builtin, &d->apps[d->n_apps], "builtin", err, errlen)) goto fail;
    d->n_apps++;
    for (size_t i = 0; i < d->n_apps; i++) {
        const dir_app *a = &d->apps[i], *p;
        if (a->type == APP_AGENT_IDENTITY &&
            (!(p = dir_app_find(d, a->parent)) || p->type != APP_AGENT_BLUEPRINT)) {
            seterr(err, errlen, DIR_FILE ": applications[%zu].parent: '%s' is not an agent_blueprint",
                   i, a->parent);
            goto fail;
        }
    }

    const json_t *users = json_object_get(d->root, "users");
    if (users && !json_is_array(users)) {
        seterr(err, errlen, DIR_FILE ": users: must be an array");
        goto fail;
    }
    d->n_users = json_array_size(users);
    d->users = xcalloc(d->n_users, sizeof *d->users);
    for (size_t i = 0; i < d->n_users; i++) {
        char where[64];
        snprintf(where, sizeof where, "users[%zu]", i);
        dir_user *u = &d->users[i];
        u->json = json_array_get(users, i);
        if (!json_is_object(u->json) ||
            !str_field(u->json, "object_id", true, &u->object_id, where, err, errlen) ||
            !str_field(u->json, "user_principal_name", true, &u->upn, where, err, errlen) ||
            !str_field(u->json, "display_name", false, &u->display_name, where, err, errlen) ||
            !str_field(u->json, "password", false, &u->password, where, err, errlen) ||
            !str_field(u->json, "agent_identity", false, &u->agent_identity, where, err, errlen)) {
            if (!json_is_object(u->json)) seterr(err, errlen, DIR_FILE ": %s: must be an object", where);
            goto fail;
        }
        if (!util_is_guid(u->object_id)) {
            seterr(err, errlen, DIR_FILE ": %s.object_id: must be a GUID", where);
            goto fail;
        }
        if (!u->display_name) u->display_name = u->upn;
        const dir_app *ai;
        if (u->agent_identity) {
            if (!(ai = dir_app_find(d, u->agent_identity)) || ai->type != APP_AGENT_IDENTITY) {
                seterr(err, errlen, DIR_FILE ": %s.agent_identity: '%s' is not an agent_identity",
                       where, u->agent_identity);
                goto fail;
            }
            u->agent_identity = ai->app_id;
        }
    }
    if (!load_grants(d, "consents", "scopes", &d->consents, &d->n_consents, err, errlen) ||
        !load_grants(d, "app_role_assignments", "roles", &d->roles, &d->n_roles, err, errlen) ||
        !load_keys(d, err, errlen))
        goto fail;

    const json_t *tls = json_object_get(d->root, "tls");
    if (tls) {
        const char *c, *k, *ca;
        if (!str_field(tls, "cert", true, &c, "tls", err, errlen) ||
            !str_field(tls, "key", true, &k, "tls", err, errlen) ||
            !str_field(tls, "ca_cert", false, &ca, "tls", err, errlen))
            goto fail;
        d->tls_cert = join(d->path, c);
        d->tls_key = join(d->path, k);
        d->tls_ca = ca ? join(d->path, ca) : NULL;
    }
    return d;
fail:
    dir_unref(d);
    return NULL;
}

directory *dir_ref(directory *d)
{
    atomic_fetch_add(&d->refs, 1);
    return d;
}

void dir_unref(directory *d)
{
    if (!d || atomic_fetch_sub(&d->refs, 1) != 1) return;
    for (size_t i = 0; i < d->n_apps; i++) {
        for (size_t j = 0; j < d->apps[i].n_certs; j++) {
            free(d->apps[i].certs[j].x5t);
            free(d->apps[i].certs[j].x5t_s256);
            if (d->apps[i].certs[j].key) jwk_unref(d->apps[i].certs[j].key);
        }
        free(d->apps[i].certs);
    }
    free(d->apps);
    free(d->users);
    free(d->consents);
    free(d->roles);
    if (d->signing) jwk_unref(d->signing);
    if (d->keys) jwks_unref(d->keys);
    json_decref(d->builtin);
    json_decref(d->root);
    free(d->tls_cert);
    free(d->tls_key);
    free(d->tls_ca);
    for (size_t i = 0; i < d->n_providers; i++) {
        oidc_free(d->providers[i]);
        free(d->provider_iss[i]);
    }
    free(d->providers);
    free(d->provider_iss);
    free(d->path);
    free(d);
}

/* ---- lookups ---------------------------------------------------------------------------- */

const char *dir_path(const directory *d) { return d->path; }
const char *dir_tenant_id(const directory *d)
{
    return json_string_value(json_object_get(d->root, "tenant_id"));
}

bool dir_is_tenant(const directory *d, const char *name)
{
    if (strcasecmp(name, dir_tenant_id(d)) == 0) return true;
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(d->root, "domains"), i, v)
        if (strcasecmp(name, json_string_value(v)) == 0) return true;
    return false;
}

size_t dir_domain_count(const directory *d)
{
    return json_array_size(json_object_get(d->root, "domains"));
}

const char *dir_domain_at(const directory *d, size_t i)
{
    return json_string_value(json_array_get(json_object_get(d->root, "domains"), i));
}

int dir_token_lifetime(const directory *d)
{
    json_int_t v = json_integer_value(json_object_get(d->root, "token_lifetime_seconds"));
    return v >= 300 && v <= 86400 ? (int)v : 3600;
}

int dir_device_code_interval(const directory *d)
{
    json_int_t v = json_integer_value(json_object_get(d->root, "device_code_interval_seconds"));
    return v >= 1 && v <= 60 ? (int)v : 5;
}

int dir_device_code_lifetime(const directory *d)
{
    json_int_t v = json_integer_value(json_object_get(d->root, "device_code_lifetime_seconds"));
    return v >= 1 && v <= 3600 ? (int)v : 900;
}

const char *dir_public_url(const directory *d)
{
    return json_string_value(json_object_get(d->root, "public_url"));
}

const dir_app *dir_app_find(const directory *d, const char *id)
{
    if (!id) return NULL;
    for (size_t i = 0; i < d->n_apps; i++)
        if (strcasecmp(d->apps[i].app_id, id) == 0) return &d->apps[i];
    for (size_t i = 0; i < d->n_apps; i++)
        if (strcmp(d->apps[i].name, id) == 0) return &d->apps[i];
    return NULL;
}

static bool in_list(const json_t *arr, const char *s, bool nocase)
{
    size_t i;
    const json_t *v;
    json_array_foreach(arr, i, v) {
        const char *e = json_string_value(v);
        if (e && (nocase ? strcasecmp(e, s) : strcmp(e, s)) == 0) return true;
    }
    return false;
}

const dir_app *dir_app_by_resource(const directory *d, const char *resource)
{
    if (!resource) return NULL;
    for (size_t i = 0; i < d->n_apps; i++) {
        const dir_app *a = &d->apps[i];
        if (strcasecmp(a->app_id, resource) == 0 || dir_app_has_uri(a, resource)) return a;
    }
    return NULL;
}

size_t dir_app_count(const directory *d) { return d->n_apps; }
const dir_app *dir_app_at(const directory *d, size_t i) { return i < d->n_apps ? &d->apps[i] : NULL; }

bool dir_app_secret_ok(const dir_app *a, const char *secret)
{
    bool ok = false;
    size_t i;
    const json_t *v;
    /* Compare against every secret, constant time each, so timing says nothing. */
    json_array_foreach(json_object_get(a->json, "secrets"), i, v)
        ok |= util_streq_ct(json_string_value(v), secret);
    return ok;
}

bool dir_app_has_scope(const dir_app *a, const char *scope)
{
    return in_list(json_object_get(a->json, "scopes"), scope, false);
}

bool dir_app_has_uri(const dir_app *a, const char *uri)
{
    /* Entra matches identifier URIs case-insensitively and ignores a trailing slash. */
    size_t n = strlen(uri);
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(a->json, "identifier_uris"), i, v) {
        const char *e = json_string_value(v);
        size_t m = strlen(e);
        while (m && e[m - 1] == '/') m--;
        size_t k = n;
        while (k && uri[k - 1] == '/') k--;
        if (k == m && strncasecmp(e, uri, m) == 0) return true;
    }
    return false;
}

const json_t *dir_app_list(const dir_app *a, const char *field)
{
    const json_t *v = json_object_get(a->json, field);
    return json_is_array(v) ? v : NULL;
}

const dir_cert *dir_app_cert(const dir_app *a, const char *x5t, const char *x5t_s256)
{
    for (size_t i = 0; i < a->n_certs; i++) {
        if (x5t && strcmp(a->certs[i].x5t, x5t) == 0) return &a->certs[i];
        if (x5t_s256 && strcmp(a->certs[i].x5t_s256, x5t_s256) == 0) return &a->certs[i];
    }
    return NULL;
}

const dir_app *dir_managed_identity(const directory *d, const char *client_id, const char *object_id,
                                    const char *res_id)
{
    const char *name = res_id ? strrchr(res_id, '/') : NULL;
    name = name ? name + 1 : res_id;
    for (size_t i = 0; i < d->n_apps; i++) {
        const dir_app *a = &d->apps[i];
        if (a->type != APP_MANAGED_IDENTITY) continue;
        if ((!client_id && !object_id && !name) || (client_id && !strcasecmp(a->app_id, client_id)) ||
            (object_id && !strcasecmp(a->object_id, object_id)) || (name && !strcasecmp(a->name, name)))
            return a;
    }
    return NULL;
}

const char *dir_identity_header(const directory *d)
{
    return json_string_value(json_object_get(d->root, "managed_identity_header"));
}

oidc *dir_fic_provider(const directory *d, const char *issuer)
{
    for (size_t i = 0; issuer && i < d->n_providers; i++)
        if (!strcmp(d->provider_iss[i], issuer)) return d->providers[i];
    return NULL;
}

const dir_user *dir_user_find(const directory *d, const char *id)
{
    if (!id) return NULL;
    for (size_t i = 0; i < d->n_users; i++)
        if (strcasecmp(d->users[i].object_id, id) == 0 || strcasecmp(d->users[i].upn, id) == 0)
            return &d->users[i];
    return NULL;
}

static const json_t *find_grant(const grant *g, size_t n, const char *client, const char *resource)
{
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(g[i].client, client) == 0 && strcasecmp(g[i].resource, resource) == 0)
            return g[i].values;
    return NULL;
}

bool dir_consented(const directory *d, const char *client, const char *resource, const char *scope)
{
    return in_list(find_grant(d->consents, d->n_consents, client, resource), scope, false);
}

json_t *dir_consented_scopes(const directory *d, const char *client, const char *resource)
{
    const json_t *v = find_grant(d->consents, d->n_consents, client, resource);
    return v ? json_deep_copy(v) : json_array();
}

json_t *dir_app_roles(const directory *d, const char *client, const char *resource)
{
    const json_t *v = find_grant(d->roles, d->n_roles, client, resource);
    return v ? json_deep_copy(v) : json_array();
}

const jwk *dir_signing_key(const directory *d) { return d->signing; }
const jwks *dir_keys(const directory *d) { return d->keys; }
const char *dir_tls_cert(const directory *d) { return d->tls_cert; }
const char *dir_tls_key(const directory *d) { return d->tls_key; }
const char *dir_tls_ca(const directory *d) { return d->tls_ca; }

/* ---- init and key rotation -------------------------------------------------------------- */

static int put(const char *dir, const char *rel, const char *data, unsigned mode, char *err,
               size_t errlen)
{
    char *p = join(dir, rel);
    int rc = util_write_file(p, data, strlen(data), mode);
    if (rc != 0) seterr(err, errlen, "%s: %s", p, strerror(errno));
    free(p);
    return rc;
}

static int save_root(const char *dir, const json_t *root, char *err, size_t errlen)
{
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    size_t n = strlen(s);
    s = xrealloc(s, n + 2);
    memcpy(s + n, "\n", 2);
    int rc = put(dir, DIR_FILE, s, 0600, err, errlen);
    free(s);
    return rc;
}

/* A fresh signing key keys/signing-N.{key,crt}; kid = x5t, as Entra's keys are named. */
static json_t *new_signing_key(const char *dir, int n, char *err, size_t errlen)
{
    json_t *entry = NULL;
    char *key = pki_rsa_generate(2048, err, errlen), *cert = NULL, *kid = NULL;
    char kfile[64], cfile[64], created[32];
    if (!key) goto end;
    pki_cert_spec spec = {.subject_cn = "agentid issuer token signing", .key_pem = key, .days = 3650};
    if (!(cert = pki_cert_create(&spec, err, errlen))) goto end;
    if (!(kid = pki_cert_thumbprint(cert, false, err, errlen))) goto end;
    snprintf(kfile, sizeof kfile, "keys/signing-%d.key", n);
    snprintf(cfile, sizeof cfile, "keys/signing-%d.crt", n);
    if (put(dir, kfile, key, 0600, err, errlen) || put(dir, cfile, cert, 0644, err, errlen)) goto end;
    util_fmt_time(util_now(), created);
    entry = json_pack("{s:s, s:s, s:s, s:s, s:s}", "kid", kid, "key", kfile, "cert", cfile,
                      "status", "active", "created", created);
end:
    free(key);
    free(cert);
    free(kid);
    return entry;
}

static char *secret(size_t n)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char r[64];
    char *s = xmalloc(n + 1);
    util_random(r, n);
    for (size_t i = 0; i < n; i++) s[i] = alpha[r[i] % (sizeof alpha - 1)];
    s[n] = '\0';
    return s;
}

static int make_dirs(const char *dir, char *err, size_t errlen)
{
    const char *sub[] = {"", "/keys", "/tls"};
    for (size_t i = 0; i < ARRAY_LEN(sub); i++) {
        char *p = xasprintf("%s%s", dir, sub[i]);
        int rc = mkdir(p, 0700);
        if (rc != 0 && errno != EEXIST) {
            seterr(err, errlen, "%s: %s", p, strerror(errno));
            free(p);
            return -1;
        }
        free(p);
    }
    return 0;
}

/* TLS for 127.0.0.1/localhost: a local CA, and a server certificate it signs. */
static int make_tls(const char *dir, char *err, size_t errlen)
{
    int rc = -1;
    char *ca_key = NULL, *ca = NULL, *key = NULL, *cert = NULL;
    if (!(ca_key = pki_rsa_generate(2048, err, errlen))) goto end;
    pki_cert_spec cs = {.subject_cn = "agentid local CA", .key_pem = ca_key, .is_ca = true, .days = 3650};
    if (!(ca = pki_cert_create(&cs, err, errlen))) goto end;
    if (!(key = pki_rsa_generate(2048, err, errlen))) goto end;
    pki_cert_spec ss = {.subject_cn = "localhost", .key_pem = key, .issuer_cert_pem = ca,
                        .issuer_key_pem = ca_key, .server = true, .days = 825};
    if (!(cert = pki_cert_create(&ss, err, errlen))) goto end;
    if (put(dir, "tls/ca.key", ca_key, 0600, err, errlen) ||
        put(dir, "tls/ca.crt", ca, 0644, err, errlen) ||
        put(dir, "tls/server.key", key, 0600, err, errlen) ||
        put(dir, "tls/server.crt", cert, 0644, err, errlen))
        goto end;
    rc = 0;
end:
    free(ca_key);
    free(ca);
    free(key);
    free(cert);
    return rc;
}

/* The blueprint's certificate credential: keys/blueprint.{key,crt}, and blueprint.pem with
 * both, the form Azure Identity's ClientCertificateCredential reads. */
static int make_client_cert(const char *dir, const char *name, char *err, size_t errlen)
{
    int rc = -1;
    char *key = pki_rsa_generate(2048, err, errlen), *cert = NULL, *both = NULL;
    char rel[96];
    if (!key) goto end;
    pki_cert_spec spec = {.subject_cn = name, .key_pem = key, .days = 730};
    if (!(cert = pki_cert_create(&spec, err, errlen))) goto end;
    both = xasprintf("%s%s", key, cert);
    snprintf(rel, sizeof rel, "keys/%s.key", name);
    if (put(dir, rel, key, 0600, err, errlen)) goto end;
    snprintf(rel, sizeof rel, "keys/%s.crt", name);
    if (put(dir, rel, cert, 0644, err, errlen)) goto end;
    snprintf(rel, sizeof rel, "keys/%s.pem", name);
    if (put(dir, rel, both, 0600, err, errlen)) goto end;
    rc = 0;
end:
    free(key);
    free(cert);
    free(both);
    return rc;
}

/* Seed 003's resource apps (the LLM and the MCP server, v1 tokens: gateway rules read appid)
 * and the agent identity's consent to each, added where missing by name. True if root changed. */
static bool add_gateway_apps(json_t *root)
{
    json_t *apps = json_object_get(root, "applications"), *consents = json_object_get(root, "consents");
    if (!json_is_array(apps)) json_object_set_new(root, "applications", apps = json_array());
    if (!json_is_array(consents)) json_object_set_new(root, "consents", consents = json_array());
    bool changed = false, have_llm = false, have_mcp = false;
    size_t i;
    json_t *a;
    json_array_foreach(apps, i, a) {
        const char *name = json_string_value(json_object_get(a, "name"));
        if (name && !strcmp(name, DIR_LLM_APP)) have_llm = true;
        if (name && !strcmp(name, DIR_MCP_APP)) have_mcp = true;
    }
    char id[37], oid[37];
    if (!have_llm) {
        util_guid(id);
        util_guid(oid);
        json_array_append_new(apps, json_pack("{s:s, s:s, s:s, s:[s], s:[s], s:i}", "name", DIR_LLM_APP,
                                              "app_id", id, "object_id", oid, "identifier_uris",
                                              DIR_LLM_URI, "scopes", DIR_LLM_SCOPE, "access_token_version", 1));
        changed = true;
    }
    if (!have_mcp) {
        util_guid(id);
        util_guid(oid);
        char *uri = xasprintf("api://%s", id);
        json_array_append_new(apps, json_pack("{s:s, s:s, s:s, s:[s], s:[s], s:i}", "name", DIR_MCP_APP,
                                              "app_id", id, "object_id", oid, "identifier_uris", uri,
                                              "scopes", DIR_MCP_SCOPE, "access_token_version", 1));
        free(uri);
        changed = true;
    }
    static const char *const want[][2] = {{DIR_LLM_APP, DIR_LLM_SCOPE}, {DIR_MCP_APP, DIR_MCP_SCOPE}};
    for (size_t k = 0; k < ARRAY_LEN(want); k++) {
        bool found = false;
        json_array_foreach(consents, i, a) {
            const char *c = json_string_value(json_object_get(a, "client"));
            const char *r = json_string_value(json_object_get(a, "resource"));
            if (c && r && !strcmp(c, "Weather Agent") && !strcmp(r, want[k][0])) found = true;
        }
        if (!found) {
            json_array_append_new(consents, json_pack("{s:s, s:s, s:[s]}", "client", "Weather Agent",
                                                      "resource", want[k][0], "scopes", want[k][1]));
            changed = true;
        }
    }
    return changed;
}

int dir_init(const char *dir, bool force, char *err, size_t errlen)
{
    int rc = -1;
    json_t *root = NULL, *sk = NULL;
    char *file = join(dir, DIR_FILE);
    char *bp_secret = secret(40), *api_secret = secret(40), *pw = secret(16);
    char tid[37], bp[37], agent[37], api[37], spa[37], cli[37], alice[37], agent_user[37],
        bp_oid[37], api_oid[37], spa_oid[37], cli_oid[37];
    if (!force && access(file, F_OK) == 0) {
        seterr(err, errlen, "%s exists; use --force to replace it (this discards its keys)", file);
        goto end;
    }
    if (make_dirs(dir, err, errlen) || make_tls(dir, err, errlen) ||
        make_client_cert(dir, "blueprint", err, errlen) || !(sk = new_signing_key(dir, 1, err, errlen)))
        goto end;
    char *ids[] = {tid, bp, agent, api, spa, cli, alice, agent_user, bp_oid, api_oid, spa_oid, cli_oid};
    for (size_t i = 0; i < ARRAY_LEN(ids); i++) util_guid(ids[i]);
    char *bp_uri = xasprintf("api://%s", bp), *api_uri = xasprintf("api://%s", api);

    root = json_pack(
        "{s:i, s:s, s:[s], s:n, s:i, s:[o], s:{s:s, s:s, s:s, s:s},"
        " s:["
        "  {s:s, s:s, s:s, s:s, s:[s], s:[s], s:[s], s:[s], s:i},"              /* blueprint */
        "  {s:s, s:s, s:s, s:s},"                                               /* agent */
        "  {s:s, s:s, s:s, s:[s], s:[s], s:[s], s:[s], s:i},"                   /* weather API */
        "  {s:s, s:s, s:s, s:[s, s, s, s], s:b},"                               /* SPA */
        "  {s:s, s:s, s:s, s:b, s:[s]},"                                        /* CLI */
        "  {s:s, s:s, s:[s], s:[s], s:[s], s:i}"                                /* Graph */
        " ],"
        " s:[{s:s, s:s, s:s, s:s}, {s:s, s:s, s:s, s:s}],"
        " s:[{s:s, s:s, s:[s]}, {s:s, s:s, s:[s]}, {s:s, s:s, s:[s]}, {s:s, s:s, s:[s]},"
        "    {s:s, s:s, s:[s]}, {s:s, s:s, s:[s]}],"
        " s:[{s:s, s:s, s:[s]}, {s:s, s:s, s:[s]}]}",
        "format", 1, "tenant_id", tid, "domains", "agentid.local", "public_url",
        "token_lifetime_seconds", 3600, "signing_keys", sk,
        "tls", "ca_cert", "tls/ca.crt", "ca_key", "tls/ca.key", "cert", "tls/server.crt", "key",
        "tls/server.key",
        "applications",
        "name", "Weather Agent Blueprint", "type", "agent_blueprint", "app_id", bp, "object_id", bp_oid,
        "identifier_uris", bp_uri, "scopes", "access_as_user", "secrets", bp_secret, "certificates",
        "keys/blueprint.crt", "access_token_version", 2,
        "name", "Weather Agent", "type", "agent_identity", "app_id", agent, "parent", bp,
        "name", "Weather API", "app_id", api, "object_id", api_oid, "identifier_uris", api_uri,
        "scopes", "Weather.Read", "app_roles", "Weather.Read.All", "secrets", api_secret,
        "access_token_version", 2,
        "name", "Chat SPA", "app_id", spa, "object_id", spa_oid, "redirect_uris",
        "http://localhost:3003", "http://127.0.0.1:3003", "http://localhost:3003/redirect.html",
        "http://127.0.0.1:3003/redirect.html", "public_client", 1,
        "name", "agentid CLI", "app_id", cli, "object_id", cli_oid, "public_client", 1,
        "redirect_uris", "http://localhost",
        "name", "Microsoft Graph", "app_id", "00000003-0000-0000-c000-000000000000",
        "identifier_uris", "https://graph.microsoft.com", "scopes", "User.Read", "app_roles",
        "User.Read.All", "access_token_version", 1,
        "users",
        "object_id", alice, "user_principal_name", "alice@agentid.local", "display_name",
        "Alice Demo", "password", pw,
        "object_id", agent_user, "user_principal_name", "weather-agent-user@agentid.local",
        "display_name", "Weather Agent User", "agent_identity", agent,
        "consents",
        "client", "Chat SPA", "resource", "Weather Agent Blueprint", "scopes", "access_as_user",
        "client", "agentid CLI", "resource", "Weather Agent Blueprint", "scopes", "access_as_user",
        "client", "Weather Agent", "resource", "Weather API", "scopes", "Weather.Read",
        "client", "Weather Agent", "resource", "Microsoft Graph", "scopes", "User.Read",
        "client", "Weather Agent Blueprint", "resource", "Weather API", "scopes", "Weather.Read",
        "client", "Weather Agent Blueprint", "resource", "Microsoft Graph", "scopes", "User.Read",
        "app_role_assignments",
        "client", "Weather Agent", "resource", "Weather API", "roles", "Weather.Read.All",
        "client", "Weather Agent Blueprint", "resource", "Weather API", "roles", "Weather.Read.All");
    sk = NULL; /* stolen by "o" */
    free(bp_uri);
    free(api_uri);
    if (!root) {
        seterr(err, errlen, "internal error building " DIR_FILE);
        goto end;
    }
    add_gateway_apps(root);
    /* The "higher environment" of seed 004: a managed identity on the agent's host, trusted by
     * the blueprint through a federated credential, so no secret is needed at all. The issuer
     * URL assumes the default listen address; edit it if the issuer runs elsewhere. */
    char mi[37], mi_oid[37];
    util_guid(mi);
    util_guid(mi_oid);
    char *self = xasprintf("https://127.0.0.1:8443/%s/v2.0", tid), *ih = secret(32);
    json_array_append_new(json_object_get(root, "applications"),
                          json_pack("{s:s, s:s, s:s, s:s}", "name", "Weather Agent Host", "type",
                                    "managed_identity", "app_id", mi, "object_id", mi_oid));
    json_object_set_new(json_array_get(json_object_get(root, "applications"), 0), "federated_credentials",
                        json_pack("[{s:s, s:s, s:s, s:[s]}]", "name", "agent-host-managed-identity",
                                  "issuer", self, "subject", mi_oid, "audiences", DIR_TOKEN_EXCHANGE_URI));
    json_object_set_new(root, "managed_identity_header", json_string(ih));
    free(self);
    free(ih);
    rc = save_root(dir, root, err, errlen);
end:
    json_decref(sk);
    json_decref(root);
    free(file);
    free(bp_secret);
    free(api_secret);
    free(pw);
    return rc;
}

int dir_rotate_keys(const char *dir, bool retire_old, char new_kid[64], char *err, size_t errlen)
{
    int rc = -1;
    char *file = join(dir, DIR_FILE);
    json_error_t je;
    json_t *root = json_load_file(file, JSON_REJECT_DUPLICATES, &je), *keys, *k;
    directory *check = NULL;
    if (!root) {
        seterr(err, errlen, "%s:%d:%d: %s", file, je.line, je.column, je.text);
        goto end;
    }
    if (!json_is_array(keys = json_object_get(root, "signing_keys"))) {
        seterr(err, errlen, DIR_FILE ": signing_keys: must be an array");
        goto end;
    }
    size_t i;
    if (retire_old) {
        /* Retire every key that only verifies; the active one keeps signing. */
        json_array_foreach(keys, i, k) {
            const char *st = json_string_value(json_object_get(k, "status"));
            if (st && strcmp(st, "active") == 0)
                snprintf(new_kid, 64, "%s", json_string_value(json_object_get(k, "kid")));
            else
                json_object_set_new(k, "status", json_string("retired"));
        }
    } else {
        json_array_foreach(keys, i, k) {
            const char *st = json_string_value(json_object_get(k, "status"));
            if (!st || strcmp(st, "active") == 0)
                json_object_set_new(k, "status", json_string("published"));
        }
        /* Name the new key after the first free number, so files never collide. */
        int n = (int)json_array_size(keys) + 1;
        char rel[PATH_MAX];
        for (;; n++) {
            snprintf(rel, sizeof rel, "%s/keys/signing-%d.key", dir, n);
            if (access(rel, F_OK) != 0) break;
        }
        json_t *nk = new_signing_key(dir, n, err, errlen);
        if (!nk) goto end;
        snprintf(new_kid, 64, "%s", json_string_value(json_object_get(nk, "kid")));
        json_array_append_new(keys, nk);
    }
    if (save_root(dir, root, err, errlen) != 0) goto end;
    /* Prove the result loads before reporting success. */
    if (!(check = dir_load(dir, err, errlen))) goto end;
    rc = 0;
end:
    dir_unref(check);
    json_decref(root);
    free(file);
    return rc;
}

int dir_ensure_redirect_uris(const char *dir, const char *app, const char *const *uris, char *err,
                             size_t errlen)
{
    int rc = -1;
    char *file = join(dir, DIR_FILE);
    json_error_t je;
    json_t *root = json_load_file(file, JSON_REJECT_DUPLICATES, &je), *a;
    size_t i;
    bool changed = false;
    if (!root) {
        seterr(err, errlen, "%s:%d:%d: %s", file, je.line, je.column, je.text);
        goto end;
    }
    json_array_foreach(json_object_get(root, "applications"), i, a) {
        const char *name = json_string_value(json_object_get(a, "name"));
        if (!name || strcmp(name, app) != 0) continue;
        json_t *list = json_object_get(a, "redirect_uris");
        if (!json_is_array(list)) json_object_set_new(a, "redirect_uris", list = json_array());
        for (const char *const *u = uris; *u; u++)
            if (!in_list(list, *u, false)) {
                json_array_append_new(list, json_string(*u));
                changed = true;
            }
    }
    rc = changed ? (save_root(dir, root, err, errlen) == 0 ? 1 : -1) : 0;
end:
    json_decref(root);
    free(file);
    return rc;
}

int dir_ensure_gateway_apps(const char *dir, const char *issuer_base, char *err, size_t errlen)
{
    int rc = -1;
    char *file = join(dir, DIR_FILE), *fic_issuer = NULL;
    json_error_t je;
    json_t *root = json_load_file(file, JSON_REJECT_DUPLICATES, &je), *a, *bp = NULL, *host = NULL;
    size_t i;
    if (!root) {
        seterr(err, errlen, "%s:%d:%d: %s", file, je.line, je.column, je.text);
        goto end;
    }
    bool changed = add_gateway_apps(root);
    json_array_foreach(json_object_get(root, "applications"), i, a) {
        const char *name = json_string_value(json_object_get(a, "name"));
        const char *type = json_string_value(json_object_get(a, "type"));
        if (name && type && !strcmp(name, "Weather Agent Blueprint") && !strcmp(type, "agent_blueprint")) bp = a;
        if (name && type && !strcmp(name, "Weather Agent Host") && !strcmp(type, "managed_identity")) host = a;
    }
    const char *sub = json_string_value(json_object_get(host, "object_id"));
    const char *tid = json_string_value(json_object_get(root, "tenant_id"));
    if (issuer_base && tid) fic_issuer = xasprintf("%s/%s/v2.0", issuer_base, tid);
    if (fic_issuer && bp && sub) {
        json_t *fics = json_object_get(bp, "federated_credentials"), *f;
        if (!json_is_array(fics)) json_object_set_new(bp, "federated_credentials", fics = json_array());
        bool found = false;
        json_array_foreach(fics, i, f) {
            const char *fi = json_string_value(json_object_get(f, "issuer"));
            const char *fs = json_string_value(json_object_get(f, "subject"));
            if (fi && fs && !strcmp(fi, fic_issuer) && !strcmp(fs, sub)) found = true;
        }
        if (!found) {
            char *name = xasprintf("agent-host-managed-identity-%zu", json_array_size(fics) + 1);
            json_array_append_new(fics, json_pack("{s:s, s:s, s:s, s:[s]}", "name", name, "issuer", fic_issuer,
                                                  "subject", sub, "audiences", DIR_TOKEN_EXCHANGE_URI));
            free(name);
            changed = true;
        }
    }
    rc = changed ? (save_root(dir, root, err, errlen) == 0 ? 1 : -1) : 0;
end:
    json_decref(root);
    free(file);
    free(fic_issuer);
    return rc;
}
