/* h1client — plain HTTP/1.1 exchanges on kept-alive connections, driven by one event loop.
 *
 * What http_client's loop transfers (httpc_async_start_on) use for an upstream at http://, the
 * reverse proxy's common case: the request goes out in one send on a
 * connection kept from an earlier exchange, the answer is parsed by http_parser
 * (libhttp-parser), and nothing else runs: no handle to set up, no URL or header list to copy,
 * no poll to see whether a kept connection still lives (a server that closed it is seen by the
 * loop's epoll while the connection idles). A host name is looked up in core/resolve's cache,
 * never waited for: until it is known the caller goes its other way. https and request bodies
 * that stream stay with libcurl.
 *
 * Usage (on the loop's thread)
 *     h1_pool *P = h1_pool_new(ep);                   // ep: the loop's epoll set
 *     h1_target t;
 *     if (h1_target_parse(url, &t)) x = h1_start(P, &t, &req, &events, ctx);
 *     ... the loop waits at most h1_pool_timeout(P) ms; an event whose data.u64 has bit 0 set
 *     is the pool's: h1_pool_event(P, ev.data.u64, ev.events); then h1_pool_run(P)
 *     ... events.head(ctx, status, headers), events.body(ctx, bytes) ..., events.end(ctx, result)
 *     h1_close(x);                                    // always, finished or not
 *     h1_pool_free(P);                                // once every exchange is closed
 *
 * Contract
 *  - A pool and its exchanges belong to one thread, the loop's; nothing here locks. Every h1_*
 *    call but h1_target_parse is made there.
 *  - Sockets. The pool puts its sockets in the caller's epoll set with data.u64 = the address of
 *    their connection | 1, so the caller's own entries must keep bit 0 of data.u64 clear. Such
 *    events go to h1_pool_event; an event of a batch may name a connection that an earlier event
 *    of the same batch closed only if an h1 callback closed an exchange, which they must not.
 *  - Timing. h1_start only queues: the request goes out in the next h1_pool_run (with the
 *    loop's other work of that round, not in the middle of it). h1_pool_timeout says when
 *    h1_pool_run is due: 0 with requests queued, else the nearest deadline (-1: none).
 *  - Events run on the loop thread from h1_pool_event or h1_pool_run, in this order: head once
 *    (the final answer's status and header block, "Name: value\r\n"..., 1xx answers skipped),
 *    body any number of times (chunked coding removed), end once (H1_OK: the body is complete);
 *    or end alone (no answer). An event must not call h1_close or h1_start.
 *    body returns false to hold the rest: the connection is not read (TCP slows the server)
 *    until h1_resume; the bytes of the current read still come, at most 16 KiB more.
 *  - Ownership. h1_start copies the request. An exchange is the caller's until h1_close, which
 *    cancels it if unfinished (its connection is closed, not reused) and frees it; no event runs
 *    after it.
 *  - Connections are kept per destination after an exchange that ended cleanly on a connection
 *    the server did not ask to close, at least H1_IDLE_MIN and at most twice the most exchanges
 *    ever in flight at once (nginx's keepalive N per worker, libcurl's cache as http_client
 *    sizes it); an idle one closes when the server closes it or after H1_IDLE_MS. A request
 *    sent on a kept connection that turns out closed before any byte of an answer (the server's
 *    idle timer won the race) is sent once more on a new connection, as libcurl does.
 *  - Errors: the kind in end's result; never the request's or answer's bytes.
 *  - Bounds. The answer's header block: H1_MAX_HEADERS bytes (else H1_TOO_LARGE); connecting:
 *    at most H1_CONNECT_MS, and within the exchange's timeout.
 *  - Several addresses (a name): a new connection goes to the one that took the last, and when
 *    that one refuses or fails to connect, to the next, each once; then H1_CONNECT.
 */
#ifndef AGENTID_CORE_H1CLIENT_H
#define AGENTID_CORE_H1CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define H1_MAX_HEADERS (64 * 1024)
#define H1_CONNECT_MS  5000
#define H1_IDLE_MS     60000
#define H1_IDLE_MIN    256

typedef enum {
    H1_OK = 0,
    H1_CONNECT,     /* refused or unreachable */
    H1_TIMEOUT,     /* the exchange's deadline, or connecting took too long */
    H1_NOTHING,     /* the server closed or reset the connection without any answer */
    H1_SEND,        /* sending failed */
    H1_RECV,        /* the answer was cut short (closed or reset mid-way) */
    H1_PROTOCOL,    /* not HTTP/1.x as the parser knows it, or an unasked-for upgrade */
    H1_TOO_LARGE,   /* the header block passed H1_MAX_HEADERS */
} h1_result;

/* Where a URL sends a request: its addresses, the Host header it implies and its target. */
#define H1_MAX_ADDRS 4
typedef struct {
    struct sockaddr_storage addr[H1_MAX_ADDRS];
    socklen_t addr_len[H1_MAX_ADDRS];
    size_t n_addrs;
    char authority[272];        /* "127.0.0.1:8080", "[::1]:8080", "api.internal"; no port if 80 */
    const char *target;         /* inside the URL: "/path?query" ("" stands for "/") */
    size_t target_len;          /* up to any "#fragment" */
} h1_target;

/* True if url is "http://" + a host (an IPv4 literal, a bracketed IPv6 literal or a name), an
 * optional port and a path, and the host's addresses are known now: a literal always, a name
 * once resolve_cached has it (the first asks start its lookup and are false). t->target points
 * into url. Thread-safe. */
bool h1_target_parse(const char *url, h1_target *t);

typedef struct {
    const char *method;              /* NULL: GET, or POST when body is set */
    const char *const *headers;      /* NULL-terminated "Name: value", or NULL. As libcurl takes
                                        them (callers of http_client rely on it): "Name:" with
                                        no value is not sent, "Name;" is sent empty. Neither are
                                        Content-Length and Transfer-Encoding (the body's framing
                                        is h1's) nor lines with CR or LF. Host: t->authority
                                        unless the list has one. */
    const char *body;                /* sent with Content-Length; NULL: none (POST: length 0) */
    size_t body_len;
    long timeout_ms;                 /* the whole exchange; 0: only connecting is bounded */
} h1_request;

typedef struct {
    void (*head)(void *ctx, long status, const char *headers, size_t len);
    bool (*body)(void *ctx, const char *data, size_t len);  /* false: hold (h1_resume) */
    void (*end)(void *ctx, h1_result r);
} h1_events;

typedef struct h1_pool h1_pool;
typedef struct h1_xfer h1_xfer;

h1_pool *h1_pool_new(int ep);           /* never NULL (allocation failures abort) */
void h1_pool_free(h1_pool *P);          /* closes idle connections; NULL is fine */
long h1_pool_timeout(const h1_pool *P);
void h1_pool_event(h1_pool *P, uint64_t data, uint32_t events);
void h1_pool_run(h1_pool *P);

h1_xfer *h1_start(h1_pool *P, const h1_target *t, const h1_request *req, const h1_events *ev, void *ctx);
void h1_resume(h1_xfer *x);             /* after body returned false */
void h1_close(h1_xfer *x);              /* NULL is fine */

/* For tests: connections opened by P so far, and those idle now. */
size_t h1_pool_opened(const h1_pool *P);
size_t h1_pool_idle(const h1_pool *P);

#endif
