/* Replays every file in tests/fuzz/corpus/<target>/ through the fuzz entry code
 * (tests/fuzz/targets.h), so inputs that once crashed, and the seeds, run on every
 * `make check`, plain and under ASan+UBSan (fuzz_cel's entry code is fuzz_cel.c itself).
 * Fuzzing itself is `make fuzz`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A broken property fails the test and names the input instead of aborting. */
static const char *fuzz_current = "";
#define FUZZ_ASSERT(c)                                                                       \
    do {                                                                                     \
        if (!(c)) fail_msg("%s: fuzz property failed: %s (line %d)", fuzz_current, #c,       \
                           __LINE__);                                                        \
    } while (0)
#include "../fuzz/targets.h"
#define FUZZ_CEL_NO_DRIVER
#include "../fuzz/fuzz_cel.c"

#define CORPUS "tests/fuzz/corpus/"   /* tests/run.sh runs us from the top directory */

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Feed each file of CORPUS<target>/ to one(); returns how many there were. */
static size_t replay(const char *target, void (*one)(const uint8_t *, size_t))
{
    char *dir = xasprintf(CORPUS "%s", target);
    DIR *d = opendir(dir);
    if (!d) fail_msg("cannot open %s (run from the top directory)", dir);
    char **names = NULL;
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        names = xrealloc(names, (n + 1) * sizeof *names);
        names[n++] = xasprintf("%s/%s", dir, e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        char *data = util_read_file(names[i], 1 << 20, &len);
        if (!data) fail_msg("cannot read %s", names[i]);
        fuzz_current = names[i];
        one((const uint8_t *)data, len);
        free(data);
        free(names[i]);
    }
    fuzz_current = "";
    free(names);
    free(dir);
    return n;
}

static void test_form_corpus(void **state)
{
    (void)state;
    assert_true(replay("fuzz_form", fuzz_form_one) >= 10);
}

static void test_jwt_corpus(void **state)
{
    (void)state;
    assert_true(replay("fuzz_jwt", fuzz_jwt_one) >= 10);
}

static void test_cel_corpus(void **state)
{
    (void)state;
    assert_true(replay("fuzz_cel", fuzz_cel_one) >= 40);
}

static int group_setup(void **state)
{
    (void)state;
    return fuzz_jwt_init();
}

static int group_teardown(void **state)
{
    (void)state;
    fuzz_jwt_fini();
    fuzz_cel_fini();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_form_corpus),
        cmocka_unit_test(test_jwt_corpus),
        cmocka_unit_test(test_cel_corpus),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
