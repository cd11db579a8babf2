/* optim.h - optimizer updates on raw float arrays (PyTorch semantics). */
#ifndef CT_OPTIM_H
#define CT_OPTIM_H
#include <stdint.h>

/* torch.optim.AdamW, one parameter tensor, step t >= 1:
 * p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps) */
void ct_adamw_step(float *p, float *m, float *v, const float *g, int64_t n, double lr,
                   double b1, double b2, double eps, double wd, int64_t t);
/* torch.optim.SGD with momentum/dampening/nesterov/weight_decay; buf may be NULL
 * when momentum is 0; first = 1 on the first step (buf = g). */
void ct_sgd_step(float *p, float *buf, const float *g, int64_t n, double lr, double momentum,
                 double dampening, double wd, int nesterov, int first);
/* sum of squares (double) */
double ct_sumsq(const float *x, int64_t n);
/* x *= s (clip_grad_norm's scaling; Tensor:scale_), split over the current pool for large n */
void ct_scale(float *x, int64_t n, float s);
/* x = 0 (zero_grad), split over the current pool for large n */
void ct_zero(float *x, int64_t n);

#endif
