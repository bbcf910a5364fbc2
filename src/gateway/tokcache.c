/* tokcache — see tokcache.h. A direct-mapped table: FNV-1a of the token picks the slot. */
#include "gateway/tokcache.h"

#include "core/util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *token;                 /* NULL: empty slot */
    size_t len;
    uint64_t scope;
    char *claims;                /* may be NULL */
    int64_t until;
} entry;

struct tokcache {
    pthread_mutex_t mu;          /* guards slots */
    entry *slots;
    size_t n;
};

/* The slot of a token: FNV-1a of its length and its last 32 bytes. Those are the end of the
 * signature, which differs between any two tokens an issuer signed; hashing all of a 1-2 KB
 * token cost as much as the rest of a cache hit. Only verified tokens are stored, so nobody
 * can fill a slot on purpose, and a collision only replaces an entry (lookups compare the
 * whole token). */
static uint64_t slot_hash(const char *s, size_t len)
{
    size_t from = len > 32 ? len - 32 : 0;
    return util_fnv1a((UTIL_FNV_BASIS ^ len) * UTIL_FNV_PRIME, s + from, len - from);
}

tokcache *tokcache_new(size_t slots)
{
    tokcache *c = xcalloc(1, sizeof *c);
    c->n = slots ? slots : 1;
    c->slots = xcalloc(c->n, sizeof *c->slots);
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

static void entry_clear(entry *e)
{
    free(e->token);
    free(e->claims);
    memset(e, 0, sizeof *e);
}

void tokcache_free(tokcache *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) entry_clear(&c->slots[i]);
    free(c->slots);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void tokcache_put(tokcache *c, uint64_t scope, const char *token, const char *claims, int64_t until)
{
    size_t len = strlen(token);
    entry fresh = {.token = xstrdup(token), .len = len, .scope = scope,
                   .claims = claims ? xstrdup(claims) : NULL, .until = until};
    pthread_mutex_lock(&c->mu);
    entry *e = &c->slots[slot_hash(token, len) % c->n];
    entry old = *e;
    *e = fresh;
    pthread_mutex_unlock(&c->mu);
    entry_clear(&old); /* freed outside the lock */
}

bool tokcache_get(tokcache *c, uint64_t scope, const char *token, int64_t now, char **claims)
{
    size_t len = strlen(token);
    bool hit = false;
    if (claims) *claims = NULL;
    pthread_mutex_lock(&c->mu);
    const entry *e = &c->slots[slot_hash(token, len) % c->n];
    if (e->token && e->scope == scope && e->len == len && now < e->until && !memcmp(e->token, token, len)) {
        hit = true;
        if (claims && e->claims) *claims = xstrdup(e->claims);
    }
    pthread_mutex_unlock(&c->mu);
    return hit;
}

size_t tokcache_count(tokcache *c)
{
    size_t k = 0;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->n; i++) k += c->slots[i].token != NULL;
    pthread_mutex_unlock(&c->mu);
    return k;
}
