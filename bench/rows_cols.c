/* rows_cols.c — two threads (pinned to CPUs 0 and 1) each own half of a [784, 256] f32 matrix
 * (the MLP's first weight matrix) and, step after step, read it, write its gradient and apply
 * an Adam-like update to it and two moment buffers, with a barrier after each pass; by halves
 * of the columns (`cols`), or by halves of the rows (`rows`), or all on one thread (`1`).
 * No cache line is written by both threads either way, yet on this machine's two dies the
 * column halves cost 1.6-2.5 times one thread's whole update and 7-10 times its writes (the
 * prefetchers run past each 512-byte row segment into the other core's lines), while row
 * halves take half of one thread's time. Why std.nn's dense stores W as [units, n]
 * (docs/architecture.md, "Two threads on this machine"). Prints µs per pass.
 *   cc -O3 -march=native -pthread bench/rows_cols.c -o rows_cols -lm && ./rows_cols cols */
#define _GNU_SOURCE /* pthread_setaffinity_np */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { R = 784, C = 256, STEPS = 2000 };
static float *W, *G, *M, *V;
static atomic_int arrived;
static int threads, by_rows;
static double spent[3]; /* thread 0's seconds in each pass */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void barrier(int *passes) {
  int target = ++*passes * threads;
  atomic_fetch_add(&arrived, 1);
  while (atomic_load(&arrived) < target) {
  }
}

/* thread t's part: rows [r0, r1) x columns [c0, c1) */
static void *run(void *arg) {
  int t = (int)(long)arg, passes = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(t, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  int r0 = by_rows ? t * R / threads : 0, r1 = by_rows ? (t + 1) * R / threads : R;
  int c0 = by_rows ? 0 : t * C / threads, c1 = by_rows ? C : (t + 1) * C / threads;
  volatile float sink;
  for (int s = 0; s < STEPS; s++) {
    double a = now();
    float sum = 0;
    for (int r = r0; r < r1; r++)
      for (int c = c0; c < c1; c++) sum += W[r * C + c];
    sink = sum;
    barrier(&passes);
    double b = now();
    for (int r = r0; r < r1; r++)
      for (int c = c0; c < c1; c++) G[r * C + c] = 1e-3f * (float)(r - c);
    barrier(&passes);
    double d = now();
    for (int r = r0; r < r1; r++)
      for (int c = c0; c < c1; c++) {
        int i = r * C + c;
        M[i] = 0.9f * M[i] + 0.1f * G[i];
        V[i] = 0.999f * V[i] + 0.001f * G[i] * G[i];
        W[i] -= 1e-3f * M[i] / (sqrtf(V[i]) + 1e-8f);
      }
    barrier(&passes);
    if (t == 0) spent[0] += b - a, spent[1] += d - b, spent[2] += now() - d;
  }
  (void)sink;
  return NULL;
}

int main(int argc, char **argv) {
  const char *how = argc > 1 ? argv[1] : "";
  threads = strcmp(how, "1") ? 2 : 1;
  by_rows = !strcmp(how, "rows");
  if (strcmp(how, "1") && strcmp(how, "rows") && strcmp(how, "cols")) {
    fprintf(stderr, "usage: rows_cols 1|rows|cols\n");
    return 2;
  }
  float **bufs[4] = {&W, &G, &M, &V};
  for (int k = 0; k < 4; k++) {
    *bufs[k] = aligned_alloc(64, sizeof(float) * R * C);
    for (int i = 0; i < R * C; i++) (*bufs[k])[i] = 0.01f;
  }
  pthread_t tid[2];
  for (int t = 0; t < threads; t++) pthread_create(&tid[t], NULL, run, (void *)(long)t);
  for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL);
  printf("%s: read %.1f µs, write %.1f µs, update %.1f µs a pass\n",
         threads == 1 ? "one thread" : by_rows ? "row halves" : "column halves",
         spent[0] / STEPS * 1e6, spent[1] / STEPS * 1e6, spent[2] / STEPS * 1e6);
  return 0;
}
