/* ops.c — the shape rule and the gradient rule of every primitive op, and the op table.
 *
 * A shape rule takes a candidate node (operands and attributes set) and gives its result
 * shape, or reports a user error at the builder's location. A gradient rule takes a node n
 * and the gradient g of the loss with respect to n, and sets d[i] to the gradient with
 * respect to n->src[i] (same shape as that operand), or NULL where none flows. Rules are
 * written with the builder, so gradients are ordinary IR. The lowering of each op is in
 * lower_llvm.c. Rows in ops.def order; paired ops sit together. */
#include "nnc.h"

/* ---- shape rules ---- */

static bool shape_same(Builder *b, Node *n, Shape *out) {
  (void)b;
  *out = n->src[0]->shape;
  return true;
}

static const char *verb_of(OpKind op) {
  switch (op) {
  case OP_ADD: return "add";
  case OP_SUB: return "subtract";
  case OP_MUL: return "multiply";
  case OP_DIV: return "divide";
  default: return NULL;
  }
}

static bool shape_bcast(Builder *b, Node *n, Shape *out) {
  Shape x = n->src[0]->shape, y = n->src[1]->shape;
  if (shape_broadcast(x, y, out)) return true;
  const char *verb = verb_of(n->op);
  if (verb)
    diag_error(b->loc, "cannot %s %s and %s", verb, shape_str(x, true), shape_str(y, true));
  else
    diag_error(b->loc, "shapes %s and %s do not broadcast in '%s'", shape_str(x, true),
               shape_str(y, true), op_info[n->op].text);
  return false;
}

static bool shape_reduce(Builder *b, Node *n, Shape *out) {
  Shape s = n->src[0]->shape;
  if (n->attr.axes >> s.rank) {
    diag_error(b->loc, "reduction axis out of range for %s", shape_str(s, true));
    return false;
  }
  for (int i = 0; i < s.rank; i++)
    if (n->attr.axes >> i & 1) s.dim[i] = 1;
  *out = s;
  return true;
}

/* EXPAND and RESHAPE: the target shape is given; check it is reachable. */
static bool shape_given(Builder *b, Node *n, Shape *out) {
  Shape from = n->src[0]->shape, to = n->shape, r;
  bool ok;
  if (n->op == OP_EXPAND) {
    ok = shape_broadcast(from, to, &r) && shape_eq(r, to);
  } else { /* a batched value stays batched: compare the per-sample element counts */
    bool fb = from.rank && from.dim[0] < 0, tb = to.rank && to.dim[0] < 0;
    ok = fb == tb && shape_elems(from, 1) == shape_elems(to, 1);
  }
  if (!ok) {
    diag_error(b->loc, "cannot %s %s to %s", n->op == OP_EXPAND ? "broadcast" : "reshape",
               shape_str(from, true), shape_str(to, true));
    return false;
  }
  *out = to;
  return true;
}

/* (.., m, k) x (k, n) -> (.., m, n); b is one matrix shared by all of a's leading dims, or
 * has the same leading dims as a (batched). ta/tb swap the last two dims of a/b. */
static bool shape_matmul(Builder *b, Node *n, Shape *out) {
  Shape x = n->src[0]->shape, y = n->src[1]->shape;
  bool ta = n->attr.ta, tb = n->attr.tb;
  if (x.rank < 2 || y.rank < 2 || (y.rank > 2 && y.rank != x.rank) ||
      (ta && y.rank == 2 && x.rank > 2)) {
    diag_error(b->loc, "cannot multiply %s and %s", shape_str(x, true), shape_str(y, true));
    return false;
  }
  for (int i = 0; y.rank > 2 && i < x.rank - 2; i++)
    if (x.dim[i] != y.dim[i]) {
      diag_error(b->loc, "cannot multiply %s and %s: batch dimensions differ",
                 shape_str(x, true), shape_str(y, true));
      return false;
    }
  int64_t m = x.dim[x.rank - (ta ? 1 : 2)], k = x.dim[x.rank - (ta ? 2 : 1)];
  int64_t kb = y.dim[y.rank - (tb ? 1 : 2)], nn = y.dim[y.rank - (tb ? 2 : 1)];
  if (k != kb) {
    diag_error(b->loc, "cannot multiply %s and %s: inner dimensions %lld and %lld differ",
               shape_str(x, true), shape_str(y, true), (long long)k, (long long)kb);
    return false;
  }
  *out = x;
  out->dim[x.rank - 2] = m, out->dim[x.rank - 1] = nn;
  return true;
}

/* ---- gradient rules ---- */

#define GRAD(name) static void name(Builder *b, Node *n, Node *g, Node *d[])
#define A (n->src[0])
#define B (n->src[1])
#define ONE ir_const(b, 1)

/* sign, comparisons: piecewise constant, so the gradient is zero where it exists */
GRAD(grad_none) { (void)b, (void)n, (void)g, d[0] = d[1] = NULL; }

GRAD(grad_neg) { (void)n, d[0] = ir_unary(b, OP_NEG, g); }
/* c = e^a: da = g*c */
GRAD(grad_exp) { d[0] = ir_mul(b, g, n); }
/* c = ln a: da = g/a */
GRAD(grad_log) { d[0] = ir_div(b, g, A); }
/* c = sqrt a: da = g/(2c) */
GRAD(grad_sqrt) { d[0] = ir_div(b, g, ir_mul(b, ir_const(b, 2), n)); }
/* c = tanh a: da = g*(1 - c^2) */
GRAD(grad_tanh) { d[0] = ir_mul(b, g, ir_sub(b, ONE, ir_mul(b, n, n))); }
/* c = sigmoid a: da = g*c*(1 - c) */
GRAD(grad_sigmoid) { d[0] = ir_mul(b, g, ir_mul(b, n, ir_sub(b, ONE, n))); }
/* c = |a|: da = g*sign(a) */
GRAD(grad_abs) { d[0] = ir_mul(b, g, ir_unary(b, OP_SIGN, A)); }

/* c = a + b: da = g, db = g, each summed back to its operand's shape */
GRAD(grad_add) {
  d[0] = ir_unbroadcast(b, g, A->shape);
  d[1] = ir_unbroadcast(b, g, B->shape);
}
/* c = a - b: da = g, db = -g */
GRAD(grad_sub) {
  d[0] = ir_unbroadcast(b, g, A->shape);
  d[1] = ir_unbroadcast(b, ir_unary(b, OP_NEG, g), B->shape);
}
/* c = a * b: da = g*b, db = g*a */
GRAD(grad_mul) {
  d[0] = ir_unbroadcast(b, ir_mul(b, g, B), A->shape);
  d[1] = ir_unbroadcast(b, ir_mul(b, g, A), B->shape);
}
/* c = a / b: da = g/b, db = -g*a/b^2 = -g*c/b */
GRAD(grad_div) {
  d[0] = ir_unbroadcast(b, ir_div(b, g, B), A->shape);
  d[1] = ir_unbroadcast(b, ir_unary(b, OP_NEG, ir_div(b, ir_mul(b, g, n), B)), B->shape);
}
/* c = a^b: da = g*b*a^(b-1), db = g*c*ln a */
GRAD(grad_pow) {
  Node *pm1 = ir_binary(b, OP_POW, A, ir_sub(b, B, ONE));
  d[0] = ir_unbroadcast(b, ir_mul(b, g, ir_mul(b, B, pm1)), A->shape);
  d[1] = ir_unbroadcast(b, ir_mul(b, g, ir_mul(b, n, ir_unary(b, OP_LOG, A))), B->shape);
}
/* c = max(a, b): the gradient goes to the larger; ties go to b */
GRAD(grad_max) {
  Node *pick_a = ir_binary(b, OP_CMPGT, A, B);
  d[0] = ir_unbroadcast(b, ir_mul(b, g, pick_a), A->shape);
  d[1] = ir_unbroadcast(b, ir_mul(b, g, ir_sub(b, ONE, pick_a)), B->shape);
}
/* c = min(a, b): the gradient goes to the smaller; ties go to b */
GRAD(grad_min) {
  Node *pick_a = ir_binary(b, OP_CMPGT, B, A);
  d[0] = ir_unbroadcast(b, ir_mul(b, g, pick_a), A->shape);
  d[1] = ir_unbroadcast(b, ir_mul(b, g, ir_sub(b, ONE, pick_a)), B->shape);
}

/* SUM ↔ EXPAND: c = sum(a) over axes (kept as 1): da = g broadcast back */
GRAD(grad_sum) { d[0] = ir_expand(b, g, A->shape); }
/* c = max(a) over axes: da = g where a attains the max (every tie gets it) */
GRAD(grad_rmax) { d[0] = ir_mul(b, ir_binary(b, OP_CMPEQ, A, n), g); }
/* EXPAND ↔ SUM: c = broadcast(a): da = g summed over the broadcast axes */
GRAD(grad_expand) { d[0] = ir_unbroadcast(b, g, A->shape); }
/* RESHAPE ↔ RESHAPE */
GRAD(grad_reshape) { d[0] = ir_reshape(b, g, A->shape); }

/* A shape viewed as a matrix: (all leading dims, last dim); batched rows stay batched. */
static Shape rows_by_last(Shape s) {
  int64_t rows = 1;
  for (int i = 0; i < s.rank - 1; i++) rows *= s.dim[i] < 0 ? -s.dim[i] : s.dim[i];
  bool batched = s.rank && s.dim[0] < 0;
  return (Shape){.rank = 2, .dim = {batched ? -rows : rows, s.dim[s.rank - 1]}};
}

/* c = op(a) @ op(b), op = transpose where ta/tb:
 *   da = g @ op(b)^T  (or, with ta, (op(b) g^T));  db = op(a)^T @ g  (or, with tb, g^T op(a)).
 * When b is one matrix shared across a's leading dims, db sums over them: flatten a and g
 * to 2-D first (a has no leading dims when ta, see shape_matmul). */
GRAD(grad_matmul) {
  bool ta = n->attr.ta, tb = n->attr.tb;
  Node *a = A, *gg = g;
  d[0] = ta ? ir_matmul(b, B, g, tb, true) : ir_matmul(b, g, B, false, !tb);
  if (B->shape.rank == 2 && A->shape.rank > 2) {
    a = ir_reshape(b, A, rows_by_last(A->shape));
    gg = ir_reshape(b, g, rows_by_last(g->shape));
  }
  d[1] = tb ? ir_matmul(b, gg, a, true, ta) : ir_matmul(b, a, gg, !ta, false);
}

#undef A
#undef B
#undef ONE

const OpInfo op_info[OP_COUNT] = {
#define OP(name, arity, cls, text, shape, grad) [OP_##name] = {text, arity, CLASS_##cls, shape, grad},
#include "ops.def"
#undef OP
};
