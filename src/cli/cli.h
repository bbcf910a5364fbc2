/* cli — argument parsing and the subcommands of the agentid binary.
 * cli_main() returns the process exit code: 0 success, 1 failure, 2 usage error. */
#ifndef AGENTID_CLI_CLI_H
#define AGENTID_CLI_CLI_H

int cli_main(int argc, char **argv);

#endif
