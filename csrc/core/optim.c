/* optim.c - AdamW and SGD updates matching torch.optim (single-tensor,
 * non-foreach path: https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html), and the
 * sum of squares behind clip_grad_norm. AdamW and the sum run vectorized (AVX-512, AVX, NEON)
 * and split over the current pool for large tensors. */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h" /* ct_gemm_available(): the CPU runs AVX2 + FMA (the 8-lane paths below) */
#include "pool.h"
#include "simd.h"

/* AdamW over [i0, i1): float32 arithmetic in torch's order (_single_tensor_adamw):
 * p.mul_(1 - lr wd); m.lerp_(g, 1 - b1); v.mul_(b2).addcmul_(g, g, 1 - b2);
 * denom = v.sqrt() / sqrt(bc2) + eps; p.addcdiv_(m, denom, -lr / bc1).
 * The vector loops do the same operations in the same order, one rounding each (no FMA:
 * -std=c11 keeps the scalar loop uncontracted too), so every path gives the same bits. */
typedef struct {
  float *p, *m, *v;
  const float *g;
  int64_t n;
  float decay, w1, b2, w2, eps, step, bc2s;
} adamw_job;

static void adamw_scalar(const adamw_job *a, int64_t i, int64_t i1) {
  float *p = a->p, *m = a->m, *v = a->v;
  const float *g = a->g;
  for (; i < i1; i++) {
    float gi = g[i];
    float mi = m[i] + a->w1 * (gi - m[i]);
    float vi = a->b2 * v[i] + a->w2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float denom = sqrtf(vi) / a->bc2s + a->eps;
    p[i] = p[i] * a->decay - a->step * mi / denom;
  }
}

/* one vector body for AVX-512 (16), AVX (8; run where AVX2 + FMA is) and NEON (4) lanes */
#define ADAMW_VEC(NAME, TGT, W, VT, LD, ST, SET, ADD, SUB, MUL, DIV, SQRT)             \
  TGT static int64_t NAME(const adamw_job *a, int64_t i, int64_t i1) {                 \
    const VT w1 = SET(a->w1), b2 = SET(a->b2), w2 = SET(a->w2), eps = SET(a->eps),       \
             decay = SET(a->decay), step = SET(a->step), bc2s = SET(a->bc2s);            \
    for (; i + W <= i1; i += W) {                                                        \
      VT g = LD(a->g + i), m = LD(a->m + i), v = LD(a->v + i);                            \
      m = ADD(m, MUL(w1, SUB(g, m)));                                                    \
      v = ADD(MUL(b2, v), MUL(MUL(w2, g), g));                                           \
      ST(a->m + i, m);                                                                   \
      ST(a->v + i, v);                                                                   \
      VT denom = ADD(DIV(SQRT(v), bc2s), eps);                                           \
      ST(a->p + i, SUB(MUL(LD(a->p + i), decay), DIV(MUL(step, m), denom)));             \
    }                                                                                    \
    return i;                                                                            \
  }
#if defined(CT_SIMD_X86)
ADAMW_VEC(adamw16, __attribute__((target("avx512f"))), 16, __m512, _mm512_loadu_ps,
          _mm512_storeu_ps, _mm512_set1_ps, _mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps,
          _mm512_div_ps, _mm512_sqrt_ps)
ADAMW_VEC(adamw8, __attribute__((target("avx"))), 8, __m256, _mm256_loadu_ps, _mm256_storeu_ps,
          _mm256_set1_ps, _mm256_add_ps, _mm256_sub_ps, _mm256_mul_ps, _mm256_div_ps,
          _mm256_sqrt_ps)
#elif defined(CT_SIMD_NEON)
ADAMW_VEC(adamw4, , 4, float32x4_t, vld1q_f32, vst1q_f32, vdupq_n_f32, vaddq_f32, vsubq_f32,
          vmulq_f32, vdivq_f32, vsqrtq_f32)
#endif
#undef ADAMW_VEC

static void adamw_range(const adamw_job *a, int64_t i, int64_t i1) {
#if defined(CT_SIMD_X86)
  if (ct_have_avx512()) i = adamw16(a, i, i1);
  else if (ct_gemm_available()) i = adamw8(a, i, i1);
#elif defined(CT_SIMD_NEON)
  if (ct_have_neon()) i = adamw4(a, i, i1);
#endif
  adamw_scalar(a, i, i1);
}

/* the threads' shares, cut at multiples of 64 elements */
static void share(int64_t n, int tid, int nt, int64_t *i0, int64_t *i1) {
  int64_t blocks = (n + 63) / 64;
  *i0 = blocks * tid / nt * 64;
  *i1 = blocks * (tid + 1) / nt * 64;
  if (*i0 > n) *i0 = n;
  if (*i1 > n) *i1 = n;
}

static void adamw_part(void *ctx, int tid, int nt) {
  const adamw_job *a = ctx;
  int64_t i0, i1;
  share(a->n, tid, nt, &i0, &i1);
  adamw_range(a, i0, i1);
}

/* below this many elements a tensor is updated in the caller's thread */
enum { PAR_MIN = 1 << 15 };

void ct_adamw_step(float *p, float *m, float *v, const float *g, int64_t n, double lr,
                   double b1, double b2, double eps, double wd, int64_t t) {
  adamw_job a = {p, m, v, g, n,
                 (float)(1.0 - lr * wd), (float)(1.0 - b1), (float)b2, (float)(1.0 - b2),
                 (float)eps, (float)(lr / (1.0 - pow(b1, (double)t))),
                 (float)sqrt(1.0 - pow(b2, (double)t))};
  if (n >= PAR_MIN) ct_pool_run(ct_pool_current(), adamw_part, &a);
  else adamw_range(&a, 0, n);
}

void ct_sgd_step(float *p, float *buf, const float *g, int64_t n, double lr, double momentum,
                 double dampening, double wd, int nesterov, int first) {
  for (int64_t i = 0; i < n; i++) {
    double d = g[i];
    if (wd != 0) d += wd * p[i];
    if (momentum != 0 && buf) {
      double b = first ? d : momentum * buf[i] + (1.0 - dampening) * d;
      buf[i] = (float)b;
      d = nesterov ? d + momentum * b : b;
    }
    p[i] = (float)(p[i] - lr * d);
  }
}

/* Sum of squares in double, in fixed chunks of SUMSQ_CHUNK elements whose partial sums are
 * added in order: the result does not depend on the number of threads (it may differ in the
 * last bits between the AVX-512, AVX2 and scalar paths, which add within a chunk in different
 * orders). Each product of two floats is exact in double. */
enum { SUMSQ_CHUNK = 1 << 14 };

static double sumsq_scalar(const float *x, int64_t i, int64_t i1) {
  double s = 0;
  for (; i < i1; i++) s += (double)x[i] * x[i];
  return s;
}

#if defined(CT_SIMD_X86)
__attribute__((target("avx512f"))) static double sumsq16(const float *x, int64_t n) {
  __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512d a = _mm512_cvtps_pd(_mm256_loadu_ps(x + i)),
            b = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8));
    s0 = _mm512_fmadd_pd(a, a, s0);
    s1 = _mm512_fmadd_pd(b, b, s1);
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(s0, s1)) + sumsq_scalar(x, i, n);
}
__attribute__((target("avx"))) static double sumsq8(const float *x, int64_t n) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256d a = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), b = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
    s0 = _mm256_add_pd(s0, _mm256_mul_pd(a, a));
    s1 = _mm256_add_pd(s1, _mm256_mul_pd(b, b));
  }
  __m256d s = _mm256_add_pd(s0, s1);
  double l[4];
  _mm256_storeu_pd(l, s);
  return ((l[0] + l[1]) + (l[2] + l[3])) + sumsq_scalar(x, i, n);
}
#endif

static double sumsq_span(const float *x, int64_t n) {
#if defined(CT_SIMD_X86)
  if (ct_have_avx512()) return sumsq16(x, n);
  if (ct_gemm_available()) return sumsq8(x, n);
#endif
  return sumsq_scalar(x, 0, n);
}

/* chunk c of x[0..n) */
static double sumsq_chunk(const float *x, int64_t n, int64_t c) {
  int64_t i0 = c * SUMSQ_CHUNK;
  return sumsq_span(x + i0, n - i0 < SUMSQ_CHUNK ? n - i0 : SUMSQ_CHUNK);
}

typedef struct {
  const float *x;
  int64_t n, chunks;
  double *part; /* one per chunk */
} sumsq_job;

static void sumsq_part(void *ctx, int tid, int nt) {
  const sumsq_job *j = ctx;
  for (int64_t c = j->chunks * tid / nt, c1 = j->chunks * (tid + 1) / nt; c < c1; c++)
    j->part[c] = sumsq_chunk(j->x, j->n, c);
}

double ct_sumsq(const float *x, int64_t n) {
  if (n <= 0) return 0;
  int64_t chunks = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
  double local[64], *part = chunks <= 64 ? local : malloc((size_t)chunks * sizeof(double));
  if (!part) { /* out of memory: the same chunks, one at a time */
    double s = 0;
    for (int64_t c = 0; c < chunks; c++) s += sumsq_chunk(x, n, c);
    return s;
  }
  sumsq_job j = {x, n, chunks, part};
  if (n >= PAR_MIN) ct_pool_run(ct_pool_current(), sumsq_part, &j);
  else sumsq_part(&j, 0, 1);
  double s = 0;
  for (int64_t c = 0; c < chunks; c++) s += part[c];
  if (part != local) free(part);
  return s;
}

typedef struct {
  float *x;
  int64_t n;
  float s;
} scale_job;

#ifdef CT_SIMD_X86
__attribute__((target("avx512f"))) static void scale16(float *x, int64_t n, float s) {
  __m512 v = _mm512_set1_ps(s);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), v));
  }
}
#endif

static void scale_part(void *ctx, int tid, int nt) {
  const scale_job *j = ctx;
  int64_t i, i1;
  share(j->n, tid, nt, &i, &i1);
#ifdef CT_SIMD_X86
  if (ct_have_avx512()) {
    scale16(j->x + i, i1 - i, j->s);
    return;
  }
#endif
  for (; i < i1; i++) j->x[i] *= j->s;
}

void ct_scale(float *x, int64_t n, float s) {
  scale_job j = {x, n, s};
  if (n >= PAR_MIN) ct_pool_run(ct_pool_current(), scale_part, &j);
  else scale_part(&j, 0, 1);
}

static void zero_part(void *ctx, int tid, int nt) {
  const scale_job *j = ctx; /* s unused */
  int64_t i, i1;
  share(j->n, tid, nt, &i, &i1);
  memset(j->x + i, 0, sizeof(float) * (size_t)(i1 - i));
}

void ct_zero(float *x, int64_t n) {
  scale_job j = {x, n, 0.0f};
  if (n >= PAR_MIN) ct_pool_run(ct_pool_current(), zero_part, &j);
  else zero_part(&j, 0, 1);
}
