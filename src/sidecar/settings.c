/* settings — see settings.h. Keys and defaults follow Microsoft's sidecar
 * (shared docs sidecar-api.md §5); agentid's own additions live under Sidecar__. */
#include "sidecar/settings.h"

#include "core/log.h"
#include "core/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

const char *const SETTINGS_KEYS[] = {
    "AzureAd__Instance",
    "AzureAd__TenantId",
    "AzureAd__ClientId",
    "AzureAd__Audience",
    "AzureAd__Audiences__N",
    "AzureAd__Scopes",
    "AzureAd__ClientCredentials__N__SourceType",
    "AzureAd__ClientCredentials__N__ClientSecret",
    "AzureAd__ClientCredentials__N__CertificateDiskPath",
    "AzureAd__ClientCredentials__N__SignedAssertionFileDiskPath",
    "AzureAd__ClientCredentials__N__ManagedIdentityClientId",
    "DownstreamApis__{name}__BaseUrl",
    "DownstreamApis__{name}__Scopes__N",
    "DownstreamApis__{name}__RequestAppToken",
    "DownstreamApis__{name}__RelativePath",
    "DownstreamApis__{name}__HttpMethod",
    "DownstreamApis__{name}__ContentType",
    "DownstreamApis__{name}__AcceptHeader",
    "DownstreamApis__{name}__ExtraHeaderParameters__{header}",
    "DownstreamApis__{name}__ExtraQueryParameters__{param}",
    "Sidecar__AllowOverrides__GetAuthorizationHeader",
    "Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated",
    "Sidecar__AllowOverrides__CallDownstreamApi",
    "Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated",
    "Sidecar__AllowOutboundRedirects",
    "Sidecar__AllowNonLoopbackListen",
    "Sidecar__TokenCacheSize",
    "Sidecar__TimeoutMilliseconds",
    "ASPNETCORE_URLS",
    "SSL_CERT_FILE",
    "AZURE_FEDERATED_TOKEN_FILE",
    NULL,
};

const char *const SETTINGS_ROUTE_GATES[ROUTE_COUNT] = {
    [ROUTE_AUTH_HEADER] = "Sidecar__AllowOverrides__GetAuthorizationHeader",
    [ROUTE_AUTH_HEADER_UNAUTH] = "Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated",
    [ROUTE_DOWNSTREAM] = "Sidecar__AllowOverrides__CallDownstreamApi",
    [ROUTE_DOWNSTREAM_UNAUTH] = "Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated",
};

/* Microsoft's defaults (sidecar 1.1): overrides on for authenticated routes only. */
static const bool GATE_DEFAULT[ROUTE_COUNT] = {true, false, true, false};

static bool bad(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool bad(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return false;
}

static char *dup_or_null(const char *s) { return s && *s ? xstrdup(s) : NULL; }

static bool get_bool(const config *c, const char *key, bool dflt, bool *out, char *err, size_t errlen)
{
    bool ok;
    *out = config_bool(c, key, dflt, &ok);
    return ok || bad(err, errlen, "%s: must be true or false, not '%s'", key, config_get(c, key));
}

static bool get_long(const config *c, const char *key, long dflt, long min, long max, long *out,
                     char *err, size_t errlen)
{
    const char *v = config_get(c, key);
    *out = dflt;
    if (!v) return true;
    char *end;
    long n = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || n < min || n > max)
        return bad(err, errlen, "%s: must be a whole number from %ld to %ld, not '%s'", key, min, max, v);
    *out = n;
    return true;
}

static bool load_creds(settings *s, const config *c, char *err, size_t errlen)
{
    for (size_t i = 0;; i++) {
        char *k = xasprintf("AzureAd__ClientCredentials__%zu__SourceType", i);
        const char *type = config_get(c, k);
        free(k);
        if (!type) break;
        s->creds = xrealloc(s->creds, (i + 1) * sizeof *s->creds);
        cred_source *cr = &s->creds[i];
        memset(cr, 0, sizeof *cr);
        s->n_creds = i + 1;
#define FIELD(name) ({ char *_k = xasprintf("AzureAd__ClientCredentials__%zu__" name, i); \
                       const char *_v = config_get(c, _k); free(_k); _v; })
        if (!strcasecmp(type, "ClientSecret")) {
            cr->type = CRED_CLIENT_SECRET;
            if (!(cr->secret = dup_or_null(FIELD("ClientSecret"))))
                return bad(err, errlen, "AzureAd__ClientCredentials__%zu__ClientSecret: required for "
                           "SourceType ClientSecret", i);
        } else if (!strcasecmp(type, "Path")) {
            cr->type = CRED_CERTIFICATE_PATH;
            if (!(cr->path = dup_or_null(FIELD("CertificateDiskPath"))))
                return bad(err, errlen, "AzureAd__ClientCredentials__%zu__CertificateDiskPath: required "
                           "for SourceType Path", i);
            if (FIELD("CertificatePassword"))
                return bad(err, errlen, "AzureAd__ClientCredentials__%zu__CertificatePassword: "
                           "password-protected certificates are not supported; give an unencrypted "
                           "PEM file with the key and the certificate", i);
        } else if (!strcasecmp(type, "SignedAssertionFilePath")) {
            cr->type = CRED_SIGNED_ASSERTION_FILE;
            const char *p = FIELD("SignedAssertionFileDiskPath");
            if (!p) p = FIELD("SignedAssertionFilePath");   /* the key Microsoft's README uses */
            if (!p) p = getenv("AZURE_FEDERATED_TOKEN_FILE");
            if (!(cr->path = dup_or_null(p)))
                return bad(err, errlen, "AzureAd__ClientCredentials__%zu__SignedAssertionFileDiskPath: "
                           "required (or set AZURE_FEDERATED_TOKEN_FILE)", i);
        } else if (!strcasecmp(type, "SignedAssertionFromManagedIdentity")) {
            cr->type = CRED_MANAGED_IDENTITY;
            cr->mi_client_id = dup_or_null(FIELD("ManagedIdentityClientId"));
        } else {
            return bad(err, errlen, "AzureAd__ClientCredentials__%zu__SourceType: '%s' is not supported "
                       "(use ClientSecret, Path, SignedAssertionFilePath or "
                       "SignedAssertionFromManagedIdentity)", i, type);
        }
#undef FIELD
    }
    return true;
}

static void pairs(const config *c, const char *prefix, char ***names, char ***values)
{
    const char **kids;
    size_t n = config_children(c, prefix, &kids);
    *names = xcalloc(n + 1, sizeof **names);
    *values = xcalloc(n + 1, sizeof **values);
    for (size_t i = 0; i < n; i++) {
        char *k = xasprintf("%s__%s", prefix, kids[i]);
        (*names)[i] = xstrdup(kids[i]);
        (*values)[i] = xstrdup(config_get(c, k) ? config_get(c, k) : "");
        free(k);
    }
    free(kids);
}

static bool load_apis(settings *s, const config *c, char *err, size_t errlen)
{
    const char **names;
    s->n_apis = config_children(c, "DownstreamApis", &names);
    s->apis = xcalloc(s->n_apis + 1, sizeof *s->apis);
    bool ok = true;
    for (size_t i = 0; i < s->n_apis && ok; i++) {
        downstream_api *a = &s->apis[i];
        a->name = xstrdup(names[i]);
#define KEY(f) xasprintf("DownstreamApis__%s__" f, a->name)
        char *k = KEY("BaseUrl");
        a->base_url = dup_or_null(config_get(c, k));
        if (a->base_url && strncmp(a->base_url, "http://", 7) && strncmp(a->base_url, "https://", 8))
            ok = bad(err, errlen, "%s: must be an http:// or https:// URL", k);
        free(k);
        k = KEY("Scopes");
        config_list(c, k, &a->scopes);
        free(k);
        k = KEY("RequestAppToken");
        if (ok) ok = get_bool(c, k, false, &a->request_app_token, err, errlen);
        free(k);
        k = KEY("RelativePath"); a->relative_path = dup_or_null(config_get(c, k)); free(k);
        k = KEY("HttpMethod"); a->http_method = dup_or_null(config_get(c, k)); free(k);
        k = KEY("ContentType"); a->content_type = dup_or_null(config_get(c, k)); free(k);
        k = KEY("AcceptHeader"); a->accept = dup_or_null(config_get(c, k)); free(k);
        k = KEY("ExtraHeaderParameters");
        pairs(c, k, &a->extra_header_names, &a->extra_header_values);
        free(k);
        k = KEY("ExtraQueryParameters");
        pairs(c, k, &a->extra_query_names, &a->extra_query_values);
        free(k);
#undef KEY
        static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"};
        bool m = !a->http_method;
        for (size_t j = 0; j < ARRAY_LEN(methods) && !m; j++) m = !strcasecmp(a->http_method, methods[j]);
        if (ok && !m)
            ok = bad(err, errlen, "DownstreamApis__%s__HttpMethod: '%s' is not an HTTP method", a->name,
                     a->http_method);
    }
    free(names);
    return ok;
}

/* ASPNETCORE_URLS: "http://+:5000;http://localhost:5001" — the first URL is used. */
static bool listen_from_urls(settings *s, const char *urls, char *err, size_t errlen)
{
    char *first = xstrndup(urls, strcspn(urls, ";"));
    bool ok = false;
    if (strncmp(first, "http://", 7) != 0) {
        bad(err, errlen, "ASPNETCORE_URLS: '%s' must be an http:// URL (the sidecar speaks plain HTTP on "
            "loopback)", first);
        goto end;
    }
    char *hp = first + 7, *slash = strchr(hp, '/');
    if (slash) *slash = '\0';
    char *colon = strrchr(hp, ':');
    const char *port = colon ? colon + 1 : "80";
    if (colon) *colon = '\0';
    const char *host = hp;
    if (!strcmp(host, "+") || !strcmp(host, "*") || !strcmp(host, "0.0.0.0") || !strcmp(host, "[::]")) {
        if (!s->allow_non_loopback) {
            log_msg(LOG_WARN, "listen_narrowed",
                    "ASPNETCORE_URLS asks for every interface; listening on 127.0.0.1 only. Set "
                    "Sidecar__AllowNonLoopbackListen=true to bind every interface.");
            host = "127.0.0.1";
        } else {
            host = "0.0.0.0";
        }
    } else if (!strcmp(host, "localhost")) {
        host = "127.0.0.1";
    }
    s->listen = xasprintf("%s:%s", host, port);
    ok = true;
end:
    free(first);
    return ok;
}

static bool is_loopback(const char *listen)
{
    return !strncmp(listen, "127.", 4) || !strncmp(listen, "[::1]", 5) || !strncmp(listen, "localhost:", 10);
}

settings *settings_load(const config *c, const char *listen_flag, char *err, size_t errlen)
{
    settings *s = xcalloc(1, sizeof *s);
    const char *v;
    long n;
    s->instance = xstrdup((v = config_get(c, "AzureAd__Instance")) ? v : "https://login.microsoftonline.com/");
    s->tenant_id = dup_or_null(config_get(c, "AzureAd__TenantId"));
    s->client_id = dup_or_null(config_get(c, "AzureAd__ClientId"));
    if (!s->tenant_id) { bad(err, errlen, "AzureAd__TenantId: required"); goto fail; }
    if (!s->client_id) { bad(err, errlen, "AzureAd__ClientId: required"); goto fail; }
    if (strncmp(s->instance, "https://", 8) != 0 && strncmp(s->instance, "http://", 7) != 0) {
        bad(err, errlen, "AzureAd__Instance: must be an https:// URL, not '%s'", s->instance);
        goto fail;
    }
    config_list(c, "AzureAd__Audiences", &s->audiences);
    if ((v = config_get(c, "AzureAd__Audience"))) {
        size_t k = 0;
        while (s->audiences[k]) k++;
        s->audiences = xrealloc(s->audiences, (k + 2) * sizeof *s->audiences);
        s->audiences[k] = xstrdup(v);
        s->audiences[k + 1] = NULL;
    }
    config_list(c, "AzureAd__Scopes", &s->scopes);
    if (!load_creds(s, c, err, errlen) || !load_apis(s, c, err, errlen)) goto fail;
    for (int r = 0; r < ROUTE_COUNT; r++)
        if (!get_bool(c, SETTINGS_ROUTE_GATES[r], GATE_DEFAULT[r], &s->allow_overrides[r], err, errlen))
            goto fail;
    if (!get_bool(c, "Sidecar__AllowOutboundRedirects", false, &s->allow_redirects, err, errlen) ||
        !get_bool(c, "Sidecar__AllowNonLoopbackListen", false, &s->allow_non_loopback, err, errlen))
        goto fail;
    if (!get_long(c, "Sidecar__TokenCacheSize", 10000, 1, 10000000, &n, err, errlen)) goto fail;
    s->cache_size = (size_t)n;
    if (!get_long(c, "Sidecar__TimeoutMilliseconds", 10000, 100, 600000, &s->timeout_ms, err, errlen))
        goto fail;
    if ((v = config_get(c, "SSL_CERT_FILE")) && *v) {
        if (access(v, R_OK) != 0) {
            bad(err, errlen, "SSL_CERT_FILE: cannot read '%s'", v);
            goto fail;
        }
        s->ca_file = xstrdup(v);
    }
    if (listen_flag) {
        s->listen = xstrdup(listen_flag);
    } else if ((v = config_get(c, "ASPNETCORE_URLS")) && *v) {
        if (!listen_from_urls(s, v, err, errlen)) goto fail;
    } else {
        s->listen = xstrdup("127.0.0.1:5000");
    }
    if (!is_loopback(s->listen)) {
        if (!s->allow_non_loopback) {
            bad(err, errlen, "--listen: %s is not a loopback address; the sidecar hands out tokens to "
                "whoever can reach it. Set Sidecar__AllowNonLoopbackListen=true if you really mean it",
                s->listen);
            goto fail;
        }
        log_msg(LOG_WARN, "listen_non_loopback",
                "listening on %s: anyone who can reach this address can get tokens (only loopback "
                "callers are served, except /healthz)", s->listen);
    }
    return s;
fail:
    settings_free(s);
    return NULL;
}

static void free_list(char **l)
{
    for (char **p = l; p && *p; p++) free(*p);
    free(l);
}

void settings_free(settings *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n_creds; i++) {
        free(s->creds[i].secret);
        free(s->creds[i].path);
        free(s->creds[i].mi_client_id);
    }
    free(s->creds);
    for (size_t i = 0; i < s->n_apis; i++) {
        downstream_api *a = &s->apis[i];
        free(a->name);
        free(a->base_url);
        free_list(a->scopes);
        free(a->relative_path);
        free(a->http_method);
        free(a->content_type);
        free(a->accept);
        free_list(a->extra_header_names);
        free_list(a->extra_header_values);
        free_list(a->extra_query_names);
        free_list(a->extra_query_values);
    }
    free(s->apis);
    free_list(s->audiences);
    free_list(s->scopes);
    free(s->instance);
    free(s->tenant_id);
    free(s->client_id);
    free(s->listen);
    free(s->ca_file);
    free(s);
}

const downstream_api *settings_api(const settings *s, const char *name)
{
    for (size_t i = 0; i < s->n_apis; i++)
        if (!strcasecmp(s->apis[i].name, name)) return &s->apis[i];
    return NULL;
}
