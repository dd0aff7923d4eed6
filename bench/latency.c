/* latency.c — bench/latency.sh's nnc side: one-sample inference through the header and object
 * of `nnc --emit=header --max-batch=1` (no heap in the call), timed call by call; prints the
 * median in microseconds. With THREADS > 1 the model gets a parallel-for through its
 * set_threads hook: THREADS - 1 pthreads that spin waiting for work (as a latency-bound
 * program's pool would; the training binary's runtime pool does the same). Built once per
 * model with -DMODEL_H="x.h", -DPFX=x and -DPFXU=X (the header's symbol and macro prefixes).
 * usage: latency ITERATIONS [THREADS] */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include MODEL_H

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define FN(name) CAT(PFX, name)  /* FN(_forward): fashion_mlp_forward */
#define M(name) CAT(PFXU, name)  /* M(_INPUT_SIZE): FASHION_MLP_INPUT_SIZE */

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* The spinning pool: a call is a new generation; each extra worker runs work(arg, w) once per
 * generation and counts itself done. */
enum { MAX_WORKERS = 8 };
static struct {
  atomic_int generation, done, stop;
  FN(_work) work;
  void *arg;
  int64_t workers;
} pool;

static void *worker_main(void *p) {
  int64_t w = (int64_t)(intptr_t)p;
  int seen = 0;
  for (;;) {
    int g;
    while ((g = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen)
      if (atomic_load_explicit(&pool.stop, memory_order_relaxed)) return NULL;
    seen = g;
    pool.work(pool.arg, w);
    atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
  }
}

static void parallel_for(void *unused, FN(_work) work, void *arg) {
  (void)unused;
  pool.work = work, pool.arg = arg;
  atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
  atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
  work(arg, 0);
  while (atomic_load_explicit(&pool.done, memory_order_acquire) < pool.workers - 1) {
  }
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  int iters = argc > 1 ? atoi(argv[1]) : 5000;
  if (iters < 1) iters = 1;
  int64_t threads = argc > 2 ? atoi(argv[2]) : 1;
  if (threads < 1 || threads > MAX_WORKERS) {
    fprintf(stderr, "latency: THREADS must be 1..%d\n", MAX_WORKERS);
    return 2;
  }
  static FN(_ctx) ctx;
  FN(_mem) mem;
  memset(&mem, 0, sizeof mem);
  mem.params = aligned_alloc(64, M(_PARAMS_BYTES));
  mem.arena = aligned_alloc(64, M(_INFER_ARENA_BYTES));
  mem.arena_bytes = M(_INFER_ARENA_BYTES);
  static FN(_elem) in[M(_INPUT_SIZE)], out[M(_OUTPUT_SIZE)];
  for (int i = 0; i < M(_INPUT_SIZE); i++) in[i] = (FN(_elem))((i * 37) % 256) / 255;
  int rc = FN(_init)(&ctx, &mem, 1); /* the .nn initialisers: timing does not need training */
  if (rc != 0) {
    fprintf(stderr, "latency: %s\n", FN(_strerror)(rc));
    return 1;
  }
  pthread_t tid[MAX_WORKERS];
  void *scratch = NULL;
  pool.workers = threads;
  if (threads > 1) {
    size_t bytes = (size_t)threads * M(_WORKER_SCRATCH_BYTES);
    scratch = aligned_alloc(64, (bytes + 63) / 64 * 64);
    rc = FN(_set_threads)(&ctx, parallel_for, NULL, threads, scratch, bytes);
    for (int64_t w = 1; rc == 0 && w < threads; w++)
      if (pthread_create(&tid[w], NULL, worker_main, (void *)(intptr_t)w) != 0) rc = -1;
    if (rc != 0) {
      fprintf(stderr, "latency: cannot set up %lld threads\n", (long long)threads);
      return 1;
    }
  }
  double *t = malloc(sizeof *t * (size_t)iters);
  for (int i = 0; i < iters / 10; i++) FN(_forward)(&ctx, in, out, 1); /* warm up */
  for (int i = 0; i < iters; i++) {
    double t0 = now_us();
    FN(_forward)(&ctx, in, out, 1);
    t[i] = now_us() - t0;
  }
  qsort(t, (size_t)iters, sizeof *t, by_value);
  printf("nnc threads=%lld median_us=%.2f (out[0]=%g)\n", (long long)threads, t[iters / 2],
         (double)out[0]);
  atomic_store(&pool.stop, 1);
  for (int64_t w = 1; w < threads; w++) pthread_join(tid[w], NULL);
  free(scratch);
  free(t);
  free(mem.params);
  free(mem.arena);
  return 0;
}
