/* config — ASP.NET Core-style settings: an appsettings.json file overlaid by the environment.
 *
 * Keys are paths with "__" (or ":") between segments, compared case-insensitively, as
 * ASP.NET Core does: AzureAd__TenantId, DownstreamApis__graph__Scopes__0. The JSON file's
 * nested objects and arrays flatten to the same keys; an environment variable with the same
 * key wins.
 *
 * Contract: a config is immutable after config_load() and may be read from any thread.
 * Returned strings are borrowed from it. Errors: NULL with a reason in err.
 */
#ifndef AGENTID_CORE_CONFIG_H
#define AGENTID_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

typedef struct config config;

/* json_path may be NULL or name a file that does not exist (then only envp counts). */
config *config_load(const char *json_path, char *const *envp, char *err, size_t errlen);
void config_free(config *c);

/* The value of a key, or NULL. */
const char *config_get(const config *c, const char *key);
/* A boolean: "true"/"false" (any case), "1"/"0". *ok is false for anything else. */
bool config_bool(const config *c, const char *key, bool dflt, bool *ok);
/* The distinct next segments below prefix, in first-seen order (e.g. the API names under
 * "DownstreamApis"). Returns the count; *names is a borrowed-strings array the caller frees. */
size_t config_children(const config *c, const char *prefix, const char ***names);
/* A list: PREFIX__0, PREFIX__1, ... in index order, or else a scalar PREFIX split on spaces.
 * Returns the count; *items is a NULL-terminated array of new strings (config_list_free). */
size_t config_list(const config *c, const char *prefix, char ***items);
void config_list_free(char **items);
/* Visit every key and value (original key spelling). */
void config_each(const config *c, void (*cb)(void *ctx, const char *key, const char *value),
                 void *ctx);

#endif
