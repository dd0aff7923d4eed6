/* safetensors.h — reading and writing the safetensors layout without a heap (safetensors.c).
 *
 * The one reader of the layout: the embedding support code (embed.c, linked into user
 * programs, where nothing may allocate or exit), nnc's --weights, and the training binary's
 * checkpoints (ckpt.c, which lists every tensor with nnrt_st_next and reads the metadata with
 * json.c). Every failure is a return value plus a sentence in NnStFile.why. */
#ifndef NNRT_SAFETENSORS_H
#define NNRT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "nnrt.h"

enum { NNRT_ST_MAX_RANK = 8 };

/* A safetensors file in memory, its header checked against the file's size. */
typedef struct NnStFile {
  const char *header;           /* the JSON header, header_len bytes (not NUL-terminated) */
  size_t header_len;
  const unsigned char *data;    /* the tensor bytes that follow it */
  size_t data_len;
  char why[200];                /* after a failure: what is wrong, e.g. "truncated: ..." */
} NnStFile;

/* One tensor entry. */
typedef struct NnStTensor {
  char name[256];               /* its key in the header */
  char dtype[12];               /* "F32", "F64", ... as written */
  int width;                    /* bytes per element of dtype */
  int64_t rank;                 /* used entries of dims */
  int64_t dims[NNRT_ST_MAX_RANK];
  const unsigned char *bytes;   /* nbytes of little-endian data inside the file */
  int64_t nbytes;
} NnStTensor;

/* Bytes per element of a safetensors dtype ("F32": 4, "BF16": 2, ...); 0 for an unknown one. */
int nnrt_st_dtype_width(const char *dtype);
/* n little-endian F32 (width 4) or F64 (width 8) values at src into n elements of elem_size
 * bytes at dst, converting between the two float types when they differ. */
void nnrt_st_copy_floats(void *dst, int64_t elem_size, const unsigned char *src, int width,
                         int64_t n);
/* 0, or -1 when `file` is not a safetensors file (too short, header out of bounds). */
int nnrt_st_open(const void *file, size_t size, NnStFile *st);
/* The tensor entries in header order (__metadata__ skipped): *at is 0 before the first call.
 * 1 with *t filled (its shape and offsets valid, its bytes inside the file); 0 after the last;
 * -1 when the header is malformed or the entry inconsistent. */
int nnrt_st_next(NnStFile *st, size_t *at, NnStTensor *t);
/* The entry `name`: 1 with *t filled, 0 when there is none, -1 as nnrt_st_next. */
int nnrt_st_find(NnStFile *st, const char *name, NnStTensor *t);
/* Writes the header of a file holding every parameter of d (elem_size, in model order) and
 * `format` as its __metadata__ "format": the 8-byte length, then the JSON padded with spaces
 * to 8 bytes. Returns the bytes it needs; writes them only when they fit in cap. */
size_t nnrt_st_header(char *buf, size_t cap, const NnModelDesc *d, const char *format);

#endif
