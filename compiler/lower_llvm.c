/* lower_llvm.c — IR graphs → one LLVM module → a file (textual IR, assembly or object).
 *
 * Takes a fused, planned Unit (fuse.c has grouped the nodes, plan.c has given every stored
 * node a region `io` and an element `offset`) and emits the four kernels of runtime/nnrt.h —
 * nn_forward, nn_eval, nn_grad and nn_update, each `void (ptr io, i64 batch)`, as kernel_specs
 * says — plus the constant `nn_model` (NnModelDesc) that tells libnnrt.a about them. Each
 * kernel lowers the groups its chosen outputs need, in group order, as straight-line code with
 * one loop nest per group: a loop group computes its members in registers and stores only the
 * stored ones (a reduction's loop runs over its input); matmul and convolution call the GEMM
 * that lower_gemm.c emits, pooling loops over samples, positions and taps. Loop nests are
 * plain counted loops that LLVM's O2/O3 pipeline (vectoriser included) then optimises for the
 * target CPU. With lower_gemm.c, the only code that includes llvm-c. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Core.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "lower_gemm.h"
#include "nnc.h"
#include "../runtime/embed.h"

enum {
  MAX_LOOPS = MAX_RANK + 2, /* matmul: leading dims, then m, k, n */
  MAX_OPERANDS = FUSE_MAX_PORTS, /* a fused loop's stores and reads (fuse.c bounds them) */
};

/* Names of the io slots, for readable IR. ORDER IO */
static const char *const region_name[NN_IO_COUNT] = {
  "arena", "param", "grad", "state", "x", "y", "out", "loss", "hyper", "threads", "scratch",
};

typedef struct Lower {
  const Unit *u;                     /* what is being compiled */
  Embed *embed;                      /* --emit=header: also emit nn_embed; else NULL */
  int64_t scratch_bytes;             /* of NN_IO_SCRATCH per worker, once the kernels are made */
  LLVMContextRef ctx;                /* owns every type and constant below */
  LLVMModuleRef mod;                 /* the one module: four kernels and nn_model */
  LLVMBuilderRef b;                  /* insertion point, always in the current kernel */
  LLVMTypeRef elem;                  /* float or double: every tensor element */
  LLVMTypeRef i64, f64, ptr, vd;     /* index, loss/hyper slots, pointers, void */
  int64_t elem_size;                 /* bytes of elem */
  LLVMTypeRef source_type;           /* %NnDataSource, made on first use */
  /* the kernel being emitted */
  const Graph *g;                    /* the graph it runs */
  LLVMValueRef fn;                   /* the function */
  LLVMValueRef batch;                /* i64 argument: samples in this call */
  LLVMValueRef region[NN_IO_COUNT];  /* base pointers loaded from io at entry */
  LLVMValueRef *val;                 /* by node id: SSA value of CLASS_SCALAR nodes */
  LLVMValueRef *at;                  /* by node id: pointer to a materialised node's data */
  char tag[32];                      /* what the loops being emitted compute: "n7", "out" */
  LLVMValueRef ivar[MAX_LOOPS];      /* the counters of the loops around a nest's body */
  Gemm gemm;                         /* the module's matmul and convolutions (lower_gemm.c) */
  int vector_bits, registers;        /* the target's SIMD registers: width and count */
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
  L->ivar[d] = i;
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
  case OP_FLOOR: return intrinsic(L, "llvm.floor", args, 1);
  case OP_SIN: return intrinsic(L, "llvm.sin", args, 1);
  case OP_COS: return intrinsic(L, "llvm.cos", args, 1);
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

/* ---- movement and indexing: PERMUTE, SLICE, PAD, CONCAT, GATHER, SCATTER_ADD, IOTA ----
 * Each is a copy nest whose operands walk with strides derived from attr.move; GATHER and
 * SCATTER_ADD add a data-dependent offset in the loop body. */

/* `base` moved by `off` elements; made between loop nests, like node_ptr. */
static LLVMValueRef elem_offset(Lower *L, LLVMValueRef base, int64_t off) {
  if (!off) return base;
  LLVMValueRef i = i64c(L, off);
  return LLVMBuildInBoundsGEP2(L->b, L->elem, base, &i, 1, "");
}

/* Adds `src` as an operand with strides st (zero for a scalar, which has no memory). */
static int nest_source(Lower *L, Nest *t, const Node *src, const int64_t st[], int64_t off) {
  bool mem = class_of(src) != CLASS_SCALAR;
  int k = nest_operand(t, mem ? elem_offset(L, node_ptr(L, src), off) : NULL);
  for (int d = 0; mem && d < t->depth; d++) t->stride[k][d] = st[d];
  return k;
}

/* dst (strides dst_st from dst_off) = src (contiguous), over src's shape. */
static void copy_into(Lower *L, LLVMValueRef dst, const int64_t dst_st[], int64_t dst_off,
                      const Node *src) {
  Nest t = nest_over(src->shape);
  int k = nest_operand(&t, elem_offset(L, dst, dst_off));
  for (int d = 0; d < t.depth; d++) t.stride[k][d] = dst_st[d];
  int64_t st[MAX_RANK];
  contig_strides(src->shape, st);
  nest_source(L, &t, src, st, 0);
  emit_nest(L, t, copy_body, src);
}

/* Index value v (a float) as an element offset along an axis of n elements with stride st:
 * rounded to the nearest integer and clamped into [0, n-1], so that an out-of-range index
 * (or NaN, which reads index 0) can never address memory outside the tensor. */
static LLVMValueRef index_offset(Lower *L, LLVMValueRef v, int64_t n, int64_t st) {
  LLVMBuilderRef b = L->b;
  LLVMValueRef zero = elemc(L, 0), top = elemc(L, (double)(n - 1));
  v = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOGE, v, zero, ""), v, zero, "");
  v = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOGT, v, top, ""), top, v, "");
  LLVMValueRef k = LLVMBuildFPToSI(b, LLVMBuildFAdd(b, v, elemc(L, 0.5), ""), L->i64, "idx");
  return st == 1 ? k : LLVMBuildNSWMul(b, k, i64c(L, st), "");
}

typedef struct IndexCtx {
  const Node *idx, *src; /* the index operand; GATHER's x or SCATTER_ADD's g */
  int64_t n, stride;     /* the indexed axis: its length and stride in x */
} IndexCtx;

/* gather: ptr[0] = ptr[1][index(ptr[2])] */
static void gather_body(Lower *L, LLVMValueRef ptr[], const void *ctx) {
  const IndexCtx *c = ctx;
  LLVMValueRef off = index_offset(L, operand(L, c->idx, ptr[2]), c->n, c->stride);
  LLVMValueRef p = LLVMBuildInBoundsGEP2(L->b, L->elem, ptr[1], &off, 1, "");
  LLVMBuildStore(L->b, LLVMBuildLoad2(L->b, L->elem, p, ""), ptr[0]);
}

/* scatter_add: ptr[0][index(ptr[2])] += ptr[1] */
static void scatter_body(Lower *L, LLVMValueRef ptr[], const void *ctx) {
  const IndexCtx *c = ctx;
  LLVMValueRef off = index_offset(L, operand(L, c->idx, ptr[2]), c->n, c->stride);
  LLVMValueRef p = LLVMBuildInBoundsGEP2(L->b, L->elem, ptr[0], &off, 1, "");
  LLVMValueRef sum = LLVMBuildFAdd(L->b, LLVMBuildLoad2(L->b, L->elem, p, ""),
                                   operand(L, c->src, ptr[1]), "");
  LLVMBuildStore(L->b, sum, p);
}

/* iota: ptr[0] = the counter of loop `axis` (the nest is not simplified, so loop d is dim d) */
static void iota_body(Lower *L, LLVMValueRef ptr[], const void *ctx) {
  const Node *n = ctx;
  LLVMBuildStore(L->b, LLVMBuildSIToFP(L->b, L->ivar[n->attr.move.axis], L->elem, ""), ptr[0]);
}

/* ---- counter-based random numbers (RAND_UNIFORM, RAND_NORMAL): element i of a call site is
 * a function of (seed, step, salt, i) alone, splitmix64-style: a key per call site and step,
 * then one mixing per element, so no state is carried from call to call ---- */

#define GOLDEN 0x9E3779B97F4A7C15ull /* 2^64 / golden ratio: splitmix64's increment */

/* splitmix64's finaliser: a bijection on 64-bit words that spreads every bit over all. */
static LLVMValueRef mix64(Lower *L, LLVMValueRef z) {
  LLVMBuilderRef b = L->b;
  z = LLVMBuildXor(b, z, LLVMBuildLShr(b, z, i64c(L, 30), ""), "");
  z = LLVMBuildMul(b, z, i64c(L, (int64_t)0xbf58476d1ce4e5b9ull), "");
  z = LLVMBuildXor(b, z, LLVMBuildLShr(b, z, i64c(L, 27), ""), "");
  z = LLVMBuildMul(b, z, i64c(L, (int64_t)0x94d049bb133111ebull), "");
  return LLVMBuildXor(b, z, LLVMBuildLShr(b, z, i64c(L, 31), ""), "");
}

/* mix64(a + k * GOLDEN) */
static LLVMValueRef mix_in(Lower *L, LLVMValueRef a, LLVMValueRef k) {
  LLVMValueRef t = LLVMBuildMul(L->b, k, i64c(L, (int64_t)GOLDEN), "");
  return mix64(L, LLVMBuildAdd(L->b, a, t, ""));
}

/* The random bits h as a number in [0, 1): the top 24 bits for f32 (so it cannot round up
 * to 1), the top 53 for f64. */
static LLVMValueRef unit_interval(Lower *L, LLVMValueRef h) {
  int bits = L->elem_size == 4 ? 24 : 53;
  LLVMValueRef top = LLVMBuildLShr(L->b, h, i64c(L, 64 - bits), "");
  return LLVMBuildFMul(L->b, LLVMBuildUIToFP(L->b, top, L->elem, ""), elemc(L, ldexp(1, -bits)),
                       "");
}

typedef struct RandomCtx {
  const Node *n;
  LLVMValueRef key; /* i64: this call site's key for this seed and step */
} RandomCtx;

/* ptr[0] = element ivar[0] (the flat index) of the call site's stream */
static void random_body(Lower *L, LLVMValueRef ptr[], const void *ctx) {
  const RandomCtx *c = ctx;
  LLVMBuilderRef b = L->b;
  LLVMValueRef i1 = LLVMBuildAdd(b, L->ivar[0], i64c(L, 1), "");
  LLVMValueRef h = mix_in(L, c->key, i1), u = unit_interval(L, h);
  if (c->n->op == OP_RAND_NORMAL) { /* Box-Muller: sqrt(-2 ln(1 - u)) cos(2 pi u2), 1 - u > 0 */
    LLVMValueRef u2 = unit_interval(L, mix_in(L, h, i64c(L, 1)));
    LLVMValueRef arg[1] = {LLVMBuildFSub(b, elemc(L, 1), u, "")};
    LLVMValueRef r = LLVMBuildFMul(b, elemc(L, -2), intrinsic(L, "llvm.log", arg, 1), "");
    arg[0] = r;
    r = intrinsic(L, "llvm.sqrt", arg, 1);
    arg[0] = LLVMBuildFMul(b, elemc(L, 6.283185307179586), u2, "");
    u = LLVMBuildFMul(b, r, intrinsic(L, "llvm.cos", arg, 1), "");
  }
  LLVMBuildStore(b, u, ptr[0]);
}

static void lower_random(Lower *L, const Node *n) {
  int64_t at = L->u->n_hyper;
  LLVMValueRef sp = region_ptr(L, NN_IO_HYPER, at + NN_HYPER_SEED, L->i64, "seed.slot");
  LLVMValueRef seed = LLVMBuildLoad2(L->b, L->i64, sp, "seed");
  LLVMValueRef tp = region_ptr(L, NN_IO_HYPER, at + NN_HYPER_STEP, L->f64, "step.slot");
  LLVMValueRef step = LLVMBuildFPToUI(L->b, LLVMBuildLoad2(L->b, L->f64, tp, ""), L->i64, "step");
  LLVMValueRef key = mix_in(L, mix64(L, LLVMBuildAdd(L->b, seed, i64c(L, (int64_t)GOLDEN), "")),
                            step);
  key = mix_in(L, key, i64c(L, n->attr.index));
  RandomCtx c = {n, key};
  Nest t = {.depth = 1, .ext = {elems_extent(n->shape)}};
  t.stride[nest_operand(&t, node_ptr(L, n))][0] = 1;
  LLVMValueRef off[MAX_OPERANDS] = {0};
  nest_level(L, &t, 0, off, random_body, &c); /* unsimplified: loop 0 counts the elements */
}

/* For each dim of gather's result (x[:axis] + idx[lead:] + x[axis+1:]): the stride of x
 * (0 along idx's dims; the indexed axis is added in the body) and of idx (0 along x's). */
static void gather_strides(Shape x, Shape idx, int axis, int lead, int64_t xs[], int64_t is[]) {
  int64_t xc[MAX_RANK], ic[MAX_RANK];
  contig_strides(x, xc);
  contig_strides(idx, ic);
  int d = 0;
  for (int i = 0; i < axis; i++, d++) xs[d] = xc[i], is[d] = i < lead ? ic[i] : 0;
  for (int i = lead; i < idx.rank; i++, d++) xs[d] = 0, is[d] = ic[i];
  for (int i = axis + 1; i < x.rank; i++, d++) xs[d] = xc[i], is[d] = 0;
}

static void lower_indexing(Lower *L, const Node *n) {
  const MoveAttr *m = &n->attr.move;
  const Node *src = n->src[0];
  int64_t ost[MAX_RANK], sst[MAX_RANK], st[MAX_RANK], off = 0;
  contig_strides(n->shape, ost);
  if (op_info[n->op].arity) contig_strides(src->shape, sst);
  switch (n->op) {
  case OP_PERMUTE: { /* out[i] = src[i permuted] */
    Nest t = nest_over(n->shape);
    int k = nest_operand(&t, node_ptr(L, n));
    for (int d = 0; d < n->shape.rank; d++) t.stride[k][d] = ost[d], st[d] = sst[m->perm[d]];
    nest_source(L, &t, src, st, 0);
    emit_nest(L, t, copy_body, src);
    break;
  }
  case OP_SLICE: { /* out[i] = src[lo + i*step] */
    Nest t = nest_over(n->shape);
    int k = nest_operand(&t, node_ptr(L, n));
    for (int d = 0; d < n->shape.rank; d++)
      t.stride[k][d] = ost[d], st[d] = sst[d] * m->step[d], off += m->lo[d] * sst[d];
    nest_source(L, &t, src, st, off);
    emit_nest(L, t, copy_body, src);
    break;
  }
  case OP_PAD: /* zeros, then out[lo + i*step] = src[i] */
    fill_node(L, n, elemc(L, 0));
    for (int d = 0; d < n->shape.rank; d++) st[d] = ost[d] * m->step[d], off += m->lo[d] * ost[d];
    copy_into(L, node_ptr(L, n), st, off, src);
    break;
  case OP_CONCAT: /* a, then b from a's length on along the axis */
    copy_into(L, node_ptr(L, n), ost, 0, src);
    copy_into(L, node_ptr(L, n), ost, src->shape.dim[m->axis] * ost[m->axis], n->src[1]);
    break;
  case OP_GATHER: {
    const Node *idx = n->src[1];
    IndexCtx c = {idx, src, src->shape.dim[m->axis], sst[m->axis]};
    int64_t is[MAX_RANK];
    gather_strides(src->shape, idx->shape, (int)m->axis, (int)m->lead, st, is);
    Nest t = nest_over(n->shape);
    int k = nest_operand(&t, node_ptr(L, n));
    for (int d = 0; d < n->shape.rank; d++) t.stride[k][d] = ost[d];
    nest_source(L, &t, src, st, 0);
    nest_source(L, &t, idx, is, 0);
    emit_nest(L, t, gather_body, &c);
    break;
  }
  case OP_SCATTER_ADD: { /* zeros, then for every element of g: out[.., idx, ..] += g */
    const Node *idx = n->src[1];
    IndexCtx c = {idx, src, n->shape.dim[m->axis], ost[m->axis]};
    int64_t is[MAX_RANK];
    fill_node(L, n, elemc(L, 0));
    gather_strides(n->shape, idx->shape, (int)m->axis, (int)m->lead, st, is);
    Nest t = nest_over(src->shape);
    int k = nest_operand(&t, node_ptr(L, n));
    for (int d = 0; d < src->shape.rank; d++) t.stride[k][d] = st[d];
    nest_source(L, &t, src, sst, 0);
    nest_source(L, &t, idx, is, 0);
    emit_nest(L, t, scatter_body, &c);
    break;
  }
  case OP_IOTA: {
    Nest t = nest_over(n->shape);
    int k = nest_operand(&t, node_ptr(L, n));
    for (int d = 0; d < n->shape.rank; d++) t.stride[k][d] = ost[d];
    LLVMValueRef at[MAX_OPERANDS] = {0};
    nest_level(L, &t, 0, at, iota_body, n); /* unsimplified: loop d counts dim d */
    break;
  }
  default: unreachable();
  }
}

static void lower_move(Lower *L, const Node *n) {
  if (n->op == OP_RAND_UNIFORM || n->op == OP_RAND_NORMAL) {
    lower_random(L, n);
    return;
  }
  if (n->op != OP_EXPAND && n->op != OP_RESHAPE) {
    lower_indexing(L, n);
    return;
  }
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

/* One matmul of the nest around lower_matmul's calls: ptr = C, A, B; ctx = the GemmArgs. */
static void matmul_body(Lower *L, LLVMValueRef ptr[], const void *ctx) {
  GemmArgs a = *(const GemmArgs *)ctx;
  a.c = ptr[0], a.a = ptr[1], a.b = ptr[2];
  lower_gemm_call(&L->gemm, L->b, &a, L->region[NN_IO_THREADS], L->region[NN_IO_SCRATCH]);
}

/* C[.., m, n] = sum_k A[.., m, k] * B[.., k, n], with A [.., K, M] when ta and B [.., N, K]
 * when tb; B's leading dims broadcast against C's (a rank-2 B is shared by every matrix).
 * The transposes become strides of the generated GEMM (lower_gemm.c); the last leading dim is
 * its batch of matrices, the others a loop around it. When B is shared by all matrices and A
 * is not transposed, the matrices are stacked into one tall one instead. */
static void lower_matmul(Lower *L, const Node *n) {
  const Node *a = n->src[0], *bm = n->src[1];
  Shape as = a->shape, bs = bm->shape, cs = n->shape;
  if (as.rank < 2 || bs.rank < 2 || cs.rank != as.rank) unreachable();
  int lead = cs.rank - 2, bl = bs.rank - 2;
  int64_t ast[MAX_RANK], bst[MAX_RANK], cst[MAX_RANK], bld[MAX_RANK];
  contig_strides(as, ast);
  contig_strides(bs, bst);
  contig_strides(cs, cst);
  bool shared_b = true; /* B's stride along each leading dim of C: 0 where it broadcasts */
  for (int d = 0; d < lead; d++) {
    int j = d - (lead - bl);
    bld[d] = (j < 0 || (bs.dim[j] == 1 && cs.dim[d] != 1)) ? 0 : bst[j];
    shared_b &= bld[d] == 0;
  }
  GemmArgs g = {
      .m = extent_value(L, dim_extent(cs.dim[lead])),
      .n = extent_value(L, dim_extent(cs.dim[lead + 1])),
      .k = extent_value(L, dim_extent(n->attr.ta ? as.dim[lead] : as.dim[lead + 1])),
      .batch = i64c(L, 1), .sa = i64c(L, 0), .sb = i64c(L, 0), .sc = i64c(L, 0),
      .rsa = i64c(L, n->attr.ta ? 1 : ast[lead]), .csa = i64c(L, n->attr.ta ? ast[lead] : 1),
      .rsb = i64c(L, n->attr.tb ? 1 : bst[bl]), .csb = i64c(L, n->attr.tb ? bst[bl] : 1),
      .ldc = i64c(L, cst[lead]),
  };
  Nest t = {.depth = 0};
  int C = nest_operand(&t, node_ptr(L, n)), A = nest_operand(&t, node_ptr(L, a));
  int B = nest_operand(&t, node_ptr(L, bm));
  if (lead > 0 && shared_b && !n->attr.ta) { /* one tall matrix */
    Shape rows = {.rank = lead + 1};
    memcpy(rows.dim, cs.dim, sizeof(int64_t) * (size_t)(lead + 1));
    g.m = extent_value(L, elems_extent(rows));
  } else if (lead > 0) { /* the last leading dim is the GEMM's batch; loops for the others */
    g.batch = extent_value(L, dim_extent(cs.dim[lead - 1]));
    g.sa = i64c(L, ast[lead - 1]), g.sb = i64c(L, bld[lead - 1]), g.sc = i64c(L, cst[lead - 1]);
    t.depth = lead - 1;
    for (int d = 0; d < lead - 1; d++) {
      t.ext[d] = dim_extent(cs.dim[d]);
      t.stride[C][d] = cst[d], t.stride[A][d] = ast[d], t.stride[B][d] = bld[d];
    }
  }
  emit_nest(L, t, matmul_body, &g);
}

/* ============================== convolution and pooling ============================== */

/* Sliding-window ops on NHWC images. The three convolutions are GEMMs over im2col matrices
 * (lower_gemm.c). Pooling is explicit loop nests: over samples b and output positions
 * (oh, ow), then over the window's taps (kh, kw), whose input row is ih = oh*sh - pt + kh*dh
 * (columns alike); a tap in the padding is skipped (padding is never stored). Channels are
 * last in every tensor, so each innermost loop walks contiguous memory:
 *   maxpool, avgpool   y[b,oh,ow,:]   = max or mean of x[b,ih,iw,:] over the taps
 *   avgpool_bwd        dx[b,ih,iw,:] += g[b,oh,ow,:] / (taps inside the input)
 *   maxpool_bwd        dx[b,ih,iw,c] += g[b,oh,ow,c] at the first tap holding the max */

/* A counted loop, i = 0 .. bound-1; the builder is in its body until loop_close. */
typedef struct Loop {
  LLVMValueRef i;                      /* the induction variable */
  LLVMBasicBlockRef pre, head, exit;   /* the block before the loop, the test, the way out */
} Loop;

static Loop loop_open(Lower *L, LLVMValueRef bound, const char *name) {
  Loop lp = {.pre = LLVMGetInsertBlock(L->b)};
  char blk[64];
  snprintf(blk, sizeof blk, "%s.head.%s", L->tag, name);
  lp.head = LLVMAppendBasicBlockInContext(L->ctx, L->fn, blk);
  snprintf(blk, sizeof blk, "%s.body.%s", L->tag, name);
  LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(L->ctx, L->fn, blk);
  snprintf(blk, sizeof blk, "%s.exit.%s", L->tag, name);
  lp.exit = LLVMAppendBasicBlockInContext(L->ctx, L->fn, blk);
  LLVMBuildBr(L->b, lp.head);
  LLVMPositionBuilderAtEnd(L->b, lp.head);
  lp.i = LLVMBuildPhi(L->b, L->i64, name);
  LLVMBuildCondBr(L->b, LLVMBuildICmp(L->b, LLVMIntSLT, lp.i, bound, ""), body, lp.exit);
  LLVMPositionBuilderAtEnd(L->b, body);
  return lp;
}

static void loop_close(Lower *L, Loop *lp) {
  LLVMValueRef next = LLVMBuildNSWAdd(L->b, lp->i, i64c(L, 1), "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(L->b);
  LLVMBuildBr(L->b, lp->head);
  LLVMValueRef zero = i64c(L, 0);
  LLVMAddIncoming(lp->i, &zero, &lp->pre, 1);
  LLVMAddIncoming(lp->i, &next, &latch, 1);
  LLVMPositionBuilderAtEnd(L->b, lp->exit);
}

/* if (cond) { ...: the builder is in the then-block; if_close(the returned join block). */
static LLVMBasicBlockRef if_open(Lower *L, LLVMValueRef cond, const char *name) {
  char blk[64];
  snprintf(blk, sizeof blk, "%s.then.%s", L->tag, name);
  LLVMBasicBlockRef then = LLVMAppendBasicBlockInContext(L->ctx, L->fn, blk);
  snprintf(blk, sizeof blk, "%s.join.%s", L->tag, name);
  LLVMBasicBlockRef join = LLVMAppendBasicBlockInContext(L->ctx, L->fn, blk);
  LLVMBuildCondBr(L->b, cond, then, join);
  LLVMPositionBuilderAtEnd(L->b, then);
  return join;
}

static void if_close(Lower *L, LLVMBasicBlockRef join) {
  LLVMBuildBr(L->b, join);
  LLVMPositionBuilderAtEnd(L->b, join);
}

/* A stack slot for a value carried across loop iterations (SROA makes it a register). */
static LLVMValueRef entry_slot(Lower *L, LLVMTypeRef ty, const char *name) {
  LLVMBasicBlockRef entry = LLVMGetEntryBasicBlock(L->fn);
  LLVMBuilderRef eb = LLVMCreateBuilderInContext(L->ctx);
  LLVMValueRef first = LLVMGetFirstInstruction(entry);
  if (first) LLVMPositionBuilderBefore(eb, first);
  else LLVMPositionBuilderAtEnd(eb, entry);
  LLVMValueRef slot = LLVMBuildAlloca(eb, ty, name);
  LLVMDisposeBuilder(eb);
  return slot;
}

static LLVMValueRef ix_mul(Lower *L, LLVMValueRef a, int64_t k) {
  return k == 1 ? a : LLVMBuildNSWMul(L->b, a, i64c(L, k), "");
}

static LLVMValueRef ix_add(Lower *L, LLVMValueRef a, LLVMValueRef c) {
  return LLVMBuildNSWAdd(L->b, a, c, "");
}

/* Offset of element (i0, i1, i2, 0) of a contiguous [d0, d1, d2, d3] tensor. */
static LLVMValueRef offset4(Lower *L, Shape s, LLVMValueRef i0, LLVMValueRef i1,
                            LLVMValueRef i2) {
  LLVMValueRef o = ix_add(L, ix_mul(L, i0, s.dim[1]), i1);
  return ix_mul(L, ix_add(L, ix_mul(L, o, s.dim[2]), i2), s.dim[3]);
}

static LLVMValueRef elem_ptr(Lower *L, LLVMValueRef base, LLVMValueRef off) {
  return LLVMBuildInBoundsGEP2(L->b, L->elem, base, &off, 1, "");
}

static LLVMValueRef load_elem(Lower *L, LLVMValueRef p) {
  return LLVMBuildLoad2(L->b, L->elem, p, "");
}

/* dst[0..n) += a * src[0..n): the inner loop of conv2d and conv2d_bwd_filter. */
static void axpy(Lower *L, LLVMValueRef dst, LLVMValueRef a, LLVMValueRef src, int64_t n) {
  Loop k = loop_open(L, i64c(L, n), "f");
  LLVMValueRef d = elem_ptr(L, dst, k.i), s = load_elem(L, elem_ptr(L, src, k.i));
  LLVMBuildStore(L->b, LLVMBuildFAdd(L->b, load_elem(L, d), LLVMBuildFMul(L->b, a, s, ""), ""), d);
  loop_close(L, &k);
}

/* The loops of one window op: samples and output positions, then taps. */
typedef struct Win {
  const ConvAttr *c;                /* the op's geometry */
  Shape img, out;                   /* [B,H,W,·] the image side (x or dx); [B,OH,OW,·] */
  Loop b, oh, ow, kh, kw;
  LLVMBasicBlockRef h_in, w_in;     /* joins of the padding tests; NULL when none is needed */
  LLVMValueRef ih, iw;              /* the tap's position in the image */
} Win;

static void positions_open(Lower *L, Win *v) {
  v->b = loop_open(L, extent_value(L, dim_extent(v->out.dim[0])), "b");
  v->oh = loop_open(L, i64c(L, v->out.dim[1]), "oh");
  v->ow = loop_open(L, i64c(L, v->out.dim[2]), "ow");
}

static void positions_close(Lower *L, Win *v) {
  loop_close(L, &v->ow);
  loop_close(L, &v->oh);
  loop_close(L, &v->b);
}

/* i = o*stride - pad_before + k*dilation, and a test that it is in [0, n) when padding can
 * put it outside (without padding the output size keeps every tap inside). */
static LLVMValueRef tap(Lower *L, LLVMValueRef o, LLVMValueRef k, int stride, int dil, int p0,
                        int p1, int64_t n, LLVMBasicBlockRef *join, const char *name) {
  LLVMValueRef i = ix_add(L, ix_mul(L, o, stride), ix_mul(L, k, dil));
  if (p0) i = ix_add(L, i, i64c(L, -p0));
  *join = p0 || p1 ? if_open(L, LLVMBuildICmp(L->b, LLVMIntULT, i, i64c(L, n), ""), name) : NULL;
  return i;
}

static void taps_open(Lower *L, Win *v) {
  const ConvAttr *c = v->c;
  v->kh = loop_open(L, i64c(L, c->kh), "kh");
  v->ih = tap(L, v->oh.i, v->kh.i, c->sh, c->dh, c->pt, c->pb, v->img.dim[1], &v->h_in, "ih");
  v->kw = loop_open(L, i64c(L, c->kw), "kw");
  v->iw = tap(L, v->ow.i, v->kw.i, c->sw, c->dw, c->pl, c->pr, v->img.dim[2], &v->w_in, "iw");
}

static void taps_close(Lower *L, Win *v) {
  if (v->w_in) if_close(L, v->w_in);
  loop_close(L, &v->kw);
  if (v->h_in) if_close(L, v->h_in);
  loop_close(L, &v->kh);
}

/* conv2d, conv2d_bwd_data, conv2d_bwd_filter: per-sample im2col and the generated GEMM,
 * parallel over the batch (lower_gemm.c). */
static void lower_conv(Lower *L, const Node *n) {
  lower_conv_call(&L->gemm, L->b, n, node_ptr(L, n), node_ptr(L, n->src[0]),
                  node_ptr(L, n->src[1]), L->batch, L->region[NN_IO_THREADS],
                  L->region[NN_IO_SCRATCH]);
}

/* y[B,OH,OW,C] = max or mean of x[B,H,W,C] over each window */
static void lower_pool(Lower *L, const Node *n) {
  const Node *xn = n->src[0];
  bool max = n->op == OP_MAXPOOL;
  Win v = {.c = &n->attr.conv, .img = xn->shape, .out = n->shape};
  int64_t C = n->shape.dim[3];
  LLVMValueRef y = node_ptr(L, n), x = node_ptr(L, xn);
  LLVMValueRef count = max ? NULL : entry_slot(L, L->i64, "taps");
  fill_node(L, n, elemc(L, max ? -INFINITY : 0.0));
  positions_open(L, &v);
  LLVMValueRef yp = elem_ptr(L, y, offset4(L, n->shape, v.b.i, v.oh.i, v.ow.i)); /* [C] */
  if (count) LLVMBuildStore(L->b, i64c(L, 0), count);
  taps_open(L, &v);
  if (count)
    LLVMBuildStore(L->b, ix_add(L, LLVMBuildLoad2(L->b, L->i64, count, ""), i64c(L, 1)), count);
  LLVMValueRef xp = elem_ptr(L, x, offset4(L, xn->shape, v.b.i, v.ih, v.iw));
  Loop c = loop_open(L, i64c(L, C), "c");
  LLVMValueRef p = elem_ptr(L, yp, c.i), acc = load_elem(L, p);
  LLVMValueRef xv = load_elem(L, elem_ptr(L, xp, c.i));
  LLVMValueRef r = max ? LLVMBuildSelect(L->b, LLVMBuildFCmp(L->b, LLVMRealOGT, xv, acc, ""), xv,
                                         acc, "")
                       : LLVMBuildFAdd(L->b, acc, xv, "");
  LLVMBuildStore(L->b, r, p);
  loop_close(L, &c);
  taps_close(L, &v);
  if (count) { /* the mean over the taps inside the image */
    LLVMValueRef taps = LLVMBuildSIToFP(L->b, LLVMBuildLoad2(L->b, L->i64, count, ""), L->elem, "");
    LLVMValueRef inv = LLVMBuildFDiv(L->b, elemc(L, 1), taps, "");
    Loop k = loop_open(L, i64c(L, C), "c");
    LLVMValueRef q = elem_ptr(L, yp, k.i);
    LLVMBuildStore(L->b, LLVMBuildFMul(L->b, load_elem(L, q), inv, ""), q);
    loop_close(L, &k);
  }
  positions_close(L, &v);
}

/* dx[B,H,W,C] = avgpool_bwd(g[B,OH,OW,C]): each g spread evenly over its window's taps */
static void lower_avgpool_bwd(Lower *L, const Node *n) {
  const Node *gn = n->src[0];
  Win v = {.c = &n->attr.conv, .img = n->shape, .out = gn->shape};
  int64_t C = n->shape.dim[3];
  LLVMValueRef dx = node_ptr(L, n), g = node_ptr(L, gn);
  LLVMValueRef count = entry_slot(L, L->i64, "taps");
  fill_node(L, n, elemc(L, 0));
  positions_open(L, &v);
  LLVMValueRef gp = elem_ptr(L, g, offset4(L, gn->shape, v.b.i, v.oh.i, v.ow.i)); /* [C] */
  LLVMBuildStore(L->b, i64c(L, 0), count);
  taps_open(L, &v); /* first count the taps inside the image */
  LLVMBuildStore(L->b, ix_add(L, LLVMBuildLoad2(L->b, L->i64, count, ""), i64c(L, 1)), count);
  taps_close(L, &v);
  LLVMValueRef taps = LLVMBuildSIToFP(L->b, LLVMBuildLoad2(L->b, L->i64, count, ""), L->elem, "");
  LLVMValueRef inv = LLVMBuildFDiv(L->b, elemc(L, 1), taps, "");
  taps_open(L, &v);
  LLVMValueRef xp = elem_ptr(L, dx, offset4(L, n->shape, v.b.i, v.ih, v.iw));
  axpy(L, xp, inv, gp, C);
  taps_close(L, &v);
  positions_close(L, &v);
}

/* dx[B,H,W,C] = maxpool_bwd(x[B,H,W,C], g[B,OH,OW,C]): per channel, the taps in order; the
 * first one holding the window's maximum receives g (PyTorch's choice on ties). The running
 * maximum and its position are kept for all channels at once (channels innermost), so the
 * loops over channels vectorise. */
static void lower_maxpool_bwd(Lower *L, const Node *n) {
  const Node *xn = n->src[0], *gn = n->src[1];
  Win v = {.c = &n->attr.conv, .img = xn->shape, .out = gn->shape};
  int64_t C = xn->shape.dim[3];
  LLVMValueRef dx = node_ptr(L, n), x = node_ptr(L, xn), g = node_ptr(L, gn);
  LLVMValueRef best = entry_slot(L, LLVMArrayType2(L->elem, (uint64_t)C), "best"); /* [C] */
  LLVMValueRef at = entry_slot(L, LLVMArrayType2(L->i64, (uint64_t)C), "argmax");  /* [C] */
  fill_node(L, n, elemc(L, 0));
  positions_open(L, &v);
  LLVMValueRef go = offset4(L, gn->shape, v.b.i, v.oh.i, v.ow.i);
  Loop c = loop_open(L, i64c(L, C), "c");
  LLVMBuildStore(L->b, elemc(L, -INFINITY), elem_ptr(L, best, c.i));
  LLVMBuildStore(L->b, i64c(L, -1), LLVMBuildInBoundsGEP2(L->b, L->i64, at, &c.i, 1, ""));
  loop_close(L, &c);
  taps_open(L, &v);
  LLVMValueRef xo = offset4(L, xn->shape, v.b.i, v.ih, v.iw);
  c = loop_open(L, i64c(L, C), "c");
  LLVMValueRef xc = ix_add(L, xo, c.i);
  LLVMValueRef xv = load_elem(L, elem_ptr(L, x, xc));
  LLVMValueRef bp = elem_ptr(L, best, c.i), bv = load_elem(L, bp);
  LLVMValueRef more = LLVMBuildFCmp(L->b, LLVMRealOGT, xv, bv, "");
  LLVMBuildStore(L->b, LLVMBuildSelect(L->b, more, xv, bv, ""), bp);
  LLVMValueRef ap = LLVMBuildInBoundsGEP2(L->b, L->i64, at, &c.i, 1, "");
  LLVMValueRef old = LLVMBuildLoad2(L->b, L->i64, ap, "");
  LLVMBuildStore(L->b, LLVMBuildSelect(L->b, more, xc, old, ""), ap);
  loop_close(L, &c);
  taps_close(L, &v);
  c = loop_open(L, i64c(L, C), "c");
  LLVMValueRef a =
      LLVMBuildLoad2(L->b, L->i64, LLVMBuildInBoundsGEP2(L->b, L->i64, at, &c.i, 1, ""), "");
  LLVMBasicBlockRef join = /* none found only if every tap is -inf or NaN */
      if_open(L, LLVMBuildICmp(L->b, LLVMIntSGE, a, i64c(L, 0), ""), "found");
  LLVMValueRef p = elem_ptr(L, dx, a);
  LLVMValueRef gv = load_elem(L, elem_ptr(L, g, ix_add(L, go, c.i)));
  LLVMBuildStore(L->b, LLVMBuildFAdd(L->b, load_elem(L, p), gv, ""), p);
  if_close(L, join);
  loop_close(L, &c);
  positions_close(L, &v);
}

static void lower_window(Lower *L, const Node *n) {
  switch (n->op) {
  case OP_CONV2D: case OP_CONV2D_BWD_DATA: case OP_CONV2D_BWD_FILTER: lower_conv(L, n); break;
  case OP_MAXPOOL: case OP_AVGPOOL: lower_pool(L, n); break;
  case OP_MAXPOOL_BWD: lower_maxpool_bwd(L, n); break;
  case OP_AVGPOOL_BWD: lower_avgpool_bwd(L, n); break;
  default: diag_internal(__FILE__, __LINE__, "%s is not a window op", op_info[n->op].text);
  }
}

/* ============================== fused loop groups ============================== */

/* One nest over the group's loop shape: in its body every needed member is computed at the
 * loop index, in registers, from its operands (a member of the group, a scalar, or a load
 * from memory outside the group); then the stored members are written, and the reduction
 * (at most one, fuse.c's choice) adds its operand into its result. All loads come before
 * all stores, so a value planned in place of a leaf it reads (the optimizer's new parameter
 * over the old one) reads the old value first. The order of the reduction's additions is
 * the unfused one's, so results are the same to the bit. */
typedef struct LoopCtx {
  const Group *G;
  int gi;                 /* its index */
  const bool *need;       /* by node id: the kernel needs it */
  int *index;             /* by node id: position in G->members */
  int *read;              /* by member position * 3 + operand: nest operand of a load, or -1 */
  int *store;             /* by member position: nest operand of its store, or -1 */
  LLVMValueRef *value;    /* by member position: its value in this iteration, once made */
} LoopCtx;

/* Strides over the loop's dims for reading memory of shape x as a value of shape seen: by
 * broadcasting, or for a reshape (which only adds or drops 1-dims) by x's own layout. */
static void loop_strides(Shape x, Shape seen, bool reshape, const Group *G, int64_t st[]) {
  int64_t full[MAX_RANK];
  Shape by = reshape ? x : seen;
  if (reshape) contig_strides(x, full);
  else bcast_strides(x, seen, full);
  int r = 0;
  for (int d = 0; d < by.rank; d++)
    if (by.dim[d] != 1) {
      if (r == G->loop.rank) break;
      st[r++] = full[d];
    }
  if (r != G->loop.rank || !fuse_same_loop(by, G->loop))
    diag_internal(__FILE__, __LINE__, "%s does not walk loop %s", shape_str(by, false),
                  shape_str(G->loop, false));
}

static LLVMValueRef member_value(Lower *L, LoopCtx *c, const Node *m, LLVMValueRef ptr[]);

static LLVMValueRef operand_value(Lower *L, LoopCtx *c, const Node *m, int k,
                                  LLVMValueRef ptr[]) {
  const Node *s = m->src[k];
  if (class_of(s) == CLASS_SCALAR) return L->val[s->id];
  if (s->group == c->gi) return member_value(L, c, s, ptr);
  int op = c->read[c->index[m->id] * 3 + k];
  if (op < 0) diag_internal(__FILE__, __LINE__, "%%%d operand %d not loaded", m->id, k);
  return LLVMBuildLoad2(L->b, L->elem, ptr[op], "");
}

static LLVMValueRef member_value(Lower *L, LoopCtx *c, const Node *m, LLVMValueRef ptr[]) {
  int i = c->index[m->id];
  if (c->value[i]) return c->value[i];
  LLVMValueRef v;
  if (m->op == OP_EXPAND || m->op == OP_RESHAPE) {
    v = operand_value(L, c, m, 0, ptr);
  } else if (m->op == OP_WHERE) {
    LLVMValueRef pick = LLVMBuildFCmp(L->b, LLVMRealONE, operand_value(L, c, m, 0, ptr),
                                      elemc(L, 0), "");
    v = LLVMBuildSelect(L->b, pick, operand_value(L, c, m, 1, ptr),
                        operand_value(L, c, m, 2, ptr), "");
  } else if (class_of(m) == CLASS_ELEM) {
    LLVMValueRef a = operand_value(L, c, m, 0, ptr);
    LLVMValueRef b = op_info[m->op].arity > 1 ? operand_value(L, c, m, 1, ptr) : NULL;
    v = scalar_op(L, m->op, a, b);
  } else {
    diag_internal(__FILE__, __LINE__, "%s in a fused loop", op_info[m->op].text);
  }
  return c->value[i] = v;
}

static void loop_body(Lower *L, LLVMValueRef ptr[], const void *ctx) {
  LoopCtx *c = (LoopCtx *)ctx;
  const Group *G = c->G;
  memset(c->value, 0, sizeof *c->value * (size_t)G->n_members);
  LLVMValueRef *out = xalloc(sizeof *out * ((size_t)G->n_members + 1));
  for (int i = 0; i < G->n_members; i++) { /* every load first */
    const Node *m = G->members[i];
    if (c->store[i] < 0) continue;
    out[i] = class_of(m) == CLASS_REDUCE ? operand_value(L, c, m, 0, ptr) : member_value(L, c, m, ptr);
  }
  for (int i = 0; i < G->n_members; i++) { /* then every store */
    const Node *m = G->members[i];
    if (c->store[i] < 0) continue;
    LLVMValueRef p = ptr[c->store[i]], v = out[i];
    if (m->op == OP_SUM) {
      v = LLVMBuildFAdd(L->b, LLVMBuildLoad2(L->b, L->elem, p, ""), v, "");
    } else if (m->op == OP_RMAX) {
      LLVMValueRef acc = LLVMBuildLoad2(L->b, L->elem, p, "");
      v = LLVMBuildSelect(L->b, LLVMBuildFCmp(L->b, LLVMRealOGT, v, acc, ""), v, acc, "");
    }
    LLVMBuildStore(L->b, v, p);
  }
}

static void lower_loop_group(Lower *L, int gi, const bool *need) {
  const Group *G = &L->g->groups[gi];
  int nm = G->n_members;
  LoopCtx c = {.G = G, .gi = gi, .need = need};
  c.index = xalloc(sizeof *c.index * ((size_t)L->g->n_nodes + 1));
  c.read = xalloc(sizeof *c.read * (size_t)nm * 3);
  c.store = xalloc(sizeof *c.store * (size_t)nm);
  c.value = xalloc(sizeof *c.value * (size_t)nm);
  for (int i = 0; i < nm; i++) c.index[G->members[i]->id] = i, c.store[i] = -1;
  for (int i = 0; i < nm * 3; i++) c.read[i] = -1;
  snprintf(L->tag, sizeof L->tag, "g%d", gi);
  Nest t = nest_over(G->loop);
  for (int i = 0; i < nm; i++) {
    const Node *m = G->members[i];
    if (!need[m->id]) continue;
    if (class_of(m) == CLASS_REDUCE) { /* starts from the identity, accumulates in the loop */
      fill_node(L, m, elemc(L, m->op == OP_SUM ? 0.0 : -INFINITY));
      c.store[i] = nest_operand(&t, node_ptr(L, m));
      loop_strides(m->shape, m->src[0]->shape, false, G, t.stride[c.store[i]]);
    } else if (m->stored) {
      c.store[i] = nest_operand(&t, node_ptr(L, m));
      loop_strides(m->shape, m->shape, false, G, t.stride[c.store[i]]);
    }
    for (int k = 0; k < op_info[m->op].arity; k++) {
      const Node *s = m->src[k];
      if (class_of(s) == CLASS_SCALAR || s->group == gi) continue;
      int op = c.read[i * 3 + k] = nest_operand(&t, node_ptr(L, s));
      Shape seen = class_of(m) == CLASS_REDUCE ? s->shape : m->shape;
      loop_strides(s->shape, seen, m->op == OP_RESHAPE, G, t.stride[op]);
    }
  }
  emit_nest(L, t, loop_body, &c);
}

static void lower_node(Lower *L, const Node *n) {
  if (class_of(n) != CLASS_SCALAR && (n->io < 0 || n->io >= NN_IO_COUNT))
    diag_internal(__FILE__, __LINE__, "node %%%d (%s) has no planned region", n->id,
                  op_info[n->op].text);
  snprintf(L->tag, sizeof L->tag, "n%d", n->id);
  switch (class_of(n)) {
  case CLASS_LEAF: break; /* the data is already at io/offset */
  case CLASS_SCALAR: L->val[n->id] = lower_scalar(L, n); break;
  case CLASS_ELEM: case CLASS_REDUCE: unreachable(); /* always in a loop group */
  case CLASS_MOVE: lower_move(L, n); break;
  case CLASS_CONTRACT: lower_matmul(L, n); break;
  case CLASS_WINDOW: lower_window(L, n); break;
  }
}

/* Stores a finished value into its output region. */
static void lower_output(Lower *L, const Output *o) {
  const Node *n = o->node;
  bool mem = class_of(n) != CLASS_SCALAR;
  snprintf(L->tag, sizeof L->tag, "%s", region_name[o->io]);
  if (o->io == NN_IO_LOSS || o->io == NN_IO_HYPER) { /* one double: the loss, "lr used" */
    LLVMValueRef v = mem ? LLVMBuildLoad2(L->b, L->elem, node_ptr(L, n), "") : L->val[n->id];
    if (L->elem != L->f64) v = LLVMBuildFPExt(L->b, v, L->f64, "");
    LLVMBuildStore(L->b, v, region_ptr(L, o->io, o->offset, L->f64, "double.slot"));
    return;
  }
  if (mem && n->io == o->io && n->offset == o->offset) return; /* computed in place */
  Nest t = {.depth = 1, .ext = {elems_extent(n->shape)}};
  t.stride[nest_operand(&t, region_ptr(L, o->io, o->offset, L->elem, ""))][0] = 1;
  t.stride[nest_operand(&t, mem ? node_ptr(L, n) : NULL)][0] = mem;
  emit_nest(L, t, copy_body, n);
}

/* ============================== kernels ============================== */

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
    if (n->op == OP_RAND_UNIFORM || n->op == OP_RAND_NORMAL) /* they read seed and step */
      regions |= 1u << NN_IO_HYPER;
    if (class_of(n) == CLASS_CONTRACT || n->op == OP_CONV2D || n->op == OP_CONV2D_BWD_DATA ||
        n->op == OP_CONV2D_BWD_FILTER) /* GEMMs take threads and scratch */
      regions |= (1u << NN_IO_THREADS) | (1u << NN_IO_SCRATCH);
    if (n->op == OP_HYPER) regions |= 1u << NN_IO_HYPER;
    else if (class_of(n) != CLASS_SCALAR && n->io >= 0 && n->io < NN_IO_COUNT)
      regions |= 1u << n->io;
  }
  return regions;
}

/* A large graph (an unrolled recurrence has thousands of nodes) is lowered as a chain of
 * outlined parts of about PART_NODES nodes (whole loop groups) each, called in order by the
 * kernel: LLVM's optimiser
 * is superlinear in the size of one function, and linear over many small ones. Parts talk
 * through memory, as the nodes of one function already do. */
enum { PART_NODES = 64, PART_ABOVE = 512 /* needed nodes before a kernel is split */ };

/* Starts emitting into fn (io, batch): its entry block, and the regions' base pointers. */
static void begin_fn(Lower *L, LLVMValueRef fn, unsigned regions) {
  L->fn = fn;
  LLVMPositionBuilderAtEnd(L->b, LLVMAppendBasicBlockInContext(L->ctx, fn, "entry"));
  LLVMValueRef io = LLVMGetParam(fn, 0);
  L->batch = LLVMGetParam(fn, 1);
  memset(L->region, 0, sizeof L->region);
  for (int r = 0; r < NN_IO_COUNT; r++) {
    if (!(regions & (1u << r))) continue;
    LLVMValueRef idx = i64c(L, r);
    LLVMValueRef slot = r ? LLVMBuildInBoundsGEP2(L->b, L->ptr, io, &idx, 1, "") : io;
    L->region[r] = LLVMBuildLoad2(L->b, L->ptr, slot, region_name[r]);
  }
}

/* Values made in one function are not visible in another: forget the node pointers and
 * make the needed scalars in the function being emitted. */
static void rebind_scalars(Lower *L, const Graph *g, const bool *need) {
  memset(L->at, 0, sizeof *L->at * ((size_t)g->n_nodes + 1));
  for (int i = 0; i < g->n_nodes; i++)
    if (need[i] && class_of(g->nodes[i]) == CLASS_SCALAR) lower_node(L, g->nodes[i]);
}

static LLVMValueRef emit_kernel(Lower *L, const char *name, const Graph *g, unsigned io_mask) {
  LLVMTypeRef params[2] = {L->ptr, L->i64};
  LLVMTypeRef fty = LLVMFunctionType(L->vd, params, 2, 0);
  LLVMValueRef kernel = LLVMAddFunction(L->mod, name, fty);
  unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
  LLVMAddAttributeAtIndex(kernel, LLVMAttributeFunctionIndex,
                          LLVMCreateEnumAttribute(L->ctx, nounwind, 0));
  if (!g) {
    begin_fn(L, kernel, 0);
    LLVMBuildRetVoid(L->b);
    return kernel;
  }
  bool *need = xalloc((size_t)g->n_nodes + 1);
  unsigned regions = mark_needed(g, io_mask, need);
  begin_fn(L, kernel, regions);
  LLVMBasicBlockRef kernel_block = LLVMGetInsertBlock(L->b);
  LLVMValueRef kernel_region[NN_IO_COUNT], kernel_batch = L->batch;
  memcpy(kernel_region, L->region, sizeof kernel_region);
  L->val = xalloc(sizeof *L->val * ((size_t)g->n_nodes + 1));
  L->at = xalloc(sizeof *L->at * ((size_t)g->n_nodes + 1));
  L->g = g;
  rebind_scalars(L, g, need); /* scalars are SSA values every loop may use */
  int needed = 0, count = 0, parts = 0;
  for (int i = 0; i < g->n_nodes; i++) needed += need[i];
  for (int gi = 0; gi < g->n_groups; gi++) {
    const Group *G = &g->groups[gi];
    bool any = false;
    for (int i = 0; i < G->n_members; i++) any |= need[G->members[i]->id];
    if (!any) continue;
    if (needed > PART_ABOVE && (!parts || count >= PART_NODES)) {
      /* the next groups go into a new part, which the kernel calls here */
      if (parts) LLVMBuildRetVoid(L->b);
      char part_name[96];
      snprintf(part_name, sizeof part_name, "%s.part%d", name, parts++);
      LLVMValueRef part = LLVMAddFunction(L->mod, part_name, fty);
      LLVMSetLinkage(part, LLVMInternalLinkage);
      static const char *const attrs[] = {"nounwind", "noinline"};
      for (int k = 0; k < 2; k++)
        LLVMAddAttributeAtIndex(part, LLVMAttributeFunctionIndex,
                                LLVMCreateEnumAttribute(L->ctx,
                                    LLVMGetEnumAttributeKindForName(attrs[k], strlen(attrs[k])), 0));
      LLVMPositionBuilderAtEnd(L->b, kernel_block);
      LLVMValueRef args[2] = {LLVMGetParam(kernel, 0), LLVMGetParam(kernel, 1)};
      LLVMBuildCall2(L->b, fty, part, args, 2, "");
      begin_fn(L, part, regions);
      rebind_scalars(L, g, need);
      count = 0;
    }
    if (G->kind == GROUP_LOOP) lower_loop_group(L, gi, need);
    else lower_node(L, G->members[0]);
    count += G->n_members;
  }
  if (parts) { /* back in the kernel, for the outputs */
    LLVMBuildRetVoid(L->b);
    L->fn = kernel, L->batch = kernel_batch;
    memcpy(L->region, kernel_region, sizeof kernel_region);
    LLVMPositionBuilderAtEnd(L->b, kernel_block);
    rebind_scalars(L, g, need);
  }
  lower_outputs(L, g, io_mask);
  LLVMBuildRetVoid(L->b);
  return kernel;
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
    PUT_I64(&f, NnParamInfo, buffer, p->buffer);
    PUT_I64(&f, NnParamInfo, frozen, p->frozen);
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

/* The kernels share the arena and nothing in it outlives a call: the larger plan is enough.
 * `unplanned`: what one slot per node of the unfused graphs would need instead. */
static int64_t arena_bytes(Lower *L, bool unplanned) {
  int64_t elems = 0;
  const Graph *gs[3] = {L->u->train, L->u->update, L->u->infer};
  for (int i = 0; i < 3; i++) {
    int64_t e = !gs[i] ? 0 : unplanned ? gs[i]->unplanned_elems : gs[i]->arena_elems;
    if (e > elems) elems = e;
  }
  int64_t bytes = elems * L->elem_size;
  return bytes < 64 ? 64 : bytes;
}

/* A private constant NnDataSource; row_width = values per table row. */
static LLVMValueRef data_source(Lower *L, const DataSpec *d, int64_t row_width) {
  Fields f = {0};
  PUT_I64(&f, NnDataSource, kind, d->kind);
  PUT_PTR(&f, NnDataSource, name, cstring(L, d->name));
  PUT_PTR(&f, NnDataSource, path, cstring(L, d->path));
  PUT_PTR(&f, NnDataSource, labels, cstring(L, d->labels));
  PUT_I64(&f, NnDataSource, rows, d->rows);
  PUT_PTR(&f, NnDataSource, table, doubles(L, d->table, d->rows * row_width, "data_table"));
  PUT_I64(&f, NnDataSource, header, d->header);
  PUT_F64(&f, NnDataSource, scale, d->scale);
  return private_const(L, struct_of(L, &f, &L->source_type, "NnDataSource", sizeof(NnDataSource)),
                       "data_source");
}

static LLVMValueRef emit_model_desc(Lower *L, LLVMValueRef kernel[4]) {
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
  PUT_I64(&f, NnModelDesc, arena_bytes, arena_bytes(L, false));
  L->scratch_bytes = lower_gemm_finish(&L->gemm);
  PUT_I64(&f, NnModelDesc, scratch_bytes, L->scratch_bytes);
  PUT_I64(&f, NnModelDesc, max_batch, u->batch);
  PUT_I64(&f, NnModelDesc, epochs, u->epochs);
  PUT_I64(&f, NnModelDesc, seed, u->seed);
  PUT_I64(&f, NnModelDesc, task, u->task);
  PUT_F64(&f, NnModelDesc, threshold, u->threshold);
  PUT_I64(&f, NnModelDesc, compare, u->compare);
  PUT_I64(&f, NnModelDesc, n_hyper, u->n_hyper);
  PUT_PTR(&f, NnModelDesc, hyper_names, hyper_name_table(L));
  PUT_PTR(&f, NnModelDesc, hyper_defaults,
          doubles(L, u->hyper_defaults, u->n_hyper, "hyper_defaults"));
  PUT_I64(&f, NnModelDesc, labels, u->labels);
  PUT_PTR(&f, NnModelDesc, data, data_source(L, &u->data, x_size + y_size));
  PUT_PTR(&f, NnModelDesc, val,
          u->val.kind == NN_DATA_NONE ? LLVMConstNull(L->ptr)
                                      : data_source(L, &u->val, x_size + y_size));
  PUT_F64(&f, NnModelDesc, val_split, u->val_split);
  PUT_F64(&f, NnModelDesc, plateau_factor, u->plateau[0]);
  PUT_I64(&f, NnModelDesc, plateau_patience, (int64_t)u->plateau[1]);
  PUT_F64(&f, NnModelDesc, plateau_threshold, u->plateau[2]);
  PUT_F64(&f, NnModelDesc, plateau_min_lr, u->plateau[3]);
  PUT_I64(&f, NnModelDesc, modes, u->infer != NULL);
  PUT_PTR(&f, NnModelDesc, forward, kernel[0]);
  PUT_PTR(&f, NnModelDesc, eval, kernel[1]);
  PUT_PTR(&f, NnModelDesc, grad, kernel[2]);
  PUT_PTR(&f, NnModelDesc, update, kernel[3]);
  PUT_I64(&f, NnModelDesc, arena_unplanned_bytes, arena_bytes(L, true));
  PUT_I64(&f, NnModelDesc, patience, u->patience);
  PUT_I64(&f, NnModelDesc, monitor, u->monitor);
  LLVMTypeRef desc = NULL;
  LLVMValueRef init = struct_of(L, &f, &desc, "NnModelDesc", sizeof(NnModelDesc));
  LLVMValueRef g = LLVMAddGlobal(L->mod, desc, "nn_model");
  LLVMSetInitializer(g, init);
  LLVMSetGlobalConstant(g, 1);
  return g;
}

/* --emit=header: NnEmbedDesc `nn_embed` for the support code (runtime/embed.h), with the
 * baked weights as one aligned constant in the kernels' element type. ORDER EMBED */
static void emit_embed_desc(Lower *L, Embed *e, LLVMValueRef model) {
  /* One worker's GEMM scratch (embedded kernels run serially unless the caller's hook runs
   * them) lives inside each arena: after the inference activations, and in the training arena
   * between the activations and the room for OUT (runtime/embed.c places it). */
  e->infer_arena_bytes += L->scratch_bytes + 64; /* + 64: the GEMM packs with aligned stores, */
  e->train_arena_bytes += L->scratch_bytes + 64; /* the caller's arena may be 16-byte aligned */
  LLVMValueRef weights = LLVMConstNull(L->ptr);
  if (e->weights && L->u->param_size > 0) {
    size_t n = (size_t)L->u->param_size, es = (size_t)L->elem_size;
    char *bytes = xalloc(n * es);
    for (size_t i = 0; i < n; i++) {
      float f = (float)e->weights[i];
      memcpy(bytes + i * es, es == 4 ? (void *)&f : (void *)&e->weights[i], es);
    }
    weights = private_const(L, LLVMConstStringInContext2(L->ctx, bytes, n * es, 1), "weights");
    LLVMSetAlignment(weights, NNE_ALIGN_PREFERRED);
  }
  Fields f = {0};
  PUT_PTR(&f, NnEmbedDesc, model, model);
  PUT_I64(&f, NnEmbedDesc, infer_arena_bytes, e->infer_arena_bytes);
  PUT_I64(&f, NnEmbedDesc, train_arena_bytes, e->train_arena_bytes);
  PUT_I64(&f, NnEmbedDesc, hash, (int64_t)e->hash);
  PUT_PTR(&f, NnEmbedDesc, weights, weights);
  PUT_I64(&f, NnEmbedDesc, has_train, L->u->has_train);
  LLVMTypeRef ty = NULL;
  LLVMValueRef init = struct_of(L, &f, &ty, "NnEmbedDesc", sizeof(NnEmbedDesc));
  LLVMValueRef g = LLVMAddGlobal(L->mod, ty, "nn_embed");
  LLVMSetInitializer(g, init);
  LLVMSetGlobalConstant(g, 1);
}

/* ============================== target, passes, output ============================== */

static LLVMCodeGenOptLevel codegen_level(int o) {
  return o <= 0 ? LLVMCodeGenLevelNone : o == 1 ? LLVMCodeGenLevelLess
       : o == 2 ? LLVMCodeGenLevelDefault : LLVMCodeGenLevelAggressive;
}

/* x86 CPU names LLVM knows with AVX-512 / with AVX2 (for --target-cpu, where the C API
 * cannot tell us the CPU's features). */
static const char *const avx512_cpus[] = {
  "x86-64-v4", "skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client",
  "icelake-server", "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids",
  "graniterapids", "graniterapids-d", "znver4", "znver5", "knl", "knm", NULL,
};
static const char *const avx2_cpus[] = {
  "x86-64-v3", "haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake",
  "arrowlake", "lunarlake", "gracemont", "sierraforest", "grandridge", "znver1", "znver2",
  "znver3", "bdver4", "sandybridge", "ivybridge", "btver2", "bdver1", "bdver2", "bdver3", NULL,
};

static bool listed(const char *const *list, const char *name) {
  for (; *list; list++)
    if (!strcmp(*list, name)) return true;
  return false;
}

/* The SIMD registers the GEMM's micro-kernel is sized for: width in bits and count. From the
 * host's feature string, or for a named CPU from the lists above; otherwise the baseline of
 * the architecture (SSE2 / NEON: 128 bits). */
static void simd_registers(const char *triple, const char *cpu, const char *features, int *bits,
                           int *regs) {
  bool arm = !strncmp(triple, "aarch64", 7) || !strncmp(triple, "arm64", 5);
  *bits = 128, *regs = arm ? 32 : 16;
  if (arm) return;
  bool has512 = features ? strstr(features, "+avx512f") != NULL : listed(avx512_cpus, cpu);
  bool has256 = features ? strstr(features, "+avx,") || strstr(features, "+avx2")
                         : listed(avx2_cpus, cpu);
  if (has512) *bits = 512, *regs = 32;
  else if (has256) *bits = 256;
}

/* The host's target machine, or one for opts->target_cpu (then without host features). */
static LLVMTargetMachineRef target_machine(const Options *opts, int *bits, int *regs) {
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
  simd_registers(triple, is_host ? host : opts->target_cpu, features, bits, regs);
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
  lower_gemm_init(&L->gemm, L->ctx, L->mod, L->elem, L->vector_bits, L->registers);
  const Graph *infer = u->infer ? u->infer : u->train; /* eval and predict: inference mode */
  for (int k = 0; k < N_KERNELS; k++) { /* ORDER DESC: forward, eval, grad, update */
    bool grad = !kernel_specs[k].update && kernel_specs[k].outs == ~0u;
    const Graph *g = kernel_specs[k].update ? u->update : grad ? u->train : infer;
    kernel[k] = emit_kernel(L, kernel_specs[k].name, g, kernel_specs[k].outs);
  }
  LLVMValueRef model = emit_model_desc(L, kernel);
  if (L->embed) emit_embed_desc(L, L->embed, model);
}

bool lower_llvm(const Unit *u, const Options *opts, Emit emit, const char *path) {
  int bits, regs;
  LLVMTargetMachineRef tm = target_machine(opts, &bits, &regs);
  if (!tm) return false;
  Lower L = {.u = u, .embed = opts->embed, .ctx = LLVMContextCreate(), .vector_bits = bits,
             .registers = regs};
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
