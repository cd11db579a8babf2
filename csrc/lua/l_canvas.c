/* l_canvas.c - PNG writing (libpng) and a small RGB raster canvas for charts.
 *
 * clip.core functions added here:
 *   png_write(path, w, h, rgb) -> true | nil, msg
 *       rgb: a string of w*h*3 bytes, rows top to bottom. The file is written
 *       to a temporary name beside path, fsync'ed and renamed into place, so a
 *       failure never leaves a half-written PNG. Environment failures return
 *       nil, "path: reason"; wrong arguments raise.
 *   canvas(w, h [, r, g, b]) -> Canvas (filled with the colour, default white)
 * Canvas methods (coordinates in pixels, x to the right, y down, (0,0) the
 * top-left corner; colours 0..255; everything is clipped to the canvas):
 *   c:size() -> w, h
 *   c:fill_rect(x, y, w, h, r, g, b)      integer rectangle
 *   c:line(x0, y0, x1, y1, r, g, b [, width [, alpha]])
 *       anti-aliased segment with round caps: each pixel is blended with
 *       coverage clamp(width/2 + 0.5 - distance to the segment, 0, 1)
 *   c:pixel(x, y) -> r, g, b
 *   c:bytes() -> the RGB string        c:write_png(path) -> as png_write
 * The pixels live inside the userdata, so Lua's GC counts them. */
#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ct.h"
#include "lauxlib.h"
#include "lclip.h"
#include "lua.h"

#define CANVAS_MT "clip.Canvas"
#define CANVAS_MAX 16384

/* ------------------------------------------------------------ core: no Lua */

typedef struct png_ctx {
  jmp_buf jb;
  char msg[200];
} png_ctx;

static void on_png_error(png_structp png, png_const_charp msg) {
  png_ctx *c = png_get_error_ptr(png);
  snprintf(c->msg, sizeof c->msg, "%s", msg);
  longjmp(c->jb, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg) {
  (void)png;
  (void)msg;
}

/* Write an 8-bit RGB PNG atomically (ct_atomic). Returns 0, or -1 with e filled. */
static int png_write_rgb(const char *path, int w, int h, const unsigned char *rgb, ct_err *e) {
  ct_atomic at;
  if (ct_atomic_open(&at, path, e) != 0) return -1;
  png_ctx ctx;
  ctx.msg[0] = 0;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &ctx, on_png_error,
                                            on_png_warning);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (!png || !info) {
    if (png) png_destroy_write_struct(&png, NULL);
    ct_atomic_abort(&at);
    return ct_errf(e, "%s: out of memory", path);
  }
  if (setjmp(ctx.jb)) {
    png_destroy_write_struct(&png, &info);
    ct_atomic_abort(&at);
    return ct_errf(e, "%s: PNG encode failed (%s)", path, ctx.msg);
  }
  png_init_io(png, at.f);
  png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < h; y++) png_write_row(png, rgb + (size_t)y * (size_t)w * 3);
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  return ct_atomic_commit(&at, 0, e);
}

typedef struct canvas {
  int w, h;
  unsigned char *px; /* w*h*3, inside the userdata */
} canvas;

static unsigned char clamp_u8(double v) {
  if (!(v > 0)) return 0;
  if (v >= 255) return 255;
  return (unsigned char)(v + 0.5);
}

static void blend(canvas *c, int x, int y, const double rgb[3], double a) {
  if (x < 0 || y < 0 || x >= c->w || y >= c->h || a <= 0) return;
  if (a > 1) a = 1;
  unsigned char *p = c->px + ((size_t)y * (size_t)c->w + (size_t)x) * 3;
  for (int k = 0; k < 3; k++) p[k] = clamp_u8(p[k] * (1 - a) + rgb[k] * a);
}

static void fill_rect(canvas *c, int x, int y, int w, int h, const double rgb[3]) {
  int x0 = x < 0 ? 0 : x, y0 = y < 0 ? 0 : y;
  int x1 = x + w > c->w ? c->w : x + w, y1 = y + h > c->h ? c->h : y + h;
  unsigned char v[3] = {clamp_u8(rgb[0]), clamp_u8(rgb[1]), clamp_u8(rgb[2])};
  for (int j = y0; j < y1; j++)
    for (int i = x0; i < x1; i++) memcpy(c->px + ((size_t)j * (size_t)c->w + (size_t)i) * 3, v, 3);
}

/* distance-based anti-aliased thick segment (pixel centres at +0.5) */
static void draw_line(canvas *c, double x0, double y0, double x1, double y1, const double rgb[3],
                      double width, double alpha) {
  double r = width / 2;
  double minx = fmin(x0, x1) - r - 1, maxx = fmax(x0, x1) + r + 1;
  double miny = fmin(y0, y1) - r - 1, maxy = fmax(y0, y1) + r + 1;
  if (maxx < 0 || maxy < 0 || minx > c->w || miny > c->h) return;
  int ix0 = minx < 0 ? 0 : (int)minx, iy0 = miny < 0 ? 0 : (int)miny;
  int ix1 = maxx > c->w - 1 ? c->w - 1 : (int)maxx, iy1 = maxy > c->h - 1 ? c->h - 1 : (int)maxy;
  double dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
  for (int y = iy0; y <= iy1; y++)
    for (int x = ix0; x <= ix1; x++) {
      double px = x + 0.5, py = y + 0.5, t = 0;
      if (len2 > 0) {
        t = ((px - x0) * dx + (py - y0) * dy) / len2;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
      }
      double ex = px - (x0 + t * dx), ey = py - (y0 + t * dy);
      double cov = r + 0.5 - sqrt(ex * ex + ey * ey);
      if (cov > 0) blend(c, x, y, rgb, (cov > 1 ? 1 : cov) * alpha);
    }
}

/* ------------------------------------------------------------ bindings */

static canvas *check_canvas(lua_State *L, int idx) { return luaL_checkudata(L, idx, CANVAS_MT); }

static void check_rgb(lua_State *L, int idx, double rgb[3]) {
  for (int k = 0; k < 3; k++) rgb[k] = luaL_checknumber(L, idx + k);
}

/* The result of a PNG write: true, or nil and the message. */
static int push_written(lua_State *L, int rc, const ct_err *e) {
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, e->msg);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_png_write(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer w = luaL_checkinteger(L, 2), h = luaL_checkinteger(L, 3);
  size_t n;
  const char *rgb = luaL_checklstring(L, 4, &n);
  if (w < 1 || h < 1 || w > CANVAS_MAX || h > CANVAS_MAX)
    return luaL_error(L, "png_write: size %dx%d outside 1..%d", (int)w, (int)h, CANVAS_MAX);
  if (n != (size_t)w * (size_t)h * 3)
    return luaL_error(L, "png_write: %d bytes of RGB for %dx%d (expected %d)", (int)n, (int)w,
                      (int)h, (int)(w * h * 3));
  ct_err e;
  return push_written(L, png_write_rgb(path, (int)w, (int)h, (const unsigned char *)rgb, &e), &e);
}

static int l_canvas(lua_State *L) {
  lua_Integer w = luaL_checkinteger(L, 1), h = luaL_checkinteger(L, 2);
  double rgb[3] = {255, 255, 255};
  if (!lua_isnoneornil(L, 3)) check_rgb(L, 3, rgb);
  if (w < 1 || h < 1 || w > CANVAS_MAX || h > CANVAS_MAX)
    return luaL_error(L, "canvas: size %dx%d outside 1..%d", (int)w, (int)h, CANVAS_MAX);
  size_t bytes = sizeof(canvas) + (size_t)w * (size_t)h * 3;
  canvas *c = lua_newuserdatauv(L, bytes, 0);
  c->w = (int)w;
  c->h = (int)h;
  c->px = (unsigned char *)(c + 1);
  luaL_setmetatable(L, CANVAS_MT);
  fill_rect(c, 0, 0, c->w, c->h, rgb);
  return 1;
}

static int m_size(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  lua_pushinteger(L, c->w);
  lua_pushinteger(L, c->h);
  return 2;
}

static int m_fill_rect(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  double rgb[3];
  lua_Integer x = luaL_checkinteger(L, 2), y = luaL_checkinteger(L, 3);
  lua_Integer w = luaL_checkinteger(L, 4), h = luaL_checkinteger(L, 5);
  check_rgb(L, 6, rgb);
  if (w > 0 && h > 0 && x < c->w && y < c->h && x + w > 0 && y + h > 0) {
    lua_Integer x0 = x < 0 ? 0 : x, y0 = y < 0 ? 0 : y;
    lua_Integer x1 = x + w > c->w ? c->w : x + w, y1 = y + h > c->h ? c->h : y + h;
    fill_rect(c, (int)x0, (int)y0, (int)(x1 - x0), (int)(y1 - y0), rgb);
  }
  lua_settop(L, 1);
  return 1;
}

static int m_line(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  double x0 = luaL_checknumber(L, 2), y0 = luaL_checknumber(L, 3);
  double x1 = luaL_checknumber(L, 4), y1 = luaL_checknumber(L, 5), rgb[3];
  check_rgb(L, 6, rgb);
  double width = luaL_optnumber(L, 9, 1), alpha = luaL_optnumber(L, 10, 1);
  if (!(fabs(x0) < 1e6 && fabs(y0) < 1e6 && fabs(x1) < 1e6 && fabs(y1) < 1e6))
    return luaL_error(L, "line: coordinates must be finite and within +-1e6");
  if (!(width > 0 && width < 1000)) return luaL_error(L, "line: width must be in (0, 1000)");
  draw_line(c, x0, y0, x1, y1, rgb, width, alpha < 0 ? 0 : alpha > 1 ? 1 : alpha);
  lua_settop(L, 1);
  return 1;
}

static int m_pixel(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  lua_Integer x = luaL_checkinteger(L, 2), y = luaL_checkinteger(L, 3);
  if (x < 0 || y < 0 || x >= c->w || y >= c->h)
    return luaL_error(L, "pixel: (%d,%d) outside the %dx%d canvas", (int)x, (int)y, c->w, c->h);
  const unsigned char *p = c->px + ((size_t)y * (size_t)c->w + (size_t)x) * 3;
  for (int k = 0; k < 3; k++) lua_pushinteger(L, p[k]);
  return 3;
}

static int m_bytes(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  lua_pushlstring(L, (const char *)c->px, (size_t)c->w * (size_t)c->h * 3);
  return 1;
}

static int m_write_png(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  const char *path = luaL_checkstring(L, 2);
  ct_err e;
  return push_written(L, png_write_rgb(path, c->w, c->h, c->px, &e), &e);
}

static int m_tostring(lua_State *L) {
  canvas *c = check_canvas(L, 1);
  lua_pushfstring(L, "clip.Canvas(%dx%d)", c->w, c->h);
  return 1;
}

void l_canvas_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"size", m_size},   {"fill_rect", m_fill_rect},
                                     {"line", m_line},   {"pixel", m_pixel},
                                     {"bytes", m_bytes}, {"write_png", m_write_png},
                                     {NULL, NULL}};
  if (luaL_newmetatable(L, CANVAS_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, m_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, CANVAS_MT);
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {{"png_write", l_png_write}, {"canvas", l_canvas}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
