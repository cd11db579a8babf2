/* l_model.c - the "clip.ModelCore" userdata: a loaded parameter table and
 * the two encoders. The friendly clip.Model (lua/clip/model.lua) wraps it.
 *
 * Lifetime: parameters handed out as Tensor views keep the core alive. close()
 * frees the weights at once when no view was ever handed out; otherwise it
 * marks the model closed (every method then errors) and the memory goes with
 * the last view, at garbage collection, so a stale view can never dangle. */
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "gemm.h"
#include "l_tensor.h"
#include "lclip.h"
#include "model.h"
#include "safetensors.h"
#include "train.h"
#include "kernels.h"

#define MODEL_MT "clip.ModelCore"

typedef struct l_model {
  ct_model m;
  int live;        /* weights present */
  int closed;      /* user called close() */
  int views;       /* parameter views handed out */
} l_model;

static l_model *check_model(lua_State *L, int idx) {
  l_model *m = luaL_checkudata(L, idx, MODEL_MT);
  if (m->closed || !m->live) luaL_error(L, "model is closed");
  return m;
}

/* Re-check just before the core uses the weights: reading options, building
 * output tensors and reading id lists can run Lua code (metamethods, __gc
 * finalizers at an allocation) that closes the model in the middle of the
 * call; the weights may then be gone. */
static void still_open(lua_State *L, l_model *m) {
  if (m->closed || !m->live) luaL_error(L, "model is closed");
}

static int mc_gc(lua_State *L) {
  l_model *m = luaL_checkudata(L, 1, MODEL_MT);
  if (m->live) ct_model_free(&m->m);
  m->live = 0;
  m->closed = 1;
  return 0;
}

static int mc_close(lua_State *L) {
  l_model *m = luaL_checkudata(L, 1, MODEL_MT);
  if (m->live && !m->views) {
    ct_model_free(&m->m);
    m->live = 0;
  }
  m->closed = 1;
  return 0;
}

static int mc_is_closed(lua_State *L) {
  l_model *m = luaL_checkudata(L, 1, MODEL_MT);
  lua_pushboolean(L, m->closed);
  return 1;
}

static void push_tower(lua_State *L, const ct_tower_cfg *t, int vision) {
  lua_newtable(L);
  l_set_int(L, "hidden_size", t->hidden);
  l_set_int(L, "intermediate_size", t->inter);
  l_set_int(L, "num_attention_heads", t->heads);
  l_set_int(L, "num_hidden_layers", t->layers);
  l_set_str(L, "hidden_act", t->act_name);
  l_set_num(L, "layer_norm_eps", t->eps);
  if (vision) {
    l_set_int(L, "image_size", t->image_size);
    l_set_int(L, "patch_size", t->patch_size);
    l_set_int(L, "num_channels", t->channels);
  } else {
    l_set_int(L, "vocab_size", t->vocab);
    l_set_int(L, "max_position_embeddings", t->max_pos);
    l_set_int(L, "bos_token_id", t->bos);
    l_set_int(L, "eos_token_id", t->eos);
    l_set_int(L, "pad_token_id", t->pad);
  }
}

static void push_config(lua_State *L, const ct_config *c) {
  lua_newtable(L);
  l_set_int(L, "projection_dim", c->projection_dim);
  l_set_num(L, "logit_scale_init_value", c->logit_scale_init);
  l_set_str(L, "model_type", "clip");
  push_tower(L, &c->text, 0);
  lua_setfield(L, -2, "text_config");
  push_tower(L, &c->vision, 1);
  lua_setfield(L, -2, "vision_config");
}

static void push_paths(lua_State *L, const ct_model_paths *p) {
  lua_newtable(L);
  l_set_str(L, "root", p->root);
  l_set_str(L, "config", p->config);
  l_set_str(L, "preprocessor", p->preprocessor);
  l_set_str(L, "vocab", p->vocab);
  l_set_str(L, "merges", p->merges);
  l_set_str(L, "weights", p->weights);
  l_set_bool(L, "sharded", p->sharded);
  l_set_bool(L, "torch", p->torch);
  l_set_bool(L, "sentence_transformers", p->sentence_transformers);
}

/* {d1, d2, ...} */
static void push_shape(lua_State *L, const int64_t *shape, int ndim) {
  lua_createtable(L, ndim, 0);
  for (int d = 0; d < ndim; d++) {
    lua_pushinteger(L, shape[d]);
    lua_rawseti(L, -2, d + 1);
  }
}

static l_model *new_model(lua_State *L) {
  l_model *m = lua_newuserdatauv(L, sizeof(l_model), 1);
  memset(m, 0, sizeof *m);
  luaL_setmetatable(L, MODEL_MT);
  return m;
}

/* core.model_load(dir [, half]) -> ModelCore, paths  (half: CT_LOAD_HALF) */
static int l_model_load(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  unsigned flags = lua_toboolean(L, 2) ? CT_LOAD_HALF : 0;
  l_model *m = new_model(L);
  ct_model_paths *p = lua_newuserdatauv(L, sizeof(ct_model_paths), 0); /* scratch */
  ct_err e;
  l_pool_enter(L); /* a half model is packed while loading */
  if (ct_model_load_ex(dir, flags, &m->m, p, &e) != 0) return luaL_error(L, "%s", e.msg);
  m->live = 1;
  push_paths(L, p);
  lua_remove(L, -2);
  return 2;
}

/* core.model_find(dir) -> paths (no weights read) */
static int l_model_find(lua_State *L) {
  const char *dir = luaL_checkstring(L, 1);
  ct_model_paths *p = lua_newuserdatauv(L, sizeof(ct_model_paths), 0);
  ct_err e;
  if (ct_model_find(dir, p, &e) != 0) return luaL_error(L, "%s", e.msg);
  push_paths(L, p);
  return 1;
}

/* core.config_parse(json_text [, name]) -> config table */
static int l_config_parse(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  const char *name = luaL_optstring(L, 2, "config.json");
  ct_config c;
  ct_err e;
  if (ct_config_parse(s, len, name, &c, &e) != 0) return luaL_error(L, "%s", e.msg);
  push_config(L, &c);
  return 1;
}

/* core.model_new(config_json_text) -> ModelCore with zero weights */
static int l_model_new(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  l_model *m = new_model(L);
  ct_config c;
  ct_err e;
  if (ct_config_parse(s, len, "config", &c, &e) != 0) return luaL_error(L, "%s", e.msg);
  if (ct_model_init(&c, &m->m, &e) != 0) return luaL_error(L, "%s", e.msg);
  m->live = 1;
  return 1;
}

/* core.config_layout(config_json_text) -> list of {name, shape, numel} */
static int l_config_layout(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  ct_config c;
  ct_err e;
  if (ct_config_parse(s, len, "config", &c, &e) != 0) return luaL_error(L, "%s", e.msg);
  ct_param *ps;
  int n;
  if (ct_model_layout(&c, &ps, &n, &e) != 0) return luaL_error(L, "%s", e.msg);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_createtable(L, 0, 3);
    l_set_str(L, "name", ps[i].name);
    l_set_int(L, "numel", ps[i].numel);
    push_shape(L, ps[i].shape, ps[i].ndim);
    lua_setfield(L, -2, "shape");
    lua_rawseti(L, -2, i + 1);
  }
  free(ps);
  return 1;
}

static int mc_config(lua_State *L) {
  l_model *m = check_model(L, 1);
  push_config(L, &m->m.cfg);
  return 1;
}

static int mc_config_json(lua_State *L) {
  l_model *m = check_model(L, 1);
  char *s = ct_config_to_json(&m->m.cfg);
  if (!s) return luaL_error(L, "out of memory");
  lua_pushstring(L, s);
  free(s);
  return 1;
}

/* m:param_info() -> list of {name, shape, numel, dtype} in HF order */
static int mc_param_info(lua_State *L) {
  l_model *m = check_model(L, 1);
  lua_createtable(L, m->m.nparams, 0);
  for (int i = 0; i < m->m.nparams; i++) {
    still_open(L, m);
    const ct_param p = m->m.params[i]; /* a copy: the loop allocates (see still_open) */
    lua_createtable(L, 0, 4);
    l_set_str(L, "name", p.name);
    l_set_int(L, "numel", p.numel);
    l_set_str(L, "dtype", ct_dtype_name((ct_dtype)p.dtype));
    l_set_bool(L, "mapped", !p.owned);
    push_shape(L, p.shape, p.ndim);
    lua_setfield(L, -2, "shape");
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* A half-precision model becomes float32 before anything reads or writes its parameters
 * directly (ct_model_materialize). */
static void need_float(lua_State *L, l_model *m) {
  ct_err e;
  if (ct_model_lazy(&m->m) && ct_model_materialize(&m->m, &e) != 0) luaL_error(L, "%s", e.msg);
}

/* Training reads and writes the trainable parameters (frozen blocks run on their packs). */
static void need_float_trainable(lua_State *L, l_model *m) {
  for (int i = 0; i < m->m.nparams; i++)
    if (!m->m.params[i].data && m->m.params[i].requires_grad) {
      need_float(L, m);
      return;
    }
}

/* m:lazy() -> true when some parameters exist only packed / in the file (ct_model_lazy) */
static int mc_lazy(lua_State *L) {
  l_model *m = check_model(L, 1);
  lua_pushboolean(L, ct_model_lazy(&m->m));
  return 1;
}

/* m:is_half() -> "F16" | "BF16" | nil: the weights kept in half precision */
static int mc_is_half(lua_State *L) {
  l_model *m = check_model(L, 1);
  if (m->m.half_kind == PK_F16) lua_pushliteral(L, "F16");
  else if (m->m.half_kind == PK_BF16) lua_pushliteral(L, "BF16");
  else lua_pushnil(L);
  return 1;
}

/* m:param(name) -> Tensor view of the parameter (writes go to the model) */
static int mc_param(lua_State *L) {
  l_model *m = check_model(L, 1);
  const char *name = luaL_checkstring(L, 2);
  int i = ct_model_find_param(&m->m, name);
  if (i < 0) return luaL_error(L, "model has no parameter '%s'", name);
  if (!m->m.params[i].data) need_float(L, m); /* one of the half weights */
  ct_param *p = &m->m.params[i];
  m->views++;
  p->pinned = 1; /* the view points at p->data: packing must never free it */
  l_tensor *t = l_tensor_view(L, 1, p->data, p->ndim, p->shape, 0);
  t->wgen = &p->gen; /* writes through the view make the packed copies stale */
  return 1;
}

/* Bring the packed weights up to date before a forward pass (ct_model_pack); when memory
 * runs out the encoders simply use the original weights. */
static void pack_model(lua_State *L, l_model *m, int frozen_only) {
  ct_err e;
  if (ct_packed_max_m() > 0 && ct_model_pack(&m->m, frozen_only, &e) != 0 && ct_model_lazy(&m->m))
    luaL_error(L, "%s", e.msg); /* some weights exist only packed: cannot fall back */
}

/* m:set_packing(on): packed weight copies for small batches (default on; off frees them) */
static int mc_set_packing(lua_State *L) {
  l_model *m = check_model(L, 1);
  if (!lua_toboolean(L, 2)) need_float(L, m); /* a half model has nothing but its packs */
  m->m.pack_off = !lua_toboolean(L, 2);
  if (m->m.pack_off) ct_model_unpack(&m->m);
  return 0;
}

/* m:packed() -> number of blocks whose packed weights are current */
static int mc_packed(lua_State *L) {
  l_model *m = check_model(L, 1);
  int n = 0;
  for (int l = 0; l < m->m.cfg.text.layers; l++) n += ct_pack_ok(m->m.tower[0].blocks[l].pk);
  for (int l = 0; l < m->m.cfg.vision.layers; l++) n += ct_pack_ok(m->m.tower[1].blocks[l].pk);
  lua_pushinteger(L, n);
  return 1;
}

/* The {pooled=, last_hidden=, capture_layer=} options of encode_pixels /
 * encode_ids. */
typedef struct {
  int pooled, hidden, cap;
} fwd_opts;

static void read_fwd_opts(lua_State *L, int idx, fwd_opts *f) {
  f->pooled = f->hidden = 0;
  f->cap = -1;
  if (!lua_istable(L, idx)) return;
  lua_getfield(L, idx, "pooled");
  f->pooled = lua_toboolean(L, -1);
  lua_getfield(L, idx, "last_hidden");
  f->hidden = lua_toboolean(L, -1);
  lua_getfield(L, idx, "capture_layer");
  f->cap = (int)luaL_optinteger(L, -1, -1);
  lua_pop(L, 3);
}

/* Push the embeddings {B,E} and an extras table holding the requested
 * outputs ({B,D} pooled, {B,T,D} hidden states); point o at their data. */
static void push_fwd_outputs(lua_State *L, const fwd_opts *f, int B, int T, int D, int E,
                             ct_fwd_out *o) {
  int64_t se[2] = {B, E}, sp[2] = {B, D}, sh[3] = {B, T, D};
  memset(o, 0, sizeof *o);
  o->embeds = l_tensor_new(L, 2, se)->data;
  int extras = lua_gettop(L) + 1;
  lua_newtable(L);
  if (f->pooled) {
    o->pooled = l_tensor_new(L, 2, sp)->data;
    lua_setfield(L, extras, "pooled");
  }
  if (f->hidden) {
    o->last_hidden = l_tensor_new(L, 3, sh)->data;
    lua_setfield(L, extras, "last_hidden");
  }
  if (f->cap >= 0) {
    o->capture_layer = f->cap;
    o->captured = l_tensor_new(L, 3, sh)->data;
    lua_setfield(L, extras, "captured");
  }
}

/* Pixels {n,C,S,S} for the vision tower c. */
static int pixels_fit(const ct_tower_cfg *c, const l_tensor *px) {
  return px->ndim == 4 && px->shape[1] == c->channels && px->shape[2] == c->image_size &&
         px->shape[3] == c->image_size;
}

/* Raise "<what>: ..." unless px is a non-empty pixel batch for c; returns n. */
static int check_pixels(lua_State *L, const ct_tower_cfg *c, l_tensor *px, const char *what) {
  char sb[128];
  if (!pixels_fit(c, px))
    luaL_error(L, "%s: pixel tensor has shape %s, expected {n,%d,%d,%d}", what,
               l_shape_str(px, sb, sizeof sb), c->channels, c->image_size, c->image_size);
  if (px->shape[0] == 0) luaL_error(L, "%s: empty batch", what);
  return (int)px->shape[0];
}

/* m:encode_pixels(pixels {B,C,S,S} [, {pooled=, last_hidden=, capture_layer=}])
 * -> embeds {B,E}, extras table */
static int mc_encode_pixels(lua_State *L) {
  l_model *m = check_model(L, 1);
  l_pool_enter(L);
  l_tensor *px = l_checktensor(L, 2);
  const ct_tower_cfg *c = &m->m.cfg.vision;
  int B = check_pixels(L, c, px, "encode_images");
  for (int64_t i = 0; i < px->numel; i++) {
    float v = px->data[i];
    if (v != v || v - v != 0)
      return luaL_error(L, "encode_images: pixel tensor holds NaN or Inf (image %d)",
                        (int)(i / (px->numel / B)) + 1);
  }
  fwd_opts fo;
  read_fwd_opts(L, 3, &fo);
  still_open(L, m); /* the options table may have metamethods */
  int T = (c->image_size / c->patch_size) * (c->image_size / c->patch_size) + 1;
  ct_fwd_out o;
  push_fwd_outputs(L, &fo, B, T, c->hidden, m->m.cfg.projection_dim, &o);
  ct_err e;
  still_open(L, m);
  pack_model(L, m, 0);
  o.scratch = &m->m; /* this state owns the model: reuse its scratch blocks */
  if (ct_encode_image(&m->m, px->data, B, &o, &e) != 0) return luaL_error(L, "%s", e.msg);
  return 2;
}

/* Read a list of id lists at idx into a scratch userdata (pushed), padded
 * with the eos id to the longest. */
static int32_t *check_ids(lua_State *L, l_model *m, int idx, int *Bp, int *Tp) {
  luaL_checktype(L, idx, LUA_TTABLE);
  const ct_tower_cfg *c = &m->m.cfg.text;
  int B = (int)luaL_len(L, idx), T = 0;
  if (B == 0) return (luaL_error(L, "encode_texts: empty batch"), (int32_t *)NULL);
  for (int b = 1; b <= B; b++) {
    if (lua_geti(L, idx, b) != LUA_TTABLE)
      return (luaL_error(L, "encode_texts: item %d is not a list of token ids", b), (int32_t *)NULL);
    int n = (int)luaL_len(L, -1);
    if (n == 0) return (luaL_error(L, "encode_texts: item %d is an empty id list", b), (int32_t *)NULL);
    if (n > T) T = n;
    lua_pop(L, 1);
  }
  if (T > c->max_pos)
    return (luaL_error(L, "encode_texts: %d tokens exceed max_position_embeddings %d (truncate first)",
                      T, c->max_pos), (int32_t *)NULL);
  int32_t *ids = lua_newuserdatauv(L, sizeof(int32_t) * (size_t)B * T, 0);
  for (int b = 0; b < B; b++) {
    lua_geti(L, idx, b + 1);
    int n = (int)luaL_len(L, -1);
    for (int t = 0; t < T; t++) {
      if (t < n) {
        lua_geti(L, -1, t + 1);
        still_open(L, m); /* a metamethod may have closed the model */
        int ok;
        lua_Integer v = lua_tointegerx(L, -1, &ok);
        if (!ok) return (luaL_error(L, "encode_texts: item %d, position %d is not an integer", b + 1, t + 1), (int32_t *)NULL);
        if (v < 0 || v >= c->vocab)
          return (luaL_error(L, "encode_texts: token id %d (item %d, position %d) is outside the vocabulary of %d",
                            (int)v, b + 1, t + 1, c->vocab), (int32_t *)NULL);
        ids[(size_t)b * T + t] = (int32_t)v;
        lua_pop(L, 1);
      } else {
        ids[(size_t)b * T + t] = c->eos < c->vocab ? c->eos : 0;
      }
    }
    lua_pop(L, 1);
  }
  *Bp = B;
  *Tp = T;
  return ids;
}

/* m:encode_ids(list of id lists [, opts]) -> embeds {B,E}, extras.
 * Shorter lists are padded with the eos id (after the pooled token it
 * changes nothing). Ids are 0-based token ids as in vocab.json. */
static int mc_encode_ids(lua_State *L) {
  l_model *m = check_model(L, 1);
  l_pool_enter(L);
  const ct_tower_cfg *c = &m->m.cfg.text;
  int B, T;
  int32_t *ids = check_ids(L, m, 2, &B, &T);
  fwd_opts fo;
  read_fwd_opts(L, 3, &fo);
  still_open(L, m); /* the id lists and options may have metamethods */
  ct_fwd_out o;
  push_fwd_outputs(L, &fo, B, T, c->hidden, m->m.cfg.projection_dim, &o);
  int out = lua_gettop(L) - 1; /* the embeddings; the extras table is above */
  lua_createtable(L, B, 0);
  for (int b = 0; b < B; b++) {
    lua_pushinteger(L, ct_text_eos_index(&m->m.cfg, ids + (size_t)b * T, T) + 1);
    lua_rawseti(L, -2, b + 1);
  }
  lua_setfield(L, out + 1, "eos_index");
  ct_err e;
  still_open(L, m);
  pack_model(L, m, 0);
  o.scratch = &m->m;
  if (ct_encode_text(&m->m, ids, B, T, &o, &e) != 0) return luaL_error(L, "%s", e.msg);
  return 2;
}


/* ------------------------------------------------------------ training */

#define TAPE_MT "clip.Tape"

static int tape_gc(lua_State *L) {
  ct_tape *t = luaL_checkudata(L, 1, TAPE_MT);
  ct_tape_free(t);
  return 0;
}

static ct_param *check_param(lua_State *L, l_model *m, int idx) {
  const char *name = luaL_checkstring(L, idx);
  int i = ct_model_find_param(&m->m, name);
  if (i < 0) luaL_error(L, "model has no parameter '%s'", name);
  return &m->m.params[i];
}

/* m:set_requires_grad(name, flag) */
static int mc_set_requires_grad(lua_State *L) {
  l_model *m = check_model(L, 1);
  ct_param *p = check_param(L, m, 2);
  p->requires_grad = lua_toboolean(L, 3);
  return 0;
}

static int mc_requires_grad(lua_State *L) {
  l_model *m = check_model(L, 1);
  lua_pushboolean(L, check_param(L, m, 2)->requires_grad);
  return 1;
}

/* m:grad(name [, create]) -> Tensor view of the gradient, or nil when no
 * backward has written one since the last zero_grad (torch's grad is None).
 * create = true makes (and marks) a zeroed gradient, for code that adds to it. */
static int mc_grad(lua_State *L) {
  l_model *m = check_model(L, 1);
  ct_param *p = check_param(L, m, 2);
  if (lua_toboolean(L, 3)) {
    if (!p->grad) {
      p->grad = calloc((size_t)(p->numel ? p->numel : 1), sizeof(float));
      if (!p->grad) return luaL_error(L, "out of memory allocating the gradient of %s", p->name);
    }
    p->has_grad = 1;
  }
  if (!p->grad || !p->has_grad) {
    lua_pushnil(L);
    return 1;
  }
  m->views++;
  l_tensor_view(L, 1, p->grad, p->ndim, p->shape, 0);
  return 1;
}

/* m:alloc_grads() - zeroed gradients for every trainable parameter */
static int mc_alloc_grads(lua_State *L) {
  l_model *m = check_model(L, 1);
  ct_err e;
  if (ct_model_alloc_grads(&m->m, &e) != 0) return luaL_error(L, "%s", e.msg);
  return 0;
}

static int mc_zero_grad(lua_State *L) {
  l_model *m = check_model(L, 1);
  l_pool_enter(L);
  ct_model_zero_grads(&m->m);
  return 0;
}

/* m:trainable("vision"|"text") -> {emb=, post=, proj=, first_layer= (1-based; layers+1 = none)} */
static int mc_trainable(lua_State *L) {
  l_model *m = check_model(L, 1);
  int vision = strcmp(luaL_checkstring(L, 2), "vision") == 0;
  ct_trainable t;
  ct_tower_trainable(&m->m, vision, &t);
  lua_newtable(L);
  l_set_bool(L, "emb", t.emb);
  l_set_bool(L, "post", t.post);
  l_set_bool(L, "proj", t.proj);
  l_set_int(L, "first_layer", t.first_layer + 1);
  l_set_bool(L, "below_projection", t.emb || t.post || t.first_layer < (vision ? m->m.cfg.vision.layers : m->m.cfg.text.layers));
  return 1;
}

static int32_t *check_ids(lua_State *L, l_model *m, int idx, int *Bp, int *Tp);

/* m:forward_train(pixels {B,3,S,S} | id lists) -> embeds {B,E}, tape */
static int mc_forward_train(lua_State *L) {
  l_model *m = check_model(L, 1);
  l_pool_enter(L);
  need_float_trainable(L, m);
  l_tensor *px = l_totensor(L, 2);
  int vision = px != NULL, B, T = 0;
  const int32_t *ids = NULL;
  if (vision) B = check_pixels(L, &m->m.cfg.vision, px, "forward");
  else ids = check_ids(L, m, 2, &B, &T);
  int64_t se[2] = {B, m->m.cfg.projection_dim};
  l_tensor *emb = l_tensor_new(L, 2, se);
  ct_tape *t = lua_newuserdatauv(L, sizeof(ct_tape), 0);
  memset(t, 0, sizeof *t);
  luaL_setmetatable(L, TAPE_MT);
  ct_err e;
  still_open(L, m);
  pack_model(L, m, 1);
  if (ct_forward_train(&m->m, vision, vision ? px->data : NULL, ids, B, T, emb->data, t, &e) != 0)
    return luaL_error(L, "%s", e.msg);
  return 2;
}

/* m:backward(tape, dembeds {B,E}) - accumulate parameter gradients */
static int mc_backward(lua_State *L) {
  l_model *m = check_model(L, 1);
  l_pool_enter(L);
  ct_tape *t = luaL_checkudata(L, 2, TAPE_MT);
  l_tensor *d = l_checktensor(L, 3);
  if (!t->mem) return luaL_error(L, "backward: the tape was already used or freed");
  if (d->numel != (int64_t)t->B * m->m.cfg.projection_dim)
    return luaL_error(L, "backward: gradient has %d values, expected %d x %d", (int)d->numel,
                      t->B, m->m.cfg.projection_dim);
  ct_err e;
  if (ct_model_alloc_grads(&m->m, &e) != 0) return luaL_error(L, "%s", e.msg);
  int rc = ct_backward(&m->m, t, d->data, &e);
  if (!lua_toboolean(L, 4)) ct_tape_release(&m->m, t); /* keep = true retains the tape */
  if (rc != 0) return luaL_error(L, "%s", e.msg);
  return 0;
}

/* m:release_tape(tape) - give a tape's memory back to the model's scratch
 * without running backward (GradCache's no-graph pass); idempotent */
static int mc_release_tape(lua_State *L) {
  l_model *m = check_model(L, 1);
  ct_tape *t = luaL_checkudata(L, 2, TAPE_MT);
  if (t->mem) ct_tape_release(&m->m, t);
  return 0;
}

/* m:project(pooled {B,D}, "vision"|"text") -> embeds {B,E} */
static int mc_project(lua_State *L) {
  l_model *m = check_model(L, 1);
  l_pool_enter(L);
  l_tensor *x = l_checktensor(L, 2);
  int vision = strcmp(luaL_checkstring(L, 3), "vision") == 0;
  int D = vision ? m->m.cfg.vision.hidden : m->m.cfg.text.hidden, E = m->m.cfg.projection_dim;
  if (x->ndim != 2 || x->shape[1] != D)
    return luaL_error(L, "project: expected pooled features {n,%d}", D);
  int64_t s[2] = {x->shape[0], E};
  l_tensor *o = l_tensor_new(L, 2, s);
  still_open(L, m);
  linear_forward(o->data, x->data, m->m.tower[vision].proj, NULL, (int)x->shape[0], D, E);
  return 1;
}

/* m:project_backward(pooled {B,D}, dembeds {B,E}, "vision"|"text") */
static int mc_project_backward(lua_State *L) {
  l_model *m = check_model(L, 1);
  l_pool_enter(L);
  l_tensor *x = l_checktensor(L, 2), *d = l_checktensor(L, 3);
  int vision = strcmp(luaL_checkstring(L, 4), "vision") == 0;
  int D = vision ? m->m.cfg.vision.hidden : m->m.cfg.text.hidden, E = m->m.cfg.projection_dim;
  if (x->ndim != 2 || x->shape[1] != D || d->numel != x->shape[0] * E)
    return luaL_error(L, "project_backward: shapes do not match");
  ct_param *p = ct_model_tower_param(&m->m, vision, (int)offsetof(ct_tower_w, proj));
  if (!p || !p->requires_grad) return 0;
  ct_err e;
  if (ct_model_alloc_grads(&m->m, &e) != 0) return luaL_error(L, "%s", e.msg);
  p->has_grad = 1;
  linear_backward(NULL, p->grad, NULL, d->data, x->data, p->data, (int)x->shape[0], D, E);
  return 0;
}

/* m:encode_ref(pixels | id lists) -> embeds from the naive twin of the tower */
static int mc_encode_ref(lua_State *L) {
  l_model *m = check_model(L, 1);
  l_pool_enter(L);
  need_float(L, m);
  l_tensor *px = l_totensor(L, 2);
  ct_err e;
  int64_t se[2] = {0, m->m.cfg.projection_dim};
  if (px) {
    const ct_tower_cfg *c = &m->m.cfg.vision;
    if (!pixels_fit(c, px) || px->shape[0] < 1)
      return luaL_error(L, "encode_ref: expected pixels {n,%d,%d,%d}", c->channels, c->image_size, c->image_size);
    se[0] = px->shape[0];
    l_tensor *o = l_tensor_new(L, 2, se);
    if (ct_encode_image_ref(&m->m, px->data, (int)se[0], o->data, &e) != 0) return luaL_error(L, "%s", e.msg);
    return 1;
  }
  int B, T;
  int32_t *ids = check_ids(L, m, 2, &B, &T);
  se[0] = B;
  l_tensor *o = l_tensor_new(L, 2, se);
  if (ct_encode_text_ref(&m->m, ids, B, T, o->data, &e) != 0) return luaL_error(L, "%s", e.msg);
  return 1;
}

static const luaL_Reg methods[] = {
    {"encode_ref", mc_encode_ref},
    {"set_packing", mc_set_packing}, {"packed", mc_packed}, {"is_half", mc_is_half},
    {"lazy", mc_lazy},
    {"close", mc_close},           {"is_closed", mc_is_closed},
    {"config", mc_config},         {"config_json", mc_config_json},
    {"param_info", mc_param_info}, {"param", mc_param},
    {"encode_pixels", mc_encode_pixels}, {"encode_ids", mc_encode_ids},
    {"set_requires_grad", mc_set_requires_grad}, {"requires_grad", mc_requires_grad},
    {"grad", mc_grad},             {"alloc_grads", mc_alloc_grads},
    {"zero_grad", mc_zero_grad},   {"trainable", mc_trainable},
    {"forward_train", mc_forward_train}, {"backward", mc_backward},
    {"project", mc_project},       {"project_backward", mc_project_backward},
    {"release_tape", mc_release_tape},
    {NULL, NULL}};

static const luaL_Reg meta[] = {{"__gc", mc_gc}, {"__close", mc_close}, {NULL, NULL}};

static const luaL_Reg funcs[] = {
    {"model_load", l_model_load},     {"model_find", l_model_find},
    {"model_new", l_model_new},       {"config_parse", l_config_parse},
    {"config_layout", l_config_layout}, {NULL, NULL}};

void l_model_open(lua_State *L) {
  luaL_newmetatable(L, TAPE_MT);
  lua_pushcfunction(L, tape_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, MODEL_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  luaL_setfuncs(L, meta, 0);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
