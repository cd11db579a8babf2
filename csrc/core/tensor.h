/* tensor.h - float32 array operations used by the Tensor bindings.
 * Raw pointers and sizes only; callers check shapes. */
#ifndef CT_TENSOR_H
#define CT_TENSOR_H
#include <stddef.h>
#include <stdint.h>

/* out[i,:] = x[i,:] / max(||x[i,:]||_2, eps)  (torch.nn.functional.normalize) */
void ct_l2_normalize_rows(float *out, const float *x, int64_t N, int64_t C,
                          float eps);
/* indices (0-based) and values of the k largest entries of x[0..n), sorted
 * descending; ties keep the lower index first. */
void ct_topk(int64_t *idx, float *val, const float *x, int64_t n, int64_t k);
/* mean over axis 1 of a [A, M, B] view: out[a, b] = mean_m x[a, m, b] */
void ct_mean_axis(float *out, const float *x, int64_t A, int64_t M, int64_t B);
void ct_sum_axis(float *out, const float *x, int64_t A, int64_t M, int64_t B);
/* half-precision conversions */
float ct_f16_to_f32(uint16_t h);
float ct_bf16_to_f32(uint16_t h);
uint16_t ct_f32_to_f16(float f);
uint16_t ct_f32_to_bf16(float f);

#endif
