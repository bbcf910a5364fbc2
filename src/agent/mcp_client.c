/* mcp_client — see mcp_client.h. */
#include "agent/mcp_client.h"

#include "core/http_client.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PROTOCOL_VERSION "2025-06-18"
#define TIMEOUT_MS       60000
#define MAX_ANSWER       (8 * 1024 * 1024)
#define MAX_PAGES        32

struct mcpc {
    char *name, *url, *ca_file, *session;
    const char *token;
    json_int_t next_id;
    bool initialized;
};

mcpc *mcpc_new(const char *name, const char *url, const char *ca_file)
{
    mcpc *c = xcalloc(1, sizeof *c);
    c->name = xstrdup(name);
    c->url = xstrdup(url);
    c->ca_file = ca_file ? xstrdup(ca_file) : NULL;
    c->next_id = 1;
    return c;
}

void mcpc_free(mcpc *c)
{
    if (!c) return;
    free(c->name);
    free(c->url);
    free(c->ca_file);
    free(c->session);
    free(c);
}

const char *mcpc_name(const mcpc *c) { return c->name; }
const char *mcpc_url(const mcpc *c) { return c->url; }
void mcpc_set_token(mcpc *c, const char *token) { c->token = token; }

/* The JSON-RPC message with this id from an SSE stream: each event's data lines joined. */
static json_t *from_sse(const char *body, json_int_t id)
{
    json_t *found = NULL;
    size_t cap = strlen(body) + 1, n = 0;
    char *data = xmalloc(cap);
    const char *p = body;
    while (!found) {
        const char *eol = p + strcspn(p, "\n");
        size_t len = (size_t)(eol - p);
        if (len && p[len - 1] == '\r') len--;
        if (len == 0) {                              /* end of an event */
            if (n) {
                data[n] = '\0';
                json_t *m = json_loads(data, 0, NULL);
                if (json_integer_value(json_object_get(m, "id")) == id) found = m;
                else json_decref(m);
                n = 0;
            }
        } else if (len >= 5 && !strncmp(p, "data:", 5)) {
            const char *v = p + 5 + (len > 5 && p[5] == ' ');
            size_t vl = len - (size_t)(v - p);
            if (n) data[n++] = '\n';
            memcpy(data + n, v, vl);
            n += vl;
        }
        if (!*eol) {
            if (n && !found) {                       /* a last event without its blank line */
                data[n] = '\0';
                json_t *m = json_loads(data, 0, NULL);
                if (json_integer_value(json_object_get(m, "id")) == id) found = m;
                else json_decref(m);
            }
            break;
        }
        p = eol + 1;
    }
    free(data);
    return found;
}

/* POST one JSON-RPC message. Requests (id > 0) return the response's "result"; a
 * notification (id 0) returns json_true() on 202/200. *status gets the HTTP status. */
static json_t *post(mcpc *c, const char *method, json_t *params, json_int_t id, long *status, char *err,
                    size_t errlen)
{
    json_t *msg = json_pack("{s:s, s:s}", "jsonrpc", "2.0", "method", method);
    if (id) json_object_set_new(msg, "id", json_integer(id));
    if (params) json_object_set(msg, "params", params);
    char *body = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    char *auth = c->token ? xasprintf("Authorization: Bearer %s", c->token) : NULL;
    char *sess = c->session ? xasprintf("Mcp-Session-Id: %s", c->session) : NULL;
    const char *hdrs[6];
    size_t k = 0;
    hdrs[k++] = "Content-Type: application/json";
    hdrs[k++] = "Accept: application/json, text/event-stream";
    hdrs[k++] = "MCP-Protocol-Version: " PROTOCOL_VERSION;
    if (auth) hdrs[k++] = auth;
    if (sess) hdrs[k++] = sess;
    hdrs[k] = NULL;
    httpc_request rq = {.method = "POST", .url = c->url, .headers = hdrs, .body = body, .body_len = strlen(body),
                        .timeout_ms = TIMEOUT_MS, .ca_file = c->ca_file, .max_response = MAX_ANSWER};
    httpc_response rs = {0};
    char why[256];
    json_t *out = NULL;
    *status = 0;
    if (httpc_do(&rq, &rs, why, sizeof why) != HTTPC_OK) {
        snprintf(err, errlen, "MCP server %s (%s) cannot be reached: %s", c->name, c->url, why);
        goto end;
    }
    *status = rs.status;
    if (rs.status == 401 || rs.status == 403) {
        httpc_refusal(rs.headers, rs.body, rs.body_len, why, sizeof why);
        snprintf(err, errlen, "%s refused the MCP token for %s (HTTP %ld%s): %s", c->url, method, rs.status,
                 rs.status == 403 ? ", an authorization rule" : "", why);
        goto end;
    }
    if (!id) {
        if (rs.status / 100 == 2) out = json_true();
        else snprintf(err, errlen, "MCP server %s answered %s with HTTP %ld", c->name, method, rs.status);
        goto end;
    }
    if (strcmp(method, "initialize") == 0) {
        free(c->session);
        c->session = httpc_response_header(&rs, "Mcp-Session-Id");
    }
    json_t *m = NULL;
    if (rs.content_type && !strncasecmp(rs.content_type, "text/event-stream", 17)) m = from_sse(rs.body ? rs.body : "", id);
    else if (rs.body) m = json_loadb(rs.body, rs.body_len, 0, NULL);
    if (!json_is_object(m)) {
        if (rs.status / 100 != 2) {
            httpc_refusal(rs.headers, rs.body, rs.body_len, why, sizeof why);
            snprintf(err, errlen, "MCP server %s answered %s with HTTP %ld: %s", c->name, method, rs.status, why);
        } else {
            snprintf(err, errlen, "MCP server %s sent no JSON-RPC answer to %s", c->name, method);
        }
        json_decref(m);
        goto end;
    }
    json_t *e = json_object_get(m, "error");
    if (e) {
        snprintf(err, errlen, "MCP server %s: %s failed: %s (%lld)", c->name, method,
                 json_string_value(json_object_get(e, "message")) ? json_string_value(json_object_get(e, "message"))
                                                                   : "error",
                 (long long)json_integer_value(json_object_get(e, "code")));
    } else if (!json_is_object(json_object_get(m, "result"))) {
        snprintf(err, errlen, "MCP server %s: %s answer has no result", c->name, method);
    } else {
        out = json_incref(json_object_get(m, "result"));
    }
    json_decref(m);
end:
    httpc_response_free(&rs);
    if (auth) explicit_bzero(auth, strlen(auth));
    free(auth);
    free(sess);
    free(body);
    return out;
}

static int initialize(mcpc *c, char *err, size_t errlen)
{
    free(c->session);
    c->session = NULL;
    json_t *p = json_pack("{s:s, s:{}, s:{s:s, s:s}}", "protocolVersion", PROTOCOL_VERSION, "capabilities",
                          "clientInfo", "name", "agentid-agent", "version", AGENTID_VERSION);
    long st;
    json_t *r = post(c, "initialize", p, c->next_id++, &st, err, errlen);
    json_decref(p);
    if (!r) return -1;
    json_decref(r);
    r = post(c, "notifications/initialized", NULL, 0, &st, err, errlen);
    if (!r) return -1;
    json_decref(r);
    c->initialized = true;
    return 0;
}

/* A request in an initialized session; once more after a new initialize when the server
 * says the session is gone (404). */
static json_t *request(mcpc *c, const char *method, json_t *params, char *err, size_t errlen)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!c->initialized && initialize(c, err, errlen) != 0) return NULL;
        long st;
        json_t *r = post(c, method, params, c->next_id++, &st, err, errlen);
        if (r || st != 404 || !c->session) return r;
        c->initialized = false;
    }
    return NULL;
}

json_t *mcpc_list_tools(mcpc *c, char *err, size_t errlen)
{
    json_t *all = json_array();
    char *cursor = NULL;
    for (int page = 0; page < MAX_PAGES; page++) {
        json_t *p = cursor ? json_pack("{s:s}", "cursor", cursor) : NULL;
        json_t *r = request(c, "tools/list", p, err, errlen);
        json_decref(p);
        free(cursor);
        cursor = NULL;
        if (!r) {
            json_decref(all);
            return NULL;
        }
        if (json_is_array(json_object_get(r, "tools"))) json_array_extend(all, json_object_get(r, "tools"));
        const char *next = json_string_value(json_object_get(r, "nextCursor"));
        if (next && *next) cursor = xstrdup(next);
        json_decref(r);
        if (!cursor) break;
    }
    free(cursor);
    return all;
}

json_t *mcpc_call_tool(mcpc *c, const char *name, json_t *args, char *err, size_t errlen)
{
    json_t *p = json_pack("{s:s, s:o}", "name", name, "arguments", json_is_object(args) ? json_incref(args) : json_object());
    json_t *r = request(c, "tools/call", p, err, errlen);
    json_decref(p);
    return r;
}

char *mcpc_result_text(const json_t *result)
{
    size_t i, n = 0;
    json_t *part;
    json_array_foreach(json_object_get(result, "content"), i, part) n += json_string_length(json_object_get(part, "text")) + 1;
    char *out = xmalloc(n + 1), *w = out;
    json_array_foreach(json_object_get(result, "content"), i, part) {
        const char *t = json_string_value(json_object_get(part, "text"));
        if (!t) continue;
        if (w != out) *w++ = '\n';
        size_t l = strlen(t);
        memcpy(w, t, l);
        w += l;
    }
    *w = '\0';
    if (w == out && json_object_get(result, "structuredContent")) {
        free(out);
        out = json_dumps(json_object_get(result, "structuredContent"), JSON_COMPACT);
    }
    return out;
}
