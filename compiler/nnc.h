/* nnc.h — the one header of the compiler, a section per stage, in pipeline order:
 * diag.c (sources, errors, memory) → grammar/nn.l, nn.y + ast.c (AST) → sema.c (AST → IR)
 * → ir.c + ops.c (IR, op table) → trim.c (bounds) → autodiff.c (IR → IR) → fuse.c (loop groups)
 * → plan.c (memory) → lower_llvm.c (LLVM; behind lower_gemm.h, lower_gemm.c emits its matmul
 * and lower_conv.c its convolutions)
 * → link.c (executable). main.c runs them in order. */
#ifndef NNC_H
#define NNC_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../runtime/nnrt.h"

/* ============================== diag.c ============================== */

typedef struct SourceFile {
  const char *path;   /* as given on the command line, or "std.nn" for the prelude */
  const char *text;   /* whole contents, NUL-terminated */
  size_t size;        /* bytes of text, excluding the terminator (text may hold NULs) */
} SourceFile;

typedef struct Loc {
  const SourceFile *file; /* NULL for compiler-made nodes with no source */
  int line, col;          /* 1-based */
} Loc;

/* All compiler memory comes from one arena freed at exit: no stage frees anything. */
void *xalloc(size_t size);                 /* zeroed */
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void xfree_all(void);

SourceFile *diag_load(const char *path);   /* NULL (and an error printed) if unreadable */
SourceFile *diag_source(const char *path, const char *text, size_t size);
/* `file:line:col: error: msg`, then the source line and a caret under col. */
void diag_error(Loc loc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void diag_note(Loc loc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A file-level error with no position: `file: error: msg`. */
void diag_file_error(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int diag_error_count(void);
/* The closest of `candidates` to `name` by edit distance, or NULL if none is close. */
const char *diag_did_you_mean(const char *name, const char *const *candidates, int n);
/* Compiler bugs: never user errors. */
_Noreturn void diag_internal(const char *file, int line, const char *fmt, ...);
#define unreachable() diag_internal(__FILE__, __LINE__, "unreachable")

/* ============================== ast.c, grammar/ ============================== */

typedef enum AstKind {
  /* expressions */
  AST_NUM,       /* num */
  AST_STR,       /* name holds the string's contents */
  AST_NAME,      /* name */
  AST_CALL,      /* name(args...); args in kids, keyword args are AST_KWARG */
  AST_KWARG,     /* name = a */
  AST_BINOP,     /* a op b, op is a char: + - * / @ ^ > < or 'G' (>=) 'L' (<=) */
  AST_NEG,       /* -a */
  AST_LIST,      /* [kids...] */
  /* statements */
  AST_ASSIGN,    /* name = a */
  AST_AUGASSIGN, /* name op= a, op is + - * / */
  AST_PARAM,     /* param name: type (a) = init (b, may be NULL); op 's' for a layer's
                    `state name: type = init`, a buffer (not trained) */
  AST_STATE,     /* state name = a (initial value) */
  AST_RETURN,    /* return a */
  AST_REPEAT,    /* repeat a { body }: the body a times */
  AST_REQUIRE,   /* require a, "name": a condition known at compile time, and the error
                    message (name) reported at the caller's call site when it is false */
  AST_STEP,      /* step name { body }: one step of a train block (its own loss, optimizer) */
  /* types and formals */
  AST_TYPE,      /* name = "f32" / "int" / "float" / NULL (any tensor); kids = dims, has_dims */
  AST_FORMAL,    /* name: a (type, may be NULL) = b (default, may be NULL) */
  /* top-level items */
  AST_USE,       /* use name */
  AST_DATA,      /* data name = a (an AST_CALL or AST_TABLE) */
  AST_TABLE,     /* table { kids: AST_ROW } */
  AST_ROW,       /* a (AST_LIST of inputs) -> b (AST_LIST of targets) */
  AST_MODEL,     /* model name(formals) -> a (type, may be NULL) { body } */
  AST_LAYER,     /* layer name(formals) { body } */
  AST_FN,        /* fn name(formals) = a   or   fn name(formals) { body } */
  AST_OPTIMIZER, /* optimizer name(formals) { body } */
  AST_TRAIN,     /* train name on name2 { body } */
  AST_PROGRAM,   /* kids: items */
} AstKind;

typedef struct Ast Ast;
typedef struct AstList {
  Ast **items;  /* len used of cap */
  int len, cap;
} AstList;

struct Ast {
  AstKind kind;    /* what this node is */
  Loc loc;         /* where it starts in the source */
  const char *name;
  const char *name2; /* AST_TRAIN: the data set */
  double num;      /* AST_NUM */
  int op;          /* AST_BINOP, AST_AUGASSIGN */
  bool has_dims;   /* AST_TYPE: a [dims] list was written */
  bool any_lead;   /* AST_TYPE: [..., dims]: any leading axes before the dims written */
  Ast *a, *b;      /* operands, by kind (see AstKind) */
  AstList kids;    /* arguments, list items, dims, rows, items */
  AstList formals; /* definitions: formal parameters (AST_FORMAL) */
  AstList body;    /* definitions and train: statements */
};

Ast *ast_new(AstKind kind, Loc loc);
void ast_push(AstList *list, Ast *item);
void ast_dump(FILE *out, const Ast *program);     /* --emit=ast */
const char *ast_kind_name(AstKind kind);

/* Parses one file; returns an AST_PROGRAM (possibly partial) and reports syntax errors.
 * Implemented in grammar/nn.y. */
Ast *parse_source(const SourceFile *src);

/* ============================== ir.c, ops.c ============================== */

enum { MAX_RANK = NN_MAX_RANK };
/* The implicit batch dimension: only ever dim[0]. A dim[0] of -k means k * batch (a batched
 * value flattened with k rows per sample, e.g. for a weight gradient). */
#define DIM_BATCH ((int64_t)-1)

typedef struct Shape {
  int rank;                /* used entries of dim; 0 is a scalar */
  int64_t dim[MAX_RANK];   /* sizes; dim[0] may be negative: DIM_BATCH or -k (see above) */
} Shape;

typedef enum OpKind {
#define OP(name, arity, cls, text, shape, grad) OP_##name,
#include "ops.def"
#undef OP
  OP_COUNT
} OpKind;

typedef enum OpClass {
  CLASS_LEAF,     /* reads a region of the io array */
  CLASS_SCALAR,   /* a scalar known without memory: constant, hyperparameter, batch size */
  CLASS_ELEM,     /* elementwise with broadcasting */
  CLASS_REDUCE,   /* reduction over axes, keeping them as 1 */
  CLASS_MOVE,     /* data movement */
  CLASS_CONTRACT, /* matmul */
  CLASS_WINDOW,   /* sliding windows over NHWC images: convolution, pooling, their gradients */
} OpClass;

typedef struct Node Node;
typedef struct Builder Builder;

/* The geometry of a sliding-window op (CONV2D*, MAXPOOL*, AVGPOOL*): output position (oh, ow)
 * and tap (kh, kw) read input row oh*sh - pt + kh*dh and column ow*sw - pl + kw*dw; taps
 * outside the input (in the padding) are skipped. All ints, so nodes compare with memcmp. */
typedef struct ConvAttr {
  int kh, kw;             /* window (for convolutions, the filter's first two dims) */
  int sh, sw;             /* stride */
  int dh, dw;             /* dilation (1 for pooling) */
  int pt, pl, pb, pr;     /* padding: top, left, bottom, right */
} ConvAttr;

/* The geometry of a movement or indexing op, by op. All int64_t, so nodes compare with
 * memcmp. Every array has one entry per dim of the result's operand, batch dim included
 * (where a batched dim 0 is always taken whole: lo 0, hi = its dim, step 1). */
typedef struct MoveAttr {
  int64_t lo[MAX_RANK];   /* SLICE: first index taken; PAD: zeros before */
  int64_t hi[MAX_RANK];   /* SLICE: end (exclusive); PAD: zeros after */
  int64_t step[MAX_RANK]; /* SLICE: take every step-th; PAD: step - 1 zeros between elements */
  int64_t perm[MAX_RANK]; /* PERMUTE: result dim d is operand dim perm[d] */
  int64_t axis;           /* CONCAT, GATHER, SCATTER_ADD, IOTA: the axis */
  int64_t lead;           /* GATHER, SCATTER_ADD: leading dims x and idx share (0 or 1) */
} MoveAttr;

typedef struct Attr {
  double value;    /* CONST: the number */
  int index;       /* INPUT: NN_IO_X or NN_IO_Y; PARAM/GRAD/STATE: parameter/state index;
                      HYPER: hyperparameter index; RAND_*: the call site's salt */
  unsigned axes;   /* SUM, RMAX: bit i set = reduce axis i */
  bool any_order;  /* SUM: its terms may be added in any order (a finiteness check's sum of
                      zeros and NaNs), so the lowering may vectorise it across the terms */
  bool ta, tb;     /* MATMUL: transpose the last two dims of a / b */
  ConvAttr conv;   /* CLASS_WINDOW ops: window, stride, dilation, padding */
  MoveAttr move;   /* PERMUTE, SLICE, PAD, CONCAT, GATHER, SCATTER_ADD, IOTA */
} Attr;

struct Node {
  OpKind op;      /* row of ops.def */
  Shape shape;    /* result shape; dim[0] == DIM_BATCH for per-sample values */
  Node *src[3];   /* operands; op_info[op].arity are used */
  Attr attr;      /* by op, see Attr */
  Loc loc;        /* .nn span that produced it; gradient nodes inherit it */
  int id;         /* printed as %id; index in Graph.nodes */
  const char *name; /* leaves: what they read ("x", "dense0.W") */
  /* set by fuse.c */
  int group;      /* index in Graph.groups; -1 for leaves and scalars */
  bool stored;    /* written to memory; false: lives only in registers inside its loop group */
  /* set by plan.c */
  int io;         /* NnIo region holding the value; -1 for CLASS_SCALAR and unstored nodes */
  int64_t offset; /* elements into that region */
};

typedef struct OpInfo {
  const char *text;   /* printed name */
  int arity;          /* operands used */
  OpClass cls;        /* lowering family */
  bool (*shape)(Builder *b, Node *n, Shape *out);        /* NULL for leaves */
  void (*grad)(Builder *b, Node *n, Node *g, Node *d[]); /* d[i] = dL/d src[i], or NULL */
} OpInfo;
extern const OpInfo op_info[OP_COUNT];

/* A value the function stores into a region when it finishes. */
typedef struct Output {
  Node *node;     /* the value */
  int io;         /* NnIo region it goes to */
  int64_t offset; /* elements into that region */
  const char *label; /* "loss", "out", "grad dense0.W", "param dense0.W" */
} Output;

typedef enum GroupKind {
  GROUP_LOOP,   /* one loop nest over `loop`: elementwise ops, broadcasts, at most one reduction */
  GROUP_SINGLE, /* one node with a loop nest of its own (matmul, window, movement, reshape) */
  GROUP_EPILOGUE, /* a matmul or conv2d (members[0]) and the elementwise loop over its result
                   * (the rest, over `loop`), which the GEMM applies to each block of C it
                   * finishes, while the block is in cache */
  GROUP_PROLOGUE, /* a conv2d_bwd_filter (members[0]) and the pooling gradient only it reads
                   * (members[1]), made sample by sample just before that sample's GEMM, in
                   * the worker's scratch (lower_gemm.h's ConvHook) */
} GroupKind;

/* A unit of lowering made by fuse.c: the nodes computed together, in one loop nest for
 * GROUP_LOOP. Every member of a loop group is evaluated at the same index of `loop`; only
 * its stored members reach memory. */
typedef struct Group {
  GroupKind kind;
  Shape loop;      /* GROUP_LOOP: the iteration space (the members' shape, 1-dims dropped; for
                      a reduction, its operand's) */
  Node **members;  /* n_members, in topological order (an epilogue's matmul or conv2d, and a
                      prologue's filter gradient, first) */
  int n_members, cap;
  int ports;       /* loop operands so far: stored members and reads of outside memory */
  Node *pooled;    /* a conv2d's group: the pooling (maxpool, avgpool) of its result that the
                      convolution runs on each sample once the sample's GEMM and epilogue are
                      done, while its result is in cache; in the group, not in members */
} Group;

/* A function: a DAG of nodes in creation (hence topological) order, and its results. */
typedef struct Graph {
  const char *name;   /* "train", "update", ... */
  Node **nodes;       /* n_nodes of cap, topologically ordered */
  int n_nodes, cap;
  Output *outs;       /* n_outs of out_cap */
  int n_outs, out_cap;
  Group *groups;      /* set by fuse.c: n_groups, in the order they are lowered */
  int n_groups;
  int64_t arena_elems; /* set by plan.c: elements of NN_IO_ARENA at max batch */
  int64_t unplanned_elems; /* set by plan.c: what one slot per node, unfused, would need */
  Node **table;       /* open-addressing set of the nodes, for hash-consing (ir.c) */
  int table_cap;      /* slots in table; a power of two, or 0 */
} Graph;

/* The builder makes nodes in a graph, checking shapes; a failed shape rule reports at
 * `loc` and returns NULL (callers propagate NULL as "already reported"). */
struct Builder {
  Graph *g;       /* graph receiving nodes */
  Loc loc;        /* location given to new nodes */
  bool ok;        /* false once a shape rule failed */
};

Graph *ir_graph(const char *name);
void ir_output(Graph *g, Node *node, int io, int64_t offset, const char *label);
Node *ir_leaf(Builder *b, OpKind op, Shape shape, int index, const char *name);
Node *ir_const(Builder *b, double value);
Node *ir_scalar(Builder *b, OpKind op, int index, const char *name); /* HYPER, BATCH */
Node *ir_unary(Builder *b, OpKind op, Node *a);
Node *ir_binary(Builder *b, OpKind op, Node *a, Node *c);
Node *ir_reduce(Builder *b, OpKind op, Node *a, unsigned axes);
Node *ir_sum_any_order(Builder *b, Node *a); /* all of a's elements, to a scalar, any order */
Node *ir_expand(Builder *b, Node *a, Shape to);
Node *ir_reshape(Builder *b, Node *a, Shape to);
Node *ir_matmul(Builder *b, Node *a, Node *c, bool ta, bool tb);
/* A CLASS_WINDOW op on x (and y, for two-operand ops); `given` is the result shape of the
 * gradient ops, whose result the operands do not determine (ignored by the others). */
Node *ir_window(Builder *b, OpKind op, Node *x, Node *y, ConvAttr conv, Shape given);
/* Movement and indexing (attrs as in MoveAttr; arrays have one entry per dim of x). */
Node *ir_permute(Builder *b, Node *x, const int64_t perm[]);
Node *ir_slice(Builder *b, Node *x, const int64_t begin[], const int64_t end[],
               const int64_t step[]);
Node *ir_pad(Builder *b, Node *x, const int64_t before[], const int64_t after[],
             const int64_t step[]);
Node *ir_concat(Builder *b, Node *x, Node *y, int axis);
Node *ir_where(Builder *b, Node *cond, Node *x, Node *y);
/* x[.., n, ..] indexed along `axis` by idx's values (rounded, clamped to [0, n-1]); x and
 * idx share their first `lead` dims. Result: x[:axis] + idx[lead:] + x[axis+1:]. */
Node *ir_gather(Builder *b, Node *x, Node *idx, int axis, int lead);
/* The transpose of GATHER: zeros of shape `to` (x's), g's elements added where gather
 * read them. */
Node *ir_scatter_add(Builder *b, Node *g, Node *idx, int axis, int lead, Shape to);
/* Constant: every element is its index along `axis`. */
Node *ir_iota(Builder *b, Shape shape, int axis);
/* RAND_UNIFORM / RAND_NORMAL of `shape`; `salt` tells call sites apart (and keeps two of
 * them from being merged as equal nodes). */
Node *ir_random(Builder *b, OpKind op, Shape shape, int salt);
/* Sums `g` down to `shape` over the axes that broadcasting expanded (gradient helper). */
Node *ir_unbroadcast(Builder *b, Node *g, Shape shape);
#define ir_add(b, x, y) ir_binary(b, OP_ADD, x, y)
#define ir_sub(b, x, y) ir_binary(b, OP_SUB, x, y)
#define ir_mul(b, x, y) ir_binary(b, OP_MUL, x, y)
#define ir_div(b, x, y) ir_binary(b, OP_DIV, x, y)

Shape shape_of(int rank, ...); /* shape_of(2, 3, 4): dims as int; DIM_BATCH as (int)DIM_BATCH */
bool shape_eq(Shape a, Shape b);
int64_t padded_elems(int64_t elems);          /* rounded up to the 16-element alignment */
int64_t shape_elems(Shape s, int64_t batch); /* a dim of -k counts as k * batch */
char *shape_str(Shape s, bool per_sample);  /* "f32[B,2]" or per-sample "f32[2]" */
bool shape_broadcast(Shape a, Shape b, Shape *out);

void ir_print(FILE *out, const Graph *g);   /* --emit=ir, grad-ir */
void ir_print_node(FILE *out, const Node *n); /* "%3 = add %1, %2 : f32[B,8]", no newline */
void ir_verify(const Graph *g);             /* internal error on a malformed graph */
void ir_prune(Graph *g);                    /* drops nodes no output needs; renumbers */

/* ============================== sema.c ============================== */

typedef struct ParamDecl {
  const char *name;   /* "dense0.W" */
  Shape shape;        /* never batched */
  int64_t offset;     /* elements into NN_IO_PARAM */
  NnInit init;
  double init_a, init_b;
  bool buffer;        /* a layer's `state`: not trained; its GRAD slot holds its next value */
  bool frozen;        /* named in the train block's `freeze`: no gradient, no update */
} ParamDecl;

/* A data set as the .nn file declares it (see NnDataSource). */
typedef struct DataSpec {
  NnDataKind kind;
  const char *name;       /* its name in the .nn file */
  const char *path;       /* CSV, or IDX images; absolute */
  const char *labels;     /* IDX labels; absolute */
  bool header;            /* CSV header line */
  double scale;           /* input scale */
  int64_t stride;         /* TEXT: bytes between windows' starts */
  double *table;          /* TABLE: rows * (x + y) values */
  int64_t rows;
} DataSpec;

/* One step of a train block with steps (a GAN's discriminator or generator step). */
typedef struct Step {
  const char *name;       /* "d" */
  Loc loc;                /* its `step` */
  Graph *train;           /* x, y -> its loss (LOSS slot k), the gradients of the parameters it
                             updates (autodiff adds them), its updated buffers' next values */
  Graph *update;          /* its optimizer on the parameters it updates */
  bool *updates;          /* by parameter index < n_known: named in its `update` */
  int n_known;            /* parameters that existed when it was built */
  int64_t updated;        /* elements of the trained parameters it updates */
  int hyper_end;          /* u->n_hyper after its hyperparameters were appended */
} Step;

/* Everything the later stages need, as one value. */
typedef struct Unit {
  const char *source;     /* .nn path */
  const char *model;      /* name of the model being built */
  Shape x_shape, y_shape, out_shape; /* per sample */
  ParamDecl *params;      /* n_params */
  int n_params;
  int64_t param_size, state_size; /* elements */
  const char **hyper_names; double *hyper_defaults; /* n_hyper */
  int n_hyper;
  DataSpec data;          /* the training set */
  DataSpec val;           /* the validation set (kind NN_DATA_NONE if none) */
  double val_split;       /* or the fraction of the training set held out for validation */
  bool labels;            /* y is a class index per sample (y_shape is rank 0) */
  int64_t batch, epochs, seed;
  int64_t patience;       /* early_stop: epochs without improvement before stopping; 0 = off */
  NnMonitor monitor;      /* what early stopping watches */
  NnTask task;
  double threshold;
  NnCompare compare;      /* what the regression metrics measure the outputs against */
  bool has_train;         /* the file had a train block */
  double plateau[4];      /* schedule = plateau(...): factor (0: none), patience, threshold,
                             min_lr (NnModelDesc.plateau_*) */
  Graph *train;           /* x, y -> out, loss in training mode (autodiff adds gradients),
                             and each buffer's next value */
  Graph *infer;           /* x, y -> out, loss in inference mode (`training` is 0), for the
                             forward and eval kernels; NULL when no code reads `training` */
  Graph *update;          /* params, grads, hypers -> params (optimizer step); NULL if none */
  Step *steps;            /* a train block with steps: n_steps of them, run in order on every
                             batch; train and update are then NULL and infer is the graph of
                             eval, predict and sample */
  int n_steps;
} Unit;

/* Resolves names, checks types and shapes, inlines layers and functions, builds the graphs.
 * Returns NULL after reporting errors. `prelude` is std.nn (may be NULL if not used). */
Unit *sema(Ast *program, Ast *prelude);

/* ============================== trim.c ============================== */

/* Bounds inference on a forward graph (before autodiff): every image-valued convolution,
 * pooling or elementwise op computes only the rows and columns its readers read (a
 * convolution or pooling through a smaller bottom or right padding, negative if need be). */
void trim_graph(Graph *g);

/* ============================== autodiff.c ============================== */

/* Reverse mode: appends to u->train the gradient of the loss output with respect to every
 * parameter, as outputs to NN_IO_GRAD. Returns false (after an error) if an op on the path
 * has no gradient rule. */
bool ad_gradients(Unit *u);
/* In-graph gradient (sema's `gradient(y, x)`): d y / d wrt as nodes of b's graph, each
 * sample's y differentiated on its own; NULL after an error. */
Node *ad_grad(Builder *b, Node *y, Node *wrt);

/* ============================== fuse.c ============================== */

enum { FUSE_MAX_PORTS = 24 }; /* loop operands of one group (bounds lower_llvm.c's nests) */

/* Loop fusion: partitions the non-leaf nodes of g into groups (Graph.groups, in an order
 * that respects every dependency) and marks which values must be stored. Elementwise chains
 * and broadcasts share one loop, a reduction's loop also computes its operand's chain, and
 * an optimizer's per-parameter update becomes one loop writing the parameter and its state. */
void fuse_graph(Graph *g, bool enabled); /* !enabled: one group per node (--no-fuse) */
/* Two shapes that differ only in 1-dims: the same elements in the same order. */
bool fuse_same_loop(Shape a, Shape b);
Shape fuse_squeeze(Shape s);
/* --emit=fused-ir: the groups, and where plan.c put every stored value. */
void fuse_print(FILE *out, const Graph *g);

/* ============================== plan.c ============================== */

/* The four kernels of runtime/nnrt.h: the graph each runs (the train graph, or the update
 * graph) and the outputs it stores (a bit per NnIo region). plan.c places values so that a
 * kernel never writes a region it does not own; lower_llvm.c emits them. */
typedef struct KernelSpec {
  const char *name;  /* "nn_forward" */
  bool update;       /* runs Unit.update, not Unit.train */
  unsigned outs;     /* bit r set: stores the outputs to region r */
} KernelSpec;
enum { N_KERNELS = 4 };
extern const KernelSpec kernel_specs[N_KERNELS];

/* Marks the nodes of g the outputs in `outs` need (need has n_nodes entries). */
void plan_needed(const Graph *g, unsigned outs, bool *need);

/* Gives every stored node a region and offset: an output's value straight in its output
 * region where that is safe (in place, for the optimizer's parameters and state), the rest
 * in the arena, where values whose lifetimes (in group order) do not overlap share space. */
void plan_memory(Graph *g, int64_t max_batch, bool update);

/* ============================== embed.c ============================== */

/* What --emit=header adds to the kernels: runtime/embed.h's NnEmbedDesc, and model.h. */
typedef struct Embed {
  const char *name;       /* C prefix of every symbol: "fashion_cnn" */
  const char *upper;      /* the same in capitals, for macros */
  int64_t elem_size;      /* 4 or 8 */
  int64_t ctx_bytes;      /* sizes in bytes, multiples of 64 except ctx */
  int64_t params_bytes, state_bytes, infer_arena_bytes, train_arena_bytes;
  uint64_t hash;          /* of everything header and object must agree on */
  double *weights;        /* --weights: param_size values, or NULL */
  int64_t worker_scratch_bytes; /* set by lower_llvm: GEMM scratch per worker of a thread hook */
  bool int8;              /* --quantize=int8: forward has int8 sites; no weights I/O, no train */
} Embed;

typedef struct Options Options;
typedef struct Quant Quant;
/* Sizes, name and hash for a planned unit; reads --weights. NULL after an error. */
Embed *embed_prepare(const Unit *u, const Options *o, const char *header_path);
bool embed_write_header(const Unit *u, const Embed *e, const char *path);

/* ============================== quant.c ============================== */

/* How the forward and eval kernels get their weights when Options.quant is set: always from
 * constants baked into the object (Quant.weights), never from NN_IO_PARAM. */
typedef enum QuantMode {
  QUANT_F32,       /* f32 constants (the pruned model's accuracy report) */
  QUANT_CALIBRATE, /* f32, and each site records the largest |input| in nn_calibration */
  QUANT_INT8,      /* int8 sites: int8 weights and inputs, int32 sums, f32 results */
} QuantMode;

/* A matmul x[.., K] @ W[K, N] or a convolution with filter W[kh, kw, C, N] whose W is a
 * parameter: int8 weights (one scale per output channel n) and int8 inputs (one scale). */
typedef struct QuantSite {
  const Node *node;    /* MATMUL or CONV2D of the forward graph */
  int param;           /* index of W in Unit.params */
  int64_t k, n;        /* reduction length (K, or kh*kw*C) and output channels */
  bool transposed;     /* W is [N, K] (x @ transpose(W): dense) rather than [K, N] */
  int64_t kp, np;      /* k rounded up to a multiple of 4, n to one of 16 (zero padding) */
  double absmax;       /* calibrated: the largest |input| seen */
  /* QUANT_INT8, from quant_finish */
  int8_t *qw;          /* (kp/4, np, 4): qw[k/4, j, k%4] = round(W[k, j] / w_scale[j]): four
                          consecutive k of 16 channels fill one 64-byte vector (vpdpbusd) */
  int32_t *colsum;     /* (np): sum over k of qw[., j, .], for the +128 offset of the inputs */
  float *out_scale;    /* (np): x_scale * w_scale[j] */
  float inv_x_scale;   /* 1 / x_scale, x_scale = absmax / 127 */
} QuantSite;

struct Quant {
  QuantMode mode;
  const double *weights; /* param_size values (--weights, after --prune) */
  QuantSite *sites;      /* n_sites, in graph order */
  int n_sites;
};

/* The graph nn_forward and nn_eval run. */
const Graph *quant_forward_graph(const Unit *u);
/* The int8 sites of that graph, with weights w (param_size values). */
Quant *quant_new(const Unit *u, const double *w, QuantMode mode);
/* The site computing node n, or NULL. */
const QuantSite *quant_site(const Quant *q, const Node *n);
/* Per-channel int8 weights and scales from the weights and each site's absmax. */
void quant_finish(const Unit *u, Quant *q);
/* --calibrate: runs the f32 model over `data` (a calibration build of the training binary's
 * predict) and sets every site's absmax. False after an error. */
bool quant_calibrate(const Unit *u, const Options *o, Quant *q, const char *data);
/* --prune/--quantize with a train block: evaluates the f32 model (--weights) and the variant
 * on held-out data with helper builds of the training binary and prints both and the change.
 * False after an error. */
bool quant_report(const Unit *u, const Options *o, const Quant *variant, const char *what);

/* ============================== lower_llvm.c ============================== */

typedef enum Emit {
  EMIT_EXE, EMIT_AST, EMIT_IR, EMIT_GRAD_IR, EMIT_FUSED_IR, EMIT_LLVM, EMIT_ASM, EMIT_OBJ,
  EMIT_HEADER,
} Emit;

struct Options {
  const char *input;    /* .nn path */
  const char *output;   /* -o */
  Emit emit;            /* --emit */
  int opt_level;        /* -O0..-O3, default 2 */
  bool f64;             /* --dtype=f64: every tensor in double (gradient checks) */
  const char *target_cpu; /* --target-cpu; NULL = host */
  bool keep_obj;        /* --keep-obj: leave the .o next to the executable */
  bool no_fuse;         /* --no-fuse: one loop nest per node (for measuring fusion) */
  bool no_trim;         /* --no-trim: every row of every image computed (trim.c) */
  bool no_winograd;     /* --no-winograd: 3x3 convolutions by im2col + GEMM (lower_conv.c) */
  const char *name;     /* --name: C prefix of --emit=header's symbols; NULL = from -o */
  const char *weights;  /* --weights: safetensors file baked into --emit=header's object */
  int64_t max_batch;    /* --max-batch: overrides the train block's batch; 0 = keep it */
  double prune;         /* --prune: fraction of each weight matrix's --weights set to 0 */
  Embed *embed;         /* set for --emit=header: lower_llvm also emits nn_embed (and adds
                         * the GEMM scratch to its arena sizes) */
  bool int8;            /* --quantize=int8 */
  const char *calibrate; /* --calibrate: data set name or file for the int8 input scales */
  const char *eval_data, *eval_labels; /* --eval-data, --eval-labels: held-out data */
  const Quant *quant;   /* forward and eval read baked (maybe int8) weights; NULL: params */
};

/* Builds the module, runs the pass pipeline, writes `path` as llvm/asm/obj per emit.
 * Returns false after printing an error. */
bool lower_llvm(const Unit *u, const Options *opts, Emit emit, const char *path);

/* ============================== link.c ============================== */

/* cc obj libnnrt.a -lm -o exe. Returns false after printing an error. */
bool link_executable(const char *obj, const char *exe);
/* ld -r kernels + libnnembed.a -o out, then objcopy: the support code's nne_X become NAME_X
 * and every other symbol local. Returns false after printing an error. */
bool link_embed_object(const char *kernels, const char *out, const char *name);
/* Runs argv (NULL-terminated) with its standard output into the file `out`; false after an
 * error naming the program (a non-zero exit included). */
bool link_run_to_file(char **argv, const char *out);

#endif
