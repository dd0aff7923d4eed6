/* pingpong.c — the round trip of one cache line between two threads pinned to CPUs 0 and 1 (an
 * atomic store, then a spin until the other thread answers; the median of 5 runs of 200,000
 * round trips). On this 2-vCPU machine it tells whether the vCPUs share a die (about 100 ns)
 * or not (about 450 ns): the two-thread benchmarks run a third slower on two dies (see
 * docs/architecture.md, "Two threads on this machine"). compare.sh and latency.sh print it
 * before and after their runs. usage: pingpong */
#define _GNU_SOURCE /* pthread_setaffinity_np */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { TRIPS = 200000, RUNS = 5 };
static _Alignas(64) atomic_long flag;

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *answer(void *unused) {
  (void)unused;
  pin(1);
  for (long i = 1; i < 2L * TRIPS * RUNS; i += 2) {
    while (atomic_load_explicit(&flag, memory_order_acquire) != i) {
    }
    atomic_store_explicit(&flag, i + 1, memory_order_release);
  }
  return NULL;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(void) {
  cpu_set_t mine;
  if (sched_getaffinity(0, sizeof mine, &mine) != 0 || !CPU_ISSET(0, &mine) ||
      !CPU_ISSET(1, &mine)) {
    printf("core-to-core round trip: not measured (CPUs 0 and 1 are not both available)\n");
    return 0;
  }
  pthread_t t;
  pin(0);
  if (pthread_create(&t, NULL, answer, NULL) != 0) return 1;
  double ns[RUNS];
  long i = 0;
  for (int r = 0; r < RUNS; r++) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long k = 0; k < TRIPS; k++, i += 2) {
      atomic_store_explicit(&flag, i + 1, memory_order_release);
      while (atomic_load_explicit(&flag, memory_order_acquire) != i + 2) {
      }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    ns[r] = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / TRIPS;
  }
  pthread_join(t, NULL);
  qsort(ns, RUNS, sizeof *ns, by_value);
  printf("core-to-core round trip %.0f ns (CPUs 0 and 1; about 100: one die, 450: two)\n",
         ns[RUNS / 2]);
  return 0;
}
