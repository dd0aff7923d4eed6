/* data.c — data sets in memory: takes a data declaration of the model (an inline table, a CSV
 * file, IDX files through idx.c) or a file named on the command line, gives an NnData of inputs
 * (scaled) and targets in the kernels' element type; and the NnSets that training and
 * evaluation walk: all rows, or a seeded split into training and held-out validation rows.
 * Every problem names the file (and for CSV the line and column) and exits with status 1;
 * nothing here trusts the input (embedded NULs, CRLF line ends, huge fields, non-finite
 * numbers, class labels out of range). */
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
  HEADER_AUTO, /* a file from the command line: skip it if it holds no number */
} HeaderMode;

/* "path:line[:col]: error: MSG" — the clang form, so editors can jump to the spot. */
NNRT_NORETURN NNRT_PRINTF(4, 5) static void csv_error(const char *path, long line, long col,
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
  nnrt_exit(NNRT_EXIT_FAIL);
}

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q)
    nnrt_fatal("out of memory (%zu bytes) at %s:%d", n, __FILE__, __LINE__);
  return q;
}

/* ---- labels ---- */

int64_t nnrt_classes(const NnModelDesc *d) {
  if (d->task == NN_TASK_MULTICLASS && nnrt_positions(d) > 1)
    return d->out_size / d->y_size;
  if (d->task == NN_TASK_MULTICLASS)
    return d->out_size;
  if (d->task == NN_TASK_BINARY)
    return 2; /* each output is a decision between class 0 and class 1 */
  return 0;
}

int64_t nnrt_positions(const NnModelDesc *d) {
  int64_t ys = d->y_size, os = d->out_size;
  return ys > 1 && ys < os && os % ys == 0 ? ys : 1;
}

const char *nnrt_label_problem(const NnModelDesc *d, double v, char *buf, size_t cap) {
  int64_t classes = nnrt_classes(d);
  if (!d->labels || classes == 0)
    return NULL; /* a regression on label values accepts any number */
  if (v != floor(v))
    snprintf(buf, cap, "label %g is not a class index (an integer)", v);
  else if (v < 0 || v >= (double)classes)
    snprintf(buf, cap, "label %g is out of range: model '%s' has %lld classes (0..%lld)", v,
             d->name, (long long)classes, (long long)classes - 1);
  else
    return NULL;
  return buf;
}

void nnrt_check_labels(const NnModelDesc *d, const char *path, const void *y, int64_t n) {
  char why[160];
  for (int64_t i = 0; i < n; i++)
    if (nnrt_label_problem(d, nnrt_get(y, i, d->elem_size), why, sizeof why))
      nnrt_file_error(path, "sample %lld: %s", (long long)i, why);
}

/* ---- building an NnData row by row ---- */

void nnrt_data_begin(NnData *out, const NnModelDesc *d, int64_t y_size, const char *origin) {
  memset(out, 0, sizeof *out);
  out->x_size = d->x_size;
  out->y_size = y_size;
  out->elem_size = d->elem_size;
  out->origin = origin;
}

/* Appends one sample: x_size inputs (multiplied by scale) then y_size targets; *cap is the
 * rows allocated so far. */
static void data_push(NnData *out, int64_t *cap, const double *vals, double scale) {
  int64_t es = out->elem_size, xs = out->x_size, ys = out->y_size, r = out->rows;
  if (r == *cap) {
    *cap = *cap ? *cap * 2 : 256;
    out->x = xrealloc(out->x, (size_t)(*cap * xs * es));
    if (ys)
      out->y = xrealloc(out->y, (size_t)(*cap * ys * es));
  }
  for (int64_t j = 0; j < xs; j++)
    nnrt_set(out->x, r * xs + j, es, vals[j] * scale);
  for (int64_t j = 0; j < ys; j++)
    nnrt_set(out->y, r * ys + j, es, vals[xs + j]);
  out->rows++;
}

int64_t nnrt_data_bytes(const NnData *data) {
  int64_t x_elem = data->x_store == NNRT_STORE_ELEM ? data->elem_size : 1;
  return data->rows * (data->x_size * x_elem + data->y_size * data->elem_size);
}

void nnrt_data_free(NnData *data) {
  free(data->x);
  free(data->y);
  memset(data, 0, sizeof *data);
}

/* ---- CSV ---- */

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

/* Reads the `cols` numbers of one line into vals, or reports the first bad field. */
static void parse_line(const char *path, long lineno, const char *line, int64_t cols,
                       double *vals) {
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
      csv_error(path, lineno, col, "empty field in column %lld (expected a number)",
                (long long)c + 1);
    if (!parse_number(s, end, &vals[c], &why))
      csv_error(path, lineno, col, "'%s' %s", field_text(s, end, text, sizeof text), why);
    s = end + 1;
  }
}

/* The column count of the first data line: inputs then targets; for predict's inputs-only use,
 * x_size alone is accepted too. Later lines must have as many. */
static int64_t first_columns(const NnModelDesc *d, const char *path, long lineno, NnFileUse use,
                             int64_t found) {
  int64_t both = d->x_size + d->y_size;
  if (found == both || (use == NNRT_USE_INPUTS && found == d->x_size))
    return found;
  if (use == NNRT_USE_INPUTS && d->y_size)
    csv_error(path, lineno, 0, "expected %lld columns (inputs) or %lld (inputs and targets), "
              "found %lld", (long long)d->x_size, (long long)both, (long long)found);
  csv_error(path, lineno, 0, "expected %lld column%s, found %lld", (long long)both,
            nnrt_plural(both), (long long)found);
}

static void load_csv(const NnModelDesc *d, const char *path, HeaderMode header, NnFileUse use,
                     double scale, NnData *out) {
  size_t len;
  char *text = read_file(path, &len);
  int64_t cols = 0, cap = 0;
  double *vals = NNRT_ALLOC(d->x_size + d->y_size + 1, double);
  int first = 1;
  long lineno = 0;
  nnrt_data_begin(out, d, use == NNRT_USE_TARGETS ? d->y_size : 0, path);
  for (char *p = text; p < text + len;) {
    char *nl = memchr(p, '\n', (size_t)(text + len - p));
    char *end = nl ? nl : text + len;
    *end = '\0';
    lineno++;
    if (memchr(p, '\0', (size_t)(end - p)))
      csv_error(path, lineno, 0, "line contains a NUL byte (is this a binary file?)");
    if (!blank_line(p)) {
      int skip = first && (header == HEADER_YES || (header == HEADER_AUTO && looks_like_header(p)));
      if (!skip) {
        int64_t found = count_fields(p);
        if (out->rows == 0)
          cols = first_columns(d, path, lineno, use, found);
        else if (found != cols)
          csv_error(path, lineno, 0, "expected %lld column%s, found %lld", (long long)cols,
                    nnrt_plural(cols), (long long)found);
        parse_line(path, lineno, p, cols, vals);
        char why[160];
        if (out->y_size && nnrt_label_problem(d, vals[d->x_size], why, sizeof why))
          csv_error(path, lineno, 0, "%s", why);
        data_push(out, &cap, vals, scale);
      }
      first = 0;
    }
    p = end + 1;
  }
  free(vals);
  free(text);
  if (out->rows == 0)
    csv_error(path, 0, 0, "no samples");
}

/* ---- the model's declarations ---- */

static void load_table(const NnModelDesc *d, const NnDataSource *s, NnData *out) {
  const char *origin = "the model's data table";
  if (s->rows <= 0 || !s->table)
    nnrt_fatal("%s has no samples; pass --data FILE", origin);
  int64_t cols = d->x_size + d->y_size, cap = 0;
  nnrt_data_begin(out, d, d->y_size, origin);
  for (int64_t r = 0; r < s->rows; r++) {
    char why[160];
    if (d->y_size && nnrt_label_problem(d, s->table[r * cols + d->x_size], why, sizeof why))
      nnrt_fatal("%s, row %lld: %s", origin, (long long)r + 1, why);
    data_push(out, &cap, s->table + r * cols, s->scale);
  }
}

/* ---- raw text ---- */

/* Byte-level language modelling: the file cut into windows of x_size bytes starting every
 * `stride` bytes (x_size: one after the other); a sample's x is a window's byte ids, y the ids
 * one byte further on. */
static void load_text(const NnModelDesc *d, const char *path, NnData *out) {
  int64_t t = d->x_size, stride = d->data->stride;
  if (d->y_size != t)
    nnrt_fatal("'%s': a text data set needs targets of the input's size; HINT: declare it in "
               "the .nn file as text(\"file\", context = %lld)", path, (long long)t);
  size_t len;
  char *buf = read_file(path, &len);
  if ((int64_t)len < t + 1) {
    free(buf);
    nnrt_fatal("'%s' has %zu byte%s; a text data set needs more than the context (%lld bytes)",
               path, len, nnrt_plural((int64_t)len), (long long)t);
  }
  nnrt_data_begin(out, d, t, path);
  int64_t rows = ((int64_t)len - 1 - t) / stride + 1, es = d->elem_size;
  out->x = xrealloc(NULL, (size_t)(rows * t * es));
  out->y = xrealloc(NULL, (size_t)(rows * t * es));
  const unsigned char *b = (const unsigned char *)buf;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < t; i++) {
      nnrt_set(out->x, r * t + i, es, b[r * stride + i]);
      nnrt_set(out->y, r * t + i, es, b[r * stride + i + 1]);
    }
  out->rows = rows;
  free(buf);
}

void nnrt_data_declared(const NnModelDesc *d, const NnDataSource *s, NnData *out) {
  memset(out, 0, sizeof *out);
  switch (s ? s->kind : NN_DATA_NONE) {
  case NN_DATA_TABLE: load_table(d, s, out); return;
  case NN_DATA_CSV:
    if (s->path && *s->path) {
      load_csv(d, s->path, s->header ? HEADER_YES : HEADER_NO, NNRT_USE_TARGETS, s->scale, out);
      return;
    }
    break;
  case NN_DATA_IDX:
    if (s->path && *s->path) {
      nnrt_idx_load(d, s->path, s->labels, s->scale, out);
      return;
    }
    break;
  case NN_DATA_NPY:
    if (s->path && *s->path) {
      nnrt_npy_load(d, s->path, s->labels, s->scale, out);
      return;
    }
    break;
  case NN_DATA_TEXT:
    if (s->path && *s->path) {
      load_text(d, s->path, out);
      return;
    }
    break;
  default: break;
  }
  nnrt_fatal("this model declares no data; pass --data FILE (CSV, IDX or .npy)");
}

void nnrt_data_file(const NnModelDesc *d, const char *path, const char *labels, NnFileUse use,
                    NnData *out) {
  const NnDataSource *s = d->data;
  double scale = s ? s->scale : 1;
  if (s && s->kind == NN_DATA_TEXT && use == NNRT_USE_TARGETS) { /* any file is text */
    load_text(d, path, out);
    return;
  }
  if (nnrt_npy_sniff(path) || nnrt_npy_path(path)) { /* a bad .npy is reported as one */
    if (use == NNRT_USE_TARGETS && !labels)
      nnrt_fatal("'%s' is a .npy file of inputs; HINT: name its targets file with --labels "
                 "(or --val-labels for --val)", path);
    nnrt_npy_load(d, path, use == NNRT_USE_TARGETS ? labels : NULL, scale, out);
    return;
  }
  if (labels || nnrt_idx_sniff(path)) { /* with labels, a bad IDX file is reported as one */
    int images_only = s && s->kind == NN_DATA_IDX && !s->labels; /* a GAN's data */
    if (use == NNRT_USE_TARGETS && !labels && !images_only)
      nnrt_fatal("'%s' is an IDX file of inputs; HINT: name its labels file with --labels "
                 "(or --val-labels for --val)", path);
    nnrt_idx_load(d, path, use == NNRT_USE_TARGETS ? labels : NULL, scale, out);
    return;
  }
  HeaderMode h = !s || s->kind != NN_DATA_CSV ? HEADER_AUTO : s->header ? HEADER_YES : HEADER_NO;
  load_csv(d, path, h, use, scale, out);
}

/* ---- sets of rows ---- */

static void set_init(NnSet *s, const NnData *data, int64_t n, const char *what) {
  memset(s, 0, sizeof *s);
  s->data = data;
  s->n = n;
  s->idx = NNRT_ALLOC(n > 0 ? n : 1, int64_t);
  snprintf(s->what, sizeof s->what, "%s", what);
}

void nnrt_set_all(NnSet *s, const NnData *data, const char *what) {
  set_init(s, data, data->rows, what);
  for (int64_t i = 0; i < data->rows; i++)
    s->idx[i] = i;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

void nnrt_set_split(const NnData *data, double fraction, uint64_t seed, NnSet *train,
                    NnSet *val) {
  int64_t rows = data->rows;
  if (rows < 2)
    nnrt_fatal("cannot hold out %g of %s for validation: it has %lld sample%s", fraction,
               data->origin, (long long)rows, nnrt_plural(rows));
  int64_t n_val = nnrt_held_out(rows, fraction);
  int64_t *perm = NNRT_ALLOC(rows, int64_t);
  for (int64_t i = 0; i < rows; i++)
    perm[i] = i;
  NnRng r;
  nnrt_rng_seed(&r, seed, NNRT_STREAM_SPLIT);
  nnrt_shuffle(perm, rows, &r);
  char what[160];
  set_init(train, data, rows - n_val, "training set");
  snprintf(what, sizeof what, "validation set (%g of the data, held out)", fraction);
  set_init(val, data, n_val, what);
  memcpy(train->idx, perm, (size_t)(rows - n_val) * sizeof *perm);
  memcpy(val->idx, perm + rows - n_val, (size_t)n_val * sizeof *perm);
  free(perm);
  /* Ascending rows: the held-out set is evaluated in file order, with locality. */
  qsort(train->idx, (size_t)train->n, sizeof *train->idx, cmp_i64);
  qsort(val->idx, (size_t)val->n, sizeof *val->idx, cmp_i64);
}

void nnrt_set_free(NnSet *s) {
  free(s->idx);
  memset(s, 0, sizeof *s);
}
