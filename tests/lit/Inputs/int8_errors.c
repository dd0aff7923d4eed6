/* What an int8-quantized fashion_cnn.o refuses: training and weight access (ERR_QUANTIZED). */
#include <stdio.h>
#include <string.h>

#include "fashion_cnn.h"

static fashion_cnn_ctx ctx;
static float arena[FASHION_CNN_TRAIN_ARENA_BYTES / sizeof(float)];
static float params[FASHION_CNN_PARAMS_BYTES / sizeof(float)];
static float grads[FASHION_CNN_GRADS_BYTES / sizeof(float)];
static float state[FASHION_CNN_STATE_BYTES / sizeof(float)];
static float x[FASHION_CNN_INPUT_SIZE], y[1];
static char buf[1 << 20];

int main(void) {
  fashion_cnn_mem mem = {params, grads, state, arena, sizeof arena};
  int rc = fashion_cnn_init(&ctx, &mem, 1);
  if (rc != FASHION_CNN_OK) {
    printf("init: %s\n", fashion_cnn_strerror(rc));
    return 1;
  }
  size_t len;
  rc = fashion_cnn_train_step(&ctx, x, y, 1, NULL);
  printf("train_step: %d %s\n", rc, fashion_cnn_strerror(rc));
  rc = fashion_cnn_save_weights(&ctx, buf, sizeof buf, &len);
  printf("save_weights: %d %s\n", rc, fashion_cnn_strerror(rc));
  rc = fashion_cnn_load_weights(&ctx, buf, sizeof buf);
  printf("load_weights: %d %s\n", rc, fashion_cnn_strerror(rc));
  printf("param: %s\n", fashion_cnn_param_dense1_W(&ctx) ? "not NULL" : "NULL");
  return 0;
}
