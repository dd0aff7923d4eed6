/* classify.c — Fashion-MNIST images through the CNN embedded with `nnc --emit=header`.
 *
 *   nnc examples/fashion_cnn.nn --emit=header --weights cnn.safetensors -o fashion_cnn.h
 *   cc -std=c99 -Wall -Wextra -Werror classify.c fashion_cnn.o -lm -o classify
 *   ./classify t10k-images-idx3-ubyte 8
 *
 * Reads the first N images of an uncompressed IDX file and prints, per image, the predicted
 * class and the ten outputs, in the format of the training binary's `predict` (so the two can
 * be compared with diff). No heap: the context and the arena are static arrays, and the
 * weights are the constants baked into fashion_cnn.o. Compiles as C99 and as C++. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fashion_cnn.h"

static fashion_cnn_ctx ctx;
static float arena[FASHION_CNN_INFER_ARENA_BYTES / sizeof(float)]; /* activations only */
static unsigned char pixels[FASHION_CNN_INPUT_SIZE];
static float image[FASHION_CNN_INPUT_SIZE];                        /* (28, 28, 1) */
static float out[FASHION_CNN_OUTPUT_SIZE];                          /* (10) logits */

/* A big-endian 32-bit word of the IDX header. */
static long be32(const unsigned char *b) {
  return (long)b[0] << 24 | (long)b[1] << 16 | (long)b[2] << 8 | (long)b[3];
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: classify IMAGES.idx N\n");
    return 2;
  }
  FILE *f = fopen(argv[1], "rb");
  unsigned char head[16];
  if (!f || fread(head, 1, sizeof head, f) != sizeof head || be32(head) != 0x803 ||
      be32(head + 8) * be32(head + 12) != FASHION_CNN_INPUT_SIZE) {
    fprintf(stderr, "classify: %s: not an IDX file of 28x28 ubyte images\n", argv[1]);
    return 1;
  }
  long n = atol(argv[2]);
  if (n > be32(head + 4))
    n = be32(head + 4);

  fashion_cnn_mem mem;
  memset(&mem, 0, sizeof mem); /* params NULL: read the baked weights; no grads: inference */
  mem.arena = arena;
  mem.arena_bytes = sizeof arena;
  int rc = fashion_cnn_init(&ctx, &mem, 0);
  if (rc != FASHION_CNN_OK) {
    fprintf(stderr, "classify: %s\n", fashion_cnn_strerror(rc));
    return 1;
  }
  printf("class");
  for (int j = 0; j < FASHION_CNN_OUTPUT_SIZE; j++)
    printf(",out%d", j);
  printf("\n");
  for (long i = 0; i < n; i++) {
    if (fread(pixels, 1, sizeof pixels, f) != sizeof pixels) {
      fprintf(stderr, "classify: %s: truncated at image %ld\n", argv[1], i);
      return 1;
    }
    for (int k = 0; k < FASHION_CNN_INPUT_SIZE; k++)
      image[k] = (float)((double)pixels[k] * (1.0 / 255)); /* as the .nn file's scale = 1/255 */
    rc = fashion_cnn_forward(&ctx, image, out, 1); /* one sample at a time */
    if (rc != FASHION_CNN_OK) {
      fprintf(stderr, "classify: %s\n", fashion_cnn_strerror(rc));
      return 1;
    }
    int best = 0;
    for (int j = 1; j < FASHION_CNN_OUTPUT_SIZE; j++)
      if (out[j] > out[best])
        best = j;
    printf("%d", best);
    for (int j = 0; j < FASHION_CNN_OUTPUT_SIZE; j++)
      printf(",%.9g", (double)out[j]);
    printf("\n");
  }
  fclose(f);
  return 0;
}
