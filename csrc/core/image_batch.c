/* image_batch.c - see image_batch.h. pthreads; items claimed from an atomic counter. */
#include "image_batch.h"

#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* The state of one run of a batch, shared by the threads that work on it. */
typedef struct run {
  const ct_batch *b;
  atomic_int next;       /* next item to claim */
  atomic_int first_fail; /* strict batches: lowest failed index so far (INT_MAX: none) */
  atomic_int failed;     /* failed items */
} run;

static void run_init(run *r, const ct_batch *b) {
  r->b = b;
  atomic_init(&r->next, 0);
  atomic_init(&r->first_fail, INT_MAX);
  atomic_init(&r->failed, 0);
}

/* One item into its row; 0 or -1 with a message in e. */
static int do_item(const ct_batch *b, int i, float *row, ct_err *e) {
  if (b->paths && b->paths[i]) return ct_preprocess_file(b->paths[i], b->p, b->ow, b->oh, row, e);
  const ct_image *img = b->images ? b->images[i] : NULL;
  if (!img || !img->rgb) return ct_errf(e, "no image");
  int w, h;
  if (ct_preproc_output_size(b->p, img->w, img->h, &w, &h, e)) return -1;
  if (w != b->ow || h != b->oh)
    return ct_errf(e, "preprocessed size %dx%d differs from the batch's %dx%d", w, h, b->ow,
                   b->oh);
  return ct_preprocess(img, b->p, row, e);
}

/* Claim and do items until none is left. */
static void run_items(run *r) {
  const ct_batch *b = r->b;
  size_t per = (size_t)3 * b->ow * b->oh;
  for (;;) {
    int i = atomic_fetch_add(&r->next, 1);
    if (i >= b->n) return;
    if (b->status[i] != CT_ITEM_PENDING) continue; /* settled by the caller */
    float *row = b->out + (size_t)i * per;
    if (b->strict && i > atomic_load(&r->first_fail)) {
      b->status[i] = CT_ITEM_SKIPPED;
      continue;
    }
    if (do_item(b, i, row, &b->errs[i]) == 0) {
      b->status[i] = CT_ITEM_OK;
      continue;
    }
    memset(row, 0, per * sizeof(float)); /* never a half-written row */
    b->status[i] = CT_ITEM_FAILED;
    atomic_fetch_add(&r->failed, 1);
    int f = atomic_load(&r->first_fail);
    while (i < f && !atomic_compare_exchange_weak(&r->first_fail, &f, i)) {
    }
  }
}

/* ------------------------------------------------------------ decoder */

struct ct_decoder {
  int n;          /* threads */
  int started;    /* threads created */
  int flags;
  pthread_t *th;
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  run r;          /* the batch in flight */
  int busy;       /* a batch is in flight (r is valid) */
  unsigned gen;   /* incremented per batch */
  int active;     /* threads working on the batch in flight */
  int stop;
};

static void *worker(void *v) {
  ct_decoder *d = v;
#if defined(__linux__) && defined(SCHED_IDLE)
  if (d->flags & CT_DECODER_IDLE) {
    struct sched_param sp;
    memset(&sp, 0, sizeof sp);
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp); /* best effort */
  }
#endif
  unsigned seen = 0;
  pthread_mutex_lock(&d->mu);
  for (;;) {
    while (!d->stop && !(d->busy && d->gen != seen)) pthread_cond_wait(&d->wake, &d->mu);
    if (d->stop) break;
    seen = d->gen;
    d->active++;
    pthread_mutex_unlock(&d->mu);
    run_items(&d->r);
    pthread_mutex_lock(&d->mu);
    if (--d->active == 0) pthread_cond_broadcast(&d->done);
  }
  pthread_mutex_unlock(&d->mu);
  return NULL;
}

ct_decoder *ct_decoder_new(int threads, int flags, ct_err *e) {
  if (threads < 1 || threads > 64) {
    ct_errf(e, "decoder: %d threads (1 to 64)", threads);
    return NULL;
  }
  ct_decoder *d = calloc(1, sizeof *d);
  if (!d || !(d->th = calloc((size_t)threads, sizeof(pthread_t)))) {
    free(d);
    ct_errf(e, "decoder: out of memory");
    return NULL;
  }
  d->n = threads;
  d->flags = flags;
  pthread_mutex_init(&d->mu, NULL);
  pthread_cond_init(&d->wake, NULL);
  pthread_cond_init(&d->done, NULL);
  /* the threads block every signal (they inherit the mask in force at pthread_create):
   * signal handlers, Lua's included, keep running in the threads that own them */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  for (int i = 0; i < threads; i++) {
    if (pthread_create(&d->th[i], NULL, worker, d) != 0) break;
    d->started++;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (d->started == 0) {
    ct_decoder_free(d);
    ct_errf(e, "decoder: cannot create a thread");
    return NULL;
  }
  d->n = d->started;
  return d;
}

int ct_decoder_threads(const ct_decoder *d) { return d ? d->n : 0; }

int ct_decoder_submit(ct_decoder *d, const ct_batch *b, ct_err *e) {
  pthread_mutex_lock(&d->mu);
  if (d->busy) {
    pthread_mutex_unlock(&d->mu);
    return ct_errf(e, "decoder: a batch is already in flight");
  }
  run_init(&d->r, b);
  d->busy = 1;
  d->gen++;
  pthread_cond_broadcast(&d->wake);
  pthread_mutex_unlock(&d->mu);
  return 0;
}

int ct_decoder_busy(const ct_decoder *d) {
  ct_decoder *m = (ct_decoder *)d;
  pthread_mutex_lock(&m->mu);
  int busy = m->busy;
  pthread_mutex_unlock(&m->mu);
  return busy;
}

/* Wait until no thread works on the batch in flight and end it; returns its failures. */
static int finish(ct_decoder *d) {
  pthread_mutex_lock(&d->mu);
  while (d->active > 0) pthread_cond_wait(&d->done, &d->mu);
  d->busy = 0;
  int failed = atomic_load(&d->r.failed);
  d->r.b = NULL;
  pthread_mutex_unlock(&d->mu);
  return failed;
}

int ct_decoder_wait(ct_decoder *d) {
  pthread_mutex_lock(&d->mu);
  int busy = d->busy;
  pthread_mutex_unlock(&d->mu);
  if (!busy) return -1;
  /* Only this thread submits, waits and cancels, so the batch stays in flight meanwhile. Once
   * the counter is past the end, no thread starts an item: the items left are those being
   * decoded by threads counted in active. */
  run_items(&d->r);
  return finish(d);
}

void ct_decoder_cancel(ct_decoder *d) {
  pthread_mutex_lock(&d->mu);
  int busy = d->busy;
  pthread_mutex_unlock(&d->mu);
  if (!busy) return;
  const ct_batch *b = d->r.b;
  int i0 = atomic_exchange(&d->r.next, b->n);
  for (int i = i0; i < b->n; i++) b->status[i] = CT_ITEM_SKIPPED;
  finish(d);
}

void ct_decoder_free(ct_decoder *d) {
  if (!d) return;
  ct_decoder_cancel(d);
  pthread_mutex_lock(&d->mu);
  d->stop = 1;
  pthread_cond_broadcast(&d->wake);
  pthread_mutex_unlock(&d->mu);
  for (int i = 0; i < d->started; i++) pthread_join(d->th[i], NULL);
  pthread_mutex_destroy(&d->mu);
  pthread_cond_destroy(&d->wake);
  pthread_cond_destroy(&d->done);
  free(d->th);
  free(d);
}

/* ------------------------------------------------------------ synchronous */

int ct_batch_run(const ct_batch *b, int threads) {
  if (threads > b->n) threads = b->n;
  ct_decoder *d = NULL;
  if (threads > 1) d = ct_decoder_new(threads - 1, 0, NULL);
  if (!d) {
    run r;
    run_init(&r, b);
    run_items(&r);
    return atomic_load(&r.failed);
  }
  ct_decoder_submit(d, b, NULL);
  int failed = ct_decoder_wait(d);
  ct_decoder_free(d);
  return failed;
}
