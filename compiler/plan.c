/* plan.c — memory planning: where every value of a graph lives.
 *
 * Takes a graph whose leaves already point into their io regions (sema sets them) and gives
 * every computed node a slot in the arena, sized for the largest batch. A reshape shares its
 * operand's memory. For now each node has its own slot (no reuse across lifetimes): the
 * speed issue replaces this with a liveness-based plan. */
#include "nnc.h"

void plan_memory(Graph *g, int64_t max_batch) {
  int64_t top = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    Node *n = g->nodes[i];
    switch (op_info[n->op].cls) {
    case CLASS_SCALAR: n->io = -1; continue;
    case CLASS_LEAF:
      if (n->io < 0) diag_internal(__FILE__, __LINE__, "leaf %%%d has no region", n->id);
      continue;
    default: break;
    }
    if (n->op == OP_RESHAPE && n->src[0]->io >= 0) {
      n->io = n->src[0]->io, n->offset = n->src[0]->offset;
      continue;
    }
    n->io = NN_IO_ARENA, n->offset = top;
    top += padded_elems(shape_elems(n->shape, max_batch));
  }
  g->arena_elems = top;
}
