/* nnrt_internal.h — declarations shared by the files of libnnrt.a (not part of the ABI).
 *
 * One section per file, in pipeline order: main.c (the CLI, which fills NnOptions), rng.c
 * (random streams), pool.c (threads for the kernels), data.c and idx.c (data sets in memory), model.c (kernel buffers,
 * initialisation, `info`), metrics.c (loss, accuracy, precision/recall/F1, confusion, MSE/MAE),
 * json.c and ckpt.c (safetensors checkpoints), train.c (`train`), infer.c (`eval`, `predict`)
 * and gradcheck.c (`gradcheck`). Tensors live in the kernels' element type (f32 or f64,
 * desc->elem_size); the runtime reads and writes single elements through nnrt_get/nnrt_set and
 * keeps everything else in doubles. */
#ifndef NNRT_INTERNAL_H
#define NNRT_INTERNAL_H

#include <stdbool.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

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

/* What the command line asked for; main.c fills it from the flags and the model's defaults.
 * The *_set fields say which values were given explicitly, so that --resume can take the
 * others from the checkpoint. */
typedef struct NnOptions {
  int64_t epochs;            /* --epochs, else desc->epochs: the total to reach */
  int64_t batch;             /* --batch, else desc->max_batch; 1..max_batch */
  uint64_t seed;             /* --seed, else desc->seed: initialisation, split, shuffling */
  int batch_set, seed_set;   /* 1: --batch / --seed was given */
  const char *data_path;     /* --data: a CSV or IDX file instead of the model's data */
  const char *labels_path;   /* --labels: the IDX labels for --data */
  const char *val_path;      /* --val: a CSV or IDX validation set instead of the model's */
  const char *val_labels;    /* --val-labels: the IDX labels for --val */
  const char *save_path;     /* --save: checkpoint after every --save-every epochs and at the end */
  int64_t save_every;        /* --save-every N (default 1) */
  const char *resume_path;   /* --resume: continue from this checkpoint */
  const char *init_from;     /* --init-from: copy matching tensors from this checkpoint */
  const char *load_path;     /* --load (eval, predict): parameters from this checkpoint */
  const char *input_path;    /* --input (predict): CSV or IDX inputs */
  const char *output_path;   /* --output/-o: predict's CSV or .npy (NULL: stdout), plot's SVG */
  const char *log_path;      /* --log: one CSV row per step and per epoch */
  const char *plot_path;     /* --plot (train): draw the log (--log's, or a temporary one) */
  const char *plot_input;    /* plot: the CSV log to draw */
  int64_t patience;          /* --patience, else desc->patience: early stopping; 0 = off */
  int64_t monitor;           /* --monitor, else desc->monitor: an NnMonitor */
  int skip_nonfinite;        /* --skip-nonfinite: skip steps with a non-finite loss/gradient */
  int confusion;             /* --confusion: print the confusion matrix at the end */
  int quiet;                 /* --quiet: only the final lines */
  int verbose;               /* --verbose: every epoch */
  double *hyper;             /* n_hyper values: defaults overridden by --lr / --set */
  unsigned char *hyper_set;  /* n_hyper flags: 1 where --lr / --set gave the value */
  double eps;                /* gradcheck: finite-difference step */
  double tol;                /* gradcheck: largest accepted relative difference */
  const char *prompt;        /* sample: --prompt, the text generation continues */
  int64_t tokens;            /* sample: --tokens, bytes to generate */
  int64_t count;             /* sample: --count, images in the grid (0: the default) */
  double temperature;        /* sample: --temperature, 0 for the most likely byte */
  int64_t top_k;             /* sample: --top-k, draw from the k likeliest (0: all) */
  int64_t threads;           /* --threads, else the CPUs this process may run on */
} NnOptions;

/* Ends the program with `status` after a reported failure: stdio's buffers flushed (a --log
 * file's rows so far, the output), then _exit, not exit: the runtime registers nothing with
 * atexit, and LeakSanitizer's check at exit (the sanitizer build's tests) would otherwise
 * list the buffers the failing function held after the error, which is then no longer the
 * last thing printed. */
NNRT_NORETURN void nnrt_exit(int status);
/* "prog: error: MSG\n" on stderr, then nnrt_exit(NNRT_EXIT_FAIL). */
NNRT_NORETURN void nnrt_fatal(const char *fmt, ...) NNRT_PRINTF(1, 2);
/* "PATH: error: MSG\n" on stderr, then nnrt_exit(NNRT_EXIT_FAIL): a problem with a file's content. */
NNRT_NORETURN void nnrt_file_error(const char *path, const char *fmt, ...) NNRT_PRINTF(2, 3);
/* malloc that never returns NULL; `where` is __FILE__ ":" __LINE__ for the message. */
void *nnrt_alloc(size_t bytes, const char *where);
#define NNRT_STR2(x) #x
#define NNRT_STR(x) NNRT_STR2(x)
#define NNRT_HERE __FILE__ ":" NNRT_STR(__LINE__)
#define NNRT_ALLOC(n, T) ((T *)nnrt_alloc((size_t)(n) * sizeof(T), NNRT_HERE))

/* ---- rng.c ---- */

/* xoshiro256** seeded through splitmix64; one independent stream per (seed, stream id). */
typedef struct NnRng {
  uint64_t s[4];    /* xoshiro256** state, never all zero */
  double spare;     /* second Box–Muller value, valid when has_spare */
  int has_spare;    /* 1 when spare holds an unused normal deviate */
} NnRng;

/* Stream ids: parameters use 0..n_params-1; these sit at the top of the range. */
#define NNRT_STREAM_SHUFFLE UINT64_MAX     /* the epoch shuffles, one after another */
#define NNRT_STREAM_SPLIT (UINT64_MAX - 1) /* the one shuffle before a validation split */
#define NNRT_STREAM_SAMPLE (UINT64_MAX - 2) /* the draws of `sample` */

void nnrt_rng_seed(NnRng *r, uint64_t seed, uint64_t stream);
uint64_t nnrt_rng_u64(NnRng *r);
double nnrt_rng_uniform(NnRng *r);            /* [0, 1) with 53 random bits */
double nnrt_rng_normal(NnRng *r);             /* N(0, 1), Box–Muller */
uint64_t nnrt_rng_below(NnRng *r, uint64_t n); /* uniform in [0, n), n > 0, unbiased */
void nnrt_shuffle(int64_t *v, int64_t n, NnRng *r); /* Fisher–Yates */

/* ---- init.c ---- */

/* Each parameter draws from its own stream (seed, index), so runs are reproducible. Returns
 * -1, or the index of a parameter whose initialiser this runtime does not know. */
int64_t nnrt_params_init(const NnModelDesc *d, void *param, uint64_t seed);
const char *nnrt_init_name(int64_t init); /* "glorot_uniform", ...; "?" when out of range */

/* ---- data.c ---- */

/* How a data set keeps its inputs. Bytes stay bytes (a quarter of f32's memory: Fashion-MNIST
 * is 47 MB instead of 188 MB); nnrt_gather scales them as it assembles a batch. */
typedef enum NnStore {
  NNRT_STORE_ELEM, /* the kernels' element type, already scaled */
  NNRT_STORE_U8,   /* uint8, multiplied by x_scale when gathered */
  NNRT_STORE_I8,   /* int8, likewise */
} NnStore;

/* A data set in memory: targets in the kernels' element type, inputs as x_store says. */
typedef struct NnData {
  int64_t rows;       /* samples */
  int64_t x_size;     /* inputs per sample (desc->x_size) */
  int64_t y_size;     /* targets per sample; 0 for inputs-only files (predict) */
  int64_t elem_size;  /* 4 or 8 */
  NnStore x_store;    /* the type of x's elements */
  double x_scale;     /* NNRT_STORE_U8/I8: what multiplies each input */
  void *x;            /* (rows, x_size) */
  void *y;            /* (rows, y_size); NULL when y_size is 0 */
  const char *origin; /* for messages: a path, or "the model's data table" */
} NnData;

/* Some rows of a data set: the training rows, or those held out for validation. */
typedef struct NnSet {
  const NnData *data; /* where the rows are */
  int64_t *idx;       /* (n) row numbers into data, owned */
  int64_t n;          /* samples */
  char what[160];     /* for messages: "training set", "validation set 'test'", ... */
} NnSet;

/* Where a file given on the command line is used; decides what it must contain. */
typedef enum NnFileUse {
  NNRT_USE_TARGETS, /* inputs and targets (train, eval, gradcheck) */
  NNRT_USE_INPUTS,  /* inputs, and maybe targets that are ignored (predict) */
} NnFileUse;

/* Loads a data set the .nn file declared; exits naming the file on any problem. */
void nnrt_data_declared(const NnModelDesc *d, const NnDataSource *s, NnData *out);
/* Loads a file named on the command line: .npy or IDX (by the magic number; targets or labels
 * from `labels`) or CSV; inputs are scaled by the training data's declared scale. */
void nnrt_data_file(const NnModelDesc *d, const char *path, const char *labels, NnFileUse use,
                    NnData *out);
void nnrt_data_free(NnData *data);
int64_t nnrt_data_bytes(const NnData *data); /* memory its inputs and targets take */
/* Checks one target value of a labels model: an integer class index in [0, classes). Returns
 * NULL when it is one, else what is wrong ("is not an integer", ...) in buf. */
const char *nnrt_label_problem(const NnModelDesc *d, double v, char *buf, size_t cap);
/* Exits naming path and the sample when one of the n stored targets y is not a class index. */
void nnrt_check_labels(const NnModelDesc *d, const char *path, const void *y, int64_t n);
/* An empty NnData of d's inputs (y_size targets per sample) read from origin. */
void nnrt_data_begin(NnData *out, const NnModelDesc *d, int64_t y_size, const char *origin);
int64_t nnrt_classes(const NnModelDesc *d); /* out_size, 2 for one binary output, 0: regression */
/* Positions that each get a class of their own: a sequence model's [t, k] logits against t
 * class indices (t = y_size); 1 for one class per sample. */
int64_t nnrt_positions(const NnModelDesc *d);

/* Every row of data, in order. */
void nnrt_set_all(NnSet *s, const NnData *data, const char *what);
/* The last `fraction` of data (after one shuffle from `seed`) into val, the rest into train. */
/* Rows of `rows` that a validation split of `fraction` holds out: at least 1, at most rows - 1. */
static inline int64_t nnrt_held_out(int64_t rows, double fraction) {
  int64_t n = (int64_t)llround((double)rows * fraction);
  return n < 1 ? 1 : n > rows - 1 ? rows - 1 : n;
}
void nnrt_set_split(const NnData *data, double fraction, uint64_t seed, NnSet *train,
                    NnSet *val);
void nnrt_set_free(NnSet *s);

/* ---- idx.c ---- */

/* 1 if the file (plain or gzip) begins with an IDX magic number, 0 otherwise (or unreadable). */
int nnrt_idx_sniff(const char *path);
/* IDX images (and labels, if not NULL) into out: x scaled by `scale`, y the class index. */
void nnrt_idx_load(const NnModelDesc *d, const char *images, const char *labels, double scale,
                   NnData *out);

/* ---- npy.c ---- */

/* 1 if the file begins with the .npy magic, 0 otherwise (or unreadable). */
int nnrt_npy_sniff(const char *path);
/* A .npy inputs array (N, ...) times `scale`, and targets (N, ...) when not NULL. */
void nnrt_npy_load(const NnModelDesc *d, const char *inputs, const char *targets, double scale,
                   NnData *out);
int nnrt_npy_path(const char *path); /* 1 when the name ends in .npy */
/* A .npy header for a (rows, cols) array of little-endian floats of elem_size bytes, then the
 * elements, count at a time. */
void nnrt_npy_write_header(FILE *f, int64_t elem_size, int64_t rows, int64_t cols);
void nnrt_npy_write_rows(FILE *f, const void *base, int64_t count, int64_t elem_size);
/* ---- pool.c ---- */

typedef struct NnPool NnPool;
int nnrt_cpus_available(void);          /* CPUs in this process's affinity mask, at least 1 */
NnPool *nnrt_pool_new(int workers);     /* workers - 1 threads; the caller is worker 0 */
NnThreads *nnrt_pool_threads(NnPool *p); /* what goes into io[NN_IO_THREADS] */
void nnrt_pool_free(NnPool *p);
/* fn(ctx, lo, hi) over [0, n) in ranges of at most `grain`, taken by t's workers (serially
 * when t is NULL or n <= grain; worker 0 from the front, the others from the back, as the
 * generated kernels take their tasks): the runtime's own loops over a batch or a buffer. */
void nnrt_split(NnThreads *t, int64_t n, int64_t grain,
                void (*fn)(void *ctx, int64_t lo, int64_t hi), void *ctx);
/* fn(arg) on one of t's workers while the caller goes on (now, on the caller, when t is NULL
 * or has one worker); one at a time. nnrt_background_wait returns once it is done, running it
 * on the caller if no worker has taken it yet. */
void nnrt_background(NnThreads *t, void (*fn)(void *), void *arg);
void nnrt_background_wait(NnThreads *t);

/* ---- model.c ---- */

/* Every region, and a pool of `threads` workers (none when 1) with their scratch. */
void nnrt_buffers_new(const NnModelDesc *d, void *io[NN_IO_COUNT], int64_t threads);
void nnrt_buffers_free(void *io[NN_IO_COUNT]);
/* nnrt_params_init, exiting on an unknown initialiser. */
void nnrt_init_params(const NnModelDesc *d, void *param, uint64_t seed);
/* Hyperparameters, then the step count and the seed (NnHyperSlot). */
void nnrt_set_hyper(const NnModelDesc *d, void **io, const double *hyper, int64_t step,
                    uint64_t seed);
/* Copies rows[0..n) of data into X (scaling stored bytes) and Y when data has targets. */
void nnrt_gather(const NnData *data, const int64_t *rows, int64_t n, void **io);
/* The same into x and y (buffers like X's and Y's), by the caller alone. */
void nnrt_gather_serial(const NnData *data, const int64_t *rows, int64_t n, void *x, void *y);
/* Starts bringing the stored rows (x and y) into the cache, for a gather a step later. */
void nnrt_prefetch_rows(const NnData *data, const int64_t *rows, int64_t n);
/* A buffer like X's (per_row: x_size) or Y's (y_size) for max_batch rows; free() frees it. */
void *nnrt_batch_buffer(const NnModelDesc *d, int64_t per_row);
double nnrt_loss(void **io); /* the LOSS slot the last grad/eval call wrote */
/* Whether none of n elements (f32 or f64 by elem_size) is inf or NaN. */
bool nnrt_all_finite(const void *base, int64_t n, int64_t elem_size);
int64_t nnrt_hyper_index(const NnModelDesc *d, const char *name); /* -1: no such name */
const char *nnrt_dtype_name(int64_t elem_size); /* "f32" or "f64" */
/* "f32[2,8]" into buf. */
const char *nnrt_shape_str(int64_t elem_size, int64_t rank, const int64_t *dims, char *buf,
                           size_t cap);
const char *nnrt_plural(int64_t n); /* "" or "s" */
/* Elements of the trained parameters: the tensors' own sizes, not the alignment padding between
 * them in NN_IO_PARAM (param_size). */
int64_t nnrt_trained_count(const NnModelDesc *d);
int nnrt_info(const NnModelDesc *d, const NnOptions *o);

/* ---- metrics.c ---- */

/* Running sums over batches whose OUT and Y are in io. */
typedef struct NnMetrics {
  double loss;       /* sum of batch loss × batch samples */
  int64_t samples;   /* samples seen */
  int64_t hits;      /* correct decisions */
  int64_t total;     /* decisions (output elements for binary, samples for multiclass) */
  int64_t classes;   /* nnrt_classes(d): confusion is (classes, classes); 0: regression */
  int64_t *per_class; /* [3 * class + 0, 1, 2]: its true, predicted and correct decisions;
                         NULL when not tracked */
  int64_t *confusion; /* [true * classes + predicted], NULL when not tracked or classes >
                         NNRT_CONFUSION_MAX (a GPT-2 vocabulary's would be 20 GB) */
  double sq_err;     /* regression: sum of (out - y)^2 */
  double abs_err;    /* regression: sum of |out - y| */
  int64_t elems;     /* regression: elements compared */
  double step_loss[NN_MAX_STEPS]; /* a block with steps: sum of each step's batch loss × samples */
} NnMetrics;

#define NNRT_CONFUSION_MAX 1024
/* full: also track per-class counts, the confusion matrix and regression errors (final
 * metrics). */
void nnrt_metrics_init(NnMetrics *m, const NnModelDesc *d, int full);
void nnrt_metrics_free(NnMetrics *m);
/* Adds n samples: OUT and Y from io, and the batch's mean loss. */
void nnrt_metrics_add(NnMetrics *m, const NnModelDesc *d, void **io, int64_t n, double loss);
double nnrt_metrics_loss(const NnMetrics *m);     /* mean loss per sample */
/* A block with steps: "d_loss 0.693147  g_loss 0.701234" (each step's mean loss) into buf. */
const char *nnrt_step_losses(const NnModelDesc *d, const NnMetrics *m, char *buf, size_t cap);
double nnrt_metrics_accuracy(const NnMetrics *m); /* percent */
int nnrt_has_accuracy(const NnModelDesc *d);
/* The eval kernel over a whole set in order, batches of max_batch. */
void nnrt_evaluate(const NnModelDesc *d, void **io, const NnSet *set, NnMetrics *m);
/* "LABEL: loss X  accuracy Y% (h/t)", then a metrics line naming the set, then the confusion
 * matrix if asked for. */
void nnrt_metrics_print(const NnModelDesc *d, const char *label, const NnSet *set,
                        const NnMetrics *m, int confusion);
const char *nnrt_fmt_loss(double v, char buf[32]); /* %.6f, or %.3e for tiny/huge values */
/* Macro F1 over the classes seen (needs per-class counts: init with full = 1); 0 if none. */
double nnrt_metrics_f1(const NnMetrics *m);

/* ---- json.c ---- */

typedef enum NnJsonType {
  NNRT_JSON_NULL,   /* null */
  NNRT_JSON_BOOL,   /* true/false: num is 1 or 0 */
  NNRT_JSON_NUMBER, /* num; is_int and i when it is an integer below 2^63 */
  NNRT_JSON_STRING, /* str (NUL-free UTF-8) */
  NNRT_JSON_ARRAY,  /* items[0..n) */
  NNRT_JSON_OBJECT, /* keys[0..n) and items[0..n), in file order */
} NnJsonType;

typedef struct NnJson {
  NnJsonType type;
  double num;             /* NUMBER, BOOL */
  int is_int;             /* NUMBER: written as an integer that fits in int64_t */
  int64_t i;              /* NUMBER when is_int */
  char *str;              /* STRING */
  int64_t n;              /* ARRAY, OBJECT: entries */
  char **keys;            /* OBJECT */
  struct NnJson *items;   /* ARRAY, OBJECT */
} NnJson;

/* Parses text[0..len) as one JSON value; on failure returns 0 with a message in err. */
int nnrt_json_parse(const char *text, size_t len, NnJson *out, char *err, size_t cap);
void nnrt_json_free(NnJson *v);
const NnJson *nnrt_json_get(const NnJson *obj, const char *key); /* NULL: absent */

/* ---- ckpt.c ---- */

/* The training state a checkpoint records besides the tensors. */
typedef struct NnCkptState {
  int64_t epoch;    /* epochs completed */
  int64_t step;     /* optimizer steps taken */
  int64_t skipped;  /* non-finite steps skipped so far */
  uint64_t seed;    /* the seed of the run */
  int64_t batch;    /* samples per step */
  double *hyper;    /* n_hyper values (caller-owned; load fills it when not NULL) */
  uint64_t rng[4];  /* the shuffle stream's state after the last completed epoch */
  int64_t best_epoch; /* early stopping: epoch of the best monitored value so far; 0 none */
  double best_value;  /* that value */
  int64_t wait;       /* epochs since then without improvement */
  int has_meta;     /* load: 1 when the file carries nnc metadata */
  double plateau_best;  /* reduce-on-plateau: the best epoch loss so far (inf: none) */
  int64_t plateau_bad;  /* epochs since it improved */
} NnCkptState;

/* How much of a checkpoint must match the model. */
typedef enum NnCkptMode {
  NNRT_CKPT_RESUME, /* everything: parameters, optimizer state, metadata, fingerprint */
  NNRT_CKPT_PARAMS, /* every parameter, with its exact dtype and shape (eval, predict) */
  NNRT_CKPT_INIT,   /* parameters whose name and shape match; the rest keep their values */
} NnCkptMode;

/* Writes params, optimizer state and st atomically (PATH.tmp, fsync, rename, fsync dir). */
void nnrt_ckpt_save(const char *path, const NnModelDesc *d, void **io, const NnCkptState *st);
/* Reads a checkpoint into io; returns the number of parameters copied. Exits naming the file
 * and the first mismatching tensor when the checkpoint does not fit `mode`. */
int64_t nnrt_ckpt_load(const char *path, const NnModelDesc *d, void **io, NnCkptMode mode,
                       NnCkptState *st);

/* ---- train.c, infer.c, gradcheck.c: the commands ---- */

int nnrt_train(const NnModelDesc *d, const NnOptions *o);
int nnrt_eval(const NnModelDesc *d, const NnOptions *o);
int nnrt_predict(const NnModelDesc *d, const NnOptions *o);
/* Text generation from a byte-level language model (text() data, [t, vocab] outputs). */
int nnrt_sample(const NnModelDesc *d, const NnOptions *o);
int nnrt_gradcheck(const NnModelDesc *d, const NnOptions *o);
/* plot.c: draws a CSV training log (--log's format), read from `log` (named `name` in
 * messages), as an SVG file `svg`; exits naming a bad log. */
void nnrt_plot_stream(FILE *log, const char *name, const char *svg);
int nnrt_plot(const NnModelDesc *d, const NnOptions *o);

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
