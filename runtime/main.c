/* main.c — the command line of every binary nnc builds: takes argv and the compiled model's
 * constant description `nn_model`, gives an NnOptions and runs one command (train, eval,
 * predict, info, gradcheck, plot). It checks the model description against this runtime's ABI
 * first, and rejects every malformed flag with a message and exit status 2 before any work
 * starts. One table of flags drives parsing and each command's --help. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nnrt_internal.h"

extern const NnModelDesc nn_model; /* emitted by nnc into the model's object file */

const char *nnrt_prog = "nnrt";

static void vreport(const char *fmt, va_list ap) {
  fflush(stdout); /* what was printed so far comes before the error */
  fprintf(stderr, "%s: error: ", nnrt_prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

void nnrt_exit(int status) {
  fflush(NULL);
  _exit(status);
}

void nnrt_fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(fmt, ap);
  va_end(ap);
  nnrt_exit(NNRT_EXIT_FAIL);
}

void nnrt_file_error(const char *path, const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fprintf(stderr, "%s: error: ", path);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  nnrt_exit(NNRT_EXIT_FAIL);
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
  nnrt_exit(NNRT_EXIT_USAGE);
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
  nnrt_exit(NNRT_EXIT_FAIL);
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
  if (d->n_steps < 0 || d->n_steps > NN_MAX_STEPS || (d->n_steps && !d->steps) ||
      d->out_rank < 0 || d->out_rank > NN_MAX_RANK)
    bad_model("the step table or the output shape is out of range");
  for (int64_t k = 0; k < d->n_steps; k++)
    if (!d->steps[k].name || !d->steps[k].grad || !d->steps[k].update)
      bad_model("step %lld has no name or kernel", (long long)k);
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

/* ---- commands ---- */

/* Which commands a flag applies to. */
enum {
  CMD_TRAIN = 1, CMD_INFO = 2, CMD_GRADCHECK = 4, CMD_EVAL = 8, CMD_PREDICT = 16, CMD_PLOT = 32,
  CMD_SAMPLE = 64
};

static const struct Command {
  const char *name;
  unsigned cmd;
  const char *args; /* positional arguments in its usage line */
  const char *what; /* one line */
} commands[] = {
    {"train", CMD_TRAIN, "", "train the model on its data set and report loss and metrics"},
    {"eval", CMD_EVAL, "", "report loss and metrics of saved parameters on a data set"},
    {"predict", CMD_PREDICT, "", "write the model's outputs for some inputs as CSV or .npy"},
    {"info", CMD_INFO, "", "print the model's parameters, sizes, defaults and data"},
    {"gradcheck", CMD_GRADCHECK, "", "compare the compiled gradients with central finite "
                                     "differences"},
    {"plot", CMD_PLOT, " LOG.csv", "draw a --log file's loss and accuracy curves as an SVG"},
    {"sample", CMD_SAMPLE, "", "generate text from a language model, or a PGM grid of images "
                               "from a train block's `sample` (a GAN's generator)"},
};
enum { N_COMMANDS = sizeof commands / sizeof commands[0] };

static const struct Command *command_of(const char *name) {
  for (int i = 0; i < N_COMMANDS; i++)
    if (strcmp(name, commands[i].name) == 0)
      return &commands[i];
  return NULL;
}

/* "lr, momentum" or "none" into buf. */
static const char *hyper_list(const NnModelDesc *d, char *buf, size_t cap) {
  size_t n = 0;
  buf[0] = '\0';
  for (int64_t i = 0; i < d->n_hyper && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%s", i ? ", " : "", d->hyper_names[i]);
  return d->n_hyper ? buf : "none";
}

/* ---- flag values ---- */

/* An int64 of at least `least`, else a usage error saying it expects `what`. */
static int64_t parse_int_from(const char *flag, const char *s, long long least,
                              const char *what) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (!*s || *end || errno == ERANGE || v < least)
    usage_error("%s expects %s, got '%s'", flag, what, s);
  return v;
}

/* A positive int64 (epochs, batch). */
static int64_t parse_count(const char *flag, const char *s) {
  return parse_int_from(flag, s, 1, "a positive integer");
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
  F_OUTPUT, F_SKIP_NONFINITE, F_CONFUSION, F_LOG, F_PLOT, F_PATIENCE, F_MONITOR, F_HELP,
  F_PROMPT, F_TOKENS, F_TEMPERATURE, F_TOP_K, F_THREADS, F_COUNT
} FlagId;

typedef struct Flag {
  const char *name;  /* "--epochs" */
  FlagId id;
  const char *value; /* its value in help ("N"); NULL: the flag takes none */
  unsigned cmds;     /* CMD_* it applies to */
  const char *help;  /* for --help; flag_default adds the model's default */
} Flag;

/* In the order --help lists them. */
static const Flag flags[] = {
    {"--epochs", F_EPOCHS, "N", CMD_TRAIN, "epochs to reach in total"},
    {"--lr", F_LR, "X", CMD_TRAIN | CMD_GRADCHECK, "learning rate (the optimizer's 'lr')"},
    {"--set", F_SET, "NAME=X", CMD_TRAIN | CMD_GRADCHECK, "set a hyperparameter by name"},
    {"--batch", F_BATCH, "N", CMD_TRAIN, "samples per step, at most the compiled batch"},
    {"--seed", F_SEED, "S", CMD_TRAIN | CMD_GRADCHECK | CMD_EVAL | CMD_SAMPLE,
     "seed of initialisation, validation split and shuffling"},
    {"--data", F_DATA, "FILE", CMD_TRAIN | CMD_INFO | CMD_GRADCHECK | CMD_EVAL,
     "a CSV, IDX or .npy file instead of the model's data"},
    {"--labels", F_LABELS, "FILE", CMD_TRAIN | CMD_GRADCHECK | CMD_EVAL,
     "the labels of --data: IDX (plain or .gz) or .npy"},
    {"--val", F_VAL, "FILE", CMD_TRAIN, "validate on this CSV, IDX or .npy file every epoch"},
    {"--val-labels", F_VAL_LABELS, "FILE", CMD_TRAIN, "the labels of --val (IDX or .npy)"},
    {"--save", F_SAVE, "CKPT", CMD_TRAIN,
     "save a safetensors checkpoint every epoch and at the end"},
    {"--save-every", F_SAVE_EVERY, "N", CMD_TRAIN, "save only every N epochs (and at the end)"},
    {"--resume", F_RESUME, "CKPT", CMD_TRAIN | CMD_SAMPLE,
     "continue bit-identically from a checkpoint of this model"},
    {"--init-from", F_INIT_FROM, "CKPT", CMD_TRAIN,
     "start from the checkpoint's tensors whose names and shapes match"},
    {"--patience", F_PATIENCE, "N", CMD_TRAIN,
     "early stopping: after N epochs without improvement (0: off)"},
    {"--monitor", F_MONITOR, "NAME", CMD_TRAIN,
     "val_loss, val_accuracy, val_f1, loss or accuracy"},
    {"--log", F_LOG, "FILE", CMD_TRAIN, "write one CSV row per step and per epoch"},
    {"--plot", F_PLOT, "SVG", CMD_TRAIN, "at the end, draw loss and accuracy curves as an SVG"},
    {"--skip-nonfinite", F_SKIP_NONFINITE, NULL, CMD_TRAIN,
     "skip (and count) non-finite steps instead of stopping"},
    {"--load", F_LOAD, "CKPT", CMD_EVAL | CMD_PREDICT | CMD_SAMPLE, "parameters from this checkpoint"},
    {"--input", F_INPUT, "FILE", CMD_PREDICT, "inputs: CSV, IDX images or .npy"},
    {"--output", F_OUTPUT, "FILE", CMD_PREDICT | CMD_PLOT | CMD_SAMPLE,
     "predict: CSV or .npy (by extension; default stdout); plot: SVG"},
    {"-o", F_OUTPUT, "FILE", CMD_PREDICT | CMD_PLOT | CMD_SAMPLE, "the same as --output"},
    {"--confusion", F_CONFUSION, NULL, CMD_TRAIN | CMD_EVAL,
     "print the confusion matrix of the final evaluation"},
    {"--eps", F_EPS, "E", CMD_GRADCHECK, "finite-difference step"},
    {"--tol", F_TOL, "T", CMD_GRADCHECK, "largest accepted relative difference"},
    {"--quiet", F_QUIET, NULL, CMD_TRAIN | CMD_EVAL | CMD_PREDICT | CMD_PLOT,
     "print only the final lines"},
    {"--verbose", F_VERBOSE, NULL, CMD_TRAIN, "print every epoch"},
    {"--help", F_HELP, NULL, CMD_TRAIN | CMD_EVAL | CMD_PREDICT | CMD_INFO | CMD_GRADCHECK |
     CMD_PLOT | CMD_SAMPLE, "print this help"},
    {"--prompt", F_PROMPT, "TEXT", CMD_SAMPLE, "text the sample continues"},
    {"--tokens", F_TOKENS, "N", CMD_SAMPLE, "bytes to generate (default 200)"},
    {"--temperature", F_TEMPERATURE, "T", CMD_SAMPLE,
     "sampling temperature (default 1; 0 takes the likeliest byte)"},
    {"--top-k", F_TOP_K, "K", CMD_SAMPLE, "sample among the K likeliest bytes (default 0: all)"},
    {"--count", F_COUNT, "N", CMD_SAMPLE,
     "images to draw into the --output PGM grid (default 64, at most the compiled batch)"},
    {"--threads", F_THREADS, "N", CMD_TRAIN | CMD_EVAL | CMD_PREDICT | CMD_GRADCHECK | CMD_SAMPLE,
     "worker threads of the matmul and convolution kernels (same results for a given N)"},
};

static const Flag *find_flag(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
    if (strlen(flags[i].name) == len && strncmp(flags[i].name, name, len) == 0)
      return &flags[i];
  return NULL;
}

/* ---- usage ---- */

/* " (default ...)" for a flag whose default the model decides, else "". */
static const char *flag_default(const NnModelDesc *d, const NnOptions *o, const Flag *f,
                                char *buf, size_t cap) {
  static const char *const monitors[] = NN_MONITOR_NAMES;
  char names[512];
  int64_t lr = nnrt_hyper_index(d, "lr");
  buf[0] = '\0';
  switch (f->id) {
  case F_EPOCHS: snprintf(buf, cap, " (default %lld)", (long long)o->epochs); break;
  case F_LR:
    if (lr >= 0)
      snprintf(buf, cap, " (default %g)", d->hyper_defaults[lr]);
    else
      snprintf(buf, cap, " (this model has none; use --set)");
    break;
  case F_SET: snprintf(buf, cap, " (%s)", hyper_list(d, names, sizeof names)); break;
  case F_BATCH: snprintf(buf, cap, " (default %lld)", (long long)o->batch); break;
  case F_SEED: snprintf(buf, cap, " (default %llu)", (unsigned long long)o->seed); break;
  case F_DATA:
    if (d->data && d->data->kind != NN_DATA_NONE)
      snprintf(buf, cap, " (default: '%s')", d->data->name ? d->data->name : "?");
    break;
  case F_PATIENCE: snprintf(buf, cap, " (default %lld)", (long long)o->patience); break;
  case F_MONITOR:
    snprintf(buf, cap, " (default %s)",
             o->monitor != NN_MONITOR_AUTO ? monitors[o->monitor]
             : d->val || d->val_split > 0  ? "val_loss"
                                           : "loss; val_loss with --val");
    break;
  case F_EPS: snprintf(buf, cap, " (default %g)", o->eps); break;
  case F_TOL: snprintf(buf, cap, " (default %g)", o->tol); break;
  default: break;
  }
  return buf;
}

/* The flags of one command, with the model's defaults. */
static void command_usage(FILE *f, const NnModelDesc *d, const NnOptions *o,
                          const struct Command *c) {
  fprintf(f, "usage: %s %s%s [flags]\n%s\nflags:\n", nnrt_prog, c->name, c->args, c->what);
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
    const Flag *fl = &flags[i];
    char left[64], def[640];
    if (!(fl->cmds & c->cmd))
      continue;
    snprintf(left, sizeof left, "%s%s%s", fl->name, fl->value ? " " : "",
             fl->value ? fl->value : "");
    fprintf(f, "  %-18s %s%s\n", left, fl->help, flag_default(d, o, fl, def, sizeof def));
  }
  if (c->cmd & (CMD_TRAIN | CMD_EVAL | CMD_GRADCHECK | CMD_PREDICT))
    fprintf(f, "Files given by flag are scaled like the model's training data (scale = %g).\n",
            d->data ? d->data->scale : 1.0);
  if (c->cmd & CMD_TRAIN)
    fprintf(f, "Checkpoints are safetensors files: every parameter under its name, the optimizer\n"
               "state as one flat tensor '__optimizer_state__', and the training state (epoch,\n"
               "step, seed, RNG, hyperparameters, model fingerprint) in '__metadata__'.\n");
}

static void usage(FILE *f) {
  fprintf(f, "usage: %s <command> [flags]\ncommands:\n", nnrt_prog);
  for (int i = 0; i < N_COMMANDS; i++)
    fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].what);
  fprintf(f, "'%s COMMAND --help' lists the flags of one command.\n", nnrt_prog);
}

/* --monitor NAME */
static int64_t parse_monitor(const char *flag, const char *s) {
  static const char *const names[] = NN_MONITOR_NAMES;
  for (int i = NN_MONITOR_VAL_LOSS; i < NN_MONITOR_COUNT; i++)
    if (strcmp(s, names[i]) == 0)
      return i;
  usage_error("%s expects val_loss, val_accuracy, val_f1, loss or accuracy, got '%s'", flag, s);
}

/* A count that may be 0 (--patience 0 turns early stopping off). */
static int64_t parse_count0(const char *flag, const char *s) {
  return parse_int_from(flag, s, 0, "a non-negative integer (0: off)");
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
  case F_LOG: o->log_path = file_value(f, v); break;
  case F_PLOT: o->plot_path = file_value(f, v); break;
  case F_PATIENCE: o->patience = parse_count0(f->name, v); break;
  case F_MONITOR: o->monitor = parse_monitor(f->name, v); break;
  case F_HELP: break; /* handled before parsing */
  case F_PROMPT: o->prompt = v; break;
  case F_TOKENS: o->tokens = parse_count(f->name, v); break;
  case F_TEMPERATURE: o->temperature = parse_real(f->name, v, 0, 1, "a non-negative number"); break;
  case F_TOP_K: o->top_k = parse_count(f->name, v); break;
  case F_COUNT: o->count = parse_count(f->name, v); break;
  case F_THREADS:
    o->threads = parse_count(f->name, v);
    if (o->threads > 1024)
      usage_error("--threads %lld is more than 1024", (long long)o->threads);
    break;
  }
}

/* The flag arg names, NULL if none; *len gets its name's length (arg up to any "=VALUE"). */
static const Flag *flag_of(const char *arg, size_t *len) {
  const char *eq = strchr(arg, '=');
  *len = eq && arg[1] == '-' ? (size_t)(eq - arg) : strlen(arg);
  return find_flag(arg, *len);
}

/* 1 when flag arg takes the next word as its value (`--save CKPT`, not `--save=CKPT`): that
 * word is a value whatever it looks like (getopt's rule), so `--save --help` names a file. */
static int value_follows(const char *arg) {
  size_t len;
  const Flag *f = flag_of(arg, &len);
  return f && f->value && len == strlen(arg);
}

/* Handles argv[*i], a flag; may consume argv[*i + 1] as its value. Returns its CMD_* mask. */
static unsigned parse_flag(const NnModelDesc *d, NnOptions *o, int argc, char **argv, int *i) {
  const char *arg = argv[*i];
  size_t len;
  const Flag *f = flag_of(arg, &len);
  if (!f)
    usage_error("unknown flag '%.*s' (try '%s --help')", (int)len, arg, nnrt_prog);
  const char *value = NULL;
  if (len < strlen(arg)) {
    if (!f->value)
      usage_error("%s takes no value, got '%s'", f->name, arg);
    value = arg + len + 1;
  } else if (f->value) {
    if (*i + 1 >= argc)
      usage_error("%s expects a value", f->name);
    value = argv[++*i];
  }
  apply_flag(d, o, f, value);
  return f->cmds;
}

/* Flags that make sense only together, or not at all together. */
static void check_combination(unsigned cmd, const NnOptions *o) {
  if (o->labels_path && !o->data_path)
    usage_error("--labels names the labels of --data's inputs; pass --data too");
  if (o->val_labels && !o->val_path)
    usage_error("--val-labels names the labels of --val's inputs; pass --val too");
  if (o->resume_path && o->init_from)
    usage_error("--resume and --init-from exclude each other (--resume restores everything)");
  if (o->save_every > 1 && !o->save_path)
    usage_error("--save-every needs --save CKPT");
  if (cmd == CMD_PREDICT && !o->load_path)
    usage_error("predict needs --load CKPT (the trained parameters)");
  if (cmd == CMD_SAMPLE && o->resume_path && o->load_path)
    usage_error("sample takes one checkpoint: --load or --resume, not both");
  if (cmd == CMD_SAMPLE && !o->resume_path && !o->load_path)
    usage_error("sample needs --load CKPT (the trained parameters)");
  if (cmd == CMD_PREDICT && !o->input_path)
    usage_error("predict needs --input FILE (CSV, IDX or .npy inputs)");
  if (cmd == CMD_PLOT && !o->plot_input)
    usage_error("plot needs the CSV log to draw: %s plot LOG.csv -o CURVES.svg", nnrt_prog);
}

static const char *basename_of(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash && slash[1] ? slash + 1 : path;
}

/* --help or -h where a flag may stand, or the word help where a command may: the help of the
 * command named too, else the overview. A flag's value is neither (`--data --help` reads a
 * file). Returns 1 when it printed something. */
static int help(int argc, char **argv, const NnModelDesc *d, const NnOptions *o) {
  int asked = 0;
  const struct Command *c = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h") || !strcmp(argv[i], "help"))
      asked = 1;
    else if (argv[i][0] == '-' && argv[i][1])
      i += value_follows(argv[i]); /* skip its value */
    else if (!c)
      c = command_of(argv[i]);
  }
  if (!asked)
    return 0;
  if (c)
    command_usage(stdout, d, o, c);
  else
    usage(stdout);
  return 1;
}

static void default_options(const NnModelDesc *d, NnOptions *o) {
  memset(o, 0, sizeof *o);
  o->epochs = d->epochs > 0 ? d->epochs : 1;
  o->batch = d->max_batch;
  o->seed = (uint64_t)d->seed;
  o->save_every = 1;
  o->patience = d->patience > 0 ? d->patience : 0;
  o->monitor = d->monitor > 0 && d->monitor < NN_MONITOR_COUNT ? d->monitor : NN_MONITOR_AUTO;
  o->threads = nnrt_cpus_available();
  o->hyper = NNRT_ALLOC(d->n_hyper + 1, double);
  o->hyper_set = NNRT_ALLOC(d->n_hyper + 1, unsigned char);
  memset(o->hyper_set, 0, (size_t)d->n_hyper + 1);
  for (int64_t i = 0; i < d->n_hyper; i++)
    o->hyper[i] = d->hyper_defaults[i];
  /* f32 needs a larger step: rounding error in the loss grows like ulp/eps. */
  o->eps = d->elem_size == 8 ? 1e-6 : 1e-3;
  o->tol = d->elem_size == 8 ? 1e-6 : 2e-2;
  o->tokens = 200;
  o->temperature = 1;
}

int main(int argc, char **argv) {
  const NnModelDesc *d = &nn_model;
  nnrt_prog = argc > 0 && argv[0] && *argv[0] ? basename_of(argv[0]) : "nnrt";
  setvbuf(stdout, NULL, _IOLBF, 0); /* a log file or pipe sees each epoch's line as it ends */
  check_model(d);
  NnOptions o;
  default_options(d, &o);
  if (help(argc, argv, d, &o)) {
    free(o.hyper);
    free(o.hyper_set);
    return NNRT_EXIT_OK;
  }
  const char *cmd_name = NULL, *extra = NULL;
  unsigned *applies = calloc((size_t)argc, sizeof *applies); /* CMD_* mask of the flag at i */
  if (!applies)
    nnrt_fatal("out of memory at %s:%d", __FILE__, __LINE__);
  for (int i = 1; i < argc; i++) {
    if (argv[i][0] == '-' && argv[i][1]) {
      int at = i;
      applies[at] = parse_flag(d, &o, argc, argv, &i);
    } else if (!cmd_name) {
      cmd_name = argv[i];
    } else if (!extra) {
      extra = argv[i]; /* plot's LOG.csv; any other command refuses it below */
    } else {
      usage_error("unexpected argument '%s' (try '%s --help')", argv[i], nnrt_prog);
    }
  }
  if (!cmd_name) {
    usage(stderr);
    free(applies);
    free(o.hyper);
    free(o.hyper_set);
    return NNRT_EXIT_USAGE;
  }
  const struct Command *c = command_of(cmd_name);
  if (!c)
    usage_error("unknown command '%s' (try '%s --help')", cmd_name, nnrt_prog);
  unsigned cmd = c->cmd;
  if (extra && cmd != CMD_PLOT)
    usage_error("unexpected argument '%s' (try '%s %s --help')", extra, nnrt_prog, cmd_name);
  o.plot_input = extra;
  /* Only now is the command known, wherever it stood among the flags. */
  for (int i = 1; i < argc; i++)
    if (applies[i] && !(applies[i] & cmd))
      usage_error("flag '%.*s' does not apply to '%s' (try '%s %s --help')",
                  (int)strcspn(argv[i], "="), argv[i], cmd_name, nnrt_prog, cmd_name);
  free(applies);
  check_combination(cmd, &o);
  if (cmd == CMD_SAMPLE && o.resume_path) /* sample reads only the parameters either way */
    o.load_path = o.resume_path;
  int rc = cmd == CMD_TRAIN       ? nnrt_train(d, &o)
           : cmd == CMD_EVAL      ? nnrt_eval(d, &o)
           : cmd == CMD_PREDICT   ? nnrt_predict(d, &o)
           : cmd == CMD_INFO      ? nnrt_info(d, &o)
           : cmd == CMD_PLOT      ? nnrt_plot(d, &o)
           : cmd == CMD_SAMPLE    ? nnrt_sample(d, &o)
                                  : nnrt_gradcheck(d, &o);
  free(o.hyper);
  free(o.hyper_set);
  return rc;
}
