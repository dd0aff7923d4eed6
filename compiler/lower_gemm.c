/* lower_gemm.c — the module's matrix multiply, and the convolutions built on it, as LLVM IR.
 *
 * Takes the element type and the target's vector registers; gives private functions that
 * lower_llvm.c calls for every matmul and convolution node:
 *
 *   nn.gemm(job, threads)      picks the blocking, then runs nn.gemm.work on every worker
 *   nn.gemm.work(job, w)       takes tasks (a block of rows × columns of one matrix of C) from
 *                              an atomic counter; for each K block packs B's columns into
 *                              nr-wide panels and (unless A is row-major, which the
 *                              micro-kernel reads in place) A's rows into mr-tall panels in
 *                              worker w's scratch, then calls the micro-kernel on every tile
 *   nn.gemm.ukernel(...)       the register tile: mr × (nr/w) vector accumulators, per k one
 *                              broadcast of A and nr/w loads of B, llvm.fmuladd on vectors
 *                              (nn.gemm.ukernel.half: the same on mr/2 rows, for edge tiles)
 *   nn.gemm.direct(job, w)     C with a few rows and B's rows contiguous (a dense layer on
 *                              one sample): strips of a row (and parts of K, when there are
 *                              fewer strips than workers) as tasks, no packing, which would
 *                              cost more than the multiply; the same sums in the same order
 *   nn.conv.N(job, w)          one per convolution node: per sample, im2col into scratch and a
 *                              GEMM (conv2d, filter gradient) or a GEMM and col2im (data
 *                              gradient); a conv2d of fewer than 4 input channels sums its
 *                              taps directly (conv_direct), the GEMM's sums without im2col;
 *                              a 3x3 stride-1 convolution over whole vectors of at least 16
 *                              channels runs Winograd's F(2x2, 3x3) (F(3x3, 2x2) for the
 *                              filter gradient): transforms and 16 GEMMs (winograd_*)
 *
 * Transposes are strides: packing reads A and B through (row, column) strides, so every form
 * the backward pass uses (ta, tb, batched, a rank-2 B shared by a batch) is the same code;
 * a transposed B (contiguous columns) is packed a W×W block at a time through registers.
 * Each C element is summed by one worker in a fixed order (K blocks of kc, k ascending), so
 * results do not depend on the thread count or the tiling; only the filter gradient, whose
 * sum runs over the batch, adds per-worker partial sums, in worker order.
 *
 * A job may carry an epilogue (GemmEpilogue): the elementwise loop that follows the matmul
 * (bias, activation), called on each block of C by the worker that finished it, while the
 * block is still in its cache. */
#include <string.h>

#include "lower_gemm.h"

enum {
  KC = 256,            /* depth of a packed block: a B micro-panel (KC × nr) fits in L1 */
  MB_PANELS = 16,      /* most mr-row panels of A one task packs (about 128 KB: L2) */
  NB_PANELS = 16,      /* most nr-column panels of B one task packs (about 512 KB: L2) */
  SERIAL_FMAS = 1 << 18, /* fewer multiply-adds than this are not worth waking threads */
  B_SPAN = 32 << 10,   /* most bytes a K block's rows of a B read in place may span */
  DIRECT_ROWS = 4,     /* C with at most this many rows (one sample's dense layer) skips packing */
  DIRECT_VECTORS = 16, /* most vectors of C's row a task of nn.gemm.direct sums in registers
                        * (Gemm.dv: 16 with 32 registers, else 8): a 256-wide layer's weights
                        * then stream row after whole row, through all of L2's sets */
  DIRECT_SPLIT_FMAS = 1 << 16, /* a direct GEMM with fewer is not split (one sample's layer
                                * of 256 x 256 is: the weights stream from two caches) */
};

/* Fields of %nn.gemm.job, a struct the caller fills on its stack. ORDER JOB */
enum {
  J_M, J_N, J_K, J_BATCH,       /* sizes */
  J_A, J_RSA, J_CSA, J_SA,      /* A: base, row stride, column stride, matrix stride */
  J_B, J_RSB, J_CSB, J_SB,      /* B likewise */
  J_C, J_LDC, J_SC,             /* C: base, row stride, matrix stride */
  J_BETA,                       /* 1: C += A·B; 0: C = A·B */
  J_SCRATCH, J_SSTRIDE,         /* worker w's scratch is SCRATCH + w * SSTRIDE bytes */
  J_MPANELS, J_NPANELS,         /* mr-row / nr-column panels of C (set by nn.gemm) */
  J_MBLK, J_NBLK,               /* blocks along M and N: panels shared out evenly */
  J_NEXT,                       /* the next task to take (atomic) */
  J_EPI, J_EPI_CTX, J_EPI_ROW,  /* the epilogue (or null), its context, C's first row in it */
  J_KPARTS,                     /* nn.gemm.direct: K blocks shared out in this many parts */
  J_APANELS,                    /* 1: A is in mr-row panels already (GemmArgs.a_panels) */
  J_BPANELS,                    /* 1: B is in nr-column panels already (GemmArgs.b_panels) */
  J_COUNT
};

/* Fields of %nn.conv.job. ORDER CONVJOB */
enum {
  CJ_OUT, CJ_SRC0, CJ_SRC1,     /* the node's result and operands */
  CJ_BATCH, CJ_SCRATCH, CJ_SSTRIDE, CJ_NEXT, CJ_WORKERS,
  CJ_EPI, CJ_EPI_CTX,           /* conv2d's epilogue (or null) and its context */
  CJ_CHUNKS,                    /* conv2d: tasks per sample, each a range of output pixels */
  CJ_WPANELS,                   /* the filter in B panels (worker 0's first region), or null */
  CJ_HOOK_CTX,                  /* the ConvHook's context (or null) */
  CJ_COUNT
};

/* ============================== small helpers ============================== */

static LLVMValueRef c64(Gemm *g, int64_t v) { return LLVMConstInt(g->i64, (unsigned long long)v, 1); }

static LLVMValueRef add(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildNSWAdd(g->b, a, b, "");
}
static LLVMValueRef sub(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildNSWSub(g->b, a, b, "");
}
static LLVMValueRef mul(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildNSWMul(g->b, a, b, "");
}
static LLVMValueRef muli(Gemm *g, LLVMValueRef a, int64_t k) {
  return k == 1 ? a : mul(g, a, c64(g, k));
}
static LLVMValueRef min64(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, a, b, ""), a, b, "");
}
static LLVMValueRef max64(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(g->b, LLVMBuildICmp(g->b, LLVMIntSGT, a, b, ""), a, b, "");
}
/* ceil(a / b) for a >= 0, b > 0 */
static LLVMValueRef cdiv(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSDiv(g->b, add(g, a, sub(g, b, c64(g, 1))), b, "");
}
/* Blocks of KC along K; at least one, so that K = 0 still writes C = 0. */
static LLVMValueRef k_blocks(Gemm *g, LLVMValueRef K) {
  return max64(g, cdiv(g, K, c64(g, KC)), c64(g, 1));
}
/* x (a scalar) in every lane of a vector of g->w */
static LLVMValueRef splat(Gemm *g, LLVMValueRef x) {
  LLVMTypeRef vt = LLVMVectorType(LLVMTypeOf(x), (unsigned)g->w);
  LLVMTypeRef i32 = LLVMInt32TypeInContext(g->ctx);
  LLVMValueRef one = LLVMBuildInsertElement(g->b, LLVMGetPoison(vt), x, LLVMConstInt(i32, 0, 0), "");
  return LLVMBuildShuffleVector(g->b, one, LLVMGetPoison(vt),
                                LLVMConstNull(LLVMVectorType(i32, (unsigned)g->w)), "");
}
/* a * b + acc on vectors of g->w, with llvm.fmuladd: the one multiply-add of every kernel here
 * (micro-kernel, direct GEMM, direct convolution), so that their sums have the same bits */
static LLVMValueRef vfmuladd(Gemm *g, LLVMValueRef a, LLVMValueRef b, LLVMValueRef acc) {
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  unsigned id = LLVMLookupIntrinsicID("llvm.fmuladd", 12);
  return LLVMBuildCall2(g->b, LLVMIntrinsicGetType(g->ctx, id, &vt, 1),
                        LLVMGetIntrinsicDeclaration(g->mod, id, &vt, 1),
                        (LLVMValueRef[]){a, b, acc}, 3, "");
}
static LLVMValueRef at(Gemm *g, LLVMValueRef base, LLVMValueRef i) {
  return LLVMBuildInBoundsGEP2(g->b, g->elem, base, &i, 1, "");
}
static LLVMValueRef byte_at(Gemm *g, LLVMValueRef base, LLVMValueRef i) {
  return LLVMBuildInBoundsGEP2(g->b, LLVMInt8TypeInContext(g->ctx), base, &i, 1, "");
}
static LLVMValueRef load(Gemm *g, LLVMTypeRef t, LLVMValueRef p, unsigned align) {
  LLVMValueRef v = LLVMBuildLoad2(g->b, t, p, "");
  if (align) LLVMSetAlignment(v, align);
  return v;
}
static void store(Gemm *g, LLVMValueRef v, LLVMValueRef p, unsigned align) {
  LLVMValueRef s = LLVMBuildStore(g->b, v, p);
  if (align) LLVMSetAlignment(s, align);
}

static LLVMValueRef field_ptr(Gemm *g, LLVMTypeRef st, LLVMValueRef job, int f) {
  return LLVMBuildStructGEP2(g->b, st, job, (unsigned)f, "");
}
static LLVMValueRef get(Gemm *g, LLVMTypeRef st, LLVMValueRef job, int f) {
  return LLVMBuildLoad2(g->b, LLVMStructGetTypeAtIndex(st, (unsigned)f),
                        field_ptr(g, st, job, f), "");
}
static void set(Gemm *g, LLVMBuilderRef b, LLVMTypeRef st, LLVMValueRef job, int f,
                LLVMValueRef v) {
  (void)g;
  LLVMBuildStore(b, v, LLVMBuildStructGEP2(b, st, job, (unsigned)f, ""));
}

static LLVMBasicBlockRef block(Gemm *g, const char *name) {
  LLVMValueRef fn = LLVMGetBasicBlockParent(LLVMGetInsertBlock(g->b));
  return LLVMAppendBasicBlockInContext(g->ctx, fn, name);
}

/* for (i = from; i < bound; i += step): the builder is in the body until loop_end. */
typedef struct GLoop {
  LLVMValueRef i;
  LLVMBasicBlockRef pre, head, exit;
  int64_t step;
} GLoop;

static GLoop loop_begin(Gemm *g, LLVMValueRef from, LLVMValueRef bound, int64_t step,
                        const char *name) {
  GLoop lp = {.pre = LLVMGetInsertBlock(g->b), .step = step};
  lp.head = block(g, name);
  LLVMBasicBlockRef body = block(g, name);
  lp.exit = block(g, name);
  LLVMBuildBr(g->b, lp.head);
  LLVMPositionBuilderAtEnd(g->b, lp.head);
  lp.i = LLVMBuildPhi(g->b, g->i64, name);
  LLVMAddIncoming(lp.i, &from, &lp.pre, 1);
  LLVMBuildCondBr(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, lp.i, bound, ""), body, lp.exit);
  LLVMPositionBuilderAtEnd(g->b, body);
  return lp;
}

static void loop_end(Gemm *g, GLoop *lp) {
  LLVMValueRef next = add(g, lp->i, c64(g, lp->step));
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(g->b);
  LLVMBuildBr(g->b, lp->head);
  LLVMAddIncoming(lp->i, &next, &latch, 1);
  LLVMPositionBuilderAtEnd(g->b, lp->exit);
}

/* if (cond) { then } else { other }: returns the join block; the builder is in `then`. */
typedef struct GIf {
  LLVMBasicBlockRef other, join;
} GIf;

static GIf if_begin(Gemm *g, LLVMValueRef cond, const char *name) {
  LLVMBasicBlockRef then = block(g, name);
  GIf f = {block(g, name), block(g, name)};
  LLVMBuildCondBr(g->b, cond, then, f.other);
  LLVMPositionBuilderAtEnd(g->b, then);
  return f;
}
static void if_else(Gemm *g, GIf *f) {
  LLVMBuildBr(g->b, f->join);
  LLVMPositionBuilderAtEnd(g->b, f->other);
}
static void if_end(Gemm *g, GIf *f) { /* also closes an if without an else */
  LLVMBuildBr(g->b, f->join);
  if (!LLVMGetBasicBlockTerminator(f->other)) {
    LLVMPositionBuilderAtEnd(g->b, f->other);
    LLVMBuildBr(g->b, f->join);
  }
  LLVMPositionBuilderAtEnd(g->b, f->join);
}

/* The tasks 0..count-1 of a job, shared by the workers through the atomic i64 at `next` (set
 * to 0 by the caller) from both ends: worker w = 0 takes them in order from the front
 * (counted in next's low 32 bits), the others from the back (the high 32 bits). A claim
 * stands while front + back taken before it is below count, so every task is taken once; and
 * the same worker takes about the same tasks call after call, so what a task reads (a strip
 * of a layer's weights) stays in that core's cache. The builder is in the body, at task `i`,
 * until tasks_end. A worker that joins late finds the tasks gone (runtime/pool.c). */
static TaskLoop tasks_begin(Gemm *g, LLVMValueRef next, LLVMValueRef count, LLVMValueRef w) {
  TaskLoop t = {.head = block(g, "task")};
  LLVMBasicBlockRef body = block(g, "task.body");
  t.done = block(g, "tasks.done");
  LLVMValueRef front = LLVMBuildICmp(g->b, LLVMIntEQ, w, c64(g, 0), "front");
  LLVMValueRef step = LLVMBuildSelect(g->b, front, c64(g, 1), c64(g, 1LL << 32), "");
  LLVMBuildBr(g->b, t.head);
  LLVMPositionBuilderAtEnd(g->b, t.head);
  LLVMValueRef was = LLVMBuildAtomicRMW(g->b, LLVMAtomicRMWBinOpAdd, next, step,
                                        LLVMAtomicOrderingMonotonic, 0);
  LLVMValueRef lo = LLVMBuildAnd(g->b, was, c64(g, 0xffffffffLL), "");
  LLVMValueRef hi = LLVMBuildLShr(g->b, was, c64(g, 32), "");
  t.i = LLVMBuildSelect(g->b, front, lo, sub(g, sub(g, count, hi), c64(g, 1)), "task");
  LLVMBuildCondBr(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, add(g, lo, hi), count, ""), body, t.done);
  LLVMPositionBuilderAtEnd(g->b, body);
  return t;
}

static void tasks_end(Gemm *g, const TaskLoop *t) {
  LLVMBuildBr(g->b, t->head);
  LLVMPositionBuilderAtEnd(g->b, t->done);
}

static LLVMValueRef function(Gemm *g, const char *name, LLVMTypeRef *params, unsigned n) {
  LLVMValueRef fn = LLVMAddFunction(g->mod, name, LLVMFunctionType(g->vd, params, n, 0));
  LLVMSetLinkage(fn, LLVMInternalLinkage); /* local, but named in profiles */
  unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
  LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex,
                          LLVMCreateEnumAttribute(g->ctx, nounwind, 0));
  LLVMPositionBuilderAtEnd(g->b, LLVMAppendBasicBlockInContext(g->ctx, fn, "entry"));
  return fn;
}

/* An alloca in the entry block of the function the builder `b` is in. */
static LLVMValueRef entry_alloca(Gemm *g, LLVMBuilderRef b, LLVMTypeRef t, const char *name) {
  LLVMValueRef fn = LLVMGetBasicBlockParent(LLVMGetInsertBlock(b));
  LLVMBasicBlockRef entry = LLVMGetEntryBasicBlock(fn);
  LLVMBuilderRef eb = LLVMCreateBuilderInContext(g->ctx);
  LLVMValueRef first = LLVMGetFirstInstruction(entry);
  if (first) LLVMPositionBuilderBefore(eb, first);
  else LLVMPositionBuilderAtEnd(eb, entry);
  LLVMValueRef slot = LLVMBuildAlloca(eb, t, name);
  LLVMSetAlignment(slot, 64);
  LLVMDisposeBuilder(eb);
  return slot;
}

static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

/* Elements of scratch the GEMM's packing needs per worker. */
static int64_t gemm_scratch(const Gemm *g) {
  return round16((int64_t)g->mb * KC) + round16((int64_t)KC * g->nb);
}

static void need_scratch(Gemm *g, int64_t elems) {
  if (elems > g->scratch_elems) g->scratch_elems = elems;
}

/* ============================== the micro-kernel ============================== */

/* nn.gemm.ukernel(kc, ap, bp, c, ldc, beta, mr, nr, ars, aks, bks): the mr×nr tile at c (row
 * stride ldc) = (beta ? tile : 0) + sum over k < kc of A(i, k) * bp[k*bks + j], where A(i, k)
 * is ap[i*ars + k*aks]: a packed panel (ars 1, aks MR) or, unpacked, rows of a row-major A
 * (ars its row stride, aks 1; rows past mr read row mr - 1). bp is a packed panel (bks NR)
 * or NR columns of a row-major B read in place (bks its row stride); only the first mr rows
 * and nr columns are stored (the rest of the tile is padding whose products are thrown
 * away). */
static LLVMValueRef emit_ukernel(Gemm *g, int MR, const char *name) {
  int NV = g->nr / g->w;
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  LLVMTypeRef params[11] = {g->i64, g->ptr, g->ptr, g->ptr, g->i64, g->i64,
                            g->i64, g->i64, g->i64, g->i64, g->i64};
  LLVMValueRef fn = function(g, name, params, 11);
  LLVMValueRef kc = LLVMGetParam(fn, 0), ap = LLVMGetParam(fn, 1), bp = LLVMGetParam(fn, 2);
  LLVMValueRef c = LLVMGetParam(fn, 3), ldc = LLVMGetParam(fn, 4), beta = LLVMGetParam(fn, 5);
  LLVMValueRef mr = LLVMGetParam(fn, 6), nr = LLVMGetParam(fn, 7);
  LLVMValueRef ars = LLVMGetParam(fn, 8), aks = LLVMGetParam(fn, 9);
  LLVMValueRef bks = LLVMGetParam(fn, 10);
  /* out of line: inlined into nn.gemm.work, with A's strides variables, its loop spilled */
  LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex,
                          LLVMCreateEnumAttribute(g->ctx,
                                                  LLVMGetEnumAttributeKindForName("noinline", 8),
                                                  0));
  for (int i = 0; i < 3; i++) /* the packed panels and C never alias */
    LLVMAddAttributeAtIndex(fn, (unsigned)(2 + i),
                            LLVMCreateEnumAttribute(g->ctx,
                                                    LLVMGetEnumAttributeKindForName("noalias", 7),
                                                    0));
  LLVMValueRef tile = entry_alloca(g, g->b, LLVMArrayType2(g->elem, (uint64_t)(MR * g->nr)),
                                   "tile");
  LLVMValueRef arow_off[16]; /* A(i, 0) - A(0, 0) */
  for (int i = 0; i < MR; i++)
    arow_off[i] = mul(g, min64(g, c64(g, i), sub(g, mr, c64(g, 1))), ars);
  unsigned valign = (unsigned)(g->w * g->es);

  /* the k loop, with the accumulators as phis */
  LLVMBasicBlockRef entry = LLVMGetInsertBlock(g->b);
  LLVMBasicBlockRef head = block(g, "k"), body = block(g, "k.body"), done = block(g, "k.done");
  LLVMBuildBr(g->b, head);
  LLVMPositionBuilderAtEnd(g->b, head);
  LLVMValueRef k = LLVMBuildPhi(g->b, g->i64, "k");
  LLVMValueRef acc[16][8], next[16][8];
  LLVMValueRef vzero = LLVMConstNull(vt);
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NV; j++) {
      acc[i][j] = LLVMBuildPhi(g->b, vt, "acc");
      LLVMAddIncoming(acc[i][j], &vzero, &entry, 1);
    }
  LLVMValueRef zero = c64(g, 0);
  LLVMAddIncoming(k, &zero, &entry, 1);
  LLVMBuildCondBr(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, k, kc, ""), body, done);
  LLVMPositionBuilderAtEnd(g->b, body);
  LLVMValueRef bv[8];
  LLVMValueRef brow = at(g, bp, mul(g, k, bks)), arow = at(g, ap, mul(g, k, aks));
  /* (a B read in place need not be aligned to a vector) */
  for (int j = 0; j < NV; j++) bv[j] = load(g, vt, at(g, brow, c64(g, j * g->w)), (unsigned)g->es);
  for (int i = 0; i < MR; i++) {
    LLVMValueRef a = load(g, g->elem, at(g, arow, arow_off[i]), (unsigned)g->es);
    LLVMValueRef va = splat(g, a);
    for (int j = 0; j < NV; j++) next[i][j] = vfmuladd(g, va, bv[j], acc[i][j]);
  }
  LLVMValueRef k1 = add(g, k, c64(g, 1));
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(g->b);
  LLVMBuildBr(g->b, head);
  LLVMAddIncoming(k, &k1, &latch, 1);
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NV; j++) LLVMAddIncoming(acc[i][j], &next[i][j], &latch, 1);

  /* store: whole tiles straight into C, edge tiles through `tile` */
  LLVMPositionBuilderAtEnd(g->b, done);
  LLVMValueRef whole = LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, LLVMIntEQ, mr, c64(g, MR), ""),
                                    LLVMBuildICmp(g->b, LLVMIntEQ, nr, c64(g, g->nr), ""), "");
  LLVMValueRef accumulate = LLVMBuildICmp(g->b, LLVMIntNE, beta, zero, "");
  GIf f = if_begin(g, whole, "whole"), h = {0};
  for (int pass = 0; pass < 2; pass++) { /* pass 0: C += acc; pass 1: C = acc */
    if (pass == 0) h = if_begin(g, accumulate, "beta");
    for (int i = 0; i < MR; i++)
      for (int j = 0; j < NV; j++) {
        LLVMValueRef p = at(g, c, add(g, muli(g, ldc, i), c64(g, j * g->w)));
        LLVMValueRef v = acc[i][j];
        if (pass == 0) v = LLVMBuildFAdd(g->b, load(g, vt, p, (unsigned)g->es), v, "");
        store(g, v, p, (unsigned)g->es);
      }
    if (pass == 0) if_else(g, &h);
    else if_end(g, &h);
  }
  if_else(g, &f);
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NV; j++)
      store(g, acc[i][j], at(g, tile, c64(g, i * g->nr + j * g->w)), valign);
  GLoop li = loop_begin(g, zero, mr, 1, "ti");
  GLoop lj = loop_begin(g, zero, nr, 1, "tj");
  LLVMValueRef t = load(g, g->elem, at(g, tile, add(g, muli(g, li.i, g->nr), lj.i)), 0);
  LLVMValueRef p = at(g, c, add(g, mul(g, li.i, ldc), lj.i));
  LLVMValueRef old = LLVMBuildSelect(g->b, accumulate, load(g, g->elem, p, 0),
                                     LLVMConstReal(g->elem, 0), "");
  /* -0 + x would turn a -0 product into +0: add only when accumulating */
  LLVMValueRef sum = LLVMBuildFAdd(g->b, old, t, "");
  store(g, LLVMBuildSelect(g->b, accumulate, sum, t, ""), p, 0);
  loop_end(g, &lj);
  loop_end(g, &li);
  if_end(g, &f);
  LLVMBuildRetVoid(g->b);
  return fn;
}

/* ============================== packing ============================== */

/* A's rows [m0, m0 + rows) × columns [k0, k0 + kc) into mr-tall panels at dst: panel p holds
 * dst[p*MR*kc + k*MR + i] = A(m0 + p*MR + i, k0 + k). Rows past M repeat row M-1 (their
 * products are never stored). */
static void pack_a(Gemm *g, LLVMValueRef dst, LLVMValueRef a, LLVMValueRef rsa, LLVMValueRef csa,
                   LLVMValueRef M, LLVMValueRef k0, LLVMValueRef kc, LLVMValueRef m0,
                   LLVMValueRef rows) {
  int MR = g->mr;
  LLVMValueRef one = c64(g, 1), zero = c64(g, 0);
  LLVMValueRef transposed = LLVMBuildICmp(g->b, LLVMIntEQ, rsa, one, "");
  /* A transposed, two whole panels at a time: each k's 2·mr values are one vector, whose
   * halves go to the two panels (one load per cache line's worth, not two) */
  LLVMValueRef inside = min64(g, rows, sub(g, M, m0));
  LLVMValueRef paired = LLVMBuildSelect(
      g->b, transposed, muli(g, LLVMBuildSDiv(g->b, inside, c64(g, 2 * MR), ""), 2 * MR), zero,
      "paired");
  {
    LLVMTypeRef pair_t = LLVMVectorType(g->elem, (unsigned)(2 * MR));
    LLVMTypeRef i32 = LLVMInt32TypeInContext(g->ctx);
    LLVMValueRef lo_idx[16], hi_idx[16];
    for (int i = 0; i < MR; i++) {
      lo_idx[i] = LLVMConstInt(i32, (unsigned long long)i, 0);
      hi_idx[i] = LLVMConstInt(i32, (unsigned long long)(MR + i), 0);
    }
    LLVMValueRef lo_mask = LLVMConstVector(lo_idx, (unsigned)MR);
    LLVMValueRef hi_mask = LLVMConstVector(hi_idx, (unsigned)MR);
    GLoop lq = loop_begin(g, zero, paired, 2 * MR, "pa2");
    LLVMValueRef first = at(g, dst, mul(g, lq.i, kc)), second = at(g, first, muli(g, kc, MR));
    LLVMValueRef src = at(g, a, add(g, add(g, m0, lq.i), mul(g, k0, csa)));
    GLoop lk = loop_begin(g, zero, kc, 1, "pa2.k");
    LLVMValueRef v = load(g, pair_t, at(g, src, mul(g, lk.i, csa)), (unsigned)g->es);
    LLVMValueRef d = muli(g, lk.i, MR);
    store(g, LLVMBuildShuffleVector(g->b, v, v, lo_mask, ""), at(g, first, d), (unsigned)g->es);
    store(g, LLVMBuildShuffleVector(g->b, v, v, hi_mask, ""), at(g, second, d), (unsigned)g->es);
    loop_end(g, &lk);
    loop_end(g, &lq);
  }
  GLoop lp = loop_begin(g, paired, rows, MR, "pa");
  LLVMValueRef panel = at(g, dst, mul(g, lp.i, kc));
  LLVMValueRef row0 = add(g, m0, lp.i);
  LLVMValueRef colbase = mul(g, k0, csa);
  LLVMValueRef whole = LLVMBuildICmp(g->b, LLVMIntSLE, add(g, row0, c64(g, MR)), M, "");
  GIf f = if_begin(g, LLVMBuildAnd(g->b, whole, transposed, ""), "pa.t");
  { /* A transposed (rsa = 1): each k's mr values are adjacent, one vector (loaded whole:
     * element by element, the loads could not move above the stores into the panel) */
    LLVMValueRef src = at(g, a, add(g, row0, colbase));
    LLVMTypeRef column_t = LLVMVectorType(g->elem, (unsigned)MR);
    GLoop lk = loop_begin(g, zero, kc, 1, "pa.k");
    LLVMValueRef s = at(g, src, mul(g, lk.i, csa)), d = at(g, panel, muli(g, lk.i, MR));
    store(g, load(g, column_t, s, (unsigned)g->es), d, (unsigned)g->es);
    loop_end(g, &lk);
  }
  if_else(g, &f);
  { /* general strides: one pointer per row, clamped into A */
    LLVMValueRef rowp[16];
    LLVMValueRef last = sub(g, M, one);
    for (int i = 0; i < MR; i++)
      rowp[i] = at(g, a, add(g, mul(g, min64(g, add(g, row0, c64(g, i)), last), rsa), colbase));
    LLVMValueRef unit = LLVMBuildICmp(g->b, LLVMIntEQ, csa, one, "");
    GIf h = {0};
    for (int pass = 0; pass < 2; pass++) { /* pass 0: csa == 1, so the loads are contiguous */
      if (pass == 0) h = if_begin(g, unit, "pa.u");
      GLoop lk = loop_begin(g, zero, kc, 1, "pa.k");
      LLVMValueRef off = pass == 0 ? lk.i : mul(g, lk.i, csa), d = at(g, panel, muli(g, lk.i, MR));
      for (int i = 0; i < MR; i++)
        store(g, load(g, g->elem, at(g, rowp[i], off), 0), at(g, d, c64(g, i)), 0);
      loop_end(g, &lk);
      if (pass == 0) if_else(g, &h);
      else if_end(g, &h);
    }
  }
  if_end(g, &f);
  loop_end(g, &lp);
}

/* The n×n block of vectors r (rows) transposed in registers, n = g->w a power of two: log2(n)
 * stages, each swapping the off-diagonal blocks of size d (d = n/2, n/4, .., 1) between rows i
 * and i + d with two-input shuffles. */
static void transpose_block(Gemm *g, LLVMValueRef *r) {
  int n = g->w;
  LLVMTypeRef i32 = LLVMInt32TypeInContext(g->ctx);
  LLVMValueRef lo[16], hi[16];
  for (int d = n / 2; d >= 1; d /= 2) {
    for (int p = 0; p < n; p++) { /* lo: a's element p or b's p - d; hi: a's p + d or b's p */
      lo[p] = LLVMConstInt(i32, (unsigned long long)((p & d) ? n + p - d : p), 0);
      hi[p] = LLVMConstInt(i32, (unsigned long long)((p & d) ? n + p : p + d), 0);
    }
    LLVMValueRef mlo = LLVMConstVector(lo, (unsigned)n), mhi = LLVMConstVector(hi, (unsigned)n);
    for (int i = 0; i < n; i++)
      if (!(i & d)) {
        LLVMValueRef a = r[i], b = r[i + d];
        r[i] = LLVMBuildShuffleVector(g->b, a, b, mlo, "");
        r[i + d] = LLVMBuildShuffleVector(g->b, a, b, mhi, "");
      }
  }
}

/* B's rows [k0, k0 + kc) × columns [n0, n0 + cols) into nr-wide panels at dst: panel q holds
 * dst[q*NR*kc + k*NR + j] = B(k0 + k, n0 + q*NR + j). Columns past N repeat column N-1. */
static void pack_b(Gemm *g, LLVMValueRef dst, LLVMValueRef b, LLVMValueRef rsb, LLVMValueRef csb,
                   LLVMValueRef N, LLVMValueRef k0, LLVMValueRef kc, LLVMValueRef n0,
                   LLVMValueRef cols) {
  int NR = g->nr, W = g->w;
  LLVMValueRef one = c64(g, 1), zero = c64(g, 0);
  LLVMTypeRef panel_t = LLVMVectorType(g->elem, (unsigned)NR);
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)W);
  unsigned valign = (unsigned)(W * g->es);
  GLoop lp = loop_begin(g, zero, cols, NR, "pb");
  LLVMValueRef panel = at(g, dst, mul(g, lp.i, kc));
  LLVMValueRef col0 = add(g, n0, lp.i);
  LLVMValueRef rowbase = mul(g, k0, rsb);
  LLVMValueRef whole = LLVMBuildICmp(g->b, LLVMIntSLE, add(g, col0, c64(g, NR)), N, "");
  LLVMValueRef contiguous = LLVMBuildICmp(g->b, LLVMIntEQ, csb, one, "");
  LLVMValueRef transposed = LLVMBuildICmp(g->b, LLVMIntEQ, rsb, one, "");
  GIf f = if_begin(g, LLVMBuildAnd(g->b, whole, contiguous, ""), "pb.r");
  { /* row-major B: one NR-wide vector per k */
    LLVMValueRef src = at(g, b, add(g, rowbase, col0));
    GLoop lk = loop_begin(g, zero, kc, 1, "pb.k");
    LLVMValueRef v = load(g, panel_t, at(g, src, mul(g, lk.i, rsb)), (unsigned)g->es);
    store(g, v, at(g, panel, muli(g, lk.i, NR)), valign);
    loop_end(g, &lk);
  }
  if_else(g, &f);
  /* general strides, column by column, clamped into B; with B transposed (rsb = 1: each of
   * B's columns is a contiguous row of Bᵀ, x @ transpose(W) and q @ transpose(k)) whole
   * W×W blocks first: W columns' next W values loaded as vectors and transposed in
   * registers into W rows of the panel, instead of an element at a time */
  LLVMValueRef kdone = zero;
  if (W > 1 && W <= 16) {
    LLVMValueRef blocks = LLVMBuildAnd(g->b, whole, transposed, "");
    LLVMValueRef kw = mul(g, LLVMBuildSDiv(g->b, kc, c64(g, W), ""), c64(g, W));
    kdone = LLVMBuildSelect(g->b, blocks, kw, zero, "pb.tdone");
    LLVMValueRef src = at(g, b, add(g, rowbase, mul(g, col0, csb)));
    GLoop lk = loop_begin(g, zero, kdone, W, "pb.tk");
    for (int h = 0; h < NR / W; h++) {
      LLVMValueRef r[16];
      for (int j = 0; j < W; j++)
        r[j] = load(g, vt, at(g, src, add(g, mul(g, c64(g, h * W + j), csb), lk.i)),
                    (unsigned)g->es);
      transpose_block(g, r);
      for (int kk = 0; kk < W; kk++)
        store(g, r[kk], at(g, panel, add(g, muli(g, add(g, lk.i, c64(g, kk)), NR), c64(g, h * W))),
              valign);
    }
    loop_end(g, &lk);
  }
  {
    LLVMValueRef last = sub(g, N, one);
    GLoop lj = loop_begin(g, zero, c64(g, NR), 1, "pb.j");
    LLVMValueRef src = at(g, b, add(g, rowbase, mul(g, min64(g, add(g, col0, lj.i), last), csb)));
    LLVMValueRef d = at(g, panel, lj.i);
    GLoop lk = loop_begin(g, kdone, kc, 1, "pb.k");
    store(g, load(g, g->elem, at(g, src, mul(g, lk.i, rsb)), 0), at(g, d, muli(g, lk.i, NR)), 0);
    loop_end(g, &lk);
    loop_end(g, &lj);
  }
  if_end(g, &f);
  loop_end(g, &lp);
}

/* ============================== the driver ============================== */

/* Calls epilogue e (its fn a null pointer at run time: none) on rows [r0, r1) × columns
 * [c0, c1) of its output. */
static void run_epilogue(Gemm *g, GemmEpilogue e, LLVMValueRef r0, LLVMValueRef r1,
                         LLVMValueRef c0, LLVMValueRef c1) {
  GIf f = if_begin(g, LLVMBuildIsNotNull(g->b, e.fn, ""), "epilogue");
  LLVMValueRef args[5] = {e.ctx, r0, r1, c0, c1};
  LLVMBuildCall2(g->b, g->epilogue_type, e.fn, args, 5, "");
  if_end(g, &f);
}

/* The job's epilogue on rows [r0, r1) × columns [c0, c1) of C, rows counted from the
 * epilogue's first row. */
static void call_epilogue(Gemm *g, LLVMValueRef job, LLVMValueRef r0, LLVMValueRef r1,
                          LLVMValueRef c0, LLVMValueRef c1) {
  LLVMTypeRef J = g->job_type;
  LLVMValueRef row = get(g, J, job, J_EPI_ROW);
  GemmEpilogue e = {get(g, J, job, J_EPI), get(g, J, job, J_EPI_CTX)};
  run_epilogue(g, e, add(g, row, r0), add(g, row, r1), c0, c1);
}

/* The first row (column) of block i of `blocks` over `panels` panels of `size`: the panels
 * are shared out evenly, so blocks differ by at most one panel and workers by little. */
static LLVMValueRef block_start(Gemm *g, LLVMValueRef i, LLVMValueRef panels,
                                LLVMValueRef blocks, int64_t size) {
  return muli(g, LLVMBuildSDiv(g->b, mul(g, i, panels), blocks, ""), size);
}

/* nn.gemm.work(job, w): worker w takes tasks until none is left. */
static void emit_work(Gemm *g) {
  LLVMTypeRef params[2] = {g->ptr, g->i64};
  LLVMValueRef fn = g->work = function(g, "nn.gemm.work", params, 2);
  LLVMTypeRef J = g->job_type;
  LLVMValueRef job = LLVMGetParam(fn, 0), w = LLVMGetParam(fn, 1);
  LLVMValueRef v[J_COUNT];
  for (int f = 0; f < J_COUNT; f++)
    if (f != J_NEXT) v[f] = get(g, J, job, f);
  LLVMValueRef scratch = byte_at(g, v[J_SCRATCH], mul(g, w, v[J_SSTRIDE]));
  LLVMValueRef ap = scratch, bp = at(g, scratch, c64(g, round16((int64_t)g->mb * KC)));
  LLVMValueRef per = mul(g, v[J_MBLK], v[J_NBLK]);
  LLVMValueRef tasks = mul(g, v[J_BATCH], per);

  TaskLoop task = tasks_begin(g, field_ptr(g, J, job, J_NEXT), tasks, w);
  LLVMValueRef t = task.i;
  LLVMValueRef bi = LLVMBuildSDiv(g->b, t, per, ""), r = sub(g, t, mul(g, bi, per));
  /* wide C (more column blocks than row blocks: GPT's vocabulary head): the row blocks are
   * innermost, so a column block of B is packed again by the next task while it is in cache */
  LLVMValueRef wide = LLVMBuildICmp(g->b, LLVMIntSGT, v[J_NBLK], v[J_MBLK], "wide");
  LLVMValueRef mi = LLVMBuildSelect(g->b, wide, LLVMBuildSRem(g->b, r, v[J_MBLK], ""),
                                    LLVMBuildSDiv(g->b, r, v[J_NBLK], ""), "mi");
  LLVMValueRef ni = LLVMBuildSelect(g->b, wide, LLVMBuildSDiv(g->b, r, v[J_MBLK], ""),
                                    LLVMBuildSRem(g->b, r, v[J_NBLK], ""), "ni");
  LLVMValueRef m0 = block_start(g, mi, v[J_MPANELS], v[J_MBLK], g->mr);
  LLVMValueRef n0 = block_start(g, ni, v[J_NPANELS], v[J_NBLK], g->nr);
  LLVMValueRef one = c64(g, 1);
  LLVMValueRef rows = sub(g, min64(g, v[J_M], block_start(g, add(g, mi, one), v[J_MPANELS],
                                                          v[J_MBLK], g->mr)), m0);
  LLVMValueRef cols = sub(g, min64(g, v[J_N], block_start(g, add(g, ni, one), v[J_NPANELS],
                                                          v[J_NBLK], g->nr)), n0);
  LLVMValueRef A = at(g, v[J_A], mul(g, bi, v[J_SA])), B = at(g, v[J_B], mul(g, bi, v[J_SB]));
  LLVMValueRef C = at(g, v[J_C], mul(g, bi, v[J_SC]));
  /* a row-major A is read in place by the micro-kernel: packing it (a transpose into k-major
   * panels, element by element) cost more than it saved */
  LLVMValueRef panels = LLVMBuildICmp(g->b, LLVMIntNE, v[J_APANELS], c64(g, 0), "panels");
  LLVMValueRef unpacked = LLVMBuildAnd(
      g->b, LLVMBuildICmp(g->b, LLVMIntEQ, v[J_CSA], c64(g, 1), ""),
      LLVMBuildNot(g->b, panels, ""), "unpacked");

  /* a row-major B whose columns are whole panels is read in place by the micro-kernel when
   * a K block's rows of it span at most B_SPAN bytes (they then stay in L1 from one tile to
   * the next, as a packed panel would), or when its rows are panels already (N = nr): a
   * filter gradient's output gradient, a dense layer's weight gradient; packing it was a
   * copy of every element for nothing */
  LLVMValueRef kspan = mul(g, min64(g, v[J_K], c64(g, KC)), muli(g, v[J_RSB], g->es));
  LLVMValueRef b_rows = LLVMBuildAnd(
      g->b,
      LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, LLVMIntEQ, v[J_CSB], c64(g, 1), ""),
                   LLVMBuildICmp(g->b, LLVMIntEQ, LLVMBuildSRem(g->b, v[J_N], c64(g, g->nr), ""),
                                 c64(g, 0), ""), ""),
      LLVMBuildOr(g->b, LLVMBuildICmp(g->b, LLVMIntSLE, kspan, c64(g, B_SPAN), ""),
                  LLVMBuildICmp(g->b, LLVMIntEQ, v[J_RSB], c64(g, g->nr), ""), ""),
      "b.rows");

  /* K blocks; at least one, so that K = 0 still writes C = 0 */
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(g->b), kb = block(g, "kblock");
  LLVMBuildBr(g->b, kb);
  LLVMPositionBuilderAtEnd(g->b, kb);
  LLVMValueRef k0 = LLVMBuildPhi(g->b, g->i64, "k0"), zero = c64(g, 0);
  LLVMAddIncoming(k0, &zero, &pre, 1);
  LLVMValueRef kc = min64(g, c64(g, KC), sub(g, v[J_K], k0));
  kc = max64(g, kc, zero);
  LLVMValueRef b_panels = LLVMBuildICmp(g->b, LLVMIntNE, v[J_BPANELS], c64(g, 0), "b.panels");
  GIf pb = if_begin(g, LLVMBuildNot(g->b, LLVMBuildOr(g->b, b_panels, b_rows, ""), ""), "pack_b");
  pack_b(g, bp, B, v[J_RSB], v[J_CSB], v[J_N], k0, kc, n0, cols);
  if_end(g, &pb);
  GIf pa = if_begin(g, LLVMBuildNot(g->b, LLVMBuildOr(g->b, unpacked, panels, ""), ""), "pack_a");
  pack_a(g, ap, A, v[J_RSA], v[J_CSA], v[J_M], k0, kc, m0, rows);
  if_end(g, &pa);
  LLVMValueRef beta = LLVMBuildOr(g->b, v[J_BETA],
                                  LLVMBuildZExt(g->b, LLVMBuildICmp(g->b, LLVMIntSGT, k0, zero, ""),
                                                g->i64, ""), "");
  GLoop lj = loop_begin(g, zero, cols, g->nr, "jr");
  GLoop li = loop_begin(g, zero, rows, g->mr, "ir");
  LLVMValueRef cp = at(g, C, add(g, mul(g, add(g, m0, li.i), v[J_LDC]), add(g, n0, lj.i)));
  LLVMValueRef a_in_place = at(g, A, add(g, mul(g, add(g, m0, li.i), v[J_RSA]), k0));
  /* the caller's panels: row m0 + li starts a panel, (m0 + li) * K elements in */
  LLVMValueRef a_panel = at(g, A, add(g, mul(g, add(g, m0, li.i), v[J_K]), muli(g, k0, g->mr)));
  LLVMValueRef a_packed = LLVMBuildSelect(g->b, panels, a_panel, at(g, ap, mul(g, li.i, kc)), "");
  LLVMValueRef b_packed = LLVMBuildSelect(
      g->b, b_panels, at(g, B, add(g, mul(g, add(g, n0, lj.i), v[J_K]), muli(g, k0, g->nr))),
      at(g, bp, mul(g, lj.i, kc)), "");
  LLVMValueRef b_in_place = at(g, B, add(g, mul(g, k0, v[J_RSB]), add(g, n0, lj.i)));
  LLVMValueRef args[11] = {
      kc, LLVMBuildSelect(g->b, unpacked, a_in_place, a_packed, ""),
      LLVMBuildSelect(g->b, b_rows, b_in_place, b_packed, ""),
      cp, v[J_LDC], beta,
      min64(g, c64(g, g->mr), sub(g, rows, li.i)), min64(g, c64(g, g->nr), sub(g, cols, lj.i)),
      LLVMBuildSelect(g->b, unpacked, v[J_RSA], c64(g, 1), ""),
      LLVMBuildSelect(g->b, unpacked, c64(g, 1), c64(g, g->mr), ""),
      LLVMBuildSelect(g->b, b_rows, v[J_RSB], c64(g, g->nr), "")};
  /* a tile of at most half of mr rows (121 rows: the 16th tile holds 1) on a kernel of half
   * the rows: half the multiply-adds for nothing, in the same order (the same bits) */
  LLVMValueRef low = LLVMBuildICmp(g->b, LLVMIntSLE, sub(g, rows, li.i), c64(g, g->mr / 2), "");
  LLVMBuildCall2(g->b, LLVMGlobalGetValueType(g->ukernel),
                 LLVMBuildSelect(g->b, low, g->ukernel_half, g->ukernel, ""), args, 11, "");
  loop_end(g, &li);
  loop_end(g, &lj);
  LLVMValueRef k1 = add(g, k0, c64(g, KC));
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(g->b);
  LLVMAddIncoming(k0, &k1, &latch, 1);
  LLVMBasicBlockRef kdone = block(g, "kblock.done");
  LLVMBuildCondBr(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, k1, v[J_K], ""), kb, kdone);
  LLVMPositionBuilderAtEnd(g->b, kdone);
  LLVMValueRef r0 = add(g, mul(g, bi, v[J_M]), m0); /* the block is final: its epilogue */
  call_epilogue(g, job, r0, add(g, r0, rows), n0, add(g, n0, cols));
  tasks_end(g, &task);
  LLVMBuildRetVoid(g->b);
}

/* Calls work(job, 0) alone, or threads->run(threads->ctx, work, job) when `parallel`. */
static void dispatch(Gemm *g, LLVMValueRef work, LLVMValueRef job, LLVMValueRef threads,
                     LLVMValueRef parallel) {
  GIf f = if_begin(g, parallel, "parallel");
  LLVMTypeRef st = LLVMStructTypeInContext(g->ctx, (LLVMTypeRef[]){g->ptr, g->ptr, g->i64}, 3, 0);
  LLVMValueRef run = get(g, st, threads, 0), ctx = get(g, st, threads, 1);
  LLVMTypeRef run_ty = LLVMFunctionType(g->vd, (LLVMTypeRef[]){g->ptr, g->ptr, g->ptr}, 3, 0);
  LLVMBuildCall2(g->b, run_ty, run, (LLVMValueRef[]){ctx, work, job}, 3, "");
  if_else(g, &f);
  LLVMBuildCall2(g->b, LLVMGlobalGetValueType(work), work, (LLVMValueRef[]){job, c64(g, 0)}, 2,
                 "");
  if_end(g, &f);
}

/* Workers in `threads` (1 when NULL). */
static LLVMValueRef workers_of(Gemm *g, LLVMValueRef threads) {
  LLVMTypeRef st = LLVMStructTypeInContext(g->ctx, (LLVMTypeRef[]){g->ptr, g->ptr, g->i64}, 3, 0);
  LLVMValueRef has = LLVMBuildICmp(g->b, LLVMIntNE, threads, LLVMConstNull(g->ptr), "");
  GIf f = if_begin(g, has, "threads");
  LLVMValueRef n = get(g, st, threads, 2);
  LLVMBasicBlockRef from = LLVMGetInsertBlock(g->b);
  if_else(g, &f);
  LLVMBasicBlockRef none = LLVMGetInsertBlock(g->b);
  if_end(g, &f);
  LLVMValueRef phi = LLVMBuildPhi(g->b, g->i64, "workers");
  LLVMValueRef one = c64(g, 1);
  LLVMAddIncoming(phi, &n, &from, 1);
  LLVMAddIncoming(phi, &one, &none, 1);
  return max64(g, phi, one);
}

/* ---- the same for lower_llvm.c's own parallel loops, at its builder b ---- */

TaskLoop lower_tasks_begin(Gemm *g, LLVMBuilderRef b, LLVMValueRef next, LLVMValueRef count,
                           LLVMValueRef worker) {
  LLVMBuilderRef own = g->b;
  g->b = b;
  TaskLoop t = tasks_begin(g, next, count, worker);
  g->b = own;
  return t;
}

void lower_tasks_end(Gemm *g, LLVMBuilderRef b, const TaskLoop *t) {
  LLVMBuilderRef own = g->b;
  g->b = b;
  tasks_end(g, t);
  g->b = own;
}

LLVMValueRef lower_workers(Gemm *g, LLVMBuilderRef b, LLVMValueRef threads) {
  LLVMBuilderRef own = g->b;
  g->b = b;
  LLVMValueRef n = workers_of(g, threads);
  g->b = own;
  return n;
}

void lower_run_workers(Gemm *g, LLVMBuilderRef b, LLVMValueRef work, LLVMValueRef job,
                       LLVMValueRef threads, LLVMValueRef parallel) {
  LLVMBuilderRef own = g->b;
  g->b = b;
  dispatch(g, work, job, threads, parallel);
  g->b = own;
}

/* A vector at p, or only the lanes `mask` (NULL: all) sets (0 in the others), or stores it. */
static LLVMValueRef load_lanes(Gemm *g, LLVMTypeRef vt, LLVMValueRef p, LLVMValueRef mask) {
  if (!mask) return load(g, vt, p, (unsigned)g->es);
  LLVMTypeRef types[2] = {vt, g->ptr};
  unsigned id = LLVMLookupIntrinsicID("llvm.masked.load", 16);
  LLVMValueRef args[4] = {p, LLVMConstInt(LLVMInt32TypeInContext(g->ctx), (unsigned)g->es, 0),
                          mask, LLVMConstNull(vt)};
  return LLVMBuildCall2(g->b, LLVMIntrinsicGetType(g->ctx, id, types, 2),
                        LLVMGetIntrinsicDeclaration(g->mod, id, types, 2), args, 4, "");
}
static void store_lanes(Gemm *g, LLVMValueRef v, LLVMValueRef p, LLVMValueRef mask) {
  if (!mask) {
    store(g, v, p, (unsigned)g->es);
    return;
  }
  LLVMTypeRef types[2] = {LLVMTypeOf(v), g->ptr};
  unsigned id = LLVMLookupIntrinsicID("llvm.masked.store", 17);
  LLVMValueRef args[4] = {v, p, LLVMConstInt(LLVMInt32TypeInContext(g->ctx), (unsigned)g->es, 0),
                          mask};
  LLVMBuildCall2(g->b, LLVMIntrinsicGetType(g->ctx, id, types, 2),
                 LLVMGetIntrinsicDeclaration(g->mod, id, types, 2), args, 4, "");
}

/* The columns [col0, col0 + nv * w) of C's row crow over the K block [k0, k1), the last vector
 * only in the lanes `last` sets (NULL: all): their sums accumulated from zero in nv vector
 * registers (SROA makes the slots registers) with llvm.fmuladd, k ascending, then stored
 * (store_c: first block, beta 0) or added to C. */
static void direct_strip(Gemm *g, int nv, LLVMValueRef arow, LLVMValueRef csa, LLVMValueRef B,
                         LLVMValueRef rsb, LLVMValueRef crow, LLVMValueRef col0, LLVMValueRef k0,
                         LLVMValueRef k1, LLVMValueRef store_c, LLVMValueRef last) {
  LLVMValueRef zero = c64(g, 0);
  LLVMTypeRef et = g->elem, vt = LLVMVectorType(et, (unsigned)g->w);
  LLVMTypeRef arr = LLVMArrayType2(vt, (uint64_t)nv);
  LLVMValueRef sums = entry_alloca(g, g->b, arr, "strip");
  LLVMValueRef slot[DIRECT_VECTORS];
  for (int q = 0; q < nv; q++) {
    slot[q] = LLVMBuildInBoundsGEP2(g->b, arr, sums, (LLVMValueRef[]){zero, c64(g, q)}, 2, "");
    store(g, LLVMConstNull(vt), slot[q], 0);
  }
  GLoop lk = loop_begin(g, k0, k1, 1, "k");
  LLVMValueRef va = splat(g, load(g, et, at(g, arow, mul(g, lk.i, csa)), 0));
  LLVMValueRef brow = at(g, B, add(g, mul(g, lk.i, rsb), col0));
  for (int q = 0; q < nv; q++) {
    LLVMValueRef bv = load_lanes(g, vt, at(g, brow, c64(g, q * g->w)), q == nv - 1 ? last : NULL);
    store(g, vfmuladd(g, va, bv, load(g, vt, slot[q], 0)), slot[q], 0);
  }
  loop_end(g, &lk);
  for (int q = 0; q < nv; q++) {
    LLVMValueRef cp = at(g, crow, add(g, col0, c64(g, q * g->w))), sum = load(g, vt, slot[q], 0);
    LLVMValueRef mask = q == nv - 1 ? last : NULL;
    GIf f = if_begin(g, store_c, "set");
    store_lanes(g, sum, cp, mask);
    if_else(g, &f);
    store_lanes(g, LLVMBuildFAdd(g->b, load_lanes(g, vt, cp, mask), sum, ""), cp, mask);
    if_end(g, &f);
  }
}

/* The K blocks [b0, b1) of part `part` of nparts of nb: every part at least one block when
 * nb >= nparts. */
static void part_blocks(Gemm *g, LLVMValueRef part, LLVMValueRef nparts, LLVMValueRef nb,
                        LLVMValueRef *b0, LLVMValueRef *b1) {
  *b0 = LLVMBuildSDiv(g->b, mul(g, part, nb), nparts, "b0");
  *b1 = LLVMBuildSDiv(g->b, mul(g, add(g, part, c64(g, 1)), nb), nparts, "b1");
}

/* Where K part p (p >= 1) of a split direct GEMM keeps its block sums: rows × N elements per
 * block, in worker p's scratch. */
static LLVMValueRef part_sums(Gemm *g, LLVMValueRef scratch, LLVMValueRef sstride,
                              LLVMValueRef part) {
  return byte_at(g, scratch, mul(g, part, sstride));
}

/* nn.gemm.direct(job, w): C with a few rows, without packing. A task is one strip of up to
 * g->dv vectors of one row of one matrix of C (the last strip of a row: the columns left
 * over, in as many vectors, the last one masked to the columns there are) over one part of
 * K's blocks, taken from the job's counter: one sample's dense layer
 * splits across the workers by columns, and, when a row has fewer strips than there are
 * workers, by K blocks (J_KPARTS parts). K block by K block, each column's sum over the block
 * is accumulated from zero with llvm.fmuladd, k ascending; part 0 stores it (first block, beta
 * 0) or adds it to C, the micro-kernel's order; a later part stores each block's sums apart
 * (part_sums), and nn.gemm adds them to C in block order after the workers are done. So the
 * results are the same bits as the packed path's, at any thread count. */
static void emit_direct(Gemm *g) {
  LLVMTypeRef params[2] = {g->ptr, g->i64};
  LLVMValueRef fn = g->direct = function(g, "nn.gemm.direct", params, 2);
  LLVMTypeRef J = g->job_type;
  LLVMValueRef job = LLVMGetParam(fn, 0), worker = LLVMGetParam(fn, 1), v[J_COUNT];
  for (int f = 0; f < J_COUNT; f++) v[f] = get(g, J, job, f);
  LLVMValueRef zero = c64(g, 0);
  int64_t strip = (int64_t)g->dv * g->w;
  LLVMValueRef whole = LLVMBuildSDiv(g->b, v[J_N], c64(g, strip), ""); /* full strips a row */
  LLVMValueRef per_row = cdiv(g, v[J_N], c64(g, strip));
  LLVMValueRef rows = mul(g, v[J_BATCH], v[J_M]), strips = mul(g, rows, per_row);
  LLVMValueRef tasks = mul(g, strips, v[J_KPARTS]);
  LLVMValueRef blocks = k_blocks(g, v[J_K]);
  /* the task's strip s of row i of matrix t, over part `part` of the K blocks */
  TaskLoop task = tasks_begin(g, field_ptr(g, J, job, J_NEXT), tasks, worker);
  LLVMValueRef part = LLVMBuildSDiv(g->b, task.i, strips, "part");
  LLVMValueRef in_part = LLVMBuildSRem(g->b, task.i, strips, "");
  LLVMValueRef s = LLVMBuildSRem(g->b, in_part, per_row, "s");
  LLVMValueRef row = LLVMBuildSDiv(g->b, in_part, per_row, "");
  LLVMValueRef i = LLVMBuildSRem(g->b, row, v[J_M], "i");
  LLVMValueRef t = LLVMBuildSDiv(g->b, row, v[J_M], "t");
  LLVMValueRef A = at(g, v[J_A], mul(g, t, v[J_SA])), B = at(g, v[J_B], mul(g, t, v[J_SB]));
  LLVMValueRef C = at(g, v[J_C], mul(g, t, v[J_SC]));
  LLVMValueRef arow = at(g, A, mul(g, i, v[J_RSA])), crow = at(g, C, mul(g, i, v[J_LDC]));
  LLVMValueRef col0 = muli(g, s, strip);
  LLVMValueRef first = LLVMBuildICmp(g->b, LLVMIntEQ, part, zero, "");
  LLVMValueRef sums = part_sums(g, v[J_SCRATCH], v[J_SSTRIDE], part), b0, b1;
  part_blocks(g, part, v[J_KPARTS], blocks, &b0, &b1);
  GLoop lb = loop_begin(g, b0, b1, 1, "kb");
  LLVMValueRef k0 = muli(g, lb.i, KC), k1 = min64(g, add(g, k0, c64(g, KC)), v[J_K]);
  LLVMValueRef own = at(g, sums, mul(g, add(g, mul(g, sub(g, lb.i, b0), rows), row), v[J_N]));
  LLVMValueRef dest = LLVMBuildSelect(g->b, first, crow, own, "dest");
  LLVMValueRef store_c = LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, LLVMIntEQ, v[J_BETA], zero, ""),
                                      LLVMBuildICmp(g->b, LLVMIntEQ, k0, zero, ""), "");
  store_c = LLVMBuildOr(g->b, store_c, LLVMBuildNot(g->b, first, ""), "");
  GIf full = if_begin(g, LLVMBuildICmp(g->b, LLVMIntSLT, s, whole, ""), "strip");
  direct_strip(g, g->dv, arow, v[J_CSA], B, v[J_RSB], dest, col0, k0, k1, store_c, NULL);
  if_else(g, &full);
  /* the columns left over: their vectors (fewer than a strip's, the last one masked to the
   * columns there are) in registers, picked by a switch on their count, which the strip's loop
   * needs as a constant */
  LLVMValueRef left = LLVMBuildNSWSub(g->b, v[J_N], col0, "left");
  LLVMValueRef vecs = cdiv(g, left, c64(g, g->w));
  LLVMValueRef in_last = sub(g, left, muli(g, sub(g, vecs, c64(g, 1)), g->w));
  LLVMTypeRef i32 = LLVMInt32TypeInContext(g->ctx);
  LLVMValueRef lane[64];
  for (int i = 0; i < g->w; i++) lane[i] = LLVMConstInt(i32, (unsigned long long)i, 0);
  LLVMValueRef mask = LLVMBuildICmp(g->b, LLVMIntULT, LLVMConstVector(lane, (unsigned)g->w),
                                    splat(g, LLVMBuildTrunc(g->b, in_last, i32, "")), "last");
  LLVMBasicBlockRef tail = block(g, "tail");
  LLVMValueRef sw = LLVMBuildSwitch(g->b, vecs, tail, (unsigned)g->dv);
  for (int nv = 1; nv <= g->dv; nv++) {
    LLVMBasicBlockRef bb = block(g, "vectors");
    LLVMAddCase(sw, c64(g, nv), bb);
    LLVMPositionBuilderAtEnd(g->b, bb);
    direct_strip(g, nv, arow, v[J_CSA], B, v[J_RSB], dest, col0, k0, k1, store_c, mask);
    LLVMBuildBr(g->b, tail);
  }
  LLVMPositionBuilderAtEnd(g->b, tail);
  if_end(g, &full);
  loop_end(g, &lb);
  tasks_end(g, &task);
  LLVMBuildRetVoid(g->b);
}

/* How many parts nn.gemm.direct shares K's blocks out in: one, unless the GEMM is split and
 * has fewer strips than workers (one sample's 784 x 256 layer: each worker then streams whole
 * rows of half the weights, which stay in its L2 from call to call), and each part's block
 * sums fit its worker's scratch. */
static LLVMValueRef direct_kparts(Gemm *g, LLVMValueRef job, LLVMValueRef parallel,
                                  LLVMValueRef workers, LLVMValueRef rows) {
  LLVMTypeRef J = g->job_type;
  LLVMValueRef N = get(g, J, job, J_N), K = get(g, J, job, J_K);
  LLVMValueRef strips = mul(g, rows, cdiv(g, N, c64(g, (int64_t)g->dv * g->w)));
  LLVMValueRef blocks = k_blocks(g, K);
  LLVMValueRef parts = min64(g, workers, blocks);
  LLVMValueRef bytes = muli(g, mul(g, mul(g, cdiv(g, blocks, parts), rows), N), g->es);
  LLVMValueRef fits = LLVMBuildICmp(g->b, LLVMIntSLE, bytes, get(g, J, job, J_SSTRIDE), "");
  LLVMValueRef split = LLVMBuildAnd(g->b, parallel,
                                    LLVMBuildICmp(g->b, LLVMIntSLT, strips, workers, ""), "");
  return LLVMBuildSelect(g->b, LLVMBuildAnd(g->b, split, fits, ""), parts, c64(g, 1), "kparts");
}

/* After a split direct GEMM: C += each later part's block sums, in block order. */
static void add_part_sums(Gemm *g, LLVMValueRef job, LLVMValueRef kparts, LLVMValueRef rows) {
  LLVMTypeRef J = g->job_type;
  LLVMValueRef M = get(g, J, job, J_M), N = get(g, J, job, J_N), K = get(g, J, job, J_K);
  LLVMValueRef C = get(g, J, job, J_C), sc = get(g, J, job, J_SC), ldc = get(g, J, job, J_LDC);
  LLVMValueRef scratch = get(g, J, job, J_SCRATCH), sstride = get(g, J, job, J_SSTRIDE);
  LLVMValueRef blocks = k_blocks(g, K), b0, b1;
  GLoop lp = loop_begin(g, c64(g, 1), kparts, 1, "part");
  LLVMValueRef sums = part_sums(g, scratch, sstride, lp.i);
  part_blocks(g, lp.i, kparts, blocks, &b0, &b1);
  GLoop lb = loop_begin(g, c64(g, 0), sub(g, b1, b0), 1, "block");
  GLoop lr = loop_begin(g, c64(g, 0), rows, 1, "row");
  LLVMValueRef t = LLVMBuildSDiv(g->b, lr.i, M, ""), i = LLVMBuildSRem(g->b, lr.i, M, "");
  LLVMValueRef crow = at(g, C, add(g, mul(g, t, sc), mul(g, i, ldc)));
  LLVMValueRef srow = at(g, sums, mul(g, add(g, mul(g, lb.i, rows), lr.i), N));
  GLoop lj = loop_begin(g, c64(g, 0), N, 1, "j");
  LLVMValueRef cp = at(g, crow, lj.i);
  store(g, LLVMBuildFAdd(g->b, load(g, g->elem, cp, 0), load(g, g->elem, at(g, srow, lj.i), 0),
                         ""), cp, 0);
  loop_end(g, &lj);
  loop_end(g, &lr);
  loop_end(g, &lb);
  loop_end(g, &lp);
}

/* nn.gemm(job, threads): the blocking, then the work. Blocks are as large as the scratch
 * allows, then split (columns first: that shares A's packing least) until there are at least
 * two tasks per worker, so that a worker delayed by the machine's other load costs less, and
 * a multiple of the workers where the panels allow (7 equal tasks on 2 workers take 4 task
 * times; 8 take 3.5). */
static void emit_gemm(Gemm *g) {
  LLVMTypeRef params[2] = {g->ptr, g->ptr};
  LLVMValueRef fn = g->gemm = function(g, "nn.gemm", params, 2);
  LLVMTypeRef J = g->job_type;
  LLVMValueRef job = LLVMGetParam(fn, 0), threads = LLVMGetParam(fn, 1);
  LLVMValueRef M = get(g, J, job, J_M), N = get(g, J, job, J_N), K = get(g, J, job, J_K);
  LLVMValueRef batch = get(g, J, job, J_BATCH), zero = c64(g, 0), one = c64(g, 1);
  LLVMValueRef empty = LLVMBuildOr(g->b, LLVMBuildICmp(g->b, LLVMIntSLE, M, zero, ""),
                                   LLVMBuildICmp(g->b, LLVMIntSLE, N, zero, ""), "");
  empty = LLVMBuildOr(g->b, empty, LLVMBuildICmp(g->b, LLVMIntSLE, batch, zero, ""), "");
  LLVMBasicBlockRef nothing = block(g, "empty"), go = block(g, "go");
  LLVMBuildCondBr(g->b, empty, nothing, go);
  LLVMPositionBuilderAtEnd(g->b, nothing);
  LLVMBuildRetVoid(g->b);
  LLVMPositionBuilderAtEnd(g->b, go);
  LLVMValueRef direct = LLVMBuildAnd(
      g->b, LLVMBuildICmp(g->b, LLVMIntSLE, M, c64(g, DIRECT_ROWS), ""),
      LLVMBuildICmp(g->b, LLVMIntEQ, get(g, J, job, J_CSB), one, ""), "");
  direct = LLVMBuildAnd(g->b, direct,
                        LLVMBuildICmp(g->b, LLVMIntSLE, N, c64(g, gemm_scratch(g)), ""), "");
  direct = LLVMBuildAnd(g->b, direct,
                        LLVMBuildICmp(g->b, LLVMIntEQ, get(g, J, job, J_APANELS), zero, ""), "");
  LLVMBasicBlockRef few_rows = block(g, "direct"), packed = block(g, "packed");
  LLVMBuildCondBr(g->b, direct, few_rows, packed);
  LLVMPositionBuilderAtEnd(g->b, few_rows);
  LLVMValueRef workers = workers_of(g, threads);
  LLVMValueRef fmas = mul(g, mul(g, batch, mul(g, M, N)), max64(g, K, one));
  LLVMValueRef split = LLVMBuildAnd(
      g->b, LLVMBuildICmp(g->b, LLVMIntSGT, workers, one, ""),
      LLVMBuildICmp(g->b, LLVMIntSGE, fmas, c64(g, DIRECT_SPLIT_FMAS), ""), "");
  LLVMValueRef rows = mul(g, batch, M);
  LLVMValueRef kparts = direct_kparts(g, job, split, workers, rows);
  set(g, g->b, J, job, J_KPARTS, kparts);
  set(g, g->b, J, job, J_NEXT, zero);
  dispatch(g, g->direct, job, threads, split);
  add_part_sums(g, job, kparts, rows);
  call_epilogue(g, job, zero, mul(g, batch, M), zero, N); /* a few rows: after all of C */
  LLVMBuildRetVoid(g->b);
  LLVMPositionBuilderAtEnd(g->b, packed);
  workers = workers_of(g, threads);
  LLVMValueRef mp = cdiv(g, M, c64(g, g->mr)), np = cdiv(g, N, c64(g, g->nr));
  LLVMValueRef mblk = cdiv(g, mp, c64(g, MB_PANELS)), nblk = cdiv(g, np, c64(g, NB_PANELS));
  fmas = mul(g, mul(g, batch, mul(g, M, N)), max64(g, K, one));
  LLVMValueRef parallel = LLVMBuildAnd(
      g->b, LLVMBuildICmp(g->b, LLVMIntSGT, workers, one, ""),
      LLVMBuildICmp(g->b, LLVMIntSGE, fmas, c64(g, SERIAL_FMAS), ""), "");
  LLVMValueRef total = mul(g, batch, mul(g, mblk, nblk));
  LLVMValueRef even = mul(g, cdiv(g, max64(g, total, muli(g, workers, 2)), workers), workers);
  LLVMValueRef want = LLVMBuildSelect(g->b, parallel, even, one, "");
  LLVMValueRef few = LLVMBuildICmp(g->b, LLVMIntSLT, total, want, "");
  nblk = LLVMBuildSelect(g->b, few, min64(g, np, cdiv(g, want, mul(g, batch, mblk))), nblk, "");
  total = mul(g, batch, mul(g, mblk, nblk));
  few = LLVMBuildICmp(g->b, LLVMIntSLT, total, want, "");
  mblk = LLVMBuildSelect(g->b, few, min64(g, mp, cdiv(g, want, mul(g, batch, nblk))), mblk, "");
  LLVMBuilderRef b = g->b;
  set(g, b, J, job, J_MPANELS, mp);
  set(g, b, J, job, J_NPANELS, np);
  set(g, b, J, job, J_MBLK, mblk);
  set(g, b, J, job, J_NBLK, nblk);
  set(g, b, J, job, J_NEXT, zero);
  dispatch(g, g->work, job, threads, parallel);
  LLVMBuildRetVoid(g->b);
}

/* ============================== entry points ============================== */

void lower_gemm_init(Gemm *g, LLVMContextRef ctx, LLVMModuleRef mod, LLVMTypeRef elem,
                     int vector_bits, int registers, bool winograd) {
  *g = (Gemm){.ctx = ctx, .mod = mod, .elem = elem, .winograd = winograd};
  g->b = LLVMCreateBuilderInContext(ctx);
  g->i64 = LLVMInt64TypeInContext(ctx);
  g->ptr = LLVMPointerTypeInContext(ctx, 0);
  g->vd = LLVMVoidTypeInContext(ctx);
  g->es = elem == LLVMDoubleTypeInContext(ctx) ? 8 : 4;
  g->w = (int)(vector_bits / 8 / g->es);
  if (g->w < 1) g->w = 1;
  g->nr = 2 * g->w;
  g->dv = registers >= 32 ? DIRECT_VECTORS : DIRECT_VECTORS / 2; /* + 1 broadcast */
  /* mr × 2 accumulators + 2 of B + 1 broadcast must fit the vector registers */
  g->mr = registers >= 32 ? 8 : 6;
  g->kc = KC;
  g->mb = g->mr * MB_PANELS;
  g->nb = g->nr * NB_PANELS;
  LLVMTypeRef jt[J_COUNT];
  for (int f = 0; f < J_COUNT; f++)
    jt[f] = f == J_A || f == J_B || f == J_C || f == J_SCRATCH || f == J_EPI || f == J_EPI_CTX
                ? g->ptr : g->i64;
  g->job_type = LLVMStructCreateNamed(ctx, "nn.gemm.job");
  LLVMStructSetBody(g->job_type, jt, J_COUNT, 0);
  LLVMTypeRef ct[CJ_COUNT];
  for (int f = 0; f < CJ_COUNT; f++)
    ct[f] = f <= CJ_SRC1 || f == CJ_SCRATCH || f == CJ_EPI || f == CJ_EPI_CTX ||
                    f == CJ_WPANELS || f == CJ_HOOK_CTX
                ? g->ptr : g->i64;
  g->conv_type = LLVMStructCreateNamed(ctx, "nn.conv.job");
  LLVMStructSetBody(g->conv_type, ct, CJ_COUNT, 0);
  LLVMTypeRef ep[5] = {g->ptr, g->i64, g->i64, g->i64, g->i64};
  g->epilogue_type = LLVMFunctionType(g->vd, ep, 5, 0);
  LLVMTypeRef sp[3] = {g->ptr, g->i64, g->ptr};
  g->sample_type = LLVMFunctionType(g->vd, sp, 3, 0);
  g->scratch_bytes = LLVMAddGlobal(mod, g->i64, "nn.scratch.bytes");
  LLVMSetLinkage(g->scratch_bytes, LLVMPrivateLinkage);
  LLVMSetGlobalConstant(g->scratch_bytes, 1);
}

static void ensure_gemm(Gemm *g) {
  if (g->gemm) return;
  g->ukernel = emit_ukernel(g, g->mr, "nn.gemm.ukernel");
  g->ukernel_half = emit_ukernel(g, g->mr / 2, "nn.gemm.ukernel.half");
  emit_work(g);
  emit_direct(g);
  emit_gemm(g);
  need_scratch(g, gemm_scratch(g));
}

/* Fills a %nn.gemm.job at `job` (builder b) from a. */
static void fill_job(Gemm *g, LLVMBuilderRef b, LLVMValueRef job, const GemmArgs *a,
                     LLVMValueRef scratch, LLVMValueRef sstride) {
  LLVMTypeRef J = g->job_type;
  LLVMValueRef v[J_COUNT] = {
      [J_M] = a->m, [J_N] = a->n, [J_K] = a->k, [J_BATCH] = a->batch,
      [J_A] = a->a, [J_RSA] = a->rsa, [J_CSA] = a->csa, [J_SA] = a->sa,
      [J_B] = a->b, [J_RSB] = a->rsb, [J_CSB] = a->csb, [J_SB] = a->sb,
      [J_C] = a->c, [J_LDC] = a->ldc, [J_SC] = a->sc,
      [J_BETA] = c64(g, a->accumulate), [J_SCRATCH] = scratch, [J_SSTRIDE] = sstride,
      [J_APANELS] = c64(g, a->a_panels), [J_BPANELS] = a->b_panels ? a->b_panels : c64(g, 0),
      [J_EPI] = a->epilogue ? a->epilogue : LLVMConstNull(g->ptr),
      [J_EPI_CTX] = a->epilogue ? a->epilogue_ctx : LLVMConstNull(g->ptr),
      [J_EPI_ROW] = a->epilogue ? a->epilogue_row : c64(g, 0),
  };
  for (int f = 0; f < J_COUNT; f++)
    if (v[f]) set(g, b, J, job, f, v[f]);
}

void lower_gemm_call(Gemm *g, LLVMBuilderRef b, const GemmArgs *a, LLVMValueRef threads,
                     LLVMValueRef scratch) {
  ensure_gemm(g);
  LLVMValueRef job = entry_alloca(g, b, g->job_type, "gemm.job");
  LLVMValueRef sstride = LLVMBuildLoad2(b, g->i64, g->scratch_bytes, "scratch.bytes");
  fill_job(g, b, job, a, scratch, sstride);
  LLVMBuildCall2(b, LLVMGlobalGetValueType(g->gemm), g->gemm, (LLVMValueRef[]){job, threads}, 2,
                 "");
}

/* ============================== convolutions ============================== */

/* The geometry of one convolution node, in the forward op's terms: image x [B,H,W,C], filter
 * [KH,KW,C,F], output y [B,OH,OW,F]; T = KH*KW taps. */
typedef struct ConvGeom {
  const ConvAttr *c;
  int64_t H, W, C, OH, OW, F, T;
} ConvGeom;

static ConvGeom geometry(const Node *n) {
  const Node *img = n->op == OP_CONV2D_BWD_DATA ? n : n->src[0];
  const Node *out = n->op == OP_CONV2D ? n : n->op == OP_CONV2D_BWD_DATA ? n->src[0] : n->src[1];
  const ConvAttr *c = &n->attr.conv;
  return (ConvGeom){c, img->shape.dim[1], img->shape.dim[2], img->shape.dim[3],
                    out->shape.dim[1], out->shape.dim[2], out->shape.dim[3],
                    (int64_t)c->kh * c->kw};
}

/* For every output position oh*OW + ow in [r0, r1) and tap whose input pixel is inside the
 * image, body(row, tap, pixel): row = oh*OW + ow - r0 (a row of the im2col matrix), tap =
 * kh*KW + kw, pixel = ih*W + iw. When `outside` is set it is called for the taps in the
 * padding instead (pixel undefined). */
typedef void (*TapBody)(Gemm *g, LLVMValueRef row, LLVMValueRef tap, LLVMValueRef pixel,
                        bool inside, const void *ctx);

static void for_taps(Gemm *g, const ConvGeom *q, LLVMValueRef r0, LLVMValueRef r1,
                     TapBody body, bool outside, const void *ctx) {
  const ConvAttr *c = q->c;
  LLVMValueRef zero = c64(g, 0);
  GLoop lr = loop_begin(g, r0, r1, 1, "pix"); /* output pixels; the body's rows count from r0 */
  LLVMValueRef oh = LLVMBuildUDiv(g->b, lr.i, c64(g, q->OW), "oh");
  LLVMValueRef ow = sub(g, lr.i, muli(g, oh, q->OW)), row = sub(g, lr.i, r0);
  GLoop kh = loop_begin(g, zero, c64(g, c->kh), 1, "kh");
  LLVMValueRef ih = add(g, add(g, muli(g, oh, c->sh), muli(g, kh.i, c->dh)), c64(g, -c->pt));
  GLoop kw = loop_begin(g, zero, c64(g, c->kw), 1, "kw");
  LLVMValueRef iw = add(g, add(g, muli(g, ow, c->sw), muli(g, kw.i, c->dw)), c64(g, -c->pl));
  LLVMValueRef tap = add(g, muli(g, kh.i, c->kw), kw.i);
  LLVMValueRef in = LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, LLVMIntULT, ih, c64(g, q->H), ""),
                                 LLVMBuildICmp(g->b, LLVMIntULT, iw, c64(g, q->W), ""), "");
  GIf f = if_begin(g, in, "inside");
  body(g, row, tap, add(g, muli(g, ih, q->W), iw), true, ctx);
  if_else(g, &f);
  if (outside) body(g, row, tap, NULL, false, ctx);
  if_end(g, &f);
  loop_end(g, &kw);
  loop_end(g, &kh);
  loop_end(g, &lr);
}

typedef struct ColCtx {
  const ConvGeom *q;
  LLVMValueRef col, img; /* the im2col matrix [OH*OW, T*C]; the sample's image [H*W, C] */
} ColCtx;

/* im2col: col[row, tap*C .. +C] = img[pixel, 0 .. C], or zeros in the padding */
static void im2col_body(Gemm *g, LLVMValueRef row, LLVMValueRef tap, LLVMValueRef pixel,
                        bool inside, const void *ctx) {
  const ColCtx *x = ctx;
  int64_t C = x->q->C;
  LLVMValueRef dst = at(g, x->col, add(g, muli(g, row, x->q->T * C), muli(g, tap, C)));
  LLVMValueRef bytes = c64(g, C * g->es);
  if (inside)
    LLVMBuildMemCpy(g->b, dst, (unsigned)g->es, at(g, x->img, muli(g, pixel, C)),
                    (unsigned)g->es, bytes);
  else
    LLVMBuildMemSet(g->b, dst, LLVMConstInt(LLVMInt8TypeInContext(g->ctx), 0, 0), bytes,
                    (unsigned)g->es);
}

/* im2col's transpose straight into the micro-kernel's A panels (C a multiple of mr, so a panel's
 * mr rows are mr channels of one tap): panel (tap*C + j*mr) / mr holds, for each output pixel
 * `row` of `rows`, the pixel's mr channels j*mr .. at row*mr, or zeros in the padding. The
 * filter gradient's GEMM reads them as they are (GemmArgs.a_panels), with no im2col matrix to
 * write and pack. */
typedef struct PanelCtx {
  const ConvGeom *q;
  LLVMValueRef panels, img;
  int64_t mr;
} PanelCtx;

static void im2col_panels_body(Gemm *g, LLVMValueRef row, LLVMValueRef tap, LLVMValueRef pixel,
                               bool inside, const void *ctx) {
  const PanelCtx *x = ctx;
  int64_t C = x->q->C, rows = x->q->OH * x->q->OW, per = C / x->mr;
  LLVMValueRef bytes = c64(g, x->mr * g->es);
  for (int64_t j = 0; j < per; j++) {
    LLVMValueRef panel = add(g, muli(g, tap, per), c64(g, j));
    LLVMValueRef dst = at(g, x->panels, add(g, muli(g, panel, x->mr * rows), muli(g, row, x->mr)));
    if (inside)
      LLVMBuildMemCpy(g->b, dst, (unsigned)g->es,
                      at(g, x->img, add(g, muli(g, pixel, C), c64(g, j * x->mr))),
                      (unsigned)g->es, bytes);
    else
      LLVMBuildMemSet(g->b, dst, LLVMConstInt(LLVMInt8TypeInContext(g->ctx), 0, 0), bytes,
                      (unsigned)g->es);
  }
}

/* col2im: img[pixel, 0 .. C] += col[row, tap*C .. +C] */
static void col2im_body(Gemm *g, LLVMValueRef row, LLVMValueRef tap, LLVMValueRef pixel,
                        bool inside, const void *ctx) {
  const ColCtx *x = ctx;
  int64_t C = x->q->C;
  (void)inside;
  LLVMValueRef src = at(g, x->col, add(g, muli(g, row, x->q->T * C), muli(g, tap, C)));
  LLVMValueRef dst = at(g, x->img, muli(g, pixel, C));
  GLoop lc = loop_begin(g, c64(g, 0), c64(g, C), 1, "c");
  LLVMValueRef p = at(g, dst, lc.i);
  LLVMValueRef s = LLVMBuildFAdd(g->b, load(g, g->elem, p, 0),
                                 load(g, g->elem, at(g, src, lc.i), 0), "");
  store(g, s, p, 0);
  loop_end(g, &lc);
}

/* A filter of fewer than TAP_MAJOR_C input channels (a grey or RGB image) is im2col'ed tap
 * by tap: the row-major matrix would be built from copies of C elements each. */
enum { TAP_MAJOR_C = 4 };

static LLVMValueRef clamp64(Gemm *g, LLVMValueRef v, LLVMValueRef lo, LLVMValueRef hi) {
  return min64(g, max64(g, v, lo), hi);
}

/* im2col, transposed, for small C: colt[(tap*C + c) * n + p - r0] = img[pixel(p, tap), c] (0 in
 * the padding) for the output pixels p in [r0, r1), n = r1 - r0: each (tap, channel, output
 * row) a run of the image's row (contiguous when C is 1 and the stride 1) between two runs of
 * zeros for the columns in the padding. */
static void im2col_tap_major(Gemm *g, const ConvGeom *q, LLVMValueRef colt, LLVMValueRef img,
                             LLVMValueRef r0, LLVMValueRef r1) {
  const ConvAttr *c = q->c;
  LLVMValueRef zero = c64(g, 0), ow_n = c64(g, q->OW), n = sub(g, r1, r0);
  LLVMValueRef oh0 = LLVMBuildSDiv(g->b, r0, ow_n, ""), oh1 = cdiv(g, r1, ow_n);
  GLoop kh = loop_begin(g, zero, c64(g, c->kh), 1, "kh");
  GLoop kw = loop_begin(g, zero, c64(g, c->kw), 1, "kw");
  /* input column of output column ow: ow*sw + off; inside the image for ow in [a, b) */
  LLVMValueRef off = add(g, muli(g, kw.i, c->dw), c64(g, -c->pl));
  LLVMValueRef a = cdiv(g, max64(g, sub(g, zero, off), zero), c64(g, c->sw));
  LLVMValueRef b = cdiv(g, max64(g, sub(g, c64(g, q->W), off), zero), c64(g, c->sw));
  a = min64(g, a, ow_n), b = clamp64(g, b, a, ow_n);
  LLVMValueRef tap = add(g, muli(g, kh.i, c->kw), kw.i);
  GLoop ch = loop_begin(g, zero, c64(g, q->C), 1, "c");
  LLVMValueRef krow = at(g, colt, mul(g, add(g, muli(g, tap, q->C), ch.i), n));
  GLoop oh = loop_begin(g, oh0, oh1, 1, "oh");
  LLVMValueRef first = muli(g, oh.i, q->OW); /* output pixel of column 0 */
  LLVMValueRef lo = max64(g, sub(g, r0, first), zero), hi = min64(g, sub(g, r1, first), ow_n);
  LLVMValueRef ih = add(g, add(g, muli(g, oh.i, c->sh), muli(g, kh.i, c->dh)), c64(g, -c->pt));
  LLVMValueRef in_row = LLVMBuildICmp(g->b, LLVMIntULT, ih, c64(g, q->H), "");
  LLVMValueRef in_lo = LLVMBuildSelect(g->b, in_row, clamp64(g, a, lo, hi), hi, "");
  LLVMValueRef in_hi = LLVMBuildSelect(g->b, in_row, clamp64(g, b, in_lo, hi), hi, "");
  LLVMValueRef dst = at(g, krow, sub(g, first, r0));
  LLVMValueRef row_px = mul(g, LLVMBuildSelect(g->b, in_row, ih, zero, ""), c64(g, q->W));
  LLVMValueRef zeros[2][2] = {{lo, in_lo}, {in_hi, hi}};
  for (int z = 0; z < 2; z++) {
    GLoop lz = loop_begin(g, zeros[z][0], zeros[z][1], 1, "pad");
    store(g, LLVMConstNull(g->elem), at(g, dst, lz.i), 0);
    loop_end(g, &lz);
  }
  if (q->C == 1 && c->sw == 1) { /* the run is contiguous in the image: one copy (a loop of
                                   * element copies stayed scalar: LLVM cannot tell the two
                                   * buffers apart) */
    LLVMValueRef src = at(g, img, add(g, row_px, add(g, in_lo, off)));
    LLVMBuildMemCpy(g->b, at(g, dst, in_lo), (unsigned)g->es, src, (unsigned)g->es,
                    muli(g, sub(g, in_hi, in_lo), g->es));
  } else {
    GLoop lw = loop_begin(g, in_lo, in_hi, 1, "ow");
    LLVMValueRef px = add(g, row_px, add(g, muli(g, lw.i, c->sw), off));
    store(g, load(g, g->elem, at(g, img, add(g, muli(g, px, q->C), ch.i)), 0), at(g, dst, lw.i),
          0);
    loop_end(g, &lw);
  }
  loop_end(g, &oh);
  loop_end(g, &ch);
  loop_end(g, &kw);
  loop_end(g, &kh);
}

/* A convolution of few input channels (a grey or RGB image) with a small filter: direct, not
 * im2col + GEMM. With K = KH*KW*C at most DIRECT_CONV_K, the GEMM's tiles would run a short k
 * loop each, behind an im2col as large as the output; here each output pixel's F channels are
 * NV vectors summed over the K taps straight from the image, DIRECT_CONV_PIXELS pixels at once
 * (independent sums to hide the multiply-add latency), the filter's K x NV vectors loaded once.
 * Each sum is the micro-kernel's: from 0, k ascending, one llvm.fmuladd per k, a tap in the
 * padding adding x = 0, so the bits are those of the GEMM path. The epilogue runs on each block
 * of DIRECT_CONV_BLOCK pixels as it is done, while the block is in L1. */
enum { DIRECT_CONV_K = 32, DIRECT_CONV_PIXELS = 4, DIRECT_CONV_BLOCK = 64 };

static bool conv_direct_ok(const Gemm *g, const ConvGeom *q) {
  return q->C < TAP_MAJOR_C && q->T * q->C <= DIRECT_CONV_K && q->F % g->w == 0 &&
         q->F / g->w <= 4;
}

/* y's rows [r0, r1) (output pixels of one sample; y points at row r0) from the sample's image
 * and the filter w ([K, F] row-major); then epilogue rows erow + [r0, r1) block by block. */
static void conv_direct(Gemm *g, const ConvGeom *q, LLVMValueRef img, LLVMValueRef w,
                        LLVMValueRef y, LLVMValueRef r0, LLVMValueRef r1, GemmEpilogue epi,
                        LLVMValueRef erow) {
  const ConvAttr *c = q->c;
  int NV = (int)(q->F / g->w), K = (int)(q->T * q->C);
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  bool padded = c->pt || c->pl || c->pb > 0 || c->pr > 0; /* can a tap leave the image? */
  LLVMValueRef wv[DIRECT_CONV_K][4];
  for (int k = 0; k < K; k++)
    for (int j = 0; j < NV; j++)
      wv[k][j] = load(g, vt, at(g, w, c64(g, k * q->F + j * g->w)), (unsigned)g->es);
  LLVMValueRef zero = c64(g, 0), fzero = LLVMConstNull(g->elem);
  GLoop lb = loop_begin(g, r0, r1, DIRECT_CONV_BLOCK, "dc.block");
  LLVMValueRef b1 = min64(g, add(g, lb.i, c64(g, DIRECT_CONV_BLOCK)), r1);
  /* the block's pixels P at a time, then the rest one at a time */
  LLVMValueRef whole =
      sub(g, b1, LLVMBuildSRem(g->b, sub(g, b1, lb.i), c64(g, DIRECT_CONV_PIXELS), ""));
  for (int pass = 0; pass < 2; pass++) {
    int P = pass ? 1 : DIRECT_CONV_PIXELS;
    GLoop lp = pass ? loop_begin(g, whole, b1, 1, "dc.px1") : loop_begin(g, lb.i, whole, P, "dc.px");
    LLVMValueRef ih0[DIRECT_CONV_PIXELS], iw0[DIRECT_CONV_PIXELS], acc[DIRECT_CONV_PIXELS][4];
    for (int i = 0; i < P; i++) {
      LLVMValueRef px = add(g, lp.i, c64(g, i));
      LLVMValueRef oh = LLVMBuildUDiv(g->b, px, c64(g, q->OW), "");
      LLVMValueRef ow = sub(g, px, muli(g, oh, q->OW));
      ih0[i] = add(g, muli(g, oh, c->sh), c64(g, -c->pt));
      iw0[i] = add(g, muli(g, ow, c->sw), c64(g, -c->pl));
      for (int j = 0; j < NV; j++) acc[i][j] = LLVMConstNull(vt);
    }
    for (int kh = 0; kh < c->kh; kh++)
      for (int kw = 0; kw < c->kw; kw++)
        for (int i = 0; i < P; i++) {
          LLVMValueRef ih = add(g, ih0[i], c64(g, (int64_t)kh * c->dh));
          LLVMValueRef iw = add(g, iw0[i], c64(g, (int64_t)kw * c->dw));
          LLVMValueRef inside = NULL;
          if (padded) { /* a tap in the padding reads pixel 0 and adds x = 0 */
            inside = LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, LLVMIntULT, ih, c64(g, q->H), ""),
                                  LLVMBuildICmp(g->b, LLVMIntULT, iw, c64(g, q->W), ""), "");
            ih = LLVMBuildSelect(g->b, inside, ih, zero, "");
            iw = LLVMBuildSelect(g->b, inside, iw, zero, "");
          }
          LLVMValueRef pix = muli(g, add(g, muli(g, ih, q->W), iw), q->C);
          for (int ch = 0; ch < q->C; ch++) {
            LLVMValueRef x = load(g, g->elem, at(g, img, add(g, pix, c64(g, ch))), (unsigned)g->es);
            if (inside) x = LLVMBuildSelect(g->b, inside, x, fzero, "");
            LLVMValueRef xv = splat(g, x);
            int k = (kh * c->kw + kw) * (int)q->C + ch;
            for (int j = 0; j < NV; j++) acc[i][j] = vfmuladd(g, xv, wv[k][j], acc[i][j]);
          }
        }
    for (int i = 0; i < P; i++)
      for (int j = 0; j < NV; j++) {
        LLVMValueRef row = sub(g, add(g, lp.i, c64(g, i)), r0);
        store(g, acc[i][j], at(g, y, add(g, muli(g, row, q->F), c64(g, j * g->w))),
              (unsigned)g->es);
      }
    loop_end(g, &lp);
  }
  if (epi.fn)
    run_epilogue(g, epi, add(g, erow, sub(g, lb.i, r0)), add(g, erow, sub(g, b1, r0)), zero,
                 c64(g, q->F));
  loop_end(g, &lb);
}

/* ============================== Winograd F(2x2, 3x3) ============================== */

/* A 3x3 conv2d of stride and dilation 1, over whole vectors of input and output channels (the
 * textbook CNN's conv2), by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, 2016):
 * each 2x2 block of output pixels (a tile) is Aᵀ [U ⊙ V] A, with V = Bᵀ d B from the tile's 4x4
 * input patch d and U = G w Gᵀ from the 3x3 filter, for every pair of channels. Summed over the
 * input channels, the 16 elementwise products of a tile are 16 GEMMs [tiles, Ci] x [Ci, Co]:
 * 2.25x fewer multiply-adds than im2col's [pixels, 9Ci] x [9Ci, Co]. The transforms are
 * additions (and the filter's halvings), vectorized over the channels, which NHWC keeps
 * contiguous. The caller transforms the filter once per call (U, [16][Ci][Co], read by the
 * GEMMs in place); a task transforms its tiles' patches (V, [16][tiles][Ci]), runs the 16 GEMMs
 * into [16][tiles][Co] and transforms those back, keeping the pixels inside the output.
 *
 * The data gradient of such a conv2d is one too: dx = conv2d(dy, w') with w' the filter turned
 * by 180 degrees and its channels swapped (w'[i, j, f, c] = w[2-i, 2-j, c, f]), padded by 2 - p
 * before. And its filter gradient is F(3x3, 2x2), the same idea with the roles turned: per
 * tile, the 3x3 taps of dw[.., .., c, f] are the correlation of the 4x4 patch of x with the 2x2
 * of dy, so dw = A'ᵀ [Σ_tiles (B'ᵀ d B') ⊙ (G' dy G'ᵀ)] A' (B'ᵀ is Bᵀ with its last row negated,
 * G' 4x2, A'ᵀ 3x4): 16 GEMMs [C, tiles] x [tiles, F] summed over a worker's samples in the
 * transformed domain, transformed back once per share. Every sum has a fixed order, so the
 * results do not depend on the threads; they differ from im2col's in rounding only (B and A
 * hold 0 and ±1, G halves, which is exact). --no-winograd turns it off. */
enum { WINOGRAD_MIN_C = 16 }; /* fewer channels: the transforms cost more than they save */

static bool winograd_ok(const Gemm *g, const ConvGeom *q) {
  const ConvAttr *c = q->c;
  return g->winograd && c->kh == 3 && c->kw == 3 && c->sh == 1 && c->sw == 1 && c->dh == 1 &&
         c->dw == 1 && q->C >= WINOGRAD_MIN_C && q->F >= WINOGRAD_MIN_C && q->C % g->w == 0 &&
         q->F % g->w == 0;
}

/* The convolution Winograd computes: image [H, W, Ci] to output [OH, OW, Co], the patch of
 * output pixel (oh, ow) starting at input pixel (oh - pt, ow - pl). */
typedef struct Wino {
  int64_t H, W, Ci, OH, OW, Co, pt, pl;
  bool data_grad; /* the filter is read turned and with its channels swapped */
} Wino;

static Wino wino_of(const Node *n, const ConvGeom *q) {
  const ConvAttr *c = q->c;
  if (n->op == OP_CONV2D_BWD_DATA)
    return (Wino){q->OH, q->OW, q->F, q->H, q->W, q->C, 2 - c->pt, 2 - c->pl, true};
  return (Wino){q->H, q->W, q->C, q->OH, q->OW, q->F, c->pt, c->pl, false};
}

/* Tile rows and tiles per row of the output. */
static int64_t tile_rows(const Wino *z) { return (z->OH + 1) / 2; }
static int64_t tile_cols(const Wino *z) { return (z->OW + 1) / 2; }

/* Elements from one of U's 16 matrices to the next: Ci x Co and a vector, so that the 16 rows
 * a step of winograd_filter stores (and the 9 it loads, Ci x Co apart) do not all share their
 * address's low 12 bits, which stalls loads behind unrelated stores (4K aliasing: it cost 2.8
 * of the CNN's 23 us at batch 1, with Ci x Co = 2048 elements, 8 KB, apart) */
static int64_t u_plane(const Gemm *g, const Wino *z) { return z->Ci * z->Co + g->w; }

/* Scratch elements of one worker's V and M for a whole sample. */
static int64_t winograd_scratch(const Wino *z) {
  int64_t tiles = tile_rows(z) * tile_cols(z);
  return round16(16 * tiles * z->Ci) + round16(16 * tiles * z->Co);
}

static LLVMValueRef fadd(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFAdd(g->b, a, b, "");
}
static LLVMValueRef fsub(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFSub(g->b, a, b, "");
}

/* The 1-D transforms, on vectors: out = L·in for L = Bᵀ (4x4), G (4x3) and Aᵀ (2x4). */
typedef void (*Transform1)(Gemm *g, const LLVMValueRef *in, LLVMValueRef *out);

static void wino_bt(Gemm *g, const LLVMValueRef *d, LLVMValueRef *o) {
  o[0] = fsub(g, d[0], d[2]), o[1] = fadd(g, d[1], d[2]);
  o[2] = fsub(g, d[2], d[1]), o[3] = fsub(g, d[1], d[3]);
}
static void wino_g(Gemm *g, const LLVMValueRef *w, LLVMValueRef *o) {
  LLVMValueRef half = splat(g, LLVMConstReal(g->elem, 0.5)), ends = fadd(g, w[0], w[2]);
  o[0] = w[0], o[3] = w[2];
  o[1] = LLVMBuildFMul(g->b, fadd(g, ends, w[1]), half, "");
  o[2] = LLVMBuildFMul(g->b, fsub(g, ends, w[1]), half, "");
}
static void wino_at(Gemm *g, const LLVMValueRef *m, LLVMValueRef *o) {
  o[0] = fadd(g, fadd(g, m[0], m[1]), m[2]);
  o[1] = fsub(g, fsub(g, m[1], m[2]), m[3]);
}
/* F(3x3, 2x2)'s, for the filter gradient: B'ᵀ (4x4), G' (4x2), A'ᵀ (3x4) */
static void wino_bt3(Gemm *g, const LLVMValueRef *d, LLVMValueRef *o) {
  o[0] = fsub(g, d[0], d[2]), o[1] = fadd(g, d[1], d[2]);
  o[2] = fsub(g, d[2], d[1]), o[3] = fsub(g, d[3], d[1]);
}
static void wino_g2(Gemm *g, const LLVMValueRef *y, LLVMValueRef *o) {
  LLVMValueRef half = splat(g, LLVMConstReal(g->elem, 0.5));
  o[0] = y[0], o[3] = y[1];
  o[1] = LLVMBuildFMul(g->b, fadd(g, y[0], y[1]), half, "");
  o[2] = LLVMBuildFMul(g->b, fsub(g, y[0], y[1]), half, "");
}
static void wino_at3(Gemm *g, const LLVMValueRef *m, LLVMValueRef *o) {
  LLVMValueRef mid = fadd(g, m[1], m[2]);
  o[0] = fadd(g, m[0], mid), o[1] = fsub(g, m[1], m[2]), o[2] = fadd(g, mid, m[3]);
}

/* out = L · in · Lᵀ for in n x n (row-major) and L m x n: the columns, then the rows. */
static void wino_2d(Gemm *g, Transform1 f, int n, int m, const LLVMValueRef *in,
                    LLVMValueRef *out) {
  LLVMValueRef cols[4][4], v[4], r[4]; /* cols[a][j]: row a of L · in */
  for (int j = 0; j < n; j++) {
    for (int i = 0; i < n; i++) v[i] = in[i * n + j];
    f(g, v, r);
    for (int a = 0; a < m; a++) cols[a][j] = r[a];
  }
  for (int a = 0; a < m; a++) {
    f(g, cols[a], r);
    for (int b = 0; b < m; b++) out[a * m + b] = r[b];
  }
}

/* u[e][i][o] = (G w'[.., .., i, o] Gᵀ)[e] for the conv2d's filter w [3, 3, C, F]: w' = w, or
 * for the data gradient w' [3, 3, F, C] turned and swapped, its vectors over o = c gathered
 * from F apart (once per call, for a batch). */
static void winograd_filter(Gemm *g, const Wino *z, LLVMValueRef u, LLVMValueRef w) {
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  LLVMTypeRef i32 = LLVMInt32TypeInContext(g->ctx);
  int64_t taps = z->Ci * z->Co; /* elements of w from one tap to the next */
  GLoop li = loop_begin(g, c64(g, 0), c64(g, z->Ci), 1, "wf.i");
  GLoop lo = loop_begin(g, c64(g, 0), c64(g, z->Co), g->w, "wf.o");
  LLVMValueRef tap[9], e[16], at_io = add(g, muli(g, li.i, z->Co), lo.i);
  for (int t = 0; t < 9; t++) {
    if (!z->data_grad) {
      tap[t] = load(g, vt, at(g, w, add(g, at_io, c64(g, t * taps))), (unsigned)g->es);
      continue;
    }
    LLVMValueRef base = add(g, muli(g, lo.i, z->Ci), add(g, li.i, c64(g, (8 - t) * taps)));
    tap[t] = LLVMGetPoison(vt);
    for (int l = 0; l < g->w; l++) {
      LLVMValueRef x = load(g, g->elem, at(g, w, add(g, base, c64(g, l * z->Ci))), (unsigned)g->es);
      tap[t] = LLVMBuildInsertElement(g->b, tap[t], x, LLVMConstInt(i32, (unsigned)l, 0), "");
    }
  }
  wino_2d(g, wino_g, 3, 4, tap, e);
  for (int k = 0; k < 16; k++)
    store(g, e[k], at(g, u, add(g, at_io, c64(g, k * u_plane(g, z)))), (unsigned)g->es);
  loop_end(g, &lo);
  loop_end(g, &li);
}

/* The w channels from c of pixel (r, x) of an image [., width, channels], or 0 where `in` (the
 * pixel is inside) is false: pixel 0 is read then, and dropped. */
static LLVMValueRef pixel_or_zero(Gemm *g, LLVMValueRef img, LLVMValueRef in, LLVMValueRef r,
                                  LLVMValueRef x, int64_t width, int64_t channels,
                                  LLVMValueRef c) {
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  LLVMValueRef pix = LLVMBuildSelect(g->b, in, add(g, muli(g, r, width), x), c64(g, 0), "");
  LLVMValueRef v = load(g, vt, at(g, img, add(g, muli(g, pix, channels), c)), (unsigned)g->es);
  return LLVMBuildSelect(g->b, in, v, LLVMConstNull(vt), "");
}

/* v[e][t][c] = (Bᵀ d B)[e] (or B'ᵀ's) for the tiles t of tile rows [tr0, tr1) (nt of them),
 * d the tile's 4x4 patch of the sample's image img [H, W, Ci], 0 outside it */
static void winograd_input(Gemm *g, const Wino *z, Transform1 bt, LLVMValueRef v,
                           LLVMValueRef img, LLVMValueRef tr0, LLVMValueRef tr1, LLVMValueRef nt) {
  int64_t TW = tile_cols(z);
  LLVMValueRef zero = c64(g, 0), plane = muli(g, nt, z->Ci);
  GLoop lh = loop_begin(g, tr0, tr1, 1, "wi.th");
  GLoop lw = loop_begin(g, zero, c64(g, TW), 1, "wi.tw");
  LLVMValueRef t = add(g, muli(g, sub(g, lh.i, tr0), TW), lw.i);
  LLVMValueRef ih[4], iw[4], hin[4], win[4];
  for (int i = 0; i < 4; i++) { /* the patch's rows and columns, and whether inside */
    ih[i] = add(g, muli(g, lh.i, 2), c64(g, i - z->pt));
    iw[i] = add(g, muli(g, lw.i, 2), c64(g, i - z->pl));
    hin[i] = LLVMBuildICmp(g->b, LLVMIntULT, ih[i], c64(g, z->H), "");
    win[i] = LLVMBuildICmp(g->b, LLVMIntULT, iw[i], c64(g, z->W), "");
  }
  GLoop lc = loop_begin(g, zero, c64(g, z->Ci), g->w, "wi.c");
  LLVMValueRef d[16], e[16];
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++)
      d[i * 4 + j] = pixel_or_zero(g, img, LLVMBuildAnd(g->b, hin[i], win[j], ""), ih[i], iw[j],
                                   z->W, z->Ci, lc.i);
  wino_2d(g, bt, 4, 4, d, e);
  LLVMValueRef at_t = add(g, muli(g, t, z->Ci), lc.i);
  for (int k = 0; k < 16; k++)
    store(g, e[k], at(g, v, add(g, mul(g, c64(g, k), plane), at_t)), (unsigned)g->es);
  loop_end(g, &lc);
  loop_end(g, &lw);
  loop_end(g, &lh);
}

/* The sample's output y [OH, OW, Co] for tile rows [tr0, tr1) from m[e][t][o] (nt tiles):
 * Aᵀ m A per tile, the pixels past the output's last row or column dropped. */
static void winograd_output(Gemm *g, const Wino *z, LLVMValueRef y, LLVMValueRef m,
                            LLVMValueRef tr0, LLVMValueRef tr1, LLVMValueRef nt) {
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  int64_t TW = tile_cols(z);
  LLVMValueRef zero = c64(g, 0), plane = muli(g, nt, z->Co);
  GLoop lh = loop_begin(g, tr0, tr1, 1, "wo.th");
  GLoop lw = loop_begin(g, zero, c64(g, TW), 1, "wo.tw");
  LLVMValueRef t = add(g, muli(g, sub(g, lh.i, tr0), TW), lw.i);
  LLVMValueRef oh = muli(g, lh.i, 2), ow = muli(g, lw.i, 2);
  /* an odd extent's last tile row (column) has one output row (column) */
  LLVMValueRef row2 = z->OH % 2 ? LLVMBuildICmp(g->b, LLVMIntSLT, add(g, oh, c64(g, 1)),
                                                c64(g, z->OH), "") : NULL;
  LLVMValueRef col2 = z->OW % 2 ? LLVMBuildICmp(g->b, LLVMIntSLT, add(g, ow, c64(g, 1)),
                                                c64(g, z->OW), "") : NULL;
  GLoop lf = loop_begin(g, zero, c64(g, z->Co), g->w, "wo.o");
  LLVMValueRef e[16], o[4];
  LLVMValueRef at_t = add(g, muli(g, t, z->Co), lf.i);
  for (int k = 0; k < 16; k++)
    e[k] = load(g, vt, at(g, m, add(g, mul(g, c64(g, k), plane), at_t)), (unsigned)g->es);
  wino_2d(g, wino_at, 4, 2, e, o);
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 2; b++) {
      LLVMValueRef keep = a && row2 ? row2 : NULL;
      if (b && col2) keep = keep ? LLVMBuildAnd(g->b, keep, col2, "") : col2;
      GIf f = {0};
      if (keep) f = if_begin(g, keep, "wo.keep");
      LLVMValueRef pix = add(g, muli(g, add(g, oh, c64(g, a)), z->OW), add(g, ow, c64(g, b)));
      store(g, o[a * 2 + b], at(g, y, add(g, muli(g, pix, z->Co), lf.i)), (unsigned)g->es);
      if (keep) if_end(g, &f);
    }
  loop_end(g, &lf);
  loop_end(g, &lw);
  loop_end(g, &lh);
}

/* yh[e][t][f] = (G' dy G'ᵀ)[e] for every tile t of the sample's output gradient dy [OH, OW,
 * Co], 0 past its last row and column */
static void winograd_dy(Gemm *g, const Wino *z, LLVMValueRef yh, LLVMValueRef dy) {
  int64_t TW = tile_cols(z), plane = tile_rows(z) * TW * z->Co;
  LLVMValueRef zero = c64(g, 0);
  GLoop lh = loop_begin(g, zero, c64(g, tile_rows(z)), 1, "wy.th");
  GLoop lw = loop_begin(g, zero, c64(g, TW), 1, "wy.tw");
  LLVMValueRef t = add(g, muli(g, lh.i, TW), lw.i);
  LLVMValueRef oh = muli(g, lh.i, 2), ow = muli(g, lw.i, 2);
  GLoop lf = loop_begin(g, zero, c64(g, z->Co), g->w, "wy.f");
  LLVMValueRef d[4], e[16];
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 2; b++) { /* 0 past the end */
      LLVMValueRef ih = add(g, oh, c64(g, a)), iw = add(g, ow, c64(g, b));
      LLVMValueRef in = LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, ih, c64(g, z->OH), ""),
                                     LLVMBuildICmp(g->b, LLVMIntSLT, iw, c64(g, z->OW), ""), "");
      d[a * 2 + b] = pixel_or_zero(g, dy, in, ih, iw, z->OW, z->Co, lf.i);
    }
  wino_2d(g, wino_g2, 2, 4, d, e);
  LLVMValueRef at_t = add(g, muli(g, t, z->Co), lf.i);
  for (int k = 0; k < 16; k++)
    store(g, e[k], at(g, yh, add(g, at_t, c64(g, k * plane))), (unsigned)g->es);
  loop_end(g, &lf);
  loop_end(g, &lw);
  loop_end(g, &lh);
}

/* dw [3, 3, Ci, Co] = (A'ᵀ m A') from a share's sum m[e][c][f] (u_plane apart) */
static void winograd_dw(Gemm *g, const Wino *z, LLVMValueRef dw, LLVMValueRef m) {
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  int64_t CF = z->Ci * z->Co;
  GLoop lf = loop_begin(g, c64(g, 0), c64(g, CF), g->w, "ww"); /* c * Co + f, w at a time */
  LLVMValueRef e[16], o[9];
  for (int k = 0; k < 16; k++)
    e[k] = load(g, vt, at(g, m, add(g, lf.i, c64(g, k * u_plane(g, z)))), (unsigned)g->es);
  wino_2d(g, wino_at3, 4, 3, e, o);
  for (int t = 0; t < 9; t++)
    store(g, o[t], at(g, dw, add(g, lf.i, c64(g, t * CF))), (unsigned)g->es);
  loop_end(g, &lf);
}

/* Scratch elements of a filter gradient's sum in the transformed domain. */
static int64_t winograd_sum(const Gemm *g, const Wino *z) { return round16(16 * u_plane(g, z)); }

/* A GEMM from a conv: fills a job on this function's stack and calls nn.gemm, on one worker
 * (inside a conv worker: threads NULL, so the scratch stride does not matter) or on the
 * threads, each worker packing at scratch + w * sstride. */
typedef struct ConvThreads {
  LLVMValueRef threads, sstride; /* NULL: the conv is one worker's */
} ConvThreads;

static void conv_gemm(Gemm *g, const GemmArgs *a, LLVMValueRef scratch, ConvThreads t) {
  LLVMValueRef job = entry_alloca(g, g->b, g->job_type, "gemm.job");
  fill_job(g, g->b, job, a, scratch, t.threads ? t.sstride : c64(g, 0));
  LLVMBuildCall2(g->b, LLVMGlobalGetValueType(g->gemm), g->gemm,
                 (LLVMValueRef[]){job, t.threads ? t.threads : LLVMConstNull(g->ptr)}, 2, "");
}

/* A filter gradient's GEMM on one worker: C = A·B for a share's first sample (`first`, an
 * i1), C += A·B for the others (beta is a runtime value: the job's field is overwritten after
 * filling). */
static void gemm_sum(Gemm *g, const GemmArgs *a, LLVMValueRef scratch, LLVMValueRef first) {
  LLVMValueRef job = entry_alloca(g, g->b, g->job_type, "gemm.job");
  fill_job(g, g->b, job, a, scratch, c64(g, 0));
  set(g, g->b, g->job_type, job, J_BETA,
      LLVMBuildZExt(g->b, LLVMBuildNot(g->b, first, ""), g->i64, ""));
  LLVMBuildCall2(g->b, LLVMGlobalGetValueType(g->gemm), g->gemm,
                 (LLVMValueRef[]){job, LLVMConstNull(g->ptr)}, 2, "");
}

/* Output pixels [r0, r1) of one sample (tile-row boundaries, or r1 = OH*OW) into y, the
 * sample's output, from its image img and the transformed filter u, in the worker's scratch
 * scr (V, then M, then the GEMM's own), the GEMMs on the threads t; then the epilogue on rows
 * erow + [0, r1 - r0). */
static void winograd_sample(Gemm *g, const Wino *z, LLVMValueRef img, LLVMValueRef u,
                            LLVMValueRef y, LLVMValueRef r0, LLVMValueRef r1, LLVMValueRef scr,
                            ConvThreads th, GemmEpilogue epi, LLVMValueRef erow) {
  int64_t TW = tile_cols(z), tiles = tile_rows(z) * TW;
  LLVMValueRef tr0 = LLVMBuildSDiv(g->b, r0, c64(g, 2 * z->OW), "tr0");
  LLVMValueRef tr1 = cdiv(g, r1, c64(g, 2 * z->OW)), nt = muli(g, sub(g, tr1, tr0), TW);
  LLVMValueRef v = scr, m = at(g, scr, c64(g, round16(16 * tiles * z->Ci)));
  winograd_input(g, z, wino_bt, v, img, tr0, tr1, nt);
  GemmArgs a = {.m = nt, .n = c64(g, z->Co), .k = c64(g, z->Ci), .batch = c64(g, 16),
                .a = v, .rsa = c64(g, z->Ci), .csa = c64(g, 1), .sa = muli(g, nt, z->Ci),
                .b = u, .rsb = c64(g, z->Co), .csb = c64(g, 1), .sb = c64(g, u_plane(g, z)),
                .c = m, .ldc = c64(g, z->Co), .sc = muli(g, nt, z->Co)};
  conv_gemm(g, &a, at(g, scr, c64(g, winograd_scratch(z))), th);
  winograd_output(g, z, y, m, tr0, tr1, nt);
  if (epi.fn) run_epilogue(g, epi, erow, add(g, erow, sub(g, r1, r0)), c64(g, 0), c64(g, z->Co));
}

/* B of a conv2d (the filter, TC x F) or data gradient (its transpose, F x TC): K x N, read
 * through the filter with strides rsb, csb. */
typedef struct ConvB {
  int64_t k, cols, rsb, csb;
} ConvB;

static ConvB conv_b(const Node *n, const ConvGeom *q) {
  int64_t TC = q->T * q->C;
  return n->op == OP_CONV2D ? (ConvB){TC, q->F, q->F, 1} : (ConvB){q->F, TC, 1, q->F};
}

/* Calls hook h on sample s, with dst (NULL: none). */
static void run_hook(Gemm *g, ConvHook h, LLVMValueRef s, LLVMValueRef dst) {
  LLVMBuildCall2(g->b, g->sample_type, h.fn,
                 (LLVMValueRef[]){h.ctx, s, dst ? dst : LLVMConstNull(g->ptr)}, 3, "");
}

/* One sample s of node n on the worker whose scratch (past the first region, conv_region0) is
 * `scr` (or on the threads t, from worker 0's scratch); conv2d: only its output pixels [r0,
 * r1); conv2d and the data gradient: `wp` is the filter in the GEMM's B panels (the caller
 * packs it once for all samples); `dst` and `first` are for the filter gradient (its
 * per-worker sum and whether s is the worker's first sample). */
static void conv_sample(Gemm *g, const Node *n, const ConvGeom *q, LLVMValueRef s,
                        LLVMValueRef r0, LLVMValueRef r1, LLVMValueRef p[3], LLVMValueRef scr,
                        LLVMValueRef wp, LLVMValueRef dst, LLVMValueRef first, ConvThreads t,
                        GemmEpilogue epi, ConvHook hook) {
  int64_t TC = q->T * q->C, rows = q->OH * q->OW;
  LLVMValueRef col = scr, gs = at(g, scr, c64(g, round16(rows * TC)));
  LLVMValueRef one = c64(g, 1), zero = c64(g, 0), all = c64(g, rows);
  LLVMValueRef img_elems = c64(g, q->H * q->W * q->C), out_elems = c64(g, rows * q->F);
  GemmArgs a = {.batch = one, .sa = zero, .sb = zero, .sc = zero};
  LLVMValueRef panels = wp ? LLVMBuildIsNotNull(g->b, wp, "") : NULL;
  if (panels) { /* B: the filter's panels, or the filter through its strides */
    ConvB cb = conv_b(n, q);
    a.b = LLVMBuildSelect(g->b, panels, wp, p[2], "");
    a.rsb = LLVMBuildSelect(g->b, panels, zero, c64(g, cb.rsb), "");
    a.csb = LLVMBuildSelect(g->b, panels, zero, c64(g, cb.csb), "");
    a.b_panels = LLVMBuildZExt(g->b, panels, g->i64, "");
  }
  bool tap_major = q->C < TAP_MAJOR_C;
  switch (n->op) {
  case OP_CONV2D: { /* y[s] = im2col(x[s]) · w */
    ColCtx x = {q, col, at(g, p[1], mul(g, s, img_elems))};
    a.m = sub(g, r1, r0), a.n = c64(g, q->F), a.k = c64(g, TC);
    if (winograd_ok(g, q)) { /* wp: the transformed filter */
      Wino z = wino_of(n, q);
      winograd_sample(g, &z, x.img, wp, at(g, p[0], mul(g, s, out_elems)), r0, r1, scr, t, epi,
                      add(g, mul(g, s, c64(g, rows)), r0));
      break;
    }
    if (conv_direct_ok(g, q)) {
      conv_direct(g, q, x.img, p[2], at(g, p[0], add(g, mul(g, s, out_elems), muli(g, r0, q->F))),
                  r0, r1, epi, add(g, mul(g, s, c64(g, rows)), r0));
      break;
    }
    if (tap_major) { /* A is the transposed matrix's transpose */
      im2col_tap_major(g, q, col, x.img, r0, r1);
      a.a = col, a.rsa = one, a.csa = a.m;
    } else {
      for_taps(g, q, r0, r1, im2col_body, true, &x);
      a.a = col, a.rsa = c64(g, TC), a.csa = one;
    }
    a.c = at(g, p[0], add(g, mul(g, s, out_elems), muli(g, r0, q->F))), a.ldc = c64(g, q->F);
    a.epilogue = epi.fn, a.epilogue_ctx = epi.ctx;
    a.epilogue_row = add(g, mul(g, s, c64(g, rows)), r0);
    conv_gemm(g, &a, gs, t);
    break;
  }
  case OP_CONV2D_BWD_DATA: { /* dx[s] = col2im(g[s] · wᵀ) */
    if (winograd_ok(g, q)) { /* a conv2d of g[s] (wp: the turned filter, transformed) */
      Wino z = wino_of(n, q);
      winograd_sample(g, &z, at(g, p[1], mul(g, s, out_elems)), wp,
                      at(g, p[0], mul(g, s, img_elems)), zero, c64(g, q->H * q->W), scr, t,
                      (GemmEpilogue){0}, NULL);
      break;
    }
    a.m = c64(g, rows), a.n = c64(g, TC), a.k = c64(g, q->F);
    a.a = at(g, p[1], mul(g, s, out_elems)), a.rsa = c64(g, q->F), a.csa = one;
    a.c = col, a.ldc = c64(g, TC);
    conv_gemm(g, &a, gs, t);
    LLVMValueRef img = at(g, p[0], mul(g, s, img_elems));
    LLVMBuildMemSet(g->b, img, LLVMConstInt(LLVMInt8TypeInContext(g->ctx), 0, 0),
                    c64(g, q->H * q->W * q->C * g->es), (unsigned)g->es);
    ColCtx x = {q, col, img};
    for_taps(g, q, zero, all, col2im_body, false, &x);
    break;
  }
  case OP_CONV2D_BWD_FILTER: { /* dw (+)= im2col(x[s])ᵀ · g[s] */
    ColCtx x = {q, col, at(g, p[1], mul(g, s, img_elems))};
    if (winograd_ok(g, q)) { /* m (+)= Σ_e V[e]ᵀ Yh[e] in scr; emit_conv_work turns it */
      Wino z = wino_of(n, q);
      int64_t tiles = tile_rows(&z) * tile_cols(&z);
      LLVMValueRef v = at(g, scr, c64(g, winograd_sum(g, &z)));
      LLVMValueRef yh = at(g, v, c64(g, round16(16 * tiles * z.Ci)));
      LLVMValueRef wgs = at(g, v, c64(g, winograd_scratch(&z)));
      LLVMValueRef dy = at(g, p[2], mul(g, s, out_elems));
      if (hook.fn) { /* the sample's output gradient, made here, past the GEMM's packing */
        dy = at(g, wgs, c64(g, gemm_scratch(g)));
        run_hook(g, hook, s, dy);
      }
      winograd_input(g, &z, wino_bt3, v, x.img, zero, c64(g, tile_rows(&z)), c64(g, tiles));
      winograd_dy(g, &z, yh, dy);
      GemmArgs wa = {.m = c64(g, z.Ci), .n = c64(g, z.Co), .k = c64(g, tiles), .batch = c64(g, 16),
                     .a = v, .rsa = one, .csa = c64(g, z.Ci), .sa = c64(g, tiles * z.Ci),
                     .b = yh, .rsb = c64(g, z.Co), .csb = one, .sb = c64(g, tiles * z.Co),
                     .c = scr, .ldc = c64(g, z.Co), .sc = c64(g, u_plane(g, &z))};
      gemm_sum(g, &wa, wgs, first);
      break;
    }
    a.m = c64(g, TC), a.n = c64(g, q->F), a.k = c64(g, rows);
    if (tap_major) { /* A is row-major: the micro-kernel reads it in place */
      im2col_tap_major(g, q, col, x.img, zero, all);
      a.a = col, a.rsa = all, a.csa = one;
    } else if (q->C % g->mr == 0) { /* A in the micro-kernel's panels already */
      PanelCtx pc = {q, col, x.img, g->mr};
      for_taps(g, q, zero, all, im2col_panels_body, true, &pc);
      a.a = col, a.rsa = zero, a.csa = zero, a.a_panels = true;
    } else {
      for_taps(g, q, zero, all, im2col_body, true, &x);
      a.a = col, a.rsa = one, a.csa = c64(g, TC);
    }
    a.b = at(g, p[2], mul(g, s, out_elems)), a.rsb = c64(g, q->F), a.csb = one;
    if (hook.fn) { /* the sample's output gradient, made here, past the GEMM's packing */
      a.b = at(g, gs, c64(g, gemm_scratch(g)));
      run_hook(g, hook, s, a.b);
    }
    a.c = dst, a.ldc = c64(g, q->F);
    gemm_sum(g, &a, gs, first);
    break;
  }
  default: unreachable();
  }
}

/* Elements of a worker's first scratch region: the filter gradient's partial sum, or (worker
 * 0's) the filter in B panels, packed once per call for every sample's GEMM. */
static int64_t conv_region0(const Gemm *g, const Node *n, const ConvGeom *q) {
  ConvB cb = conv_b(n, q);
  int64_t panels = cb.k * ((cb.cols + g->nr - 1) / g->nr) * g->nr, sum = q->T * q->C * q->F;
  Wino z = wino_of(n, q);
  if (winograd_ok(g, q) && n->op != OP_CONV2D_BWD_FILTER)
    panels = 16 * u_plane(g, &z); /* the transformed filter */
  return round16(panels > sum ? panels : sum);
}

/* Scratch elements one worker of node n uses: the first region, the im2col matrix, the GEMM's
 * packing. */
static int64_t conv_scratch(const Gemm *g, const Node *n, const ConvGeom *q, bool hook) {
  int64_t col = round16(q->OH * q->OW * q->T * q->C);
  if (n->op == OP_CONV2D && conv_direct_ok(g, q)) col = 0; /* no im2col */
  Wino z = wino_of(n, q);
  if (winograd_ok(g, q)) { /* V and M; the filter gradient's sum first, and Yh for M */
    int64_t wino = winograd_scratch(&z) + (n->op == OP_CONV2D_BWD_FILTER ? winograd_sum(g, &z) : 0);
    if (wino > col) col = wino;
  }
  return conv_region0(g, n, q) + col + gemm_scratch(g) +
         (hook ? round16(q->OH * q->OW * q->F) : 0);
}

/* Share k of the filter gradient's samples: [ceil(k*B/W), ceil((k+1)*B/W)), so share 0
 * always has one when B >= 1. */
static LLVMValueRef share(Gemm *g, LLVMValueRef w, LLVMValueRef batch, LLVMValueRef workers) {
  return cdiv(g, mul(g, w, batch), workers);
}

/* nn.conv.N(job, w) */
static LLVMValueRef emit_conv_work(Gemm *g, const Node *n, const ConvGeom *q, LLVMValueRef hook) {
  char name[48];
  snprintf(name, sizeof name, "nn.conv.%d", n->id);
  LLVMTypeRef params[2] = {g->ptr, g->i64};
  LLVMValueRef fn = function(g, name, params, 2);
  LLVMTypeRef J = g->conv_type;
  LLVMValueRef job = LLVMGetParam(fn, 0), w = LLVMGetParam(fn, 1);
  LLVMValueRef p[3] = {get(g, J, job, CJ_OUT), get(g, J, job, CJ_SRC0), get(g, J, job, CJ_SRC1)};
  LLVMValueRef batch = get(g, J, job, CJ_BATCH);
  ConvHook h = {hook, hook ? get(g, J, job, CJ_HOOK_CTX) : NULL};
  LLVMValueRef scr = byte_at(g, get(g, J, job, CJ_SCRATCH), mul(g, w, get(g, J, job, CJ_SSTRIDE)));
  if (n->op == OP_CONV2D_BWD_FILTER) {
    /* `workers` fixed shares of the batch, each summed into its own buffer (share 0 straight
     * into the result, share k at the start of worker k's scratch), taken by whichever worker
     * comes first; the im2col and packing space is the taker's own */
    LLVMValueRef base = get(g, J, job, CJ_SCRATCH), sstride = get(g, J, job, CJ_SSTRIDE);
    LLVMValueRef workers = get(g, J, job, CJ_WORKERS);
    LLVMValueRef rest = at(g, scr, c64(g, conv_region0(g, n, q)));
    TaskLoop share_k = tasks_begin(g, field_ptr(g, J, job, CJ_NEXT), workers, w);
    LLVMValueRef k = share_k.i;
    LLVMValueRef lo = share(g, k, batch, workers);
    LLVMValueRef hi = share(g, add(g, k, c64(g, 1)), batch, workers);
    LLVMValueRef dst = LLVMBuildSelect(g->b, LLVMBuildICmp(g->b, LLVMIntEQ, k, c64(g, 0), ""),
                                       p[0], byte_at(g, base, mul(g, k, sstride)), "");
    GLoop ls = loop_begin(g, lo, hi, 1, "s");
    conv_sample(g, n, q, ls.i, NULL, NULL, p, rest, NULL, dst,
                LLVMBuildICmp(g->b, LLVMIntEQ, ls.i, lo, ""), (ConvThreads){0}, (GemmEpilogue){0},
                h);
    loop_end(g, &ls);
    if (winograd_ok(g, q)) { /* the share's sum, transformed back */
      Wino z = wino_of(n, q);
      GIf some = if_begin(g, LLVMBuildICmp(g->b, LLVMIntSLT, lo, hi, ""), "wino.dw");
      winograd_dw(g, &z, dst, rest);
      if_end(g, &some);
    }
    tasks_end(g, &share_k);
  } else { /* samples handed out one at a time; conv2d's in `chunks` ranges of output pixels,
            * on mr-row panel boundaries, each im2col'ed by the worker that multiplies it */
    LLVMValueRef chunks = get(g, J, job, CJ_CHUNKS);
    LLVMTypeRef i1 = LLVMInt1TypeInContext(g->ctx);
    LLVMValueRef own_u = entry_alloca(g, g->b, i1, "own.u"); /* the worker transformed w */
    store(g, LLVMConstInt(i1, 0, 0), own_u, 0);
    TaskLoop task = tasks_begin(g, field_ptr(g, J, job, CJ_NEXT), mul(g, batch, chunks), w);
    LLVMValueRef s = LLVMBuildSDiv(g->b, task.i, chunks, "s");
    LLVMValueRef ci = sub(g, task.i, mul(g, s, chunks));
    LLVMValueRef rows = c64(g, q->OH * q->OW), panels = cdiv(g, rows, c64(g, g->mr));
    int64_t size = g->mr; /* a range: whole panels of the GEMM's rows, or Winograd's tile rows */
    Wino z = wino_of(n, q);
    if (winograd_ok(g, q)) { /* the first ranges a tile row longer (worker 0 takes them, and
                               * it starts first): 3 + 2 of 5, not 2 + 3 */
      panels = c64(g, tile_rows(&z)), size = 2 * q->OW;
      ci = sub(g, chunks, add(g, ci, c64(g, 1))); /* counted from the end */
    }
    LLVMValueRef r0 = min64(g, rows, block_start(g, ci, panels, chunks, size));
    LLVMValueRef r1 = min64(g, rows, block_start(g, add(g, ci, c64(g, 1)), panels, chunks, size));
    GemmEpilogue epi = {get(g, J, job, CJ_EPI), get(g, J, job, CJ_EPI_CTX)};
    LLVMValueRef wp = get(g, J, job, CJ_WPANELS);
    if (winograd_ok(g, q)) { /* no filter from the caller: the worker's own, once */
      LLVMValueRef none = LLVMBuildIsNull(g->b, wp, "");
      LLVMValueRef done = load(g, i1, own_u, 0);
      GIf f = if_begin(g, LLVMBuildAnd(g->b, none, LLVMBuildNot(g->b, done, ""), ""), "wino.own");
      winograd_filter(g, &z, scr, p[2]);
      store(g, LLVMConstInt(i1, 1, 0), own_u, 0);
      if_end(g, &f);
      wp = LLVMBuildSelect(g->b, none, scr, wp, "");
    }
    conv_sample(g, n, q, s, r0, r1, p, at(g, scr, c64(g, conv_region0(g, n, q))), wp, NULL,
                NULL, (ConvThreads){0}, epi, h);
    if (hook) { /* conv2d: the sample is done, unless cut into pixel ranges */
      GIf whole = if_begin(g, LLVMBuildICmp(g->b, LLVMIntEQ, chunks, c64(g, 1), ""), "hook");
      run_hook(g, h, s, NULL);
      if_end(g, &whole);
    }
    tasks_end(g, &task);
  }
  LLVMBuildRetVoid(g->b);
  return fn;
}

void lower_conv_call(Gemm *g, LLVMBuilderRef b, const Node *n, LLVMValueRef out, LLVMValueRef src0,
                     LLVMValueRef src1, LLVMValueRef batch, LLVMValueRef threads,
                     LLVMValueRef scratch, GemmEpilogue epi, ConvHook hook) {
  ensure_gemm(g);
  if (!epi.fn) epi = (GemmEpilogue){LLVMConstNull(g->ptr), LLVMConstNull(g->ptr)};
  if (hook.fn && n->op == OP_CONV2D_BWD_DATA) unreachable();
  ConvGeom q = geometry(n);
  need_scratch(g, conv_scratch(g, n, &q, hook.fn && n->op == OP_CONV2D_BWD_FILTER));
  LLVMValueRef work = emit_conv_work(g, n, &q, hook.fn);
  /* from here on, build in the caller's function */
  LLVMBuilderRef own = g->b;
  g->b = b;
  LLVMTypeRef J = g->conv_type;
  LLVMValueRef job = entry_alloca(g, b, J, "conv.job");
  LLVMValueRef workers = workers_of(g, threads);
  LLVMValueRef parallel = LLVMBuildICmp(b, LLVMIntSGT, min64(g, workers, batch), c64(g, 1), "");
  LLVMValueRef sstride = LLVMBuildLoad2(b, g->i64, g->scratch_bytes, "");
  GIf by_sample = {0};
  LLVMValueRef few = LLVMBuildAnd(b, LLVMBuildICmp(b, LLVMIntSGT, workers, c64(g, 1), ""),
                                  LLVMBuildICmp(b, LLVMIntSLT, batch, workers, ""), "");
  LLVMValueRef wpanels = LLVMConstNull(g->ptr);
  bool direct = n->op == OP_CONV2D && conv_direct_ok(g, &q); /* reads the filter as it is */
  bool wino = winograd_ok(g, &q) && n->op != OP_CONV2D_BWD_FILTER;
  Wino z = wino_of(n, &q);
  if (wino) {
    /* the filter transformed once for all the samples, unless a conv2d has fewer samples than
     * workers (one sample's inference): each worker then transforms its own (emit_conv_work),
     * which stays in its cache, rather than read the caller's, which the caller's next call
     * would take back line by line (50 us a call instead of 18) */
    LLVMValueRef own = n->op == OP_CONV2D ? few : LLVMConstInt(LLVMInt1TypeInContext(g->ctx), 0, 0);
    GIf once = if_begin(g, LLVMBuildNot(b, own, ""), "wino.u");
    winograd_filter(g, &z, scratch, src1);
    if_end(g, &once);
    wpanels = LLVMBuildSelect(b, own, LLVMConstNull(g->ptr), scratch, "wpanels");
  } else if (n->op != OP_CONV2D_BWD_FILTER && !direct) {
    /* the filter in B panels, packed once for all the samples, unless there are fewer samples
     * than workers (one sample's inference): each worker then packs its own from the filter,
     * which stays in its cache from call to call, rather than read the caller's */
    ConvB cb = conv_b(n, &q);
    GIf once = if_begin(g, LLVMBuildNot(b, few, ""), "pack.w");
    pack_b(g, scratch, src1, c64(g, cb.rsb), c64(g, cb.csb), c64(g, cb.cols), c64(g, 0),
           c64(g, cb.k), c64(g, 0), c64(g, cb.cols));
    if_end(g, &once);
    wpanels = LLVMBuildSelect(b, few, LLVMConstNull(g->ptr), scratch, "wpanels");
  }
  LLVMValueRef chunks = c64(g, 1);
  if (n->op == OP_CONV2D && q.OH * q.OW * q.T * q.C * q.F >= SERIAL_FMAS) {
    /* fewer samples than workers (one sample's inference): each sample in ranges of output
     * pixels, enough for every worker (a small one stays with the caller: sharing it would
     * move its result between the cores' caches, which costs more than the multiply) */
    chunks = LLVMBuildSelect(b, few, cdiv(g, workers, max64(g, batch, c64(g, 1))), chunks, "");
    if (wino) chunks = min64(g, chunks, c64(g, tile_rows(&z)));
    parallel = LLVMBuildICmp(b, LLVMIntSGT, min64(g, workers, mul(g, batch, chunks)),
                             c64(g, 1), "");
  }
  if (n->op == OP_CONV2D_BWD_DATA) {
    /* fewer samples than workers: the caller takes the samples one by one and splits each
     * one's GEMM across the workers instead (the col2im adds overlap between pixels) */
    LLVMValueRef few = LLVMBuildAnd(b, LLVMBuildICmp(b, LLVMIntSGT, workers, c64(g, 1), ""),
                                    LLVMBuildICmp(b, LLVMIntSLT, batch, workers, ""), "");
    by_sample = if_begin(g, few, "few");
    LLVMValueRef p[3] = {out, src0, src1};
    GLoop ls = loop_begin(g, c64(g, 0), batch, 1, "s");
    conv_sample(g, n, &q, ls.i, NULL, NULL, p, at(g, scratch, c64(g, conv_region0(g, n, &q))),
                wpanels, NULL, NULL,
                (ConvThreads){threads, sstride}, epi, (ConvHook){0});
    loop_end(g, &ls);
    if_else(g, &by_sample);
  }
  workers = LLVMBuildSelect(b, parallel, workers, c64(g, 1), "");
  LLVMValueRef v[CJ_COUNT] = {out, src0, src1, batch, scratch, sstride, c64(g, 0), workers,
                              epi.fn, epi.ctx, chunks, wpanels,
                              hook.fn ? hook.ctx : LLVMConstNull(g->ptr)};
  for (int f = 0; f < CJ_COUNT; f++) set(g, b, J, job, f, v[f]);
  dispatch(g, work, job, threads, parallel);
  if (n->op == OP_CONV2D && hook.fn) { /* samples cut into pixel ranges: hooked here */
    GIf cut = if_begin(g, LLVMBuildICmp(b, LLVMIntSGT, chunks, c64(g, 1), ""), "hook.after");
    GLoop ls = loop_begin(g, c64(g, 0), batch, 1, "s");
    run_hook(g, hook, ls.i, NULL);
    loop_end(g, &ls);
    if_end(g, &cut);
  }
  if (n->op == OP_CONV2D_BWD_DATA) if_end(g, &by_sample);
  if (n->op == OP_CONV2D_BWD_FILTER) { /* out += the other workers' sums, in worker order */
    int64_t TC = q.T * q.C, elems = TC * q.F;
    LLVMValueRef sstride = v[CJ_SSTRIDE];
    GLoop lw = loop_begin(g, c64(g, 1), workers, 1, "w");
    LLVMValueRef lo = share(g, lw.i, batch, workers);
    LLVMValueRef hi = share(g, add(g, lw.i, c64(g, 1)), batch, workers);
    GIf f = if_begin(g, LLVMBuildICmp(b, LLVMIntSLT, lo, hi, ""), "some");
    LLVMValueRef part = byte_at(g, scratch, mul(g, lw.i, sstride));
    GLoop le = loop_begin(g, c64(g, 0), c64(g, elems), 1, "e");
    LLVMValueRef d = at(g, out, le.i);
    store(g, LLVMBuildFAdd(b, load(g, g->elem, d, 0), load(g, g->elem, at(g, part, le.i), 0), ""),
          d, 0);
    loop_end(g, &le);
    if_end(g, &f);
    loop_end(g, &lw);
  }
  g->b = own;
}

int64_t lower_gemm_finish(Gemm *g) {
  int64_t bytes = round16(g->scratch_elems) * g->es;
  LLVMSetInitializer(g->scratch_bytes, c64(g, bytes));
  LLVMDisposeBuilder(g->b);
  return bytes;
}
