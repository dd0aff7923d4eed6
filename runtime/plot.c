/* plot.c — the `plot` command and train's --plot: takes a training log written by --log (CSV
 * with a header naming its columns: kind, step, loss, accuracy, val_loss, val_accuracy), gives
 * one self-contained SVG file with a loss panel (every step's loss faintly, each epoch's mean
 * and validation loss on top) and, for classifiers, an accuracy panel; the best epoch of early
 * stopping is marked in both. No library: the SVG is written by hand. Columns are found by
 * name, so a log with more columns still plots; a file that is not such a log is refused with
 * its name and the problem. */
#define _POSIX_C_SOURCE 200809L /* getline */

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nnrt_internal.h"

enum {
  PLOT_W = 760,        /* SVG width */
  PANEL_H = 260,       /* one panel's height, plot area and margins */
  MARGIN_L = 72,       /* room for the y tick labels */
  MARGIN_R = 150,      /* room for the legend */
  MARGIN_T = 28,       /* the panel's title */
  MARGIN_B = 40,       /* the x tick labels and axis title */
  MAX_POINTS = 2000,   /* longer step series are averaged down to about this many points */
};

/* The columns plotted, by their names in the log's header. ORDER COLUMN */
enum { C_KIND, C_STEP, C_LOSS, C_ACC, C_VAL_LOSS, C_VAL_ACC, N_COLS };
static const char *const column_names[N_COLS] = {"kind",     "step",     "loss",
                                                 "accuracy", "val_loss", "val_accuracy"};

/* One curve: points in file order. */
typedef struct Series {
  double *x, *y;
  int64_t n, cap;
} Series;

/* What the log holds. */
typedef struct Log {
  Series step_loss, epoch_loss, val_loss; /* (step, loss) */
  Series epoch_acc, val_acc;              /* (step, accuracy in %) */
  int has_acc;                            /* the header has an accuracy column */
  double best_x;                          /* the best row's step; NAN when none */
  long best_epoch;
} Log;

static void push(Series *s, double x, double y) {
  if (!isfinite(x) || !isfinite(y))
    return; /* a skipped or missing value leaves a gap in the data, not a broken plot */
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 64;
    double *nx = realloc(s->x, (size_t)s->cap * sizeof *nx);
    if (nx)
      s->x = nx;
    double *ny = realloc(s->y, (size_t)s->cap * sizeof *ny);
    if (ny)
      s->y = ny;
    if (!nx || !ny)
      nnrt_fatal("out of memory at %s:%d", __FILE__, __LINE__);
  }
  s->x[s->n] = x;
  s->y[s->n++] = y;
}

static void series_free(Series *s) {
  free(s->x);
  free(s->y);
  memset(s, 0, sizeof *s);
}

static void log_free(Log *g) {
  series_free(&g->step_loss);
  series_free(&g->epoch_loss);
  series_free(&g->val_loss);
  series_free(&g->epoch_acc);
  series_free(&g->val_acc);
}

/* ---- reading the log ---- */

/* Splits line in place at commas (and a trailing \r\n) into at most cap fields. */
static int split(char *line, char **field, int cap) {
  int n = 0;
  line[strcspn(line, "\r\n")] = '\0';
  for (char *s = line; n < cap;) {
    field[n++] = s;
    char *comma = strchr(s, ',');
    if (!comma)
      break;
    *comma = '\0';
    s = comma + 1;
  }
  return n;
}

/* A field as a number: NAN when empty, an error naming the spot when not a number. */
static double number(const char *path, long line, const char *col, const char *s, char *text,
                     Log *g) {
  if (!*s)
    return NAN;
  char *end;
  double v = strtod(s, &end);
  if (*end) {
    fflush(stdout);
    fprintf(stderr, "%s:%ld: error: '%.40s' in column '%s' is not a number\n", path, line, s,
            col);
    free(text); /* s points into it */
    log_free(g);
    nnrt_exit(NNRT_EXIT_FAIL);
  }
  return v;
}

/* Reads the log from f (the caller opens and closes it); path names it in messages. */
static void read_log(FILE *f, const char *path, Log *g) {
  enum { MAX_FIELDS = 64 };
  memset(g, 0, sizeof *g);
  g->best_x = NAN;
  char *line = NULL, *field[MAX_FIELDS];
  size_t cap = 0;
  int at[N_COLS];
  if (getline(&line, &cap, f) < 0) {
    free(line);
    nnrt_file_error(path, "empty; HINT: write a log with '%s train --log FILE'", nnrt_prog);
  }
  int n = split(line, field, MAX_FIELDS);
  for (int c = 0; c < N_COLS; c++) {
    at[c] = -1;
    for (int i = 0; i < n; i++)
      if (strcmp(field[i], column_names[c]) == 0)
        at[c] = i;
  }
  if (at[C_KIND] < 0 || at[C_STEP] < 0 || at[C_LOSS] < 0) {
    free(line);
    nnrt_file_error(path, "not a training log: its header needs the columns kind, step and "
                    "loss; HINT: write one with '%s train --log FILE'", nnrt_prog);
  }
  g->has_acc = at[C_ACC] >= 0;
  long lineno = 1, rows = 0;
  while (getline(&line, &cap, f) >= 0) {
    lineno++;
    n = split(line, field, MAX_FIELDS);
    if (n == 1 && !*field[0])
      continue; /* a blank line */
    double v[N_COLS];
    for (int c = C_STEP; c < N_COLS; c++)
      v[c] = at[c] >= 0 && at[c] < n ? number(path, lineno, column_names[c], field[at[c]], line,
                                              g)
                                     : NAN;
    const char *kind = at[C_KIND] < n ? field[at[C_KIND]] : "";
    rows++;
    if (strcmp(kind, "step") == 0) {
      push(&g->step_loss, v[C_STEP], v[C_LOSS]);
    } else if (strcmp(kind, "epoch") == 0) {
      push(&g->epoch_loss, v[C_STEP], v[C_LOSS]);
      push(&g->val_loss, v[C_STEP], v[C_VAL_LOSS]);
      push(&g->epoch_acc, v[C_STEP], v[C_ACC]);
      push(&g->val_acc, v[C_STEP], v[C_VAL_ACC]);
    } else if (strcmp(kind, "best") == 0) {
      g->best_x = v[C_STEP];
      g->best_epoch = strtol(field[1 < n ? 1 : 0], NULL, 10);
    } else {
      rows--;
    }
  }
  free(line);
  if (ferror(f))
    nnrt_fatal("cannot read '%s': %s", path, strerror(errno));
  if (rows == 0 || (!g->step_loss.n && !g->epoch_loss.n)) {
    log_free(g);
    nnrt_file_error(path, "no step or epoch rows with a loss to plot");
  }
}

/* Long step series averaged over groups of consecutive points, so the file stays small. */
static void thin(Series *s) {
  if (s->n <= MAX_POINTS)
    return;
  int64_t k = (s->n + MAX_POINTS - 1) / MAX_POINTS, m = 0;
  for (int64_t i = 0; i < s->n; i += k, m++) {
    int64_t end = i + k < s->n ? i + k : s->n;
    double sx = 0, sy = 0;
    for (int64_t j = i; j < end; j++)
      sx += s->x[j], sy += s->y[j];
    s->x[m] = sx / (double)(end - i);
    s->y[m] = sy / (double)(end - i);
  }
  s->n = m;
}

/* ---- drawing ---- */

/* A panel's coordinate system. */
typedef struct Axes {
  double x0, x1, y0, y1; /* data range shown */
  int log_y;             /* y on a log scale (y0, y1 then hold log10 values) */
  double top;            /* SVG y of the panel's top edge */
} Axes;

static double px(const Axes *a, double x) {
  double w = PLOT_W - MARGIN_L - MARGIN_R;
  return MARGIN_L + (a->x1 > a->x0 ? (x - a->x0) / (a->x1 - a->x0) : 0.5) * w;
}

static double py(const Axes *a, double y) {
  double h = PANEL_H - MARGIN_T - MARGIN_B;
  double v = a->log_y ? log10(y) : y;
  return a->top + MARGIN_T + h - (a->y1 > a->y0 ? (v - a->y0) / (a->y1 - a->y0) : 0.5) * h;
}

/* A round step about span/5: 1, 2 or 5 times a power of ten. */
static double nice_step(double span) {
  double raw = span / 5, p = pow(10, floor(log10(raw))), m = raw / p;
  return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

static void range_of(Series *const *s, int n, double *lo, double *hi, int xs) {
  *lo = INFINITY, *hi = -INFINITY;
  for (int i = 0; i < n; i++)
    for (int64_t j = 0; j < s[i]->n; j++) {
      double v = xs ? s[i]->x[j] : s[i]->y[j];
      *lo = v < *lo ? v : *lo;
      *hi = v > *hi ? v : *hi;
    }
}

static void polyline(FILE *f, const Axes *a, const Series *s, const char *style) {
  if (s->n == 0)
    return;
  fprintf(f, "<polyline fill=\"none\" %s points=\"", style);
  for (int64_t i = 0; i < s->n; i++)
    fprintf(f, "%s%.1f,%.1f", i ? " " : "", px(a, s->x[i]), py(a, s->y[i]));
  fprintf(f, "\"/>\n");
  if (s->n <= 60 && !strstr(style, "#9ecae1")) /* few epochs: mark each one */
    for (int64_t i = 0; i < s->n; i++)
      fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" %s/>\n", px(a, s->x[i]),
              py(a, s->y[i]), strstr(style, "#ff7f0e") ? "fill=\"#ff7f0e\"" : "fill=\"#1f77b4\"");
}

/* One legend entry, the i-th of the panel. */
static void legend(FILE *f, const Axes *a, int i, const char *style, const char *label) {
  double x = PLOT_W - MARGIN_R + 16, y = a->top + MARGIN_T + 10 + 18 * i;
  fprintf(f, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" %s/>\n", x, y, x + 22, y,
          style);
  fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" dominant-baseline=\"middle\">%s</text>\n", x + 28, y,
          label);
}

/* Frame, grid, ticks and titles of a panel whose series are `s`. */
static void panel(FILE *f, Axes *a, Series *const *s, int n, const char *title, int want_log) {
  double lo, hi;
  range_of(s, n, &lo, &hi, 0);
  a->log_y = want_log && lo > 0 && hi / lo >= 100;
  if (a->log_y) {
    a->y0 = floor(log10(lo));
    a->y1 = ceil(log10(hi));
  } else {
    double pad = hi > lo ? 0.05 * (hi - lo) : fabs(hi) > 0 ? 0.1 * fabs(hi) : 1;
    a->y0 = lo - pad;
    a->y1 = hi + pad;
    if (lo >= 0 && a->y0 < 0)
      a->y0 = 0; /* losses and accuracies are not negative */
  }
  double left = MARGIN_L, right = PLOT_W - MARGIN_R;
  double top = a->top + MARGIN_T, bottom = a->top + PANEL_H - MARGIN_B;
  fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" font-weight=\"bold\">%s%s</text>\n", left,
          a->top + 18, title, a->log_y ? " (log scale)" : "");
  fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
             "stroke=\"#888\"/>\n", left, top, right - left, bottom - top);
  /* y ticks */
  if (a->log_y) {
    for (double e = a->y0; e <= a->y1 + 1e-9; e++) {
      double y = py(a, pow(10, e));
      fprintf(f, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n",
              left, y, right, y);
      fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\" dominant-baseline=\"middle\">"
                 "%g</text>\n", left - 6, y, pow(10, e));
    }
  } else {
    double step = nice_step(a->y1 - a->y0);
    for (double v = ceil(a->y0 / step) * step; v <= a->y1 + 1e-9 * step; v += step) {
      double y = py(a, v);
      fprintf(f, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n",
              left, y, right, y);
      fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\" dominant-baseline=\"middle\">"
                 "%.4g</text>\n", left - 6, y, fabs(v) < 1e-12 * step ? 0.0 : v);
    }
  }
  /* x ticks: steps */
  double step = nice_step(a->x1 - a->x0 > 0 ? a->x1 - a->x0 : 1);
  if (step < 1)
    step = 1;
  for (double v = ceil(a->x0 / step) * step; v <= a->x1 + 1e-9; v += step) {
    double x = px(a, v);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#888\"/>\n", x,
            bottom, x, bottom + 4);
    fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.0f</text>\n", x, bottom + 16,
            v);
  }
  fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">step</text>\n",
          (left + right) / 2, bottom + 32);
}

/* The best epoch's step as a dashed vertical line. */
static void best_line(FILE *f, const Axes *a, const Log *g) {
  if (!isfinite(g->best_x))
    return;
  double x = px(a, g->best_x);
  fprintf(f, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#2ca02c\" "
             "stroke-dasharray=\"4 3\"/>\n", x, a->top + MARGIN_T, x, a->top + PANEL_H - MARGIN_B);
  fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" fill=\"#2ca02c\">best epoch %ld</text>\n", x + 4,
          a->top + MARGIN_T + 14, g->best_epoch);
}

static const char *const STEP_STYLE = "stroke=\"#9ecae1\" stroke-width=\"1\"";
static const char *const EPOCH_STYLE = "stroke=\"#1f77b4\" stroke-width=\"2\"";
static const char *const VAL_STYLE =
    "stroke=\"#ff7f0e\" stroke-width=\"2\" stroke-dasharray=\"6 3\"";

static void write_svg(FILE *f, Log *g) {
  int panels = g->has_acc && (g->epoch_acc.n || g->val_acc.n) ? 2 : 1;
  Series *all[] = {&g->step_loss, &g->epoch_loss, &g->val_loss, &g->epoch_acc, &g->val_acc};
  double x0, x1;
  range_of(all, 5, &x0, &x1, 1);
  fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
             "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
             "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n"
             "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
          PLOT_W, PANEL_H * panels, PLOT_W, PANEL_H * panels);
  Axes a = {.x0 = x0, .x1 = x1, .top = 0};
  panel(f, &a, all, 3, "loss", 1);
  polyline(f, &a, &g->step_loss, STEP_STYLE);
  polyline(f, &a, &g->epoch_loss, EPOCH_STYLE);
  polyline(f, &a, &g->val_loss, VAL_STYLE);
  best_line(f, &a, g);
  int i = 0;
  if (g->step_loss.n)
    legend(f, &a, i++, STEP_STYLE, "step loss");
  if (g->epoch_loss.n)
    legend(f, &a, i++, EPOCH_STYLE, "epoch loss");
  if (g->val_loss.n)
    legend(f, &a, i++, VAL_STYLE, "val_loss");
  if (panels == 2) {
    Axes b = {.x0 = x0, .x1 = x1, .top = PANEL_H};
    panel(f, &b, all + 3, 2, "accuracy (%)", 0);
    polyline(f, &b, &g->epoch_acc, EPOCH_STYLE);
    polyline(f, &b, &g->val_acc, VAL_STYLE);
    best_line(f, &b, g);
    i = 0;
    if (g->epoch_acc.n)
      legend(f, &b, i++, EPOCH_STYLE, "accuracy");
    if (g->val_acc.n)
      legend(f, &b, i++, VAL_STYLE, "val_accuracy");
  }
  fprintf(f, "</svg>\n");
}

void nnrt_plot_stream(FILE *log, const char *name, const char *svg) {
  Log g;
  read_log(log, name, &g);
  thin(&g.step_loss);
  FILE *f = fopen(svg, "w");
  if (!f) {
    log_free(&g);
    nnrt_fatal("cannot create '%s': %s", svg, strerror(errno));
  }
  write_svg(f, &g);
  int bad = ferror(f) != 0;
  bad |= fclose(f) != 0;
  log_free(&g);
  if (bad)
    nnrt_fatal("cannot write '%s': %s", svg, strerror(errno));
}

int nnrt_plot(const NnModelDesc *d, const NnOptions *o) {
  (void)d; /* a log carries everything the plot needs */
  char out[4096];
  const char *svg = o->output_path;
  if (!svg) { /* run.csv -> run.svg */
    const char *dot = strrchr(o->plot_input, '.'), *slash = strrchr(o->plot_input, '/');
    size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - o->plot_input)
                                                 : strlen(o->plot_input);
    snprintf(out, sizeof out, "%.*s.svg", (int)stem, o->plot_input);
    svg = out;
  }
  if (strcmp(svg, o->plot_input) == 0)
    nnrt_fatal("plot would overwrite its input '%s'; HINT: pass -o CURVES.svg", svg);
  FILE *log = fopen(o->plot_input, "r");
  if (!log)
    nnrt_fatal("cannot open '%s': %s", o->plot_input, strerror(errno));
  nnrt_plot_stream(log, o->plot_input, svg);
  fclose(log);
  if (!o->quiet)
    printf("%s: curves of %s written to %s\n", nnrt_prog, o->plot_input, svg);
  return NNRT_EXIT_OK;
}
