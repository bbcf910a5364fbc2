/* args — see args.h. */
#include "core/args.h"

#include "core/log.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

const char *args_value(int argc, char **argv, int *i, const char *name, bool *missing)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0) return NULL;
    if (argv[*i][n] == '=') return argv[*i] + n + 1;
    if (argv[*i][n] != '\0') return NULL;
    if (*i + 1 >= argc) {
        *missing = true;
        return NULL;
    }
    return argv[++*i];
}

int args_usage_error(const char *cmd, const char *fmt, const char *arg)
{
    fprintf(stderr, "agentid%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see 'agentid %s%s')\n", cmd ? cmd : "help", cmd ? " --help" : "");
    return 2;
}

void args_block_stop_signals(sigset_t *set, bool with_hup)
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    if (with_hup) sigaddset(set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, set, NULL);
}

void args_wait_for_stop(const sigset_t *set)
{
    int sig = 0;
    sigwait(set, &sig);
    log_msg(LOG_INFO, "stopping", "shutting down on %s", sig == SIGINT ? "SIGINT" : "SIGTERM");
}
