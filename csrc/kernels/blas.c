/* blas.c - the single GEMM door: our NT kernel (gemm.c) or OpenBLAS, split over the
 * calling thread's pool (pool.h), plus the naive twin.
 *
 * Dispatch (docs/performance.md has the measurements behind it):
 * - C = A B^T with M <= GEMM_OWN_MAX_M rows on an AVX2/FMA CPU: gemm.c's kernel, which reads
 *   each weight once and packs nothing; OpenBLAS everywhere else ("stays where it wins"),
 * - except where OpenBLAS runs no AVX-512 kernel on a CPU that has AVX-512 (its DYNAMIC_ARCH
 *   falls back to the SSE3 "Prescott" kernels on CPUs it does not know, e.g. a Xeon of
 *   family 6 model 207 with OpenBLAS 0.3.21): there every GEMM of at least
 *   GENERAL_MIN_FLOPS (the training backward's) runs on the packed AVX-512 micro-kernel,
 *   B and A packed per call, each straight from its layout, into the pool's kept scratch
 *   (general_packed). CLIP_GEMM=packed forces that route wherever the AVX-512 kernel runs,
 *   CLIP_GEMM=openblas turns it off.
 * - With a pool of n > 1 threads current, the GEMM is cut into n slices of C's columns (or of
 *   its rows, when N is small and M is not), each slice run by one pool thread; OpenBLAS is
 *   then set to one thread so that the pool is the only set of working threads.
 * - Without a pool, one call in the calling thread: our kernel, or OpenBLAS with the thread
 *   count the host gave it. */
#include "blas.h"

#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "pool.h"

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

/* measured on the bench machine (docs/performance.md): OpenBLAS's AVX-512 kernel ties ours at
 * M = 50..77 and wins above; ours wins clearly only on small M (pooled rows, projections) */
enum { GEMM_OWN_MAX_M = 16 };

typedef struct {
  int ta, tb, M, N, K, lda, ldb, ldc, own, by_rows;
  float alpha, beta;
  const float *A, *B;
  float *C;
} gemm_job;

static void run_range(const gemm_job *g, int r0, int r1) {
  if (r1 <= r0) return;
  if (g->by_rows) { /* rows r0..r1 of C */
    const float *A = g->ta ? g->A + r0 : g->A + (size_t)r0 * g->lda;
    float *C = g->C + (size_t)r0 * g->ldc;
    if (g->own)
      ct_gemm_nt(r1 - r0, g->N, g->K, g->alpha, A, g->lda, g->B, g->ldb, g->beta, C, g->ldc, 0, g->N);
    else
      cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans,
                  r1 - r0, g->N, g->K, g->alpha, A, g->lda, g->B, g->ldb, g->beta, C, g->ldc);
  } else { /* columns r0..r1 of C */
    if (g->own) {
      ct_gemm_nt(g->M, g->N, g->K, g->alpha, g->A, g->lda, g->B, g->ldb, g->beta, g->C, g->ldc, r0, r1);
    } else {
      const float *B = g->tb ? g->B + (size_t)r0 * g->ldb : g->B + r0;
      cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans,
                  g->M, r1 - r0, g->K, g->alpha, g->A, g->lda, B, g->ldb, g->beta, g->C + r0, g->ldc);
    }
  }
}

static void gemm_part(void *ctx, int tid, int nt) {
  const gemm_job *g = ctx;
  int total = g->by_rows ? g->M : g->N, q = g->own && !g->by_rows ? 4 : 16;
  /* slices in units of q columns (the kernels' block widths) */
  int units = (total + q - 1) / q;
  int u0 = (int)((long)units * tid / nt), u1 = (int)((long)units * (tid + 1) / nt);
  int r0 = u0 * q, r1 = u1 * q < total ? u1 * q : total;
  if (g->by_rows) { /* rows need no alignment */
    r0 = (int)((long)total * tid / nt);
    r1 = (int)((long)total * (tid + 1) / nt);
  }
  run_range(g, r0, r1);
}

static int blas_single; /* OpenBLAS was set to one thread by us */

/* CLIP_GEMM=openblas in the environment (read once) sends every GEMM to OpenBLAS: for
 * benchmarks comparing the two (bench/, docs/performance.md). */
static int own_allowed(void) {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("CLIP_GEMM");
    v = !(e && !strcmp(e, "openblas")) && ct_gemm_available();
  }
  return v;
}

static int general_packed(int ta, int tb, int M, int N, int K, float alpha, const float *A,
                          int lda, const float *B, int ldb, float beta, float *C, int ldc);

void ct_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        float *c = &C[(size_t)i * ldc + j];
        *c = beta == 0.0f ? 0.0f : beta * *c;
      }
    return;
  }
  gemm_job g = {ta, tb, M, N, K, lda, ldb, ldc, 0, 0, alpha, beta, A, B, C};
  g.own = !ta && tb && M <= GEMM_OWN_MAX_M && own_allowed();
  if (!g.own && general_packed(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) == 0) return;
  ct_pool *p = ct_pool_current();
  int nt = ct_pool_size(p);
  double flops = 2.0 * M * N * K;
  if (nt > 1 && flops >= 2e5) {
    if (!blas_single) {
      openblas_set_num_threads(1);
      blas_single = 1;
    }
    g.by_rows = N < 64 * nt && M >= 2 * N;
    ct_pool_run(p, gemm_part, &g);
  } else {
    if (nt > 1 && !blas_single) {
      openblas_set_num_threads(1);
      blas_single = 1;
    }
    run_range(&g, 0, N);
  }
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

/* ---------------------------------------------------------------- packed weights */

static void *alloc64(size_t floats) {
  return aligned_alloc(64, (floats * sizeof(float) + 63) & ~(size_t)63);
}

typedef struct {
  int M, N, K, lda, ldc, nout, npan, kind, isa, ta;
  float alpha, beta;
  const float *A;
  const void *const *P;
  float *const *C;
  const float *const *bias;
  float *apa;          /* A packed once for all threads (NULL: each packs its own) */
  ct_tile_fn fn;       /* emit (out_apa set): ct_gemm_packed_emit's transform and target */
  void *ctx;
  float *out_apa;
  /* the chain's second GEMM (out_apa set): C2 = out_apa W2^T + bias2 + beta2 C2, N2 x N */
  const void *P2;
  const float *bias2;
  float *C2;
  int N2, npan2, ldc2;
  float beta2;
  atomic_int arrived;  /* threads done packing their share of A */
  atomic_int emitted;  /* threads done with the chain's first GEMM */
} packed_job;

/* Threads split a packed GEMM's rows, not its panels, where each gets at least ROWS_MIN rows
 * (CLIP_PACKED_ROWS in the environment sets it, 0 turns it off): each packs and runs its own
 * rows against every panel, so no thread waits for another's packing (and the MLP chain's
 * second GEMM for another's first), and each packs half the rows it would read otherwise. The
 * weights are still read once per row block (MC rows) of the input either way. Below that
 * (a batch of one image: 50 rows) the panels are split: each thread reads half the weights.
 * The same values either way (a C element's sum does not depend on which rows share its
 * micro-block). Measured on ViT-B/32, 2 threads (docs/performance.md): image batch 32
 * +2.9 %, text 32 x 77 +6.5 %; at batch 1 split into 25-row halves, -15 %. */
enum { ROWS_MIN = 100 };
/* a count from the environment variable name (def when unset or empty; negative: 0) */
static int env_count(const char *name, int def) {
  const char *e = getenv(name);
  int v = e && *e ? atoi(e) : def;
  return v < 0 ? 0 : v;
}

static int rows_min(void) {
  static int v = -1;
  if (v < 0) v = env_count("CLIP_PACKED_ROWS", ROWS_MIN);
  return v;
}

static int rows_split(int M, int nt) {
  return nt > 1 && rows_min() > 0 && M >= (long)rows_min() * nt;
}

/* a spinning wait (then yielding) until *n reaches nt */
static void wait_all(atomic_int *n, int nt) {
  /* spin briefly, then yield: a thread that lost its core (more threads than cores: other
   * work of the host, MPI ranks oversubscribed) gets it back instead of watching us spin */
  for (int spins = 0; atomic_load_explicit(n, memory_order_acquire) < nt; spins++) {
    if (spins < CT_POOL_SPIN) ct_cpu_relax();
    else sched_yield();
  }
}

/* Output r for rows m0 .. m0+m (packed at apa; A: those rows unpacked, read where apa is
 * NULL), panels p0 .. p1: into C[r], or for the chain emitted into out (the rows' part of
 * out_apa) */
static void run_out(const packed_job *g, int r, int m0, int m, const float *A, const float *apa,
                    float *out, int p0, int p1) {
  const float *bias = g->bias ? g->bias[r] : NULL;
  if (out)
    ct_gemm_packed_emit(g->isa, m, g->N, g->K, A, g->lda, apa, g->P[r], g->kind, bias, g->fn,
                        g->ctx, out, p0, p1);
  else
    ct_gemm_packed_isa(g->isa, m, g->N, g->K, g->alpha, A, g->lda, apa, g->P[r], g->kind,
                       g->beta, bias, g->C[r] + (size_t)m0 * g->ldc, g->ldc, p0, p1);
}

/* The chain's second GEMM for rows m0 .. m0+m (their fc1 tiles packed at out), panels p0 .. p1
 * of N2 */
static void run_second(const packed_job *g, int m0, int m, const float *out, int p0, int p1) {
  ct_gemm_packed_isa(g->isa, m, g->N2, g->N, 1.0f, NULL, 0, out, g->P2, g->kind, g->beta2,
                     g->bias2, g->C2 + (size_t)m0 * g->ldc2, g->ldc2, p0, p1);
}

/* Rows split: thread tid's rows m0 .. m0+mt, packed into its own part of apa (and, for the
 * chain, of out_apa): ct_pack_a_floats is linear in the rows, so the parts of rows m0 .. lie
 * where a packing of all M rows would put rows m0 .. */
static void packed_rows(packed_job *g, int tid, int nt) {
  int m0 = (int)((long)g->M * tid / nt), mt = (int)((long)g->M * (tid + 1) / nt) - m0;
  if (mt <= 0) return;
  float *apa = g->apa + ct_pack_a_floats(m0, g->K);
  float *out = g->out_apa ? g->out_apa + ct_pack_a_floats(m0, g->N) : NULL;
  ct_pack_a(g->isa, mt, g->K, g->ta ? g->A + m0 : g->A + (size_t)m0 * g->lda, g->lda, g->ta,
            apa, 0, ct_pack_a_blocks(mt, g->K));
  for (int r = 0; r < g->nout; r++) run_out(g, r, m0, mt, NULL, apa, out, 0, g->npan);
  if (out) run_second(g, m0, mt, out, 0, g->npan2);
}

static void packed_part(void *ctx, int tid, int nt) {
  packed_job *g = ctx;
  if (g->apa && rows_split(g->M, nt)) {
    packed_rows(g, tid, nt);
    return;
  }
  if (g->apa) { /* pack a share of A's row blocks, then wait for the others' */
    int nb = ct_pack_a_blocks(g->M, g->K);
    ct_pack_a(g->isa, g->M, g->K, g->A, g->lda, g->ta, g->apa, (int)((long)nb * tid / nt),
              (int)((long)nb * (tid + 1) / nt));
    atomic_fetch_add_explicit(&g->arrived, 1, memory_order_acq_rel);
    wait_all(&g->arrived, nt);
  }
  int total = g->nout * g->npan;
  int u0 = (int)((long)total * tid / nt), u1 = (int)((long)total * (tid + 1) / nt);
  for (int r = 0; r < g->nout; r++) {
    int lo = u0 > r * g->npan ? u0 : r * g->npan;
    int hi = u1 < (r + 1) * g->npan ? u1 : (r + 1) * g->npan;
    if (hi > lo)
      run_out(g, r, 0, g->M, g->A, g->apa, g->out_apa, lo - r * g->npan, hi - r * g->npan);
  }
  if (g->out_apa) { /* the chain's second GEMM reads every thread's tiles */
    atomic_fetch_add_explicit(&g->emitted, 1, memory_order_acq_rel);
    wait_all(&g->emitted, nt);
    run_second(g, 0, g->M, g->out_apa, (int)((long)g->npan2 * tid / nt),
               (int)((long)g->npan2 * (tid + 1) / nt));
  }
}

void ct_sgemm_packed(int M, int N, int K, const float *A, int lda, int nout,
                     const void *const *P, int kind, const float *const *bias, float *const *C,
                     int ldc, float beta) {
  ct_sgemm_packed_isa(ct_gemm_packed_kernel(), M, N, K, A, lda, nout, P, kind, bias, C, ldc, beta);
}

static void packed_run(int isa, int M, int N, int K, float alpha, const float *A, int lda,
                       int ta, float *apa, int nout, const void *const *P, int kind,
                       const float *const *bias, float *const *C, int ldc, float beta);

void ct_sgemm_packed_isa(int isa, int M, int N, int K, const float *A, int lda, int nout,
                         const void *const *P, int kind, const float *const *bias,
                         float *const *C, int ldc, float beta) {
  packed_run(isa, M, N, K, 1.0f, A, lda, 0, NULL, nout, P, kind, bias, C, ldc, beta);
}

/* apa: room for A packed (ct_pack_a_floats(M, K)), required when ta (A given transposed);
 * NULL: the pool's scratch when the pool runs it, else each block packed as it goes */
static void packed_go(packed_job *g);

static void packed_run(int isa, int M, int N, int K, float alpha, const float *A, int lda,
                       int ta, float *apa, int nout, const void *const *P, int kind,
                       const float *const *bias, float *const *C, int ldc, float beta) {
  if (M <= 0 || N <= 0 || nout <= 0) return;
  packed_job g = {.M = M, .N = N, .K = K, .lda = lda, .ldc = ldc, .nout = nout,
                  .npan = (N + PK_NR - 1) / PK_NR, .kind = kind, .isa = isa, .ta = ta,
                  .alpha = alpha, .beta = beta, .A = A, .P = P, .C = C, .bias = bias, .apa = apa};
  packed_go(&g);
}

void ct_sgemm_packed_chain(int M, int N, int K, const float *A, int lda, const void *P,
                           const float *bias, ct_tile_fn fn, void *ctx, float *out_apa, int N2,
                           const void *P2, const float *bias2, float *C2, int ldc2, float beta2,
                           int kind) {
  if (M <= 0 || N <= 0 || N2 <= 0) return;
  const void *const Pr[1] = {P};
  const float *const br[1] = {bias};
  packed_job g = {.M = M, .N = N, .K = K, .lda = lda, .nout = 1, .npan = (N + PK_NR - 1) / PK_NR,
                  .kind = kind, .isa = ct_gemm_packed_kernel(), .alpha = 1.0f, .A = A, .P = Pr,
                  .bias = br, .fn = fn, .ctx = ctx, .out_apa = out_apa, .P2 = P2,
                  .bias2 = bias2, .C2 = C2, .N2 = N2, .npan2 = (N2 + PK_NR - 1) / PK_NR,
                  .ldc2 = ldc2, .beta2 = beta2};
  packed_go(&g);
}

static void packed_go(packed_job *g) {
  atomic_init(&g->arrived, 0);
  atomic_init(&g->emitted, 0);
  ct_pool *p = ct_pool_current();
  /* A packed into the pool's scratch: with the panels split every thread needs all of it
   * (packed split over the threads), with the rows split each thread packs its own part of it
   * (packed_rows); with A whole ahead of time a single row block runs panel after panel
   * (gemm_packed.c). Without a pool (a C host's thread), into a buffer of this call's; only
   * if that allocation fails does the kernel pack each micro-block as it goes (slower, the
   * same results). */
  float *own = NULL;
  if (!g->apa) g->apa = ct_pool_scratch(p, ct_pack_a_floats(g->M, g->K) * sizeof(float));
  if (!g->apa) g->apa = own = alloc64(ct_pack_a_floats(g->M, g->K));
  if (ct_pool_size(p) > 1 && 2.0 * g->M * g->N * g->K * g->nout >= 2e5) ct_pool_run(p, packed_part, g);
  else packed_part(g, 0, 1);
  free(own);
}

int ct_packed_chunk(void) { return ct_packed_max_m() > 0 ? ct_packed_max_m() : 400; }

/* Rows per packed GEMM call (k_linear.c cuts larger inputs into chunks of this many rows).
 * Measured (docs/performance.md, one thread, weights cold): 300-400-row chunks run at
 * OpenBLAS's large-M speed, whole 1600-row calls 15-25 % slower (C is re-read per K block). */
int ct_packed_max_m(void) {
  static int v = -1;
  /* CLIP_PACKED_MAX_M in the environment, for the benchmarks (read once) */
  if (v < 0) v = env_count("CLIP_PACKED_MAX_M", 400);
  return v;
}

typedef struct {
  int N, K, ldb, half, kn; /* kn: B given {K, N} (pack_kn), else {N, K} */
  const void *B;
  void *P;
} pack_job;

static void pack_kn(int N, int K, const float *B, int ldb, float *P, int p0, int p1);

static void pack_part(void *ctx, int tid, int nt) {
  const pack_job *j = ctx;
  int np = (j->N + PK_NR - 1) / PK_NR;
  int p0 = (int)((long)np * tid / nt), p1 = (int)((long)np * (tid + 1) / nt);
  if (j->kn) pack_kn(j->N, j->K, j->B, j->ldb, j->P, p0, p1);
  else if (j->half) ct_pack_nt_h(j->N, j->K, j->B, j->ldb, j->P, p0, p1);
  else ct_pack_nt(j->N, j->K, j->B, j->ldb, j->P, p0, p1);
}

void ct_pack_parallel(int N, int K, const void *B, int ldb, void *P, int kind) {
  pack_job j = {N, K, ldb, kind != PK_F32, 0, B, P};
  ct_pool_run(ct_pool_current(), pack_part, &j);
}

/* Without a pool these set OpenBLAS's own threads (a C host's choice); the Lua module's
 * clip.set_num_threads resizes its pool instead (csrc/lua/l_pool.c). */
void ct_set_num_threads(int n) {
  if (n < 1) n = 1;
  openblas_set_num_threads(n);
  blas_single = n == 1;
}

int ct_get_num_threads(void) { return openblas_get_num_threads(); }

void ct_blas_single_thread(void) {
  if (!blas_single) {
    openblas_set_num_threads(1);
    blas_single = 1;
  }
}

/* ---------------------------------------------------------------- any GEMM on the packed kernel */

char *openblas_get_corename(void);

enum { GENERAL_MIN_FLOPS = 4000000 };

/* 1: general_packed takes the GEMMs it is given (decided once: CLIP_GEMM, the packed kernel,
 * the core OpenBLAS picked) */
int ct_gemm_general_packed(void) {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("CLIP_GEMM");
    int on;
    if (ct_gemm_packed_kernel() != PK_AVX512 || (e && !strcmp(e, "openblas"))) {
      on = 0;
    } else if (e && !strcmp(e, "packed")) {
      on = 1;
    } else { /* OpenBLAS's AVX-512 cores keep the GEMMs they win */
      const char *c = openblas_get_corename();
      on = !(c && (strcasestr(c, "skylakex") || strcasestr(c, "cooperlake") ||
                   strcasestr(c, "sapphire")));
    }
    v = on;
  }
  return v;
}

/* op(B) {K, N} into the panels of ct_pack_nt: panel p holds columns p*PK_NR.., k-major;
 * panels p0 .. p1-1 */
static void pack_kn(int N, int K, const float *B, int ldb, float *P, int p0, int p1) {
  for (int p = p0; p < p1; p++) {
    float *dst = P + (size_t)p * PK_NR * K;
    int n0 = p * PK_NR, nc = N - n0 < PK_NR ? N - n0 : PK_NR;
    for (int k = 0; k < K; k++) {
      float *d = dst + (size_t)k * PK_NR;
      memcpy(d, B + (size_t)k * ldb + n0, sizeof(float) * nc);
      if (nc < PK_NR) memset(d + nc, 0, sizeof(float) * (PK_NR - nc));
    }
  }
}

/* Buffers of general_packed: the pool's scratch slot (kept between calls, so that a training
 * step's GEMMs fault in no fresh pages), or, above SCRATCH_KEEP bytes, without a pool or in a
 * nested call, an allocation of this call (*own set: free it) */
enum { SCRATCH_KEEP = 64 << 20 };
static float *buffer(ct_pool *p, int slot, size_t floats, float **own) {
  float *b = floats * sizeof(float) <= SCRATCH_KEEP ? ct_pool_scratch_slot(p, slot, floats * sizeof(float)) : NULL;
  if (!b) b = *own = alloc64(floats);
  return b;
}

/* C = alpha op(A) op(B) + beta C on the packed micro-kernel, split over the pool as the
 * packed weights are (packed_run), in chunks of ct_packed_max_m() rows. 0: done; -1: not
 * taken (route off, too small, out of memory): the caller runs it as before. */
static int general_packed(int ta, int tb, int M, int N, int K, float alpha, const float *A,
                          int lda, const float *B, int ldb, float beta, float *C, int ldc) {
  if (2.0 * M * N * K < GENERAL_MIN_FLOPS || !ct_gemm_general_packed()) return -1;
  ct_pool *pool = ct_pool_current();
  int chunk = ct_packed_chunk();
  float *ownP = NULL, *ownA = NULL;
  float *P = buffer(pool, 1, ct_pack_nt_floats(N, K), &ownP);
  /* A given transposed is packed straight from its {K, M} layout (ct_pack_a's ta) */
  float *apa = ta && P ? buffer(pool, 2, ct_pack_a_floats(M < chunk ? M : chunk, K), &ownA) : NULL;
  if (!P || (ta && !apa)) {
    free(ownP);
    free(ownA);
    return -1;
  }
  pack_job j = {N, K, ldb, 0, !tb, B, P}; /* tb: B stored {N, K}, the packed weights' layout */
  ct_pool_run(pool, pack_part, &j);
  const void *pp = P;
  for (int i0 = 0; i0 < M; i0 += chunk) {
    int m = M - i0 < chunk ? M - i0 : chunk;
    float *c = C + (size_t)i0 * ldc;
    packed_run(PK_AVX512, m, N, K, alpha, ta ? A + i0 : A + (size_t)i0 * lda, lda, ta, apa, 1,
               &pp, PK_F32, NULL, &c, ldc, beta);
  }
  free(ownA);
  free(ownP);
  return 0;
}
