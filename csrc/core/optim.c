/* optim.c - AdamW and SGD updates matching torch.optim (single-tensor,
 * non-foreach path: https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html). */
#include "optim.h"

#include <math.h>

void ct_adamw_step(float *p, float *m, float *v, const float *g, int64_t n, double lr,
                   double b1, double b2, double eps, double wd, int64_t t) {
  /* float32 arithmetic in torch's order (_single_tensor_adamw):
   * p.mul_(1 - lr wd); m.lerp_(g, 1 - b1); v.mul_(b2).addcmul_(g, g, 1 - b2);
   * denom = v.sqrt() / sqrt(bc2) + eps; p.addcdiv_(m, denom, -lr / bc1) */
  const float decay = (float)(1.0 - lr * wd), w1 = (float)(1.0 - b1), fb2 = (float)b2,
              w2 = (float)(1.0 - b2), fe = (float)eps;
  const float step = (float)(lr / (1.0 - pow(b1, (double)t)));
  const float bc2s = (float)sqrt(1.0 - pow(b2, (double)t));
  for (int64_t i = 0; i < n; i++) {
    float gi = g[i];
    float mi = m[i] + w1 * (gi - m[i]);
    float vi = fb2 * v[i] + w2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float denom = sqrtf(vi) / bc2s + fe;
    p[i] = p[i] * decay - step * mi / denom;
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
