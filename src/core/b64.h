/* b64 — base64 and base64url (RFC 4648 §4, §5).
 *
 * Contract: every function returns a NUL-terminated string the caller frees,
 * or NULL on invalid input or out of memory. Decoders accept base64url with or
 * without padding and reject any character outside the alphabet.
 */
#ifndef AGENTID_CORE_B64_H
#define AGENTID_CORE_B64_H

#include <stddef.h>

char *b64url_encode(const void *data, size_t len);
/* Decoded bytes (NUL-terminated for convenience); *out_len gets their count. */
unsigned char *b64url_decode(const char *s, size_t slen, size_t *out_len);
char *b64_encode(const void *data, size_t len);            /* standard alphabet, padded */
unsigned char *b64_decode(const char *s, size_t slen, size_t *out_len);

#endif
