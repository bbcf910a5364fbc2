/* args — the command line conventions every subcommand shares.
 *
 *   for (int i = 1; i < argc; i++) {
 *       bool missing = false;
 *       const char *v;
 *       if ((v = args_value(argc, argv, &i, "--listen", &missing))) listen = v;
 *       else return args_usage_error("sidecar", missing ? "option %s needs a value"
 *                                                       : "unknown option %s", argv[i]);
 *   }
 *
 * Contract: pure functions over argv; nothing is copied (values point into argv).
 */
#ifndef AGENTID_CORE_ARGS_H
#define AGENTID_CORE_ARGS_H

#include <signal.h>
#include <stdbool.h>

/* "--name VALUE" or "--name=VALUE" at argv[*i]: the value (advancing *i past a separate one),
 * or NULL when argv[*i] is another option — or is this one without its value, when *missing
 * is set to true. */
const char *args_value(int argc, char **argv, int *i, const char *name, bool *missing);

/* Prints one line "agentid CMD: <fmt with arg> (see 'agentid CMD --help')" to stderr;
 * returns 2, the exit status of a usage error. */
int args_usage_error(const char *cmd, const char *fmt, const char *arg);

/* Servers: block SIGINT and SIGTERM (and SIGHUP, for servers that reload on it) in this
 * thread — call before starting threads, which inherit the mask — and fill *set with them;
 * args_wait_for_stop() returns when SIGINT or SIGTERM arrives. */
void args_block_stop_signals(sigset_t *set, bool with_hup);
void args_wait_for_stop(const sigset_t *set);

#endif
