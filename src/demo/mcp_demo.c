/* mcp_demo — see mcp_demo.h.
 *
 * Each POST /mcp carries one JSON-RPC message; the answer is built as a jansson object and sent
 * as application/json. Nothing is kept between requests, so handlers share no state and need
 * no locks. The tools are a table per kind: name, description, input schema, and a function
 * that turns the arguments into a result (or a protocol error for arguments of the wrong shape).
 */
#include "demo/mcp_demo.h"

#include "core/args.h"
#include "core/http_server.h"
#include "core/log.h"
#include "core/util.h"
#include "demo/weather.h"

#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define RPC_PARSE_ERROR      (-32700)
#define RPC_INVALID_REQUEST  (-32600)
#define RPC_METHOD_NOT_FOUND (-32601)
#define RPC_INVALID_PARAMS   (-32602)
#define MAX_BODY             (64 * 1024)

static const char USAGE[] =
    "usage: agentid mcp-demo --kind weather|clock [--listen ADDR:PORT]\n"
    "\n"
    "A demo MCP server (Streamable HTTP at /mcp, JSON answers, no authentication: put it behind\n"
    "`agentid gateway`). weather: get_forecast {city}; clock: get_time {timezone?}, echo {text}.\n"
    "  --listen ADDR:PORT   default 127.0.0.1:5201 (weather), 127.0.0.1:5202 (clock)\n";

/* The newest first: what initialize answers when the client asks for one we do not know. */
static const char *const VERSIONS[] = {"2025-06-18", "2025-03-26", "2024-11-05", NULL};

/* A tool's outcome: a result object, or a JSON-RPC error (code != 0, message). */
typedef struct {
    json_t *result;
    int code;
    char *message;
} outcome;

typedef outcome (*tool_fn)(const json_t *args);

typedef struct {
    const char *name, *title, *description;
    const char *schema;   /* JSON Schema of the arguments, as JSON text */
    tool_fn fn;
} tool;

typedef struct {
    const char *kind;
    const tool *tools;
    size_t n_tools;
} server;

static outcome rpc_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static outcome rpc_error(int code, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return (outcome){.code = code, .message = xstrdup(buf)};
}

/* A tool result: one text block, structured content if any, isError as given. */
static outcome tool_result(const char *text, json_t *structured, bool is_error)
{
    json_t *r = json_pack("{s:[{s:s, s:s}], s:b}", "content", "type", "text", "text", text, "isError", is_error);
    if (structured) json_object_set_new(r, "structuredContent", structured);
    return (outcome){.result = r};
}

/* A string argument: *out NULL if absent; false (with *o set) if present but not a string. */
static bool str_arg(const json_t *args, const char *name, bool required, const char **out, outcome *o)
{
    const json_t *v = json_object_get(args, name);
    *out = json_string_value(v);
    if ((v && !*out) || (!v && required)) {
        *o = rpc_error(RPC_INVALID_PARAMS, "Invalid params: arguments.%s %s", name,
                       v ? "must be a string" : "is required");
        return false;
    }
    return true;
}

/* ---- weather ---------------------------------------------------------------------------- */

static outcome get_forecast(const json_t *args)
{
    outcome o;
    const char *city;
    if (!str_arg(args, "city", true, &city, &o)) return o;
    if (!weather_city_ok(city))
        return tool_result("city must be 1-64 letters, spaces, '-' or '.' (e.g. \"Dallas\")", NULL, true);
    json_t *f = weather_forecast(city);
    char *text = xasprintf("%s: %s, %lld °C (%lld °F), humidity %lld %%, wind %lld km/h", city,
                           json_string_value(json_object_get(f, "condition")),
                           json_integer_value(json_object_get(f, "temperature_c")),
                           json_integer_value(json_object_get(f, "temperature_f")),
                           json_integer_value(json_object_get(f, "humidity")),
                           json_integer_value(json_object_get(f, "wind_kph")));
    json_object_set_new(f, "city", json_string(city));
    o = tool_result(text, f, false);
    free(text);
    return o;
}

static const tool WEATHER_TOOLS[] = {
    {"get_forecast", "Weather forecast",
     "The current weather for a city: condition, temperature (°C and °F), humidity and wind. "
     "Synthetic demo data, the same for the same city.",
     "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\",\"description\":"
     "\"City name, e.g. Dallas\"}},\"required\":[\"city\"]}",
     get_forecast},
};

/* ---- clock ------------------------------------------------------------------------------ */

/* "UTC", "Z", "GMT", "+05:30", "-08", "UTC+9", "+0530": minutes east of UTC. */
static bool parse_offset(const char *s, int *minutes)
{
    if (!strncasecmp(s, "UTC", 3) || !strncasecmp(s, "GMT", 3)) s += 3;
    else if (!strcasecmp(s, "Z")) s++;
    if (!*s) return *minutes = 0, true;
    if (*s != '+' && *s != '-') return false;
    int sign = *s++ == '-' ? -1 : 1;
    size_t n = strspn(s, "0123456789");
    int h, m = 0;
    if (n == 1 || n == 2) {
        h = atoi(s);
        s += n;
        if (*s == ':') {
            if (strspn(s + 1, "0123456789") != 2 || s[3]) return false;
            m = atoi(s + 1);
        } else if (*s) return false;
    } else if (n == 4 && !s[4]) {
        h = (s[0] - '0') * 10 + (s[1] - '0');
        m = (s[2] - '0') * 10 + (s[3] - '0');
    } else {
        return false;
    }
    if (h > 14 || m > 59 || h * 60 + m > 14 * 60) return false;
    *minutes = sign * (h * 60 + m);
    return true;
}

static outcome get_time(const json_t *args)
{
    outcome o;
    const char *tz;
    if (!str_arg(args, "timezone", false, &tz, &o)) return o;
    int off = 0;
    if (tz && !parse_offset(tz, &off))
        return tool_result("timezone must be a UTC offset such as +09:00, -05:00 or UTC "
                           "(zone names are not supported)", NULL, true);
    time_t t = (time_t)util_now() + off * 60;
    struct tm tm;
    gmtime_r(&t, &tm);
    char when[96], zone[16];
    if (off) snprintf(zone, sizeof zone, "%c%02d:%02d", off < 0 ? '-' : '+', abs(off) / 60, abs(off) % 60);
    else snprintf(zone, sizeof zone, "Z");
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d%s", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, zone);
    char *text = xasprintf("It is %s (UTC%s).", when, off ? zone : "");
    o = tool_result(text, json_pack("{s:s, s:i, s:I}", "time", when, "utc_offset_minutes", off,
                                    "unix", (json_int_t)util_now()), false);
    free(text);
    return o;
}

static outcome echo(const json_t *args)
{
    outcome o;
    const char *text;
    if (!str_arg(args, "text", true, &text, &o)) return o;
    return tool_result(text, NULL, false);
}

static const tool CLOCK_TOOLS[] = {
    {"get_time", "Current time",
     "The current date and time, in UTC or at a UTC offset.",
     "{\"type\":\"object\",\"properties\":{\"timezone\":{\"type\":\"string\",\"description\":"
     "\"A UTC offset such as +09:00 or -05:00; default UTC\"}}}",
     get_time},
    {"echo", "Echo", "Answers the text it is given.",
     "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}},\"required\":[\"text\"]}",
     echo},
};

/* ---- JSON-RPC --------------------------------------------------------------------------- */

static json_t *tools_list(const server *s)
{
    json_t *list = json_array();
    for (size_t i = 0; i < s->n_tools; i++) {
        const tool *t = &s->tools[i];
        json_t *schema = json_loads(t->schema, 0, NULL);
        json_array_append_new(list, json_pack("{s:s, s:s, s:s, s:o}", "name", t->name, "title", t->title,
                                              "description", t->description, "inputSchema", schema));
    }
    return json_pack("{s:o}", "tools", list);
}

static outcome dispatch(const server *s, const char *method, const json_t *params)
{
    if (params && !json_is_object(params)) return rpc_error(RPC_INVALID_PARAMS, "Invalid params: must be an object");
    if (!strcmp(method, "ping")) return (outcome){.result = json_object()};
    if (!strcmp(method, "initialize")) {
        const char *want = json_string_value(json_object_get(params, "protocolVersion"));
        if (!want) return rpc_error(RPC_INVALID_PARAMS, "Invalid params: initialize needs params.protocolVersion");
        const char *v = VERSIONS[0];
        for (size_t i = 0; VERSIONS[i]; i++)
            if (!strcmp(want, VERSIONS[i])) v = VERSIONS[i];
        char *name = xasprintf("agentid-mcp-%s", s->kind);
        json_t *r = json_pack("{s:s, s:{s:{s:b}}, s:{s:s, s:s}, s:s}", "protocolVersion", v, "capabilities",
                              "tools", "listChanged", 0, "serverInfo", "name", name, "version",
                              AGENTID_VERSION, "instructions",
                              !strcmp(s->kind, "weather") ? "Weather forecasts for cities (demo data)."
                                                          : "The current time, and an echo tool.");
        free(name);
        return (outcome){.result = r};
    }
    if (!strcmp(method, "tools/list")) return (outcome){.result = tools_list(s)};
    if (!strcmp(method, "tools/call")) {
        const char *name = json_string_value(json_object_get(params, "name"));
        const json_t *args = json_object_get(params, "arguments");
        if (!name) return rpc_error(RPC_INVALID_PARAMS, "Invalid params: tools/call needs params.name");
        if (args && !json_is_object(args)) return rpc_error(RPC_INVALID_PARAMS, "Invalid params: arguments must be an object");
        for (size_t i = 0; i < s->n_tools; i++)
            if (!strcmp(name, s->tools[i].name)) return s->tools[i].fn(args);
        return rpc_error(RPC_INVALID_PARAMS, "Unknown tool: %.100s", name);
    }
    return rpc_error(RPC_METHOD_NOT_FOUND, "Method not found: %.100s", method);
}

static void reply_rpc_error(http_req *r, int status, const json_t *id, int code, const char *message)
{
    http_reply_json(r, status, json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc", "2.0", "id",
                                         id ? id : json_null(), "error", "code", code, "message", message));
}

static bool has_token(const char *list, const char *want)
{
    if (!list) return false;
    size_t n = strlen(want);
    for (const char *p = list; (p = strcasestr(p, want)); p += n) {
        bool start = p == list || p[-1] == ',' || p[-1] == ' ';
        bool end = !p[n] || p[n] == ',' || p[n] == ';' || p[n] == ' ';
        if (start && end) return true;
    }
    return false;
}

static void handle_mcp(const server *s, http_req *r)
{
    const char *method = http_req_method(r);
    if (strcmp(method, "POST") != 0) {
        /* No server-initiated stream (GET) and no sessions to end (DELETE). */
        http_add_header(r, "Allow", "POST");
        reply_rpc_error(r, 405, NULL, RPC_INVALID_REQUEST, "Method Not Allowed: POST one JSON-RPC message");
        return;
    }
    const char *accept = http_req_header(r, "Accept");
    if (accept && !has_token(accept, "application/json") && !has_token(accept, "*/*") &&
        !has_token(accept, "application/*")) {
        reply_rpc_error(r, 406, NULL, RPC_INVALID_REQUEST, "Not Acceptable: the answer is application/json");
        return;
    }
    if (!has_token(http_req_header(r, "Content-Type"), "application/json")) {
        reply_rpc_error(r, 415, NULL, RPC_INVALID_REQUEST, "Unsupported Media Type: Content-Type must be application/json");
        return;
    }
    const char *pv = http_req_header(r, "MCP-Protocol-Version");
    bool known = !pv;
    for (size_t i = 0; pv && VERSIONS[i]; i++) known |= !strcmp(pv, VERSIONS[i]);
    if (!known) {
        reply_rpc_error(r, 400, NULL, RPC_INVALID_REQUEST, "Bad Request: unsupported MCP-Protocol-Version");
        return;
    }
    size_t len;
    const char *body = http_req_body(r, &len);
    json_t *msg = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    if (!msg) {
        reply_rpc_error(r, 400, NULL, RPC_PARSE_ERROR, "Parse error");
        return;
    }
    const json_t *id = json_object_get(msg, "id");
    const char *m = json_string_value(json_object_get(msg, "method"));
    const char *ver = json_string_value(json_object_get(msg, "jsonrpc"));
    bool id_ok = !id || json_is_string(id) || json_is_integer(id);
    if (!json_is_object(msg) || !ver || strcmp(ver, "2.0") != 0 || !id_ok ||
        (!m && !json_object_get(msg, "result") && !json_object_get(msg, "error"))) {
        reply_rpc_error(r, 400, id_ok ? id : NULL, RPC_INVALID_REQUEST,
                        json_is_array(msg) ? "Invalid Request: batches are not supported"
                                           : "Invalid Request: expected one JSON-RPC 2.0 message");
    } else if (!id || !m) {
        /* A notification (notifications/initialized, cancelled) or a response: nothing to say. */
        http_reply(r, 202, "text/plain", "", 0);
    } else {
        outcome o = dispatch(s, m, json_object_get(msg, "params"));
        if (o.code) reply_rpc_error(r, 200, id, o.code, o.message);
        else http_reply_json(r, 200, json_pack("{s:s, s:O, s:o}", "jsonrpc", "2.0", "id", id, "result", o.result));
        free(o.message);
    }
    json_decref(msg);
}

static void handle(http_req *r, void *ctx)
{
    const server *s = ctx;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    const char *path = http_req_path(r), *method = http_req_method(r);
    if (!strcmp(path, "/healthz")) http_reply_text(r, 200, "Healthy");
    else if (!strcmp(path, "/mcp")) handle_mcp(s, r);
    else http_reply_json(r, 404, json_pack("{s:s, s:s}", "error", "not_found", "message", "the MCP endpoint is /mcp"));
    clock_gettime(CLOCK_MONOTONIC, &b);
    log_request(method, path, http_reply_status(r),
                (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6,
                http_req_header(r, "client-request-id"));
}

int mcp_demo_main(int argc, char **argv)
{
    const char *listen = NULL, *kind = NULL;
    for (int i = 1; i < argc; i++) {
        bool missing = false;
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if ((v = args_value(argc, argv, &i, "--listen", &missing))) listen = v;
        else if ((v = args_value(argc, argv, &i, "--kind", &missing))) kind = v;
        else return args_usage_error("mcp-demo", missing ? "option %s needs a value" : "unknown option %s", argv[i]);
    }
    server s;
    if (!kind) return args_usage_error("mcp-demo", "%s--kind weather|clock is required", "");
    if (!strcmp(kind, "weather")) s = (server){"weather", WEATHER_TOOLS, ARRAY_LEN(WEATHER_TOOLS)};
    else if (!strcmp(kind, "clock")) s = (server){"clock", CLOCK_TOOLS, ARRAY_LEN(CLOCK_TOOLS)};
    else return args_usage_error("mcp-demo", "--kind %s: expected weather or clock", kind);
    if (!listen) listen = !strcmp(kind, "weather") ? "127.0.0.1:5201" : "127.0.0.1:5202";

    char component[32], err[512];
    snprintf(component, sizeof component, "mcp-%s", s.kind);
    log_init(component, LOG_INFO);
    sigset_t set;
    args_block_stop_signals(&set, false);
    http_server_opts so = {.listen = listen, .max_body = MAX_BODY};
    http_server *srv = http_server_start(&so, handle, &s, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "agentid mcp-demo: %s: %s\n", listen, err);
        return 1;
    }
    log_msg(LOG_INFO, "listening", "MCP server '%s' on http://%s/mcp (%zu tools)", s.kind, listen, s.n_tools);
    args_wait_for_stop(&set);
    http_server_stop(srv);
    return 0;
}
