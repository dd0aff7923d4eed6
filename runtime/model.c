/* model.c — the compiled model's memory and what every command shares: takes the model
 * description, gives the kernel buffers (64-byte aligned, zeroed; large ones on huge pages),
 * parameter initialisation, the gathering of samples into X/Y, hyperparameter slots, small
 * formatting helpers, and the `info` command. No numeric kernel lives here or anywhere in the runtime: it only moves data
 * in and out of the io regions and calls the four kernels. */
#define _DEFAULT_SOURCE /* madvise */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "nnrt_internal.h"

/* ---- buffers ---- */

/* One aligned, zeroed allocation; sizes round up to 64 so aligned_alloc accepts them. A large
 * region (the arena, parameters, gradients, optimizer state, batch buffers of a real model)
 * is 2 MiB-aligned and rounded up to whole 2 MiB pages, and asked to be backed by transparent
 * huge pages: the kernels stream through all of it every step, and with 4 KiB pages that is
 * hundreds of TLB entries and page faults. Below HUGE_MIN the rounding would waste more
 * memory than the pages save. */
enum { HUGE_PAGE = 2 << 20, HUGE_MIN = 512 << 10 };

static void *alloc_region(int64_t bytes) {
  bool huge = bytes >= HUGE_MIN;
  size_t align = huge ? HUGE_PAGE : 64;
  size_t n = bytes < 64 ? 64 : ((size_t)bytes + align - 1) / align * align;
  void *p = aligned_alloc(align, n);
  if (!p)
    nnrt_fatal("out of memory: cannot allocate %zu bytes at %s:%d", n, __FILE__, __LINE__);
#ifdef MADV_HUGEPAGE
  if (huge)
    madvise(p, n, MADV_HUGEPAGE); /* advice only: without it, normal pages */
#endif
  memset(p, 0, n);
  return p;
}

void *nnrt_batch_buffer(const NnModelDesc *d, int64_t per_row) {
  return alloc_region(d->max_batch * per_row * d->elem_size);
}

void nnrt_buffers_new(const NnModelDesc *d, void *io[NN_IO_COUNT], int64_t threads) {
  int64_t es = d->elem_size;
  if (threads < 1) threads = 1;
  /* The pool is owned through io[NN_IO_THREADS]; NnThreads is its first member. */
  io[NN_IO_THREADS] = threads > 1 ? nnrt_pool_threads(nnrt_pool_new((int)threads)) : NULL;
  io[NN_IO_SCRATCH] = alloc_region(threads * d->scratch_bytes);
  io[NN_IO_ARENA] = alloc_region(d->arena_bytes);
  io[NN_IO_PARAM] = alloc_region(d->param_size * es);
  io[NN_IO_GRAD] = alloc_region(d->param_size * es);
  io[NN_IO_STATE] = alloc_region(d->state_size * es); /* optimizer state starts at 0 */
  io[NN_IO_X] = nnrt_batch_buffer(d, d->x_size);      /* (max_batch, x_size) */
  io[NN_IO_Y] = nnrt_batch_buffer(d, d->y_size);      /* (max_batch, y_size) */
  io[NN_IO_OUT] = nnrt_batch_buffer(d, d->out_size);  /* (max_batch, out_size) */
  io[NN_IO_LOSS] = alloc_region((d->n_steps ? d->n_steps : 1) * (int64_t)sizeof(double));
  io[NN_IO_HYPER] = alloc_region((d->n_hyper + NN_HYPER_SLOTS) * (int64_t)sizeof(double));
}

void nnrt_buffers_free(void *io[NN_IO_COUNT]) {
  NnThreads *t = io[NN_IO_THREADS];
  if (t)
    nnrt_pool_free(t->ctx);
  for (int i = 0; i < NN_IO_COUNT; i++)
    if (i != NN_IO_THREADS)
      free(io[i]);
}

void nnrt_set_hyper(const NnModelDesc *d, void **io, const double *hyper, int64_t step,
                    uint64_t seed) {
  double *h = io[NN_IO_HYPER];
  for (int64_t i = 0; i < d->n_hyper; i++)
    h[i] = hyper[i];
  h[d->n_hyper + NN_HYPER_STEP] = (double)step;
  int64_t lr = nnrt_hyper_index(d, "lr");
  h[d->n_hyper + NN_HYPER_LR] = lr >= 0 ? hyper[lr] : 0; /* until an update writes it */
  memcpy(&h[d->n_hyper + NN_HYPER_SEED], &seed, sizeof seed); /* the bits, not a value */
}

double nnrt_loss(void **io) { return *(const double *)io[NN_IO_LOSS]; }

/* What each of the 256 stored byte values becomes in the kernels' type: v * scale, rounded
 * once to the element type, exactly as loading them as elements would have. Widening a row
 * of signed bytes, or to f64, is then one table load per byte (the conversion through
 * double, done per byte, was a scalar loop and 16% of an MLP step); unsigned bytes to f32
 * convert in vectors (widen_u8_f32). */
typedef union {
  float f32[256];
  double f64[256];
} ByteTable;

static void byte_table(const NnData *data, ByteTable *t) {
  for (int v = 0; v < 256; v++) {
    double x = (data->x_store == NNRT_STORE_U8 ? (double)v : (double)(int8_t)v) * data->x_scale;
    if (data->elem_size == 4)
      t->f32[v] = (float)x;
    else
      t->f64[v] = x;
  }
}

/* Bytes to f32 as the table gives them (the same multiply in double, rounded once), in
 * vectors: cloned for AVX-512 and AVX2, picked when the program starts (GCC's ifunc), since
 * the runtime is built for any x86-64. The table's load per byte was 4% of an MLP step. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("avx512f", "avx2", "default"), optimize("tree-vectorize")))
#endif
static void widen_u8_f32(const uint8_t *restrict from, float *restrict to, int64_t n,
                         double scale) {
  for (int64_t j = 0; j < n; j++)
    to[j] = (float)((double)from[j] * scale);
}

/* Are data's bytes widened by widen_u8_f32 (else through the table)? */
static bool widens_in_vectors(const NnData *data) {
  return data->elem_size == 4 && data->x_store == NNRT_STORE_U8;
}

static void widen_row(const NnData *data, const ByteTable *t, int64_t row, void *to) {
  int64_t xs = data->x_size;
  const uint8_t *from = (const uint8_t *)data->x + row * xs;
  if (widens_in_vectors(data))
    widen_u8_f32(from, to, xs, data->x_scale);
  else if (data->elem_size == 4)
    for (int64_t j = 0; j < xs; j++)
      ((float *)to)[j] = t->f32[from[j]];
  else
    for (int64_t j = 0; j < xs; j++)
      ((double *)to)[j] = t->f64[from[j]];
}

typedef struct Gather {
  const NnData *data;
  const int64_t *rows;
  char *x, *y;     /* where the batch goes */
  ByteTable table; /* when x is stored as bytes */
} Gather;

enum { GATHER_GRAIN = 16 }; /* samples one worker gathers at a time */

/* Bytes of one stored row of x: elements, or bytes when x is kept as bytes. */
static size_t stored_row_bytes(const NnData *data) {
  return (size_t)(data->x_size * (data->x_store == NNRT_STORE_ELEM ? data->elem_size : 1));
}

/* Starts bringing stored row `row` of x into the cache (locality: 3 into L1, 1 into L2). */
static void prefetch_row(const NnData *data, int64_t row, int locality) {
  size_t stored = stored_row_bytes(data);
  const char *x = (const char *)data->x + (size_t)row * stored;
  for (size_t b = 0; b < stored; b += 64)
    if (locality == 3) __builtin_prefetch(x + b);
    else __builtin_prefetch(x + b, 0, 1);
}

static void gather_range(void *ctx, int64_t lo, int64_t hi) {
  const Gather *g = ctx;
  const NnData *data = g->data;
  size_t xb = (size_t)(data->x_size * data->elem_size);
  size_t yb = (size_t)(data->y_size * data->elem_size);
  char *x = g->x, *y = g->y;
  for (int64_t i = lo; i < hi; i++) {
    if (i + 2 < hi) /* rows are random: fetch one two rows ahead while this one is widened */
      prefetch_row(data, g->rows[i + 2], 3);
    if (data->x_store == NNRT_STORE_ELEM)
      memcpy(x + (size_t)i * xb, (const char *)data->x + (size_t)g->rows[i] * xb, xb);
    else
      widen_row(data, &g->table, g->rows[i], x + (size_t)i * xb);
    if (yb)
      memcpy(y + (size_t)i * yb, (const char *)data->y + (size_t)g->rows[i] * yb, yb);
  }
}

static void gather(const NnData *data, const int64_t *rows, int64_t n, void *x, void *y,
                   NnThreads *threads) {
  Gather g = {.data = data, .rows = rows, .x = x, .y = y};
  if (data->x_store != NNRT_STORE_ELEM && !widens_in_vectors(data))
    byte_table(data, &g.table);
  nnrt_split(threads, n, GATHER_GRAIN, gather_range, &g);
}

void nnrt_gather(const NnData *data, const int64_t *rows, int64_t n, void **io) {
  gather(data, rows, n, io[NN_IO_X], io[NN_IO_Y], io[NN_IO_THREADS]);
}

void nnrt_gather_serial(const NnData *data, const int64_t *rows, int64_t n, void *x, void *y) {
  gather(data, rows, n, x, y, NULL);
}

void nnrt_prefetch_rows(const NnData *data, const int64_t *rows, int64_t n) {
  size_t yb = (size_t)(data->y_size * data->elem_size);
  for (int64_t i = 0; i < n; i++) {
    prefetch_row(data, rows[i], 1);
    if (yb) __builtin_prefetch((const char *)data->y + (size_t)rows[i] * yb, 0, 1);
  }
}

int64_t nnrt_hyper_index(const NnModelDesc *d, const char *name) {
  for (int64_t i = 0; i < d->n_hyper; i++)
    if (strcmp(d->hyper_names[i], name) == 0)
      return i;
  return -1;
}

void nnrt_init_params(const NnModelDesc *d, void *param, uint64_t seed) {
  int64_t bad = nnrt_params_init(d, param, seed);
  if (bad >= 0)
    nnrt_fatal("parameter '%s' has unknown initialiser %lld; HINT: rebuild the model with the "
               "nnc that built this runtime", d->params[bad].name,
               (long long)d->params[bad].init);
}

/* ---- formatting ---- */

const char *nnrt_plural(int64_t n) { return n == 1 ? "" : "s"; }

const char *nnrt_dtype_name(int64_t elem_size) { return elem_size == 4 ? "f32" : "f64"; }

const char *nnrt_shape_str(int64_t elem_size, int64_t rank, const int64_t *dims, char *buf,
                           size_t cap) {
  size_t n = (size_t)snprintf(buf, cap, "%s[", nnrt_dtype_name(elem_size));
  for (int64_t i = 0; i < rank && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? "," : "", (long long)dims[i]);
  if (n < cap)
    snprintf(buf + n, cap - n, "]");
  return buf;
}

/* ---- info ---- */

static int digits(int64_t v) {
  int n = 1;
  while (v >= 10)
    v /= 10, n++;
  return n;
}

static void print_init(const NnParamInfo *p) {
  printf("%s", nnrt_init_name(p->init));
  if (p->init == NN_INIT_CONST)
    printf("(%g)", p->init_a);
  else if (p->init == NN_INIT_UNIFORM || p->init == NN_INIT_NORMAL)
    printf("(%g, %g)", p->init_a, p->init_b);
}

static void print_params(const NnModelDesc *d) {
  int wn = 1, ws = 1, wz = 1;
  char shape[160];
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    int n = (int)strlen(p->name), z = digits(p->size);
    int s = (int)strlen(nnrt_shape_str(d->elem_size, p->rank, p->dims, shape, sizeof shape));
    wn = n > wn ? n : wn;
    ws = s > ws ? s : ws;
    wz = z > wz ? z : wz;
  }
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    printf("  %-*s  %-*s  %*lld  ", wn, p->name, ws,
           nnrt_shape_str(d->elem_size, p->rank, p->dims, shape, sizeof shape), wz,
           (long long)p->size);
    print_init(p);
    if (p->buffer)
      printf(" (state, not trained)");
    if (p->frozen)
      printf("  frozen");
    putchar('\n');
  }
}

static const char *task_name(int64_t task) {
  return task == NN_TASK_BINARY       ? "binary classification"
         : task == NN_TASK_MULTICLASS ? "multiclass classification"
                                      : "regression";
}

/* One declared data source on the rest of a "data:" line. */
static void print_source(const NnDataSource *s, int64_t x_size) {
  switch (s ? s->kind : NN_DATA_NONE) {
  case NN_DATA_TABLE:
    printf("inline table '%s', %lld row%s", s->name ? s->name : "?", (long long)s->rows,
           nnrt_plural(s->rows));
    break;
  case NN_DATA_CSV:
    printf("%s (CSV%s)", s->path ? s->path : "?", s->header ? ", with header line" : "");
    break;
  case NN_DATA_IDX:
    printf("%s + %s (IDX)", s->path ? s->path : "?", s->labels ? s->labels : "no labels");
    break;
  case NN_DATA_NPY:
    printf("%s + %s (.npy)", s->path ? s->path : "?", s->labels ? s->labels : "no targets");
    break;
  case NN_DATA_TEXT:
    printf("%s (text: byte windows", s->path ? s->path : "?");
    if (s->stride != x_size)
      printf(" starting every %lld byte%s", (long long)s->stride, nnrt_plural(s->stride));
    printf(")");
    break;
  default: printf("none (pass --data FILE)"); return;
  }
  if (s->scale != 1)
    printf(", inputs scaled by %g", s->scale);
}

static void print_data(const NnModelDesc *d, const NnOptions *o) {
  printf("data:        ");
  if (o->data_path)
    printf("%s (from --data)", o->data_path);
  else
    print_source(d->data, d->x_size);
  printf("\nvalidation:  ");
  if (d->val)
    print_source(d->val, d->x_size);
  else if (d->val_split > 0)
    printf("the last %g of the data, held out after one seeded shuffle", d->val_split);
  else
    printf("none");
  putchar('\n');
}

int64_t nnrt_trained_count(const NnModelDesc *d) {
  int64_t n = 0;
  for (int64_t k = 0; k < d->n_params; k++)
    if (!d->params[k].buffer)
      n += d->params[k].size;
  return n;
}

int nnrt_info(const NnModelDesc *d, const NnOptions *o) {
  int64_t es = d->elem_size;
  char shape[160];
  printf("model:       %s\n", d->name);
  printf("source:      %s\n", d->source ? d->source : "?");
  printf("elements:    %s\n", nnrt_dtype_name(es));
  printf("input:       %s\n", nnrt_shape_str(es, d->x_rank, d->x_dims, shape, sizeof shape));
  printf("output:      %s\n", nnrt_shape_str(es, d->out_rank, d->out_dims, shape, sizeof shape));
  printf("target:      %lld per sample%s\n", (long long)d->y_size,
         d->labels ? " (a class index)" : "");
  printf("task:        %s", task_name(d->task));
  if (d->task == NN_TASK_BINARY)
    printf(" (threshold %g)", d->threshold);
  printf("\nparameters:\n");
  print_params(d);
  int64_t trained = nnrt_trained_count(d), held = d->param_size * es;
  bool has_state = false;
  for (int64_t k = 0; k < d->n_params; k++)
    has_state |= d->params[k].buffer != 0;
  printf("total:       %lld parameter%s (%lld bytes with %salignment padding)\n",
         (long long)trained, nnrt_plural(trained), (long long)held,
         has_state ? "the state tensors and " : "");
  printf("state:       %lld element%s\n", (long long)d->state_size, nnrt_plural(d->state_size));
  printf("arena:       %lld bytes (one slot per node would need %lld)\n",
         (long long)d->arena_bytes, (long long)d->arena_unplanned_bytes);
  printf("scratch:     %lld bytes per thread\n", (long long)d->scratch_bytes);
  printf("defaults:    batch %lld, epochs %lld, seed %lld\n", (long long)d->max_batch,
         (long long)d->epochs, (long long)d->seed);
  for (int64_t k = 0; k < d->n_steps; k++) /* hyperparameters are named "d.lr", ... */
    printf("step %lld:      %s, updates %lld parameter%s\n", (long long)k + 1, d->steps[k].name,
           (long long)d->steps[k].updated, nnrt_plural(d->steps[k].updated));
  printf("hyper:      ");
  for (int64_t i = 0; i < d->n_hyper; i++)
    printf(" %s=%g", d->hyper_names[i], d->hyper_defaults[i]);
  printf("%s\n", d->n_hyper ? "" : " none");
  print_data(d, o);
  return NNRT_EXIT_OK;
}
