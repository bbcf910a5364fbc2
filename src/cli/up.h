/* up — `agentid up`: the whole local stack (issuer, sidecar, weather API, chat agent), each as its
 * own child process of this binary; restarts a child that crashes, stops everything on Ctrl-C.
 * Contract: up_main() returns the process exit code. */
#ifndef AGENTID_CLI_UP_H
#define AGENTID_CLI_UP_H

int up_main(int argc, char **argv);

#endif
