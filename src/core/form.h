/* form — application/x-www-form-urlencoded and query strings (WHATWG URL §5).
 *
 * Contract: form_parse() copies what it keeps; the caller frees the result with
 * form_free(). Input longer than FORM_MAX_BYTES, more than FORM_MAX_FIELDS fields,
 * a bad %-escape, or a NUL byte after decoding makes it fail (NULL) — a token
 * endpoint answers that with invalid_request. Repeated names keep the first value.
 */
#ifndef AGENTID_CORE_FORM_H
#define AGENTID_CORE_FORM_H

#include <stddef.h>

#define FORM_MAX_BYTES  (256 * 1024)
#define FORM_MAX_FIELDS 64

typedef struct {
    size_t n;
    char *name[FORM_MAX_FIELDS];
    char *value[FORM_MAX_FIELDS];
} form;

form *form_parse(const char *body, size_t len);
const char *form_get(const form *f, const char *name);
void form_free(form *f);

/* Percent-encode for a form or query value (unreserved kept). Caller frees. */
char *form_escape(const char *s);

#endif
