/* chat — see chat.h.
 *
 * One request to POST /api/chat is one "turn": the user's message, a mode (direct | llm) and an
 * identity flow (autonomous | obo). Every step the turn takes is appended to its trace, a JSON
 * array the web UI shows as the Identity Trace:
 *
 *   direct  city from the message -> get_weather(city)
 *   llm     ReAct loop: ask the LLM with one tool, get_weather(city); run each tool call;
 *           stop at the first answer without tool calls, or after --max-steps LLM calls
 *   get_weather(city)
 *           1. GET {sidecar}/AuthorizationHeader[Unauthenticated]/{api}?AgentIdentity={agent}
 *              (obo: the user's token as Bearer) -> {"authorizationHeader":"Bearer TR"}
 *           2. GET {weather}/weather?city=...  with that header -> forecast, caller, checks
 *
 * The agent never holds a credential: only the sidecar's authorization header, which goes to
 * the weather API and nowhere else (never to the LLM, never into the trace or the log; the trace
 * shows the decoded header and claims of each token, not the token).
 *
 * The web UI (the html, js and css files of src/demo/web) is compiled in by scripts/embed.sh;
 * msal-browser is read from node_modules at start-up and served at /vendor/.
 */
#include "demo/chat.h"

#include "core/args.h"

#include "core/form.h"
#include "core/http_client.h"
#include "core/http_server.h"
#include "core/log.h"
#include "core/util.h"
#include "jose/jwt.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_LISTEN    "127.0.0.1:3003"
#define DEFAULT_SIDECAR   "http://127.0.0.1:5000"
#define DEFAULT_WEATHER   "http://127.0.0.1:5100"
#define DEFAULT_LLM       "http://127.0.0.1:11434"
#define DEFAULT_MODEL     "qwen2.5:1.5b"
#define DEFAULT_API       "weather"
#define DEFAULT_MAX_STEPS 5
#define MAX_MESSAGE       2000          /* characters of a chat message */
#define MAX_BODY          (64 * 1024)   /* POST /api/chat body */
#define VENDOR_MAX        (4 << 20)     /* a vendored script */
#define SIDECAR_TIMEOUT   20000L
#define WEATHER_TIMEOUT   10000L
#define LLM_TIMEOUT       180000L       /* small local models on a CPU are slow */
#define PROBE_TIMEOUT     2000L

/* The table scripts/embed.sh generates (build/gen/web_assets.c). */
typedef struct {
    const char *path, *content_type;
    const unsigned char *data;
    size_t len;
} web_asset;
extern const web_asset chat_web_assets[];
extern const size_t chat_web_assets_count;

typedef struct {
    const char *url_path, *file;  /* served at /vendor/<url_path>, from <lib>/<file> */
    char *data;
    size_t len;
} vendor_file;

typedef struct {
    const char *listen, *agent, *tenant, *spa, *blueprint, *model, *api, *web_dir;
    char *sidecar, *weather, *llm, *authority;  /* normalised: no trailing '/' */
    bool openai;                                /* --llm ends in /v1 */
    int max_steps;
    char *scope, *known_authority, *authority_origin, *csp, *ca_file;
    char *lib_dir;                              /* msal-browser's lib/, or NULL */
    vendor_file vendor[2];
} chat_app;

/* ---- small helpers ------------------------------------------------------------ */

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static double round1(double ms) { return (double)(long long)(ms * 10 + 0.5) / 10; }

/* "http://host:port/path/" -> new string without trailing slashes; NULL if not http(s). */
static char *norm_url(const char *u)
{
    if (!u || (!util_str_starts_with(u, "http://") && !util_str_starts_with(u, "https://")))
        return NULL;
    size_t n = strlen(u);
    while (n > 0 && u[n - 1] == '/') n--;
    return xstrndup(u, n);
}

/* "scheme://host[:port]" of a URL, or "host:port" when hostport_only. */
static char *url_origin(const char *u, bool hostport_only)
{
    const char *p = strstr(u, "://");
    if (!p) return xstrdup("");
    const char *h = p + 3;
    size_t n = strcspn(h, "/?#");
    return hostport_only ? xstrndup(h, n) : xstrndup(u, (size_t)(h + n - u));
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

/* The "detail" a JSON error body carries, in the shapes the sidecar (problem+json), the
 * weather API and OpenAI/Ollama use; NULL if none. Borrowed from j. */
static const char *json_detail(const json_t *j)
{
    static const char *const keys[] = {"detail", "error_description", "message", "error"};
    for (size_t i = 0; j && i < ARRAY_LEN(keys); i++) {
        const json_t *v = json_object_get(j, keys[i]);
        if (json_is_string(v)) return json_string_value(v);
        if (json_is_object(v) && json_is_string(json_object_get(v, "message")))
            return json_string_value(json_object_get(v, "message"));
    }
    return NULL;
}

/* A short, printable excerpt of a body for messages (never a token: JWTs are redacted). */
static char *excerpt(const char *body, size_t len)
{
    size_t n = len < 300 ? len : 300;
    char *s = xstrndup(body ? body : "", n);
    for (char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20) *p = ' ';
    log_redact(s);
    if (n < len) {
        char *t = xasprintf("%s…", s);
        free(s);
        s = t;
    }
    return s;
}

/* Why a request got no answer, for a message: "timed out", or the client's reason without its
 * trailing "(host:port)" (the message names the URL already). */
static const char *transport_reason(httpc_result r, char *err)
{
    if (r == HTTPC_TIMEOUT) return "timed out";
    char *p = strrchr(err, '(');
    if (p && p > err && p[-1] == ' ' && util_str_ends_with(p, ")")) p[-1] = '\0';
    for (char *c = err; *c; c++) *c = (char)tolower((unsigned char)*c);
    return err;
}

/* ---- the turn ----------------------------------------------------------------- */

typedef struct {
    const chat_app *app;
    json_t *trace;          /* array of steps */
    const char *flow;       /* "autonomous" | "obo" */
    const char *user_token; /* obo: the browser's Tc (borrowed from the request) */
    char corr[37];          /* correlation id sent to the sidecar */
    char *error;            /* the user-facing failure, once one happened */
    const char *error_code;
    int calls;              /* get_weather calls made */
} turn;

static json_t *step_new(turn *t, const char *name, double ms, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Append {"step":name,"ms":ms,"detail":...} to the trace; returns it (borrowed). */
static json_t *step_new(turn *t, const char *name, double ms, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *detail = NULL;
    if (vasprintf(&detail, fmt, ap) < 0) detail = NULL;
    va_end(ap);
    json_t *s = json_pack("{s:s, s:f, s:s, s:b}", "step", name, "ms", round1(ms), "detail",
                          detail ? detail : "", "ok", 1);
    free(detail);
    json_array_append_new(t->trace, s);
    return s;
}

static void turn_fail(turn *t, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Record the turn's failure (the first one wins). */
static void turn_fail(turn *t, const char *code, const char *fmt, ...)
{
    if (t->error) return;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&t->error, fmt, ap) < 0) t->error = xstrdup("internal error");
    va_end(ap);
    t->error_code = code;
}

static void step_failed(json_t *step) { json_object_set_new(step, "ok", json_false()); }

/* Decode a compact JWT into {"name":..,"header":{..},"claims":{..}} for the trace. */
static json_t *token_json(const char *name, const char *compact)
{
    jwt j;
    char err[200];
    if (jwt_decode(compact, &j, err, sizeof err) != 0)
        return json_pack("{s:s, s:s}", "name", name, "error", err);
    json_t *o = json_pack("{s:s, s:O, s:O}", "name", name, "header", j.header, "claims", j.claims);
    jwt_clear(&j);
    return o;
}

/* ---- get_weather: sidecar, then the weather API ---------------------------------- */

/* Turn the sidecar's refusal into a message a developer can act on. */
static void sidecar_refused(turn *t, json_t *step, long status, const json_t *body, const char *raw,
                            size_t raw_len)
{
    const char *detail = json_detail(body);
    char *ex = detail ? NULL : excerpt(raw, raw_len);
    const char *d = detail ? detail : ex;
    json_object_set_new(step, "sidecar_status", json_integer(status));
    if (detail) json_object_set_new(step, "sidecar_detail", json_string(detail));
    step_failed(step);
    if (strstr(d, "AADSTS7000215"))
        turn_fail(t, "wrong_secret",
                  "The sidecar could not get a token: the identity provider rejected the blueprint's "
                  "client secret (HTTP %ld). Check AzureAd__ClientCredentials__0__ClientSecret in the "
                  "sidecar's settings. Sidecar detail: %s", status, d);
    else if (strstr(d, "AADSTS65001"))
        turn_fail(t, "consent_required",
                  "The sidecar could not get a token: consent is missing (HTTP %ld). Grant the agent "
                  "(or the blueprint) the API's permission for this user — an admin consent for the "
                  "scope in the directory. Sidecar detail: %s", status, d);
    else if (status == 401 && t->user_token && strstr(d, "AADSTS") == NULL)
        turn_fail(t, "user_token_rejected",
                  "The sidecar refused the signed-in user's token (HTTP 401): %s. Sign out and sign "
                  "in again.", d);
    else if (status == 403)
        turn_fail(t, "sidecar_forbidden",
                  "The sidecar refused the request (HTTP 403): %s", d);
    else
        turn_fail(t, "sidecar_error", "The sidecar could not get a token (HTTP %ld): %s", status, d);
    free(ex);
}

/* Ask the sidecar for the authorization header. Returns it (caller frees) or NULL (t->error). */
static char *sidecar_header(turn *t)
{
    const chat_app *a = t->app;
    bool obo = t->user_token != NULL;
    char *api = form_escape(a->api), *agent = form_escape(a->agent);
    char *url = xasprintf("%s/%s/%s?AgentIdentity=%s", a->sidecar,
                          obo ? "AuthorizationHeader" : "AuthorizationHeaderUnauthenticated", api, agent);
    free(api);
    free(agent);
    char *auth = obo ? xasprintf("Authorization: Bearer %s", t->user_token) : NULL;
    char *corr = xasprintf("x-ms-client-request-id: %s", t->corr);
    const char *hdrs[] = {"Accept: application/json", corr, auth, NULL};
    httpc_request rq = {.url = url, .headers = hdrs, .timeout_ms = SIDECAR_TIMEOUT, .ca_file = a->ca_file};
    httpc_response rs;
    char err[300];
    double t0 = now_ms();
    httpc_result r = httpc_do(&rq, &rs, err, sizeof err);
    double ms = now_ms() - t0;
    char *header = NULL;
    json_t *step = step_new(t, "Token request to the sidecar", ms, "GET %s", url);
    json_object_set_new(step, "flow",
                        json_string(obo ? "on behalf of the user: T1 (blueprint, fmi_path=agent), then OBO "
                                          "with the user's token Tc as assertion and T1 as the agent's "
                                          "credential -> TR"
                                        : "autonomous agent: T1 (blueprint, fmi_path=agent), then the "
                                          "agent's client credentials with T1 as its assertion -> TR"));
    json_object_set_new(step, "correlation_id", json_string(t->corr));
    if (r != HTTPC_OK) {
        step_failed(step);
        json_object_set_new(step, "error", json_string(err));
        turn_fail(t, "sidecar_unreachable",
                  "The sidecar at %s is not reachable (%s). Start it (agentid sidecar) or pass "
                  "--sidecar / SIDECAR_URL.", a->sidecar,
                  transport_reason(r, err));
        goto end;
    }
    json_t *body = json_loadb(rs.body, rs.body_len, 0, NULL);
    json_object_set_new(step, "status", json_integer(rs.status));
    const char *h = json_string_value(json_object_get(body, "authorizationHeader"));
    if (rs.status != 200 || !h) {
        if (rs.status == 200)
            rs.status = 502; /* a 200 without the header is nonsense: report it as such */
        sidecar_refused(t, step, rs.status, body, rs.body, rs.body_len);
    } else if (!util_str_starts_with(h, "Bearer ")) {
        step_failed(step);
        turn_fail(t, "sidecar_error", "The sidecar's authorization header is not a Bearer token.");
    } else {
        header = xstrdup(h);
        json_object_set_new(step, "token", token_json("TR (resource token for the weather API)", h + 7));
    }
    json_decref(body);
    httpc_response_free(&rs);
end:
    free(url);
    free(corr);
    if (auth) memset(auth, 0, strlen(auth)); /* it held the user's token */
    free(auth);
    return header;
}

/* Text for a forecast value: a string, or the weather API's object (condition, temperature_c,
 * temperature_f, humidity, wind_kph; other names are tried too). Caller frees. */
static char *forecast_text(const json_t *f)
{
    if (json_is_string(f)) return xstrdup(json_string_value(f));
    if (!json_is_object(f)) return xstrdup("no forecast");
    static const char *const desc[] = {"condition", "conditions", "summary", "description", "sky"};
    static const char *const temp[] = {"temperature_c", "temp_c", "temperature", "temp"};
    const char *d = NULL;
    const json_t *tv = NULL;
    for (size_t i = 0; i < ARRAY_LEN(desc) && !d; i++)
        d = json_string_value(json_object_get(f, desc[i]));
    for (size_t i = 0; i < ARRAY_LEN(temp) && !tv; i++)
        if (json_is_number(json_object_get(f, temp[i]))) tv = json_object_get(f, temp[i]);
    if (!d && !tv) {
        char *s = json_dumps(f, JSON_COMPACT);
        return s ? s : xstrdup("?");
    }
    char buf[256];
    size_t k = (size_t)snprintf(buf, sizeof buf, "%s", d ? d : "");
    const json_t *tf = json_object_get(f, "temperature_f"), *hu = json_object_get(f, "humidity"),
                 *wi = json_object_get(f, "wind_kph");
    if (tv && k < sizeof buf)
        k += (size_t)snprintf(buf + k, sizeof buf - k, "%s%.0f °C", d ? ", " : "", json_number_value(tv));
    if (tv && json_is_number(tf) && k < sizeof buf)
        k += (size_t)snprintf(buf + k, sizeof buf - k, " (%.0f °F)", json_number_value(tf));
    if (json_is_number(hu) && k < sizeof buf)
        k += (size_t)snprintf(buf + k, sizeof buf - k, ", humidity %.0f%%", json_number_value(hu));
    if (json_is_number(wi) && k < sizeof buf)
        snprintf(buf + k, sizeof buf - k, ", wind %.0f km/h", json_number_value(wi));
    return xstrdup(buf);
}

/* Who the API says called it, from its "caller" object: "alice@… through the agent <azp>",
 * "the agent <azp>" or "the app <azp>". Caller frees; NULL when it says nothing. */
static char *caller_text(const json_t *c)
{
    if (json_is_string(c)) return xstrdup(json_string_value(c));
    if (!json_is_object(c)) return NULL;
    const char *user = NULL, *app = NULL;
    static const char *const uk[] = {"preferred_username", "upn", "unique_name", "name"};
    static const char *const ak[] = {"azp", "appid"};
    for (size_t i = 0; i < ARRAY_LEN(uk) && !user; i++) user = json_string_value(json_object_get(c, uk[i]));
    for (size_t i = 0; i < ARRAY_LEN(ak) && !app; i++) app = json_string_value(json_object_get(c, ak[i]));
    const char *who = json_object_get(c, "agent") ? "the agent" : "the app";
    if (user && app) return xasprintf("%s through %s %s", user, who, app);
    if (user) return xstrdup(user);
    if (app) return xasprintf("%s %s", who, app);
    return NULL;
}

/* The whole tool: token, API call. On success returns {"city","forecast","text","caller"}
 * (new reference) — the tool result the LLM and the direct answer use; NULL with t->error.
 * With soft_bad_city, the API's 400 (a city it does not accept) is not the turn's failure but
 * {"error": "..."}: an LLM may correct its argument and call again. */
static json_t *get_weather(turn *t, const char *city, bool soft_bad_city)
{
    const chat_app *a = t->app;
    t->calls++;
    char *header = sidecar_header(t);
    if (!header) return NULL;
    json_t *out = NULL;
    char *qcity = form_escape(city);
    char *url = xasprintf("%s/weather?city=%s", a->weather, qcity);
    free(qcity);
    char *auth = xasprintf("Authorization: %s", header);
    char *corr = xasprintf("client-request-id: %s", t->corr);
    const char *hdrs[] = {"Accept: application/json", auth, corr, NULL};
    httpc_request rq = {.url = url, .headers = hdrs, .timeout_ms = WEATHER_TIMEOUT, .ca_file = a->ca_file};
    httpc_response rs;
    char err[300];
    double t0 = now_ms();
    httpc_result r = httpc_do(&rq, &rs, err, sizeof err);
    double ms = now_ms() - t0;
    json_t *step = step_new(t, "Call the weather API", ms, "GET %s with Authorization: Bearer TR", url);
    if (r != HTTPC_OK) {
        step_failed(step);
        json_object_set_new(step, "error", json_string(err));
        turn_fail(t, "weather_unreachable",
                  "The weather API at %s is not reachable (%s). Start it (agentid weather-api) or "
                  "pass --weather-url / WEATHER_API_URL.", a->weather,
                  transport_reason(r, err));
        goto end;
    }
    json_object_set_new(step, "status", json_integer(rs.status));
    json_t *body = json_loadb(rs.body, rs.body_len, 0, NULL);
    json_t *val = json_object_get(body, "validation");
    if (val) json_object_set(step, "validation", val);
    if (rs.status != 200 || !json_is_object(body)) {
        step_failed(step);
        const char *failed = json_string_value(json_object_get(body, "failed_check"));
        const char *detail = json_detail(body);
        char *ex = detail ? NULL : excerpt(rs.body, rs.body_len);
        if (failed) json_object_set_new(step, "failed_check", json_string(failed));
        if (rs.status == 400 && !failed && soft_bad_city && detail)
            out = json_pack("{s:s}", "error", detail);
        else if (failed)
            turn_fail(t, "api_rejected",
                      "The weather API rejected the agent's token (HTTP %ld): the '%s' check failed — %s",
                      rs.status, failed, detail ? detail : ex);
        else
            turn_fail(t, "api_error", "The weather API answered HTTP %ld: %s", rs.status,
                      detail ? detail : ex);
        free(ex);
    } else {
        const json_t *c = json_object_get(body, "city");
        const char *cname = json_is_string(c) ? json_string_value(c) : city;
        char *text = forecast_text(json_object_get(body, "forecast"));
        char *who = caller_text(json_object_get(body, "caller"));
        json_object_set_new(step, "detail",
                            json_sprintf("GET %s with Authorization: Bearer TR — 200, caller: %s", url,
                                         who ? who : "?"));
        if (json_object_get(body, "caller")) json_object_set(step, "caller", json_object_get(body, "caller"));
        out = json_pack("{s:s, s:O?, s:s, s:s?}", "city", cname, "forecast",
                        json_object_get(body, "forecast"), "text", text, "caller", who);
        free(text);
        free(who);
    }
    json_decref(body);
    httpc_response_free(&rs);
end:
    free(url);
    free(corr);
    free(auth);
    /* the header held a token: wipe it before freeing */
    memset(header, 0, strlen(header));
    free(header);
    return out;
}

/* ---- direct mode ------------------------------------------------------------------ */

static bool is_stopword(const char *w, size_t n)
{
    static const char *const stop[] = {"Weather", "What", "Whats", "What's", "How", "Is", "Are", "The",
                                       "I", "Tell", "Me", "Please", "Show", "Forecast", "Today",
                                       "Tomorrow", "Hi", "Hello", "Can", "Could", "Will", "Get",
                                       "Give", "And", "Now", "In", "For", "At", "Of", "Current"};
    for (size_t i = 0; i < ARRAY_LEN(stop); i++)
        if (strlen(stop[i]) == n && strncmp(stop[i], w, n) == 0) return true;
    return false;
}

static bool word_char(char c) { return isalpha((unsigned char)c) || c == '-' || c == '\'' || c == '.' || (unsigned char)c >= 0x80; }

/* The run of capitalised words starting at p ("New York", "San Francisco"); 0 if p does not
 * start one. Stops before a lower-case word or punctuation. */
static size_t cap_phrase(const char *p)
{
    const char *s = p, *end = p;
    while (isupper((unsigned char)*s) && !is_stopword(s, strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-'"))) {
        while (word_char(*s)) s++;
        end = s;
        if (*s != ' ' || !isupper((unsigned char)s[1])) break;
        s++;
    }
    while (end > p && (end[-1] == '.' || end[-1] == '\'')) end--;
    return (size_t)(end - p);
}

/* The city of a message: a capitalised word or phrase after "in"/"for", else the last
 * capitalised word (stopwords aside), else the word after "in"/"for". Caller frees; NULL. */
static char *find_city(const char *msg)
{
    const char *after = NULL;
    for (const char *p = msg; *p; p++) {
        bool start = p == msg || !word_char(p[-1]);
        if (!start) continue;
        size_t kw = !strncasecmp(p, "in ", 3) ? 3 : !strncasecmp(p, "for ", 4) ? 4 : 0;
        if (!kw) continue;
        const char *q = p + kw;
        while (*q == ' ') q++;
        size_t n = cap_phrase(q);
        if (n) return xstrndup(q, n);
        if (!after && word_char(*q)) after = q;
    }
    const char *last = NULL;
    size_t last_n = 0;
    for (const char *p = msg; *p; p++) {
        if ((p == msg || !word_char(p[-1])) && isupper((unsigned char)*p)) {
            size_t n = cap_phrase(p);
            if (n) {
                last = p;
                last_n = n;
                p += n - 1;
            }
        }
    }
    if (last) return xstrndup(last, last_n);
    if (after) {
        size_t n = 0;
        while (word_char(after[n]) && after[n] != '.') n++;
        if (n == 0) return NULL;
        char *c = xstrndup(after, n);
        c[0] = (char)toupper((unsigned char)c[0]);
        return c;
    }
    return NULL;
}

static char *direct_answer(turn *t, const char *msg)
{
    double t0 = now_ms();
    char *city = find_city(msg);
    if (!city) {
        step_new(t, "Find the city", now_ms() - t0, "no city in \"%s\"", msg);
        turn_fail(t, "no_city", "Name a city, for example \"Weather in Dallas?\".");
        return NULL;
    }
    step_new(t, "Find the city", now_ms() - t0, "Direct mode (no LLM): city \"%s\" from the message", city);
    json_t *w = get_weather(t, city, false);
    char *answer = NULL;
    if (w) {
        const char *who = json_string_value(json_object_get(w, "caller"));
        answer = xasprintf("Weather in %s: %s.%s%s%s", json_string_value(json_object_get(w, "city")),
                           json_string_value(json_object_get(w, "text")),
                           who ? " (The weather API saw the call as " : "", who ? who : "", who ? ".)" : "");
    }
    json_decref(w);
    free(city);
    return answer;
}

/* ---- LLM mode ------------------------------------------------------------------------- */

static const char SYSTEM_PROMPT[] =
    "You are a helpful weather assistant. When the user asks about the weather in a place, call "
    "the get_weather tool with the city name, then answer in one or two sentences using the "
    "tool's result. Do not make up weather data.";

static json_t *tools_json(void)
{
    return json_pack("[{s:s, s:{s:s, s:s, s:{s:s, s:{s:{s:s, s:s}}, s:[s]}}}]", "type", "function",
                     "function", "name", "get_weather", "description",
                     "Get the current weather forecast for a city.", "parameters", "type", "object",
                     "properties", "city", "type", "string", "description", "The city name, e.g. Seattle",
                     "required", "city");
}

/* The city argument of a tool call: arguments as an object (Ollama) or a JSON string (OpenAI). */
static char *tool_city(const json_t *fn)
{
    const json_t *args = json_object_get(fn, "arguments");
    json_t *parsed = NULL;
    if (json_is_string(args)) args = parsed = json_loads(json_string_value(args), 0, NULL);
    const char *c = json_string_value(json_object_get(args, "city"));
    if (!c) c = json_string_value(json_object_get(args, "location"));
    char *city = c && *c ? xstrdup(c) : NULL;
    json_decref(parsed);
    return city;
}

/* One LLM call. Returns the assistant message (new ref) or NULL with t->error. */
static json_t *llm_call(turn *t, json_t *messages, int n)
{
    const chat_app *a = t->app;
    json_t *req = json_pack("{s:s, s:O, s:o}", "model", a->model, "messages", messages, "tools", tools_json());
    if (a->openai) json_object_set_new(req, "tool_choice", json_string("auto"));
    else json_object_set_new(req, "stream", json_false());
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    char *url = xasprintf("%s%s", a->llm, a->openai ? "/chat/completions" : "/api/chat");
    const char *hdrs[] = {"Content-Type: application/json", "Accept: application/json", NULL};
    httpc_request rq = {.method = "POST", .url = url, .headers = hdrs, .body = body,
                        .body_len = strlen(body), .timeout_ms = LLM_TIMEOUT, .ca_file = a->ca_file};
    httpc_response rs;
    char err[300];
    double t0 = now_ms();
    httpc_result r = httpc_do(&rq, &rs, err, sizeof err);
    double ms = now_ms() - t0;
    json_t *msg = NULL;
    char name[48];
    snprintf(name, sizeof name, "LLM step %d", n);
    json_t *step = step_new(t, name, ms, "POST %s (model %s)", url, a->model);
    if (r != HTTPC_OK) {
        step_failed(step);
        json_object_set_new(step, "error", json_string(err));
        turn_fail(t, "llm_unreachable",
                  "The LLM at %s is not reachable (%s). Switch Execution Mode to Direct to call the "
                  "weather API without the LLM, or start the LLM server (ollama serve) / pass --llm.",
                  a->llm, transport_reason(r, err));
        goto end;
    }
    json_t *resp = json_loadb(rs.body, rs.body_len, 0, NULL);
    json_object_set_new(step, "status", json_integer(rs.status));
    if (rs.status != 200) {
        step_failed(step);
        const char *d = json_detail(resp);
        char *ex = d ? NULL : excerpt(rs.body, rs.body_len);
        turn_fail(t, "llm_error",
                  "The LLM answered HTTP %ld: %s. Check the model name (--model, OLLAMA_MODEL; "
                  "ollama pull %s) or switch Execution Mode to Direct.",
                  rs.status, d ? d : ex, a->model);
        free(ex);
    } else {
        json_t *m = a->openai ? json_object_get(json_array_get(json_object_get(resp, "choices"), 0), "message")
                              : json_object_get(resp, "message");
        if (!json_is_object(m)) {
            step_failed(step);
            turn_fail(t, "llm_error", "The LLM's answer has no message (is %s an %s endpoint?).", a->llm,
                      a->openai ? "OpenAI-compatible" : "Ollama");
        } else {
            msg = json_incref(m);
        }
    }
    json_decref(resp);
    httpc_response_free(&rs);
end:
    free(url);
    free(body);
    return msg;
}

static char *llm_answer(turn *t, const char *user_msg)
{
    const chat_app *a = t->app;
    json_t *messages = json_pack("[{s:s, s:s}, {s:s, s:s}]", "role", "system", "content", SYSTEM_PROMPT,
                                 "role", "user", "content", user_msg);
    char *answer = NULL;
    for (int n = 1; n <= a->max_steps && !answer && !t->error; n++) {
        json_t *msg = llm_call(t, messages, n);
        if (!msg) break;
        json_t *step = json_array_get(t->trace, json_array_size(t->trace) - 1);
        json_t *calls = json_object_get(msg, "tool_calls");
        if (!json_is_array(calls) || json_array_size(calls) == 0) {
            const char *c = json_string_value(json_object_get(msg, "content"));
            json_object_set_new(step, "detail",
                                json_sprintf("%s — final answer%s", json_string_value(json_object_get(step, "detail")),
                                             t->calls ? "" : " without calling get_weather"));
            answer = xstrdup(c && *c ? c : "(the model gave an empty answer)");
            json_decref(msg);
            break;
        }
        /* The assistant turn goes back with its tool calls as they came (OpenAI matches the
         * results to their ids), and nothing else the server added. */
        const char *said = json_string_value(json_object_get(msg, "content"));
        json_array_append_new(messages, json_pack("{s:s, s:s, s:O}", "role", "assistant", "content",
                                                  said ? said : "", "tool_calls", calls));
        json_t *names = json_array();
        size_t i;
        json_t *call;
        json_array_foreach(calls, i, call) {
            json_t *fn = json_object_get(call, "function");
            const char *fname = json_string_value(json_object_get(fn, "name"));
            const char *id = json_string_value(json_object_get(call, "id"));
            char *city = tool_city(fn);
            json_t *result;
            if (!fname || strcmp(fname, "get_weather") != 0) {
                result = json_pack("{s:s}", "error", "unknown tool; the only tool is get_weather(city)");
            } else if (!city) {
                result = json_pack("{s:s}", "error", "get_weather needs a city");
            } else {
                json_array_append_new(names, json_sprintf("get_weather(city=\"%s\")", city));
                json_t *w = get_weather(t, city, true);
                if (!w) {
                    free(city);
                    break; /* identity or API failure: stop and report it as it is */
                }
                if (json_object_get(w, "error"))
                    result = json_incref(w); /* a city the API does not take: let the model retry */
                else
                    result = json_pack("{s:O, s:O?}", "city", json_object_get(w, "city"), "forecast",
                                       json_object_get(w, "forecast"));
                json_decref(w);
            }
            free(city);
            char *content = json_dumps(result, JSON_COMPACT);
            json_decref(result);
            json_t *tm = json_pack("{s:s, s:s}", "role", "tool", "content", content);
            free(content);
            if (a->openai) json_object_set_new(tm, "tool_call_id", json_string(id ? id : "call_0"));
            else json_object_set_new(tm, "tool_name", json_string(fname ? fname : ""));
            json_array_append_new(messages, tm);
        }
        json_object_set_new(step, "detail", json_sprintf("%s — %zu tool call%s",
                                                         json_string_value(json_object_get(step, "detail")),
                                                         json_array_size(calls), json_array_size(calls) == 1 ? "" : "s"));
        json_object_set(step, "tool_calls", names);
        json_decref(names);
        json_decref(msg);
    }
    if (!answer && !t->error)
        turn_fail(t, "max_steps", "The LLM gave no final answer within %d call%s (--max-steps).", a->max_steps,
                  a->max_steps == 1 ? "" : "s");
    json_decref(messages);
    return answer;
}

/* ---- HTTP --------------------------------------------------------------------------- */

static void security_headers(http_req *r, const chat_app *a)
{
    http_add_header(r, "X-Content-Type-Options", "nosniff");
    http_add_header(r, "Referrer-Policy", "no-referrer");
    /* msal's silent renewal may frame /redirect.html in this very page: same origin only */
    http_add_header(r, "X-Frame-Options", "SAMEORIGIN");
    http_add_header(r, "Content-Security-Policy", a->csp);
}

static void reply_error(http_req *r, int status, const char *code, const char *msg)
{
    http_add_header(r, "Cache-Control", "no-store");
    http_reply_json(r, status, json_pack("{s:s, s:s, s:s, s:[]}", "answer", "", "error", msg, "error_code", code,
                                         "trace"));
}

/* GET {llm}/api/tags (Ollama) or {llm}/models (OpenAI): is the LLM there? */
static bool llm_available(const chat_app *a)
{
    char *url = xasprintf("%s%s", a->llm, a->openai ? "/models" : "/api/tags");
    httpc_request rq = {.url = url, .timeout_ms = PROBE_TIMEOUT, .ca_file = a->ca_file};
    httpc_response rs;
    char err[200];
    bool ok = httpc_do(&rq, &rs, err, sizeof err) == HTTPC_OK && rs.status == 200;
    if (ok || rs.body) httpc_response_free(&rs);
    free(url);
    return ok;
}

static void api_status(http_req *r, const chat_app *a)
{
    http_add_header(r, "Cache-Control", "no-store");
    http_reply_json(r, 200, json_pack("{s:b, s:s, s:s, s:s, s:s, s:s}", "ollama_available", llm_available(a),
                                      "llm_endpoint", a->llm, "llm_protocol", a->openai ? "openai" : "ollama",
                                      "model", a->model, "tenant_id", a->tenant ? a->tenant : "", "agent_id",
                                      a->agent));
}

static void api_config(http_req *r, const chat_app *a)
{
    bool msal = a->vendor[0].data && a->vendor[1].data;
    bool obo = msal && a->authority && a->spa && a->blueprint;
    const char *why = !msal ? "msal-browser was not found: run `npm ci` in src/demo/web (scripts/deps.sh "
                              "build) or pass --web-dir"
                    : !a->authority ? "no --authority (or --tenant-id) for the sign-in"
                    : !a->spa       ? "no --spa-client-id (CLIENT_SPA_APP_ID) for the sign-in"
                    : !a->blueprint ? "no --blueprint-app-id (BLUEPRINT_APP_ID) for the sign-in scope"
                                    : NULL;
    json_t *o = json_pack("{s:s, s:s, s:s?, s:s?, s:s?, s:s?, s:b, s:s?, s:s, s:b, s:s, s:s, s:s, s:s, s:s, s:i}",
                          "agent_id", a->agent, "tenant_id", a->tenant ? a->tenant : "", "authority", a->authority,
                          "spa_client_id", a->spa, "blueprint_app_id", a->blueprint, "known_authority",
                          a->known_authority, "obo_available", obo, "obo_unavailable_reason", why,
                          "redirect_path", "/redirect.html", "llm_available", llm_available(a), "llm_endpoint",
                          a->llm, "llm_protocol", a->openai ? "openai" : "ollama", "model", a->model,
                          "api_name", a->api, "sidecar_url", a->sidecar, "max_steps", a->max_steps);
    json_object_set_new(o, "scopes", a->scope ? json_pack("[s]", a->scope) : json_array());
    json_object_set_new(o, "known_authorities",
                        a->known_authority ? json_pack("[s]", a->known_authority) : json_array());
    json_object_set_new(o, "weather_url", json_string(a->weather));
    http_add_header(r, "Cache-Control", "no-store");
    http_reply_json(r, 200, o);
}

static void api_chat(http_req *r, const chat_app *a)
{
    const char *ct = http_req_header(r, "Content-Type");
    if (!ct || strncasecmp(ct, "application/json", 16) != 0) {
        reply_error(r, 415, "bad_request", "POST /api/chat takes Content-Type: application/json.");
        return;
    }
    /* A page of another origin may not drive the agent with the user's browser. */
    const char *origin = http_req_header(r, "Origin"), *host = http_req_header(r, "Host");
    if (origin && host) {
        const char *o = strstr(origin, "://");
        if (!o || strcmp(o + 3, host) != 0) {
            reply_error(r, 403, "bad_origin", "Cross-origin requests to /api/chat are not allowed.");
            return;
        }
    }
    size_t len;
    const char *raw = http_req_body(r, &len);
    json_error_t je;
    json_t *in = json_loadb(raw, len, 0, &je);
    const char *msg = json_string_value(json_object_get(in, "message"));
    const char *mode = json_string_value(json_object_get(in, "mode"));
    const char *flow = json_string_value(json_object_get(in, "flow"));
    if (!mode) mode = "direct";
    if (!flow) flow = "autonomous";
    const char *bad = !json_is_object(in)                              ? "the body is not a JSON object"
                    : !msg || !*msg                                    ? "\"message\" is required"
                    : strlen(msg) > MAX_MESSAGE                        ? "\"message\" is too long"
                    : strcmp(mode, "direct") && strcmp(mode, "llm")    ? "\"mode\" is direct or llm"
                    : strcmp(flow, "autonomous") && strcmp(flow, "obo") ? "\"flow\" is autonomous or obo"
                                                                        : NULL;
    if (bad) {
        reply_error(r, 400, "bad_request", bad);
        json_decref(in);
        return;
    }
    turn t = {.app = a, .trace = json_array(), .flow = flow};
    util_guid(t.corr);
    if (!strcmp(flow, "obo")) {
        const char *authz = http_req_header(r, "Authorization");
        if (!authz || strncasecmp(authz, "Bearer ", 7) != 0 || !authz[7]) {
            reply_error(r, 401, "sign_in_required",
                        "On behalf of user needs a signed-in user: sign in first (the user's token goes "
                        "with the request as Authorization: Bearer).");
            json_decref(t.trace);
            json_decref(in);
            return;
        }
        t.user_token = authz + 7;
        json_t *s = step_new(&t, "User token (Tc) from the browser sign-in", 0,
                             "The signed-in user's access token for the blueprint's API arrived as "
                             "Authorization: Bearer; the sidecar validates it and exchanges it (OBO)");
        json_object_set_new(s, "token", token_json("Tc (user token from MSAL.js sign-in)", t.user_token));
    }
    double t0 = now_ms();
    char *answer = !strcmp(mode, "llm") ? llm_answer(&t, msg) : direct_answer(&t, msg);
    double ms = now_ms() - t0;
    json_t *out = json_pack("{s:s, s:o, s:s, s:s, s:f}", "answer", answer ? answer : "", "trace", t.trace,
                            "mode", mode, "flow", flow, "ms", round1(ms));
    if (t.error) {
        json_object_set_new(out, "error", json_string(t.error));
        json_object_set_new(out, "error_code", json_string(t.error_code));
        log_msg(LOG_WARN, "chat_failed", "%s/%s turn failed: %s", mode, flow, t.error_code);
    }
    http_add_header(r, "Cache-Control", "no-store");
    http_reply_json(r, t.error ? 502 : 200, out);
    free(answer);
    free(t.error);
    json_decref(in);
}

static void handle(http_req *r, void *ctx)
{
    const chat_app *a = ctx;
    const char *method = http_req_method(r), *path = http_req_path(r);
    double t0 = now_ms();
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    security_headers(r, a);
    if (!strcmp(path, "/healthz")) {
        http_reply_text(r, 200, "Healthy");
    } else if (!strcmp(path, "/api/chat")) {
        if (strcmp(method, "POST") != 0) {
            http_add_header(r, "Allow", "POST");
            reply_error(r, 405, "bad_request", "Use POST.");
        } else {
            api_chat(r, a);
        }
    } else if (!get) {
        http_add_header(r, "Allow", "GET");
        http_reply_text(r, 405, "method not allowed");
    } else if (!strcmp(path, "/api/status")) {
        api_status(r, a);
    } else if (!strcmp(path, "/api/config")) {
        api_config(r, a);
    } else if (util_str_starts_with(path, "/vendor/")) {
        const vendor_file *v = NULL;
        for (size_t i = 0; i < ARRAY_LEN(a->vendor); i++)
            if (!strcmp(path + 8, a->vendor[i].url_path) && a->vendor[i].data) v = &a->vendor[i];
        if (v) {
            http_add_header(r, "Cache-Control", "public, max-age=3600");
            http_reply(r, 200, "text/javascript; charset=utf-8", v->data, v->len);
        } else {
            http_reply_text(r, 404, "not found (msal-browser is not installed: npm ci in src/demo/web)");
        }
    } else {
        const char *want = !strcmp(path, "/") ? "/index.html" : path;
        const web_asset *w = NULL;
        for (size_t i = 0; i < chat_web_assets_count; i++)
            if (!strcmp(chat_web_assets[i].path, want)) w = &chat_web_assets[i];
        if (w) {
            http_add_header(r, "Cache-Control", "no-cache");
            http_reply(r, 200, w->content_type, (const char *)w->data, w->len);
        } else {
            http_reply_text(r, 404, "not found");
        }
    }
    log_request(method, path, http_reply_status(r), now_ms() - t0, NULL);
}

/* ---- start-up ---------------------------------------------------------------------- */

static bool lib_dir_ok(const char *dir)
{
    char *p = xasprintf("%s/msal-browser.min.js", dir);
    bool ok = access(p, R_OK) == 0;
    free(p);
    return ok;
}

/* msal-browser's lib/ directory: --web-dir (the web dir, a node_modules parent, or lib/ itself),
 * else src/demo/web/ of the source tree the binary was built in, else under the current dir. */
static char *find_lib_dir(const char *web_dir)
{
    static const char *const rel[] = {"node_modules/@azure/msal-browser/lib", "lib", "."};
    if (web_dir) {
        for (size_t i = 0; i < ARRAY_LEN(rel); i++) {
            char *d = xasprintf("%s/%s", web_dir, rel[i]);
            if (lib_dir_ok(d)) return d;
            free(d);
        }
        return NULL;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        /* build/agentid, build/asan/agentid, ...: walk up looking for src/demo/web */
        for (int up = 0; up < 4; up++) {
            char *slash = strrchr(exe, '/');
            if (!slash) break;
            *slash = '\0';
            char *d = xasprintf("%s/src/demo/web/node_modules/@azure/msal-browser/lib", exe[0] ? exe : "/");
            if (lib_dir_ok(d)) return d;
            free(d);
        }
    }
    static const char *const cwd[] = {"src/demo/web/node_modules/@azure/msal-browser/lib",
                                      "node_modules/@azure/msal-browser/lib"};
    for (size_t i = 0; i < ARRAY_LEN(cwd); i++)
        if (lib_dir_ok(cwd[i])) return xstrdup(cwd[i]);
    return NULL;
}

static const char USAGE[] =
    "usage: agentid chat-agent --agent-id GUID [options]\n"
    "\n"
    "The reference demo's chat agent and its web UI (http://127.0.0.1:3003). It gets its tokens\n"
    "from the sidecar and calls the weather API, directly or through an LLM's tool calls.\n"
    "\n"
    "  --listen ADDR:PORT       default " DEFAULT_LISTEN "\n"
    "  --agent-id GUID          the agent identity (AGENT_CLIENT_ID), required\n"
    "  --tenant-id GUID         shown in the header (TENANT_ID)\n"
    "  --sidecar URL            default " DEFAULT_SIDECAR " (SIDECAR_URL)\n"
    "  --api-name NAME          the sidecar's DownstreamApis name, default " DEFAULT_API "\n"
    "  --weather-url URL        default " DEFAULT_WEATHER " (WEATHER_API_URL)\n"
    "  --authority URL          for the browser sign-in, e.g. https://127.0.0.1:8443/<tenant>\n"
    "                           (AUTHORITY; default with --tenant-id: https://127.0.0.1:8443/<tenant>)\n"
    "  --spa-client-id GUID     the SPA app of the sign-in (CLIENT_SPA_APP_ID)\n"
    "  --blueprint-app-id GUID  sign-in scope api://<blueprint>/access_as_user (BLUEPRINT_APP_ID)\n"
    "  --llm URL                Ollama base URL, or an OpenAI-compatible one ending in /v1\n"
    "                           (OLLAMA_HOST; default " DEFAULT_LLM ")\n"
    "  --model NAME             default " DEFAULT_MODEL " (OLLAMA_MODEL)\n"
    "  --max-steps N            LLM calls per question, default 5\n"
    "  --web-dir DIR            where @azure/msal-browser is (default: src/demo/web/node_modules)\n";

static void app_free(chat_app *a)
{
    free(a->sidecar);
    free(a->weather);
    free(a->llm);
    free(a->authority);
    free(a->scope);
    free(a->known_authority);
    free(a->authority_origin);
    free(a->csp);
    free(a->ca_file);
    free(a->lib_dir);
    for (size_t i = 0; i < ARRAY_LEN(a->vendor); i++) free(a->vendor[i].data);
}

int chat_main(int argc, char **argv)
{
    chat_app a = {
        .listen = DEFAULT_LISTEN, .api = DEFAULT_API, .max_steps = DEFAULT_MAX_STEPS,
        .agent = env_or("AGENT_CLIENT_ID", NULL), .tenant = env_or("TENANT_ID", NULL),
        .spa = env_or("CLIENT_SPA_APP_ID", NULL), .blueprint = env_or("BLUEPRINT_APP_ID", NULL),
        .model = env_or("OLLAMA_MODEL", DEFAULT_MODEL),
        .vendor = {{.url_path = "msal-browser.min.js", .file = "msal-browser.min.js"},
                   {.url_path = "msal-redirect-bridge.min.js", .file = "redirect-bridge/msal-redirect-bridge.min.js"}},
    };
    const char *sidecar = env_or("SIDECAR_URL", DEFAULT_SIDECAR), *weather = env_or("WEATHER_API_URL", DEFAULT_WEATHER),
               *llm = env_or("OLLAMA_HOST", DEFAULT_LLM), *authority = env_or("AUTHORITY", NULL), *steps = NULL;
    for (int i = 1; i < argc; i++) {
        bool bad = false;
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if ((v = args_value(argc, argv, &i, "--listen", &bad))) a.listen = v;
        else if ((v = args_value(argc, argv, &i, "--sidecar", &bad))) sidecar = v;
        else if ((v = args_value(argc, argv, &i, "--api-name", &bad))) a.api = v;
        else if ((v = args_value(argc, argv, &i, "--weather-url", &bad))) weather = v;
        else if ((v = args_value(argc, argv, &i, "--agent-id", &bad))) a.agent = v;
        else if ((v = args_value(argc, argv, &i, "--tenant-id", &bad))) a.tenant = v;
        else if ((v = args_value(argc, argv, &i, "--authority", &bad))) authority = v;
        else if ((v = args_value(argc, argv, &i, "--spa-client-id", &bad))) a.spa = v;
        else if ((v = args_value(argc, argv, &i, "--blueprint-app-id", &bad))) a.blueprint = v;
        else if ((v = args_value(argc, argv, &i, "--llm", &bad))) llm = v;
        else if ((v = args_value(argc, argv, &i, "--model", &bad))) a.model = v;
        else if ((v = args_value(argc, argv, &i, "--max-steps", &bad))) steps = v;
        else if ((v = args_value(argc, argv, &i, "--web-dir", &bad))) a.web_dir = v;
        else return args_usage_error("chat-agent", bad ? "option %s needs a value" : "unknown option %s", argv[i]);
    }
    int rc = 2;
    http_server *srv = NULL;
    char *llm_url = NULL;
    if (!a.agent) {
        rc = args_usage_error("chat-agent", "%s", "--agent-id (or AGENT_CLIENT_ID) is required: the agent identity's app id");
        goto end;
    }
    if (!util_is_guid(a.agent)) {
        rc = args_usage_error("chat-agent", "--agent-id: '%s' is not a GUID", a.agent);
        goto end;
    }
    if (steps) {
        char *e;
        long n = strtol(steps, &e, 10);
        if (*e || n < 1 || n > 50) {
            rc = args_usage_error("chat-agent", "--max-steps: '%s' is not a number from 1 to 50", steps);
            goto end;
        }
        a.max_steps = (int)n;
    }
    if (!*a.api || strpbrk(a.api, "/?#")) {
        rc = args_usage_error("chat-agent", "--api-name: '%s' is not a DownstreamApis name", a.api);
        goto end;
    }
    /* Ollama's OLLAMA_HOST is often host:port without a scheme. */
    llm_url = strstr(llm, "://") ? xstrdup(llm) : xasprintf("http://%s", llm);
    if (!(a.sidecar = norm_url(sidecar))) {
        rc = args_usage_error("chat-agent", "--sidecar: '%s' is not an http(s) URL", sidecar);
        goto end;
    }
    if (!(a.weather = norm_url(weather))) {
        rc = args_usage_error("chat-agent", "--weather-url: '%s' is not an http(s) URL", weather);
        goto end;
    }
    if (!(a.llm = norm_url(llm_url))) {
        rc = args_usage_error("chat-agent", "--llm: '%s' is not an http(s) URL", llm);
        goto end;
    }
    a.openai = util_str_ends_with(a.llm, "/v1");
    if (!authority && a.tenant) a.authority = xasprintf("https://127.0.0.1:8443/%s", a.tenant);
    else if (authority && !(a.authority = norm_url(authority))) {
        rc = args_usage_error("chat-agent", "--authority: '%s' is not an http(s) URL", authority);
        goto end;
    }
    if (a.blueprint) a.scope = xasprintf("api://%s/access_as_user", a.blueprint);
    if (a.authority) {
        a.known_authority = url_origin(a.authority, true);
        a.authority_origin = url_origin(a.authority, false);
    }
    a.csp = xasprintf("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                      "connect-src 'self'%s%s; frame-src 'self'%s%s; object-src 'none'; base-uri 'none'; "
                      "frame-ancestors 'self'",
                      a.authority_origin ? " " : "", a.authority_origin ? a.authority_origin : "",
                      a.authority_origin ? " " : "", a.authority_origin ? a.authority_origin : "");
    const char *ca = getenv("SSL_CERT_FILE");
    if (ca && *ca) a.ca_file = xstrdup(ca);

    rc = 1;
    log_init("chat-agent", LOG_INFO);
    httpc_global_init();
    a.lib_dir = find_lib_dir(a.web_dir);
    if (a.web_dir && !a.lib_dir) {
        fprintf(stderr, "agentid chat-agent: --web-dir %s: no msal-browser.min.js there (nor in "
                        "node_modules/@azure/msal-browser/lib or lib/ below it)\n", a.web_dir);
        goto end;
    }
    for (size_t i = 0; a.lib_dir && i < ARRAY_LEN(a.vendor); i++) {
        char *p = xasprintf("%s/%s", a.lib_dir, a.vendor[i].file);
        a.vendor[i].data = util_read_file(p, VENDOR_MAX, &a.vendor[i].len);
        if (!a.vendor[i].data) log_msg(LOG_WARN, "vendor_missing", "cannot read %s: %s", p, strerror(errno));
        free(p);
    }
    if (!a.lib_dir)
        log_msg(LOG_WARN, "vendor_missing",
                "msal-browser not found (run `npm ci` in src/demo/web, or pass --web-dir): "
                "sign-in for the on-behalf-of flow is off");
    sigset_t set;
    args_block_stop_signals(&set, false);
    char err[300];
    http_server_opts so = {.listen = a.listen, .thread_per_connection = true, .max_body = MAX_BODY,
                           .timeout_s = 300};
    if (!(srv = http_server_start(&so, handle, &a, err, sizeof err))) {
        fprintf(stderr, "agentid chat-agent: %s: %s\n", a.listen, err);
        goto end;
    }
    const char *colon = strrchr(a.listen, ':');
    log_msg(LOG_INFO, "listening",
            "chat agent %s on http://%.*s:%u: sidecar %s (api %s), weather API %s, LLM %s (%s, model %s), "
            "msal-browser %s",
            a.agent, (int)(colon - a.listen), a.listen, http_server_port(srv), a.sidecar, a.api, a.weather, a.llm,
            a.openai ? "openai" : "ollama", a.model, a.lib_dir ? a.lib_dir : "not found");
    args_wait_for_stop(&set);
    rc = 0;
end:
    http_server_stop(srv);
    free(llm_url);
    app_free(&a);
    return rc;
}
