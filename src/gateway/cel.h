/* cel — the subset of CEL (Common Expression Language, github.com/google/cel-spec) that
 * agentgateway's authorization rules use, over jansson values, and agentgateway's rule
 * sets (allow / deny / require). docs/gateway-cel.md lists what is supported.
 *
 * Usage
 *     char err[256];
 *     int line, col;
 *     cel_program *p = cel_compile("jwt.appid == 'A' && '11' in jwt.xms_act_fct.split(' ')",
 *                                  err, sizeof err, &line, &col);
 *     if (!p) die("rule: %s", err);                 // "expected ')' at 1:17", line 1, col 17
 *     json_t *act = json_pack("{s:{s:s, s:s}}", "jwt", "appid", "A", "xms_act_fct", "3 11");
 *     if (cel_eval_bool(p, act) == CEL_TRUE) ...    // CEL_TRUE, CEL_FALSE or CEL_ERROR
 *     json_t *v;
 *     if (cel_eval(p, act, &v, err, sizeof err) == 0) { ...; json_decref(v); }
 *     json_decref(act);
 *     cel_program_free(p);
 *
 *     cel_rules *rs = cel_rules_new();
 *     if (cel_rules_add(rs, CEL_RULE_ALLOW, "mcp.tool.name == 'echo'", err, sizeof err,
 *                       NULL, NULL) != 0) die("%s", err);
 *     bool allowed = cel_rules_decide(rs, act);
 *     cel_rules_free(rs);
 *
 * Contract
 *  - Values are jansson values: CEL int is a JSON integer (int64), double a JSON real,
 *    string, bool, null, list (array) and map (object, string keys). The activation is a
 *    JSON object whose members are the variables: agentgateway's are jwt (the claims),
 *    mcp ({"tool":{"name","target"}}), request ({"method","path","headers"}) and
 *    source ({"address"}).
 *  - Ownership: cel_compile copies the source; the program owns everything in it and is
 *    freed with cel_program_free (NULL is fine). cel_eval's *out is a new value of the
 *    caller's own (a copy when the result is part of the activation), released with
 *    json_decref.
 *  - Errors: cel_compile returns NULL and writes "<reason> at LINE:COL" into err, with
 *    the 1-based line and column (in characters) in *line and *col (either may be NULL;
 *    both 0 when no position applies). cel_eval returns 0, or -1 with the reason in err
 *    and *out NULL. A runtime error (missing variable, no such key, type mismatch,
 *    overflow, division by zero, a limit) is a CEL error value: && and || absorb it
 *    commutatively as CEL does (false && error is false, true || error is true), and
 *    anything else passes it up. Only the step limit is never absorbed.
 *  - Threads: a compiled program and a rule set are immutable once built and may be
 *    evaluated from any number of threads at once, on the same activation too: evaluation
 *    only reads the program and the activation (not even their reference counts change).
 *    The caller must not change the activation while an evaluation reads it, and
 *    cel_rules_add must not run concurrently with anything else on the same rule set.
 *  - Limits (each one a compile error or an evaluation error, never a crash or a blowup):
 *    source length CEL_MAX_SOURCE, nesting CEL_MAX_DEPTH (parentheses, operands, the
 *    height of the expression tree; && and || chains are flat), CEL_MAX_LIST elements in
 *    a list built by the expression, CEL_MAX_STRING bytes in a string it builds,
 *    CEL_MAX_STEPS units of work per evaluation (one per node, per list element or map
 *    entry visited, per 64 bytes of string touched) and CEL_MAX_RULES rules per set.
 */
#ifndef AGENTID_GATEWAY_CEL_H
#define AGENTID_GATEWAY_CEL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define CEL_MAX_SOURCE 4096          /* bytes of source text */
#define CEL_MAX_DEPTH  64            /* nesting / expression tree height */
#define CEL_MAX_LIST   1024          /* elements of a list the expression builds */
#define CEL_MAX_STRING (64 * 1024)   /* bytes of a string the expression builds */
#define CEL_MAX_STEPS  100000        /* work units per evaluation */
#define CEL_MAX_RULES  256           /* rules in one cel_rules */

typedef struct cel_program cel_program;

typedef enum { CEL_ERROR = -1, CEL_FALSE = 0, CEL_TRUE = 1 } cel_result;

/* Parse and check src (NUL-terminated). Unknown functions and wrong argument counts are
 * compile errors. Returns the program, or NULL with err / *line / *col filled. */
cel_program *cel_compile(const char *src, char *err, size_t errlen, int *line, int *col);

/* Evaluate against activation (a JSON object; NULL means no variables). 0 with *out a
 * new reference, or -1 with *out NULL and the CEL error's reason in err. */
int cel_eval(const cel_program *p, const json_t *activation, json_t **out, char *err,
             size_t errlen);

/* CEL_TRUE or CEL_FALSE if the result is a bool; CEL_ERROR for an error or any other type. */
cel_result cel_eval_bool(const cel_program *p, const json_t *activation);

/* The source the program was compiled from (owned by the program). */
const char *cel_program_source(const cel_program *p);

void cel_program_free(cel_program *p);

/* ---- rule sets: agentgateway's RuleSet (crates/agentgateway/src/http/authorization.rs) ---- */

typedef enum { CEL_RULE_ALLOW, CEL_RULE_DENY, CEL_RULE_REQUIRE } cel_rule_kind;

typedef struct cel_rules cel_rules;

/* An empty rule set (it allows everything). Free with cel_rules_free (NULL is fine). */
cel_rules *cel_rules_new(void);
void cel_rules_free(cel_rules *rs);

/* Compile src and add it as a rule of the given kind. 0, or -1 with err (and *line /
 * *col, either may be NULL) filled by cel_compile, or for more than CEL_MAX_RULES rules;
 * the set is unchanged on failure. */
int cel_rules_add(cel_rules *rs, cel_rule_kind kind, const char *src, char *err,
                  size_t errlen, int *line, int *col);

/* "allow", "deny" or "require" (the YAML keys) into *kind: 0, or -1 for anything else. */
int cel_rule_kind_parse(const char *name, cel_rule_kind *kind);
const char *cel_rule_kind_name(cel_rule_kind kind);

size_t cel_rules_count(const cel_rules *rs);

/* The decision, as agentgateway's RuleSets::validate: no rules -> allow; any deny rule
 * true -> deny; any require rule not true -> deny; any allow rule true -> allow; else
 * deny if there is an allow rule (allow-list), allow if there are only deny / require
 * rules. A rule "is true" only when it evaluates to the bool true: an error or any other
 * value does not match (so an erroring deny rule fails open; prefer allow / require). */
bool cel_rules_decide(const cel_rules *rs, const json_t *activation);

#endif
