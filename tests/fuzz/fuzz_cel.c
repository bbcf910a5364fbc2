/* libFuzzer driver: cel_compile and cel_eval on arbitrary source text (src/gateway/cel.h),
 * against a fixed activation shaped like the gateway's (jwt, mcp, request, source) with
 * every JSON type, a long string, a long list and values nested past the compare limit.
 *
 * The entry code is fuzz_cel_one(); tests/unit/test_fuzz_corpus.c #includes this file with
 * FUZZ_CEL_NO_DRIVER defined and replays tests/fuzz/corpus/fuzz_cel/ through it on every
 * `make check` (tests/fuzz/targets.h is the other targets' shared header). Properties:
 *  - a compile error names a position: err ends with " at LINE:COL", line and col >= 1;
 *  - a program keeps its source; evaluating twice gives the same answer;
 *  - cel_eval_bool agrees with cel_eval; NULL as the activation is fine;
 *  - one rule of each kind decides as agentgateway's table says for that rule's value;
 *  - "(" src "\n)" means the same as src (when it still fits the limits).
 * A custom mutator inserts CEL tokens (a built-in dictionary) into one mutation in four. */
#include "gateway/cel.h"

#include "core/util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_assert.h"

static json_t *fuzz_cel_act;

/* The activation, made once per process; fuzz_cel_fini frees it. */
static inline json_t *fuzz_cel_activation(void)
{
    if (fuzz_cel_act) return fuzz_cel_act;
    json_error_t je;
    json_t *a = json_loads(
        "{\"jwt\":{\"iss\":\"https://127.0.0.1:8443/t/v2.0\",\"sub\":\"test-user\","
        "\"aud\":\"api://mcp\",\"appid\":\"65027832-f56f-4d8e-93aa-a09113ba2d47\","
        "\"xms_act_fct\":\"3 11\",\"exp\":1700000000,\"ratio\":0.5,\"neg\":-1,"
        "\"admin\":true,\"none\":null,\"roles\":[\"reader\",\"writer\",1,2.5,null],"
        "\"nested\":{\"key\":\"value\",\"list\":[[1],[2]]},\"utf8\":\"h\\u00e9llo \\ud83d\\ude00\","
        "\"empty\":\"\",\"nul\":\"a\\u0000b\"},"
        "\"mcp\":{\"tool\":{\"name\":\"echo\",\"target\":\"everything\"}},"
        "\"request\":{\"method\":\"POST\",\"path\":\"/mcp\","
        "\"headers\":{\"content-type\":\"application/json\",\"x-a\":\"1\"}},"
        "\"source\":{\"address\":\"127.0.0.1\"},"
        "\"big\":9223372036854775807,\"small\":-9223372036854775808,\"huge\":1e308}",
        JSON_ALLOW_NUL, &je);
    if (!a) {
        fprintf(stderr, "fuzz_cel: activation: %s\n", je.text);
        abort();
    }
    /* A 2000-byte string with separators, 300 list elements, and 300 levels of nesting. */
    char s[2001];
    for (size_t i = 0; i < 2000; i++) s[i] = i % 10 == 9 ? ' ' : (char)('a' + i % 26);
    s[2000] = '\0';
    json_object_set_new(a, "long", json_string(s));
    json_t *list = json_array();
    for (int i = 0; i < 300; i++) json_array_append_new(list, json_integer(i));
    json_object_set_new(a, "many", list);
    json_t *deep = json_array(), *d2 = json_array();
    for (int i = 0; i < 300; i++) {
        deep = json_pack("[o]", deep);
        d2 = json_pack("[o]", d2);
    }
    json_object_set_new(a, "deep", deep);
    json_object_set_new(a, "deep2", d2);
    return fuzz_cel_act = a;
}

static inline void fuzz_cel_fini(void)
{
    json_decref(fuzz_cel_act);
    fuzz_cel_act = NULL;
}

/* Evaluate and check cel_eval_bool against it; returns cel_eval's rc and *out. */
static inline int fuzz_cel_eval(const cel_program *p, json_t **out)
{
    const json_t *act = fuzz_cel_activation();
    char err[256];
    int rc = cel_eval(p, act, out, err, sizeof err);
    cel_result b = cel_eval_bool(p, act);
    if (rc == 0) {
        FUZZ_ASSERT(*out);
        FUZZ_ASSERT(b == (json_is_true(*out) ? CEL_TRUE : json_is_false(*out) ? CEL_FALSE : CEL_ERROR));
    } else {
        FUZZ_ASSERT(!*out && err[0] && b == CEL_ERROR);
    }
    return rc;
}

static inline void fuzz_cel_check_error(const char *err, int line, int col)
{
    FUZZ_ASSERT(line >= 1 && col >= 1);
    char tail[64];
    snprintf(tail, sizeof tail, " at %d:%d", line, col);
    size_t n = strlen(err), t = strlen(tail);
    FUZZ_ASSERT(n > t && strcmp(err + n - t, tail) == 0);
}

static inline void fuzz_cel_one(const uint8_t *data, size_t size)
{
    char *src = xmalloc(size + 1);   /* cel_compile reads up to the first NUL */
    memcpy(src, data, size);
    src[size] = '\0';
    char err[256];
    int line = -1, col = -1;

    cel_program *p = cel_compile(src, err, sizeof err, &line, &col);
    if (!p) {
        fuzz_cel_check_error(err, line, col);
        free(src);
        return;
    }
    FUZZ_ASSERT(line == 0 && col == 0);
    FUZZ_ASSERT(strcmp(cel_program_source(p), src) == 0);

    json_t *v1 = NULL, *v2 = NULL;
    int rc = fuzz_cel_eval(p, &v1);
    FUZZ_ASSERT(fuzz_cel_eval(p, &v2) == rc);
    FUZZ_ASSERT(rc != 0 || json_equal(v1, v2));
    json_decref(v2);

    json_t *none = NULL;   /* no variables at all */
    if (cel_eval(p, NULL, &none, err, sizeof err) == 0) json_decref(none);

    /* One rule of each kind, alone: agentgateway's table for that rule's value. */
    bool is_true = cel_eval_bool(p, fuzz_cel_activation()) == CEL_TRUE;
    static const cel_rule_kind kinds[] = {CEL_RULE_ALLOW, CEL_RULE_DENY, CEL_RULE_REQUIRE};
    for (size_t i = 0; i < 3; i++) {
        cel_rules *rs = cel_rules_new();
        FUZZ_ASSERT(cel_rules_add(rs, kinds[i], src, err, sizeof err, NULL, NULL) == 0);
        FUZZ_ASSERT(cel_rules_decide(rs, fuzz_cel_activation()) ==
                    (kinds[i] == CEL_RULE_DENY ? !is_true : is_true));
        cel_rules_free(rs);
    }

    /* Parenthesised, it means the same (the newline ends a trailing // comment). */
    char *wrapped = xasprintf("(%s\n)", src);
    cel_program *q = cel_compile(wrapped, err, sizeof err, &line, &col);
    if (q) {
        json_t *w = NULL;
        int rc2 = fuzz_cel_eval(q, &w);
        FUZZ_ASSERT(rc2 == rc);
        FUZZ_ASSERT(rc != 0 || json_equal(v1, w));
        json_decref(w);
        cel_program_free(q);
    } else {
        FUZZ_ASSERT(strstr(err, "nested deeper") || strstr(err, "longer than"));
    }
    free(wrapped);

    json_decref(v1);
    cel_program_free(p);
    free(src);
}

#ifndef FUZZ_CEL_NO_DRIVER
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_cel_activation();
    atexit(fuzz_cel_fini);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_cel_one(data, size);
    return 0;
}

/* The dictionary: pieces of the grammar and of the activation. */
static const char *const FUZZ_CEL_TOKENS[] = {
    "jwt", "mcp", "request", "source", "long", "many", "deep", "deep2", "big", "small",
    "huge", ".sub", ".appid", ".xms_act_fct", ".roles", ".nested", ".key", ".list", ".utf8",
    ".empty", ".nul", ".exp", ".ratio", ".neg", ".admin", ".none", ".tool", ".name",
    ".target", ".headers", ".method", ".path", ".address", "['x-a']", "[0]", "[1]", "[-1]",
    "has(", "size(", ".size()", ".startsWith(", ".endsWith(", ".contains(", ".split(",
    ".split(' ')", ".split('')", ".split(' ', 2)", " in ", " && ", " || ", " == ", " != ",
    " < ", " <= ", " > ", " >= ", " + ", " - ", " * ", " / ", " % ", "!", "-", " ? ", " : ",
    "(", ")", "[", "]", ",", "'", "\"", "'''", "r'", "b'", "true", "false", "null", "'11'",
    "'echo'", "''", "\\u00e9", "\\U0001F600", "\\x41", "\\101", "\\n", "\\'",
    "9223372036854775807", "9223372036854775808", "-9223372036854775808", "0x7f", "1e308",
    "0.5", "1.0", "0", "1", "-1", "// c\n", "\n", "{", "}", "let", "1u",
};

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    if (seed % 4 != 0) return LLVMFuzzerMutate(data, size, max_size);
    seed /= 4;
    const char *tok = FUZZ_CEL_TOKENS[seed % ARRAY_LEN(FUZZ_CEL_TOKENS)];
    seed /= (unsigned)ARRAY_LEN(FUZZ_CEL_TOKENS);
    size_t n = strlen(tok);
    if (size + n > max_size) return LLVMFuzzerMutate(data, size, max_size);
    size_t at = seed % (size + 1);
    memmove(data + at + n, data + at, size - at);
    memcpy(data + at, tok, n);
    return size + n;
}
#endif
