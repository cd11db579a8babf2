/* k_linear.c - fully connected layer, torch.nn.Linear semantics:
 * out[N,OC] = inp[N,IC] @ weight[OC,IC]^T + bias[OC]. */
#include <string.h>

#include "blas.h"
#include "kernels.h"

void linear_forward(float *out, const float *inp, const float *weight,
                    const float *bias, int N, int IC, int OC) {
  if (bias) {
    for (int i = 0; i < N; i++) memcpy(out + (size_t)i * OC, bias, sizeof(float) * OC);
  }
  ct_sgemm(0, 1, N, OC, IC, 1.0f, inp, IC, weight, IC, bias ? 1.0f : 0.0f, out, OC);
}

void linear_forward_ref(float *out, const float *inp, const float *weight,
                        const float *bias, int N, int IC, int OC) {
  for (int i = 0; i < N; i++)
    for (int o = 0; o < OC; o++) {
      double acc = bias ? bias[o] : 0.0;
      for (int k = 0; k < IC; k++) acc += (double)inp[(size_t)i * IC + k] * weight[(size_t)o * IC + k];
      out[(size_t)i * OC + o] = (float)acc;
    }
}
