/* server — `agentid issuer`: serves a directory over HTTPS as Entra's endpoints do.
 *
 *   GET  /{tenant}/v2.0/.well-known/openid-configuration   (tenant, domain, common, organizations)
 *   GET  /{tenant}/.well-known/openid-configuration        (v1 metadata)
 *   GET  /{tenant}/discovery/v2.0/keys, /{tenant}/discovery/keys
 *   POST /{tenant}/oauth2/v2.0/token
 *   POST /{tenant}/oauth2/v2.0/devicecode                  (device code flow, device.h)
 *   GET, POST /devicelogin                                 (its verification page)
 *   GET  /common/discovery/instance                        (instance discovery)
 *   GET  /healthz
 *
 * With mi_listen, a second plain-HTTP listener plays the managed-identity endpoint of an Azure
 * host: GET /metadata/identity/oauth2/token (IMDS, header Metadata: true) and GET /msi/token
 * (App Service, header X-IDENTITY-HEADER = directory.json's managed_identity_header).
 *
 * Contract: issuer_run() blocks until SIGINT or SIGTERM and returns a process exit code.
 * directory.json is re-read when it changes (checked at most once a second) and on SIGHUP;
 * a directory that fails to load is reported and the previous one keeps serving.
 */
#ifndef AGENTID_ISSUER_SERVER_H
#define AGENTID_ISSUER_SERVER_H

#include <stdbool.h>

typedef struct {
    const char *dir;          /* directory folder */
    const char *listen;       /* "127.0.0.1:8443" by default */
    const char *public_url;   /* overrides directory.json's public_url */
    bool http;                /* plain HTTP (MSAL and Azure Identity refuse it) */
    const char *mi_listen;    /* managed-identity endpoint (IMDS and App Service shapes), or NULL */
} issuer_opts;

int issuer_run(const issuer_opts *o);

#endif
