/* jwt — see jwt.h.
 *
 * Signing and verification use OpenSSL 3 EVP_DigestSign/EVP_DigestVerify directly, not
 * cjose. We hold keys as EVP_PKEY already (pki.c), jwt_verify works on the decoded
 * signing input and signature that jwt_decode keeps, and the PSS parameters are set
 * explicitly. cjose 0.6.2.1 would need its own RSA key built from eight BIGNUMs pulled
 * out of the EVP_PKEY, a re-serialised compact token to re-import for every
 * verification, and it signs PS256 with the deprecated low-level RSA_* calls (manual
 * PSS padding + RSA_private_encrypt). The direct route is smaller and easier to check.
 */
#include "jose/jwt.h"

#include "core/b64.h"
#include "core/util.h"
#include "jose/pki.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* RFC 7518 §3.3: RSA keys used with RS256/PS256 MUST be 2048 bits or larger. */
#define MIN_RSA_BITS 2048

struct jwk {
    atomic_int refs;
    EVP_PKEY *pkey;
    bool priv;
    char *kid;   /* may be NULL */
    char *x5t;   /* base64url SHA-1 of the certificate DER, may be NULL */
    char *x5c;   /* standard base64 certificate DER, may be NULL */
    /* Private keys, set up once in jwk_new (NULL if that failed: jwt_sign then does it all per
     * token). hdr64: the default header {"typ","alg":"RS256","kid"} as base64url JSON, which
     * is what jwt_sign writes when it is given no header_extra. rs256: a DigestSign context
     * for RS256 with this key, which jwt_sign copies for each signature instead of building
     * one (the copy only reads it: EVP_MD_CTX_copy_ex takes it const, so threads may share
     * it); each token is still signed afresh, with the key's blinding. */
    char *hdr64;
    EVP_MD_CTX *rs256;
};

static char *b64url_json(const json_t *j);

/* RFC 7515 §4.1: typ, alg, kid in the order Entra writes them (jwt_sign adds extra fields). */
static json_t *default_header(const char *kid)
{
    json_t *hdr = json_object();
    json_object_set_new(hdr, "typ", json_string("JWT"));
    json_object_set_new(hdr, "alg", json_string("RS256"));
    if (kid) json_object_set_new(hdr, "kid", json_string(kid));
    return hdr;
}

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen) snprintf(err, errlen, "%s", msg);
    ERR_clear_error();   /* leave the thread's OpenSSL error queue empty */
}

/* The signing allow-list: what jwt_sign makes (RSA keys only). */
static const char *alg_digest(const char *alg, bool *pss)
{
    if (alg && strcmp(alg, "RS256") == 0) { *pss = false; return "SHA256"; }
    if (alg && strcmp(alg, "PS256") == 0) { *pss = true; return "SHA256"; }
    return NULL;
}

/* The verification allow-list (RFC 8725 §3.1: verifiers must pin the algorithms they accept),
 * each tied to the one kind of key it may be verified with (RFC 8725 §3.1, RFC 7518 §3.4,
 * RFC 8037 §3.1), so a token cannot choose how its key is read. */
typedef enum { FAM_RSA, FAM_EC, FAM_ED25519 } key_family;
typedef struct {
    const char *alg;
    key_family fam;
    const char *curve;           /* FAM_EC: OpenSSL's name of the curve the key must be on */
    const char *digest;          /* NULL for Ed25519, which hashes the message itself */
    size_t sig_len;              /* FAM_EC, FAM_ED25519: the signature's fixed length (R || S) */
    bool pss;                    /* FAM_RSA: RSASSA-PSS (salt as long as the digest), else PKCS#1 v1.5 */
} verify_alg;
static const verify_alg VERIFY_ALGS[] = {
    {"RS256", FAM_RSA, NULL, "SHA256", 0, false},
    {"RS384", FAM_RSA, NULL, "SHA384", 0, false},
    {"RS512", FAM_RSA, NULL, "SHA512", 0, false},
    {"PS256", FAM_RSA, NULL, "SHA256", 0, true},
    {"PS384", FAM_RSA, NULL, "SHA384", 0, true},
    {"PS512", FAM_RSA, NULL, "SHA512", 0, true},
    {"ES256", FAM_EC, "prime256v1", "SHA256", 64, false},
    {"ES384", FAM_EC, "secp384r1", "SHA384", 96, false},
    {"ES512", FAM_EC, "secp521r1", "SHA512", 132, false}, /* P-521: 66-byte halves (RFC 7518 §3.4) */
    {"EdDSA", FAM_ED25519, NULL, NULL, 64, false},
};
#define VERIFY_ALGS_TEXT "RS256/384/512, PS256/384/512, ES256/384/512, EdDSA"
#define EC_MAX_COORD 66 /* P-521's x and y */

static const verify_alg *verify_alg_of(const char *alg)
{
    for (size_t i = 0; alg && i < sizeof VERIFY_ALGS / sizeof *VERIFY_ALGS; i++)
        if (!strcmp(alg, VERIFY_ALGS[i].alg)) return &VERIFY_ALGS[i];
    return NULL;
}

/* The EC curve of k ("prime256v1", ...) into buf; false if k is not an EC key. */
static bool ec_curve(const EVP_PKEY *k, char *buf, size_t len)
{
    size_t got = 0;
    return k && EVP_PKEY_is_a(k, "EC") &&
           EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, buf, len, &got) == 1;
}

/* RFC 7518 §3.5: PS256 is RSASSA-PSS with SHA-256, MGF1 with SHA-256 and a salt as
 * long as the hash. OpenSSL's MGF1 digest defaults to the signature digest. */
static int set_pss(EVP_PKEY_CTX *pctx)
{
    return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
                   EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1
               ? 0 : -1;
}

static bool usable_rsa(const EVP_PKEY *k)
{
    return k && EVP_PKEY_is_a(k, "RSA") && EVP_PKEY_get_bits(k) >= MIN_RSA_BITS;
}

/* A key some allow-listed alg verifies with. */
static bool usable_for_verify(const EVP_PKEY *k)
{
    char curve[32];
    if (usable_rsa(k) || (k && EVP_PKEY_is_a(k, "ED25519"))) return true;
    if (!ec_curve(k, curve, sizeof curve)) return false;
    for (size_t i = 0; i < sizeof VERIFY_ALGS / sizeof *VERIFY_ALGS; i++)
        if (VERIFY_ALGS[i].curve && !strcmp(curve, VERIFY_ALGS[i].curve)) return true;
    return false;
}

/* RSA only (what the issuer signs with), unless verify_only: then EC and Ed25519 public keys
 * from a JWKS too. */
static jwk *jwk_new_ex(EVP_PKEY *pkey, bool priv, const char *kid, bool verify_only, char *err, size_t errlen)
{
    if (!(verify_only ? usable_for_verify(pkey) : usable_rsa(pkey))) {
        EVP_PKEY_free(pkey);
        set_err(err, errlen, verify_only ? "key is not an RSA key of at least 2048 bits, an EC P-256, "
                                           "P-384 or P-521 key, or an Ed25519 key"
                                         : "key is not an RSA key of at least 2048 bits");
        return NULL;
    }
    jwk *k = xcalloc(1, sizeof *k);
    atomic_init(&k->refs, 1);
    k->pkey = pkey;
    k->priv = priv;
    k->kid = kid ? xstrdup(kid) : NULL;
    if (priv) {
        json_t *hdr = default_header(k->kid);
        k->hdr64 = b64url_json(hdr);
        json_decref(hdr);
        k->rs256 = EVP_MD_CTX_new();
        if (k->rs256 && EVP_DigestSignInit_ex(k->rs256, NULL, "SHA256", NULL, NULL, pkey, NULL) != 1) {
            EVP_MD_CTX_free(k->rs256);
            k->rs256 = NULL;
        }
        ERR_clear_error();
    }
    return k;
}

static jwk *jwk_new(EVP_PKEY *pkey, bool priv, const char *kid, char *err, size_t errlen)
{
    return jwk_new_ex(pkey, priv, kid, false, err, errlen);
}

/* Never let OpenSSL prompt on the terminal for a passphrase: encrypted keys just fail. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf; (void)size; (void)rwflag; (void)u;
    return -1;
}

jwk *jwk_from_pem(const char *pem, const char *kid, char *err, size_t errlen)
{
    if (!pem) {
        set_err(err, errlen, "no PEM given");
        return NULL;
    }
    if (strstr(pem, "-----BEGIN CERTIFICATE-----")) {
        char *pub = pki_cert_pubkey(pem, err, errlen);
        jwk *k = pub ? jwk_from_pem(pub, kid, err, errlen) : NULL;
        free(pub);
        if (k && jwk_set_cert(k, pem, err, errlen) != 0) {
            jwk_unref(k);
            k = NULL;
        }
        return k;
    }
    BIO *b = BIO_new_mem_buf(pem, -1);
    bool priv = strstr(pem, "PRIVATE KEY-----") != NULL;
    EVP_PKEY *pkey = !b ? NULL
                     : priv ? PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL)
                            : PEM_read_bio_PUBKEY(b, NULL, no_passphrase, NULL);
    BIO_free(b);
    if (!pkey) {
        set_err(err, errlen, "cannot read PEM key");
        return NULL;
    }
    return jwk_new(pkey, priv, kid, err, errlen);
}

/* A base64url JWK member as an unsigned big-endian BIGNUM (RFC 7518 §6.3.1). */
static BIGNUM *b64url_bn(const json_t *obj, const char *name)
{
    const char *s = json_string_value(json_object_get(obj, name));
    size_t len = 0;
    unsigned char *raw = s && *s ? b64url_decode(s, strlen(s), &len) : NULL;
    BIGNUM *bn = raw && len ? BN_bin2bn(raw, (int)len, NULL) : NULL;
    free(raw);
    return bn;
}

/* Optional string member: absent is fine, another type is not. */
static int opt_str(const json_t *obj, const char *name, const char **out)
{
    const json_t *v = json_object_get(obj, name);
    *out = json_string_value(v);
    return v && !*out ? -1 : 0;
}

/* An RSA public key from n and e; NULL if they are not a valid pair. */
static EVP_PKEY *rsa_from_json(const json_t *obj)
{
    BIGNUM *n = b64url_bn(obj, "n"), *e = b64url_bn(obj, "e");
    /* RFC 8017 §3.1: n is a product of odd primes, e odd and at least 3. OpenSSL takes
     * e = 0 or an even n as they come, and such a key could never verify anything. */
    if (n && e && (!BN_is_odd(n) || !BN_is_odd(e) || BN_is_one(e))) {
        BN_free(n);
        BN_free(e);
        n = e = NULL;
    }
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    EVP_PKEY *pkey = NULL;
    if (n && e && bld && ctx &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) == 1 &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) == 1 &&
        (params = OSSL_PARAM_BLD_to_param(bld)) != NULL &&
        EVP_PKEY_fromdata_init(ctx) == 1)
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(ctx);
    BN_free(n);
    BN_free(e);
    return pkey;
}

/* A base64url member of exactly len bytes into out; false otherwise. */
static bool b64url_exact(const json_t *obj, const char *name, unsigned char *out, size_t len)
{
    const char *s = json_string_value(json_object_get(obj, name));
    size_t got = 0;
    unsigned char *raw = s && *s ? b64url_decode(s, strlen(s), &got) : NULL;
    bool ok = raw && got == len;
    if (ok) memcpy(out, raw, len);
    free(raw);
    return ok;
}

/* An EC public key (RFC 7518 §6.2.1): crv P-256, P-384 or P-521, x and y of the curve's size, a point
 * on the curve; NULL otherwise. */
static EVP_PKEY *ec_from_json(const json_t *obj)
{
    const char *crv = json_string_value(json_object_get(obj, "crv"));
    size_t size = !crv ? 0 : !strcmp(crv, "P-256") ? 32 : !strcmp(crv, "P-384") ? 48 : !strcmp(crv, "P-521") ? 66 : 0;
    unsigned char point[1 + 2 * EC_MAX_COORD];
    if (!size || !b64url_exact(obj, "x", point + 1, size) || !b64url_exact(obj, "y", point + 1 + size, size))
        return NULL;
    point[0] = 0x04; /* uncompressed: x then y (SEC 1 §2.3.3) */
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)crv, 0),
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * size),
        OSSL_PARAM_construct_end(),
    };
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *pkey = NULL;
    if (ctx && EVP_PKEY_fromdata_init(ctx) == 1) EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params);
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_CTX *check = pkey ? EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL) : NULL;
    if (pkey && (!check || EVP_PKEY_public_check(check) != 1)) { /* not on the curve */
        EVP_PKEY_free(pkey);
        pkey = NULL;
    }
    EVP_PKEY_CTX_free(check);
    return pkey;
}

/* An Ed25519 public key (RFC 8037 §2): crv Ed25519, x of 32 bytes; NULL otherwise. */
static EVP_PKEY *okp_from_json(const json_t *obj)
{
    const char *crv = json_string_value(json_object_get(obj, "crv"));
    unsigned char x[32];
    if (!crv || strcmp(crv, "Ed25519") || !b64url_exact(obj, "x", x, sizeof x)) return NULL;
    return EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, sizeof x);
}

jwk *jwk_from_json(const json_t *obj, char *err, size_t errlen)
{
    const char *kty = json_string_value(json_object_get(obj, "kty"));
    const char *use, *kid, *x5t;
    bool rsa = kty && !strcmp(kty, "RSA"), ec = kty && !strcmp(kty, "EC"), okp = kty && !strcmp(kty, "OKP");
    if (!json_is_object(obj) || !(rsa || ec || okp)) {
        set_err(err, errlen, "JWK is not an RSA, EC or OKP key");
        return NULL;
    }
    /* RFC 7517 §4.2: "use" says what the key is for; we only verify signatures. */
    if (opt_str(obj, "use", &use) || (use && strcmp(use, "sig") != 0) ||
        opt_str(obj, "kid", &kid) || opt_str(obj, "x5t", &x5t)) {
        set_err(err, errlen, "JWK is not a signature key");
        return NULL;
    }
    const json_t *x5c = json_object_get(obj, "x5c");
    const char *cert0 = json_string_value(json_array_get(x5c, 0));
    if (x5c && !cert0) {
        set_err(err, errlen, "JWK x5c is not an array of strings");
        return NULL;
    }
    EVP_PKEY *pkey = rsa ? rsa_from_json(obj) : ec ? ec_from_json(obj) : okp_from_json(obj);
    if (!pkey) {
        set_err(err, errlen, rsa ? "JWK has no valid n and e"
                             : ec ? "JWK has no valid P-256, P-384 or P-521 point (crv, x, y)"
                                  : "JWK has no valid Ed25519 key (crv, x)");
        return NULL;
    }
    jwk *k = jwk_new_ex(pkey, false, kid, true, err, errlen);
    if (k) {
        k->x5t = x5t ? xstrdup(x5t) : NULL;
        k->x5c = cert0 ? xstrdup(cert0) : NULL;
    }
    return k;
}

jwk *jwk_ref(jwk *k)
{
    if (k) atomic_fetch_add_explicit(&k->refs, 1, memory_order_relaxed);
    return k;
}

void jwk_unref(jwk *k)
{
    /* acq_rel: the last owner must see every other owner's writes before freeing */
    if (!k || atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) != 1) return;
    EVP_MD_CTX_free(k->rs256);
    free(k->hdr64);
    EVP_PKEY_free(k->pkey);
    free(k->kid);
    free(k->x5t);
    free(k->x5c);
    free(k);
}

const char *jwk_kid(const jwk *k) { return k ? k->kid : NULL; }
const char *jwk_x5t(const jwk *k) { return k ? k->x5t : NULL; }
bool jwk_is_private(const jwk *k) { return k && k->priv; }

/* An RSA parameter as base64url of its minimal big-endian octets (RFC 7518 §6.3.1.1). */
static char *rsa_param_b64url(const EVP_PKEY *pkey, const char *name)
{
    BIGNUM *bn = NULL;
    char *out = NULL;
    if (EVP_PKEY_get_bn_param(pkey, name, &bn) == 1) {
        int len = BN_num_bytes(bn);
        unsigned char *buf = xmalloc(len > 0 ? (size_t)len : 1);
        BN_bn2bin(bn, buf);
        out = b64url_encode(buf, (size_t)len);
        free(buf);
    }
    BN_free(bn);
    return out;
}

/* An EC or Ed25519 key as its JWK members (RFC 7518 §6.2.1, RFC 8037 §2); NULL if neither. */
static json_t *ec_ed_public_json(const jwk *k)
{
    unsigned char pt[1 + 2 * EC_MAX_COORD];
    size_t len = 0;
    char curve[32];
    json_t *o = NULL;
    if (ec_curve(k->pkey, curve, sizeof curve)) {
        const char *crv = !strcmp(curve, "prime256v1") ? "P-256"
                          : !strcmp(curve, "secp384r1") ? "P-384" : !strcmp(curve, "secp521r1") ? "P-521" : NULL;
        if (crv && EVP_PKEY_get_octet_string_param(k->pkey, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof pt, &len) == 1 &&
            len % 2 == 1 && pt[0] == 0x04) {
            size_t half = len / 2;
            char *x = b64url_encode(pt + 1, half), *y = b64url_encode(pt + 1 + half, half);
            o = json_pack("{s:s, s:s, s:s, s:s}", "kty", "EC", "use", "sig", "crv", crv, "x", x);
            json_object_set_new(o, "y", json_string(y));
            free(x);
            free(y);
        }
    } else if (EVP_PKEY_is_a(k->pkey, "ED25519") && EVP_PKEY_get_raw_public_key(k->pkey, pt, &(size_t){32}) == 1) {
        char *x = b64url_encode(pt, 32);
        o = json_pack("{s:s, s:s, s:s, s:s}", "kty", "OKP", "use", "sig", "crv", "Ed25519", "x", x);
        free(x);
    }
    if (o && k->kid) json_object_set_new(o, "kid", json_string(k->kid));
    ERR_clear_error();
    return o;
}

json_t *jwk_public_json(const jwk *k)
{
    if (!k) return NULL;
    if (!EVP_PKEY_is_a(k->pkey, "RSA")) return ec_ed_public_json(k);
    char *n = rsa_param_b64url(k->pkey, OSSL_PKEY_PARAM_RSA_N);
    char *e = rsa_param_b64url(k->pkey, OSSL_PKEY_PARAM_RSA_E);
    json_t *o = NULL;
    if (n && e) {
        /* The member order Entra publishes, so our keys document reads like theirs. */
        o = json_object();
        json_object_set_new(o, "kty", json_string("RSA"));
        json_object_set_new(o, "use", json_string("sig"));
        if (k->kid) json_object_set_new(o, "kid", json_string(k->kid));
        if (k->x5t) json_object_set_new(o, "x5t", json_string(k->x5t));
        json_object_set_new(o, "n", json_string(n));
        json_object_set_new(o, "e", json_string(e));
        if (k->x5c) json_object_set_new(o, "x5c", json_pack("[s]", k->x5c));
    }
    free(n);
    free(e);
    ERR_clear_error();
    return o;
}

/* Called while the key is still private to its creator (before it is shared), which is
 * what keeps "immutable after creation" true. */
int jwk_set_cert(jwk *k, const char *cert_pem, char *err, size_t errlen)
{
    if (!k || !cert_pem) {
        set_err(err, errlen, "no key or certificate");
        return -1;
    }
    /* Publishing a certificate for another key would make x5t/x5c lie about the key. */
    char *pub = pki_cert_pubkey(cert_pem, err, errlen);
    BIO *b = pub ? BIO_new_mem_buf(pub, -1) : NULL;
    EVP_PKEY *cert_key = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
    bool same = cert_key && EVP_PKEY_eq(cert_key, k->pkey) == 1;
    EVP_PKEY_free(cert_key);
    BIO_free(b);
    free(pub);
    if (!same) {
        set_err(err, errlen, "certificate does not hold this key");
        return -1;
    }
    char *x5t = pki_cert_thumbprint(cert_pem, false, err, errlen);
    char *x5c = x5t ? pki_cert_der_b64(cert_pem, err, errlen) : NULL;
    if (!x5c) {
        free(x5t);
        return -1;
    }
    free(k->x5t);
    free(k->x5c);
    k->x5t = x5t;
    k->x5c = x5c;
    return 0;
}

/* Sign (sig_len in/out) the signing input with the allow-listed alg (RS256, PS256). */
static int rsa_sign(const char *alg, EVP_PKEY *pkey, const char *input, unsigned char *sig, size_t *sig_len)
{
    bool pss = false;
    const char *md = alg_digest(alg, &pss);
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok = 0;
    if (md && mctx) {
        ok = EVP_DigestSignInit_ex(mctx, &pctx, md, NULL, NULL, pkey, NULL);
        if (ok == 1 && pss && set_pss(pctx) != 0) ok = 0;
        if (ok == 1) ok = EVP_DigestSign(mctx, sig, sig_len, (const unsigned char *)input, strlen(input));
    }
    EVP_MD_CTX_free(mctx);
    ERR_clear_error();
    return ok == 1 ? 0 : -1;
}

/* RS256 with the key's prepared context (struct jwk): sig_len in/out, 0 or -1. */
static int sign_rs256(const EVP_MD_CTX *prepared, const char *input, unsigned char *sig, size_t *sig_len)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    int ok = mctx && EVP_MD_CTX_copy_ex(mctx, prepared) == 1 &&
             EVP_DigestSign(mctx, sig, sig_len, (const unsigned char *)input, strlen(input)) == 1;
    EVP_MD_CTX_free(mctx);
    ERR_clear_error();
    return ok ? 0 : -1;
}

static char *b64url_json(const json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    char *out = s ? b64url_encode(s, strlen(s)) : NULL;
    free(s);
    return out;
}

char *jwt_sign(const jwk *k, const json_t *header_extra, const json_t *claims,
               char *err, size_t errlen)
{
    if ((header_extra && !json_is_object(header_extra)) || !json_is_object(claims)) {
        set_err(err, errlen, "header and claims must be JSON objects");
        return NULL;
    }
    /* The default header was written once by jwk_new (k->hdr64); with header_extra, the
     * extra fields go after the default ones and may replace them. */
    json_t *hdr = NULL;
    const char *alg = "RS256";
    if (header_extra || !k || !k->hdr64) {
        hdr = default_header(k ? k->kid : NULL);
        if (header_extra) {   /* a private copy: header_extra may be shared by other threads */
            json_t *extra = json_deep_copy(header_extra);
            json_object_update(hdr, extra);
            json_decref(extra);
        }
        alg = json_string_value(json_object_get(hdr, "alg"));
    }

    bool pss;
    char *h64 = NULL, *p64 = NULL, *input = NULL, *out = NULL;
    unsigned char *sig = NULL;
    if (!alg_digest(alg, &pss)) {   /* before the key is looked at */
        set_err(err, errlen, "alg not allowed (only RS256, PS256)");
        goto done;
    }
    if (!jwk_is_private(k)) {
        set_err(err, errlen, "signing needs a private key");
        goto done;
    }
    h64 = hdr ? b64url_json(hdr) : xstrdup(k->hdr64);
    p64 = b64url_json(claims);
    if (!h64 || !p64) {
        set_err(err, errlen, "cannot serialise header or claims");
        goto done;
    }
    input = xasprintf("%s.%s", h64, p64);
    size_t sig_len = (size_t)EVP_PKEY_get_size(k->pkey);
    sig = xmalloc(sig_len);
    if ((k->rs256 && !strcmp(alg, "RS256") ? sign_rs256(k->rs256, input, sig, &sig_len)
                                           : rsa_sign(alg, k->pkey, input, sig, &sig_len)) != 0) {
        set_err(err, errlen, "signing failed");
        goto done;
    }
    char *s64 = b64url_encode(sig, sig_len);
    out = xasprintf("%s.%s", input, s64);
    free(s64);
    if (strlen(out) > JWT_MAX_BYTES) {   /* verifiers (ours included) would refuse it */
        free(out);
        out = NULL;
        set_err(err, errlen, "token too large");
    }
done:
    json_decref(hdr);
    free(h64);
    free(p64);
    free(input);
    free(sig);
    return out;
}

/* A base64url segment parsed as a JSON object; NULL otherwise. */
static json_t *segment_json(const char *s, size_t len)
{
    size_t n = 0;
    unsigned char *raw = b64url_decode(s, len, &n);
    /* RFC 7515 §5.2 step 4 lets us reject duplicate member names; we do, so two parsers
     * can never disagree about which "alg" a header carries. */
    json_t *j = raw ? json_loadb((const char *)raw, n, JSON_REJECT_DUPLICATES, NULL) : NULL;
    free(raw);
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

int jwt_decode(const char *compact, jwt *out, char *err, size_t errlen)
{
    if (!out) return -1;
    memset(out, 0, sizeof *out);
    if (!compact) {
        set_err(err, errlen, "no token");
        return -1;
    }
    size_t len = strnlen(compact, JWT_MAX_BYTES + 1);
    if (len > JWT_MAX_BYTES) {
        set_err(err, errlen, "token too large");
        return -1;
    }
    /* RFC 7515 §7.1: compact serialisation is exactly three base64url parts. */
    const char *d1 = memchr(compact, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - compact)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - compact))) {
        set_err(err, errlen, "token is not three dot-separated parts");
        return -1;
    }
    const char *sig64 = d2 + 1;
    size_t sig64_len = len - (size_t)(sig64 - compact);

    out->header = segment_json(compact, (size_t)(d1 - compact));
    out->claims = segment_json(d1 + 1, (size_t)(d2 - d1 - 1));
    out->sig = b64url_decode(sig64, sig64_len, &out->sig_len);
    /* Only the canonical unpadded encoding of the signature is accepted: the decoder
     * ignores the spare low bits of the last character, and without this check one
     * signature would have several spellings, defeating replay caches keyed on the token. */
    char *canon = out->sig ? b64url_encode(out->sig, out->sig_len) : NULL;
    bool sig_ok = canon && strlen(canon) == sig64_len && memcmp(canon, sig64, sig64_len) == 0;
    free(canon);
    if (!out->header || !out->claims || !sig_ok) {
        set_err(err, errlen, !out->header ? "token header is not a base64url JSON object"
                             : !out->claims ? "token claims are not a base64url JSON object"
                                            : "token signature is not base64url");
        jwt_clear(out);
        return -1;
    }
    out->signing_input = xstrndup(compact, (size_t)(d2 - compact));
    return 0;
}

void jwt_clear(jwt *t)
{
    if (!t) return;
    json_decref(t->header);
    json_decref(t->claims);
    free(t->signing_input);
    free(t->sig);
    memset(t, 0, sizeof *t);
}

/* ES256/ES384 (RFC 7518 §3.4): the JWS signature is R || S, each half the length; OpenSSL
 * verifies the DER form, which is built from the two numbers. 0 if it verifies. */
static int ec_verify(const verify_alg *a, EVP_PKEY *pkey, const char *input, const unsigned char *sig)
{
    size_t half = a->sig_len / 2;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)half, NULL), *s = BN_bin2bn(sig + half, (int)half, NULL);
    unsigned char *der = NULL;
    int der_len = -1, ok = 0;
    if (es && r && s && ECDSA_SIG_set0(es, r, s) == 1) {
        r = s = NULL; /* es has them */
        der_len = i2d_ECDSA_SIG(es, &der);
    }
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    if (der_len > 0 && mctx &&
        EVP_DigestVerifyInit_ex(mctx, NULL, a->digest, NULL, NULL, pkey, NULL) == 1)
        ok = EVP_DigestVerify(mctx, der, (size_t)der_len, (const unsigned char *)input, strlen(input));
    EVP_MD_CTX_free(mctx);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    BN_free(r);
    BN_free(s);
    ERR_clear_error();
    return ok == 1 ? 0 : -1;
}

/* RSxxx and PSxxx (RFC 7518 §3.3, §3.5). 0 if it verifies. */
static int rsa_verify(const verify_alg *a, EVP_PKEY *pkey, const char *input, const unsigned char *sig, size_t sig_len)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok = mctx ? EVP_DigestVerifyInit_ex(mctx, &pctx, a->digest, NULL, NULL, pkey, NULL) : 0;
    if (ok == 1 && a->pss && set_pss(pctx) != 0) ok = 0;
    if (ok == 1) ok = EVP_DigestVerify(mctx, sig, sig_len, (const unsigned char *)input, strlen(input));
    EVP_MD_CTX_free(mctx);
    ERR_clear_error();
    return ok == 1 ? 0 : -1;
}

/* EdDSA with Ed25519 (RFC 8037 §3.1): the message itself, no separate digest. */
static int ed25519_verify(EVP_PKEY *pkey, const char *input, const unsigned char *sig, size_t sig_len)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    int ok = mctx && EVP_DigestVerifyInit_ex(mctx, NULL, NULL, NULL, NULL, pkey, NULL) == 1
                 ? EVP_DigestVerify(mctx, sig, sig_len, (const unsigned char *)input, strlen(input))
                 : 0;
    EVP_MD_CTX_free(mctx);
    ERR_clear_error();
    return ok == 1 ? 0 : -1;
}

int jwt_verify(const jwt *t, const jwk *k, char *err, size_t errlen)
{
    if (!t || !t->header || !t->signing_input) {
        set_err(err, errlen, "no decoded token");
        return -1;
    }
    /* First the allow-list, whatever the key: this is what stops "none" and the
     * HS256-with-the-RSA-public-key-as-secret confusion (RFC 8725 §2.1, §3.1). */
    const verify_alg *a = verify_alg_of(jwt_alg(t));
    if (!a) {
        set_err(err, errlen, "alg not allowed (only " VERIFY_ALGS_TEXT ")");
        return -1;
    }
    /* RFC 7515 §4.1.11: extensions listed in "crit" must be understood; we know none. */
    if (json_object_get(t->header, "crit")) {
        set_err(err, errlen, "unsupported crit header");
        return -1;
    }
    /* Then the key must be of the alg's kind (and curve): never read as another. */
    char curve[32];
    bool fits = k && (a->fam == FAM_RSA       ? usable_rsa(k->pkey)
                      : a->fam == FAM_ED25519 ? EVP_PKEY_is_a(k->pkey, "ED25519")
                                              : ec_curve(k->pkey, curve, sizeof curve) && !strcmp(curve, a->curve));
    if (!fits) {
        set_err(err, errlen, a->fam == FAM_RSA ? "verification key is not an RSA key"
                                               : "verification key does not fit the token's alg");
        return -1;
    }
    size_t sig_len = t->sig_len;
    int rc;
    if (a->fam == FAM_RSA) /* RFC 8017 §8.1.2/§8.2.2 step 1: as long as the modulus */
        rc = sig_len == (size_t)EVP_PKEY_get_size(k->pkey) ? rsa_verify(a, k->pkey, t->signing_input, t->sig, sig_len)
                                                           : -1;
    else if (sig_len != a->sig_len)
        rc = -1;
    else if (a->fam == FAM_EC)
        rc = ec_verify(a, k->pkey, t->signing_input, t->sig);
    else
        rc = ed25519_verify(k->pkey, t->signing_input, t->sig, sig_len);
    if (rc != 0) {
        set_err(err, errlen, "signature does not verify");
        return -1;
    }
    return 0;
}

const char *jwt_alg(const jwt *t)
{
    return t ? json_string_value(json_object_get(t->header, "alg")) : NULL;
}

const char *jwt_kid(const jwt *t)
{
    return t ? json_string_value(json_object_get(t->header, "kid")) : NULL;
}

const char *jwt_claim_str(const jwt *t, const char *name)
{
    return t ? json_string_value(json_object_get(t->claims, name)) : NULL;
}

bool jwt_claim_int(const jwt *t, const char *name, int64_t *out)
{
    const json_t *v = t ? json_object_get(t->claims, name) : NULL;
    if (!json_is_integer(v)) return false;
    if (out) *out = (int64_t)json_integer_value(v);
    return true;
}

/* A NumericDate (RFC 7519 §2) may be non-integer; seconds, truncated. -1 if present
 * but not a number (which must fail the check, not be ignored), 0 absent, 1 found. */
static int numeric_date(const jwt *t, const char *name, int64_t *out)
{
    const json_t *v = json_object_get(t->claims, name);
    if (!v) return 0;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (!json_is_real(v)) return -1;
    double d = json_real_value(v);
    if (!(d > -9.2e18 && d < 9.2e18)) return -1;   /* int64 range */
    *out = (int64_t)d;
    return 1;
}

static bool in_list(const char *s, const char *const *list)
{
    for (; s && *list; list++)
        if (strcmp(s, *list) == 0) return true;
    return false;
}

static jwt_check check_fail(jwt_check c, const char *msg, char *err, size_t errlen)
{
    if (err && errlen) snprintf(err, errlen, "%s", msg);
    return c;
}

jwt_check jwt_check_claims(const jwt *t, const jwt_expect *e, char *err, size_t errlen)
{
    const int64_t now = e && e->now ? e->now : util_now();
    const int64_t skew = e && e->skew_s > 0 ? e->skew_s : 0;
    int64_t exp = 0, nbf = 0;
    if (!t || !t->claims) return check_fail(JWT_CHECK_MISSING_EXP, "no claims", err, errlen);

    /* Lifetime, then audience, then issuer: the order Microsoft.IdentityModel uses, so
     * the first failure we name is the one an Entra-protected API would name. */
    int has_exp = numeric_date(t, "exp", &exp);
    if (has_exp < 0) return check_fail(JWT_CHECK_EXPIRED, "exp is not a NumericDate", err, errlen);
    if (!has_exp && e && e->require_exp)
        return check_fail(JWT_CHECK_MISSING_EXP, "token has no exp", err, errlen);
    /* RFC 7519 §4.1.4: valid only while now < exp (plus the allowed skew). */
    if (has_exp && now - skew >= exp)
        return check_fail(JWT_CHECK_EXPIRED, "token expired", err, errlen);
    /* RFC 7519 §4.1.5: not valid before nbf (minus the allowed skew). */
    int has_nbf = numeric_date(t, "nbf", &nbf);
    if (has_nbf < 0 || (has_nbf && now + skew < nbf))
        return check_fail(JWT_CHECK_NOT_YET_VALID, "token not yet valid (nbf)", err, errlen);

    if (e && e->audiences) {
        /* RFC 7519 §4.1.3: aud is a string or an array of strings; one match suffices. */
        const json_t *aud = json_object_get(t->claims, "aud");
        bool ok = in_list(json_string_value(aud), e->audiences);
        for (size_t i = 0; !ok && json_is_array(aud) && i < json_array_size(aud); i++)
            ok = in_list(json_string_value(json_array_get(aud, i)), e->audiences);
        if (!ok) return check_fail(JWT_CHECK_AUDIENCE, "audience not accepted", err, errlen);
    }
    if (e && e->issuers && !in_list(jwt_claim_str(t, "iss"), e->issuers))
        return check_fail(JWT_CHECK_ISSUER, "issuer not accepted", err, errlen);
    return JWT_CHECK_OK;
}

const char *jwt_check_name(jwt_check c)
{
    switch (c) {
    case JWT_CHECK_OK: return "ok";
    case JWT_CHECK_EXPIRED: return "expired";
    case JWT_CHECK_NOT_YET_VALID: return "not_yet_valid";
    case JWT_CHECK_ISSUER: return "issuer";
    case JWT_CHECK_AUDIENCE: return "audience";
    case JWT_CHECK_MISSING_EXP: return "missing_exp";
    }
    return "unknown";
}

char *jwt_claim_text(const jwt *t, const char *name)
{
    const json_t *c = json_object_get(t->claims, name);
    if (!c) return xstrdup("(none)");
    if (json_is_string(c)) return xstrdup(json_string_value(c));
    char *s = json_dumps(c, JSON_COMPACT | JSON_ENCODE_ANY);
    char *out = xstrdup(s ? s : "?");
    free(s);
    return out;
}
