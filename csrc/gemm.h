/* gemm.h - our own sgemm for the shape the forward passes use most:
 * C[M,N] = alpha * A[M,K] B[N,K]^T + beta * C  (row-major, "NT": both operands K-contiguous,
 * as linear_forward's inp x weight^T and attention's q k^T).
 * No packing: a 3x4 block of dot products runs over K with AVX2/FMA, the 4 weight rows held in
 * L1 while the 3 input rows stream from L2, so every weight is read from memory once per call;
 * at small M (ViT-B/32 at batch 1 has M = 50) that beats packing GEMMs, whose packing of B costs
 * as much as the arithmetic. See docs/performance.md. */
#ifndef CT_GEMM_H
#define CT_GEMM_H

/* 1 when this CPU runs the AVX2/FMA kernel (checked once, at run time). */
int ct_gemm_available(void);

/* Columns n0 .. n1-1 of C only (so threads can split N); requires ct_gemm_available().
 * With beta == 0, C is not read. */
void ct_gemm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                int ldb, float beta, float *C, int ldc, int n0, int n1);

/* Naive twin: plain loops, double accumulation (the oracle of spec/gemm_spec.lua). */
void ct_gemm_nt_ref(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                    int ldb, float beta, float *C, int ldc);

#endif
