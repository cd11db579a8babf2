/* l_ranking.c - the loops of the evaluators (clip.eval) that are too slow in Lua.
 *
 * clip.core functions added here:
 *   eval_ranks(scores {n,m}, targets) -> ranks
 *       targets[i]: the 1-based column of row i's match, or a list of columns
 *       when a row has several matches. ranks[i] is the 1-based position of
 *       the first match of row i when the row is sorted by descending score,
 *       equal scores keeping their column order (the lower column first, as
 *       Tensor:topk and Tensor:argmax). NaN sorts last.
 *   eval_rowdot(a {n,d}, b {n,d}) -> {n}: the row-wise dot products.
 * Wrong arguments raise, with shapes in the message. */
#include <math.h>
#include <stdint.h>

#include "l_tensor.h"
#include "lauxlib.h"
#include "lclip.h"
#include "lua.h"

/* ------------------------------------------------------------ core: no Lua */

static float key(float v) { return v != v ? -INFINITY : v; }

/* 1-based position of column p in the stable descending order of row[0..m) */
static int64_t rank_of(const float *row, int64_t m, int64_t p) {
  float s = key(row[p]);
  int64_t r = 1;
  for (int64_t j = 0; j < m; j++) {
    float v = key(row[j]);
    if (v > s || (v == s && j < p)) r++;
  }
  return r;
}

/* ------------------------------------------------------------ bindings */

static int64_t check_col(lua_State *L, int64_t m, int row, int ok, lua_Integer v) {
  if (!ok || v < 1 || v > m)
    luaL_error(L, "eval_ranks: target of row %d must be a column in 1..%d", row, (int)m);
  return (int64_t)v - 1;
}

static int l_eval_ranks(lua_State *L) {
  l_tensor *s = l_checktensor(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (s->ndim != 2) {
    char b[128];
    return luaL_error(L, "eval_ranks: expected scores {n,m}, got %s", l_shape_str(s, b, sizeof b));
  }
  int64_t n = s->shape[0], m = s->shape[1];
  if ((int64_t)luaL_len(L, 2) != n)
    return luaL_error(L, "eval_ranks: %d targets for %d rows", (int)luaL_len(L, 2), (int)n);
  lua_createtable(L, (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    const float *row = s->data + i * m;
    int64_t best = -1;
    int ok;
    lua_geti(L, 2, i + 1);
    if (lua_istable(L, -1)) {
      int k = (int)luaL_len(L, -1);
      if (k == 0) return luaL_error(L, "eval_ranks: row %d has an empty list of targets", (int)i + 1);
      for (int j = 1; j <= k; j++) {
        lua_geti(L, -1, j);
        lua_Integer v = lua_tointegerx(L, -1, &ok);
        lua_pop(L, 1);
        int64_t r = rank_of(row, m, check_col(L, m, (int)i + 1, ok, v));
        if (best < 0 || r < best) best = r;
      }
    } else {
      lua_Integer v = lua_tointegerx(L, -1, &ok);
      best = rank_of(row, m, check_col(L, m, (int)i + 1, ok, v));
    }
    lua_pop(L, 1);
    lua_pushinteger(L, best);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int l_eval_rowdot(lua_State *L) {
  l_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  if (a->ndim != 2 || b->ndim != 2 || a->shape[0] != b->shape[0] || a->shape[1] != b->shape[1]) {
    char x[128], y[128];
    return luaL_error(L, "eval_rowdot: expected two {n,d} tensors, got %s and %s",
                      l_shape_str(a, x, sizeof x), l_shape_str(b, y, sizeof y));
  }
  int64_t n = a->shape[0], d = a->shape[1];
  l_tensor *o = l_tensor_new(L, 1, &n);
  for (int64_t i = 0; i < n; i++) {
    double acc = 0;
    for (int64_t j = 0; j < d; j++) acc += (double)a->data[i * d + j] * b->data[i * d + j];
    o->data[i] = (float)acc;
  }
  return 1;
}

void l_ranking_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"eval_ranks", l_eval_ranks},
                                 {"eval_rowdot", l_eval_rowdot},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
