/* train.c — drives the compiled kernels: takes the model description, the data set and the
 * options from the CLI; gives the `train`, `info` and `gradcheck` commands. It owns the kernel
 * buffers (64-byte aligned, zeroed), parameter initialisation, the epoch loop with shuffling,
 * loss/accuracy metrics, and the finite-difference gradient check. No numeric kernel lives
 * here: the runtime only gathers rows into X/Y, calls grad/update/eval, and reads LOSS/OUT. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nnrt_internal.h"

/* ---- buffers ---- */

/* One aligned, zeroed allocation; sizes round up to 64 so aligned_alloc accepts them. */
static void *alloc_region(int64_t bytes) {
  size_t n = bytes < 64 ? 64 : ((size_t)bytes + 63) / 64 * 64;
  void *p = aligned_alloc(64, n);
  if (!p)
    nnrt_fatal("out of memory: cannot allocate %zu bytes at %s:%d", n, __FILE__, __LINE__);
  memset(p, 0, n);
  return p;
}

static void buffers_new(const NnModelDesc *d, void *io[NN_IO_COUNT]) {
  int64_t es = d->elem_size, b = d->max_batch;
  io[NN_IO_ARENA] = alloc_region(d->arena_bytes);
  io[NN_IO_PARAM] = alloc_region(d->param_size * es);
  io[NN_IO_GRAD] = alloc_region(d->param_size * es);
  io[NN_IO_STATE] = alloc_region(d->state_size * es); /* optimizer state starts at 0 */
  io[NN_IO_X] = alloc_region(b * d->x_size * es);     /* (max_batch, x_size) */
  io[NN_IO_Y] = alloc_region(b * d->y_size * es);     /* (max_batch, y_size) */
  io[NN_IO_OUT] = alloc_region(b * d->out_size * es); /* (max_batch, out_size) */
  io[NN_IO_LOSS] = alloc_region((int64_t)sizeof(double));
  io[NN_IO_HYPER] = alloc_region((d->n_hyper + 1) * (int64_t)sizeof(double));
}

static void buffers_free(void *io[NN_IO_COUNT]) {
  for (int i = 0; i < NN_IO_COUNT; i++)
    free(io[i]);
}

/* Hyperparameters from the options, then the step count at index n_hyper. */
static void set_hyper(const NnModelDesc *d, void **io, const NnOptions *o, int64_t step) {
  double *h = io[NN_IO_HYPER];
  for (int64_t i = 0; i < d->n_hyper; i++)
    h[i] = o->hyper[i];
  h[d->n_hyper] = (double)step;
}

static double loss_of(void **io) { return *(const double *)io[NN_IO_LOSS]; }

/* Copies rows order[0..n) of the data set into X and Y, converting to the element type. */
static void gather(const NnModelDesc *d, const NnData *data, const int64_t *order, int64_t n,
                   void **io) {
  int64_t es = d->elem_size, xs = d->x_size, ys = d->y_size;
  for (int64_t i = 0; i < n; i++) {
    const double *row = data->v + order[i] * data->cols; /* (x_size + y_size) */
    for (int64_t j = 0; j < xs; j++)
      nnrt_set(io[NN_IO_X], i * xs + j, es, row[j]);
    for (int64_t j = 0; j < ys; j++)
      nnrt_set(io[NN_IO_Y], i * ys + j, es, row[xs + j]);
  }
}

/* ---- initialisation ---- */

static const char *const init_names[NN_INIT_COUNT] = {
    /* ORDER NnInit */
    "zeros",          "ones",          "const",      "uniform",   "normal",
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
};

const char *nnrt_init_name(int64_t init) {
  return init >= 0 && init < NN_INIT_COUNT ? init_names[init] : "?";
}

/* Keras convention: the last two dims are (in, out); leading dims form the receptive field. */
static void fans(const NnParamInfo *p, double *fan_in, double *fan_out) {
  if (p->rank <= 0) {
    *fan_in = *fan_out = 1;
  } else if (p->rank == 1) {
    *fan_in = *fan_out = (double)p->dims[0];
  } else {
    double receptive = 1;
    for (int64_t i = 0; i + 2 < p->rank; i++)
      receptive *= (double)p->dims[i];
    *fan_in = receptive * (double)p->dims[p->rank - 2];
    *fan_out = receptive * (double)p->dims[p->rank - 1];
  }
  if (*fan_in < 1)
    *fan_in = 1; /* a zero-sized dim must not divide by zero; the tensor is empty anyway */
  if (*fan_out < 1)
    *fan_out = 1;
}

/* One value of initialiser p->init; uniform draws are lo + (hi-lo)*u. */
static double init_value(const NnParamInfo *p, NnRng *r, double fan_in, double fan_out) {
  switch (p->init) {
  case NN_INIT_ZEROS: return 0;
  case NN_INIT_ONES: return 1;
  case NN_INIT_CONST: return p->init_a;
  case NN_INIT_UNIFORM: return p->init_a + (p->init_b - p->init_a) * nnrt_rng_uniform(r);
  case NN_INIT_NORMAL: return p->init_a + p->init_b * nnrt_rng_normal(r);
  case NN_INIT_GLOROT_UNIFORM: {
    double l = sqrt(6.0 / (fan_in + fan_out));
    return -l + 2 * l * nnrt_rng_uniform(r);
  }
  case NN_INIT_GLOROT_NORMAL: return sqrt(2.0 / (fan_in + fan_out)) * nnrt_rng_normal(r);
  case NN_INIT_HE_UNIFORM: {
    double l = sqrt(6.0 / fan_in);
    return -l + 2 * l * nnrt_rng_uniform(r);
  }
  case NN_INIT_HE_NORMAL: return sqrt(2.0 / fan_in) * nnrt_rng_normal(r);
  }
  nnrt_fatal("parameter '%s' has unknown initialiser %lld; HINT: rebuild the model with the "
             "nnc that built this runtime", p->name, (long long)p->init);
}

/* Each parameter draws from its own stream (seed, index), so runs are reproducible. */
static void init_params(const NnModelDesc *d, void *param, uint64_t seed) {
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    double fan_in, fan_out;
    NnRng r;
    fans(p, &fan_in, &fan_out);
    nnrt_rng_seed(&r, seed, (uint64_t)k);
    for (int64_t i = 0; i < p->size; i++)
      nnrt_set(param, p->offset + i, d->elem_size, init_value(p, &r, fan_in, fan_out));
  }
}

/* ---- metrics ---- */

/* Running sums over some batches: loss weighted by samples, accuracy as hits/total. */
typedef struct Tally {
  double loss;     /* sum of batch loss × batch samples */
  int64_t samples; /* samples seen */
  int64_t hits;    /* correct decisions */
  int64_t total;   /* decisions made (elements for binary, samples for multiclass) */
} Tally;

static int64_t argmax_row(const void *base, int64_t off, int64_t n, int64_t es) {
  int64_t best = 0;
  for (int64_t j = 1; j < n; j++)
    if (nnrt_get(base, off + j, es) > nnrt_get(base, off + best, es))
      best = j;
  return best;
}

/* Counts correct decisions in OUT (written by grad/eval) against Y for n samples. */
static void count_hits(const NnModelDesc *d, void **io, int64_t n, Tally *t) {
  int64_t es = d->elem_size, os = d->out_size, ys = d->y_size;
  const void *out = io[NN_IO_OUT], *y = io[NN_IO_Y];
  if (d->task == NN_TASK_BINARY) {
    int64_t k = os < ys ? os : ys;
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < k; j++)
        t->hits += (nnrt_get(out, i * os + j, es) > d->threshold) ==
                   (nnrt_get(y, i * ys + j, es) > 0.5);
    t->total += n * k;
  } else if (d->task == NN_TASK_MULTICLASS) {
    for (int64_t i = 0; i < n; i++) {
      /* A single target column holds the class index rather than a one-hot row. */
      int64_t want = ys == 1 ? (int64_t)llround(nnrt_get(y, i, es)) : argmax_row(y, i * ys, ys, es);
      t->hits += argmax_row(out, i * os, os, es) == want;
    }
    t->total += n;
  }
}

static int has_accuracy(const NnModelDesc *d) {
  return d->task == NN_TASK_BINARY || d->task == NN_TASK_MULTICLASS;
}

/* %.6f keeps columns steady; tiny and huge losses switch to %.3e to stay readable. */
static const char *fmt_loss(double v, char buf[32]) {
  if (v != 0 && (fabs(v) < 1e-4 || fabs(v) >= 1e6))
    snprintf(buf, 32, "%.3e", v);
  else
    snprintf(buf, 32, "%.6f", v);
  return buf;
}

static const char *nonfinite_name(double v) { return isnan(v) ? "nan" : v > 0 ? "inf" : "-inf"; }

static double percent(const Tally *t) {
  return t->total ? 100.0 * (double)t->hits / (double)t->total : 0;
}

/* ---- train ---- */

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int digits(int64_t v) {
  int n = 1;
  while (v >= 10)
    v /= 10, n++;
  return n;
}

/* Every epoch when there are few or --verbose; else the first, every epochs/20-th, the last. */
static int epoch_due(int64_t e, int64_t epochs, int verbose) {
  if (verbose || epochs <= 50 || e == 1 || e == epochs)
    return 1;
  return e % (epochs / 20) == 0;
}

static void print_epoch(const NnModelDesc *d, int64_t e, int64_t epochs, const Tally *t) {
  char buf[32];
  printf("epoch %*lld/%lld  loss %s", digits(epochs), (long long)e, (long long)epochs,
         fmt_loss(t->loss / (double)t->samples, buf));
  if (has_accuracy(d))
    printf("  accuracy %.2f%%", percent(t));
  putchar('\n');
}

int64_t nnrt_hyper_index(const NnModelDesc *d, const char *name) {
  for (int64_t i = 0; i < d->n_hyper; i++)
    if (strcmp(d->hyper_names[i], name) == 0)
      return i;
  return -1;
}

NNRT_NORETURN static void nonfinite_loss(const NnModelDesc *d, double loss, int64_t epoch,
                                         int64_t step) {
  nnrt_fatal("loss is %s at epoch %lld, step %lld; HINT: %s", nonfinite_name(loss),
             (long long)epoch, (long long)step,
             nnrt_hyper_index(d, "lr") >= 0 ? "lower the learning rate (--lr)"
                                       : "check the data for extreme values");
}

static void shuffle(int64_t *order, int64_t n, NnRng *r) {
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)nnrt_rng_below(r, (uint64_t)i + 1);
    int64_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
}

/* One pass over the data in a fresh random order; *step counts optimizer updates. */
static void train_epoch(const NnModelDesc *d, const NnOptions *o, const NnData *data, void **io,
                        int64_t *order, NnRng *r, int64_t epoch, int64_t *step, Tally *t) {
  shuffle(order, data->rows, r);
  for (int64_t start = 0; start < data->rows; start += o->batch) {
    int64_t n = data->rows - start < o->batch ? data->rows - start : o->batch;
    gather(d, data, order + start, n, io);
    d->grad(io, n);
    double loss = loss_of(io);
    if (!isfinite(loss))
      nonfinite_loss(d, loss, epoch, *step + 1);
    count_hits(d, io, n, t); /* OUT is grad's, from the parameters before this update */
    t->loss += loss * (double)n;
    t->samples += n;
    ((double *)io[NN_IO_HYPER])[d->n_hyper] = (double)++*step;
    d->update(io, n);
  }
}

/* Loss and accuracy of the current parameters over the whole data set, in data order. */
static Tally evaluate(const NnModelDesc *d, const NnData *data, void **io, int64_t *order) {
  Tally t = {0};
  for (int64_t i = 0; i < data->rows; i++)
    order[i] = i;
  for (int64_t start = 0; start < data->rows; start += d->max_batch) {
    int64_t n = data->rows - start < d->max_batch ? data->rows - start : d->max_batch;
    gather(d, data, order + start, n, io);
    d->eval(io, n);
    count_hits(d, io, n, &t);
    t.loss += loss_of(io) * (double)n;
    t.samples += n;
  }
  return t;
}

static const char *plural(int64_t n) { return n == 1 ? "" : "s"; }

static void print_final(const NnModelDesc *d, const Tally *t) {
  char buf[32];
  printf("final: loss %s", fmt_loss(t->loss / (double)t->samples, buf));
  if (has_accuracy(d))
    printf("  accuracy %.2f%% (%lld/%lld)", percent(t), (long long)t->hits, (long long)t->total);
  putchar('\n');
}

int nnrt_train(const NnModelDesc *d, const NnOptions *o) {
  NnData data;
  void *io[NN_IO_COUNT];
  nnrt_data_load(d, o->data_path, &data);
  buffers_new(d, io);
  init_params(d, io[NN_IO_PARAM], o->seed);
  set_hyper(d, io, o, 0);
  int64_t *order = malloc((size_t)data.rows * sizeof *order);
  if (!order)
    nnrt_fatal("out of memory at %s:%d", __FILE__, __LINE__);
  for (int64_t i = 0; i < data.rows; i++)
    order[i] = i;
  NnRng r;
  nnrt_rng_seed(&r, o->seed, NNRT_STREAM_SHUFFLE);

  if (!o->quiet)
    printf("%s: %lld sample%s, batch %lld, %lld epoch%s, %lld parameter%s, seed %llu\n", d->name,
           (long long)data.rows, plural(data.rows), (long long)o->batch, (long long)o->epochs,
           plural(o->epochs), (long long)d->param_size, plural(d->param_size),
           (unsigned long long)o->seed);
  int64_t step = 0;
  double t0 = now_seconds();
  for (int64_t e = 1; e <= o->epochs; e++) {
    Tally t = {0};
    train_epoch(d, o, &data, io, order, &r, e, &step, &t);
    if (!o->quiet && epoch_due(e, o->epochs, o->verbose))
      print_epoch(d, e, o->epochs, &t);
  }
  double secs = now_seconds() - t0;

  Tally fin = evaluate(d, &data, io, order);
  print_final(d, &fin);
  if (!o->quiet) {
    double samples = (double)o->epochs * (double)data.rows;
    fflush(stdout); /* keep the order readable when stdout and stderr share a terminal */
    fprintf(stderr, "trained %.0f samples in %.3f s (%.0f samples/s)\n", samples, secs,
            samples / (secs > 1e-9 ? secs : 1e-9));
  }
  free(order);
  buffers_free(io);
  nnrt_data_free(&data);
  return NNRT_EXIT_OK;
}

/* ---- info ---- */

static void print_shape(int64_t es, int64_t rank, const int64_t *dims) {
  printf("%s[", es == 4 ? "f32" : "f64");
  for (int64_t i = 0; i < rank; i++)
    printf("%s%lld", i ? "," : "", (long long)dims[i]);
  putchar(']');
}

static int shape_width(int64_t rank, const int64_t *dims) {
  char buf[32];
  int w = 5; /* "f32[]" */
  for (int64_t i = 0; i < rank; i++)
    w += snprintf(buf, sizeof buf, "%lld", (long long)dims[i]) + (i > 0);
  return w;
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
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    int n = (int)strlen(p->name), s = shape_width(p->rank, p->dims), z = digits(p->size);
    wn = n > wn ? n : wn;
    ws = s > ws ? s : ws;
    wz = z > wz ? z : wz;
  }
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    printf("  %-*s  ", wn, p->name);
    print_shape(d->elem_size, p->rank, p->dims);
    printf("%*s  %*lld  ", ws - shape_width(p->rank, p->dims), "", wz, (long long)p->size);
    print_init(p);
    putchar('\n');
  }
}

static const char *task_name(int64_t task) {
  return task == NN_TASK_BINARY ? "binary classification"
         : task == NN_TASK_MULTICLASS ? "multiclass classification"
                                      : "regression";
}

static void print_data_source(const NnModelDesc *d, const NnOptions *o) {
  printf("data:        ");
  if (o->data_path)
    printf("%s (from --data)\n", o->data_path);
  else if (d->data->kind == NN_DATA_TABLE)
    printf("inline table, %lld row%s\n", (long long)d->data->rows, plural(d->data->rows));
  else if (d->data->kind == NN_DATA_CSV && d->data->path)
    printf("%s (CSV%s)\n", d->data->path, d->data->header ? ", with header line" : "");
  else
    printf("none (pass --data FILE.csv)\n");
}

int nnrt_info(const NnModelDesc *d, const NnOptions *o) {
  int64_t es = d->elem_size;
  printf("model:       %s\n", d->name);
  printf("source:      %s\n", d->source ? d->source : "?");
  printf("elements:    %s\n", es == 4 ? "f32" : "f64");
  printf("input:       ");
  print_shape(es, d->x_rank, d->x_dims);
  printf("\noutput:      %lld per sample\n", (long long)d->out_size);
  printf("target:      %lld per sample\n", (long long)d->y_size);
  printf("task:        %s", task_name(d->task));
  if (d->task == NN_TASK_BINARY)
    printf(" (threshold %g)", d->threshold);
  printf("\nparameters:\n");
  print_params(d);
  printf("total:       %lld parameter%s (%lld bytes)\n", (long long)d->param_size,
         plural(d->param_size), (long long)(d->param_size * es));
  printf("state:       %lld element%s\n", (long long)d->state_size, plural(d->state_size));
  printf("arena:       %lld bytes\n", (long long)d->arena_bytes);
  printf("defaults:    batch %lld, epochs %lld, seed %lld\n", (long long)d->max_batch,
         (long long)d->epochs, (long long)d->seed);
  printf("hyper:      ");
  for (int64_t i = 0; i < d->n_hyper; i++)
    printf(" %s=%g", d->hyper_names[i], d->hyper_defaults[i]);
  printf("%s\n", d->n_hyper ? "" : " none");
  print_data_source(d, o);
  return NNRT_EXIT_OK;
}

/* ---- gradcheck ---- */

/* Where the largest relative difference was found. */
typedef struct Worst {
  double diff;             /* |a - n| / max(1, |a|, |n|) */
  const NnParamInfo *p;    /* parameter holding it (NULL: none checked yet) */
  int64_t index;           /* element within p */
  double analytic, numeric;
} Worst;

static double rel_diff(double a, double n) {
  double s = fmax(1.0, fmax(fabs(a), fabs(n)));
  double diff = fabs(a - n) / s;
  return isnan(diff) ? INFINITY : diff; /* a NaN must fail, not compare false */
}

static double eval_loss(const NnModelDesc *d, void **io, int64_t n) {
  d->eval(io, n);
  return loss_of(io);
}

/* Central difference of the loss in element j; uses the values actually stored, which in f32
 * differ from p ± eps, so rounding does not bias the quotient. */
static double numeric_grad(const NnModelDesc *d, void **io, int64_t n, const NnParamInfo *p,
                           int64_t i, double eps) {
  void *param = io[NN_IO_PARAM];
  int64_t es = d->elem_size, j = p->offset + i;
  double orig = nnrt_get(param, j, es);
  nnrt_set(param, j, es, orig + eps);
  double hi = nnrt_get(param, j, es), lp = eval_loss(d, io, n);
  nnrt_set(param, j, es, orig - eps);
  double lo = nnrt_get(param, j, es), lm = eval_loss(d, io, n);
  nnrt_set(param, j, es, orig); /* exact: orig came from this element type */
  if (hi == lo)
    nnrt_fatal("--eps %g does not change %s[%lld] (value %g) in %s; HINT: raise --eps",
               eps, p->name, (long long)i, orig, es == 4 ? "f32" : "f64");
  return (lp - lm) / (hi - lo);
}

/* Checks up to 64 evenly spaced elements of p; returns the largest difference among them. */
static double check_param(const NnModelDesc *d, void **io, int64_t n, const double *analytic,
                          const NnParamInfo *p, double eps, Worst *w, int *nonzero,
                          int64_t *checked) {
  int64_t k = p->size < 64 ? p->size : 64;
  double maxdiff = 0;
  for (int64_t c = 0; c < k; c++) {
    int64_t i = p->size <= 64 ? c : c * p->size / 64;
    double a = analytic[p->offset + i];
    double num = numeric_grad(d, io, n, p, i, eps);
    double diff = rel_diff(a, num);
    *nonzero |= a != 0 || num != 0;
    maxdiff = fmax(maxdiff, diff);
    if (!w->p || diff > w->diff)
      *w = (Worst){diff, p, i, a, num};
  }
  *checked = k;
  return maxdiff;
}

/* The analytic gradient of the first min(max_batch, rows) samples, as doubles. */
static double *analytic_grad(const NnModelDesc *d, void **io, int64_t n, double tol) {
  d->grad(io, n);
  double l0 = loss_of(io);
  if (!isfinite(l0)) {
    printf("GRAD FAIL loss is %s at the initial parameters\n", nonfinite_name(l0));
    return NULL;
  }
  double *g = malloc((size_t)(d->param_size ? d->param_size : 1) * sizeof *g);
  if (!g)
    nnrt_fatal("out of memory at %s:%d", __FILE__, __LINE__);
  for (int64_t j = 0; j < d->param_size; j++)
    g[j] = nnrt_get(io[NN_IO_GRAD], j, d->elem_size);
  /* grad and eval must compute the same loss, or the comparison below means nothing. */
  double le = eval_loss(d, io, n);
  if (rel_diff(l0, le) > tol) {
    printf("GRAD FAIL grad and eval disagree on the loss: grad %.9g, eval %.9g\n", l0, le);
    free(g);
    return NULL;
  }
  return g;
}

int nnrt_gradcheck(const NnModelDesc *d, const NnOptions *o) {
  NnData data;
  void *io[NN_IO_COUNT];
  nnrt_data_load(d, o->data_path, &data);
  buffers_new(d, io);
  init_params(d, io[NN_IO_PARAM], o->seed);
  set_hyper(d, io, o, 1);
  int64_t n = data.rows < d->max_batch ? data.rows : d->max_batch;
  int64_t *order = malloc((size_t)n * sizeof *order);
  if (!order)
    nnrt_fatal("out of memory at %s:%d", __FILE__, __LINE__);
  for (int64_t i = 0; i < n; i++)
    order[i] = i;
  gather(d, &data, order, n, io);
  printf("gradcheck %s: %lld sample%s, %s, eps %g, tol %g, seed %llu\n", d->name, (long long)n,
         plural(n), d->elem_size == 4 ? "f32" : "f64", o->eps, o->tol,
         (unsigned long long)o->seed);

  int rc = NNRT_EXIT_FAIL;
  double *analytic = analytic_grad(d, io, n, o->tol);
  if (analytic) {
    Worst w = {0};
    int nonzero = 0;
    for (int64_t k = 0; k < d->n_params; k++) {
      int64_t checked;
      double md = check_param(d, io, n, analytic, &d->params[k], o->eps, &w, &nonzero, &checked);
      printf("%s: %lld checked, maxdiff=%.2g\n", d->params[k].name, (long long)checked, md);
    }
    if (w.p && w.diff > o->tol)
      printf("GRAD FAIL maxdiff=%.2g at %s[%lld]: analytic %.6g numeric %.6g\n", w.diff,
             w.p->name, (long long)w.index, w.analytic, w.numeric);
    else if (!nonzero)
      printf("GRAD FAIL all gradients are zero\n");
    else {
      printf("GRAD OK maxdiff=%.2g\n", w.diff);
      rc = NNRT_EXIT_OK;
    }
    free(analytic);
  }
  free(order);
  buffers_free(io);
  nnrt_data_free(&data);
  return rc;
}
