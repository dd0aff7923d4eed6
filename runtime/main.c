/* main.c — the command line of every binary nnc builds: takes argv and the compiled model's
 * constant description `nn_model`, gives an NnOptions and runs one command (train, eval,
 * predict, info, gradcheck). It checks the model description against this runtime's ABI first,
 * and rejects every malformed flag with a message and exit status 2 before any work starts. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nnrt_internal.h"

extern const NnModelDesc nn_model; /* emitted by nnc into the model's object file */

const char *nnrt_prog = "nnrt";

static void vreport(const char *fmt, va_list ap) {
  fflush(stdout); /* what was printed so far comes before the error */
  fprintf(stderr, "%s: error: ", nnrt_prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

void nnrt_fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(fmt, ap);
  va_end(ap);
  exit(NNRT_EXIT_FAIL);
}

void nnrt_file_error(const char *path, const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fprintf(stderr, "%s: error: ", path);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(NNRT_EXIT_FAIL);
}

void *nnrt_alloc(size_t bytes, const char *where) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p)
    nnrt_fatal("out of memory: cannot allocate %zu bytes at %s", bytes, where);
  return p;
}

/* A command-line mistake: exit status 2, as for any CLI tool. */
NNRT_NORETURN NNRT_PRINTF(1, 2) static void usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(fmt, ap);
  va_end(ap);
  exit(NNRT_EXIT_USAGE);
}

/* ---- the model description ---- */

NNRT_NORETURN NNRT_PRINTF(1, 2) static void bad_model(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fflush(stdout);
  fprintf(stderr, "%s: internal error: invalid model description: ", nnrt_prog);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "; HINT: rebuild the model with the nnc that built this runtime\n");
  va_end(ap);
  exit(NNRT_EXIT_FAIL);
}

/* The runtime trusts these sizes for every buffer, so a corrupt description must stop here. */
static void check_model(const NnModelDesc *d) {
  if (d->abi_version != NN_ABI_VERSION)
    nnrt_fatal("the model was compiled for runtime ABI %lld, but this runtime has ABI %d; "
               "HINT: rebuild the model and libnnrt.a with the same nnc",
               (long long)d->abi_version, NN_ABI_VERSION);
  if (d->elem_size != 4 && d->elem_size != 8)
    bad_model("elem_size is %lld (expected 4 or 8)", (long long)d->elem_size);
  if (d->max_batch < 1)
    bad_model("max_batch is %lld", (long long)d->max_batch);
  if (d->x_size < 0 || d->y_size < 0 || d->out_size < 0 || d->param_size < 0 ||
      d->state_size < 0 || d->arena_bytes < 0 || d->scratch_bytes < 0 || d->n_params < 0 ||
      d->n_hyper < 0 || d->epochs < 0 || d->x_rank < 0 || d->x_rank > NN_MAX_RANK)
    bad_model("a size is negative or a rank is out of range");
  if (!d->name || !d->grad || !d->eval || !d->update)
    bad_model("the name or a kernel is missing");
  if ((d->n_params && !d->params) || (d->n_hyper && (!d->hyper_names || !d->hyper_defaults)))
    bad_model("the parameter or hyperparameter table is missing");
  if (!d->data || (d->val_split < 0 || d->val_split >= 1))
    bad_model("the data description is missing or the validation split is out of range");
  if (d->labels && d->y_size != 1)
    bad_model("labels is set but y_size is %lld", (long long)d->y_size);
  for (const NnDataSource *s = d->data; s; s = s == d->data ? d->val : NULL)
    if (!isfinite(s->scale))
      bad_model("data set '%s' has a non-finite scale", s->name ? s->name : "?");
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    if (!p->name || p->rank < 0 || p->rank > NN_MAX_RANK || p->size < 0 || p->offset < 0 ||
        p->offset > d->param_size - p->size)
      bad_model("parameter %lld lies outside the parameter block", (long long)k);
  }
}

/* ---- usage ---- */

/* Which commands a flag applies to. */
enum { CMD_TRAIN = 1, CMD_INFO = 2, CMD_GRADCHECK = 4, CMD_EVAL = 8, CMD_PREDICT = 16 };

/* "lr, momentum" or "none" into buf. */
static const char *hyper_list(const NnModelDesc *d, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = '\0';
  for (int64_t i = 0; i < d->n_hyper && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%s", i ? ", " : "", d->hyper_names[i]);
  return d->n_hyper ? buf : "none";
}

static void usage(FILE *f, const NnModelDesc *d, double eps, double tol) {
  char names[512];
  int64_t lr = nnrt_hyper_index(d, "lr");
  fprintf(f, "usage: %s <command> [flags]\n", nnrt_prog);
  fprintf(f, "commands:\n"
             "  train       train the model on its data set and report loss and metrics\n"
             "  eval        report loss and metrics of saved parameters on a data set\n"
             "  predict     write the model's outputs for some inputs as CSV\n"
             "  info        print the model's parameters, sizes, defaults and data\n"
             "  gradcheck   compare the compiled gradients with central finite differences\n");
  fprintf(f, "train flags:\n");
  fprintf(f, "  --epochs N        epochs to reach in total (default %lld)\n", (long long)d->epochs);
  if (lr >= 0)
    fprintf(f, "  --lr X            learning rate (the optimizer's 'lr', default %g)\n",
            d->hyper_defaults[lr]);
  else
    fprintf(f, "  --lr X            learning rate (this model has no 'lr' hyperparameter)\n");
  fprintf(f, "  --set NAME=X      set a hyperparameter by name (%s)\n",
          hyper_list(d, names, sizeof names));
  fprintf(f, "  --batch N         samples per step, at most the compiled batch (default %lld)\n",
          (long long)d->max_batch);
  fprintf(f, "  --seed S          seed of initialisation, validation split and shuffling "
             "(default %lld)\n", (long long)d->seed);
  fprintf(f,
          "  --data FILE       train on this CSV or IDX file (IDX: --labels names its labels)\n"
          "  --labels FILE     the IDX labels file for --data (plain or .gz)\n"
          "  --val FILE        validate on this CSV or IDX file after every epoch\n"
          "  --val-labels FILE the IDX labels file for --val\n"
          "  --save CKPT       save a safetensors checkpoint after every epoch and at the end\n"
          "                    (atomically: CKPT.tmp, fsync, rename)\n"
          "  --save-every N    save only every N epochs (and at the end)\n"
          "  --resume CKPT     continue from a checkpoint of this model: parameters, optimizer\n"
          "                    state, epoch, step, seed, batch and hyperparameters (flags given\n"
          "                    explicitly win); the result is bit-identical to an\n"
          "                    uninterrupted run\n"
          "  --init-from CKPT  start from the checkpoint's tensors whose names and shapes match\n"
          "  --skip-nonfinite  skip steps whose loss or gradient is not finite (and count them)\n"
          "                    instead of stopping\n"
          "  --confusion       print the confusion matrix of the final evaluation\n"
          "  --quiet           print only the final metrics\n"
          "  --verbose         print every epoch\n");
  fprintf(f, "  --threads N       worker threads of the matmul and convolution kernels (default:\n"
             "                    the CPUs available, here %d; results are identical run to run\n"
             "                    for a given N); also for eval, predict and gradcheck\n",
          nnrt_cpus_available());
  fprintf(f, "eval flags:\n"
             "  --load CKPT       parameters from this checkpoint (else untrained, from --seed)\n"
             "  --data FILE       evaluate on this CSV or IDX file (default: the validation set,\n"
             "                    else the held-out split, else the training set)\n"
             "  --labels FILE     the IDX labels file for --data\n"
             "  --confusion, --seed S, --quiet   as for train\n");
  fprintf(f, "predict flags:\n"
             "  --load CKPT       parameters from this checkpoint (required)\n"
             "  --input FILE      inputs: CSV (x columns, or x and y columns) or IDX images\n"
             "  --output FILE     write the CSV here instead of standard output: a header line,\n"
             "                    then per sample the class (classifiers) and every output\n");
  fprintf(f, "gradcheck flags:\n");
  fprintf(f, "  --eps E           finite-difference step (default %g)\n", eps);
  fprintf(f, "  --tol T           largest accepted relative difference (default %g)\n", tol);
  fprintf(f, "  --seed S, --data FILE, --labels FILE, --lr X, --set NAME=X   as for train\n");
  fprintf(f, "info flags:\n"
             "  --data FILE       show this file as the data source\n");
  fprintf(f, "Files given by flag are scaled like the model's training data (scale = %g).\n",
          d->data ? d->data->scale : 1.0);
  fprintf(f, "Checkpoints are safetensors files: every parameter under its name, the optimizer\n"
             "state as one flat tensor '__optimizer_state__', and the training state (epoch,\n"
             "step, seed, RNG, hyperparameters, model fingerprint) in '__metadata__'.\n");
}

/* ---- flag values ---- */

/* A positive int64 (epochs, batch). */
static int64_t parse_count(const char *flag, const char *s) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (!*s || *end || errno == ERANGE || v < 1)
    usage_error("%s expects a positive integer, got '%s'", flag, s);
  return v;
}

static uint64_t parse_seed(const char *flag, const char *s) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (*s < '0' || *s > '9' || *end || errno == ERANGE) /* strtoull would accept "-1" */
    usage_error("%s expects a non-negative integer, got '%s'", flag, s);
  return v;
}

/* A finite real; `what` says which ones are allowed ("a positive number", ...). */
static double parse_real(const char *flag, const char *s, double min, int min_ok,
                         const char *what) {
  char *end;
  double v = strtod(s, &end);
  if (!*s || *end || !isfinite(v) || v < min || (!min_ok && v == min))
    usage_error("%s expects %s, got '%s'", flag, what, s);
  return v;
}

static void set_hyper_by_name(const NnModelDesc *d, NnOptions *o, const char *flag,
                              const char *name, const char *value) {
  char names[512], label[160];
  int64_t i = nnrt_hyper_index(d, name);
  if (i < 0)
    usage_error("%s: this model has no hyperparameter '%s' (it has: %s)", flag, name,
                hyper_list(d, names, sizeof names));
  snprintf(label, sizeof label, "%s %s", flag, name); /* "--set momentum expects ..." */
  o->hyper[i] = parse_real(label, value, -INFINITY, 1, "a number");
  o->hyper_set[i] = 1;
}

/* --set NAME=VALUE */
static void parse_set(const NnModelDesc *d, NnOptions *o, const char *s) {
  const char *eq = strchr(s, '=');
  if (!eq || eq == s)
    usage_error("--set expects NAME=VALUE, got '%s'", s);
  char name[128];
  size_t n = (size_t)(eq - s);
  if (n >= sizeof name)
    usage_error("--set: hyperparameter name too long in '%s'", s);
  memcpy(name, s, n);
  name[n] = '\0';
  set_hyper_by_name(d, o, "--set", name, eq + 1);
}

/* ---- flags ---- */

typedef enum FlagId {
  F_EPOCHS, F_LR, F_BATCH, F_SEED, F_DATA, F_LABELS, F_VAL, F_VAL_LABELS, F_SET, F_QUIET,
  F_VERBOSE, F_EPS, F_TOL, F_SAVE, F_SAVE_EVERY, F_RESUME, F_INIT_FROM, F_LOAD, F_INPUT,
  F_OUTPUT, F_SKIP_NONFINITE, F_CONFUSION, F_THREADS
} FlagId;

typedef struct Flag {
  const char *name; /* "--epochs" */
  FlagId id;
  int takes_value;  /* 1: --flag VALUE or --flag=VALUE */
  unsigned cmds;    /* CMD_* it applies to */
} Flag;

static const Flag flags[] = {
    {"--epochs", F_EPOCHS, 1, CMD_TRAIN},
    {"--lr", F_LR, 1, CMD_TRAIN | CMD_GRADCHECK},
    {"--batch", F_BATCH, 1, CMD_TRAIN},
    {"--seed", F_SEED, 1, CMD_TRAIN | CMD_GRADCHECK | CMD_EVAL},
    {"--data", F_DATA, 1, CMD_TRAIN | CMD_INFO | CMD_GRADCHECK | CMD_EVAL},
    {"--labels", F_LABELS, 1, CMD_TRAIN | CMD_GRADCHECK | CMD_EVAL},
    {"--val", F_VAL, 1, CMD_TRAIN},
    {"--val-labels", F_VAL_LABELS, 1, CMD_TRAIN},
    {"--set", F_SET, 1, CMD_TRAIN | CMD_GRADCHECK},
    {"--quiet", F_QUIET, 0, CMD_TRAIN | CMD_EVAL | CMD_PREDICT},
    {"--verbose", F_VERBOSE, 0, CMD_TRAIN},
    {"--eps", F_EPS, 1, CMD_GRADCHECK},
    {"--tol", F_TOL, 1, CMD_GRADCHECK},
    {"--save", F_SAVE, 1, CMD_TRAIN},
    {"--save-every", F_SAVE_EVERY, 1, CMD_TRAIN},
    {"--resume", F_RESUME, 1, CMD_TRAIN},
    {"--init-from", F_INIT_FROM, 1, CMD_TRAIN},
    {"--load", F_LOAD, 1, CMD_EVAL | CMD_PREDICT},
    {"--input", F_INPUT, 1, CMD_PREDICT},
    {"--output", F_OUTPUT, 1, CMD_PREDICT},
    {"--skip-nonfinite", F_SKIP_NONFINITE, 0, CMD_TRAIN},
    {"--confusion", F_CONFUSION, 0, CMD_TRAIN | CMD_EVAL},
    {"--threads", F_THREADS, 1, CMD_TRAIN | CMD_EVAL | CMD_PREDICT | CMD_GRADCHECK},
};

static const Flag *find_flag(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
    if (strlen(flags[i].name) == len && strncmp(flags[i].name, name, len) == 0)
      return &flags[i];
  return NULL;
}

/* A file name: not empty. */
static const char *file_value(const Flag *f, const char *v) {
  if (!*v)
    usage_error("%s expects a file name", f->name);
  return v;
}

static void apply_flag(const NnModelDesc *d, NnOptions *o, const Flag *f, const char *v) {
  switch (f->id) {
  case F_EPOCHS: o->epochs = parse_count(f->name, v); break;
  case F_LR: {
    int64_t lr = nnrt_hyper_index(d, "lr");
    char names[512];
    if (lr < 0)
      usage_error("--lr: this model has no hyperparameter named 'lr' (it has: %s); "
                  "HINT: use --set NAME=VALUE", hyper_list(d, names, sizeof names));
    o->hyper[lr] = parse_real(f->name, v, 0, 1, "a non-negative number");
    o->hyper_set[lr] = 1;
    break;
  }
  case F_BATCH:
    o->batch = parse_count(f->name, v);
    o->batch_set = 1;
    if (o->batch > d->max_batch)
      usage_error("--batch %lld exceeds the compiled maximum batch of %lld; HINT: raise "
                  "'batch' in %s and recompile", (long long)o->batch, (long long)d->max_batch,
                  d->source ? d->source : "the .nn file");
    break;
  case F_SEED:
    o->seed = parse_seed(f->name, v);
    o->seed_set = 1;
    break;
  case F_DATA: o->data_path = file_value(f, v); break;
  case F_LABELS: o->labels_path = file_value(f, v); break;
  case F_VAL: o->val_path = file_value(f, v); break;
  case F_VAL_LABELS: o->val_labels = file_value(f, v); break;
  case F_SET: parse_set(d, o, v); break;
  case F_QUIET: o->quiet = 1; break;
  case F_VERBOSE: o->verbose = 1; break;
  case F_EPS: o->eps = parse_real(f->name, v, 0, 0, "a positive number"); break;
  case F_TOL: o->tol = parse_real(f->name, v, 0, 0, "a positive number"); break;
  case F_SAVE: o->save_path = file_value(f, v); break;
  case F_SAVE_EVERY: o->save_every = parse_count(f->name, v); break;
  case F_RESUME: o->resume_path = file_value(f, v); break;
  case F_INIT_FROM: o->init_from = file_value(f, v); break;
  case F_LOAD: o->load_path = file_value(f, v); break;
  case F_INPUT: o->input_path = file_value(f, v); break;
  case F_OUTPUT: o->output_path = file_value(f, v); break;
  case F_SKIP_NONFINITE: o->skip_nonfinite = 1; break;
  case F_CONFUSION: o->confusion = 1; break;
  case F_THREADS:
    o->threads = parse_count(f->name, v);
    if (o->threads > 1024)
      usage_error("--threads %lld is more than 1024", (long long)o->threads);
    break;
  }
}

/* Handles argv[*i], a flag; may consume argv[*i + 1] as its value. Returns its CMD_* mask. */
static unsigned parse_flag(const NnModelDesc *d, NnOptions *o, int argc, char **argv, int *i) {
  const char *arg = argv[*i];
  const char *eq = strchr(arg, '=');
  size_t len = eq && arg[1] == '-' ? (size_t)(eq - arg) : strlen(arg);
  const Flag *f = find_flag(arg, len);
  if (!f)
    usage_error("unknown flag '%.*s' (try '%s --help')", (int)len, arg, nnrt_prog);
  const char *value = NULL;
  if (len < strlen(arg)) {
    if (!f->takes_value)
      usage_error("%s takes no value, got '%s'", f->name, arg);
    value = eq + 1;
  } else if (f->takes_value) {
    /* The next word is the value unless it is missing or itself a flag. */
    if (*i + 1 >= argc || strncmp(argv[*i + 1], "--", 2) == 0)
      usage_error("%s expects a value", f->name);
    value = argv[++*i];
  }
  apply_flag(d, o, f, value);
  return f->cmds;
}

static unsigned command_of(const char *name) {
  static const struct { const char *name; unsigned cmd; } cmds[] = {
      {"train", CMD_TRAIN}, {"eval", CMD_EVAL}, {"predict", CMD_PREDICT},
      {"info", CMD_INFO},   {"gradcheck", CMD_GRADCHECK}};
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
    if (strcmp(name, cmds[i].name) == 0)
      return cmds[i].cmd;
  return 0;
}

/* Flags that make sense only together, or not at all together. */
static void check_combination(unsigned cmd, const NnOptions *o) {
  if (o->labels_path && !o->data_path)
    usage_error("--labels names the labels of --data's IDX images; pass --data too");
  if (o->val_labels && !o->val_path)
    usage_error("--val-labels names the labels of --val's IDX images; pass --val too");
  if (o->resume_path && o->init_from)
    usage_error("--resume and --init-from exclude each other (--resume restores everything)");
  if (o->save_every > 1 && !o->save_path)
    usage_error("--save-every needs --save CKPT");
  if (cmd == CMD_PREDICT && !o->load_path)
    usage_error("predict needs --load CKPT (the trained parameters)");
  if (cmd == CMD_PREDICT && !o->input_path)
    usage_error("predict needs --input FILE (CSV or IDX inputs)");
}

static const char *basename_of(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash && slash[1] ? slash + 1 : path;
}

static int wants_help(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h") || !strcmp(argv[i], "help"))
      return 1;
  return 0;
}

static void default_options(const NnModelDesc *d, NnOptions *o) {
  memset(o, 0, sizeof *o);
  o->epochs = d->epochs > 0 ? d->epochs : 1;
  o->batch = d->max_batch;
  o->seed = (uint64_t)d->seed;
  o->save_every = 1;
  o->threads = nnrt_cpus_available();
  o->hyper = NNRT_ALLOC(d->n_hyper + 1, double);
  o->hyper_set = NNRT_ALLOC(d->n_hyper + 1, unsigned char);
  memset(o->hyper_set, 0, (size_t)d->n_hyper + 1);
  for (int64_t i = 0; i < d->n_hyper; i++)
    o->hyper[i] = d->hyper_defaults[i];
  /* f32 needs a larger step: rounding error in the loss grows like ulp/eps. */
  o->eps = d->elem_size == 8 ? 1e-6 : 1e-3;
  o->tol = d->elem_size == 8 ? 1e-6 : 2e-2;
}

int main(int argc, char **argv) {
  const NnModelDesc *d = &nn_model;
  nnrt_prog = argc > 0 && argv[0] && *argv[0] ? basename_of(argv[0]) : "nnrt";
  check_model(d);
  NnOptions o;
  default_options(d, &o);
  if (wants_help(argc, argv)) {
    usage(stdout, d, o.eps, o.tol);
    free(o.hyper);
    free(o.hyper_set);
    return NNRT_EXIT_OK;
  }
  const char *cmd_name = NULL;
  unsigned *applies = calloc((size_t)argc, sizeof *applies); /* CMD_* mask of the flag at i */
  if (!applies)
    nnrt_fatal("out of memory at %s:%d", __FILE__, __LINE__);
  for (int i = 1; i < argc; i++) {
    if (argv[i][0] == '-' && argv[i][1]) {
      int at = i;
      applies[at] = parse_flag(d, &o, argc, argv, &i);
    } else if (!cmd_name) {
      cmd_name = argv[i];
    } else {
      usage_error("unexpected argument '%s' (try '%s --help')", argv[i], nnrt_prog);
    }
  }
  if (!cmd_name) {
    usage(stderr, d, o.eps, o.tol);
    free(applies);
    free(o.hyper);
    free(o.hyper_set);
    return NNRT_EXIT_USAGE;
  }
  unsigned cmd = command_of(cmd_name);
  if (!cmd)
    usage_error("unknown command '%s' (try '%s --help')", cmd_name, nnrt_prog);
  /* Only now is the command known, wherever it stood among the flags. */
  for (int i = 1; i < argc; i++)
    if (applies[i] && !(applies[i] & cmd))
      usage_error("flag '%.*s' does not apply to '%s' (try '%s --help')",
                  (int)strcspn(argv[i], "="), argv[i], cmd_name, nnrt_prog);
  free(applies);
  check_combination(cmd, &o);
  int rc = cmd == CMD_TRAIN       ? nnrt_train(d, &o)
           : cmd == CMD_EVAL      ? nnrt_eval(d, &o)
           : cmd == CMD_PREDICT   ? nnrt_predict(d, &o)
           : cmd == CMD_INFO      ? nnrt_info(d, &o)
                                  : nnrt_gradcheck(d, &o);
  free(o.hyper);
  free(o.hyper_set);
  return rc;
}
