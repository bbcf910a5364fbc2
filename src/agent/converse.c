/* converse — see converse.h. OpenAI chat completions with tools, streamed as server-sent
 * events ("data: {chunk}" ... "data: [DONE]"); Ollama's OpenAI-compatible API speaks the same. */
#include "agent/converse.h"

#include "core/http_client.h"
#include "core/util.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_STEPS   8
#define LLM_TIMEOUT_MS  300000     /* a local model can take minutes */
#define MAX_ERROR_BODY  4096
#define MAX_LINE        (1024 * 1024)

/* ---- tools ------------------------------------------------------------------------------- */

static char *function_name(const char *server, const char *tool, bool prefixed)
{
    char *s = prefixed ? xasprintf("%s__%s", server, tool) : xstrdup(tool);
    for (char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-') *p = '_';
    if (strlen(s) > 64) s[64] = '\0';
    return s;
}

/* defs: OpenAI tool definitions; map: function name -> [server index, tool name]. */
static void build_tools(mcpc **servers, size_t n, FILE *trace, json_t **defs, json_t **map)
{
    *defs = json_array();
    *map = json_object();
    for (size_t i = 0; i < n; i++) {
        char err[512];
        json_t *tools = mcpc_list_tools(servers[i], err, sizeof err);
        if (!tools) {
            if (trace) fprintf(trace, "  ! %s\n", err);
            continue;
        }
        if (!json_array_size(tools) && trace)
            fprintf(trace, "  ! %s offers no tools to this caller: its authorization rules may hide them\n",
                    mcpc_name(servers[i]));
        size_t k;
        json_t *t;
        json_array_foreach(tools, k, t) {
            const char *name = json_string_value(json_object_get(t, "name"));
            if (!name) continue;
            char *fn = function_name(mcpc_name(servers[i]), name, n > 1);
            json_t *schema = json_object_get(t, "inputSchema");
            json_t *f = json_pack("{s:s, s:s}", "name", fn, "description",
                                  json_string_value(json_object_get(t, "description"))
                                      ? json_string_value(json_object_get(t, "description")) : "");
            json_object_set_new(f, "parameters", json_is_object(schema) ? json_deep_copy(schema)
                                                                        : json_pack("{s:s}", "type", "object"));
            json_array_append_new(*defs, json_pack("{s:s, s:o}", "type", "function", "function", f));
            json_object_set_new(*map, fn, json_pack("[I, s]", (json_int_t)i, name));
            free(fn);
        }
        json_decref(tools);
    }
}

json_t *converse_tools(mcpc **servers, size_t n, FILE *trace)
{
    json_t *defs, *map;
    build_tools(servers, n, trace, &defs, &map);
    json_decref(map);
    return defs;
}

/* ---- one LLM call ------------------------------------------------------------------------ */

typedef struct {
    FILE *out;
    char *content;            /* the text so far */
    size_t len, cap;
    json_t *calls;            /* tool calls, by index: [{id, name, arguments}] */
    char *line;               /* a partial SSE line */
    size_t line_len, line_cap;
    bool done, too_long;
} stream_state;

static void append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        *cap = (*len + n + 1) * 2;
        *buf = xrealloc(*buf, *cap);
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
}

/* One delta: text to out, tool call pieces gathered by their index. */
static void take_delta(stream_state *st, const json_t *msg, bool whole)
{
    const char *text = json_string_value(json_object_get(msg, "content"));
    if (text && *text) {
        size_t n = strlen(text);
        append(&st->content, &st->len, &st->cap, text, n);
        fwrite(text, 1, n, st->out);
        fflush(st->out);
    }
    size_t i;
    json_t *tc;
    json_array_foreach(json_object_get(msg, "tool_calls"), i, tc) {
        json_t *idx = json_object_get(tc, "index");
        size_t at = whole || !json_is_integer(idx) ? json_array_size(st->calls) : (size_t)json_integer_value(idx);
        if (at > 128) continue;
        while (json_array_size(st->calls) <= at)
            json_array_append_new(st->calls, json_pack("{s:s, s:s, s:s}", "id", "", "name", "", "arguments", ""));
        json_t *c = json_array_get(st->calls, at), *fn = json_object_get(tc, "function");
        const char *id = json_string_value(json_object_get(tc, "id"));
        const char *name = json_string_value(json_object_get(fn, "name"));
        json_t *args = json_object_get(fn, "arguments");
        if (id && *id) json_object_set_new(c, "id", json_string(id));
        if (name && *name) {
            char *joined = xasprintf("%s%s", json_string_value(json_object_get(c, "name")), name);
            json_object_set_new(c, "name", json_string(joined));
            free(joined);
        }
        char *more = json_is_string(args) ? xstrdup(json_string_value(args))
                     : json_is_object(args) ? json_dumps(args, JSON_COMPACT) : NULL;
        if (more) {
            char *joined = xasprintf("%s%s", json_string_value(json_object_get(c, "arguments")), more);
            json_object_set_new(c, "arguments", json_string(joined));
            free(joined);
            free(more);
        }
    }
}

static void take_line(stream_state *st, char *line)
{
    size_t n = strlen(line);
    if (n && line[n - 1] == '\r') line[--n] = '\0';
    if (strncmp(line, "data:", 5) != 0) return;
    const char *v = line + 5;
    while (*v == ' ') v++;
    if (!strcmp(v, "[DONE]")) {
        st->done = true;
        return;
    }
    json_t *chunk = json_loads(v, 0, NULL);
    json_t *choice = json_array_get(json_object_get(chunk, "choices"), 0);
    if (choice) take_delta(st, json_object_get(choice, "delta"), false);
    json_decref(chunk);
}

/* Bytes of the event stream: complete lines go to take_line, a partial one waits. */
static void take_bytes(stream_state *st, const char *buf, size_t n)
{
    while (n) {
        const char *nl = memchr(buf, '\n', n);
        size_t k = nl ? (size_t)(nl - buf) : n;
        if (st->line_len + k <= MAX_LINE) append(&st->line, &st->line_len, &st->line_cap, buf, k);
        else st->too_long = true;
        if (!nl) return;
        if (st->line) take_line(st, st->line);
        st->line_len = 0;
        if (st->line) st->line[0] = '\0';
        buf += k + 1;
        n -= k + 1;
    }
}

/* Why the LLM route said no, as a sentence. */
static void llm_refusal(const converse_opts *o, long status, const char *headers, const char *body, char *err,
                        size_t errlen)
{
    char reason[300];
    httpc_refusal(headers, body, strlen(body), reason, sizeof reason);
    if (status == 401)
        snprintf(err, errlen, "the gateway refused the LLM token (HTTP 401): %s", reason);
    else if (status == 403)
        snprintf(err, errlen, "the gateway's authorization rules refused the LLM call (HTTP 403): %s", reason);
    else if (status == 502 || status == 503 || status == 504)
        snprintf(err, errlen,
                 "the LLM behind %s is unreachable (HTTP %ld: %s); point the gateway's /llm route at a "
                 "running LLM (agentid up --profile gateway --llm URL)", o->url, status, reason);
    else
        snprintf(err, errlen, "the LLM at %s answered HTTP %ld: %s", o->url, status, reason);
}

/* POST the conversation; the assistant's message (content and tool_calls) in *msg. */
static int ask_llm(const converse_opts *o, json_t *messages, json_t *tools, json_t **msg, char *err, size_t errlen)
{
    json_t *req = json_pack("{s:O, s:b}", "messages", messages, "stream", 1);
    if (o->model) json_object_set_new(req, "model", json_string(o->model));
    if (json_array_size(tools)) json_object_set(req, "tools", tools);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    char *auth = o->token ? xasprintf("Authorization: Bearer %s", o->token) : NULL;
    const char *hdrs[] = {"Content-Type: application/json", "Accept: text/event-stream, application/json", auth, NULL};
    httpc_request rq = {.method = "POST", .url = o->url, .headers = hdrs, .body = body, .body_len = strlen(body),
                        .timeout_ms = LLM_TIMEOUT_MS, .ca_file = o->ca_file};
    httpc_stream *hs = NULL;
    char why[256], buf[16384];
    int rc = -1;
    stream_state st = {.out = o->out, .calls = json_array()};
    httpc_result hr = httpc_stream_open(&rq, &hs, why, sizeof why);
    if (hr != HTTPC_OK) {
        snprintf(err, errlen, "the LLM route %s cannot be reached (%s): is the gateway running? "
                 "(agentid up --profile gateway)", o->url, why);
        goto end;
    }
    long status = httpc_stream_status(hs), n;
    const char *headers = httpc_stream_headers(hs);
    bool sse = headers && strcasestr(headers, "content-type: text/event-stream");
    if (status != 200 || !sse) {
        char *all = NULL;
        size_t len = 0, cap = 0;
        while ((n = httpc_stream_read(hs, buf, sizeof buf)) > 0 && len < (status == 200 ? 8u << 20 : MAX_ERROR_BODY))
            append(&all, &len, &cap, buf, (size_t)n);
        if (!all) append(&all, &len, &cap, "", 0);
        if (status != 200) {
            llm_refusal(o, status, headers, all, err, errlen);
        } else {                                   /* a whole JSON answer: stream was ignored */
            json_t *j = json_loads(all, 0, NULL);
            json_t *m = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
            if (m) {
                take_delta(&st, m, true);
                rc = 0;
            } else {
                snprintf(err, errlen, "the LLM at %s answered without a message", o->url);
            }
            json_decref(j);
        }
        free(all);
        goto end;
    }
    while (!st.done && (n = httpc_stream_read(hs, buf, sizeof buf)) > 0) take_bytes(&st, buf, (size_t)n);
    if (n < 0 && !st.done) {
        httpc_stream_error(hs, why, sizeof why);
        snprintf(err, errlen, "the LLM's answer broke off: %s", why);
        goto end;
    }
    rc = 0;
end:
    if (rc == 0) {
        *msg = json_pack("{s:s, s:s}", "role", "assistant", "content", st.content ? st.content : "");
        if (json_array_size(st.calls)) {
            json_t *calls = json_array();
            size_t i;
            json_t *c;
            json_array_foreach(st.calls, i, c) {
                const char *id = json_string_value(json_object_get(c, "id"));
                char *gen = *id ? NULL : xasprintf("call_%zu", i);
                json_array_append_new(calls, json_pack("{s:s, s:s, s:{s:O, s:O}}", "id", gen ? gen : id, "type",
                                                       "function", "function", "name", json_object_get(c, "name"),
                                                       "arguments", json_object_get(c, "arguments")));
                free(gen);
            }
            json_object_set_new(*msg, "tool_calls", calls);
        }
    }
    httpc_stream_close(hs);
    json_decref(st.calls);
    free(st.content);
    free(st.line);
    if (auth) explicit_bzero(auth, strlen(auth));
    free(auth);
    free(body);
    return rc;
}

/* Run one tool call; the text for the "tool" message (caller frees). */
static char *run_tool(const converse_opts *o, mcpc **servers, size_t n, json_t *map, const json_t *call)
{
    const json_t *fn = json_object_get(call, "function");
    const char *name = json_string_value(json_object_get(fn, "name"));
    const char *argtext = json_string_value(json_object_get(fn, "arguments"));
    json_t *where = json_object_get(map, name ? name : "");
    if (!where) {
        if (o->trace) fprintf(o->trace, "  ! the LLM called %s, which no MCP server offers\n", name ? name : "(no name)");
        return xasprintf("error: there is no tool named %s", name ? name : "(none)");
    }
    size_t idx = (size_t)json_integer_value(json_array_get(where, 0));
    const char *tool = json_string_value(json_array_get(where, 1));
    json_t *args = argtext && *argtext ? json_loads(argtext, 0, NULL) : json_object();
    if (!json_is_object(args)) {
        json_decref(args);
        if (o->trace) fprintf(o->trace, "  ! %s: the LLM's arguments are not a JSON object\n", name);
        return xstrdup("error: the arguments are not a JSON object");
    }
    char *shown = json_dumps(args, JSON_COMPACT);
    if (o->trace) {
        fprintf(o->trace, "  \u2192 tool %s on %s %s\n", tool, mcpc_name(servers[idx < n ? idx : 0]), shown);
        fflush(o->trace);
    }
    free(shown);
    char err[512], *text;
    json_t *r = idx < n ? mcpc_call_tool(servers[idx], tool, args, err, sizeof err) : NULL;
    if (!r) {
        if (o->trace) fprintf(o->trace, "  ! %s\n", err);
        text = xasprintf("error: %s", err);
    } else {
        char *t = mcpc_result_text(r);
        bool failed = json_is_true(json_object_get(r, "isError"));
        if (o->trace) fprintf(o->trace, "  \u2190 %s%zu characters\n", failed ? "error, " : "", strlen(t));
        text = failed ? xasprintf("error: %s", t) : xstrdup(t);
        free(t);
    }
    json_decref(r);
    json_decref(args);
    return text;
}

int converse_turn(const converse_opts *o, json_t *messages, mcpc **servers, size_t n, const char *prompt,
                  char **answer, char *err, size_t errlen)
{
    int steps = o->max_steps > 0 ? o->max_steps : DEFAULT_STEPS;
    json_t *defs, *map;
    build_tools(servers, n, o->trace, &defs, &map);
    json_array_append_new(messages, json_pack("{s:s, s:s}", "role", "user", "content", prompt));
    int rc = -1;
    *answer = NULL;
    for (int step = 0; step < steps; step++) {
        json_t *msg = NULL;
        if (ask_llm(o, messages, defs, &msg, err, errlen) != 0) break;
        json_array_append(messages, msg);
        json_t *calls = json_object_get(msg, "tool_calls");
        if (!json_array_size(calls)) {
            *answer = xstrdup(json_string_value(json_object_get(msg, "content")));
            json_decref(msg);
            rc = 0;
            break;
        }
        if (json_string_length(json_object_get(msg, "content"))) fputc('\n', o->out);
        size_t i;
        json_t *c;
        json_array_foreach(calls, i, c) {
            char *text = run_tool(o, servers, n, map, c);
            json_array_append_new(messages, json_pack("{s:s, s:O, s:s}", "role", "tool", "tool_call_id",
                                                      json_object_get(c, "id"), "content", text));
            free(text);
        }
        json_decref(msg);
        if (step + 1 == steps)
            snprintf(err, errlen, "the LLM was still calling tools after %d steps (the step limit)", steps);
    }
    json_decref(defs);
    json_decref(map);
    return rc;
}
