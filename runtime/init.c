/* init.c — parameter initialisation: takes the model description and a seed, fills the
 * parameter region by each parameter's initialiser (runtime/nnrt.h NnInit), each parameter
 * drawing from its own random stream. Shared by libnnrt.a and the embedding support object
 * (embed.c), so it reports an unknown initialiser instead of exiting. */
#include <math.h>

#include "nnrt_internal.h"

static const char *const init_names[NN_INIT_COUNT] = {
    /* ORDER NnInit */
    "zeros",          "ones",          "const",      "uniform",   "normal",
    "glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
};

const char *nnrt_init_name(int64_t init) {
  return init >= 0 && init < NN_INIT_COUNT ? init_names[init] : "?";
}

/* Keras convention: the last two dims are (in, out); leading dims form the receptive field. */
static void fans(const NnParamInfo *p, double *fan_in, double *fan_out) {
  if (p->rank <= 0) {
    *fan_in = *fan_out = 1;
  } else if (p->rank == 1) {
    *fan_in = *fan_out = (double)p->dims[0];
  } else {
    double receptive = 1;
    for (int64_t i = 0; i + 2 < p->rank; i++)
      receptive *= (double)p->dims[i];
    *fan_in = receptive * (double)p->dims[p->rank - 2];
    *fan_out = receptive * (double)p->dims[p->rank - 1];
  }
  if (*fan_in < 1)
    *fan_in = 1; /* a zero-sized dim must not divide by zero; the tensor is empty anyway */
  if (*fan_out < 1)
    *fan_out = 1;
}

/* One value of initialiser p->init; uniform draws are lo + (hi-lo)*u. */
static double init_value(const NnParamInfo *p, NnRng *r, double fan_in, double fan_out) {
  switch (p->init) {
  case NN_INIT_ZEROS: return 0;
  case NN_INIT_ONES: return 1;
  case NN_INIT_CONST: return p->init_a;
  case NN_INIT_UNIFORM: return p->init_a + (p->init_b - p->init_a) * nnrt_rng_uniform(r);
  case NN_INIT_NORMAL: return p->init_a + p->init_b * nnrt_rng_normal(r);
  case NN_INIT_GLOROT_UNIFORM: {
    double l = sqrt(6.0 / (fan_in + fan_out));
    return -l + 2 * l * nnrt_rng_uniform(r);
  }
  case NN_INIT_GLOROT_NORMAL: return sqrt(2.0 / (fan_in + fan_out)) * nnrt_rng_normal(r);
  case NN_INIT_HE_UNIFORM: {
    double l = sqrt(6.0 / fan_in);
    return -l + 2 * l * nnrt_rng_uniform(r);
  }
  case NN_INIT_HE_NORMAL: return sqrt(2.0 / fan_in) * nnrt_rng_normal(r);
  }
  return NAN; /* an initialiser this runtime does not know; the caller reports it */
}

int64_t nnrt_params_init(const NnModelDesc *d, void *param, uint64_t seed) {
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    double fan_in, fan_out;
    NnRng r;
    if (p->init < 0 || p->init >= NN_INIT_COUNT)
      return k;
    fans(p, &fan_in, &fan_out);
    nnrt_rng_seed(&r, seed, (uint64_t)k);
    for (int64_t i = 0; i < p->size; i++)
      nnrt_set(param, p->offset + i, d->elem_size, init_value(p, &r, fan_in, fan_out));
  }
  return -1;
}
