/* http_server — the HTTP/1.1 server every agentid part uses (libmicrohttpd underneath).
 *
 * Usage
 *     static void handle(http_req *r, void *ctx) {
 *         if (strcmp(http_req_path(r), "/healthz") == 0)
 *             http_reply_text(r, 200, "Healthy");
 *         else
 *             http_reply_text(r, 404, "not found");
 *     }
 *     http_server_opts o = { .listen = "127.0.0.1:0" };
 *     http_server *s = http_server_start(&o, handle, NULL, err, sizeof err);
 *
 * Contract
 *  - The handler runs on a server thread (several at once: it must be thread-safe) and
 *    must answer exactly once with one of the http_reply* calls before returning; if it
 *    does not, the server answers 500. Headers added with http_add_header go out with it.
 *  - Every http_req pointer and every string read from it lives until the handler
 *    returns. Reply bodies are copied.
 *  - Request bodies larger than opts.max_body are refused with 413 before the handler
 *    runs; header and URL size are bounded by libmicrohttpd (8 KiB per request, default).
 *  - Streaming (http_reply_stream): the body comes from a read callback that runs on the
 *    server thread after the handler returned, until it reports the end. It may block only
 *    when the server runs thread_per_connection (each connection has its own thread); the
 *    idle timeout is suspended while a stream is being sent. On an async server it may say
 *    HTTP_STREAM_AGAIN instead of blocking (see http_wake below).
 *  - Deferred requests (opt-in, opts.defer_workers > 0; see http_defer below): a handler
 *    may hand a request that would block (a call to another server) to a worker thread, so
 *    the server's few threads keep answering other connections meanwhile.
 *  - Waiting without a thread (opts.async; see http_wait, http_wake): a request, or a streamed
 *    reply, that waits for something another thread produces (an upstream's answer) parks its
 *    connection instead of a thread, and the producer wakes it.
 *  - HTTPS: a reply of at most 8 KiB given with http_reply (or the http_reply_* helpers) goes
 *    out as one TLS record in one send, headers and body together (libmicrohttpd alone sends
 *    them as two, and a client wakes for each).
 *  - Only this module includes <microhttpd.h>.
 */
#ifndef AGENTID_CORE_HTTP_SERVER_H
#define AGENTID_CORE_HTTP_SERVER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct http_server http_server;
typedef struct http_req http_req;

typedef struct {
    const char *listen;        /* "ADDR:PORT", "[::1]:PORT"; port 0 picks a free one */
    const char *tls_cert_pem;  /* PEM chain; with tls_key_pem turns on HTTPS */
    const char *tls_key_pem;
    size_t max_body;           /* 0 => 1 MiB */
    unsigned threads;          /* worker threads; 0 => number of CPUs */
    bool thread_per_connection;/* for handlers that block on other servers */
    unsigned timeout_s;        /* idle connection timeout; 0 => 30 */
    /* > 0 turns on http_defer with at most this many worker threads, started when first
     * needed (none at idle). Not with thread_per_connection (http_server_start fails). */
    unsigned defer_workers;
    size_t thread_stack;       /* stack size of the server's and the workers' threads; 0 => default */
    /* turns on http_wait and HTTP_STREAM_AGAIN (not with thread_per_connection) */
    bool async;
    /* > 0: this many event loops (see below), each one thread; implies async; not with threads
     * or thread_per_connection. defer_workers then counts per loop. */
    unsigned event_loops;
    const struct http_loop_source *loop_source; /* event_loops: what else each loop runs; may be NULL */
    /* Called once the headers of a request that has a body (Content-Length above 0, or
     * Transfer-Encoding) are in, before any of the body is read or buffered, on the thread that
     * will run the handler, with the same ctx. It may answer (http_reply*) to refuse the request
     * there, and the handler is not called: to a client that waits for "100 Continue" the answer
     * goes at once (it never sends the body; the connection closes after), else the body is read
     * and dropped, nothing of it kept (past max_body the connection is closed), and the answer
     * follows. Else the request goes on as usual (the handler sees it once its body is in). It
     * must not block, http_defer or http_wait. It may instead ask for the body to be streamed
     * (http_req_stream_body, below). NULL: none. */
    void (*early)(http_req *req, void *ctx);
} http_server_opts;

/* ---- event loops (opts.event_loops = N) ------------------------------------------------------
 * N threads, each with a listening socket of its own on the same address (SO_REUSEPORT: the
 * kernel spreads new connections over them) and serving only the connections it accepted: the
 * handler, http_wait's fns and stream reads of a connection all run on its loop thread. A loop
 * may also run the caller's loop source, e.g. an HTTP client bound to it (httpc_loop), whose
 * sockets then share the loop's epoll set: a proxied request starts its upstream transfer on
 * its own loop, waits (http_wait / HTTP_STREAM_AGAIN), and the transfer's notify, running on
 * the same thread, wakes it with http_wake — no other thread and no hand-off. A port that is
 * in use is refused, as without loops (SO_REUSEPORT alone would let another server join it).
 * Each loop batches its log lines (log_batch) and writes them once per round, and holds its
 * HTTPS answers back (TCP_CORK) until the round ends or the first held one has waited 2 ms,
 * so a busy round wakes each client about once instead of once per answer.
 * The source's callbacks: start(ctx) on the loop thread before it serves (its result is the
 * loop's state; NULL: none for this loop); fd(state): a descriptor the loop waits on for
 * reading; timeout_ms(state): ms until run is due anyway (-1: no timer); run(state): do what
 * is ready without blocking (it may call http_wake); stop(state), once the loop thread ended and
 * its connections were closed (their done callbacks ran), on the thread that stops the server.
 * http_loop_state() is, on a loop thread, its state (NULL elsewhere): what a handler uses to
 * start work on its own loop. Handlers on a loop must not block: what may, goes to http_defer. */
typedef struct http_loop_source {
    void *(*start)(void *ctx);
    int (*fd)(void *state);
    long (*timeout_ms)(void *state);
    void (*run)(void *state);
    void (*stop)(void *state);
    void *ctx;
} http_loop_source;
void *http_loop_state(void);

typedef void (*http_handler)(http_req *req, void *ctx);

/* Starts listening and serving. NULL on failure with a reason in err. For the whole process,
 * once: SIGPIPE is ignored, and the soft limit on open descriptors is raised towards the hard
 * one (at most 65536), since every connection is one. */
http_server *http_server_start(const http_server_opts *opts, http_handler h, void *ctx,
                               char *err, size_t errlen);
/* HTTPS: connections that start from now on show this certificate (PEM chain) and key instead;
 * those already open keep theirs. For certificate rotation without a restart. False with a
 * reason in err if the pair does not load (nothing changes then), or if s serves plain HTTP.
 * Thread-safe. Each pair set stays in memory until the server stops. */
bool http_server_set_tls(http_server *s, const char *cert_pem, const char *key_pem, char *err, size_t errlen);
/* The bound port (useful with port 0). */
unsigned http_server_port(const http_server *s);
/* Stops accepting, waits for handlers to finish, frees. NULL is fine. With defer_workers:
 * deferred requests not yet started are answered 503 (their fn runs with cancelled = true),
 * those running are waited for, and their answers are given up to 2 s to be sent before
 * the connections are closed. With async: requests in http_wait are answered 503 (their fn
 * runs with cancelled = true), streams waiting after HTTP_STREAM_AGAIN end with an error
 * (the client sees an incomplete answer; their done runs), and a stream that says
 * HTTP_STREAM_AGAIN from then on ends the same way; up to 2 s more for all that to go out. */
void http_server_stop(http_server *s);

const char *http_req_method(const http_req *r);
/* The path, %-decoded by the server, without the query string. */
const char *http_req_path(const http_req *r);
/* A query argument, decoded; NULL if absent. Case-sensitive name. */
const char *http_req_query(const http_req *r, const char *name);
/* Visit every query argument in order; value may be NULL ("?flag"). */
void http_req_query_each(const http_req *r,
                         void (*cb)(void *ctx, const char *name, const char *value), void *ctx);
/* A request header, case-insensitive name; NULL if absent. */
const char *http_req_header(const http_req *r, const char *name);
/* Visit every request header in the order received (repeated names are visited once each). */
void http_req_header_each(const http_req *r,
                          void (*cb)(void *ctx, const char *name, const char *value), void *ctx);
/* The request target exactly as sent: path and query, not %-decoded ("/a%20b?x=1"). */
const char *http_req_target(const http_req *r);
/* The raw body (NUL-terminated; may be empty, never NULL). */
const char *http_req_body(const http_req *r, size_t *len);
/* Peer address as text ("127.0.0.1", "::1"). */
const char *http_req_peer(const http_req *r);
bool http_req_peer_is_loopback(const http_req *r);
bool http_req_is_tls(const http_req *r);

/* Add a response header for the coming reply. */
void http_add_header(http_req *r, const char *name, const char *value);
void http_reply(http_req *r, int status, const char *content_type, const char *body, size_t len);
void http_reply_text(http_req *r, int status, const char *text);
/* Serialises obj compactly; takes ownership of the reference (steals it). */
void http_reply_json(http_req *r, int status, json_t *obj);
void http_reply_json_type(http_req *r, int status, const char *content_type, json_t *obj);
/* A streamed reply: status, headers, then a body produced piece by piece, sent with chunked
 * transfer encoding as the pieces come. read(ctx, buf, max) copies up to max bytes into buf
 * and returns how many (> 0), 0 at the end of the body, or -1 to abort (the connection is
 * closed, so the client sees an incomplete answer). On an async server it may also return
 * HTTP_STREAM_AGAIN: nothing yet; the connection is suspended (no thread waits) until
 * http_wake on the request's waker, then read is called again (elsewhere it counts as -1). done(ctx) runs exactly once when the
 * response is finished with, sent or not (also when the client went away, or if this reply
 * is ignored because another came first); done may be NULL. */
typedef long (*http_stream_read)(void *ctx, char *buf, size_t max);
void http_reply_stream(http_req *r, int status, const char *content_type, http_stream_read read,
                       void *ctx, void (*done)(void *ctx));
/* Deferred requests (servers started with defer_workers > 0).
 *
 *     static void slow(http_req *r, void *arg, bool cancelled) {
 *         if (!cancelled) http_reply_text(r, 200, call_other_server(arg));
 *         free(arg);
 *     }
 *     ... in the handler:  if (http_defer(r, slow, arg)) return;   // else answer inline
 *
 * http_defer, called by a handler, parks the request (MHD suspends its connection, which then
 * neither reads, writes nor times out) and queues fn(r, arg, false) for a worker thread; the
 * handler must return right away and not touch r again. The worker runs fn, which answers as a
 * handler does (no reply => 500); then the connection is resumed and the answer sent by the
 * server thread. Returns false, having done nothing, when the server was started without
 * defer_workers or the handler already replied; the handler then carries on inline.
 *  - fn runs exactly once for each successful http_defer: on a worker, or with cancelled = true
 *    when the server stops before a worker took it up, or at once on the handler's thread if
 *    the server is already stopping. With cancelled the answer (503) was made already: fn only
 *    releases arg (and may log); it must not block.
 *  - While deferred, r and every string read from it stay valid and belong to the worker alone;
 *    fn may use every http_req and http_reply call, including http_req_on_done and
 *    http_add_header. It runs on a worker thread, so what it shares must be thread-safe.
 *  - Workers are started as requests are queued, up to defer_workers, and stay until the server
 *    stops. The queue is bounded by the number of connections (one request each at a time).
 *  - A client that goes away while its request is deferred is noticed only once fn is done. */
typedef void (*http_deferred)(http_req *r, void *arg, bool cancelled);
bool http_defer(http_req *r, http_deferred fn, void *arg);

/* ---- waiting without a thread (servers started with opts.async) ---------------------------
 *
 *     static void on_upstream_news(void *w) { http_wake(w); }            // any thread
 *     static void resumed(http_req *r, void *arg, bool cancelled) {      // a server thread
 *         if (cancelled) { release(arg); return; }                       // 503 already made
 *         if (!ready(arg)) { if (!http_wait(r, resumed, arg)) ...; return; }  // wait on
 *         http_reply_stream(r, 200, type, read_piece, arg, release);     // may say AGAIN
 *     }
 *     ... in the handler: start(arg, on_upstream_news, http_req_waker(r));
 *                         if (http_wait(r, resumed, arg)) return;
 *
 * http_req_waker(r) is the request's waker (made on first use; NULL unless the server is
 * async): any thread may call http_wake on it, from the moment it is had until the request's
 * stream's done callback ran, or, for a request without a streamed reply, until its answer is
 * made. A wake resumes the connection if the request waits (http_wait) or its stream said
 * HTTP_STREAM_AGAIN; otherwise it is remembered and the next wait does not suspend. Wakes may
 * be spurious: whoever is woken checks and may wait again.
 * http_wait, called by a handler or by a waited fn (on a server thread, not from a deferred
 * worker), parks the request without a reply: the connection is suspended (it neither reads,
 * writes nor times out; a client that goes away is noticed only once it is resumed) and the
 * thread goes back to other connections. After the next http_wake, fn(r, arg, false) runs on a
 * server thread, as a handler does: it answers, or waits again, or hands over to http_defer.
 * Returns false, having done nothing, when the server is not async or is stopping, or r was
 * answered, deferred or is waiting already; the caller then carries on inline. When the server
 * stops, fn runs with cancelled = true after a 503, and when the connection closes while the
 * request waits (the client went away; noticed once woken), with cancelled = true and no answer
 * possible: either way it only releases arg (no blocking, no reply). */
typedef struct http_waker http_waker;
typedef void (*http_waited)(http_req *r, void *arg, bool cancelled);
#define HTTP_STREAM_AGAIN (-2L)
http_waker *http_req_waker(http_req *r);
void http_wake(http_waker *w);
bool http_wait(http_req *r, http_waited fn, void *arg);

/* ---- streamed request bodies (async servers) ---------------------------------------------
 *
 *     early:   if (big_or_chunked(r)) http_req_stream_body(r);
 *     handler: http_body *b = http_req_body_reader(r);      // NULL: the body is buffered as usual
 *              start(b, ...); http_body_on_more(b, more, x); http_wait(r, answered, x);
 *     reader:  long n = http_body_read(b, buf, max);         // > 0, 0 end, HTTP_STREAM_AGAIN, -1
 *     when done with it:  http_body_release(b);
 *
 * http_req_stream_body, called from opts.early only, has the handler run at once, with the body
 * still to come, instead of once it is all in: the handler takes the reading end with
 * http_req_body_reader and passes it on (to an upstream transfer, say), and the server hands
 * the body over as it arrives, holding at most HTTP_BODY_WINDOW bytes of it: when the reader
 * falls behind, the connection stops reading (TCP slows the client down) until it catches up.
 * max_body still applies (a chunked body past it fails for the reader, and the client gets 413).
 * False, nothing changed, if called elsewhere, twice, after an answer or on a server that is
 * not async. Then:
 *  - http_req_body is empty; http_defer is refused until the body is all in;
 *  - http_wait from the handler does not park the connection while the body comes: fn runs
 *    once it is all in, as after a wake (it checks, and may wait again, parked then);
 *  - an answer the handler makes at once, or a handler that neither answers nor waits, means
 *    nobody reads the body: it is read and dropped (as for early's refusals), then answered;
 *  - the client going away ends the body with a failure for the reader, and fn runs with
 *    cancelled = true, as for any waiting request.
 * The reader, on any thread (one at a time): http_body_read copies up to max bytes and returns
 * how many (> 0), 0 at the end, -1 if the body will not be complete (client gone, too large, or
 * after http_body_stop), or HTTP_STREAM_AGAIN if nothing is there yet: then on_more(ctx), set
 * with http_body_on_more, runs once when something is (bytes, the end or a failure). on_more
 * runs on the request's server thread, with no lock of the server's held; it must not block
 * (waking the reader is what it is for); it runs at once from http_body_on_more if news came
 * before it was set. http_body_stop: the reader wants no more (say its transfer ended): the rest
 * is read from the client and dropped. http_body_release stops, clears on_more and drops the
 * reader's reference; the reader must not use b after it. Called on the request's server thread
 * (or once the request is over), no on_more runs after it returns. */
#define HTTP_BODY_WINDOW (64 * 1024)
typedef struct http_body http_body;
bool http_req_stream_body(http_req *r);
bool http_req_body_streamed(const http_req *r);
http_body *http_req_body_reader(http_req *r);
long http_body_read(http_body *b, char *buf, size_t max);
void http_body_on_more(http_body *b, void (*on_more)(void *ctx), void *ctx);
void http_body_stop(http_body *b);
void http_body_release(http_body *b);

/* Run fn(ctx) once the request is over (answer sent, or connection lost), on the server
 * thread, after any stream's done callback. For state that must outlive the handler. */
void http_req_on_done(http_req *r, void (*fn)(void *ctx), void *ctx);
/* True once a reply was made. */
bool http_replied(const http_req *r);
/* The status of the reply, 0 before it. */
int http_reply_status(const http_req *r);

#endif
