/* json.c — a small, strict JSON reader for safetensors headers: takes a byte range (not
 * NUL-terminated), gives a tree of NnJson values or a message "at byte N: what was expected".
 * Every read is bounds-checked against the range; nesting is limited, so hostile input can
 * neither overrun a buffer nor exhaust the stack. Strings are decoded to UTF-8 (\uXXXX and
 * surrogate pairs included); NUL characters and duplicate object keys are rejected. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nnrt_internal.h"

enum { MAX_DEPTH = 64, MAX_NUMBER = 64 /* characters */ };

typedef struct Parser {
  const char *start, *p, *end; /* the text, the next byte, one past the last */
  int depth;                   /* arrays/objects open */
  char *err;                   /* message buffer */
  size_t cap;                  /* its size */
} Parser;

NNRT_PRINTF(2, 3) static int fail(Parser *ps, const char *fmt, ...) {
  if (ps->err[0])
    return 0; /* keep the innermost message */
  int n = snprintf(ps->err, ps->cap, "at byte %lld: ", (long long)(ps->p - ps->start));
  va_list ap;
  va_start(ap, fmt);
  if (n >= 0 && (size_t)n < ps->cap)
    vsnprintf(ps->err + n, ps->cap - (size_t)n, fmt, ap);
  va_end(ap);
  return 0;
}

static void skip_ws(Parser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
    ps->p++;
}

/* The next byte after blanks, or -1 at the end. */
static int peek(Parser *ps) {
  skip_ws(ps);
  return ps->p < ps->end ? (unsigned char)*ps->p : -1;
}

static int expect(Parser *ps, char c) {
  if (peek(ps) != c)
    return fail(ps, "expected '%c'", c);
  ps->p++;
  return 1;
}

static int hex4(Parser *ps, unsigned *v) {
  if (ps->end - ps->p < 4)
    return fail(ps, "truncated \\u escape");
  *v = 0;
  for (int i = 0; i < 4; i++) {
    char c = *ps->p++;
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0)
      return fail(ps, "bad hex digit in \\u escape");
    *v = *v << 4 | (unsigned)d;
  }
  return 1;
}

/* Appends code point cp as UTF-8 at *o. */
static void put_utf8(char **o, unsigned cp) {
  char *s = *o;
  if (cp < 0x80) {
    *s++ = (char)cp;
  } else if (cp < 0x800) {
    *s++ = (char)(0xC0 | cp >> 6);
    *s++ = (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *s++ = (char)(0xE0 | cp >> 12);
    *s++ = (char)(0x80 | (cp >> 6 & 0x3F));
    *s++ = (char)(0x80 | (cp & 0x3F));
  } else {
    *s++ = (char)(0xF0 | cp >> 18);
    *s++ = (char)(0x80 | (cp >> 12 & 0x3F));
    *s++ = (char)(0x80 | (cp >> 6 & 0x3F));
    *s++ = (char)(0x80 | (cp & 0x3F));
  }
  *o = s;
}

/* \uXXXX (the 'u' consumed), combining a surrogate pair. */
static int unicode_escape(Parser *ps, char **o) {
  unsigned cp, lo;
  if (!hex4(ps, &cp))
    return 0;
  if (cp >= 0xD800 && cp < 0xDC00) {
    if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
      return fail(ps, "unpaired surrogate in \\u escape");
    ps->p += 2;
    if (!hex4(ps, &lo))
      return 0;
    if (lo < 0xDC00 || lo >= 0xE000)
      return fail(ps, "unpaired surrogate in \\u escape");
    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
  } else if (cp >= 0xDC00 && cp < 0xE000) {
    return fail(ps, "unpaired surrogate in \\u escape");
  }
  if (cp == 0)
    return fail(ps, "NUL character in a string");
  put_utf8(o, cp);
  return 1;
}

/* A string at ps->p (the opening quote); *out is malloc'd. The decoded text is never longer
 * than the raw text, so one allocation of the raw length suffices. */
static int parse_string(Parser *ps, char **out) {
  if (!expect(ps, '"'))
    return 0;
  const char *close = ps->p;
  while (close < ps->end && *close != '"')
    close += *close == '\\' && close + 1 < ps->end ? 2 : 1;
  if (close >= ps->end)
    return fail(ps, "unterminated string");
  char *s = NNRT_ALLOC(close - ps->p + 1, char), *o = s;
  const char *end = ps->end;
  ps->end = close; /* escapes must not reach past the closing quote */
  while (ps->p < close) {
    unsigned char c = (unsigned char)*ps->p++;
    if (c < 0x20) {
      free(s);
      ps->end = end;
      return fail(ps, "control character 0x%02x in a string", c);
    }
    if (c != '\\') {
      *o++ = (char)c;
      continue;
    }
    char e = *ps->p++;
    const char *simple = strchr("\"\\/bfnrt", e);
    if (e && simple) {
      *o++ = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
    } else if (e != 'u' || !unicode_escape(ps, &o)) {
      free(s);
      ps->end = end;
      return e == 'u' ? 0 : fail(ps, "bad escape '\\%c'", e);
    }
  }
  ps->end = end;
  *o = '\0';
  ps->p = close + 1;
  *out = s;
  return 1;
}

static int is_digit(const char *p, const char *end) { return p < end && *p >= '0' && *p <= '9'; }

/* A JSON number; integers that fit also get v->i. */
static int parse_number(Parser *ps, NnJson *v) {
  const char *s = ps->p, *q = s;
  int integral = 1;
  if (q < ps->end && *q == '-')
    q++;
  if (!is_digit(q, ps->end))
    return fail(ps, "expected a value");
  if (*q == '0')
    q++;
  else
    while (is_digit(q, ps->end))
      q++;
  if (q < ps->end && *q == '.') {
    integral = 0;
    if (!is_digit(++q, ps->end))
      return fail(ps, "expected a digit after '.'");
    while (is_digit(q, ps->end))
      q++;
  }
  if (q < ps->end && (*q == 'e' || *q == 'E')) {
    integral = 0;
    q++;
    if (q < ps->end && (*q == '+' || *q == '-'))
      q++;
    if (!is_digit(q, ps->end))
      return fail(ps, "expected a digit in the exponent");
    while (is_digit(q, ps->end))
      q++;
  }
  if (q - s >= MAX_NUMBER)
    return fail(ps, "number too long");
  char buf[MAX_NUMBER];
  memcpy(buf, s, (size_t)(q - s));
  buf[q - s] = '\0';
  v->type = NNRT_JSON_NUMBER;
  v->num = strtod(buf, NULL);
  if (integral) {
    int neg = buf[0] == '-';
    uint64_t acc = 0;
    v->is_int = 1;
    for (const char *c = buf + neg; *c; c++) {
      if (acc > (uint64_t)(INT64_MAX - (*c - '0')) / 10) {
        v->is_int = 0; /* too big for int64_t: keep the double only */
        break;
      }
      acc = acc * 10 + (uint64_t)(*c - '0');
    }
    v->i = neg ? -(int64_t)acc : (int64_t)acc;
  }
  ps->p = q;
  return 1;
}

static int literal(Parser *ps, const char *word, NnJsonType type, double num, NnJson *v) {
  size_t n = strlen(word);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
    return fail(ps, "expected a value");
  ps->p += n;
  v->type = type;
  v->num = num;
  return 1;
}

static int parse_value(Parser *ps, NnJson *v);

/* Appends an empty slot to a container; returns it. */
static NnJson *push_item(NnJson *c) {
  if ((c->n & (c->n - 1)) == 0) { /* n is 0 or a power of two: grow */
    size_t cap = c->n ? (size_t)c->n * 2 : 1;
    NnJson *items = realloc(c->items, cap * sizeof *items);
    if (!items)
      nnrt_fatal("out of memory at %s:%d", __FILE__, __LINE__);
    c->items = items;
    if (c->type == NNRT_JSON_OBJECT) {
      char **keys = realloc(c->keys, cap * sizeof *keys);
      if (!keys)
        nnrt_fatal("out of memory at %s:%d", __FILE__, __LINE__);
      c->keys = keys;
    }
  }
  NnJson *slot = &c->items[c->n];
  memset(slot, 0, sizeof *slot);
  if (c->type == NNRT_JSON_OBJECT)
    c->keys[c->n] = NULL;
  c->n++;
  return slot;
}

static int parse_array(Parser *ps, NnJson *v) {
  v->type = NNRT_JSON_ARRAY;
  ps->p++; /* '[' */
  if (peek(ps) == ']')
    return ps->p++, 1;
  for (;;) {
    if (!parse_value(ps, push_item(v)))
      return 0;
    int c = peek(ps);
    if (c == ']')
      return ps->p++, 1;
    if (c != ',')
      return fail(ps, "expected ',' or ']'");
    ps->p++;
  }
}

static int parse_object(Parser *ps, NnJson *v) {
  v->type = NNRT_JSON_OBJECT;
  ps->p++; /* '{' */
  if (peek(ps) == '}')
    return ps->p++, 1;
  for (;;) {
    char *key;
    const char *at = ps->p;
    if (peek(ps) != '"')
      return fail(ps, "expected a key (a string)");
    if (!parse_string(ps, &key))
      return 0;
    if (nnrt_json_get(v, key)) {
      ps->p = at;
      fail(ps, "duplicate key '%s'", key);
      free(key);
      return 0;
    }
    NnJson *slot = push_item(v);
    v->keys[v->n - 1] = key;
    if (!expect(ps, ':') || !parse_value(ps, slot))
      return 0;
    int c = peek(ps);
    if (c == '}')
      return ps->p++, 1;
    if (c != ',')
      return fail(ps, "expected ',' or '}'");
    ps->p++;
  }
}

static int parse_value(Parser *ps, NnJson *v) {
  int c = peek(ps);
  switch (c) {
  case '{':
  case '[': {
    if (ps->depth >= MAX_DEPTH)
      return fail(ps, "nested more than %d deep", MAX_DEPTH);
    ps->depth++;
    int ok = c == '{' ? parse_object(ps, v) : parse_array(ps, v);
    ps->depth--;
    return ok;
  }
  case '"': v->type = NNRT_JSON_STRING; return parse_string(ps, &v->str);
  case 't': return literal(ps, "true", NNRT_JSON_BOOL, 1, v);
  case 'f': return literal(ps, "false", NNRT_JSON_BOOL, 0, v);
  case 'n': return literal(ps, "null", NNRT_JSON_NULL, 0, v);
  case -1: return fail(ps, "unexpected end of text");
  default: return parse_number(ps, v);
  }
}

int nnrt_json_parse(const char *text, size_t len, NnJson *out, char *err, size_t cap) {
  Parser ps = {text, text, text + len, 0, err, cap};
  err[0] = '\0';
  memset(out, 0, sizeof *out);
  if (parse_value(&ps, out)) {
    if (peek(&ps) == -1)
      return 1;
    fail(&ps, "unexpected text after the value");
  }
  nnrt_json_free(out);
  return 0;
}

void nnrt_json_free(NnJson *v) {
  for (int64_t i = 0; i < v->n; i++) {
    nnrt_json_free(&v->items[i]);
    if (v->keys)
      free(v->keys[i]);
  }
  free(v->items);
  free(v->keys);
  free(v->str);
  memset(v, 0, sizeof *v);
}

const NnJson *nnrt_json_get(const NnJson *obj, const char *key) {
  if (!obj || obj->type != NNRT_JSON_OBJECT)
    return NULL;
  for (int64_t i = 0; i < obj->n; i++)
    if (obj->keys[i] && strcmp(obj->keys[i], key) == 0)
      return &obj->items[i];
  return NULL;
}
