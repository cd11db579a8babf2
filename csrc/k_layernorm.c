/* k_layernorm.c - LayerNorm over the last dim, biased variance.
 * inp, out: [N, C]; w, b: [C]; mean, rstd: [N] (saved for backward).
 * Matches torch.nn.LayerNorm (https://pytorch.org/docs/stable/generated/torch.nn.LayerNorm.html). */
#include <math.h>

#include "kernels.h"

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int64_t N, int C, float eps) {
  for (int64_t i = 0; i < N; i++) {
    const float *x = inp + i * C;
    float *o = out + i * C;
    double s = 0;
    for (int j = 0; j < C; j++) s += x[j];
    float m = (float)(s / C);
    double v = 0;
    for (int j = 0; j < C; j++) {
      float d = x[j] - m;
      v += (double)d * d;
    }
    float r = (float)(1.0 / sqrt(v / C + eps));
    for (int j = 0; j < C; j++) o[j] = (x[j] - m) * r * w[j] + b[j];
    if (mean) mean[i] = m;
    if (rstd) rstd[i] = r;
  }
}

void layernorm_forward_ref(float *out, const float *inp, const float *w,
                           const float *b, int64_t N, int C, float eps) {
  for (int64_t i = 0; i < N; i++) {
    const float *x = inp + i * C;
    long double s = 0, v = 0;
    for (int j = 0; j < C; j++) s += x[j];
    long double m = s / C;
    for (int j = 0; j < C; j++) v += (x[j] - m) * (x[j] - m);
    long double r = 1.0L / sqrtl(v / C + eps);
    for (int j = 0; j < C; j++) out[i * C + j] = (float)((x[j] - m) * r * w[j] + b[j]);
  }
}
