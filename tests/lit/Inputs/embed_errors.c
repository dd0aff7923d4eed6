/* embed_errors.c — every error path of an embedded model's API (xor.h, from examples/xor.nn),
 * printed as "what: code name" lines for FileCheck. argv[1]: a file that is not safetensors;
 * argv[2]: a safetensors file of another model. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "xor.h"

static float params[XOR_PARAMS_BYTES / sizeof(float)], grads[XOR_GRADS_BYTES / sizeof(float)];
static float state[XOR_STATE_BYTES / sizeof(float) + 1];
static float arena[XOR_TRAIN_ARENA_BYTES / sizeof(float) + 1];

static void show(const char *what, int rc) { printf("%s: %d %s\n", what, rc, xor_strerror(rc)); }

int main(int argc, char **argv) {
  xor_ctx ctx, fresh;
  xor_mem mem;
  float x[8] = {0, 0, 0, 1, 1, 0, 1, 1}, y[4] = {0, 1, 1, 0}, out[4];
  double v;
  (void)argc;
  memset(&mem, 0, sizeof mem);
  memset(&fresh, 0, sizeof fresh);
  show("null mem", xor_init(&ctx, NULL, 1));
  show("wrong hash", xor_init_checked(&ctx, &mem, 1, XOR_HASH ^ 1));
  mem.params = params;
  mem.arena = arena;
  mem.arena_bytes = XOR_INFER_ARENA_BYTES - 1;
  show("small arena", xor_init(&ctx, &mem, 1));
  mem.arena_bytes = XOR_INFER_ARENA_BYTES;
  mem.arena = (char *)arena + 1;
  show("misaligned arena", xor_init(&ctx, &mem, 1));
  mem.arena = arena;
  show("forward before init", xor_forward(&fresh, x, out, 1));
  int rc = xor_init(&ctx, &mem, 1);
  show("inference init", rc);
  if (rc != XOR_OK)
    return 0; /* a header from another compilation: nothing more can work */
  show("batch 0", xor_forward(&ctx, x, out, 0));
  show("batch over max", xor_forward(&ctx, x, out, XOR_MAX_BATCH + 1));
  show("misaligned input", xor_forward(&ctx, (const float *)((const char *)x + 2), out, 1));
  show("train without grads", xor_train_step(&ctx, x, y, 4, NULL));
  show("not safetensors", xor_load_weights_file(&ctx, argv[1]));
  show("another model", xor_load_weights_file(&ctx, argv[2]));
  show("missing file", xor_load_weights_file(&ctx, "/nonexistent/w.safetensors"));
  show("garbage buffer", xor_load_weights(&ctx, "12345678", 8));
  show("unknown hyper", xor_set_hyper(&ctx, "momentum", 0.9));
  show("lr", xor_get_hyper(&ctx, "lr", &v));
  printf("lr = %g\n", v);
  size_t len = 0;
  show("save size", xor_save_weights(&ctx, NULL, 0, &len));
  printf("bytes %s\n", len > 8 ? "> 8" : "<= 8");
  show("unknown code", -99);
  /* training: grads, state and the training arena */
  mem.grads = grads;
  mem.state = state;
  mem.arena_bytes = XOR_TRAIN_ARENA_BYTES;
  show("training init", xor_init(&ctx, &mem, 1));
  show("set lr", xor_set_hyper(&ctx, "lr", 0.5));
  y[0] = 1.0f / 0.0f;
  show("non-finite target", xor_train_step(&ctx, x, y, 4, &v));
  printf("steps %lld\n", (long long)xor_steps(&ctx));
  y[0] = 0;
  show("step", xor_train_step(&ctx, x, y, 4, &v));
  printf("steps %lld\n", (long long)xor_steps(&ctx));
  xor_param_dense1_b(&ctx)[0] = 42;
  xor_layout lay;
  xor_get_layout(&lay);
  printf("layout %s\n", lay.hash == XOR_HASH && lay.infer_arena_bytes == XOR_INFER_ARENA_BYTES &&
                                lay.train_arena_bytes == XOR_TRAIN_ARENA_BYTES &&
                                lay.max_batch == XOR_MAX_BATCH
                            ? "matches"
                            : "DIFFERS");
  show("save file", xor_save_weights_file(&ctx, "/nonexistent/w.safetensors"));
  return 0;
}
