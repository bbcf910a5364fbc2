/* settings — the sidecar's configuration, with Microsoft's keys (AzureAd__*, DownstreamApis__*,
 * Sidecar__*), read from appsettings.json and the environment (the environment wins).
 *
 * SETTINGS_KEYS lists every key agentid reads; docs/sidecar.md documents each one and a test
 * checks that it does.
 *
 * Contract: settings_load() validates everything; the first bad setting stops it with one
 * line "<Key>: <what is wrong>" in err. The result is immutable and thread-safe to read.
 */
#ifndef AGENTID_SIDECAR_SETTINGS_H
#define AGENTID_SIDECAR_SETTINGS_H

#include "core/config.h"

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    CRED_CLIENT_SECRET,
    CRED_CERTIFICATE_PATH,          /* SourceType "Path" */
    CRED_SIGNED_ASSERTION_FILE,     /* SourceType "SignedAssertionFilePath" */
    CRED_MANAGED_IDENTITY,          /* SourceType "SignedAssertionFromManagedIdentity" */
} cred_type;

typedef struct {
    cred_type type;
    char *secret;           /* ClientSecret */
    char *path;             /* CertificateDiskPath or SignedAssertionFileDiskPath */
    char *mi_client_id;     /* ManagedIdentityClientId (user-assigned) */
} cred_source;

typedef struct {
    char *name;
    char *base_url;
    char **scopes;          /* NULL-terminated, may be empty */
    bool request_app_token;
    char *relative_path, *http_method, *content_type, *accept;
    char **extra_header_names, **extra_header_values;   /* NULL-terminated pairs */
    char **extra_query_names, **extra_query_values;
} downstream_api;

enum { ROUTE_AUTH_HEADER, ROUTE_AUTH_HEADER_UNAUTH, ROUTE_DOWNSTREAM, ROUTE_DOWNSTREAM_UNAUTH,
       ROUTE_COUNT };

typedef struct {
    char *instance, *tenant_id, *client_id;
    char **audiences;                 /* NULL-terminated: configured Audience(s) */
    char **scopes;                    /* AzureAd__Scopes: any one suffices on /Validate */
    cred_source *creds;
    size_t n_creds;
    downstream_api *apis;
    size_t n_apis;
    bool allow_overrides[ROUTE_COUNT];
    bool allow_redirects;
    bool allow_non_loopback;
    char *listen;                     /* "127.0.0.1:5000" */
    char *ca_file;                    /* extra trust anchor for outbound HTTPS (SSL_CERT_FILE) */
    size_t cache_size;
    long timeout_ms;
} settings;

extern const char *const SETTINGS_KEYS[];
extern const char *const SETTINGS_ROUTE_GATES[ROUTE_COUNT];

/* listen_flag: --listen, or NULL. */
settings *settings_load(const config *c, const char *listen_flag, char *err, size_t errlen);
void settings_free(settings *s);
const downstream_api *settings_api(const settings *s, const char *name);

#endif
