/* optim.c - AdamW and SGD updates matching torch.optim (single-tensor,
 * non-foreach path: https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html). */
#include "optim.h"

#include <math.h>

void ct_adamw_step(float *p, float *m, float *v, const float *g, int64_t n, double lr,
                   double b1, double b2, double eps, double wd, int64_t t) {
  double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
  double step = lr / bc1, bc2s = sqrt(bc2);
  float decay = (float)(1.0 - lr * wd);
  for (int64_t i = 0; i < n; i++) {
    float gi = g[i];
    p[i] *= decay;
    m[i] = (float)(b1 * m[i] + (1.0 - b1) * gi);
    v[i] = (float)(b2 * v[i] + (1.0 - b2) * (double)gi * gi);
    double denom = sqrt((double)v[i]) / bc2s + eps;
    p[i] = (float)(p[i] - step * m[i] / denom);
  }
}

void ct_sgd_step(float *p, float *buf, const float *g, int64_t n, double lr, double momentum,
                 double dampening, double wd, int nesterov, int first) {
  for (int64_t i = 0; i < n; i++) {
    double d = g[i];
    if (wd != 0) d += wd * p[i];
    if (momentum != 0 && buf) {
      double b = first ? d : momentum * buf[i] + (1.0 - dampening) * d;
      buf[i] = (float)b;
      d = nesterov ? d + momentum * b : b;
    }
    p[i] = (float)(p[i] - lr * d);
  }
}

double ct_sumsq(const float *x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  return s;
}
