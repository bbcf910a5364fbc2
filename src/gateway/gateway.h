/* gateway — `agentid gateway`: a token-validating reverse proxy for APIs, LLM routes and MCP
 * servers, configured like agentgateway (gateway/config.h, docs/gateway.md).
 *
 * For each request: route by path, method and headers; CORS preflight; local rate limit;
 * jwtAuth (JWKS signature, iss, aud, exp/nbf); authorization rules (CEL over jwt, request,
 * source); then the backend — a streamed HTTP reverse proxy (host/url), an LLM provider (ai)
 * or the MCP multiplexer (mcp, gateway/mcp.h). RFC 9728 protected-resource metadata is served
 * for every route with jwtAuth.
 *
 * Contract: gateway_main() parses its own arguments (argv[0] is "gateway"), serves until
 * SIGINT/SIGTERM and returns the process exit code (0 clean stop, 1 failure, 2 usage). The
 * configuration is reloaded on SIGHUP and when the file changes (checked once a second); a
 * file that does not load leaves the running configuration in place.
 */
#ifndef AGENTID_GATEWAY_GATEWAY_H
#define AGENTID_GATEWAY_GATEWAY_H

int gateway_main(int argc, char **argv);

#endif
