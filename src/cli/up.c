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
    "usage: agentid up [--dir DIR] [--issuer-port N] [--mi-port N] [--sidecar-port N]\n"
    "                  [--weather-port N] [--chat-port N] [--llm URL] [--model NAME]\n"
    "\n"
    "Runs the local stack on 127.0.0.1, each part a child process: the issuer (creating DIR on\n"
    "first run), the weather API, the sidecar and the chat agent. A part that exits is restarted;\n"
    "Ctrl-C stops everything.\n"
    "\n"
    "  --dir DIR          issuer directory ($AGENTID_ISSUER_DIR, default " DEFAULT_DIR ")\n"
    "  --issuer-port N    issuer HTTPS port (8443)\n"
    "  --mi-port N        issuer's managed-identity endpoint (8444)\n"
    "  --sidecar-port N   sidecar (5000)\n"
    "  --weather-port N   weather API (5100)\n"
    "  --chat-port N      chat agent and its web UI (3003)\n"
    "  --llm URL          an Ollama-compatible LLM ($OLLAMA_HOST; none: Direct mode only)\n"
    "  --model NAME       the LLM's model\n";

enum { P_ISSUER, P_WEATHER, P_SIDECAR, P_CHAT, N_PARTS };

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

typedef struct {
    part p[N_PARTS];
    const char *self;     /* the executable to run */
    const char *ca;       /* the local CA (PEM), for the issuer's /healthz */
    int stage;            /* the stage being started; N stages done: the banner is out */
    int64_t stage_deadline;
    bool stopping;
    int64_t kill_at;      /* ms; SIGKILL whatever still runs */
    bool killed;
} stack;

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

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
        p->restart_at = now_ms() + p->backoff;
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
    p->started = now_ms();
    p->next_check = p->started + HEALTH_EVERY_MS;
    p->restart_at = 0;
    p->healthy = false;
    log_msg(LOG_INFO, "started", "%s started (pid %d), port %d", p->name, (int)pid, p->port);
}

static void start_stage(stack *s, int stage)
{
    s->stage = stage;
    s->stage_deadline = now_ms() + STAGE_WAIT_MS;
    for (int i = 0; i < N_PARTS; i++)
        if (s->p[i].stage == stage) spawn(s, &s->p[i]);
}

static bool stage_exists(const stack *s, int stage)
{
    for (int i = 0; i < N_PARTS; i++)
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
        for (int i = 0; i < N_PARTS; i++)
            if (s->p[i].pid == pid) p = &s->p[i];
        if (!p) continue;
        p->pid = 0;
        char why[96];
        describe_status(st, why, sizeof why);
        if (s->stopping) {
            log_msg(LOG_INFO, "stopped", "%s (pid %d) %s", p->name, (int)pid, why);
            continue;
        }
        int64_t now = now_ms();
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
            s->kill_at = now_ms();
        }
        return;
    }
    s->stopping = true;
    s->kill_at = now_ms() + STOP_GRACE_MS;
    log_msg(LOG_INFO, "stopping", "%s: stopping every part", why);
    for (int i = N_PARTS - 1; i >= 0; i--) {
        s->p[i].restart_at = 0;
        if (s->p[i].pid > 0) kill(s->p[i].pid, SIGTERM);
    }
}

static bool any_running(const stack *s)
{
    for (int i = 0; i < N_PARTS; i++)
        if (s->p[i].pid > 0) return true;
    return false;
}

typedef struct {
    const char *dir, *tenant, *alice, *password, *llm, *model;
    int issuer_port, mi_port, sidecar_port, weather_port, chat_port;
} banner_info;

static void banner(const stack *s, const banner_info *b)
{
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
    for (int i = 0; i < N_PARTS; i++)
        if (s->p[i].given_up)
            printf("  warning      %s stopped with a usage error; see its log lines\n", s->p[i].name);
        else if (!s->p[i].healthy)
            printf("  warning      %s is not answering yet; see its log lines\n", s->p[i].name);
    printf("\n");
    fflush(stdout);
}

/* The supervisor loop: returns when every child has stopped after SIGINT/SIGTERM/SIGHUP. */
static void supervise(stack *s, int sfd, const banner_info *b)
{
    int last_stage = 0;
    for (int i = 0; i < N_PARTS; i++)
        if (s->p[i].stage > last_stage) last_stage = s->p[i].stage;
    start_stage(s, 0);
    for (;;) {
        int64_t now = now_ms();

        /* Health: during start-up, and after any restart, until the part answers. */
        if (!s->stopping) {
            for (int i = 0; i < N_PARTS; i++) {
                part *p = &s->p[i];
                if (p->pid <= 0 || p->healthy || now - p->started > HEALTH_WATCH_MS || now < p->next_check)
                    continue;
                if (probe(s, p)) {
                    p->healthy = true;
                    log_msg(LOG_INFO, "healthy", "%s is answering on port %d", p->name, p->port);
                } else {
                    p->next_check = now_ms() + HEALTH_EVERY_MS;
                }
            }
            now = now_ms();
            while (s->stage <= last_stage) {
                bool all = true;
                for (int i = 0; i < N_PARTS; i++)
                    if (s->p[i].stage == s->stage && !s->p[i].healthy && !s->p[i].given_up) all = false;
                if (!all && now < s->stage_deadline) break;
                if (!all)
                    for (int i = 0; i < N_PARTS; i++)
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
            for (int i = 0; i < N_PARTS; i++) {
                part *p = &s->p[i];
                if (p->restart_at && p->pid == 0 && now >= p->restart_at) spawn(s, p);
            }
        } else {
            if (!any_running(s)) return;
            if (!s->killed && now >= s->kill_at) {
                s->killed = true;
                for (int i = 0; i < N_PARTS; i++)
                    if (s->p[i].pid > 0) {
                        log_msg(LOG_WARN, "killing", "%s (pid %d) did not stop in %d s: SIGKILL",
                                s->p[i].name, (int)s->p[i].pid, STOP_GRACE_MS / 1000);
                        kill(s->p[i].pid, SIGKILL);
                    }
            }
        }

        /* Sleep until a signal or the next timer. */
        now = now_ms();
        int64_t wake = INT64_MAX;
        if (s->stopping) {
            if (!s->killed) wake = s->kill_at;
        } else {
            for (int i = 0; i < N_PARTS; i++) {
                const part *p = &s->p[i];
                if (p->restart_at && p->pid == 0 && p->restart_at < wake) wake = p->restart_at;
                if (p->pid > 0 && !p->healthy && now - p->started <= HEALTH_WATCH_MS && p->next_check < wake)
                    wake = p->next_check;
            }
            if (s->stage <= last_stage && s->stage_deadline < wake) wake = s->stage_deadline;
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

int up_main(int argc, char **argv)
{
    const char *dir = getenv("AGENTID_ISSUER_DIR");
    if (!dir || !*dir) dir = DEFAULT_DIR;
    const char *llm_opt = NULL, *model = NULL;
    int ports[5] = {8443, 8444, 5000, 5100, 3003};
    static const char *const port_flag[5] = {"--issuer-port", "--mi-port", "--sidecar-port",
                                             "--weather-port", "--chat-port"};
    static const char *const port_name[5] = {"issuer", "issuer managed identity", "sidecar",
                                             "weather API", "chat agent"};
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
        for (int k = 0; !matched && !bad && k < 5; k++)
            if ((v = args_value(argc, argv, &i, port_flag[k], &bad))) {
                if (!parse_port(v, &ports[k])) return args_usage_error("up", "%s: not a port number (1-65535)", port_flag[k]);
                matched = true;
            }
        if (bad) return args_usage_error("up", "option %s needs a value", argv[i]);
        if (!matched) return args_usage_error("up", "unknown option %s", argv[i]);
    }
    if (!*dir) return args_usage_error("up", "%s--dir is empty", "");
    log_init("up", LOG_INFO);

    /* Every port free before anything starts (or is created). */
    for (int i = 0; i < 5; i++) {
        for (int j = 0; j < i; j++)
            if (ports[i] == ports[j]) {
                fprintf(stderr, "agentid up: port %d is given to both the %s and the %s\n", ports[i],
                        port_name[j], port_name[i]);
                return 1;
            }
        int e = port_check(ports[i]);
        if (e == EADDRINUSE) {
            fprintf(stderr, "agentid up: port %d (%s) is already in use\n", ports[i], port_name[i]);
            return 1;
        }
        if (e) {
            fprintf(stderr, "agentid up: port %d (%s): cannot listen on 127.0.0.1: %s\n", ports[i],
                    port_name[i], strerror(e));
            return 1;
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
            return 1;
        }
        if (dir_init(dir, false, err, sizeof err) != 0) {
            fprintf(stderr, "agentid up: %s\n", err);
            return 1;
        }
        printf("agentid up: created the issuer directory %s (tenant, keys, local CA, demo apps and user)\n", dir);
        fflush(stdout);
    }
    /* The SPA must be allowed to receive codes at the chat port in use (msal-browser's
     * redirect page), or sign-in fails with AADSTS50011. */
    char *ru[5] = {xasprintf("http://localhost:%d", ports[4]), xasprintf("http://127.0.0.1:%d", ports[4]),
                   xasprintf("http://localhost:%d/redirect.html", ports[4]),
                   xasprintf("http://127.0.0.1:%d/redirect.html", ports[4]), NULL};
    int added = dir_ensure_redirect_uris(dir, "Chat SPA", (const char *const *)ru, err, sizeof err);
    for (int i = 0; i < 4; i++) free(ru[i]);
    if (added < 0) {
        fprintf(stderr, "agentid up: %s\n", err);
        return 1;
    }
    directory *d = dir_load(dir, err, sizeof err);
    if (!d) {
        fprintf(stderr, "agentid up: %s\n", err);
        return 1;
    }

    /* The demo objects, found as `issuer init` names them. */
    const dir_app *bp = dir_app_find(d, "Weather Agent Blueprint");
    const dir_app *agent = dir_app_find(d, "Weather Agent");
    const dir_app *api = dir_app_find(d, "Weather API");
    const dir_app *spa = dir_app_find(d, "Chat SPA");
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
                          : !secret                               ? "a client secret on the agent blueprint"
                          : !agent                                ? "an agent identity of the blueprint ('Weather Agent')"
                          : !api                                  ? "the 'Weather API' application"
                          : !spa                                  ? "the 'Chat SPA' application"
                          : !dir_tls_ca(d)                        ? "a \"tls\" section (the local CA)"
                                                                  : NULL;
    if (missing) {
        fprintf(stderr, "agentid up: %s/%s has no %s; `agentid issuer init --dir %s --force` recreates the demo\n",
                dir, DIR_FILE, missing, dir);
        dir_unref(d);
        return 1;
    }
    const dir_user *alice = dir_user_find(d, "alice@agentid.local");
    char *llm = llm_opt ? xstrdup(llm_opt) : llm_from_env();
    const char *tid = dir_tenant_id(d);

    stack s = {.self = "/proc/self/exe", .ca = dir_tls_ca(d)};
    if (access(s.self, X_OK) != 0) s.self = program_invocation_name;
    const char *argv0 = program_invocation_name;
    char *ca_env = xasprintf("SSL_CERT_FILE=%s", s.ca);
    int ip = ports[0], mp = ports[1], sp = ports[2], wp = ports[3], cp = ports[4];

    part *p = &s.p[P_ISSUER];
    *p = (part){.name = "issuer", .stage = 0, .port = ip, .tls = true};
    strv_add(&p->argv, xstrdup(argv0));
    strv_add(&p->argv, xstrdup("issuer"));
    strv_add(&p->argv, xstrdup("--dir"));
    strv_add(&p->argv, xstrdup(dir));
    strv_add(&p->argv, xstrdup("--listen"));
    strv_add(&p->argv, xasprintf("127.0.0.1:%d", ip));
    strv_add(&p->argv, xstrdup("--managed-identity-listen"));
    strv_add(&p->argv, xasprintf("127.0.0.1:%d", mp));
    env_build(&p->env, (const char *const[]){NULL}, NULL);

    p = &s.p[P_WEATHER];
    *p = (part){.name = "weather-api", .stage = 1, .port = wp};
    strv_add(&p->argv, xstrdup(argv0));
    strv_add(&p->argv, xstrdup("weather-api"));
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

    p = &s.p[P_SIDECAR];
    *p = (part){.name = "sidecar", .stage = 1, .port = sp};
    strv_add(&p->argv, xstrdup(argv0));
    strv_add(&p->argv, xstrdup("sidecar"));
    strv_add(&p->argv, xstrdup("--listen"));
    strv_add(&p->argv, xasprintf("127.0.0.1:%d", sp));
    {
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
        static const char *const owned[] = {"AzureAd__", "AzureAd:", "DownstreamApis__", "DownstreamApis:",
                                            "Sidecar__", "Sidecar:", "ASPNETCORE_URLS", NULL};
        env_build(&p->env, (const char *const *)e, owned);
        for (char **k = e; *k; k++) {
            explicit_bzero(*k, strlen(*k));
            free(*k);
        }
    }

    p = &s.p[P_CHAT];
    *p = (part){.name = "chat-agent", .stage = 2, .port = cp};
    strv_add(&p->argv, xstrdup(argv0));
    strv_add(&p->argv, xstrdup("chat-agent"));
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

    for (int i = 0; i < N_PARTS; i++) s.p[i].backoff = BACKOFF_FIRST_MS;

    banner_info b = {.dir = dir_path(d), .tenant = tid, .llm = llm, .model = model,
                     .alice = alice ? alice->upn : NULL, .password = alice ? alice->password : NULL,
                     .issuer_port = ip, .mi_port = mp, .sidecar_port = sp, .weather_port = wp,
                     .chat_port = cp};

    /* Signals through a signalfd; blocked first so none is lost before it exists. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, &old);
    int rc = 0;
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    if (sfd < 0) {
        fprintf(stderr, "agentid up: signalfd: %s\n", strerror(errno));
        rc = 1;
    } else {
        httpc_global_init();
        log_msg(LOG_INFO, "starting", "starting the local stack from %s", dir_path(d));
        supervise(&s, sfd, &b);
        log_msg(LOG_INFO, "stopped", "every part has stopped");
        close(sfd);
    }
    sigprocmask(SIG_SETMASK, &old, NULL);

    for (int i = 0; i < N_PARTS; i++) {
        strv_free(&s.p[i].argv);
        for (size_t k = 0; k < s.p[i].env.n; k++) explicit_bzero(s.p[i].env.v[k], strlen(s.p[i].env.v[k]));
        strv_free(&s.p[i].env);
    }
    free(ca_env);
    free(llm);
    dir_unref(d);
    return rc;
}
