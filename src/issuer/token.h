/* token — the issuer's OAuth 2.0 token endpoint: client authentication, grants, minting.
 *
 * Grants: client_credentials (with fmi_path for Agent ID), urn:ietf:params:oauth:grant-type:
 * jwt-bearer (on-behalf-of), user_fic (agent users), authorization_code (PKCE), password,
 * refresh_token, and urn:ietf:params:oauth:grant-type:device_code (device.h).
 * docs/issuer.md describes each and every difference from Entra.
 *
 * Contract
 *  - token_endpoint() is pure with respect to the request: it reads the directory (held
 *    by the caller) and never blocks on the network, so it may run on any server thread.
 *  - It always yields a JSON body: a token response, or an Entra-shaped error (error,
 *    error_description "AADSTS<code>: ...", error_codes, timestamp, trace_id,
 *    correlation_id, error_uri). The return value is the HTTP status.
 *  - No secret, assertion or token is ever written to the log by this module.
 */
#ifndef AGENTID_ISSUER_TOKEN_H
#define AGENTID_ISSUER_TOKEN_H

#include "core/form.h"
#include "issuer/authorize.h"
#include "issuer/device.h"
#include "issuer/directory.h"

#include <jansson.h>

typedef struct {
    const directory *dir;
    const char *base_url;          /* public base, e.g. "https://127.0.0.1:8443" (no slash) */
    const char *tenant;            /* the {tenant} path segment of the request */
    const form *body;              /* the parsed form body */
    const char *fmi_path_query;    /* fmi_path from the query string, if any */
    const char *authorization;     /* the Authorization header, if any */
    const char *client_request_id; /* header client-request-id, if any */
    bool v1_endpoint;              /* /oauth2/token (resource=) rather than /oauth2/v2.0/token */
    authz *az;                     /* authorization codes, for grant_type=authorization_code */
    device_store *dev;             /* device codes, for /devicecode and the device_code grant */
    struct token_log *log;         /* where the outcome goes for the request's log line; may be NULL */
} token_req;

/* What a token request adds to the issuer's one log line for it (log_request_fields):
 * "token":"issued" with grant, client, credential, azpacr, resource and fmi_path, or
 * "token":"refused" with grant, client and aadsts. fields ends with a NULL name; the values
 * are copies in buf, so they outlive the request's form and directory. Zero it before use. */
typedef struct token_log {
    const char *fields[2 * 7 + 1];
    char buf[768];
    size_t used, n;
} token_log;

/* Handle one token request. Returns the HTTP status; *out gets the JSON body (new ref). */
int token_endpoint(const token_req *r, json_t **out);

/* The compact JSON text of an answer of token_endpoint() (any JSON object), *len its length;
 * caller frees. The same members as json_dumps would write, long JWS strings first. NULL
 * when answer is not an object or cannot be serialised. */
char *token_answer_text(const json_t *answer, size_t *len);

/* POST /{tenant}/oauth2/v2.0/devicecode (client_id, scope): authenticates the client as the token
 * endpoint does (a public client needs no secret), checks scope and consent, and starts a flow
 * in r->dev. The body is Entra's (user_code, device_code, verification_uri {base}/devicelogin,
 * expires_in, interval, message) or an Entra error. Returns the HTTP status. */
int token_device_authorization(const token_req *r, json_t **out);

/* The managed-identity endpoint (IMDS, App Service): an app token for the managed identity mi
 * on resource, in IMDS's shape (all values strings). Returns the HTTP status. */
int token_managed_identity(const directory *d, const char *base_url, const dir_app *mi,
                           const char *resource, json_t **out, token_log *log);

/* An Entra error body, for the server's other errors (unknown tenant, bad form).
 * New reference. */
json_t *token_error_json(const char *base_url, const char *error, int code, const char *suberror,
                         const char *correlation_id, const char *msg);

/* The issuer URL of v2 and v1 tokens for the directory's tenant. Caller frees. */
char *token_issuer_v2(const char *base_url, const directory *d);
char *token_issuer_v1(const char *base_url, const directory *d);

#endif
