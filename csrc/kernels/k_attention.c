/* k_attention.c - multi-head scaled dot-product attention (CLIPAttention,
 * https://github.com/huggingface/transformers/blob/main/src/transformers/models/clip/modeling_clip.py;
 * torch.nn.functional.scaled_dot_product_attention without dropout):
 * per batch b and head h, S = q_h k_h^T / sqrt(hs) [T,T]; with causal, S[i,j]
 * for j > i is masked; P = softmax(S) over j; out_h = P v_h.
 * q, k, v, out: [B, T, C], C = NH * hs. probs: [T,T] scratch, or [B,NH,T,T]
 * when save_probs (kept for backward).
 * Backward per (b, h), G = dout_h [T,hs], P the saved probs:
 *   dv_h += P^T G
 *   dP    = G v_h^T                          ([T,T] scratch)
 *   dS    = P * (dP - rowsum(P * dP))        (softmax backward; masked P = 0 gives dS = 0)
 *   dq_h += dS k_h / sqrt(hs),  dk_h += dS^T q_h / sqrt(hs)
 * all through ct_sgemm on the strided head slices (row stride C).
 * The forward runs on this file's own tiles (att_tiles_slice) where the CPU has AVX-512 and
 * hs is a multiple of 16 (every CLIP tower), or AVX2 + FMA and hs a multiple of 8, else
 * through ct_sgemm.
 * dq, dk, dv: [B,T,C], any may be NULL (skipped). */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#include "blas.h"
#include "kernels.h"
#include "pool.h"
#include "simd.h"

#ifdef CT_SIMD_X86
/* softmax of r[0..m) in place (16 lanes: max, exp with ct_exp16, sum per lane then across) */
__attribute__((target("avx512f"))) static void softmax16(float *r, int m) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int j = 0; j < m; j += 16) {
    __mmask16 k = m - j >= 16 ? 0xffff : (__mmask16)((1u << (m - j)) - 1);
    mx = _mm512_mask_max_ps(mx, k, mx, _mm512_maskz_loadu_ps(k, r + j));
  }
  __m512 vmx = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), sum = _mm512_setzero_ps();
  for (int j = 0; j < m; j += 16) {
    __mmask16 k = m - j >= 16 ? 0xffff : (__mmask16)((1u << (m - j)) - 1);
    __m512 e = ct_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, r + j), vmx));
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
    _mm512_mask_storeu_ps(r + j, k, e);
  }
  __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
  for (int j = 0; j < m; j += 16) {
    __mmask16 k = m - j >= 16 ? 0xffff : (__mmask16)((1u << (m - j)) - 1);
    _mm512_mask_storeu_ps(r + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, r + j), inv));
  }
}

/* softmax16 with AVX2 + FMA (8 lanes, ct_exp8; whole vectors through plain loads and stores,
 * the tail through a padded copy whose padding is not summed) */
__attribute__((target("avx2,fma"))) static void softmax8(float *r, int m) {
  __m256 mx = _mm256_set1_ps(-INFINITY);
  int j = 0;
  for (; j + 8 <= m; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(r + j));
  float t[8];
  _mm256_storeu_ps(t, mx);
  float x = t[0];
  for (int q = 1; q < 8; q++) x = t[q] > x ? t[q] : x;
  for (int q = j; q < m; q++) x = r[q] > x ? r[q] : x;
  __m256 vmx = _mm256_set1_ps(x), sum = _mm256_setzero_ps();
  for (j = 0; j + 8 <= m; j += 8) {
    __m256 e = ct_exp8(_mm256_sub_ps(_mm256_loadu_ps(r + j), vmx));
    sum = _mm256_add_ps(sum, e);
    _mm256_storeu_ps(r + j, e);
  }
  float tail = 0.0f;
  if (j < m) {
    for (int q = 0; q < 8; q++) t[q] = j + q < m ? r[j + q] : x;
    _mm256_storeu_ps(t, ct_exp8(_mm256_sub_ps(_mm256_loadu_ps(t), vmx)));
    for (int q = j; q < m; q++) {
      r[q] = t[q - j];
      tail += t[q - j];
    }
  }
  _mm256_storeu_ps(t, sum);
  float s = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  __m256 vinv = _mm256_set1_ps(1.0f / (s + tail));
  for (j = 0; j + 8 <= m; j += 8) _mm256_storeu_ps(r + j, _mm256_mul_ps(_mm256_loadu_ps(r + j), vinv));
  float inv = 1.0f / (s + tail);
  for (; j < m; j++) r[j] *= inv;
}
#elif defined(CT_SIMD_NEON)
/* softmax of r[0..m) in place (4 lanes, as softmax16: max, exp with ct_exp4, sum per lane then
 * across; the tail through a padded copy whose padding is not summed) */
static void softmax4(float *r, int m) {
  float32x4_t mx = vdupq_n_f32(-INFINITY);
  int j = 0;
  for (; j + 4 <= m; j += 4) mx = vmaxq_f32(mx, vld1q_f32(r + j));
  float x = vmaxvq_f32(mx);
  for (int t = j; t < m; t++) x = r[t] > x ? r[t] : x;
  float32x4_t vmx = vdupq_n_f32(x), sum = vdupq_n_f32(0.0f);
  for (j = 0; j + 4 <= m; j += 4) {
    float32x4_t e = ct_exp4(vsubq_f32(vld1q_f32(r + j), vmx));
    sum = vaddq_f32(sum, e);
    vst1q_f32(r + j, e);
  }
  float tail = 0.0f;
  if (j < m) {
    float t[4] = {x, x, x, x};
    for (int q = j; q < m; q++) t[q - j] = r[q];
    vst1q_f32(t, ct_exp4(vsubq_f32(vld1q_f32(t), vmx)));
    for (int q = j; q < m; q++) { r[q] = t[q - j]; tail += t[q - j]; }
  }
  float inv = 1.0f / (vaddvq_f32(sum) + tail);
  float32x4_t vinv = vdupq_n_f32(inv);
  for (j = 0; j + 4 <= m; j += 4) vst1q_f32(r + j, vmulq_f32(vld1q_f32(r + j), vinv));
  for (; j < m; j++) r[j] *= inv;
}
#endif

#ifdef CT_SIMD_X86
/* The forward's own tiles (att_tiles_slice, below), AVX-512: up to 6 rows x 64 columns, 24 zmm
 * accumulators, one broadcast of a per row and 4 loads of b per step; with sm, the softmax of
 * each row on the registers (the scores of one column tile of keys). */
#define ATT_R 6 /* rows per tile */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void
att_tile(const int R, const int J, int kd, const float *a, int lda, const float *b, int ldb,
         float alpha, float *c, int ldc, int nc, int sm, int causal, int m0) {
  __m512 acc[ATT_R][4];
  _Pragma("GCC unroll 6") for (int r = 0; r < R; r++)
    _Pragma("GCC unroll 4") for (int j = 0; j < J; j++) acc[r][j] = _mm512_setzero_ps();
  for (int t = 0; t < kd; t++) {
    __m512 bv[4];
    _Pragma("GCC unroll 4") for (int j = 0; j < J; j++) bv[j] = _mm512_loadu_ps(b + (size_t)t * ldb + 16 * j);
    _Pragma("GCC unroll 6") for (int r = 0; r < R; r++) {
      __m512 x = _mm512_set1_ps(a[(size_t)r * lda + t]);
      _Pragma("GCC unroll 4") for (int j = 0; j < J; j++) acc[r][j] = _mm512_fmadd_ps(x, bv[j], acc[r][j]);
    }
  }
  __m512 va = _mm512_set1_ps(alpha);
  if (sm) {
    /* softmax of row r over its first m0 + r (causal) or nc keys, in registers: softmax16's
     * operations in its order (the same bits), the masked keys stored as 0 */
    _Pragma("GCC unroll 6") for (int r = 0; r < R; r++) {
      int mr = causal ? m0 + r : nc;
      __mmask16 k[4];
      __m512 mx = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
      _Pragma("GCC unroll 4") for (int j = 0; j < J; j++) {
        int left = mr - 16 * j;
        k[j] = left >= 16 ? 0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
        acc[r][j] = _mm512_mul_ps(acc[r][j], va);
        mx = _mm512_mask_max_ps(mx, k[j], mx, acc[r][j]);
      }
      __m512 vmx = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
      _Pragma("GCC unroll 4") for (int j = 0; j < J; j++) {
        acc[r][j] = _mm512_maskz_mov_ps(k[j], ct_exp16(_mm512_sub_ps(acc[r][j], vmx)));
        sum = _mm512_add_ps(sum, acc[r][j]);
      }
      __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
      _Pragma("GCC unroll 4") for (int j = 0; j < J; j++) acc[r][j] = _mm512_mul_ps(acc[r][j], inv);
    }
  }
  _Pragma("GCC unroll 6") for (int r = 0; r < R; r++)
    _Pragma("GCC unroll 4") for (int j = 0; j < J; j++) {
      int left = nc - 16 * j;
      __mmask16 m = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
      _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16 * j, m,
                            sm || alpha == 1.0f ? acc[r][j] : _mm512_mul_ps(acc[r][j], va));
    }
}

#define ATT_T(R, J)                                                                          \
  __attribute__((target("avx512f"))) static void att_t##R##_##J(                             \
      int kd, const float *a, int lda, const float *b, int ldb, float alpha, float *c, int ldc, \
      int nc, int sm, int causal, int m0) {                                                  \
    att_tile(R, J, kd, a, lda, b, ldb, alpha, c, ldc, nc, sm, causal, m0);                  \
  }
#define ATT_TS(R) ATT_T(R, 1) ATT_T(R, 2) ATT_T(R, 3) ATT_T(R, 4)
ATT_TS(1) ATT_TS(2) ATT_TS(3) ATT_TS(4) ATT_TS(5) ATT_TS(6)
#undef ATT_TS
#undef ATT_T
typedef void (*att_tile_fn)(int, const float *, int, const float *, int, float, float *, int, int,
                            int, int, int);
#define ATT_ROW(R) {att_t##R##_1, att_t##R##_2, att_t##R##_3, att_t##R##_4}
static const att_tile_fn att_tiles[ATT_R + 1][4] = {
    {NULL}, ATT_ROW(1), ATT_ROW(2), ATT_ROW(3), ATT_ROW(4), ATT_ROW(5), ATT_ROW(6)};
#undef ATT_ROW

/* c[r][0..nc) = alpha a[r] b over kd rows of b, for R <= 6 rows, in column tiles of 64 */
static void att_rows_tile(int R, int kd, const float *a, int lda, const float *b, int ldb,
                          float alpha, float *c, int ldc, int nc) {
  for (int c0 = 0; c0 < nc; c0 += 64) {
    int w = nc - c0 < 64 ? nc - c0 : 64;
    att_tiles[R][(w + 15) / 16 - 1](kd, a, lda, b + c0, ldb, alpha, c + c0, ldc, w, 0, 0, 0);
  }
}

/* kt[d][j] = k[j * C + d] for d < hs (a multiple of 16), j < nk; kt's keys nk .. nkp are 0
 * (nkp a multiple of 16): 16 x 16 blocks transposed in registers */
__attribute__((target("avx512f"))) static void att_kt16(float *kt, const float *k, int C, int hs,
                                                        int nk, int nkp) {
  for (int j0 = 0; j0 < nkp; j0 += 16)
    for (int d0 = 0; d0 < hs; d0 += 16) {
      __m512 r[16];
      _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++)
        r[i] = j0 + i < nk ? _mm512_loadu_ps(k + (size_t)(j0 + i) * C + d0) : _mm512_setzero_ps();
      ct_transpose16(r);
      _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++)
        _mm512_storeu_ps(kt + (size_t)(d0 + i) * nkp + j0, r[i]);
    }
}

/* the scores of R rows against keys 0 .. kd (kd <= 64: one column tile of kt, hs rows) and
 * their softmax on the tile's registers; m0: the first row's keys when causal */
static void att_scores_sm16(int R, int hs, int kd, const float *q, int C, const float *kt,
                            int nkp, float scale, float *p, int T, int causal, int m0) {
  att_tiles[R][(kd + 15) / 16 - 1](hs, q, C, kt, nkp, scale, p, T, kd, 1, causal, m0);
}
#endif

#ifdef CT_SIMD_X86
/* The same tiles with AVX2 + FMA: up to 6 rows x 16 columns (12 ymm accumulators, two loads
 * and a broadcast per step); the softmax by softmax8 per row, K through 8 x 8 transposes. */
__attribute__((target("avx2,fma"))) static inline __attribute__((always_inline)) void
att_tile8(const int R, const int J, int kd, const float *a, int lda, const float *b, int ldb,
          float alpha, float *c, int ldc, int nc) {
  __m256 acc[ATT_R][2];
  _Pragma("GCC unroll 6") for (int r = 0; r < R; r++)
    _Pragma("GCC unroll 2") for (int j = 0; j < J; j++) acc[r][j] = _mm256_setzero_ps();
  for (int t = 0; t < kd; t++) {
    __m256 bv[2];
    _Pragma("GCC unroll 2") for (int j = 0; j < J; j++) bv[j] = _mm256_loadu_ps(b + (size_t)t * ldb + 8 * j);
    _Pragma("GCC unroll 6") for (int r = 0; r < R; r++) {
      __m256 x = _mm256_broadcast_ss(a + (size_t)r * lda + t);
      _Pragma("GCC unroll 2") for (int j = 0; j < J; j++) acc[r][j] = _mm256_fmadd_ps(x, bv[j], acc[r][j]);
    }
  }
  __m256 va = _mm256_set1_ps(alpha);
  _Pragma("GCC unroll 6") for (int r = 0; r < R; r++)
    _Pragma("GCC unroll 2") for (int j = 0; j < J; j++) {
      __m256 v = alpha == 1.0f ? acc[r][j] : _mm256_mul_ps(acc[r][j], va);
      float *d = c + (size_t)r * ldc + 8 * j;
      int left = nc - 8 * j;
      if (left >= 8) {
        _mm256_storeu_ps(d, v);
      } else if (left > 0) { /* the column edge through a copy (no masked store: slow on AMD) */
        float t8[8];
        _mm256_storeu_ps(t8, v);
        for (int q = 0; q < left; q++) d[q] = t8[q];
      }
    }
}

#define ATT_T8(R, J)                                                                         \
  __attribute__((target("avx2,fma"))) static void att8_t##R##_##J(                            \
      int kd, const float *a, int lda, const float *b, int ldb, float alpha, float *c, int ldc, \
      int nc) {                                                                              \
    att_tile8(R, J, kd, a, lda, b, ldb, alpha, c, ldc, nc);                                  \
  }
#define ATT_TS8(R) ATT_T8(R, 1) ATT_T8(R, 2)
ATT_TS8(1) ATT_TS8(2) ATT_TS8(3) ATT_TS8(4) ATT_TS8(5) ATT_TS8(6)
#undef ATT_TS8
#undef ATT_T8
typedef void (*att_tile8_fn)(int, const float *, int, const float *, int, float, float *, int, int);
static const att_tile8_fn att_tiles8[ATT_R + 1][2] = {
    {NULL}, {att8_t1_1, att8_t1_2}, {att8_t2_1, att8_t2_2}, {att8_t3_1, att8_t3_2},
    {att8_t4_1, att8_t4_2}, {att8_t5_1, att8_t5_2}, {att8_t6_1, att8_t6_2}};

/* c[r][0..nc) = alpha a[r] b over kd rows of b, for R <= 6 rows, in column tiles of 16 */
static void att_rows_tile8(int R, int kd, const float *a, int lda, const float *b, int ldb,
                           float alpha, float *c, int ldc, int nc) {
  for (int c0 = 0; c0 < nc; c0 += 16) {
    int w = nc - c0 < 16 ? nc - c0 : 16;
    att_tiles8[R][(w + 7) / 8 - 1](kd, a, lda, b + c0, ldb, alpha, c + c0, ldc, w);
  }
}

/* att_kt16 with AVX2: 8 x 8 blocks transposed in registers */
__attribute__((target("avx2"))) static void att_kt8(float *kt, const float *k, int C, int hs,
                                                    int nk, int nkp) {
  for (int j0 = 0; j0 < nkp; j0 += 8)
    for (int d0 = 0; d0 < hs; d0 += 8) {
      __m256 r[8];
      _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++)
        r[i] = j0 + i < nk ? _mm256_loadu_ps(k + (size_t)(j0 + i) * C + d0) : _mm256_setzero_ps();
      ct_transpose8(r);
      _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) _mm256_storeu_ps(kt + (size_t)(d0 + i) * nkp + j0, r[i]);
    }
}

/* One instruction set's pieces of the forward: K transposed, R-row tiles of products, the
 * softmax of a row, and (NULL: none) the scores with their softmax on the registers of one
 * column tile of up to 64 keys */
typedef struct att_isa {
  void (*kt)(float *kt, const float *k, int C, int hs, int nk, int nkp);
  void (*tile)(int R, int kd, const float *a, int lda, const float *b, int ldb, float alpha,
               float *c, int ldc, int nc);
  void (*softmax)(float *r, int m);
  void (*scores_sm)(int R, int hs, int kd, const float *q, int C, const float *kt, int nkp,
                    float scale, float *p, int T, int causal, int m0);
} att_isa;
static const att_isa att_avx512 = {att_kt16, att_rows_tile, softmax16, att_scores_sm16};
static const att_isa att_avx2 = {att_kt8, att_rows_tile8, softmax8, NULL};

/* Rows i0 .. i1 of one (b, h) slice, without a BLAS call (at T = 50 or 77 a BLAS spends more
 * time packing these operands than multiplying them): kt = k_h^T, keys zero-padded to a
 * multiple of 16 ([hs][nkp] floats, built here); scores p[i] = scale q_i kt in tiles of up to
 * 6 rows (one broadcast of q per row and a load of kt per d and vector), the softmax per row,
 * the masked keys 0; out_i = p[i] v_h in 6-row tiles. With causal a tile reads only the keys
 * up to its last row. Each score and output is one sequential sum over d (over j), rounded
 * once per FMA, on either instruction set; the softmax adds in its own lanes. p: the scores
 * of rows i0 .. i1, T apart. */
static void att_tiles_slice(const att_isa *x, const float *q, const float *k, const float *v,
                            float *out, float *p, float *kt, int T, int C, int hs, int i0,
                            int i1, int causal) {
  float scale = 1.0f / sqrtf((float)hs);
  int nk = causal ? i1 : T, nkp = (nk + 15) & ~15;
  x->kt(kt, k, C, hs, nk, nkp);
  int n = i1 - i0, nt = (n + ATT_R - 1) / ATT_R;
  for (int t = 0; t < nt; t++) {
    int r0 = (int)((long)n * t / nt), r1 = (int)((long)n * (t + 1) / nt), R = r1 - r0;
    int kd = causal ? i0 + r1 : T; /* the keys this tile's rows read */
    float *pr = p + (size_t)r0 * T;
    const float *qr = q + (size_t)(i0 + r0) * C;
    if (x->scores_sm && kd <= 64) { /* one column tile: the softmax on its registers */
      x->scores_sm(R, hs, kd, qr, C, kt, nkp, scale, pr, T, causal, i0 + r0 + 1);
      for (int r = 0; r < R; r++)
        for (int j = kd; j < T; j++) pr[(size_t)r * T + j] = 0.0f;
    } else {
      x->tile(R, hs, qr, C, kt, nkp, scale, pr, T, kd);
      for (int r = 0; r < R; r++) {
        float *row = pr + (size_t)r * T;
        int m = causal ? i0 + r0 + r + 1 : T;
        x->softmax(row, m);
        for (int j = m; j < T; j++) row[j] = 0.0f;
      }
    }
    x->tile(R, kd, pr, T, v, C, 1.0f, out + (size_t)(i0 + r0) * C, C, hs);
  }
}
#endif

/* The forward is row-separable: row i of the scores, its softmax and row i of the output
 * need only q_i. With a pool (pool.h) each thread takes a contiguous range of rows of every
 * (b, h) and uses only those rows of probs, so one [T,T] scratch serves all threads; or, on
 * the own tiles, whole (b, h) slices with a [T,T] scratch each (att_fast). */
typedef struct {
  float *out, *probs;
  const float *q, *k, *v;
  int B, T, C, NH, causal, save_probs;
  int by_slices; /* att_fast: threads take whole (b, h) slices, not rows of each */
  const struct att_isa *isa; /* att_fast's instruction set */
  float *scr;    /* att_fast's scratch, scr_n floats per thread (NULL: the BLAS route) */
  size_t scr_n;
} att_job;

#ifdef CT_SIMD_X86
static void att_fast(const att_job *a, int tid, int nt) {
  int T = a->T, C = a->C, hs = C / a->NH, nkp = (T + 15) & ~15;
  float *kt = a->scr + (size_t)tid * a->scr_n, *sc = kt + (size_t)hs * nkp;
  if (a->by_slices) {
    int P = a->B * a->NH, s0 = (int)((long)P * tid / nt), s1 = (int)((long)P * (tid + 1) / nt);
    for (int s = s0; s < s1; s++) {
      size_t base = (size_t)(s / a->NH) * T * C + (size_t)(s % a->NH) * hs;
      float *p = a->save_probs ? a->probs + (size_t)s * T * T : sc;
      att_tiles_slice(a->isa, a->q + base, a->k + base, a->v + base, a->out + base, p, kt, T, C,
                      hs, 0, T, a->causal);
    }
    return;
  }
  int i0 = (int)((long)T * tid / nt), i1 = (int)((long)T * (tid + 1) / nt);
  if (i1 <= i0) return;
  for (int b = 0; b < a->B; b++)
    for (int h = 0; h < a->NH; h++) {
      size_t base = (size_t)b * T * C + (size_t)h * hs;
      float *p = (a->save_probs ? a->probs + ((size_t)b * a->NH + h) * T * T : a->probs) +
                 (size_t)i0 * T;
      att_tiles_slice(a->isa, a->q + base, a->k + base, a->v + base, a->out + base, p, kt, T, C,
                      hs, i0, i1, a->causal);
    }
}
#endif

static void att_rows(void *ctx, int tid, int nt) {
  const att_job *a = ctx;
#ifdef CT_SIMD_X86
  if (a->scr) {
    att_fast(a, tid, nt);
    return;
  }
#endif
  int T = a->T, C = a->C, hs = C / a->NH;
  int i0 = (int)((long)T * tid / nt), i1 = (int)((long)T * (tid + 1) / nt), n = i1 - i0;
  if (n <= 0) return;
  float scale = 1.0f / sqrtf((float)hs);
#ifdef CT_SIMD_X86
  int vec = ct_have_avx512(), vec2 = !vec && ct_have_avx2();
#elif defined(CT_SIMD_NEON)
  int vec = ct_have_neon();
#endif
  for (int b = 0; b < a->B; b++)
    for (int h = 0; h < a->NH; h++) {
      size_t base = (size_t)b * T * C + (size_t)h * hs, rows = base + (size_t)i0 * C;
      float *p = (a->save_probs ? a->probs + ((size_t)b * a->NH + h) * T * T : a->probs) +
                 (size_t)i0 * T;
      /* causal: row i needs keys 0..i only; the scores of later keys are never read */
      int nk = a->causal ? i1 : T;
      ct_sgemm(0, 1, n, nk, hs, scale, a->q + rows, C, a->k + base, C, 0.0f, p, T);
      for (int i = 0; i < n; i++) {
        float *r = p + (size_t)i * T;
        int m = a->causal ? i0 + i + 1 : T;
#ifdef CT_SIMD_X86
        if (vec || vec2) {
          (vec ? softmax16 : softmax8)(r, m);
          for (int j = m; j < T; j++) r[j] = 0.0f;
          continue;
        }
#elif defined(CT_SIMD_NEON)
        if (vec) {
          softmax4(r, m);
          for (int j = m; j < T; j++) r[j] = 0.0f;
          continue;
        }
#endif
        float mx = r[0];
        for (int j = 1; j < m; j++) if (r[j] > mx) mx = r[j];
        float sum = 0;
        for (int j = 0; j < m; j++) {
          r[j] = expf(r[j] - mx);
          sum += r[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < m; j++) r[j] *= inv;
        for (int j = m; j < T; j++) r[j] = 0.0f;
      }
      ct_sgemm(0, 0, n, hs, nk, 1.0f, p, T, a->v + base, C, 0.0f, a->out + rows, C);
    }
}

void attention_forward(float *out, float *probs, const float *q, const float *k,
                       const float *v, int B, int T, int C, int NH, int causal,
                       int save_probs) {
  att_job a = {out, probs, q, k, v, B, T, C, NH, causal, save_probs, 0, NULL, NULL, 0};
  int pooled = ct_pool_threads() > 1 && T >= 8, nt = pooled ? ct_pool_size(ct_pool_current()) : 1;
#ifdef CT_SIMD_X86
  int hs = C / NH, P = B * NH;
  if (ct_have_avx512()) a.isa = hs % 16 == 0 ? &att_avx512 : NULL;
  else if (ct_have_avx2()) a.isa = hs % 8 == 0 ? &att_avx2 : NULL;
  if (T > 0 && a.isa) {
    /* whole slices per thread where they split evenly (or are many) and their score rows
     * are small; else rows of every slice, as the BLAS route */
    a.by_slices = nt > 1 && T <= 256 && (P % nt == 0 || P >= 8 * nt);
    a.scr_n = (size_t)hs * ((T + 15) & ~15) + (a.by_slices && !save_probs ? (size_t)T * T : 0);
    a.scr_n = (a.scr_n + 15) & ~(size_t)15;
    a.scr = malloc(sizeof(float) * a.scr_n * nt); /* NULL: the BLAS route below */
  }
#endif
  if (pooled)
    ct_pool_run(ct_pool_current(), att_rows, &a);
  else
    att_rows(&a, 0, 1);
  free(a.scr);
}

/* q_i . k_j / sqrt(hs) in double, the naive twins' score; qi, kj: element offsets of the two
 * rows; f64: double arrays, else float. */
static double att_score(const void *q, size_t qi, const void *k, size_t kj, int hs, int f64) {
  double d = 0;
  for (int x = 0; x < hs; x++) d += ct_twin_ld(q, f64, qi + x) * ct_twin_ld(k, f64, kj + x);
  return d / sqrt((double)hs);
}

/* Row i of one (b, h) slice's softmax, the naive way, for all three twins: over the keys
 * j < n, e[j] = exp(s_j - m), s_j = att_score(q_i, k_j), m = max_j s_j; returns
 * sum_j e[j] and sets *mx = m (mx may be NULL). qi, k0: element offsets of q_i in q and of
 * k_0 in k (rows C apart); f64: double arrays, else float. */
static double att_row_naive(double *e, double *mx, const void *q, size_t qi, const void *k,
                            size_t k0, int C, int hs, int n, int f64) {
  double m = -INFINITY, sum = 0;
  for (int j = 0; j < n; j++) {
    e[j] = att_score(q, qi, k, k0 + (size_t)j * C, hs, f64);
    if (e[j] > m) m = e[j];
  }
  for (int j = 0; j < n; j++) sum += (e[j] = exp(e[j] - m));
  if (mx) *mx = m;
  return sum;
}

/* The naive forward, once for both twins: float (f64 = 0) or double (f64 = 1) arrays;
 * T <= 1024 (larger T: does nothing). */
static void attention_naive(void *out, const void *q, const void *k, const void *v, int B,
                            int T, int C, int NH, int causal, int f64) {
  int hs = C / NH;
  double e[1024];
  if (T > 1024) return;
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++)
      for (int i = 0; i < T; i++) {
        size_t base = (size_t)b * T * C + (size_t)h * hs, qi = base + (size_t)i * C;
        int n = causal ? i + 1 : T;
        double sum = att_row_naive(e, NULL, q, qi, k, base, C, hs, n, f64);
        for (int x = 0; x < hs; x++) {
          double acc = 0;
          for (int j = 0; j < n; j++) acc += e[j] * ct_twin_ld(v, f64, base + (size_t)j * C + x);
          ct_twin_st(out, f64, qi + x, acc / sum);
        }
      }
}

void attention_forward_ref(float *out, const float *q, const float *k,
                           const float *v, int B, int T, int C, int NH, int causal) {
  attention_naive(out, q, k, v, B, T, C, NH, causal, 0);
}

/* Double twin of the forward, for the finite-difference gradient checks; T <= 1024. */
void attention_forward_f64(double *out, const double *q, const double *k,
                           const double *v, int B, int T, int C, int NH, int causal) {
  attention_naive(out, q, k, v, B, T, C, NH, causal, 1);
}

/* dq, dk, dv may be NULL: frozen / not needed -> skipped (no work). All ACCUMULATE (+=).
 * The (b, h) slices are independent: with a pool they are split over its threads in one run,
 * each thread running its slices' GEMMs on its own (nested ct_sgemm calls run in the calling
 * thread) with its own dS scratch. Each slice gets the same calls either way; only OpenBLAS
 * may round a slice's GEMM differently once it is no longer cut into the pool's column
 * slices. Before, each of a slice's four small GEMMs was one pool run (ViT-B/32 at batch 16:
 * 192 slices a layer) and the softmax backward between them ran in the caller alone. */
typedef struct {
  float *dq, *dk, *dv, *scr; /* scr: T x T floats per thread */
  const float *dout, *q, *k, *v, *probs;
  int B, T, C, NH;
  float scale; /* 1 / sqrt(head size) */
} attb_job;

static void attb_slice(const attb_job *a, int s, float *ds) {
  int T = a->T, C = a->C, hs = C / a->NH, b = s / a->NH, h = s % a->NH;
  float scale = a->scale;
  size_t base = (size_t)b * T * C + (size_t)h * hs;
  const float *p = a->probs + (size_t)s * T * T;
  if (a->dv) ct_sgemm(1, 0, T, hs, T, 1.0f, p, T, a->dout + base, C, 1.0f, a->dv + base, C);
  if (!a->dq && !a->dk) return;
  ct_sgemm(0, 1, T, T, hs, 1.0f, a->dout + base, C, a->v + base, C, 0.0f, ds, T);
  for (int i = 0; i < T; i++) {
    const float *pi = p + (size_t)i * T;
    float *di = ds + (size_t)i * T;
    double dot = 0;
    for (int j = 0; j < T; j++) dot += (double)pi[j] * di[j];
    float d = (float)dot;
    for (int j = 0; j < T; j++) di[j] = pi[j] * (di[j] - d);
  }
  if (a->dq) ct_sgemm(0, 0, T, hs, T, scale, ds, T, a->k + base, C, 1.0f, a->dq + base, C);
  if (a->dk) ct_sgemm(1, 0, T, hs, T, scale, ds, T, a->q + base, C, 1.0f, a->dk + base, C);
}

static void attb_part(void *ctx, int tid, int nt) {
  const attb_job *a = ctx;
  int P = a->B * a->NH;
  float *ds = a->scr + (size_t)tid * a->T * a->T;
  for (int s = (int)((long)P * tid / nt), s1 = (int)((long)P * (tid + 1) / nt); s < s1; s++)
    attb_slice(a, s, ds);
}

void attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                        const float *q, const float *k, const float *v, const float *probs,
                        int B, int T, int C, int NH, int causal) {
  (void)causal; /* the saved probs are already masked: dS is 0 where P is */
  if (!dq && !dk && !dv) return;
  attb_job a = {dq, dk, dv, scratch, dout, q, k, v, probs, B, T, C, NH,
                1.0f / sqrtf((float)(C / NH))};
  ct_pool *p = ct_pool_current();
  int nt = ct_pool_size(p);
  /* the threads' dS scratch in the pool's kept buffer (NULL: no pool, a nested call, or out
   * of memory; then in this thread alone, on the caller's scratch) */
  float *scr = nt > 1 && B * NH >= nt ? ct_pool_scratch(p, sizeof(float) * (size_t)T * T * nt) : NULL;
  if (scr) {
    ct_blas_single_thread(); /* the pool's threads are the only working ones */
    a.scr = scr;
    ct_pool_run(p, attb_part, &a);
  } else {
    attb_part(&a, 0, 1);
  }
}

static double dot_f(const float *a, const float *b, int n) {
  double d = 0;
  for (int x = 0; x < n; x++) d += (double)a[x] * b[x];
  return d;
}

/* one (b, h) slice for the naive twin: rows are C apart */
typedef struct {
  const float *q, *k, *v, *g;
  int C, hs, causal;
  double scale;
  const double *mx, *den, *D; /* per row: max score, softmax denominator, sum_j P dP */
} att_slice;

/* P_ij, recomputed as att_row_naive computes the row's scores */
static double att_prob(const att_slice *a, int i, int j) {
  if (a->causal && j > i) return 0.0;
  double s = att_score(a->q, (size_t)i * a->C, a->k, (size_t)j * a->C, a->hs, 0);
  return exp(s - a->mx[i]) / a->den[i];
}

static double att_dscore(const att_slice *a, int i, int j) {
  if (a->causal && j > i) return 0.0;
  double dp = dot_f(a->g + (size_t)i * a->C, a->v + (size_t)j * a->C, a->hs);
  return att_prob(a, i, j) * (dp - a->D[i]);
}

/* o[x] += scale * sum_j w[j] src[j * C + x] for x < hs, j < n, the sum in double */
static void att_acc_naive(float *o, const double *w, const float *src, int n, int C, int hs,
                          double scale) {
  for (int x = 0; x < hs; x++) {
    double acc = 0;
    for (int j = 0; j < n; j++) acc += w[j] * src[(size_t)j * C + x];
    o[x] = (float)(o[x] + scale * acc);
  }
}

/* Naive twin: recomputes the probabilities from q and k in double, plain
 * loops, every sum in double; T <= 1024 (larger T: does nothing). */
void attention_backward_ref(float *dq, float *dk, float *dv, const float *dout,
                            const float *q, const float *k, const float *v,
                            int B, int T, int C, int NH, int causal) {
  int hs = C / NH;
  double mx[1024], den[1024], D[1024], row[1024];
  if (T > 1024) return;
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++) {
      size_t base = (size_t)b * T * C + (size_t)h * hs;
      att_slice a = {q + base, k + base, v + base, dout + base, C, hs, causal,
                     1.0 / sqrt((double)hs), mx, den, D};
      /* softmax stats per row, and D_i = sum_j P_ij dP_ij */
      for (int i = 0; i < T; i++) {
        int n = causal ? i + 1 : T;
        double d = 0;
        den[i] = att_row_naive(row, &mx[i], a.q, (size_t)i * C, a.k, 0, C, hs, n, 0);
        for (int j = 0; j < n; j++) d += row[j] / den[i] * dot_f(a.g + (size_t)i * C, a.v + (size_t)j * C, hs);
        D[i] = d;
      }
      if (dq) /* dq_i += scale sum_j dS_ij k_j */
        for (int i = 0; i < T; i++) {
          for (int j = 0; j < T; j++) row[j] = att_dscore(&a, i, j);
          att_acc_naive(dq + base + (size_t)i * C, row, a.k, T, C, hs, a.scale);
        }
      if (dk) /* dk_j += scale sum_i dS_ij q_i */
        for (int j = 0; j < T; j++) {
          for (int i = 0; i < T; i++) row[i] = att_dscore(&a, i, j);
          att_acc_naive(dk + base + (size_t)j * C, row, a.q, T, C, hs, a.scale);
        }
      if (dv) /* dv_j += sum_i P_ij dout_i */
        for (int j = 0; j < T; j++) {
          for (int i = 0; i < T; i++) row[i] = att_prob(&a, i, j);
          att_acc_naive(dv + base + (size_t)j * C, row, a.g, T, C, hs, 1.0);
        }
    }
}
