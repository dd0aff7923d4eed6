/* two_models.c — two embedded models in one program, their contexts in separate threads.
 *
 *   nnc examples/xor.nn --emit=header -o xor.h
 *   nnc examples/fashion_cnn.nn --emit=header --weights cnn.safetensors -o fashion_cnn.h
 *   cc -std=c99 -Wall -Wextra -Werror two_models.c xor.o fashion_cnn.o -lm -pthread
 *   ./a.out t10k-images-idx3-ubyte 16 xor.safetensors
 *
 * One thread trains XOR from scratch with xor_train_step (its regions on the heap, sized by
 * xor_get_layout), saves the weights as safetensors to a buffer and to a file, and checks that
 * an inference-only context loaded from the buffer predicts the same. Two more threads each run
 * their own CNN context over the same images (baked weights, batch = N); the main thread checks
 * they agree and prints the classes. Symbols are prefixed per model and the support code keeps
 * no global state, so none of this needs a lock. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fashion_cnn.h"
#include "xor.h"

enum { MAX_IMAGES = FASHION_CNN_MAX_BATCH };

typedef struct CnnJob {
  const float *images;          /* (n, 28, 28, 1) */
  long n;
  float out[MAX_IMAGES * FASHION_CNN_OUTPUT_SIZE];
  int rc;
} CnnJob;

typedef struct XorJob {
  const char *path;             /* where to save the trained weights */
  double loss;                  /* after training */
  float pred[4];                /* the trained context's outputs */
  float again[4];               /* an inference-only context loaded from the saved buffer */
  int rc;
} XorJob;

static void *run_cnn(void *arg) {
  CnnJob *job = (CnnJob *)arg;
  fashion_cnn_ctx ctx; /* on this thread's stack */
  fashion_cnn_mem mem;
  memset(&mem, 0, sizeof mem);
  mem.arena_bytes = FASHION_CNN_INFER_ARENA_BYTES;
  mem.arena = malloc(mem.arena_bytes);
  job->rc = fashion_cnn_init(&ctx, &mem, 0);
  if (job->rc == FASHION_CNN_OK)
    job->rc = fashion_cnn_forward(&ctx, job->images, job->out, job->n);
  free(mem.arena);
  return NULL;
}

/* The regions of an XOR context: training ones too when `train`. */
static int xor_open(xor_ctx *ctx, xor_mem *mem, int train) {
  xor_layout lay;
  xor_get_layout(&lay);
  memset(mem, 0, sizeof *mem);
  mem->params = malloc(lay.params_bytes);
  mem->arena_bytes = train ? lay.train_arena_bytes : lay.infer_arena_bytes;
  mem->arena = malloc(mem->arena_bytes);
  if (train) {
    mem->grads = malloc(lay.grads_bytes);
    mem->state = malloc(lay.state_bytes);
  }
  return xor_init(ctx, mem, 1);
}

static void xor_close(xor_mem *mem) {
  free(mem->params);
  free(mem->grads);
  free(mem->state);
  free(mem->arena);
}

static void *run_xor(void *arg) {
  static const float x[4 * XOR_INPUT_SIZE] = {0, 0, 0, 1, 1, 0, 1, 1};
  static const float y[4 * XOR_TARGET_SIZE] = {0, 1, 1, 0};
  XorJob *job = (XorJob *)arg;
  xor_ctx ctx, copy;
  xor_mem mem, copy_mem;
  int rc = xor_open(&ctx, &mem, 1);
  for (int step = 0; rc == XOR_OK && step < 2000; step++)
    rc = xor_train_step(&ctx, x, y, 4, &job->loss);
  if (rc == XOR_OK)
    rc = xor_forward(&ctx, x, job->pred, 4);
  size_t len = 0;
  if (rc == XOR_OK && xor_save_weights(&ctx, NULL, 0, &len) != XOR_ERR_SPACE)
    rc = XOR_ERR_ARG;
  void *buf = malloc(len);
  if (rc == XOR_OK)
    rc = xor_save_weights(&ctx, buf, len, &len);
  if (rc == XOR_OK)
    rc = xor_save_weights_file(&ctx, job->path);
  if (rc == XOR_OK)
    rc = xor_open(&copy, &copy_mem, 0);
  if (rc == XOR_OK)
    rc = xor_load_weights(&copy, buf, len);
  if (rc == XOR_OK)
    rc = xor_forward(&copy, x, job->again, 4);
  if (rc == XOR_OK && xor_train_step(&copy, x, y, 4, NULL) != XOR_ERR_NO_TRAIN)
    rc = XOR_ERR_ARG; /* an inference-only context must refuse to train */
  free(buf);
  xor_close(&mem);
  xor_close(&copy_mem);
  job->rc = rc;
  return NULL;
}

/* The first n images of an uncompressed IDX file, scaled as the .nn file says (1/255). */
static float *read_images(const char *path, long *n) {
  FILE *f = fopen(path, "rb");
  unsigned char head[16];
  if (!f || fread(head, 1, 16, f) != 16)
    return NULL;
  float *img = (float *)malloc(sizeof(float) * (size_t)*n * FASHION_CNN_INPUT_SIZE);
  unsigned char *px = (unsigned char *)malloc((size_t)*n * FASHION_CNN_INPUT_SIZE);
  *n = (long)fread(px, FASHION_CNN_INPUT_SIZE, (size_t)*n, f);
  for (long i = 0; i < *n * FASHION_CNN_INPUT_SIZE; i++)
    img[i] = (float)((double)px[i] * (1.0 / 255));
  free(px);
  fclose(f);
  return img;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: two_models IMAGES.idx N XOR.safetensors\n");
    return 2;
  }
  long n = atol(argv[2]);
  if (n < 1 || n > MAX_IMAGES)
    n = MAX_IMAGES;
  float *images = read_images(argv[1], &n);
  if (!images) {
    fprintf(stderr, "two_models: cannot read %s\n", argv[1]);
    return 1;
  }
  static CnnJob cnn[2];
  static XorJob xr;
  pthread_t th[3];
  xr.path = argv[3];
  for (int k = 0; k < 2; k++) {
    cnn[k].images = images;
    cnn[k].n = n;
    pthread_create(&th[k], NULL, run_cnn, &cnn[k]);
  }
  pthread_create(&th[2], NULL, run_xor, &xr);
  for (int k = 0; k < 3; k++)
    pthread_join(th[k], NULL);
  free(images);
  if (cnn[0].rc || cnn[1].rc || xr.rc) {
    fprintf(stderr, "two_models: %s / %s / %s\n", fashion_cnn_strerror(cnn[0].rc),
            fashion_cnn_strerror(cnn[1].rc), xor_strerror(xr.rc));
    return 1;
  }
  int same = !memcmp(cnn[0].out, cnn[1].out, sizeof cnn[0].out);
  printf("cnn: two contexts %s; classes", same ? "agree" : "DIFFER");
  for (long i = 0; i < n; i++) {
    const float *o = cnn[0].out + i * FASHION_CNN_OUTPUT_SIZE;
    int best = 0;
    for (int j = 1; j < FASHION_CNN_OUTPUT_SIZE; j++)
      if (o[j] > o[best])
        best = j;
    printf(" %d", best);
  }
  printf("\nxor: loss %.4f, outputs", xr.loss);
  for (int i = 0; i < 4; i++)
    printf(" %.3f", (double)xr.pred[i]);
  printf(", reloaded %s\n", memcmp(xr.pred, xr.again, sizeof xr.pred) ? "DIFFERS" : "the same");
  return same ? 0 : 1;
}
