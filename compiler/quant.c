/* quant.c — `--quantize=int8 --calibrate DATA` and the accuracy reports of --prune/--quantize:
 * takes a planned Unit and the --weights (pruned or not), gives the int8 sites of the forward
 * pass with their weights and scales, and runs the model at compile time to calibrate and to
 * measure what pruning or quantising costs.
 *
 * A site is a matmul x[.., K] @ W[K, N] or x[.., K] @ transpose(W[N, K]) (dense's layout) or a
 * convolution with filter W[kh, kw, C, N] whose W is a parameter. Its weights become int8 with
 * one symmetric scale per output channel (max |W[:, j]| / 127); its input becomes int8 with
 * one symmetric scale, max |x| / 127, the max taken over the calibration data (min/max
 * calibration: no percentile clipping). The products accumulate in int32 and are scaled back
 * to f32 (lower_llvm.c emits the loops).
 *
 * nnc runs the model by building the training binary from the same Unit with helper variants
 * of the forward and eval kernels (Options.quant: weights baked in, f32 or int8, optionally
 * recording each site's max |input|), and running its `predict` (calibration) and `eval`
 * (accuracy) commands: the training binary's own data loaders, metrics and thread pool, and
 * nothing for nnc to link or interpret. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp */
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nnc.h"

const Graph *quant_forward_graph(const Unit *u) { return u->infer ? u->infer : u->train; }

/* The weight parameter of a matmul or convolution that can be an int8 site, else -1. */
static int site_param(const Node *n) {
  const Node *w = n->src[1];
  if (n->op == OP_MATMUL && w->op == OP_PARAM && w->shape.rank == 2 && !n->attr.ta)
    return w->attr.index;
  if (n->op == OP_CONV2D && w->op == OP_PARAM) return w->attr.index;
  return -1;
}

Quant *quant_new(const Unit *u, const double *w, QuantMode mode) {
  const Graph *g = quant_forward_graph(u);
  Quant *q = xalloc(sizeof *q);
  q->mode = mode;
  q->weights = w;
  q->sites = xalloc(sizeof *q->sites * ((size_t)g->n_nodes + 1));
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *n = g->nodes[i];
    int p = site_param(n);
    if (p < 0) continue;
    Shape ws = u->params[p].shape; /* [K, N] or [kh, kw, C, N]: row-major (K, N); or [N, K] */
    QuantSite *s = &q->sites[q->n_sites++];
    s->node = n;
    s->param = p;
    s->transposed = n->op == OP_MATMUL && n->attr.tb;
    s->n = s->transposed ? ws.dim[0] : ws.dim[ws.rank - 1];
    s->k = shape_elems(ws, 1) / (s->n ? s->n : 1);
    s->kp = (s->k + 3) / 4 * 4;
    s->np = (s->n + 15) / 16 * 16;
  }
  return q;
}

const QuantSite *quant_site(const Quant *q, const Node *n) {
  for (int i = 0; q && i < q->n_sites; i++)
    if (q->sites[i].node == n) return &q->sites[i];
  return NULL;
}

static double scale_of(double absmax) { return absmax > 0 ? absmax / 127 : 1; }

void quant_finish(const Unit *u, Quant *q) {
  for (int i = 0; i < q->n_sites; i++) {
    QuantSite *s = &q->sites[i];
    const double *w = q->weights + u->params[s->param].offset; /* (k, n), or (n, k) */
    int64_t ks = s->transposed ? 1 : s->n, js = s->transposed ? s->k : 1; /* W[k, j]'s strides */
    double x_scale = scale_of(s->absmax);
    s->qw = xalloc((size_t)(s->np * s->kp));
    s->colsum = xalloc(sizeof *s->colsum * (size_t)s->np);
    s->out_scale = xalloc(sizeof *s->out_scale * (size_t)s->np);
    s->inv_x_scale = (float)(1 / x_scale);
    for (int64_t j = 0; j < s->n; j++) {
      double amax = 0;
      for (int64_t k = 0; k < s->k; k++) amax = fmax(amax, fabs(w[k * ks + j * js]));
      double w_scale = scale_of(amax);
      for (int64_t k = 0; k < s->k; k++) {
        double v = fmin(127, fmax(-127, nearbyint(w[k * ks + j * js] / w_scale)));
        s->qw[(k / 4 * s->np + j) * 4 + k % 4] = (int8_t)v;
        s->colsum[j] += (int32_t)v;
      }
      s->out_scale[j] = (float)(x_scale * w_scale);
    }
  }
}

/* ---- helper builds of the training binary ---- */

static char *temp_dir(void) {
  char *dir = xstrdup("/tmp/nnc-quant-XXXXXX");
  if (!mkdtemp(dir)) {
    fprintf(stderr, "nnc: error: cannot create a temporary folder in /tmp\n");
    return NULL;
  }
  return dir;
}

static void remove_temp(const char *dir, const char *const *files, int n) {
  for (int i = 0; i < n; i++) unlink(xprintf("%s/%s", dir, files[i]));
  rmdir(dir);
}

/* The training binary with forward and eval as `quant` says (NULL: from the parameters). */
static bool build_helper(const Unit *u, const Options *o, const Quant *quant, const char *dir,
                         const char *exe) {
  Options h = *o;
  h.embed = NULL;
  h.quant = quant;
  const char *obj = xprintf("%s/model.o", dir);
  bool ok = lower_llvm(u, &h, EMIT_OBJ, obj) && link_executable(obj, exe);
  unlink(obj);
  return ok;
}

/* The whole of a small text file, or NULL. */
static char *slurp(const char *path) {
  SourceFile *f = diag_load(path);
  return f ? (char *)f->text : NULL;
}

/* A data set of the train block, by name; or NULL. */
static const DataSpec *declared(const Unit *u, const char *name) {
  const DataSpec *sets[2] = {&u->data, &u->val};
  for (int i = 0; i < 2; i++)
    if (sets[i]->kind != NN_DATA_NONE && sets[i]->name && !strcmp(sets[i]->name, name))
      return sets[i];
  return NULL;
}

bool quant_calibrate(const Unit *u, const Options *o, Quant *q, const char *data) {
  const DataSpec *set = declared(u, data);
  if (set && !set->path) {
    fprintf(stderr, "nnc: error: --calibrate: data set '%s' is a table in the .nn file; HINT: "
                    "give its inputs as a CSV file\n", data);
    return false;
  }
  const char *inputs = set ? set->path : NULL;
  if (!inputs && access(data, R_OK) != 0) {
    fprintf(stderr, "nnc: error: --calibrate '%s' is neither a data set of the .nn file's train "
                    "block nor a readable file", data);
    if (u->data.kind != NN_DATA_NONE && u->data.name) fprintf(stderr, " (it uses '%s'%s%s%s)",
        u->data.name, u->val.kind != NN_DATA_NONE ? " and '" : "",
        u->val.kind != NN_DATA_NONE ? u->val.name : "", u->val.kind != NN_DATA_NONE ? "'" : "");
    fprintf(stderr, "\n");
    return false;
  }
  if (!inputs) inputs = data;
  char *dir = temp_dir();
  if (!dir) return false;
  const char *files[] = {xprintf("%s-calibrate", u->model), "calibrate.txt"};
  const char *exe = xprintf("%s/%s", dir, files[0]), *txt = xprintf("%s/%s", dir, files[1]);
  Quant cal = *q;
  cal.mode = QUANT_CALIBRATE;
  char *argv[] = {(char *)exe, "predict", "--load", (char *)o->weights, "--input",
                  (char *)inputs, "-o", "/dev/null", "--quiet", NULL};
  bool ok = build_helper(u, o, &cal, dir, exe) && link_run_to_file(argv, txt);
  char *text = ok ? slurp(txt) : NULL;
  int seen = 0;
  for (char *line = text; line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
    int site;
    double absmax;
    if (sscanf(line, "calibration: site %d absmax %lf", &site, &absmax) == 2 && site >= 0 &&
        site < q->n_sites)
      q->sites[site].absmax = absmax, seen++;
  }
  if (ok && seen != q->n_sites) {
    fprintf(stderr, "nnc: error: the calibration run reported %d of %d sites (from '%s')\n",
            seen, q->n_sites, inputs);
    ok = false;
  }
  remove_temp(dir, files, 2);
  return ok;
}

/* What `eval` printed: "eval: loss L  accuracy A% (h/t)" and "metrics: WHAT, N samples". */
typedef struct Score {
  double loss, accuracy; /* accuracy < 0: none (regression) */
  char what[200];
} Score;

/* exe eval on the held-out data; the helper builds of a variant ignore the loaded weights
 * (their forward and eval read baked ones), which the command wants all the same. */
static bool run_eval(const Options *o, const char *exe, const char *txt, Score *s) {
  char *argv[12];
  int n = 0;
  argv[n++] = (char *)exe, argv[n++] = "eval", argv[n++] = "--quiet";
  argv[n++] = "--load", argv[n++] = (char *)o->weights;
  if (o->eval_data) argv[n++] = "--data", argv[n++] = (char *)o->eval_data;
  if (o->eval_labels) argv[n++] = "--labels", argv[n++] = (char *)o->eval_labels;
  argv[n] = NULL;
  if (!link_run_to_file(argv, txt)) return false;
  char *text = slurp(txt), *m = text ? strstr(text, "metrics: ") : NULL;
  s->accuracy = -1;
  if (!text || sscanf(text, "eval: loss %lf", &s->loss) != 1 || !m) {
    fprintf(stderr, "nnc: error: cannot read the evaluation's output ('%s')\n", txt);
    return false;
  }
  char *acc = strstr(text, "accuracy ");
  if (acc && acc < m) sscanf(acc, "accuracy %lf", &s->accuracy);
  m += strlen("metrics: ");
  size_t len = strcspn(m, ";\n");
  snprintf(s->what, sizeof s->what, "%.*s", (int)len, m);
  return true;
}

bool quant_report(const Unit *u, const Options *o, const Quant *variant, const char *what) {
  if (!u->has_train) {
    printf("no accuracy report: the .nn file has no train block to name held-out data\n");
    return true;
  }
  char *dir = temp_dir();
  if (!dir) return false;
  char *tag = xprintf("%s-%s", u->model, what); /* names the helpers' messages */
  for (char *c = tag; *c; c++)
    if (*c == ' ') *c = '-';
  const char *files[] = {u->model, tag, "eval.txt"};
  const char *f32 = xprintf("%s/%s", dir, files[0]), *var = xprintf("%s/%s", dir, files[1]);
  const char *txt = xprintf("%s/%s", dir, files[2]);
  Score a, b;
  bool ok = build_helper(u, o, NULL, dir, f32) && run_eval(o, f32, txt, &a) &&
            build_helper(u, o, variant, dir, var) && run_eval(o, var, txt, &b);
  if (ok && a.accuracy >= 0)
    printf("accuracy on %s: f32 %.2f%%, %s %.2f%% (%+.2f points); loss %.4f -> %.4f\n", a.what,
           a.accuracy, what, b.accuracy, b.accuracy - a.accuracy, a.loss, b.loss);
  else if (ok)
    printf("loss on %s: f32 %.6g, %s %.6g (%+.2f%%)\n", a.what, a.loss, what, b.loss,
           a.loss != 0 ? 100 * (b.loss - a.loss) / fabs(a.loss) : 0.0);
  remove_temp(dir, files, 3);
  return ok;
}
