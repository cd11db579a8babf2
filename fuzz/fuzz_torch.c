/* fuzz_torch.c - pytorch_model.bin: the ZIP reader (zip.c) and the restricted unpickler
 * (torchfile.c), through ct_torch_parse.
 *
 * The first byte picks the mode: even, the rest is the whole file (end records, ZIP64, central
 * directory, local headers, stored and deflated members, CRCs); odd, the rest is data.pkl,
 * wrapped by the harness into a valid archive whose storages "0".."15" hold 1024 bytes each, so
 * mutations reach the unpickler instead of failing the CRC check.
 *
 * Oracles: ASan/UBSan/LSan; a refusal names the file; an accepted file has unique names, entries
 * inside the data whose size matches shape x dtype, and every entry converts to float32. */
#include "fuzz_common.h"
#include "fuzz_st.h"

#include "torchfile.h"

#include <zlib.h>

#define NSTORE 16
#define STORE_BYTES 1024

static uint8_t *zbuf;
static size_t zcap;

static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, v & 0xFFFF), put16(p + 2, v >> 16); }

/* append a stored member; central directory entries go to cd */
static size_t add_member(size_t pos, uint8_t *cd, size_t *cdpos, const char *name,
                         const uint8_t *data, size_t n) {
  size_t nl = strlen(name);
  uint32_t crc = (uint32_t)crc32(0L, data, (uInt)n);
  uint8_t *h = zbuf + pos;
  memset(h, 0, 30);
  put32(h, 0x04034b50u);
  put16(h + 4, 20);
  put32(h + 14, crc);
  put32(h + 18, (uint32_t)n);
  put32(h + 22, (uint32_t)n);
  put16(h + 26, (uint32_t)nl);
  memcpy(h + 30, name, nl);
  memcpy(h + 30 + nl, data, n);
  uint8_t *c = cd + *cdpos;
  memset(c, 0, 46);
  put32(c, 0x02014b50u);
  put16(c + 4, 20);
  put16(c + 6, 20);
  put32(c + 16, crc);
  put32(c + 20, (uint32_t)n);
  put32(c + 24, (uint32_t)n);
  put16(c + 28, (uint32_t)nl);
  put32(c + 42, (uint32_t)pos);
  memcpy(c + 46, name, nl);
  *cdpos += 46 + nl;
  return pos + 30 + nl + n;
}

static size_t wrap_pickle(const uint8_t *pkl, size_t n) {
  size_t need = 2 * (n + (NSTORE + 1) * (STORE_BYTES + 200)) + 64;
  if (need > zcap) {
    free(zbuf);
    zbuf = malloc(need);
    CHECK(zbuf, "out of memory");
    zcap = need;
  }
  static uint8_t cd[(NSTORE + 1) * 80];
  static uint8_t store[STORE_BYTES];
  for (int i = 0; i < STORE_BYTES; i++) store[i] = (uint8_t)(i * 37 + (i >> 3)); /* no NaN needed */
  size_t cdpos = 0, pos = 0;
  pos = add_member(pos, cd, &cdpos, "archive/data.pkl", pkl, n);
  for (int k = 0; k < NSTORE; k++) {
    char name[40];
    snprintf(name, sizeof name, "archive/data/%d", k);
    pos = add_member(pos, cd, &cdpos, name, store, STORE_BYTES);
  }
  memcpy(zbuf + pos, cd, cdpos);
  uint8_t *e = zbuf + pos + cdpos;
  memset(e, 0, 22);
  put32(e, 0x06054b50u);
  put16(e + 8, NSTORE + 1);
  put16(e + 10, NSTORE + 1);
  put32(e + 12, (uint32_t)cdpos);
  put32(e + 16, (uint32_t)pos);
  return pos + cdpos + 22;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const uint8_t *buf = data + 1;
  size_t len = size - 1;
  if (data[0] & 1) {
    len = wrap_pickle(data + 1, size - 1);
    buf = zbuf;
  }
  ct_st_file f;
  ct_err e;
  if (ct_torch_parse("fuzz.bin", buf, len, &f, &e) != 0) {
    check_msg(e.msg, "fuzz.bin");
    return 0;
  }
  CHECK(f.data_len <= f.map_len, "data larger than its mapping");
  for (int i = 0; i < f.n; i++) {
    const ct_st_entry *t = &f.entries[i];
    check_st_entry(&f, i);
    CHECK(ct_st_find(&f, t->name) == i, "name '%s' twice", t->name);
    float *out = malloc(((size_t)t->numel + 1) * sizeof(float));
    CHECK(out, "out of memory");
    CHECK(ct_st_to_f32(&f, i, out, &e) == 0, "entry %d does not convert: %s", i, e.msg);
    free(out);
  }
  ct_st_close(&f);
  return 0;
}
