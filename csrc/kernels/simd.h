/* simd.h - AVX-512 helpers shared by the kernels (x86-64 only; callers check
 * ct_have_avx512() at run time and keep a scalar path). */
#ifndef CT_SIMD_H
#define CT_SIMD_H

/* 1 when the CPU runs AVX-512F and CLIP_NO_AVX512 is not set (gemm_packed.c). */
int ct_have_avx512(void);

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

#endif

#endif
