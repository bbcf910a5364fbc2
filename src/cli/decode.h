/* decode — `agentid decode TOKEN [--verify] [--json] [--ca-file PEM]`: a JWT's header and
 * claims, and with --verify whether the identity provider named in the token accepts it
 * (see agent/inspect.h for what is checked).
 * Contract: decode_main() returns the exit code: 0 decoded (and valid, with --verify),
 * 1 not a JWT or not valid, 2 usage error. The token is never printed back whole. */
#ifndef AGENTID_CLI_DECODE_H
#define AGENTID_CLI_DECODE_H

int decode_main(int argc, char **argv);

#endif
