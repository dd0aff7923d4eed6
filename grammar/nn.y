/* nn.y — the parser: tokens from nn.l in, an AST_PROGRAM (see nnc.h) out.
 *
 * A pure (reentrant) LALR(1) parser with no conflicts (%expect 0). Statements need no
 * separators; an optional ';' may end any statement, row or item. Syntax errors are printed
 * through diag_error as "expected X but found Y" (with LAC, so the expected set is exact),
 * with "(to close 'model' at line 3)" when a bracket is left open; `error` rules resume at
 * the next statement inside a block and at the next item at top level, so one run reports
 * several errors. Nesting is bounded (brackets in the lexer, expression depth here) so that
 * no input can exhaust the stack of this or a later, recursive, stage.
 *
 * Locations: an item at its keyword, a statement at its first token, a binary operator at
 * the operator (shape errors point at the '+'), a call at the callee's name.
 */

%code requires {
#include "nnc.h"

/* nn.lex.h typedefs this too; the guard is flex's own. */
#ifndef YY_TYPEDEF_YY_SCANNER_T
#define YY_TYPEDEF_YY_SCANNER_T
typedef void *yyscan_t;
#endif

enum {
  MAX_NESTING = 256,     /* brackets open at once; deeper stops the parse */
  MAX_EXPR_DEPTH = 1000, /* levels of one expression tree */
};

/* A token's or a rule's span, 1-based, [first, last) in line:col. */
typedef struct Span {
  int first_line, first_column;
  int last_line, last_column;
  bool fresh; /* begins a line, outside any '(' or '[': a safe point to resume reporting */
} Span;

/* As Bison's default, plus `fresh` taken from the first symbol. */
#define YYLLOC_DEFAULT(Cur, Rhs, N)                                                  \
  do {                                                                              \
    if (N) {                                                                        \
      (Cur).first_line = YYRHSLOC(Rhs, 1).first_line;                               \
      (Cur).first_column = YYRHSLOC(Rhs, 1).first_column;                           \
      (Cur).last_line = YYRHSLOC(Rhs, N).last_line;                                 \
      (Cur).last_column = YYRHSLOC(Rhs, N).last_column;                             \
      (Cur).fresh = YYRHSLOC(Rhs, 1).fresh;                                         \
    } else {                                                                        \
      (Cur).first_line = (Cur).last_line = YYRHSLOC(Rhs, 0).last_line;              \
      (Cur).first_column = (Cur).last_column = YYRHSLOC(Rhs, 0).last_column;        \
      (Cur).fresh = false;                                                          \
    }                                                                               \
  } while (0)

/* An expression and the height of its tree (to bound the recursion of later stages). */
typedef struct Expr {
  Ast *ast;   /* the expression */
  int depth;  /* 1 for a leaf */
} Expr;

typedef struct ExprList {
  AstList list; /* the expressions */
  int depth;    /* the deepest of them, 0 if none */
} ExprList;

/* An open bracket, for hints when its closer is missing. */
typedef struct Opener {
  char ch;               /* '(', '[' or '{' */
  int line;              /* where it is */
  const char *what;      /* '{': the definition keyword it belongs to ("model"), or NULL */
  int what_line;         /* line of that keyword */
} Opener;

/* Everything one parse needs, shared by lexer (as yyextra) and parser (as parse-param). */
typedef struct ParseCtx {
  const SourceFile *src;   /* the file being parsed */
  Ast *program;            /* AST_PROGRAM receiving items as they are parsed */
  int line, col;           /* lexer: position of the next byte */
  int end_line, end_col;   /* lexer: just after the last token (where end of file is shown) */
  size_t offset;           /* lexer: bytes consumed */
  size_t tok_off, tok_len; /* lexer: the last rule's text (the lookahead, at a syntax error) */
  int last_tok_line;       /* lexer: line where the last token ended */
  Opener open[MAX_NESTING]; /* lexer: brackets open now, innermost last */
  int depth;               /* used entries of open */
  const char *last_kw;     /* lexer: last of model/layer/fn/optimizer/train/table */
  int last_kw_line;        /* its line */
  bool stopped;            /* a fatal error ended the parse: report nothing more */
  bool too_deep;           /* the expression depth error was reported */
} ParseCtx;
}

%code {
#include <limits.h>
#include <string.h>

#include "nn.lex.h"

static void yyerror(YYLTYPE *loc, yyscan_t scanner, ParseCtx *ctx, const char *msg);

static Loc loc_of(ParseCtx *ctx, YYLTYPE l) {
  return (Loc){ctx->src, l.first_line, l.first_column};
}

static Ast *node(ParseCtx *ctx, AstKind kind, YYLTYPE l) { return ast_new(kind, loc_of(ctx, l)); }

/* After a syntax error Bison stays quiet until three tokens have been shifted, which would
 * hide a mistake on every short line after the first. A keyword that begins a statement or an
 * item is a sure resynchronisation point, so reporting resumes right after it (yyerrok; never
 * in an `error` rule itself, so each resumption has consumed a token and cannot loop). A name
 * might be in the middle of an expression, so it counts only where it is `fresh`. */
#define RESUME(span)  \
  do {                \
    if ((span).fresh) \
      yyerrok;        \
  } while (0)

static Expr leaf(Ast *n) { return (Expr){n, 1}; }

/* An expression node `depth` levels high; past the limit it is reported (once) and replaced
 * by a leaf, so the tree handed on stays shallow whatever the input. */
static Expr deeper(ParseCtx *ctx, Ast *n, int depth) {
  if (depth <= MAX_EXPR_DEPTH)
    return (Expr){n, depth};
  if (!ctx->too_deep)
    diag_error(n->loc, "expression nested too deeply (more than %d levels)", MAX_EXPR_DEPTH);
  ctx->too_deep = true;
  return leaf(ast_new(AST_NUM, n->loc));
}

static Expr binop(ParseCtx *ctx, int op, YYLTYPE at, Expr l, Expr r) {
  Ast *n = node(ctx, AST_BINOP, at);
  n->op = op;
  n->a = l.ast;
  n->b = r.ast;
  return deeper(ctx, n, (l.depth > r.depth ? l.depth : r.depth) + 1);
}

static ExprList exprs_add(ExprList list, Expr e) {
  ast_push(&list.list, e.ast);
  if (e.depth > list.depth)
    list.depth = e.depth;
  return list;
}

/* A node whose kids are `list`: calls and list literals. */
static Expr with_kids(ParseCtx *ctx, Ast *n, ExprList list) {
  n->kids = list.list;
  return deeper(ctx, n, list.depth + 1);
}
}

%define api.pure full
%define api.token.prefix {TK_}
%define parse.error custom
%define parse.lac full
%define api.location.type {Span}
%locations
%param {yyscan_t scanner}
%parse-param {ParseCtx *ctx}
%expect 0

%union {
  double num;     /* NUMBER */
  char *str;      /* IDENT, STRING (contents), names */
  int op;         /* operator characters */
  Ast *ast;       /* items, statements, types */
  Expr ex;        /* expressions */
  ExprList exs;   /* argument and element lists */
  AstList list;   /* statements, formals, rows, dims */
}

%token END 0 "end of file"
%token <str> IDENT "identifier"
%token <num> NUMBER "number"
%token <str> STRING "string"
%token USE "'use'" DATA "'data'" MODEL "'model'" LAYER "'layer'" FN "'fn'"
%token OPTIMIZER "'optimizer'" TRAIN "'train'" ON "'on'" PARAM "'param'" STATE "'state'"
%token RETURN "'return'" TABLE "'table'" REPEAT "'repeat'" REQUIRE "'require'"
%token ELLIPSIS "'...'"
%token '='
%token ARROW "'->'" ADD_ASSIGN "'+='" SUB_ASSIGN "'-='" MUL_ASSIGN "'*='" DIV_ASSIGN "'/='"
%token GE "'>='" LE "'<='"

%type <ast> item stmt ret_type opt_type opt_default param_init type row
%type <list> block stmts formals formal_list state_inits dims dim_list rows
%type <ex> expr sum term unary power primary call list arg
%type <exs> args arg_list expr_list
%type <str> target dname
%nterm kw_use kw_data kw_model kw_layer kw_fn kw_optimizer kw_train kw_param kw_state kw_return
%nterm kw_repeat kw_require
%type <op> aug_op cmp_op

%%

/* program := item* */
program
  : %empty
  | program item          { if ($2) ast_push(&ctx->program->kids, $2); }
  ;

/* item := 'use' IDENT | 'data' ... | 'model' ... | 'layer' ... | 'fn' ... | 'optimizer' ...
 *       | 'train' ... | ';' */
item
  : kw_use IDENT             { $$ = node(ctx, AST_USE, @1); $$->name = $2; }
  | kw_data dname '=' call   { $$ = node(ctx, AST_DATA, @1); $$->name = $2; $$->a = $4.ast; }
  | kw_data dname '=' TABLE '{' rows '}' {
      $$ = node(ctx, AST_DATA, @1);
      $$->name = $2;
      $$->a = node(ctx, AST_TABLE, @4);
      $$->a->kids = $6;
    }
  | kw_model IDENT '(' formals ')' ret_type block {
      $$ = node(ctx, AST_MODEL, @1);
      $$->name = $2;
      $$->formals = $4;
      $$->a = $6;
      $$->body = $7;
    }
  | kw_layer IDENT '(' formals ')' block {
      $$ = node(ctx, AST_LAYER, @1);
      $$->name = $2;
      $$->formals = $4;
      $$->body = $6;
    }
  | kw_fn IDENT '(' formals ')' '=' expr {
      $$ = node(ctx, AST_FN, @1);
      $$->name = $2;
      $$->formals = $4;
      Ast *ret = ast_new(AST_RETURN, $7.ast->loc);
      ret->a = $7.ast;
      ast_push(&$$->body, ret);
    }
  | kw_fn IDENT '(' formals ')' block {
      $$ = node(ctx, AST_FN, @1);
      $$->name = $2;
      $$->formals = $4;
      $$->body = $6;
    }
  | kw_optimizer IDENT '(' formals ')' block {
      $$ = node(ctx, AST_OPTIMIZER, @1);
      $$->name = $2;
      $$->formals = $4;
      $$->body = $6;
    }
  | kw_train IDENT ON dname block {
      $$ = node(ctx, AST_TRAIN, @1);
      $$->name = $2;
      $$->name2 = $4;
      $$->body = $5;
    }
  | ';'                   { $$ = NULL; }
  | error                 { $$ = NULL; /* resume at the next item keyword */ }
  ;

/* A data set's name; `train` too, as in `data train = ...` / `train m on train`. */
dname
  : IDENT
  | TRAIN                 { $$ = "train"; }
  ;

/* ['->' type] */
ret_type
  : %empty                { $$ = NULL; }
  | ARROW type            { $$ = $2; }
  ;

/* rows := (list '->' list [',' | ';'])* */
rows
  : %empty                { $$ = (AstList){0}; }
  | rows row              { $$ = $1; ast_push(&$$, $2); }
  ;

row
  : list ARROW list row_sep {
      $$ = node(ctx, AST_ROW, @1);
      $$->a = $1.ast;
      $$->b = $3.ast;
    }
  ;

row_sep
  : %empty
  | ','
  | ';'
  ;

/* formals := empty | formal (',' formal)* */
formals
  : %empty                { $$ = (AstList){0}; }
  | formal_list
  ;

formal_list
  : IDENT opt_type opt_default {
      $$ = (AstList){0};
      Ast *f = node(ctx, AST_FORMAL, @1);
      f->name = $1;
      f->a = $2;
      f->b = $3;
      ast_push(&$$, f);
    }
  | formal_list ',' IDENT opt_type opt_default {
      $$ = $1;
      Ast *f = node(ctx, AST_FORMAL, @3);
      f->name = $3;
      f->a = $4;
      f->b = $5;
      ast_push(&$$, f);
    }
  ;

/* formal := IDENT [':' type] ['=' expr] */
opt_type
  : %empty                { $$ = NULL; }
  | ':' type              { $$ = $2; }
  ;

opt_default
  : %empty                { $$ = NULL; }
  | '=' expr              { $$ = $2.ast; }
  ;

/* type := [IDENT] '[' ['...' [',']] [dim (',' dim)*] ']' | IDENT
 * A leading '...' stands for any number of leading axes (rank-polymorphic layers). */
type
  : IDENT                 { $$ = node(ctx, AST_TYPE, @1); $$->name = $1; }
  | IDENT '[' dims ']' {
      $$ = node(ctx, AST_TYPE, @1);
      $$->name = $1;
      $$->has_dims = true;
      $$->kids = $3;
    }
  | '[' dims ']' {
      $$ = node(ctx, AST_TYPE, @1);
      $$->has_dims = true;
      $$->kids = $2;
    }
  | '[' ELLIPSIS ']' {
      $$ = node(ctx, AST_TYPE, @1);
      $$->has_dims = true;
      $$->any_lead = true;
    }
  | '[' ELLIPSIS ',' dim_list ']' {
      $$ = node(ctx, AST_TYPE, @1);
      $$->has_dims = true;
      $$->any_lead = true;
      $$->kids = $4;
    }
  ;

dims
  : %empty                { $$ = (AstList){0}; }
  | dim_list
  ;

dim_list
  : expr                  { $$ = (AstList){0}; ast_push(&$$, $1.ast); }
  | dim_list ',' expr     { $$ = $1; ast_push(&$$, $3.ast); }
  ;

/* '{' stmt* '}' */
block
  : '{' stmts '}'         { $$ = $2; }
  ;

/* 'state' IDENT '=' expr (',' IDENT '=' expr)* makes one AST_STATE per name, so it is
 * handled here, where a statement may add several nodes. */
stmts
  : %empty                { $$ = (AstList){0}; }
  | stmts stmt            { $$ = $1; if ($2) ast_push(&$$, $2); }
  | stmts kw_state state_inits {
      $$ = $1;
      for (int i = 0; i < $3.len; i++)
        ast_push(&$$, $3.items[i]);
    }
  | stmts kw_state IDENT ':' type param_init { /* a layer's buffer, e.g. running statistics */
      $$ = $1;
      Ast *s = node(ctx, AST_PARAM, @2);
      s->name = $3;
      s->a = $5;
      s->b = $6;
      s->op = 's';
      ast_push(&$$, s);
    }
  ;

state_inits
  : IDENT '=' expr {
      $$ = (AstList){0};
      Ast *s = node(ctx, AST_STATE, @1);
      s->name = $1;
      s->a = $3.ast;
      ast_push(&$$, s);
    }
  | state_inits ',' IDENT '=' expr {
      $$ = $1;
      Ast *s = node(ctx, AST_STATE, @3);
      s->name = $3;
      s->a = $5.ast;
      ast_push(&$$, s);
    }
  ;

/* stmt := target '=' expr | target op= expr | 'param' IDENT ':' type ['=' expr]
 *       | 'return' expr | 'repeat' expr block | 'step' IDENT block
 *       | 'require' expr ',' STRING | ';'
 * (`step` is a name elsewhere, an optimizer's step count, so it is no keyword) */
stmt
  : target '=' expr {
      $$ = node(ctx, AST_ASSIGN, @1);
      $$->name = $1;
      $$->a = $3.ast;
    }
  | target aug_op expr {
      $$ = node(ctx, AST_AUGASSIGN, @1);
      $$->name = $1;
      $$->op = $2;
      $$->a = $3.ast;
    }
  | kw_param IDENT ':' type param_init {
      $$ = node(ctx, AST_PARAM, @1);
      $$->name = $2;
      $$->a = $4;
      $$->b = $5;
    }
  | kw_return expr           { $$ = node(ctx, AST_RETURN, @1); $$->a = $2.ast; }
  | kw_repeat expr block {
      $$ = node(ctx, AST_REPEAT, @1);
      $$->a = $2.ast;
      $$->body = $3;
    }
  | kw_require expr ',' STRING {
      $$ = node(ctx, AST_REQUIRE, @1);
      $$->a = $2.ast;
      $$->name = $4;
    }
  | IDENT IDENT block {
      RESUME(@1);
      if (strcmp($1, "step"))
        diag_error(loc_of(ctx, @2), "expected '=' after '%s'", $1);
      $$ = node(ctx, AST_STEP, @1);
      $$->name = $2;
      $$->body = $3;
    }
  | ';'                   { $$ = NULL; }
  | error                 { $$ = NULL; /* resume at the next statement */ }
  ;

/* `param` in an optimizer (`param -= lr * grad`), `optimizer` in a train block. */
target
  : IDENT                 { RESUME(@1); $$ = $1; }
  | PARAM                 { yyerrok; $$ = "param"; }
  | OPTIMIZER             { yyerrok; $$ = "optimizer"; }
  ;

/* The keywords that begin items and statements, as rules so they can resume reporting. */
kw_use:       USE         { yyerrok; } ;
kw_data:      DATA        { yyerrok; } ;
kw_model:     MODEL       { yyerrok; } ;
kw_layer:     LAYER       { yyerrok; } ;
kw_fn:        FN          { yyerrok; } ;
kw_optimizer: OPTIMIZER   { yyerrok; } ;
kw_train:     TRAIN       { yyerrok; } ;
kw_param:     PARAM       { yyerrok; } ;
kw_state:     STATE       { yyerrok; } ;
kw_return:    RETURN      { yyerrok; } ;
kw_repeat:    REPEAT      { yyerrok; } ;
kw_require:   REQUIRE     { yyerrok; } ;

aug_op
  : ADD_ASSIGN            { $$ = '+'; }
  | SUB_ASSIGN            { $$ = '-'; }
  | MUL_ASSIGN            { $$ = '*'; }
  | DIV_ASSIGN            { $$ = '/'; }
  ;

param_init
  : %empty                { $$ = NULL; }
  | '=' expr              { $$ = $2.ast; }
  ;

/* expr := sum [('>' | '<' | '>=' | '<=') sum]       (comparisons do not chain) */
expr
  : sum
  | sum cmp_op sum        { $$ = binop(ctx, $2, @2, $1, $3); }
  ;

cmp_op
  : '>'                   { $$ = '>'; }
  | '<'                   { $$ = '<'; }
  | GE                    { $$ = 'G'; }
  | LE                    { $$ = 'L'; }
  ;

/* sum := term (('+' | '-') term)* */
sum
  : term
  | sum '+' term          { $$ = binop(ctx, '+', @2, $1, $3); }
  | sum '-' term          { $$ = binop(ctx, '-', @2, $1, $3); }
  ;

/* term := unary (('*' | '/' | '@') unary)* */
term
  : unary
  | term '*' unary        { $$ = binop(ctx, '*', @2, $1, $3); }
  | term '/' unary        { $$ = binop(ctx, '/', @2, $1, $3); }
  | term '@' unary        { $$ = binop(ctx, '@', @2, $1, $3); }
  ;

/* unary := '-' unary | power */
unary
  : power
  | '-' unary {
      Ast *n = node(ctx, AST_NEG, @1);
      n->a = $2.ast;
      $$ = deeper(ctx, n, $2.depth + 1);
    }
  ;

/* power := primary ['^' unary]      (right associative, and tighter than unary minus on its
 * left: -x^2 is -(x^2), x^-1 is x^(-1)) */
power
  : primary
  | primary '^' unary     { $$ = binop(ctx, '^', @2, $1, $3); }
  ;

/* primary := NUMBER | STRING | IDENT | 'param' | call | '(' expr ')' | list
 * ('param' is a value in optimizer bodies: the parameter being updated) */
primary
  : NUMBER                { $$ = leaf(node(ctx, AST_NUM, @1)); $$.ast->num = $1; }
  | STRING                { $$ = leaf(node(ctx, AST_STR, @1)); $$.ast->name = $1; }
  | IDENT                 { $$ = leaf(node(ctx, AST_NAME, @1)); $$.ast->name = $1; }
  | PARAM                 { $$ = leaf(node(ctx, AST_NAME, @1)); $$.ast->name = "param"; }
  | call
  | '(' expr ')'          { $$ = $2; }
  | list
  ;

/* call := IDENT '(' [arg (',' arg)* [',']] ')' */
call
  : IDENT '(' args ')' {
      Ast *n = node(ctx, AST_CALL, @1);
      n->name = $1;
      $$ = with_kids(ctx, n, $3);
    }
  ;

args
  : %empty                { $$ = (ExprList){0}; }
  | arg_list
  | arg_list ','
  ;

arg_list
  : arg                   { $$ = exprs_add((ExprList){0}, $1); }
  | arg_list ',' arg      { $$ = exprs_add($1, $3); }
  ;

/* arg := expr | IDENT '=' expr */
arg
  : expr
  | IDENT '=' expr {
      Ast *n = node(ctx, AST_KWARG, @1);
      n->name = $1;
      n->a = $3.ast;
      $$ = deeper(ctx, n, $3.depth + 1);
    }
  ;

/* list := '[' [expr (',' expr)* [',']] ']' */
list
  : '[' ']'               { $$ = leaf(node(ctx, AST_LIST, @1)); }
  | '[' expr_list ']'     { $$ = with_kids(ctx, node(ctx, AST_LIST, @1), $2); }
  | '[' expr_list ',' ']' { $$ = with_kids(ctx, node(ctx, AST_LIST, @1), $2); }
  ;

expr_list
  : expr                  { $$ = exprs_add((ExprList){0}, $1); }
  | expr_list ',' expr    { $$ = exprs_add($1, $3); }
  ;

%%

/* ---------------------------------------------------------------- syntax error messages */

enum { MAX_LISTED = 5 }; /* more expected tokens than this read as noise: say "unexpected" */

/* The expected tokens, as names for a message, reduced to what helps a reader. */
typedef struct Expected {
  const char *name[YYNTOKENS + 4]; /* "'('", "identifier", "an expression", ... */
  int n;                           /* used entries */
} Expected;

static int find(const Expected *e, const char *name) {
  for (int i = 0; i < e->n; i++)
    if (strcmp(e->name[i], name) == 0)
      return i;
  return -1;
}

static void drop(Expected *e, const char *name) {
  int i = find(e, name);
  if (i < 0)
    return;
  memmove(&e->name[i], &e->name[i + 1], (size_t)(e->n - i - 1) * sizeof e->name[0]);
  e->n--;
}

/* If every one of `set` is expected, replaces them by `as` (first in the list). */
static bool collapse(Expected *e, const char *const *set, int n, const char *as) {
  for (int i = 0; i < n; i++)
    if (find(e, set[i]) < 0)
      return false;
  for (int i = 0; i < n; i++)
    drop(e, set[i]);
  memmove(&e->name[1], &e->name[0], (size_t)e->n * sizeof e->name[0]);
  e->name[0] = as;
  e->n++;
  return true;
}

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const char *const expr_start[] = {"identifier", "number", "string", "'('", "'['", "'-'",
                                         "'param'"};
/* Tokens that would continue an expression already complete: rarely what was meant. */
static const char *const expr_more[] = {"'+'", "'-'", "'*'", "'/'", "'@'", "'^'",
                                        "'>'", "'<'", "'>='", "'<='", "'('"};
static const char *const stmt_start[] = {"identifier", "'param'", "'state'", "'return'",
                                         "'optimizer'"};
static const char *const item_start[] = {"'use'", "'data'", "'model'", "'layer'",
                                         "'fn'", "'optimizer'", "'train'"};

static void simplify_expected(Expected *e) {
  drop(e, "end of file"); /* never what the user should have written */
  drop(e, "';'");         /* optional everywhere */
  collapse(e, expr_start, COUNT(expr_start), "an expression");
  bool other = false;
  for (int i = 0; i < e->n; i++) {
    bool more = false;
    for (int j = 0; j < COUNT(expr_more); j++)
      more |= strcmp(e->name[i], expr_more[j]) == 0;
    other |= !more;
  }
  if (other)
    for (int j = 0; j < COUNT(expr_more); j++)
      drop(e, expr_more[j]);
  collapse(e, stmt_start, COUNT(stmt_start), "a statement");
  collapse(e, item_start, COUNT(item_start),
           "a definition ('model', 'layer', 'fn', 'optimizer', 'data', 'train' or 'use')");
}

/* Appends "A", "A or B", "A, B or C". */
static void append_list(char *buf, size_t size, const Expected *e) {
  for (int i = 0; i < e->n; i++) {
    size_t len = strlen(buf);
    snprintf(buf + len, size - len, "%s%s", i == 0 ? "" : i == e->n - 1 ? " or " : ", ",
             e->name[i]);
  }
}

/* What was found, as a message shows it: identifier 'x', number '1e3', '}', end of file. */
static void describe_found(ParseCtx *ctx, yysymbol_kind_t k, char *buf, size_t size) {
  const char *text = ctx->src->text + ctx->tok_off;
  int len = ctx->tok_len > 32 ? 32 : (int)ctx->tok_len;
  const char *more = ctx->tok_len > 32 ? "..." : "";
  if (k == YYSYMBOL_IDENT)
    snprintf(buf, size, "identifier '%.*s%s'", len, text, more);
  else if (k == YYSYMBOL_NUMBER)
    snprintf(buf, size, "number '%.*s%s'", len, text, more);
  else
    snprintf(buf, size, "%s", yysymbol_name(k));
}

static int yyreport_syntax_error(const yypcontext_t *yc, yyscan_t scanner, ParseCtx *ctx) {
  (void)scanner;
  yysymbol_kind_t found = yypcontext_token(yc);
  if (ctx->stopped || found == YYSYMBOL_YYUNDEF) /* the lexer has already said why */
    return 0;
  Loc at = loc_of(ctx, *yypcontext_location(yc));

  yysymbol_kind_t kinds[YYNTOKENS];
  int n = yypcontext_expected_tokens(yc, kinds, YYNTOKENS);
  Expected e = {.n = 0};
  for (int i = 0; i < n; i++)
    e.name[e.n++] = yysymbol_name(kinds[i]);
  simplify_expected(&e);

  /* The bracket the parser may be waiting to see closed. The lookahead, if it opened one, is
   * already on the lexer's stack: look beneath it. */
  int top = ctx->depth - 1;
  const char *text = ctx->src->text + ctx->tok_off;
  if (found != YYSYMBOL_YYEOF && ctx->tok_len == 1 && memchr("([{", *text, 3))
    top--;
  char hint[128] = "";
  if (top >= 0) {
    const Opener *o = &ctx->open[top];
    const char *closer = o->ch == '(' ? "')'" : o->ch == '[' ? "']'" : "'}'";
    if (find(&e, closer) >= 0) {
      if (found == YYSYMBOL_YYEOF) {
        e.n = 1;
        e.name[0] = closer;
      }
      /* Only where the missing closer is the likely story: at the end of the file, or
       * where a new definition starts inside the open one. */
      bool at_item = found == YYSYMBOL_USE || found == YYSYMBOL_DATA || found == YYSYMBOL_MODEL
                     || found == YYSYMBOL_LAYER || found == YYSYMBOL_FN
                     || found == YYSYMBOL_TRAIN;
      bool closing_likely = find(&e, "a statement") < 0 && find(&e, "an expression") < 0;
      if (found == YYSYMBOL_YYEOF || at_item || (closing_likely && o->line != at.line)) {
        if (o->ch == '{' && o->what)
          snprintf(hint, sizeof hint, " (to close '%s' at line %d)", o->what, o->what_line);
        else
          snprintf(hint, sizeof hint, " (to close '%c' at line %d)", o->ch, o->line);
      }
    }
  }

  char found_text[64];
  describe_found(ctx, found, found_text, sizeof found_text);
  char msg[512] = "";
  if (found == YYSYMBOL_YYEOF) {
    strcpy(msg, "unexpected end of file");
    if (e.n > 0 && e.n <= MAX_LISTED) {
      strcat(msg, ", expected ");
      append_list(msg, sizeof msg, &e);
    }
  } else if (e.n > 0 && e.n <= MAX_LISTED) {
    strcpy(msg, "expected ");
    append_list(msg, sizeof msg, &e);
    size_t len = strlen(msg);
    snprintf(msg + len, sizeof msg - len, " but found %s", found_text);
  } else {
    snprintf(msg, sizeof msg, "unexpected %s", found_text);
  }
  diag_error(at, "%s%s", msg, hint);
  return 0;
}

/* Bison calls this only when its stack is exhausted: an expression nested too deeply (a long
 * run of unary minus or '^'); brackets are bounded by the lexer long before. */
static void yyerror(YYLTYPE *loc, yyscan_t scanner, ParseCtx *ctx, const char *msg) {
  (void)scanner;
  if (ctx->stopped)
    return;
  if (strcmp(msg, "memory exhausted") == 0)
    msg = "expression nested too deeply";
  diag_error(loc_of(ctx, *loc), "%s", msg);
  ctx->stopped = true;
}

Ast *parse_source(const SourceFile *src) {
  ParseCtx ctx = {.src = src, .line = 1, .col = 1, .end_line = 1, .end_col = 1};
  ctx.program = ast_new(AST_PROGRAM, (Loc){src, 0, 0}); /* line 0: the file as a whole */
  if (src->size > INT_MAX / 2) { /* flex counts in int */
    diag_file_error(src->path, "file too large");
    return ctx.program;
  }
  yyscan_t scanner;
  if (yylex_init_extra(&ctx, &scanner) != 0)
    diag_internal(__FILE__, __LINE__, "cannot create the scanner");
  YY_BUFFER_STATE buf = yy_scan_bytes(src->text, (int)src->size, scanner);
  int errors_before = diag_error_count();
  if (yyparse(scanner, &ctx) != 0 && diag_error_count() == errors_before)
    diag_internal(__FILE__, __LINE__, "the parse failed without a diagnostic");
  yy_delete_buffer(buf, scanner);
  yylex_destroy(scanner);
  return ctx.program;
}
