/* plan.c — memory planning: where every stored value of a fused graph lives.
 *
 * Takes a graph after fuse.c (groups in lowering order, Node.stored set) whose leaves already
 * point into their io regions (sema sets them), and gives every other stored node a region and
 * an element offset, sized for the largest batch:
 *   - an output's value is computed straight into its output region when no kernel that
 *     computes it would thereby write a region it does not own, and, where the region holds a
 *     leaf of the same graph (the optimizer's parameters and state), when every read of that
 *     leaf happens in the same loop at the same index: the update is then done in place;
 *   - a reshape that is not fused shares its operand's memory;
 *   - everything else goes in the arena. A value is live from its group to the last group
 *     that reads it (to the end, for an output copied out when the kernel finishes); values
 *     whose lifetimes do not overlap share space, placed largest first at the lowest offset
 *     that is free for the whole lifetime.
 * Nothing in the arena outlives a kernel call: every kernel recomputes what it needs from the
 * io regions, and the forward and eval kernels run a subset of the grad kernel's groups in
 * the same order, so one plan serves all of them and the arena is the largest plan. */
#include "nnc.h"

#include <stdlib.h>

const KernelSpec kernel_specs[N_KERNELS] = {
  {"nn_forward", false, 1u << NN_IO_OUT},
  {"nn_eval", false, (1u << NN_IO_OUT) | (1u << NN_IO_LOSS)},
  {"nn_grad", false, ~0u},
  {"nn_update", true, ~0u},
};

static bool in_memory(const Node *n) { return op_info[n->op].cls != CLASS_SCALAR; }
static bool is_leaf(const Node *n) { return op_info[n->op].cls == CLASS_LEAF; }

void plan_needed(const Graph *g, unsigned outs, bool *need) {
  for (int i = 0; i < g->n_outs; i++) {
    const Output *o = &g->outs[i];
    if (o->io >= 0 && o->io < 32 && (outs & (1u << o->io))) need[o->node->id] = true;
  }
  for (int i = g->n_nodes - 1; i >= 0; i--) /* reverse topological order */
    if (need[i])
      for (int k = 0; k < op_info[g->nodes[i]->op].arity; k++) need[g->nodes[i]->src[k]->id] = true;
}

/* A reshape fuse.c did not fold into a loop: it shares its operand's memory. */
static bool is_alias(const Graph *g, const Node *n) {
  return n->op == OP_RESHAPE && n->group >= 0 && g->groups[n->group].kind == GROUP_SINGLE &&
         in_memory(n->src[0]);
}

/* The node whose memory n's value is. */
static Node *alias_root(const Graph *g, Node *n) {
  while (is_alias(g, n)) n = n->src[0];
  return n;
}

/* May leaf `leaf` be overwritten by r's value, computed in place? Only if every read of the
 * leaf is in r's loop, which reads it at the index r is stored to, and no output copies it. */
static bool in_place_ok(const Graph *g, const Node *leaf, const Node *r) {
  const Group *G = &g->groups[r->group];
  if (G->kind != GROUP_LOOP || !fuse_same_loop(leaf->shape, G->loop)) return false;
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *u = g->nodes[i];
    for (int k = 0; k < op_info[u->op].arity; k++)
      if (u->src[k] == leaf && u->group != r->group) return false;
  }
  for (int i = 0; i < g->n_outs; i++)
    if (alias_root(g, g->outs[i].node) == leaf) return false;
  return true;
}

/* Puts output o's value in its region if that is safe (see the file comment). */
static void place_output(Graph *g, const Output *o, bool *const need[N_KERNELS], bool update,
                         int64_t max_batch) {
  if (o->io == NN_IO_LOSS || o->io == NN_IO_HYPER || o->io == NN_IO_ARENA)
    return; /* one double: the loss, a schedule's "lr used" */
  Node *r = alias_root(g, o->node);
  if (!in_memory(r) || is_leaf(r) || r->io >= 0 || !r->stored) return;
  for (int k = 0; k < N_KERNELS; k++)
    if (kernel_specs[k].update == update && need[k][r->id] &&
        !(kernel_specs[k].outs & (1u << o->io)))
      return;
  int64_t elems = shape_elems(o->node->shape, max_batch);
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *leaf = g->nodes[i];
    if (!is_leaf(leaf) || leaf->io != o->io) continue;
    int64_t lo = leaf->offset, hi = lo + shape_elems(leaf->shape, max_batch);
    if (hi <= o->offset || lo >= o->offset + elems) continue;
    if (lo != o->offset || hi != o->offset + elems || !in_place_ok(g, leaf, r)) return;
  }
  r->io = o->io, r->offset = o->offset;
}

typedef struct Value {
  Node *node;
  int first, last;   /* groups, inclusive */
  int64_t size;      /* padded elements */
} Value;

static int by_size(const void *a, const void *b) {
  const Value *x = a, *y = b;
  if (x->size != y->size) return x->size > y->size ? -1 : 1;
  return x->first - y->first;
}

static int by_offset(const void *a, const void *b) {
  int64_t x = (*(Value *const *)a)->node->offset, y = (*(Value *const *)b)->node->offset;
  return x < y ? -1 : x > y;
}

/* Largest first, each at the lowest offset free for its whole lifetime. Returns the top. */
static int64_t place_arena(Value *v, int n) {
  qsort(v, (size_t)n, sizeof *v, by_size);
  Value **live = xalloc(sizeof *live * ((size_t)n + 1));
  int64_t top = 0;
  for (int i = 0; i < n; i++) {
    int m = 0;
    for (int j = 0; j < i; j++)
      if (v[j].first <= v[i].last && v[i].first <= v[j].last) live[m++] = &v[j];
    qsort(live, (size_t)m, sizeof *live, by_offset);
    int64_t at = 0;
    for (int j = 0; j < m; j++) {
      int64_t lo = live[j]->node->offset;
      if (lo >= at + v[i].size) break; /* the gap before it is big enough */
      if (lo + live[j]->size > at) at = lo + live[j]->size;
    }
    v[i].node->io = NN_IO_ARENA, v[i].node->offset = at;
    if (at + v[i].size > top) top = at + v[i].size;
  }
  return top;
}

void plan_memory(Graph *g, int64_t max_batch, bool update) {
  int n = g->n_nodes;
  /* what one slot per node, unfused, would need: every computed node but an aliasing reshape */
  g->unplanned_elems = 0;
  for (int i = 0; i < n; i++) {
    const Node *x = g->nodes[i];
    OpClass c = op_info[x->op].cls;
    if (c == CLASS_LEAF || c == CLASS_SCALAR || (x->op == OP_RESHAPE && in_memory(x->src[0])))
      continue;
    g->unplanned_elems += padded_elems(shape_elems(x->shape, max_batch));
  }
  for (int i = 0; i < n; i++) {
    Node *x = g->nodes[i];
    if (is_leaf(x)) {
      if (x->io < 0) diag_internal(__FILE__, __LINE__, "leaf %%%d has no region", x->id);
      continue;
    }
    if (x->group < 0 && in_memory(x))
      diag_internal(__FILE__, __LINE__, "%%%d is in no group: fuse_graph did not run", x->id);
    x->io = -1, x->offset = 0;
  }

  bool *need[N_KERNELS];
  for (int k = 0; k < N_KERNELS; k++) {
    need[k] = xalloc((size_t)n + 1);
    if (kernel_specs[k].update == update) plan_needed(g, kernel_specs[k].outs, need[k]);
  }
  for (int i = 0; i < g->n_outs; i++) place_output(g, &g->outs[i], need, update, max_batch);

  /* lifetimes in group order; a read through an aliasing reshape reads its root */
  int *last = xalloc(sizeof *last * ((size_t)n + 1));
  for (int i = 0; i < n; i++) last[i] = g->nodes[i]->group;
  for (int i = 0; i < n; i++) {
    const Node *x = g->nodes[i];
    for (int k = 0; k < op_info[x->op].arity; k++) {
      int r = alias_root(g, x->src[k])->id;
      if (x->group > last[r]) last[r] = x->group;
    }
  }
  for (int i = 0; i < g->n_outs; i++) /* copied out when the kernel finishes */
    last[alias_root(g, g->outs[i].node)->id] = g->n_groups;

  Value *v = xalloc(sizeof *v * ((size_t)n + 1));
  int nv = 0;
  for (int i = 0; i < n; i++) {
    Node *x = g->nodes[i];
    if (is_leaf(x) || !x->stored || !in_memory(x) || is_alias(g, x) || x->io >= 0) continue;
    v[nv++] = (Value){x, x->group, last[i], padded_elems(shape_elems(x->shape, max_batch))};
  }
  g->arena_elems = place_arena(v, nv);
  for (int i = 0; i < n; i++) { /* aliases follow their roots, in topological order */
    Node *x = g->nodes[i];
    if (is_alias(g, x)) x->io = x->src[0]->io, x->offset = x->src[0]->offset;
  }
}
