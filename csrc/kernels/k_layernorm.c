/* k_layernorm.c - LayerNorm over the last dim, biased variance.
 * inp, out: [N, C]; w, b: [C]; mean, rstd: [N] (saved for backward).
 * Matches torch.nn.LayerNorm (https://pytorch.org/docs/stable/generated/torch.nn.LayerNorm.html).
 *
 * Forward:  n = (x - mean) * rstd, out = n * w + b, rstd = 1 / sqrt(var + eps).
 * Backward (per row, g = dout, dn = g * w):
 *   dbias   += g
 *   dweight += g * n
 *   dinp    += rstd * (dn - mean_j(dn) - n * mean_j(dn * n))
 * dinp, dout: [N, C]; dweight, dbias: [C]; any gradient may be NULL (skipped). */
#include <math.h>
#include <stddef.h>

#include "kernels.h"
#include "simd.h"
#include "pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

/* sum of x and sum of (x - m)^2 over C floats, in double: 16 independent double lanes (the
 * scalar loop below is one dependent chain), each lane a plain double sum */
__attribute__((target("avx512f"))) static void sums16(const float *x, int C, float m, double *s,
                                                      double *v) {
  __m512d s0 = _mm512_setzero_pd(), s1 = s0, v0 = s0, v1 = s0;
  __m512 mm = _mm512_set1_ps(m);
  int j = 0;
  if (s) {
    for (; j + 16 <= C; j += 16) {
      __m512 xv = _mm512_loadu_ps(x + j);
      __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(xv));
      __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(xv), 1)));
      s0 = _mm512_add_pd(s0, lo);
      s1 = _mm512_add_pd(s1, hi);
    }
    double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    for (; j < C; j++) ss += x[j];
    *s = ss;
  }
  if (!v) return;
  j = 0;
  for (; j + 16 <= C; j += 16) {
    __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + j), mm); /* float difference, as the scalar loop */
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(d));
    __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(d), 1)));
    v0 = _mm512_fmadd_pd(lo, lo, v0);
    v1 = _mm512_fmadd_pd(hi, hi, v1);
  }
  double vv = _mm512_reduce_add_pd(_mm512_add_pd(v0, v1));
  for (; j < C; j++) {
    float d = x[j] - m;
    vv += (double)d * d;
  }
  *v = vv;
}

/* sums16 with AVX2: 16 independent double lanes (four of 4), each a plain double sum */
__attribute__((target("avx2"))) static void sums16_avx2(const float *x, int C, float m, double *s,
                                                        double *v) {
  __m256d z = _mm256_setzero_pd();
  int j = 0;
  if (s) {
    __m256d s0 = z, s1 = z, s2 = z, s3 = z;
    for (; j + 16 <= C; j += 16) {
      s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm_loadu_ps(x + j)));
      s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm_loadu_ps(x + j + 4)));
      s2 = _mm256_add_pd(s2, _mm256_cvtps_pd(_mm_loadu_ps(x + j + 8)));
      s3 = _mm256_add_pd(s3, _mm256_cvtps_pd(_mm_loadu_ps(x + j + 12)));
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3)));
    double ss = (t[0] + t[1]) + (t[2] + t[3]);
    for (; j < C; j++) ss += x[j];
    *s = ss;
  }
  if (!v) return;
  __m128 mm = _mm_set1_ps(m);
  __m256d v0 = z, v1 = z, v2 = z, v3 = z;
  j = 0;
  for (; j + 16 <= C; j += 16) { /* float differences, as the scalar loop */
    __m256d a = _mm256_cvtps_pd(_mm_sub_ps(_mm_loadu_ps(x + j), mm));
    __m256d b = _mm256_cvtps_pd(_mm_sub_ps(_mm_loadu_ps(x + j + 4), mm));
    __m256d c = _mm256_cvtps_pd(_mm_sub_ps(_mm_loadu_ps(x + j + 8), mm));
    __m256d d = _mm256_cvtps_pd(_mm_sub_ps(_mm_loadu_ps(x + j + 12), mm));
    v0 = _mm256_add_pd(v0, _mm256_mul_pd(a, a));
    v1 = _mm256_add_pd(v1, _mm256_mul_pd(b, b));
    v2 = _mm256_add_pd(v2, _mm256_mul_pd(c, c));
    v3 = _mm256_add_pd(v3, _mm256_mul_pd(d, d));
  }
  double t[4];
  _mm256_storeu_pd(t, _mm256_add_pd(_mm256_add_pd(v0, v1), _mm256_add_pd(v2, v3)));
  double vv = (t[0] + t[1]) + (t[2] + t[3]);
  for (; j < C; j++) {
    float d = x[j] - m;
    vv += (double)d * d;
  }
  *v = vv;
}

/* norm16 with AVX2, 8 at a time (the tail masked): the same roundings */
__attribute__((target("avx2"))) static void norm8(float *o, const float *x, const float *w,
                                                  const float *b, int C, float m, float r) {
  __m256 mm = _mm256_set1_ps(m), rr = _mm256_set1_ps(r);
#define NORM8(xv, wv, bv) _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(xv, mm), rr), wv), bv)
  int j = 0;
  for (; j + 8 <= C; j += 8)
    _mm256_storeu_ps(o + j, NORM8(_mm256_loadu_ps(x + j), _mm256_loadu_ps(w + j), _mm256_loadu_ps(b + j)));
  if (j < C) { /* the tail masked (a masked store is slow on AMD: once per row) */
    __m256i k = ct_lanes8(C - j);
    _mm256_maskstore_ps(o + j, k, NORM8(_mm256_maskload_ps(x + j, k), _mm256_maskload_ps(w + j, k),
                                        _mm256_maskload_ps(b + j, k)));
  }
#undef NORM8
}
#endif

#if defined(__x86_64__)
/* o = (x - m) * r * w + b, the same three roundings as the scalar loop (no FMA) */
__attribute__((target("avx512f"))) static void norm16(float *o, const float *x, const float *w,
                                                      const float *b, int C, float m, float r) {
  __m512 mm = _mm512_set1_ps(m), rr = _mm512_set1_ps(r);
  for (int j = 0; j < C; j += 16) {
    __mmask16 k = C - j >= 16 ? 0xffff : (__mmask16)((1u << (C - j)) - 1);
    __m512 t = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), mm), rr);
    t = _mm512_add_ps(_mm512_mul_ps(t, _mm512_maskz_loadu_ps(k, w + j)), _mm512_maskz_loadu_ps(k, b + j));
    _mm512_mask_storeu_ps(o + j, k, t);
  }
}
#elif defined(__aarch64__)
#define CT_LN_NEON 1

/* sums16 on NEON: 8 independent double lanes (four float64x2_t), each a plain double sum */
static void sums8(const float *x, int C, float m, double *s, double *v) {
  float64x2_t z = vdupq_n_f64(0.0);
  float32x4_t mm = vdupq_n_f32(m);
  int j = 0;
  if (s) {
    float64x2_t s0 = z, s1 = z, s2 = z, s3 = z;
    for (; j + 8 <= C; j += 8) {
      float32x4_t a = vld1q_f32(x + j), b = vld1q_f32(x + j + 4);
      s0 = vaddq_f64(s0, vcvt_f64_f32(vget_low_f32(a)));
      s1 = vaddq_f64(s1, vcvt_high_f64_f32(a));
      s2 = vaddq_f64(s2, vcvt_f64_f32(vget_low_f32(b)));
      s3 = vaddq_f64(s3, vcvt_high_f64_f32(b));
    }
    double ss = vaddvq_f64(vaddq_f64(vaddq_f64(s0, s1), vaddq_f64(s2, s3)));
    for (; j < C; j++) ss += x[j];
    *s = ss;
  }
  if (!v) return;
  float64x2_t v0 = z, v1 = z, v2 = z, v3 = z;
  j = 0;
  for (; j + 8 <= C; j += 8) {
    /* float differences, as the scalar loop */
    float32x4_t a = vsubq_f32(vld1q_f32(x + j), mm), b = vsubq_f32(vld1q_f32(x + j + 4), mm);
    float64x2_t a0 = vcvt_f64_f32(vget_low_f32(a)), a1 = vcvt_high_f64_f32(a);
    float64x2_t b0 = vcvt_f64_f32(vget_low_f32(b)), b1 = vcvt_high_f64_f32(b);
    v0 = vfmaq_f64(v0, a0, a0);
    v1 = vfmaq_f64(v1, a1, a1);
    v2 = vfmaq_f64(v2, b0, b0);
    v3 = vfmaq_f64(v3, b1, b1);
  }
  double vv = vaddvq_f64(vaddq_f64(vaddq_f64(v0, v1), vaddq_f64(v2, v3)));
  for (; j < C; j++) {
    float d = x[j] - m;
    vv += (double)d * d;
  }
  *v = vv;
}

/* o = (x - m) * r * w + b, the same three roundings as the scalar loop (no FMA) */
static void norm4(float *o, const float *x, const float *w, const float *b, int C, float m,
                  float r) {
  float32x4_t mm = vdupq_n_f32(m), rr = vdupq_n_f32(r);
  int j = 0;
  for (; j + 4 <= C; j += 4) {
    float32x4_t t = vmulq_f32(vsubq_f32(vld1q_f32(x + j), mm), rr);
    vst1q_f32(o + j, vaddq_f32(vmulq_f32(t, vld1q_f32(w + j)), vld1q_f32(b + j)));
  }
  for (; j < C; j++) o[j] = (x[j] - m) * r * w[j] + b[j];
}
#endif

static void ln_rows(float *out, float *mean, float *rstd, const float *inp,
                    const float *w, const float *b, int64_t N, int C, float eps) {
#if defined(__x86_64__)
  int vec = ct_have_avx512(), vec2 = !vec && ct_have_avx2();
#elif defined(CT_LN_NEON)
  int vec = ct_have_neon();
#endif
  for (int64_t i = 0; i < N; i++) {
    const float *x = inp + i * C;
    float *o = out + i * C;
    double s = 0, v = 0;
    float m;
#if defined(__x86_64__)
    if (vec || vec2) {
      (vec ? sums16 : sums16_avx2)(x, C, 0.0f, &s, NULL);
      m = (float)(s / C);
      (vec ? sums16 : sums16_avx2)(x, C, m, NULL, &v);
    } else
#elif defined(CT_LN_NEON)
    if (vec) {
      sums8(x, C, 0.0f, &s, NULL);
      m = (float)(s / C);
      sums8(x, C, m, NULL, &v);
    } else
#endif
    {
      for (int j = 0; j < C; j++) s += x[j];
      m = (float)(s / C);
      for (int j = 0; j < C; j++) {
        float d = x[j] - m;
        v += (double)d * d;
      }
    }
    float r = (float)(1.0 / sqrt(v / C + eps));
#if defined(__x86_64__)
    if (vec) norm16(o, x, w, b, C, m, r);
    else if (vec2) norm8(o, x, w, b, C, m, r);
    else
#elif defined(CT_LN_NEON)
    if (vec) norm4(o, x, w, b, C, m, r);
    else
#endif
      for (int j = 0; j < C; j++) o[j] = (x[j] - m) * r * w[j] + b[j];
    if (mean) mean[i] = m;
    if (rstd) rstd[i] = r;
  }
}

/* With a pool (pool.h), contiguous row ranges, one per thread. */
typedef struct {
  float *out, *mean, *rstd;
  const float *inp, *w, *b;
  int64_t N;
  int C;
  float eps;
} ln_job;

static void ln_part(void *ctx, int tid, int nt) {
  const ln_job *j = ctx;
  int64_t a = j->N * tid / nt, e = j->N * (tid + 1) / nt;
  ln_rows(j->out + a * j->C, j->mean ? j->mean + a : NULL, j->rstd ? j->rstd + a : NULL,
          j->inp + a * j->C, j->w, j->b, e - a, j->C, j->eps);
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int64_t N, int C, float eps) {
  ln_job j = {out, mean, rstd, inp, w, b, N, C, eps};
  if (ct_pool_threads() > 1 && N * C >= 32768)
    ct_pool_run(ct_pool_current(), ln_part, &j);
  else
    ln_rows(out, mean, rstd, inp, w, b, N, C, eps);
}

/* The naive forward, once for both twins: float (f64 = 0) or double (f64 = 1) arrays; the
 * mean, the (two-pass) variance and the output in double. */
static void layernorm_naive(void *out, const void *inp, const void *w, const void *b, int64_t N,
                            int C, double eps, int f64) {
  for (int64_t i = 0; i < N; i++) {
    size_t row = (size_t)i * C;
    double s = 0, v = 0;
    for (int j = 0; j < C; j++) s += ct_twin_ld(inp, f64, row + j);
    double m = s / C;
    for (int j = 0; j < C; j++) {
      double d = ct_twin_ld(inp, f64, row + j) - m;
      v += d * d;
    }
    double r = 1.0 / sqrt(v / C + eps);
    for (int j = 0; j < C; j++)
      ct_twin_st(out, f64, row + j,
                 (ct_twin_ld(inp, f64, row + j) - m) * r * ct_twin_ld(w, f64, j) + ct_twin_ld(b, f64, j));
  }
}

void layernorm_forward_ref(float *out, const float *inp, const float *w,
                           const float *b, int64_t N, int C, float eps) {
  layernorm_naive(out, inp, w, b, N, C, eps, 0);
}

/* Double twin of the forward, for the finite-difference gradient checks. */
void layernorm_forward_f64(double *out, const double *inp, const double *w,
                           const double *b, int64_t N, int C, double eps) {
  layernorm_naive(out, inp, w, b, N, C, eps, 1);
}

typedef struct {
  float *dinp, *dweight, *dbias;
  const float *dout, *inp, *weight, *mean, *rstd;
  int64_t N;
  int C;
} lnb_job;

#if defined(__x86_64__)
/* one row's share of lnb_part's column sums, 16 columns at a time (the tail masked), the
 * scalar loop's float operations in its order (no FMA): the same values */
__attribute__((target("avx512f"))) static void lnb_cols16(float *dw, float *db, const float *x,
                                                          const float *g, float m, float r,
                                                          int c0, int c1) {
  __m512 vm = _mm512_set1_ps(m), vr = _mm512_set1_ps(r);
  for (int j = c0; j < c1; j += 16) {
    __mmask16 k = c1 - j >= 16 ? 0xffff : (__mmask16)((1u << (c1 - j)) - 1);
    __m512 gv = _mm512_maskz_loadu_ps(k, g + j);
    if (db) _mm512_mask_storeu_ps(db + j, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, db + j), gv));
    if (dw) {
      __m512 t = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm), vr), gv);
      _mm512_mask_storeu_ps(dw + j, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, dw + j), t));
    }
  }
}
#endif

/* Thread tid of nt: dweight and dbias for its share of the columns (each summed over every
 * row in row order, as one thread would), dinp for its share of the rows. */
static void lnb_part(void *ctx, int tid, int nt) {
  const lnb_job *q = ctx;
  int64_t N = q->N;
  int C = q->C;
  /* columns in units of 16 (a cache line of dweight, dbias per thread) */
  int units = (C + 15) / 16;
  int c0 = 16 * (int)((int64_t)units * tid / nt), c1 = 16 * (int)((int64_t)units * (tid + 1) / nt);
  if (c1 > C) c1 = C;
#if defined(__x86_64__)
  int vec = ct_have_avx512();
#endif
  if (q->dweight || q->dbias)
    for (int64_t i = 0; i < N; i++) {
      const float *x = q->inp + i * C, *g = q->dout + i * C;
      float m = q->mean[i], r = q->rstd[i];
#if defined(__x86_64__)
      if (vec) {
        lnb_cols16(q->dweight, q->dbias, x, g, m, r, c0, c1);
        continue;
      }
#endif
      if (q->dbias)
        for (int j = c0; j < c1; j++) q->dbias[j] += g[j];
      if (q->dweight)
        for (int j = c0; j < c1; j++) q->dweight[j] += (x[j] - m) * r * g[j];
    }
  if (!q->dinp) return;
  const float *weight = q->weight;
  for (int64_t i = N * tid / nt, i1 = N * (tid + 1) / nt; i < i1; i++) {
    const float *x = q->inp + i * C, *g = q->dout + i * C;
    float m = q->mean[i], r = q->rstd[i];
    double s1 = 0, s2 = 0;
    for (int j = 0; j < C; j++) {
      float dn = weight[j] * g[j];
      s1 += dn;
      s2 += (double)dn * ((x[j] - m) * r);
    }
    float a = (float)(s1 / C), c = (float)(s2 / C);
    float *d = q->dinp + i * C;
    for (int j = 0; j < C; j++) d[j] += r * (weight[j] * g[j] - a - (x[j] - m) * r * c);
  }
}

/* dinp, dweight, dbias may be NULL: frozen / not needed -> skipped (no work). All ACCUMULATE
 * (+=). With a pool, split over its threads (lnb_part): the same values for any split. */
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, const float *mean,
                        const float *rstd, int64_t N, int C) {
  if (!dinp && !dweight && !dbias) return;
  lnb_job q = {dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C};
  if (ct_pool_threads() > 1 && N * C >= 32768)
    ct_pool_run(ct_pool_current(), lnb_part, &q);
  else
    lnb_part(&q, 0, 1);
}

/* Naive twin: plain loops, every sum in double; uses the saved mean/rstd. */
void layernorm_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const float *mean,
                            const float *rstd, int64_t N, int C) {
  for (int j = 0; j < C; j++) {
    double db = 0, dw = 0;
    for (int64_t i = 0; i < N; i++) {
      double g = dout[i * C + j], n = ((double)inp[i * C + j] - mean[i]) * rstd[i];
      db += g;
      dw += g * n;
    }
    if (dbias) dbias[j] = (float)(dbias[j] + db);
    if (dweight) dweight[j] = (float)(dweight[j] + dw);
  }
  if (!dinp) return;
  for (int64_t i = 0; i < N; i++) {
    double s1 = 0, s2 = 0;
    for (int j = 0; j < C; j++) {
      double dn = (double)weight[j] * dout[i * C + j];
      s1 += dn;
      s2 += dn * (((double)inp[i * C + j] - mean[i]) * rstd[i]);
    }
    for (int j = 0; j < C; j++) {
      double n = ((double)inp[i * C + j] - mean[i]) * rstd[i];
      double dn = (double)weight[j] * dout[i * C + j];
      dinp[i * C + j] = (float)(dinp[i * C + j] + rstd[i] * (dn - s1 / C - n * s2 / C));
    }
  }
}
