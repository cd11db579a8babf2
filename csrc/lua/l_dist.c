/* l_dist.c - MPI collectives for data-parallel training (clip.dist, lua/clip/dist.lua).
 *
 * Compiled into every build; the MPI calls exist only when the build defines
 * CLIP_MPI (`make MPI=1`, mk/dist.mk: mpi.h and libmpi through pkg-config ompi-c
 * or mpicc). A plain build neither includes mpi.h nor links libmpi: its
 * functions raise "clip.dist: this build has no MPI (rebuild with `make MPI=1`)".
 *
 * clip.core functions added here (ranks are 0-based, as MPI numbers them):
 *   dist_available() -> bool           built with MPI
 *   dist_init() -> rank, size          MPI_Init_thread(FUNNELED) once; later calls return the same
 *   dist_initialized() -> bool         init called and finalize not yet
 *   dist_rank(), dist_size()
 *   dist_barrier()
 *   dist_allreduce(t [, op]) -> t      in place; op "sum" (default), "max", "min", "prod", "avg"
 *   dist_allreduce_many(list [, op [, bucket_bytes]])
 *                                      every tensor of the list in place, packed into buckets of
 *                                      up to bucket_bytes (default 25 MiB, as torch DDP) so one
 *                                      MPI call carries many small gradients
 *   dist_all_gather(t) -> g, counts    the ranks' tensors stacked along dim 1 in rank order;
 *                                      row counts may differ, trailing dims must agree
 *                                      (checked); counts[r + 1] = rows of rank r
 *   dist_broadcast(t, root) -> t       in place, from rank root
 *   dist_abort([code])                 MPI_Abort on the world (ends every rank)
 *   dist_finalize()
 * Tensors are float32 and contiguous (every clip.Tensor is). Errors come back as
 * return codes (MPI_ERRORS_RETURN) and are raised naming the call. The module's
 * thread pool runs kernels only: every MPI call is made by the thread that
 * called MPI_Init_thread (MPI_THREAD_FUNNELED). */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lclip.h"
#include "l_tensor.h"

#ifndef CLIP_MPI

static int no_mpi(lua_State *L) {
  return luaL_error(L, "clip.dist: this build has no MPI (rebuild with `make MPI=1`; docs/distributed.md)");
}

static int d_available(lua_State *L) {
  lua_pushboolean(L, 0);
  return 1;
}

static int d_initialized(lua_State *L) {
  lua_pushboolean(L, 0);
  return 1;
}

void l_dist_open(lua_State *L) {
  static const char *const names[] = {"dist_init",      "dist_rank",           "dist_size",
                                      "dist_barrier",   "dist_allreduce",      "dist_allreduce_many",
                                      "dist_all_gather", "dist_broadcast",     "dist_abort",
                                      "dist_finalize",  NULL};
  for (int i = 0; names[i]; i++) {
    lua_pushcfunction(L, no_mpi);
    lua_setfield(L, -2, names[i]);
  }
  lua_pushcfunction(L, d_available);
  lua_setfield(L, -2, "dist_available");
  lua_pushcfunction(L, d_initialized);
  lua_setfield(L, -2, "dist_initialized");
}

#else /* CLIP_MPI */

#include <mpi.h>

static int d_check(lua_State *L, int rc, const char *what) {
  if (rc == MPI_SUCCESS) return 0;
  char msg[MPI_MAX_ERROR_STRING + 1];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
  msg[len] = 0;
  return luaL_error(L, "clip.dist.%s: MPI error %d: %s", what, rc, len ? msg : "(no description)");
}

static void d_need(lua_State *L, const char *what) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (!init || fin)
    luaL_error(L, "clip.dist.%s: MPI is not running (call clip.dist.init() first%s)", what,
               fin ? "; it was finalized" : "");
}

static int d_available(lua_State *L) {
  lua_pushboolean(L, 1);
  return 1;
}

static int d_initialized(lua_State *L) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  lua_pushboolean(L, init && !fin);
  return 1;
}

static int d_rank_size(int *rank, int *size) {
  int rc = MPI_Comm_rank(MPI_COMM_WORLD, rank);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_size(MPI_COMM_WORLD, size);
  return rc;
}

static int d_init(lua_State *L) {
  int init = 0, fin = 0;
  MPI_Finalized(&fin);
  if (fin) return luaL_error(L, "clip.dist.init: MPI was finalized in this process; it cannot start again");
  MPI_Initialized(&init);
  if (!init) {
    int provided = 0;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return luaL_error(L, "clip.dist.init: MPI_Init_thread failed (error %d)", rc);
    if (provided < MPI_THREAD_FUNNELED)
      return luaL_error(L, "clip.dist.init: the MPI library gives thread level %d, below MPI_THREAD_FUNNELED",
                        provided);
  }
  d_check(L, MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "init");
  int rank = 0, size = 1;
  d_check(L, d_rank_size(&rank, &size), "init");
  lua_pushinteger(L, rank);
  lua_pushinteger(L, size);
  return 2;
}

static int d_rank(lua_State *L) {
  d_need(L, "rank");
  int rank = 0, size = 1;
  d_check(L, d_rank_size(&rank, &size), "rank");
  lua_pushinteger(L, rank);
  return 1;
}

static int d_size(lua_State *L) {
  d_need(L, "size");
  int rank = 0, size = 1;
  d_check(L, d_rank_size(&rank, &size), "size");
  lua_pushinteger(L, size);
  return 1;
}

static int d_barrier(lua_State *L) {
  d_need(L, "barrier");
  d_check(L, MPI_Barrier(MPI_COMM_WORLD), "barrier");
  return 0;
}

/* op name -> MPI_Op; *avg set for "avg" (a sum divided by the ranks) */
static MPI_Op d_op(lua_State *L, int idx, const char *what, int *avg) {
  static const char *const names[] = {"sum", "max", "min", "prod", "avg", NULL};
  const char *s = luaL_optstring(L, idx, "sum");
  *avg = 0;
  for (int i = 0; names[i]; i++) {
    if (strcmp(s, names[i]) == 0) {
      switch (i) {
      case 1: return MPI_MAX;
      case 2: return MPI_MIN;
      case 3: return MPI_PROD;
      case 4: *avg = 1; return MPI_SUM;
      default: return MPI_SUM;
      }
    }
  }
  luaL_error(L, "clip.dist.%s: unknown op '%s' (sum, max, min, prod, avg)", what, s);
  return MPI_SUM;
}

static int d_count(lua_State *L, int64_t n, const char *what) {
  if (n > INT_MAX) luaL_error(L, "clip.dist.%s: %lld values are more than one MPI call carries", what, (long long)n);
  return (int)n;
}

static int d_allreduce(lua_State *L) {
  d_need(L, "allreduce");
  l_tensor *t = l_checktensor(L, 1);
  int avg;
  MPI_Op op = d_op(L, 2, "allreduce", &avg);
  l_tensor_writing(L, t);
  int n = d_count(L, t->numel, "allreduce");
  if (n > 0) d_check(L, MPI_Allreduce(MPI_IN_PLACE, t->data, n, MPI_FLOAT, op, MPI_COMM_WORLD), "allreduce");
  if (avg) {
    int size = 1;
    d_check(L, MPI_Comm_size(MPI_COMM_WORLD, &size), "allreduce");
    for (int64_t i = 0; i < t->numel; i++) t->data[i] /= (float)size;
  }
  lua_settop(L, 1);
  return 1;
}

/* The buffer of dist_allreduce_many: a userdata, so an error cannot leak it. */
static int d_allreduce_many(lua_State *L) {
  d_need(L, "allreduce_many");
  luaL_checktype(L, 1, LUA_TTABLE);
  int avg;
  MPI_Op op = d_op(L, 2, "allreduce_many", &avg);
  lua_Integer bucket_bytes = luaL_optinteger(L, 3, 25 << 20);
  if (bucket_bytes < (lua_Integer)sizeof(float)) luaL_error(L, "clip.dist.allreduce_many: bucket_bytes must be >= 4");
  int64_t cap = (int64_t)(bucket_bytes / (lua_Integer)sizeof(float));
  if (cap > INT_MAX) cap = INT_MAX;
  int size = 1;
  d_check(L, MPI_Comm_size(MPI_COMM_WORLD, &size), "allreduce_many");
  lua_Integer nt = luaL_len(L, 1);
  /* check every entry first */
  int64_t total = 0;
  for (lua_Integer i = 1; i <= nt; i++) {
    lua_geti(L, 1, i);
    l_tensor *t = l_totensor(L, -1);
    if (!t) luaL_error(L, "clip.dist.allreduce_many: entry %d is not a Tensor", (int)i);
    l_tensor_writing(L, t);
    total += t->numel;
    lua_pop(L, 1);
  }
  int64_t bufn = total < cap ? total : cap;
  float *buf = bufn > 0 ? lua_newuserdatauv(L, (size_t)bufn * sizeof(float), 0) : NULL;
  int buf_idx = lua_gettop(L);
  /* walk the tensors, packing pieces into the bucket; a tensor larger than a
   * bucket is split over several */
  int64_t fill = 0;
  struct piece {
    float *p;
    int64_t n;
  } pieces[256];
  int np = 0;
  lua_Integer i = 1;
  int64_t off = 0; /* offset into tensor i */
  while (i <= nt || fill > 0) {
    int flush = 0;
    if (i <= nt) {
      lua_geti(L, 1, i);
      l_tensor *t = l_totensor(L, -1);
      lua_pop(L, 1); /* still referenced by the list */
      int64_t left = t->numel - off;
      int64_t take = left < bufn - fill ? left : bufn - fill;
      if (take > 0) {
        memcpy(buf + fill, t->data + off, (size_t)take * sizeof(float));
        pieces[np].p = t->data + off;
        pieces[np].n = take;
        np++;
        fill += take;
        off += take;
      }
      if (off >= t->numel) {
        i++;
        off = 0;
      }
      if (fill == bufn || np == (int)(sizeof pieces / sizeof pieces[0]) || i > nt) flush = 1;
    } else {
      flush = 1;
    }
    if (flush && fill > 0) {
      d_check(L, MPI_Allreduce(MPI_IN_PLACE, buf, (int)fill, MPI_FLOAT, op, MPI_COMM_WORLD), "allreduce_many");
      if (avg)
        for (int64_t k = 0; k < fill; k++) buf[k] /= (float)size;
      int64_t at = 0;
      for (int k = 0; k < np; k++) {
        memcpy(pieces[k].p, buf + at, (size_t)pieces[k].n * sizeof(float));
        at += pieces[k].n;
      }
      fill = 0;
      np = 0;
    }
  }
  (void)buf_idx;
  return 0;
}

static int d_all_gather(lua_State *L) {
  d_need(L, "all_gather");
  l_tensor *t = l_checktensor(L, 1);
  if (t->ndim < 1) return luaL_error(L, "clip.dist.all_gather: expected a tensor with rows, got a scalar");
  int rank = 0, size = 1;
  d_check(L, d_rank_size(&rank, &size), "all_gather");
  int64_t row = 1;
  for (int d = 1; d < t->ndim; d++) row *= t->shape[d];
  /* every rank's row count and trailing shape, to check they agree */
  int64_t *meta = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)(CT_MAXDIM + 1) * (size_t)size, 0);
  int64_t mine[CT_MAXDIM + 1] = {0};
  mine[0] = t->ndim;
  for (int d = 0; d < t->ndim; d++) mine[d + 1] = t->shape[d];
  d_check(L, MPI_Allgather(mine, CT_MAXDIM + 1, MPI_INT64_T, meta, CT_MAXDIM + 1, MPI_INT64_T, MPI_COMM_WORLD),
          "all_gather");
  int64_t rows = 0;
  for (int r = 0; r < size; r++) {
    int64_t *m = meta + (size_t)r * (CT_MAXDIM + 1);
    int same = m[0] == t->ndim;
    for (int d = 1; same && d < t->ndim; d++) same = m[d + 1] == t->shape[d];
    if (!same) {
      char buf[96];
      return luaL_error(L, "clip.dist.all_gather: rank %d's tensor does not match rank %d's %s beyond the rows", r,
                        rank, l_shape_str(t, buf, sizeof buf));
    }
    rows += m[1];
  }
  int *counts = lua_newuserdatauv(L, sizeof(int) * 2 * (size_t)size, 0);
  int *displs = counts + size;
  int64_t at = 0;
  for (int r = 0; r < size; r++) {
    int64_t n = meta[(size_t)r * (CT_MAXDIM + 1) + 1] * row;
    if (n > INT_MAX || at > INT_MAX) return luaL_error(L, "clip.dist.all_gather: more values than one MPI call carries");
    counts[r] = (int)n;
    displs[r] = (int)at;
    at += n;
  }
  int64_t shape[CT_MAXDIM];
  memcpy(shape, t->shape, sizeof shape);
  shape[0] = rows;
  l_tensor *g = l_tensor_new(L, t->ndim, shape);
  d_check(L, MPI_Allgatherv(t->data, counts[rank], MPI_FLOAT, g->data, counts, displs, MPI_FLOAT, MPI_COMM_WORLD),
          "all_gather");
  lua_createtable(L, size, 0);
  for (int r = 0; r < size; r++) {
    lua_pushinteger(L, (lua_Integer)meta[(size_t)r * (CT_MAXDIM + 1) + 1]);
    lua_rawseti(L, -2, r + 1);
  }
  return 2;
}

static int d_broadcast(lua_State *L) {
  d_need(L, "broadcast");
  l_tensor *t = l_checktensor(L, 1);
  lua_Integer root = luaL_optinteger(L, 2, 0);
  int rank = 0, size = 1;
  d_check(L, d_rank_size(&rank, &size), "broadcast");
  if (root < 0 || root >= size) return luaL_error(L, "clip.dist.broadcast: root %d is not a rank (0..%d)", (int)root, size - 1);
  /* the sizes must agree, or the receivers would read past their tensors */
  long long n = (long long)t->numel, root_n = n;
  d_check(L, MPI_Bcast(&root_n, 1, MPI_LONG_LONG, (int)root, MPI_COMM_WORLD), "broadcast");
  if (root_n != n)
    return luaL_error(L, "clip.dist.broadcast: rank %d has %lld values, root %d has %lld", rank, n, (int)root, root_n);
  if (rank != root) l_tensor_writing(L, t);
  if (n > 0) d_check(L, MPI_Bcast(t->data, d_count(L, n, "broadcast"), MPI_FLOAT, (int)root, MPI_COMM_WORLD), "broadcast");
  lua_settop(L, 1);
  return 1;
}

static int d_abort(lua_State *L) {
  d_need(L, "abort");
  int code = (int)luaL_optinteger(L, 1, 1);
  MPI_Abort(MPI_COMM_WORLD, code);
  return 0;
}

static int d_finalize(lua_State *L) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) d_check(L, MPI_Finalize(), "finalize");
  return 0;
}

void l_dist_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"dist_available", d_available},
                                 {"dist_initialized", d_initialized},
                                 {"dist_init", d_init},
                                 {"dist_rank", d_rank},
                                 {"dist_size", d_size},
                                 {"dist_barrier", d_barrier},
                                 {"dist_allreduce", d_allreduce},
                                 {"dist_allreduce_many", d_allreduce_many},
                                 {"dist_all_gather", d_all_gather},
                                 {"dist_broadcast", d_broadcast},
                                 {"dist_abort", d_abort},
                                 {"dist_finalize", d_finalize},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}

#endif /* CLIP_MPI */
