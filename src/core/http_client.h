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
 *  - Streams (httpc_stream_*): the body is handed over piece by piece as it arrives instead of
 *    being collected, for proxies. Stream connections are kept in a process-wide pool, so a
 *    stream on any thread may reuse a kept-alive connection to the same host.
 *  - Asynchronous transfers (httpc_async_*): the same streams without a waiting thread, for
 *    event-driven servers; see below.
 *  - Only this module includes <curl/curl.h>.
 *  - Direct transfers: on a loop of the caller's (httpc_async_start_on with a loop), a request to
 *    http:// whose body is in memory (no body_read) and whose host is an address, or a name
 *    core/resolve has looked up already (httpc_prepare starts that early), does not go through
 *    libcurl but through core/h1client (one send on a kept connection, http_parser for the
 *    answer): a reverse proxy's hot path. It behaves as described here for every transfer
 *    (states, notify, buffering and backpressure, timeouts, errors as the same httpc_result
 *    kinds); what differs is listed under "loops" below.
 */
#ifndef AGENTID_CORE_HTTP_CLIENT_H
#define AGENTID_CORE_HTTP_CLIENT_H

#include <stdatomic.h>
#include <stdbool.h>
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
    const atomic_bool *cancel;       /* streams: once true, a waiting open or read fails
                                        within a second (for shutdown); may be NULL */
    /* Asynchronous transfers only (httpc_async_*): the body comes piece by piece from
     * body_read(body_ctx, buf, max) instead of from body (NULL then), and body_len is its length,
     * or HTTPC_BODY_CHUNKED if not known (it goes with chunked transfer encoding). See
     * "streamed request bodies" below. */
    long (*body_read)(void *ctx, char *buf, size_t max);
    void *body_ctx;
} httpc_request;
#define HTTPC_BODY_CHUNKED ((size_t)-1)

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

/* Why a server refused, in one line for a person: the error_description of its
 * WWW-Authenticate header, else a JSON body's error_description, detail, message or error
 * (a string, or an object's message, as OpenAI-compatible APIs send it), else the body's
 * first line (at most 280 bytes). headers is a raw header block as in httpc_response. */
void httpc_refusal(const char *headers, const char *body, size_t body_len, char *out, size_t outlen);

/* ---- streaming ----------------------------------------------------------------------------
 * Usage
 *     httpc_stream *st;
 *     if (httpc_stream_open(&req, &st, err, sizeof err) != HTTPC_OK) ...   // no response
 *     long status = httpc_stream_status(st);          // headers: httpc_stream_headers(st)
 *     char buf[16384];
 *     long n;
 *     while ((n = httpc_stream_read(st, buf, sizeof buf)) > 0) send(buf, n);
 *     if (n < 0) ... httpc_stream_error(st, err, sizeof err) says why (timeout, reset, ...)
 *     httpc_stream_close(st);
 *
 * A stream belongs to one thread at a time. req->max_response does not apply (nothing is
 * collected) and req->body is copied. req->timeout_ms bounds the whole exchange, body
 * included; 0 means no bound (only the connection phase is bounded, by 5 s). */
typedef struct httpc_stream httpc_stream;

/* Send the request and wait for the final response's status and headers. HTTPC_OK and a
 * stream to read and close; otherwise *out is NULL and err says why. */
httpc_result httpc_stream_open(const httpc_request *req, httpc_stream **out, char *err, size_t errlen);
long httpc_stream_status(const httpc_stream *s);
/* The response header block, "Name: value\r\n"... (status line excluded). Borrowed. */
const char *httpc_stream_headers(const httpc_stream *s);
/* Wait for body bytes: up to max into buf and their count (> 0), 0 at the end of the body,
 * -1 if the transfer failed. */
long httpc_stream_read(httpc_stream *s, char *buf, size_t max);
/* After a read returned -1: the kind of failure, with a reason in err. */
httpc_result httpc_stream_error(const httpc_stream *s, char *err, size_t errlen);
/* Abort the transfer if unfinished and free. NULL is fine. */
void httpc_stream_close(httpc_stream *s);

/* ---- asynchronous transfers -----------------------------------------------------------------
 * Usage (an event-driven proxy; none of these calls block except httpc_async_wait):
 *     httpc_async *a = httpc_async_start(&req, on_news, ctx, err, sizeof err);  // NULL: err says why
 *     ... when httpc_async_poll(a) says HTTPC_ASYNC_WAITING, wait for on_news(ctx), ask again
 *     HTTPC_ASYNC_HEADERS: httpc_async_status(a), httpc_async_headers(a); then body pieces:
 *     long n = httpc_async_read(a, buf, max);   // > 0 bytes, 0 end, HTTPC_AGAIN (wait for
 *                                               //   on_news), -1 failed: httpc_async_error
 *     HTTPC_ASYNC_FAILED: no response; httpc_async_error(a, err, sizeof err) says why
 *     httpc_async_close(a);
 *
 * Threads. Every transfer runs on one process-wide client thread (started on first use), a
 * libcurl multi handle driven by curl_multi_socket_action on an epoll set and woken through an
 * eventfd when a transfer is queued, unpaused or cancelled. Connections are kept alive in the multi handle's
 * cache, shared by all transfers. The caller's calls are thread-safe, but one transfer should
 * be read by one thread at a time.
 * Notification. notify(ctx) runs on the client thread, at least once after httpc_async_poll
 * answered WAITING or httpc_async_read answered HTTPC_AGAIN, as soon as the answer would
 * change (headers in, body bytes in, the end, a failure). It runs with the transfer's lock held:
 * it must be quick, must not block and must not call httpc_async_* itself (waking a thread or
 * resuming a connection is what it is for). It is never called once httpc_async_close returned.
 * Backpressure. Body bytes wait in a buffer of at most HTTPC_ASYNC_BUFFER bytes (plus one
 * libcurl piece of at most 16 KiB); when it is full the transfer is paused (the upstream's
 * socket is not read, so TCP slows the upstream down) and is resumed once the reader has
 * drained it to half.
 * Ownership. req and everything it points to are copied (headers, URL, body). The transfer
 * belongs to the caller until httpc_async_close, which cancels it if unfinished (its
 * connection is then closed, not reused) and frees it.
 * Timeouts. req->timeout_ms bounds the whole exchange, body included (0: no bound, only the
 * connection phase, by 5 s), as for streams; a timeout is HTTPC_TIMEOUT from
 * httpc_async_error. req->cancel and req->max_response do not apply (close cancels). */
#define HTTPC_AGAIN        (-2)
#define HTTPC_ASYNC_BUFFER (64 * 1024)

typedef struct httpc_async httpc_async;
typedef enum {
    HTTPC_ASYNC_WAITING,   /* no final response yet */
    HTTPC_ASYNC_HEADERS,   /* status and headers are in; the body follows */
    HTTPC_ASYNC_FAILED,    /* no response will come: httpc_async_error */
} httpc_async_state;

httpc_async *httpc_async_start(const httpc_request *req, void (*notify)(void *ctx), void *ctx,
                               char *err, size_t errlen);
/* Where the transfer stands; WAITING arranges a notify. */
httpc_async_state httpc_async_poll(httpc_async *a);
/* Block until the state is not WAITING (for threads that may block, e.g. server workers), or
 * until *cancel (may be NULL) is true, checked once a second: then WAITING. */
httpc_async_state httpc_async_wait(httpc_async *a, const atomic_bool *cancel);
/* Once HEADERS: the final response's status and header block ("Name: value\r\n"..., the
 * status line excluded), unchanged until close. */
long httpc_async_status(httpc_async *a);
const char *httpc_async_headers(httpc_async *a);
/* Body bytes: up to max into buf and their count (> 0); 0 at the end of the body; HTTPC_AGAIN
 * if none are there yet (a notify follows); -1 if the transfer failed. */
long httpc_async_read(httpc_async *a, char *buf, size_t max);
/* Bytes waiting to be read (for tests of the bound). */
size_t httpc_async_buffered(httpc_async *a);
/* After FAILED or a read of -1: the kind of failure, with a reason in err. */
httpc_result httpc_async_error(httpc_async *a, char *err, size_t errlen);
/* Cancel if unfinished, and free. No notify runs after it returns. NULL is fine. */
void httpc_async_close(httpc_async *a);

/* ---- loops run by the caller (event-driven servers with one loop per thread) --------------
 * Usage (one loop thread that also serves connections; see http_server.h opts.event_loops):
 *     httpc_loop *L = httpc_loop_new();                 // on the loop thread
 *     ... in its poll set: httpc_loop_fd(L) for reading; its wait at most httpc_loop_timeout(L)
 *     ... when that fd is readable or the timeout passed: httpc_loop_run(L);
 *     a = httpc_async_start_on(L, &req, on_news, ctx, err, sizeof err);   // then as above
 *     httpc_loop_free(L);                               // once every transfer on it is closed
 *
 * Threads. A loop, and every transfer started on it, belongs to one thread, the one that runs
 * it: httpc_async_start_on, _poll, _read, _close and httpc_loop_run must all be called there
 * (not from inside notify, which runs inside httpc_loop_run), and never httpc_async_wait, which
 * would wait for a loop that cannot run. Ownership may pass to another thread once the first
 * is gone (a joined thread), e.g. to close what was left and free the loop. No locks are
 * contended and no thread is woken: notify runs on the loop thread during httpc_loop_run.
 * The loop keeps its own connections alive (its multi handle's cache, sized to twice the most
 * transfers it ever ran at once and at least 256, so neither a quiet moment nor a crowd closes
 * what is still needed; idle ones close after 118 s; the shared client thread likewise) and
 * reuses easy handles.
 * httpc_loop_fd is an epoll descriptor (readable when a transfer's socket is ready), so it can
 * sit in the caller's own epoll or poll set; httpc_loop_timeout is the milliseconds until the
 * loop must run anyway (-1: no timer), libcurl's timers (connection phase, timeouts, starts).
 * Everything else (buffering, backpressure, timeouts, errors, notify's once-per-round) is as
 * for httpc_async_start. httpc_async_start_on with L NULL is httpc_async_start.
 * Direct transfers (http://, body in memory, the host a literal address or a name resolved in
 * the background; see h1client.h) share the
 * loop's epoll descriptor, and httpc_loop_timeout covers them. They differ from libcurl's in
 * these points: a request goes out with Content-Length (never "Expect: 100-continue"), a
 * caller's Content-Length and Transfer-Encoding lines are dropped (the body's framing is the
 * client's), kept connections are per loop and per address (as libcurl's: at least 256, twice
 * the most in flight) and close after 60 s idle instead of 118, and connecting past its bound
 * (5 s) is HTTPC_TIMEOUT as with libcurl. */
typedef struct httpc_loop httpc_loop;

/* ---- streamed request bodies (req.body_read) ------------------------------------------------
 * For a proxy that forwards a body as it arrives. body_read copies up to max bytes into buf and
 * returns how many (> 0), 0 at the end of the body, -1 to abort the transfer (it fails:
 * HTTPC_ERROR), or HTTPC_AGAIN when nothing is there yet: the transfer's upload then waits
 * (the response, if one comes meanwhile, goes on) until httpc_async_body_ready(a) says there
 * is more. body_read runs on the transfer's thread (the client thread, or the loop's) with the
 * transfer's lock held: it must not block or call httpc_async_*; it is never called once
 * httpc_async_close returned. When the transfer is over (finished or failed) before body_read
 * said 0 or -1, body_read(body_ctx, NULL, 0) is called once: nothing more will be read (e.g.
 * the upstream answered without reading all of it); its result is ignored.
 * httpc_async_body_ready: on a loop (httpc_async_start_on), from the loop's thread outside
 * notify and body_read; on the client thread's transfers, from any thread. */
void httpc_async_body_ready(httpc_async *a);

/* Start looking up url's host name in the background (core/resolve), so that loop transfers to
 * it go direct from the first request on (until it is known they go through libcurl). For a
 * server's configured upstreams, at start-up and reload. Never blocks; any URL is fine. */
void httpc_prepare(const char *url);

httpc_loop *httpc_loop_new(void);          /* NULL if curl or epoll could not be set up */
int httpc_loop_fd(const httpc_loop *L);
long httpc_loop_timeout(const httpc_loop *L);
void httpc_loop_run(httpc_loop *L);        /* does what is ready; never blocks */
void httpc_loop_free(httpc_loop *L);       /* NULL is fine; transfers must be closed first */
httpc_async *httpc_async_start_on(httpc_loop *L, const httpc_request *req,
                                  void (*notify)(void *ctx), void *ctx, char *err, size_t errlen);

#endif
