/* mcp_client — a small MCP client over Streamable HTTP (MCP 2025-06-18, "Transports"):
 * initialize + notifications/initialized, tools/list (all pages), tools/call.
 *
 * Answers may come as one JSON body or as a server-sent event stream; both are read.
 * The Mcp-Session-Id the server gives at initialize goes with every later request; when the
 * server forgets the session (404) the client initializes again once and retries.
 *
 * Contract
 *  - An mcpc belongs to one thread. Returned json_t are new references.
 *  - The bearer token is borrowed (mcpc_set_token) and sent only to this server's URL.
 *  - Errors: NULL with a sentence in err that says who refused and why: the transport, an HTTP
 *    status with the server's reason (a gateway's 401 WWW-Authenticate error_description, a
 *    403 rule), or a JSON-RPC error's message. No token in it.
 */
#ifndef AGENTID_AGENT_MCP_CLIENT_H
#define AGENTID_AGENT_MCP_CLIENT_H

#include <jansson.h>
#include <stddef.h>

typedef struct mcpc mcpc;

mcpc *mcpc_new(const char *name, const char *url, const char *ca_file);
void mcpc_free(mcpc *c);
const char *mcpc_name(const mcpc *c);
const char *mcpc_url(const mcpc *c);
/* The bearer token for the next requests; NULL sends none. Borrowed. */
void mcpc_set_token(mcpc *c, const char *token);

/* The server's tools (the "tools" arrays of every page, joined). */
json_t *mcpc_list_tools(mcpc *c, char *err, size_t errlen);
/* The CallToolResult of tools/call name(args); args may be NULL ({}). A result with
 * isError true is still a result (the tool ran and failed); it is returned. */
json_t *mcpc_call_tool(mcpc *c, const char *name, json_t *args, char *err, size_t errlen);

/* The text parts of a CallToolResult's content, joined by newlines (caller frees). */
char *mcpc_result_text(const json_t *result);

#endif
