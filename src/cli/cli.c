/* cli — see cli.h. Each subcommand parses its own flags with one small table-free loop. */
#include "cli/cli.h"

#include "core/http_client.h"
#include "core/log.h"
#include "core/util.h"
#include "issuer/directory.h"
#include "issuer/server.h"
#include "cli/up.h"
#include "cli/decode.h"
#include "agent/agent.h"
#include "core/args.h"
#include "demo/chat.h"
#include "demo/mcp_demo.h"
#include "demo/weather.h"
#include "gateway/gateway.h"
#include "sidecar/settings.h"
#include "sidecar/sidecar.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_ISSUER_DIR    ".agentid/issuer"
#define DEFAULT_ISSUER_LISTEN "127.0.0.1:8443"

static const char USAGE[] =
    "usage: agentid <command> [options]\n"
    "\n"
    "commands:\n"
    "  issuer [--dir DIR] [--listen ADDR:PORT] [--public-url URL] [--http]\n"
    "         [--managed-identity-listen ADDR:PORT]\n"
    "                         serve a local Entra-compatible identity provider (HTTPS)\n"
    "  issuer init [--dir DIR] [--force]\n"
    "                         create a directory with keys, TLS and a demo population\n"
    "  issuer rotate-keys [--dir DIR] [--retire-old]\n"
    "                         add a signing key (old keys stay published), or retire old ones\n"
    "  sidecar [--config appsettings.json] [--listen ADDR:PORT] [--list-settings]\n"
    "                         the auth sidecar on 127.0.0.1:5000 (settings: AzureAd__*, DownstreamApis__*)\n"
    "  weather-api [options]  the demo API (see docs/demo.md)\n"
    "  gateway --config FILE [--listen ADDR:PORT]\n"
    "                         token-validating gateway for APIs, LLMs and MCP servers (docs/gateway.md)\n"
    "  chat-agent [options]   the demo chat agent with its web UI (see docs/demo.md)\n"
    "  up [options]           the whole local stack: issuer, sidecar, weather API, chat agent\n"
    "                         (--profile gateway: seed 003's sidecar, gateway and MCP servers)\n"
    "  mcp-demo --kind weather|clock [--listen ADDR:PORT]\n"
    "                         a demo MCP server (Streamable HTTP at /mcp) for the gateway\n"
    "  agent run|ask|show-tokens|logout [options]\n"
    "                         the terminal AI agent of seed 003 (docs/agent-cli.md)\n"
    "  decode [TOKEN] [--verify]\n"
    "                         a JWT's header and claims; --verify checks it with its issuer\n"
    "  version                print the version\n"
    "  help                   this text\n"
    "\n"
    "Defaults: --dir " DEFAULT_ISSUER_DIR " (or $AGENTID_ISSUER_DIR), --listen " DEFAULT_ISSUER_LISTEN
    ".\nDocumentation: docs/issuer.md\n";

static const char *default_dir(void)
{
    const char *e = getenv("AGENTID_ISSUER_DIR");
    return e && *e ? e : DEFAULT_ISSUER_DIR;
}

static void print_summary(const char *dir)
{
    char err[512];
    directory *d = dir_load(dir, err, sizeof err);
    if (!d) {
        fprintf(stderr, "agentid: %s\n", err);
        return;
    }
    printf("directory %s\n  tenant     %s\n", dir_path(d), dir_tenant_id(d));
    for (size_t i = 0; i < dir_app_count(d); i++) {
        const dir_app *a = dir_app_at(d, i);
        printf("  app        %-36s  %s\n", a->app_id, a->name);
    }
    const dir_user *u = dir_user_find(d, "alice@agentid.local");
    if (u && u->password) printf("  demo user  %s / %s\n", u->upn, u->password);
    printf("  secrets and certificates: %s/%s and %s/keys/\n", dir_path(d), DIR_FILE, dir_path(d));
    dir_unref(d);
}

static int cmd_issuer(int argc, char **argv)
{
    issuer_opts o = {.dir = default_dir(), .listen = DEFAULT_ISSUER_LISTEN};
    const char *sub = argc > 1 && argv[1][0] != '-' ? argv[1] : NULL;
    bool force = false, retire = false;
    for (int i = sub ? 2 : 1; i < argc; i++) {
        bool bad = false;
        const char *v;
        if ((v = args_value(argc, argv, &i, "--dir", &bad))) o.dir = v;
        else if (!sub && (v = args_value(argc, argv, &i, "--listen", &bad))) o.listen = v;
        else if (!sub && (v = args_value(argc, argv, &i, "--public-url", &bad))) o.public_url = v;
        else if (!sub && !strcmp(argv[i], "--http")) o.http = true;
        else if (!sub && (v = args_value(argc, argv, &i, "--managed-identity-listen", &bad))) o.mi_listen = v;
        else if (sub && !strcmp(sub, "init") && !strcmp(argv[i], "--force")) force = true;
        else if (sub && !strcmp(sub, "rotate-keys") && !strcmp(argv[i], "--retire-old")) retire = true;
        else return args_usage_error(NULL, bad ? "option %s needs a value" : "unknown option %s", argv[i]);
        if (bad) return args_usage_error(NULL, "option %s needs a value", argv[i]);
    }
    char err[512];
    if (!sub) {
        log_init("issuer", LOG_INFO);
        httpc_global_init();
        return issuer_run(&o);
    }
    if (!strcmp(sub, "init")) {
        if (dir_init(o.dir, force, err, sizeof err) != 0) {
            fprintf(stderr, "agentid issuer init: %s\n", err);
            return 1;
        }
        print_summary(o.dir);
        return 0;
    }
    if (!strcmp(sub, "rotate-keys")) {
        char kid[64] = "";
        if (dir_rotate_keys(o.dir, retire, kid, err, sizeof err) != 0) {
            fprintf(stderr, "agentid issuer rotate-keys: %s\n", err);
            return 1;
        }
        printf(retire ? "retired every key but %s\n" : "new signing key %s (previous keys stay published)\n",
               kid);
        return 0;
    }
    return args_usage_error(NULL, "unknown issuer command '%s'", sub);
}

static int cmd_sidecar(int argc, char **argv)
{
    const char *cfg = NULL, *listen = NULL;
    for (int i = 1; i < argc; i++) {
        bool bad = false;
        const char *v;
        if ((v = args_value(argc, argv, &i, "--config", &bad))) cfg = v;
        else if ((v = args_value(argc, argv, &i, "--listen", &bad))) listen = v;
        else if (!strcmp(argv[i], "--list-settings")) {
            for (const char *const *k = SETTINGS_KEYS; *k; k++) puts(*k);
            return 0;
        } else return args_usage_error(NULL, bad ? "option %s needs a value" : "unknown option %s", argv[i]);
    }
    return sidecar_main(cfg, listen);
}

int cli_main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "help";
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("agentid %s\n", AGENTID_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        fputs(USAGE, stdout);
        return 0;
    }
    if (!strcmp(cmd, "issuer")) return cmd_issuer(argc - 1, argv + 1);
    if (!strcmp(cmd, "sidecar")) return cmd_sidecar(argc - 1, argv + 1);
    if (!strcmp(cmd, "weather-api")) return weather_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "gateway")) return gateway_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "chat-agent")) return chat_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "up")) return up_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "mcp-demo")) return mcp_demo_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "agent")) return agent_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "decode")) return decode_main(argc - 1, argv + 1);
    return args_usage_error(NULL, "unknown command '%s'", cmd);
}
