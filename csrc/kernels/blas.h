/* blas.h - the only door to BLAS (blas.c is the only cblas user). */
#ifndef CT_BLAS_H
#define CT_BLAS_H

#include "gemm.h"

/* Row-major C[M,N] = alpha * op(A) op(B) + beta * C, op = transpose if ta/tb.
 * lda/ldb/ldc are row strides as in cblas row-major. */
void ct_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* Naive twin of ct_sgemm (double accumulation): the oracle for tests. */
void ct_sgemm_ref(int ta, int tb, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc);

/* Packed weights (gemm.h): nout outputs of N columns each share one input A[M,K]; output r
 * is C[r] = A W_r^T + bias[r] + beta C[r] (row stride ldc; bias or bias[r] NULL: none) with
 * W_r packed at P[r] (element type kind:
 * PK_F32, PK_F16, PK_BF16). Split over the current pool in one run (q, k and v in one
 * dispatch): by rows where each thread gets at least 100 (CLIP_PACKED_ROWS; each thread
 * packs its own rows), else by the panels of all outputs (A packed once, shared). Requires
 * ct_gemm_packed_available(). */
void ct_sgemm_packed(int M, int N, int K, const float *A, int lda, int nout,
                     const void *const *P, int kind, const float *const *bias, float *const *C,
                     int ldc, float beta);
/* ... on micro-kernel isa (gemm.h: PK_AVX2, PK_AVX512), not the selected one (specs) */
void ct_sgemm_packed_isa(int isa, int M, int N, int K, const float *A, int lda, int nout,
                         const void *const *P, int kind, const float *const *bias,
                         float *const *C, int ldc, float beta);
/* The MLP's chain on the packed kernel (gemm.h, ct_gemm_packed_emit), in one dispatch:
 * out_apa (room for ct_pack_a_floats(M, N)) = fn(A W^T + bias) packed as the input of a GEMM
 * of K = N (W packed at P, N x K), then C2 = out_apa W2^T + bias2 + beta2 C2 (W2 packed at
 * P2, N2 x N; C2 rows ldc2 apart) reading it with no packing pass. Over the current pool as
 * ct_sgemm_packed (rows or panels split; split panels wait for every thread's first GEMM).
 * Requires ct_gemm_packed_emit_ok(N, K). */
void ct_sgemm_packed_chain(int M, int N, int K, const float *A, int lda, const void *P,
                           const float *bias, ct_tile_fn fn, void *ctx, float *out_apa, int N2,
                           const void *P2, const float *bias2, float *C2, int ldc2, float beta2,
                           int kind);
/* Rows per packed GEMM call: larger inputs are cut into chunks of this many rows (400; the
 * environment variable CLIP_PACKED_MAX_M overrides it for benchmarks, 0 turns the packed
 * weights off). */
int ct_packed_max_m(void);
/* ... as the row chunks are cut: ct_packed_max_m(), or 400 where that is 0 (nothing packed) */
int ct_packed_chunk(void);
/* Pack B[N,K] (row stride ldb; float, or 16-bit elements for PK_F16 / PK_BF16) into P
 * (ct_pack_nt_floats(N, K) elements, 64-byte aligned), split over the current pool. */
void ct_pack_parallel(int N, int K, const void *B, int ldb, void *P, int kind);
/* 1 when ct_sgemm runs its larger GEMMs on the packed AVX-512 micro-kernel rather than
 * OpenBLAS (OpenBLAS without an AVX-512 kernel on an AVX-512 CPU, or CLIP_GEMM=packed) */
int ct_gemm_general_packed(void);

/* OpenBLAS's own thread count (for a C host without a pool; see pool.h). */
void ct_set_num_threads(int n);
int ct_get_num_threads(void);
/* Ask OpenBLAS for one thread (done by ct_sgemm whenever a pool is in use). */
void ct_blas_single_thread(void);

#endif
