/* ast.c — AST nodes: construction for the parser (grammar/nn.y) and the --emit=ast dump.
 *
 * The dump is one node per line, indented two spaces per level: the kind in lower case,
 * the node's interesting fields, then `@line:col`. Children follow in a fixed order
 * (formals, a, b, kids, body), so the text is stable enough for lit tests to check:
 *
 *   model xor_net @8:1
 *     formal x @8:15
 *       type f32[2] @8:18
 *     type f32[1] @8:29
 *     assign h @9:5
 *       call tanh @9:9
 *         call dense @9:14
 *           name x @9:20
 *           num 8 @9:23
 */
#include "nnc.h"

#include <string.h>

Ast *ast_new(AstKind kind, Loc loc) {
  Ast *n = xalloc(sizeof *n);
  n->kind = kind;
  n->loc = loc;
  return n;
}

void ast_push(AstList *list, Ast *item) {
  if (list->len == list->cap) {
    /* Arena memory: grow by copying, the old array is simply left behind. */
    int cap = list->cap ? list->cap * 2 : 4;
    Ast **items = xalloc((size_t)cap * sizeof *items);
    if (list->len)
      memcpy(items, list->items, (size_t)list->len * sizeof *items);
    list->items = items;
    list->cap = cap;
  }
  list->items[list->len++] = item;
}

/* ORDER AstKind */
static const char *const kind_names[] = {
  "num", "str", "name", "call", "kwarg", "binop", "neg", "list",
  "assign", "augassign", "param", "state", "return", "repeat", "require", "step",
  "type", "formal",
  "use", "data", "table", "row", "model", "layer", "fn", "optimizer", "train", "program",
};
_Static_assert(sizeof kind_names / sizeof kind_names[0] == AST_PROGRAM + 1,
               "kind_names out of step with AstKind");

const char *ast_kind_name(AstKind kind) {
  if ((unsigned)kind > AST_PROGRAM)
    return "?";
  return kind_names[kind];
}

/* The operator as written: 'G' and 'L' stand for >= and <=. */
static const char *op_text(int op) {
  switch (op) {
  case 'G': return ">=";
  case 'L': return "<=";
  case '+': return "+";
  case '-': return "-";
  case '*': return "*";
  case '/': return "/";
  case '@': return "@";
  case '^': return "^";
  case '>': return ">";
  case '<': return "<";
  default: return "?";
  }
}

/* A string literal, quoted and escaped so the dump stays one line per node. */
static void dump_string(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; p && *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(out, "\\%c", *p);
    else if (*p == '\n')
      fputs("\\n", out);
    else if (*p == '\t')
      fputs("\\t", out);
    else if (*p < 0x20 || *p == 0x7f)
      fprintf(out, "\\x%02x", *p);
    else
      fputc(*p, out);
  }
  fputc('"', out);
}

/* A dimension simple enough to print inline in its type: a number or a name. */
static bool simple_dim(const Ast *d) { return d && (d->kind == AST_NUM || d->kind == AST_NAME); }

static bool simple_dims(const Ast *type) {
  for (int i = 0; i < type->kids.len; i++)
    if (!simple_dim(type->kids.items[i]))
      return false;
  return true;
}

/* `f32[n,units]`, `int`, `[2]`; complex dims print as `..` and follow as children. */
static void dump_type(FILE *out, const Ast *n) {
  if (n->name)
    fputs(n->name, out);
  if (!n->has_dims)
    return;
  if (!simple_dims(n)) {
    fputs("[..]", out);
    return;
  }
  fputc('[', out);
  if (n->any_lead)
    fputs(n->kids.len ? "...," : "...", out);
  for (int i = 0; i < n->kids.len; i++) {
    const Ast *d = n->kids.items[i];
    if (i)
      fputc(',', out);
    if (d->kind == AST_NUM)
      fprintf(out, "%g", d->num);
    else
      fputs(d->name ? d->name : "?", out);
  }
  fputc(']', out);
}

static const char *str_or(const char *s) { return s ? s : "?"; }

static void dump_node(FILE *out, const Ast *n, int depth);

static void dump_list(FILE *out, const AstList *list, int depth) {
  for (int i = 0; i < list->len; i++)
    dump_node(out, list->items[i], depth);
}

static void dump_node(FILE *out, const Ast *n, int depth) {
  fprintf(out, "%*s", depth * 2, "");
  if (!n) {
    fputs("<null>\n", out);
    return;
  }
  fputs(ast_kind_name(n->kind), out);
  switch (n->kind) {
  case AST_NUM:
    fprintf(out, " %g", n->num);
    break;
  case AST_STR:
    fputc(' ', out);
    dump_string(out, n->name);
    break;
  case AST_BINOP:
    fprintf(out, " %s", op_text(n->op));
    break;
  case AST_AUGASSIGN:
    fprintf(out, " %s= %s", op_text(n->op), str_or(n->name));
    break;
  case AST_TYPE:
    fputc(' ', out);
    dump_type(out, n);
    break;
  case AST_TRAIN:
    fprintf(out, " %s on %s", str_or(n->name), str_or(n->name2));
    break;
  case AST_NEG: case AST_LIST: case AST_RETURN: case AST_REPEAT: case AST_TABLE: case AST_ROW:
  case AST_PROGRAM:
    break;
  case AST_NAME: case AST_CALL: case AST_KWARG: case AST_ASSIGN: case AST_PARAM:
  case AST_STATE: case AST_FORMAL: case AST_USE: case AST_DATA: case AST_MODEL:
  case AST_LAYER: case AST_FN: case AST_OPTIMIZER: case AST_REQUIRE: case AST_STEP:
    fprintf(out, " %s", str_or(n->name));
    break;
  }
  if (n->loc.line > 0)
    fprintf(out, " @%d:%d", n->loc.line, n->loc.col);
  fputc('\n', out);

  dump_list(out, &n->formals, depth + 1);
  if (n->a)
    dump_node(out, n->a, depth + 1);
  if (n->b)
    dump_node(out, n->b, depth + 1);
  if (n->kind != AST_TYPE || !simple_dims(n))
    dump_list(out, &n->kids, depth + 1);
  dump_list(out, &n->body, depth + 1);
}

void ast_dump(FILE *out, const Ast *program) { dump_node(out, program, 0); }
