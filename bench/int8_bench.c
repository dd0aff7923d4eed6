/* int8_bench.c — the CNN's forward, f32 object against int8 object, in one run (bench/int8.sh
 * builds both from one checkpoint as f32m.o and i8m.o). Prints the best of 5 timings of each
 * at batch 1 and 64, serially and with a second worker (a spinning pthread behind the
 * objects' set_threads hook, as bench/latency.c), and the ratio. */
#define _POSIX_C_SOURCE 200112L /* posix_memalign, clock_gettime */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "f32m.h"
#include "i8m.h"

static float in[64 * F32M_INPUT_SIZE], out[64 * F32M_OUTPUT_SIZE];

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The second worker: runs work(arg, 1) once per generation and counts itself done. */
typedef void (*Work)(void *arg, int64_t worker); /* both headers' PREFIX_work */
static struct {
  atomic_int generation, done;
  Work work;
  void *arg;
} pool;

static void *helper_main(void *unused) {
  (void)unused;
  int seen = 0;
  for (;;) {
    int g;
    while ((g = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen) {
    }
    seen = g;
    pool.work(pool.arg, 1);
    atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
  }
  return NULL;
}

static void parallel_for(void *unused, Work work, void *arg) {
  (void)unused;
  pool.work = work, pool.arg = arg;
  atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
  atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
  work(arg, 0);
  while (atomic_load_explicit(&pool.done, memory_order_acquire) < 1) {
  }
}

/* Best seconds per call of PREFIX_forward over `reps` calls, of 5 tries, on `workers` (1 or 2). */
#define TIME_FORWARD(P, U, batch, reps, workers, seconds)                                     \
  do {                                                                                       \
    static P##_ctx ctx;                                                                      \
    void *arena = NULL, *scratch = NULL;                                                     \
    P##_mem mem;                                                                             \
    memset(&mem, 0, sizeof mem);                                                             \
    if (posix_memalign(&arena, 64, U##_INFER_ARENA_BYTES) ||                                 \
        posix_memalign(&scratch, 64, 2 * U##_WORKER_SCRATCH_BYTES))                          \
      abort();                                                                               \
    mem.arena = arena, mem.arena_bytes = U##_INFER_ARENA_BYTES;                              \
    if (P##_init(&ctx, &mem, 0) != 0 ||                                                      \
        P##_set_threads(&ctx, workers > 1 ? parallel_for : NULL, NULL, workers, scratch,     \
                        2 * U##_WORKER_SCRATCH_BYTES) != 0 ||                                \
        P##_forward(&ctx, in, out, batch) != 0)                                              \
      abort();                                                                               \
    seconds = 1e9;                                                                           \
    for (int t = 0; t < 5; t++) {                                                            \
      double t0 = now();                                                                     \
      for (int i = 0; i < reps; i++)                                                         \
        P##_forward(&ctx, in, out, batch);                                                   \
      double s = (now() - t0) / reps;                                                        \
      if (s < seconds)                                                                       \
        seconds = s;                                                                         \
    }                                                                                        \
    free(arena), free(scratch);                                                              \
  } while (0)

int main(void) {
  for (int i = 0; i < 64 * F32M_INPUT_SIZE; i++)
    in[i] = (float)((i * 7919) % 256) / 255.0f; /* image-like values in [0, 1] */
  pthread_t helper;
  if (pthread_create(&helper, NULL, helper_main, NULL) != 0)
    abort();
  const int batches[2] = {1, 64}, reps[2] = {2000, 40};
  for (int workers = 1; workers <= 2; workers++)
    for (int b = 0; b < 2; b++) {
      double f, q;
      TIME_FORWARD(f32m, F32M, batches[b], reps[b], workers, f);
      TIME_FORWARD(i8m, I8M, batches[b], reps[b], workers, q);
      printf("%d thread%s, batch %2d: f32 %8.1f us, int8 %8.1f us, int8/f32 time %.2f\n", workers,
             workers > 1 ? "s" : " ", batches[b], f * 1e6, q * 1e6, q / f);
    }
  return 0; /* the helper still spins: exit ends it */
}
