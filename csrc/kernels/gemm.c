/* gemm.c - the NT sgemm of gemm.h: C = alpha * A B^T + beta * C over a column range.
 *
 * Blocking: K in chunks of KC (a 4-row weight panel of KC floats, 8 KB, stays in L1), rows in
 * chunks of MC (the A block, MC x KC floats, stays in L2). The micro-kernel takes 3 rows of A
 * and 4 rows of B and keeps the 12 dot products as 12 ymm accumulators (3 more hold A, 1 holds
 * B: all 16 registers), 7 loads per 12 FMAs; at the end of a K chunk the 12 vectors are reduced
 * horizontally and added into C. Row and column edges reuse the last valid row (the extra sums
 * are computed and dropped), the K tail is a masked load. Compiled for AVX2+FMA through target
 * attributes; ct_gemm_available() checks the CPU at run time, and blas.c falls back to OpenBLAS
 * where it says no. Never -ffast-math: sums are plain IEEE float. */
#include "gemm.h"

#include <stddef.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CT_GEMM_X86 1
#endif

enum { KC = 512, MC = 96 };

int ct_gemm_available(void) {
#ifdef CT_GEMM_X86
  static int cached = -1;
  if (cached < 0) {
    __builtin_cpu_init();
    cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  return cached;
#else
  return 0;
#endif
}

#ifdef CT_GEMM_X86
#define TGT __attribute__((target("avx2,fma")))

TGT static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* s[r*4 + c] = sum_k a_r[k] b_c[k], k < kc */
TGT static void kern3x4(int kc, const float *a0, const float *a1, const float *a2,
                        const float *b0, const float *b1, const float *b2, const float *b3,
                        float *s) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c03 = c00;
  __m256 c10 = c00, c11 = c00, c12 = c00, c13 = c00;
  __m256 c20 = c00, c21 = c00, c22 = c00, c23 = c00;
  int k = 0;
#define STEP(LD)                                                                   \
  {                                                                                \
    __m256 x0 = LD(a0 + k), x1 = LD(a1 + k), x2 = LD(a2 + k), w;                   \
    w = LD(b0 + k);                                                                \
    c00 = _mm256_fmadd_ps(x0, w, c00); c10 = _mm256_fmadd_ps(x1, w, c10);         \
    c20 = _mm256_fmadd_ps(x2, w, c20);                                             \
    w = LD(b1 + k);                                                                \
    c01 = _mm256_fmadd_ps(x0, w, c01); c11 = _mm256_fmadd_ps(x1, w, c11);         \
    c21 = _mm256_fmadd_ps(x2, w, c21);                                             \
    w = LD(b2 + k);                                                                \
    c02 = _mm256_fmadd_ps(x0, w, c02); c12 = _mm256_fmadd_ps(x1, w, c12);         \
    c22 = _mm256_fmadd_ps(x2, w, c22);                                             \
    w = LD(b3 + k);                                                                \
    c03 = _mm256_fmadd_ps(x0, w, c03); c13 = _mm256_fmadd_ps(x1, w, c13);         \
    c23 = _mm256_fmadd_ps(x2, w, c23);                                             \
  }
  for (; k + 8 <= kc; k += 8) STEP(_mm256_loadu_ps)
  if (k < kc) {
    static const int ones[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    __m256i m = _mm256_loadu_si256((const __m256i *)(ones + 8 - (kc - k)));
#define MLD(p) _mm256_maskload_ps((p), m)
    STEP(MLD)
#undef MLD
  }
#undef STEP
  _mm_storeu_ps(s, hsum4(c00, c01, c02, c03));
  _mm_storeu_ps(s + 4, hsum4(c10, c11, c12, c13));
  _mm_storeu_ps(s + 8, hsum4(c20, c21, c22, c23));
}

void ct_gemm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                int ldb, float beta, float *C, int ldc, int n0, int n1) {
  if (M <= 0 || n1 <= n0 || N <= 0) return;
  if (K <= 0) { /* C = beta C */
    for (int i = 0; i < M; i++)
      for (int j = n0; j < n1; j++) {
        float *c = &C[(size_t)i * ldc + j];
        *c = beta == 0.0f ? 0.0f : beta * *c;
      }
    return;
  }
  float s[12];
  for (int k0 = 0; k0 < K; k0 += KC) {
    int kc = K - k0 < KC ? K - k0 : KC;
    for (int i0 = 0; i0 < M; i0 += MC) {
      int i1 = i0 + MC < M ? i0 + MC : M;
      for (int j = n0; j < n1; j += 4) {
        int nc = n1 - j < 4 ? n1 - j : 4;
        const float *b[4];
        for (int c = 0; c < 4; c++) b[c] = B + (size_t)(j + (c < nc ? c : nc - 1)) * ldb + k0;
        /* prefetch the next weight panel (4 rows x kc) into L2, spread over this panel's
         * row blocks, so its first pass does not wait on memory */
        const float *nb = j + 4 < n1 ? B + (size_t)(j + 4) * ldb + k0 : NULL;
        int lines = (kc + 15) / 16, nblk = (i1 - i0 + 2) / 3, per = (4 * lines + nblk - 1) / nblk;
        int pf = 0;
        for (int i = i0; i < i1; i += 3) {
          int mr = i1 - i < 3 ? i1 - i : 3;
          if (nb)
            for (int q = 0; q < per && pf < 4 * lines; q++, pf++)
              _mm_prefetch((const char *)(nb + (size_t)(pf / lines) * ldb + (pf % lines) * 16),
                           _MM_HINT_T1);
          const float *a[3];
          for (int r = 0; r < 3; r++) a[r] = A + (size_t)(i + (r < mr ? r : mr - 1)) * lda + k0;
          kern3x4(kc, a[0], a[1], a[2], b[0], b[1], b[2], b[3], s);
          for (int r = 0; r < mr; r++) {
            float *crow = C + (size_t)(i + r) * ldc + j;
            if (k0 > 0)
              for (int c = 0; c < nc; c++) crow[c] += alpha * s[r * 4 + c];
            else if (beta == 0.0f)
              for (int c = 0; c < nc; c++) crow[c] = alpha * s[r * 4 + c];
            else
              for (int c = 0; c < nc; c++) crow[c] = beta * crow[c] + alpha * s[r * 4 + c];
          }
        }
      }
    }
  }
}
#else
void ct_gemm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                int ldb, float beta, float *C, int ldc, int n0, int n1) {
  (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)lda; (void)B; (void)ldb; (void)beta;
  (void)C; (void)ldc; (void)n0; (void)n1; /* never called: ct_gemm_available() is 0 */
}
#endif
