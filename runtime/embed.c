/* embed.c — the support code of an embedded model (`nnc --emit=header`): takes the kernels
 * and descriptions nnc emitted (nn_embed, nn_model) and caller-owned memory, gives the C API
 * that model.h declares: init, forward, train_step, hyperparameters, parameter access, and
 * weights in safetensors form from and to memory or a file.
 *
 * nnc renames every public nne_X here to NAME_X and hides every other symbol (embed.h), so
 * this file has no global mutable state and never allocates except to read or write a file
 * (the *_file functions), never prints and never exits: every problem is an error code. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embed.h"
#include "nnrt_internal.h"
#include "safetensors.h"

extern const NnEmbedDesc nn_embed;

#define FORMAT "nnc.weights" /* __metadata__ format of the files save_weights writes */

enum {
#define ERR(name, value, text) NNE_##name = value,
  NNE_ERRORS(ERR)
#undef ERR
};

static const NnModelDesc *desc(void) { return nn_embed.model; }

/* The updates of the run the .nn file describes, as the training binary counts them (epochs x
 * batches per epoch), when the compiler knows the training set's size (an inline table);
 * else 0, and a schedule that reads `total` needs set_total_steps. */
static int64_t default_total_steps(const NnModelDesc *d) {
  if (!d->data || d->data->kind != NN_DATA_TABLE || d->data->rows < 1)
    return 0;
  int64_t rows = d->data->rows;
  if (!d->val && d->val_split > 0 && rows >= 2)
    rows -= nnrt_held_out(rows, d->val_split);
  return d->epochs * ((rows + d->max_batch - 1) / d->max_batch);
}

static NneCtx *ready(void *ctx) {
  NneCtx *c = ctx;
  return c && c->magic == nn_embed.hash ? c : NULL;
}

static int misaligned(const void *p) {
  return ((uintptr_t)p % (uintptr_t)desc()->elem_size) != 0;
}

void nne_get_layout(NneLayout *out) {
  const NnModelDesc *d = desc();
  if (!out)
    return;
  out->ctx_bytes = NNE_CTX_BYTES(d->n_hyper);
  out->params_bytes = (size_t)(d->param_size * d->elem_size);
  out->grads_bytes = out->params_bytes;
  out->state_bytes = (size_t)(d->state_size * d->elem_size);
  out->infer_arena_bytes = (size_t)nn_embed.infer_arena_bytes;
  out->train_arena_bytes = (size_t)nn_embed.train_arena_bytes;
  out->align = (size_t)d->elem_size;
  out->worker_scratch_bytes = (size_t)d->scratch_bytes;
  out->max_batch = d->max_batch;
  out->hash = nn_embed.hash;
}

int nne_init_checked(void *ctx, const NneMem *mem, uint64_t seed, uint64_t header_hash) {
  const NnModelDesc *d = desc();
  NneCtx *c = ctx;
  if (!c || !mem)
    return NNE_ERR_ARG;
  c->magic = 0;
  if (header_hash != nn_embed.hash || d->abi_version != NN_ABI_VERSION)
    return NNE_ERR_ABI;
  if (!mem->arena || mem->arena_bytes < (size_t)nn_embed.infer_arena_bytes ||
      (!mem->params && !nn_embed.weights && !nn_embed.quantized))
    return NNE_ERR_MEMORY;
  if (misaligned(mem->params) || misaligned(mem->grads) || misaligned(mem->state) ||
      misaligned(mem->arena))
    return NNE_ERR_ALIGN;
  memset(c->io, 0, sizeof c->io);
  c->io[NN_IO_ARENA] = mem->arena;
  c->writable = mem->params != NULL && !nn_embed.quantized;
  c->io[NN_IO_PARAM] = mem->params ? mem->params : (void *)(uintptr_t)nn_embed.weights;
  if (nn_embed.quantized) /* forward reads its own constants; mem.params is not used */
    c->io[NN_IO_PARAM] = NULL;
  else if (mem->params && nn_embed.weights)
    memcpy(mem->params, nn_embed.weights, (size_t)(d->param_size * d->elem_size));
  else if (mem->params && nnrt_params_init(d, mem->params, seed) >= 0)
    return NNE_ERR_ABI; /* an initialiser this support code does not know */
  c->can_train = nn_embed.has_train && !nn_embed.quantized && mem->params && mem->grads &&
                 mem->state && mem->arena_bytes >= (size_t)nn_embed.train_arena_bytes;
  if (c->can_train) {
    c->io[NN_IO_GRAD] = mem->grads;
    c->io[NN_IO_STATE] = mem->state;
    memset(mem->state, 0, (size_t)(d->state_size * d->elem_size)); /* optimizer state starts at 0 */
  }
  for (int64_t i = 0; i < d->n_hyper; i++)
    c->hyper[i] = d->hyper_defaults[i];
  c->step = 0;
  for (int64_t i = 0; i < NN_HYPER_SLOTS; i++) /* step 0, seed 0 */
    c->hyper[d->n_hyper + i] = 0;
  c->hyper[d->n_hyper + NN_HYPER_TOTAL] = (double)default_total_steps(d);
  c->loss = 0;
  memset(&c->threads, 0, sizeof c->threads);
  c->worker_scratch = NULL;
  c->magic = nn_embed.hash;
  return NNE_OK;
}

/* The slots inside the context itself are set per call, so a context stays valid when the
 * caller moves or copies it. */
/* The GEMM's scratch: the last scratch_bytes + 64 bytes before `end`, 64-byte aligned (the
 * packing uses aligned vector stores; the caller's arena need only be NNE_ALIGN aligned). */
static void *scratch_before(void *end) {
  uintptr_t p = (uintptr_t)end - (uintptr_t)desc()->scratch_bytes - 64;
  return (void *)((p + 63) & ~(uintptr_t)63);
}

/* `end`: where the serial scratch ends (the caller's hook brings scratch of its own). */
static void point_into(NneCtx *c, void *end) {
  c->io[NN_IO_THREADS] = c->threads.run ? &c->threads : NULL;
  c->io[NN_IO_SCRATCH] = c->threads.run ? c->worker_scratch : scratch_before(end);
  c->io[NN_IO_LOSS] = &c->loss;
  c->io[NN_IO_HYPER] = c->hyper;
}

static int bad_batch(int64_t batch) { return batch < 1 || batch > desc()->max_batch; }

int nne_forward(void *ctx, const void *in, void *out, int64_t batch) {
  NneCtx *c = ready(ctx);
  if (!c)
    return ctx ? NNE_ERR_NOT_INIT : NNE_ERR_ARG;
  if (!in || !out || bad_batch(batch))
    return NNE_ERR_ARG;
  if (misaligned(in) || misaligned(out))
    return NNE_ERR_ALIGN;
  point_into(c, (char *)c->io[NN_IO_ARENA] + nn_embed.infer_arena_bytes);
  c->io[NN_IO_X] = (void *)(uintptr_t)in; /* the kernels only read X */
  c->io[NN_IO_OUT] = out;
  desc()->forward(c->io, batch);
  c->io[NN_IO_X] = c->io[NN_IO_OUT] = NULL;
  return NNE_OK;
}

/* The training binary's step (train.c): gradients and loss, then, when they are finite, one
 * optimizer update with the step count advanced. */
int nne_train_step(void *ctx, const void *x, const void *y, int64_t batch, double *loss) {
  const NnModelDesc *d = desc();
  NneCtx *c = ready(ctx);
  if (!c)
    return ctx ? NNE_ERR_NOT_INIT : NNE_ERR_ARG;
  if (!x || !y || bad_batch(batch))
    return NNE_ERR_ARG;
  if (nn_embed.quantized)
    return NNE_ERR_QUANTIZED;
  if (!c->can_train)
    return NNE_ERR_NO_TRAIN;
  if (misaligned(x) || misaligned(y))
    return NNE_ERR_ALIGN;
  c->io[NN_IO_X] = (void *)(uintptr_t)x;
  c->io[NN_IO_Y] = (void *)(uintptr_t)y;
  /* grad also writes OUT, which nobody reads here: the training arena ends with room for it */
  int64_t out_room = (d->max_batch * d->out_size * d->elem_size + 63) / 64 * 64;
  c->io[NN_IO_OUT] = (char *)c->io[NN_IO_ARENA] + nn_embed.train_arena_bytes - out_room;
  point_into(c, c->io[NN_IO_OUT]);
  d->grad(c->io, batch);
  double l = c->loss;
  if (loss)
    *loss = l;
  int finite = isfinite(l) && nnrt_all_finite(c->io[NN_IO_GRAD], d->param_size, d->elem_size);
  if (finite) {
    c->hyper[d->n_hyper] = (double)++c->step;
    d->update(c->io, batch);
  }
  c->io[NN_IO_X] = c->io[NN_IO_Y] = c->io[NN_IO_OUT] = NULL;
  return finite ? NNE_OK : NNE_ERR_NONFINITE;
}

/* The caller's thread pool: run(pool, work, arg) must call work(arg, w) for w = 0 and at most
 * once for each other w in [1, workers), concurrently or not, and return when all calls have
 * returned (nnrt.h's NnThreads). Worker w uses scratch bytes [w * scratch_bytes of the
 * model, (w + 1) * ...). run NULL (or one worker): serial again, on the arena's scratch. */
int nne_set_threads(void *ctx, void (*run)(void *pool, NnWork work, void *arg), void *pool,
                    int64_t workers, void *scratch, size_t scratch_bytes) {
  NneCtx *c = ready(ctx);
  if (!c)
    return ctx ? NNE_ERR_NOT_INIT : NNE_ERR_ARG;
  if (run && workers < 1)
    return NNE_ERR_ARG;
  if (!run || workers == 1) {
    memset(&c->threads, 0, sizeof c->threads);
    c->worker_scratch = NULL;
    return NNE_OK;
  }
  if (!scratch || scratch_bytes / (size_t)workers < (size_t)desc()->scratch_bytes)
    return NNE_ERR_MEMORY;
  if ((uintptr_t)scratch % 64)
    return NNE_ERR_ALIGN;
  c->threads = (NnThreads){.run = run, .ctx = pool, .workers = workers};
  c->worker_scratch = scratch;
  return NNE_OK;
}

int64_t nne_steps(const void *ctx) {
  const NneCtx *c = ready((void *)(uintptr_t)ctx);
  return c ? c->step : NNE_ERR_NOT_INIT;
}

int nne_set_total_steps(void *ctx, int64_t steps) {
  NneCtx *c = ready(ctx);
  if (!c)
    return ctx ? NNE_ERR_NOT_INIT : NNE_ERR_ARG;
  if (steps < 0)
    return NNE_ERR_ARG;
  c->hyper[desc()->n_hyper + NN_HYPER_TOTAL] = (double)steps;
  return NNE_OK;
}

static int64_t hyper_index(const char *name) {
  if (!name)
    return -1;
  for (int64_t i = 0; i < desc()->n_hyper; i++)
    if (!strcmp(desc()->hyper_names[i], name))
      return i;
  return -1;
}

int nne_set_hyper(void *ctx, const char *name, double value) {
  NneCtx *c = ready(ctx);
  if (!c)
    return ctx ? NNE_ERR_NOT_INIT : NNE_ERR_ARG;
  int64_t i = hyper_index(name);
  if (i < 0)
    return NNE_ERR_NO_NAME;
  c->hyper[i] = value;
  return NNE_OK;
}

int nne_get_hyper(const void *ctx, const char *name, double *value) {
  NneCtx *c = ready((void *)(uintptr_t)ctx);
  if (!c)
    return ctx ? NNE_ERR_NOT_INIT : NNE_ERR_ARG;
  int64_t i = hyper_index(name);
  if (i < 0)
    return NNE_ERR_NO_NAME;
  if (value)
    *value = c->hyper[i];
  return NNE_OK;
}

void *nne_param(void *ctx, int64_t index) {
  NneCtx *c = ready(ctx);
  if (!c || !c->writable || index < 0 || index >= desc()->n_params)
    return NULL;
  return (char *)c->io[NN_IO_PARAM] + desc()->params[index].offset * desc()->elem_size;
}

/* ---- weights ---- */

/* Parameter k in the context's parameter region (which pads each tensor). */
static const void *param_bytes(const NneCtx *c, int64_t k) {
  return (const char *)c->io[NN_IO_PARAM] + desc()->params[k].offset * desc()->elem_size;
}

/* Copies t into n elements of es bytes at dst, converting F32 <-> F64 when needed. */
static void copy_tensor(const NnStTensor *t, void *dst, int64_t n, int64_t es) {
  nnrt_st_copy_floats(dst, es, t->bytes, strcmp(t->dtype, "F32") == 0 ? 4 : 8, n);
}

static int fits(const NnStTensor *t, const NnParamInfo *p) {
  if (strcmp(t->dtype, "F32") && strcmp(t->dtype, "F64"))
    return 0;
  if (t->rank != p->rank)
    return 0;
  for (int64_t i = 0; i < p->rank; i++)
    if (t->dims[i] != p->dims[i])
      return 0;
  return 1;
}

/* Every parameter must be in the file with its shape (F32 or F64); other tensors, such as a
 * training checkpoint's optimizer state, are ignored. Nothing is copied unless all fit. */
int nne_load_weights(void *ctx, const void *buf, size_t len) {
  const NnModelDesc *d = desc();
  NneCtx *c = ready(ctx);
  NnStFile st;
  NnStTensor t;
  if (!c)
    return ctx ? NNE_ERR_NOT_INIT : NNE_ERR_ARG;
  if (!buf)
    return NNE_ERR_ARG;
  if (nn_embed.quantized)
    return NNE_ERR_QUANTIZED;
  if (!c->writable)
    return NNE_ERR_READ_ONLY;
  if (nnrt_st_open(buf, len, &st) != 0)
    return NNE_ERR_FORMAT;
  for (int pass = 0; pass < 2; pass++)
    for (int64_t k = 0; k < d->n_params; k++) {
      const NnParamInfo *p = &d->params[k];
      int found = nnrt_st_find(&st, p->name, &t);
      if (found < 0)
        return NNE_ERR_FORMAT;
      if (!found || !fits(&t, p))
        return NNE_ERR_MISMATCH;
      if (pass == 1)
        copy_tensor(&t, (char *)c->io[NN_IO_PARAM] + p->offset * d->elem_size, p->size,
                    d->elem_size);
    }
  return NNE_OK;
}

int nne_load_weights_file(void *ctx, const char *path) {
  if (!ready(ctx))
    return ctx ? NNE_ERR_NOT_INIT : NNE_ERR_ARG;
  if (!path)
    return NNE_ERR_ARG;
  FILE *f = fopen(path, "rb");
  if (!f)
    return NNE_ERR_IO;
  long size = -1;
  if (fseek(f, 0, SEEK_END) == 0)
    size = ftell(f);
  if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return NNE_ERR_IO;
  }
  void *buf = malloc(size ? (size_t)size : 1);
  if (!buf) {
    fclose(f);
    return NNE_ERR_NOMEM;
  }
  size_t got = fread(buf, 1, (size_t)size, f);
  fclose(f);
  int rc = got == (size_t)size ? nne_load_weights(ctx, buf, got) : NNE_ERR_IO;
  free(buf);
  return rc;
}

/* The parameters as a safetensors file in buf; *len gets the size (also when it does not fit
 * or buf is NULL, which returns NNE_ERR_SPACE). */
int nne_save_weights(const void *ctx, void *buf, size_t cap, size_t *len) {
  const NnModelDesc *d = desc();
  const NneCtx *c = ready((void *)(uintptr_t)ctx);
  if (!c)
    return ctx ? NNE_ERR_NOT_INIT : NNE_ERR_ARG;
  if (nn_embed.quantized)
    return NNE_ERR_QUANTIZED;
  size_t head = nnrt_st_header(NULL, 0, d, FORMAT), total = head;
  for (int64_t k = 0; k < d->n_params; k++)
    total += (size_t)(d->params[k].size * d->elem_size);
  if (len)
    *len = total;
  if (!buf || cap < total)
    return NNE_ERR_SPACE;
  nnrt_st_header(buf, cap, d, FORMAT);
  char *at = (char *)buf + head; /* tensors in model order, without the region's padding */
  for (int64_t k = 0; k < d->n_params; k++) {
    size_t bytes = (size_t)(d->params[k].size * d->elem_size);
    memcpy(at, param_bytes(c, k), bytes);
    at += bytes;
  }
  return NNE_OK;
}

int nne_save_weights_file(const void *ctx, const char *path) {
  const NnModelDesc *d = desc();
  const NneCtx *c = ready((void *)(uintptr_t)ctx);
  if (!c)
    return ctx ? NNE_ERR_NOT_INIT : NNE_ERR_ARG;
  if (!path)
    return NNE_ERR_ARG;
  if (nn_embed.quantized)
    return NNE_ERR_QUANTIZED;
  size_t head = nnrt_st_header(NULL, 0, d, FORMAT);
  char *h = malloc(head);
  if (!h)
    return NNE_ERR_NOMEM;
  nnrt_st_header(h, head, d, FORMAT);
  FILE *f = fopen(path, "wb");
  if (!f) {
    free(h);
    return NNE_ERR_IO;
  }
  int ok = fwrite(h, 1, head, f) == head;
  for (int64_t k = 0; k < d->n_params && ok; k++) {
    size_t bytes = (size_t)(d->params[k].size * d->elem_size);
    ok = !bytes || fwrite(param_bytes(c, k), 1, bytes, f) == bytes;
  }
  ok &= fclose(f) == 0;
  free(h);
  return ok ? NNE_OK : NNE_ERR_IO;
}

const char *nne_strerror(int err) {
  switch (err) {
#define ERR(name, value, text) \
  case value: return text;
    NNE_ERRORS(ERR)
#undef ERR
  }
  return "unknown error code";
}
