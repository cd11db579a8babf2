/* pool.c - see pool.h. pthreads; one job at a time; the caller takes part as thread 0. */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

typedef struct {
  ct_pool *p;
  int tid;
} worker_arg;

struct ct_pool {
  int n;                /* threads in all, caller included */
  pthread_t *th;
  worker_arg *args;
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  ct_pool_fn fn;
  void *ctx;
  atomic_uint gen;      /* incremented per job */
  atomic_int pending;   /* workers still running the current job */
  atomic_int running;   /* a job is in progress (nested calls run serially) */
  int stop;
  void *scratch[CT_POOL_SCRATCH_SLOTS]; /* ct_pool_scratch_slot */
  size_t scratch_n[CT_POOL_SCRATCH_SLOTS];
};

static _Thread_local ct_pool *current;

ct_pool *ct_pool_current(void) { return current; }
ct_pool *ct_pool_make_current(ct_pool *p) {
  ct_pool *old = current;
  current = p;
  return old;
}
int ct_pool_size(const ct_pool *p) { return p ? p->n : 1; }
int ct_pool_threads(void) { return current ? current->n : 1; }

static void *worker(void *v) {
  worker_arg *a = v;
  ct_pool *p = a->p;
  unsigned seen = 0; /* gen starts at 0: a job posted before this thread ran is not missed */
  for (;;) {
    unsigned g;
    int spins = 0;
    while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
           spins < CT_POOL_SPIN) {
      ct_cpu_relax();
      spins++;
    }
    if (g == seen) {
      pthread_mutex_lock(&p->mu);
      while ((g = atomic_load(&p->gen)) == seen && !p->stop) pthread_cond_wait(&p->wake, &p->mu);
      int stop = p->stop;
      pthread_mutex_unlock(&p->mu);
      if (stop && g == seen) return NULL;
    }
    seen = g;
    p->fn(p->ctx, a->tid, p->n);
    if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
      pthread_mutex_lock(&p->mu);
      pthread_cond_signal(&p->done);
      pthread_mutex_unlock(&p->mu);
    }
  }
}

ct_pool *ct_pool_new(int n) {
  if (n < 1) n = 1;
  ct_pool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->n = n;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->done, NULL);
  atomic_init(&p->gen, 0);
  atomic_init(&p->pending, 0);
  atomic_init(&p->running, 0);
  if (n > 1) {
    p->th = calloc((size_t)n, sizeof(pthread_t));
    p->args = calloc((size_t)n, sizeof(worker_arg));
    if (!p->th || !p->args) {
      p->n = 1;
      return p;
    }
    for (int i = 1; i < n; i++) {
      p->args[i].p = p;
      p->args[i].tid = i;
      if (pthread_create(&p->th[i], NULL, worker, &p->args[i]) != 0) {
        p->n = i; /* run with the threads we got */
        break;
      }
    }
  }
  return p;
}

void ct_pool_free(ct_pool *p) {
  if (!p) return;
  if (current == p) current = NULL;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  for (int i = 1; i < p->n; i++) pthread_join(p->th[i], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->wake);
  pthread_cond_destroy(&p->done);
  free(p->th);
  free(p->args);
  for (int i = 0; i < CT_POOL_SCRATCH_SLOTS; i++) free(p->scratch[i]);
  free(p);
}

void *ct_pool_scratch_slot(ct_pool *p, int slot, size_t bytes) {
  /* inside a run (a nested call) the buffer may be in use by the outer job: none */
  if (!p || slot < 0 || slot >= CT_POOL_SCRATCH_SLOTS || atomic_load(&p->running)) return NULL;
  if (bytes > p->scratch_n[slot]) {
    void *n = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!n) return NULL;
    free(p->scratch[slot]);
    p->scratch[slot] = n;
    p->scratch_n[slot] = bytes;
  }
  return p->scratch[slot];
}

void *ct_pool_scratch(ct_pool *p, size_t bytes) { return ct_pool_scratch_slot(p, 0, bytes); }

void ct_pool_run(ct_pool *p, ct_pool_fn fn, void *ctx) {
  int expect = 0;
  if (!p || p->n <= 1 || !atomic_compare_exchange_strong(&p->running, &expect, 1)) {
    fn(ctx, 0, 1);
    return;
  }
  p->fn = fn;
  p->ctx = ctx;
  atomic_store(&p->pending, p->n - 1);
  pthread_mutex_lock(&p->mu);
  atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  fn(ctx, 0, p->n);
  int spins = 0;
  while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0 && spins < CT_POOL_SPIN) {
    ct_cpu_relax();
    spins++;
  }
  if (atomic_load(&p->pending) > 0) {
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
  }
  atomic_store(&p->running, 0);
}
