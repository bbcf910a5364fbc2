/* directory — the issuer's tenant: apps, agent identities, users, consents and keys.
 *
 * The directory lives in a folder: directory.json (human-editable, format in
 * docs/issuer.md) plus keys/ and tls/ with PEM files it names by relative path.
 *
 * Contract
 *  - dir_load() reads and validates everything up front; a bad file fails with
 *    "directory.json: <path to the field>: <what is wrong>" in err. After a successful
 *    load a directory is immutable, so any number of threads may read it at once.
 *  - Directories are reference-counted (dir_ref/dir_unref, atomic) so a server can swap
 *    in a reloaded one while requests still use the old.
 *  - Lookups return borrowed pointers into the directory, valid while a reference is held.
 */
#ifndef AGENTID_ISSUER_DIRECTORY_H
#define AGENTID_ISSUER_DIRECTORY_H

#include "jose/jwks.h"
#include "jose/oidc.h"
#include "jose/jwt.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The first-party app behind api://AzureADTokenExchange; tokens for it carry this aud. */
#define DIR_TOKEN_EXCHANGE_APPID "fb60f99c-7a34-4190-8149-302f77469936"
#define DIR_TOKEN_EXCHANGE_URI   "api://AzureADTokenExchange"
#define DIR_FILE                 "directory.json"

typedef enum { APP_APPLICATION, APP_AGENT_BLUEPRINT, APP_AGENT_IDENTITY, APP_MANAGED_IDENTITY } dir_app_type;

typedef struct {
    char *x5t;        /* base64url SHA-1 of DER */
    char *x5t_s256;   /* base64url SHA-256 of DER */
    jwk *key;         /* public key */
} dir_cert;

typedef struct {
    const json_t *json;           /* the entry in directory.json */
    const char *name, *app_id, *object_id;
    dir_app_type type;
    const char *parent;           /* agent identity: the blueprint's app_id */
    int token_version;            /* 1 or 2: the version of tokens issued FOR this app */
    bool public_client;           /* may use public-client grants (password, device code) */
    dir_cert *certs;
    size_t n_certs;
} dir_app;

typedef struct {
    const json_t *json;
    const char *object_id, *upn, *display_name, *password;
    const char *agent_identity;   /* agent users: the agent identity's app_id, else NULL */
} dir_user;

typedef struct directory directory;

/* Load DIR/directory.json and its keys. NULL with err on any problem. */
directory *dir_load(const char *dir, char *err, size_t errlen);
directory *dir_ref(directory *d);
void dir_unref(directory *d);

const char *dir_path(const directory *d);
const char *dir_tenant_id(const directory *d);
/* True if name is the tenant id or one of its domain names (case-insensitive). */
bool dir_is_tenant(const directory *d, const char *name);
int dir_token_lifetime(const directory *d);
/* Device code flow: "device_code_interval_seconds" (1-60, default 5) and
 * "device_code_lifetime_seconds" (1-3600, default 900); out-of-range values use the default. */
int dir_device_code_interval(const directory *d);
int dir_device_code_lifetime(const directory *d);
/* The tenant's domain names (directory.json "domains"). */
size_t dir_domain_count(const directory *d);
const char *dir_domain_at(const directory *d, size_t i);
/* From the file, or NULL (the server then derives it from the listen address). */
const char *dir_public_url(const directory *d);

/* By app_id (GUID, case-insensitive) or by display name. NULL if none. */
const dir_app *dir_app_find(const directory *d, const char *id_or_name);
/* The app that owns a resource identifier: an app_id, or an identifier URI. */
const dir_app *dir_app_by_resource(const directory *d, const char *resource);
size_t dir_app_count(const directory *d);
const dir_app *dir_app_at(const directory *d, size_t i);
/* Secrets, scopes, roles, identifier URIs, redirect URIs of an app (NULL-safe). */
bool dir_app_secret_ok(const dir_app *a, const char *secret);
bool dir_app_has_scope(const dir_app *a, const char *scope);
bool dir_app_has_uri(const dir_app *a, const char *uri);
const json_t *dir_app_list(const dir_app *a, const char *field);   /* JSON array or NULL */
const dir_cert *dir_app_cert(const dir_app *a, const char *x5t, const char *x5t_s256);

/* A managed identity by client id, object id or resource id (its name is the last segment);
 * with all three NULL, the first one (the system-assigned identity). */
const dir_app *dir_managed_identity(const directory *d, const char *client_id, const char *object_id,
                                    const char *res_id);
/* The secret App Service clients send as X-IDENTITY-HEADER, or NULL. */
const char *dir_identity_header(const directory *d);
/* The OpenID provider of an external federated-credential issuer (keys fetched lazily). */
oidc *dir_fic_provider(const directory *d, const char *issuer);

const dir_user *dir_user_find(const directory *d, const char *oid_or_upn);

/* Delegated consent of client for scope on resource (admin consent, all users). */
bool dir_consented(const directory *d, const char *client_app_id, const char *resource_app_id,
                   const char *scope);
/* Scopes consented for client on resource (JSON array of strings, new ref). */
json_t *dir_consented_scopes(const directory *d, const char *client_app_id,
                             const char *resource_app_id);
/* App roles assigned to client on resource (JSON array, new ref; empty if none). */
json_t *dir_app_roles(const directory *d, const char *client_app_id, const char *resource_app_id);

/* The key new tokens are signed with, and the published set (JWKS). Borrowed. */
const jwk *dir_signing_key(const directory *d);
const jwks *dir_keys(const directory *d);

/* Paths of TLS files (absolute), NULL if the directory has none. */
const char *dir_tls_cert(const directory *d);
const char *dir_tls_key(const directory *d);
const char *dir_tls_ca(const directory *d);

/* `agentid issuer init`: create DIR with a demo population. Refuses an existing
 * directory.json unless force. Prints nothing; returns 0 or -1 with err. */
int dir_init(const char *dir, bool force, char *err, size_t errlen);
/* `agentid issuer rotate-keys`: add a signing key and make it active; the previous keys
 * stay published, so tokens they signed still validate. With retire_old, add nothing and
 * drop every key but the active one from the JWKS. Writes the active kid into new_kid. */
int dir_rotate_keys(const char *dir, bool retire_old, char new_kid[64], char *err, size_t errlen);

/* Add redirect URIs to an app in DIR/directory.json if they are missing (`agentid up` on a
 * non-default chat port). Returns 1 if the file changed, 0 if not, -1 with err. */
int dir_ensure_redirect_uris(const char *dir, const char *app, const char *const *uris, char *err,
                             size_t errlen);

/* Seed 003's resource apps, by name: the LLM (identifier https://cognitiveservices.azure.com,
 * scope user_impersonation) and the MCP server (api://<its app id>, scope Tools.Call), both
 * with v1 tokens; dir_init creates them with the agent identity's consent to each. */
#define DIR_LLM_APP   "Azure OpenAI (local)"
#define DIR_LLM_URI   "https://cognitiveservices.azure.com"
#define DIR_LLM_SCOPE "user_impersonation"
#define DIR_MCP_APP   "MCP Server"
#define DIR_MCP_SCOPE "Tools.Call"

/* `agentid up --profile gateway` on a directory an older init made: add the apps and consents
 * above if missing and, with issuer_base ("https://127.0.0.1:PORT", the issuer in use), a
 * federated credential of the blueprint trusting the "Weather Agent Host" managed identity's
 * tokens from {issuer_base}/{tenant}/v2.0 if none does. Other content is kept. Returns 1 if the
 * file changed, 0 if not, -1 with err. */
int dir_ensure_gateway_apps(const char *dir, const char *issuer_base, char *err, size_t errlen);

#endif
