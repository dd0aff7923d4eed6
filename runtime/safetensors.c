/* safetensors.c — takes a safetensors file in memory and a tensor name, gives that tensor's
 * dtype, shape and bytes, or lists every tensor; and writes the header of a file holding a
 * model's parameters. No allocation and no exit anywhere: the JSON header is scanned in place,
 * one entry at a time, and anything malformed is a return value with a sentence in st->why.
 *
 * Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
 * N; N bytes of JSON; the tensor bytes, little-endian, `data_offsets` relative to the end of
 * the header. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "safetensors.h"

enum { MAX_HEADER = 100 << 20, MAX_NAME = 256, MAX_DEPTH = 64 };

typedef struct Scan {
  const char *p, *end; /* the unread rest of the header */
} Scan;

static void ws(Scan *s) {
  while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
    s->p++;
}

static int eat(Scan *s, char c) {
  ws(s);
  if (s->p < s->end && *s->p == c) {
    s->p++;
    return 1;
  }
  return 0;
}

/* A JSON string into out (NUL-terminated); *fits is 0 when it did not fit or held a \u escape
 * beyond ASCII (such a key matches no tensor name this code looks for). 0 on a syntax error. */
static int string(Scan *s, char *out, size_t cap, int *fits) {
  size_t n = 0;
  *fits = 1;
  if (!eat(s, '"'))
    return 0;
  while (s->p < s->end && *s->p != '"') {
    char c = *s->p++;
    if (c == '\\') {
      if (s->p >= s->end)
        return 0;
      char e = *s->p++;
      const char *map = strchr("\"\"\\\\//b\bf\fn\nr\rt\t", e);
      if (e == 'u') {
        unsigned v = 0;
        for (int i = 0; i < 4; i++, s->p++) {
          if (s->p >= s->end)
            return 0;
          char h = *s->p;
          int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                  : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
          if (d < 0)
            return 0;
          v = v << 4 | (unsigned)d;
        }
        if (v == 0 || v > 0x7f)
          *fits = 0;
        c = (char)v;
      } else if (map && (map - "\"\"\\\\//b\bf\fn\nr\rt\t") % 2 == 0) {
        c = map[1];
      } else {
        return 0;
      }
    } else if ((unsigned char)c < 0x20) {
      return 0;
    }
    if (n + 1 < cap)
      out[n++] = c;
    else
      *fits = 0;
  }
  if (cap)
    out[n] = '\0';
  return eat(s, '"');
}

/* Skips any JSON value; 0 on a syntax error. */
static int skip_value(Scan *s, int depth) {
  char tmp[1];
  int fits;
  ws(s);
  if (s->p >= s->end || depth > MAX_DEPTH)
    return 0;
  if (*s->p == '"')
    return string(s, tmp, sizeof tmp, &fits);
  if (*s->p == '{' || *s->p == '[') {
    char close = *s->p == '{' ? '}' : ']';
    int object = *s->p == '{';
    s->p++;
    if (eat(s, close))
      return 1;
    do {
      if (object && (!string(s, tmp, sizeof tmp, &fits) || !eat(s, ':')))
        return 0;
      if (!skip_value(s, depth + 1))
        return 0;
    } while (eat(s, ','));
    return eat(s, close);
  }
  const char *start = s->p;
  while (s->p < s->end && strchr("0123456789+-.eEtrufalsn", *s->p))
    s->p++;
  return s->p > start;
}

/* A non-negative integer below 2^62. */
static int integer(Scan *s, int64_t *v) {
  ws(s);
  const char *start = s->p;
  *v = 0;
  while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
    if (*v > ((int64_t)1 << 62) / 10)
      return 0;
    *v = *v * 10 + (*s->p++ - '0');
  }
  return s->p > start && (s->p >= s->end || !strchr(".eE", *s->p));
}

/* [n, n, ...] with at most max entries; returns the count or -1. */
static int64_t int_list(Scan *s, int64_t *out, int64_t max) {
  int64_t n = 0;
  if (!eat(s, '['))
    return -1;
  if (eat(s, ']'))
    return 0;
  do {
    if (n == max || !integer(s, &out[n++]))
      return -1;
  } while (eat(s, ','));
  return eat(s, ']') ? n : -1;
}

int nnrt_st_dtype_width(const char *t) {
  static const struct { const char *name; int width; } types[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
      {"I8", 1},  {"U64", 8}, {"U32", 4}, {"U16", 2},  {"U8", 1},  {"BOOL", 1},
      {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    if (strcmp(t, types[i].name) == 0)
      return types[i].width;
  return 0;
}

void nnrt_st_copy_floats(void *dst, int64_t elem_size, const unsigned char *src, int width,
                         int64_t n) {
  if (width == elem_size) {
    memcpy(dst, src, (size_t)(n * elem_size));
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    double v;
    if (width == 4) {
      float f;
      memcpy(&f, src + 4 * i, 4);
      v = f;
    } else {
      memcpy(&v, src + 8 * i, 8);
    }
    if (elem_size == 4)
      ((float *)dst)[i] = (float)v;
    else
      ((double *)dst)[i] = v;
  }
}

/* Says what is wrong in st->why; returns -1. */
__attribute__((format(printf, 2, 3))) static int fail(NnStFile *st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(st->why, sizeof st->why, fmt, ap);
  va_end(ap);
  return -1;
}

int nnrt_st_open(const void *file, size_t size, NnStFile *st) {
  const unsigned char *f = file;
  st->why[0] = '\0';
  if (!f || size < 8)
    return fail(st, "truncated: %zu bytes; a safetensors file begins with an 8-byte header "
                "length", f ? size : 0);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--)
    n = n << 8 | f[i];
  if (n > MAX_HEADER)
    return fail(st, "header length %llu is implausible; HINT: is this a safetensors file?",
                (unsigned long long)n);
  if (n > size - 8)
    return fail(st, "truncated: the header is %llu bytes but only %zu follow",
                (unsigned long long)n, size - 8);
  if (n == 0 || f[8] != '{')
    return fail(st, "the header is not a JSON object; HINT: is this a safetensors file?");
  st->header = (const char *)f + 8;
  st->header_len = (size_t)n;
  st->data = f + 8 + n;
  st->data_len = size - 8 - (size_t)n;
  return 0;
}

/* The entry object at s into t (t->name already set); -1 on any problem. */
static int entry(Scan *s, NnStFile *st, NnStTensor *t) {
  const char *name = t->name;
  char key[32];
  int fits, has_dtype = 0;
  int64_t off[2] = {-1, -1};
  t->rank = -1;
  if (!eat(s, '{'))
    return fail(st, "tensor '%s' is not described by an object", name);
  if (!eat(s, '}')) {
    do {
      if (!string(s, key, sizeof key, &fits) || !eat(s, ':'))
        return fail(st, "bad JSON header in tensor '%s'", name);
      if (fits && !strcmp(key, "dtype")) {
        if (!string(s, t->dtype, sizeof t->dtype, &fits))
          return fail(st, "tensor '%s' has no \"dtype\" string", name);
        has_dtype = 1;
        if (!fits)
          t->dtype[0] = '\0'; /* too long for any dtype: unknown */
      } else if (fits && !strcmp(key, "shape")) {
        if ((t->rank = int_list(s, t->dims, NNRT_ST_MAX_RANK)) < 0)
          return fail(st, "tensor '%s' has no valid \"shape\" (at most %d non-negative "
                      "integers)", name, NNRT_ST_MAX_RANK);
      } else if (fits && !strcmp(key, "data_offsets")) {
        if (int_list(s, off, 2) != 2)
          return fail(st, "tensor '%s' has no valid \"data_offsets\" [begin, end]", name);
      } else if (!skip_value(s, 1)) {
        return fail(st, "bad JSON header in tensor '%s'", name);
      }
    } while (eat(s, ','));
    if (!eat(s, '}'))
      return fail(st, "bad JSON header in tensor '%s'", name);
  }
  if (!has_dtype)
    return fail(st, "tensor '%s' has no \"dtype\" string", name);
  if (!(t->width = nnrt_st_dtype_width(t->dtype)))
    return fail(st, "tensor '%s' has unknown dtype '%s'", name, t->dtype);
  if (t->rank < 0)
    return fail(st, "tensor '%s' has no valid \"shape\" (at most %d non-negative integers)",
                name, NNRT_ST_MAX_RANK);
  if (off[0] < 0 || off[0] > off[1])
    return fail(st, "tensor '%s' has no valid \"data_offsets\" [begin, end]", name);
  int64_t elems = 1;
  for (int64_t i = 0; i < t->rank; i++) {
    if (t->dims[i] > 0 && elems > (INT64_MAX / 16) / t->dims[i])
      return fail(st, "tensor '%s' has an implausible shape", name);
    elems *= t->dims[i];
  }
  if ((uint64_t)off[1] > st->data_len)
    return fail(st, "truncated: tensor '%s' ends at byte %lld of the data, but the file holds "
                "only %zu bytes of data", name, (long long)off[1], st->data_len);
  if (off[1] - off[0] != elems * t->width)
    return fail(st, "tensor '%s' has %lld bytes for %lld elements of %s", name,
                (long long)(off[1] - off[0]), (long long)elems, t->dtype);
  t->bytes = st->data + off[0];
  t->nbytes = off[1] - off[0];
  return 1;
}

int nnrt_st_next(NnStFile *st, size_t *at, NnStTensor *t) {
  Scan s = {st->header + *at, st->header + st->header_len};
  int fits;
  if (*at > st->header_len)
    return 0; /* ended */
  for (;;) {
    int first = s.p == st->header;
    if (first ? !eat(&s, '{') : (!eat(&s, ',') && !eat(&s, '}')))
      return fail(st, "bad JSON header near byte %zu", (size_t)(s.p - st->header));
    if (s.p[-1] == '}' || (first && eat(&s, '}'))) {
      *at = st->header_len + 1;
      return 0;
    }
    memset(t, 0, sizeof *t);
    if (!string(&s, t->name, sizeof t->name, &fits) || !eat(&s, ':'))
      return fail(st, "bad JSON header near byte %zu", (size_t)(s.p - st->header));
    if (!fits)
      return fail(st, "a tensor name is longer than %zu bytes", sizeof t->name - 1);
    if (strcmp(t->name, "__metadata__") != 0) {
      int r = entry(&s, st, t);
      *at = (size_t)(s.p - st->header);
      return r;
    }
    if (!skip_value(&s, 1))
      return fail(st, "bad JSON header in \"__metadata__\"");
  }
}

int nnrt_st_find(NnStFile *st, const char *name, NnStTensor *t) {
  size_t at = 0;
  int r;
  while ((r = nnrt_st_next(st, &at, t)) > 0)
    if (!strcmp(t->name, name))
      return 1;
  return r;
}

/* ---- writing ---- */

/* Appends to buf at *n what fits in cap; *n always advances by the full length, so a
 * first call with cap 0 measures. Pieces are short: names go through put_string. */
__attribute__((format(printf, 4, 5))) static void put(char *buf, size_t cap, size_t *n,
                                                      const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (k <= 0)
    return;
  if ((size_t)k >= sizeof tmp)
    k = sizeof tmp - 1;
  for (int i = 0; i < k; i++, (*n)++)
    if (*n < cap)
      buf[*n] = tmp[i];
}

/* s as a JSON string (names are identifiers with dots, but quote what must be quoted). */
static void put_string(char *buf, size_t cap, size_t *n, const char *s) {
  put(buf, cap, n, "\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      put(buf, cap, n, "\\%c", c);
    else if (c < 0x20)
      put(buf, cap, n, "\\u%04x", c);
    else
      put(buf, cap, n, "%c", c);
  }
  put(buf, cap, n, "\"");
}

size_t nnrt_st_header(char *buf, size_t cap, const NnModelDesc *d, const char *format) {
  size_t n = 8; /* the length comes first, written last */
  int64_t offset = 0, es = d->elem_size;
  put(buf, cap, &n, "{\"__metadata__\":{\"format\":");
  put_string(buf, cap, &n, format);
  put(buf, cap, &n, ",\"model\":");
  put_string(buf, cap, &n, d->name ? d->name : "");
  put(buf, cap, &n, "}");
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    put(buf, cap, &n, ",");
    put_string(buf, cap, &n, p->name);
    put(buf, cap, &n, ":{\"dtype\":\"%s\",\"shape\":[", es == 4 ? "F32" : "F64");
    for (int64_t i = 0; i < p->rank; i++)
      put(buf, cap, &n, "%s%lld", i ? "," : "", (long long)p->dims[i]);
    put(buf, cap, &n, "],\"data_offsets\":[%lld,%lld]}", (long long)offset,
        (long long)(offset + p->size * es));
    offset += p->size * es;
  }
  put(buf, cap, &n, "}");
  while (n % 8)
    put(buf, cap, &n, " ");
  if (n <= cap) {
    uint64_t len = n - 8;
    for (int i = 0; i < 8; i++)
      buf[i] = (char)(unsigned char)(len >> (8 * i));
  }
  return n;
}
