/* idx.c — the IDX loader (the MNIST family's format): takes an images file and a labels file,
 * each plain or gzip-compressed (zlib's gzread reads both), gives an NnData whose inputs are
 * the images' elements times `scale` (byte images are kept as bytes, with the scale beside them,
 * for nnrt_gather to apply) and whose single target per sample is the label.
 *
 * IDX layout: two zero bytes, an element type byte (0x08 ubyte, 0x09 byte, 0x0B int16, 0x0C
 * int32, 0x0D float32, 0x0E float64), a dimension count byte, the dimensions as big-endian
 * uint32, then the elements, big-endian, row-major. Every check names the file and the problem
 * (bad magic, unknown type, truncation, count or shape mismatch, labels out of range) and
 * exits with status 1; sizes are checked for overflow before anything is allocated. */
#define _DEFAULT_SOURCE /* madvise */

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <zlib.h>

#include "nnrt_internal.h"

enum {
  IDX_MAX_DIMS = 8,        /* more is surely not an image or label file */
  IDX_CHUNK = 1 << 20,     /* bytes decompressed and converted at a time; a multiple of 8 */
};

/* What an IDX header says. */
typedef struct IdxHeader {
  int type;                    /* element type byte */
  int elem_bytes;              /* its width */
  int ndims;                   /* dimensions, >= 1 */
  int64_t dims[IDX_MAX_DIMS];  /* dims[0] is the sample count */
  int64_t per_sample;          /* product of dims[1..] */
} IdxHeader;

static int type_width(int type) {
  switch (type) {
  case 0x08: case 0x09: return 1; /* ubyte, byte */
  case 0x0B: return 2;            /* int16 */
  case 0x0C: case 0x0D: return 4; /* int32, float32 */
  case 0x0E: return 8;            /* float64 */
  default: return 0;
  }
}

static gzFile current; /* the file being read: closed before an error exit, so nothing leaks */

NNRT_NORETURN NNRT_PRINTF(2, 3) static void idx_fail(const char *path, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (current)
    gzclose(current);
  current = NULL;
  nnrt_file_error(path, "%s", msg);
}

static gzFile open_gz(const char *path) {
  errno = 0;
  gzFile f = gzopen(path, "rb");
  if (!f)
    nnrt_fatal("cannot open '%s': %s", path, errno ? strerror(errno) : "out of memory");
  gzbuffer(f, 1 << 17);
  return current = f;
}

static void close_gz(gzFile f) {
  gzclose(f);
  current = NULL;
}

/* Reads up to n bytes; returns how many were read (fewer only at the end of the data). A
 * corrupt compressed stream is an error; a stream cut short just ends early. */
static int64_t read_gz(gzFile f, const char *path, void *buf, int64_t n) {
  int64_t got = 0;
  while (got < n) {
    int64_t want = n - got > (1 << 30) ? (1 << 30) : n - got;
    int r = gzread(f, (char *)buf + got, (unsigned)want);
    if (r < 0) {
      int code;
      const char *msg = gzerror(f, &code);
      if (code == Z_ERRNO)
        msg = strerror(errno);
      idx_fail(path, "cannot read: %s", msg);
    }
    if (r == 0)
      break;
    got += r;
  }
  return got;
}

int nnrt_idx_sniff(const char *path) {
  gzFile f = gzopen(path, "rb");
  if (!f)
    return 0;
  unsigned char m[4];
  int n = gzread(f, m, 4);
  gzclose(f);
  return n == 4 && m[0] == 0 && m[1] == 0 && type_width(m[2]) && m[3] >= 1;
}

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* "[28,28]" into buf: the per-sample dims of h. */
static const char *dims_str(const IdxHeader *h, int from, char *buf, size_t cap) {
  size_t n = (size_t)snprintf(buf, cap, "[");
  for (int i = from; i < h->ndims && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i > from ? "," : "", (long long)h->dims[i]);
  if (n < cap)
    snprintf(buf + n, cap - n, "]");
  return buf;
}

static void read_header(gzFile f, const char *path, IdxHeader *h) {
  unsigned char m[4];
  int64_t got = read_gz(f, path, m, 4);
  if (got < 4)
    idx_fail(path, "truncated: an IDX header needs 4 bytes, found %lld; HINT: is this "
                    "an IDX file?", (long long)got);
  if (m[0] != 0 || m[1] != 0)
    idx_fail(path, "bad magic 0x%08x; HINT: is this an IDX file? (IDX files begin with "
                    "0x00 0x00, a type byte and a dimension count)", (unsigned)be32(m));
  h->type = m[2];
  h->elem_bytes = type_width(m[2]);
  h->ndims = m[3];
  if (!h->elem_bytes)
    idx_fail(path, "unsupported IDX element type 0x%02x (supported: 0x08 ubyte, 0x09 "
                    "byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64)", m[2]);
  if (h->ndims < 1 || h->ndims > IDX_MAX_DIMS)
    idx_fail(path, "IDX header declares %d dimensions (expected 1 to %d)", h->ndims,
                    IDX_MAX_DIMS);
  unsigned char dims[4 * IDX_MAX_DIMS];
  got = read_gz(f, path, dims, 4 * h->ndims);
  if (got < 4 * h->ndims)
    idx_fail(path, "truncated: expected %d bytes of dimensions, found %lld",
                    4 * h->ndims, (long long)got);
  h->per_sample = 1;
  for (int i = 0; i < h->ndims; i++) {
    h->dims[i] = be32(dims + 4 * i);
    if (i > 0)
      h->per_sample *= h->dims[i]; /* < 2^(32*7): checked below before it can overflow */
    if (i > 0 && (h->dims[i] == 0 || h->per_sample > ((int64_t)1 << 40))) {
      char buf[128];
      idx_fail(path, "implausible sample shape %s", dims_str(h, 1, buf, sizeof buf));
    }
  }
}

/* One big-endian element of type h->type at p, as a double. */
static double element(const IdxHeader *h, const unsigned char *p) {
  switch (h->type) {
  case 0x08: return p[0];
  case 0x09: return (int8_t)p[0];
  case 0x0B: return (int16_t)(uint16_t)(p[0] << 8 | p[1]);
  case 0x0C: return (int32_t)be32(p);
  case 0x0D: {
    uint32_t u = be32(p);
    float v;
    memcpy(&v, &u, 4);
    return v;
  }
  default: {
    uint64_t u = (uint64_t)be32(p) << 32 | be32(p + 4);
    double v;
    memcpy(&v, &u, 8);
    return v;
  }
  }
}

/* Where read_body puts the elements, and how. */
typedef struct Sink {
  void *base;        /* (count * per_sample) elements of elem_size bytes */
  int64_t elem_size; /* 4 or 8 */
  double scale;      /* multiplies every element */
  const char *what;  /* "pixels" or "labels": for messages */
} Sink;

/* An uncompressed file shows its length up front: a truncated one is reported before the
 * declared size is allocated. */
static void check_length(gzFile f, const char *path, const IdxHeader *h, int64_t count,
                         const char *what) {
  struct stat sb;
  int64_t need = count * h->per_sample * h->elem_bytes, at = 4 + 4 * (int64_t)h->ndims;
  if (!gzdirect(f) || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
    return;
  if ((int64_t)sb.st_size - at < need)
    idx_fail(path, "truncated: expected %lld bytes of %s, found %lld", (long long)need, what,
             (long long)((int64_t)sb.st_size - at));
}

/* Reads h's count * per_sample elements, converting and scaling them into sink. The chunk
 * buffer is static so that an error exit in the middle leaks nothing. */
static void read_body(gzFile f, const char *path, const IdxHeader *h, int64_t count,
                      const Sink *s) {
  static unsigned char buf[IDX_CHUNK];
  int64_t total = count * h->per_sample, bytes = total * h->elem_bytes;
  int64_t done = 0; /* elements */
  while (done < total) {
    int64_t want = bytes - done * h->elem_bytes;
    want = want > IDX_CHUNK ? IDX_CHUNK : want;
    int64_t got = read_gz(f, path, buf, want);
    if (got < want)
      idx_fail(path, "truncated: expected %lld bytes of %s, found %lld", (long long)bytes,
                      s->what, (long long)(done * h->elem_bytes + got));
    int64_t n = got / h->elem_bytes;
    for (int64_t i = 0; i < n; i++) {
      double v = element(h, buf + i * h->elem_bytes);
      if (!isfinite(v))
        idx_fail(path, "element %lld of sample %lld is %g (not finite)",
                 (long long)((done + i) % h->per_sample), (long long)((done + i) / h->per_sample),
                 v);
      nnrt_set(s->base, done + i, s->elem_size, v * s->scale);
    }
    done += n;
  }
}

/* A large buffer for a data set, on transparent huge pages where the system allows: first
 * touching 188 MB of Fashion-MNIST in 4 KiB pages costs more than decompressing it. */
static void *alloc_big(int64_t bytes) {
  size_t align = (size_t)2 << 20, n = ((size_t)bytes + align - 1) / align * align;
  void *p = aligned_alloc(align, n ? n : align);
  if (!p)
    nnrt_fatal("out of memory: cannot allocate %lld bytes at %s:%d", (long long)bytes, __FILE__,
               __LINE__);
#ifdef MADV_HUGEPAGE
  madvise(p, n, MADV_HUGEPAGE); /* advice only: without it, normal pages */
#endif
  return p;
}

/* Reads the images file into out->x; checks the per-sample size against the model's input. */
static void load_images(const NnModelDesc *d, const char *path, double scale, NnData *out) {
  gzFile f = open_gz(path);
  IdxHeader h;
  read_header(f, path, &h);
  char shape[128], model[128];
  if (h.ndims < 2 && d->x_size != 1)
    idx_fail(path, "an images file needs 2 or more dimensions, this one has 1 [%lld]; "
                    "HINT: is this a labels file?", (long long)h.dims[0]);
  if (h.per_sample != d->x_size)
    idx_fail(path, "samples are %s (%lld values) but model '%s' takes %s (%lld values)",
                    dims_str(&h, 1, shape, sizeof shape), (long long)h.per_sample, d->name,
                    nnrt_shape_str(d->elem_size, d->x_rank, d->x_dims, model, sizeof model),
                    (long long)d->x_size);
  if (h.dims[0] == 0)
    idx_fail(path, "no samples");
  if (h.dims[0] > ((int64_t)1 << 40) / h.per_sample)
    idx_fail(path, "implausible size: %lld samples of %lld values",
                    (long long)h.dims[0], (long long)h.per_sample);
  out->rows = h.dims[0];
  check_length(f, path, &h, out->rows, "pixels");
  if (h.type == 0x08 || h.type == 0x09) { /* bytes stay bytes; nnrt_gather scales them */
    int64_t bytes = out->rows * h.per_sample, got;
    out->x = alloc_big(bytes);
    out->x_store = h.type == 0x08 ? NNRT_STORE_U8 : NNRT_STORE_I8;
    out->x_scale = scale;
    if ((got = read_gz(f, path, out->x, bytes)) < bytes)
      idx_fail(path, "truncated: expected %lld bytes of pixels, found %lld", (long long)bytes,
               (long long)got);
  } else {
    out->x = alloc_big(out->rows * h.per_sample * d->elem_size);
    read_body(f, path, &h, out->rows, &(Sink){out->x, d->elem_size, scale, "pixels"});
  }
  close_gz(f);
}

/* Reads the labels file into out->y (one class index per sample) and checks each label. */
static void load_labels(const NnModelDesc *d, const char *path, const char *images,
                        NnData *out) {
  gzFile f = open_gz(path);
  IdxHeader h;
  char shape[128];
  read_header(f, path, &h);
  if (h.ndims != 1)
    idx_fail(path, "a labels file has 1 dimension, this one has %d %s; HINT: are the "
                    "images and labels files swapped?", h.ndims,
                    dims_str(&h, 0, shape, sizeof shape));
  if (d->y_size != 1)
    idx_fail(path, "IDX labels give 1 target per sample but model '%s' has %lld",
                    d->name, (long long)d->y_size);
  if (h.dims[0] != out->rows)
    idx_fail(path, "%lld labels for %lld images in %s", (long long)h.dims[0],
                    (long long)out->rows, images);
  out->y_size = 1;
  check_length(f, path, &h, out->rows, "labels");
  out->y = NNRT_ALLOC(out->rows * d->elem_size, char);
  read_body(f, path, &h, out->rows, &(Sink){out->y, d->elem_size, 1.0, "labels"});
  close_gz(f);
  nnrt_check_labels(d, path, out->y, out->rows);
}

void nnrt_idx_load(const NnModelDesc *d, const char *images, const char *labels, double scale,
                   NnData *out) {
  nnrt_data_begin(out, d, 0, images);
  load_images(d, images, scale, out);
  if (labels)
    load_labels(d, labels, images, out);
}
