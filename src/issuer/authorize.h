/* authorize — the interactive side of the issuer: the sign-in page behind
 * /{tenant}/oauth2/v2.0/authorize, authorization codes with PKCE (RFC 7636), the browser
 * session (single sign-on for later requests), and /{tenant}/oauth2/v2.0/logout.
 *
 * Contract
 *  - An authz store is thread-safe; codes are single-use and live 10 minutes, sessions 8 hours.
 *    Both live in memory only: restarting the issuer signs everybody out.
 *  - authz_handle()/authz_logout() always answer the request (a page, a redirect, or an error).
 *  - Passwords and codes are never logged.
 */
#ifndef AGENTID_ISSUER_AUTHORIZE_H
#define AGENTID_ISSUER_AUTHORIZE_H

#include "core/http_server.h"
#include "issuer/directory.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct authz authz;

authz *authz_new(void);
void authz_free(authz *az);

/* GET or POST {base}/{tenant}/oauth2/v2.0/authorize. */
void authz_handle(authz *az, http_req *r, const directory *d, const char *base_url,
                  const char *tenant);
/* GET {base}/{tenant}/oauth2/v2.0/logout. */
void authz_logout(authz *az, http_req *r, const directory *d);

/* What a code was issued for. Strings owned by the struct; authz_code_clear() frees them. */
typedef struct {
    char *client_id, *redirect_uri, *user_oid, *scope, *nonce, *challenge, *challenge_method, *sid;
} authz_code;

/* Redeem a code: true once per code, within its lifetime. */
bool authz_redeem(authz *az, const char *code, authz_code *out);
void authz_code_clear(authz_code *c);

#endif
