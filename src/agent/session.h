/* session — the agent user's sign-in: the OAuth 2.0 device authorization grant (RFC 8628) as
 * Entra runs it, the refresh token, and the file they are kept in between runs.
 *
 * session_get() returns a user token for the configured scope, the cheapest way it can:
 *   1. the cached access token, if it is valid for at least two more minutes;
 *   2. else the cached refresh token (grant_type=refresh_token), silently;
 *   3. else the device code flow: the provider's instructions are printed to opts->out
 *      ("To sign in, use a web browser to open the page ... and enter the code ..."), and the
 *      token endpoint is polled at the interval it asks for (slower on slow_down) until the
 *      person signs in, declines, or the code expires.
 * Endpoints come from the authority's discovery document ({authority}/v2.0/.well-known/
 * openid-configuration: device_authorization_endpoint, token_endpoint), as MSAL finds them.
 *
 * Contract
 *  - The cache file is written 0600 (its directory 0700) with an atomic rename, and holds the
 *    access token, the refresh token, the expiry and the user's name for one authority,
 *    client and scope; a cache for another authority, client or scope is ignored (and
 *    replaced on the next sign-in). Tokens are never printed or logged.
 *  - Errors: -1 with a sentence a person understands in err (no token in it).
 *  - Single-threaded use; blocking (the device code flow waits for a person).
 */
#ifndef AGENTID_AGENT_SESSION_H
#define AGENTID_AGENT_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    const char *authority;     /* https://host/{tenant} */
    const char *client_id;     /* a public client */
    const char *scope;         /* space-separated, e.g. "api://{blueprint}/access_as_user" */
    const char *ca_file;       /* extra trust anchor for the authority, may be NULL */
    const char *cache_path;    /* session_default_path() unless given */
    FILE *out;                 /* where the sign-in instructions go */
} session_opts;

typedef enum { SESSION_CACHED, SESSION_REFRESHED, SESSION_SIGNED_IN } session_origin;

typedef struct {
    char *access_token;        /* the user token (Tc of seed 003) */
    char *refresh_token;       /* may be NULL */
    char *username;            /* preferred_username / upn, or "(unknown)" */
    int64_t expires_at;
    session_origin origin;
} session;

int session_get(const session_opts *o, session *s, char *err, size_t errlen);
void session_clear(session *s);

/* Remove the cache file: 0 and *existed; -1 with err if it exists and cannot be removed. */
int session_logout(const char *cache_path, bool *existed, char *err, size_t errlen);

/* $XDG_CONFIG_HOME/agentid/agent-session.json, else $HOME/.config/agentid/agent-session.json.
 * Caller frees; NULL when neither variable is set. */
char *session_default_path(void);

#endif
