/* gemm_bench.c — times one model's nn_forward (bench/gemm.sh compiles `x @ W` for a shape
 * M×K · K×N into the object this is linked with) and OpenBLAS's cblas_sgemm on the same
 * shape, at 1 and 2 threads, and prints GFLOP/s for each.
 *   usage: gemm_bench M K N
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

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Median seconds per call of f over 5 rounds of enough calls to last ~0.1 s. */
typedef void (*Fn)(void *ctx);
static double seconds_per_call(Fn f, void *ctx) {
  f(ctx);
  int reps = 0;
  for (double t0 = now(); now() - t0 < 0.02; reps++) f(ctx);
  reps = reps * 5 + 1;
  double r[5];
  for (int k = 0; k < 5; k++) {
    double t0 = now();
    for (int i = 0; i < reps; i++) f(ctx);
    r[k] = (now() - t0) / reps;
  }
  for (int i = 0; i < 5; i++) /* sort */
    for (int j = i + 1; j < 5; j++)
      if (r[j] < r[i]) {
        double t = r[i];
        r[i] = r[j], r[j] = t;
      }
  return r[2];
}

typedef struct Ctx {
  void **io;
  int64_t m, k, n;
  float *a, *b, *c;
} Ctx;

static void run_nnc(void *v) {
  Ctx *c = v;
  nn_model.forward(c->io, c->m);
}

static void run_blas(void *v) {
  Ctx *c = v;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)c->m, (int)c->n, (int)c->k, 1.0f,
              c->a, (int)c->k, c->b, (int)c->n, 0.0f, c->c, (int)c->n);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: gemm_bench M K N\n");
    return 2;
  }
  int64_t m = atoll(argv[1]), k = atoll(argv[2]), n = atoll(argv[3]);
  const NnModelDesc *d = &nn_model;
  void *io[NN_IO_COUNT] = {0};
  io[NN_IO_ARENA] = region(d->arena_bytes);
  io[NN_IO_PARAM] = region(d->param_size * 4);
  io[NN_IO_X] = region(d->max_batch * d->x_size * 4);
  io[NN_IO_OUT] = region(d->max_batch * d->out_size * 4);
  io[NN_IO_SCRATCH] = region(2 * d->scratch_bytes);
  Ctx c = {io, m, k, n, region(m * k * 4), region(k * n * 4), region(m * n * 4)};
  double flops = 2.0 * (double)m * (double)k * (double)n;
  printf("%5lld x %5lld x %5lld  ", (long long)m, (long long)k, (long long)n);
  for (int t = 1; t <= 2; t++) {
    NnPool *pool = t > 1 ? nnrt_pool_new(t) : NULL;
    io[NN_IO_THREADS] = pool ? nnrt_pool_threads(pool) : NULL;
    openblas_set_num_threads(t);
    double a = flops / seconds_per_call(run_nnc, &c) / 1e9;
    double b = flops / seconds_per_call(run_blas, &c) / 1e9;
    printf("| %dT nnc %6.1f openblas %6.1f GFLOP/s (%3.0f%%) ", t, a, b, 100 * a / b);
    nnrt_pool_free(pool);
  }
  printf("\n");
  return 0;
}
