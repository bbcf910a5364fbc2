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

/* The pages the issuer shows a person, also used by device.c: plain HTML in the issuer's style,
 * with a CSP that allows no script, X-Frame-Options DENY and Cache-Control no-store. */
/* A page around body_html, which is used as is. */
void authz_page(http_req *r, int status, const char *body_html);
/* A title and a message (escaped here). */
void authz_message_page(http_req *r, int status, const char *title, const char *msg);
/* The sign-in form (#login, #passwd, #submit), posting to the page's own URL. hidden: name,
 * value, ..., NULL (escaped here); error and login may be NULL; extra_html (as is, may be NULL)
 * goes inside the form after the submit button. */
void authz_sign_in_page(http_req *r, const char *app_name, const char *const *hidden,
                        const char *error, const char *login, const char *extra_html);
/* &, <, >, " and ' as character references. Caller frees. */
char *authz_html_escape(const char *s);

#endif
