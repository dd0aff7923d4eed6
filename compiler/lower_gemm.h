/* lower_gemm.h — the interface between lower_llvm.c and lower_gemm.c (the generated matrix
 * multiply) and lower_conv.c (the convolutions built on it). With lower_llvm.c, they are the
 * only code that includes llvm-c; nothing outside the lowering stage sees it. */
#ifndef LOWER_GEMM_H
#define LOWER_GEMM_H

#include <llvm-c/Core.h>

#include "nnc.h"

/* The GEMM of one module: its tiling, chosen from the target's vector registers, and the
 * functions emitted for it (on first use, with their own builder). */
typedef struct Gemm {
  LLVMContextRef ctx;
  LLVMModuleRef mod;
  LLVMBuilderRef b;          /* in whichever function lower_gemm.c or lower_conv.c is emitting */
  LLVMTypeRef elem, i64, ptr, vd;
  int64_t es;                /* bytes per element */
  int w;                     /* elements per vector register */
  int mr, nr;                /* micro-tile: mr rows of C by nr columns (nr = 2w) */
  int kc;                    /* depth of a packed block of A and B */
  int mb, nb;                /* most rows of A / columns of B one task packs */
  int dv;                    /* vectors of C's row in one task of nn.gemm.direct */
  bool winograd;             /* 3x3 conv2d by Winograd's F(2x2, 3x3) where it applies */
  LLVMTypeRef job_type;      /* %nn.gemm.job */
  LLVMTypeRef conv_type;     /* %nn.conv.job */
  LLVMTypeRef epilogue_type; /* void (ptr ctx, i64 r0, i64 r1, i64 c0, i64 c1) */
  LLVMTypeRef sample_type;   /* void (ptr ctx, i64 s, ptr dst): a ConvHook */
  LLVMValueRef gemm, work, ukernel; /* nn.gemm(job, threads), its worker, the micro-kernel */
  LLVMValueRef ukernel_half; /* the micro-kernel on mr / 2 rows, for the tiles of that few */
  LLVMValueRef ukernel_narrow, ukernel_narrow_half; /* the two on one vector of columns */
  LLVMValueRef tall[16];     /* the micro-kernel on exactly r rows, mr < r <= tall_max (emitted
                              * for a GEMM whose M is r: a classifier's 10 outputs) */
  int tall_max;              /* the most rows a tall tile's accumulators leave registers for */
  LLVMValueRef dots[16];     /* nn.gemm.dots.nN(job, w): C of N <= dots_max columns, B transposed
                              * (x @ transpose(W) of a classifier's last layer): dot products */
  int dots_max;
  LLVMValueRef direct;       /* nn.gemm.direct(job): a few rows, no packing */
  LLVMValueRef dot;          /* nn.gemm.dot(job): a few rows times a transposed B */
  LLVMValueRef scratch_bytes; /* global i64: bytes of NN_IO_SCRATCH per worker (set at the end) */
  int64_t scratch_elems;     /* per worker: the most any kernel of the module uses */
} Gemm;

/* C = A·B, or C += A·B when `accumulate`, for `batch` matrices: element (i, j) of matrix t of
 * X is X[t*sX + i*rsX + j*csX] (the transposes are just strides); C is row-major, ldc apart.
 * A is m×k, B is k×n. Every value is an i64 except the three pointers. */
typedef struct GemmArgs {
  LLVMValueRef m, n, k, batch;
  LLVMValueRef a, rsa, csa, sa;
  LLVMValueRef b, rsb, csb, sb;
  LLVMValueRef c, ldc, sc;
  bool accumulate;
  bool a_panels; /* A is already in the micro-kernel's mr-row panels over all of K (rsa, csa unused):
                  * A(i, k) = a[(i / mr) * mr * k + k * mr + i % mr] */
  LLVMValueRef b_panels; /* i64 1 when B is likewise in nr-column panels (rsb, csb unused; csb 0
                          * keeps it off the direct path), B(k, j) = b[(j / nr) * nr * k +
                          * k * nr + j % nr]; 0 or NULL: strides */
  LLVMValueRef epilogue, epilogue_ctx, epilogue_row; /* see GemmEpilogue; NULL: none */
} GemmArgs;

/* An epilogue, epilogue(ctx, r0, r1, c0, c1): the caller's elementwise loop over rows
 * [r0, r1) and columns [c0, c1) of C, run by the worker that finished that block of C, once
 * per block (C's matrices stacked: matrix t's row i is row epilogue_row + t*m + i). Its type
 * is Gemm.epilogue_type. lower_conv_call's epilogue (conv2d only) sees y as [B*OH*OW, F]. */
typedef struct GemmEpilogue {
  LLVMValueRef fn, ctx; /* NULL: none */
} GemmEpilogue;

/* A convolution's per-sample hook, fn(ctx, s, dst), of type Gemm.sample_type, run by the
 * worker that takes sample s: for conv2d, after the sample's GEMM and epilogue (dst NULL;
 * the pooling of its result, read while in cache; with the sample cut into pixel ranges
 * for several workers, the caller runs it on every sample after them); for
 * conv2d_bwd_filter, before the sample's GEMM, writing the sample's output gradient
 * [OH*OW, F] at dst (the worker's scratch), which the GEMM then reads instead of src1's (a
 * pooling gradient only the filter gradient reads: made and used while in cache, never
 * written to memory). */
typedef struct ConvHook {
  LLVMValueRef fn, ctx; /* NULL: none */
} ConvHook;

/* vector_bits / registers: the target's SIMD width and vector register count; winograd: a 3x3
 * conv2d of stride 1 over whole vectors of channels by Winograd's F(2x2, 3x3). */
void lower_gemm_init(Gemm *g, LLVMContextRef ctx, LLVMModuleRef mod, LLVMTypeRef elem,
                     int vector_bits, int registers, bool winograd);
/* Emits at b's position a call of the module's GEMM on io's threads and scratch. */
void lower_gemm_call(Gemm *g, LLVMBuilderRef b, const GemmArgs *a, LLVMValueRef threads,
                     LLVMValueRef scratch);
/* Emits at b's position conv2d, conv2d_bwd_data or conv2d_bwd_filter of node n as per-sample
 * im2col / col2im and GEMMs, parallel over the batch: out = n(src0, src1). */
void lower_conv_call(Gemm *g, LLVMBuilderRef b, const Node *n, LLVMValueRef out, LLVMValueRef src0,
                     LLVMValueRef src1, LLVMValueRef batch, LLVMValueRef threads,
                     LLVMValueRef scratch, GemmEpilogue epilogue, ConvHook hook);
/* Parallel work for lower_llvm.c's loops, with the GEMM's machinery. A job is a struct the
 * caller fills on its stack; its work function, void (ptr job, i64 worker), runs on every
 * worker and takes tasks 0..count-1 from an atomic i64 counter in the job (set to 0 first;
 * worker 0 takes them from the front, the others from the back):
 * between lower_tasks_begin and lower_tasks_end the builder is in the body, at task `i`. */
typedef struct TaskLoop {
  LLVMValueRef i;                 /* the task taken */
  LLVMBasicBlockRef head, done;   /* the take-next block, the way out */
} TaskLoop;
TaskLoop lower_tasks_begin(Gemm *g, LLVMBuilderRef b, LLVMValueRef next, LLVMValueRef count,
                           LLVMValueRef worker);
void lower_tasks_end(Gemm *g, LLVMBuilderRef b, const TaskLoop *t);
/* The workers of io's `threads` (1 when it is NULL). */
LLVMValueRef lower_workers(Gemm *g, LLVMBuilderRef b, LLVMValueRef threads);
/* work(job, w) on every worker of `threads` when `parallel` (an i1), else work(job, 0). */
void lower_run_workers(Gemm *g, LLVMBuilderRef b, LLVMValueRef work, LLVMValueRef job,
                       LLVMValueRef threads, LLVMValueRef parallel);
/* Sets nn.scratch.bytes once every kernel is emitted; returns the bytes. */
int64_t lower_gemm_finish(Gemm *g);

#endif
