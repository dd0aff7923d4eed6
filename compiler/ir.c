/* ir.c — the tensor IR: shapes, the node builder, the printer and the verifier.
 *
 * Takes requests from sema and autodiff ("add these two nodes"), checks them with the op's
 * shape rule from ops.c, and appends nodes to a Graph in topological order. The printer's
 * text is stable: lit tests check it (--emit=ir, --emit=grad-ir). */
#include "nnc.h"

#include <stdlib.h>
#include <string.h>

/* ---- shapes ---- */

Shape shape_of(int rank, ...) {
  Shape s = {.rank = rank};
  va_list ap;
  va_start(ap, rank);
  for (int i = 0; i < rank; i++) s.dim[i] = va_arg(ap, int);
  va_end(ap);
  return s;
}

bool shape_eq(Shape a, Shape b) {
  if (a.rank != b.rank) return false;
  for (int i = 0; i < a.rank; i++)
    if (a.dim[i] != b.dim[i]) return false;
  return true;
}

int64_t shape_elems(Shape s, int64_t batch) {
  int64_t n = 1;
  for (int i = 0; i < s.rank; i++) n *= s.dim[i] < 0 ? -s.dim[i] * batch : s.dim[i];
  return n;
}

/* "f32[B,2]", or with per_sample the shape a user wrote: the batch dim left out. */
char *shape_str(Shape s, bool per_sample) {
  char buf[256];
  int len = snprintf(buf, sizeof buf, "f32[");
  bool first = true;
  for (int i = 0; i < s.rank; i++) {
    if (per_sample && s.dim[i] == DIM_BATCH) continue;
    if (s.dim[i] == DIM_BATCH)
      len += snprintf(buf + len, sizeof buf - len, "%sB", first ? "" : ",");
    else if (s.dim[i] < 0)
      len += snprintf(buf + len, sizeof buf - len, "%s%lldB", first ? "" : ",",
                      (long long)-s.dim[i]);
    else
      len += snprintf(buf + len, sizeof buf - len, "%s%lld", first ? "" : ",",
                      (long long)s.dim[i]);
    first = false;
  }
  snprintf(buf + len, sizeof buf - len, "]");
  return xstrdup(buf);
}

/* Every tensor region starts on a multiple of 16 elements: 64 bytes, a full f32 vector. */
int64_t padded_elems(int64_t elems) { return (elems + 15) / 16 * 16; }

/* numpy broadcasting: shapes align on the right; a dim of 1 stretches. */
bool shape_broadcast(Shape a, Shape b, Shape *out) {
  Shape r = {.rank = a.rank > b.rank ? a.rank : b.rank};
  for (int i = 0; i < r.rank; i++) {
    int ia = a.rank - r.rank + i, ib = b.rank - r.rank + i;
    int64_t da = ia >= 0 ? a.dim[ia] : 1, db = ib >= 0 ? b.dim[ib] : 1;
    if (da == db || db == 1) r.dim[i] = da;
    else if (da == 1) r.dim[i] = db;
    else return false;
  }
  *out = r;
  return true;
}

/* ---- graphs and nodes ---- */

Graph *ir_graph(const char *name) {
  Graph *g = xalloc(sizeof *g);
  g->name = name;
  return g;
}

/* ---- hash-consing: building a node equal to an existing one returns the existing one, so
 * common subexpressions (p - t used twice in mse, a parameter read twice) exist once ---- */

static uint64_t node_hash(const Node *n) {
  uint64_t h = 1469598103934665603u;
#define MIX(v) (h = (h ^ (uint64_t)(v)) * 1099511628211u)
  MIX(n->op), MIX(n->attr.index), MIX(n->attr.axes), MIX(n->attr.ta), MIX(n->attr.tb);
  uint64_t bits;
  memcpy(&bits, &n->attr.value, sizeof bits);
  MIX(bits), MIX(n->shape.rank);
  for (int i = 0; i < n->shape.rank; i++) MIX(n->shape.dim[i]);
  for (int i = 0; i < op_info[n->op].arity; i++) MIX(n->src[i]->id);
  int conv[sizeof n->attr.conv / sizeof(int)]; /* ConvAttr is ints only */
  memcpy(conv, &n->attr.conv, sizeof conv);
  for (size_t i = 0; i < sizeof conv / sizeof *conv; i++) MIX(conv[i]);
  int64_t move[sizeof n->attr.move / sizeof(int64_t)]; /* MoveAttr is int64_t only */
  memcpy(move, &n->attr.move, sizeof move);
  for (size_t i = 0; i < sizeof move / sizeof *move; i++) MIX(move[i]);
#undef MIX
  return h;
}

static bool node_same(const Node *a, const Node *b) {
  if (a->op != b->op || !shape_eq(a->shape, b->shape) || a->attr.index != b->attr.index ||
      a->attr.axes != b->attr.axes || a->attr.ta != b->attr.ta || a->attr.tb != b->attr.tb ||
      a->attr.any_order != b->attr.any_order ||
      memcmp(&a->attr.value, &b->attr.value, sizeof a->attr.value) ||
      memcmp(&a->attr.conv, &b->attr.conv, sizeof a->attr.conv) ||
      memcmp(&a->attr.move, &b->attr.move, sizeof a->attr.move))
    return false;
  for (int i = 0; i < op_info[a->op].arity; i++)
    if (a->src[i] != b->src[i]) return false;
  return true;
}

/* The slot holding a node equal to n, or the empty slot where it would go. */
static Node **table_slot(Graph *g, const Node *n) {
  uint64_t mask = g->table_cap - 1, i = node_hash(n) & mask;
  while (g->table[i] && !node_same(g->table[i], n)) i = (i + 1) & mask;
  return &g->table[i];
}

static void table_grow(Graph *g) {
  g->table_cap = g->table_cap ? 2 * g->table_cap : 256;
  while (g->table_cap < 2 * (g->n_nodes + 1)) g->table_cap *= 2; /* dropped by ir_prune, trim.c */
  g->table = xalloc(g->table_cap * sizeof *g->table);
  for (int i = 0; i < g->n_nodes; i++) *table_slot(g, g->nodes[i]) = g->nodes[i];
}

/* Adds a node like `proto` to the graph unless an equal one exists. */
static Node *intern(Builder *b, const Node *proto) {
  Graph *g = b->g;
  if (2 * (g->n_nodes + 1) > g->table_cap) table_grow(g);
  Node **slot = table_slot(g, proto);
  if (*slot) return *slot;
  if (g->n_nodes == g->cap) {
    int cap = g->cap ? 2 * g->cap : 64;
    Node **nodes = xalloc(cap * sizeof *nodes);
    if (g->n_nodes) memcpy(nodes, g->nodes, g->n_nodes * sizeof *nodes);
    g->nodes = nodes, g->cap = cap;
  }
  Node *n = xalloc(sizeof *n);
  *n = *proto;
  n->id = g->n_nodes, n->io = -1, n->loc = b->loc;
  g->nodes[g->n_nodes++] = n;
  *slot = n;
  return n;
}

void ir_output(Graph *g, Node *node, int io, int64_t offset, const char *label) {
  if (g->n_outs == g->out_cap) {
    int cap = g->out_cap ? 2 * g->out_cap : 16;
    Output *outs = xalloc(cap * sizeof *outs);
    if (g->n_outs) memcpy(outs, g->outs, g->n_outs * sizeof *outs);
    g->outs = outs, g->out_cap = cap;
  }
  g->outs[g->n_outs++] = (Output){node, io, offset, label};
}

Node *ir_leaf(Builder *b, OpKind op, Shape shape, int index, const char *name) {
  return intern(b, &(Node){.op = op, .shape = shape, .attr.index = index, .name = name});
}

Node *ir_const(Builder *b, double value) {
  return intern(b, &(Node){.op = OP_CONST, .attr.value = value});
}

Node *ir_scalar(Builder *b, OpKind op, int index, const char *name) {
  return ir_leaf(b, op, (Shape){0}, index, name);
}

/* Runs the op's shape rule on a candidate node; a NULL operand means an error was already
 * reported upstream, so it propagates silently. */
static Node *make_n(Builder *b, OpKind op, Node *x, Node *y, Node *z, Attr attr, Shape given) {
  Node tmp = {.op = op, .src = {x, y, z}, .attr = attr, .shape = given, .loc = b->loc};
  for (int i = 0; i < op_info[op].arity; i++)
    if (!tmp.src[i]) return NULL;
  if (!op_info[op].shape(b, &tmp, &tmp.shape)) {
    b->ok = false;
    return NULL;
  }
  return intern(b, &tmp);
}

static Node *make(Builder *b, OpKind op, Node *x, Node *y, Attr attr, Shape given) {
  return make_n(b, op, x, y, NULL, attr, given);
}

Node *ir_unary(Builder *b, OpKind op, Node *a) { return make(b, op, a, NULL, (Attr){0}, a ? a->shape : (Shape){0}); }
Node *ir_binary(Builder *b, OpKind op, Node *a, Node *c) { return make(b, op, a, c, (Attr){0}, (Shape){0}); }
Node *ir_reduce(Builder *b, OpKind op, Node *a, unsigned axes) {
  /* maxpool_bwd puts each of its gradients on one element of its window, so summing its
   * result over (at least) the pooled axes 1 and 2 sums its gradient, a quarter of the size
   * for 2x2 windows, to the same shape: the bias gradient of a conv before max pooling */
  if (op == OP_SUM && a && a->op == OP_MAXPOOL_BWD && (axes & 6u) == 6u) a = a->src[1];
  return make(b, op, a, NULL, (Attr){.axes = axes}, (Shape){0});
}
Node *ir_sum_any_order(Builder *b, Node *a) {
  if (!a) return NULL;
  unsigned all = (1u << a->shape.rank) - 1;
  Node *sum = make(b, OP_SUM, a, NULL, (Attr){.axes = all, .any_order = true}, (Shape){0});
  return ir_reshape(b, sum, (Shape){0});
}
Node *ir_expand(Builder *b, Node *a, Shape to) {
  if (a && shape_eq(a->shape, to)) return a;
  return make(b, OP_EXPAND, a, NULL, (Attr){0}, to);
}
Node *ir_reshape(Builder *b, Node *a, Shape to) {
  if (a && a->op == OP_RESHAPE) a = a->src[0]; /* a reshape of a reshape is one reshape */
  if (a && shape_eq(a->shape, to)) return a;
  return make(b, OP_RESHAPE, a, NULL, (Attr){0}, to);
}
/* x's source when x is a PERMUTE that swaps just the last two dims (a transpose), else NULL. */
static Node *transposed_source(const Node *x) {
  if (!x || x->op != OP_PERMUTE) return NULL;
  int r = x->shape.rank;
  const int64_t *p = x->attr.move.perm;
  for (int i = 0; i < r - 2; i++)
    if (p[i] != i) return NULL;
  return p[r - 2] == r - 1 && p[r - 1] == r - 2 ? x->src[0] : NULL;
}

/* A transposed operand is read through the GEMM's strides (ta/tb) rather than copied: the
 * tied head's x @ transpose(wte) and attention's q @ transpose(k) need no transpose pass, and
 * their gradients none back. (A transposed a with a shared 2-D c has no such form.) */
Node *ir_matmul(Builder *b, Node *a, Node *c, bool ta, bool tb) {
  Node *t;
  if ((t = transposed_source(c))) c = t, tb = !tb;
  if ((t = transposed_source(a)) && (ta || !c || c->shape.rank > 2 || a->shape.rank == 2))
    a = t, ta = !ta;
  return make(b, OP_MATMUL, a, c, (Attr){.ta = ta, .tb = tb}, (Shape){0});
}
Node *ir_window(Builder *b, OpKind op, Node *x, Node *y, ConvAttr conv, Shape given) {
  return make(b, op, x, y, (Attr){.conv = conv}, given);
}

/* ---- movement and indexing ---- */

Node *ir_permute(Builder *b, Node *x, const int64_t perm[]) {
  if (!x) return NULL;
  Attr at = {0};
  bool identity = true;
  for (int i = 0; i < x->shape.rank; i++) at.move.perm[i] = perm[i], identity &= perm[i] == i;
  return identity ? x : make(b, OP_PERMUTE, x, NULL, at, (Shape){0});
}

Node *ir_slice(Builder *b, Node *x, const int64_t begin[], const int64_t end[],
               const int64_t step[]) {
  if (!x) return NULL;
  Attr at = {0};
  bool whole = true;
  for (int i = 0; i < x->shape.rank; i++) {
    at.move.lo[i] = begin[i], at.move.hi[i] = end[i], at.move.step[i] = step[i];
    whole &= begin[i] == 0 && end[i] == x->shape.dim[i] && step[i] == 1;
  }
  return whole ? x : make(b, OP_SLICE, x, NULL, at, (Shape){0});
}

Node *ir_pad(Builder *b, Node *x, const int64_t before[], const int64_t after[],
             const int64_t step[]) {
  if (!x) return NULL;
  Attr at = {0};
  bool none = true;
  for (int i = 0; i < x->shape.rank; i++) {
    at.move.lo[i] = before[i], at.move.hi[i] = after[i], at.move.step[i] = step[i];
    none &= before[i] == 0 && after[i] == 0 && (step[i] == 1 || x->shape.dim[i] == 1);
  }
  return none ? x : make(b, OP_PAD, x, NULL, at, (Shape){0});
}

Node *ir_concat(Builder *b, Node *x, Node *y, int axis) {
  return make(b, OP_CONCAT, x, y, (Attr){.move.axis = axis}, (Shape){0});
}

Node *ir_where(Builder *b, Node *cond, Node *x, Node *y) {
  return make_n(b, OP_WHERE, cond, x, y, (Attr){0}, (Shape){0});
}

Node *ir_gather(Builder *b, Node *x, Node *idx, int axis, int lead) {
  return make(b, OP_GATHER, x, idx, (Attr){.move = {.axis = axis, .lead = lead}}, (Shape){0});
}

Node *ir_scatter_add(Builder *b, Node *g, Node *idx, int axis, int lead, Shape to) {
  return make(b, OP_SCATTER_ADD, g, idx, (Attr){.move = {.axis = axis, .lead = lead}}, to);
}

Node *ir_iota(Builder *b, Shape shape, int axis) {
  return make_n(b, OP_IOTA, NULL, NULL, NULL, (Attr){.move.axis = axis}, shape);
}

Node *ir_random(Builder *b, OpKind op, Shape shape, int salt) {
  return make_n(b, op, NULL, NULL, NULL, (Attr){.index = salt}, shape);
}

/* The gradient of a broadcast: sum g over the axes where `shape` had 1 or nothing. */
Node *ir_unbroadcast(Builder *b, Node *g, Shape shape) {
  if (!g || shape_eq(g->shape, shape)) return g;
  unsigned axes = 0;
  int lead = g->shape.rank - shape.rank;
  for (int i = 0; i < g->shape.rank; i++)
    if (i < lead || (shape.dim[i - lead] == 1 && g->shape.dim[i] != 1)) axes |= 1u << i;
  Node *s = axes ? ir_reduce(b, OP_SUM, g, axes) : g;
  return ir_reshape(b, s, shape);
}

/* ---- printer ---- */

/* The geometry of a movement or indexing op (see MoveAttr). */
static void print_move(FILE *out, const Node *n) {
  const MoveAttr *m = &n->attr.move;
  int rank = op_info[n->op].arity ? n->src[0]->shape.rank : 0;
  switch (n->op) {
  case OP_PERMUTE:
    fprintf(out, " perm=[");
    for (int i = 0; i < rank; i++) fprintf(out, "%s%lld", i ? "," : "", (long long)m->perm[i]);
    fprintf(out, "]");
    break;
  case OP_SLICE: /* numpy style: [lo:hi] or [lo:hi:step] by axis; ':' for all of the batch */
    fprintf(out, " [");
    for (int i = 0; i < rank; i++) {
      fprintf(out, "%s", i ? "," : "");
      if (n->src[0]->shape.dim[i] < 0) fprintf(out, ":");
      else fprintf(out, "%lld:%lld", (long long)m->lo[i], (long long)m->hi[i]);
      if (m->step[i] != 1) fprintf(out, ":%lld", (long long)m->step[i]);
    }
    fprintf(out, "]");
    break;
  case OP_PAD: {
    const int64_t *v[3] = {m->lo, m->hi, m->step};
    const char *name[3] = {"before", "after", "step"};
    bool strided = false;
    for (int i = 0; i < rank; i++) strided |= m->step[i] != 1;
    for (int k = 0; k < 2 + strided; k++) {
      fprintf(out, " %s=[", name[k]);
      for (int i = 0; i < rank; i++) fprintf(out, "%s%lld", i ? "," : "", (long long)v[k][i]);
      fprintf(out, "]");
    }
    break;
  }
  case OP_CONCAT: case OP_IOTA: fprintf(out, " axis=%lld", (long long)m->axis); break;
  case OP_RAND_UNIFORM: case OP_RAND_NORMAL: fprintf(out, " salt=%d", n->attr.index); break;
  case OP_GATHER: case OP_SCATTER_ADD:
    fprintf(out, " axis=%lld lead=%lld", (long long)m->axis, (long long)m->lead);
    break;
  default: break;
  }
}

void ir_print_node(FILE *out, const Node *n) {
  fprintf(out, "%%%d = %s", n->id, op_info[n->op].text);
  switch (n->op) {
  case OP_CONST: fprintf(out, " %.9g", n->attr.value); break;
  case OP_INPUT: case OP_PARAM: case OP_GRAD: case OP_STATE: case OP_HYPER:
    fprintf(out, " @%s", n->name);
    break;
  default: break;
  }
  for (int i = 0; i < op_info[n->op].arity; i++)
    fprintf(out, "%s %%%d", i ? "," : "", n->src[i]->id);
  if (op_info[n->op].cls == CLASS_REDUCE) {
    fprintf(out, " axes=[");
    const char *sep = "";
    for (int i = 0; i < MAX_RANK; i++)
      if (n->attr.axes >> i & 1) fprintf(out, "%s%d", sep, i), sep = ",";
    fprintf(out, "]%s", n->attr.any_order ? " any-order" : "");
  }
  if (n->op == OP_MATMUL && (n->attr.ta || n->attr.tb))
    fprintf(out, "%s%s", n->attr.ta ? " ta" : "", n->attr.tb ? " tb" : "");
  if (op_info[n->op].cls == CLASS_WINDOW) { /* convolution and pooling geometry */
    const ConvAttr *c = &n->attr.conv;
    fprintf(out, " window=[%d,%d] stride=[%d,%d]", c->kh, c->kw, c->sh, c->sw);
    if (c->dh != 1 || c->dw != 1) fprintf(out, " dilation=[%d,%d]", c->dh, c->dw);
    if (c->pt || c->pl || c->pb || c->pr)
      fprintf(out, " pad=[%d,%d,%d,%d]", c->pt, c->pl, c->pb, c->pr);
  }
  print_move(out, n);
  fprintf(out, " : %s", shape_str(n->shape, false));
}

void ir_print(FILE *out, const Graph *g) {
  fprintf(out, "func %s {\n", g->name);
  for (int i = 0; i < g->n_nodes; i++) {
    fprintf(out, "  ");
    ir_print_node(out, g->nodes[i]);
    fprintf(out, "\n");
  }
  for (int i = 0; i < g->n_outs; i++)
    fprintf(out, "  %s = %%%d\n", g->outs[i].label, g->outs[i].node->id);
  fprintf(out, "}\n");
}

/* ---- verifier: structural invariants every pass must keep ---- */

void ir_verify(const Graph *g) {
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *n = g->nodes[i];
    if (n->id != i) diag_internal(__FILE__, __LINE__, "%s: node %d has id %d", g->name, i, n->id);
    if (n->shape.rank < 0 || n->shape.rank > MAX_RANK)
      diag_internal(__FILE__, __LINE__, "%s: %%%d has rank %d", g->name, i, n->shape.rank);
    for (int d = 1; d < n->shape.rank; d++)
      if (n->shape.dim[d] < 1)
        diag_internal(__FILE__, __LINE__, "%s: %%%d has dim %d = %lld", g->name, i, d,
                      (long long)n->shape.dim[d]);
    for (int k = 0; k < op_info[n->op].arity; k++) {
      const Node *s = n->src[k];
      if (!s || s->id >= i || g->nodes[s->id] != s)
        diag_internal(__FILE__, __LINE__, "%s: %%%d operand %d is not an earlier node", g->name,
                      i, k);
    }
  }
  for (int i = 0; i < g->n_outs; i++) {
    const Node *n = g->outs[i].node;
    if (!n || n->id >= g->n_nodes || g->nodes[n->id] != n)
      diag_internal(__FILE__, __LINE__, "%s: output %s is not a node", g->name,
                    g->outs[i].label);
  }
}

/* ---- dead-node removal: keep what the outputs need, renumbered in order ---- */

void ir_prune(Graph *g) {
  bool *live = xalloc(g->n_nodes * sizeof *live);
  for (int i = 0; i < g->n_outs; i++) live[g->outs[i].node->id] = true;
  for (int i = g->n_nodes - 1; i >= 0; i--)
    if (live[i])
      for (int k = 0; k < op_info[g->nodes[i]->op].arity; k++) live[g->nodes[i]->src[k]->id] = true;
  int n = 0;
  for (int i = 0; i < g->n_nodes; i++)
    if (live[i]) g->nodes[n] = g->nodes[i], g->nodes[n]->id = n, n++;
  g->n_nodes = n;
  g->table = NULL, g->table_cap = 0; /* rebuilt on the next node */
}
