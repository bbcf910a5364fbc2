/* http_client — outgoing HTTP(S) requests (libcurl underneath).
 *
 * Contract
 *  - Thread-safe. Each thread keeps one curl handle, so connections to the same host
 *    are reused across calls on that thread (keep-alive).
 *  - A response body larger than req.max_response is an error (HTTPC_TOO_LARGE).
 *  - Redirects are not followed.
 *  - Returns HTTPC_OK whenever an HTTP response arrived, whatever its status; the kind
 *    of transport failure otherwise, with a reason in err (never containing the body
 *    or headers, which may hold secrets).
 *  - Only this module includes <curl/curl.h>.
 */
#ifndef AGENTID_CORE_HTTP_CLIENT_H
#define AGENTID_CORE_HTTP_CLIENT_H

#include <stddef.h>

typedef enum {
    HTTPC_OK = 0,
    HTTPC_CONNECT,     /* refused, unreachable, DNS, TLS handshake */
    HTTPC_TIMEOUT,
    HTTPC_TOO_LARGE,
    HTTPC_ERROR,       /* anything else */
} httpc_result;

typedef struct {
    const char *method;              /* NULL => GET, or POST when body != NULL */
    const char *url;
    const char *const *headers;      /* NULL-terminated "Name: value" list, or NULL */
    const char *body;                /* may be NULL */
    size_t body_len;
    long timeout_ms;                 /* whole request; 0 => 10000 */
    const char *ca_file;             /* extra trust anchor (PEM) for https; NULL => system */
    size_t max_response;             /* 0 => 4 MiB */
} httpc_request;

typedef struct {
    long status;
    char *body;                      /* NUL-terminated, caller frees via httpc_response_free */
    size_t body_len;
    char *content_type;              /* may be NULL */
    char *headers;                   /* raw response header block, "Name: value\r\n"... */
    double total_ms;
} httpc_response;

/* Call once at start-up, before threads. */
void httpc_global_init(void);

httpc_result httpc_do(const httpc_request *req, httpc_response *resp, char *err, size_t errlen);
void httpc_response_free(httpc_response *resp);
/* A response header value (case-insensitive), copied; NULL if absent. */
char *httpc_response_header(const httpc_response *resp, const char *name);

#endif
