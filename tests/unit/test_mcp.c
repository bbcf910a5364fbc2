/* Unit tests for gateway/mcp: mcp_mux behind a real http_server on 127.0.0.1, talked to
 * with the real http_client, in front of
 *  - a fake Streamable HTTP MCP server (another http_server in this process: stateful
 *    sessions, JSON and SSE answers, paginated tools/list, a sidecar's two endpoints, and
 *    a record of every Authorization header it received), and
 *  - a stdio MCP server: this very binary re-executed with --mcp-stdio (newline-delimited
 *    JSON-RPC; it also sends notifications, a stray log line and a ping request of its own).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/http_client.h"
#include "core/http_server.h"
#include "core/log.h"
#include "core/util.h"
#include "gateway/cel.h"
#include "gateway/mcp.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define CALLER_TOKEN "caller-token-abc"
#define AGENT_GUID   "11111111-2222-3333-4444-555555555555"

static char self_exe[4096];

/* ==== the stdio MCP server (child process) =========================================== */

static void out_line(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    size_t n = strlen(s);
    s = realloc(s, n + 2);
    s[n] = '\n';
    s[n + 1] = '\0';
    for (size_t off = 0; off < n + 1;) {
        ssize_t w = write(STDOUT_FILENO, s + off, n + 1 - off);
        if (w <= 0) _exit(1);
        off += (size_t)w;
    }
    free(s);
    json_decref(j);
}

static json_t *text_result(const char *t)
{
    return json_pack("{s:[{s:s, s:s}]}", "content", "type", "text", "text", t);
}

static int stdio_main(void)
{
    static char line[1 << 20];
    bool pong = false;
    FILE *in = stdin;
    while (fgets(line, sizeof line, in)) {
        json_t *j = json_loads(line, 0, NULL);
        if (!j) continue;
        json_t *id = json_object_get(j, "id");
        const char *method = json_string_value(json_object_get(j, "method"));
        if (!method) { /* a response: our ping's */
            if (json_is_string(id) && strcmp(json_string_value(id), "srv-1") == 0 &&
                json_object_get(j, "result"))
                pong = true;
            json_decref(j);
            continue;
        }
        if (!id) { /* notification */
            json_decref(j);
            continue;
        }
        json_t *result = NULL;
        json_t *params = json_object_get(j, "params");
        if (strcmp(method, "initialize") == 0) {
            result = json_pack("{s:O, s:{s:{}}, s:{s:s, s:s}, s:s}", "protocolVersion",
                               json_object_get(params, "protocolVersion"), "capabilities", "tools",
                               "serverInfo", "name", "stdio-fake", "version", "1",
                               "instructions", "fake stdio");
        } else if (strcmp(method, "tools/list") == 0) {
            result = json_pack("{s:[{s:s},{s:s},{s:s},{s:s},{s:s},{s:s}]}", "tools", "name",
                               "get-time", "name", "secret-tool", "name", "session_pid", "name",
                               "greeting", "name", "pinged", "name", "exit");
        } else if (strcmp(method, "tools/call") == 0) {
            const char *name = json_string_value(json_object_get(params, "name"));
            char buf[64];
            /* noise before the answer: a notification, a log line, a request of ours */
            out_line(json_pack("{s:s, s:s, s:{s:s, s:s}}", "jsonrpc", "2.0", "method",
                               "notifications/message", "params", "level", "info", "data", "hi"));
            if (write(STDOUT_FILENO, "not json at all\n", 16) < 0) _exit(1);
            out_line(json_pack("{s:s, s:s, s:s}", "jsonrpc", "2.0", "id", "srv-1", "method", "ping"));
            if (!name) {
                result = text_result("?");
            } else if (strcmp(name, "get-time") == 0) {
                result = text_result("12:00");
            } else if (strcmp(name, "session_pid") == 0) {
                snprintf(buf, sizeof buf, "%d", (int)getpid());
                result = text_result(buf);
            } else if (strcmp(name, "greeting") == 0) {
                const char *g = getenv("FAKE_GREETING");
                result = text_result(g ? g : "");
            } else if (strcmp(name, "pinged") == 0) {
                /* the gateway's pong to the ping above arrives before our next read */
                result = text_result(pong ? "yes" : "no");
            } else if (strcmp(name, "exit") == 0) {
                _exit(3);
            } else {
                result = text_result(name);
            }
        }
        if (result)
            out_line(json_pack("{s:s, s:O, s:o}", "jsonrpc", "2.0", "id", id, "result", result));
        else
            out_line(json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc", "2.0", "id", id, "error",
                               "code", -32601, "message", "Method not found"));
        json_decref(j);
    }
    /* stdin closed: the gateway ends us. _exit: this child's sanitizer report (if any) must
     * not be mistaken for the test's own. */
    _exit(0);
}

/* ==== the fake Streamable HTTP MCP server and sidecar ================================== */

static http_server *up_srv;
static char up_base[64];
static pthread_mutex_t up_lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *up_sessions;    /* id -> true */
static json_t *up_seen;        /* [{path, method, rpc, auth, sid, version}] */
static json_t *up_deleted;     /* [sid] */
static int up_counter;

static void up_record(http_req *r, const char *rpc)
{
    const char *a = http_req_header(r, "Authorization");
    const char *s = http_req_header(r, "Mcp-Session-Id");
    const char *v = http_req_header(r, "MCP-Protocol-Version");
    pthread_mutex_lock(&up_lock);
    json_array_append_new(up_seen, json_pack("{s:s, s:s, s:s?, s:s?, s:s?, s:s?}", "path",
                                             http_req_path(r), "method", http_req_method(r),
                                             "rpc", rpc, "auth", a, "sid", s, "version", v));
    pthread_mutex_unlock(&up_lock);
}

static void sidecar(http_req *r, const char *p)
{
    const char *auth = http_req_header(r, "Authorization");
    if (strcmp(p, "/AuthorizationHeader/mcpapi") == 0) {
        if (!auth || strcmp(auth, "Bearer " CALLER_TOKEN) != 0) {
            http_reply_json(r, 401, json_pack("{s:s}", "title", "Unauthorized"));
            return;
        }
        http_reply_json(r, 200, json_pack("{s:s}", "authorizationHeader", "Bearer obo-token"));
    } else if (strcmp(p, "/AuthorizationHeaderUnauthenticated/mcpapi") == 0) {
        const char *ai = http_req_query(r, "AgentIdentity");
        char *h = xasprintf("Bearer app-token-%s", ai ? ai : "none");
        http_reply_json(r, 200, json_pack("{s:s}", "authorizationHeader", h));
        free(h);
    } else {
        http_reply_text(r, 404, "no");
    }
}

static void up_handler(http_req *r, void *ctx)
{
    (void)ctx;
    const char *p = http_req_path(r);
    if (strncmp(p, "/Authorization", 14) == 0) {
        sidecar(r, p);
        return;
    }
    size_t len;
    const char *body = http_req_body(r, &len);
    json_t *msg = json_loadb(body, len, 0, NULL);
    const char *rpc = json_string_value(json_object_get(msg, "method"));
    up_record(r, rpc);
    const char *sid = http_req_header(r, "Mcp-Session-Id");

    if (strcmp(p, "/mcp401") == 0) {
        http_add_header(r, "WWW-Authenticate", "Bearer resource_metadata=\"x\"");
        http_reply_text(r, 401, "unauthorized");
        goto end;
    }
    const char *accept = http_req_header(r, "Accept");
    if (strcmp(http_req_method(r), "POST") == 0 &&
        (!accept || !strstr(accept, "application/json") || !strstr(accept, "text/event-stream"))) {
        http_reply_text(r, 406, "accept");
        goto end;
    }
    pthread_mutex_lock(&up_lock);
    bool known = sid && json_object_get(up_sessions, sid);
    pthread_mutex_unlock(&up_lock);

    if (strcmp(http_req_method(r), "DELETE") == 0) {
        pthread_mutex_lock(&up_lock);
        if (known) {
            json_object_del(up_sessions, sid);
            json_array_append_new(up_deleted, json_string(sid));
        }
        pthread_mutex_unlock(&up_lock);
        http_reply_text(r, known ? 200 : 404, "");
        goto end;
    }
    if (!msg) {
        http_reply_text(r, 400, "bad json");
        goto end;
    }
    json_t *id = json_object_get(msg, "id");
    json_t *params = json_object_get(msg, "params");
    if (rpc && strcmp(rpc, "initialize") == 0) {
        char nid[32];
        pthread_mutex_lock(&up_lock);
        snprintf(nid, sizeof nid, "up-%d", ++up_counter);
        json_object_set_new(up_sessions, nid, json_true());
        pthread_mutex_unlock(&up_lock);
        const char *want = json_string_value(json_object_get(params, "protocolVersion"));
        const char *v = want && strcmp(want, "2025-03-26") < 0 ? want : "2025-03-26";
        http_add_header(r, "Mcp-Session-Id", nid);
        http_reply_json(r, 200, json_pack("{s:s, s:O, s:{s:s, s:{s:{}, s:{}}, s:{s:s, s:s}, s:s}}",
                                          "jsonrpc", "2.0", "id", id, "result", "protocolVersion",
                                          v, "capabilities", "tools", "prompts", "serverInfo",
                                          "name", "http-fake", "version", "9", "instructions",
                                          "fake http"));
        goto end;
    }
    if (!sid) {
        http_reply_text(r, 400, "no session");
        goto end;
    }
    if (!known) {
        http_reply_text(r, 404, "session not found");
        goto end;
    }
    if (!id) { /* notification */
        http_reply(r, 202, "text/plain", "", 0);
        goto end;
    }
    json_t *result = NULL;
    bool sse = false;
    if (strcmp(rpc, "tools/list") == 0) {
        const char *cursor = json_string_value(json_object_get(params, "cursor"));
        if (!cursor)
            result = json_pack("{s:[{s:s, s:{s:s}}], s:s}", "tools", "name", "echo", "inputSchema",
                               "type", "object", "nextCursor", "p2");
        else
            result = json_pack("{s:[{s:s, s:{s:s}}, {s:s}]}", "tools", "name", "add",
                               "inputSchema", "type", "object", "name", "whoami");
    } else if (strcmp(rpc, "tools/call") == 0) {
        const char *name = json_string_value(json_object_get(params, "name"));
        json_t *args = json_object_get(params, "arguments");
        sse = true;
        if (name && strcmp(name, "echo") == 0) {
            result = text_result(json_string_value(json_object_get(args, "text")));
        } else if (name && strcmp(name, "add") == 0) {
            char b[32];
            snprintf(b, sizeof b, "%lld", (long long)(json_integer_value(json_object_get(args, "a")) +
                                                      json_integer_value(json_object_get(args, "b"))));
            result = text_result(b);
        } else if (name && strcmp(name, "whoami") == 0) {
            const char *a = http_req_header(r, "Authorization");
            result = text_result(a ? a : "(none)");
        } else {
            http_reply_json(r, 200, json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc", "2.0", "id",
                                              id, "error", "code", -32602, "message",
                                              "Unknown tool"));
            goto end;
        }
    } else if (strcmp(rpc, "prompts/list") == 0) {
        result = json_pack("{s:[{s:s}, {s:s}]}", "prompts", "name", "p1", "name", "hidden");
    } else {
        http_reply_json(r, 200, json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc", "2.0", "id", id,
                                          "error", "code", -32601, "message", "Method not found"));
        goto end;
    }
    json_t *resp = json_pack("{s:s, s:O, s:o}", "jsonrpc", "2.0", "id", id, "result", result);
    if (sse) {
        /* a progress notification first, then the answer, CRLF line ends */
        char *rs = json_dumps(resp, JSON_COMPACT);
        char *b = xasprintf("event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":"
                            "\"notifications/progress\",\"params\":{\"progress\":1}}\r\n\r\n"
                            "id: 7\r\nevent: message\r\ndata: %s\r\n\r\n", rs);
        http_reply(r, 200, "text/event-stream", b, strlen(b));
        free(b);
        free(rs);
        json_decref(resp);
    } else {
        http_reply_json(r, 200, resp);
    }
end:
    json_decref(msg);
}

/* ==== the gateway side ================================================================ */

static http_server *gw;
static char gw_base[64];
static mcp_mux *mux_a, *mux_b, *mux_c, *mux_d, *mux_e, *mux_f, *mux_g;
static bool send_token = true;
static cel_rules *rules_a, *rules_b;

/* /a...: http1 + local (stdio), rules; /b: one HTTP target; /c: identities; /d: 401
 * upstream; /e: one stdio target, 1 s idle TTL; /f: a command that does not exist.
 * X-Sub is the caller's "sub". */
static void gw_handler(http_req *r, void *ctx)
{
    (void)ctx;
    const char *p = http_req_path(r);
    mcp_mux *m = p[1] == 'a' ? mux_a : p[1] == 'b' ? mux_b : p[1] == 'c' ? mux_c
               : p[1] == 'd' ? mux_d : p[1] == 'e' ? mux_e : p[1] == 'f' ? mux_f
               : p[1] == 'g' ? mux_g : NULL;
    if (!m) {
        http_reply_text(r, 404, "no");
        return;
    }
    const char *sub = http_req_header(r, "X-Sub");
    json_t *claims = json_pack("{s:s, s:s}", "iss", "https://issuer.test", "sub", sub ? sub : "alice");
    const char *auth = http_req_header(r, "Authorization");
    const char *raw = auth && strncasecmp(auth, "Bearer ", 7) == 0 ? auth + 7 : NULL;
    json_t *request = json_pack("{s:s, s:s}", "method", http_req_method(r), "path", p);
    mcp_mux_handle(m, r, claims, raw, request);
    json_decref(claims);
    json_decref(request);
}

/* ==== client helpers ================================================================== */

typedef struct {
    long status;
    json_t *body;   /* NULL if not JSON */
    char *sid;      /* Mcp-Session-Id of the answer */
    char *ctype;
} resp;

static void resp_free(resp *r)
{
    json_decref(r->body);
    free(r->sid);
    free(r->ctype);
    memset(r, 0, sizeof *r);
}

/* A request to the gateway. extra: more "Name: value" headers (NULL-terminated, may be
 * NULL); accept/ctype NULL for the right ones. */
static resp call_raw(const char *method, const char *path, const char *sid, const char *sub,
                     const char *body, const char *accept, const char *ctype,
                     const char *const *extra)
{
    char url[256], h_sid[256], h_sub[64], h_acc[128], h_ct[128];
    const char *hdrs[16];
    size_t k = 0;
    snprintf(url, sizeof url, "%s%s", gw_base, path);
    snprintf(h_acc, sizeof h_acc, "Accept: %s", accept ? accept : "application/json, text/event-stream");
    snprintf(h_ct, sizeof h_ct, "Content-Type: %s", ctype ? ctype : "application/json");
    hdrs[k++] = h_acc;
    hdrs[k++] = h_ct;
    if (send_token) hdrs[k++] = "Authorization: Bearer " CALLER_TOKEN;
    if (sid) {
        snprintf(h_sid, sizeof h_sid, "Mcp-Session-Id: %s", sid);
        hdrs[k++] = h_sid;
    }
    if (sub) {
        snprintf(h_sub, sizeof h_sub, "X-Sub: %s", sub);
        hdrs[k++] = h_sub;
    }
    for (const char *const *e = extra; e && *e && k < 15; e++) hdrs[k++] = *e;
    hdrs[k] = NULL;
    httpc_request rq = {.method = method, .url = url, .headers = hdrs, .body = body,
                        .body_len = body ? strlen(body) : 0, .timeout_ms = 20000};
    httpc_response rs;
    char err[256];
    assert_int_equal(httpc_do(&rq, &rs, err, sizeof err), HTTPC_OK);
    resp out = {.status = rs.status};
    out.body = json_loadb(rs.body, rs.body_len, 0, NULL);
    out.sid = httpc_response_header(&rs, "Mcp-Session-Id");
    out.ctype = rs.content_type ? xstrdup(rs.content_type) : NULL;
    httpc_response_free(&rs);
    return out;
}

static int next_id = 1;

/* A JSON-RPC request (params stolen, may be NULL) on a session. */
static resp rpc(const char *path, const char *sid, const char *sub, const char *method,
                json_t *params)
{
    json_t *m = json_pack("{s:s, s:i, s:s}", "jsonrpc", "2.0", "id", next_id++, "method", method);
    if (params) json_object_set_new(m, "params", params);
    char *b = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    resp r = call_raw("POST", path, sid, sub, b, NULL, NULL, NULL);
    free(b);
    return r;
}

/* initialize + notifications/initialized; returns the session id (caller frees). */
static char *open_session(const char *path, const char *sub, json_t **result)
{
    resp r = rpc(path, NULL, sub, "initialize",
                 json_pack("{s:s, s:{}, s:{s:s, s:s}}", "protocolVersion", "2025-06-18",
                           "capabilities", "clientInfo", "name", "unit", "version", "1"));
    assert_int_equal(r.status, 200);
    assert_non_null(r.sid);
    assert_non_null(json_object_get(r.body, "result"));
    if (result) *result = json_incref(json_object_get(r.body, "result"));
    char *sid = r.sid;
    r.sid = NULL;
    resp_free(&r);
    resp n = call_raw("POST", path, sid, sub,
                      "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}", NULL, NULL,
                      NULL);
    assert_int_equal(n.status, 202);
    resp_free(&n);
    return sid;
}

static void close_session(const char *path, const char *sid, const char *sub)
{
    resp r = call_raw("DELETE", path, sid, sub, NULL, NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

/* tools/call: the first text of the result, copied; NULL with *err_code for an error. */
static char *call_tool(const char *path, const char *sid, const char *sub, const char *name,
                       json_t *args, long *status, int *err_code)
{
    resp r = rpc(path, sid, sub, "tools/call",
                 json_pack("{s:s, s:o}", "name", name, "arguments", args ? args : json_object()));
    if (status) *status = r.status;
    if (err_code) *err_code = (int)json_integer_value(json_object_get(json_object_get(r.body, "error"), "code"));
    const char *t = json_string_value(json_object_get(
        json_array_get(json_object_get(json_object_get(r.body, "result"), "content"), 0), "text"));
    char *out = t ? xstrdup(t) : NULL;
    resp_free(&r);
    return out;
}

/* The names in a tools/list answer, as one comma-separated string. */
static char *tool_names(const char *path, const char *sid, const char *sub)
{
    resp r = rpc(path, sid, sub, "tools/list", NULL);
    assert_int_equal(r.status, 200);
    json_t *tools = json_object_get(json_object_get(r.body, "result"), "tools");
    assert_true(json_is_array(tools));
    char *s = xstrdup("");
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        char *n = xasprintf("%s%s%s", s, *s ? "," : "", json_string_value(json_object_get(t, "name")));
        free(s);
        s = n;
    }
    resp_free(&r);
    return s;
}

static size_t count_auth(const char *path_prefix, const char *auth)
{
    size_t n = 0, i;
    json_t *e;
    pthread_mutex_lock(&up_lock);
    json_array_foreach(up_seen, i, e) {
        const char *p = json_string_value(json_object_get(e, "path"));
        const char *a = json_string_value(json_object_get(e, "auth"));
        if (strncmp(p, path_prefix, strlen(path_prefix)) != 0) continue;
        if ((auth == NULL && a == NULL) || (auth && a && strcmp(a, auth) == 0)) n++;
    }
    pthread_mutex_unlock(&up_lock);
    return n;
}

static bool process_gone(pid_t pid)
{
    for (int i = 0; i < 300; i++) {
        if (kill(pid, 0) != 0 && errno == ESRCH) return true;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return false;
}

/* ==== set-up ============================================================================ */

static int group_setup(void **state)
{
    (void)state;
    char err[256];
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    assert_true(n > 0);
    self_exe[n] = '\0';
    httpc_global_init();
    log_init("test_mcp", LOG_WARN);
    up_sessions = json_object();
    up_seen = json_array();
    up_deleted = json_array();

    http_server_opts uo = {.listen = "127.0.0.1:0", .thread_per_connection = true};
    up_srv = http_server_start(&uo, up_handler, NULL, err, sizeof err);
    assert_non_null(up_srv);
    snprintf(up_base, sizeof up_base, "http://127.0.0.1:%u", http_server_port(up_srv));

    static char url_mcp[128], url_pass[128], url_obo[128], url_app[128], url_401[128];
    snprintf(url_mcp, sizeof url_mcp, "%s/mcp", up_base);
    snprintf(url_pass, sizeof url_pass, "%s/mcp-pass", up_base);
    snprintf(url_obo, sizeof url_obo, "%s/mcp-obo", up_base);
    snprintf(url_app, sizeof url_app, "%s/mcp-app", up_base);
    snprintf(url_401, sizeof url_401, "%s/mcp401", up_base);
    static const char *cmd[3];
    cmd[0] = self_exe;
    cmd[1] = "--mcp-stdio";
    static const char *const env[] = {"FAKE_GREETING=hello from env", NULL};

    rules_a = cel_rules_new();
    assert_int_equal(cel_rules_add(rules_a, CEL_RULE_DENY, "mcp.tool.name == 'secret-tool'", err,
                                   sizeof err, NULL, NULL), 0);
    assert_int_equal(cel_rules_add(rules_a, CEL_RULE_DENY,
                                   "jwt.sub == 'mallory' && mcp.tool.target == 'http1' && "
                                   "mcp.tool.name == 'add'", err, sizeof err, NULL, NULL), 0);
    mcp_target ta[] = {
        {.name = "http1", .url = url_mcp},
        {.name = "local", .cmd = cmd, .env = env},
    };
    mcp_config ca = {.targets = ta, .n_targets = 2, .authz = rules_a, .timeout_ms = 10000};
    mux_a = mcp_mux_new(&ca, err, sizeof err);
    assert_non_null(mux_a);

    rules_b = cel_rules_new();
    assert_int_equal(cel_rules_add(rules_b, CEL_RULE_DENY, "mcp.prompt.name == 'hidden'", err,
                                   sizeof err, NULL, NULL), 0);
    mcp_target tb[] = {{.name = "solo", .url = url_mcp}};
    mcp_config cb = {.targets = tb, .n_targets = 1, .authz = rules_b};
    mux_b = mcp_mux_new(&cb, err, sizeof err);
    assert_non_null(mux_b);

    setenv("AGENTID_MCP_MAX_SESSIONS", "8", 1); /* 2 per client identity */
    mcp_target tg[] = {{.name = "solo", .url = url_mcp}};
    mcp_config cg = {.targets = tg, .n_targets = 1};
    mux_g = mcp_mux_new(&cg, err, sizeof err);
    unsetenv("AGENTID_MCP_MAX_SESSIONS");
    assert_non_null(mux_g);

    mcp_target tc[] = {
        {.name = "pass", .url = url_pass, .identity = MCP_IDENTITY_PASSTHROUGH},
        {.name = "obo", .url = url_obo, .identity = MCP_IDENTITY_SIDECAR_OBO,
         .sidecar_url = up_base, .sidecar_api = "mcpapi"},
        {.name = "app", .url = url_app, .identity = MCP_IDENTITY_SIDECAR_APP,
         .sidecar_url = up_base, .sidecar_api = "mcpapi", .agent_identity = AGENT_GUID},
    };
    mcp_config cc = {.targets = tc, .n_targets = 3};
    mux_c = mcp_mux_new(&cc, err, sizeof err);
    assert_non_null(mux_c);

    mcp_target td[] = {{.name = "locked", .url = url_401}};
    mcp_config cd = {.targets = td, .n_targets = 1};
    mux_d = mcp_mux_new(&cd, err, sizeof err);
    assert_non_null(mux_d);

    mcp_target te[] = {{.name = "local", .cmd = cmd}};
    mcp_config ce = {.targets = te, .n_targets = 1, .timeout_ms = 5000, .session_ttl_s = 1};
    mux_e = mcp_mux_new(&ce, err, sizeof err);
    assert_non_null(mux_e);

    const char *nocmd[] = {"/nonexistent/mcp-server", NULL};
    mcp_target tf[] = {{.name = "ghost", .cmd = nocmd}};
    mcp_config cf = {.targets = tf, .n_targets = 1};
    mux_f = mcp_mux_new(&cf, err, sizeof err);
    assert_non_null(mux_f);

    http_server_opts go = {.listen = "127.0.0.1:0", .thread_per_connection = true};
    gw = http_server_start(&go, gw_handler, NULL, err, sizeof err);
    assert_non_null(gw);
    snprintf(gw_base, sizeof gw_base, "http://127.0.0.1:%u", http_server_port(gw));
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    http_server_stop(gw);
    mcp_mux_free(mux_a);
    mcp_mux_free(mux_b);
    mcp_mux_free(mux_c);
    mcp_mux_free(mux_d);
    mcp_mux_free(mux_e);
    mcp_mux_free(mux_f);
    mcp_mux_free(mux_g);
    cel_rules_free(rules_a);
    cel_rules_free(rules_b);
    http_server_stop(up_srv);
    json_decref(up_sessions);
    json_decref(up_seen);
    json_decref(up_deleted);
    return 0;
}

/* ==== tests ============================================================================== */

static void test_transport_errors(void **state)
{
    (void)state;
    const char *init = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":"
                       "{\"protocolVersion\":\"2025-06-18\",\"capabilities\":{},"
                       "\"clientInfo\":{\"name\":\"u\",\"version\":\"1\"}}}";
    resp r = call_raw("POST", "/a", NULL, NULL, init, "application/json", NULL, NULL);
    assert_int_equal(r.status, 406);
    resp_free(&r);
    r = call_raw("POST", "/a", NULL, NULL, init, NULL, "text/plain", NULL);
    assert_int_equal(r.status, 415);
    resp_free(&r);
    r = call_raw("POST", "/a", NULL, NULL, "{not json", NULL, NULL, NULL);
    assert_int_equal(r.status, 400);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r.body, "error"), "code")), -32700);
    assert_true(json_is_null(json_object_get(r.body, "id")));
    resp_free(&r);
    r = call_raw("POST", "/a", NULL, NULL, "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]",
                 NULL, NULL, NULL);
    assert_int_equal(r.status, 400);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r.body, "error"), "code")), -32600);
    resp_free(&r);
    r = call_raw("POST", "/a", NULL, NULL, "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/list\"}",
                 NULL, NULL, NULL);
    assert_int_equal(r.status, 400); /* no session */
    assert_int_equal(json_integer_value(json_object_get(r.body, "id")), 5);
    resp_free(&r);
    r = call_raw("POST", "/a", "nosuchsession", NULL,
                 "{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/list\"}", NULL, NULL, NULL);
    assert_int_equal(r.status, 404);
    resp_free(&r);
    r = call_raw("GET", "/a", "nosuchsession", NULL, NULL, "text/event-stream", NULL, NULL);
    assert_int_equal(r.status, 405);
    resp_free(&r);
    r = call_raw("DELETE", "/a", NULL, NULL, NULL, NULL, NULL, NULL);
    assert_int_equal(r.status, 400);
    resp_free(&r);
    r = call_raw("DELETE", "/a", "nosuchsession", NULL, NULL, NULL, NULL, NULL);
    assert_int_equal(r.status, 404);
    resp_free(&r);
    const char *badv[] = {"MCP-Protocol-Version: 1999-01-01", NULL};
    r = call_raw("POST", "/a", NULL, NULL, init, NULL, NULL, badv);
    assert_int_equal(r.status, 400);
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(r.body, "error"), "data"), "requested")), "1999-01-01");
    resp_free(&r);
    r = call_raw("POST", "/a", NULL, NULL, "{\"jsonrpc\":\"1.0\",\"id\":1,\"method\":\"ping\"}",
                 NULL, NULL, NULL);
    assert_int_equal(r.status, 400);
    resp_free(&r);
}

static void test_initialize_multi(void **state)
{
    (void)state;
    json_t *res;
    char *sid = open_session("/a", NULL, &res);
    assert_int_equal(strlen(sid), 64);
    /* lowest of client (2025-06-18), http fake (2025-03-26), stdio fake (echoes 2025-06-18) */
    assert_string_equal(json_string_value(json_object_get(res, "protocolVersion")), "2025-03-26");
    assert_string_equal(json_string_value(json_object_get(json_object_get(res, "serverInfo"), "name")),
                        "agentid-gateway");
    assert_true(json_is_false(json_object_get(json_object_get(json_object_get(res, "capabilities"), "tools"), "listChanged")));
    assert_null(json_object_get(json_object_get(res, "capabilities"), "prompts"));
    const char *instr = json_string_value(json_object_get(res, "instructions"));
    assert_non_null(instr);
    assert_non_null(strstr(instr, "[http1]\nfake http"));
    assert_non_null(strstr(instr, "[local]\nfake stdio"));
    json_decref(res);

    resp r = rpc("/a", sid, NULL, "ping", NULL);
    assert_int_equal(r.status, 200);
    assert_true(json_is_object(json_object_get(r.body, "result")));
    resp_free(&r);
    r = rpc("/a", sid, NULL, "prompts/list", NULL); /* several targets: only tools */
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r.body, "error"), "code")), -32601);
    resp_free(&r);
    /* a response from the client: accepted */
    r = call_raw("POST", "/a", sid, NULL, "{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":{}}", NULL,
                 NULL, NULL);
    assert_int_equal(r.status, 202);
    resp_free(&r);
    /* initialize with a session id is refused */
    r = call_raw("POST", "/a", sid, NULL, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\","
                 "\"params\":{\"protocolVersion\":\"2025-06-18\"}}", NULL, NULL, NULL);
    assert_int_equal(r.status, 400);
    resp_free(&r);
    close_session("/a", sid, NULL);
    free(sid);
}

static void test_tools_list_and_call(void **state)
{
    (void)state;
    char *sid = open_session("/a", NULL, NULL);
    char *names = tool_names("/a", sid, NULL);
    /* both pages of http1, the stdio tools, prefixed; secret-tool hidden */
    assert_string_equal(names, "http1_echo,http1_add,http1_whoami,local_get-time,local_session_pid,"
                               "local_greeting,local_pinged,local_exit");
    free(names);

    /* the client's id comes back, string or number */
    resp r = call_raw("POST", "/a", sid, NULL,
                      "{\"jsonrpc\":\"2.0\",\"id\":\"my-id\",\"method\":\"tools/call\",\"params\":"
                      "{\"name\":\"http1_echo\",\"arguments\":{\"text\":\"hi there\"}}}",
                      NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.body, "id")), "my-id");
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(
                            json_object_get(r.body, "result"), "content"), 0), "text")), "hi there");
    resp_free(&r);

    long st;
    int code;
    char *t = call_tool("/a", sid, NULL, "http1_add", json_pack("{s:i, s:i}", "a", 2, "b", 40), &st, &code);
    assert_string_equal(t, "42");
    free(t);
    t = call_tool("/a", sid, NULL, "local_get-time", NULL, &st, &code);
    assert_string_equal(t, "12:00");
    free(t);
    t = call_tool("/a", sid, NULL, "local_greeting", NULL, &st, &code);
    assert_string_equal(t, "hello from env");
    free(t);
    t = call_tool("/a", sid, NULL, "local_pinged", NULL, &st, &code); /* we answered its ping */
    assert_string_equal(t, "yes");
    free(t);
    t = call_tool("/a", sid, NULL, "local_session_pid", NULL, &st, &code); /* split on the FIRST _ */
    assert_non_null(t);
    assert_true(atoi(t) > 1);
    free(t);

    /* denied, unknown target, no prefix: 400 + -32602 "Unknown tool: <name as sent>" */
    const char *bad[] = {"local_secret-tool", "nosuch_echo", "echo", "http1_"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        resp e = rpc("/a", sid, NULL, "tools/call", json_pack("{s:s}", "name", bad[i]));
        assert_int_equal(e.status, 400);
        json_t *err = json_object_get(e.body, "error");
        assert_int_equal(json_integer_value(json_object_get(err, "code")), -32602);
        char want[64];
        snprintf(want, sizeof want, "Unknown tool: %s", bad[i]);
        assert_string_equal(json_string_value(json_object_get(err, "message")), want);
        resp_free(&e);
    }
    /* an upstream's own JSON-RPC error passes through */
    t = call_tool("/a", sid, NULL, "http1_nope", NULL, &st, &code);
    assert_null(t);
    assert_int_equal(st, 200);
    assert_int_equal(code, -32602);

    /* per-caller rules: mallory neither sees nor calls http1_add (own session) */
    char *msid = open_session("/a", "mallory", NULL);
    names = tool_names("/a", msid, "mallory");
    assert_null(strstr(names, "http1_add"));
    assert_non_null(strstr(names, "http1_echo"));
    free(names);
    t = call_tool("/a", msid, "mallory", "http1_add", json_pack("{s:i, s:i}", "a", 1, "b", 1), &st, &code);
    assert_null(t);
    assert_int_equal(st, 400);
    assert_int_equal(code, -32602);
    /* and alice's session is not mallory's */
    resp x = rpc("/a", sid, "mallory", "tools/list", NULL);
    assert_int_equal(x.status, 404);
    resp_free(&x);
    close_session("/a", msid, "mallory");
    free(msid);

    /* the caller's token never reached the upstream (identity NONE) */
    assert_int_equal(count_auth("/mcp", "Bearer " CALLER_TOKEN), 0);
    assert_true(count_auth("/mcp", NULL) > 0);
    close_session("/a", sid, NULL);
    free(sid);
}

static void test_sessions_apart(void **state)
{
    (void)state;
    char *s1 = open_session("/a", NULL, NULL);
    char *s2 = open_session("/a", NULL, NULL);
    assert_string_not_equal(s1, s2);
    char *p1 = call_tool("/a", s1, NULL, "local_session_pid", NULL, NULL, NULL);
    char *p2 = call_tool("/a", s2, NULL, "local_session_pid", NULL, NULL, NULL);
    assert_non_null(p1);
    assert_non_null(p2);
    assert_string_not_equal(p1, p2); /* one child per client session */

    /* each session has its own upstream HTTP session */
    char *w1 = call_tool("/a", s1, NULL, "http1_whoami", NULL, NULL, NULL);
    assert_string_equal(w1, "(none)");
    free(w1);
    pthread_mutex_lock(&up_lock);
    size_t ndel = json_array_size(up_deleted);
    pthread_mutex_unlock(&up_lock);

    close_session("/a", s1, NULL);
    assert_true(process_gone(atoi(p1)));     /* its child is gone */
    pthread_mutex_lock(&up_lock);
    assert_int_equal(json_array_size(up_deleted), ndel + 1); /* its upstream session ended */
    pthread_mutex_unlock(&up_lock);
    resp r = rpc("/a", s1, NULL, "tools/list", NULL);
    assert_int_equal(r.status, 404);
    resp_free(&r);

    char *again = call_tool("/a", s2, NULL, "local_session_pid", NULL, NULL, NULL);
    assert_string_equal(again, p2);
    free(again);
    char *e = call_tool("/a", s2, NULL, "http1_echo", json_pack("{s:s}", "text", "still"), NULL, NULL);
    assert_string_equal(e, "still");
    free(e);
    close_session("/a", s2, NULL);
    assert_true(process_gone(atoi(p2)));
    free(p1);
    free(p2);
    free(s1);
    free(s2);
}

typedef struct {
    char *sid;
    int ok;
} worker_arg;

/* Each thread uses its own session: echo on http1 and the pid of its own child, 10 times. */
static void *worker(void *arg)
{
    worker_arg *w = arg;
    char *pid0 = call_tool("/a", w->sid, NULL, "local_session_pid", NULL, NULL, NULL);
    for (int i = 0; i < 10 && pid0; i++) {
        char want[64];
        snprintf(want, sizeof want, "%s-%d", w->sid, i);
        char *e = call_tool("/a", w->sid, NULL, "http1_echo", json_pack("{s:s}", "text", want), NULL, NULL);
        char *p = call_tool("/a", w->sid, NULL, "local_session_pid", NULL, NULL, NULL);
        if (e && p && strcmp(e, want) == 0 && strcmp(p, pid0) == 0) w->ok++;
        free(e);
        free(p);
    }
    free(pid0);
    return NULL;
}

static long session_status(const char *sid, const char *sub)
{
    resp r = rpc("/g", sid, sub, "tools/list", NULL);
    long st = r.status;
    resp_free(&r);
    return st;
}

/* Sessions are bounded (8 here, 2 per client identity) without locking anyone out: a client
 * past its share loses its own least recently used session, and a full mux the least
 * recently used of all; the client of an evicted session gets 404 and starts again. */
static void test_session_limits(void **state)
{
    (void)state;
    char *a[3];
    for (int i = 0; i < 3; i++) a[i] = open_session("/g", "spammer", NULL);
    assert_int_equal(session_status(a[0], "spammer"), 404); /* its own oldest made room */
    assert_int_equal(session_status(a[1], "spammer"), 200);
    assert_int_equal(session_status(a[2], "spammer"), 200);

    static const char *const who[] = {"u1", "u2", "u3"}; /* 2 + 3 * 2 = 8: full */
    char *u[3][2];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++) u[i][j] = open_session("/g", who[i], NULL);
    assert_int_equal(session_status(a[1], "spammer"), 200); /* a[2] is now the oldest */
    char *late = open_session("/g", "late", NULL); /* full: the least recently used goes */
    assert_int_equal(session_status(a[2], "spammer"), 404);
    assert_int_equal(session_status(late, "late"), 200);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++) assert_int_equal(session_status(u[i][j], who[i]), 200);

    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++) {
            close_session("/g", u[i][j], who[i]);
            free(u[i][j]);
        }
    close_session("/g", a[1], "spammer");
    close_session("/g", late, "late");
    for (int i = 0; i < 3; i++) free(a[i]);
    free(late);
}

static void test_concurrent_sessions(void **state)
{
    (void)state;
    enum { N = 6 };
    pthread_t th[N];
    worker_arg args[N];
    for (int i = 0; i < N; i++) args[i] = (worker_arg){open_session("/a", NULL, NULL), 0};
    for (int i = 0; i < N; i++) assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++) {
        assert_int_equal(args[i].ok, 10);
        close_session("/a", args[i].sid, NULL);
        free(args[i].sid);
    }
}

static void test_single_target(void **state)
{
    (void)state;
    json_t *res;
    char *sid = open_session("/b", NULL, &res);
    /* one target: its own InitializeResult */
    assert_string_equal(json_string_value(json_object_get(json_object_get(res, "serverInfo"), "name")),
                        "http-fake");
    json_decref(res);
    char *names = tool_names("/b", sid, NULL);
    assert_string_equal(names, "echo,add,whoami");
    free(names);
    char *t = call_tool("/b", sid, NULL, "echo", json_pack("{s:s}", "text", "solo"), NULL, NULL);
    assert_string_equal(t, "solo");
    free(t);
    /* other methods are forwarded, lists filtered by the rules */
    resp r = rpc("/b", sid, NULL, "prompts/list", NULL);
    assert_int_equal(r.status, 200);
    json_t *pr = json_object_get(json_object_get(r.body, "result"), "prompts");
    assert_int_equal(json_array_size(pr), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(pr, 0), "name")), "p1");
    resp_free(&r);
    r = rpc("/b", sid, NULL, "prompts/get", json_pack("{s:s}", "name", "hidden"));
    assert_int_equal(r.status, 400);
    resp_free(&r);
    r = rpc("/b", sid, NULL, "resources/list", NULL); /* the upstream's own error */
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r.body, "error"), "code")), -32601);
    resp_free(&r);

    /* the upstream forgets its sessions: a new one is made and the call still works */
    pthread_mutex_lock(&up_lock);
    json_object_clear(up_sessions);
    pthread_mutex_unlock(&up_lock);
    t = call_tool("/b", sid, NULL, "echo", json_pack("{s:s}", "text", "after restart"), NULL, NULL);
    assert_string_equal(t, "after restart");
    free(t);
    close_session("/b", sid, NULL);
    free(sid);
}

static void test_identities(void **state)
{
    (void)state;
    char *sid = open_session("/c", NULL, NULL);
    char *t = call_tool("/c", sid, NULL, "pass_whoami", NULL, NULL, NULL);
    assert_string_equal(t, "Bearer " CALLER_TOKEN);
    free(t);
    t = call_tool("/c", sid, NULL, "obo_whoami", NULL, NULL, NULL);
    assert_string_equal(t, "Bearer obo-token");
    free(t);
    t = call_tool("/c", sid, NULL, "app_whoami", NULL, NULL, NULL);
    assert_string_equal(t, "Bearer app-token-" AGENT_GUID);
    free(t);
    /* every request to those upstreams carried its identity, initialize included */
    assert_int_equal(count_auth("/mcp-obo", "Bearer " CALLER_TOKEN), 0);
    assert_int_equal(count_auth("/mcp-app", "Bearer " CALLER_TOKEN), 0);
    assert_int_equal(count_auth("/mcp-obo", NULL), 0);
    assert_int_equal(count_auth("/mcp-app", NULL), 0);
    assert_int_equal(count_auth("/mcp-pass", NULL), 0);
    close_session("/c", sid, NULL);
    free(sid);
}

static void test_upstream_401(void **state)
{
    (void)state;
    resp r = rpc("/d", NULL, NULL, "initialize",
                 json_pack("{s:s, s:{}, s:{s:s, s:s}}", "protocolVersion", "2025-06-18",
                           "capabilities", "clientInfo", "name", "unit", "version", "1"));
    assert_int_equal(r.status, 401);
    assert_null(r.sid);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r.body, "error"), "code")), -32603);
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(r.body, "error"), "message")), "401"));
    resp_free(&r);
}

/* Failures at initialize fail it (agentgateway's default failClosed), without a session. */
static void test_initialize_failures(void **state)
{
    (void)state;
    json_t *params = json_pack("{s:s, s:{}, s:{s:s, s:s}}", "protocolVersion", "2025-06-18",
                               "capabilities", "clientInfo", "name", "unit", "version", "1");
    resp r = rpc("/f", NULL, NULL, "initialize", json_incref(params));
    assert_int_equal(r.status, 200);
    assert_null(r.sid);
    const char *msg = json_string_value(json_object_get(json_object_get(r.body, "error"), "message"));
    assert_non_null(msg);
    assert_non_null(strstr(msg, "ghost"));
    resp_free(&r);

    /* OBO needs the caller's token: without one, no token is asked for and nothing is sent */
    send_token = false;
    r = rpc("/c", NULL, NULL, "initialize", json_incref(params));
    send_token = true;
    assert_null(r.sid);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r.body, "error"), "code")), -32603);
    assert_non_null(strstr(json_string_value(json_object_get(json_object_get(r.body, "error"), "message")), "obo"));
    resp_free(&r);
    json_decref(params);
}

static void test_stdio_crash_and_idle(void **state)
{
    (void)state;
    char *sid = open_session("/e", NULL, NULL);
    char *p1 = call_tool("/e", sid, NULL, "session_pid", NULL, NULL, NULL);
    assert_non_null(p1);
    long st;
    int code;
    char *t = call_tool("/e", sid, NULL, "exit", NULL, &st, &code); /* the child dies mid-call */
    assert_null(t);
    assert_int_equal(code, -32603);
    assert_true(process_gone(atoi(p1)));
    char *p2 = call_tool("/e", sid, NULL, "session_pid", NULL, NULL, NULL); /* a new child */
    assert_non_null(p2);
    assert_string_not_equal(p1, p2);
    /* the child dies between requests: the next request starts a new one */
    kill(atoi(p2), SIGKILL);
    struct timespec dt = {0, 100 * 1000 * 1000};
    nanosleep(&dt, NULL);
    char *p3 = call_tool("/e", sid, NULL, "session_pid", NULL, NULL, NULL);
    assert_non_null(p3);
    assert_string_not_equal(p3, p2);
    free(p2);
    p2 = p3;
    /* idle for over a second (the TTL of /e): the session and its child end */
    struct timespec ts = {3, 0};
    nanosleep(&ts, NULL);
    assert_true(process_gone(atoi(p2)));
    resp r = rpc("/e", sid, NULL, "tools/list", NULL);
    assert_int_equal(r.status, 404);
    resp_free(&r);
    free(p1);
    free(p2);
    free(sid);
}

static void test_bad_config(void **state)
{
    (void)state;
    char err[256];
    const char *cmd[] = {"/bin/cat", NULL};
    struct {
        mcp_target t;
        const char *want;
    } bad[] = {
        {{.name = "a_b", .url = "http://127.0.0.1:1/mcp"}, "name"},
        {{.name = "", .url = "http://127.0.0.1:1/mcp"}, "name"},
        {{.name = "x", .url = "http://127.0.0.1:1/mcp", .cmd = cmd}, "exactly one"},
        {{.name = "x"}, "exactly one"},
        {{.name = "x", .url = "ftp://h/"}, "http"},
        {{.name = "x", .url = "http://h/", .identity = MCP_IDENTITY_SIDECAR_OBO}, "sidecar"},
        {{.name = "x", .cmd = cmd, .identity = MCP_IDENTITY_PASSTHROUGH}, "URL"},
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        mcp_config c = {.targets = &bad[i].t, .n_targets = 1};
        err[0] = '\0';
        assert_null(mcp_mux_new(&c, err, sizeof err));
        assert_non_null(strstr(err, bad[i].want));
    }
    mcp_target dup[] = {{.name = "x", .url = "http://h/"}, {.name = "x", .cmd = cmd}};
    mcp_config c = {.targets = dup, .n_targets = 2};
    assert_null(mcp_mux_new(&c, err, sizeof err));
    assert_non_null(strstr(err, "duplicate"));
    c.n_targets = 0;
    assert_null(mcp_mux_new(&c, err, sizeof err));
    mcp_mux_free(NULL);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--mcp-stdio") == 0) return stdio_main();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transport_errors),
        cmocka_unit_test(test_initialize_multi),
        cmocka_unit_test(test_tools_list_and_call),
        cmocka_unit_test(test_sessions_apart),
        cmocka_unit_test(test_concurrent_sessions),
        cmocka_unit_test(test_session_limits),
        cmocka_unit_test(test_single_target),
        cmocka_unit_test(test_identities),
        cmocka_unit_test(test_upstream_401),
        cmocka_unit_test(test_initialize_failures),
        cmocka_unit_test(test_stdio_crash_and_idle),
        cmocka_unit_test(test_bad_config),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
