/* latency.c — bench/latency.sh's nnc side: one-sample inference through the header and object
 * of `nnc --emit=header --max-batch=1` (no threads, no heap in the call), timed call by call;
 * prints the median in microseconds. Built once per model with -DMODEL_H="x.h", -DPFX=x and
 * -DPFXU=X (the header's symbol and macro prefixes).
 * usage: latency ITERATIONS */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
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

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  int iters = argc > 1 ? atoi(argv[1]) : 5000;
  if (iters < 1) iters = 1;
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
  double *t = malloc(sizeof *t * (size_t)iters);
  for (int i = 0; i < iters / 10; i++) FN(_forward)(&ctx, in, out, 1); /* warm up */
  for (int i = 0; i < iters; i++) {
    double t0 = now_us();
    FN(_forward)(&ctx, in, out, 1);
    t[i] = now_us() - t0;
  }
  qsort(t, (size_t)iters, sizeof *t, by_value);
  printf("nnc median_us=%.2f (out[0]=%g)\n", t[iters / 2], (double)out[0]);
  free(t);
  free(mem.params);
  free(mem.arena);
  return 0;
}
