/* pki — RSA keys and X.509 certificates for the issuer, tests and clients.
 *
 * Contract
 *  - Only pki.c (and the other jose .c files) include OpenSSL.
 *  - Every function returning char* returns a NUL-terminated PEM (or text) the caller
 *    frees; NULL on failure with a reason in err.
 *  - Thread-safe.
 */
#ifndef AGENTID_JOSE_PKI_H
#define AGENTID_JOSE_PKI_H

#include <stdbool.h>
#include <stddef.h>

/* A new RSA private key, PKCS#8 PEM. bits >= 2048 (RFC 7518 §3.3). */
char *pki_rsa_generate(int bits, char *err, size_t errlen);

typedef struct {
    const char *subject_cn;       /* CN of the new certificate */
    const char *key_pem;          /* the certificate's own (private) key */
    const char *issuer_cert_pem;  /* NULL => self-signed */
    const char *issuer_key_pem;   /* NULL => self-signed */
    bool is_ca;                   /* basicConstraints CA:TRUE, keyCertSign */
    bool server;                  /* serverAuth EKU + SAN localhost, 127.0.0.1, ::1 */
    int days;                     /* validity; 0 => 365 */
} pki_cert_spec;

/* A new certificate, PEM. */
char *pki_cert_create(const pki_cert_spec *spec, char *err, size_t errlen);

/* base64url SHA-1 (x5t) / SHA-256 (x5t#S256) of the first certificate's DER. */
char *pki_cert_thumbprint(const char *cert_pem, bool sha256, char *err, size_t errlen);
/* Standard base64 DER of the first certificate (a JWK "x5c" entry). */
char *pki_cert_der_b64(const char *cert_pem, char *err, size_t errlen);
/* The public key of a certificate, SPKI PEM. */
char *pki_cert_pubkey(const char *cert_pem, char *err, size_t errlen);
/* True if key_pem (unencrypted PEM) is the private key of cert_pem's first certificate; else err
 * says which of the three is wrong, never quoting the key. */
bool pki_cert_key_match(const char *cert_pem, const char *key_pem, char *err, size_t errlen);
/* True if cert_pem was signed by ca_pem and is within its validity period. */
bool pki_cert_verify(const char *cert_pem, const char *ca_pem, char *err, size_t errlen);

#endif
