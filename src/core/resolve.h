/* resolve — host names to addresses for event loops, which must never wait for DNS.
 *
 * Usage
 *     struct sockaddr_storage a[4];
 *     socklen_t len[4];
 *     size_t n = resolve_cached("api.internal", 8080, a, len, 4);
 *     if (!n) ... not known (yet): go another way this time (e.g. libcurl, which resolves itself)
 *
 * Contract
 *  - resolve_cached never blocks on DNS: it answers from a process-wide cache. A name it has not
 *    seen, or whose entry is older than RESOLVE_FRESH_S, is looked up (getaddrinfo) on a thread
 *    of its own, one lookup per name at a time; meanwhile an old entry is still answered (as
 *    nginx's resolver does) and an unknown name gets 0. A name that did not resolve gets 0 for
 *    RESOLVE_NEGATIVE_S before it is tried again.
 *  - Addresses: TCP, IPv4 ones first, each family in the order getaddrinfo gave (RFC 6724), at
 *    most max (and RESOLVE_MAX), the port set; literals are answered at once without a thread.
 *  - Thread-safe (one mutex, held only to copy an entry). At most RESOLVE_NAMES names are kept;
 *    past that, names not kept are answered 0 (the caller's other way). Entries live as long as
 *    the process.
 */
#ifndef AGENTID_CORE_RESOLVE_H
#define AGENTID_CORE_RESOLVE_H

#include <stddef.h>
#include <sys/socket.h>

#define RESOLVE_MAX         4
#define RESOLVE_NAMES       256
#define RESOLVE_FRESH_S     30
#define RESOLVE_NEGATIVE_S  5

size_t resolve_cached(const char *host, unsigned port, struct sockaddr_storage *out, socklen_t *lens, size_t max);

#endif
