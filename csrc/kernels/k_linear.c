/* k_linear.c - fully connected layer, torch.nn.Linear semantics
 * (https://pytorch.org/docs/stable/generated/torch.nn.Linear.html):
 * out[N,OC] = inp[N,IC] @ weight[OC,IC]^T + bias[OC].
 * Backward (g = dout [N,OC]):
 *   dinp[N,IC]    += g @ weight          (ct_sgemm, beta = 1)
 *   dweight[OC,IC] += g^T @ inp          (ct_sgemm, beta = 1)
 *   dbias[OC]     += sum over rows of g
 * any gradient may be NULL (skipped). */
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "gemm.h"
#include "kernels.h"
#include "pool.h"
#include "simd.h"

void linear_forward(float *out, const float *inp, const float *weight,
                    const float *bias, int N, int IC, int OC) {
  linear_forward_packed(1, &out, OC, inp, IC, &weight, NULL, 0, &bias, N, IC, OC, 0.0f);
}

/* 1: the AVX2 kernel would run N >= chunk rows where float weights are at hand; OpenBLAS takes
 * those (Zen 5, CLIP_NO_AVX512=1, B/32 image tower: packed 1.07x OpenBLAS at batch 1, a tie at
 * batch 8 (400 rows), 0.92x at batch 32; docs/performance.md) */
static int avx2_to_openblas(int nout, const float *const *w, int N, int chunk) {
  if (N < chunk || !w || ct_gemm_packed_kernel() != PK_AVX2) return 0;
  for (int r = 0; r < nout; r++)
    if (!w[r]) return 0;
  return 1;
}

/* 1 when the packed kernel takes these layers (packs given, a kernel selected, not handed
 * to OpenBLAS above) */
static int packed_runs(int nout, const float *const *w, const void *const *pk, int N) {
  return pk && ct_gemm_packed_available() && !avx2_to_openblas(nout, w, N, ct_packed_chunk());
}

/* The same with the weights also given packed (gemm.h layout; NULL: none): the packed kernel
 * on chunks of ct_packed_max_m() rows (the AVX2 kernel only below one chunk, see above);
 * linear_forward without packs. nout layers of the same shape share inp (q, k and v: one pool
 * dispatch); pk[r] and w[r] describe layer r. beta: out = inp W^T + bias + beta out (1: a
 * residual added in the same pass). */
void linear_forward_packed(int nout, float *const *out, int ldc, const float *inp, int lda,
                           const float *const *w, const void *const *pk, int kind,
                           const float *const *bias, int N, int IC, int OC, float beta) {
  int chunk = ct_packed_chunk();
  if (packed_runs(nout, w, pk, N)) {
    /* rows in chunks: the packed kernel keeps its small-M speed at any batch size; the bias
     * is added as the kernel stores its first K block (no pass over out beforehand) */
    for (int i0 = 0; i0 < N; i0 += chunk) {
      int n = N - i0 < chunk ? N - i0 : chunk;
      float *o[3];
      for (int r = 0; r < nout && r < 3; r++) o[r] = out[r] + (size_t)i0 * ldc;
      ct_sgemm_packed(n, OC, IC, inp + (size_t)i0 * lda, lda, nout, pk, kind, bias, o, ldc, beta);
    }
    return;
  }
  for (int r = 0; r < nout; r++) { /* out = beta out + inp W^T + bias, rows ldc apart */
    if (beta == 0.0f && !bias[r]) {
      ct_sgemm(0, 1, N, OC, IC, 1.0f, inp, lda, w[r], IC, 0.0f, out[r], ldc);
      continue;
    }
    for (int i = 0; i < N; i++) {
      float *row = out[r] + (size_t)i * ldc;
      if (beta == 0.0f) memcpy(row, bias[r], sizeof(float) * OC);
      else if (bias[r])
        for (int o = 0; o < OC; o++) row[o] = beta * row[o] + bias[r][o];
      else if (beta != 1.0f)
        for (int o = 0; o < OC; o++) row[o] *= beta;
    }
    ct_sgemm(0, 1, N, OC, IC, 1.0f, inp, lda, w[r], IC, 1.0f, out[r], ldc);
  }
}

static void act_tile(void *ctx, float *x, int n) {
  act_forward_local(x, x, n, *(const int *)ctx);
}

size_t mlp_chain_floats(int N, int I) {
  int m = N < ct_packed_chunk() ? N : ct_packed_chunk(); /* linear_forward_packed's chunks */
  return m > 0 ? ct_pack_a_floats(m, I) : 0;
}

static int chain_on(void) {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("CLIP_MLP_CHAIN");
    v = !(e && !strcmp(e, "0"));
  }
  return v;
}

int mlp_forward_packed(float *out, const float *inp, int lda, const float *w1, const void *pk1,
                       const float *b1, const float *w2, const void *pk2, const float *b2,
                       int kind, int N, int D, int I, int act, float *buf, size_t buf_floats) {
  int chunk = ct_packed_chunk();
  if (!pk1 || !pk2 || N <= 0 || !chain_on() || !ct_gemm_packed_emit_ok(I, D) ||
      !packed_runs(1, &w1, &pk1, N) ||
      !packed_runs(1, &w2, &pk2, N) || buf_floats < mlp_chain_floats(N, I))
    return 0;
  for (int i0 = 0; i0 < N; i0 += chunk) {
    int n = N - i0 < chunk ? N - i0 : chunk;
    ct_sgemm_packed_chain(n, I, D, inp + (size_t)i0 * lda, lda, pk1, b1, act_tile, &act, buf, D,
                          pk2, b2, out + (size_t)i0 * D, D, 1.0f, kind);
  }
  return 1;
}

/* The naive forward, once for both twins: float (f64 = 0) or double (f64 = 1) arrays. */
static void linear_naive(void *out, const void *inp, const void *weight, const void *bias,
                         int N, int IC, int OC, int f64) {
  for (int i = 0; i < N; i++)
    for (int o = 0; o < OC; o++) {
      double acc = bias ? ct_twin_ld(bias, f64, o) : 0.0;
      for (int k = 0; k < IC; k++)
        acc += ct_twin_ld(inp, f64, (size_t)i * IC + k) * ct_twin_ld(weight, f64, (size_t)o * IC + k);
      ct_twin_st(out, f64, (size_t)i * OC + o, acc);
    }
}

void linear_forward_ref(float *out, const float *inp, const float *weight,
                        const float *bias, int N, int IC, int OC) {
  linear_naive(out, inp, weight, bias, N, IC, OC, 0);
}

/* Double twin of the forward, for the finite-difference gradient checks. */
void linear_forward_f64(double *out, const double *inp, const double *weight,
                        const double *bias, int N, int IC, int OC) {
  linear_naive(out, inp, weight, bias, N, IC, OC, 1);
}

/* dbias += column sums of dout, in blocks of BLK columns, each summed in double over the rows;
 * thread tid of nt takes its share of the blocks (the same values for any split) */
enum { BLK = 64 };
typedef struct {
  float *dbias;
  const float *dout;
  int N, OC;
} dbias_job;

#ifdef CT_SIMD_X86
/* acc[0..BLK) += the N rows of g (stride ld), in double: 8 columns per vector, the sums in
 * row order as the scalar loop's */
__attribute__((target("avx512f"))) static void colsum64(double *acc, const float *g, int N,
                                                        int ld) {
  __m512d a[BLK / 8];
  _Pragma("GCC unroll 8") for (int v = 0; v < BLK / 8; v++) a[v] = _mm512_setzero_pd();
  for (int i = 0; i < N; i++, g += ld)
    _Pragma("GCC unroll 8") for (int v = 0; v < BLK / 8; v++)
      a[v] = _mm512_add_pd(a[v], _mm512_cvtps_pd(_mm256_loadu_ps(g + 8 * v)));
  _Pragma("GCC unroll 8") for (int v = 0; v < BLK / 8; v++) _mm512_storeu_pd(acc + 8 * v, a[v]);
}
#endif

static void dbias_part(void *ctx, int tid, int nt) {
  const dbias_job *j = ctx;
  int nblk = (j->OC + BLK - 1) / BLK;
  for (int b = nblk * tid / nt, b1 = nblk * (tid + 1) / nt; b < b1; b++) {
    int o0 = b * BLK, nb = j->OC - o0 < BLK ? j->OC - o0 : BLK;
    double acc[BLK] = {0};
#ifdef CT_SIMD_X86
    if (nb == BLK && ct_have_avx512())
      colsum64(acc, j->dout + o0, j->N, j->OC);
    else
#endif
      for (int i = 0; i < j->N; i++) {
        const float *g = j->dout + (size_t)i * j->OC + o0;
        for (int o = 0; o < nb; o++) acc[o] += g[o];
      }
    for (int o = 0; o < nb; o++) j->dbias[o0 + o] = (float)(j->dbias[o0 + o] + acc[o]);
  }
}

/* dinp (+= with beta 1, = with beta 0), dweight, dbias (+=) */
static void linear_backward_b(float *dinp, float beta, float *dweight, float *dbias,
                              const float *dout, const float *inp, const float *weight, int N,
                              int IC, int OC) {
  if (dinp) ct_sgemm(0, 0, N, IC, OC, 1.0f, dout, OC, weight, IC, beta, dinp, IC);
  if (dweight) ct_sgemm(1, 0, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
  if (dbias) {
    dbias_job j = {dbias, dout, N, OC};
    if (ct_pool_threads() > 1 && (int64_t)N * OC >= 32768)
      ct_pool_run(ct_pool_current(), dbias_part, &j);
    else
      dbias_part(&j, 0, 1);
  }
}

/* dinp, dweight, dbias may be NULL: frozen / not needed -> skipped (no work). All ACCUMULATE (+=). */
void linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, int N, int IC, int OC) {
  linear_backward_b(dinp, 1.0f, dweight, dbias, dout, inp, weight, N, IC, OC);
}

void linear_backward_set(float *dinp, float *dweight, float *dbias, const float *dout,
                         const float *inp, const float *weight, int N, int IC, int OC) {
  linear_backward_b(dinp, 0.0f, dweight, dbias, dout, inp, weight, N, IC, OC);
}

/* Naive twin: the two products by the naive GEMM (blas.c, double accumulation, beta = 1
 * adds in double before the one rounding), the column sums in double. */
void linear_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout,
                         const float *inp, const float *weight, int N, int IC, int OC) {
  if (dinp) ct_sgemm_ref(0, 0, N, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f, dinp, IC);
  if (dweight) ct_sgemm_ref(1, 0, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
  if (dbias)
    for (int o = 0; o < OC; o++) {
      double acc = 0;
      for (int i = 0; i < N; i++) acc += dout[(size_t)i * OC + o];
      dbias[o] = (float)(dbias[o] + acc);
    }
}
