/* agent — see agent.h. The command layer: configuration, the seed's steps, the menu and the
 * token table. Sign-in is session.c, the LLM loop converse.c, MCP mcp_client.c, token
 * validation inspect.c. */
#include "agent/agent.h"

#include "agent/converse.h"
#include "agent/inspect.h"
#include "agent/mcp_client.h"
#include "agent/session.h"
#include "core/args.h"
#include "core/form.h"
#include "core/http_client.h"
#include "core/util.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_CONFIG   ".agentid/agent.json"
#define SIDECAR_TIMEOUT  30000
#define MAX_SERVERS      16
#define SYSTEM_PROMPT                                                                               \
    "You are a helpful assistant running in a terminal. Use the tools you are given when they help " \
    "answer; say which tool you used."

static const char USAGE[] =
    "usage: agentid agent <command> [options]\n"
    "\n"
    "commands:\n"
    "  run                      sign in, get the agent's tokens, then an interactive menu\n"
    "  ask PROMPT               one prompt, the answer on stdout (for scripts)\n"
    "  show-tokens [--output-raw] [--json]\n"
    "                           every token the agent holds, validated against its issuer\n"
    "  logout                   forget the signed-in user (removes the sign-in cache)\n"
    "\n"
    "options:\n"
    "  --config FILE            the agent's settings ($AGENTID_AGENT_CONFIG, default " DEFAULT_CONFIG
    ",\n"
    "                           which `agentid up --profile gateway` writes)\n"
    "  --gateway URL            the gateway in front of the LLM and MCP (gateway_url)\n"
    "  --sidecar URL            the auth sidecar (sidecar_url)\n"
    "  --agent-id ID            the agent identity the sidecar acts as (agent_identity)\n"
    "  --model NAME             the LLM's model (model)\n"
    "  --max-steps N            LLM calls per prompt, tool rounds included (8)\n"
    "  --cache FILE             the sign-in cache ($XDG_CONFIG_HOME/agentid/agent-session.json)\n"
    "\n"
    "Documentation: docs/agent-cli.md\n";

typedef struct {
    json_t *doc;
    const char *authority, *client_id, *ca_file, *sidecar_url, *agent_identity, *llm_api, *mcp_api;
    const char *gateway_url, *llm_path, *mcp_path, *model;
    char *scope, *cache_path, *source;
    int max_steps;
} agent_cfg;

typedef struct {
    const char *label;        /* "Tc (User)", ... */
    const char *kind;         /* "user", "llm", "mcp" (JSON) */
    char *token;
} held;

typedef struct {
    agent_cfg cfg;
    FILE *say;                /* the steps: stdout for run, stderr otherwise */
    session user;
    held tokens[3];           /* user, LLM, MCP */
    mcpc *servers[MAX_SERVERS];
    char *server_api[MAX_SERVERS];   /* the sidecar API whose token each gets, or NULL */
    size_t n_servers;
    json_t *messages;
} agent;

/* ---- configuration ------------------------------------------------------------------------- */

static const char *cfg_str(const json_t *doc, const char *key, const char *dflt)
{
    const char *v = json_string_value(json_object_get(doc, key));
    return v && *v ? v : dflt;
}

static int load_config(agent_cfg *c, const char *path, char *err, size_t errlen)
{
    const char *env = getenv("AGENTID_AGENT_CONFIG");
    const char *file = path ? path : env && *env ? env : DEFAULT_CONFIG;
    json_error_t je;
    c->doc = json_load_file(file, JSON_REJECT_DUPLICATES, &je);
    if (!c->doc) {
        if (errno == ENOENT && !path && !(env && *env))
            snprintf(err, errlen,
                     "no agent settings in %s: start the local stack with `agentid up --profile gateway` "
                     "(it writes them), or give --config FILE (see docs/agent-cli.md)", file);
        else
            snprintf(err, errlen, "%s:%d:%d: %s", file, je.line, je.column, je.text);
        return -1;
    }
    c->source = xstrdup(file);
    c->authority = cfg_str(c->doc, "authority", NULL);
    c->client_id = cfg_str(c->doc, "client_id", NULL);
    c->ca_file = cfg_str(c->doc, "ca_file", getenv("SSL_CERT_FILE"));
    c->sidecar_url = cfg_str(c->doc, "sidecar_url", "http://127.0.0.1:5000");
    c->agent_identity = cfg_str(c->doc, "agent_identity", NULL);
    c->llm_api = cfg_str(c->doc, "llm_api", "openai");
    c->mcp_api = cfg_str(c->doc, "mcp_api", "mcp");
    c->gateway_url = cfg_str(c->doc, "gateway_url", "http://127.0.0.1:3000");
    c->llm_path = cfg_str(c->doc, "llm_path", "/llm");
    c->mcp_path = cfg_str(c->doc, "mcp_path", "/mcp");
    c->model = cfg_str(c->doc, "model", NULL);
    json_t *scopes = json_object_get(c->doc, "scopes");
    size_t i, n = 1;
    json_t *s;
    json_array_foreach(scopes, i, s) n += json_string_length(s) + 1;
    c->scope = xcalloc(1, n);
    json_array_foreach(scopes, i, s) {
        if (!json_is_string(s)) continue;
        if (*c->scope) strcat(c->scope, " ");
        strcat(c->scope, json_string_value(s));
    }
    const char *missing = !c->authority ? "authority" : !c->client_id ? "client_id" : !*c->scope ? "scopes" : NULL;
    if (missing) {
        snprintf(err, errlen, "%s: \"%s\" is missing (see docs/agent-cli.md)", file, missing);
        return -1;
    }
    return 0;
}

static void free_config(agent_cfg *c)
{
    json_decref(c->doc);
    free(c->scope);
    free(c->cache_path);
    free(c->source);
}

/* ---- output helpers ------------------------------------------------------------------------ */

static const char OK[] = "\u2713", BAD[] = "\u2717";

static void say(agent *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(agent *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(a->say, fmt, ap);
    va_end(ap);
    fputc('\n', a->say);
    fflush(a->say);
}

/* The audience a scope asks for: "api://x/access_as_user" -> "api://x". */
static char *scope_audience(const char *scope)
{
    size_t n = strcspn(scope, " ");
    const char *slash = NULL;
    for (const char *p = scope; p < scope + n; p++)
        if (*p == '/' && p > scope && p[-1] != '/' && p[1] != '/') slash = p;
    return xstrndup(scope, slash ? (size_t)(slash - scope) : n);
}

/* ---- tokens -------------------------------------------------------------------------------- */

/* GET /AuthorizationHeader/{api} on behalf of the user: the token (without "Bearer "). */
static char *sidecar_token(agent *a, const char *api, char *err, size_t errlen)
{
    char *api_e = form_escape(api), *url;
    if (a->cfg.agent_identity) {
        char *id = form_escape(a->cfg.agent_identity);
        url = xasprintf("%s/AuthorizationHeader/%s?AgentIdentity=%s", a->cfg.sidecar_url, api_e, id);
        free(id);
    } else {
        url = xasprintf("%s/AuthorizationHeader/%s", a->cfg.sidecar_url, api_e);
    }
    free(api_e);
    char *auth = xasprintf("Authorization: Bearer %s", a->user.access_token), why[256], *tok = NULL;
    const char *hdrs[] = {auth, "Accept: application/json", NULL};
    httpc_request rq = {.url = url, .headers = hdrs, .timeout_ms = SIDECAR_TIMEOUT};
    httpc_response rs = {0};
    httpc_result hr = httpc_do(&rq, &rs, why, sizeof why);
    json_t *j = hr == HTTPC_OK ? json_loadb(rs.body ? rs.body : "", rs.body_len, 0, NULL) : NULL;
    if (hr != HTTPC_OK) {
        snprintf(err, errlen,
                 "the sidecar is not running at %s (%s): start the local stack with `agentid up --profile "
                 "gateway`, or give --sidecar URL", a->cfg.sidecar_url, why);
    } else if (rs.status != 200) {
        const char *title = json_string_value(json_object_get(j, "title"));
        const char *detail = json_string_value(json_object_get(j, "detail"));
        snprintf(err, errlen, "the sidecar could not get a token for %s (HTTP %ld): %s%s%s", api, rs.status,
                 title ? title : "error", detail ? ": " : "", detail ? detail : "");
    } else {
        const char *h = json_string_value(json_object_get(j, "authorizationHeader"));
        size_t n;
        const char *t = h ? inspect_strip_bearer(h, &n) : NULL;
        if (t && n) tok = xstrndup(t, n);
        else snprintf(err, errlen, "the sidecar's answer for %s has no authorizationHeader", api);
    }
    json_decref(j);
    httpc_response_free(&rs);
    explicit_bzero(auth, strlen(auth));
    free(auth);
    free(url);
    return tok;
}

static void set_token(held *h, char *tok)
{
    if (h->token) explicit_bzero(h->token, strlen(h->token));
    free(h->token);
    h->token = tok;
}

/* A one-line description of an agent token's actor, to explain a gateway's refusal. */
static void describe_token(const char *tok, char *out, size_t outlen)
{
    token_info ti;
    if (inspect_token(tok, false, NULL, &ti) != 0) {
        snprintf(out, outlen, "not a JWT");
    } else {
        const char *app = jwt_claim_str(&ti.t, "appid");
        if (!app) app = jwt_claim_str(&ti.t, "azp");
        const char *fct = jwt_claim_str(&ti.t, "xms_act_fct"), *typ = jwt_claim_str(&ti.t, "idtyp");
        snprintf(out, outlen, "appid %s, idtyp %s, xms_act_fct %s", app ? app : "(none)", typ ? typ : "(none)",
                 fct ? fct : "(none)");
    }
    inspect_clear(&ti);
}

/* Is 11 (AgentIdentity) among the token's xms_act_fct values? */
static bool agent_acting(const char *tok)
{
    token_info ti;
    bool yes = false;
    if (inspect_token(tok, false, NULL, &ti) == 0) {
        const char *f = jwt_claim_str(&ti.t, "xms_act_fct");
        for (const char *p = f; p && *p;) {
            size_t n = strcspn(p, " ");
            if (n == 2 && !strncmp(p, "11", 2)) yes = true;
            p += n + (p[n] == ' ');
        }
    }
    inspect_clear(&ti);
    return yes;
}

/* Steps 1-4 of seed 003. verbose: print them (run), else only failures and sign-in. */
static int acquire(agent *a, bool verbose)
{
    char err[1024];
    char *aud = scope_audience(a->cfg.scope);
    if (verbose) {
        say(a, "Step 1: User Authentication");
        say(a, "Requesting user token with Blueprint audience: %s", aud);
    }
    free(aud);
    session_opts so = {.authority = a->cfg.authority, .client_id = a->cfg.client_id, .scope = a->cfg.scope,
                       .ca_file = a->cfg.ca_file, .cache_path = a->cfg.cache_path, .out = a->say};
    session_clear(&a->user);
    if (session_get(&so, &a->user, err, sizeof err) != 0) {
        fprintf(stderr, "%s Sign-in failed: %s\n", BAD, err);
        return -1;
    }
    if (verbose || a->user.origin == SESSION_SIGNED_IN) {
        static const char *const how[] = {"reusing the cached sign-in", "refreshed silently with the cached refresh token",
                                          "token cached for future use"};
        say(a, "%s Authentication successful, %s", OK, how[a->user.origin]);
        say(a, "%s Logged in as: %s", OK, a->user.username);
    }
    set_token(&a->tokens[0], xstrdup(a->user.access_token));

    const char *apis[] = {a->cfg.llm_api, a->cfg.mcp_api};
    const char *what[] = {"the LLM", "the MCP Server"};
    if (verbose) {
        say(a, "Step 2: Initializing Token Provider (sidecar mode)");
        say(a, "%s Token provider: the sidecar at %s%s%s", OK, a->cfg.sidecar_url,
            a->cfg.agent_identity ? ", as agent identity " : " (no agent identity: the blueprint itself)",
            a->cfg.agent_identity ? a->cfg.agent_identity : "");
    }
    for (int i = 0; i < 2; i++) {
        if (verbose) {
            say(a, "Step %d: Getting OBO token for %s", i + 3, what[i]);
            say(a, "Calling sidecar: GET /AuthorizationHeader/%s", apis[i]);
        }
        char *tok = sidecar_token(a, apis[i], err, sizeof err);
        if (!tok) {
            fprintf(stderr, "%s %s\n", BAD, err);
            return -1;
        }
        set_token(&a->tokens[i + 1], tok);
        if (verbose) say(a, "%s Got token from sidecar for %s", OK, apis[i]);
        if (!agent_acting(tok)) {
            char d[300];
            describe_token(tok, d, sizeof d);
            say(a, "! The %s token is not an agent acting for the user (%s): a gateway rule such as seed "
                   "003's ('11' in xms_act_fct) will refuse it", apis[i], d);
        }
    }
    for (size_t i = 0; i < a->n_servers; i++) {
        const char *api = a->server_api[i];
        mcpc_set_token(a->servers[i], !api ? NULL : !strcmp(api, a->cfg.mcp_api) ? a->tokens[2].token : NULL);
    }
    if (verbose) say(a, "%s Agent initialized with OBO authentication", OK);
    return 0;
}

/* ---- MCP servers --------------------------------------------------------------------------- */

static void add_server(agent *a, const char *name, const char *url, const char *api)
{
    a->servers[a->n_servers] = mcpc_new(name, url, a->cfg.ca_file);
    a->server_api[a->n_servers] = api && *api ? xstrdup(api) : NULL;
    a->n_servers++;
}

static void remove_server(agent *a, size_t i)
{
    mcpc_free(a->servers[i]);
    free(a->server_api[i]);
    memmove(a->servers + i, a->servers + i + 1, (a->n_servers - i - 1) * sizeof *a->servers);
    memmove(a->server_api + i, a->server_api + i + 1, (a->n_servers - i - 1) * sizeof *a->server_api);
    a->n_servers--;
}

/* Tokens for servers added with another sidecar API than the MCP one. */
static int server_tokens(agent *a, char **extra)
{
    for (size_t i = 0; i < a->n_servers; i++) {
        extra[i] = NULL;
        const char *api = a->server_api[i];
        if (!api || !strcmp(api, a->cfg.mcp_api)) continue;
        char err[1024];
        if (!(extra[i] = sidecar_token(a, api, err, sizeof err))) {
            fprintf(stderr, "%s %s\n", BAD, err);
            return -1;
        }
        mcpc_set_token(a->servers[i], extra[i]);
    }
    return 0;
}

static void free_extra(agent *a, char **extra)
{
    for (size_t i = 0; i < a->n_servers; i++) {
        if (extra[i]) explicit_bzero(extra[i], strlen(extra[i]));
        free(extra[i]);
    }
}

static void list_tools(agent *a)
{
    if (!a->n_servers) {
        printf("No MCP servers: add one (option 3).\n");
        return;
    }
    char *extra[MAX_SERVERS];
    if (server_tokens(a, extra) == 0) {
        for (size_t i = 0; i < a->n_servers; i++) {
            char err[1024];
            json_t *tools = mcpc_list_tools(a->servers[i], err, sizeof err);
            if (!tools) {
                printf("%s %s: %s\n", BAD, mcpc_name(a->servers[i]), err);
                continue;
            }
            printf("%s (%s): %zu tool%s\n", mcpc_name(a->servers[i]), mcpc_url(a->servers[i]), json_array_size(tools),
                   json_array_size(tools) == 1 ? "" : "s");
            size_t k;
            json_t *t;
            json_array_foreach(tools, k, t) {
                const char *d = json_string_value(json_object_get(t, "description"));
                printf("  - %s%s%s\n", json_string_value(json_object_get(t, "name")), d ? ": " : "", d ? d : "");
            }
            if (!json_array_size(tools) && a->server_api[i]) {
                char d[300];
                describe_token(a->tokens[2].token, d, sizeof d);
                printf("  ! no tools for this token (%s): the server's authorization rules hide the tools "
                       "from callers they do not allow\n", d);
            }
            json_decref(tools);
        }
    }
    free_extra(a, extra);
}

/* ---- the conversation ---------------------------------------------------------------------- */

static void reset_conversation(agent *a)
{
    json_decref(a->messages);
    a->messages = json_pack("[{s:s, s:s}]", "role", "system", "content", SYSTEM_PROMPT);
}

static int prompt_once(agent *a, const char *prompt, FILE *trace)
{
    /* Tokens may have expired since the last turn: the sidecar answers from its cache when not. */
    if (acquire(a, false) != 0) return -1;
    char *extra[MAX_SERVERS];
    int rc = -1;
    if (server_tokens(a, extra) == 0) {
        char *llm_url = xasprintf("%s%s/chat/completions", a->cfg.gateway_url, a->cfg.llm_path);
        converse_opts co = {.url = llm_url, .token = a->tokens[1].token, .model = a->cfg.model,
                            .ca_file = a->cfg.ca_file, .max_steps = a->cfg.max_steps, .out = stdout, .trace = trace};
        char err[1024], *answer = NULL;
        rc = converse_turn(&co, a->messages, a->servers, a->n_servers, prompt, &answer, err, sizeof err);
        fputc('\n', stdout);
        fflush(stdout);
        if (rc != 0) fprintf(stderr, "%s %s\n", BAD, err);
        free(answer);
        free(llm_url);
    }
    free_extra(a, extra);
    return rc;
}

/* ---- show-tokens --------------------------------------------------------------------------- */

/* Display columns of a UTF-8 string (every code point one column: enough for this table). */
static size_t cols(const char *s)
{
    size_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static char *cell(const char *v, size_t max)
{
    if (!v) return xstrdup("-");
    if (cols(v) <= max) return xstrdup(v);
    return xasprintf("%.*s...", (int)(max - 3), v);
}

static void rule(const size_t *w, size_t n, const char *l, const char *m, const char *r, const char *h)
{
    fputs(l, stdout);
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < w[i] + 2; k++) fputs(h, stdout);
        fputs(i + 1 < n ? m : r, stdout);
    }
    fputc('\n', stdout);
}

static void row(char **cells, const size_t *w, size_t n, const char *sep)
{
    for (size_t i = 0; i < n; i++) {
        printf("%s %s", sep, cells[i]);
        for (size_t k = cols(cells[i]); k < w[i] + 1; k++) fputc(' ', stdout);
    }
    printf("%s\n", sep);
}

enum { C_TOKEN, C_AUD, C_SUB, C_APP, C_IDTYP, C_FCT, C_PAR, C_EXP, C_STATUS, N_COLS };

static int show_tokens(agent *a, bool raw, bool as_json)
{
    static const char *const heads[N_COLS] = {"Token", "Audience (aud)", "Subject (sub)", "App ID (appid/azp)",
                                              "idtyp", "xms_act_fct", "xms_par_app_azp", "Expires", "Status"};
    token_info ti[3];
    json_t *list = json_array();
    char *cells[3][N_COLS];
    size_t w[N_COLS];
    int bad = 0;
    for (int c = 0; c < N_COLS; c++) w[c] = cols(heads[c]);
    for (int i = 0; i < 3; i++) {
        held *h = &a->tokens[i];
        inspect_token(h->token, true, a->cfg.ca_file, &ti[i]);
        const jwt *t = &ti[i].t;
        char *aud = jwt_claim_text(t, "aud"), when[32] = "-";
        const char *app = jwt_claim_str(t, "appid") ? jwt_claim_str(t, "appid") : jwt_claim_str(t, "azp");
        int64_t exp = 0;
        if (jwt_claim_int(t, "exp", &exp)) inspect_when(exp, when);
        bad += !ti[i].valid;
        cells[i][C_TOKEN] = xstrdup(h->label);
        cells[i][C_AUD] = cell(aud, 36);
        cells[i][C_SUB] = cell(jwt_claim_str(t, "sub"), 24);
        cells[i][C_APP] = cell(app, 36);
        cells[i][C_IDTYP] = cell(jwt_claim_str(t, "idtyp"), 8);
        cells[i][C_FCT] = cell(jwt_claim_str(t, "xms_act_fct"), 12);
        cells[i][C_PAR] = cell(jwt_claim_str(t, "xms_par_app_azp"), 36);
        cells[i][C_EXP] = xstrdup(when);
        cells[i][C_STATUS] = xstrdup(ti[i].valid ? OK : BAD);
        for (int c = 0; c < N_COLS; c++) w[c] = cols(cells[i][c]) > w[c] ? cols(cells[i][c]) : w[c];
        json_t *o = json_pack("{s:s, s:s, s:o, s:O?, s:s?, s:O?, s:O?, s:O?, s:O?, s:b, s:s}", "token", h->kind, "label",
                              h->label, "aud", json_string(aud), "sub", json_object_get(t->claims, "sub"), "appid", app,
                              "idtyp", json_object_get(t->claims, "idtyp"), "xms_act_fct",
                              json_object_get(t->claims, "xms_act_fct"), "xms_par_app_azp",
                              json_object_get(t->claims, "xms_par_app_azp"), "exp", json_object_get(t->claims, "exp"),
                              "valid", ti[i].valid, "status", ti[i].status);
        if (o && raw) {
            json_object_set_new(o, "raw", json_string(h->token));
            json_object_set_new(o, "header", json_deep_copy(t->header));
            json_object_set_new(o, "claims", json_deep_copy(t->claims));
        }
        if (o) json_array_append_new(list, o);
        free(aud);
    }
    if (as_json) {
        char *s = json_dumps(list, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        puts(s);
        free(s);
    } else {
        for (int i = 0; raw && i < 3; i++) {
            char *hd = json_dumps(ti[i].t.header, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            char *cl = json_dumps(ti[i].t.claims, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            printf("\u2500\u2500 %s \u2500\u2500\nRaw token:\n%s\nHeader:\n%s\nClaims:\n%s\n\n", a->tokens[i].label,
                   a->tokens[i].token, hd, cl);
            free(hd);
            free(cl);
        }
        printf("Token Summary\n");
        rule(w, N_COLS, "\u250f", "\u2533", "\u2513", "\u2501");
        row((char **)heads, w, N_COLS, "\u2503");
        rule(w, N_COLS, "\u2521", "\u2547", "\u2529", "\u2501");
        for (int i = 0; i < 3; i++) row(cells[i], w, N_COLS, "\u2502");
        rule(w, N_COLS, "\u2514", "\u2534", "\u2518", "\u2500");
        for (int i = 0; i < 3; i++)
            printf("%s %s: %s\n", ti[i].valid ? OK : BAD, a->tokens[i].label, ti[i].status);
    }
    for (int i = 0; i < 3; i++) {
        for (int c = 0; c < N_COLS; c++) free(cells[i][c]);
        inspect_clear(&ti[i]);
    }
    json_decref(list);
    return bad ? 1 : 0;
}

/* ---- the menu ------------------------------------------------------------------------------ */

/* A line from stdin without its newline; NULL at the end of input. */
static char *read_line(const char *prompt)
{
    fputs(prompt, stdout);
    fflush(stdout);
    static char buf[8192];
    if (!fgets(buf, sizeof buf, stdin)) {
        fputc('\n', stdout);
        return NULL;
    }
    buf[strcspn(buf, "\r\n")] = '\0';
    return buf;
}

static void banner(agent *a)
{
    static const char bar[] = "\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550"
                              "\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550"
                              "\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550\u2550";
    printf("%s\nAI Agent CLI\nLogged in as: %s\n%s\n", bar, a->user.username, bar);
}

static int menu(agent *a)
{
    banner(a);
    for (bool first = true;; first = false) {
        if (!first) putchar('\n');
        printf("1. Prompt agent\n2. List MCP tools\n3. Add MCP tool server\n4. Remove MCP tool server\n"
               "5. Clear conversation history\n6. Exit\n");
        char *choice = read_line("Select an option [1/2/3/4/5/6]: ");
        if (!choice || !strcmp(choice, "6")) break;
        if (!strcmp(choice, "1")) {
            char *p = read_line("Prompt: ");
            if (!p) break;
            if (!*p) continue;
            char *prompt = xstrdup(p);
            prompt_once(a, prompt, stdout);
            free(prompt);
        } else if (!strcmp(choice, "2")) {
            list_tools(a);
        } else if (!strcmp(choice, "3")) {
            if (a->n_servers == MAX_SERVERS) {
                printf("%s At most %d MCP servers.\n", BAD, MAX_SERVERS);
                continue;
            }
            char *n = read_line("Name (letters, digits, '-'): "), *name = n ? xstrdup(n) : NULL;
            char *u = name ? read_line("Streamable HTTP URL: ") : NULL, *url = u ? xstrdup(u) : NULL;
            char *t = url ? read_line("Sidecar API for its token (empty: no token): ") : NULL;
            bool ok = name && url && *name && strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") == strlen(name) &&
                      (!strncmp(url, "http://", 7) || !strncmp(url, "https://", 8));
            for (size_t i = 0; ok && i < a->n_servers; i++) ok = strcmp(mcpc_name(a->servers[i]), name) != 0;
            if (!ok) printf("%s Not added: give a new name of letters, digits and '-', and an http(s) URL.\n", BAD);
            else {
                add_server(a, name, url, t);
                if (t && *t && !strcmp(t, a->cfg.mcp_api)) mcpc_set_token(a->servers[a->n_servers - 1], a->tokens[2].token);
                printf("%s Added MCP server %s (%s)\n", OK, name, url);
            }
            free(name);
            free(url);
        } else if (!strcmp(choice, "4")) {
            for (size_t i = 0; i < a->n_servers; i++) printf("  %s (%s)\n", mcpc_name(a->servers[i]), mcpc_url(a->servers[i]));
            char *n = read_line("Name of the server to remove: ");
            size_t i = 0;
            while (n && i < a->n_servers && strcmp(mcpc_name(a->servers[i]), n)) i++;
            if (n && i < a->n_servers) {
                printf("%s Removed MCP server %s\n", OK, n);
                remove_server(a, i);
            } else {
                printf("%s No MCP server named %s\n", BAD, n ? n : "");
            }
        } else if (!strcmp(choice, "5")) {
            reset_conversation(a);
            printf("%s Conversation history cleared\n", OK);
        } else {
            printf("Choose 1, 2, 3, 4, 5 or 6.\n");
        }
    }
    printf("Goodbye.\n");
    return 0;
}

/* ---- entry --------------------------------------------------------------------------------- */

static void agent_free(agent *a)
{
    session_clear(&a->user);
    for (int i = 0; i < 3; i++) set_token(&a->tokens[i], NULL);
    while (a->n_servers) remove_server(a, a->n_servers - 1);
    json_decref(a->messages);
    free_config(&a->cfg);
}

int agent_main(int argc, char **argv)
{
    const char *sub = argc > 1 ? argv[1] : NULL, *config = NULL, *prompt = NULL, *cache = NULL;
    const char *gateway = NULL, *sidecar = NULL, *agent_id = NULL, *model = NULL, *steps = NULL;
    bool raw = false, as_json = false;
    if (!sub || !strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
        fputs(USAGE, sub ? stdout : stderr);
        return sub ? 0 : 2;
    }
    bool known = !strcmp(sub, "run") || !strcmp(sub, "ask") || !strcmp(sub, "show-tokens") || !strcmp(sub, "logout");
    if (!known) return args_usage_error("agent", "unknown command '%s'", sub);
    for (int i = 2; i < argc; i++) {
        bool missing = false;
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            return 0;
        } else if ((v = args_value(argc, argv, &i, "--config", &missing))) config = v;
        else if ((v = args_value(argc, argv, &i, "--gateway", &missing))) gateway = v;
        else if ((v = args_value(argc, argv, &i, "--sidecar", &missing))) sidecar = v;
        else if ((v = args_value(argc, argv, &i, "--agent-id", &missing))) agent_id = v;
        else if ((v = args_value(argc, argv, &i, "--model", &missing))) model = v;
        else if ((v = args_value(argc, argv, &i, "--max-steps", &missing))) steps = v;
        else if ((v = args_value(argc, argv, &i, "--cache", &missing))) cache = v;
        else if (!strcmp(sub, "show-tokens") && !strcmp(argv[i], "--output-raw")) raw = true;
        else if (!strcmp(sub, "show-tokens") && !strcmp(argv[i], "--json")) as_json = true;
        else if (!missing && !strcmp(sub, "ask") && !prompt && argv[i][0] != '-') prompt = argv[i];
        else return args_usage_error("agent", missing ? "option %s needs a value" : "unexpected argument %s", argv[i]);
    }
    if (!strcmp(sub, "ask") && (!prompt || !*prompt)) return args_usage_error("agent", "ask needs a prompt%s", "");
    int max_steps = 0;
    if (steps && (sscanf(steps, "%d", &max_steps) != 1 || max_steps < 1 || max_steps > 100))
        return args_usage_error("agent", "--max-steps takes 1 to 100, not %s", steps);

    agent a = {.say = !strcmp(sub, "run") ? stdout : stderr};
    char err[1024];
    if (!strcmp(sub, "logout")) {
        char *path = cache ? xstrdup(cache) : session_default_path();
        bool existed = false;
        int rc = path ? session_logout(path, &existed, err, sizeof err) : -1;
        if (!path) fprintf(stderr, "agentid agent: neither XDG_CONFIG_HOME nor HOME is set: give --cache FILE\n");
        else if (rc != 0) fprintf(stderr, "agentid agent: %s\n", err);
        else printf(existed ? "%s Signed out: removed %s\n" : "%s Not signed in (no %s)\n", OK, path);
        free(path);
        return rc ? 1 : 0;
    }
    if (load_config(&a.cfg, config, err, sizeof err) != 0) {
        fprintf(stderr, "agentid agent: %s\n", err);
        free_config(&a.cfg);
        return 1;
    }
    if (gateway) a.cfg.gateway_url = gateway;
    if (sidecar) a.cfg.sidecar_url = sidecar;
    if (agent_id) a.cfg.agent_identity = *agent_id ? agent_id : NULL;
    if (model) a.cfg.model = model;
    a.cfg.max_steps = max_steps;
    a.cfg.cache_path = cache ? xstrdup(cache) : session_default_path();
    if (!a.cfg.cache_path) {
        fprintf(stderr, "agentid agent: neither XDG_CONFIG_HOME nor HOME is set: give --cache FILE\n");
        agent_free(&a);
        return 1;
    }
    a.tokens[0] = (held){.label = "Tc (User)", .kind = "user"};
    a.tokens[1] = (held){.label = "T2 (LLM)", .kind = "llm"};
    a.tokens[2] = (held){.label = "T2 (MCP Server)", .kind = "mcp"};
    char *mcp_url = xasprintf("%s%s", a.cfg.gateway_url, a.cfg.mcp_path);
    add_server(&a, "gateway", mcp_url, a.cfg.mcp_api);
    free(mcp_url);
    reset_conversation(&a);
    httpc_global_init();

    int rc;
    if (!strcmp(sub, "run")) {
        say(&a, "Starting AI Agent CLI...");
        say(&a, "Running with Entra OBO through the sidecar (provider=sidecar, settings %s)", a.cfg.source);
        rc = acquire(&a, true) == 0 ? menu(&a) : 1;
    } else if (!strcmp(sub, "ask")) {
        rc = prompt_once(&a, prompt, stderr) == 0 ? 0 : 1;
    } else {
        rc = acquire(&a, false) == 0 ? show_tokens(&a, raw, as_json) : 1;
    }
    agent_free(&a);
    return rc;
}
