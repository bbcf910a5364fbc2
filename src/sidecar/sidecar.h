/* sidecar — `agentid sidecar`: a drop-in for Microsoft's Entra SDK auth sidecar.
 *
 *   GET  /healthz                                   "Healthy" (the only route open to non-loopback callers)
 *   GET  /metrics                                   Prometheus text
 *   GET  /Validate                                  validate the inbound bearer token, return its claims
 *   GET  /AuthorizationHeader/{apiName}             token for the API, for the inbound user (OBO) or app
 *   GET  /AuthorizationHeaderUnauthenticated/{api}  token for the API as the app or an agent, no user
 *   POST /DownstreamApi/{apiName}                   call the API with such a token, return its answer
 *   POST /DownstreamApiUnauthenticated/{apiName}
 *
 * Query parameters AgentIdentity, AgentUsername, AgentUserId and optionsOverride.*, gated by
 * Sidecar__AllowOverrides__*. docs/sidecar.md has every setting, shape and difference from
 * Microsoft's sidecar.
 *
 * Contract: sidecar_main() reads settings from the environment and the given appsettings.json,
 * serves until SIGINT/SIGTERM and returns the process exit code. A bad setting stops start-up
 * with one line naming the key.
 */
#ifndef AGENTID_SIDECAR_SIDECAR_H
#define AGENTID_SIDECAR_SIDECAR_H

/* config_file: appsettings.json path or NULL (then ./appsettings.json if present).
 * listen: --listen or NULL. */
int sidecar_main(const char *config_file, const char *listen);

#endif
