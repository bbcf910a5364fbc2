/* http_client — see http_client.h. libcurl underneath.
 *
 * Each thread keeps one easy handle (pthread key, freed when the thread exits).
 * curl_easy_reset() between calls clears every option but keeps the handle's
 * connection, DNS and TLS-session caches, which is what gives us keep-alive.
 */
#include "core/http_client.h"
#include "core/util.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_TIMEOUT_MS   10000L
#define MAX_CONNECT_MS       5000L
#define DEFAULT_MAX_RESPONSE (4u * 1024 * 1024)
#define MAX_HEADER_BYTES     (64 * 1024)

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_key_t handle_key;

static void free_handle(void *h) { curl_easy_cleanup(h); }

static void init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    pthread_key_create(&handle_key, free_handle);
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

/* Append n bytes, keeping the buffer NUL-terminated. */
static void buf_add(char **buf, size_t *len, size_t *cap, const char *data, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 1024;
        while (c < *len + n + 1) c *= 2;
        *buf = xrealloc(*buf, c);
        *cap = c;
    }
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    sink *k = userp;
    size_t n = size * nmemb;
    if (n > k->max - k->len) {
        k->too_large = true;
        return 0; /* anything but n aborts the transfer with CURLE_WRITE_ERROR */
    }
    buf_add(&k->body, &k->len, &k->cap, data, n);
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
    buf_add(&k->hdrs, &k->hlen, &k->hcap, data, n);
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

httpc_result httpc_do(const httpc_request *req, httpc_response *resp, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!resp) return HTTPC_ERROR;
    memset(resp, 0, sizeof *resp);
    if (!req || !req->url) {
        set_err(err, errlen, "no URL", NULL);
        return HTTPC_ERROR;
    }

    CURL *h = thread_handle();
    if (!h) {
        set_err(err, errlen, "curl_easy_init failed", req->url);
        return HTTPC_ERROR;
    }

    long timeout = req->timeout_ms > 0 ? req->timeout_ms : DEFAULT_TIMEOUT_MS;
    sink k = { .max = req->max_response ? req->max_response : DEFAULT_MAX_RESPONSE };

    /* "Expect:" (empty) stops curl from waiting for "100 Continue" before a body. */
    struct curl_slist *hl = curl_slist_append(NULL, "Expect:");
    for (const char *const *p = req->headers; p && *p; p++) {
        struct curl_slist *t = curl_slist_append(hl, *p);
        if (t) hl = t;
    }

    curl_easy_setopt(h, CURLOPT_URL, req->url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L); /* no SIGALRM for DNS timeouts in threads */
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout < MAX_CONNECT_MS ? timeout : MAX_CONNECT_MS);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &k);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &k);
    if (req->ca_file) curl_easy_setopt(h, CURLOPT_CAINFO, req->ca_file);

    const char *method = req->method;
    if (req->body) {
        /* POSTFIELDS does not copy: req->body outlives the call, which is enough. */
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body);
    } else if (method && strcmp(method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    }
    k.head = method && strcmp(method, "HEAD") == 0;
    if (k.head)
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    else if (method && strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    else if (method && strcmp(method, "GET") == 0 && req->body)
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "GET"); /* a GET with a body, as asked */

    CURLcode rc = curl_easy_perform(h);
    /* The idle handle keeps pointers to hl and req->body; the curl_easy_reset()
     * at the start of the next call on this thread forgets them before any use. */
    curl_slist_free_all(hl);

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
