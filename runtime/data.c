/* data.c — the training set: takes the model's data declaration (an inline table or a CSV path)
 * or a --data override, gives an NnData of rows × (x_size + y_size) doubles in memory.
 * Every problem names the file, line and column and exits with status 1; nothing here trusts
 * the input (embedded NULs, CRLF line ends, huge fields, non-finite numbers). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nnrt_internal.h"

/* How the first non-blank line of a CSV is treated. */
typedef enum HeaderMode {
  HEADER_NO,   /* every line is data */
  HEADER_YES,  /* the first line is a header (declared in the .nn file) */
  HEADER_AUTO, /* --data on a model without a CSV declaration: skip it if it holds no number */
} HeaderMode;

/* "path:line[:col]: error: MSG" — the clang form, so editors can jump to the spot. */
NNRT_NORETURN NNRT_PRINTF(4, 5) static void file_error(const char *path, long line, long col,
                                                      const char *fmt, ...) {
  fflush(stdout);
  if (line <= 0)
    fprintf(stderr, "%s: error: ", path);
  else if (col <= 0)
    fprintf(stderr, "%s:%ld: error: ", path, line);
  else
    fprintf(stderr, "%s:%ld:%ld: error: ", path, line, col);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(NNRT_EXIT_FAIL);
}

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q)
    nnrt_fatal("out of memory (%zu bytes) at %s:%d", n, __FILE__, __LINE__);
  return q;
}

/* The whole file, NUL-terminated (one extra byte); *len excludes the terminator. */
static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    nnrt_fatal("cannot open '%s': %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  char *buf = xrealloc(NULL, cap);
  for (;;) {
    if (n + 1 >= cap) /* keep room for the terminator */
      buf = xrealloc(buf, cap *= 2);
    size_t got = fread(buf + n, 1, cap - n - 1, f);
    n += got;
    if (got == 0)
      break;
  }
  if (ferror(f)) {
    int e = errno;
    fclose(f);
    nnrt_fatal("cannot read '%s': %s", path, strerror(e));
  }
  fclose(f);
  buf[n] = '\0';
  *len = n;
  return buf;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

static int blank_line(const char *s) {
  while (is_blank(*s))
    s++;
  return *s == '\0';
}

static int64_t count_fields(const char *s) {
  int64_t n = 1;
  for (; *s; s++)
    n += *s == ',';
  return n;
}

/* Parses the number in field [s, end) (a comma or the line's end). Returns 1 and sets *v on
 * success; 0 when the field is not a number, with *why saying how. */
static int parse_number(const char *s, const char *end, double *v, const char **why) {
  char *stop;
  errno = 0;
  *v = strtod(s, &stop);
  const char *p = stop;
  while (p < end && is_blank(*p))
    p++;
  if (stop == s || p != end) {
    *why = "is not a number";
    return 0;
  }
  if (!isfinite(*v)) {
    *why = "is not a finite number";
    return 0;
  }
  return 1; /* underflow to 0 or a denormal is fine for training data */
}

/* Field [s, end) trimmed and cut to fit a message. */
static const char *field_text(const char *s, const char *end, char *buf, size_t cap) {
  while (end > s && is_blank(end[-1]))
    end--;
  size_t n = (size_t)(end - s);
  if (n >= cap) {
    memcpy(buf, s, cap - 4);
    memcpy(buf + cap - 4, "...", 4);
  } else {
    memcpy(buf, s, n);
    buf[n] = '\0';
  }
  return buf;
}

/* A header line is one without a single numeric field. */
static int looks_like_header(const char *line) {
  for (const char *s = line;;) {
    while (is_blank(*s))
      s++;
    const char *end = strchr(s, ',');
    if (!end)
      end = s + strlen(s);
    double v;
    const char *why;
    if (end > s && parse_number(s, end, &v, &why))
      return 0;
    if (!*end)
      return 1;
    s = end + 1;
  }
}

/* Appends the `cols` numbers of one line to vals, or reports the first bad field. */
static void parse_line(const char *path, long lineno, const char *line, int64_t cols,
                       double *vals) {
  int64_t found = count_fields(line);
  if (found != cols)
    file_error(path, lineno, 0, "expected %lld column%s, found %lld", (long long)cols,
               cols == 1 ? "" : "s", (long long)found);
  const char *s = line;
  for (int64_t c = 0; c < cols; c++) {
    while (is_blank(*s))
      s++;
    const char *end = strchr(s, ',');
    if (!end)
      end = s + strlen(s);
    long col = (long)(s - line) + 1;
    const char *why;
    char text[48];
    if (end == s)
      file_error(path, lineno, col, "empty field in column %lld (expected a number)",
                 (long long)c + 1);
    if (!parse_number(s, end, &vals[c], &why))
      file_error(path, lineno, col, "'%s' %s", field_text(s, end, text, sizeof text), why);
    s = end + 1;
  }
}

static void load_csv(const char *path, int64_t cols, HeaderMode header, NnData *out) {
  size_t len;
  char *text = read_file(path, &len);
  double *vals = NULL;
  int64_t rows = 0, cap = 0;
  int first = 1;
  long lineno = 0;
  for (char *p = text; p < text + len;) {
    char *nl = memchr(p, '\n', (size_t)(text + len - p));
    char *end = nl ? nl : text + len;
    *end = '\0';
    lineno++;
    if (memchr(p, '\0', (size_t)(end - p)))
      file_error(path, lineno, 0, "line contains a NUL byte (is this a binary file?)");
    if (!blank_line(p)) {
      int skip = first && (header == HEADER_YES || (header == HEADER_AUTO && looks_like_header(p)));
      first = 0;
      if (!skip) {
        if (rows == cap) {
          cap = cap ? cap * 2 : 256;
          vals = xrealloc(vals, (size_t)cap * (size_t)cols * sizeof *vals);
        }
        parse_line(path, lineno, p, cols, vals + rows * cols);
        rows++;
      }
    }
    p = end + 1;
  }
  free(text);
  if (rows == 0)
    file_error(path, 0, 0, "no samples");
  out->rows = rows;
  out->cols = cols;
  out->v = vals;
  out->owned = vals;
  out->origin = path;
}

static int readable(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f)
    fclose(f);
  return f != NULL;
}

/* The model's CSV path. A relative one that is not found from the current directory is tried
 * beside the .nn file too, so `./circle train` works from anywhere the source tree is. */
static const char *declared_path(const NnModelDesc *d) {
  static char joined[4096];
  const char *path = d->data->path, *slash = d->source ? strrchr(d->source, '/') : NULL;
  if (path[0] == '/' || !slash || readable(path))
    return path;
  int n = snprintf(joined, sizeof joined, "%.*s/%s", (int)(slash - d->source), d->source, path);
  return n > 0 && (size_t)n < sizeof joined && readable(joined) ? joined : path;
}

void nnrt_data_load(const NnModelDesc *d, const char *path, NnData *out) {
  int64_t cols = d->x_size + d->y_size;
  memset(out, 0, sizeof *out);
  if (path) {
    HeaderMode h = d->data->kind != NN_DATA_CSV ? HEADER_AUTO
                   : d->data->header           ? HEADER_YES
                                               : HEADER_NO;
    load_csv(path, cols, h, out);
    return;
  }
  switch (d->data->kind) {
  case NN_DATA_TABLE:
    if (d->data->rows <= 0 || !d->data->table)
      nnrt_fatal("the model's data table has no samples; pass --data FILE.csv");
    out->rows = d->data->rows;
    out->cols = cols;
    out->v = d->data->table;
    out->origin = "the model's data table";
    return;
  case NN_DATA_CSV:
    if (d->data->path && *d->data->path) {
      load_csv(declared_path(d), cols, d->data->header ? HEADER_YES : HEADER_NO, out);
      return;
    }
    break;
  default:
    break;
  }
  nnrt_fatal("this model declares no data; pass --data FILE.csv");
}

void nnrt_data_free(NnData *data) {
  free(data->owned);
  memset(data, 0, sizeof *data);
}
