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
} VKind;

typedef struct Value {
  VKind kind; /* what the value is */
  Node *node; /* V_TENSOR */
  double num; /* V_NUM */
  const char *str; /* V_STR */
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
  struct Frame *parent; /* the caller, for recursion checks only: names are not inherited */
  enum { IN_MODEL, IN_LAYER, IN_FN, IN_OPTIMIZER, IN_TRAIN } where;
} Frame;

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
  /* the optimizer being inlined for one parameter */
  int param_index;       /* the parameter it updates */
  Node *param_new;       /* the parameter's new value, when `param -= ...` has run */
  int n_states;
} Sema;

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

static const char *const builtins[] = {
    "exp", "log", "sqrt", "tanh", "sigmoid", "abs", "sign", "max", "min", "pow", "sum", "mean",
    "matmul",
};
enum { N_BUILTINS = sizeof builtins / sizeof *builtins };

/* Reports an unknown name, with the closest known name as a suggestion. */
static void unknown_name(Sema *s, Frame *f, Loc loc, const char *what, const char *name) {
  const char *cands[256];
  int n = 0;
  for (Binding *b = f ? f->locals : NULL; b && n < 256; b = b->next) cands[n++] = b->name;
  for (Def *d = s->defs; d && n < 256; d = d->next) cands[n++] = d->name;
  for (int i = 0; i < N_BUILTINS && n < 256; i++) cands[n++] = builtins[i];
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

/* Per-sample matrix product: vectors act as a row (left) or a column (right), as in numpy. */
static Value matmul(Sema *s, Value x, Value y, Loc loc) {
  if (x.kind == V_ERROR || y.kind == V_ERROR) return ERR;
  if (x.kind != V_TENSOR || y.kind != V_TENSOR) {
    diag_error(loc, "'@' needs two tensors");
    return ERR;
  }
  Node *a = x.node, *c = y.node;
  int ra = sample_rank(a), rc = sample_rank(c);
  if (ra < 1 || ra > 2 || rc < 1 || rc > 2) {
    diag_error(loc, "cannot multiply %s and %s: '@' takes vectors and matrices",
               shape_str(a->shape, true), shape_str(c->shape, true));
    return ERR;
  }
  int64_t ka = a->shape.dim[a->shape.rank - 1];
  int64_t kc = c->shape.dim[c->shape.rank - rc];
  if (ka != kc) {
    diag_error(loc, "cannot multiply %s and %s: inner dimensions %lld and %lld differ",
               shape_str(a->shape, true), shape_str(c->shape, true), (long long)ka,
               (long long)kc);
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
  if (batched(c) && !batched(a)) {
    Shape t = a->shape;
    memmove(t.dim + 1, t.dim, t.rank * sizeof *t.dim);
    t.dim[0] = 1, t.rank++;
    a = ir_expand(b, ir_reshape(b, a, t), (Shape){t.rank, {DIM_BATCH, t.dim[1], t.dim[2]}});
  } else if (batched(a) && !batched(c) && c->shape.rank != 2) {
    unreachable(); /* rc <= 2 and unbatched means rank 2 */
  } else if (!batched(a) && !batched(c) && a->shape.rank != c->shape.rank &&
             c->shape.rank != 2) {
    unreachable();
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

static bool eval_args(Sema *s, Frame *f, const Ast *call, Args *args) {
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
    args->v[args->n] = eval(s, f, kw ? a->a : a);
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

/* Primitive functions callable by name. Returns false if `name` is not one. */
static bool call_builtin(Sema *s, Frame *f, const Ast *call, Value *out) {
  static const struct { const char *name; OpKind op; } unaries[] = {
      {"exp", OP_EXP},   {"log", OP_LOG},         {"sqrt", OP_SQRT}, {"tanh", OP_TANH},
      {"sigmoid", OP_SIGMOID}, {"abs", OP_ABS}, {"sign", OP_SIGN},
  };
  const char *name = call->name;
  int which = -1;
  for (int i = 0; i < N_BUILTINS; i++)
    if (!strcmp(builtins[i], name)) which = i;
  if (which < 0) return false;
  Args a;
  *out = ERR;
  if (!eval_args(s, f, call, &a)) return true;
  for (int i = 0; i < a.n; i++)
    if (a.v[i].kind == V_ERROR) return true;
  int n_positional = 0;
  for (int i = 0; i < a.n; i++) n_positional += !a.kw[i];
  bool reduction = !strcmp(name, "sum") || !strcmp(name, "mean") ||
                   ((!strcmp(name, "max") || !strcmp(name, "min")) && n_positional == 1);
  int positional = 0;
  const Value *axis = NULL;
  for (int i = 0; i < a.n; i++) {
    if (!a.kw[i]) {
      positional++;
      continue;
    }
    if (reduction && !strcmp(a.kw[i], "axis")) {
      axis = &a.v[i];
      continue;
    }
    diag_error(a.ast[i]->loc, "'%s' has no argument named '%s'", name, a.kw[i]);
    return true;
  }
  int want = reduction ? 1 : (which < 7 ? 1 : 2);
  if (positional != want) {
    diag_error(call->loc, "'%s' takes %d argument%s, got %d", name, want, want == 1 ? "" : "s",
               positional);
    return true;
  }
  for (int i = 0; i < 7; i++)
    if (!strcmp(unaries[i].name, name)) {
      *out = unary(s, unaries[i].op, a.v[0]);
      return true;
    }
  if (!strcmp(name, "sum") || !strcmp(name, "mean")) {
    *out = reduce(s, a.v[0], axis, name[0] == 'm', false, call->loc);
  } else if (reduction) { /* min(x) = -max(-x) */
    bool is_min = !strcmp(name, "min");
    Value x = is_min ? negate(s, a.v[0]) : a.v[0];
    *out = reduce(s, x, axis, false, true, call->loc);
    if (is_min) *out = negate(s, *out);
  } else if (!strcmp(name, "matmul")) {
    *out = matmul(s, a.v[0], a.v[1], call->loc);
  } else {
    OpKind op = !strcmp(name, "max") ? OP_MAX : !strcmp(name, "min") ? OP_MIN : OP_POW;
    if (a.v[0].kind == V_NUM && a.v[1].kind == V_NUM) {
      double x = a.v[0].num, y = a.v[1].num;
      *out = number(op == OP_MAX ? fmax(x, y) : op == OP_MIN ? fmin(x, y) : pow(x, y));
    } else {
      s->b.loc = call->loc;
      *out = binary(s, op, a.v[0], a.v[1]);
    }
  }
  return true;
}

static bool is_int(Value v) { return v.kind == V_NUM && v.num == floor(v.num) && fabs(v.num) < 1e15; }

/* Evaluates the dims of a type in frame f, binding unknown names when `bind_from` is given
 * (matching a formal's type against an argument's per-sample shape). */
static bool dims_of(Sema *s, Frame *f, const Ast *type, Shape *out) {
  out->rank = type->kids.len;
  if (out->rank > MAX_RANK - 1) {
    diag_error(type->loc, "at most %d dimensions are supported", MAX_RANK - 1);
    return false;
  }
  for (int i = 0; i < out->rank; i++) {
    const Ast *d = type->kids.items[i];
    Value v = eval(s, f, d);
    if (v.kind == V_ERROR) return false;
    if (!is_int(v) || v.num < 1) {
      diag_error(d->loc, "a dimension must be a positive integer");
      return false;
    }
    out->dim[i] = (int64_t)v.num;
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
    if (v.kind != V_TENSOR) {
      diag_error(loc, "argument '%s' of '%s' must be a tensor of shape %s", formal->name,
                 def->name, "given in its type");
      return false;
    }
    Node *n = v.node;
    int rank = sample_rank(n);
    if (rank != type->kids.len) {
      diag_error(loc, "'%s' expects %s of rank %d, got %s", def->name, formal->name,
                 type->kids.len, shape_str(n->shape, true));
      return false;
    }
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
  if (!eval_args(s, caller, call, &a)) return false;
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
    idx = u->n_params++;
    /* 16-element alignment keeps every tensor on a 64-byte boundary for vector loads */
    u->params[idx] = (ParamDecl){name, shape, u->param_size, init, ia, ib};
    u->param_size += (shape_elems(shape, 1) + 15) / 16 * 16;
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
    diag_error(st->loc, "'param' is only allowed in a layer or model");
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
  bind(f, st->name, tensor(param_node(s, full, shape, init, ia, ib, st->loc)));
}

/* Runs a body's statements; returns the value of its `return`, or V_ERROR with *returned
 * false if it has none. */
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
        diag_error(st->loc, "'state' is only allowed in an optimizer");
        break;
      }
      Value init = eval(s, f, st->a);
      if (init.kind == V_NUM && init.num != 0)
        diag_error(st->a->loc, "optimizer state starts at 0 for now");
      const ParamDecl *p = &s->u->params[s->param_index];
      Node *n = ir_leaf(&s->b, OP_STATE, p->shape, s->n_states, xprintf("%s.%s", p->name, st->name));
      n->io = NN_IO_STATE, n->offset = s->u->state_size;
      s->u->state_size += (shape_elems(p->shape, 1) + 15) / 16 * 16;
      s->n_states++;
      bind(f, st->name, tensor(n));
      break;
    }
    case AST_RETURN:
      result = eval(s, f, st->a);
      *returned = true;
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
    callee->prefix = "";
  } else { /* a fn's layers are named as if called from its caller */
    callee->counters = f->counters;
  }
  bool returned;
  Value r = run_body(s, callee, &def->body, &returned);
  if (def->kind == AST_FN) f->counters = callee->counters;
  if (!returned) {
    diag_error(def->loc, "'%s' has no 'return'", def->name);
    return ERR;
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

static void add_defs(Sema *s, Ast *program, bool prelude) {
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
    (void)prelude;
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

/* table { [x...] -> [y...] ... } or csv("file", header = 1, targets = 1) */
static bool load_data(Sema *s, const Ast *data, const char *source) {
  Unit *u = s->u;
  const Ast *src = data->a;
  int64_t nx = shape_size(u->x_shape);
  if (src->kind == AST_TABLE) {
    int nrows = src->kids.len;
    if (!nrows) {
      diag_error(src->loc, "table '%s' has no rows", data->name);
      return false;
    }
    int64_t ny = src->kids.items[0]->b->kids.len;
    u->y_shape = shape_of(1, (int)ny);
    u->data_kind = NN_DATA_TABLE;
    u->data_rows = nrows;
    u->data_table = xalloc(nrows * (nx + ny) * sizeof(double));
    bool ok = true;
    for (int r = 0; r < nrows; r++) {
      const Ast *row = src->kids.items[r];
      if (row->a->kids.len != nx) {
        diag_error(row->a->loc, "row has %d inputs but model '%s' takes %s (%lld values)",
                   row->a->kids.len, u->model, shape_str(u->x_shape, true), (long long)nx);
        ok = false;
        continue;
      }
      if (row->b->kids.len != ny) {
        diag_error(row->b->loc, "row has %d targets but the first row has %lld",
                   row->b->kids.len, (long long)ny);
        ok = false;
        continue;
      }
      for (int i = 0; i < nx + ny; i++) {
        const Ast *cell = i < nx ? row->a->kids.items[i] : row->b->kids.items[i - nx];
        ok &= const_number(s, cell, &u->data_table[r * (nx + ny) + i]);
      }
    }
    return ok;
  }
  if (src->kind != AST_CALL || strcmp(src->name, "csv")) {
    diag_error(src->loc, "a data set is table { ... } or csv(\"file\")");
    return false;
  }
  const char *path = NULL;
  double header = 0, targets = 1;
  for (int i = 0; i < src->kids.len; i++) {
    const Ast *a = src->kids.items[i];
    if (a->kind != AST_KWARG) {
      if (i != 0 || a->kind != AST_STR) {
        diag_error(a->loc, "csv() takes a file name first");
        return false;
      }
      path = a->name;
    } else if (!strcmp(a->name, "header")) {
      if (!const_number(s, a->a, &header)) return false;
    } else if (!strcmp(a->name, "targets")) {
      if (!const_number(s, a->a, &targets)) return false;
      if (targets < 1 || targets != floor(targets) || targets > 1e6) {
        diag_error(a->a->loc, "targets must be a positive integer");
        return false;
      }
    } else {
      static const char *const keys[] = {"header", "targets"};
      const char *close = diag_did_you_mean(a->name, keys, 2);
      diag_error(a->loc, "csv() has no option '%s'%s", a->name,
                 close ? xprintf("; did you mean '%s'?", close) : "");
      return false;
    }
  }
  if (!path) {
    diag_error(src->loc, "csv() needs a file name");
    return false;
  }
  /* relative paths are relative to the .nn file, so the binary runs from anywhere */
  if (path[0] == '/') {
    u->data_path = path;
  } else {
    const char *slash = strrchr(source, '/');
    const char *dir = slash ? xstrndup(source, slash - source) : ".";
    char *abs = realpath(dir, NULL);
    u->data_path = xprintf("%s/%s", abs ? abs : dir, path);
    free(abs);
  }
  u->data_kind = NN_DATA_CSV;
  u->data_header = header != 0;
  u->y_shape = shape_of(1, (int)targets);
  return true;
}

/* ---- the optimizer: inlined once per parameter into the update graph ---- */

static bool build_update(Sema *s, const Ast *call, const Ast *opt) {
  Unit *u = s->u;
  /* hyperparameters: the optimizer's formals, defaults overridden by the call */
  Frame hyper = {.prefix = "", .where = IN_OPTIMIZER, .def = opt};
  if (!bind_args(s, &hyper, &hyper, opt, call)) return false;
  u->n_hyper = opt->formals.len;
  u->hyper_names = xalloc((u->n_hyper + 1) * sizeof *u->hyper_names);
  u->hyper_defaults = xalloc((u->n_hyper + 1) * sizeof *u->hyper_defaults);
  for (int i = 0; i < u->n_hyper; i++) {
    const Ast *fm = opt->formals.items[i];
    Binding *b = lookup_local(&hyper, fm->name);
    if (b->value.kind != V_NUM) {
      diag_error(fm->loc, "hyperparameter '%s' must be a number", fm->name);
      return false;
    }
    u->hyper_names[i] = fm->name;
    u->hyper_defaults[i] = b->value.num;
  }
  u->update = ir_graph("update");
  s->b = (Builder){u->update, opt->loc, true};
  Node **hypers = xalloc((u->n_hyper + 1) * sizeof *hypers);
  for (int i = 0; i < u->n_hyper; i++)
    hypers[i] = ir_scalar(&s->b, OP_HYPER, i, u->hyper_names[i]);
  hypers[u->n_hyper] = ir_scalar(&s->b, OP_HYPER, u->n_hyper, "step");
  for (int p = 0; p < u->n_params; p++) {
    const ParamDecl *pd = &u->params[p];
    Frame f = {.prefix = "", .where = IN_OPTIMIZER, .def = opt};
    for (int i = 0; i < u->n_hyper; i++) bind(&f, u->hyper_names[i], tensor(hypers[i]));
    bind(&f, "step", tensor(hypers[u->n_hyper]));
    s->b.loc = opt->loc;
    Node *pn = ir_leaf(&s->b, OP_PARAM, pd->shape, p, pd->name);
    pn->io = NN_IO_PARAM, pn->offset = pd->offset;
    Node *gn = ir_leaf(&s->b, OP_GRAD, pd->shape, p, pd->name);
    gn->io = NN_IO_GRAD, gn->offset = pd->offset;
    bind(&f, "param", tensor(pn));
    bind(&f, "grad", tensor(gn));
    s->param_index = p, s->param_new = NULL;
    int first_state = s->n_states;
    int64_t state_base = u->state_size;
    bool returned;
    run_body(s, &f, &opt->body, &returned);
    if (returned) diag_error(opt->loc, "an optimizer updates 'param'; it does not return");
    if (!s->param_new) {
      if (diag_error_count() == 0)
        diag_error(opt->loc, "optimizer '%s' never updates 'param'", opt->name);
      return false;
    }
    ir_output(u->update, ir_expand(&s->b, s->param_new, pd->shape), NN_IO_PARAM, pd->offset,
              xprintf("param %s", pd->name));
    /* each state variable's final value is stored back for the next step */
    for (int k = 0; k < u->update->n_nodes; k++) {
      Node *n = u->update->nodes[k];
      if (n->op != OP_STATE || n->attr.index < first_state) continue;
      const char *local = strrchr(n->name, '.') + 1;
      Binding *b = lookup_local(&f, local);
      if (b && b->value.kind == V_TENSOR && b->value.node != n)
        ir_output(u->update, ir_expand(&s->b, b->value.node, pd->shape), NN_IO_STATE,
                  n->offset, xprintf("state %s", n->name));
    }
    (void)state_base;
  }
  return s->b.ok && diag_error_count() == 0;
}

/* ---- train blocks ---- */

static NnTask task_of(const Ast *loss, double *threshold) {
  while (loss && loss->kind == AST_BINOP) loss = loss->a; /* the first term of a sum */
  *threshold = 0.5;
  if (!loss || loss->kind != AST_CALL) return NN_TASK_REGRESSION;
  if (!strcmp(loss->name, "bce")) return NN_TASK_BINARY;
  if (!strcmp(loss->name, "bce_logits")) return *threshold = 0, NN_TASK_BINARY;
  if (!strcmp(loss->name, "cross_entropy") || !strcmp(loss->name, "nll"))
    return NN_TASK_MULTICLASS;
  return NN_TASK_REGRESSION;
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

static bool model_input(Sema *s, const Ast *model, Shape *x) {
  if (model->formals.len != 1 || !model->formals.items[0]->a ||
      !model->formals.items[0]->a->has_dims) {
    diag_error(model->loc, "model '%s' must take one input with a shape, like (x: f32[2])",
               model->name);
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

static void build_train(Sema *s, const Ast *tr, const char *source) {
  Unit *u = s->u;
  const Ast *model = find_def(s, tr->loc, tr->name, AST_MODEL, "model");
  const Ast *data = find_def(s, tr->loc, tr->name2, AST_DATA, "data set");
  if (!model || !data || !model_input(s, model, &u->x_shape)) return;
  u->model = model->name;
  if (!load_data(s, data, source)) return;
  u->train = ir_graph("train");
  s->b = (Builder){u->train, tr->loc, true};
  Frame f = {.prefix = "", .where = IN_TRAIN};
  Node *x = ir_leaf(&s->b, OP_INPUT, batch_of(u->x_shape), NN_IO_X, "x");
  Node *y = ir_leaf(&s->b, OP_INPUT, batch_of(u->y_shape), NN_IO_Y, "y");
  x->io = NN_IO_X, y->io = NN_IO_Y;
  bind(&f, "x", tensor(x));
  bind(&f, "y", tensor(y));
  /* the model's output on x, for metrics; the loss's own call is the same node (ir.c
   * hash-conses equal nodes) */
  Ast fake = {.kind = AST_CALL, .loc = tr->loc, .name = model->name};
  Ast arg = {.kind = AST_NAME, .loc = tr->loc, .name = "x"};
  ast_push(&fake.kids, &arg);
  Value out = call_def(s, &f, model, &fake);
  if (out.kind != V_TENSOR) return;
  u->out_shape = out.node->shape;
  memmove(u->out_shape.dim, u->out_shape.dim + 1, --u->out_shape.rank * sizeof(int64_t));

  static const char *const keys[] = {"loss", "optimizer", "batch", "epochs", "seed"};
  enum { N_KEYS = sizeof keys / sizeof *keys };
  const Ast *seen[N_KEYS] = {0};
  u->batch = 32, u->epochs = 10, u->seed = 1;
  for (int i = 0; i < tr->body.len; i++) {
    const Ast *st = tr->body.items[i];
    int k = -1;
    if (st->kind == AST_ASSIGN)
      for (int j = 0; j < N_KEYS; j++)
        if (!strcmp(keys[j], st->name)) k = j;
    if (k < 0) {
      const char *close = st->name ? diag_did_you_mean(st->name, keys, N_KEYS) : NULL;
      diag_error(st->loc, "unknown key '%s' in train block%s", st->name ? st->name : "?",
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
  if (!seen[0] || !seen[1]) {
    diag_error(tr->loc, "train block needs %s", !seen[0] ? "a 'loss'" : "an 'optimizer'");
    return;
  }
  /* loss: a scalar per sample, averaged over the batch */
  s->b.loc = seen[0]->a->loc;
  Value loss = eval(s, &f, seen[0]->a);
  if (loss.kind == V_NUM) {
    diag_error(seen[0]->loc, "the loss is a constant; it must depend on the model");
    return;
  }
  if (loss.kind != V_TENSOR) return;
  Node *l = loss.node;
  if (sample_rank(l) != 0) {
    diag_error(seen[0]->loc, "the loss must be one number per sample, got %s; wrap it in mean()",
               shape_str(l->shape, true));
    return;
  }
  Builder *b = &s->b;
  if (batched(l)) l = ir_div(b, ir_reshape(b, ir_reduce(b, OP_SUM, l, 1), (Shape){0}),
                             ir_scalar(b, OP_BATCH, 0, "batch"));
  ir_output(u->train, l, NN_IO_LOSS, 0, "loss");
  ir_output(u->train, out.node, NN_IO_OUT, 0, "out");
  u->task = task_of(seen[0]->a, &u->threshold);
  /* optimizer = sgd(lr = 0.5) */
  const Ast *oc = seen[1]->a;
  if (oc->kind != AST_CALL && oc->kind != AST_NAME) {
    diag_error(oc->loc, "expected an optimizer, like sgd(lr = 0.1)");
    return;
  }
  const Ast *opt = find_def(s, oc->loc, oc->name, AST_OPTIMIZER, "optimizer");
  if (!opt) return;
  Ast none = {.kind = AST_CALL, .loc = oc->loc, .name = oc->name};
  if (diag_error_count() == 0) build_update(s, oc->kind == AST_CALL ? oc : &none, opt);
}

/* Without a train block (e.g. --emit=ir of a model alone): the first model, x -> out. */
static void build_forward_only(Sema *s, Ast *program) {
  Unit *u = s->u;
  const Ast *model = NULL;
  for (int i = 0; i < program->kids.len && !model; i++)
    if (program->kids.items[i]->kind == AST_MODEL) model = program->kids.items[i];
  if (!model) return;
  if (!model_input(s, model, &u->x_shape)) return;
  u->model = model->name;
  u->train = ir_graph("forward");
  s->b = (Builder){u->train, model->loc, true};
  Frame f = {.prefix = "", .where = IN_TRAIN};
  Node *x = ir_leaf(&s->b, OP_INPUT, batch_of(u->x_shape), NN_IO_X, "x");
  x->io = NN_IO_X;
  bind(&f, "x", tensor(x));
  Ast call = {.kind = AST_CALL, .loc = model->loc, .name = model->name};
  Ast arg = {.kind = AST_NAME, .loc = model->loc, .name = "x"};
  ast_push(&call.kids, &arg);
  Value out = call_def(s, &f, model, &call);
  if (out.kind != V_TENSOR) return;
  u->out_shape = out.node->shape;
  memmove(u->out_shape.dim, u->out_shape.dim + 1, --u->out_shape.rank * sizeof(int64_t));
  u->batch = 32, u->epochs = 10, u->seed = 1;
  ir_output(u->train, out.node, NN_IO_OUT, 0, "out");
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
  if (use_std && prelude) add_defs(&s, prelude, true);
  add_defs(&s, program, false);
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
  if (!u->train) {
    diag_file_error(u->source, "nothing to compile: the file defines no model");
    return NULL;
  }
  ir_verify(u->train);
  if (u->update) ir_verify(u->update);
  return u;
}
