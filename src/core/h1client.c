/* h1client — see h1client.h.
 *
 * A connection is in the loop's epoll set from its connect to its close, watched for EPOLLOUT
 * while it connects or has request bytes left to send, for EPOLLIN otherwise (idle ones too:
 * an idle connection that becomes readable was closed by its server, or is talking out of
 * turn, and is dropped). So a request on a kept connection costs one send and, for a small
 * answer, one recv: no epoll_ctl, no poll. A held exchange (its reader is behind) takes its
 * connection out of the set until h1_resume, since a level-triggered hang-up would otherwise
 * be reported on every wait.
 * Connections are freed after the batch of events they were closed in (h1_pool_run), so an
 * event later in the same batch never names freed memory.
 */
#include "core/h1client.h"
#include "core/resolve.h"
#include "core/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK      16384
#define READS_PER_EVENT 4       /* full reads in a row before the loop's other work goes first */

typedef struct conn conn;
typedef struct dest dest;

struct dest {                   /* one destination and its idle connections, newest first */
    struct sockaddr_storage addr[H1_MAX_ADDRS];
    socklen_t addr_len[H1_MAX_ADDRS];
    size_t n_addrs, good;       /* good: the address the last new connection went to */
    conn *idle_head, *idle_tail;
    size_t n_idle;
};

struct conn {
    int fd;                     /* -1 once closed (then on P->dead until freed) */
    dest *d;
    h1_xfer *x;                 /* the exchange on it; NULL while idle */
    conn *prev, *next;          /* in d's idle list, or P->dead */
    int64_t idle_since;
    uint32_t events;            /* what epoll watches; meaningful while in_set */
    bool in_set, connecting, reused;
    size_t addr_i;              /* which of d's addresses */
    char *hbuf;                 /* the answer's header block as it comes (kept for the next) */
    size_t hlen, hcap;
};

struct h1_xfer {
    h1_pool *P;
    dest *d;
    conn *c;                    /* while running */
    h1_events ev;
    void *ctx;
    http_parser parser;
    int64_t deadline;           /* monotonic ms; -1: none */
    int64_t due;                /* the nearer of deadline and the connect bound; -1: none */
    h1_xfer *tprev, *tnext;     /* in P's list by due, soonest first, while due >= 0 */
    h1_xfer *qnext;             /* in P's queue of requests to send */
    bool queued, done, held, answered, resent, head_only, interim, complete, keep,
         too_large, headed;     /* headed: head told; header lines after it are trailers */
    int hstate;                 /* header parsing: 0 none yet, 1 in a name, 2 in a value */
    size_t attempts;            /* addresses tried for the connection it waits for */
    size_t out_len, out_off;
    char out[];                 /* the request as it goes out */
};

struct h1_pool {
    int ep;
    dest **dests;
    size_t n_dests;
    h1_xfer *qhead, *qtail;     /* to send at the next run */
    h1_xfer *thead, *ttail;     /* with a due time */
    conn *dead;                 /* closed, freed at the next run */
    size_t in_flight, peak, opened, idle;
};

/* ---- targets -------------------------------------------------------------------------------- */

bool h1_target_parse(const char *url, h1_target *t)
{
    if (!url || strncmp(url, "http://", 7) != 0) return false;
    const char *h = url + 7, *end = h + strcspn(h, "/?#");
    char host[256];
    const char *hend, *port = NULL;
    bool v6 = *h == '[';
    if (v6) {
        hend = memchr(h, ']', (size_t)(end - h));
        if (!hend) return false;
        h++;
        if (hend + 1 < end) {
            if (hend[1] != ':') return false;
            port = hend + 2;
        }
    } else {
        hend = memchr(h, ':', (size_t)(end - h));
        if (hend) port = hend + 1;
        else hend = end;
    }
    if (hend - h <= 0 || (size_t)(hend - h) >= sizeof host) return false;
    memcpy(host, h, (size_t)(hend - h));
    host[hend - h] = '\0';
    if (!v6 && host[strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")])
        return false; /* userinfo, percent-encoding, ...: libcurl's */
    unsigned long p = 80;
    if (port) {
        if (port == end || end - port > 5) return false;
        p = 0;
        for (const char *c = port; c < end; c++) {
            if (*c < '0' || *c > '9') return false;
            p = p * 10 + (unsigned long)(*c - '0');
        }
        if (p == 0 || p > 65535) return false;
    }
    if (v6) { /* a literal, nothing else, between brackets */
        struct in6_addr a;
        if (inet_pton(AF_INET6, host, &a) != 1) return false;
    }
    t->n_addrs = resolve_cached(host, (unsigned)p, t->addr, t->addr_len, H1_MAX_ADDRS);
    if (!t->n_addrs) return false;
    const char *hb = v6 ? "[" : "", *he = v6 ? "]" : "";
    if (p == 80) snprintf(t->authority, sizeof t->authority, "%s%s%s", hb, host, he);
    else snprintf(t->authority, sizeof t->authority, "%s%s%s:%lu", hb, host, he, p);
    t->target = end;
    t->target_len = strcspn(end, "#");
    return true;
}

/* ---- connections ---------------------------------------------------------------------------- */

static void set_events(h1_pool *P, conn *c, uint32_t events)
{
    if (c->in_set && c->events == events) return;
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)(uintptr_t)c | 1u};
    if (epoll_ctl(P->ep, c->in_set ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) == 0) {
        c->in_set = true;
        c->events = events;
    }
}

static void leave_set(h1_pool *P, conn *c)
{
    if (c->in_set) epoll_ctl(P->ep, EPOLL_CTL_DEL, c->fd, NULL);
    c->in_set = false;
}

static void idle_unlink(h1_pool *P, conn *c)
{
    dest *d = c->d;
    if (c->prev) c->prev->next = c->next; else d->idle_head = c->next;
    if (c->next) c->next->prev = c->prev; else d->idle_tail = c->prev;
    c->prev = c->next = NULL;
    d->n_idle--;
    P->idle--;
}

/* Close c (it leaves the epoll set with its descriptor) and free it after this batch. */
static void conn_close(h1_pool *P, conn *c)
{
    if (!c->x) idle_unlink(P, c);
    c->x = NULL;
    close(c->fd);
    c->fd = -1;
    c->in_set = false;
    c->next = P->dead;
    P->dead = c;
}

/* An exchange ended cleanly on c and the server keeps it open: keep it for the next. */
static void conn_idle(h1_pool *P, conn *c)
{
    dest *d = c->d;
    c->x = NULL;
    c->reused = true;
    c->idle_since = util_mono_ms();
    set_events(P, c, EPOLLIN); /* back in the set if a hold had taken it out */
    c->prev = NULL;
    c->next = d->idle_head;
    if (d->idle_head) d->idle_head->prev = c; else d->idle_tail = c;
    d->idle_head = c;
    d->n_idle++;
    P->idle++;
    size_t cap = 2 * P->peak > H1_IDLE_MIN ? 2 * P->peak : H1_IDLE_MIN;
    while (d->n_idle > cap) conn_close(P, d->idle_tail);
}

/* ---- exchanges ------------------------------------------------------------------------------ */

static void timer_unlink(h1_pool *P, h1_xfer *x)
{
    if (x->due < 0) return;
    if (x->tprev) x->tprev->tnext = x->tnext; else P->thead = x->tnext;
    if (x->tnext) x->tnext->tprev = x->tprev; else P->ttail = x->tprev;
    x->tprev = x->tnext = NULL;
    x->due = -1;
}

/* x's due time: its deadline, or sooner the end of the connect bound while it connects. Most
 * exchanges of a loop share a timeout, so a new one goes at (or near) the tail. */
static void timer_set(h1_pool *P, h1_xfer *x, int64_t connect_until)
{
    timer_unlink(P, x);
    int64_t due = x->deadline;
    if (connect_until >= 0 && (due < 0 || connect_until < due)) due = connect_until;
    if (due < 0) return;
    x->due = due;
    h1_xfer *after = P->ttail;
    while (after && after->due > due) after = after->tprev;
    x->tprev = after;
    x->tnext = after ? after->tnext : P->thead;
    if (x->tnext) x->tnext->tprev = x; else P->ttail = x;
    if (after) after->tnext = x; else P->thead = x;
}

/* The end of x: its connection kept (keep) or closed, then the caller told. */
static void finish(h1_xfer *x, h1_result r, bool keep)
{
    h1_pool *P = x->P;
    x->done = true;
    timer_unlink(P, x);
    conn *c = x->c;
    x->c = NULL;
    if (c) {
        if (keep && r == H1_OK) conn_idle(P, c);
        else conn_close(P, c);
    }
    P->in_flight--;
    x->ev.end(x->ctx, r);
}

static int on_message_begin(http_parser *p)
{
    h1_xfer *x = p->data;
    x->c->hlen = 0;
    x->hstate = 0;
    return 0;
}

/* Append to the header block; false once it would pass the bound. */
static bool hput(h1_xfer *x, const char *s, size_t n)
{
    conn *c = x->c;
    if (c->hlen + n > H1_MAX_HEADERS) {
        x->too_large = true;
        return false;
    }
    util_buf_add(&c->hbuf, &c->hlen, &c->hcap, s, n);
    return true;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    h1_xfer *x = p->data;
    if (x->headed) return 0; /* a chunked body's trailer: not passed on */
    if (x->hstate == 2 && !hput(x, "\r\n", 2)) return 1;
    x->hstate = 1;
    return hput(x, at, n) ? 0 : 1;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    h1_xfer *x = p->data;
    if (x->headed) return 0;
    if (x->hstate == 1 && !hput(x, ": ", 2)) return 1;
    x->hstate = 2;
    return hput(x, at, n) ? 0 : 1;
}

static int on_headers_complete(http_parser *p)
{
    h1_xfer *x = p->data;
    if (x->hstate == 2 && !hput(x, "\r\n", 2)) return -1;
    if (!x->c->hbuf && !hput(x, "", 0)) return -1;
    if (p->status_code / 100 == 1 && p->status_code != 101) { /* interim: the final one follows */
        x->interim = true;
        return 0;
    }
    if (p->upgrade) return 0; /* refused after the run (H1_PROTOCOL) */
    x->headed = true;
    x->ev.head(x->ctx, (long)p->status_code, x->c->hbuf, x->c->hlen);
    return x->head_only ? 1 : 0; /* 1: no body follows (the answer to HEAD) */
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    h1_xfer *x = p->data;
    if (!x->ev.body(x->ctx, at, n)) x->held = true;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    h1_xfer *x = p->data;
    if (x->interim) { /* the final answer is next */
        x->interim = false;
        return 0;
    }
    x->complete = true;
    x->keep = http_should_keep_alive(p) != 0;
    http_parser_pause(p, 1); /* anything after it is not an answer we asked for */
    return 0;
}

static const http_parser_settings parse = {
    .on_message_begin = on_message_begin,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void send_on(h1_xfer *x, conn *c);
static void open_for(h1_xfer *x);
static void read_on(h1_xfer *x, conn *c);

/* Start x over on a new connection: its kept one was closed by the server before any answer. */
static void resend(h1_xfer *x)
{
    conn_close(x->P, x->c);
    x->c = NULL;
    x->resent = true;
    x->out_off = 0;
    x->attempts = 0;
    open_for(x);
}

/* The connection closed (err 0) or failed (errno err) while x was on it. */
static void conn_gone(h1_xfer *x, int err)
{
    if (!x->answered && x->c->reused && !x->resent) {
        resend(x);
        return;
    }
    if (!err && x->answered) { /* an answer whose body runs to the close ends here */
        http_parser_execute(&x->parser, &parse, NULL, 0);
        if (x->complete) {
            finish(x, H1_OK, false);
            return;
        }
    }
    finish(x, x->answered ? H1_RECV : H1_NOTHING, false);
}

/* Bytes of the answer, to the parser. */
static void feed(h1_xfer *x, const char *data, size_t n)
{
    x->answered = true;
    size_t k = http_parser_execute(&x->parser, &parse, data, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&x->parser);
    if (x->too_large || e == HPE_HEADER_OVERFLOW) finish(x, H1_TOO_LARGE, false);
    else if (x->complete) /* kept only if nothing else came, nor is still to go: an answer */
        finish(x, H1_OK, x->keep && k == n && x->out_off == x->out_len); /* before the whole body */
    else if (e != HPE_OK || x->parser.upgrade) finish(x, H1_PROTOCOL, false);
}

static void read_on(h1_xfer *x, conn *c)
{
    char buf[READ_CHUNK];
    for (int i = 0; i < READS_PER_EVENT; i++) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) {
            feed(x, buf, (size_t)n);
            if (x->done) return;
            if (x->held) {
                leave_set(x->P, c);
                return;
            }
            if ((size_t)n < sizeof buf) return; /* likely all there was; epoll says if not */
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        } else {
            conn_gone(x, n < 0 ? errno : 0);
            return;
        }
    }
}

static void send_on(h1_xfer *x, conn *c)
{
    while (x->out_off < x->out_len) {
        ssize_t n = send(c->fd, x->out + x->out_off, x->out_len - x->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            x->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            set_events(x->P, c, EPOLLIN | EPOLLOUT);
            return;
        } else if (!x->answered && c->reused && !x->resent) {
            resend(x);
            return;
        } else { /* the server may have answered already, refusing the rest of the body */
            read_on(x, c);
            if (!x->done && x->c == c) finish(x, x->answered ? H1_RECV : H1_SEND, false);
            return;
        }
    }
    if (!x->held) set_events(x->P, c, EPOLLIN);
}

static bool same_addrs(const dest *d, const h1_target *t)
{
    if (d->n_addrs != t->n_addrs) return false;
    for (size_t i = 0; i < t->n_addrs; i++)
        if (d->addr_len[i] != t->addr_len[i] || memcmp(&d->addr[i], &t->addr[i], t->addr_len[i])) return false;
    return true;
}

/* The destination of t's addresses (a name that resolves otherwise later is another one). */
static dest *dest_for(h1_pool *P, const h1_target *t)
{
    for (size_t i = 0; i < P->n_dests; i++)
        if (same_addrs(P->dests[i], t)) return P->dests[i];
    dest *d = xcalloc(1, sizeof *d);
    d->n_addrs = t->n_addrs < H1_MAX_ADDRS ? t->n_addrs : H1_MAX_ADDRS;
    memcpy(d->addr, t->addr, d->n_addrs * sizeof d->addr[0]);
    memcpy(d->addr_len, t->addr_len, d->n_addrs * sizeof d->addr_len[0]);
    P->dests = xrealloc(P->dests, (P->n_dests + 1) * sizeof *P->dests);
    P->dests[P->n_dests++] = d;
    return d;
}

/* Connecting failed: the next address, if one is left untried, else the end. */
static void connect_failed(h1_xfer *x)
{
    if (x->c) {
        conn_close(x->P, x->c);
        x->c = NULL;
    }
    if (++x->attempts < x->d->n_addrs) open_for(x);
    else finish(x, H1_CONNECT, false);
}

/* A new connection for x (it sends once connected), to the address that took the last one
 * (x->attempts further on after a failure). */
static void open_for(h1_xfer *x)
{
    h1_pool *P = x->P;
    dest *d = x->d;
    size_t i = (d->good + x->attempts) % d->n_addrs;
    int fd = socket(d->addr[i].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        connect_failed(x);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = connect(fd, (const struct sockaddr *)&d->addr[i], d->addr_len[i]);
    if (rc != 0 && errno != EINPROGRESS) {
        close(fd);
        connect_failed(x);
        return;
    }
    conn *c = xcalloc(1, sizeof *c);
    c->fd = fd;
    c->d = d;
    c->addr_i = i;
    c->x = x;
    x->c = c;
    P->opened++;
    http_parser_init(&x->parser, HTTP_RESPONSE);
    x->parser.data = x;
    if (rc != 0) {
        c->connecting = true;
        set_events(P, c, EPOLLOUT);
        int64_t left = x->deadline < 0 ? H1_CONNECT_MS : x->deadline - util_mono_ms();
        timer_set(P, x, util_mono_ms() + (left < H1_CONNECT_MS ? left : H1_CONNECT_MS));
        if (!c->in_set) connect_failed(x);
        return;
    }
    d->good = i;
    send_on(x, c);
}

/* x's turn: on a kept connection to its destination if there is one, else a new one. */
static void begin(h1_xfer *x)
{
    h1_pool *P = x->P;
    if (++P->in_flight > P->peak) P->peak = P->in_flight;
    timer_set(P, x, -1);
    conn *c = x->d->idle_head;
    if (!c) {
        open_for(x);
        return;
    }
    idle_unlink(P, c);
    c->x = x;
    x->c = c;
    http_parser_init(&x->parser, HTTP_RESPONSE);
    x->parser.data = x;
    send_on(x, c);
}

/* The request's bytes into out (NULL: only counted). */
static size_t format(char *out, const h1_target *t, const h1_request *req, const char *method)
{
    size_t n = 0;
#define PUT(s, len)                                        \
    do {                                                   \
        if (out) memcpy(out + n, (s), (len));              \
        n += (len);                                        \
    } while (0)
#define PUTS(s) PUT((s), strlen(s))
    PUTS(method);
    PUT(" ", 1);
    if (t->target_len == 0 || t->target[0] != '/') PUT("/", 1);
    PUT(t->target, t->target_len);
    PUTS(" HTTP/1.1\r\n");
    bool host = false;
    for (const char *const *h = req->headers; h && *h; h++) {
        const char *line = *h, *colon = strchr(line, ':');
        size_t len = strlen(line);
        if (strpbrk(line, "\r\n")) continue;
        if (!colon && len > 1 && line[len - 1] == ';' && !memchr(line, ' ', len)) { /* "Name;": empty */
            PUT(line, len - 1);
            PUT(":\r\n", 3);
            continue;
        }
        if (!colon || colon == line) continue;
        size_t nlen = (size_t)(colon - line);
        if (!colon[1 + strspn(colon + 1, " \t")]) continue; /* "Name:": not sent */
        if ((nlen == 14 && !strncasecmp(line, "Content-Length", 14)) ||
            (nlen == 17 && !strncasecmp(line, "Transfer-Encoding", 17)))
            continue;
        if (nlen == 4 && !strncasecmp(line, "Host", 4)) host = true;
        PUT(line, len);
        PUT("\r\n", 2);
    }
    if (!host) {
        PUTS("Host: ");
        PUTS(t->authority);
        PUT("\r\n", 2);
    }
    if (req->body || !strcmp(method, "POST")) {
        char cl[40];
        int k = snprintf(cl, sizeof cl, "Content-Length: %zu\r\n", req->body ? req->body_len : 0);
        PUT(cl, (size_t)k);
    }
    PUT("\r\n", 2);
    if (req->body) PUT(req->body, req->body_len);
#undef PUTS
#undef PUT
    return n;
}

h1_xfer *h1_start(h1_pool *P, const h1_target *t, const h1_request *req, const h1_events *ev, void *ctx)
{
    const char *method = req->method ? req->method : req->body ? "POST" : "GET";
    size_t len = format(NULL, t, req, method);
    h1_xfer *x = xmalloc(sizeof *x + len);
    memset(x, 0, sizeof *x);
    x->out_len = format(x->out, t, req, method);
    x->P = P;
    x->d = dest_for(P, t);
    x->ev = *ev;
    x->ctx = ctx;
    x->due = -1;
    x->deadline = req->timeout_ms > 0 ? util_mono_ms() + req->timeout_ms : -1;
    x->head_only = !strcmp(method, "HEAD");
    x->queued = true;
    if (P->qtail) P->qtail->qnext = x; else P->qhead = x;
    P->qtail = x;
    return x;
}

void h1_resume(h1_xfer *x)
{
    if (!x || !x->held) return;
    x->held = false;
    if (x->c && !x->done)
        set_events(x->P, x->c, EPOLLIN | (x->out_off < x->out_len ? EPOLLOUT : 0u));
}

void h1_close(h1_xfer *x)
{
    if (!x) return;
    h1_pool *P = x->P;
    if (x->queued) {
        h1_xfer **q = &P->qhead, *prev = NULL;
        while (*q != x) prev = *q, q = &(*q)->qnext;
        *q = x->qnext;
        if (P->qtail == x) P->qtail = prev;
    } else if (!x->done) { /* cancelled mid-way (begun: out of the queue): its connection cannot be reused */
        timer_unlink(P, x);
        if (x->c) conn_close(P, x->c);
        P->in_flight--;
    }
    free(x);
}

/* ---- the pool ------------------------------------------------------------------------------- */

h1_pool *h1_pool_new(int ep)
{
    h1_pool *P = xcalloc(1, sizeof *P);
    P->ep = ep;
    return P;
}

static void free_dead(h1_pool *P)
{
    while (P->dead) {
        conn *c = P->dead;
        P->dead = c->next;
        free(c->hbuf);
        free(c);
    }
}

void h1_pool_free(h1_pool *P)
{
    if (!P) return;
    for (size_t i = 0; i < P->n_dests; i++) {
        while (P->dests[i]->idle_head) conn_close(P, P->dests[i]->idle_head);
        free(P->dests[i]);
    }
    free_dead(P);
    free(P->dests);
    free(P);
}

long h1_pool_timeout(const h1_pool *P)
{
    if (!P) return -1;
    if (P->qhead || P->dead) return 0;
    int64_t due = P->thead ? P->thead->due : -1;
    for (size_t i = 0; i < P->n_dests; i++) {
        const conn *old = P->dests[i]->idle_tail;
        if (old && (due < 0 || old->idle_since + H1_IDLE_MS < due)) due = old->idle_since + H1_IDLE_MS;
    }
    if (due < 0) return -1;
    int64_t left = due - util_mono_ms();
    return left < 0 ? 0 : (long)left;
}

void h1_pool_event(h1_pool *P, uint64_t data, uint32_t events)
{
    conn *c = (conn *)(uintptr_t)(data & ~(uint64_t)1);
    if (c->fd < 0) return; /* closed earlier in this batch */
    h1_xfer *x = c->x;
    if (!x) { /* idle: the server closed it, or sent what nobody asked for */
        conn_close(P, c);
        return;
    }
    if (c->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            connect_failed(x);
            return;
        }
        if (!(events & EPOLLOUT)) return;
        c->connecting = false;
        c->d->good = c->addr_i;
        timer_set(P, x, -1);
        send_on(x, c);
        return;
    }
    if ((events & EPOLLOUT) && x->out_off < x->out_len) {
        send_on(x, c);
        if (x->done || x->c != c) return;
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) read_on(x, c);
}

void h1_pool_run(h1_pool *P)
{
    if (!P) return;
    free_dead(P); /* the batch that closed them is over */
    h1_xfer *q = P->qhead;
    P->qhead = P->qtail = NULL;
    while (q) {
        h1_xfer *x = q;
        q = x->qnext;
        x->queued = false;
        x->qnext = NULL;
        begin(x);
    }
    int64_t now = util_mono_ms();
    while (P->thead && P->thead->due <= now) /* connecting too long is a timeout too, as for libcurl */
        finish(P->thead, H1_TIMEOUT, false);
    for (size_t i = 0; i < P->n_dests; i++)
        while (P->dests[i]->idle_tail && P->dests[i]->idle_tail->idle_since + H1_IDLE_MS <= now)
            conn_close(P, P->dests[i]->idle_tail);
}

size_t h1_pool_opened(const h1_pool *P) { return P ? P->opened : 0; }
size_t h1_pool_idle(const h1_pool *P) { return P ? P->idle : 0; }
