/* util — small helpers every part needs: randomness, GUIDs, time, strings.
 * All functions are thread-safe. Allocating functions return memory the caller frees
 * and abort on out-of-memory (xmalloc family), as h2o's h2o_mem_alloc does.
 */
#ifndef AGENTID_CORE_UTIL_H
#define AGENTID_CORE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define WARN_UNUSED __attribute__((warn_unused_result))

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Cryptographically random bytes (OpenSSL RAND_bytes); aborts if the RNG fails. */
void util_random(void *buf, size_t len);
/* Random version-4 GUID, lower case, 36 chars + NUL. */
void util_guid(char out[37]);
/* True for the 8-4-4-4-12 hex form. */
bool util_is_guid(const char *s);
/* The 16 bytes of a GUID in .NET (little-endian) order, as Entra encodes them. */
bool util_guid_bytes_le(const char *guid, unsigned char out[16]);

/* Seconds since the epoch; AGENTID_TIME_OFFSET (seconds) shifts it, for tests. */
int64_t util_now(void);
/* Monotonic clock (CLOCK_MONOTONIC): for deadlines and durations, not for dates. */
int64_t util_mono_us(void);
int64_t util_mono_ms(void);
/* "YYYY-MM-DD HH:MM:SSZ" (Entra's error timestamp form). out >= 21 bytes. */
void util_fmt_time(int64_t t, char out[32]);
/* "YYYY-MM-DDTHH:MM:SS.0000000Z" (Entra's long form, used in AADSTS texts). */
void util_fmt_time_iso(int64_t t, char out[40]);

/* Constant-time comparison of two NUL-terminated strings. */
bool util_streq_ct(const char *a, const char *b);
bool util_str_ends_with(const char *s, const char *suffix);
bool util_str_starts_with(const char *s, const char *prefix);

/* Whole file into memory (NUL-terminated); NULL with errno on failure; cap in bytes. */
char *util_read_file(const char *path, size_t cap, size_t *len);
/* FNV-1a, 64 bits: h (UTIL_FNV_BASIS to start, or a previous result to go on) over n bytes.
 * For hash tables and change detection, not against an adversary. */
#define UTIL_FNV_BASIS 14695981039346656037ULL
#define UTIL_FNV_PRIME 1099511628211ULL
uint64_t util_fnv1a(uint64_t h, const void *data, size_t n);
/* Append n bytes to the heap buffer *buf of *len bytes in *cap (all 0/NULL to start), growing
 * it (doubling, from 1 KiB) and keeping it NUL-terminated. Unbounded: the caller caps *len. */
void util_buf_add(char **buf, size_t *len, size_t *cap, const void *data, size_t n);
/* Overwrite the NUL-terminated secret s (a key, a token) and free it; NULL is fine. */
void util_free_secret(char *s);
/* Write atomically (temp file + rename) with the given mode. 0 or -1 with errno. */
int util_write_file(const char *path, const void *data, size_t len, unsigned mode) WARN_UNUSED;

#endif
