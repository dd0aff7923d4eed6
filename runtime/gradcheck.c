/* gradcheck.c — the `gradcheck` command: takes the model and its data, gives a comparison of
 * the compiled gradient (the grad kernel) with central finite differences of the eval kernel's
 * loss (of the grad kernel's own loss when the model has a training mode: dropout and batch
 * statistics are what the gradient is of), for up to 64 evenly spaced elements of every
 * trained parameter, on the first batch of the data. Prints one line per parameter and `GRAD OK maxdiff=…` or `GRAD FAIL …` (exit 1). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nnrt_internal.h"

static const char *nonfinite_name(double v) { return isnan(v) ? "nan" : v > 0 ? "inf" : "-inf"; }

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
  (d->modes ? d->grad : d->eval)(io, n);
  return nnrt_loss(io);
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
  double l0 = nnrt_loss(io);
  if (!isfinite(l0)) {
    printf("GRAD FAIL loss is %s at the initial parameters\n", nonfinite_name(l0));
    return NULL;
  }
  double *g = malloc((size_t)(d->param_size ? d->param_size : 1) * sizeof *g);
  if (!g)
    nnrt_fatal("out of memory at %s:%d", __FILE__, __LINE__);
  for (int64_t j = 0; j < d->param_size; j++)
    g[j] = nnrt_get(io[NN_IO_GRAD], j, d->elem_size);
  /* grad and eval must compute the same loss, or the comparison below means nothing (in a
   * model with a training mode they differ: there the finite differences use grad's loss) */
  double le = eval_loss(d, io, n);
  if (rel_diff(l0, le) > tol) {
    printf("GRAD FAIL grad and eval disagree on the loss: grad %.9g, eval %.9g\n", l0, le);
    free(g);
    return NULL;
  }
  return g;
}

int nnrt_gradcheck(const NnModelDesc *d, const NnOptions *o) {
  if (d->n_steps)
    nnrt_fatal("gradcheck checks a train block with one loss; '%s' has %lld steps", d->name,
               (long long)d->n_steps);
  NnData data;
  void *io[NN_IO_COUNT];
  if (o->data_path)
    nnrt_data_file(d, o->data_path, o->labels_path, NNRT_USE_TARGETS, &data);
  else
    nnrt_data_declared(d, d->data, &data);
  nnrt_buffers_new(d, io, o->threads);
  nnrt_init_params(d, io[NN_IO_PARAM], o->seed);
  nnrt_set_hyper(d, io, o->hyper, 1, o->seed);
  int64_t n = data.rows < d->max_batch ? data.rows : d->max_batch;
  int64_t *order = malloc((size_t)n * sizeof *order);
  if (!order)
    nnrt_fatal("out of memory at %s:%d", __FILE__, __LINE__);
  for (int64_t i = 0; i < n; i++)
    order[i] = i;
  nnrt_gather(&data, order, n, io);
  printf("gradcheck %s: %lld sample%s, %s, eps %g, tol %g, seed %llu\n", d->name, (long long)n,
         nnrt_plural(n), d->elem_size == 4 ? "f32" : "f64", o->eps, o->tol,
         (unsigned long long)o->seed);

  int rc = NNRT_EXIT_FAIL;
  double *analytic = analytic_grad(d, io, n, o->tol);
  if (analytic) {
    Worst w = {0};
    int nonzero = 0;
    for (int64_t k = 0; k < d->n_params; k++) {
      int64_t checked;
      if (d->params[k].buffer) {
        printf("%s: state, not trained\n", d->params[k].name);
        continue;
      }
      if (d->params[k].frozen) { /* no gradient is computed for it */
        printf("%s: frozen, not checked\n", d->params[k].name);
        continue;
      }
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
  nnrt_buffers_free(io);
  nnrt_data_free(&data);
  return rc;
}
