/* oidc — an OpenID Connect provider seen from a relying party: its discovery document
 * (issuer, token_endpoint, jwks_uri) and its keys, fetched lazily and cached.
 *
 * Contract
 *  - Thread-safe. The discovery document is fetched on first use; after a failure it is
 *    retried at most once every retry_s seconds (callers get the last error meanwhile).
 *  - Returned strings stay valid until oidc_free().
 *  - Errors: -1 with a token-free reason in err and the transport result in *kind
 *    (HTTPC_OK with a non-200 or unusable document).
 */
#ifndef AGENTID_JOSE_OIDC_H
#define AGENTID_JOSE_OIDC_H

#include "core/http_client.h"
#include "jose/jwks.h"

typedef struct oidc oidc;

/* metadata_url: ".../v2.0/.well-known/openid-configuration". */
oidc *oidc_new(const char *metadata_url, const char *ca_file, long timeout_ms);
void oidc_free(oidc *o);

int oidc_ready(oidc *o, httpc_result *kind, char *err, size_t errlen);
/* Valid after oidc_ready() returned 0. */
const char *oidc_issuer(oidc *o);
const char *oidc_token_endpoint(oidc *o);   /* NULL when the document has none */
/* Decode and verify a token's signature with the provider's keys: 0, -1 (bad token) or
 * JWKS_UNAVAILABLE (discovery or keys could not be fetched), as jwks_cache_verify. */
int oidc_verify(oidc *o, const char *token, jwt *out, char *err, size_t errlen);
unsigned long oidc_jwks_fetches(oidc *o);

#endif
