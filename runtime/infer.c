/* infer.c — the `eval` and `predict` commands: take a checkpoint's parameters (--load) and a
 * data set, give the loss and metrics (eval: the eval kernel over a set with targets) or one
 * CSV row of outputs per sample (predict: the forward kernel over inputs alone).
 *
 * eval without --data reports on the set `train` reports its final metrics on: the declared
 * validation set, else the held-out split (drawn from the checkpoint's seed), else the
 * training set; so `train --save ck` and `eval --load ck` print the same numbers. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nnrt_internal.h"

/* Parameters: from the checkpoint when given, else initialised from the seed. */
static void load_model(const NnModelDesc *d, const NnOptions *o, void **io, NnCkptState *st) {
  memset(st, 0, sizeof *st);
  nnrt_buffers_new(d, io);
  nnrt_init_params(d, io[NN_IO_PARAM], o->seed);
  st->seed = o->seed;
  if (o->load_path) {
    nnrt_ckpt_load(o->load_path, d, io, NNRT_CKPT_PARAMS, st);
    if (!st->has_meta || o->seed_set)
      st->seed = o->seed;
  }
  nnrt_set_hyper(d, io, o->hyper, st->step, st->seed);
}

static void describe_model(const NnModelDesc *d, const NnOptions *o, const NnCkptState *st) {
  if (!o->load_path)
    printf("%s: untrained parameters (seed %llu); HINT: pass --load CKPT\n", d->name,
           (unsigned long long)st->seed);
  else if (st->has_meta)
    printf("%s: parameters from %s (epoch %lld, step %lld)\n", d->name, o->load_path,
           (long long)st->epoch, (long long)st->step);
  else
    printf("%s: parameters from %s\n", d->name, o->load_path);
}

/* The set eval reports on; train is a scratch set for the split's other half. */
static void eval_set(const NnModelDesc *d, const NnOptions *o, uint64_t seed, NnData *data,
                     NnSet *set, NnSet *train) {
  char what[160];
  memset(train, 0, sizeof *train);
  if (o->data_path) {
    nnrt_data_file(d, o->data_path, o->labels_path, NNRT_USE_TARGETS, data);
    snprintf(what, sizeof what, "%s", o->data_path);
    nnrt_set_all(set, data, what);
  } else if (d->val) {
    nnrt_data_declared(d, d->val, data);
    snprintf(what, sizeof what, "validation set '%s'", d->val->name ? d->val->name : "?");
    nnrt_set_all(set, data, what);
  } else if (d->val_split > 0) {
    nnrt_data_declared(d, d->data, data);
    nnrt_set_split(data, d->val_split, seed, train, set);
  } else {
    nnrt_data_declared(d, d->data, data);
    nnrt_set_all(set, data, "training set");
  }
}

int nnrt_eval(const NnModelDesc *d, const NnOptions *o) {
  void *io[NN_IO_COUNT];
  NnCkptState st;
  NnData data;
  NnSet set, other;
  NnMetrics m;
  load_model(d, o, io, &st);
  eval_set(d, o, st.seed, &data, &set, &other);
  if (!o->quiet)
    describe_model(d, o, &st);
  nnrt_metrics_init(&m, d, 1);
  nnrt_evaluate(d, io, &set, &m);
  nnrt_metrics_print(d, "eval", &set, &m, o->confusion);
  nnrt_metrics_free(&m);
  nnrt_set_free(&set);
  nnrt_set_free(&other);
  nnrt_data_free(&data);
  nnrt_buffers_free(io);
  return NNRT_EXIT_OK;
}

/* ---- predict ---- */

static void write_header(FILE *f, const NnModelDesc *d) {
  if (d->task == NN_TASK_MULTICLASS || (d->task == NN_TASK_BINARY && d->out_size == 1))
    fprintf(f, "class,");
  else if (d->task == NN_TASK_BINARY)
    for (int64_t j = 0; j < d->out_size; j++)
      fprintf(f, "class%lld,", (long long)j);
  for (int64_t j = 0; j < d->out_size; j++)
    fprintf(f, "%sout%lld", j ? "," : "", (long long)j);
  fputc('\n', f);
}

/* Sample i of OUT: the decision(s) of a classifier, then every output. */
static void write_row(FILE *f, const NnModelDesc *d, const void *out, int64_t i) {
  int64_t es = d->elem_size, os = d->out_size;
  const char *fmt = es == 4 ? "%.9g" : "%.17g"; /* enough digits to round-trip */
  if (d->task == NN_TASK_MULTICLASS) {
    int64_t best = 0;
    for (int64_t j = 1; j < os; j++)
      if (nnrt_get(out, i * os + j, es) > nnrt_get(out, i * os + best, es))
        best = j;
    fprintf(f, "%lld,", (long long)best);
  } else if (d->task == NN_TASK_BINARY) {
    for (int64_t j = 0; j < os; j++)
      fprintf(f, "%d,", nnrt_get(out, i * os + j, es) > d->threshold);
  }
  for (int64_t j = 0; j < os; j++) {
    if (j)
      fputc(',', f);
    fprintf(f, fmt, nnrt_get(out, i * os + j, es));
  }
  fputc('\n', f);
}

int nnrt_predict(const NnModelDesc *d, const NnOptions *o) {
  void *io[NN_IO_COUNT];
  NnCkptState st;
  NnData in;
  if (!d->forward)
    nnrt_fatal("this model has no forward kernel; HINT: rebuild it with a newer nnc");
  load_model(d, o, io, &st);
  nnrt_data_file(d, o->input_path, NULL, NNRT_USE_INPUTS, &in);
  FILE *f = o->output_path ? fopen(o->output_path, "w") : stdout;
  if (!f)
    nnrt_fatal("cannot create '%s': %s", o->output_path, strerror(errno));
  write_header(f, d);
  int64_t *rows = NNRT_ALLOC(d->max_batch, int64_t);
  for (int64_t start = 0; start < in.rows; start += d->max_batch) {
    int64_t n = in.rows - start < d->max_batch ? in.rows - start : d->max_batch;
    for (int64_t i = 0; i < n; i++)
      rows[i] = start + i;
    nnrt_gather(&in, rows, n, io);
    d->forward(io, n);
    for (int64_t i = 0; i < n; i++)
      write_row(f, d, io[NN_IO_OUT], i);
  }
  int bad = ferror(f) != 0;
  if (f != stdout)
    bad |= fclose(f) != 0;
  else
    bad |= fflush(f) != 0;
  if (bad)
    nnrt_fatal("cannot write '%s': %s", o->output_path ? o->output_path : "standard output",
               strerror(errno));
  if (o->output_path && !o->quiet)
    fprintf(stderr, "%s: %lld prediction%s written to %s\n", nnrt_prog, (long long)in.rows,
            nnrt_plural(in.rows), o->output_path);
  free(rows);
  nnrt_data_free(&in);
  nnrt_buffers_free(io);
  return NNRT_EXIT_OK;
}
