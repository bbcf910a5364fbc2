/* targets — the fuzz entry points, shared by the libFuzzer drivers (fuzz_form.c,
 * fuzz_jwt.c) and by tests/unit/test_fuzz_corpus.c, which replays tests/fuzz/corpus/
 * through the same code on every `make check`.
 *
 * Each entry takes arbitrary bytes, must never crash, leak or trip a sanitizer, and
 * checks a few properties with FUZZ_ASSERT (abort by default; the unit test turns it
 * into a cmocka failure naming the corpus file).
 *
 *   fuzz_form_one   form_parse on the bytes; if it parses: every name has its value via
 *                   form_get, and form_escape of every pair parses back to the same form.
 *   fuzz_jwt_one    jwt_decode on the bytes; if it decodes: accessors, jwt_verify against
 *                   a key made in fuzz_jwt_init (must fail: nobody can sign with it),
 *                   jwt_check_claims, jwk_from_json on the claims object (a JWKS entry
 *                   comes from the network too), and for about one input in 32 a sign /
 *                   decode / verify round trip of the decoded header and claims.
 */
#ifndef AGENTID_TESTS_FUZZ_TARGETS_H
#define AGENTID_TESTS_FUZZ_TARGETS_H

#include "core/form.h"
#include "core/util.h"
#include "jose/jwt.h"
#include "jose/pki.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_assert.h"

/* ---- form ---------------------------------------------------------------------- */

static inline void fuzz_form_one(const uint8_t *data, size_t size)
{
    form *f = form_parse((const char *)data, size);
    if (!f) return;
    FUZZ_ASSERT(f->n <= FORM_MAX_FIELDS);

    /* Names are unique (first value wins), so form_get finds each pair; re-encode them. */
    size_t cap = 1, len = 0;
    for (size_t i = 0; i < f->n; i++) {
        FUZZ_ASSERT(f->name[i] && f->value[i]);
        FUZZ_ASSERT(form_get(f, f->name[i]) == f->value[i]);
        cap += 3 * (strlen(f->name[i]) + strlen(f->value[i])) + 2;
    }
    char *body = xmalloc(cap);
    for (size_t i = 0; i < f->n; i++) {
        char *n = form_escape(f->name[i]), *v = form_escape(f->value[i]);
        for (const char *p = n; *p; p++) FUZZ_ASSERT(*p != '&' && *p != '=' && *p != '+');
        for (const char *p = v; *p; p++) FUZZ_ASSERT(*p != '&' && *p != '=' && *p != '+');
        len += (size_t)snprintf(body + len, cap - len, "%s%s=%s", i ? "&" : "", n, v);
        free(n);
        free(v);
    }
    FUZZ_ASSERT(len < cap);

    /* Parsing what we wrote gives the same pairs back, in the same order. */
    if (len <= FORM_MAX_BYTES) {
        form *g = form_parse(body, len);
        FUZZ_ASSERT(g);
        FUZZ_ASSERT(g->n == f->n);
        for (size_t i = 0; i < f->n; i++) {
            FUZZ_ASSERT(strcmp(g->name[i], f->name[i]) == 0);
            FUZZ_ASSERT(strcmp(g->value[i], f->value[i]) == 0);
        }
        form_free(g);
    }
    free(body);
    form_free(f);
}

/* ---- jwt ----------------------------------------------------------------------- */

static jwk *fuzz_jwt_key;

/* Made once per process: a 2048-bit key nobody outside this process has. 0 or -1. */
static inline int fuzz_jwt_init(void)
{
    char err[256];
    char *pem = pki_rsa_generate(2048, err, sizeof err);
    fuzz_jwt_key = pem ? jwk_from_pem(pem, "fuzz-key", err, sizeof err) : NULL;
    free(pem);
    if (!fuzz_jwt_key) {
        fprintf(stderr, "fuzz_jwt_init: %s\n", err);
        return -1;
    }
    return 0;
}

static inline void fuzz_jwt_fini(void)
{
    jwk_unref(fuzz_jwt_key);
    fuzz_jwt_key = NULL;
}

/* Sign the decoded header and claims with our key; if that works, the result decodes to
 * the same claims and verifies (unless the header carries "crit", which we refuse). */
static inline void fuzz_jwt_resign(const jwt *t)
{
    char err[256];
    char *tok = jwt_sign(fuzz_jwt_key, t->header, t->claims, err, sizeof err);
    if (!tok) return;
    jwt u;
    FUZZ_ASSERT(jwt_decode(tok, &u, err, sizeof err) == 0);
    FUZZ_ASSERT(json_equal(u.claims, t->claims));
    FUZZ_ASSERT((jwt_verify(&u, fuzz_jwt_key, err, sizeof err) == 0) ==
                (json_object_get(u.header, "crit") == NULL));
    jwt_clear(&u);
    free(tok);
}

static inline void fuzz_jwt_one(const uint8_t *data, size_t size)
{
    char err[256];
    char *s = xmalloc(size + 1);   /* jwt_decode takes a C string */
    memcpy(s, data, size);
    s[size] = '\0';

    jwt t;
    if (jwt_decode(s, &t, err, sizeof err) != 0) {
        FUZZ_ASSERT(!t.header && !t.claims && !t.sig && !t.signing_input);
        free(s);
        return;
    }
    FUZZ_ASSERT(json_is_object(t.header) && json_is_object(t.claims) && t.sig);
    size_t in_len = strlen(t.signing_input);
    FUZZ_ASSERT(strncmp(s, t.signing_input, in_len) == 0 && s[in_len] == '.');
    (void)jwt_alg(&t);
    (void)jwt_kid(&t);
    (void)jwt_claim_str(&t, "iss");
    int64_t v;
    (void)jwt_claim_int(&t, "exp", &v);

    /* Nobody outside this process can sign with fuzz_jwt_key: verification must fail. */
    FUZZ_ASSERT(jwt_verify(&t, fuzz_jwt_key, err, sizeof err) != 0);

    static const char *const iss[] = {"https://127.0.0.1/tenant/v2.0", NULL};
    static const char *const aud[] = {"api://weather", "00000003-0000-0000-c000-000000000000",
                                      NULL};
    const jwt_expect expects[] = {
        {0},
        {.issuers = iss, .audiences = aud, .now = 1700000000, .skew_s = 300, .require_exp = true},
        {.audiences = aud, .now = INT64_MAX, .skew_s = -5},
        {.issuers = iss, .now = INT64_MIN + 1, .skew_s = 1},
    };
    for (size_t i = 0; i < sizeof expects / sizeof expects[0]; i++) {
        jwt_check c = jwt_check_claims(&t, &expects[i], err, sizeof err);
        FUZZ_ASSERT(c >= JWT_CHECK_OK && c <= JWT_CHECK_MISSING_EXP);
        FUZZ_ASSERT(strcmp(jwt_check_name(c), "unknown") != 0);
    }
    FUZZ_ASSERT(jwt_check_claims(&t, NULL, err, sizeof err) <= JWT_CHECK_MISSING_EXP);

    /* The claims object as a JWKS entry: a key from it publishes and re-imports. */
    jwk *k = jwk_from_json(t.claims, err, sizeof err);
    if (k) {
        json_t *pub = jwk_public_json(k);
        FUZZ_ASSERT(pub);
        jwk *k2 = jwk_from_json(pub, err, sizeof err);
        FUZZ_ASSERT(k2);
        (void)jwt_verify(&t, k2, err, sizeof err);   /* the attacker holds this key: any answer */
        jwk_unref(k2);
        json_decref(pub);
        jwk_unref(k);
    }

    /* RSA signing is slow: round-trip only about one input in 32 (chosen by its bytes). */
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < size; i++) h = (h ^ data[i]) * 16777619u;
    if (h % 32 == 0) fuzz_jwt_resign(&t);

    jwt_clear(&t);
    free(s);
}

#endif
