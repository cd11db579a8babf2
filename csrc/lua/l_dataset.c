/* l_dataset.c - dataset files read in C: IDX files (MNIST / Fashion-MNIST format), gzip'd or not,
 * through zlib, and turning 8-bit grayscale rows into normalized CLIP pixel
 * batches.
 *
 *   core.read_idx(path) -> Tensor (float32 values of the u8 data), shape = the
 *                          file's dims
 *   core.gray_pixels(images {N,H,W}, rows (1-based list), mean, std [, flips])
 *        -> Tensor {B,3,H,W}: x = float32(u8 * (1/255)); (x - mean) / std,
 *           each image mirrored left-right where flips[b] is true (augmentation),
 *           replicated to three channels - what CLIPImageProcessor gives for a
 *           grayscale image whose size already equals the crop.
 *
 * Only unsigned-byte IDX data (type 0x08) is read. Every dimension is checked
 * against the bytes present before anything is allocated. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <zlib.h>

#include "l_tensor.h"
#include "lclip.h"

#define GZ_MT "clip.GzFile"

static int gz_gc(lua_State *L) {
  gzFile *g = luaL_checkudata(L, 1, GZ_MT);
  if (*g) gzclose(*g);
  *g = NULL;
  return 0;
}

static int read_exact(gzFile g, void *buf, size_t n) {
  uint8_t *p = buf;
  while (n > 0) {
    unsigned chunk = n > (1u << 30) ? (1u << 30) : (unsigned)n;
    int r = gzread(g, p, chunk);
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static int l_read_idx(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  gzFile *g = lua_newuserdatauv(L, sizeof(gzFile), 0); /* before acquiring */
  *g = NULL;
  luaL_setmetatable(L, GZ_MT);
  *g = gzopen(path, "rb");
  if (!*g) return luaL_error(L, "%s: %s", path, errno ? strerror(errno) : "cannot open");
  uint8_t hdr[4];
  if (read_exact(*g, hdr, 4) != 0) return luaL_error(L, "%s: not an IDX file (too short)", path);
  if (hdr[0] != 0 || hdr[1] != 0) return luaL_error(L, "%s: not an IDX file (bad magic)", path);
  if (hdr[2] != 0x08) return l_errorf(L, "%s: IDX data type 0x%02x is not supported (unsigned byte only)", path, hdr[2]);
  int nd = hdr[3];
  if (nd < 1 || nd > CT_MAXDIM) return luaL_error(L, "%s: IDX file with %d dimensions", path, nd);
  int64_t shape[CT_MAXDIM], total = 1;
  for (int i = 0; i < nd; i++) {
    uint8_t b[4];
    if (read_exact(*g, b, 4) != 0) return luaL_error(L, "%s: truncated IDX header", path);
    shape[i] = ((int64_t)b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3];
    if (shape[i] <= 0 || (total *= shape[i]) > ((int64_t)1 << 32))
      return luaL_error(L, "%s: IDX dimension %d is invalid or too large", path, i + 1);
  }
  /* read into a scratch userdata first: the data must exist before the tensor is made */
  uint8_t *raw = lua_newuserdatauv(L, (size_t)total, 0);
  if (read_exact(*g, raw, (size_t)total) != 0)
    return l_errorf(L, "%s: truncated IDX data (expected %lld bytes)", path, (long long)total);
  gzclose(*g);
  *g = NULL;
  l_tensor *t = l_tensor_new(L, nd, shape);
  for (int64_t i = 0; i < total; i++) t->data[i] = raw[i];
  return 1;
}

static int l_gray_pixels(lua_State *L) {
  l_tensor *src = l_checktensor(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  float mean = (float)luaL_checknumber(L, 3), std = (float)luaL_checknumber(L, 4);
  if (src->ndim != 3) return luaL_error(L, "gray_pixels: expected images {N,H,W}");
  int64_t N = src->shape[0], H = src->shape[1], W = src->shape[2];
  int B = (int)luaL_len(L, 2);
  int has_flips = lua_istable(L, 5);
  if (B == 0) return luaL_error(L, "gray_pixels: empty batch");
  int64_t shape[4] = {B, 3, H, W};
  l_tensor *o = l_tensor_new(L, 4, shape);
  const double rescale = 1.0 / 255.0;
  size_t plane = (size_t)(H * W);
  for (int b = 0; b < B; b++) {
    lua_geti(L, 2, b + 1);
    lua_Integer r = luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (r < 1 || r > N) return luaL_error(L, "gray_pixels: row %d out of range 1..%d", (int)r, (int)N);
    int flip = 0;
    if (has_flips) {
      lua_geti(L, 5, b + 1);
      flip = lua_toboolean(L, -1);
      lua_pop(L, 1);
    }
    const float *s = src->data + (size_t)(r - 1) * plane;
    float *d = o->data + (size_t)b * 3 * plane;
    for (int64_t y = 0; y < H; y++)
      for (int64_t x0 = 0; x0 < W; x0++) {
        float x = (float)((double)s[y * W + (flip ? W - 1 - x0 : x0)] * rescale);
        d[y * W + x0] = (x - mean) / std;
      }
    memcpy(d + plane, d, plane * sizeof(float));
    memcpy(d + 2 * plane, d, plane * sizeof(float));
  }
  return 1;
}

void l_dataset_open(lua_State *L) {
  luaL_newmetatable(L, GZ_MT);
  lua_pushcfunction(L, gz_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_read_idx);
  lua_setfield(L, -2, "read_idx");
  lua_pushcfunction(L, l_gray_pixels);
  lua_setfield(L, -2, "gray_pixels");
}
