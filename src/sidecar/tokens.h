/* tokens — the sidecar's side of the token exchange: credential sources, the Agent ID flows
 * against the identity provider, and the shared token cache.
 *
 * Flows (shared docs entra-protocol.md §1): app token for the configured app; agent app token
 * (T1 with fmi_path, then the agent's client_credentials with T1); agent on behalf of a user
 * (T1, then OBO with T1 as the agent's credential); agent user (T1, T2, user_fic); plain OBO.
 *
 * Contract
 *  - Thread-safe. Identical concurrent misses make one identity-provider call (single
 *    flight); others wait for it. Entries are served until their refresh time, then refreshed
 *    in the background while the old token keeps being served until expiry minus a margin.
 *  - The cache is bounded (LRU) and keyed by everything that makes two tokens different:
 *    tenant, client, agent, user (the inbound token's hash for OBO), scopes and token kind.
 *  - tokens_get() returns a new string (the access token) or NULL with e filled. No token or
 *    secret is ever logged.
 */
#ifndef AGENTID_SIDECAR_TOKENS_H
#define AGENTID_SIDECAR_TOKENS_H

#include "jose/jwt.h"
#include "sidecar/settings.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    TOK_OK = 0,
    TOK_REFUSED,       /* the identity provider said no (detail: AADSTS code and text) */
    TOK_UNREACHABLE,   /* could not connect to the identity provider */
    TOK_TIMEOUT,       /* it did not answer in time */
    TOK_NO_CREDENTIAL, /* no configured credential source could produce a credential */
    TOK_BAD_RESPONSE,  /* it answered something that is not a token response */
} tok_status;

typedef struct {
    tok_status status;
    int idp_status;           /* HTTP status from the identity provider, if any */
    char detail[1024];
} tok_err;

typedef struct {
    const char *const *scopes;   /* NULL-terminated, at least one */
    const char *agent_identity;  /* NULL: the configured app itself */
    const char *agent_username;  /* agent user by UPN */
    const char *agent_user_id;   /* agent user by object id */
    const char *user_token;      /* validated inbound token: on-behalf-of; NULL: app token */
    bool force_refresh;
} tok_request;

typedef struct tokens tokens;

tokens *tokens_new(const settings *s, char *err, size_t errlen);
void tokens_free(tokens *t);

char *tokens_get(tokens *t, const tok_request *r, tok_err *e);
/* The cached token for r when one is ready and fresh (a new string), else NULL: never blocks
 * on the identity provider or on a fetch in flight, so a server thread may call it. A hit
 * counts as tokens_get's does and starts a due background refresh; force_refresh gives NULL. */
char *tokens_peek(tokens *t, const tok_request *r);

/* Verify an inbound token's signature with the authority's keys; 0 and *out (jwt_clear it)
 * or -1 with err; *unreachable tells an unreachable provider from a bad token. */
int tokens_verify_inbound(tokens *t, const char *token, jwt *out, bool *unreachable, char *err,
                          size_t errlen);
/* The issuers inbound tokens may carry: the v2 issuer from discovery and the v1 forms.
 * NULL-terminated, borrowed; NULL until discovery succeeded. */
const char *const *tokens_issuers(tokens *t);

typedef struct {
    unsigned long hits, misses, idp_calls, idp_errors, refreshes, evictions;
    double idp_seconds;       /* total time spent in identity-provider calls */
    unsigned long entries;
} tokens_stats;
void tokens_get_stats(tokens *t, tokens_stats *out);

#endif
