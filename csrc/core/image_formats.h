/* image_formats.h - internal: the GIF, WebP, TIFF and BMP decoders behind
 * ct_image_probe_mem / ct_image_decode_mem_into (image.c dispatches on the
 * file's first bytes). Not part of the public C API.
 *
 * Each decoder has png_decode's contract: with rgb == NULL it reads the
 * header only and sets *pw, *ph (checked against CT_IMAGE_MAX_PIXELS); with
 * rgb != NULL it checks that the size is still *pw x *ph and fills rgb
 * (w*h*3 bytes) with what Pillow 9.4's Image.open(p).convert("RGB") gives.
 * Errors name the file: "<name>: GIF decode failed (reason)". */
#ifndef CT_IMAGE_FORMATS_H
#define CT_IMAGE_FORMATS_H

#include <stddef.h>
#include <stdint.h>

#include "ct.h"

int ct_gif_decode(const uint8_t *buf, size_t n, const char *name, int *pw, int *ph,
                  uint8_t *rgb, ct_err *e);
int ct_webp_decode(const uint8_t *buf, size_t n, const char *name, int *pw, int *ph,
                   uint8_t *rgb, ct_err *e);
int ct_tiff_decode(const uint8_t *buf, size_t n, const char *name, int *pw, int *ph,
                   uint8_t *rgb, ct_err *e);
int ct_bmp_decode(const uint8_t *buf, size_t n, const char *name, int *pw, int *ph,
                  uint8_t *rgb, ct_err *e);

/* shared with image.c: "<memory>" for NULL, and the zero-size / pixel-limit check */
const char *ct_image_name(const char *name);
int ct_image_check_pixels(const char *name, const char *fmt, uint64_t w, uint64_t h,
                          ct_err *e);

#endif
