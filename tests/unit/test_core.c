/* Unit tests of the small core modules: config, log redaction, base64, forms, util. */
#include "core/b64.h"
#include "core/config.h"
#include "core/form.h"
#include "core/log.h"
#include "core/util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static char *write_tmp(const char *content)
{
    char *path = xstrdup("/tmp/agentid-core-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    return path;
}

/* appsettings.json flattens to ASP.NET keys; the environment wins; keys ignore case and ':'. */
static void test_config_file_and_env(void **state)
{
    (void)state;
    char *path = write_tmp("{\"AzureAd\":{\"TenantId\":\"from-file\",\"ClientId\":\"c\","
                           "\"ClientCredentials\":[{\"SourceType\":\"ClientSecret\",\"ClientSecret\":\"s\"}]},"
                           "\"DownstreamApis\":{\"graph\":{\"Scopes\":[\"a\",\"\",\"b\"],\"RequestAppToken\":true},"
                           "\"weather\":{\"Scopes\":\"x y\"}},\"Sidecar\":{\"TokenCacheSize\":5}}");
    char *env[] = {"AzureAd__TenantId=from-env", "azuread:clientid=lower", "NOEQUALS", "=novalue", NULL};
    char err[256];
    config *c = config_load(path, env, err, sizeof err);
    assert_non_null(c);
    assert_string_equal(config_get(c, "AzureAd__TenantId"), "from-env");
    assert_string_equal(config_get(c, "AZUREAD:CLIENTID"), "lower");
    assert_string_equal(config_get(c, "AzureAd__ClientCredentials__0__ClientSecret"), "s");
    assert_string_equal(config_get(c, "Sidecar__TokenCacheSize"), "5");
    assert_null(config_get(c, "AzureAd__Nope"));
    bool ok;
    assert_true(config_bool(c, "DownstreamApis__graph__RequestAppToken", false, &ok) && ok);
    assert_true(config_bool(c, "missing", true, &ok) && ok);
    config_bool(c, "AzureAd__TenantId", false, &ok);
    assert_false(ok);

    const char **names;
    size_t n = config_children(c, "DownstreamApis", &names);
    assert_int_equal(n, 2);
    assert_string_equal(names[0], "graph");
    assert_string_equal(names[1], "weather");
    assert_null(names[2]);
    free(names);

    char **items;
    assert_int_equal(config_list(c, "DownstreamApis__graph__Scopes", &items), 2);  /* blank dropped */
    assert_string_equal(items[0], "a");
    assert_string_equal(items[1], "b");
    config_list_free(items);
    assert_int_equal(config_list(c, "DownstreamApis__weather__Scopes", &items), 2); /* split on spaces */
    assert_string_equal(items[1], "y");
    config_list_free(items);
    assert_int_equal(config_list(c, "nothing", &items), 0);
    assert_null(items[0]);
    config_list_free(items);
    config_free(c);
    unlink(path);
    free(path);
}

static void test_config_bad_file(void **state)
{
    (void)state;
    char *path = write_tmp("{\"AzureAd\": [1,}");
    char err[256] = "";
    assert_null(config_load(path, NULL, err, sizeof err));
    assert_non_null(strstr(err, path));
    unlink(path);
    free(path);
    path = write_tmp("[1,2]");
    assert_null(config_load(path, NULL, err, sizeof err));
    assert_non_null(strstr(err, "must be an object"));
    unlink(path);
    free(path);
    /* A missing file is no error: only the environment counts then. */
    config *c = config_load("/nonexistent/appsettings.json", NULL, err, sizeof err);
    assert_non_null(c);
    config_free(c);
}

/* Anything shaped like a JWT never reaches a log line. */
static void test_log_redact(void **state)
{
    (void)state;
    char s[] = "token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl and eyJhbGciOiJub25lIn0.e30. done";
    log_redact(s);
    assert_null(strstr(s, "eyJ"));
    assert_non_null(strstr(s, "token [redacted-jwt] and [redacted-jwt] done"));
    char keep[] = "eyJ alone is not a token";
    log_redact(keep);
    assert_string_equal(keep, "eyJ alone is not a token");
    char fp[20];
    assert_string_equal(log_fingerprint("abc", fp), "sha256:ba7816bf8f01");   /* RFC 6234 vector */
}

static void test_b64(void **state)
{
    (void)state;
    /* RFC 4648 §10 vectors. */
    static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const std[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        char *e = b64_encode(in[i], strlen(in[i]));
        assert_string_equal(e, std[i]);
        size_t n;
        unsigned char *d = b64_decode(e, strlen(e), &n);
        assert_int_equal(n, strlen(in[i]));
        assert_memory_equal(d, in[i], n);
        free(e);
        free(d);
    }
    char *u = b64url_encode("\xfb\xff", 2);
    assert_string_equal(u, "-_8");
    free(u);
    size_t n;
    assert_null(b64url_decode("-_9", 3, &n));      /* non-zero spare bits: not canonical */
    assert_null(b64url_decode("a+b", 3, &n));      /* '+' is not base64url */
    assert_null(b64url_decode("abcde", 5, &n));    /* impossible length */
}

static void test_form(void **state)
{
    (void)state;
    const char *body = "grant_type=client_credentials&scope=api%3A%2F%2Fx%2F.default&a+b=c+d&dup=1&dup=2&flag";
    form *f = form_parse(body, strlen(body));
    assert_non_null(f);
    assert_string_equal(form_get(f, "scope"), "api://x/.default");
    assert_string_equal(form_get(f, "a b"), "c d");
    assert_string_equal(form_get(f, "dup"), "1");   /* first value wins */
    assert_string_equal(form_get(f, "flag"), "");
    assert_null(form_get(f, "none"));
    form_free(f);
    assert_null(form_parse("a=%zz", 5));
    assert_null(form_parse("a=%4", 4));
    assert_null(form_parse("a=%00", 5));
    char *e = form_escape("a b/c~");
    assert_string_equal(e, "a%20b%2Fc~");
    free(e);
}

static void test_util(void **state)
{
    (void)state;
    char g[37], h[37];
    util_guid(g);
    util_guid(h);
    assert_true(util_is_guid(g));
    assert_string_not_equal(g, h);
    assert_int_equal(g[14], '4');                   /* version 4 */
    assert_false(util_is_guid("not-a-guid"));
    unsigned char le[16];
    assert_true(util_guid_bytes_le("00112233-4455-6677-8899-aabbccddeeff", le));
    static const unsigned char want[16] = {0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66,
                                           0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};
    assert_memory_equal(le, want, 16);
    char t[32];
    util_fmt_time(0, t);
    assert_string_equal(t, "1970-01-01 00:00:00Z");
    assert_true(util_streq_ct("abc", "abc"));
    assert_false(util_streq_ct("abc", "abd"));
    assert_false(util_streq_ct("abc", NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_file_and_env), cmocka_unit_test(test_config_bad_file),
        cmocka_unit_test(test_log_redact),          cmocka_unit_test(test_b64),
        cmocka_unit_test(test_form),                cmocka_unit_test(test_util),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
