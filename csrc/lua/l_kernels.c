/* l_kernels.c - core.kernels: each fast kernel and its naive twin, exposed
 * so the specs can compare them (spec/kernels_spec.lua), the backward
 * kernels, and a double-precision objective for the finite-difference
 * gradient checks (spec/gradcheck_spec.lua). See docs/kernels.md. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "blas.h"
#include "gemm.h"
#include "pool.h"
#include "kernels.h"
#include "l_tensor.h"
#include "tensor.h"
#include "lclip.h"

/* The trailing `ref` flag picks the naive twin. Read it before pushing any
 * result: once a tensor is pushed, that stack slot is no longer the caller's. */
static int use_ref(lua_State *L, int idx) { return lua_toboolean(L, idx); }

static void need2(lua_State *L, l_tensor *t, const char *what) {
  if (t->ndim != 2) luaL_error(L, "%s: expected a 2-D tensor", what);
}

/* kernels.linear(x {N,IC}, w {OC,IC}, b {OC} or nil, ref) */
static int k_linear(lua_State *L) {
  l_tensor *x = l_checktensor(L, 1), *w = l_checktensor(L, 2);
  l_tensor *b = lua_isnoneornil(L, 3) ? NULL : l_checktensor(L, 3);
  int ref = use_ref(L, 4); /* read before anything is pushed */
  need2(L, x, "linear");
  need2(L, w, "linear");
  if (x->shape[1] != w->shape[1] || (b && b->numel != w->shape[0]))
    return luaL_error(L, "linear: shapes do not match");
  int64_t s[2] = {x->shape[0], w->shape[0]};
  l_tensor *o = l_tensor_new(L, 2, s);
  (ref ? linear_forward_ref : linear_forward)(o->data, x->data, w->data, b ? b->data : NULL,
                                              (int)s[0], (int)x->shape[1], (int)s[1]);
  return 1;
}

/* kernels.layernorm(x {N,C}, w {C}, b {C}, eps, ref) */
static int k_layernorm(lua_State *L) {
  l_tensor *x = l_checktensor(L, 1), *w = l_checktensor(L, 2), *b = l_checktensor(L, 3);
  float eps = (float)luaL_checknumber(L, 4);
  int ref = use_ref(L, 5);
  need2(L, x, "layernorm");
  if (w->numel != x->shape[1] || b->numel != x->shape[1])
    return luaL_error(L, "layernorm: shapes do not match");
  l_tensor *o = l_tensor_new(L, 2, x->shape);
  if (ref)
    layernorm_forward_ref(o->data, x->data, w->data, b->data, x->shape[0], (int)x->shape[1], eps);
  else
    layernorm_forward(o->data, NULL, NULL, x->data, w->data, b->data, x->shape[0],
                      (int)x->shape[1], eps);
  return 1;
}

static int act_id(lua_State *L, const char *s) {
  if (!strcmp(s, "quick_gelu")) return CT_ACT_QUICK_GELU;
  if (!strcmp(s, "gelu")) return CT_ACT_GELU;
  if (!strcmp(s, "gelu_new")) return CT_ACT_GELU_TANH;
  if (!strcmp(s, "relu")) return CT_ACT_RELU;
  return luaL_error(L, "unknown activation '%s'", s);
}

/* kernels.act(x, name, ref) */
static int k_act(lua_State *L) {
  l_tensor *x = l_checktensor(L, 1);
  int a = act_id(L, luaL_checkstring(L, 2));
  int ref = use_ref(L, 3);
  l_tensor *o = l_tensor_new(L, x->ndim, x->shape);
  (ref ? act_forward_ref : act_forward)(o->data, x->data, x->numel, a);
  return 1;
}

/* kernels.attention(q, k, v {B,T,C}, NH, causal, ref): over the state's pool, as the encoders */
static int k_attention(lua_State *L) {
  l_tensor *q = l_checktensor(L, 1), *k = l_checktensor(L, 2), *v = l_checktensor(L, 3);
  int NH = (int)luaL_checkinteger(L, 4);
  int causal = lua_toboolean(L, 5);
  int ref = use_ref(L, 6);
  if (q->ndim != 3 || k->numel != q->numel || v->numel != q->numel || NH < 1 ||
      q->shape[2] % NH || q->shape[1] > 1024)
    return luaL_error(L, "attention: bad shapes");
  int B = (int)q->shape[0], T = (int)q->shape[1], C = (int)q->shape[2];
  l_tensor *o = l_tensor_new(L, 3, q->shape);
  if (ref) {
    attention_forward_ref(o->data, q->data, k->data, v->data, B, T, C, NH, causal);
  } else {
    int64_t ps[2] = {T, T};
    l_tensor *p = l_tensor_new(L, 2, ps);
    l_pool_enter(L);
    attention_forward(o->data, p->data, q->data, k->data, v->data, B, T, C, NH, causal, 0);
    lua_pop(L, 1);
  }
  return 1;
}

/* ------------------------------------------------------------- backward */

static void need_int(lua_State *L, int64_t n, const char *what) {
  if (n > INT_MAX) luaL_error(L, "%s: size %I too large", what, (lua_Integer)n);
}

static int same_shape(const l_tensor *a, int ndim, const int64_t *shape) {
  if (a->ndim != ndim) return 0;
  for (int i = 0; i < ndim; i++)
    if (a->shape[i] != shape[i]) return 0;
  return 1;
}

static void need_shape(lua_State *L, const l_tensor *t, int ndim, const int64_t *shape,
                       const char *fn, const char *what) {
  if (!same_shape(t, ndim, shape)) {
    char got[96], want[96];
    l_tensor tmp = {0};
    tmp.ndim = ndim;
    for (int i = 0; i < ndim; i++) tmp.shape[i] = shape[i];
    luaL_error(L, "%s: %s has shape %s, expected %s", fn, what, l_shape_str(t, got, sizeof got),
               l_shape_str(&tmp, want, sizeof want));
  }
}

/* One gradient the caller asked for. want (a table at stack index `want`, or
 * none/nil = every gradient) maps the name to:
 *   nil/false -> not wanted: the kernel gets NULL and skips it;
 *   true      -> a new zero-filled tensor of the given shape;
 *   a Tensor  -> accumulated into (same shape, writable).
 * The tensor is left on the stack; its index goes to g->idx (0 if none). */
typedef struct {
  int idx;
  l_tensor *t;
} grad_slot;

static float *grad_arg(lua_State *L, int want, const char *name, int ndim,
                       const int64_t *shape, const char *fn, grad_slot *g) {
  g->idx = 0;
  g->t = NULL;
  if (lua_isnoneornil(L, want)) {
    g->t = l_tensor_new(L, ndim, shape);
  } else {
    luaL_checktype(L, want, LUA_TTABLE);
    lua_getfield(L, want, name);
    if (lua_isnil(L, -1) || (lua_isboolean(L, -1) && !lua_toboolean(L, -1))) {
      lua_pop(L, 1);
      return NULL;
    }
    if (lua_isboolean(L, -1)) {
      lua_pop(L, 1);
      g->t = l_tensor_new(L, ndim, shape);
    } else {
      g->t = l_totensor(L, -1);
      if (!g->t) luaL_error(L, "%s: want.%s must be true, false or a Tensor", fn, name);
      char what[48];
      snprintf(what, sizeof what, "want.%s", name);
      need_shape(L, g->t, ndim, shape, fn, what);
      if (g->t->readonly) luaL_error(L, "%s: want.%s is read-only", fn, name);
    }
  }
  g->idx = lua_gettop(L);
  return g->t->data;
}

static int overlap(const l_tensor *a, const l_tensor *b) {
  if (!a || !b || !a->numel || !b->numel) return 0;
  return a->data < b->data + b->numel && b->data < a->data + a->numel;
}

/* gradients must not share memory with each other or with the inputs */
static void check_disjoint(lua_State *L, const char *fn, grad_slot *g, int ng,
                           l_tensor **in, int nin) {
  for (int i = 0; i < ng; i++) {
    for (int j = i + 1; j < ng; j++)
      if (overlap(g[i].t, g[j].t)) luaL_error(L, "%s: two gradients share memory", fn);
    for (int j = 0; j < nin; j++)
      if (overlap(g[i].t, in[j])) luaL_error(L, "%s: a gradient shares memory with an input", fn);
  }
}

static int push_grads(lua_State *L, grad_slot *g, int ng) {
  for (int i = 0; i < ng; i++) {
    if (g[i].idx) lua_pushvalue(L, g[i].idx);
    else lua_pushnil(L);
  }
  return ng;
}

/* kernels.layernorm_stats(x {N,C}, w {C}, b {C}, eps) -> out {N,C}, mean {N}, rstd {N} */
static int k_layernorm_stats(lua_State *L) {
  l_tensor *x = l_checktensor(L, 1), *w = l_checktensor(L, 2), *b = l_checktensor(L, 3);
  float eps = (float)luaL_checknumber(L, 4);
  need2(L, x, "layernorm_stats");
  need_int(L, x->shape[1], "layernorm_stats");
  if (w->numel != x->shape[1] || b->numel != x->shape[1])
    return luaL_error(L, "layernorm_stats: shapes do not match");
  l_tensor *o = l_tensor_new(L, 2, x->shape);
  l_tensor *m = l_tensor_new(L, 1, x->shape);
  l_tensor *r = l_tensor_new(L, 1, x->shape);
  layernorm_forward(o->data, m->data, r->data, x->data, w->data, b->data, x->shape[0],
                    (int)x->shape[1], eps);
  return 3;
}

/* kernels.layernorm_backward(dout {N,C}, x {N,C}, w {C}, mean {N}, rstd {N}, want, ref)
 *   -> dinp {N,C}, dweight {C}, dbias {C} (nil where not wanted) */
static int k_layernorm_backward(lua_State *L) {
  const char *fn = "layernorm_backward";
  l_tensor *dout = l_checktensor(L, 1), *x = l_checktensor(L, 2), *w = l_checktensor(L, 3);
  l_tensor *mean = l_checktensor(L, 4), *rstd = l_checktensor(L, 5);
  int ref = use_ref(L, 7);
  lua_settop(L, 7); /* fix the slots: results are pushed above them */
  need2(L, x, fn);
  need_int(L, x->shape[1], fn);
  int64_t N = x->shape[0], C = x->shape[1];
  need_shape(L, dout, 2, x->shape, fn, "dout");
  need_shape(L, w, 1, &C, fn, "weight");
  need_shape(L, mean, 1, &N, fn, "mean");
  need_shape(L, rstd, 1, &N, fn, "rstd");
  grad_slot g[3];
  float *dinp = grad_arg(L, 6, "dinp", 2, x->shape, fn, &g[0]);
  float *dw = grad_arg(L, 6, "dweight", 1, &C, fn, &g[1]);
  float *db = grad_arg(L, 6, "dbias", 1, &C, fn, &g[2]);
  l_tensor *in[] = {dout, x, w, mean, rstd};
  check_disjoint(L, fn, g, 3, in, 5);
  l_pool_enter(L);
  (ref ? layernorm_backward_ref : layernorm_backward)(dinp, dw, db, dout->data, x->data, w->data,
                                                     mean->data, rstd->data, N, (int)C);
  return push_grads(L, g, 3);
}

/* kernels.linear_backward(dout {N,OC}, x {N,IC}, w {OC,IC}, want, ref, set)
 *   -> dinp {N,IC}, dweight {OC,IC}, dbias {OC} (nil where not wanted); set (not with ref):
 *   linear_backward_set, dinp overwritten */
static int k_linear_backward(lua_State *L) {
  const char *fn = "linear_backward";
  l_tensor *dout = l_checktensor(L, 1), *x = l_checktensor(L, 2), *w = l_checktensor(L, 3);
  int ref = use_ref(L, 5), set = lua_toboolean(L, 6);
  lua_settop(L, 6); /* fix the slots: results are pushed above them */
  need2(L, x, fn);
  need2(L, w, fn);
  int64_t N = x->shape[0], IC = x->shape[1], OC = w->shape[0];
  if (w->shape[1] != IC) {
    char a[64], b[64];
    return luaL_error(L, "%s: inner dims differ: %s x %s", fn, l_shape_str(x, a, sizeof a),
                      l_shape_str(w, b, sizeof b));
  }
  need_int(L, N, fn);
  need_int(L, IC, fn);
  need_int(L, OC, fn);
  int64_t os[2] = {N, OC};
  need_shape(L, dout, 2, os, fn, "dout");
  grad_slot g[3];
  float *dinp = grad_arg(L, 4, "dinp", 2, x->shape, fn, &g[0]);
  float *dw = grad_arg(L, 4, "dweight", 2, w->shape, fn, &g[1]);
  float *db = grad_arg(L, 4, "dbias", 1, &OC, fn, &g[2]);
  l_tensor *in[] = {dout, x, w};
  check_disjoint(L, fn, g, 3, in, 3);
  l_pool_enter(L);
  (ref ? linear_backward_ref : set ? linear_backward_set : linear_backward)(
      dinp, dw, db, dout->data, x->data, w->data, (int)N, (int)IC, (int)OC);
  return push_grads(L, g, 3);
}

/* kernels.act_backward(dout, x, name, want, ref, set) -> dinp (x's shape; nil if not wanted);
 * set (not with ref): act_backward_set, dinp overwritten */
static int k_act_backward(lua_State *L) {
  const char *fn = "act_backward";
  l_tensor *dout = l_checktensor(L, 1), *x = l_checktensor(L, 2);
  int a = act_id(L, luaL_checkstring(L, 3));
  int ref = use_ref(L, 5), set = lua_toboolean(L, 6);
  lua_settop(L, 6); /* fix the slots: results are pushed above them */
  need_shape(L, dout, x->ndim, x->shape, fn, "dout");
  grad_slot g[1];
  float *dinp = grad_arg(L, 4, "dinp", x->ndim, x->shape, fn, &g[0]);
  l_tensor *in[] = {dout, x};
  check_disjoint(L, fn, g, 1, in, 2);
  l_pool_enter(L);
  (ref ? act_backward_ref : set ? act_backward_set : act_backward)(dinp, dout->data, x->data,
                                                                    x->numel, a);
  return push_grads(L, g, 1);
}

static void check_attention(lua_State *L, const char *fn, l_tensor *q, l_tensor *k,
                            l_tensor *v, int NH, int need_small) {
  if (q->ndim != 3) luaL_error(L, "%s: q must be {B,T,C}", fn);
  need_shape(L, k, 3, q->shape, fn, "k");
  need_shape(L, v, 3, q->shape, fn, "v");
  if (NH < 1 || q->shape[2] % NH)
    luaL_error(L, "%s: C = %I is not a multiple of NH = %d", fn, (lua_Integer)q->shape[2], NH);
  for (int i = 0; i < 3; i++) need_int(L, q->shape[i], fn);
  if (need_small && q->shape[1] > 1024)
    luaL_error(L, "%s: the naive twin needs T <= 1024 (T = %I)", fn, (lua_Integer)q->shape[1]);
}

/* kernels.attention_probs(q, k, v {B,T,C}, NH, causal) -> out {B,T,C}, probs {B,NH,T,T} */
static int k_attention_probs(lua_State *L) {
  l_tensor *q = l_checktensor(L, 1), *k = l_checktensor(L, 2), *v = l_checktensor(L, 3);
  int NH = (int)luaL_checkinteger(L, 4);
  int causal = lua_toboolean(L, 5);
  check_attention(L, "attention_probs", q, k, v, NH, 0);
  int B = (int)q->shape[0], T = (int)q->shape[1], C = (int)q->shape[2];
  l_tensor *o = l_tensor_new(L, 3, q->shape);
  int64_t ps[4] = {B, NH, T, T};
  l_tensor *p = l_tensor_new(L, 4, ps);
  attention_forward(o->data, p->data, q->data, k->data, v->data, B, T, C, NH, causal, 1);
  return 2;
}

/* kernels.attention_backward(dout, q, k, v, probs {B,NH,T,T}, NH, causal, want, ref)
 *   -> dq, dk, dv {B,T,C} (nil where not wanted). The naive twin (ref) recomputes
 *   the probabilities and ignores probs, which may then be nil. */
static int k_attention_backward(lua_State *L) {
  const char *fn = "attention_backward";
  l_tensor *dout = l_checktensor(L, 1), *q = l_checktensor(L, 2), *k = l_checktensor(L, 3),
           *v = l_checktensor(L, 4);
  int ref = use_ref(L, 9);
  lua_settop(L, 9); /* fix the slots: results are pushed above them */
  l_tensor *probs = (ref && lua_isnoneornil(L, 5)) ? NULL : l_checktensor(L, 5);
  int NH = (int)luaL_checkinteger(L, 6);
  int causal = lua_toboolean(L, 7);
  check_attention(L, fn, q, k, v, NH, ref);
  need_shape(L, dout, 3, q->shape, fn, "dout");
  int B = (int)q->shape[0], T = (int)q->shape[1], C = (int)q->shape[2];
  int64_t ps[4] = {B, NH, T, T};
  if (probs) need_shape(L, probs, 4, ps, fn, "probs");
  grad_slot g[3];
  float *dq = grad_arg(L, 8, "dq", 3, q->shape, fn, &g[0]);
  float *dk = grad_arg(L, 8, "dk", 3, q->shape, fn, &g[1]);
  float *dv = grad_arg(L, 8, "dv", 3, q->shape, fn, &g[2]);
  l_tensor *in[] = {dout, q, k, v, probs};
  check_disjoint(L, fn, g, 3, in, 5);
  if (ref) {
    attention_backward_ref(dq, dk, dv, dout->data, q->data, k->data, v->data, B, T, C, NH, causal);
  } else {
    int64_t ss[2] = {T, T};
    l_tensor *scratch = l_tensor_new(L, 2, ss); /* temporary userdata, not a bare malloc */
    attention_backward(dq, dk, dv, scratch->data, dout->data, q->data, k->data, v->data,
                       probs->data, B, T, C, NH, causal);
    lua_pop(L, 1);
  }
  return push_grads(L, g, 3);
}

/* ids {{id, ...}, ...}: B sequences of T token ids, each a row of a [V, C] table (0-based, in
 * [0, V)); copied into an int32 userdata left on the stack. */
static int32_t *check_ids(lua_State *L, int idx, int64_t V, int *B, int *T, const char *fn) {
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_Integer nb = luaL_len(L, idx), nt = 0;
  if (nb > 0) {
    lua_geti(L, idx, 1);
    if (!lua_istable(L, -1)) luaL_error(L, "%s: ids must be a table of sequences", fn);
    nt = luaL_len(L, -1);
    lua_pop(L, 1);
  }
  if (nb < 1 || nt < 1 || nb * nt > INT_MAX) luaL_error(L, "%s: ids must be B x T, both >= 1", fn);
  int32_t *ids = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)(nb * nt), 0);
  for (lua_Integer b = 0; b < nb; b++) {
    lua_geti(L, idx, b + 1);
    if (!lua_istable(L, -1) || luaL_len(L, -1) != nt)
      luaL_error(L, "%s: ids[%I] is not a sequence of %I ids", fn, b + 1, nt);
    for (lua_Integer t = 0; t < nt; t++) {
      lua_geti(L, -1, t + 1);
      int ok;
      lua_Integer v = lua_tointegerx(L, -1, &ok);
      if (!ok || v < 0 || v >= V)
        luaL_error(L, "%s: ids[%I][%I] is not a token id in [0, %I)", fn, b + 1, t + 1, (lua_Integer)V);
      ids[b * nt + t] = (int32_t)v;
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  *B = (int)nb;
  *T = (int)nt;
  return ids;
}

/* patch {B,NP,C}, cls {C}, pos {NP+1,C} */
static void check_vision_embed(lua_State *L, const char *fn, const l_tensor *patch,
                               const l_tensor *cls, const l_tensor *pos) {
  if (patch->ndim != 3) luaL_error(L, "%s: patch must be {B,NP,C}", fn);
  for (int i = 0; i < 3; i++) need_int(L, patch->shape[i], fn);
  int64_t ps[2] = {patch->shape[1] + 1, patch->shape[2]};
  need_shape(L, cls, 1, &patch->shape[2], fn, "cls");
  need_shape(L, pos, 2, ps, fn, "pos");
}

/* tok {V,C}, pos {P,C} with P >= T */
static void check_text_embed(lua_State *L, const char *fn, const l_tensor *tok,
                             const l_tensor *pos, int T) {
  if (tok->ndim != 2 || pos->ndim != 2 || pos->shape[1] != tok->shape[1] || pos->shape[0] < T)
    luaL_error(L, "%s: tok must be {V,C} and pos {P,C} with P >= T = %d", fn, T);
  need_int(L, tok->shape[1], fn);
}

/* kernels.vision_embed(patch {B,NP,C}, cls {C}, pos {NP+1,C}) -> out {B,NP+1,C} */
static int k_vision_embed(lua_State *L) {
  l_tensor *patch = l_checktensor(L, 1), *cls = l_checktensor(L, 2), *pos = l_checktensor(L, 3);
  check_vision_embed(L, "vision_embed", patch, cls, pos);
  int64_t os[3] = {patch->shape[0], patch->shape[1] + 1, patch->shape[2]};
  l_tensor *o = l_tensor_new(L, 3, os);
  vision_embed_forward(o->data, patch->data, cls->data, pos->data, (int)os[0], (int)patch->shape[1],
                       (int)os[2]);
  return 1;
}

/* kernels.vision_embed_backward(dout {B,NP+1,C}, want)
 *   -> dpatch {B,NP,C}, dcls {C}, dpos {NP+1,C} (nil where not wanted) */
static int k_vision_embed_backward(lua_State *L) {
  const char *fn = "vision_embed_backward";
  l_tensor *dout = l_checktensor(L, 1);
  lua_settop(L, 2); /* fix the slots: results are pushed above them */
  if (dout->ndim != 3 || dout->shape[1] < 1) luaL_error(L, "%s: dout must be {B,NP+1,C}", fn);
  for (int i = 0; i < 3; i++) need_int(L, dout->shape[i], fn);
  int64_t B = dout->shape[0], NP = dout->shape[1] - 1, C = dout->shape[2];
  int64_t ps[3] = {B, NP, C}, qs[2] = {NP + 1, C};
  grad_slot g[3];
  float *dpatch = grad_arg(L, 2, "dpatch", 3, ps, fn, &g[0]);
  float *dcls = grad_arg(L, 2, "dcls", 1, &C, fn, &g[1]);
  float *dpos = grad_arg(L, 2, "dpos", 2, qs, fn, &g[2]);
  l_tensor *in[] = {dout};
  check_disjoint(L, fn, g, 3, in, 1);
  vision_embed_backward(dpatch, dcls, dpos, dout->data, (int)B, (int)NP, (int)C);
  return push_grads(L, g, 3);
}

/* kernels.text_embed(ids, tok {V,C}, pos {P,C}) -> out {B,T,C} */
static int k_text_embed(lua_State *L) {
  l_tensor *tok = l_checktensor(L, 2), *pos = l_checktensor(L, 3);
  int B, T;
  int32_t *ids = check_ids(L, 1, tok->shape[0], &B, &T, "text_embed");
  check_text_embed(L, "text_embed", tok, pos, T);
  int64_t os[3] = {B, T, tok->shape[1]};
  l_tensor *o = l_tensor_new(L, 3, os);
  text_embed_forward(o->data, ids, tok->data, pos->data, B, T, T, (int)os[2]);
  return 1;
}

/* kernels.text_embed_backward(dout {B,T,C}, ids, V, P, want) -> dtok {V,C}, dpos {P,C}
 *   (nil where not wanted) */
static int k_text_embed_backward(lua_State *L) {
  const char *fn = "text_embed_backward";
  l_tensor *dout = l_checktensor(L, 1);
  lua_Integer V = luaL_checkinteger(L, 3), P = luaL_checkinteger(L, 4);
  lua_settop(L, 5); /* fix the slots: results are pushed above them */
  if (V < 1 || P < 1) luaL_error(L, "%s: V and P must be >= 1", fn);
  int B, T;
  int32_t *ids = check_ids(L, 2, V, &B, &T, fn);
  if (dout->ndim != 3) luaL_error(L, "%s: dout must be {B,T,C}", fn);
  need_int(L, dout->shape[2], fn);
  int64_t C = dout->shape[2], os[3] = {B, T, C}, ts[2] = {V, C}, ps[2] = {P, C};
  need_shape(L, dout, 3, os, fn, "dout");
  if (P < T) luaL_error(L, "%s: P = %I is less than T = %d", fn, P, T);
  grad_slot g[2];
  float *dtok = grad_arg(L, 5, "dtok", 2, ts, fn, &g[0]);
  float *dpos = grad_arg(L, 5, "dpos", 2, ps, fn, &g[1]);
  l_tensor *in[] = {dout};
  check_disjoint(L, fn, g, 2, in, 1);
  text_embed_backward(dtok, dpos, dout->data, ids, B, T, T, (int)C);
  return push_grads(L, g, 2);
}

/* ------------------------------------------------ double-precision objective */

/* a double copy of tensor t as a temporary userdata (pushed) */
static double *to_f64(lua_State *L, const l_tensor *t) {
  double *d = lua_newuserdatauv(L, sizeof(double) * (size_t)(t->numel ? t->numel : 1), 0);
  for (int64_t i = 0; i < t->numel; i++) d[i] = t->data[i];
  return d;
}

/* kernels.eval_double(op, dout, inputs, opts) -> number
 * sum(dout * forward(inputs)) with the forward's double twin and the sum in
 * double. op and inputs: "layernorm" {x, w, b} (opts.eps, default 1e-5),
 * "linear" {x, w [, b]}, "act" {x} (opts.act, the activation's name),
 * "attention" {q, k, v} (opts.heads, opts.causal), "vision_embed" {patch, cls, pos},
 * "text_embed" {tok, pos} (opts.ids, as kernels.text_embed's). opts.perturb = {input,
 * index, delta} adds delta (in double) to element `index` (1-based, flat) of
 * inputs[input] before the forward: the base point stays the float32 one. */
static int k_eval_double(lua_State *L) {
  const char *fn = "eval_double";
  const char *op = luaL_checkstring(L, 1);
  l_tensor *dout = l_checktensor(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  int has_opts = !lua_isnoneornil(L, 4);
  if (has_opts) luaL_checktype(L, 4, LUA_TTABLE);
  lua_settop(L, 4);
  l_tensor *in[3] = {NULL, NULL, NULL};
  for (int i = 0; i < 3; i++) {
    lua_geti(L, 3, i + 1);
    if (!lua_isnil(L, -1)) {
      in[i] = l_totensor(L, -1);
      if (!in[i]) luaL_error(L, "%s: inputs[%d] is not a Tensor", fn, i + 1);
    }
    lua_pop(L, 1); /* the table keeps it alive */
  }
  int pin = 0;
  int64_t pidx = 0;
  double delta = 0;
  if (!has_opts) {
    lua_settop(L, 3);
    lua_newtable(L); /* opts = {} */
  }
  if (lua_getfield(L, 4, "perturb") != LUA_TNIL) {
    luaL_checktype(L, -1, LUA_TTABLE);
    lua_geti(L, -1, 1);
    lua_geti(L, -2, 2);
    lua_geti(L, -3, 3);
    pin = (int)luaL_checkinteger(L, -3);
    pidx = luaL_checkinteger(L, -2);
    delta = luaL_checknumber(L, -1);
    lua_pop(L, 3);
    if (pin < 1 || pin > 3 || !in[pin - 1] || pidx < 1 || pidx > in[pin - 1]->numel)
      luaL_error(L, "%s: perturb {input=%d, index=%I} is out of range", fn, pin, (lua_Integer)pidx);
  }
  lua_pop(L, 1);
  if (!in[0]) luaL_error(L, "%s: inputs[1] is missing", fn);
  int64_t oshape[CT_MAXDIM];
  int ondim, iB = 0, iT = 0;
  int32_t *ids = NULL;
  l_tensor *x = in[0];
  if (!strcmp(op, "layernorm") || !strcmp(op, "linear")) {
    need2(L, x, fn);
    if (!in[1]) luaL_error(L, "%s: %s needs a weight", fn, op);
  }
  if (!strcmp(op, "layernorm")) {
    if (!in[2]) luaL_error(L, "%s: layernorm needs a bias", fn);
    need_shape(L, in[1], 1, &x->shape[1], fn, "w");
    need_shape(L, in[2], 1, &x->shape[1], fn, "b");
    need_int(L, x->shape[1], fn);
    ondim = 2;
    oshape[0] = x->shape[0];
    oshape[1] = x->shape[1];
  } else if (!strcmp(op, "linear")) {
    need2(L, in[1], fn);
    if (in[1]->shape[1] != x->shape[1]) luaL_error(L, "%s: linear: inner dims differ", fn);
    if (in[2]) need_shape(L, in[2], 1, &in[1]->shape[0], fn, "b");
    for (int i = 0; i < 2; i++) need_int(L, x->shape[i], fn);
    need_int(L, in[1]->shape[0], fn);
    ondim = 2;
    oshape[0] = x->shape[0];
    oshape[1] = in[1]->shape[0];
  } else if (!strcmp(op, "act")) {
    ondim = x->ndim;
    memcpy(oshape, x->shape, sizeof oshape);
  } else if (!strcmp(op, "attention")) {
    if (!in[1] || !in[2]) luaL_error(L, "%s: attention needs q, k, v", fn);
    lua_getfield(L, 4, "heads");
    if (!lua_isinteger(L, -1)) luaL_error(L, "%s: attention needs opts.heads (an integer)", fn);
    int NH = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    check_attention(L, fn, x, in[1], in[2], NH, 1);
    ondim = 3;
    memcpy(oshape, x->shape, sizeof oshape);
  } else if (!strcmp(op, "vision_embed")) {
    if (!in[1] || !in[2]) luaL_error(L, "%s: vision_embed needs patch, cls, pos", fn);
    check_vision_embed(L, fn, x, in[1], in[2]);
    ondim = 3;
    oshape[0] = x->shape[0];
    oshape[1] = x->shape[1] + 1;
    oshape[2] = x->shape[2];
  } else if (!strcmp(op, "text_embed")) {
    if (!in[1]) luaL_error(L, "%s: text_embed needs tok, pos", fn);
    if (lua_getfield(L, 4, "ids") != LUA_TTABLE) luaL_error(L, "%s: text_embed needs opts.ids", fn);
    ids = check_ids(L, lua_gettop(L), x->shape[0], &iB, &iT, fn); /* kept on the stack */
    check_text_embed(L, fn, x, in[1], iT);
    ondim = 3;
    oshape[0] = iB;
    oshape[1] = iT;
    oshape[2] = x->shape[1];
  } else {
    return luaL_error(L, "%s: unknown op '%s'", fn, op);
  }
  need_shape(L, dout, ondim, oshape, fn, "dout");
  double *d[3] = {NULL, NULL, NULL};
  for (int i = 0; i < 3; i++)
    if (in[i]) d[i] = to_f64(L, in[i]);
  if (pin) d[pin - 1][pidx - 1] += delta;
  double *out = to_f64(L, dout); /* right size; overwritten by the forward */
  if (!strcmp(op, "layernorm")) {
    double eps = (float)1e-5; /* the float forward's eps, widened */
    if (lua_getfield(L, 4, "eps") != LUA_TNIL) eps = (float)luaL_checknumber(L, -1);
    lua_pop(L, 1);
    layernorm_forward_f64(out, d[0], d[1], d[2], x->shape[0], (int)x->shape[1], eps);
  } else if (!strcmp(op, "linear")) {
    linear_forward_f64(out, d[0], d[1], d[2], (int)x->shape[0], (int)x->shape[1],
                       (int)in[1]->shape[0]);
  } else if (!strcmp(op, "act")) {
    if (lua_getfield(L, 4, "act") != LUA_TSTRING) luaL_error(L, "%s: act needs opts.act (a name)", fn);
    int a = act_id(L, lua_tostring(L, -1));
    lua_pop(L, 1);
    act_forward_f64(out, d[0], x->numel, a);
  } else if (!strcmp(op, "vision_embed")) {
    vision_embed_forward_f64(out, d[0], d[1], d[2], (int)x->shape[0], (int)x->shape[1],
                             (int)x->shape[2]);
  } else if (!strcmp(op, "text_embed")) {
    text_embed_forward_f64(out, ids, d[0], d[1], iB, iT, iT, (int)x->shape[1]);
  } else {
    lua_getfield(L, 4, "heads");
    int NH = (int)lua_tointeger(L, -1);
    lua_getfield(L, 4, "causal");
    int causal = lua_toboolean(L, -1);
    lua_pop(L, 2);
    attention_forward_f64(out, d[0], d[1], d[2], (int)x->shape[0], (int)x->shape[1],
                          (int)x->shape[2], NH, causal);
  }
  double sum = 0;
  for (int64_t i = 0; i < dout->numel; i++) sum += (double)dout->data[i] * out[i];
  lua_pushnumber(L, sum);
  return 1;
}

/* kernels.gemm_general_packed() -> true when the GEMM door runs its larger GEMMs on the
 * packed micro-kernel (blas.c) */
static int k_gemm_general_packed(lua_State *L) {
  lua_pushboolean(L, ct_gemm_general_packed());
  return 1;
}

/* kernels.sgemm(a, b, ta, tb [, ref [, c, alpha, beta]]) -> alpha op(a) op(b) + beta c through
 * the GEMM door (ref: its naive twin); c {M,N} is updated in place (a new tensor when nil) */
static int k_sgemm(lua_State *L) {
  l_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  int ta = lua_toboolean(L, 3), tb = lua_toboolean(L, 4);
  int ref = use_ref(L, 5);
  need2(L, a, "sgemm");
  need2(L, b, "sgemm");
  int M = (int)(ta ? a->shape[1] : a->shape[0]), K = (int)(ta ? a->shape[0] : a->shape[1]);
  int K2 = (int)(tb ? b->shape[1] : b->shape[0]), N = (int)(tb ? b->shape[0] : b->shape[1]);
  if (K != K2) return luaL_error(L, "sgemm: inner dims differ");
  float alpha = (float)luaL_optnumber(L, 7, 1.0), beta = (float)luaL_optnumber(L, 8, 0.0);
  l_tensor *o;
  if (lua_isnoneornil(L, 6)) {
    int64_t s[2] = {M, N};
    o = l_tensor_new(L, 2, s);
  } else {
    o = l_checktensor(L, 6);
    if (o->ndim != 2 || o->shape[0] != M || o->shape[1] != N)
      return luaL_error(L, "sgemm: c must be {%d, %d}", M, N);
    lua_pushvalue(L, 6);
  }
  (ref ? ct_sgemm_ref : ct_sgemm)(ta, tb, M, N, K, alpha, a->data, (int)a->shape[1], b->data,
                                  (int)b->shape[1], beta, o->data, N);
  return 1;
}

/* kernels.gemm_nt(a, b [, ref [, c, alpha, beta]]) -> alpha a b^T + beta c with gemm.c's kernel
 * in the calling thread (ref: its naive twin, ct_sgemm_ref); a {M,K}, b {N,K}, c {M,N} (a new
 * tensor when nil). kernels.gemm_available() says whether this CPU runs the kernel. */
static int k_gemm_nt(lua_State *L) {
  l_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  int ref = lua_toboolean(L, 3);
  need2(L, a, "gemm_nt");
  need2(L, b, "gemm_nt");
  int M = (int)a->shape[0], K = (int)a->shape[1], N = (int)b->shape[0];
  if (b->shape[1] != K)
    return luaL_error(L, "gemm_nt: inner dims differ: (%d,%d) x (%d,%d)^T", M, K, N,
                      (int)b->shape[1]);
  float alpha = (float)luaL_optnumber(L, 5, 1.0), beta = (float)luaL_optnumber(L, 6, 0.0);
  l_tensor *c;
  if (lua_isnoneornil(L, 4)) {
    int64_t s[2] = {M, N};
    c = l_tensor_new(L, 2, s);
  } else {
    c = l_checktensor(L, 4);
    if (c->ndim != 2 || c->shape[0] != M || c->shape[1] != N)
      return luaL_error(L, "gemm_nt: c must be {%d,%d}", M, N);
    l_tensor_writing(L, c);
    lua_pushvalue(L, 4);
  }
  if (ref) {
    ct_sgemm_ref(0, 1, M, N, K, alpha, a->data, K, b->data, K, beta, c->data, N);
  } else {
    if (!ct_gemm_available()) return luaL_error(L, "gemm_nt: this CPU has no AVX2/FMA");
    ct_gemm_nt(M, N, K, alpha, a->data, K, b->data, K, beta, c->data, N, 0, N);
  }
  return 1;
}
/* the packed kind named by argument idx: "f32" (default), "f16" or "bf16" */
static int half_arg(lua_State *L, int idx, const char *fn) {
  const char *hs = luaL_optstring(L, idx, "f32");
  int kind = !strcmp(hs, "f16") ? PK_F16 : !strcmp(hs, "bf16") ? PK_BF16 : PK_F32;
  if (kind == PK_F32 && strcmp(hs, "f32")) return luaL_error(L, "%s: half '%s'?", fn, hs);
  return kind;
}

/* b {N, K} packed for the packed kernels as kind (16-bit kinds: rounded to that type first;
 * rounded, when given, gets the values the kernel sees), over the current pool: the packed
 * copy is a new tensor left on the stack (64-byte aligned data) */
static void *pack_arg(lua_State *L, const l_tensor *b, int kind, float *rounded) {
  int N = (int)b->shape[0], K = (int)b->shape[1];
  int64_t ps[1] = {(int64_t)ct_pack_nt_floats(N, K) + 16}, hsz[1] = {(int64_t)N * K / 2 + 1};
  l_tensor *pt = l_tensor_new(L, 1, ps), *hb = l_tensor_new(L, 1, hsz); /* b's 16-bit values */
  uint16_t *h = (uint16_t *)hb->data;
  for (int64_t i = 0; i < (int64_t)N * K; i++) {
    if (kind == PK_F32) {
      if (rounded) rounded[i] = b->data[i];
    } else {
      h[i] = kind == PK_F16 ? ct_f32_to_f16(b->data[i]) : ct_f32_to_bf16(b->data[i]);
      if (rounded) rounded[i] = kind == PK_F16 ? ct_f16_to_f32(h[i]) : ct_bf16_to_f32(h[i]);
    }
  }
  ct_pack_parallel(N, K, kind == PK_F32 ? (const void *)b->data : (const void *)h, K, pt->data,
                   kind);
  lua_pop(L, 1); /* the 16-bit copy */
  return pt->data;
}

/* kernels.gemm_packed(a, b [, c, beta [, pooled [, half [, kernel]]]]) -> a b^T + beta c with
 * b packed (gemm_packed.c): in the calling thread, or split over the state's pool through
 * blas.c's door (pooled). half "f16" / "bf16": b is rounded to that type and packed as 16-bit
 * values (the kernel converts them back); the second result is b as rounded, for the naive
 * twin. kernel "avx512" / "avx2" / "neon": that micro-kernel (default: the selected one).
 * kernels.gemm_packed_available() says whether one is selected, gemm_packed_kernel() which
 * ("avx512", "avx2", "neon" or nil), gemm_packed_kernels() the list of those this CPU can run
 * (whether selected or not). */
static int k_gemm_packed(lua_State *L) {
  l_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  need2(L, a, "gemm_packed");
  need2(L, b, "gemm_packed");
  int M = (int)a->shape[0], K = (int)a->shape[1], N = (int)b->shape[0];
  if (b->shape[1] != K)
    return luaL_error(L, "gemm_packed: inner dims differ: (%d,%d) x (%d,%d)^T", M, K, N,
                      (int)b->shape[1]);
  float beta = (float)luaL_optnumber(L, 4, 0.0);
  int pooled = lua_toboolean(L, 5);
  int kind = half_arg(L, 6, "gemm_packed");
  const char *ks = luaL_optstring(L, 7, "auto");
  int isa = !strcmp(ks, "avx512") ? PK_AVX512 : !strcmp(ks, "avx2") ? PK_AVX2
          : !strcmp(ks, "neon") ? PK_NEON : !strcmp(ks, "auto") ? ct_gemm_packed_kernel() : -1;
  if (isa < 0) return luaL_error(L, "gemm_packed: kernel '%s'?", ks);
  if (isa == 0)
    return luaL_error(L, "gemm_packed: no packed kernel selected here (AVX-512, or AVX2 unless "
                         "CLIP_PACKED_AVX2=0, on x86-64; NEON on aarch64; CLIP_NO_AVX512 turns "
                         "them off)");
  if (!ct_gemm_packed_runs(isa))
    return luaL_error(L, "gemm_packed: this CPU runs no packed kernel '%s'", ks);
  l_tensor *c;
  if (lua_isnoneornil(L, 3)) {
    int64_t s[2] = {M, N};
    c = l_tensor_new(L, 2, s);
  } else {
    c = l_checktensor(L, 3);
    if (c->ndim != 2 || c->shape[0] != M || c->shape[1] != N)
      return luaL_error(L, "gemm_packed: c must be {%d,%d}", M, N);
    l_tensor_writing(L, c);
    lua_pushvalue(L, 3);
  }
  int cidx = lua_gettop(L);
  int64_t bs[2] = {N, K};
  l_tensor *br = l_tensor_new(L, 2, bs); /* b as the kernel sees it */
  int bidx = lua_gettop(L);
  if (pooled) l_pool_enter(L);
  const void *P = pack_arg(L, b, kind, br->data);
  if (pooled) {
    float *C = c->data;
    ct_sgemm_packed_isa(isa, M, N, K, a->data, K, 1, &P, kind, NULL, &C, N, beta);
  } else {
    ct_pool *prev = ct_pool_make_current(NULL);
    ct_gemm_packed_isa(isa, M, N, K, 1.0f, a->data, K, NULL, P, kind, beta, NULL, c->data,
                       N, 0, (N + PK_NR - 1) / PK_NR);
    ct_pool_make_current(prev);
  }
  lua_pushvalue(L, cidx);
  lua_pushvalue(L, bidx);
  return 2;
}
/* kernels.mlp_packed(x, w1, b1, w2, b2, out, act, chain [, half]) -> out, ran: out +=
 * act(x w1^T + b1) w2^T + b2 with w1 and w2 packed (half "f16" / "bf16": rounded to that type
 * first), over the state's pool, through mlp_forward_packed (chain true: ran says whether the
 * chain ran; false: nothing was written) or the three steps it replaces (linear_forward_packed,
 * act_forward, linear_forward_packed; ran true) */
static int k_mlp_packed(lua_State *L) {
  l_tensor *x = l_checktensor(L, 1), *w1 = l_checktensor(L, 2), *b1 = l_checktensor(L, 3),
           *w2 = l_checktensor(L, 4), *b2 = l_checktensor(L, 5), *out = l_checktensor(L, 6);
  int act = act_id(L, luaL_checkstring(L, 7)), chain = lua_toboolean(L, 8);
  int kind = half_arg(L, 9, "mlp_packed");
  need2(L, x, "mlp_packed");
  need2(L, w1, "mlp_packed");
  need2(L, w2, "mlp_packed");
  need2(L, out, "mlp_packed");
  int N = (int)x->shape[0], D = (int)x->shape[1], I = (int)w1->shape[0];
  if (w1->shape[1] != D || w2->shape[0] != D || w2->shape[1] != I || b1->numel != I ||
      b2->numel != D || out->shape[0] != N || out->shape[1] != D)
    return luaL_error(L, "mlp_packed: shapes: x {N,D}, w1 {I,D}, b1 {I}, w2 {D,I}, b2 {D}, out {N,D}");
  if (!ct_gemm_packed_available()) return luaL_error(L, "mlp_packed: no packed kernel here");
  l_tensor_writing(L, out);
  l_pool_enter(L);
  const void *pk[2] = {pack_arg(L, w1, kind, NULL), pack_arg(L, w2, kind, NULL)};
  const float *w1f = kind == PK_F32 ? w1->data : NULL, *w2f = kind == PK_F32 ? w2->data : NULL;
  int ran = 1;
  if (chain) {
    size_t nb = mlp_chain_floats(N, I);
    int64_t bs[1] = {(int64_t)nb + 16};
    l_tensor *buf = l_tensor_new(L, 1, bs);
    ran = mlp_forward_packed(out->data, x->data, D, w1f, pk[0], b1->data, w2f, pk[1], b2->data,
                             kind, N, D, I, act, buf->data, nb);
  } else {
    int64_t ms[2] = {N, I};
    l_tensor *mid = l_tensor_new(L, 2, ms);
    float *o1 = mid->data, *o2 = out->data;
    const float *bb1 = b1->data, *bb2 = b2->data;
    const void *p1 = pk[0], *p2 = pk[1];
    linear_forward_packed(1, &o1, I, x->data, D, &w1f, &p1, kind, &bb1, N, D, I, 0.0f);
    act_forward(mid->data, mid->data, (int64_t)N * I, act);
    linear_forward_packed(1, &o2, D, mid->data, I, &w2f, &p2, kind, &bb2, N, I, D, 1.0f);
  }
  lua_pushvalue(L, 6);
  lua_pushboolean(L, ran);
  return 2;
}

static int k_gemm_packed_available(lua_State *L) {
  lua_pushboolean(L, ct_gemm_packed_available());
  return 1;
}

static const char *isa_name(int isa) {
  return isa == PK_AVX512 ? "avx512" : isa == PK_AVX2 ? "avx2" : "neon";
}

static int k_gemm_packed_kernel(lua_State *L) {
  int isa = ct_gemm_packed_kernel();
  if (isa) lua_pushstring(L, isa_name(isa));
  else lua_pushnil(L);
  return 1;
}

static int k_gemm_packed_kernels(lua_State *L) {
  lua_newtable(L);
  int n = 0;
  static const int order[] = {PK_AVX512, PK_AVX2, PK_NEON}; /* widest first */
  for (int i = 0; i < 3; i++)
    if (ct_gemm_packed_runs(order[i])) {
      lua_pushstring(L, isa_name(order[i]));
      lua_rawseti(L, -2, ++n);
    }
  return 1;
}

static int k_gemm_available(lua_State *L) {
  lua_pushboolean(L, ct_gemm_available());
  return 1;
}

void l_kernels_open(lua_State *L) {
  static const luaL_Reg fs[] = {{"linear", k_linear},
                                {"layernorm", k_layernorm},
                                {"act", k_act},
                                {"attention", k_attention},
                                {"sgemm", k_sgemm},
                                {"gemm_general_packed", k_gemm_general_packed},
                                {"gemm_nt", k_gemm_nt},
                                {"gemm_available", k_gemm_available},
                                {"gemm_packed", k_gemm_packed},
                                {"mlp_packed", k_mlp_packed},
                                {"gemm_packed_available", k_gemm_packed_available},
                                {"gemm_packed_kernel", k_gemm_packed_kernel},
                                {"gemm_packed_kernels", k_gemm_packed_kernels},
                                {"layernorm_stats", k_layernorm_stats},
                                {"layernorm_backward", k_layernorm_backward},
                                {"linear_backward", k_linear_backward},
                                {"act_backward", k_act_backward},
                                {"attention_probs", k_attention_probs},
                                {"attention_backward", k_attention_backward},
                                {"vision_embed", k_vision_embed},
                                {"vision_embed_backward", k_vision_embed_backward},
                                {"text_embed", k_text_embed},
                                {"text_embed_backward", k_text_embed_backward},
                                {"eval_double", k_eval_double},
                                {NULL, NULL}};
  lua_newtable(L);
  luaL_setfuncs(L, fs, 0);
  lua_setfield(L, -2, "kernels");
}
