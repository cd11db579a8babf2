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
 * all through ct_sgemm on the strided head slices (row stride C), as the forward.
 * dq, dk, dv: [B,T,C], any may be NULL (skipped). */
#include <math.h>
#include <stddef.h>

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

/* The forward is row-separable: row i of the scores, its softmax and row i of the output
 * need only q_i. With a pool (pool.h) each thread takes a contiguous range of rows of every
 * (b, h) and uses only those rows of probs, so one [T,T] scratch serves all threads. */
typedef struct {
  float *out, *probs;
  const float *q, *k, *v;
  int B, T, C, NH, causal, save_probs;
} att_job;

static void att_rows(void *ctx, int tid, int nt) {
  const att_job *a = ctx;
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
  att_job a = {out, probs, q, k, v, B, T, C, NH, causal, save_probs};
  if (ct_pool_threads() > 1 && T >= 8)
    ct_pool_run(ct_pool_current(), att_rows, &a);
  else
    att_rows(&a, 0, 1);
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

/* dq, dk, dv may be NULL: frozen / not needed -> skipped (no work). All ACCUMULATE (+=). */
void attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                        const float *q, const float *k, const float *v, const float *probs,
                        int B, int T, int C, int NH, int causal) {
  (void)causal; /* the saved probs are already masked: dS is 0 where P is */
  int hs = C / NH;
  float scale = 1.0f / sqrtf((float)hs);
  if (!dq && !dk && !dv) return;
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++) {
      size_t base = (size_t)b * T * C + (size_t)h * hs;
      const float *p = probs + ((size_t)b * NH + h) * T * T;
      if (dv) ct_sgemm(1, 0, T, hs, T, 1.0f, p, T, dout + base, C, 1.0f, dv + base, C);
      if (!dq && !dk) continue;
      float *ds = scratch;
      ct_sgemm(0, 1, T, T, hs, 1.0f, dout + base, C, v + base, C, 0.0f, ds, T);
      for (int i = 0; i < T; i++) {
        const float *pi = p + (size_t)i * T;
        float *di = ds + (size_t)i * T;
        double dot = 0;
        for (int j = 0; j < T; j++) dot += (double)pi[j] * di[j];
        float d = (float)dot;
        for (int j = 0; j < T; j++) di[j] = pi[j] * (di[j] - d);
      }
      if (dq) ct_sgemm(0, 0, T, hs, T, scale, ds, T, k + base, C, 1.0f, dq + base, C);
      if (dk) ct_sgemm(1, 0, T, hs, T, scale, ds, T, q + base, C, 1.0f, dk + base, C);
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
