/* embed.c — `--emit=header`: takes a planned Unit and gives what embedding needs besides the
 * kernels: the C name of the model, the sizes of its memory regions, a hash that ties model.h
 * to model.o, the baked weights of --weights, and model.h itself.
 *
 * The sizes come from the plan (each graph's arena_elems, and the arena slots of the nodes
 * nn_forward needs), so an inference-only caller gets the forward pass's arena, not the
 * training one. Every region size is rounded up to a multiple of 64 bytes so that it is never
 * 0 (a C array cannot be) and regions can sit back to back at the preferred alignment. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nnc.h"
#include "../runtime/embed.h"
#include "../runtime/safetensors.h"

static int64_t round64(int64_t bytes) { return bytes <= 0 ? 64 : (bytes + 63) / 64 * 64; }

static char *upper(const char *s) {
  char *c = xstrdup(s);
  for (char *p = c; *p; p++) *p = (char)toupper((unsigned char)*p);
  return c;
}

/* "out/fashion_cnn.h" -> "fashion_cnn": the default model name. */
static char *name_from_path(const char *path) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  size_t len = strlen(base);
  if (len > 2 && !strcmp(base + len - 2, ".h")) len -= 2;
  char *s = xstrndup(base, len);
  for (char *p = s; *p; p++)
    if (!isalnum((unsigned char)*p)) *p = '_';
  if (isdigit((unsigned char)s[0])) s = xprintf("m%s", s);
  return s;
}

static bool is_c_name(const char *s) {
  if (!*s || isdigit((unsigned char)*s)) return false;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && *s != '_') return false;
  return true;
}

/* Bytes of the arena slots nn_forward touches: those of the nodes the `out` output needs. */
static int64_t forward_arena_bytes(const Graph *g, int64_t max_batch, int64_t es) {
  bool *need = xalloc((size_t)g->n_nodes + 1);
  for (int i = 0; i < g->n_outs; i++)
    if (g->outs[i].io == NN_IO_OUT) need[g->outs[i].node->id] = true;
  int64_t end = 0;
  for (int i = g->n_nodes - 1; i >= 0; i--) {
    const Node *n = g->nodes[i];
    if (!need[i]) continue;
    for (int k = 0; k < op_info[n->op].arity; k++) need[n->src[k]->id] = true;
    if (n->io != NN_IO_ARENA) continue;
    int64_t e = n->offset + padded_elems(shape_elems(n->shape, max_batch));
    if (e > end) end = e;
  }
  return end * es;
}

static uint64_t fnv1a(uint64_t h, const char *s) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001B3ull;
  return h;
}

/* Everything the header and the object must agree on. */
static uint64_t model_hash(const Unit *u, const Embed *e) {
  uint64_t h = fnv1a(0xCBF29CE484222325ull, xprintf("nne %d nn %d;", NNE_ABI_VERSION,
                                                   NN_ABI_VERSION));
  h = fnv1a(h, xprintf("%s;%s;%s;%s;%s;", e->name, u->model, shape_str(u->x_shape, true),
                       shape_str(u->y_shape, true), shape_str(u->out_shape, true)));
  h = fnv1a(h, xprintf("es %lld;labels %d;", (long long)e->elem_size, u->labels));
  for (int i = 0; i < u->n_params; i++)
    h = fnv1a(h, xprintf("%s %s %lld;", u->params[i].name, shape_str(u->params[i].shape, false),
                         (long long)u->params[i].offset));
  for (int i = 0; i < u->n_hyper; i++) h = fnv1a(h, xprintf("hyper %s;", u->hyper_names[i]));
  h = fnv1a(h, xprintf("%lld %lld %lld %lld %lld %lld %d %d", (long long)e->params_bytes,
                       (long long)e->state_bytes, (long long)e->infer_arena_bytes,
                       (long long)e->train_arena_bytes, (long long)e->ctx_bytes,
                       (long long)u->batch, u->has_train, e->weights != NULL));
  return e->int8 ? fnv1a(h, "int8") : h;
}

/* Reads --weights: every parameter, by name, with its shape, as F32 or F64. */
static bool read_weights(const Unit *u, const char *path, Embed *e) {
  SourceFile *f = diag_load(path);
  if (!f) return false;
  NnStFile st;
  if (nnrt_st_open(f->text, f->size, &st) != 0) {
    diag_file_error(path, "not a safetensors file (bad header length or header); HINT: pass a "
                          "checkpoint written by the training binary's --save");
    return false;
  }
  double *w = xalloc(sizeof *w * (size_t)(u->param_size + 1));
  for (int k = 0; k < u->n_params; k++) {
    const ParamDecl *p = &u->params[k];
    NnStTensor t;
    int found = nnrt_st_find(&st, p->name, &t);
    char *want = shape_str(p->shape, false);
    if (found < 0) {
      diag_file_error(path, "malformed safetensors header: %s", st.why);
      return false;
    }
    if (!found) {
      diag_file_error(path, "tensor '%s' (%s in this model) is not in the file; HINT: is it "
                            "from another model?", p->name, want);
      return false;
    }
    bool same = t.rank == p->shape.rank && (!strcmp(t.dtype, "F32") || !strcmp(t.dtype, "F64"));
    for (int i = 0; same && i < p->shape.rank; i++) same = t.dims[i] == p->shape.dim[i];
    if (!same) {
      char *got = xprintf("%s[", t.dtype);
      for (int64_t i = 0; i < t.rank; i++) got = xprintf("%s%s%lld", got, i ? "," : "",
                                                          (long long)t.dims[i]);
      diag_file_error(path, "tensor '%s' is %s] in the file but %s in this model", p->name, got,
                      want);
      return false;
    }
    int64_t n = shape_elems(p->shape, 1);
    for (int64_t i = 0; i < n; i++) {
      if (!strcmp(t.dtype, "F32")) {
        float v;
        memcpy(&v, t.bytes + 4 * i, 4);
        w[p->offset + i] = v;
      } else {
        memcpy(&w[p->offset + i], t.bytes + 8 * i, 8);
      }
    }
  }
  e->weights = w;
  return true;
}

static int by_magnitude(const void *a, const void *b) {
  double x = fabs(*(const double *)a), y = fabs(*(const double *)b);
  return (x > y) - (x < y);
}

/* --prune: magnitude pruning of every weight matrix (rank >= 2; biases and other vectors are
 * kept), the smallest `fraction` of each tensor's entries set to 0. */
static void prune_weights(const Unit *u, Embed *e, double fraction) {
  int64_t pruned = 0, total = 0, all = 0, zeros = 0;
  int tensors = 0;
  for (int k = 0; k < u->n_params; k++) {
    const ParamDecl *p = &u->params[k];
    int64_t n = shape_elems(p->shape, 1);
    double *w = e->weights + p->offset;
    all += n;
    if (p->shape.rank < 2 || n == 0) continue;
    double *sorted = xalloc(sizeof *sorted * (size_t)n);
    memcpy(sorted, w, sizeof *sorted * (size_t)n);
    qsort(sorted, (size_t)n, sizeof *sorted, by_magnitude);
    int64_t want = (int64_t)(fraction * (double)n), done = 0;
    double limit = want ? fabs(sorted[want - 1]) : -1;
    for (int64_t i = 0; i < n && done < want; i++)
      if (fabs(w[i]) <= limit) w[i] = 0, done++;
    pruned += done, total += n, tensors++;
  }
  for (int k = 0; k < u->n_params; k++)
    for (int64_t i = 0; i < shape_elems(u->params[k].shape, 1); i++)
      zeros += e->weights[u->params[k].offset + i] == 0;
  printf("pruned: %lld of %lld weights in %d matri%s (%.1f%%); %.1f%% of all %lld parameters "
         "are 0\n", (long long)pruned, (long long)total, tensors, tensors == 1 ? "x" : "ces",
         total ? 100.0 * (double)pruned / (double)total : 0.0,
         all ? 100.0 * (double)zeros / (double)all : 0.0, (long long)all);
}

Embed *embed_prepare(const Unit *u, const Options *o, const char *header_path) {
  Embed *e = xalloc(sizeof *e);
  e->name = o->name ? o->name : name_from_path(header_path);
  if (!is_c_name(e->name)) {
    fprintf(stderr, "nnc: error: --name '%s' is not a C identifier (letters, digits, '_')\n",
            e->name);
    return NULL;
  }
  e->upper = upper(e->name);
  e->elem_size = o->f64 ? 8 : 4;
  e->int8 = o->int8;
  int64_t arena = u->train->arena_elems;
  if (u->update && u->update->arena_elems > arena) arena = u->update->arena_elems;
  int64_t out_bytes = u->batch * shape_elems(u->out_shape, 1) * e->elem_size;
  e->params_bytes = round64(u->param_size * e->elem_size);
  e->state_bytes = round64(u->state_size * e->elem_size);
  e->infer_arena_bytes = round64(forward_arena_bytes(u->infer ? u->infer : u->train, u->batch, e->elem_size));
  e->train_arena_bytes = round64(arena * e->elem_size) + round64(out_bytes);
  e->ctx_bytes = (int64_t)NNE_CTX_BYTES(u->n_hyper);
  if (o->weights && !read_weights(u, o->weights, e)) return NULL;
  if (o->prune > 0) prune_weights(u, e, o->prune);
  e->hash = model_hash(u, e);
  return e;
}

/* ---- model.h ---- */

/* "dense0.W" -> "dense0_W". */
static char *c_name(const char *s) {
  char *c = xstrdup(s);
  for (char *p = c; *p; p++)
    if (!isalnum((unsigned char)*p)) *p = '_';
  return c;
}

/* PREFIX_RANK, PREFIX_DIM0.., PREFIX_SIZE as enum constants. */
static void shape_enum(FILE *f, const char *prefix, Shape s, const char *what) {
  fprintf(f, "/* %s: %s per sample */\nenum {\n  %s_RANK = %d,\n", what, shape_str(s, true),
          prefix, s.rank);
  for (int i = 0; i < s.rank; i++) fprintf(f, "  %s_DIM%d = %lld,\n", prefix, i,
                                           (long long)s.dim[i]);
  fprintf(f, "  %s_SIZE = %lld /* elements */\n};\n\n", prefix, (long long)shape_elems(s, 1));
}

/* The comment block's ten-line example. */
static void write_usage(FILE *f, const Embed *e, const char *T) {
  const char *n = e->name, *N = e->upper;
  fprintf(f, " * Usage (inference; %s):\n *\n",
          e->weights ? "the weights are baked in, so no heap and no file" : "weights from a file");
  fprintf(f, " *   #include \"%s.h\"\n", n);
  fprintf(f, " *   static %s_ctx ctx;  // place it anywhere: static, stack or heap\n", n);
  fprintf(f, " *   static %s arena[%s_INFER_ARENA_BYTES / sizeof(%s)];  // activations\n", T, N, T);
  if (!e->weights)
    fprintf(f, " *   static %s params[%s_PARAMS_BYTES / sizeof(%s)];\n", T, N, T);
  fprintf(f, " *   %s_mem mem = {0};  // grads, state NULL: inference only\n", n);
  fprintf(f, " *   mem.arena = arena, mem.arena_bytes = sizeof arena;%s\n",
          e->weights ? "  // params NULL: read baked weights" : " mem.params = params;");
  fprintf(f, " *   %s in[%s_INPUT_SIZE] = {0}, out[%s_OUTPUT_SIZE];\n", T, N, N);
  fprintf(f, " *   int rc = %s_init(&ctx, &mem, 1);  // 1: the seed of any initialiser\n", n);
  if (!e->weights)
    fprintf(f, " *   if (rc == %s_OK) rc = %s_load_weights_file(&ctx, \"%s.safetensors\");\n",
            N, n, n);
  fprintf(f, " *   if (rc == %s_OK) rc = %s_forward(&ctx, in, out, 1);  // a batch of 1\n", N, n);
  fprintf(f, " *   if (rc != %s_OK) fprintf(stderr, \"%s: %%s\\n\", %s_strerror(rc));\n", N, n, n);
}

bool embed_write_header(const Unit *u, const Embed *e, const char *path) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "nnc: error: cannot write '%s'\n", path);
    return false;
  }
  const char *n = e->name, *N = e->upper, *T = e->elem_size == 4 ? "float" : "double";
  fprintf(f, "/* %s.h — the neural network '%s' from %s, generated by nnc --emit=header.\n"
             " * Do not edit: regenerate with nnc. Link %s.o (C, needs only libc and libm).\n"
             " *\n", n, u->model, u->source, n);
  fprintf(f, " * Memory is the caller's: a context (%s_ctx) and separate regions for parameters,\n"
             " * gradients, optimizer state and activations (the arena), each sized below in bytes\n"
             " * (multiples of 64) and aligned to %s_ALIGN (%s_ALIGN_PREFERRED is faster). Inference\n"
             " * needs only the inference arena, and no parameter memory when the weights are\n"
             " * baked in (nnc --weights). Tensors are row-major %s; a batch is up to\n"
             " * %s_MAX_BATCH samples back to back. Every function returns %s_OK (0) or a\n"
             " * negative %s_ERR_* code (%s_strerror names it); nothing prints, exits or keeps\n"
             " * global state, so two contexts may run in two threads.\n *\n",
          n, N, N, T, N, N, N, n);
  write_usage(f, e, T);
  fprintf(f, " */\n#ifndef %s_H_INCLUDED\n#define %s_H_INCLUDED\n\n"
             "#include <stddef.h>\n#include <stdint.h>\n\n"
             "#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n", N, N);
  fprintf(f, "typedef %s %s_elem; /* every tensor element */\n\n", T, n);
  shape_enum(f, xprintf("%s_INPUT", N), u->x_shape, "input");
  shape_enum(f, xprintf("%s_OUTPUT", N), u->out_shape, "output");
  fprintf(f, "enum {\n"
             "  %s_TARGET_SIZE = %lld, /* train_step's y per sample%s */\n"
             "  %s_MAX_BATCH = %lld,  /* samples per call at most */\n"
             "  %s_PARAM_TENSORS = %d, /* parameter tensors (accessors below) */\n"
             "  %s_HAS_TRAIN = %d,     /* 1: %s_train_step is declared */\n"
             "  %s_BAKED_WEIGHTS = %d, /* 1: the weights are constants in %s.o */\n"
             "  %s_INT8 = %d /* 1: int8-quantized forward; no weight access or training */\n};\n\n",
          N, (long long)shape_elems(u->y_shape, 1),
          u->labels ? ": the class index, as a number" : "", N, (long long)u->batch, N,
          u->n_params, N, u->has_train, n, N, e->weights != NULL, n, N, e->int8);
  int64_t count = 0;
  for (int i = 0; i < u->n_params; i++) count += shape_elems(u->params[i].shape, 1);
  fprintf(f, "#define %s_PARAM_COUNT ((int64_t)%lld) /* parameters (elements) */\n", N,
          (long long)count);
  fprintf(f, "#define %s_HASH UINT64_C(0x%016llx) /* must equal %s.o's: %s_init checks */\n\n",
          N, (unsigned long long)e->hash, n, n);
  fprintf(f, "/* Memory, in bytes. */\n");
  fprintf(f, "#define %s_ALIGN ((size_t)%lld)            /* every region and tensor pointer */\n",
          N, (long long)e->elem_size);
  fprintf(f, "#define %s_ALIGN_PREFERRED ((size_t)%d)\n", N, NNE_ALIGN_PREFERRED);
  struct { const char *name, *what; int64_t bytes; } sizes[] = {
      {"CTX", "the context", e->ctx_bytes},
      {"PARAMS", "parameters (not needed for inference with baked weights)", e->params_bytes},
      {"GRADS", "gradients (training only)", e->params_bytes},
      {"STATE", "optimizer state (training only)", e->state_bytes},
      {"INFER_ARENA", "activations of forward", e->infer_arena_bytes},
      {"TRAIN_ARENA", "activations and gradients of train_step", e->train_arena_bytes},
      {"WORKER_SCRATCH", "per worker of a set_threads pool (64-byte aligned)",
       round64(e->worker_scratch_bytes)},
  };
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
    fprintf(f, "#define %s_%s_BYTES ((size_t)%lld) /* %s */\n", N, sizes[i].name,
            (long long)sizes[i].bytes, sizes[i].what);
  fprintf(f, "\n/* Error codes. */\nenum {\n");
#define ERR(name, value, text) fprintf(f, "  %s_" #name " = %d, /* %s */\n", N, value, text);
  NNE_ERRORS(ERR)
#undef ERR
  fprintf(f, "};\n\n");
  fprintf(f, "/* The context: opaque, %s_CTX_BYTES, placed anywhere by the caller. */\n"
             "typedef union %s_ctx {\n  unsigned char bytes[%s_CTX_BYTES];\n"
             "  double align_double;\n  int64_t align_int;\n  void *align_pointer;\n} %s_ctx;\n\n",
          N, n, N, n);
  fprintf(f, "/* The regions %s_init gets; NULL grads or state: an inference-only context. */\n"
             "typedef struct %s_mem {\n"
             "  void *params;       /* %s_PARAMS_BYTES, or NULL to read the baked weights */\n"
             "  void *grads;        /* %s_GRADS_BYTES, or NULL */\n"
             "  void *state;        /* %s_STATE_BYTES, or NULL */\n"
             "  void *arena;        /* arena_bytes of activations */\n"
             "  size_t arena_bytes; /* >= %s_INFER_ARENA_BYTES; >= %s_TRAIN_ARENA_BYTES to train */\n"
             "} %s_mem;\n\n", n, n, N, N, N, N, N, n);
  fprintf(f, "/* The sizes above, as %s.o computed them. */\n"
             "typedef struct %s_layout {\n"
             "  size_t ctx_bytes, params_bytes, grads_bytes, state_bytes;\n"
             "  size_t infer_arena_bytes, train_arena_bytes, align, worker_scratch_bytes;\n"
             "  int64_t max_batch;\n  uint64_t hash;\n} %s_layout;\n\n", n, n, n);
  fprintf(f, "/* Parameter tensors: index, shape and a typed accessor each (NULL when the context\n"
             " * reads baked weights in place). */\n");
  char **acc = xalloc(sizeof *acc * ((size_t)u->n_params + 1));
  for (int i = 0; i < u->n_params; i++) {
    acc[i] = c_name(u->params[i].name);
    for (int j = 0; j < i; j++)
      if (!strcmp(acc[i], acc[j])) acc[i] = xprintf("%s_%d", acc[i], i); /* a.b_c vs a_b.c */
    const char *P = upper(acc[i]);
    Shape s = u->params[i].shape;
    fprintf(f, "enum { %s_P_%s = %d, %s_%s_RANK = %d", N, P, i, N, P, s.rank);
    for (int d = 0; d < s.rank; d++) fprintf(f, ", %s_%s_DIM%d = %lld", N, P, d,
                                             (long long)s.dim[d]);
    fprintf(f, ", %s_%s_SIZE = %lld }; /* %s */\n", N, P, (long long)shape_elems(s, 1),
            u->params[i].name);
  }
  fprintf(f, "\n/* init: ctx over mem; parameters from the baked weights, else from their\n"
             " * initialisers with `seed`. Fails with %s_ERR_ABI when %s.o is not this header's. */\n"
             "int %s_init_checked(%s_ctx *ctx, const %s_mem *mem, uint64_t seed, uint64_t hash);\n"
             "static inline int %s_init(%s_ctx *ctx, const %s_mem *mem, uint64_t seed) {\n"
             "  return %s_init_checked(ctx, mem, seed, %s_HASH);\n}\n\n", N, n, n, n, n, n, n, n,
          n, N);
  fprintf(f, "/* out (batch, %s_OUTPUT_SIZE) = the model on in (batch, %s_INPUT_SIZE). */\n"
             "int %s_forward(%s_ctx *ctx, const %s *in, %s *out, int64_t batch);\n\n",
          N, N, n, n, T, T);
  if (u->has_train)
    fprintf(f, "/* One optimizer step on x (batch, %s_INPUT_SIZE) and y (batch, %s_TARGET_SIZE);\n"
               " * *loss (may be NULL) gets the batch's mean loss. A non-finite loss or gradient\n"
               " * skips the update and returns %s_ERR_NONFINITE. */\n"
               "int %s_train_step(%s_ctx *ctx, const %s *x, const %s *y, int64_t batch, double *loss);\n"
               "int64_t %s_steps(const %s_ctx *ctx); /* optimizer steps taken since init */\n"
               "/* The updates the whole run will take, which a schedule such as cosine anneals\n"
               " * over (its `total`); steps >= 0. Default: the .nn file's epochs x batches per\n"
               " * epoch when its training set is an inline table, else 0: then call this with\n"
               " * epochs * ceil(samples / batch) before the first step. */\n"
               "int %s_set_total_steps(%s_ctx *ctx, int64_t steps);\n\n",
            N, N, N, n, n, T, T, n, n, n, n);
  fprintf(f, "/* Hyperparameters by name (");
  for (int i = 0; i < u->n_hyper; i++) fprintf(f, "%s%s", i ? ", " : "", u->hyper_names[i]);
  fprintf(f, "%s), read by each step. */\n", u->n_hyper ? "" : "none");
  fprintf(f, "int %s_set_hyper(%s_ctx *ctx, const char *name, double value);\n"
             "int %s_get_hyper(const %s_ctx *ctx, const char *name, double *value);\n\n",
          n, n, n, n);
  fprintf(f, "/* Parameter tensor `index` (%s_P_*), or NULL; the typed accessors below call it. */\n"
             "void *%s_param(%s_ctx *ctx, int64_t index);\n", N, n, n);
  for (int i = 0; i < u->n_params; i++)
    fprintf(f, "static inline %s *%s_param_%s(%s_ctx *ctx) { return (%s *)%s_param(ctx, %s_P_%s); }\n",
            T, n, acc[i], n, T, n, N, upper(acc[i]));
  fprintf(f, "\n/* Weights as safetensors (every parameter by name, F32 or F64; the training\n"
             " * binary's --save checkpoints load too). save_weights with buf NULL or too small\n"
             " * stores the size in *len and returns %s_ERR_SPACE. */\n"
             "int %s_load_weights(%s_ctx *ctx, const void *buf, size_t len);\n"
             "int %s_load_weights_file(%s_ctx *ctx, const char *path);\n"
             "int %s_save_weights(const %s_ctx *ctx, void *buf, size_t cap, size_t *len);\n"
             "int %s_save_weights_file(const %s_ctx *ctx, const char *path);\n\n",
          N, n, n, n, n, n, n, n, n);
  fprintf(f, "/* Threads (optional): a parallel-for of the caller's that %s_forward and\n"
             " * %s_train_step split matrix products and convolutions with. run(pool, work, arg)\n"
             " * must call work(arg, w) for w = 0 and at most once for each other w in\n"
             " * [1, workers), concurrently or not, and return when all have returned; each\n"
             " * output element is summed in a fixed order, so the results do not depend on\n"
             " * timing.\n"
             " * scratch: workers * %s_WORKER_SCRATCH_BYTES, 64-byte aligned. run NULL: serial\n"
             " * (the default). */\n"
             "typedef void (*%s_work)(void *arg, int64_t worker);\n"
             "int %s_set_threads(%s_ctx *ctx, void (*run)(void *pool, %s_work work, void *arg),\n"
             "                   void *pool, int64_t workers, void *scratch,\n"
             "                   size_t scratch_bytes);\n\n",
          n, n, N, n, n, n, n);
  fprintf(f, "void %s_get_layout(%s_layout *out);\n"
             "const char *%s_strerror(int err);\n\n", n, n, n);
  fprintf(f, "#ifdef __cplusplus\n}\n#endif\n\n#endif /* %s_H_INCLUDED */\n", N);
  bool ok = !ferror(f);
  ok &= fclose(f) == 0;
  if (!ok) fprintf(stderr, "nnc: error: cannot write '%s'\n", path);
  return ok;
}
