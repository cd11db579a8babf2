/* blas.c - OpenBLAS behind one function, plus its naive twin. */
#include "blas.h"

#include <stddef.h>

/* The CBLAS ABI is declared here rather than through cblas.h, whose
 * location differs between distributions (Debian keeps OpenBLAS's under
 * /usr/include/x86_64-linux-gnu/openblas-*); linking -lopenblas suffices. */
enum { CblasRowMajor = 101 };
enum { CblasNoTrans = 111, CblasTrans = 112 };
void cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta,
                 float *C, int ldc);
void openblas_set_num_threads(int n);
int openblas_get_num_threads(void);

void ct_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] *= beta;
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
              tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb,
              beta, C, ldc);
}

void ct_sgemm_ref(int ta, int tb, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc) {
  for (int i = 0; i < M; i++)
    for (int j = 0; j < N; j++) {
      double acc = 0;
      for (int k = 0; k < K; k++) {
        double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
        double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
        acc += a * b;
      }
      float *c = &C[(size_t)i * ldc + j];
      *c = (float)(alpha * acc + (beta == 0.0f ? 0.0 : (double)beta * *c));
    }
}

void ct_set_num_threads(int n) {
  if (n < 1) n = 1;
  openblas_set_num_threads(n);
}

int ct_get_num_threads(void) { return openblas_get_num_threads(); }
