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
/* c = sin a: da = g*cos(a) */
GRAD(grad_sin) { d[0] = ir_mul(b, g, ir_unary(b, OP_COS, A)); }
/* c = cos a: da = -g*sin(a) */
GRAD(grad_cos) { d[0] = ir_unary(b, OP_NEG, ir_mul(b, g, ir_unary(b, OP_SIN, A))); }
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
/* c = max(a, b): the gradient goes to the larger; ties go to b. a > b exactly when c > b (NaN
 * included: max is a > b ? a : b), and the mask is taken from c so that the backward pass
 * reads the value the forward pass stores anyway (relu's output), not its operand too. */
GRAD(grad_max) {
  Node *pick_a = ir_binary(b, OP_CMPGT, n, B);
  if (g->op == OP_MAXPOOL_BWD && g->src[0] == n && B->shape.rank == 0) {
    /* relu then max pooling: each window's gradient lands on its maximum, which is also the
     * pooled value, so the mask is taken on the pooled tensor (a quarter of the size for 2x2
     * windows) before the routing: maxpool_bwd(c, gy) * (c > b) =
     * maxpool_bwd(c, gy * (maxpool(c) > b)), the same products (ir_reduce then sums the bias
     * gradient on the pooled tensor too) */
    Node *pooled = ir_window(b, OP_MAXPOOL, n, NULL, g->attr.conv, (Shape){0});
    Node *gy = ir_mul(b, g->src[1], ir_binary(b, OP_CMPGT, pooled, B));
    d[0] = ir_unbroadcast(b, ir_window(b, OP_MAXPOOL_BWD, n, gy, g->attr.conv, n->shape),
                          A->shape);
  } else {
    d[0] = ir_unbroadcast(b, ir_mul(b, g, pick_a), A->shape);
  }
  d[1] = ir_unbroadcast(b, ir_mul(b, g, ir_sub(b, ONE, pick_a)), B->shape);
}
/* c = min(a, b): the gradient goes to the smaller; ties go to b (a < b exactly when b > c) */
GRAD(grad_min) {
  Node *pick_a = ir_binary(b, OP_CMPGT, B, n);
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

/* ---- convolution and pooling ---- */

/* Output positions of a window sliding over `in` samples padded by p0 before and p1 after,
 * with window k, stride s and dilation d; 0 if the dilated window is longer than that. */
static int64_t window_out(int64_t in, int k, int s, int d, int p0, int p1) {
  int64_t span = (int64_t)d * (k - 1) + 1, padded = in + p0 + p1;
  return padded < span ? 0 : (padded - span) / s + 1;
}

/* The [B, OH, OW, channels] result of sliding c's window over an image of shape x. */
static Shape window_shape(Shape x, const ConvAttr *c, int64_t channels) {
  return (Shape){4, {x.dim[0], window_out(x.dim[1], c->kh, c->sh, c->dh, c->pt, c->pb),
                     window_out(x.dim[2], c->kw, c->sw, c->dw, c->pl, c->pr), channels}};
}

/* Sema checks the geometry it builds from the user's numbers; a bad one here is a bug. */
static void check_geometry(const Node *n) {
  const ConvAttr *c = &n->attr.conv;
  if (c->kh < 1 || c->kw < 1 || c->sh < 1 || c->sw < 1 || c->dh < 1 || c->dw < 1 || c->pt < 0 ||
      c->pl < 0) /* pb, pr < 0: trim.c cut the last rows or columns off the result */
    diag_internal(__FILE__, __LINE__, "%s with a bad window", op_info[n->op].text);
}

/* Reports a window that does not fit its (padded) image; `what` is "cannot convolve ..." */
static bool window_fits(Builder *b, const char *what, Shape x, const ConvAttr *c) {
  Shape r = window_shape(x, c, 1);
  if (r.dim[1] > 0 && r.dim[2] > 0) return true;
  diag_error(b->loc, "%s: the window spans %lldx%lld but the padded input is %lldx%lld", what,
             (long long)c->dh * (c->kh - 1) + 1, (long long)c->dw * (c->kw - 1) + 1,
             (long long)(x.dim[1] + c->pt + c->pb), (long long)(x.dim[2] + c->pl + c->pr));
  return false;
}

/* conv2d: x[B,H,W,C], w[KH,KW,C,F] -> [B,OH,OW,F] */
static bool shape_conv2d(Builder *b, Node *n, Shape *out) {
  Shape x = n->src[0]->shape, w = n->src[1]->shape;
  const ConvAttr *c = &n->attr.conv;
  check_geometry(n);
  char *what = xprintf("cannot convolve %s with %s", shape_str(x, true), shape_str(w, true));
  if (x.rank != 4 || w.rank != 4 || w.dim[0] < 0) {
    diag_error(b->loc, "%s: expected an image [h, w, c] and a filter [kh, kw, c, filters]", what);
    return false;
  }
  if (x.dim[3] != w.dim[2]) {
    diag_error(b->loc, "%s: input has %lld channels, filter expects %lld", what,
               (long long)x.dim[3], (long long)w.dim[2]);
    return false;
  }
  if (w.dim[0] != c->kh || w.dim[1] != c->kw)
    diag_internal(__FILE__, __LINE__, "conv2d window %dx%d for a filter %s", c->kh, c->kw,
                  shape_str(w, false));
  if (!window_fits(b, what, x, c)) return false;
  *out = window_shape(x, c, w.dim[3]);
  return true;
}

/* conv2d_bwd_data (g, w) -> dx and conv2d_bwd_filter (x, g) -> dw: the result shape is given;
 * it must be the one whose convolution gives g. */
static bool shape_conv2d_bwd(Builder *b, Node *n, Shape *out) {
  bool data = n->op == OP_CONV2D_BWD_DATA;
  Shape r = n->shape, g = n->src[data ? 0 : 1]->shape, other = n->src[data ? 1 : 0]->shape;
  Shape x = data ? r : other, w = data ? other : r;
  const ConvAttr *c = &n->attr.conv;
  check_geometry(n);
  bool ok = x.rank == 4 && w.rank == 4 && g.rank == 4 && w.dim[0] == c->kh &&
            w.dim[1] == c->kw && x.dim[3] == w.dim[2] && g.dim[3] == w.dim[3];
  if (ok) {
    Shape y = window_shape(x, c, w.dim[3]);
    ok = y.dim[1] > 0 && y.dim[2] > 0 && shape_eq(y, g);
  }
  if (!ok) {
    diag_error(b->loc, "cannot make %s from %s and %s in '%s'", shape_str(r, true),
               shape_str(n->src[0]->shape, true), shape_str(n->src[1]->shape, true),
               op_info[n->op].text);
    return false;
  }
  *out = r;
  return true;
}

/* maxpool, avgpool: x[B,H,W,C] -> [B,OH,OW,C] */
static bool shape_pool(Builder *b, Node *n, Shape *out) {
  Shape x = n->src[0]->shape;
  check_geometry(n);
  char *what = xprintf("cannot pool %s with a %dx%d window", shape_str(x, true),
                       n->attr.conv.kh, n->attr.conv.kw);
  if (x.rank != 4) {
    diag_error(b->loc, "%s: expected an image [h, w, c]", what);
    return false;
  }
  if (!window_fits(b, what, x, &n->attr.conv)) return false;
  *out = window_shape(x, &n->attr.conv, x.dim[3]);
  return true;
}

/* maxpool_bwd (x, g) -> dx shaped like x; avgpool_bwd (g) -> dx of the given shape. In both,
 * pooling dx's shape must give g's. */
static bool shape_pool_bwd(Builder *b, Node *n, Shape *out) {
  bool max = n->op == OP_MAXPOOL_BWD;
  Shape r = max ? n->src[0]->shape : n->shape, g = n->src[max ? 1 : 0]->shape;
  check_geometry(n);
  Shape y = r.rank == 4 ? window_shape(r, &n->attr.conv, r.dim[3]) : (Shape){0};
  if (r.rank != 4 || y.dim[1] < 1 || y.dim[2] < 1 || !shape_eq(y, g)) {
    diag_error(b->loc, "cannot make %s from %s in '%s'", shape_str(r, true), shape_str(g, true),
               op_info[n->op].text);
    return false;
  }
  *out = r;
  return true;
}

/* CONV2D ↔ CONV2D_BWD_DATA, CONV2D_BWD_FILTER.
 * y = conv2d(x, w):  dx = conv2d_bwd_data(g, w),  dw = conv2d_bwd_filter(x, g) */
GRAD(grad_conv2d) {
  Node *x = n->src[0], *w = n->src[1];
  d[0] = ir_window(b, OP_CONV2D_BWD_DATA, g, w, n->attr.conv, x->shape);
  d[1] = ir_window(b, OP_CONV2D_BWD_FILTER, x, g, n->attr.conv, w->shape);
}
/* dx = conv2d_bwd_data(gy, w) is bilinear: sum(G * dx) = sum(conv2d(G, w) * gy), so
 *   d gy = conv2d(G, w),  d w = conv2d_bwd_filter(G, gy) */
GRAD(grad_conv2d_bwd_data) {
  Node *gy = n->src[0], *w = n->src[1];
  d[0] = ir_window(b, OP_CONV2D, g, w, n->attr.conv, gy->shape);
  d[1] = ir_window(b, OP_CONV2D_BWD_FILTER, g, gy, n->attr.conv, w->shape);
}
/* dw = conv2d_bwd_filter(x, gy) is bilinear: sum(G * dw) = sum(conv2d(x, G) * gy), so
 *   d x = conv2d_bwd_data(gy, G),  d gy = conv2d(x, G) */
GRAD(grad_conv2d_bwd_filter) {
  Node *x = n->src[0], *gy = n->src[1];
  d[0] = ir_window(b, OP_CONV2D_BWD_DATA, gy, g, n->attr.conv, x->shape);
  d[1] = ir_window(b, OP_CONV2D, x, g, n->attr.conv, gy->shape);
}
/* MAXPOOL ↔ MAXPOOL_BWD: y = maxpool(x): dx = g routed to each window's first maximum */
GRAD(grad_maxpool) {
  d[0] = ir_window(b, OP_MAXPOOL_BWD, n->src[0], g, n->attr.conv, n->src[0]->shape);
}
/* AVGPOOL ↔ AVGPOOL_BWD: y = avgpool(x): dx = each g spread evenly over its window */
GRAD(grad_avgpool) {
  d[0] = ir_window(b, OP_AVGPOOL_BWD, g, NULL, n->attr.conv, n->src[0]->shape);
}
/* dx = avgpool_bwd(gy) is linear and avgpool is its adjoint: d gy = avgpool(G) */
GRAD(grad_avgpool_bwd) {
  d[0] = ir_window(b, OP_AVGPOOL, g, NULL, n->attr.conv, n->src[0]->shape);
}

/* ---- movement and indexing (attr.move, see MoveAttr) ----
 * Sema checks the axes, bounds and permutations it builds from the user's numbers, so a bad
 * one here is a bug; shapes that do not fit are user errors, reported like shape_bcast's. */

#define MOVE_BUG(n) diag_internal(__FILE__, __LINE__, "bad %s attributes", op_info[(n)->op].text)

/* where(c, a, b): the three operands broadcast together */
static bool shape_where(Builder *b, Node *n, Shape *out) {
  Shape c = n->src[0]->shape, x = n->src[1]->shape, y = n->src[2]->shape, cx;
  if (shape_broadcast(c, x, &cx) && shape_broadcast(cx, y, out)) return true;
  diag_error(b->loc, "shapes %s, %s and %s do not broadcast in 'where'", shape_str(c, true),
             shape_str(x, true), shape_str(y, true));
  return false;
}
/* c ? a : b:  da = (c ? g : 0), db = (c ? 0 : g), each summed back to its shape */
GRAD(grad_where) {
  Node *c = n->src[0], *zero = ir_const(b, 0);
  d[1] = ir_unbroadcast(b, ir_where(b, c, g, zero), n->src[1]->shape);
  d[2] = ir_unbroadcast(b, ir_where(b, c, zero, g), n->src[2]->shape);
}

/* result dim d is operand dim perm[d]; a batch dim stays in front */
static bool shape_permute(Builder *b, Node *n, Shape *out) {
  (void)b;
  Shape x = n->src[0]->shape;
  unsigned seen = 0;
  for (int d = 0; d < x.rank; d++) {
    int64_t p = n->attr.move.perm[d];
    if (p < 0 || p >= x.rank || (seen >> p & 1) || (x.dim[p] < 0 && d != 0)) MOVE_BUG(n);
    seen |= 1u << p;
    out->dim[d] = x.dim[p];
  }
  out->rank = x.rank;
  return true;
}
/* PERMUTE ↔ PERMUTE: dx = g permuted back by the inverse */
GRAD(grad_permute) {
  int64_t inv[MAX_RANK];
  for (int i = 0; i < n->shape.rank; i++) inv[n->attr.move.perm[i]] = i;
  d[0] = ir_permute(b, g, inv);
}

/* SLICE: ceil((hi - lo) / step) elements per axis; PAD: lo + (n-1)*step + 1 + hi. A batch
 * dim is never cut or padded. */
static bool shape_slice_pad(Builder *b, Node *n, Shape *out) {
  (void)b;
  const MoveAttr *m = &n->attr.move;
  Shape x = n->src[0]->shape;
  *out = x;
  for (int i = 0; i < x.rank; i++) {
    int64_t lo = m->lo[i], hi = m->hi[i], step = m->step[i], len = x.dim[i];
    if (len < 0) {
      if (lo != 0 || hi != (n->op == OP_SLICE ? len : 0) || step != 1) MOVE_BUG(n);
    } else if (n->op == OP_SLICE) {
      if (lo < 0 || lo >= hi || hi > len || step < 1) MOVE_BUG(n);
      out->dim[i] = (hi - lo + step - 1) / step;
    } else {
      if (lo < 0 || hi < 0 || step < 1) MOVE_BUG(n);
      out->dim[i] = lo + (len - 1) * step + 1 + hi;
    }
  }
  return true;
}
#define shape_slice shape_slice_pad
#define shape_pad shape_slice_pad
/* SLICE ↔ PAD: dx = g put back where the slice took it from, zeros elsewhere */
GRAD(grad_slice) {
  const MoveAttr *m = &n->attr.move;
  int64_t after[MAX_RANK];
  for (int i = 0; i < n->shape.rank; i++) /* past the last element taken */
    after[i] = n->shape.dim[i] < 0 ? 0
               : n->src[0]->shape.dim[i] - (m->lo[i] + (n->shape.dim[i] - 1) * m->step[i] + 1);
  d[0] = ir_pad(b, g, m->lo, after, m->step);
}
/* PAD ↔ SLICE: dx = the part of g that came from x */
GRAD(grad_pad) {
  const MoveAttr *m = &n->attr.move;
  int64_t end[MAX_RANK];
  for (int i = 0; i < n->shape.rank; i++)
    end[i] = n->shape.dim[i] < 0 ? n->shape.dim[i]
             : m->lo[i] + (n->src[0]->shape.dim[i] - 1) * m->step[i] + 1;
  d[0] = ir_slice(b, g, m->lo, end, m->step);
}

/* a then b along the axis; every other dim equal */
static bool shape_concat(Builder *b, Node *n, Shape *out) {
  Shape x = n->src[0]->shape, y = n->src[1]->shape;
  int64_t axis = n->attr.move.axis;
  if (axis < 0 || axis >= x.rank || x.dim[axis] < 0) MOVE_BUG(n);
  bool ok = x.rank == y.rank;
  for (int i = 0; ok && i < x.rank; i++) ok = i == axis || x.dim[i] == y.dim[i];
  if (!ok) {
    diag_error(b->loc, "cannot concatenate %s and %s along axis %lld", shape_str(x, true),
               shape_str(y, true), (long long)(axis - (x.dim[0] < 0)));
    return false;
  }
  *out = x;
  out->dim[axis] += y.dim[axis];
  return true;
}
/* CONCAT ↔ SLICE: da, db = the two parts of g */
GRAD(grad_concat) {
  int64_t lo[MAX_RANK], hi[MAX_RANK], step[MAX_RANK];
  int64_t axis = n->attr.move.axis, split = n->src[0]->shape.dim[axis];
  for (int i = 0; i < n->shape.rank; i++) lo[i] = 0, hi[i] = n->shape.dim[i], step[i] = 1;
  hi[axis] = split;
  d[0] = ir_slice(b, g, lo, hi, step);
  lo[axis] = split, hi[axis] = n->shape.dim[axis];
  d[1] = ir_slice(b, g, lo, hi, step);
}

/* gather(x, idx): x[:axis] + idx[lead:] + x[axis+1:], x and idx sharing their first `lead`
 * dims; false if the shapes do not fit together. */
static bool gather_shape(Shape x, Shape idx, int64_t axis, int64_t lead, Shape *out) {
  if (lead < 0 || lead > 1 || axis < lead || axis >= x.rank || x.dim[axis] < 0 ||
      idx.rank < lead || x.rank - 1 + idx.rank - lead > MAX_RANK)
    return false;
  if (lead && x.dim[0] != idx.dim[0]) return false;
  if (!lead && idx.rank && idx.dim[0] < 0 && axis != 0) return false; /* batch stays dim 0 */
  *out = (Shape){0};
  for (int i = 0; i < axis; i++) out->dim[out->rank++] = x.dim[i];
  for (int i = (int)lead; i < idx.rank; i++) out->dim[out->rank++] = idx.dim[i];
  for (int i = (int)axis + 1; i < x.rank; i++) out->dim[out->rank++] = x.dim[i];
  return true;
}
static bool shape_gather(Builder *b, Node *n, Shape *out) {
  Shape x = n->src[0]->shape, idx = n->src[1]->shape;
  if (gather_shape(x, idx, n->attr.move.axis, n->attr.move.lead, out)) return true;
  diag_error(b->loc, "cannot index %s with indices %s", shape_str(x, true), shape_str(idx, true));
  return false;
}
/* the result shape is given (x's); g must be what gathering from it gives */
static bool shape_scatter(Builder *b, Node *n, Shape *out) {
  (void)b;
  Shape g = n->src[0]->shape, want;
  if (!gather_shape(n->shape, n->src[1]->shape, n->attr.move.axis, n->attr.move.lead, &want) ||
      !shape_eq(want, g))
    MOVE_BUG(n);
  *out = n->shape;
  return true;
}
/* GATHER ↔ SCATTER_ADD: dx = g added back into the rows it was read from (repeated indices
 * accumulate); the indices get no gradient */
GRAD(grad_gather) {
  d[0] = ir_scatter_add(b, g, n->src[1], (int)n->attr.move.axis, (int)n->attr.move.lead,
                        n->src[0]->shape);
}
/* SCATTER_ADD ↔ GATHER: dg = the rows of g where the values went */
GRAD(grad_scatter) {
  d[0] = ir_gather(b, g, n->src[1], (int)n->attr.move.axis, (int)n->attr.move.lead);
}

/* the shape is given; a constant, so never batched */
static bool shape_iota(Builder *b, Node *n, Shape *out) {
  (void)b;
  if (n->attr.move.axis < 0 || n->attr.move.axis >= n->shape.rank) MOVE_BUG(n);
  for (int i = 0; i < n->shape.rank; i++)
    if (n->shape.dim[i] < 1) MOVE_BUG(n);
  *out = n->shape;
  return true;
}

/* RAND_*: the shape is given, and may be batched (noise per sample) */
static bool shape_random(Builder *b, Node *n, Shape *out) {
  (void)b;
  for (int i = 1; i < n->shape.rank; i++)
    if (n->shape.dim[i] < 1) MOVE_BUG(n);
  *out = n->shape;
  return true;
}

#undef MOVE_BUG

const OpInfo op_info[OP_COUNT] = {
#define OP(name, arity, cls, text, shape, grad) [OP_##name] = {text, arity, CLASS_##cls, shape, grad},
#include "ops.def"
#undef OP
};
