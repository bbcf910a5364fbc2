/* converse — the agent loop: an OpenAI-compatible chat completions API (streamed) with the
 * MCP servers' tools offered as functions.
 *
 * One turn: the user's prompt is appended to the conversation; the LLM is asked with every
 * tool of every MCP server; its text is written to opts->out as it streams in; each tool call
 * it makes goes to the MCP server that offers the tool and the result goes back to the LLM as
 * a "tool" message; this repeats until the LLM answers without calling a tool, or max_steps
 * LLM calls have been made.
 *
 * Tool names: with one server, the server's own; with more, "<server>__<tool>" (characters
 * outside [A-Za-z0-9_-] become '_', at most 64), so the LLM's call finds its server again.
 *
 * Contract
 *  - messages is the conversation (a JSON array the caller owns); the turn appends to it.
 *  - Errors: -1 with a sentence in err saying what failed and why (the LLM route unreachable,
 *    the gateway's 401 with its reason, a 403 rule, the upstream's error, the step limit).
 *    A failing tool call is not an error of the turn: its reason goes to the LLM and to
 *    opts->trace.
 *  - Single-threaded. Tokens are borrowed and never printed.
 */
#ifndef AGENTID_AGENT_CONVERSE_H
#define AGENTID_AGENT_CONVERSE_H

#include "agent/mcp_client.h"

#include <jansson.h>
#include <stdio.h>

typedef struct {
    const char *url;          /* the chat completions URL, e.g. http://127.0.0.1:3000/llm/v1/chat/completions */
    const char *token;        /* bearer for the LLM route (may be NULL) */
    const char *model;        /* NULL: let the gateway/provider choose */
    const char *ca_file;
    int max_steps;            /* LLM calls per turn; <= 0: 8 */
    FILE *out;                /* the answer, streamed */
    FILE *trace;              /* one line per tool call and result */
} converse_opts;

/* The tools of every server as OpenAI function definitions; servers whose tools/list fails
 * are reported on trace and left out. New reference. */
json_t *converse_tools(mcpc **servers, size_t n, FILE *trace);

/* One turn; 0 and the answer's text in *answer (caller frees), or -1 and err. */
int converse_turn(const converse_opts *o, json_t *messages, mcpc **servers, size_t n, const char *prompt,
                  char **answer, char *err, size_t errlen);

#endif
