/* npy.c — NumPy's .npy format: takes an inputs file and a targets file (`np.save` output),
 * gives an NnData whose inputs are the array's elements times `scale` (uint8 and int8 arrays
 * are kept as bytes, like IDX images) and whose targets are the second array's rows; and
 * writes predict's outputs as a .npy array (N, out_size) that `np.load` reads.
 *
 * Layout (numpy/lib/format.py): the magic "\x93NUMPY", a version byte pair (1.0: a 2-byte
 * header length; 2.0 and 3.0: 4 bytes), then a Python dict literal such as
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (60000, 28, 28), }
 * padded with spaces to a multiple of 64 and ending in '\n', then the elements in C order.
 * Supported element types: float32/64, int8, uint8, int32, int64, little-endian. Every
 * problem (bad magic, Fortran order, another dtype, truncation, a shape that does not fit the
 * model, labels out of range) names the file and exits with status 1. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nnrt_internal.h"

enum {
  NPY_MAX_DIMS = 16,    /* more is surely not a data set */
  NPY_MAX_HEADER = 1 << 16, /* numpy's own limit for version 1.0 headers, generous for 2.0 */
  NPY_CHUNK = 1 << 20,  /* bytes read and converted at a time; a multiple of 8 */
};

static const char NPY_MAGIC[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* What a header says. */
typedef struct NpyHeader {
  char kind;                  /* 'f' float, 'i' signed, 'u' unsigned */
  int width;                  /* bytes per element */
  int ndims;
  int64_t dims[NPY_MAX_DIMS]; /* dims[0] is the sample count */
  int64_t per_sample;         /* product of dims[1..]; 1 for a 1-D array */
  int64_t data_at;            /* file offset of the first element */
} NpyHeader;

static FILE *current; /* the file being read: closed before an error exit */

NNRT_NORETURN NNRT_PRINTF(2, 3) static void npy_fail(const char *path, const char *fmt, ...) {
  char msg[640];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (current)
    fclose(current);
  current = NULL;
  nnrt_file_error(path, "%s", msg);
}

int nnrt_npy_sniff(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return 0;
  char m[6];
  size_t n = fread(m, 1, 6, f);
  fclose(f);
  return n == 6 && memcmp(m, NPY_MAGIC, 6) == 0;
}

/* The value text after 'key': in the dict literal, or NULL. */
static const char *dict_value(const char *dict, const char *key) {
  char quoted[32];
  for (int q = 0; q < 2; q++) { /* numpy writes single quotes; accept double ones too */
    snprintf(quoted, sizeof quoted, q ? "\"%s\"" : "'%s'", key);
    const char *at = strstr(dict, quoted);
    if (!at)
      continue;
    at += strlen(quoted);
    while (*at == ' ')
      at++;
    if (*at++ != ':')
      return NULL;
    while (*at == ' ')
      at++;
    return at;
  }
  return NULL;
}

/* "[28,28]" into buf: the per-sample dims. */
static const char *dims_str(const NpyHeader *h, char *buf, size_t cap) {
  size_t n = (size_t)snprintf(buf, cap, "[");
  for (int i = 1; i < h->ndims && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i > 1 ? "," : "", (long long)h->dims[i]);
  if (n < cap)
    snprintf(buf + n, cap - n, "]");
  return buf;
}

static void parse_descr(const char *path, const char *v, NpyHeader *h) {
  char descr[16] = "";
  if (!v || (*v != '\'' && *v != '"'))
    npy_fail(path, "the header has no 'descr' string; HINT: is this a file np.save wrote?");
  size_t n = strcspn(v + 1, "'\"");
  snprintf(descr, sizeof descr, "%.*s", (int)(n < 15 ? n : 15), v + 1);
  char order = descr[0], kind = descr[1];
  int width = atoi(descr + 2);
  if (order == '>' && width > 1)
    npy_fail(path, "elements are big-endian ('%s'); HINT: save it little-endian, e.g. "
             "np.save(path, a.astype('<f4'))", descr);
  int ok = (order == '<' || order == '|' || order == '=') &&
           ((kind == 'f' && (width == 4 || width == 8)) ||
            (kind == 'i' && (width == 1 || width == 4 || width == 8)) ||
            (kind == 'u' && width == 1)) &&
           descr[2 + strspn(descr + 2, "0123456789")] == '\0';
  if (!ok)
    npy_fail(path, "unsupported element type '%s' (supported: float32 '<f4', float64 '<f8', "
             "int8 '|i1', uint8 '|u1', int32 '<i4', int64 '<i8'); HINT: convert it with "
             "a.astype(np.float32)", descr);
  h->kind = kind;
  h->width = width;
}

static void parse_shape(const char *path, const char *v, NpyHeader *h) {
  if (!v || *v != '(')
    npy_fail(path, "the header has no 'shape' tuple");
  h->ndims = 0;
  h->per_sample = 1;
  for (const char *s = v + 1;;) {
    while (*s == ' ' || *s == ',')
      s++;
    if (*s == ')')
      break;
    char *end;
    errno = 0;
    long long d = strtoll(s, &end, 10);
    if (end == s || d < 0 || errno == ERANGE || d > ((int64_t)1 << 40))
      npy_fail(path, "the header's shape is not a tuple of sizes: '%.40s'", v);
    if (h->ndims == NPY_MAX_DIMS)
      npy_fail(path, "the array has more than %d dimensions", NPY_MAX_DIMS);
    h->dims[h->ndims] = d;
    if (h->ndims++ > 0) {
      h->per_sample *= d;
      if (h->per_sample > ((int64_t)1 << 40))
        npy_fail(path, "implausible sample size");
    }
    s = end;
  }
  if (h->ndims == 0)
    npy_fail(path, "the array is a single number (shape ()); HINT: a data set has one row per "
             "sample");
}

/* Reads and checks the header; leaves the file at the first element. */
static void read_header(FILE *f, const char *path, NpyHeader *h) {
  unsigned char pre[12]; /* magic, version, header length (2 or 4 bytes) */
  size_t got = fread(pre, 1, 8, f);
  if (got < 8 || memcmp(pre, NPY_MAGIC, 6) != 0)
    npy_fail(path, "%s; HINT: .npy files begin with \\x93NUMPY (write them with np.save)",
             got < 8 ? "too short to be a .npy file" : "bad magic: not a .npy file");
  int major = pre[6];
  if (major < 1 || major > 3)
    npy_fail(path, ".npy format version %d.%d is not supported (1.0 to 3.0 are)", major,
             pre[7]);
  int len_bytes = major == 1 ? 2 : 4;
  if (fread(pre + 8, 1, (size_t)len_bytes, f) < (size_t)len_bytes)
    npy_fail(path, "truncated: the header length is cut off");
  int64_t len = pre[8] | pre[9] << 8;
  if (len_bytes == 4)
    len = (int64_t)pre[8] | (int64_t)pre[9] << 8 | (int64_t)pre[10] << 16 |
          (int64_t)pre[11] << 24;
  if (len <= 0 || len > NPY_MAX_HEADER)
    npy_fail(path, "implausible header length %lld", (long long)len);
  static char dict[NPY_MAX_HEADER + 1]; /* static: an error exit leaks nothing */
  if ((int64_t)fread(dict, 1, (size_t)len, f) < len)
    npy_fail(path, "truncated: the header is cut off");
  dict[len] = '\0';
  const char *fo = dict_value(dict, "fortran_order");
  if (!fo)
    npy_fail(path, "the header has no 'fortran_order'");
  if (strncmp(fo, "True", 4) == 0)
    npy_fail(path, "the array is in Fortran order; HINT: save np.ascontiguousarray(a) "
             "instead (C order)");
  parse_descr(path, dict_value(dict, "descr"), h);
  parse_shape(path, dict_value(dict, "shape"), h);
  h->data_at = 6 + 2 + len_bytes + len;
}

/* The file's length against the elements its header declares. */
static void check_length(FILE *f, const char *path, const NpyHeader *h) {
  int64_t need = h->dims[0] * h->per_sample * h->width;
  if (fseek(f, 0, SEEK_END) != 0)
    return; /* not seekable (a pipe): a short read reports it instead */
  int64_t size = ftell(f);
  if (size - h->data_at < need)
    npy_fail(path, "truncated: %lld samples of %lld %d-byte elements need %lld bytes of data, "
             "the file holds %lld", (long long)h->dims[0], (long long)h->per_sample, h->width,
             (long long)need, (long long)(size - h->data_at));
  fseek(f, h->data_at, SEEK_SET);
}

/* Little-endian element i of buf as a double. */
static double element(const NpyHeader *h, const unsigned char *p) {
  uint64_t u = 0;
  for (int b = h->width - 1; b >= 0; b--)
    u = u << 8 | p[b];
  switch (h->kind) {
  case 'u': return (double)u;
  case 'i':
    if (h->width == 1) return (double)(int8_t)u;
    if (h->width == 4) return (double)(int32_t)(uint32_t)u;
    return (double)(int64_t)u;
  default:
    if (h->width == 4) {
      uint32_t w = (uint32_t)u;
      float v;
      memcpy(&v, &w, 4);
      return v;
    } else {
      double v;
      memcpy(&v, &u, 8);
      return v;
    }
  }
}

/* Reads the elements into base (elem_size-byte elements), each times scale. */
static void read_elements(FILE *f, const char *path, const NpyHeader *h, void *base,
                          int64_t elem_size, double scale, const char *what) {
  static unsigned char buf[NPY_CHUNK];
  int64_t total = h->dims[0] * h->per_sample, done = 0;
  while (done < total) {
    int64_t n = total - done < NPY_CHUNK / h->width ? total - done : NPY_CHUNK / h->width;
    if ((int64_t)fread(buf, (size_t)h->width, (size_t)n, f) < n)
      npy_fail(path, "truncated: the %s end early", what);
    for (int64_t i = 0; i < n; i++) {
      double v = element(h, buf + i * h->width);
      if (!isfinite(v))
        npy_fail(path, "element %lld of sample %lld is %g (not finite)",
                 (long long)((done + i) % h->per_sample), (long long)((done + i) / h->per_sample),
                 v);
      nnrt_set(base, done + i, elem_size, v * scale);
    }
    done += n;
  }
}

static FILE *open_npy(const char *path, NpyHeader *h) {
  FILE *f = fopen(path, "rb");
  if (!f)
    nnrt_fatal("cannot open '%s': %s", path, strerror(errno));
  current = f;
  read_header(f, path, h);
  check_length(f, path, h);
  return f;
}

static void close_npy(FILE *f) {
  fclose(f);
  current = NULL;
}

static void load_inputs(const NnModelDesc *d, const char *path, double scale, NnData *out) {
  NpyHeader h;
  FILE *f = open_npy(path, &h);
  char shape[160], model[128];
  if (h.per_sample != d->x_size)
    npy_fail(path, "samples are %s (%lld value%s) but model '%s' takes %s (%lld values); "
             "HINT: the first axis counts the samples", dims_str(&h, shape, sizeof shape),
             (long long)h.per_sample, nnrt_plural(h.per_sample), d->name,
             nnrt_shape_str(d->elem_size, d->x_rank, d->x_dims, model, sizeof model),
             (long long)d->x_size);
  if (h.dims[0] == 0)
    npy_fail(path, "no samples (shape starts with 0)");
  out->rows = h.dims[0];
  int64_t count = out->rows * h.per_sample;
  if (h.width == 1) { /* bytes stay bytes; nnrt_gather scales them */
    out->x = NNRT_ALLOC(count, uint8_t);
    out->x_store = h.kind == 'u' ? NNRT_STORE_U8 : NNRT_STORE_I8;
    out->x_scale = scale;
    if ((int64_t)fread(out->x, 1, (size_t)count, f) < count)
      npy_fail(path, "truncated: the inputs end early");
  } else {
    out->x = NNRT_ALLOC(count * d->elem_size, char);
    read_elements(f, path, &h, out->x, d->elem_size, scale, "inputs");
  }
  close_npy(f);
}

static void load_targets(const NnModelDesc *d, const char *path, const char *inputs,
                         NnData *out) {
  NpyHeader h;
  FILE *f = open_npy(path, &h);
  char shape[160];
  if (h.dims[0] != out->rows)
    npy_fail(path, "%lld target rows for %lld samples in %s", (long long)h.dims[0],
             (long long)out->rows, inputs);
  if (h.per_sample != d->y_size)
    npy_fail(path, "targets are %s (%lld value%s per sample) but model '%s' has %lld%s",
             dims_str(&h, shape, sizeof shape), (long long)h.per_sample,
             nnrt_plural(h.per_sample), d->name, (long long)d->y_size,
             d->labels ? " (one class index per sample: shape (N,))" : "");
  out->y_size = d->y_size;
  out->y = NNRT_ALLOC(out->rows * d->y_size * d->elem_size, char);
  read_elements(f, path, &h, out->y, d->elem_size, 1.0, "targets");
  close_npy(f);
  nnrt_check_labels(d, path, out->y, out->rows * d->y_size);
}

void nnrt_npy_load(const NnModelDesc *d, const char *inputs, const char *targets, double scale,
                   NnData *out) {
  nnrt_data_begin(out, d, 0, inputs);
  load_inputs(d, inputs, scale, out);
  if (targets)
    load_targets(d, targets, inputs, out);
}

/* ---- writing (predict -o out.npy) ---- */

int nnrt_npy_path(const char *path) {
  size_t n = strlen(path);
  return n >= 4 && strcmp(path + n - 4, ".npy") == 0;
}

void nnrt_npy_write_header(FILE *f, int64_t elem_size, int64_t rows, int64_t cols) {
  char dict[128];
  int n = snprintf(dict, sizeof dict, "{'descr': '<f%d', 'fortran_order': False, 'shape': "
                   "(%lld, %lld), }", (int)elem_size, (long long)rows, (long long)cols);
  int total = 10 + n + 1, pad = (64 - total % 64) % 64; /* data 64-byte aligned, as numpy does */
  fwrite(NPY_MAGIC, 1, 6, f);
  fputc(1, f);
  fputc(0, f);
  fputc((n + pad + 1) & 0xff, f);
  fputc((n + pad + 1) >> 8, f);
  fwrite(dict, 1, (size_t)n, f);
  for (int i = 0; i < pad; i++)
    fputc(' ', f);
  fputc('\n', f);
}

void nnrt_npy_write_rows(FILE *f, const void *base, int64_t count, int64_t elem_size) {
  for (int64_t i = 0; i < count; i++) {
    unsigned char b[8];
    uint64_t u;
    if (elem_size == 4) {
      float v = ((const float *)base)[i];
      uint32_t w;
      memcpy(&w, &v, 4);
      u = w;
    } else {
      memcpy(&u, (const double *)base + i, 8);
    }
    for (int k = 0; k < elem_size; k++)
      b[k] = (unsigned char)(u >> (8 * k)); /* little-endian whatever the host */
    fwrite(b, 1, (size_t)elem_size, f);
  }
}
