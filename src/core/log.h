/* log — one JSON object per line on stderr.
 *
 * Contract
 *  - Thread-safe: each line is written with a single write(2), or, on a thread that batches
 *    (log_batch), with that thread's other lines in one write(2) of at most PIPE_BUF bytes at
 *    its next log_flush; lines never interleave.
 *  - Never give a secret or a whole token to these functions. As a second line of
 *    defence every message is scanned and anything shaped like a JWT
 *    (three base64url segments starting "eyJ") is replaced by "[redacted-jwt]".
 *  - log_fingerprint() is the way to correlate a token in logs: a short hash.
 */
#ifndef AGENTID_CORE_LOG_H
#define AGENTID_CORE_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

/* Set the component name ("issuer", "sidecar", ...) and the lowest level printed.
 * Call once at start-up, before threads. AGENTID_LOG_LEVEL=debug|info|warn|error overrides. */
void log_init(const char *component, log_level min);

/* {"ts":"...","level":"info","component":"...","event":"<event>","msg":"<printf>"} */
void log_msg(log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* One access-log line: method, path (no query; cut at 4 KiB), status, duration, correlation id. */
void log_request(const char *method, const char *path, int status, double ms,
                 const char *correlation_id);

/* log_request with more fields after correlation_id, so that a request's details go on its one
 * line: fields holds name, value pairs ending with a NULL name (at most 8 pairs are printed);
 * each value is printed as a JSON string cut at 256 bytes, a pair with a NULL value is left out.
 * fields may be NULL (then this is log_request). Same rules: no secrets, no whole tokens. */
void log_request_fields(const char *method, const char *path, int status, double ms,
                        const char *correlation_id, const char *const *fields);

/* Batching, for an event loop that serves many requests per round: log_batch(true) makes the
 * calling thread keep its lines (up to PIPE_BUF bytes; a longer line is written at once) until
 * it calls log_flush, which writes them with one write(2) — the loop does so before it sleeps,
 * so a line waits at most one round. log_batch(false) flushes and stops batching. */
void log_batch(bool on);
void log_flush(void);

/* Replace JWT-shaped runs in s, in place. Returns s. Exposed for tests. */
char *log_redact(char *s);

/* "sha256:" + first 12 hex chars of SHA-256(data). out must hold 20 bytes. */
const char *log_fingerprint(const char *data, char out[20]);

#endif
