/* gemm_build.h — what lower_gemm.c (the matrix multiply) and lower_conv.c (the convolutions
 * built on it) share, and nothing else includes: small LLVM IR builders on a Gemm's builder
 * (g->b), loops and ifs in generated code, and the GEMM machinery the convolutions call. The
 * builders are static inline, so each file gets the few it uses. */
#ifndef GEMM_BUILD_H
#define GEMM_BUILD_H

#include "lower_gemm.h"

enum { SERIAL_FMAS = 1 << 18 }; /* fewer multiply-adds than this are not worth waking threads */

/* ============================== builders ============================== */

static inline LLVMValueRef c64(Gemm *g, int64_t v) {
  return LLVMConstInt(g->i64, (unsigned long long)v, 1);
}

static inline LLVMValueRef add(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildNSWAdd(g->b, a, b, "");
}
static inline LLVMValueRef sub(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildNSWSub(g->b, a, b, "");
}
static inline LLVMValueRef mul(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildNSWMul(g->b, a, b, "");
}
static inline LLVMValueRef muli(Gemm *g, LLVMValueRef a, int64_t k) {
  return k == 1 ? a : mul(g, a, c64(g, k));
}
static inline LLVMValueRef min64(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, a, b, ""), a, b, "");
}
static inline LLVMValueRef max64(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(g->b, LLVMBuildICmp(g->b, LLVMIntSGT, a, b, ""), a, b, "");
}
/* ceil(a / b) for a >= 0, b > 0 */
static inline LLVMValueRef cdiv(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSDiv(g->b, add(g, a, sub(g, b, c64(g, 1))), b, "");
}
/* x (a scalar) in every lane of a vector of g->w */
static inline LLVMValueRef splat(Gemm *g, LLVMValueRef x) {
  LLVMTypeRef vt = LLVMVectorType(LLVMTypeOf(x), (unsigned)g->w);
  LLVMTypeRef i32 = LLVMInt32TypeInContext(g->ctx);
  LLVMValueRef one =
      LLVMBuildInsertElement(g->b, LLVMGetPoison(vt), x, LLVMConstInt(i32, 0, 0), "");
  return LLVMBuildShuffleVector(g->b, one, LLVMGetPoison(vt),
                                LLVMConstNull(LLVMVectorType(i32, (unsigned)g->w)), "");
}
/* a * b + acc on vectors of g->w, with llvm.fmuladd: the one multiply-add of every kernel here
 * (micro-kernel, direct GEMM, direct convolution), so that their sums have the same bits */
static inline LLVMValueRef vfmuladd(Gemm *g, LLVMValueRef a, LLVMValueRef b,
                                    LLVMValueRef acc) {
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  unsigned id = LLVMLookupIntrinsicID("llvm.fmuladd", 12);
  return LLVMBuildCall2(g->b, LLVMIntrinsicGetType(g->ctx, id, &vt, 1),
                        LLVMGetIntrinsicDeclaration(g->mod, id, &vt, 1),
                        (LLVMValueRef[]){a, b, acc}, 3, "");
}
/* A read prefetch of the cache line at p into L1 (llvm.prefetch; never faults, so p may run
 * past the end of the array) */
static inline void prefetch(Gemm *g, LLVMValueRef p) {
  LLVMTypeRef i32 = LLVMInt32TypeInContext(g->ctx);
  unsigned id = LLVMLookupIntrinsicID("llvm.prefetch", 13);
  LLVMValueRef args[4] = {p, LLVMConstInt(i32, 0, 0), LLVMConstInt(i32, 3, 0),
                          LLVMConstInt(i32, 1, 0)}; /* read, keep in all levels, data */
  LLVMBuildCall2(g->b, LLVMIntrinsicGetType(g->ctx, id, &g->ptr, 1),
                 LLVMGetIntrinsicDeclaration(g->mod, id, &g->ptr, 1), args, 4, "");
}
static inline LLVMValueRef at(Gemm *g, LLVMValueRef base, LLVMValueRef i) {
  return LLVMBuildInBoundsGEP2(g->b, g->elem, base, &i, 1, "");
}
static inline LLVMValueRef byte_at(Gemm *g, LLVMValueRef base, LLVMValueRef i) {
  return LLVMBuildInBoundsGEP2(g->b, LLVMInt8TypeInContext(g->ctx), base, &i, 1, "");
}
static inline LLVMValueRef load(Gemm *g, LLVMTypeRef t, LLVMValueRef p, unsigned align) {
  LLVMValueRef v = LLVMBuildLoad2(g->b, t, p, "");
  if (align) LLVMSetAlignment(v, align);
  return v;
}
static inline void store(Gemm *g, LLVMValueRef v, LLVMValueRef p, unsigned align) {
  LLVMValueRef s = LLVMBuildStore(g->b, v, p);
  if (align) LLVMSetAlignment(s, align);
}

static inline LLVMValueRef field_ptr(Gemm *g, LLVMTypeRef st, LLVMValueRef job, int f) {
  return LLVMBuildStructGEP2(g->b, st, job, (unsigned)f, "");
}
static inline LLVMValueRef get(Gemm *g, LLVMTypeRef st, LLVMValueRef job, int f) {
  return LLVMBuildLoad2(g->b, LLVMStructGetTypeAtIndex(st, (unsigned)f),
                        field_ptr(g, st, job, f), "");
}
static inline void set(Gemm *g, LLVMBuilderRef b, LLVMTypeRef st, LLVMValueRef job, int f,
                       LLVMValueRef v) {
  (void)g;
  LLVMBuildStore(b, v, LLVMBuildStructGEP2(b, st, job, (unsigned)f, ""));
}

static inline LLVMBasicBlockRef block(Gemm *g, const char *name) {
  LLVMValueRef fn = LLVMGetBasicBlockParent(LLVMGetInsertBlock(g->b));
  return LLVMAppendBasicBlockInContext(g->ctx, fn, name);
}

/* for (i = from; i < bound; i += step): the builder is in the body until loop_end. */
typedef struct GLoop {
  LLVMValueRef i;
  LLVMBasicBlockRef pre, head, exit;
  int64_t step;
} GLoop;

static inline GLoop loop_begin(Gemm *g, LLVMValueRef from, LLVMValueRef bound, int64_t step,
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

static inline void loop_end(Gemm *g, GLoop *lp) {
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

static inline GIf if_begin(Gemm *g, LLVMValueRef cond, const char *name) {
  LLVMBasicBlockRef then = block(g, name);
  GIf f = {block(g, name), block(g, name)};
  LLVMBuildCondBr(g->b, cond, then, f.other);
  LLVMPositionBuilderAtEnd(g->b, then);
  return f;
}
static inline void if_else(Gemm *g, GIf *f) {
  LLVMBuildBr(g->b, f->join);
  LLVMPositionBuilderAtEnd(g->b, f->other);
}
static inline void if_end(Gemm *g, GIf *f) { /* also closes an if without an else */
  LLVMBuildBr(g->b, f->join);
  if (!LLVMGetBasicBlockTerminator(f->other)) {
    LLVMPositionBuilderAtEnd(g->b, f->other);
    LLVMBuildBr(g->b, f->join);
  }
  LLVMPositionBuilderAtEnd(g->b, f->join);
}

static inline LLVMValueRef function(Gemm *g, const char *name, LLVMTypeRef *params,
                                    unsigned n) {
  LLVMValueRef fn = LLVMAddFunction(g->mod, name, LLVMFunctionType(g->vd, params, n, 0));
  LLVMSetLinkage(fn, LLVMInternalLinkage); /* local, but named in profiles */
  unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
  LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex,
                          LLVMCreateEnumAttribute(g->ctx, nounwind, 0));
  LLVMPositionBuilderAtEnd(g->b, LLVMAppendBasicBlockInContext(g->ctx, fn, "entry"));
  return fn;
}

/* An alloca in the entry block of the function the builder `b` is in. */
static inline LLVMValueRef entry_alloca(Gemm *g, LLVMBuilderRef b, LLVMTypeRef t,
                                        const char *name) {
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

static inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

/* ============================== GEMM machinery (lower_gemm.c) ============================== */

/* Emits the module's GEMM functions on first use (with g->b; callers position it again). */
void gemm_ensure(Gemm *g);
/* Elements of scratch the GEMM's packing needs per worker. */
int64_t gemm_scratch(const Gemm *g);
/* Each worker's scratch holds at least `elems` elements. */
void gemm_need_scratch(Gemm *g, int64_t elems);
/* Workers in `threads` (1 when NULL). */
LLVMValueRef gemm_workers(Gemm *g, LLVMValueRef threads);
/* Calls work(job, 0) alone, or threads->run(threads->ctx, work, job) when `parallel`. */
void gemm_dispatch(Gemm *g, LLVMValueRef work, LLVMValueRef job, LLVMValueRef threads,
                   LLVMValueRef parallel);
/* The tasks 0..count-1 of a job, from the atomic i64 at `next` (0 first): worker 0 takes them
 * from the front, the others from the back; the builder is in the body, at task `i`, until
 * gemm_tasks_end. */
TaskLoop gemm_tasks_begin(Gemm *g, LLVMValueRef next, LLVMValueRef count, LLVMValueRef w);
void gemm_tasks_end(Gemm *g, const TaskLoop *t);
/* The first row (column) of block i of `blocks` over `panels` panels of `size`. */
LLVMValueRef gemm_block_start(Gemm *g, LLVMValueRef i, LLVMValueRef panels, LLVMValueRef blocks,
                              int64_t size);
/* B's rows [k0, k0 + kc) × columns [n0, n0 + cols) into nr-wide panels at dst. */
void gemm_pack_b(Gemm *g, LLVMValueRef dst, LLVMValueRef b, LLVMValueRef rsb, LLVMValueRef csb,
                 LLVMValueRef N, LLVMValueRef k0, LLVMValueRef kc, LLVMValueRef n0,
                 LLVMValueRef cols);
/* Epilogue e (its fn a null pointer at run time: none) on rows [r0, r1) × columns [c0, c1). */
void gemm_run_epilogue(Gemm *g, GemmEpilogue e, LLVMValueRef r0, LLVMValueRef r1,
                       LLVMValueRef c0, LLVMValueRef c1);
/* A call of nn.gemm at b: a job on b's function's stack, packing at scratch + w * sstride, on
 * `threads` (NULL: one worker, the caller); `beta` (an i64, or NULL: a->accumulate) says
 * whether C is added to. */
void gemm_call_at(Gemm *g, LLVMBuilderRef b, const GemmArgs *a, LLVMValueRef scratch,
                  LLVMValueRef sstride, LLVMValueRef threads, LLVMValueRef beta);

/* ============================== convolutions (lower_conv.c) ============================== */

/* Makes g->conv_type, %nn.conv.job (lower_gemm_init). */
void conv_init(Gemm *g);

#endif
