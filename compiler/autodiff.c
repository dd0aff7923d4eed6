/* autodiff.c — symbolic reverse-mode differentiation, IR → IR.
 *
 * Takes the train graph (whose "loss" output is a scalar) and appends to it the gradient of
 * the loss with respect to every parameter that is not frozen (those are constants here), as
 * outputs to NN_IO_GRAD. It walks the nodes in reverse topological order, calls each op's
 * gradient rule from ops.c, and sums the contributions a node receives from its users with
 * `add`. The result is ordinary IR, so the later stages need no special cases and
 * --emit=grad-ir can print it. */
#include "nnc.h"

#include <string.h>

static Node *loss_of(const Graph *g) {
  for (int i = 0; i < g->n_outs; i++)
    if (g->outs[i].io == NN_IO_LOSS) return g->outs[i].node;
  return NULL;
}

/* The reverse walk: from y (whose adjoint adj[y] is set) down to node `lo`, calling each op's
 * gradient rule where needs[] says the node depends on what is being differentiated for,
 * summing contributions with add. Nodes it makes get ids past the arrays, which it never
 * reads. False after an error naming an op with no gradient rule. */
static bool backward(Builder *b, Node *y, int lo, const bool *needs, Node **adj) {
  Graph *g = b->g;
  for (int i = y->id; i >= lo; i--) {
    Node *x = g->nodes[i];
    if (!adj[i] || !needs[i] || op_info[x->op].arity == 0) continue;
    if (!op_info[x->op].grad) {
      diag_error(x->loc, "cannot differentiate '%s': it has no gradient rule",
                 op_info[x->op].text);
      return false;
    }
    b->loc = x->loc;
    Node *d[3] = {NULL, NULL, NULL};
    op_info[x->op].grad(b, x, adj[i], d);
    for (int k = 0; k < op_info[x->op].arity; k++) {
      Node *src = x->src[k];
      if (!d[k] || !needs[src->id]) continue;
      if (!shape_eq(d[k]->shape, src->shape))
        diag_internal(__FILE__, __LINE__, "gradient of %s operand %d is %s, operand is %s",
                      op_info[x->op].text, k, shape_str(d[k]->shape, false),
                      shape_str(src->shape, false));
      adj[src->id] = adj[src->id] ? ir_add(b, adj[src->id], d[k]) : d[k];
    }
    if (!b->ok) diag_internal(__FILE__, __LINE__, "a gradient rule of '%s' failed", op_info[x->op].text);
  }
  return true;
}

Node *ad_grad(Builder *b, Node *y, Node *wrt) {
  Graph *g = b->g;
  int n = g->n_nodes;
  Loc loc = b->loc;
  bool *needs = xalloc(n * sizeof *needs); /* depends on wrt */
  for (int i = wrt->id; i <= y->id; i++) {
    Node *x = g->nodes[i];
    needs[i] = x == wrt;
    for (int k = 0; k < op_info[x->op].arity; k++) needs[i] |= needs[x->src[k]->id];
  }
  if (y->id < wrt->id || !needs[y->id]) return ir_expand(b, ir_const(b, 0), wrt->shape);
  Node **adj = xalloc(n * sizeof *adj);
  /* each sample's y depends on its own inputs only, so seeding every y with 1 gives each
   * sample its own gradient */
  adj[y->id] = y->shape.rank ? ir_expand(b, ir_const(b, 1), y->shape) : ir_const(b, 1);
  bool ok = backward(b, y, wrt->id, needs, adj);
  b->loc = loc;
  return ok ? adj[wrt->id] : NULL;
}

/* The gradient of g's loss with respect to every parameter that is not frozen. */
static bool gradients_of(Unit *u, Graph *g) {
  Node *loss = loss_of(g);
  if (!loss) diag_internal(__FILE__, __LINE__, "train graph has no loss");
  int n = g->n_nodes;
  /* only nodes that depend on a parameter need a gradient */
  bool *needs = xalloc(n * sizeof *needs);
  for (int i = 0; i < n; i++) {
    Node *x = g->nodes[i];
    needs[i] = x->op == OP_PARAM && !u->params[x->attr.index].frozen; /* frozen: a constant */
    for (int k = 0; k < op_info[x->op].arity; k++) needs[i] |= needs[x->src[k]->id];
  }
  Node **adj = xalloc(n * sizeof *adj); /* adj[i] = dLoss / d nodes[i] */
  Builder b = {g, loss->loc, true};
  adj[loss->id] = ir_const(&b, 1);
  if (!backward(&b, loss, 0, needs, adj)) return false;
  /* a parameter read in several places (a model called twice) sums its leaves' gradients */
  for (int p = 0; p < u->n_params; p++) {
    const ParamDecl *pd = &u->params[p];
    if (pd->buffer) continue; /* not trained: sema put its next value in its GRAD slot */
    if (pd->frozen) continue; /* its gradient region stays zero */
    Node *grad = NULL;
    for (int i = 0; i < n; i++) {
      Node *x = g->nodes[i];
      if (x->op != OP_PARAM || x->attr.index != p || !adj[i]) continue;
      b.loc = x->loc;
      grad = grad ? ir_add(&b, grad, adj[i]) : adj[i];
    }
    if (!grad) grad = ir_expand(&b, ir_const(&b, 0), pd->shape); /* unused by the loss */
    ir_output(g, grad, NN_IO_GRAD, pd->offset, xprintf("grad %s", pd->name));
  }
  ir_prune(g);
  ir_verify(g);
  return true;
}

bool ad_gradients(Unit *u) {
  if (!u->n_steps) return gradients_of(u, u->train);
  /* each step differentiates its loss with respect to the parameters it updates; the rest
   * are constants it differentiates through (the discriminator, for the generator's step) */
  bool ok = true;
  for (int k = 0; k < u->n_steps && ok; k++) {
    const Step *sp = &u->steps[k];
    for (int p = 0; p < u->n_params; p++) u->params[p].frozen = p >= sp->n_known || !sp->updates[p];
    ok = gradients_of(u, sp->train);
  }
  for (int p = 0; p < u->n_params; p++) u->params[p].frozen = false;
  return ok;
}
