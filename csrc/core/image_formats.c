/* image_formats.c - GIF (giflib), WebP (libwebp's animation decoder, as
 * Pillow uses it), TIFF (libtiff) and BMP (hand-written) decoding into RGB,
 * matching Pillow 9.4's Image.open(p).convert("RGB"). See image_formats.h
 * for the contract and docs/images.md for the semantics and deviations.
 *
 * References: Pillow 9.4 GifImagePlugin.py, WebPImagePlugin.py + _webp.c,
 * TiffImagePlugin.py (OPEN_INFO), BmpImagePlugin.py, libImaging/Unpack.c and
 * Convert.c. */
#include "image_formats.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gif_lib.h>
#include <tiffio.h>
#include <webp/decode.h>
#include <webp/demux.h>

#include "image.h"

#define NM(name) ct_image_name(name)

/* Pillow's palettes start as the gray ramp: entries a file does not define
 * give index i -> (i, i, i). */
static void gray_ramp(uint8_t pal[256 * 3]) {
  for (int i = 0; i < 256; i++) pal[3 * i] = pal[3 * i + 1] = pal[3 * i + 2] = (uint8_t)i;
}

static int size_mismatch(const char *name, const char *fmt, int w, int h, const int *pw,
                         const int *ph, ct_err *e) {
  return ct_errf(e, "%s: %s decode failed (size %dx%d, expected %dx%d)", NM(name), fmt, w, h,
                 *pw, *ph);
}

/* ================================================================== GIF */

typedef struct mem_reader {
  const uint8_t *buf;
  size_t n, pos;
} mem_reader;

static int gif_read_cb(GifFileType *g, GifByteType *out, int len) {
  mem_reader *m = (mem_reader *)g->UserData;
  size_t k = len > 0 ? (size_t)len : 0;
  if (k > m->n - m->pos) k = m->n - m->pos;
  if (k) memcpy(out, m->buf + m->pos, k);
  m->pos += k;
  return (int)k;
}

static const char *gif_reason(int code) {
  if (code == D_GIF_ERR_READ_FAILED) return "truncated file";
  const char *s = GifErrorString(code);
  return s ? s : "unknown giflib error";
}

/* First frame only: the canvas is the logical screen (grown to hold the
 * frame if the frame reaches past it), filled with the transparency index of
 * the frame's graphic control extension, or index 0 (Pillow's load_prepare);
 * the frame's indices are drawn at its offset; then the frame's palette
 * (local, else global) is applied, transparency ignored (P -> RGB). */
int ct_gif_decode(const uint8_t *buf, size_t n, const char *name, int *pw, int *ph,
                  uint8_t *rgb, ct_err *e) {
  mem_reader m = {buf, n, 0};
  int err = 0, transp = -1;
  GifRecordType rt = UNDEFINED_RECORD_TYPE;
  GifFileType *g = DGifOpen(&m, gif_read_cb, &err);
  if (!g) return ct_errf(e, "%s: GIF decode failed (%s)", NM(name), gif_reason(err));
  GifByteType *line = NULL;
  for (;;) {
    if (DGifGetRecordType(g, &rt) == GIF_ERROR) goto fail;
    if (rt == EXTENSION_RECORD_TYPE) {
      int code = 0;
      GifByteType *ext = NULL;
      if (DGifGetExtension(g, &code, &ext) == GIF_ERROR) goto fail;
      /* ext[0] is the block length; ext[1] the flags, ext[4] the index */
      if (code == GRAPHICS_EXT_FUNC_CODE && ext && ext[0] >= 4 && (ext[1] & 1)) transp = ext[4];
      while (ext)
        if (DGifGetExtensionNext(g, &ext) == GIF_ERROR) goto fail;
    } else if (rt == IMAGE_DESC_RECORD_TYPE) {
      if (DGifGetImageDesc(g) == GIF_ERROR) goto fail;
      break;
    } else if (rt == TERMINATE_RECORD_TYPE) {
      DGifCloseFile(g, &err);
      return ct_errf(e, "%s: GIF decode failed (no image in the file)", NM(name));
    }
  }
  {
    GifImageDesc *d = &g->Image;
    if (d->Left < 0 || d->Top < 0 || d->Width < 0 || d->Height < 0) {
      DGifCloseFile(g, &err);
      return ct_errf(e, "%s: GIF decode failed (bad frame geometry)", NM(name));
    }
    int64_t fx1 = (int64_t)d->Left + d->Width, fy1 = (int64_t)d->Top + d->Height;
    int64_t W = g->SWidth > fx1 ? g->SWidth : fx1, H = g->SHeight > fy1 ? g->SHeight : fy1;
    if (W < 0 || H < 0 || ct_image_check_pixels(name, "GIF", (uint64_t)W, (uint64_t)H, e)) {
      DGifCloseFile(g, &err);
      return -1;
    }
    int w = (int)W, h = (int)H;
    if (!rgb) {
      *pw = w;
      *ph = h;
      DGifCloseFile(g, &err);
      return 0;
    }
    if (w != *pw || h != *ph) {
      DGifCloseFile(g, &err);
      return size_mismatch(name, "GIF", w, h, pw, ph, e);
    }
    uint8_t pal[256 * 3];
    gray_ramp(pal);
    ColorMapObject *cm = d->ColorMap ? d->ColorMap : g->SColorMap;
    if (cm && cm->Colors) {
      int k = cm->ColorCount < 256 ? cm->ColorCount : 256;
      for (int i = 0; i < k; i++) {
        pal[3 * i] = cm->Colors[i].Red;
        pal[3 * i + 1] = cm->Colors[i].Green;
        pal[3 * i + 2] = cm->Colors[i].Blue;
      }
    }
    const uint8_t *bg = pal + 3 * (transp >= 0 ? transp : 0);
    for (size_t i = 0; i < (size_t)w * h; i++) memcpy(rgb + 3 * i, bg, 3);
    int fw = d->Width, fh = d->Height;
    if (fw > 0 && fh > 0) {
      line = malloc((size_t)fw);
      if (!line) {
        DGifCloseFile(g, &err);
        return ct_errf(e, "%s: GIF decode failed (out of memory)", NM(name));
      }
      static const int start[4] = {0, 4, 2, 1}, step[4] = {8, 8, 4, 2};
      int passes = d->Interlace ? 4 : 1;
      for (int p = 0; p < passes; p++) {
        int y0 = d->Interlace ? start[p] : 0, dy = d->Interlace ? step[p] : 1;
        for (int y = y0; y < fh; y += dy) {
          if (DGifGetLine(g, line, fw) == GIF_ERROR) goto fail;
          uint8_t *dst = rgb + ((size_t)(d->Top + y) * w + d->Left) * 3;
          for (int x = 0; x < fw; x++) memcpy(dst + 3 * x, pal + 3 * line[x], 3);
        }
      }
    }
  }
  free(line);
  DGifCloseFile(g, &err);
  return 0;
fail:
  err = g->Error;
  free(line);
  DGifCloseFile(g, NULL);
  return ct_errf(e, "%s: GIF decode failed (%s)", NM(name), gif_reason(err));
}

/* ================================================================= WebP */

static const char *webp_status(VP8StatusCode s) {
  switch (s) {
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "bitstream error";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED: return "suspended";
    case VP8_STATUS_USER_ABORT: return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "truncated file";
    default: return "unknown error";
  }
}

/* Pillow 9.4 decodes every WebP (still or animated) with WebPAnimDecoder in
 * RGBA and takes the first frame; RGB = the canvas's RGB, alpha dropped. */
int ct_webp_decode(const uint8_t *buf, size_t n, const char *name, int *pw, int *ph,
                   uint8_t *rgb, ct_err *e) {
  WebPBitstreamFeatures f;
  VP8StatusCode st = WebPGetFeatures(buf, n, &f);
  if (st != VP8_STATUS_OK)
    return ct_errf(e, "%s: WebP decode failed (%s)", NM(name), webp_status(st));
  if (f.width < 0 || f.height < 0 ||
      ct_image_check_pixels(name, "WebP", (uint64_t)f.width, (uint64_t)f.height, e))
    return -1;
  if (!rgb) {
    *pw = f.width;
    *ph = f.height;
    return 0;
  }
  if (f.width != *pw || f.height != *ph)
    return size_mismatch(name, "WebP", f.width, f.height, pw, ph, e);
  WebPAnimDecoderOptions o;
  if (!WebPAnimDecoderOptionsInit(&o))
    return ct_errf(e, "%s: WebP decode failed (libwebp version mismatch)", NM(name));
  o.color_mode = MODE_RGBA;
  o.use_threads = 0;
  WebPData data = {buf, n};
  WebPAnimDecoder *dec = WebPAnimDecoderNew(&data, &o);
  if (!dec) return ct_errf(e, "%s: WebP decode failed (corrupt or truncated file)", NM(name));
  WebPAnimInfo info;
  uint8_t *frame = NULL;
  int ts = 0;
  if (!WebPAnimDecoderGetInfo(dec, &info) || (int)info.canvas_width != *pw ||
      (int)info.canvas_height != *ph) {
    WebPAnimDecoderDelete(dec);
    return ct_errf(e, "%s: WebP decode failed (inconsistent canvas size)", NM(name));
  }
  if (!WebPAnimDecoderGetNext(dec, &frame, &ts) || !frame) {
    WebPAnimDecoderDelete(dec);
    return ct_errf(e, "%s: WebP decode failed (corrupt or truncated image data)", NM(name));
  }
  size_t np = (size_t)*pw * *ph;
  for (size_t i = 0; i < np; i++) memcpy(rgb + 3 * i, frame + 4 * i, 3);
  WebPAnimDecoderDelete(dec);
  return 0;
}

/* ================================================================= TIFF */

typedef struct tiff_mem {
  const uint8_t *buf;
  size_t n;
  uint64_t pos;
  char msg[200];
} tiff_mem;

static tmsize_t tiff_read_cb(thandle_t h, void *p, tmsize_t sz) {
  tiff_mem *m = (tiff_mem *)h;
  if (sz <= 0 || m->pos >= m->n) return 0;
  uint64_t k = m->n - m->pos;
  if ((uint64_t)sz < k) k = (uint64_t)sz;
  memcpy(p, m->buf + m->pos, (size_t)k);
  m->pos += k;
  return (tmsize_t)k;
}
static tmsize_t tiff_write_cb(thandle_t h, void *p, tmsize_t sz) {
  (void)h, (void)p, (void)sz;
  return 0;
}
static toff_t tiff_seek_cb(thandle_t h, toff_t off, int whence) {
  tiff_mem *m = (tiff_mem *)h;
  uint64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? m->pos : m->n;
  uint64_t np = base + off; /* off may be a negative offset in two's complement */
  if (whence == SEEK_SET) np = off;
  if (np > ((uint64_t)1 << 62)) return (toff_t)-1;
  m->pos = np;
  return np;
}
static int tiff_close_cb(thandle_t h) {
  (void)h;
  return 0;
}
static toff_t tiff_size_cb(thandle_t h) { return ((tiff_mem *)h)->n; }
static int tiff_map_cb(thandle_t h, void **base, toff_t *size) {
  (void)h, (void)base, (void)size;
  return 0;
}
static void tiff_unmap_cb(thandle_t h, void *base, toff_t size) { (void)h, (void)base, (void)size; }

static int tiff_error_cb(TIFF *t, void *ud, const char *module, const char *fmt, va_list ap) {
  (void)t, (void)module;
  tiff_mem *m = (tiff_mem *)ud;
  if (!m->msg[0]) vsnprintf(m->msg, sizeof m->msg, fmt, ap);
  return 1;
}
static int tiff_warning_cb(TIFF *t, void *ud, const char *module, const char *fmt, va_list ap) {
  (void)t, (void)ud, (void)module, (void)fmt, (void)ap;
  return 1;
}

/* the layouts we convert (Pillow 9.4's OPEN_INFO modes, then convert("RGB")) */
enum { TK_GRAY, TK_GRAY16, TK_GRAYA, TK_RGB, TK_PAL, TK_CMYK };

typedef struct tiff_fmt {
  int kind, bps, spp, invert;
  uint8_t pal[256 * 3];
} tiff_fmt;

static inline uint8_t muldiv255(unsigned a, unsigned b) {
  unsigned t = a * b + 128;
  return (uint8_t)((t + (t >> 8)) >> 8);
}

static inline unsigned bits_at(const uint8_t *src, int bps, size_t i) {
  size_t bit = i * (size_t)bps;
  unsigned byte = src[bit >> 3];
  return (byte >> (8 - bps - (bit & 7))) & ((1u << bps) - 1);
}

/* count pixels of one row (or row part) of raw contiguous samples -> RGB */
static void tiff_row(const tiff_fmt *f, const uint8_t *src, uint8_t *dst, int count) {
  for (int x = 0; x < count; x++, dst += 3) {
    switch (f->kind) {
      case TK_GRAY: {
        unsigned v = bits_at(src, f->bps, (size_t)x), max = (1u << f->bps) - 1;
        uint8_t g = (uint8_t)(v * (255 / max));
        if (f->invert) g = (uint8_t)(255 - g);
        dst[0] = dst[1] = dst[2] = g;
        break;
      }
      case TK_GRAY16: { /* I;16 -> RGB clips */
        uint16_t v;
        memcpy(&v, src + 2 * (size_t)x, 2);
        dst[0] = dst[1] = dst[2] = (uint8_t)(v > 255 ? 255 : v);
        break;
      }
      case TK_GRAYA:
        dst[0] = dst[1] = dst[2] = src[2 * (size_t)x];
        break;
      case TK_RGB:
        if (f->bps == 8) {
          memcpy(dst, src + (size_t)x * f->spp, 3);
        } else { /* 16-bit: the high byte (RGB;16L/B) */
          for (int c = 0; c < 3; c++) {
            uint16_t v;
            memcpy(&v, src + ((size_t)x * f->spp + c) * 2, 2);
            dst[c] = (uint8_t)(v >> 8);
          }
        }
        break;
      case TK_PAL:
        memcpy(dst, f->pal + 3 * bits_at(src, f->bps, (size_t)x), 3);
        break;
      case TK_CMYK: { /* Pillow's cmyk2rgb */
        const uint8_t *p = src + 4 * (size_t)x;
        unsigned nk = 255u - p[3];
        for (int c = 0; c < 3; c++) {
          int v = (int)nk - muldiv255(p[c], nk);
          dst[c] = (uint8_t)(v < 0 ? 0 : v);
        }
        break;
      }
    }
  }
}

static int tiff_layout(TIFF *t, tiff_fmt *f, char *why, size_t nwhy) {
  uint16_t bps = 1, spp = 1, photo = 0, planar = 1, sf = 1, nextra = 0, *extra = NULL;
  TIFFGetFieldDefaulted(t, TIFFTAG_BITSPERSAMPLE, &bps);
  TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLESPERPIXEL, &spp);
  TIFFGetFieldDefaulted(t, TIFFTAG_PLANARCONFIG, &planar);
  TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLEFORMAT, &sf);
  TIFFGetFieldDefaulted(t, TIFFTAG_EXTRASAMPLES, &nextra, &extra);
  if (!TIFFGetField(t, TIFFTAG_PHOTOMETRIC, &photo)) {
    snprintf(why, nwhy, "no PhotometricInterpretation tag");
    return -1;
  }
  int ex = nextra >= 1 && extra ? extra[0] : -1;
  memset(f, 0, sizeof *f);
  f->bps = bps;
  f->spp = spp;
  if (sf != SAMPLEFORMAT_UINT) {
    snprintf(why, nwhy, "unsupported sample format %u (only unsigned integers)", sf);
    return -1;
  }
  if (spp > 1 && planar != PLANARCONFIG_CONTIG) {
    snprintf(why, nwhy, "unsupported planar (separate planes) layout");
    return -1;
  }
  if ((photo == PHOTOMETRIC_MINISBLACK || photo == PHOTOMETRIC_MINISWHITE) && spp == 1 &&
      (bps == 1 || bps == 2 || bps == 4 || bps == 8)) {
    f->kind = TK_GRAY;
    f->invert = photo == PHOTOMETRIC_MINISWHITE;
    return 0;
  }
  if (photo == PHOTOMETRIC_MINISBLACK && spp == 1 && bps == 16) {
    f->kind = TK_GRAY16;
    return 0;
  }
  if (photo == PHOTOMETRIC_MINISBLACK && spp == 2 && bps == 8 && ex == EXTRASAMPLE_UNASSALPHA) {
    f->kind = TK_GRAYA;
    return 0;
  }
  if (photo == PHOTOMETRIC_RGB && (bps == 8 || bps == 16) &&
      (spp == 3 || (spp == 4 && (ex == EXTRASAMPLE_UNSPECIFIED || ex == EXTRASAMPLE_UNASSALPHA)))) {
    f->kind = TK_RGB;
    return 0;
  }
  if (photo == PHOTOMETRIC_PALETTE && spp == 1 && (bps == 1 || bps == 2 || bps == 4 || bps == 8)) {
    uint16_t *r = NULL, *g = NULL, *b = NULL;
    if (!TIFFGetField(t, TIFFTAG_COLORMAP, &r, &g, &b) || !r || !g || !b) {
      snprintf(why, nwhy, "palette image without a ColorMap");
      return -1;
    }
    f->kind = TK_PAL;
    gray_ramp(f->pal);
    for (int i = 0; i < (1 << bps); i++) { /* Pillow: o8(v // 256) */
      f->pal[3 * i] = (uint8_t)(r[i] >> 8);
      f->pal[3 * i + 1] = (uint8_t)(g[i] >> 8);
      f->pal[3 * i + 2] = (uint8_t)(b[i] >> 8);
    }
    return 0;
  }
  if (photo == PHOTOMETRIC_SEPARATED && spp == 4 && bps == 8) {
    uint16_t inkset = INKSET_CMYK;
    TIFFGetFieldDefaulted(t, TIFFTAG_INKSET, &inkset);
    if (inkset == INKSET_CMYK) {
      f->kind = TK_CMYK;
      return 0;
    }
  }
  static const char *pnames[] = {"min-is-white", "min-is-black", "RGB",  "palette",
                                 "mask",         "separated",    "YCbCr"};
  snprintf(why, nwhy,
           "unsupported layout: photometric %u (%s), %u sample%s of %u bits%s; supported are "
           "8-bit RGB/RGBA/CMYK, 16-bit RGB/RGBA, 1/2/4/8/16-bit gray, 8-bit gray+alpha and "
           "1/2/4/8-bit palette",
           photo, photo <= 6 ? pnames[photo] : "other", spp, spp == 1 ? "" : "s", bps,
           ex == EXTRASAMPLE_ASSOCALPHA ? " (premultiplied alpha)" : "");
  return -1;
}

int ct_tiff_decode(const uint8_t *buf, size_t n, const char *name, int *pw, int *ph,
                   uint8_t *rgb, ct_err *e) {
  tiff_mem m = {buf, n, 0, {0}};
  TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
  if (!opts) return ct_errf(e, "%s: TIFF decode failed (out of memory)", NM(name));
  TIFFOpenOptionsSetErrorHandlerExtR(opts, tiff_error_cb, &m);
  TIFFOpenOptionsSetWarningHandlerExtR(opts, tiff_warning_cb, &m);
  TIFFOpenOptionsSetMaxSingleMemAlloc(opts, (tmsize_t)CT_IMAGE_MAX_FILE);
  TIFF *t = TIFFClientOpenExt(NM(name), "rm", (thandle_t)&m, tiff_read_cb, tiff_write_cb,
                              tiff_seek_cb, tiff_close_cb, tiff_size_cb, tiff_map_cb,
                              tiff_unmap_cb, opts);
  TIFFOpenOptionsFree(opts);
  if (!t)
    return ct_errf(e, "%s: TIFF decode failed (%s)", NM(name),
                   m.msg[0] ? m.msg : "cannot read the header");
  uint8_t *sbuf = NULL;
  tiff_fmt *f = NULL;
  char why[320] = {0};
  uint32_t w32 = 0, h32 = 0;
  if (!TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w32) || !TIFFGetField(t, TIFFTAG_IMAGELENGTH, &h32)) {
    snprintf(why, sizeof why, "no image size tags");
    goto fail;
  }
  if (ct_image_check_pixels(name, "TIFF", w32, h32, e)) {
    TIFFClose(t);
    return -1;
  }
  int w = (int)w32, h = (int)h32;
  f = malloc(sizeof *f);
  if (!f) {
    snprintf(why, sizeof why, "out of memory");
    goto fail;
  }
  if (tiff_layout(t, f, why, sizeof why)) goto fail;
  if (!rgb) {
    *pw = w;
    *ph = h;
    free(f);
    TIFFClose(t);
    return 0;
  }
  if (w != *pw || h != *ph) {
    free(f);
    TIFFClose(t);
    return size_mismatch(name, "TIFF", w, h, pw, ph, e);
  }
  if (TIFFIsTiled(t)) {
    uint32_t tw = 0, th = 0;
    TIFFGetField(t, TIFFTAG_TILEWIDTH, &tw);
    TIFFGetField(t, TIFFTAG_TILELENGTH, &th);
    uint64_t tsz = TIFFTileSize64(t), trow = TIFFTileRowSize64(t);
    if (!tw || !th || !tsz || !trow || tsz / trow < th || trow * 8 < (uint64_t)tw * f->bps * f->spp ||
        tsz > (uint64_t)CT_IMAGE_MAX_FILE) {
      snprintf(why, sizeof why, "bad tile geometry");
      goto fail;
    }
    sbuf = malloc((size_t)tsz);
    if (!sbuf) {
      snprintf(why, sizeof why, "out of memory");
      goto fail;
    }
    for (uint64_t ty = 0; ty < h32; ty += th) {
      for (uint64_t tx = 0; tx < w32; tx += tw) {
        if (TIFFReadTile(t, sbuf, (uint32_t)tx, (uint32_t)ty, 0, 0) < 0) goto fail_read;
        uint64_t rows = h32 - ty < th ? h32 - ty : th, cols = w32 - tx < tw ? w32 - tx : tw;
        for (uint64_t r = 0; r < rows; r++)
          tiff_row(f, sbuf + r * trow, rgb + ((size_t)(ty + r) * w + tx) * 3, (int)cols);
      }
    }
  } else {
    uint32_t rps = 0;
    TIFFGetFieldDefaulted(t, TIFFTAG_ROWSPERSTRIP, &rps);
    if (rps == 0 || rps > h32) rps = h32;
    uint64_t sls = TIFFScanlineSize64(t);
    if (!sls || sls * 8 < (uint64_t)w * f->bps * f->spp || sls * rps > (uint64_t)CT_IMAGE_MAX_FILE) {
      snprintf(why, sizeof why, "bad strip geometry");
      goto fail;
    }
    sbuf = malloc((size_t)(sls * rps));
    if (!sbuf) {
      snprintf(why, sizeof why, "out of memory");
      goto fail;
    }
    uint32_t nstrips = (h32 + rps - 1) / rps;
    for (uint32_t s = 0; s < nstrips; s++) {
      uint32_t rows = h32 - s * rps < rps ? h32 - s * rps : rps;
      tmsize_t want = (tmsize_t)(sls * rows);
      tmsize_t got = TIFFReadEncodedStrip(t, s, sbuf, want);
      if (got < want) goto fail_read;
      for (uint32_t r = 0; r < rows; r++)
        tiff_row(f, sbuf + r * sls, rgb + (size_t)(s * rps + r) * w * 3, w);
    }
  }
  free(sbuf);
  free(f);
  TIFFClose(t);
  return 0;
fail_read:
  snprintf(why, sizeof why, "%s", m.msg[0] ? m.msg : "truncated or corrupt image data");
fail:
  free(sbuf);
  free(f);
  TIFFClose(t);
  return ct_errf(e, "%s: TIFF decode failed (%s)", NM(name), why);
}

/* ================================================================== BMP */

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Pillow's raw modes for BMP pixels */
enum { BM_PAL, BM_BGR15, BM_BGR16, BM_BGR, BM_BGRX, BM_XBGR, BM_RGBA };

/* Hand-written, every read bounds-checked: no Debian library reads BMP the
 * way Pillow does (header sizes 12/40/64/108/124, its bitfield table, its
 * offset rule); this follows BmpImagePlugin.py line by line. RLE is refused. */
int ct_bmp_decode(const uint8_t *buf, size_t n, const char *name, int *pw, int *ph,
                  uint8_t *rgb, ct_err *e) {
#define BMP_FAIL(...)                                                          \
  do {                                                                         \
    char why_[200];                                                            \
    snprintf(why_, sizeof why_, __VA_ARGS__);                                  \
    return ct_errf(e, "%s: BMP decode failed (%s)", NM(name), why_);           \
  } while (0)
  if (n < 18) BMP_FAIL("truncated file (header)");
  uint64_t off = le32(buf + 10);
  uint32_t hs = le32(buf + 14);
  if (hs != 12 && hs != 40 && hs != 64 && hs != 108 && hs != 124)
    BMP_FAIL("unsupported header size %u; supported: 12, 40, 64, 108, 124", hs);
  if (n < 14 + (size_t)hs) BMP_FAIL("truncated file (header)");
  const uint8_t *hd = buf + 18; /* the header after its size field */
  uint64_t w, h;
  int topdown = 0;
  unsigned bits;
  uint32_t comp = 0, colors = 0, pad;
  if (hs == 12) {
    w = le16(hd);
    h = le16(hd + 2);
    bits = le16(hd + 6);
    pad = 3;
  } else {
    topdown = hd[7] == 0xFF;
    w = le32(hd);
    h = topdown ? ((uint64_t)1 << 32) - le32(hd + 4) : le32(hd + 4);
    bits = le16(hd + 10);
    comp = le32(hd + 12);
    colors = le32(hd + 28);
    pad = 4;
  }
  size_t pos = 14 + (size_t)hs;
  uint32_t mask[4] = {0, 0, 0, 0};
  if (comp == 3) {
    if (hs - 4 >= 52) {
      for (int i = 0; i < 4; i++) mask[i] = le32(hd + 36 + 4 * i);
    } else {
      if (n < pos + 12) BMP_FAIL("truncated file (bit masks)");
      for (int i = 0; i < 3; i++) mask[i] = le32(buf + pos + 4 * i);
      pos += 12;
    }
  }
  int mode;
  switch (bits) {
    case 1: case 4: case 8: mode = BM_PAL; break;
    case 16: mode = BM_BGR15; break;
    case 24: mode = BM_BGR; break;
    case 32: mode = BM_BGRX; break;
    default: BMP_FAIL("unsupported pixel depth %u", bits);
  }
  if (bits <= 8) {
    if (!colors) colors = 1u << bits;
    if (off == 14 + (uint64_t)hs) off += 4 * (uint64_t)colors; /* Pillow's rule */
  }
  if (comp == 3) {
#define M4(a, b, c, d) (mask[0] == (a) && mask[1] == (b) && mask[2] == (c) && mask[3] == (d))
#define M3(a, b, c) (mask[0] == (a) && mask[1] == (b) && mask[2] == (c))
    if (bits == 32 && M4(0xFF0000, 0xFF00, 0xFF, 0)) mode = BM_BGRX;
    else if (bits == 32 && (M4(0xFF000000, 0xFF0000, 0xFF00, 0) || M4(0xFF000000, 0xFF0000, 0xFF00, 0xFF)))
      mode = BM_XBGR;
    else if (bits == 32 && M4(0xFF, 0xFF00, 0xFF0000, 0xFF000000)) mode = BM_RGBA;
    else if (bits == 32 && (M4(0xFF0000, 0xFF00, 0xFF, 0xFF000000) || M4(0, 0, 0, 0))) mode = BM_BGRX;
    else if (bits == 24 && M3(0xFF0000, 0xFF00, 0xFF)) mode = BM_BGR;
    else if (bits == 16 && M3(0xF800, 0x7E0, 0x1F)) mode = BM_BGR16;
    else if (bits == 16 && M3(0x7C00, 0x3E0, 0x1F)) mode = BM_BGR15;
    else BMP_FAIL("unsupported bitfields layout (%u-bit, masks %08x %08x %08x %08x)", bits, mask[0], mask[1], mask[2], mask[3]);
#undef M4
#undef M3
  } else if (comp == 1 || comp == 2) {
    BMP_FAIL("RLE%d compression is not supported", comp == 1 ? 8 : 4);
  } else if (comp != 0) {
    BMP_FAIL("unsupported compression %u", comp);
  }
  uint8_t pal[256 * 3];
  gray_ramp(pal);
  if (mode == BM_PAL) {
    if (colors > 256) BMP_FAIL("palette of %u colors (at most 256)", colors);
    if (n < pos + (size_t)pad * colors) BMP_FAIL("truncated file (palette)");
    const uint8_t *p = buf + pos;
    int grey = 1;
    for (uint32_t i = 0; i < colors; i++) {
      unsigned v = colors == 2 ? i * 255 : i;
      if (p[pad * i] != v || p[pad * i + 1] != v || p[pad * i + 2] != v) grey = 0;
      pal[3 * i] = p[pad * i + 2];
      pal[3 * i + 1] = p[pad * i + 1];
      pal[3 * i + 2] = p[pad * i];
    }
    /* Pillow then reads the pixels as "1" or "L" whatever their depth; only
     * the depths where that is right are accepted (the lookup gives the same) */
    if (grey && !((colors == 2 && bits == 1) || (colors != 2 && bits == 8)))
      BMP_FAIL("%u-bit pixels with a %u-entry gray palette (Pillow misreads these)", bits, colors);
    pos += (size_t)pad * colors;
  }
  if (ct_image_check_pixels(name, "BMP", w, h, e)) return -1;
  if (!off) off = pos;
  uint64_t stride = ((w * bits + 31) >> 3) & ~(uint64_t)3;
  if (off > n || stride * h > n - off)
    BMP_FAIL("truncated file (pixel data: %llu bytes at offset %llu, the file has %zu)",
             (unsigned long long)(stride * h), (unsigned long long)off, n);
  if (!rgb) {
    *pw = (int)w;
    *ph = (int)h;
    return 0;
  }
  if ((int)w != *pw || (int)h != *ph) return size_mismatch(name, "BMP", (int)w, (int)h, pw, ph, e);
  for (uint64_t y = 0; y < h; y++) {
    const uint8_t *src = buf + off + stride * (topdown ? y : h - 1 - y);
    uint8_t *dst = rgb + (size_t)y * w * 3;
    for (uint64_t x = 0; x < w; x++, dst += 3) {
      switch (mode) {
        case BM_PAL: memcpy(dst, pal + 3 * bits_at(src, (int)bits, (size_t)x), 3); break;
        case BM_BGR15:
        case BM_BGR16: {
          unsigned v = le16(src + 2 * x);
          dst[2] = (uint8_t)((v & 31) * 255 / 31);
          if (mode == BM_BGR15) {
            dst[1] = (uint8_t)(((v >> 5) & 31) * 255 / 31);
            dst[0] = (uint8_t)(((v >> 10) & 31) * 255 / 31);
          } else {
            dst[1] = (uint8_t)(((v >> 5) & 63) * 255 / 63);
            dst[0] = (uint8_t)(((v >> 11) & 31) * 255 / 31);
          }
          break;
        }
        case BM_BGR: dst[0] = src[3 * x + 2], dst[1] = src[3 * x + 1], dst[2] = src[3 * x]; break;
        case BM_BGRX: dst[0] = src[4 * x + 2], dst[1] = src[4 * x + 1], dst[2] = src[4 * x]; break;
        case BM_XBGR: dst[0] = src[4 * x + 3], dst[1] = src[4 * x + 2], dst[2] = src[4 * x + 1]; break;
        case BM_RGBA: memcpy(dst, src + 4 * x, 3); break;
      }
    }
  }
  return 0;
#undef BMP_FAIL
}
