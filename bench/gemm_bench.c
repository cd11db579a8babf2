/* bench/gemm_bench.c - one thread, C = A W^T at the towers' shapes: OpenBLAS (which packs W on
 * every call), csrc/kernels/gemm.c's unpacked AVX2 kernel, and csrc/kernels/gemm_packed.c's AVX-512
 * and AVX2 kernels on weights packed once (as the model keeps them), in chunks of 400 rows above
 * 400 (each where the CPU runs it; CLIP_NO_AVX512=1 drops the AVX-512 one).
 * Weights are cycled through L distinct matrices (> L3 in all) so that, as in a forward pass,
 * every call reads its weights from memory. Prints GFLOP/s per implementation and the largest
 * difference between OpenBLAS's and the packed kernel's results.
 * Build and run: make bench-gemm (mk/bench.mk). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "gemm.h"

void cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A,
                 int lda, const float *B, int ldb, float beta, float *C, int ldc);
void openblas_set_num_threads(int n);

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static float frand(void) { return (float)rand() / (float)RAND_MAX - 0.5f; }

static void run(int M, int N, int K, int rounds) {
  size_t wbytes = (size_t)N * K * sizeof(float);
  int L = (int)(96.0 * 1024 * 1024 / wbytes) + 1; /* ~96 MB of weights in all */
  float **W = malloc(sizeof *W * L), **P = malloc(sizeof *P * L);
  float *A = malloc(sizeof(float) * (size_t)M * K), *C1 = malloc(sizeof(float) * (size_t)M * N),
        *C2 = malloc(sizeof(float) * (size_t)M * N);
  if (!W || !P || !A || !C1 || !C2) {
    fprintf(stderr, "out of memory\n");
    exit(1);
  }
  for (size_t i = 0; i < (size_t)M * K; i++) A[i] = frand();
  for (int l = 0; l < L; l++) {
    W[l] = malloc(wbytes);
    P[l] = aligned_alloc(64, (ct_pack_nt_floats(N, K) * sizeof(float) + 63) & ~(size_t)63);
    if (!W[l] || !P[l]) {
      fprintf(stderr, "out of memory\n");
      exit(1);
    }
    for (size_t i = 0; i < (size_t)N * K; i++) W[l][i] = frand();
    ct_pack_nt(N, K, W[l], K, P[l], 0, (N + PK_NR - 1) / PK_NR);
  }
  double flop = 2.0 * M * N * K * L, best[4] = {0, 0, 0, 0};
  for (int r = 0; r < rounds; r++) {
    double t = now();
    for (int l = 0; l < L; l++) cblas_sgemm(101, 111, 112, M, N, K, 1, A, K, W[l], K, 0, C1, N);
    double g = flop / (now() - t) * 1e-9;
    if (g > best[0]) best[0] = g;
    if (ct_gemm_available()) {
      t = now();
      for (int l = 0; l < L; l++) ct_gemm_nt(M, N, K, 1, A, K, W[l], K, 0, C2, N, 0, N);
      g = flop / (now() - t) * 1e-9;
      if (g > best[1]) best[1] = g;
    }
    for (int isa = PK_AVX512; isa >= PK_AVX2; isa--) {
      if (!ct_gemm_packed_runs(isa)) continue;
      t = now();
      for (int l = 0; l < L; l++)
        for (int i0 = 0; i0 < M; i0 += 400) {
          int n = M - i0 < 400 ? M - i0 : 400;
          ct_gemm_packed_isa(isa, n, N, K, 1, A + (size_t)i0 * K, K, NULL, P[l], PK_F32, 0, NULL,
                             C2 + (size_t)i0 * N, N, 0, (N + PK_NR - 1) / PK_NR);
        }
      g = flop / (now() - t) * 1e-9;
      if (g > best[isa == PK_AVX512 ? 2 : 3]) best[isa == PK_AVX512 ? 2 : 3] = g;
    }
  }
  double md = 0;
  for (size_t i = 0; i < (size_t)M * N; i++) md = fmax(md, fabs((double)C1[i] - C2[i]));
  printf("M=%5d N=%5d K=%5d  openblas %6.1f  own %6.1f  packed avx512 %6.1f  avx2 %6.1f GFLOP/s  "
         "(best of %d; max |diff| %.1e, last packed kernel)\n",
         M, N, K, best[0], best[1], best[2], best[3], rounds, md);
  for (int l = 0; l < L; l++) {
    free(W[l]);
    free(P[l]);
  }
  free(W); free(P); free(A); free(C1); free(C2);
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 3;
  openblas_set_num_threads(1);
  /* ViT-B/32 batch 1 (50 rows), batch 8 (400), batch 32 (1600); L/14 batch 1 (257 rows) */
  static const int shapes[][3] = {{50, 768, 768},     {50, 3072, 768},   {50, 768, 3072},
                                  {400, 768, 768},    {400, 3072, 768},  {400, 768, 3072},
                                  {1600, 3072, 768},  {1600, 768, 3072}, {257, 4096, 1024},
                                  {257, 1024, 4096}};
  for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
    run(shapes[i][0], shapes[i][1], shapes[i][2], rounds);
  return 0;
}
