/* gateway/config — `agentid gateway`'s YAML configuration, shaped like agentgateway's local
 * file (shared docs agentgateway-mcp.md §5): binds → listeners → routes, each route with
 * matches, one backend and its policies. docs/gateway.md is the reference.
 *
 * Usage
 *     char err[512];
 *     gw_config *c = gw_config_load("gateway.yaml", NULL, err, sizeof err);
 *     if (!c) die("%s", err);            // "gateway.yaml:12: jwtAuth: issuer is required"
 *     ... gw_config_ref(c) per request, gw_config_unref(c) when done ...
 *     gw_config_unref(c);
 *
 * Contract
 *  - gw_config_load() parses and checks the whole file, compiles every CEL rule, loads JWKS
 *    files and builds the MCP multiplexers: a config that loads is complete. On failure it
 *    returns NULL with "FILE:LINE: reason" in err (FILE:LINE:COL for a CEL rule).
 *  - A config is reference-counted and immutable once loaded, except the run-time state it
 *    carries (rate-limit buckets, JWKS caches, MCP multiplexers), which is thread-safe. A
 *    reload builds a new config, and that state starts afresh with it — except each MCP
 *    multiplexer, which the new config takes over from `prev` when the route's name, bind,
 *    backend, mcpAuthorization and timeout are unchanged, so MCP sessions survive a reload.
 *  - The prefix is gw_config_ / gw_ (config_ is core/config.h's).
 */
#ifndef AGENTID_GATEWAY_CONFIG_H
#define AGENTID_GATEWAY_CONFIG_H

#include "gateway/cel.h"
#include "gateway/mcp.h"
#include "jose/jwks.h"

#include <pthread.h>
#include <regex.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_MAX_CONFIG_BYTES (1024 * 1024)

typedef enum { GW_PATH_PREFIX, GW_PATH_EXACT, GW_PATH_REGEX } gw_path_kind;

/* A header's or query parameter's value: exactly this, or the whole of it matching a POSIX
 * extended regular expression. */
typedef struct {
    char *name;                  /* header name (compared case-insensitively), or query name */
    char *value;                 /* exact value; NULL with re */
    regex_t *re;                 /* value: {regex: R}; NULL with value */
} gw_value_match;

typedef struct {
    gw_path_kind path_kind;
    char *path;                  /* "/" when the match names none; the pattern for a regex */
    regex_t *path_re;            /* GW_PATH_REGEX: path anchored at both ends */
    char *method;                /* NULL: any */
    gw_value_match *headers;
    size_t n_headers;
    gw_value_match *query;
    size_t n_query;
} gw_match;

/* Does the whole of s match m's value (exact or regex)? */
bool gw_value_matches(const gw_value_match *m, const char *s);

/* jwtAuth. agentid defaults to strict (agentgateway: optional). */
typedef enum { GW_JWT_STRICT, GW_JWT_OPTIONAL, GW_JWT_PERMISSIVE } gw_jwt_mode;

typedef struct {
    char *issuer;
    char **audiences;            /* NULL-terminated; NULL: aud is not checked */
    char *jwks_url;              /* exactly one of jwks_cache (jwks.url) ... */
    jwks_cache *jwks_cache;
    jwks *jwks_keys;             /* ... and jwks_keys (jwks.file or inline) */
    unsigned required;           /* jwtValidationOptions.requiredClaims: GW_CLAIM_* bits (default exp) */
} gw_jwt_provider;
enum { GW_CLAIM_EXP = 1, GW_CLAIM_NBF = 2, GW_CLAIM_AUD = 4, GW_CLAIM_ISS = 8, GW_CLAIM_SUB = 16 };

/* Where the token is (jwtAuth.location): a header (Authorization with "Bearer " by default), a
 * query parameter or a cookie. */
typedef enum { GW_JWT_IN_HEADER, GW_JWT_IN_QUERY, GW_JWT_IN_COOKIE } gw_jwt_where;

typedef struct {
    gw_jwt_mode mode;
    bool require_kid;
    gw_jwt_where where;
    char *loc_name;              /* NULL: the Authorization header */
    char *loc_prefix;            /* header: what comes before the token, matched case-insensitively */
    gw_jwt_provider *providers;  /* issuer, audiences and jwks, or agentgateway's providers list: */
    size_t n_providers;          /* a token goes to the one whose issuer is its iss */
} gw_jwt;

/* RFC 9728 document extras (route key resourceMetadata). */
typedef struct {
    char *resource;              /* its scheme://authority replaces the request's */
    char **scopes_supported;     /* NULL-terminated, may be NULL */
} gw_resource_metadata;

typedef struct {
    char **allow_origins;        /* NULL-terminated; "*" allowed */
    char *allow_headers;         /* joined with ", "; NULL: none */
    char *allow_methods;
    char *expose_headers;
    bool allow_credentials;
    long max_age_s;              /* < 0: not sent */
} gw_cors;

/* localRateLimit entry: a token bucket shared by every caller of the route. */
typedef struct {
    long max_tokens, tokens_per_fill;
    int64_t fill_ms;
    pthread_mutex_t mu;
    long tokens;                 /* guarded by mu */
    int64_t last_fill_ms;        /* monotonic; guarded by mu */
} gw_ratelimit;

typedef enum { GW_BACKEND_HOST, GW_BACKEND_AI, GW_BACKEND_MCP } gw_backend_kind;
typedef enum { GW_AI_OPENAI, GW_AI_OLLAMA } gw_ai_provider;

#define GW_MAX_BACKENDS 16        /* host backends of one route */

typedef struct {
    gw_backend_kind kind;
    char *base_url;              /* HOST, AI: "http(s)://host:port[/path]", no trailing '/' */
    /* HOST, several backends: each request goes to one of urls, at random in proportion to
     * its weight (base_url is then the first with a weight) */
    char **urls;
    unsigned *weights;
    size_t n_urls;               /* 0: base_url alone */
    _Atomic int64_t *down_until; /* of each of urls: until when (monotonic ms) it gets no first
                                    tries, having been unreachable (the gateway's to set) */
    /* AI */
    char *ai_name;
    gw_ai_provider provider;
    char *model;                 /* NULL: the client's model stays */
    char *chat_path;             /* the provider's chat path, e.g. "/v1/chat/completions" */
    /* MCP */
    mcp_target *targets;         /* what the mux was built from; strings owned here */
    size_t n_targets;
    struct gw_mcp *mcp;
} gw_backend;

/* A route's MCP multiplexer with the rule set it borrows, shared by successive configs. */
typedef struct gw_mcp {
    atomic_int refs;
    char *fingerprint;           /* the settings it was built from, canonically */
    cel_rules *authz;            /* mcpAuthorization; NULL: none */
    mcp_mux *mux;
} gw_mcp;

typedef struct {
    char *header;                /* claimsToHeaders: header name ... */
    char *claim;                 /* ... and the claim (dots reach into objects: "a.b") */
} gw_claim_header;

/* requestHeaderModifier / responseHeaderModifier: the named headers are removed, those in set
 * replaced (the incoming ones dropped), those in add sent as well; names compare without case. */
/* requestRedirect: each part replaces the request's own when set (NULL / 0: kept). */
typedef struct gw_redirect {
    char *scheme;                /* "http" or "https" */
    char *host;                  /* authority.host, or authority.full's host part */
    unsigned port;               /* authority.port or full's; 0: the scheme's default when the
                                    scheme changes, else the request's */
    bool full_authority;         /* authority.full: host and port as given */
    char *path_full, *path_prefix;
    int status;                  /* 301, 302 (default), 303, 307, 308 */
} gw_redirect;

#define GW_HEADER_MOD_MAX 32      /* entries in one add or set */
typedef struct {
    char **set_names, **set_values;   /* NULL-terminated, same length */
    char **add_names, **add_values;
    char **remove;                    /* NULL-terminated; NULL: none */
} gw_header_mod;

typedef struct {
    char *name;
    int line;                    /* where it starts in the file, for logs */
    char **hostnames;            /* NULL-terminated; "*.example.com" for any subdomain; NULL: any host */
    gw_match *matches;
    size_t n_matches;
    gw_backend backend;
    gw_jwt *jwt;                 /* NULL: no jwtAuth */
    gw_resource_metadata meta;
    cel_rules *authz;            /* authorization; NULL: none */
    cel_rules *mcp_authz;        /* mcpAuthorization while parsing; then owned by backend.mcp */
    gw_cors *cors;               /* NULL: no CORS headers, OPTIONS goes to the backend */
    gw_ratelimit *limits;
    size_t n_limits;
    long timeout_ms;             /* timeout.requestTimeout; 0: none */
    bool passthrough;            /* backendAuth.passthrough: forward the validated token */
    char *backend_key;           /* backendAuth.key: "Authorization: Bearer KEY" upstream */
    gw_claim_header *claim_headers;
    size_t n_claim_headers;
    gw_header_mod *req_mod;      /* requestHeaderModifier; NULL: none */
    gw_header_mod *resp_mod;     /* responseHeaderModifier; NULL: none */
    char *rewrite_prefix;        /* urlRewrite.path.prefix: replaces the matched path prefix */
    char *rewrite_full;          /* urlRewrite.path.full: replaces the whole path */
    unsigned retry_attempts;     /* retry: this many more tries after the first (0: none) ... */
    long retry_backoff_ms;       /* ... this long apart ... */
    int *retry_codes;            /* ... when the upstream answered one of these statuses ... */
    size_t n_retry_codes;        /* ... or could not be reached */
    char *rewrite_host;          /* urlRewrite.authority: the Host the upstream gets is this host ... */
    unsigned rewrite_port;       /* ... and this port (0: the backend's), else the backend's own */
    struct gw_redirect *redirect;/* requestRedirect; NULL: none */
    bool direct;                 /* directResponse: the gateway answers (no backend) ... */
    int direct_status;           /* ... with this status (200) ... */
    char *direct_body;           /* ... and this body (NULL: none) */
} gw_route;

/* Is name one of list's (without case)? */
bool gw_header_listed(char *const *list, const char *name);
/* Does m take the incoming header name away (it removes or sets it)? */
bool gw_header_mod_drops(const gw_header_mod *m, const char *name);

typedef struct {
    char *address;               /* numeric; "127.0.0.1" by default */
    unsigned port;
    gw_route *routes;            /* every listener's routes, in file order */
    size_t n_routes;
    char *tls_cert_pem;          /* protocol HTTPS: the listeners' tls.cert (PEM chain) and */
    char *tls_key_pem;           /* tls.key, read at load; NULL: plain HTTP */
} gw_bind;

typedef struct {
    atomic_int refs;
    char *path;
    bool allow_non_loopback;     /* config.allowNonLoopback */
    char *stats_listen;          /* config.statsAddr as "ADDR:PORT" ("[V6]:PORT"), or NULL */
    char *ready_listen;          /* config.readinessAddr, likewise */
    gw_bind *binds;
    size_t n_binds;
} gw_config;

/* prev: the running config (NULL at start-up), whose unchanged MCP multiplexers are reused. */
gw_config *gw_config_load(const char *path, const gw_config *prev, char *err, size_t errlen);
gw_config *gw_config_ref(gw_config *c);
void gw_config_unref(gw_config *c);

/* A numeric address of the loopback range (127.0.0.0/8, ::1): what binds and the stats and
 * readiness addresses may use without config.allowNonLoopback. */
bool gw_is_loopback(const char *address);

/* "30s", "1m30s", "250ms", "2h" → milliseconds; -1 if not a duration. */
int64_t gw_duration_ms(const char *s);

#endif
