/* bench/make_jpegs.c - a folder of deterministic, photo-like JPEGs for bench/embed_folder.lua.
 *
 * usage: make_jpegs <outdir> [count (256)] [width (640)] [height (480)]
 * Writes <outdir>/img000.jpg ... (every 8th one portrait: height x width). Content: a few
 * octaves of smooth value noise per channel (sky-, ground- and object-like gradients), soft
 * discs and a little grain, so that the files are about as hard to decode as camera photos
 * (quality 90, 4:2:0, libjpeg's defaults otherwise). Same seed, same files. Existing files are
 * kept. Built and run by `make bench-embed` (mk/bench.mk). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

static uint64_t rng_state;
static uint32_t rnd(void) { /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint32_t)((rng_state * 2685821657736338717ULL) >> 32);
}
static double rndf(void) { return rnd() / 4294967296.0; }

/* value noise on a lattice of cell pixels, smoothstep-interpolated */
static void noise_layer(float *dst, int w, int h, int cell, double amp) {
  int gw = w / cell + 2, gh = h / cell + 2;
  float *g = malloc(sizeof(float) * (size_t)gw * gh);
  if (!g) return;
  for (int i = 0; i < gw * gh; i++) g[i] = (float)(rndf() * 2 - 1);
  for (int y = 0; y < h; y++) {
    int gy = y / cell;
    double fy = (double)(y % cell) / cell;
    fy = fy * fy * (3 - 2 * fy);
    for (int x = 0; x < w; x++) {
      int gx = x / cell;
      double fx = (double)(x % cell) / cell;
      fx = fx * fx * (3 - 2 * fx);
      double a = g[gy * gw + gx], b = g[gy * gw + gx + 1];
      double c = g[(gy + 1) * gw + gx], d = g[(gy + 1) * gw + gx + 1];
      double v = (a + (b - a) * fx) * (1 - fy) + (c + (d - c) * fx) * fy;
      dst[(size_t)y * w + x] += (float)(v * amp);
    }
  }
  free(g);
}

static int write_jpeg(const char *path, const uint8_t *rgb, int w, int h) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  struct jpeg_compress_struct c;
  struct jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  jpeg_stdio_dest(&c, f);
  c.image_width = (JDIMENSION)w;
  c.image_height = (JDIMENSION)h;
  c.input_components = 3;
  c.in_color_space = JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, 90, TRUE);
  jpeg_start_compress(&c, TRUE);
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * w * 3);
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  return fclose(f);
}

static void make_image(uint8_t *rgb, int w, int h, int idx) {
  size_t np = (size_t)w * h;
  float *ch = calloc(np * 3, sizeof(float));
  if (!ch) return;
  rng_state = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)(idx + 1) * 0xD1B54A32D192ED03ULL);
  double base[3], horizon = 0.3 + 0.4 * rndf();
  for (int c = 0; c < 3; c++) base[c] = 60 + 140 * rndf();
  for (int c = 0; c < 3; c++) {
    float *p = ch + c * np;
    for (int y = 0; y < h; y++) { /* a sky/ground split with a vertical gradient */
      double t = (double)y / h;
      double v = t < horizon ? base[c] + 50 * (horizon - t) : base[(c + 1) % 3] * (0.6 + 0.4 * t);
      for (int x = 0; x < w; x++) p[(size_t)y * w + x] = (float)v;
    }
    noise_layer(p, w, h, 160, 40);
    noise_layer(p, w, h, 48, 22);
    noise_layer(p, w, h, 12, 10);
    noise_layer(p, w, h, 6, 14);
    noise_layer(p, w, h, 2, 10);
  }
  int discs = 3 + (int)(rnd() % 6);
  for (int k = 0; k < discs; k++) { /* soft-edged objects */
    double cx = rndf() * w, cy = rndf() * h, r = (0.05 + 0.2 * rndf()) * (w < h ? w : h);
    double col[3];
    for (int c = 0; c < 3; c++) col[c] = 255 * rndf();
    int y0 = (int)fmax(0, cy - r - 2), y1 = (int)fmin(h, cy + r + 2);
    int x0 = (int)fmax(0, cx - r - 2), x1 = (int)fmin(w, cx + r + 2);
    for (int y = y0; y < y1; y++)
      for (int x = x0; x < x1; x++) {
        double d = hypot(x - cx, y - cy), a = fmin(1, fmax(0, r - d));
        if (a <= 0) continue;
        for (int c = 0; c < 3; c++) {
          float *p = ch + c * np + (size_t)y * w + x;
          *p = (float)(*p * (1 - a) + (col[c] + 0.5 * (*p - 128)) * a);
        }
      }
  }
  for (size_t i = 0; i < np; i++)
    for (int c = 0; c < 3; c++) {
      double v = ch[c * np + i] + (rndf() - 0.5) * 14; /* grain */
      rgb[3 * i + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
  free(ch);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: make_jpegs <outdir> [count] [width] [height]\n");
    return 2;
  }
  int n = argc > 2 ? atoi(argv[2]) : 256;
  int W = argc > 3 ? atoi(argv[3]) : 640, H = argc > 4 ? atoi(argv[4]) : 480;
  if (n < 1 || W < 16 || H < 16 || W > 8192 || H > 8192) {
    fprintf(stderr, "make_jpegs: bad count or size\n");
    return 2;
  }
  uint8_t *rgb = malloc((size_t)W * H * 3);
  if (!rgb) return 1;
  int made = 0;
  for (int i = 0; i < n; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/img%03d.jpg", argv[1], i);
    FILE *f = fopen(path, "rb");
    if (f) {
      fclose(f);
      continue;
    }
    int w = i % 8 == 7 ? H : W, h = i % 8 == 7 ? W : H;
    make_image(rgb, w, h, i);
    if (write_jpeg(path, rgb, w, h)) {
      fprintf(stderr, "make_jpegs: cannot write %s\n", path);
      free(rgb);
      return 1;
    }
    made++;
  }
  free(rgb);
  fprintf(stderr, "%s: %d JPEGs (%d new)\n", argv[1], n, made);
  return 0;
}
