/* image_batch.h - decode + preprocess a batch of images on threads, one error per item.
 * No Lua here (docs/design.md, "Decoding on threads"; docs/images.md, "Batches on threads").
 *
 * A batch (ct_batch) names n items (paths, or decoded images) and the caller's memory the
 * results go to: one {3, oh, ow} float row per item, one status byte and one ct_err per item.
 * Items are independent: threads claim them one at a time from an atomic counter (image sizes
 * vary, so claiming beats a static split), each decodes and preprocesses its item into its own
 * row with ct_preprocess_file / ct_preprocess, exactly as the serial code does, so every row is
 * bit-identical to the serial result whatever the thread count.
 *
 * Two ways to run one:
 *  - ct_batch_run: synchronous; the calling thread plus threads - 1 helper threads made for
 *    the call.
 *  - ct_decoder: a small pool of background threads for prefetching: ct_decoder_submit starts
 *    a batch and returns at once; ct_decoder_wait joins in (the caller decodes unclaimed items
 *    too) and returns when every item is done. One batch in flight at a time.
 *
 * Nothing here touches the GEMM pool (pool.h): the decoder threads have no current pool.
 * Thread safety of the decoders themselves (libjpeg, libpng, giflib, libwebp, libtiff, the
 * hand-written BMP reader, the resampler): every call keeps its state on its stack or in its
 * own library handle, with per-handle error handlers (setjmp per call for libjpeg and libpng,
 * per-handle handlers for libtiff), and image.c / image_formats.c hold no mutable static data.
 * Nothing here prints, exits or aborts. */
#ifndef CT_IMAGE_BATCH_H
#define CT_IMAGE_BATCH_H

#include <stdint.h>

#include "ct.h"
#include "image.h"

/* status of an item */
enum {
  CT_ITEM_PENDING = 0, /* not done (only seen before a run ends) */
  CT_ITEM_OK = 1,      /* its row holds the preprocessed image */
  CT_ITEM_FAILED = 2,  /* errs[i] says why (the message starts with the path); its row is zero */
  CT_ITEM_SKIPPED = 3  /* not attempted: after the first failure of a strict batch, or cancelled;
                          its row is zero */
};

typedef struct ct_batch {
  const ct_preproc *p; /* the processor; read only */
  int n;               /* items, >= 1 */
  int ow, oh;          /* output size of every item (ct_preproc_output_size); an item that
                          comes out at another size fails */
  const char *const *paths;        /* paths[i]: decode this file; NULL: use images[i] */
  const ct_image *const *images;   /* may be NULL when every item is a path */
  float *out;          /* n * 3 * oh * ow floats, zero-filled by the caller; row i = item i */
  uint8_t *status;     /* n entries: CT_ITEM_PENDING, or an item the caller has settled already
                          (e.g. CT_ITEM_FAILED with its errs[i]), which is left as it is */
  ct_err *errs;        /* n entries; errs[i] is set where status[i] == CT_ITEM_FAILED */
  int strict;          /* nonzero: once an item fails, items after it are skipped (items before
                          it still run, so the lowest failed index is the one the serial loop
                          would have stopped at) */
} ct_batch;

/* Run b on the calling thread and threads - 1 helper threads (threads < 1 means 1; more
 * threads than items are not started). Returns the number of failed items. If a helper
 * thread cannot be created, the threads that exist do all the work. */
int ct_batch_run(const ct_batch *b, int threads);

/* Background decoder. */
typedef struct ct_decoder ct_decoder;

enum {
  CT_DECODER_IDLE = 1 /* the threads run with SCHED_IDLE (Linux): they take only CPU time no
                         other thread wants, so they never preempt the GEMM pool's threads;
                         ct_decoder_wait then finishes what they did not get to */
};

/* threads background threads (1 to 64); flags: CT_DECODER_*. NULL with a message in e when
 * out of memory or no thread could be created. */
ct_decoder *ct_decoder_new(int threads, int flags, ct_err *e);
int ct_decoder_threads(const ct_decoder *d);
/* Start b on the background threads and return. b, and all the memory it points to, must stay
 * valid and untouched until ct_decoder_wait or ct_decoder_cancel returns. -1 (message in e)
 * when a batch is already in flight. */
int ct_decoder_submit(ct_decoder *d, const ct_batch *b, ct_err *e);
/* 1 while a batch is in flight (submitted and not yet waited for or cancelled). */
int ct_decoder_busy(const ct_decoder *d);
/* Finish the batch in flight, the calling thread decoding unclaimed items too, and return its
 * number of failed items; -1 when none is in flight. */
int ct_decoder_wait(ct_decoder *d);
/* Stop the batch in flight: unclaimed items become CT_ITEM_SKIPPED, items being decoded are
 * waited for. Nothing in flight: nothing happens. */
void ct_decoder_cancel(ct_decoder *d);
/* Cancel, stop and join the threads, free. NULL is allowed. */
void ct_decoder_free(ct_decoder *d);

#endif
