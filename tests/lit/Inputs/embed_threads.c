/* embed_threads.c — any embedded model (built with -DMODEL_H="x.h" -DPFX=x -DPFXU=X, the
 * header's symbol and macro prefixes) run on a batch of N pseudo-random inputs serially and
 * with W workers (a pthread per worker and parallel-for call), and each input alone: prints
 * whether the outputs are the same bits (each input alone: or within 1e-5, relative); with
 * `print`, each input's outputs (from the W-worker run, one line each, 9 digits) instead, for
 * diff against another build of the model.
 * usage: embed_threads N W [print] */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include MODEL_H

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define FN(name) CAT(PFX, name)
#define M(name) CAT(PFXU, name)

enum { MAX_WORKERS = 16 };
typedef FN(_elem) elem;

typedef struct Call {
  FN(_work) work;
  void *arg;
  int64_t worker;
} Call;

static void *call_main(void *v) {
  Call *c = (Call *)v;
  c->work(c->arg, c->worker);
  return NULL;
}

static void parallel_for(void *pool, FN(_work) work, void *arg) {
  int64_t workers = *(const int64_t *)pool;
  pthread_t tid[MAX_WORKERS];
  Call calls[MAX_WORKERS];
  for (int64_t w = 1; w < workers; w++) {
    calls[w].work = work, calls[w].arg = arg, calls[w].worker = w;
    if (pthread_create(&tid[w], NULL, call_main, &calls[w]) != 0) exit(1);
  }
  work(arg, 0);
  for (int64_t w = 1; w < workers; w++) pthread_join(tid[w], NULL);
}

/* forward of n inputs at `in`, serially (workers 1) or on `workers` */
static int forward(FN(_ctx) *ctx, int64_t *workers, void *scratch, const elem *in, elem *out,
                   long n) {
  int rc = FN(_set_threads)(ctx, *workers > 1 ? parallel_for : NULL, workers, *workers, scratch,
                            (size_t)*workers * M(_WORKER_SCRATCH_BYTES));
  return rc != 0 ? rc : FN(_forward)(ctx, in, out, n);
}

int main(int argc, char **argv) {
  int print = argc == 4 && strcmp(argv[3], "print") == 0;
  long n = argc == 3 || print ? atol(argv[1]) : 0;
  int64_t workers = argc == 3 || print ? atol(argv[2]) : 0, one = 1;
  if (n < 1 || n > M(_MAX_BATCH) || workers < 1 || workers > MAX_WORKERS) {
    fprintf(stderr, "usage: embed_threads N (1..%d) WORKERS (1..%d) [print]\n", M(_MAX_BATCH),
            MAX_WORKERS);
    return 2;
  }
  size_t in_n = (size_t)n * M(_INPUT_SIZE), out_n = (size_t)n * M(_OUTPUT_SIZE);
  elem *in = malloc(sizeof *in * in_n), *serial = malloc(sizeof *serial * out_n);
  elem *threaded = malloc(sizeof *threaded * out_n), *alone = malloc(sizeof *alone * out_n);
  void *params = NULL, *arena = NULL, *scratch = NULL;
  if (!in || !serial || !threaded || !alone ||
      posix_memalign(&params, 64, M(_PARAMS_BYTES)) ||
      posix_memalign(&arena, 64, M(_INFER_ARENA_BYTES)) ||
      posix_memalign(&scratch, 64, (size_t)workers * M(_WORKER_SCRATCH_BYTES)))
    return 1;
  uint32_t s = 12345;
  for (size_t i = 0; i < in_n; i++) {
    s = s * 1664525u + 1013904223u;
    in[i] = (elem)((double)(s >> 8) / (1 << 24) * 2 - 1);
  }
  FN(_ctx) ctx;
  FN(_mem) mem;
  memset(&mem, 0, sizeof mem);
  mem.params = params;
  mem.arena = arena;
  mem.arena_bytes = M(_INFER_ARENA_BYTES);
  int rc = FN(_init)(&ctx, &mem, 1);
  if (rc == 0) rc = forward(&ctx, &one, scratch, in, serial, n);
  if (rc == 0) rc = forward(&ctx, &workers, scratch, in, threaded, n);
  for (long i = 0; rc == 0 && i < n; i++)
    rc = forward(&ctx, &workers, scratch, in + i * M(_INPUT_SIZE), alone + i * M(_OUTPUT_SIZE), 1);
  if (rc != 0) {
    fprintf(stderr, "embed_threads: %s\n", FN(_strerror)(rc));
    return 1;
  }
  int same = !memcmp(serial, threaded, sizeof *serial * out_n);
  /* one input at a time: a dense layer on at most 4 rows sums its dot products along K
   * (nn.gemm.dot), so only the last bits may differ from a larger batch's */
  int single = !memcmp(serial, alone, sizeof *serial * out_n) ? 2 : 1;
  for (size_t i = 0; i < out_n; i++) {
    double d = (double)serial[i] - (double)alone[i], m = (double)serial[i];
    if ((d < 0 ? -d : d) > 1e-5 * (1 + (m < 0 ? -m : m))) single = 0;
  }
  if (print)
    for (size_t i = 0; i < out_n; i++)
      printf("%.9g%c", (double)threaded[i], (i + 1) % M(_OUTPUT_SIZE) ? ' ' : '\n');
  else
    printf("%ld inputs, %lld workers: %s serial's; one at a time: %s\n", n, (long long)workers,
           same ? "bit-identical to" : "DIFFERENT from",
           single == 2 ? "bit-identical" : single ? "within 1e-5" : "DIFFERENT");
  free(in), free(serial), free(threaded), free(alone), free(params), free(arena), free(scratch);
  return same && single ? 0 : 1;
}
