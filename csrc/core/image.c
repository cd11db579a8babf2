/* image.c - JPEG/PNG decoding and CLIP preprocessing (see image.h).
 *
 * Reference: Pillow 9.4 (src/libImaging/Resample.c, Convert.c, Unpack.c,
 * PngImagePlugin.py, JpegImagePlugin.py) and transformers' CLIPImageProcessor
 * (models/clip/image_processing_clip.py, image_transforms.py). Semantics and
 * deviations are written down in docs/images.md.
 */
#include "image.h"
#include "image_formats.h"

#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h> /* jpeglib.h needs FILE */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

/* ================================================================ basics */

void ct_image_free(ct_image *img) {
  if (!img) return;
  free(img->rgb);
  img->rgb = NULL;
  img->w = img->h = 0;
}

const char *ct_image_name(const char *name) { return name ? name : "<memory>"; }
#define nm ct_image_name

int ct_image_sniff(const uint8_t *buf, size_t n) {
  static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (n >= 8 && memcmp(buf, png_sig, 8) == 0) return CT_FMT_PNG;
  if (n >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF) return CT_FMT_JPEG;
  if (n >= 6 && (memcmp(buf, "GIF87a", 6) == 0 || memcmp(buf, "GIF89a", 6) == 0)) return CT_FMT_GIF;
  if (n >= 12 && memcmp(buf, "RIFF", 4) == 0 && memcmp(buf + 8, "WEBP", 4) == 0) return CT_FMT_WEBP;
  if (n >= 4 && (memcmp(buf, "II*\0", 4) == 0 || memcmp(buf, "MM\0*", 4) == 0 ||
                 memcmp(buf, "II+\0", 4) == 0 || memcmp(buf, "MM\0+", 4) == 0))
    return CT_FMT_TIFF;
  if (n >= 2 && buf[0] == 'B' && buf[1] == 'M') return CT_FMT_BMP;
  return CT_FMT_UNKNOWN;
}

#define SUPPORTED_FORMATS "JPEG, PNG, GIF, WebP, TIFF and BMP"

static int unknown_format(const uint8_t *buf, size_t n, const char *name, ct_err *e) {
  if (n == 0) return ct_errf(e, "%s: empty file (not an image)", nm(name));
  char hex[3 * 8 + 1] = {0};
  size_t k = n < 8 ? n : 8, off = 0;
  for (size_t i = 0; i < k; i++)
    off += (size_t)snprintf(hex + off, sizeof hex - off, i ? " %02x" : "%02x", buf[i]);
  return ct_errf(e,
                 "%s: unsupported image format (file starts with %s; supported: "
                 SUPPORTED_FORMATS ", recognized by their first bytes)",
                 nm(name), hex);
}

int ct_image_check_pixels(const char *name, const char *fmt, uint64_t w, uint64_t h,
                          ct_err *e) {
  if (w == 0 || h == 0)
    return ct_errf(e, "%s: %s decode failed (image is %llux%llu)", nm(name), fmt,
                   (unsigned long long)w, (unsigned long long)h);
  if (w * h > (uint64_t)CT_IMAGE_MAX_PIXELS)
    return ct_errf(e,
                   "%s: image too large (%llux%llu = %llu pixels; the limit is %lld pixels)",
                   nm(name), (unsigned long long)w, (unsigned long long)h,
                   (unsigned long long)(w * h), (long long)CT_IMAGE_MAX_PIXELS);
  return 0;
}

/* ================================================================== PNG */

typedef struct png_ctx {
  const uint8_t *buf;
  size_t n, pos;
  char msg[256];
  char warning[160]; /* the last libpng warning, added to an error message */
} png_ctx;

static void png_read_cb(png_structp png, png_bytep out, size_t len) {
  png_ctx *c = png_get_io_ptr(png);
  if (len > c->n - c->pos) png_error(png, "truncated file: unexpected end of data");
  memcpy(out, c->buf + c->pos, len);
  c->pos += len;
}

static void png_error_cb(png_structp png, png_const_charp msg) {
  png_ctx *c = png_get_error_ptr(png);
  if (c->warning[0])
    snprintf(c->msg, sizeof c->msg, "%s; %s", msg ? msg : "unknown error", c->warning);
  else
    snprintf(c->msg, sizeof c->msg, "%s", msg ? msg : "unknown error");
  png_longjmp(png, 1);
}

/* Silent: a warning is not an error (Pillow ignores these too), but the last
 * one explains errors like "Invalid IHDR data". */
static void png_warning_cb(png_structp png, png_const_charp msg) {
  png_ctx *c = png_get_error_ptr(png);
  snprintf(c->warning, sizeof c->warning, "%s", msg ? msg : "");
}

/* One row of the decoded PNG (after png_set_packing: one byte per sample
 * below 8 bits; 16-bit samples big-endian) to RGB, as Pillow's
 * Image.open(p).convert("RGB") does:
 *   gray 1/2/4-bit: scaled to 0..255 (x255, x85, x17), gray 8-bit: copied;
 *   gray 16-bit: Pillow opens it as mode "I" and I->RGB clips: min(v, 255);
 *   gray+alpha, RGB, RGBA 16-bit: the high byte; alpha dropped;
 *   palette: looked up in a 256-entry table that starts as Pillow's ramp
 *   (i, i, i) and holds the PLTE entries first; tRNS ignored. */
static void png_row_to_rgb(uint8_t *dst, const uint8_t *src, int w, int ct, int bd,
                           const uint8_t *pal) {
  int x;
  switch (ct) {
    case PNG_COLOR_TYPE_GRAY:
      if (bd == 16) {
        for (x = 0; x < w; x++) {
          unsigned v = ((unsigned)src[2 * x] << 8) | src[2 * x + 1];
          uint8_t g = v > 255 ? 255 : (uint8_t)v;
          dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = g;
        }
      } else {
        unsigned mul = bd == 1 ? 255 : bd == 2 ? 85 : bd == 4 ? 17 : 1;
        for (x = 0; x < w; x++) {
          uint8_t g = (uint8_t)(src[x] * mul);
          dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = g;
        }
      }
      break;
    case PNG_COLOR_TYPE_GRAY_ALPHA: {
      int step = bd == 16 ? 4 : 2;
      for (x = 0; x < w; x++) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = src[step * x];
      break;
    }
    case PNG_COLOR_TYPE_RGB:
      if (bd == 16) {
        for (x = 0; x < w; x++) {
          dst[3 * x] = src[6 * x];
          dst[3 * x + 1] = src[6 * x + 2];
          dst[3 * x + 2] = src[6 * x + 4];
        }
      } else {
        memcpy(dst, src, (size_t)w * 3);
      }
      break;
    case PNG_COLOR_TYPE_RGB_ALPHA: {
      int step = bd == 16 ? 8 : 4, o = bd == 16 ? 2 : 1;
      for (x = 0; x < w; x++) {
        dst[3 * x] = src[step * x];
        dst[3 * x + 1] = src[step * x + o];
        dst[3 * x + 2] = src[step * x + 2 * o];
      }
      break;
    }
    case PNG_COLOR_TYPE_PALETTE:
      for (x = 0; x < w; x++) memcpy(dst + 3 * x, pal + 3 * src[x], 3);
      break;
  }
}

/* probe only when rgb == NULL */
static int png_decode(const uint8_t *buf, size_t n, const char *name, int *pw, int *ph,
                      uint8_t *rgb, ct_err *e) {
  png_ctx ctx = {buf, n, 0, {0}, {0}};
  /* a zero size gets a plain message rather than libpng's "Invalid IHDR data" */
  if (n >= 24 && memcmp(buf + 12, "IHDR", 4) == 0) {
    uint32_t w0 = (uint32_t)buf[16] << 24 | (uint32_t)buf[17] << 16 | (uint32_t)buf[18] << 8 | buf[19];
    uint32_t h0 = (uint32_t)buf[20] << 24 | (uint32_t)buf[21] << 16 | (uint32_t)buf[22] << 8 | buf[23];
    if (w0 == 0 || h0 == 0)
      return ct_errf(e, "%s: PNG decode failed (image is %ux%u: zero width or height)", nm(name),
                     (unsigned)w0, (unsigned)h0);
  }
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_error_cb,
                                           png_warning_cb);
  if (!png) return ct_errf(e, "%s: PNG decode failed (out of memory)", nm(name));
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, NULL, NULL);
    return ct_errf(e, "%s: PNG decode failed (out of memory)", nm(name));
  }
  uint8_t *volatile raw = NULL;
  if (setjmp(png_jmpbuf(png))) {
    free(raw);
    png_destroy_read_struct(&png, &info, NULL);
    return ct_errf(e, "%s: PNG decode failed (%s)", nm(name), ctx.msg);
  }
  png_set_read_fn(png, &ctx, png_read_cb);
  /* any CRC mismatch is an error, ancillary chunks included */
  png_set_crc_action(png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
  /* our pixel limit decides, not libpng's default 1e6 per side */
  png_set_user_limits(png, 0x7fffffffL, 0x7fffffffL);
  png_read_info(png, info);

  png_uint_32 w32, h32;
  int bd, ct, il;
  png_get_IHDR(png, info, &w32, &h32, &bd, &ct, &il, NULL, NULL);
  if (ct_image_check_pixels(name, "PNG", w32, h32, e)) {
    png_destroy_read_struct(&png, &info, NULL);
    return -1;
  }
  int w = (int)w32, h = (int)h32;
  if (!rgb) {
    *pw = w;
    *ph = h;
    png_destroy_read_struct(&png, &info, NULL);
    return 0;
  }
  if (w != *pw || h != *ph) {
    png_destroy_read_struct(&png, &info, NULL);
    return ct_errf(e, "%s: PNG decode failed (size %dx%d, expected %dx%d)", nm(name), w, h,
                   *pw, *ph);
  }

  uint8_t pal[256 * 3];
  for (int i = 0; i < 256; i++) pal[3 * i] = pal[3 * i + 1] = pal[3 * i + 2] = (uint8_t)i;
  if (ct == PNG_COLOR_TYPE_PALETTE) {
    png_colorp plte = NULL;
    int np = 0;
    if (png_get_PLTE(png, info, &plte, &np) != 0 && plte) {
      if (np > 256) np = 256;
      for (int i = 0; i < np; i++) {
        pal[3 * i] = plte[i].red;
        pal[3 * i + 1] = plte[i].green;
        pal[3 * i + 2] = plte[i].blue;
      }
    }
  }
  if (bd < 8) png_set_packing(png);
  int passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  size_t rowbytes = png_get_rowbytes(png, info);
  size_t rows = passes > 1 ? (size_t)h : 1;
  raw = malloc(rowbytes * rows);
  if (!raw) {
    png_destroy_read_struct(&png, &info, NULL);
    return ct_errf(e, "%s: PNG decode failed (out of memory for %zu bytes)", nm(name),
                   rowbytes * rows);
  }
  if (passes > 1) {
    for (int p = 0; p < passes; p++)
      for (int y = 0; y < h; y++) png_read_row(png, raw + (size_t)y * rowbytes, NULL);
    for (int y = 0; y < h; y++)
      png_row_to_rgb(rgb + (size_t)y * w * 3, raw + (size_t)y * rowbytes, w, ct, bd, pal);
  } else {
    for (int y = 0; y < h; y++) {
      png_read_row(png, raw, NULL);
      png_row_to_rgb(rgb + (size_t)y * w * 3, raw, w, ct, bd, pal);
    }
  }
  /* Like Pillow, stop once the image data is complete: chunks after the
   * image data (and a missing IEND) are not read. */
  free(raw);
  raw = NULL;
  png_destroy_read_struct(&png, &info, NULL);
  return 0;
}

/* ================================================================= JPEG */

typedef struct jpeg_ctx {
  struct jpeg_error_mgr pub;
  jmp_buf jb;
  int eof;
  char msg[JMSG_LENGTH_MAX];
} jpeg_ctx;

static void jpeg_error_exit_cb(j_common_ptr cinfo) {
  jpeg_ctx *c = (jpeg_ctx *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, c->msg);
  longjmp(c->jb, 1);
}

/* Warnings are ignored (as Pillow does), except running out of data: libjpeg
 * would pad with a fake EOI, Pillow raises "image file is truncated". */
static void jpeg_emit_cb(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
    jpeg_ctx *c = (jpeg_ctx *)cinfo->err;
    c->eof = 1;
    (*cinfo->err->format_message)(cinfo, c->msg);
    longjmp(c->jb, 1);
  }
}

static void jpeg_output_cb(j_common_ptr cinfo) { (void)cinfo; }

/* Pillow's MULDIV255 and cmyk2rgb (Convert.c) applied to Pillow's CMYK, which
 * for JPEG is the decoded data inverted ("CMYK;I", Adobe convention, always). */
static inline uint8_t muldiv255(unsigned a, unsigned b) {
  unsigned t = a * b + 128;
  return (uint8_t)(((t >> 8) + t) >> 8);
}

static int jpeg_decode(const uint8_t *buf, size_t n, const char *name, int *pw, int *ph,
                       uint8_t *rgb, ct_err *e) {
  struct jpeg_decompress_struct cinfo;
  jpeg_ctx jerr;
  memset(&jerr, 0, sizeof jerr);
  cinfo.err = jpeg_std_error(&jerr.pub);
  jerr.pub.error_exit = jpeg_error_exit_cb;
  jerr.pub.emit_message = jpeg_emit_cb;
  jerr.pub.output_message = jpeg_output_cb;
  uint8_t *volatile row = NULL;
  if (setjmp(jerr.jb)) {
    free(row);
    jpeg_destroy_decompress(&cinfo);
    return ct_errf(e, "%s: JPEG decode failed (%s%s)", nm(name),
                   jerr.eof ? "truncated file: " : "", jerr.msg);
  }
  jpeg_create_decompress(&cinfo);
  if ((unsigned long)n != n) {
    jpeg_destroy_decompress(&cinfo);
    return ct_errf(e, "%s: JPEG decode failed (file too large)", nm(name));
  }
  jpeg_mem_src(&cinfo, buf, (unsigned long)n);
  jpeg_read_header(&cinfo, TRUE);
  int nc = cinfo.num_components;
  if (nc != 1 && nc != 3 && nc != 4) {
    jpeg_destroy_decompress(&cinfo);
    return ct_errf(e, "%s: JPEG decode failed (cannot handle %d-component images)", nm(name),
                   nc);
  }
  if (ct_image_check_pixels(name, "JPEG", cinfo.image_width, cinfo.image_height, e)) {
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  int w = (int)cinfo.image_width, h = (int)cinfo.image_height;
  if (!rgb) {
    *pw = w;
    *ph = h;
    jpeg_destroy_decompress(&cinfo);
    return 0;
  }
  if (w != *pw || h != *ph) {
    jpeg_destroy_decompress(&cinfo);
    return ct_errf(e, "%s: JPEG decode failed (size %dx%d, expected %dx%d)", nm(name), w, h,
                   *pw, *ph);
  }
  /* Pillow: "L" keeps libjpeg's default (grayscale), "RGB" asks JCS_RGB,
   * "CMYK;I" asks JCS_CMYK; DCT method and upsampling stay at the defaults
   * (ISLOW, fancy upsampling). */
  if (nc == 3) cinfo.out_color_space = JCS_RGB;
  else if (nc == 4) cinfo.out_color_space = JCS_CMYK;
  jpeg_start_decompress(&cinfo);
  int oc = cinfo.output_components;
  if ((int)cinfo.output_width != w || (int)cinfo.output_height != h ||
      (oc != 1 && oc != 3 && oc != 4)) {
    jpeg_destroy_decompress(&cinfo);
    return ct_errf(e, "%s: JPEG decode failed (unexpected output geometry)", nm(name));
  }
  if (oc != 3) {
    row = malloc((size_t)w * oc);
    if (!row) {
      jpeg_destroy_decompress(&cinfo);
      return ct_errf(e, "%s: JPEG decode failed (out of memory)", nm(name));
    }
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    size_t y = cinfo.output_scanline;
    uint8_t *dst = rgb + y * (size_t)w * 3;
    JSAMPROW rp = oc == 3 ? dst : row;
    if (jpeg_read_scanlines(&cinfo, &rp, 1) != 1) continue;
    if (oc == 1) {
      for (int x = 0; x < w; x++) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = row[x];
    } else if (oc == 4) {
      for (int x = 0; x < w; x++) {
        const uint8_t *s = row + 4 * x;
        unsigned nk = s[3]; /* 255 - K with K = 255 - raw */
        for (int c = 0; c < 3; c++) {
          unsigned cc = 255u - s[c];
          int v = (int)nk - (int)muldiv255(cc, nk);
          dst[3 * x + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
      }
    }
  }
  jpeg_finish_decompress(&cinfo); /* reads up to EOI: a missing EOI is "truncated" */
  free(row);
  row = NULL;
  jpeg_destroy_decompress(&cinfo);
  return 0;
}

/* ============================================================ decode API */

int ct_image_probe_mem(const uint8_t *buf, size_t n, const char *name, int *w, int *h,
                       ct_err *e) {
  switch (ct_image_sniff(buf, n)) {
    case CT_FMT_PNG: return png_decode(buf, n, name, w, h, NULL, e);
    case CT_FMT_JPEG: return jpeg_decode(buf, n, name, w, h, NULL, e);
    case CT_FMT_GIF: return ct_gif_decode(buf, n, name, w, h, NULL, e);
    case CT_FMT_WEBP: return ct_webp_decode(buf, n, name, w, h, NULL, e);
    case CT_FMT_TIFF: return ct_tiff_decode(buf, n, name, w, h, NULL, e);
    case CT_FMT_BMP: return ct_bmp_decode(buf, n, name, w, h, NULL, e);
    default: return unknown_format(buf, n, name, e);
  }
}

int ct_image_decode_mem_into(const uint8_t *buf, size_t n, const char *name, int w, int h,
                             uint8_t *rgb, ct_err *e) {
  if (!rgb) return ct_errf(e, "%s: no output buffer", nm(name));
  switch (ct_image_sniff(buf, n)) {
    case CT_FMT_PNG: return png_decode(buf, n, name, &w, &h, rgb, e);
    case CT_FMT_JPEG: return jpeg_decode(buf, n, name, &w, &h, rgb, e);
    case CT_FMT_GIF: return ct_gif_decode(buf, n, name, &w, &h, rgb, e);
    case CT_FMT_WEBP: return ct_webp_decode(buf, n, name, &w, &h, rgb, e);
    case CT_FMT_TIFF: return ct_tiff_decode(buf, n, name, &w, &h, rgb, e);
    case CT_FMT_BMP: return ct_bmp_decode(buf, n, name, &w, &h, rgb, e);
    default: return unknown_format(buf, n, name, e);
  }
}

static void image_clear(ct_image *out) {
  out->w = out->h = 0;
  out->rgb = NULL;
}

/* The allocating twins of the _into functions end here: rgb (malloc'ed, w x h)
 * becomes out when the call that filled it returned rc 0; otherwise it is freed
 * and out stays empty. */
static int image_adopt(ct_image *out, int w, int h, uint8_t *rgb, int rc) {
  if (rc) {
    free(rgb);
    return -1;
  }
  out->w = w;
  out->h = h;
  out->rgb = rgb;
  return 0;
}

int ct_image_decode_mem(const uint8_t *buf, size_t n, const char *name, ct_image *out,
                        ct_err *e) {
  int w, h;
  image_clear(out);
  if (ct_image_probe_mem(buf, n, name, &w, &h, e)) return -1;
  uint8_t *rgb = malloc((size_t)w * h * 3);
  if (!rgb) return ct_errf(e, "%s: out of memory for a %dx%d image", nm(name), w, h);
  return image_adopt(out, w, h, rgb, ct_image_decode_mem_into(buf, n, name, w, h, rgb, e));
}

int ct_image_decode_file(const char *path, ct_image *out, ct_err *e) {
  size_t n = 0;
  image_clear(out);
  char *buf = ct_read_file(path, &n, CT_IMAGE_MAX_FILE, e);
  if (!buf) return -1;
  int r = ct_image_decode_mem((const uint8_t *)buf, n, path, out, e);
  free(buf);
  return r;
}

/* ============================================================ resampling */

/* Pillow's filters (Resample.c), same arithmetic. */
static double filter_box(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

static double filter_bilinear(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

static double filter_hamming(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * M_PI;
  return sin(x) / x * (0.54f + 0.46f * cos(x));
}

static double filter_bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

static double sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return sin(x) / x;
}

static double filter_lanczos(double x) {
  return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0;
}

typedef double (*filter_fn)(double);

static int get_filter(int filter, filter_fn *fn, double *support) {
  switch (filter) {
    case CT_RESAMPLE_BOX: *fn = filter_box; *support = 0.5; return 0;
    case CT_RESAMPLE_BILINEAR: *fn = filter_bilinear; *support = 1.0; return 0;
    case CT_RESAMPLE_HAMMING: *fn = filter_hamming; *support = 1.0; return 0;
    case CT_RESAMPLE_BICUBIC: *fn = filter_bicubic; *support = 2.0; return 0;
    case CT_RESAMPLE_LANCZOS: *fn = filter_lanczos; *support = 3.0; return 0;
    default: return -1;
  }
}

#define PRECISION_BITS (32 - 8 - 2)

/* Pillow: scale = (double)(in1 - in0) / outSize with the float box (0, in). */
static double resample_scale(int in_size, int out_size) {
  float in0 = 0.0f, in1 = (float)in_size;
  return (double)(in1 - in0) / out_size;
}

int ct_resample_ksize(int in_size, int out_size, int filter) {
  filter_fn fn;
  double support;
  if (get_filter(filter, &fn, &support) || in_size < 1 || out_size < 1) return -1;
  double filterscale = resample_scale(in_size, out_size);
  if (filterscale < 1.0) filterscale = 1.0;
  support = support * filterscale;
  return (int)ceil(support) * 2 + 1;
}

/* Pillow's normalize_coeffs_8bpc on one value */
static inline int32_t fixed_coeff(double w) {
  if (w < 0) return (int32_t)(-0.5 + w * (1 << PRECISION_BITS));
  return (int32_t)(0.5 + w * (1 << PRECISION_BITS));
}

/* One output index of Pillow's precompute_coeffs: the taps' weights divided
 * by their sum, zero up to ksize; as doubles (kd) or, through
 * normalize_coeffs_8bpc, as fixed point (kf). The weights are evaluated once
 * for the sum and once for the output, in the same order, so the values are
 * those Pillow stores. No allocation. */
static void coeff_row(filter_fn fn, double support, double scale, double filterscale,
                      int in_size, int ksize, int xx, int *bound, double *kd, int32_t *kf) {
  float in0 = 0.0f;
  double center = in0 + (xx + 0.5) * scale;
  double ww = 0.0, ss = 1.0 / filterscale;
  int x;
  int xmin = (int)(center - support + 0.5);
  if (xmin < 0) xmin = 0;
  int xmax = (int)(center + support + 0.5);
  if (xmax > in_size) xmax = in_size;
  xmax -= xmin;
  for (x = 0; x < xmax; x++) ww += fn((x + xmin - center + 0.5) * ss);
  for (x = 0; x < xmax; x++) {
    double w = fn((x + xmin - center + 0.5) * ss);
    if (ww != 0.0) w /= ww;
    if (kd) kd[x] = w;
    if (kf) kf[x] = fixed_coeff(w);
  }
  for (; x < ksize; x++) {
    if (kd) kd[x] = 0;
    if (kf) kf[x] = 0;
  }
  bound[0] = xmin;
  bound[1] = xmax;
}

static int coeffs_any(int in_size, int out_size, int filter, int o0, int count, int *bounds,
                      double *kd, int32_t *kf) {
  filter_fn fn;
  double support;
  if (get_filter(filter, &fn, &support) || in_size < 1 || out_size < 1) return -1;
  double scale = resample_scale(in_size, out_size), filterscale = scale;
  if (filterscale < 1.0) filterscale = 1.0;
  support = support * filterscale;
  int ksize = (int)ceil(support) * 2 + 1;
  for (int i = 0; i < count; i++)
    coeff_row(fn, support, scale, filterscale, in_size, ksize, o0 + i, bounds + 2 * i,
              kd ? kd + (size_t)i * ksize : NULL, kf ? kf + (size_t)i * ksize : NULL);
  return 0;
}

int ct_resample_coeffs_f64(int in_size, int out_size, int filter, int o0, int count,
                           int *bounds, double *coeffs) {
  return coeffs_any(in_size, out_size, filter, o0, count, bounds, coeffs, NULL);
}

int ct_resample_coeffs(int in_size, int out_size, int filter, int o0, int count, int *bounds,
                       int32_t *coeffs) {
  return coeffs_any(in_size, out_size, filter, o0, count, bounds, NULL, coeffs);
}

static inline uint8_t clip8(int32_t acc) {
  int32_t v = acc >> PRECISION_BITS;
  return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Horizontal pass (Pillow's ImagingResampleHorizontal_8bpc, 3 bands):
 * dst[y][i] = clip8(2^21 + sum_x src[y][bounds[2i] + x] * k[i][x]).
 * src points at the first needed row; rows, nx output columns. */
static void resample_h_forward(uint8_t *dst, size_t dst_stride, const uint8_t *src,
                               size_t src_stride, int rows, int nx, const int *bounds,
                               const int32_t *kk, int ksize) {
  for (int y = 0; y < rows; y++) {
    const uint8_t *s = src + (size_t)y * src_stride;
    uint8_t *d = dst + (size_t)y * dst_stride;
    for (int i = 0; i < nx; i++) {
      int xmin = bounds[2 * i], xmax = bounds[2 * i + 1];
      const int32_t *k = kk + (size_t)i * ksize;
      const uint8_t *p = s + (size_t)xmin * 3;
      int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < xmax; x++) {
        s0 += p[3 * x] * k[x];
        s1 += p[3 * x + 1] * k[x];
        s2 += p[3 * x + 2] * k[x];
      }
      d[3 * i] = clip8(s0);
      d[3 * i + 1] = clip8(s1);
      d[3 * i + 2] = clip8(s2);
    }
  }
}

/* Vertical pass (ImagingResampleVertical_8bpc): src row r is input row
 * row0 + r; ny output rows of nx pixels. */
static void resample_v_forward(uint8_t *dst, size_t dst_stride, const uint8_t *src,
                               size_t src_stride, int row0, int ny, int nx,
                               const int *bounds, const int32_t *kk, int ksize) {
  for (int j = 0; j < ny; j++) {
    int ymin = bounds[2 * j] - row0, ymax = bounds[2 * j + 1];
    const int32_t *k = kk + (size_t)j * ksize;
    uint8_t *d = dst + (size_t)j * dst_stride;
    for (int i = 0; i < nx; i++) {
      int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
      const uint8_t *p = src + (size_t)ymin * src_stride + (size_t)i * 3;
      for (int y = 0; y < ymax; y++) {
        const uint8_t *q = p + (size_t)y * src_stride;
        s0 += q[0] * k[y];
        s1 += q[1] * k[y];
        s2 += q[2] * k[y];
      }
      d[3 * i] = clip8(s0);
      d[3 * i + 1] = clip8(s1);
      d[3 * i + 2] = clip8(s2);
    }
  }
}

#define MAX_SIDE (1 << 28)

int ct_image_resample_window(const ct_image *in, int W, int H, int filter, int x0, int y0,
                             int cw, int ch, uint8_t *out, ct_err *e) {
  filter_fn fn;
  double support;
  if (!in || !in->rgb || in->w < 1 || in->h < 1)
    return ct_errf(e, "resize: empty input image");
  if (filter == CT_RESAMPLE_NEAREST)
    return ct_errf(e, "resize: resample 0 (NEAREST) is not supported; use 1-5 "
                      "(LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING)");
  if (get_filter(filter, &fn, &support))
    return ct_errf(e, "resize: unknown resample filter %d (Pillow numbering: 1 LANCZOS, "
                      "2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING)", filter);
  if (W < 1 || H < 1 || W > MAX_SIDE || H > MAX_SIDE)
    return ct_errf(e, "resize: invalid target size %dx%d", W, H);
  if (cw < 1 || ch < 1 || (int64_t)cw * ch > CT_IMAGE_MAX_PIXELS)
    return ct_errf(e, "resize: invalid output window %dx%d", cw, ch);

  memset(out, 0, (size_t)cw * ch * 3);
  int ix0 = x0 > 0 ? x0 : 0, iy0 = y0 > 0 ? y0 : 0;
  int ix1 = (int64_t)x0 + cw < W ? x0 + cw : W, iy1 = (int64_t)y0 + ch < H ? y0 + ch : H;
  if (ix1 <= ix0 || iy1 <= iy0) return 0; /* all padding */
  int nx = ix1 - ix0, ny = iy1 - iy0;
  uint8_t *dst = out + ((size_t)(iy0 - y0) * cw + (size_t)(ix0 - x0)) * 3;
  size_t dst_stride = (size_t)cw * 3;
  int need_h = W != in->w, need_v = H != in->h;

  int kh = need_h ? ct_resample_ksize(in->w, W, filter) : 0;
  int kv = need_v ? ct_resample_ksize(in->h, H, filter) : 0;
  size_t n_kh = (size_t)kh * nx, n_kv = (size_t)kv * ny;
  if (n_kh > ((size_t)1 << 31) || n_kv > ((size_t)1 << 31))
    return ct_errf(e, "resize: %dx%d -> %dx%d needs too many coefficients", in->w, in->h, W,
                   H);
  /* scratch: bounds (ints) and coefficients (int32) of both passes */
  size_t nint = 2 * (size_t)nx + 2 * (size_t)ny + n_kh + n_kv;
  int32_t *scratch = malloc(nint * sizeof(int32_t));
  if (!scratch) return ct_errf(e, "resize: out of memory");
  int *bh = (int *)scratch, *bv = bh + 2 * (size_t)nx;
  int32_t *kkh = (int32_t *)(bv + 2 * (size_t)ny), *kkv = kkh + n_kh;

  int r0 = iy0, r1 = iy1; /* input rows the vertical pass reads */
  if (need_v) {
    ct_resample_coeffs(in->h, H, filter, iy0, ny, bv, kkv);
    r0 = INT_MAX;
    r1 = 0;
    for (int j = 0; j < ny; j++) {
      if (bv[2 * j] < r0) r0 = bv[2 * j];
      if (bv[2 * j] + bv[2 * j + 1] > r1) r1 = bv[2 * j] + bv[2 * j + 1];
    }
    if (r1 <= r0) r1 = r0 + 1; /* cannot happen: every output has taps */
  }
  if (need_h) ct_resample_coeffs(in->w, W, filter, ix0, nx, bh, kkh);

  const uint8_t *src;
  size_t src_stride;
  uint8_t *tmp = NULL;
  size_t in_stride = (size_t)in->w * 3;
  if (need_h) {
    int rows = r1 - r0;
    if (!need_v) {
      /* horizontal only: write straight into the output */
      resample_h_forward(dst, dst_stride, in->rgb + (size_t)r0 * in_stride, in_stride, rows,
                         nx, bh, kkh, kh);
      free(scratch);
      return 0;
    }
    tmp = malloc((size_t)rows * nx * 3);
    if (!tmp) {
      free(scratch);
      return ct_errf(e, "resize: out of memory");
    }
    resample_h_forward(tmp, (size_t)nx * 3, in->rgb + (size_t)r0 * in_stride, in_stride, rows,
                       nx, bh, kkh, kh);
    src = tmp;
    src_stride = (size_t)nx * 3;
  } else {
    src = in->rgb + (size_t)r0 * in_stride + (size_t)ix0 * 3;
    src_stride = in_stride;
  }
  if (need_v) {
    resample_v_forward(dst, dst_stride, src, src_stride, r0, ny, nx, bv, kkv, kv);
  } else {
    for (int j = 0; j < ny; j++)
      memcpy(dst + (size_t)j * dst_stride, src + (size_t)j * src_stride, (size_t)nx * 3);
  }
  free(tmp);
  free(scratch);
  return 0;
}

static int check_size(const char *what, int w, int h, ct_err *e) {
  if (w < 1 || h < 1) return ct_errf(e, "%s: invalid size %dx%d (must be at least 1x1)", what, w, h);
  if ((int64_t)w * h > CT_IMAGE_MAX_PIXELS)
    return ct_errf(e, "%s: size %dx%d is over the limit of %lld pixels", what, w, h,
                   (long long)CT_IMAGE_MAX_PIXELS);
  return 0;
}

int ct_image_resize_into(const ct_image *in, int w, int h, int filter, uint8_t *out,
                         ct_err *e) {
  if (check_size("resize", w, h, e)) return -1;
  return ct_image_resample_window(in, w, h, filter, 0, 0, w, h, out, e);
}

int ct_image_resize(const ct_image *in, int w, int h, int filter, ct_image *out, ct_err *e) {
  image_clear(out);
  if (check_size("resize", w, h, e)) return -1;
  uint8_t *rgb = malloc((size_t)w * h * 3);
  if (!rgb) return ct_errf(e, "resize: out of memory for %dx%d", w, h);
  return image_adopt(out, w, h, rgb, ct_image_resize_into(in, w, h, filter, rgb, e));
}

int ct_image_resize_bicubic(const ct_image *in, int w, int h, ct_image *out, ct_err *e) {
  return ct_image_resize(in, w, h, CT_RESAMPLE_BICUBIC, out, e);
}

static int floordiv2(int d) { return d >= 0 ? d / 2 : -((-d + 1) / 2); }

void ct_center_crop_offsets(int W, int H, int cw, int ch, int *left, int *top) {
  *top = floordiv2(H - ch);
  *left = floordiv2(W - cw);
}

int ct_image_center_crop_into(const ct_image *in, int w, int h, uint8_t *out, ct_err *e) {
  if (check_size("center_crop", w, h, e)) return -1;
  if (!in || !in->rgb) return ct_errf(e, "center_crop: empty input image");
  int left, top;
  ct_center_crop_offsets(in->w, in->h, w, h, &left, &top);
  return ct_image_resample_window(in, in->w, in->h, CT_RESAMPLE_BICUBIC, left, top, w, h, out,
                                  e);
}

int ct_image_center_crop(const ct_image *in, int w, int h, ct_image *out, ct_err *e) {
  image_clear(out);
  if (check_size("center_crop", w, h, e)) return -1;
  uint8_t *rgb = malloc((size_t)w * h * 3);
  if (!rgb) return ct_errf(e, "center_crop: out of memory for %dx%d", w, h);
  return image_adopt(out, w, h, rgb, ct_image_center_crop_into(in, w, h, rgb, e));
}

/* ========================================================= preprocessing */

void ct_preproc_default(ct_preproc *p) {
  static const double mean[3] = {0.48145466, 0.4578275, 0.40821073};
  static const double std[3] = {0.26862954, 0.26130258, 0.27577711};
  memset(p, 0, sizeof *p);
  p->do_convert_rgb = p->do_resize = p->do_center_crop = 1;
  p->do_rescale = p->do_normalize = 1;
  p->shortest_edge = 224;
  p->size_w = p->size_h = 0;
  p->crop_w = p->crop_h = 224;
  p->rescale_factor = 1.0 / 255;
  memcpy(p->mean, mean, sizeof mean);
  memcpy(p->std, std, sizeof std);
  p->resample = CT_RESAMPLE_BICUBIC;
}

#define MAX_CFG_SIDE 16384

int ct_preproc_check(const ct_preproc *p, const char *name, ct_err *e) {
  name = name ? name : "preprocessor config";
  if (p->do_resize) {
    if (p->shortest_edge > 0) {
      if (p->shortest_edge > MAX_CFG_SIDE)
        return ct_errf(e, "%s: size.shortest_edge %d is out of range (1..%d)", name,
                       p->shortest_edge, MAX_CFG_SIDE);
    } else if (p->size_w < 1 || p->size_h < 1 || p->size_w > MAX_CFG_SIDE ||
               p->size_h > MAX_CFG_SIDE) {
      return ct_errf(e, "%s: size %dx%d is out of range (1..%d)", name, p->size_w, p->size_h,
                     MAX_CFG_SIDE);
    }
    filter_fn fn;
    double s;
    if (p->resample == CT_RESAMPLE_NEAREST)
      return ct_errf(e, "%s: resample 0 (NEAREST) is not supported (use 1-5)", name);
    if (get_filter(p->resample, &fn, &s))
      return ct_errf(e, "%s: unknown resample %d (Pillow numbering: 1 LANCZOS, 2 BILINEAR, "
                        "3 BICUBIC, 4 BOX, 5 HAMMING)", name, p->resample);
  }
  if (p->do_center_crop && (p->crop_w < 1 || p->crop_h < 1 || p->crop_w > MAX_CFG_SIDE ||
                            p->crop_h > MAX_CFG_SIDE))
    return ct_errf(e, "%s: crop_size %dx%d is out of range (1..%d)", name, p->crop_w,
                   p->crop_h, MAX_CFG_SIDE);
  /* each side may be in range while the area is not: refuse before a
   * preprocess allocates the output */
  if (p->do_center_crop && (int64_t)p->crop_w * p->crop_h > CT_IMAGE_MAX_PIXELS)
    return ct_errf(e, "%s: crop_size %dx%d is over the limit of %lld pixels", name, p->crop_w,
                   p->crop_h, (long long)CT_IMAGE_MAX_PIXELS);
  if (p->do_resize && p->shortest_edge <= 0 &&
      (int64_t)p->size_w * p->size_h > CT_IMAGE_MAX_PIXELS)
    return ct_errf(e, "%s: size %dx%d is over the limit of %lld pixels", name, p->size_w,
                   p->size_h, (long long)CT_IMAGE_MAX_PIXELS);
  if (p->do_rescale && !isfinite(p->rescale_factor))
    return ct_errf(e, "%s: rescale_factor is not a finite number", name);
  if (p->do_normalize)
    for (int c = 0; c < 3; c++)
      if (!isfinite(p->mean[c]) || !isfinite(p->std[c]) || p->std[c] == 0)
        return ct_errf(e, "%s: image_mean/image_std[%d] = %g/%g is invalid (std must be a "
                          "finite nonzero number)", name, c, p->mean[c], p->std[c]);
  return 0;
}

/* JSON helpers: 1 = set, 0 = absent, -1 = wrong type */
static int json_flag(const cJSON *o, const char *key, int *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v) return 0;
  if (cJSON_IsBool(v)) *out = cJSON_IsTrue(v) ? 1 : 0;
  else if (cJSON_IsNull(v)) *out = 0; /* transformers: None is falsy */
  else if (cJSON_IsNumber(v)) *out = v->valuedouble != 0;
  else return -1;
  return 1;
}

static int json_int(const cJSON *v, int *out) {
  if (!cJSON_IsNumber(v)) return -1;
  double d = v->valuedouble;
  if (d != floor(d) || d < -2147483647.0 || d > 2147483647.0) return -1;
  *out = (int)d;
  return 0;
}

/* transformers' get_size_dict: int -> shortest_edge (size) or square (crop);
 * [h, w] -> height/width; dict as is. */
static int json_size(const cJSON *v, int square, int *shortest, int *w, int *h) {
  int a, b;
  *shortest = 0;
  if (cJSON_IsNumber(v)) {
    if (json_int(v, &a)) return -1;
    if (square) *w = *h = a;
    else *shortest = a;
    return 0;
  }
  if (cJSON_IsArray(v)) {
    if (cJSON_GetArraySize(v) != 2) return -1;
    if (json_int(cJSON_GetArrayItem(v, 0), &a) || json_int(cJSON_GetArrayItem(v, 1), &b))
      return -1;
    *h = a;
    *w = b;
    return 0;
  }
  if (cJSON_IsObject(v)) {
    const cJSON *se = cJSON_GetObjectItemCaseSensitive(v, "shortest_edge");
    const cJSON *hh = cJSON_GetObjectItemCaseSensitive(v, "height");
    const cJSON *ww = cJSON_GetObjectItemCaseSensitive(v, "width");
    if (se && !square) {
      if (json_int(se, &a)) return -1;
      *shortest = a;
      return 0;
    }
    if (hh && ww) {
      if (json_int(hh, &a) || json_int(ww, &b)) return -1;
      *h = a;
      *w = b;
      return 0;
    }
  }
  return -1;
}

static int json_triple(const cJSON *v, double out[3]) {
  if (cJSON_IsNumber(v)) {
    out[0] = out[1] = out[2] = v->valuedouble;
    return 0;
  }
  if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 3) return -1;
  for (int i = 0; i < 3; i++) {
    const cJSON *x = cJSON_GetArrayItem(v, i);
    if (!cJSON_IsNumber(x)) return -1;
    out[i] = x->valuedouble;
  }
  return 0;
}

int ct_preproc_parse(const char *json, size_t len, const char *name, ct_preproc *p,
                     ct_err *e) {
  name = name ? name : "preprocessor config";
  ct_preproc_default(p);
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!root) {
    const char *ep = cJSON_GetErrorPtr();
    long off = (ep && ep >= json && ep <= json + len) ? (long)(ep - json) : -1;
    return ct_errf(e, "%s: invalid JSON (near byte %ld)", name, off);
  }
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return ct_errf(e, "%s: expected a JSON object", name);
  }
  static const char *flags[] = {"do_convert_rgb", "do_resize", "do_center_crop", "do_rescale",
                                "do_normalize"};
  int *fp[] = {&p->do_convert_rgb, &p->do_resize, &p->do_center_crop, &p->do_rescale,
               &p->do_normalize};
  const char *bad = NULL, *why = NULL;
  for (int i = 0; i < 5 && !bad; i++)
    if (json_flag(root, flags[i], fp[i]) < 0) bad = flags[i], why = "a boolean";
  const cJSON *v;
  if (!bad && (v = cJSON_GetObjectItemCaseSensitive(root, "size")) && !cJSON_IsNull(v)) {
    if (json_size(v, 0, &p->shortest_edge, &p->size_w, &p->size_h))
      bad = "size", why = "an int, [height, width], {\"shortest_edge\": n} or {\"height\", \"width\"}";
  }
  if (!bad && (v = cJSON_GetObjectItemCaseSensitive(root, "crop_size")) && !cJSON_IsNull(v)) {
    int se = 0;
    if (json_size(v, 1, &se, &p->crop_w, &p->crop_h))
      bad = "crop_size", why = "an int, [height, width] or {\"height\", \"width\"}";
  }
  if (!bad && (v = cJSON_GetObjectItemCaseSensitive(root, "resample")) && !cJSON_IsNull(v)) {
    if (json_int(v, &p->resample)) bad = "resample", why = "an integer (Pillow filter number)";
  }
  if (!bad && (v = cJSON_GetObjectItemCaseSensitive(root, "rescale_factor")) &&
      !cJSON_IsNull(v)) {
    if (!cJSON_IsNumber(v)) bad = "rescale_factor", why = "a number";
    else p->rescale_factor = v->valuedouble;
  }
  if (!bad && (v = cJSON_GetObjectItemCaseSensitive(root, "image_mean")) && !cJSON_IsNull(v)) {
    if (json_triple(v, p->mean)) bad = "image_mean", why = "a number or a list of 3 numbers";
  }
  if (!bad && (v = cJSON_GetObjectItemCaseSensitive(root, "image_std")) && !cJSON_IsNull(v)) {
    if (json_triple(v, p->std)) bad = "image_std", why = "a number or a list of 3 numbers";
  }
  cJSON_Delete(root);
  if (bad) return ct_errf(e, "%s: \"%s\" must be %s", name, bad, why);
  return ct_preproc_check(p, name, e);
}

int ct_preproc_load(const char *path, ct_preproc *p, ct_err *e) {
  size_t n = 0;
  char *buf = ct_read_file(path, &n, (size_t)16 << 20, e);
  if (!buf) return -1;
  int r = ct_preproc_parse(buf, n, path, p, e);
  free(buf);
  return r;
}

int ct_preproc_resized_size(const ct_preproc *p, int img_w, int img_h, int *w, int *h,
                            ct_err *e) {
  if (img_w < 1 || img_h < 1) return ct_errf(e, "preprocess: empty image");
  if (!p->do_resize) {
    *w = img_w;
    *h = img_h;
    return 0;
  }
  if (p->shortest_edge <= 0) {
    *w = p->size_w;
    *h = p->size_h;
    return 0;
  }
  /* get_resize_output_image_size(default_to_square=False):
   * short, long = (w, h) if w <= h else (h, w); new_long = int(N * long / short) */
  int64_t n = p->shortest_edge;
  int64_t sh = img_w <= img_h ? img_w : img_h, lo = img_w <= img_h ? img_h : img_w;
  double q = (double)(n * lo) / (double)sh;
  if (q >= MAX_SIDE)
    return ct_errf(e, "preprocess: a %dx%d image is too elongated (resize to shortest edge "
                      "%d gives a side of %.0f)", img_w, img_h, p->shortest_edge, q);
  int nl = (int)q;
  if (img_w <= img_h) {
    *w = (int)n;
    *h = nl;
  } else {
    *w = nl;
    *h = (int)n;
  }
  return 0;
}

int ct_preproc_output_size(const ct_preproc *p, int img_w, int img_h, int *w, int *h,
                           ct_err *e) {
  if (p->do_center_crop) {
    if (img_w < 1 || img_h < 1) return ct_errf(e, "preprocess: empty image");
    *w = p->crop_w;
    *h = p->crop_h;
    return 0;
  }
  if (ct_preproc_resized_size(p, img_w, img_h, w, h, e)) return -1;
  return check_size("preprocess", *w, *h, e);
}

int ct_preproc_resize_crop_into(const ct_image *img, const ct_preproc *p, uint8_t *out,
                                ct_err *e) {
  int W, H;
  if (!img || !img->rgb) return ct_errf(e, "preprocess: empty image");
  if (ct_preproc_resized_size(p, img->w, img->h, &W, &H, e)) return -1;
  int filter = p->do_resize ? p->resample : CT_RESAMPLE_BICUBIC;
  if (p->do_center_crop) {
    int left, top;
    ct_center_crop_offsets(W, H, p->crop_w, p->crop_h, &left, &top);
    return ct_image_resample_window(img, W, H, filter, left, top, p->crop_w, p->crop_h, out,
                                    e);
  }
  if (check_size("preprocess", W, H, e)) return -1;
  return ct_image_resample_window(img, W, H, filter, 0, 0, W, H, out, e);
}

void ct_normalize_forward(float *out, const uint8_t *hwc, int w, int h, const ct_preproc *p) {
  size_t n = (size_t)w * h;
  for (int c = 0; c < 3; c++) {
    float m = (float)p->mean[c], s = (float)p->std[c];
    float *o = out + (size_t)c * n;
    const uint8_t *src = hwc + c;
    for (size_t i = 0; i < n; i++) {
      float x = p->do_rescale ? (float)((double)src[3 * i] * p->rescale_factor)
                              : (float)src[3 * i];
      if (p->do_normalize) x = (x - m) / s;
      o[i] = x;
    }
  }
}

int ct_preprocess(const ct_image *img, const ct_preproc *p, float *out, ct_err *e) {
  int ow, oh;
  if (!img || !img->rgb) return ct_errf(e, "preprocess: empty image");
  if (ct_preproc_output_size(p, img->w, img->h, &ow, &oh, e)) return -1;
  uint8_t *u8 = malloc((size_t)ow * oh * 3);
  if (!u8) return ct_errf(e, "preprocess: out of memory");
  if (ct_preproc_resize_crop_into(img, p, u8, e)) {
    free(u8);
    return -1;
  }
  ct_normalize_forward(out, u8, ow, oh, p);
  free(u8);
  return 0;
}

int ct_preprocess_file(const char *path, const ct_preproc *p, int ow, int oh, float *out,
                       ct_err *e) {
  ct_image img;
  if (ct_image_decode_file(path, &img, e)) return -1;
  int w, h;
  if (ct_preproc_output_size(p, img.w, img.h, &w, &h, e)) {
    ct_image_free(&img);
    return -1;
  }
  if (w != ow || h != oh) {
    ct_image_free(&img);
    return ct_errf(e, "%s: preprocessed size %dx%d differs from the expected %dx%d "
                      "(enable center crop for batches of differently sized images)",
                   path, w, h, ow, oh);
  }
  int r = ct_preprocess(&img, p, out, e);
  ct_image_free(&img);
  return r;
}
