/* form — see form.h. */
#include "core/form.h"

#include "core/util.h"

#include <stdlib.h>
#include <string.h>

static int hex(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode one name or value: '+' is a space, %XX a byte. NULL on a bad escape or NUL. */
static char *unescape(const char *s, size_t n)
{
    char *out = xmalloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            int h, l;
            if (i + 2 >= n) goto bad;
            if ((h = hex(s[i + 1])) < 0 || (l = hex(s[i + 2])) < 0) goto bad;
            c = (char)(h << 4 | l);
            i += 2;
        }
        if (c == '\0') goto bad;
        *o++ = c;
    }
    *o = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

form *form_parse(const char *body, size_t len)
{
    if (len > FORM_MAX_BYTES) return NULL;
    form *f = xcalloc(1, sizeof *f);
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if (stop > p) {
            if (memchr(p, '\0', (size_t)(stop - p))) goto bad;
            const char *eq = memchr(p, '=', (size_t)(stop - p));
            const char *name_end = eq ? eq : stop;
            char *name = unescape(p, (size_t)(name_end - p));
            char *value = eq ? unescape(eq + 1, (size_t)(stop - eq - 1)) : xstrdup("");
            if (!name || !value) { free(name); free(value); goto bad; }
            if (form_get(f, name)) {          /* first value wins */
                free(name);
                free(value);
            } else {
                if (f->n == FORM_MAX_FIELDS) { free(name); free(value); goto bad; }
                f->name[f->n] = name;
                f->value[f->n] = value;
                f->n++;
            }
        }
        if (!amp) break;
        p = amp + 1;   /* not stop + 1: past the end + 1 is undefined pointer arithmetic */
    }
    return f;
bad:
    form_free(f);
    return NULL;
}

const char *form_get(const form *f, const char *name)
{
    for (size_t i = 0; f && i < f->n; i++)
        if (strcmp(f->name[i], name) == 0) return f->value[i];
    return NULL;
}

void form_free(form *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) {
        free(f->name[i]);
        free(f->value[i]);
    }
    free(f);
}

char *form_escape(const char *s)
{
    static const char hexd[] = "0123456789ABCDEF";
    char *out = xmalloc(strlen(s) * 3 + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hexd[*p >> 4];
            *o++ = hexd[*p & 15];
        }
    }
    *o = '\0';
    return out;
}
