/* inspect — see inspect.h. */
#include "agent/inspect.h"

#include "core/util.h"
#include "jose/oidc.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SKEW_S 60

const char *inspect_strip_bearer(const char *s, size_t *len)
{
    while (isspace((unsigned char)*s)) s++;
    if (!strncasecmp(s, "Bearer ", 7)) s += 7;
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) n--;
    *len = n;
    return s;
}

const char *inspect_when(int64_t t, char out[32])
{
    int64_t d = t - util_now(), a = d < 0 ? -d : d;
    const char *unit = "s";
    int64_t v = a;
    if (a >= 2 * 86400) v = a / 86400, unit = " days";
    else if (a >= 2 * 3600) v = a / 3600, unit = " h";
    else if (a >= 120) v = a / 60, unit = " min";
    if (a < 5) snprintf(out, 32, "now");
    else snprintf(out, 32, d < 0 ? "%lld%s ago" : "in %lld%s", (long long)v, unit);
    return out;
}

/* Is url https, or http to a loopback host? */
static bool fetchable(const char *url)
{
    if (!strncmp(url, "https://", 8)) return true;
    if (strncmp(url, "http://", 7)) return false;
    const char *h = url + 7;
    static const char *const loopback[] = {"127.0.0.1", "localhost", "[::1]"};
    for (size_t i = 0; i < ARRAY_LEN(loopback); i++) {
        size_t n = strlen(loopback[i]);
        if (!strncmp(h, loopback[i], n) && (h[n] == ':' || h[n] == '/' || !h[n])) return true;
    }
    return false;
}

static void check(const char *token, const char *ca_file, token_info *ti)
{
    const char *iss = jwt_claim_str(&ti->t, "iss");
    ti->checked = true;
    if (!iss || !*iss) {
        snprintf(ti->status, sizeof ti->status, "no iss claim: no issuer to check it against");
        return;
    }
    if (!fetchable(iss)) {
        snprintf(ti->status, sizeof ti->status,
                 "issuer %.200s is not an https URL (or http on loopback): not fetched", iss);
        return;
    }
    size_t n = strlen(iss);
    char *meta = xasprintf("%s%s.well-known/openid-configuration", iss, iss[n - 1] == '/' ? "" : "/");
    oidc *o = oidc_new(meta, ca_file, 5000);
    char err[256];
    jwt verified = {0};
    int rc = oidc_verify(o, token, &verified, err, sizeof err);
    if (rc == JWKS_UNAVAILABLE) {
        snprintf(ti->status, sizeof ti->status, "issuer unreachable: %s", err);
    } else if (rc != 0) {
        snprintf(ti->status, sizeof ti->status, "signature: %s", err);
    } else {
        const char *issuers[] = {oidc_issuer(o), NULL};
        jwt_expect e = {.issuers = issuers, .skew_s = SKEW_S, .require_exp = true};
        jwt_check c = jwt_check_claims(&verified, &e, err, sizeof err);
        if (c == JWT_CHECK_OK) {
            ti->valid = true;
            const char *kid = jwt_kid(&verified);
            snprintf(ti->status, sizeof ti->status, "valid: signed by %.160s (key %.64s), within its lifetime",
                     oidc_issuer(o), kid ? kid : "without kid");
        } else {
            snprintf(ti->status, sizeof ti->status, "%s: %s", jwt_check_name(c), err);
        }
    }
    jwt_clear(&verified);
    oidc_free(o);
    free(meta);
}

int inspect_token(const char *token, bool verify, const char *ca_file, token_info *out)
{
    *out = (token_info){0};
    size_t n;
    const char *s = inspect_strip_bearer(token, &n);
    char *tok = xstrndup(s, n), err[256];
    int rc = 0;
    if (jwt_decode(tok, &out->t, err, sizeof err) != 0) {
        snprintf(out->status, sizeof out->status, "not a JWT: %s", err);
        rc = -1;
    } else if (verify) {
        check(tok, ca_file, out);
    } else {
        snprintf(out->status, sizeof out->status, "not checked");
    }
    free(tok);
    return rc;
}

void inspect_clear(token_info *ti)
{
    jwt_clear(&ti->t);
    *ti = (token_info){0};
}
