/* Unit tests for token_answer_text (issuer/token): the token endpoint's answer, written with
 * long JWS strings copied as they are and everything else through jansson, must parse back
 * to the same JSON object, whatever the members hold. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "issuer/token.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* A string of n JWS characters (base64url and dots), varied. Caller frees. */
static char *jws(size_t n, int seed)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++) s[i] = a[(i * 7 + (size_t)seed) % (sizeof a - 1)];
    s[n] = '\0';
    return s;
}

/* token_answer_text(o) parses back to o, its length is right, and it has no whitespace
 * outside strings (compact). Returns the text; caller frees. */
static char *round_trip(const json_t *o)
{
    size_t n = 0;
    char *t = token_answer_text(o, &n);
    assert_non_null(t);
    assert_int_equal(n, strlen(t));
    json_error_t err;
    json_t *back = json_loadb(t, n, JSON_ALLOW_NUL, &err);
    if (!back) fail_msg("not JSON: %s in %s", err.text, t);
    assert_true(json_equal(back, o));
    json_decref(back);
    char *plain = json_dumps(o, JSON_COMPACT);
    assert_int_equal(strlen(plain), n);   /* as compact as json_dumps: same members, same bytes */
    free(plain);
    return t;
}

static void test_token_answer(void **state)
{
    (void)state;
    char *at = jws(1300, 1), *idt = jws(900, 2), *rt = jws(700, 3);
    json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:s, s:s, s:s, s:s}", "token_type", "Bearer",
                          "expires_in", (json_int_t)3599, "ext_expires_in", (json_int_t)3599,
                          "refresh_in", (json_int_t)1799, "access_token", at, "scope",
                          "api://x/read openid", "id_token", idt, "refresh_token", rt);
    char *t = round_trip(o);
    assert_non_null(strstr(t, at));   /* copied whole */
    free(t);
    json_decref(o);
    free(at);
    free(idt);
    free(rt);
}

static void test_strings_that_need_escaping(void **state)
{
    (void)state;
    /* 64 characters or more but not JWS text: quotes, backslashes, controls, non-ASCII,
     * an embedded NUL. These must go through jansson's escaping. */
    char nul[80];
    memset(nul, 'a', sizeof nul);
    nul[10] = '\0';
    json_t *o = json_pack("{s:s, s:s, s:s, s:s#, s:s}",
                          "q", "\"quoted\" and \\back\\slashed, long enough to be looked at as a token",
                          "ctl", "tab\there, newline\nthere, bell\x07, and more text to pass 64 chars",
                          "utf8", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x91 ........................................",
                          "nul", nul, sizeof nul,
                          "short", "abc.def");
    char *at = jws(200, 4);
    json_object_set_new(o, "a\"key", json_string(at));   /* JWS value, key that needs escaping */
    free(round_trip(o));
    free(at);
    json_decref(o);
}

static void test_shapes(void **state)
{
    (void)state;
    json_t *o = json_object();
    char *t = round_trip(o);   /* empty */
    assert_string_equal(t, "{}");
    free(t);
    char *at = jws(100, 5);
    json_object_set_new(o, "access_token", json_string(at));   /* only copied members */
    free(round_trip(o));
    for (int i = 0; i < 12; i++) {   /* more long tokens than it copies as they are */
        char k[16], *v = jws(64 + (size_t)i, i);
        snprintf(k, sizeof k, "t%d", i);
        json_object_set_new(o, k, json_string(v));
        free(v);
    }
    json_object_set_new(o, "n", json_integer(-7));
    json_object_set_new(o, "nested", json_pack("{s:[i, s, b, n]}", "a", 1, at, 1));
    free(round_trip(o));
    json_decref(o);
    free(at);
    /* Not an object: no text. */
    size_t n = 1;
    json_t *a = json_array();
    assert_null(token_answer_text(a, &n));
    assert_null(token_answer_text(NULL, &n));
    json_decref(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_answer),
        cmocka_unit_test(test_strings_that_need_escaping),
        cmocka_unit_test(test_shapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
