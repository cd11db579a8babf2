/* k_attention.c - multi-head scaled dot-product attention (CLIPAttention):
 * per batch b and head h, S = q_h k_h^T / sqrt(hs) [T,T]; with causal, S[i,j]
 * for j > i is masked; P = softmax(S) over j; out_h = P v_h.
 * q, k, v, out: [B, T, C], C = NH * hs. probs: [T,T] scratch, or [B,NH,T,T]
 * when save_probs (kept for backward). */
#include <math.h>
#include <stddef.h>

#include "blas.h"
#include "kernels.h"

static void softmax_rows(float *p, int T, int causal) {
  for (int i = 0; i < T; i++) {
    float *r = p + (size_t)i * T;
    int n = causal ? i + 1 : T;
    float m = r[0];
    for (int j = 1; j < n; j++) if (r[j] > m) m = r[j];
    float s = 0;
    for (int j = 0; j < n; j++) {
      r[j] = expf(r[j] - m);
      s += r[j];
    }
    float inv = 1.0f / s;
    for (int j = 0; j < n; j++) r[j] *= inv;
    for (int j = n; j < T; j++) r[j] = 0.0f;
  }
}

void attention_forward(float *out, float *probs, const float *q, const float *k,
                       const float *v, int B, int T, int C, int NH, int causal,
                       int save_probs) {
  int hs = C / NH;
  float scale = 1.0f / sqrtf((float)hs);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++) {
      size_t base = (size_t)b * T * C + (size_t)h * hs;
      float *p = save_probs ? probs + ((size_t)b * NH + h) * T * T : probs;
      ct_sgemm(0, 1, T, T, hs, scale, q + base, C, k + base, C, 0.0f, p, T);
      softmax_rows(p, T, causal);
      ct_sgemm(0, 0, T, hs, T, 1.0f, p, T, v + base, C, 0.0f, out + base, C);
    }
}

void attention_forward_ref(float *out, const float *q, const float *k,
                           const float *v, int B, int T, int C, int NH, int causal) {
  int hs = C / NH;
  double s[1024];
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++)
      for (int i = 0; i < T; i++) {
        const float *qi = q + ((size_t)b * T + i) * C + h * hs;
        int n = causal ? i + 1 : T;
        double m = -INFINITY, sum = 0;
        for (int j = 0; j < n && j < 1024; j++) {
          const float *kj = k + ((size_t)b * T + j) * C + h * hs;
          double d = 0;
          for (int x = 0; x < hs; x++) d += (double)qi[x] * kj[x];
          s[j] = d / sqrt((double)hs);
          if (s[j] > m) m = s[j];
        }
        for (int j = 0; j < n; j++) sum += (s[j] = exp(s[j] - m));
        for (int x = 0; x < hs; x++) {
          double acc = 0;
          for (int j = 0; j < n; j++) acc += s[j] * v[((size_t)b * T + j) * C + h * hs + x];
          out[((size_t)b * T + i) * C + h * hs + x] = (float)(acc / sum);
        }
      }
}
