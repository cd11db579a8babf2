/* spec/host/decode_threads.c - the batch decoder (csrc/core/image_batch.c) without Lua, for
 * ThreadSanitizer (`make test-tsan-decode`, mk/robustness.mk): every format of the fixtures and
 * bad files, decoded on 1 to 4 threads and by a background decoder (submit/wait, cancel, free
 * with a batch in flight), compared with the serial result byte for byte.
 * usage: decode_threads <spec/fixtures/images/> [repeats]   exit 0: all equal, 1: a mismatch */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "image_batch.h"

static const char *NAMES[] = {
    "natural.jpg", "cmyk.jpg", "natural_prog.jpg", "badcrc.png", "rgb.png", "palette_trns.png",
    "interlaced_rgb.png", "gif_small.gif", "no_such_file.jpg", "gif_interlaced.gif",
    "webp_lossy.webp", "webp_lossless.webp", "truncated.jpg", "tiff_rgb.tif", "tiff_lzw.tif",
    "tiff_truncated.tif", "bmp_24.bmp", "bmp_8.bmp", "portrait.jpg", "small_20x15.png",
    "thin_7x300.png", "gray16.png", "webp_truncated.webp", "bmp_rle8.bmp"};
enum { N = sizeof NAMES / sizeof NAMES[0], S = 32 };

static char paths[N][512];
static const char *pp[N];
static float ref[N][3 * S * S];
static int ref_ok[N];

typedef struct bufs {
  float *out;
  uint8_t status[N];
  ct_err errs[N];
} bufs;

static void reset(bufs *b, ct_batch *bt, const ct_preproc *p, int strict) {
  memset(b->out, 0, sizeof(float) * N * 3 * S * S);
  memset(b->status, 0, sizeof b->status);
  ct_batch x = {p, N, S, S, pp, NULL, b->out, b->status, b->errs, strict};
  *bt = x;
}

/* every item as the serial loop gives it; strict: up to the first failure */
static int check(const bufs *b, int strict, int cancelled, const char *what) {
  int first_bad = N;
  for (int i = 0; i < N; i++)
    if (!ref_ok[i] && i < first_bad) first_bad = i;
  for (int i = 0; i < N; i++) {
    int want = ref_ok[i] ? CT_ITEM_OK : CT_ITEM_FAILED;
    if (strict && i > first_bad) {
      if (b->status[i] != CT_ITEM_SKIPPED && b->status[i] != want) goto bad;
      if (b->status[i] == CT_ITEM_SKIPPED) continue;
    }
    if (b->status[i] == CT_ITEM_SKIPPED && cancelled) continue;
    if (b->status[i] != want) goto bad;
    if (want == CT_ITEM_OK && memcmp(b->out + (size_t)i * 3 * S * S, ref[i], sizeof ref[i])) goto bad;
    if (want == CT_ITEM_FAILED && strncmp(b->errs[i].msg, paths[i], strlen(paths[i]))) goto bad;
    continue;
  bad:
    fprintf(stderr, "%s: item %d (%s): status %d, expected %d\n", what, i, NAMES[i], b->status[i],
            want);
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: decode_threads <fixtures/images/> [repeats]\n");
    return 2;
  }
  int reps = argc > 2 ? atoi(argv[2]) : 10;
  ct_preproc p;
  ct_preproc_default(&p);
  p.shortest_edge = S;
  p.crop_w = p.crop_h = S;
  for (int i = 0; i < N; i++) {
    snprintf(paths[i], sizeof paths[i], "%s%s", argv[1], NAMES[i]);
    pp[i] = paths[i];
    ct_err e;
    ref_ok[i] = ct_preprocess_file(paths[i], &p, S, S, ref[i], &e) == 0;
  }
  bufs b;
  b.out = malloc(sizeof(float) * N * 3 * S * S);
  if (!b.out) return 1;
  ct_batch bt;
  int fails = 0, runs = 0;
  for (int r = 0; r < reps; r++) {
    for (int t = 1; t <= 4; t++)
      for (int strict = 0; strict <= 1; strict++) {
        reset(&b, &bt, &p, strict);
        ct_batch_run(&bt, t);
        fails += check(&b, strict, 0, "ct_batch_run");
        runs++;
      }
    for (int flags = 0; flags <= CT_DECODER_IDLE; flags += CT_DECODER_IDLE) {
      ct_err e;
      ct_decoder *d = ct_decoder_new(1 + r % 3, flags, &e);
      if (!d) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
      }
      for (int k = 0; k < 3; k++) { /* submit / wait */
        reset(&b, &bt, &p, k == 1);
        if (ct_decoder_submit(d, &bt, &e)) return 1;
        if (ct_decoder_submit(d, &bt, &e) == 0) { /* a second one must be refused */
          fprintf(stderr, "second submit accepted\n");
          return 1;
        }
        ct_decoder_wait(d);
        fails += check(&b, k == 1, 0, "decoder");
        runs++;
      }
      if (ct_decoder_wait(d) != -1) fails++;
      reset(&b, &bt, &p, 0); /* cancel in flight */
      ct_decoder_submit(d, &bt, &e);
      ct_decoder_cancel(d);
      fails += check(&b, 0, 1, "cancel");
      reset(&b, &bt, &p, 0); /* free in flight */
      ct_decoder_submit(d, &bt, &e);
      ct_decoder_free(d);
      runs += 2;
    }
  }
  free(b.out);
  printf("decode_threads: %d runs of %d items, %d mismatches\n", runs, N, fails);
  return fails ? 1 : 0;
}
