/* log — see log.h. */
#include "core/log.h"

#include "core/util.h"

#include <jansson.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
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

static void emit(json_t *o)
{
    char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    json_decref(o);
    if (!line) return;
    log_redact(line);
    size_t n = strlen(line);
    line = xrealloc(line, n + 2);
    line[n] = '\n';
    (void)!write(2, line, n + 1);   /* one write: lines from threads never interleave */
    free(line);
}

static json_t *base(log_level level)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[40];
    size_t k = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + k, sizeof ts - k, ".%03ldZ", (long)(tv.tv_usec / 1000));
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

void log_request(const char *method, const char *path, int status, double ms,
                 const char *correlation_id)
{
    if (LOG_INFO < g_min) return;
    json_t *o = base(LOG_INFO);
    json_object_set_new(o, "event", json_string("request"));
    json_object_set_new(o, "method", json_string(method));
    json_object_set_new(o, "path", json_string(path));
    json_object_set_new(o, "status", json_integer(status));
    json_object_set_new(o, "ms", json_real((double)(long)(ms * 100) / 100));
    if (correlation_id) json_object_set_new(o, "correlation_id", json_string(correlation_id));
    emit(o);
}
