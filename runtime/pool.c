/* pool.c — the thread pool behind NN_IO_THREADS: takes a worker count, gives an NnThreads whose
 * run() calls work(arg, w) for every worker w at once, the caller being worker 0.
 *
 * A training step calls run() a few times per layer, every few hundred microseconds, so waking
 * sleeping threads through the kernel each time would cost more than small matmuls do. Workers
 * therefore spin on a generation counter for a while (yielding the CPU as they go, since the
 * cores may be shared) and only then sleep on a condition variable. The caller does not wait
 * for a worker that has not joined by the time it finished its own share: on a loaded machine
 * a worker may not get a core for milliseconds. It closes the job, so late workers skip it,
 * and waits only for those that joined (the kernels hand out work dynamically, so whatever a
 * worker does not take, the others do).
 *
 * Beside the jobs, one background job at a time (nnrt_background): the next batch's gather
 * while the caller computes this one. A waiting worker takes it, but only between jobs, so it
 * fills the time a worker would spend waiting for the caller's serial parts (the MLP's loss
 * and last layer, about 25 us a step); a job that starts meanwhile runs without that worker,
 * as it would without a late one. */
#define _GNU_SOURCE /* sched_getaffinity */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "nnrt_internal.h"

enum {
  CLOSED = 1 << 30,           /* in `active`: the job takes no more workers */
  SPINS_BEFORE_YIELD = 1000,  /* busy polls before each sched_yield */
  YIELDS_BEFORE_SLEEP = 30,   /* yields before a worker blocks (about a millisecond) */
};

enum { BG_NONE, BG_POSTED, BG_RUNNING, BG_DONE }; /* a background job's states */
/* How long a worker waits for a job before it takes the background one instead: longer than
 * the caller takes between two jobs of a step (about a microsecond), so the worker takes it in
 * the step's serial parts, not at the start of its next job. */
enum { BG_IDLE_NS = 3000 };

struct NnPool {
  NnThreads threads;          /* what the kernels see; ctx points back here */
  pthread_t *tid;             /* workers 1..n-1 (worker 0 is the caller of run) */
  int n;                      /* workers, the caller included */
  pthread_mutex_t lock;       /* guards the sleep/wake handshake */
  pthread_cond_t wake;        /* signalled when generation advances */
  atomic_long generation;     /* bumped by run(): a new job is published */
  atomic_int active;          /* workers inside the current job, | CLOSED once the caller is done */
  atomic_int sleepers;        /* workers blocked on `wake` */
  atomic_int quit;            /* workers exit (set under lock, for the sleepers) */
  NnWork work;                /* the current job */
  void *arg;
  void (*bg_fn)(void *);      /* the background job, */
  void *bg_arg;
  atomic_int bg;              /* and its state (BG_*) */
};

typedef struct Worker {
  NnPool *pool;
  int64_t index; /* 1..n-1 */
} Worker;

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Spin s of a wait on another thread: a pause, and every SPINS_BEFORE_YIELD a sched_yield
 * (the cores may be shared). */
static void backoff(int s) {
  if (s % SPINS_BEFORE_YIELD == SPINS_BEFORE_YIELD - 1) sched_yield();
  cpu_relax();
}

/* Wakes the workers blocked on `wake`, if any (only then is the syscall needed), after a new
 * job or background job is published. */
static void wake_sleepers(NnPool *p) {
  if (atomic_load(&p->sleepers) > 0) {
    pthread_mutex_lock(&p->lock);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
  }
}

static bool bg_posted(NnPool *p) { return atomic_load(&p->bg) == BG_POSTED; }

/* Runs the posted background job on this thread unless another took it first; whether it did. */
static bool run_background(NnPool *p) {
  int posted = BG_POSTED;
  if (!atomic_compare_exchange_strong(&p->bg, &posted, BG_RUNNING)) return false;
  p->bg_fn(p->bg_arg);
  atomic_store_explicit(&p->bg, BG_DONE, memory_order_release);
  return true;
}

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Waits until generation differs from `seen`, or a background job is posted and no job has
 * come for BG_IDLE_NS; returns the generation. */
static long wait_job(NnPool *p, long seen) {
  int64_t since = 0;
  for (int y = 0; y < YIELDS_BEFORE_SLEEP; y++) {
    for (int s = 0; s < SPINS_BEFORE_YIELD; s++) {
      long g = atomic_load_explicit(&p->generation, memory_order_acquire);
      if (g != seen) return g;
      if (bg_posted(p)) {
        if (!since) since = now_ns();
        else if (now_ns() - since > BG_IDLE_NS) return g;
      }
      cpu_relax();
    }
    sched_yield();
  }
  pthread_mutex_lock(&p->lock);
  atomic_fetch_add(&p->sleepers, 1);
  long g;
  while ((g = atomic_load(&p->generation)) == seen && !bg_posted(p) && !atomic_load(&p->quit))
    pthread_cond_wait(&p->wake, &p->lock);
  atomic_fetch_sub(&p->sleepers, 1);
  pthread_mutex_unlock(&p->lock);
  return g;
}

static void *worker_main(void *v) {
  Worker *w = v;
  NnPool *p = w->pool;
  long seen = 0;
  for (;;) {
    long g = wait_job(p, seen);
    if (atomic_load(&p->quit)) break;
    if (g == seen) { /* no job: the background one (unless the caller took it back) */
      run_background(p);
      continue;
    }
    seen = g;
    int a = atomic_load_explicit(&p->active, memory_order_acquire);
    while (!(a & CLOSED) && !atomic_compare_exchange_weak_explicit(
                                &p->active, &a, a + 1, memory_order_acq_rel, memory_order_acquire))
      ;
    if (a & CLOSED) continue; /* the caller finished without us */
    seen = atomic_load_explicit(&p->generation, memory_order_acquire); /* the job joined */
    p->work(p->arg, w->index);
    atomic_fetch_sub_explicit(&p->active, 1, memory_order_release);
  }
  free(w);
  return NULL;
}

static void pool_run(void *ctx, NnWork work, void *arg) {
  NnPool *p = ctx;
  if (p->n == 1) {
    work(arg, 0);
    return;
  }
  p->work = work;
  p->arg = arg;
  atomic_store_explicit(&p->active, 0, memory_order_release);
  atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
  wake_sleepers(p);
  work(arg, 0);
  atomic_fetch_or_explicit(&p->active, CLOSED, memory_order_acq_rel);
  for (int s = 0; atomic_load_explicit(&p->active, memory_order_acquire) & ~CLOSED; s++)
    backoff(s);
}

int nnrt_cpus_available(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  int n = CPU_COUNT(&set);
  return n < 1 ? 1 : n;
}

NnPool *nnrt_pool_new(int workers) {
  if (workers < 1) workers = 1;
  NnPool *p = NNRT_ALLOC(1, NnPool);
  *p = (NnPool){.n = workers};
  p->threads = (NnThreads){.run = pool_run, .ctx = p, .workers = workers};
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->wake, NULL);
  atomic_init(&p->generation, 0);
  atomic_init(&p->active, CLOSED);
  atomic_init(&p->sleepers, 0);
  atomic_init(&p->quit, 0);
  atomic_init(&p->bg, BG_NONE);
  p->tid = NNRT_ALLOC(workers, pthread_t);
  for (int i = 1; i < workers; i++) {
    Worker *w = NNRT_ALLOC(1, Worker);
    *w = (Worker){p, i};
    int e = pthread_create(&p->tid[i], NULL, worker_main, w);
    if (e) nnrt_fatal("cannot start worker thread %d of %d (error %d)", i, workers, e);
  }
  return p;
}

NnThreads *nnrt_pool_threads(NnPool *p) { return &p->threads; }

typedef struct Split {
  int64_t n, grain, count; /* count ranges of grain elements (the last one shorter) */
  void (*fn)(void *ctx, int64_t lo, int64_t hi);
  void *ctx;
  atomic_ullong taken; /* ranges taken from the front (low 32 bits) and from the back (high) */
} Split;

/* As the generated kernels share their tasks (lower_gemm.c, tasks_begin): worker 0 takes the
 * ranges from the front, the others from the back, so that a core reads about the part of a
 * buffer it wrote (the gradient's finiteness check after the weight-gradient GEMM, whose row
 * blocks are shared the same way). */
static void split_work(void *arg, int64_t w) {
  Split *s = arg;
  unsigned long long step = w == 0 ? 1 : 1ull << 32;
  for (;;) {
    unsigned long long was = atomic_fetch_add_explicit(&s->taken, step, memory_order_relaxed);
    int64_t front = (int64_t)(was & 0xffffffffull), back = (int64_t)(was >> 32);
    if (front + back >= s->count) return;
    int64_t lo = (w == 0 ? front : s->count - 1 - back) * s->grain;
    s->fn(s->ctx, lo, lo + s->grain < s->n ? lo + s->grain : s->n);
  }
}

void nnrt_split(NnThreads *t, int64_t n, int64_t grain,
                void (*fn)(void *ctx, int64_t lo, int64_t hi), void *ctx) {
  if (!t || t->workers < 2 || n <= grain) {
    if (n > 0) fn(ctx, 0, n);
    return;
  }
  Split s = {.n = n, .grain = grain, .count = (n + grain - 1) / grain, .fn = fn, .ctx = ctx};
  atomic_init(&s.taken, 0);
  t->run(t->ctx, split_work, &s);
}

void nnrt_background(NnThreads *t, void (*fn)(void *), void *arg) {
  if (!t || t->workers < 2) {
    fn(arg);
    return;
  }
  NnPool *p = t->ctx;
  nnrt_background_wait(t); /* one at a time */
  p->bg_fn = fn;
  p->bg_arg = arg;
  atomic_store(&p->bg, BG_POSTED);
  wake_sleepers(p);
}

void nnrt_background_wait(NnThreads *t) {
  if (!t || t->workers < 2) return;
  NnPool *p = t->ctx;
  if (!run_background(p)) /* a worker has it (or there is none) */
    for (int s = 0; atomic_load_explicit(&p->bg, memory_order_acquire) == BG_RUNNING; s++)
      backoff(s);
  atomic_store(&p->bg, BG_NONE);
}

void nnrt_pool_free(NnPool *p) {
  if (!p) return;
  nnrt_background_wait(&p->threads);
  pthread_mutex_lock(&p->lock);
  atomic_store(&p->quit, 1);
  atomic_fetch_add(&p->generation, 1);
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->lock);
  for (int i = 1; i < p->n; i++) pthread_join(p->tid[i], NULL);
  pthread_mutex_destroy(&p->lock);
  pthread_cond_destroy(&p->wake);
  free(p->tid);
  free(p);
}
