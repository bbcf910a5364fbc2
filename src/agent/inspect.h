/* inspect — a token as a person reads it: its header and claims, and whether it is valid
 * according to the identity provider it names. Used by `agentid decode` and by
 * `agentid agent show-tokens`.
 *
 * Validation follows the token's own "iss": the provider's discovery document is read from
 * iss + "/.well-known/openid-configuration" (Entra's v1 issuer https://sts.windows.net/{tid}/
 * and v2 issuer https://login.microsoftonline.com/{tid}/v2.0 both serve one there, and so
 * does `agentid issuer`), then its JWKS. A token is valid when its signature verifies with
 * the provider's key named by kid (the algorithms jose/jwt.h verifies), the document's issuer equals "iss",
 * and exp/nbf hold now (60 s skew). The audience is not judged here: inspect says whose
 * token it is, the API that receives it decides whether it is for it.
 *
 * Contract
 *  - inspect_token() fills *out; inspect_clear() frees it. Nothing is kept between calls
 *    (each verify fetches discovery and keys afresh: this is a command-line tool).
 *  - Only https issuers are fetched, and http only on a loopback host (a local issuer run
 *    with --http): a token cannot send the tool to an arbitrary plain-HTTP address.
 *  - Errors: -1 when the text is not a JWT at all (out->status says why); 0 otherwise, with
 *    out->valid and out->status ("valid", or the reason it is not).
 *  - Not thread-safe per info; separate infos are independent.
 */
#ifndef AGENTID_AGENT_INSPECT_H
#define AGENTID_AGENT_INSPECT_H

#include "jose/jwt.h"

#include <stdbool.h>

typedef struct {
    jwt t;                 /* decoded header and claims (owned) */
    bool checked;          /* verification was attempted */
    bool valid;            /* checked, and signature, issuer and lifetime hold */
    char status[320];      /* "valid", "not checked", or why not (no token text in it) */
} token_info;

/* Decode token (a "Bearer " prefix is ignored) and, when verify, validate it against its
 * issuer; ca_file is an extra trust anchor for that issuer (NULL: the system's). */
int inspect_token(const char *token, bool verify, const char *ca_file, token_info *out);
void inspect_clear(token_info *ti);

/* The token without a "Bearer " prefix and surrounding blanks: a pointer into s, and its
 * length in *len. */
const char *inspect_strip_bearer(const char *s, size_t *len);

/* "in 59 min", "2 h ago", ... for a Unix time relative to now; out holds 32 bytes. */
const char *inspect_when(int64_t t, char out[32]);

#endif
