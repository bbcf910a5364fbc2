/* config — see config.h. */
#include "core/config.h"

#include "core/util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct {
    char *key;     /* normalised: segments joined by "__" */
    char *value;
} entry;

struct config {
    entry *e;
    size_t n, cap;
};

/* "A:B__c" -> "A__B__c" */
static char *normalise(const char *k)
{
    char *out = xmalloc(strlen(k) * 2 + 1), *o = out;
    for (; *k; k++) {
        if (*k == ':') { *o++ = '_'; *o++ = '_'; }
        else *o++ = *k;
    }
    *o = '\0';
    return out;
}

static void set(config *c, const char *key, const char *value)
{
    char *k = normalise(key);
    for (size_t i = 0; i < c->n; i++)
        if (strcasecmp(c->e[i].key, k) == 0) {
            free(k);
            free(c->e[i].value);
            c->e[i].value = xstrdup(value);
            return;
        }
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 32;
        c->e = xrealloc(c->e, c->cap * sizeof *c->e);
    }
    c->e[c->n++] = (entry){k, xstrdup(value)};
}

static void flatten(config *c, const char *prefix, json_t *v)
{
    char buf[32];
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) {
            char *p = prefix ? xasprintf("%s__%s", prefix, k) : xstrdup(k);
            flatten(c, p, x);
            free(p);
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) {
            char *p = xasprintf("%s__%zu", prefix, i);
            flatten(c, p, x);
            free(p);
        }
    } else if (prefix) {
        if (json_is_string(v)) set(c, prefix, json_string_value(v));
        else if (json_is_true(v)) set(c, prefix, "true");
        else if (json_is_false(v)) set(c, prefix, "false");
        else if (json_is_integer(v)) {
            snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
            set(c, prefix, buf);
        } else if (json_is_real(v)) {
            snprintf(buf, sizeof buf, "%g", json_real_value(v));
            set(c, prefix, buf);
        }
    }
}

config *config_load(const char *json_path, char *const *envp, char *err, size_t errlen)
{
    config *c = xcalloc(1, sizeof *c);
    FILE *f = json_path ? fopen(json_path, "r") : NULL;
    if (f) {
        json_error_t je;
        json_t *root = json_loadf(f, 0, &je);
        fclose(f);
        if (!root || !json_is_object(root)) {
            snprintf(err, errlen, "%s:%d:%d: %s", json_path, je.line, je.column,
                     root ? "the top level must be an object" : je.text);
            json_decref(root);
            config_free(c);
            return NULL;
        }
        flatten(c, NULL, root);
        json_decref(root);
    }
    for (char *const *e = envp; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || eq == *e) continue;
        char *k = xstrndup(*e, (size_t)(eq - *e));
        set(c, k, eq + 1);
        free(k);
    }
    return c;
}

void config_free(config *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->e[i].key);
        free(c->e[i].value);
    }
    free(c->e);
    free(c);
}

const char *config_get(const config *c, const char *key)
{
    char *k = normalise(key);
    const char *v = NULL;
    for (size_t i = 0; i < c->n && !v; i++)
        if (strcasecmp(c->e[i].key, k) == 0) v = c->e[i].value;
    free(k);
    return v;
}

bool config_bool(const config *c, const char *key, bool dflt, bool *ok)
{
    const char *v = config_get(c, key);
    *ok = true;
    if (!v) return dflt;
    if (!strcasecmp(v, "true") || !strcmp(v, "1")) return true;
    if (!strcasecmp(v, "false") || !strcmp(v, "0")) return false;
    *ok = false;
    return dflt;
}

size_t config_children(const config *c, const char *prefix, const char ***names)
{
    char *p = normalise(prefix);
    size_t pl = strlen(p), n = 0;
    const char **out = xcalloc(c->n + 1, sizeof *out);
    char **seen = xcalloc(c->n + 1, sizeof *seen);
    for (size_t i = 0; i < c->n; i++) {
        const char *k = c->e[i].key;
        if (strncasecmp(k, p, pl) != 0 || strncmp(k + pl, "__", 2) != 0) continue;
        const char *seg = k + pl + 2, *end = strstr(seg, "__");
        size_t sl = end ? (size_t)(end - seg) : strlen(seg);
        if (sl == 0) continue;
        bool dup = false;
        for (size_t j = 0; j < n && !dup; j++)
            dup = strlen(seen[j]) == sl && strncasecmp(seen[j], seg, sl) == 0;
        if (dup) continue;
        seen[n] = xstrndup(seg, sl);
        out[n] = seen[n];
        n++;
    }
    free(p);
    /* The names are kept alive in a hidden tail so one free() of *names releases all. */
    size_t bytes = (n + 1) * sizeof(char *);
    for (size_t j = 0; j < n; j++) bytes += strlen(seen[j]) + 1;
    char **block = xmalloc(bytes);
    char *s = (char *)(block + n + 1);
    for (size_t j = 0; j < n; j++) {
        size_t l = strlen(seen[j]) + 1;
        memcpy(s, seen[j], l);
        block[j] = s;
        s += l;
        free(seen[j]);
    }
    block[n] = NULL;
    free(seen);
    free(out);
    *names = (const char **)block;
    return n;
}

size_t config_list(const config *c, const char *prefix, char ***items)
{
    size_t n = 0;
    char **out = NULL;
    for (;; n++) {
        char *k = xasprintf("%s__%zu", prefix, n);
        const char *v = config_get(c, k);
        free(k);
        if (!v) break;
        out = xrealloc(out, (n + 2) * sizeof *out);
        out[n] = xstrdup(v);
        out[n + 1] = NULL;
    }
    const char *scalar = n ? NULL : config_get(c, prefix);
    if (scalar) {
        char *copy = xstrdup(scalar), *save = NULL;
        for (char *t = strtok_r(copy, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
            out = xrealloc(out, (n + 2) * sizeof *out);
            out[n++] = xstrdup(t);
            out[n] = NULL;
        }
        free(copy);
    }
    /* Blank entries are dropped, as Microsoft.Identity.Web drops blank scopes. */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (out[i][strspn(out[i], " \t")] == '\0') free(out[i]);
        else out[k++] = out[i];
    }
    if (!out) out = xcalloc(1, sizeof *out);
    out[k] = NULL;
    *items = out;
    return k;
}

void config_list_free(char **items)
{
    for (char **p = items; p && *p; p++) free(*p);
    free(items);
}

void config_each(const config *c, void (*cb)(void *ctx, const char *key, const char *value),
                 void *ctx)
{
    for (size_t i = 0; i < c->n; i++) cb(ctx, c->e[i].key, c->e[i].value);
}
