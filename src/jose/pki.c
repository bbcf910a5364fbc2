/* pki — see pki.h. OpenSSL 3 EVP/X509 only; no deprecated RSA_* calls.
 *
 * Certificates follow RFC 5280 closely enough for the strict verifiers we meet:
 * GnuTLS (libmicrohttpd HTTPS) wants a CA with basicConstraints CA:TRUE and keyUsage
 * keyCertSign; Node.js (NODE_EXTRA_CA_CERTS) checks the server name against the SAN only.
 */
#include "jose/pki.h"

#include "core/b64.h"
#include "core/util.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <stdio.h>
#include <string.h>

/* "what: openssl reason", then clear the thread's error queue so the next call starts clean. */
static void fail(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    if (err && errlen) {
        if (e)
            snprintf(err, errlen, "%s: %s", what, ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "openssl error");
        else
            snprintf(err, errlen, "%s", what);
    }
    ERR_clear_error();
}

/* Never let OpenSSL prompt on the terminal for a passphrase: encrypted keys just fail. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf; (void)size; (void)rwflag; (void)u;
    return -1;
}

static BIO *mem_in(const char *pem)
{
    return BIO_new_mem_buf(pem, -1);
}

/* The contents of a memory BIO as a NUL-terminated string; frees the BIO. */
static char *bio_take(BIO *b)
{
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    char *s = n >= 0 ? xstrndup(data, (size_t)n) : NULL;
    BIO_free(b);
    return s;
}

static EVP_PKEY *load_private(const char *pem)
{
    BIO *b = pem ? mem_in(pem) : NULL;
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL) : NULL;
    BIO_free(b);
    return k;
}

static X509 *load_cert(const char *pem)
{
    BIO *b = pem ? mem_in(pem) : NULL;
    X509 *x = b ? PEM_read_bio_X509(b, NULL, no_passphrase, NULL) : NULL;
    BIO_free(b);
    return x;
}

char *pki_rsa_generate(int bits, char *err, size_t errlen)
{
    if (bits < 2048) {   /* RFC 7518 §3.3: 2048 bits or larger MUST be used with RS/PS */
        fail(err, errlen, "RSA key must be at least 2048 bits");
        return NULL;
    }
    EVP_PKEY *k = EVP_RSA_gen((unsigned)bits);
    if (!k) {
        fail(err, errlen, "RSA key generation failed");
        return NULL;
    }
    BIO *b = BIO_new(BIO_s_mem());
    char *pem = NULL;
    if (b && PEM_write_bio_PKCS8PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) == 1) {
        pem = bio_take(b);
        b = NULL;
    } else {
        fail(err, errlen, "cannot encode private key");
    }
    BIO_free(b);
    EVP_PKEY_free(k);
    return pem;
}

/* Add one extension in OpenSSL config syntax (the same strings as openssl.cnf). */
static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    if (!ext) return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : -1;
}

/* RFC 5280 §4.1.2.2: a positive serial of at most 20 octets; CA/B Forum wants >= 64
 * random bits. 16 random bytes read as an unsigned big-endian number qualify. */
static int set_random_serial(X509 *x)
{
    unsigned char raw[16];
    util_random(raw, sizeof raw);
    BIGNUM *bn = BN_bin2bn(raw, sizeof raw, NULL);
    ASN1_INTEGER *serial = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    int ok = serial && X509_set_serialNumber(x, serial) == 1;
    ASN1_INTEGER_free(serial);
    BN_free(bn);
    return ok ? 0 : -1;
}

char *pki_cert_create(const pki_cert_spec *spec, char *err, size_t errlen)
{
    if (!spec || !spec->subject_cn || !*spec->subject_cn || !spec->key_pem) {
        fail(err, errlen, "certificate spec needs subject_cn and key_pem");
        return NULL;
    }
    if (!spec->issuer_cert_pem != !spec->issuer_key_pem) {
        fail(err, errlen, "issuer_cert_pem and issuer_key_pem go together");
        return NULL;
    }
    const bool self_signed = spec->issuer_cert_pem == NULL;
    const int days = spec->days > 0 ? spec->days : 365;
    char *out = NULL;
    X509 *x = NULL, *issuer = NULL;
    EVP_PKEY *key = NULL, *issuer_key = NULL;
    const char *what = "cannot build certificate";

    if (!(key = load_private(spec->key_pem))) { what = "cannot read key_pem"; goto done; }
    if (!self_signed) {
        if (!(issuer = load_cert(spec->issuer_cert_pem))) { what = "cannot read issuer_cert_pem"; goto done; }
        if (!(issuer_key = load_private(spec->issuer_key_pem))) { what = "cannot read issuer_key_pem"; goto done; }
        if (X509_check_private_key(issuer, issuer_key) != 1) { what = "issuer key does not match issuer certificate"; goto done; }
        if (X509_check_ca(issuer) < 1) { what = "issuer certificate is not a CA"; goto done; }
    }

    if (!(x = X509_new())) goto done;
    X509_NAME *name = X509_get_subject_name(x);
    if (X509_set_version(x, X509_VERSION_3) != 1 || set_random_serial(x) != 0 ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                   (const unsigned char *)spec->subject_cn, -1, -1, 0) != 1 ||
        X509_set_issuer_name(x, self_signed ? name : X509_get_subject_name(issuer)) != 1 ||
        /* notBefore one hour back so a peer whose clock lags a little still accepts it */
        !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) ||
        X509_set_pubkey(x, key) != 1)
        goto done;

    /* The subject key identifier must be in place before the authority key identifier:
     * for a self-signed certificate "keyid:always" copies it from x itself. */
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, self_signed ? x : issuer, x, NULL, NULL, 0);
    const char *ku = spec->is_ca ? "critical,keyCertSign,cRLSign,digitalSignature"
                                 : "critical,digitalSignature,keyEncipherment";
    if (add_ext(x, &ctx, NID_basic_constraints, spec->is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE") ||
        add_ext(x, &ctx, NID_key_usage, ku) ||
        add_ext(x, &ctx, NID_subject_key_identifier, "hash") ||
        add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always")) {
        what = "cannot add certificate extensions";
        goto done;
    }
    /* RFC 6125 §6.4.4 / RFC 2818 §3.1: clients match the host against the SAN, not the CN. */
    if (spec->server &&
        (add_ext(x, &ctx, NID_ext_key_usage, "serverAuth") ||
         add_ext(x, &ctx, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1"))) {
        what = "cannot add server extensions";
        goto done;
    }
    if (X509_sign(x, self_signed ? key : issuer_key, EVP_sha256()) <= 0) {
        what = "cannot sign certificate";
        goto done;
    }

    BIO *b = BIO_new(BIO_s_mem());
    if (b && PEM_write_bio_X509(b, x) == 1) out = bio_take(b);
    else BIO_free(b);
done:
    if (!out) fail(err, errlen, what);
    X509_free(x);
    X509_free(issuer);
    EVP_PKEY_free(key);
    EVP_PKEY_free(issuer_key);
    return out;
}

char *pki_cert_thumbprint(const char *cert_pem, bool sha256, char *err, size_t errlen)
{
    X509 *x = load_cert(cert_pem);
    if (!x) {
        fail(err, errlen, "cannot read certificate");
        return NULL;
    }
    /* RFC 7515 §4.1.7/§4.1.8: digest of the DER encoding of the certificate. */
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    char *out = NULL;
    if (X509_digest(x, sha256 ? EVP_sha256() : EVP_sha1(), md, &len) == 1)
        out = b64url_encode(md, len);
    else
        fail(err, errlen, "cannot hash certificate");
    X509_free(x);
    return out;
}

char *pki_cert_der_b64(const char *cert_pem, char *err, size_t errlen)
{
    X509 *x = load_cert(cert_pem);
    unsigned char *der = NULL;
    int len = x ? i2d_X509(x, &der) : -1;
    char *out = NULL;
    if (len > 0)   /* RFC 7517 §4.7: x5c entries are standard base64, not base64url */
        out = b64_encode(der, (size_t)len);
    else
        fail(err, errlen, "cannot read certificate");
    OPENSSL_free(der);
    X509_free(x);
    return out;
}

char *pki_cert_pubkey(const char *cert_pem, char *err, size_t errlen)
{
    X509 *x = load_cert(cert_pem);
    EVP_PKEY *k = x ? X509_get0_pubkey(x) : NULL;
    BIO *b = k ? BIO_new(BIO_s_mem()) : NULL;
    char *out = NULL;
    if (b && PEM_write_bio_PUBKEY(b, k) == 1) {
        out = bio_take(b);
        b = NULL;
    } else {
        fail(err, errlen, "cannot read certificate public key");
    }
    BIO_free(b);
    X509_free(x);
    return out;
}

/* Every certificate in a PEM bundle, in order; NULL if there is none. */
static STACK_OF(X509) *load_certs(const char *pem)
{
    BIO *b = pem ? mem_in(pem) : NULL;
    STACK_OF(X509) *sk = b ? sk_X509_new_null() : NULL;
    X509 *x;
    while (sk && (x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL)) != NULL)
        if (!sk_X509_push(sk, x)) X509_free(x);
    ERR_clear_error();   /* the loop ends on a "no start line" error */
    BIO_free(b);
    if (sk && sk_X509_num(sk) == 0) {
        sk_X509_free(sk);
        sk = NULL;
    }
    return sk;
}

bool pki_cert_verify(const char *cert_pem, const char *ca_pem, char *err, size_t errlen)
{
    STACK_OF(X509) *chain = load_certs(cert_pem);   /* leaf first, then any intermediates */
    STACK_OF(X509) *anchors = load_certs(ca_pem);
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509 *leaf = NULL;
    const char *why = "certificate verification failed";
    bool ok = false;

    if (!chain) { why = "cannot read certificate"; goto done; }
    if (!anchors) { why = "cannot read CA certificate"; goto done; }
    if (!store || !ctx) goto done;
    for (int i = 0; i < sk_X509_num(anchors); i++)
        if (X509_STORE_add_cert(store, sk_X509_value(anchors, i)) != 1) goto done;
    /* The given CA is the trust anchor even when it is an intermediate (RFC 5280 §6.1:
     * any trusted CA may anchor a path), so a partial chain is allowed. The validity
     * period is checked against the current time by default. */
    X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
    leaf = sk_X509_shift(chain);
    if (X509_STORE_CTX_init(ctx, store, leaf, chain) != 1) goto done;
    ok = X509_verify_cert(ctx) == 1;
    if (!ok) why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
done:
    if (!ok && err && errlen) snprintf(err, errlen, "certificate not trusted: %s", why);
    ERR_clear_error();
    X509_free(leaf);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    sk_X509_pop_free(chain, X509_free);
    sk_X509_pop_free(anchors, X509_free);
    return ok;
}

bool pki_cert_key_match(const char *cert_pem, const char *key_pem, char *err, size_t errlen)
{
    X509 *cert = load_cert(cert_pem);
    EVP_PKEY *key = load_private(key_pem);
    const char *why = NULL;
    if (!cert) why = "not a PEM certificate";
    else if (!key) why = "not a PEM private key (or it is encrypted)";
    else if (X509_check_private_key(cert, key) != 1) why = "the key is not the certificate's";
    if (why && err && errlen) snprintf(err, errlen, "%s", why);
    ERR_clear_error();
    EVP_PKEY_free(key);
    X509_free(cert);
    return !why;
}
