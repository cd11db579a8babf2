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
 *   dist_set_timeout(s), dist_get_timeout() -> s
 *                                      the limit of every collective below (seconds; 0: none)
 *   dist_broken() -> nil | what        the collective that timed out or failed mid-flight
 *   dist_barrier()
 *   dist_allreduce(t [, op]) -> t      in place; op "sum" (default), "max", "min", "prod", "avg"
 *   dist_allreduce_many(list [, op [, bucket_bytes]])
 *                                      every tensor of the list in place, packed into buckets of
 *                                      up to bucket_bytes (default 25 MiB, as torch DDP) so one
 *                                      MPI call carries many small gradients
 *   dist_all_gather(t) -> g, counts    the ranks' tensors stacked along dim 1 in rank order;
 *                                      row counts may differ, trailing dims must agree
 *                                      (checked); counts[r + 1] = rows of rank r
 *   dist_reduce_scatter(t, counts) -> s
 *                                      the sum over ranks of t {R, ...} (R = sum of counts), of
 *                                      which rank r gets rows counts[1] + .. + counts[r] + 1 ..
 *                                      (counts[r + 1] rows); the shapes and counts are checked
 *   dist_broadcast(t, root) -> t       in place, from rank root
 *   dist_all_gather_string(s) -> {s0, s1, ...}
 *   dist_broadcast_string(s, root) -> s
 *   dist_abort([code])                 MPI_Abort on the world (ends every rank)
 *   dist_finalize() -> true | false, msg
 *   dist_checksum(list) -> hex         (every build) FNV-1a over the list's tensors (shape, then
 *                                      the floats' bits) and strings (length, then the bytes),
 *                                      32 bits at a time: the same on every machine
 * Tensors are float32 and contiguous (every clip.Tensor is).
 *
 * Faults. Every collective is nonblocking (MPI_I*) and its request is polled with
 * MPI_Test against a deadline (the timeout), so a rank whose peer died, hangs or
 * entered another collective raises "clip.dist.<call>: rank r of n timed out after
 * x s ..." instead of waiting forever. MPI errors come back as return codes
 * (MPI_ERRORS_RETURN on the world) and are raised the same way. A request still in
 * flight cannot be cancelled (MPI has no cancel for collectives): the call's
 * arguments and buffers are then anchored in the registry for the life of the
 * process, so MPI never writes into freed memory, and every later collective is
 * refused (MPI's state is undefined after a failed collective). Nothing here ends
 * the process: the error unwinds through Lua; the caller ends the job
 * (clip.dist.run aborts it; a rank that simply exits makes mpirun end the others).
 *
 * Threads: the module's thread pool runs kernels only: every MPI call is made by
 * the thread that called MPI_Init_thread (MPI_THREAD_FUNNELED). */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lauxlib.h"
#include "lclip.h"
#include "l_tensor.h"

/* FNV-1a, 64 bits, over 32-bit words: the tensors' ndim and shapes, then their floats' bits */
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static uint64_t fnv_word(uint64_t h, uint32_t w) { return (h ^ w) * FNV_PRIME; }

static int d_checksum(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  uint64_t h = FNV_OFFSET;
  lua_Integer n = luaL_len(L, 1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    if (lua_type(L, -1) == LUA_TSTRING) { /* its length, then its bytes 4 at a time, zero-padded */
      size_t len;
      const char *str = lua_tolstring(L, -1, &len);
      h = fnv_word(h, (uint32_t)(len & 0xffffffffu));
      h = fnv_word(h, (uint32_t)((uint64_t)len >> 32));
      for (size_t k = 0; k < len; k += 4) {
        uint32_t w = 0;
        for (size_t j = 0; j < 4 && k + j < len; j++) w |= (uint32_t)(unsigned char)str[k + j] << (8 * j);
        h = fnv_word(h, w);
      }
      lua_pop(L, 1);
      continue;
    }
    l_tensor *t = l_totensor(L, -1);
    if (!t) return luaL_error(L, "clip.dist.checksum: entry %d is neither a Tensor nor a string", (int)i);
    h = fnv_word(h, (uint32_t)t->ndim);
    for (int d = 0; d < t->ndim; d++) {
      h = fnv_word(h, (uint32_t)((uint64_t)t->shape[d] & 0xffffffffu));
      h = fnv_word(h, (uint32_t)((uint64_t)t->shape[d] >> 32));
    }
    const uint32_t *w = (const uint32_t *)(const void *)t->data;
    for (int64_t k = 0; k < t->numel; k++) h = fnv_word(h, w[k]);
    lua_pop(L, 1);
  }
  char hex[17];
  snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
  lua_pushstring(L, hex);
  return 1;
}

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
  static const char *const names[] = {
      "dist_init",           "dist_rank",          "dist_size",       "dist_barrier",
      "dist_allreduce",      "dist_allreduce_many", "dist_all_gather", "dist_reduce_scatter",
      "dist_broadcast",      "dist_all_gather_string", "dist_broadcast_string", "dist_abort",
      "dist_finalize",       "dist_set_timeout",   "dist_get_timeout", "dist_broken",
      NULL};
  for (int i = 0; names[i]; i++) {
    lua_pushcfunction(L, no_mpi);
    lua_setfield(L, -2, names[i]);
  }
  lua_pushcfunction(L, d_available);
  lua_setfield(L, -2, "dist_available");
  lua_pushcfunction(L, d_initialized);
  lua_setfield(L, -2, "dist_initialized");
  lua_pushcfunction(L, d_checksum);
  lua_setfield(L, -2, "dist_checksum");
}

#else /* CLIP_MPI */

#include <mpi.h>

/* The limit of every collective, seconds (<= 0: none); set by clip.dist.init. */
static double g_timeout = 300.0;
/* "" or the message of the collective that failed with its request in flight */
static char g_broken[256];

static double d_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void d_rank_size(int *rank, int *size) {
  *rank = 0;
  *size = 1;
  if (MPI_Comm_rank(MPI_COMM_WORLD, rank) != MPI_SUCCESS) *rank = -1;
  if (MPI_Comm_size(MPI_COMM_WORLD, size) != MPI_SUCCESS) *size = -1;
}

static const char *d_errstr(int rc, char *msg) {
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
  msg[len] = 0;
  return len ? msg : "(no description)";
}

/* an MPI call that returned an error before any request was in flight */
static int d_check(lua_State *L, int rc, const char *what) {
  if (rc == MPI_SUCCESS) return 0;
  char msg[MPI_MAX_ERROR_STRING + 1];
  int rank, size;
  d_rank_size(&rank, &size);
  return luaL_error(L, "clip.dist.%s: rank %d of %d: MPI error %d: %s", what, rank, size, rc, d_errstr(rc, msg));
}

/* A request is (maybe) still in flight and the call fails: keep every value on the
 * stack (arguments, result tensors, scratch buffers) alive for good, refuse later
 * collectives, and raise msg. */
static int d_fail_inflight(lua_State *L, const char *msg) {
  snprintf(g_broken, sizeof g_broken, "%s", msg);
  int top = lua_gettop(L);
  if (lua_getfield(L, LUA_REGISTRYINDEX, "clip.dist.inflight") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, "clip.dist.inflight");
  }
  for (int i = 1; i <= top; i++) {
    lua_pushvalue(L, i);
    lua_rawseti(L, -2, (lua_Integer)luaL_len(L, -2) + 1);
  }
  lua_pop(L, 1);
  return luaL_error(L, "%s", msg);
}

/* Wait for req: MPI_Test polled against the deadline (spinning for the first 2 ms,
 * then sleeping 20 us doubling to 1 ms between tests, so a rank waiting for a slow
 * one leaves the cores to it). */
static void d_wait(lua_State *L, MPI_Request *req, const char *what) {
  char msg[512], err[MPI_MAX_ERROR_STRING + 1];
  int rank, size, rc;
  if (g_timeout <= 0) {
    rc = MPI_Wait(req, MPI_STATUS_IGNORE);
    if (rc == MPI_SUCCESS) return;
    d_rank_size(&rank, &size);
    snprintf(msg, sizeof msg, "clip.dist.%s: rank %d of %d: MPI error %d: %s", what, rank, size, rc, d_errstr(rc, err));
    d_fail_inflight(L, msg);
    return;
  }
  double t0 = d_now(), el = 0;
  long nap = 0;
  for (;;) {
    int flag = 0;
    rc = MPI_Test(req, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
      d_rank_size(&rank, &size);
      snprintf(msg, sizeof msg, "clip.dist.%s: rank %d of %d: MPI error %d after %.1f s: %s", what, rank, size, rc,
               d_now() - t0, d_errstr(rc, err));
      d_fail_inflight(L, msg);
      return;
    }
    if (flag) return;
    el = d_now() - t0;
    if (el >= g_timeout) {
      d_rank_size(&rank, &size);
      snprintf(msg, sizeof msg,
               "clip.dist.%s: rank %d of %d timed out after %.1f s (timeout %g s) waiting for the other ranks: "
               "one of them died, hangs or is in another call; this job cannot go on (the limit: "
               "clip.dist.init{timeout = s} or CLIP_DIST_TIMEOUT)",
               what, rank, size, el, g_timeout);
      d_fail_inflight(L, msg);
      return;
    }
    if (el > 0.002) {
      nap = nap ? (nap * 2 > 1000000 ? 1000000 : nap * 2) : 20000;
      struct timespec ts = {0, nap};
      nanosleep(&ts, NULL);
    }
  }
}

static void d_need(lua_State *L, const char *what) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (!init || fin)
    luaL_error(L, "clip.dist.%s: MPI is not running (call clip.dist.init() first%s)", what,
               fin ? "; it was finalized" : "");
  if (g_broken[0])
    luaL_error(L, "clip.dist.%s: refused: an earlier collective failed on this rank and MPI cannot be used again "
                  "in this process (end the job: clip.dist.abort); it was: %s", what, g_broken);
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
  d_check(L, MPI_Comm_rank(MPI_COMM_WORLD, &rank), "init");
  d_check(L, MPI_Comm_size(MPI_COMM_WORLD, &size), "init");
  lua_pushinteger(L, rank);
  lua_pushinteger(L, size);
  return 2;
}

static int d_rank(lua_State *L) {
  d_need(L, "rank");
  int rank = 0;
  d_check(L, MPI_Comm_rank(MPI_COMM_WORLD, &rank), "rank");
  lua_pushinteger(L, rank);
  return 1;
}

static int d_size(lua_State *L) {
  d_need(L, "size");
  int size = 1;
  d_check(L, MPI_Comm_size(MPI_COMM_WORLD, &size), "size");
  lua_pushinteger(L, size);
  return 1;
}

static int d_set_timeout(lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  if (!(s >= 0)) return luaL_error(L, "clip.dist.set_timeout: expected seconds >= 0 (0: no limit), got %f", (double)s);
  g_timeout = (double)s;
  return 0;
}

static int d_get_timeout(lua_State *L) {
  lua_pushnumber(L, g_timeout > 0 ? g_timeout : 0);
  return 1;
}

static int d_broken(lua_State *L) {
  if (g_broken[0]) lua_pushstring(L, g_broken);
  else lua_pushnil(L);
  return 1;
}

static int d_barrier(lua_State *L) {
  d_need(L, "barrier");
  MPI_Request req;
  d_check(L, MPI_Ibarrier(MPI_COMM_WORLD, &req), "barrier");
  d_wait(L, &req, "barrier");
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
  if (n > INT_MAX) luaL_error(L, "clip.dist.%s: %I values are more than one MPI call carries", what, (lua_Integer)n);
  return (int)n;
}

static int d_allreduce(lua_State *L) {
  d_need(L, "allreduce");
  l_tensor *t = l_checktensor(L, 1);
  int avg;
  MPI_Op op = d_op(L, 2, "allreduce", &avg);
  l_tensor_writing(L, t);
  int n = d_count(L, t->numel, "allreduce");
  if (n > 0) {
    MPI_Request req;
    d_check(L, MPI_Iallreduce(MPI_IN_PLACE, t->data, n, MPI_FLOAT, op, MPI_COMM_WORLD, &req), "allreduce");
    d_wait(L, &req, "allreduce");
  }
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
      MPI_Request req;
      d_check(L, MPI_Iallreduce(MPI_IN_PLACE, buf, (int)fill, MPI_FLOAT, op, MPI_COMM_WORLD, &req),
              "allreduce_many");
      d_wait(L, &req, "allreduce_many");
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
  return 0;
}

static int d_all_gather(lua_State *L) {
  d_need(L, "all_gather");
  l_tensor *t = l_checktensor(L, 1);
  if (t->ndim < 1) return luaL_error(L, "clip.dist.all_gather: expected a tensor with rows, got a scalar");
  int rank = 0, size = 1;
  d_rank_size(&rank, &size);
  int64_t row = 1;
  for (int d = 1; d < t->ndim; d++) row *= t->shape[d];
  /* every rank's row count and trailing shape, to check they agree */
  int64_t *meta = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)(CT_MAXDIM + 1) * (size_t)(size + 1), 0);
  int64_t *mine = meta + (size_t)size * (CT_MAXDIM + 1);
  memset(mine, 0, sizeof(int64_t) * (CT_MAXDIM + 1));
  mine[0] = t->ndim;
  for (int d = 0; d < t->ndim; d++) mine[d + 1] = t->shape[d];
  MPI_Request req;
  d_check(L, MPI_Iallgather(mine, CT_MAXDIM + 1, MPI_INT64_T, meta, CT_MAXDIM + 1, MPI_INT64_T, MPI_COMM_WORLD, &req),
          "all_gather");
  d_wait(L, &req, "all_gather");
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
  d_check(L,
          MPI_Iallgatherv(t->data, counts[rank], MPI_FLOAT, g->data, counts, displs, MPI_FLOAT, MPI_COMM_WORLD, &req),
          "all_gather");
  d_wait(L, &req, "all_gather");
  lua_createtable(L, size, 0);
  for (int r = 0; r < size; r++) {
    lua_pushinteger(L, (lua_Integer)meta[(size_t)r * (CT_MAXDIM + 1) + 1]);
    lua_rawseti(L, -2, r + 1);
  }
  return 2;
}

/* reduce_scatter(t {R, ...}, counts) -> the sum over ranks of this rank's rows */
static int d_reduce_scatter(lua_State *L) {
  d_need(L, "reduce_scatter");
  l_tensor *t = l_checktensor(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (t->ndim < 1) return luaL_error(L, "clip.dist.reduce_scatter: expected a tensor with rows, got a scalar");
  int rank = 0, size = 1;
  d_rank_size(&rank, &size);
  if (luaL_len(L, 2) != size)
    return luaL_error(L, "clip.dist.reduce_scatter: counts has %d entries, there are %d ranks", (int)luaL_len(L, 2),
                      size);
  int64_t row = 1;
  for (int d = 1; d < t->ndim; d++) row *= t->shape[d];
  int *counts = lua_newuserdatauv(L, sizeof(int) * (size_t)size, 0);
  int64_t rows = 0, mine = 0;
  double sig = 0; /* sum of (r + 1) * counts[r]: the counts' order, for the check */
  for (int r = 0; r < size; r++) {
    lua_geti(L, 2, r + 1);
    int isnum = 0;
    lua_Integer c = lua_tointegerx(L, -1, &isnum);
    lua_pop(L, 1);
    if (!isnum || c < 0) return luaL_error(L, "clip.dist.reduce_scatter: counts[%d] is not a row count", r + 1);
    if (c * row > INT_MAX) return luaL_error(L, "clip.dist.reduce_scatter: more values than one MPI call carries");
    counts[r] = (int)(c * row);
    if (r == rank) mine = c;
    rows += c;
    sig += (double)(r + 1) * (double)c;
  }
  if (rows != t->shape[0]) {
    char buf[96];
    return luaL_error(L, "clip.dist.reduce_scatter: counts add up to %I rows, the tensor is %s", (lua_Integer)rows,
                      l_shape_str(t, buf, sizeof buf));
  }
  /* every rank must pass the same shape and counts (MPI does not check); the buffers
   * in a userdata, which a timeout keeps alive (never the C stack: MPI may write later) */
  double *chk = lua_newuserdatauv(L, sizeof(double) * 8, 0), *agree = chk + 4;
  chk[0] = (double)t->shape[0];
  chk[1] = (double)row;
  chk[2] = sig;
  chk[3] = -chk[0] - chk[1] - chk[2];
  MPI_Request req;
  d_check(L, MPI_Iallreduce(chk, agree, 4, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD, &req), "reduce_scatter");
  d_wait(L, &req, "reduce_scatter");
  if (agree[0] != chk[0] || agree[1] != chk[1] || agree[2] != chk[2] || agree[3] != chk[3]) {
    char buf[96];
    return luaL_error(L, "clip.dist.reduce_scatter: the ranks pass different shapes or counts (rank %d: %s)", rank,
                      l_shape_str(t, buf, sizeof buf));
  }
  int64_t shape[CT_MAXDIM];
  memcpy(shape, t->shape, sizeof shape);
  shape[0] = mine;
  l_tensor *out = l_tensor_new(L, t->ndim, shape);
  d_check(L, MPI_Ireduce_scatter(t->data, out->data, counts, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req),
          "reduce_scatter");
  d_wait(L, &req, "reduce_scatter");
  return 1;
}

static int d_broadcast(lua_State *L) {
  d_need(L, "broadcast");
  l_tensor *t = l_checktensor(L, 1);
  lua_Integer root = luaL_optinteger(L, 2, 0);
  int rank = 0, size = 1;
  d_rank_size(&rank, &size);
  if (root < 0 || root >= size) return luaL_error(L, "clip.dist.broadcast: root %d is not a rank (0..%d)", (int)root, size - 1);
  lua_settop(L, 2);
  /* the sizes must agree, or the receivers would read past their tensors */
  long long *nb = lua_newuserdatauv(L, sizeof(long long), 0);
  long long n = (long long)t->numel;
  *nb = n;
  MPI_Request req;
  d_check(L, MPI_Ibcast(nb, 1, MPI_LONG_LONG, (int)root, MPI_COMM_WORLD, &req), "broadcast");
  d_wait(L, &req, "broadcast");
  if (*nb != n)
    return luaL_error(L, "clip.dist.broadcast: rank %d has %I values, root %d has %I", rank, (lua_Integer)n,
                      (int)root, (lua_Integer)*nb);
  if (rank != root) l_tensor_writing(L, t);
  if (n > 0) {
    d_check(L, MPI_Ibcast(t->data, d_count(L, n, "broadcast"), MPI_FLOAT, (int)root, MPI_COMM_WORLD, &req),
            "broadcast");
    d_wait(L, &req, "broadcast");
  }
  lua_settop(L, 1);
  return 1;
}

/* all_gather_string(s) -> {s of rank 0, s of rank 1, ...} */
static int d_all_gather_string(lua_State *L) {
  d_need(L, "all_gather_string");
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  int rank = 0, size = 1;
  d_rank_size(&rank, &size);
  if (len > INT_MAX) return luaL_error(L, "clip.dist.all_gather_string: the string is too long for one MPI call");
  int *lens = lua_newuserdatauv(L, sizeof(int) * 2 * ((size_t)size + 1), 0);
  int *displs = lens + size;
  int *mine = displs + size;
  *mine = (int)len;
  MPI_Request req;
  d_check(L, MPI_Iallgather(mine, 1, MPI_INT, lens, 1, MPI_INT, MPI_COMM_WORLD, &req), "all_gather_string");
  d_wait(L, &req, "all_gather_string");
  int64_t at = 0;
  for (int r = 0; r < size; r++) {
    if (lens[r] < 0 || at > INT_MAX) return luaL_error(L, "clip.dist.all_gather_string: more bytes than one MPI call carries");
    displs[r] = (int)at;
    at += lens[r];
  }
  if (at > INT_MAX) return luaL_error(L, "clip.dist.all_gather_string: more bytes than one MPI call carries");
  char *all = lua_newuserdatauv(L, (size_t)at + 1, 0);
  d_check(L,
          MPI_Iallgatherv(s, (int)len, MPI_CHAR, all, lens, displs, MPI_CHAR, MPI_COMM_WORLD, &req),
          "all_gather_string");
  d_wait(L, &req, "all_gather_string");
  lua_createtable(L, size, 0);
  for (int r = 0; r < size; r++) {
    lua_pushlstring(L, all + displs[r], (size_t)lens[r]);
    lua_rawseti(L, -2, r + 1);
  }
  return 1;
}

/* broadcast_string(s, root) -> root's s (s is read on root only) */
static int d_broadcast_string(lua_State *L) {
  d_need(L, "broadcast_string");
  lua_Integer root = luaL_optinteger(L, 2, 0);
  int rank = 0, size = 1;
  d_rank_size(&rank, &size);
  if (root < 0 || root >= size)
    return luaL_error(L, "clip.dist.broadcast_string: root %d is not a rank (0..%d)", (int)root, size - 1);
  size_t len = 0;
  const char *s = rank == root ? luaL_checklstring(L, 1, &len) : NULL;
  lua_settop(L, 2);
  long long *nb = lua_newuserdatauv(L, sizeof(long long), 0);
  *nb = (long long)len;
  MPI_Request req;
  d_check(L, MPI_Ibcast(nb, 1, MPI_LONG_LONG, (int)root, MPI_COMM_WORLD, &req), "broadcast_string");
  d_wait(L, &req, "broadcast_string");
  if (*nb < 0 || *nb > INT_MAX) return luaL_error(L, "clip.dist.broadcast_string: the string is too long for one MPI call");
  char *buf = lua_newuserdatauv(L, (size_t)*nb + 1, 0);
  if (rank == root) memcpy(buf, s, len);
  if (*nb > 0) {
    d_check(L, MPI_Ibcast(buf, (int)*nb, MPI_CHAR, (int)root, MPI_COMM_WORLD, &req), "broadcast_string");
    d_wait(L, &req, "broadcast_string");
  }
  lua_pushlstring(L, buf, (size_t)*nb);
  return 1;
}

static int d_abort(lua_State *L) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (!init || fin) return luaL_error(L, "clip.dist.abort: MPI is not running");
  int code = (int)luaL_optinteger(L, 1, 1);
  MPI_Abort(MPI_COMM_WORLD, code);
  return 0;
}

/* finalize() -> true, or false and why when a collective failed in flight (MPI_Finalize
 * could then wait forever for the other ranks: the process should end without it) */
static int d_finalize(lua_State *L) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (g_broken[0]) {
    lua_pushboolean(L, 0);
    lua_pushfstring(L, "clip.dist.finalize: skipped: a collective failed on this rank: %s", g_broken);
    return 2;
  }
  if (init && !fin) d_check(L, MPI_Finalize(), "finalize");
  lua_pushboolean(L, 1);
  return 1;
}

void l_dist_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"dist_available", d_available},
                                 {"dist_initialized", d_initialized},
                                 {"dist_init", d_init},
                                 {"dist_rank", d_rank},
                                 {"dist_size", d_size},
                                 {"dist_set_timeout", d_set_timeout},
                                 {"dist_get_timeout", d_get_timeout},
                                 {"dist_broken", d_broken},
                                 {"dist_barrier", d_barrier},
                                 {"dist_allreduce", d_allreduce},
                                 {"dist_allreduce_many", d_allreduce_many},
                                 {"dist_all_gather", d_all_gather},
                                 {"dist_reduce_scatter", d_reduce_scatter},
                                 {"dist_broadcast", d_broadcast},
                                 {"dist_all_gather_string", d_all_gather_string},
                                 {"dist_broadcast_string", d_broadcast_string},
                                 {"dist_abort", d_abort},
                                 {"dist_finalize", d_finalize},
                                 {"dist_checksum", d_checksum},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}

#endif /* CLIP_MPI */
