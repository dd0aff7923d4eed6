/* nnrt_internal.h — declarations shared by the files of libnnrt.a (not part of the ABI).
 *
 * One section per file: rng.c (random streams), data.c (the data set in memory), train.c
 * (buffers, initialisation, train/info/gradcheck) and main.c (the CLI, which fills NnOptions).
 * Tensors live in the kernels' element type (f32 or f64, desc->elem_size); the runtime reads and
 * writes them through nnrt_get/nnrt_set and keeps everything else in doubles. */
#ifndef NNRT_INTERNAL_H
#define NNRT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "nnrt.h"

#if defined(__GNUC__) || defined(__clang__)
#define NNRT_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define NNRT_NORETURN __attribute__((noreturn))
#else
#define NNRT_PRINTF(f, a)
#define NNRT_NORETURN
#endif

/* Exit statuses of a generated binary. */
enum {
  NNRT_EXIT_OK = 0,    /* success; gradcheck passed */
  NNRT_EXIT_FAIL = 1,  /* runtime failure: bad data, non-finite loss, GRAD FAIL, bad ABI */
  NNRT_EXIT_USAGE = 2, /* bad command line */
};

/* ---- main.c ---- */

extern const char *nnrt_prog; /* basename(argv[0]), the prefix of every message */

/* What the command line asked for; main.c fills it from the flags and the model's defaults. */
typedef struct NnOptions {
  int64_t epochs;        /* --epochs, else desc->epochs */
  int64_t batch;         /* --batch, else desc->max_batch; 1..max_batch */
  uint64_t seed;         /* --seed, else desc->seed: initialisation and shuffling */
  const char *data_path; /* --data, or NULL for the model's own data */
  int quiet;             /* --quiet: only the final line */
  int verbose;           /* --verbose: every epoch */
  double *hyper;         /* n_hyper values: defaults overridden by --lr / --set */
  double eps;            /* gradcheck: finite-difference step */
  double tol;            /* gradcheck: largest accepted relative difference */
} NnOptions;

/* "prog: error: MSG\n" on stderr, then exit(NNRT_EXIT_FAIL). */
NNRT_NORETURN void nnrt_fatal(const char *fmt, ...) NNRT_PRINTF(1, 2);

/* ---- rng.c ---- */

/* xoshiro256** seeded through splitmix64; one independent stream per (seed, stream id). */
typedef struct NnRng {
  uint64_t s[4];    /* xoshiro256** state, never all zero */
  double spare;     /* second Box–Muller value, valid when has_spare */
  int has_spare;    /* 1 when spare holds an unused normal deviate */
} NnRng;

#define NNRT_STREAM_SHUFFLE UINT64_MAX /* stream of the epoch shuffles; params use 0..n-1 */

void nnrt_rng_seed(NnRng *r, uint64_t seed, uint64_t stream);
uint64_t nnrt_rng_u64(NnRng *r);
double nnrt_rng_uniform(NnRng *r);            /* [0, 1) with 53 random bits */
double nnrt_rng_normal(NnRng *r);             /* N(0, 1), Box–Muller */
uint64_t nnrt_rng_below(NnRng *r, uint64_t n); /* uniform in [0, n), n > 0, unbiased */

/* ---- data.c ---- */

/* The training set in memory: rows of x_size inputs followed by y_size targets. */
typedef struct NnData {
  int64_t rows;       /* samples */
  int64_t cols;       /* x_size + y_size */
  const double *v;    /* (rows, cols), row-major */
  double *owned;      /* what nnrt_data_free releases (NULL for the model's inline table) */
  const char *origin; /* for messages: the CSV path, or "the model's data table" */
} NnData;

/* Loads the model's data, or the CSV at `path` when it is not NULL; exits on any error. */
void nnrt_data_load(const NnModelDesc *d, const char *path, NnData *out);
void nnrt_data_free(NnData *data);

/* ---- train.c ---- */

int nnrt_train(const NnModelDesc *d, const NnOptions *o);
int nnrt_info(const NnModelDesc *d, const NnOptions *o);
int nnrt_gradcheck(const NnModelDesc *d, const NnOptions *o);
const char *nnrt_init_name(int64_t init); /* "glorot_uniform", ...; "?" when out of range */
int64_t nnrt_hyper_index(const NnModelDesc *d, const char *name); /* -1: no such name */

/* Element i of a tensor region of elem_size-byte elements (4: float, 8: double). */
static inline double nnrt_get(const void *base, int64_t i, int64_t elem_size) {
  return elem_size == 4 ? (double)((const float *)base)[i] : ((const double *)base)[i];
}
static inline void nnrt_set(void *base, int64_t i, int64_t elem_size, double v) {
  if (elem_size == 4)
    ((float *)base)[i] = (float)v;
  else
    ((double *)base)[i] = v;
}

#endif
