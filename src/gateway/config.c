/* gateway/config — see config.h.
 *
 * libyaml loads the whole document into a node tree (yaml_parser_load); each parse_* function
 * below reads one part of the schema from it, checks that a mapping holds only the keys that
 * part knows (a misspelt policy must not silently leave a route open), and reports the first
 * problem as "FILE:LINE: reason" from the node's start mark. Everything a parse_* function
 * allocates hangs off the config at once, so one gw_config_unref() frees a half-built config.
 */
#include "gateway/config.h"

#include "core/log.h"
#include "core/util.h"
#include "jose/pki.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#define MAX_LIST 256            /* entries in any list of the file */
#define TLS_MAX_BYTES (256 * 1024) /* a listener's tls.cert or tls.key file */

typedef struct {
    const char *path;
    yaml_document_t doc;
    char *err;
    size_t errlen;
    const gw_config *prev;       /* whose MCP multiplexers may be taken over */
    size_t bind;                 /* index of the bind being parsed */
    int mcp_session_ttl_s;       /* config.mcp.sessionTtl; 0: the default */
} loader;

/* ---- YAML helpers --------------------------------------------------------------------------- */

static yaml_node_t *node_at(loader *l, int i) { return yaml_document_get_node(&l->doc, i); }
static int line_of(const yaml_node_t *n) { return n ? (int)n->start_mark.line + 1 : 1; }

static bool fail(loader *l, const yaml_node_t *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool fail(loader *l, const yaml_node_t *n, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(l->err, l->errlen, "%s:%d: %s", l->path, line_of(n), msg);
    return false;
}

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

#define PAIRS(n) for (yaml_node_pair_t *p = (n)->data.mapping.pairs.start; p < (n)->data.mapping.pairs.top; p++)
#define ITEMS(n, it) for (yaml_node_item_t *it = (n)->data.sequence.items.start; it < (n)->data.sequence.items.top; it++)

static size_t seq_len(const yaml_node_t *n)
{
    return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
}

/* The value under key in a mapping, or NULL. */
static yaml_node_t *get(loader *l, const yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE) return NULL;
    PAIRS(map) {
        const char *k = scalar(node_at(l, p->key));
        if (k && !strcmp(k, key)) return node_at(l, p->value);
    }
    return NULL;
}

/* A mapping whose keys are all in allowed (NULL-terminated), each once. */
static bool map_ok(loader *l, const yaml_node_t *n, const char *what, const char *const *allowed)
{
    if (!n || n->type != YAML_MAPPING_NODE) return fail(l, n, "%s: expected a mapping", what);
    PAIRS(n) {
        yaml_node_t *kn = node_at(l, p->key);
        const char *k = scalar(kn);
        if (!k) return fail(l, kn, "%s: keys must be plain strings", what);
        const char *const *a = allowed;
        while (*a && strcmp(*a, k)) a++;
        if (!*a) {
            char known[400] = "";
            for (a = allowed; *a; a++)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", a == allowed ? "" : ", ", *a);
            return fail(l, kn, "%s: unknown or unsupported key '%s' (known: %s)", what, k, known);
        }
        for (yaml_node_pair_t *q = n->data.mapping.pairs.start; q < p; q++) {
            const char *k2 = scalar(node_at(l, q->key));
            if (k2 && !strcmp(k2, k)) return fail(l, kn, "%s: duplicate key '%s'", what, k);
        }
    }
    return true;
}

static bool seq_ok(loader *l, const yaml_node_t *n, const char *what)
{
    if (!n || n->type != YAML_SEQUENCE_NODE) return fail(l, n, "%s: expected a list", what);
    if (seq_len(n) > MAX_LIST) return fail(l, n, "%s: more than %d entries", what, MAX_LIST);
    return true;
}

/* A non-empty string, copied. */
static bool str(loader *l, const yaml_node_t *n, const char *what, char **out)
{
    const char *s = scalar(n);
    if (!s || !*s) return fail(l, n, "%s: expected a non-empty string", what);
    free(*out);
    *out = xstrdup(s);
    return true;
}

static bool boolean(loader *l, const yaml_node_t *n, const char *what, bool *out)
{
    const char *s = scalar(n);
    if (s && (!strcmp(s, "true") || !strcmp(s, "false"))) {
        *out = s[0] == 't';
        return true;
    }
    return fail(l, n, "%s: expected true or false", what);
}

static bool integer(loader *l, const yaml_node_t *n, const char *what, long min, long max, long *out)
{
    const char *s = scalar(n);
    char *end = NULL;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || v < min || v > max)
        return fail(l, n, "%s: expected a whole number from %ld to %ld", what, min, max);
    *out = v;
    return true;
}

static bool duration(loader *l, const yaml_node_t *n, const char *what, int64_t *out)
{
    int64_t ms = gw_duration_ms(scalar(n));
    if (ms < 0) return fail(l, n, "%s: expected a duration such as 30s, 500ms, 1m", what);
    *out = ms;
    return true;
}

static void list_free(char **v)
{
    for (char **p = v; p && *p; p++) free(*p);
    free(v);
}

/* A list of non-empty strings (or one string), NULL-terminated. */
static bool str_list(loader *l, const yaml_node_t *n, const char *what, char ***out)
{
    list_free(*out);
    *out = NULL;
    if (scalar(n)) {
        *out = xcalloc(2, sizeof **out);
        return str(l, n, what, &(*out)[0]);
    }
    if (!seq_ok(l, n, what)) return false;
    char **v = *out = xcalloc(seq_len(n) + 1, sizeof *v);
    size_t i = 0;
    ITEMS(n, it) if (!str(l, node_at(l, *it), what, &v[i++])) return false;
    return true;
}

/* The strings of a list joined with ", " (for CORS headers). */
static bool joined(loader *l, const yaml_node_t *n, const char *what, char **out)
{
    char **v = NULL;
    bool ok = str_list(l, n, what, &v);
    if (ok) {
        size_t len = 1;
        for (char **p = v; *p; p++) len += strlen(*p) + 2;
        free(*out);
        *out = xcalloc(1, len);
        for (char **p = v; *p; p++) {
            if (p != v) strcat(*out, ", ");
            strcat(*out, *p);
        }
    }
    list_free(v);
    return ok;
}

int64_t gw_duration_ms(const char *s)
{
    static const struct { const char *unit; int64_t ms; } UNITS[] = {
        {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
    if (!s || !*s) return -1;
    double total = 0;
    while (*s) {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (end == s || errno || v < 0 || !isdigit((unsigned char)*s)) return -1;
        size_t i, ulen = strspn(end, "abcdefghijklmnopqrstuvwxyz");
        for (i = 0; i < ARRAY_LEN(UNITS); i++)
            if (ulen == strlen(UNITS[i].unit) && !strncmp(end, UNITS[i].unit, ulen)) break;
        if (i == ARRAY_LEN(UNITS)) return -1;
        total += v * (double)UNITS[i].ms;
        s = end + ulen;
    }
    return total > 1e12 ? -1 : (int64_t)total;
}

/* ---- policies ------------------------------------------------------------------------------- */

/* One rule list: plain strings (allow) or {allow|deny|require: "..."}. A CEL error is reported
 * at the rule's own line and column in the file. */
static bool parse_rules(loader *l, const yaml_node_t *n, const char *what, cel_rules **out)
{
    static const char *const KEYS[] = {"rules", NULL};
    if (!map_ok(l, n, what, KEYS)) return false;
    yaml_node_t *rules = get(l, n, "rules");
    if (!seq_ok(l, rules, what)) return false;
    *out = cel_rules_new();
    ITEMS(rules, it) {
        yaml_node_t *rn = node_at(l, *it), *src = rn;
        cel_rule_kind kind = CEL_RULE_ALLOW;
        if (rn->type == YAML_MAPPING_NODE) {
            yaml_node_pair_t *p = rn->data.mapping.pairs.start;
            const char *k = p + 1 == rn->data.mapping.pairs.top ? scalar(node_at(l, p->key)) : NULL;
            if (!k || cel_rule_kind_parse(k, &kind) != 0)
                return fail(l, rn, "%s: a rule is a string or one of {allow|deny|require: \"<cel>\"}", what);
            src = node_at(l, p->value);
        }
        const char *text = scalar(src);
        if (!text || !*text) return fail(l, src, "%s: a rule must be a non-empty CEL string", what);
        char err[256];
        int line = 0, col = 0;
        if (cel_rules_add(*out, kind, text, err, sizeof err, &line, &col) != 0) {
            /* Position in the file: quoted scalars start one character after their mark;
             * block scalars (| >) start on the next line, where only the line is certain. */
            yaml_scalar_style_t st = src->data.scalar.style;
            bool block = st == YAML_LITERAL_SCALAR_STYLE || st == YAML_FOLDED_SCALAR_STYLE;
            int fline = line_of(src) + (line > 0 ? line - 1 : 0) + (block ? 1 : 0);
            int fcol = line <= 1 && !block
                           ? (int)src->start_mark.column + 1 + (st == YAML_PLAIN_SCALAR_STYLE ? 0 : 1) + (col > 0 ? col - 1 : 0)
                           : col;
            snprintf(l->err, l->errlen, "%s:%d:%d: %s: %s", l->path, fline, fcol, what, err);
            return false;
        }
    }
    return true;
}

/* The file named by scalar n (what: its key, for errors), read whole; at most max bytes. A relative
 * path is relative to the configuration file, as agentgateway's are to its working directory:
 * the file's directory is the less surprising anchor. NULL (and the error set) if unreadable. */
static char *read_file_at(loader *l, const yaml_node_t *n, const char *what, size_t max)
{
    char *file = NULL;
    if (!str(l, n, what, &file)) return NULL;
    char *full = file[0] == '/' || !strchr(l->path, '/')
                     ? xstrdup(file)
                     : xasprintf("%.*s/%s", (int)(strrchr(l->path, '/') - l->path), l->path, file);
    char *text = util_read_file(full, max, NULL);
    if (!text) fail(l, n, "%s: cannot read %s: %s", what, full, strerror(errno));
    free(full);
    free(file);
    return text;
}

/* One provider's issuer, audiences and jwks, from n (jwtAuth itself, or an entry of its
 * providers); what names where the keys sit in messages ("jwtAuth", "jwtAuth.providers"). */
static bool parse_provider(loader *l, const yaml_node_t *n, const char *what, gw_jwt_provider *j)
{
    static const char *const JWKS_KEYS[] = {"url", "file", NULL};
    yaml_node_t *v;
    char name[64];
    if (!(v = get(l, n, "issuer"))) return fail(l, n, "%s: issuer is required", what);
    snprintf(name, sizeof name, "%s.issuer", what);
    if (!str(l, v, name, &j->issuer)) return false;
    snprintf(name, sizeof name, "%s.audiences", what);
    if ((v = get(l, n, "audiences")) && !str_list(l, v, name, &j->audiences)) return false;
    j->required = GW_CLAIM_EXP; /* agentgateway's default */
    if ((v = get(l, n, "jwtValidationOptions"))) {
        static const char *const OPT_KEYS[] = {"requiredClaims", NULL};
        static const char *const CLAIMS[] = {"exp", "nbf", "aud", "iss", "sub"};
        snprintf(name, sizeof name, "%s.jwtValidationOptions", what);
        if (!map_ok(l, v, name, OPT_KEYS)) return false;
        yaml_node_t *rc = get(l, v, "requiredClaims");
        char **list = NULL;
        if (rc && !str_list(l, rc, name, &list)) {
            list_free(list);
            return false;
        }
        if (list) j->required = 0; /* what the list names, and only that ([]: not even exp) */
        for (char **c = list; c && *c; c++) {
            size_t k = 0;
            while (k < sizeof CLAIMS / sizeof *CLAIMS && strcmp(*c, CLAIMS[k])) k++;
            if (k == sizeof CLAIMS / sizeof *CLAIMS) {
                list_free(list);
                return fail(l, rc, "%s.requiredClaims: expected exp, nbf, aud, iss or sub", name);
            }
            j->required |= 1u << k;
        }
        list_free(list);
    }

    yaml_node_t *k = get(l, n, "jwks");
    if (!k) return fail(l, n, "%s: jwks is required ({url: ...} or {file: ...})", what);
    char *text = NULL;
    bool ok = false;
    if (scalar(k)) { /* inline JSON, as agentgateway allows */
        text = xstrdup(scalar(k));
    } else {
        if (!map_ok(l, k, "jwtAuth.jwks", JWKS_KEYS)) return false;
        yaml_node_t *u = get(l, k, "url"), *f = get(l, k, "file");
        if (!u == !f) return fail(l, k, "jwtAuth.jwks: give exactly one of url and file");
        if (u) {
            if (!str(l, u, "jwtAuth.jwks.url", &j->jwks_url)) return false;
            const char *ca = getenv("SSL_CERT_FILE");
            jwks_cache_opts o = {.jwks_uri = j->jwks_url, .ca_file = ca && *ca ? ca : NULL};
            if (!(j->jwks_cache = jwks_cache_new(&o)))
                return fail(l, u, "jwtAuth.jwks.url: must be https://, or http:// on loopback");
            return true;
        }
        if (!(text = read_file_at(l, f, "jwtAuth.jwks.file", JWKS_MAX_BYTES))) return false;
    }
    char err[256];
    j->jwks_keys = jwks_parse(text, strlen(text), err, sizeof err);
    if (!j->jwks_keys) fail(l, k, "jwtAuth.jwks: %s", err);
    else if (!jwks_count(j->jwks_keys)) fail(l, k, "jwtAuth.jwks: no usable signing key in the set (RSA, EC P-256/P-384/P-521 or Ed25519)");
    else ok = true;
    free(text);
    return ok;
}

static bool parse_jwt(loader *l, const yaml_node_t *n, gw_route *rt)
{
    static const char *const KEYS[] = {"mode", "issuer", "audiences", "jwks", "requireKid", "providers", "location",
                                       "jwtValidationOptions", NULL};
    static const char *const PROVIDER_KEYS[] = {"issuer", "audiences", "jwks", "jwtValidationOptions", NULL};
    static const char *const LOC_KEYS[] = {"header", "queryParameter", "cookie", NULL};
    static const char *const HDR_KEYS[] = {"name", "prefix", NULL};
    static const char *const NAME_KEYS[] = {"name", NULL};
    if (!map_ok(l, n, "jwtAuth", KEYS)) return false;
    gw_jwt *j = rt->jwt = xcalloc(1, sizeof *j);
    yaml_node_t *v;
    if ((v = get(l, n, "mode"))) {
        const char *m = scalar(v);
        if (m && !strcmp(m, "strict")) j->mode = GW_JWT_STRICT;
        else if (m && !strcmp(m, "optional")) j->mode = GW_JWT_OPTIONAL;
        else if (m && !strcmp(m, "permissive")) j->mode = GW_JWT_PERMISSIVE;
        else return fail(l, v, "jwtAuth.mode: expected strict, optional or permissive");
    }
    if ((v = get(l, n, "requireKid")) && !boolean(l, v, "jwtAuth.requireKid", &j->require_kid)) return false;
    if ((v = get(l, n, "location"))) { /* agentgateway's: {header: {name, prefix}}, {queryParameter: {name}}, {cookie: {name}} */
        if (!map_ok(l, v, "jwtAuth.location", LOC_KEYS)) return false;
        yaml_node_t *h = get(l, v, "header"), *q = get(l, v, "queryParameter"), *c = get(l, v, "cookie");
        if ((h != NULL) + (q != NULL) + (c != NULL) != 1)
            return fail(l, v, "jwtAuth.location: give one of header, queryParameter and cookie");
        yaml_node_t *w = h ? h : q ? q : c, *x;
        if (!map_ok(l, w, "jwtAuth.location", h ? HDR_KEYS : NAME_KEYS)) return false;
        if (!(x = get(l, w, "name"))) return fail(l, w, "jwtAuth.location: name is required");
        if (!str(l, x, "jwtAuth.location.name", &j->loc_name)) return false;
        if (h && (x = get(l, w, "prefix")) && !str(l, x, "jwtAuth.location.prefix", &j->loc_prefix)) return false;
        j->where = h ? GW_JWT_IN_HEADER : q ? GW_JWT_IN_QUERY : GW_JWT_IN_COOKIE;
    }
    yaml_node_t *ps = get(l, n, "providers");
    if (!ps) {
        j->providers = xcalloc(1, sizeof *j->providers);
        j->n_providers = 1;
        return parse_provider(l, n, "jwtAuth", &j->providers[0]);
    }
    if (get(l, n, "issuer") || get(l, n, "audiences") || get(l, n, "jwks") || get(l, n, "jwtValidationOptions"))
        return fail(l, n, "jwtAuth: give either issuer, audiences, jwks and jwtValidationOptions, or providers");
    if (!seq_ok(l, ps, "jwtAuth.providers")) return false;
    if (!seq_len(ps)) return fail(l, ps, "jwtAuth.providers: at least one is required");
    j->providers = xcalloc(seq_len(ps), sizeof *j->providers);
    ITEMS(ps, it) {
        yaml_node_t *pn = node_at(l, *it);
        if (!map_ok(l, pn, "jwtAuth.providers", PROVIDER_KEYS)) return false;
        gw_jwt_provider *p = &j->providers[j->n_providers++];
        if (!parse_provider(l, pn, "jwtAuth.providers", p)) return false;
        for (size_t i = 0; i + 1 < j->n_providers; i++)
            if (!strcmp(j->providers[i].issuer, p->issuer))
                return fail(l, pn, "jwtAuth.providers: issuer %s is given twice", p->issuer);
    }
    return true;
}

static bool parse_cors(loader *l, const yaml_node_t *n, gw_route *rt)
{
    static const char *const KEYS[] = {"allowOrigins", "allowHeaders", "allowMethods", "exposeHeaders",
                                       "allowCredentials", "maxAge", NULL};
    if (!map_ok(l, n, "cors", KEYS)) return false;
    gw_cors *c = rt->cors = xcalloc(1, sizeof *c);
    c->max_age_s = -1;
    yaml_node_t *v;
    if ((v = get(l, n, "allowOrigins")) && !str_list(l, v, "cors.allowOrigins", &c->allow_origins)) return false;
    if ((v = get(l, n, "allowHeaders")) && !joined(l, v, "cors.allowHeaders", &c->allow_headers)) return false;
    if ((v = get(l, n, "allowMethods")) && !joined(l, v, "cors.allowMethods", &c->allow_methods)) return false;
    if ((v = get(l, n, "exposeHeaders")) && !joined(l, v, "cors.exposeHeaders", &c->expose_headers)) return false;
    if ((v = get(l, n, "allowCredentials")) && !boolean(l, v, "cors.allowCredentials", &c->allow_credentials))
        return false;
    if ((v = get(l, n, "maxAge"))) {
        const char *s = scalar(v);
        int64_t ms = s && s[0] && !s[strspn(s, "0123456789")] ? (int64_t)atol(s) * 1000 : gw_duration_ms(s);
        if (ms < 0) return fail(l, v, "cors.maxAge: expected a duration such as 100s");
        c->max_age_s = (long)(ms / 1000);
    }
    return true;
}

static bool parse_limits(loader *l, const yaml_node_t *n, gw_route *rt)
{
    static const char *const KEYS[] = {"maxTokens", "tokensPerFill", "fillInterval", "type", NULL};
    if (!seq_ok(l, n, "localRateLimit")) return false;
    rt->limits = xcalloc(seq_len(n) + 1, sizeof *rt->limits);
    ITEMS(n, it) {
        yaml_node_t *e = node_at(l, *it), *v;
        gw_ratelimit *b = &rt->limits[rt->n_limits];
        if (!map_ok(l, e, "localRateLimit", KEYS)) return false;
        pthread_mutex_init(&b->mu, NULL);
        rt->n_limits++;
        b->tokens_per_fill = 1;
        if (!(v = get(l, e, "maxTokens"))) return fail(l, e, "localRateLimit: maxTokens is required");
        if (!integer(l, v, "localRateLimit.maxTokens", 1, 1000000000, &b->max_tokens)) return false;
        if ((v = get(l, e, "tokensPerFill")) &&
            !integer(l, v, "localRateLimit.tokensPerFill", 1, 1000000000, &b->tokens_per_fill))
            return false;
        if (!(v = get(l, e, "fillInterval"))) return fail(l, e, "localRateLimit: fillInterval is required");
        if (!duration(l, v, "localRateLimit.fillInterval", &b->fill_ms)) return false;
        if (b->fill_ms <= 0) return fail(l, v, "localRateLimit.fillInterval: must be more than 0");
        if ((v = get(l, e, "type")) && (!scalar(v) || strcmp(scalar(v), "requests")))
            return fail(l, v, "localRateLimit.type: only \"requests\" is supported");
        b->tokens = b->max_tokens;
        b->last_fill_ms = -1; /* set on first use */
    }
    return true;
}

/* RFC 7230 token characters: what a header name may contain. */
static bool header_name_ok(const char *s)
{
    return s && *s && strspn(s, "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == strlen(s);
}

bool gw_header_listed(char *const *list, const char *name)
{
    for (size_t i = 0; list && list[i]; i++)
        if (!strcasecmp(list[i], name)) return true;
    return false;
}

bool gw_header_mod_drops(const gw_header_mod *m, const char *name)
{
    return gw_header_listed(m->remove, name) || gw_header_listed(m->set_names, name);
}

/* A header modifier's add or set: a mapping name: value, into two NULL-terminated lists. */
static bool parse_header_map(loader *l, const yaml_node_t *n, const char *what, bool response,
                             char ***names, char ***values)
{
    /* The gateway's to manage: the framing, and on answers the type it passes through. */
    static const char *const MANAGED[] = {"Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive",
                                          "Upgrade", "TE", "Trailer", "Proxy-Connection", NULL};
    if (n->type != YAML_MAPPING_NODE) return fail(l, n, "%s: expected a mapping header: value", what);
    size_t cap = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    if (cap > GW_HEADER_MOD_MAX) return fail(l, n, "%s: at most %d headers", what, GW_HEADER_MOD_MAX);
    *names = xcalloc(cap + 1, sizeof **names);
    *values = xcalloc(cap + 1, sizeof **values);
    size_t i = 0;
    PAIRS(n) {
        yaml_node_t *kn = node_at(l, p->key), *vn = node_at(l, p->value);
        if (!str(l, kn, what, &(*names)[i])) return false;
        const char *name = (*names)[i];
        if (!header_name_ok(name)) return fail(l, kn, "%s: '%s' is not a header name", what, name);
        if (gw_header_listed((char *const *)MANAGED, name) || (response && !strcasecmp(name, "Content-Type")))
            return fail(l, kn, "%s: %s is the gateway's to set", what, name);
        if (!str(l, vn, what, &(*values)[i])) return false;
        for (const char *c = (*values)[i]; *c; c++)
            if ((unsigned char)*c < 0x20 && *c != '\t') return fail(l, vn, "%s: a control character in the value of %s", what, name);
        i++;
    }
    return true;
}

static bool parse_header_mod(loader *l, const yaml_node_t *n, const char *what, bool response, gw_header_mod **out)
{
    static const char *const KEYS[] = {"add", "set", "remove", NULL};
    if (!map_ok(l, n, what, KEYS)) return false;
    gw_header_mod *m = *out = xcalloc(1, sizeof *m);
    yaml_node_t *v;
    char key[64];
    snprintf(key, sizeof key, "%s.set", what);
    if ((v = get(l, n, "set")) && !parse_header_map(l, v, key, response, &m->set_names, &m->set_values)) return false;
    snprintf(key, sizeof key, "%s.add", what);
    if ((v = get(l, n, "add")) && !parse_header_map(l, v, key, response, &m->add_names, &m->add_values)) return false;
    snprintf(key, sizeof key, "%s.remove", what);
    if ((v = get(l, n, "remove"))) {
        if (!str_list(l, v, key, &m->remove)) return false;
        for (size_t i = 0; m->remove[i]; i++)
            if (!header_name_ok(m->remove[i])) return fail(l, v, "%s: '%s' is not a header name", key, m->remove[i]);
    }
    return true;
}

static void free_header_mod(gw_header_mod *m)
{
    if (!m) return;
    list_free(m->set_names);
    list_free(m->set_values);
    list_free(m->add_names);
    list_free(m->add_values);
    list_free(m->remove);
    free(m);
}

/* A path that replaces a request's (urlRewrite, requestRedirect): starts with '/', visible
 * ASCII only, no query or fragment. */
static bool url_path(loader *l, const yaml_node_t *n, const char *what, char **dst)
{
    if (!str(l, n, what, dst)) return false;
    for (const char *c = *dst; *c; c++)
        if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f || *c == '?' || *c == '#')
            return fail(l, n, "%s: '%s' is not a URL path (visible ASCII, no ? or #)", what, *dst);
    if ((*dst)[0] != '/') return fail(l, n, "%s: '%s' must start with /", what, *dst);
    return true;
}

static bool parse_authority(loader *l, const yaml_node_t *v, const char *what, char **host, unsigned *port,
                            bool *full_authority);

static bool parse_rewrite(loader *l, const yaml_node_t *n, gw_route *rt)
{
    static const char *const KEYS[] = {"path", "authority", NULL};
    static const char *const PATH_KEYS[] = {"prefix", "full", NULL};
    if (!map_ok(l, n, "urlRewrite", KEYS)) return false;
    yaml_node_t *v = get(l, n, "authority"), *p, *f;
    bool full = false;
    if (v && !parse_authority(l, v, "urlRewrite.authority", &rt->rewrite_host, &rt->rewrite_port, &full))
        return false;
    if (!(v = get(l, n, "path"))) {
        if (rt->rewrite_host || rt->rewrite_port) return true;
        return fail(l, n, "urlRewrite: path or authority is required");
    }
    if (!map_ok(l, v, "urlRewrite.path", PATH_KEYS)) return false;
    p = get(l, v, "prefix");
    f = get(l, v, "full");
    if (!p == !f) return fail(l, v, "urlRewrite.path: give exactly one of prefix and full");
    return url_path(l, p ? p : f, "urlRewrite.path", p ? &rt->rewrite_prefix : &rt->rewrite_full);
}

/* "example.com" or "*.example.com" (one or more leading labels): letters, digits, '-', '.'. */
static bool host_name_ok(const char *h)
{
    const char *name = h[0] == '*' && h[1] == '.' ? h + 2 : h;
    size_t len = strlen(name);
    return len && len <= 253 && name[0] != '.' && name[len - 1] != '.' && !strstr(name, "..") &&
           strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") == len;
}

/* Does a listener's hostname take in a route's (Gateway API: the route's must fit it)? */
static bool host_within(const char *listener, const char *route)
{
    if (!strcasecmp(listener, route)) return true;
    if (listener[0] != '*') return false;
    const char *r = route[0] == '*' ? route + 1 : route; /* a wildcard fits a wider one */
    size_t sl = strlen(listener + 1), rl = strlen(r);      /* listener + 1: ".example.com" */
    return rl > sl && !strcasecmp(r + rl - sl, listener + 1);
}

/* An authority to put in place of another (requestRedirect, urlRewrite): {full: HOST[:PORT]}
 * alone, or {host, port}, either or both. */
static bool parse_authority(loader *l, const yaml_node_t *v, const char *what, char **host, unsigned *port,
                            bool *full_authority)
{
    static const char *const AKEYS[] = {"full", "host", "port", NULL};
    char lab[64];
    yaml_node_t *a;
    long num;
    if (!map_ok(l, v, what, AKEYS)) return false;
    if ((a = get(l, v, "full"))) {
        if (get(l, v, "host") || get(l, v, "port")) return fail(l, v, "%s: full goes alone", what);
        char *full = NULL;
        snprintf(lab, sizeof lab, "%s.full", what);
        if (!str(l, a, lab, &full)) return false;
        char *colon = strrchr(full, ':');
        if (colon && !strchr(colon, ']')) {
            char *end = NULL;
            long p = strtol(colon + 1, &end, 10);
            if (!*(colon + 1) || *end || p < 1 || p > 65535) {
                free(full);
                return fail(l, a, "%s: expected HOST or HOST:PORT", lab);
            }
            *port = (unsigned)p;
            *colon = '\0';
        }
        *host = full;
        *full_authority = true;
    } else {
        snprintf(lab, sizeof lab, "%s.host", what);
        if ((a = get(l, v, "host")) && !str(l, a, lab, host)) return false;
        snprintf(lab, sizeof lab, "%s.port", what);
        if ((a = get(l, v, "port"))) {
            if (!integer(l, a, lab, 1, 65535, &num)) return false;
            *port = (unsigned)num;
        }
        if (!*host && !*port) return fail(l, v, "%s: give full, or host and/or port", what);
    }
    if (*host && !host_name_ok(*host) && strspn(*host, "0123456789.") != strlen(*host))
        return fail(l, v, "%s: '%s' is not a host name", what, *host);
    return true;
}

static bool parse_redirect(loader *l, const yaml_node_t *n, gw_route *rt)
{
    static const char *const KEYS[] = {"scheme", "authority", "path", "status", NULL};
    static const char *const PKEYS[] = {"full", "prefix", NULL};
    if (!map_ok(l, n, "requestRedirect", KEYS)) return false;
    gw_redirect *rd = rt->redirect = xcalloc(1, sizeof *rd);
    rd->status = 302;
    yaml_node_t *v, *a, *b;
    long num;
    if ((v = get(l, n, "scheme"))) {
        if (!str(l, v, "requestRedirect.scheme", &rd->scheme)) return false;
        if (strcmp(rd->scheme, "http") && strcmp(rd->scheme, "https"))
            return fail(l, v, "requestRedirect.scheme: expected http or https");
    }
    if ((v = get(l, n, "authority")) &&
        !parse_authority(l, v, "requestRedirect.authority", &rd->host, &rd->port, &rd->full_authority))
        return false;
    if ((v = get(l, n, "path"))) {
        if (!map_ok(l, v, "requestRedirect.path", PKEYS)) return false;
        a = get(l, v, "full");
        b = get(l, v, "prefix");
        if (!a == !b) return fail(l, v, "requestRedirect.path: give exactly one of full and prefix");
        if (!url_path(l, a ? a : b, "requestRedirect.path", a ? &rd->path_full : &rd->path_prefix)) return false;
    }
    if ((v = get(l, n, "status"))) {
        if (!integer(l, v, "requestRedirect.status", 301, 308, &num) || num == 304 || num == 305 || num == 306)
            return fail(l, v, "requestRedirect.status: expected 301, 302, 303, 307 or 308");
        rd->status = (int)num;
    }
    return true;
}

static void free_redirect(gw_redirect *rd)
{
    if (!rd) return;
    free(rd->scheme);
    free(rd->host);
    free(rd->path_full);
    free(rd->path_prefix);
    free(rd);
}

static bool parse_policies(loader *l, const yaml_node_t *n, gw_route *rt)
{
    static const char *const KEYS[] = {"jwtAuth", "authorization", "mcpAuthorization", "cors", "timeout",
                                       "localRateLimit", "backendAuth", "claimsToHeaders",
                                       "requestHeaderModifier", "responseHeaderModifier", "urlRewrite",
                                       "directResponse", "requestRedirect", "retry", NULL};
    static const char *const TIMEOUT_KEYS[] = {"requestTimeout", NULL};
    static const char *const RETRY_KEYS[] = {"attempts", "backoff", "codes", NULL};
    static const char *const AUTH_KEYS[] = {"passthrough", "key", NULL};
    if (!map_ok(l, n, "policies", KEYS)) return false;
    yaml_node_t *v;
    if ((v = get(l, n, "jwtAuth")) && !parse_jwt(l, v, rt)) return false;
    if ((v = get(l, n, "authorization")) && !parse_rules(l, v, "authorization", &rt->authz)) return false;
    if ((v = get(l, n, "mcpAuthorization")) && !parse_rules(l, v, "mcpAuthorization", &rt->mcp_authz)) return false;
    if ((v = get(l, n, "cors")) && !parse_cors(l, v, rt)) return false;
    if ((v = get(l, n, "localRateLimit")) && !parse_limits(l, v, rt)) return false;
    if ((v = get(l, n, "timeout"))) {
        int64_t ms = 0;
        yaml_node_t *t;
        if (!map_ok(l, v, "timeout", TIMEOUT_KEYS)) return false;
        if (!(t = get(l, v, "requestTimeout"))) return fail(l, v, "timeout: requestTimeout is required");
        if (!duration(l, t, "timeout.requestTimeout", &ms)) return false;
        rt->timeout_ms = (long)ms;
    }
    if ((v = get(l, n, "retry"))) { /* agentgateway's: {attempts: 1-255 (1), backoff, codes} */
        yaml_node_t *a, *c;
        long num = 1;
        int64_t ms = 0;
        if (!map_ok(l, v, "retry", RETRY_KEYS)) return false;
        if ((a = get(l, v, "attempts")) && !integer(l, a, "retry.attempts", 1, 255, &num)) return false;
        if ((a = get(l, v, "backoff")) && !duration(l, a, "retry.backoff", &ms)) return false;
        if (!(c = get(l, v, "codes"))) return fail(l, v, "retry: codes is required");
        if (!seq_ok(l, c, "retry.codes") || !seq_len(c)) return fail(l, c, "retry.codes: expected a list of statuses");
        rt->retry_attempts = (unsigned)num;
        rt->retry_backoff_ms = (long)ms;
        rt->retry_codes = xcalloc(seq_len(c), sizeof *rt->retry_codes);
        ITEMS(c, it) {
            long code;
            if (!integer(l, node_at(l, *it), "retry.codes", 100, 599, &code)) return false;
            rt->retry_codes[rt->n_retry_codes++] = (int)code;
        }
    }
    if ((v = get(l, n, "backendAuth"))) {
        yaml_node_t *pt, *key;
        if (!map_ok(l, v, "backendAuth", AUTH_KEYS)) return false;
        pt = get(l, v, "passthrough");
        key = get(l, v, "key");
        if (!pt == !key) return fail(l, v, "backendAuth: give exactly one of passthrough: {} and key");
        if (pt) {
            if (pt->type != YAML_MAPPING_NODE && !(scalar(pt) && !*scalar(pt)))
                return fail(l, pt, "backendAuth.passthrough: expected {}");
            rt->passthrough = true;
        } else {
            /* "$NAME": the key comes from the environment, so the file holds no secret. */
            if (!str(l, key, "backendAuth.key", &rt->backend_key)) return false;
            if (rt->backend_key[0] == '$') {
                const char *e = getenv(rt->backend_key + 1);
                if (!e || !*e) return fail(l, key, "backendAuth.key: environment variable %s is not set",
                                           rt->backend_key + 1);
                free(rt->backend_key);
                rt->backend_key = xstrdup(e);
            }
        }
    }
    if ((v = get(l, n, "requestHeaderModifier")) &&
        !parse_header_mod(l, v, "requestHeaderModifier", false, &rt->req_mod))
        return false;
    if ((v = get(l, n, "responseHeaderModifier")) &&
        !parse_header_mod(l, v, "responseHeaderModifier", true, &rt->resp_mod))
        return false;
    if ((v = get(l, n, "urlRewrite")) && !parse_rewrite(l, v, rt)) return false;
    if ((v = get(l, n, "requestRedirect")) && !parse_redirect(l, v, rt)) return false;
    if ((v = get(l, n, "directResponse"))) {
        static const char *const DKEYS[] = {"body", "status", NULL};
        yaml_node_t *b, *st;
        long status = 200;
        if (!map_ok(l, v, "directResponse", DKEYS)) return false;
        if ((st = get(l, v, "status")) && !integer(l, st, "directResponse.status", 200, 599, &status)) return false;
        if ((b = get(l, v, "body")) && !str(l, b, "directResponse.body", &rt->direct_body)) return false;
        rt->direct = true;
        rt->direct_status = (int)status;
    }
    if ((v = get(l, n, "claimsToHeaders"))) {
        if (v->type != YAML_MAPPING_NODE) return fail(l, v, "claimsToHeaders: expected a mapping header: claim");
        size_t cap = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
        rt->claim_headers = xcalloc(cap + 1, sizeof *rt->claim_headers);
        PAIRS(v) {
            gw_claim_header *ch = &rt->claim_headers[rt->n_claim_headers++];
            yaml_node_t *kn = node_at(l, p->key);
            if (!str(l, kn, "claimsToHeaders", &ch->header)) return false;
            if (!header_name_ok(ch->header)) return fail(l, kn, "claimsToHeaders: '%s' is not a header name", ch->header);
            if (!str(l, node_at(l, p->value), "claimsToHeaders", &ch->claim)) return false;
        }
    }
    return true;
}

/* ---- matches and backends -------------------------------------------------------------------- */

/* pat in POSIX extended syntax, ^( )$ around it. agentgateway's patterns are Rust's, whose
 * common forms are POSIX's too, but for the escapes inside brackets ([\.] is a dot there, a
 * backslash or a dot in POSIX) and \d, which glibc knows only as a 'd' (its \w and \s are
 * Rust's): \d and \D become [0-9] and [^0-9], and a backslash in brackets escapes the next
 * character (\d there: 0-9). What POSIX lacks and Rust has besides ((?i), \p{..}, lazy
 * repeats) is refused by regcomp, or means the same in a whole-value match. */
static char *posix_pattern(const char *pat)
{
    size_t n = strlen(pat);
    char *out = xmalloc(6 * n + 5), *o = out;
    bool in_br = false;
    *o++ = '^', *o++ = '(';
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        if (!in_br && c == '\\' && i + 1 < n && (pat[i + 1] == 'd' || pat[i + 1] == 'D')) {
            o += sprintf(o, pat[++i] == 'd' ? "[0-9]" : "[^0-9]");
        } else if (!in_br && c == '\\' && i + 1 < n) {
            *o++ = c, *o++ = pat[++i];
        } else if (!in_br && c == '[') {
            in_br = true;
            *o++ = c;
            if (pat[i + 1] == '^') *o++ = pat[++i];
            if (pat[i + 1] == ']') *o++ = pat[++i]; /* a leading ] is one of the set */
        } else if (in_br && c == '\\' && i + 1 < n) {
            if (pat[++i] == 'd') o += sprintf(o, "0-9");
            else *o++ = pat[i];
        } else if (in_br && c == '[' && strchr(":.=", pat[i + 1])) { /* [:alpha:] and kin */
            const char *end = strstr(pat + i + 2, (char[]){pat[i + 1], ']', 0});
            size_t k = end ? (size_t)(end + 2 - (pat + i)) : 1;
            memcpy(o, pat + i, k);
            o += k, i += k - 1;
        } else {
            if (in_br && c == ']') in_br = false;
            *o++ = c;
        }
    }
    *o++ = ')', *o++ = '$', *o = '\0';
    return out;
}

/* A regular expression the whole of a value must match (posix_pattern). */
static bool parse_regex(loader *l, const yaml_node_t *n, const char *what, regex_t **out)
{
    char *pat = NULL;
    if (!str(l, n, what, &pat)) return false;
    char *anchored = posix_pattern(pat);
    regex_t *re = xmalloc(sizeof *re);
    int rc = regcomp(re, anchored, REG_EXTENDED | REG_NOSUB);
    free(anchored);
    if (rc != 0) {
        char why[160];
        regerror(rc, re, why, sizeof why);
        free(re);
        bool r = fail(l, n, "%s: '%s' is not a regular expression: %s", what, pat, why);
        free(pat);
        return r;
    }
    free(pat);
    *out = re;
    return true;
}

/* matches.headers or matches.query: [{name, value: V | {exact: V} | {regex: R}}]. */
static bool parse_value_matches(loader *l, const yaml_node_t *v, const char *what, gw_value_match **out, size_t *n)
{
    static const char *const KEYS[] = {"name", "value", NULL};
    static const char *const VAL_KEYS[] = {"exact", "regex", NULL};
    char lab[64];
    if (!seq_ok(l, v, what)) return false;
    *out = xcalloc(seq_len(v) + 1, sizeof **out);
    ITEMS(v, it) {
        yaml_node_t *h = node_at(l, *it), *val;
        gw_value_match *vm = &(*out)[(*n)++];
        if (!map_ok(l, h, what, KEYS)) return false;
        snprintf(lab, sizeof lab, "%s.name", what);
        if (!str(l, get(l, h, "name"), lab, &vm->name)) return false;
        val = get(l, h, "value");
        if (val && val->type == YAML_MAPPING_NODE) {
            snprintf(lab, sizeof lab, "%s.value", what);
            if (!map_ok(l, val, lab, VAL_KEYS)) return false;
            yaml_node_t *e = get(l, val, "exact"), *re = get(l, val, "regex");
            if (!e == !re) return fail(l, val, "%s: give exactly one of exact and regex", lab);
            if (re) {
                snprintf(lab, sizeof lab, "%s.value.regex", what);
                if (!parse_regex(l, re, lab, &vm->re)) return false;
                continue;
            }
            val = e;
        }
        snprintf(lab, sizeof lab, "%s.value (exact)", what);
        if (!str(l, val, lab, &vm->value)) return false;
    }
    return true;
}

static void free_value_matches(gw_value_match *m, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        free(m[k].name);
        free(m[k].value);
        if (m[k].re) regfree(m[k].re);
        free(m[k].re);
    }
    free(m);
}

bool gw_value_matches(const gw_value_match *m, const char *s)
{
    if (!s) return false;
    return m->re ? regexec(m->re, s, 0, NULL, 0) == 0 : strcmp(s, m->value) == 0;
}

static bool parse_match(loader *l, const yaml_node_t *n, gw_match *m)
{
    static const char *const KEYS[] = {"path", "method", "headers", "query", NULL};
    static const char *const PATH_KEYS[] = {"exact", "pathPrefix", "regex", NULL};
    if (!map_ok(l, n, "matches", KEYS)) return false;
    yaml_node_t *v;
    m->path_kind = GW_PATH_PREFIX;
    if ((v = get(l, n, "path"))) {
        if (!map_ok(l, v, "matches.path", PATH_KEYS)) return false;
        yaml_node_t *e = get(l, v, "exact"), *pre = get(l, v, "pathPrefix"), *re = get(l, v, "regex");
        if (!!e + !!pre + !!re != 1) return fail(l, v, "matches.path: give exactly one of exact, pathPrefix and regex");
        m->path_kind = e ? GW_PATH_EXACT : pre ? GW_PATH_PREFIX : GW_PATH_REGEX;
        if (!str(l, e ? e : pre ? pre : re, "matches.path", &m->path)) return false;
        if (re) {
            if (!parse_regex(l, re, "matches.path.regex", &m->path_re)) return false;
        } else if (m->path[0] != '/') {
            return fail(l, e ? e : pre, "matches.path: must start with '/'");
        }
    } else {
        m->path = xstrdup("/");
    }
    if ((v = get(l, n, "method")) && !str(l, v, "matches.method", &m->method)) return false;
    if ((v = get(l, n, "headers")) && !parse_value_matches(l, v, "matches.headers", &m->headers, &m->n_headers))
        return false;
    if ((v = get(l, n, "query")) && !parse_value_matches(l, v, "matches.query", &m->query, &m->n_query))
        return false;
    return true;
}

/* "host:port", "http://..." or "https://...": a base URL without a trailing '/'. */
static bool base_url(loader *l, const yaml_node_t *n, const char *what, char **out)
{
    char *s = NULL;
    if (!str(l, n, what, &s)) return false;
    if (util_str_starts_with(s, "http://") || util_str_starts_with(s, "https://")) {
        *out = s;
    } else if (strchr(s, '/') || !strchr(s, ':')) {
        free(s);
        return fail(l, n, "%s: expected host:port or an http(s):// URL", what);
    } else {
        /* agentgateway's hostOverride "name:443" means TLS. */
        *out = util_str_ends_with(s, ":443") ? xasprintf("https://%.*s", (int)strlen(s) - 4, s)
                                            : xasprintf("http://%s", s);
        free(s);
    }
    size_t len = strlen(*out);
    while (len && (*out)[len - 1] == '/') (*out)[--len] = '\0';
    return true;
}

static bool parse_ai(loader *l, const yaml_node_t *n, gw_backend *b)
{
    static const char *const KEYS[] = {"name", "provider", "hostOverride", "host", "pathOverride", "path", NULL};
    static const char *const PROVIDERS[] = {"openAI", "ollama", NULL};
    static const char *const PKEYS[] = {"model", NULL};
    if (!map_ok(l, n, "ai", KEYS)) return false;
    b->kind = GW_BACKEND_AI;
    yaml_node_t *v, *prov = get(l, n, "provider");
    if ((v = get(l, n, "name")) && !str(l, v, "ai.name", &b->ai_name)) return false;
    if (!prov) return fail(l, n, "ai: provider is required ({openAI: {model}} or {ollama: {model}})");
    if (!map_ok(l, prov, "ai.provider", PROVIDERS)) return false;
    if (prov->data.mapping.pairs.top - prov->data.mapping.pairs.start != 1)
        return fail(l, prov, "ai.provider: give exactly one provider");
    const char *pname = scalar(node_at(l, prov->data.mapping.pairs.start->key));
    yaml_node_t *pv = node_at(l, prov->data.mapping.pairs.start->value);
    b->provider = !strcmp(pname, "openAI") ? GW_AI_OPENAI : GW_AI_OLLAMA;
    if (pv->type == YAML_MAPPING_NODE) {
        if (!map_ok(l, pv, "ai.provider", PKEYS)) return false;
        if ((v = get(l, pv, "model")) && !str(l, v, "ai.provider.model", &b->model)) return false;
    } else if (!(scalar(pv) && !*scalar(pv))) {
        return fail(l, pv, "ai.provider.%s: expected {model: ...} or {}", pname);
    }
    yaml_node_t *h = get(l, n, "hostOverride"), *h2 = get(l, n, "host");
    if (h && h2) return fail(l, h2, "ai: give hostOverride or host, not both");
    if (h || h2) {
        if (!base_url(l, h ? h : h2, "ai.hostOverride", &b->base_url)) return false;
    } else {
        b->base_url = xstrdup(b->provider == GW_AI_OPENAI ? "https://api.openai.com" : "http://127.0.0.1:11434");
    }
    yaml_node_t *po = get(l, n, "pathOverride"), *po2 = get(l, n, "path");
    if (po && po2) return fail(l, po2, "ai: give pathOverride or path, not both");
    if (po || po2) {
        if (!str(l, po ? po : po2, "ai.pathOverride", &b->chat_path)) return false;
        if (b->chat_path[0] != '/') return fail(l, po ? po : po2, "ai.pathOverride: must start with '/'");
    } else {
        /* Ollama serves the OpenAI chat API too: clients speak one format to either. */
        b->chat_path = xstrdup("/v1/chat/completions");
    }
    return true;
}

static bool parse_identity(loader *l, const yaml_node_t *n, mcp_target *t)
{
    static const char *const KEYS[] = {"sidecar", NULL};
    static const char *const SC_KEYS[] = {"url", "api", "obo", "agentIdentity", NULL};
    const char *s = scalar(n);
    if (s) {
        if (!strcmp(s, "passthrough")) t->identity = MCP_IDENTITY_PASSTHROUGH;
        else if (!strcmp(s, "none")) t->identity = MCP_IDENTITY_NONE;
        else return fail(l, n, "identity: expected none, passthrough or {sidecar: {...}}");
        return true;
    }
    if (!map_ok(l, n, "identity", KEYS)) return false;
    yaml_node_t *sc = get(l, n, "sidecar"), *v;
    if (!map_ok(l, sc, "identity.sidecar", SC_KEYS)) return false;
    char *url = NULL, *api = NULL, *agent = NULL;
    bool obo = false;
    if (!(v = get(l, sc, "url")) || !str(l, v, "identity.sidecar.url", &url) ||
        !(v = get(l, sc, "api")) || !str(l, v, "identity.sidecar.api", &api) ||
        ((v = get(l, sc, "obo")) && !boolean(l, v, "identity.sidecar.obo", &obo)) ||
        ((v = get(l, sc, "agentIdentity")) && !str(l, v, "identity.sidecar.agentIdentity", &agent))) {
        if (!url || !api) fail(l, sc, "identity.sidecar: url and api are required");
        free(url), free(api), free(agent);
        return false;
    }
    t->identity = obo ? MCP_IDENTITY_SIDECAR_OBO : MCP_IDENTITY_SIDECAR_APP;
    t->sidecar_url = url;
    t->sidecar_api = api;
    t->agent_identity = agent;
    return true;
}

static bool parse_target(loader *l, const yaml_node_t *n, mcp_target *t)
{
    static const char *const KEYS[] = {"name", "mcp", "sse", "stdio", "identity", NULL};
    static const char *const MCP_KEYS[] = {"host", "port", "path", "url", NULL};
    static const char *const STDIO_KEYS[] = {"cmd", "args", "env", NULL};
    if (!map_ok(l, n, "mcp.targets", KEYS)) return false;
    char *name = NULL;
    if (!str(l, get(l, n, "name"), "mcp.targets.name", &name)) return false;
    t->name = name;
    yaml_node_t *m = get(l, n, "mcp"), *sse = get(l, n, "sse"), *sio = get(l, n, "stdio"), *v;
    if (!!m + !!sse + !!sio != 1)
        return fail(l, n, "mcp.targets: target %s needs exactly one of mcp, sse and stdio", name);
    if (m || sse) { /* Streamable HTTP, or the legacy HTTP+SSE transport: the same settings */
        const char *kind = m ? "mcp" : "sse";
        char what[40];
        t->sse = !m;
        m = m ? m : sse;
        snprintf(what, sizeof what, "mcp.targets.%s", kind);
        if (!map_ok(l, m, what, MCP_KEYS)) return false;
        char *host = NULL, *path = NULL, *url = NULL;
        long port = 0;
        bool ok = true;
        char lab[64];
#define LABEL(field) (snprintf(lab, sizeof lab, "%s.%s", what, field), lab)
        if ((v = get(l, m, "url"))) ok = str(l, v, LABEL("url"), &url);
        else if (!(v = get(l, m, "host"))) ok = fail(l, m, "%s: host or url is required", what);
        else ok = str(l, v, LABEL("host"), &host);
        if (ok && (v = get(l, m, "port"))) ok = integer(l, v, LABEL("port"), 1, 65535, &port);
        if (ok && (v = get(l, m, "path"))) ok = str(l, v, LABEL("path"), &path);
#undef LABEL
        if (ok && host) {
            /* "http://h:p/mcp" as is; agentgateway's {host, port, path} otherwise. */
            if (util_str_starts_with(host, "http://") || util_str_starts_with(host, "https://"))
                url = xstrdup(host);
            else
                url = port ? xasprintf("%s://%s:%ld%s", port == 443 ? "https" : "http", host, port,
                                       path ? path : t->sse ? "/sse" : "/mcp")
                           : xasprintf("http://%s%s", host, path ? path : "");
        }
        if (ok && !util_str_starts_with(url, "http://") && !util_str_starts_with(url, "https://"))
            ok = fail(l, m, "%s: the server's URL must be http:// or https://", what);
        free(host);
        free(path);
        t->url = url;
        if (!ok) return false;
    } else {
        if (!map_ok(l, sio, "mcp.targets.stdio", STDIO_KEYS)) return false;
        char **args = NULL;
        yaml_node_t *cmd = get(l, sio, "cmd");
        if (!scalar(cmd) || !*scalar(cmd)) return fail(l, sio, "mcp.targets.stdio: cmd is required");
        if ((v = get(l, sio, "args")) && !str_list(l, v, "mcp.targets.stdio.args", &args)) {
            list_free(args);
            return false;
        }
        size_t na = 0;
        while (args && args[na]) na++;
        char **argv = xcalloc(na + 2, sizeof *argv);
        argv[0] = xstrdup(scalar(cmd));
        for (size_t i = 0; i < na; i++) argv[i + 1] = args[i];
        free(args);
        t->cmd = (const char *const *)argv;
        if ((v = get(l, sio, "env"))) {
            if (v->type != YAML_MAPPING_NODE) return fail(l, v, "mcp.targets.stdio.env: expected a mapping");
            size_t cap = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
            char **env = xcalloc(cap + 1, sizeof *env);
            size_t i = 0;
            t->env = (const char *const *)env;
            PAIRS(v) {
                const char *k = scalar(node_at(l, p->key)), *val = scalar(node_at(l, p->value));
                if (!k || !*k || !val || strchr(k, '='))
                    return fail(l, node_at(l, p->key), "mcp.targets.stdio.env: expected NAME: value");
                env[i++] = xasprintf("%s=%s", k, val);
            }
        }
    }
    if ((v = get(l, n, "identity")) && !parse_identity(l, v, t)) return false;
    return true;
}

static bool parse_mcp(loader *l, const yaml_node_t *n, gw_route *rt)
{
    static const char *const KEYS[] = {"targets", NULL};
    gw_backend *b = &rt->backend;
    if (!map_ok(l, n, "mcp", KEYS)) return false;
    b->kind = GW_BACKEND_MCP;
    yaml_node_t *ts = get(l, n, "targets");
    if (!seq_ok(l, ts, "mcp.targets")) return false;
    if (!seq_len(ts)) return fail(l, ts, "mcp.targets: at least one target is required");
    b->targets = xcalloc(seq_len(ts), sizeof *b->targets);
    ITEMS(ts, it) {
        yaml_node_t *tn = node_at(l, *it);
        if (!parse_target(l, tn, &b->targets[b->n_targets++])) return false;
        for (size_t i = 0; i + 1 < b->n_targets; i++)
            if (!strcmp(b->targets[i].name, b->targets[b->n_targets - 1].name))
                return fail(l, tn, "mcp.targets: two targets are named %s", b->targets[i].name);
    }
    return true;
}

/* One host or url backend of several: its base URL and weight (default 1). */
static bool parse_weighted(loader *l, const yaml_node_t *b, char **url, unsigned *weight)
{
    yaml_node_t *v = get(l, b, "host"), *w = get(l, b, "weight");
    long num = 1;
    if (!v && !get(l, b, "url")) return fail(l, b, "backends: several backends must all be host or url ones (ai and mcp go alone)");
    if (w && !integer(l, w, "backends.weight", 0, 1000000, &num)) return false;
    *weight = (unsigned)num;
    return base_url(l, v ? v : get(l, b, "url"), v ? "backends.host" : "backends.url", url);
}

static bool parse_backend(loader *l, const yaml_node_t *n, gw_route *rt)
{
    static const char *const KEYS[] = {"host", "url", "ai", "mcp", "weight", NULL};
    if (!seq_ok(l, n, "backends")) return false;
    size_t nb = seq_len(n);
    if (!nb) return fail(l, n, "backends: at least one backend is required");
    if (nb > GW_MAX_BACKENDS) return fail(l, n, "backends: at most %d", GW_MAX_BACKENDS);
    gw_backend *bk = &rt->backend;
    ITEMS(n, it) {
        yaml_node_t *b = node_at(l, *it);
        if (!map_ok(l, b, "backends", KEYS)) return false;
        int kinds = !!get(l, b, "host") + !!get(l, b, "url") + !!get(l, b, "ai") + !!get(l, b, "mcp");
        if (kinds != 1) return fail(l, b, "backends: give exactly one of host, url, ai and mcp");
    }
    yaml_node_t *b = node_at(l, n->data.sequence.items.start[0]), *v;
    if (nb == 1 && (v = get(l, b, "ai"))) return parse_ai(l, v, bk);
    if (nb == 1 && (v = get(l, b, "mcp"))) return parse_mcp(l, v, rt);
    bk->kind = GW_BACKEND_HOST;
    if (nb == 1) {
        v = get(l, b, "host");
        return base_url(l, v ? v : get(l, b, "url"), v ? "backends.host" : "backends.url", &bk->base_url);
    }
    bk->urls = xcalloc(nb, sizeof *bk->urls);
    bk->weights = xcalloc(nb, sizeof *bk->weights);
    bk->down_until = xcalloc(nb, sizeof *bk->down_until);
    for (size_t i = 0; i < nb; i++) atomic_init(&bk->down_until[i], 0);
    ITEMS(n, it) {
        size_t i = bk->n_urls++;
        if (!parse_weighted(l, node_at(l, *it), &bk->urls[i], &bk->weights[i])) return false;
        if (!bk->base_url && bk->weights[i]) bk->base_url = xstrdup(bk->urls[i]);
    }
    if (!bk->base_url) return fail(l, n, "backends: their weights add up to 0"); /* none has one */
    return true;
}

/* ---- MCP multiplexers, kept across reloads ----------------------------------------------------- */

typedef struct {
    char *s;
    size_t len, cap;
} sbuf;

static void sb_add(sbuf *b, const char *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->len, data, n);
    b->len += n;
    b->s[b->len] = '\0';
}

/* A node as unambiguous text: scalars length-prefixed, mappings {k v ...}, lists [...]. */
static void fingerprint(loader *l, const yaml_node_t *n, sbuf *b, int depth)
{
    char hdr[32];
    if (!n || depth > 32) {
        sb_add(b, "~", 1);
    } else if (n->type == YAML_SCALAR_NODE) {
        snprintf(hdr, sizeof hdr, "%zu:", n->data.scalar.length);
        sb_add(b, hdr, strlen(hdr));
        sb_add(b, (const char *)n->data.scalar.value, n->data.scalar.length);
    } else if (n->type == YAML_SEQUENCE_NODE) {
        sb_add(b, "[", 1);
        ITEMS(n, it) fingerprint(l, node_at(l, *it), b, depth + 1);
        sb_add(b, "]", 1);
    } else {
        sb_add(b, "{", 1);
        PAIRS(n) {
            fingerprint(l, node_at(l, p->key), b, depth + 1);
            fingerprint(l, node_at(l, p->value), b, depth + 1);
        }
        sb_add(b, "}", 1);
    }
}

static void mcp_unref(gw_mcp *m)
{
    if (!m || atomic_fetch_sub(&m->refs, 1) != 1) return;
    mcp_mux_free(m->mux); /* before the rules it borrows */
    cel_rules_free(m->authz);
    free(m->fingerprint);
    free(m);
}

/* The route's multiplexer: the previous config's if nothing it depends on changed (its
 * sessions live on), else a new one. */
static bool mcp_backend(loader *l, const yaml_node_t *n, gw_route *rt)
{
    yaml_node_t *pol = get(l, n, "policies");
    sbuf fp = {0};
    char hdr[64];
    snprintf(hdr, sizeof hdr, "bind %zu route ", l->bind);
    sb_add(&fp, hdr, strlen(hdr));
    sb_add(&fp, rt->name, strlen(rt->name));
    fingerprint(l, get(l, n, "backends"), &fp, 0);
    fingerprint(l, get(l, pol, "mcpAuthorization"), &fp, 0);
    fingerprint(l, get(l, pol, "timeout"), &fp, 0);
    snprintf(hdr, sizeof hdr, " ttl %d", l->mcp_session_ttl_s); /* config.mcp.sessionTtl */
    sb_add(&fp, hdr, strlen(hdr));

    for (size_t b = 0; l->prev && b < l->prev->n_binds; b++)
        for (size_t i = 0; i < l->prev->binds[b].n_routes; i++) {
            gw_mcp *old = l->prev->binds[b].routes[i].backend.mcp;
            if (old && !strcmp(old->fingerprint, fp.s)) {
                atomic_fetch_add(&old->refs, 1);
                rt->backend.mcp = old;
                free(fp.s);
                return true;
            }
        }

    gw_mcp *m = xcalloc(1, sizeof *m);
    atomic_init(&m->refs, 1);
    m->fingerprint = fp.s;
    m->authz = rt->mcp_authz;
    rt->mcp_authz = NULL;
    rt->backend.mcp = m;
    mcp_config mc = {.targets = rt->backend.targets, .n_targets = rt->backend.n_targets,
                     .authz = m->authz, .timeout_ms = rt->timeout_ms, .session_ttl_s = l->mcp_session_ttl_s};
    char err[256];
    if (!(m->mux = mcp_mux_new(&mc, err, sizeof err)))
        return fail(l, get(l, n, "backends"), "route %s: mcp: %s", rt->name, err);
    return true;
}

/* ---- routes, listeners, binds ------------------------------------------------------------------ */

static bool parse_route(loader *l, const yaml_node_t *n, gw_route *rt, size_t index)
{
    static const char *const KEYS[] = {"name", "hostnames", "matches", "backends", "policies", "resourceMetadata", NULL};
    static const char *const META_KEYS[] = {"resource", "scopesSupported", NULL};
    if (!map_ok(l, n, "routes", KEYS)) return false;
    rt->line = line_of(n);
    yaml_node_t *v;
    if ((v = get(l, n, "name"))) {
        if (!str(l, v, "routes.name", &rt->name)) return false;
    } else {
        rt->name = xasprintf("route%zu", index);
    }
    if ((v = get(l, n, "hostnames"))) {
        if (!str_list(l, v, "hostnames", &rt->hostnames)) return false;
        for (char **h = rt->hostnames; *h; h++)
            if (!host_name_ok(*h)) return fail(l, v, "hostnames: '%s' is not a host name (a leading '*.' is the only wildcard)", *h);
    }
    if ((v = get(l, n, "matches"))) {
        if (!seq_ok(l, v, "matches")) return false;
        rt->matches = xcalloc(seq_len(v) + 1, sizeof *rt->matches);
        ITEMS(v, it) if (!parse_match(l, node_at(l, *it), &rt->matches[rt->n_matches++])) return false;
    }
    if (!rt->n_matches) { /* agentgateway: no matches = pathPrefix "/" */
        rt->matches = xcalloc(1, sizeof *rt->matches);
        rt->matches[0].path = xstrdup("/");
        rt->n_matches = 1;
    }
    yaml_node_t *backends = get(l, n, "backends");
    if ((v = get(l, n, "policies")) && !parse_policies(l, v, rt)) return false;
    if (rt->direct && rt->redirect) return fail(l, n, "route %s: directResponse or requestRedirect, not both", rt->name);
    if (rt->redirect) rt->direct = true; /* answered by the gateway as well (the checks below) */
    if (rt->direct) { /* answered by the gateway: nothing goes upstream */
        if (backends) return fail(l, backends, "route %s: %s answers itself: no backends", rt->name,
                                  rt->redirect ? "requestRedirect" : "directResponse");
        if (rt->req_mod || rt->resp_mod || rt->rewrite_prefix || rt->rewrite_full || rt->rewrite_host ||
            rt->rewrite_port || rt->retry_attempts || rt->backend_key ||
            rt->passthrough || rt->n_claim_headers || rt->timeout_ms)
            return fail(l, n, "route %s: %s goes with no upstream policy (header modifiers, "
                        "urlRewrite, retry, backendAuth, claimsToHeaders, timeout)", rt->name,
                        rt->redirect ? "requestRedirect" : "directResponse");
    } else {
        if (!backends) return fail(l, n, "route %s: backends is required", rt->name);
        if (!parse_backend(l, backends, rt)) return false;
    }
    if ((v = get(l, n, "resourceMetadata"))) {
        yaml_node_t *m;
        if (!map_ok(l, v, "resourceMetadata", META_KEYS)) return false;
        if ((m = get(l, v, "resource"))) {
            if (!str(l, m, "resourceMetadata.resource", &rt->meta.resource)) return false;
            if (!util_str_starts_with(rt->meta.resource, "http://") &&
                !util_str_starts_with(rt->meta.resource, "https://"))
                return fail(l, m, "resourceMetadata.resource: expected an http(s):// URL");
        }
        if ((m = get(l, v, "scopesSupported")) &&
            !str_list(l, m, "resourceMetadata.scopesSupported", &rt->meta.scopes_supported))
            return false;
    }

    if ((rt->req_mod || rt->resp_mod) && rt->backend.kind == GW_BACKEND_MCP)
        return fail(l, n, "route %s: header modifiers need a host or ai backend (MCP answers are the gateway's own)", rt->name);
    if ((rt->rewrite_prefix || rt->rewrite_full || rt->rewrite_host || rt->rewrite_port) &&
        rt->backend.kind != GW_BACKEND_HOST)
        return fail(l, n, "route %s: urlRewrite needs a host backend (ai backends have their own paths)", rt->name);
    if (rt->retry_attempts && rt->backend.kind == GW_BACKEND_MCP)
        return fail(l, n, "route %s: retry needs a host or ai backend", rt->name);
    if (rt->mcp_authz && rt->backend.kind != GW_BACKEND_MCP)
        return fail(l, n, "route %s: mcpAuthorization needs an mcp backend", rt->name);
    if (rt->backend.kind == GW_BACKEND_MCP) return mcp_backend(l, n, rt);
    return true;
}

/* A listener's protocol (HTTP, the default, or HTTPS) and, for HTTPS, tls: {cert, key}: PEM files
 * read now, the key checked against the certificate. One bind is one port, and a port serves
 * one certificate (no SNI selection by hostname here), so every listener of a bind must say
 * the same: the first one's say is compared with the others'. */
static bool parse_listener_tls(loader *l, const yaml_node_t *ln, gw_bind *b, bool first)
{
    static const char *const TKEYS[] = {"cert", "key", NULL};
    yaml_node_t *v = get(l, ln, "protocol"), *t = get(l, ln, "tls");
    const char *proto = v ? scalar(v) : "HTTP";
    if (!proto || (strcmp(proto, "HTTP") && strcmp(proto, "HTTPS")))
        return fail(l, v, "listeners.protocol: expected HTTP or HTTPS (TLS, TCP and HBONE are not supported)");
    bool https = !strcmp(proto, "HTTPS");
    if (https && !t) return fail(l, ln, "listeners: protocol HTTPS needs tls: {cert: FILE, key: FILE}");
    if (!https && t) return fail(l, t, "listeners.tls: needs protocol: HTTPS");
    char *cert = NULL, *key = NULL;
    if (https) {
        yaml_node_t *c, *k;
        if (get(l, t, "root"))
            return fail(l, get(l, t, "root"), "listeners.tls.root: client certificates (mTLS) are not supported");
        if (!map_ok(l, t, "listeners.tls", TKEYS)) return false;
        if (!(c = get(l, t, "cert"))) return fail(l, t, "listeners.tls: cert is required");
        if (!(k = get(l, t, "key"))) return fail(l, t, "listeners.tls: key is required");
        if (!(cert = read_file_at(l, c, "listeners.tls.cert", TLS_MAX_BYTES))) return false;
        if (!(key = read_file_at(l, k, "listeners.tls.key", TLS_MAX_BYTES))) {
            free(cert);
            return false;
        }
        char why[128];
        if (!pki_cert_key_match(cert, key, why, sizeof why)) {
            util_free_secret(key);
            free(cert);
            return fail(l, t, "listeners.tls: %s", why);
        }
    }
    bool same = first || (!cert == !b->tls_cert_pem &&
                          (!cert || (!strcmp(cert, b->tls_cert_pem) && !strcmp(key, b->tls_key_pem))));
    if (first) {
        b->tls_cert_pem = cert;
        b->tls_key_pem = key;
    } else {
        free(cert);
        util_free_secret(key);
    }
    if (!same)
        return fail(l, ln, "listeners: every listener of one bind (port) needs the same protocol and tls");
    return true;
}

static bool parse_bind(loader *l, const yaml_node_t *n, gw_bind *b)
{
    static const char *const KEYS[] = {"port", "address", "listeners", NULL};
    static const char *const LKEYS[] = {"name", "hostname", "protocol", "tls", "routes", NULL};
    if (!map_ok(l, n, "binds", KEYS)) return false;
    yaml_node_t *v;
    long port;
    if (!(v = get(l, n, "port"))) return fail(l, n, "binds: port is required");
    if (!integer(l, v, "binds.port", 0, 65535, &port)) return false;
    b->port = (unsigned)port;
    if ((v = get(l, n, "address"))) {
        unsigned char buf[16];
        if (!str(l, v, "binds.address", &b->address)) return false;
        if (inet_pton(AF_INET, b->address, buf) != 1 && inet_pton(AF_INET6, b->address, buf) != 1)
            return fail(l, v, "binds.address: expected a numeric IP address such as 127.0.0.1");
    } else {
        b->address = xstrdup("127.0.0.1");
    }
    yaml_node_t *ls = get(l, n, "listeners");
    if (!ls) return fail(l, n, "binds: listeners is required");
    if (!seq_ok(l, ls, "listeners")) return false;
    size_t cap = 0;
    ITEMS(ls, it) {
        yaml_node_t *ln = node_at(l, *it), *rs;
        if (!map_ok(l, ln, "listeners", LKEYS)) return false;
        if (!parse_listener_tls(l, ln, b, it == ls->data.sequence.items.start)) return false;
        if (!(rs = get(l, ln, "routes"))) return fail(l, ln, "listeners: routes is required");
        if (!seq_ok(l, rs, "routes")) return false;
        cap += seq_len(rs);
        if (cap > MAX_LIST) return fail(l, rs, "routes: more than %d in one bind", MAX_LIST);
        b->routes = xrealloc(b->routes, cap * sizeof *b->routes);
        /* A listener's hostname: its routes serve that host only; theirs must fit in it. */
        yaml_node_t *hn = get(l, ln, "hostname");
        const char *lh = hn ? scalar(hn) : NULL;
        if (hn && (!lh || !host_name_ok(lh)))
            return fail(l, hn, "listeners.hostname: not a host name (a leading '*.' is the only wildcard)");
        ITEMS(rs, rit) {
            gw_route *rt = &b->routes[b->n_routes++];
            memset(rt, 0, sizeof *rt);
            if (!parse_route(l, node_at(l, *rit), rt, b->n_routes)) return false;
            if (!lh) continue;
            if (!rt->hostnames) {
                rt->hostnames = xcalloc(2, sizeof *rt->hostnames);
                rt->hostnames[0] = xstrdup(lh);
            }
            for (char **h = rt->hostnames; *h; h++)
                if (!host_within(lh, *h))
                    return fail(l, node_at(l, *rit), "route %s: hostname %s is outside its listener's %s", rt->name, *h, lh);
        }
    }
    return true;
}

/* config.statsAddr and readinessAddr: "ADDR:PORT", "[V6]:PORT" or a port alone (127.0.0.1), the
 * address numeric and loopback unless config.allowNonLoopback; *out as http_server listens. */
static bool parse_addr(loader *l, yaml_node_t *n, const char *what, bool allow_non_loopback, char **out)
{
    char *v = NULL, host[64] = "127.0.0.1";
    if (!str(l, n, what, &v)) return false;
    const char *port = v, *colon = strrchr(v, ':');
    bool ok = true;
    if (colon) {
        const char *h = v, *he = colon;
        if (*h == '[' && he > h && he[-1] == ']') h++, he--;
        ok = he > h && (size_t)(he - h) < sizeof host;
        if (ok) snprintf(host, sizeof host, "%.*s", (int)(he - h), h);
        port = colon + 1;
    }
    unsigned char buf[16];
    bool v6 = ok && inet_pton(AF_INET6, host, buf) == 1;
    ok = ok && (v6 || inet_pton(AF_INET, host, buf) == 1) && *port && strlen(port) <= 5 &&
         strspn(port, "0123456789") == strlen(port) && atol(port) <= 65535;
    if (!ok) {
        free(v);
        return fail(l, n, "%s: expected ADDRESS:PORT with a numeric address, such as 127.0.0.1:15020", what);
    }
    if (!gw_is_loopback(host) && !allow_non_loopback) {
        free(v);
        return fail(l, n, "%s %s is not a loopback address: set config.allowNonLoopback: true to listen on it", what, host);
    }
    *out = xasprintf(v6 ? "[%s]:%s" : "%s:%s", host, port);
    free(v);
    return true;
}

static bool parse_top(loader *l, gw_config *c)
{
    static const char *const KEYS[] = {"config", "binds", NULL};
    static const char *const CKEYS[] = {"allowNonLoopback", "statsAddr", "readinessAddr", "mcp", NULL};
    static const char *const MKEYS[] = {"sessionTtl", NULL};
    yaml_node_t *root = yaml_document_get_root_node(&l->doc), *v;
    if (!root) return fail(l, NULL, "the file is empty");
    if (!map_ok(l, root, "top level", KEYS)) return false;
    if ((v = get(l, root, "config"))) {
        yaml_node_t *a;
        if (!map_ok(l, v, "config", CKEYS)) return false;
        if ((a = get(l, v, "allowNonLoopback")) && !boolean(l, a, "config.allowNonLoopback", &c->allow_non_loopback))
            return false;
        if ((a = get(l, v, "statsAddr")) && !parse_addr(l, a, "config.statsAddr", c->allow_non_loopback, &c->stats_listen))
            return false;
        if ((a = get(l, v, "readinessAddr")) &&
            !parse_addr(l, a, "config.readinessAddr", c->allow_non_loopback, &c->ready_listen))
            return false;
        if ((a = get(l, v, "mcp"))) {
            yaml_node_t *t;
            if (!map_ok(l, a, "config.mcp", MKEYS)) return false;
            if ((t = get(l, a, "sessionTtl"))) {
                int64_t ms = scalar(t) ? gw_duration_ms(scalar(t)) : -1;
                if (ms < 1000 || ms > 7 * 86400 * 1000LL)
                    return fail(l, t, "config.mcp.sessionTtl: expected a duration from 1s to 168h, such as 8m");
                l->mcp_session_ttl_s = (int)(ms / 1000);
            }
        }
    }
    yaml_node_t *bs = get(l, root, "binds");
    if (!bs) return fail(l, root, "binds is required");
    if (!seq_ok(l, bs, "binds")) return false;
    if (!seq_len(bs)) return fail(l, bs, "binds: at least one bind is required");
    c->binds = xcalloc(seq_len(bs), sizeof *c->binds);
    ITEMS(bs, it) {
        yaml_node_t *bn = node_at(l, *it);
        gw_bind *b = &c->binds[c->n_binds++];
        l->bind = c->n_binds - 1;
        if (!parse_bind(l, bn, b)) return false;
        for (size_t i = 0; i + 1 < c->n_binds; i++)
            if (c->binds[i].port == b->port && b->port && !strcmp(c->binds[i].address, b->address))
                return fail(l, bn, "binds: %s port %u is bound twice", b->address, b->port);
        if (!gw_is_loopback(b->address) && !c->allow_non_loopback)
            return fail(l, bn, "binds.address %s is not a loopback address: set config.allowNonLoopback: true "
                        "to listen on it", b->address);
    }
    return true;
}

bool gw_is_loopback(const char *address)
{
    return util_str_starts_with(address, "127.") || !strcmp(address, "::1");
}

gw_config *gw_config_load(const char *path, const gw_config *prev, char *err, size_t errlen)
{
    loader l = {.path = path, .err = err, .errlen = errlen, .prev = prev};
    yaml_parser_t parser;
    bool parsed = false, ok = false;
    size_t len = 0;
    gw_config *c = xcalloc(1, sizeof *c);
    atomic_init(&c->refs, 1);
    c->path = xstrdup(path);

    char *text = util_read_file(path, GW_MAX_CONFIG_BYTES, &len);
    if (!text) {
        snprintf(err, errlen, "%s: %s", path,
                 errno == EFBIG ? "larger than 1 MiB" : strerror(errno));
        goto end;
    }
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &l.doc)) {
        snprintf(err, errlen, "%s:%d: %s%s%s", path, (int)parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "not YAML", parser.context ? " " : "",
                 parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        goto end;
    }
    parsed = true;
    yaml_parser_delete(&parser);
    ok = parse_top(&l, c);
end:
    if (parsed) yaml_document_delete(&l.doc);
    free(text);
    if (!ok) {
        gw_config_unref(c);
        return NULL;
    }
    return c;
}

gw_config *gw_config_ref(gw_config *c)
{
    if (c) atomic_fetch_add(&c->refs, 1);
    return c;
}

static void free_backend(gw_backend *b)
{
    mcp_unref(b->mcp);
    for (size_t i = 0; i < b->n_targets; i++) {
        mcp_target *t = &b->targets[i];
        free((char *)t->name);
        free((char *)t->url);
        list_free((char **)t->cmd);
        list_free((char **)t->env);
        free((char *)t->sidecar_url);
        free((char *)t->sidecar_api);
        free((char *)t->agent_identity);
    }
    free(b->targets);
    free(b->base_url);
    for (size_t i = 0; i < b->n_urls; i++) free(b->urls[i]);
    free(b->urls);
    free(b->weights);
    free((void *)b->down_until);
    free(b->ai_name);
    free(b->model);
    free(b->chat_path);
}

static void free_route(gw_route *rt)
{
    free(rt->name);
    free_header_mod(rt->req_mod);
    free_header_mod(rt->resp_mod);
    free(rt->rewrite_prefix);
    free(rt->rewrite_full);
    free(rt->rewrite_host);
    free(rt->retry_codes);
    free(rt->direct_body);
    free_redirect(rt->redirect);
    list_free(rt->hostnames);
    for (size_t i = 0; i < rt->n_matches; i++) {
        gw_match *m = &rt->matches[i];
        free(m->path);
        free(m->method);
        if (m->path_re) regfree(m->path_re);
        free(m->path_re);
        free_value_matches(m->headers, m->n_headers);
        free_value_matches(m->query, m->n_query);
    }
    free(rt->matches);
    free_backend(&rt->backend);
    for (size_t i = 0; rt->jwt && i < rt->jwt->n_providers; i++) {
        gw_jwt_provider *p = &rt->jwt->providers[i];
        free(p->issuer);
        list_free(p->audiences);
        free(p->jwks_url);
        jwks_cache_free(p->jwks_cache);
        jwks_unref(p->jwks_keys);
    }
    if (rt->jwt) {
        free(rt->jwt->providers);
        free(rt->jwt->loc_name);
        free(rt->jwt->loc_prefix);
        free(rt->jwt);
    }
    free(rt->meta.resource);
    list_free(rt->meta.scopes_supported);
    cel_rules_free(rt->authz);
    cel_rules_free(rt->mcp_authz);
    if (rt->cors) {
        list_free(rt->cors->allow_origins);
        free(rt->cors->allow_headers);
        free(rt->cors->allow_methods);
        free(rt->cors->expose_headers);
        free(rt->cors);
    }
    for (size_t i = 0; i < rt->n_limits; i++) pthread_mutex_destroy(&rt->limits[i].mu);
    free(rt->limits);
    free(rt->backend_key);
    for (size_t i = 0; i < rt->n_claim_headers; i++) free(rt->claim_headers[i].header), free(rt->claim_headers[i].claim);
    free(rt->claim_headers);
}

void gw_config_unref(gw_config *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
    for (size_t i = 0; i < c->n_binds; i++) {
        for (size_t k = 0; k < c->binds[i].n_routes; k++) free_route(&c->binds[i].routes[k]);
        free(c->binds[i].routes);
        free(c->binds[i].address);
        free(c->binds[i].tls_cert_pem);
        util_free_secret(c->binds[i].tls_key_pem);
    }
    free(c->binds);
    free(c->stats_listen);
    free(c->ready_listen);
    free(c->path);
    free(c);
}
