/* simd.h - SIMD helpers shared by the kernels: AVX-512 on x86-64 (callers check
 * ct_have_avx512() at run time), NEON on aarch64 (ct_have_neon()); callers keep a scalar path. */
#ifndef CT_SIMD_H
#define CT_SIMD_H

#include <stdint.h>

/* 1 when the CPU runs AVX-512F and CLIP_NO_AVX512 is not set (gemm_packed.c). */
int ct_have_avx512(void);
/* 1 on aarch64 when CLIP_NO_AVX512 is not set (the NEON paths; gemm_packed.c), else 0. */
int ct_have_neon(void);
/* 1 when the CPU runs AVX2, FMA and F16C and CLIP_NO_AVX2 is not set (gemm_packed.c): the
 * AVX2 paths, taken where AVX-512 is not (CLIP_NO_AVX512=1, or a CPU without it). */
int ct_have_avx2(void);

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

/* ct_exp16's algorithm for 8 floats with AVX2 + FMA (the same constants, the same FMAs, the
 * same bits); 2^n as two factors 2^h and 2^(n-h), each a normal float, so only the last
 * product rounds, as scalef (ct_exp4 does the same on NEON). */
__attribute__((target("avx2,fma"))) static inline __m256 ct_exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f)),
                    _mm256_set1_ps(88.3762626647949f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  __m256 r2 = _mm256_mul_ps(r, r);
  __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));
  __m256i ni = _mm256_cvtps_epi32(n), h = _mm256_srai_epi32(ni, 1), bias = _mm256_set1_epi32(127);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23));
  __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
}

/* lanes j < n of 8 set (AVX2 maskload / maskstore), n clamped to 0..8 */
__attribute__((target("avx2"))) static inline __m256i ct_lanes8(int64_t n) {
  int m = n < 0 ? 0 : n > 8 ? 8 : (int)n;
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* 16 x 16 floats transposed in registers (AVX-512): lane j of r[i] becomes lane i of r[j] */
__attribute__((target("avx512f"))) static inline void ct_transpose16(__m512 r[16]) {
  __m512 t[16];
  _Pragma("GCC unroll 16") for (int i = 0; i < 16; i += 2) { /* pairs of rows: elements interleaved */
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  _Pragma("GCC unroll 16") for (int i = 0; i < 16; i += 4) { /* groups of four rows: 64-bit pairs */
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  _Pragma("GCC unroll 16") for (int i = 0; i < 4; i++) { /* 128-bit lanes across groups */
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  _Pragma("GCC unroll 16") for (int i = 0; i < 8; i++) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

/* 8 x 8 floats transposed in registers (AVX): lane j of r[i] becomes lane i of r[j] */
__attribute__((target("avx"))) static inline void ct_transpose8(__m256 r[8]) {
  __m256 t[8];
  _Pragma("GCC unroll 8") for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  _Pragma("GCC unroll 8") for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) { /* r[4g + e], half h: column 4h + e */
    t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) r[i] = t[i];
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
