/* http_client — see http_client.h. libcurl underneath.
 *
 * Each thread keeps one easy handle (pthread key, freed when the thread exits).
 * curl_easy_reset() between calls clears every option but keeps the handle's
 * connection, DNS and TLS-session caches, which is what gives us keep-alive.
 *
 * Streams use their own easy handle in a multi handle, driven from httpc_stream_read()
 * (curl_multi_perform + curl_multi_poll): pull-style, with no extra thread. A multi handle
 * keeps the connections its transfers used; closed streams put theirs back in a pool, and the
 * next stream on any thread takes the most recently used, so upstream connections are kept
 * alive across streams. (Not a curl share object: its connection cache is documented as not
 * thread-safe, curl issue 4915.) One multi handle serves one stream at a time.
 */
#include "core/http_client.h"
#include "core/h1client.h"
#include "core/util.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <time.h>

#define DEFAULT_TIMEOUT_MS   10000L
#define MAX_CONNECT_MS       5000L
#define DEFAULT_MAX_RESPONSE (4u * 1024 * 1024)
#define MAX_HEADER_BYTES     (64 * 1024)

#define POOL_MAX             32   /* idle multi handles kept for streams */

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_key_t handle_key;
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static CURLM *pool[POOL_MAX];      /* idle, with their kept-alive connections; guarded by pool_mu */
static size_t pool_n;

static void free_handle(void *h) { curl_easy_cleanup(h); }

static void init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    pthread_key_create(&handle_key, free_handle);
}

static CURLM *pool_take(void)
{
    pthread_mutex_lock(&pool_mu);
    CURLM *m = pool_n ? pool[--pool_n] : NULL;
    pthread_mutex_unlock(&pool_mu);
    return m ? m : curl_multi_init();
}

static void pool_give(CURLM *m)
{
    pthread_mutex_lock(&pool_mu);
    if (pool_n < POOL_MAX) pool[pool_n++] = m, m = NULL;
    pthread_mutex_unlock(&pool_mu);
    curl_multi_cleanup(m); /* the pool is full (NULL is fine) */
}

void httpc_global_init(void)
{
    pthread_once(&once, init_once);
}

static CURL *thread_handle(void)
{
    pthread_once(&once, init_once); /* in case the caller forgot httpc_global_init */
    CURL *h = pthread_getspecific(handle_key);
    if (h) {
        curl_easy_reset(h);
        return h;
    }
    h = curl_easy_init();
    if (h) pthread_setspecific(handle_key, h);
    return h;
}

/* What the callbacks fill in while the transfer runs. */
typedef struct {
    char *body;
    size_t len, cap, max;
    char *hdrs;
    size_t hlen, hcap;
    bool head;       /* HEAD: Content-Length announces no body */
    bool too_large;
} sink;

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    sink *k = userp;
    size_t n = size * nmemb;
    if (n > k->max - k->len) {
        k->too_large = true;
        return 0; /* anything but n aborts the transfer with CURLE_WRITE_ERROR */
    }
    util_buf_add(&k->body, &k->len, &k->cap, data, n);
    return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userp)
{
    sink *k = userp;
    size_t n = size * nmemb;

    /* A status line starts a new response (after "100 Continue" and the like):
     * keep only the last block. The status line itself is not stored. */
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        k->hlen = 0;
        if (k->hdrs) k->hdrs[0] = '\0';
        return n;
    }
    if (n == 2 && memcmp(data, "\r\n", 2) == 0) return n; /* end of the block */

    /* Refuse an announced body that cannot fit before any of it arrives. */
    if (!k->head && n > 15 && strncasecmp(data, "Content-Length:", 15) == 0 &&
        strtoull(data + 15, NULL, 10) > k->max) {
        k->too_large = true;
        return 0;
    }
    if (k->hlen + n > MAX_HEADER_BYTES) {
        k->too_large = true;
        return 0;
    }
    util_buf_add(&k->hdrs, &k->hlen, &k->hcap, data, n);
    return n;
}

static httpc_result map_error(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
        return HTTPC_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        return HTTPC_TIMEOUT;
    default:
        return HTTPC_ERROR;
    }
}

/* "host[:port]" of a URL, without any "user:password@": safe to put in an error. */
static void url_host(const char *url, char *out, size_t outlen)
{
    const char *p = url ? strstr(url, "://") : NULL;
    p = p ? p + 3 : (url ? url : "");
    size_t n = strcspn(p, "/?#");
    const char *at = memchr(p, '@', n);
    while (at) { /* the last '@' ends the userinfo */
        n -= (size_t)(at + 1 - p);
        p = at + 1;
        at = memchr(p, '@', n);
    }
    snprintf(out, outlen, "%.*s", (int)n, p);
}

static void set_err(char *err, size_t errlen, const char *what, const char *url)
{
    char host[256];
    if (!err || !errlen) return;
    url_host(url, host, sizeof host);
    snprintf(err, errlen, "%s (%s)", what, host);
}

/* The options a request and a stream share: URL, method, headers, body, timeouts, trust.
 * timeout 0 = no bound on the whole exchange. copy_body: curl keeps its own copy of the body.
 * Returns the header list, which must outlive the transfer (caller frees it with free()). */
/* The request's header lines as curl's list, nodes and strings in one allocation (free() it):
 * curl only reads the list while the transfer runs, and curl_slist_append would make two
 * allocations per line. "Expect:" (empty) stops curl from waiting for "100 Continue". */
static struct curl_slist *header_list(const char *const *headers)
{
    static const char expect[] = "Expect:";
    size_t n = 1, bytes = sizeof expect;
    for (const char *const *p = headers; p && *p; p++) n++, bytes += strlen(*p) + 1;
    struct curl_slist *hl = xmalloc(n * sizeof *hl + bytes);
    char *text = (char *)(hl + n);
    for (size_t i = 0; i < n; i++) {
        const char *line = i ? headers[i - 1] : expect;
        size_t len = strlen(line) + 1;
        hl[i].data = memcpy(text, line, len);
        hl[i].next = i + 1 < n ? &hl[i + 1] : NULL;
        text += len;
    }
    return hl;
}

static struct curl_slist *setup(CURL *h, const httpc_request *req, long timeout, bool copy_body)
{
    struct curl_slist *hl = header_list(req->headers);

    curl_easy_setopt(h, CURLOPT_URL, req->url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L); /* no SIGALRM for DNS timeouts in threads */
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                     timeout > 0 && timeout < MAX_CONNECT_MS ? timeout : MAX_CONNECT_MS);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    if (req->ca_file) curl_easy_setopt(h, CURLOPT_CAINFO, req->ca_file);

    const char *method = req->method;
    if (req->body_read) { /* async transfers only: async_new sets the read callback */
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
                         req->body_len == HTTPC_BODY_CHUNKED ? (curl_off_t)-1 : (curl_off_t)req->body_len);
    } else if (req->body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        /* POSTFIELDS does not copy: for httpc_do req->body outlives the call, which is enough. */
        curl_easy_setopt(h, copy_body ? CURLOPT_COPYPOSTFIELDS : CURLOPT_POSTFIELDS, req->body);
    } else if (method && strcmp(method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    }
    if (method && strcmp(method, "HEAD") == 0)
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    else if (method && strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    else if (method && strcmp(method, "GET") == 0 && (req->body || req->body_read))
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "GET"); /* a GET with a body, as asked */
    return hl;
}

httpc_result httpc_do(const httpc_request *req, httpc_response *resp, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!resp) return HTTPC_ERROR;
    memset(resp, 0, sizeof *resp);
    if (!req || !req->url || req->body_read) {
        set_err(err, errlen, req && req->url ? "body_read is for asynchronous transfers" : "no URL", NULL);
        return HTTPC_ERROR;
    }

    CURL *h = thread_handle();
    if (!h) {
        set_err(err, errlen, "curl_easy_init failed", req->url);
        return HTTPC_ERROR;
    }

    sink k = { .max = req->max_response ? req->max_response : DEFAULT_MAX_RESPONSE };
    struct curl_slist *hl = setup(h, req, req->timeout_ms > 0 ? req->timeout_ms : DEFAULT_TIMEOUT_MS,
                                  false);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &k);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &k);
    k.head = req->method && strcmp(req->method, "HEAD") == 0;

    CURLcode rc = curl_easy_perform(h);
    /* The idle handle keeps pointers to hl and req->body; the curl_easy_reset()
     * at the start of the next call on this thread forgets them before any use. */
    free(hl);

    if (rc != CURLE_OK) {
        httpc_result r = k.too_large ? HTTPC_TOO_LARGE : map_error(rc);
        set_err(err, errlen, k.too_large ? "response too large" : curl_easy_strerror(rc), req->url);
        free(k.body);
        free(k.hdrs);
        return r;
    }

    char *ct = NULL;
    curl_off_t us = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
    curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ct);
    curl_easy_getinfo(h, CURLINFO_TOTAL_TIME_T, &us);
    resp->body = k.body ? k.body : xstrdup("");
    resp->body_len = k.len;
    resp->headers = k.hdrs ? k.hdrs : xstrdup("");
    resp->content_type = ct ? xstrdup(ct) : NULL;
    resp->total_ms = (double)us / 1000.0;
    return HTTPC_OK;
}

void httpc_response_free(httpc_response *resp)
{
    if (!resp) return;
    free(resp->body);
    free(resp->content_type);
    free(resp->headers);
    memset(resp, 0, sizeof *resp);
}

char *httpc_response_header(const httpc_response *resp, const char *name)
{
    if (!resp || !resp->headers || !name) return NULL;
    size_t nlen = strlen(name);
    for (const char *line = resp->headers; *line;) {
        const char *end = strstr(line, "\r\n");
        size_t llen = end ? (size_t)(end - line) : strlen(line);
        if (llen > nlen && line[nlen] == ':' && strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1, *ve = line + llen;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            return xstrndup(v, (size_t)(ve - v));
        }
        line += llen;
        if (*line == '\r') line++;
        if (*line == '\n') line++;
    }
    return NULL;
}

void httpc_refusal(const char *headers, const char *body, size_t body_len, char *out, size_t outlen)
{
    httpc_response rs = {.headers = (char *)headers};
    char *wa = httpc_response_header(&rs, "WWW-Authenticate");
    const char *d = wa ? strstr(wa, "error_description=\"") : NULL;
    if (d) {
        d += 19;
        snprintf(out, outlen, "%.*s", (int)strcspn(d, "\""), d);
        free(wa);
        return;
    }
    free(wa);
    body = body ? body : "";
    json_t *j = json_loadb(body, body_len, 0, NULL), *e = json_object_get(j, "error");
    const char *m = NULL;
    static const char *const keys[] = {"error_description", "detail", "message", "error"};
    for (size_t i = 0; !m && i < ARRAY_LEN(keys); i++) m = json_string_value(json_object_get(j, keys[i]));
    if (!m) m = json_string_value(json_object_get(e, "message"));
    size_t n = m ? strlen(m) : strcspn(body, "\r\n");
    snprintf(out, outlen, "%.*s", (int)(n < 280 ? n : 280), m ? m : body);
    json_decref(j);
}

/* ---- streaming ------------------------------------------------------------------------- */

struct httpc_stream {
    CURL *h;
    CURLM *m;
    struct curl_slist *hl;
    char *url;                   /* for error messages (host only is shown) */
    char *body;                  /* received, not yet read: body[off..len) */
    size_t len, off, cap;
    char *hdrs;                  /* the current header block */
    size_t hlen, hcap;
    long status;                 /* of the current block's status line */
    bool headers_done;           /* the final (non-1xx) block is complete */
    bool done;                   /* the transfer ended; rc says how */
    bool too_large;              /* the header block passed MAX_HEADER_BYTES */
    CURLcode rc;
    const atomic_bool *cancel;
};

static size_t stream_on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    httpc_stream *s = userp;
    size_t n = size * nmemb;
    s->headers_done = true;
    if (s->off == s->len) s->off = s->len = 0; /* everything was read: start over */
    util_buf_add(&s->body, &s->len, &s->cap, data, n);
    return n;
}

static size_t stream_on_header(char *data, size_t size, size_t nmemb, void *userp)
{
    httpc_stream *s = userp;
    size_t n = size * nmemb;
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) { /* a new block: "HTTP/1.1 200 OK" */
        const char *sp = memchr(data, ' ', n);
        s->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        s->hlen = 0;
        if (s->hdrs) s->hdrs[0] = '\0';
        return n;
    }
    if (n == 2 && memcmp(data, "\r\n", 2) == 0) { /* end of a block; 1xx ones are interim */
        if (s->status >= 200) s->headers_done = true;
        return n;
    }
    if (s->hlen + n > MAX_HEADER_BYTES) {
        s->too_large = true;
        return 0;
    }
    util_buf_add(&s->hdrs, &s->hlen, &s->hcap, data, n);
    return n;
}

/* One step of the transfer: let curl work, note the end, and if want() is still false
 * wait (at most a second) for the socket. */
static void stream_step(httpc_stream *s, bool (*want)(const httpc_stream *s))
{
    int running = 0, left = 0;
    CURLMcode mc = curl_multi_perform(s->m, &running);
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(s->m, &left)))
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == s->h) {
            s->done = true;
            s->rc = msg->data.result;
        }
    if (mc != CURLM_OK && !s->done) {
        s->done = true;
        s->rc = CURLE_RECV_ERROR;
    }
    if (!s->done && s->cancel && atomic_load(s->cancel)) {
        s->done = true;
        s->rc = CURLE_ABORTED_BY_CALLBACK;
    }
    if (!s->done && !want(s)) curl_multi_poll(s->m, NULL, 0, 1000, NULL);
}

static bool want_headers(const httpc_stream *s) { return s->headers_done; }
static bool want_body(const httpc_stream *s) { return s->off < s->len; }

void httpc_stream_close(httpc_stream *s)
{
    if (!s) return;
    /* An unfinished transfer's connection is closed here; a finished one's stays in the
     * multi handle's cache, which goes back to the pool. */
    if (s->m && s->h) curl_multi_remove_handle(s->m, s->h);
    if (s->h) curl_easy_cleanup(s->h);
    if (s->m) pool_give(s->m);
    free(s->hl);
    free(s->url);
    free(s->body);
    free(s->hdrs);
    free(s);
}

httpc_result httpc_stream_error(const httpc_stream *s, char *err, size_t errlen)
{
    if (!s) return HTTPC_ERROR;
    if (s->too_large) {
        set_err(err, errlen, "response headers too large", s->url);
        return HTTPC_TOO_LARGE;
    }
    if (s->rc == CURLE_OK) {
        set_err(err, errlen, "no error", s->url);
        return HTTPC_OK;
    }
    set_err(err, errlen, curl_easy_strerror(s->rc), s->url);
    return map_error(s->rc);
}

httpc_result httpc_stream_open(const httpc_request *req, httpc_stream **out, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!out) return HTTPC_ERROR;
    *out = NULL;
    if (!req || !req->url || req->body_read) {
        set_err(err, errlen, req && req->url ? "body_read is for asynchronous transfers" : "no URL", NULL);
        return HTTPC_ERROR;
    }
    pthread_once(&once, init_once);
    httpc_stream *s = xcalloc(1, sizeof *s);
    s->url = xstrdup(req->url);
    s->cancel = req->cancel;
    s->h = curl_easy_init();
    s->m = pool_take();
    if (!s->h || !s->m) {
        set_err(err, errlen, "curl init failed", req->url);
        httpc_stream_close(s);
        return HTTPC_ERROR;
    }
    s->hl = setup(s->h, req, req->timeout_ms > 0 ? req->timeout_ms : 0, true);
    curl_easy_setopt(s->h, CURLOPT_WRITEFUNCTION, stream_on_body);
    curl_easy_setopt(s->h, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(s->h, CURLOPT_HEADERFUNCTION, stream_on_header);
    curl_easy_setopt(s->h, CURLOPT_HEADERDATA, s);
    curl_multi_add_handle(s->m, s->h);

    while (!s->headers_done && !s->done) stream_step(s, want_headers);
    if (!s->headers_done && (s->rc != CURLE_OK || s->too_large)) {
        httpc_result r = httpc_stream_error(s, err, errlen);
        httpc_stream_close(s);
        return r;
    }
    if (!s->status) curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &s->status);
    if (!s->hdrs) s->hdrs = xstrdup("");
    *out = s;
    return HTTPC_OK;
}

long httpc_stream_status(const httpc_stream *s) { return s ? s->status : 0; }
const char *httpc_stream_headers(const httpc_stream *s) { return s && s->hdrs ? s->hdrs : ""; }

long httpc_stream_read(httpc_stream *s, char *buf, size_t max)
{
    if (!s || !buf || !max) return -1;
    while (s->off == s->len && !s->done) stream_step(s, want_body);
    if (s->off < s->len) {
        size_t n = s->len - s->off < max ? s->len - s->off : max;
        memcpy(buf, s->body + s->off, n);
        s->off += n;
        return (long)n;
    }
    return s->rc == CURLE_OK ? 0 : -1;
}

/* ---- asynchronous transfers --------------------------------------------------------------
 *
 * One client thread (aloop_main) owns a multi handle and every easy handle added to it; other
 * threads never touch those. It drives the multi handle with curl_multi_socket_action on an
 * epoll set of the transfers' sockets (curl says which through on_socket, and when to call
 * again through on_timer), so a wake-up costs what is ready, not what is open. Other threads
 * talk to it through a queue of transfers with pending commands (start, unpause, cancel) under
 * aloop.mu, and an eventfd in the epoll set, written only when the loop sleeps. What the callbacks
 * collect (headers, body buffer, end) is guarded by the transfer's own mutex, which readers
 * take too. A transfer is freed by the loop once it is closed by its owner (a cancel command),
 * or by httpc_async_close directly when the loop is done with it and has nothing queued. */

enum { CMD_START = 1, CMD_UNPAUSE = 2, CMD_CANCEL = 4, CMD_BODY = 8 };
#define EASY_POOL_MAX 64
#define LOOP_IDLE_CONNS 256 /* at least this many kept-alive connections per loop (loop_added) */

struct httpc_async {
    /* set up by the starter, then the loop's */
    httpc_loop *L;               /* the loop that drives it */
    CURL *h;                     /* a libcurl transfer, or: */
    h1_xfer *x;                  /* a direct one (h1client: http:// to an address, on a bound loop) */
    struct curl_slist *hl;
    char *url;
    bool in_multi;               /* loop thread only */
    bool plain;                  /* plain_req(): its handle needs no reset for the next plain one */
    /* guarded by aloop.mu */
    unsigned cmds;
    bool queued, loop_released;  /* loop_released: the loop is done and will not look again */
    struct httpc_async *qnext;
    /* guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t cond;         /* headers or the end came (httpc_async_wait) */
    unsigned waiters;
    char *hdrs;                  /* the current header block */
    size_t hlen, hcap;
    long status;
    bool headers_done, done, too_large, paused, unpause_queued, want_notify, closed;
    long (*body_read)(void *ctx, char *buf, size_t max); /* req.body_read */
    void *body_ctx;
    bool send_paused;            /* body_read said HTTPC_AGAIN: the upload waits (loop thread) */
    bool body_over;              /* body_read said 0 or -1, gave all of a known length, or was
                                    told the transfer is over */
    size_t body_left;            /* of a known length, still to read; HTTPC_BODY_CHUNKED: unknown */
    bool news;                   /* changed during this socket_action: tell the reader after it */
    struct httpc_async *nnext;   /* in aloop.news (loop thread only) */
    CURLcode rc;
    char *buf;                   /* body received, not yet read: buf[off..len) */
    size_t len, off, cap;
    void (*notify)(void *ctx);
    void *ctx;
};

struct httpc_loop {
    pthread_mutex_t mu;
    bool bound;                  /* run by its owner's thread (httpc_loop_new), not aloop_main */
    CURLM *m;
    httpc_async *qhead, *qtail;
    CURL *easy[EASY_POOL_MAX];   /* idle easy handles, not reset: */
    bool easy_plain[EASY_POOL_MAX]; /* ... their last transfer was a plain one (see plain_req) */
    size_t neasy;
    bool started;
    bool asleep;                 /* in epoll_wait: queueing must write wakefd */
    int ep, wakefd;
    int64_t deadline;            /* monotonic ms curl wants to be called at; -1: none (loop only) */
    unsigned char *idle;         /* idle[fd]: curl stopped watching fd, which is still in ep with */
    size_t idle_cap;             /* no events (see on_socket); loop thread only */
    struct httpc_async *news;    /* changed by the callbacks of the current socket_action (loop only) */
    size_t active, conn_cap;     /* transfers in m; its connection cache limit (loop_added) */
    h1_pool *h1;                 /* bound loops: direct transfers, their sockets in ep too */
};
static struct httpc_loop aloop = {.mu = PTHREAD_MUTEX_INITIALIZER, .ep = -1, .wakefd = -1};
static pthread_once_t aloop_once = PTHREAD_ONCE_INIT;

/* With aloop.mu held, after enqueue: true if the caller must wake the loop (loop_wake, after
 * unlocking). */
static bool loop_needs_wake(httpc_loop *L)
{
    bool w = L->asleep;
    L->asleep = false; /* one write is enough */
    return w;
}

static void loop_wake(httpc_loop *L)
{
    uint64_t one = 1;
    ssize_t k = write(L->wakefd, &one, sizeof one);
    (void)k; /* EAGAIN: the counter is full, the loop wakes anyway */
}

/* With a->mu held: tell the waiting reader something changed. */
static void a_changed(httpc_async *a)
{
    if (a->waiters) pthread_cond_broadcast(&a->cond);
    if (a->want_notify && !a->closed && a->notify) {
        a->want_notify = false;
        a->notify(a->ctx);
    }
}

/* With a->mu held, on the loop thread: tell the reader once curl is done with this round, so
 * that headers and the body bytes that came with them wake it once. */
static void a_later(httpc_async *a)
{
    if (a->news) return;
    a->news = true;
    a->nnext = a->L->news;
    a->L->news = a;
}

/* After a curl call: the news of that round. The transfers are still running (not released),
 * so none of them can have been freed meanwhile. */
static void loop_flush(httpc_loop *L)
{
    httpc_async *a = L->news;
    L->news = NULL;
    while (a) {
        httpc_async *next = a->nnext;
        pthread_mutex_lock(&a->mu);
        a->news = false;
        a_changed(a);
        pthread_mutex_unlock(&a->mu);
        a = next;
    }
}

static size_t async_on_header(char *data, size_t size, size_t nmemb, void *userp)
{
    httpc_async *a = userp;
    size_t n = size * nmemb;
    pthread_mutex_lock(&a->mu);
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) { /* a new block: "HTTP/1.1 200 OK" */
        const char *sp = memchr(data, ' ', n);
        a->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        a->hlen = 0;
        if (a->hdrs) a->hdrs[0] = '\0';
    } else if (n == 2 && memcmp(data, "\r\n", 2) == 0) { /* end of a block; 1xx ones are interim */
        if (a->status >= 200 && !a->headers_done) {
            if (!a->hdrs) a->hdrs = xstrdup("");
            a->headers_done = true;
            a_later(a);
        }
    } else if (a->hlen + n > MAX_HEADER_BYTES) {
        a->too_large = true;
        n = 0; /* aborts the transfer */
    } else {
        util_buf_add(&a->hdrs, &a->hlen, &a->hcap, data, n);
    }
    pthread_mutex_unlock(&a->mu);
    return n;
}

/* With a->mu held: n body bytes after those not read yet (moved to the front first when that
 * spares growing the buffer), the reader told once this round is over. */
static void a_append(httpc_async *a, const char *data, size_t n)
{
    size_t held = a->len - a->off;
    if (a->off && a->len + n + 1 > a->cap) {
        memmove(a->buf, a->buf + a->off, held);
        a->len = held;
        a->off = 0;
    }
    util_buf_add(&a->buf, &a->len, &a->cap, data, n);
    a_later(a);
}

static size_t async_on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    httpc_async *a = userp;
    size_t n = size * nmemb;
    pthread_mutex_lock(&a->mu);
    if (!a->headers_done) { /* not expected: a body always follows its header block */
        if (!a->hdrs) a->hdrs = xstrdup("");
        a->headers_done = true;
    }
    size_t held = a->len - a->off;
    if (held && held + n > HTTPC_ASYNC_BUFFER) { /* full: curl keeps the piece until unpaused */
        a->paused = true;
        pthread_mutex_unlock(&a->mu);
        return CURL_WRITEFUNC_PAUSE;
    }
    a_append(a, data, n);
    pthread_mutex_unlock(&a->mu);
    return n;
}

static size_t async_on_read(char *buf, size_t size, size_t nitems, void *userp)
{
    httpc_async *a = userp;
    pthread_mutex_lock(&a->mu);
    long n = a->closed ? -1 : a->body_read(a->body_ctx, buf, size * nitems);
    if (n == HTTPC_AGAIN) a->send_paused = true;
    else if (n <= 0) a->body_over = true;
    else if (a->body_left != HTTPC_BODY_CHUNKED) {
        a->body_left -= (size_t)n < a->body_left ? (size_t)n : a->body_left;
        if (!a->body_left) a->body_over = true; /* curl asks no more once the length is sent */
    }
    pthread_mutex_unlock(&a->mu);
    if (n == HTTPC_AGAIN) return CURL_READFUNC_PAUSE;
    return n < 0 ? CURL_READFUNC_ABORT : (size_t)n;
}

/* A GET without a body or CA file: setup() and async_new() set every option of such a
 * transfer anew, so a handle whose last transfer was plain needs no curl_easy_reset() for
 * the next plain one (reusing a handle with its options is libcurl's own pattern; the reset,
 * which frees and re-creates all of them, is a measurable part of a proxied request). */
static bool plain_req(const httpc_request *req)
{
    return !req->body && !req->body_read && !req->ca_file && (!req->method || strcmp(req->method, "GET") == 0);
}

static void easy_give(httpc_loop *L, CURL *h, bool plain)
{
    if (!h) return;
    pthread_mutex_lock(&L->mu);
    if (L->neasy < EASY_POOL_MAX) {
        L->easy_plain[L->neasy] = plain;
        L->easy[L->neasy++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&L->mu);
    if (h) curl_easy_cleanup(h);
}

/* A handle with no options left over from its last transfer but those a plain one sets. */
static CURL *easy_take(httpc_loop *L, bool plain)
{
    pthread_mutex_lock(&L->mu);
    CURL *h = NULL;
    bool was_plain = false;
    if (L->neasy) {
        h = L->easy[--L->neasy];
        was_plain = L->easy_plain[L->neasy];
    }
    pthread_mutex_unlock(&L->mu);
    if (!h) return curl_easy_init();
    if (!(plain && was_plain)) curl_easy_reset(h);
    return h;
}

static void async_free(httpc_async *a)
{
    easy_give(a->L, a->h, a->plain);
    free(a->hl);
    free(a->url);
    free(a->hdrs);
    free(a->buf);
    pthread_cond_destroy(&a->cond);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

/* With aloop.mu held: queue cmd for a (once in the queue however many commands). */
static void enqueue(httpc_async *a, unsigned cmd)
{
    httpc_loop *L = a->L;
    a->cmds |= cmd;
    if (a->queued) return;
    a->queued = true;
    a->qnext = NULL;
    if (L->qtail) L->qtail->qnext = a; else L->qhead = a;
    L->qtail = a;
}

/* One more transfer in L's multi handle. curl's cache limit counts every connection, busy or
 * idle, and whenever a transfer ends above it closes an idle one. Its default, 4 per transfer
 * in the handle at that moment, closed after every quiet moment what the busy one before had
 * opened; a fixed size closed nearly every connection once more transfers than that ran at
 * once (one new upstream connection per request). So the limit follows the most transfers
 * ever run here at once, twice that and at least LOOP_IDLE_CONNS: like nginx's keepalive N,
 * what a busy moment opened is still there for the next. curl closes a connection idle for
 * longer than CURLOPT_MAXAGE_CONN (118 s) when it next looks for one. */
static void loop_added(httpc_loop *L)
{
    L->active++;
    if (2 * L->active > L->conn_cap) {
        L->conn_cap = 2 * L->active;
        curl_multi_setopt(L->m, CURLMOPT_MAXCONNECTS, (long)L->conn_cap);
    }
}

/* The transfer ended (or was cancelled): out of the multi handle. Its connection stays in the
 * multi's cache if the exchange finished cleanly. */
static void loop_detach(httpc_async *a)
{
    if (a->in_multi) {
        curl_multi_remove_handle(a->L->m, a->h);
        a->L->active--;
    }
    a->in_multi = false;
}

/* CMD_UNPAUSE (the reader made room: receive again) and CMD_BODY (more body to send), carried
 * out on the loop's thread outside curl's callbacks: the directions named go on, the other
 * stays as it is. */
static void unpause_now(httpc_async *a, unsigned cmds)
{
    pthread_mutex_lock(&a->mu);
    if (cmds & CMD_UNPAUSE) a->paused = a->unpause_queued = false;
    if (cmds & CMD_BODY) a->send_paused = false;
    int still = (a->paused ? CURLPAUSE_RECV : 0) | (a->send_paused ? CURLPAUSE_SEND : 0);
    pthread_mutex_unlock(&a->mu);
    /* may deliver the held piece right away (async_on_body, which may pause again) */
    if (a->x && !(still & CURLPAUSE_RECV)) h1_resume(a->x);
    else if (a->in_multi) curl_easy_pause(a->h, still);
    loop_flush(a->L);
}

/* The same from the transfer's owner: at once on a loop it runs itself (it is that loop's
 * thread), else queued for the client thread. */
static void unpause(httpc_async *a, unsigned cmd)
{
    if (a->L->bound) {
        unpause_now(a, cmd);
        return;
    }
    pthread_mutex_lock(&a->L->mu);
    bool wake = false;
    if (!a->loop_released) { /* else finished: nothing to unpause */
        enqueue(a, cmd);
        wake = loop_needs_wake(a->L);
    }
    pthread_mutex_unlock(&a->L->mu);
    if (wake) loop_wake(a->L);
}

static void loop_commands(httpc_loop *L)
{
    pthread_mutex_lock(&L->mu);
    httpc_async *q = L->qhead;
    L->qhead = L->qtail = NULL;
    while (q) {
        httpc_async *a = q;
        q = a->qnext;
        unsigned cmds = a->cmds;
        a->cmds = 0;
        a->queued = false;
        if (cmds & CMD_CANCEL) { /* closed by its owner: the loop has the last word */
            pthread_mutex_unlock(&L->mu);
            loop_detach(a);
            async_free(a);
            pthread_mutex_lock(&L->mu);
            continue;
        }
        if (a->loop_released) continue; /* finished already: nothing to unpause */
        pthread_mutex_unlock(&L->mu);
        if ((cmds & CMD_START) && curl_multi_add_handle(L->m, a->h) == CURLM_OK) {
            a->in_multi = true;
            loop_added(L);
        }
        else if (cmds & CMD_START) { /* could not start: fail it */
            pthread_mutex_lock(&a->mu);
            a->done = true;
            a->rc = CURLE_FAILED_INIT;
            a_changed(a);
            pthread_mutex_unlock(&a->mu);
            pthread_mutex_lock(&L->mu);
            a->loop_released = true;
            continue;
        }
        if (cmds & (CMD_UNPAUSE | CMD_BODY)) unpause_now(a, cmds);
        pthread_mutex_lock(&L->mu);
    }
    pthread_mutex_unlock(&L->mu);
}

static bool is_idle(const httpc_loop *L, int fd)
{
    return fd >= 0 && (size_t)fd < L->idle_cap && L->idle[fd];
}

static void set_idle(httpc_loop *L, int fd, bool on)
{
    if (fd < 0) return;
    if ((size_t)fd >= L->idle_cap) {
        if (!on) return;
        size_t c = L->idle_cap ? L->idle_cap : 256;
        while (c <= (size_t)fd) c *= 2;
        L->idle = xrealloc(L->idle, c);
        memset(L->idle + L->idle_cap, 0, c - L->idle_cap);
        L->idle_cap = c;
    }
    L->idle[fd] = on;
}

/* curl: watch socket s for what (or stop watching it).
 * A kept-alive upstream connection goes idle after every transfer and is watched again by
 * the next: instead of taking it out of the epoll set and adding it back (ADD is the costly
 * one), it stays in with no events, marked idle. The mark is only a hint: if curl closed the
 * socket meanwhile (which takes it out of the set) and the number came back, MOD fails and ADD
 * follows, as for any new socket. An idle socket may still report an error or hang-up (those
 * need no asking): loop_socket_event takes it out then, without bothering curl. */
static int on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    httpc_loop *L = userp;
    (void)e, (void)socketp;
    struct epoll_event ev = {.data.u64 = (uint64_t)s << 1}; /* bit 0 clear: not h1's */
    if (what == CURL_POLL_REMOVE) {
        if (epoll_ctl(L->ep, EPOLL_CTL_MOD, s, &ev) == 0) set_idle(L, s, true);
        else epoll_ctl(L->ep, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }
    set_idle(L, s, false);
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0u) | (what & CURL_POLL_OUT ? EPOLLOUT : 0u);
    if (epoll_ctl(L->ep, EPOLL_CTL_MOD, s, &ev) != 0) epoll_ctl(L->ep, EPOLL_CTL_ADD, s, &ev);
    return 0;
}

/* An event on one of L's sockets: to curl, unless curl stopped watching the socket. */
static void loop_socket_event(httpc_loop *L, int fd, uint32_t e, int *running)
{
    if (is_idle(L, fd)) { /* an idle connection's error or hang-up: curl finds out on reuse */
        epoll_ctl(L->ep, EPOLL_CTL_DEL, fd, NULL);
        set_idle(L, fd, false);
        return;
    }
    int mask = (e & EPOLLIN ? CURL_CSELECT_IN : 0) | (e & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
               (e & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
    curl_multi_socket_action(L->m, fd, mask, running);
}

/* curl: call curl_multi_socket_action(CURL_SOCKET_TIMEOUT) in ms (-1: no timer). */
static int on_timer(CURLM *m, long ms, void *userp)
{
    httpc_loop *L = userp;
    (void)m;
    L->deadline = ms < 0 ? -1 : util_mono_ms() + ms;
    return 0;
}

/* Finished transfers: out of the multi handle, their end told to their readers. */
static void loop_finished(httpc_loop *L)
{
    loop_flush(L); /* before any transfer is released */
    int left = 0;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(L->m, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        httpc_async *a = NULL;
        CURLcode rc = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&a);
        if (!a) continue;
        loop_detach(a);
        pthread_mutex_lock(&a->mu);
        a->done = true;
        a->rc = rc;
        if (a->body_read && !a->body_over && !a->closed) { /* the upload ended short */
            a->body_over = true;
            a->body_read(a->body_ctx, NULL, 0);
        }
        if (rc == CURLE_OK && !a->headers_done) { /* e.g. a reply without any header line */
            if (!a->hdrs) a->hdrs = xstrdup("");
            if (!a->status) curl_easy_getinfo(a->h, CURLINFO_RESPONSE_CODE, &a->status);
            a->headers_done = true;
        }
        a_changed(a);
        pthread_mutex_unlock(&a->mu);
        pthread_mutex_lock(&L->mu);
        a->loop_released = true; /* from here on only a queued cancel brings it back */
        pthread_mutex_unlock(&L->mu);
    }
}

static void *aloop_main(void *arg)
{
    httpc_loop *L = arg;
    struct epoll_event evs[64];
    int running = 0;
    for (;;) {
        loop_commands(L);
        if (L->deadline >= 0 && util_mono_ms() >= L->deadline) {
            L->deadline = -1;
            curl_multi_socket_action(L->m, CURL_SOCKET_TIMEOUT, 0, &running);
        }
        loop_finished(L);

        int64_t wait = L->deadline < 0 ? 1000 : L->deadline - util_mono_ms();
        pthread_mutex_lock(&L->mu);
        if (L->qhead) wait = 0; /* more commands came meanwhile */
        L->asleep = wait > 0;
        pthread_mutex_unlock(&L->mu);
        int n = epoll_wait(L->ep, evs, 64, wait < 0 ? 0 : wait > 1000 ? 1000 : (int)wait);
        pthread_mutex_lock(&L->mu);
        L->asleep = false;
        pthread_mutex_unlock(&L->mu);
        for (int i = 0; i < n; i++) {
            int fd = (int)(evs[i].data.u64 >> 1);
            if (fd == L->wakefd) {
                uint64_t v;
                ssize_t k = read(fd, &v, sizeof v);
                (void)k;
                continue;
            }
            loop_socket_event(L, fd, evs[i].events, &running);
        }
        loop_finished(L);
    }
    return NULL;
}

/* The multi handle and epoll set of L; false if either could not be made. */
static bool loop_setup(httpc_loop *L)
{
    pthread_once(&once, init_once);
    L->deadline = -1;
    L->ep = epoll_create1(EPOLL_CLOEXEC);
    L->m = curl_multi_init();
    if (!L->m || L->ep < 0) return false;
    curl_multi_setopt(L->m, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(L->m, CURLMOPT_SOCKETDATA, L);
    curl_multi_setopt(L->m, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(L->m, CURLMOPT_TIMERDATA, L);
    L->conn_cap = LOOP_IDLE_CONNS;
    curl_multi_setopt(L->m, CURLMOPT_MAXCONNECTS, (long)L->conn_cap);
    return true;
}

static void aloop_init(void)
{
    httpc_loop *L = &aloop;
    if (!loop_setup(L)) return;
    L->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (L->wakefd < 0) return;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)L->wakefd << 1};
    if (epoll_ctl(L->ep, EPOLL_CTL_ADD, L->wakefd, &ev) != 0) return;
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    L->started = pthread_create(&t, &at, aloop_main, L) == 0; /* lives as long as the process */
    pthread_attr_destroy(&at);
}

/* A transfer's common part, libcurl's or h1client's alike; async_free undoes it. */
static httpc_async *async_alloc(httpc_loop *L, const char *url, void (*notify)(void *ctx), void *ctx)
{
    httpc_async *a = xcalloc(1, sizeof *a);
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cond, NULL);
    a->L = L;
    a->url = xstrdup(url);
    a->notify = notify;
    a->ctx = ctx;
    return a;
}

/* The transfer of req on L, set up but not started. */
static httpc_async *async_new(httpc_loop *L, const httpc_request *req, void (*notify)(void *ctx),
                              void *ctx, char *err, size_t errlen)
{
    CURL *h = easy_take(L, plain_req(req));
    if (!h) {
        set_err(err, errlen, "curl init failed", req->url);
        return NULL;
    }
    httpc_async *a = async_alloc(L, req->url, notify, ctx);
    a->h = h;
    a->plain = plain_req(req);
    a->hl = setup(h, req, req->timeout_ms > 0 ? req->timeout_ms : 0, true);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, async_on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, async_on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, a);
    curl_easy_setopt(h, CURLOPT_PRIVATE, a);
    if (req->body_read) {
        a->body_read = req->body_read;
        a->body_ctx = req->body_ctx;
        a->body_left = req->body_len;
        curl_easy_setopt(h, CURLOPT_READFUNCTION, async_on_read);
        curl_easy_setopt(h, CURLOPT_READDATA, a);
    }
    return a;
}

httpc_async *httpc_async_start(const httpc_request *req, void (*notify)(void *ctx), void *ctx,
                               char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!req || !req->url) {
        set_err(err, errlen, "no URL", NULL);
        return NULL;
    }
    pthread_once(&aloop_once, aloop_init);
    if (!aloop.started) {
        set_err(err, errlen, "the HTTP client thread could not be started", req->url);
        return NULL;
    }
    httpc_async *a = async_new(&aloop, req, notify, ctx, err, errlen);
    if (!a) return NULL;
    pthread_mutex_lock(&aloop.mu);
    enqueue(a, CMD_START);
    bool wake = loop_needs_wake(&aloop);
    pthread_mutex_unlock(&aloop.mu);
    if (wake) loop_wake(&aloop);
    return a;
}

/* ---- loops run by their owner's thread ---------------------------------------------------
 * The same transfers, but the owner's thread is the loop thread: commands are carried out at
 * once instead of being queued, and nobody writes an eventfd. */

void httpc_prepare(const char *url)
{
    h1_target t;
    (void)h1_target_parse(url, &t); /* a name not known yet: its lookup starts */
}

httpc_loop *httpc_loop_new(void)
{
    httpc_loop *L = xcalloc(1, sizeof *L);
    pthread_mutex_init(&L->mu, NULL);
    L->bound = true;
    L->ep = L->wakefd = -1;
    if (!loop_setup(L)) {
        httpc_loop_free(L);
        return NULL;
    }
    L->h1 = h1_pool_new(L->ep);
    return L;
}

int httpc_loop_fd(const httpc_loop *L) { return L ? L->ep : -1; }

long httpc_loop_timeout(const httpc_loop *L)
{
    if (!L) return -1;
    long h1 = h1_pool_timeout(L->h1);
    if (L->deadline < 0) return h1;
    int64_t left = L->deadline - util_mono_ms();
    long curl = left < 0 ? 0 : (long)left;
    return h1 >= 0 && h1 < curl ? h1 : curl;
}

void httpc_loop_run(httpc_loop *L)
{
    if (!L) return;
    struct epoll_event evs[64];
    int running = 0;
    int n = epoll_wait(L->ep, evs, 64, 0);
    for (int i = 0; i < n; i++) {
        if (evs[i].data.u64 & 1) h1_pool_event(L->h1, evs[i].data.u64, evs[i].events);
        else loop_socket_event(L, (int)(evs[i].data.u64 >> 1), evs[i].events, &running);
    }
    h1_pool_run(L->h1); /* after the batch: what h1_start queued goes out, deadlines */
    if (L->deadline >= 0 && util_mono_ms() >= L->deadline) {
        L->deadline = -1;
        curl_multi_socket_action(L->m, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    loop_finished(L);
}

void httpc_loop_free(httpc_loop *L)
{
    if (!L) return;
    if (L->m) curl_multi_cleanup(L->m); /* its transfers were all closed (the contract) */
    h1_pool_free(L->h1);
    for (size_t i = 0; i < L->neasy; i++) curl_easy_cleanup(L->easy[i]);
    if (L->ep >= 0) close(L->ep);
    pthread_mutex_destroy(&L->mu);
    free(L->idle);
    free(L);
}

/* ---- direct transfers (h1client) ------------------------------------------------------------
 * On a bound loop, a request to http:// and an address, with its body in memory, goes through
 * h1client instead of libcurl: the same httpc_async, filled by these events, which run on the
 * loop's thread inside httpc_loop_run (so a_later and loop_flush tell the reader as for curl's). */

static void direct_head(void *ctx, long status, const char *hdrs, size_t len)
{
    httpc_async *a = ctx;
    pthread_mutex_lock(&a->mu);
    a->status = status;
    a->hlen = 0;
    util_buf_add(&a->hdrs, &a->hlen, &a->hcap, hdrs, len);
    a->headers_done = true;
    a_later(a);
    pthread_mutex_unlock(&a->mu);
}

/* As async_on_body, but h1 hands over every byte it read: past HTTPC_ASYNC_BUFFER it holds the
 * connection instead (h1_resume from unpause_now once the reader drained half). */
static bool direct_body(void *ctx, const char *data, size_t n)
{
    httpc_async *a = ctx;
    pthread_mutex_lock(&a->mu);
    a_append(a, data, n);
    bool more = a->len - a->off < HTTPC_ASYNC_BUFFER;
    if (!more) a->paused = true;
    pthread_mutex_unlock(&a->mu);
    return more;
}

static void direct_end(void *ctx, h1_result r)
{
    static const CURLcode rc[] = {
        [H1_OK] = CURLE_OK,
        [H1_CONNECT] = CURLE_COULDNT_CONNECT,
        [H1_TIMEOUT] = CURLE_OPERATION_TIMEDOUT,
        [H1_NOTHING] = CURLE_GOT_NOTHING,
        [H1_SEND] = CURLE_SEND_ERROR,
        [H1_RECV] = CURLE_RECV_ERROR,
        [H1_PROTOCOL] = CURLE_WEIRD_SERVER_REPLY,
        [H1_TOO_LARGE] = CURLE_WRITE_ERROR, /* as when curl's header callback gives up */
    };
    httpc_async *a = ctx;
    pthread_mutex_lock(&a->mu);
    a->done = true;
    a->rc = rc[r];
    a->too_large = r == H1_TOO_LARGE;
    a_later(a);
    pthread_mutex_unlock(&a->mu);
}

static const h1_events direct_events = {direct_head, direct_body, direct_end};

static httpc_async *direct_start(httpc_loop *L, const h1_target *t, const httpc_request *req,
                                 void (*notify)(void *ctx), void *ctx)
{
    httpc_async *a = async_alloc(L, req->url, notify, ctx);
    h1_request hr = {.method = req->method, .headers = req->headers, .body = req->body,
                     .body_len = req->body_len, .timeout_ms = req->timeout_ms};
    a->x = h1_start(L->h1, t, &hr, &direct_events, a);
    return a;
}

httpc_async *httpc_async_start_on(httpc_loop *L, const httpc_request *req,
                                  void (*notify)(void *ctx), void *ctx, char *err, size_t errlen)
{
    if (!L) return httpc_async_start(req, notify, ctx, err, errlen);
    if (err && errlen) err[0] = '\0';
    if (!req || !req->url) {
        set_err(err, errlen, "no URL", NULL);
        return NULL;
    }
    h1_target t;
    if (L->h1 && !req->body_read && h1_target_parse(req->url, &t)) return direct_start(L, &t, req, notify, ctx);
    httpc_async *a = async_new(L, req, notify, ctx, err, errlen);
    if (!a) return NULL;
    if (curl_multi_add_handle(L->m, a->h) != CURLM_OK) {
        set_err(err, errlen, "curl could not start the transfer", req->url);
        async_free(a);
        return NULL;
    }
    a->in_multi = true; /* curl starts it from the loop's next run (its timer says 0) */
    loop_added(L);
    return a;
}

/* With a->mu held. */
static httpc_async_state a_state(const httpc_async *a)
{
    if (a->headers_done) return HTTPC_ASYNC_HEADERS;
    return a->done ? HTTPC_ASYNC_FAILED : HTTPC_ASYNC_WAITING;
}

httpc_async_state httpc_async_poll(httpc_async *a)
{
    if (!a) return HTTPC_ASYNC_FAILED;
    pthread_mutex_lock(&a->mu);
    httpc_async_state st = a_state(a);
    if (st == HTTPC_ASYNC_WAITING) a->want_notify = true;
    pthread_mutex_unlock(&a->mu);
    return st;
}

httpc_async_state httpc_async_wait(httpc_async *a, const atomic_bool *cancel)
{
    if (!a) return HTTPC_ASYNC_FAILED;
    pthread_mutex_lock(&a->mu);
    a->waiters++;
    while (a_state(a) == HTTPC_ASYNC_WAITING && !(cancel && atomic_load(cancel))) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&a->cond, &a->mu, &until);
    }
    a->waiters--;
    httpc_async_state st = a_state(a);
    pthread_mutex_unlock(&a->mu);
    return st;
}

/* Both stay as they are once headers_done is true. */
long httpc_async_status(httpc_async *a)
{
    if (!a) return 0;
    pthread_mutex_lock(&a->mu);
    long st = a->headers_done ? a->status : 0;
    pthread_mutex_unlock(&a->mu);
    return st;
}

const char *httpc_async_headers(httpc_async *a)
{
    if (!a) return "";
    pthread_mutex_lock(&a->mu);
    const char *h = a->headers_done && a->hdrs ? a->hdrs : "";
    pthread_mutex_unlock(&a->mu);
    return h;
}

long httpc_async_read(httpc_async *a, char *buf, size_t max)
{
    if (!a || !buf || !max) return -1;
    long n;
    bool wake = false;
    pthread_mutex_lock(&a->mu);
    if (a->off < a->len) {
        size_t k = a->len - a->off < max ? a->len - a->off : max;
        memcpy(buf, a->buf + a->off, k);
        a->off += k;
        if (a->off == a->len) a->off = a->len = 0;
        n = (long)k;
    } else if (a->done) {
        n = a->rc == CURLE_OK ? 0 : -1;
    } else {
        a->want_notify = true;
        n = HTTPC_AGAIN;
    }
    if (a->paused && !a->unpause_queued && a->len - a->off <= HTTPC_ASYNC_BUFFER / 2) {
        a->unpause_queued = true;
        wake = true;
    }
    pthread_mutex_unlock(&a->mu);
    if (wake) unpause(a, CMD_UNPAUSE);
    return n;
}

void httpc_async_body_ready(httpc_async *a)
{
    if (a && a->body_read) unpause(a, CMD_BODY);
}

size_t httpc_async_buffered(httpc_async *a)
{
    if (!a) return 0;
    pthread_mutex_lock(&a->mu);
    size_t n = a->len - a->off;
    pthread_mutex_unlock(&a->mu);
    return n;
}

httpc_result httpc_async_error(httpc_async *a, char *err, size_t errlen)
{
    if (!a) return HTTPC_ERROR;
    pthread_mutex_lock(&a->mu);
    bool too_large = a->too_large;
    CURLcode rc = a->done ? a->rc : CURLE_OK;
    pthread_mutex_unlock(&a->mu);
    if (too_large) {
        set_err(err, errlen, "response headers too large", a->url);
        return HTTPC_TOO_LARGE;
    }
    if (rc == CURLE_OK) {
        set_err(err, errlen, "no error", a->url);
        return HTTPC_OK;
    }
    set_err(err, errlen, curl_easy_strerror(rc), a->url);
    return map_error(rc);
}

void httpc_async_close(httpc_async *a)
{
    if (!a) return;
    pthread_mutex_lock(&a->mu);
    a->closed = true; /* a notify running now holds mu: none starts after this */
    pthread_mutex_unlock(&a->mu);
    if (a->L->bound) { /* on the loop's thread, outside curl's callbacks */
        if (a->news) { /* still listed for this round's notify (a close from a notify) */
            httpc_async **p = &a->L->news;
            while (*p && *p != a) p = &(*p)->nnext;
            if (*p) *p = a->nnext;
        }
        h1_close(a->x); /* no h1 event runs after this */
        loop_detach(a);
        async_free(a);
        return;
    }
    pthread_mutex_lock(&aloop.mu);
    if (a->loop_released && !a->queued) {
        pthread_mutex_unlock(&aloop.mu);
        async_free(a);
        return;
    }
    enqueue(a, CMD_CANCEL);
    bool wake = loop_needs_wake(&aloop);
    pthread_mutex_unlock(&aloop.mu);
    if (wake) loop_wake(&aloop);
}
