/* bench/gateway-verify — how many tokens per second the gateway's jwtAuth check gets through
 * on one thread: the calls gateway.c's validate() makes for a route with a JWKS URL, on the same
 * token over and over, every signature checked (no cache of verified tokens here).
 *
 *     [SSL_CERT_FILE=ca.crt] gateway-verify JWKS_URL TOKEN_FILE ISSUER AUDIENCE SECONDS
 *
 * Prints "VERIFIES_PER_S N": N tokens decoded, verified (RS256 with the JWKS key) and claim-
 * checked (iss, aud, exp/nbf with 60 s of skew), as jwtAuth does. Exits 1 if the token does not
 * pass, so a bad set-up cannot pass for a fast one. Built by bench/gateway against
 * build/libagentid.a. */
#include "core/http_client.h"
#include "core/util.h"
#include "jose/jwks.h"
#include "jose/jwt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One jwtAuth check, as gateway.c:validate() does it for a jwks.url route. */
static int check(jwks_cache *keys, const char *token, const jwt_expect *ex, char *err, size_t errlen)
{
    jwt t = {0};
    if (jwks_cache_verify(keys, token, &t, err, errlen) != 0) return -1;
    int rc = jwt_check_claims(&t, ex, err, errlen) == JWT_CHECK_OK ? 0 : -1;
    jwt_clear(&t);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: gateway-verify JWKS_URL TOKEN_FILE ISSUER AUDIENCE SECONDS\n");
        return 2;
    }
    char token[JWT_MAX_BYTES + 1];
    FILE *f = fopen(argv[2], "r");
    size_t n = f ? fread(token, 1, sizeof token - 1, f) : 0;
    if (f) fclose(f);
    token[n] = '\0';
    token[strcspn(token, "\r\n")] = '\0';
    double seconds = atof(argv[5]);

    httpc_global_init();
    const char *ca = getenv("SSL_CERT_FILE"); /* an extra CA, as the gateway takes it */
    jwks_cache_opts o = {.jwks_uri = argv[1], .ca_file = ca && *ca ? ca : NULL};
    jwks_cache *keys = jwks_cache_new(&o);
    const char *issuers[] = {argv[3], NULL}, *audiences[] = {argv[4], NULL};
    jwt_expect ex = {.issuers = issuers, .audiences = audiences, .skew_s = 60, .require_exp = true};
    char err[256];
    if (check(keys, token, &ex, err, sizeof err) != 0) { /* also fetches the key set */
        fprintf(stderr, "gateway-verify: the token does not pass: %s\n", err);
        jwks_cache_free(keys);
        return 1;
    }

    unsigned long count = 0;
    double t0 = now_s(), t1 = t0;
    while (t1 - t0 < seconds) {
        for (int i = 0; i < 64; i++, count++)
            if (check(keys, token, &ex, err, sizeof err) != 0) {
                fprintf(stderr, "gateway-verify: check failed: %s\n", err);
                jwks_cache_free(keys);
                return 1;
            }
        t1 = now_s();
    }
    printf("VERIFIES_PER_S %.0f\n", (double)count / (t1 - t0));
    jwks_cache_free(keys);
    return 0;
}
