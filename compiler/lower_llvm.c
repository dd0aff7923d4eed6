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
 * target CPU. With lower_gemm.c and lower_conv.c, the only code that includes llvm-c. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Core.h>
#include <llvm-c/Support.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "lower_gemm.h"
#include "nnc.h"
#include "../runtime/embed.h"

enum {
  MAX_LOOPS = MAX_RANK + 2, /* matmul: leading dims, then m, k, n */
  MAX_OPERANDS = FUSE_MAX_PORTS, /* a fused loop's stores and reads (fuse.c bounds them) */
  SPLIT_ELEMS = 1 << 14, /* a loop nest over fewer elements is not worth waking threads for */
  NEST_SHORT = 16,       /* a last loop this short that a sum runs along goes inside the rows */
  TASK_ELEMS = 1 << 13,  /* elements of one task of a split nest: enough to outweigh taking it */
  MAX_PARTIALS = 16,     /* most tasks of a reduction over the outer loop (one partial each) */
  PARTIAL_ELEMS = 1 << 16, /* most elements of all of one reduction's partials (in scratch) */
};

/* Fields of %nn.split.job, what a loop nest split across threads reads. ORDER SPLITJOB */
enum {
  SJ_IO, SJ_BATCH,        /* the kernel's arguments */
  SJ_NEXT, SJ_TASKS,      /* the next task to take (atomic), and how many there are */
  SJ_COUNT
};

/* Names of the io slots, for readable IR. ORDER IO */
static const char *const region_name[NN_IO_COUNT] = {
  "arena", "param", "grad", "state", "x", "y", "out", "loss", "hyper", "threads", "scratch",
};

/* What a group function (lower_group_apart) takes, so that the tasks it splits into take the
 * same: its tensors, the parameter (memory place) of each, and the scalars it makes. */
typedef struct Places {
  const Node **touch;                /* nt tensors the group reads or writes */
  int nt;
  int *param;                        /* by tensor: its place, 0..np-1 */
  int np;
  bool *noalias;                     /* by place: overlaps no other place */
  const Node **scalars;              /* ns scalar nodes the group uses */
  int ns;
} Places;

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
  unsigned regions;                  /* the io regions the kernel being emitted loads */
  const bool *need;                  /* by node id: the kernel being emitted needs it */
  LLVMValueRef *split_val, *split_at; /* val and at while emitting a split nest's function */
  LLVMTypeRef split_job;             /* %nn.split.job */
  Gemm gemm;                         /* the module's matmul and convolutions (lower_gemm.c,
                                      * lower_conv.c) */
  GemmEpilogue epilogue;             /* for the matmul or conv2d being lowered, or none */
  ConvHook conv_hook;                /* for the convolution being lowered, or none */
  bool apart;                        /* emitting a group function: no node ids in names */
  const Places *places;              /* while apart: the group function's places */
  struct GroupFn *group_fns;         /* n_group_fns group functions made so far, by text */
  int n_group_fns;
  char *text;                        /* text_cap bytes: the text of the group function made last */
  size_t text_cap;
  int vector_bits, registers;        /* the target's SIMD registers: width and count */
  /* Options.quant: the forward and eval kernels read baked weights, maybe int8 (quant.c) */
  const Quant *quant;
  bool quant_on;                     /* the kernel being emitted is forward or eval */
  LLVMValueRef *baked;               /* by parameter: its f32 constant, made on first use */
  LLVMValueRef calibration;          /* QUANT_CALIBRATE: nn_calibration (NnCalibration) */
  LLVMTypeRef i8, i32;
  bool vnni;                         /* the target has AVX-512 VNNI (vpdpbusd) */
  bool winograd;                     /* 3x3 conv2d by Winograd (no --no-winograd) */
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

static LLVMValueRef private_const(Lower *L, LLVMValueRef init, const char *name);

/* `n` bytes as a private constant aligned to 64. */
static LLVMValueRef bytes_const(Lower *L, const void *bytes, size_t n, const char *name) {
  LLVMValueRef g = private_const(L, LLVMConstStringInContext2(L->ctx, bytes, n, 1), name);
  LLVMSetAlignment(g, NNE_ALIGN_PREFERRED);
  return g;
}

/* With Options.quant, a value in NN_IO_PARAM read by forward or eval: the baked f32 constant
 * of the parameter holding it (one per parameter, so the weights that only int8 sites read
 * are not in the object at all). */
static LLVMValueRef baked_ptr(Lower *L, const Node *n) {
  const Unit *u = L->u;
  for (int p = 0; p < u->n_params; p++) {
    const ParamDecl *d = &u->params[p];
    int64_t size = shape_elems(d->shape, 1);
    if (n->offset < d->offset || n->offset >= d->offset + (size ? size : 1)) continue;
    if (!L->baked[p]) {
      float *v = xalloc(sizeof *v * (size_t)(size + 1));
      for (int64_t i = 0; i < size; i++) v[i] = (float)L->quant->weights[d->offset + i];
      L->baked[p] = bytes_const(L, v, sizeof *v * (size_t)size, xprintf("w.%s", d->name));
    }
    LLVMValueRef idx = i64c(L, n->offset - d->offset);
    return LLVMBuildInBoundsGEP2(L->b, L->elem, L->baked[p], &idx, 1, "");
  }
  diag_internal(__FILE__, __LINE__, "node %%%d is in no parameter", n->id);
}

/* Where a materialised node's value lives. Made once per kernel, always between loop nests
 * (never inside one), so the first one dominates every later use. */
static LLVMValueRef node_ptr(Lower *L, const Node *n) {
  if (n->io < 0) diag_internal(__FILE__, __LINE__, "node %%%d has no memory", n->id);
  if (L->at[n->id]) return L->at[n->id];
  if (L->quant_on && n->io == NN_IO_PARAM) return L->at[n->id] = baked_ptr(L, n);
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

/* Names the loops about to be emitted after what they compute ("g7", "n12"); a group
 * function's names carry no id, so that the same code for another step reads the same. */
static void set_tag(Lower *L, const char *kind, int id) {
  if (L->apart) snprintf(L->tag, sizeof L->tag, "%s", kind);
  else snprintf(L->tag, sizeof L->tag, "%s%d", kind, id);
}

static LLVMValueRef bool_to_elem(Lower *L, LLVMValueRef c) {
  return LLVMBuildUIToFP(L->b, c, L->elem, "");
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
  bool accum[MAX_OPERANDS]; /* a reduction's result, which the body loads, adds to, stores */
  LLVMValueRef lo0, hi0;  /* when set, loop 0 runs over [lo0, hi0) only: one task's share */
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
  /* The innermost loop keeps each sum that does not move along it (a reduction over it) in
   * a stack slot, which LLVM turns into a register: added to in place in memory, every
   * iteration waited for the last one's store (about 8 cycles an element, not 4). The same
   * additions in the same order. */
  Nest in = *t;
  LLVMValueRef home[MAX_OPERANDS] = {0}, at[MAX_OPERANDS];
  memcpy(at, off, sizeof at);
  bool kept = false;
  for (int k = 0; d == t->depth - 1 && k < t->n_ops; k++)
    if (t->accum[k] && t->base[k] && t->stride[k][d] == 0) {
      home[k] = !off[k] ? t->base[k]
                : LLVMBuildInBoundsGEP2(L->b, L->elem, t->base[k], &off[k], 1, "");
      in.base[k] = entry_slot(L, L->elem, "sum");
      LLVMBuildStore(L->b, LLVMBuildLoad2(L->b, L->elem, home[k], ""), in.base[k]);
      at[k] = NULL; /* the slot is the sum's place in the loop */
      kept = true;
    }
  char name[16], blk[64];
  snprintf(name, sizeof name, "i%d", d);
  bool share = d == 0 && t->lo0;
  LLVMValueRef bound = share ? t->hi0 : extent_value(L, t->ext[d]);
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
    inner[k] = !step ? at[k] : !at[k] ? step : LLVMBuildNSWAdd(L->b, at[k], step, "");
  }
  nest_level(L, kept ? &in : t, d + 1, inner, body, ctx);
  LLVMValueRef next = LLVMBuildNSWAdd(L->b, i, i64c(L, 1), "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(L->b);
  LLVMBuildBr(L->b, head);
  LLVMValueRef start = share ? t->lo0 : i64c(L, 0);
  LLVMAddIncoming(i, &start, &pre, 1);
  LLVMAddIncoming(i, &next, &latch, 1);
  LLVMPositionBuilderAtEnd(L->b, exit);
  for (int k = 0; k < t->n_ops; k++) /* the sums kept in registers go back to memory */
    if (in.base[k] != t->base[k])
      LLVMBuildStore(L->b, LLVMBuildLoad2(L->b, L->elem, in.base[k], ""), home[k]);
}

/* A reduction over a short last axis (softmax's over a classifier's 10 classes: [B, 10])
 * is a loop of a few scalar steps, exp's among them, per row. With the last two loops
 * swapped, the inner loop runs along the rows, one sum per row, which LLVM vectorises (the
 * rows' elements a stride apart); each sum still adds its terms in the same order. Not when
 * a sum does not move along the rows (then it would add in another order), nor for a batch
 * extent (unknown until run time) or a short outer loop. */
static void nest_rows_inner(Nest *t) {
  int d = t->depth - 1;
  if (d < 1 || t->ext[d].batch || t->ext[d].n >= NEST_SHORT) return;
  if (!t->ext[d - 1].batch && t->ext[d - 1].n < NEST_SHORT) return;
  bool reduces = false;
  for (int k = 0; k < t->n_ops; k++) {
    if (!t->accum[k]) continue;
    if (t->stride[k][d - 1] == 0) return;
    reduces |= t->stride[k][d] == 0;
  }
  if (!reduces) return;
  Extent e = t->ext[d];
  t->ext[d] = t->ext[d - 1], t->ext[d - 1] = e;
  for (int k = 0; k < t->n_ops; k++) {
    int64_t s = t->stride[k][d];
    t->stride[k][d] = t->stride[k][d - 1], t->stride[k][d - 1] = s;
  }
}

/* Emits the nest at the builder's position; the builder ends after it. */
static void emit_nest(Lower *L, Nest t, NestBody body, const void *ctx) {
  nest_simplify(&t);
  nest_rows_inner(&t);
  LLVMValueRef off[MAX_OPERANDS] = {0}; /* NULL = offset 0 */
  nest_level(L, &t, 0, off, body, ctx);
}

/* ---- a nest split across threads ----
 * The outer loop is cut into tasks of about TASK_ELEMS elements, which the runtime's workers
 * take from an atomic counter (lower_gemm.c's machinery); the nest becomes a function of its
 * own, nn_grad.g7(job, worker), that reads the kernel's arguments from a job on the kernel's
 * stack and makes its operands' pointers from the regions as the kernel does (region plus a
 * constant offset: passed in as opaque pointers instead, they kept LLVM from vectorising the
 * Adam update). Each element is still computed by one worker in the same order, so results
 * do not depend on the thread count. */

static void bind_regions(Lower *L, LLVMValueRef io);
static void rebind_scalars(Lower *L, const Graph *g, const bool *need);

static LLVMValueRef split_field(Lower *L, LLVMValueRef job, int f) {
  return LLVMBuildStructGEP2(L->b, L->split_job, job, (unsigned)f, "");
}

static LLVMValueRef split_get(Lower *L, LLVMValueRef job, int f) {
  return LLVMBuildLoad2(L->b, LLVMStructGetTypeAtIndex(L->split_job, (unsigned)f),
                        split_field(L, job, f), "");
}

static LLVMValueRef cdiv_i64(Lower *L, LLVMValueRef a, int64_t k) {
  return LLVMBuildSDiv(L->b, LLVMBuildNSWAdd(L->b, a, i64c(L, k - 1), ""), i64c(L, k), "");
}

/* A side function: code of the kernel's that another function runs (a split nest's tasks,
 * a GEMM's epilogue), emitted as if it were the kernel from a %nn.split.job on the kernel's
 * stack that holds the kernel's io and batch. Values made in the kernel are not visible
 * there: the side function loads its own regions and makes its own node pointers and
 * scalars (in split_at and split_val). */
typedef struct SideFn {
  LLVMBasicBlockRef back;              /* where the kernel's code goes on */
  LLVMValueRef fn, batch, *val, *at;   /* the kernel's */
  LLVMValueRef region[NN_IO_COUNT];
  char tag[sizeof ((Lower *)0)->tag];  /* the loops' names (making scalars changes them) */
} SideFn;

/* A new function of the module's own (internal, nounwind; noinline where asked: a part or
 * group function, called from many places or kept apart on purpose). */
static LLVMValueRef internal_fn(Lower *L, const char *name, LLVMTypeRef fty, bool noinline) {
  LLVMValueRef fn = LLVMAddFunction(L->mod, name, fty);
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  const char *attrs[] = {"nounwind", "noinline"};
  for (int k = 0; k < 1 + noinline; k++)
    LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex,
                            LLVMCreateEnumAttribute(L->ctx,
                                                    LLVMGetEnumAttributeKindForName(
                                                        attrs[k], strlen(attrs[k])), 0));
  return fn;
}

/* A new side function of type fty, named after the kernel and the tag ("nn_grad.g7"). */
static LLVMValueRef side_fn_new(Lower *L, LLVMTypeRef fty) {
  char name[96];
  snprintf(name, sizeof name, "%s.%s", LLVMGetValueName(L->fn), L->tag);
  return internal_fn(L, name, fty, false);
}

/* The kernel's side: a job holding its io and batch, and `tasks` tasks to take. */
static LLVMValueRef side_job(Lower *L, LLVMValueRef tasks) {
  LLVMValueRef job = entry_slot(L, L->split_job, "split.job");
  LLVMValueRef v[SJ_COUNT] = {LLVMGetParam(L->fn, 0), L->batch, i64c(L, 0), tasks};
  for (int f = 0; f < SJ_COUNT; f++) LLVMBuildStore(L->b, v[f], split_field(L, job, f));
  return job;
}

/* Starts emitting side function fn, whose first parameter is the job. */
static SideFn side_fn_enter(Lower *L, LLVMValueRef fn) {
  SideFn s = {LLVMGetInsertBlock(L->b), L->fn, L->batch, L->val, L->at, {0}, {0}};
  memcpy(s.region, L->region, sizeof s.region);
  memcpy(s.tag, L->tag, sizeof s.tag);
  L->fn = fn, L->val = L->split_val, L->at = L->split_at;
  LLVMPositionBuilderAtEnd(L->b, LLVMAppendBasicBlockInContext(L->ctx, fn, "entry"));
  LLVMValueRef job = LLVMGetParam(fn, 0);
  L->batch = split_get(L, job, SJ_BATCH);
  bind_regions(L, split_get(L, job, SJ_IO));
  rebind_scalars(L, L->g, L->need);
  memcpy(L->tag, s.tag, sizeof s.tag);
  return s;
}

/* Back in the kernel, where it was left. */
static void side_fn_leave(Lower *L, const SideFn *s) {
  L->fn = s->fn, L->batch = s->batch, L->val = s->val, L->at = s->at;
  memcpy(L->region, s->region, sizeof s->region);
  memcpy(L->tag, s->tag, sizeof s->tag);
  LLVMPositionBuilderAtEnd(L->b, s->back);
}

/* What one task of a split loop does: iterations [lo, hi) of the outer loop, in the split
 * function, whose job is `job`. */
typedef void (*SplitBody)(Lower *L, LLVMValueRef lo, LLVMValueRef hi, const void *ctx);

/* Whether a split loop of `count` outer iterations (`inner` elements each) in `tasks` tasks
 * runs on every worker of `threads`: when it has SPLIT_ELEMS elements, two workers, two tasks. */
static LLVMValueRef split_parallel(Lower *L, LLVMValueRef count, int64_t inner, LLVMValueRef tasks,
                                   LLVMValueRef threads) {
  LLVMValueRef workers = lower_workers(&L->gemm, L->b, threads);
  LLVMValueRef elems = LLVMBuildNSWMul(L->b, count, i64c(L, inner), "");
  LLVMValueRef parallel = LLVMBuildICmp(L->b, LLVMIntSGE, elems, i64c(L, SPLIT_ELEMS), "");
  parallel = LLVMBuildAnd(L->b, parallel,
                          LLVMBuildICmp(L->b, LLVMIntSGT, workers, i64c(L, 1), ""), "");
  return LLVMBuildAnd(L->b, parallel,
                      LLVMBuildICmp(L->b, LLVMIntSGT, tasks, i64c(L, 1), ""), "");
}

static LLVMValueRef same_group_fn(Lower *L, LLVMValueRef fn);
static LLVMValueRef lower_scalar(Lower *L, const Node *n);
static void add_noalias(Lower *L, LLVMValueRef fn, unsigned first, const bool *noalias, int n);

/* emit_split in a group function, whose tensors are its parameters (L->places) rather than
 * region + offset: the loop becomes nn.task(io, batch, lo, hi, place...), iterations [lo, hi)
 * with the group function's places (noalias as there), and nn.split(job, worker) takes the
 * tasks from a job that carries the places and calls nn.task for each; the group function
 * fills the job and runs nn.split as emit_split runs its function. The tasks are emit_split's,
 * so the same elements are computed in the same order. Both functions are shared by text like
 * group functions, so group functions alike stay alike. */
static void emit_split_apart(Lower *L, Extent outer, int64_t rows, int64_t inner,
                             SplitBody body, const void *ctx) {
  const Places *P = L->places;
  int np = P->np;
  LLVMTypeRef *tp = xalloc(sizeof *tp * (size_t)(np + 4));
  tp[0] = L->ptr, tp[1] = L->i64, tp[2] = L->i64, tp[3] = L->i64;
  for (int k = 0; k < np; k++) tp[k + 4] = L->ptr;
  LLVMTypeRef task_ty = LLVMFunctionType(L->vd, tp, (unsigned)np + 4, 0);
  LLVMValueRef task = internal_fn(L, "nn.task", task_ty, false);
  add_noalias(L, task, 4, P->noalias, np);

  /* the task, emitted as the group function is; then back to the group function */
  LLVMBasicBlockRef back = LLVMGetInsertBlock(L->b);
  LLVMValueRef group_fn = L->fn, batch = L->batch, region[NN_IO_COUNT];
  memcpy(region, L->region, sizeof region);
  LLVMValueRef *at = xalloc(sizeof *at * (size_t)(P->nt + 1));
  LLVMValueRef *val = xalloc(sizeof *val * (size_t)(P->ns + 1));
  for (int j = 0; j < P->nt; j++) at[j] = L->at[P->touch[j]->id];
  for (int j = 0; j < P->ns; j++) val[j] = L->val[P->scalars[j]->id];
  L->fn = task;
  LLVMPositionBuilderAtEnd(L->b, LLVMAppendBasicBlockInContext(L->ctx, task, "entry"));
  L->batch = LLVMGetParam(task, 1);
  bind_regions(L, LLVMGetParam(task, 0));
  for (int j = 0; j < P->nt; j++)
    L->at[P->touch[j]->id] = LLVMGetParam(task, (unsigned)P->param[j] + 4);
  for (int j = 0; j < P->ns; j++) L->val[P->scalars[j]->id] = lower_scalar(L, P->scalars[j]);
  body(L, LLVMGetParam(task, 2), LLVMGetParam(task, 3), ctx);
  LLVMBuildRetVoid(L->b);
  task = same_group_fn(L, task);

  /* nn.split(job, worker): job = {io, batch, next, tasks, place...} */
  LLVMTypeRef *jf = xalloc(sizeof *jf * (size_t)(np + SJ_COUNT));
  for (int f = 0; f < SJ_COUNT; f++) jf[f] = LLVMStructGetTypeAtIndex(L->split_job, (unsigned)f);
  for (int k = 0; k < np; k++) jf[SJ_COUNT + k] = L->ptr;
  LLVMTypeRef job_ty = LLVMStructTypeInContext(L->ctx, jf, (unsigned)(SJ_COUNT + np), 0);
  LLVMTypeRef sp[2] = {L->ptr, L->i64};
  LLVMValueRef split = internal_fn(L, "nn.split", LLVMFunctionType(L->vd, sp, 2, 0), false);
  L->fn = split;
  LLVMPositionBuilderAtEnd(L->b, LLVMAppendBasicBlockInContext(L->ctx, split, "entry"));
  LLVMValueRef fjob = LLVMGetParam(split, 0);
  LLVMValueRef *targs = xalloc(sizeof *targs * (size_t)(np + 4));
  for (int f = 0; f < SJ_COUNT + np; f++) {
    if (f == SJ_NEXT) continue;
    LLVMValueRef v = LLVMBuildLoad2(L->b, jf[f], LLVMBuildStructGEP2(L->b, job_ty, fjob,
                                                                     (unsigned)f, ""), "");
    if (f == SJ_IO) targs[0] = v;
    else if (f == SJ_BATCH) targs[1] = L->batch = v;
    else if (f == SJ_TASKS) targs[2] = v; /* for now: the task count */
    else targs[f - SJ_COUNT + 4] = v;
  }
  LLVMValueRef end = extent_value(L, outer);
  TaskLoop t = lower_tasks_begin(&L->gemm, L->b,
                                 LLVMBuildStructGEP2(L->b, job_ty, fjob, SJ_NEXT, ""), targs[2],
                                 LLVMGetParam(split, 1));
  LLVMValueRef lo = LLVMBuildNSWMul(L->b, t.i, i64c(L, rows), "lo");
  LLVMValueRef hi = LLVMBuildNSWAdd(L->b, lo, i64c(L, rows), "");
  targs[2] = lo;
  targs[3] = LLVMBuildSelect(L->b, LLVMBuildICmp(L->b, LLVMIntSLT, hi, end, ""), hi, end, "hi");
  LLVMBuildCall2(L->b, task_ty, task, targs, (unsigned)np + 4, "");
  lower_tasks_end(&L->gemm, L->b, &t);
  LLVMBuildRetVoid(L->b);
  split = same_group_fn(L, split);

  /* back in the group function: the job, and the call */
  L->fn = group_fn, L->batch = batch;
  memcpy(L->region, region, sizeof region);
  for (int j = 0; j < P->nt; j++) L->at[P->touch[j]->id] = at[j];
  for (int j = 0; j < P->ns; j++) L->val[P->scalars[j]->id] = val[j];
  LLVMPositionBuilderAtEnd(L->b, back);
  LLVMValueRef job = entry_slot(L, job_ty, "split.job");
  LLVMValueRef count = extent_value(L, outer), tasks = cdiv_i64(L, count, rows);
  for (int f = 0; f < SJ_COUNT + np; f++) {
    LLVMValueRef v = f == SJ_IO ? LLVMGetParam(group_fn, 0) : f == SJ_BATCH ? batch
                   : f == SJ_NEXT ? i64c(L, 0) : f == SJ_TASKS ? tasks
                   : LLVMGetParam(group_fn, (unsigned)(f - SJ_COUNT + 2));
    LLVMBuildStore(L->b, v, LLVMBuildStructGEP2(L->b, job_ty, job, (unsigned)f, ""));
  }
  LLVMValueRef threads = L->region[NN_IO_THREADS];
  lower_run_workers(&L->gemm, L->b, split, job, threads,
                    split_parallel(L, count, inner, tasks, threads));
}

/* Emits at the builder's position the outer loop over `outer` iterations, cut into tasks of
 * `rows`, as a function of its own, and its call: by every worker of io's threads when the
 * loop has at least SPLIT_ELEMS elements (`inner` per outer iteration) and there are two
 * workers and two tasks, else by the caller alone. The body makes its own pointers (node_ptr
 * works there as in the kernel). In a group function, emit_split_apart. */
static void emit_split(Lower *L, Extent outer, int64_t rows, int64_t inner, SplitBody body,
                       const void *ctx) {
  if (L->apart) {
    emit_split_apart(L, outer, rows, inner, body, ctx);
    return;
  }
  LLVMTypeRef params[2] = {L->ptr, L->i64};
  LLVMValueRef fn = side_fn_new(L, LLVMFunctionType(L->vd, params, 2, 0));
  /* the caller's side: the job, and the call */
  LLVMValueRef count = extent_value(L, outer), tasks = cdiv_i64(L, count, rows);
  LLVMValueRef job = side_job(L, tasks);
  LLVMValueRef threads = L->region[NN_IO_THREADS];
  lower_run_workers(&L->gemm, L->b, fn, job, threads, split_parallel(L, count, inner, tasks,
                                                                     threads));

  /* the function, emitted as if it were the kernel; then back to the caller */
  SideFn side = side_fn_enter(L, fn);
  LLVMValueRef fjob = LLVMGetParam(fn, 0);
  LLVMValueRef end = extent_value(L, outer);
  TaskLoop task = lower_tasks_begin(&L->gemm, L->b, split_field(L, fjob, SJ_NEXT),
                                    split_get(L, fjob, SJ_TASKS), LLVMGetParam(fn, 1));
  LLVMValueRef lo = LLVMBuildNSWMul(L->b, task.i, i64c(L, rows), "lo");
  LLVMValueRef hi = LLVMBuildNSWAdd(L->b, lo, i64c(L, rows), "");
  hi = LLVMBuildSelect(L->b, LLVMBuildICmp(L->b, LLVMIntSLT, hi, end, ""), hi, end, "hi");
  body(L, lo, hi, ctx);
  lower_tasks_end(&L->gemm, L->b, &task);
  LLVMBuildRetVoid(L->b);
  side_fn_leave(L, &side);
}

/* Emits nest t split across threads when it can be that large (task(lo, hi, ctx) makes the
 * nest again in the split function, the same but for loop 0's range), and returns true; false when
 * it is too small to pay, or when an operand that accumulates (t.accum[k]: a reduction's
 * result) does not move along the outer loop, so that two tasks would add into one element. */
static bool emit_nest_split(Lower *L, Nest t, SplitBody task, const void *ctx) {
  nest_simplify(&t);
  if (t.depth == 0) return false;
  int64_t inner = 1;
  for (int d = 1; d < t.depth; d++) inner *= t.ext[d].n; /* only loop 0 scales with the batch */
  int64_t batch = L->u->batch > 1 ? L->u->batch : 1;
  if (t.ext[0].n * inner * (t.ext[0].batch ? batch : 1) < SPLIT_ELEMS) return false;
  for (int k = 0; k < t.n_ops; k++)
    if (t.accum[k] && t.stride[k][0] == 0) return false;
  emit_split(L, t.ext[0], TASK_ELEMS / inner > 1 ? TASK_ELEMS / inner : 1, inner, task, ctx);
  return true;
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

/* e^a in f32 as plain arithmetic, which the loop vectoriser widens (llvm.exp stays one expf
 * call per element): Cephes' expf. a = n ln2 + r with |r| <= ln2/2 (ln2 in two parts), e^r by
 * a polynomial, 2^n put into the exponent bits (as 2^(n-1) * 2, so n = 128 stays finite).
 * Within 2 ulp of expf; inf above 88.72 and 0 below -86.9 (where e^a is about the smallest
 * normal float) rather than denormals; NaN stays NaN. f64 keeps llvm.exp. */
static LLVMValueRef exp_f32(Lower *L, LLVMValueRef a) {
  LLVMBuilderRef b = L->b;
  LLVMTypeRef i32 = LLVMInt32TypeInContext(L->ctx);
  const double hi = 88.72, lo = -86.9;
  LLVMValueRef args[2] = {a, elemc(L, hi)};
  args[0] = intrinsic(L, "llvm.minnum", args, 2), args[1] = elemc(L, lo);
  LLVMValueRef x = intrinsic(L, "llvm.maxnum", args, 2);
  args[0] = LLVMBuildFMul(b, x, elemc(L, 1.44269504088896341), ""); /* a / ln2 */
  LLVMValueRef n = intrinsic(L, "llvm.rint", args, 1);
  LLVMValueRef r = LLVMBuildFSub(b, x, LLVMBuildFMul(b, n, elemc(L, 0.693359375), ""), "");
  r = LLVMBuildFSub(b, r, LLVMBuildFMul(b, n, elemc(L, -2.12194440e-4), ""), "");
  static const double coef[] = {1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1};
  LLVMValueRef p = elemc(L, coef[0]);
  for (int i = 1; i < 6; i++) p = LLVMBuildFAdd(b, LLVMBuildFMul(b, p, r, ""), elemc(L, coef[i]), "");
  p = LLVMBuildFMul(b, LLVMBuildFMul(b, r, r, ""), p, ""); /* e^r = 1 + r + r^2 p(r) */
  p = LLVMBuildFAdd(b, LLVMBuildFAdd(b, p, r, ""), elemc(L, 1), "");
  LLVMValueRef bits = LLVMBuildAdd(b, LLVMBuildFPToSI(b, n, i32, ""), LLVMConstInt(i32, 126, 0), "");
  bits = LLVMBuildShl(b, bits, LLVMConstInt(i32, 23, 0), "");
  LLVMValueRef e = LLVMBuildFMul(b, p, LLVMBuildBitCast(b, bits, L->elem, ""), "");
  e = LLVMBuildFMul(b, e, elemc(L, 2), "");
  e = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOGT, a, elemc(L, hi), ""), elemc(L, INFINITY), e, "");
  e = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, a, elemc(L, lo), ""), elemc(L, 0), e, "");
  return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealUNO, a, a, ""), a, e, "");
}

/* tanh a in f32, vectorisable like exp_f32: sign(a) (1 - 2 / (e^(2|a|) + 1)), which cancels
 * badly near 0, so below |a| = 1/4 the Taylor series to a^9 (relative error < 1e-8 there).
 * Within 4 ulp of tanhf. f64 keeps llvm.tanh. */
static LLVMValueRef tanh_f32(Lower *L, LLVMValueRef a) {
  LLVMBuilderRef b = L->b;
  LLVMValueRef args[2] = {a};
  LLVMValueRef abs = intrinsic(L, "llvm.fabs", args, 1);
  LLVMValueRef e = exp_f32(L, LLVMBuildFMul(b, abs, elemc(L, 2), ""));
  LLVMValueRef q = LLVMBuildFDiv(b, elemc(L, 2), LLVMBuildFAdd(b, e, elemc(L, 1), ""), "");
  args[0] = LLVMBuildFSub(b, elemc(L, 1), q, ""), args[1] = a;
  LLVMValueRef big = intrinsic(L, "llvm.copysign", args, 2);
  static const double taylor[] = {62.0 / 2835, -17.0 / 315, 2.0 / 15, -1.0 / 3};
  LLVMValueRef a2 = LLVMBuildFMul(b, a, a, ""), p = elemc(L, taylor[0]);
  for (int i = 1; i < 4; i++) p = LLVMBuildFAdd(b, LLVMBuildFMul(b, p, a2, ""), elemc(L, taylor[i]), "");
  LLVMValueRef small = LLVMBuildFAdd(b, a, LLVMBuildFMul(b, LLVMBuildFMul(b, a, a2, ""), p, ""), "");
  return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, abs, elemc(L, 0.25), ""), small, big, "");
}

static LLVMValueRef exp_elem(Lower *L, LLVMValueRef a) {
  return L->elem == L->f64 ? intrinsic(L, "llvm.exp", &a, 1) : exp_f32(L, a);
}

/* The scalar formula of each ELEM op. */
static LLVMValueRef scalar_op(Lower *L, OpKind op, LLVMValueRef a, LLVMValueRef c) {
  LLVMBuilderRef b = L->b;
  LLVMValueRef args[2] = {a, c};
  switch (op) {
  case OP_NEG: return LLVMBuildFNeg(b, a, "");
  case OP_EXP: return exp_elem(L, a);
  case OP_LOG: return intrinsic(L, "llvm.log", args, 1);
  case OP_SQRT: return intrinsic(L, "llvm.sqrt", args, 1);
  case OP_TANH: return L->elem == L->f64 ? intrinsic(L, "llvm.tanh", args, 1) : tanh_f32(L, a);
  case OP_SIGMOID: {
    LLVMValueRef e = exp_elem(L, LLVMBuildFNeg(b, a, ""));
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
/* B's stride along each leading dim of C (0 where it broadcasts); true when it is 0 for all,
 * so every matrix of the matmul n shares B. */
static bool matmul_shared_b(const Node *n, int64_t bld[]) {
  Shape bs = n->src[1]->shape, cs = n->shape;
  int lead = cs.rank - 2, bl = bs.rank - 2;
  int64_t bst[MAX_RANK];
  contig_strides(bs, bst);
  bool shared_b = true;
  for (int d = 0; d < lead; d++) {
    int j = d - (lead - bl);
    bld[d] = (j < 0 || (bs.dim[j] == 1 && cs.dim[d] != 1)) ? 0 : bst[j];
    shared_b &= bld[d] == 0;
  }
  return shared_b;
}

/* Is the matmul n one GEMM of one matrix (rank 2, or a shared B stacked into a tall one)? */
static bool matmul_one_gemm(const Node *n) {
  int64_t bld[MAX_RANK];
  return n->shape.rank == 2 || (matmul_shared_b(n, bld) && !n->attr.ta);
}

static void lower_matmul(Lower *L, const Node *n) {
  const Node *a = n->src[0], *bm = n->src[1];
  Shape as = a->shape, bs = bm->shape, cs = n->shape;
  if (as.rank < 2 || bs.rank < 2 || cs.rank != as.rank) unreachable();
  int lead = cs.rank - 2, bl = bs.rank - 2;
  int64_t ast[MAX_RANK], bst[MAX_RANK], cst[MAX_RANK], bld[MAX_RANK];
  contig_strides(as, ast);
  contig_strides(bs, bst);
  contig_strides(cs, cst);
  bool shared_b = matmul_shared_b(n, bld);
  GemmArgs g = {
      .m = extent_value(L, dim_extent(cs.dim[lead])),
      .n = extent_value(L, dim_extent(cs.dim[lead + 1])),
      .k = extent_value(L, dim_extent(n->attr.ta ? as.dim[lead] : as.dim[lead + 1])),
      .batch = i64c(L, 1), .sa = i64c(L, 0), .sb = i64c(L, 0), .sc = i64c(L, 0),
      .rsa = i64c(L, n->attr.ta ? 1 : ast[lead]), .csa = i64c(L, n->attr.ta ? ast[lead] : 1),
      .rsb = i64c(L, n->attr.tb ? 1 : bst[bl]), .csb = i64c(L, n->attr.tb ? bst[bl] : 1),
      .ldc = i64c(L, cst[lead]),
      .epilogue = L->epilogue.fn, .epilogue_ctx = L->epilogue.ctx, .epilogue_row = i64c(L, 0),
  };
  if (L->epilogue.fn && !matmul_one_gemm(n)) unreachable();
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
  LLVMValueRef from;                   /* its first value */
  LLVMBasicBlockRef pre, head, exit;   /* the block before the loop, the test, the way out */
} Loop;

/* i = from .. bound-1 */
static Loop loop_range(Lower *L, LLVMValueRef from, LLVMValueRef bound, const char *name) {
  Loop lp = {.pre = LLVMGetInsertBlock(L->b), .from = from};
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

static Loop loop_open(Lower *L, LLVMValueRef bound, const char *name) {
  return loop_range(L, i64c(L, 0), bound, name);
}

static void loop_close(Lower *L, Loop *lp) {
  LLVMValueRef next = LLVMBuildNSWAdd(L->b, lp->i, i64c(L, 1), "");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(L->b);
  LLVMBuildBr(L->b, lp->head);
  LLVMAddIncoming(lp->i, &lp->from, &lp->pre, 1);
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
  LLVMValueRef lo, hi;              /* the samples [lo, hi) (one task's), or NULL: all */
  Loop b, oh, ow, kh, kw;
  LLVMBasicBlockRef h_in, w_in;     /* joins of the padding tests; NULL when none is needed */
  LLVMValueRef ih, iw;              /* the tap's position in the image */
} Win;

static void positions_open(Lower *L, Win *v) {
  v->b = v->lo ? loop_range(L, v->lo, v->hi, "b")
               : loop_open(L, extent_value(L, dim_extent(v->out.dim[0])), "b");
  v->oh = loop_open(L, i64c(L, v->out.dim[1]), "oh");
  v->ow = loop_open(L, i64c(L, v->out.dim[2]), "ow");
}

static void positions_close(Lower *L, Win *v) {
  loop_close(L, &v->ow);
  loop_close(L, &v->oh);
  loop_close(L, &v->b);
}

/* i = o*stride - pad_before + k*dilation, and a test that it is in [0, n) when padding can
 * put it outside (without padding, or with a negative one after, from trim.c, the output size
 * keeps every tap inside). */
static LLVMValueRef tap(Lower *L, LLVMValueRef o, LLVMValueRef k, int stride, int dil, int p0,
                        int p1, int64_t n, LLVMBasicBlockRef *join, const char *name) {
  LLVMValueRef i = ix_add(L, ix_mul(L, o, stride), ix_mul(L, k, dil));
  if (p0) i = ix_add(L, i, i64c(L, -p0));
  *join = p0 || p1 > 0 ? if_open(L, LLVMBuildICmp(L->b, LLVMIntULT, i, i64c(L, n), ""), name) : NULL;
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
 * parallel over the batch (lower_conv.c). */
static void lower_conv(Lower *L, const Node *n) {
  lower_conv_call(&L->gemm, L->b, n, node_ptr(L, n), node_ptr(L, n->src[0]),
                  node_ptr(L, n->src[1]), L->batch, L->region[NN_IO_THREADS],
                  L->region[NN_IO_SCRATCH], L->epilogue, L->conv_hook);
}

/* ============================== int8 sites (quant.c) ============================== */

/* A site x[.., K] @ W[K, N] (or a convolution's patches of K = kh*kw*C values) in int8:
 *   qx[k] = clamp(round(x[k] / x_scale), -127, 127) + 128     one row at a time, as u8
 *   y[j]  = (sum_k qx[k] * qw[j, k] - 128 * colsum[j]) * out_scale[j]
 * The sum of u8 * s8 products in int32 is what AVX-512 VNNI's vpdpbusd computes (hence the
 * +128: it wants one unsigned operand): with qw laid out (K/4, N, 4) (quant.c), one vpdpbusd
 * takes four codes of the row, broadcast, against four weights of 16 channels and adds to 16
 * int32 sums, so a row needs no horizontal sums. Rows are padded to KP (a multiple of 4) with
 * qx = 128 against qw = 0, so the padding adds nothing; channels to NP (a multiple of 16).
 * Other targets run the same sums as plain loops. A matmul site splits its rows among the
 * workers, a convolution its samples (each row's sums are one worker's, in the same order, so
 * the results do not depend on the thread count). */

/* The site's max |x| over every call so far into nn_calibration (QUANT_CALIBRATE). */
static void record_absmax(Lower *L, const Node *x, int site) {
  LLVMTypeRef f32 = L->elem; /* --quantize needs f32 */
  LLVMValueRef idx = i64c(L, 2 + site); /* floats past NnCalibration's int64_t `sites` */
  LLVMValueRef slot = LLVMBuildInBoundsGEP2(L->b, f32, L->calibration, &idx, 1, "absmax");
  LLVMValueRef best = entry_slot(L, f32, "best");
  LLVMBuildStore(L->b, LLVMBuildLoad2(L->b, f32, slot, ""), best);
  LLVMValueRef base = node_ptr(L, x);
  Loop i = loop_open(L, extent_value(L, elems_extent(x->shape)), "i");
  LLVMValueRef v = load_elem(L, elem_ptr(L, base, i.i));
  LLVMValueRef args[2] = {LLVMBuildLoad2(L->b, f32, best, ""), intrinsic(L, "llvm.fabs", &v, 1)};
  LLVMBuildStore(L->b, intrinsic(L, "llvm.maxnum", args, 2), best);
  loop_close(L, &i);
  LLVMBuildStore(L->b, LLVMBuildLoad2(L->b, f32, best, ""), slot);
}

/* row[0..count) = the u8 codes of src[0..count). */
static void quantize_row(Lower *L, LLVMValueRef row, LLVMValueRef src, int64_t count,
                         float inv_scale) {
  Loop k = loop_open(L, i64c(L, count), "q");
  LLVMValueRef v = LLVMBuildFMul(L->b, load_elem(L, elem_ptr(L, src, k.i)), elemc(L, inv_scale),
                                 "");
  v = intrinsic(L, "llvm.rint", &v, 1);
  LLVMValueRef lo[2] = {v, elemc(L, -127)};
  LLVMValueRef hi[2] = {intrinsic(L, "llvm.maxnum", lo, 2), elemc(L, 127)};
  v = LLVMBuildFPToSI(L->b, intrinsic(L, "llvm.minnum", hi, 2), L->i32, "");
  v = LLVMBuildTrunc(L->b, LLVMBuildAdd(L->b, v, LLVMConstInt(L->i32, 128, 0), ""), L->i8, "");
  LLVMBuildStore(L->b, v, LLVMBuildInBoundsGEP2(L->b, L->i8, row, &k.i, 1, ""));
  loop_close(L, &k);
}

/* row[from..to) = 128: the code of 0. */
static void zero_codes(Lower *L, LLVMValueRef row, int64_t from, int64_t to) {
  if (from >= to) return;
  LLVMValueRef at = i64c(L, from);
  LLVMBuildMemSet(L->b, LLVMBuildInBoundsGEP2(L->b, L->i8, row, &at, 1, ""),
                  LLVMConstInt(L->i8, 128, 0), i64c(L, to - from), 1);
}

/* The `ty` at base + idx elements of `step`. */
static LLVMValueRef load_at(Lower *L, LLVMTypeRef ty, LLVMTypeRef step, LLVMValueRef base,
                            LLVMValueRef idx) {
  return LLVMBuildLoad2(L->b, ty, LLVMBuildInBoundsGEP2(L->b, step, base, &idx, 1, ""), "");
}

typedef struct SiteConsts {
  LLVMValueRef qw, colsum, scale; /* (KP/4, NP, 4) int8, (NP) int32, (NP) f32 */
} SiteConsts;

/* out[0..N) from one row of codes, channel by channel (targets without VNNI). */
static void site_row_scalar(Lower *L, const QuantSite *s, const SiteConsts *c, LLVMValueRef row,
                            LLVMValueRef out) {
  Loop j = loop_open(L, i64c(L, s->n), "j");
  LLVMValueRef acc = entry_slot(L, L->i32, "acc");
  LLVMBuildStore(L->b, LLVMConstInt(L->i32, 0, 0), acc);
  Loop k = loop_open(L, i64c(L, s->kp), "k");
  LLVMValueRef k4 = LLVMBuildSDiv(L->b, k.i, i64c(L, 4), ""); /* qw[k/4, j, k%4] */
  LLVMValueRef wi = ix_add(L, ix_mul(L, ix_add(L, ix_mul(L, k4, s->np), j.i), 4),
                           LLVMBuildSRem(L->b, k.i, i64c(L, 4), ""));
  LLVMValueRef a = load_at(L, L->i8, L->i8, row, k.i), b = load_at(L, L->i8, L->i8, c->qw, wi);
  LLVMValueRef p = LLVMBuildNSWMul(L->b, LLVMBuildZExt(L->b, a, L->i32, ""),
                                   LLVMBuildSExt(L->b, b, L->i32, ""), "");
  LLVMBuildStore(L->b, LLVMBuildAdd(L->b, LLVMBuildLoad2(L->b, L->i32, acc, ""), p, ""), acc);
  loop_close(L, &k);
  LLVMValueRef cs = load_at(L, L->i32, L->i32, c->colsum, j.i);
  LLVMValueRef sum = LLVMBuildSub(L->b, LLVMBuildLoad2(L->b, L->i32, acc, ""),
                                  LLVMBuildShl(L->b, cs, LLVMConstInt(L->i32, 7, 0), ""), "");
  LLVMValueRef y = LLVMBuildFMul(L->b, LLVMBuildSIToFP(L->b, sum, L->elem, ""),
                                 load_elem(L, elem_ptr(L, c->scale, j.i)), "");
  LLVMBuildStore(L->b, y, elem_ptr(L, out, j.i));
  loop_close(L, &j);
}

enum {
  INT8_ROWS = 4,                /* rows (or output positions) of an int8 site's tile */
  INT8_IMAGE_BYTES = 16 << 10,  /* most codes of a sample's image a convolution site keeps (on
                                 * the stack, which an embedding program's threads may keep small) */
};

/* R rows of codes into their outputs, 16 channels a vpdpbusd (see above), in tiles of R rows
 * by NB blocks of 16 channels: per group of four codes, one broadcast of each row's and one
 * load of each block's weights feed R x NB vpdpbusd into as many sums. One row at a time,
 * each weight vector fed a single chain of sums: the loads of 400 KB of weights a row (the
 * CNN's dense layer), and vpdpbusd's latency, bound it. */
static void site_rows_vnni(Lower *L, const QuantSite *s, const SiteConsts *c,
                           const LLVMValueRef *rows, const LLVMValueRef *outs, int R) {
  LLVMTypeRef v16 = LLVMVectorType(L->i32, 16), f16 = LLVMVectorType(L->elem, 16);
  const char *name = "llvm.x86.avx512.vpdpbusd.512";
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  LLVMValueRef dpbusd = LLVMGetIntrinsicDeclaration(L->mod, id, NULL, 0);
  LLVMTypeRef dpbusd_type = LLVMIntrinsicGetType(L->ctx, id, NULL, 0);
  int64_t blocks = s->np / 16;
  int NB = blocks % 4 == 0 ? 4 : blocks % 2 == 0 ? 2 : 1;
  LLVMValueRef acc[INT8_ROWS][4], ys = entry_slot(L, f16, "ys");
  for (int r = 0; r < R; r++)
    for (int q = 0; q < NB; q++) acc[r][q] = entry_slot(L, v16, "vacc");
  Loop nb = loop_open(L, i64c(L, blocks / NB), "nb");
  for (int r = 0; r < R; r++)
    for (int q = 0; q < NB; q++) LLVMBuildStore(L->b, LLVMConstNull(v16), acc[r][q]);
  Loop k = loop_open(L, i64c(L, s->kp / 4), "k");
  LLVMValueRef w[4];
  for (int q = 0; q < NB; q++) {
    LLVMValueRef j = ix_add(L, ix_mul(L, nb.i, 16 * NB), i64c(L, 16 * q));
    w[q] = load_at(L, v16, L->i8, c->qw, ix_mul(L, ix_add(L, ix_mul(L, k.i, s->np), j), 4));
  }
  for (int r = 0; r < R; r++) {
    LLVMValueRef four = load_at(L, L->i32, L->i8, rows[r], ix_mul(L, k.i, 4)); /* 4 codes */
    LLVMSetAlignment(four, 1);
    LLVMValueRef splat = LLVMBuildShuffleVector(L->b,
        LLVMBuildInsertElement(L->b, LLVMGetUndef(v16), four, LLVMConstInt(L->i32, 0, 0), ""),
        LLVMGetUndef(v16), LLVMConstNull(v16), "");
    for (int q = 0; q < NB; q++) {
      LLVMValueRef args[3] = {LLVMBuildLoad2(L->b, v16, acc[r][q], ""), splat, w[q]};
      LLVMBuildStore(L->b, LLVMBuildCall2(L->b, dpbusd_type, dpbusd, args, 3, ""), acc[r][q]);
    }
  }
  loop_close(L, &k);
  LLVMValueRef sevens[16];
  for (int i = 0; i < 16; i++) sevens[i] = LLVMConstInt(L->i32, 7, 0);
  for (int q = 0; q < NB; q++) {
    LLVMValueRef j0 = ix_add(L, ix_mul(L, nb.i, 16 * NB), i64c(L, 16 * q));
    LLVMValueRef cs = LLVMBuildShl(L->b, load_at(L, v16, L->i32, c->colsum, j0),
                                   LLVMConstVector(sevens, 16), "");
    LLVMValueRef sc = LLVMBuildLoad2(L->b, f16, elem_ptr(L, c->scale, j0), "");
    /* the block's channels below N to each row's out (a copy loop that LLVM turns into
     * vector moves) */
    LLVMValueRef left = LLVMBuildSub(L->b, i64c(L, s->n), j0, "");
    LLVMValueRef lanes = LLVMBuildSelect(
        L->b, LLVMBuildICmp(L->b, LLVMIntSLT, left, i64c(L, 16), ""), left, i64c(L, 16), "");
    for (int r = 0; r < R; r++) {
      LLVMValueRef sum = LLVMBuildSub(L->b, LLVMBuildLoad2(L->b, v16, acc[r][q], ""), cs, "");
      LLVMBuildStore(L->b, LLVMBuildFMul(L->b, LLVMBuildSIToFP(L->b, sum, f16, ""), sc, ""), ys);
      Loop t = loop_open(L, lanes, "t");
      LLVMValueRef v = load_elem(L, elem_ptr(L, ys, t.i));
      LLVMBuildStore(L->b, v, elem_ptr(L, outs[r], ix_add(L, j0, t.i)));
      loop_close(L, &t);
    }
  }
  loop_close(L, &nb);
}

/* R rows of codes into their outputs: the VNNI tile, or row by row in plain loops. */
static void site_tile(Lower *L, const QuantSite *s, const SiteConsts *c, const LLVMValueRef *rows,
                      const LLVMValueRef *outs, int R) {
  if (L->vnni) {
    site_rows_vnni(L, s, c, rows, outs, R);
    return;
  }
  for (int r = 0; r < R; r++) site_row_scalar(L, s, c, rows[r], outs[r]);
}

/* The rows of a matmul site's x: every leading dim, batch included. */
static Extent site_rows(const Node *n, const QuantSite *s) {
  Extent rows = elems_extent(n->src[0]->shape);
  rows.n /= s->k;
  return rows;
}

/* Rows [lo, hi) of a matmul site's x (every leading dim, batch included, flattened), or
 * samples [lo, hi) of a convolution site's (lo NULL: all), in tiles of INT8_ROWS rows (output
 * positions), then the rows left over one by one. */
static void int8_site_range(Lower *L, const Node *n, const QuantSite *s, LLVMValueRef lo,
                            LLVMValueRef hi) {
  SiteConsts c = {
      .qw = bytes_const(L, s->qw, (size_t)(s->np * s->kp), "qw"),
      .colsum = bytes_const(L, s->colsum, sizeof *s->colsum * (size_t)s->np, "colsum"),
      .scale = bytes_const(L, s->out_scale, sizeof *s->out_scale * (size_t)s->np, "scale"),
  };
  LLVMValueRef rows[INT8_ROWS], outs[INT8_ROWS];
  for (int r = 0; r < INT8_ROWS; r++)
    rows[r] = entry_slot(L, LLVMArrayType2(L->i8, (uint64_t)s->kp), "codes");
  LLVMValueRef x = node_ptr(L, n->src[0]), y = node_ptr(L, n);
  if (n->op == OP_MATMUL) {
    for (int r = 0; r < INT8_ROWS; r++) zero_codes(L, rows[r], s->k, s->kp);
    if (!lo) lo = i64c(L, 0), hi = extent_value(L, site_rows(n, s));
    LLVMValueRef count = LLVMBuildSub(L->b, hi, lo, "");
    LLVMValueRef tiles = LLVMBuildSDiv(L->b, count, i64c(L, INT8_ROWS), "tiles");
    for (int pass = 0; pass < 2; pass++) { /* tiles, then the rows left over */
      int R = pass ? 1 : INT8_ROWS;
      LLVMValueRef first = pass ? ix_add(L, lo, ix_mul(L, tiles, INT8_ROWS)) : lo;
      Loop t = pass ? loop_range(L, first, hi, "m") : loop_open(L, tiles, "tile");
      LLVMValueRef m = pass ? t.i : ix_add(L, lo, ix_mul(L, t.i, INT8_ROWS));
      for (int r = 0; r < R; r++) {
        LLVMValueRef i = ix_add(L, m, i64c(L, r));
        quantize_row(L, rows[r], elem_ptr(L, x, ix_mul(L, i, s->k)), s->k, s->inv_x_scale);
        outs[r] = elem_ptr(L, y, ix_mul(L, i, s->n));
      }
      site_tile(L, s, &c, rows, outs, R);
      loop_close(L, &t);
    }
    return;
  }
  /* conv2d: one patch (taps in the padding stay 0) per output position p = oh * OW + ow, its
   * codes copied from the sample's image quantised once (each pixel is in up to kh x kw
   * patches: quantising it in each was 15% of the CNN's int8 conv2), or, for an image of more
   * than INT8_IMAGE_BYTES, quantised tap by tap */
  Win v = {.c = &n->attr.conv, .img = n->src[0]->shape, .out = n->shape, .lo = lo, .hi = hi};
  int64_t ch = v.img.dim[3], OW = v.out.dim[2], P = v.out.dim[1] * OW;
  int64_t pixels = v.img.dim[1] * v.img.dim[2];
  LLVMValueRef img = pixels * ch <= INT8_IMAGE_BYTES
                         ? entry_slot(L, LLVMArrayType2(L->i8, (uint64_t)(pixels * ch)), "qimg")
                         : NULL;
  v.b = lo ? loop_range(L, lo, hi, "b")
          : loop_open(L, extent_value(L, dim_extent(v.out.dim[0])), "b");
  LLVMValueRef zero = i64c(L, 0);
  if (img)
    quantize_row(L, img, elem_ptr(L, x, offset4(L, v.img, v.b.i, zero, zero)), pixels * ch,
                 s->inv_x_scale);
  for (int pass = 0; pass < 2; pass++) { /* tiles of positions, then those left over */
    int R = pass ? 1 : INT8_ROWS;
    Loop t = pass ? loop_range(L, i64c(L, P / INT8_ROWS * INT8_ROWS), i64c(L, P), "p")
                  : loop_open(L, i64c(L, P / INT8_ROWS), "tile");
    LLVMValueRef p0 = pass ? t.i : ix_mul(L, t.i, INT8_ROWS);
    for (int r = 0; r < R; r++) {
      LLVMValueRef p = ix_add(L, p0, i64c(L, r));
      v.oh.i = LLVMBuildSDiv(L->b, p, i64c(L, OW), "oh");
      v.ow.i = LLVMBuildSRem(L->b, p, i64c(L, OW), "ow");
      zero_codes(L, rows[r], 0, s->kp);
      taps_open(L, &v);
      LLVMValueRef at = ix_mul(L, ix_add(L, ix_mul(L, v.kh.i, v.c->kw), v.kw.i), ch);
      LLVMValueRef dst = LLVMBuildInBoundsGEP2(L->b, L->i8, rows[r], &at, 1, "");
      if (img) {
        LLVMValueRef from = ix_mul(L, ix_add(L, ix_mul(L, v.ih, v.img.dim[2]), v.iw), ch);
        LLVMBuildMemCpy(L->b, dst, 1, LLVMBuildInBoundsGEP2(L->b, L->i8, img, &from, 1, ""), 1,
                        i64c(L, ch));
      } else {
        quantize_row(L, dst, elem_ptr(L, x, offset4(L, v.img, v.b.i, v.ih, v.iw)), ch,
                     s->inv_x_scale);
      }
      taps_close(L, &v);
      outs[r] = elem_ptr(L, y, offset4(L, v.out, v.b.i, v.oh.i, v.ow.i));
    }
    site_tile(L, s, &c, rows, outs, R);
    loop_close(L, &t);
  }
  loop_close(L, &v.b);
}

typedef struct Int8Task {
  const Node *n;
  const QuantSite *s;
} Int8Task;

static void int8_task(Lower *L, LLVMValueRef lo, LLVMValueRef hi, const void *ctx) {
  const Int8Task *t = ctx;
  int8_site_range(L, t->n, t->s, lo, hi);
}

/* An int8 site, its rows (or samples) shared out to the workers when there are enough: the
 * work of a row counted as its 32-bit sums of four products (K/4 x N, a vpdpbusd lane each). */
static void lower_int8_site(Lower *L, const Node *n, const QuantSite *s) {
  Extent outer = n->op == OP_MATMUL ? site_rows(n, s) : dim_extent(n->src[0]->shape.dim[0]);
  int64_t per = s->kp / 4 * s->np;
  if (n->op != OP_MATMUL) per *= n->shape.dim[1] * n->shape.dim[2]; /* positions a sample */
  Int8Task t = {n, s};
  emit_split(L, outer, TASK_ELEMS / per > 1 ? TASK_ELEMS / per : 1, per, int8_task, &t);
}

/* Fills samples [v->lo, v->hi) of n (all when v->lo is NULL) with value x. */
static void fill_samples(Lower *L, const Win *v, const Node *n, double x) {
  if (!v->lo) {
    fill_node(L, n, elemc(L, x));
    return;
  }
  Extent per = {elems_extent(n->shape).n / dim_extent(n->shape.dim[0]).n, false};
  Nest t = {.depth = 2, .ext = {dim_extent(n->shape.dim[0]), per}, .lo0 = v->lo, .hi0 = v->hi};
  int k = nest_operand(&t, node_ptr(L, n));
  t.stride[k][0] = per.n, t.stride[k][1] = 1;
  LLVMValueRef off[MAX_OPERANDS] = {0};
  nest_level(L, &t, 0, off, fill_body, elemc(L, x));
}

/* y[B,OH,OW,C] = max or mean of x[B,H,W,C] over each window */
static void lower_pool(Lower *L, const Node *n, Win v) {
  const Node *xn = n->src[0];
  bool max = n->op == OP_MAXPOOL;
  int64_t C = n->shape.dim[3];
  LLVMValueRef y = node_ptr(L, n), x = node_ptr(L, xn);
  LLVMValueRef count = max ? NULL : entry_slot(L, L->i64, "taps");
  fill_samples(L, &v, n, max ? -INFINITY : 0.0);
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
static void lower_avgpool_bwd(Lower *L, const Node *n, Win v) {
  const Node *gn = n->src[0];
  int64_t C = n->shape.dim[3];
  LLVMValueRef dx = node_ptr(L, n), g = node_ptr(L, gn);
  LLVMValueRef count = entry_slot(L, L->i64, "taps");
  fill_samples(L, &v, n, 0);
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

/* Do the windows of c cover an image without overlapping (stride = window, no padding or
 * dilation), so that every pixel is in at most one window? */
static bool windows_apart(const ConvAttr *c) {
  return c->sh == c->kh && c->sw == c->kw && c->dh == 1 && c->dw == 1 &&
         !(c->pt | c->pl | c->pb | c->pr);
}

/* ... and tile an image of [H, W] exactly (sizes divisible), so every pixel is in one? */
static bool windows_tile(const ConvAttr *c, Shape img) {
  return windows_apart(c) && img.dim[1] % c->kh == 0 && img.dim[2] % c->kw == 0;
}

/* dx[B,H,W,C] = maxpool_bwd(x[B,H,W,C], g[B,OH,OW,C]): per channel, the taps in order; the
 * first one holding the window's maximum receives g (PyTorch's choice on ties). The running
 * maximum and its position are kept for all channels at once (channels innermost), so the
 * loops over channels vectorise. When the windows tile the image, each window writes all its
 * taps (g or 0), every pixel once, and dx needs no zeroing first; windows that do not overlap
 * but leave an odd last row or column (conv2's 11x11 under 2x2) write theirs the same way
 * after the zeroing. */
enum { UNROLLED_TAPS = 16 }; /* windows apart of at most this many taps: taps unrolled */

static void lower_maxpool_bwd(Lower *L, const Node *n, Win v) {
  const Node *xn = n->src[0], *gn = n->src[1];
  int64_t C = xn->shape.dim[3];
  LLVMValueRef dx = node_ptr(L, n), x = node_ptr(L, xn), g = node_ptr(L, gn);
  bool tile = windows_tile(v.c, xn->shape);
  int es = (int)L->gemm.es, w = L->gemm.w;
  if (windows_apart(v.c) && v.c->kh * v.c->kw <= UNROLLED_TAPS && w > 1 && w <= 16 &&
      C % w == 0) {
    /* vectors of channels, the taps unrolled: the running maximum and its tap are registers;
     * the pixels no window covers (the last row or column of an odd size) are zeroed first */
    int taps = v.c->kh * v.c->kw;
    if (!tile) fill_samples(L, &v, n, 0);
    LLVMTypeRef vt = LLVMVectorType(L->elem, (unsigned)w), i32 = LLVMInt32TypeInContext(L->ctx);
    LLVMTypeRef it = LLVMVectorType(i32, (unsigned)w);
    LLVMValueRef xo[UNROLLED_TAPS], tap_no[UNROLLED_TAPS], lanes[16];
    positions_open(L, &v);
    LLVMValueRef go = offset4(L, gn->shape, v.b.i, v.oh.i, v.ow.i);
    for (int t = 0; t < taps; t++) {
      LLVMValueRef ih = ix_add(L, ix_mul(L, v.oh.i, v.c->kh), i64c(L, t / v.c->kw));
      LLVMValueRef iw = ix_add(L, ix_mul(L, v.ow.i, v.c->kw), i64c(L, t % v.c->kw));
      xo[t] = offset4(L, xn->shape, v.b.i, ih, iw);
      for (int i = 0; i < w; i++) lanes[i] = LLVMConstInt(i32, (unsigned long long)t, 0);
      tap_no[t] = LLVMConstVector(lanes, (unsigned)w);
    }
    for (int i = 0; i < w; i++) lanes[i] = elemc(L, -INFINITY);
    LLVMValueRef ninf = LLVMConstVector(lanes, (unsigned)w);
    LLVMValueRef vzero = LLVMConstNull(vt);
    Loop cv = loop_open(L, i64c(L, C / w), "cv");
    LLVMValueRef c0 = ix_mul(L, cv.i, w);
    LLVMValueRef best = ninf, arg = LLVMConstAllOnes(it);
    for (int t = 0; t < taps; t++) {
      LLVMValueRef xv = LLVMBuildLoad2(L->b, vt, elem_ptr(L, x, ix_add(L, xo[t], c0)), "");
      LLVMSetAlignment(xv, (unsigned)es);
      LLVMValueRef more = LLVMBuildFCmp(L->b, LLVMRealOGT, xv, best, "");
      best = LLVMBuildSelect(L->b, more, xv, best, "");
      arg = LLVMBuildSelect(L->b, more, tap_no[t], arg, "");
    }
    LLVMValueRef gv = LLVMBuildLoad2(L->b, vt, elem_ptr(L, g, ix_add(L, go, c0)), "");
    LLVMSetAlignment(gv, (unsigned)es);
    LLVMValueRef hit_g = LLVMBuildFAdd(L->b, vzero, gv, ""); /* as the sum into zeros */
    for (int t = 0; t < taps; t++) {
      LLVMValueRef hit = LLVMBuildICmp(L->b, LLVMIntEQ, arg, tap_no[t], "");
      LLVMValueRef st = LLVMBuildStore(L->b, LLVMBuildSelect(L->b, hit, hit_g, vzero, ""),
                                       elem_ptr(L, dx, ix_add(L, xo[t], c0)));
      LLVMSetAlignment(st, (unsigned)es);
    }
    loop_close(L, &cv);
    positions_close(L, &v);
    return;
  }
  LLVMValueRef best = entry_slot(L, LLVMArrayType2(L->elem, (uint64_t)C), "best"); /* [C] */
  LLVMValueRef at = entry_slot(L, LLVMArrayType2(L->i64, (uint64_t)C), "argmax");  /* [C] */
  if (!tile) fill_samples(L, &v, n, 0);
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
  if (tile) { /* every tap: g where the maximum is (0 + g, as the sum into zeros gives), or 0 */
    taps_open(L, &v);
    xo = offset4(L, xn->shape, v.b.i, v.ih, v.iw);
    c = loop_open(L, i64c(L, C), "c");
    LLVMValueRef xc = ix_add(L, xo, c.i);
    LLVMValueRef a =
        LLVMBuildLoad2(L->b, L->i64, LLVMBuildInBoundsGEP2(L->b, L->i64, at, &c.i, 1, ""), "");
    LLVMValueRef gv = load_elem(L, elem_ptr(L, g, ix_add(L, go, c.i)));
    LLVMValueRef hit = LLVMBuildICmp(L->b, LLVMIntEQ, a, xc, "");
    LLVMValueRef d = LLVMBuildSelect(L->b, hit, LLVMBuildFAdd(L->b, elemc(L, 0), gv, ""),
                                     elemc(L, 0), "");
    LLVMBuildStore(L->b, d, elem_ptr(L, dx, xc));
    loop_close(L, &c);
    taps_close(L, &v);
    positions_close(L, &v);
    return;
  }
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

/* Pooling or its gradient over samples [lo, hi) (NULL: all). */
static void lower_pool_samples(Lower *L, const Node *n, LLVMValueRef lo, LLVMValueRef hi) {
  const Node *img = n->op == OP_MAXPOOL_BWD ? n->src[0] : n->op == OP_AVGPOOL_BWD ? n : n->src[0];
  const Node *out = n->op == OP_MAXPOOL_BWD ? n->src[1] : n->op == OP_AVGPOOL_BWD ? n->src[0] : n;
  Win v = {.c = &n->attr.conv, .img = img->shape, .out = out->shape, .lo = lo, .hi = hi};
  switch (n->op) {
  case OP_MAXPOOL: case OP_AVGPOOL: lower_pool(L, n, v); break;
  case OP_MAXPOOL_BWD: lower_maxpool_bwd(L, n, v); break;
  case OP_AVGPOOL_BWD: lower_avgpool_bwd(L, n, v); break;
  default: unreachable();
  }
}

static void pool_task(Lower *L, LLVMValueRef lo, LLVMValueRef hi, const void *ctx) {
  lower_pool_samples(L, ctx, lo, hi);
}

/* Pooling: split over the samples (each writes only its own) when the images are large. */
static void lower_pooling(Lower *L, const Node *n) {
  Shape img = n->op == OP_AVGPOOL_BWD ? n->shape : n->src[0]->shape;
  Extent all = elems_extent(img);
  int64_t per = all.n / dim_extent(img.dim[0]).n; /* elements of one sample */
  int64_t batch = L->u->batch > 1 ? L->u->batch : 1;
  if (!all.batch || all.n * batch < SPLIT_ELEMS) {
    lower_pool_samples(L, n, NULL, NULL);
    return;
  }
  int64_t rows = TASK_ELEMS / per > 1 ? TASK_ELEMS / per : 1;
  emit_split(L, dim_extent(img.dim[0]), rows, per, pool_task, n);
}

static void lower_window(Lower *L, const Node *n) {
  switch (n->op) {
  case OP_CONV2D: case OP_CONV2D_BWD_DATA: case OP_CONV2D_BWD_FILTER: lower_conv(L, n); break;
  case OP_MAXPOOL: case OP_AVGPOOL: case OP_MAXPOOL_BWD: case OP_AVGPOOL_BWD: lower_pooling(L, n); break;
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
  const Node *head;       /* an epilogue group's matmul or conv2d (not in the loop), or NULL */
  const bool *need;       /* by node id: the kernel needs it */
  int *index;             /* by node id: position in G->members */
  int *read;              /* by member position * 3 + operand: nest operand of a load, or -1 */
  int *store;             /* by member position: nest operand of its store, or -1 */
  LLVMValueRef *value;    /* by member position: its value in this iteration, once made */
  int64_t partial_rows;   /* emit_partial_split: rows of a task, each task reducing into its
                           * own partial (partial_elems, in scratch); 0: none */
  int64_t partial_elems;
  int partial_op;         /* the nest operand of the reduction's result */
  const Node *partial_of; /* the reduction */
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
  if (s->group == c->gi && s != c->head) return member_value(L, c, s, ptr);
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

/* A reduction's accumulator acc after adding v: acc + v (sum), or the larger (rmax). A sum
 * in any order may be reassociated: LLVM then adds vectors of terms, not one term at a time. */
static LLVMValueRef reduce_step(Lower *L, const Node *m, LLVMValueRef acc, LLVMValueRef v) {
  OpKind op = m->op;
  if (op == OP_SUM) {
    LLVMValueRef sum = LLVMBuildFAdd(L->b, acc, v, "");
    if (m->attr.any_order) LLVMSetFastMathFlags(sum, LLVMFastMathAllowReassoc);
    return sum;
  }
  if (op != OP_RMAX) unreachable();
  return LLVMBuildSelect(L->b, LLVMBuildFCmp(L->b, LLVMRealOGT, v, acc, ""), v, acc, "");
}

/* The identity a reduction starts from. */
static double reduce_identity(const Node *m) { return m->op == OP_SUM ? 0.0 : -INFINITY; }

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
    if (class_of(m) == CLASS_REDUCE)
      v = reduce_step(L, m, LLVMBuildLoad2(L->b, L->elem, p, ""), v);
    LLVMBuildStore(L->b, v, p);
  }
}

/* The nest of c's group over its operands, whose pointers are made in the function being
 * emitted (in a split nest's own function too, where they are region + constant offset as in
 * the kernel, so LLVM can still tell the operands apart and vectorise). */
static Nest group_nest(Lower *L, LoopCtx *c) {
  const Group *G = c->G;
  int nm = G->n_members;
  for (int i = 0; i < nm; i++) c->store[i] = -1;
  for (int i = 0; i < nm * 3; i++) c->read[i] = -1;
  Nest t = nest_over(G->loop);
  for (int i = 0; i < nm; i++) {
    const Node *m = G->members[i];
    if (!c->need[m->id] || m == c->head) continue;
    if (class_of(m) == CLASS_REDUCE) { /* accumulates in the loop */
      c->store[i] = nest_operand(&t, node_ptr(L, m));
      t.accum[c->store[i]] = true;
      loop_strides(m->shape, m->src[0]->shape, false, G, t.stride[c->store[i]]);
    } else if (m->stored) {
      c->store[i] = nest_operand(&t, node_ptr(L, m));
      loop_strides(m->shape, m->shape, false, G, t.stride[c->store[i]]);
    }
    for (int k = 0; k < op_info[m->op].arity; k++) {
      const Node *s = m->src[k];
      if (class_of(s) == CLASS_SCALAR || (s->group == c->gi && s != c->head)) continue;
      int op = c->read[i * 3 + k] = nest_operand(&t, node_ptr(L, s));
      Shape seen = class_of(m) == CLASS_REDUCE ? s->shape : m->shape;
      loop_strides(s->shape, seen, m->op == OP_RESHAPE, G, t.stride[op]);
    }
  }
  return t;
}

/* A task of a split loop group: its nest, loop 0 over [lo, hi). */
static void group_task(Lower *L, LLVMValueRef lo, LLVMValueRef hi, const void *ctx) {
  LoopCtx *c = (LoopCtx *)ctx;
  Nest t = group_nest(L, c);
  if (c->partial_rows) { /* the reduction goes into this task's partial, from its identity */
    LLVMValueRef task = LLVMBuildSDiv(L->b, lo, i64c(L, c->partial_rows), "");
    LLVMValueRef part = elem_ptr(L, L->region[NN_IO_SCRATCH], ix_mul(L, task, c->partial_elems));
    Loop z = loop_open(L, i64c(L, c->partial_elems), "zero");
    LLVMBuildStore(L->b, elemc(L, reduce_identity(c->partial_of)), elem_ptr(L, part, z.i));
    loop_close(L, &z);
    t.base[c->partial_op] = part;
  }
  nest_simplify(&t);
  t.lo0 = lo, t.hi0 = hi;
  LLVMValueRef off[MAX_OPERANDS] = {0};
  nest_level(L, &t, 0, off, loop_body, c);
}

/* The context of group gi's loop (for an epilogue group, the loop after its head). */
static LoopCtx loop_ctx(Lower *L, int gi, const bool *need) {
  const Group *G = &L->g->groups[gi];
  int nm = G->n_members;
  LoopCtx c = {.G = G, .gi = gi, .need = need};
  if (G->kind == GROUP_EPILOGUE) c.head = G->members[0];
  c.index = xalloc(sizeof *c.index * ((size_t)L->g->n_nodes + 1));
  c.read = xalloc(sizeof *c.read * (size_t)nm * 3);
  c.store = xalloc(sizeof *c.store * (size_t)nm);
  c.value = xalloc(sizeof *c.value * (size_t)nm);
  for (int i = 0; i < nm; i++) c.index[G->members[i]->id] = i;
  return c;
}

/* A loop group whose reduction sums over the outer loop (a bias gradient: over the batch),
 * split across the threads (emit_nest_split splits only reductions whose result moves along
 * the outer loop). The rows are cut into at most MAX_PARTIALS tasks, a number that depends on
 * the batch alone; each task reduces its rows into its own partial in scratch (task k at
 * element k * result size of io's scratch: nothing else uses it meanwhile), and then the
 * kernel adds the partials into the result in task order. So the order of the additions is
 * fixed by the batch: the same bits at any thread count (though not the bits of one serial
 * loop). Returns false, emitting nothing, where that does not apply. */
static bool emit_partial_split(Lower *L, Nest t, LoopCtx *c) {
  nest_simplify(&t);
  if (t.depth == 0) return false;
  int k = -1;
  for (int j = 0; j < t.n_ops; j++)
    if (t.accum[j]) {
      if (t.stride[j][0] != 0 || k >= 0) return false;
      k = j;
    }
  if (k < 0) return false;
  const Node *r = NULL;
  for (int i = 0; i < c->G->n_members; i++)
    if (c->store[i] == k) r = c->G->members[i];
  Extent re = elems_extent(r->shape);
  if (re.batch || re.n * MAX_PARTIALS > PARTIAL_ELEMS) return false;
  int64_t inner = 1;
  for (int d = 1; d < t.depth; d++) inner *= t.ext[d].n;
  int64_t batch = L->u->batch > 1 ? L->u->batch : 1;
  int64_t count = t.ext[0].n * (t.ext[0].batch ? batch : 1); /* rows at the largest batch */
  if (count * inner < SPLIT_ELEMS) return false;
  int64_t rows = TASK_ELEMS / inner > 1 ? TASK_ELEMS / inner : 1;
  if ((count + rows - 1) / rows > MAX_PARTIALS) rows = (count + MAX_PARTIALS - 1) / MAX_PARTIALS;
  if (re.n * MAX_PARTIALS > L->gemm.scratch_elems) L->gemm.scratch_elems = re.n * MAX_PARTIALS;
  c->partial_rows = rows, c->partial_elems = re.n, c->partial_op = k, c->partial_of = r;
  emit_split(L, t.ext[0], rows, inner, group_task, c);
  c->partial_rows = 0;
  /* the result holds the identity (lower_loop_group): add the partials, in task order */
  LLVMValueRef tasks = cdiv_i64(L, extent_value(L, t.ext[0]), rows), res = node_ptr(L, r);
  Loop p = loop_open(L, tasks, "part");
  LLVMValueRef part = elem_ptr(L, L->region[NN_IO_SCRATCH], ix_mul(L, p.i, re.n));
  Loop e = loop_open(L, i64c(L, re.n), "e");
  LLVMValueRef d = elem_ptr(L, res, e.i);
  LLVMBuildStore(L->b, reduce_step(L, r, load_elem(L, d), load_elem(L, elem_ptr(L, part, e.i))),
                 d);
  loop_close(L, &e);
  loop_close(L, &p);
  return true;
}

static void lower_loop_group(Lower *L, int gi, const bool *need) {
  const Group *G = &L->g->groups[gi];
  int nm = G->n_members;
  LoopCtx c = loop_ctx(L, gi, need);
  set_tag(L, "g", gi);
  for (int i = 0; i < nm; i++) /* a reduction starts from its identity */
    if (need[G->members[i]->id] && class_of(G->members[i]) == CLASS_REDUCE &&
        G->members[i] != c.head)
      fill_node(L, G->members[i], elemc(L, reduce_identity(G->members[i])));
  Nest t = group_nest(L, &c);
  if (emit_partial_split(L, t, &c)) return;
  if (!emit_nest_split(L, t, group_task, &c)) emit_nest(L, t, loop_body, &c);
}

/* ---- epilogues ----
 * An epilogue group (fuse.c) is a matmul or conv2d and the elementwise loop over its result C.
 * The loop becomes a side function nn_grad.eN(job, r0, r1, c0, c1) over rows [r0, r1) and
 * columns [c0, c1) of C seen as a matrix (every dim but the last flattened into rows; fuse.c
 * takes only operands that walk C that way), which the GEMM calls on each block of C it
 * finishes (lower_gemm.c). Every element is computed by the same formulas as in the loop, so
 * the results are the bits of the unfused code. */

static void lower_site_or_node(Lower *L, const Node *n);

/* The epilogue function of loop context c (the group's operands walk C's dims). */
static LLVMValueRef emit_epilogue_fn(Lower *L, LoopCtx *c) {
  LLVMValueRef fn = side_fn_new(L, L->gemm.epilogue_type);
  SideFn side = side_fn_enter(L, fn);
  LLVMValueRef r0 = LLVMGetParam(fn, 1), r1 = LLVMGetParam(fn, 2);
  LLVMValueRef c0 = LLVMGetParam(fn, 3), c1 = LLVMGetParam(fn, 4);
  Nest t = group_nest(L, c);
  int last = t.depth - 1;
  Loop row = loop_range(L, r0, r1, "row");
  Nest cols = {.depth = 1, .ext = {t.ext[last]}, .n_ops = t.n_ops, .lo0 = c0, .hi0 = c1};
  for (int k = 0; k < t.n_ops; k++) {
    for (int d = 0; d + 2 < t.depth; d++) /* the rows flatten: fuse.c saw to it */
      if (t.stride[k][d] != t.stride[k][d + 1] * t.ext[d + 1].n) unreachable();
    cols.stride[k][0] = t.stride[k][last];
    LLVMValueRef off = ix_mul(L, row.i, t.stride[k][last - 1]);
    cols.base[k] = t.base[k] ? elem_ptr(L, t.base[k], off) : NULL;
  }
  LLVMValueRef off[MAX_OPERANDS] = {0};
  nest_level(L, &cols, 0, off, loop_body, c);
  loop_close(L, &row);
  LLVMBuildRetVoid(L->b);
  side_fn_leave(L, &side);
  return fn;
}

/* A matmul or conv2d with its epilogue; or the two one after the other where the GEMM cannot
 * take it: in a group function, at an int8 site, or a matmul of several GEMMs. */
static void lower_epilogue_group(Lower *L, int gi, const bool *need) {
  const Group *G = &L->g->groups[gi];
  const Node *n = G->members[0];
  bool loop = false;
  for (int i = 1; i < G->n_members; i++) loop |= need[G->members[i]->id];
  bool apart = L->apart || (L->quant_on && quant_site(L->quant, n)) ||
               (n->op == OP_MATMUL && !matmul_one_gemm(n));
  if (!loop || apart) {
    lower_site_or_node(L, n);
    if (loop) lower_loop_group(L, gi, need);
    return;
  }
  LoopCtx c = loop_ctx(L, gi, need);
  set_tag(L, "e", gi);
  LLVMValueRef fn = emit_epilogue_fn(L, &c);
  L->epilogue = (GemmEpilogue){fn, side_job(L, i64c(L, 0))};
  lower_site_or_node(L, n);
  L->epilogue = (GemmEpilogue){0};
}

/* A convolution's hook (lower_gemm.h ConvHook) that runs pooling or pooling gradient d on
 * sample s: a side function in which d's operands, and d itself unless `to_dst` (then it is
 * written at the hook's dst), are sample s taken as the batch's first. */
static ConvHook sample_hook(Lower *L, int gi, const Node *d, bool to_dst) {
  set_tag(L, "p", gi);
  LLVMValueRef fn = side_fn_new(L, L->gemm.sample_type);
  SideFn side = side_fn_enter(L, fn);
  LLVMValueRef s = LLVMGetParam(fn, 1);
  for (int k = -1; k < op_info[d->op].arity; k++) {
    const Node *x = k < 0 ? d : d->src[k];
    int64_t per = elems_extent(x->shape).n / dim_extent(x->shape.dim[0]).n;
    LLVMValueRef base = node_ptr(L, x);
    L->at[x->id] = k < 0 && to_dst ? LLVMGetParam(fn, 2) : elem_ptr(L, base, ix_mul(L, s, per));
  }
  lower_pool_samples(L, d, i64c(L, 0), i64c(L, 1));
  LLVMBuildRetVoid(L->b);
  side_fn_leave(L, &side);
  return (ConvHook){fn, side_job(L, i64c(L, 0))};
}

/* Can the convolution n run a hook? Not in a group function (the hook would need its own
 * places), nor at an int8 site. */
static bool takes_hook(Lower *L, const Node *n) {
  return !L->apart && !(L->quant_on && quant_site(L->quant, n));
}

/* A filter gradient with its prologue (fuse.c): the convolution makes each sample's pooling
 * gradient in its scratch; where it cannot, the two one after the other. */
static void lower_prologue_group(Lower *L, int gi) {
  const Group *G = &L->g->groups[gi];
  const Node *n = G->members[0], *d = G->members[1];
  if (!takes_hook(L, n)) {
    lower_site_or_node(L, d);
    lower_site_or_node(L, n);
    return;
  }
  L->conv_hook = sample_hook(L, gi, d, true);
  lower_site_or_node(L, n);
  L->conv_hook = (ConvHook){0};
}

static void lower_node(Lower *L, const Node *n) {
  if (class_of(n) != CLASS_SCALAR && (n->io < 0 || n->io >= NN_IO_COUNT))
    diag_internal(__FILE__, __LINE__, "node %%%d (%s) has no planned region", n->id,
                  op_info[n->op].text);
  set_tag(L, "n", n->id);
  switch (class_of(n)) {
  case CLASS_LEAF: break; /* the data is already at io/offset */
  case CLASS_SCALAR: L->val[n->id] = lower_scalar(L, n); break;
  case CLASS_ELEM: case CLASS_REDUCE: unreachable(); /* always in a loop group */
  case CLASS_MOVE: lower_move(L, n); break;
  case CLASS_CONTRACT: lower_matmul(L, n); break;
  case CLASS_WINDOW: lower_window(L, n); break;
  }
}

/* lower_node, or an int8 site, or a site that records its input's range first. */
static void lower_site_or_node(Lower *L, const Node *n) {
  const QuantSite *s = L->quant_on ? quant_site(L->quant, n) : NULL;
  if (s && L->quant->mode == QUANT_INT8) {
    snprintf(L->tag, sizeof L->tag, "n%d", n->id);
    lower_int8_site(L, n, s);
    return;
  }
  if (s && L->quant->mode == QUANT_CALIBRATE) {
    snprintf(L->tag, sizeof L->tag, "n%d", n->id);
    record_absmax(L, n->src[0], (int)(s - L->quant->sites));
  }
  lower_node(L, n);
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

/* The regions that lowering n reads besides its operands' and its own memory, as a bit set. */
static unsigned regions_read(const Node *n) {
  if (n->op == OP_RAND_UNIFORM || n->op == OP_RAND_NORMAL || n->op == OP_HYPER)
    return 1u << NN_IO_HYPER; /* hyperparameters; random ops read seed and step */
  if (class_of(n) == CLASS_CONTRACT || n->op == OP_CONV2D || n->op == OP_CONV2D_BWD_DATA ||
      n->op == OP_CONV2D_BWD_FILTER) /* GEMMs take threads and scratch */
    return (1u << NN_IO_THREADS) | (1u << NN_IO_SCRATCH);
  return 0;
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
    regions |= regions_read(n);
    if (class_of(n) != CLASS_SCALAR && n->io >= 0 && n->io < NN_IO_COUNT)
      regions |= 1u << n->io;
  }
  return regions;
}

/* A large graph (an unrolled recurrence has thousands of nodes) is lowered as a chain of
 * outlined parts of about PART_NODES nodes (whole loop groups) each, called in order by the
 * kernel: LLVM's optimiser is superlinear in the size of one function, and linear over many
 * small ones. Parts talk through memory, as the nodes of one function already do. Within a
 * part each group is a function of its own (lower_group_apart), shared by every group that
 * lowers to the same code: the steps of an unrolled recurrence differ only in where their
 * tensors live, so a T-step scan costs LLVM one step's code plus T steps of calls. */
enum { PART_NODES = 64, PART_ABOVE = 256 /* needed nodes before a kernel is split */ };

/* Loads the base pointers of the kernel's regions from io. */
static void bind_regions(Lower *L, LLVMValueRef io) {
  memset(L->region, 0, sizeof L->region);
  for (int r = 0; r < NN_IO_COUNT; r++) {
    if (!(L->regions & (1u << r))) continue;
    LLVMValueRef idx = i64c(L, r);
    LLVMValueRef slot = r ? LLVMBuildInBoundsGEP2(L->b, L->ptr, io, &idx, 1, "") : io;
    L->region[r] = LLVMBuildLoad2(L->b, L->ptr, slot, region_name[r]);
  }
}

/* Starts emitting into fn (io, batch): its entry block, and the regions' base pointers. */
static void begin_fn(Lower *L, LLVMValueRef fn, unsigned regions) {
  L->fn = fn;
  LLVMPositionBuilderAtEnd(L->b, LLVMAppendBasicBlockInContext(L->ctx, fn, "entry"));
  L->batch = LLVMGetParam(fn, 1);
  L->regions = regions;
  bind_regions(L, LLVMGetParam(fn, 0));
}

/* Values made in one function are not visible in another: forget the node pointers and
 * make the needed scalars in the function being emitted. */
static void rebind_scalars(Lower *L, const Graph *g, const bool *need) {
  memset(L->at, 0, sizeof *L->at * ((size_t)g->n_nodes + 1));
  for (int i = 0; i < g->n_nodes; i++)
    if (need[i] && class_of(g->nodes[i]) == CLASS_SCALAR) lower_node(L, g->nodes[i]);
}

static void lower_group(Lower *L, int gi, const bool *need) {
  const Group *G = &L->g->groups[gi];
  /* a conv2d's pooling (fuse.c take_pools): run by the convolution sample by sample, or
   * after it */
  const Node *pool = G->pooled && need[G->pooled->id] ? G->pooled : NULL;
  bool hooked = pool && takes_hook(L, G->members[0]);
  if (hooked) L->conv_hook = sample_hook(L, gi, pool, false);
  if (G->kind == GROUP_LOOP) lower_loop_group(L, gi, need);
  else if (G->kind == GROUP_EPILOGUE) lower_epilogue_group(L, gi, need);
  else if (G->kind == GROUP_PROLOGUE) lower_prologue_group(L, gi);
  else lower_site_or_node(L, G->members[0]);
  L->conv_hook = (ConvHook){0};
  if (pool && !hooked) lower_site_or_node(L, pool);
}

/* A group function, found again by its text: the number of tensors it takes, then its
 * blocks. (Printing a block numbers one function's values; printing a function would visit
 * the whole module each time.) */
typedef struct GroupFn {
  uint64_t hash;
  const char *text;
  LLVMValueRef fn;
} GroupFn;

static uint64_t text_hash(const char *s) { /* FNV-1a */
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

/* The function already made with fn's code, after which fn is deleted; else fn, remembered.
 * The text starts with fn's type and which parameters are noalias, then its blocks. */
static LLVMValueRef same_group_fn(Lower *L, LLVMValueRef fn) {
  if (!L->text_cap) L->text = xalloc(L->text_cap = 4096);
  char *text = L->text; /* reused: most texts are of copies; a new one is kept with xstrdup */
  char *type = LLVMPrintTypeToString(LLVMGlobalGetValueType(fn));
  size_t len = (size_t)snprintf(text, L->text_cap, "%.*s\n", (int)(L->text_cap / 2), type);
  LLVMDisposeMessage(type);
  unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
  for (unsigned k = 0; k < LLVMCountParams(fn) && len + 2 < L->text_cap; k++)
    text[len++] = LLVMGetEnumAttributeAtIndex(fn, k + 1, noalias) ? 'a' : '-';
  text[len] = 0;
  for (LLVMBasicBlockRef bb = LLVMGetFirstBasicBlock(fn); bb; bb = LLVMGetNextBasicBlock(bb)) {
    char *block = LLVMPrintValueToString(LLVMBasicBlockAsValue(bb));
    size_t n = strlen(block);
    if (len + n + 1 > L->text_cap) {
      while (len + n + 1 > L->text_cap) L->text_cap *= 2;
      L->text = xalloc(L->text_cap);
      memcpy(L->text, text, len);
      text = L->text;
    }
    memcpy(text + len, block, n + 1);
    len += n;
    LLVMDisposeMessage(block);
  }
  uint64_t h = text_hash(text);
  for (int i = 0; i < L->n_group_fns; i++)
    if (L->group_fns[i].hash == h && !strcmp(L->group_fns[i].text, text)) {
      LLVMDeleteFunction(fn);
      return L->group_fns[i].fn;
    }
  if ((L->n_group_fns & (L->n_group_fns - 1)) == 0) { /* 0, 1, 2, 4, ...: grow by doubling */
    GroupFn *more = xalloc(sizeof *more * (size_t)(L->n_group_fns ? 2 * L->n_group_fns : 1));
    if (L->n_group_fns) memcpy(more, L->group_fns, sizeof *more * (size_t)L->n_group_fns);
    L->group_fns = more;
  }
  L->group_fns[L->n_group_fns++] = (GroupFn){h, xstrdup(text), fn};
  return fn;
}

/* Marks fn's parameters first.. first + n - 1 noalias where noalias[k]. */
static void add_noalias(Lower *L, LLVMValueRef fn, unsigned first, const bool *noalias, int n) {
  unsigned kind = LLVMGetEnumAttributeKindForName("noalias", 7);
  for (int k = 0; k < n; k++)
    if (noalias[k])
      LLVMAddAttributeAtIndex(fn, first + (unsigned)k + 1,
                              LLVMCreateEnumAttribute(L->ctx, kind, 0));
}

/* The memory places of a group function's tensors: param[j] is the parameter that carries
 * tensor j, and a parameter is noalias when its place overlaps no other's. Tensors whose
 * memory overlaps (an update in place of the value it reads, a reshape sharing its operand's
 * memory) share one place when they start at the same element, and so one pointer; where
 * overlapping tensors start apart, each keeps its own pointer and none of them is noalias.
 * Ranges are those of the largest batch, as plan.c placed them. Returns the parameters. */
static int places_apart(Lower *L, const Node *const *touch, int nt, int *param, bool *noalias) {
  int *cluster = xalloc(sizeof *cluster * (size_t)(nt + 1));
  for (int j = 0; j < nt; j++) cluster[j] = j;
  for (int j = 0; j < nt; j++) /* cluster[j]: the first tensor of j's overlapping cluster */
    for (int i = 0; i < j; i++) {
      const Node *a = touch[i], *b = touch[j];
      int64_t ea = shape_elems(a->shape, L->u->batch), eb = shape_elems(b->shape, L->u->batch);
      if (a->io != b->io || a->offset + ea <= b->offset || b->offset + eb <= a->offset) continue;
      int from = cluster[j], to = cluster[i] < from ? cluster[i] : from;
      int other = cluster[i] + from - to;
      for (int k = 0; k <= j; k++)
        if (cluster[k] == other) cluster[k] = to;
    }
  int np = 0;
  for (int j = 0; j < nt; j++) {
    bool one_start = true, alone = true;
    for (int k = 0; k < nt; k++)
      if (k != j && cluster[k] == cluster[j]) {
        alone = false;
        one_start &= touch[k]->offset == touch[j]->offset;
      }
    int first = cluster[j];
    if (one_start && first < j) { /* shares the first tensor's pointer */
      param[j] = param[first];
      continue;
    }
    noalias[np] = one_start || alone;
    param[j] = np++;
  }
  return np;
}

/* Lowers group gi as a call of fn(io, batch, place...): one pointer per memory place of the
 * tensors the group reads or writes (places_apart), made here, so that the function holds
 * only what the group computes (shapes, strides, op formulas) and is the same function for
 * every group alike; noalias where places do not overlap, so that LLVM can vectorise. */
static void lower_group_apart(Lower *L, int gi, const bool *need) {
  const Group *G = &L->g->groups[gi];
  const Node **touch = xalloc(sizeof *touch * (size_t)(G->n_members + 1) * 4);
  const Node **scalars = xalloc(sizeof *scalars * (size_t)(G->n_members + 1) * 4);
  int nt = 0, ns = 0;
  unsigned regions = 0;
  for (int i = 0; i < G->n_members + !!G->pooled; i++) { /* the members, the pooling */
    const Node *m = i < G->n_members ? G->members[i] : G->pooled;
    if (!need[m->id]) continue;
    regions |= regions_read(m);
    for (int k = -1; k < op_info[m->op].arity; k++) { /* m itself, then its operands */
      const Node *x = k < 0 ? m : m->src[k];
      if (class_of(x) == CLASS_SCALAR) {
        regions |= regions_read(x);
        scalars[ns++] = x;
      } else if (x->io >= 0 && x->io < NN_IO_COUNT) {
        bool seen = false;
        for (int j = 0; j < nt; j++) seen |= touch[j] == x;
        if (!seen) touch[nt++] = x;
      }
    }
  }
  /* for a split loop (emit_split_apart), and its partials (emit_partial_split) */
  regions |= 1u << NN_IO_THREADS | 1u << NN_IO_SCRATCH;
  int *param = xalloc(sizeof *param * (size_t)(nt + 1));
  bool *noalias = xalloc(sizeof *noalias * (size_t)(nt + 1));
  int np = places_apart(L, touch, nt, param, noalias);
  Places places = {touch, nt, param, np, noalias, scalars, ns};
  LLVMTypeRef *params = xalloc(sizeof *params * (size_t)(np + 2));
  params[0] = L->ptr, params[1] = L->i64;
  for (int j = 0; j < np; j++) params[j + 2] = L->ptr;
  LLVMValueRef *args = xalloc(sizeof *args * (size_t)(np + 2));
  args[0] = LLVMGetParam(L->fn, 0), args[1] = L->batch;
  for (int j = 0; j < nt; j++) args[param[j] + 2] = node_ptr(L, touch[j]);
  LLVMTypeRef fty = LLVMFunctionType(L->vd, params, (unsigned)np + 2, 0);
  LLVMValueRef fn = internal_fn(L, "nn.group", fty, true);
  add_noalias(L, fn, 2, noalias, np);

  /* the caller's state, while the builder is in fn */
  LLVMBasicBlockRef caller_block = LLVMGetInsertBlock(L->b);
  LLVMValueRef caller_fn = L->fn, caller_batch = L->batch, caller_region[NN_IO_COUNT];
  memcpy(caller_region, L->region, sizeof caller_region);
  LLVMValueRef *caller_at = xalloc(sizeof *caller_at * (size_t)nt);
  LLVMValueRef *caller_val = xalloc(sizeof *caller_val * (size_t)(ns + 1));
  begin_fn(L, fn, regions);
  L->apart = true, L->places = &places;
  for (int j = 0; j < nt; j++) caller_at[j] = L->at[touch[j]->id];
  for (int j = 0; j < nt; j++) L->at[touch[j]->id] = LLVMGetParam(fn, (unsigned)param[j] + 2);
  for (int j = 0; j < ns; j++) caller_val[j] = L->val[scalars[j]->id];
  for (int j = 0; j < ns; j++) L->val[scalars[j]->id] = lower_scalar(L, scalars[j]);
  lower_group(L, gi, need);
  LLVMBuildRetVoid(L->b);
  for (int j = ns - 1; j >= 0; j--) L->val[scalars[j]->id] = caller_val[j];
  for (int j = nt - 1; j >= 0; j--) L->at[touch[j]->id] = caller_at[j];
  L->apart = false, L->places = NULL;
  L->fn = caller_fn, L->batch = caller_batch;
  memcpy(L->region, caller_region, sizeof caller_region);
  LLVMPositionBuilderAtEnd(L->b, caller_block);

  fn = same_group_fn(L, fn);
  LLVMBuildCall2(L->b, fty, fn, args, (unsigned)np + 2, "");
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
  unsigned regions = mark_needed(g, io_mask, need) | 1u << NN_IO_THREADS | /* for split nests */
                     1u << NN_IO_SCRATCH;                               /* and their partials */
  begin_fn(L, kernel, regions);
  L->need = need;
  L->split_val = xalloc(sizeof *L->split_val * ((size_t)g->n_nodes + 1));
  L->split_at = xalloc(sizeof *L->split_at * ((size_t)g->n_nodes + 1));
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
      LLVMValueRef part = internal_fn(L, part_name, fty, true);
      LLVMPositionBuilderAtEnd(L->b, kernel_block);
      LLVMValueRef args[2] = {LLVMGetParam(kernel, 0), LLVMGetParam(kernel, 1)};
      LLVMBuildCall2(L->b, fty, part, args, 2, "");
      begin_fn(L, part, regions);
      rebind_scalars(L, g, need);
      count = 0;
    }
    if (parts) lower_group_apart(L, gi, need);
    else lower_group(L, gi, need);
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
  const Unit *u = L->u;
  int n = 3 + 2 * u->n_steps;
  const Graph **gs = xalloc((size_t)n * sizeof *gs);
  gs[0] = u->train, gs[1] = u->update, gs[2] = u->infer;
  for (int k = 0; k < u->n_steps; k++) gs[3 + 2 * k] = u->steps[k].train, gs[4 + 2 * k] = u->steps[k].update;
  for (int i = 0; i < n; i++) {
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
  PUT_I64(&f, NnDataSource, stride, d->stride);
  return private_const(L, struct_of(L, &f, &L->source_type, "NnDataSource", sizeof(NnDataSource)),
                       "data_source");
}

/* The steps' table (NnStep); step_kernel holds each one's grad and update. */
static LLVMValueRef step_table(Lower *L, LLVMValueRef *step_kernel) {
  const Unit *u = L->u;
  if (u->n_steps == 0) return LLVMConstNull(L->ptr);
  LLVMTypeRef info = NULL;
  LLVMValueRef *rows = xalloc(sizeof *rows * (size_t)u->n_steps);
  for (int k = 0; k < u->n_steps; k++) {
    Fields f = {0};
    PUT_PTR(&f, NnStep, name, cstring(L, u->steps[k].name));
    PUT_PTR(&f, NnStep, grad, step_kernel[2 * k]);
    PUT_PTR(&f, NnStep, update, step_kernel[2 * k + 1]);
    PUT_I64(&f, NnStep, updated, u->steps[k].updated);
    rows[k] = struct_of(L, &f, &info, "NnStep", sizeof(NnStep));
  }
  return private_const(L, LLVMConstArray2(info, rows, (uint64_t)u->n_steps), "steps");
}

static LLVMValueRef emit_model_desc(Lower *L, LLVMValueRef kernel[4], LLVMValueRef *step_kernel) {
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
  PUT_I64(&f, NnModelDesc, n_steps, u->n_steps);
  PUT_PTR(&f, NnModelDesc, steps, step_table(L, step_kernel));
  PUT_I64(&f, NnModelDesc, out_rank, u->out_shape.rank);
  put(&f, offsetof(NnModelDesc, out_dims), LLVMArrayType2(L->i64, NN_MAX_RANK),
      dims_array(L, u->out_shape), 8 * NN_MAX_RANK);
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
  e->worker_scratch_bytes = L->scratch_bytes;
  LLVMValueRef weights = LLVMConstNull(L->ptr);
  if (e->weights && L->u->param_size > 0 && !L->quant) { /* int8: the kernels' own constants */
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
  PUT_I64(&f, NnEmbedDesc, quantized, L->quant != NULL);
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
                           int *regs, bool *vnni) {
  bool arm = !strncmp(triple, "aarch64", 7) || !strncmp(triple, "arm64", 5);
  *bits = 128, *regs = arm ? 32 : 16, *vnni = false;
  if (arm) return;
  bool has512 = features ? strstr(features, "+avx512f") != NULL : listed(avx512_cpus, cpu);
  *vnni = has512 && (features ? strstr(features, "+avx512vnni") != NULL
                              : listed(avx512_cpus, cpu) && strcmp(cpu, "x86-64-v4") &&
                                    strcmp(cpu, "skylake-avx512") && strcmp(cpu, "knl") &&
                                    strcmp(cpu, "knm") && strcmp(cpu, "cannonlake"));
  bool has256 = features ? strstr(features, "+avx,") || strstr(features, "+avx2")
                         : listed(avx2_cpus, cpu);
  if (has512) *bits = 512, *regs = 32;
  else if (has256) *bits = 256;
}

/* LLVM's own options, set once per process (LLVM parses its command line only once).
 * -force-ordered-reductions: the loop vectoriser vectorises a float reduction that may not
 * be reassociated (a softmax's sum of exponentials, a row sum) by adding the lanes to the
 * sum in order, so its result is the same bits as the scalar loop's. */
static void llvm_options(void) {
  static bool done;
  if (done) return;
  done = true;
  const char *argv[] = {"nnc", "-force-ordered-reductions"};
  LLVMParseCommandLineOptions(2, argv, NULL);
}

/* The host's target machine, or one for opts->target_cpu (then without host features). */
static LLVMTargetMachineRef target_machine(const Options *opts, int *bits, int *regs,
                                           bool *vnni) {
  llvm_options();
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
  simd_registers(triple, is_host ? host : opts->target_cpu, features, bits, regs, vnni);
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
  lower_gemm_init(&L->gemm, L->ctx, L->mod, L->elem, L->vector_bits, L->registers,
                  L->winograd);
  LLVMTypeRef sj[SJ_COUNT];
  for (int f = 0; f < SJ_COUNT; f++) sj[f] = f == SJ_IO ? L->ptr : L->i64;
  L->split_job = LLVMStructCreateNamed(L->ctx, "nn.split.job");
  LLVMStructSetBody(L->split_job, sj, SJ_COUNT, 0);
  const Graph *infer = quant_forward_graph(u); /* eval and predict: inference mode */
  LLVMValueRef *step_kernel = xalloc(sizeof *step_kernel * (size_t)(2 * u->n_steps + 1));
  for (int k = 0; k < u->n_steps; k++) { /* grad and update of each step: nn_grad_d, ... */
    const Step *sp = &u->steps[k];
    step_kernel[2 * k] = emit_kernel(L, xprintf("nn_grad_%s", sp->name), sp->train, ~0u);
    step_kernel[2 * k + 1] = emit_kernel(L, xprintf("nn_update_%s", sp->name), sp->update, ~0u);
  }
  if (L->quant && L->quant->mode == QUANT_CALIBRATE) { /* NnCalibration, zeros to start */
    LLVMTypeRef f[2] = {L->i64, LLVMArrayType2(L->elem, (uint64_t)L->quant->n_sites)};
    LLVMTypeRef ty = LLVMStructTypeInContext(L->ctx, f, 2, 0);
    LLVMValueRef v[2] = {i64c(L, L->quant->n_sites), LLVMConstNull(f[1])};
    L->calibration = LLVMAddGlobal(L->mod, ty, "nn_calibration");
    LLVMSetInitializer(L->calibration, LLVMConstStructInContext(L->ctx, v, 2, 0));
  }
  for (int k = 0; k < N_KERNELS; k++) { /* ORDER DESC: forward, eval, grad, update */
    bool grad = !kernel_specs[k].update && kernel_specs[k].outs == ~0u;
    const Graph *g = kernel_specs[k].update ? u->update : grad ? u->train : infer;
    L->quant_on = L->quant && g == infer && !grad; /* forward and eval */
    if (L->quant_on && L->embed && k == 1) g = NULL; /* the API has no eval: keep its weights out */
    kernel[k] = u->n_steps && (grad || kernel_specs[k].update) /* the first step's */
                    ? step_kernel[kernel_specs[k].update]
                    : emit_kernel(L, kernel_specs[k].name, g, kernel_specs[k].outs);
  }
  L->quant_on = false;
  LLVMValueRef model = emit_model_desc(L, kernel, step_kernel);
  if (L->embed) emit_embed_desc(L, L->embed, model);
}

bool lower_llvm(const Unit *u, const Options *opts, Emit emit, const char *path) {
  int bits, regs;
  bool vnni;
  LLVMTargetMachineRef tm = target_machine(opts, &bits, &regs, &vnni);
  if (!tm) return false;
  Lower L = {.u = u, .embed = opts->embed, .ctx = LLVMContextCreate(), .vector_bits = bits,
             .registers = regs, .quant = opts->quant, .vnni = vnni, .winograd = !opts->no_winograd};
  L.baked = xalloc(sizeof *L.baked * ((size_t)u->n_params + 1));
  L.i8 = LLVMInt8TypeInContext(L.ctx);
  L.i32 = LLVMInt32TypeInContext(L.ctx);
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
