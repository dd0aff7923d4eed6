/* lower_conv.c — the module's convolutions, as LLVM IR, built on lower_gemm.c's matrix
 * multiply (through gemm_build.h). lower_llvm.c calls lower_conv_call for every conv2d,
 * conv2d_bwd_data (the data gradient, or conv2d_transpose) and conv2d_bwd_filter node; each
 * node gets its own worker function,
 *
 *   nn.conv.N(job, w)          per sample, im2col into scratch and a GEMM (conv2d, filter
 *                              gradient) or a GEMM and col2im (data gradient); a conv2d of
 *                              fewer than 4 input channels sums its taps directly
 *                              (conv_direct), the GEMM's sums without im2col; a 3x3 stride-1
 *                              convolution over whole vectors of at least 16 channels runs
 *                              Winograd's F(2x2, 3x3) (F(3x3, 2x2) for the filter gradient):
 *                              transforms and 16 GEMMs (winograd_*)
 *
 * parallel over the samples (or, for fewer samples than workers, over ranges of one sample's
 * output pixels); a filter gradient sums FILTER_SHARES fixed shares of the batch apart and
 * adds them in share order, so results do not depend on the thread count. */
#include "gemm_build.h"

/* A filter gradient's sum over the batch is cut into this many shares (fewer for a smaller
 * batch), whatever the worker count: each share's sum is one worker's, in sample order, and
 * the shares are added in order, so the result is the same bits at any thread count. 4: two
 * tasks for each of this machine's two workers, and a worker's scratch keeps room for 3
 * shares' sums (the CNN's conv2: 3 x 72 KB). */
enum { FILTER_SHARES = 4 };

/* Fields of %nn.conv.job. ORDER CONVJOB */
enum {
  CJ_OUT, CJ_SRC0, CJ_SRC1,     /* the node's result and operands */
  CJ_BATCH, CJ_SCRATCH, CJ_SSTRIDE, CJ_NEXT,
  CJ_WORKERS,                   /* workers; a filter gradient's: its shares of the batch */
  CJ_EPI, CJ_EPI_CTX,           /* conv2d's epilogue (or null) and its context */
  CJ_CHUNKS,                    /* conv2d: tasks per sample, each a range of output pixels */
  CJ_WPANELS,                   /* the filter in B panels (worker 0's first region), or null */
  CJ_HOOK_CTX,                  /* the ConvHook's context (or null) */
  CJ_TAKER,                     /* a filter gradient: the worker that summed share k, k >= 1 */
  CJ_COUNT = CJ_TAKER + FILTER_SHARES
};

void conv_init(Gemm *g) {
  LLVMTypeRef ct[CJ_COUNT];
  for (int f = 0; f < CJ_COUNT; f++)
    ct[f] = f <= CJ_SRC1 || f == CJ_SCRATCH || f == CJ_EPI || f == CJ_EPI_CTX ||
                    f == CJ_WPANELS || f == CJ_HOOK_CTX
                ? g->ptr : g->i64;
  g->conv_type = LLVMStructCreateNamed(g->ctx, "nn.conv.job");
  LLVMStructSetBody(g->conv_type, ct, CJ_COUNT, 0);
}

/* The geometry of one convolution node, in the forward op's terms: image x [B,H,W,C], filter
 * [KH,KW,C,F], output y [B,OH,OW,F]; T = KH*KW taps. */
typedef struct ConvGeom {
  const ConvAttr *c;
  int64_t H, W, C, OH, OW, F, T;
} ConvGeom;

static ConvGeom geometry(const Node *n) {
  const Node *img = n->op == OP_CONV2D_BWD_DATA ? n : n->src[0];
  const Node *out = n->op == OP_CONV2D ? n : n->op == OP_CONV2D_BWD_DATA ? n->src[0] : n->src[1];
  const ConvAttr *c = &n->attr.conv;
  return (ConvGeom){c, img->shape.dim[1], img->shape.dim[2], img->shape.dim[3],
                    out->shape.dim[1], out->shape.dim[2], out->shape.dim[3],
                    (int64_t)c->kh * c->kw};
}

/* For every output position oh*OW + ow in [r0, r1) and tap whose input pixel is inside the
 * image, body(row, tap, pixel): row = oh*OW + ow - r0 (a row of the im2col matrix), tap =
 * kh*KW + kw, pixel = ih*W + iw. When `outside` is set it is called for the taps in the
 * padding instead (pixel undefined). */
typedef void (*TapBody)(Gemm *g, LLVMValueRef row, LLVMValueRef tap, LLVMValueRef pixel,
                        bool inside, const void *ctx);

static void for_taps(Gemm *g, const ConvGeom *q, LLVMValueRef r0, LLVMValueRef r1,
                     TapBody body, bool outside, const void *ctx) {
  const ConvAttr *c = q->c;
  LLVMValueRef zero = c64(g, 0);
  GLoop lr = loop_begin(g, r0, r1, 1, "pix"); /* output pixels; the body's rows count from r0 */
  LLVMValueRef oh = LLVMBuildUDiv(g->b, lr.i, c64(g, q->OW), "oh");
  LLVMValueRef ow = sub(g, lr.i, muli(g, oh, q->OW)), row = sub(g, lr.i, r0);
  GLoop kh = loop_begin(g, zero, c64(g, c->kh), 1, "kh");
  LLVMValueRef ih = add(g, add(g, muli(g, oh, c->sh), muli(g, kh.i, c->dh)), c64(g, -c->pt));
  GLoop kw = loop_begin(g, zero, c64(g, c->kw), 1, "kw");
  LLVMValueRef iw = add(g, add(g, muli(g, ow, c->sw), muli(g, kw.i, c->dw)), c64(g, -c->pl));
  LLVMValueRef tap = add(g, muli(g, kh.i, c->kw), kw.i);
  LLVMValueRef in = LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, LLVMIntULT, ih, c64(g, q->H), ""),
                                 LLVMBuildICmp(g->b, LLVMIntULT, iw, c64(g, q->W), ""), "");
  GIf f = if_begin(g, in, "inside");
  body(g, row, tap, add(g, muli(g, ih, q->W), iw), true, ctx);
  if_else(g, &f);
  if (outside) body(g, row, tap, NULL, false, ctx);
  if_end(g, &f);
  loop_end(g, &kw);
  loop_end(g, &kh);
  loop_end(g, &lr);
}

typedef struct ColCtx {
  const ConvGeom *q;
  LLVMValueRef col, img; /* the im2col matrix [OH*OW, T*C]; the sample's image [H*W, C] */
} ColCtx;

/* im2col: col[row, tap*C .. +C] = img[pixel, 0 .. C], or zeros in the padding */
static void im2col_body(Gemm *g, LLVMValueRef row, LLVMValueRef tap, LLVMValueRef pixel,
                        bool inside, const void *ctx) {
  const ColCtx *x = ctx;
  int64_t C = x->q->C;
  LLVMValueRef dst = at(g, x->col, add(g, muli(g, row, x->q->T * C), muli(g, tap, C)));
  LLVMValueRef bytes = c64(g, C * g->es);
  if (inside)
    LLVMBuildMemCpy(g->b, dst, (unsigned)g->es, at(g, x->img, muli(g, pixel, C)),
                    (unsigned)g->es, bytes);
  else
    LLVMBuildMemSet(g->b, dst, LLVMConstInt(LLVMInt8TypeInContext(g->ctx), 0, 0), bytes,
                    (unsigned)g->es);
}

/* im2col's transpose straight into the micro-kernel's A panels (C a multiple of mr, so a panel's
 * mr rows are mr channels of one tap): panel (tap*C + j*mr) / mr holds, for each output pixel
 * `row` of `rows`, the pixel's mr channels j*mr .. at row*mr, or zeros in the padding. The
 * filter gradient's GEMM reads them as they are (GemmArgs.a_panels), with no im2col matrix to
 * write and pack. */
typedef struct PanelCtx {
  const ConvGeom *q;
  LLVMValueRef panels, img;
  int64_t mr;
} PanelCtx;

static void im2col_panels_body(Gemm *g, LLVMValueRef row, LLVMValueRef tap, LLVMValueRef pixel,
                               bool inside, const void *ctx) {
  const PanelCtx *x = ctx;
  int64_t C = x->q->C, rows = x->q->OH * x->q->OW, per = C / x->mr;
  LLVMValueRef bytes = c64(g, x->mr * g->es);
  for (int64_t j = 0; j < per; j++) {
    LLVMValueRef panel = add(g, muli(g, tap, per), c64(g, j));
    LLVMValueRef dst = at(g, x->panels, add(g, muli(g, panel, x->mr * rows), muli(g, row, x->mr)));
    if (inside)
      LLVMBuildMemCpy(g->b, dst, (unsigned)g->es,
                      at(g, x->img, add(g, muli(g, pixel, C), c64(g, j * x->mr))),
                      (unsigned)g->es, bytes);
    else
      LLVMBuildMemSet(g->b, dst, LLVMConstInt(LLVMInt8TypeInContext(g->ctx), 0, 0), bytes,
                      (unsigned)g->es);
  }
}

/* col2im: img[pixel, 0 .. C] += col[row, tap*C .. +C] */
static void col2im_body(Gemm *g, LLVMValueRef row, LLVMValueRef tap, LLVMValueRef pixel,
                        bool inside, const void *ctx) {
  const ColCtx *x = ctx;
  int64_t C = x->q->C;
  (void)inside;
  LLVMValueRef src = at(g, x->col, add(g, muli(g, row, x->q->T * C), muli(g, tap, C)));
  LLVMValueRef dst = at(g, x->img, muli(g, pixel, C));
  GLoop lc = loop_begin(g, c64(g, 0), c64(g, C), 1, "c");
  LLVMValueRef p = at(g, dst, lc.i);
  LLVMValueRef s = LLVMBuildFAdd(g->b, load(g, g->elem, p, 0),
                                 load(g, g->elem, at(g, src, lc.i), 0), "");
  store(g, s, p, 0);
  loop_end(g, &lc);
}

/* A filter of fewer than TAP_MAJOR_C input channels (a grey or RGB image) is im2col'ed tap
 * by tap: the row-major matrix would be built from copies of C elements each. */
enum { TAP_MAJOR_C = 4 };

static LLVMValueRef clamp64(Gemm *g, LLVMValueRef v, LLVMValueRef lo, LLVMValueRef hi) {
  return min64(g, max64(g, v, lo), hi);
}

/* im2col, transposed, for small C: colt[(tap*C + c) * n + p - r0] = img[pixel(p, tap), c] (0 in
 * the padding) for the output pixels p in [r0, r1), n = r1 - r0: each (tap, channel, output
 * row) a run of the image's row (contiguous when C is 1 and the stride 1) between two runs of
 * zeros for the columns in the padding. */
static void im2col_tap_major(Gemm *g, const ConvGeom *q, LLVMValueRef colt, LLVMValueRef img,
                             LLVMValueRef r0, LLVMValueRef r1) {
  const ConvAttr *c = q->c;
  LLVMValueRef zero = c64(g, 0), ow_n = c64(g, q->OW), n = sub(g, r1, r0);
  LLVMValueRef oh0 = LLVMBuildSDiv(g->b, r0, ow_n, ""), oh1 = cdiv(g, r1, ow_n);
  GLoop kh = loop_begin(g, zero, c64(g, c->kh), 1, "kh");
  GLoop kw = loop_begin(g, zero, c64(g, c->kw), 1, "kw");
  /* input column of output column ow: ow*sw + off; inside the image for ow in [a, b) */
  LLVMValueRef off = add(g, muli(g, kw.i, c->dw), c64(g, -c->pl));
  LLVMValueRef a = cdiv(g, max64(g, sub(g, zero, off), zero), c64(g, c->sw));
  LLVMValueRef b = cdiv(g, max64(g, sub(g, c64(g, q->W), off), zero), c64(g, c->sw));
  a = min64(g, a, ow_n), b = clamp64(g, b, a, ow_n);
  LLVMValueRef tap = add(g, muli(g, kh.i, c->kw), kw.i);
  GLoop ch = loop_begin(g, zero, c64(g, q->C), 1, "c");
  LLVMValueRef krow = at(g, colt, mul(g, add(g, muli(g, tap, q->C), ch.i), n));
  GLoop oh = loop_begin(g, oh0, oh1, 1, "oh");
  LLVMValueRef first = muli(g, oh.i, q->OW); /* output pixel of column 0 */
  LLVMValueRef lo = max64(g, sub(g, r0, first), zero), hi = min64(g, sub(g, r1, first), ow_n);
  LLVMValueRef ih = add(g, add(g, muli(g, oh.i, c->sh), muli(g, kh.i, c->dh)), c64(g, -c->pt));
  LLVMValueRef in_row = LLVMBuildICmp(g->b, LLVMIntULT, ih, c64(g, q->H), "");
  LLVMValueRef in_lo = LLVMBuildSelect(g->b, in_row, clamp64(g, a, lo, hi), hi, "");
  LLVMValueRef in_hi = LLVMBuildSelect(g->b, in_row, clamp64(g, b, in_lo, hi), hi, "");
  LLVMValueRef dst = at(g, krow, sub(g, first, r0));
  LLVMValueRef row_px = mul(g, LLVMBuildSelect(g->b, in_row, ih, zero, ""), c64(g, q->W));
  LLVMValueRef zeros[2][2] = {{lo, in_lo}, {in_hi, hi}};
  for (int z = 0; z < 2; z++) {
    GLoop lz = loop_begin(g, zeros[z][0], zeros[z][1], 1, "pad");
    store(g, LLVMConstNull(g->elem), at(g, dst, lz.i), 0);
    loop_end(g, &lz);
  }
  if (q->C == 1 && c->sw == 1) { /* the run is contiguous in the image: one copy (a loop of
                                   * element copies stayed scalar: LLVM cannot tell the two
                                   * buffers apart) */
    LLVMValueRef src = at(g, img, add(g, row_px, add(g, in_lo, off)));
    LLVMBuildMemCpy(g->b, at(g, dst, in_lo), (unsigned)g->es, src, (unsigned)g->es,
                    muli(g, sub(g, in_hi, in_lo), g->es));
  } else {
    GLoop lw = loop_begin(g, in_lo, in_hi, 1, "ow");
    LLVMValueRef px = add(g, row_px, add(g, muli(g, lw.i, c->sw), off));
    store(g, load(g, g->elem, at(g, img, add(g, muli(g, px, q->C), ch.i)), 0), at(g, dst, lw.i),
          0);
    loop_end(g, &lw);
  }
  loop_end(g, &oh);
  loop_end(g, &ch);
  loop_end(g, &kw);
  loop_end(g, &kh);
}

/* A convolution of few input channels (a grey or RGB image) with a small filter: direct, not
 * im2col + GEMM. With K = KH*KW*C at most DIRECT_CONV_K, the GEMM's tiles would run a short k
 * loop each, behind an im2col as large as the output; here each output pixel's F channels are
 * NV vectors summed over the K taps straight from the image, DIRECT_CONV_PIXELS pixels at once
 * (independent sums to hide the multiply-add latency), the filter's K x NV vectors loaded once.
 * Each sum is the micro-kernel's: from 0, k ascending, one llvm.fmuladd per k, a tap in the
 * padding adding x = 0, so the bits are those of the GEMM path. The epilogue runs on each block
 * of DIRECT_CONV_BLOCK pixels as it is done, while the block is in L1. */
enum { DIRECT_CONV_K = 32, DIRECT_CONV_PIXELS = 4, DIRECT_CONV_BLOCK = 64 };

static bool conv_direct_ok(const Gemm *g, const ConvGeom *q) {
  return q->C < TAP_MAJOR_C && q->T * q->C <= DIRECT_CONV_K && q->F % g->w == 0 &&
         q->F / g->w <= 4;
}

/* y's rows [r0, r1) (output pixels of one sample; y points at row r0) from the sample's image
 * and the filter w ([K, F] row-major); then epilogue rows erow + [r0, r1) block by block. */
static void conv_direct(Gemm *g, const ConvGeom *q, LLVMValueRef img, LLVMValueRef w,
                        LLVMValueRef y, LLVMValueRef r0, LLVMValueRef r1, GemmEpilogue epi,
                        LLVMValueRef erow) {
  const ConvAttr *c = q->c;
  int NV = (int)(q->F / g->w), K = (int)(q->T * q->C);
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  bool padded = c->pt || c->pl || c->pb > 0 || c->pr > 0; /* can a tap leave the image? */
  LLVMValueRef wv[DIRECT_CONV_K][4];
  for (int k = 0; k < K; k++)
    for (int j = 0; j < NV; j++)
      wv[k][j] = load(g, vt, at(g, w, c64(g, k * q->F + j * g->w)), (unsigned)g->es);
  LLVMValueRef zero = c64(g, 0), fzero = LLVMConstNull(g->elem);
  GLoop lb = loop_begin(g, r0, r1, DIRECT_CONV_BLOCK, "dc.block");
  LLVMValueRef b1 = min64(g, add(g, lb.i, c64(g, DIRECT_CONV_BLOCK)), r1);
  /* the block's pixels P at a time, then the rest one at a time */
  LLVMValueRef whole =
      sub(g, b1, LLVMBuildSRem(g->b, sub(g, b1, lb.i), c64(g, DIRECT_CONV_PIXELS), ""));
  for (int pass = 0; pass < 2; pass++) {
    int P = pass ? 1 : DIRECT_CONV_PIXELS;
    GLoop lp = pass ? loop_begin(g, whole, b1, 1, "dc.px1") : loop_begin(g, lb.i, whole, P, "dc.px");
    LLVMValueRef ih0[DIRECT_CONV_PIXELS], iw0[DIRECT_CONV_PIXELS], acc[DIRECT_CONV_PIXELS][4];
    for (int i = 0; i < P; i++) {
      LLVMValueRef px = add(g, lp.i, c64(g, i));
      LLVMValueRef oh = LLVMBuildUDiv(g->b, px, c64(g, q->OW), "");
      LLVMValueRef ow = sub(g, px, muli(g, oh, q->OW));
      ih0[i] = add(g, muli(g, oh, c->sh), c64(g, -c->pt));
      iw0[i] = add(g, muli(g, ow, c->sw), c64(g, -c->pl));
      for (int j = 0; j < NV; j++) acc[i][j] = LLVMConstNull(vt);
    }
    for (int kh = 0; kh < c->kh; kh++)
      for (int kw = 0; kw < c->kw; kw++)
        for (int i = 0; i < P; i++) {
          LLVMValueRef ih = add(g, ih0[i], c64(g, (int64_t)kh * c->dh));
          LLVMValueRef iw = add(g, iw0[i], c64(g, (int64_t)kw * c->dw));
          LLVMValueRef inside = NULL;
          if (padded) { /* a tap in the padding reads pixel 0 and adds x = 0 */
            inside = LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, LLVMIntULT, ih, c64(g, q->H), ""),
                                  LLVMBuildICmp(g->b, LLVMIntULT, iw, c64(g, q->W), ""), "");
            ih = LLVMBuildSelect(g->b, inside, ih, zero, "");
            iw = LLVMBuildSelect(g->b, inside, iw, zero, "");
          }
          LLVMValueRef pix = muli(g, add(g, muli(g, ih, q->W), iw), q->C);
          for (int ch = 0; ch < q->C; ch++) {
            LLVMValueRef x = load(g, g->elem, at(g, img, add(g, pix, c64(g, ch))), (unsigned)g->es);
            if (inside) x = LLVMBuildSelect(g->b, inside, x, fzero, "");
            LLVMValueRef xv = splat(g, x);
            int k = (kh * c->kw + kw) * (int)q->C + ch;
            for (int j = 0; j < NV; j++) acc[i][j] = vfmuladd(g, xv, wv[k][j], acc[i][j]);
          }
        }
    for (int i = 0; i < P; i++)
      for (int j = 0; j < NV; j++) {
        LLVMValueRef row = sub(g, add(g, lp.i, c64(g, i)), r0);
        store(g, acc[i][j], at(g, y, add(g, muli(g, row, q->F), c64(g, j * g->w))),
              (unsigned)g->es);
      }
    loop_end(g, &lp);
  }
  if (epi.fn)
    gemm_run_epilogue(g, epi, add(g, erow, sub(g, lb.i, r0)), add(g, erow, sub(g, b1, r0)), zero,
                 c64(g, q->F));
  loop_end(g, &lb);
}

/* ============================== Winograd F(2x2, 3x3) ============================== */

/* A 3x3 conv2d of stride and dilation 1, over whole vectors of input and output channels (the
 * textbook CNN's conv2), by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, 2016):
 * each 2x2 block of output pixels (a tile) is Aᵀ [U ⊙ V] A, with V = Bᵀ d B from the tile's 4x4
 * input patch d and U = G w Gᵀ from the 3x3 filter, for every pair of channels. Summed over the
 * input channels, the 16 elementwise products of a tile are 16 GEMMs [tiles, Ci] x [Ci, Co]:
 * 2.25x fewer multiply-adds than im2col's [pixels, 9Ci] x [9Ci, Co]. The transforms are
 * additions (and the filter's halvings), vectorized over the channels, which NHWC keeps
 * contiguous. The caller transforms the filter once per call (U, [16][Ci][Co], read by the
 * GEMMs in place); a task transforms its tiles' patches (V, [16][tiles][Ci]), runs the 16 GEMMs
 * into [16][tiles][Co] and transforms those back, keeping the pixels inside the output.
 *
 * The data gradient of such a conv2d is one too: dx = conv2d(dy, w') with w' the filter turned
 * by 180 degrees and its channels swapped (w'[i, j, f, c] = w[2-i, 2-j, c, f]), padded by 2 - p
 * before. And its filter gradient is F(3x3, 2x2), the same idea with the roles turned: per
 * tile, the 3x3 taps of dw[.., .., c, f] are the correlation of the 4x4 patch of x with the 2x2
 * of dy, so dw = A'ᵀ [Σ_tiles (B'ᵀ d B') ⊙ (G' dy G'ᵀ)] A' (B'ᵀ is Bᵀ with its last row negated,
 * G' 4x2, A'ᵀ 3x4): 16 GEMMs [C, tiles] x [tiles, F] summed over a worker's samples in the
 * transformed domain, transformed back once per share. Every sum has a fixed order, so the
 * results do not depend on the threads; they differ from im2col's in rounding only (B and A
 * hold 0 and ±1, G halves, which is exact). --no-winograd turns it off. */
enum { WINOGRAD_MIN_C = 16 }; /* fewer channels: the transforms cost more than they save */

static bool winograd_ok(const Gemm *g, const ConvGeom *q) {
  const ConvAttr *c = q->c;
  return g->winograd && c->kh == 3 && c->kw == 3 && c->sh == 1 && c->sw == 1 && c->dh == 1 &&
         c->dw == 1 && q->C >= WINOGRAD_MIN_C && q->F >= WINOGRAD_MIN_C && q->C % g->w == 0 &&
         q->F % g->w == 0;
}

/* The convolution Winograd computes: image [H, W, Ci] to output [OH, OW, Co], the patch of
 * output pixel (oh, ow) starting at input pixel (oh - pt, ow - pl). */
typedef struct Wino {
  int64_t H, W, Ci, OH, OW, Co, pt, pl;
  bool data_grad; /* the filter is read turned and with its channels swapped */
} Wino;

static Wino wino_of(const Node *n, const ConvGeom *q) {
  const ConvAttr *c = q->c;
  if (n->op == OP_CONV2D_BWD_DATA)
    return (Wino){q->OH, q->OW, q->F, q->H, q->W, q->C, 2 - c->pt, 2 - c->pl, true};
  return (Wino){q->H, q->W, q->C, q->OH, q->OW, q->F, c->pt, c->pl, false};
}

/* Tile rows and tiles per row of the output. */
static int64_t tile_rows(const Wino *z) { return (z->OH + 1) / 2; }
static int64_t tile_cols(const Wino *z) { return (z->OW + 1) / 2; }

/* Elements from one of U's 16 matrices to the next: Ci x Co and a vector, so that the 16 rows
 * a step of winograd_filter stores (and the 9 it loads, Ci x Co apart) do not all share their
 * address's low 12 bits, which stalls loads behind unrelated stores (4K aliasing: it cost 2.8
 * of the CNN's 23 us at batch 1, with Ci x Co = 2048 elements, 8 KB, apart) */
static int64_t u_plane(const Gemm *g, const Wino *z) { return z->Ci * z->Co + g->w; }

/* Scratch elements of one worker's V and M for a whole sample. */
static int64_t winograd_scratch(const Wino *z) {
  int64_t tiles = tile_rows(z) * tile_cols(z);
  return round16(16 * tiles * z->Ci) + round16(16 * tiles * z->Co);
}

static LLVMValueRef fadd(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFAdd(g->b, a, b, "");
}
static LLVMValueRef fsub(Gemm *g, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFSub(g->b, a, b, "");
}

/* The 1-D transforms, on vectors: out = L·in for L = Bᵀ (4x4), G (4x3) and Aᵀ (2x4). */
typedef void (*Transform1)(Gemm *g, const LLVMValueRef *in, LLVMValueRef *out);

static void wino_bt(Gemm *g, const LLVMValueRef *d, LLVMValueRef *o) {
  o[0] = fsub(g, d[0], d[2]), o[1] = fadd(g, d[1], d[2]);
  o[2] = fsub(g, d[2], d[1]), o[3] = fsub(g, d[1], d[3]);
}
static void wino_g(Gemm *g, const LLVMValueRef *w, LLVMValueRef *o) {
  LLVMValueRef half = splat(g, LLVMConstReal(g->elem, 0.5)), ends = fadd(g, w[0], w[2]);
  o[0] = w[0], o[3] = w[2];
  o[1] = LLVMBuildFMul(g->b, fadd(g, ends, w[1]), half, "");
  o[2] = LLVMBuildFMul(g->b, fsub(g, ends, w[1]), half, "");
}
static void wino_at(Gemm *g, const LLVMValueRef *m, LLVMValueRef *o) {
  o[0] = fadd(g, fadd(g, m[0], m[1]), m[2]);
  o[1] = fsub(g, fsub(g, m[1], m[2]), m[3]);
}
/* F(3x3, 2x2)'s, for the filter gradient: B'ᵀ (4x4), G' (4x2), A'ᵀ (3x4) */
static void wino_bt3(Gemm *g, const LLVMValueRef *d, LLVMValueRef *o) {
  o[0] = fsub(g, d[0], d[2]), o[1] = fadd(g, d[1], d[2]);
  o[2] = fsub(g, d[2], d[1]), o[3] = fsub(g, d[3], d[1]);
}
static void wino_g2(Gemm *g, const LLVMValueRef *y, LLVMValueRef *o) {
  LLVMValueRef half = splat(g, LLVMConstReal(g->elem, 0.5));
  o[0] = y[0], o[3] = y[1];
  o[1] = LLVMBuildFMul(g->b, fadd(g, y[0], y[1]), half, "");
  o[2] = LLVMBuildFMul(g->b, fsub(g, y[0], y[1]), half, "");
}
static void wino_at3(Gemm *g, const LLVMValueRef *m, LLVMValueRef *o) {
  LLVMValueRef mid = fadd(g, m[1], m[2]);
  o[0] = fadd(g, m[0], mid), o[1] = fsub(g, m[1], m[2]), o[2] = fadd(g, mid, m[3]);
}

/* out = L · in · Lᵀ for in n x n (row-major) and L m x n: the columns, then the rows. */
static void wino_2d(Gemm *g, Transform1 f, int n, int m, const LLVMValueRef *in,
                    LLVMValueRef *out) {
  LLVMValueRef cols[4][4], v[4], r[4]; /* cols[a][j]: row a of L · in */
  for (int j = 0; j < n; j++) {
    for (int i = 0; i < n; i++) v[i] = in[i * n + j];
    f(g, v, r);
    for (int a = 0; a < m; a++) cols[a][j] = r[a];
  }
  for (int a = 0; a < m; a++) {
    f(g, cols[a], r);
    for (int b = 0; b < m; b++) out[a * m + b] = r[b];
  }
}

/* u[e][i][o] = (G w'[.., .., i, o] Gᵀ)[e] for the conv2d's filter w [3, 3, C, F]: w' = w, or
 * for the data gradient w' [3, 3, F, C] turned and swapped, its vectors over o = c gathered
 * from F apart (once per call, for a batch). */
static void winograd_filter(Gemm *g, const Wino *z, LLVMValueRef u, LLVMValueRef w) {
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  LLVMTypeRef i32 = LLVMInt32TypeInContext(g->ctx);
  int64_t taps = z->Ci * z->Co; /* elements of w from one tap to the next */
  GLoop li = loop_begin(g, c64(g, 0), c64(g, z->Ci), 1, "wf.i");
  GLoop lo = loop_begin(g, c64(g, 0), c64(g, z->Co), g->w, "wf.o");
  LLVMValueRef tap[9], e[16], at_io = add(g, muli(g, li.i, z->Co), lo.i);
  for (int t = 0; t < 9; t++) {
    if (!z->data_grad) {
      tap[t] = load(g, vt, at(g, w, add(g, at_io, c64(g, t * taps))), (unsigned)g->es);
      continue;
    }
    LLVMValueRef base = add(g, muli(g, lo.i, z->Ci), add(g, li.i, c64(g, (8 - t) * taps)));
    tap[t] = LLVMGetPoison(vt);
    for (int l = 0; l < g->w; l++) {
      LLVMValueRef x = load(g, g->elem, at(g, w, add(g, base, c64(g, l * z->Ci))), (unsigned)g->es);
      tap[t] = LLVMBuildInsertElement(g->b, tap[t], x, LLVMConstInt(i32, (unsigned)l, 0), "");
    }
  }
  wino_2d(g, wino_g, 3, 4, tap, e);
  for (int k = 0; k < 16; k++)
    store(g, e[k], at(g, u, add(g, at_io, c64(g, k * u_plane(g, z)))), (unsigned)g->es);
  loop_end(g, &lo);
  loop_end(g, &li);
}

/* The w channels from c of pixel (r, x) of an image [., width, channels], or 0 where `in` (the
 * pixel is inside) is false: pixel 0 is read then, and dropped. */
static LLVMValueRef pixel_or_zero(Gemm *g, LLVMValueRef img, LLVMValueRef in, LLVMValueRef r,
                                  LLVMValueRef x, int64_t width, int64_t channels,
                                  LLVMValueRef c) {
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  LLVMValueRef pix = LLVMBuildSelect(g->b, in, add(g, muli(g, r, width), x), c64(g, 0), "");
  LLVMValueRef v = load(g, vt, at(g, img, add(g, muli(g, pix, channels), c)), (unsigned)g->es);
  return LLVMBuildSelect(g->b, in, v, LLVMConstNull(vt), "");
}

/* v[e][t][c] = (Bᵀ d B)[e] (or B'ᵀ's) for the tiles t of tile rows [tr0, tr1) (nt of them),
 * d the tile's 4x4 patch of the sample's image img [H, W, Ci], 0 outside it */
static void winograd_input(Gemm *g, const Wino *z, Transform1 bt, LLVMValueRef v,
                           LLVMValueRef img, LLVMValueRef tr0, LLVMValueRef tr1, LLVMValueRef nt) {
  int64_t TW = tile_cols(z);
  LLVMValueRef zero = c64(g, 0), plane = muli(g, nt, z->Ci);
  GLoop lh = loop_begin(g, tr0, tr1, 1, "wi.th");
  GLoop lw = loop_begin(g, zero, c64(g, TW), 1, "wi.tw");
  LLVMValueRef t = add(g, muli(g, sub(g, lh.i, tr0), TW), lw.i);
  LLVMValueRef ih[4], iw[4], hin[4], win[4];
  for (int i = 0; i < 4; i++) { /* the patch's rows and columns, and whether inside */
    ih[i] = add(g, muli(g, lh.i, 2), c64(g, i - z->pt));
    iw[i] = add(g, muli(g, lw.i, 2), c64(g, i - z->pl));
    hin[i] = LLVMBuildICmp(g->b, LLVMIntULT, ih[i], c64(g, z->H), "");
    win[i] = LLVMBuildICmp(g->b, LLVMIntULT, iw[i], c64(g, z->W), "");
  }
  GLoop lc = loop_begin(g, zero, c64(g, z->Ci), g->w, "wi.c");
  LLVMValueRef d[16], e[16];
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++)
      d[i * 4 + j] = pixel_or_zero(g, img, LLVMBuildAnd(g->b, hin[i], win[j], ""), ih[i], iw[j],
                                   z->W, z->Ci, lc.i);
  wino_2d(g, bt, 4, 4, d, e);
  LLVMValueRef at_t = add(g, muli(g, t, z->Ci), lc.i);
  for (int k = 0; k < 16; k++)
    store(g, e[k], at(g, v, add(g, mul(g, c64(g, k), plane), at_t)), (unsigned)g->es);
  loop_end(g, &lc);
  loop_end(g, &lw);
  loop_end(g, &lh);
}

/* The sample's output y [OH, OW, Co] for tile rows [tr0, tr1) from m[e][t][o] (nt tiles):
 * Aᵀ m A per tile, the pixels past the output's last row or column dropped. */
static void winograd_output(Gemm *g, const Wino *z, LLVMValueRef y, LLVMValueRef m,
                            LLVMValueRef tr0, LLVMValueRef tr1, LLVMValueRef nt) {
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  int64_t TW = tile_cols(z);
  LLVMValueRef zero = c64(g, 0), plane = muli(g, nt, z->Co);
  GLoop lh = loop_begin(g, tr0, tr1, 1, "wo.th");
  GLoop lw = loop_begin(g, zero, c64(g, TW), 1, "wo.tw");
  LLVMValueRef t = add(g, muli(g, sub(g, lh.i, tr0), TW), lw.i);
  LLVMValueRef oh = muli(g, lh.i, 2), ow = muli(g, lw.i, 2);
  /* an odd extent's last tile row (column) has one output row (column) */
  LLVMValueRef row2 = z->OH % 2 ? LLVMBuildICmp(g->b, LLVMIntSLT, add(g, oh, c64(g, 1)),
                                                c64(g, z->OH), "") : NULL;
  LLVMValueRef col2 = z->OW % 2 ? LLVMBuildICmp(g->b, LLVMIntSLT, add(g, ow, c64(g, 1)),
                                                c64(g, z->OW), "") : NULL;
  GLoop lf = loop_begin(g, zero, c64(g, z->Co), g->w, "wo.o");
  LLVMValueRef e[16], o[4];
  LLVMValueRef at_t = add(g, muli(g, t, z->Co), lf.i);
  for (int k = 0; k < 16; k++)
    e[k] = load(g, vt, at(g, m, add(g, mul(g, c64(g, k), plane), at_t)), (unsigned)g->es);
  wino_2d(g, wino_at, 4, 2, e, o);
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 2; b++) {
      LLVMValueRef keep = a && row2 ? row2 : NULL;
      if (b && col2) keep = keep ? LLVMBuildAnd(g->b, keep, col2, "") : col2;
      GIf f = {0};
      if (keep) f = if_begin(g, keep, "wo.keep");
      LLVMValueRef pix = add(g, muli(g, add(g, oh, c64(g, a)), z->OW), add(g, ow, c64(g, b)));
      store(g, o[a * 2 + b], at(g, y, add(g, muli(g, pix, z->Co), lf.i)), (unsigned)g->es);
      if (keep) if_end(g, &f);
    }
  loop_end(g, &lf);
  loop_end(g, &lw);
  loop_end(g, &lh);
}

/* yh[e][t][f] = (G' dy G'ᵀ)[e] for every tile t of the sample's output gradient dy [OH, OW,
 * Co], 0 past its last row and column */
static void winograd_dy(Gemm *g, const Wino *z, LLVMValueRef yh, LLVMValueRef dy) {
  int64_t TW = tile_cols(z), plane = tile_rows(z) * TW * z->Co;
  LLVMValueRef zero = c64(g, 0);
  GLoop lh = loop_begin(g, zero, c64(g, tile_rows(z)), 1, "wy.th");
  GLoop lw = loop_begin(g, zero, c64(g, TW), 1, "wy.tw");
  LLVMValueRef t = add(g, muli(g, lh.i, TW), lw.i);
  LLVMValueRef oh = muli(g, lh.i, 2), ow = muli(g, lw.i, 2);
  GLoop lf = loop_begin(g, zero, c64(g, z->Co), g->w, "wy.f");
  LLVMValueRef d[4], e[16];
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 2; b++) { /* 0 past the end */
      LLVMValueRef ih = add(g, oh, c64(g, a)), iw = add(g, ow, c64(g, b));
      LLVMValueRef in = LLVMBuildAnd(g->b, LLVMBuildICmp(g->b, LLVMIntSLT, ih, c64(g, z->OH), ""),
                                     LLVMBuildICmp(g->b, LLVMIntSLT, iw, c64(g, z->OW), ""), "");
      d[a * 2 + b] = pixel_or_zero(g, dy, in, ih, iw, z->OW, z->Co, lf.i);
    }
  wino_2d(g, wino_g2, 2, 4, d, e);
  LLVMValueRef at_t = add(g, muli(g, t, z->Co), lf.i);
  for (int k = 0; k < 16; k++)
    store(g, e[k], at(g, yh, add(g, at_t, c64(g, k * plane))), (unsigned)g->es);
  loop_end(g, &lf);
  loop_end(g, &lw);
  loop_end(g, &lh);
}

/* dw [3, 3, Ci, Co] = (A'ᵀ m A') from a share's sum m[e][c][f] (u_plane apart) */
static void winograd_dw(Gemm *g, const Wino *z, LLVMValueRef dw, LLVMValueRef m) {
  LLVMTypeRef vt = LLVMVectorType(g->elem, (unsigned)g->w);
  int64_t CF = z->Ci * z->Co;
  GLoop lf = loop_begin(g, c64(g, 0), c64(g, CF), g->w, "ww"); /* c * Co + f, w at a time */
  LLVMValueRef e[16], o[9];
  for (int k = 0; k < 16; k++)
    e[k] = load(g, vt, at(g, m, add(g, lf.i, c64(g, k * u_plane(g, z)))), (unsigned)g->es);
  wino_2d(g, wino_at3, 4, 3, e, o);
  for (int t = 0; t < 9; t++)
    store(g, o[t], at(g, dw, add(g, lf.i, c64(g, t * CF))), (unsigned)g->es);
  loop_end(g, &lf);
}

/* Scratch elements of a filter gradient's sum in the transformed domain. */
static int64_t winograd_sum(const Gemm *g, const Wino *z) { return round16(16 * u_plane(g, z)); }

/* A GEMM from a conv: fills a job on this function's stack and calls nn.gemm, on one worker
 * (inside a conv worker: threads NULL, so the scratch stride does not matter) or on the
 * threads, each worker packing at scratch + w * sstride. */
typedef struct ConvThreads {
  LLVMValueRef threads, sstride; /* NULL: the conv is one worker's */
} ConvThreads;

static void conv_gemm(Gemm *g, const GemmArgs *a, LLVMValueRef scratch, ConvThreads t) {
  gemm_call_at(g, g->b, a, scratch, t.threads ? t.sstride : c64(g, 0), t.threads, NULL);
}

/* A filter gradient's GEMM on one worker: C = A·B for a share's first sample (`first`, an
 * i1), C += A·B for the others (beta is a runtime value: the job's field is overwritten after
 * filling). */
static void gemm_sum(Gemm *g, const GemmArgs *a, LLVMValueRef scratch, LLVMValueRef first) {
  gemm_call_at(g, g->b, a, scratch, c64(g, 0), NULL,
               LLVMBuildZExt(g->b, LLVMBuildNot(g->b, first, ""), g->i64, ""));
}

/* Output pixels [r0, r1) of one sample (tile-row boundaries, or r1 = OH*OW) into y, the
 * sample's output, from its image img and the transformed filter u, in the worker's scratch
 * scr (V, then M, then the GEMM's own), the GEMMs on the threads t; then the epilogue on rows
 * erow + [0, r1 - r0). */
static void winograd_sample(Gemm *g, const Wino *z, LLVMValueRef img, LLVMValueRef u,
                            LLVMValueRef y, LLVMValueRef r0, LLVMValueRef r1, LLVMValueRef scr,
                            ConvThreads th, GemmEpilogue epi, LLVMValueRef erow) {
  int64_t TW = tile_cols(z), tiles = tile_rows(z) * TW;
  LLVMValueRef tr0 = LLVMBuildSDiv(g->b, r0, c64(g, 2 * z->OW), "tr0");
  LLVMValueRef tr1 = cdiv(g, r1, c64(g, 2 * z->OW)), nt = muli(g, sub(g, tr1, tr0), TW);
  LLVMValueRef v = scr, m = at(g, scr, c64(g, round16(16 * tiles * z->Ci)));
  winograd_input(g, z, wino_bt, v, img, tr0, tr1, nt);
  GemmArgs a = {.m = nt, .n = c64(g, z->Co), .k = c64(g, z->Ci), .batch = c64(g, 16),
                .a = v, .rsa = c64(g, z->Ci), .csa = c64(g, 1), .sa = muli(g, nt, z->Ci),
                .b = u, .rsb = c64(g, z->Co), .csb = c64(g, 1), .sb = c64(g, u_plane(g, z)),
                .c = m, .ldc = c64(g, z->Co), .sc = muli(g, nt, z->Co)};
  conv_gemm(g, &a, at(g, scr, c64(g, winograd_scratch(z))), th);
  winograd_output(g, z, y, m, tr0, tr1, nt);
  if (epi.fn) gemm_run_epilogue(g, epi, erow, add(g, erow, sub(g, r1, r0)), c64(g, 0), c64(g, z->Co));
}

/* B of a conv2d (the filter, TC x F) or data gradient (its transpose, F x TC): K x N, read
 * through the filter with strides rsb, csb. */
typedef struct ConvB {
  int64_t k, cols, rsb, csb;
} ConvB;

static ConvB conv_b(const Node *n, const ConvGeom *q) {
  int64_t TC = q->T * q->C;
  return n->op == OP_CONV2D ? (ConvB){TC, q->F, q->F, 1} : (ConvB){q->F, TC, 1, q->F};
}

/* Calls hook h on sample s, with dst (NULL: none). */
static void run_hook(Gemm *g, ConvHook h, LLVMValueRef s, LLVMValueRef dst) {
  LLVMBuildCall2(g->b, g->sample_type, h.fn,
                 (LLVMValueRef[]){h.ctx, s, dst ? dst : LLVMConstNull(g->ptr)}, 3, "");
}

/* One sample s of node n on the worker whose scratch (past the first region, conv_region0) is
 * `scr` (or on the threads t, from worker 0's scratch); conv2d: only its output pixels [r0,
 * r1); conv2d and the data gradient: `wp` is the filter in the GEMM's B panels (the caller
 * packs it once for all samples); `dst` and `first` are for the filter gradient (its
 * per-worker sum and whether s is the worker's first sample). */
static void conv_sample(Gemm *g, const Node *n, const ConvGeom *q, LLVMValueRef s,
                        LLVMValueRef r0, LLVMValueRef r1, LLVMValueRef p[3], LLVMValueRef scr,
                        LLVMValueRef wp, LLVMValueRef dst, LLVMValueRef first, ConvThreads t,
                        GemmEpilogue epi, ConvHook hook) {
  int64_t TC = q->T * q->C, rows = q->OH * q->OW;
  LLVMValueRef col = scr, gs = at(g, scr, c64(g, round16(rows * TC)));
  LLVMValueRef one = c64(g, 1), zero = c64(g, 0), all = c64(g, rows);
  LLVMValueRef img_elems = c64(g, q->H * q->W * q->C), out_elems = c64(g, rows * q->F);
  GemmArgs a = {.batch = one, .sa = zero, .sb = zero, .sc = zero};
  LLVMValueRef panels = wp ? LLVMBuildIsNotNull(g->b, wp, "") : NULL;
  if (panels) { /* B: the filter's panels, or the filter through its strides */
    ConvB cb = conv_b(n, q);
    a.b = LLVMBuildSelect(g->b, panels, wp, p[2], "");
    a.rsb = LLVMBuildSelect(g->b, panels, zero, c64(g, cb.rsb), "");
    a.csb = LLVMBuildSelect(g->b, panels, zero, c64(g, cb.csb), "");
    a.b_panels = LLVMBuildZExt(g->b, panels, g->i64, "");
  }
  bool tap_major = q->C < TAP_MAJOR_C;
  switch (n->op) {
  case OP_CONV2D: { /* y[s] = im2col(x[s]) · w */
    ColCtx x = {q, col, at(g, p[1], mul(g, s, img_elems))};
    a.m = sub(g, r1, r0), a.n = c64(g, q->F), a.k = c64(g, TC);
    if (winograd_ok(g, q)) { /* wp: the transformed filter */
      Wino z = wino_of(n, q);
      winograd_sample(g, &z, x.img, wp, at(g, p[0], mul(g, s, out_elems)), r0, r1, scr, t, epi,
                      add(g, mul(g, s, c64(g, rows)), r0));
      break;
    }
    if (conv_direct_ok(g, q)) {
      conv_direct(g, q, x.img, p[2], at(g, p[0], add(g, mul(g, s, out_elems), muli(g, r0, q->F))),
                  r0, r1, epi, add(g, mul(g, s, c64(g, rows)), r0));
      break;
    }
    if (tap_major) { /* A is the transposed matrix's transpose */
      im2col_tap_major(g, q, col, x.img, r0, r1);
      a.a = col, a.rsa = one, a.csa = a.m;
    } else {
      for_taps(g, q, r0, r1, im2col_body, true, &x);
      a.a = col, a.rsa = c64(g, TC), a.csa = one;
    }
    a.c = at(g, p[0], add(g, mul(g, s, out_elems), muli(g, r0, q->F))), a.ldc = c64(g, q->F);
    a.epilogue = epi.fn, a.epilogue_ctx = epi.ctx;
    a.epilogue_row = add(g, mul(g, s, c64(g, rows)), r0);
    conv_gemm(g, &a, gs, t);
    break;
  }
  case OP_CONV2D_BWD_DATA: { /* dx[s] = col2im(g[s] · wᵀ) */
    if (winograd_ok(g, q)) { /* a conv2d of g[s] (wp: the turned filter, transformed) */
      Wino z = wino_of(n, q);
      winograd_sample(g, &z, at(g, p[1], mul(g, s, out_elems)), wp,
                      at(g, p[0], mul(g, s, img_elems)), zero, c64(g, q->H * q->W), scr, t,
                      (GemmEpilogue){0}, NULL);
      break;
    }
    a.m = c64(g, rows), a.n = c64(g, TC), a.k = c64(g, q->F);
    a.a = at(g, p[1], mul(g, s, out_elems)), a.rsa = c64(g, q->F), a.csa = one;
    a.c = col, a.ldc = c64(g, TC);
    conv_gemm(g, &a, gs, t);
    LLVMValueRef img = at(g, p[0], mul(g, s, img_elems));
    LLVMBuildMemSet(g->b, img, LLVMConstInt(LLVMInt8TypeInContext(g->ctx), 0, 0),
                    c64(g, q->H * q->W * q->C * g->es), (unsigned)g->es);
    ColCtx x = {q, col, img};
    for_taps(g, q, zero, all, col2im_body, false, &x);
    break;
  }
  case OP_CONV2D_BWD_FILTER: { /* dw (+)= im2col(x[s])ᵀ · g[s] */
    ColCtx x = {q, col, at(g, p[1], mul(g, s, img_elems))};
    if (winograd_ok(g, q)) { /* m (+)= Σ_e V[e]ᵀ Yh[e] in scr; emit_conv_work turns it */
      Wino z = wino_of(n, q);
      int64_t tiles = tile_rows(&z) * tile_cols(&z);
      LLVMValueRef v = at(g, scr, c64(g, winograd_sum(g, &z)));
      LLVMValueRef yh = at(g, v, c64(g, round16(16 * tiles * z.Ci)));
      LLVMValueRef wgs = at(g, v, c64(g, winograd_scratch(&z)));
      LLVMValueRef dy = at(g, p[2], mul(g, s, out_elems));
      if (hook.fn) { /* the sample's output gradient, made here, past the GEMM's packing */
        dy = at(g, wgs, c64(g, gemm_scratch(g)));
        run_hook(g, hook, s, dy);
      }
      winograd_input(g, &z, wino_bt3, v, x.img, zero, c64(g, tile_rows(&z)), c64(g, tiles));
      winograd_dy(g, &z, yh, dy);
      GemmArgs wa = {.m = c64(g, z.Ci), .n = c64(g, z.Co), .k = c64(g, tiles), .batch = c64(g, 16),
                     .a = v, .rsa = one, .csa = c64(g, z.Ci), .sa = c64(g, tiles * z.Ci),
                     .b = yh, .rsb = c64(g, z.Co), .csb = one, .sb = c64(g, tiles * z.Co),
                     .c = scr, .ldc = c64(g, z.Co), .sc = c64(g, u_plane(g, &z))};
      gemm_sum(g, &wa, wgs, first);
      break;
    }
    a.m = c64(g, TC), a.n = c64(g, q->F), a.k = c64(g, rows);
    if (tap_major) { /* A is row-major: the micro-kernel reads it in place */
      im2col_tap_major(g, q, col, x.img, zero, all);
      a.a = col, a.rsa = all, a.csa = one;
    } else if (q->C % g->mr == 0) { /* A in the micro-kernel's panels already */
      PanelCtx pc = {q, col, x.img, g->mr};
      for_taps(g, q, zero, all, im2col_panels_body, true, &pc);
      a.a = col, a.rsa = zero, a.csa = zero, a.a_panels = true;
    } else {
      for_taps(g, q, zero, all, im2col_body, true, &x);
      a.a = col, a.rsa = one, a.csa = c64(g, TC);
    }
    a.b = at(g, p[2], mul(g, s, out_elems)), a.rsb = c64(g, q->F), a.csb = one;
    if (hook.fn) { /* the sample's output gradient, made here, past the GEMM's packing */
      a.b = at(g, gs, c64(g, gemm_scratch(g)));
      run_hook(g, hook, s, a.b);
    }
    a.c = dst, a.ldc = c64(g, q->F);
    gemm_sum(g, &a, gs, first);
    break;
  }
  default: unreachable();
  }
}

/* Elements of a worker's first scratch region: the filter gradient's partial sum, or (worker
 * 0's) the filter in B panels, packed once per call for every sample's GEMM. */
/* Elements of one share's filter-gradient sum: the filter, rounded to a 64-byte multiple. */
static int64_t share_sum(const ConvGeom *q) { return round16(q->T * q->C * q->F); }

static int64_t conv_region0(const Gemm *g, const Node *n, const ConvGeom *q) {
  ConvB cb = conv_b(n, q);
  int64_t panels = cb.k * ((cb.cols + g->nr - 1) / g->nr) * g->nr;
  if (n->op == OP_CONV2D_BWD_FILTER) /* the sums of the shares the worker takes after share 0 */
    return (FILTER_SHARES - 1) * share_sum(q);
  Wino z = wino_of(n, q);
  if (winograd_ok(g, q))
    panels = 16 * u_plane(g, &z); /* the transformed filter */
  return round16(panels);
}

/* Scratch elements one worker of node n uses: the first region, the im2col matrix, the GEMM's
 * packing. */
static int64_t conv_scratch(const Gemm *g, const Node *n, const ConvGeom *q, bool hook) {
  int64_t col = round16(q->OH * q->OW * q->T * q->C);
  if (n->op == OP_CONV2D && conv_direct_ok(g, q)) col = 0; /* no im2col */
  Wino z = wino_of(n, q);
  if (winograd_ok(g, q)) { /* V and M; the filter gradient's sum first, and Yh for M */
    int64_t wino = winograd_scratch(&z) + (n->op == OP_CONV2D_BWD_FILTER ? winograd_sum(g, &z) : 0);
    if (wino > col) col = wino;
  }
  return conv_region0(g, n, q) + col + gemm_scratch(g) +
         (hook ? round16(q->OH * q->OW * q->F) : 0);
}

/* Share k of the filter gradient's samples: [ceil(k*B/S), ceil((k+1)*B/S)) of S shares, so
 * share 0 always has one when B >= 1. */
static LLVMValueRef share(Gemm *g, LLVMValueRef k, LLVMValueRef batch, LLVMValueRef shares) {
  return cdiv(g, mul(g, k, batch), shares);
}

/* Where share k >= 1 of a filter gradient keeps its sum: slot k - 1 of the first region of
 * its taker's scratch. */
static LLVMValueRef share_at(Gemm *g, const ConvGeom *q, LLVMValueRef scratch,
                             LLVMValueRef sstride, LLVMValueRef taker, LLVMValueRef k) {
  return at(g, byte_at(g, scratch, mul(g, taker, sstride)),
            muli(g, sub(g, k, c64(g, 1)), share_sum(q)));
}

/* nn.conv.N(job, w) */
static LLVMValueRef emit_conv_work(Gemm *g, const Node *n, const ConvGeom *q, LLVMValueRef hook) {
  char name[48];
  snprintf(name, sizeof name, "nn.conv.%d", n->id);
  LLVMTypeRef params[2] = {g->ptr, g->i64};
  LLVMValueRef fn = function(g, name, params, 2);
  LLVMTypeRef J = g->conv_type;
  LLVMValueRef job = LLVMGetParam(fn, 0), w = LLVMGetParam(fn, 1);
  LLVMValueRef p[3] = {get(g, J, job, CJ_OUT), get(g, J, job, CJ_SRC0), get(g, J, job, CJ_SRC1)};
  LLVMValueRef batch = get(g, J, job, CJ_BATCH);
  ConvHook h = {hook, hook ? get(g, J, job, CJ_HOOK_CTX) : NULL};
  LLVMValueRef scr = byte_at(g, get(g, J, job, CJ_SCRATCH), mul(g, w, get(g, J, job, CJ_SSTRIDE)));
  if (n->op == OP_CONV2D_BWD_FILTER) {
    /* fixed shares of the batch (FILTER_SHARES), each summed into its own buffer (share 0
     * straight into the result, share k in the taker's scratch, which it records), taken by
     * whichever worker comes first; the im2col and packing space is the taker's own */
    LLVMValueRef shares = get(g, J, job, CJ_WORKERS);
    LLVMValueRef rest = at(g, scr, c64(g, conv_region0(g, n, q)));
    TaskLoop share_k = gemm_tasks_begin(g, field_ptr(g, J, job, CJ_NEXT), shares, w);
    LLVMValueRef k = share_k.i;
    LLVMValueRef lo = share(g, k, batch, shares);
    LLVMValueRef hi = share(g, add(g, k, c64(g, 1)), batch, shares);
    LLVMValueRef first = LLVMBuildICmp(g->b, LLVMIntEQ, k, c64(g, 0), "");
    LLVMValueRef dst = LLVMBuildSelect(
        g->b, first, p[0],
        share_at(g, q, get(g, J, job, CJ_SCRATCH), get(g, J, job, CJ_SSTRIDE), w, k), "");
    GIf later = if_begin(g, LLVMBuildNot(g->b, first, ""), "taker");
    store(g, w, LLVMBuildInBoundsGEP2(g->b, g->i64, field_ptr(g, J, job, CJ_TAKER), &k, 1, ""), 0);
    if_end(g, &later);
    GLoop ls = loop_begin(g, lo, hi, 1, "s");
    conv_sample(g, n, q, ls.i, NULL, NULL, p, rest, NULL, dst,
                LLVMBuildICmp(g->b, LLVMIntEQ, ls.i, lo, ""), (ConvThreads){0}, (GemmEpilogue){0},
                h);
    loop_end(g, &ls);
    if (winograd_ok(g, q)) { /* the share's sum, transformed back */
      Wino z = wino_of(n, q);
      GIf some = if_begin(g, LLVMBuildICmp(g->b, LLVMIntSLT, lo, hi, ""), "wino.dw");
      winograd_dw(g, &z, dst, rest);
      if_end(g, &some);
    }
    gemm_tasks_end(g, &share_k);
  } else { /* samples handed out one at a time; conv2d's in `chunks` ranges of output pixels,
            * on mr-row panel boundaries, each im2col'ed by the worker that multiplies it */
    LLVMValueRef chunks = get(g, J, job, CJ_CHUNKS);
    LLVMTypeRef i1 = LLVMInt1TypeInContext(g->ctx);
    LLVMValueRef own_u = entry_alloca(g, g->b, i1, "own.u"); /* the worker transformed w */
    store(g, LLVMConstInt(i1, 0, 0), own_u, 0);
    TaskLoop task = gemm_tasks_begin(g, field_ptr(g, J, job, CJ_NEXT), mul(g, batch, chunks), w);
    LLVMValueRef s = LLVMBuildSDiv(g->b, task.i, chunks, "s");
    LLVMValueRef ci = sub(g, task.i, mul(g, s, chunks));
    LLVMValueRef rows = c64(g, q->OH * q->OW), panels = cdiv(g, rows, c64(g, g->mr));
    int64_t size = g->mr; /* a range: whole panels of the GEMM's rows, or Winograd's tile rows */
    Wino z = wino_of(n, q);
    if (winograd_ok(g, q)) { /* the first ranges a tile row longer (worker 0 takes them, and
                               * it starts first): 3 + 2 of 5, not 2 + 3 */
      panels = c64(g, tile_rows(&z)), size = 2 * q->OW;
      ci = sub(g, chunks, add(g, ci, c64(g, 1))); /* counted from the end */
    }
    LLVMValueRef r0 = min64(g, rows, gemm_block_start(g, ci, panels, chunks, size));
    LLVMValueRef r1 = min64(g, rows, gemm_block_start(g, add(g, ci, c64(g, 1)), panels, chunks, size));
    GemmEpilogue epi = {get(g, J, job, CJ_EPI), get(g, J, job, CJ_EPI_CTX)};
    LLVMValueRef wp = get(g, J, job, CJ_WPANELS);
    if (winograd_ok(g, q)) { /* no filter from the caller: the worker's own, once */
      LLVMValueRef none = LLVMBuildIsNull(g->b, wp, "");
      LLVMValueRef done = load(g, i1, own_u, 0);
      GIf f = if_begin(g, LLVMBuildAnd(g->b, none, LLVMBuildNot(g->b, done, ""), ""), "wino.own");
      winograd_filter(g, &z, scr, p[2]);
      store(g, LLVMConstInt(i1, 1, 0), own_u, 0);
      if_end(g, &f);
      wp = LLVMBuildSelect(g->b, none, scr, wp, "");
    }
    conv_sample(g, n, q, s, r0, r1, p, at(g, scr, c64(g, conv_region0(g, n, q))), wp, NULL,
                NULL, (ConvThreads){0}, epi, h);
    if (hook) { /* conv2d: the sample is done, unless cut into pixel ranges */
      GIf whole = if_begin(g, LLVMBuildICmp(g->b, LLVMIntEQ, chunks, c64(g, 1), ""), "hook");
      run_hook(g, h, s, NULL);
      if_end(g, &whole);
    }
    gemm_tasks_end(g, &task);
  }
  LLVMBuildRetVoid(g->b);
  return fn;
}

void lower_conv_call(Gemm *g, LLVMBuilderRef b, const Node *n, LLVMValueRef out, LLVMValueRef src0,
                     LLVMValueRef src1, LLVMValueRef batch, LLVMValueRef threads,
                     LLVMValueRef scratch, GemmEpilogue epi, ConvHook hook) {
  gemm_ensure(g);
  if (!epi.fn) epi = (GemmEpilogue){LLVMConstNull(g->ptr), LLVMConstNull(g->ptr)};
  if (hook.fn && n->op == OP_CONV2D_BWD_DATA) unreachable();
  ConvGeom q = geometry(n);
  gemm_need_scratch(g, conv_scratch(g, n, &q, hook.fn && n->op == OP_CONV2D_BWD_FILTER));
  LLVMValueRef work = emit_conv_work(g, n, &q, hook.fn);
  /* from here on, build in the caller's function */
  LLVMBuilderRef own = g->b;
  g->b = b;
  LLVMTypeRef J = g->conv_type;
  LLVMValueRef job = entry_alloca(g, b, J, "conv.job");
  LLVMValueRef workers = gemm_workers(g, threads);
  LLVMValueRef parallel = LLVMBuildICmp(b, LLVMIntSGT, min64(g, workers, batch), c64(g, 1), "");
  LLVMValueRef sstride = LLVMBuildLoad2(b, g->i64, g->scratch_bytes, "");
  GIf by_sample = {0};
  LLVMValueRef few = LLVMBuildAnd(b, LLVMBuildICmp(b, LLVMIntSGT, workers, c64(g, 1), ""),
                                  LLVMBuildICmp(b, LLVMIntSLT, batch, workers, ""), "");
  LLVMValueRef wpanels = LLVMConstNull(g->ptr);
  bool direct = n->op == OP_CONV2D && conv_direct_ok(g, &q); /* reads the filter as it is */
  bool wino = winograd_ok(g, &q) && n->op != OP_CONV2D_BWD_FILTER;
  Wino z = wino_of(n, &q);
  if (wino) {
    /* the filter transformed once for all the samples, unless a conv2d has fewer samples than
     * workers (one sample's inference): each worker then transforms its own (emit_conv_work),
     * which stays in its cache, rather than read the caller's, which the caller's next call
     * would take back line by line (50 us a call instead of 18) */
    LLVMValueRef own = n->op == OP_CONV2D ? few : LLVMConstInt(LLVMInt1TypeInContext(g->ctx), 0, 0);
    GIf once = if_begin(g, LLVMBuildNot(b, own, ""), "wino.u");
    winograd_filter(g, &z, scratch, src1);
    if_end(g, &once);
    wpanels = LLVMBuildSelect(b, own, LLVMConstNull(g->ptr), scratch, "wpanels");
  } else if (n->op != OP_CONV2D_BWD_FILTER && !direct) {
    /* the filter in B panels, packed once for all the samples, unless there are fewer samples
     * than workers (one sample's inference): each worker then packs its own from the filter,
     * which stays in its cache from call to call, rather than read the caller's */
    ConvB cb = conv_b(n, &q);
    GIf once = if_begin(g, LLVMBuildNot(b, few, ""), "pack.w");
    gemm_pack_b(g, scratch, src1, c64(g, cb.rsb), c64(g, cb.csb), c64(g, cb.cols), c64(g, 0),
           c64(g, cb.k), c64(g, 0), c64(g, cb.cols));
    if_end(g, &once);
    wpanels = LLVMBuildSelect(b, few, LLVMConstNull(g->ptr), scratch, "wpanels");
  }
  LLVMValueRef chunks = c64(g, 1);
  if (n->op == OP_CONV2D && q.OH * q.OW * q.T * q.C * q.F >= SERIAL_FMAS) {
    /* fewer samples than workers (one sample's inference): each sample in ranges of output
     * pixels, enough for every worker (a small one stays with the caller: sharing it would
     * move its result between the cores' caches, which costs more than the multiply) */
    chunks = LLVMBuildSelect(b, few, cdiv(g, workers, max64(g, batch, c64(g, 1))), chunks, "");
    if (wino) chunks = min64(g, chunks, c64(g, tile_rows(&z)));
    parallel = LLVMBuildICmp(b, LLVMIntSGT, min64(g, workers, mul(g, batch, chunks)),
                             c64(g, 1), "");
  }
  if (n->op == OP_CONV2D_BWD_DATA) {
    /* fewer samples than workers: the caller takes the samples one by one and splits each
     * one's GEMM across the workers instead (the col2im adds overlap between pixels) */
    LLVMValueRef few = LLVMBuildAnd(b, LLVMBuildICmp(b, LLVMIntSGT, workers, c64(g, 1), ""),
                                    LLVMBuildICmp(b, LLVMIntSLT, batch, workers, ""), "");
    by_sample = if_begin(g, few, "few");
    LLVMValueRef p[3] = {out, src0, src1};
    GLoop ls = loop_begin(g, c64(g, 0), batch, 1, "s");
    conv_sample(g, n, &q, ls.i, NULL, NULL, p, at(g, scratch, c64(g, conv_region0(g, n, &q))),
                wpanels, NULL, NULL,
                (ConvThreads){threads, sstride}, epi, (ConvHook){0});
    loop_end(g, &ls);
    if_else(g, &by_sample);
  }
  LLVMValueRef shares = min64(g, max64(g, batch, c64(g, 1)), c64(g, FILTER_SHARES));
  if (n->op == OP_CONV2D_BWD_FILTER) /* its tasks: the shares of the batch, whoever takes them */
    parallel = LLVMBuildICmp(b, LLVMIntSGT, min64(g, workers, shares), c64(g, 1), "");
  workers = LLVMBuildSelect(b, parallel, workers, c64(g, 1), "");
  LLVMValueRef v[CJ_TAKER] = {out, src0, src1, batch, scratch, sstride, c64(g, 0),
                              n->op == OP_CONV2D_BWD_FILTER ? shares : workers,
                              epi.fn, epi.ctx, chunks, wpanels,
                              hook.fn ? hook.ctx : LLVMConstNull(g->ptr)};
  for (int f = 0; f < CJ_TAKER; f++) set(g, b, J, job, f, v[f]);
  gemm_dispatch(g, work, job, threads, parallel);
  if (n->op == OP_CONV2D && hook.fn) { /* samples cut into pixel ranges: hooked here */
    GIf cut = if_begin(g, LLVMBuildICmp(b, LLVMIntSGT, chunks, c64(g, 1), ""), "hook.after");
    GLoop ls = loop_begin(g, c64(g, 0), batch, 1, "s");
    run_hook(g, hook, ls.i, NULL);
    loop_end(g, &ls);
    if_end(g, &cut);
  }
  if (n->op == OP_CONV2D_BWD_DATA) if_end(g, &by_sample);
  if (n->op == OP_CONV2D_BWD_FILTER) { /* out += the other shares' sums, in share order */
    int64_t elems = q.T * q.C * q.F;
    GLoop lw = loop_begin(g, c64(g, 1), shares, 1, "k");
    LLVMValueRef lo = share(g, lw.i, batch, shares);
    LLVMValueRef hi = share(g, add(g, lw.i, c64(g, 1)), batch, shares);
    GIf f = if_begin(g, LLVMBuildICmp(b, LLVMIntSLT, lo, hi, ""), "some");
    LLVMValueRef taker = load(g, g->i64, LLVMBuildInBoundsGEP2(b, g->i64,
                                                               field_ptr(g, J, job, CJ_TAKER),
                                                               &lw.i, 1, ""), 0);
    LLVMValueRef part = share_at(g, &q, scratch, v[CJ_SSTRIDE], taker, lw.i);
    GLoop le = loop_begin(g, c64(g, 0), c64(g, elems), 1, "e");
    LLVMValueRef d = at(g, out, le.i);
    store(g, LLVMBuildFAdd(b, load(g, g->elem, d, 0), load(g, g->elem, at(g, part, le.i), 0), ""),
          d, 0);
    loop_end(g, &le);
    if_end(g, &f);
    loop_end(g, &lw);
  }
  g->b = own;
}
