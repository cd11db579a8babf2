/* fuzz_formats.c - GIF (giflib), WebP (libwebp), TIFF (libtiff) and BMP (our
 * own reader) decoding and preprocessing (see fuzz_image.h). Inputs that
 * already start with one of these formats' signatures are decoded as they
 * are; others get a signature prepended, chosen by the input's length (GIF,
 * WebP with a RIFF header, little-endian TIFF, BMP), so every input reaches
 * one of the four decoders. Seeds: the GIF/WebP/TIFF/BMP fixtures of
 * spec/fixtures/images, good and broken. */
#include "fuzz_image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int f = ct_image_sniff(data, size);
  if (f == CT_FMT_GIF || f == CT_FMT_WEBP || f == CT_FMT_TIFF || f == CT_FMT_BMP)
    return fuzz_image(data, size);
  uint8_t head[12];
  size_t k;
  switch (size % 4) {
    case 0: memcpy(head, "GIF89a", k = 6); break;
    case 1: {
      uint32_t riff = (uint32_t)(size + 4);
      memcpy(head, "RIFF", 4);
      head[4] = (uint8_t)riff, head[5] = (uint8_t)(riff >> 8), head[6] = (uint8_t)(riff >> 16),
      head[7] = (uint8_t)(riff >> 24);
      memcpy(head + 8, "WEBP", 4);
      k = 12;
      break;
    }
    case 2: memcpy(head, "II*\0", k = 4); break;
    default: memcpy(head, "BM", k = 2); break;
  }
  uint8_t *buf = malloc(size + k);
  CHECK(buf, "out of memory");
  memcpy(buf, head, k);
  if (size) memcpy(buf + k, data, size);
  fuzz_image(buf, size + k);
  free(buf);
  return 0;
}
