/* infer.c — the `eval` and `predict` commands: take a checkpoint's parameters (--load) and a
 * data set, give the loss and metrics (eval: the eval kernel over a set with targets) or the
 * outputs of every sample (predict: the forward kernel over inputs alone), as CSV rows or, when
 * the output file ends in .npy, as one (samples, outputs) NumPy array,
 * or text (sample: a byte-level language model continuing a prompt, one byte per forward call).
 *
 * eval without --data reports on the set `train` reports its final metrics on: the declared
 * validation set, else the held-out split (drawn from the checkpoint's seed), else the
 * training set; so `train --save ck` and `eval --load ck` print the same numbers. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nnrt_internal.h"

/* Parameters: from the checkpoint when given, else initialised from the seed. */
static void load_model(const NnModelDesc *d, const NnOptions *o, void **io, NnCkptState *st) {
  memset(st, 0, sizeof *st);
  nnrt_buffers_new(d, io, o->threads);
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
  int64_t t = nnrt_positions(d);
  if (d->task == NN_TASK_MULTICLASS && t > 1) /* a sequence: a class per position */
    for (int64_t j = 0; j < t; j++)
      fprintf(f, "class%lld,", (long long)j);
  else if (d->task == NN_TASK_MULTICLASS || (d->task == NN_TASK_BINARY && d->out_size == 1))
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
    int64_t t = nnrt_positions(d), k = os / t;
    for (int64_t p = 0; p < t; p++) {
      int64_t best = 0;
      for (int64_t j = 1; j < k; j++)
        if (nnrt_get(out, i * os + p * k + j, es) > nnrt_get(out, i * os + p * k + best, es))
          best = j;
      fprintf(f, "%lld,", (long long)best);
    }
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

extern NnCalibration nn_calibration __attribute__((weak)); /* only in calibration builds */

int nnrt_predict(const NnModelDesc *d, const NnOptions *o) {
  void *io[NN_IO_COUNT];
  NnCkptState st;
  NnData in;
  if (!d->forward)
    nnrt_fatal("this model has no forward kernel; HINT: rebuild it with a newer nnc");
  load_model(d, o, io, &st);
  nnrt_data_file(d, o->input_path, NULL, NNRT_USE_INPUTS, &in);
  int npy = o->output_path && nnrt_npy_path(o->output_path);
  FILE *f = o->output_path ? fopen(o->output_path, npy ? "wb" : "w") : stdout;
  if (!f)
    nnrt_fatal("cannot create '%s': %s", o->output_path, strerror(errno));
  if (npy)
    nnrt_npy_write_header(f, d->elem_size, in.rows, d->out_size);
  else
    write_header(f, d);
  int64_t *rows = NNRT_ALLOC(d->max_batch, int64_t);
  for (int64_t start = 0; start < in.rows; start += d->max_batch) {
    int64_t n = in.rows - start < d->max_batch ? in.rows - start : d->max_batch;
    for (int64_t i = 0; i < n; i++)
      rows[i] = start + i;
    nnrt_gather(&in, rows, n, io);
    d->forward(io, n);
    if (npy)
      nnrt_npy_write_rows(f, io[NN_IO_OUT], n * d->out_size, d->elem_size);
    else
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
  if (&nn_calibration) /* for nnc --calibrate, which reads it from standard output */
    for (int64_t i = 0; i < nn_calibration.sites; i++)
      printf("calibration: site %lld absmax %.9g\n", (long long)i,
             (double)nn_calibration.absmax[i]);
  nnrt_data_free(&in);
  nnrt_buffers_free(io);
  return NNRT_EXIT_OK;
}

/* ---- sample ---- */

/* One byte drawn from logits[0..v): scaled by 1/temperature, cut to the top_k likeliest,
 * softmax, one uniform draw; temperature 0 takes the likeliest (the first of ties). */
static int draw(const double *logits, int64_t v, double temperature, int64_t top_k, NnRng *r,
                double *p) {
  int64_t best = 0;
  for (int64_t j = 1; j < v; j++)
    if (logits[j] > logits[best])
      best = j;
  if (temperature == 0)
    return (int)best;
  double cut = -INFINITY; /* the k-th largest logit: those below it are dropped */
  if (top_k > 0 && top_k < v) {
    for (int64_t j = 0; j < v; j++)
      p[j] = logits[j];
    for (int64_t i = 0; i < top_k; i++) { /* partial selection sort, largest first */
      int64_t m = i;
      for (int64_t j = i + 1; j < v; j++)
        if (p[j] > p[m])
          m = j;
      double t = p[i];
      p[i] = p[m], p[m] = t;
    }
    cut = p[top_k - 1];
  }
  double total = 0;
  for (int64_t j = 0; j < v; j++) {
    p[j] = logits[j] >= cut ? exp((logits[j] - logits[best]) / temperature) : 0;
    total += p[j];
  }
  double u = nnrt_rng_uniform(r) * total;
  for (int64_t j = 0; j < v; j++) {
    if (u < p[j])
      return (int)j;
    u -= p[j];
  }
  return (int)best; /* rounding left u past the end */
}

/* sample of a model whose output is an image ([h, w] or [h, w, 1], e.g. a train block's
 * `sample = gen(normal([100]))`): one forward call on `count` samples (X is zeros; the noise
 * is drawn from the seed and the checkpoint's step), written as a binary PGM grid. Values
 * map from [0, 1] to 0..255 when none is negative, else from [-1, 1] (tanh); beyond, they
 * are clipped. */
static int sample_images(const NnModelDesc *d, const NnOptions *o) {
  int64_t h = d->out_rank >= 2 ? d->out_dims[0] : 0, w = d->out_rank >= 2 ? d->out_dims[1] : 0;
  if (!(d->out_rank == 2 || (d->out_rank == 3 && d->out_dims[2] == 1)))
    nnrt_fatal("sample draws images of shape [h, w] or [h, w, 1], but model '%s' gives %lld "
               "values per sample; HINT: set 'sample = gen(normal([100]))' in the train block",
               d->name, (long long)d->out_size);
  if (!o->output_path)
    nnrt_fatal("sample of images needs --output GRID.pgm");
  int64_t n = o->count ? o->count : d->max_batch < 64 ? d->max_batch : 64;
  if (n > d->max_batch)
    nnrt_fatal("--count %lld is more than the compiled batch %lld; HINT: compile with nnc "
               "--max-batch N", (long long)n, (long long)d->max_batch);
  void *io[NN_IO_COUNT];
  NnCkptState st;
  load_model(d, o, io, &st);
  memset(io[NN_IO_X], 0, (size_t)(n * d->x_size * d->elem_size));
  d->forward(io, n);
  int64_t cols = 1;
  while (cols * cols < n)
    cols++;
  int64_t rows = (n + cols - 1) / cols, gw = cols * (w + 1) + 1, gh = rows * (h + 1) + 1;
  int negative = 0;
  for (int64_t i = 0; i < n * d->out_size; i++)
    negative |= nnrt_get(io[NN_IO_OUT], i, d->elem_size) < 0;
  unsigned char *grid = NNRT_ALLOC(gw * gh, unsigned char);
  memset(grid, 0, (size_t)(gw * gh)); /* a one-pixel black border around every image */
  for (int64_t k = 0; k < n; k++)
    for (int64_t y = 0; y < h; y++)
      for (int64_t x = 0; x < w; x++) {
        double v = nnrt_get(io[NN_IO_OUT], k * d->out_size + y * w + x, d->elem_size);
        v = negative ? (v + 1) / 2 : v;
        v = v < 0 ? 0 : v > 1 ? 1 : v;
        grid[(k / cols * (h + 1) + 1 + y) * gw + k % cols * (w + 1) + 1 + x] =
            (unsigned char)lround(v * 255);
      }
  FILE *f = fopen(o->output_path, "wb");
  if (!f)
    nnrt_fatal("cannot create '%s': %s", o->output_path, strerror(errno));
  fprintf(f, "P5\n%lld %lld\n255\n", (long long)gw, (long long)gh);
  int bad = fwrite(grid, 1, (size_t)(gw * gh), f) != (size_t)(gw * gh);
  bad |= fclose(f) != 0;
  if (bad)
    nnrt_fatal("cannot write '%s': %s", o->output_path, strerror(errno));
  printf("wrote %s: %lld image%s of %lldx%lld in a %lldx%lld grid (seed %llu, step %lld)\n",
         o->output_path, (long long)n, nnrt_plural(n), (long long)h, (long long)w,
         (long long)rows, (long long)cols, (unsigned long long)st.seed, (long long)st.step);
  free(grid);
  nnrt_buffers_free(io);
  return NNRT_EXIT_OK;
}

int nnrt_sample(const NnModelDesc *d, const NnOptions *o) {
  if (!d->forward)
    nnrt_fatal("this model has no forward kernel; HINT: rebuild it with a newer nnc");
  if (d->data->kind != NN_DATA_TEXT)
    return sample_images(d, o);
  int64_t t = d->x_size, v = t > 0 && d->out_size % t == 0 ? d->out_size / t : 0;
  if (d->data->kind != NN_DATA_TEXT || v < 2 || v > 256)
    nnrt_fatal("sample needs a byte-level language model: text(...) data and outputs of "
               "[context, vocab] logits with vocab <= 256 (model '%s' has %lld outputs for %lld "
               "inputs)", d->name, (long long)d->out_size, (long long)t);
  void *io[NN_IO_COUNT];
  NnCkptState st;
  load_model(d, o, io, &st);
  const char *prompt = o->prompt && *o->prompt ? o->prompt : "\n";
  size_t plen = strlen(prompt);
  int64_t len = (int64_t)plen, es = d->elem_size;
  unsigned char *text = NNRT_ALLOC(len + o->tokens, unsigned char);
  memcpy(text, prompt, plen);
  double *logits = NNRT_ALLOC(v, double), *p = NNRT_ALLOC(v, double);
  NnRng r;
  nnrt_rng_seed(&r, o->seed, NNRT_STREAM_SAMPLE);
  fwrite(prompt, 1, plen, stdout);
  for (int64_t i = 0; i < o->tokens; i++) {
    /* the last t bytes; a shorter text is followed by zeros, which a causal model ignores */
    int64_t start = len > t ? len - t : 0, w = len - start;
    for (int64_t j = 0; j < t; j++)
      nnrt_set(io[NN_IO_X], j, es, j < w ? text[start + j] : 0);
    d->forward(io, 1);
    for (int64_t j = 0; j < v; j++)
      logits[j] = nnrt_get(io[NN_IO_OUT], (w - 1) * v + j, es);
    int c = draw(logits, v, o->temperature, o->top_k, &r, p);
    text[len++] = (unsigned char)c;
    putchar(c);
  }
  putchar('\n');
  fflush(stdout);
  free(text);
  free(logits);
  free(p);
  nnrt_buffers_free(io);
  return NNRT_EXIT_OK;
}
