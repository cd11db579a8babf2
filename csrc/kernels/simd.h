/* simd.h - SIMD helpers shared by the kernels: AVX-512 on x86-64 (callers check
 * ct_have_avx512() at run time), NEON on aarch64 (ct_have_neon()); callers keep a scalar path. */
#ifndef CT_SIMD_H
#define CT_SIMD_H

/* 1 when the CPU runs AVX-512F and CLIP_NO_AVX512 is not set (gemm_packed.c). */
int ct_have_avx512(void);
/* 1 on aarch64 when CLIP_NO_AVX512 is not set (the NEON paths; gemm_packed.c), else 0. */
int ct_have_neon(void);

#if defined(__x86_64__)
#include <immintrin.h>
#define CT_SIMD_X86 1

/* exp(x) for 16 floats: n = round(x log2 e), r = x - n ln 2 in two steps (Cody-Waite), Cephes'
 * expf polynomial on r, times 2^n (scalef); x clamped to [-88.38, 88.38]. Within 2 ulp of
 * expf over that range (spec/kernels_spec.lua compares the activation with the double twin). */
__attribute__((target("avx512f"))) static inline __m512 ct_exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.3762626647949f)),
                    _mm512_set1_ps(88.3762626647949f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  __m512 r2 = _mm512_mul_ps(r, r);
  __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

#elif defined(__aarch64__)
#include <arm_neon.h>
#define CT_SIMD_NEON 1

/* ct_exp16's algorithm for 4 floats (the same constants, the same FMAs); 2^n, n in
 * [-128, 128], as two factors 2^h and 2^(n-h), each a normal float, so only the last
 * product rounds, as scalef. */
static inline float32x4_t ct_exp4(float32x4_t x) {
  x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-88.3762626647949f)), vdupq_n_f32(88.3762626647949f));
  float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
  r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.9875691500E-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507E-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073E-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894E-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459E-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201E-1f), p, r);
  float32x4_t r2 = vmulq_f32(r, r);
  float32x4_t y = vaddq_f32(vfmaq_f32(r, p, r2), vdupq_n_f32(1.0f));
  int32x4_t ni = vcvtq_s32_f32(n), h = vshrq_n_s32(ni, 1), bias = vdupq_n_s32(127);
  float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(h, bias), 23));
  float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vsubq_s32(ni, h), bias), 23));
  return vmulq_f32(vmulq_f32(y, s1), s2);
}
#endif

#endif
