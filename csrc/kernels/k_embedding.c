/* k_embedding.c - the towers' input embeddings (transformers' CLIPVisionEmbeddings and
 * CLIPTextEmbeddings) and their backward. Plain loops: the forward is a gather and an add, so
 * the kernels are their own naive twins; the double twins serve the finite-difference checks.
 * Conventions: kernels.h. */
#include "kernels.h"

#include <stddef.h>

void vision_embed_forward(float *out, const float *patch, const float *cls, const float *pos,
                          int B, int NP, int C) {
  size_t T = (size_t)NP + 1;
  for (int b = 0; b < B; b++) {
    float *o = out + (size_t)b * T * C;
    const float *pe = patch + (size_t)b * NP * C; /* row t >= 1 of the sequence is patch t - 1 */
    for (int j = 0; j < C; j++) o[j] = cls[j] + pos[j];
    for (size_t i = 0; i < (size_t)NP * C; i++) o[C + i] = pe[i] + pos[C + i];
  }
}

void vision_embed_forward_f64(double *out, const double *patch, const double *cls,
                              const double *pos, int B, int NP, int C) {
  size_t T = (size_t)NP + 1;
  for (int b = 0; b < B; b++)
    for (size_t t = 0; t < T; t++)
      for (int j = 0; j < C; j++)
        out[((size_t)b * T + t) * C + j] =
            (t ? patch[((size_t)b * NP + t - 1) * C + j] : cls[j]) + pos[t * C + j];
}

void vision_embed_backward(float *dpatch, float *dcls, float *dpos, const float *dout, int B,
                           int NP, int C) {
  size_t T = (size_t)NP + 1;
  for (int b = 0; b < B; b++) {
    const float *d = dout + (size_t)b * T * C;
    if (dcls)
      for (int j = 0; j < C; j++) dcls[j] += d[j];
    if (dpos)
      for (size_t i = 0; i < T * C; i++) dpos[i] += d[i];
    if (dpatch) {
      float *dp = dpatch + (size_t)b * NP * C;
      for (size_t i = 0; i < (size_t)NP * C; i++) dp[i] += d[C + i];
    }
  }
}

void text_embed_forward(float *out, const int32_t *ids, const float *tok, const float *pos,
                        int B, int T_in, int T, int C) {
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      const float *te = tok + (size_t)ids[(size_t)b * T_in + t] * C, *pe = pos + (size_t)t * C;
      float *o = out + ((size_t)b * T + t) * C;
      for (int j = 0; j < C; j++) o[j] = te[j] + pe[j];
    }
}

void text_embed_forward_f64(double *out, const int32_t *ids, const double *tok,
                            const double *pos, int B, int T_in, int T, int C) {
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int j = 0; j < C; j++)
        out[((size_t)b * T + t) * C + j] =
            tok[(size_t)ids[(size_t)b * T_in + t] * C + j] + pos[(size_t)t * C + j];
}

void text_embed_backward(float *dtok, float *dpos, const float *dout, const int32_t *ids, int B,
                         int T_in, int T, int C) {
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      const float *d = dout + ((size_t)b * T + t) * C;
      if (dtok) {
        float *dt = dtok + (size_t)ids[(size_t)b * T_in + t] * C;
        for (int j = 0; j < C; j++) dt[j] += d[j];
      }
      if (dpos)
        for (int j = 0; j < C; j++) dpos[(size_t)t * C + j] += d[j];
    }
}
