/* agent — `agentid agent`: the terminal AI agent of seed 003. The user signs in with the
 * device code flow; the agent gets on-behalf-of agent tokens from the sidecar for the LLM and
 * for MCP, calls both through the gateway, lets the LLM use the MCP servers' tools, and shows
 * every token it holds.
 *
 *   agentid agent run            the steps, then an interactive menu
 *   agentid agent ask "PROMPT"   one prompt, for scripts
 *   agentid agent show-tokens [--output-raw] [--json]
 *   agentid agent logout
 *
 * Contract: agent_main() parses its own arguments and returns the exit code (0 done, 1 a
 * failure it explained on stderr, 2 usage). Single-threaded. Tokens are printed only by
 * show-tokens --output-raw, never logged.
 */
#ifndef AGENTID_AGENT_AGENT_H
#define AGENTID_AGENT_AGENT_H

int agent_main(int argc, char **argv);

#endif
