/* gemm.h - our own sgemm for the shape the forward passes use most:
 * C[M,N] = alpha * A[M,K] B[N,K]^T + beta * C  (row-major, "NT": both operands K-contiguous,
 * as linear_forward's inp x weight^T and attention's q k^T).
 * No packing: a 3x4 block of dot products runs over K with AVX2/FMA, the 4 weight rows held in
 * L1 while the 3 input rows stream from L2, so every weight is read from memory once per call;
 * at small M (ViT-B/32 at batch 1 has M = 50) that beats packing GEMMs, whose packing of B costs
 * as much as the arithmetic. See docs/performance.md. */
#ifndef CT_GEMM_H
#define CT_GEMM_H

#include <stddef.h>
#include <stdint.h>

/* 1 when this CPU runs the AVX2/FMA kernel (checked once, at run time). */
int ct_gemm_available(void);

/* Columns n0 .. n1-1 of C only (so threads can split N); requires ct_gemm_available().
 * With beta == 0, C is not read. */
void ct_gemm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                int ldb, float beta, float *C, int ldc, int n0, int n1);

/* Its naive twin (the oracle of spec/gemm_spec.lua) is the door's: ct_sgemm_ref(0, 1, ...)
 * (blas.h), plain loops, double accumulation. */

/* Packed weights (gemm_packed.c): B[N,K] in panels of PK_NR rows, k-major within a panel,
 * one layout for every micro-kernel: AVX-512 (12 x 32) and AVX2 + FMA (6 x 16, half a panel)
 * on x86-64, NEON (2 x 32) on aarch64.
 * ct_gemm_packed_kernel(): the one this CPU runs, chosen once at run time. x86-64: PK_AVX512
 * when the CPU has AVX-512F and CLIP_NO_AVX512 is not set, else PK_AVX2 when it has AVX2, FMA
 * and F16C, CLIP_NO_AVX2 is not set and CLIP_PACKED_AVX2 is not 0, else 0 (nothing is
 * packed; OpenBLAS). aarch64: PK_NEON unless CLIP_NO_AVX512 is set, else 0.
 * ct_gemm_packed_available(): ct_gemm_packed_kernel() != 0. */
enum { PK_NR = 32 };
enum { PK_AVX2 = 1, PK_AVX512 = 2, PK_NEON = 3 };
int ct_gemm_packed_kernel(void);
/* 1 when this CPU (and the environment) allows micro-kernel isa (PK_AVX2, PK_AVX512 or
 * PK_NEON); CLIP_PACKED_AVX2 does not matter here */
int ct_gemm_packed_runs(int isa);
/* element types of a packed panel: float, or IEEE half / bfloat16 converted on the fly */
enum { PK_F32 = 0, PK_F16 = 1, PK_BF16 = 2 };
/* bytes per packed element of a kind */
static inline size_t ct_pack_elem_size(int kind) { return kind == PK_F32 ? 4 : 2; }
int ct_gemm_packed_available(void);
/* floats needed for the packed copy of an N x K matrix (panels padded to PK_NR rows) */
size_t ct_pack_nt_floats(int N, int K);
/* pack panels p0 .. p1-1 of B (panel p = rows 32p .. 32p+31) into P */
void ct_pack_nt(int N, int K, const float *B, int ldb, float *P, int p0, int p1);
/* the same for 16-bit elements (F16 or BF16 bits, copied unchanged); ct_pack_nt_floats(N, K)
 * elements */
void ct_pack_nt_h(int N, int K, const uint16_t *B, int ldb, uint16_t *P, int p0, int p1);
/* C = alpha A B^T + beta C for the columns of panels p0 .. p1-1; P from ct_pack_nt (kind
 * PK_F32) or ct_pack_nt_h (PK_F16, PK_BF16), 64-byte aligned; requires
 * ct_gemm_packed_available(). With beta == 0, C is not read. Every kind runs the same FMAs
 * in the same order on the (exactly) converted values. */
void ct_gemm_packed(int M, int N, int K, float alpha, const float *A, int lda, const void *P,
                    int kind, float beta, float *C, int ldc, int p0, int p1);
/* A packed once for every thread of a GEMM (blas.c): ct_pack_a_floats(M, K) floats; units
 * b0 .. b1-1 of ct_pack_a_blocks(M, K) (a K block of a row block each, so threads can split
 * the packing of any input), then
 * ct_gemm_packed_pa reads apa instead of packing A itself (apa NULL: it packs). ta: A is
 * given transposed, stored {K, M} with row stride lda (the weight gradient's dout^T). */
size_t ct_pack_a_floats(int M, int K);
int ct_pack_a_blocks(int M, int K);
void ct_pack_a(int isa, int M, int K, const float *A, int lda, int ta, float *apa, int b0, int b1);
/* ... and adds bias[j] (NULL: none) to column j: C = alpha A B^T + bias + beta C */
void ct_gemm_packed_pa(int M, int N, int K, float alpha, const float *A, int lda,
                       const float *apa, const void *P, int kind, float beta, const float *bias,
                       float *C, int ldc, int p0, int p1);
/* ... on micro-kernel isa (PK_AVX2, PK_AVX512 or PK_NEON; ct_gemm_packed_runs(isa) required),
 * not the selected one: the specs test each */
void ct_gemm_packed_isa(int isa, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *apa, const void *P, int kind, float beta, const float *bias,
                        float *C, int ldc, int p0, int p1);

/* The product not stored as C but handed on as the packed input of a following GEMM (the MLP's
 * fc1 -> activation -> fc2 without fc1's output in memory): X = A B^T + bias is computed tile
 * by tile (a micro-block's rows x a panel's 32 columns, row stride PK_NR), each tile passed
 * through fn(ctx, values, n) in place (NULL: none), then written where ct_pack_a(isa, M, N,
 * X, ...) would put it in out_apa (ct_pack_a_floats(M, N) floats), for the columns of panels
 * p0 .. p1-1. The next GEMM (K = N, the same M and isa) reads out_apa as its apa: the same
 * values as storing X, running fn over it and packing it. Requires ct_gemm_packed_emit_ok(N,
 * K): A in one K block, and each K block of N starting on a panel. apa: A packed as for
 * ct_gemm_packed_pa (NULL: each micro-block packed as it is reached). */
typedef void (*ct_tile_fn)(void *ctx, float *x, int n);
int ct_gemm_packed_emit_ok(int N, int K);
void ct_gemm_packed_emit(int isa, int M, int N, int K, const float *A, int lda, const float *apa,
                         const void *P, int kind, const float *bias, ct_tile_fn fn, void *ctx,
                         float *out_apa, int p0, int p1);

#endif
