/* http_server — see http_server.h. A thin layer over libmicrohttpd (MHD) 0.9.75.
 *
 * How a request flows through MHD's access handler (on_access):
 *   1st call  (*req_cls == NULL, no data): headers are in; allocate our http_req. If
 *             Content-Length already exceeds max_body, queue 413 right away — MHD only
 *             accepts a queued response in this first call or after the whole body, and
 *             an early one makes MHD skip the body and close the connection. A request
 *             with a body meets opts.early here; a refusal goes out at once when the client
 *             waits for 100 Continue, else after the body, which is read and dropped.
 *   Nth call  (*upload_data_size > 0): a piece of the body; append it (or discard it
 *             once over the cap, for chunked bodies whose size was not announced).
 *   last call (*upload_data_size == 0): run the handler once, queue what it made.
 * MHD_OPTION_URI_LOG_CALLBACK runs before all of this, with the request target as sent: it
 * allocates the http_req and keeps a copy of the raw target (MHD decodes its own).
 * MHD_OPTION_NOTIFY_COMPLETED frees the http_req whatever happened.
 *
 * Streamed replies (http_reply_stream) wrap the caller's callbacks in a `stream`, which MHD
 * drives through MHD_create_response_from_callback after the handler returned. The stream can
 * outlive the http_req (MHD drops its response reference last on some paths), so on_done hooks
 * still pending when the http_req goes are handed to the stream and run after its done.
 *
 * Deferred requests (http_defer): the handler, in the last call, suspends the connection
 * (MHD_suspend_connection) and queues the http_req for a worker; on_access returns without a
 * response. The worker runs the caller's fn, marks the request D_DONE and resumes the
 * connection; MHD then calls on_access once more (no data), which queues the reply. The server
 * counts deferred requests from http_defer to req_free (`outstanding`) so that stopping can
 * wait for their answers: MHD must not be stopped with a connection still suspended.
 *
 * Waiting without a thread (opts.async): a request or a streamed reply that has nothing to say
 * yet suspends its connection, from on_access (http_wait) or from the content reader (the read
 * callback said HTTP_STREAM_AGAIN), and a producer on any thread resumes it with http_wake. The
 * two sides meet in an http_waker, one per request, under the server's wmu: `suspended` when
 * the connection is, `pending` when a wake came while it was not (the next suspend is skipped,
 * so a wake is never lost between "nothing yet" and the suspend). Suspended wakers are listed
 * so that stopping can resume them all (`cancelled`): a waiting request then runs its fn with
 * cancelled = true after a 503, a stream ends with an error. The waker is reference-counted by
 * the request and its stream, which may outlive it.
 */
#include "core/http_server.h"
#include "core/log.h"
#include "core/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <linux/sockios.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <sys/resource.h>
#include <unistd.h>

#define DEFAULT_MAX_BODY   (1024 * 1024)
#define NOFILE_SOFT        65536 /* raise_nofile's ceiling */
#define NOFILE_LOW         4096  /* fewer than this after raising: say so */
#define DEFAULT_TIMEOUT_S  30
/* MHD keeps the request line, headers and its read/write buffers in one pool per
 * connection; this bounds URL + headers at a little under this size (bigger gets 431).
 * 32 KiB (MHD's default, made explicit) leaves room for several JWTs in headers. */
#define CONN_MEMORY_LIMIT  (32 * 1024)
/* A chunked body that passes the cap is read and thrown away so the client can still
 * get its 413 (MHD 0.9.75 cannot answer mid-body); past this much more we hang up. */
#define DISCARD_LIMIT      (1024 * 1024)

static const char BODY_TOO_LARGE[] = "{\"error\":\"request_too_large\"}";
static const char BODY_SERVER_ERROR[] = "{\"error\":\"server_error\"}";
static const char BODY_STOPPING[] = "{\"error\":\"temporarily_unavailable\",\"error_description\":\"the server is stopping\"}";
static const char JSON_TYPE[] = "application/json; charset=utf-8";

typedef struct http_waker http_waker;

struct http_server {
    struct MHD_Daemon *d;
    http_handler handler;
    http_handler early;          /* opts.early */
    void *ctx;
    size_t max_body;
    bool tls;
    unsigned port;
    unsigned timeout_s;
    char *cert, *key; /* our copies, alive as long as the daemon */
    struct tls_holder *th;       /* HTTPS: certificates set later (http_server_set_tls); the
                                    parent's, which children share; owned if th_owner */
    bool th_owner;

    /* http_defer: a queue of parked requests and the workers that serve it, all under mu */
    unsigned max_workers;        /* 0: http_defer is off */
    size_t stack;                /* workers' stack size, 0 => default */
    pthread_mutex_t mu;
    pthread_cond_t work;         /* a request was queued, or stopping */
    pthread_cond_t quiet;        /* outstanding went down (stopping waits on it) */
    struct http_req *qhead, *qtail;
    unsigned qlen, idle, outstanding, running;
    pthread_t *workers;
    unsigned nworkers;
    bool stopping;

    /* http_wait / HTTP_STREAM_AGAIN (opts.async), all under wmu */
    bool async;
    pthread_mutex_t wmu;
    pthread_cond_t wquiet;       /* wlive went down */
    http_waker *wsusp;           /* wakers whose connection is suspended */
    unsigned wlive;              /* wakers not yet freed */
    bool wstopping;

    /* opts.event_loops: the server the caller has (the parent) holds the loops, each a server
     * of its own (a child) with a daemon that has no thread of its own, run by its loop thread */
    http_server **loops;         /* parent: nloops children */
    unsigned nloops;
    http_loop_source src;        /* parent's copy; children point at it */
    const http_loop_source *srcp;/* child: the parent's src, or NULL */
    void *src_state;             /* child: what srcp->start made (loop thread, then stopper) */
    pthread_t thread;            /* child: its loop thread */
    bool thread_ok;
    int stopfd;                  /* child: eventfd, written to wake the loop (a resume from
                                    another thread: MHD writes none without its own thread) */
    atomic_bool loop_stop;       /* child: end the loop once woken */
};

/* Certificates given after the start (http_server_set_tls), newest first. A connection takes
 * the newest when it starts (on_connection); none is freed before the server, as a session may
 * use its credentials as long as it lives. cur is read without a lock; set_mu orders writers. */
typedef struct tls_set {
    gnutls_certificate_credentials_t cred;
    struct tls_set *older;
} tls_set;
struct tls_holder {
    _Atomic(tls_set *) cur;      /* NULL: the daemon's own (opts.tls_cert_pem) */
    pthread_mutex_t set_mu;
};

struct http_waker {
    http_server *srv;
    struct MHD_Connection *conn;
    unsigned refs;               /* the request's and its stream's; under srv->wmu */
    bool suspended, pending;     /* under srv->wmu */
    atomic_bool cancelled;       /* the server is stopping: no more waiting */
    http_waker *prev, *next;     /* in srv->wsusp while suspended */
};

enum { D_NONE = 0, D_PARKED, D_DONE }; /* http_req.dstate */

typedef struct done_hook {
    void (*fn)(void *ctx);
    void *ctx;
    struct done_hook *next;
} done_hook;

/* A streamed body: the caller's callbacks and what to run after them. */
typedef struct {
    http_stream_read read;
    void (*done)(void *ctx);
    void *ctx;
    struct MHD_Connection *conn;
    unsigned timeout_s;          /* the idle timeout to restore once the body is out */
    bool ended;
    http_waker *w;               /* a reference, on async servers: HTTP_STREAM_AGAIN */
    struct http_req *req;        /* while it lives; NULL after it went */
    done_hook *hooks;            /* handed over by a http_req that went first */
} stream;

/* A streamed request body (http_req_stream_body): the pieces received and not yet read, at most
 * HTTP_BODY_WINDOW bytes, between the connection's thread (writer) and the reader's. */
struct http_body {
    pthread_mutex_t mu;          /* guards everything below but w */
    unsigned refs;               /* the request's and the reader's */
    http_waker *w;               /* the request's (a reference): wakes a connection waiting for room */
    char *buf;                   /* buf[off..len): received, not yet read */
    size_t off, len;
    bool end, failed;            /* all of the body is in / it never will be (client gone, too large) */
    bool stopped;                /* the reader wants no more: what comes is dropped */
    bool wants;                  /* the reader found nothing: on_more once something comes */
    bool room_wait;              /* the connection waits for the reader to make room */
    void (*on_more)(void *ctx);
    void *more_ctx;
};

struct http_req {
    http_server *srv;
    struct MHD_Connection *conn;
    const char *method, *path;   /* owned by MHD, alive for the request */
    char *target;                /* raw request target, from the URI log callback */
    char peer[INET6_ADDRSTRLEN];
    bool loopback;

    char *body;                  /* NULL until the first byte arrives */
    size_t body_len, body_cap;
    bool too_large;              /* body passed the cap: answer 413, skip the handler */
    bool refused;                /* opts.early answered: the body is read and dropped, then
                                    that answer goes out (the handler is skipped) */
    size_t discarded;
    size_t discard_limit;        /* too_large or refused: drop this much of the body at most */
    bool queued;                 /* a response went to MHD already */
    size_t reply_len;            /* http_reply's body length (a reply all in memory) */
    void *corked;                /* the TLS session corked for this reply (see cork_reply) */

    struct MHD_Response *resp;   /* the reply, once http_reply* ran */
    int status;
    char *hdrs;                  /* http_add_header calls made before the reply, one buffer: */
    size_t nhdrs, hlen, hcap;    /* nhdrs times "name\0value\0" in hdrs[0..hlen) */
    stream *stream;              /* a streamed reply's state, while it lives */
    done_hook *hooks;            /* http_req_on_done, in registration order */

    atomic_int dstate;           /* D_NONE, or deferred: D_PARKED until fn is done, D_DONE */
    bool parked_now;             /* http_defer parked r in this handler call (handler's thread only) */
    http_deferred dfn;
    void *darg;
    struct http_req *qnext;

    http_waker *w;               /* created by http_req_waker / http_wait / a stream */
    http_waited wfn;             /* http_wait: what to run when woken (a streamed body: once it is in) */
    void *warg;
    bool wsusp;                  /* suspended by http_wait (the server thread's) */

    http_body *bpipe;            /* a streamed body (http_req_stream_body), else NULL */
    size_t bstreamed;            /* bytes of it received so far */
    bool in_early;               /* opts.early runs: http_req_stream_body is allowed */
    bool bdone;                  /* the streamed body is all in (or failed) */
};

/* ---- listen address ---------------------------------------------------------- */

/* "1.2.3.4:80" or "[::1]:80", numeric only: a server must not depend on DNS to start. */
static bool parse_listen(const char *s, struct sockaddr_storage *ss, bool *v6,
                         char *err, size_t errlen)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *port_s;
    size_t hlen;

    if (!s || !*s) {
        snprintf(err, errlen, "no listen address");
        return false;
    }
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') goto bad;
        hlen = (size_t)(close - s - 1);
        if (hlen >= sizeof host) goto bad;
        memcpy(host, s + 1, hlen);
        port_s = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon) goto bad;
        hlen = (size_t)(colon - s);
        if (hlen >= sizeof host || memchr(s, ':', hlen)) goto bad; /* bare IPv6 needs [] */
        memcpy(host, s, hlen);
        port_s = colon + 1;
    }
    host[hlen] = '\0';

    if (!*port_s || strlen(port_s) > 5 || strspn(port_s, "0123456789") != strlen(port_s))
        goto bad;
    unsigned long port = strtoul(port_s, NULL, 10);
    if (port > 65535) goto bad;

    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (s[0] != '[' && inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        *v6 = false;
        return true;
    }
    if (s[0] == '[' && inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        *v6 = true;
        return true;
    }
bad:
    snprintf(err, errlen, "bad listen address \"%s\" (want ADDR:PORT or [V6]:PORT, numeric)", s);
    return false;
}

/* ---- per-request state -------------------------------------------------------- */

static void set_peer(http_req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;

    snprintf(r->peer, sizeof r->peer, "unknown");
    if (!sa) return;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in4->sin_addr, r->peer, sizeof r->peer);
        r->loopback = (ntohl(in4->sin_addr.s_addr) >> 24) == 127;
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, r->peer, sizeof r->peer);
        /* A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d. */
        r->loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr) ||
                      (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127);
    }
}

static void free_pending(http_req *r)
{
    free(r->hdrs);
    r->hdrs = NULL;
    r->nhdrs = r->hlen = r->hcap = 0;
}

static void run_hooks(done_hook *h)
{
    while (h) {
        done_hook *next = h->next;
        h->fn(h->ctx);
        free(h);
        h = next;
    }
}

static void waker_unref(http_waker *w);
static size_t body_take(http_req *r, const char *data, size_t n, bool *stopping);
static void body_finish(http_body *b, bool failed);
static void body_unref(http_body *b);
static bool waker_try_suspend(http_waker *w, bool *stopping);

/* A request that waits (http_wait) will not be woken: fn releases its arg (no answer). */
static void wait_cancel(http_req *r)
{
    if (!r->wfn) return;
    http_waited fn = r->wfn;
    r->wfn = NULL;
    fn(r, r->warg, true);
}

static void req_free(http_req *r)
{
    if (!r) return;
    wait_cancel(r); /* it waited when its connection closed */
    if (r->bpipe) { /* a reader still there learns the body ends short */
        body_finish(r->bpipe, true);
        body_unref(r->bpipe);
    }
    waker_unref(r->w);
    if (atomic_load(&r->dstate) != D_NONE) {
        http_server *s = r->srv;
        pthread_mutex_lock(&s->mu);
        s->outstanding--;
        pthread_cond_broadcast(&s->quiet);
        pthread_mutex_unlock(&s->mu);
    }
    if (r->resp) MHD_destroy_response(r->resp); /* may free r->stream (stream_free) */
    if (r->stream) {   /* MHD still holds the streamed response: its end runs the hooks */
        r->stream->req = NULL;
        r->stream->hooks = r->hooks;
    } else {
        run_hooks(r->hooks);
    }
    free_pending(r);
    free(r->body);
    free(r->target);
    free(r);
}

/* The raw request target, before MHD splits and decodes it; becomes *req_cls. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    (void)cls, (void)c;
    http_req *r = xcalloc(1, sizeof *r);
    r->target = xstrdup(uri ? uri : "");
    return r;
}

static void uncork_reply(struct MHD_Connection *c, void *session);

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)toe;
    http_req *r = *req_cls;
    if (r && r->corked) uncork_reply(c, r->corked);
    req_free(*req_cls);
    *req_cls = NULL;
}

/* HTTPS: one TLS record per small answer.
 * libmicrohttpd hands GnuTLS the headers and the body of an answer as two sends, so each
 * answer went out as two records in two system calls, and a client woke for each. A small
 * answer that is all in memory is sent with the session corked instead: GnuTLS gathers both
 * sends, and uncork_reply (libmicrohttpd's completion callback, called once the answer is
 * "sent" and before any close) writes them as one record. Only when nothing is waiting in
 * the socket's send queue (SIOCOUTQ 0): then the kernel takes the few KiB at once and the
 * uncork cannot find the socket full. Should it ever fail, the connection is shut down, so
 * the client sees a closed connection rather than waiting for an answer that never comes. */
enum { CORK_MAX = 8192 };

static void cork_reply(http_req *r)
{
    if (!r->srv->tls || r->stream || r->reply_len > CORK_MAX) return;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *ti =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    int queued = 1;
    if (!ci || !ti || !ti->tls_session || ioctl(ci->connect_fd, SIOCOUTQ, &queued) != 0 || queued)
        return;
    gnutls_record_cork((gnutls_session_t)ti->tls_session);
    r->corked = ti->tls_session;
}

static _Thread_local http_server *loop_self_tl; /* the child whose loop runs on this thread */

/* Event loops: a loop round's HTTPS answers leave together.
 * On loopback, every answer that reaches a sleeping client wakes it, and the woken client
 * preempts the loop, which still has the round's other requests to serve (the issuer signs
 * for ~0.2 ms each). So, as redis writes its replies just before it sleeps, a loop holds its
 * answers back with TCP_CORK and lets them go when the round ends (round_flush, before
 * epoll_wait), or earlier once the first held one has waited ROUND_HOLD_NS: a busy round
 * then wakes each client about once, and an answer never waits long for the others.
 * HTTPS only, where a small answer is one corked GnuTLS record written after libmicrohttpd's
 * own push (see cork_reply): on plain connections libmicrohttpd writes the answer itself and
 * pushes it with TCP_NODELAY, which overrides the cork. The kernel sends corked bytes on
 * close and shutdown, so a connection libmicrohttpd closes loses nothing; its descriptor
 * leaves the list when it is closed (on_connection), before the number can name another
 * socket. Thread-local: each loop holds only its own connections. */
enum { ROUND_MAX = 64 };
static const long ROUND_HOLD_NS = 2000000;
static _Thread_local struct {
    int fd[ROUND_MAX];
    unsigned n;
    struct timespec first; /* when fd[0] was corked */
} round_tl;

static void round_flush(void)
{
    static const int off = 0;
    for (unsigned i = 0; i < round_tl.n; i++)
        setsockopt(round_tl.fd[i], IPPROTO_TCP, TCP_CORK, &off, sizeof off);
    round_tl.n = 0;
}

/* fd's place in the round's list, or -1. */
static int round_find(int fd)
{
    for (unsigned i = 0; i < round_tl.n; i++)
        if (round_tl.fd[i] == fd) return (int)i;
    return -1;
}

static void round_hold(http_req *r)
{
    if (!loop_self_tl || !r->srv->tls) return;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return;
    int fd = ci->connect_fd;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (round_tl.n == ROUND_MAX ||
        (round_tl.n && (now.tv_sec - round_tl.first.tv_sec) * 1000000000L +
                               (now.tv_nsec - round_tl.first.tv_nsec) >= ROUND_HOLD_NS))
        round_flush();
    if (round_find(fd) >= 0) return;
    static const int on = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on) != 0) return;
    if (!round_tl.n) round_tl.first = now;
    round_tl.fd[round_tl.n++] = fd;
}

/* TLS 1.3: the server's Finished comes before the client's, so once the client's has arrived
 * the server has nothing to send, and the kernel delays its ACK (40 ms at least); a client
 * that leaves Nagle's algorithm on (OpenSSL's and Python's do) holds its first request back
 * until that ACK comes. nginx is not hit because OpenSSL sends session tickets right then;
 * libmicrohttpd's GnuTLS sessions send none. So the client's Finished is ACKed at once. */
static int ack_finished(gnutls_session_t session, unsigned int htype, unsigned when,
                        unsigned int incoming, const gnutls_datum_t *msg)
{
    (void)htype, (void)when, (void)msg;
    static const int on = 1;
    if (incoming) setsockopt(gnutls_transport_get_int(session), IPPROTO_TCP, TCP_QUICKACK, &on, sizeof on);
    return 0;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)socket_context;
    http_server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ti =
            s->tls ? MHD_get_connection_info(c, MHD_CONNECTION_INFO_GNUTLS_SESSION) : NULL;
        if (ti && ti->tls_session) {
            gnutls_session_t ss = (gnutls_session_t)ti->tls_session;
            gnutls_handshake_set_hook_function(ss, GNUTLS_HANDSHAKE_FINISHED, GNUTLS_HOOK_POST,
                                               ack_finished);
            tls_set *t = s->th ? atomic_load(&s->th->cur) : NULL;
            /* before the handshake: this connection shows the newest certificate */
            if (t && gnutls_credentials_set(ss, GNUTLS_CRD_CERTIFICATE, t->cred) < 0)
                log_msg(LOG_WARN, "tls_credentials", "a connection keeps the certificate it started with");
        }
        return;
    }
    if (!round_tl.n) return;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    int i = ci ? round_find(ci->connect_fd) : -1;
    if (i >= 0) round_tl.fd[i] = round_tl.fd[--round_tl.n];
}

/* The corked record goes out now. libmicrohttpd has run its own push logic already (it saw
 * only GnuTLS's buffer), and it may have left TCP_CORK on the socket: after an answer it sent
 * as headers and body apart, it keeps the socket corked and pushes with TCP_NODELAY, which
 * does nothing for bytes written after it. So unless the loop holds the socket until the round
 * ends (round_hold), the cork is taken off here; else the record waited 200 ms, the kernel's
 * limit for a corked socket. */
static void uncork_reply(struct MHD_Connection *c, void *session)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (gnutls_record_uncork((gnutls_session_t)session, 0) < 0) {
        if (ci) shutdown(ci->connect_fd, SHUT_RDWR);
        return;
    }
    static const int off = 0;
    if (ci && round_find(ci->connect_fd) < 0)
        setsockopt(ci->connect_fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off);
}

/* Queue the answer r holds (r->resp), sealed and held as every answer is (cork_reply,
 * round_hold). */
static enum MHD_Result queue_reply(http_req *r)
{
    cork_reply(r);
    round_hold(r);
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)r->status, r->resp);
    r->queued = true;
    return ret;
}

/* Queue a fixed JSON answer (413, 500) that does not come from the handler. */
static enum MHD_Result queue_static(http_req *r, unsigned status, const char *json)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(json), (void *)json, MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, JSON_TYPE);
    enum MHD_Result ret = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp); /* MHD holds its own reference once queued */
    r->queued = true;
    return ret;
}

/* Add n bytes to the body, keeping it NUL-terminated; false once over the cap. */
static bool body_append(http_req *r, const char *data, size_t n)
{
    if (n > r->srv->max_body - r->body_len) return false;
    size_t need = r->body_len + n + 1;
    if (need > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < need) cap *= 2;
        if (cap > r->srv->max_body + 1) cap = r->srv->max_body + 1;
        r->body = xrealloc(r->body, cap);
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return true;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **req_cls)
{
    http_server *s = cls;
    http_req *r = *req_cls;
    (void)version;

    if (!r || !r->conn) { /* first call: headers only */
        if (!r) r = xcalloc(1, sizeof *r); /* no URI log callback ran (should not happen) */
        r->srv = s;
        r->conn = c;
        r->method = method;
        r->path = url;
        set_peer(r);
        *req_cls = r;

        /* MHD validated Content-Length already (a bad one never reaches us). */
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        unsigned long long n = cl ? strtoull(cl, NULL, 10) : 0;
        if (n > s->max_body) {
            r->too_large = true;
            /* At once (MHD then closes) when the client waits for 100 Continue, or when the body
             * is far too big to read through; a body a little over the cap is read and dropped
             * first, so the 413 is not lost to a reset (closing with the body unread). */
            if (MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT) ||
                n > s->max_body + DISCARD_LIMIT)
                return queue_static(r, MHD_HTTP_CONTENT_TOO_LARGE, BODY_TOO_LARGE);
            r->discard_limit = s->max_body + DISCARD_LIMIT;
            return MHD_YES;
        }
        if (s->early && (n > 0 || MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING))) {
            r->in_early = true;
            s->early(r, s->ctx);
            r->in_early = false;
            if (r->resp && MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT)) {
                /* The client waits for "100 Continue" before it sends the body: answer now, and
                 * it never sends it (MHD closes the connection after this answer). */
                return queue_reply(r);
            }
            /* Else the body is on its way already: closing now, with it unread, would make the
             * kernel reset the connection and the client could lose the answer. So it is read
             * and dropped (nothing kept), and the answer follows, on a kept-alive connection. */
            if (r->resp) r->refused = true, r->discard_limit = s->max_body;
            else free_pending(r);
            if (r->bpipe && !r->refused) {
                /* A streamed body: the handler runs now and reads it as it comes. If it answers
                 * at once or does not wait for its answer, nothing will read the body: dropped. */
                s->handler(r, s->ctx);
                if (r->resp) r->refused = true, r->discard_limit = s->max_body;
                if (!r->wfn) http_body_stop(r->bpipe);
            } else if (r->bpipe) {
                http_body_stop(r->bpipe);
            }
        }
        if (n > 0 && !r->refused && !r->bpipe) { /* size the buffer once */
            r->body_cap = (size_t)n + 1;
            r->body = xmalloc(r->body_cap);
        }
        return MHD_YES;
    }

    if (r->queued) { /* defensive: MHD should not call us after a response */
        *upload_data_size = 0;
        return MHD_YES;
    }

    if (*upload_data_size) { /* a piece of the body */
        size_t n = *upload_data_size;
        if (r->bpipe && !r->too_large && !r->refused) {
            if (n <= s->max_body - r->bstreamed) {
                bool stopping = false;
                *upload_data_size = body_take(r, upload_data, n, &stopping);
                return stopping ? MHD_NO : MHD_YES; /* what is left comes again once resumed */
            }
            body_finish(r->bpipe, true); /* a chunked body past the cap: the reader sees it fail */
            r->too_large = true;
            r->discard_limit = DISCARD_LIMIT;
        }
        *upload_data_size = 0;
        if (!r->too_large && !r->refused && !body_append(r, upload_data, n)) {
            r->too_large = true; /* a chunked body past the cap */
            r->discard_limit = DISCARD_LIMIT;
            free(r->body);
            r->body = NULL;
            r->body_len = r->body_cap = 0;
        }
        if (r->too_large || r->refused) { /* dropped; past discard_limit we hang up */
            r->discarded += n;
            if (r->discarded > r->discard_limit) return MHD_NO; /* closes the connection */
        }
        return MHD_YES;
    }

    /* last call: the whole request is in */
    if (r->bpipe && !r->bdone) {
        r->bdone = true;
        body_finish(r->bpipe, r->too_large);
    }
    if (r->too_large && r->wfn) { /* a streamed body past the cap: the waiting handler gives up */
        free_pending(r);
        http_reply(r, MHD_HTTP_CONTENT_TOO_LARGE, JSON_TYPE, BODY_TOO_LARGE, strlen(BODY_TOO_LARGE));
        wait_cancel(r);
        return queue_reply(r);
    }
    if (r->too_large) return queue_static(r, MHD_HTTP_CONTENT_TOO_LARGE, BODY_TOO_LARGE);
    if (r->refused) return queue_reply(r);

    int ds = atomic_load(&r->dstate);
    if (ds == D_PARKED) return MHD_YES; /* not expected: the worker resumes only once done */
    if (ds == D_NONE) {
        if (r->wsusp) {
            r->wsusp = false; /* woken after http_wait: run its fn below */
        } else if (r->wfn) {
            /* It waited (http_wait) while its body came, and the wakes of that time may have
             * been spent resuming the body (body_take): fn runs now, as after a wake, and checks
             * for itself (and waits again, now parked, if it must). */
        } else if (!r->bpipe) {
            s->handler(r, s->ctx);
        }
        while (r->wfn && !r->wsusp && !r->parked_now) {
            http_waited fn = r->wfn;
            r->wfn = NULL;
            bool cancelled = atomic_load(&r->w->cancelled);
            if (cancelled && !r->resp) {
                free_pending(r);
                http_reply(r, 503, JSON_TYPE, BODY_STOPPING, strlen(BODY_STOPPING));
            }
            fn(r, r->warg, cancelled);
        }
        if (r->wsusp) return MHD_YES; /* waiting for http_wake */
        /* A worker has r now; it may even be done already, but the answer is queued when MHD
         * calls again after the resume, never from here. */
        if (r->parked_now) return MHD_YES;
    }
    free_pending(r); /* headers added but never followed by a reply */
    if (!r->resp) return queue_static(r, MHD_HTTP_INTERNAL_SERVER_ERROR, BODY_SERVER_ERROR);

    return queue_reply(r);
}

/* ---- server ----------------------------------------------------------------- */

/* The MHD daemon of s. reuse: SO_REUSEPORT, so that every loop can listen on the same port. */
static struct MHD_Daemon *start_daemon(http_server *s, unsigned int flags,
                                       const struct sockaddr_storage *ss, unsigned pool,
                                       size_t stack, bool reuse)
{
    /* The HTTPS options are ignored by MHD unless MHD_USE_TLS is set. */
    return MHD_start_daemon(flags, 0, NULL, NULL, on_access, s,
                            MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)ss,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                            MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL,
                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                            MHD_OPTION_CONNECTION_TIMEOUT, s->timeout_s,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY_LIMIT,
                            MHD_OPTION_THREAD_POOL_SIZE, pool, /* 0 or 1: no pool */
                            MHD_OPTION_THREAD_STACK_SIZE, stack, /* 0: default */
                            MHD_OPTION_HTTPS_MEM_KEY, s->key,
                            MHD_OPTION_HTTPS_MEM_CERT, s->cert,
                            /* TLS 1.2 and 1.3 only (RFC 8996 retired 1.0 and 1.1; GnuTLS's NORMAL
                             * still offers them), GnuTLS's usual ciphers for each. */
                            MHD_OPTION_HTTPS_PRIORITIES, "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2",
                            /* Last, and only when asked: an explicit 0 would also turn off MHD's
                             * default SO_REUSEADDR (a restarted server could not bind its port). */
                            reuse ? MHD_OPTION_LISTENING_ADDRESS_REUSE : MHD_OPTION_END, 1u,
                            MHD_OPTION_END);
}

/* Everything but the daemon (stopped before) and the loops. */
static void server_free(http_server *s)
{
    free(s->cert);
    util_free_secret(s->key);
    if (s->th && s->th_owner) {
        for (tls_set *t = atomic_load(&s->th->cur), *o; t; t = o) {
            o = t->older;
            gnutls_certificate_free_credentials(t->cred);
            free(t);
        }
        pthread_mutex_destroy(&s->th->set_mu);
        free(s->th);
    }
    free(s->workers);
    pthread_cond_destroy(&s->quiet);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->wquiet);
    pthread_mutex_destroy(&s->wmu);
    free(s);
}

/* A server's own state, copied from opts, without a daemon. */
static http_server *server_new(const http_server_opts *opts, http_handler h, void *ctx, bool tls)
{
    http_server *s = xcalloc(1, sizeof *s);
    s->handler = h;
    s->early = opts->early;
    s->ctx = ctx;
    s->max_body = opts->max_body ? opts->max_body : DEFAULT_MAX_BODY;
    s->tls = tls;
    s->timeout_s = opts->timeout_s ? opts->timeout_s : DEFAULT_TIMEOUT_S;
    s->max_workers = opts->defer_workers;
    s->stack = opts->thread_stack;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->quiet, NULL);
    if (s->max_workers) s->workers = xcalloc(s->max_workers, sizeof *s->workers);
    s->async = opts->async || opts->event_loops;
    pthread_mutex_init(&s->wmu, NULL);
    pthread_cond_init(&s->wquiet, NULL);
    s->stopfd = -1;
    if (tls) {
        s->cert = xstrdup(opts->tls_cert_pem);
        s->key = xstrdup(opts->tls_key_pem);
    }
    return s;
}

/* HTTPS: the holder of later certificates, made by the server the caller has and shared
 * with its loops. */
static void tls_holder_new(http_server *p)
{
    if (!p->tls) return;
    p->th = xcalloc(1, sizeof *p->th);
    pthread_mutex_init(&p->th->set_mu, NULL);
    p->th_owner = true;
}

bool http_server_set_tls(http_server *s, const char *cert_pem, const char *key_pem, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!s || !s->th || !cert_pem || !key_pem) {
        if (err && errlen) snprintf(err, errlen, "not an HTTPS server");
        return false;
    }
    tls_set *t = xcalloc(1, sizeof *t);
    gnutls_datum_t c = {.data = (unsigned char *)cert_pem, .size = (unsigned)strlen(cert_pem)};
    gnutls_datum_t k = {.data = (unsigned char *)key_pem, .size = (unsigned)strlen(key_pem)};
    int rc = gnutls_certificate_allocate_credentials(&t->cred);
    if (rc >= 0) rc = gnutls_certificate_set_x509_key_mem2(t->cred, &c, &k, GNUTLS_X509_FMT_PEM, NULL, 0);
    if (rc < 0) {
        if (err && errlen) snprintf(err, errlen, "bad TLS certificate or key: %s", gnutls_strerror(rc));
        if (t->cred) gnutls_certificate_free_credentials(t->cred);
        free(t);
        return false;
    }
    pthread_mutex_lock(&s->th->set_mu);
    t->older = atomic_load(&s->th->cur);
    atomic_store(&s->th->cur, t);
    pthread_mutex_unlock(&s->th->set_mu);
    return true;
}

static http_server *loops_start(http_server *p, const http_server_opts *opts,
                                struct sockaddr_storage *ss, unsigned int flags,
                                char *err, size_t errlen);

/* Every client connection, upstream connection and open file is a descriptor, and the usual
 * soft limit (1024, systemd's default for services too) is far below what a busy gateway holds:
 * past it, accept and connect fail (EMFILE). So the soft limit goes up to the hard one, as Go's
 * runtime and nginx's worker_rlimit_nofile do, but not past NOFILE_SOFT: spawned programs (MCP
 * stdio servers) inherit it, and some walk every descriptor up to the limit. Nothing here uses
 * select(), which could not take descriptors past 1023. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = rl.rlim_max < NOFILE_SOFT ? rl.rlim_max : NOFILE_SOFT;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) getrlimit(RLIMIT_NOFILE, &rl);
    }
    static atomic_bool told;
    if (rl.rlim_cur < NOFILE_LOW && !atomic_exchange(&told, true))
        log_msg(LOG_WARN, "nofile_low", "only %llu open descriptors allowed (hard limit): a few hundred "
                "connections at most; raise it (ulimit -Hn, systemd LimitNOFILE=)",
                (unsigned long long)rl.rlim_cur);
}

http_server *http_server_start(const http_server_opts *opts, http_handler h, void *ctx,
                               char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    bool v6 = false;
    char dummy[1];

    if (!err) err = dummy, errlen = sizeof dummy;
    if (!opts || !h) {
        snprintf(err, errlen, "no options or handler");
        return NULL;
    }
    if (!parse_listen(opts->listen, &ss, &v6, err, errlen)) return NULL;
    bool tls = opts->tls_cert_pem || opts->tls_key_pem;
    if (tls && !(opts->tls_cert_pem && opts->tls_key_pem)) {
        snprintf(err, errlen, "TLS needs both a certificate and a key");
        return NULL;
    }
    if ((opts->defer_workers || opts->async) && opts->thread_per_connection) {
        snprintf(err, errlen, "deferred and waiting requests need the thread pool, not thread_per_connection");
        return NULL;
    }
    if (opts->event_loops && (opts->thread_per_connection || opts->threads)) {
        snprintf(err, errlen, "event_loops are their own threads: not with threads or thread_per_connection");
        return NULL;
    }
    if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        snprintf(err, errlen, "libmicrohttpd was built without TLS");
        return NULL;
    }

    /* MHD sends with MSG_NOSIGNAL on Linux, but a peer closing under us must never
     * kill the process through another path (GnuTLS, curl, pipes): ignore SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    http_server *s = server_new(opts, h, ctx, tls);
    tls_holder_new(s);

    /* No MHD_USE_ERROR_LOG: MHD's messages can quote the URL of a request. */
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD;
    unsigned int pool = 0;
    if (opts->thread_per_connection) {
        flags |= MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL; /* epoll is not allowed here */
    } else {
        flags |= MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES ? MHD_USE_EPOLL
                                                                         : MHD_USE_POLL;
        pool = opts->threads;
        if (!pool) {
            long n = sysconf(_SC_NPROCESSORS_ONLN);
            pool = n > 0 ? (unsigned)n : 1;
        }
    }
    if (v6) flags |= MHD_USE_DUAL_STACK; /* also implies MHD_USE_IPv6 */
    if (s->max_workers || s->async) flags |= MHD_ALLOW_SUSPEND_RESUME; /* also MHD_USE_ITC: resumes wake MHD */
    if (tls) flags |= MHD_USE_TLS;

    if (opts->event_loops) return loops_start(s, opts, &ss, flags & (MHD_USE_DUAL_STACK | MHD_USE_TLS), err, errlen);

    errno = 0;
    s->d = start_daemon(s, flags, &ss, pool, opts->thread_stack, false);
    if (!s->d) {
        /* MHD logs nothing (see above); errno from bind() is usually the reason. */
        int e = errno;
        snprintf(err, errlen, "cannot serve on %s%s%s%s", opts->listen,
                 tls ? " (or bad TLS certificate/key)" : "", e ? ": " : "", e ? strerror(e) : "");
        server_free(s);
        return NULL;
    }

    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : 0;
    return s;
}

unsigned http_server_port(const http_server *s)
{
    return s ? s->port : 0;
}

static void defer_stop(http_server *s);
static void wake_stop(http_server *s);

static void loops_stop(http_server *p);

void http_server_stop(http_server *s)
{
    if (!s) return;
    if (s->loops) {
        loops_stop(s);
        return;
    }
    if (s->max_workers) defer_stop(s);
    if (s->async) wake_stop(s);
    MHD_stop_daemon(s->d); /* joins every thread, so running handlers finish first */
    server_free(s);
}

/* ---- event loops (opts.event_loops) ---------------------------------------------------------
 *
 * Each loop thread runs one child: its daemon (no thread of its own, epoll inside, listening
 * with SO_REUSEPORT on the common port, so the kernel spreads new connections over the loops)
 * and the caller's loop source (an HTTP client's sockets), both in the thread's own epoll set,
 * plus an eventfd that only stopping writes. One round: wait for any of them or the nearer
 * timer, run the source if it is due (its callbacks may resume connections), then MHD_run,
 * which serves what is ready, resumed connections included. Nothing on this path takes a lock
 * another thread holds, unless a deferred worker or a foreign http_wake is involved. */

static _Thread_local void *loop_state_tl;
static void loop_kick(http_server *s);

void *http_loop_state(void) { return loop_state_tl; }

enum { EV_MHD = 1, EV_STOP = 2, EV_SRC = 3 };

static void *loop_main(void *arg)
{
    http_server *c = arg;
    const http_loop_source *src = c->srcp;
    if (src && src->start) c->src_state = src->start(src->ctx);
    loop_state_tl = c->src_state;
    loop_self_tl = c;
    int srcfd = c->src_state && src->fd ? src->fd(c->src_state) : -1;

    int ep = epoll_create1(EPOLL_CLOEXEC);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(c->d, MHD_DAEMON_INFO_EPOLL_FD);
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u32 = EV_MHD;
    epoll_ctl(ep, EPOLL_CTL_ADD, di ? di->epoll_fd : -1, &ev);
    ev.data.u32 = EV_STOP;
    epoll_ctl(ep, EPOLL_CTL_ADD, c->stopfd, &ev);
    if (srcfd >= 0) {
        ev.data.u32 = EV_SRC;
        epoll_ctl(ep, EPOLL_CTL_ADD, srcfd, &ev);
    }
    bool stop = false;
    log_batch(true); /* this round's lines in one write, before the loop sleeps */
    while (!stop) {
        round_flush();
        log_flush();
        long wait = -1;
        MHD_UNSIGNED_LONG_LONG mt;
        if (MHD_get_timeout(c->d, &mt) == MHD_YES) wait = mt > 1000 ? 1000 : (long)mt;
        long st = c->src_state && src->timeout_ms ? src->timeout_ms(c->src_state) : -1;
        if (st >= 0 && (wait < 0 || st < wait)) wait = st;
        struct epoll_event evs[4];
        int n = epoll_wait(ep, evs, 4, (int)wait);
        bool src_ready = st == 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u32 == EV_STOP) {
                uint64_t v;
                ssize_t k = read(c->stopfd, &v, sizeof v);
                (void)k;
                stop = atomic_load(&c->loop_stop);
            }
            if (evs[i].data.u32 == EV_SRC) src_ready = true;
        }
        if (!src_ready && st > 0 && n == 0) src_ready = src->timeout_ms(c->src_state) == 0;
        if (src_ready && src->run) src->run(c->src_state);
        MHD_run(c->d);
    }
    log_batch(false);
    close(ep);
    loop_state_tl = NULL;
    loop_self_tl = NULL;
    return NULL;
}

static void child_free(http_server *c)
{
    if (!c) return;
    if (c->d) MHD_stop_daemon(c->d); /* closes what is left: streams' done callbacks run here */
    if (c->src_state && c->srcp && c->srcp->stop) c->srcp->stop(c->src_state);
    if (c->stopfd >= 0) close(c->stopfd);
    server_free(c);
}

/* SO_REUSEPORT lets any socket of the same user join a port, so a second server started on a
 * port the loops serve would quietly take a share of their connections. The port is bound once
 * without it first: a port in use is refused as it is for a server without loops. */
static bool port_in_use(const struct sockaddr_storage *ss)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false; /* the daemon's own bind says what is wrong */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* as MHD: TIME_WAIT is no user */
    socklen_t len = ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    bool used = bind(fd, (const struct sockaddr *)ss, len) != 0 && errno == EADDRINUSE;
    close(fd);
    return used;
}

static http_server *loops_start(http_server *p, const http_server_opts *opts,
                                struct sockaddr_storage *ss, unsigned int flags,
                                char *err, size_t errlen)
{
    in_port_t port = ss->ss_family == AF_INET ? ((struct sockaddr_in *)ss)->sin_port
                                              : ((struct sockaddr_in6 *)ss)->sin6_port;
    if (port && port_in_use(ss)) {
        snprintf(err, errlen, "cannot serve on %s: %s", opts->listen, strerror(EADDRINUSE));
        server_free(p);
        return NULL;
    }
    if (opts->loop_source) p->src = *opts->loop_source;
    p->nloops = opts->event_loops;
    p->loops = xcalloc(p->nloops, sizeof *p->loops);
    flags |= MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME; /* no internal thread: ours runs it */
    for (unsigned i = 0; i < p->nloops; i++) {
        http_server *c = server_new(opts, p->handler, p->ctx, p->tls);
        c->th = p->th; /* the parent's: one set of later certificates for every loop */
        p->loops[i] = c;
        c->srcp = opts->loop_source ? &p->src : NULL;
        errno = 0;
        c->d = start_daemon(c, flags, ss, 0, 0, true);
        c->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (!c->d || c->stopfd < 0) {
            int e = errno;
            snprintf(err, errlen, "cannot serve on %s%s%s%s", opts->listen,
                     p->tls ? " (or bad TLS certificate/key)" : "", e ? ": " : "", e ? strerror(e) : "");
            p->nloops = i + 1;
            loops_stop(p);
            return NULL;
        }
        if (i == 0) { /* port 0: the others take the one the first got */
            const union MHD_DaemonInfo *di = MHD_get_daemon_info(c->d, MHD_DAEMON_INFO_BIND_PORT);
            p->port = di ? di->port : 0;
            if (ss->ss_family == AF_INET) ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)p->port);
            else ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)p->port);
        }
    }
    for (unsigned i = 0; i < p->nloops; i++) {
        http_server *c = p->loops[i];
        pthread_attr_t at;
        pthread_attr_init(&at);
        if (opts->thread_stack) pthread_attr_setstacksize(&at, opts->thread_stack);
        c->thread_ok = pthread_create(&c->thread, &at, loop_main, c) == 0;
        pthread_attr_destroy(&at);
        if (!c->thread_ok) {
            snprintf(err, errlen, "cannot start the event loop threads");
            loops_stop(p);
            return NULL;
        }
    }
    return p;
}

/* Stop as one server would, every loop at once: deferred and waiting requests are answered
 * while the loops still run, then the loops end and their daemons close what is left. */
static void loops_stop(http_server *p)
{
    for (unsigned i = 0; i < p->nloops; i++) {
        http_server *c = p->loops[i];
        if (!c || !c->thread_ok) continue;
        if (c->max_workers) defer_stop(c);
        wake_stop(c);
    }
    for (unsigned i = 0; i < p->nloops; i++) {
        http_server *c = p->loops[i];
        if (!c || !c->thread_ok) continue;
        atomic_store(&c->loop_stop, true);
        loop_kick(c);
        pthread_join(c->thread, NULL);
    }
    for (unsigned i = 0; i < p->nloops; i++) child_free(p->loops[i]);
    free(p->loops);
    server_free(p);
}

/* ---- deferred requests --------------------------------------------------------- */


/* After MHD_resume_connection on s: a loop's daemon has no thread of its own to notice it, so
 * wake the loop unless this is its own thread (it runs MHD again before it sleeps). */
static void loop_kick(http_server *s)
{
    if (s->stopfd < 0 || loop_self_tl == s) return;
    uint64_t one = 1;
    ssize_t k = write(s->stopfd, &one, sizeof one);
    (void)k; /* EAGAIN: the counter is full, the loop wakes anyway */
}

/* fn is done with r (or it was cancelled): make sure there is an answer, hand r back to MHD.
 * After the resume r belongs to MHD's thread and may be gone at any moment. */
static void defer_finish(http_req *r)
{
    if (!r->resp) { /* as on_access: headers added without a reply do not go out */
        free_pending(r);
        http_reply(r, 500, JSON_TYPE, BODY_SERVER_ERROR, strlen(BODY_SERVER_ERROR));
    }
    struct MHD_Connection *c = r->conn;
    http_server *s = r->srv;
    atomic_store(&r->dstate, D_DONE);
    MHD_resume_connection(c);
    loop_kick(s);
}

static void defer_cancel(http_req *r)
{
    http_reply(r, 503, JSON_TYPE, BODY_STOPPING, strlen(BODY_STOPPING));
    r->dfn(r, r->darg, true);
}

static void *worker_main(void *arg)
{
    http_server *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->qhead && !s->stopping) {
            s->idle++;
            pthread_cond_wait(&s->work, &s->mu);
            s->idle--;
        }
        if (s->stopping) break; /* what is still queued, defer_stop cancels */
        http_req *r = s->qhead;
        s->qhead = r->qnext;
        if (!s->qhead) s->qtail = NULL;
        s->qlen--;
        s->running++;
        pthread_mutex_unlock(&s->mu);
        r->dfn(r, r->darg, false);
        defer_finish(r);
        pthread_mutex_lock(&s->mu);
        s->running--;
        pthread_cond_broadcast(&s->quiet);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* With s->mu held: one more worker if every idle one already has a request coming. */
static void maybe_add_worker(http_server *s)
{
    if (s->qlen <= s->idle || s->nworkers >= s->max_workers) return;
    pthread_attr_t at;
    pthread_attr_init(&at);
    if (s->stack) pthread_attr_setstacksize(&at, s->stack);
    if (pthread_create(&s->workers[s->nworkers], &at, worker_main, s) == 0) s->nworkers++;
    pthread_attr_destroy(&at);
    /* If no thread could be made, the queued request waits for a running worker; with no
     * worker at all it is answered 503 when the server stops. */
}

bool http_defer(http_req *r, http_deferred fn, void *arg)
{
    if (!r || !fn || r->resp || !r->srv->max_workers || atomic_load(&r->dstate) != D_NONE ||
        (r->bpipe && !r->bdone))
        return false;
    http_server *s = r->srv;
    r->dfn = fn;
    r->darg = arg;
    pthread_mutex_lock(&s->mu);
    s->outstanding++;
    if (s->stopping) {
        pthread_mutex_unlock(&s->mu);
        atomic_store(&r->dstate, D_DONE); /* answered at once: on_access queues the 503 */
        defer_cancel(r);
        return true;
    }
    atomic_store(&r->dstate, D_PARKED);
    r->parked_now = true;
    MHD_suspend_connection(r->conn); /* from the access handler, as MHD requires */
    r->qnext = NULL;
    if (s->qtail) s->qtail->qnext = r; else s->qhead = r;
    s->qtail = r;
    s->qlen++;
    maybe_add_worker(s);
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    return true;
}

#define STOP_SEND_WAIT_S 2

static void defer_stop(http_server *s)
{
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_cond_broadcast(&s->work);
    while (s->qhead) { /* not started: 503 */
        http_req *r = s->qhead;
        s->qhead = r->qnext;
        s->qlen--;
        pthread_mutex_unlock(&s->mu);
        defer_cancel(r);
        defer_finish(r);
        pthread_mutex_lock(&s->mu);
    }
    s->qtail = NULL;
    while (s->running) pthread_cond_wait(&s->quiet, &s->mu); /* running: their own timeouts */
    /* Every deferred connection is resumed now; give MHD a moment to send their answers. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += STOP_SEND_WAIT_S;
    while (s->outstanding && pthread_cond_timedwait(&s->quiet, &s->mu, &until) == 0) {}
    unsigned n = s->nworkers;
    pthread_mutex_unlock(&s->mu);
    for (unsigned i = 0; i < n; i++) pthread_join(s->workers[i], NULL);
}

/* ---- waiting without a thread (opts.async) ------------------------------------------- */

static http_waker *waker_of(http_req *r)
{
    if (!r->srv->async) return NULL;
    if (!r->w) {
        http_waker *w = xcalloc(1, sizeof *w);
        w->srv = r->srv;
        w->conn = r->conn;
        w->refs = 1;
        atomic_init(&w->cancelled, false);
        pthread_mutex_lock(&r->srv->wmu);
        r->srv->wlive++;
        pthread_mutex_unlock(&r->srv->wmu);
        r->w = w;
    }
    return r->w;
}

static void waker_unref(http_waker *w)
{
    if (!w) return;
    http_server *s = w->srv;
    pthread_mutex_lock(&s->wmu);
    bool last = --w->refs == 0;
    if (last) {
        s->wlive--;
        pthread_cond_broadcast(&s->wquiet);
    }
    pthread_mutex_unlock(&s->wmu);
    if (last) free(w);
}

/* With wmu held, from on_access or the content reader (where MHD allows it). */
static void waker_suspend(http_waker *w)
{
    http_server *s = w->srv;
    w->suspended = true;
    w->prev = NULL;
    w->next = s->wsusp;
    if (s->wsusp) s->wsusp->prev = w;
    s->wsusp = w;
    MHD_suspend_connection(w->conn);
}

/* With wmu held. */
static void waker_resume(http_waker *w)
{
    http_server *s = w->srv;
    if (w->prev) w->prev->next = w->next; else s->wsusp = w->next;
    if (w->next) w->next->prev = w->prev;
    w->prev = w->next = NULL;
    w->suspended = false;
    MHD_resume_connection(w->conn);
    loop_kick(s);
}

/* With wmu held: false if the connection may not wait now (a wake came in between, or the
 * server is stopping: *stopping says which); otherwise it is suspended. */
static bool waker_try_suspend(http_waker *w, bool *stopping)
{
    *stopping = w->srv->wstopping;
    if (*stopping) return false;
    if (w->pending) {
        w->pending = false;
        return false;
    }
    waker_suspend(w);
    return true;
}

http_waker *http_req_waker(http_req *r)
{
    return r ? waker_of(r) : NULL;
}

void http_wake(http_waker *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->srv->wmu);
    if (w->suspended) waker_resume(w);
    else w->pending = true;
    pthread_mutex_unlock(&w->srv->wmu);
}

bool http_wait(http_req *r, http_waited fn, void *arg)
{
    if (!r || !fn || r->resp || r->wfn || atomic_load(&r->dstate) != D_NONE) return false;
    http_waker *w = waker_of(r);
    if (!w) return false;
    if (r->bpipe && !r->bdone) { /* the body still comes: the connection must go on reading it */
        r->wfn = fn; /* not parked: on_access runs fn once the body is in */
        r->warg = arg;
        return true;
    }
    bool stopping;
    pthread_mutex_lock(&r->srv->wmu);
    bool suspended = waker_try_suspend(w, &stopping);
    pthread_mutex_unlock(&r->srv->wmu);
    if (stopping) return false;
    r->wfn = fn;
    r->warg = arg;
    r->wsusp = suspended; /* else woken already: on_access runs fn right after this call */
    return true;
}

/* Resume every waiting connection for good, then give their answers a moment to go out. */
static void wake_stop(http_server *s)
{
    pthread_mutex_lock(&s->wmu);
    s->wstopping = true;
    while (s->wsusp) {
        atomic_store(&s->wsusp->cancelled, true);
        waker_resume(s->wsusp);
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += STOP_SEND_WAIT_S;
    while (s->wlive && pthread_cond_timedwait(&s->wquiet, &s->wmu, &until) == 0) {}
    pthread_mutex_unlock(&s->wmu);
}

/* ---- request accessors -------------------------------------------------------- */

/* ---- streamed request bodies (http_req_stream_body) ------------------------------------ */

bool http_req_stream_body(http_req *r)
{
    if (!r || !r->in_early || r->bpipe || r->resp || r->too_large) return false;
    http_waker *w = waker_of(r);
    if (!w) return false; /* not an async server */
    http_body *b = xcalloc(1, sizeof *b);
    pthread_mutex_init(&b->mu, NULL);
    b->refs = 1;
    b->buf = xmalloc(HTTP_BODY_WINDOW);
    pthread_mutex_lock(&r->srv->wmu);
    w->refs++;
    pthread_mutex_unlock(&r->srv->wmu);
    b->w = w;
    r->bpipe = b;
    return true;
}

bool http_req_body_streamed(const http_req *r) { return r && r->bpipe; }

http_body *http_req_body_reader(http_req *r)
{
    if (!r || !r->bpipe) return NULL;
    pthread_mutex_lock(&r->bpipe->mu);
    r->bpipe->refs++;
    pthread_mutex_unlock(&r->bpipe->mu);
    return r->bpipe;
}

/* With b->mu held: what to call for a reader that waits for more (called after unlocking). */
static void (*more_fn(http_body *b, void **ctx))(void *)
{
    if (!b->wants || !b->on_more) return NULL;
    b->wants = false;
    *ctx = b->more_ctx;
    return b->on_more;
}

/* The connection's thread: as much of data[0..n) as fits goes to the reader (all of it is
 * dropped if the reader stopped); what does not fit waits, with the connection suspended,
 * until the reader makes room. Returns what is left (MHD hands it over again once resumed);
 * *stopping if the server stops meanwhile (the connection is then closed). */
static size_t body_take(http_req *r, const char *data, size_t n, bool *stopping)
{
    http_body *b = r->bpipe;
    for (;;) {
        pthread_mutex_lock(&b->mu);
        size_t k = n;
        if (!b->stopped && !b->failed) {
            if (b->off && b->len + n > HTTP_BODY_WINDOW) { /* room at the front first */
                memmove(b->buf, b->buf + b->off, b->len - b->off);
                b->len -= b->off;
                b->off = 0;
            }
            if (k > HTTP_BODY_WINDOW - b->len) k = HTTP_BODY_WINDOW - b->len;
            memcpy(b->buf + b->len, data, k);
            b->len += k;
            b->room_wait = k < n;
        }
        void *ctx = NULL, (*more)(void *) = k ? more_fn(b, &ctx) : NULL;
        pthread_mutex_unlock(&b->mu);
        r->bstreamed += k;
        data += k;
        n -= k;
        if (more) more(ctx);
        if (!n) return 0;
        /* Full. The reader's wake (room made) may have come already: then try again. */
        pthread_mutex_lock(&r->srv->wmu);
        bool suspended = waker_try_suspend(r->w, stopping);
        pthread_mutex_unlock(&r->srv->wmu);
        if (suspended || *stopping) return n;
    }
}

/* The body is all in, or (failed) will never be. */
static void body_finish(http_body *b, bool failed)
{
    pthread_mutex_lock(&b->mu);
    if (!b->end && !b->failed) {
        if (failed) b->failed = true; else b->end = true;
    }
    b->wants = b->wants || failed; /* a failure is news even to a reader that did not ask */
    void *ctx = NULL, (*more)(void *) = more_fn(b, &ctx);
    pthread_mutex_unlock(&b->mu);
    if (more) more(ctx);
}

/* The reader wants no more: what is held and what still comes is dropped, and a connection
 * waiting for room goes on. */
void http_body_stop(http_body *b)
{
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->stopped = true;
    b->off = b->len = 0;
    bool wake = b->room_wait;
    b->room_wait = false;
    pthread_mutex_unlock(&b->mu);
    if (wake) http_wake(b->w);
}

static void body_unref(http_body *b)
{
    pthread_mutex_lock(&b->mu);
    bool last = --b->refs == 0;
    pthread_mutex_unlock(&b->mu);
    if (!last) return;
    waker_unref(b->w);
    pthread_mutex_destroy(&b->mu);
    free(b->buf);
    free(b);
}

long http_body_read(http_body *b, char *buf, size_t max)
{
    if (!b || !buf || !max) return -1;
    long n;
    bool wake = false;
    pthread_mutex_lock(&b->mu);
    if (b->off < b->len && !b->stopped) {
        size_t k = b->len - b->off < max ? b->len - b->off : max;
        memcpy(buf, b->buf + b->off, k);
        b->off += k;
        if (b->off == b->len) b->off = b->len = 0;
        n = (long)k;
        if (b->room_wait && b->len - b->off <= HTTP_BODY_WINDOW / 2) { /* the connection goes on */
            b->room_wait = false;
            wake = true;
        }
    } else if (b->end) {
        n = 0;
    } else if (b->failed || b->stopped) {
        n = -1;
    } else {
        b->wants = true;
        n = HTTP_STREAM_AGAIN;
    }
    pthread_mutex_unlock(&b->mu);
    if (wake) http_wake(b->w);
    return n;
}

void http_body_on_more(http_body *b, void (*fn)(void *ctx), void *ctx)
{
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->on_more = fn;
    b->more_ctx = ctx;
    /* a reader that found nothing before fn was set must not miss what came since */
    bool news = b->wants && (b->len > b->off || b->end || b->failed);
    void *mctx = NULL, (*more)(void *) = news ? more_fn(b, &mctx) : NULL;
    pthread_mutex_unlock(&b->mu);
    if (more) more(mctx);
}

void http_body_release(http_body *b)
{
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->on_more = NULL;
    b->more_ctx = NULL;
    pthread_mutex_unlock(&b->mu);
    http_body_stop(b);
    body_unref(b);
}

const char *http_req_method(const http_req *r) { return r->method; }
const char *http_req_path(const http_req *r) { return r->path; }

typedef struct {
    const char *name, *value;
    bool found;
} query_find;

static enum MHD_Result find_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    query_find *q = cls;
    (void)kind;
    if (strcmp(key, q->name) != 0) return MHD_YES;
    q->value = value;
    q->found = true;
    return MHD_NO; /* first one wins */
}

/* MHD's own lookup ignores case for every kind, but query names are case-sensitive.
 * "?flag" (no '=') gives "" here so that presence can be told from absence. */
const char *http_req_query(const http_req *r, const char *name)
{
    query_find q = { .name = name };
    if (!name) return NULL;
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, find_arg, &q);
    return q.found ? (q.value ? q.value : "") : NULL;
}

typedef struct {
    void (*cb)(void *ctx, const char *name, const char *value);
    void *ctx;
} query_visit;

static enum MHD_Result visit_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    query_visit *v = cls;
    (void)kind;
    v->cb(v->ctx, key, value);
    return MHD_YES;
}

void http_req_query_each(const http_req *r,
                         void (*cb)(void *ctx, const char *name, const char *value), void *ctx)
{
    query_visit v = { cb, ctx };
    if (cb) MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, visit_arg, &v);
}

const char *http_req_header(const http_req *r, const char *name)
{
    return name ? MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name) : NULL;
}

typedef struct {
    void (*cb)(void *ctx, const char *name, const char *value);
    void *ctx;
} header_visit;

static enum MHD_Result visit_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    header_visit *v = cls;
    (void)kind;
    v->cb(v->ctx, key, value ? value : "");
    return MHD_YES;
}

void http_req_header_each(const http_req *r,
                          void (*cb)(void *ctx, const char *name, const char *value), void *ctx)
{
    header_visit v = { cb, ctx };
    if (cb) MHD_get_connection_values(r->conn, MHD_HEADER_KIND, visit_header, &v);
}

const char *http_req_target(const http_req *r)
{
    return r->target ? r->target : r->path;
}

const char *http_req_body(const http_req *r, size_t *len)
{
    if (len) *len = r->body_len;
    return r->body && r->body_len ? r->body : "";
}

const char *http_req_peer(const http_req *r) { return r->peer; }
bool http_req_peer_is_loopback(const http_req *r) { return r->loopback; }
bool http_req_is_tls(const http_req *r) { return r->srv->tls; }

/* ---- replies --------------------------------------------------------------------- */

void http_add_header(http_req *r, const char *name, const char *value)
{
    if (!r || !name || !value) return;
    if (r->resp) { /* after the reply: still goes out, the response is not queued yet */
        MHD_add_response_header(r->resp, name, value);
        return;
    }
    /* one buffer for all of them: a proxied answer forwards several, an allocation each
     * would cost more than the copy */
    size_t nl = strlen(name) + 1, vl = strlen(value) + 1;
    if (r->hlen + nl + vl > r->hcap) {
        size_t c = r->hcap ? r->hcap : 512;
        while (c < r->hlen + nl + vl) c *= 2;
        r->hdrs = xrealloc(r->hdrs, c);
        r->hcap = c;
    }
    memcpy(r->hdrs + r->hlen, name, nl);
    memcpy(r->hdrs + r->hlen + nl, value, vl);
    r->hlen += nl + vl;
    r->nhdrs++;
}

/* Make resp the reply: content type, pending headers, status. */
static void set_reply(http_req *r, struct MHD_Response *resp, int status, const char *content_type)
{
    if (content_type) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    /* MHD refuses names/values with CR or LF, so a handler cannot split the response. */
    const char *h = r->hdrs;
    for (size_t i = 0; i < r->nhdrs; i++) {
        const char *v = h + strlen(h) + 1;
        MHD_add_response_header(resp, h, v);
        h = v + strlen(v) + 1;
    }
    free_pending(r);
    r->resp = resp;
    /* 1xx would leave the exchange unfinished and MHD rejects odd codes: keep it sane. */
    r->status = status >= 200 && status <= 599 ? status : 500;
}

void http_reply(http_req *r, int status, const char *content_type, const char *body, size_t len)
{
    if (!r || r->resp) return; /* exactly one reply: later ones are ignored */
    if (!body) len = 0;
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, (void *)(body ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!resp) return; /* out of memory: on_access answers 500 */
    set_reply(r, resp, status, content_type);
    r->reply_len = len;
}

/* The stream is finished with: the body ended or failed, or the client went away. While it
 * is being sent the idle timeout is off (a reader may wait long for its next piece, e.g. an
 * LLM's next token); it comes back for the rest of a kept-alive connection. */
static void stream_end(stream *st)
{
    if (st->ended) return;
    st->ended = true;
    MHD_set_connection_option(st->conn, MHD_CONNECTION_OPTION_TIMEOUT, st->timeout_s);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    stream *st = cls;
    (void)pos;
    if (st->ended) return MHD_CONTENT_READER_END_OF_STREAM;
    long n;
    for (;;) {
        if (st->w && atomic_load(&st->w->cancelled)) { /* the server is stopping */
            n = -1;
            break;
        }
        n = st->read(st->ctx, buf, max);
        if (n != HTTP_STREAM_AGAIN) break;
        if (!st->w) { /* not an async server: nothing would ever wake it */
            n = -1;
            break;
        }
        bool stopping;
        pthread_mutex_lock(&st->w->srv->wmu);
        bool suspended = waker_try_suspend(st->w, &stopping);
        pthread_mutex_unlock(&st->w->srv->wmu);
        if (suspended) return 0; /* MHD calls again once http_wake resumed the connection */
        if (stopping) {
            n = -1;
            break;
        }
        /* a wake came in between: read again */
    }
    if (n > 0) return (ssize_t)(n < (long)max ? n : (long)max);
    stream_end(st);
    return n == 0 ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
}

static void stream_free(void *cls)
{
    stream *st = cls;
    if (st->done) st->done(st->ctx);
    if (st->req) st->req->stream = NULL; /* the http_req runs its own hooks */
    run_hooks(st->hooks);
    waker_unref(st->w);
    free(st);
}

/* MHD calls the reader with a buffer of at most this much (one chunk on the wire). */
#define STREAM_BLOCK (16 * 1024)

void http_reply_stream(http_req *r, int status, const char *content_type, http_stream_read read,
                       void *ctx, void (*done)(void *ctx))
{
    if (!r || r->resp || !read) { /* ignored reply: still release what it owns */
        if (done) done(ctx);
        return;
    }
    stream *st = xcalloc(1, sizeof *st);
    st->read = read;
    st->done = done;
    st->ctx = ctx;
    st->conn = r->conn;
    st->timeout_s = r->srv->timeout_s;
    st->req = r;
    st->w = waker_of(r);
    if (st->w) {
        pthread_mutex_lock(&r->srv->wmu);
        st->w->refs++;
        pthread_mutex_unlock(&r->srv->wmu);
    }
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_read, st, stream_free);
    if (!resp) { /* out of memory: on_access answers 500 */
        stream_free(st);
        return;
    }
    r->stream = st;
    MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    set_reply(r, resp, status, content_type);
}

void http_req_on_done(http_req *r, void (*fn)(void *ctx), void *ctx)
{
    if (!r || !fn) return;
    done_hook *h = xcalloc(1, sizeof *h), **p = &r->hooks;
    h->fn = fn;
    h->ctx = ctx;
    while (*p) p = &(*p)->next;
    *p = h;
}

void http_reply_text(http_req *r, int status, const char *text)
{
    http_reply(r, status, "text/plain; charset=utf-8", text, text ? strlen(text) : 0);
}

void http_reply_json_type(http_req *r, int status, const char *content_type, json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!s) { /* nothing to send or not serialisable: a bug in the caller */
        http_reply(r, 500, JSON_TYPE, BODY_SERVER_ERROR, strlen(BODY_SERVER_ERROR));
        return;
    }
    http_reply(r, status, content_type ? content_type : JSON_TYPE, s, strlen(s));
    free(s);
}

void http_reply_json(http_req *r, int status, json_t *obj)
{
    http_reply_json_type(r, status, JSON_TYPE, obj);
}

bool http_replied(const http_req *r) { return r && r->resp; }
int http_reply_status(const http_req *r) { return r && r->resp ? r->status : 0; }
