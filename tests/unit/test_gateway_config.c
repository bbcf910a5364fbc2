/* Unit tests for gateway/config: durations, a full file into its structs, FILE:LINE errors,
 * and the MCP multiplexer kept across loads when its route did not change. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "gateway/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/agentid-gwcfg-XXXXXX";
static char path[128];

static const char JWKS[] =
    "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"k1\",\"e\":\"AQAB\",\"n\":"
    "\"u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-"
    "bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-"
    "VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-"
    "Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw\"}]}";

static gw_config *load_text(const char *text, char *err, size_t errlen, const gw_config *prev)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return gw_config_load(path, prev, err, errlen);
}

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(dir)) return -1;
    snprintf(path, sizeof path, "%s/gw.yaml", dir);
    char jwks_path[160];
    snprintf(jwks_path, sizeof jwks_path, "%s/keys.json", dir);
    FILE *f = fopen(jwks_path, "w");
    fputs(JWKS, f);
    fclose(f);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char p[200];
    snprintf(p, sizeof p, "%s/keys.json", dir);
    unlink(p);
    unlink(path);
    rmdir(dir);
    return 0;
}

static void test_durations(void **state)
{
    (void)state;
    assert_int_equal(gw_duration_ms("30s"), 30000);
    assert_int_equal(gw_duration_ms("250ms"), 250);
    assert_int_equal(gw_duration_ms("1m30s"), 90000);
    assert_int_equal(gw_duration_ms("2h"), 7200000);
    assert_int_equal(gw_duration_ms("1.5s"), 1500);
    assert_int_equal(gw_duration_ms("0s"), 0);
    const char *bad[] = {"", "30", "s", "-1s", "1d", "1 s", "1sx", "ms", NULL};
    for (const char **b = bad; *b; b++) assert_int_equal(gw_duration_ms(*b), -1);
    assert_int_equal(gw_duration_ms(NULL), -1);
}

static const char FULL[] =
    "config: {allowNonLoopback: false}\n"
    "binds:\n"
    "- port: 3000\n"
    "  listeners:\n"
    "  - name: a\n"
    "    routes:\n"
    "    - name: api\n"
    "      matches:\n"
    "      - path: {pathPrefix: /api}\n"
    "        method: GET\n"
    "        headers: [{name: x-env, value: {exact: prod}}]\n"
    "      - path: {exact: /v}\n"
    "      backends: [{host: \"127.0.0.1:8080\"}]\n"
    "      policies:\n"
    "        jwtAuth: {issuer: \"https://iss/\", audiences: [a1, a2], jwks: {file: keys.json}, requireKid: true}\n"
    "        authorization: {rules: [\"jwt.sub == 'x'\", {deny: \"false\"}, {require: \"true\"}]}\n"
    "        cors: {allowOrigins: ['*'], allowHeaders: [a, b], allowMethods: [GET], maxAge: 100s, allowCredentials: true}\n"
    "        timeout: {requestTimeout: 1m}\n"
    "        localRateLimit: [{maxTokens: 5, tokensPerFill: 2, fillInterval: 10s}]\n"
    "        backendAuth: {passthrough: {}}\n"
    "        claimsToHeaders: {x-oid: oid, x-nested: a.b}\n"
    "    - name: llm\n"
    "      matches: [{path: {pathPrefix: /llm}}]\n"
    "      backends: [{ai: {name: o, provider: {ollama: {model: m1}}, hostOverride: \"api.example:443\"}}]\n"
    "  - routes:\n"
    "    - name: mcp\n"
    "      backends:\n"
    "      - mcp:\n"
    "          targets:\n"
    "          - name: t1\n"
    "            mcp: {host: learn.microsoft.com, port: 443, path: /api/mcp}\n"
    "            identity: {sidecar: {url: \"http://127.0.0.1:5000\", api: mcp, obo: true, agentIdentity: ag}}\n"
    "          - {name: t2, stdio: {cmd: node, args: [s.mjs, -v], env: {A: b}}}\n"
    "          - {name: t3, sse: {host: 127.0.0.1, port: 9002}}\n"
    "          - {name: t4, sse: {url: \"http://127.0.0.1:9003/events\"}}\n"
    "      resourceMetadata: {scopesSupported: [s1], resource: \"https://pub.example/x\"}\n"
    "      policies:\n"
    "        mcpAuthorization: {rules: [\"mcp.tool.name == 'echo'\"]}\n";

static void test_full(void **state)
{
    (void)state;
    char err[512] = "";
    gw_config *c = load_text(FULL, err, sizeof err, NULL);
    if (!c) fail_msg("%s", err);
    assert_int_equal(c->n_binds, 1);
    gw_bind *b = &c->binds[0];
    assert_string_equal(b->address, "127.0.0.1");
    assert_int_equal(b->port, 3000);
    assert_int_equal(b->n_routes, 3);

    gw_route *api = &b->routes[0];
    assert_string_equal(api->name, "api");
    assert_int_equal(api->line, 7);
    assert_int_equal(api->n_matches, 2);
    assert_int_equal(api->matches[0].path_kind, GW_PATH_PREFIX);
    assert_string_equal(api->matches[0].method, "GET");
    assert_string_equal(api->matches[0].headers[0].name, "x-env");
    assert_string_equal(api->matches[0].headers[0].value, "prod");
    assert_int_equal(api->matches[1].path_kind, GW_PATH_EXACT);
    assert_string_equal(api->backend.base_url, "http://127.0.0.1:8080");
    assert_int_equal(api->jwt->mode, GW_JWT_STRICT);
    assert_int_equal(api->jwt->n_providers, 1);
    assert_string_equal(api->jwt->providers[0].audiences[1], "a2");
    assert_null(api->jwt->providers[0].audiences[2]);
    assert_int_equal(jwks_count(api->jwt->providers[0].jwks_keys), 1);
    assert_true(api->jwt->require_kid);
    assert_int_equal(cel_rules_count(api->authz), 3);
    assert_string_equal(api->cors->allow_headers, "a, b");
    assert_int_equal(api->cors->max_age_s, 100);
    assert_true(api->cors->allow_credentials);
    assert_int_equal(api->timeout_ms, 60000);
    assert_int_equal(api->limits[0].max_tokens, 5);
    assert_int_equal(api->limits[0].tokens_per_fill, 2);
    assert_int_equal(api->limits[0].fill_ms, 10000);
    assert_true(api->passthrough);
    assert_int_equal(api->n_claim_headers, 2);
    assert_string_equal(api->claim_headers[1].claim, "a.b");

    gw_route *llm = &b->routes[1];
    assert_int_equal(llm->backend.kind, GW_BACKEND_AI);
    assert_int_equal(llm->backend.provider, GW_AI_OLLAMA);
    assert_string_equal(llm->backend.base_url, "https://api.example");
    assert_string_equal(llm->backend.chat_path, "/v1/chat/completions");
    assert_string_equal(llm->backend.model, "m1");
    assert_null(llm->jwt);

    gw_route *mcp = &b->routes[2];
    assert_int_equal(mcp->backend.kind, GW_BACKEND_MCP);
    assert_int_equal(mcp->backend.n_targets, 4);
    assert_false(mcp->backend.targets[0].sse);
    assert_true(mcp->backend.targets[2].sse);
    assert_string_equal(mcp->backend.targets[2].url, "http://127.0.0.1:9002/sse"); /* agentgateway's default path */
    assert_true(mcp->backend.targets[3].sse);
    assert_string_equal(mcp->backend.targets[3].url, "http://127.0.0.1:9003/events");
    assert_string_equal(mcp->backend.targets[0].url, "https://learn.microsoft.com:443/api/mcp");
    assert_int_equal(mcp->backend.targets[0].identity, MCP_IDENTITY_SIDECAR_OBO);
    assert_string_equal(mcp->backend.targets[0].agent_identity, "ag");
    assert_string_equal(mcp->backend.targets[1].cmd[0], "node");
    assert_string_equal(mcp->backend.targets[1].cmd[2], "-v");
    assert_null(mcp->backend.targets[1].cmd[3]);
    assert_string_equal(mcp->backend.targets[1].env[0], "A=b");
    assert_int_equal(mcp->backend.targets[1].identity, MCP_IDENTITY_NONE);
    assert_non_null(mcp->backend.mcp->mux);
    assert_int_equal(cel_rules_count(mcp->backend.mcp->authz), 1);
    assert_string_equal(mcp->meta.scopes_supported[0], "s1");
    assert_int_equal(mcp->matches[0].path_kind, GW_PATH_PREFIX); /* no matches: prefix "/" */
    assert_string_equal(mcp->matches[0].path, "/");
    gw_config_unref(c);
}

static void test_mcp_kept_across_loads(void **state)
{
    (void)state;
    char err[512] = "";
    gw_config *a = load_text(FULL, err, sizeof err, NULL);
    assert_non_null(a);
    /* Another route added: the MCP route is the same, so is its multiplexer. */
    char *more = malloc(sizeof FULL + 200);
    strcpy(more, FULL);
    strcat(more, "    - name: added\n      backends: [{host: \"127.0.0.1:1\"}]\n");
    gw_config *b = load_text(more, err, sizeof err, a);
    if (!b) fail_msg("%s", err);
    assert_ptr_equal(b->binds[0].routes[2].backend.mcp, a->binds[0].routes[2].backend.mcp);
    gw_config_unref(a); /* b still holds it */
    assert_non_null(b->binds[0].routes[2].backend.mcp->mux);
    /* Its rules changed: a new one. */
    char *changed = malloc(sizeof FULL + 10);
    strcpy(changed, FULL);
    char *echo = strstr(changed, "'echo'");
    memcpy(echo, "'ecko'", 6);
    gw_config *c = load_text(changed, err, sizeof err, b);
    assert_non_null(c);
    assert_ptr_not_equal(c->binds[0].routes[2].backend.mcp, b->binds[0].routes[2].backend.mcp);
    /* config.mcp.sessionTtl changed: a new one too (its sessions' lifetime is the mux's). */
    static const char OLD[] = "config: {allowNonLoopback: false}\n";
    assert_memory_equal(changed, OLD, sizeof OLD - 1);
    char *ttl = malloc(sizeof FULL + 40);
    strcpy(ttl, "config: {allowNonLoopback: false, mcp: {sessionTtl: 8m}}\n");
    strcat(ttl, changed + sizeof OLD - 1);
    gw_config *d = load_text(ttl, err, sizeof err, c);
    if (!d) fail_msg("%s", err);
    assert_ptr_not_equal(d->binds[0].routes[2].backend.mcp, c->binds[0].routes[2].backend.mcp);
    gw_config_unref(b);
    gw_config_unref(c);
    gw_config_unref(d);
    free(more);
    free(changed);
    free(ttl);
}

/* Regexes as agentgateway's users write them (Rust syntax) mean the same here. */
static void test_regex_dialect(void **state)
{
    (void)state;
    static const struct { const char *re, *yes, *no; } CASES[] = {
        {"/items/\\d+", "/items/42", "/items/4x"},
        {"/v\\D", "/vx", "/v1"},
        {"[\\d.]+", "1.2", "1,2"},
        {"[\\.]x", ".x", "\\x"},
        {"a\\.b", "a.b", "axb"},
        {"[]a]+", "]a]", "b"},
        {"[^]a]", "b", "]"},
        {"[[:digit:]\\-]+", "1-2", "1_2"},
        {"\\w+\\s\\w+", "ab cd", "ab-cd"},
        {"(a|b)-[a-z]+", "a-east", "a-east-1"},
    };
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        char text[512], err[512] = "";
        snprintf(text, sizeof text, "binds:\n- port: 1\n  listeners:\n  - routes:\n"
                 "    - matches: [{headers: [{name: x, value: {regex: '%s'}}]}]\n      backends: [{host: a:1}]\n",
                 CASES[i].re);
        gw_config *c = load_text(text, err, sizeof err, NULL);
        if (!c) fail_msg("case %zu: %s", i, err);
        const gw_value_match *m = &c->binds[0].routes[0].matches[0].headers[0];
        if (!gw_value_matches(m, CASES[i].yes)) fail_msg("case %zu: %s should match %s", i, CASES[i].re, CASES[i].yes);
        if (gw_value_matches(m, CASES[i].no)) fail_msg("case %zu: %s should not match %s", i, CASES[i].re, CASES[i].no);
        gw_config_unref(c);
    }
}

static void test_errors(void **state)
{
    (void)state;
    static const struct { const char *text, *want; } CASES[] = {
        {"", ":1: the file is empty"},
        {"binds: [\n- port: 1\n  x: :", ":2: did not find expected node content"},
        {"bindz: []\n", ":1: top level: unknown or unsupported key 'bindz'"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        jwtAuth: {issuer: x, providers: []}\n", ":7: jwtAuth: give either issuer, audiences, jwks and jwtValidationOptions, or providers"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        jwtAuth: {providers: []}\n", ":7: jwtAuth.providers: at least one is required"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        jwtAuth: {providers: [{issuer: x}]}\n", ":7: jwtAuth.providers: jwks is required"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        jwtAuth:\n          providers:\n          - {issuer: x, jwks: {url: \"http://127.0.0.1:1/k\"}}\n"
         "          - {issuer: x, jwks: {url: \"http://127.0.0.1:2/k\"}}\n", ":10: jwtAuth.providers: issuer x is given twice"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        jwtAuth: {providers: [{issuer: x, mode: strict}]}\n", ":7: jwtAuth.providers: unknown or unsupported key 'mode'"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        jwtAuth: {issuer: x, jwks: {url: \"http://127.0.0.1:1/k\"}, location: {cookie: {name: a}, header: {name: b}}}\n",
         ":7: jwtAuth.location: give one of header, queryParameter and cookie"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        jwtAuth: {issuer: x, jwks: {url: \"http://127.0.0.1:1/k\"}, location: {queryParameter: {prefix: a}}}\n",
         ":7: jwtAuth.location: unknown or unsupported key 'prefix'"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        jwtAuth: {issuer: x, jwks: {url: \"http://127.0.0.1:1/k\"}, jwtValidationOptions: {requiredClaims: [exp, jti]}}\n",
         ":7: jwtAuth.jwtValidationOptions.requiredClaims: expected exp, nbf, aud, iss or sub"},
        {"config:\n  mcp: {sessionTtl: soon}\nbinds: []\n", ":2: config.mcp.sessionTtl: expected a duration from 1s to 168h"},
        {"config:\n  mcp: {sessionTtl: 500ms}\nbinds: []\n", ":2: config.mcp.sessionTtl: expected a duration"},
        {"config:\n  mcp: {ttl: 5m}\nbinds: []\n", ":2: config.mcp: unknown or unsupported key 'ttl'"},
        {"config:\n  statsAddr: \"127.0.0.1:x\"\nbinds: []\n", ":2: config.statsAddr: expected ADDRESS:PORT"},
        {"binds: []\n", ":1: binds: at least one bind is required"},
        {"binds:\n- port: 70000\n  listeners: []\n", ":2: binds.port: expected a whole number from 0 to 65535"},
        {"binds:\n- port: 1\n  address: 10.0.0.1\n  listeners: []\n", ":2: binds.address 10.0.0.1 is not a loopback"},
        {"binds:\n- port: 1\n  address: localhost\n  listeners: []\n", ":3: binds.address: expected a numeric IP"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - name: r\n", ":5: route r: backends is required"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}, {ai: {name: m, provider: {openAI: {}}}}]\n",
         ":5: backends: several backends must all be host or url ones (ai and mcp go alone)"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        retry: {attempts: 3}\n", ":7: retry: codes is required"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        retry: {attempts: 0, codes: [503]}\n", ":7: retry.attempts: expected a whole number from 1 to 255"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        retry: {codes: [99]}\n", ":7: retry.codes: expected a whole number from 100 to 599"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1, weight: 0}, {host: b:2, weight: 0}]\n",
         ":5: backends: their weights add up to 0"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        jwtAuth: {jwks: {file: keys.json}}\n", ":7: jwtAuth: issuer is required"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        jwtAuth: {issuer: i, jwks: {url: \"http://example.com/keys\"}}\n",
         ":7: jwtAuth.jwks.url: must be https://, or http:// on loopback"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        timeout: {requestTimeout: soon}\n", ":7: timeout.requestTimeout: expected a duration"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        authorization:\n          rules:\n          - 'true'\n          - {allow: \"jwt.a ==\"}\n",
         ":10:30: authorization: unexpected end of input at 1:9"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        mcpAuthorization: {rules: ['true']}\n", ":5: route route1: mcpAuthorization needs an mcp backend"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{mcp: {targets: [{name: a_b, mcp: {host: \"http://h/\"}}]}}]\n",
         ":5: route route1: mcp: "},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{host: a:1}]\n      policies:\n"
         "        backendAuth: {key: $AGENTID_TEST_NO_SUCH_VAR}\n", ":7: backendAuth.key: environment variable"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - matches: [{path: {regex: \"/a(\"}}]\n      backends: [{host: a:1}]\n",
         ":5: matches.path.regex: '/a(' is not a regular expression: "},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - matches: [{query: [{name: q, value: {exact: a, regex: b}}]}]\n      backends: [{host: a:1}]\n",
         ":5: matches.query.value: give exactly one of exact and regex"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{mcp: {targets: [{name: a, sse: {host: h}, mcp: {host: h}}]}}]\n",
         ":5: mcp.targets: target a needs exactly one of mcp, sse and stdio"},
        {"binds:\n- port: 1\n  listeners:\n  - routes:\n    - backends: [{mcp: {targets: [{name: a, sse: {url: \"ftp://h/\"}}]}}]\n",
         ":5: mcp.targets.sse: the server's URL must be http:// or https://"},
    };
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        char err[512] = "", want[600];
        gw_config *c = load_text(CASES[i].text, err, sizeof err, NULL);
        if (c) fail_msg("case %zu loaded", i);
        snprintf(want, sizeof want, "%s%s", path, CASES[i].want);
        if (strncmp(err, want, strlen(want))) fail_msg("case %zu: got \"%s\", want \"%s...\"", i, err, want);
    }
    char err[512];
    assert_null(gw_config_load("/nonexistent/gw.yaml", NULL, err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/gw.yaml: "));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_mcp_kept_across_loads),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_regex_dialect),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
