/* kernels.h - forward and backward kernels on raw float arrays (llm.c style).
 *
 * Conventions (docs/kernels.md):
 * - Arguments: written buffers first, then read-only inputs, then sizes
 *   (N rows, C channels, ...). Backward: (dinp, dparams..., dout, inp,
 *   params..., saved..., sizes).
 * - Backward ACCUMULATES (+=) into its gradient buffers; the caller zeroes
 *   them once per step. A NULL gradient pointer means "frozen / not needed":
 *   that gradient is skipped and costs no work.
 * - Kernels cannot fail: no allocation, no I/O. All checks happen before the
 *   call.
 * - Each fast kernel has a naive twin (*_ref: plain loops, double
 *   accumulation) used by the specs as the oracle, and each forward a double
 *   twin (*_forward_f64) used by the finite-difference gradient checks. The
 *   two naive forwards of an op are one body (k_*.c) over float or double
 *   arrays, read and written through ct_twin_ld / ct_twin_st below. */
#ifndef CT_KERNELS_H
#define CT_KERNELS_H
#include <stddef.h>
#include <stdint.h>

/* Element i of a naive twin's array: float (f64 = 0) or double (f64 = 1) storage; the
 * arithmetic is double either way, a float is rounded once, on the store. */
static inline double ct_twin_ld(const void *p, int f64, size_t i) {
  return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
static inline void ct_twin_st(void *p, int f64, size_t i, double v) {
  if (f64) ((double *)p)[i] = v;
  else ((float *)p)[i] = (float)v;
}

enum { CT_ACT_QUICK_GELU = 0, CT_ACT_GELU = 1, CT_ACT_GELU_TANH = 2, CT_ACT_RELU = 3 };

/* k_layernorm.c: out = (x - mean) * rstd * w + b per row; mean/rstd may be NULL.
 * inp, out, dinp, dout: [N,C]; w, b, dweight, dbias: [C]; mean, rstd: [N]. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *w, const float *b, int64_t N, int C, float eps);
void layernorm_forward_ref(float *out, const float *inp, const float *w,
                           const float *b, int64_t N, int C, float eps);
void layernorm_forward_f64(double *out, const double *inp, const double *w,
                           const double *b, int64_t N, int C, double eps);
/* dinp, dweight, dbias may be NULL: frozen / not needed -> skipped (no work). All ACCUMULATE (+=).
 * mean, rstd: the stats saved by layernorm_forward. The twin has the same
 * signature and also uses the saved stats (backward has no eps to recompute them). */
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, const float *mean,
                        const float *rstd, int64_t N, int C);
void layernorm_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const float *mean,
                            const float *rstd, int64_t N, int C);

/* k_linear.c: out[N,OC] = inp[N,IC] weight[OC,IC]^T + bias[OC] (bias may be NULL) */
void linear_forward(float *out, const float *inp, const float *weight,
                    const float *bias, int N, int IC, int OC);
/* linear_forward for nout layers sharing inp, with their weights also packed (pk: gemm.h
 * layout, or NULL): the packed kernel in chunks of ct_packed_max_m() rows (k_linear.c).
 * lda, ldc: the row strides of inp and of each out (IC and OC when packed tight). */
void linear_forward_packed(int nout, float *const *out, int ldc, const float *inp, int lda,
                           const float *const *w, const void *const *pk, int kind,
                           const float *const *bias, int N, int IC, int OC, float beta);
/* The MLP of an inference pass, out += act(inp W1^T + b1) W2^T + b2 (out [N, D], ldc D; inp
 * rows lda apart; W1 [I, D], W2 [D, I]), with both layers packed (pk1, pk2 of kind), by
 * chunks of rows as linear_forward_packed: fc1 hands its tiles through the activation straight
 * into fc2's packed input (gemm.h, ct_gemm_packed_emit), so neither fc1's output nor a pass of
 * the activation or of fc2's packing goes through memory. buf: room for that input (at least
 * mlp_chain_floats(N, I)). The same values as linear_forward_packed, act_forward and
 * linear_forward_packed. Returns 0, having done nothing, where the chain cannot run (no packs,
 * a layer's K blocks that don't fit, the AVX2 kernel handing large inputs to OpenBLAS, buf
 * too small): the caller takes those three steps. w1, w2: the float weights or NULL (as
 * linear_forward_packed's w). CLIP_MLP_CHAIN=0 in the environment turns it off (specs). */
size_t mlp_chain_floats(int N, int I);
int mlp_forward_packed(float *out, const float *inp, int lda, const float *w1, const void *pk1,
                       const float *b1, const float *w2, const void *pk2, const float *b2,
                       int kind, int N, int D, int I, int act, float *buf, size_t buf_floats);
void linear_forward_ref(float *out, const float *inp, const float *weight,
                        const float *bias, int N, int IC, int OC);
void linear_forward_f64(double *out, const double *inp, const double *weight,
                        const double *bias, int N, int IC, int OC);
/* dinp, dweight, dbias may be NULL: frozen / not needed -> skipped (no work). All ACCUMULATE (+=).
 * dinp += dout weight; dweight += dout^T inp; dbias += column sums of dout. */
void linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, int N, int IC, int OC);
/* The same with dinp overwritten (dinp = dout W: the backward's workspace, which then needs
 * no zeroing and whose GEMM does not read it); dweight, dbias accumulate as above. */
void linear_backward_set(float *dinp, float *dweight, float *dbias, const float *dout,
                         const float *inp, const float *weight, int N, int IC, int OC);
void linear_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout,
                         const float *inp, const float *weight, int N, int IC, int OC);

/* k_act.c: elementwise activation in place or out-of-place */
void act_forward(float *out, const float *inp, int64_t n, int act);
/* ... on the calling thread (act_forward splits large arrays over the pool); each element
 * gets the same operations either way, wherever it lies */
void act_forward_local(float *out, const float *inp, int64_t n, int act);
void act_forward_ref(float *out, const float *inp, int64_t n, int act);
void act_forward_f64(double *out, const double *inp, int64_t n, int act);
/* dinp may be NULL (then nothing is done). ACCUMULATES: dinp += dout * act'(inp).
 * inp is the forward's input (pre-activation); dinp must not alias dout or inp. */
void act_backward(float *dinp, const float *dout, const float *inp, int64_t n, int act);
/* The same with dinp overwritten (dinp = dout * act'(inp); dinp not read) */
void act_backward_set(float *dinp, const float *dout, const float *inp, int64_t n, int act);
void act_backward_ref(float *dinp, const float *dout, const float *inp, int64_t n, int act);

/* k_attention.c: q,k,v,out are [B,T,C] with C = NH*hs; head h uses columns
 * h*hs..(h+1)*hs. probs is scratch [T,T] (or, when saving for backward,
 * [B,NH,T,T] with save_probs=1). scores = q k^T / sqrt(hs), causal masks
 * j > i, softmax over j, out = probs v. */
void attention_forward(float *out, float *probs, const float *q, const float *k,
                       const float *v, int B, int T, int C, int NH, int causal,
                       int save_probs);
void attention_forward_ref(float *out, const float *q, const float *k,
                           const float *v, int B, int T, int C, int NH, int causal);
/* T <= 1024 */
void attention_forward_f64(double *out, const double *q, const double *k,
                           const double *v, int B, int T, int C, int NH, int causal);
/* dq, dk, dv may be NULL: frozen / not needed -> skipped (no work). All ACCUMULATE (+=).
 * scratch: [T,T] work space (unused when dq and dk are both NULL); probs:
 * [B,NH,T,T] saved by attention_forward(save_probs=1). The twin recomputes the
 * probabilities from q and k in double (so it takes neither); T <= 1024. */
void attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                        const float *q, const float *k, const float *v, const float *probs,
                        int B, int T, int C, int NH, int causal);
void attention_backward_ref(float *dq, float *dk, float *dv, const float *dout,
                            const float *q, const float *k, const float *v,
                            int B, int T, int C, int NH, int causal);

/* k_embedding.c: the towers' input embeddings. Vision: out [B, NP+1, C], row 0 of each image
 * cls [C] + pos[0], row t patch[b*NP + t-1] + pos[t]; patch [B*NP, C] (the patch projections),
 * pos [NP+1, C]. Text: out [B, T, C], row t of sequence b tok[ids[b*T_in + t]] + pos[t] for
 * t < T <= T_in; tok [V, C], pos [>= T, C]; every id must be in [0, V). Plain loops: the
 * kernels are their own naive twins. */
void vision_embed_forward(float *out, const float *patch, const float *cls, const float *pos,
                          int B, int NP, int C);
void vision_embed_forward_f64(double *out, const double *patch, const double *cls,
                              const double *pos, int B, int NP, int C);
void text_embed_forward(float *out, const int32_t *ids, const float *tok, const float *pos,
                        int B, int T_in, int T, int C);
void text_embed_forward_f64(double *out, const int32_t *ids, const double *tok,
                            const double *pos, int B, int T_in, int T, int C);
/* dpatch, dcls, dpos, dtok may be NULL: frozen / not needed -> skipped (no work). All
 * ACCUMULATE (+=); dout is the forward's out shape. */
void vision_embed_backward(float *dpatch, float *dcls, float *dpos, const float *dout, int B,
                           int NP, int C);
void text_embed_backward(float *dtok, float *dpos, const float *dout, const int32_t *ids, int B,
                         int T_in, int T, int C);

#endif
