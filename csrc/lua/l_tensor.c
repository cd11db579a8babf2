/* l_tensor.c - the clip.Tensor userdata: float32, contiguous, row-major.
 *
 * Owned tensors keep their bytes inside the userdata, so Lua's GC sees the
 * memory; views (rows, reshapes, model parameters) point into another
 * object's memory and hold it through user value 1. Indices are 1-based. */
#include "l_tensor.h"

#include "ct.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "optim.h"
#include "tensor.h"
#include "lclip.h"

#define MAX_NUMEL ((int64_t)1 << 36)

/* ---------------------------------------------------------------- basics */

static int64_t shape_numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return -1;
    if (shape[i] && n > MAX_NUMEL / shape[i]) return -1;
    n *= shape[i];
  }
  return n;
}

const char *l_shape_str(const l_tensor *t, char *buf, size_t n) {
  size_t k = 0;
  k += snprintf(buf + k, n - k, "(");
  for (int i = 0; i < t->ndim && k < n; i++)
    k += snprintf(buf + k, n - k, i ? ",%lld" : "%lld", (long long)t->shape[i]);
  if (k < n) snprintf(buf + k, n - k, ")");
  return buf;
}

l_tensor *l_tensor_new(lua_State *L, int ndim, const int64_t *shape) {
  if (ndim < 0 || ndim > CT_MAXDIM)
    luaL_error(L, "tensor: %d dimensions (at most %d)", ndim, CT_MAXDIM);
  int64_t n = shape_numel(ndim, shape);
  if (n < 0) luaL_error(L, "tensor: invalid or too large shape");
  size_t bytes = sizeof(l_tensor) + 64 + (size_t)n * sizeof(float);
  l_tensor *t = lua_newuserdatauv(L, bytes, 1);
  uintptr_t p = (uintptr_t)(t + 1);
  p = (p + 63) & ~(uintptr_t)63;
  t->data = (float *)p;
  t->numel = n;
  t->ndim = ndim;
  t->readonly = 0;
  t->wgen = NULL;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  ct_mem_fault_in(t->data, (size_t)n * sizeof(float)); /* before the memset's first touch */
  memset(t->data, 0, (size_t)n * sizeof(float));
  luaL_setmetatable(L, L_TENSOR_MT);
  return t;
}

l_tensor *l_tensor_view(lua_State *L, int owner_idx, float *data, int ndim,
                        const int64_t *shape, int readonly) {
  owner_idx = lua_absindex(L, owner_idx);
  int64_t n = shape_numel(ndim, shape);
  if (n < 0 || ndim > CT_MAXDIM) luaL_error(L, "tensor: invalid view shape");
  l_tensor *t = lua_newuserdatauv(L, sizeof(l_tensor), 1);
  t->data = data;
  t->numel = n;
  t->ndim = ndim;
  t->readonly = readonly;
  t->wgen = NULL;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  luaL_setmetatable(L, L_TENSOR_MT);
  /* keep the owner alive: if the owner is itself a view, keep its owner */
  l_tensor *o = luaL_testudata(L, owner_idx, L_TENSOR_MT);
  if (o) t->wgen = o->wgen; /* a view of a parameter's view writes the parameter */
  if (o && lua_getiuservalue(L, owner_idx, 1) != LUA_TNIL) {
    lua_setiuservalue(L, -2, 1);
  } else {
    if (o) lua_pop(L, 1);
    lua_pushvalue(L, owner_idx);
    lua_setiuservalue(L, -2, 1);
  }
  return t;
}

l_tensor *l_totensor(lua_State *L, int idx) {
  return luaL_testudata(L, idx, L_TENSOR_MT);
}

l_tensor *l_checktensor(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, L_TENSOR_MT);
}

int l_checkshape(lua_State *L, int idx, int64_t *shape) {
  if (lua_isinteger(L, idx)) { /* clip.zeros(3) */
    shape[0] = lua_tointeger(L, idx);
    if (shape[0] < 0) l_errorf(L, "shape: negative size %lld", (long long)shape[0]);
    return 1;
  }
  luaL_checktype(L, idx, LUA_TTABLE);
  int n = (int)luaL_len(L, idx);
  if (n > CT_MAXDIM) luaL_error(L, "shape: %d dimensions (at most %d)", n, CT_MAXDIM);
  for (int i = 0; i < n; i++) {
    lua_geti(L, idx, i + 1);
    int ok;
    lua_Integer v = lua_tointegerx(L, -1, &ok);
    if (!ok || v < 0)
      luaL_error(L, "shape: entry %d is not a non-negative integer", i + 1);
    shape[i] = v;
    lua_pop(L, 1);
  }
  return n;
}

void l_tensor_writing(lua_State *L, l_tensor *t) {
  if (t->readonly) luaL_error(L, "tensor is read-only");
  if (t->wgen) ++*t->wgen;
}

static void check_writable(lua_State *L, l_tensor *t) { l_tensor_writing(L, t); }

/* ---------------------------------------------------------- constructors */

static void infer_shape(lua_State *L, int idx, int depth, int *ndim,
                        int64_t *shape) {
  if (lua_type(L, idx) != LUA_TTABLE) {
    *ndim = depth;
    return;
  }
  if (depth >= CT_MAXDIM) luaL_error(L, "tensor: nesting deeper than %d", CT_MAXDIM);
  int64_t n = (int64_t)luaL_len(L, idx);
  shape[depth] = n;
  if (n == 0) {
    *ndim = depth + 1;
    return;
  }
  lua_geti(L, idx, 1);
  infer_shape(L, lua_gettop(L), depth + 1, ndim, shape);
  lua_pop(L, 1);
}

static void fill_from(lua_State *L, int idx, int depth, int ndim,
                      const int64_t *shape, float **p) {
  if (depth == ndim) {
    int ok;
    lua_Number v = lua_tonumberx(L, idx, &ok);
    if (!ok) luaL_error(L, "tensor: expected a number, got %s", luaL_typename(L, idx));
    *(*p)++ = (float)v;
    return;
  }
  if (lua_type(L, idx) != LUA_TTABLE)
    luaL_error(L, "tensor: ragged nested table (expected a table at depth %d)", depth + 1);
  if ((int64_t)luaL_len(L, idx) != shape[depth])
    l_errorf(L, "tensor: ragged nested table (length %lld at depth %d, expected %lld)",
               (long long)luaL_len(L, idx), depth + 1, (long long)shape[depth]);
  for (int64_t i = 0; i < shape[depth]; i++) {
    lua_geti(L, idx, i + 1);
    fill_from(L, lua_gettop(L), depth + 1, ndim, shape, p);
    lua_pop(L, 1);
  }
}

/* clip.tensor(values [, shape]) */
static int t_tensor(lua_State *L) {
  int64_t shape[CT_MAXDIM];
  int ndim = 0;
  if (lua_isnumber(L, 1)) {
    l_tensor *t = l_tensor_new(L, 0, shape);
    t->data[0] = (float)lua_tonumber(L, 1);
    return 1;
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  int has_shape = !lua_isnoneornil(L, 2);
  infer_shape(L, 1, 0, &ndim, shape);
  l_tensor *t = l_tensor_new(L, ndim, shape);
  float *p = t->data;
  fill_from(L, 1, 0, ndim, shape, &p);
  if (has_shape) { /* reshape */
    int64_t s2[CT_MAXDIM];
    int n2 = l_checkshape(L, 2, s2);
    if (shape_numel(n2, s2) != t->numel)
      l_errorf(L, "tensor: %lld values do not fit the shape given",
                 (long long)t->numel);
    t->ndim = n2;
    memcpy(t->shape, s2, sizeof s2);
  }
  return 1;
}

static int t_full_impl(lua_State *L, float v) {
  int64_t shape[CT_MAXDIM];
  int ndim = l_checkshape(L, 1, shape);
  l_tensor *t = l_tensor_new(L, ndim, shape);
  if (v != 0.0f)
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = v;
  return 1;
}
static int t_zeros(lua_State *L) { return t_full_impl(L, 0.0f); }
static int t_ones(lua_State *L) { return t_full_impl(L, 1.0f); }
static int t_full(lua_State *L) {
  return t_full_impl(L, (float)luaL_checknumber(L, 2));
}

/* splitmix64 + Box-Muller: deterministic from a seed, independent of Lua's RNG */
static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double uniform01(uint64_t *s) {
  return ((splitmix(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* clip.randn(shape [, seed]) / clip.rand(shape [, seed]) */
static int t_random(lua_State *L, int normal) {
  int64_t shape[CT_MAXDIM];
  int ndim = l_checkshape(L, 1, shape);
  uint64_t seed = (uint64_t)luaL_optinteger(L, 2, 0);
  l_tensor *t = l_tensor_new(L, ndim, shape);
  for (int64_t i = 0; i < t->numel; i++) {
    if (normal) {
      double u1 = uniform01(&seed), u2 = uniform01(&seed);
      t->data[i] = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    } else {
      t->data[i] = (float)uniform01(&seed);
    }
  }
  return 1;
}
static int t_randn(lua_State *L) { return t_random(L, 1); }
static int t_rand(lua_State *L) { return t_random(L, 0); }

/* clip.arange(n) -> {0, 1, ..., n-1} */
static int t_arange(lua_State *L) {
  int64_t n = luaL_checkinteger(L, 1);
  if (n < 0) return luaL_error(L, "arange: negative length");
  l_tensor *t = l_tensor_new(L, 1, &n);
  for (int64_t i = 0; i < n; i++) t->data[i] = (float)i;
  return 1;
}

/* --------------------------------------------------------------- queries */

static int m_shape(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  lua_createtable(L, t->ndim, 0);
  for (int i = 0; i < t->ndim; i++) {
    lua_pushinteger(L, t->shape[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int m_size(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  if (lua_isnoneornil(L, 2)) return m_shape(L);
  lua_Integer d = luaL_checkinteger(L, 2);
  if (d < 0) d += t->ndim + 1;
  if (d < 1 || d > t->ndim)
    return luaL_error(L, "size: dim %d out of range for a %d-dim tensor", (int)d, t->ndim);
  lua_pushinteger(L, t->shape[d - 1]);
  return 1;
}

static int m_dim(lua_State *L) {
  lua_pushinteger(L, l_checktensor(L, 1)->ndim);
  return 1;
}

static int m_numel(lua_State *L) {
  lua_pushinteger(L, l_checktensor(L, 1)->numel);
  return 1;
}

static void push_nested(lua_State *L, const float **p, int depth, int ndim,
                        const int64_t *shape) {
  if (depth == ndim) {
    lua_pushnumber(L, *(*p)++);
    return;
  }
  luaL_checkstack(L, 4, "totable");
  lua_createtable(L, (int)shape[depth], 0);
  for (int64_t i = 0; i < shape[depth]; i++) {
    push_nested(L, p, depth + 1, ndim, shape);
    lua_rawseti(L, -2, i + 1);
  }
}

static int m_totable(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  const float *p = t->data;
  if (t->ndim == 0) {
    lua_pushnumber(L, p[0]);
    return 1;
  }
  push_nested(L, &p, 0, t->ndim, t->shape);
  return 1;
}

/* flat offset of 1-based indices at stack idx.. */
static int64_t index_offset(lua_State *L, l_tensor *t, int idx, int nidx) {
  if (nidx != t->ndim)
    luaL_error(L, "index: %d indices for a %d-dim tensor", nidx, t->ndim);
  int64_t off = 0;
  for (int i = 0; i < nidx; i++) {
    lua_Integer k = luaL_checkinteger(L, idx + i);
    if (k < 0) k += t->shape[i] + 1;
    if (k < 1 || k > t->shape[i])
      l_errorf(L, "index %d out of range for dim %d of size %lld", (int)k, i + 1,
                 (long long)t->shape[i]);
    off = off * t->shape[i] + (k - 1);
  }
  return off;
}

/* t:get(i, j, ...) */
static int m_get(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  int64_t off = index_offset(L, t, 2, lua_gettop(L) - 1);
  lua_pushnumber(L, t->data[off]);
  return 1;
}

/* t:set(i, j, ..., value) */
static int m_set(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  int top = lua_gettop(L);
  float v = (float)luaL_checknumber(L, top);
  check_writable(L, t);
  int64_t off = index_offset(L, t, 2, top - 2);
  t->data[off] = v;
  lua_settop(L, 1);
  return 1;
}

static int64_t row_size(const l_tensor *t) {
  int64_t r = 1;
  for (int i = 1; i < t->ndim; i++) r *= t->shape[i];
  return r;
}

/* t:rows(i [, j]) -> view of rows i..j (1-based, inclusive) */
static int m_rows(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  if (t->ndim < 1) return luaL_error(L, "rows: scalar tensor has no rows");
  lua_Integer i = luaL_checkinteger(L, 2);
  lua_Integer j = luaL_optinteger(L, 3, i);
  if (i < 0) i += t->shape[0] + 1;
  if (j < 0) j += t->shape[0] + 1;
  if (i < 1 || j > t->shape[0] || j < i - 1)
    return l_errorf(L, "rows: range %d..%d out of bounds for %lld rows", (int)i,
                      (int)j, (long long)t->shape[0]);
  int64_t shape[CT_MAXDIM];
  memcpy(shape, t->shape, sizeof shape);
  shape[0] = j - i + 1;
  l_tensor_view(L, 1, t->data + (i - 1) * row_size(t), t->ndim, shape, t->readonly);
  return 1;
}

/* t:reshape(shape) -> view; one entry may be -1 */
static int m_reshape(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  int n = (int)luaL_len(L, 2), infer = -1;
  if (n > CT_MAXDIM) return luaL_error(L, "reshape: too many dimensions");
  int64_t shape[CT_MAXDIM], known = 1;
  for (int i = 0; i < n; i++) {
    lua_geti(L, 2, i + 1);
    lua_Integer v = luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (v == -1 && infer < 0) {
      infer = i;
      shape[i] = 1;
    } else if (v < 0) {
      return luaL_error(L, "reshape: bad size %d", (int)v);
    } else {
      shape[i] = v;
      known *= v;
    }
  }
  if (infer >= 0) shape[infer] = known ? t->numel / known : 0;
  if (shape_numel(n, shape) != t->numel) {
    char b[128];
    return l_errorf(L, "reshape: cannot view %s (%lld values) with the shape given",
                      l_shape_str(t, b, sizeof b), (long long)t->numel);
  }
  l_tensor_view(L, 1, t->data, n, shape, t->readonly);
  return 1;
}

static int m_clone(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  l_tensor *c = l_tensor_new(L, t->ndim, t->shape);
  memcpy(c->data, t->data, (size_t)t->numel * sizeof(float));
  return 1;
}

/* t:copy(src): copy values of a same-sized tensor into t */
static int m_copy(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1), *s = l_checktensor(L, 2);
  check_writable(L, t);
  if (t->numel != s->numel) {
    char a[128], b[128];
    return luaL_error(L, "copy: %s and %s differ in size", l_shape_str(t, a, sizeof a),
                      l_shape_str(s, b, sizeof b));
  }
  memmove(t->data, s->data, (size_t)t->numel * sizeof(float));
  lua_settop(L, 1);
  return 1;
}

static int m_fill(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  float v = (float)luaL_checknumber(L, 2);
  check_writable(L, t);
  for (int64_t i = 0; i < t->numel; i++) t->data[i] = v;
  lua_settop(L, 1);
  return 1;
}

/* t:t() - transpose of a 2-D tensor (a copy) */
static int m_transpose(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  if (t->ndim != 2) {
    char b[128];
    return luaL_error(L, "t: expected a 2-dim tensor, got %s", l_shape_str(t, b, sizeof b));
  }
  int64_t shape[2] = {t->shape[1], t->shape[0]};
  l_tensor *o = l_tensor_new(L, 2, shape);
  for (int64_t i = 0; i < t->shape[0]; i++)
    for (int64_t j = 0; j < t->shape[1]; j++)
      o->data[j * t->shape[0] + i] = t->data[i * t->shape[1] + j];
  return 1;
}

/* ------------------------------------------------------------ arithmetic */

enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV };

static float apply(int op, float a, float b) {
  switch (op) {
  case OP_ADD: return a + b;
  case OP_SUB: return a - b;
  case OP_MUL: return a * b;
  default: return a / b;
  }
}

/* a op b with b a number, a same-shaped tensor, or a tensor matching the
 * trailing dims of a (broadcast over leading rows). Also number op tensor. */
static int binop(lua_State *L, int op, const char *name) {
  l_tensor *a = l_totensor(L, 1), *b = l_totensor(L, 2);
  if (!a) { /* number op tensor */
    float s = (float)luaL_checknumber(L, 1);
    b = l_checktensor(L, 2);
    l_tensor *o = l_tensor_new(L, b->ndim, b->shape);
    for (int64_t i = 0; i < b->numel; i++) o->data[i] = apply(op, s, b->data[i]);
    return 1;
  }
  if (!b) {
    float s = (float)luaL_checknumber(L, 2);
    l_tensor *o = l_tensor_new(L, a->ndim, a->shape);
    for (int64_t i = 0; i < a->numel; i++) o->data[i] = apply(op, a->data[i], s);
    return 1;
  }
  /* b's shape must equal a's trailing dims */
  int ok = b->ndim <= a->ndim;
  for (int i = 0; ok && i < b->ndim; i++)
    ok = b->shape[b->ndim - 1 - i] == a->shape[a->ndim - 1 - i];
  if (!ok || (b->numel == 0 && a->numel != 0)) {
    char x[128], y[128];
    return luaL_error(L, "%s: shapes do not match: %s and %s", name,
                      l_shape_str(a, x, sizeof x), l_shape_str(b, y, sizeof y));
  }
  l_tensor *o = l_tensor_new(L, a->ndim, a->shape);
  int64_t m = b->numel;
  for (int64_t i = 0; i < a->numel; i++)
    o->data[i] = apply(op, a->data[i], b->data[i % m]);
  return 1;
}
static int m_add(lua_State *L) { return binop(L, OP_ADD, "add"); }
static int m_sub(lua_State *L) { return binop(L, OP_SUB, "sub"); }
static int m_mul(lua_State *L) { return binop(L, OP_MUL, "mul"); }
static int m_div(lua_State *L) { return binop(L, OP_DIV, "div"); }

static int m_unm(lua_State *L) {
  l_tensor *a = l_checktensor(L, 1);
  l_tensor *o = l_tensor_new(L, a->ndim, a->shape);
  for (int64_t i = 0; i < a->numel; i++) o->data[i] = -a->data[i];
  return 1;
}

/* t:scale_(s): in place t = t * s; t:add_(u [, alpha]): t += alpha * u */
static int m_scale_(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  float s = (float)luaL_checknumber(L, 2);
  check_writable(L, t);
  l_pool_enter(L);
  ct_scale(t->data, t->numel, s);
  lua_settop(L, 1);
  return 1;
}

static int m_add_(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1), *u = l_checktensor(L, 2);
  float alpha = (float)luaL_optnumber(L, 3, 1.0);
  check_writable(L, t);
  if (t->numel != u->numel) {
    char x[128], y[128];
    return luaL_error(L, "add_: shapes do not match: %s and %s", l_shape_str(t, x, sizeof x),
                      l_shape_str(u, y, sizeof y));
  }
  for (int64_t i = 0; i < t->numel; i++) t->data[i] += alpha * u->data[i];
  lua_settop(L, 1);
  return 1;
}

/* clip.matmul(a, b [, {transpose_a=, transpose_b=}]) for 2-D (or 1-D) tensors */
static int t_matmul(lua_State *L) {
  l_pool_enter(L);
  l_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  int ta = 0, tb = 0;
  if (lua_istable(L, 3)) {
    lua_getfield(L, 3, "transpose_a");
    ta = lua_toboolean(L, -1);
    lua_getfield(L, 3, "transpose_b");
    tb = lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  if (a->ndim < 1 || a->ndim > 2 || b->ndim < 1 || b->ndim > 2) {
    char x[128], y[128];
    return luaL_error(L, "matmul: expected 1-D or 2-D tensors, got %s x %s",
                      l_shape_str(a, x, sizeof x), l_shape_str(b, y, sizeof y));
  }
  int64_t ar = a->ndim == 2 ? a->shape[0] : 1, ac = a->shape[a->ndim - 1];
  int64_t br = b->ndim == 2 ? b->shape[0] : b->shape[0], bc = b->ndim == 2 ? b->shape[1] : 1;
  int64_t M = ta ? ac : ar, K = ta ? ar : ac;
  int64_t K2 = tb ? bc : br, N = tb ? br : bc;
  if (K != K2) {
    char x[128], y[128];
    return luaL_error(L, "matmul: inner dims differ: %s%s x %s%s", l_shape_str(a, x, sizeof x),
                      ta ? "^T" : "", l_shape_str(b, y, sizeof y), tb ? "^T" : "");
  }
  int64_t shape[2] = {M, N};
  l_tensor *o;
  if (a->ndim == 1 && b->ndim == 1)
    o = l_tensor_new(L, 0, shape);
  else if (a->ndim == 1)
    o = l_tensor_new(L, 1, shape + 1);
  else if (b->ndim == 1)
    o = l_tensor_new(L, 1, shape);
  else
    o = l_tensor_new(L, 2, shape);
  if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX)
    return luaL_error(L, "matmul: dimensions too large");
  ct_sgemm(ta, tb, (int)M, (int)N, (int)K, 1.0f, a->data, (int)ac, b->data, (int)bc,
           0.0f, o->data, (int)N);
  return 1;
}

/* clip.cat(list [, dim]) - concatenate along dim (default 1) */
static int t_cat(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer dim = luaL_optinteger(L, 2, 1);
  int n = (int)luaL_len(L, 1);
  if (n == 0) return luaL_error(L, "cat: empty list");
  lua_geti(L, 1, 1);
  l_tensor *f = luaL_testudata(L, -1, L_TENSOR_MT);
  if (!f) return luaL_error(L, "cat: item 1 is not a Tensor");
  if (dim < 0) dim += f->ndim + 1;
  if (dim < 1 || dim > f->ndim)
    return luaL_error(L, "cat: dim %d out of range for %d-dim tensors", (int)dim, f->ndim);
  int64_t shape[CT_MAXDIM];
  memcpy(shape, f->shape, sizeof shape);
  int nd = f->ndim;
  lua_pop(L, 1);
  int64_t total = 0;
  for (int i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    l_tensor *t = luaL_testudata(L, -1, L_TENSOR_MT);
    if (!t) return luaL_error(L, "cat: item %d is not a Tensor", i);
    int ok = t->ndim == nd;
    for (int d = 0; ok && d < nd; d++) ok = d == dim - 1 || t->shape[d] == shape[d];
    if (!ok) {
      char x[128];
      return luaL_error(L, "cat: item %d has shape %s, which does not match item 1 outside dim %d",
                        i, l_shape_str(t, x, sizeof x), (int)dim);
    }
    total += t->shape[dim - 1];
    lua_pop(L, 1);
  }
  shape[dim - 1] = total;
  l_tensor *o = l_tensor_new(L, nd, shape);
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < dim - 1; d++) outer *= shape[d];
  for (int d = dim; d < nd; d++) inner *= shape[d];
  int64_t off = 0;
  for (int i = 1; i <= n; i++) {
    lua_geti(L, 1, i);
    l_tensor *t = lua_touserdata(L, -1);
    int64_t chunk = t->shape[dim - 1] * inner;
    for (int64_t a = 0; a < outer; a++)
      memcpy(o->data + a * total * inner + off, t->data + a * chunk,
             (size_t)chunk * sizeof(float));
    off += chunk;
    lua_pop(L, 1);
  }
  return 1;
}

/* t:normalize([eps]) - row-wise L2 normalization of a 1-D or 2-D tensor */
static int m_normalize(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  float eps = (float)luaL_optnumber(L, 2, 1e-12);
  if (t->ndim < 1) return luaL_error(L, "normalize: scalar tensor");
  int64_t C = t->shape[t->ndim - 1], N = C ? t->numel / C : 0;
  l_tensor *o = l_tensor_new(L, t->ndim, t->shape);
  ct_l2_normalize_rows(o->data, t->data, N, C, eps);
  return 1;
}

/* clip.cosine_similarity(a, b) -> {n, m} */
static int t_cosine(lua_State *L) {
  l_pool_enter(L);
  l_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  if (a->ndim < 1 || a->ndim > 2 || b->ndim < 1 || b->ndim > 2 ||
      a->shape[a->ndim - 1] != b->shape[b->ndim - 1]) {
    char x[128], y[128];
    return luaL_error(L, "cosine_similarity: expected {n,d} and {m,d}, got %s and %s",
                      l_shape_str(a, x, sizeof x), l_shape_str(b, y, sizeof y));
  }
  int64_t D = a->shape[a->ndim - 1];
  int64_t n = a->ndim == 2 ? a->shape[0] : 1, m = b->ndim == 2 ? b->shape[0] : 1;
  int64_t s1[2] = {n, D}, s2[2] = {m, D}, so[2] = {n, m};
  l_tensor *an = l_tensor_new(L, 2, s1);
  ct_l2_normalize_rows(an->data, a->data, n, D, 1e-12f);
  l_tensor *bn = l_tensor_new(L, 2, s2);
  ct_l2_normalize_rows(bn->data, b->data, m, D, 1e-12f);
  l_tensor *o = l_tensor_new(L, 2, so);
  ct_sgemm(0, 1, (int)n, (int)m, (int)D, 1.0f, an->data, (int)D, bn->data, (int)D, 0.0f,
           o->data, (int)m);
  return 1;
}

/* t:topk(k) -> values, indices (1-based) along the last dim; 1-D or 2-D */
static int m_topk(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  lua_Integer k = luaL_checkinteger(L, 2);
  if (t->ndim < 1 || t->ndim > 2) return luaL_error(L, "topk: expected a 1-D or 2-D tensor");
  int64_t C = t->shape[t->ndim - 1], R = t->ndim == 2 ? t->shape[0] : 1;
  if (k < 0) return luaL_error(L, "topk: k must be >= 0");
  if (k > C) k = C;
  int64_t shape[2] = {R, k};
  l_tensor *vals = t->ndim == 2 ? l_tensor_new(L, 2, shape) : l_tensor_new(L, 1, shape + 1);
  int64_t *idx = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)(k ? k : 1), 0);
  lua_createtable(L, (int)R, 0);
  for (int64_t r = 0; r < R; r++) {
    if (k) ct_topk(idx, vals->data + r * k, t->data + r * C, C, k);
    lua_createtable(L, (int)k, 0);
    for (int64_t j = 0; j < k; j++) {
      lua_pushinteger(L, idx[j] + 1);
      lua_rawseti(L, -2, j + 1);
    }
    if (t->ndim == 1) break;
    lua_rawseti(L, -2, r + 1);
  }
  if (t->ndim == 1) {
    lua_remove(L, -2);
  }
  lua_remove(L, -2); /* scratch */
  return 2;
}

/* t:argmax() -> index (1-D) or list of row indices (2-D) */
static int m_argmax(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  if (t->ndim < 1 || t->ndim > 2) return luaL_error(L, "argmax: expected a 1-D or 2-D tensor");
  int64_t C = t->shape[t->ndim - 1], R = t->ndim == 2 ? t->shape[0] : 1;
  if (C == 0) return luaL_error(L, "argmax: empty dimension");
  if (t->ndim == 2) lua_createtable(L, (int)R, 0);
  for (int64_t r = 0; r < R; r++) {
    const float *x = t->data + r * C;
    int64_t best = 0;
    for (int64_t j = 1; j < C; j++)
      if (x[j] > x[best] || (x[best] != x[best] && x[j] == x[j])) best = j;
    lua_pushinteger(L, best + 1);
    if (t->ndim == 2) lua_rawseti(L, -2, r + 1);
  }
  return 1;
}

static int reduce(lua_State *L, int mean) {
  l_tensor *t = l_checktensor(L, 1);
  if (lua_isnoneornil(L, 2)) {
    double s = 0;
    for (int64_t i = 0; i < t->numel; i++) s += t->data[i];
    lua_pushnumber(L, mean ? (t->numel ? s / (double)t->numel : NAN) : s);
    return 1;
  }
  lua_Integer d = luaL_checkinteger(L, 2);
  if (d < 0) d += t->ndim + 1;
  if (d < 1 || d > t->ndim)
    return luaL_error(L, "%s: dim %d out of range for a %d-dim tensor", mean ? "mean" : "sum",
                      (int)d, t->ndim);
  int64_t A = 1, B = 1, M = t->shape[d - 1], shape[CT_MAXDIM];
  int nd = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (i < d - 1) A *= t->shape[i];
    if (i > d - 1) B *= t->shape[i];
    if (i != d - 1) shape[nd++] = t->shape[i];
  }
  l_tensor *o = l_tensor_new(L, nd, shape);
  if (mean) ct_mean_axis(o->data, t->data, A, M, B);
  else ct_sum_axis(o->data, t->data, A, M, B);
  return 1;
}
static int m_mean(lua_State *L) { return reduce(L, 1); }
static int m_sum(lua_State *L) { return reduce(L, 0); }

static int m_max(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  if (!t->numel) return luaL_error(L, "max: empty tensor");
  float m = t->data[0];
  for (int64_t i = 1; i < t->numel; i++) if (t->data[i] > m) m = t->data[i];
  lua_pushnumber(L, m);
  return 1;
}

static int m_min(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  if (!t->numel) return luaL_error(L, "min: empty tensor");
  float m = t->data[0];
  for (int64_t i = 1; i < t->numel; i++) if (t->data[i] < m) m = t->data[i];
  lua_pushnumber(L, m);
  return 1;
}

/* t:bytes() -> the raw little-endian float32 bytes; clip.from_bytes(s, shape) */
static int m_bytes(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  lua_pushlstring(L, (const char *)t->data, (size_t)t->numel * sizeof(float));
  return 1;
}

static int t_from_bytes(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  int64_t shape[CT_MAXDIM];
  int nd = l_checkshape(L, 2, shape);
  if (shape_numel(nd, shape) * 4 != (int64_t)n)
    return l_errorf(L, "from_bytes: %zu bytes do not fit the shape given", n);
  l_tensor *t = l_tensor_new(L, nd, shape);
  memcpy(t->data, s, n);
  return 1;
}

/* ------------------------------------------------------------ metamethods */

static int mm_index(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    int ok;
    lua_Integer i = lua_tointegerx(L, 2, &ok);
    if (!ok) return luaL_error(L, "tensor index must be an integer");
    if (t->ndim == 0) return luaL_error(L, "cannot index a scalar tensor");
    if (i < 0) i += t->shape[0] + 1;
    if (i < 1 || i > t->shape[0])
      return l_errorf(L, "index %d out of range for dim 1 of size %lld", (int)i,
                        (long long)t->shape[0]);
    if (t->ndim == 1) {
      lua_pushnumber(L, t->data[i - 1]);
      return 1;
    }
    l_tensor_view(L, 1, t->data + (i - 1) * row_size(t), t->ndim - 1, t->shape + 1,
                  t->readonly);
    return 1;
  }
  luaL_getmetafield(L, 1, "__methods");
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int mm_newindex(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  lua_Integer i = luaL_checkinteger(L, 2);
  check_writable(L, t);
  if (t->ndim != 1) return luaL_error(L, "t[i] = v needs a 1-D tensor (use t:set)");
  if (i < 0) i += t->shape[0] + 1;
  if (i < 1 || i > t->shape[0])
    return l_errorf(L, "index %d out of range for size %lld", (int)i, (long long)t->shape[0]);
  t->data[i - 1] = (float)luaL_checknumber(L, 3);
  return 0;
}

static int mm_len(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  lua_pushinteger(L, t->ndim ? t->shape[0] : 0);
  return 1;
}

static void fmt_rows(luaL_Buffer *b, const l_tensor *t, const float *p, int depth,
                     int64_t *budget) {
  char num[32];
  if (depth == t->ndim) {
    snprintf(num, sizeof num, "%.4g", *p);
    luaL_addstring(b, num);
    return;
  }
  int64_t stride = 1;
  for (int i = depth + 1; i < t->ndim; i++) stride *= t->shape[i];
  luaL_addchar(b, '{');
  for (int64_t i = 0; i < t->shape[depth]; i++) {
    if (i) luaL_addstring(b, depth + 1 == t->ndim ? ", " : ",\n ");
    if (*budget <= 0) {
      luaL_addstring(b, "...");
      break;
    }
    if (depth + 1 == t->ndim) (*budget)--;
    fmt_rows(b, t, p + i * stride, depth + 1, budget);
  }
  luaL_addchar(b, '}');
}

static int mm_tostring(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  char s[160];
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "clip.Tensor");
  luaL_addstring(&b, l_shape_str(t, s, sizeof s));
  luaL_addstring(&b, "\n");
  int64_t budget = 200;
  fmt_rows(&b, t, t->data, 0, &budget);
  luaL_pushresult(&b);
  return 1;
}

/* ---------------------------------------------------------------- open */

static const luaL_Reg methods[] = {
    {"shape", m_shape},       {"size", m_size},         {"dim", m_dim},
    {"numel", m_numel},       {"totable", m_totable},   {"get", m_get},
    {"set", m_set},           {"rows", m_rows},         {"reshape", m_reshape},
    {"view", m_reshape},      {"clone", m_clone},       {"copy", m_copy},
    {"fill", m_fill},         {"t", m_transpose},       {"add", m_add},
    {"sub", m_sub},           {"mul", m_mul},           {"div", m_div},
    {"scale_", m_scale_},     {"add_", m_add_},         {"matmul", t_matmul},
    {"normalize", m_normalize}, {"topk", m_topk},       {"argmax", m_argmax},
    {"mean", m_mean},         {"sum", m_sum},           {"max", m_max},
    {"min", m_min},           {"bytes", m_bytes},       {NULL, NULL}};

static const luaL_Reg funcs[] = {
    {"tensor", t_tensor},   {"zeros", t_zeros},   {"ones", t_ones},
    {"full", t_full},       {"randn", t_randn},   {"rand", t_rand},
    {"arange", t_arange},   {"matmul", t_matmul}, {"cat", t_cat},
    {"cosine_similarity", t_cosine}, {"from_bytes", t_from_bytes},
    {NULL, NULL}};

static const luaL_Reg meta[] = {
    {"__index", mm_index}, {"__newindex", mm_newindex}, {"__len", mm_len},
    {"__tostring", mm_tostring}, {"__add", m_add},     {"__sub", m_sub},
    {"__mul", m_mul},      {"__div", m_div},           {"__unm", m_unm},
    {NULL, NULL}};

void l_tensor_open(lua_State *L) {
  luaL_newmetatable(L, L_TENSOR_MT);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__methods");
  luaL_setfuncs(L, meta, 0);
  lua_pushliteral(L, "clip.Tensor");
  lua_setfield(L, -2, "__name");
  lua_getfield(L, -1, "__methods");
  lua_setfield(L, -3, "Tensor"); /* module.Tensor = methods table */
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
