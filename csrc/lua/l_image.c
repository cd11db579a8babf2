/* l_image.c - Lua bindings of the image area: clip.Image, clip.Processor.
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
 *   image_max_pixels
 * Errors raise with the message of the core (path first).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "image.h"
#include "l_tensor.h"
#include "lauxlib.h"
#include "lclip.h"
#include "lua.h"

#define IMAGE_MT "clip.Image"
#define PROC_MT "clip.Processor"

typedef struct l_image {
  ct_image img;
  int closed;
} l_image;

/* ------------------------------------------------------------ helpers */

/* luaL_error with C printf formats (lua_pushfstring lacks %lld, %zu, ...) */
static int raisef(lua_State *L, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static int raisef(lua_State *L, const char *fmt, ...) {
  ct_err e;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e.msg, sizeof e.msg, fmt, ap);
  va_end(ap);
  return luaL_error(L, "%s", e.msg);
}


/* Push a new Image of w x h with a zeroed pixel block. */
static l_image *image_push(lua_State *L, int w, int h) {
  if (w < 1 || h < 1 || (int64_t)w * h > CT_IMAGE_MAX_PIXELS)
    raisef(L, "image: invalid size %dx%d (1x1 up to %lld pixels)", w, h,
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
  if (im->closed || !im->img.rgb) raisef(L, "clip.Image: the image is closed");
  return im;
}

static l_image *test_image(lua_State *L, int idx) {
  l_image *im = luaL_testudata(L, idx, IMAGE_MT);
  if (im && (im->closed || !im->img.rgb)) raisef(L, "clip.Image: the image is closed");
  return im;
}

static void raise_err(lua_State *L, const ct_err *e) { luaL_error(L, "%s", e->msg); }


/* Read a whole file into a new userdata pushed on the stack. The block is
 * created before the file is opened, and nothing calls Lua while it is open. */
static const uint8_t *read_file_ud(lua_State *L, const char *path, size_t *len) {
  struct stat st;
  if (stat(path, &st) != 0) raisef(L, "%s: %s", path, strerror(errno));
  if (S_ISDIR(st.st_mode)) raisef(L, "%s: is a directory, expected an image file", path);
  if ((uint64_t)st.st_size > (uint64_t)CT_IMAGE_MAX_FILE)
    raisef(L, "%s: file too large (%lld bytes, limit %zu)", path, (long long)st.st_size,
               CT_IMAGE_MAX_FILE);
  size_t n = (size_t)st.st_size;
  uint8_t *buf = lua_newuserdatauv(L, n ? n : 1, 0);
  FILE *f = fopen(path, "rb");
  if (!f) raisef(L, "%s: %s", path, strerror(errno));
  size_t got = n ? fread(buf, 1, n, f) : 0;
  int err = ferror(f);
  fclose(f);
  if (err) raisef(L, "%s: read error", path);
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
    raisef(L, "%s: invalid size %lld (must be at least 1)", what, (long long)v);
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
    return raisef(L, "image.from_bytes: invalid size %lldx%lld", (long long)w,
                      (long long)h);
  if ((lua_Integer)n != w * h * 3)
    return raisef(L, "image.from_bytes: %zu bytes given, a %lldx%lld RGB image needs %lld",
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
    return raisef(L, "image.resize: %dx%d is over the limit of %lld pixels", w, h,
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
    return raisef(L, "image.center_crop: %dx%d is over the limit of %lld pixels", w, h,
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
  if (ksize < 0) return raisef(L, "resize_coeffs: unsupported filter %d", f);
  if ((int64_t)ksize * out > (1 << 24)) return raisef(L, "resize_coeffs: too many");
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
    return raisef(L, "clip.Image:pixel: (%lld, %lld) is outside the %dx%d image",
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
    if (im->closed) return raisef(L, "clip.Image: the image is closed");
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
  raisef(L, "processor: option '%s' must be an integer, {height, width}%s or "
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
  raisef(L, "processor: option '%s' must be a number or a list of 3 numbers", key);
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
    if (lua_type(L, -2) != LUA_TSTRING) raisef(L, "processor: option keys must be strings");
    const char *k = lua_tostring(L, -2);
    int done = 0;
    for (int i = 0; flags[i]; i++)
      if (strcmp(k, flags[i]) == 0) {
        if (!lua_isboolean(L, -1)) raisef(L, "processor: option '%s' must be a boolean", k);
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
      if (!lua_isinteger(L, -1)) raisef(L, "processor: option 'resample' must be an integer");
      p->resample = (int)lua_tointeger(L, -1);
    } else if (strcmp(k, "rescale_factor") == 0) {
      if (lua_type(L, -1) != LUA_TNUMBER)
        raisef(L, "processor: option 'rescale_factor' must be a number");
      p->rescale_factor = lua_tonumber(L, -1);
    } else if (strcmp(k, "image_mean") == 0) {
      tbl_triple(L, k, p->mean);
    } else if (strcmp(k, "image_std") == 0) {
      tbl_triple(L, k, p->std);
    } else if (!known_ignored(k)) {
      raisef(L, "processor: unknown option '%s' (expected the keys of "
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

/* Output size of the batch from its first element (its size matters only
 * without a center crop). */
static void batch_size(lua_State *L, const ct_preproc *p, int list, int *ow, int *oh) {
  ct_err e;
  if (p->do_center_crop) {
    *ow = p->crop_w;
    *oh = p->crop_h;
    return;
  }
  int w, h;
  lua_rawgeti(L, list, 1);
  if (lua_type(L, -1) == LUA_TSTRING) {
    const char *path = lua_tostring(L, -1);
    size_t n;
    const uint8_t *buf = read_file_ud(L, path, &n);
    if (ct_image_probe_mem(buf, n, path, &w, &h, &e))
      raisef(L, "preprocess_batch: item 1: %s", e.msg);
    lua_pop(L, 1);
  } else {
    l_image *im = test_image(L, -1);
    if (!im) raisef(L, "preprocess_batch: item 1 is a %s (expected a path or a clip.Image)",
                        luaL_typename(L, -1));
    w = im->img.w;
    h = im->img.h;
  }
  lua_pop(L, 1);
  if (ct_preproc_output_size(p, w, h, ow, oh, &e))
    raisef(L, "preprocess_batch: item 1: %s", e.msg);
}

static int proc_preprocess_batch(lua_State *L) {
  ct_preproc *p = check_proc(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
  if (n < 1) return raisef(L, "preprocess_batch: empty list");
  int ow, oh;
  batch_size(L, p, 2, &ow, &oh);
  int64_t shape[4] = {n, 3, oh, ow};
  l_tensor *t = l_tensor_new(L, 4, shape);
  size_t per = (size_t)3 * ow * oh;
  ct_err e;
  for (lua_Integer i = 1; i <= n; i++) {
    float *dst = t->data + (size_t)(i - 1) * per;
    lua_rawgeti(L, 2, i);
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char *path = lua_tostring(L, -1);
      if (ct_preprocess_file(path, p, ow, oh, dst, &e))
        return raisef(L, "preprocess_batch: item %d: %s", (int)i, e.msg);
    } else {
      l_image *im = luaL_testudata(L, -1, IMAGE_MT);
      if (!im)
        return raisef(L, "preprocess_batch: item %d is a %s (expected a path or a "
                             "clip.Image)", (int)i, luaL_typename(L, -1));
      if (im->closed || !im->img.rgb)
        return raisef(L, "preprocess_batch: item %d: the image is closed", (int)i);
      int w, h;
      if (ct_preproc_output_size(p, im->img.w, im->img.h, &w, &h, &e))
        return raisef(L, "preprocess_batch: item %d (clip.Image %dx%d): %s", (int)i,
                          im->img.w, im->img.h, e.msg);
      if (w != ow || h != oh)
        return raisef(L, "preprocess_batch: item %d (clip.Image %dx%d): preprocessed size "
                             "%dx%d differs from the batch's %dx%d", (int)i, im->img.w,
                          im->img.h, w, h, ow, oh);
      if (ct_preprocess(&im->img, p, dst, &e))
        return raisef(L, "preprocess_batch: item %d (clip.Image %dx%d): %s", (int)i,
                          im->img.w, im->img.h, e.msg);
    }
    lua_pop(L, 1);
  }
  return 1;
}

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
  /* module functions */
  luaL_setfuncs(L, module_funcs, 0);
  lua_pushinteger(L, CT_IMAGE_MAX_PIXELS);
  lua_setfield(L, -2, "image_max_pixels");
}
