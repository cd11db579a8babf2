/* fuzz_jpeg.c - JPEG decoding and preprocessing (see fuzz_image.h). Inputs
 * that do not start with the JPEG marker FF D8 FF get it prepended, so every
 * input reaches libjpeg and our error handling around it. */
#include "fuzz_image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const uint8_t soi[3] = {0xFF, 0xD8, 0xFF};
  if (size >= 3 && memcmp(data, soi, 3) == 0) return fuzz_image(data, size);
  uint8_t *buf = malloc(size + 3);
  CHECK(buf, "out of memory");
  memcpy(buf, soi, 3);
  if (size) memcpy(buf + 3, data, size);
  fuzz_image(buf, size + 3);
  free(buf);
  return 0;
}
