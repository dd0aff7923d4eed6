/* main.c — the nnc command line and the pipeline, one call per stage:
 *
 *   parse_source → sema → trim_graph → ad_gradients → fuse_graph → plan_memory → lower_llvm
 *   → link_executable
 *
 * --emit=STAGE stops after a stage and prints what it made. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkstemps */
#endif
#include "nnc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern const char nnc_prelude[];   /* std.nn, compiled in by cmake/embed.cmake */
extern const size_t nnc_prelude_size;

static void usage(FILE *out) {
  fprintf(out,
          "usage: nnc FILE.nn [options]\n"
          "\n"
          "Compiles a neural-network description into a standalone training program.\n"
          "\n"
          "options:\n"
          "  -o PATH            output file (default: FILE without .nn; stdout for text dumps)\n"
          "  --emit=KIND        what to produce: exe (default), ast, ir, grad-ir,\n"
          "                     fused-ir, llvm, asm, obj, header (-o NAME.h: NAME.h and NAME.o\n"
          "                     for embedding in C)\n"
          "  -O0 -O1 -O2 -O3    LLVM optimisation level (default -O2)\n"
          "  --dtype=f32|f64    element type of every tensor (default f32; f64 for gradient checks)\n"
          "  --target-cpu=CPU   generate code for CPU instead of this machine's (e.g. x86-64-v3)\n"
          "  --no-fuse          one loop nest per op (to measure what fusion gains)\n"
          "  --no-trim          compute the rows and columns of images that nothing reads\n"
          "  --no-winograd      3x3 convolutions by im2col and GEMM, not Winograd's F(2x2, 3x3)\n"
          "  --name=NAME        header: prefix of every symbol (default: the -o file's name)\n"
          "  --weights=FILE     header: bake these trained weights (safetensors) into the object\n"
          "  --prune=F          header: zero the fraction F of each baked weight matrix, smallest\n"
          "                     magnitudes first, and report the accuracy change\n"
          "  --quantize=int8    header: int8 weights and inputs for the matmuls and convolutions\n"
          "  --calibrate=DATA   with --quantize: the data (a data set of the train block, or a\n"
          "                     file) whose value ranges set the int8 input scales\n"
          "  --eval-data=FILE   held-out data for the accuracy report (default: the train\n"
          "                     block's validation data)\n"
          "  --eval-labels=FILE the labels of --eval-data (IDX or .npy)\n"
          "  --max-batch=N      the largest batch a kernel call takes (default: the train block's)\n"
          "  -h, --help         print this help\n");
}

static const struct { const char *name; Emit emit; } emits[] = {
    {"exe", EMIT_EXE},   {"ast", EMIT_AST},   {"ir", EMIT_IR},  {"grad-ir", EMIT_GRAD_IR},
    {"fused-ir", EMIT_FUSED_IR},
    {"llvm", EMIT_LLVM}, {"asm", EMIT_ASM},   {"obj", EMIT_OBJ},    {"header", EMIT_HEADER},
};
enum { N_EMITS = sizeof emits / sizeof *emits };

/* Returns 0 when the options are good, otherwise the exit code. */
static int parse_args(int argc, char **argv, Options *o) {
  *o = (Options){.opt_level = 2, .emit = EMIT_EXE};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      usage(stdout);
      exit(0);
    } else if (!strcmp(a, "-o")) {
      if (++i == argc) {
        fprintf(stderr, "nnc: error: '-o' needs a file name\n");
        return 1;
      }
      o->output = argv[i];
    } else if (!strncmp(a, "--emit=", 7)) {
      int k = -1;
      for (int j = 0; j < N_EMITS; j++)
        if (!strcmp(a + 7, emits[j].name)) k = j;
      if (k < 0) {
        fprintf(stderr, "nnc: error: unknown --emit kind '%s' (exe, ast, ir, grad-ir, fused-ir, llvm, asm, obj, header)\n", a + 7);
        return 1;
      }
      o->emit = emits[k].emit;
    } else if (a[0] == '-' && a[1] == 'O' && a[2] >= '0' && a[2] <= '3' && !a[3]) {
      o->opt_level = a[2] - '0';
    } else if (!strcmp(a, "--dtype=f32") || !strcmp(a, "--dtype=f64")) {
      o->f64 = !strcmp(a, "--dtype=f64");
    } else if (!strcmp(a, "--no-fuse")) {
      o->no_fuse = true;
    } else if (!strcmp(a, "--no-trim")) {
      o->no_trim = true;
    } else if (!strcmp(a, "--no-winograd")) {
      o->no_winograd = true;
    } else if (!strncmp(a, "--target-cpu=", 13) && a[13]) {
      o->target_cpu = a + 13;
    } else if (!strncmp(a, "--name=", 7)) {
      o->name = a + 7;
    } else if (!strncmp(a, "--weights=", 10) && a[10]) {
      o->weights = a + 10;
    } else if (!strcmp(a, "--weights")) {
      if (++i == argc) {
        fprintf(stderr, "nnc: error: '--weights' needs a file name\n");
        return 1;
      }
      o->weights = argv[i];
    } else if (!strncmp(a, "--quantize=", 11)) {
      if (strcmp(a + 11, "int8")) {
        fprintf(stderr, "nnc: error: --quantize supports only int8, not '%s'\n", a + 11);
        return 1;
      }
      o->int8 = true;
    } else if (!strcmp(a, "--calibrate") || !strcmp(a, "--eval-data") ||
               !strcmp(a, "--eval-labels")) {
      if (++i == argc) {
        fprintf(stderr, "nnc: error: '%s' needs %s\n", a,
                !strcmp(a, "--calibrate") ? "a data set or file" : "a file name");
        return 1;
      }
      const char **to = !strcmp(a, "--calibrate") ? &o->calibrate
                        : !strcmp(a, "--eval-data") ? &o->eval_data : &o->eval_labels;
      *to = argv[i];
    } else if (!strncmp(a, "--calibrate=", 12) && a[12]) {
      o->calibrate = a + 12;
    } else if (!strncmp(a, "--eval-data=", 12) && a[12]) {
      o->eval_data = a + 12;
    } else if (!strncmp(a, "--eval-labels=", 14) && a[14]) {
      o->eval_labels = a + 14;
    } else if (!strncmp(a, "--prune=", 8)) {
      char *end;
      double v = strtod(a + 8, &end);
      if (!a[8] || *end || !(v > 0 && v < 1)) {
        fprintf(stderr, "nnc: error: --prune needs a fraction between 0 and 1, not '%s'\n",
                a + 8);
        return 1;
      }
      o->prune = v;
    } else if (!strncmp(a, "--max-batch=", 12)) {
      char *end;
      long long v = strtoll(a + 12, &end, 10);
      if (!a[12] || *end || v < 1 || v > (1 << 24)) {
        fprintf(stderr, "nnc: error: --max-batch needs a whole number from 1 to %d, not '%s'\n",
                1 << 24, a + 12);
        return 1;
      }
      o->max_batch = v;
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "nnc: error: unknown option '%s' (see 'nnc --help')\n", a);
      return 1;
    } else if (o->input) {
      fprintf(stderr, "nnc: error: more than one input file ('%s' and '%s')\n", o->input, a);
      return 1;
    } else {
      o->input = a;
    }
  }
  if (!o->input) {
    fprintf(stderr, "nnc: error: no input file\n");
    usage(stderr);
    return 1;
  }
  if (o->prune > 0 && !o->weights) {
    fprintf(stderr, "nnc: error: --prune needs --weights (it prunes trained weights)\n");
    return 1;
  }
  if (o->int8 && !o->weights) {
    fprintf(stderr, "nnc: error: --quantize=int8 needs --weights (it quantizes trained weights)\n");
    return 1;
  }
  if (o->int8 != (o->calibrate != NULL)) {
    fprintf(stderr, "nnc: error: %s\n", o->int8 ? "--quantize=int8 needs --calibrate DATA (the "
                                                  "data whose ranges set the input scales)"
                                                : "--calibrate applies only to --quantize=int8");
    return 1;
  }
  if (o->int8 && o->f64) {
    fprintf(stderr, "nnc: error: --quantize=int8 quantizes an f32 model, not --dtype=f64\n");
    return 1;
  }
  if ((o->eval_data || o->eval_labels) && !o->int8 && !(o->prune > 0)) {
    fprintf(stderr, "nnc: error: %s is the held-out data of --prune's or --quantize's accuracy "
                    "report\n", o->eval_data ? "--eval-data" : "--eval-labels");
    return 1;
  }
  if (o->eval_labels && !o->eval_data) {
    fprintf(stderr, "nnc: error: --eval-labels names the labels of --eval-data; pass it too\n");
    return 1;
  }
  if ((o->name || o->weights) && o->emit != EMIT_HEADER) {
    fprintf(stderr, "nnc: error: %s applies only to --emit=header\n",
            o->name ? "--name" : "--weights");
    return 1;
  }
  return 0;
}

/* examples/xor.nn -> xor */
static char *default_output(const char *input, const char *ext) {
  const char *base = strrchr(input, '/');
  base = base ? base + 1 : input;
  size_t len = strlen(base);
  if (len > 3 && !strcmp(base + len - 3, ".nn")) len -= 3;
  return xprintf("%.*s%s", (int)len, base, ext);
}

/* Text dumps go to -o if given, else stdout. */
static FILE *open_dump(const Options *o) {
  if (!o->output || !strcmp(o->output, "-")) return stdout;
  FILE *f = fopen(o->output, "w");
  if (!f) fprintf(stderr, "nnc: error: cannot write '%s'\n", o->output);
  return f;
}

static void close_dump(FILE *f) {
  if (f && f != stdout) fclose(f);
}

/* NAME.h -> NAME.o beside it. */
static char *object_beside(const char *header) {
  size_t len = strlen(header);
  if (len > 2 && !strcmp(header + len - 2, ".h")) len -= 2;
  return xprintf("%.*s.o", (int)len, header);
}

/* --emit=header: the kernels with nn_embed to a temporary object, linked with the support code
 * into NAME.o; NAME.h last, so a failure leaves no header that promises an object. */
static int emit_header(const Unit *u, const Options *o) {
  const char *header = o->output && strcmp(o->output, "-") ? o->output
                                                            : default_output(o->input, ".h");
  Embed *e = embed_prepare(u, o, header);
  if (!e) return 1;
  const Quant *quant = NULL;
  if (o->int8 || o->prune > 0) { /* int8 sites, calibrated; then what accuracy they cost */
    Quant *q = quant_new(u, e->weights, o->int8 ? QUANT_INT8 : QUANT_F32);
    if (o->int8 && !quant_calibrate(u, o, q, o->calibrate)) return 1;
    if (o->int8) quant_finish(u, q);
    const char *what = o->int8 && o->prune > 0 ? "pruned int8" : o->int8 ? "int8" : "pruned";
    if (!quant_report(u, o, q, what)) return 1;
    if (o->int8) quant = q;
  }
  const char *obj = object_beside(header);
  FILE *probe = fopen(obj, "wb"); /* a clear message before ld's, for a folder not there */
  if (!probe) {
    fprintf(stderr, "nnc: error: cannot write '%s': %s\n", obj, strerror(errno));
    return 1;
  }
  fclose(probe);
  Options with = *o;
  with.embed = e;
  with.quant = quant;
  char tmp[] = "/tmp/nnc-XXXXXX.o";
  int fd = mkstemps(tmp, 2);
  if (fd < 0) {
    fprintf(stderr, "nnc: error: cannot create a temporary object file in /tmp\n");
    return 1;
  }
  close(fd);
  bool ok = lower_llvm(u, &with, EMIT_OBJ, tmp) && link_embed_object(tmp, obj, e->name) &&
            embed_write_header(u, e, header);
  unlink(tmp);
  if (!ok) unlink(obj);
  return ok ? 0 : 1;
}

/* The unit's graphs in the order they are printed: train, infer, update, then each step's
 * train and update; update[i] tells the optimizer's graphs apart. Returns how many. */
static int unit_graphs(Unit *u, Graph **gs, bool *update) {
  int n = 0;
  Graph *one[3] = {u->train, u->infer, u->update};
  for (int i = 0; i < 3; i++)
    if (one[i]) gs[n] = one[i], update[n++] = i == 2;
  for (int k = 0; k < u->n_steps; k++) {
    gs[n] = u->steps[k].train, update[n++] = false;
    gs[n] = u->steps[k].update, update[n++] = true;
  }
  return n;
}

static int compile(const Options *o) {
  SourceFile *src = diag_load(o->input);
  if (!src) return 1;
  Ast *program = parse_source(src);
  if (diag_error_count()) return 1;
  if (o->emit == EMIT_AST) {
    FILE *f = open_dump(o);
    if (!f) return 1;
    ast_dump(f, program);
    close_dump(f);
    return 0;
  }
  Ast *prelude = parse_source(diag_source("std.nn", nnc_prelude, nnc_prelude_size));
  if (diag_error_count()) return 1;
  bool has_train = false;
  for (int i = 0; i < program->kids.len; i++) has_train |= program->kids.items[i]->kind == AST_TRAIN;
  if (o->emit == EMIT_EXE && !has_train) {
    diag_file_error(o->input, "no 'train' block: a training program needs one "
                              "(try --emit=ir to see the model's graph)");
    return 1;
  }
  Unit *u = sema(program, prelude);
  if (!u) return 1;
  Graph *gs[3 + 2 * NN_MAX_STEPS];
  bool update[3 + 2 * NN_MAX_STEPS];
  int n = unit_graphs(u, gs, update);
  if (o->emit == EMIT_IR) {
    FILE *f = open_dump(o);
    if (!f) return 1;
    for (int i = 0; i < n; i++)
      if (!update[i]) ir_print(f, gs[i]);
    close_dump(f);
    return 0;
  }
  for (int i = 0; i < n && !o->no_trim; i++)
    if (!update[i]) trim_graph(gs[i]);
  if (u->has_train && !ad_gradients(u)) return 1;
  if (o->emit == EMIT_GRAD_IR) {
    FILE *f = open_dump(o);
    if (!f) return 1;
    for (int i = 0; i < n; i++) ir_print(f, gs[i]);
    close_dump(f);
    return 0;
  }
  if (o->max_batch) u->batch = o->max_batch;
  for (int i = 0; i < n; i++) { /* infer: the forward and eval kernels', in inference mode */
    fuse_graph(gs[i], !o->no_fuse);
    plan_memory(gs[i], u->batch, update[i]);
  }
  if (o->emit == EMIT_FUSED_IR) {
    FILE *f = open_dump(o);
    if (!f) return 1;
    for (int i = 0; i < n; i++) fuse_print(f, gs[i]);
    close_dump(f);
    return 0;
  }
  if (o->emit == EMIT_LLVM || o->emit == EMIT_ASM || o->emit == EMIT_OBJ) {
    const char *path = o->output && strcmp(o->output, "-") ? o->output
                       : o->emit == EMIT_OBJ ? default_output(o->input, ".o")
                                             : "/dev/stdout";
    fflush(stdout);
    return lower_llvm(u, o, o->emit, path) ? 0 : 1;
  }
  if (o->emit == EMIT_HEADER && u->n_steps) {
    diag_file_error(o->input, "--emit=header embeds a train block with one loss; this one has "
                    "steps");
    return 1;
  }
  if (o->emit == EMIT_HEADER) return emit_header(u, o);
  /* an executable: object to a temporary file, then link */
  const char *exe = o->output ? o->output : default_output(o->input, "");
  char obj[] = "/tmp/nnc-XXXXXX.o";
  int fd = mkstemps(obj, 2);
  if (fd < 0) {
    fprintf(stderr, "nnc: error: cannot create a temporary object file in /tmp\n");
    return 1;
  }
  close(fd);
  bool ok = lower_llvm(u, o, EMIT_OBJ, obj) && link_executable(obj, exe);
  unlink(obj);
  return ok ? 0 : 1;
}

int main(int argc, char **argv) {
  Options o;
  int rc = parse_args(argc, argv, &o);
  if (!rc) rc = compile(&o);
  xfree_all();
  return rc;
}
