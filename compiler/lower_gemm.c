/* lower_gemm.c — the module's matrix multiply as LLVM IR (lower_conv.c builds the
 * convolutions on it).
 *
 * Takes the element type and the target's vector registers; gives private functions that
 * lower_llvm.c calls for every matmul node:
 *
 *   nn.gemm(job, threads)      picks the blocking, then runs nn.gemm.work on every worker
 *   nn.gemm.work(job, w)       takes tasks (a block of rows × columns of one matrix of C) from
 *                              an atomic counter; for each K block packs B's columns into
 *                              nr-wide panels and (unless A is row-major, which the
 *                              micro-kernel reads in place) A's rows into mr-tall panels in
 *                              worker w's scratch, then calls the micro-kernel on every tile
 *   nn.gemm.ukernel(...)       the register tile: mr × (nr/w) vector accumulators, per k one
 *                              broadcast of A and nr/w loads of B, llvm.fmuladd on vectors
 *                              (nn.gemm.ukernel.half: the same on mr/2 rows, for edge tiles;
 *                              .narrow, .narrow.half: on one vector of columns)
 *   nn.gemm.direct(job, w)     C with a few rows and B's rows contiguous (a dense layer on
 *                              one sample): strips of a row (and parts of K, when there are
 *                              fewer strips than workers) as tasks, no packing, which would
 *                              cost more than the multiply; the same sums in the same order
 *   nn.gemm.dot(job, w)        C with a few rows and B transposed (x @ transpose(W), a dense
 *                              layer on one sample): each C element a dot product of A's row
 *                              and W's row, both contiguous, in vectors along K (its lanes
 *                              summed in a fixed tree at the end: other bits than the packed
 *                              path's, the same at any thread count); a run of outputs
 *                              per worker
 *
 * Transposes are strides: packing reads A and B through (row, column) strides, so every form
 * the backward pass uses (ta, tb, batched, a rank-2 B shared by a batch) is the same code;
 * a transposed B (contiguous columns) is packed a W×W block at a time through registers.
 * Each C element is summed by one worker in a fixed order (K blocks of kc, k ascending), so
 * results do not depend on the thread count or the tiling (lower_conv.c's filter gradient,
 * whose sum runs over the batch, adds fixed shares of it in order, and so keeps that too).
 *
 * A job may carry an epilogue (GemmEpilogue): the elementwise loop that follows the matmul
 * (bias, activation), called on each block of C by the worker that finished it, while the
 * block is still in its cache. */
#include <stdio.h>
#include <string.h>

#include <llvm-c/DebugInfo.h>

#include "gemm_build.h"

enum {
  KC = 256,            /* depth of a packed block: a B micro-panel (KC × nr) fits in L1 */
  MB_PANELS = 16,      /* most mr-row panels of A one task packs (about 128 KB: L2) */
  NB_PANELS = 16,      /* most nr-column panels of B one task packs (about 512 KB: L2) */
  B_SPAN = 32 << 10,   /* most bytes a K block's rows of a B read in place may span */
  C_SHARED = 4 << 20,  /* bytes of C past which B's blocks may come outermost (emit_work) */
  DIRECT_ROWS = 4,     /* C with at most this many rows (one sample's dense layer) skips packing */
  DOT_VECTORS = 8,     /* vector sums of one output of nn.gemm.dot (the FMA's latency x pipes) */
  DOT_AHEAD = 4096,    /* bytes ahead in W that nn.gemm.dot prefetches each cache line, */
  DOT_PREFETCH_MAX = 512 << 10, /* when a task's rows of W take at most this (half Zen 5's L2) */
  DIRECT_VECTORS = 16, /* most vectors of C's row a task of nn.gemm.direct sums in registers
                        * (Gemm.dv: 16 with 32 registers, else 8): a 256-wide layer's weights
                        * then stream row after whole row, through all of L2's sets */
  DIRECT_SPLIT_FMAS = 1 << 16, /* a direct GEMM with fewer is not split (one sample's layer
                                * of 256 x 256 is: the weights stream from two caches) */
  DOTS_MIN_VECTORS = 4, /* vectors along K from which a dot product pays for its lane sums (2
                         * for at most w/2 columns, which leave the micro-kernel's lanes idler:
                         * 64x32x10 on nn.gemm.dots.n10 was 92% of OpenBLAS, on the narrow
                         * micro-kernel 107%; 64x64x10 96% against 82%; 64x32x3 71% against 38%) */
  DOTS_TASK_TILES = 4, /* tiles of rows per task of nn.gemm.dots.nN */
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
  J_KPARTS,                     /* nn.gemm.direct: K blocks shared out in this many parts;
                                 * nn.gemm.dot: a row's outputs, likewise */
  J_APANELS,                    /* 1: A is in mr-row panels already (GemmArgs.a_panels) */
  J_BPANELS,                    /* 1: B is in nr-column panels already (GemmArgs.b_panels) */
  J_TALL,                       /* the micro-kernel on all M rows (Gemm.tall), or null */
  J_DOTS,                       /* nn.gemm.dots.nN for this N (Gemm.dots), or null */
  J_COUNT
};


/* Blocks of KC along K; at least one, so that K = 0 still writes C = 0. */
static LLVMValueRef k_blocks(Gemm *g, LLVMValueRef K) {
  return max64(g, cdiv(g, K, c64(g, KC)), c64(g, 1));
}
/* The tasks 0..count-1 of a job, shared by the workers through the atomic i64 at `next` (set
 * to 0 by the caller) from both ends: worker w = 0 takes them in order from the front
 * (counted in next's low 32 bits), the others from the back (the high 32 bits). A claim
 * stands while front + back taken before it is below count, so every task is taken once; and
 * the same worker takes about the same tasks call after call, so what a task reads (a strip
 * of a layer's weights) stays in that core's cache. The builder is in the body, at task `i`,
 * until tasks_end. A worker that joins late finds the tasks gone (runtime/pool.c). */
TaskLoop gemm_tasks_begin(Gemm *g, LLVMValueRef next, LLVMValueRef count, LLVMValueRef w) {
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

void gemm_tasks_end(Gemm *g, const TaskLoop *t) {
  LLVMBuildBr(g->b, t->head);
  LLVMPositionBuilderAtEnd(g->b, t->done);
}

/* Elements of scratch the GEMM's packing needs per worker. */
int64_t gemm_scratch(const Gemm *g) {
  return round16((int64_t)g->mb * KC) + round16((int64_t)KC * g->nb);
}

void gemm_need_scratch(Gemm *g, int64_t elems) {
  if (elems > g->scratch_elems) g->scratch_elems = elems;
}
/* ============================== the micro-kernel ============================== */

static LLVMValueRef lanes_below(Gemm *g, LLVMValueRef n, const char *name);
static LLVMValueRef load_lanes(Gemm *g, LLVMTypeRef vt, LLVMValueRef p, LLVMValueRef mask);
static void store_lanes(Gemm *g, LLVMValueRef v, LLVMValueRef p, LLVMValueRef mask);

/* Marks the loop whose back edge is `br` not to be unrolled (llvm.loop.unroll.disable). The
 * micro-kernel's k loop unrolled by 2 kept two offsets per row of A in place (A's strides
 * are arguments), 16 for 8 rows, and reloaded the ones spilled to the stack every k: the
 * narrow kernel, one broadcast per multiply-add, was then bound by its loads. */
static void not_unrolled(Gemm *g, LLVMValueRef br) {
  LLVMMetadataRef self = LLVMTemporaryMDNode(g->ctx, NULL, 0);
  LLVMMetadataRef off = LLVMMDStringInContext2(g->ctx, "llvm.loop.unroll.disable", 24);
  LLVMMetadataRef ops[2] = {self, LLVMMDNodeInContext2(g->ctx, &off, 1)};
  LLVMMetadataRef id = LLVMMDNodeInContext2(g->ctx, ops, 2);
  LLVMMetadataReplaceAllUsesWith(self, id);
  LLVMSetMetadata(br, LLVMGetMDKindIDInContext(g->ctx, "llvm.loop", 9),
                  LLVMMetadataAsValue(g->ctx, id));
}

/* nn.gemm.ukernel(kc, ap, bp, c, ldc, beta, mr, nr, ars, aks, bks): the mr×nr tile at c (row
 * stride ldc) = (beta ? tile : 0) + sum over k < kc of A(i, k) * bp[k*bks + j], where A(i, k)
 * is ap[i*ars + k*aks]: a packed panel (ars 1, aks MR) or, unpacked, rows of a row-major A
 * (ars its row stride, aks 1; rows past mr read row mr - 1). bp is a packed panel (bks NR)
 * or NR columns of a row-major B read in place (bks its row stride); only the first mr rows
 * and nr columns are stored (the rest of the tile is padding whose products are thrown
 * away). */
static LLVMValueRef emit_ukernel(Gemm *g, int MR, int NV, const char *name) {
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
  LLVMValueRef arow_off[16]; /* A(i, 0) - A(0, 0) */
  for (int i = 0; i < MR; i++)
    arow_off[i] = mul(g, min64(g, c64(g, i), sub(g, mr, c64(g, 1))), ars);

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
  not_unrolled(g, LLVMBuildBr(g->b, head));
  LLVMAddIncoming(k, &k1, &latch, 1);
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NV; j++) LLVMAddIncoming(acc[i][j], &next[i][j], &latch, 1);

  /* store: whole tiles straight into C, edge tiles with masked stores */
  LLVMPositionBuilderAtEnd(g->b, done);
  LLVMValueRef whole = LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, LLVMIntEQ, mr, c64(g, MR), ""),
                                    LLVMBuildICmp(g->b, LLVMIntEQ, nr, c64(g, NV * g->w), ""), "");
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
  /* an edge tile: its first mr rows, each vector masked to the columns below nr (a tile
   * stored whole on the stack and copied out an element at a time took as long as the
   * multiply-adds of a classifier's 10-wide last layer) */
  LLVMValueRef cols[8];
  for (int j = 0; j < NV; j++)
    cols[j] = lanes_below(g, max64(g, min64(g, sub(g, nr, c64(g, j * g->w)), c64(g, g->w)), zero),
                          "cols");
  for (int i = 0; i < MR; i++) {
    GIf row = if_begin(g, LLVMBuildICmp(g->b, LLVMIntSLT, c64(g, i), mr, ""), "row");
    for (int j = 0; j < NV; j++) {
      LLVMValueRef p = at(g, c, add(g, muli(g, ldc, i), c64(g, j * g->w)));
      LLVMValueRef sum = LLVMBuildFAdd(g->b, load_lanes(g, vt, p, cols[j]), acc[i][j], "");
      /* -0 + x would turn a -0 product into +0: add only when accumulating */
      store_lanes(g, LLVMBuildSelect(g->b, accumulate, sum, acc[i][j], ""), p, cols[j]);
    }
    if_end(g, &row);
  }
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
/* The two-input shuffle masks of the transpose's stage d (of vectors of g->w): lo takes a's
 * element p or b's p - d, hi a's p + d or b's p. */
static void stage_masks(Gemm *g, int d, LLVMValueRef *mlo, LLVMValueRef *mhi) {
  int n = g->w;
  LLVMTypeRef i32 = LLVMInt32TypeInContext(g->ctx);
  LLVMValueRef lo[64], hi[64];
  for (int p = 0; p < n; p++) {
    lo[p] = LLVMConstInt(i32, (unsigned long long)((p & d) ? n + p - d : p), 0);
    hi[p] = LLVMConstInt(i32, (unsigned long long)((p & d) ? n + p : p + d), 0);
  }
  *mlo = LLVMConstVector(lo, (unsigned)n), *mhi = LLVMConstVector(hi, (unsigned)n);
}

static void transpose_block(Gemm *g, LLVMValueRef *r) {
  int n = g->w;
  for (int d = n / 2; d >= 1; d /= 2) {
    LLVMValueRef mlo, mhi;
    stage_masks(g, d, &mlo, &mhi);
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
void gemm_pack_b(Gemm *g, LLVMValueRef dst, LLVMValueRef b, LLVMValueRef rsb, LLVMValueRef csb,
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
   * B's columns is a contiguous row of Bᵀ, x @ transpose(W) and q @ transpose(k)) W×W
   * blocks first: W columns' next W values loaded as vectors and transposed in registers
   * into W rows of the panel, instead of an element at a time. Only the columns the
   * micro-kernels read are packed: a panel of at most W columns goes to the narrow ones,
   * which read its first W (a classifier's 10 outputs: 16 of 32 columns, in one block). */
  LLVMValueRef valid = min64(g, sub(g, N, col0), c64(g, NR));
  LLVMValueRef used = LLVMBuildSelect(g->b, LLVMBuildICmp(g->b, LLVMIntSLE, valid, c64(g, W), ""),
                                      c64(g, W), c64(g, NR), "pb.used");
  LLVMValueRef kdone = zero;
  if (W > 1 && W <= 16) {
    LLVMValueRef kw = mul(g, LLVMBuildSDiv(g->b, kc, c64(g, W), ""), c64(g, W));
    kdone = LLVMBuildSelect(g->b, transposed, kw, zero, "pb.tdone");
    LLVMValueRef src = at(g, b, add(g, rowbase, mul(g, col0, csb)));
    LLVMValueRef lastcol = sub(g, valid, one);
    GLoop lk = loop_begin(g, zero, kdone, W, "pb.tk");
    for (int h = 0; h < NR / W; h++) {
      GIf inside = if_begin(g, LLVMBuildICmp(g->b, LLVMIntSLT, c64(g, h * W), used, ""), "pb.h");
      LLVMValueRef r[16];
      for (int j = 0; j < W; j++) /* a column past N repeats the last one */
        r[j] = load(g, vt, at(g, src, add(g, mul(g, min64(g, c64(g, h * W + j), lastcol), csb),
                                          lk.i)),
                    (unsigned)g->es);
      transpose_block(g, r);
      for (int kk = 0; kk < W; kk++)
        store(g, r[kk], at(g, panel, add(g, muli(g, add(g, lk.i, c64(g, kk)), NR), c64(g, h * W))),
              valign);
      if_end(g, &inside);
    }
    loop_end(g, &lk);
  }
  {
    LLVMValueRef last = sub(g, N, one);
    GLoop lj = loop_begin(g, zero, used, 1, "pb.j");
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
void gemm_run_epilogue(Gemm *g, GemmEpilogue e, LLVMValueRef r0, LLVMValueRef r1,
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
  gemm_run_epilogue(g, e, add(g, row, r0), add(g, row, r1), c0, c1);
}

/* The first row (column) of block i of `blocks` over `panels` panels of `size`: the panels
 * are shared out evenly, so blocks differ by at most one panel and workers by little. */
LLVMValueRef gemm_block_start(Gemm *g, LLVMValueRef i, LLVMValueRef panels,
                              LLVMValueRef blocks, int64_t size) {
  return muli(g, LLVMBuildSDiv(g->b, mul(g, i, panels), blocks, ""), size);
}

/* A worker function name(job, w) of the GEMM's job, begun: its fields but the task counter
 * loaded into v, the job and the worker's number in *job and *w. */
static LLVMValueRef job_worker(Gemm *g, const char *name, LLVMValueRef v[], LLVMValueRef *job,
                               LLVMValueRef *w) {
  LLVMTypeRef params[2] = {g->ptr, g->i64};
  LLVMValueRef fn = function(g, name, params, 2);
  *job = LLVMGetParam(fn, 0), *w = LLVMGetParam(fn, 1);
  for (int f = 0; f < J_COUNT; f++)
    if (f != J_NEXT) v[f] = get(g, g->job_type, *job, f);
  return fn;
}

/* Is block `key` the one whose panels the worker packed last (in the slot `packed`), with one
 * K block (one_k), so that they are still whole in its scratch? */
static LLVMValueRef still_packed(Gemm *g, LLVMValueRef one_k, LLVMValueRef packed,
                                 LLVMValueRef key) {
  LLVMValueRef last = LLVMBuildLoad2(g->b, g->i64, packed, "");
  return LLVMBuildAnd(g->b, one_k, LLVMBuildICmp(g->b, LLVMIntEQ, last, key, ""), "");
}

/* nn.gemm.work(job, w): worker w takes tasks until none is left. */
static void emit_work(Gemm *g) {
  LLVMTypeRef J = g->job_type;
  LLVMValueRef job, w, v[J_COUNT];
  g->work = job_worker(g, "nn.gemm.work", v, &job, &w);
  LLVMValueRef scratch = byte_at(g, v[J_SCRATCH], mul(g, w, v[J_SSTRIDE]));
  LLVMValueRef ap = scratch, bp = at(g, scratch, c64(g, round16((int64_t)g->mb * KC)));
  LLVMValueRef per = mul(g, v[J_MBLK], v[J_NBLK]);
  LLVMValueRef tasks = mul(g, v[J_BATCH], per);
  /* The blocks of A and B this worker's last task packed (-1: none yet). With one K block
   * a panel is packed whole, and a task on the same block of A (B) as the one before finds
   * it still in its scratch: consecutive tasks share one (the blocks along the other side
   * are innermost), as GPT-2-small's weight gradients' row blocks do 2 tasks at a time */
  LLVMValueRef packed_a = entry_alloca(g, g->b, g->i64, "packed.a");
  LLVMValueRef packed_b = entry_alloca(g, g->b, g->i64, "packed.b");
  LLVMBuildStore(g->b, c64(g, -1), packed_a);
  LLVMBuildStore(g->b, c64(g, -1), packed_b);
  LLVMValueRef one_k = LLVMBuildICmp(g->b, LLVMIntSLE, v[J_K], c64(g, KC), "one.k");

  TaskLoop task = gemm_tasks_begin(g, field_ptr(g, J, job, J_NEXT), tasks, w);
  LLVMValueRef t = task.i;
  LLVMValueRef bi = LLVMBuildSDiv(g->b, t, per, ""), r = sub(g, t, mul(g, bi, per));
  /* wide C (more column blocks than row blocks: GPT's vocabulary head): the row blocks are
   * innermost, so that the next task reuses the block of B this one packed. Likewise a C
   * past C_SHARED bytes whose column blocks are wider than its row blocks are tall (GPT-2-
   * small's weight gradients: 512 columns against 128 rows), B's block being the larger
   * packing; a smaller C (the MLP's) keeps its row blocks outermost, so that each worker
   * writes whole rows, which the optimizer's update, split by rows, then reads in its cache */
  LLVMValueRef wide = LLVMBuildICmp(g->b, LLVMIntSGT, v[J_NBLK], v[J_MBLK], "wide");
  LLVMValueRef c_big = LLVMBuildICmp(g->b, LLVMIntSGT, muli(g, mul(g, v[J_M], v[J_N]), g->es),
                                     c64(g, C_SHARED), "");
  LLVMValueRef b_wider = LLVMBuildICmp(g->b, LLVMIntSGT, mul(g, v[J_N], v[J_MBLK]),
                                       mul(g, v[J_M], v[J_NBLK]), "");
  wide = LLVMBuildOr(g->b, wide, LLVMBuildAnd(g->b, c_big, b_wider, ""), "b.inner");
  LLVMValueRef mi = LLVMBuildSelect(g->b, wide, LLVMBuildSRem(g->b, r, v[J_MBLK], ""),
                                    LLVMBuildSDiv(g->b, r, v[J_NBLK], ""), "mi");
  LLVMValueRef ni = LLVMBuildSelect(g->b, wide, LLVMBuildSDiv(g->b, r, v[J_MBLK], ""),
                                    LLVMBuildSRem(g->b, r, v[J_NBLK], ""), "ni");
  LLVMValueRef m0 = gemm_block_start(g, mi, v[J_MPANELS], v[J_MBLK], g->mr);
  LLVMValueRef n0 = gemm_block_start(g, ni, v[J_NPANELS], v[J_NBLK], g->nr);
  LLVMValueRef one = c64(g, 1);
  LLVMValueRef rows = sub(g, min64(g, v[J_M], gemm_block_start(g, add(g, mi, one), v[J_MPANELS],
                                                          v[J_MBLK], g->mr)), m0);
  /* a tall kernel: one tile of all M rows (nn.gemm counts them as one panel, one block) */
  LLVMValueRef tall = LLVMBuildIsNotNull(g->b, v[J_TALL], "tall");
  rows = LLVMBuildSelect(g->b, tall, v[J_M], rows, "rows");
  LLVMValueRef cols = sub(g, min64(g, v[J_N], gemm_block_start(g, add(g, ni, one), v[J_NPANELS],
                                                          v[J_NBLK], g->nr)), n0);
  LLVMValueRef A = at(g, v[J_A], mul(g, bi, v[J_SA])), B = at(g, v[J_B], mul(g, bi, v[J_SB]));
  LLVMValueRef C = at(g, v[J_C], mul(g, bi, v[J_SC]));
  /* a row-major A is read in place by the micro-kernel: packing it (a transpose into k-major
   * panels, element by element) cost more than it saved. So is any A of a tall kernel, which
   * packs into no panel (row-major or transposed: the weight gradient's dYᵀ, whose few rows
   * are each k's adjacent values) */
  LLVMValueRef panels = LLVMBuildICmp(g->b, LLVMIntNE, v[J_APANELS], c64(g, 0), "panels");
  LLVMValueRef unpacked = LLVMBuildAnd(
      g->b, LLVMBuildOr(g->b, LLVMBuildICmp(g->b, LLVMIntEQ, v[J_CSA], c64(g, 1), ""), tall, ""),
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
  LLVMValueRef key_b = add(g, mul(g, bi, v[J_NBLK]), ni), key_a = add(g, mul(g, bi, v[J_MBLK]), mi);
  LLVMValueRef have_b = still_packed(g, one_k, packed_b, key_b);
  LLVMValueRef have_a = still_packed(g, one_k, packed_a, key_a);
  GIf pb = if_begin(g, LLVMBuildNot(g->b, LLVMBuildOr(g->b, LLVMBuildOr(g->b, b_panels, b_rows, ""),
                                                      have_b, ""), ""), "pack_b");
  gemm_pack_b(g, bp, B, v[J_RSB], v[J_CSB], v[J_N], k0, kc, n0, cols);
  LLVMBuildStore(g->b, key_b, packed_b);
  if_end(g, &pb);
  GIf pa = if_begin(g, LLVMBuildNot(g->b, LLVMBuildOr(g->b, LLVMBuildOr(g->b, unpacked, panels, ""),
                                                      have_a, ""), ""), "pack_a");
  pack_a(g, ap, A, v[J_RSA], v[J_CSA], v[J_M], k0, kc, m0, rows);
  LLVMBuildStore(g->b, key_a, packed_a);
  if_end(g, &pa);
  LLVMValueRef beta = LLVMBuildOr(g->b, v[J_BETA],
                                  LLVMBuildZExt(g->b, LLVMBuildICmp(g->b, LLVMIntSGT, k0, zero, ""),
                                                g->i64, ""), "");
  GLoop lj = loop_begin(g, zero, cols, g->nr, "jr");
  GLoop li = loop_begin(g, zero, LLVMBuildSelect(g->b, tall, one, rows, ""), g->mr, "ir");
  LLVMValueRef cp = at(g, C, add(g, mul(g, add(g, m0, li.i), v[J_LDC]), add(g, n0, lj.i)));
  LLVMValueRef a_in_place =
      at(g, A, add(g, mul(g, add(g, m0, li.i), v[J_RSA]), mul(g, k0, v[J_CSA])));
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
      LLVMBuildSelect(g->b, tall, rows, min64(g, c64(g, g->mr), sub(g, rows, li.i)), ""),
      min64(g, c64(g, g->nr), sub(g, cols, lj.i)),
      LLVMBuildSelect(g->b, unpacked, v[J_RSA], c64(g, 1), ""),
      LLVMBuildSelect(g->b, unpacked, v[J_CSA], c64(g, g->mr), ""),
      LLVMBuildSelect(g->b, b_rows, v[J_RSB], c64(g, g->nr), "")};
  /* a tile of at most half of mr rows (121 rows: the 16th tile holds 1) on a kernel of half
   * the rows: half the multiply-adds for nothing, in the same order (the same bits) */
  LLVMValueRef low = LLVMBuildICmp(g->b, LLVMIntSLE, sub(g, rows, li.i), c64(g, g->mr / 2), "");
  /* likewise a tile of at most one vector's columns (the 10 outputs of a classifier's last
   * layer, the 16 left of 784) on a kernel of one vector a row: 2x for those tiles */
  LLVMValueRef thin = LLVMBuildICmp(g->b, LLVMIntSLE, sub(g, cols, lj.i), c64(g, g->w), "");
  LLVMValueRef two = LLVMBuildSelect(g->b, low, g->ukernel_half, g->ukernel, "");
  LLVMValueRef narrow = LLVMBuildSelect(g->b, low, g->ukernel_narrow_half, g->ukernel_narrow, "");
  LLVMValueRef kernel = LLVMBuildSelect(g->b, thin, narrow, two, "");
  LLVMBuildCall2(g->b, LLVMGlobalGetValueType(g->ukernel),
                 LLVMBuildSelect(g->b, tall, v[J_TALL], kernel, ""), args, 11, "");
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
  gemm_tasks_end(g, &task);
  LLVMBuildRetVoid(g->b);
}

/* Calls work(job, 0) alone, or threads->run(threads->ctx, work, job) when `parallel`. */
void gemm_dispatch(Gemm *g, LLVMValueRef work, LLVMValueRef job, LLVMValueRef threads,
                   LLVMValueRef parallel) {
  GIf f = if_begin(g, parallel, "parallel");
  LLVMTypeRef st = LLVMStructTypeInContext(g->ctx, (LLVMTypeRef[]){g->ptr, g->ptr, g->i64}, 3, 0);
  LLVMValueRef run = get(g, st, threads, 0), ctx = get(g, st, threads, 1);
  LLVMTypeRef run_ty = LLVMFunctionType(g->vd, (LLVMTypeRef[]){g->ptr, g->ptr, g->ptr}, 3, 0);
  LLVMBuildCall2(g->b, run_ty, run, (LLVMValueRef[]){ctx, work, job}, 3, "");
  if_else(g, &f);
  LLVMTypeRef work_ty = LLVMFunctionType(g->vd, (LLVMTypeRef[]){g->ptr, g->i64}, 2, 0);
  LLVMBuildCall2(g->b, work_ty, work, (LLVMValueRef[]){job, c64(g, 0)}, 2, "");
  if_end(g, &f);
}

/* Workers in `threads` (1 when NULL). */
LLVMValueRef gemm_workers(Gemm *g, LLVMValueRef threads) {
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
  TaskLoop t = gemm_tasks_begin(g, next, count, worker);
  g->b = own;
  return t;
}

void lower_tasks_end(Gemm *g, LLVMBuilderRef b, const TaskLoop *t) {
  LLVMBuilderRef own = g->b;
  g->b = b;
  gemm_tasks_end(g, t);
  g->b = own;
}

LLVMValueRef lower_workers(Gemm *g, LLVMBuilderRef b, LLVMValueRef threads) {
  LLVMBuilderRef own = g->b;
  g->b = b;
  LLVMValueRef n = gemm_workers(g, threads);
  g->b = own;
  return n;
}

void lower_run_workers(Gemm *g, LLVMBuilderRef b, LLVMValueRef work, LLVMValueRef job,
                       LLVMValueRef threads, LLVMValueRef parallel) {
  LLVMBuilderRef own = g->b;
  g->b = b;
  gemm_dispatch(g, work, job, threads, parallel);
  g->b = own;
}

/* The lanes of a vector of g->w below n (an i64 from 0 to g->w): the mask of a vector's
 * first n elements, for load_lanes / store_lanes. */
static LLVMValueRef lanes_below(Gemm *g, LLVMValueRef n, const char *name) {
  LLVMTypeRef i32 = LLVMInt32TypeInContext(g->ctx);
  LLVMValueRef lane[64];
  for (int i = 0; i < g->w; i++) lane[i] = LLVMConstInt(i32, (unsigned long long)i, 0);
  return LLVMBuildICmp(g->b, LLVMIntULT, LLVMConstVector(lane, (unsigned)g->w),
                       splat(g, LLVMBuildTrunc(g->b, n, i32, "")), name);
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

/* v stored at p (store_c) or added to what is there, in the lanes `mask` sets (NULL: all). */
static void store_or_add(Gemm *g, LLVMValueRef v, LLVMValueRef p, LLVMValueRef mask,
                         LLVMValueRef store_c) {
  GIf f = if_begin(g, store_c, "set");
  store_lanes(g, v, p, mask);
  if_else(g, &f);
  store_lanes(g, LLVMBuildFAdd(g->b, load_lanes(g, LLVMTypeOf(v), p, mask), v, ""), p, mask);
  if_end(g, &f);
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
  for (int q = 0; q < nv; q++)
    store_or_add(g, load(g, vt, slot[q], 0), at(g, crow, add(g, col0, c64(g, q * g->w))),
                 q == nv - 1 ? last : NULL, store_c);
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
  LLVMTypeRef J = g->job_type;
  LLVMValueRef job, worker, v[J_COUNT];
  g->direct = job_worker(g, "nn.gemm.direct", v, &job, &worker);
  LLVMValueRef zero = c64(g, 0);
  int64_t strip = (int64_t)g->dv * g->w;
  LLVMValueRef whole = LLVMBuildSDiv(g->b, v[J_N], c64(g, strip), ""); /* full strips a row */
  LLVMValueRef per_row = cdiv(g, v[J_N], c64(g, strip));
  LLVMValueRef rows = mul(g, v[J_BATCH], v[J_M]), strips = mul(g, rows, per_row);
  LLVMValueRef tasks = mul(g, strips, v[J_KPARTS]);
  LLVMValueRef blocks = k_blocks(g, v[J_K]);
  /* the task's strip s of row i of matrix t, over part `part` of the K blocks */
  TaskLoop task = gemm_tasks_begin(g, field_ptr(g, J, job, J_NEXT), tasks, worker);
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
  LLVMValueRef mask = lanes_below(g, in_last, "last");
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
  gemm_tasks_end(g, &task);
  LLVMBuildRetVoid(g->b);
}

/* The lanes of v added in a fixed tree (halves first): the same bits wherever it runs. */
static LLVMValueRef lane_sum(Gemm *g, LLVMValueRef v) {
  LLVMTypeRef i32 = LLVMInt32TypeInContext(g->ctx);
  for (int n = g->w; n > 1; n /= 2) {
    LLVMValueRef lo[32], hi[32], none = LLVMGetPoison(LLVMTypeOf(v));
    for (int i = 0; i < n / 2; i++) {
      lo[i] = LLVMConstInt(i32, (unsigned)i, 0);
      hi[i] = LLVMConstInt(i32, (unsigned)(i + n / 2), 0);
    }
    unsigned half = (unsigned)n / 2;
    LLVMValueRef a = LLVMBuildShuffleVector(g->b, v, none, LLVMConstVector(lo, half), "");
    LLVMValueRef b = LLVMBuildShuffleVector(g->b, v, none, LLVMConstVector(hi, half), "");
    v = LLVMBuildFAdd(g->b, a, b, "");
  }
  return LLVMBuildExtractElement(g->b, v, LLVMConstInt(i32, 0, 0), "");
}

/* Output j of C's row crow: the dot product of A's row arow and W's row j (B transposed, row
 * j at j * ldw), both contiguous, in DOT_VECTORS vector sums along K (vector h of each round
 * into sum h; the whole vectors left into sum 0, then the last one masked to the K left),
 * added in order and then across their lanes; stored (store_c) or added to C. */
static void dot_output(Gemm *g, LLVMValueRef arow, LLVMValueRef W, LLVMValueRef ldw,
                       LLVMValueRef K, LLVMValueRef crow, LLVMValueRef j, LLVMValueRef store_c,
                       int ahead) {
  LLVMValueRef zero = c64(g, 0), wrow = at(g, W, mul(g, j, ldw));
  unsigned es = (unsigned)g->es;
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  LLVMTypeRef arr = LLVMArrayType2(vt, DOT_VECTORS);
  LLVMValueRef sums = entry_alloca(g, g->b, arr, "dot"), slot[DOT_VECTORS];
  for (int h = 0; h < DOT_VECTORS; h++) {
    slot[h] = LLVMBuildInBoundsGEP2(g->b, arr, sums, (LLVMValueRef[]){zero, c64(g, h)}, 2, "");
    store(g, LLVMConstNull(vt), slot[h], 0);
  }
  LLVMValueRef whole = muli(g, LLVMBuildSDiv(g->b, K, c64(g, g->w), ""), g->w);
  LLVMValueRef rounds = muli(g, LLVMBuildSDiv(g->b, K, c64(g, DOT_VECTORS * g->w), ""),
                             DOT_VECTORS * g->w);
  GLoop lk = loop_begin(g, zero, rounds, DOT_VECTORS * g->w, "k");
  for (int h = 0; h < DOT_VECTORS; h++) {
    LLVMValueRef k = add(g, lk.i, c64(g, h * g->w));
    if (ahead && h * g->w * g->es % 64 == 0) /* once a cache line */
      prefetch(g, at(g, wrow, add(g, k, c64(g, DOT_AHEAD / g->es))));
    store(g, vfmuladd(g, load(g, vt, at(g, arow, k), es), load(g, vt, at(g, wrow, k), es),
                      load(g, vt, slot[h], 0)), slot[h], 0);
  }
  loop_end(g, &lk);
  GLoop lv = loop_begin(g, rounds, whole, g->w, "k.left");
  store(g, vfmuladd(g, load(g, vt, at(g, arow, lv.i), es), load(g, vt, at(g, wrow, lv.i), es),
                    load(g, vt, slot[0], 0)), slot[0], 0);
  loop_end(g, &lv);
  GIf tail = if_begin(g, LLVMBuildICmp(g->b, LLVMIntSLT, whole, K, ""), "k.tail");
  LLVMValueRef mask = lanes_below(g, sub(g, K, whole), "k.last");
  store(g, vfmuladd(g, load_lanes(g, vt, at(g, arow, whole), mask),
                    load_lanes(g, vt, at(g, wrow, whole), mask), load(g, vt, slot[0], 0)),
        slot[0], 0);
  if_end(g, &tail);
  LLVMValueRef sum = load(g, vt, slot[0], 0);
  for (int h = 1; h < DOT_VECTORS; h++)
    sum = LLVMBuildFAdd(g->b, sum, load(g, vt, slot[h], 0), "");
  sum = lane_sum(g, sum);
  LLVMValueRef cp = at(g, crow, j);
  GIf f = if_begin(g, store_c, "set");
  store(g, sum, cp, 0);
  if_else(g, &f);
  store(g, LLVMBuildFAdd(g->b, load(g, g->elem, cp, 0), sum, ""), cp, 0);
  if_end(g, &f);
}

/* src's n elements copied to dst (64-byte aligned scratch of `room` bytes) when src is not on
 * a 64-byte boundary and they fit; returns where to read them. A caller's unaligned input made
 * every vector load of it in dot_output straddle two cache lines: one sample through the MLP's
 * first layer took 20% longer. */
static LLVMValueRef aligned_copy(Gemm *g, LLVMValueRef src, LLVMValueRef n, LLVMValueRef dst,
                                 LLVMValueRef room) {
  LLVMValueRef zero = c64(g, 0);
  LLVMValueRef off = LLVMBuildAnd(g->b, LLVMBuildPtrToInt(g->b, src, g->i64, ""), c64(g, 63), "");
  LLVMValueRef copy = LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, LLVMIntNE, off, zero, ""),
                                   LLVMBuildICmp(g->b, LLVMIntSLE, muli(g, n, g->es), room, ""),
                                   "realign");
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  GIf c = if_begin(g, copy, "realign");
  LLVMValueRef whole = muli(g, LLVMBuildSDiv(g->b, n, c64(g, g->w), ""), g->w);
  GLoop l = loop_begin(g, zero, whole, g->w, "copy");
  store(g, load(g, vt, at(g, src, l.i), (unsigned)g->es), at(g, dst, l.i),
        (unsigned)(g->w * g->es)); /* dst is 64-byte aligned, l.i a whole vector in */
  loop_end(g, &l);
  LLVMValueRef mask = lanes_below(g, sub(g, n, whole), "copy.last");
  store_lanes(g, load_lanes(g, vt, at(g, src, whole), mask), at(g, dst, whole), mask);
  if_end(g, &c);
  return LLVMBuildSelect(g->b, copy, dst, src, "");
}

/* nn.gemm.dot(job, w): C with a few rows, B transposed; a task is one of J_KPARTS equal runs
 * of a row's outputs. Split, there is one run per worker, so each worker reads the same rows
 * of W call after call, in its own cache (with a task per few outputs, taken from both ends,
 * the rows a worker read moved between the cores from call to call, and two threads were no
 * faster than one). One output at a time streams W's rows in order, as one pass: 8 outputs
 * side by side (8 streams) took 10-20% longer at batch 1. */
static void emit_dot(Gemm *g) {
  LLVMTypeRef J = g->job_type;
  LLVMValueRef job, worker, v[J_COUNT];
  g->dot = job_worker(g, "nn.gemm.dot", v, &job, &worker);
  LLVMValueRef parts = v[J_KPARTS], rows = mul(g, v[J_BATCH], v[J_M]);
  TaskLoop task = gemm_tasks_begin(g, field_ptr(g, J, job, J_NEXT), mul(g, rows, parts), worker);
  LLVMValueRef part = LLVMBuildSRem(g->b, task.i, parts, "part");
  LLVMValueRef row = LLVMBuildSDiv(g->b, task.i, parts, "");
  LLVMValueRef i = LLVMBuildSRem(g->b, row, v[J_M], "i");
  LLVMValueRef t = LLVMBuildSDiv(g->b, row, v[J_M], "t");
  LLVMValueRef A = at(g, v[J_A], mul(g, t, v[J_SA])), W = at(g, v[J_B], mul(g, t, v[J_SB]));
  LLVMValueRef arow = at(g, A, mul(g, i, v[J_RSA]));
  arow = aligned_copy(g, arow, v[J_K], byte_at(g, v[J_SCRATCH], mul(g, worker, v[J_SSTRIDE])),
                      v[J_SSTRIDE]);
  LLVMValueRef crow = at(g, at(g, v[J_C], mul(g, t, v[J_SC])), mul(g, i, v[J_LDC]));
  LLVMValueRef store_c = LLVMBuildICmp(g->b, LLVMIntEQ, v[J_BETA], c64(g, 0), "");
  LLVMValueRef j0 = LLVMBuildSDiv(g->b, mul(g, part, v[J_N]), parts, "");
  LLVMValueRef j1 = LLVMBuildSDiv(g->b, mul(g, add(g, part, c64(g, 1)), v[J_N]), parts, "");
  /* W's rows [j0, j1) read with prefetches DOT_AHEAD bytes ahead when they fill at most
   * DOT_PREFETCH_MAX bytes: then they stay in this core's L2 from call to call and the
   * prefetches hide its latency (half the MLP's first layer, 400 KB: 2.2 us a call against 2.6);
   * with more, near L2's size, they were 5-10% slower */
  LLVMValueRef share = muli(g, mul(g, sub(g, j1, j0), v[J_K]), g->es);
  GIf near = if_begin(g, LLVMBuildICmp(g->b, LLVMIntSLE, share, c64(g, DOT_PREFETCH_MAX), ""),
                      "near");
  for (int ahead = 1; ahead >= 0; ahead--) {
    GLoop lj = loop_begin(g, j0, j1, 1, "j");
    dot_output(g, arow, W, v[J_CSB], v[J_K], crow, lj.i, store_c, ahead);
    loop_end(g, &lj);
    if (ahead) if_else(g, &near);
  }
  if_end(g, &near);
  gemm_tasks_end(g, &task);
  LLVMBuildRetVoid(g->b);
}

/* The vector whose lane j is the sum of v[j]'s lanes (v[j] NULL: 0), for j < g->w: the W×W
 * transpose of transpose_block with each stage's two halves added instead of kept apart
 * (the shuffles are linear, so the rows it would go on to transpose separately are summed
 * first): 2W - 2 shuffles and W - 1 adds for W sums, in a fixed tree. */
static LLVMValueRef lane_sums(Gemm *g, LLVMValueRef *v) {
  int n = g->w;
  LLVMValueRef r[64], zero = LLVMConstNull(LLVMVectorType(g->elem, (unsigned)n));
  for (int i = 0; i < n; i++) r[i] = v[i];
  for (int d = n / 2; d >= 1; d /= 2) {
    LLVMValueRef mlo, mhi;
    stage_masks(g, d, &mlo, &mhi);
    for (int i = 0; i < d; i++) {
      if (!r[i] && !r[i + d]) continue;
      LLVMValueRef a = r[i] ? r[i] : zero, b = r[i + d] ? r[i + d] : zero;
      r[i] = LLVMBuildFAdd(g->b, LLVMBuildShuffleVector(g->b, a, b, mlo, ""),
                           LLVMBuildShuffleVector(g->b, a, b, mhi, ""), "");
    }
  }
  return r[0] ? r[0] : zero;
}

/* R rows of C at crow (ldc apart), N columns: the dot products of A's rows at arow (rsa apart)
 * and W's N rows at W (ldw apart), both contiguous along K: R×N vector sums along K
 * (llvm.fmuladd, k ascending; the last vector masked to the K left), then each row's N sums
 * across their lanes (lane_sums), stored (store_c) or added to C with N-lane masked stores. */
static void dots_tile(Gemm *g, int R, int N, LLVMValueRef arow, LLVMValueRef rsa,
                      LLVMValueRef W, LLVMValueRef ldw, LLVMValueRef K, LLVMValueRef crow,
                      LLVMValueRef ldc, LLVMValueRef store_c) {
  LLVMValueRef zero = c64(g, 0);
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  LLVMTypeRef arr = LLVMArrayType2(vt, (uint64_t)(R * N));
  LLVMValueRef sums = entry_alloca(g, g->b, arr, "dots"), slot[64];
  for (int q = 0; q < R * N; q++) {
    slot[q] = LLVMBuildInBoundsGEP2(g->b, arr, sums, (LLVMValueRef[]){zero, c64(g, q)}, 2, "");
    store(g, LLVMConstNull(vt), slot[q], 0);
  }
  LLVMValueRef whole = muli(g, LLVMBuildSDiv(g->b, K, c64(g, g->w), ""), g->w);
  for (int tail = 0; tail < 2; tail++) { /* the whole vectors, then the masked last one */
    GLoop lk = loop_begin(g, tail ? whole : zero, tail ? K : whole, g->w, tail ? "k.tail" : "k");
    LLVMValueRef mask = tail ? lanes_below(g, sub(g, K, lk.i), "k.last") : NULL;
    LLVMValueRef a[8];
    for (int r = 0; r < R; r++)
      a[r] = load_lanes(g, vt, at(g, arow, add(g, muli(g, rsa, r), lk.i)), mask);
    for (int j = 0; j < N; j++) {
      LLVMValueRef wv = load_lanes(g, vt, at(g, W, add(g, muli(g, ldw, j), lk.i)), mask);
      for (int r = 0; r < R; r++) {
        LLVMValueRef s = slot[r * N + j];
        store(g, vfmuladd(g, a[r], wv, load(g, vt, s, 0)), s, 0);
      }
    }
    loop_end(g, &lk);
  }
  for (int r = 0; r < R; r++)
    for (int j0 = 0; j0 < N; j0 += g->w) { /* a vector of sums at a time */
      LLVMValueRef v[64] = {0};
      for (int j = j0; j < N && j < j0 + g->w; j++) v[j - j0] = load(g, vt, slot[r * N + j], 0);
      store_or_add(g, lane_sums(g, v), at(g, crow, add(g, muli(g, ldc, r), c64(g, j0))),
                   lanes_below(g, c64(g, N - j0 < g->w ? N - j0 : g->w), "cols"), store_c);
    }
}

/* Rows per tile of nn.gemm.dots.nN: 2 or more, so that the tile's A rows are read once for
 * two or more of W's, and enough that its R×N sums keep the FMA pipes busy (8 at least) in
 * the registers they may take (Gemm.dots_max × 2). */
static int dots_rows(const Gemm *g, int N) {
  int R = (8 + N - 1) / N;
  if (R < 2) R = 2;
  while (R > 2 && R * N > 2 * g->dots_max) R--;
  return R;
}

/* nn.gemm.dots.nN(job, w): C of N columns (N <= Gemm.dots_max), A row-major and B transposed, both
 * contiguous along K (a classifier's last layer, x @ transpose(W)): each element a dot
 * product, R rows (dots_rows) at a time. The micro-kernel there, its vectors along C's rows,
 * used 10 of 16 lanes for 10 columns; along K every lane works, and the lane sums (a fixed
 * tree, lane_sums) cost less than the lanes left idle once K has DOTS_MIN_VECTORS vectors.
 * A task is DOTS_TASK_TILES tiles of one matrix of C, then its epilogue. The sums' order
 * depends on neither the thread count nor the tiling. */
static LLVMValueRef emit_dots(Gemm *g, int N) {
  char name[32];
  snprintf(name, sizeof name, "nn.gemm.dots.n%d", N);
  LLVMTypeRef J = g->job_type;
  LLVMValueRef job, worker, v[J_COUNT];
  LLVMValueRef fn = job_worker(g, name, v, &job, &worker);
  int R = dots_rows(g, N);
  LLVMValueRef per = cdiv(g, v[J_M], c64(g, (int64_t)R * DOTS_TASK_TILES)); /* tasks a matrix */
  TaskLoop task = gemm_tasks_begin(g, field_ptr(g, J, job, J_NEXT), mul(g, v[J_BATCH], per),
                                   worker);
  LLVMValueRef t = LLVMBuildSDiv(g->b, task.i, per, "t");
  LLVMValueRef i0 = muli(g, LLVMBuildSRem(g->b, task.i, per, ""), (int64_t)R * DOTS_TASK_TILES);
  LLVMValueRef i1 = min64(g, v[J_M], add(g, i0, c64(g, (int64_t)R * DOTS_TASK_TILES)));
  LLVMValueRef A = at(g, v[J_A], mul(g, t, v[J_SA])), W = at(g, v[J_B], mul(g, t, v[J_SB]));
  LLVMValueRef C = at(g, v[J_C], mul(g, t, v[J_SC]));
  LLVMValueRef store_c = LLVMBuildICmp(g->b, LLVMIntEQ, v[J_BETA], c64(g, 0), "");
  LLVMValueRef tiles = muli(g, LLVMBuildSDiv(g->b, sub(g, i1, i0), c64(g, R), ""), R);
  GLoop li = loop_begin(g, i0, add(g, i0, tiles), R, "i");
  dots_tile(g, R, N, at(g, A, mul(g, li.i, v[J_RSA])), v[J_RSA], W, v[J_CSB], v[J_K],
            at(g, C, mul(g, li.i, v[J_LDC])), v[J_LDC], store_c);
  loop_end(g, &li);
  /* the rows left over (fewer than R), on a tile of as many, picked by a switch on their
   * count, which the tile needs as a constant */
  LLVMValueRef i = add(g, i0, tiles), left = sub(g, i1, i);
  LLVMBasicBlockRef done = block(g, "left.done");
  LLVMValueRef sw = LLVMBuildSwitch(g->b, left, done, (unsigned)R);
  for (int r = 1; r < R; r++) {
    LLVMBasicBlockRef bb = block(g, "left");
    LLVMAddCase(sw, c64(g, r), bb);
    LLVMPositionBuilderAtEnd(g->b, bb);
    dots_tile(g, r, N, at(g, A, mul(g, i, v[J_RSA])), v[J_RSA], W, v[J_CSB], v[J_K],
              at(g, C, mul(g, i, v[J_LDC])), v[J_LDC], store_c);
    LLVMBuildBr(g->b, done);
  }
  LLVMPositionBuilderAtEnd(g->b, done);
  LLVMValueRef r0 = mul(g, t, v[J_M]);
  call_epilogue(g, job, add(g, r0, i0), add(g, r0, i1), c64(g, 0), v[J_N]);
  gemm_tasks_end(g, &task);
  LLVMBuildRetVoid(g->b);
  return fn;
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
  /* a few rows of A (contiguous) times a transposed B (W's rows contiguous): dot products */
  LLVMValueRef dot = LLVMBuildAnd(
      g->b, LLVMBuildICmp(g->b, LLVMIntSLE, M, c64(g, DIRECT_ROWS), ""),
      LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, LLVMIntEQ, get(g, J, job, J_RSB), one, ""),
                   LLVMBuildICmp(g->b, LLVMIntEQ, get(g, J, job, J_CSA), one, ""), ""), "");
  LLVMValueRef unpacked = LLVMBuildAnd(
      g->b, LLVMBuildICmp(g->b, LLVMIntEQ, get(g, J, job, J_APANELS), zero, ""),
      LLVMBuildICmp(g->b, LLVMIntEQ, get(g, J, job, J_BPANELS), zero, ""), "");
  dot = LLVMBuildAnd(g->b, LLVMBuildAnd(g->b, dot, LLVMBuildNot(g->b, direct, ""), ""),
                     unpacked, "dot");
  LLVMValueRef fmas = mul(g, mul(g, batch, mul(g, M, N)), max64(g, K, one));
  LLVMValueRef workers = gemm_workers(g, threads);
  /* a few rows (dot or direct) are split from DIRECT_SPLIT_FMAS multiply-adds, the rest from
   * SERIAL_FMAS */
  LLVMValueRef many = LLVMBuildICmp(g->b, LLVMIntSGT, workers, one, "");
  LLVMValueRef split = LLVMBuildAnd(
      g->b, many, LLVMBuildICmp(g->b, LLVMIntSGE, fmas, c64(g, DIRECT_SPLIT_FMAS), ""), "");
  LLVMValueRef parallel = LLVMBuildAnd(
      g->b, many, LLVMBuildICmp(g->b, LLVMIntSGE, fmas, c64(g, SERIAL_FMAS), ""), "parallel");
  LLVMBasicBlockRef dots = block(g, "dots"), not_dots = block(g, "not.dots");
  LLVMBuildCondBr(g->b, dot, dots, not_dots);
  LLVMPositionBuilderAtEnd(g->b, dots);
  set(g, g->b, J, job, J_KPARTS, LLVMBuildSelect(g->b, split, min64(g, workers, N), one, ""));
  set(g, g->b, J, job, J_NEXT, zero);
  gemm_dispatch(g, g->dot, job, threads, split);
  call_epilogue(g, job, zero, mul(g, batch, M), zero, N); /* a few rows: after all of C */
  LLVMBuildRetVoid(g->b);
  LLVMPositionBuilderAtEnd(g->b, not_dots);
  /* C of a few columns, B transposed, K long enough: dot products (nn.gemm.dots.nN) */
  LLVMValueRef dots_fn = get(g, J, job, J_DOTS);
  LLVMValueRef min_k = LLVMBuildSelect(
      g->b, LLVMBuildICmp(g->b, LLVMIntSLE, N, c64(g, g->w / 2), ""),
      c64(g, (int64_t)DOTS_MIN_VECTORS / 2 * g->w), c64(g, (int64_t)DOTS_MIN_VECTORS * g->w), "");
  LLVMValueRef use_dots = LLVMBuildAnd(g->b, LLVMBuildIsNotNull(g->b, dots_fn, ""),
                                       LLVMBuildICmp(g->b, LLVMIntSGE, K, min_k, ""), "dots");
  LLVMBasicBlockRef few_cols = block(g, "dots.n"), not_few = block(g, "not.dots.n");
  LLVMBuildCondBr(g->b, use_dots, few_cols, not_few);
  LLVMPositionBuilderAtEnd(g->b, few_cols);
  set(g, g->b, J, job, J_NEXT, zero);
  gemm_dispatch(g, dots_fn, job, threads, parallel);
  LLVMBuildRetVoid(g->b);
  LLVMPositionBuilderAtEnd(g->b, not_few);
  LLVMBasicBlockRef few_rows = block(g, "direct"), packed = block(g, "packed");
  LLVMBuildCondBr(g->b, direct, few_rows, packed);
  LLVMPositionBuilderAtEnd(g->b, few_rows);
  LLVMValueRef rows = mul(g, batch, M);
  LLVMValueRef kparts = direct_kparts(g, job, split, workers, rows);
  set(g, g->b, J, job, J_KPARTS, kparts);
  set(g, g->b, J, job, J_NEXT, zero);
  gemm_dispatch(g, g->direct, job, threads, split);
  add_part_sums(g, job, kparts, rows);
  call_epilogue(g, job, zero, mul(g, batch, M), zero, N); /* a few rows: after all of C */
  LLVMBuildRetVoid(g->b);
  LLVMPositionBuilderAtEnd(g->b, packed);
  /* M rows of a tall kernel are one panel */
  LLVMValueRef tall = LLVMBuildIsNotNull(g->b, get(g, J, job, J_TALL), "tall");
  LLVMValueRef mp = LLVMBuildSelect(g->b, tall, one, cdiv(g, M, c64(g, g->mr)), "mp");
  LLVMValueRef np = cdiv(g, N, c64(g, g->nr));
  LLVMValueRef mblk = cdiv(g, mp, c64(g, MB_PANELS)), nblk = cdiv(g, np, c64(g, NB_PANELS));
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
  gemm_dispatch(g, g->work, job, threads, parallel);
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
  g->tall_max = registers >= 32 ? 12 : 0; /* 12 × 2 accumulators + 2 of B + 1 broadcast */
  g->dots_max = registers >= 32 ? 12 : 6;  /* 2 × 12 sums + 2 of A + 1 of W */
  g->kc = KC;
  g->mb = g->mr * MB_PANELS;
  g->nb = g->nr * NB_PANELS;
  LLVMTypeRef jt[J_COUNT];
  for (int f = 0; f < J_COUNT; f++)
    jt[f] = f == J_A || f == J_B || f == J_C || f == J_SCRATCH || f == J_EPI || f == J_EPI_CTX ||
                    f == J_TALL || f == J_DOTS
                ? g->ptr : g->i64;
  g->job_type = LLVMStructCreateNamed(ctx, "nn.gemm.job");
  LLVMStructSetBody(g->job_type, jt, J_COUNT, 0);
  conv_init(g);
  LLVMTypeRef ep[5] = {g->ptr, g->i64, g->i64, g->i64, g->i64};
  g->epilogue_type = LLVMFunctionType(g->vd, ep, 5, 0);
  LLVMTypeRef sp[3] = {g->ptr, g->i64, g->ptr};
  g->sample_type = LLVMFunctionType(g->vd, sp, 3, 0);
  g->scratch_bytes = LLVMAddGlobal(mod, g->i64, "nn.scratch.bytes");
  LLVMSetLinkage(g->scratch_bytes, LLVMPrivateLinkage);
  LLVMSetGlobalConstant(g->scratch_bytes, 1);
}

void gemm_ensure(Gemm *g) {
  if (g->gemm) return;
  int nv = g->nr / g->w;
  g->ukernel = emit_ukernel(g, g->mr, nv, "nn.gemm.ukernel");
  g->ukernel_half = emit_ukernel(g, g->mr / 2, nv, "nn.gemm.ukernel.half");
  g->ukernel_narrow = emit_ukernel(g, g->mr, 1, "nn.gemm.ukernel.narrow");
  g->ukernel_narrow_half = emit_ukernel(g, g->mr / 2, 1, "nn.gemm.ukernel.narrow.half");
  emit_work(g);
  emit_direct(g);
  emit_dot(g);
  emit_gemm(g);
  gemm_need_scratch(g, gemm_scratch(g));
}

/* The integer constant v, or -1 when v is not one. */
static int64_t constant(LLVMValueRef v) {
  return v && LLVMIsAConstantInt(v) ? LLVMConstIntGetSExtValue(v) : -1;
}

/* The kernels emitted on first use, from fill_job at the caller's builder: on a builder of
 * their own, g->b restored after. */
static LLVMBuilderRef builder_aside(Gemm *g) {
  LLVMBuilderRef own = g->b;
  g->b = LLVMCreateBuilderInContext(g->ctx);
  return own;
}
static void builder_back(Gemm *g, LLVMBuilderRef own) {
  LLVMDisposeBuilder(g->b);
  g->b = own;
}

/* The tall kernel for a's GEMM, or a null pointer: one when M is a constant a little past mr
 * (up to tall_max) and A is read in place (row-major or transposed). With mr = 8, a tile of
 * the rows past 8 ran on the kernel of 4 rows, as slow as 8 (the multiply-add's latency):
 * a classifier's 10-row weight gradient took 12 rows' time. */
static LLVMValueRef tall_kernel(Gemm *g, const GemmArgs *a) {
  int64_t m = constant(a->m);
  bool in_place = constant(a->csa) == 1 || constant(a->rsa) == 1;
  if (m <= g->mr || m > g->tall_max || !in_place || a->a_panels) return LLVMConstNull(g->ptr);
  if (!g->tall[m]) {
    char name[40];
    snprintf(name, sizeof name, "nn.gemm.ukernel.rows%d", (int)m);
    LLVMBuilderRef own = builder_aside(g);
    g->tall[m] = emit_ukernel(g, (int)m, g->nr / g->w, name);
    builder_back(g, own);
  }
  return g->tall[m];
}

/* nn.gemm.dots.nN for a's GEMM, or a null pointer: one when N is a constant of at most
 * Gemm.dots_max, A row-major and B transposed (both contiguous along K). */
static LLVMValueRef dots_kernel(Gemm *g, const GemmArgs *a) {
  int64_t n = constant(a->n);
  bool along_k = constant(a->csa) == 1 && constant(a->rsb) == 1;
  if (n < 1 || n > g->dots_max || !along_k || a->a_panels || constant(a->b_panels) > 0)
    return LLVMConstNull(g->ptr);
  if (!g->dots[n]) {
    LLVMBuilderRef own = builder_aside(g);
    g->dots[n] = emit_dots(g, (int)n);
    builder_back(g, own);
  }
  return g->dots[n];
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
      [J_TALL] = tall_kernel(g, a), [J_DOTS] = dots_kernel(g, a),
  };
  for (int f = 0; f < J_COUNT; f++)
    if (v[f]) set(g, b, J, job, f, v[f]);
}

void gemm_call_at(Gemm *g, LLVMBuilderRef b, const GemmArgs *a, LLVMValueRef scratch,
                  LLVMValueRef sstride, LLVMValueRef threads, LLVMValueRef beta) {
  LLVMValueRef job = entry_alloca(g, b, g->job_type, "gemm.job");
  fill_job(g, b, job, a, scratch, sstride);
  if (beta) set(g, b, g->job_type, job, J_BETA, beta);
  LLVMBuildCall2(b, LLVMGlobalGetValueType(g->gemm), g->gemm,
                 (LLVMValueRef[]){job, threads ? threads : LLVMConstNull(g->ptr)}, 2, "");
}

void lower_gemm_call(Gemm *g, LLVMBuilderRef b, const GemmArgs *a, LLVMValueRef threads,
                     LLVMValueRef scratch) {
  gemm_ensure(g);
  gemm_call_at(g, b, a, scratch, LLVMBuildLoad2(b, g->i64, g->scratch_bytes, "scratch.bytes"),
               threads, NULL);
}

int64_t lower_gemm_finish(Gemm *g) {
  int64_t bytes = round16(g->scratch_elems) * g->es;
  LLVMSetInitializer(g->scratch_bytes, c64(g, bytes));
  LLVMDisposeBuilder(g->b);
  return bytes;
}
