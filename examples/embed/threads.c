/* threads.c — the CNN embedded with `nnc --emit=header`, run on the caller's own threads.
 *
 *   nnc examples/fashion_cnn.nn --emit=header --weights cnn.safetensors -o fashion_cnn.h
 *   cc -std=c99 -Wall -Wextra -Werror threads.c fashion_cnn.o -lm -pthread -o threads
 *   ./threads t10k-images-idx3-ubyte 64 4
 *
 * Classifies the first N images (N <= FASHION_CNN_MAX_BATCH) as one batch twice: serially,
 * then with fashion_cnn_set_threads given a parallel-for made of plain pthreads (one thread
 * per extra worker and call: simple, not fast), and checks that the outputs are the same bits. */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fashion_cnn.h"

enum { MAX_WORKERS = 16 };

typedef struct Call {
  fashion_cnn_work work;
  void *arg;
  int64_t worker;
} Call;

static void *call_main(void *v) {
  Call *c = (Call *)v;
  c->work(c->arg, c->worker);
  return NULL;
}

static int runs; /* parallel_for calls: shows the kernels used the hook */

/* The parallel-for the header asks for: work(arg, w) for every worker w, the caller being 0. */
static void parallel_for(void *pool, fashion_cnn_work work, void *arg) {
  int64_t workers = *(const int64_t *)pool;
  runs++;
  pthread_t tid[MAX_WORKERS];
  Call calls[MAX_WORKERS];
  for (int64_t w = 1; w < workers; w++) {
    calls[w].work = work, calls[w].arg = arg, calls[w].worker = w;
    if (pthread_create(&tid[w], NULL, call_main, &calls[w]) != 0) {
      fprintf(stderr, "threads: cannot start a thread\n");
      exit(1);
    }
  }
  work(arg, 0);
  for (int64_t w = 1; w < workers; w++)
    pthread_join(tid[w], NULL);
}

static long be32(const unsigned char *b) {
  return (long)b[0] << 24 | (long)b[1] << 16 | (long)b[2] << 8 | (long)b[3];
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: threads IMAGES.idx N WORKERS\n");
    return 2;
  }
  long n = atol(argv[2]);
  int64_t workers = atol(argv[3]);
  if (n < 1 || n > FASHION_CNN_MAX_BATCH || workers < 1 || workers > MAX_WORKERS) {
    fprintf(stderr, "threads: N must be 1..%d and WORKERS 1..%d\n", FASHION_CNN_MAX_BATCH,
            MAX_WORKERS);
    return 2;
  }
  FILE *f = fopen(argv[1], "rb");
  unsigned char head[16];
  if (!f || fread(head, 1, sizeof head, f) != sizeof head || be32(head) != 0x803 ||
      be32(head + 8) * be32(head + 12) != FASHION_CNN_INPUT_SIZE || be32(head + 4) < n) {
    fprintf(stderr, "threads: %s: not an IDX file of %ld 28x28 ubyte images\n", argv[1], n);
    return 1;
  }
  unsigned char *pixels = (unsigned char *)malloc((size_t)n * FASHION_CNN_INPUT_SIZE);
  float *images = (float *)malloc(sizeof(float) * (size_t)n * FASHION_CNN_INPUT_SIZE);
  float *serial = (float *)malloc(sizeof(float) * (size_t)n * FASHION_CNN_OUTPUT_SIZE);
  float *threaded = (float *)malloc(sizeof(float) * (size_t)n * FASHION_CNN_OUTPUT_SIZE);
  void *arena = NULL, *scratch = NULL;
  if (posix_memalign(&arena, 64, FASHION_CNN_INFER_ARENA_BYTES) ||
      posix_memalign(&scratch, 64, (size_t)workers * FASHION_CNN_WORKER_SCRATCH_BYTES))
    arena = scratch = NULL;
  if (!pixels || !images || !serial || !threaded || !arena || !scratch ||
      fread(pixels, 1, (size_t)n * FASHION_CNN_INPUT_SIZE, f) !=
          (size_t)n * FASHION_CNN_INPUT_SIZE) {
    fprintf(stderr, "threads: out of memory, or %s is truncated\n", argv[1]);
    return 1;
  }
  fclose(f);
  for (long i = 0; i < n * FASHION_CNN_INPUT_SIZE; i++)
    images[i] = (float)((double)pixels[i] * (1.0 / 255));

  fashion_cnn_ctx ctx;
  fashion_cnn_mem mem;
  memset(&mem, 0, sizeof mem);
  mem.arena = arena;
  mem.arena_bytes = FASHION_CNN_INFER_ARENA_BYTES;
  int rc = fashion_cnn_init(&ctx, &mem, 0);
  if (rc == FASHION_CNN_OK)
    rc = fashion_cnn_forward(&ctx, images, serial, n);
  if (rc == FASHION_CNN_OK)
    rc = fashion_cnn_set_threads(&ctx, parallel_for, &workers, workers, scratch,
                                 (size_t)workers * FASHION_CNN_WORKER_SCRATCH_BYTES);
  if (rc == FASHION_CNN_OK)
    rc = fashion_cnn_forward(&ctx, images, threaded, n);
  if (rc != FASHION_CNN_OK) {
    fprintf(stderr, "threads: %s\n", fashion_cnn_strerror(rc));
    return 1;
  }
  int same = !memcmp(serial, threaded, sizeof(float) * (size_t)n * FASHION_CNN_OUTPUT_SIZE);
  printf("threads: %ld images, %lld workers, %d parallel-for calls: outputs %s serial's\n", n,
         (long long)workers, runs, same ? "bit-identical to" : "DIFFERENT from");
  /* a scratch region too small for the workers is refused */
  rc = fashion_cnn_set_threads(&ctx, parallel_for, &workers, workers, scratch, 64);
  printf("threads: small scratch: %s\n", fashion_cnn_strerror(rc));
  free(pixels), free(images), free(serial), free(threaded), free(arena), free(scratch);
  return same ? 0 : 1;
}
