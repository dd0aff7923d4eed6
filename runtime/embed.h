/* embed.h — the ABI between `nnc --emit=header` and the embedding support code (embed.c).
 *
 * For --emit=header nnc links one relocatable model.o from the kernels object (nn_forward ...,
 * nn_model, and the NnEmbedDesc `nn_embed` below) and libnnembed.a (embed.c, init.c, rng.c,
 * safetensors.c), then renames the support code's public `nne_*` functions to `<name>_*` and
 * makes every other symbol local, so two models link into one program. The generated model.h
 * declares those functions with the model's types; this header is what both sides agree on.
 * Every NnEmbedDesc field is 8 bytes wide (no padding), as in nnrt.h: ORDER EMBED. */
#ifndef NNRT_EMBED_H
#define NNRT_EMBED_H

#include <stddef.h>
#include <stdint.h>

#include "nnrt.h"

#define NNE_ABI_VERSION 2
#define NNE_ALIGN_PREFERRED 64 /* what the generated header recommends for every region */

/* What nnc tells the support code about the model beyond NnModelDesc. */
typedef struct NnEmbedDesc {
  const NnModelDesc *model;  /* shapes, parameters, kernels */
  int64_t infer_arena_bytes; /* arena bytes nn_forward needs at max_batch */
  int64_t train_arena_bytes; /* arena bytes every kernel needs at max_batch, then room for
                                OUT at its end (train_step's grad writes OUT there) */
  uint64_t hash;             /* model/ABI hash, also in the header as NAME_HASH */
  const void *weights;       /* baked parameters (param_size elements), or NULL */
  int64_t has_train;         /* 1 when the .nn file has a train block */
  int64_t quantized;         /* 1: --quantize=int8: forward reads int8 and f32 constants of
                                its own; no parameter memory, weights I/O or training */
} NnEmbedDesc;

/* The context, opaque to the caller (model.h gives it as NAME_CTX_BYTES of storage aligned
 * for doubles and pointers): the io array handed to the kernels plus the optimizer step's
 * hyperparameters. Between calls it points into caller memory only, never into itself (the
 * LOSS and HYPER slots are set per call), so the caller may move or copy it. */
typedef struct NneCtx {
  uint64_t magic;            /* the model hash once init succeeded: catches an uninitialised ctx */
  void *io[NN_IO_COUNT];     /* regions as the kernels see them; X/Y/OUT are set per call */
  int64_t writable;          /* 1: io[NN_IO_PARAM] is caller memory; 0: the baked constants */
  int64_t can_train;         /* 1: grads, state and a training-sized arena were given */
  int64_t step;              /* optimizer steps taken */
  double loss;               /* NN_IO_LOSS */
  NnThreads threads;         /* the caller's parallel-for (set_threads); run NULL: serial */
  void *worker_scratch;      /* threads.workers * the model's scratch_bytes, 64-byte aligned */
  double hyper[];            /* n_hyper hyperparameters, then NnHyperSlot (NN_IO_HYPER) */
} NneCtx;

/* Bytes of the context for a model with n_hyper hyperparameters. */
#define NNE_CTX_BYTES(n_hyper) \
  (sizeof(NneCtx) + ((size_t)(n_hyper) + NN_HYPER_SLOTS) * sizeof(double))

/* Error codes, returned as negative ints; the header names them NAME_ERR_*. ORDER ERR */
#define NNE_ERRORS(X)                                                                  \
  X(OK, 0, "success")                                                                  \
  X(ERR_ARG, -1, "invalid argument (a NULL pointer, or a batch outside 1..MAX_BATCH)") \
  X(ERR_ABI, -2, "model.h and model.o come from different nnc runs (hash mismatch)")   \
  X(ERR_ALIGN, -3, "a pointer is misaligned (regions: the element size; thread scratch: 64)") \
  X(ERR_MEMORY, -4, "a memory region is missing or smaller than its *_BYTES size")     \
  X(ERR_NOT_INIT, -5, "the context was not initialised (or its init failed)")                  \
  X(ERR_NO_TRAIN, -6, "training needs a train block, grads, state and the training arena") \
  X(ERR_READ_ONLY, -7, "the parameters are the baked-in constants (mem.params was NULL)") \
  X(ERR_IO, -8, "cannot open, read or write the file")                                 \
  X(ERR_FORMAT, -9, "not a valid safetensors file")                                    \
  X(ERR_MISMATCH, -10, "a tensor is missing or has another dtype or shape than the model's") \
  X(ERR_NOMEM, -11, "out of memory")                                                   \
  X(ERR_NONFINITE, -12, "the loss or a gradient is not finite; the step was skipped")  \
  X(ERR_NO_NAME, -13, "no hyperparameter of that name")                                \
  X(ERR_SPACE, -14, "the buffer is too small (the needed size was stored)")            \
  X(ERR_QUANTIZED, -15, "an int8-quantized model: its weights cannot be read, set or trained")

/* The public functions of embed.c, renamed to NAME_x in model.o. ORDER API */
#define NNE_API(X)                                                                     \
  X(init_checked) X(forward) X(train_step) X(set_hyper) X(get_hyper) X(param) X(get_layout)  \
  X(load_weights) X(load_weights_file) X(save_weights) X(save_weights_file) X(strerror)  \
  X(steps) X(set_threads) X(set_total_steps)

/* The sizes model.h also gives as macros; NAME_get_layout fills it from the object. */
typedef struct NneLayout {
  size_t ctx_bytes;          /* the context */
  size_t params_bytes;       /* parameters */
  size_t grads_bytes;        /* gradients (training only) */
  size_t state_bytes;        /* optimizer state (training only) */
  size_t infer_arena_bytes;  /* activations for forward */
  size_t train_arena_bytes;  /* activations and gradients for train_step */
  size_t align;              /* alignment every region needs (the element size) */
  size_t worker_scratch_bytes; /* per worker of a set_threads hook */
  int64_t max_batch;         /* largest batch per call */
  uint64_t hash;             /* NAME_HASH */
} NneLayout;

/* The memory regions the caller gives init. */
typedef struct NneMem {
  void *params;              /* params_bytes, or NULL to read baked weights in place */
  void *grads;               /* grads_bytes, or NULL: inference only */
  void *state;               /* state_bytes, or NULL: inference only */
  void *arena;               /* arena_bytes bytes of activations */
  size_t arena_bytes;        /* >= infer_arena_bytes; >= train_arena_bytes to train */
} NneMem;

#endif
