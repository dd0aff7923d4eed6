/* gemm_bench.c — times one model's nn_forward (bench/gemm.sh compiles a matmul of one form
 * and shape into the object this is linked with) and OpenBLAS's cblas_sgemm on the same form
 * and shape, at 1 and 2 threads, and prints GFLOP/s for each and nnc's share of OpenBLAS's.
 *   usage: gemm_bench FORM M K N [G]
 * FORM is nn (C = A·B), nt (C = A·Bᵀ) or tn (C = Aᵀ·B); G > 1 is a batch of G such
 * products (attention's heads × samples), which OpenBLAS runs as G calls. The forward takes
 * M rows of x for nn and nt (x: [K] a row) and one sample otherwise (gemm.sh's models; tn
 * multiplies two parameters).
 * Each figure is the best of 5 rounds: at 1 thread in the thread's CPU time (the machine is
 * shared; waiting for the CPU is not counted), at 2 threads in wall time (the workers' time
 * is not this thread's).
 * The kernels get their threads from runtime/pool.c, compiled in (it needs nnrt_alloc and
 * nnrt_fatal, defined here), as the generated program would. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../runtime/nnrt_internal.h"

extern const NnModelDesc nn_model;

void *nnrt_alloc(size_t bytes, const char *where) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) {
    fprintf(stderr, "out of memory at %s\n", where);
    exit(1);
  }
  return p;
}

void nnrt_fatal(const char *fmt, ...) {
  fprintf(stderr, "gemm_bench: fatal: %s\n", fmt);
  exit(1);
}

static void *region(int64_t bytes) {
  size_t n = (size_t)(bytes < 64 ? 64 : (bytes + 63) / 64 * 64);
  void *p = aligned_alloc(64, n);
  for (size_t i = 0; i < n / 4; i++) ((float *)p)[i] = (float)((i * 2654435761u) % 1000) / 1000.0f;
  return p;
}

static double now(clockid_t clock) {
  struct timespec t;
  clock_gettime(clock, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The best of 5 rounds, in seconds per call of f, of enough calls to last ~0.02 s each. */
typedef void (*Fn)(void *ctx);
static double seconds_per_call(Fn f, void *ctx, clockid_t clock) {
  f(ctx);
  int reps = 0;
  for (double t0 = now(clock); now(clock) - t0 < 0.02; reps++) f(ctx);
  double best = 0;
  for (int k = 0; k < 5; k++) {
    double t0 = now(clock);
    for (int i = 0; i < reps; i++) f(ctx);
    double t = (now(clock) - t0) / reps;
    if (k == 0 || t < best) best = t;
  }
  return best;
}

typedef struct Ctx {
  void **io;
  int64_t rows;      /* the forward's batch */
  int ta, tb;        /* the form */
  int64_t m, k, n, g;
  float *a, *b, *c;
} Ctx;

static void run_nnc(void *v) {
  Ctx *c = v;
  nn_model.forward(c->io, c->rows);
}

static void run_blas(void *v) {
  Ctx *c = v;
  int lda = (int)(c->ta ? c->m : c->k), ldb = (int)(c->tb ? c->k : c->n);
  for (int64_t i = 0; i < c->g; i++)
    cblas_sgemm(CblasRowMajor, c->ta ? CblasTrans : CblasNoTrans,
                c->tb ? CblasTrans : CblasNoTrans, (int)c->m, (int)c->n, (int)c->k, 1.0f,
                c->a + i * c->m * c->k, lda, c->b + i * c->k * c->n, ldb, 0.0f,
                c->c + i * c->m * c->n, (int)c->n);
}

int main(int argc, char **argv) {
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: gemm_bench nn|nt|tn M K N [G]\n");
    return 2;
  }
  const char *form = argv[1];
  int64_t m = atoll(argv[2]), k = atoll(argv[3]), n = atoll(argv[4]);
  int64_t g = argc == 6 ? atoll(argv[5]) : 1;
  const NnModelDesc *d = &nn_model;
  void *io[NN_IO_COUNT] = {0};
  io[NN_IO_ARENA] = region(d->arena_bytes);
  io[NN_IO_PARAM] = region(d->param_size * 4);
  io[NN_IO_X] = region(d->max_batch * d->x_size * 4);
  /* tn's transpose(A) @ W of two parameters is [M, N] with no batch axis; the model's out_size
   * counts N only */
  int64_t out = d->max_batch * d->out_size > g * m * n ? d->max_batch * d->out_size : g * m * n;
  io[NN_IO_OUT] = region(out * 4);
  io[NN_IO_SCRATCH] = region(2 * d->scratch_bytes);
  Ctx c = {io, strcmp(form, "tn") && g == 1 ? m : 1, !strcmp(form, "tn"), !strcmp(form, "nt"),
           m, k, n, g, region(g * m * k * 4), region(g * k * n * 4), region(g * m * n * 4)};
  double flops = 2.0 * (double)g * (double)m * (double)k * (double)n;
  printf("%s %5lld x %5lld x %5lld x %-3lld", form, (long long)m, (long long)k, (long long)n,
         (long long)g);
  for (int t = 1; t <= 2; t++) {
    NnPool *pool = t > 1 ? nnrt_pool_new(t) : NULL;
    io[NN_IO_THREADS] = pool ? nnrt_pool_threads(pool) : NULL;
    openblas_set_num_threads(t);
    clockid_t clock = t == 1 ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC;
    double a = flops / seconds_per_call(run_nnc, &c, clock) / 1e9;
    double b = flops / seconds_per_call(run_blas, &c, clock) / 1e9;
    printf(" | %dT nnc %6.1f openblas %6.1f (%3.0f%%)", t, a, b, 100 * a / b);
    nnrt_pool_free(pool);
  }
  printf("\n");
  return 0;
}
