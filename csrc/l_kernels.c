/* l_kernels.c - core.kernels: each fast kernel and its naive twin, exposed
 * so the specs can compare them (spec/kernels_spec.lua). */
#include <string.h>

#include "blas.h"
#include "kernels.h"
#include "l_tensor.h"
#include "lclip.h"

static int use_ref(lua_State *L, int idx) { return lua_toboolean(L, idx); }

static void need2(lua_State *L, l_tensor *t, const char *what) {
  if (t->ndim != 2) luaL_error(L, "%s: expected a 2-D tensor", what);
}

/* kernels.linear(x {N,IC}, w {OC,IC}, b {OC} or nil, ref) */
static int k_linear(lua_State *L) {
  l_tensor *x = l_checktensor(L, 1), *w = l_checktensor(L, 2);
  l_tensor *b = lua_isnoneornil(L, 3) ? NULL : l_checktensor(L, 3);
  need2(L, x, "linear");
  need2(L, w, "linear");
  if (x->shape[1] != w->shape[1] || (b && b->numel != w->shape[0]))
    return luaL_error(L, "linear: shapes do not match");
  int64_t s[2] = {x->shape[0], w->shape[0]};
  l_tensor *o = l_tensor_new(L, 2, s);
  (use_ref(L, 4) ? linear_forward_ref : linear_forward)(o->data, x->data, w->data,
                                                        b ? b->data : NULL, (int)s[0],
                                                        (int)x->shape[1], (int)s[1]);
  return 1;
}

/* kernels.layernorm(x {N,C}, w {C}, b {C}, eps, ref) */
static int k_layernorm(lua_State *L) {
  l_tensor *x = l_checktensor(L, 1), *w = l_checktensor(L, 2), *b = l_checktensor(L, 3);
  float eps = (float)luaL_checknumber(L, 4);
  need2(L, x, "layernorm");
  if (w->numel != x->shape[1] || b->numel != x->shape[1])
    return luaL_error(L, "layernorm: shapes do not match");
  l_tensor *o = l_tensor_new(L, 2, x->shape);
  if (use_ref(L, 5))
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
  l_tensor *o = l_tensor_new(L, x->ndim, x->shape);
  (use_ref(L, 3) ? act_forward_ref : act_forward)(o->data, x->data, x->numel, a);
  return 1;
}

/* kernels.attention(q, k, v {B,T,C}, NH, causal, ref) */
static int k_attention(lua_State *L) {
  l_tensor *q = l_checktensor(L, 1), *k = l_checktensor(L, 2), *v = l_checktensor(L, 3);
  int NH = (int)luaL_checkinteger(L, 4);
  int causal = lua_toboolean(L, 5);
  if (q->ndim != 3 || k->numel != q->numel || v->numel != q->numel || NH < 1 ||
      q->shape[2] % NH || q->shape[1] > 1024)
    return luaL_error(L, "attention: bad shapes");
  int B = (int)q->shape[0], T = (int)q->shape[1], C = (int)q->shape[2];
  l_tensor *o = l_tensor_new(L, 3, q->shape);
  if (use_ref(L, 6)) {
    attention_forward_ref(o->data, q->data, k->data, v->data, B, T, C, NH, causal);
  } else {
    int64_t ps[2] = {T, T};
    l_tensor *p = l_tensor_new(L, 2, ps);
    attention_forward(o->data, p->data, q->data, k->data, v->data, B, T, C, NH, causal, 0);
    lua_pop(L, 1);
  }
  return 1;
}

/* kernels.sgemm(a, b, ta, tb, ref) -> op(a) op(b) */
static int k_sgemm(lua_State *L) {
  l_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  int ta = lua_toboolean(L, 3), tb = lua_toboolean(L, 4);
  need2(L, a, "sgemm");
  need2(L, b, "sgemm");
  int M = (int)(ta ? a->shape[1] : a->shape[0]), K = (int)(ta ? a->shape[0] : a->shape[1]);
  int K2 = (int)(tb ? b->shape[1] : b->shape[0]), N = (int)(tb ? b->shape[0] : b->shape[1]);
  if (K != K2) return luaL_error(L, "sgemm: inner dims differ");
  int64_t s[2] = {M, N};
  l_tensor *o = l_tensor_new(L, 2, s);
  (use_ref(L, 5) ? ct_sgemm_ref : ct_sgemm)(ta, tb, M, N, K, 1.0f, a->data, (int)a->shape[1],
                                            b->data, (int)b->shape[1], 0.0f, o->data, N);
  return 1;
}

static int l_set_threads(lua_State *L) {
  ct_set_num_threads((int)luaL_checkinteger(L, 1));
  return 0;
}
static int l_get_threads(lua_State *L) {
  lua_pushinteger(L, ct_get_num_threads());
  return 1;
}

void l_kernels_open(lua_State *L) {
  static const luaL_Reg fs[] = {{"linear", k_linear},       {"layernorm", k_layernorm},
                                {"act", k_act},             {"attention", k_attention},
                                {"sgemm", k_sgemm},         {NULL, NULL}};
  lua_newtable(L);
  luaL_setfuncs(L, fs, 0);
  lua_setfield(L, -2, "kernels");
  lua_pushcfunction(L, l_set_threads);
  lua_setfield(L, -2, "set_num_threads");
  lua_pushcfunction(L, l_get_threads);
  lua_setfield(L, -2, "get_num_threads");
}
