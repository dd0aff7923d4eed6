/* trim.c — bounds inference: the rows and columns of an image that nothing reads are never
 * computed.
 *
 * A window that stops short of its image's end leaves the image's last rows unread (2x2 max
 * pooling in floor mode of conv2's 11x11 result in the textbook CNN leaves the last row and
 * column), and so on up the chain. For each image-valued node (a batched [B, H, W, C]) this
 * pass finds the extent [0, E) of each spatial axis that its readers need, and shrinks the
 * node to it:
 *   - a convolution or pooling makes fewer output rows through a smaller (possibly negative)
 *     bottom or right padding: the outputs it keeps read the same taps, so keep their values;
 *   - an elementwise op takes the extent of its image operands, which shrink alike;
 *   - a window op reading a shrunk image keeps its result through a bottom or right padding
 *     in the bounds that leave its taps where they were (none of them read the rows dropped).
 * Outputs and every other reader (reshape, matmul, reductions, gradient ops sema made) read
 * all. It runs on the forward graphs before autodiff, so the gradient never makes the dropped
 * rows either (theirs was zero). In the textbook CNN conv2 computes 10x10 of its 11x11 pixels,
 * pool1 12x12 of 13x13 and conv1 24x24 of 26x26. Only the sums of the reductions over pixels
 * (filter and bias gradients) lose terms that were zeros, which can move their last bit. */
#include "nnc.h"

/* The shrinkable values: batched NHWC images made by a window op or an elementwise op. */
static bool is_image(const Node *n) { return n->shape.rank == 4 && n->shape.dim[0] < 0; }

static bool is_window(const Node *n) {
  return n->op == OP_CONV2D || n->op == OP_MAXPOOL || n->op == OP_AVGPOOL;
}

static bool shrinkable(const Node *n) {
  return is_image(n) && (is_window(n) || op_info[n->op].cls == CLASS_ELEM);
}

/* Does operand k of elementwise n run along n's spatial axis a (dim 1 + a) rather than
 * broadcast over it? */
static bool carries(const Node *n, int k, int a) {
  Shape s = n->src[k]->shape;
  int d = 1 + a, j = d - (n->shape.rank - s.rank);
  return n->shape.dim[d] > 1 && j >= 0 && s.dim[j] == n->shape.dim[d];
}

/* The window's geometry along axis a: size, stride, dilation, padding before and after. */
static void axis_geometry(const Node *n, int a, int *k, int *s, int *d, int **p0, int **p1) {
  ConvAttr *c = (ConvAttr *)&n->attr.conv;
  *k = a ? c->kw : c->kh, *s = a ? c->sw : c->sh, *d = a ? c->dw : c->dh;
  *p0 = a ? &c->pl : &c->pt, *p1 = a ? &c->pr : &c->pb;
}

/* How much of axis a of its operand k reader x reads when x has extent e there. */
static int64_t reads(const Node *x, int k, int a, int64_t e) {
  int64_t all = x->src[k]->shape.dim[1 + a];
  if (!shrinkable(x)) return all;
  if (!is_window(x)) return carries(x, k, a) ? e : all;
  int kk, s, d, *p0, *p1;
  axis_geometry(x, a, &kk, &s, &d, &p0, &p1);
  int64_t last = (e - 1) * s - *p0 + (int64_t)(kk - 1) * d; /* the last tap's row */
  return last + 1 < 1 ? 1 : last + 1 > all ? all : last + 1;
}

void trim_graph(Graph *g) {
  int n = g->n_nodes;
  int64_t (*ext)[2] = xalloc(sizeof *ext * (size_t)(n + 1));
  bool *fixed = xalloc(sizeof *fixed * (size_t)(n + 1)); /* keeps its full extent */
  bool *read = xalloc(sizeof *read * (size_t)(n + 1));
  for (int i = 0; i < n; i++)
    for (int k = 0; k < op_info[g->nodes[i]->op].arity; k++) read[g->nodes[i]->src[k]->id] = true;
  for (int i = 0; i < g->n_outs; i++) fixed[g->outs[i].node->id] = true;
  for (int i = 0; i < n; i++) {
    const Node *x = g->nodes[i];
    fixed[i] |= !shrinkable(x) || !read[i];
    for (int a = 0; a < 2; a++) ext[i][a] = fixed[i] && is_image(x) ? x->shape.dim[1 + a] : 0;
  }
  for (bool changed = true; changed;) {
    changed = false;
    for (int i = n - 1; i >= 0; i--) { /* every reader before what it reads */
      const Node *x = g->nodes[i];
      for (int k = 0; k < op_info[x->op].arity; k++) {
        const Node *s = x->src[k];
        if (!is_image(s) || fixed[s->id]) continue;
        for (int a = 0; a < 2; a++) {
          int64_t r = reads(x, k, a, ext[i][a]);
          if (r > ext[s->id][a]) ext[s->id][a] = r;
        }
      }
    }
    /* an elementwise op and its image operands share one extent: the largest of them */
    for (int i = 0; i < n; i++) {
      const Node *x = g->nodes[i];
      if (!shrinkable(x) || is_window(x)) continue;
      for (int a = 0; a < 2; a++) {
        int64_t m = ext[i][a];
        for (int k = 0; k < op_info[x->op].arity; k++)
          if (carries(x, k, a) && ext[x->src[k]->id][a] > m) m = ext[x->src[k]->id][a];
        for (int k = -1; k < op_info[x->op].arity; k++) {
          int j = k < 0 ? i : x->src[k]->id;
          if ((k < 0 || carries(x, k, a)) && ext[j][a] < m) ext[j][a] = m, changed = true;
        }
      }
    }
  }
  bool *shrunk = xalloc(sizeof *shrunk * (size_t)(n + 1));
  for (int i = 0; i < n; i++)
    shrunk[i] = !fixed[i] && (ext[i][0] < g->nodes[i]->shape.dim[1] ||
                              ext[i][1] < g->nodes[i]->shape.dim[2]);
  /* the nodes to redo: the shrunk ones, and the window ops reading one (an output's too,
   * whose own extent stays whole) */
  bool *redo = xalloc(sizeof *redo * (size_t)(n + 1));
  for (int i = 0; i < n; i++)
    redo[i] = shrunk[i] || (is_window(g->nodes[i]) && shrunk[g->nodes[i]->src[0]->id]);
  for (int i = 0; i < n; i++) { /* in order: a window's operand has its new shape */
    Node *x = g->nodes[i];
    if (!redo[i]) continue;
    x->shape.dim[1] = ext[i][0], x->shape.dim[2] = ext[i][1];
    if (is_window(x)) /* the padding after that gives this extent, nearest 0 */
      for (int a = 0; a < 2; a++) {
        int kk, s, d, *p0, *p1;
        axis_geometry(x, a, &kk, &s, &d, &p0, &p1);
        int64_t lo = (x->shape.dim[1 + a] - 1) * s - x->src[0]->shape.dim[1 + a] - *p0 +
                     (int64_t)(kk - 1) * d + 1;
        int64_t hi = lo + s - 1;
        *p1 = (int)(lo > 0 ? lo : hi < 0 ? hi : 0);
      }
  }
  /* every node redone must still fit its shape rule */
  Builder b = {g, (Loc){0}, true};
  for (int i = 0; i < n; i++) {
    Node *x = g->nodes[i];
    if (!redo[i]) continue;
    Shape s = {0};
    if (!op_info[x->op].shape(&b, x, &s) || !shape_eq(s, x->shape))
      diag_internal(__FILE__, __LINE__, "trim: %%%d no longer fits its operands", x->id);
  }
  g->table = NULL, g->table_cap = 0; /* shapes and attrs changed: rehashed on the next node */
}
