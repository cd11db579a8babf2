/* gemm_packed.c - C = alpha * A B^T + beta * C with B packed once, ahead of time.
 *
 * Layout (gemm.h): B[N,K] is cut into panels of PK_NR = 32 rows; panel p holds
 * P[p][k][j] = B[32 p + j][k] (k-major, rows past N zero), so the micro-kernel streams one
 * contiguous block of weights. Packing costs one pass over B and is done once per model
 * (model.c), not once per call as a packing BLAS must do: at ViT-B/32 batch 1 (M = 50) that
 * per-call packing was 31 % of the image tower's time (perf, docs/performance.md).
 *
 * Micro-kernel (AVX-512F): mr <= 12 rows of A x 32 columns = up to 24 zmm accumulators; per k
 * two loads of the panel and mr broadcasts of A (packed per micro block in groups of four k
 * steps, the rows' four values in turn: the "k4" layout, whose packing is 16-byte copies; the
 * AVX2 and NEON kernels read the plain k-major layout, so A is packed for the kernel's isa).
 * Rows are cut into blocks of at most MC = 120 of equal size,
 * each into ceil(rows/12) micro-blocks of equal size (50 rows -> five of 10), so that no
 * block is mostly padding. Loops: column blocks of NC = 512 -> K blocks of at most KC = 768,
 * of near-equal size (C is stored once per K block; a panel's block, 96 KB, streams from L2)
 * -> row blocks (A packed once per call by blas.c, or here per micro-block without a buffer)
 * -> panels -> micro-blocks; a single row block runs panel after panel instead (below).
 * The micro-kernel prefetches its C tile's lines during its last k steps (the loads and
 * stores of C after the loop otherwise wait on L2 or L3).
 * PK_KC, PK_NC, PK_MC and PK_HINT can be set at compile time for blocking sweeps
 * (docs/performance.md). Callers split the panels (p0 .. p1) or the rows over threads
 * (blas.c). The bias, when given, is added as the
 * first K block is stored. Panels of F16/BF16
 * values are converted to float as they are loaded (vcvtph2ps; a 16-bit shift).
 * Compiled through target attributes; ct_gemm_packed_available() checks the CPU at run time.
 * On aarch64 the same driver runs a NEON micro-kernel (two rows x 32 columns at a time, the
 * same FMAs in the same order; vcvt_f32_f16 / a 16-bit shift for half panels), on every
 * aarch64 CPU (CLIP_NO_AVX512=1 turns it off, as it does the AVX-512 one).
 * Never -ffast-math. */
#include "gemm.h"
#include "simd.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define CT_PK_X86 1
#elif defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>
#define CT_PK_NEON 1
#endif

#ifndef PK_HINT
#define PK_HINT _MM_HINT_T1
#endif
#ifndef PK_KC
#define PK_KC 768
#endif
#ifndef PK_NC
#define PK_NC 512
#endif
#ifndef PK_MC
#define PK_MC 120
#endif
/* MBI: room for a row block's micro-block bounds (micro_split), for any MC (a PK_MC that is
 * not a multiple of MRMAX included) */
enum { NR = PK_NR, KC = PK_KC, NC = PK_NC, MRMAX = 12, MC = PK_MC, MBI = (MC + MRMAX - 1) / MRMAX + 1 };

/* Prefetching the weights: a micro-kernel call given pf prefetches one 64-byte line every
 * second k step, pf_bytes(kc) bytes from pf in all. The driver walks a cursor through the
 * weights it will read next, one call's share per call, so the lines are asked for at an even
 * rate over the panel's calls (a burst of a whole panel's lines in one call outruns the
 * misses a core can keep in flight: at batch 1 the weights come from memory). */
static inline size_t pf_bytes(int kc) { return (size_t)((kc + 1) / 2) * 64; }

/* 1 when the environment variable name is set to something other than "" and "0" */
static int env_off(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0");
}

int ct_have_avx512(void) {
#ifdef CT_PK_X86
  static int cached = -1;
  if (cached < 0) { /* CLIP_NO_AVX512=1: behave as on a CPU without it (tests, benchmarks) */
    __builtin_cpu_init();
    cached = __builtin_cpu_supports("avx512f") && !env_off("CLIP_NO_AVX512");
  }
  return cached;
#else
  return 0;
#endif
}

/* NEON (Advanced SIMD) is part of every AArch64 CPU: no run-time check. CLIP_NO_AVX512=1
 * turns the NEON paths off as it turns off the AVX-512 ones (one switch for "the wide vector
 * kernels": nothing packed, libm's exp, the scalar LayerNorm). */
int ct_have_neon(void) {
#ifdef CT_PK_NEON
  static int cached = -1;
  if (cached < 0) cached = !env_off("CLIP_NO_AVX512");
  return cached;
#else
  return 0;
#endif
}

/* the AVX2 kernel needs FMA, and F16C for F16 panels (every AVX2+FMA CPU has it);
 * CLIP_NO_AVX2=1 turns it off (with CLIP_NO_AVX512=1: nothing packed, as on an old CPU) */
int ct_have_avx2(void) {
#ifdef CT_PK_X86
  static int cached = -1;
  if (cached < 0) {
    /* F16C through CPUID leaf 1, ECX bit 29 (clang's __builtin_cpu_supports lacks "f16c") */
    unsigned a, b, c = 0, d;
    int f16c = __get_cpuid(1, &a, &b, &c, &d) && ((c >> 29) & 1u);
    __builtin_cpu_init();
    cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c &&
             !env_off("CLIP_NO_AVX2");
  }
  return cached;
#else
  return 0;
#endif
}

int ct_gemm_packed_runs(int isa) {
  return isa == PK_AVX512 ? ct_have_avx512()
       : isa == PK_AVX2   ? ct_have_avx2()
       : isa == PK_NEON   ? ct_have_neon()
                          : 0;
}

/* x86-64: AVX-512 where the CPU has it; else the AVX2 kernel (CLIP_PACKED_AVX2=0 turns it off:
 * OpenBLAS then runs every GEMM of the towers; by default it runs those of 400 rows and more,
 * k_linear.c avx2_to_openblas); else nothing packed. aarch64: the NEON kernel. */
int ct_gemm_packed_kernel(void) {
  static int avx2_on = -1;
  if (avx2_on < 0) {
    const char *v = getenv("CLIP_PACKED_AVX2");
    avx2_on = !(v && !strcmp(v, "0"));
  }
  if (ct_have_neon()) return PK_NEON;
  return ct_have_avx512() ? PK_AVX512 : ct_have_avx2() && avx2_on ? PK_AVX2 : 0;
}

int ct_gemm_packed_available(void) { return ct_gemm_packed_kernel() != 0; }

size_t ct_pack_nt_floats(int N, int K) { return (size_t)((N + NR - 1) / NR) * NR * (size_t)K; }

/* ct_pack_nt (float) and ct_pack_nt_h (16-bit values copied as they are): one body; 8 k at a
 * time per row keeps the reads sequential and the writes in a few lines */
#define PACK_NT(LINK, NAME, ET)                                                              \
  LINK void NAME(int N, int K, const ET *B, int ldb, ET *P, int p0, int p1) {                \
    for (int p = p0; p < p1; p++) {                                                          \
      ET *dst = P + (size_t)p * NR * K;                                                      \
      int n0 = p * NR, nc = N - n0 < NR ? N - n0 : NR;                                       \
      for (int k0 = 0; k0 < K; k0 += 8) {                                                    \
        int kn = K - k0 < 8 ? K - k0 : 8;                                                    \
        for (int j = 0; j < NR; j++) {                                                       \
          const ET *src = B + (size_t)(n0 + j) * ldb + k0;                                   \
          for (int k = 0; k < kn; k++) dst[(size_t)(k0 + k) * NR + j] = j < nc ? src[k] : (ET)0; \
        }                                                                                    \
      }                                                                                      \
    }                                                                                        \
  }
PACK_NT(static, pack_nt_scalar, float)
PACK_NT(, ct_pack_nt_h, uint16_t)
#undef PACK_NT

#ifdef CT_PK_X86
static void pack_nt16(int N, int K, const float *B, int ldb, float *P, int p0, int p1);
#endif
void ct_pack_nt(int N, int K, const float *B, int ldb, float *P, int p0, int p1) {
#ifdef CT_PK_X86
  if (ct_have_avx512()) {
    pack_nt16(N, K, B, ldb, P, p0, p1);
    return;
  }
#endif
  pack_nt_scalar(N, K, B, ldb, P, p0, p1);
}

#ifdef CT_PK_X86
#define TGT __attribute__((target("avx512f")))

/* one k step of the panel (32 values) into two vectors of 16 floats */
#define LOADB_F32(bp, b0, b1) \
  do { b0 = _mm512_load_ps(bp); b1 = _mm512_load_ps((bp) + 16); } while (0)
#define LOADB_F16(bp, b0, b1)                                        \
  do {                                                               \
    __m512i h_ = _mm512_load_si512((const void *)(bp));              \
    b0 = _mm512_cvtph_ps(_mm512_castsi512_si256(h_));                \
    b1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h_, 1));          \
  } while (0)
#define LOADB_BF16(bp, b0, b1)                                                                  \
  do {                                                                                          \
    __m512i h_ = _mm512_load_si512((const void *)(bp));                                         \
    b0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h_)), 16)); \
    b1 = _mm512_castsi512_ps(                                                                   \
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h_, 1)), 16));        \
  } while (0)

/* one k step: two loads of the panel, MR broadcasts of A (k4 layout: row r's value of the
 * step is ap[4 r + KK] in the step's group), 2 MR FMAs */
#define UKR_STEP(MR, LOADB, KK)                                                          \
  {                                                                                      \
    __m512 b0, b1;                                                                       \
    LOADB(bp, b0, b1);                                                                   \
    _Pragma("GCC unroll 12") for (int r = 0; r < MR; r++) {                             \
      __m512 a = _mm512_set1_ps(ap[4 * r + (KK)]);                                       \
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);                                     \
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);                                     \
    }                                                                                    \
    bp += NR;                                                                            \
  }
/* c[r][0..nc) (op)= alpha * sum_k A[r][k] * bp[k*NR + j], A in the k4 layout (pack_rows_k4);
 * first: C = beta C + ..., else C += ...; ET/LOADB: the panel's element type and its
 * conversion to float (exact) */
#define UKR(MR, SUF, ET, LOADB)                                                         \
  TGT static void ukr##SUF##MR(int kc, const float *ap, const void *bv, float *c, int ldc, \
                               int nc, float alpha, float beta, int first, const void *pfv, \
                               const float *bias) {                                       \
    const ET *bp = bv;                                                                   \
    const char *pf = pfv;                                                                \
    __m512 acc[MR][2];                                                                   \
    _Pragma("GCC unroll 12") for (int r = 0; r < MR; r++) {                             \
      acc[r][0] = _mm512_setzero_ps();                                                   \
      acc[r][1] = _mm512_setzero_ps();                                                   \
    }                                                                                    \
    /* k steps by groups of four, one prefetch of the cursor's line per two steps (no test \
     * per step); then the last group's 1..3 steps */                                    \
    int k = 0;                                                                           \
    /* C's rows are asked for (prefetchw) during the last 2 MR groups of four steps, one  \
     * row every second group, so that the loads and stores after the loop find them in  \
     * L1 instead of stalling on L2 / L3 (a later K block's C, the residual under beta 1, \
     * an output's first write): +2 % at image batch 32 (docs/performance.md) */          \
    int kpre = (kc - 8 * MR) & ~3;                                                       \
    if (kpre < 0) kpre = 0;                                                              \
    if (pf) {                                                                            \
      _Pragma("GCC unroll 1") for (; k < kpre; k += 4, ap += 4 * MR) {                   \
        _mm_prefetch(pf + (size_t)(k >> 1) * 64, PK_HINT);                               \
        UKR_STEP(MR, LOADB, 0)                                                           \
        UKR_STEP(MR, LOADB, 1)                                                           \
        _mm_prefetch(pf + (size_t)(k >> 1) * 64 + 64, PK_HINT);                          \
        UKR_STEP(MR, LOADB, 2)                                                           \
        UKR_STEP(MR, LOADB, 3)                                                           \
      }                                                                                  \
    } else {                                                                             \
      _Pragma("GCC unroll 1") for (; k < kpre; k += 4, ap += 4 * MR) {                   \
        UKR_STEP(MR, LOADB, 0)                                                           \
        UKR_STEP(MR, LOADB, 1)                                                           \
        UKR_STEP(MR, LOADB, 2)                                                           \
        UKR_STEP(MR, LOADB, 3)                                                           \
      }                                                                                  \
    }                                                                                    \
    /* (here fewer than 2 MR groups remain, so row g / 2 < MR) */                         \
    _Pragma("GCC unroll 1") for (; k + 4 <= kc; k += 4, ap += 4 * MR) {                 \
      int g = (k - kpre) >> 2;                                                           \
      if (pf) _mm_prefetch(pf + (size_t)(k >> 1) * 64, PK_HINT);                         \
      if (!(g & 1)) {                                                                    \
        const char *cl = (const char *)(c + (size_t)(g >> 1) * ldc);                     \
        _mm_prefetch(cl, _MM_HINT_ET0);                                                  \
        _mm_prefetch(cl + 64, _MM_HINT_ET0);                                             \
        _mm_prefetch(cl + 124, _MM_HINT_ET0);                                            \
      }                                                                                  \
      UKR_STEP(MR, LOADB, 0)                                                             \
      UKR_STEP(MR, LOADB, 1)                                                             \
      if (pf) _mm_prefetch(pf + (size_t)(k >> 1) * 64 + 64, PK_HINT);                    \
      UKR_STEP(MR, LOADB, 2)                                                             \
      UKR_STEP(MR, LOADB, 3)                                                             \
    }                                                                                    \
    for (int kk = 0; k < kc; k++, kk++) {                                                \
      if (pf && !(k & 1)) _mm_prefetch(pf + (size_t)(k >> 1) * 64, PK_HINT);            \
      UKR_STEP(MR, LOADB, kk)                                                            \
    }                                                                                    \
    __mmask16 m0 = nc >= 16 ? 0xffff : (__mmask16)((1u << nc) - 1);                      \
    __mmask16 m1 = nc >= 32 ? 0xffff : nc <= 16 ? 0 : (__mmask16)((1u << (nc - 16)) - 1); \
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);                        \
    _Pragma("GCC unroll 12") for (int r = 0; r < MR; r++) {                             \
      float *cr = c + (size_t)r * ldc;                                                   \
      __m512 x0 = _mm512_mul_ps(va, acc[r][0]), x1 = _mm512_mul_ps(va, acc[r][1]);        \
      if (!first) {                                                                      \
        x0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), x0);                           \
        x1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr + 16), x1);                      \
      } else {                                                                           \
        if (bias) {                                                                      \
          x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, bias));                       \
          x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, bias + 16));                  \
        }                                                                                \
        if (beta != 0.0f) {                                                              \
          x0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, cr), x0);                   \
          x1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, cr + 16), x1);              \
        }                                                                                \
      }                                                                                  \
      _mm512_mask_storeu_ps(cr, m0, x0);                                                 \
      _mm512_mask_storeu_ps(cr + 16, m1, x1);                                            \
    }                                                                                    \
  }
#elif defined(CT_PK_NEON)
/* NEON micro-kernel: the same contract as the AVX-512 one (one k step of the 32-column panel
 * per iteration, one FMA per element and k in the same order, then alpha, the bias or beta C),
 * for two rows of A at a time: 16 accumulators of 4 floats and 8 of the panel, of the 32
 * registers. The store goes through a row of 32 floats for the column edge. */
typedef void (*loadb_fn)(const void *, float32x4_t *);
static inline void loadb_f32(const void *p, float32x4_t *b) {
  const float *f = p;
  _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) b[i] = vld1q_f32(f + 4 * i);
}
static inline void loadb_f16(const void *p, float32x4_t *b) {
  const float16_t *h = p;
  _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) b[i] = vcvt_f32_f16(vld1_f16(h + 4 * i));
}
static inline void loadb_bf16(const void *p, float32x4_t *b) {
  const uint16_t *h = p;
  _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) b[i] = vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(h + 4 * i), 16));
}
#define LOADB_F32 loadb_f32
#define LOADB_F16 loadb_f16
#define LOADB_BF16 loadb_bf16

static inline void store_row(float *cr, const float32x4_t *acc, int nc, float alpha, float beta,
                             int first, const float *bias) {
  float t[NR];
  _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) vst1q_f32(t + 4 * i, acc[i]);
  for (int j = 0; j < nc; j++) {
    float x = alpha * t[j];
    if (!first) {
      x = cr[j] + x;
    } else {
      if (bias) x = x + bias[j];
      if (beta != 0.0f) x = fmaf(beta, cr[j], x);
    }
    cr[j] = x;
  }
}

/* The rows in pairs, each pair through KS k steps of the panel at a time (its 24 KB of them
 * stay in L1 while the six pairs read them; a K block of 768 is 96 KB), the accumulators
 * kept in acc between the passes: the same FMAs in the same order as one pass over kc. */
static inline __attribute__((always_inline)) void
ukr_neon(const int MR, loadb_fn loadb, const size_t es, int kc, const float *ap, const void *bv,
         float *c, int ldc, int nc, float alpha, float beta, int first, const void *pfv,
         const float *bias) {
  enum { KS = 192 };
  float32x4_t acc[MRMAX][8];
  for (int k0 = 0; k0 < kc; k0 += KS) {
    int k1 = kc - k0 < KS ? kc : k0 + KS;
    for (int r0 = 0; r0 < MR; r0 += 2) {
      const int two = r0 + 1 < MR;
      float32x4_t c0[8], c1[8];
      _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
        c0[i] = k0 ? acc[r0][i] : vdupq_n_f32(0.0f);
        c1[i] = k0 && two ? acc[r0 + 1][i] : vdupq_n_f32(0.0f);
      }
      const unsigned char *bp = (const unsigned char *)bv + (size_t)k0 * NR * es, *pf = pfv;
      for (int k = k0; k < k1; k++) {
        if (pf && r0 == 0 && !(k & 1)) __builtin_prefetch(pf + (size_t)(k >> 1) * 64, 0, 2);
        float32x4_t b[8];
        loadb(bp, b);
        float x0 = ap[(size_t)k * MR + r0];
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) c0[i] = vfmaq_n_f32(c0[i], b[i], x0);
        if (two) {
          float x1 = ap[(size_t)k * MR + r0 + 1];
          _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) c1[i] = vfmaq_n_f32(c1[i], b[i], x1);
        }
        bp += (size_t)NR * es;
      }
      if (k1 < kc) {
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
          acc[r0][i] = c0[i];
          if (two) acc[r0 + 1][i] = c1[i];
        }
        continue;
      }
      store_row(c + (size_t)r0 * ldc, c0, nc, alpha, beta, first, bias);
      if (two) store_row(c + (size_t)(r0 + 1) * ldc, c1, nc, alpha, beta, first, bias);
    }
  }
}

#define UKR(MR, SUF, ET, LOADB)                                                                \
  static void ukr##SUF##MR(int kc, const float *ap, const void *bv, float *c, int ldc, int nc,  \
                           float alpha, float beta, int first, const void *pfv,                \
                           const float *bias) {                                                \
    ukr_neon(MR, LOADB, sizeof(ET), kc, ap, bv, c, ldc, nc, alpha, beta, first, pfv, bias);    \
  }
#endif

#if defined(CT_PK_X86) || defined(CT_PK_NEON)
#define UKRS(SUF, ET, LOADB)                                                               \
  UKR(1, SUF, ET, LOADB) UKR(2, SUF, ET, LOADB) UKR(3, SUF, ET, LOADB) UKR(4, SUF, ET, LOADB) \
  UKR(5, SUF, ET, LOADB) UKR(6, SUF, ET, LOADB) UKR(7, SUF, ET, LOADB) UKR(8, SUF, ET, LOADB)  \
  UKR(9, SUF, ET, LOADB) UKR(10, SUF, ET, LOADB) UKR(11, SUF, ET, LOADB) UKR(12, SUF, ET, LOADB)
UKRS(s, float, LOADB_F32)
UKRS(h, uint16_t, LOADB_F16)
UKRS(b, uint16_t, LOADB_BF16)
#undef UKRS
#undef UKR

typedef void (*ukr_fn)(int, const float *, const void *, float *, int, int, float, float, int,
                       const void *, const float *);
#define TABLE(SUF) \
  {NULL, ukr##SUF##1, ukr##SUF##2, ukr##SUF##3, ukr##SUF##4, ukr##SUF##5, ukr##SUF##6, \
   ukr##SUF##7, ukr##SUF##8, ukr##SUF##9, ukr##SUF##10, ukr##SUF##11, ukr##SUF##12}
static const ukr_fn ukrs[3][MRMAX + 1] = {TABLE(s), TABLE(h), TABLE(b)};
#undef TABLE

#ifdef CT_PK_X86
/* ---- AVX2 + FMA: the same panels, read as two halves of 16 columns. A half's k step is
 * one 64-byte line (32 bytes for 16-bit panels): two ymm of 8 floats. Micro-kernel: mr <= 6
 * rows x 16 columns = up to 12 ymm accumulators, 2 panel loads and mr broadcasts per k (15 of
 * the 16 ymm registers). It reads the A row blocks packed for the AVX-512 kernel (up to 12
 * rows, k-major) with their stride, a block of 7..12 rows as two sub-blocks of near-equal
 * size (10 -> 5 + 5), so A is packed the same way for both kernels. Every C element gets the
 * same FMAs in the same order as in the AVX-512 kernel, and the same store arithmetic: the
 * two kernels give bitwise the same results (spec/packed_spec.lua). */
#define TGT2 __attribute__((target("avx2,fma,f16c")))
#define LOADB2_F32(bp, b0, b1) \
  do { b0 = _mm256_load_ps(bp); b1 = _mm256_load_ps((bp) + 8); } while (0)
#define LOADB2_F16(bp, b0, b1)                                        \
  do {                                                                \
    b0 = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(bp)));      \
    b1 = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(bp) + 1));  \
  } while (0)
#define BF16X8(p) \
  _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_load_si128(p)), 16))
#define LOADB2_BF16(bp, b0, b1)                  \
  do {                                           \
    b0 = BF16X8((const __m128i *)(bp));          \
    b1 = BF16X8((const __m128i *)(bp) + 1);      \
  } while (0)


/* one k step: two loads of the half panel, MR broadcasts of A, 2 MR FMAs */
#define UKR2_STEP(MR, LOADB)                                                                 \
  {                                                                                          \
    __m256 b0, b1;                                                                           \
    LOADB(bp, b0, b1);                                                                       \
    _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {                                  \
      __m256 a = _mm256_broadcast_ss(ap + r);                                                \
      acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);                                         \
      acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);                                         \
    }                                                                                        \
    ap += as;                                                                                \
    bp += NR;                                                                                \
  }

/* c[r][0..nc) (op)= alpha * sum_k ap[k*as + r] * bp[k*NR + j], nc <= 16; as UKR above */
#define UKR2(MR, SUF, ET, LOADB)                                                             \
  TGT2 static void u2##SUF##MR(int kc, const float *ap, int as, const void *bv, float *c,     \
                               int ldc, int nc, float alpha, float beta, int first,           \
                               const void *pfv, const float *bias) {                          \
    const ET *bp = bv;                                                                        \
    const char *pf = pfv;                                                                     \
    __m256 acc[MR][2];                                                                        \
    _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {                                   \
      acc[r][0] = _mm256_setzero_ps();                                                        \
      acc[r][1] = _mm256_setzero_ps();                                                        \
    }                                                                                         \
    if (pf) { /* k steps in pairs, one prefetch per pair, as UKR */                           \
      int k = 0;                                                                              \
      _Pragma("GCC unroll 1") for (; k + 2 <= kc; k += 2) {                                  \
        _mm_prefetch(pf + (size_t)(k >> 1) * 64, PK_HINT);                                    \
        UKR2_STEP(MR, LOADB)                                                                  \
        UKR2_STEP(MR, LOADB)                                                                  \
      }                                                                                       \
      if (k < kc) {                                                                           \
        _mm_prefetch(pf + (size_t)(k >> 1) * 64, PK_HINT);                                    \
        UKR2_STEP(MR, LOADB)                                                                  \
      }                                                                                       \
    } else {                                                                                  \
      _Pragma("GCC unroll 1") for (int k = 0; k < kc; k++) UKR2_STEP(MR, LOADB)               \
    }                                                                                         \
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);                             \
    if (nc == 16) {                                                                           \
      _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {                                 \
        float *cr = c + (size_t)r * ldc;                                                      \
        __m256 x0 = _mm256_mul_ps(va, acc[r][0]), x1 = _mm256_mul_ps(va, acc[r][1]);          \
        if (!first) {                                                                         \
          x0 = _mm256_add_ps(_mm256_loadu_ps(cr), x0);                                        \
          x1 = _mm256_add_ps(_mm256_loadu_ps(cr + 8), x1);                                    \
        } else {                                                                              \
          if (bias) {                                                                         \
            x0 = _mm256_add_ps(x0, _mm256_loadu_ps(bias));                                    \
            x1 = _mm256_add_ps(x1, _mm256_loadu_ps(bias + 8));                                \
          }                                                                                   \
          if (beta != 0.0f) {                                                                 \
            x0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), x0);                                \
            x1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8), x1);                            \
          }                                                                                   \
        }                                                                                     \
        _mm256_storeu_ps(cr, x0);                                                             \
        _mm256_storeu_ps(cr + 8, x1);                                                         \
      }                                                                                       \
      return;                                                                                 \
    }                                                                                         \
    __m256i m0 = ct_lanes8(nc), m1 = ct_lanes8(nc - 8);                                      \
    _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {                                   \
      float *cr = c + (size_t)r * ldc;                                                        \
      __m256 x0 = _mm256_mul_ps(va, acc[r][0]), x1 = _mm256_mul_ps(va, acc[r][1]);            \
      if (!first) {                                                                           \
        x0 = _mm256_add_ps(_mm256_maskload_ps(cr, m0), x0);                                   \
        x1 = _mm256_add_ps(_mm256_maskload_ps(cr + 8, m1), x1);                               \
      } else {                                                                                \
        if (bias) {                                                                           \
          x0 = _mm256_add_ps(x0, _mm256_maskload_ps(bias, m0));                               \
          x1 = _mm256_add_ps(x1, _mm256_maskload_ps(bias + 8, m1));                           \
        }                                                                                     \
        if (beta != 0.0f) {                                                                   \
          x0 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr, m0), x0);                           \
          x1 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr + 8, m1), x1);                       \
        }                                                                                     \
      }                                                                                       \
      _mm256_maskstore_ps(cr, m0, x0);                                                        \
      _mm256_maskstore_ps(cr + 8, m1, x1);                                                    \
    }                                                                                         \
  }
#define UKRS2(SUF, ET, LOADB)                                                    \
  UKR2(1, SUF, ET, LOADB) UKR2(2, SUF, ET, LOADB) UKR2(3, SUF, ET, LOADB)        \
  UKR2(4, SUF, ET, LOADB) UKR2(5, SUF, ET, LOADB) UKR2(6, SUF, ET, LOADB)
UKRS2(s, float, LOADB2_F32)
UKRS2(h, uint16_t, LOADB2_F16)
UKRS2(b, uint16_t, LOADB2_BF16)
#undef UKRS2
#undef UKR2

typedef void (*ukr2_fn)(int, const float *, int, const void *, float *, int, int, float, float,
                        int, const void *, const float *);
#define TABLE2(SUF) {NULL, u2##SUF##1, u2##SUF##2, u2##SUF##3, u2##SUF##4, u2##SUF##5, u2##SUF##6}
static const ukr2_fn avx2_ukrs[3][7] = {TABLE2(s), TABLE2(h), TABLE2(b)};
#undef TABLE2

/* One AVX-512 micro-block (mr <= 12 rows x nc <= 32 columns of a panel) on the AVX2 kernels:
 * per half of the panel, the rows as one or two sub-blocks; the first sub-block of each half
 * prefetches a call's share from pf on (2 pf_bytes(kc) in all: the micro-block's share). */
static void block2(const ukr2_fn *tab, int mr, int kc, const float *ap, const unsigned char *bp,
                   size_t es, float *c, int ldc, int nc, float alpha, float beta, int first,
                   const unsigned char *pf, const float *bias) {
  int s0 = mr <= 6 ? mr : (mr + 1) / 2;
  for (int h = 0; h < 2 && 16 * h < nc; h++) {
    int nch = nc - 16 * h < 16 ? nc - 16 * h : 16;
    const unsigned char *bh = bp + (size_t)16 * h * es;
    const unsigned char *ph = pf ? pf + (size_t)h * pf_bytes(kc) : NULL;
    const float *bb = bias ? bias + 16 * h : NULL;
    tab[s0](kc, ap, mr, bh, c + 16 * h, ldc, nch, alpha, beta, first, ph, bb);
    if (mr > s0)
      tab[mr - s0](kc, ap + s0, mr, bh, c + (size_t)s0 * ldc + 16 * h, ldc, nch, alpha, beta,
                   first, NULL, bb);
  }
}
#endif /* CT_PK_X86: the AVX2 kernel */

#ifdef CT_PK_X86

/* The AVX-512 kernel's layout of a micro block ("k4"): k in groups of four, each group the
 * mr rows' four values in turn, d[(k / 4) * 4 mr + 4 r + k % 4] (the last group padded to
 * four). A row's 16 values at a time are four 16-byte stores, no transpose (packing 400 rows:
 * 1.6-1.8x the speed of the 16 x 16 transposes of the k-major layout). Copies only. */
TGT static void pack_rows_k4(const float *src, int lda, int mr, int kc, float *d) {
  for (int k = 0; k < kc; k += 16) {
    int kn = kc - k < 16 ? kc - k : 16, ng = (kn + 3) / 4;
    __mmask16 km = (__mmask16)((1u << kn) - 1);
    float *dg = d + (size_t)k * mr; /* group k / 4 */
    for (int r = 0; r < mr; r++) {
      __m512 x = _mm512_maskz_loadu_ps(km, src + (size_t)r * lda + k);
      _mm_storeu_ps(dg + 4 * r, _mm512_castps512_ps128(x));
      if (ng > 1) _mm_storeu_ps(dg + 4 * mr + 4 * r, _mm512_extractf32x4_ps(x, 1));
      if (ng > 2) _mm_storeu_ps(dg + 8 * mr + 4 * r, _mm512_extractf32x4_ps(x, 2));
      if (ng > 3) _mm_storeu_ps(dg + 12 * mr + 4 * r, _mm512_extractf32x4_ps(x, 3));
    }
  }
}

/* the same for A given transposed (each k step mr contiguous values): four k steps' rows
 * interleaved in registers, each row's four values one 16-byte store */
TGT static void pack_cols_k4(const float *src, int lda, int mr, int kc, float *d) {
  __mmask16 rm = (__mmask16)((1u << mr) - 1);
  for (int k = 0; k < kc; k += 4) {
    int kn = kc - k < 4 ? kc - k : 4;
    __m512 x[4];
    _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++)
      x[i] = i < kn ? _mm512_maskz_loadu_ps(rm, src + (size_t)(k + i) * lda) : _mm512_setzero_ps();
    __m512 t0 = _mm512_unpacklo_ps(x[0], x[1]), t1 = _mm512_unpackhi_ps(x[0], x[1]);
    __m512 t2 = _mm512_unpacklo_ps(x[2], x[3]), t3 = _mm512_unpackhi_ps(x[2], x[3]);
    __m512 u[4]; /* u[i], 128-bit lane L: row 4 L + i's four values */
    u[0] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    u[1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    u[2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    u[3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    float *dg = d + (size_t)k * mr;
    for (int r = 0; r < mr; r++) {
      __m512 v = u[r & 3];
      __m128 q = (r >> 2) == 0   ? _mm512_castps512_ps128(v)
                 : (r >> 2) == 1 ? _mm512_extractf32x4_ps(v, 1)
                 : (r >> 2) == 2 ? _mm512_extractf32x4_ps(v, 2)
                                 : _mm512_extractf32x4_ps(v, 3);
      _mm_storeu_ps(dg + 4 * r, q);
    }
  }
}

/* ct_pack_nt for float B on AVX-512: per panel, 16 k at a time, its 32 rows as two 16 x 16
 * blocks transposed in registers, each k step stored as two aligned vectors (copies only: the
 * scalar loop's values) */
TGT static void pack_nt16(int N, int K, const float *B, int ldb, float *P, int p0, int p1) {
  for (int p = p0; p < p1; p++) {
    float *dst = P + (size_t)p * NR * K;
    int n0 = p * NR, nc = N - n0 < NR ? N - n0 : NR;
    for (int k0 = 0; k0 < K; k0 += 16) {
      int kn = K - k0 < 16 ? K - k0 : 16;
      __mmask16 km = (__mmask16)((1u << kn) - 1);
      __m512 lo[16], hi[16];
      _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) {
        lo[i] = i < nc ? _mm512_maskz_loadu_ps(km, B + (size_t)(n0 + i) * ldb + k0) : _mm512_setzero_ps();
        hi[i] = i + 16 < nc ? _mm512_maskz_loadu_ps(km, B + (size_t)(n0 + 16 + i) * ldb + k0)
                            : _mm512_setzero_ps();
      }
      ct_transpose16(lo);
      ct_transpose16(hi);
      _Pragma("GCC unroll 16") for (int k = 0; k < 16; k++)
        if (k < kn) {
          _mm512_store_ps(dst + (size_t)(k0 + k) * NR, lo[k]);
          _mm512_store_ps(dst + (size_t)(k0 + k) * NR + 16, hi[k]);
        }
    }
  }
}

/* the first n (1..8) floats of v to d: no masked store (vmaskmovps to memory is slow on AMD) */
TGT2 static inline void store_n(float *d, __m256 v, int n) {
  if (n == 8) {
    _mm256_storeu_ps(d, v);
    return;
  }
  __m128 x = _mm256_castps256_ps128(v);
  if (n >= 4) {
    _mm_storeu_ps(d, x);
    x = _mm256_extractf128_ps(v, 1);
    d += 4;
    n -= 4;
  }
  if (n >= 2) {
    _mm_storel_pi((__m64 *)d, x);
    x = _mm_movehl_ps(x, x);
    d += 2;
    n -= 2;
  }
  if (n) _mm_store_ss(d, x);
}

/* the k-major layout (the AVX2 and NEON kernels'): a micro block's mr <= 12 rows of kc values
 * (row stride lda) into d[k * mr + r]; with AVX2, rows in groups of 8, 8 k at a time through
 * an 8 x 8 transpose (copies only: the scalar loop's values) */
TGT2 static void pack_rows8(const float *src, int lda, int mr, int kc, float *d) {
  for (int r0 = 0; r0 < mr; r0 += 8) {
    int rn = mr - r0 < 8 ? mr - r0 : 8;
    for (int k = 0; k < kc; k += 8) {
      int kn = kc - k < 8 ? kc - k : 8;
      __m256i km = ct_lanes8(kn);
      __m256 r[8];
      _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
        const float *p = src + (size_t)(r0 + i) * lda + k;
        r[i] = i >= rn ? _mm256_setzero_ps() : kn == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, km);
      }
      ct_transpose8(r); /* r[j]: column k + j of the tile */
      _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++)
        if (j < kn) store_n(d + (size_t)(k + j) * mr + r0, r[j], rn);
    }
  }
}
#endif

/* A row block of mc (<= MC) rows as micro blocks of near-equal size (50 rows: 5 x 10): micro
 * block b is rows bi[b] .. bi[b+1]-1; returns their number */
static int micro_split(int mc, int bi[MBI]) {
  int nb = (mc + MRMAX - 1) / MRMAX;
  for (int b = 0; b <= nb; b++) bi[b] = (int)((long)mc * b / nb);
  return nb;
}

/* Rows m0 .. m0+mc, columns k0 .. k0+kc of A, as the micro-kernels read them: micro blocks of
 * mr rows (micro_split), kpad(kc) floats per row apart, each in the k4 layout (k4: the
 * AVX-512 kernel) or k-major (the AVX2 and NEON kernels). ta: A given transposed
 * (stored {K, M}, lda), so row r, column k is A[k * lda + r] and each k step of a row block
 * is one contiguous read. Copies only: every path gives the same values. */
static inline int kpad(int kc) { return (kc + 3) & ~3; }

/* mr rows (or, ta, columns) from src, kc values each, into one micro block's layout at d */
static void pack_micro(const float *src, int lda, int ta, int mr, int kc, float *d, int k4) {
#ifdef CT_PK_X86
  if (k4) {
    (ta ? pack_cols_k4 : pack_rows_k4)(src, lda, mr, kc, d);
    return;
  }
  if (!ta && ct_have_avx2()) {
    pack_rows8(src, lda, mr, kc, d);
    return;
  }
#else
  (void)k4; /* only the AVX-512 kernel reads k4 */
#endif
  size_t rs = ta ? 1 : (size_t)lda, ks = ta ? (size_t)lda : 1; /* strides of a row, a k step */
  for (int k = 0; k < kc; k++)
    for (int r = 0; r < mr; r++) d[k * mr + r] = src[r * rs + k * ks];
}

static void pack_a_block(const float *A, int lda, int ta, int m0, int mc, int k0, int kc,
                         float *dst, int k4) {
  size_t rs = ta ? 1 : (size_t)lda, ks = ta ? (size_t)lda : 1; /* strides of a row, a k step */
  int bi[MBI], nb = micro_split(mc, bi);
  for (int b = 0; b < nb; b++) {
    int r0 = bi[b], mr = bi[b + 1] - r0;
    pack_micro(A + (size_t)(m0 + r0) * rs + (size_t)k0 * ks, lda, ta, mr, kc,
               dst + (size_t)r0 * kpad(kc), k4);
  }
}

/* Row blocks of at most MC rows, of near-equal size (257 rows: 86 + 86 + 85, not
 * 120 + 120 + 17, whose last block would run on small micro-kernels). */
static int mblocks(int M) { return (M + MC - 1) / MC; }
static int mstart(int M, int b) { return (int)((long)M * b / mblocks(M)); }
/* K blocks the same way (K = 800, a weight gradient's rows: 5 x 160, not 4 x 192 + 32, whose
 * last block would store C after 32 steps) */
static int kblocks(int K) { return (K + KC - 1) / KC; }
static int kstart(int K, int b) { return (int)((long)K * b / kblocks(K)); }
/* where K block kb of A starts in the packed buffer: each K block of kc values takes
 * kpad(kc) <= kc + 3 per row (the k4 layout's last group) */
static size_t koff(int K, int kb, int M) { return ((size_t)kstart(K, kb) + 3 * (size_t)kb) * M; }

size_t ct_pack_a_floats(int M, int K) { return (size_t)M * ((size_t)K + 3 * (size_t)kblocks(K)); }

/* units u = kb * mblocks(M) + mb: K block kb of row block mb (so that threads share the
 * packing of a single row block too) */
void ct_pack_a(int isa, int M, int K, const float *A, int lda, int ta, float *apa, int b0, int b1) {
  int nmb = mblocks(M);
  for (int u = b0; u < b1; u++) {
    int kb = u / nmb, mb = u % nmb;
    int k0 = kstart(K, kb), kc = kstart(K, kb + 1) - k0;
    int m0 = mstart(M, mb), mc = mstart(M, mb + 1) - m0;
    if (mc > 0)
      pack_a_block(A, lda, ta, m0, mc, k0, kc, apa + koff(K, kb, M) + (size_t)m0 * kpad(kc),
                   isa == PK_AVX512);
  }
}

int ct_pack_a_blocks(int M, int K) { return mblocks(M) * kblocks(K); }

/* One micro-block: rows ap (mr of them, k-major) x the panel's block bp, on the AVX-512 or
 * NEON kernel tab[mr], or (tab2 set) the AVX2 kernels; pf: where this call prefetches from */
static inline void micro_block(const ukr_fn *tab, const void *tab2, int mr, int kc, const float *ap,
                               const unsigned char *bp, size_t es, float *c, int ldc, int nc,
                               float alpha, float beta, int first, const unsigned char *pf,
                               const float *bias) {
#ifdef CT_PK_X86
  if (tab2) {
    block2(tab2, mr, kc, ap, bp, es, c, ldc, nc, alpha, beta, first, pf, bias);
    return;
  }
#else
  (void)tab2; (void)es;
#endif
  tab[mr](kc, ap, bp, c, ldc, nc, alpha, beta, first, pf, bias);
}

void ct_gemm_packed(int M, int N, int K, float alpha, const float *A, int lda, const void *P,
                    int kind, float beta, float *C, int ldc, int p0, int p1) {
  ct_gemm_packed_pa(M, N, K, alpha, A, lda, NULL, P, kind, beta, NULL, C, ldc, p0, p1);
}

void ct_gemm_packed_pa(int M, int N, int K, float alpha, const float *A, int lda,
                       const float *apa, const void *P, int kind, float beta, const float *bias,
                       float *C, int ldc, int p0, int p1) {
  ct_gemm_packed_isa(ct_gemm_packed_kernel(), M, N, K, alpha, A, lda, apa, P, kind, beta, bias,
                     C, ldc, p0, p1);
}

/* Where ct_gemm_packed_emit puts its tiles: transformed by fn, packed into apa (the next
 * GEMM's input, K' = N) in isa's layout (k4: the AVX-512 kernel's) */
typedef struct {
  float *apa;
  ct_tile_fn fn;
  void *ctx;
  int k4;
  float *tile; /* one micro-block's result, row stride NR (MRMAX x NR floats) */
} emit_to;

int ct_gemm_packed_emit_ok(int N, int K) {
  if (K <= 0 || N <= 0 || kblocks(K) != 1) return 0;
  for (int kb = 0; kb < kblocks(N); kb++)
    if (kstart(N, kb) % NR) return 0;
  return 1;
}

/* One micro-block's tile (mr rows from row0 of M, columns j0 .. j0+nc of N, row stride NR):
 * through fn, then into the micro block's columns j0 - k0 .. of the K block holding j0 (one
 * K block of the next GEMM holds the whole panel: ct_gemm_packed_emit_ok) */
static void emit_tile(const emit_to *em, float *tile, int M, int N, int row0, int mr, int j0,
                      int nc) {
  if (em->fn) em->fn(em->ctx, tile, mr * NR);
  int kb = 0, nkb = kblocks(N);
  while (kb + 1 < nkb && kstart(N, kb + 1) <= j0) kb++;
  int k0 = kstart(N, kb), kc = kstart(N, kb + 1) - k0;
  pack_micro(tile, NR, 0, mr, nc,
             em->apa + koff(N, kb, M) + (size_t)row0 * kpad(kc) + (size_t)(j0 - k0) * mr, em->k4);
}

/* One micro-block (rows row0 .. row0+mr of M, the panel's columns j0 .. j0+nc) into C, or
 * (em) into em's tile and on through emit_tile */
static inline void micro_out(const ukr_fn *tab, const void *tab2, int mr, int kc,
                             const float *ap, const unsigned char *bp, size_t es, float *C,
                             int ldc, int row0, int j0, int nc, float alpha, float beta,
                             int first, const unsigned char *pf, const float *bias,
                             const emit_to *em, int M, int N) {
  float *c = em ? em->tile : C + (size_t)row0 * ldc + j0;
  micro_block(tab, tab2, mr, kc, ap, bp, es, c, em ? NR : ldc, nc, alpha, beta, first, pf,
              bias ? bias + j0 : NULL);
  if (em) emit_tile(em, em->tile, M, N, row0, mr, j0, nc);
}

/* ct_gemm_packed_isa, or (em set; alpha 1, beta 0, one K block) ct_gemm_packed_emit */
static void gemm_core(int isa, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *apa, const void *P, int kind, float beta, const float *bias,
                      float *C, int ldc, int p0, int p1, const emit_to *em) {
  if (M <= 0 || N <= 0 || p1 <= p0) return;
  const unsigned char *Pb = P;
  size_t es = ct_pack_elem_size(kind);
  int ki = kind == PK_F16 ? 1 : kind == PK_BF16 ? 2 : 0;
  const ukr_fn *tab = ukrs[ki];
#ifdef CT_PK_X86
  const ukr2_fn *tab2 = isa == PK_AVX2 ? avx2_ukrs[ki] : NULL;
#else
  const void *tab2 = NULL; /* aarch64: one micro-kernel, NEON's */
  (void)isa;
#endif
  if (K <= 0) {
    int j0 = p0 * NR, j1 = p1 * NR < N ? p1 * NR : N;
    for (int i = 0; i < M; i++)
      for (int j = j0; j < j1; j++) {
        float *c = &C[(size_t)i * ldc + j];
        *c = (beta == 0.0f ? 0.0f : beta * *c) + (bias ? bias[j] : 0.0f);
      }
    return;
  }
  const int calls = tab2 ? 2 : 1; /* prefetching kernel calls per micro-block (block2: two) */
  const unsigned char *pend = Pb + (size_t)p1 * NR * K * es; /* the end of this call's panels */
  if (apa && M <= MC) {
    /* One row block (small batches): panel after panel, each through its K blocks, so the
     * weights are read in the order they lie in memory and the prefetch cursor runs on from
     * one K block into the next and into the next panel. Every C element gets the same
     * operations in the same order as below. */
    int bi[MBI], nb = micro_split(M, bi);
    for (int p = p0; p < p1; p++) {
      int j0 = p * NR, nc = N - j0 < NR ? N - j0 : NR;
      for (int kb = 0, nkb = kblocks(K); kb < nkb; kb++) {
        int k0 = kstart(K, kb), kc = kstart(K, kb + 1) - k0;
        const float *ap = apa + koff(K, kb, M);
        const unsigned char *bp = Pb + ((size_t)p * NR * K + (size_t)k0 * NR) * es;
        size_t share = pf_bytes(kc) * calls; /* what one micro-block prefetches */
        /* the cursor: the next K block's lines (about as many as this one's) */
        const unsigned char *cur = bp + (size_t)NR * kc * es, *lim = cur + (size_t)NR * kc * es;
        if (lim > pend) lim = pend;
        for (int b = 0; b < nb; b++, cur += share) {
          int mr = bi[b + 1] - bi[b];
          micro_out(tab, tab2, mr, kc, ap + (size_t)bi[b] * kpad(kc), bp, es, C, ldc, bi[b], j0,
                    nc, alpha, beta, k0 == 0, cur < lim ? cur : NULL, bias, em, M, N);
        }
      }
    }
    return;
  }
  const int pnc = NC / NR;
  for (int q0 = p0; q0 < p1; q0 += pnc) {
    int q1 = q0 + pnc < p1 ? q0 + pnc : p1;
    for (int kb = 0, nkb = kblocks(K); kb < nkb; kb++) {
      int k0 = kstart(K, kb), kc = kstart(K, kb + 1) - k0;
      for (int mb = 0, nmb = mblocks(M); mb < nmb; mb++) {
        int m0 = mstart(M, mb), mc = mstart(M, mb + 1) - m0;
        int bi[MBI], nb = micro_split(mc, bi);
        if (!apa) {
          /* No A packed ahead (no buffer for it): each micro-block is packed as it is reached,
           * into MRMAX x KC floats (36 KB of stack, not a whole row block), and runs through
           * the chunk's panels: the same K blocks and micro-blocks, the same results. */
          _Alignas(64) float local[MRMAX * (KC + 3)];
          for (int b = 0; b < nb; b++) {
            int mr = bi[b + 1] - bi[b];
            pack_a_block(A, lda, 0, m0 + bi[b], mr, k0, kc, local, isa == PK_AVX512);
            for (int p = q0; p < q1; p++) {
              int j0 = p * NR, nc = N - j0 < NR ? N - j0 : NR;
              const unsigned char *bp = Pb + ((size_t)p * NR * K + (size_t)k0 * NR) * es;
              micro_out(tab, tab2, mr, kc, local, bp, es, C, ldc, m0 + bi[b], j0, nc, alpha,
                        beta, k0 == 0, NULL, bias, em, M, N);
            }
          }
          continue;
        }
        const float *ap = apa + koff(K, kb, M) + (size_t)m0 * kpad(kc);
        for (int p = q0; p < q1; p++) {
          int j0 = p * NR, nc = N - j0 < NR ? N - j0 : NR;
          const unsigned char *bp = Pb + ((size_t)p * NR * K + (size_t)k0 * NR) * es;
          size_t share = pf_bytes(kc) * calls;
          /* the cursor: the next panel's lines of this K block */
          const unsigned char *cur = bp + (size_t)NR * K * es, *lim = cur + (size_t)NR * kc * es;
          if (p + 1 >= q1) lim = cur;
          for (int b = 0; b < nb; b++, cur += share) {
            int mr = bi[b + 1] - bi[b];
            micro_out(tab, tab2, mr, kc, ap + (size_t)bi[b] * kpad(kc), bp, es, C, ldc,
                      m0 + bi[b], j0, nc, alpha, beta, k0 == 0, cur < lim ? cur : NULL, bias, em,
                      M, N);
          }
        }
      }
    }
  }
}
void ct_gemm_packed_isa(int isa, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *apa, const void *P, int kind, float beta, const float *bias,
                        float *C, int ldc, int p0, int p1) {
  gemm_core(isa, M, N, K, alpha, A, lda, apa, P, kind, beta, bias, C, ldc, p0, p1, NULL);
}

void ct_gemm_packed_emit(int isa, int M, int N, int K, const float *A, int lda, const float *apa,
                         const void *P, int kind, const float *bias, ct_tile_fn fn, void *ctx,
                         float *out_apa, int p0, int p1) {
  _Alignas(64) float tile[MRMAX * NR] = {0}; /* columns past a last panel's nc: defined */
  emit_to em = {out_apa, fn, ctx, isa == PK_AVX512, tile};
  gemm_core(isa, M, N, K, 1.0f, A, lda, apa, P, kind, 0.0f, bias, NULL, 0, p0, p1, &em);
}
#else
int ct_gemm_packed_emit_ok(int N, int K) {
  (void)N; (void)K;
  return 0;
}
void ct_gemm_packed_emit(int isa, int M, int N, int K, const float *A, int lda, const float *apa,
                         const void *P, int kind, const float *bias, ct_tile_fn fn, void *ctx,
                         float *out_apa, int p0, int p1) {
  (void)isa; (void)M; (void)N; (void)K; (void)A; (void)lda; (void)apa; (void)P; (void)kind;
  (void)bias; (void)fn; (void)ctx; (void)out_apa; (void)p0; (void)p1;
}
void ct_gemm_packed(int M, int N, int K, float alpha, const float *A, int lda, const void *P,
                    int kind, float beta, float *C, int ldc, int p0, int p1) {
  (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)lda; (void)P; (void)kind; (void)beta; (void)C;
  (void)ldc; (void)p0; (void)p1; /* never called: ct_gemm_packed_available() is 0 */
}
void ct_gemm_packed_pa(int M, int N, int K, float alpha, const float *A, int lda,
                       const float *apa, const void *P, int kind, float beta, const float *bias,
                       float *C, int ldc, int p0, int p1) {
  (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)lda; (void)apa; (void)P; (void)kind;
  (void)beta; (void)bias; (void)C; (void)ldc; (void)p0; (void)p1;
}
void ct_gemm_packed_isa(int isa, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *apa, const void *P, int kind, float beta, const float *bias,
                        float *C, int ldc, int p0, int p1) {
  (void)isa; (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)lda; (void)apa; (void)P;
  (void)kind; (void)beta; (void)bias; (void)C; (void)ldc; (void)p0; (void)p1;
}
size_t ct_pack_a_floats(int M, int K) { return (size_t)M * (size_t)K; }
void ct_pack_a(int isa, int M, int K, const float *A, int lda, int ta, float *apa, int b0, int b1) {
  (void)isa; (void)M; (void)K; (void)A; (void)lda; (void)ta; (void)apa; (void)b0; (void)b1;
}
int ct_pack_a_blocks(int M, int K) { return M > 0 && K > 0; }
#endif
