/* l_loss.c - core.loss_* (contrastive losses on embeddings) and core.optim_*
 * (in-place optimizer updates on tensors). */
#include <math.h>
#include <string.h>

#include "ct.h"
#include "l_tensor.h"
#include "lclip.h"
#include "loss.h"
#include "optim.h"

static void check_emb(lua_State *L, l_tensor *t, int E, const char *what) {
  char b[128];
  if (t->ndim != 2 || (E >= 0 && t->shape[1] != E))
    luaL_error(L, "%s: expected embeddings {n,%d}, got %s", what, E, l_shape_str(t, b, sizeof b));
  if (t->shape[0] == 0) luaL_error(L, "%s: empty batch", what);
}

/* Two embedding columns {n,E} with the same E. */
static void check_pair(lua_State *L, l_tensor *a, l_tensor *b, const char *what) {
  check_emb(L, a, -1, what);
  check_emb(L, b, (int)a->shape[1], what);
}

/* Push a finite loss below the ngrads gradients already on the stack. */
static void push_loss(lua_State *L, double loss, int ngrads, const char *what) {
  if (!isfinite(loss))
    luaL_error(L, "%s: loss is not finite (NaN or Inf in the embeddings?)", what);
  lua_pushnumber(L, loss);
  lua_insert(L, -1 - ngrads);
}

/* Optional rows lo, hi (1-based, inclusive) at idx, idx + 1: the local_loss part of
 * rows lo..hi (loss.h, *_rows); *r0 = -1 when absent. */
static void opt_rows(lua_State *L, int idx, int B, int *r0, int *r1, const char *what) {
  *r0 = *r1 = -1;
  if (lua_isnoneornil(L, idx)) return;
  lua_Integer lo = luaL_checkinteger(L, idx), hi = luaL_checkinteger(L, idx + 1);
  if (lo < 1 || hi < lo || hi > B)
    luaL_error(L, "%s: rows %d..%d are not within the batch of %d", what, (int)lo, (int)hi, B);
  *r0 = (int)lo - 1;
  *r1 = (int)hi;
}

/* core.loss_mnrl(a {B,E}, b {M,E}, scale, symmetric [, lo, hi]) -> loss, da, db */
static int l_mnrl(lua_State *L) {
  l_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  double scale = luaL_optnumber(L, 3, 20.0);
  int sym = lua_toboolean(L, 4);
  check_pair(L, a, b, "MultipleNegativesRankingLoss");
  int B = (int)a->shape[0], M = (int)b->shape[0], E = (int)a->shape[1];
  if (M < B) return luaL_error(L, "MultipleNegativesRankingLoss: %d candidates for %d anchors", M, B);
  int r0, r1;
  opt_rows(L, 5, B, &r0, &r1, "MultipleNegativesRankingLoss");
  l_tensor *da = l_tensor_new(L, 2, a->shape), *db = l_tensor_new(L, 2, b->shape);
  double loss = r0 < 0 ? ct_loss_mnrl(da->data, db->data, a->data, b->data, B, M, E, scale, sym)
                       : ct_loss_mnrl_rows(da->data, db->data, a->data, b->data, B, M, E, scale, sym, r0, r1);
  push_loss(L, loss, 2, "MultipleNegativesRankingLoss");
  return 3;
}

/* core.loss_clip(images {B,E}, texts {B,E}, logit_scale [, lo, hi]) -> loss, da, db, dlogit_scale */
static int l_clip(lua_State *L) {
  l_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  double ls = luaL_checknumber(L, 3);
  check_pair(L, a, b, "CLIPLoss");
  if (a->shape[0] != b->shape[0]) return luaL_error(L, "CLIPLoss: %d images but %d texts", (int)a->shape[0], (int)b->shape[0]);
  int B = (int)a->shape[0], E = (int)a->shape[1], r0, r1;
  opt_rows(L, 4, B, &r0, &r1, "CLIPLoss");
  l_tensor *da = l_tensor_new(L, 2, a->shape), *db = l_tensor_new(L, 2, b->shape);
  double dls = 0;
  double loss = r0 < 0 ? ct_loss_clip(da->data, db->data, &dls, a->data, b->data, B, E, ls)
                       : ct_loss_clip_rows(da->data, db->data, &dls, a->data, b->data, B, E, ls, r0, r1);
  push_loss(L, loss, 2, "CLIPLoss");
  lua_pushnumber(L, dls);
  return 4;
}

/* core.loss_triplet(a, p, n, margin) -> loss, da, dp, dn */
static int l_triplet(lua_State *L) {
  l_tensor *a = l_checktensor(L, 1), *p = l_checktensor(L, 2), *n = l_checktensor(L, 3);
  double margin = luaL_optnumber(L, 4, 5.0);
  check_pair(L, a, p, "TripletLoss");
  check_emb(L, n, (int)a->shape[1], "TripletLoss");
  if (p->shape[0] != a->shape[0] || n->shape[0] != a->shape[0])
    return luaL_error(L, "TripletLoss: columns differ in length");
  l_tensor *da = l_tensor_new(L, 2, a->shape), *dp = l_tensor_new(L, 2, a->shape),
           *dn = l_tensor_new(L, 2, a->shape);
  double loss = ct_loss_triplet(da->data, dp->data, dn->data, a->data, p->data, n->data,
                                (int)a->shape[0], (int)a->shape[1], margin);
  push_loss(L, loss, 3, "TripletLoss");
  return 4;
}

/* core.loss_siglip(a, b, t, bias [, lo, hi]) -> loss, da, db, dt, dbias */
static int l_siglip(lua_State *L) {
  l_tensor *a = l_checktensor(L, 1), *b = l_checktensor(L, 2);
  double t = luaL_checknumber(L, 3), bias = luaL_checknumber(L, 4);
  check_pair(L, a, b, "SigLIPLoss");
  if (a->shape[0] != b->shape[0]) return luaL_error(L, "SigLIPLoss: columns differ in length");
  int B = (int)a->shape[0], E = (int)a->shape[1], r0, r1;
  opt_rows(L, 5, B, &r0, &r1, "SigLIPLoss");
  l_tensor *da = l_tensor_new(L, 2, a->shape), *db = l_tensor_new(L, 2, b->shape);
  double dt = 0, dbias = 0;
  double loss = r0 < 0 ? ct_loss_siglip(da->data, db->data, &dt, &dbias, a->data, b->data, B, E, t, bias)
                       : ct_loss_siglip_rows(da->data, db->data, &dt, &dbias, a->data, b->data, B, E, t, bias, r0, r1);
  push_loss(L, loss, 2, "SigLIPLoss");
  lua_pushnumber(L, dt);
  lua_pushnumber(L, dbias);
  return 5;
}

/* core.softmax_xent(logits {N,C}, labels (1-based list)) -> loss, dlogits */
static int l_xent(lua_State *L) {
  l_tensor *x = l_checktensor(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (x->ndim != 2 || x->shape[0] == 0) return luaL_error(L, "cross_entropy: expected logits {n,classes}");
  int N = (int)x->shape[0], C = (int)x->shape[1];
  if ((int)luaL_len(L, 2) != N) return luaL_error(L, "cross_entropy: %d labels for %d rows", (int)luaL_len(L, 2), N);
  int *lab = lua_newuserdatauv(L, sizeof(int) * (size_t)N, 0);
  for (int i = 0; i < N; i++) {
    lua_geti(L, 2, i + 1);
    lua_Integer v = luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (v < 1 || v > C) return luaL_error(L, "cross_entropy: label %d of row %d outside 1..%d", (int)v, i + 1, C);
    lab[i] = (int)v - 1;
  }
  l_tensor *d = l_tensor_new(L, 2, x->shape);
  double loss = ct_softmax_xent(d->data, x->data, lab, N, C);
  push_loss(L, loss, 1, "cross_entropy");
  return 2;
}

/* An optimizer is about to write all of p: if p is a model parameter never written since
 * loading (gen 0, as model.c's release_mapped reads it), its pages may still be the file's
 * private mapping, so their copy-on-write is done in one call, not a fault per page (ct.h). */
static void writing_param(lua_State *L, l_tensor *p) {
  if (p->wgen && *p->wgen == 0) ct_mem_prefault_write(p->data, (size_t)p->numel * sizeof(float));
  l_tensor_writing(L, p);
}

/* core.optim_adamw(p, m, v, g, lr, b1, b2, eps, wd, step) - in place */
static int l_adamw(lua_State *L) {
  l_tensor *p = l_checktensor(L, 1), *m = l_checktensor(L, 2), *v = l_checktensor(L, 3),
           *g = l_checktensor(L, 4);
  if (m->numel != p->numel || v->numel != p->numel || g->numel != p->numel)
    return luaL_error(L, "adamw: state and gradient sizes differ from the parameter");
  writing_param(L, p);
  l_tensor_writing(L, m);
  l_tensor_writing(L, v);
  ct_adamw_step(p->data, m->data, v->data, g->data, p->numel, luaL_checknumber(L, 5),
                luaL_checknumber(L, 6), luaL_checknumber(L, 7), luaL_checknumber(L, 8),
                luaL_checknumber(L, 9), luaL_checkinteger(L, 10));
  return 0;
}

/* core.optim_sgd(p, buf|nil, g, lr, momentum, dampening, wd, nesterov, first) */
static int l_sgd(lua_State *L) {
  l_tensor *p = l_checktensor(L, 1), *b = lua_isnil(L, 2) ? NULL : l_checktensor(L, 2),
           *g = l_checktensor(L, 3);
  if (g->numel != p->numel || (b && b->numel != p->numel))
    return luaL_error(L, "sgd: sizes differ from the parameter");
  writing_param(L, p);
  if (b) l_tensor_writing(L, b);
  ct_sgd_step(p->data, b ? b->data : NULL, g->data, p->numel, luaL_checknumber(L, 4),
              luaL_checknumber(L, 5), luaL_checknumber(L, 6), luaL_checknumber(L, 7),
              lua_toboolean(L, 8), lua_toboolean(L, 9));
  return 0;
}

/* core.sumsq(t) -> sum of squares (double) */
static int l_sumsq(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  l_pool_enter(L);
  lua_pushnumber(L, ct_sumsq(t->data, t->numel));
  return 1;
}

/* core.all_finite(t) -> boolean */
static int l_all_finite(lua_State *L) {
  l_tensor *t = l_checktensor(L, 1);
  for (int64_t i = 0; i < t->numel; i++)
    if (!isfinite(t->data[i])) {
      lua_pushboolean(L, 0);
      return 1;
    }
  lua_pushboolean(L, 1);
  return 1;
}

void l_loss_open(lua_State *L) {
  static const luaL_Reg fs[] = {
      {"loss_mnrl", l_mnrl},       {"loss_clip", l_clip},   {"loss_triplet", l_triplet},
      {"loss_siglip", l_siglip},   {"softmax_xent", l_xent}, {"optim_adamw", l_adamw},
      {"optim_sgd", l_sgd},        {"sumsq", l_sumsq},      {"all_finite", l_all_finite},
      {NULL, NULL}};
  luaL_setfuncs(L, fs, 0);
}
