/* main.c — the command line of every binary nnc builds: takes argv and the compiled model's
 * constant description `nn_model`, gives an NnOptions and runs one command (train, info,
 * gradcheck) from train.c. It checks the model description against this runtime's ABI first,
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
      d->state_size < 0 || d->arena_bytes < 0 || d->n_params < 0 || d->n_hyper < 0 ||
      d->epochs < 0 || d->x_rank < 0 || d->x_rank > NN_MAX_RANK)
    bad_model("a size is negative or a rank is out of range");
  if (!d->name || !d->grad || !d->eval || !d->update)
    bad_model("the name or a kernel is missing");
  if ((d->n_params && !d->params) || (d->n_hyper && (!d->hyper_names || !d->hyper_defaults)))
    bad_model("the parameter or hyperparameter table is missing");
  for (int64_t k = 0; k < d->n_params; k++) {
    const NnParamInfo *p = &d->params[k];
    if (!p->name || p->rank < 0 || p->rank > NN_MAX_RANK || p->size < 0 || p->offset < 0 ||
        p->offset > d->param_size - p->size)
      bad_model("parameter %lld lies outside the parameter block", (long long)k);
  }
}

/* ---- usage ---- */

/* Which commands a flag applies to. */
enum { CMD_TRAIN = 1, CMD_INFO = 2, CMD_GRADCHECK = 4 };

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
             "  train       train the model on its data set and report loss and accuracy\n"
             "  info        print the model's parameters, sizes and defaults\n"
             "  gradcheck   compare the compiled gradients with central finite differences\n");
  fprintf(f, "train flags:\n");
  fprintf(f, "  --epochs N    epochs (default %lld)\n", (long long)d->epochs);
  if (lr >= 0)
    fprintf(f, "  --lr X        learning rate (sets the optimizer's 'lr' hyperparameter, "
               "default %g)\n", d->hyper_defaults[lr]);
  else
    fprintf(f, "  --lr X        learning rate (this model has no 'lr' hyperparameter)\n");
  fprintf(f, "  --batch N     samples per step, at most the compiled batch (default %lld)\n",
          (long long)d->max_batch);
  fprintf(f, "  --seed S      random seed for initialisation and shuffling (default %lld)\n",
          (long long)d->seed);
  fprintf(f, "  --data FILE   read the training data from this CSV file instead\n");
  fprintf(f, "  --set NAME=X  set a hyperparameter by name (%s)\n",
          hyper_list(d, names, sizeof names));
  fprintf(f, "  --quiet       print only the final line\n"
             "  --verbose     print every epoch\n");
  fprintf(f, "gradcheck flags:\n");
  fprintf(f, "  --eps E       finite-difference step (default %g)\n", eps);
  fprintf(f, "  --tol T       largest accepted relative difference (default %g)\n", tol);
  fprintf(f, "  --seed S, --data FILE, --lr X, --set NAME=X   as for train\n");
  fprintf(f, "info flags:\n"
             "  --data FILE   show this file as the data source\n");
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
  F_EPOCHS, F_LR, F_BATCH, F_SEED, F_DATA, F_SET, F_QUIET, F_VERBOSE, F_EPS, F_TOL
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
    {"--seed", F_SEED, 1, CMD_TRAIN | CMD_GRADCHECK},
    {"--data", F_DATA, 1, CMD_TRAIN | CMD_INFO | CMD_GRADCHECK},
    {"--set", F_SET, 1, CMD_TRAIN | CMD_GRADCHECK},
    {"--quiet", F_QUIET, 0, CMD_TRAIN},
    {"--verbose", F_VERBOSE, 0, CMD_TRAIN},
    {"--eps", F_EPS, 1, CMD_GRADCHECK},
    {"--tol", F_TOL, 1, CMD_GRADCHECK},
};

static const Flag *find_flag(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
    if (strlen(flags[i].name) == len && strncmp(flags[i].name, name, len) == 0)
      return &flags[i];
  return NULL;
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
    break;
  }
  case F_BATCH:
    o->batch = parse_count(f->name, v);
    if (o->batch > d->max_batch)
      usage_error("--batch %lld exceeds the compiled maximum batch of %lld; HINT: raise "
                  "'batch' in %s and recompile", (long long)o->batch, (long long)d->max_batch,
                  d->source ? d->source : "the .nn file");
    break;
  case F_SEED: o->seed = parse_seed(f->name, v); break;
  case F_DATA:
    if (!*v)
      usage_error("--data expects a file name");
    o->data_path = v;
    break;
  case F_SET: parse_set(d, o, v); break;
  case F_QUIET: o->quiet = 1; break;
  case F_VERBOSE: o->verbose = 1; break;
  case F_EPS: o->eps = parse_real(f->name, v, 0, 0, "a positive number"); break;
  case F_TOL: o->tol = parse_real(f->name, v, 0, 0, "a positive number"); break;
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
  if (strcmp(name, "train") == 0)
    return CMD_TRAIN;
  if (strcmp(name, "info") == 0)
    return CMD_INFO;
  if (strcmp(name, "gradcheck") == 0)
    return CMD_GRADCHECK;
  return 0;
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
  o->hyper = malloc((size_t)(d->n_hyper + 1) * sizeof *o->hyper);
  if (!o->hyper)
    nnrt_fatal("out of memory at %s:%d", __FILE__, __LINE__);
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
  int rc = cmd == CMD_TRAIN ? nnrt_train(d, &o)
           : cmd == CMD_INFO ? nnrt_info(d, &o)
                             : nnrt_gradcheck(d, &o);
  free(o.hyper);
  return rc;
}
