/* fuzz_assert — FUZZ_ASSERT(c), the property check of every fuzz entry: abort with the failed
 * condition (so libFuzzer saves the input) unless the includer defined its own first, as
 * tests/unit/test_fuzz_corpus.c does to turn it into a cmocka failure naming the input. */
#ifndef AGENTID_TESTS_FUZZ_ASSERT_H
#define AGENTID_TESTS_FUZZ_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

#ifndef FUZZ_ASSERT
#define FUZZ_ASSERT(c)                                                                       \
    do {                                                                                     \
        if (!(c)) {                                                                          \
            fprintf(stderr, "fuzz property failed: %s (%s:%d)\n", #c, __FILE__, __LINE__);   \
            abort();                                                                         \
        }                                                                                    \
    } while (0)
#endif

#endif
