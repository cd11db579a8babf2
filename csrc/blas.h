/* blas.h - the only door to BLAS (csrc/blas.c is the only cblas user). */
#ifndef CT_BLAS_H
#define CT_BLAS_H

/* Row-major C[M,N] = alpha * op(A) op(B) + beta * C, op = transpose if ta/tb.
 * lda/ldb/ldc are row strides as in cblas row-major. */
void ct_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* Naive twin of ct_sgemm (double accumulation): the oracle for tests. */
void ct_sgemm_ref(int ta, int tb, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc);

/* OpenBLAS's own thread count (for a C host without a pool; see pool.h). */
void ct_set_num_threads(int n);
int ct_get_num_threads(void);
/* Ask OpenBLAS for one thread (done by ct_sgemm whenever a pool is in use). */
void ct_blas_single_thread(void);

#endif
