/* bench/peak.c - the fp32 FMA peak of this machine: independent FMA chains on registers,
 * one pthread per core, no memory traffic. Prints one JSON line: GFLOP/s with 1 thread and
 * with n threads, for AVX2 (8 lanes) and, where the CPU has it, AVX-512 (16 lanes).
 * peak_nt is the wider of the two; with "avx2" (or CLIP_NO_AVX512 set, as the module reads
 * it) only the 256-bit FMA peak is measured and reported as peak_nt: the peak of the AVX2
 * GEMM kernels.
 * build: cc -O2 -pthread bench/peak.c -o build/bench/peak   (mk/bench.mk)
 * usage: build/bench/peak [threads] [avx2] */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define ITERS 100000000L
#define CHAINS 10

/* ten independent accumulators held in registers (FMA latency 4 x 2 pipes needs >= 8) */
#define BODY(T, FMA)                                                              \
  T a0 = x, a1 = y, a2 = x, a3 = y, a4 = x, a5 = y, a6 = x, a7 = y, a8 = x, a9 = y; \
  __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5),  \
                   "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9)); /* opaque: no CSE */     \
  for (long it = 0; it < iters; it++) {                                           \
    a0 = FMA(a0, x, y); a1 = FMA(a1, x, y); a2 = FMA(a2, x, y); a3 = FMA(a3, x, y); \
    a4 = FMA(a4, x, y); a5 = FMA(a5, x, y); a6 = FMA(a6, x, y); a7 = FMA(a7, x, y); \
    a8 = FMA(a8, x, y); a9 = FMA(a9, x, y);                                       \
    __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5), \
                     "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9));                     \
  }

/* s = the sum of the ten accumulators (kept live, so the chains are not dropped) */
#define SUM(T, ADD)                                                               \
  T s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));        \
  s = ADD(s, ADD(a8, a9));

__attribute__((target("avx2,fma"))) static float run_avx2(long iters) {
  __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  BODY(__m256, _mm256_fmadd_ps)
  SUM(__m256, _mm256_add_ps)
  float o[8];
  _mm256_storeu_ps(o, s);
  return o[0];
}

__attribute__((target("avx512f"))) static float run_avx512(long iters) {
  __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  BODY(__m512, _mm512_fmadd_ps)
  SUM(__m512, _mm512_add_ps)
  return _mm512_reduce_add_ps(s);
}

typedef struct { int wide; long iters; float sink; } job;

static void *worker(void *p) {
  job *j = p;
  j->sink = j->wide ? run_avx512(j->iters) : run_avx2(j->iters);
  return NULL;
}

static double gflops(int nthreads, int wide) {
  pthread_t th[64];
  job jobs[64];
  long iters = wide ? ITERS / 2 : ITERS;
  double t0 = now();
  for (int i = 0; i < nthreads; i++) {
    jobs[i] = (job){wide, iters, 0};
    pthread_create(&th[i], NULL, worker, &jobs[i]);
  }
  for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
  double t = now() - t0;
  double flop = 2.0 * CHAINS * (wide ? 16 : 8) * (double)iters * nthreads;
  return flop / t * 1e-9;
}

int main(int argc, char **argv) {
  int n = (int)sysconf(_SC_NPROCESSORS_ONLN), only256 = 0;
  const char *off = getenv("CLIP_NO_AVX512");
  if (off && *off && strcmp(off, "0")) only256 = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "avx2")) only256 = 1;
    else n = atoi(argv[i]);
  }
  if (n < 1 || n > 64) n = 1;
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    printf("{\"error\":\"no AVX2+FMA\"}\n");
    return 1;
  }
  double best1 = 0, bestn = 0, w1 = 0, wn = 0;
  for (int r = 0; r < 3; r++) {
    double a = gflops(1, 0), b = gflops(n, 0);
    if (a > best1) best1 = a;
    if (b > bestn) bestn = b;
  }
  int has512 = __builtin_cpu_supports("avx512f") && !only256;
  if (has512)
    for (int r = 0; r < 3; r++) {
      double a = gflops(1, 1), b = gflops(n, 1);
      if (a > w1) w1 = a;
      if (b > wn) wn = b;
    }
  printf("{\"threads\":%d,\"mode\":\"%s\",\"avx2_1t\":%.1f,\"avx2_nt\":%.1f,\"avx512_1t\":%.1f,"
         "\"avx512_nt\":%.1f,\"peak_nt\":%.1f}\n", n, only256 ? "avx2" : "widest", best1, bestn, w1,
         wn, bestn > wn ? bestn : wn);
  return 0;
}
