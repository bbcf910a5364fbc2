/* tokcache — a bounded cache of bearer tokens that passed jwtAuth, so that a client sending
 * the same token again is not charged another RSA verification.
 *
 * Usage
 *     tokcache *c = tokcache_new(1024);
 *     char *claims;
 *     if (!tokcache_get(c, scope, token, util_now(), &claims)) {
 *         ... verify the signature and the claims in full ...
 *         tokcache_put(c, scope, token, claims_text, valid_until);
 *     }
 *     tokcache_free(c);
 *
 * Contract
 *  - Only tokens that were verified in full (signature and claims) are to be put; refusals
 *    are never cached, so every bad token is checked every time.
 *  - An entry matches on the whole token string, compared byte for byte, and on scope (the
 *    caller's name for the rules the token passed: the same token checked against other rules
 *    must miss). The hash only picks the slot.
 *  - An entry is used while now < until; the caller makes until no later than the token's
 *    exp (plus the skew its checks allow) and bounds it (TOKCACHE_MAX_TTL_S after the
 *    verification), so a key removed from the JWKS stops counting within that time.
 *  - Bounded: a fixed number of slots, one entry each; a new entry replaces the one in its
 *    slot. Memory is at most slots × (token + claims) bytes.
 *  - Thread-safe (one mutex; lookups copy out what they return). Strings are copied in;
 *    *claims from tokcache_get is the caller's to free.
 */
#ifndef AGENTID_GATEWAY_TOKCACHE_H
#define AGENTID_GATEWAY_TOKCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TOKCACHE_MAX_TTL_S 60

typedef struct tokcache tokcache;

tokcache *tokcache_new(size_t slots);   /* slots >= 1 */
void tokcache_free(tokcache *c);         /* NULL is fine */
/* Remember token as verified under scope until the unix time until, with its claims as
 * JSON text (may be NULL). */
void tokcache_put(tokcache *c, uint64_t scope, const char *token, const char *claims, int64_t until);
/* true if token was put under scope and now < until; then *claims (if claims is not NULL)
 * gets a copy of the claims text (NULL if none was put). */
bool tokcache_get(tokcache *c, uint64_t scope, const char *token, int64_t now, char **claims);
/* Entries put and still held (for tests and metrics). */
size_t tokcache_count(tokcache *c);

#endif
