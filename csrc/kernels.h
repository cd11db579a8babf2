/* kernels.h - forward (and later backward) kernels on raw float arrays.
 * Each kernel has a naive twin (*_ref) used by the specs as the oracle.
 * Kernels cannot fail: no allocation, no I/O. Written buffers come first,
 * then read-only inputs, then sizes (N rows, C channels, ...). */
#ifndef CT_KERNELS_H
#define CT_KERNELS_H
#include <stdint.h>

enum { CT_ACT_QUICK_GELU = 0, CT_ACT_GELU = 1, CT_ACT_GELU_TANH = 2, CT_ACT_RELU = 3 };

/* k_layernorm.c: out = (x - mean) * rstd * w + b per row; mean/rstd may be NULL */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int64_t N, int C, float eps);
void layernorm_forward_ref(float *out, const float *inp, const float *w,
                           const float *b, int64_t N, int C, float eps);

/* k_linear.c: out[N,OC] = inp[N,IC] weight[OC,IC]^T + bias[OC] (bias may be NULL) */
void linear_forward(float *out, const float *inp, const float *weight,
                    const float *bias, int N, int IC, int OC);
void linear_forward_ref(float *out, const float *inp, const float *weight,
                        const float *bias, int N, int IC, int OC);

/* k_act.c: elementwise activation in place or out-of-place */
void act_forward(float *out, const float *inp, int64_t n, int act);
void act_forward_ref(float *out, const float *inp, int64_t n, int act);

/* k_attention.c: q,k,v,out are [B,T,C] with C = NH*hs; head h uses columns
 * h*hs..(h+1)*hs. probs is scratch [T,T] (or, when saving for backward,
 * [B,NH,T,T] with save_probs=1). scores = q k^T / sqrt(hs), causal masks
 * j > i, softmax over j, out = probs v. */
void attention_forward(float *out, float *probs, const float *q, const float *k,
                       const float *v, int B, int T, int C, int NH, int causal,
                       int save_probs);
void attention_forward_ref(float *out, const float *q, const float *k,
                           const float *v, int B, int T, int C, int NH, int causal);

#endif
