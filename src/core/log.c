/* log — see log.h. */
#include "core/log.h"

#include "core/util.h"

#include <jansson.h>
#include <limits.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *g_component = "agentid";
static log_level g_min = LOG_INFO;
static const char *const LEVEL[] = {"debug", "info", "warn", "error"};

void log_init(const char *component, log_level min)
{
    g_component = component;
    g_min = min;
    const char *e = getenv("AGENTID_LOG_LEVEL");
    for (int i = 0; e && i < 4; i++)
        if (strcasecmp(e, LEVEL[i]) == 0) g_min = (log_level)i;
}

static bool b64url_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

char *log_redact(char *s)
{
    /* A JWT is "eyJ" (base64url of '{"') then base64url, '.', base64url, '.', base64url.
     * Redact any run that starts with eyJ and contains at least one dot: a lone
     * header segment is harmless, but a header plus payload already identifies a token. */
    static const char mark[] = "[redacted-jwt]";
    char *p = s;
    while ((p = strstr(p, "eyJ")) != NULL) {
        char *q = p;
        int dots = 0;
        while (b64url_char(*q) || *q == '.') {
            if (*q == '.') dots++;
            q++;
        }
        if (dots >= 1 && (size_t)(q - p) >= sizeof mark) {
            memcpy(p, mark, sizeof mark - 1);
            memmove(p + sizeof mark - 1, q, strlen(q) + 1);
            p += sizeof mark - 1;
        } else {
            p = q;
        }
    }
    return s;
}

const char *log_fingerprint(const char *data, char out[20])
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)data, strlen(data), d);
    memcpy(out, "sha256:", 7);
    for (int i = 0; i < 6; i++) snprintf(out + 7 + 2 * i, 3, "%02x", d[i]);
    return out;
}

/* A thread that batches (log_batch) collects its lines here and writes them with one
 * write(2) per log_flush. At most PIPE_BUF bytes, so that a batch written to a pipe is as
 * atomic as a single line is: batches and other threads' lines never interleave. */
static _Thread_local char batch_buf[PIPE_BUF];
static _Thread_local size_t batch_len;
static _Thread_local bool batching;

void log_flush(void)
{
    if (batch_len) (void)!write(2, batch_buf, batch_len);
    batch_len = 0;
}

void log_batch(bool on)
{
    if (!on) log_flush();
    batching = on;
}

/* One whole line (newline included) to stderr, or into this thread's batch. */
static void out(const char *line, size_t n)
{
    if (batching) {
        if (batch_len + n > sizeof batch_buf) log_flush();
        if (n <= sizeof batch_buf) {
            memcpy(batch_buf + batch_len, line, n);
            batch_len += n;
            return;
        }
    }
    (void)!write(2, line, n);   /* one write: lines from threads never interleave */
}

static void emit(json_t *o)
{
    char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(o);
    if (!line) return;
    log_redact(line);
    size_t n = strlen(line);
    line = xrealloc(line, n + 2);
    line[n] = '\n';
    out(line, n + 1);
    free(line);
}

/* "2026-11-26T03:45:07.123Z". The part up to the seconds is formatted once per second per
 * thread (gmtime_r and strftime were a visible share of a small request's log line). */
static void timestamp(char ts[40])
{
    static _Thread_local time_t last = (time_t)-1;
    static _Thread_local char secs[32];
    static _Thread_local size_t secs_len;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (tv.tv_sec != last) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        secs_len = strftime(secs, sizeof secs, "%Y-%m-%dT%H:%M:%S", &tm);
        last = tv.tv_sec;
    }
    long ms = (long)(tv.tv_usec / 1000);
    memcpy(ts, secs, secs_len);
    char *p = ts + secs_len;
    *p++ = '.';
    *p++ = (char)('0' + ms / 100);
    *p++ = (char)('0' + ms / 10 % 10);
    *p++ = (char)('0' + ms % 10);
    *p++ = 'Z';
    *p = '\0';
}

static json_t *base(log_level level)
{
    char ts[40];
    timestamp(ts);
    return json_pack("{s:s, s:s, s:s}", "ts", ts, "level", LEVEL[level], "component", g_component);
}

void log_msg(log_level level, const char *event, const char *fmt, ...)
{
    if (level < g_min) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *o = base(level);
    json_object_set_new(o, "event", json_string(event));
    json_object_set_new(o, "msg", json_string(msg));
    emit(o);
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *p)
{
    unsigned c = p[0];
    size_t n = c < 0xc2 ? 0 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : c < 0xf5 ? 4 : 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    if (n == 3 && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f))) return 0; /* overlong, surrogates */
    if (n == 4 && ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f))) return 0;
    return n;
}

/* Append s as a JSON string, quotes included, to b at *k, using at most max bytes (at least 2):
 * a longer s is cut, never inside an escape or a character. Bytes that are not UTF-8 become
 * U+FFFD, so the line stays valid JSON whatever a client put in its path. */
static void put_json_string(char *b, size_t *k, size_t max, const char *s)
{
    char *o = b + *k, *end = o + max - 1;   /* room kept for the closing quote */
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        char esc[8];
        size_t n = 1;
        const unsigned char *from = p;
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\', esc[1] = (char)*p++, n = 2, from = (const unsigned char *)esc;
        } else if (*p < 0x20 || *p == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", *p++);
            n = 6, from = (const unsigned char *)esc;
        } else if (*p >= 0x80 && !(n = utf8_len(p))) {
            memcpy(esc, "\\ufffd", 6);
            p++, n = 6, from = (const unsigned char *)esc;
        } else {
            p += n;
        }
        if (n > (size_t)(end - o)) break;
        memcpy(o, from, n);
        o += n;
    }
    *o++ = '"';
    *k = (size_t)(o - b);
}

/* The request line is printed directly (it is the one line per request, and a jansson object
 * per line was a sixth of a small request's cost); same fields and order as log_msg's lines. */
void log_request(const char *method, const char *path, int status, double ms,
                 const char *correlation_id)
{
    log_request_fields(method, path, status, ms, correlation_id, NULL);
}

void log_request_fields(const char *method, const char *path, int status, double ms,
                        const char *correlation_id, const char *const *fields)
{
    if (LOG_INFO < g_min) return;
    /* At most 5.1 KiB up to correlation_id, then 8 fields of at most 64 + 2 + 256 bytes. */
    char ts[40], num[64], line[8192];
    timestamp(ts);
    size_t k = (size_t)snprintf(line, 128, "{\"ts\":\"%s\",\"level\":\"info\",\"component\":", ts);
    put_json_string(line, &k, 128, g_component);
    k += (size_t)snprintf(line + k, 64, ",\"event\":\"request\",\"method\":");
    put_json_string(line, &k, 128, method ? method : "");
    k += (size_t)snprintf(line + k, 64, ",\"path\":");
    put_json_string(line, &k, 4096, path ? path : "");   /* longer paths are cut */
    /* ms with two decimals, written as jansson writes a real: "%.6g", ".0" if no point */
    snprintf(num, sizeof num, "%.6g", (double)(long)(ms * 100) / 100);
    if (!strpbrk(num, ".en")) strcat(num, ".0");
    k += (size_t)snprintf(line + k, 128, ",\"status\":%d,\"ms\":%s", status, num);
    if (correlation_id) {
        k += (size_t)snprintf(line + k, 64, ",\"correlation_id\":");
        put_json_string(line, &k, 256, correlation_id);
    }
    for (int i = 0; fields && i < 16 && fields[i]; i += 2) {
        if (!fields[i + 1]) continue;
        line[k++] = ',';
        put_json_string(line, &k, 64, fields[i]);
        line[k++] = ':';
        put_json_string(line, &k, 256, fields[i + 1]);
    }
    line[k++] = '}';
    line[k] = '\0';
    log_redact(line);
    k = strlen(line);
    line[k++] = '\n';
    out(line, k);
}
