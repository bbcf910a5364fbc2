/* Unit tests for src/jose: pki, jwt, jwks and the jwks_cache (against a loopback server). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "testutil.h"

#include "core/b64.h"
#include "core/http_client.h"
#include "core/http_server.h"
#include "core/util.h"
#include "jose/jwks.h"
#include "jose/jwt.h"
#include "jose/pki.h"

#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Made once for the whole group: RSA key generation is the slow part. */
static char *ca_key, *ca_cert, *other_ca_key, *other_ca_cert, *srv_key, *srv_cert;
static char *sign_key, *sign_cert, *other_key;

static int group_setup(void **state)
{
    (void)state;
    char err[256];
    httpc_global_init();
    ca_key = pki_rsa_generate(2048, err, sizeof err);
    other_ca_key = pki_rsa_generate(2048, err, sizeof err);
    srv_key = pki_rsa_generate(2048, err, sizeof err);
    sign_key = pki_rsa_generate(2048, err, sizeof err);
    other_key = pki_rsa_generate(2048, err, sizeof err);
    if (!ca_key || !other_ca_key || !srv_key || !sign_key || !other_key) return -1;
    ca_cert = pki_cert_create(&(pki_cert_spec){ .subject_cn = "agentid test CA", .key_pem = ca_key,
                                                .is_ca = true, .days = 30 }, err, sizeof err);
    other_ca_cert = pki_cert_create(&(pki_cert_spec){ .subject_cn = "agentid test CA", .key_pem = other_ca_key,
                                                      .is_ca = true }, err, sizeof err);
    srv_cert = pki_cert_create(&(pki_cert_spec){ .subject_cn = "localhost", .key_pem = srv_key,
                                                 .issuer_cert_pem = ca_cert, .issuer_key_pem = ca_key,
                                                 .server = true }, err, sizeof err);
    sign_cert = pki_cert_create(&(pki_cert_spec){ .subject_cn = "agentid token signing", .key_pem = sign_key },
                                err, sizeof err);
    return ca_cert && other_ca_cert && srv_cert && sign_cert ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    char *all[] = { ca_key, ca_cert, other_ca_key, other_ca_cert, srv_key, srv_cert,
                    sign_key, sign_cert, other_key };
    for (size_t i = 0; i < ARRAY_LEN(all); i++) free(all[i]);
    return 0;
}

/* ---- helpers (independent of the code under test where it matters) ---------------- */

static X509 *x509_of(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    assert_non_null(x);
    return x;
}

static EVP_PKEY *pkey_of(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    assert_non_null(k);
    return k;
}

/* b64url(header).b64url(claims).b64url(sig), from literal JSON text. */
static char *compact(const char *hdr, const char *claims, const unsigned char *sig, size_t sig_len)
{
    char *h = b64url_encode(hdr, strlen(hdr)), *c = b64url_encode(claims, strlen(claims));
    char *s = b64url_encode(sig, sig_len);
    char *out = xasprintf("%s.%s.%s", h, c, s);
    free(h);
    free(c);
    free(s);
    return out;
}

/* "h.c" of a token (the JWS signing input), caller frees. */
static char *signing_input_of(const char *tok)
{
    return xstrndup(tok, (size_t)(strrchr(tok, '.') - tok));
}

static char *sign_claims(const jwk *k, const char *hdr_extra, const char *claims)
{
    char err[256] = "";
    json_t *h = hdr_extra ? json_loads(hdr_extra, 0, NULL) : NULL;
    json_t *c = json_loads(claims, 0, NULL);
    assert_non_null(c);
    char *tok = jwt_sign(k, h, c, err, sizeof err);
    json_decref(h);
    json_decref(c);
    return tok;
}

/* 0 if tok decodes and verifies with k. */
static int decode_verify(const char *tok, const jwk *k, char *err, size_t errlen)
{
    jwt t;
    int rc = jwt_decode(tok, &t, err, errlen);
    if (rc == 0) rc = jwt_verify(&t, k, err, errlen);
    jwt_clear(&t);
    return rc;
}

/* ---- pki ------------------------------------------------------------------------- */

static void test_rsa_generate(void **state)
{
    (void)state;
    char err[256] = "";
    assert_non_null(strstr(sign_key, "-----BEGIN PRIVATE KEY-----"));   /* PKCS#8 */
    EVP_PKEY *k = pkey_of(sign_key);
    assert_true(EVP_PKEY_is_a(k, "RSA"));
    assert_int_equal(EVP_PKEY_get_bits(k), 2048);
    EVP_PKEY_free(k);
    assert_null(pki_rsa_generate(1024, err, sizeof err));
    assert_true(err[0] != '\0');
}

static void test_cert_ca_and_server(void **state)
{
    (void)state;
    char err[256] = "";
    X509 *ca = x509_of(ca_cert), *srv = x509_of(srv_cert);

    /* The CA: CA:TRUE and keyCertSign, as GnuTLS insists. */
    assert_int_equal(X509_check_ca(ca), 1);
    assert_true(X509_get_extension_flags(ca) & EXFLAG_CA);
    assert_true(X509_get_key_usage(ca) & KU_KEY_CERT_SIGN);
    assert_non_null(X509_get0_subject_key_id(ca));

    /* The server certificate: CA-signed, not a CA, SAN and serverAuth for Node/GnuTLS. */
    assert_int_equal(X509_check_ca(srv), 0);
    assert_int_equal(X509_check_issued(ca, srv), X509_V_OK);
    assert_int_equal(X509_check_host(srv, "localhost", 0, 0, NULL), 1);
    assert_int_equal(X509_check_ip_asc(srv, "127.0.0.1", 0), 1);
    assert_int_equal(X509_check_ip_asc(srv, "::1", 0), 1);
    assert_int_equal(X509_check_host(srv, "example.com", 0, 0, NULL), 0);
    assert_int_equal(X509_check_purpose(srv, X509_PURPOSE_SSL_SERVER, 0), 1);
    assert_true(X509_get_key_usage(srv) & KU_DIGITAL_SIGNATURE);
    assert_int_equal(X509_get_signature_nid(srv), NID_sha256WithRSAEncryption);
    /* notBefore about an hour in the past (clock-skew tolerance), notAfter ~365 days on. */
    time_t lo = time(NULL) - 3700, hi = time(NULL) - 3500;
    assert_true(X509_cmp_time(X509_get0_notBefore(srv), &lo) > 0);
    assert_true(X509_cmp_time(X509_get0_notBefore(srv), &hi) < 0);
    time_t y = time(NULL) + 364 * 86400;
    assert_true(X509_cmp_time(X509_get0_notAfter(srv), &y) > 0);
    /* Random serials: different certificates, different serials, about 128 bits. */
    assert_int_not_equal(ASN1_INTEGER_cmp(X509_get0_serialNumber(ca), X509_get0_serialNumber(srv)), 0);
    assert_in_range(ASN1_STRING_length(X509_get0_serialNumber(srv)), 14, 17);

    /* What a strict TLS client does: RFC 5280 strict mode, sslserver purpose, IP check. */
    X509_STORE *store = X509_STORE_new();
    X509_STORE_add_cert(store, ca);
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(ctx, store, srv, NULL);
    X509_VERIFY_PARAM *p = X509_STORE_CTX_get0_param(ctx);
    X509_VERIFY_PARAM_set_flags(p, X509_V_FLAG_X509_STRICT);
    X509_VERIFY_PARAM_set_purpose(p, X509_PURPOSE_SSL_SERVER);
    X509_VERIFY_PARAM_set1_ip_asc(p, "127.0.0.1");
    int ok = X509_verify_cert(ctx);
    if (ok != 1) print_error("strict verify: %s\n", X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
    assert_int_equal(ok, 1);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    X509_free(ca);
    X509_free(srv);

    /* pki_cert_verify: right CA yes, another CA with the very same name no. */
    assert_true(pki_cert_verify(srv_cert, ca_cert, err, sizeof err));
    assert_true(pki_cert_verify(ca_cert, ca_cert, err, sizeof err));
    err[0] = '\0';
    assert_false(pki_cert_verify(srv_cert, other_ca_cert, err, sizeof err));
    assert_true(err[0] != '\0');
    assert_false(pki_cert_verify(srv_cert, "not a pem", err, sizeof err));
    assert_false(pki_cert_verify("not a pem", ca_cert, err, sizeof err));

    /* pki_cert_key_match: a certificate with its own key, and each way of getting it wrong. */
    assert_true(pki_cert_key_match(srv_cert, srv_key, err, sizeof err));
    assert_false(pki_cert_key_match(srv_cert, other_key, err, sizeof err));
    assert_string_equal(err, "the key is not the certificate's");
    assert_false(pki_cert_key_match(srv_key, srv_key, err, sizeof err));
    assert_string_equal(err, "not a PEM certificate");
    assert_false(pki_cert_key_match(srv_cert, srv_cert, err, sizeof err));
    assert_string_equal(err, "not a PEM private key (or it is encrypted)");
}

static void test_cert_create_refusals(void **state)
{
    (void)state;
    char err[256];
    /* A non-CA certificate cannot issue. */
    assert_null(pki_cert_create(&(pki_cert_spec){ .subject_cn = "x", .key_pem = other_key,
                                                  .issuer_cert_pem = srv_cert, .issuer_key_pem = srv_key },
                                err, sizeof err));
    /* The issuer key must belong to the issuer certificate. */
    assert_null(pki_cert_create(&(pki_cert_spec){ .subject_cn = "x", .key_pem = other_key,
                                                  .issuer_cert_pem = ca_cert, .issuer_key_pem = other_ca_key },
                                err, sizeof err));
    assert_null(pki_cert_create(&(pki_cert_spec){ .subject_cn = "x", .key_pem = other_key,
                                                  .issuer_cert_pem = ca_cert }, err, sizeof err));
    assert_null(pki_cert_create(&(pki_cert_spec){ .subject_cn = "x", .key_pem = "junk" }, err, sizeof err));
    assert_null(pki_cert_create(&(pki_cert_spec){ .key_pem = other_key }, err, sizeof err));
}

/* Known answer: a fixed certificate and its fingerprints from
 *   openssl x509 -noout -fingerprint -sha1 / -sha256
 * converted from hex to base64url by a separate tool. */
static const char KAT_CERT[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBgjCCASmgAwIBAgIUSZOQfMSkoHeON/6mgi2fsPK+0CMwCgYIKoZIzj0EAwIw\n"
    "FjEUMBIGA1UEAwwLYWdlbnRpZC1rYXQwIBcNMjYxMTI1MjEzNTU0WhgPMjEyNjEx\n"
    "MDEyMTM1NTRaMBYxFDASBgNVBAMMC2FnZW50aWQta2F0MFkwEwYHKoZIzj0CAQYI\n"
    "KoZIzj0DAQcDQgAEJun4f8DwLQ2zcGZg5fnhuQU7WHZQzsCq46nDQ8T1PedZ10WK\n"
    "mdR/RncB4BGatRCQ+nvmhMSkf+qqx/EDJzWV3aNTMFEwHQYDVR0OBBYEFLFMVwQt\n"
    "oQSv/r8uMIKS++/2yESOMB8GA1UdIwQYMBaAFLFMVwQtoQSv/r8uMIKS++/2yESO\n"
    "MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgdjn7F8JU1gZfD92s\n"
    "ltBWZgXpNi7zti7Cges0gM0nOrwCIDSEuezx7amT/5bPFfv/iSnL/+rpjBVNlbBz\n"
    "VrNrpZck\n"
    "-----END CERTIFICATE-----\n";
/* SHA-1 19:D7:A5:29:6A:4C:E4:28:EE:24:DF:FF:C9:52:2E:79:3B:92:67:86 */
static const char KAT_X5T[] = "GdelKWpM5CjuJN__yVIueTuSZ4Y";
static const char KAT_X5T_S256[] = "pDTX-m1aH-ycXk03nKBbMFoFLBT4RBEa87sC9CTkn10";

static void test_thumbprint_kat(void **state)
{
    (void)state;
    char err[256];
    char *t1 = pki_cert_thumbprint(KAT_CERT, false, err, sizeof err);
    char *t256 = pki_cert_thumbprint(KAT_CERT, true, err, sizeof err);
    char *der = pki_cert_der_b64(KAT_CERT, err, sizeof err);
    assert_non_null(t1);
    assert_non_null(t256);
    assert_non_null(der);
    assert_string_equal(t1, KAT_X5T);
    assert_string_equal(t256, KAT_X5T_S256);
    /* x5c is the standard base64 DER, i.e. the PEM body without its line breaks. */
    char body[1024];
    size_t bl = 0;
    for (const char *p = strchr(KAT_CERT, '\n') + 1; strncmp(p, "-----END", 8) != 0; p++)
        if (*p != '\n' && bl < sizeof body - 1) body[bl++] = *p;
    body[bl] = '\0';
    assert_string_equal(der, body);
    free(t1);
    free(t256);
    free(der);
    assert_null(pki_cert_thumbprint("junk", false, err, sizeof err));
    assert_null(pki_cert_der_b64("junk", err, sizeof err));

    /* A generated certificate: x5t agrees with SHA-1 over the x5c bytes, computed here. */
    char *x5t = pki_cert_thumbprint(srv_cert, false, err, sizeof err);
    char *x5c = pki_cert_der_b64(srv_cert, err, sizeof err);
    size_t dlen = 0, tlen = 0;
    unsigned char *d = b64_decode(x5c, strlen(x5c), &dlen), *tb = b64url_decode(x5t, strlen(x5t), &tlen);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    assert_int_equal(EVP_Digest(d, dlen, md, &mdlen, EVP_sha1(), NULL), 1);
    assert_int_equal(tlen, 20);
    assert_memory_equal(tb, md, 20);
    free(x5t);
    free(x5c);
    free(d);
    free(tb);
}

static void test_cert_pubkey(void **state)
{
    (void)state;
    char err[256];
    char *pub = pki_cert_pubkey(srv_cert, err, sizeof err);
    assert_non_null(pub);
    assert_non_null(strstr(pub, "-----BEGIN PUBLIC KEY-----"));
    BIO *b = BIO_new_mem_buf(pub, -1);
    EVP_PKEY *p = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL), *k = pkey_of(srv_key), *o = pkey_of(other_key);
    assert_int_equal(EVP_PKEY_eq(p, k), 1);
    assert_int_not_equal(EVP_PKEY_eq(p, o), 1);
    EVP_PKEY_free(p);
    EVP_PKEY_free(k);
    EVP_PKEY_free(o);
    BIO_free(b);
    free(pub);
}

/* ---- jwk ------------------------------------------------------------------------- */

static void test_jwk_pem_and_public_json(void **state)
{
    (void)state;
    char err[256];
    jwk *k = jwk_from_pem(sign_key, "kid-1", err, sizeof err);
    assert_non_null(k);
    assert_true(jwk_is_private(k));
    assert_string_equal(jwk_kid(k), "kid-1");
    assert_null(jwk_x5t(k));

    /* Without a certificate: exactly kty, use, kid, n, e in that order. */
    json_t *j = jwk_public_json(k);
    const char *want1[] = { "kty", "use", "kid", "n", "e" };
    size_t i = 0;
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v) {
        assert_true(i < ARRAY_LEN(want1));
        assert_string_equal(key, want1[i++]);
    }
    assert_int_equal(i, ARRAY_LEN(want1));
    assert_string_equal(json_string_value(json_object_get(j, "e")), "AQAB");
    assert_string_equal(json_string_value(json_object_get(j, "use")), "sig");
    /* n is the 256-byte modulus, minimal big-endian, base64url without padding. */
    const char *n = json_string_value(json_object_get(j, "n"));
    assert_int_equal(strlen(n), 342);
    assert_null(strpbrk(n, "+/="));
    json_decref(j);

    /* With the certificate: x5t after kid, x5c last, as Entra publishes them. */
    assert_int_equal(jwk_set_cert(k, sign_cert, err, sizeof err), 0);
    char *x5t = pki_cert_thumbprint(sign_cert, false, err, sizeof err);
    char *x5c = pki_cert_der_b64(sign_cert, err, sizeof err);
    assert_string_equal(jwk_x5t(k), x5t);
    j = jwk_public_json(k);
    const char *want2[] = { "kty", "use", "kid", "x5t", "n", "e", "x5c" };
    i = 0;
    json_object_foreach(j, key, v) {
        assert_true(i < ARRAY_LEN(want2));
        assert_string_equal(key, want2[i++]);
    }
    assert_int_equal(i, ARRAY_LEN(want2));
    assert_int_equal(json_array_size(json_object_get(j, "x5c")), 1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "x5c"), 0)), x5c);
    assert_null(json_object_get(j, "d"));   /* never the private parts */
    assert_null(json_object_get(j, "p"));
    json_decref(j);

    /* A certificate for another key is refused. */
    assert_int_equal(jwk_set_cert(k, srv_cert, err, sizeof err), -1);
    assert_string_equal(jwk_x5t(k), x5t);

    /* From the certificate: public only, x5t filled, no kid. */
    jwk *c = jwk_from_pem(sign_cert, NULL, err, sizeof err);
    assert_non_null(c);
    assert_false(jwk_is_private(c));
    assert_null(jwk_kid(c));
    assert_string_equal(jwk_x5t(c), x5t);
    /* Refcounting: a ref survives the creator's unref. */
    jwk *r = jwk_ref(c);
    jwk_unref(c);
    assert_string_equal(jwk_x5t(r), x5t);
    jwk_unref(r);

    /* From the public key PEM. */
    char *pub = pki_cert_pubkey(sign_cert, err, sizeof err);
    jwk *p = jwk_from_pem(pub, "kid-1", err, sizeof err);
    assert_non_null(p);
    assert_false(jwk_is_private(p));
    jwk_unref(p);
    free(pub);

    assert_null(jwk_from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", NULL, err, sizeof err));
    assert_null(jwk_from_pem("garbage", NULL, err, sizeof err));
    jwk_unref(NULL);
    free(x5t);
    free(x5c);
    jwk_unref(k);
}

static void test_jwk_small_key_refused(void **state)
{
    (void)state;
    char err[256];
    EVP_PKEY *small = EVP_RSA_gen(1024);
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PKCS8PrivateKey(b, small, NULL, NULL, 0, NULL, NULL);
    char *pem = NULL;
    long n = BIO_get_mem_data(b, &pem);
    char *s = xstrndup(pem, (size_t)n);
    err[0] = '\0';
    assert_null(jwk_from_pem(s, "small", err, sizeof err));   /* RFC 7518 §3.3 */
    assert_true(err[0] != '\0');
    free(s);
    BIO_free(b);
    EVP_PKEY_free(small);
}

/* RFC 7515 Appendix A.2: an RS256 JWS and the public key that verifies it. */
static const char A2_N[] =
    "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-"
    "yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-"
    "KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9"
    "iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
static const char A2_JWS[] =
    "eyJhbGciOiJSUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9"
    "uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_"
    "eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt"
    "5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

static void test_rfc7515_a2_known_answer(void **state)
{
    (void)state;
    char err[256];
    json_t *j = json_pack("{ssssss}", "kty", "RSA", "n", A2_N, "e", "AQAB");
    jwk *k = jwk_from_json(j, err, sizeof err);
    assert_non_null(k);
    assert_false(jwk_is_private(k));
    jwt t;
    assert_int_equal(jwt_decode(A2_JWS, &t, err, sizeof err), 0);
    assert_string_equal(jwt_alg(&t), "RS256");
    assert_null(jwt_kid(&t));
    assert_string_equal(jwt_claim_str(&t, "iss"), "joe");
    int64_t exp = 0;
    assert_true(jwt_claim_int(&t, "exp", &exp));
    assert_int_equal(exp, 1300819380);
    assert_false(jwt_claim_int(&t, "iss", &exp));
    assert_null(jwt_claim_str(&t, "exp"));
    assert_int_equal(t.sig_len, 256);
    assert_int_equal(jwt_verify(&t, k, err, sizeof err), 0);
    /* Its public JWK round-trips to the same n. */
    json_t *pub = jwk_public_json(k);
    assert_string_equal(json_string_value(json_object_get(pub, "n")), A2_N);
    json_decref(pub);
    jwt_clear(&t);
    jwk_unref(k);
    json_decref(j);
}

static void test_jwk_from_json_refusals(void **state)
{
    (void)state;
    char err[256];
    const char *bad[] = {
        "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\"}",
        "{\"kty\":\"oct\",\"k\":\"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow\"}",
        "{\"kty\":\"RSA\",\"e\":\"AQAB\"}",
        "{\"kty\":\"RSA\",\"n\":\"!!!\",\"e\":\"AQAB\"}",
        "{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}",   /* far too small */
        "[1,2]",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        json_t *j = json_loads(bad[i], 0, NULL);
        assert_non_null(j);
        assert_null(jwk_from_json(j, err, sizeof err));
        json_decref(j);
    }
    json_t *enc = json_pack("{ssssssss}", "kty", "RSA", "use", "enc", "n", A2_N, "e", "AQAB");
    assert_null(jwk_from_json(enc, err, sizeof err));
    json_decref(enc);
    json_t *kidnum = json_pack("{sssssssi}", "kty", "RSA", "n", A2_N, "e", "AQAB", "kid", 7);
    assert_null(jwk_from_json(kidnum, err, sizeof err));
    json_decref(kidnum);
}

/* ---- jwt sign / verify ----------------------------------------------------------- */

static void test_sign_verify_rs256(void **state)
{
    (void)state;
    char err[256] = "";
    jwk *k = jwk_from_pem(sign_key, "kid-1", err, sizeof err);
    jwk *pub = jwk_from_pem(sign_cert, "kid-1", err, sizeof err);
    char *tok = sign_claims(k, NULL, "{\"sub\":\"agent\",\"n\":42}");
    assert_non_null(tok);
    jwt t;
    assert_int_equal(jwt_decode(tok, &t, err, sizeof err), 0);
    /* Header exactly {"typ":"JWT","alg":"RS256","kid":"kid-1"}. */
    char *hdr = json_dumps(t.header, JSON_COMPACT);
    assert_string_equal(hdr, "{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"kid-1\"}");
    free(hdr);
    assert_string_equal(jwt_claim_str(&t, "sub"), "agent");
    char *si = signing_input_of(tok);
    assert_string_equal(t.signing_input, si);
    free(si);
    assert_int_equal(jwt_verify(&t, pub, err, sizeof err), 0);
    assert_int_equal(jwt_verify(&t, k, err, sizeof err), 0);
    jwt_clear(&t);
    /* PKCS#1 v1.5 is deterministic: the same input signs to the same token. */
    char *again = sign_claims(k, NULL, "{\"sub\":\"agent\",\"n\":42}");
    assert_string_equal(tok, again);
    free(again);
    free(tok);

    /* header_extra adds fields and may override kid/typ. */
    tok = sign_claims(k, "{\"x5t\":\"abc\",\"kid\":\"kid-2\",\"typ\":\"at+jwt\"}", "{}");
    assert_int_equal(jwt_decode(tok, &t, err, sizeof err), 0);
    assert_string_equal(jwt_kid(&t), "kid-2");
    assert_string_equal(json_string_value(json_object_get(t.header, "x5t")), "abc");
    assert_string_equal(json_string_value(json_object_get(t.header, "typ")), "at+jwt");
    assert_int_equal(jwt_verify(&t, pub, err, sizeof err), 0);
    jwt_clear(&t);
    free(tok);

    /* A public key cannot sign. */
    err[0] = '\0';
    assert_null(sign_claims(pub, NULL, "{}"));
    jwk_unref(k);
    jwk_unref(pub);
}

/* RS256 made independently with OpenSSL over literal header and claims text. */
/* A JWS made independently with OpenSSL: RS256, or PS256 with the salt length given. */
static char *raw_sign(const char *key_pem, const char *hdr, const char *claims, bool pss, int saltlen)
{
    char *h = b64url_encode(hdr, strlen(hdr)), *c = b64url_encode(claims, strlen(claims));
    char *input = xasprintf("%s.%s", h, c);
    EVP_PKEY *k = pkey_of(key_pem);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_PKEY_CTX *p = NULL;
    unsigned char sig[512];
    size_t len = sizeof sig;
    assert_int_equal(EVP_DigestSignInit(m, &p, EVP_sha256(), NULL, k), 1);
    if (pss) {
        assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(p, RSA_PKCS1_PSS_PADDING), 1);
        assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(p, saltlen), 1);
    }
    assert_int_equal(EVP_DigestSign(m, sig, &len, (unsigned char *)input, strlen(input)), 1);
    char *s = b64url_encode(sig, len);
    char *tok = xasprintf("%s.%s", input, s);
    free(s);
    free(h);
    free(c);
    free(input);
    EVP_MD_CTX_free(m);
    EVP_PKEY_free(k);
    return tok;
}

static char *raw_rs256(const char *key_pem, const char *hdr, const char *claims)
{
    return raw_sign(key_pem, hdr, claims, false, 0);
}

typedef struct {
    const jwk *k, *pub;
    int id, bad;
} signer;

static void *sign_many(void *arg)
{
    signer *s = arg;
    char claims[64], sub[32], err[256];
    for (int i = 0; i < 8; i++) {
        snprintf(sub, sizeof sub, "t%d-%d", s->id, i);
        snprintf(claims, sizeof claims, "{\"sub\":\"%s\"}", sub);
        char *tok = sign_claims(s->k, NULL, claims);
        jwt t;
        if (!tok || jwt_decode(tok, &t, err, sizeof err) != 0) {
            s->bad++;
        } else {
            const char *got = jwt_claim_str(&t, "sub");
            if (jwt_verify(&t, s->pub, err, sizeof err) != 0 || !got || strcmp(got, sub) != 0) s->bad++;
            jwt_clear(&t);
        }
        free(tok);
    }
    return NULL;
}

/* jwt_sign's prepared parts (the default header written once, the RS256 context copied per
 * signature): the token is byte for byte what OpenSSL makes from scratch, with and without
 * header_extra, and threads signing with one key at once all get valid, distinct tokens. */
static void test_sign_rs256_prepared(void **state)
{
    (void)state;
    char err[256] = "";
    jwk *k = jwk_from_pem(sign_key, "kid-1", err, sizeof err);
    jwk *pub = jwk_from_pem(sign_cert, "kid-1", err, sizeof err);
    const char *claims = "{\"sub\":\"agent\",\"n\":42}";
    char *want = raw_rs256(sign_key, "{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"kid-1\"}", claims);
    char *tok = sign_claims(k, NULL, claims);
    assert_string_equal(tok, want);
    free(tok);
    tok = sign_claims(k, "{}", claims);   /* the header built per token: the same bytes */
    assert_string_equal(tok, want);
    free(tok);
    free(want);
    want = raw_rs256(sign_key, "{\"typ\":\"JWT\",\"alg\":\"RS256\",\"kid\":\"kid-1\",\"x5t\":\"abc\"}", claims);
    tok = sign_claims(k, "{\"x5t\":\"abc\"}", claims);
    assert_string_equal(tok, want);
    free(tok);
    free(want);
    /* a key without kid */
    jwk *nokid = jwk_from_pem(sign_key, NULL, err, sizeof err);
    want = raw_rs256(sign_key, "{\"typ\":\"JWT\",\"alg\":\"RS256\"}", claims);
    tok = sign_claims(nokid, NULL, claims);
    assert_string_equal(tok, want);
    free(tok);
    free(want);
    jwk_unref(nokid);

    pthread_t th[4];
    signer s[4];
    for (int i = 0; i < 4; i++) {
        s[i] = (signer){.k = k, .pub = pub, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, sign_many, &s[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(s[i].bad, 0);
    }
    jwk_unref(k);
    jwk_unref(pub);
}

static char *raw_ps256(const char *key_pem, const char *hdr, const char *claims, int saltlen)
{
    return raw_sign(key_pem, hdr, claims, true, saltlen);
}

static void test_sign_verify_ps256(void **state)
{
    (void)state;
    char err[256] = "";
    jwk *k = jwk_from_pem(sign_key, "kid-1", err, sizeof err);
    jwk *pub = jwk_from_pem(sign_cert, "kid-1", err, sizeof err);
    char *a = sign_claims(k, "{\"alg\":\"PS256\"}", "{\"sub\":\"agent\"}");
    char *b = sign_claims(k, "{\"alg\":\"PS256\"}", "{\"sub\":\"agent\"}");
    assert_non_null(a);
    assert_non_null(b);
    assert_string_not_equal(a, b);   /* PSS is randomised: proof it is not PKCS#1 v1.5 */
    jwt t;
    assert_int_equal(jwt_decode(a, &t, err, sizeof err), 0);
    assert_string_equal(jwt_alg(&t), "PS256");
    assert_int_equal(jwt_verify(&t, pub, err, sizeof err), 0);

    /* Verify our PS256 independently: salt length 32 (RFC 7518 §3.5), MGF1-SHA256. */
    EVP_PKEY *pk = pkey_of(sign_key);
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    EVP_PKEY_CTX *p = NULL;
    assert_int_equal(EVP_DigestVerifyInit(m, &p, EVP_sha256(), NULL, pk), 1);
    EVP_PKEY_CTX_set_rsa_padding(p, RSA_PKCS1_PSS_PADDING);
    EVP_PKEY_CTX_set_rsa_pss_saltlen(p, 32);
    assert_int_equal(EVP_DigestVerify(m, t.sig, t.sig_len, (unsigned char *)t.signing_input,
                                      strlen(t.signing_input)), 1);
    EVP_MD_CTX_free(m);
    EVP_PKEY_free(pk);
    jwt_clear(&t);

    /* And a PS256 token made elsewhere verifies; one with a non-standard salt does not. */
    char *ext = raw_ps256(sign_key, "{\"alg\":\"PS256\",\"kid\":\"kid-1\"}", "{\"sub\":\"x\"}", 32);
    assert_int_equal(decode_verify(ext, pub, err, sizeof err), 0);
    char *odd = raw_ps256(sign_key, "{\"alg\":\"PS256\",\"kid\":\"kid-1\"}", "{\"sub\":\"x\"}", RSA_PSS_SALTLEN_MAX);
    assert_int_equal(decode_verify(odd, pub, err, sizeof err), -1);
    /* The same PSS signature relabelled RS256 fails: the alg decides the padding. */
    assert_int_equal(jwt_decode(a, &t, err, sizeof err), 0);
    json_object_set_new(t.header, "alg", json_string("RS256"));
    assert_int_equal(jwt_verify(&t, pub, err, sizeof err), -1);
    jwt_clear(&t);
    free(a);
    free(b);
    free(ext);
    free(odd);
    jwk_unref(k);
    jwk_unref(pub);
}

static void test_tampering(void **state)
{
    (void)state;
    char err[256];
    jwk *k = jwk_from_pem(sign_key, "kid-1", err, sizeof err);
    char *tok = sign_claims(k, NULL, "{\"sub\":\"agent\",\"roles\":[\"read\"]}");
    assert_int_equal(decode_verify(tok, k, err, sizeof err), 0);

    /* Payload swapped for another, original header and signature kept. */
    const char *d1 = strchr(tok, '.'), *d2 = strrchr(tok, '.');
    const char *evil_json = "{\"sub\":\"agent\",\"roles\":[\"admin\"]}";
    char *evil = b64url_encode(evil_json, strlen(evil_json));
    char *t2 = xasprintf("%.*s.%s%s", (int)(d1 - tok), tok, evil, d2);
    err[0] = '\0';
    assert_int_equal(decode_verify(t2, k, err, sizeof err), -1);
    assert_non_null(strstr(err, "signature"));
    free(t2);
    free(evil);

    /* One bit of the signature flipped (re-encoded canonically). */
    jwt t;
    assert_int_equal(jwt_decode(tok, &t, err, sizeof err), 0);
    t.sig[100] ^= 0x01;
    assert_int_equal(jwt_verify(&t, k, err, sizeof err), -1);
    t.sig[100] ^= 0x01;
    assert_int_equal(jwt_verify(&t, k, err, sizeof err), 0);
    /* A truncated signature. */
    t.sig_len--;
    assert_int_equal(jwt_verify(&t, k, err, sizeof err), -1);
    t.sig_len++;
    jwt_clear(&t);

    /* The same signature spelled non-canonically (spare low bits set in the last char). */
    char *t3 = xstrdup(tok);
    char *last = t3 + strlen(t3) - 1;
    const char *alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    *last = alpha[(strchr(alpha, *last) - alpha) | 1];   /* 256 bytes: 4 spare bits */
    if (strcmp(t3, tok) == 0) *last = alpha[(strchr(alpha, *last) - alpha) | 2];
    assert_string_not_equal(t3, tok);
    assert_int_equal(jwt_decode(t3, &t, err, sizeof err), -1);
    free(t3);
    free(tok);
    jwk_unref(k);
}

static void test_alg_none_refused(void **state)
{
    (void)state;
    char err[256];
    jwk *k = jwk_from_pem(sign_key, "kid-1", err, sizeof err);
    const char *hdrs[] = { "{\"alg\":\"none\",\"typ\":\"JWT\"}", "{\"alg\":\"None\"}", "{\"typ\":\"JWT\"}",
                           "{\"alg\":\"HS512\"}", "{\"alg\":\"ES256K\"}", "{\"alg\":[\"RS256\"]}" };
    for (size_t i = 0; i < ARRAY_LEN(hdrs); i++) {
        char *tok = compact(hdrs[i], "{\"sub\":\"admin\"}", (const unsigned char *)"", 0);
        jwt t;
        assert_int_equal(jwt_decode(tok, &t, err, sizeof err), 0);   /* decoding is not trusting */
        err[0] = '\0';
        assert_int_equal(jwt_verify(&t, k, err, sizeof err), -1);
        assert_non_null(strstr(err, "alg"));
        jwt_clear(&t);
        free(tok);
    }
    /* Allowed algs with no signature: refused all the same (an RSA signature is as long as the
     * modulus; ES256 does not take an RSA key). */
    const char *allowed[] = { "{\"alg\":\"RS512\"}", "{\"alg\":\"PS384\"}", "{\"alg\":\"ES256\"}", "{\"alg\":\"EdDSA\"}" };
    for (size_t i = 0; i < ARRAY_LEN(allowed); i++) {
        char *tok = compact(allowed[i], "{\"sub\":\"admin\"}", (const unsigned char *)"", 0);
        jwt t;
        assert_int_equal(jwt_decode(tok, &t, err, sizeof err), 0);
        assert_int_equal(jwt_verify(&t, k, err, sizeof err), -1);
        jwt_clear(&t);
        free(tok);
    }
    /* Nor can one be signed. */
    assert_null(sign_claims(k, "{\"alg\":\"none\"}", "{}"));
    assert_null(sign_claims(k, "{\"alg\":\"HS256\"}", "{}"));
    assert_null(sign_claims(k, "{\"alg\":\"RS384\"}", "{}"));
    /* A header with "crit" we do not understand is refused (RFC 7515 §4.1.11). */
    char *tok = sign_claims(k, "{\"crit\":[\"exp\"],\"exp\":1}", "{}");
    assert_non_null(tok);
    assert_int_equal(decode_verify(tok, k, err, sizeof err), -1);
    free(tok);
    jwk_unref(k);
}

/* The classic key confusion: HS256 with the RSA public key PEM as the HMAC secret. */
static void test_hs256_key_confusion_refused(void **state)
{
    (void)state;
    char err[256];
    char *pub_pem = pki_cert_pubkey(sign_cert, err, sizeof err);
    jwk *pub = jwk_from_pem(pub_pem, "kid-1", err, sizeof err);
    assert_non_null(pub);

    char *unsigned_tok = compact("{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"kid-1\"}",
                                 "{\"sub\":\"admin\"}", (const unsigned char *)"", 0);
    char *input = signing_input_of(unsigned_tok);
    free(unsigned_tok);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned mac_len = 0;
    assert_non_null(HMAC(EVP_sha256(), pub_pem, (int)strlen(pub_pem), (unsigned char *)input,
                         strlen(input), mac, &mac_len));
    assert_int_equal(mac_len, 32);
    char *s = b64url_encode(mac, mac_len);
    char *tok = xasprintf("%s.%s", input, s);

    jwt t;
    assert_int_equal(jwt_decode(tok, &t, err, sizeof err), 0);
    assert_string_equal(jwt_alg(&t), "HS256");
    err[0] = '\0';
    assert_int_equal(jwt_verify(&t, pub, err, sizeof err), -1);
    assert_non_null(strstr(err, "alg"));
    /* Relabelled RS256 the HMAC is just a bad signature. */
    json_object_set_new(t.header, "alg", json_string("RS256"));
    assert_int_equal(jwt_verify(&t, pub, err, sizeof err), -1);
    jwt_clear(&t);
    free(input);
    free(s);
    free(tok);
    free(pub_pem);
    jwk_unref(pub);
}

static void test_wrong_key_refused(void **state)
{
    (void)state;
    char err[256];
    jwk *k = jwk_from_pem(sign_key, "kid-1", err, sizeof err);
    jwk *o = jwk_from_pem(other_key, "kid-1", err, sizeof err);
    char *tok = sign_claims(k, NULL, "{\"sub\":\"agent\"}");
    assert_int_equal(decode_verify(tok, o, err, sizeof err), -1);
    assert_int_equal(decode_verify(tok, NULL, err, sizeof err), -1);
    assert_int_equal(decode_verify(tok, k, err, sizeof err), 0);
    free(tok);
    jwk_unref(k);
    jwk_unref(o);
}

static void test_decode_rejects(void **state)
{
    (void)state;
    char err[256];
    jwt t;
    jwk *k = jwk_from_pem(sign_key, "kid-1", err, sizeof err);
    char *tok = sign_claims(k, NULL, "{\"sub\":\"agent\"}");
    const char *d1 = strchr(tok, '.');

    char *two = xstrndup(tok, (size_t)(strrchr(tok, '.') - tok));
    char *four = xasprintf("%s.%s", tok, "AAAA");
    char *bad_hdr_json = compact("{\"alg\":\"RS256\"", "{}", (const unsigned char *)"x", 1);
    char *hdr_array = compact("[\"RS256\"]", "{}", (const unsigned char *)"x", 1);
    char *claims_str = compact("{\"alg\":\"RS256\"}", "\"sub\"", (const unsigned char *)"x", 1);
    char *claims_bad = compact("{\"alg\":\"RS256\"}", "not json", (const unsigned char *)"x", 1);
    char *dup_alg = compact("{\"alg\":\"RS256\",\"alg\":\"none\"}", "{}", (const unsigned char *)"x", 1);
    char *bad_chars = xasprintf("%.*s.e30+.AAAA", (int)(d1 - tok), tok);
    char *empty_hdr = xasprintf("%s", d1);
    const char *cases[] = { "", ".", "..", "a.b", two, four, bad_hdr_json, hdr_array, claims_str,
                            claims_bad, dup_alg, bad_chars, empty_hdr };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        err[0] = '\0';
        memset(&t, 0x5a, sizeof t);   /* whatever was there, a failed decode leaves it clear */
        assert_int_equal(jwt_decode(cases[i], &t, err, sizeof err), -1);
        assert_true(err[0] != '\0');
        assert_null(t.header);
        assert_null(t.claims);
        assert_null(t.sig);
        assert_null(t.signing_input);
        jwt_clear(&t);
    }
    assert_int_equal(jwt_decode(NULL, &t, err, sizeof err), -1);

    /* Oversize: a token one byte over JWT_MAX_BYTES, however well-formed. */
    char *big_claim = xmalloc(JWT_MAX_BYTES + 16);
    memset(big_claim, 'x', JWT_MAX_BYTES + 15);
    memcpy(big_claim, "{\"x\":\"", 6);
    memcpy(big_claim + JWT_MAX_BYTES + 13, "\"}", 3);
    char *tmp = sign_claims(k, NULL, "{}");
    const char *hdr_end = strchr(tmp, '.');
    char *filler = xmalloc(JWT_MAX_BYTES + 2);
    memset(filler, 'A', JWT_MAX_BYTES + 1);
    filler[JWT_MAX_BYTES + 1] = '\0';
    char *huge = xasprintf("%.*s.%s.AAAA", (int)(hdr_end - tmp), tmp, filler);
    err[0] = '\0';
    assert_int_equal(jwt_decode(huge, &t, err, sizeof err), -1);
    assert_non_null(strstr(err, "large"));
    /* And jwt_sign will not produce one either. */
    assert_null(sign_claims(k, NULL, big_claim));

    free(big_claim);
    free(tmp);
    free(filler);
    free(huge);
    free(two);
    free(four);
    free(bad_hdr_json);
    free(hdr_array);
    free(claims_str);
    free(claims_bad);
    free(dup_alg);
    free(bad_chars);
    free(empty_hdr);
    free(tok);
    jwk_unref(k);
}

/* ---- claims ---------------------------------------------------------------------- */

static jwt_check check(const char *claims, const jwt_expect *e, char *err, size_t errlen)
{
    jwt t = { .claims = json_loads(claims, 0, NULL) };
    assert_non_null(t.claims);
    jwt_check r = jwt_check_claims(&t, e, err, errlen);
    jwt_clear(&t);
    return r;
}

static void test_check_claims(void **state)
{
    (void)state;
    char err[256], c[512];
    const int64_t now = 1700000000;
    const char *iss[] = { "https://login.microsoftonline.com/t/v2.0", "https://sts.windows.net/t/", NULL };
    const char *aud[] = { "api://agentid", "11111111-2222-3333-4444-555555555555", NULL };
    jwt_expect e = { .issuers = iss, .audiences = aud, .now = now, .skew_s = 0, .require_exp = true };
    const char *good_iss = iss[0];

    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"aud\":\"api://agentid\",\"exp\":%lld,\"nbf\":%lld}",
             good_iss, (long long)now + 60, (long long)now - 60);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_OK);

    /* exp: RFC 7519 §4.1.4, invalid at and after exp. */
    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"aud\":\"api://agentid\",\"exp\":%lld}", good_iss, (long long)now - 1);
    err[0] = '\0';
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_EXPIRED);
    assert_true(err[0] != '\0');
    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"aud\":\"api://agentid\",\"exp\":%lld}", good_iss, (long long)now);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_EXPIRED);
    /* ... but a clock skew allowance covers it. */
    e.skew_s = 300;
    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"aud\":\"api://agentid\",\"exp\":%lld}", good_iss, (long long)now - 299);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_OK);
    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"aud\":\"api://agentid\",\"exp\":%lld}", good_iss, (long long)now - 300);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_EXPIRED);
    /* nbf: RFC 7519 §4.1.5. */
    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"aud\":\"api://agentid\",\"exp\":%lld,\"nbf\":%lld}", good_iss,
             (long long)now + 3600, (long long)now + 299);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_OK);
    e.skew_s = -5;   /* negative means none */
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_NOT_YET_VALID);
    e.skew_s = 0;
    /* Non-integer NumericDates count; a non-number exp fails rather than being ignored. */
    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"aud\":\"api://agentid\",\"exp\":%lld.5}", good_iss, (long long)now - 10);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_EXPIRED);
    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"aud\":\"api://agentid\",\"exp\":\"%lld\"}", good_iss, (long long)now + 10);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_EXPIRED);
    /* Missing exp. */
    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"aud\":\"api://agentid\"}", good_iss);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_MISSING_EXP);
    e.require_exp = false;
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_OK);
    e.require_exp = true;

    /* Issuer: exact match only. */
    snprintf(c, sizeof c, "{\"iss\":\"%s/\",\"aud\":\"api://agentid\",\"exp\":%lld}", good_iss, (long long)now + 60);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_ISSUER);
    snprintf(c, sizeof c, "{\"iss\":\"https://sts.windows.net/t/\",\"aud\":\"api://agentid\",\"exp\":%lld}", (long long)now + 60);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_OK);
    snprintf(c, sizeof c, "{\"aud\":\"api://agentid\",\"exp\":%lld}", (long long)now + 60);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_ISSUER);

    /* Audience as a string and as an array. */
    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"aud\":\"api://other\",\"exp\":%lld}", good_iss, (long long)now + 60);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_AUDIENCE);
    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"aud\":[\"api://other\",\"11111111-2222-3333-4444-555555555555\"],\"exp\":%lld}",
             good_iss, (long long)now + 60);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_OK);
    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"aud\":[\"api://other\",7],\"exp\":%lld}", good_iss, (long long)now + 60);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_AUDIENCE);
    snprintf(c, sizeof c, "{\"iss\":\"%s\",\"exp\":%lld}", good_iss, (long long)now + 60);
    assert_int_equal(check(c, &e, err, sizeof err), JWT_CHECK_AUDIENCE);
    /* Lists not given are not checked. */
    jwt_expect loose = { .now = now };
    assert_int_equal(check("{\"aud\":\"x\",\"iss\":\"y\"}", &loose, err, sizeof err), JWT_CHECK_OK);
    /* now == 0 uses the real clock. */
    jwt_expect real = { .require_exp = true };
    assert_int_equal(check("{\"exp\":1300819380}", &real, err, sizeof err), JWT_CHECK_EXPIRED);
    assert_int_equal(check("{\"exp\":9999999999}", &real, err, sizeof err), JWT_CHECK_OK);

    assert_string_equal(jwt_check_name(JWT_CHECK_OK), "ok");
    assert_string_equal(jwt_check_name(JWT_CHECK_EXPIRED), "expired");
    assert_string_equal(jwt_check_name(JWT_CHECK_NOT_YET_VALID), "not_yet_valid");
    assert_string_equal(jwt_check_name(JWT_CHECK_ISSUER), "issuer");
    assert_string_equal(jwt_check_name(JWT_CHECK_AUDIENCE), "audience");
    assert_string_equal(jwt_check_name(JWT_CHECK_MISSING_EXP), "missing_exp");
}

/* ---- jwks ------------------------------------------------------------------------ */

/* A JWKS document holding the public forms of the given keys, plus entries to skip. */
static char *jwks_doc(jwk *const *keys, size_t n, bool with_junk)
{
    jwks *s = jwks_from_keys(keys, n);
    json_t *j = jwks_to_json(s);
    if (with_junk) {
        json_t *arr = json_object_get(j, "keys");
        json_array_append_new(arr, json_pack("{ssssss}", "kty", "EC", "crv", "P-256", "kid", "ec"));
        json_array_append_new(arr, json_pack("{ssssssssss}", "kty", "RSA", "use", "enc", "kid", "enc",
                                             "n", A2_N, "e", "AQAB"));
        json_array_append_new(arr, json_string("junk"));
        json_array_append_new(arr, json_pack("{ssssssss}", "kty", "RSA", "kid", "a2", "n", A2_N, "e", "AQAB"));
    }
    char *doc = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    jwks_unref(s);
    return doc;
}

static void test_jwks_parse_find_roundtrip(void **state)
{
    (void)state;
    char err[256];
    jwk *k1 = jwk_from_pem(sign_cert, "kid-1", err, sizeof err);
    jwk *k2 = jwk_from_pem(other_key, "kid-2", err, sizeof err);
    jwk *keys[] = { k1, k2 };
    char *doc = jwks_doc(keys, 2, true);

    jwks *s = jwks_parse(doc, strlen(doc), err, sizeof err);
    assert_non_null(s);
    assert_int_equal(jwks_count(s), 3);   /* kid-1, kid-2, a2; EC, enc and junk skipped */
    assert_non_null(jwks_find(s, "kid-1", NULL));
    assert_non_null(jwks_find(s, "kid-2", NULL));
    assert_non_null(jwks_find(s, "a2", NULL));
    assert_null(jwks_find(s, "enc", NULL));
    assert_null(jwks_find(s, "ec", NULL));
    assert_null(jwks_find(s, "nope", NULL));
    assert_null(jwks_find(s, NULL, NULL));
    /* By x5t when there is no kid, and kid wins when both are given. */
    assert_ptr_equal(jwks_find(s, NULL, jwk_x5t(k1)), jwks_find(s, "kid-1", NULL));
    assert_null(jwks_find(s, "nope", jwk_x5t(k1)));
    assert_string_equal(jwk_x5t(jwks_find(s, "kid-1", NULL)), jwk_x5t(k1));

    /* A key from the set verifies what the private key signed. */
    jwk *priv = jwk_from_pem(sign_key, "kid-1", err, sizeof err);
    char *tok = sign_claims(priv, NULL, "{\"sub\":\"a\"}");
    assert_int_equal(decode_verify(tok, jwks_find(s, "kid-1", NULL), err, sizeof err), 0);
    assert_int_equal(decode_verify(tok, jwks_find(s, "kid-2", NULL), err, sizeof err), -1);

    /* to_json and parse again: same keys, same public JSON. */
    json_t *j = jwks_to_json(s);
    char *doc2 = json_dumps(j, JSON_COMPACT);
    jwks *s2 = jwks_parse(doc2, strlen(doc2), err, sizeof err);
    assert_int_equal(jwks_count(s2), 3);
    json_t *j2 = jwks_to_json(s2);
    assert_true(json_equal(j, j2));
    /* The set keeps its keys alive after our own references go. */
    jwks *s3 = jwks_ref(s2);
    jwks_unref(s2);
    assert_int_equal(jwks_count(s3), 3);
    jwks_unref(s3);

    /* Broken documents. */
    assert_null(jwks_parse("{", 1, err, sizeof err));
    assert_null(jwks_parse("{\"keys\":{}}", 11, err, sizeof err));
    assert_null(jwks_parse("[]", 2, err, sizeof err));
    char *big = xmalloc(JWKS_MAX_BYTES + 2);
    memset(big, ' ', JWKS_MAX_BYTES + 1);
    memcpy(big, "{\"keys\":[]}", 11);
    big[JWKS_MAX_BYTES + 1] = '\0';
    assert_null(jwks_parse(big, JWKS_MAX_BYTES + 1, err, sizeof err));
    jwks *empty = jwks_parse(big, 11, err, sizeof err);
    assert_int_equal(jwks_count(empty), 0);
    jwks_unref(empty);
    free(big);

    json_decref(j);
    json_decref(j2);
    free(doc);
    free(doc2);
    free(tok);
    jwks_unref(s);
    jwk_unref(priv);
    jwk_unref(k1);
    jwk_unref(k2);
}

/* ---- jwks_cache against a loopback server ---------------------------------------- */

typedef struct {
    pthread_mutex_t mu;
    char *body;           /* the JWKS served now */
    int status;
    atomic_int hits;
} jwks_server;

static void serve_jwks(http_req *r, void *ctx)
{
    jwks_server *js = ctx;
    atomic_fetch_add(&js->hits, 1);
    pthread_mutex_lock(&js->mu);
    http_reply(r, js->status, "application/json", js->body, strlen(js->body));
    pthread_mutex_unlock(&js->mu);
}

static void serve(jwks_server *js, char *body, int status)
{
    pthread_mutex_lock(&js->mu);
    free(js->body);
    js->body = body;
    js->status = status;
    pthread_mutex_unlock(&js->mu);
}

typedef struct {
    jwks_server js;
    http_server *srv;
    char uri[64];
    jwk *k1, *k2, *k3;   /* private keys with kids kid-1, kid-2, kid-3 */
} cache_fixture;

static int cache_setup(void **state)
{
    char err[256];
    cache_fixture *f = xcalloc(1, sizeof *f);
    pthread_mutex_init(&f->js.mu, NULL);
    f->k1 = jwk_from_pem(sign_key, "kid-1", err, sizeof err);
    f->k2 = jwk_from_pem(other_key, "kid-2", err, sizeof err);
    f->k3 = jwk_from_pem(srv_key, "kid-3", err, sizeof err);
    serve(&f->js, jwks_doc(&f->k1, 1, false), 200);
    http_server_opts o = { .listen = "127.0.0.1:0", .threads = 2 };
    f->srv = http_server_start(&o, serve_jwks, &f->js, err, sizeof err);
    *state = f;
    if (!f->srv) {
        print_error("http_server_start: %s\n", err);
        return -1;
    }
    snprintf(f->uri, sizeof f->uri, "http://127.0.0.1:%u/keys", http_server_port(f->srv));
    return 0;
}

static int cache_teardown(void **state)
{
    cache_fixture *f = *state;
    http_server_stop(f->srv);
    free(f->js.body);
    pthread_mutex_destroy(&f->js.mu);
    jwk_unref(f->k1);
    jwk_unref(f->k2);
    jwk_unref(f->k3);
    free(f);
    return 0;
}

/* Verify a fresh token signed by k through the cache. */
static int cache_verify(jwks_cache *c, const jwk *k, const char *kid_override, char *err, size_t errlen)
{
    char hdr[64] = "";
    if (kid_override) snprintf(hdr, sizeof hdr, "{\"kid\":\"%s\"}", kid_override);
    char *tok = sign_claims(k, kid_override ? hdr : NULL, "{\"sub\":\"agent\"}");
    jwt t;
    int rc = jwks_cache_verify(c, tok, &t, err, errlen);
    if (rc == 0) {
        assert_string_equal(jwt_claim_str(&t, "sub"), "agent");
        jwt_clear(&t);
    } else {
        assert_null(t.header);   /* nothing to clear on failure */
    }
    free(tok);
    return rc;
}

static void test_cache_fetch_and_verify(void **state)
{
    cache_fixture *f = *state;
    char err[256] = "";
    jwks_cache *c = jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = f->uri, .min_refresh_s = 60 });
    assert_non_null(c);
    assert_int_equal(jwks_cache_fetches(c), 0);   /* nothing until first use */
    assert_int_equal(atomic_load(&f->js.hits), 0);

    int rc = cache_verify(c, f->k1, NULL, err, sizeof err);
    if (rc) print_error("verify: %s\n", err);
    assert_int_equal(rc, 0);
    assert_int_equal(jwks_cache_fetches(c), 1);
    for (int i = 0; i < 5; i++) assert_int_equal(cache_verify(c, f->k1, NULL, err, sizeof err), 0);
    assert_int_equal(jwks_cache_fetches(c), 1);   /* served from the cache */
    assert_int_equal(atomic_load(&f->js.hits), 1);

    /* A token with a known kid but signed by another key fails, with no fetch. */
    assert_int_equal(cache_verify(c, f->k2, "kid-1", err, sizeof err), -1);
    /* A bad token fails before any lookup. */
    jwt t;
    assert_int_equal(jwks_cache_verify(c, "a.b", &t, err, sizeof err), -1);
    assert_int_equal(jwks_cache_fetches(c), 1);
    jwks_cache_free(c);
}

static void test_cache_unknown_kid_rate_limited(void **state)
{
    cache_fixture *f = *state;
    char err[256] = "";
    jwks_cache *c = jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = f->uri, .min_refresh_s = 1 });
    assert_int_equal(cache_verify(c, f->k1, NULL, err, sizeof err), 0);
    assert_int_equal(jwks_cache_fetches(c), 1);

    /* Right after a fetch an unknown kid does not refetch. */
    assert_int_equal(cache_verify(c, f->k1, "forged-0", err, sizeof err), -1);
    assert_int_equal(jwks_cache_fetches(c), 1);

    /* The provider rotates in kid-2; after min_refresh_s the unknown kid is fetched. */
    jwk *both[] = { f->k1, f->k2 };
    serve(&f->js, jwks_doc(both, 2, false), 200);
    sleep_ms(1100);
    int rc = cache_verify(c, f->k2, NULL, err, sizeof err);
    if (rc) print_error("verify: %s\n", err);
    assert_int_equal(rc, 0);
    assert_int_equal(jwks_cache_fetches(c), 2);

    /* Two unknown kids within min_refresh_s cause one fetch between them. */
    sleep_ms(1100);
    assert_int_equal(cache_verify(c, f->k1, "forged-1", err, sizeof err), -1);
    assert_int_equal(cache_verify(c, f->k1, "forged-2", err, sizeof err), -1);
    for (int i = 0; i < 10; i++) assert_int_equal(cache_verify(c, f->k1, "forged-x", err, sizeof err), -1);
    assert_int_equal(jwks_cache_fetches(c), 3);
    assert_int_equal(atomic_load(&f->js.hits), 3);
    /* Known keys keep working meanwhile, without fetching. */
    assert_int_equal(cache_verify(c, f->k2, NULL, err, sizeof err), 0);
    assert_int_equal(jwks_cache_fetches(c), 3);
    jwks_cache_free(c);
}

static void test_cache_max_age_and_failures(void **state)
{
    cache_fixture *f = *state;
    char err[256] = "";
    jwks_cache *c = jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = f->uri, .max_age_s = 1, .min_refresh_s = 1 });
    assert_int_equal(cache_verify(c, f->k1, NULL, err, sizeof err), 0);
    assert_int_equal(jwks_cache_fetches(c), 1);

    /* After max_age the set is fetched again even for a known kid. */
    sleep_ms(1100);
    assert_int_equal(cache_verify(c, f->k1, NULL, err, sizeof err), 0);
    assert_int_equal(jwks_cache_fetches(c), 2);

    /* A failing provider: the stale set keeps serving. */
    serve(&f->js, xstrdup("{\"error\":\"boom\"}"), 500);
    sleep_ms(1100);
    assert_int_equal(cache_verify(c, f->k1, NULL, err, sizeof err), 0);
    assert_int_equal(jwks_cache_fetches(c), 3);
    /* A rotated-in key cannot be found while the provider is broken. */
    assert_int_equal(cache_verify(c, f->k3, NULL, err, sizeof err), -1);
    assert_int_equal(jwks_cache_fetches(c), 3);   /* rate-limited: failed attempts count */
    jwks_cache_free(c);

    /* No set at all and a 500: error, then no hammering. */
    c = jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = f->uri, .min_refresh_s = 60 });
    err[0] = '\0';
    assert_int_equal(cache_verify(c, f->k1, NULL, err, sizeof err), JWKS_UNAVAILABLE);
    assert_non_null(strstr(err, "500"));
    assert_int_equal(cache_verify(c, f->k1, NULL, err, sizeof err), JWKS_UNAVAILABLE);
    assert_int_equal(jwks_cache_fetches(c), 1);
    jwks_cache_free(c);

    /* A body over JWKS_MAX_BYTES is refused. */
    char *big = xmalloc(JWKS_MAX_BYTES + 64);
    memset(big, ' ', JWKS_MAX_BYTES + 63);
    memcpy(big, "{\"keys\":[]}", 11);
    big[JWKS_MAX_BYTES + 63] = '\0';
    serve(&f->js, big, 200);
    c = jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = f->uri });
    assert_int_equal(cache_verify(c, f->k1, NULL, err, sizeof err), JWKS_UNAVAILABLE);
    assert_int_equal(jwks_cache_fetches(c), 1);
    jwks_cache_free(c);
    serve(&f->js, jwks_doc(&f->k1, 1, false), 200);

    /* Nothing listening (a port we just closed). */
    char e2[256];
    http_server *tmp = http_server_start(&(http_server_opts){ .listen = "127.0.0.1:0", .threads = 1 },
                                         serve_jwks, &f->js, e2, sizeof e2);
    assert_non_null(tmp);
    char uri[64];
    snprintf(uri, sizeof uri, "http://127.0.0.1:%u/keys", http_server_port(tmp));
    http_server_stop(tmp);
    c = jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = uri, .timeout_ms = 2000 });
    err[0] = '\0';
    assert_int_equal(cache_verify(c, f->k1, NULL, err, sizeof err), JWKS_UNAVAILABLE);
    assert_true(err[0] != '\0');
    assert_int_equal(jwks_cache_fetches(c), 1);
    jwks_cache_free(c);

    /* Plain http to anything but loopback is refused outright (no request is made). */
    assert_null(jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = "http://keys.example.invalid/jwks" }));
    assert_null(jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = "http://127.0.0.1.example.invalid/jwks" }));
    assert_null(jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = NULL }));
}

/* Over HTTPS: libmicrohttpd (GnuTLS) serves the pki-made chain, libcurl trusts it only
 * through ca_file, and checks the IP SAN 127.0.0.1. */
static void test_cache_https_with_ca_file(void **state)
{
    cache_fixture *f = *state;
    char err[256] = "";
    http_server *tls = http_server_start(&(http_server_opts){ .listen = "127.0.0.1:0", .threads = 1,
                                                              .tls_cert_pem = srv_cert, .tls_key_pem = srv_key },
                                         serve_jwks, &f->js, err, sizeof err);
    if (!tls) print_error("https server: %s\n", err);
    assert_non_null(tls);
    char ca_path[] = "/tmp/agentid-test-ca-XXXXXX", uri[64];
    int fd = mkstemp(ca_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, ca_cert, strlen(ca_cert)), (ssize_t)strlen(ca_cert));
    close(fd);
    snprintf(uri, sizeof uri, "https://127.0.0.1:%u/keys", http_server_port(tls));

    jwks_cache *c = jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = uri, .ca_file = ca_path });
    int rc = cache_verify(c, f->k1, NULL, err, sizeof err);
    if (rc) print_error("verify over https: %s\n", err);
    assert_int_equal(rc, 0);
    jwks_cache_free(c);

    /* Without our CA the provider is not trusted, so no key set is available at all. */
    c = jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = uri });
    assert_int_equal(cache_verify(c, f->k1, NULL, err, sizeof err), JWKS_UNAVAILABLE);
    assert_int_equal(jwks_cache_fetches(c), 1);
    jwks_cache_free(c);
    /* Nor with another CA of the same name. (A new path: libcurl reuses connections and
     * caches CA stores per path, so rewriting the same file would prove nothing.) */
    char other_path[] = "/tmp/agentid-test-ca-XXXXXX";
    fd = mkstemp(other_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, other_ca_cert, strlen(other_ca_cert)), (ssize_t)strlen(other_ca_cert));
    close(fd);
    c = jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = uri, .ca_file = other_path });
    assert_int_equal(cache_verify(c, f->k1, NULL, err, sizeof err), JWKS_UNAVAILABLE);
    jwks_cache_free(c);

    unlink(ca_path);
    unlink(other_path);
    http_server_stop(tls);
}

typedef struct {
    jwks_cache *c;
    const jwk *k;
    int failures;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    char err[256];
    for (int i = 0; i < 10; i++)
        if (cache_verify(a->c, a->k, NULL, err, sizeof err) != 0) a->failures++;
    return NULL;
}

static void test_cache_concurrent_first_use(void **state)
{
    cache_fixture *f = *state;
    jwks_cache *c = jwks_cache_new(&(jwks_cache_opts){ .jwks_uri = f->uri, .min_refresh_s = 60 });
    pthread_t th[8];
    worker_arg args[8];
    for (int i = 0; i < 8; i++) {
        args[i] = (worker_arg){ .c = c, .k = f->k1 };
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    assert_int_equal(jwks_cache_fetches(c), 1);   /* one fetch, the others waited for it */
    jwks_cache_free(c);
}

/* ---- ES256, ES384, EdDSA: verified with keys from a JWKS ----------------------------------- */

/* "b64(header).b64(claims)" for header alg and kid, and claims {"sub":"s"}; caller frees. */
static char *signing_input(const char *alg, const char *kid)
{
    char h[128];
    snprintf(h, sizeof h, "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}", alg, kid);
    static const char c[] = "{\"sub\":\"s\",\"aud\":\"api://x\"}";
    char *h64 = b64url_encode(h, strlen(h)), *c64 = b64url_encode(c, strlen(c));
    char *in = xasprintf("%s.%s", h64, c64);
    free(h64);
    free(c64);
    return in;
}

/* A compact token: input signed with pkey the JWS way (EC: R || S of half bytes each; Ed25519:
 * the raw signature); caller frees. */
static char *jws(EVP_PKEY *pkey, const char *md, size_t half, const char *input)
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    unsigned char sig[256], raw[160];
    size_t len = sizeof sig, rawlen;
    assert_int_equal(EVP_DigestSignInit_ex(m, NULL, md, NULL, NULL, pkey, NULL), 1);
    assert_int_equal(EVP_DigestSign(m, sig, &len, (const unsigned char *)input, strlen(input)), 1);
    EVP_MD_CTX_free(m);
    if (half) {
        const unsigned char *p = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)len);
        assert_non_null(es);
        BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, (int)half);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + half, (int)half);
        ECDSA_SIG_free(es);
        rawlen = 2 * half;
    } else {
        memcpy(raw, sig, len);
        rawlen = len;
    }
    char *s64 = b64url_encode(raw, rawlen);
    char *tok = xasprintf("%s.%s", input, s64);
    free(s64);
    return tok;
}

/* 0 if tok verifies with k; else -1 and the reason in why. */
static int verify_tok(const char *tok, const jwk *k, char *why, size_t len)
{
    jwt t;
    if (jwt_decode(tok, &t, why, len) != 0) return -1;
    int rc = jwt_verify(&t, k, why, len);
    jwt_clear(&t);
    return rc;
}

static jwk *jwk_of(const char *json)
{
    json_t *j = json_loads(json, 0, NULL);
    assert_non_null(j);
    char err[200];
    jwk *k = jwk_from_json(j, err, sizeof err);
    json_decref(j);
    return k;
}

/* The JWK of an EC public key: crv, x and y from its uncompressed point. */
static jwk *ec_jwk(EVP_PKEY *pkey, const char *crv, size_t size, bool off_curve)
{
    unsigned char pt[1 + 2 * 66];
    size_t len = 0;
    assert_int_equal(EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof pt, &len), 1);
    assert_int_equal(len, 1 + 2 * size);
    if (off_curve) pt[len - 1] ^= 1;
    char *x = b64url_encode(pt + 1, size), *y = b64url_encode(pt + 1 + size, size);
    char *json = xasprintf("{\"kty\":\"EC\",\"crv\":\"%s\",\"x\":\"%s\",\"y\":\"%s\",\"kid\":\"e\",\"use\":\"sig\"}",
                           crv, x, y);
    jwk *k = jwk_of(json);
    free(x);
    free(y);
    free(json);
    return k;
}

static void test_ec_and_eddsa(void **state)
{
    (void)state;
    char why[200];
    EVP_PKEY *p256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    EVP_PKEY *p521 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
    assert_non_null(p521);
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(p256);
    assert_non_null(p384);
    assert_non_null(ed);
    jwk *k256 = ec_jwk(p256, "P-256", 32, false), *k384 = ec_jwk(p384, "P-384", 48, false);
    assert_non_null(k256);
    assert_non_null(k384);
    assert_null(ec_jwk(p256, "P-256", 32, true)); /* a point off the curve */
    unsigned char raw[32];
    size_t rl = sizeof raw;
    assert_int_equal(EVP_PKEY_get_raw_public_key(ed, raw, &rl), 1);
    char *x = b64url_encode(raw, rl);
    char *json = xasprintf("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s\",\"kid\":\"d\"}", x);
    jwk *ked = jwk_of(json);
    assert_non_null(ked);
    free(json);
    json = xasprintf("{\"kty\":\"OKP\",\"crv\":\"X25519\",\"x\":\"%s\"}", x); /* not for signatures */
    assert_null(jwk_of(json));
    free(json);
    free(x);
    assert_null(jwk_of("{\"kty\":\"EC\",\"crv\":\"P-521\",\"x\":\"AA\",\"y\":\"AA\"}"));
    assert_null(jwk_of("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AAAA\",\"y\":\"AAAA\"}")); /* short */
    jwk *krsa = jwk_from_pem(sign_key, "r", why, sizeof why);
    assert_non_null(krsa);

    char *in = signing_input("ES256", "e");
    char *t256 = jws(p256, "SHA256", 32, in);
    assert_int_equal(verify_tok(t256, k256, why, sizeof why), 0);
    /* the same claims changed: refused */
    char *bad = xstrdup(t256);
    char *dot = strchr(bad, '.') + 1;
    *dot = *dot == 'e' ? 'f' : 'e';
    assert_int_not_equal(verify_tok(bad, k256, why, sizeof why), 0);
    free(bad);
    /* a key of another kind or curve: refused before any verification */
    assert_int_not_equal(verify_tok(t256, k384, why, sizeof why), 0);
    assert_string_equal(why, "verification key does not fit the token's alg");
    assert_int_not_equal(verify_tok(t256, krsa, why, sizeof why), 0);
    assert_string_equal(why, "verification key does not fit the token's alg");
    assert_int_not_equal(verify_tok(t256, ked, why, sizeof why), 0);
    /* ES384 named over a P-256 signature and key: refused */
    char *in384 = signing_input("ES384", "e");
    char *t_as384 = jws(p256, "SHA384", 32, in384);
    assert_int_not_equal(verify_tok(t_as384, k256, why, sizeof why), 0);
    assert_string_equal(why, "verification key does not fit the token's alg");
    /* ES384 properly */
    char *t384 = jws(p384, "SHA384", 48, in384);
    assert_int_equal(verify_tok(t384, k384, why, sizeof why), 0);
    /* ES512 with P-521 (66-byte halves) */
    jwk *k521 = ec_jwk(p521, "P-521", 66, false);
    assert_non_null(k521);
    char *in512 = signing_input("ES512", "e");
    char *t512 = jws(p521, "SHA512", 66, in512);
    assert_int_equal(verify_tok(t512, k521, why, sizeof why), 0);
    assert_int_not_equal(verify_tok(t512, k384, why, sizeof why), 0);
    jwk_unref(k521);
    free(in512);
    free(t512);
    EVP_PKEY_free(p521);
    /* a signature of the wrong length (DER instead of R || S) */
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    unsigned char der[128];
    size_t dl = sizeof der;
    assert_int_equal(EVP_DigestSignInit_ex(m, NULL, "SHA256", NULL, NULL, p256, NULL), 1);
    assert_int_equal(EVP_DigestSign(m, der, &dl, (const unsigned char *)in, strlen(in)), 1);
    EVP_MD_CTX_free(m);
    char *d64 = b64url_encode(der, dl), *tder = xasprintf("%s.%s", in, d64);
    assert_int_not_equal(verify_tok(tder, k256, why, sizeof why), 0);
    assert_string_equal(why, "signature does not verify");
    /* an RSA token with an EC key */
    json_t *claims = json_pack("{s:s}", "sub", "s");
    char *trs = jwt_sign(krsa, NULL, claims, why, sizeof why);
    assert_non_null(trs);
    assert_int_not_equal(verify_tok(trs, k256, why, sizeof why), 0);
    assert_string_equal(why, "verification key is not an RSA key");
    assert_int_equal(verify_tok(trs, krsa, why, sizeof why), 0);
    /* EdDSA */
    char *ined = signing_input("EdDSA", "d");
    char *ted = jws(ed, NULL, 0, ined);
    assert_int_equal(verify_tok(ted, ked, why, sizeof why), 0);
    assert_int_not_equal(verify_tok(ted, k256, why, sizeof why), 0);
    ted[strlen(ted) - 2] = ted[strlen(ted) - 2] == 'A' ? 'B' : 'A';
    assert_int_not_equal(verify_tok(ted, ked, why, sizeof why), 0);
    /* EC keys do not sign here (jwk_from_pem stays RSA-only, for the issuer's keys) */
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(b, p256, NULL, NULL, 0, NULL, NULL);
    char *pem = NULL;
    long pl = BIO_get_mem_data(b, &pem);
    char *pemz = xstrndup(pem, (size_t)pl);
    BIO_free(b);
    assert_null(jwk_from_pem(pemz, "x", why, sizeof why));
    /* published and read back, each key verifies the same */
    jwk *keys[] = {k256, k384, ked};
    const char *toks[] = {t256, t384, NULL};
    for (int i = 0; i < 3; i++) {
        json_t *pub = jwk_public_json(keys[i]);
        assert_non_null(pub);
        jwk *again = jwk_from_json(pub, why, sizeof why);
        assert_non_null(again);
        if (toks[i]) assert_int_equal(verify_tok(toks[i], again, why, sizeof why), 0);
        jwk_unref(again);
        json_decref(pub);
    }

    free(pemz);
    json_decref(claims);
    free(trs);
    free(ined);
    free(ted);
    free(d64);
    free(tder);
    free(in384);
    free(t_as384);
    free(t384);
    free(in);
    free(t256);
    jwk_unref(k256);
    jwk_unref(k384);
    jwk_unref(ked);
    jwk_unref(krsa);
    EVP_PKEY_free(p256);
    EVP_PKEY_free(p384);
    EVP_PKEY_free(ed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ec_and_eddsa),
        cmocka_unit_test(test_rsa_generate),
        cmocka_unit_test(test_cert_ca_and_server),
        cmocka_unit_test(test_cert_create_refusals),
        cmocka_unit_test(test_thumbprint_kat),
        cmocka_unit_test(test_cert_pubkey),
        cmocka_unit_test(test_jwk_pem_and_public_json),
        cmocka_unit_test(test_jwk_small_key_refused),
        cmocka_unit_test(test_rfc7515_a2_known_answer),
        cmocka_unit_test(test_jwk_from_json_refusals),
        cmocka_unit_test(test_sign_verify_rs256),
        cmocka_unit_test(test_sign_rs256_prepared),
        cmocka_unit_test(test_sign_verify_ps256),
        cmocka_unit_test(test_tampering),
        cmocka_unit_test(test_alg_none_refused),
        cmocka_unit_test(test_hs256_key_confusion_refused),
        cmocka_unit_test(test_wrong_key_refused),
        cmocka_unit_test(test_decode_rejects),
        cmocka_unit_test(test_check_claims),
        cmocka_unit_test(test_jwks_parse_find_roundtrip),
        cmocka_unit_test_setup_teardown(test_cache_fetch_and_verify, cache_setup, cache_teardown),
        cmocka_unit_test_setup_teardown(test_cache_unknown_kid_rate_limited, cache_setup, cache_teardown),
        cmocka_unit_test_setup_teardown(test_cache_max_age_and_failures, cache_setup, cache_teardown),
        cmocka_unit_test_setup_teardown(test_cache_concurrent_first_use, cache_setup, cache_teardown),
        cmocka_unit_test_setup_teardown(test_cache_https_with_ca_file, cache_setup, cache_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
