/* metrics.c — how good the model is: takes the OUT and Y regions after grad/eval calls, gives
 * running sums (loss, accuracy, a confusion matrix for classifiers, squared and absolute error
 * for regression), an evaluation pass over a whole set with the eval kernel, and the final
 * report: loss, accuracy, macro precision/recall/F1 or MSE/MAE, and the confusion matrix. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nnrt_internal.h"

int nnrt_has_accuracy(const NnModelDesc *d) {
  return d->task == NN_TASK_BINARY || d->task == NN_TASK_MULTICLASS;
}

void nnrt_metrics_init(NnMetrics *m, const NnModelDesc *d, int full) {
  memset(m, 0, sizeof *m);
  m->classes = nnrt_classes(d);
  if (full && m->classes > 0) {
    m->per_class = NNRT_ALLOC(3 * m->classes, int64_t);
    memset(m->per_class, 0, (size_t)(3 * m->classes) * sizeof *m->per_class);
  }
  if (full && m->classes > 0 && m->classes <= NNRT_CONFUSION_MAX) {
    m->confusion = NNRT_ALLOC(m->classes * m->classes, int64_t);
    memset(m->confusion, 0, (size_t)(m->classes * m->classes) * sizeof *m->confusion);
  }
}

void nnrt_metrics_free(NnMetrics *m) {
  free(m->per_class);
  free(m->confusion);
  m->per_class = m->confusion = NULL;
}

/* The first maximum of row[0..n): a later element wins only when strictly greater, so ties go
 * to the first and NaNs are never chosen (a NaN first element stays chosen: nothing compares
 * greater). GPT-2's 50257-wide rows make this a hot loop: each chunk of 64 is first only
 * tested for anything above the running maximum (a branch-free loop the compiler vectorises),
 * and scanned element by element only when something is. */
enum { ARGMAX_CHUNK = 64 };

static int64_t argmax_f32(const float *row, int64_t n) {
  int64_t best = 0, j = 1;
  float top = row[0];
  for (; j + ARGMAX_CHUNK <= n; j += ARGMAX_CHUNK) {
    int above = 0;
    for (int k = 0; k < ARGMAX_CHUNK; k++)
      above |= row[j + k] > top;
    if (!above)
      continue;
    for (int k = 0; k < ARGMAX_CHUNK; k++)
      if (row[j + k] > top)
        top = row[j + k], best = j + k;
  }
  for (; j < n; j++)
    if (row[j] > top)
      top = row[j], best = j;
  return best;
}

static int64_t argmax_f64(const double *row, int64_t n) {
  int64_t best = 0;
  double top = row[0];
  for (int64_t j = 1; j < n; j++)
    if (row[j] > top)
      top = row[j], best = j;
  return best;
}

static int64_t argmax_row(const void *base, int64_t off, int64_t n, int64_t es) {
  return es == 4 ? argmax_f32((const float *)base + off, n)
                 : argmax_f64((const double *)base + off, n);
}

/* One decision: counts it, and enters it in the per-class counts and the confusion matrix
 * when those are tracked. */
static void decide(NnMetrics *m, int64_t want, int64_t got) {
  m->hits += want == got;
  m->total++;
  if (!m->per_class || want < 0 || want >= m->classes || got < 0 || got >= m->classes)
    return;
  m->per_class[3 * want]++;
  m->per_class[3 * got + 1]++;
  m->per_class[3 * want + 2] += want == got;
  if (m->confusion)
    m->confusion[want * m->classes + got]++;
}

static void add_binary(NnMetrics *m, const NnModelDesc *d, const void *out, const void *y,
                       int64_t n) {
  int64_t es = d->elem_size, os = d->out_size, ys = d->y_size, k = os < ys ? os : ys;
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < k; j++)
      decide(m, nnrt_get(y, i * ys + j, es) > 0.5, nnrt_get(out, i * os + j, es) > d->threshold);
}

static void add_multiclass(NnMetrics *m, const NnModelDesc *d, const void *out, const void *y,
                           int64_t n) {
  int64_t es = d->elem_size, os = d->out_size, ys = d->y_size, t = nnrt_positions(d);
  if (t > 1) { /* a sequence: one class index per position, os / t logits each */
    for (int64_t i = 0; i < n * t; i++)
      decide(m, (int64_t)llround(nnrt_get(y, i, es)), argmax_row(out, i * (os / t), os / t, es));
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    /* A single target column holds the class index rather than a one-hot row. */
    int64_t want = ys == 1 ? (int64_t)llround(nnrt_get(y, i, es)) : argmax_row(y, i * ys, ys, es);
    decide(m, want, argmax_row(out, i * os, os, es));
  }
}

/* Squared and absolute errors of out against what the loss compares it with (NnCompare):
 * y, or x for an autoencoder, or nothing. */
static void add_regression(NnMetrics *m, const NnModelDesc *d, void **io, int64_t n) {
  if (d->compare == NN_COMPARE_NONE)
    return;
  const void *out = io[NN_IO_OUT];
  const void *y = d->compare == NN_COMPARE_X ? io[NN_IO_X] : io[NN_IO_Y];
  int64_t es = d->elem_size, os = d->out_size;
  int64_t ys = d->compare == NN_COMPARE_X ? d->x_size : d->y_size, k = os < ys ? os : ys;
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < k; j++) {
      double e = nnrt_get(out, i * os + j, es) - nnrt_get(y, i * ys + j, es);
      m->sq_err += e * e;
      m->abs_err += fabs(e);
    }
  m->elems += n * k;
}

void nnrt_metrics_add(NnMetrics *m, const NnModelDesc *d, void **io, int64_t n, double loss) {
  const void *out = io[NN_IO_OUT], *y = io[NN_IO_Y];
  m->samples += n;
  if (d->n_steps) { /* each step's loss; the outputs (e.g. generated images) have no target */
    for (int64_t k = 0; k < d->n_steps; k++) {
      m->step_loss[k] += ((const double *)io[NN_IO_LOSS])[k] * (double)n;
      m->loss += ((const double *)io[NN_IO_LOSS])[k] * (double)n;
    }
    return;
  }
  m->loss += loss * (double)n;
  if (d->task == NN_TASK_BINARY)
    add_binary(m, d, out, y, n);
  else if (d->task == NN_TASK_MULTICLASS)
    add_multiclass(m, d, out, y, n);
  else
    add_regression(m, d, io, n);
}

double nnrt_metrics_loss(const NnMetrics *m) {
  return m->samples ? m->loss / (double)m->samples : 0;
}

const char *nnrt_step_losses(const NnModelDesc *d, const NnMetrics *m, char *buf, size_t cap) {
  size_t at = 0;
  buf[0] = '\0';
  for (int64_t k = 0; k < d->n_steps && at < cap; k++) {
    char v[32];
    nnrt_fmt_loss(m->samples ? m->step_loss[k] / (double)m->samples : 0, v);
    at += (size_t)snprintf(buf + at, cap - at, "%s%s_loss %s", k ? "  " : "", d->steps[k].name, v);
  }
  return buf;
}

double nnrt_metrics_accuracy(const NnMetrics *m) {
  return m->total ? 100.0 * (double)m->hits / (double)m->total : 0;
}

void nnrt_evaluate(const NnModelDesc *d, void **io, const NnSet *set, NnMetrics *m) {
  for (int64_t start = 0; start < set->n; start += d->max_batch) {
    int64_t n = set->n - start < d->max_batch ? set->n - start : d->max_batch;
    nnrt_gather(set->data, set->idx + start, n, io);
    d->eval(io, n);
    nnrt_metrics_add(m, d, io, n, nnrt_loss(io));
  }
}

/* ---- the report ---- */

const char *nnrt_fmt_loss(double v, char buf[32]) {
  if (v != 0 && isfinite(v) && (fabs(v) < 1e-4 || fabs(v) >= 1e6))
    snprintf(buf, 32, "%.3e", v);
  else
    snprintf(buf, 32, "%.6f", v);
  return buf;
}

/* Macro averages over the classes that occur in the targets or the predictions (as
 * scikit-learn does); a class never predicted has precision 0. */
static void macro_prf(const NnMetrics *m, double *p, double *r, double *f1, int64_t *used) {
  int64_t k = m->classes;
  *p = *r = *f1 = 0;
  *used = 0;
  for (int64_t c = 0; c < k; c++) {
    int64_t truth = m->per_class[3 * c], predicted = m->per_class[3 * c + 1];
    int64_t tp = m->per_class[3 * c + 2];
    if (truth == 0 && predicted == 0)
      continue;
    double pc = predicted ? (double)tp / (double)predicted : 0;
    double rc = truth ? (double)tp / (double)truth : 0;
    *p += pc;
    *r += rc;
    *f1 += pc + rc > 0 ? 2 * pc * rc / (pc + rc) : 0;
    ++*used;
  }
  if (*used) {
    *p /= (double)*used;
    *r /= (double)*used;
    *f1 /= (double)*used;
  }
}

double nnrt_metrics_f1(const NnMetrics *m) {
  double p, r, f1;
  int64_t used;
  if (!m->per_class)
    return 0;
  macro_prf(m, &p, &r, &f1, &used);
  return f1;
}

static void print_confusion(const NnMetrics *m) {
  int64_t k = m->classes, most = 0;
  for (int64_t i = 0; i < k * k; i++)
    most = m->confusion[i] > most ? m->confusion[i] : most;
  int w = snprintf(NULL, 0, "%lld", (long long)(most > k ? most : k));
  w = w < 3 ? 3 : w;
  printf("confusion (rows: true class, columns: predicted class):\n%*s", w + 2, "");
  for (int64_t j = 0; j < k; j++)
    printf(" %*lld", w, (long long)j);
  putchar('\n');
  for (int64_t i = 0; i < k; i++) {
    printf("  %*lld", w, (long long)i);
    for (int64_t j = 0; j < k; j++)
      printf(" %*lld", w, (long long)m->confusion[i * k + j]);
    putchar('\n');
  }
}

void nnrt_metrics_print(const NnModelDesc *d, const char *label, const NnSet *set,
                        const NnMetrics *m, int confusion) {
  char buf[32];
  if (d->n_steps) {
    char losses[NN_MAX_STEPS * 64];
    printf("%s: %s\nmetrics: %s, %lld sample%s (inference mode)\n", label,
           nnrt_step_losses(d, m, losses, sizeof losses), set->what, (long long)m->samples,
           nnrt_plural(m->samples));
    return;
  }
  printf("%s: loss %s", label, nnrt_fmt_loss(nnrt_metrics_loss(m), buf));
  if (nnrt_has_accuracy(d))
    printf("  accuracy %.2f%% (%lld/%lld)", nnrt_metrics_accuracy(m), (long long)m->hits,
           (long long)m->total);
  printf("\nmetrics: %s, %lld sample%s;", set->what, (long long)m->samples,
         nnrt_plural(m->samples));
  if (m->per_class) {
    double p, r, f1;
    int64_t used;
    macro_prf(m, &p, &r, &f1, &used);
    printf(" macro precision %.4f  recall %.4f  f1 %.4f (%lld class%s)\n", p, r, f1,
           (long long)used, used == 1 ? "" : "es");
    if (confusion && m->confusion)
      print_confusion(m);
    else if (confusion)
      printf("no confusion matrix for more than %d classes\n", NNRT_CONFUSION_MAX);
  } else if (d->compare == NN_COMPARE_NONE) {
    printf(" loss only (the loss compares the outputs with neither x nor y)\n");
  } else {
    double n = m->elems ? (double)m->elems : 1;
    printf(" mse %s", nnrt_fmt_loss(m->sq_err / n, buf));
    printf("  mae %s%s\n", nnrt_fmt_loss(m->abs_err / n, buf),
           d->compare == NN_COMPARE_X ? " (against the inputs x, as the loss compares)" : "");
  }
}
