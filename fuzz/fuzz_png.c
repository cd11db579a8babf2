/* fuzz_png.c - PNG decoding and preprocessing (see fuzz_image.h). Inputs
 * that do not start with the PNG signature get it prepended, so every input
 * reaches libpng and our error handling around it. CRCs are checked, so most
 * mutations of a chunk body would end in a CRC error: half of the inputs
 * (even length) get their CRCs recomputed first. The seeds come from
 * spec/fixtures/images and cover every color type and bit depth. */
#include "fuzz_image.h"

#include <zlib.h>

/* Recompute the CRC of every complete chunk, so that mutations of chunk
 * bodies reach the decoder instead of stopping at the checksum. */
static void fix_crcs(uint8_t *p, size_t n) {
  size_t pos = 8;
  while (pos + 12 <= n) {
    uint32_t len = (uint32_t)p[pos] << 24 | (uint32_t)p[pos + 1] << 16 |
                   (uint32_t)p[pos + 2] << 8 | p[pos + 3];
    if (len > n - pos - 12) break;
    uint32_t c = (uint32_t)crc32(0L, p + pos + 4, len + 4);
    uint8_t *q = p + pos + 8 + len;
    q[0] = (uint8_t)(c >> 24);
    q[1] = (uint8_t)(c >> 16);
    q[2] = (uint8_t)(c >> 8);
    q[3] = (uint8_t)c;
    pos += 12 + (size_t)len;
  }
}

/* Inputs of odd length are decoded as they are (bad CRCs stay errors);
 * inputs of even length get their CRCs fixed first. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  int has_sig = size >= 8 && memcmp(data, sig, 8) == 0;
  if (has_sig && size % 2) return fuzz_image(data, size);
  size_t n = has_sig ? size : size + 8;
  uint8_t *buf = malloc(n);
  CHECK(buf, "out of memory");
  memcpy(buf, sig, 8);
  if (size) memcpy(buf + (has_sig ? 0 : 8), data, size);
  if (size % 2 == 0) fix_crcs(buf, n);
  fuzz_image(buf, n);
  free(buf);
  return 0;
}
