/* diag.c — source files, diagnostics and memory for the whole compiler.
 *
 * Takes in paths (or text already in memory) and gives out SourceFiles; takes in locations
 * and messages and prints them to stderr in clang's form, with the source line and a caret:
 *
 *   mlp.nn:7:14: error: cannot add f32[32,128] and f32[64,128]
 *     h = x @ W1 + b1
 *                ^
 *
 * All compiler memory comes from one arena: a chain of big zeroed blocks hanging off a global
 * pointer (so LeakSanitizer sees it as reachable), released at once by xfree_all(). */
#include "nnc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- arena */

enum {
  ARENA_BLOCK = 1 << 20, /* bytes of an ordinary block */
  ARENA_ALIGN = 16,      /* every allocation is aligned to this */
  MAX_ERRORS = 20,       /* errors printed before giving up */
};

typedef struct Block {
  struct Block *next;  /* older blocks */
  size_t used, cap;    /* bytes of data handed out / available */
  _Alignas(ARENA_ALIGN) unsigned char data[];
} Block;

static Block *arena; /* newest block first; the chain is the only owner of compiler memory */

static _Noreturn void out_of_memory(void) {
  fputs("nnc: error: out of memory\n", stderr);
  exit(1);
}

static Block *new_block(size_t cap) {
  Block *b = calloc(1, sizeof(Block) + cap);
  if (!b)
    out_of_memory();
  b->cap = cap;
  return b;
}

void *xalloc(size_t size) {
  if (size > SIZE_MAX / 2)
    out_of_memory();
  size = (size + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
  if (size == 0)
    size = ARENA_ALIGN;
  if (size > ARENA_BLOCK / 4) {
    /* A big request gets a block of its own, linked behind the current one so the current
     * block's free space is not abandoned. */
    Block *b = new_block(size);
    b->used = size;
    if (arena) {
      b->next = arena->next;
      arena->next = b;
    } else {
      arena = b;
    }
    return b->data;
  }
  if (!arena || arena->cap - arena->used < size) {
    Block *b = new_block(ARENA_BLOCK);
    b->next = arena;
    arena = b;
  }
  void *p = arena->data + arena->used;
  arena->used += size;
  return p; /* calloc'ed and never reused, hence zero */
}

char *xstrndup(const char *s, size_t n) {
  char *p = xalloc(n + 1);
  memcpy(p, s, n);
  return p;
}

char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

static char *vformat(const char *fmt, va_list ap);

char *xprintf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *p = vformat(fmt, ap);
  va_end(ap);
  return p;
}

void xfree_all(void) {
  while (arena) {
    Block *next = arena->next;
    free(arena);
    arena = next;
  }
}

/* ---------------------------------------------------------------- source files */

SourceFile *diag_source(const char *path, const char *text, size_t size) {
  SourceFile *f = xalloc(sizeof *f);
  f->path = xstrdup(path);
  f->text = xstrndup(text, size); /* the copy is NUL-terminated even if `text` is not */
  f->size = size;
  return f;
}

SourceFile *diag_load(const char *path) {
  FILE *in = fopen(path, "rb");
  if (!in) {
    diag_file_error("nnc", "cannot read '%s': %s", path, strerror(errno));
    return NULL;
  }
  /* Read in chunks rather than trusting ftell: works for pipes and reports EISDIR. */
  size_t size = 0, cap = 1 << 16;
  char *buf = malloc(cap);
  if (!buf)
    out_of_memory();
  for (;;) {
    if (size == cap) {
      cap *= 2;
      char *grown = realloc(buf, cap);
      if (!grown)
        out_of_memory();
      buf = grown;
    }
    size_t got = fread(buf + size, 1, cap - size, in);
    size += got;
    if (got == 0)
      break;
  }
  int failed = ferror(in) ? errno : 0;
  fclose(in);
  if (failed) {
    free(buf);
    diag_file_error("nnc", "cannot read '%s': %s", path, strerror(failed));
    return NULL;
  }
  SourceFile *f = diag_source(path, buf, size);
  free(buf);
  return f;
}

/* ---------------------------------------------------------------- diagnostics */

/* sema elaborates a model body once per call (the train graph's output, the loss's own call)
 * and once per mode (training 1 and 0), so one mistake is found several times; it is printed
 * once. n_errors counts every find, so a caller's "did this call add errors?" check still works;
 * only the printed ones count towards MAX_ERRORS. */
static int n_errors;               /* errors found so far, repeats included */
static const char *printed[MAX_ERRORS]; /* "where: message" of each error printed */
static int n_printed;
static bool last_was_repeat;       /* the latest error was a repeat: drop its notes too */

int diag_error_count(void) { return n_errors; }

/* Counts one error and says whether to print it: not if the same message was already printed
 * at the same place; past the limit, gives up rather than flood the terminal. */
static bool count_error(const char *where, const char *message) {
  n_errors++;
  const char *key = xprintf("%s: %s", where, message);
  for (int i = 0; i < n_printed; i++)
    if (!strcmp(printed[i], key))
      return !(last_was_repeat = true);
  last_was_repeat = false;
  if (n_printed >= MAX_ERRORS) {
    fputs("nnc: error: too many errors, stopping\n", stderr);
    xfree_all();
    exit(1);
  }
  printed[n_printed++] = key;
  return true;
}

/* Bytes in a valid UTF-8 sequence starting at s (at most n bytes available), or 0. */
static int utf8_len(const unsigned char *s, size_t n) {
  int len = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
  if (s[0] >= 0xf5 || len == 0 || (size_t)len > n)
    return 0;
  for (int i = 1; i < len; i++)
    if ((s[i] & 0xc0) != 0x80)
      return 0;
  return len;
}

/* Prints line `loc.line` of the file verbatim (non-printable bytes as '?', tabs and valid
 * UTF-8 kept), then a caret under byte column `loc.col`, padded with the line's own tabs so
 * it lines up whatever the tab width. */
static void print_source_line(Loc loc) {
  const SourceFile *f = loc.file;
  const unsigned char *text = (const unsigned char *)f->text, *end = text + f->size;
  const unsigned char *p = text;
  for (int line = 1; line < loc.line; line++) {
    p = memchr(p, '\n', (size_t)(end - p));
    if (!p)
      return; /* the location is past the end: no line to show */
    p++;
  }
  const unsigned char *eol = memchr(p, '\n', (size_t)(end - p));
  if (!eol)
    eol = end;
  if (eol > p && eol[-1] == '\r')
    eol--;

  /* Echo the line, building the caret's padding alongside it. */
  size_t caret_at = loc.col > 0 ? (size_t)loc.col - 1 : 0;
  if (caret_at > (size_t)(eol - p))
    caret_at = (size_t)(eol - p); /* a made-up column: point just past the line */
  char *pad = malloc((size_t)(eol - p) + caret_at + 1);
  if (!pad)
    out_of_memory();
  size_t npad = 0;
  fputs("  ", stderr);
  for (const unsigned char *q = p; q < eol;) {
    size_t col = (size_t)(q - p);
    int len = *q >= 0x80 ? utf8_len(q, (size_t)(eol - q)) : 1;
    if (len > 1) {
      fwrite(q, 1, (size_t)len, stderr);
    } else {
      len = 1;
      fputc(*q == '\t' || (*q >= 0x20 && *q < 0x7f) ? *q : '?', stderr);
    }
    if (col < caret_at)
      pad[npad++] = *q == '\t' ? '\t' : ' ';
    q += len;
  }
  /* Columns past the end of the line (an error at end of line or file). */
  for (size_t col = (size_t)(eol - p); col < caret_at; col++)
    pad[npad++] = ' ';
  fputs("\n  ", stderr);
  fwrite(pad, 1, npad, stderr);
  fputs("^\n", stderr);
  free(pad);
}

/* "file:line:col" (or less, where the location is less precise) for a message's prefix. */
static const char *where_str(Loc loc) {
  if (!loc.file) return "nnc";
  if (loc.line <= 0) return loc.file->path;
  return xprintf("%s:%d:%d", loc.file->path, loc.line, loc.col);
}

static void report(Loc loc, const char *kind, const char *message) {
  fprintf(stderr, "%s: %s: %s\n", where_str(loc), kind, message);
  if (loc.file && loc.line > 0)
    print_source_line(loc);
}

static char *vformat(const char *fmt, va_list ap) {
  va_list again;
  va_copy(again, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  if (n < 0)
    diag_internal(__FILE__, __LINE__, "bad format '%s'", fmt);
  char *p = xalloc((size_t)n + 1);
  vsnprintf(p, (size_t)n + 1, fmt, again);
  va_end(again);
  return p;
}

void diag_error(Loc loc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *message = vformat(fmt, ap);
  va_end(ap);
  if (count_error(where_str(loc), message))
    report(loc, "error", message);
}

void diag_note(Loc loc, const char *fmt, ...) {
  if (last_was_repeat)
    return;
  va_list ap;
  va_start(ap, fmt);
  report(loc, "note", vformat(fmt, ap));
  va_end(ap);
}

void diag_file_error(const char *path, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *message = vformat(fmt, ap);
  va_end(ap);
  if (count_error(path ? path : "nnc", message))
    fprintf(stderr, "%s: error: %s\n", path ? path : "nnc", message);
}

_Noreturn void diag_internal(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "nnc: internal error at %s:%d: ", file, line);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(70); /* EX_SOFTWARE: distinguishable from user errors (1) without a core dump */
}

/* ---------------------------------------------------------------- did you mean */

/* Edit distance between a and b: insertions, deletions, substitutions and swaps of two
 * adjacent characters (the commonest typo, "tahn") each cost 1 — Levenshtein's distance plus
 * transpositions (optimal string alignment). Three rows of the usual table. */
static size_t edit_distance(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  size_t *rows = malloc(3 * (nb + 1) * sizeof *rows);
  if (!rows)
    out_of_memory();
  size_t *prev2 = rows, *prev = rows + nb + 1, *cur = rows + 2 * (nb + 1);
  for (size_t j = 0; j <= nb; j++)
    prev[j] = j;
  for (size_t i = 1; i <= na; i++) {
    cur[0] = i;
    for (size_t j = 1; j <= nb; j++) {
      size_t best = prev[j - 1] + (a[i - 1] != b[j - 1]); /* substitute (or keep) */
      if (prev[j] + 1 < best)
        best = prev[j] + 1;                                /* delete a[i-1] */
      if (cur[j - 1] + 1 < best)
        best = cur[j - 1] + 1;                             /* insert b[j-1] */
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
          prev2[j - 2] + 1 < best)
        best = prev2[j - 2] + 1;                           /* swap */
      cur[j] = best;
    }
    size_t *t = prev2;
    prev2 = prev;
    prev = cur;
    cur = t;
  }
  size_t d = prev[nb];
  free(rows);
  return d;
}

const char *diag_did_you_mean(const char *name, const char *const *candidates, int n) {
  size_t limit = strlen(name) / 3;
  if (limit < 1)
    limit = 1;
  const char *best = NULL;
  size_t best_d = limit + 1;
  for (int i = 0; i < n; i++) {
    if (!candidates[i] || strcmp(candidates[i], name) == 0)
      continue;
    size_t len = strlen(candidates[i]), name_len = strlen(name);
    if ((len > name_len ? len - name_len : name_len - len) > limit)
      continue; /* too far apart in length alone */
    size_t d = edit_distance(name, candidates[i]);
    if (d < best_d) {
      best_d = d;
      best = candidates[i];
    }
  }
  return best;
}
