/* lower_llvm.c — IR graphs → one LLVM module → a file (textual IR, assembly or object).
 *
 * Takes a planned Unit (plan.c has given every materialised node a region `io` and an element
 * `offset`) and emits the four kernels of runtime/nnrt.h — nn_forward, nn_eval, nn_grad and
 * nn_update, each `void (ptr io, i64 batch)` — plus the constant `nn_model` (NnModelDesc) that
 * tells libnnrt.a about them. Each kernel lowers the nodes its chosen outputs need, in graph
 * order, as straight-line code with one loop nest per node: ELEM ops and broadcasts loop over
 * the result, reductions over their input, matmul in m-k-n order. Loop nests are plain counted
 * loops that LLVM's O2/O3 pipeline (vectoriser included) then optimises for the target CPU.
 * This is the only file that includes llvm-c. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Core.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "nnc.h"

enum {
  MAX_LOOPS = MAX_RANK + 2, /* matmul: leading dims, then m, k, n */
  MAX_OPERANDS = 3,         /* result and up to two sources */
};

/* Names of the io slots, for readable IR. ORDER IO */
static const char *const region_name[NN_IO_COUNT] = {
  "arena", "param", "grad", "state", "x", "y", "out", "loss", "hyper",
};

typedef struct Lower {
  const Unit *u;                     /* what is being compiled */
  LLVMContextRef ctx;                /* owns every type and constant below */
  LLVMModuleRef mod;                 /* the one module: four kernels and nn_model */
  LLVMBuilderRef b;                  /* insertion point, always in the current kernel */
  LLVMTypeRef elem;                  /* float or double: every tensor element */
  LLVMTypeRef i64, f64, ptr, vd;     /* index, loss/hyper slots, pointers, void */
  int64_t elem_size;                 /* bytes of elem */
  /* the kernel being emitted */
  LLVMValueRef fn;                   /* the function */
  LLVMValueRef batch;                /* i64 argument: samples in this call */
  LLVMValueRef region[NN_IO_COUNT];  /* base pointers loaded from io at entry */
  LLVMValueRef *val;                 /* by node id: SSA value of CLASS_SCALAR nodes */
  LLVMValueRef *at;                  /* by node id: pointer to a materialised node's data */
  char tag[32];                      /* what the loops being emitted compute: "n7", "out" */
} Lower;

/* ============================== small helpers ============================== */

static OpClass class_of(const Node *n) { return op_info[n->op].cls; }

static LLVMValueRef i64c(Lower *L, int64_t v) {
  return LLVMConstInt(L->i64, (unsigned long long)v, 1);
}

static LLVMValueRef elemc(Lower *L, double v) { return LLVMConstReal(L->elem, v); }

/* Pointer to element `offset` of region `io`, named `name`. */
static LLVMValueRef region_ptr(Lower *L, int io, int64_t offset, LLVMTypeRef ty, const char *name) {
  if (io < 0 || io >= NN_IO_COUNT || !L->region[io])
    diag_internal(__FILE__, __LINE__, "region %d not loaded for %s", io, name);
  if (offset == 0) return L->region[io];
  LLVMValueRef idx = i64c(L, offset);
  return LLVMBuildInBoundsGEP2(L->b, ty, L->region[io], &idx, 1, name);
}

/* Where a materialised node's value lives. Made once per kernel, always between loop nests
 * (never inside one), so the first one dominates every later use. */
static LLVMValueRef node_ptr(Lower *L, const Node *n) {
  if (n->io < 0) diag_internal(__FILE__, __LINE__, "node %%%d has no memory", n->id);
  if (L->at[n->id]) return L->at[n->id];
  char name[32];
  snprintf(name, sizeof name, "n%d", n->id);
  return L->at[n->id] = region_ptr(L, n->io, n->offset, L->elem, n->name ? n->name : name);
}

/* A source operand's value at `p` (ignored for CLASS_SCALAR nodes, which have no memory). */
static LLVMValueRef operand(Lower *L, const Node *src, LLVMValueRef p) {
  if (class_of(src) == CLASS_SCALAR) return L->val[src->id];
  return LLVMBuildLoad2(L->b, L->elem, p, "");
}

static LLVMValueRef intrinsic(Lower *L, const char *name, LLVMValueRef *args, unsigned n) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  if (!id) diag_internal(__FILE__, __LINE__, "no intrinsic %s", name);
  LLVMTypeRef t = L->elem;
  LLVMValueRef fn = LLVMGetIntrinsicDeclaration(L->mod, id, &t, 1);
  return LLVMBuildCall2(L->b, LLVMIntrinsicGetType(L->ctx, id, &t, 1), fn, args, n, "");
}

static LLVMValueRef bool_to_elem(Lower *L, LLVMValueRef c) {
  return LLVMBuildUIToFP(L->b, c, L->elem, "");
}

/* ============================== shapes → loops ============================== */

/* A loop trip count: n, times the runtime batch when `batch`. */
typedef struct Extent {
  int64_t n;
  bool batch;
} Extent;

/* A negative dim (only ever dim 0) is -k: k times the batch; DIM_BATCH is k = 1. */
static Extent dim_extent(int64_t d) {
  return d < 0 ? (Extent){-d, true} : (Extent){d, false};
}

static Extent elems_extent(Shape s) {
  Extent e = {1, false};
  for (int i = 0; i < s.rank; i++) {
    Extent d = dim_extent(s.dim[i]);
    e.n *= d.n;
    e.batch |= d.batch;
  }
  return e;
}

static LLVMValueRef extent_value(Lower *L, Extent e) {
  if (!e.batch) return i64c(L, e.n);
  if (e.n == 1) return L->batch;
  return LLVMBuildNSWMul(L->b, L->batch, i64c(L, e.n), "");
}

/* Row-major strides of a contiguous shape: products of the later dims, so never the batch. */
static void contig_strides(Shape s, int64_t st[]) {
  int64_t acc = 1;
  for (int i = s.rank - 1; i >= 0; i--) {
    st[i] = acc;
    if (s.dim[i] < 0 && i != 0)
      diag_internal(__FILE__, __LINE__, "batch dimension at axis %d", i);
    acc *= s.dim[i];
  }
}

/* Strides for reading `op` at each index of `out` under numpy broadcasting: shapes are
 * right-aligned; a missing dim, or a 1 against a larger dim, gets stride 0. */
static void bcast_strides(Shape op, Shape out, int64_t st[]) {
  int64_t own[MAX_RANK];
  contig_strides(op, own);
  for (int d = 0; d < out.rank; d++) {
    int j = d - (out.rank - op.rank);
    st[d] = (j < 0 || (op.dim[j] == 1 && out.dim[d] != 1)) ? 0 : own[j];
  }
}

/* A loop nest and the operands it walks: operand k's element pointer at index (i0, i1, ...)
 * is base[k] + sum(i_d * stride[k][d]). A NULL base is a scalar operand with no memory. */
typedef struct Nest {
  int depth;
  Extent ext[MAX_LOOPS];
  int n_ops;
  LLVMValueRef base[MAX_OPERANDS];
  int64_t stride[MAX_OPERANDS][MAX_LOOPS];
} Nest;

typedef void (*NestBody)(Lower *L, LLVMValueRef ptr[], const void *ctx);

static Nest nest_over(Shape s) {
  Nest t = {.depth = s.rank};
  for (int d = 0; d < s.rank; d++) t.ext[d] = dim_extent(s.dim[d]);
  return t;
}

/* Adds an operand; its strides are filled in by the caller (zero by default). */
static int nest_operand(Nest *t, LLVMValueRef base) {
  if (t->n_ops == MAX_OPERANDS) unreachable();
  t->base[t->n_ops] = base;
  return t->n_ops++;
}

static void nest_remove(Nest *t, int d) {
  for (int e = d; e + 1 < t->depth; e++) {
    t->ext[e] = t->ext[e + 1];
    for (int k = 0; k < t->n_ops; k++) t->stride[k][e] = t->stride[k][e + 1];
  }
  t->depth--;
}

/* Fewer, longer loops: drop trip-count-1 loops and merge a loop into its outer neighbour
 * when every operand walks the two contiguously (so elementwise chains become one flat loop
 * the vectoriser likes). */
static void nest_simplify(Nest *t) {
  for (int d = t->depth - 1; d >= 0; d--)
    if (t->ext[d].n == 1 && !t->ext[d].batch) nest_remove(t, d);
  for (int d = t->depth - 2; d >= 0; d--) {
    if (t->ext[d + 1].batch) continue;
    bool ok = true;
    for (int k = 0; k < t->n_ops; k++)
      ok &= t->stride[k][d] == t->stride[k][d + 1] * t->ext[d + 1].n;
    if (!ok) continue;
    t->ext[d].n *= t->ext[d + 1].n;
    for (int k = 0; k < t->n_ops; k++) t->stride[k][d] = t->stride[k][d + 1];
    nest_remove(t, d + 1);
  }
}

static void nest_level(Lower *L, const Nest *t, int d, LLVMValueRef off[], NestBody body,
                       const void *ctx) {
  if (d == t->depth) {
    LLVMValueRef ptr[MAX_OPERANDS] = {0};
    for (int k = 0; k < t->n_ops; k++)
      ptr[k] = !t->base[k] || !off[k] ? t->base[k]
               : LLVMBuildInBoundsGEP2(L->b, L->elem, t->base[k], &off[k], 1, "");
    body(L, ptr, ctx);
    return;
  }
  char name[16], blk[64];
  snprintf(name, sizeof name, "i%d", d);
  LLVMValueRef bound = extent_value(L, t->ext[d]);
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(L->b);
  snprintf(blk, sizeof blk, "%s.head.%s", L->tag, name);
  LLVMBasicBlockRef head = LLVMAppendBasicBlockInContext(L->ctx, L->fn, blk);
  snprintf(blk, sizeof blk, "%s.body.%s", L->tag, name);
  LLVMBasicBlockRef bodyb = LLVMAppendBasicBlockInContext(L->ctx, L->fn, blk);
  snprintf(blk, sizeof blk, "%s.exit.%s", L->tag, name);
  LLVMBasicBlockRef exit = LLVMAppendBasicBlockInContext(L->ctx, L->fn, blk);
  LLVMBuildBr(L->b, head);

  LLVMPositionBuilderAtEnd(L->b, head);
  LLVMValueRef i = LLVMBuildPhi(L->b, L->i64, name);
  LLVMValueRef more = LLVMBuildICmp(L->b, LLVMIntSLT, i, bound, "");
  LLVMBuildCondBr(L->b, more, bodyb, exit);

  LLVMPositionBuilderAtEnd(L->b, bodyb);
  LLVMValueRef inner[MAX_OPERANDS] = {0};
  for (int k = 0; k < t->n_ops; k++) {
    int64_t s = t->stride[k][d];
    LLVMValueRef step = s == 0 ? NULL : s == 1 ? i : LLVMBuildNSWMul(L->b, i, i64c(L, s), "");
    inner[k] = !step ? off[k] : !off[k] ? step : LLVMBuildNSWAdd(L->b, off[k], step, "");
  }
  nest_level(L, t, d + 1, inner, body, ctx);
  LLVMValueRef next = LLVMBuildNSWAdd(L->b, i, i64c(L, 1), "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(L->b);
  LLVMBuildBr(L->b, head);
  LLVMValueRef zero = i64c(L, 0);
  LLVMAddIncoming(i, &zero, &pre, 1);
  LLVMAddIncoming(i, &next, &latch, 1);
  LLVMPositionBuilderAtEnd(L->b, exit);
}

/* Emits the nest at the builder's position; the builder ends after it. */
static void emit_nest(Lower *L, Nest t, NestBody body, const void *ctx) {
  nest_simplify(&t);
  LLVMValueRef off[MAX_OPERANDS] = {0}; /* NULL = offset 0 */
  nest_level(L, &t, 0, off, body, ctx);
}

/* ============================== loop bodies ============================== */

/* ptr[0] = value of the scalar (an LLVMValueRef) in ctx. */
static void fill_body(Lower *L, LLVMValueRef ptr[], const void *ctx) {
  LLVMBuildStore(L->b, (LLVMValueRef)ctx, ptr[0]);
}

/* ptr[0] = src at ptr[1]; ctx is the source node. */
static void copy_body(Lower *L, LLVMValueRef ptr[], const void *ctx) {
  LLVMBuildStore(L->b, operand(L, ctx, ptr[1]), ptr[0]);
}

/* The scalar formula of each ELEM op. */
static LLVMValueRef scalar_op(Lower *L, OpKind op, LLVMValueRef a, LLVMValueRef c) {
  LLVMBuilderRef b = L->b;
  LLVMValueRef args[2] = {a, c};
  switch (op) {
  case OP_NEG: return LLVMBuildFNeg(b, a, "");
  case OP_EXP: return intrinsic(L, "llvm.exp", args, 1);
  case OP_LOG: return intrinsic(L, "llvm.log", args, 1);
  case OP_SQRT: return intrinsic(L, "llvm.sqrt", args, 1);
  case OP_TANH: return intrinsic(L, "llvm.tanh", args, 1); /* new in LLVM 19: calls tanhf */
  case OP_SIGMOID: {
    args[0] = LLVMBuildFNeg(b, a, "");
    LLVMValueRef e = intrinsic(L, "llvm.exp", args, 1);
    return LLVMBuildFDiv(b, elemc(L, 1), LLVMBuildFAdd(b, elemc(L, 1), e, ""), "");
  }
  case OP_ABS: return intrinsic(L, "llvm.fabs", args, 1);
  case OP_SIGN: {
    LLVMValueRef pos = bool_to_elem(L, LLVMBuildFCmp(b, LLVMRealOGT, a, elemc(L, 0), ""));
    LLVMValueRef neg = bool_to_elem(L, LLVMBuildFCmp(b, LLVMRealOLT, a, elemc(L, 0), ""));
    return LLVMBuildFSub(b, pos, neg, "");
  }
  case OP_ADD: return LLVMBuildFAdd(b, a, c, "");
  case OP_SUB: return LLVMBuildFSub(b, a, c, "");
  case OP_MUL: return LLVMBuildFMul(b, a, c, "");
  case OP_DIV: return LLVMBuildFDiv(b, a, c, "");
  case OP_POW: return intrinsic(L, "llvm.pow", args, 2);
  case OP_MAX: return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOGT, a, c, ""), a, c, "");
  case OP_MIN: return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, a, c, ""), a, c, "");
  case OP_CMPGT: return bool_to_elem(L, LLVMBuildFCmp(b, LLVMRealOGT, a, c, ""));
  case OP_CMPEQ: return bool_to_elem(L, LLVMBuildFCmp(b, LLVMRealOEQ, a, c, ""));
  default:
    diag_internal(__FILE__, __LINE__, "%s is not elementwise", op_info[op].text);
  }
}

/* ptr[0] = op(ptr[1], ptr[2]); ctx is the node. */
static void elem_body(Lower *L, LLVMValueRef ptr[], const void *ctx) {
  const Node *n = ctx;
  LLVMValueRef a = operand(L, n->src[0], ptr[1]);
  LLVMValueRef c = op_info[n->op].arity > 1 ? operand(L, n->src[1], ptr[2]) : NULL;
  LLVMBuildStore(L->b, scalar_op(L, n->op, a, c), ptr[0]);
}

/* ptr[0] = ptr[0] (+ or max) ptr[1]; ctx is the node. */
static void reduce_body(Lower *L, LLVMValueRef ptr[], const void *ctx) {
  const Node *n = ctx;
  LLVMValueRef acc = LLVMBuildLoad2(L->b, L->elem, ptr[0], "");
  LLVMValueRef x = operand(L, n->src[0], ptr[1]);
  LLVMValueRef r = n->op == OP_SUM
    ? LLVMBuildFAdd(L->b, acc, x, "")
    : LLVMBuildSelect(L->b, LLVMBuildFCmp(L->b, LLVMRealOGT, x, acc, ""), x, acc, "");
  LLVMBuildStore(L->b, r, ptr[0]);
}

/* C[ptr0] += A[ptr1] * B[ptr2]. */
static void matmul_body(Lower *L, LLVMValueRef ptr[], const void *ctx) {
  (void)ctx;
  LLVMValueRef c = LLVMBuildLoad2(L->b, L->elem, ptr[0], "");
  LLVMValueRef a = LLVMBuildLoad2(L->b, L->elem, ptr[1], "");
  LLVMValueRef bv = LLVMBuildLoad2(L->b, L->elem, ptr[2], "");
  LLVMValueRef r = LLVMBuildFAdd(L->b, c, LLVMBuildFMul(L->b, a, bv, ""), "");
  LLVMBuildStore(L->b, r, ptr[0]);
}

/* ============================== nodes ============================== */

static LLVMValueRef lower_scalar(Lower *L, const Node *n) {
  switch (n->op) {
  case OP_CONST: return elemc(L, n->attr.value);
  case OP_BATCH: return LLVMBuildSIToFP(L->b, L->batch, L->elem, "batch.f");
  case OP_HYPER: {
    const char *name = n->attr.index < L->u->n_hyper ? L->u->hyper_names[n->attr.index] : "step";
    LLVMValueRef p = region_ptr(L, NN_IO_HYPER, n->attr.index, L->f64, "");
    LLVMValueRef v = LLVMBuildLoad2(L->b, L->f64, p, name);
    return L->elem == L->f64 ? v : LLVMBuildFPTrunc(L->b, v, L->elem, "");
  }
  default: unreachable();
  }
}

/* Fills `n` with `v` over its whole shape. */
static void fill_node(Lower *L, const Node *n, LLVMValueRef v) {
  Nest t = {.depth = 1, .ext = {elems_extent(n->shape)}};
  t.stride[nest_operand(&t, node_ptr(L, n))][0] = 1;
  emit_nest(L, t, fill_body, v);
}

/* A nest over `over` writing `n` (operand 0, broadcast against `over`) and reading `src`
 * (operand 1, broadcast against `over`). */
static Nest nest_pair(Lower *L, Shape over, const Node *n, const Node *src) {
  Nest t = nest_over(over);
  bcast_strides(n->shape, over, t.stride[nest_operand(&t, node_ptr(L, n))]);
  bool mem = class_of(src) != CLASS_SCALAR;
  int k = nest_operand(&t, mem ? node_ptr(L, src) : NULL);
  if (mem) bcast_strides(src->shape, over, t.stride[k]);
  return t;
}

static void lower_elem(Lower *L, const Node *n) {
  Nest t = nest_pair(L, n->shape, n, n->src[0]);
  if (op_info[n->op].arity > 1) {
    const Node *s = n->src[1];
    bool mem = class_of(s) != CLASS_SCALAR;
    int k = nest_operand(&t, mem ? node_ptr(L, s) : NULL);
    if (mem) bcast_strides(s->shape, n->shape, t.stride[k]);
  }
  emit_nest(L, t, elem_body, n);
}

/* Output = input with the reduced axes kept as 1: start from the identity, then fold every
 * input element into the output element it lands on (stride 0 along the reduced axes). */
static void lower_reduce(Lower *L, const Node *n) {
  fill_node(L, n, elemc(L, n->op == OP_SUM ? 0.0 : -INFINITY));
  const Node *src = n->src[0];
  Shape over = class_of(src) == CLASS_SCALAR ? n->shape : src->shape;
  emit_nest(L, nest_pair(L, over, n, src), reduce_body, n);
}

static void lower_move(Lower *L, const Node *n) {
  const Node *src = n->src[0];
  if (n->op == OP_EXPAND) {
    emit_nest(L, nest_pair(L, n->shape, n, src), copy_body, src);
    return;
  }
  if (n->io == src->io && n->offset == src->offset) return; /* planned as an alias */
  Nest t = {.depth = 1, .ext = {elems_extent(n->shape)}};
  t.stride[nest_operand(&t, node_ptr(L, n))][0] = 1;
  bool mem = class_of(src) != CLASS_SCALAR;
  t.stride[nest_operand(&t, mem ? node_ptr(L, src) : NULL)][0] = mem;
  emit_nest(L, t, copy_body, src);
}

/* C[.., m, n] = sum_k A[.., m, k] * B[.., k, n], with A [.., K, M] when ta and B [.., N, K]
 * when tb; B's leading dims broadcast against C's (a rank-2 B is shared by every matrix). */
static void lower_matmul(Lower *L, const Node *n) {
  const Node *a = n->src[0], *bm = n->src[1];
  Shape as = a->shape, bs = bm->shape, cs = n->shape;
  if (as.rank < 2 || bs.rank < 2 || cs.rank != as.rank) unreachable();
  int lead = cs.rank - 2;
  int64_t ast[MAX_RANK], bst[MAX_RANK], cst[MAX_RANK];
  contig_strides(as, ast);
  contig_strides(bs, bst);
  contig_strides(cs, cst);
  int64_t M = cs.dim[lead], N = cs.dim[lead + 1];
  int64_t K = n->attr.ta ? as.dim[lead] : as.dim[lead + 1];

  fill_node(L, n, elemc(L, 0));
  Nest t = {.depth = lead + 3};
  int C = nest_operand(&t, node_ptr(L, n));
  int A = nest_operand(&t, node_ptr(L, a));
  int B = nest_operand(&t, node_ptr(L, bm));
  for (int d = 0; d < lead; d++) { /* leading (batch-of-matrices) dims */
    t.ext[d] = dim_extent(cs.dim[d]);
    t.stride[C][d] = cst[d];
    t.stride[A][d] = ast[d];
    int j = d - (lead - (bs.rank - 2));
    t.stride[B][d] = (j < 0 || (bs.dim[j] == 1 && cs.dim[d] != 1)) ? 0 : bst[j];
  }
  int m = lead, k = lead + 1, nn = lead + 2;
  t.ext[m] = dim_extent(M);
  t.ext[k] = dim_extent(K);
  t.ext[nn] = dim_extent(N);
  t.stride[C][m] = cst[lead];
  t.stride[C][nn] = cst[lead + 1];
  t.stride[A][m] = n->attr.ta ? ast[lead + 1] : ast[lead];
  t.stride[A][k] = n->attr.ta ? ast[lead] : ast[lead + 1];
  int bl = bs.rank - 2;
  t.stride[B][k] = n->attr.tb ? bst[bl + 1] : bst[bl];
  t.stride[B][nn] = n->attr.tb ? bst[bl] : bst[bl + 1];
  emit_nest(L, t, matmul_body, NULL);
}

static void lower_node(Lower *L, const Node *n) {
  if (class_of(n) != CLASS_SCALAR && (n->io < 0 || n->io >= NN_IO_COUNT))
    diag_internal(__FILE__, __LINE__, "node %%%d (%s) has no planned region", n->id,
                  op_info[n->op].text);
  snprintf(L->tag, sizeof L->tag, "n%d", n->id);
  switch (class_of(n)) {
  case CLASS_LEAF: break; /* the data is already at io/offset */
  case CLASS_SCALAR: L->val[n->id] = lower_scalar(L, n); break;
  case CLASS_ELEM: lower_elem(L, n); break;
  case CLASS_REDUCE: lower_reduce(L, n); break;
  case CLASS_MOVE: lower_move(L, n); break;
  case CLASS_CONTRACT: lower_matmul(L, n); break;
  }
}

/* Stores a finished value into its output region. */
static void lower_output(Lower *L, const Output *o) {
  const Node *n = o->node;
  bool mem = class_of(n) != CLASS_SCALAR;
  snprintf(L->tag, sizeof L->tag, "%s", region_name[o->io]);
  if (o->io == NN_IO_LOSS) { /* one double */
    LLVMValueRef v = mem ? LLVMBuildLoad2(L->b, L->elem, node_ptr(L, n), "") : L->val[n->id];
    if (L->elem != L->f64) v = LLVMBuildFPExt(L->b, v, L->f64, "");
    LLVMBuildStore(L->b, v, region_ptr(L, NN_IO_LOSS, o->offset, L->f64, "loss.slot"));
    return;
  }
  if (mem && n->io == o->io && n->offset == o->offset) return; /* computed in place */
  Nest t = {.depth = 1, .ext = {elems_extent(n->shape)}};
  t.stride[nest_operand(&t, region_ptr(L, o->io, o->offset, L->elem, ""))][0] = 1;
  t.stride[nest_operand(&t, mem ? node_ptr(L, n) : NULL)][0] = mem;
  emit_nest(L, t, copy_body, n);
}

/* ============================== kernels ============================== */

#define ALL_OUTS (~0u) /* every output of the graph */

static bool chosen(const Output *o, unsigned io_mask) {
  return o->io >= 0 && o->io < 32 && (io_mask & (1u << o->io));
}

/* Stores the chosen outputs. Those whose value sits outside the arena (a leaf, or a reshape
 * aliasing one) go first: a later store may overwrite the region they read, e.g. the update
 * step writing NN_IO_PARAM while another output copies a parameter. */
static void lower_outputs(Lower *L, const Graph *g, unsigned io_mask) {
  for (int pass = 0; pass < 2; pass++)
    for (int i = 0; i < g->n_outs; i++) {
      const Output *o = &g->outs[i];
      bool outside = o->node->io >= 0 && o->node->io != NN_IO_ARENA;
      if (chosen(o, io_mask) && outside == (pass == 0)) lower_output(L, o);
    }
}

/* Marks the nodes the chosen outputs need; returns the regions they touch as a bit set. */
static unsigned mark_needed(const Graph *g, unsigned io_mask, bool *need) {
  unsigned regions = 0;
  for (int i = 0; i < g->n_outs; i++) {
    if (g->outs[i].io < 0 || g->outs[i].io >= NN_IO_COUNT)
      diag_internal(__FILE__, __LINE__, "output %s to region %d", g->outs[i].label, g->outs[i].io);
    if (!chosen(&g->outs[i], io_mask)) continue;
    need[g->outs[i].node->id] = true;
    regions |= 1u << g->outs[i].io;
  }
  for (int i = g->n_nodes - 1; i >= 0; i--) { /* reverse topological order */
    const Node *n = g->nodes[i];
    if (!need[i]) continue;
    if (n->id != i) diag_internal(__FILE__, __LINE__, "node %d has id %d", i, n->id);
    for (int k = 0; k < op_info[n->op].arity; k++) need[n->src[k]->id] = true;
    if (n->op == OP_HYPER) regions |= 1u << NN_IO_HYPER;
    else if (class_of(n) != CLASS_SCALAR && n->io >= 0 && n->io < NN_IO_COUNT)
      regions |= 1u << n->io;
  }
  return regions;
}

static LLVMValueRef emit_kernel(Lower *L, const char *name, const Graph *g, unsigned io_mask) {
  LLVMTypeRef params[2] = {L->ptr, L->i64};
  LLVMTypeRef fty = LLVMFunctionType(L->vd, params, 2, 0);
  L->fn = LLVMAddFunction(L->mod, name, fty);
  unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
  LLVMAddAttributeAtIndex(L->fn, LLVMAttributeFunctionIndex,
                          LLVMCreateEnumAttribute(L->ctx, nounwind, 0));
  LLVMPositionBuilderAtEnd(L->b, LLVMAppendBasicBlockInContext(L->ctx, L->fn, "entry"));
  LLVMValueRef io = LLVMGetParam(L->fn, 0);
  L->batch = LLVMGetParam(L->fn, 1);
  memset(L->region, 0, sizeof L->region);
  if (g) {
    bool *need = xalloc((size_t)g->n_nodes + 1);
    unsigned regions = mark_needed(g, io_mask, need);
    for (int r = 0; r < NN_IO_COUNT; r++) {
      if (!(regions & (1u << r))) continue;
      LLVMValueRef idx = i64c(L, r);
      LLVMValueRef slot = r ? LLVMBuildInBoundsGEP2(L->b, L->ptr, io, &idx, 1, "") : io;
      L->region[r] = LLVMBuildLoad2(L->b, L->ptr, slot, region_name[r]);
    }
    L->val = xalloc(sizeof *L->val * ((size_t)g->n_nodes + 1));
    L->at = xalloc(sizeof *L->at * ((size_t)g->n_nodes + 1));
    for (int i = 0; i < g->n_nodes; i++)
      if (need[i]) lower_node(L, g->nodes[i]);
    lower_outputs(L, g, io_mask);
  }
  LLVMBuildRetVoid(L->b);
  return L->fn;
}

/* ============================== nn_model ============================== */

/* A constant struct built field by field; `at` checks each field's byte offset against the C
 * struct so that drift between nnrt.h and this file is caught at the first compile. */
typedef struct Fields {
  LLVMTypeRef type[48];
  LLVMValueRef val[48];
  int n;
  size_t bytes;
} Fields;

static void put(Fields *f, size_t at, LLVMTypeRef ty, LLVMValueRef v, size_t size) {
  if (at != f->bytes || f->n == 48)
    diag_internal(__FILE__, __LINE__, "descriptor field at %zu, expected %zu", at, f->bytes);
  f->type[f->n] = ty;
  f->val[f->n++] = v;
  f->bytes += size;
}

#define PUT_I64(f, S, field, v) put(f, offsetof(S, field), L->i64, i64c(L, v), 8)
#define PUT_F64(f, S, field, v) \
  put(f, offsetof(S, field), L->f64, LLVMConstReal(L->f64, v), 8)
#define PUT_PTR(f, S, field, v) put(f, offsetof(S, field), L->ptr, v, 8)

static LLVMValueRef private_const(Lower *L, LLVMValueRef init, const char *name) {
  LLVMValueRef g = LLVMAddGlobal(L->mod, LLVMTypeOf(init), name);
  LLVMSetInitializer(g, init);
  LLVMSetGlobalConstant(g, 1);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  LLVMSetUnnamedAddress(g, LLVMGlobalUnnamedAddr);
  return g;
}

static LLVMValueRef cstring(Lower *L, const char *s) {
  if (!s) return LLVMConstNull(L->ptr);
  return private_const(L, LLVMConstStringInContext2(L->ctx, s, strlen(s), 0), ".str");
}

static LLVMValueRef dims_array(Lower *L, Shape s) {
  LLVMValueRef d[NN_MAX_RANK];
  for (int i = 0; i < NN_MAX_RANK; i++) d[i] = i64c(L, i < s.rank ? s.dim[i] : 0);
  return LLVMConstArray2(L->i64, d, NN_MAX_RANK);
}

static LLVMValueRef doubles(Lower *L, const double *v, int64_t n, const char *name) {
  if (!v || n <= 0) return LLVMConstNull(L->ptr);
  LLVMValueRef *c = xalloc(sizeof *c * (size_t)n);
  for (int64_t i = 0; i < n; i++) c[i] = LLVMConstReal(L->f64, v[i]);
  return private_const(L, LLVMConstArray2(L->f64, c, (uint64_t)n), name);
}

static LLVMValueRef struct_of(Lower *L, Fields *f, LLVMTypeRef *named, const char *name,
                              size_t size) {
  if (f->bytes != size) diag_internal(__FILE__, __LINE__, "%s is %zu bytes", name, f->bytes);
  if (!*named) {
    *named = LLVMStructCreateNamed(L->ctx, name);
    LLVMStructSetBody(*named, f->type, (unsigned)f->n, 0);
  }
  return LLVMConstNamedStruct(*named, f->val, (unsigned)f->n);
}

static LLVMValueRef param_table(Lower *L) {
  const Unit *u = L->u;
  if (u->n_params == 0) return LLVMConstNull(L->ptr);
  LLVMTypeRef info = NULL;
  LLVMValueRef *rows = xalloc(sizeof *rows * (size_t)u->n_params);
  LLVMTypeRef dims_ty = LLVMArrayType2(L->i64, NN_MAX_RANK);
  for (int i = 0; i < u->n_params; i++) {
    const ParamDecl *p = &u->params[i];
    Fields f = {0};
    PUT_PTR(&f, NnParamInfo, name, cstring(L, p->name));
    PUT_I64(&f, NnParamInfo, rank, p->shape.rank);
    put(&f, offsetof(NnParamInfo, dims), dims_ty, dims_array(L, p->shape), 8 * NN_MAX_RANK);
    PUT_I64(&f, NnParamInfo, offset, p->offset);
    PUT_I64(&f, NnParamInfo, size, shape_elems(p->shape, 1));
    PUT_I64(&f, NnParamInfo, init, p->init);
    PUT_F64(&f, NnParamInfo, init_a, p->init_a);
    PUT_F64(&f, NnParamInfo, init_b, p->init_b);
    rows[i] = struct_of(L, &f, &info, "NnParamInfo", sizeof(NnParamInfo));
  }
  return private_const(L, LLVMConstArray2(info, rows, (uint64_t)u->n_params), "params");
}

static LLVMValueRef hyper_name_table(Lower *L) {
  const Unit *u = L->u;
  if (u->n_hyper == 0) return LLVMConstNull(L->ptr);
  LLVMValueRef *names = xalloc(sizeof *names * (size_t)u->n_hyper);
  for (int i = 0; i < u->n_hyper; i++) names[i] = cstring(L, u->hyper_names[i]);
  return private_const(L, LLVMConstArray2(L->ptr, names, (uint64_t)u->n_hyper), "hyper_names");
}

static int64_t arena_bytes(Lower *L) {
  int64_t elems = 0;
  if (L->u->train && L->u->train->arena_elems > elems) elems = L->u->train->arena_elems;
  if (L->u->update && L->u->update->arena_elems > elems) elems = L->u->update->arena_elems;
  int64_t bytes = elems * L->elem_size;
  return bytes < 64 ? 64 : bytes;
}

static void emit_model_desc(Lower *L, LLVMValueRef kernel[4]) {
  const Unit *u = L->u;
  int64_t x_size = shape_elems(u->x_shape, 1), y_size = shape_elems(u->y_shape, 1);
  Fields f = {0};
  /* ORDER DESC */
  PUT_I64(&f, NnModelDesc, abi_version, NN_ABI_VERSION);
  PUT_PTR(&f, NnModelDesc, name, cstring(L, u->model));
  PUT_PTR(&f, NnModelDesc, source, cstring(L, u->source));
  PUT_I64(&f, NnModelDesc, elem_size, L->elem_size);
  PUT_I64(&f, NnModelDesc, x_rank, u->x_shape.rank);
  put(&f, offsetof(NnModelDesc, x_dims), LLVMArrayType2(L->i64, NN_MAX_RANK),
      dims_array(L, u->x_shape), 8 * NN_MAX_RANK);
  PUT_I64(&f, NnModelDesc, x_size, x_size);
  PUT_I64(&f, NnModelDesc, y_size, y_size);
  PUT_I64(&f, NnModelDesc, out_size, shape_elems(u->out_shape, 1));
  PUT_I64(&f, NnModelDesc, n_params, u->n_params);
  PUT_PTR(&f, NnModelDesc, params, param_table(L));
  PUT_I64(&f, NnModelDesc, param_size, u->param_size);
  PUT_I64(&f, NnModelDesc, state_size, u->state_size);
  PUT_I64(&f, NnModelDesc, arena_bytes, arena_bytes(L));
  PUT_I64(&f, NnModelDesc, max_batch, u->batch);
  PUT_I64(&f, NnModelDesc, epochs, u->epochs);
  PUT_I64(&f, NnModelDesc, seed, u->seed);
  PUT_I64(&f, NnModelDesc, task, u->task);
  PUT_F64(&f, NnModelDesc, threshold, u->threshold);
  PUT_I64(&f, NnModelDesc, n_hyper, u->n_hyper);
  PUT_PTR(&f, NnModelDesc, hyper_names, hyper_name_table(L));
  PUT_PTR(&f, NnModelDesc, hyper_defaults,
          doubles(L, u->hyper_defaults, u->n_hyper, "hyper_defaults"));
  PUT_I64(&f, NnModelDesc, data_kind, u->data_kind);
  PUT_PTR(&f, NnModelDesc, data_path, cstring(L, u->data_path));
  PUT_I64(&f, NnModelDesc, data_rows, u->data_rows);
  PUT_PTR(&f, NnModelDesc, data_table,
          doubles(L, u->data_table, u->data_rows * (x_size + y_size), "data_table"));
  PUT_I64(&f, NnModelDesc, data_header, u->data_header);
  PUT_PTR(&f, NnModelDesc, forward, kernel[0]);
  PUT_PTR(&f, NnModelDesc, eval, kernel[1]);
  PUT_PTR(&f, NnModelDesc, grad, kernel[2]);
  PUT_PTR(&f, NnModelDesc, update, kernel[3]);
  LLVMTypeRef desc = NULL;
  LLVMValueRef init = struct_of(L, &f, &desc, "NnModelDesc", sizeof(NnModelDesc));
  LLVMValueRef g = LLVMAddGlobal(L->mod, desc, "nn_model");
  LLVMSetInitializer(g, init);
  LLVMSetGlobalConstant(g, 1);
}

/* ============================== target, passes, output ============================== */

static LLVMCodeGenOptLevel codegen_level(int o) {
  return o <= 0 ? LLVMCodeGenLevelNone : o == 1 ? LLVMCodeGenLevelLess
       : o == 2 ? LLVMCodeGenLevelDefault : LLVMCodeGenLevelAggressive;
}

/* The host's target machine, or one for opts->target_cpu (then without host features). */
static LLVMTargetMachineRef target_machine(const Options *opts) {
  LLVMInitializeNativeTarget();
  LLVMInitializeNativeAsmPrinter();
  LLVMInitializeNativeAsmParser();
  char *triple = LLVMGetDefaultTargetTriple(), *err = NULL;
  LLVMTargetRef target;
  if (LLVMGetTargetFromTriple(triple, &target, &err)) {
    fprintf(stderr, "nnc: error: no target for %s: %s\n", triple, err);
    LLVMDisposeMessage(err);
    LLVMDisposeMessage(triple);
    return NULL;
  }
  char *host = LLVMGetHostCPUName();
  bool is_host = !opts->target_cpu || !strcmp(opts->target_cpu, host) ||
                 !strcmp(opts->target_cpu, "native");
  char *features = is_host ? LLVMGetHostCPUFeatures() : NULL;
  LLVMTargetMachineRef tm = LLVMCreateTargetMachine(
      target, triple, is_host ? host : opts->target_cpu, features ? features : "",
      codegen_level(opts->opt_level), LLVMRelocPIC, LLVMCodeModelDefault);
  if (!tm) fprintf(stderr, "nnc: error: cannot create a target machine for %s\n", triple);
  LLVMDisposeMessage(features);
  LLVMDisposeMessage(host);
  LLVMDisposeMessage(triple);
  return tm;
}

static bool run_passes(LLVMModuleRef mod, LLVMTargetMachineRef tm, int opt_level) {
  int o = opt_level < 0 ? 0 : opt_level > 3 ? 3 : opt_level;
  char pipeline[32];
  snprintf(pipeline, sizeof pipeline, "default<O%d>", o);
  LLVMPassBuilderOptionsRef pbo = LLVMCreatePassBuilderOptions();
  LLVMPassBuilderOptionsSetLoopVectorization(pbo, o >= 2); /* as clang does */
  LLVMPassBuilderOptionsSetSLPVectorization(pbo, o >= 2);
  LLVMErrorRef e = LLVMRunPasses(mod, pipeline, tm, pbo);
  LLVMDisposePassBuilderOptions(pbo);
  if (!e) return true;
  char *msg = LLVMGetErrorMessage(e);
  fprintf(stderr, "nnc: error: LLVM pass pipeline failed: %s\n", msg);
  LLVMDisposeErrorMessage(msg);
  return false;
}

static bool to_stdout(const char *path) { return !path || !strcmp(path, "-"); }

static bool write_output(LLVMModuleRef mod, LLVMTargetMachineRef tm, Emit emit, const char *path) {
  char *err = NULL;
  bool failed;
  if (emit == EMIT_LLVM && to_stdout(path)) {
    char *text = LLVMPrintModuleToString(mod);
    failed = fputs(text, stdout) == EOF || fflush(stdout) != 0;
    LLVMDisposeMessage(text);
  } else if (emit == EMIT_LLVM) {
    failed = LLVMPrintModuleToFile(mod, path, &err);
  } else {
    LLVMCodeGenFileType kind = emit == EMIT_ASM ? LLVMAssemblyFile : LLVMObjectFile;
    if (to_stdout(path)) {
      LLVMMemoryBufferRef buf = NULL;
      failed = LLVMTargetMachineEmitToMemoryBuffer(tm, mod, kind, &err, &buf);
      if (!failed) {
        size_t n = LLVMGetBufferSize(buf);
        failed = fwrite(LLVMGetBufferStart(buf), 1, n, stdout) != n || fflush(stdout) != 0;
        LLVMDisposeMemoryBuffer(buf);
      }
    } else {
      failed = LLVMTargetMachineEmitToFile(tm, mod, (char *)path, kind, &err);
    }
  }
  if (failed)
    fprintf(stderr, "nnc: error: cannot write %s: %s\n", to_stdout(path) ? "<stdout>" : path,
            err ? err : "write failed");
  LLVMDisposeMessage(err);
  return !failed;
}

/* ============================== entry point ============================== */

static void build_module(Lower *L) {
  const Unit *u = L->u;
  LLVMValueRef kernel[4];
  kernel[0] = emit_kernel(L, "nn_forward", u->train, 1u << NN_IO_OUT);
  kernel[1] = emit_kernel(L, "nn_eval", u->train, (1u << NN_IO_OUT) | (1u << NN_IO_LOSS));
  kernel[2] = emit_kernel(L, "nn_grad", u->train, ALL_OUTS);
  kernel[3] = emit_kernel(L, "nn_update", u->update, ALL_OUTS);
  emit_model_desc(L, kernel);
}

bool lower_llvm(const Unit *u, const Options *opts, Emit emit, const char *path) {
  LLVMTargetMachineRef tm = target_machine(opts);
  if (!tm) return false;
  Lower L = {.u = u, .ctx = LLVMContextCreate()};
  L.mod = LLVMModuleCreateWithNameInContext(u->model ? u->model : "nn", L.ctx);
  L.b = LLVMCreateBuilderInContext(L.ctx);
  L.i64 = LLVMInt64TypeInContext(L.ctx);
  L.f64 = LLVMDoubleTypeInContext(L.ctx);
  L.ptr = LLVMPointerTypeInContext(L.ctx, 0);
  L.vd = LLVMVoidTypeInContext(L.ctx);
  L.elem = opts->f64 ? L.f64 : LLVMFloatTypeInContext(L.ctx);
  L.elem_size = opts->f64 ? 8 : 4;
  if (u->source) LLVMSetSourceFileName(L.mod, u->source, strlen(u->source));
  char *triple = LLVMGetTargetMachineTriple(tm);
  LLVMSetTarget(L.mod, triple);
  LLVMDisposeMessage(triple);
  LLVMTargetDataRef layout = LLVMCreateTargetDataLayout(tm);
  LLVMSetModuleDataLayout(L.mod, layout);
  LLVMDisposeTargetData(layout);

  build_module(&L);

  char *msg = NULL, *bug = NULL;
  if (LLVMVerifyModule(L.mod, LLVMReturnStatusAction, &msg)) bug = xstrdup(msg);
  LLVMDisposeMessage(msg);
  bool ok = !bug && run_passes(L.mod, tm, opts->opt_level) && write_output(L.mod, tm, emit, path);
  LLVMDisposeBuilder(L.b);
  LLVMDisposeModule(L.mod);
  LLVMContextDispose(L.ctx);
  LLVMDisposeTargetMachine(tm);
  if (bug) diag_internal(__FILE__, __LINE__, "invalid LLVM module: %s", bug);
  return ok;
}
