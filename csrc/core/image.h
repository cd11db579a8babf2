/* image.h - JPEG/PNG decoding and CLIP preprocessing, bit-exact with
 * Pillow 9.4 (Image.open(p).convert("RGB"), Image.resize) and transformers'
 * CLIPImageProcessor (slow, PIL-backed path). No Lua here.
 *
 * Images are 8-bit RGB, row-major HWC (3 bytes per pixel, rows of w*3 bytes).
 *
 * Memory: the *_into functions write into caller memory (so a binding can keep
 * pixels in GC-visible blocks); they allocate only scratch that they free
 * before returning. The convenience functions (ct_image_decode_mem/file,
 * ct_image_resize, ct_image_center_crop) malloc out->rgb; release it with
 * ct_image_free. Every function returns 0 on success, -1 with a message in e.
 * Nothing here prints, exits or aborts. See docs/images.md.
 */
#ifndef CT_IMAGE_H
#define CT_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "ct.h"

/* Refused before allocating: more pixels than this in a decoded image or a
 * requested resize / crop. Equal to Pillow's DecompressionBombError threshold
 * (2 * Image.MAX_IMAGE_PIXELS = 2 * 89478485). */
#define CT_IMAGE_MAX_PIXELS ((int64_t)178956970)
/* Largest encoded file ct_image_decode_file reads. */
#define CT_IMAGE_MAX_FILE ((size_t)1 << 30)

typedef struct ct_image {
  int w, h;
  uint8_t *rgb; /* w*h*3 bytes */
} ct_image;

enum {
  CT_FMT_UNKNOWN = 0,
  CT_FMT_JPEG = 1,
  CT_FMT_PNG = 2,
  CT_FMT_GIF = 3,
  CT_FMT_WEBP = 4,
  CT_FMT_TIFF = 5,
  CT_FMT_BMP = 6
};

/* Pillow's resampling filter numbers (PIL.Image.Resampling). */
enum {
  CT_RESAMPLE_NEAREST = 0, /* not supported (Pillow uses another code path) */
  CT_RESAMPLE_LANCZOS = 1,
  CT_RESAMPLE_BILINEAR = 2,
  CT_RESAMPLE_BICUBIC = 3,
  CT_RESAMPLE_BOX = 4,
  CT_RESAMPLE_HAMMING = 5
};

/* ------------------------------------------------------------- decoding */

/* Format from the first bytes (Pillow's checks), never from a file name:
 * PNG signature, FF D8 FF, GIF87a/GIF89a, RIFF....WEBP, II*\0 / MM\0*
 * (and BigTIFF's II+\0 / MM\0+), BM. */
int ct_image_sniff(const uint8_t *buf, size_t n);

/* Read the header only: width and height (checked against the pixel limit).
 * name is used in messages ("cat.png: PNG decode failed (...)"). */
int ct_image_probe_mem(const uint8_t *buf, size_t n, const char *name, int *w,
                       int *h, ct_err *e);
/* Decode into rgb, which must hold w*h*3 bytes for the w, h that
 * ct_image_probe_mem returned (they are checked again). */
int ct_image_decode_mem_into(const uint8_t *buf, size_t n, const char *name,
                             int w, int h, uint8_t *rgb, ct_err *e);
/* Convenience: probe + malloc + decode. */
int ct_image_decode_mem(const uint8_t *buf, size_t n, const char *name,
                        ct_image *out, ct_err *e);
int ct_image_decode_file(const char *path, ct_image *out, ct_err *e);
/* free(img->rgb) and zero the struct; safe to call twice. */
void ct_image_free(ct_image *img);

/* ------------------------------------------------------------- resampling */

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc for output indices
 * [o0, o0+count) of a resize from in_size to out_size: bounds[2*i] = first
 * input index, bounds[2*i+1] = number of taps; coeffs[i*ksize + j] = fixed
 * point weight (22 fractional bits). ksize = ct_resample_ksize(...). No
 * allocation. Returns -1 only for an unknown filter. */
int ct_resample_ksize(int in_size, int out_size, int filter);
int ct_resample_coeffs(int in_size, int out_size, int filter, int o0, int count,
                       int *bounds, int32_t *coeffs);
/* The same weights in double before fixed-point conversion (for tests). */
int ct_resample_coeffs_f64(int in_size, int out_size, int filter, int o0,
                           int count, int *bounds, double *coeffs);

/* Compute the window [x0, x0+cw) x [y0, y0+ch) of the image that Pillow's
 * in.resize((W, H), filter) would produce, exactly; pixels of the window that
 * fall outside [0,W) x [0,H) are set to 0 (transformers' center_crop padding).
 * out holds cw*ch*3 bytes. W == in->w skips the horizontal pass and H == in->h
 * the vertical one, as Pillow does. Allocates scratch only. */
int ct_image_resample_window(const ct_image *in, int W, int H, int filter,
                             int x0, int y0, int cw, int ch, uint8_t *out,
                             ct_err *e);
/* Full resize into out (w*h*3 bytes), and the malloc'ing convenience forms. */
int ct_image_resize_into(const ct_image *in, int w, int h, int filter,
                         uint8_t *out, ct_err *e);
int ct_image_resize(const ct_image *in, int w, int h, int filter,
                    ct_image *out, ct_err *e);
int ct_image_resize_bicubic(const ct_image *in, int w, int h, ct_image *out,
                            ct_err *e);

/* transformers' center_crop: top = (H - h) // 2, left = (W - w) // 2 (floor
 * division); where the image is smaller than the crop, zero padding. */
void ct_center_crop_offsets(int W, int H, int cw, int ch, int *left, int *top);
int ct_image_center_crop_into(const ct_image *in, int w, int h, uint8_t *out,
                              ct_err *e);
int ct_image_center_crop(const ct_image *in, int w, int h, ct_image *out,
                         ct_err *e);

/* ---------------------------------------------------------- preprocessing */

typedef struct ct_preproc {
  int do_convert_rgb; /* accepted; decoding always yields RGB */
  int do_resize, do_center_crop, do_rescale, do_normalize;
  int shortest_edge;  /* > 0: size = {"shortest_edge": N} */
  int size_w, size_h; /* used when shortest_edge == 0: size = {height, width} */
  int crop_w, crop_h;
  double rescale_factor;
  double mean[3], std[3]; /* as written in the config; used as float32 */
  int resample;           /* CT_RESAMPLE_* (Pillow numbering); default bicubic */
} ct_preproc;

/* OpenAI CLIP ViT-B/32 224 defaults (CLIPImageProcessor()). */
void ct_preproc_default(ct_preproc *p);
/* Parse preprocessor_config.json text (missing keys keep the defaults of
 * CLIPImageProcessor; size/crop_size may be ints, lists or dicts as in
 * transformers' get_size_dict). Then ct_preproc_check. */
int ct_preproc_parse(const char *json, size_t len, const char *name,
                     ct_preproc *p, ct_err *e);
int ct_preproc_load(const char *path, ct_preproc *p, ct_err *e);
/* Validate sizes, filter and factors; name prefixes the message. */
int ct_preproc_check(const ct_preproc *p, const char *name, ct_err *e);

/* Size after the resize step (image size if !do_resize), transformers'
 * get_resize_output_image_size (long side int(N * long / short)). */
int ct_preproc_resized_size(const ct_preproc *p, int img_w, int img_h, int *w,
                            int *h, ct_err *e);
/* Size of the final output (crop size, or the resized size without crop). */
int ct_preproc_output_size(const ct_preproc *p, int img_w, int img_h, int *w,
                           int *h, ct_err *e);
/* Resize + center crop, uint8 HWC, into out (ow*oh*3 bytes for the output
 * size above). */
int ct_preproc_resize_crop_into(const ct_image *img, const ct_preproc *p,
                                uint8_t *out, ct_err *e);
/* Rescale + normalize kernel: out (3*h*w floats, CHW) from HWC bytes.
 * x = float32(u8 * rescale_factor) [float64 product, as transformers'
 * rescale], then (x - float32(mean)) / float32(std) in float32. No checks,
 * no allocation. */
void ct_normalize_forward(float *out, const uint8_t *hwc, int w, int h,
                          const ct_preproc *p);
/* Whole pipeline into out (3*oh*ow floats, CHW). */
int ct_preprocess(const ct_image *img, const ct_preproc *p, float *out,
                  ct_err *e);
/* Decode path, then ct_preprocess; the output size must be ow x oh. */
int ct_preprocess_file(const char *path, const ct_preproc *p, int ow, int oh,
                       float *out, ct_err *e);

#endif
