/* util — see util.h. */
#include "core/util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void oom(void)
{
    static const char msg[] = "agentid: out of memory\n";
    (void)!write(2, msg, sizeof msg - 1);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) oom();
    return p;
}

void *xcalloc(size_t n, size_t m)
{
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (!p) oom();
    return p;
}

void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) oom();
    return p;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0) oom();
    return s;
}

void util_random(void *buf, size_t len)
{
    if (RAND_bytes(buf, (int)len) != 1) {
        static const char msg[] = "agentid: random number generator failed\n";
        (void)!write(2, msg, sizeof msg - 1);
        abort();
    }
}

void util_guid(char out[37])
{
    unsigned char b[16];
    util_random(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* RFC 9562 §5.4: version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10 */
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
             b[12], b[13], b[14], b[15]);
}

bool util_is_guid(const char *s)
{
    if (!s || strlen(s) != 36) return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c = (char)tolower((unsigned char)c);
    return c - 'a' + 10;
}

bool util_guid_bytes_le(const char *guid, unsigned char out[16])
{
    if (!util_is_guid(guid)) return false;
    unsigned char be[16];
    int k = 0;
    for (int i = 0; i < 36 && k < 16; i++) {
        if (guid[i] == '-') continue;
        be[k++] = (unsigned char)(hexval(guid[i]) << 4 | hexval(guid[i + 1]));
        i++;
    }
    /* .NET Guid.ToByteArray(): the first three fields are little-endian. */
    static const int order[16] = {3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15};
    for (int i = 0; i < 16; i++) out[i] = be[order[i]];
    return true;
}

static int64_t time_offset;
static pthread_once_t time_once = PTHREAD_ONCE_INIT;

static void read_time_offset(void)
{
    const char *e = getenv("AGENTID_TIME_OFFSET");
    time_offset = e ? strtoll(e, NULL, 10) : 0;
}

int64_t util_now(void)
{
    pthread_once(&time_once, read_time_offset);
    return (int64_t)time(NULL) + time_offset;
}

void util_fmt_time(int64_t t, char out[32])
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, 32, "%Y-%m-%d %H:%M:%SZ", &tm);
}

void util_fmt_time_iso(int64_t t, char out[40])
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, 40, "%Y-%m-%dT%H:%M:%S.0000000Z", &tm);
}

bool util_streq_ct(const char *a, const char *b)
{
    if (!a || !b) return false;
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb) return false;
    return CRYPTO_memcmp(a, b, la) == 0;
}

bool util_str_ends_with(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && memcmp(s + ls - lx, suffix, lx) == 0;
}

bool util_str_starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

char *util_read_file(const char *path, size_t cap, size_t *len)
{
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t n = 0, size = 4096;
    buf = xmalloc(size);
    for (;;) {
        if (n + 1 >= size) {
            if (size > cap) { errno = EFBIG; goto fail; }
            size *= 2;
            buf = xrealloc(buf, size);
        }
        ssize_t r = read(fd, buf + n, size - n - 1);
        if (r < 0) { if (errno == EINTR) continue; goto fail; }
        if (r == 0) break;
        n += (size_t)r;
        if (n > cap) { errno = EFBIG; goto fail; }
    }
    close(fd);
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
fail:
    {
        int e = errno;
        close(fd);
        free(buf);
        errno = e;
        return NULL;
    }
}

int util_write_file(const char *path, const void *data, size_t len, unsigned mode)
{
    char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode);
    if (fd < 0) { free(tmp); return -1; }
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            int e = errno; close(fd); unlink(tmp); free(tmp); errno = e;
            return -1;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno; unlink(tmp); free(tmp); errno = e;
        return -1;
    }
    free(tmp);
    return 0;
}

uint64_t util_fnv1a(uint64_t h, const void *data, size_t n)
{
    for (const unsigned char *p = data, *e = p + n; p < e; p++) h = (h ^ *p) * UTIL_FNV_PRIME;
    return h;
}

int64_t util_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t util_mono_ms(void) { return util_mono_us() / 1000; }

void util_buf_add(char **buf, size_t *len, size_t *cap, const void *data, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 1024;
        while (c < *len + n + 1) c *= 2;
        *buf = xrealloc(*buf, c);
        *cap = c;
    }
    if (n) memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
}

void util_free_secret(char *s)
{
    if (!s) return;
    explicit_bzero(s, strlen(s));
    free(s);
}
