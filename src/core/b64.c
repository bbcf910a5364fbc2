/* b64 — see b64.h. Small enough to write once; OpenSSL's EVP_EncodeBlock has no url alphabet. */
#include "core/b64.h"

#include "core/util.h"

#include <stdlib.h>
#include <string.h>

static const char STD[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static char *encode(const unsigned char *in, size_t len, const char *alpha, bool pad)
{
    char *out = xmalloc(4 * ((len + 2) / 3) + 1), *o = out;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        *o++ = alpha[v >> 18 & 63];
        *o++ = alpha[v >> 12 & 63];
        *o++ = alpha[v >> 6 & 63];
        *o++ = alpha[v & 63];
    }
    if (i < len) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0);
        *o++ = alpha[v >> 18 & 63];
        *o++ = alpha[v >> 12 & 63];
        if (i + 1 < len) *o++ = alpha[v >> 6 & 63];
        else if (pad) *o++ = '=';
        if (pad) *o++ = '=';
    }
    *o = '\0';
    return out;
}

static int val(char c, bool url)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == (url ? '-' : '+')) return 62;
    if (c == (url ? '_' : '/')) return 63;
    return -1;
}

static unsigned char *decode(const char *s, size_t slen, size_t *out_len, bool url)
{
    while (slen && s[slen - 1] == '=') slen--;   /* padding is optional */
    if (slen % 4 == 1) return NULL;              /* no valid encoding has this length */
    unsigned char *out = xmalloc(slen / 4 * 3 + 3), *o = out;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < slen; i++) {
        int v = val(s[i], url);
        if (v < 0) { free(out); return NULL; }
        acc = (acc << 6 | (unsigned)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (unsigned char)(acc >> bits);
        }
    }
    /* RFC 4648 §3.5: the unused low bits of the last character must be zero, so that every
     * byte string has exactly one encoding (a signature cannot be respelled). */
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
        free(out);
        return NULL;
    }
    *o = '\0';
    if (out_len) *out_len = (size_t)(o - out);
    return out;
}

char *b64url_encode(const void *data, size_t len) { return encode(data, len, URL, false); }
char *b64_encode(const void *data, size_t len) { return encode(data, len, STD, true); }

unsigned char *b64url_decode(const char *s, size_t slen, size_t *out_len)
{
    return decode(s, slen, out_len, true);
}

unsigned char *b64_decode(const char *s, size_t slen, size_t *out_len)
{
    return decode(s, slen, out_len, false);
}
