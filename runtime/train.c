/* train.c — the `train` command: takes the model description and the options, gives trained
 * parameters, a report per epoch and final metrics, and (with --save) checkpoints.
 *
 * Each epoch shuffles the training rows again, in place, from one stream seeded by --seed; a
 * run resumed from a checkpoint after epoch k replays those k shuffles (checking that the
 * stream reaches the state the checkpoint recorded), so it takes exactly the steps an
 * uninterrupted run takes and ends bit-identical. A step whose loss or gradient is not finite
 * stops the run (naming epoch, step and a hint) or, with --skip-nonfinite, is skipped and
 * counted; a checkpoint is written only from finite parameters, so the last good one survives. On a
 * terminal an in-place progress bar shows the epoch's progress; elsewhere (a log file, a pipe)
 * only plain lines are printed, with no \r and no escape codes. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, fileno */

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nnrt_internal.h"

/* The next step's batch, gathered by a worker into a second pair of X/Y buffers while this
 * step computes (nnrt_background), then swapped in: gathering 64 random rows takes 20-25 us,
 * mostly cache misses, which otherwise both cores wait out at the start of every step. */
typedef struct NextBatch {
  const NnData *data;
  const int64_t *rows;
  int64_t n;
  void *x, *y;  /* the spare buffers; NULL: no background gathers (one thread) */
  int64_t step; /* the epoch's step whose batch they hold (or are being filled with); -1: none */
  const int64_t *after; /* the rows of the batch after it (n_after of them), to prefetch */
  int64_t n_after;
} NextBatch;

enum { SPARE_BATCH_MAX = 64 << 20 }; /* bytes of X and Y past which there is no NextBatch */

static void gather_next(void *arg) {
  NextBatch *nb = arg;
  nnrt_gather_serial(nb->data, nb->rows, nb->n, nb->x, nb->y);
  nnrt_prefetch_rows(nb->data, nb->after, nb->n_after);
}

/* Everything one training run holds. */
typedef struct Run {
  const NnModelDesc *d;
  const NnOptions *o;
  void *io[NN_IO_COUNT];     /* the kernels' regions */
  NnData data;               /* the training file or table */
  NnData val_data;           /* a separate validation set (rows 0 when none) */
  NnSet train;               /* the rows trained on */
  NnSet val;                 /* the rows validated on (n 0: no validation) */
  double *hyper;             /* hyperparameters in effect: options, or the checkpoint's */
  int64_t batch;             /* samples per step */
  uint64_t seed;             /* initialisation, split, shuffles */
  int64_t epoch;             /* epochs completed */
  int64_t step;              /* optimizer steps taken (the optimizer's `step`) */
  int64_t skipped;           /* steps skipped as non-finite, in all runs of this training */
  int64_t saved_epoch;       /* epoch of the last checkpoint written or resumed from; -1 none */
  int64_t *order;            /* (train.n) this epoch's order of rows, shuffled in place */
  NnRng shuffle;             /* the epoch shuffles' stream */
  uint64_t resumed_rng[4];   /* --resume: the stream's state the checkpoint recorded */
  int progress;              /* 1: draw a progress bar (stdout is a terminal, not --quiet) */
  double plateau_best;       /* reduce-on-plateau: the best loss so far */
  int64_t plateau_bad;       /* epochs since it improved */
  FILE *log;                 /* --log: the CSV being written, or NULL */
  int64_t lr_at;             /* index of 'lr' among the hyperparameters; -1: none */
  int64_t patience;          /* early stopping: epochs without improvement; 0 = off */
  NnMonitor monitor;         /* what it watches (never AUTO once set up) */
  int64_t best_epoch;        /* epoch of the best monitored value; 0: none yet */
  double best_value;         /* that value */
  int64_t wait;              /* epochs since best_epoch */
  char best_row[512];        /* the log row of the best epoch, after its "epoch," */
  NextBatch next;            /* the next step's batch, gathered in the background */
  double train_secs;         /* time in train_epoch (steps only, as a peer's training loop) */
  double val_secs;           /* time validating after the epochs */
} Run;

static const char *const monitor_names[] = NN_MONITOR_NAMES;

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

/* ---- setting up: checkpoint, parameters, data ---- */

/* --resume: the checkpoint's state, with flags given explicitly taking precedence. */
static void resume(Run *r) {
  const NnModelDesc *d = r->d;
  const NnOptions *o = r->o;
  double *saved = NNRT_ALLOC(d->n_hyper + 1, double);
  NnCkptState st = {.hyper = saved};
  nnrt_ckpt_load(o->resume_path, d, r->io, NNRT_CKPT_RESUME, &st);
  if (o->seed_set && o->seed != st.seed)
    nnrt_fatal("--seed %llu differs from the seed %llu of '%s'; HINT: a resumed run keeps its "
               "seed", (unsigned long long)o->seed, (unsigned long long)st.seed, o->resume_path);
  if (!o->batch_set && st.batch > d->max_batch)
    nnrt_fatal("'%s' was trained with batch %lld, more than this model's maximum %lld",
               o->resume_path, (long long)st.batch, (long long)d->max_batch);
  r->seed = st.seed;
  r->batch = o->batch_set ? o->batch : st.batch;
  for (int64_t i = 0; i < d->n_hyper; i++)
    if (!o->hyper_set[i])
      r->hyper[i] = saved[i];
  free(saved);
  memcpy(r->resumed_rng, st.rng, sizeof st.rng);
  r->epoch = r->saved_epoch = st.epoch;
  r->plateau_best = st.plateau_best;
  r->plateau_bad = st.plateau_bad;
  r->step = st.step;
  r->skipped = st.skipped;
  r->best_epoch = st.best_epoch;
  r->best_value = st.best_value;
  r->wait = st.wait;
}

static void init_state(Run *r) {
  const NnModelDesc *d = r->d;
  const NnOptions *o = r->o;
  r->hyper = NNRT_ALLOC(d->n_hyper + 1, double);
  memcpy(r->hyper, o->hyper, (size_t)d->n_hyper * sizeof *r->hyper);
  r->batch = o->batch;
  r->seed = o->seed;
  r->saved_epoch = -1;
  r->plateau_best = INFINITY;
  nnrt_buffers_new(d, r->io, o->threads);
  r->next.step = -1;
  /* spare batch buffers for the background gather, unless they would be large (a batch of
   * big images: the memory doubled for a gather that is then a small part of a step) */
  int64_t batch_bytes = d->max_batch * (d->x_size + d->y_size) * d->elem_size;
  if (r->io[NN_IO_THREADS] && batch_bytes <= SPARE_BATCH_MAX) {
    r->next.x = nnrt_batch_buffer(d, d->x_size);
    r->next.y = nnrt_batch_buffer(d, d->y_size);
  }
  if (o->resume_path) {
    resume(r);
    return;
  }
  nnrt_init_params(d, r->io[NN_IO_PARAM], r->seed);
  if (o->init_from)
    nnrt_ckpt_load(o->init_from, d, r->io, NNRT_CKPT_INIT, NULL);
}

static void load_sets(Run *r) {
  const NnModelDesc *d = r->d;
  const NnOptions *o = r->o;
  if (o->data_path)
    nnrt_data_file(d, o->data_path, o->labels_path, NNRT_USE_TARGETS, &r->data);
  else
    nnrt_data_declared(d, d->data, &r->data);
  char what[160];
  if (o->val_path || d->val) {
    if (o->val_path)
      nnrt_data_file(d, o->val_path, o->val_labels, NNRT_USE_TARGETS, &r->val_data);
    else
      nnrt_data_declared(d, d->val, &r->val_data);
    snprintf(what, sizeof what, "validation set '%s'",
             o->val_path ? o->val_path : d->val->name ? d->val->name : "?");
    nnrt_set_all(&r->train, &r->data, "training set");
    nnrt_set_all(&r->val, &r->val_data, what);
  } else if (d->val_split > 0) {
    nnrt_set_split(&r->data, d->val_split, r->seed, &r->train, &r->val);
  } else {
    nnrt_set_all(&r->train, &r->data, "training set");
  }
  r->order = NNRT_ALLOC(r->train.n, int64_t);
  memcpy(r->order, r->train.idx, (size_t)r->train.n * sizeof *r->order);
  nnrt_rng_seed(&r->shuffle, r->seed, NNRT_STREAM_SHUFFLE);
}

/* --resume: the shuffles of the epochs done, so the order and the stream are where an
 * uninterrupted run would have them. */
static void replay_shuffles(Run *r) {
  for (int64_t e = 0; e < r->epoch; e++)
    nnrt_shuffle(r->order, r->train.n, &r->shuffle);
  if (memcmp(r->shuffle.s, r->resumed_rng, sizeof r->resumed_rng) != 0)
    nnrt_file_error(r->o->resume_path, "replaying %lld epoch shuffles of %lld samples does not "
                    "reach the RNG state the checkpoint recorded; HINT: resume with the same "
                    "data, validation split and runtime that wrote it",
                    (long long)r->epoch, (long long)r->train.n);
}

static void run_free(Run *r) {
  nnrt_background_wait(r->io[NN_IO_THREADS]);
  free(r->next.x);
  free(r->next.y);
  free(r->order);
  free(r->hyper);
  nnrt_set_free(&r->train);
  nnrt_set_free(&r->val);
  nnrt_data_free(&r->data);
  nnrt_data_free(&r->val_data);
  nnrt_buffers_free(r->io);
}

static void print_header(const Run *r) {
  const NnModelDesc *d = r->d;
  const NnOptions *o = r->o;
  int64_t trained = nnrt_trained_count(d);
  printf("%s: %lld sample%s, batch %lld, %lld epoch%s, %lld parameter%s, seed %llu\n", d->name,
         (long long)r->train.n, nnrt_plural(r->train.n), (long long)r->batch,
         (long long)o->epochs, nnrt_plural(o->epochs), (long long)trained, nnrt_plural(trained),
         (unsigned long long)r->seed);
  if (r->val.n)
    printf("validation: %s, %lld sample%s\n", r->val.what, (long long)r->val.n,
           nnrt_plural(r->val.n));
  int64_t frozen = 0, tensors = 0;
  for (int64_t k = 0; k < d->n_params; k++)
    if (d->params[k].frozen)
      frozen += d->params[k].size, tensors++;
  if (frozen)
    printf("frozen: %lld parameter%s in %lld tensor%s (not updated)\n", (long long)frozen,
           nnrt_plural(frozen), (long long)tensors, nnrt_plural(tensors));
  if (o->resume_path)
    printf("resuming from %s: %lld epoch%s done, step %lld\n", o->resume_path,
           (long long)r->epoch, nnrt_plural(r->epoch), (long long)r->step);
}

/* ---- progress on a terminal ---- */

static const char *fmt_duration(double s, char buf[32]) {
  long t = s < 0 || !isfinite(s) ? 0 : s > 359999 ? 359999 : (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, 32, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else
    snprintf(buf, 32, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

/* "\repoch 3/10 [#####.....] 120/469  loss 0.512300  18234 samples/s  ETA 0:12" */
static void draw_bar(const Run *r, int64_t done, int64_t steps, const NnMetrics *m, double secs) {
  enum { WIDTH = 24 };
  char bar[WIDTH + 1], loss[32], eta[32];
  int fill = steps ? (int)(WIDTH * done / steps) : WIDTH;
  for (int i = 0; i < WIDTH; i++)
    bar[i] = i < fill ? '#' : '.';
  bar[WIDTH] = '\0';
  double rate = secs > 0 ? (double)m->samples / secs : 0;
  double left = done ? secs * (double)(steps - done) / (double)done : 0;
  char losses[NN_MAX_STEPS * 64];
  if (r->d->n_steps)
    nnrt_step_losses(r->d, m, losses, sizeof losses);
  else
    snprintf(losses, sizeof losses, "loss %s", nnrt_fmt_loss(nnrt_metrics_loss(m), loss));
  printf("\repoch %lld/%lld [%s] %lld/%lld  %s  %.0f samples/s  ETA %s\033[K",
         (long long)r->epoch + 1, (long long)r->o->epochs, bar, (long long)done,
         (long long)steps, losses, rate, fmt_duration(left, eta));
  fflush(stdout);
}

/* ---- --log: one CSV row per step and per epoch ---- */

/* kind,epoch,step,loss[,accuracy],lr[,val_loss[,val_accuracy,val_f1|,val_mae]]: `step` rows
 * hold one batch's loss, `epoch` rows the epoch's mean and the validation metrics, and a last
 * `best` row repeats the best epoch's row when early stopping is on. plot.c reads it by the
 * header's names, so columns may be added. */
static void log_open(Run *r) {
  const char *path = r->o->log_path;
  if (!path) { /* --plot alone: a log nobody keeps */
    if (!(r->log = tmpfile()))
      nnrt_fatal("cannot create a temporary file for --plot: %s", strerror(errno));
    path = "";
  }
  /* A resumed run continues its log; a fresh one starts it over. */
  FILE *old = *path && r->o->resume_path ? fopen(path, "r") : NULL;
  int append = old && fgetc(old) != EOF;
  if (old)
    fclose(old);
  if (*path && !(r->log = fopen(path, append ? "a+" : "w+")))
    nnrt_fatal("cannot create the log '%s': %s", path, strerror(errno));
  if (append)
    return;
  int acc = nnrt_has_accuracy(r->d);
  fprintf(r->log, "kind,epoch,step,loss%s,lr", acc ? ",accuracy" : "");
  for (int64_t k = 0; k < r->d->n_steps; k++) /* loss is then their sum */
    fprintf(r->log, ",%s_loss", r->d->steps[k].name);
  if (r->val.n)
    fprintf(r->log, ",val_loss%s", acc ? ",val_accuracy,val_f1" : ",val_mae");
  fputc('\n', r->log);
}

/* Closes the log, first drawing it when --plot asked for that. */
static void log_close(Run *r) {
  const char *name = r->o->log_path ? r->o->log_path : "the training log";
  if (!r->log)
    return;
  int bad = fflush(r->log) != 0 || ferror(r->log) != 0;
  if (!bad && r->o->plot_path) {
    rewind(r->log); /* opened for update, so the log is read back from the same stream */
    nnrt_plot_stream(r->log, name, r->o->plot_path);
  }
  bad |= fclose(r->log) != 0;
  r->log = NULL;
  if (bad)
    nnrt_fatal("cannot write '%s': %s", name, strerror(errno));
}

/* ",lr" (empty when the model has no 'lr'): the rate the last update used, as a compiled
 * `schedule` computed it in the update kernel or as reduce-on-plateau has lowered it. */
static void log_lr(const Run *r, char *buf, size_t cap) {
  if (r->lr_at >= 0)
    snprintf(buf, cap, ",%.9g", ((const double *)r->io[NN_IO_HYPER])[r->d->n_hyper + NN_HYPER_LR]);
  else
    snprintf(buf, cap, ",");
}

/* ",d_loss,g_loss" of a block with steps: this batch's (LOSS[k]). */
static void log_step_losses(const Run *r) {
  for (int64_t k = 0; k < r->d->n_steps; k++)
    fprintf(r->log, ",%.9g", ((const double *)r->io[NN_IO_LOSS])[k]);
}

/* One step: its loss and the accuracy of its batch (hits and decisions). */
static void log_step(const Run *r, double loss, int64_t hits, int64_t total) {
  char lr[40];
  if (!r->log)
    return;
  fprintf(r->log, "step,%lld,%lld,%.9g", (long long)r->epoch + 1, (long long)r->step, loss);
  if (nnrt_has_accuracy(r->d))
    fprintf(r->log, ",%.9g", total ? 100.0 * (double)hits / (double)total : 0.0);
  log_lr(r, lr, sizeof lr);
  fputs(lr, r->log);
  log_step_losses(r);
  if (r->val.n)
    fputs(nnrt_has_accuracy(r->d) ? ",,," : ",,", r->log);
  fputc('\n', r->log);
}

/* The row of an epoch after "epoch,", into buf. */
static void epoch_row(const Run *r, const NnMetrics *t, const NnMetrics *v, char *buf,
                      size_t cap) {
  int acc = nnrt_has_accuracy(r->d);
  char lr[40];
  size_t n = (size_t)snprintf(buf, cap, "%lld,%lld,%.9g", (long long)r->epoch,
                              (long long)r->step, nnrt_metrics_loss(t));
  if (acc && n < cap)
    n += (size_t)snprintf(buf + n, cap - n, ",%.9g", nnrt_metrics_accuracy(t));
  log_lr(r, lr, sizeof lr);
  if (n < cap)
    n += (size_t)snprintf(buf + n, cap - n, "%s", lr);
  for (int64_t k = 0; k < r->d->n_steps && n < cap; k++)
    n += (size_t)snprintf(buf + n, cap - n, ",%.9g",
                          t->samples ? t->step_loss[k] / (double)t->samples : 0);
  if (v && acc && n < cap)
    snprintf(buf + n, cap - n, ",%.9g,%.9g,%.9g", nnrt_metrics_loss(v), nnrt_metrics_accuracy(v),
             nnrt_metrics_f1(v));
  else if (v && v->elems && n < cap)
    snprintf(buf + n, cap - n, ",%.9g,%.9g", nnrt_metrics_loss(v),
             v->abs_err / (double)v->elems);
  else if (v && n < cap) /* no mae: the loss compares the outputs with neither x nor y */
    snprintf(buf + n, cap - n, ",%.9g,", nnrt_metrics_loss(v));
}

/* ---- one epoch ---- */

/* The name of the first parameter whose values in region io (NN_IO_GRAD: its gradient, or
 * NN_IO_PARAM) are not finite; NULL if none. */
static const char *nonfinite_param(const NnModelDesc *d, void *const *io, int region) {
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    if (!nnrt_all_finite((const char *)io[region] + p->offset * d->elem_size, p->size,
                         d->elem_size))
      return p->name;
  }
  return NULL;
}

NNRT_NORETURN static void stop_nonfinite(const Run *r, const char *what, int64_t batch_no,
                                         int64_t batches) {
  const NnModelDesc *d = r->d;
  char kept[256] = "";
  if (r->saved_epoch >= 0)
    snprintf(kept, sizeof kept, "; the last checkpoint ('%s', epoch %lld) is kept",
             r->o->save_path ? r->o->save_path : r->o->resume_path, (long long)r->saved_epoch);
  if (r->progress)
    printf("\r\033[K");
  nnrt_fatal("%s at epoch %lld, step %lld (batch %lld of %lld); HINT: %sclip gradients in the "
             "optimizer, check the data for extreme values, or pass --skip-nonfinite to skip "
             "such steps%s",
             what, (long long)r->epoch + 1, (long long)r->step + 1, (long long)batch_no,
             (long long)batches,
             nnrt_hyper_index(d, "lr") >= 0 ? "lower the learning rate (--lr), " : "", kept);
}

typedef struct Finite {
  const char *base;
  int64_t elem_size;
  atomic_bool bad;
} Finite;

static void finite_range(void *ctx, int64_t lo, int64_t hi) {
  Finite *f = ctx;
  if (!nnrt_all_finite(f->base + lo * f->elem_size, hi - lo, f->elem_size))
    atomic_store_explicit(&f->bad, true, memory_order_relaxed);
}

/* nnrt_all_finite of the gradient, shared out to the pool's workers in ranges of 2^16 */
static bool gradient_finite(const Run *r) {
  Finite f = {.base = r->io[NN_IO_GRAD], .elem_size = r->d->elem_size};
  atomic_init(&f.bad, false);
  nnrt_split(r->io[NN_IO_THREADS], r->d->param_size, 1 << 16, finite_range, &f);
  return !atomic_load(&f.bad);
}

/* After a grad call: NULL if the loss and (with --skip-nonfinite) the gradient are finite,
 * else what is not (in buf). Without --skip-nonfinite a bad gradient stops the run, so the
 * update is not held back for it: checked_update finds it, in the update's own loop. */
static const char *nonfinite(const Run *r, double loss, char *buf, size_t cap) {
  const NnModelDesc *d = r->d;
  if (!isfinite(loss)) {
    snprintf(buf, cap, "loss is %s", isnan(loss) ? "nan" : loss > 0 ? "inf" : "-inf");
    return buf;
  }
  if (!r->o->skip_nonfinite || gradient_finite(r))
    return NULL;
  const char *name = nonfinite_param(d, r->io, NN_IO_GRAD);
  snprintf(buf, cap, "the gradient of '%s' is not finite", name ? name : "?");
  return buf;
}

/* Runs an update kernel; without --skip-nonfinite, stops the run (the last checkpoint kept)
 * when the update wrote a value that is not finite (NN_HYPER_CHECK): from a gradient that is
 * not, or one that overflowed the optimizer's state. `step` names the step of a multi-step
 * block ("step 'd': "), or is "". */
static void checked_update(Run *r, NnKernel update, int64_t k, const char *step,
                           int64_t batch_no, int64_t batches) {
  const NnModelDesc *d = r->d;
  double *check = (double *)r->io[NN_IO_HYPER] + d->n_hyper + NN_HYPER_CHECK;
  *check = 0;
  update(r->io, k);
  if (r->o->skip_nonfinite || *check == 0)
    return;
  char why[320];
  const char *grad = nonfinite_param(d, r->io, NN_IO_GRAD);
  const char *param = nonfinite_param(d, r->io, NN_IO_PARAM);
  if (grad)
    snprintf(why, sizeof why, "%sthe gradient of '%s' is not finite", step, grad);
  else if (param)
    snprintf(why, sizeof why, "%sthe update of '%s' overflowed (its gradient is finite)", step,
             param);
  else
    snprintf(why, sizeof why, "%sthe optimizer's state overflowed in the update (the gradient "
             "is finite)", step);
  stop_nonfinite(r, why, batch_no, batches);
}

/* A block with steps: on one batch (already in X, Y), each step's gradient and update in
 * order; every step's kernels see the same step count, so its optimizer counts batches. A
 * step whose loss or gradient is not finite stops the run or, with --skip-nonfinite, skips
 * that step's update. */
static void run_steps(Run *r, int64_t k, int64_t b, int64_t steps, int64_t *skipped_now) {
  const NnModelDesc *d = r->d;
  double *step_slot = (double *)r->io[NN_IO_HYPER] + d->n_hyper + NN_HYPER_STEP;
  for (int64_t j = 0; j < d->n_steps; j++) {
    *step_slot = (double)r->step;
    d->steps[j].grad(r->io, k);
    char why[192], named[256];
    if (nonfinite(r, ((const double *)r->io[NN_IO_LOSS])[j], why, sizeof why)) {
      snprintf(named, sizeof named, "step '%s': %s", d->steps[j].name, why);
      if (!r->o->skip_nonfinite)
        stop_nonfinite(r, named, b + 1, steps);
      r->skipped++;
      ++*skipped_now;
      /* the skipped gradient would stay in GRAD, where the other steps' checks (which read
       * all of it) saw it: they do not write this step's parameters' slots */
      memset(r->io[NN_IO_GRAD], 0, (size_t)(d->param_size * d->elem_size));
      continue;
    }
    *step_slot = (double)r->step + 1;
    snprintf(named, sizeof named, "step '%s': ", d->steps[j].name);
    checked_update(r, d->steps[j].update, k, named, b + 1, steps);
  }
  r->step++;
}

/* The samples of the epoch's batch that starts at row `start` (the last one may be short). */
static int64_t batch_rows(const Run *r, int64_t start) {
  return r->train.n - start < r->batch ? r->train.n - start : r->batch;
}

/* One pass over the training rows in this epoch's order; m collects the loss and accuracy of
 * the steps taken (OUT is grad's, from the parameters before each update). */
static void train_epoch(Run *r, NnMetrics *m, int64_t *skipped_now) {
  const NnModelDesc *d = r->d;
  int64_t n = r->train.n, steps = (n + r->batch - 1) / r->batch;
  nnrt_shuffle(r->order, n, &r->shuffle);
  double t0 = now_seconds(), drawn = t0;
  NextBatch *nb = &r->next;
  for (int64_t b = 0; b < steps; b++) {
    int64_t start = b * r->batch, k = batch_rows(r, start);
    if (nb->step == b) { /* gathered during the last step */
      nnrt_background_wait(r->io[NN_IO_THREADS]);
      void *x = r->io[NN_IO_X], *y = r->io[NN_IO_Y];
      r->io[NN_IO_X] = nb->x, r->io[NN_IO_Y] = nb->y;
      nb->x = x, nb->y = y;
    } else {
      nnrt_gather(r->train.data, r->order + start, k, r->io);
    }
    nb->step = -1;
    if (nb->x && b + 1 < steps) { /* not past the epoch: the next one shuffles again */
      int64_t next = start + r->batch;
      int64_t after = next + r->batch, n_after = b + 2 < steps ? batch_rows(r, after) : 0;
      *nb = (NextBatch){r->train.data, r->order + next, batch_rows(r, next), nb->x, nb->y, b + 1,
                        r->order + after, n_after};
      nnrt_background(r->io[NN_IO_THREADS], gather_next, nb);
    }
    if (d->n_steps) {
      run_steps(r, k, b, steps, skipped_now);
      NnMetrics one = {0};
      nnrt_metrics_add(&one, d, r->io, k, 0);
      nnrt_metrics_add(m, d, r->io, k, 0);
      log_step(r, one.loss / (double)k, 0, 0);
    } else {
      d->grad(r->io, k);
      double loss = nnrt_loss(r->io);
      char why[192];
      if (nonfinite(r, loss, why, sizeof why)) {
        if (!r->o->skip_nonfinite)
          stop_nonfinite(r, why, b + 1, steps);
        r->skipped++;
        ++*skipped_now;
        continue;
      }
      int64_t hits = m->hits, total = m->total;
      nnrt_metrics_add(m, d, r->io, k, loss);
      double *hyper = r->io[NN_IO_HYPER];
      hyper[d->n_hyper + NN_HYPER_STEP] = (double)(r->step + 1);
      if (r->lr_at >= 0) /* the rate used, unless the update kernel's schedule writes its own */
        hyper[d->n_hyper + NN_HYPER_LR] = hyper[r->lr_at];
      checked_update(r, d->update, k, "", b + 1, steps); /* a stop names step r->step + 1 */
      r->step++;
      log_step(r, loss, m->hits - hits, m->total - total);
    }
    double now = now_seconds();
    if (r->progress && (now - drawn > 0.1 || b + 1 == steps)) {
      draw_bar(r, b + 1, steps, m, now - t0);
      drawn = now;
    }
  }
}

/* Every epoch when there are few or --verbose; else the first, every epochs/20-th, the last. */
static int epoch_due(int64_t e, int64_t epochs, int verbose) {
  if (verbose || epochs <= 50 || e == 1 || e == epochs)
    return 1;
  return e % (epochs / 20) == 0;
}

static void print_epoch(const Run *r, const NnMetrics *t, const NnMetrics *v, int64_t skipped) {
  const NnModelDesc *d = r->d;
  char buf[32], losses[NN_MAX_STEPS * 64];
  if (d->n_steps)
    nnrt_step_losses(d, t, losses, sizeof losses);
  else
    snprintf(losses, sizeof losses, "loss %s", nnrt_fmt_loss(nnrt_metrics_loss(t), buf));
  printf("epoch %*lld/%lld  %s", digits(r->o->epochs), (long long)r->epoch,
         (long long)r->o->epochs, losses);
  if (nnrt_has_accuracy(d))
    printf("  accuracy %.2f%%", nnrt_metrics_accuracy(t));
  if (v) {
    printf("  val_loss %s", nnrt_fmt_loss(nnrt_metrics_loss(v), buf));
    if (nnrt_has_accuracy(d))
      printf("  val_accuracy %.2f%%", nnrt_metrics_accuracy(v));
  }
  if (skipped)
    printf("  skipped %lld non-finite step%s", (long long)skipped, nnrt_plural(skipped));
  putchar('\n');
}

/* ---- early stopping ---- */

/* Checks --patience/--monitor against the data; resolves "auto". */
static void early_stop_setup(Run *r) {
  const NnOptions *o = r->o;
  r->patience = o->patience;
  r->monitor = (NnMonitor)o->monitor;
  if (r->monitor == NN_MONITOR_AUTO)
    r->monitor = r->val.n ? NN_MONITOR_VAL_LOSS : NN_MONITOR_LOSS;
  if (!r->patience) {
    if (o->monitor != NN_MONITOR_AUTO) /* what it names is watched by early stopping alone */
      fprintf(stderr, "%s: warning: --monitor %s has no effect without early stopping; HINT: "
              "--patience N, or 'early_stop = N' in the train block\n", nnrt_prog,
              monitor_names[r->monitor]);
    return;
  }
  int val = r->monitor <= NN_MONITOR_VAL_F1;
  if (val && !r->val.n)
    nnrt_fatal("early stopping watches %s, but there is no validation set; HINT: pass --val "
               "FILE, add 'validate = 0.1' to the train block, or --monitor loss",
               monitor_names[r->monitor]);
  if (r->monitor != NN_MONITOR_VAL_LOSS && r->monitor != NN_MONITOR_LOSS &&
      !nnrt_has_accuracy(r->d))
    nnrt_fatal("early stopping watches %s, but model '%s' is not a classifier (its loss has no "
               "accuracy); HINT: --monitor %s", monitor_names[r->monitor], r->d->name,
               val ? "val_loss" : "loss");
}

static double monitored(const Run *r, const NnMetrics *t, const NnMetrics *v) {
  switch (r->monitor) {
  case NN_MONITOR_VAL_LOSS: return nnrt_metrics_loss(v);
  case NN_MONITOR_VAL_ACCURACY: return nnrt_metrics_accuracy(v);
  case NN_MONITOR_VAL_F1: return nnrt_metrics_f1(v);
  case NN_MONITOR_ACCURACY: return nnrt_metrics_accuracy(t);
  default: return nnrt_metrics_loss(t);
  }
}

/* Records this epoch's value; returns 1 when it is the best so far. Losses must fall and the
 * rest rise, strictly, to count; a NaN never does. */
static int note_epoch(Run *r, double value) {
  int lower = r->monitor == NN_MONITOR_VAL_LOSS || r->monitor == NN_MONITOR_LOSS;
  int better = r->best_epoch == 0 ? value == value
               : lower ? value < r->best_value : value > r->best_value;
  if (!better) {
    r->wait++;
    return 0;
  }
  r->best_epoch = r->epoch;
  r->best_value = value;
  r->wait = 0;
  return 1;
}

/* CKPT with ".best" before a ".safetensors" extension, else after it. */
static void best_path(const char *save, char *buf, size_t cap) {
  const char *ext = ".safetensors";
  size_t n = strlen(save), e = strlen(ext);
  if (n > e && strcmp(save + n - e, ext) == 0)
    snprintf(buf, cap, "%.*s.best%s", (int)(n - e), save, ext);
  else
    snprintf(buf, cap, "%s.best", save);
}

/* ---- checkpoints ---- */

static void save_to(Run *r, const char *path) {
  const NnModelDesc *d = r->d;
  if (!nnrt_all_finite(r->io[NN_IO_PARAM], d->param_size, d->elem_size) ||
      !nnrt_all_finite(r->io[NN_IO_STATE], d->state_size, d->elem_size)) {
    char kept[160] = "";
    if (r->saved_epoch >= 0)
      snprintf(kept, sizeof kept, " (it keeps epoch %lld)", (long long)r->saved_epoch);
    nnrt_fatal("the parameters are not finite after epoch %lld; '%s' is not overwritten%s; "
               "HINT: lower the learning rate (--lr) or clip gradients", (long long)r->epoch,
               path, kept);
  }
  NnCkptState st = {.epoch = r->epoch, .step = r->step, .skipped = r->skipped, .seed = r->seed,
                    .batch = r->batch, .hyper = r->hyper, .has_meta = 1,
                    .plateau_best = r->plateau_best, .plateau_bad = r->plateau_bad};
  memcpy(st.rng, r->shuffle.s, sizeof st.rng);
  if (r->patience) {
    st.best_epoch = r->best_epoch;
    st.best_value = r->best_value;
    st.wait = r->wait;
  }
  nnrt_ckpt_save(path, d, r->io, &st);
}

static void save(Run *r) {
  save_to(r, r->o->save_path);
  r->saved_epoch = r->epoch;
}

static int save_due(const Run *r) {
  const NnOptions *o = r->o;
  return o->save_path && (r->epoch % o->save_every == 0 || r->epoch == o->epochs);
}

/* Reduce-on-plateau after an epoch whose loss (validation, else training) was `loss`, as
 * PyTorch's ReduceLROnPlateau (mode min, relative threshold, no cooldown). */
static void plateau_step(Run *r, double loss) {
  const NnModelDesc *d = r->d;
  int64_t lr = nnrt_hyper_index(d, "lr");
  if (d->plateau_factor <= 0 || lr < 0)
    return;
  if (loss < r->plateau_best * (1 - d->plateau_threshold)) {
    r->plateau_best = loss;
    r->plateau_bad = 0;
    return;
  }
  if (++r->plateau_bad <= d->plateau_patience)
    return;
  double old = r->hyper[lr], lower = fmax(old * d->plateau_factor, d->plateau_min_lr);
  r->plateau_bad = 0;
  if (old - lower <= 1e-8) /* PyTorch's eps: too small a change is not made */
    return;
  r->hyper[lr] = lower;
  ((double *)r->io[NN_IO_HYPER])[lr] = lower;
  if (!r->o->quiet)
    printf("plateau: no improvement for %lld epochs after epoch %lld; lr %g -> %g\n",
           (long long)d->plateau_patience + 1, (long long)r->epoch, old, lower);
}

/* ---- the command ---- */

/* "early stopping: val_loss has not improved for 3 epochs; best epoch 4 (val_loss 0.1234)" */
static void print_stop(const Run *r) {
  char buf[32];
  const char *name = monitor_names[r->monitor];
  int loss = r->monitor == NN_MONITOR_VAL_LOSS || r->monitor == NN_MONITOR_LOSS;
  if (loss)
    nnrt_fmt_loss(r->best_value, buf);
  else
    snprintf(buf, sizeof buf, r->monitor == NN_MONITOR_VAL_F1 ? "%.4f" : "%.2f%%", r->best_value);
  printf("early stopping after epoch %lld: %s has not improved for %lld epoch%s; best epoch "
         "%lld (%s %s)\n", (long long)r->epoch, name, (long long)r->wait, nnrt_plural(r->wait),
         (long long)r->best_epoch, name, buf);
}

static void train_epochs(Run *r) {
  const NnModelDesc *d = r->d;
  const NnOptions *o = r->o;
  char best[1024] = "";
  if (r->patience && o->save_path)
    best_path(o->save_path, best, sizeof best);
  while (r->epoch < o->epochs && !(r->patience && r->wait >= r->patience)) {
    NnMetrics t, v = {0};
    int64_t skipped = 0;
    nnrt_metrics_init(&t, d, 0);
    double t0 = now_seconds();
    train_epoch(r, &t, &skipped);
    double t1 = now_seconds();
    r->train_secs += t1 - t0;
    r->epoch++;
    if (r->val.n) {
      nnrt_metrics_init(&v, d, 1); /* full: the log's val_f1 */
      nnrt_evaluate(d, r->io, &r->val, &v);
      r->val_secs += now_seconds() - t1;
    }
    if (r->progress)
      printf("\r\033[K");
    if (!o->quiet && epoch_due(r->epoch, o->epochs, o->verbose))
      print_epoch(r, &t, r->val.n ? &v : NULL, skipped);
    char row[sizeof r->best_row];
    epoch_row(r, &t, r->val.n ? &v : NULL, row, sizeof row); /* the lr this epoch ran with */
    if (r->log) {
      fprintf(r->log, "epoch,%s\n", row);
      fflush(r->log); /* a run that dies later still leaves whole epochs behind */
    }
    plateau_step(r, nnrt_metrics_loss(r->val.n ? &v : &t)); /* may lower lr for the next */
    int stop = 0;
    if (r->patience) {
      if (note_epoch(r, monitored(r, &t, &v))) {
        memcpy(r->best_row, row, sizeof row);
        if (*best)
          save_to(r, best);
      }
      stop = r->wait >= r->patience;
    }
    nnrt_metrics_free(&v);
    if (save_due(r) || (stop && o->save_path))
      save(r);
    if (stop && !o->quiet)
      print_stop(r);
  }
  if (r->log && r->patience && *r->best_row)
    fprintf(r->log, "best,%s\n", r->best_row);
  if (*best && r->best_epoch && !o->quiet)
    printf("best checkpoint: %s (epoch %lld)\n", best, (long long)r->best_epoch);
}

int nnrt_train(const NnModelDesc *d, const NnOptions *o) {
  Run r = {.d = d, .o = o};
  init_state(&r);
  double t_load = now_seconds();
  load_sets(&r);
  t_load = now_seconds() - t_load;
  if (o->resume_path)
    replay_shuffles(&r);
  nnrt_set_hyper(d, r.io, r.hyper, r.step, r.seed);
  int64_t per_epoch = (r.train.n + r.batch - 1) / r.batch;
  ((double *)r.io[NN_IO_HYPER])[d->n_hyper + NN_HYPER_TOTAL] = (double)(o->epochs * per_epoch);
  r.lr_at = nnrt_hyper_index(d, "lr");
  early_stop_setup(&r);
  if (o->log_path || o->plot_path)
    log_open(&r);
  r.progress = !o->quiet && isatty(fileno(stdout));
  if (!o->quiet)
    print_header(&r);
  if (r.epoch >= o->epochs && !o->quiet)
    printf("nothing to train: %lld of %lld epochs are done\n", (long long)r.epoch,
           (long long)o->epochs);

  int64_t first = r.epoch, steps0 = r.step;
  train_epochs(&r);
  double secs = r.train_secs;

  if (r.skipped && !o->quiet)
    printf("skipped %lld step%s with a non-finite loss or gradient (--skip-nonfinite)\n",
           (long long)r.skipped, nnrt_plural(r.skipped));
  NnMetrics fin;
  const NnSet *set = r.val.n ? &r.val : &r.train;
  nnrt_metrics_init(&fin, d, 1);
  nnrt_evaluate(d, r.io, set, &fin);
  nnrt_metrics_print(d, "final", set, &fin, o->confusion);
  nnrt_metrics_free(&fin);
  log_close(&r);
  if (!o->quiet && r.epoch > first) {
    double samples = (double)(r.epoch - first) * (double)r.train.n;
    fflush(stdout); /* keep the order readable when stdout and stderr share a terminal */
    fprintf(stderr, "loaded %lld samples in %.3f s (%.1f MB in memory)\n",
            (long long)(r.data.rows + r.val_data.rows), t_load,
            (double)(nnrt_data_bytes(&r.data) + nnrt_data_bytes(&r.val_data)) / 1e6);
    fprintf(stderr, "trained %.0f samples in %.3f s (%.0f samples/s, %.3f s per epoch, %lld "
            "steps)\n", samples, secs, samples / (secs > 1e-9 ? secs : 1e-9),
            secs / (double)(r.epoch - first), (long long)(r.step - steps0));
    if (r.val.n)
      fprintf(stderr, "validated %lld samples after each epoch in %.3f s in all (not in the "
              "time above)\n", (long long)r.val.n, r.val_secs);
  }
  run_free(&r);
  return NNRT_EXIT_OK;
}
