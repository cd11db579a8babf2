/* pool.h - a thread pool owned by a context object (never global).
 *
 * Kernels find the pool through a per-OS-thread "current pool" pointer: whoever owns a pool
 * (the Lua module keeps one per lua_State in the registry; a C host creates its own) makes it
 * current in the thread that calls the encoders, and the kernels split their work over it.
 * The Lua bindings make their state's pool current at the start of every heavy call
 * (l_pool_enter) and the C API sets none, so a pointer left behind by another state - or
 * by a state closed from another thread - is never used.
 * No current pool: everything runs in the calling thread (OpenBLAS keeps whatever thread count
 * the host gave it). Pool workers have no current pool, so nested calls run serially.
 *
 * While a pool is in use OpenBLAS is asked for one thread (blas.c): the pool is then the only
 * set of threads doing work, so two pools never busy-wait against each other on few cores.
 * Workers spin briefly (about 50 us) after a job, then sleep on a condition variable. */
#ifndef CT_POOL_H
#define CT_POOL_H

typedef struct ct_pool ct_pool;

/* fn(ctx, tid, nt): do part tid of nt (tid 0 runs in the caller). */
typedef void (*ct_pool_fn)(void *ctx, int tid, int nt);

/* A pool of n threads in all (n - 1 workers plus the caller); NULL when out of memory or
 * threads cannot be created (the caller then runs serially). n < 1 means 1. */
ct_pool *ct_pool_new(int n);
/* Stops and joins the workers; clears the calling thread's current pool if it was this one. */
void ct_pool_free(ct_pool *p);
int ct_pool_size(const ct_pool *p);
/* Run fn on every thread of p and wait for all. With p NULL, size 1, or a run already in
 * progress on p (a nested call), fn(ctx, 0, 1) runs in the caller. */
void ct_pool_run(ct_pool *p, ct_pool_fn fn, void *ctx);

/* A buffer of at least bytes owned by p (64-byte aligned, kept and reused until a larger one
 * is asked for or p is freed), for data the threads of one run share; NULL when p is NULL,
 * out of memory, or a run is in progress on p (a nested call: the outer job may be using it).
 * Call it from the thread that runs jobs on p. */
#include <stddef.h>
void *ct_pool_scratch(ct_pool *p, size_t bytes);
/* The same for buffer slot (0 .. CT_POOL_SCRATCH_SLOTS-1; ct_pool_scratch is slot 0), for a
 * caller that needs several at once (blas.c: A packed, B packed, per GEMM). NULL also for a
 * slot out of range. */
enum { CT_POOL_SCRATCH_SLOTS = 3 };
void *ct_pool_scratch_slot(ct_pool *p, int slot, size_t bytes);

/* The calling OS thread's current pool (NULL: none). */
ct_pool *ct_pool_current(void);
/* Make p current for the calling OS thread (NULL: none); returns the previous one. */
ct_pool *ct_pool_make_current(ct_pool *p);

/* Pause iterations a waiting thread spins before it sleeps or yields (some tens of
 * microseconds): the pool's workers and caller, blas.c's barrier. */
enum { CT_POOL_SPIN = 4000 };

/* A pause for spin loops (the pool's workers, blas.c's barrier). */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void ct_cpu_relax(void) { _mm_pause(); }
#else
static inline void ct_cpu_relax(void) {}
#endif

/* Threads a kernel may use: the current pool's size, or 1. */
int ct_pool_threads(void);

#endif
