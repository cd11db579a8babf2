/* k_act.c - activations of the CLIP MLP (transformers ACT2FN,
 * https://github.com/huggingface/transformers/blob/main/src/transformers/activations.py):
 * quick_gelu(x) = x * sigmoid(1.702 x)                      (OpenAI CLIP)
 * gelu(x)       = 0.5 x (1 + erf(x / sqrt 2))               (exact form, torch.nn.GELU())
 * gelu_new / gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
 * relu
 * Backward: dinp += dout * act'(inp), inp the pre-activation:
 * quick_gelu' = s + 1.702 x s (1 - s), s = sigmoid(1.702 x)
 * gelu'       = Phi(x) + x phi(x) = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)
 * gelu_new'   = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2), t = tanh(u)
 * relu'       = 1 for x > 0, else 0 (0 at x = 0, as torch's threshold_backward)
 * dinp may be NULL (skipped). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "simd.h"
#include "pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define CT_ACT_X86 1


/* quick_gelu over n floats, 16 at a time (the tail masked) */
__attribute__((target("avx512f"))) static void quick_gelu16(float *out, const float *inp,
                                                             int64_t n) {
  const __m512 k = _mm512_set1_ps(-1.702f), one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
    __m512 x = _mm512_maskz_loadu_ps(m, inp + i);
    __m512 y = _mm512_div_ps(x, _mm512_add_ps(one, ct_exp16(_mm512_mul_ps(k, x))));
    _mm512_mask_storeu_ps(out + i, m, y);
  }
}

/* the same with AVX2 + FMA, 8 at a time (ct_exp8: the same bits as quick_gelu16) */
__attribute__((target("avx2,fma"))) static inline __m256 quick_gelu_v8(__m256 x) {
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f),
                                        ct_exp8(_mm256_mul_ps(_mm256_set1_ps(-1.702f), x))));
}

__attribute__((target("avx2,fma"))) static void quick_gelu8(float *out, const float *inp,
                                                            int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, quick_gelu_v8(_mm256_loadu_ps(inp + i)));
  if (i < n) { /* the tail masked (a masked store is slow on AMD: once per call) */
    __m256i m = ct_lanes8(n - i);
    _mm256_maskstore_ps(out + i, m, quick_gelu_v8(_mm256_maskload_ps(inp + i, m)));
  }
}

/* quick_gelu's backward over n floats, 16 at a time (the tail masked): s = sigmoid(1.702 x)
 * through ct_exp16, dinp += dout (s + 1.702 x s (1 - s)), the scalar loop's operations */
__attribute__((target("avx512f"))) static void quick_gelu_back16(float *dinp, const float *dout,
                                                                  const float *inp, int64_t n,
                                                                  int set) {
  const __m512 k = _mm512_set1_ps(-1.702f), c = _mm512_set1_ps(1.702f), one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
    __m512 x = _mm512_maskz_loadu_ps(m, inp + i);
    __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, ct_exp16(_mm512_mul_ps(k, x))));
    __m512 d = _mm512_add_ps(s, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(c, x), s), _mm512_sub_ps(one, s)));
    __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dout + i), d);
    _mm512_mask_storeu_ps(dinp + i, m, set ? g : _mm512_add_ps(_mm512_maskz_loadu_ps(m, dinp + i), g));
  }
}
#elif defined(__aarch64__)
#define CT_ACT_NEON 1

static inline float32x4_t quick_gelu4(float32x4_t x) {
  return vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0f), ct_exp4(vmulq_f32(vdupq_n_f32(-1.702f), x))));
}

/* quick_gelu over n floats, 4 at a time (the tail through a padded copy, so every value takes
 * the vector path) */
static void quick_gelu_neon(float *out, const float *inp, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(out + i, quick_gelu4(vld1q_f32(inp + i)));
  if (i < n) {
    float t[4] = {0, 0, 0, 0};
    for (int64_t j = i; j < n; j++) t[j - i] = inp[j];
    vst1q_f32(t, quick_gelu4(vld1q_f32(t)));
    for (int64_t j = i; j < n; j++) out[j] = t[j - i];
  }
}
#endif

static void act_range(float *out, const float *inp, int64_t n, int act) {
  switch (act) {
  case CT_ACT_QUICK_GELU:
#ifdef CT_ACT_X86
    if (ct_have_avx512()) {
      quick_gelu16(out, inp, n);
      break;
    }
    if (ct_have_avx2()) {
      quick_gelu8(out, inp, n);
      break;
    }
#elif defined(CT_ACT_NEON)
    if (ct_have_neon()) {
      quick_gelu_neon(out, inp, n);
      break;
    }
#endif
    for (int64_t i = 0; i < n; i++) {
      float x = inp[i];
      out[i] = x / (1.0f + expf(-1.702f * x));
    }
    break;
  case CT_ACT_GELU:
    for (int64_t i = 0; i < n; i++) {
      float x = inp[i];
      out[i] = 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    }
    break;
  case CT_ACT_GELU_TANH:
    for (int64_t i = 0; i < n; i++) {
      float x = inp[i];
      out[i] = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    }
    break;
  default:
    for (int64_t i = 0; i < n; i++) out[i] = inp[i] > 0 ? inp[i] : 0.0f;
  }
}

/* With a pool (pool.h), contiguous chunks of the n elements, one per thread. */
typedef struct {
  float *out;
  const float *inp;
  int64_t n;
  int act;
} act_job;

static void act_part(void *ctx, int tid, int nt) {
  const act_job *j = ctx;
  int64_t a = j->n * tid / nt, b = j->n * (tid + 1) / nt;
  act_range(j->out + a, j->inp + a, b - a, j->act);
}

void act_forward_local(float *out, const float *inp, int64_t n, int act) {
  act_range(out, inp, n, act);
}

void act_forward(float *out, const float *inp, int64_t n, int act) {
  act_job j = {out, inp, n, act};
  if (ct_pool_threads() > 1 && n >= 16384)
    ct_pool_run(ct_pool_current(), act_part, &j);
  else
    act_range(out, inp, n, act);
}

/* The naive activation of one value, in double: both forward twins map it over their arrays. */
static double act_naive(double x, int act) {
  switch (act) {
  case CT_ACT_QUICK_GELU: return x / (1.0 + exp(-1.702 * x));
  case CT_ACT_GELU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
  case CT_ACT_GELU_TANH: return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
  default: return x > 0 ? x : 0;
  }
}

void act_forward_ref(float *out, const float *inp, int64_t n, int act) {
  for (int64_t i = 0; i < n; i++) out[i] = (float)act_naive(inp[i], act);
}

/* Double twin of the forward, for the finite-difference gradient checks. */
void act_forward_f64(double *out, const double *inp, int64_t n, int act) {
  for (int64_t i = 0; i < n; i++) out[i] = act_naive(inp[i], act);
}

/* the backward over n elements (see act_backward) */
/* ADD(i, v): dinp[i] += v, or with set dinp[i] = v (dinp not read) */
#define ADD(i, v) (dinp[i] = set ? (v) : dinp[i] + (v))
static void act_backward_range(float *dinp, const float *dout, const float *inp, int64_t n,
                               int act, int set) {
  switch (act) {
  case CT_ACT_QUICK_GELU:
#ifdef CT_ACT_X86
    if (ct_have_avx512()) {
      quick_gelu_back16(dinp, dout, inp, n, set);
      break;
    }
#endif
    for (int64_t i = 0; i < n; i++) {
      float x = inp[i];
      float s = 1.0f / (1.0f + expf(-1.702f * x));
      ADD(i, dout[i] * (s + 1.702f * x * s * (1.0f - s)));
    }
    break;
  case CT_ACT_GELU:
    for (int64_t i = 0; i < n; i++) {
      float x = inp[i];
      float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
      float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
      ADD(i, dout[i] * (cdf + x * pdf));
    }
    break;
  case CT_ACT_GELU_TANH:
    for (int64_t i = 0; i < n; i++) {
      float x = inp[i];
      float t = tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x));
      float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x * x);
      ADD(i, dout[i] * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du));
    }
    break;
  default:
    for (int64_t i = 0; i < n; i++)
      if (inp[i] > 0) ADD(i, dout[i]);
      else if (set) dinp[i] = 0.0f;
  }
}
#undef ADD

typedef struct {
  float *dinp;
  const float *dout, *inp;
  int64_t n;
  int act, set;
} act_bjob;

static void act_bpart(void *ctx, int tid, int nt) {
  const act_bjob *j = ctx;
  int64_t a = j->n * tid / nt, b = j->n * (tid + 1) / nt;
  act_backward_range(j->dinp + a, j->dout + a, j->inp + a, b - a, j->act, j->set);
}

static void act_backward_run(float *dinp, const float *dout, const float *inp, int64_t n,
                             int act, int set) {
  act_bjob j = {dinp, dout, inp, n, act, set};
  if (ct_pool_threads() > 1 && n >= 16384)
    ct_pool_run(ct_pool_current(), act_bpart, &j);
  else
    act_backward_range(dinp, dout, inp, n, act, set);
}

/* dinp may be NULL: not needed -> skipped (no work). ACCUMULATES (+=). With a pool,
 * contiguous chunks, one per thread (element-wise: the same values for any split). */
void act_backward(float *dinp, const float *dout, const float *inp, int64_t n, int act) {
  if (dinp) act_backward_run(dinp, dout, inp, n, act, 0);
}

void act_backward_set(float *dinp, const float *dout, const float *inp, int64_t n, int act) {
  if (dinp) act_backward_run(dinp, dout, inp, n, act, 1);
}

/* Naive twin: the derivatives evaluated in double. */
void act_backward_ref(float *dinp, const float *dout, const float *inp, int64_t n, int act) {
  if (!dinp) return;
  for (int64_t i = 0; i < n; i++) {
    double x = inp[i], d;
    switch (act) {
    case CT_ACT_QUICK_GELU: {
      double s = 1.0 / (1.0 + exp(-1.702 * x));
      d = s + 1.702 * x * s * (1.0 - s);
      break;
    }
    case CT_ACT_GELU:
      d = 0.5 * (1.0 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
      break;
    case CT_ACT_GELU_TANH: {
      double c = sqrt(2.0 / M_PI), t = tanh(c * (x + 0.044715 * x * x * x));
      d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
      break;
    }
    default: d = x > 0 ? 1.0 : 0.0;
    }
    dinp[i] = (float)(dinp[i] + (double)dout[i] * d);
  }
}
