/* metrics — the gateway's request counters and latency histograms, in Prometheus' text format
 * under agentgateway's metric names, for `config.statsAddr` (docs/gateway.md).
 *
 * Usage
 *     metrics_count(port, "api", "GET", 200, 0.0042);   // once per answered request
 *     size_t len;
 *     char *text = metrics_render(&len);                // GET /metrics; free(text)
 *
 * Contract
 *  - One series per (bind port, route, method, status): agentgateway_requests_total and
 *    agentgateway_request_duration_seconds (a histogram, seconds to the answer's headers).
 *    Methods outside the standard ones count as "OTHER", statuses outside 100-599 as 0, so
 *    clients cannot make series up; past METRICS_SERIES series, new ones count under route
 *    "(other)". Series live as long as the process: a reload that renames a route starts new
 *    ones, the old ones stay (Prometheus counters never go back).
 *  - Thread-safe. metrics_count takes no lock once its series exists (relaxed atomics, spread
 *    over stripes by thread so two event loops do not share cache lines); a new series is
 *    added under a mutex. metrics_render sums the stripes: a scrape during traffic sees each
 *    counter at some moment, the usual for Prometheus.
 *  - Route names are copied (at most 63 bytes, cut beyond) and escaped in the output.
 */
#ifndef AGENTID_GATEWAY_METRICS_H
#define AGENTID_GATEWAY_METRICS_H

#include <stddef.h>

#define METRICS_SERIES 1024

void metrics_count(unsigned port, const char *route, const char *method, int status, double seconds);
/* The exposition text (format 0.0.4), NUL-terminated; the caller frees it. */
char *metrics_render(size_t *len);

#endif
