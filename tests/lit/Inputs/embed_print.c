/* embed_print.c — any embedded model (built with -DMODEL_H="x.h" -DPFX=x -DPFXU=X, the header's
 * symbol and macro prefixes) run on a batch of N pseudo-random inputs in [-1, 1) (the same as
 * embed_threads.c's); prints each input's outputs, one line each, to 9 digits, so that two
 * builds of a model can be compared with diff. usage: embed_print N */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include MODEL_H

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define FN(name) CAT(PFX, name)
#define M(name) CAT(PFXU, name)

typedef FN(_elem) elem;

int main(int argc, char **argv) {
  long n = argc == 2 ? atol(argv[1]) : 0;
  if (n < 1 || n > M(_MAX_BATCH)) {
    fprintf(stderr, "usage: embed_print N (1..%d)\n", M(_MAX_BATCH));
    return 2;
  }
  size_t in_n = (size_t)n * M(_INPUT_SIZE), out_n = (size_t)n * M(_OUTPUT_SIZE);
  elem *in = malloc(sizeof *in * in_n), *out = malloc(sizeof *out * out_n);
  void *arena = NULL;
  if (!in || !out || posix_memalign(&arena, 64, M(_INFER_ARENA_BYTES)))
    return 1;
  uint32_t s = 12345;
  for (size_t i = 0; i < in_n; i++) {
    s = s * 1664525u + 1013904223u;
    in[i] = (elem)((double)(s >> 8) / (1 << 24) * 2 - 1);
  }
  FN(_ctx) ctx;
  FN(_mem) mem;
  memset(&mem, 0, sizeof mem); /* params NULL: the baked weights */
  mem.arena = arena;
  mem.arena_bytes = M(_INFER_ARENA_BYTES);
  int rc = FN(_init)(&ctx, &mem, 0);
  if (rc == 0)
    rc = FN(_forward)(&ctx, in, out, n);
  if (rc != 0) {
    fprintf(stderr, "embed_print: %s\n", FN(_strerror)(rc));
    return 1;
  }
  for (long i = 0; i < n; i++)
    for (long j = 0; j < M(_OUTPUT_SIZE); j++)
      printf("%.9g%c", (double)out[i * M(_OUTPUT_SIZE) + j], j + 1 < M(_OUTPUT_SIZE) ? ' ' : '\n');
  free(in), free(out), free(arena);
  return 0;
}
