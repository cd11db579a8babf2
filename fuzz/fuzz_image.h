/* fuzz_image.h - the body of the JPEG and PNG targets: probe (header only,
 * the pixel limit), decode, then CLIPImageProcessor preprocessing with one of
 * four processor configs picked by the input length.
 *
 * Decoding is skipped above FUZZ_MAX_PIXELS = 512x512 (probing is not): a 13000x13000
 * image is legal (under the 178956970-pixel limit) but decoding it costs
 * seconds and half a gigabyte per input, which would turn every such input
 * into a fuzzer timeout. The limit itself is checked by probe on every input.
 *
 * Oracles: ASan/UBSan; a refused image gets a message that starts with its
 * name; probe and decode agree; preprocessed values are finite. */
#include "fuzz_common.h"

#include <math.h>

#include "image.h"

#define FUZZ_MAX_PIXELS (1 << 18)
#define NAME "fuzz-input"

static void preprocess(const ct_image *img, int which) {
  ct_preproc p;
  ct_err e;
  ct_preproc_default(&p);
  switch (which) {
    case 0: break; /* OpenAI: shortest edge 224, crop 224, bicubic */
    case 1:        /* small, Lanczos, crop larger than the resize (zero padding) */
      p.shortest_edge = 7;
      p.crop_w = 9;
      p.crop_h = 5;
      p.resample = CT_RESAMPLE_LANCZOS;
      break;
    case 2: /* fixed size, no crop, bilinear */
      p.shortest_edge = 0;
      p.size_w = 13;
      p.size_h = 3;
      p.do_center_crop = 0;
      p.resample = CT_RESAMPLE_BILINEAR;
      break;
    default: /* no resize: crop straight from the decoded image, box */
      p.do_resize = 0;
      p.crop_w = 16;
      p.crop_h = 16;
      p.resample = CT_RESAMPLE_BOX;
      break;
  }
  CHECK(ct_preproc_check(&p, "cfg", &e) == 0, "config %d invalid: %s", which, e.msg);
  int ow, oh;
  if (ct_preproc_output_size(&p, img->w, img->h, &ow, &oh, &e) != 0) {
    check_msg(e.msg, "preprocess");
    return;
  }
  float *out = malloc((size_t)ow * oh * 3 * sizeof(float));
  CHECK(out, "out of memory");
  if (ct_preprocess(img, &p, out, &e) == 0) {
    for (size_t i = 0; i < (size_t)ow * oh * 3; i++)
      CHECK(isfinite(out[i]), "non-finite preprocessed value at %zu", i);
  } else {
    check_msg(e.msg, "preprocess");
  }
  free(out);
}

static int fuzz_image(const uint8_t *data, size_t size) {
  int w = 0, h = 0;
  ct_err e;
  if (ct_image_probe_mem(data, size, NAME, &w, &h, &e) != 0) {
    check_msg(e.msg, NAME);
    return 0;
  }
  CHECK(w >= 1 && h >= 1 && (int64_t)w * h <= CT_IMAGE_MAX_PIXELS, "probe gave %dx%d", w, h);
  if ((int64_t)w * h > FUZZ_MAX_PIXELS) return 0;
  ct_image img = {w, h, malloc((size_t)w * h * 3)};
  CHECK(img.rgb, "out of memory");
  if (ct_image_decode_mem_into(data, size, NAME, w, h, img.rgb, &e) != 0) {
    check_msg(e.msg, NAME);
  } else {
    preprocess(&img, (int)(size % 4));
  }
  ct_image_free(&img);
  return 0;
}
