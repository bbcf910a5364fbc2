/* mcp_demo — `agentid mcp-demo`: two small MCP servers for seed 003's gateway demo, one per
 * process: --kind weather (tool get_forecast {city}, the weather API's synthetic forecast) and
 * --kind clock (tools get_time {timezone?} with UTC offsets, and echo {text}).
 *
 * Transport: MCP Streamable HTTP at POST /mcp, one JSON-RPC message per request, answered with
 * application/json (never SSE); stateless (no Mcp-Session-Id). Methods: initialize, ping,
 * tools/list, tools/call; notifications get 202. Bad input gets a JSON-RPC error: -32700 parse
 * error, -32600 invalid request (also batches), -32601 unknown method, -32602 invalid params
 * (unknown tool, missing argument). A tool that fails on its input answers isError: true.
 * GET /healthz answers 200. No authentication: it is meant to sit behind `agentid gateway`.
 *
 * Contract: mcp_demo_main() parses its own arguments, serves until SIGINT/SIGTERM and returns
 * the process exit code (0 clean stop or --help, 1 failure, 2 usage). */
#ifndef AGENTID_DEMO_MCP_DEMO_H
#define AGENTID_DEMO_MCP_DEMO_H

int mcp_demo_main(int argc, char **argv);

#endif
