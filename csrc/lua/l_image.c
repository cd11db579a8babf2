/* l_image.c - Lua bindings of the image area: clip.Image, clip.Processor, clip.ImageLoader.
 *
 * An Image is a userdata { ct_image, closed } whose pixels live in a second,
 * plain userdata held as its user value 1, so Lua's GC counts the bytes.
 * __gc and __close share one idempotent release (drop the pixel block);
 * methods on a closed image raise. Encoded files are read into a temporary
 * userdata too, so an error cannot leak them. Core calls allocate only scratch
 * that they free before returning.
 *
 * clip.core functions added here:
 *   image_load(path) -> Image            image_decode(bytes [, name]) -> Image
 *   image_from_bytes(w, h, rgb) -> Image image_resize(img, w, h [, filter]) -> Image
 *   image_center_crop(img, w, h) -> Image  image_is(x) -> boolean
 *   image_resize_coeffs(in, out [, filter [, "f64"]]) -> bounds, coeffs (tests)
 *   processor_new([table]) / processor_parse(json [, name]) / processor_load(path)
 *   image_loader(proc [, {threads, skip_errors, idle}]) -> ImageLoader
 *   image_max_pixels
 * Processor methods: config, output_size, resize_crop, preprocess,
 *   preprocess_batch(list [, {threads, skip_errors}]) (on threads: image_batch.h).
 * ImageLoader methods: submit(paths), wait(), pending(), close(), is_closed().
 * Errors raise with the message of the core (path first).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "image.h"
#include "image_batch.h"
#include "l_tensor.h"
#include "lauxlib.h"
#include "lclip.h"
#include "lua.h"
#include "pool.h"

#define IMAGE_MT "clip.Image"
#define PROC_MT "clip.Processor"

typedef struct l_image {
  ct_image img;
  int closed;
} l_image;

/* ------------------------------------------------------------ helpers */

/* Push a new Image of w x h with a zeroed pixel block. */
static l_image *image_push(lua_State *L, int w, int h) {
  if (w < 1 || h < 1 || (int64_t)w * h > CT_IMAGE_MAX_PIXELS)
    l_errorf(L, "image: invalid size %dx%d (1x1 up to %lld pixels)", w, h,
               (long long)CT_IMAGE_MAX_PIXELS);
  l_image *im = lua_newuserdatauv(L, sizeof *im, 1);
  im->img.w = im->img.h = 0;
  im->img.rgb = NULL;
  im->closed = 0;
  luaL_setmetatable(L, IMAGE_MT);
  size_t n = (size_t)w * h * 3;
  uint8_t *block = lua_newuserdatauv(L, n, 0);
  memset(block, 0, n);
  lua_setiuservalue(L, -2, 1);
  im->img.w = w;
  im->img.h = h;
  im->img.rgb = block;
  return im;
}

static l_image *check_image(lua_State *L, int idx) {
  l_image *im = luaL_checkudata(L, idx, IMAGE_MT);
  if (im->closed || !im->img.rgb) l_errorf(L, "clip.Image: the image is closed");
  return im;
}

static l_image *test_image(lua_State *L, int idx) {
  l_image *im = luaL_testudata(L, idx, IMAGE_MT);
  if (im && (im->closed || !im->img.rgb)) l_errorf(L, "clip.Image: the image is closed");
  return im;
}

static void raise_err(lua_State *L, const ct_err *e) { luaL_error(L, "%s", e->msg); }


/* Read a whole file into a new userdata pushed on the stack. The block is
 * created before the file is opened, and nothing calls Lua while it is open. */
static const uint8_t *read_file_ud(lua_State *L, const char *path, size_t *len) {
  struct stat st;
  if (stat(path, &st) != 0) l_errorf(L, "%s: %s", path, strerror(errno));
  if (S_ISDIR(st.st_mode)) l_errorf(L, "%s: is a directory, expected an image file", path);
  if ((uint64_t)st.st_size > (uint64_t)CT_IMAGE_MAX_FILE)
    l_errorf(L, "%s: file too large (%lld bytes, limit %zu)", path, (long long)st.st_size,
               CT_IMAGE_MAX_FILE);
  size_t n = (size_t)st.st_size;
  uint8_t *buf = lua_newuserdatauv(L, n ? n : 1, 0);
  FILE *f = fopen(path, "rb");
  if (!f) l_errorf(L, "%s: %s", path, strerror(errno));
  size_t got = n ? fread(buf, 1, n, f) : 0;
  int err = ferror(f);
  fclose(f);
  if (err) l_errorf(L, "%s: read error", path);
  *len = got;
  return buf;
}

/* Decode bytes into a new Image pushed on the stack. */
static l_image *decode_push(lua_State *L, const uint8_t *buf, size_t n, const char *name) {
  ct_err e;
  int w, h;
  if (ct_image_probe_mem(buf, n, name, &w, &h, &e)) raise_err(L, &e);
  l_image *im = image_push(L, w, h);
  if (ct_image_decode_mem_into(buf, n, name, w, h, im->img.rgb, &e)) raise_err(L, &e);
  return im;
}

/* Image at idx, or load the path at idx (pushing the new Image). */
static const ct_image *arg_image(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char *path = lua_tostring(L, idx);
    size_t n;
    const uint8_t *buf = read_file_ud(L, path, &n);
    l_image *im = decode_push(L, buf, n, path);
    lua_remove(L, -2); /* the file block */
    return &im->img;
  }
  l_image *im = test_image(L, idx);
  if (!im) luaL_typeerror(L, idx, "clip.Image or path");
  return &im->img;
}

static int check_filter(lua_State *L, int idx) {
  lua_Integer f = luaL_optinteger(L, idx, CT_RESAMPLE_BICUBIC);
  if (f < 0 || f > 5) luaL_argerror(L, idx, "resample filter must be 1..5 (Pillow numbering)");
  return (int)f;
}

static int check_side(lua_State *L, int idx, const char *what) {
  lua_Integer v = luaL_checkinteger(L, idx);
  if (v < 1 || v > (1 << 28))
    l_errorf(L, "%s: invalid size %lld (must be at least 1)", what, (long long)v);
  return (int)v;
}

/* --------------------------------------------------------- module funcs */

static int l_image_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t n;
  const uint8_t *buf = read_file_ud(L, path, &n);
  decode_push(L, buf, n, path);
  return 1;
}

static int l_image_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *name = luaL_optstring(L, 2, "<bytes>");
  decode_push(L, (const uint8_t *)s, n, name);
  return 1;
}

static int l_image_from_bytes(lua_State *L) {
  lua_Integer w = luaL_checkinteger(L, 1), h = luaL_checkinteger(L, 2);
  size_t n;
  const char *s = luaL_checklstring(L, 3, &n);
  if (w < 1 || h < 1 || w * h > CT_IMAGE_MAX_PIXELS)
    return l_errorf(L, "image.from_bytes: invalid size %lldx%lld", (long long)w,
                      (long long)h);
  if ((lua_Integer)n != w * h * 3)
    return l_errorf(L, "image.from_bytes: %zu bytes given, a %lldx%lld RGB image needs %lld",
                      n, (long long)w, (long long)h, (long long)(w * h * 3));
  l_image *im = image_push(L, (int)w, (int)h);
  memcpy(im->img.rgb, s, n);
  return 1;
}

static int l_image_is(lua_State *L) {
  lua_pushboolean(L, luaL_testudata(L, 1, IMAGE_MT) != NULL);
  return 1;
}

static int l_image_resize(lua_State *L) {
  const ct_image *in = &check_image(L, 1)->img;
  int w = check_side(L, 2, "image.resize"), h = check_side(L, 3, "image.resize");
  int f = check_filter(L, 4);
  ct_err e;
  if ((int64_t)w * h > CT_IMAGE_MAX_PIXELS)
    return l_errorf(L, "image.resize: %dx%d is over the limit of %lld pixels", w, h,
                      (long long)CT_IMAGE_MAX_PIXELS);
  l_image *out = image_push(L, w, h);
  if (ct_image_resize_into(in, w, h, f, out->img.rgb, &e)) raise_err(L, &e);
  return 1;
}

static int l_image_center_crop(lua_State *L) {
  const ct_image *in = &check_image(L, 1)->img;
  int w = check_side(L, 2, "image.center_crop"), h = check_side(L, 3, "image.center_crop");
  ct_err e;
  if ((int64_t)w * h > CT_IMAGE_MAX_PIXELS)
    return l_errorf(L, "image.center_crop: %dx%d is over the limit of %lld pixels", w, h,
                      (long long)CT_IMAGE_MAX_PIXELS);
  l_image *out = image_push(L, w, h);
  if (ct_image_center_crop_into(in, w, h, out->img.rgb, &e)) raise_err(L, &e);
  return 1;
}

/* bounds = {{xmin, ntaps}, ...} (xmin 0-based), coeffs = {{k0, k1, ...}, ...}
 * (ntaps values each): Pillow's fixed-point coefficients, or the doubles
 * before conversion when the 4th argument is "f64". */
static int l_image_resize_coeffs(lua_State *L) {
  int in = check_side(L, 1, "resize_coeffs"), out = check_side(L, 2, "resize_coeffs");
  int f = check_filter(L, 3);
  int f64 = lua_isstring(L, 4) && strcmp(lua_tostring(L, 4), "f64") == 0;
  int ksize = ct_resample_ksize(in, out, f);
  if (ksize < 0) return l_errorf(L, "resize_coeffs: unsupported filter %d", f);
  if ((int64_t)ksize * out > (1 << 24)) return l_errorf(L, "resize_coeffs: too many");
  int *bounds = lua_newuserdatauv(L, sizeof(int) * 2 * (size_t)out, 0);
  void *k = lua_newuserdatauv(L, (f64 ? sizeof(double) : sizeof(int32_t)) * (size_t)ksize * out, 0);
  if (f64) ct_resample_coeffs_f64(in, out, f, 0, out, bounds, k);
  else ct_resample_coeffs(in, out, f, 0, out, bounds, k);
  lua_createtable(L, out, 0);
  lua_createtable(L, out, 0);
  for (int i = 0; i < out; i++) {
    lua_createtable(L, 2, 0);
    lua_pushinteger(L, bounds[2 * i]);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, bounds[2 * i + 1]);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -3, i + 1);
    lua_createtable(L, bounds[2 * i + 1], 0);
    for (int x = 0; x < bounds[2 * i + 1]; x++) {
      if (f64) lua_pushnumber(L, ((double *)k)[(size_t)i * ksize + x]);
      else lua_pushinteger(L, ((int32_t *)k)[(size_t)i * ksize + x]);
      lua_rawseti(L, -2, x + 1);
    }
    lua_rawseti(L, -2, i + 1);
  }
  return 2;
}

/* ------------------------------------------------------- Image methods */

static int image_release(lua_State *L) {
  l_image *im = luaL_checkudata(L, 1, IMAGE_MT);
  if (!im->closed) {
    im->closed = 1;
    im->img.rgb = NULL;
    lua_pushnil(L);
    lua_setiuservalue(L, 1, 1); /* the pixel block becomes garbage */
  }
  return 0;
}

static int image_bytes(lua_State *L) {
  l_image *im = check_image(L, 1);
  lua_pushlstring(L, (const char *)im->img.rgb, (size_t)im->img.w * im->img.h * 3);
  return 1;
}

static int image_size(lua_State *L) {
  l_image *im = check_image(L, 1);
  lua_pushinteger(L, im->img.w);
  lua_pushinteger(L, im->img.h);
  return 2;
}

/* img:pixel(x, y) -> r, g, b with 1-based x, y */
static int image_pixel(lua_State *L) {
  l_image *im = check_image(L, 1);
  lua_Integer x = luaL_checkinteger(L, 2), y = luaL_checkinteger(L, 3);
  if (x < 1 || y < 1 || x > im->img.w || y > im->img.h)
    return l_errorf(L, "clip.Image:pixel: (%lld, %lld) is outside the %dx%d image",
                      (long long)x, (long long)y, im->img.w, im->img.h);
  const uint8_t *p = im->img.rgb + ((size_t)(y - 1) * im->img.w + (size_t)(x - 1)) * 3;
  for (int c = 0; c < 3; c++) lua_pushinteger(L, p[c]);
  return 3;
}

static int image_is_closed(lua_State *L) {
  l_image *im = luaL_checkudata(L, 1, IMAGE_MT);
  lua_pushboolean(L, im->closed);
  return 1;
}

static int image_tostring(lua_State *L) {
  l_image *im = luaL_checkudata(L, 1, IMAGE_MT);
  if (im->closed) lua_pushliteral(L, "clip.Image(closed)");
  else lua_pushfstring(L, "clip.Image(%dx%d)", im->img.w, im->img.h);
  return 1;
}

static int image_index(lua_State *L) {
  l_image *im = luaL_checkudata(L, 1, IMAGE_MT);
  const char *k = lua_tostring(L, 2);
  if (k && (strcmp(k, "width") == 0 || strcmp(k, "height") == 0)) {
    if (im->closed) return l_errorf(L, "clip.Image: the image is closed");
    lua_pushinteger(L, k[0] == 'w' ? im->img.w : im->img.h);
    return 1;
  }
  if (k && strcmp(k, "closed") == 0) {
    lua_pushboolean(L, im->closed);
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

static const luaL_Reg image_methods[] = {{"bytes", image_bytes},   {"size", image_size},
                                         {"pixel", image_pixel},   {"close", image_release},
                                         {"is_closed", image_is_closed}, {NULL, NULL}};

/* ---------------------------------------------------------- Processor */

static ct_preproc *check_proc(lua_State *L, int idx) { return luaL_checkudata(L, idx, PROC_MT); }

static ct_preproc *proc_push(lua_State *L) {
  ct_preproc *p = lua_newuserdatauv(L, sizeof *p, 0);
  ct_preproc_default(p);
  luaL_setmetatable(L, PROC_MT);
  return p;
}

static int tbl_int(lua_State *L, int idx, const char *key, int *out) {
  int t = lua_getfield(L, idx, key);
  int ok = lua_isinteger(L, -1);
  if (ok) *out = (int)lua_tointeger(L, -1);
  else if (t == LUA_TNUMBER) {
    lua_Number v = lua_tonumber(L, -1);
    ok = v == (lua_Number)(int)v;
    if (ok) *out = (int)v;
  }
  lua_pop(L, 1);
  return t == LUA_TNIL ? 0 : ok ? 1 : -1;
}

/* size-like value at top: number, {h, w}, {shortest_edge=}, {height=, width=} */
static void tbl_size(lua_State *L, const char *key, int square, int *shortest, int *w, int *h) {
  int idx = lua_gettop(L);
  int a, b;
  *shortest = 0;
  if (lua_isinteger(L, idx)) {
    a = (int)lua_tointeger(L, idx);
    if (square) *w = *h = a;
    else *shortest = a;
    return;
  }
  if (lua_istable(L, idx)) {
    int r;
    if (!square && (r = tbl_int(L, idx, "shortest_edge", &a)) != 0) {
      if (r > 0) {
        *shortest = a;
        return;
      }
    } else if (tbl_int(L, idx, "height", &a) > 0 && tbl_int(L, idx, "width", &b) > 0) {
      *h = a;
      *w = b;
      return;
    } else if (lua_rawlen(L, idx) == 2) {
      lua_rawgeti(L, idx, 1);
      lua_rawgeti(L, idx, 2);
      if (lua_isinteger(L, -2) && lua_isinteger(L, -1)) {
        *h = (int)lua_tointeger(L, -2);
        *w = (int)lua_tointeger(L, -1);
        lua_pop(L, 2);
        return;
      }
      lua_pop(L, 2);
    }
  }
  l_errorf(L, "processor: option '%s' must be an integer, {height, width}%s or "
                "{height = h, width = w}", key, square ? "" : ", {shortest_edge = n}");
}

static void tbl_triple(lua_State *L, const char *key, double out[3]) {
  int idx = lua_gettop(L);
  if (lua_type(L, idx) == LUA_TNUMBER) {
    out[0] = out[1] = out[2] = lua_tonumber(L, idx);
    return;
  }
  if (lua_istable(L, idx) && lua_rawlen(L, idx) == 3) {
    for (int i = 0; i < 3; i++) {
      lua_rawgeti(L, idx, i + 1);
      if (lua_type(L, -1) != LUA_TNUMBER) break;
      out[i] = lua_tonumber(L, -1);
      lua_pop(L, 1);
      if (i == 2) return;
    }
  }
  l_errorf(L, "processor: option '%s' must be a number or a list of 3 numbers", key);
}

static int known_ignored(const char *k) {
  size_t n = strlen(k);
  return (n > 5 && strcmp(k + n - 5, "_type") == 0) ||
         (n > 6 && strcmp(k + n - 6, "_class") == 0);
}

/* processor_new([opts]) with the keys of preprocessor_config.json */
static int l_processor_new(lua_State *L) {
  if (lua_isnoneornil(L, 1)) {
    proc_push(L);
    return 1;
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  ct_preproc *p = proc_push(L);
  static const char *flags[] = {"do_convert_rgb", "do_resize", "do_center_crop", "do_rescale",
                                "do_normalize", NULL};
  int *fp[] = {&p->do_convert_rgb, &p->do_resize, &p->do_center_crop, &p->do_rescale,
               &p->do_normalize};
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    if (lua_type(L, -2) != LUA_TSTRING) l_errorf(L, "processor: option keys must be strings");
    const char *k = lua_tostring(L, -2);
    int done = 0;
    for (int i = 0; flags[i]; i++)
      if (strcmp(k, flags[i]) == 0) {
        if (!lua_isboolean(L, -1)) l_errorf(L, "processor: option '%s' must be a boolean", k);
        *fp[i] = lua_toboolean(L, -1);
        done = 1;
      }
    if (done) {
    } else if (strcmp(k, "size") == 0) {
      tbl_size(L, k, 0, &p->shortest_edge, &p->size_w, &p->size_h);
    } else if (strcmp(k, "crop_size") == 0) {
      int se;
      tbl_size(L, k, 1, &se, &p->crop_w, &p->crop_h);
    } else if (strcmp(k, "resample") == 0) {
      if (!lua_isinteger(L, -1)) l_errorf(L, "processor: option 'resample' must be an integer");
      p->resample = (int)lua_tointeger(L, -1);
    } else if (strcmp(k, "rescale_factor") == 0) {
      if (lua_type(L, -1) != LUA_TNUMBER)
        l_errorf(L, "processor: option 'rescale_factor' must be a number");
      p->rescale_factor = lua_tonumber(L, -1);
    } else if (strcmp(k, "image_mean") == 0) {
      tbl_triple(L, k, p->mean);
    } else if (strcmp(k, "image_std") == 0) {
      tbl_triple(L, k, p->std);
    } else if (!known_ignored(k)) {
      l_errorf(L, "processor: unknown option '%s' (expected the keys of "
                    "preprocessor_config.json)", k);
    }
    lua_pop(L, 1);
  }
  ct_err e;
  if (ct_preproc_check(p, "processor", &e)) raise_err(L, &e);
  return 1;
}

static int l_processor_parse(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *name = luaL_optstring(L, 2, "preprocessor config");
  ct_preproc *p = proc_push(L);
  ct_err e;
  if (ct_preproc_parse(s, n, name, p, &e)) raise_err(L, &e);
  return 1;
}

/* a file, or a model directory holding preprocessor_config.json */
static int l_processor_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    lua_pushfstring(L, "%s%spreprocessor_config.json", path,
                    path[0] && path[strlen(path) - 1] == '/' ? "" : "/");
    path = lua_tostring(L, -1);
  }
  size_t n;
  const uint8_t *buf = read_file_ud(L, path, &n);
  ct_preproc *p = proc_push(L);
  ct_err e;
  if (ct_preproc_parse((const char *)buf, n, path, p, &e)) raise_err(L, &e);
  return 1;
}

static void set_triple(lua_State *L, const char *k, const double *v) {
  lua_createtable(L, 3, 0);
  for (int i = 0; i < 3; i++) {
    lua_pushnumber(L, v[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, k);
}

static int proc_config(lua_State *L) {
  ct_preproc *p = check_proc(L, 1);
  lua_createtable(L, 0, 12);
  l_set_bool(L, "do_convert_rgb", p->do_convert_rgb);
  l_set_bool(L, "do_resize", p->do_resize);
  l_set_bool(L, "do_center_crop", p->do_center_crop);
  l_set_bool(L, "do_rescale", p->do_rescale);
  l_set_bool(L, "do_normalize", p->do_normalize);
  lua_createtable(L, 0, 2);
  if (p->shortest_edge > 0) l_set_int(L, "shortest_edge", p->shortest_edge);
  else {
    l_set_int(L, "height", p->size_h);
    l_set_int(L, "width", p->size_w);
  }
  lua_setfield(L, -2, "size");
  lua_createtable(L, 0, 2);
  l_set_int(L, "height", p->crop_h);
  l_set_int(L, "width", p->crop_w);
  lua_setfield(L, -2, "crop_size");
  l_set_int(L, "resample", p->resample);
  l_set_num(L, "rescale_factor", p->rescale_factor);
  set_triple(L, "image_mean", p->mean);
  set_triple(L, "image_std", p->std);
  return 1;
}

/* proc:output_size(w, h) -> ow, oh */
static int proc_output_size(lua_State *L) {
  ct_preproc *p = check_proc(L, 1);
  int w = check_side(L, 2, "output_size"), h = check_side(L, 3, "output_size"), ow, oh;
  ct_err e;
  if (ct_preproc_output_size(p, w, h, &ow, &oh, &e)) raise_err(L, &e);
  lua_pushinteger(L, ow);
  lua_pushinteger(L, oh);
  return 2;
}

/* proc:method(image): the processor, the image and the size it comes out at */
static ct_preproc *check_proc_image(lua_State *L, const ct_image **img, int *ow, int *oh) {
  ct_preproc *p = check_proc(L, 1);
  *img = arg_image(L, 2);
  ct_err e;
  if (ct_preproc_output_size(p, (*img)->w, (*img)->h, ow, oh, &e)) raise_err(L, &e);
  return p;
}

static int proc_resize_crop(lua_State *L) {
  const ct_image *img;
  int ow, oh;
  ct_preproc *p = check_proc_image(L, &img, &ow, &oh);
  ct_err e;
  l_image *out = image_push(L, ow, oh);
  if (ct_preproc_resize_crop_into(img, p, out->img.rgb, &e)) raise_err(L, &e);
  return 1;
}

static int proc_preprocess(lua_State *L) {
  const ct_image *img;
  int ow, oh;
  ct_preproc *p = check_proc_image(L, &img, &ow, &oh);
  ct_err e;
  int64_t shape[3] = {3, oh, ow};
  l_tensor *t = l_tensor_new(L, 3, shape);
  if (ct_preprocess(img, p, t->data, &e)) raise_err(L, &e);
  return 1;
}

/* ------------------------------------------------------------ batches */

/* The per-item arrays of a batch (image_batch.h), in one userdata pushed on the stack so that
 * an error cannot leak them: paths, images, errs, status, then strbytes bytes for copies of
 * the paths (the loader's; a synchronous batch points into the Lua strings of its list). */
typedef struct batch_mem {
  const char **paths;
  const ct_image **images;
  ct_err *errs;
  uint8_t *status;
  char *strings;
} batch_mem;

static void batch_mem_push(lua_State *L, int n, size_t strbytes, batch_mem *m) {
  size_t ptrs = sizeof(void *) * (size_t)n;
  size_t bytes = 2 * ptrs + sizeof(ct_err) * (size_t)n + (size_t)n + strbytes;
  char *blk = lua_newuserdatauv(L, bytes, 0);
  memset(blk, 0, bytes - strbytes); /* status CT_ITEM_PENDING, no paths, no images */
  m->paths = (const char **)blk;
  m->images = (const ct_image **)(blk + ptrs);
  m->errs = (ct_err *)(blk + 2 * ptrs);
  m->status = (uint8_t *)(blk + 2 * ptrs + sizeof(ct_err) * (size_t)n);
  m->strings = (char *)(m->status + n);
}

typedef struct batch_opts {
  int threads; /* threads that decode (synchronous: the caller included) */
  int skip;    /* skip_errors */
  int idle;    /* the loader: SCHED_IDLE threads */
} batch_opts;

/* opts at idx (nil or a table): threads, skip_errors (and idle where allow_idle) */
static void read_batch_opts(lua_State *L, int idx, const char *who, int allow_idle,
                            batch_opts *o) {
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    if (k && strcmp(k, "threads") == 0) {
      if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > 64)
        l_errorf(L, "%s: option 'threads' must be an integer from 1 to 64", who);
      o->threads = (int)lua_tointeger(L, -1);
    } else if (k && strcmp(k, "skip_errors") == 0) {
      if (!lua_isboolean(L, -1)) l_errorf(L, "%s: option 'skip_errors' must be a boolean", who);
      o->skip = lua_toboolean(L, -1);
    } else if (k && allow_idle && strcmp(k, "idle") == 0) {
      if (!lua_isboolean(L, -1)) l_errorf(L, "%s: option 'idle' must be a boolean", who);
      o->idle = lua_toboolean(L, -1);
    } else {
      l_errorf(L, "%s: unknown option '%s' (expected threads, skip_errors%s)", who,
             k ? k : luaL_typename(L, -2), allow_idle ? ", idle" : "");
    }
    lua_pop(L, 1);
  }
}

/* Size of an item's output (no center crop: it depends on the image). 0, or -1 with e. */
static int item_output_size(const ct_preproc *p, const char *path, const ct_image *img, int *ow,
                            int *oh, ct_err *e) {
  int w, h;
  if (path) {
    size_t n;
    char *buf = ct_read_file(path, &n, CT_IMAGE_MAX_FILE, e);
    if (!buf) return -1;
    int r = ct_image_probe_mem((const uint8_t *)buf, n, path, &w, &h, e);
    free(buf);
    if (r) return -1;
  } else {
    w = img->w;
    h = img->h;
  }
  return ct_preproc_output_size(p, w, h, ow, oh, e);
}

/* The batch's output size: the crop size, or without a center crop the size of the first item
 * (strict) or of the first item that can be probed (skip: the items before it are marked
 * failed; none: 0x0). */
static void batch_output_size(lua_State *L, const ct_preproc *p, batch_mem *m, int n, int skip,
                              const char *who, int *ow, int *oh) {
  *ow = *oh = 0;
  if (p->do_center_crop) {
    *ow = p->crop_w;
    *oh = p->crop_h;
    return;
  }
  for (int i = 0; i < n; i++) {
    if (item_output_size(p, m->paths[i], m->images[i], ow, oh, &m->errs[i]) == 0) return;
    *ow = *oh = 0;
    if (!skip) {
      if (m->paths[i]) l_errorf(L, "%s: item %d: %s", who, i + 1, m->errs[i].msg);
      const ct_image *im = m->images[i];
      l_errorf(L, "%s: item %d (clip.Image %dx%d): %s", who, i + 1, im->w, im->h,
             m->errs[i].msg);
    }
    m->status[i] = CT_ITEM_FAILED;
  }
}

/* The results of a finished batch whose n-row tensor is at t_idx (it stays on the stack).
 * Strict: raise the lowest failure ("<who>: item i: <path>: <reason>"), else leave the tensor.
 * Skip: move the good rows to the front in order and shrink the tensor to them, then push
 * errors ({index, path, error} for each failed item) and kept (the items of the rows). */
static int batch_results(lua_State *L, int t_idx, l_tensor *t, const ct_batch *b,
                         const batch_mem *m, int skip, const char *who) {
  if (!skip) {
    for (int i = 0; i < b->n; i++) {
      if (m->status[i] != CT_ITEM_FAILED) continue;
      if (m->paths[i]) return l_errorf(L, "%s: item %d: %s", who, i + 1, m->errs[i].msg);
      const ct_image *im = m->images[i];
      return l_errorf(L, "%s: item %d (clip.Image %dx%d): %s", who, i + 1, im->w, im->h,
                    m->errs[i].msg);
    }
    lua_pushvalue(L, t_idx);
    return 1;
  }
  size_t per = (size_t)3 * b->ow * b->oh;
  int k = 0, nerr = 0;
  lua_pushvalue(L, t_idx);
  lua_newtable(L); /* errors */
  lua_newtable(L); /* kept */
  for (int i = 0; i < b->n; i++) {
    if (m->status[i] == CT_ITEM_OK) {
      if (k != i) memmove(t->data + (size_t)k * per, t->data + (size_t)i * per, per * sizeof(float));
      k++;
      lua_pushinteger(L, i + 1);
      lua_rawseti(L, -2, k);
      continue;
    }
    lua_createtable(L, 0, 3);
    l_set_int(L, "index", i + 1);
    if (m->paths[i]) {
      l_set_str(L, "path", m->paths[i]);
      l_set_str(L, "error", m->status[i] == CT_ITEM_FAILED ? m->errs[i].msg : "not decoded");
    } else {
      lua_pushfstring(L, "clip.Image %dx%d: %s", m->images[i]->w, m->images[i]->h,
                      m->status[i] == CT_ITEM_FAILED ? m->errs[i].msg : "not decoded");
      lua_setfield(L, -2, "error");
    }
    lua_rawseti(L, -3, ++nerr);
  }
  t->shape[0] = k;
  t->numel = (int64_t)k * (int64_t)per;
  return 3; /* the tensor, errors, kept */
}

/* Threads of the calling state's pool (the default of a synchronous batch). */
static int pool_threads(lua_State *L) {
  l_pool_enter(L);
  return ct_pool_threads();
}

/* proc:preprocess_batch(list [, {threads = n, skip_errors = false}])
 *   -> Tensor {n, 3, H, W}                  (strict: the first bad item raises)
 *   -> Tensor {k, 3, H, W}, errors, kept    (skip_errors: the good rows, in order) */
static int proc_preprocess_batch(lua_State *L) {
  const char *who = "preprocess_batch";
  ct_preproc *p = check_proc(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  batch_opts o = {pool_threads(L), 0, 0};
  read_batch_opts(L, 3, who, 0, &o);
  lua_settop(L, 3);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
  if (n < 1) return l_errorf(L, "%s: empty list", who);
  if (n > INT32_MAX / 2) return l_errorf(L, "%s: %lld items (too many)", who, (long long)n);
  batch_mem m;
  batch_mem_push(L, (int)n, 0, &m); /* 4 */
  for (int i = 0; i < n; i++) {
    /* the strings and Images stay referenced by the list, and no Lua code runs while the
     * threads read them */
    lua_rawgeti(L, 2, i + 1);
    if (lua_type(L, -1) == LUA_TSTRING) {
      m.paths[i] = lua_tostring(L, -1);
    } else {
      l_image *im = luaL_testudata(L, -1, IMAGE_MT);
      if (!im)
        return l_errorf(L, "%s: item %d is a %s (expected a path or a clip.Image)", who, i + 1,
                      luaL_typename(L, -1));
      if (im->closed || !im->img.rgb)
        return l_errorf(L, "%s: item %d: the image is closed", who, i + 1);
      m.images[i] = &im->img;
    }
    lua_pop(L, 1);
  }
  int ow, oh;
  batch_output_size(L, p, &m, (int)n, o.skip, who, &ow, &oh);
  int64_t shape[4] = {n, 3, oh, ow};
  l_tensor *t = l_tensor_new(L, 4, shape); /* 5 */
  ct_batch b = {p, (int)n, ow, oh, m.paths, m.images, t->data, m.status, m.errs, !o.skip};
  if (ow > 0) ct_batch_run(&b, o.threads);
  return batch_results(L, 5, t, &b, &m, o.skip, who);
}

/* ------------------------------------------------------------ loader */

/* clip.ImageLoader: a background decoder (image_batch.h) and the batch in flight. User
 * values: 1 the batch's tensor, 2 its batch_mem block (path copies included), both set before
 * the batch starts and dropped when it ends, so the threads' memory outlives their work.
 * __gc and __close share one idempotent close that cancels the batch, joins the threads and
 * frees the decoder; the threads never touch the lua_State. */
#define LOADER_MT "clip.ImageLoader"

typedef struct l_loader {
  ct_decoder *d; /* NULL once closed */
  int closed;
  int pending;   /* a batch was submitted and not yet waited for */
  int skip;
  int threads;
  ct_preproc p;
  ct_batch b;    /* the batch in flight; its pointers point into the user values */
  batch_mem m;
} l_loader;

static l_loader *check_loader(lua_State *L, int idx, const char *what) {
  l_loader *ld = luaL_checkudata(L, idx, LOADER_MT);
  if (ld->closed || !ld->d) l_errorf(L, "image loader: %s: the loader is closed", what);
  return ld;
}

static void loader_drop(lua_State *L, int idx) {
  lua_pushnil(L);
  lua_setiuservalue(L, idx, 1);
  lua_pushnil(L);
  lua_setiuservalue(L, idx, 2);
}

static int loader_close(lua_State *L) {
  l_loader *ld = luaL_checkudata(L, 1, LOADER_MT);
  if (ld->d) {
    ct_decoder_free(ld->d); /* cancels the batch in flight and joins the threads */
    ld->d = NULL;
  }
  ld->closed = 1;
  ld->pending = 0;
  loader_drop(L, 1);
  return 0;
}

/* image_loader(proc [, {threads = 1, skip_errors = false, idle = false}]) -> clip.ImageLoader */
static int l_image_loader(lua_State *L) {
  const ct_preproc *p = check_proc(L, 1);
  batch_opts o = {1, 0, 0};
  read_batch_opts(L, 2, "image loader", 1, &o);
  l_loader *ld = lua_newuserdatauv(L, sizeof *ld, 2); /* before the threads exist */
  memset(ld, 0, sizeof *ld);
  ld->closed = 1;
  luaL_setmetatable(L, LOADER_MT);
  ld->p = *p;
  ld->skip = o.skip;
  ct_err e;
  ld->d = ct_decoder_new(o.threads, o.idle ? CT_DECODER_IDLE : 0, &e);
  if (!ld->d) return l_errorf(L, "image loader: %s", e.msg);
  ld->closed = 0;
  ld->threads = ct_decoder_threads(ld->d);
  return 1;
}

/* ld:submit(paths): start decoding the list in the background; returns at once */
static int loader_submit(lua_State *L) {
  const char *who = "image loader: submit";
  l_loader *ld = check_loader(L, 1, "submit");
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  if (ld->pending)
    return l_errorf(L, "%s: a batch is already pending (call wait() for it first)", who);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
  if (n < 1) return l_errorf(L, "%s: empty list", who);
  if (n > INT32_MAX / 2) return l_errorf(L, "%s: %lld items (too many)", who, (long long)n);
  size_t strbytes = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, 2, i) != LUA_TSTRING)
      return l_errorf(L, "%s: item %d is a %s (expected a path; preprocess_batch takes Images)",
                    who, (int)i,
                    luaL_testudata(L, -1, IMAGE_MT) ? "clip.Image" : luaL_typename(L, -1));
    size_t len;
    lua_tolstring(L, -1, &len);
    strbytes += len + 1;
    lua_pop(L, 1);
  }
  batch_mem m;
  batch_mem_push(L, (int)n, strbytes, &m); /* 3 */
  char *s = m.strings;
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    lua_rawgeti(L, 2, i);
    const char *src = lua_tolstring(L, -1, &len);
    memcpy(s, src, len + 1);
    m.paths[i - 1] = s;
    s += len + 1;
    lua_pop(L, 1);
  }
  int ow, oh;
  batch_output_size(L, &ld->p, &m, (int)n, ld->skip, "image loader", &ow, &oh);
  int64_t shape[4] = {n, 3, oh, ow};
  l_tensor *t = l_tensor_new(L, 4, shape); /* 4 */
  /* from here on nothing raises until the batch has started */
  lua_pushvalue(L, 4);
  lua_setiuservalue(L, 1, 1);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, 1, 2);
  ld->m = m;
  ct_batch b = {&ld->p, (int)n, ow, oh, ld->m.paths, ld->m.images, t->data, ld->m.status,
                ld->m.errs, !ld->skip};
  ld->b = b;
  ld->pending = 1;
  ct_err e;
  if (ow > 0 && ct_decoder_submit(ld->d, &ld->b, &e)) { /* cannot happen: not pending */
    ld->pending = 0;
    loader_drop(L, 1);
    return l_errorf(L, "%s: %s", who, e.msg);
  }
  return 0;
}

/* ld:wait() -> the submitted batch's results, as preprocess_batch gives them */
static int loader_wait(lua_State *L) {
  l_loader *ld = check_loader(L, 1, "wait");
  lua_settop(L, 1);
  if (!ld->pending) return l_errorf(L, "image loader: wait: nothing submitted");
  if (ld->b.ow > 0) ct_decoder_wait(ld->d);
  ld->pending = 0;
  lua_getiuservalue(L, 1, 1); /* 2: the tensor */
  lua_getiuservalue(L, 1, 2); /* 3: the item arrays */
  loader_drop(L, 1);
  batch_mem m = ld->m;
  ct_batch b = ld->b;
  memset(&ld->m, 0, sizeof ld->m);
  memset(&ld->b, 0, sizeof ld->b);
  return batch_results(L, 2, l_checktensor(L, 2), &b, &m, ld->skip, "image loader");
}

static int loader_pending(lua_State *L) {
  l_loader *ld = luaL_checkudata(L, 1, LOADER_MT);
  lua_pushboolean(L, ld->pending);
  return 1;
}

static int loader_is_closed(lua_State *L) {
  l_loader *ld = luaL_checkudata(L, 1, LOADER_MT);
  lua_pushboolean(L, ld->closed);
  return 1;
}

static int loader_tostring(lua_State *L) {
  l_loader *ld = luaL_checkudata(L, 1, LOADER_MT);
  if (ld->closed) lua_pushliteral(L, "clip.ImageLoader(closed)");
  else
    lua_pushfstring(L, "clip.ImageLoader(%d thread%s%s)", ld->threads, ld->threads == 1 ? "" : "s",
                    ld->pending ? ", a batch pending" : "");
  return 1;
}

static int loader_index(lua_State *L) {
  l_loader *ld = luaL_checkudata(L, 1, LOADER_MT);
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "threads") == 0) {
    lua_pushinteger(L, ld->threads);
    return 1;
  }
  if (k && strcmp(k, "skip_errors") == 0) {
    lua_pushboolean(L, ld->skip);
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

static const luaL_Reg loader_methods[] = {{"submit", loader_submit},
                                          {"wait", loader_wait},
                                          {"pending", loader_pending},
                                          {"close", loader_close},
                                          {"is_closed", loader_is_closed},
                                          {NULL, NULL}};

static int proc_tostring(lua_State *L) {
  ct_preproc *p = check_proc(L, 1);
  if (p->shortest_edge > 0)
    lua_pushfstring(L, "clip.Processor(shortest_edge %d, crop %dx%d)", p->shortest_edge,
                    p->crop_w, p->crop_h);
  else
    lua_pushfstring(L, "clip.Processor(size %dx%d, crop %dx%d)", p->size_w, p->size_h,
                    p->crop_w, p->crop_h);
  return 1;
}

static const luaL_Reg proc_methods[] = {{"config", proc_config},
                                        {"output_size", proc_output_size},
                                        {"resize_crop", proc_resize_crop},
                                        {"preprocess", proc_preprocess},
                                        {"preprocess_batch", proc_preprocess_batch},
                                        {NULL, NULL}};

static const luaL_Reg module_funcs[] = {{"image_load", l_image_load},
                                        {"image_decode", l_image_decode},
                                        {"image_from_bytes", l_image_from_bytes},
                                        {"image_resize", l_image_resize},
                                        {"image_is", l_image_is},
                                        {"image_center_crop", l_image_center_crop},
                                        {"image_resize_coeffs", l_image_resize_coeffs},
                                        {"processor_new", l_processor_new},
                                        {"processor_parse", l_processor_parse},
                                        {"processor_load", l_processor_load},
                                        {"image_loader", l_image_loader},
                                        {NULL, NULL}};

void l_image_open(lua_State *L) {
  /* clip.Image */
  luaL_newmetatable(L, IMAGE_MT);
  lua_pushcfunction(L, image_release);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, image_release);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, image_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, image_methods);
  lua_pushcclosure(L, image_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  /* clip.Processor */
  luaL_newmetatable(L, PROC_MT);
  luaL_newlib(L, proc_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, proc_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  /* clip.ImageLoader */
  luaL_newmetatable(L, LOADER_MT);
  lua_pushcfunction(L, loader_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, loader_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, loader_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, loader_methods);
  lua_pushcclosure(L, loader_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  /* module functions */
  luaL_setfuncs(L, module_funcs, 0);
  lua_pushinteger(L, CT_IMAGE_MAX_PIXELS);
  lua_setfield(L, -2, "image_max_pixels");
}
