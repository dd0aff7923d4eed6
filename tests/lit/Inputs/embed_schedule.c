/* embed_schedule.c — trains sched.h (tests/lit/embed/schedule.nn, f64) for argv[2] steps on
 * its four rows, printing the loss before each step as "epoch K loss X" and the loss after
 * the last as "final: loss X", the training binary's --verbose form (for compare.py).
 * argv[1]: the total steps to set, or "default" to keep what init chose. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sched.h"

static double params[SCHED_PARAMS_BYTES / sizeof(double)];
static double grads[SCHED_GRADS_BYTES / sizeof(double)];
static double state[SCHED_STATE_BYTES / sizeof(double) + 1];
static double arena[SCHED_TRAIN_ARENA_BYTES / sizeof(double) + 1];

int main(int argc, char **argv) {
  static const double x[12] = {1.0, 2.0, -1.0, 0.5, -1.5, 2.0, -2.0, 1.0, 0.5, 1.5, 0.5, -0.5};
  static const double y[12] = {2.0, -1.0, 0.5, 1.0, 3.0, -2.0, -1.0, 0.5, 1.0, 0.0, 2.0, 1.5};
  if (argc != 3)
    return 2;
  sched_ctx ctx;
  sched_mem mem = {params, grads, state, arena, sizeof arena};
  if (sched_init(&ctx, &mem, 1) != SCHED_OK)
    return 1;
  if (strcmp(argv[1], "default") != 0) {
    int rc = sched_set_total_steps(&ctx, atoll(argv[1]));
    printf("set_total_steps: %d %s\n", rc, sched_strerror(rc));
  }
  int steps = atoi(argv[2]);
  for (int k = 1; k <= steps; k++) {
    double loss;
    if (sched_train_step(&ctx, x, y, 4, &loss) != SCHED_OK)
      return 1;
    printf("epoch %d loss %.6f\n", k, loss);
  }
  double out[12], sum = 0;
  sched_forward(&ctx, x, out, 4);
  for (int i = 0; i < 12; i++)
    sum += (out[i] - y[i]) * (out[i] - y[i]);
  printf("final: loss %.6f\n", sum / 12);
  return 0;
}
