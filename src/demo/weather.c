/* weather — see weather.h.
 *
 * The downstream API of Microsoft's sidecar sample ("validates TR: JWKS, RS256, issuer, expiry,
 * audience"), plus the authorization step a real API adds (scope or app role). Each request
 * runs the checks in a fixed order — token_present, signature, issuer, audience, lifetime,
 * scope_or_role — and stops at the first failure, so an answer names exactly one failed check
 * and lists the ones before it. Keys and the issuer come from OIDC discovery (jose/oidc.h);
 * claims are checked by jwt_check_claims. The forecast is a hash of the city name: stable
 * across calls, so tests and the chat demo can compare answers.
 */
#include "demo/weather.h"

#include "core/args.h"

#include "core/http_server.h"
#include "core/log.h"
#include "core/util.h"
#include "jose/jwt.h"
#include "jose/oidc.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define SKEW_S 300          /* Microsoft.IdentityModel's default clock skew, as the sidecar uses */
#define MAX_AUD 16
#define CITY_MAX 64

static const char USAGE[] =
    "usage: agentid weather-api --authority URL --audience AUD [--audience AUD ...]\n"
    "                           [--scope SCOPE] [--role ROLE] [--listen ADDR:PORT]\n"
    "  environment: WEATHER_AUTHORITY, WEATHER_AUDIENCE (comma-separated), WEATHER_SCOPE,\n"
    "  WEATHER_ROLE, WEATHER_LISTEN (default 127.0.0.1:5100), SSL_CERT_FILE (extra CA)\n";

typedef struct {
    const char *listen, *authority, *scope, *role;
    const char *aud[MAX_AUD + 1];
    size_t n_aud;
    char *aud_env;           /* WEATHER_AUDIENCE, split in place into aud[] */
    oidc *idp;
} weather;

/* ---- options ---------------------------------------------------------------------------- */

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* "ADDR:PORT" with a port of 1-5 digits (0 picks one). */
static bool listen_ok(const char *s)
{
    const char *c = strrchr(s, ':');
    size_t n = c ? strspn(c + 1, "0123456789") : 0;
    return c && c > s && n >= 1 && n <= 5 && !c[1 + n] && atoi(c + 1) <= 65535;
}

static bool authority_ok(const char *a)
{
    /* Whoever serves the keys mints the tokens: https, or plain http only on loopback. */
    static const char *const ok[] = {"https://", "http://127.0.0.1:", "http://127.0.0.1/",
                                     "http://localhost:", "http://localhost/", "http://[::1]:", "http://[::1]/"};
    for (size_t i = 0; i < ARRAY_LEN(ok); i++)
        if (util_str_starts_with(a, ok[i]) && a[strlen(ok[i])]) return true;
    return false;
}

/* Fill w from the environment, then the flags (which win). 0, or the exit code. */
static int parse(weather *w, int argc, char **argv)
{
    static const char *const FLAGS[] = {"--listen", "--authority", "--audience", "--scope", "--role"};
    w->listen = env("WEATHER_LISTEN") ? env("WEATHER_LISTEN") : "127.0.0.1:5100";
    w->authority = env("WEATHER_AUTHORITY");
    w->scope = env("WEATHER_SCOPE");
    w->role = env("WEATHER_ROLE");
    bool flag_aud = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            return -1;
        }
        size_t f, n = 0;
        for (f = 0; f < ARRAY_LEN(FLAGS); f++) {   /* --flag VALUE or --flag=VALUE */
            n = strlen(FLAGS[f]);
            if (!strncmp(argv[i], FLAGS[f], n) && (!argv[i][n] || argv[i][n] == '=')) break;
        }
        if (f == ARRAY_LEN(FLAGS)) return args_usage_error("weather-api", "unknown option %s (see --help)", argv[i]);
        const char *v = argv[i][n] == '=' ? argv[i] + n + 1 : i + 1 < argc ? argv[++i] : NULL;
        if (!v || !*v) return args_usage_error("weather-api", "option %s needs a value", FLAGS[f]);
        switch (f) {
        case 0: w->listen = v; break;
        case 1: w->authority = v; break;
        case 2:
            if (!flag_aud) w->n_aud = 0, flag_aud = true;   /* flags replace WEATHER_AUDIENCE */
            if (w->n_aud == MAX_AUD) return args_usage_error("weather-api", "at most %s audiences", "16");
            w->aud[w->n_aud++] = v;
            break;
        case 3: w->scope = v; break;
        default: w->role = v; break;
        }
    }
    if (!flag_aud && env("WEATHER_AUDIENCE")) {
        w->aud_env = xstrdup(env("WEATHER_AUDIENCE"));
        char *save = NULL;
        for (char *a = strtok_r(w->aud_env, ", ", &save); a; a = strtok_r(NULL, ", ", &save)) {
            if (w->n_aud == MAX_AUD) return args_usage_error("weather-api", "at most %s audiences", "16");
            w->aud[w->n_aud++] = a;
        }
    }
    w->aud[w->n_aud] = NULL;
    if (!w->authority)
        return args_usage_error("weather-api", "%s is required: the issuer's v2 authority, e.g. https://127.0.0.1:8443/<tenant>/v2.0",
                     "--authority (or WEATHER_AUTHORITY)");
    if (!authority_ok(w->authority))
        return args_usage_error("weather-api", "--authority %s: must be an https:// URL (http:// only on loopback)", w->authority);
    if (!w->n_aud)
        return args_usage_error("weather-api", "%s is required: the API's app id and/or its api:// URI",
                     "--audience (or WEATHER_AUDIENCE)");
    if (!listen_ok(w->listen)) return args_usage_error("weather-api", "--listen %s: expected ADDR:PORT", w->listen);
    return 0;
}

/* ---- validation ------------------------------------------------------------------------- */

typedef struct {
    json_t *checks;          /* [{"check","ok","detail"}...] up to the first failure */
    const char *failed;      /* that check's name, NULL while all pass */
    int status;              /* 401, 403 or 503 when failed */
    char why[512];
} verdict;

static void check(verdict *v, const char *name, bool ok, int status, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void check(verdict *v, const char *name, bool ok, int status, const char *fmt, ...)
{
    char detail[512] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof detail, fmt, ap);
        va_end(ap);
        log_redact(detail);   /* a detail never echoes a token back */
    }
    json_t *c = json_pack("{s:s, s:b}", "check", name, "ok", ok);
    if (fmt) json_object_set_new(c, "detail", json_string(detail));
    json_array_append_new(v->checks, c);
    if (!ok) {
        v->failed = name;
        v->status = status;
        snprintf(v->why, sizeof v->why, "%s", detail);
    }
}

/* jwt_check_claims tests lifetime, then audience, then issuer. To name the first failure in
 * this API's order, the issuer and audience stages ask it about one thing each, with an
 * unbounded skew so that lifetime cannot answer first; the lifetime stage uses the real skew.
 * Only exp or nbf that are not numbers can still answer early: that is a lifetime failure. */
static jwt_check claims_stage(const jwt *t, const char *const *issuers, const char *const *auds,
                              char *err, size_t errlen)
{
    bool lifetime = !issuers && !auds;
    jwt_expect e = {.issuers = issuers, .audiences = auds, .skew_s = lifetime ? SKEW_S : INT_MAX,
                    .require_exp = lifetime};
    return jwt_check_claims(t, &e, err, errlen);
}

/* Record the lifetime check from a jwt_check_claims result and its reason. */
static void lifetime(verdict *v, const jwt *t, jwt_check c, const char *why)
{
    int64_t now = util_now(), exp = 0, nbf = 0;
    bool has_exp = jwt_claim_int(t, "exp", &exp), has_nbf = jwt_claim_int(t, "nbf", &nbf);
    if (c == JWT_CHECK_OK)
        check(v, "lifetime", true, 0, "expires in %lld s", (long long)(exp - now));
    else if (c == JWT_CHECK_EXPIRED && has_exp)
        check(v, "lifetime", false, 401, "expired %lld s ago (%d s of clock skew allowed)",
              (long long)(now - exp), SKEW_S);
    else if (c == JWT_CHECK_NOT_YET_VALID && has_nbf)
        check(v, "lifetime", false, 401, "not valid for another %lld s (nbf)", (long long)(nbf - now));
    else
        check(v, "lifetime", false, 401, "%s", why);   /* no exp, or exp / nbf not a NumericDate */
}

static bool has_word(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; p && *p; p += strcspn(p, " "), p += strspn(p, " "))
        if (!strncmp(p, word, n) && (p[n] == ' ' || !p[n])) return true;
    return false;
}

static bool has_role(const json_t *roles, const char *role)
{
    for (size_t i = 0; i < json_array_size(roles); i++) {
        const char *r = json_string_value(json_array_get(roles, i));
        if (r && !strcmp(r, role)) return true;
    }
    return false;
}

/* Run the checks in order until one fails. 0 and a verified *t when all pass. */
static int authenticate(weather *w, http_req *r, jwt *t, verdict *v)
{
    char err[300];
    const char *auth = http_req_header(r, "Authorization");
    const char *raw = auth && !strncasecmp(auth, "Bearer ", 7) ? auth + 7 + strspn(auth + 7, " ") : NULL;
    if (!raw || !*raw) {
        check(v, "token_present", false, 401, "no Authorization: Bearer token");
        return -1;
    }
    check(v, "token_present", true, 0, NULL);

    /* signature: a token that is not a JWS at all fails here too, named "malformed". */
    jwt probe;
    if (jwt_decode(raw, &probe, err, sizeof err) != 0) {
        check(v, "signature", false, 401, "malformed token: %s", err);
        return -1;
    }
    jwt_clear(&probe);
    if (oidc_ready(w->idp, NULL, err, sizeof err) != 0) {
        check(v, "signature", false, 503, "the identity provider's discovery document could not be fetched: %s", err);
        return -1;
    }
    int vrc = oidc_verify(w->idp, raw, t, err, sizeof err);
    if (vrc != 0) {
        bool down = vrc == JWKS_UNAVAILABLE;   /* the provider is down, not the caller's fault */
        check(v, "signature", false, down ? 503 : 401, "%s%s",
              down ? "the identity provider's keys could not be fetched: " : "", err);
        return -1;
    }
    const char *kid = jwt_kid(t), *x5t = json_string_value(json_object_get(t->header, "x5t"));
    check(v, "signature", true, 0, "%s, %s %s", jwt_alg(t), kid ? "kid" : "x5t", kid ? kid : x5t ? x5t : "?");

    const char *issuers[] = {oidc_issuer(w->idp), NULL};
    char *iss = jwt_claim_text(t, "iss"), *aud = jwt_claim_text(t, "aud");
    int rc = -1;
    jwt_check c = claims_stage(t, issuers, NULL, err, sizeof err);
    if (c == JWT_CHECK_ISSUER) {
        check(v, "issuer", false, 401, "iss %s is not the authority's issuer %s", iss, issuers[0]);
    } else if (c == JWT_CHECK_OK) {
        check(v, "issuer", true, 0, "%s", iss);
        if ((c = claims_stage(t, NULL, w->aud, err, sizeof err)) == JWT_CHECK_AUDIENCE) {
            char want[400] = "";
            for (size_t i = 0, k = 0; w->aud[i] && k < sizeof want; i++)
                k += (size_t)snprintf(want + k, sizeof want - k, "%s%s", i ? ", " : "", w->aud[i]);
            check(v, "audience", false, 401, "aud %s is not an accepted audience (%s)", aud, want);
        } else if (c == JWT_CHECK_OK) {
            check(v, "audience", true, 0, "%s", aud);
            c = claims_stage(t, NULL, NULL, err, sizeof err);
        }
    }
    if (!v->failed) lifetime(v, t, c, err);
    if (v->failed) goto end;

    const char *scp = jwt_claim_str(t, "scp");
    const json_t *roles = json_object_get(t->claims, "roles");
    if (!w->scope && !w->role)
        check(v, "scope_or_role", true, 0, "none required");
    else if (w->scope && has_word(scp, w->scope))
        check(v, "scope_or_role", true, 0, "scp %s", w->scope);
    else if (w->role && has_role(roles, w->role))
        check(v, "scope_or_role", true, 0, "role %s", w->role);
    else {
        char *have = jwt_claim_text(t, "roles");
        check(v, "scope_or_role", false, 403, "needs %s%s%s%s%s; the token has scp %s and roles %s",
              w->scope ? "scp " : "", w->scope ? w->scope : "", w->scope && w->role ? " or " : "",
              w->role ? "role " : "", w->role ? w->role : "", scp ? scp : "(none)", have);
        free(have);
        goto end;
    }
    rc = 0;
end:
    free(iss);
    free(aud);
    return rc;
}

/* ---- answers ---------------------------------------------------------------------------- */

static void reply_error(http_req *r, int status, const char *error, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void reply_error(http_req *r, int status, const char *error, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    http_reply_json(r, status, json_pack("{s:s, s:s}", "error", error, "message", msg));
}

/* 401 / 403 / 503 for the failed check, with RFC 6750 §3 WWW-Authenticate. Steals v->checks. */
static void reject(weather *w, http_req *r, verdict *v)
{
    bool scope = v->status == 403, down = v->status == 503;
    char desc[640], h[800];
    size_t k = 0;
    snprintf(h, sizeof h, "%s: %s", v->failed, v->why);
    for (const char *p = h; *p && k < sizeof desc - 1; p++)   /* a quoted-string: no '"', '\\' */
        if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) desc[k++] = *p;
    desc[k] = '\0';
    if (!strcmp(v->failed, "token_present"))
        http_add_header(r, "WWW-Authenticate", "Bearer");   /* §3.1: no error code without a token */
    else if (!down) {
        snprintf(h, sizeof h, "Bearer error=\"%s\", error_description=\"%s\"%s%s%s",
                 scope ? "insufficient_scope" : "invalid_token", desc,
                 scope && w->scope ? ", scope=\"" : "", scope && w->scope ? w->scope : "",
                 scope && w->scope ? "\"" : "");
        http_add_header(r, "WWW-Authenticate", h);
    }
    http_reply_json(r, v->status,
                    json_pack("{s:s, s:s, s:s, s:o}", "error",
                              down ? "temporarily_unavailable" : scope ? "insufficient_scope" : "invalid_token",
                              "failed_check", v->failed, "message", desc, "validation", v->checks));
    v->checks = NULL;
}

/* 1..64 characters: ASCII letters, space, '-', '.', and the Latin letters U+00C0..U+024F
 * (São Paulo, Zürich), with at least one letter. */
bool weather_city_ok(const char *s)
{
    size_t chars = 0;
    bool letter = false;
    for (const unsigned char *p = (const unsigned char *)s; *p; chars++) {
        if ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z') letter = true, p++;
        else if (*p == ' ' || *p == '-' || *p == '.') p++;
        else if (*p >= 0xC3 && *p <= 0xC9 && (p[1] & 0xC0) == 0x80) {
            unsigned cp = (unsigned)(*p & 0x1F) << 6 | (p[1] & 0x3F);
            if (cp < 0xC0 || cp == 0xD7 || cp == 0xF7) return false;
            letter = true, p += 2;
        } else return false;
    }
    return letter && chars <= CITY_MAX;
}

/* Synthetic, deterministic: FNV-1a of the lower-cased name picks every number. */
json_t *weather_forecast(const char *city)
{
    static const char *const COND[] = {"Sunny", "Partly cloudy", "Cloudy", "Rain", "Showers",
                                       "Thunderstorms", "Fog", "Windy", "Snow"};
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)city; *p; p++) {
        h ^= *p >= 'A' && *p <= 'Z' ? *p | 0x20 : *p;
        h *= 16777619u;
    }
    int c = (int)(h % 41) - 5;                       /* -5..35 °C */
    const char *cond = COND[(h >> 24) % ARRAY_LEN(COND)];
    if (!strcmp(cond, "Snow") && c > 1) cond = "Rain";
    return json_pack("{s:i, s:i, s:s, s:i, s:i}", "temperature_c", c, "temperature_f",
                     (c * 18 + 320 + 5) / 10, "condition", cond, "humidity", 20 + (int)((h >> 8) % 81),
                     "wind_kph", (int)((h >> 16) % 61));
}

/* Who called, from the verified claims: what the chat agent's identity trace shows. */
static json_t *caller(const jwt *t)
{
    static const char *const CLAIMS[] = {"azp", "appid", "oid", "sub", "upn", "preferred_username",
                                         "name", "scp", "roles", "tid"};
    static const char *const AGENT[] = {"xms_act_fct", "xms_sub_fct", "xms_par_app_azp"};
    const char *idtyp = jwt_claim_str(t, "idtyp");
    json_t *c = json_pack("{s:s}", "idtyp", idtyp ? idtyp : jwt_claim_str(t, "scp") ? "user" : "app");
    for (size_t i = 0; i < ARRAY_LEN(CLAIMS); i++) {
        json_t *v = json_object_get(t->claims, CLAIMS[i]);
        if (v) json_object_set(c, CLAIMS[i], v);
    }
    json_t *agent = json_object();
    for (size_t i = 0; i < ARRAY_LEN(AGENT); i++) {
        json_t *v = json_object_get(t->claims, AGENT[i]);
        if (v) json_object_set(agent, AGENT[i], v);
    }
    if (json_object_size(agent)) json_object_set(c, "agent", agent);
    json_decref(agent);
    return c;
}

static void get_weather(weather *w, http_req *r, const char *city)
{
    verdict v = {.checks = json_array()};
    jwt t = {0};
    http_add_header(r, "Cache-Control", "no-store");
    if (authenticate(w, r, &t, &v) != 0) {
        reject(w, r, &v);
    } else if (!city || !weather_city_ok(city)) {
        reply_error(r, 400, "invalid_request", "city must be 1-%d letters, spaces, '-' or '.': "
                    "GET /weather?city=Seattle or /weather/Seattle", CITY_MAX);
    } else {
        char at[40];
        util_fmt_time_iso(util_now(), at);
        http_reply_json(r, 200, json_pack("{s:s, s:o, s:s, s:o, s:O}", "city", city, "forecast",
                                          weather_forecast(city), "generated_at", at, "caller", caller(&t),
                                          "validation", v.checks));
    }
    json_decref(v.checks);
    jwt_clear(&t);
}

static void handle(http_req *r, void *ctx)
{
    weather *w = ctx;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    const char *path = http_req_path(r), *method = http_req_method(r);
    const char *corr = http_req_header(r, "client-request-id");
    char gen[37];
    if (!corr || !util_is_guid(corr)) util_guid(gen), corr = gen;
    bool health = !strcmp(path, "/healthz");
    bool forecast_path = !strcmp(path, "/weather") || util_str_starts_with(path, "/weather/");
    if (!health && !forecast_path) {
        reply_error(r, 404, "not_found", "no route %s: GET /weather?city=... or /weather/{city}", path);
    } else if (strcmp(method, "GET") != 0) {
        http_add_header(r, "Allow", "GET");
        reply_error(r, 405, "method_not_allowed", "%s is not allowed; use GET", method);
    } else if (health) {
        http_reply_text(r, 200, "Healthy");
    } else {
        get_weather(w, r, path[8] == '/' ? path + 9 : http_req_query(r, "city"));
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    log_request(method, path, http_reply_status(r),
                (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6, corr);
}

int weather_main(int argc, char **argv)
{
    weather w = {0};
    http_server *srv = NULL;
    char err[512];
    int rc = parse(&w, argc, argv);
    if (rc != 0) {
        rc = rc < 0 ? 0 : rc;   /* --help */
        goto end;
    }
    rc = 1;
    log_init("weather-api", LOG_INFO);
    httpc_global_init();
    size_t n = strlen(w.authority);
    while (n && w.authority[n - 1] == '/') n--;
    char *meta = xasprintf("%.*s/.well-known/openid-configuration", (int)n, w.authority);
    w.idp = oidc_new(meta, env("SSL_CERT_FILE"), 5000);
    free(meta);

    sigset_t set;
    args_block_stop_signals(&set, false);
    /* Thread per connection: a handler may wait on the identity provider. */
    http_server_opts so = {.listen = w.listen, .thread_per_connection = true, .max_body = 64 * 1024};
    if (!(srv = http_server_start(&so, handle, &w, err, sizeof err))) {
        fprintf(stderr, "agentid weather-api: %s: %s\n", w.listen, err);
        goto end;
    }
    log_msg(LOG_INFO, "listening", "weather API on http://%s, authority %s, %zu audiences, scope %s, role %s",
            w.listen, w.authority, w.n_aud, w.scope ? w.scope : "-", w.role ? w.role : "-");
    args_wait_for_stop(&set);
    rc = 0;
end:
    http_server_stop(srv);
    oidc_free(w.idp);
    free(w.aud_env);
    return rc;
}
