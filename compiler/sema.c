/* sema.c — semantic analysis: AST → IR.
 *
 * Takes the user's program and the prelude, resolves names, checks types and per-sample
 * shapes, and inlines every layer, fn, model and optimizer call into IR graphs: `train`
 * (x, y → model output and loss) and `update` (one optimizer step for every parameter).
 * Values a user writes are per sample; the IR carries the batch as dim 0 (DIM_BATCH), so a
 * per-sample [2] is f32[B,2] in the graph, and parameters are never batched. Errors are
 * reported at the offending source location and evaluation goes on with a poison value, so
 * one run reports several independent errors. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* realpath */
#endif
#include "nnc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- values ---- */

typedef enum VKind {
  V_ERROR,  /* an error was already reported: stay quiet */
  V_TENSOR, /* an IR node */
  V_NUM,    /* a number known at compile time */
  V_STR,    /* a string */
  V_LIST,   /* [n, ...]: numbers, only as a built-in function's argument (reshape dims) */
} VKind;

typedef struct Value {
  VKind kind; /* what the value is */
  Node *node; /* V_TENSOR */
  double num; /* V_NUM */
  const char *str; /* V_STR */
  const double *nums; int len; /* V_LIST: the numbers */
} Value;

static const Value ERR = {V_ERROR};
static Value tensor(Node *n) { return n ? (Value){V_TENSOR, .node = n} : ERR; }
static Value number(double v) { return (Value){V_NUM, .num = v}; }

/* ---- scopes ---- */

typedef struct Binding {
  const char *name;
  Value value;
  struct Binding *next;
} Binding;

typedef struct Counter { /* instances of a layer made so far in one scope, for param names */
  const char *layer;
  int count;
  struct Counter *next;
} Counter;

/* One inlined body: its local names, its parameter-name prefix and its layer counters. */
typedef struct Frame {
  Binding *locals;
  const char *prefix;   /* "" at model level, "block0." inside a layer called from a model */
  Counter *counters;
  const Ast *def;       /* the definition being inlined (for recursion checks), or NULL */
  Loc call;             /* where it was called from (file NULL for a model or optimizer) */
  uint32_t site;        /* hash of the call sites from the model down to here (random salts) */
  struct Buffer *buffers; /* the layer's `state` declarations, whose last value is kept */
  struct Frame *parent; /* the caller, for recursion checks only: names are not inherited */
  enum { IN_MODEL, IN_LAYER, IN_FN, IN_OPTIMIZER, IN_TRAIN } where;
} Frame;

typedef struct Buffer { /* a layer's `state name: [dims]`: a parameter the optimizer skips */
  const char *name;     /* its local name */
  int index;            /* in Unit.params */
  Loc loc;              /* its declaration */
  struct Buffer *next;
} Buffer;

typedef struct Def { /* a top-level definition */
  const char *name;
  const Ast *ast;
  struct Def *next;
} Def;

typedef struct Sema {
  Unit *u;
  Def *defs;
  Builder b;             /* the graph being built */
  int depth;             /* inlining depth, bounded so runaway recursion is an error */
  Loc required_at;       /* where a failed `require` was reported: no note repeats it */
  /* the optimizer being inlined for one parameter */
  int param_index;       /* the parameter it updates */
  Node *param_new;       /* the parameter's new value, when `param -= ...` has run */
  int n_states;
  uint32_t site;         /* the frame's `site` while a built-in function runs */
  /* training and inference mode: the model is built once in each */
  bool training;         /* the value of `training` in the graph being built */
  bool reads_mode;       /* some code read `training`: the two modes differ */
  Node **buffer_next;    /* by parameter index: a buffer's value after the training step */
  const Ast **param_model; /* by parameter index: the model whose call made it */
  const Ast *model;      /* the model being inlined, or NULL */
  bool several_models;   /* a train block with steps: a model's parameters are named
                            "model.dense0.W", so that two models' layers do not collide */
} Sema;

/* FNV-1a over a call site's position, continuing the hash h of its caller's path. Not the
 * file's path, which would make the numbers depend on where the file is; only whether it is
 * the prelude. */
static uint32_t site_hash(uint32_t h, Loc loc) {
  bool prelude = loc.file && !strcmp(loc.file->path, "std.nn");
  int64_t v[3] = {loc.line, loc.col, prelude};
  const unsigned char *p = (const unsigned char *)v;
  for (size_t i = 0; i < sizeof v; i++) h = (h ^ p[i]) * 16777619u;
  return h;
}

static Value eval(Sema *s, Frame *f, const Ast *e);
static Value call_def(Sema *s, Frame *f, const Ast *def, const Ast *call);

static void bind(Frame *f, const char *name, Value v) {
  for (Binding *b = f->locals; b; b = b->next)
    if (!strcmp(b->name, name)) {
      b->value = v;
      return;
    }
  Binding *b = xalloc(sizeof *b);
  b->name = name, b->value = v, b->next = f->locals;
  f->locals = b;
}

static Binding *lookup_local(Frame *f, const char *name) {
  for (Binding *b = f->locals; b; b = b->next)
    if (!strcmp(b->name, name)) return b;
  return NULL;
}

static const Ast *lookup_def(Sema *s, const char *name) {
  for (Def *d = s->defs; d; d = d->next)
    if (!strcmp(d->name, name)) return d->ast;
  return NULL;
}

static const char *builtin_name(int i); /* NULL past the last */

/* Reports an unknown name, with the closest known name as a suggestion. */
static void unknown_name(Sema *s, Frame *f, Loc loc, const char *what, const char *name) {
  const char *cands[256];
  int n = 0;
  for (Binding *b = f ? f->locals : NULL; b && n < 256; b = b->next) cands[n++] = b->name;
  for (Def *d = s->defs; d && n < 256; d = d->next) cands[n++] = d->name;
  for (int i = 0; builtin_name(i) && n < 256; i++) cands[n++] = builtin_name(i);
  const char *close = diag_did_you_mean(name, cands, n);
  if (close)
    diag_error(loc, "unknown %s '%s'; did you mean '%s'?", what, name, close);
  else
    diag_error(loc, "unknown %s '%s'", what, name);
}

static const char *def_kind(const Ast *d) {
  switch (d->kind) {
  case AST_MODEL: return "model";
  case AST_LAYER: return "layer";
  case AST_FN: return "fn";
  case AST_OPTIMIZER: return "optimizer";
  case AST_DATA: return "data set";
  default: return "definition";
  }
}

/* ---- tensors ---- */

static bool batched(const Node *n) { return n->shape.rank > 0 && n->shape.dim[0] < 0; }
static int sample_rank(const Node *n) { return n->shape.rank - batched(n); }

/* Shape of one sample of a per-sample value, with the batch dim put back. */
static Shape batch_of(Shape per_sample) {
  Shape s = {.rank = per_sample.rank + 1, .dim = {DIM_BATCH}};
  for (int i = 0; i < per_sample.rank; i++) s.dim[i + 1] = per_sample.dim[i];
  return s;
}

static Node *as_node(Sema *s, Value v) {
  return v.kind == V_NUM ? ir_const(&s->b, v.num) : v.kind == V_TENSOR ? v.node : NULL;
}

/* A batched value meeting a value of higher per-sample rank: per sample, [3] + [2,3] is [2,3],
 * so the batched value gets ones after its batch dim to line up under numpy broadcasting. */
static Node *lift_batched(Sema *s, Node *x, const Node *other) {
  int pad = sample_rank(other) - sample_rank(x);
  if (!batched(x) || pad <= 0) return x;
  Shape t = {.rank = x->shape.rank + pad, .dim = {x->shape.dim[0]}};
  for (int i = 1; i < t.rank; i++) t.dim[i] = i <= pad ? 1 : x->shape.dim[i - pad];
  return ir_reshape(&s->b, x, t);
}

static Value binary(Sema *s, OpKind op, Value x, Value y) {
  if (x.kind == V_ERROR || y.kind == V_ERROR) return ERR;
  Node *a = as_node(s, x), *c = as_node(s, y);
  if (!a || !c) return ERR;
  a = lift_batched(s, a, c), c = lift_batched(s, c, a);
  return tensor(ir_binary(&s->b, op, a, c));
}

static Node *to_batched(Sema *s, Node *x);

/* Per-sample matrix product: vectors act as a row (left) or a column (right), as in numpy.
 * Stacks of matrices ([h, t, d] @ [h, d, t]) multiply pairwise and must agree in their
 * leading dims; a plain matrix on the right is shared by all of the left's leading dims. */
static Value matmul(Sema *s, Value x, Value y, Loc loc) {
  if (x.kind == V_ERROR || y.kind == V_ERROR) return ERR;
  if (x.kind != V_TENSOR || y.kind != V_TENSOR) {
    diag_error(loc, "'@' needs two tensors");
    return ERR;
  }
  Node *a = x.node, *c = y.node;
  int ra = sample_rank(a), rc = sample_rank(c);
  if (ra < 1 || rc < 1 || (rc > 2 && ra != rc)) {
    diag_error(loc, "cannot multiply %s and %s: '@' takes vectors, matrices, or stacks of "
               "matrices of the same rank", shape_str(a->shape, true), shape_str(c->shape, true));
    return ERR;
  }
  int64_t ka = a->shape.dim[a->shape.rank - 1];
  int64_t kc = c->shape.dim[c->shape.rank - (rc == 1 ? 1 : 2)];
  if (ka != kc) {
    diag_error(loc, "cannot multiply %s and %s: inner dimensions %lld and %lld differ",
               shape_str(a->shape, true), shape_str(c->shape, true), (long long)ka,
               (long long)kc);
    return ERR;
  }
  for (int i = 0; rc > 2 && i < ra - 2; i++)
    if (a->shape.dim[a->shape.rank - ra + i] != c->shape.dim[c->shape.rank - rc + i]) {
      diag_error(loc, "cannot multiply %s and %s: leading dimensions differ",
                 shape_str(a->shape, true), shape_str(c->shape, true));
      return ERR;
    }
  Builder *b = &s->b;
  /* the common case, a batch of vectors times a weight matrix, is one plain matmul */
  if (batched(a) && ra == 1 && !batched(c) && rc == 2) return tensor(ir_matmul(b, a, c, 0, 0));
  Shape as = a->shape, cs = c->shape;
  if (ra == 1) { /* [k] -> [1, k] */
    Shape t = as;
    t.rank++, t.dim[t.rank - 1] = ka, t.dim[t.rank - 2] = 1;
    a = ir_reshape(b, a, t);
  }
  if (rc == 1) { /* [k] -> [k, 1] */
    Shape t = cs;
    t.rank++, t.dim[t.rank - 1] = 1;
    c = ir_reshape(b, c, t);
  }
  /* matmul pairs leading dims one to one, or shares a plain matrix on the right */
  if (c->shape.rank > 2 || batched(c)) {
    if (batched(a) != batched(c)) a = to_batched(s, a), c = to_batched(s, c);
    if (!a || !c) return ERR;
    if (a->shape.rank != c->shape.rank) { /* a batched vector times a stack, or the reverse */
      diag_error(loc, "cannot multiply %s and %s: their ranks differ",
                 shape_str(x.node->shape, true), shape_str(y.node->shape, true));
      return ERR;
    }
  }
  Node *r = ir_matmul(b, a, c, 0, 0);
  if (!r) return ERR;
  Shape rs = {0}; /* drop the dims the vectors were given: n for a column, m for a row */
  for (int i = 0, last = r->shape.rank - 1; i <= last; i++)
    if (!(i == last && rc == 1) && !(i == last - 1 && ra == 1)) rs.dim[rs.rank++] = r->shape.dim[i];
  return tensor(ir_reshape(b, r, rs));
}

/* sum/mean over the per-sample axes (all of them, or `axis`), dropping them. */
static Value reduce(Sema *s, Value x, const Value *axis, bool mean, bool max, Loc loc) {
  if (x.kind == V_ERROR) return ERR;
  if (x.kind == V_NUM) return x;
  if (x.kind != V_TENSOR) {
    diag_error(loc, "expected a tensor");
    return ERR;
  }
  Node *n = x.node;
  int first = batched(n), rank = sample_rank(n);
  unsigned axes = 0;
  if (axis) {
    if (axis->kind != V_NUM || axis->num != floor(axis->num) || axis->num < -rank ||
        axis->num >= rank) {
      diag_error(loc, "axis must be an integer in [%d, %d) for %s", -rank, rank,
                 shape_str(n->shape, true));
      return ERR;
    }
    int ax = (int)axis->num;
    axes = 1u << (first + (ax < 0 ? ax + rank : ax));
  } else {
    for (int i = first; i < n->shape.rank; i++) axes |= 1u << i;
  }
  if (!axes) return x; /* a per-sample scalar already */
  Builder *b = &s->b;
  Node *r = ir_reduce(b, max ? OP_RMAX : OP_SUM, n, axes);
  int64_t count = 1;
  Shape kept = {0};
  for (int i = 0; i < n->shape.rank; i++)
    if (axes >> i & 1) count *= n->shape.dim[i];
    else kept.dim[kept.rank++] = n->shape.dim[i];
  r = ir_reshape(b, r, kept);
  if (mean && count > 1) r = ir_div(b, r, ir_const(b, (double)count));
  return tensor(r);
}

/* ---- calls ---- */

typedef struct Args { /* a call's arguments, evaluated, positional then keyword */
  int n;
  const Ast *ast[16];
  const char *kw[16]; /* NULL for positional */
  Value v[16];
} Args;

/* A list argument [a, b, ...] of numbers; NULL after an error. */
static const double *eval_list(Sema *s, Frame *f, const Ast *list) {
  double *v = xalloc((list->kids.len + 1) * sizeof *v);
  for (int i = 0; i < list->kids.len; i++) {
    Value x = eval(s, f, list->kids.items[i]);
    if (x.kind == V_ERROR) return NULL;
    if (x.kind != V_NUM) {
      diag_error(list->kids.items[i]->loc, "a list element must be a number");
      return NULL;
    }
    v[i] = x.num;
  }
  return v;
}

/* `lists`: a [..] argument becomes a V_LIST (built-in functions take them); elsewhere it is
 * an error. */
static bool eval_args(Sema *s, Frame *f, const Ast *call, Args *args, bool lists) {
  args->n = 0;
  bool seen_kw = false;
  for (int i = 0; i < call->kids.len; i++) {
    const Ast *a = call->kids.items[i];
    if (args->n == 16) {
      diag_error(a->loc, "too many arguments");
      return false;
    }
    bool kw = a->kind == AST_KWARG;
    if (!kw && seen_kw) {
      diag_error(a->loc, "positional argument after a keyword argument");
      return false;
    }
    seen_kw |= kw;
    args->ast[args->n] = a;
    args->kw[args->n] = kw ? a->name : NULL;
    const Ast *e = kw ? a->a : a;
    if (lists && e->kind == AST_LIST) {
      const double *nums = eval_list(s, f, e);
      args->v[args->n] = nums ? (Value){V_LIST, .nums = nums, .len = e->kids.len} : ERR;
    } else {
      args->v[args->n] = eval(s, f, e);
    }
    args->n++;
  }
  return true;
}

static double fold_unary(OpKind op, double v) {
  switch (op) {
  case OP_EXP: return exp(v);
  case OP_LOG: return log(v);
  case OP_SQRT: return sqrt(v);
  case OP_TANH: return tanh(v);
  case OP_SIGMOID: return 1 / (1 + exp(-v));
  case OP_ABS: return fabs(v);
  case OP_SIGN: return (v > 0) - (v < 0);
  case OP_FLOOR: return floor(v);
  case OP_SIN: return sin(v);
  case OP_COS: return cos(v);
  default: unreachable();
  }
}

static Value negate(Sema *s, Value x) {
  if (x.kind == V_NUM) return number(-x.num);
  if (x.kind != V_TENSOR) return x;
  return tensor(ir_unary(&s->b, OP_NEG, x.node));
}

static Value unary(Sema *s, OpKind op, Value x) {
  if (x.kind == V_NUM) return number(fold_unary(op, x.num));
  if (x.kind != V_TENSOR) return ERR;
  return tensor(ir_unary(&s->b, op, x.node));
}

/* ---- built-in functions: each is one primitive op or a short composition of them ---- */

/* The keyword argument `name`, or NULL. */
static const Value *kwarg(const Args *a, const char *name) {
  for (int i = 0; i < a->n; i++)
    if (a->kw[i] && !strcmp(a->kw[i], name)) return &a->v[i];
  return NULL;
}

typedef struct Builtin {
  const char *name;
  int min_args, max_args;        /* positional arguments */
  const char *keywords[4];       /* keyword arguments it accepts */
  OpKind op;                     /* the primitive, for the generic handlers */
  /* Called with the arity and keywords checked and no argument in error. */
  Value (*call)(Sema *s, const struct Builtin *bi, const Ast *call, const Args *a);
} Builtin;

#define BUILTIN(name) \
  static Value name(Sema *s, const Builtin *bi, const Ast *call, const Args *a)

/* exp(x), log(x), ...: elementwise, folded for numbers */
BUILTIN(call_unary) {
  (void)call;
  return unary(s, bi->op, a->v[0]);
}

/* keepdims = 1: the reduction r of x keeps its reduced axes as 1 (so that it broadcasts
 * against x, as softmax needs) */
static Value keep_dims(Sema *s, const Args *a, Value x, Value r) {
  const Value *keep = kwarg(a, "keepdims"), *axis = kwarg(a, "axis");
  if (!keep || keep->kind != V_NUM || !keep->num || x.kind != V_TENSOR || r.kind != V_TENSOR)
    return r;
  Shape k = x.node->shape;
  int first = batched(x.node), rank = sample_rank(x.node);
  for (int i = first; i < k.rank; i++)
    if (!axis || i - first == ((int)axis->num + rank) % rank) k.dim[i] = 1;
  return tensor(ir_reshape(&s->b, r.node, k));
}

/* max(a, b), min(a, b), pow(a, b): elementwise with broadcasting; max(x)/min(x) reduce */
BUILTIN(call_binary) {
  const Value *axis = kwarg(a, "axis");
  bool positional2 = a->n - (axis != NULL) - (kwarg(a, "keepdims") != NULL) == 2;
  if (!positional2 && bi->op != OP_POW) { /* min(x) = -max(-x) */
    bool is_min = bi->op == OP_MIN;
    Value r = reduce(s, is_min ? negate(s, a->v[0]) : a->v[0], axis, false, true, call->loc);
    return keep_dims(s, a, a->v[0], is_min ? negate(s, r) : r);
  }
  if (axis || kwarg(a, "keepdims")) {
    diag_error(call->loc, "'%s' of two values takes no axis", bi->name);
    return ERR;
  }
  if (a->v[0].kind == V_NUM && a->v[1].kind == V_NUM) {
    double x = a->v[0].num, y = a->v[1].num;
    return number(bi->op == OP_MAX ? fmax(x, y) : bi->op == OP_MIN ? fmin(x, y) : pow(x, y));
  }
  s->b.loc = call->loc;
  return binary(s, bi->op, a->v[0], a->v[1]);
}

/* sum(x), mean(x), optionally over one axis */
BUILTIN(call_reduce) {
  Value r = reduce(s, a->v[0], kwarg(a, "axis"), !strcmp(bi->name, "mean"), false, call->loc);
  return keep_dims(s, a, a->v[0], r);
}

BUILTIN(call_matmul) {
  (void)bi;
  return matmul(s, a->v[0], a->v[1], call->loc);
}

/* ---- movement and indexing builtins: reshape, flatten, transpose, permute, slice, pad,
 * concat, where, gather, scatter_add, one_hot. Axes are per-sample (the batch dim is never
 * named) and may be negative, counting from the last. ---- */

/* Positional argument i as a tensor (numbers are not accepted), or NULL after an error. */
static Node *tensor_arg(const Builtin *bi, const Ast *call, const Args *a, int i) {
  if (a->v[i].kind == V_TENSOR) return a->v[i].node;
  diag_error(a->n > i ? a->ast[i]->loc : call->loc, "'%s' needs a tensor%s", bi->name,
             i ? " here" : "");
  return NULL;
}

/* A per-sample shape back in the IR: batched values keep their batch dim in front. */
static Shape shape_like(const Node *x, Shape per_sample) {
  return batched(x) ? batch_of(per_sample) : per_sample;
}

/* x's per-sample shape (the batch dim left out). */
static Shape sample_shape(const Node *x) {
  Shape s = {.rank = sample_rank(x)};
  for (int i = 0; i < s.rank; i++) s.dim[i] = x->shape.dim[i + batched(x)];
  return s;
}

static const char *list_str(const double *v, int n) {
  char *r = "[";
  for (int i = 0; i < n; i++) r = xprintf("%s%s%g", r, i ? "," : "", v[i]);
  return xprintf("%s]", r);
}

/* reshape(x, [dims]): the same per-sample elements in a new shape; one dim may be -1 */
BUILTIN(call_reshape) {
  Node *x = tensor_arg(bi, call, a, 0);
  if (!x) return ERR;
  if (a->v[1].kind != V_LIST) {
    diag_error(a->ast[1]->loc, "reshape takes its new shape as a list, like [4, -1]");
    return ERR;
  }
  Shape from = sample_shape(x), to = {.rank = a->v[1].len};
  int64_t known = 1, elems = shape_elems(from, 1);
  int infer = -1;
  bool ok = to.rank <= MAX_RANK - 1;
  for (int i = 0; ok && i < to.rank; i++) {
    double d = a->v[1].nums[i];
    if (d == -1 && infer < 0) {
      infer = i;
      continue;
    }
    ok = d >= 1 && d == floor(d) && d <= (double)elems; /* so known cannot overflow */
    to.dim[i] = ok ? (int64_t)d : 1;
    known *= to.dim[i];
    ok &= known <= elems;
  }
  if (ok && infer >= 0) {
    ok = elems % known == 0;
    to.dim[infer] = elems / known;
  }
  if (!ok || shape_elems(to, 1) != elems) {
    diag_error(call->loc, "cannot reshape %s to %s%s", shape_str(x->shape, true),
               list_str(a->v[1].nums, a->v[1].len),
               to.rank > MAX_RANK - 1 ? xprintf(": at most %d axes", MAX_RANK - 1) : "");
    return ERR;
  }
  s->b.loc = call->loc;
  return tensor(ir_reshape(&s->b, x, shape_like(x, to)));
}

/* flatten(x): the per-sample elements as one vector */
BUILTIN(call_flatten) {
  Node *x = tensor_arg(bi, call, a, 0);
  if (!x) return ERR;
  s->b.loc = call->loc;
  Shape flat = shape_of(1, (int)shape_elems(sample_shape(x), 1));
  return tensor(ir_reshape(&s->b, x, shape_like(x, flat)));
}

/* The built-ins whose positional argument i may be a list [..]. */
static bool takes_list(const Builtin *bi, int i) {
  if (i == 0)
    return bi->op == OP_RAND_UNIFORM || bi->op == OP_RAND_NORMAL || !strcmp(bi->name, "iota") ||
           !strcmp(bi->name, "zeros");
  return i == 1 && (!strcmp(bi->name, "reshape") || !strcmp(bi->name, "permute"));
}

/* ---- random numbers: uniform(shape, lo = 0, hi = 1), normal(shape, mean = 0, std = 1),
 * bernoulli(shape, p = 0.5). `shape` is a per-sample list [dims] (so every sample of a batch
 * draws its own) or a tensor whose shape, batched or not, the result takes. Each call site
 * draws new numbers at every training step, reproducibly from the seed (RAND_* in ops.def);
 * nothing is differentiated through them. ---- */
BUILTIN(call_random) {
  Value v = a->v[0];
  Shape shape = {0};
  bool ok = v.kind == V_TENSOR || (v.kind == V_LIST && v.len < MAX_RANK);
  if (v.kind == V_TENSOR) shape = v.node->shape;
  for (int i = 0; ok && v.kind == V_LIST && i < v.len; i++) {
    ok = v.nums[i] >= 1 && v.nums[i] == floor(v.nums[i]) && v.nums[i] <= 1e9;
    shape.dim[shape.rank++] = (int64_t)v.nums[i];
  }
  if (!ok) {
    diag_error(a->ast[0]->loc, "'%s' takes a per-sample shape, like [4, 2] (at most %d "
               "positive integers), or a tensor to take the shape of", bi->name, MAX_RANK - 1);
    return ERR;
  }
  if (v.kind == V_LIST) shape = batch_of(shape);
  bool normal = !strcmp(bi->name, "normal"), bern = !strcmp(bi->name, "bernoulli");
  const Value *lo = kwarg(a, bern ? "p" : normal ? "mean" : "lo"),
              *hi = kwarg(a, normal ? "std" : "hi");
  Value zero = number(0), one = number(1), half = number(0.5);
  s->b.loc = call->loc;
  /* the salt names the call site by its path from the model, so a model evaluated twice on
   * the same input draws the same numbers (and the two evaluations are one, hash-consed),
   * while each layer or fn call inside it draws its own */
  int salt = (int)(site_hash(s->site, call->loc) & 0x7fffffff);
  Value r = tensor(ir_random(&s->b, bi->op, shape, salt));
  if (bern) /* 1 with probability p: u < p */
    return binary(s, OP_CMPGT, lo ? *lo : half, r);
  Value base = lo ? *lo : zero, width = hi ? *hi : one;
  if (!normal) /* lo + (hi - lo) * u */
    width = width.kind == V_NUM && base.kind == V_NUM ? number(width.num - base.num)
                                                      : binary(s, OP_SUB, width, base);
  if (width.kind != V_NUM || width.num != 1) r = binary(s, OP_MUL, r, width);
  if (base.kind != V_NUM || base.num != 0) r = binary(s, OP_ADD, r, base);
  return r;
}

/* zeros([dims]): a constant tensor of zeros, the same for every sample (an initial state). */
BUILTIN(call_zeros) {
  Shape to = {.rank = a->v[0].kind == V_LIST ? a->v[0].len : -1};
  bool ok = to.rank >= 0 && to.rank <= MAX_RANK - 1;
  for (int i = 0; ok && i < to.rank; i++) {
    double d = a->v[0].nums[i];
    ok = d >= 1 && d == floor(d) && d <= 1 << 30;
    to.dim[i] = ok ? (int64_t)d : 1;
  }
  if (!ok) {
    diag_error(a->ast[0]->loc, "'%s' takes a shape: a list of positive integers, like [4, 8]",
               bi->name);
    return ERR;
  }
  s->b.loc = call->loc;
  return tensor(ir_expand(&s->b, ir_const(&s->b, 0), to));
}

/* ---- convolution and pooling builtins: conv2d_op, conv2d_transpose_op, maxpool, avgpool,
 * upsample. Images are per-sample [h, w, c] (NHWC with the batch); filters are plain
 * [kh, kw, c, filters] tensors (parameters). ---- */

/* Positional argument 0 as a batch of images, or NULL after an error. */
static Node *image_arg(const Builtin *bi, const Ast *call, const Args *a) {
  Node *x = tensor_arg(bi, call, a, 0);
  if (x && (!batched(x) || sample_rank(x) != 3)) {
    diag_error(a->ast[0]->loc, "'%s' takes per-sample images [h, w, c], got %s%s", bi->name,
               shape_str(x->shape, true), batched(x) ? "" : " (not per sample)");
    return NULL;
  }
  return x;
}

/* A positive integer argument (size, stride, dilation, factor); v may be NULL for `def`. */
static bool count_arg(const Builtin *bi, const Ast *at, const Value *v, const char *what,
                      int def, int *out) {
  *out = def;
  if (!v) return true;
  if (v->kind != V_NUM || v->num < 1 || v->num != floor(v->num) || v->num > 1 << 20) {
    diag_error(at->loc, "%s of '%s' must be a positive integer", what, bi->name);
    return false;
  }
  *out = (int)v->num;
  return true;
}

/* The source of keyword argument `name` (for error locations), or the call. */
static const Ast *kwarg_ast(const Ast *call, const Args *a, const char *name) {
  for (int i = 0; i < a->n; i++)
    if (a->kw[i] && !strcmp(a->kw[i], name)) return a->ast[i];
  return call;
}

/* The padding of one axis: none for "valid"; for "same" (TensorFlow's rule) enough that
 * out = ceil(in / stride), split evenly with the odd element after. */
static void same_padding(int64_t in, int k, int s, int d, int *before, int *after) {
  int64_t out = (in + s - 1) / s, span = (int64_t)d * (k - 1) + 1;
  int64_t total = (out - 1) * s + span - in;
  if (total < 0) total = 0;
  *before = (int)(total / 2), *after = (int)(total - total / 2);
}

/* The stride, dilation and padding keywords of a window builtin. */
typedef struct WindowOpts {
  int stride, dilation;
  bool same; /* padding = "same" (else "valid") */
} WindowOpts;

static bool window_opts(const Builtin *bi, const Ast *call, const Args *a, int def_stride,
                        const char *def_padding, WindowOpts *o) {
  if (!count_arg(bi, kwarg_ast(call, a, "stride"), kwarg(a, "stride"), "stride", def_stride,
                 &o->stride) ||
      !count_arg(bi, kwarg_ast(call, a, "dilation"), kwarg(a, "dilation"), "dilation", 1,
                 &o->dilation))
    return false;
  const Value *pad = kwarg(a, "padding");
  const char *mode = !pad ? def_padding : pad->kind == V_STR ? pad->str : "";
  o->same = !strcmp(mode, "same");
  if (!o->same && strcmp(mode, "valid")) {
    diag_error(kwarg_ast(call, a, "padding")->loc,
               "padding of '%s' must be \"same\" or \"valid\"", bi->name);
    return false;
  }
  return true;
}

/* Sets c's stride, dilation and padding (its window is set) for an image of h x w. */
static void set_window(ConvAttr *c, WindowOpts o, int64_t h, int64_t w) {
  c->sh = c->sw = o.stride, c->dh = c->dw = o.dilation;
  if (o.same) {
    same_padding(h, c->kh, o.stride, o.dilation, &c->pt, &c->pb);
    same_padding(w, c->kw, o.stride, o.dilation, &c->pl, &c->pr);
  }
}

/* A filter argument: one [kh, kw, ·, ·] tensor, not per sample. */
static Node *filter_arg(const Builtin *bi, const Ast *call, const Args *a, const char *layout) {
  Node *w = tensor_arg(bi, call, a, 1);
  if (w && (batched(w) || w->shape.rank != 4)) {
    diag_error(a->ast[1]->loc, "'%s' takes a filter %s, got %s%s", bi->name, layout,
               shape_str(w->shape, true), batched(w) ? " (per sample)" : "");
    return NULL;
  }
  return w;
}

/* conv2d_op(x, w, stride = 1, padding = "same", dilation = 1): x [h, w, c] per sample,
 * w [kh, kw, c, filters] -> [oh, ow, filters] */
BUILTIN(call_conv2d) {
  Node *x = image_arg(bi, call, a), *w = filter_arg(bi, call, a, "[kh, kw, c, filters]");
  if (!x || !w) return ERR;
  ConvAttr c = {.kh = (int)w->shape.dim[0], .kw = (int)w->shape.dim[1]};
  WindowOpts o;
  if (!window_opts(bi, call, a, 1, "same", &o)) return ERR;
  set_window(&c, o, x->shape.dim[1], x->shape.dim[2]);
  s->b.loc = call->loc;
  return tensor(ir_window(&s->b, OP_CONV2D, x, w, c, (Shape){0}));
}

/* conv2d_transpose_op(x, w, stride = 1, padding = "same", dilation = 1): x [h, w, c] per
 * sample, w [kh, kw, filters, c] (Keras' layout) -> [oh, ow, filters], the data gradient of
 * the convolution that maps [oh, ow, filters] to [h, w, c]. As in Keras, oh = h * stride
 * for "same" and h * stride + max(kh' - stride, 0) for "valid" (kh' the dilated window). */
BUILTIN(call_conv2d_transpose) {
  Node *x = image_arg(bi, call, a), *w = filter_arg(bi, call, a, "[kh, kw, filters, c]");
  if (!x || !w) return ERR;
  Shape xs = x->shape, ws = w->shape;
  if (xs.dim[3] != ws.dim[3]) {
    diag_error(call->loc, "cannot transpose-convolve %s with %s: input has %lld channels, "
               "filter expects %lld", shape_str(xs, true), shape_str(ws, true),
               (long long)xs.dim[3], (long long)ws.dim[3]);
    return ERR;
  }
  ConvAttr c = {.kh = (int)ws.dim[0], .kw = (int)ws.dim[1]};
  WindowOpts o;
  if (!window_opts(bi, call, a, 1, "same", &o)) return ERR;
  int64_t out[2];
  for (int i = 0; i < 2; i++) {
    int64_t span = (int64_t)o.dilation * ((i ? c.kw : c.kh) - 1) + 1, in = xs.dim[1 + i];
    out[i] = in * o.stride + (o.same || span <= o.stride ? 0 : span - o.stride);
  }
  set_window(&c, o, out[0], out[1]); /* the forward convolution's geometry on the result */
  s->b.loc = call->loc;
  Shape r = {4, {xs.dim[0], out[0], out[1], ws.dim[2]}};
  return tensor(ir_window(&s->b, OP_CONV2D_BWD_DATA, x, w, c, r));
}

/* maxpool(x, size, stride = size, padding = "valid"), avgpool(...): x [h, w, c] per sample
 * -> [oh, ow, c], over size x size windows */
BUILTIN(call_pool) {
  Node *x = image_arg(bi, call, a);
  int size;
  if (!x || !count_arg(bi, a->ast[1], &a->v[1], "size", 1, &size)) return ERR;
  ConvAttr c = {.kh = size, .kw = size};
  WindowOpts o;
  if (!window_opts(bi, call, a, size, "valid", &o)) return ERR;
  set_window(&c, o, x->shape.dim[1], x->shape.dim[2]);
  s->b.loc = call->loc;
  return tensor(ir_window(&s->b, bi->op, x, NULL, c, (Shape){0}));
}

/* upsample(x, factor): nearest neighbour, each pixel repeated factor x factor times. Not a
 * primitive: [h, w, c] -> [h, 1, w, 1, c] -> broadcast [h, f, w, f, c] -> [h*f, w*f, c], so
 * its gradient (EXPAND's) sums each block. */
BUILTIN(call_upsample) {
  Node *x = image_arg(bi, call, a);
  int f;
  if (!x || !count_arg(bi, a->ast[1], &a->v[1], "factor", 1, &f)) return ERR;
  int64_t b0 = x->shape.dim[0], h = x->shape.dim[1], w = x->shape.dim[2], c = x->shape.dim[3];
  Builder *b = &s->b;
  b->loc = call->loc;
  Node *r = ir_reshape(b, x, (Shape){6, {b0, h, 1, w, 1, c}});
  r = ir_expand(b, r, (Shape){6, {b0, h, f, w, f, c}});
  return tensor(ir_reshape(b, r, (Shape){4, {b0, h * f, w * f, c}}));
}

static bool is_int(Value v);

/* Where keyword argument `name` was written, or `dflt`. */
static Loc kwarg_loc(const Args *a, const char *name, Loc dflt) {
  for (int i = 0; i < a->n; i++)
    if (a->kw[i] && !strcmp(a->kw[i], name)) return a->ast[i]->loc;
  return dflt;
}

/* Keyword argument `name` as an integer in [lo, hi] (default dflt); false after an error. */
static bool int_kwarg(const Args *a, const char *name, int64_t dflt, int64_t lo, int64_t hi,
                      const char *fn, Loc loc, int64_t *out) {
  const Value *v = kwarg(a, name);
  *out = dflt;
  if (!v) return true;
  if (!is_int(*v) || v->num < (double)lo || v->num > (double)hi) {
    diag_error(kwarg_loc(a, name, loc), "'%s': %s must be an integer in [%lld, %lld]", fn, name,
               (long long)lo, (long long)hi);
    return false;
  }
  *out = (int64_t)v->num;
  return true;
}

/* The `axis` keyword (default 0) as an IR axis of x; -1 after an error. */
static int axis_kwarg(const Args *a, const Node *x, const char *fn, Loc loc) {
  int rank = sample_rank(x);
  const Value *v = kwarg(a, "axis");
  double ax = v ? v->num : 0;
  if ((v && !is_int(*v)) || ax < -rank || ax >= rank) {
    diag_error(kwarg_loc(a, "axis", loc), "'%s': axis must be an integer in [%d, %d) for %s",
               fn, -rank, rank, shape_str(x->shape, true));
    return -1;
  }
  return (int)(ax < 0 ? ax + rank : ax) + batched(x);
}

/* An unbatched value as a batch of copies of it (for an operation with a batched value). */
static Node *to_batched(Sema *s, Node *x) {
  if (!x || batched(x)) return x;
  if (x->shape.rank >= MAX_RANK) {
    diag_error(s->b.loc, "%s has too many axes to join a batch", shape_str(x->shape, true));
    return NULL;
  }
  Shape one = {.rank = x->shape.rank + 1, .dim = {1}};
  memcpy(one.dim + 1, x->shape.dim, x->shape.rank * sizeof *one.dim);
  Shape all = one;
  all.dim[0] = DIM_BATCH;
  return ir_expand(&s->b, ir_reshape(&s->b, x, one), all);
}

/* A permutation of all of x's dims, batch dim first. */
static int64_t *identity_perm(const Node *x) {
  int64_t *p = xalloc(MAX_RANK * sizeof *p);
  for (int i = 0; i < x->shape.rank; i++) p[i] = i;
  return p;
}

/* transpose(x): swaps the last two per-sample axes */
BUILTIN(call_transpose) {
  Node *x = tensor_arg(bi, call, a, 0);
  if (!x) return ERR;
  if (sample_rank(x) < 2) {
    diag_error(call->loc, "transpose needs a matrix (2 or more axes), got %s",
               shape_str(x->shape, true));
    return ERR;
  }
  int64_t *p = identity_perm(x), r = x->shape.rank;
  p[r - 1] = r - 2, p[r - 2] = r - 1;
  s->b.loc = call->loc;
  return tensor(ir_permute(&s->b, x, p));
}

/* permute(x, [axes]): result axis i is x's axis axes[i] */
BUILTIN(call_permute) {
  Node *x = tensor_arg(bi, call, a, 0);
  if (!x) return ERR;
  int rank = sample_rank(x), first = batched(x);
  int64_t *p = identity_perm(x);
  unsigned seen = 0;
  bool ok = a->v[1].kind == V_LIST && a->v[1].len == rank;
  for (int i = 0; ok && i < rank; i++) {
    double ax = a->v[1].nums[i];
    ok = ax == floor(ax) && ax >= -rank && ax < rank;
    int k = ok ? (int)(ax < 0 ? ax + rank : ax) : 0;
    ok &= !(seen >> k & 1);
    seen |= 1u << k;
    p[first + i] = first + k;
  }
  if (!ok) {
    diag_error(a->ast[1]->loc, "permute: %s is not a permutation of the %d axes of %s",
               a->v[1].kind == V_LIST ? list_str(a->v[1].nums, a->v[1].len) : "this", rank,
               shape_str(x->shape, true));
    return ERR;
  }
  s->b.loc = call->loc;
  return tensor(ir_permute(&s->b, x, p));
}

/* slice(x, axis = k, start = a, end = b, step = c): x[a:b:c] along axis k; negative a, b
 * count from the end (as in Python); the range must not be empty */
BUILTIN(call_slice) {
  Node *x = tensor_arg(bi, call, a, 0);
  int axis = x ? axis_kwarg(a, x, bi->name, call->loc) : -1;
  if (axis < 0) return ERR;
  int64_t n = x->shape.dim[axis], lo[MAX_RANK], hi[MAX_RANK], step[MAX_RANK];
  for (int i = 0; i < x->shape.rank; i++) lo[i] = 0, hi[i] = x->shape.dim[i], step[i] = 1;
  if (!int_kwarg(a, "start", 0, -n, n, bi->name, call->loc, &lo[axis]) ||
      !int_kwarg(a, "end", n, -n, n, bi->name, call->loc, &hi[axis]) ||
      !int_kwarg(a, "step", 1, 1, n, bi->name, call->loc, &step[axis]))
    return ERR;
  if (lo[axis] < 0) lo[axis] += n;
  if (hi[axis] < 0) hi[axis] += n;
  if (lo[axis] >= hi[axis]) {
    diag_error(call->loc, "slice [%lld:%lld] of axis %d of %s is empty", (long long)lo[axis],
               (long long)hi[axis], axis - batched(x), shape_str(x->shape, true));
    return ERR;
  }
  s->b.loc = call->loc;
  return tensor(ir_slice(&s->b, x, lo, hi, step));
}

/* pad(x, axis = k, before = a, after = b): a zeros before and b after along axis k */
BUILTIN(call_pad) {
  Node *x = tensor_arg(bi, call, a, 0);
  int axis = x ? axis_kwarg(a, x, bi->name, call->loc) : -1;
  if (axis < 0) return ERR;
  int64_t lo[MAX_RANK] = {0}, hi[MAX_RANK] = {0}, step[MAX_RANK];
  for (int i = 0; i < MAX_RANK; i++) step[i] = 1;
  if (!int_kwarg(a, "before", 0, 0, 1 << 30, bi->name, call->loc, &lo[axis]) ||
      !int_kwarg(a, "after", 0, 0, 1 << 30, bi->name, call->loc, &hi[axis]))
    return ERR;
  s->b.loc = call->loc;
  return tensor(ir_pad(&s->b, x, lo, hi, step));
}

/* concat(a, b, axis = k): a then b along axis k; the other axes must agree. A value without
 * a batch (a parameter) joins every sample of a batched one. */
BUILTIN(call_concat) {
  Node *x = tensor_arg(bi, call, a, 0), *y = x ? tensor_arg(bi, call, a, 1) : NULL;
  if (!y) return ERR;
  if (sample_rank(x) != sample_rank(y) || !sample_rank(x)) {
    diag_error(call->loc, "cannot concatenate %s and %s: %s", shape_str(x->shape, true),
               shape_str(y->shape, true),
               sample_rank(x) ? "they differ in rank" : "they have no axes");
    return ERR;
  }
  int axis = axis_kwarg(a, x, bi->name, call->loc);
  if (axis < 0) return ERR;
  s->b.loc = call->loc;
  if (batched(x) != batched(y)) {
    axis += !batched(x);
    x = to_batched(s, x), y = to_batched(s, y);
  }
  return tensor(ir_concat(&s->b, x, y, axis));
}

/* where(c, a, b): a where c is not 0, else b; the three broadcast together */
BUILTIN(call_where) {
  (void)bi;
  const Value *v = a->v;
  if (v[0].kind == V_NUM) return v[0].num ? v[1] : v[2];
  Node *n[3];
  for (int i = 0; i < 3; i++) {
    n[i] = as_node(s, v[i]);
    if (!n[i]) {
      diag_error(a->ast[i]->loc, "'where' takes numbers and tensors");
      return ERR;
    }
  }
  Shape cx, all; /* per sample, as the user wrote them */
  if (!shape_broadcast(sample_shape(n[0]), sample_shape(n[1]), &cx) ||
      !shape_broadcast(cx, sample_shape(n[2]), &all)) {
    diag_error(call->loc, "shapes %s, %s and %s do not broadcast in 'where'",
               shape_str(n[0]->shape, true), shape_str(n[1]->shape, true),
               shape_str(n[2]->shape, true));
    return ERR;
  }
  Node *widest = n[0];
  for (int i = 1; i < 3; i++)
    if (sample_rank(n[i]) > sample_rank(widest)) widest = n[i];
  for (int i = 0; i < 3; i++) n[i] = lift_batched(s, n[i], widest);
  s->b.loc = call->loc;
  return tensor(ir_where(&s->b, n[0], n[1], n[2]));
}

/* gather(x, idx, axis = k): per sample, x's entries at positions idx along axis k (numpy's
 * take): the result's shape is x's with axis k replaced by idx's shape. Indices are rounded
 * to the nearest integer and clamped into [0, n-1]. An unbatched x (a parameter, e.g. an
 * embedding table) indexed by batched ids along axis 0 stays one table for all samples. */
BUILTIN(call_gather) {
  Node *x = tensor_arg(bi, call, a, 0), *idx = as_node(s, a->v[1]);
  if (!x) return ERR;
  if (!idx) {
    diag_error(a->ast[1]->loc, "'gather' needs indices: a number or a tensor");
    return ERR;
  }
  if (!sample_rank(x)) {
    diag_error(call->loc, "cannot index %s: it has no axes", shape_str(x->shape, true));
    return ERR;
  }
  int axis = axis_kwarg(a, x, bi->name, call->loc);
  if (axis < 0) return ERR;
  s->b.loc = call->loc;
  if (!batched(x) && (!batched(idx) || axis == 0)) return tensor(ir_gather(&s->b, x, idx, axis, 0));
  axis += !batched(x);
  return tensor(ir_gather(&s->b, to_batched(s, x), to_batched(s, idx), axis, 1));
}

/* scatter_add(v, idx, n, axis = k): per sample, zeros of v's shape with idx's axes replaced
 * by one axis of n, and each of v's entries added at position idx along it (repeated
 * indices accumulate); gather's transpose. */
BUILTIN(call_scatter_add) {
  Node *v = tensor_arg(bi, call, a, 0), *idx = as_node(s, a->v[1]);
  if (!v) return ERR;
  if (!idx || !is_int(a->v[2]) || a->v[2].num < 1 || a->v[2].num > 1e9) {
    diag_error(a->ast[idx ? 2 : 1]->loc, "'scatter_add' takes values, indices and a size");
    return ERR;
  }
  bool both = batched(v) || batched(idx);
  s->b.loc = call->loc;
  if (both) v = to_batched(s, v), idx = to_batched(s, idx);
  if (!v || !idx) return ERR;
  int lead = both, ri = idx->shape.rank - lead, rv = v->shape.rank;
  int places = rv - lead - ri + 1; /* where idx's axes can sit in v's */
  int64_t ax = 0;
  bool ok = places >= 1 && rv - ri + 1 <= MAX_RANK;
  if (ok && !int_kwarg(a, "axis", 0, -places, places - 1, bi->name, call->loc, &ax)) return ERR;
  int axis = (int)(ax < 0 ? ax + places : ax) + lead;
  for (int i = 0; ok && i < ri; i++) ok = v->shape.dim[axis + i] == idx->shape.dim[lead + i];
  if (!ok) {
    diag_error(call->loc, "cannot scatter %s with indices %s along axis %d",
               shape_str(v->shape, true), shape_str(idx->shape, true), axis - lead);
    return ERR;
  }
  Shape to = {0}; /* v's shape with idx's axes replaced by one of n */
  for (int i = 0; i < axis; i++) to.dim[to.rank++] = v->shape.dim[i];
  to.dim[to.rank++] = (int64_t)a->v[2].num;
  for (int i = axis + ri; i < rv; i++) to.dim[to.rank++] = v->shape.dim[i];
  s->b.loc = call->loc;
  return tensor(ir_scatter_add(&s->b, v, idx, axis, lead, to));
}

/* one_hot(t, k, like = z): a class index per sample as a vector of k with a 1 at t (t ==
 * 0..k-1, made by comparing with an iota); a t that already ends in k (one-hot or
 * probabilities) is returned as it is, so losses can take either. With `like` (the logits,
 * [..., k]), t may also be a class index per position of a sequence: z's shape without its
 * last axis; anything else is an error rather than a silent broadcast. */
BUILTIN(call_one_hot) {
  (void)bi;
  Value t = a->v[0];
  if (!is_int(a->v[1]) || a->v[1].num < 1 || a->v[1].num > 1e9) {
    diag_error(a->ast[1]->loc, "one_hot: the number of classes must be a positive integer");
    return ERR;
  }
  int64_t k = (int64_t)a->v[1].num;
  const Value *like = kwarg(a, "like");
  Node *z = like && like->kind == V_TENSOR ? like->node : NULL;
  if (like && !z) {
    diag_error(kwarg_loc(a, "like", call->loc), "one_hot: 'like' must be a tensor");
    return ERR;
  }
  int zr = z ? sample_rank(z) : 1; /* per-sample rank of the logits */
  if (t.kind == V_TENSOR && sample_rank(t.node) > 0) {
    Shape ts = sample_shape(t.node);
    bool probs = ts.dim[ts.rank - 1] == k && (!z || ts.rank == zr);
    bool indices = z && zr > 1 && ts.rank == zr - 1;
    for (int i = 0; indices && i < ts.rank; i++) indices = ts.dim[i] == sample_shape(z).dim[i];
    if (probs) return t;
    if (!indices) {
      if (zr <= 1)
        diag_error(a->ast[0]->loc, "one_hot(t, %lld): t must be one class index per sample or "
                   "end in %lld classes, got %s", (long long)k, (long long)k,
                   shape_str(t.node->shape, true));
      else
        diag_error(a->ast[0]->loc, "one_hot(t, %lld): t must be a class index per position "
                   "of %s or have its shape, got %s", (long long)k, shape_str(z->shape, true),
                   shape_str(t.node->shape, true));
      return ERR;
    }
  }
  if (t.kind != V_TENSOR && t.kind != V_NUM) {
    diag_error(a->ast[0]->loc, "one_hot takes a class index");
    return ERR;
  }
  s->b.loc = call->loc;
  Node *idx = t.kind == V_TENSOR ? t.node : NULL;
  if (idx && sample_rank(idx) > 0) { /* a sequence of indices [t]: each gets its own [k] */
    if (idx->shape.rank >= MAX_RANK) {
      diag_error(a->ast[0]->loc, "one_hot: %s has too many axes", shape_str(idx->shape, true));
      return ERR;
    }
    Shape col = idx->shape;
    col.dim[col.rank++] = 1;
    t = tensor(ir_reshape(&s->b, idx, col));
  }
  return binary(s, OP_CMPEQ, t, tensor(ir_iota(&s->b, shape_of(1, (int)k), 0)));
}

/* ---- the batch, for batch statistics (batchnorm): batch_mean(x) is the mean over the batch
 * of a per-sample x (one value of x's per-sample shape, not per sample); batch_size() is the
 * number of samples in this batch (a run-time value); dim(x, k) is the length of x's
 * per-sample axis k (a number known at compile time). ---- */
BUILTIN(call_batch_mean) {
  Node *x = tensor_arg(bi, call, a, 0);
  if (!x) return ERR;
  if (!batched(x) || x->shape.dim[0] != DIM_BATCH) {
    diag_error(a->ast[0]->loc, "'batch_mean' takes a per-sample value, got %s (not per sample)",
               shape_str(x->shape, true));
    return ERR;
  }
  Builder *b = &s->b;
  b->loc = call->loc;
  Node *sum = ir_reshape(b, ir_reduce(b, OP_SUM, x, 1), sample_shape(x));
  return tensor(ir_div(b, sum, ir_scalar(b, OP_BATCH, 0, "batch")));
}

BUILTIN(call_batch_size) {
  (void)bi, (void)a;
  s->b.loc = call->loc;
  return tensor(ir_scalar(&s->b, OP_BATCH, 0, "batch"));
}

BUILTIN(call_dim) {
  (void)s;
  Node *x = tensor_arg(bi, call, a, 0);
  int rank = x ? sample_rank(x) : 0;
  if (!x) return ERR;
  if (!is_int(a->v[1]) || a->v[1].num < -rank || a->v[1].num >= rank) {
    diag_error(a->ast[1]->loc, "'dim': the axis must be an integer in [%d, %d) for %s", -rank,
               rank, shape_str(x->shape, true));
    return ERR;
  }
  int k = (int)a->v[1].num;
  return number((double)x->shape.dim[batched(x) + (k < 0 ? k + rank : k)]);
}

/* iota([dims], axis = k): a constant of shape dims whose entries are their index along
 * axis k (causal masks compare two of them) */
BUILTIN(call_iota) {
  if (a->v[0].kind != V_LIST || a->v[0].len < 1 || a->v[0].len > MAX_RANK - 1) {
    diag_error(a->ast[0]->loc, "iota takes its shape as a list, like [4, 4]");
    return ERR;
  }
  Shape sh = {.rank = a->v[0].len};
  for (int i = 0; i < sh.rank; i++) {
    double d = a->v[0].nums[i];
    if (d < 1 || d != floor(d) || d > 1e9) {
      diag_error(a->ast[0]->loc, "iota: %s is not a list of positive sizes",
                 list_str(a->v[0].nums, a->v[0].len));
      return ERR;
    }
    sh.dim[i] = (int64_t)d;
  }
  int64_t ax = 0;
  if (!int_kwarg(a, "axis", 0, -sh.rank, sh.rank - 1, bi->name, call->loc, &ax)) return ERR;
  s->b.loc = call->loc;
  return tensor(ir_iota(&s->b, sh, (int)(ax < 0 ? ax + sh.rank : ax)));
}

/* rank(x): the number of x's per-sample axes, known at compile time (an optimizer can
 * tell matrices from vectors: decay only the weights, not biases or norm gains) */
BUILTIN(call_rank) {
  Node *x = tensor_arg(bi, call, a, 0);
  (void)s;
  return x ? number(sample_rank(x)) : ERR;
}

/* gradient(y, x): d y / d x, built into the graph by reverse mode (autodiff.c), for
 * gradients with respect to inputs: saliency, adversarial examples (x + eps * sign(g)).
 * y is one number per sample, and each sample's y is differentiated on its own; x is any
 * tensor the graph has built (the input x, a hidden value, a parameter). */
BUILTIN(call_gradient) {
  Node *y = tensor_arg(bi, call, a, 0), *x = y ? tensor_arg(bi, call, a, 1) : NULL;
  if (!x) return ERR;
  if (sample_rank(y) != 0) {
    diag_error(a->ast[0]->loc, "'gradient' differentiates one number per sample, got %s; "
               "wrap it in sum() or mean()", shape_str(y->shape, true));
    return ERR;
  }
  s->b.loc = call->loc;
  Node *g = ad_grad(&s->b, y, x);
  return g ? tensor(g) : ERR;
}

static const Builtin builtins[] = {
    {"exp", 1, 1, {0}, OP_EXP, call_unary},
    {"log", 1, 1, {0}, OP_LOG, call_unary},
    {"sqrt", 1, 1, {0}, OP_SQRT, call_unary},
    {"tanh", 1, 1, {0}, OP_TANH, call_unary},
    {"sigmoid", 1, 1, {0}, OP_SIGMOID, call_unary},
    {"abs", 1, 1, {0}, OP_ABS, call_unary},
    {"sign", 1, 1, {0}, OP_SIGN, call_unary},
    {"floor", 1, 1, {0}, OP_FLOOR, call_unary},
    {"sin", 1, 1, {0}, OP_SIN, call_unary},
    {"cos", 1, 1, {0}, OP_COS, call_unary},
    {"max", 1, 2, {"axis", "keepdims"}, OP_MAX, call_binary},
    {"min", 1, 2, {"axis", "keepdims"}, OP_MIN, call_binary},
    {"pow", 2, 2, {0}, OP_POW, call_binary},
    {"sum", 1, 1, {"axis", "keepdims"}, OP_SUM, call_reduce},
    {"mean", 1, 1, {"axis", "keepdims"}, OP_SUM, call_reduce},
    {"matmul", 2, 2, {0}, OP_MATMUL, call_matmul},
    /* movement and indexing */
    {"reshape", 2, 2, {0}, OP_RESHAPE, call_reshape},
    {"flatten", 1, 1, {0}, OP_RESHAPE, call_flatten},
    {"transpose", 1, 1, {0}, OP_PERMUTE, call_transpose},
    {"permute", 2, 2, {0}, OP_PERMUTE, call_permute},
    {"slice", 1, 1, {"axis", "start", "end", "step"}, OP_SLICE, call_slice},
    {"pad", 1, 1, {"axis", "before", "after"}, OP_PAD, call_pad},
    {"concat", 2, 2, {"axis"}, OP_CONCAT, call_concat},
    {"where", 3, 3, {0}, OP_WHERE, call_where},
    {"gather", 2, 2, {"axis"}, OP_GATHER, call_gather},
    {"scatter_add", 3, 3, {"axis"}, OP_SCATTER_ADD, call_scatter_add},
    {"one_hot", 2, 2, {"like"}, OP_IOTA, call_one_hot},
    {"iota", 1, 1, {"axis"}, OP_IOTA, call_iota},
    {"rank", 1, 1, {0}, OP_RESHAPE, call_rank},
    {"zeros", 1, 1, {0}, OP_EXPAND, call_zeros},
    {"gradient", 2, 2, {0}, OP_COUNT, call_gradient},
    /* convolution and pooling */
    {"conv2d_op", 2, 2, {"stride", "padding", "dilation"}, OP_CONV2D, call_conv2d},
    {"conv2d_transpose_op", 2, 2, {"stride", "padding", "dilation"}, OP_CONV2D_BWD_DATA,
     call_conv2d_transpose},
    {"maxpool", 2, 2, {"stride", "padding"}, OP_MAXPOOL, call_pool},
    {"avgpool", 2, 2, {"stride", "padding"}, OP_AVGPOOL, call_pool},
    {"upsample", 2, 2, {0}, OP_EXPAND, call_upsample},
    /* random numbers */
    {"uniform", 1, 1, {"lo", "hi"}, OP_RAND_UNIFORM, call_random},
    {"normal", 1, 1, {"mean", "std"}, OP_RAND_NORMAL, call_random},
    {"bernoulli", 1, 1, {"p"}, OP_RAND_UNIFORM, call_random},
    /* the batch */
    {"batch_mean", 1, 1, {0}, OP_SUM, call_batch_mean},
    {"batch_size", 0, 0, {0}, OP_BATCH, call_batch_size},
    {"dim", 2, 2, {0}, OP_COUNT, call_dim},
};
enum { N_BUILTINS = sizeof builtins / sizeof *builtins };

/* scan is handled apart (call_scan): its first argument names a definition, not a value */
static const char *builtin_name(int i) {
  return i < N_BUILTINS ? builtins[i].name : i == N_BUILTINS ? "scan" : NULL;
}

/* Calls a built-in function; false if `call` does not name one. */
static bool call_builtin(Sema *s, Frame *f, const Ast *call, Value *out) {
  const Builtin *bi = NULL;
  for (int i = 0; i < N_BUILTINS; i++)
    if (!strcmp(builtins[i].name, call->name)) bi = &builtins[i];
  if (!bi) return false;
  Args a;
  *out = ERR;
  if (!eval_args(s, f, call, &a, true)) return true;
  int positional = 0;
  bool ok = true;
  for (int i = 0; i < a.n; i++) {
    ok &= a.v[i].kind != V_ERROR;
    if (a.v[i].kind == V_LIST && (a.kw[i] || !takes_list(bi, positional))) {
      diag_error(a.ast[i]->loc, "'%s' does not take a list here", bi->name);
      ok = false;
    }
    if (!a.kw[i]) {
      positional++;
      continue;
    }
    bool known = false;
    for (int k = 0; k < 4 && bi->keywords[k]; k++) known |= !strcmp(bi->keywords[k], a.kw[i]);
    if (!known) {
      diag_error(a.ast[i]->loc, "'%s' has no argument named '%s'", bi->name, a.kw[i]);
      ok = false;
    }
  }
  if (ok && (positional < bi->min_args || positional > bi->max_args)) {
    if (bi->min_args == bi->max_args)
      diag_error(call->loc, "'%s' takes %d argument%s, got %d", bi->name, bi->min_args,
                 bi->min_args == 1 ? "" : "s", positional);
    else
      diag_error(call->loc, "'%s' takes %d to %d arguments, got %d", bi->name, bi->min_args,
                 bi->max_args, positional);
    ok = false;
  }
  s->site = f->site;
  if (ok) *out = bi->call(s, bi, call, &a);
  return true;
}

static bool is_int(Value v) { return v.kind == V_NUM && v.num == floor(v.num) && fabs(v.num) < 1e15; }

/* A tensor type's element type: f32, or none (`[n, 4]`); the only one a program names, since
 * nnc's --dtype=f64 makes every tensor f64. */
static bool elem_type_ok(const Ast *type) {
  if (!type->name || !strcmp(type->name, "f32")) return true;
  diag_error(type->loc, "unknown element type '%s' (tensors are f32; nnc --dtype=f64 makes "
             "every tensor f64)", type->name);
  return false;
}

enum { MAX_SAMPLE_ELEMS = 1 << 30 }; /* in a declared type (per sample for an input): 4 GiB of f32 */

/* Evaluates the dims of a type in frame f, binding unknown names when `bind_from` is given
 * (matching a formal's type against an argument's per-sample shape). */
static bool dims_of(Sema *s, Frame *f, const Ast *type, Shape *out) {
  if (!elem_type_ok(type)) return false;
  out->rank = type->kids.len;
  if (type->any_lead) {
    diag_error(type->loc, "'...' (any leading axes) is only allowed in a formal's type");
    return false;
  }
  if (out->rank > MAX_RANK - 1) {
    diag_error(type->loc, "at most %d dimensions are supported", MAX_RANK - 1);
    return false;
  }
  double elems = 1;
  for (int i = 0; i < out->rank; i++) {
    const Ast *d = type->kids.items[i];
    Value v = eval(s, f, d);
    if (v.kind == V_ERROR) return false;
    if (!is_int(v) || v.num < 1) {
      diag_error(d->loc, "a dimension must be a positive integer");
      return false;
    }
    out->dim[i] = (int64_t)v.num;
    elems *= v.num; /* exact enough: it stops at the first product past 2^30 */
    if (elems > MAX_SAMPLE_ELEMS) {
      diag_error(d->loc, "a tensor of more than %d elements is too large",
                 MAX_SAMPLE_ELEMS);
      return false;
    }
  }
  return true;
}

/* Binds a formal parameter to an argument, checking its declared type. */
static bool bind_formal(Sema *s, Frame *callee, const Ast *def, const Ast *formal, Value v,
                        Loc loc) {
  const Ast *type = formal->a;
  if (v.kind == V_ERROR) return false;
  if (type && !type->has_dims) {
    bool is_intty = type->name && !strcmp(type->name, "int");
    bool is_num = type->name && (!strcmp(type->name, "float") || is_intty);
    if (!is_num) {
      diag_error(type->loc, "unknown type '%s'", type->name ? type->name : "?");
      return false;
    }
    if (v.kind != V_NUM || (is_intty && !is_int(v))) {
      diag_error(loc, "argument '%s' of '%s' must be %s", formal->name, def->name,
                 is_intty ? "an integer" : "a number");
      return false;
    }
  } else if (type) {
    if (!elem_type_ok(type)) return false;
    if (v.kind != V_TENSOR) {
      diag_error(loc, "argument '%s' of '%s' must be a tensor of shape %s", formal->name,
                 def->name, "given in its type");
      return false;
    }
    Node *n = v.node;
    int rank = sample_rank(n), want_rank = type->kids.len;
    if (type->any_lead ? rank < want_rank : rank != want_rank) {
      diag_error(loc, "'%s' expects %s of rank %s%d, got %s", def->name, formal->name,
                 type->any_lead ? "at least " : "", want_rank, shape_str(n->shape, true));
      return false;
    }
    rank = want_rank; /* with '...', only the trailing dims are matched */
    for (int i = 0; i < rank; i++) {
      const Ast *d = type->kids.items[i];
      int64_t got = n->shape.dim[n->shape.rank - rank + i];
      if (d->kind == AST_NAME && !lookup_local(callee, d->name)) {
        bind(callee, d->name, number((double)got)); /* a shape variable: learn it */
        continue;
      }
      Value want = eval(s, callee, d);
      if (want.kind == V_ERROR) return false;
      if (!is_int(want) || (int64_t)want.num != got) {
        diag_error(loc, "'%s' expects %s of shape %s, got %s", def->name, formal->name,
                   "as declared", shape_str(n->shape, true));
        diag_note(d->loc, "dimension %d declared here", i);
        return false;
      }
    }
  }
  bind(callee, formal->name, v);
  return true;
}

static Frame *frame_for(Frame *caller, const Ast *def, const char *prefix) {
  Frame *f = xalloc(sizeof *f);
  f->def = def, f->parent = caller, f->prefix = prefix;
  f->where = def->kind == AST_LAYER ? IN_LAYER : def->kind == AST_MODEL ? IN_MODEL
             : def->kind == AST_OPTIMIZER ? IN_OPTIMIZER : IN_FN;
  return f;
}

/* Matches a call's arguments to a definition's formals and binds them in `callee`. */
static bool bind_args(Sema *s, Frame *caller, Frame *callee, const Ast *def, const Ast *call) {
  Args a;
  if (!eval_args(s, caller, call, &a, false)) return false;
  int nf = def->formals.len;
  bool given[64] = {0};
  if (nf > 64) {
    diag_error(def->loc, "too many formal parameters");
    return false;
  }
  bool ok = true;
  int pos = 0;
  for (int i = 0; i < a.n; i++) {
    int k = -1;
    if (!a.kw[i]) {
      k = pos++;
      if (k >= nf) {
        diag_error(a.ast[i]->loc, "too many arguments to '%s' (it takes %d)", def->name, nf);
        return false;
      }
    } else {
      for (int j = 0; j < nf; j++)
        if (!strcmp(def->formals.items[j]->name, a.kw[i])) k = j;
      if (k < 0) {
        const char *names[64];
        for (int j = 0; j < nf; j++) names[j] = def->formals.items[j]->name;
        const char *close = diag_did_you_mean(a.kw[i], names, nf);
        if (close)
          diag_error(a.ast[i]->loc, "'%s' has no argument '%s'; did you mean '%s'?", def->name,
                     a.kw[i], close);
        else
          diag_error(a.ast[i]->loc, "'%s' has no argument '%s'", def->name, a.kw[i]);
        ok = false;
        continue;
      }
      if (given[k]) {
        diag_error(a.ast[i]->loc, "argument '%s' given twice", a.kw[i]);
        ok = false;
        continue;
      }
    }
    given[k] = true;
    ok &= bind_formal(s, callee, def, def->formals.items[k], a.v[i], a.ast[i]->loc);
  }
  for (int j = 0; j < nf && ok; j++) {
    const Ast *formal = def->formals.items[j];
    if (given[j]) continue;
    if (!formal->b) {
      diag_error(call->loc, "missing argument '%s' in call to '%s'", formal->name, def->name);
      ok = false;
      continue;
    }
    Frame global = {.prefix = ""};
    ok &= bind_formal(s, callee, def, formal, eval(s, &global, formal->b), formal->b->loc);
  }
  return ok;
}

/* The parameter named `name`, made on first sight and shared afterwards (a model called
 * twice uses the same weights). */
static Node *param_node(Sema *s, const char *name, Shape shape, NnInit init, double ia,
                        double ib, Loc loc) {
  Unit *u = s->u;
  int idx = -1;
  for (int i = 0; i < u->n_params; i++)
    if (!strcmp(u->params[i].name, name)) idx = i;
  if (idx >= 0 && !shape_eq(u->params[idx].shape, shape)) {
    diag_error(loc, "parameter '%s' is %s here but %s elsewhere", name,
               shape_str(shape, true), shape_str(u->params[idx].shape, true));
    return NULL;
  }
  if (idx < 0) {
    if (u->n_params % 16 == 0) {
      ParamDecl *p = xalloc((u->n_params + 16) * sizeof *p);
      if (u->n_params) memcpy(p, u->params, u->n_params * sizeof *p);
      u->params = p;
    }
    if (u->n_params % 16 == 0) {
      Node **next = xalloc((u->n_params + 16) * sizeof *next);
      if (u->n_params) memcpy(next, s->buffer_next, u->n_params * sizeof *next);
      s->buffer_next = next;
      const Ast **owner = xalloc((u->n_params + 16) * sizeof *owner);
      if (u->n_params) memcpy(owner, s->param_model, u->n_params * sizeof *owner);
      s->param_model = owner;
    }
    s->param_model[u->n_params] = s->model;
    idx = u->n_params++;
    u->params[idx] = (ParamDecl){name, shape, u->param_size, init, ia, ib, false, false};
    u->param_size += padded_elems(shape_elems(shape, 1));
  }
  Node *n = ir_leaf(&s->b, OP_PARAM, shape, idx, u->params[idx].name);
  n->io = NN_IO_PARAM, n->offset = u->params[idx].offset;
  return n;
}

/* param W: [n, units] = glorot_uniform */
static void declare_param(Sema *s, Frame *f, const Ast *st) {
  static const struct { const char *name; NnInit init; } inits[] = {
      {"zeros", NN_INIT_ZEROS},
      {"ones", NN_INIT_ONES},
      {"glorot_uniform", NN_INIT_GLOROT_UNIFORM},
      {"glorot_normal", NN_INIT_GLOROT_NORMAL},
      {"xavier_uniform", NN_INIT_GLOROT_UNIFORM},
      {"xavier_normal", NN_INIT_GLOROT_NORMAL},
      {"he_uniform", NN_INIT_HE_UNIFORM},
      {"he_normal", NN_INIT_HE_NORMAL},
      {"kaiming_uniform", NN_INIT_HE_UNIFORM},
      {"kaiming_normal", NN_INIT_HE_NORMAL},
      {"uniform", NN_INIT_UNIFORM},
      {"normal", NN_INIT_NORMAL},
  };
  enum { N_INITS = sizeof inits / sizeof *inits };
  if (f->where != IN_LAYER && f->where != IN_MODEL) {
    diag_error(st->loc, "'%s' with a shape is only allowed in a layer or model",
               st->op == 's' ? "state" : "param");
    return;
  }
  Shape shape;
  if (!st->a || !st->a->has_dims || !dims_of(s, f, st->a, &shape)) {
    if (st->a && !st->a->has_dims) diag_error(st->a->loc, "a parameter needs a shape, like [n, 4]");
    bind(f, st->name, ERR);
    return;
  }
  NnInit init = NN_INIT_GLOROT_UNIFORM;
  double ia = 0, ib = 0;
  const Ast *e = st->b;
  if (e && (e->kind == AST_NUM || e->kind == AST_NEG)) {
    Value v = eval(s, f, e);
    init = NN_INIT_CONST, ia = v.kind == V_NUM ? v.num : 0;
  } else if (e) {
    const char *name = e->kind == AST_NAME || e->kind == AST_CALL ? e->name : "";
    int k = -1;
    for (int i = 0; i < N_INITS; i++)
      if (!strcmp(inits[i].name, name)) k = i;
    if (k < 0) {
      const char *names[N_INITS];
      for (int i = 0; i < N_INITS; i++) names[i] = inits[i].name;
      const char *close = diag_did_you_mean(name, names, N_INITS);
      diag_error(e->loc, "unknown initialiser%s%s%s%s", *name ? " '" : "", name, *name ? "'" : "",
                 close ? xprintf("; did you mean '%s'?", close) : "");
      bind(f, st->name, ERR);
      return;
    }
    init = inits[k].init;
    bool two = init == NN_INIT_UNIFORM || init == NN_INIT_NORMAL;
    if (two) { /* uniform(lo, hi), normal(mean, std); defaults as PyTorch's init */
      ia = init == NN_INIT_UNIFORM ? -0.05 : 0, ib = 0.05;
      if (e->kind == AST_CALL && e->kids.len != 2) {
        diag_error(e->loc, "'%s' takes 2 arguments", name);
      } else if (e->kind == AST_CALL) {
        Value a = eval(s, f, e->kids.items[0]), b = eval(s, f, e->kids.items[1]);
        if (a.kind != V_NUM || b.kind != V_NUM) diag_error(e->loc, "'%s' takes 2 numbers", name);
        ia = a.num, ib = b.num;
      }
    } else if (e->kind == AST_CALL) {
      diag_error(e->loc, "'%s' takes no arguments", name);
    }
  }
  const char *full = xprintf("%s%s", f->prefix, st->name);
  int before = s->u->n_params;
  Node *n = param_node(s, full, shape, init, ia, ib, st->loc);
  bind(f, st->name, tensor(n));
  if (!n) return;
  ParamDecl *pd = &s->u->params[n->attr.index];
  bool buffer = st->op == 's';
  if (s->u->n_params == before && pd->buffer != buffer) {
    diag_error(st->loc, "'%s' is a %s here but a %s elsewhere", full, buffer ? "state" : "param",
               buffer ? "param" : "state");
    return;
  }
  pd->buffer = buffer;
  if (buffer) { /* its value at the end of the layer is its next value (see call_def) */
    Buffer *bf = xalloc(sizeof *bf);
    bf->name = st->name, bf->index = n->attr.index, bf->loc = st->loc, bf->next = f->buffers;
    f->buffers = bf;
  }
}

/* `require cond, "message"` failed: the message, each {name} in it replaced by the number
 * that local name holds, is reported at the first call from another file (a prelude layer's
 * misuse shows at the user's call, not inside std.nn), else at the innermost call. */
static void require_failed(Sema *s, Frame *f, const Ast *st) {
  Loc at = f->call;
  for (Frame *p = f; p && p->call.file; p = p->parent)
    if (p->call.file != st->loc.file) {
      at = p->call;
      break;
    }
  const char *msg = st->name, *open, *close;
  char *text = "";
  while ((open = strchr(msg, '{')) && (close = strchr(open, '}'))) {
    char *name = xprintf("%.*s", (int)(close - open - 1), open + 1);
    Binding *b = lookup_local(f, name);
    char *value = b && b->value.kind == V_NUM ? xprintf("%g", b->value.num)
                                               : xprintf("{%s}", name);
    text = xprintf("%s%.*s%s", text, (int)(open - msg), msg, value);
    msg = close + 1;
  }
  text = xprintf("%s%s", text, msg);
  const char *who = f->def ? f->def->name : "require";
  s->required_at = at.file ? at : st->loc;
  diag_error(s->required_at, "%s: %s", who, text);
}

/* Runs a body's statements; returns the value of its `return`, or V_ERROR with *returned
 * false if it has none. */
static bool is_int(Value v);
static Value run_body(Sema *s, Frame *f, const AstList *body, bool *returned) {
  *returned = false;
  Value result = ERR;
  for (int i = 0; i < body->len; i++) {
    const Ast *st = body->items[i];
    if (*returned) {
      diag_error(st->loc, "statement after 'return' is never run");
      break;
    }
    s->b.loc = st->loc;
    switch (st->kind) {
    case AST_ASSIGN:
      if (f->where == IN_OPTIMIZER && !strcmp(st->name, "param")) {
        Value v = eval(s, f, st->a);
        s->param_new = v.kind == V_ERROR ? NULL : as_node(s, v);
        if (s->param_new) bind(f, "param", tensor(s->param_new));
      } else {
        bind(f, st->name, eval(s, f, st->a));
      }
      break;
    case AST_AUGASSIGN: {
      Binding *old = lookup_local(f, st->name);
      if (!old) {
        unknown_name(s, f, st->loc, "name", st->name);
        break;
      }
      Value rhs = eval(s, f, st->a);
      static const OpKind ops[] = {['+'] = OP_ADD, ['-'] = OP_SUB, ['*'] = OP_MUL, ['/'] = OP_DIV};
      s->b.loc = st->loc;
      Value v = binary(s, ops[st->op & 127], old->value, rhs);
      if (v.kind == V_TENSOR && old->value.kind == V_TENSOR &&
          !shape_eq(v.node->shape, old->value.node->shape)) {
        diag_error(st->loc, "'%s %c=' would change the shape of '%s' from %s to %s", st->name,
                   st->op, st->name, shape_str(old->value.node->shape, true),
                   shape_str(v.node->shape, true));
        v = ERR;
      }
      if (f->where == IN_OPTIMIZER && !strcmp(st->name, "param"))
        s->param_new = v.kind == V_TENSOR ? v.node : NULL;
      old->value = v;
      break;
    }
    case AST_PARAM: declare_param(s, f, st); break;
    case AST_STATE: {
      if (f->where != IN_OPTIMIZER) {
        diag_error(st->loc, "'state' without a shape is only allowed in an optimizer; a layer's "
                 "state needs one, like state mean: [n] = zeros");
        break;
      }
      Value init = eval(s, f, st->a);
      if (init.kind == V_NUM && init.num != 0)
        diag_error(st->a->loc, "optimizer state starts at 0 for now");
      const ParamDecl *p = &s->u->params[s->param_index];
      Node *n = ir_leaf(&s->b, OP_STATE, p->shape, s->n_states, xprintf("%s.%s", p->name, st->name));
      n->io = NN_IO_STATE, n->offset = s->u->state_size;
      s->u->state_size += padded_elems(shape_elems(p->shape, 1));
      s->n_states++;
      bind(f, st->name, tensor(n));
      break;
    }
    case AST_RETURN:
      result = eval(s, f, st->a);
      *returned = true;
      break;
    case AST_REQUIRE: {
      Value c = eval(s, f, st->a);
      if (c.kind == V_ERROR) break;
      if (c.kind != V_NUM)
        diag_error(st->a->loc, "'require' needs a condition known at compile time (numbers, "
                   "settings, shapes), not a tensor");
      else if (!c.num) {
        require_failed(s, f, st);
        *returned = true; /* the rest of the body would only pile up errors on this one */
        return ERR;
      }
      break;
    }
    case AST_REPEAT: { /* the body n times in this scope: layers called in it number on */
      Value n = eval(s, f, st->a);
      if (n.kind == V_ERROR) break;
      if (!is_int(n) || n.num < 0 || n.num > 10000) {
        diag_error(st->a->loc, "'repeat' needs a count: an integer from 0 to 10000");
        break;
      }
      uint32_t site = f->site;
      for (int k = 0; k < (int)n.num; k++) {
        int errors = diag_error_count();
        bool inner = false;
        /* random ops draw anew in every repetition (the first keeps the enclosing salts) */
        f->site = k ? (site ^ (uint32_t)k) * 16777619u : site;
        run_body(s, f, &st->body, &inner);
        f->site = site;
        if (inner) {
          diag_error(st->loc, "'return' inside 'repeat' is not supported");
          break;
        }
        if (diag_error_count() > errors) break; /* report a bad body once, not n times */
      }
      break;
    }
    case AST_STEP:
      diag_error(st->loc, "a 'step' belongs directly in a train block");
      break;
    default: unreachable();
    }
  }
  return result;
}

/* Inlines a fn, layer or model at a call site. */
static Value call_def(Sema *s, Frame *f, const Ast *def, const Ast *call) {
  if (def->kind == AST_OPTIMIZER || def->kind == AST_DATA) {
    diag_error(call->loc, "'%s' is a %s; it cannot be called here", def->name, def_kind(def));
    return ERR;
  }
  for (Frame *p = f; p; p = p->parent)
    if (p->def == def) {
      diag_error(call->loc, "'%s' calls itself; recursion is not supported", def->name);
      return ERR;
    }
  Frame *callee = frame_for(f, def, f->prefix);
  callee->call = call->loc;
  /* models start a path: the same model on the same input is the same computation */
  callee->site = def->kind == AST_MODEL ? 2166136261u : site_hash(f->site, call->loc);
  if (!bind_args(s, f, callee, def, call)) return ERR;
  if (def->kind == AST_LAYER) { /* dense0, dense1, ... per enclosing scope, in call order */
    Counter *c = f->counters;
    while (c && strcmp(c->layer, def->name)) c = c->next;
    if (!c) {
      c = xalloc(sizeof *c);
      c->layer = def->name, c->next = f->counters, f->counters = c;
    }
    callee->prefix = xprintf("%s%s%d.", f->prefix, def->name, c->count++);
  } else if (def->kind == AST_MODEL) {
    callee->prefix = s->several_models ? xprintf("%s.", def->name) : "";
  } else { /* a fn's layers are named as if called from its caller */
    callee->counters = f->counters;
  }
  bool returned;
  int errors = diag_error_count();
  const Ast *outer = s->model;
  if (def->kind == AST_MODEL) s->model = def;
  Value r = run_body(s, callee, &def->body, &returned);
  s->model = outer;
  bool told = s->required_at.file == call->loc.file && s->required_at.line == call->loc.line &&
              s->required_at.col == call->loc.col;
  if (diag_error_count() > errors && def->loc.file != call->loc.file && !told) /* the prelude */
    diag_note(call->loc, "in this call to '%s'", def->name);
  if (def->kind == AST_FN) f->counters = callee->counters;
  for (Buffer *bf = callee->buffers; bf; bf = bf->next) { /* `running_mean = ...` */
    Binding *b = lookup_local(callee, bf->name);
    if (!b || b->value.kind != V_TENSOR) continue;
    const ParamDecl *pd = &s->u->params[bf->index];
    Node *v = b->value.node;
    if (batched(v) || !shape_broadcast(v->shape, pd->shape, &(Shape){0}) ||
        v->shape.rank > pd->shape.rank) {
      diag_error(bf->loc, "state '%s' is %s, but its new value is %s: it must be one value for "
                 "the whole batch (batch_mean() averages over it)", bf->name,
                 shape_str(pd->shape, true), shape_str(v->shape, false));
      continue;
    }
    s->buffer_next[bf->index] = v;
  }
  if (!returned) {
    diag_error(def->loc, "'%s' has no 'return'", def->name);
    return ERR;
  }
  /* A model's output is per sample: one that does not depend on x (parameters alone) is the
   * same for every sample. Left unbatched, its first axis was taken for the batch (a [4, 5]
   * output was 4 samples of [5]) and the forward wrote past the output buffer. */
  if (def->kind == AST_MODEL && r.kind == V_TENSOR && !batched(r.node)) {
    s->b.loc = def->loc;
    if (!(r.node = to_batched(s, r.node))) return ERR;
  }
  if (def->kind == AST_MODEL && r.kind == V_TENSOR && def->a && def->a->has_dims) {
    Shape want;
    Frame global = {.prefix = ""};
    if (dims_of(s, &global, def->a, &want) && !shape_eq(batch_of(want), r.node->shape) &&
        !shape_eq(want, r.node->shape)) {
      diag_error(def->a->loc, "model '%s' returns %s but is declared to return %s", def->name,
                 shape_str(r.node->shape, true), shape_str(batch_of(want), true));
      return ERR;
    }
  }
  return r;
}

static const Ast *find_def(Sema *s, Loc loc, const char *name, AstKind kind, const char *what);

/* params(m): every trained parameter of model m (not its state), flattened and joined into
 * one vector, for regularisers such as l2(params(m)). The model must have been called. */
static Value model_params(Sema *s, const Ast *call) {
  const Ast *arg = call->kids.len == 1 ? call->kids.items[0] : NULL;
  if (!arg || arg->kind != AST_NAME) {
    diag_error(call->loc, "params takes the name of a model, like params(net)");
    return ERR;
  }
  const Ast *m = find_def(s, arg->loc, arg->name, AST_MODEL, "model");
  if (!m) return ERR;
  Builder *b = &s->b;
  b->loc = call->loc;
  Node *all = NULL;
  for (int p = 0; p < s->u->n_params; p++) {
    const ParamDecl *pd = &s->u->params[p];
    if (s->param_model[p] != m || pd->buffer) continue;
    Node *leaf = ir_leaf(b, OP_PARAM, pd->shape, p, pd->name);
    leaf->io = NN_IO_PARAM, leaf->offset = pd->offset;
    Node *flat = ir_reshape(b, leaf, shape_of(1, (int)shape_elems(pd->shape, 1)));
    all = all ? ir_concat(b, all, flat, 0) : flat;
  }
  if (!all) {
    diag_error(arg->loc, "model '%s' has no parameters here (is it called in this train "
               "block?)", m->name);
    return ERR;
  }
  return tensor(all);
}

/* ---- scan: recurrences ---- */

/* A copy of a counter list, so every step of a scan names its layers as the first did. */
static Counter *copy_counters(const Counter *c) {
  if (!c) return NULL;
  Counter *r = xalloc(sizeof *r);
  *r = *c;
  r->next = copy_counters(c->next);
  return r;
}

/* Joins pieces[lo..hi) along `axis` as a balanced tree of concats, so T pieces cost
 * O(T log T) copies rather than the O(T^2) of a chain. */
static Node *stack_tree(Sema *s, Node **pieces, int lo, int hi, int axis) {
  if (hi - lo == 1) return pieces[lo];
  int mid = lo + (hi - lo) / 2;
  Node *x = stack_tree(s, pieces, lo, mid, axis), *y = stack_tree(s, pieces, mid, hi, axis);
  return x && y ? ir_concat(&s->b, x, y, axis) : NULL;
}

/* Cuts xs, which holds steps [lo, hi) along `axis`, into one piece per step (pieces[t], the
 * axis kept at length 1) by halving it again and again. The gradient of a slice is a pad to
 * the sliced tensor's size, so slicing each step straight from the whole sequence would make
 * backpropagation pad and add T full sequences (O(T^2)); halving costs O(T log T), as
 * stack_tree does for the way back. */
static void split_tree(Sema *s, Node *xs, int axis, int64_t lo, int64_t hi, Node **pieces) {
  if (hi - lo == 1) {
    pieces[lo] = xs;
    return;
  }
  int64_t mid = lo + (hi - lo) / 2, a[MAX_RANK], z[MAX_RANK], st[MAX_RANK];
  for (int i = 0; i < xs->shape.rank; i++) a[i] = 0, z[i] = xs->shape.dim[i], st[i] = 1;
  z[axis] = mid - lo;
  split_tree(s, ir_slice(&s->b, xs, a, z, st), axis, lo, mid, pieces);
  a[axis] = mid - lo, z[axis] = hi - lo;
  split_tree(s, ir_slice(&s->b, xs, a, z, st), axis, mid, hi, pieces);
}

/* scan(cell, xs, init, extra..., last = 0, reverse = 0, key = v...): a recurrence over the
 * first per-sample axis of xs. Step i calls cell(xs[i], state, extra..., key = v...) and its
 * result is the next state; init is the first. The result is every step's state stacked
 * along a new first axis ([t, ...state]), in the order of xs, or with last = 1 the final
 * state. reverse = 1 runs from the end of xs to its start. cell is a fn or a layer; a layer
 * owns one set of parameters that every step shares.
 *
 * The recurrence is unrolled here, over the sequence length known at compile time, so the
 * graph stays a DAG of primitives and autodiff differentiates it as backpropagation through
 * time with no special case. */
static Value call_scan(Sema *s, Frame *f, const Ast *call) {
  const Ast *cell_ast = call->kids.len ? call->kids.items[0] : NULL;
  const Ast *cell = cell_ast && cell_ast->kind == AST_NAME ? lookup_def(s, cell_ast->name) : NULL;
  if (!cell || (cell->kind != AST_FN && cell->kind != AST_LAYER)) {
    diag_error(cell_ast ? cell_ast->loc : call->loc,
               "scan's first argument is the step: the name of a fn or layer, like "
               "scan(rnn_cell, xs, h0)");
    return ERR;
  }
  Ast rest = *call; /* the arguments after the cell, evaluated once */
  rest.kids.items++, rest.kids.len--;
  Args a;
  if (!eval_args(s, f, &rest, &a, false)) return ERR;
  int positional = 0;
  const Value *last = NULL, *reverse = NULL;
  for (int i = 0; i < a.n; i++) {
    if (a.v[i].kind == V_ERROR) return ERR;
    positional += !a.kw[i];
    if (a.kw[i] && !strcmp(a.kw[i], "last")) last = &a.v[i];
    if (a.kw[i] && !strcmp(a.kw[i], "reverse")) reverse = &a.v[i];
  }
  if (positional < 2) {
    diag_error(call->loc, "scan needs a sequence and an initial state after the step, like "
               "scan(%s, xs, h0)", cell->name);
    return ERR;
  }
  for (const Value *o = last; o; o = o == last ? reverse : NULL)
    if (o && (!is_int(*o) || o->num < 0 || o->num > 1)) {
      diag_error(kwarg_loc(&a, o == last ? "last" : "reverse", call->loc),
                 "scan: '%s' must be 0 or 1", o == last ? "last" : "reverse");
      return ERR;
    }
  Node *xs = a.v[0].kind == V_TENSOR ? a.v[0].node : NULL;
  if (!xs || sample_rank(xs) < 1) {
    diag_error(a.ast[0]->loc, "scan runs over a sequence: a tensor with a first axis of steps, "
               "got %s", xs ? shape_str(xs->shape, true) : "a number");
    return ERR;
  }
  if (a.v[1].kind != V_TENSOR) {
    diag_error(a.ast[1]->loc, "scan's initial state must be a tensor, like zeros([units])");
    return ERR;
  }
  Builder *b = &s->b;
  int axis = batched(xs);
  int64_t steps = xs->shape.dim[axis];
  if (steps > 10000) {
    diag_error(a.ast[0]->loc, "scan over %lld steps: at most 10000 are unrolled",
               (long long)steps);
    return ERR;
  }
  /* the call made at each step: cell(__x, __s, __a2, ..., key = __a5, ...), its names bound
   * in a frame of the caller's prefix */
  Ast *step_call = ast_new(AST_CALL, call->loc);
  step_call->name = cell->name;
  const char **names = xalloc((a.n + 2) * sizeof *names);
  for (int i = 0; i < a.n; i++) {
    if (a.kw[i] && (!strcmp(a.kw[i], "last") || !strcmp(a.kw[i], "reverse"))) continue;
    names[i] = xprintf("scan arg %d", i);
    Ast *ref = ast_new(AST_NAME, a.ast[i]->loc);
    ref->name = names[i];
    if (a.kw[i]) {
      Ast *kw = ast_new(AST_KWARG, a.ast[i]->loc);
      kw->name = a.kw[i], kw->a = ref;
      ref = kw;
    }
    ast_push(&step_call->kids, ref);
  }
  Node **outs = xalloc(steps * sizeof *outs), **pieces = xalloc(steps * sizeof *pieces);
  b->loc = call->loc;
  split_tree(s, xs, axis, 0, steps, pieces);
  Node *state = a.v[1].node;
  Shape state_shape = sample_shape(state);
  Counter *counters = f->counters;
  bool rev = reverse && reverse->num;
  int errors = diag_error_count();
  for (int64_t k = 0; k < steps; k++) {
    int64_t t = rev ? steps - 1 - k : k;
    b->loc = call->loc;
    Shape one = xs->shape; /* xs[t]: the step axis dropped */
    memmove(one.dim + axis, one.dim + axis + 1, (one.rank - axis - 1) * sizeof *one.dim);
    one.rank--;
    Node *x_t = ir_reshape(b, pieces[t], one);
    /* .site: random ops in the cell draw anew at every step (each step is its own call) */
    Frame step = {.prefix = f->prefix, .counters = copy_counters(f->counters), .parent = f,
                  .where = f->where, .site = (f->site ^ (uint32_t)t) * 16777619u};
    for (int i = 0; i < a.n; i++)
      if (names[i]) bind(&step, names[i], i == 0 ? tensor(x_t) : i == 1 ? tensor(state) : a.v[i]);
    Value r = call_def(s, &step, cell, step_call);
    if (diag_error_count() > errors || r.kind == V_ERROR) return ERR;
    counters = step.counters;
    if (r.kind != V_TENSOR || !shape_eq(sample_shape(r.node), state_shape)) {
      diag_error(call->loc, "scan: the step '%s' must return the state's shape %s, got %s",
                 cell->name, shape_str(state_shape, true),
                 r.kind == V_TENSOR ? shape_str(r.node->shape, true) : "a number");
      return ERR;
    }
    state = outs[t] = r.node;
  }
  f->counters = counters;
  if (last && last->num) return tensor(state);
  /* every step's state gets an axis of 1 where the steps go, then they are joined along it */
  b->loc = call->loc;
  bool any_batched = false;
  for (int64_t t = 0; t < steps; t++) any_batched |= batched(outs[t]);
  for (int64_t t = 0; t < steps; t++) {
    Node *o = any_batched ? to_batched(s, outs[t]) : outs[t];
    if (!o) return ERR;
    Shape with = o->shape;
    memmove(with.dim + any_batched + 1, with.dim + any_batched,
            (with.rank - any_batched) * sizeof *with.dim);
    with.dim[any_batched] = 1, with.rank++;
    if (with.rank > MAX_RANK) {
      diag_error(call->loc, "scan: %s has too many axes to stack", shape_str(o->shape, true));
      return ERR;
    }
    outs[t] = ir_reshape(b, o, with);
  }
  return tensor(stack_tree(s, outs, 0, (int)steps, any_batched));
}

static Value eval(Sema *s, Frame *f, const Ast *e) {
  if (++s->depth > 200) {
    diag_error(e->loc, "expression nested too deeply");
    s->depth--;
    return ERR;
  }
  Value r = ERR;
  switch (e->kind) {
  case AST_NUM: r = number(e->num); break;
  case AST_STR: r = (Value){V_STR, .str = e->name}; break;
  case AST_NAME: {
    Binding *b = lookup_local(f, e->name);
    if (b) {
      r = b->value;
      break;
    }
    const Ast *d = lookup_def(s, e->name);
    if (!d && !strcmp(e->name, "training")) { /* 1 in the train step, 0 in eval and predict */
      s->reads_mode = true;
      r = number(s->training);
      break;
    }
    if (d)
      diag_error(e->loc, "'%s' is a %s, not a value", e->name, def_kind(d));
    else
      unknown_name(s, f, e->loc, "name", e->name);
    break;
  }
  case AST_NEG: {
    Value v = eval(s, f, e->a);
    s->b.loc = e->loc;
    r = negate(s, v);
    break;
  }
  case AST_BINOP: {
    Value x = eval(s, f, e->a), y = eval(s, f, e->b);
    s->b.loc = e->loc;
    if (e->op == '@') {
      r = matmul(s, x, y, e->loc);
      break;
    }
    if (x.kind == V_NUM && y.kind == V_NUM) {
      double a = x.num, c = y.num;
      switch (e->op) {
      case '+': r = number(a + c); break;
      case '-': r = number(a - c); break;
      case '*': r = number(a * c); break;
      case '/': r = number(a / c); break;
      case '^': r = number(pow(a, c)); break;
      case '>': r = number(a > c); break;
      case '<': r = number(a < c); break;
      case 'G': r = number(a >= c); break;
      case 'L': r = number(a <= c); break;
      default: unreachable();
      }
      break;
    }
    if (x.kind == V_STR || y.kind == V_STR) {
      diag_error(e->loc, "a string cannot be used in arithmetic");
      break;
    }
    switch (e->op) {
    case '+': r = binary(s, OP_ADD, x, y); break;
    case '-': r = binary(s, OP_SUB, x, y); break;
    case '*': r = binary(s, OP_MUL, x, y); break;
    case '/': r = binary(s, OP_DIV, x, y); break;
    case '^': r = binary(s, OP_POW, x, y); break;
    case '>': r = binary(s, OP_CMPGT, x, y); break;
    case '<': r = binary(s, OP_CMPGT, y, x); break;
    case 'G': r = binary(s, OP_SUB, number(1), binary(s, OP_CMPGT, y, x)); break;
    case 'L': r = binary(s, OP_SUB, number(1), binary(s, OP_CMPGT, x, y)); break;
    default: unreachable();
    }
    break;
  }
  case AST_CALL: {
    Binding *local = lookup_local(f, e->name);
    const Ast *d = lookup_def(s, e->name);
    if (local) {
      diag_error(e->loc, "'%s' is a value, not a function", e->name);
    } else if (d) {
      r = call_def(s, f, d, e);
    } else if (!strcmp(e->name, "params")) {
      r = model_params(s, e);
    } else if (!strcmp(e->name, "scan")) {
      r = call_scan(s, f, e);
    } else if (!call_builtin(s, f, e, &r)) {
      unknown_name(s, f, e->loc, "function", e->name);
    }
    break;
  }
  case AST_LIST: diag_error(e->loc, "a list is not allowed here"); break;
  case AST_KWARG: diag_error(e->loc, "a keyword argument is not allowed here"); break;
  default: unreachable();
  }
  s->depth--;
  return r;
}

/* ---- definitions ---- */

static void add_defs(Sema *s, Ast *program) {
  for (int i = 0; i < program->kids.len; i++) {
    Ast *it = program->kids.items[i];
    if (it->kind == AST_USE || it->kind == AST_TRAIN) continue;
    Def *old = NULL;
    for (Def *d = s->defs; d; d = d->next)
      if (!strcmp(d->name, it->name)) old = d;
    if (old && old->ast->loc.file == it->loc.file) {
      diag_error(it->loc, "'%s' is already defined", it->name);
      diag_note(old->ast->loc, "previous definition is here");
      continue;
    }
    if (old) { /* a user's definition replaces the prelude's */
      old->ast = it;
      continue;
    }
    Def *d = xalloc(sizeof *d);
    d->name = it->name, d->ast = it, d->next = s->defs;
    s->defs = d;
  }
}

/* ---- data ---- */

static int64_t shape_size(Shape s) { return shape_elems(s, 1); }

static bool const_number(Sema *s, const Ast *e, double *out) {
  Frame global = {.prefix = ""};
  Value v = eval(s, &global, e);
  if (v.kind == V_NUM) {
    *out = v.num;
    return true;
  }
  if (v.kind != V_ERROR) diag_error(e->loc, "expected a number");
  return false;
}

/* A path in a data declaration: relative to the .nn file, stored absolute, so the program
 * runs from any folder. */
static const char *data_file(const char *path, const char *source) {
  if (path[0] == '/') return path;
  const char *slash = strrchr(source, '/');
  const char *dir = slash ? xstrndup(source, slash - source) : ".";
  char *abs = realpath(dir, NULL);
  const char *r = xprintf("%s/%s", abs ? abs : dir, path);
  free(abs);
  return r;
}

/* table { [x...] -> [y...] ... } */
static bool load_table(Sema *s, const Ast *data, DataSpec *d, Shape *y) {
  const Ast *src = data->a;
  int64_t nx = shape_size(s->u->x_shape);
  int nrows = src->kids.len;
  if (!nrows) {
    diag_error(src->loc, "table '%s' has no rows", data->name);
    return false;
  }
  int64_t ny = src->kids.items[0]->b->kids.len;
  *y = shape_of(1, (int)ny);
  d->kind = NN_DATA_TABLE, d->rows = nrows, d->scale = 1;
  d->table = xalloc(nrows * (nx + ny) * sizeof(double));
  bool ok = true;
  for (int r = 0; r < nrows; r++) {
    const Ast *row = src->kids.items[r];
    if (row->a->kids.len != nx) {
      diag_error(row->a->loc, "row has %d inputs but model '%s' takes %s (%lld values)",
                 row->a->kids.len, s->u->model, shape_str(s->u->x_shape, true), (long long)nx);
      ok = false;
      continue;
    }
    if (row->b->kids.len != ny) {
      diag_error(row->b->loc, "row has %d targets but the first row has %lld", row->b->kids.len,
                 (long long)ny);
      ok = false;
      continue;
    }
    for (int i = 0; i < nx + ny; i++) {
      const Ast *cell = i < nx ? row->a->kids.items[i] : row->b->kids.items[i - nx];
      ok &= const_number(s, cell, &d->table[r * (nx + ny) + i]);
    }
  }
  return ok;
}

/* csv("file", header = 1, targets = 1, labels = 0), idx("images.gz", "labels.gz",
 * scale = 1/255) and npy("x.npy", "y.npy", scale = 1, targets = k): files first, then options.
 * idx's labels are class indices; so are npy's unless `targets = k` makes them [k] vectors. */
static bool load_files(Sema *s, const Ast *src, DataSpec *d, Shape *y, const char *source) {
  bool is_idx = !strcmp(src->name, "idx"), is_npy = !strcmp(src->name, "npy");
  static const char *const csv_keys[] = {"header", "targets", "labels", "scale"};
  static const char *const idx_keys[] = {"scale"};
  static const char *const npy_keys[] = {"targets", "scale"};
  static const int idx_opt[] = {3}, npy_opt[] = {1, 3}, csv_opt[] = {0, 1, 2, 3};
  const char *const *keys = is_idx ? idx_keys : is_npy ? npy_keys : csv_keys;
  const int *opt_at = is_idx ? idx_opt : is_npy ? npy_opt : csv_opt;
  int n_keys = is_idx ? 1 : is_npy ? 2 : 4, n_files = is_idx || is_npy ? 2 : 1, files = 0;
  const char *want = is_idx ? "the images file and the labels file"
                     : is_npy ? "the inputs file and the targets file" : "a file name";
  double opt[4] = {0, 1, 0, 1}; /* header, targets, labels, scale */
  bool targets_set = false;
  const char *path[2] = {NULL, NULL};
  for (int i = 0; i < src->kids.len; i++) {
    const Ast *a = src->kids.items[i];
    if (a->kind != AST_KWARG) {
      if (files == n_files || a->kind != AST_STR) {
        diag_error(a->loc, "%s() takes %s first, as strings", src->name, want);
        return false;
      }
      path[files++] = a->name;
      continue;
    }
    int k = -1;
    for (int j = 0; j < n_keys; j++)
      if (!strcmp(keys[j], a->name)) k = j;
    if (k < 0) {
      const char *close = diag_did_you_mean(a->name, keys, n_keys);
      diag_error(a->loc, "%s() has no option '%s'%s", src->name, a->name,
                 close ? xprintf("; did you mean '%s'?", close) : "");
      return false;
    }
    targets_set |= opt_at[k] == 1;
    if (!const_number(s, a->a, &opt[opt_at[k]])) return false;
  }
  if (files < n_files && !(is_idx && files == 1)) { /* images alone: no targets (a GAN) */
    diag_error(src->loc, "%s() needs %s", src->name,
               is_idx ? "an images file and a labels file"
               : is_npy ? "an inputs file and a targets file" : "a file name");
    return false;
  }
  if (opt[1] < 1 || opt[1] != floor(opt[1]) || opt[1] > 1e6) {
    diag_error(src->loc, "targets must be a positive integer");
    return false;
  }
  d->kind = is_idx ? NN_DATA_IDX : is_npy ? NN_DATA_NPY : NN_DATA_CSV;
  d->path = data_file(path[0], source);
  d->labels = path[1] ? data_file(path[1], source) : NULL;
  d->header = opt[0] != 0, d->scale = opt[3];
  /* class labels are one number per sample: a per-sample scalar */
  bool labels = is_idx || (is_npy && !targets_set) || opt[2] != 0;
  *y = labels ? (Shape){0} : shape_of(1, (int)opt[1]);
  if (!is_idx && !is_npy && opt[2] != 0 && opt[1] != 1) {
    diag_error(src->loc, "labels = 1 needs targets = 1 (one class index per row)");
    return false;
  }
  return true;
}

/* text("file.txt", context = t, stride = t): byte-level language modelling. The file is cut
 * into windows of t bytes starting every `stride` bytes (t: one after the other; 1: every
 * window); a sample's x is a window's byte ids (0..255), its y the ids one byte further on
 * (the next byte at every position). The model's input must be [t]. */
static bool load_text(Sema *s, const Ast *src, DataSpec *d, Shape *y, const char *source) {
  const char *path = NULL;
  double context = 0, stride = 0;
  for (int i = 0; i < src->kids.len; i++) {
    const Ast *a = src->kids.items[i];
    bool is_context = a->kind == AST_KWARG && !strcmp(a->name, "context");
    if (a->kind == AST_STR && !path && i == 0) {
      path = a->name;
    } else if (is_context || (a->kind == AST_KWARG && !strcmp(a->name, "stride"))) {
      double *v = is_context ? &context : &stride;
      if (!const_number(s, a->a, v)) return false;
      if (*v < 1 || *v != floor(*v) || *v > 1e7) {
        diag_error(a->a->loc, "text(): %s must be a positive integer", a->name);
        return false;
      }
    } else {
      diag_error(a->loc, "text() takes a file name, context = N and stride = S, like "
                 "text(\"input.txt\", context = 64)");
      return false;
    }
  }
  if (!path || !*path) {
    diag_error(src->loc, "text() needs a file name");
    return false;
  }
  Shape x = s->u->x_shape;
  if (x.rank != 1 || (context && x.dim[0] != (int64_t)context)) {
    diag_error(src->loc, "text(%s) gives samples of %lld byte ids, but the model takes %s",
               context ? xprintf("context = %g", context) : "...",
               (long long)(context ? (int64_t)context : x.dim[0]), shape_str(x, true));
    return false;
  }
  d->kind = NN_DATA_TEXT, d->path = data_file(path, source), d->scale = 1;
  d->stride = stride ? (int64_t)stride : x.dim[0];
  *y = x;
  return true;
}

/* Reads a data declaration into d and the per-sample target shape into y. */
static bool load_data(Sema *s, const Ast *data, DataSpec *d, Shape *y, const char *source) {
  const Ast *src = data->a;
  d->name = data->name;
  if (src->kind == AST_TABLE) return load_table(s, data, d, y);
  if (src->kind == AST_CALL && (!strcmp(src->name, "csv") || !strcmp(src->name, "idx") ||
                                !strcmp(src->name, "npy")))
    return load_files(s, src, d, y, source);
  if (src->kind == AST_CALL && !strcmp(src->name, "text")) return load_text(s, src, d, y, source);
  diag_error(src->loc, "a data set is table { ... }, csv(\"file\"), idx(\"images\", "
             "\"labels\"), npy(\"inputs.npy\", \"targets.npy\") or text(\"file\", context = N)");
  return false;
}

/* ---- the optimizer: inlined once per parameter into the update graph ---- */

/* Gradient clipping, applied before the optimizer sees `grad`: by global norm (PyTorch's
 * clip_grad_norm_: scale every gradient by min(1, max_norm / (norm + 1e-6))), then by value.
 * The limits are hyperparameters, so `--set clip_norm=5` works at run time. */
static Node *clip_scale(Sema *s, Node *max_norm) {
  Builder *b = &s->b;
  Node *total = NULL;
  for (int p = 0; p < s->u->n_params; p++) {
    const ParamDecl *pd = &s->u->params[p];
    if (pd->buffer) continue; /* not a gradient */
    if (pd->frozen) continue; /* it has no gradient, as if it were not a parameter */
    Node *g = ir_leaf(b, OP_GRAD, pd->shape, p, pd->name);
    g->io = NN_IO_GRAD, g->offset = pd->offset;
    Node *sq = ir_reshape(b, ir_reduce(b, OP_SUM, ir_mul(b, g, g), (1u << pd->shape.rank) - 1),
                          (Shape){0});
    total = total ? ir_add(b, total, sq) : sq;
  }
  if (!total) return NULL;
  Node *norm = ir_add(b, ir_unary(b, OP_SQRT, total), ir_const(b, 1e-6));
  return ir_binary(b, OP_MIN, ir_div(b, max_norm, norm), ir_const(b, 1));
}

/* A learning-rate schedule: a fn of (lr, t, total, hyperparameters...) whose result replaces
 * the optimizer's lr. Its hyperparameters (defaults overridden by the call) join the
 * optimizer's; t is the updates before this one, total those of the whole run. Returns the
 * schedule's hyperparameters' frame, or NULL after an error. */
static Frame *schedule_hypers(Sema *s, const Ast *call, const Ast *def) {
  if (def->formals.len < 3) {
    diag_error(call->loc, "a schedule is a fn of (lr, t, total, ...); '%s' takes %d arguments",
               def->name, def->formals.len);
    return NULL;
  }
  Ast call2 = *call, zero = {.kind = AST_NUM, .loc = call->loc};
  call2.kids = (AstList){0};
  for (int i = 0; i < 3; i++) ast_push(&call2.kids, &zero); /* lr, t, total: bound later */
  for (int i = 0; i < call->kids.len; i++) ast_push(&call2.kids, call->kids.items[i]);
  Frame *f = xalloc(sizeof *f);
  f->prefix = "", f->where = IN_FN, f->def = def;
  return bind_args(s, f, f, def, &call2) ? f : NULL;
}

/* check + the sum of `zeros`, values times 0 (check NULL: none yet): 0 while every value is
 * finite, NaN from one that is not (NN_HYPER_CHECK). Summed in any order, in the loop that
 * writes the values (fuse.c takes a reduction into its producer's loop), it is a few vector
 * adds an element in the update's loop instead of a pass of its own over the gradient. */
static Node *add_check(Builder *b, Node *check, Node *zeros) {
  Node *sum = zeros->shape.rank ? ir_sum_any_order(b, zeros) : zeros;
  return check ? ir_add(b, check, sum) : sum;
}

/* The update graph (u->update) of optimizer `opt` called as `call`, with clipping and a
 * schedule. Its hyperparameters are appended to u's, named with `prefix` (a step's "d.", or
 * ""); its slots after them (the step count, the total) are numbered as if no more followed,
 * which renumber_slots corrects when a later step adds some. */
static bool build_update(Sema *s, const Ast *call, const Ast *opt, double clip_norm,
                         double clip_value, const Ast *sched_call, const Ast *sched,
                         const char *prefix) {
  Unit *u = s->u;
  Frame *sh = sched ? schedule_hypers(s, sched_call, sched) : NULL;
  if (sched && !sh) return false;
  int n_sched = sched ? sched->formals.len - 3 : 0;
  /* hyperparameters: the optimizer's formals, defaults overridden by the call, then the
   * clipping limits */
  Frame hyper = {.prefix = "", .where = IN_OPTIMIZER, .def = opt};
  if (!bind_args(s, &hyper, &hyper, opt, call)) return false;
  int n_opt = opt->formals.len, base = u->n_hyper;
  int n_new = n_opt + (clip_norm > 0) + (clip_value > 0) + n_sched;
  const char **names = xalloc((n_new + 1) * sizeof *names); /* as the optimizer sees them */
  double *defaults = xalloc((n_new + 1) * sizeof *defaults);
  for (int i = 0; i < n_opt; i++) {
    const Ast *fm = opt->formals.items[i];
    Binding *b = lookup_local(&hyper, fm->name);
    if (b->value.kind != V_NUM) {
      diag_error(fm->loc, "hyperparameter '%s' must be a number", fm->name);
      return false;
    }
    names[i] = fm->name;
    defaults[i] = b->value.num;
  }
  int k = n_opt, clip_norm_at = -1, clip_value_at = -1;
  if (clip_norm > 0) clip_norm_at = k, names[k] = "clip_norm", defaults[k++] = clip_norm;
  if (clip_value > 0) clip_value_at = k, names[k] = "clip_value", defaults[k++] = clip_value;
  int sched_at = k;
  for (int i = 0; i < n_sched; i++, k++) {
    const Ast *fm = sched->formals.items[3 + i];
    Binding *b = lookup_local(sh, fm->name);
    for (int j = 0; j < k; j++)
      if (!strcmp(names[j], fm->name)) {
        diag_error(sched_call->loc, "schedule '%s' and optimizer '%s' both have a "
                   "hyperparameter '%s'", sched->name, opt->name, fm->name);
        return false;
      }
    if (b->value.kind != V_NUM) {
      diag_error(fm->loc, "hyperparameter '%s' must be a number", fm->name);
      return false;
    }
    names[k] = fm->name, defaults[k] = b->value.num;
  }
  const char **all_names = xalloc((base + n_new + 1) * sizeof *all_names);
  double *all_defaults = xalloc((base + n_new + 1) * sizeof *all_defaults);
  for (int i = 0; i < base; i++)
    all_names[i] = u->hyper_names[i], all_defaults[i] = u->hyper_defaults[i];
  for (int i = 0; i < n_new; i++)
    all_names[base + i] = xprintf("%s%s", prefix, names[i]), all_defaults[base + i] = defaults[i];
  u->hyper_names = all_names, u->hyper_defaults = all_defaults, u->n_hyper = base + n_new;
  u->update = ir_graph("update");
  s->b = (Builder){u->update, opt->loc, true};
  Node **hypers = xalloc((n_new + 1) * sizeof *hypers); /* by local index; then `step` */
  for (int i = 0; i < n_new; i++)
    hypers[i] = ir_scalar(&s->b, OP_HYPER, base + i, u->hyper_names[base + i]);
  hypers[n_new] = ir_scalar(&s->b, OP_HYPER, u->n_hyper, "step");
  Node *scale = clip_norm_at >= 0 ? clip_scale(s, hypers[clip_norm_at]) : NULL;
  Node *lr = NULL; /* the scheduled learning rate */
  Node *check = NULL; /* NN_HYPER_CHECK: add_check of every value the update writes */
  if (sched) {
    Frame sf = {.prefix = "", .where = IN_FN, .def = sched};
    int lr_at = -1;
    for (int i = 0; i < n_opt; i++)
      if (!strcmp(names[i], "lr")) lr_at = i;
    if (lr_at < 0) {
      diag_error(sched_call->loc, "a schedule sets the learning rate, but optimizer '%s' has "
                 "no 'lr'", opt->name);
      return false;
    }
    s->b.loc = sched_call->loc;
    bind(&sf, sched->formals.items[0]->name, tensor(hypers[lr_at]));
    bind(&sf, sched->formals.items[1]->name,
         tensor(ir_sub(&s->b, hypers[n_new], ir_const(&s->b, 1))));
    bind(&sf, sched->formals.items[2]->name,
         tensor(ir_scalar(&s->b, OP_HYPER, u->n_hyper + NN_HYPER_TOTAL, "total")));
    for (int i = 0; i < n_sched; i++)
      bind(&sf, names[sched_at + i], tensor(hypers[sched_at + i]));
    bool returned;
    Value v = run_body(s, &sf, &sched->body, &returned);
    if (!returned) diag_error(sched->loc, "'%s' has no 'return'", sched->name);
    lr = v.kind == V_TENSOR && v.node->shape.rank == 0 ? v.node : as_node(s, v);
    if (!lr || lr->shape.rank != 0) {
      if (diag_error_count() == 0)
        diag_error(sched_call->loc, "schedule '%s' must give one number", sched->name);
      return false;
    }
    /* for the runtime's log: the rate this step used */
    ir_output(u->update, lr, NN_IO_HYPER, u->n_hyper + NN_HYPER_LR, "lr used");
  }
  for (int p = 0; p < u->n_params; p++) {
    const ParamDecl *pd = &u->params[p];
    if (pd->frozen) continue; /* no update and no optimizer state */
    Frame f = {.prefix = "", .where = IN_OPTIMIZER, .def = opt};
    for (int i = 0; i < n_new; i++) bind(&f, names[i], tensor(hypers[i]));
    bind(&f, "step", tensor(hypers[n_new]));
    if (lr) bind(&f, "lr", tensor(lr));
    s->b.loc = opt->loc;
    Node *pn = ir_leaf(&s->b, OP_PARAM, pd->shape, p, pd->name);
    pn->io = NN_IO_PARAM, pn->offset = pd->offset;
    Node *gn = ir_leaf(&s->b, OP_GRAD, pd->shape, p, pd->name);
    gn->io = NN_IO_GRAD, gn->offset = pd->offset;
    if (pd->buffer) { /* the grad kernel left its next value in its GRAD slot */
      ir_output(u->update, gn, NN_IO_PARAM, pd->offset, xprintf("param %s", pd->name));
      check = add_check(&s->b, check, ir_mul(&s->b, gn, ir_const(&s->b, 0)));
      continue;
    }
    if (scale) gn = ir_mul(&s->b, gn, scale);
    if (clip_value_at >= 0) {
      Node *c = hypers[clip_value_at];
      gn = ir_binary(&s->b, OP_MAX, ir_binary(&s->b, OP_MIN, gn, c), ir_unary(&s->b, OP_NEG, c));
    }
    bind(&f, "param", tensor(pn));
    bind(&f, "grad", tensor(gn));
    s->param_index = p, s->param_new = NULL;
    int first_state = s->n_states;
    bool returned;
    run_body(s, &f, &opt->body, &returned);
    if (returned) diag_error(opt->loc, "an optimizer updates 'param'; it does not return");
    if (!s->param_new) {
      if (diag_error_count() == 0)
        diag_error(opt->loc, "optimizer '%s' never updates 'param'", opt->name);
      return false;
    }
    Node *written = ir_expand(&s->b, s->param_new, pd->shape);
    ir_output(u->update, written, NN_IO_PARAM, pd->offset, xprintf("param %s", pd->name));
    Node *zero = ir_const(&s->b, 0), *zeros = ir_mul(&s->b, written, zero);
    /* each state variable's final value is stored back for the next step */
    for (int k = 0; k < u->update->n_nodes; k++) {
      Node *n = u->update->nodes[k];
      if (n->op != OP_STATE || n->attr.index < first_state) continue;
      const char *local = strrchr(n->name, '.') + 1;
      Binding *b = lookup_local(&f, local);
      if (b && b->value.kind == V_TENSOR && b->value.node != n) {
        Node *next = ir_expand(&s->b, b->value.node, pd->shape);
        ir_output(u->update, next, NN_IO_STATE, n->offset, xprintf("state %s", n->name));
        zeros = ir_add(&s->b, zeros, ir_mul(&s->b, next, zero));
      }
    }
    check = add_check(&s->b, check, zeros);
  }
  if (check) /* renumber_slots moves it up if a later step adds hyperparameters */
    ir_output(u->update, check, NN_IO_HYPER, u->n_hyper + NN_HYPER_CHECK, "check");
  return s->b.ok && diag_error_count() == 0;
}

/* ---- train blocks ---- */

static NnTask task_of(const Ast *loss, double *threshold) {
  while (loss && loss->kind == AST_BINOP) loss = loss->a; /* the first term of a sum */
  *threshold = 0.5;
  if (!loss || loss->kind != AST_CALL) return NN_TASK_REGRESSION;
  /* a loss against something other than the targets (an autoencoder's bce(ae(x), x)) is not
   * a classification of y */
  const Ast *target = loss->kids.len >= 2 ? loss->kids.items[1] : NULL;
  if (target && target->kind == AST_NAME && strcmp(target->name, "y")) return NN_TASK_REGRESSION;
  if (!strcmp(loss->name, "bce")) return NN_TASK_BINARY;
  if (!strcmp(loss->name, "bce_logits")) return *threshold = 0, NN_TASK_BINARY;
  if (!strcmp(loss->name, "cross_entropy") || !strcmp(loss->name, "nll"))
    return NN_TASK_MULTICLASS;
  return NN_TASK_REGRESSION;
}

/* Whether expression e reads the name `name` anywhere. */
static bool mentions(const Ast *e, const char *name) {
  if (!e) return false;
  if (e->kind == AST_NAME && !strcmp(e->name, name)) return true;
  if (mentions(e->a, name) || mentions(e->b, name)) return true;
  for (int i = 0; i < e->kids.len; i++)
    if (mentions(e->kids.items[i], name)) return true;
  return false;
}

/* What the final metrics measure the outputs against: x when the loss's first term is
 * loss(out, x) (an autoencoder) and the outputs have x's size; else y when the loss reads y at
 * all; else nothing, since mse against y would compare numbers the loss never related. */
static NnCompare compare_of(const Unit *u, const Ast *loss) {
  const Ast *first = loss;
  while (first && first->kind == AST_BINOP) first = first->a;
  const Ast *target = first && first->kind == AST_CALL && first->kids.len >= 2
                          ? first->kids.items[1] : NULL;
  if (target && target->kind == AST_NAME && !strcmp(target->name, "x"))
    return shape_elems(u->out_shape, 1) == shape_elems(u->x_shape, 1) ? NN_COMPARE_X
                                                                       : NN_COMPARE_NONE;
  return mentions(loss, "y") ? NN_COMPARE_Y : NN_COMPARE_NONE;
}

/* Looks a definition up by name and kind, reporting what is wrong with it. */
static const Ast *find_def(Sema *s, Loc loc, const char *name, AstKind kind, const char *what) {
  const Ast *d = lookup_def(s, name);
  if (!d) {
    unknown_name(s, NULL, loc, what, name);
    return NULL;
  }
  if (d->kind != kind) {
    diag_error(loc, "'%s' is a %s, not a %s", name, def_kind(d), what);
    return NULL;
  }
  return d;
}

/* A model takes one input with a shape; any further formals are settings with defaults
 * (model gpt(x: f32[64], layers = 4)), bound when the model is called on the data. */
static bool model_input(Sema *s, const Ast *model, Shape *x) {
  if (model->formals.len < 1 || !model->formals.items[0]->a ||
      !model->formals.items[0]->a->has_dims) {
    diag_error(model->loc, "model '%s' must take one input with a shape, like (x: f32[2])",
               model->name);
    return false;
  }
  for (int i = 1; i < model->formals.len; i++)
    if (!model->formals.items[i]->b) {
      diag_error(model->formals.items[i]->loc, "model '%s': setting '%s' needs a default value "
                 "(a model's only input is its first)", model->name,
                 model->formals.items[i]->name);
      return false;
    }
  Frame global = {.prefix = ""};
  return dims_of(s, &global, model->formals.items[0]->a, x);
}

static bool positive_int(Sema *s, const Ast *st, int64_t *out) {
  double v;
  if (!const_number(s, st->a, &v)) return false;
  if (v < 1 || v != floor(v) || v > 1e12) {
    diag_error(st->a->loc, "'%s' must be a positive integer", st->name);
    return false;
  }
  *out = (int64_t)v;
  return true;
}

/* freeze = [dense0, "conv2d1.W"] or a step's update = [disc]: each entry a model (in a
 * block with steps), a layer instance or one parameter, as a name or a string; sets mark[p]
 * for every parameter p under it. Frozen parameters keep their initial or --init-from values:
 * autodiff computes no gradient for them and the optimizer skips them. */
static void mark_params(Sema *s, const Ast *list, const char *key, bool *mark) {
  Unit *u = s->u;
  const Ast *one[1] = {list};
  const Ast *const *items = list->kind == AST_LIST ? (const Ast *const *)list->kids.items : one;
  int n = list->kind == AST_LIST ? list->kids.len : 1;
  /* suggestions: every parameter, and every model's name ("disc" of "disc.dense0.W") */
  const char **names = xalloc((size_t)(2 * u->n_params + 1) * sizeof *names);
  for (int p = 0; p < u->n_params; p++) {
    const char *dot = strchr(u->params[p].name, '.');
    names[p] = u->params[p].name;
    names[u->n_params + p] = dot ? xprintf("%.*s", (int)(dot - names[p]), names[p]) : names[p];
  }
  for (int i = 0; i < n; i++) {
    const Ast *it = items[i];
    if (it->kind != AST_NAME && it->kind != AST_STR) {
      diag_error(it->loc, "%s lists %slayers or parameters, like [%s\"dense1.W\"]", key,
                 s->several_models ? "models, " : "", s->several_models ? "disc, " : "dense0, ");
      continue;
    }
    size_t len = strlen(it->name);
    int hits = 0;
    for (int p = 0; p < u->n_params; p++) {
      const ParamDecl *pd = &u->params[p];
      if (strncmp(pd->name, it->name, len) || (pd->name[len] != '\0' && pd->name[len] != '.'))
        continue;
      mark[p] = true, hits++;
      if (pd->buffer && pd->name[len] == '\0' && !strcmp(key, "freeze"))
        diag_error(it->loc, "freeze: '%s' is layer state, not a trained parameter; it is updated "
                   "in training mode whatever is frozen", it->name);
    }
    if (!hits) {
      const char *close = diag_did_you_mean(it->name, names, 2 * u->n_params);
      diag_error(it->loc, "%s: %s no %slayer or parameter '%s'%s", key,
                 s->several_models ? "this block has" : "the model has",
                 s->several_models ? "model, " : "", it->name,
                 close ? xprintf("; did you mean '%s'?", close) : "");
    }
  }
}

static void freeze(Sema *s, const Ast *list) {
  bool *mark = xalloc((size_t)(s->u->n_params + 1) * sizeof *mark);
  mark_params(s, list, "freeze", mark);
  /* As in PyTorch (requires_grad=False), freezing leaves a layer's state (batchnorm's
   * running statistics) following the training mode: only its parameters stop. */
  for (int p = 0; p < s->u->n_params; p++)
    s->u->params[p].frozen |= mark[p] && !s->u->params[p].buffer;
}

/* early_stop = 3: stop after 3 epochs without improvement of `monitor = "val_loss"` (the
 * default when there is a validation set, else "loss"). Accuracy needs a classifier, which
 * task_of decides from the loss, so the runtime checks that one. */
static void early_stopping(Sema *s, const Ast *patience, const Ast *monitor) {
  static const char *const names[] = NN_MONITOR_NAMES;
  Unit *u = s->u;
  if (patience) positive_int(s, patience, &u->patience);
  if (!monitor) return;
  const Ast *m = monitor->a;
  if (!patience) diag_error(monitor->loc, "'monitor' needs 'early_stop = N' (the patience)");
  if (m->kind != AST_STR) {
    diag_error(m->loc, "monitor is a string, like \"val_loss\"");
    return;
  }
  for (int i = NN_MONITOR_VAL_LOSS; i < NN_MONITOR_COUNT; i++)
    if (!strcmp(m->name, names[i])) u->monitor = (NnMonitor)i;
  if (u->monitor == NN_MONITOR_AUTO) {
    const char *close = diag_did_you_mean(m->name, names + 1, NN_MONITOR_COUNT - 1);
    diag_error(m->loc, "unknown monitor \"%s\" (val_loss, val_accuracy, val_f1, loss or "
               "accuracy)%s", m->name, close ? xprintf("; did you mean \"%s\"?", close) : "");
  } else if (u->monitor <= NN_MONITOR_VAL_F1 && u->val.kind == NN_DATA_NONE && !u->val_split) {
    diag_error(m->loc, "monitor \"%s\" needs a validation set; HINT: add 'validate = 0.1' "
               "or monitor \"loss\"", m->name);
  }
}

/* Starts *g: binds x in f to the input and stores the model's output on it as "out".
 * (The loss's own call of the model on x is the same node: ir.c hash-conses equal nodes.) */
static void bind_y(Sema *s, Frame *f);
static Value start_graph(Sema *s, Frame *f, const char *name, const Ast *model, Graph **g) {
  Unit *u = s->u;
  u->model = model->name;
  *g = ir_graph(name);
  s->b = (Builder){*g, model->loc, true};
  Node *x = ir_leaf(&s->b, OP_INPUT, batch_of(u->x_shape), NN_IO_X, "x");
  x->io = NN_IO_X;
  bind(f, "x", tensor(x));
  if (u->n_steps) return tensor(x); /* a block with steps: its caller decides what is out */
  Ast call = {.kind = AST_CALL, .loc = model->loc, .name = model->name};
  Ast arg = {.kind = AST_NAME, .loc = model->loc, .name = "x"};
  ast_push(&call.kids, &arg);
  Value out = call_def(s, f, model, &call);
  if (out.kind != V_TENSOR) return out;
  u->out_shape = out.node->shape; /* per sample: drop the batch dim */
  memmove(u->out_shape.dim, u->out_shape.dim + 1, --u->out_shape.rank * sizeof(int64_t));
  ir_output(*g, out.node, NN_IO_OUT, 0, "out");
  if (u->has_train) bind_y(s, f);
  return out;
}

/* y: the batch's targets (none for data without labels, e.g. idx() of images alone). */
static void bind_y(Sema *s, Frame *f) {
  Unit *u = s->u;
  if (u->data.kind == NN_DATA_IDX && !u->data.labels) return;
  Node *y = ir_leaf(&s->b, OP_INPUT, batch_of(u->y_shape), NN_IO_Y, "y");
  y->io = NN_IO_Y;
  bind(f, "y", tensor(y));
}

/* The loss of a train block into s->b's graph: a scalar per sample, averaged over the
 * batch. False after an error. */
static bool loss_output(Sema *s, Frame *f, const Ast *st, int slot) {
  s->b.loc = st->a->loc;
  Value loss = eval(s, f, st->a);
  if (loss.kind == V_NUM) {
    diag_error(st->loc, "the loss is a constant; it must depend on the model");
    return false;
  }
  if (loss.kind != V_TENSOR) return false;
  Node *l = loss.node;
  if (sample_rank(l) != 0) {
    diag_error(st->loc, "the loss must be one number per sample, got %s; wrap it in mean()",
               shape_str(l->shape, true));
    return false;
  }
  Builder *b = &s->b;
  if (batched(l)) l = ir_div(b, ir_reshape(b, ir_reduce(b, OP_SUM, l, 1), (Shape){0}),
                             ir_scalar(b, OP_BATCH, 0, "batch"));
  ir_output(b->g, l, NN_IO_LOSS, slot, slot ? xprintf("loss %d", slot) : "loss");
  return true;
}

/* A layer's `state` (a buffer, e.g. batchnorm's running mean) gets the value it had at the
 * end of the layer in the training step as its next value, into its GRAD slot; the update
 * kernel copies it over (so a skipped step changes nothing). Unassigned, it keeps its value. */
static void buffer_outputs(Sema *s) {
  Unit *u = s->u;
  for (int p = 0; p < u->n_params; p++) {
    const ParamDecl *pd = &u->params[p];
    if (!pd->buffer || pd->frozen) continue; /* frozen: a step that does not update it */
    Node *next = s->buffer_next[p];
    if (!next) {
      next = ir_leaf(&s->b, OP_PARAM, pd->shape, p, pd->name);
      next->io = NN_IO_PARAM, next->offset = pd->offset;
    }
    ir_output(s->b.g, ir_expand(&s->b, next, pd->shape), NN_IO_GRAD, pd->offset,
              xprintf("next %s", pd->name));
  }
}

/* schedule = plateau(factor = 0.1, patience = 10, threshold = 1e-4, min_lr = 0): reduce on
 * plateau needs each epoch's validation loss, so the runtime does it (NnModelDesc). */
static bool plateau(Sema *s, const Ast *call) {
  static const char *const keys[] = {"factor", "patience", "threshold", "min_lr"};
  double *v = s->u->plateau;
  v[0] = 0.1, v[1] = 10, v[2] = 1e-4, v[3] = 0;
  for (int i = 0; call->kind == AST_CALL && i < call->kids.len; i++) {
    const Ast *a = call->kids.items[i];
    int k = -1;
    for (int j = 0; a->kind == AST_KWARG && j < 4; j++)
      if (!strcmp(keys[j], a->name)) k = j;
    if (k < 0) {
      const char *close = a->kind == AST_KWARG ? diag_did_you_mean(a->name, keys, 4) : NULL;
      diag_error(a->loc, "plateau takes factor, patience, threshold and min_lr by name%s",
                 close ? xprintf("; did you mean '%s'?", close) : "");
      return false;
    }
    if (!const_number(s, a->a, &v[k])) return false;
  }
  if (!(v[0] > 0 && v[0] < 1) || v[1] < 0 || v[1] != floor(v[1]) || v[1] > 1e9 || v[2] < 0 ||
      v[3] < 0) {
    diag_error(call->loc, "plateau needs 0 < factor < 1, an integer patience >= 0, and "
               "threshold, min_lr >= 0");
    return false;
  }
  return true;
}

/* ---- a train block with steps (a GAN): several models, each step its own loss, optimizer
 * and the parameters it updates ---- */

enum { STEP_LOSS, STEP_OPTIMIZER, STEP_UPDATE, STEP_CLIP_NORM, STEP_CLIP_VALUE, STEP_SCHEDULE,
       N_STEP_KEYS }; /* ORDER STEP KEYS */
static const char *const step_keys[N_STEP_KEYS] = {"loss", "optimizer", "update", "clip_norm",
                                                   "clip_value", "schedule"};

/* A step's keys into seen[]; any other assignment names a value (z = normal([100])). */
static void step_keys_of(const Ast *step, const Ast *seen[N_STEP_KEYS]) {
  for (int i = 0; i < step->body.len; i++) {
    const Ast *st = step->body.items[i];
    if (st->kind != AST_ASSIGN) {
      diag_error(st->loc, "a step holds its keys (loss, optimizer, update, ...) and named "
                 "values like z = normal([100])");
      continue;
    }
    for (int k = 0; k < N_STEP_KEYS; k++)
      if (!strcmp(st->name, step_keys[k])) {
        if (seen[k]) diag_error(st->loc, "'%s' is set twice in step '%s'", st->name, step->name);
        seen[k] = st;
      }
  }
}

/* Evaluates a step's named values in order, then its loss into LOSS slot `slot` of s->b's
 * graph. False after an error. */
static bool step_loss(Sema *s, Frame *f, const Ast *step, const Ast *loss, int slot) {
  for (int i = 0; i < step->body.len; i++) {
    const Ast *st = step->body.items[i];
    if (st->kind != AST_ASSIGN) continue; /* reported by step_keys_of */
    bool key = false;
    for (int k = 0; k < N_STEP_KEYS; k++) key |= !strcmp(st->name, step_keys[k]);
    if (key) continue;
    s->b.loc = st->loc;
    Value v = eval(s, f, st->a);
    if (v.kind == V_ERROR) return false;
    bind(f, st->name, v);
  }
  return loss_output(s, f, loss, slot);
}

/* Step k: its graph (loss, and the next values of the updated models' buffers; autodiff adds
 * the gradients) and its update graph. The parameters it does not update are frozen while
 * it is built and differentiated. */
static bool build_step(Sema *s, const Ast *model, const Ast *step, int k) {
  Unit *u = s->u;
  Step *sp = &u->steps[k];
  const Ast *seen[N_STEP_KEYS] = {0};
  step_keys_of(step, seen);
  if (!seen[STEP_LOSS] || !seen[STEP_OPTIMIZER] || !seen[STEP_UPDATE]) {
    diag_error(step->loc, "step '%s' needs %s", step->name,
               !seen[STEP_LOSS] ? "a 'loss'" : !seen[STEP_OPTIMIZER] ? "an 'optimizer'"
               : "'update = [...]', the models it trains");
    return false;
  }
  Frame f = {.prefix = "", .where = IN_TRAIN};
  s->training = true;
  Graph *g = NULL;
  start_graph(s, &f, xprintf("step %s", step->name), model, &g);
  bind_y(s, &f);
  if (u->n_params) memset(s->buffer_next, 0, (size_t)u->n_params * sizeof *s->buffer_next);
  if (!step_loss(s, &f, step, seen[STEP_LOSS], k)) return false;
  sp->name = step->name, sp->loc = step->loc, sp->train = g, sp->n_known = u->n_params;
  sp->updates = xalloc((size_t)(u->n_params + 1) * sizeof *sp->updates);
  mark_params(s, seen[STEP_UPDATE]->a, "update", sp->updates);
  for (int p = 0; p < u->n_params; p++) {
    u->params[p].frozen = !sp->updates[p];
    if (sp->updates[p] && !u->params[p].buffer) sp->updated += shape_elems(u->params[p].shape, 1);
  }
  buffer_outputs(s);
  const Ast *oc = seen[STEP_OPTIMIZER]->a, *sc = seen[STEP_SCHEDULE] ? seen[STEP_SCHEDULE]->a : NULL;
  if (oc->kind != AST_CALL && oc->kind != AST_NAME) {
    diag_error(oc->loc, "expected an optimizer, like adam(lr = 1e-4)");
    return false;
  }
  const Ast *opt = find_def(s, oc->loc, oc->name, AST_OPTIMIZER, "optimizer"), *sched = NULL;
  if (!opt) return false;
  if (sc && (sc->kind != AST_CALL && sc->kind != AST_NAME)) {
    diag_error(sc->loc, "expected a schedule, like cosine(warmup = 100)");
    return false;
  }
  if (sc && !strcmp(sc->name, "plateau") && !lookup_def(s, "plateau")) {
    diag_error(sc->loc, "plateau watches one loss per epoch; a block with steps has several");
    return false;
  }
  if (sc && !(sched = find_def(s, sc->loc, sc->name, AST_FN, "schedule"))) return false;
  double clip[2] = {0, 0}; /* clip_norm, clip_value */
  for (int i = 0; i < 2; i++) {
    const Ast *c = seen[STEP_CLIP_NORM + i];
    if (c && const_number(s, c->a, &clip[i]) && !(clip[i] > 0))
      diag_error(c->a->loc, "'%s' must be a positive number", c->name);
  }
  if (diag_error_count()) return false;
  Ast none = {.kind = AST_CALL, .loc = oc->loc, .name = oc->name};
  Ast sc_none = {.kind = AST_CALL, .loc = step->loc, .name = ""};
  bool ok = build_update(s, oc->kind == AST_CALL ? oc : &none, opt, clip[0], clip[1],
                         sc && sc->kind == AST_CALL ? sc : &sc_none, sched,
                         xprintf("%s.", step->name));
  sp->update = u->update, u->update = NULL;
  if (sp->update) sp->update->name = xprintf("update %s", step->name);
  sp->hyper_end = u->n_hyper;
  for (int p = 0; p < u->n_params; p++) u->params[p].frozen = false;
  return ok;
}

/* A step's update graph reads the step count and the run's total in the slots after the
 * hyperparameters (and with a schedule writes the lr it used there); steps built later added
 * theirs, so those slots move up. */
static void renumber_slots(Unit *u) {
  for (int k = 0; k < u->n_steps; k++) {
    Graph *g = u->steps[k].update;
    for (int i = 0; g && i < g->n_nodes; i++)
      if (g->nodes[i]->op == OP_HYPER && g->nodes[i]->attr.index >= u->steps[k].hyper_end)
        g->nodes[i]->attr.index += u->n_hyper - u->steps[k].hyper_end;
    for (int i = 0; g && i < g->n_outs; i++) /* a schedule's "lr used" */
      if (g->outs[i].io == NN_IO_HYPER && g->outs[i].offset >= u->steps[k].hyper_end)
        g->outs[i].offset += u->n_hyper - u->steps[k].hyper_end;
  }
}

/* The inference-mode graph of eval, predict and sample: out is `sample` (e.g. a generator on
 * noise) or else the block's model on x; LOSS slot k is step k's loss. */
static void build_step_infer(Sema *s, const Ast *tr, const Ast *model, const Ast *sample) {
  Unit *u = s->u;
  Frame f = {.prefix = "", .where = IN_TRAIN};
  s->training = false;
  Value x = start_graph(s, &f, "infer", model, &u->infer);
  bind_y(s, &f);
  s->b.loc = sample ? sample->a->loc : model->loc;
  Ast call = {.kind = AST_CALL, .loc = model->loc, .name = model->name};
  Ast arg = {.kind = AST_NAME, .loc = model->loc, .name = "x"};
  ast_push(&call.kids, &arg);
  Value out = sample ? eval(s, &f, sample->a) : call_def(s, &f, model, &call);
  if (out.kind == V_ERROR || x.kind == V_ERROR) return;
  if (out.kind != V_TENSOR || !batched(out.node)) {
    diag_error(sample->a->loc, "sample must give one tensor per sample, like gen(normal([100]))");
    return;
  }
  u->out_shape = out.node->shape; /* per sample: drop the batch dim */
  memmove(u->out_shape.dim, u->out_shape.dim + 1, --u->out_shape.rank * sizeof(int64_t));
  ir_output(u->infer, out.node, NN_IO_OUT, 0, "out");
  int k = 0;
  for (int i = 0; i < tr->body.len; i++) {
    const Ast *st = tr->body.items[i];
    if (st->kind != AST_STEP) continue;
    const Ast *seen[N_STEP_KEYS] = {0};
    int errors = diag_error_count();
    step_keys_of(st, seen);
    Frame sf = f; /* each step's names start from x and y alone */
    if (diag_error_count() > errors || !step_loss(s, &sf, st, seen[STEP_LOSS], k++)) return;
  }
  ir_prune(u->infer);
}

/* A train block's body holds settings, KEY = VALUE (and steps): anything else, e.g. a
 * `require` or a `return`, is reported here. */
static bool is_setting(const Ast *st) {
  if (st->kind == AST_ASSIGN) return true;
  diag_error(st->loc, "a train block holds settings (KEY = VALUE)%s",
             st->kind == AST_REQUIRE ? "; 'require' belongs in a model, layer or fn"
                                     : " and steps");
  return false;
}

static void build_steps(Sema *s, const Ast *tr, const Ast *model) {
  static const char *const keys[] = {"batch", "epochs", "seed", "sample"};
  enum { N_KEYS = sizeof keys / sizeof *keys };
  Unit *u = s->u;
  const Ast *seen[N_KEYS] = {0}, *first[NN_MAX_STEPS] = {0};
  u->batch = 32, u->epochs = 10, u->seed = 1;
  for (int i = 0; i < tr->body.len; i++) {
    const Ast *st = tr->body.items[i];
    if (st->kind == AST_STEP) {
      for (int k = 0; k < u->n_steps; k++)
        if (!strcmp(first[k]->name, st->name)) {
          diag_error(st->loc, "step '%s' is defined twice", st->name);
          diag_note(first[k]->loc, "the first one is here");
        }
      if (u->n_steps == NN_MAX_STEPS)
        diag_error(st->loc, "a train block has at most %d steps", NN_MAX_STEPS);
      else
        first[u->n_steps++] = st;
      continue;
    }
    if (!is_setting(st)) continue;
    int k = -1;
    for (int j = 0; j < N_KEYS; j++)
      if (!strcmp(keys[j], st->name)) k = j;
    bool step_key = false;
    for (int j = 0; j < N_STEP_KEYS; j++)
      step_key |= !strcmp(st->name, step_keys[j]);
    if (k < 0) {
      const char *close = diag_did_you_mean(st->name, keys, N_KEYS);
      if (step_key)
        diag_error(st->loc, "'%s' belongs in a step of a train block with steps", st->name);
      else
        diag_error(st->loc, "unknown key '%s' in a train block with steps (batch, epochs, "
                   "seed, sample, and steps)%s", st->name,
                   close ? xprintf("; did you mean '%s'?", close) : "");
      continue;
    }
    if (seen[k]) diag_error(st->loc, "'%s' is set twice", keys[k]);
    seen[k] = st;
  }
  if (seen[0]) positive_int(s, seen[0], &u->batch);
  if (seen[1]) positive_int(s, seen[1], &u->epochs);
  if (seen[2]) positive_int(s, seen[2], &u->seed);
  if (diag_error_count()) return;
  u->steps = xalloc((size_t)u->n_steps * sizeof *u->steps);
  s->several_models = true;
  bool ok = true;
  for (int k = 0; k < u->n_steps; k++) ok &= build_step(s, model, first[k], k); /* all errors */
  if (!ok) return;
  renumber_slots(u);
  build_step_infer(s, tr, model, seen[3]);
  u->labels = false, u->task = NN_TASK_REGRESSION;
}

static void build_train(Sema *s, const Ast *tr, const char *source) {
  Unit *u = s->u;
  const Ast *model = find_def(s, tr->loc, tr->name, AST_MODEL, "model");
  const Ast *data = find_def(s, tr->loc, tr->name2, AST_DATA, "data set");
  if (!model || !data || !model_input(s, model, &u->x_shape)) return;
  u->model = model->name;
  if (!load_data(s, data, &u->data, &u->y_shape, source)) return;
  u->labels = u->y_shape.rank == 0;
  for (int i = 0; i < tr->body.len; i++)
    if (tr->body.items[i]->kind == AST_STEP) {
      build_steps(s, tr, model);
      return;
    }
  if (u->data.kind == NN_DATA_IDX && !u->data.labels) {
    diag_error(data->a->loc, "idx() without a labels file gives no targets, which only a "
               "train block with steps (a GAN) can train on");
    return;
  }
  Frame f = {.prefix = "", .where = IN_TRAIN};
  s->training = true;
  Value out = start_graph(s, &f, "train", model, &u->train);
  if (out.kind != V_TENSOR) return;

  static const char *const keys[] = {"loss",     "optimizer", "batch",      "epochs",
                                     "seed",     "validate",  "clip_norm",  "clip_value",
                                     "early_stop", "monitor",   "freeze",     "schedule"};
  enum { N_KEYS = sizeof keys / sizeof *keys };
  const Ast *seen[N_KEYS] = {0};
  u->batch = 32, u->epochs = 10, u->seed = 1;
  for (int i = 0; i < tr->body.len; i++) {
    const Ast *st = tr->body.items[i];
    if (!is_setting(st)) continue;
    int k = -1;
    for (int j = 0; j < N_KEYS; j++)
      if (!strcmp(keys[j], st->name)) k = j;
    if (k < 0) {
      const char *close = diag_did_you_mean(st->name, keys, N_KEYS);
      diag_error(st->loc, "unknown key '%s' in train block%s", st->name,
                 close ? xprintf("; did you mean '%s'?", close) : "");
      continue;
    }
    if (seen[k]) {
      diag_error(st->loc, "'%s' is set twice", keys[k]);
      continue;
    }
    seen[k] = st;
  }
  if (seen[2]) positive_int(s, seen[2], &u->batch);
  if (seen[3]) positive_int(s, seen[3], &u->epochs);
  if (seen[4]) positive_int(s, seen[4], &u->seed);
  if (seen[5]) { /* validate = test: a data set evaluated after every epoch */
    const Ast *v = seen[5]->a;
    const Ast *vd = v->kind == AST_NAME ? find_def(s, v->loc, v->name, AST_DATA, "data set") : NULL;
    double split = 0;
    if (v->kind != AST_NAME && const_number(s, v, &split) && !(split > 0 && split < 1))
      diag_error(v->loc, "validate is a data set or a fraction between 0 and 1");
    u->val_split = split;
    Shape vy;
    if (vd && load_data(s, vd, &u->val, &vy, source) && !shape_eq(vy, u->y_shape))
      diag_error(v->loc, "validation targets are %s but training targets are %s",
                 shape_str(vy, true), shape_str(u->y_shape, true));
  }
  early_stopping(s, seen[8], seen[9]);
  if (!seen[0] || !seen[1]) {
    diag_error(tr->loc, "train block needs %s", !seen[0] ? "a 'loss'" : "an 'optimizer'");
    return;
  }
  if (!loss_output(s, &f, seen[0], 0)) return;
  buffer_outputs(s);
  if (s->reads_mode) { /* the same model and loss again, with `training` 0 */
    Frame fi = {.prefix = "", .where = IN_TRAIN};
    s->training = false;
    if (start_graph(s, &fi, "infer", model, &u->infer).kind != V_TENSOR ||
        !loss_output(s, &fi, seen[0], 0))
      return;
    ir_prune(u->infer);
  }
  u->task = task_of(seen[0]->a, &u->threshold);
  u->compare = u->task == NN_TASK_REGRESSION ? compare_of(u, seen[0]->a) : NN_COMPARE_Y;
  /* optimizer = sgd(lr = 0.5) */
  const Ast *oc = seen[1]->a;
  if (oc->kind != AST_CALL && oc->kind != AST_NAME) {
    diag_error(oc->loc, "expected an optimizer, like sgd(lr = 0.1)");
    return;
  }
  const Ast *opt = find_def(s, oc->loc, oc->name, AST_OPTIMIZER, "optimizer");
  if (!opt) return;
  Ast none = {.kind = AST_CALL, .loc = oc->loc, .name = oc->name};
  if (seen[10]) freeze(s, seen[10]->a);
  double clip[2] = {0, 0}; /* clip_norm, clip_value */
  for (int i = 0; i < 2; i++)
    if (seen[6 + i] && const_number(s, seen[6 + i]->a, &clip[i]) && !(clip[i] > 0))
      diag_error(seen[6 + i]->a->loc, "'%s' must be a positive number", keys[6 + i]);
  /* schedule = cosine(warmup = 100): a fn of (lr, t, total, ...) */
  const Ast *sc = seen[11] ? seen[11]->a : NULL, *sched = NULL;
  Ast sc_none = {.kind = AST_CALL, .loc = sc ? sc->loc : tr->loc, .name = sc ? sc->name : ""};
  if (sc && sc->kind != AST_CALL && sc->kind != AST_NAME)
    diag_error(sc->loc, "expected a schedule, like cosine(warmup = 100)");
  else if (sc && !strcmp(sc->name, "plateau") && !lookup_def(s, "plateau")) {
    if (!plateau(s, sc)) return;
    sc = NULL;
  } else if (sc && !(sched = find_def(s, sc->loc, sc->name, AST_FN, "schedule")))
    return;
  if (diag_error_count() == 0)
    build_update(s, oc->kind == AST_CALL ? oc : &none, opt, clip[0], clip[1],
                 sc && sc->kind == AST_CALL ? sc : &sc_none, sched, "");
  bool has_lr = false;
  for (int i = 0; i < u->n_hyper; i++) has_lr |= !strcmp(u->hyper_names[i], "lr");
  if (u->plateau[0] > 0 && !has_lr && diag_error_count() == 0)
    diag_error(seen[11]->loc, "plateau lowers the learning rate, but optimizer '%s' has no "
               "'lr'", opt->name);
}

/* Without a train block (e.g. --emit=ir of a model alone): the first model, x -> out. */
static void build_forward_only(Sema *s, Ast *program) {
  const Ast *model = NULL;
  for (int i = 0; i < program->kids.len && !model; i++)
    if (program->kids.items[i]->kind == AST_MODEL) model = program->kids.items[i];
  if (!model || !model_input(s, model, &s->u->x_shape)) return;
  Frame f = {.prefix = "", .where = IN_TRAIN};
  s->u->batch = 32, s->u->epochs = 10, s->u->seed = 1;
  start_graph(s, &f, "forward", model, &s->u->train);
}

Unit *sema(Ast *program, Ast *prelude) {
  Sema s = {0};
  Unit *u = s.u = xalloc(sizeof *u);
  u->source = program->loc.file ? program->loc.file->path : "?";
  bool use_std = false;
  for (int i = 0; i < program->kids.len; i++) {
    Ast *it = program->kids.items[i];
    if (it->kind != AST_USE) continue;
    if (strcmp(it->name, "std"))
      diag_error(it->loc, "unknown module '%s'; the only module is 'std'", it->name);
    use_std = true;
  }
  if (use_std && prelude) add_defs(&s, prelude);
  add_defs(&s, program);
  const Ast *train = NULL;
  for (int i = 0; i < program->kids.len; i++) {
    Ast *it = program->kids.items[i];
    if (it->kind != AST_TRAIN) continue;
    if (train) {
      diag_error(it->loc, "only one train block is supported for now");
      diag_note(train->loc, "the first one is here");
      continue;
    }
    train = it;
  }
  if (train) {
    u->has_train = true;
    build_train(&s, train, u->source);
  } else {
    build_forward_only(&s, program);
  }
  if (diag_error_count()) return NULL;
  if (!u->train && !u->n_steps) {
    diag_file_error(u->source, "nothing to compile: the file defines no model");
    return NULL;
  }
  if (u->train) ir_verify(u->train);
  if (u->infer) ir_verify(u->infer);
  if (u->update) ir_verify(u->update);
  for (int k = 0; k < u->n_steps; k++) ir_verify(u->steps[k].train), ir_verify(u->steps[k].update);
  return u;
}
