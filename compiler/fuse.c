/* fuse.c — loop fusion: which nodes are computed together, and which values reach memory.
 *
 * Takes a graph after autodiff and gives it Graph.groups, in an order that respects every
 * dependency, and Node.group / Node.stored. A loop group is one loop nest in which every
 * member is evaluated at the same index, so a value used only inside its group never touches
 * memory: elementwise chains with their broadcasts (an EXPAND is a load with stride 0), the
 * chain feeding a reduction (the loop runs over the reduction's operand, accumulating into its
 * result), the backward pass's elementwise ops, and an optimizer's update of one parameter,
 * whose new parameter and state are stored members of one loop (plan.c puts them in place).
 * Everything else (matmul, convolution, pooling, movement, a reshape that is not just 1-dims
 * added or dropped) is a group of its own whose result is stored.
 *
 * Nodes are visited in reverse topological order, so a node's users already have their group
 * when it is placed: it joins the group of a user whose loop it matches, unless that would
 * make the groups depend on each other in a cycle or give the loop too many operands. It is
 * stored if it is an output or has a user outside its group. */
#include "nnc.h"

#include <stdlib.h>
#include <string.h>

Shape fuse_squeeze(Shape s) {
  Shape r = {0};
  for (int i = 0; i < s.rank; i++)
    if (s.dim[i] != 1) r.dim[r.rank++] = s.dim[i];
  return r;
}

bool fuse_same_loop(Shape a, Shape b) { return shape_eq(fuse_squeeze(a), fuse_squeeze(b)); }

typedef struct Fuser {
  Graph *g;
  Node ***users;      /* by node id: the nodes that read it (n_users) */
  int *n_users;
  bool *is_output;    /* by node id */
  Group *groups;      /* n_groups of cap, in creation order (reverse topological by root) */
  int n_groups, cap;
  int *seen;          /* by group: the search that last visited it (cycle check) */
  int *stack;         /* the cycle check's groups to visit (cap entries) */
  int search;         /* the current search's number */
  bool enabled;       /* false: every node is a group of its own */
} Fuser;

static bool in_memory(const Node *n) { return op_info[n->op].cls != CLASS_SCALAR; }

static void add_member(Group *G, Node *n) {
  if (G->n_members == G->cap) {
    int cap = G->cap ? 2 * G->cap : 8;
    Node **m = xalloc(sizeof *m * (size_t)cap);
    if (G->n_members) memcpy(m, G->members, sizeof *m * (size_t)G->n_members);
    G->members = m, G->cap = cap;
  }
  G->members[G->n_members++] = n;
}

static int new_group(Fuser *f, GroupKind kind, Shape loop) {
  if (f->n_groups == f->cap) {
    int cap = f->cap ? 2 * f->cap : 64;
    Group *gs = xalloc(sizeof *gs * (size_t)cap);
    if (f->n_groups) memcpy(gs, f->groups, sizeof *gs * (size_t)f->n_groups);
    f->groups = gs, f->cap = cap;
    f->seen = xalloc(sizeof *f->seen * (size_t)cap); /* marks restart: searches only grow */
    f->stack = xalloc(sizeof *f->stack * (size_t)cap);
  }
  f->groups[f->n_groups] = (Group){.kind = kind, .loop = loop};
  return f->n_groups++;
}

/* Stored if an output or read by a node outside group gi. */
static bool needs_store(const Fuser *f, const Node *n, int gi) {
  if (f->is_output[n->id]) return true;
  for (int k = 0; k < f->n_users[n->id]; k++)
    if (f->users[n->id][k]->group != gi) return true;
  return false;
}

/* The loop operands of group gi: stored members, and each read of memory outside it. */
static int count_ports(const Fuser *f, int gi) {
  const Group *G = &f->groups[gi];
  int ports = 0;
  for (int i = 0; i < G->n_members; i++) {
    const Node *m = G->members[i];
    ports += m->stored;
    for (int k = 0; k < op_info[m->op].arity; k++)
      ports += in_memory(m->src[k]) && m->src[k]->group != gi;
  }
  return ports;
}

/* Would the groups depend on each other in a cycle if group gi (n already in it) were one
 * unit? Yes if a group that reads from gi reaches gi again. */
static bool makes_cycle(Fuser *f, int gi) {
  int search = ++f->search;
  int *stack = f->stack, top = 0; /* each group is pushed at most once */
  f->seen[gi] = search;
  const Group *G = &f->groups[gi];
  for (int i = 0; i < G->n_members; i++) {
    const Node *m = G->members[i];
    for (int k = 0; k < f->n_users[m->id]; k++) {
      int h = f->users[m->id][k]->group;
      if (h != gi && f->seen[h] != search) f->seen[h] = search, stack[top++] = h;
    }
  }
  while (top) {
    const Group *H = &f->groups[stack[--top]];
    for (int i = 0; i < H->n_members; i++) {
      const Node *m = H->members[i];
      for (int k = 0; k < f->n_users[m->id]; k++) {
        int h = f->users[m->id][k]->group;
        if (h == gi) return true;
        if (f->seen[h] != search) f->seen[h] = search, stack[top++] = h;
      }
    }
  }
  return false;
}

/* Tries to put n in loop group gi; undoes it and returns false if that does not fit. */
static bool try_join(Fuser *f, Node *n, int gi) {
  Group *G = &f->groups[gi];
  if (G->kind != GROUP_LOOP || !fuse_same_loop(n->shape, G->loop)) return false;
  n->group = gi;
  n->stored = needs_store(f, n, gi);
  add_member(G, n);
  int ports = count_ports(f, gi);
  if (ports <= FUSE_MAX_PORTS && !makes_cycle(f, gi)) {
    G->ports = ports;
    return true;
  }
  G->n_members--;
  n->group = -1;
  return false;
}

static void place(Fuser *f, Node *n) {
  n->group = -1;
  n->stored = false;
  switch (op_info[n->op].cls) {
  case CLASS_LEAF: n->stored = true; return; /* already in memory */
  case CLASS_SCALAR: return;                 /* an SSA value, made at kernel entry */
  default: break;
  }
  bool loopable = op_info[n->op].cls == CLASS_ELEM || n->op == OP_EXPAND ||
                  (n->op == OP_RESHAPE && fuse_same_loop(n->shape, n->src[0]->shape));
  if (loopable && f->enabled)
    for (int k = 0; k < f->n_users[n->id]; k++) {
      int gi = f->users[n->id][k]->group;
      if (gi >= 0 && try_join(f, n, gi)) return;
    }
  int gi;
  if (op_info[n->op].cls == CLASS_REDUCE) {
    gi = new_group(f, GROUP_LOOP, fuse_squeeze(n->src[0]->shape));
  } else if (loopable && (n->op != OP_RESHAPE || !in_memory(n->src[0]))) {
    gi = new_group(f, GROUP_LOOP, fuse_squeeze(n->shape));
  } else { /* including a reshape that aliases its operand's memory */
    gi = new_group(f, GROUP_SINGLE, n->shape);
  }
  n->group = gi;
  n->stored = true;
  add_member(&f->groups[gi], n);
  f->groups[gi].ports = count_ports(f, gi);
}

/* May a loop over C (shape c) read memory of shape x, as a value of c's shape, as part of C's
 * epilogue? It runs over C as rows (every dim but the last, flattened) by columns, so x must
 * be C's shape, or constant along the rows (1-dims, then C's last dim or 1). */
static bool epilogue_operand(Shape x, Shape c) {
  if (shape_eq(x, c)) return true;
  if (x.rank > c.rank) return false;
  for (int i = 0; i + 1 < x.rank; i++)
    if (x.dim[i] != 1) return false;
  return x.rank == 0 || x.dim[x.rank - 1] == 1 || x.dim[x.rank - 1] == c.dim[c.rank - 1];
}

/* Can loop group h be the epilogue of n (a matmul or conv2d it alone reads)? */
static bool fits_epilogue(const Fuser *f, const Node *n, int h) {
  const Group *H = &f->groups[h];
  Shape c = n->shape;
  if (H->kind != GROUP_LOOP || c.rank < 2 || fuse_squeeze(c).rank != c.rank ||
      !shape_eq(H->loop, c))
    return false;
  for (int i = 0; i < H->n_members; i++) {
    const Node *m = H->members[i];
    if (op_info[m->op].cls != CLASS_ELEM && m->op != OP_EXPAND) return false;
    if (!shape_eq(m->shape, c)) return false;
    for (int k = 0; k < op_info[m->op].arity; k++) {
      const Node *s = m->src[k];
      if (!in_memory(s) || s->group == h) continue;
      if (s == n ? m->op == OP_EXPAND : !epilogue_operand(s->shape, c)) return false;
    }
  }
  return true;
}

/* Each matmul or conv2d whose result only one loop group reads takes it as its epilogue, when
 * it fits: the loop's members join the matmul's group, whose lowering runs them on every
 * block of C the GEMM finishes (no cycle can follow: only that group reads the result). */
static void take_epilogues(Fuser *f) {
  for (int gi = 0; gi < f->n_groups; gi++) {
    Group *G = &f->groups[gi];
    if (G->kind != GROUP_SINGLE) continue;
    Node *n = G->members[0];
    if ((n->op != OP_MATMUL && n->op != OP_CONV2D) || !f->n_users[n->id]) continue;
    int h = f->users[n->id][0]->group;
    bool one = h >= 0;
    for (int k = 1; k < f->n_users[n->id]; k++) one &= f->users[n->id][k]->group == h;
    if (!one || !fits_epilogue(f, n, h)) continue;
    Group *H = &f->groups[h];
    for (int i = 0; i < H->n_members; i++) {
      H->members[i]->group = gi;
      add_member(G, H->members[i]);
    }
    G->kind = GROUP_EPILOGUE;
    G->loop = H->loop;
    H->n_members = 0;
  }
}

/* Moves x into group gi when x is alone in a group of its own (emptied then); else false. */
static bool take_alone(Fuser *f, Node *x, int gi) {
  if (x->group < 0) return false;
  Group *H = &f->groups[x->group];
  if (H->kind != GROUP_SINGLE || H->n_members != 1) return false;
  H->n_members = 0;
  x->group = gi;
  return true;
}

/* Each filter gradient whose output gradient is a pooling gradient that nothing else reads
 * takes it as its prologue: made per sample into the worker's scratch right before the
 * sample's GEMM, which reads it from cache (it keeps its arena slot, for lowerings that run
 * the two apart). No cycle can follow: only the filter gradient reads the pooling gradient. */
static void take_prologues(Fuser *f) {
  for (int gi = 0; gi < f->n_groups; gi++) {
    Group *G = &f->groups[gi];
    if (G->kind != GROUP_SINGLE || G->members[0]->op != OP_CONV2D_BWD_FILTER) continue;
    Node *d = G->members[0]->src[1];
    if ((d->op != OP_MAXPOOL_BWD && d->op != OP_AVGPOOL_BWD) || f->is_output[d->id] ||
        f->n_users[d->id] != 1 || !take_alone(f, d, gi))
      continue;
    add_member(G, d);
    G->kind = GROUP_PROLOGUE;
  }
}

/* Each conv2d group (with or without an epilogue) whose result is max- or average-pooled
 * takes the pooling along (Group.pooled): the convolution pools each sample as soon as the
 * sample is done. No cycle can follow: the pooling reads only the group's result. */
static void take_pools(Fuser *f) {
  for (int gi = 0; gi < f->n_groups; gi++) {
    Group *G = &f->groups[gi];
    if ((G->kind != GROUP_SINGLE && G->kind != GROUP_EPILOGUE) || !G->n_members ||
        G->members[0]->op != OP_CONV2D)
      continue;
    for (int i = 0; i < G->n_members && !G->pooled; i++) {
      const Node *m = G->members[i];
      for (int k = 0; k < f->n_users[m->id] && !G->pooled; k++) {
        Node *u = f->users[m->id][k];
        if ((u->op == OP_MAXPOOL || u->op == OP_AVGPOOL) && take_alone(f, u, gi)) G->pooled = u;
      }
    }
  }
}

/* Depth first: the groups a group reads from go before it. */
static void order_group(Fuser *f, int gi, int *state, Group *out, int *n_out, int *rank) {
  if (state[gi] == 2) return;
  if (state[gi] == 1) diag_internal(__FILE__, __LINE__, "fused groups form a cycle");
  state[gi] = 1;
  Group *G = &f->groups[gi];
  for (int i = 0; i < G->n_members; i++)
    for (int k = 0; k < op_info[G->members[i]->op].arity; k++) {
      int h = G->members[i]->src[k]->group;
      if (h >= 0 && h != gi) order_group(f, h, state, out, n_out, rank);
    }
  state[gi] = 2;
  rank[gi] = *n_out;
  out[(*n_out)++] = *G;
}

static int by_id(const void *a, const void *b) {
  return (*(Node *const *)a)->id - (*(Node *const *)b)->id;
}

void fuse_graph(Graph *g, bool enabled) {
  int n = g->n_nodes;
  Fuser f = {.g = g, .enabled = enabled};
  f.users = xalloc(sizeof *f.users * ((size_t)n + 1));
  f.n_users = xalloc(sizeof *f.n_users * ((size_t)n + 1));
  f.is_output = xalloc((size_t)n + 1);
  for (int i = 0; i < g->n_outs; i++) f.is_output[g->outs[i].node->id] = true;
  for (int i = 0; i < n; i++)
    for (int k = 0; k < op_info[g->nodes[i]->op].arity; k++) f.n_users[g->nodes[i]->src[k]->id]++;
  for (int i = 0; i < n; i++) {
    f.users[i] = xalloc(sizeof **f.users * ((size_t)f.n_users[i] + 1));
    f.n_users[i] = 0;
  }
  for (int i = 0; i < n; i++) {
    Node *x = g->nodes[i];
    for (int k = 0; k < op_info[x->op].arity; k++) {
      int s = x->src[k]->id;
      bool dup = false; /* x * x reads x once */
      for (int j = 0; j < f.n_users[s]; j++) dup |= f.users[s][j] == x;
      if (!dup) f.users[s][f.n_users[s]++] = x;
    }
  }
  for (int i = 0; i < n; i++) g->nodes[i]->group = -1;
  for (int i = n - 1; i >= 0; i--) place(&f, g->nodes[i]);
  if (enabled) take_epilogues(&f), take_prologues(&f), take_pools(&f);

  /* lowering order: dependencies first, otherwise roughly the graph's order */
  int *state = xalloc(sizeof *state * ((size_t)f.n_groups + 1));
  int *rank = xalloc(sizeof *rank * ((size_t)f.n_groups + 1));
  Group *out = xalloc(sizeof *out * ((size_t)f.n_groups + 1));
  int n_out = 0;
  for (int gi = f.n_groups - 1; gi >= 0; gi--)
    if (f.groups[gi].n_members) order_group(&f, gi, state, out, &n_out, rank); /* not emptied */
  for (int i = 0; i < n; i++)
    if (g->nodes[i]->group >= 0) g->nodes[i]->group = rank[g->nodes[i]->group];
  for (int gi = 0; gi < n_out; gi++) { /* an epilogue's or prologue's head stays first */
    int head = out[gi].kind == GROUP_EPILOGUE || out[gi].kind == GROUP_PROLOGUE;
    qsort(out[gi].members + head, (size_t)(out[gi].n_members - head), sizeof *out[gi].members,
          by_id);
  }
  g->groups = out;
  g->n_groups = n_out;
}

/* ---- --emit=fused-ir ---- */

static void print_dims(FILE *out, Shape s) {
  fprintf(out, "[");
  for (int i = 0; i < s.rank; i++) {
    fprintf(out, "%s", i ? "," : "");
    if (s.dim[i] == DIM_BATCH) fprintf(out, "B");
    else if (s.dim[i] < 0) fprintf(out, "%lldB", (long long)-s.dim[i]);
    else fprintf(out, "%lld", (long long)s.dim[i]);
  }
  fprintf(out, "]");
}

static const char *const region_text[NN_IO_COUNT] = { /* ORDER IO */
  "arena", "param", "grad", "state", "x", "y", "out", "loss", "hyper",
};

static void print_place(FILE *out, const Node *n) {
  if (n->io >= 0 && n->io < NN_IO_COUNT)
    fprintf(out, " -> %s+%lld", region_text[n->io], (long long)n->offset);
}

void fuse_print(FILE *out, const Graph *g) {
  fprintf(out, "func %s {\n", g->name);
  for (int i = 0; i < g->n_nodes; i++) { /* leaves and scalars: no group */
    if (g->nodes[i]->group >= 0) continue;
    fprintf(out, "  ");
    ir_print_node(out, g->nodes[i]);
    fprintf(out, "\n");
  }
  for (int gi = 0; gi < g->n_groups; gi++) {
    const Group *G = &g->groups[gi];
    fprintf(out, "  group %d ", gi);
    if (G->kind == GROUP_LOOP) {
      fprintf(out, "loop ");
      print_dims(out, G->loop);
    } else {
      fprintf(out, "%s", op_info[G->members[0]->op].text);
      if (G->kind == GROUP_EPILOGUE) {
        fprintf(out, " epilogue ");
        print_dims(out, G->loop);
      } else if (G->kind == GROUP_PROLOGUE) {
        fprintf(out, " prologue");
      }
      if (G->pooled) fprintf(out, " pooled");
    }
    fprintf(out, " {\n");
    for (int i = 0; i < G->n_members + !!G->pooled; i++) {
      const Node *m = i < G->n_members ? G->members[i] : G->pooled;
      fprintf(out, "    ");
      ir_print_node(out, m);
      if (m->stored) print_place(out, m);
      fprintf(out, "\n");
    }
    fprintf(out, "  }\n");
  }
  for (int i = 0; i < g->n_outs; i++) {
    const Output *o = &g->outs[i];
    const Node *n = o->node;
    bool in_place = o->io != NN_IO_LOSS && n->io == o->io && n->offset == o->offset;
    fprintf(out, "  %s = %%%d%s\n", o->label, n->id, in_place ? " (in place)" : "");
  }
  fprintf(out, "  arena %lld elements (one slot per node: %lld)\n", (long long)g->arena_elems,
          (long long)g->unplanned_elems);
  fprintf(out, "}\n");
}
