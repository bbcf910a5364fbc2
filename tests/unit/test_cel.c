/* Unit tests for src/gateway/cel: the CEL subset (literals, operators, precedence, member
 * and index access, has, size, the string functions, errors and their absorption, parse
 * errors, limits), agentgateway's rule-set decision table, seed 003's rule, evaluation
 * from four threads, and a replay of tests/fuzz/corpus/fuzz_cel/ through the fuzz entry
 * code (tests/fuzz/fuzz_cel.c, included below). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/util.h"
#include "gateway/cel.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define AGENT "65027832-f56f-4d8e-93aa-a09113ba2d47"
#define OTHER "14d82eec-204b-4c2f-b7e8-296a70dab67e"

static json_t *ACT;   /* the activation most tests use; made in group_setup */

static int group_setup(void **state)
{
    (void)state;
    json_error_t je;
    ACT = json_loads(
        "{\"jwt\":{\"sub\":\"test-user\",\"appid\":\"" AGENT "\",\"xms_act_fct\":\"3 11\","
        "\"n\":5,\"d\":1.5,\"neg\":-3,\"admin\":true,\"none\":null,\"roles\":[\"reader\",\"writer\"],"
        "\"nested\":{\"key\":\"value\",\"deeper\":{\"k\":[10,20]}},\"utf8\":\"h\\u00e9llo\","
        "\"empty\":\"\"},"
        "\"mcp\":{\"tool\":{\"name\":\"echo\",\"target\":\"everything\"}},"
        "\"request\":{\"method\":\"POST\",\"path\":\"/mcp\","
        "\"headers\":{\"content-type\":\"application/json\",\"x-a\":\"1\"}},"
        "\"source\":{\"address\":\"127.0.0.1\"}}",
        0, &je);
    if (!ACT) return -1;
    json_t *many = json_array(), *deep = json_array(), *deep2 = json_array();
    for (int i = 0; i < 1000; i++) json_array_append_new(many, json_integer(i));
    for (int i = 0; i < 300; i++) {
        deep = json_pack("[o]", deep);
        deep2 = json_pack("[o]", deep2);
    }
    json_object_set_new(ACT, "many", many);
    json_object_set_new(ACT, "deep", deep);
    json_object_set_new(ACT, "deep2", deep2);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    json_decref(ACT);
    return 0;
}

/* Compile and evaluate src against act: the result as compact JSON, "error: ..." or
 * "compile error: ...". The text lives until the next call. */
static const char *ev_with(const char *src, const json_t *act)
{
    static char out[1024];
    char err[256];
    int line, col;
    cel_program *p = cel_compile(src, err, sizeof err, &line, &col);
    if (!p) {
        snprintf(out, sizeof out, "compile error: %s", err);
        return out;
    }
    json_t *v;
    if (cel_eval(p, act, &v, err, sizeof err) == 0) {
        char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_ENSURE_ASCII);
        snprintf(out, sizeof out, "%s", s);
        free(s);
        json_decref(v);
    } else {
        snprintf(out, sizeof out, "error: %s", err);
    }
    cel_program_free(p);
    return out;
}

static const char *ev(const char *src)
{
    return ev_with(src, ACT);
}

#define EXPECT(src, want)                                                                    \
    do {                                                                                     \
        const char *got_ = ev(src);                                                          \
        if (strcmp(got_, (want)) != 0)                                                       \
            fail_msg("line %d: %s\n   got: %s\n  want: %s", __LINE__, (src), got_, (want));  \
    } while (0)

/* ---- literals -------------------------------------------------------------------- */

static void test_literals(void **state)
{
    (void)state;
    EXPECT("0", "0");
    EXPECT("42", "42");
    EXPECT("0x1F", "31");
    EXPECT("0XfF", "255");
    EXPECT("-5", "-5");
    EXPECT("9223372036854775807", "9223372036854775807");
    EXPECT("-9223372036854775808", "-9223372036854775808");
    EXPECT("1.5", "1.5");
    EXPECT(".5", "0.5");
    EXPECT("1e3", "1000.0");
    EXPECT("2.5e-1", "0.25");
    EXPECT("1E+2", "100.0");
    EXPECT("'single'", "\"single\"");
    EXPECT("\"double\"", "\"double\"");
    EXPECT("'it\"s'", "\"it\\\"s\"");
    EXPECT("\"it's\"", "\"it's\"");
    EXPECT("''", "\"\"");
    EXPECT("'h\\u00e9llo'", "\"h\\u00E9llo\"");
    EXPECT("'\\a\\b\\f\\n\\r\\t\\v'", "\"\\u0007\\b\\f\\n\\r\\t\\u000B\"");
    EXPECT("'\\\\\\'\\\"\\`\\?'", "\"\\\\'\\\"`?\"");
    EXPECT("'\\x41\\X42\\103'", "\"ABC\"");
    EXPECT("'\\xe9' == '\\u00e9'", "true");     /* \x is a code point in a string */
    EXPECT("'\\U0001F600'.size()", "1");
    EXPECT("'\\000'.size()", "1");
    EXPECT("'h\xc3\xa9' == 'h\\u00e9'", "true");   /* UTF-8 in the source */
    EXPECT("r'\\n\\d'", "\"\\\\n\\\\d\"");
    EXPECT("R\"a\\\"", "\"a\\\\\"");
    EXPECT("'''a\nb'c'''", "\"a\\nb'c\"");
    EXPECT("\"\"\"x\"\"\"", "\"x\"");
    EXPECT("true", "true");
    EXPECT("false", "false");
    EXPECT("null", "null");
    EXPECT("[]", "[]");
    EXPECT("[1, 'a', 2.5, true, null, [1, [2]]]", "[1,\"a\",2.5,true,null,[1,[2]]]");
    EXPECT("[1, 2,]", "[1,2]");
    EXPECT("  \t\n 1 // a comment\n", "1");
}

/* ---- operators ------------------------------------------------------------------- */

static void test_arithmetic(void **state)
{
    (void)state;
    EXPECT("1 + 2", "3");
    EXPECT("1 - 2", "-1");
    EXPECT("6 * 7", "42");
    EXPECT("7 / 2", "3");
    EXPECT("-7 / 2", "-3");   /* truncates toward zero */
    EXPECT("7 % 3", "1");
    EXPECT("-7 % 3", "-1");
    EXPECT("1.5 + 1.0", "2.5");
    EXPECT("1.5 - 0.5", "1.0");
    EXPECT("1.5 * 2.0", "3.0");
    EXPECT("1.0 / 4.0", "0.25");
    EXPECT("-jwt.d", "-1.5");
    EXPECT("-jwt.neg", "3");
    EXPECT("--1", "1");
    EXPECT("'ab' + 'cd'", "\"abcd\"");
    EXPECT("jwt.sub + '@' + source.address", "\"test-user@127.0.0.1\"");
    EXPECT("[1] + [2, 3]", "[1,2,3]");
    EXPECT("jwt.roles + ['admin']", "[\"reader\",\"writer\",\"admin\"]");
    EXPECT("[] + []", "[]");
    /* errors */
    EXPECT("9223372036854775807 + 1", "error: integer overflow at 1:21");
    EXPECT("-9223372036854775808 - 1", "error: integer overflow at 1:22");
    EXPECT("4611686018427387904 * 2", "error: integer overflow at 1:21");
    EXPECT("-(-9223372036854775808)", "error: integer overflow at 1:1");
    EXPECT("-9223372036854775808 / -1", "error: integer overflow at 1:22");
    EXPECT("-9223372036854775808 % -1", "error: integer overflow at 1:22");
    EXPECT("1 / 0", "error: division by zero at 1:3");
    EXPECT("1 % 0", "error: modulus by zero at 1:3");
    EXPECT("1.0 / 0.0", "error: double result is not finite at 1:5");
    EXPECT("1e308 * 10.0", "error: double result is not finite at 1:7");
    EXPECT("1.5 % 1.0", "error: no such overload: double % double at 1:5");
    EXPECT("1 + 1.0", "error: no such overload: int + double at 1:3");
    EXPECT("'a' + 1", "error: no such overload: string + int at 1:5");
    EXPECT("[1] + 'a'", "error: no such overload: list + string at 1:5");
    EXPECT("'a' - 'b'", "error: no such overload: string - string at 1:5");
    EXPECT("true + true", "error: no such overload: bool + bool at 1:6");
    EXPECT("-'a'", "error: no such overload: -(string) at 1:1");
    EXPECT("jwt + jwt", "error: no such overload: map + map at 1:5");
}

static void test_comparison(void **state)
{
    (void)state;
    EXPECT("1 == 1", "true");
    EXPECT("1 != 1", "false");
    EXPECT("1 == 1.0", "true");   /* numbers compare by value across types */
    EXPECT("1 != 1.5", "true");
    EXPECT("9223372036854775807 == 9223372036854775808.0", "false");
    EXPECT("'a' == 'a'", "true");
    EXPECT("'a' == 'A'", "false");
    EXPECT("'a' == 1", "false");   /* different types are unequal, not an error */
    EXPECT("null == null", "true");
    EXPECT("jwt.none == null", "true");
    EXPECT("null != 0", "true");
    EXPECT("true == true", "true");
    EXPECT("true != false", "true");
    EXPECT("[1, 'a'] == [1.0, 'a']", "true");
    EXPECT("[1, 2] == [2, 1]", "false");
    EXPECT("[1] == [1, 1]", "false");
    EXPECT("jwt.nested == jwt.nested", "true");
    EXPECT("jwt.nested == jwt", "false");
    EXPECT("request.headers != jwt.nested", "true");
    EXPECT("1 < 2", "true");
    EXPECT("2 <= 2", "true");
    EXPECT("3 > 2", "true");
    EXPECT("2 >= 3", "false");
    EXPECT("1 < 1.5", "true");
    EXPECT("1.5 < 1", "false");
    EXPECT("2.0 >= 2", "true");
    EXPECT("-1 > -1.5", "true");
    EXPECT("9223372036854775807 < 9.3e18", "true");
    EXPECT("-9223372036854775808 > -9.3e18", "true");
    EXPECT("'a' < 'b'", "true");
    EXPECT("'ab' < 'a'", "false");
    EXPECT("'a' < 'ab'", "true");
    EXPECT("'z' < '\\u00e9'", "true");   /* code point order */
    EXPECT("false < true", "true");
    EXPECT("true <= false", "false");
    EXPECT("'a' < 1", "error: no such overload: string < int at 1:5");
    EXPECT("[1] < [2]", "error: no such overload: list < list at 1:5");
    EXPECT("null < null", "error: no such overload: null_type < null_type at 1:6");
    EXPECT("jwt <= jwt", "error: no such overload: map <= map at 1:5");
}

static void test_logic(void **state)
{
    (void)state;
    EXPECT("!true", "false");
    EXPECT("!false", "true");
    EXPECT("!!true", "true");
    EXPECT("true && true", "true");
    EXPECT("true && false", "false");
    EXPECT("false && true", "false");
    EXPECT("false && false", "false");
    EXPECT("true || true", "true");
    EXPECT("true || false", "true");
    EXPECT("false || true", "true");
    EXPECT("false || false", "false");
    EXPECT("true && true && true && false", "false");
    EXPECT("false || false || false || true", "true");
    EXPECT("true ? 'y' : 'n'", "\"y\"");
    EXPECT("false ? 'y' : 'n'", "\"n\"");
    EXPECT("true ? 1 : 1 / 0", "1");   /* only the chosen branch runs */
    EXPECT("false ? 1 / 0 : 2", "2");
    EXPECT("jwt.admin ? (jwt.n > 3 ? 'big' : 'small') : 'none'", "\"big\"");
    EXPECT("false ? 1 : true ? 2 : 3", "2");   /* the else branch nests */
    EXPECT("!1", "error: no such overload: !(int) at 1:1");
    EXPECT("1 ? 2 : 3", "error: condition of ?: must be bool, got int at 1:3");
    EXPECT("jwt.missing ? 2 : 3", "error: no such key 'missing' at 1:5");
    EXPECT("1 && true", "error: operands of && must be bool, got int at 1:1");
    EXPECT("true || 'x'", "true");   /* true || anything, not evaluated further */
    EXPECT("false || 'x'", "error: operands of || must be bool, got string at 1:10");
    EXPECT("'x' || true", "true");   /* a non-bool is an error, and || absorbs it */
}

/* CEL langdef "Logical Operators": && and || are commutative, also with errors. */
static void test_error_absorption(void **state)
{
    (void)state;
    static const struct {
        const char *src, *want;
    } rows[] = {
        {"false && jwt.missing", "false"},
        {"jwt.missing && false", "false"},
        {"true && jwt.missing", "error: no such key 'missing' at 1:13"},
        {"jwt.missing && true", "error: no such key 'missing' at 1:5"},
        {"true || jwt.missing", "true"},
        {"jwt.missing || true", "true"},
        {"false || jwt.missing", "error: no such key 'missing' at 1:14"},
        {"jwt.missing || false", "error: no such key 'missing' at 1:5"},
        {"jwt.a && jwt.b", "error: no such key 'a' at 1:5"},   /* the first error */
        {"jwt.a || jwt.b", "error: no such key 'a' at 1:5"},
        {"jwt.a && jwt.b && false", "false"},
        {"jwt.a || jwt.b || true", "true"},
        {"1 / 0 == 1 && false", "false"},
        {"[1][5] == 1 || true", "true"},
        {"(jwt.missing || true) && jwt.sub == 'test-user'", "true"},
        {"!(jwt.missing && false)", "true"},
        {"nope || true", "true"},   /* an undeclared variable too */
        {"(nope && false) == false", "true"},
        {"jwt.missing == 1", "error: no such key 'missing' at 1:5"},   /* others pass it up */
        {"[jwt.missing]", "error: no such key 'missing' at 1:6"},
        {"size(jwt.missing) > 0", "error: no such key 'missing' at 1:10"},
        {"!jwt.missing", "error: no such key 'missing' at 1:6"},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) EXPECT(rows[i].src, rows[i].want);
}

static void test_in(void **state)
{
    (void)state;
    EXPECT("1 in [1, 2]", "true");
    EXPECT("3 in [1, 2]", "false");
    EXPECT("1 in [1.0]", "true");
    EXPECT("'reader' in jwt.roles", "true");
    EXPECT("'admin' in jwt.roles", "false");
    EXPECT("[1] in [[1], [2]]", "true");
    EXPECT("1 in []", "false");
    EXPECT("'key' in jwt.nested", "true");   /* a map: its keys */
    EXPECT("'value' in jwt.nested", "false");
    EXPECT("1 in jwt.nested", "false");
    EXPECT("'content-type' in request.headers", "true");
    EXPECT("!('x' in ['y'])", "true");
    EXPECT("'ell' in 'hello'", "error: no such overload: string in string at 1:7");   /* not substring */
    EXPECT("1 in 1", "error: no such overload: int in int at 1:3");
    EXPECT("999 in many", "true");
}

/* Lowest to highest: ?: < || < && < relations < + - < * / % < unary < member. */
static void test_precedence(void **state)
{
    (void)state;
    EXPECT("1 + 2 * 3", "7");
    EXPECT("(1 + 2) * 3", "9");
    EXPECT("10 - 2 - 3", "5");   /* left associative */
    EXPECT("64 / 4 / 2", "8");
    EXPECT("7 % 4 * 2", "6");
    EXPECT("2 * 3 % 4", "2");
    EXPECT("-2 * 3", "-6");
    EXPECT("- 2 + 3", "1");
    EXPECT("1 + 2 == 3", "true");
    EXPECT("1 < 2 == true", "true");   /* relations are left associative */
    EXPECT("'a' + 'b' in ['ab']", "true");
    EXPECT("1 in [1] == true", "true");
    EXPECT("true || false && false", "true");
    EXPECT("(true || false) && false", "false");
    EXPECT("false && true || true", "true");
    EXPECT("!true || true", "true");
    EXPECT("!(true || true)", "false");
    EXPECT("1 == 1 && 2 == 2", "true");
    EXPECT("true ? 1 : 2 + 3", "1");
    EXPECT("false ? 1 : 2 + 3", "5");
    EXPECT("false || true ? 'y' : 'n'", "\"y\"");
    EXPECT("-jwt.n", "-5");   /* member before unary */
    EXPECT("!has(jwt.missing)", "true");
    EXPECT("-jwt.roles.size()", "-2");
    EXPECT("jwt.roles + ['a'] == ['reader', 'writer', 'a']", "true");
}

/* ---- member access, index, has, size --------------------------------------------- */

static void test_member_index(void **state)
{
    (void)state;
    EXPECT("jwt.sub", "\"test-user\"");
    EXPECT("jwt['sub']", "\"test-user\"");
    EXPECT("jwt.nested.key", "\"value\"");
    EXPECT("jwt['nested']['key']", "\"value\"");
    EXPECT("jwt.nested['key']", "\"value\"");
    EXPECT("jwt.nested.deeper.k[1]", "20");
    EXPECT("request.headers['content-type']", "\"application/json\"");
    EXPECT("mcp.tool.name", "\"echo\"");
    EXPECT("mcp.tool.target", "\"everything\"");
    EXPECT("source.address", "\"127.0.0.1\"");
    EXPECT("jwt.roles[0]", "\"reader\"");
    EXPECT("jwt.roles[1]", "\"writer\"");
    EXPECT("[1, 2, 3][2]", "3");
    EXPECT("jwt.roles[1 + 0]", "\"writer\"");
    EXPECT("jwt.nested", "{\"key\":\"value\",\"deeper\":{\"k\":[10,20]}}");
    EXPECT("jwt.roles[2]", "error: index 2 out of range for a list of 2 at 1:10");
    EXPECT("jwt.roles[-1]", "error: index -1 out of range for a list of 2 at 1:10");
    EXPECT("jwt.roles['a']", "error: list index must be int, got string at 1:10");
    EXPECT("jwt.roles[0.0]", "error: list index must be int, got double at 1:10");
    EXPECT("jwt.missing", "error: no such key 'missing' at 1:5");
    EXPECT("jwt['missing']", "error: no such key 'missing' at 1:4");
    EXPECT("jwt[1]", "error: map key must be string, got int at 1:4");
    EXPECT("jwt.sub.length", "error: no such field 'length' on string at 1:9");
    EXPECT("jwt.roles.x", "error: no such field 'x' on list at 1:11");
    EXPECT("'abc'[0]", "error: cannot index string at 1:6");
    EXPECT("missing", "error: undeclared reference to 'missing' at 1:1");
    EXPECT("missing.x", "error: undeclared reference to 'missing' at 1:1");
}

static void test_has(void **state)
{
    (void)state;
    EXPECT("has(jwt.sub)", "true");
    EXPECT("has(jwt.missing)", "false");
    EXPECT("has(jwt.nested.key)", "true");
    EXPECT("has(jwt.nested.nope)", "false");
    EXPECT("has(jwt.none)", "true");   /* present, even if null */
    EXPECT("has(request.headers.x)", "false");
    EXPECT("has(jwt.missing.key)", "error: no such key 'missing' at 1:9");
    EXPECT("has(jwt.sub.x)", "error: has() needs a map, got string at 1:1");
    EXPECT("has(missing.x)", "error: undeclared reference to 'missing' at 1:5");
    EXPECT("has(jwt.missing.key) || true", "true");
    EXPECT("has(jwt.xms_act_fct) && '11' in jwt.xms_act_fct.split(' ')", "true");
    EXPECT("has(jwt)", "compile error: has() takes one field selection, e.g. has(jwt.sub) at 1:1");
    EXPECT("has(jwt['sub'])", "compile error: has() takes one field selection, e.g. has(jwt.sub) at 1:1");
    EXPECT("has(jwt.a, jwt.b)", "compile error: has() takes one field selection, e.g. has(jwt.sub) at 1:1");
    EXPECT("has()", "compile error: has() takes one field selection, e.g. has(jwt.sub) at 1:1");
    EXPECT("jwt.has(x)", "compile error: unknown function 'has' at 1:5");
}

static void test_size(void **state)
{
    (void)state;
    EXPECT("size('abc')", "3");
    EXPECT("'abc'.size()", "3");
    EXPECT("size('')", "0");
    EXPECT("size(jwt.utf8)", "5");   /* code points, not bytes */
    EXPECT("'\\U0001F600x'.size()", "2");
    EXPECT("size(jwt.roles)", "2");
    EXPECT("jwt.roles.size()", "2");
    EXPECT("size([])", "0");
    EXPECT("size(jwt.nested)", "2");
    EXPECT("request.headers.size()", "2");
    EXPECT("size(many)", "1000");
    EXPECT("size(1)", "error: no such overload: size(int) at 1:1");
    EXPECT("size(null)", "error: no such overload: size(null_type) at 1:1");
    EXPECT("jwt.n.size()", "error: no such overload: size(int) at 1:7");
    EXPECT("size()", "compile error: size() takes 1 argument at 1:1");
    EXPECT("size('a', 'b')", "compile error: size() takes 1 argument at 1:1");
    EXPECT("'a'.size(1)", "compile error: size() takes 0 arguments at 1:5");
}

static void test_string_functions(void **state)
{
    (void)state;
    EXPECT("'hello'.startsWith('he')", "true");
    EXPECT("'hello'.startsWith('lo')", "false");
    EXPECT("'hello'.startsWith('')", "true");
    EXPECT("'he'.startsWith('hello')", "false");
    EXPECT("'hello'.endsWith('lo')", "true");
    EXPECT("'hello'.endsWith('he')", "false");
    EXPECT("'hello'.endsWith('')", "true");
    EXPECT("'lo'.endsWith('hello')", "false");
    EXPECT("'hello'.contains('ell')", "true");
    EXPECT("'hello'.contains('elo')", "false");
    EXPECT("'hello'.contains('')", "true");
    EXPECT("''.contains('')", "true");
    EXPECT("jwt.utf8.contains('\\u00e9l')", "true");
    EXPECT("request.headers['content-type'].startsWith('application/')", "true");
    EXPECT("source.address.endsWith('.0.0.1')", "true");
    EXPECT("'a b c'.split(' ')", "[\"a\",\"b\",\"c\"]");
    EXPECT("'a,,b,'.split(',')", "[\"a\",\"\",\"b\",\"\"]");
    EXPECT("'abc'.split(',')", "[\"abc\"]");
    EXPECT("''.split(',')", "[\"\"]");
    EXPECT("'a--b--c'.split('--')", "[\"a\",\"b\",\"c\"]");
    EXPECT("'h\\u00e9!'.split('')", "[\"h\",\"\\u00E9\",\"!\"]");   /* characters */
    EXPECT("''.split('')", "[]");
    EXPECT("'a b c'.split(' ', 2)", "[\"a\",\"b c\"]");
    EXPECT("'a b c'.split(' ', 1)", "[\"a b c\"]");
    EXPECT("'a b c'.split(' ', 0)", "[]");
    EXPECT("'a b c'.split(' ', -1)", "[\"a\",\"b\",\"c\"]");
    EXPECT("'a b c'.split(' ', 10)", "[\"a\",\"b\",\"c\"]");
    EXPECT("'abc'.split('', 2)", "[\"a\",\"bc\"]");
    EXPECT("jwt.xms_act_fct.split(' ')", "[\"3\",\"11\"]");
    EXPECT("'11' in jwt.xms_act_fct.split(' ')", "true");
    EXPECT("'1' in jwt.xms_act_fct.split(' ')", "false");
    EXPECT("jwt.n.startsWith('a')", "error: no such overload: int.startsWith(...) at 1:7");
    EXPECT("'a'.endsWith(1)", "error: no such overload: string.endsWith(int) at 1:5");
    EXPECT("jwt.roles.contains('reader')", "error: no such overload: list.contains(...) at 1:11");
    EXPECT("'a'.split(null)", "error: no such overload: string.split(null_type) at 1:5");
    EXPECT("'a'.split(' ', '1')", "error: no such overload: string.split(string, string) at 1:5");
    EXPECT("startsWith('a', 'b')",
           "compile error: 'startsWith' must be called as a method, e.g. s.startsWith(x) at 1:1");
    EXPECT("'a'.split()", "compile error: split() takes 1 to 2 arguments at 1:5");
    EXPECT("'a'.contains('a', 'b')", "compile error: contains() takes 1 argument at 1:5");
    EXPECT("'a'.matches('a')", "compile error: unknown function 'matches' at 1:5");
    EXPECT("'a'.lowerAscii()", "compile error: unknown function 'lowerAscii' at 1:5");
}

/* ---- seed 003 and agentgateway's examples ---------------------------------------- */

#define SEED_003_RULE "jwt.appid == '" AGENT "' && '11' in jwt.xms_act_fct.split(' ')"

/* The seed's mcpAuthorization rule as an allow rule against a token with these claims. */
static bool seed_003_allows(json_t *claims)
{
    json_t *act = json_pack("{s:o, s:{s:{s:s, s:s}}}", "jwt", claims, "mcp", "tool", "name",
                            "echo", "target", "microsoft");
    char err[256];
    cel_rules *rs = cel_rules_new();
    assert_int_equal(cel_rules_add(rs, CEL_RULE_ALLOW, SEED_003_RULE, err, sizeof err, NULL, NULL), 0);
    bool allowed = cel_rules_decide(rs, act);
    cel_rules_free(rs);
    json_decref(act);
    return allowed;
}

static void test_seed_003(void **state)
{
    (void)state;
    /* The agent's OBO token: xms_act_fct as agentid issuer and Entra write it. */
    assert_true(seed_003_allows(json_pack("{s:s, s:s, s:s}", "appid", AGENT, "xms_act_fct", "11",
                                          "sub", "christian.posta@solo.io")));
    assert_true(seed_003_allows(json_pack("{s:s, s:s}", "appid", AGENT, "xms_act_fct", "3 11 9")));
    /* Another app, even an agent. */
    assert_false(seed_003_allows(json_pack("{s:s, s:s}", "appid", OTHER, "xms_act_fct", "11")));
    /* The right app, but not acting as an agent: no 11, or only something containing it. */
    assert_false(seed_003_allows(json_pack("{s:s, s:s}", "appid", AGENT, "xms_act_fct", "1 9")));
    assert_false(seed_003_allows(json_pack("{s:s, s:s}", "appid", AGENT, "xms_act_fct", "111")));
    assert_false(seed_003_allows(json_pack("{s:s, s:s}", "appid", AGENT, "xms_act_fct", "")));
    /* No xms_act_fct at all (a user's token): an error, which does not match. */
    assert_false(seed_003_allows(json_pack("{s:s, s:s}", "appid", AGENT, "sub", "alice")));
    /* No appid either, and a claim of the wrong type. */
    assert_false(seed_003_allows(json_object()));
    assert_false(seed_003_allows(json_pack("{s:s, s:i}", "appid", AGENT, "xms_act_fct", 11)));

    /* The error and its absorption, seen directly. */
    char err[256];
    cel_program *p = cel_compile(SEED_003_RULE, err, sizeof err, NULL, NULL);
    assert_non_null(p);
    json_t *act = json_pack("{s:{s:s}}", "jwt", "appid", AGENT), *v = NULL;
    assert_int_equal(cel_eval(p, act, &v, err, sizeof err), -1);
    assert_null(v);
    assert_string_equal(err, "no such key 'xms_act_fct' at 1:68");
    assert_int_equal(cel_eval_bool(p, act), CEL_ERROR);
    json_decref(act);
    act = json_pack("{s:{s:s}}", "jwt", "appid", OTHER);   /* false && error = false */
    assert_int_equal(cel_eval_bool(p, act), CEL_FALSE);
    json_decref(act);
    cel_program_free(p);
}

/* examples/mcp-authorization/config.yaml in agentgateway. */
static void test_agentgateway_examples(void **state)
{
    (void)state;
    static const char *const rules[] = {
        "mcp.tool.name == \"echo\"",
        "jwt.sub == \"test-user\" && mcp.tool.name == \"get-sum\"",
        "mcp.tool.name == \"get-env\" && jwt.nested.key == \"value\"",
    };
    char err[256];
    cel_rules *rs = cel_rules_new();
    for (size_t i = 0; i < ARRAY_LEN(rules); i++)
        assert_int_equal(cel_rules_add(rs, CEL_RULE_ALLOW, rules[i], err, sizeof err, NULL, NULL), 0);
    static const struct {
        const char *sub, *tool, *nested;   /* nested NULL: no "nested" claim */
        bool allowed;
    } rows[] = {
        {"anyone", "echo", NULL, true},
        {"test-user", "get-sum", NULL, true},
        {"other", "get-sum", NULL, false},
        {"anyone", "get-env", "value", true},
        {"anyone", "get-env", "other", false},
        {"anyone", "get-env", NULL, false},   /* missing claim: an error, not a match */
        {"test-user", "add", "value", false},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        json_t *jwt = json_pack("{s:s}", "sub", rows[i].sub);
        if (rows[i].nested) json_object_set_new(jwt, "nested", json_pack("{s:s}", "key", rows[i].nested));
        json_t *act = json_pack("{s:o, s:{s:{s:s, s:s}}}", "jwt", jwt, "mcp", "tool", "name",
                                rows[i].tool, "target", "everything");
        if (cel_rules_decide(rs, act) != rows[i].allowed)
            fail_msg("row %zu: %s / %s: want %s", i, rows[i].sub, rows[i].tool,
                     rows[i].allowed ? "allow" : "deny");
        json_decref(act);
    }
    /* Without a jwt at all (no token): only the rule that does not read it can match. */
    json_t *act = json_pack("{s:{s:{s:s}}}", "mcp", "tool", "name", "echo");
    assert_true(cel_rules_decide(rs, act));
    json_object_set_new(json_object_get(json_object_get(act, "mcp"), "tool"), "name", json_string("get-sum"));
    assert_false(cel_rules_decide(rs, act));
    json_decref(act);
    cel_rules_free(rs);
}

/* ---- parse errors and limits ----------------------------------------------------- */

static void test_parse_errors(void **state)
{
    (void)state;
    static const struct {
        const char *src, *err;
        int line, col;
    } rows[] = {
        {"", "unexpected end of input at 1:1", 1, 1},
        {"   ", "unexpected end of input at 1:4", 1, 4},
        {"size(jwt.roles", "expected ')' at 1:15", 1, 15},
        {"has(jwt.sub == 'a'", "expected ')' at 1:19", 1, 19},
        {"(1 + 2", "expected ')' at 1:7", 1, 7},
        {"(1 + 2]", "expected ')' at 1:7", 1, 7},
        {"[1, 2", "expected ']' at 1:6", 1, 6},
        {"jwt.roles[0", "expected ']' at 1:12", 1, 12},
        {"true ? 1", "expected ':' at 1:9", 1, 9},
        {"1 +", "unexpected end of input at 1:4", 1, 4},
        {"1 + * 2", "unexpected '*' at 1:5", 1, 5},
        {"a b", "unexpected 'b' at 1:3", 1, 3},
        {"1 2", "unexpected '2' at 1:3", 1, 3},
        {"'a' 'b'", "unexpected string literal at 1:5", 1, 5},
        {"jwt.", "expected a field name after '.' at 1:5", 1, 5},
        {"jwt.1", "unexpected '.1' at 1:4", 1, 4},   /* .1 is a double, as in CEL */
        {"jwt.'a'", "expected a field name after '.' at 1:5", 1, 5},
        {"jwt.sub = 'a'", "unexpected '=' (did you mean '=='?) at 1:9", 1, 9},
        {"a & b", "unexpected '&' (did you mean '&&'?) at 1:3", 1, 3},
        {"a | b", "unexpected '|' (did you mean '||'?) at 1:3", 1, 3},
        {"a # b", "unexpected character '#' at 1:3", 1, 3},
        {"a \x01", "unexpected byte 0x01 at 1:3", 1, 3},
        {"'abc", "unterminated string literal at 1:1", 1, 1},
        {"'''abc''", "unterminated string literal at 1:1", 1, 1},
        {"'a\nb'", "newline in string literal (use '''...''' or \\n) at 1:3", 1, 3},
        {"'\\q'", "invalid escape '\\q' at 1:2", 1, 2},
        {"'\\x4'", "invalid escape: expected 2 hex digits at 1:2", 1, 2},
        {"'\\u12g4'", "invalid escape: expected 4 hex digits at 1:2", 1, 2},
        {"'\\400'", "invalid escape '\\4' at 1:2", 1, 2},
        {"'\\08'", "invalid escape: expected 3 octal digits at 1:2", 1, 2},
        {"'\\ud800'", "invalid escape: U+D800 is not a Unicode scalar value at 1:2", 1, 2},
        {"'\\U00110000'", "invalid escape: U+110000 is not a Unicode scalar value at 1:2", 1, 2},
        {"'\xff'", "string literal is not valid UTF-8 at 1:1", 1, 1},
        {"b'abc'", "bytes literals are not supported at 1:1", 1, 1},
        {"{'a': 1}", "map literals are not supported at 1:1", 1, 1},
        {"1u", "unsigned integer literals are not supported at 1:1", 1, 1},
        {"0x", "hex literal needs digits at 1:1", 1, 1},
        {"12ab", "malformed number at 1:1", 1, 1},
        {"9223372036854775808", "integer literal out of range at 1:1", 1, 1},
        {"99999999999999999999", "integer literal out of range at 1:1", 1, 1},
        {"1e999", "double literal out of range at 1:1", 1, 1},
        {"foo(1)", "unknown function 'foo' at 1:1", 1, 1},
        {"jwt.sub.foo()", "unknown function 'foo' at 1:9", 1, 9},
        {"jwt.sub.size", "no such", 0, 0},   /* a field, fine: evaluated later */
        {"if", "'if' is a reserved word at 1:1", 1, 1},
        {"jwt.while", "'while' is a reserved word at 1:5", 1, 5},
        {"in", "unexpected 'in' at 1:1", 1, 1},
        {"!-1", "unexpected '-' at 1:2", 1, 2},
        {"true ? 1 ? 2 : 3 : 4", "expected ':' at 1:10", 1, 10},   /* CEL: no ?: in the middle */
        /* Lines and columns: 1-based, columns in characters. */
        {"jwt.sub == 'x' &&\n  mcp.tool.name ==", "unexpected end of input at 2:19", 2, 19},
        {"// comment\n\n  (1", "expected ')' at 3:5", 3, 5},
        {"'h\xc3\xa9llo' + )", "unexpected ')' at 1:11", 1, 11},
        {"'\xf0\x9f\x98\x80' ==\n\t'x' )", "unexpected ')' at 2:6", 2, 6},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        char err[256];
        int line = -1, col = -1;
        cel_program *p = cel_compile(rows[i].src, err, sizeof err, &line, &col);
        if (rows[i].line == 0) {   /* compiles */
            assert_non_null(p);
            assert_int_equal(line, 0);
            cel_program_free(p);
            continue;
        }
        if (p || strcmp(err, rows[i].err) != 0 || line != rows[i].line || col != rows[i].col)
            fail_msg("row %zu: %s\n   got: %s (%d:%d)\n  want: %s (%d:%d)", i, rows[i].src,
                     p ? "(compiled)" : err, line, col, rows[i].err, rows[i].line, rows[i].col);
    }
    /* NULL arguments are fine. */
    assert_null(cel_compile("(", NULL, 0, NULL, NULL));
    char err[8];
    assert_null(cel_compile("(((", err, sizeof err, NULL, NULL));
    assert_string_equal(err, "unexpec");   /* truncated, still terminated */
    assert_null(cel_compile(NULL, err, sizeof err, NULL, NULL));
}

/* "(" x n, "1", ")" x n */
static char *nested(const char *open, const char *mid, const char *close, int n)
{
    size_t lo = strlen(open), lc = strlen(close), lm = strlen(mid);
    char *s = xmalloc((size_t)n * (lo + lc) + lm + 1), *o = s;
    for (int i = 0; i < n; i++, o += lo) memcpy(o, open, lo);
    memcpy(o, mid, lm);
    o += lm;
    for (int i = 0; i < n; i++, o += lc) memcpy(o, close, lc);
    *o = '\0';
    return s;
}

static void expect_depth(const char *open, const char *mid, const char *close, int ok_n,
                         const char *want_ok)
{
    char *s = nested(open, mid, close, ok_n);
    const char *got = ev(s);
    if (strcmp(got, want_ok) != 0) fail_msg("%s x %d: %s", open, ok_n, got);
    free(s);
    s = nested(open, mid, close, ok_n + 1);
    got = ev(s);
    if (!strstr(got, "compile error: expression nested deeper than 64 at "))
        fail_msg("%s x %d: %s", open, ok_n + 1, got);
    free(s);
}

static void test_limits(void **state)
{
    (void)state;
    char err[256];
    int line, col;

    /* Source length: 4096 bytes compile, 4097 do not. */
    char *src = xmalloc(CEL_MAX_SOURCE + 2);
    memset(src, ' ', CEL_MAX_SOURCE + 1);
    src[0] = '1';
    src[CEL_MAX_SOURCE] = '\0';
    cel_program *p = cel_compile(src, err, sizeof err, &line, &col);
    assert_non_null(p);
    cel_program_free(p);
    src[CEL_MAX_SOURCE] = ' ';
    src[CEL_MAX_SOURCE + 1] = '\0';
    assert_null(cel_compile(src, err, sizeof err, &line, &col));
    assert_string_equal(err, "expression longer than 4096 bytes at 1:4097");
    free(src);

    /* Nesting: 64 deep is fine, 65 is not, however it nests. */
    expect_depth("(", "1", ")", 63, "1");   /* the outer expression is one more level */
    char *lists = nested("[", "1", "]", 63);
    expect_depth("[", "1", "]", 63, lists);
    free(lists);
    expect_depth("!", "true", "", 63, "false");
    expect_depth("-", "1", "", 63, "-1");
    expect_depth("1 + ", "1", "", 63, "64");
    expect_depth("", "jwt", ".x", 63, "error: no such key 'x' at 1:5");
    /* ... but && and || chains are flat: 250 terms are fine. */
    char *chain = xmalloc(16 * 300 + 8);
    chain[0] = '\0';
    for (int i = 0; i < 250; i++) strcat(chain, "jwt.n == 1 || ");
    strcat(chain, "true");
    EXPECT(chain, "true");
    free(chain);

    /* A list literal of 1024 elements compiles, 1025 do not. */
    char *list = xmalloc(2 * 1025 + 3);
    strcpy(list, "[");
    for (int i = 0; i < 1024; i++) strcat(list, "1,");
    strcat(list, "]");
    p = cel_compile(list, err, sizeof err, &line, &col);
    assert_non_null(p);
    cel_program_free(p);
    list[strlen(list) - 1] = '\0';
    strcat(list, "1]");
    assert_null(cel_compile(list, err, sizeof err, &line, &col));
    assert_string_equal(err, "list literal has more than 1024 elements at 1:2050");
    free(list);

    /* What an expression builds is capped: strings, lists, split results. */
    EXPECT("size(many + [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24])", "1024");
    EXPECT("size(many + [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25])",
           "error: list longer than 1024 elements at 1:11");
    json_t *act = json_pack("{s:s}", "s", "");
    char *s = xmalloc(CEL_MAX_STRING / 2 + 1);
    memset(s, 'x', CEL_MAX_STRING / 2);
    s[CEL_MAX_STRING / 2] = '\0';
    json_object_set_new(act, "s", json_string(s));
    free(s);
    const char *got = ev_with("size(s + s)", act);
    assert_string_equal(got, "65536");
    got = ev_with("size(s + s + 'x')", act);
    assert_string_equal(got, "error: string longer than 65536 bytes at 1:12");
    got = ev_with("size((s + s).split(''))", act);
    assert_string_equal(got, "error: split gives more than 1024 parts at 1:14");
    got = ev_with("s.split('', 1024).size()", act);
    assert_string_equal(got, "1024");
    json_decref(act);

    /* Work: each comparison of 1000 elements costs 1000 steps; 200 of them are too many,
     * and the limit is not absorbed by || or &&. */
    char *work = xmalloc(20 * 200 + 16);
    strcpy(work, "many == many");
    for (int i = 1; i < 200; i++) strcat(work, " && many == many");
    got = ev(work);
    if (!strstr(got, "error: evaluation exceeded 100000 steps at 1:")) fail_msg("work: %s", got);
    char *absorbed = xasprintf("(%s) || true", work);   /* not absorbed */
    got = ev(absorbed);
    if (!strstr(got, "error: evaluation exceeded 100000 steps at 1:")) fail_msg("absorbed: %s", got);
    free(absorbed);
    absorbed = xasprintf("false && (%s) || true", work);   /* never evaluated: fine */
    EXPECT(absorbed, "true");
    free(absorbed);
    free(work);
    EXPECT("many == many && many == many", "true");

    /* Comparing values nested deeper than 256 is an error (absorbable), not a crash. */
    EXPECT("deep == deep2", "error: values nested deeper than 256 at 1:6");
    EXPECT("deep == deep2 || true", "true");
    EXPECT("deep == []", "false");
}

/* ---- the rule set ---------------------------------------------------------------- */

/* The decision for rules given as "allow:EXPR", "deny:EXPR", "require:EXPR". */
static bool decide(const char *const *rules, size_t n)
{
    char err[256];
    cel_rules *rs = cel_rules_new();
    for (size_t i = 0; i < n; i++) {
        const char *colon = strchr(rules[i], ':');
        char *kind = xstrndup(rules[i], (size_t)(colon - rules[i]));
        cel_rule_kind k;
        assert_int_equal(cel_rule_kind_parse(kind, &k), 0);
        assert_string_equal(cel_rule_kind_name(k), kind);
        free(kind);
        if (cel_rules_add(rs, k, colon + 1, err, sizeof err, NULL, NULL) != 0) fail_msg("%s", err);
    }
    assert_int_equal(cel_rules_count(rs), n);
    bool r = cel_rules_decide(rs, ACT);
    cel_rules_free(rs);
    return r;
}

#define T "true"
#define F "false"
#define E "jwt.missing"   /* an error */
#define N "1"             /* not a bool */

static void test_rules_decision_table(void **state)
{
    (void)state;
    static const struct {
        const char *rules[4];
        bool allowed;
        const char *why;
    } rows[] = {
        {{NULL}, true, "no rules: allow"},
        {{"deny:" T}, false, "a deny rule true: deny"},
        {{"deny:" F}, true, "only deny rules, none true: allow (deny-list)"},
        {{"deny:" E}, true, "a deny rule that errors does not match (fails open)"},
        {{"deny:" N}, true, "a deny rule that is not a bool does not match"},
        {{"deny:" F, "deny:" T}, false, "any deny true: deny"},
        {{"deny:" T, "allow:" T}, false, "deny wins over allow"},
        {{"deny:" T, "require:" T}, false, "deny wins over require"},
        {{"require:" T}, true, "require true, nothing else: allow"},
        {{"require:" F}, false, "require false: deny"},
        {{"require:" E}, false, "require that errors: deny"},
        {{"require:" N}, false, "require that is not a bool: deny"},
        {{"require:" T, "require:" F}, false, "every require must hold"},
        {{"require:" F, "allow:" T}, false, "require false beats allow true"},
        {{"require:" T, "allow:" T}, true, "require true and allow true: allow"},
        {{"require:" T, "allow:" F}, false, "require true, allow-list not matched: deny"},
        {{"require:" T, "deny:" F}, true, "require true, deny false: allow"},
        {{"allow:" T}, true, "an allow rule true: allow"},
        {{"allow:" F}, false, "allow rules exist, none true: deny (allow-list)"},
        {{"allow:" E}, false, "an allow rule that errors does not match"},
        {{"allow:" N}, false, "an allow rule that is not a bool does not match"},
        {{"allow:" F, "allow:" T}, true, "any allow true: allow"},
        {{"allow:" E, "allow:" T}, true, "an erroring allow rule does not stop another"},
        {{"deny:" F, "allow:" F}, false, "deny false, allow false: deny"},
        {{"deny:" F, "allow:" T}, true, "deny false, allow true: allow"},
        {{"deny:" E, "allow:" T}, true, "deny error, allow true: allow"},
        {{"deny:" F, "require:" T, "allow:" F, "allow:" T}, true, "all four kinds, allowed"},
        {{"deny:" F, "require:" T, "allow:" F}, false, "all kinds, allow-list not matched"},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        size_t n = 0;
        while (n < 4 && rows[i].rules[n]) n++;
        if (decide(rows[i].rules, n) != rows[i].allowed) fail_msg("row %zu: %s", i, rows[i].why);
    }

    /* An empty or NULL set allows; NULL activation: every variable is missing. */
    assert_true(cel_rules_decide(NULL, ACT));
    cel_rules *rs = cel_rules_new();
    assert_true(cel_rules_decide(rs, NULL));
    char err[256];
    int line, col;
    assert_int_equal(cel_rules_add(rs, CEL_RULE_ALLOW, "jwt.sub == 'test-user'", err, sizeof err, NULL, NULL), 0);
    assert_true(cel_rules_decide(rs, ACT));
    assert_false(cel_rules_decide(rs, NULL));
    /* A rule that does not compile is reported and leaves the set as it was. */
    assert_int_equal(cel_rules_add(rs, CEL_RULE_DENY, "jwt.sub ==", err, sizeof err, &line, &col), -1);
    assert_string_equal(err, "unexpected end of input at 1:11");
    assert_int_equal(line, 1);
    assert_int_equal(col, 11);
    assert_int_equal(cel_rules_count(rs), 1);
    assert_int_equal(cel_rules_add(rs, (cel_rule_kind)7, "true", err, sizeof err, NULL, NULL), -1);
    assert_string_equal(err, "unknown rule kind 7");
    /* At most CEL_MAX_RULES. */
    while (cel_rules_count(rs) < CEL_MAX_RULES)
        assert_int_equal(cel_rules_add(rs, CEL_RULE_ALLOW, "false", err, sizeof err, NULL, NULL), 0);
    assert_int_equal(cel_rules_add(rs, CEL_RULE_ALLOW, "true", err, sizeof err, NULL, NULL), -1);
    assert_string_equal(err, "more than 256 rules");
    assert_true(cel_rules_decide(rs, ACT));
    cel_rules_free(rs);
    cel_rules_free(NULL);

    cel_rule_kind k = CEL_RULE_ALLOW;
    assert_int_equal(cel_rule_kind_parse("require", &k), 0);
    assert_int_equal(k, CEL_RULE_REQUIRE);
    assert_int_equal(cel_rule_kind_parse("Allow", &k), -1);
    assert_int_equal(cel_rule_kind_parse(NULL, &k), -1);
}

/* ---- the API around evaluation --------------------------------------------------- */

static void test_eval_api(void **state)
{
    (void)state;
    char err[256];
    json_t *v = (json_t *)1;
    cel_program *p = cel_compile("jwt.nested", err, sizeof err, NULL, NULL);
    assert_non_null(p);
    assert_string_equal(cel_program_source(p), "jwt.nested");
    /* A member of the activation comes back as a copy of the caller's own. */
    json_t *nested = json_object_get(json_object_get(ACT, "jwt"), "nested");
    assert_int_equal(cel_eval(p, ACT, &v, err, sizeof err), 0);
    assert_ptr_not_equal(v, nested);
    assert_true(json_equal(v, nested));
    assert_int_equal(v->refcount, 1);
    assert_int_equal(nested->refcount, 1);
    json_decref(v);
    assert_int_equal(cel_eval_bool(p, ACT), CEL_ERROR);   /* not a bool */
    /* The activation must be an object; NULL means no variables. */
    json_t *arr = json_array();
    assert_int_equal(cel_eval(p, arr, &v, err, sizeof err), -1);
    assert_null(v);
    assert_string_equal(err, "activation is not a JSON object");
    assert_int_equal(cel_eval_bool(p, arr), CEL_ERROR);
    json_decref(arr);
    assert_int_equal(cel_eval(p, NULL, &v, err, sizeof err), -1);
    assert_string_equal(err, "undeclared reference to 'jwt' at 1:1");
    assert_int_equal(cel_eval(p, ACT, &v, NULL, 0), 0);   /* err may be NULL */
    json_decref(v);
    cel_program_free(p);
    cel_program_free(NULL);
    assert_int_equal(cel_eval(NULL, ACT, &v, err, sizeof err), -1);
    assert_int_equal(cel_eval_bool(NULL, ACT), CEL_ERROR);

    p = cel_compile("jwt.n > 3", err, sizeof err, NULL, NULL);
    assert_int_equal(cel_eval_bool(p, ACT), CEL_TRUE);
    cel_program_free(p);
    p = cel_compile("jwt.n > 30", err, sizeof err, NULL, NULL);
    assert_int_equal(cel_eval_bool(p, ACT), CEL_FALSE);
    cel_program_free(p);
    /* Evaluation leaves the activation as it was. */
    json_t *copy = json_deep_copy(ACT);
    EXPECT("jwt.roles + ['x'] + jwt.roles", "[\"reader\",\"writer\",\"x\",\"reader\",\"writer\"]");
    EXPECT("[jwt, jwt.nested] == [jwt, jwt.nested]", "true");
    assert_true(json_equal(copy, ACT));
    json_decref(copy);
}

/* ---- threads --------------------------------------------------------------------- */

typedef struct {
    const cel_program *rule, *value;
    const cel_rules *rules;
    json_t *allowed_act, *denied_act;
    int bad;
} thread_arg;

static void *thread_main(void *arg)
{
    thread_arg *t = arg;
    for (int i = 0; i < 2000; i++) {
        if (cel_eval_bool(t->rule, t->allowed_act) != CEL_TRUE) t->bad++;
        if (cel_eval_bool(t->rule, t->denied_act) != CEL_ERROR) t->bad++;
        if (!cel_rules_decide(t->rules, t->allowed_act)) t->bad++;
        if (cel_rules_decide(t->rules, t->denied_act)) t->bad++;
        json_t *v = NULL;
        char err[256];
        /* Values shared with the activation and the program's literals change hands. */
        if (cel_eval(t->value, t->allowed_act, &v, err, sizeof err) != 0 || json_array_size(v) != 4)
            t->bad++;
        json_decref(v);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    char err[256];
    cel_program *rule = cel_compile(SEED_003_RULE, err, sizeof err, NULL, NULL);
    cel_program *value = cel_compile("jwt.roles + ['lit', jwt.nested]", err, sizeof err, NULL, NULL);
    cel_rules *rules = cel_rules_new();
    assert_int_equal(cel_rules_add(rules, CEL_RULE_REQUIRE, SEED_003_RULE, err, sizeof err, NULL, NULL), 0);
    assert_int_equal(cel_rules_add(rules, CEL_RULE_DENY, "jwt.sub == 'mallory'", err, sizeof err, NULL, NULL), 0);
    json_t *allowed = json_pack("{s:{s:s, s:s, s:[s, s], s:{s:s}}}", "jwt", "appid", AGENT,
                                "xms_act_fct", "3 11", "roles", "a", "b", "nested", "k", "v");
    json_t *denied = json_pack("{s:{s:s}}", "jwt", "appid", AGENT);
    thread_arg args[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg){rule, value, rules, allowed, denied, 0};
        assert_int_equal(pthread_create(&th[i], NULL, thread_main, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(args[i].bad, 0);
    }
    /* Every reference taken was given back. */
    assert_int_equal(json_object_get(allowed, "jwt")->refcount, 1);
    assert_int_equal(json_object_get(json_object_get(allowed, "jwt"), "roles")->refcount, 1);
    json_decref(allowed);
    json_decref(denied);
    cel_rules_free(rules);
    cel_program_free(rule);
    cel_program_free(value);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literals),
        cmocka_unit_test(test_arithmetic),
        cmocka_unit_test(test_comparison),
        cmocka_unit_test(test_logic),
        cmocka_unit_test(test_error_absorption),
        cmocka_unit_test(test_in),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_member_index),
        cmocka_unit_test(test_has),
        cmocka_unit_test(test_size),
        cmocka_unit_test(test_string_functions),
        cmocka_unit_test(test_seed_003),
        cmocka_unit_test(test_agentgateway_examples),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_rules_decision_table),
        cmocka_unit_test(test_eval_api),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
