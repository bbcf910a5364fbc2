/* chat — `agentid chat-agent`: the reference demo's chat agent with its web UI. It answers
 * weather questions Directly or through an LLM's tool calls, getting its tokens from the sidecar
 * (autonomous, or on behalf of the signed-in user) and showing every step in an identity trace.
 * Contract: chat_main() parses its own arguments, serves until SIGINT/SIGTERM and returns the
 * process exit code (0 clean stop, 1 failure, 2 usage). */
#ifndef AGENTID_DEMO_CHAT_H
#define AGENTID_DEMO_CHAT_H

int chat_main(int argc, char **argv);

#endif
