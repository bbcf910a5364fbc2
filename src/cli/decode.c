/* decode — see decode.h. */
#include "cli/decode.h"

#include "agent/inspect.h"
#include "core/args.h"
#include "core/http_client.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char USAGE[] =
    "usage: agentid decode [TOKEN | -] [--verify] [--json] [--ca-file PEM]\n"
    "\n"
    "Prints a JWT's header and claims (TOKEN, or standard input with - or none; a leading\n"
    "\"Bearer \" is ignored). --verify also checks it against the identity provider named in its\n"
    "iss claim: discovery, JWKS, signature, issuer, exp/nbf. --ca-file (or SSL_CERT_FILE) names an\n"
    "extra CA for that provider, e.g. .agentid/issuer/tls/ca.crt. Exit status: 0 decoded (and\n"
    "valid with --verify), 1 not a JWT or not valid, 2 usage.\n";

static void print_time(const jwt *t, const char *name, const char *label)
{
    int64_t v;
    if (!jwt_claim_int(t, name, &v)) return;
    char when[32], at[32];
    util_fmt_time(v, at);
    printf("  %-4s %s (%s)  %s\n", name, at, inspect_when(v, when), label);
}

static char *read_stdin(void)
{
    size_t cap = 64 * 1024, n = 0;
    char *buf = xmalloc(cap + 1);
    size_t r;
    while (n < cap && (r = fread(buf + n, 1, cap - n, stdin)) > 0) n += r;
    buf[n] = '\0';
    return buf;
}

int decode_main(int argc, char **argv)
{
    const char *tok_arg = NULL, *ca = getenv("SSL_CERT_FILE");
    bool verify = false, as_json = false;
    for (int i = 1; i < argc; i++) {
        bool missing = false;
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--verify")) {
            verify = true;
        } else if (!strcmp(argv[i], "--json")) {
            as_json = true;
        } else if ((v = args_value(argc, argv, &i, "--ca-file", &missing))) {
            ca = v;
        } else if (missing || (argv[i][0] == '-' && argv[i][1])) {
            return args_usage_error("decode", missing ? "option %s needs a value" : "unknown option %s", argv[i]);
        } else if (tok_arg) {
            return args_usage_error("decode", "one token at a time (extra argument %s)", argv[i]);
        } else {
            tok_arg = argv[i];
        }
    }
    char *input = NULL;
    if (!tok_arg || !strcmp(tok_arg, "-")) {
        if (isatty(STDIN_FILENO)) return args_usage_error("decode", "give a token%s, or pipe one in", "");
        tok_arg = input = read_stdin();
    }
    if (verify) httpc_global_init();
    token_info ti;
    int rc = inspect_token(tok_arg, verify, ca && *ca ? ca : NULL, &ti);
    free(input);
    if (rc != 0) {
        fprintf(stderr, "agentid decode: %s\n", ti.status);
        inspect_clear(&ti);
        return 1;
    }
    if (as_json) {
        json_t *o = json_pack("{s:O, s:O}", "header", ti.t.header, "claims", ti.t.claims);
        if (verify)
            json_object_set_new(o, "verification",
                                json_pack("{s:b, s:s}", "valid", ti.valid, "status", ti.status));
        char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        puts(s);
        free(s);
        json_decref(o);
    } else {
        char *h = json_dumps(ti.t.header, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        char *c = json_dumps(ti.t.claims, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("Header\n%s\nClaims\n%s\nTimes\n", h, c);
        print_time(&ti.t, "iat", "issued");
        print_time(&ti.t, "nbf", "not before");
        print_time(&ti.t, "exp", "expires");
        if (verify)
            printf("Verification\n  %s %s\n", ti.valid ? "\u2713" : "\u2717", ti.status);
        free(h);
        free(c);
    }
    rc = verify && !ti.valid ? 1 : 0;
    inspect_clear(&ti);
    return rc;
}
