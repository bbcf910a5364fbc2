/* up — see up.h.
 *
 * One supervisor process, four children, each this same binary (/proc/self/exe) run with a
 * subcommand: the issuer, then the weather API and the sidecar, then the chat agent, each
 * stage started once the previous one answers GET /healthz. Children live in process groups
 * of their own, so a terminal's Ctrl-C reaches only up, which then stops them in an orderly
 * way (SIGTERM, SIGKILL after 5 s); PR_SET_PDEATHSIG stops them too if up itself is killed.
 * Signals arrive through a signalfd and are handled in one poll() loop together with the
 * timers (restart backoff, health checks, the kill deadline); children are reaped with
 * waitpid(WNOHANG). Children write to up's stdout/stderr directly: their lines are JSON
 * with a "component" field. Secrets go only into the sidecar's environment.
 *
 * --profile gateway runs seed 003's stack instead: the issuer (with its managed-identity
 * endpoint), then the sidecar, two demo MCP servers (or none, with --mcp), then the gateway in
 * front of the LLM and the MCP servers. The sidecar holds no secret: up itself plays the
 * kubelet's part and projects a token of the host's managed identity (audience
 * api://AzureADTokenExchange) into a file, refreshed before it expires, which the sidecar
 * presents as the blueprint's federated credential (SourceType SignedAssertionFilePath).
 */
#include "cli/up.h"

#include "core/args.h"

#include "core/http_client.h"
#include "core/log.h"
#include "core/util.h"
#include "issuer/directory.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define DEFAULT_DIR        ".agentid/issuer"
#define BACKOFF_FIRST_MS   500
#define BACKOFF_MAX_MS     10000
#define BACKOFF_RESET_MS   30000    /* up this long: the next crash restarts quickly again */
#define STOP_GRACE_MS      5000     /* SIGTERM, then SIGKILL */
#define STAGE_WAIT_MS      30000    /* a stage not healthy by then: start the next anyway */
#define HEALTH_EVERY_MS    100
#define HEALTH_WATCH_MS    60000    /* after a (re)start, check /healthz this long at most */
#define HEALTH_TIMEOUT_MS  1000

static const char USAGE[] =
    "usage: agentid up [--profile default|gateway] [--dir DIR] [--issuer-port N] [--mi-port N]\n"
    "                  [--sidecar-port N] [--llm URL] [--model NAME]\n"
    "                  default: [--weather-port N] [--chat-port N]\n"
    "                  gateway: [--gateway-port N] [--mcp-weather-port N] [--mcp-clock-port N]\n"
    "                           [--mcp NAME=URL ...]\n"
    "\n"
    "Runs a local stack on 127.0.0.1, each part a child process; a part that exits is restarted;\n"
    "Ctrl-C stops everything. The issuer directory DIR is created on first run.\n"
    "  default  the issuer, the weather API, the sidecar and the chat agent (seed 000's demo)\n"
    "  gateway  seed 003: the issuer with its managed-identity endpoint, the sidecar with a\n"
    "           federated token file up keeps fresh (no client secret), two demo MCP servers and\n"
    "           the gateway (/llm and /mcp with jwtAuth, the MCP tools for the agent identity only);\n"
    "           writes the gateway's YAML into DIR/../gateway-stack/ and DIR/../agent.json for\n"
    "           `agentid agent`\n"
    "\n"
    "  --dir DIR          issuer directory ($AGENTID_ISSUER_DIR, default " DEFAULT_DIR ")\n"
    "  --issuer-port N    issuer HTTPS port (8443)\n"
    "  --mi-port N        issuer's managed-identity endpoint (8444)\n"
    "  --sidecar-port N   sidecar (5000)\n"
    "  --weather-port N   weather API (5100)\n"
    "  --chat-port N      chat agent and its web UI (3003)\n"
    "  --gateway-port N   gateway (3000)\n"
    "  --mcp-weather-port N, --mcp-clock-port N\n"
    "                     the demo MCP servers (5201, 5202)\n"
    "  --mcp NAME=URL     an MCP server (Streamable HTTP) for the gateway instead of the demo\n"
    "                     ones; repeatable; NAME: letters, digits, '-'\n"
    "  --llm URL          default: an Ollama-compatible LLM ($OLLAMA_HOST; none: Direct mode only)\n"
    "                     gateway: any OpenAI-compatible API behind /llm ($OLLAMA_HOST; none:\n"
    "                     Ollama's http://127.0.0.1:11434)\n"
    "  --model NAME       the LLM's model\n";

enum { P_ISSUER, P_WEATHER, P_SIDECAR, P_CHAT, N_PARTS };
#define MAX_PARTS   12
#define MAX_MCP     8
#define OLLAMA_URL  "http://127.0.0.1:11434"
#define PROJECT_RETRY_MS  2000   /* a failed token projection is tried again this soon */

typedef struct {
    char **v;
    size_t n, cap;
} strv;

typedef struct {
    const char *name;     /* as in log lines: issuer, weather-api, sidecar, chat-agent */
    int stage;            /* started once every part of the previous stage is healthy */
    int port;             /* where /healthz answers */
    bool tls;
    strv argv, env;
    pid_t pid;            /* 0: not running */
    int64_t started;      /* ms, monotonic */
    int64_t restart_at;   /* ms; 0: no restart pending */
    int64_t next_check;   /* ms; next /healthz probe */
    int backoff;          /* ms before the next restart */
    bool healthy;         /* answered /healthz since it was last started */
    bool given_up;        /* a usage error: restarting would not help */
} part;

/* The token projector (gateway profile): the host's managed-identity token in a file. */
typedef struct {
    char *url;            /* the managed-identity endpoint's token URL */
    char *header;         /* "X-IDENTITY-HEADER: <secret>" */
    char *file;           /* where the token goes (0600, atomic rename) */
    int stage;            /* projected before this stage starts */
    int64_t next_at;      /* ms, monotonic; 0: not yet started */
    bool ok;              /* a token has been written */
} projector;

typedef struct {
    part p[MAX_PARTS];
    int n;                /* parts in use */
    projector *proj;      /* gateway profile, else NULL */
    const char *self;     /* the executable to run */
    const char *ca;       /* the local CA (PEM), for the issuer's /healthz */
    int stage;            /* the stage being started; N stages done: the banner is out */
    int64_t stage_deadline;
    bool stopping;
    int64_t kill_at;      /* ms; SIGKILL whatever still runs */
    bool killed;
} stack;

static void strv_add(strv *s, char *owned)
{
    if (s->n + 2 > s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = owned;
    s->v[s->n] = NULL;
}

static void strv_free(strv *s)
{
    for (size_t i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
    *s = (strv){0};
}

/* Is the NAME=value entry e one of these keys, or under one of these prefixes
 * (case-insensitive, as the sidecar reads its settings; ':' counts as "__")? */
static bool env_matches(const char *e, const char *const *names, const char *const *prefixes)
{
    const char *eq = strchr(e, '=');
    size_t klen = eq ? (size_t)(eq - e) : strlen(e);
    for (; names && *names; names++)
        if (strlen(*names) == klen && !strncmp(e, *names, klen)) return true;
    for (; prefixes && *prefixes; prefixes++) {
        size_t n = strlen(*prefixes);
        if (klen >= n && !strncasecmp(e, *prefixes, n)) return true;
    }
    return false;
}

/* The environment of a child: up's own, minus the keys it sets and the prefixes it owns,
 * plus extra (NAME=value strings, NULL-terminated). */
static void env_build(strv *out, const char *const *extra, const char *const *strip_prefixes)
{
    const char *names[16];
    size_t n = 0;
    static char keys[16][128];
    for (size_t i = 0; extra[i] && n < ARRAY_LEN(names) - 1; i++) {
        const char *eq = strchr(extra[i], '=');
        snprintf(keys[n], sizeof keys[n], "%.*s", (int)(eq - extra[i]), extra[i]);
        names[n] = keys[n];
        n++;
    }
    names[n] = NULL;
    for (char **e = environ; e && *e; e++)
        if (!env_matches(*e, names, strip_prefixes)) strv_add(out, xstrdup(*e));
    for (size_t i = 0; extra[i]; i++) strv_add(out, xstrdup(extra[i]));
}

static bool parse_port(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > 65535) return false;
    *out = (int)v;
    return true;
}

/* 0 if 127.0.0.1:port can be bound now (as the servers bind: with SO_REUSEADDR), else errno. */
static int port_check(int port)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return errno;
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = bind(s, (struct sockaddr *)&a, sizeof a) == 0 ? 0 : errno;
    close(s);
    return rc;
}

/* $OLLAMA_HOST as Ollama reads it: "host", "host:port" or a URL; default port 11434. */
static char *llm_from_env(void)
{
    const char *h = getenv("OLLAMA_HOST");
    if (!h || !*h) return NULL;
    if (strstr(h, "://")) return xstrdup(h);
    const char *colon = strrchr(h, ':');
    bool has_port = colon && !strchr(colon, ']');
    return has_port ? xasprintf("http://%s", h) : xasprintf("http://%s:11434", h);
}

/* mkdir -p of dir's parent folders (0700: the directory holds secrets), so the default
 * .agentid/issuer works in a fresh checkout; dir_init makes dir itself. 0, or errno. */
static int make_parents(const char *dir)
{
    char *p = xstrdup(dir);
    int rc = 0;
    for (char *q = p + 1; *q && !rc; q++) {
        if (*q != '/') continue;
        *q = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) rc = errno;
        *q = '/';
    }
    free(p);
    return rc;
}

static const char *describe_status(int st, char *buf, size_t n)
{
    if (WIFEXITED(st)) snprintf(buf, n, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st)) snprintf(buf, n, "was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else snprintf(buf, n, "stopped (status 0x%x)", (unsigned)st);
    return buf;
}

static void spawn(stack *s, part *p)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        log_msg(LOG_ERROR, "start-failed", "cannot start %s: fork: %s; retrying in %.1f s", p->name,
                strerror(errno), p->backoff / 1000.0);
        p->restart_at = util_mono_ms() + p->backoff;
        p->backoff = p->backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : p->backoff * 2;
        return;
    }
    if (pid == 0) {
        /* Only async-signal-safe calls from here to execve. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        setpgid(0, 0);                         /* the terminal's Ctrl-C goes to up only */
        prctl(PR_SET_PDEATHSIG, SIGTERM);      /* up killed: so are its children */
        if (getppid() != parent) _exit(1);
        int null = open("/dev/null", O_RDONLY);
        if (null > 0) dup2(null, 0);
        close_range(3, ~0u, 0);                /* no listening socket or connection leaks in */
        execve(s->self, p->argv.v, p->env.v);
        static const char msg[] = "agentid up: cannot run the agentid binary\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(127);
    }
    p->pid = pid;
    p->started = util_mono_ms();
    p->next_check = p->started + HEALTH_EVERY_MS;
    p->restart_at = 0;
    p->healthy = false;
    log_msg(LOG_INFO, "started", "%s started (pid %d), port %d", p->name, (int)pid, p->port);
}

/* Fetch the host's managed-identity token for api://AzureADTokenExchange and write it to the
 * projector's file, as the kubelet projects a service-account token; schedule the refresh at
 * 80 % of its lifetime (a retry soon on failure). The token is never logged. */
static void project(stack *s)
{
    projector *pj = s->proj;
    char err[256];
    const char *hdrs[] = {pj->header, NULL};
    httpc_request rq = {.url = pj->url, .headers = hdrs, .timeout_ms = 5000, .max_response = 64 * 1024};
    httpc_response rs = {0};
    httpc_result hr = httpc_do(&rq, &rs, err, sizeof err);
    json_t *j = hr == HTTPC_OK && rs.status == 200 ? json_loadb(rs.body, rs.body_len, 0, NULL) : NULL;
    const char *tok = json_string_value(json_object_get(j, "access_token"));
    const json_t *ein = json_object_get(j, "expires_in");
    long long life = json_is_integer(ein) ? json_integer_value(ein) : json_is_string(ein) ? atoll(json_string_value(ein)) : 0;
    int64_t now = util_mono_ms();
    if (!tok) {
        if (hr != HTTPC_OK) log_msg(LOG_WARN, "projection-failed", "managed-identity token: %s; retrying", err);
        else log_msg(LOG_WARN, "projection-failed", "managed-identity token: the endpoint answered HTTP %ld; retrying",
                     rs.status);
        pj->next_at = now + PROJECT_RETRY_MS;
    } else if (util_write_file(pj->file, tok, strlen(tok), 0600) != 0) {
        log_msg(LOG_WARN, "projection-failed", "writing %s: %s; retrying", pj->file, strerror(errno));
        pj->next_at = now + PROJECT_RETRY_MS;
    } else {
        int64_t refresh = life > 0 ? life * 800 : 60000;   /* ms: 80 % of the lifetime */
        if (refresh < 5000) refresh = 5000;
        char fp[20];
        log_msg(LOG_INFO, "token-projected", "managed-identity token %s (audience %s, %lld s) written to %s; "
                "next refresh in %lld s", log_fingerprint(tok, fp), DIR_TOKEN_EXCHANGE_URI, life, pj->file,
                (long long)(refresh / 1000));
        pj->ok = true;
        pj->next_at = now + refresh;
    }
    if (rs.body) explicit_bzero(rs.body, rs.body_len);
    json_decref(j);
    httpc_response_free(&rs);
}

static void start_stage(stack *s, int stage)
{
    if (s->proj && stage == s->proj->stage && !s->proj->next_at) project(s);
    s->stage = stage;
    s->stage_deadline = util_mono_ms() + STAGE_WAIT_MS;
    for (int i = 0; i < s->n; i++)
        if (s->p[i].stage == stage) spawn(s, &s->p[i]);
}

static bool stage_exists(const stack *s, int stage)
{
    for (int i = 0; i < s->n; i++)
        if (s->p[i].stage == stage) return true;
    return false;
}

static bool probe(const stack *s, const part *p)
{
    char url[64], err[256];
    snprintf(url, sizeof url, "%s://127.0.0.1:%d/healthz", p->tls ? "https" : "http", p->port);
    httpc_request rq = {.url = url, .timeout_ms = HEALTH_TIMEOUT_MS, .ca_file = p->tls ? s->ca : NULL,
                        .max_response = 4096};
    httpc_response rs = {0};
    bool ok = httpc_do(&rq, &rs, err, sizeof err) == HTTPC_OK && rs.status == 200;
    httpc_response_free(&rs);
    return ok;
}

static void reap(stack *s)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        part *p = NULL;
        for (int i = 0; i < s->n; i++)
            if (s->p[i].pid == pid) p = &s->p[i];
        if (!p) continue;
        p->pid = 0;
        char why[96];
        describe_status(st, why, sizeof why);
        if (s->stopping) {
            log_msg(LOG_INFO, "stopped", "%s (pid %d) %s", p->name, (int)pid, why);
            continue;
        }
        int64_t now = util_mono_ms();
        if (WIFEXITED(st) && WEXITSTATUS(st) == 2) {
            /* 2 is a usage error: the same command line would fail the same way. */
            p->given_up = true;
            log_msg(LOG_ERROR, "exited", "%s (pid %d) %s (a usage error); not restarting it", p->name,
                    (int)pid, why);
            continue;
        }
        if (now - p->started >= BACKOFF_RESET_MS) p->backoff = BACKOFF_FIRST_MS;
        p->restart_at = now + p->backoff;
        log_msg(LOG_WARN, "exited", "%s (pid %d) %s; restarting it in %.1f s", p->name, (int)pid, why,
                p->backoff / 1000.0);
        p->backoff = p->backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : p->backoff * 2;
    }
}

static void begin_stop(stack *s, const char *why)
{
    if (s->stopping) {
        if (!s->killed) {   /* asked twice: do not wait */
            log_msg(LOG_WARN, "stopping", "%s again: killing every part now", why);
            s->kill_at = util_mono_ms();
        }
        return;
    }
    s->stopping = true;
    s->kill_at = util_mono_ms() + STOP_GRACE_MS;
    log_msg(LOG_INFO, "stopping", "%s: stopping every part", why);
    for (int i = s->n - 1; i >= 0; i--) {
        s->p[i].restart_at = 0;
        if (s->p[i].pid > 0) kill(s->p[i].pid, SIGTERM);
    }
}

static bool any_running(const stack *s)
{
    for (int i = 0; i < s->n; i++)
        if (s->p[i].pid > 0) return true;
    return false;
}

typedef struct {
    const char *dir, *tenant, *alice, *password, *llm, *model;
    int issuer_port, mi_port, sidecar_port, weather_port, chat_port;
    /* gateway profile */
    bool gateway, llm_given;
    int gateway_port;
    const char *agent_id, *rule, *yaml, *agent_json, *token_file;
    const char *mcp_name[MAX_MCP], *mcp_url[MAX_MCP];
    int n_mcp;
} banner_info;

static void warnings(const stack *s)
{
    for (int i = 0; i < s->n; i++)
        if (s->p[i].given_up)
            printf("  warning      %s stopped with a usage error; see its log lines\n", s->p[i].name);
        else if (!s->p[i].healthy)
            printf("  warning      %s is not answering yet; see its log lines\n", s->p[i].name);
    if (s->proj && !s->proj->ok)
        printf("  warning      no managed-identity token could be projected yet; see up's log lines\n");
}

static void banner_gateway(const stack *s, const banner_info *b)
{
    printf("\nagentid up: seed 003's stack is running (Ctrl-C stops it)\n");
    printf("  gateway      http://127.0.0.1:%d  (/llm and /mcp, each with jwtAuth)\n", b->gateway_port);
    printf("  /llm         -> %s%s%s%s\n", b->llm, b->model ? ", model " : "", b->model ? b->model : "",
           b->llm_given ? "" : " (Ollama's default)");
    if (!b->llm_given)
        printf("               no LLM given: start Ollama there, or point /llm at any OpenAI-compatible\n"
               "               provider with --llm http://host:port (and --model NAME)\n");
    printf("               audience https://cognitiveservices.azure.com\n");
    for (int i = 0; i < b->n_mcp; i++)
        printf("  %-12s %s  (MCP target '%s')\n", i ? "" : "/mcp", b->mcp_url[i], b->mcp_name[i]);
    printf("  rule         %s\n", b->rule);
    printf("               (only the agent identity 'Weather Agent' %s, acting for a user)\n", b->agent_id);
    printf("  issuer       https://127.0.0.1:%d/%s/v2.0  (managed identity: http://127.0.0.1:%d)\n",
           b->issuer_port, b->tenant, b->mi_port);
    printf("  sidecar      http://127.0.0.1:%d  (no client secret: the blueprint's federated credential\n"
           "               is the host's managed-identity token in %s, refreshed by up)\n",
           b->sidecar_port, b->token_file);
    if (b->password) printf("  sign in as   %s / %s  (a local demo user)\n", b->alice, b->password);
    printf("  local CA     %s\n", s->ca);
    printf("  gateway.yaml %s\n", b->yaml);
    printf("  agent.json   %s\n", b->agent_json);
    warnings(s);
    printf("  next step    agentid agent run\n\n");
    fflush(stdout);
}

static void banner(const stack *s, const banner_info *b)
{
    if (b->gateway) {
        banner_gateway(s, b);
        return;
    }
    printf("\nagentid up: the local stack is running (Ctrl-C stops it)\n");
    printf("  chat UI      http://localhost:%d\n", b->chat_port);
    printf("  issuer       https://127.0.0.1:%d/%s/v2.0  (managed identity: http://127.0.0.1:%d)\n",
           b->issuer_port, b->tenant, b->mi_port);
    printf("  sidecar      http://127.0.0.1:%d\n", b->sidecar_port);
    printf("  weather API  http://127.0.0.1:%d\n", b->weather_port);
    if (b->llm) printf("  LLM          %s%s%s\n", b->llm, b->model ? ", model " : "", b->model ? b->model : "");
    else printf("  LLM          none given (--llm URL or $OLLAMA_HOST); Direct mode needs none\n");
    if (b->password) printf("  sign in as   %s / %s  (a local demo user)\n", b->alice, b->password);
    printf("  local CA     %s\n", s->ca);
    printf("               trust it: NODE_EXTRA_CA_CERTS=%s, curl --cacert %s\n", s->ca, s->ca);
    printf("  directory    %s (its secrets stay in %s)\n", b->dir, DIR_FILE);
    warnings(s);
    printf("\n");
    fflush(stdout);
}

/* The supervisor loop: returns when every child has stopped after SIGINT/SIGTERM/SIGHUP. */
static void supervise(stack *s, int sfd, const banner_info *b)
{
    int last_stage = 0;
    for (int i = 0; i < s->n; i++)
        if (s->p[i].stage > last_stage) last_stage = s->p[i].stage;
    start_stage(s, 0);
    for (;;) {
        int64_t now = util_mono_ms();

        /* Health: during start-up, and after any restart, until the part answers. */
        if (!s->stopping) {
            for (int i = 0; i < s->n; i++) {
                part *p = &s->p[i];
                if (p->pid <= 0 || p->healthy || now - p->started > HEALTH_WATCH_MS || now < p->next_check)
                    continue;
                if (probe(s, p)) {
                    p->healthy = true;
                    log_msg(LOG_INFO, "healthy", "%s is answering on port %d", p->name, p->port);
                } else {
                    p->next_check = util_mono_ms() + HEALTH_EVERY_MS;
                }
            }
            now = util_mono_ms();
            while (s->stage <= last_stage) {
                bool all = true;
                for (int i = 0; i < s->n; i++)
                    if (s->p[i].stage == s->stage && !s->p[i].healthy && !s->p[i].given_up) all = false;
                if (!all && now < s->stage_deadline) break;
                if (!all)
                    for (int i = 0; i < s->n; i++)
                        if (s->p[i].stage == s->stage && !s->p[i].healthy && !s->p[i].given_up)
                            log_msg(LOG_WARN, "not-healthy",
                                    "%s is not answering on /healthz after %d s; starting the rest anyway",
                                    s->p[i].name, STAGE_WAIT_MS / 1000);
                int next = s->stage + 1;
                while (next <= last_stage && !stage_exists(s, next)) next++;
                if (next > last_stage) {
                    s->stage = last_stage + 1;
                    banner(s, b);
                } else {
                    start_stage(s, next);
                }
            }
            for (int i = 0; i < s->n; i++) {
                part *p = &s->p[i];
                if (p->restart_at && p->pid == 0 && now >= p->restart_at) spawn(s, p);
            }
            if (s->proj && s->proj->next_at && now >= s->proj->next_at) project(s);
        } else {
            if (!any_running(s)) return;
            if (!s->killed && now >= s->kill_at) {
                s->killed = true;
                for (int i = 0; i < s->n; i++)
                    if (s->p[i].pid > 0) {
                        log_msg(LOG_WARN, "killing", "%s (pid %d) did not stop in %d s: SIGKILL",
                                s->p[i].name, (int)s->p[i].pid, STOP_GRACE_MS / 1000);
                        kill(s->p[i].pid, SIGKILL);
                    }
            }
        }

        /* Sleep until a signal or the next timer. */
        now = util_mono_ms();
        int64_t wake = INT64_MAX;
        if (s->stopping) {
            if (!s->killed) wake = s->kill_at;
        } else {
            for (int i = 0; i < s->n; i++) {
                const part *p = &s->p[i];
                if (p->restart_at && p->pid == 0 && p->restart_at < wake) wake = p->restart_at;
                if (p->pid > 0 && !p->healthy && now - p->started <= HEALTH_WATCH_MS && p->next_check < wake)
                    wake = p->next_check;
            }
            if (s->stage <= last_stage && s->stage_deadline < wake) wake = s->stage_deadline;
            if (s->proj && s->proj->next_at && s->proj->next_at < wake) wake = s->proj->next_at;
        }
        int timeout = wake == INT64_MAX ? -1 : wake <= now ? 0 : (int)(wake - now);
        struct pollfd pfd = {.fd = sfd, .events = POLLIN};
        int n = poll(&pfd, 1, timeout);
        if (n < 0 && errno != EINTR) {
            log_msg(LOG_ERROR, "poll", "poll: %s", strerror(errno));
            begin_stop(s, "internal error");
            continue;
        }
        if (n <= 0) continue;
        struct signalfd_siginfo si[16];
        ssize_t got = read(sfd, si, sizeof si);
        bool child = false;
        for (ssize_t k = 0; got > 0 && k < got / (ssize_t)sizeof si[0]; k++) {
            if (si[k].ssi_signo == SIGCHLD) child = true;
            else begin_stop(s, si[k].ssi_signo == SIGINT ? "interrupted" : strsignal((int)si[k].ssi_signo));
        }
        if (child) reap(s);
    }
}

/* ---- the gateway profile's files -------------------------------------------------------- */

/* The folder DIR is in ("." for a bare name), without trailing slashes. */
static char *parent_dir(const char *dir)
{
    char *p = xstrdup(dir);
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') p[--n] = '\0';
    char *slash = strrchr(p, '/');
    if (!slash) {
        free(p);
        return xstrdup(".");
    }
    if (slash == p) slash[1] = '\0';
    else *slash = '\0';
    return p;
}

/* A value from the command line safe to put in a double-quoted YAML scalar and a URL field:
 * printable ASCII (no space), and for URLs an http(s):// scheme. */
static bool clean_value(const char *v, bool url)
{
    if (!*v || (url && !util_str_starts_with(v, "http://") && !util_str_starts_with(v, "https://"))) return false;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p < 0x21 || *p > 0x7e || *p == '"' || *p == '\\') return false;
    return true;
}

static bool target_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > 32) return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') && !(s[i] >= '0' && s[i] <= '9') && s[i] != '-')
            return false;
    return true;
}

typedef struct {
    int port, issuer_port;
    const char *tenant, *llm, *model, *mcp_app_id, *rule;
    const char *const *mcp_name, *const *mcp_url;
    int n_mcp;
} gateway_cfg;

/* Seed 003's agentgateway configuration, for `agentid gateway` (docs/gateway.md). Values are
 * GUIDs, numbers and URLs checked by clean_value, so plain double quotes are safe. */
static char *gateway_yaml(const gateway_cfg *g)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (!f) return NULL;
    char *iss = xasprintf("https://127.0.0.1:%d/%s/", g->issuer_port, g->tenant);
    char *jwks_url = xasprintf("https://127.0.0.1:%d/%s/discovery/v2.0/keys", g->issuer_port, g->tenant);
    fprintf(f,
            "# Written by `agentid up --profile gateway` on every start: edits are overwritten.\n"
            "# Seed 003's gateway: the LLM and the MCP servers behind Entra-style tokens (v1: the\n"
            "# issuer is https://<host>/<tenant>/, and the rule reads appid).\n"
            "binds:\n"
            "- port: %d\n"
            "  listeners:\n"
            "  - name: agents\n"
            "    routes:\n"
            "    - name: llm\n"
            "      matches: [{path: {pathPrefix: /llm}}]\n"
            "      backends:\n"
            "      - ai:\n"
            "          name: llm\n",
            g->port);
    if (g->model) fprintf(f, "          provider: {openAI: {model: \"%s\"}}\n", g->model);
    else fprintf(f, "          provider: {openAI: {}}\n");
    fprintf(f,
            "          hostOverride: \"%s\"\n"
            "      policies:\n"
            "        jwtAuth:\n"
            "          mode: strict\n"
            "          issuer: \"%s\"\n"
            "          audiences: [\"" DIR_LLM_URI "\"]\n"
            "          jwks: {url: \"%s\"}\n"
            "    - name: mcp\n"
            "      matches: [{path: {exact: /mcp}}]\n"
            "      backends:\n"
            "      - mcp:\n"
            "          targets:\n",
            g->llm, iss, jwks_url);
    for (int i = 0; i < g->n_mcp; i++)
        fprintf(f, "          - name: %s\n            mcp: {host: \"%s\"}\n", g->mcp_name[i], g->mcp_url[i]);
    fprintf(f,
            "      resourceMetadata: {scopesSupported: [\"api://%s/.default\"]}\n"
            "      policies:\n"
            "        jwtAuth:\n"
            "          mode: strict\n"
            "          issuer: \"%s\"\n"
            "          audiences: [\"api://%s\"]\n"
            "          jwks: {url: \"%s\"}\n"
            "        mcpAuthorization:\n"
            "          rules:\n"
            "          # an OBO token of the agent identity we know: called by it, for a user\n"
            "          - \"%s\"\n",
            g->mcp_app_id, iss, g->mcp_app_id, jwks_url, g->rule);
    fclose(f);
    free(iss);
    free(jwks_url);
    return out;
}

/* Create (0700) the folder, or find it there. 0 or errno. */
static int make_dir(const char *path)
{
    return mkdir(path, 0700) == 0 || errno == EEXIST ? 0 : errno;
}

static int write_text(const char *path, const char *text)
{
    if (util_write_file(path, text, strlen(text), 0600) == 0) return 0;
    fprintf(stderr, "agentid up: writing %s: %s\n", path, strerror(errno));
    return -1;
}

/* ---- main ------------------------------------------------------------------------------- */

static void add_args(part *p, const char *argv0, const char *cmd)
{
    strv_add(&p->argv, xstrdup(argv0));
    strv_add(&p->argv, xstrdup(cmd));
}

int up_main(int argc, char **argv)
{
    const char *dir = getenv("AGENTID_ISSUER_DIR");
    if (!dir || !*dir) dir = DEFAULT_DIR;
    const char *llm_opt = NULL, *model = NULL, *profile = "default";
    /* issuer, MI, sidecar, weather, chat (default); gateway, MCP weather, MCP clock (gateway) */
    enum { K_ISSUER, K_MI, K_SIDECAR, K_WEATHER, K_CHAT, K_GATEWAY, K_MCPW, K_MCPC, N_PORTS };
    int ports[N_PORTS] = {8443, 8444, 5000, 5100, 3003, 3000, 5201, 5202};
    bool given[N_PORTS] = {0};
    static const char *const port_flag[N_PORTS] = {"--issuer-port", "--mi-port", "--sidecar-port",
                                                   "--weather-port", "--chat-port", "--gateway-port",
                                                   "--mcp-weather-port", "--mcp-clock-port"};
    static const char *const port_name[N_PORTS] = {"issuer", "issuer managed identity", "sidecar",
                                                   "weather API", "chat agent", "gateway",
                                                   "weather MCP server", "clock MCP server"};
    const char *mcp_name[MAX_MCP] = {0}, *mcp_url[MAX_MCP] = {0};
    char *mcp_name_buf[MAX_MCP] = {0};
    int n_mcp = 0, rc = 1;
    for (int i = 1; i < argc; i++) {
        bool bad = false, matched = false;
        const char *v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            return 0;
        }
        if ((v = args_value(argc, argv, &i, "--dir", &bad))) dir = v, matched = true;
        else if ((v = args_value(argc, argv, &i, "--llm", &bad))) llm_opt = v, matched = true;
        else if ((v = args_value(argc, argv, &i, "--model", &bad))) model = v, matched = true;
        else if ((v = args_value(argc, argv, &i, "--profile", &bad))) profile = v, matched = true;
        else if ((v = args_value(argc, argv, &i, "--mcp", &bad))) {
            const char *eq = strchr(v, '=');
            if (!eq || !target_name_ok(v, (size_t)(eq - v)) || !clean_value(eq + 1, true)) {
                rc = args_usage_error("up", "--mcp %s: expected NAME=URL (NAME: letters, digits, '-'; "
                                      "URL: http(s)://...)", v);
                goto free_args;
            }
            if (n_mcp == MAX_MCP) {
                rc = args_usage_error("up", "--mcp: at most %s servers", "8");
                goto free_args;
            }
            for (int k = 0; k < n_mcp; k++)
                if (!strncmp(mcp_name[k], v, (size_t)(eq - v)) && !mcp_name[k][eq - v]) {
                    rc = args_usage_error("up", "--mcp %s: that name is given twice", v);
                    goto free_args;
                }
            mcp_name[n_mcp] = mcp_name_buf[n_mcp] = xstrndup(v, (size_t)(eq - v));
            mcp_url[n_mcp++] = eq + 1;
            matched = true;
        }
        for (int k = 0; !matched && !bad && k < N_PORTS; k++)
            if ((v = args_value(argc, argv, &i, port_flag[k], &bad))) {
                if (!parse_port(v, &ports[k])) {
                    rc = args_usage_error("up", "%s: not a port number (1-65535)", port_flag[k]);
                    goto free_args;
                }
                given[k] = matched = true;
            }
        if (bad) {
            rc = args_usage_error("up", "option %s needs a value", argv[i]);
            goto free_args;
        }
        if (!matched) {
            rc = args_usage_error("up", "unknown option %s", argv[i]);
            goto free_args;
        }
    }
    bool gw = !strcmp(profile, "gateway");
    if (!gw && strcmp(profile, "default") != 0) {
        rc = args_usage_error("up", "--profile %s: expected default or gateway", profile);
        goto free_args;
    }
    if (!*dir) {
        rc = args_usage_error("up", "%s--dir is empty", "");
        goto free_args;
    }
    for (int k = 0; k < N_PORTS; k++) {
        bool mine = k <= K_SIDECAR || (gw ? k >= K_GATEWAY : k <= K_CHAT);
        if (given[k] && !mine) {
            rc = args_usage_error("up", gw ? "%s is for the default profile" : "%s is for --profile gateway",
                                  port_flag[k]);
            goto free_args;
        }
    }
    if (!gw && n_mcp) {
        rc = args_usage_error("up", "%s is for --profile gateway", "--mcp");
        goto free_args;
    }
    if (gw && n_mcp && (given[K_MCPW] || given[K_MCPC])) {
        rc = args_usage_error("up", "%s replaces the demo MCP servers: their ports do not apply", "--mcp");
        goto free_args;
    }
    if (gw && ((llm_opt && !clean_value(llm_opt, true)) || (model && !clean_value(model, false)))) {
        rc = args_usage_error("up", "%s: expected an http(s):// URL and a model name without spaces or quotes",
                              "--llm/--model");
        goto free_args;
    }
    log_init("up", LOG_INFO);

    /* Every port in use free before anything starts (or is created). */
    int use[N_PORTS], n_use = 0;
    for (int k = 0; k < N_PORTS; k++)
        if (k <= K_SIDECAR || (gw ? k == K_GATEWAY || (!n_mcp && k > K_GATEWAY) : k <= K_CHAT)) use[n_use++] = k;
    for (int a = 0; a < n_use; a++) {
        int i = use[a];
        for (int b = 0; b < a; b++)
            if (ports[i] == ports[use[b]]) {
                fprintf(stderr, "agentid up: port %d is given to both the %s and the %s\n", ports[i],
                        port_name[use[b]], port_name[i]);
                goto free_args;
            }
        int e = port_check(ports[i]);
        if (e == EADDRINUSE) {
            fprintf(stderr, "agentid up: port %d (%s) is already in use\n", ports[i], port_name[i]);
            goto free_args;
        }
        if (e) {
            fprintf(stderr, "agentid up: port %d (%s): cannot listen on 127.0.0.1: %s\n", ports[i],
                    port_name[i], strerror(e));
            goto free_args;
        }
    }

    /* The directory: created on first run, never overwritten. */
    char err[512];
    char *file = xasprintf("%s/%s", dir, DIR_FILE);
    bool exists = access(file, F_OK) == 0;
    free(file);
    if (!exists) {
        int e = make_parents(dir);
        if (e) {
            fprintf(stderr, "agentid up: creating %s: %s\n", dir, strerror(e));
            goto free_args;
        }
        if (dir_init(dir, false, err, sizeof err) != 0) {
            fprintf(stderr, "agentid up: %s\n", err);
            goto free_args;
        }
        printf("agentid up: created the issuer directory %s (tenant, keys, local CA, demo apps and user)\n", dir);
        fflush(stdout);
    }
    int added;
    if (gw) {
        /* Seed 003's apps (an older init lacks them), and the blueprint's trust in the host's
         * managed identity as the issuer on this port names it. */
        char *base = xasprintf("https://127.0.0.1:%d", ports[K_ISSUER]);
        added = dir_ensure_gateway_apps(dir, base, err, sizeof err);
        free(base);
    } else {
        /* The SPA must be allowed to receive codes at the chat port in use (msal-browser's
         * redirect page), or sign-in fails with AADSTS50011. */
        int cp = ports[K_CHAT];
        char *ru[5] = {xasprintf("http://localhost:%d", cp), xasprintf("http://127.0.0.1:%d", cp),
                       xasprintf("http://localhost:%d/redirect.html", cp),
                       xasprintf("http://127.0.0.1:%d/redirect.html", cp), NULL};
        added = dir_ensure_redirect_uris(dir, "Chat SPA", (const char *const *)ru, err, sizeof err);
        for (int i = 0; i < 4; i++) free(ru[i]);
    }
    if (added < 0) {
        fprintf(stderr, "agentid up: %s\n", err);
        goto free_args;
    }
    directory *d = dir_load(dir, err, sizeof err);
    if (!d) {
        fprintf(stderr, "agentid up: %s\n", err);
        goto free_args;
    }

    /* The demo objects, found as `issuer init` names them. */
    const dir_app *bp = dir_app_find(d, "Weather Agent Blueprint");
    const dir_app *agent = dir_app_find(d, "Weather Agent");
    const dir_app *api = dir_app_find(d, "Weather API");
    const dir_app *spa = dir_app_find(d, "Chat SPA");
    const dir_app *cli = dir_app_find(d, "agentid CLI");
    const dir_app *llm_app = dir_app_find(d, DIR_LLM_APP), *mcp_app = dir_app_find(d, DIR_MCP_APP);
    const dir_app *host = dir_app_find(d, "Weather Agent Host");
    if (!host || host->type != APP_MANAGED_IDENTITY) host = dir_managed_identity(d, NULL, NULL, NULL);
    for (size_t i = 0; (!bp || bp->type != APP_AGENT_BLUEPRINT) && i < dir_app_count(d); i++)
        if (dir_app_at(d, i)->type == APP_AGENT_BLUEPRINT) bp = dir_app_at(d, i);
    if (bp && (!agent || agent->type != APP_AGENT_IDENTITY || !agent->parent ||
               strcasecmp(agent->parent, bp->app_id) != 0)) {
        agent = NULL;
        for (size_t i = 0; !agent && i < dir_app_count(d); i++) {
            const dir_app *a = dir_app_at(d, i);
            if (a->type == APP_AGENT_IDENTITY && a->parent && !strcasecmp(a->parent, bp->app_id)) agent = a;
        }
    }
    const char *secret = bp ? json_string_value(json_array_get(dir_app_list(bp, "secrets"), 0)) : NULL;
    const char *missing = !bp || bp->type != APP_AGENT_BLUEPRINT ? "an agent blueprint ('Weather Agent Blueprint')"
                          : !gw && !secret                        ? "a client secret on the agent blueprint"
                          : !agent                                ? "an agent identity of the blueprint ('Weather Agent')"
                          : !gw && !api                           ? "the 'Weather API' application"
                          : !gw && !spa                           ? "the 'Chat SPA' application"
                          : gw && !cli                            ? "the 'agentid CLI' public client"
                          : gw && (!llm_app || !mcp_app)          ? "the '" DIR_LLM_APP "' and '" DIR_MCP_APP "' applications"
                          : gw && !host                           ? "a managed identity ('Weather Agent Host')"
                          : gw && !dir_identity_header(d)         ? "a \"managed_identity_header\""
                          : !dir_tls_ca(d)                        ? "a \"tls\" section (the local CA)"
                                                                  : NULL;
    if (missing) {
        fprintf(stderr, "agentid up: %s/%s has no %s; `agentid issuer init --dir %s --force` recreates the demo\n",
                dir, DIR_FILE, missing, dir);
        dir_unref(d);
        goto free_args;
    }
    const dir_user *alice = dir_user_find(d, "alice@agentid.local");
    char *llm = llm_opt ? xstrdup(llm_opt) : llm_from_env();
    bool llm_given = llm != NULL;
    if (gw && !llm) llm = xstrdup(OLLAMA_URL);
    if (gw && !clean_value(llm, true)) {
        fprintf(stderr, "agentid up: $OLLAMA_HOST: not a usable URL for /llm\n");
        free(llm);
        dir_unref(d);
        goto free_args;
    }
    const char *tid = dir_tenant_id(d);

    stack s = {.self = "/proc/self/exe", .ca = dir_tls_ca(d)};
    if (access(s.self, X_OK) != 0) s.self = program_invocation_name;
    const char *argv0 = program_invocation_name;
    char *ca_env = xasprintf("SSL_CERT_FILE=%s", s.ca);
    int ip = ports[K_ISSUER], mp = ports[K_MI], sp = ports[K_SIDECAR], wp = ports[K_WEATHER],
        cp = ports[K_CHAT], gp = ports[K_GATEWAY];
    static const char *const owned[] = {"AzureAd__", "AzureAd:", "DownstreamApis__", "DownstreamApis:",
                                        "Sidecar__", "Sidecar:", "ASPNETCORE_URLS", NULL};
    banner_info b = {.dir = dir_path(d), .tenant = tid, .llm = llm, .model = model,
                     .alice = alice ? alice->upn : NULL, .password = alice ? alice->password : NULL,
                     .issuer_port = ip, .mi_port = mp, .sidecar_port = sp, .weather_port = wp,
                     .chat_port = cp, .gateway = gw, .llm_given = llm_given, .gateway_port = gp};
    projector proj = {0};
    char *parent = NULL, *rundir = NULL, *yaml_path = NULL, *agent_json = NULL, *rule = NULL;
    char *demo_url[2] = {0};

    part *p = &s.p[s.n++];
    *p = (part){.name = "issuer", .stage = 0, .port = ip, .tls = true};
    add_args(p, argv0, "issuer");
    strv_add(&p->argv, xstrdup("--dir"));
    strv_add(&p->argv, xstrdup(dir));
    strv_add(&p->argv, xstrdup("--listen"));
    strv_add(&p->argv, xasprintf("127.0.0.1:%d", ip));
    strv_add(&p->argv, xstrdup("--managed-identity-listen"));
    strv_add(&p->argv, xasprintf("127.0.0.1:%d", mp));
    env_build(&p->env, (const char *const[]){NULL}, NULL);

    if (!gw) {
        p = &s.p[s.n++];
        *p = (part){.name = "weather-api", .stage = 1, .port = wp};
        add_args(p, argv0, "weather-api");
        strv_add(&p->argv, xstrdup("--listen"));
        strv_add(&p->argv, xasprintf("127.0.0.1:%d", wp));
        strv_add(&p->argv, xstrdup("--authority"));
        strv_add(&p->argv, xasprintf("https://127.0.0.1:%d/%s/v2.0", ip, tid));
        strv_add(&p->argv, xstrdup("--audience"));
        strv_add(&p->argv, xstrdup(api->app_id));
        strv_add(&p->argv, xstrdup("--audience"));
        strv_add(&p->argv, xasprintf("api://%s", api->app_id));
        strv_add(&p->argv, xstrdup("--scope"));
        strv_add(&p->argv, xstrdup("Weather.Read"));
        strv_add(&p->argv, xstrdup("--role"));
        strv_add(&p->argv, xstrdup("Weather.Read.All"));
        env_build(&p->env, (const char *const[]){ca_env, NULL}, NULL);

        p = &s.p[s.n++];
        *p = (part){.name = "sidecar", .stage = 1, .port = sp};
        add_args(p, argv0, "sidecar");
        strv_add(&p->argv, xstrdup("--listen"));
        strv_add(&p->argv, xasprintf("127.0.0.1:%d", sp));
        /* As seed 000's compose file configures the sidecar container. The secret exists only
         * here, in the child's environment: never printed, never logged. */
        char *e[] = {
            xasprintf("AzureAd__Instance=https://127.0.0.1:%d/", ip),
            xasprintf("AzureAd__TenantId=%s", tid),
            xasprintf("AzureAd__ClientId=%s", bp->app_id),
            xstrdup("AzureAd__ClientCredentials__0__SourceType=ClientSecret"),
            xasprintf("AzureAd__ClientCredentials__0__ClientSecret=%s", secret),
            xasprintf("DownstreamApis__weather__BaseUrl=http://127.0.0.1:%d/", wp),
            xasprintf("DownstreamApis__weather__Scopes__0=api://%s/.default", api->app_id),
            xstrdup("Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated=true"),
            xstrdup("Sidecar__AllowOverrides__CallDownstreamApiUnauthenticated=true"),
            xstrdup(ca_env),
            NULL,
        };
        /* Settings up does not set stay out too, so the stack is the same on every machine. */
        env_build(&p->env, (const char *const *)e, owned);
        for (char **k = e; *k; k++) {
            explicit_bzero(*k, strlen(*k));
            free(*k);
        }

        p = &s.p[s.n++];
        *p = (part){.name = "chat-agent", .stage = 2, .port = cp};
        add_args(p, argv0, "chat-agent");
        strv_add(&p->argv, xstrdup("--listen"));
        strv_add(&p->argv, xasprintf("127.0.0.1:%d", cp));
        strv_add(&p->argv, xstrdup("--sidecar"));
        strv_add(&p->argv, xasprintf("http://127.0.0.1:%d", sp));
        strv_add(&p->argv, xstrdup("--api-name"));
        strv_add(&p->argv, xstrdup("weather"));
        strv_add(&p->argv, xstrdup("--weather-url"));
        strv_add(&p->argv, xasprintf("http://127.0.0.1:%d", wp));
        strv_add(&p->argv, xstrdup("--agent-id"));
        strv_add(&p->argv, xstrdup(agent->app_id));
        strv_add(&p->argv, xstrdup("--tenant-id"));
        strv_add(&p->argv, xstrdup(tid));
        strv_add(&p->argv, xstrdup("--authority"));
        strv_add(&p->argv, xasprintf("https://127.0.0.1:%d/%s", ip, tid));
        strv_add(&p->argv, xstrdup("--spa-client-id"));
        strv_add(&p->argv, xstrdup(spa->app_id));
        strv_add(&p->argv, xstrdup("--blueprint-app-id"));
        strv_add(&p->argv, xstrdup(bp->app_id));
        if (llm) {
            strv_add(&p->argv, xstrdup("--llm"));
            strv_add(&p->argv, xstrdup(llm));
        }
        if (model) {
            strv_add(&p->argv, xstrdup("--model"));
            strv_add(&p->argv, xstrdup(model));
        }
        env_build(&p->env, (const char *const[]){ca_env, NULL}, NULL);
    } else {
        /* <parent of DIR>/gateway-stack holds what up generates; <parent>/agent.json is the
         * contract `agentid agent` reads. */
        parent = parent_dir(dir);
        char *rd = xasprintf("%s/gateway-stack", parent);
        int e = make_dir(rd);
        rundir = e ? NULL : realpath(rd, NULL);
        if (!rundir) fprintf(stderr, "agentid up: creating %s: %s\n", rd, strerror(e ? e : errno));
        free(rd);
        if (!rundir) goto cleanup;
        yaml_path = xasprintf("%s/gateway.yaml", rundir);
        agent_json = xasprintf("%s/agent.json", parent);
        proj = (projector){.stage = 1, .file = xasprintf("%s/federated-token", rundir),
                           .url = xasprintf("http://127.0.0.1:%d/msi/token?api-version=2019-08-01&resource=%s"
                                            "&client_id=%s", mp, DIR_TOKEN_EXCHANGE_URI, host->app_id),
                           .header = xasprintf("X-IDENTITY-HEADER: %s", dir_identity_header(d))};
        s.proj = &proj;
        rule = xasprintf("jwt.appid == '%s' && '11' in jwt.xms_act_fct.split(' ')", agent->app_id);

        p = &s.p[s.n++];
        *p = (part){.name = "sidecar", .stage = 1, .port = sp};
        add_args(p, argv0, "sidecar");
        strv_add(&p->argv, xstrdup("--listen"));
        strv_add(&p->argv, xasprintf("127.0.0.1:%d", sp));
        /* Seed 003: no client secret anywhere; the federated token file is the credential. */
        char *ev[] = {
            xasprintf("AzureAd__Instance=https://127.0.0.1:%d/", ip),
            xasprintf("AzureAd__TenantId=%s", tid),
            xasprintf("AzureAd__ClientId=%s", bp->app_id),
            xstrdup("AzureAd__ClientCredentials__0__SourceType=SignedAssertionFilePath"),
            xasprintf("AzureAd__ClientCredentials__0__SignedAssertionFileDiskPath=%s", proj.file),
            xasprintf("DownstreamApis__openai__BaseUrl=http://127.0.0.1:%d/llm", gp),
            xstrdup("DownstreamApis__openai__Scopes__0=" DIR_LLM_URI "/.default"),
            xasprintf("DownstreamApis__mcp__BaseUrl=http://127.0.0.1:%d/mcp", gp),
            xasprintf("DownstreamApis__mcp__Scopes__0=api://%s/.default", mcp_app->app_id),
            xstrdup("Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated=true"),
            xstrdup(ca_env),
            NULL,
        };
        static const char *const owned_gw[] = {"AzureAd__", "AzureAd:", "DownstreamApis__", "DownstreamApis:",
                                               "Sidecar__", "Sidecar:", "ASPNETCORE_URLS",
                                               "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_SECRET", NULL};
        env_build(&p->env, (const char *const *)ev, owned_gw);
        for (char **k = ev; *k; k++) free(*k);

        if (!n_mcp) {
            static const char *const kinds[2] = {"weather", "clock"};
            for (int i = 0; i < 2; i++) {
                int port = ports[i ? K_MCPC : K_MCPW];
                p = &s.p[s.n++];
                *p = (part){.name = i ? "mcp-clock" : "mcp-weather", .stage = 1, .port = port};
                add_args(p, argv0, "mcp-demo");
                strv_add(&p->argv, xstrdup("--kind"));
                strv_add(&p->argv, xstrdup(kinds[i]));
                strv_add(&p->argv, xstrdup("--listen"));
                strv_add(&p->argv, xasprintf("127.0.0.1:%d", port));
                env_build(&p->env, (const char *const[]){NULL}, NULL);
                demo_url[i] = xasprintf("http://127.0.0.1:%d/mcp", port);
                mcp_name[i] = kinds[i];
                mcp_url[i] = demo_url[i];
            }
            n_mcp = 2;
        }

        gateway_cfg g = {.port = gp, .issuer_port = ip, .tenant = tid, .llm = llm, .model = model,
                         .mcp_app_id = mcp_app->app_id, .rule = rule, .mcp_name = mcp_name,
                         .mcp_url = mcp_url, .n_mcp = n_mcp};
        char *yaml = gateway_yaml(&g);
        int wr = yaml ? write_text(yaml_path, yaml) : -1;
        free(yaml);
        if (wr != 0) goto cleanup;

        char *authority = xasprintf("https://127.0.0.1:%d/%s", ip, tid);
        char *scope = xasprintf("api://%s/access_as_user", bp->app_id);
        char *sidecar_url = xasprintf("http://127.0.0.1:%d", sp), *gateway_url = xasprintf("http://127.0.0.1:%d", gp);
        json_t *aj = json_pack("{s:s, s:s, s:[s], s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o}", "authority",
                               authority, "client_id", cli->app_id, "scopes", scope, "ca_file", s.ca,
                               "sidecar_url", sidecar_url, "agent_identity", agent->app_id, "llm_api", "openai",
                               "mcp_api", "mcp", "gateway_url", gateway_url, "llm_path", "/llm", "mcp_path",
                               "/mcp", "model", model ? json_string(model) : json_null());
        char *ajs = json_dumps(aj, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        char *ajn = xasprintf("%s\n", ajs);
        wr = write_text(agent_json, ajn);
        free(ajn);
        free(ajs);
        json_decref(aj);
        free(authority);
        free(scope);
        free(sidecar_url);
        free(gateway_url);
        if (wr != 0) goto cleanup;

        p = &s.p[s.n++];
        *p = (part){.name = "gateway", .stage = 2, .port = gp};
        add_args(p, argv0, "gateway");
        strv_add(&p->argv, xstrdup("--config"));
        strv_add(&p->argv, xstrdup(yaml_path));
        env_build(&p->env, (const char *const[]){ca_env, NULL}, NULL);

        b.agent_id = agent->app_id;
        b.rule = rule;
        b.yaml = yaml_path;
        b.agent_json = agent_json;
        b.token_file = proj.file;
        for (int i = 0; i < n_mcp; i++) b.mcp_name[i] = mcp_name[i], b.mcp_url[i] = mcp_url[i];
        b.n_mcp = n_mcp;
    }

    for (int i = 0; i < s.n; i++) s.p[i].backoff = BACKOFF_FIRST_MS;

    /* Signals through a signalfd; blocked first so none is lost before it exists. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, &old);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    if (sfd < 0) {
        fprintf(stderr, "agentid up: signalfd: %s\n", strerror(errno));
    } else {
        httpc_global_init();
        log_msg(LOG_INFO, "starting", "starting the local stack (profile %s) from %s", profile, dir_path(d));
        supervise(&s, sfd, &b);
        log_msg(LOG_INFO, "stopped", "every part has stopped");
        close(sfd);
        rc = 0;
    }
    sigprocmask(SIG_SETMASK, &old, NULL);

cleanup:
    for (int i = 0; i < s.n; i++) {
        strv_free(&s.p[i].argv);
        for (size_t k = 0; k < s.p[i].env.n; k++) explicit_bzero(s.p[i].env.v[k], strlen(s.p[i].env.v[k]));
        strv_free(&s.p[i].env);
    }
    if (proj.header) explicit_bzero(proj.header, strlen(proj.header));
    free(proj.header);
    free(proj.url);
    free(proj.file);
    free(parent);
    free(rundir);
    free(yaml_path);
    free(agent_json);
    free(rule);
    free(demo_url[0]);
    free(demo_url[1]);
    free(ca_env);
    free(llm);
    dir_unref(d);
free_args:
    for (int i = 0; i < MAX_MCP; i++) free(mcp_name_buf[i]);
    return rc;
}
