/* jwt — JSON Web Keys and compact JWS/JWT (RFC 7515, 7517, 7519): RS256 and PS256 signed and
 * verified; RS384/512, PS384/512, ES256, ES384, ES512 and EdDSA (Ed25519) verified.
 *
 * Usage
 *     jwk *k = jwk_from_pem(private_pem, "kid-1", err, sizeof err);
 *     char *tok = jwt_sign(k, hdr_extra, claims, err, sizeof err);   // compact JWS
 *     jwt t;
 *     if (jwt_decode(tok, &t, err, sizeof err) == 0 && jwt_verify(&t, k, err, sizeof err) == 0) ...
 *     jwt_clear(&t);
 *
 * Contract
 *  - Algorithm allow-list: RS256 and PS256 are signed; those, RS384/512, PS384/512, ES256,
 *    ES384, ES512 and EdDSA are verified; "none", HMAC and everything else are refused before
 *    any key is touched, whatever the key. Each alg verifies with one kind of key only (RSA of
 *    2048 bits or more; EC P-256 for ES256, P-384 for ES384, P-521 for ES512; Ed25519 for
 *    EdDSA): a token cannot make a key be read as another kind (RFC 8725 §3.1).
 *  - jwk is reference-counted and immutable after creation, so it may be shared across
 *    threads; jwk_ref/jwk_unref are atomic.
 *  - jwt_decode() does not verify anything: it splits, decodes and parses, bounded by
 *    JWT_MAX_BYTES. Header and claims stay owned by the jwt until jwt_clear().
 *  - Errors: functions returning int give 0 on success, -1 on failure with a short,
 *    token-free reason in err.
 */
#ifndef AGENTID_JOSE_JWT_H
#define AGENTID_JOSE_JWT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JWT_MAX_BYTES (16 * 1024)

typedef struct jwk jwk;

/* From a PEM private key (signing and verifying) or a PEM public key / certificate
 * (verifying only). kid may be NULL. For a certificate, x5t and x5c are filled. */
jwk *jwk_from_pem(const char *pem, const char *kid, char *err, size_t errlen);
/* From one JWKS entry, a public key: kty RSA (n, e), EC (crv P-256, P-384 or P-521, x, y; the point
 * must be on the curve) or OKP (crv Ed25519, x); kid, x5t, x5c optional; use, if given, "sig".
 * Only jwt_verify takes EC and OKP keys (jwt_sign does not). */
jwk *jwk_from_json(const json_t *obj, char *err, size_t errlen);
jwk *jwk_ref(jwk *k);
void jwk_unref(jwk *k);
const char *jwk_kid(const jwk *k);      /* may be NULL */
const char *jwk_x5t(const jwk *k);      /* may be NULL */
bool jwk_is_private(const jwk *k);
/* The public JWK as Entra publishes it: kty, use, kid, x5t, n, e, x5c (when known); for EC and
 * Ed25519 keys kty, use, crv, x (and y), kid. New ref. */
json_t *jwk_public_json(const jwk *k);
/* Attach a certificate (PEM) so x5t/x5c are published; 0 or -1. */
int jwk_set_cert(jwk *k, const char *cert_pem, char *err, size_t errlen);

/* Sign claims. header_extra may be NULL; "alg" (default RS256; "PS256" allowed) and
 * "typ":"JWT" and "kid" (if the key has one) are set unless header_extra gives them.
 * Returns the compact JWS, caller frees; NULL on error. */
char *jwt_sign(const jwk *k, const json_t *header_extra, const json_t *claims,
               char *err, size_t errlen);

typedef struct {
    json_t *header;        /* owned */
    json_t *claims;        /* owned */
    char *signing_input;   /* "b64(header).b64(payload)", owned */
    unsigned char *sig;    /* owned */
    size_t sig_len;
} jwt;

int jwt_decode(const char *compact, jwt *out, char *err, size_t errlen);
void jwt_clear(jwt *t);
/* Verify the signature of a decoded token with key k (alg from the header, allow-listed). */
int jwt_verify(const jwt *t, const jwk *k, char *err, size_t errlen);
const char *jwt_alg(const jwt *t);
const char *jwt_kid(const jwt *t);
/* Claim helpers: NULL / 0 when absent or of another type. */
const char *jwt_claim_str(const jwt *t, const char *name);
bool jwt_claim_int(const jwt *t, const char *name, int64_t *out);
/* A claim as text for a message: the string itself, compact JSON otherwise (an aud array),
 * "(none)" when absent. Caller frees. */
char *jwt_claim_text(const jwt *t, const char *name);

/* Claim checks shared by the sidecar, the gateway and the demo API. */
typedef struct {
    const char *const *issuers;     /* NULL-terminated; NULL => not checked */
    const char *const *audiences;   /* NULL-terminated; NULL => not checked */
    int64_t now;                    /* 0 => util_now() */
    int skew_s;                     /* allowed clock skew for exp / nbf; <0 => 0 */
    bool require_exp;               /* exp must be present */
} jwt_expect;

typedef enum {
    JWT_CHECK_OK = 0,
    JWT_CHECK_EXPIRED,
    JWT_CHECK_NOT_YET_VALID,
    JWT_CHECK_ISSUER,
    JWT_CHECK_AUDIENCE,
    JWT_CHECK_MISSING_EXP,
} jwt_check;

jwt_check jwt_check_claims(const jwt *t, const jwt_expect *e, char *err, size_t errlen);
const char *jwt_check_name(jwt_check c);   /* "expired", "issuer", ... */

#endif
