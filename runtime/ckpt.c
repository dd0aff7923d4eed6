/* ckpt.c — checkpoints in the safetensors format: takes the parameter and optimizer-state
 * regions and the training state (NnCkptState), gives a file that the `safetensors` library
 * (and so PyTorch) reads, and reads such files back, refusing any that do not fit the model.
 *
 * Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
 * N; N bytes of JSON, padded with spaces to a multiple of 8; then the tensor bytes,
 * little-endian, with `data_offsets` relative to the end of the header. The header holds
 *   "__metadata__": string values only — format "nnc.checkpoint", format_version "1", model,
 *       fingerprint (FNV-1a 64 of elem size, parameter names and shapes, which are frozen,
 *       state size), dtype,
 *       epoch (completed), step (optimizer steps), skipped_steps, seed, batch, rng (the
 *       xoshiro256** state of the shuffle stream after the last epoch, 64 hex digits) and
 *       hyper.NAME for every hyperparameter (%.17g, so they round-trip); with early
 *       stopping also best_epoch, best_value and wait (epochs since the best);
 *   every parameter under its own name ("dense0.W": F32 or F64, its shape), in model order;
 *   "__optimizer_state__": the whole optimizer-state region as one flat tensor [state_size]
 *       (absent when the optimizer has no state).
 * Nothing in it depends on the time or the path, so equal training states give equal files.
 *
 * Saving is atomic: PATH.tmp is written, flushed and fsync'ed, renamed over PATH, and the
 * folder is fsync'ed, so a crash or SIGKILL at any moment leaves the previous checkpoint
 * whole. NNRT_TEST_SAVE_PAUSE=SECONDS (for tests only) makes the saver sleep half-way through
 * writing the temporary file. Loading reads the whole file, checks every length and offset
 * against the file's size, parses the header with json.c, and reports the first tensor that
 * differs from the model. */
#define _POSIX_C_SOURCE 200809L /* fsync, nanosleep */

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nnrt_internal.h"
#include "safetensors.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "ckpt.c copies tensors as they lie in memory; safetensors data is little-endian"
#endif

#define CKPT_FORMAT "nnc.checkpoint"
#define CKPT_VERSION "1"
#define STATE_TENSOR "__optimizer_state__"

/* ---- fingerprint ---- */

static uint64_t fnv1a(uint64_t h, const char *s) {
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 0x100000001B3ull;
  return h;
}

/* Hash of what must agree for --resume to continue the same training: element size, parameter
 * names and shapes in order, which are frozen, optimizer-state size. The frozen set counts
 * because the optimizer-state region holds only the trained parameters' state (two freeze sets
 * of equal size would lay it out differently), and because resuming with another set (under
 * any optimizer) is another training. Unfrozen models hash as before freezing existed. */
static uint64_t fingerprint(const NnModelDesc *d) {
  char buf[192];
  uint64_t h = 0xCBF29CE484222325ull;
  snprintf(buf, sizeof buf, "elem %lld;", (long long)d->elem_size);
  h = fnv1a(h, buf);
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    h = fnv1a(fnv1a(h, p->name), nnrt_shape_str(d->elem_size, p->rank, p->dims, buf, sizeof buf));
    h = fnv1a(h, p->frozen ? " frozen;" : ";");
  }
  snprintf(buf, sizeof buf, "state %lld;", (long long)d->state_size);
  return fnv1a(h, buf);
}

/* A shuffle stream's state as 64 hex digits. */
static const char *rng_text(const uint64_t s[4], char buf[72]) {
  snprintf(buf, 72, "%016llx%016llx%016llx%016llx", (unsigned long long)s[0],
           (unsigned long long)s[1], (unsigned long long)s[2], (unsigned long long)s[3]);
  return buf;
}

/* The inverse of rng_text; 0 when text is not 64 hex digits. */
static int rng_parse(const char *text, uint64_t s[4]) {
  if (strlen(text) != 64)
    return 0;
  for (int w = 0; w < 4; w++) {
    s[w] = 0;
    for (int i = 0; i < 16; i++) {
      char c = text[16 * w + i];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0)
        return 0;
      s[w] = s[w] << 4 | (uint64_t)d;
    }
  }
  return 1;
}

static const char *dtype_of(int64_t elem_size) { return elem_size == 4 ? "F32" : "F64"; }

/* ---- writing ---- */

/* A growing text buffer for the header. */
typedef struct Text {
  char *p;        /* the text, NUL-terminated */
  size_t n, cap;  /* bytes used (without the NUL), bytes allocated */
} Text;

NNRT_PRINTF(2, 3) static void text_printf(Text *t, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->p + t->n, t->cap - t->n, fmt, ap);
    va_end(ap);
    if (n < 0)
      nnrt_fatal("internal error at %s:%d: bad format", __FILE__, __LINE__);
    if ((size_t)n < t->cap - t->n) {
      t->n += (size_t)n;
      return;
    }
    t->cap = (t->cap + (size_t)n) * 2;
    t->p = realloc(t->p, t->cap);
    if (!t->p)
      nnrt_fatal("out of memory at %s:%d", __FILE__, __LINE__);
  }
}

/* s as a JSON string literal. */
static void text_string(Text *t, const char *s) {
  text_printf(t, "\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      text_printf(t, "\\%c", c);
    else if (c < 0x20)
      text_printf(t, "\\u%04x", c);
    else
      text_printf(t, "%c", c);
  }
  text_printf(t, "\"");
}

static void meta(Text *t, const char *key, const char *value) {
  text_printf(t, ",");
  text_string(t, key);
  text_printf(t, ":");
  text_string(t, value);
}

static void meta_i64(Text *t, const char *key, long long v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%lld", v);
  meta(t, key, buf);
}

static void write_metadata(Text *t, const NnModelDesc *d, const NnCkptState *st) {
  char buf[96];
  text_printf(t, "\"__metadata__\":{\"format\":\"" CKPT_FORMAT "\"");
  meta(t, "format_version", CKPT_VERSION);
  meta(t, "model", d->name);
  snprintf(buf, sizeof buf, "%016llx", (unsigned long long)fingerprint(d));
  meta(t, "fingerprint", buf);
  meta(t, "dtype", dtype_of(d->elem_size));
  meta_i64(t, "epoch", st->epoch);
  meta_i64(t, "step", st->step);
  meta_i64(t, "skipped_steps", st->skipped);
  snprintf(buf, sizeof buf, "%llu", (unsigned long long)st->seed);
  meta(t, "seed", buf);
  meta_i64(t, "batch", st->batch);
  meta(t, "rng", rng_text(st->rng, buf));
  if (d->plateau_factor > 0) { /* reduce-on-plateau's state, so a resume continues it */
    snprintf(buf, sizeof buf, "%.17g", isfinite(st->plateau_best) ? st->plateau_best : DBL_MAX);
    meta(t, "plateau.best", buf);
    meta_i64(t, "plateau.bad", st->plateau_bad);
  }
  if (st->best_epoch > 0) { /* early stopping's memory, so a resumed run stops where it would */
    meta_i64(t, "best_epoch", st->best_epoch);
    snprintf(buf, sizeof buf, "%.17g", st->best_value);
    meta(t, "best_value", buf);
    meta_i64(t, "wait", st->wait);
  }
  for (int64_t i = 0; i < d->n_hyper; i++) {
    char key[160];
    snprintf(key, sizeof key, "hyper.%s", d->hyper_names[i]);
    snprintf(buf, sizeof buf, "%.17g", st->hyper[i]);
    meta(t, key, buf);
  }
  text_printf(t, "}");
}

/* One tensor entry; *offset advances past its bytes. */
static void write_entry(Text *t, const char *name, int64_t es, int64_t rank, const int64_t *dims,
                        int64_t size, int64_t *offset) {
  text_printf(t, ",");
  text_string(t, name);
  text_printf(t, ":{\"dtype\":\"%s\",\"shape\":[", dtype_of(es));
  for (int64_t i = 0; i < rank; i++)
    text_printf(t, "%s%lld", i ? "," : "", (long long)dims[i]);
  text_printf(t, "],\"data_offsets\":[%lld,%lld]}", (long long)*offset,
              (long long)(*offset + size * es));
  *offset += size * es;
}

/* The JSON header, padded with spaces so the data starts 8-byte aligned. */
static Text header_text(const NnModelDesc *d, const NnCkptState *st) {
  Text t = {NULL, 0, 0};
  int64_t offset = 0;
  text_printf(&t, "{");
  write_metadata(&t, d, st);
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    write_entry(&t, p->name, d->elem_size, p->rank, p->dims, p->size, &offset);
  }
  if (d->state_size > 0)
    write_entry(&t, STATE_TENSOR, d->elem_size, 1, &d->state_size, d->state_size, &offset);
  text_printf(&t, "}");
  while ((8 + t.n) % 8)
    text_printf(&t, " ");
  return t;
}

/* Where a save is, for cleaning up after a failure. */
typedef struct Saver {
  const char *tmp; /* PATH.tmp */
  FILE *f;         /* open on tmp, or NULL once closed */
} Saver;

NNRT_NORETURN static void save_failed(Saver *s, const char *what) {
  int e = errno;
  if (s->f)
    fclose(s->f);
  unlink(s->tmp);
  nnrt_fatal("cannot save checkpoint '%s': %s: %s (the previous checkpoint is unchanged)",
             s->tmp, what, strerror(e));
}

static void write_bytes(Saver *s, const void *p, size_t n) {
  if (n && fwrite(p, 1, n, s->f) != n)
    save_failed(s, "write failed");
}

/* NNRT_TEST_SAVE_PAUSE: lets a test kill the program while the temporary file is half
 * written. */
static void test_pause(Saver *s) {
  const char *v = getenv("NNRT_TEST_SAVE_PAUSE");
  double secs = v ? strtod(v, NULL) : 0;
  if (!(secs > 0))
    return;
  if (fflush(s->f) != 0)
    save_failed(s, "write failed");
  struct timespec ts = {(time_t)secs, (long)((secs - floor(secs)) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* The folder entry of `path` is durable only once the folder itself is synced. */
static void sync_folder(const char *path) {
  char dir[4096];
  const char *slash = strrchr(path, '/');
  if (!slash)
    snprintf(dir, sizeof dir, ".");
  else
    snprintf(dir, sizeof dir, "%.*s", (int)(slash == path ? 1 : slash - path), path);
  int fd = open(dir, O_RDONLY);
  if (fd >= 0) {
    fsync(fd); /* best effort: some file systems refuse fsync on a folder */
    close(fd);
  }
}

void nnrt_ckpt_save(const char *path, const NnModelDesc *d, void **io, const NnCkptState *st) {
  char tmp[4096];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
    nnrt_fatal("checkpoint path too long: '%s'", path);
  Saver s = {tmp, fopen(tmp, "wb")};
  if (!s.f)
    save_failed(&s, "cannot create it");
  Text h = header_text(d, st);
  unsigned char len[8];
  for (int i = 0; i < 8; i++)
    len[i] = (unsigned char)((uint64_t)h.n >> (8 * i));
  write_bytes(&s, len, 8);
  write_bytes(&s, h.p, h.n);
  free(h.p);
  int64_t es = d->elem_size;
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    write_bytes(&s, (const char *)io[NN_IO_PARAM] + p->offset * es, (size_t)(p->size * es));
    if (k == d->n_params / 2)
      test_pause(&s);
  }
  write_bytes(&s, io[NN_IO_STATE], (size_t)(d->state_size * es));
  if (fflush(s.f) != 0 || fsync(fileno(s.f)) != 0)
    save_failed(&s, "flush failed");
  FILE *f = s.f;
  s.f = NULL;
  if (fclose(f) != 0)
    save_failed(&s, "close failed");
  if (rename(tmp, path) != 0)
    save_failed(&s, "rename failed");
  sync_folder(path);
}

/* ---- reading ---- */

typedef NnStTensor Tensor; /* one tensor entry, checked against the file */

/* A checkpoint in memory. */
typedef struct Ckpt {
  const char *path;            /* for messages */
  unsigned char *file;         /* the whole file */
  int64_t size;                /* its bytes */
  NnJson header;               /* the parsed header */
  const NnJson *meta;          /* "__metadata__", or NULL */
  Tensor *tensors;             /* every other entry, in file order */
  int64_t n;                   /* entries of tensors */
} Ckpt;


static unsigned char *read_whole(const char *path, int64_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f)
    nnrt_fatal("cannot open checkpoint '%s': %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    fclose(f);
    nnrt_file_error(path, "not a regular file");
  }
  *size = (int64_t)sb.st_size;
  unsigned char *buf = NNRT_ALLOC(*size + 1, unsigned char);
  size_t got = fread(buf, 1, (size_t)*size, f);
  int bad = ferror(f);
  fclose(f);
  if (bad || (int64_t)got != *size)
    nnrt_file_error(path, "cannot read: %s", bad ? strerror(errno) : "the file changed size");
  return buf;
}

/* Reads the file, checks its layout and every tensor entry (safetensors.c), and parses the
 * header again with json.c for the metadata. */
static void ckpt_read(Ckpt *c, const char *path) {
  memset(c, 0, sizeof *c);
  c->path = path;
  c->file = read_whole(path, &c->size);
  NnStFile st;
  if (nnrt_st_open(c->file, (size_t)c->size, &st) != 0)
    nnrt_file_error(path, "%s", st.why);
  char err[256];
  if (!nnrt_json_parse(st.header, st.header_len, &c->header, err, sizeof err))
    nnrt_file_error(path, "bad JSON header: %s", err);
  c->meta = nnrt_json_get(&c->header, "__metadata__");
  if (c->meta && c->meta->type != NNRT_JSON_OBJECT)
    nnrt_file_error(path, "\"__metadata__\" is not an object");
  c->tensors = NNRT_ALLOC(c->header.n + 1, Tensor);
  size_t at = 0;
  int r = 0;
  while (c->n < c->header.n && (r = nnrt_st_next(&st, &at, &c->tensors[c->n])) > 0)
    c->n++;
  if (r < 0)
    nnrt_file_error(path, "%s", st.why);
}

static void ckpt_free(Ckpt *c) {
  nnrt_json_free(&c->header);
  free(c->tensors);
  free(c->file);
}

static const Tensor *find_tensor(const Ckpt *c, const char *name) {
  for (int64_t i = 0; i < c->n; i++)
    if (strcmp(c->tensors[i].name, name) == 0)
      return &c->tensors[i];
  return NULL;
}

/* "f32[2,8]" for a checkpoint tensor. */
static const char *tensor_str(const Tensor *t, char *buf, size_t cap) {
  size_t n = 0;
  for (const char *s = t->dtype; *s && n + 1 < cap; s++)
    buf[n++] = (char)(*s >= 'A' && *s <= 'Z' ? *s - 'A' + 'a' : *s);
  buf[n] = '\0';
  n += (size_t)snprintf(buf + n, cap - n, "[");
  for (int64_t i = 0; i < t->rank && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? "," : "", (long long)t->dims[i]);
  if (n < cap)
    snprintf(buf + n, cap - n, "]");
  return buf;
}

static int same_shape(const Tensor *t, int64_t rank, const int64_t *dims) {
  if (t->rank != rank)
    return 0;
  for (int64_t i = 0; i < rank; i++)
    if (t->dims[i] != dims[i])
      return 0;
  return 1;
}

/* Whether t can fill a model tensor of this shape: same shape, and the same element type or
 * (when convert) the other float type. */
static int fits(const Tensor *t, int64_t es, int64_t rank, const int64_t *dims, int convert) {
  if (!same_shape(t, rank, dims))
    return 0;
  if (strcmp(t->dtype, dtype_of(es)) == 0)
    return 1;
  return convert && (strcmp(t->dtype, "F32") == 0 || strcmp(t->dtype, "F64") == 0);
}

/* Copies t into n elements at dst, converting F32 <-> F64 when the types differ. */
static void copy_tensor(const Tensor *t, void *dst, int64_t n, int64_t es) {
  nnrt_st_copy_floats(dst, es, t->bytes, t->width, n);
}

/* The model tensor `name` with this shape must be in the checkpoint and fit. */
static const Tensor *require(const Ckpt *c, const char *name, int64_t es, int64_t rank,
                             const int64_t *dims, int convert, const char *hint) {
  char want[160], got[160];
  const Tensor *t = find_tensor(c, name);
  nnrt_shape_str(es, rank, dims, want, sizeof want);
  if (!t)
    nnrt_file_error(c->path, "tensor '%s' (%s in this model) is not in the checkpoint%s", name,
                    want, hint);
  if (!fits(t, es, rank, dims, convert))
    nnrt_file_error(c->path, "tensor '%s' is %s in the checkpoint but %s in this model%s", name,
                    tensor_str(t, got, sizeof got), want, hint);
  return t;
}

static int is_param(const NnModelDesc *d, const char *name) {
  for (int64_t k = 0; k < d->n_params; k++)
    if (strcmp(d->params[k].name, name) == 0)
      return 1;
  return 0;
}

/* A checkpoint tensor the model does not have means a different model. */
static void refuse_extra(const Ckpt *c, const NnModelDesc *d, int allow_state) {
  for (int64_t i = 0; i < c->n; i++) {
    const char *name = c->tensors[i].name;
    if (is_param(d, name) || (strcmp(name, STATE_TENSOR) == 0 && allow_state))
      continue;
    char got[160];
    nnrt_file_error(c->path, "tensor '%s' (%s) is in the checkpoint but not in this model%s",
                    name, tensor_str(&c->tensors[i], got, sizeof got),
                    strcmp(name, STATE_TENSOR) == 0
                        ? "; HINT: was it trained with another optimizer?"
                        : "; HINT: is it from another model? --init-from copies what matches");
  }
}

/* ---- metadata ---- */

static const char *meta_str(const Ckpt *c, const char *key) {
  const NnJson *v = nnrt_json_get(c->meta, key);
  if (!v)
    nnrt_file_error(c->path, "the metadata has no '%s'", key);
  if (v->type != NNRT_JSON_STRING)
    nnrt_file_error(c->path, "metadata '%s' is not a string", key);
  return v->str;
}

static int64_t meta_int(const Ckpt *c, const char *key, int64_t min) {
  const char *s = meta_str(c, key);
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (!*s || *end || errno == ERANGE || v < min)
    nnrt_file_error(c->path, "metadata '%s' is '%s' (expected an integer >= %lld)", key, s,
                    (long long)min);
  return v;
}

static uint64_t meta_u64(const Ckpt *c, const char *key) {
  const char *s = meta_str(c, key);
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (*s < '0' || *s > '9' || *end || errno == ERANGE)
    nnrt_file_error(c->path, "metadata '%s' is '%s' (expected a non-negative integer)", key, s);
  return v;
}

static double meta_real(const Ckpt *c, const char *key) {
  const char *s = meta_str(c, key);
  char *end;
  double v = strtod(s, &end);
  if (!*s || *end || !isfinite(v))
    nnrt_file_error(c->path, "metadata '%s' is '%s' (expected a finite number)", key, s);
  return v;
}

/* 1 when the file carries nnc's metadata (of a version this runtime reads). */
static int has_nnc_meta(const Ckpt *c) {
  const NnJson *f = nnrt_json_get(c->meta, "format");
  if (!f || f->type != NNRT_JSON_STRING || strcmp(f->str, CKPT_FORMAT) != 0)
    return 0;
  const char *v = meta_str(c, "format_version");
  if (strcmp(v, CKPT_VERSION) != 0)
    nnrt_file_error(c->path, "checkpoint format version %s; this runtime reads version "
                    CKPT_VERSION, v);
  return 1;
}

/* The training state, with the checks that make a resume exact. */
static void read_state(const Ckpt *c, const NnModelDesc *d, NnCkptState *st) {
  char want[72], key[160];
  snprintf(want, sizeof want, "%016llx", (unsigned long long)fingerprint(d));
  if (strcmp(meta_str(c, "fingerprint"), want) != 0)
    nnrt_file_error(c->path, "model fingerprint %s differs from this model's %s (parameters, "
                    "shapes, frozen set or optimizer differ); HINT: --init-from starts from its "
                    "weights", meta_str(c, "fingerprint"), want);
  st->epoch = meta_int(c, "epoch", 0);
  st->step = meta_int(c, "step", 0);
  st->skipped = meta_int(c, "skipped_steps", 0);
  st->seed = meta_u64(c, "seed");
  st->batch = meta_int(c, "batch", 1);
  if (!rng_parse(meta_str(c, "rng"), st->rng))
    nnrt_file_error(c->path, "metadata 'rng' is not 64 lowercase hex digits");
  if (nnrt_json_get(c->meta, "best_epoch")) {
    st->best_epoch = meta_int(c, "best_epoch", 1);
    st->best_value = meta_real(c, "best_value");
    st->wait = meta_int(c, "wait", 0);
  }
  for (int64_t i = 0; i < d->n_hyper && st->hyper; i++) {
    snprintf(key, sizeof key, "hyper.%s", d->hyper_names[i]);
    st->hyper[i] = meta_real(c, key);
  }
  st->plateau_best = INFINITY, st->plateau_bad = 0;
  if (d->plateau_factor > 0 && nnrt_json_get(c->meta, "plateau.best")) { /* else starts anew */
    st->plateau_best = meta_real(c, "plateau.best");
    st->plateau_bad = meta_int(c, "plateau.bad", 0);
  }
}

/* ---- loading by mode ---- */

static void load_resume(const Ckpt *c, const NnModelDesc *d, void **io, NnCkptState *st) {
  if (!has_nnc_meta(c))
    nnrt_file_error(c->path, "no nnc training state in its metadata, so training cannot "
                    "resume from it; HINT: --init-from starts from its weights");
  int64_t es = d->elem_size;
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    const Tensor *t = require(c, p->name, es, p->rank, p->dims, 0, "");
    copy_tensor(t, (char *)io[NN_IO_PARAM] + p->offset * es, p->size, es);
  }
  if (d->state_size > 0) {
    const Tensor *t = require(c, STATE_TENSOR, es, 1, &d->state_size, 0,
                              "; HINT: was it trained with another optimizer?");
    copy_tensor(t, io[NN_IO_STATE], d->state_size, es);
  }
  refuse_extra(c, d, d->state_size > 0);
  read_state(c, d, st);
  st->has_meta = 1;
}

static void load_params(const Ckpt *c, const NnModelDesc *d, void **io, NnCkptState *st) {
  int64_t es = d->elem_size;
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    const Tensor *t = require(c, p->name, es, p->rank, p->dims, 1, "");
    copy_tensor(t, (char *)io[NN_IO_PARAM] + p->offset * es, p->size, es);
  }
  refuse_extra(c, d, 1);
  if (has_nnc_meta(c)) {
    st->has_meta = 1;
    st->seed = meta_u64(c, "seed");
    st->epoch = meta_int(c, "epoch", 0);
    st->step = meta_int(c, "step", 0);
  }
}

/* Copies what matches by name and shape; says what was kept and why. */
static int64_t load_matching(const Ckpt *c, const NnModelDesc *d, void **io) {
  int64_t es = d->elem_size, copied = 0;
  char got[160], kept[1024] = "";
  size_t used = 0;
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    const Tensor *t = find_tensor(c, p->name);
    if (t && fits(t, es, p->rank, p->dims, 1)) {
      copy_tensor(t, (char *)io[NN_IO_PARAM] + p->offset * es, p->size, es);
      copied++;
    } else if (used < sizeof kept) {
      used += (size_t)snprintf(kept + used, sizeof kept - used, "%s%s (%s)", used ? ", " : "",
                               p->name, t ? tensor_str(t, got, sizeof got) : "not in it");
    }
  }
  if (copied == 0)
    nnrt_file_error(c->path, "no tensor matches this model by name and shape; HINT: is it "
                    "from another model?");
  printf("init-from %s: %lld of %lld parameter tensor%s loaded", c->path, (long long)copied,
         (long long)d->n_params, nnrt_plural(d->n_params));
  if (used)
    printf("; initialised instead: %s", kept);
  putchar('\n');
  return copied;
}

int64_t nnrt_ckpt_load(const char *path, const NnModelDesc *d, void **io, NnCkptMode mode,
                       NnCkptState *st) {
  Ckpt c;
  ckpt_read(&c, path);
  int64_t copied = d->n_params;
  if (mode == NNRT_CKPT_RESUME)
    load_resume(&c, d, io, st);
  else if (mode == NNRT_CKPT_PARAMS)
    load_params(&c, d, io, st);
  else
    copied = load_matching(&c, d, io);
  ckpt_free(&c);
  return copied;
}
