/* cel — see cel.h.
 *
 * Two halves. The parser (a lexer plus recursive descent, one function per precedence
 * level of the CEL grammar, cel-spec doc/langdef.md "Syntax") builds a tree of nodes that
 * is never changed after cel_compile returns. The evaluator walks that tree.
 *
 * Threads: values shared between evaluations (the activation, the program's literals)
 * are only ever read, never json_incref'd: jansson's reference counts are atomic, but
 * json_incref reads the count before it adds, which is a data race (ThreadSanitizer
 * reports it). So a value is either borrowed (shared, read only) or owned (made by this
 * evaluation, seen by this thread alone); a shared value that goes into a list of ours,
 * or out to the caller, is copied.
 *
 * Bounds: the source is at most CEL_MAX_SOURCE bytes and the tree at most CEL_MAX_DEPTH
 * high, so recursion is bounded; there are no loops or macros, so every node runs at most
 * once; the work inside a node (comparing, concatenating, splitting, `in`) is charged to
 * a per-evaluation step budget, and everything an expression builds is capped.
 */
#include "gateway/cel.h"

#include "core/util.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Structural comparison recurses into activation values, which jansson lets nest 2048
 * deep; stop well before a small thread stack would. */
#define CEL_MAX_COMPARE_DEPTH 256

/* ==== tokens ================================================================== */

typedef enum {
    T_EOF, T_INT, T_DOUBLE, T_STRING, T_IDENT, T_TRUE, T_FALSE, T_NULL, T_IN,
    T_LPAREN, T_RPAREN, T_LBRACKET, T_RBRACKET, T_LBRACE, T_RBRACE, T_DOT, T_COMMA,
    T_QUESTION, T_COLON, T_PLUS, T_MINUS, T_STAR, T_SLASH, T_PERCENT, T_NOT,
    T_EQ, T_NE, T_LT, T_LE, T_GT, T_GE, T_AND, T_OR,
} tok_kind;

typedef struct {
    tok_kind kind;
    size_t pos, len;   /* the lexeme in the source */
    uint64_t u;        /* T_INT: the magnitude (a leading '-' is a separate token) */
    double d;          /* T_DOUBLE */
    char *s;           /* T_STRING: decoded bytes, owned by the token until taken */
    size_t slen;
} token;

/* Operators' spelling, for messages. */
static const char *op_name(int op)
{
    switch (op) {
    case T_IN: return "in";
    case T_PLUS: return "+";
    case T_MINUS: return "-";
    case T_STAR: return "*";
    case T_SLASH: return "/";
    case T_PERCENT: return "%";
    case T_NOT: return "!";
    case T_EQ: return "==";
    case T_NE: return "!=";
    case T_LT: return "<";
    case T_LE: return "<=";
    case T_GT: return ">";
    case T_GE: return ">=";
    case T_AND: return "&&";
    case T_OR: return "||";
    default: return "?";
    }
}

/* ==== the tree ================================================================ */

typedef enum {
    N_LIT,      /* lit */
    N_LIST,     /* kid[]: the elements */
    N_IDENT,    /* name: a variable of the activation */
    N_SELECT,   /* kid[0].name */
    N_HAS,      /* has(kid[0].name) */
    N_INDEX,    /* kid[0][kid[1]] */
    N_CALL,     /* fn(kid[0], kid[1..]): kid[0] is the receiver, or size()'s argument */
    N_NOT,      /* !kid[0] */
    N_NEG,      /* -kid[0] */
    N_AND,      /* kid[0] && kid[1] && ...: flat, so long chains stay shallow */
    N_OR,       /* kid[0] || kid[1] || ... */
    N_COND,     /* kid[0] ? kid[1] : kid[2] */
    N_BIN,      /* kid[0] op kid[1] */
    N_MININT,   /* 9223372036854775808: valid only right after a '-' */
} node_kind;

typedef enum { F_SIZE, F_STARTS_WITH, F_ENDS_WITH, F_CONTAINS, F_SPLIT } fn_id;

typedef struct node node;
struct node {
    node_kind kind;
    int op;          /* N_BIN: a tok_kind; N_CALL: an fn_id */
    size_t pos;      /* where it starts in the source, for messages */
    int height;      /* 1 + the highest child */
    json_t *lit;     /* N_LIT, owned */
    char *name;      /* N_IDENT, N_SELECT, N_HAS, owned */
    node **kid;      /* owned array; the nodes themselves belong to the program */
    size_t nkid;
};

/* The functions, CEL standard library names. args excludes the receiver. */
static const struct {
    const char *name;
    fn_id id;
    bool global, method;
    size_t min_args, max_args;
} FUNCS[] = {
    {"size", F_SIZE, true, true, 0, 0},   /* size(x) takes its x as the receiver */
    {"startsWith", F_STARTS_WITH, false, true, 1, 1},
    {"endsWith", F_ENDS_WITH, false, true, 1, 1},
    {"contains", F_CONTAINS, false, true, 1, 1},
    {"split", F_SPLIT, false, true, 1, 2},   /* cel-go ext/strings: split(sep[, limit]) */
};

/* cel-spec langdef.md "Syntax": reserved words that may not name anything. */
static const char *const RESERVED[] = {
    "as", "break", "const", "continue", "else", "for", "function", "if", "import",
    "let", "loop", "package", "namespace", "return", "var", "void", "while",
};

struct cel_program {
    char *src;
    size_t len;
    node *root;
    node **nodes;   /* every node, for freeing */
    size_t nnodes;
};

/* 1-based line and column (in characters, counting UTF-8 lead bytes) of byte pos. */
static void line_col(const char *src, size_t len, size_t pos, int *line, int *col)
{
    int l = 1, c = 1;
    for (size_t i = 0; i < pos && i < len; i++) {
        unsigned char ch = (unsigned char)src[i];
        if (ch == '\n') {
            l++;
            c = 1;
        } else if ((ch & 0xC0) != 0x80) {
            c++;
        }
    }
    *line = l;
    *col = c;
}

/* A short, log-safe rendering of untrusted bytes: printable ASCII kept, the rest '?',
 * at most 48 bytes then "...". */
static void safe_text(char *out, size_t outlen, const char *s, size_t n)
{
    size_t o = 0, max = outlen > 4 ? outlen - 4 : 0;
    for (size_t i = 0; i < n && o < max && o < 48; i++) {
        unsigned char ch = (unsigned char)s[i];
        out[o++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    if (o < n && outlen >= 4) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    if (outlen) out[o < outlen ? o : outlen - 1] = '\0';
}

/* ==== parser ================================================================== */

typedef struct {
    const char *src;
    size_t len;
    size_t pos;        /* the lexer's position */
    token tok;         /* the current token */
    int depth;         /* parse_expr recursion */
    bool failed;
    char *err;
    size_t errlen;
    int line, col;
    node **nodes;      /* every node made, whatever happens to it */
    size_t nnodes, cap;
} parser;

__attribute__((format(printf, 3, 4)))
static void fail_at(parser *p, size_t pos, const char *fmt, ...)
{
    if (p->failed) return;   /* the first error is the one to report */
    p->failed = true;
    line_col(p->src, p->len, pos, &p->line, &p->col);
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (p->err && p->errlen) snprintf(p->err, p->errlen, "%s at %d:%d", msg, p->line, p->col);
}

static node *new_node(parser *p, node_kind kind, size_t pos)
{
    if (p->nnodes == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 32;
        p->nodes = xrealloc(p->nodes, p->cap * sizeof *p->nodes);
    }
    node *n = xcalloc(1, sizeof *n);
    n->kind = kind;
    n->pos = pos;
    n->height = 1;
    p->nodes[p->nnodes++] = n;
    return n;
}

static void add_kid(node *n, node *k)
{
    if ((n->nkid & (n->nkid - 1)) == 0)   /* 0, 1, 2, 4, ...: grow to the next power of 2 */
        n->kid = xrealloc(n->kid, (n->nkid ? 2 * n->nkid : 1) * sizeof *n->kid);
    n->kid[n->nkid++] = k;
    if (k->height + 1 > n->height) n->height = k->height + 1;
}

/* Check the height once the node is complete: NULL if it is too deep. */
static node *finish(parser *p, node *n)
{
    if (n->height > CEL_MAX_DEPTH) {
        fail_at(p, n->pos, "expression nested deeper than %d", CEL_MAX_DEPTH);
        return NULL;
    }
    return n;
}

static bool is_ident_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int hex_val(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static char peek_at(const parser *p, size_t i)
{
    return i < p->len ? p->src[i] : '\0';
}

/* UTF-8 for a code point already checked to be a Unicode scalar value. */
static size_t utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* One escape after the backslash at p->pos - 1 (langdef.md "String and Bytes Literals");
 * in a string literal every escape, \x and octal too, denotes a code point. Appends to
 * out; false (with the error recorded) on a bad escape. */
static bool lex_escape(parser *p, size_t esc_pos, char *out, size_t *o)
{
    char c = peek_at(p, p->pos);
    uint32_t cp = 0;
    int digits = 0, base = 16;
    switch (c) {
    case '\\': case '\'': case '"': case '`': case '?': cp = (uint32_t)c; break;
    case 'a': cp = 7; break;
    case 'b': cp = 8; break;
    case 'f': cp = 12; break;
    case 'n': cp = 10; break;
    case 'r': cp = 13; break;
    case 't': cp = 9; break;
    case 'v': cp = 11; break;
    case 'x': case 'X': digits = 2; break;
    case 'u': digits = 4; break;
    case 'U': digits = 8; break;
    case '0': case '1': case '2': case '3': digits = 3, base = 8; break;
    default:
        if (c >= 0x20 && c < 0x7f) fail_at(p, esc_pos, "invalid escape '\\%c'", c);
        else fail_at(p, esc_pos, "invalid escape");
        return false;
    }
    if (digits) {
        if (base == 16) p->pos++;   /* past x, u or U; octal digits start at once */
        for (int i = 0; i < digits; i++) {
            int v = hex_val(peek_at(p, p->pos));
            if (v < 0 || v >= base) {
                fail_at(p, esc_pos, "invalid escape: expected %d %s digits", digits,
                        base == 16 ? "hex" : "octal");
                return false;
            }
            cp = cp * (uint32_t)base + (uint32_t)v;
            p->pos++;
        }
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            fail_at(p, esc_pos, "invalid escape: U+%X is not a Unicode scalar value", cp);
            return false;
        }
    } else {
        p->pos++;
    }
    *o += utf8_put(out + *o, cp);
    return true;
}

/* A string literal starting at p->pos (any r/R prefix already consumed when raw). */
static void lex_string(parser *p, size_t start, bool raw)
{
    char q = p->src[p->pos];
    bool triple = peek_at(p, p->pos + 1) == q && peek_at(p, p->pos + 2) == q;
    p->pos += triple ? 3 : 1;
    /* Decoding never makes the text longer: every escape is at least as long as its UTF-8. */
    char *out = xmalloc(p->len - p->pos + 1);
    size_t o = 0;
    for (;;) {
        if (p->pos >= p->len) {
            fail_at(p, start, "unterminated string literal");
            goto bad;
        }
        char c = p->src[p->pos];
        if (triple && c == q && peek_at(p, p->pos + 1) == q && peek_at(p, p->pos + 2) == q) {
            p->pos += 3;
            break;
        }
        if (!triple && c == q) {
            p->pos++;
            break;
        }
        if (!triple && (c == '\n' || c == '\r')) {
            fail_at(p, p->pos, "newline in string literal (use '''...''' or \\n)");
            goto bad;
        }
        if (c == '\\' && !raw) {
            size_t esc = p->pos++;
            if (!lex_escape(p, esc, out, &o)) goto bad;
            continue;
        }
        out[o++] = c;
        p->pos++;
    }
    out[o] = '\0';
    p->tok.kind = T_STRING;
    p->tok.s = out;
    p->tok.slen = o;
    return;
bad:
    free(out);
}

static void lex_number(parser *p, size_t start)
{
    bool is_double = false;
    uint64_t u = 0;
    bool overflow = false;
    if (p->src[p->pos] == '0' && (peek_at(p, p->pos + 1) == 'x' || peek_at(p, p->pos + 1) == 'X')) {
        p->pos += 2;
        if (hex_val(peek_at(p, p->pos)) < 0) {
            fail_at(p, start, "hex literal needs digits");
            return;
        }
        for (int v; (v = hex_val(peek_at(p, p->pos))) >= 0; p->pos++) {
            if (u > (UINT64_MAX - (uint64_t)v) / 16) overflow = true;
            u = u * 16 + (uint64_t)v;
        }
    } else {
        for (; is_digit(peek_at(p, p->pos)); p->pos++) {
            uint64_t v = (uint64_t)(p->src[p->pos] - '0');
            if (u > (UINT64_MAX - v) / 10) overflow = true;
            u = u * 10 + v;
        }
        if (peek_at(p, p->pos) == '.' && is_digit(peek_at(p, p->pos + 1))) {
            is_double = true;
            for (p->pos++; is_digit(peek_at(p, p->pos)); p->pos++) {}
        }
        char e = peek_at(p, p->pos), s = peek_at(p, p->pos + 1);
        if ((e == 'e' || e == 'E') &&
            (is_digit(s) || ((s == '+' || s == '-') && is_digit(peek_at(p, p->pos + 2))))) {
            is_double = true;
            for (p->pos += 2; is_digit(peek_at(p, p->pos)); p->pos++) {}
        }
    }
    char next = peek_at(p, p->pos);
    if (next == 'u' || next == 'U') {
        fail_at(p, start, "unsigned integer literals are not supported");
        return;
    }
    if (is_ident_start(next) || is_digit(next) || next == '.') {
        fail_at(p, start, "malformed number");
        return;
    }
    if (is_double) {
        /* The lexeme is digits, '.', 'e' and a sign only: strtod reads it the same in
         * every locale whose decimal point is '.', which is all the gateway runs in. */
        char *text = xstrndup(p->src + start, p->pos - start), *end;
        double d = strtod(text, &end);
        bool whole = *end == '\0';
        free(text);
        if (!whole || !isfinite(d)) {
            fail_at(p, start, "double literal out of range");
            return;
        }
        p->tok.kind = T_DOUBLE;
        p->tok.d = d;
        return;
    }
    if (overflow || u > (uint64_t)INT64_MAX + 1) {
        fail_at(p, start, "integer literal out of range");
        return;
    }
    p->tok.kind = T_INT;
    p->tok.u = u;
}

static const struct {
    char text[3];
    tok_kind kind;
} PUNCT[] = {   /* two-character operators first */
    {"==", T_EQ}, {"!=", T_NE}, {"<=", T_LE}, {">=", T_GE}, {"&&", T_AND}, {"||", T_OR},
    {"(", T_LPAREN}, {")", T_RPAREN}, {"[", T_LBRACKET}, {"]", T_RBRACKET},
    {"{", T_LBRACE}, {"}", T_RBRACE}, {".", T_DOT}, {",", T_COMMA}, {"?", T_QUESTION},
    {":", T_COLON}, {"+", T_PLUS}, {"-", T_MINUS}, {"*", T_STAR}, {"/", T_SLASH},
    {"%", T_PERCENT}, {"!", T_NOT}, {"<", T_LT}, {">", T_GT},
};

/* Advance to the next token. On a lexical error the failure is recorded and the token
 * is T_EOF, which stops the parser. */
static void lex(parser *p)
{
    free(p->tok.s);
    memset(&p->tok, 0, sizeof p->tok);
    for (;;) {   /* whitespace and // comments */
        char c = peek_at(p, p->pos);
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
            p->pos++;
        } else if (c == '/' && peek_at(p, p->pos + 1) == '/') {
            while (p->pos < p->len && p->src[p->pos] != '\n') p->pos++;
        } else {
            break;
        }
    }
    size_t start = p->pos;
    p->tok.pos = start;
    p->tok.kind = T_EOF;
    if (p->failed || start >= p->len) return;
    char c = p->src[start], c1 = peek_at(p, start + 1);

    char c2 = peek_at(p, start + 2);
    bool r = c == 'r' || c == 'R', b = c == 'b' || c == 'B';
    bool q1 = c1 == '\'' || c1 == '"', q2 = c2 == '\'' || c2 == '"';
    bool r1 = c1 == 'r' || c1 == 'R', b1 = c1 == 'b' || c1 == 'B';

    if ((b && q1) || (b && r1 && q2) || (r && b1 && q2)) {   /* b'', br'', rb'' */
        fail_at(p, start, "bytes literals are not supported");
    } else if (r && q1) {
        p->pos++;
        lex_string(p, start, true);
    } else if (c == '\'' || c == '"') {
        lex_string(p, start, false);
    } else if (is_digit(c) || (c == '.' && is_digit(c1))) {
        lex_number(p, start);
    } else if (is_ident_start(c)) {
        while (p->pos < p->len && (is_ident_start(p->src[p->pos]) || is_digit(p->src[p->pos])))
            p->pos++;
        size_t n = p->pos - start;
        const char *w = p->src + start;
        p->tok.kind = T_IDENT;
        if (n == 4 && memcmp(w, "true", 4) == 0) p->tok.kind = T_TRUE;
        else if (n == 5 && memcmp(w, "false", 5) == 0) p->tok.kind = T_FALSE;
        else if (n == 4 && memcmp(w, "null", 4) == 0) p->tok.kind = T_NULL;
        else if (n == 2 && memcmp(w, "in", 2) == 0) p->tok.kind = T_IN;
    } else {
        for (size_t i = 0; i < ARRAY_LEN(PUNCT); i++) {
            size_t n = strlen(PUNCT[i].text);
            if (p->len - start >= n && memcmp(p->src + start, PUNCT[i].text, n) == 0) {
                p->tok.kind = PUNCT[i].kind;
                p->pos += n;
                break;
            }
        }
        if (p->pos == start) {
            if (c == '=') fail_at(p, start, "unexpected '=' (did you mean '=='?)");
            else if (c == '&' || c == '|') fail_at(p, start, "unexpected '%c' (did you mean '%c%c'?)", c, c, c);
            else if (c >= 0x20 && c < 0x7f) fail_at(p, start, "unexpected character '%c'", c);
            else fail_at(p, start, "unexpected byte 0x%02x", (unsigned char)c);
        }
    }
    p->tok.len = p->pos - start;
    if (p->failed) {
        free(p->tok.s);
        memset(&p->tok, 0, sizeof p->tok);
        p->tok.kind = T_EOF;
        p->tok.pos = start;
    }
}

/* "unexpected X" for the current token. */
static void fail_unexpected(parser *p)
{
    char text[64];
    switch (p->tok.kind) {
    case T_EOF: fail_at(p, p->tok.pos, "unexpected end of input"); return;
    case T_STRING: fail_at(p, p->tok.pos, "unexpected string literal"); return;
    default:
        safe_text(text, sizeof text, p->src + p->tok.pos, p->tok.len);
        fail_at(p, p->tok.pos, "unexpected '%s'", text);
    }
}

static bool expect(parser *p, tok_kind kind, const char *what)
{
    if (p->tok.kind != kind) {
        fail_at(p, p->tok.pos, "expected %s", what);
        return false;
    }
    lex(p);
    return true;
}

/* The current token is an identifier: a copy of its name, or NULL if it is reserved. */
static char *take_name(parser *p)
{
    const char *w = p->src + p->tok.pos;
    size_t n = p->tok.len;
    for (size_t i = 0; i < ARRAY_LEN(RESERVED); i++) {
        if (strlen(RESERVED[i]) == n && memcmp(RESERVED[i], w, n) == 0) {
            fail_at(p, p->tok.pos, "'%s' is a reserved word", RESERVED[i]);
            return NULL;
        }
    }
    return xstrndup(w, n);
}

static node *parse_expr(parser *p);

/* '(' [expr {',' expr}] ')', appending each argument to call. */
static bool parse_args(parser *p, node *call)
{
    if (!expect(p, T_LPAREN, "'('")) return false;
    if (p->tok.kind == T_RPAREN) {
        lex(p);
        return true;
    }
    for (;;) {
        node *a = parse_expr(p);
        if (!a) return false;
        add_kid(call, a);
        if (p->tok.kind != T_COMMA) break;
        lex(p);
    }
    return expect(p, T_RPAREN, "')'");
}

/* A call of the function named name (at pos), its receiver (if any) already in call. */
static node *parse_call(parser *p, const char *name, size_t pos, node *receiver)
{
    size_t i = 0;
    while (i < ARRAY_LEN(FUNCS) && strcmp(FUNCS[i].name, name) != 0) i++;
    if (i == ARRAY_LEN(FUNCS) || (receiver ? !FUNCS[i].method : !FUNCS[i].global)) {
        char text[64];
        safe_text(text, sizeof text, name, strlen(name));
        if (i < ARRAY_LEN(FUNCS) && receiver)
            fail_at(p, pos, "'%s' is not a method", text);
        else if (i < ARRAY_LEN(FUNCS))
            fail_at(p, pos, "'%s' must be called as a method, e.g. s.%s(x)", text, text);
        else
            fail_at(p, pos, "unknown function '%s'", text);
        return NULL;
    }
    node *c = new_node(p, N_CALL, pos);
    c->op = (int)FUNCS[i].id;
    if (receiver) add_kid(c, receiver);
    if (!parse_args(p, c)) return NULL;
    /* size(x) is x.size(): its one argument becomes the receiver. */
    size_t nargs = c->nkid - (receiver ? 1 : 0);
    size_t min = FUNCS[i].min_args + (receiver ? 0 : 1), max = FUNCS[i].max_args + (receiver ? 0 : 1);
    if (nargs < min || nargs > max) {
        if (min == max)
            fail_at(p, pos, "%s() takes %zu argument%s", name, min, min == 1 ? "" : "s");
        else
            fail_at(p, pos, "%s() takes %zu to %zu arguments", name, min, max);
        return NULL;
    }
    return finish(p, c);
}

/* has(a.b): the argument must be a field selection (langdef.md "Macros"). */
static node *parse_has(parser *p, size_t pos)
{
    node *h = new_node(p, N_HAS, pos);
    node *args = new_node(p, N_LIST, pos);   /* a holder for parse_args */
    if (!parse_args(p, args)) return NULL;
    if (args->nkid != 1 || args->kid[0]->kind != N_SELECT) {
        fail_at(p, pos, "has() takes one field selection, e.g. has(jwt.sub)");
        return NULL;
    }
    node *sel = args->kid[0];
    h->name = sel->name;   /* moved: the select node stays in p->nodes, nameless */
    sel->name = NULL;
    add_kid(h, sel->kid[0]);
    return finish(p, h);
}

static node *parse_primary(parser *p)
{
    size_t pos = p->tok.pos;
    node *n;
    switch (p->tok.kind) {
    case T_INT:
        if (p->tok.u > (uint64_t)INT64_MAX) {   /* only 2^63, which the lexer allows for '-' */
            n = new_node(p, N_MININT, pos);
        } else {
            n = new_node(p, N_LIT, pos);
            n->lit = json_integer((json_int_t)p->tok.u);
        }
        lex(p);
        return n;
    case T_DOUBLE:
        n = new_node(p, N_LIT, pos);
        n->lit = json_real(p->tok.d);
        lex(p);
        return n;
    case T_STRING:
        n = new_node(p, N_LIT, pos);
        n->lit = json_stringn(p->tok.s, p->tok.slen);
        if (!n->lit) {
            fail_at(p, pos, "string literal is not valid UTF-8");
            return NULL;
        }
        lex(p);
        return n;
    case T_TRUE:
    case T_FALSE:
    case T_NULL:
        n = new_node(p, N_LIT, pos);
        n->lit = p->tok.kind == T_TRUE ? json_true() : p->tok.kind == T_FALSE ? json_false() : json_null();
        lex(p);
        return n;
    case T_IDENT: {
        char *name = take_name(p);
        if (!name) return NULL;
        lex(p);
        if (p->tok.kind == T_LPAREN) {
            n = strcmp(name, "has") == 0 ? parse_has(p, pos) : parse_call(p, name, pos, NULL);
            free(name);
            return n;
        }
        n = new_node(p, N_IDENT, pos);
        n->name = name;
        return n;
    }
    case T_LPAREN:
        lex(p);
        n = parse_expr(p);
        if (n && !expect(p, T_RPAREN, "')'")) return NULL;
        return n;
    case T_LBRACKET:
        n = new_node(p, N_LIST, pos);
        lex(p);
        while (p->tok.kind != T_RBRACKET) {
            if (n->nkid == CEL_MAX_LIST) {
                fail_at(p, p->tok.pos, "list literal has more than %d elements", CEL_MAX_LIST);
                return NULL;
            }
            node *e = parse_expr(p);
            if (!e) return NULL;
            add_kid(n, e);
            if (p->tok.kind != T_COMMA) break;
            lex(p);   /* a trailing comma is allowed */
        }
        if (!expect(p, T_RBRACKET, "']'")) return NULL;
        return finish(p, n);
    case T_LBRACE:
        fail_at(p, pos, "map literals are not supported");
        return NULL;
    default:
        fail_unexpected(p);
        return NULL;
    }
}

/* member: primary { '.' IDENT [ '(' args ')' ] | '[' expr ']' } */
static node *parse_member(parser *p)
{
    node *n = parse_primary(p);
    while (n) {
        size_t pos = p->tok.pos;
        if (p->tok.kind == T_DOT) {
            lex(p);
            if (p->tok.kind != T_IDENT) {
                fail_at(p, p->tok.pos, "expected a field name after '.'");
                return NULL;
            }
            size_t name_pos = p->tok.pos;
            char *name = take_name(p);
            if (!name) return NULL;
            lex(p);
            if (p->tok.kind == T_LPAREN) {
                n = parse_call(p, name, name_pos, n);
                free(name);
            } else {
                node *s = new_node(p, N_SELECT, name_pos);
                s->name = name;
                add_kid(s, n);
                n = finish(p, s);
            }
        } else if (p->tok.kind == T_LBRACKET) {
            lex(p);
            node *i = parse_expr(p);
            if (!i || !expect(p, T_RBRACKET, "']'")) return NULL;
            node *x = new_node(p, N_INDEX, pos);
            add_kid(x, n);
            add_kid(x, i);
            n = finish(p, x);
        } else {
            break;
        }
    }
    return n;
}

/* unary: member | '!'+ member | '-'+ member */
static node *parse_unary(parser *p)
{
    tok_kind op = p->tok.kind;
    if (op != T_NOT && op != T_MINUS) return parse_member(p);
    size_t count = 0, pos[CEL_MAX_DEPTH + 1];
    while (p->tok.kind == op) {
        if (count == CEL_MAX_DEPTH) {
            fail_at(p, p->tok.pos, "expression nested deeper than %d", CEL_MAX_DEPTH);
            return NULL;
        }
        pos[count++] = p->tok.pos;
        lex(p);
    }
    node *n = parse_member(p);
    if (!n) return NULL;
    if (op == T_MINUS && n->kind == N_MININT) {   /* -9223372036854775808 */
        n->kind = N_LIT;
        n->lit = json_integer(INT64_MIN);
        n->pos = pos[--count];
    }
    while (count > 0) {
        node *u = new_node(p, op == T_NOT ? N_NOT : N_NEG, pos[--count]);
        add_kid(u, n);
        if (!(n = finish(p, u))) return NULL;
    }
    return n;
}

/* One left-associative binary level: sub { op sub }. ops ends with T_EOF. */
static node *parse_binary(parser *p, node *(*sub)(parser *), const tok_kind *ops)
{
    node *l = sub(p);
    for (;;) {
        if (!l) return NULL;
        const tok_kind *o = ops;
        while (*o != T_EOF && *o != p->tok.kind) o++;
        if (*o == T_EOF) return l;
        node *b = new_node(p, N_BIN, p->tok.pos);   /* messages point at the operator */
        b->op = (int)*o;
        lex(p);
        node *r = sub(p);
        if (!r) return NULL;
        add_kid(b, l);
        add_kid(b, r);
        l = finish(p, b);
    }
}

static node *parse_mul(parser *p)
{
    static const tok_kind ops[] = {T_STAR, T_SLASH, T_PERCENT, T_EOF};
    return parse_binary(p, parse_unary, ops);
}

static node *parse_add(parser *p)
{
    static const tok_kind ops[] = {T_PLUS, T_MINUS, T_EOF};
    return parse_binary(p, parse_mul, ops);
}

static node *parse_rel(parser *p)
{
    static const tok_kind ops[] = {T_EQ, T_NE, T_LT, T_LE, T_GT, T_GE, T_IN, T_EOF};
    return parse_binary(p, parse_add, ops);
}

/* A flat chain sub { op sub } as one N_AND / N_OR node. */
static node *parse_chain(parser *p, node *(*sub)(parser *), tok_kind op, node_kind kind)
{
    node *l = sub(p);
    if (!l || p->tok.kind != op) return l;
    node *n = new_node(p, kind, l->pos);
    add_kid(n, l);
    while (p->tok.kind == op) {
        lex(p);
        node *r = sub(p);
        if (!r) return NULL;
        add_kid(n, r);
    }
    return finish(p, n);
}

static node *parse_and(parser *p)
{
    return parse_chain(p, parse_rel, T_AND, N_AND);
}

static node *parse_or(parser *p)
{
    return parse_chain(p, parse_and, T_OR, N_OR);
}

/* expr: or [ '?' or ':' expr ] */
static node *parse_expr(parser *p)
{
    if (p->depth >= CEL_MAX_DEPTH) {
        fail_at(p, p->tok.pos, "expression nested deeper than %d", CEL_MAX_DEPTH);
        return NULL;
    }
    p->depth++;
    node *c = parse_or(p);
    if (c && p->tok.kind == T_QUESTION) {
        node *n = new_node(p, N_COND, p->tok.pos);
        lex(p);
        node *a = parse_or(p), *b = NULL;
        if (a && expect(p, T_COLON, "':'")) b = parse_expr(p);
        if (b) {
            add_kid(n, c);
            add_kid(n, a);
            add_kid(n, b);
            c = finish(p, n);
        } else {
            c = NULL;
        }
    }
    p->depth--;
    return c;
}

static void free_nodes(node **nodes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        json_decref(nodes[i]->lit);
        free(nodes[i]->name);
        free(nodes[i]->kid);
        free(nodes[i]);
    }
    free(nodes);
}

cel_program *cel_compile(const char *src, char *err, size_t errlen, int *line, int *col)
{
    parser p = {.err = err, .errlen = errlen};
    cel_program *prog = NULL;
    if (err && errlen) err[0] = '\0';
    if (line) *line = 0;
    if (col) *col = 0;
    if (!src) {
        if (err && errlen) snprintf(err, errlen, "no expression");
        return NULL;
    }
    p.src = src;
    p.len = strnlen(src, CEL_MAX_SOURCE + 1);
    if (p.len > CEL_MAX_SOURCE) {
        fail_at(&p, CEL_MAX_SOURCE, "expression longer than %d bytes", CEL_MAX_SOURCE);
        goto end;
    }

    lex(&p);
    node *root = parse_expr(&p);
    if (root && p.tok.kind != T_EOF) fail_unexpected(&p);
    for (size_t i = 0; i < p.nnodes && !p.failed; i++)   /* 2^63 not right after a '-' */
        if (p.nodes[i]->kind == N_MININT) fail_at(&p, p.nodes[i]->pos, "integer literal out of range");
    if (p.failed) goto end;

    prog = xcalloc(1, sizeof *prog);
    prog->src = xstrndup(src, p.len);
    prog->len = p.len;
    prog->root = root;
    prog->nodes = p.nodes;
    prog->nnodes = p.nnodes;
    p.nodes = NULL;
    p.nnodes = 0;
end:
    free(p.tok.s);
    free_nodes(p.nodes, p.nnodes);
    if (!prog) {
        if (line) *line = p.line;
        if (col) *col = p.col;
    }
    return prog;
}

const char *cel_program_source(const cel_program *prog)
{
    return prog ? prog->src : NULL;
}

void cel_program_free(cel_program *prog)
{
    if (!prog) return;
    free_nodes(prog->nodes, prog->nnodes);
    free(prog->src);
    free(prog);
}

/* ==== evaluation ============================================================== */

/* A value or a CEL error (a message we own): exactly one of v and err is set. */
typedef struct {
    json_t *v;
    bool own;   /* v is a reference this evaluation holds; else it is borrowed (shared) */
    char *err;
} val;

typedef struct {
    const cel_program *prog;
    const json_t *act;
    long steps;
    bool abort;   /* the step budget ran out: an error nothing may absorb */
} ctx;

/* A new value of ours. */
static val ok(json_t *v)
{
    return (val){.v = v, .own = true};
}

/* A value of the activation or the program: read, never json_incref'd. */
static val borrow(const json_t *v)
{
    return (val){.v = (json_t *)v};
}

/* Member m of container a: borrowed if a is, else ours too (a's own reference count is
 * this thread's alone). */
static val member(val a, json_t *m)
{
    return a.own ? ok(json_incref(m)) : borrow(m);
}

static void val_free(val v)
{
    if (v.own) json_decref(v.v);
    free(v.err);
}

__attribute__((format(printf, 3, 4)))
static val errv(const ctx *c, const node *n, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line, col;
    line_col(c->prog->src, c->prog->len, n->pos, &line, &col);
    return (val){.err = xasprintf("%s at %d:%d", msg, line, col)};
}

static val steps_exceeded(const ctx *c, const node *n)
{
    return errv(c, n, "evaluation exceeded %d steps", CEL_MAX_STEPS);
}

/* Spend units of the budget; false (and abort set) once it is gone. */
static bool charge(ctx *c, size_t units)
{
    if (c->abort) return false;
    if (units > (size_t)CEL_MAX_STEPS || c->steps + (long)units > CEL_MAX_STEPS) {
        c->abort = true;
        return false;
    }
    c->steps += (long)units;
    return true;
}

/* Work units for touching n bytes of string. */
static size_t bytes_cost(size_t n)
{
    return 1 + n / 64;
}

/* A copy of a shared value, charged to the budget: NULL when the budget runs out
 * (c->abort set) or the value nests deeper than CEL_MAX_COMPARE_DEPTH. */
static json_t *copy(ctx *c, const json_t *v, int depth)
{
    if (depth > CEL_MAX_COMPARE_DEPTH || !charge(c, 1)) return NULL;
    json_t *r = NULL;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        r = json_object();
        for (void *it = json_object_iter((json_t *)v); it; it = json_object_iter_next((json_t *)v, it)) {
            json_t *x = copy(c, json_object_iter_value(it), depth + 1);
            if (!x) goto fail;
            json_object_setn_new_nocheck(r, json_object_iter_key(it), json_object_iter_key_len(it), x);
        }
        return r;
    case JSON_ARRAY:
        r = json_array();
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *x = copy(c, json_array_get(v, i), depth + 1);
            if (!x) goto fail;
            json_array_append_new(r, x);
        }
        return r;
    case JSON_STRING:
        if (!charge(c, bytes_cost(json_string_length(v)))) return NULL;
        return json_stringn_nocheck(json_string_value(v), json_string_length(v));
    case JSON_INTEGER: return json_integer(json_integer_value(v));
    case JSON_REAL: return json_real(json_real_value(v));
    case JSON_TRUE: return json_true();   /* static singletons: no count to touch */
    case JSON_FALSE: return json_false();
    default: return json_null();
    }
fail:
    json_decref(r);
    return NULL;
}

/* Append a's elements to our list r: ours by reference, shared ones copied. */
static bool append_all(ctx *c, json_t *r, val a)
{
    for (size_t i = 0; i < json_array_size(a.v); i++) {
        json_t *e = json_array_get(a.v, i);
        json_t *x = a.own ? json_incref(e) : copy(c, e, 0);
        if (!x) return false;
        json_array_append_new(r, x);
    }
    return true;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "map";
    case JSON_ARRAY: return "list";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "int";
    case JSON_REAL: return "double";
    case JSON_TRUE:
    case JSON_FALSE: return "bool";
    default: return "null_type";
    }
}

static val no_overload(const ctx *c, const node *n, const char *op, const json_t *a, const json_t *b)
{
    if (b) return errv(c, n, "no such overload: %s %s %s", type_name(a), op, type_name(b));
    return errv(c, n, "no such overload: %s(%s)", op, type_name(a));
}

static val new_string(const ctx *c, const node *n, const char *s, size_t len)
{
    json_t *v = json_stringn(s, len);
    return v ? ok(v) : errv(c, n, "string is not valid UTF-8");
}

/* An int and a double compared exactly: -1, 0 or 1 (CEL compares numbers across types
 * by value, langdef.md "Numeric Values"). JSON has no NaN, so d is finite. */
static int cmp_int_double(json_int_t i, double d)
{
    if (d >= 9223372036854775808.0) return -1;
    if (d < -9223372036854775808.0) return 1;
    json_int_t ti = (json_int_t)d;   /* in range: truncates toward zero, exactly */
    double t = (double)ti;           /* exact too: |d| >= 2^53 is already whole */
    if (i != ti) return i < ti ? -1 : 1;
    return d > t ? -1 : d < t ? 1 : 0;
}

/* Ordering of two values: true with *out -1/0/1, false when the types have no order. */
static bool compare(const json_t *a, const json_t *b, int *out)
{
    if (json_is_integer(a) && json_is_integer(b)) {
        json_int_t x = json_integer_value(a), y = json_integer_value(b);
        *out = x < y ? -1 : x > y;
    } else if (json_is_real(a) && json_is_real(b)) {
        double x = json_real_value(a), y = json_real_value(b);
        *out = x < y ? -1 : x > y;
    } else if (json_is_integer(a) && json_is_real(b)) {
        *out = cmp_int_double(json_integer_value(a), json_real_value(b));
    } else if (json_is_real(a) && json_is_integer(b)) {
        *out = -cmp_int_double(json_integer_value(b), json_real_value(a));
    } else if (json_is_string(a) && json_is_string(b)) {
        /* Byte order of UTF-8 is code point order. */
        size_t la = json_string_length(a), lb = json_string_length(b);
        int r = memcmp(json_string_value(a), json_string_value(b), la < lb ? la : lb);
        *out = r ? (r < 0 ? -1 : 1) : la < lb ? -1 : la > lb;
    } else if (json_is_boolean(a) && json_is_boolean(b)) {
        *out = json_is_true(a) - json_is_true(b);
    } else {
        return false;
    }
    return true;
}

/* CEL equality (heterogeneous: values of different types are unequal, numbers compare
 * by value, lists and maps element-wise). 1 equal, 0 not, -1 on a limit: the budget
 * (c->abort set) or nesting deeper than CEL_MAX_COMPARE_DEPTH. */
static int equal(ctx *c, const json_t *a, const json_t *b, int depth)
{
    if (depth > CEL_MAX_COMPARE_DEPTH || !charge(c, 1)) return -1;
    if (json_is_number(a) && json_is_number(b)) {
        int r;
        compare(a, b, &r);
        return r == 0;
    }
    if (json_typeof(a) != json_typeof(b)) return 0;
    switch (json_typeof(a)) {
    case JSON_STRING: {
        size_t n = json_string_length(a);
        if (n != json_string_length(b)) return 0;
        if (!charge(c, bytes_cost(n))) return -1;
        return memcmp(json_string_value(a), json_string_value(b), n) == 0;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(a);
        if (n != json_array_size(b)) return 0;
        for (size_t i = 0; i < n; i++) {
            int r = equal(c, json_array_get(a, i), json_array_get(b, i), depth + 1);
            if (r != 1) return r;
        }
        return 1;
    }
    case JSON_OBJECT: {
        if (json_object_size(a) != json_object_size(b)) return 0;
        const char *k;
        json_t *va;
        void *it = json_object_iter((json_t *)a);   /* iteration reads only */
        for (; it; it = json_object_iter_next((json_t *)a, it)) {
            k = json_object_iter_key(it);
            va = json_object_iter_value(it);
            json_t *vb = json_object_getn(b, k, json_object_iter_key_len(it));
            if (!vb) return 0;
            int r = equal(c, va, vb, depth + 1);
            if (r != 1) return r;
        }
        return 1;
    }
    default:   /* true, false, null: same type is same value */
        return 1;
    }
}

/* The error for equal() returning -1, or copy() NULL. */
static val limit_error(const ctx *c, const node *n)
{
    if (c->abort) return steps_exceeded(c, n);
    return errv(c, n, "values nested deeper than %d", CEL_MAX_COMPARE_DEPTH);
}

static val arith(ctx *c, const node *n, int op, val va, val vb)
{
    const json_t *a = va.v, *b = vb.v;
    if (json_is_integer(a) && json_is_integer(b)) {
        int64_t x = json_integer_value(a), y = json_integer_value(b), r = 0;
        bool over = false;
        switch (op) {
        case T_PLUS: over = __builtin_add_overflow(x, y, &r); break;
        case T_MINUS: over = __builtin_sub_overflow(x, y, &r); break;
        case T_STAR: over = __builtin_mul_overflow(x, y, &r); break;
        case T_SLASH:
        case T_PERCENT:
            if (y == 0) return errv(c, n, op == T_SLASH ? "division by zero" : "modulus by zero");
            if (x == INT64_MIN && y == -1) over = true;   /* C leaves both undefined */
            else r = op == T_SLASH ? x / y : x % y;
            break;
        }
        if (over) return errv(c, n, "integer overflow");
        return ok(json_integer(r));
    }
    if (json_is_real(a) && json_is_real(b) && op != T_PERCENT) {
        double x = json_real_value(a), y = json_real_value(b), r;
        r = op == T_PLUS ? x + y : op == T_MINUS ? x - y : op == T_STAR ? x * y : x / y;
        /* CEL would give an IEEE infinity or NaN; JSON cannot hold one. */
        if (!isfinite(r)) return errv(c, n, "double result is not finite");
        return ok(json_real(r));
    }
    if (op == T_PLUS && json_is_string(a) && json_is_string(b)) {
        size_t la = json_string_length(a), lb = json_string_length(b);
        if (la + lb > CEL_MAX_STRING) return errv(c, n, "string longer than %d bytes", CEL_MAX_STRING);
        if (!charge(c, bytes_cost(la + lb))) return steps_exceeded(c, n);
        char *s = xmalloc(la + lb + 1);
        memcpy(s, json_string_value(a), la);
        memcpy(s + la, json_string_value(b), lb);
        val r = new_string(c, n, s, la + lb);
        free(s);
        return r;
    }
    if (op == T_PLUS && json_is_array(a) && json_is_array(b)) {
        size_t na = json_array_size(a), nb = json_array_size(b);
        if (na + nb > CEL_MAX_LIST) return errv(c, n, "list longer than %d elements", CEL_MAX_LIST);
        json_t *r = json_array();
        if (!append_all(c, r, va) || !append_all(c, r, vb)) {
            json_decref(r);
            return limit_error(c, n);
        }
        return ok(r);
    }
    return no_overload(c, n, op_name(op), a, b);
}

static val binary(ctx *c, const node *n, val va, val vb)
{
    const json_t *a = va.v, *b = vb.v;
    int r;
    switch (n->op) {
    case T_EQ:
    case T_NE:
        if ((r = equal(c, a, b, 0)) < 0) return limit_error(c, n);
        return ok(json_boolean(n->op == T_EQ ? r : !r));
    case T_LT:
    case T_LE:
    case T_GT:
    case T_GE:
        if (!compare(a, b, &r)) return no_overload(c, n, op_name(n->op), a, b);
        return ok(json_boolean(n->op == T_LT ? r < 0 : n->op == T_LE ? r <= 0 : n->op == T_GT ? r > 0 : r >= 0));
    case T_IN:
        /* langdef.md "Lists and maps": element of a list, key of a map. */
        if (json_is_array(b)) {
            for (size_t i = 0; i < json_array_size(b); i++) {
                if ((r = equal(c, a, json_array_get(b, i), 0)) < 0) return limit_error(c, n);
                if (r) return ok(json_true());
            }
            return ok(json_false());
        }
        if (json_is_object(b)) {
            if (!json_is_string(a)) return ok(json_false());   /* JSON keys are strings */
            return ok(json_boolean(json_object_getn(b, json_string_value(a), json_string_length(a))));
        }
        return no_overload(c, n, "in", a, b);
    default:
        return arith(c, n, n->op, va, vb);
    }
}

/* s.split(sep[, limit]) as cel-go's ext/strings (Go strings.SplitN): limit 0 gives [],
 * a positive limit at most that many parts (the last one the rest), negative all; an
 * empty separator splits into characters. */
static val split(ctx *c, const node *n, const json_t *str, const json_t *sep, json_int_t limit)
{
    const char *s = json_string_value(str), *d = json_string_value(sep);
    size_t len = json_string_length(str), dlen = json_string_length(sep), pos = 0;
    if (!charge(c, bytes_cost(len))) return steps_exceeded(c, n);
    json_t *out = json_array();
    if (limit == 0 || (dlen == 0 && len == 0)) return ok(out);
    for (;;) {
        size_t end, next;
        if (limit > 0 && (json_int_t)json_array_size(out) == limit - 1) {
            end = next = len;   /* the last part is the rest */
        } else if (dlen == 0) {
            end = pos + 1;   /* one character: a lead byte and its continuation bytes */
            while (end < len && ((unsigned char)s[end] & 0xC0) == 0x80) end++;
            next = end;
        } else {
            const char *hit = memmem(s + pos, len - pos, d, dlen);
            end = hit ? (size_t)(hit - s) : len;
            next = hit ? end + dlen : len;
        }
        if (json_array_size(out) == CEL_MAX_LIST) {
            json_decref(out);
            return errv(c, n, "split gives more than %d parts", CEL_MAX_LIST);
        }
        val part = new_string(c, n, s + pos, end - pos);
        if (part.err) {
            json_decref(out);
            return part;
        }
        json_array_append_new(out, part.v);
        if (end == len) break;
        pos = next;
        if (dlen == 0 && pos == len) break;
    }
    return ok(out);
}

static val call(ctx *c, const node *n, json_t *const *args, size_t nargs)
{
    const json_t *recv = args[0];
    if (n->op == F_SIZE) {
        if (json_is_string(recv)) {   /* code points, langdef.md "size" */
            const char *s = json_string_value(recv);
            size_t len = json_string_length(recv), count = 0;
            if (!charge(c, bytes_cost(len))) return steps_exceeded(c, n);
            for (size_t i = 0; i < len; i++) count += ((unsigned char)s[i] & 0xC0) != 0x80;
            return ok(json_integer((json_int_t)count));
        }
        if (json_is_array(recv)) return ok(json_integer((json_int_t)json_array_size(recv)));
        if (json_is_object(recv)) return ok(json_integer((json_int_t)json_object_size(recv)));
        return no_overload(c, n, "size", recv, NULL);
    }
    static const char *const names[] = {"size", "startsWith", "endsWith", "contains", "split"};
    const char *name = names[n->op];
    const json_t *arg = args[1];
    if (!json_is_string(recv) || !json_is_string(arg)) {
        if (!json_is_string(recv)) return errv(c, n, "no such overload: %s.%s(...)", type_name(recv), name);
        return errv(c, n, "no such overload: string.%s(%s)", name, type_name(arg));
    }
    const char *s = json_string_value(recv), *t = json_string_value(arg);
    size_t ls = json_string_length(recv), lt = json_string_length(arg);
    switch (n->op) {
    case F_STARTS_WITH:
        return ok(json_boolean(lt <= ls && memcmp(s, t, lt) == 0));
    case F_ENDS_WITH:
        return ok(json_boolean(lt <= ls && memcmp(s + ls - lt, t, lt) == 0));
    case F_CONTAINS:
        if (!charge(c, bytes_cost(ls))) return steps_exceeded(c, n);
        return ok(json_boolean(lt == 0 || memmem(s, ls, t, lt) != NULL));
    default: {   /* F_SPLIT */
        json_int_t limit = -1;
        if (nargs == 3) {
            if (!json_is_integer(args[2]))
                return errv(c, n, "no such overload: string.split(string, %s)", type_name(args[2]));
            limit = json_integer_value(args[2]);
        }
        return split(c, n, recv, arg, limit);
    }
    }
}

static val eval(ctx *c, const node *n);

/* Evaluate every child into v[] (stopping at the first error, which is returned). */
static val eval_kids(ctx *c, const node *n, val *v)
{
    for (size_t i = 0; i < n->nkid; i++) {
        v[i] = eval(c, n->kid[i]);
        if (v[i].err) {
            val e = v[i];
            while (i > 0) val_free(v[--i]);
            return e;
        }
    }
    return (val){0};
}

/* && and ||, langdef.md "Logical Operators": short-circuit on the deciding value (false
 * for &&, true for ||) wherever it is; otherwise the first error (or non-bool) wins. */
static val logic(ctx *c, const node *n)
{
    bool is_and = n->kind == N_AND;
    val pending = {0};
    for (size_t i = 0; i < n->nkid; i++) {
        val v = eval(c, n->kid[i]);
        if (c->abort) {
            val_free(v);
            val_free(pending);
            return steps_exceeded(c, n);
        }
        if (!v.err && !json_is_boolean(v.v)) {
            val e = errv(c, n->kid[i], "operands of %s must be bool, got %s", is_and ? "&&" : "||",
                         type_name(v.v));
            val_free(v);
            v = e;
        }
        if (v.err) {
            if (pending.err) val_free(v);
            else pending = v;
            continue;
        }
        if (json_is_true(v.v) != is_and) {   /* false && ..., true || ... */
            val_free(pending);
            return v;
        }
        val_free(v);
    }
    return pending.err ? pending : ok(json_boolean(is_and));
}

/* Both operands of a two-operand node, left to right: true with *a and *b to free; false with
 * the first error in *a (nothing else to free). */
static bool operands(ctx *c, const node *n, val *a, val *b)
{
    *a = eval(c, n->kid[0]);
    if (a->err) return false;
    *b = eval(c, n->kid[1]);
    if (!b->err) return true;
    val_free(*a);
    *a = *b;
    return false;
}

static val eval(ctx *c, const node *n)
{
    if (!charge(c, 1)) return steps_exceeded(c, n);
    val a, b, r;
    json_t *f;
    switch (n->kind) {
    case N_LIT:
        return borrow(n->lit);

    case N_LIST: {
        val *v = xmalloc((n->nkid ? n->nkid : 1) * sizeof *v);
        r = eval_kids(c, n, v);
        if (r.err) {
            free(v);
            return r;
        }
        json_t *list = json_array();
        bool whole = true;
        for (size_t i = 0; i < n->nkid; i++) {
            json_t *x = !whole ? NULL : v[i].own ? json_incref(v[i].v) : copy(c, v[i].v, 0);
            if (x) json_array_append_new(list, x);
            else whole = false;
            val_free(v[i]);
        }
        free(v);
        if (whole) return ok(list);
        json_decref(list);
        return limit_error(c, n);
    }

    case N_IDENT:
        f = c->act ? json_object_get(c->act, n->name) : NULL;
        if (!f) return errv(c, n, "undeclared reference to '%s'", n->name);
        return borrow(f);

    case N_SELECT:
    case N_HAS:
        a = eval(c, n->kid[0]);
        if (a.err) return a;
        if (!json_is_object(a.v)) {
            r = n->kind == N_HAS ? errv(c, n, "has() needs a map, got %s", type_name(a.v))
                                 : errv(c, n, "no such field '%s' on %s", n->name, type_name(a.v));
        } else {
            f = json_object_get(a.v, n->name);
            if (n->kind == N_HAS) r = ok(json_boolean(f));
            else r = f ? member(a, f) : errv(c, n, "no such key '%s'", n->name);
        }
        val_free(a);
        return r;

    case N_INDEX:
        if (!operands(c, n, &a, &b)) return a;
        if (json_is_array(a.v)) {
            json_int_t i = json_is_integer(b.v) ? json_integer_value(b.v) : -1;
            if (!json_is_integer(b.v))
                r = errv(c, n, "list index must be int, got %s", type_name(b.v));
            else if (i < 0 || (uint64_t)i >= json_array_size(a.v))
                r = errv(c, n, "index %lld out of range for a list of %zu", (long long)i, json_array_size(a.v));
            else
                r = member(a, json_array_get(a.v, (size_t)i));
        } else if (json_is_object(a.v)) {
            f = json_is_string(b.v) ? json_object_getn(a.v, json_string_value(b.v), json_string_length(b.v)) : NULL;
            if (f) {
                r = member(a, f);
            } else if (json_is_string(b.v)) {
                char key[64];
                safe_text(key, sizeof key, json_string_value(b.v), json_string_length(b.v));
                r = errv(c, n, "no such key '%s'", key);
            } else {
                r = errv(c, n, "map key must be string, got %s", type_name(b.v));
            }
        } else {
            r = errv(c, n, "cannot index %s", type_name(a.v));
        }
        val_free(a);
        val_free(b);
        return r;

    case N_CALL: {
        val v[3];   /* receiver + at most 2 arguments (checked when compiled) */
        json_t *args[3];
        r = eval_kids(c, n, v);
        if (r.err) return r;
        for (size_t i = 0; i < n->nkid; i++) args[i] = v[i].v;
        r = call(c, n, args, n->nkid);
        for (size_t i = 0; i < n->nkid; i++) val_free(v[i]);
        return r;
    }

    case N_NOT:
        a = eval(c, n->kid[0]);
        if (a.err) return a;
        r = json_is_boolean(a.v) ? ok(json_boolean(json_is_false(a.v))) : no_overload(c, n, "!", a.v, NULL);
        val_free(a);
        return r;

    case N_NEG:
        a = eval(c, n->kid[0]);
        if (a.err) return a;
        if (json_is_integer(a.v))
            r = json_integer_value(a.v) == INT64_MIN ? errv(c, n, "integer overflow")
                                                     : ok(json_integer(-json_integer_value(a.v)));
        else if (json_is_real(a.v))
            r = ok(json_real(-json_real_value(a.v)));
        else
            r = no_overload(c, n, "-", a.v, NULL);
        val_free(a);
        return r;

    case N_AND:
    case N_OR:
        return logic(c, n);

    case N_COND:
        a = eval(c, n->kid[0]);
        if (a.err) return a;
        if (!json_is_boolean(a.v)) {
            r = errv(c, n, "condition of ?: must be bool, got %s", type_name(a.v));
            val_free(a);
            return r;
        }
        r = eval(c, n->kid[json_is_true(a.v) ? 1 : 2]);
        val_free(a);
        return r;

    case N_BIN:
        if (!operands(c, n, &a, &b)) return a;
        r = binary(c, n, a, b);
        val_free(a);
        val_free(b);
        return r;

    default:   /* N_MININT never survives cel_compile */
        return errv(c, n, "internal error: node kind %d", (int)n->kind);
    }
}

/* Evaluate, making sure a spent budget is reported as such whatever absorbed it. */
static val run(const cel_program *prog, const json_t *activation)
{
    ctx c = {.prog = prog, .act = activation};
    val v = eval(&c, prog->root);
    if (c.abort && !v.err) {
        val_free(v);
        v = steps_exceeded(&c, prog->root);
    }
    return v;
}

int cel_eval(const cel_program *prog, const json_t *activation, json_t **out, char *err,
             size_t errlen)
{
    *out = NULL;
    if (err && errlen) err[0] = '\0';
    if (!prog || (activation && !json_is_object(activation))) {
        if (err && errlen) snprintf(err, errlen, prog ? "activation is not a JSON object" : "no program");
        return -1;
    }
    val v = run(prog, activation);
    if (v.err) {
        if (err && errlen) snprintf(err, errlen, "%s", v.err);
        free(v.err);
        return -1;
    }
    /* The caller gets a value of its own: a shared one is copied (jansson's copy only
     * reads the original). */
    *out = v.own ? v.v : json_deep_copy(v.v);
    return 0;
}

cel_result cel_eval_bool(const cel_program *prog, const json_t *activation)
{
    if (!prog || (activation && !json_is_object(activation))) return CEL_ERROR;
    val v = run(prog, activation);
    cel_result r = v.err || !json_is_boolean(v.v) ? CEL_ERROR : json_is_true(v.v) ? CEL_TRUE : CEL_FALSE;
    val_free(v);
    return r;
}

/* ==== rule sets =============================================================== */

typedef struct {
    cel_rule_kind kind;
    cel_program *prog;
} rule;

struct cel_rules {
    rule *rule;
    size_t n;
};

cel_rules *cel_rules_new(void)
{
    return xcalloc(1, sizeof(cel_rules));
}

void cel_rules_free(cel_rules *rs)
{
    if (!rs) return;
    for (size_t i = 0; i < rs->n; i++) cel_program_free(rs->rule[i].prog);
    free(rs->rule);
    free(rs);
}

int cel_rules_add(cel_rules *rs, cel_rule_kind kind, const char *src, char *err,
                  size_t errlen, int *line, int *col)
{
    if (line) *line = 0;
    if (col) *col = 0;
    if (kind != CEL_RULE_ALLOW && kind != CEL_RULE_DENY && kind != CEL_RULE_REQUIRE) {
        if (err && errlen) snprintf(err, errlen, "unknown rule kind %d", (int)kind);
        return -1;
    }
    if (rs->n == CEL_MAX_RULES) {
        if (err && errlen) snprintf(err, errlen, "more than %d rules", CEL_MAX_RULES);
        return -1;
    }
    cel_program *prog = cel_compile(src, err, errlen, line, col);
    if (!prog) return -1;
    rs->rule = xrealloc(rs->rule, (rs->n + 1) * sizeof *rs->rule);
    rs->rule[rs->n++] = (rule){.kind = kind, .prog = prog};
    return 0;
}

int cel_rule_kind_parse(const char *name, cel_rule_kind *kind)
{
    for (int k = CEL_RULE_ALLOW; k <= CEL_RULE_REQUIRE; k++) {
        if (name && strcmp(name, cel_rule_kind_name((cel_rule_kind)k)) == 0) {
            *kind = (cel_rule_kind)k;
            return 0;
        }
    }
    return -1;
}

const char *cel_rule_kind_name(cel_rule_kind kind)
{
    switch (kind) {
    case CEL_RULE_ALLOW: return "allow";
    case CEL_RULE_DENY: return "deny";
    case CEL_RULE_REQUIRE: return "require";
    }
    return "unknown";
}

size_t cel_rules_count(const cel_rules *rs)
{
    return rs ? rs->n : 0;
}

/* Is there a rule of this kind whose "is true" equals is_true? *present tells whether
 * there was any rule of the kind. */
static bool any_rule(const cel_rules *rs, cel_rule_kind kind, bool is_true,
                     const json_t *activation, bool *present)
{
    for (size_t i = 0; i < rs->n; i++) {
        if (rs->rule[i].kind != kind) continue;
        *present = true;
        if ((cel_eval_bool(rs->rule[i].prog, activation) == CEL_TRUE) == is_true) return true;
    }
    return false;
}

bool cel_rules_decide(const cel_rules *rs, const json_t *activation)
{
    /* RuleSets::validate, in its order. */
    bool present = false, has_allow = false;
    if (!rs || rs->n == 0) return true;
    if (any_rule(rs, CEL_RULE_DENY, true, activation, &present)) return false;
    if (any_rule(rs, CEL_RULE_REQUIRE, false, activation, &present)) return false;
    if (any_rule(rs, CEL_RULE_ALLOW, true, activation, &has_allow)) return true;
    return !has_allow;   /* an allow-list denies the rest; a deny-list allows it */
}
