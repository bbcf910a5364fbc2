/* Unit tests of gateway/tokcache: hits only for the same token, scope and time; bounded;
 * copies out; safe under concurrent puts and gets. */
#include "gateway/tokcache.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* A hit needs the whole token, the scope and a time before until; the claims come back copied. */
static void test_hit_and_misses(void **state)
{
    (void)state;
    tokcache *c = tokcache_new(64);
    char *claims = (char *)1;
    assert_false(tokcache_get(c, 1, "aaa.bbb.ccc", 100, &claims));
    assert_null(claims);
    tokcache_put(c, 1, "aaa.bbb.ccc", "{\"sub\":\"x\"}", 160);
    assert_true(tokcache_get(c, 1, "aaa.bbb.ccc", 100, &claims));
    assert_string_equal(claims, "{\"sub\":\"x\"}");
    free(claims);
    assert_true(tokcache_get(c, 1, "aaa.bbb.ccc", 159, NULL));
    assert_false(tokcache_get(c, 1, "aaa.bbb.ccc", 160, NULL));          /* until is exclusive */
    assert_false(tokcache_get(c, 2, "aaa.bbb.ccc", 100, NULL));          /* other rules */
    assert_false(tokcache_get(c, 1, "aaa.bbb.ccd", 100, NULL));          /* one byte off */
    assert_false(tokcache_get(c, 1, "aaa.bbb.cc", 100, NULL));           /* a prefix */
    assert_false(tokcache_get(c, 1, "aaa.bbb.ccc.", 100, NULL));         /* longer */
    tokcache_put(c, 3, "no.claims.here", NULL, 200);
    claims = (char *)1;
    assert_true(tokcache_get(c, 3, "no.claims.here", 100, &claims));
    assert_null(claims);
    assert_int_equal(tokcache_count(c), 2);
    /* Long tokens: the slot comes from the end (the signature), the match from every byte. A
     * token that differs only in its header or claims lands in the same slot and still misses. */
    char tok[1200], other[1200];
    memset(tok, 'h', sizeof tok - 1);
    tok[sizeof tok - 1] = '\0';
    tok[100] = '.', tok[1100] = '.';
    memcpy(other, tok, sizeof tok);
    other[50] = 'X';
    tokcache_put(c, 1, tok, NULL, 200);
    assert_true(tokcache_get(c, 1, tok, 100, NULL));
    assert_false(tokcache_get(c, 1, other, 100, NULL));
    tokcache_put(c, 1, other, NULL, 200);        /* replaces tok: same slot */
    assert_true(tokcache_get(c, 1, other, 100, NULL));
    assert_false(tokcache_get(c, 1, tok, 100, NULL));
    tokcache_free(c);
    tokcache_free(NULL);

    /* Tokens with different signatures spread over the slots. */
    c = tokcache_new(64);
    for (int i = 0; i < 32; i++) {
        snprintf(tok + 1168, 32, "%031d", i * 7919);
        tokcache_put(c, 1, tok, NULL, 200);
    }
    assert_true(tokcache_count(c) >= 20);
    tokcache_free(c);
}

/* Never more entries than slots; a new entry replaces the one in its slot; one slot works. */
static void test_bounded(void **state)
{
    (void)state;
    tokcache *c = tokcache_new(8);
    char tok[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(tok, sizeof tok, "tok.%d.sig", i);
        tokcache_put(c, 7, tok, "{}", 1000);
        assert_true(tokcache_get(c, 7, tok, 0, NULL)); /* the newest is always there */
    }
    assert_true(tokcache_count(c) <= 8);
    tokcache_free(c);

    c = tokcache_new(1);
    tokcache_put(c, 1, "a.b.c", NULL, 10);
    tokcache_put(c, 1, "d.e.f", NULL, 10);
    assert_false(tokcache_get(c, 1, "a.b.c", 0, NULL));
    assert_true(tokcache_get(c, 1, "d.e.f", 0, NULL));
    assert_int_equal(tokcache_count(c), 1);
    tokcache_free(c);
}

typedef struct {
    tokcache *c;
    int id;
    int wrong; /* hits that returned another token's claims */
} worker;

static void *hammer(void *arg)
{
    worker *w = arg;
    char tok[48], want[48];
    for (int i = 0; i < 20000; i++) {
        int k = (i * 7 + w->id) % 64;
        snprintf(tok, sizeof tok, "t.%d.s", k);
        snprintf(want, sizeof want, "{\"k\":%d}", k);
        if (i % 3 == 0) tokcache_put(w->c, 1, tok, want, 1000);
        char *claims = NULL;
        if (tokcache_get(w->c, 1, tok, 0, &claims) && (!claims || strcmp(claims, want))) w->wrong++;
        free(claims);
    }
    return NULL;
}

/* Four threads putting and getting over 64 tokens in 16 slots: every hit is the right token's
 */
static void test_threads(void **state)
{
    (void)state;
    tokcache *c = tokcache_new(16);
    pthread_t th[4];
    worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){.c = c, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].wrong, 0);
    }
    assert_true(tokcache_count(c) <= 16);
    tokcache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_and_misses),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
