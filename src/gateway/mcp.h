/* mcp — the gateway's MCP multiplexer: one Streamable HTTP MCP endpoint in front of several
 * MCP servers ("targets"): upstream Streamable HTTP servers, legacy HTTP+SSE ones (MCP
 * 2024-11-05) and stdio servers it spawns.
 *
 * As agentgateway does (shared docs agentgateway-mcp.md §3-§4, §7):
 *  - initialize is negotiated per client session (lowest protocol version of client and
 *    upstreams), each target initialised lazily on its own upstream session;
 *  - tools/list fans out and merges, naming tools "<target>_<tool>" when there is more than one
 *    target (unprefixed with one target);
 *  - tools/call is routed to its target with the unprefixed name;
 *  - Mcp-Session-Id of the client maps to one upstream session per target; sessions are kept
 *    apart; DELETE ends them, and so do 10 idle minutes. At most 1024 live at once, at most
 *    256 per client identity (iss + sub): past either, initialize ends the least recently
 *    used idle one (the client's own first), whose client then gets 404 and starts again;
 *    503 only when all are in use;
 *  - authorization: a tool the caller may not call (cel_rules_decide false with
 *    mcp.tool.{name,target} and jwt.* in the activation) is hidden from tools/list and refused
 *    on tools/call with JSON-RPC -32602 "Unknown tool: <name>";
 *  - notifications get 202; errors are JSON-RPC errors.
 *
 * Contract
 *  - mcp_mux is thread-safe: many client requests may be handled at once.
 *  - mcp_mux_handle() answers the request (exactly once). It never forwards the caller's token
 *    to a target unless the target's identity says so (MCP forbids token passthrough).
 *  - stdio targets are spawned on first use and killed by mcp_mux_free().
 */
#ifndef AGENTID_GATEWAY_MCP_H
#define AGENTID_GATEWAY_MCP_H

#include "core/http_server.h"
#include "gateway/cel.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum {
    MCP_IDENTITY_NONE,         /* default: no Authorization header upstream */
    MCP_IDENTITY_PASSTHROUGH,  /* explicit: forward the caller's token as is */
    MCP_IDENTITY_SIDECAR_OBO,  /* a token from the sidecar: /AuthorizationHeader/{api} with the caller's token */
    MCP_IDENTITY_SIDECAR_APP,  /* the agent's own token: /AuthorizationHeaderUnauthenticated/{api} */
} mcp_identity;

typedef struct {
    const char *name;          /* target name: letters, digits, '-' (no '_', which splits names) */
    /* exactly one of: */
    const char *url;           /* Streamable HTTP MCP server, e.g. http://127.0.0.1:9001/mcp */
    bool sse;                  /* with url: the legacy HTTP+SSE transport instead (GET url for
                                  the event stream, e.g. http://127.0.0.1:9001/sse) */
    const char *const *cmd;    /* stdio server: argv, NULL-terminated */
    const char *const *env;    /* stdio: extra "K=V" entries, NULL-terminated, may be NULL */
    mcp_identity identity;
    const char *sidecar_url;   /* for SIDECAR_*: e.g. http://127.0.0.1:5000 */
    const char *sidecar_api;   /* DownstreamApis name at the sidecar */
    const char *agent_identity;/* optional AgentIdentity for the sidecar */
} mcp_target;

typedef struct {
    const mcp_target *targets;
    size_t n_targets;
    const cel_rules *authz;    /* mcpAuthorization; NULL = allow everything */
    long timeout_ms;           /* per upstream request; 0 => 30000 */
    int session_ttl_s;         /* a client session idle this long ends; 0 => MCP_SESSION_TTL_S */
} mcp_config;

typedef struct mcp_mux mcp_mux;

/* NULL with err if the configuration is unusable (bad target name, both url and cmd, ...). */
mcp_mux *mcp_mux_new(const mcp_config *c, char *err, size_t errlen);
void mcp_mux_free(mcp_mux *m);

/* Handle one request to the MCP endpoint (POST, GET, DELETE). claims: the validated token's
 * claims (borrowed, may be NULL); raw_token: the caller's token (for passthrough/OBO), may be
 * NULL; request: {"method","path","headers":{...}} for CEL (borrowed, may be NULL). */
void mcp_mux_handle(mcp_mux *m, http_req *r, const json_t *claims, const char *raw_token,
                    const json_t *request);

#endif
