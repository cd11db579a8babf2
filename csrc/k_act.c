/* k_act.c - activations of the CLIP MLP (transformers ACT2FN):
 * quick_gelu(x) = x * sigmoid(1.702 x)                      (OpenAI CLIP)
 * gelu(x)       = 0.5 x (1 + erf(x / sqrt 2))               (exact form)
 * gelu_new / gelu_pytorch_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
 * relu */
#include <math.h>

#include "kernels.h"

void act_forward(float *out, const float *inp, int64_t n, int act) {
  switch (act) {
  case CT_ACT_QUICK_GELU:
    for (int64_t i = 0; i < n; i++) {
      float x = inp[i];
      out[i] = x / (1.0f + expf(-1.702f * x));
    }
    break;
  case CT_ACT_GELU:
    for (int64_t i = 0; i < n; i++) {
      float x = inp[i];
      out[i] = 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    }
    break;
  case CT_ACT_GELU_TANH:
    for (int64_t i = 0; i < n; i++) {
      float x = inp[i];
      out[i] = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    }
    break;
  default:
    for (int64_t i = 0; i < n; i++) out[i] = inp[i] > 0 ? inp[i] : 0.0f;
  }
}

void act_forward_ref(float *out, const float *inp, int64_t n, int act) {
  for (int64_t i = 0; i < n; i++) {
    double x = inp[i], y;
    switch (act) {
    case CT_ACT_QUICK_GELU: y = x / (1.0 + exp(-1.702 * x)); break;
    case CT_ACT_GELU: y = 0.5 * x * (1.0 + erf(x / sqrt(2.0))); break;
    case CT_ACT_GELU_TANH:
      y = 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
      break;
    default: y = x > 0 ? x : 0;
    }
    out[i] = (float)y;
  }
}
