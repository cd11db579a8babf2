/* tensor.c - small float32 array operations (no Lua). */
#include "tensor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ct_l2_normalize_rows(float *out, const float *x, int64_t N, int64_t C,
                          float eps) {
  for (int64_t i = 0; i < N; i++) {
    const float *r = x + i * C;
    double ss = 0;
    for (int64_t j = 0; j < C; j++) ss += (double)r[j] * r[j];
    double n = sqrt(ss);
    if (n < eps) n = eps;
    float inv = (float)(1.0 / n);
    for (int64_t j = 0; j < C; j++) out[i * C + j] = r[j] * inv;
  }
}

void ct_topk(int64_t *idx, float *val, const float *x, int64_t n, int64_t k) {
  /* partial insertion sort into the k slots: O(n k), fine for k << n. NaN
   * sorts last. */
  int64_t m = 0;
  for (int64_t i = 0; i < n; i++) {
    float v = x[i];
    if (v != v) v = -INFINITY;
    if (m == k && !(v > val[m - 1])) continue;
    int64_t j = m < k ? m++ : k - 1;
    while (j > 0 && v > val[j - 1]) {
      val[j] = val[j - 1];
      idx[j] = idx[j - 1];
      j--;
    }
    val[j] = v;
    idx[j] = i;
  }
  for (int64_t j = 0; j < m; j++) val[j] = x[idx[j]];
}

void ct_sum_axis(float *out, const float *x, int64_t A, int64_t M, int64_t B) {
  for (int64_t a = 0; a < A; a++)
    for (int64_t b = 0; b < B; b++) {
      double s = 0;
      for (int64_t m = 0; m < M; m++) s += x[(a * M + m) * B + b];
      out[a * B + b] = (float)s;
    }
}

void ct_mean_axis(float *out, const float *x, int64_t A, int64_t M, int64_t B) {
  for (int64_t a = 0; a < A; a++)
    for (int64_t b = 0; b < B; b++) {
      double s = 0;
      for (int64_t m = 0; m < M; m++) s += x[(a * M + m) * B + b];
      out[a * B + b] = M ? (float)(s / (double)M) : NAN;
    }
}

float ct_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: renormalize */
      int e = -1;
      do { e++; man <<= 1; } while (!(man & 0x400));
      bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

float ct_bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t ct_f32_to_bf16(float f) {
  uint32_t b;
  memcpy(&b, &f, 4);
  if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40);
  b += 0x7fffu + ((b >> 16) & 1); /* round to nearest even */
  return (uint16_t)(b >> 16);
}

uint16_t ct_f32_to_f16(float f) {
  uint32_t b;
  memcpy(&b, &f, 4);
  uint32_t sign = (b >> 16) & 0x8000;
  uint32_t ab = b & 0x7fffffffu;
  if (ab > 0x7f800000u) return (uint16_t)(sign | 0x7e00);
  if (ab >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* overflow -> inf */
  if (ab < 0x38800000u) { /* subnormal or zero */
    if (ab < 0x33000000u) return (uint16_t)sign;
    uint32_t e = ab >> 23, m = (ab & 0x7fffff) | 0x800000;
    int shift = 126 - (int)e; /* 14 + (113 - e) - ... */
    uint32_t half = m >> (shift);
    uint32_t rem = m & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t h = ((ab - 0x38000000u) >> 13);
  uint32_t rem = ab & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return (uint16_t)(sign | h);
}
