/* l_tokenizer.c - Lua bindings of the BPE tokenizer (csrc/core/bpe.c).
 *
 * clip.core.tokenizer_load(vocab_json, merges_txt) -> clip.Tokenizer userdata
 * Methods (mode is "hf" (default) or "openai"):
 *   t:encode(text [, mode])                    -> {ids...}  (no bos/eos)
 *   t:encode_ctx(text [, mode [, ctx=77]])     -> {bos, ids..., eos}, at most ctx long
 *   t:decode(ids [, skip_special=false])       -> string ("</w>" -> " ", not stripped)
 *   t:normalize(text [, mode])                 -> string the split sees
 *   t:pre_tokenize(text [, mode])              -> {piece...}
 *   t:bos(), t:eos(), t:vocab_size()
 *   t:token_to_id(str) -> id | nil, t:id_to_token(id) -> str | nil
 *   t:close() (also __close and __gc; idempotent), t:closed()
 * Errors (bad files, invalid UTF-8, use after close) raise.
 *
 * Memory: the userdata is created before the tokenizer is loaded; buffers the
 * core mallocs are held by a "box" userdata with __gc while Lua may raise, so
 * an error never leaks them.
 */
#include <stdlib.h>
#include <string.h>

#include "bpe.h"
#include "lauxlib.h"
#include "lclip.h"
#include "lua.h"

#define L_TOKENIZER_MT "clip.Tokenizer"
#define L_BOX_MT "clip.TokenizerBuffer"

typedef struct {
  ct_bpe *t;
} l_tok;

typedef struct {
  void *p;
} l_box;

static void box_free(l_box *b) {
  free(b->p);
  b->p = NULL;
}

static int box_gc(lua_State *L) {
  box_free(luaL_checkudata(L, 1, L_BOX_MT));
  return 0;
}

static l_box *push_box(lua_State *L) {
  l_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->p = NULL;
  luaL_setmetatable(L, L_BOX_MT);
  return b;
}

/* Methods call this again after their last allocation, just before the core
 * call: an allocation can run a __gc finalizer that closes the tokenizer. */
static ct_bpe *check_tok(lua_State *L) {
  l_tok *u = luaL_checkudata(L, 1, L_TOKENIZER_MT);
  if (!u->t) luaL_error(L, "tokenizer: attempt to use a closed tokenizer");
  return u->t;
}

static int opt_mode(lua_State *L, int idx) {
  static const char *const names[] = {"hf", "openai", NULL};
  return luaL_checkoption(L, idx, "hf", names) == 0 ? CT_BPE_HF : CT_BPE_OPENAI;
}

static const char *check_text(lua_State *L, int idx, size_t *len) {
  if (lua_type(L, idx) != LUA_TSTRING)
    luaL_error(L, "tokenizer: text must be a string, got %s", luaL_typename(L, idx));
  return lua_tolstring(L, idx, len);
}

/* The (self, text [, mode]) head of the text methods. With box, a box for the
 * core's buffer is pushed, and the tokenizer checked again after it. */
typedef struct {
  const char *s;
  size_t len;
  int mode;
} text_args;

static ct_bpe *check_text_args(lua_State *L, text_args *a, l_box **box) {
  ct_bpe *t = check_tok(L);
  a->s = check_text(L, 2, &a->len);
  a->mode = opt_mode(L, 3);
  if (!box) return t;
  *box = push_box(L);
  return check_tok(L);
}

/* A string the core malloc'ed (NULL: the error in e), pushed and freed
 * through the box. */
static int push_boxed_string(lua_State *L, l_box *b, char *s, size_t len, const ct_err *e) {
  if (!s) return luaL_error(L, "%s", e->msg);
  b->p = s;
  lua_pushlstring(L, s, len);
  box_free(b);
  return 1;
}

static void push_ids(lua_State *L, const int32_t *ids, size_t n) {
  lua_createtable(L, (int)n, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushinteger(L, ids[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

static int l_tokenizer_load(lua_State *L) {
  const char *vocab = luaL_checkstring(L, 1);
  const char *merges = luaL_checkstring(L, 2);
  l_tok *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->t = NULL;
  luaL_setmetatable(L, L_TOKENIZER_MT);
  ct_err e;
  u->t = ct_bpe_load(vocab, merges, &e);
  if (!u->t) return luaL_error(L, "%s", e.msg);
  return 1;
}

static int t_encode(lua_State *L) {
  text_args a;
  l_box *b;
  ct_bpe *t = check_text_args(L, &a, &b);
  int32_t *ids = NULL;
  size_t n = 0;
  ct_err e;
  if (ct_bpe_encode(t, a.s, a.len, a.mode, &ids, &n, &e)) return luaL_error(L, "%s", e.msg);
  b->p = ids;
  push_ids(L, ids, n);
  box_free(b);
  return 1;
}

static int t_encode_ctx(lua_State *L) {
  text_args a;
  ct_bpe *t = check_text_args(L, &a, NULL);
  lua_Integer ctx = luaL_optinteger(L, 4, 77);
  if (ctx < 2 || ctx > 1000000)
    return luaL_error(L, "tokenizer: context_length must be in [2, 1000000], got %d", (int)ctx);
  int32_t *out = lua_newuserdatauv(L, (size_t)ctx * sizeof *out, 0);
  t = check_tok(L);
  int n = 0;
  ct_err e;
  if (ct_bpe_encode_ctx(t, a.s, a.len, a.mode, (int)ctx, out, &n, &e)) return luaL_error(L, "%s", e.msg);
  push_ids(L, out, (size_t)n);
  return 1;
}

static int t_decode(lua_State *L) {
  ct_bpe *t = check_tok(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  int skip = lua_toboolean(L, 3);
  lua_Integer n = luaL_len(L, 2);
  int32_t *ids = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof *ids, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    int isint = 0;
    lua_Integer v = lua_tointegerx(L, -1, &isint);
    if (!isint || v < 0 || v > INT32_MAX)
      return luaL_error(L, "decode: ids[%d] is %s, expected a token id (integer 0..%d)", (int)i,
                        isint ? "out of range" : luaL_typename(L, -1),
                        (int)ct_bpe_vocab_size(check_tok(L)) - 1);
    ids[i - 1] = (int32_t)v;
    lua_pop(L, 1);
  }
  l_box *b = push_box(L);
  t = check_tok(L);
  size_t len = 0;
  ct_err e;
  char *s = ct_bpe_decode_ex(t, ids, (size_t)n, skip, &len, &e);
  return push_boxed_string(L, b, s, len, &e);
}

static int t_normalize(lua_State *L) {
  text_args a;
  l_box *b;
  ct_bpe *t = check_text_args(L, &a, &b);
  size_t out_len = 0;
  ct_err e;
  char *out = ct_bpe_normalize(t, a.s, a.len, a.mode, &out_len, &e);
  return push_boxed_string(L, b, out, out_len, &e);
}

/* pieces are gathered in C (the callback must not raise), then pushed */
typedef struct {
  char *buf;
  size_t n, cap;
  size_t count;
} piece_list;

static int gather_piece(const char *piece, size_t len, int32_t special, void *ud) {
  (void)special;
  piece_list *pl = ud;
  size_t need = pl->n + sizeof(size_t) + len;
  if (need > pl->cap) {
    size_t c = pl->cap ? pl->cap : 256;
    while (c < need) c *= 2;
    char *p = realloc(pl->buf, c);
    if (!p) return -2; /* distinct from the core's -1 */
    pl->buf = p;
    pl->cap = c;
  }
  memcpy(pl->buf + pl->n, &len, sizeof len);
  memcpy(pl->buf + pl->n + sizeof len, piece, len);
  pl->n = need;
  pl->count++;
  return 0;
}

static int t_pre_tokenize(lua_State *L) {
  text_args a;
  l_box *b;
  ct_bpe *t = check_text_args(L, &a, &b);
  piece_list pl = {0};
  ct_err e;
  int r = ct_bpe_pre_tokenize(t, a.s, a.len, a.mode, gather_piece, &pl, &e);
  b->p = pl.buf;
  if (r == -2) return luaL_error(L, "tokenizer: out of memory");
  if (r) return luaL_error(L, "%s", e.msg);
  lua_createtable(L, (int)pl.count, 0);
  size_t off = 0;
  for (size_t i = 0; i < pl.count; i++) {
    size_t k;
    memcpy(&k, pl.buf + off, sizeof k);
    lua_pushlstring(L, pl.buf + off + sizeof k, k);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
    off += sizeof k + k;
  }
  box_free(b);
  return 1;
}

static int t_bos(lua_State *L) {
  lua_pushinteger(L, ct_bpe_bos(check_tok(L)));
  return 1;
}

static int t_eos(lua_State *L) {
  lua_pushinteger(L, ct_bpe_eos(check_tok(L)));
  return 1;
}

static int t_vocab_size(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ct_bpe_vocab_size(check_tok(L)));
  return 1;
}

static int t_token_to_id(lua_State *L) {
  ct_bpe *t = check_tok(L);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  int32_t id = ct_bpe_token_to_id(t, s, len);
  if (id < 0) lua_pushnil(L);
  else lua_pushinteger(L, id);
  return 1;
}

static int t_id_to_token(lua_State *L) {
  ct_bpe *t = check_tok(L);
  lua_Integer id = luaL_checkinteger(L, 2);
  size_t len = 0;
  const char *s = (id < 0 || id > INT32_MAX) ? NULL : ct_bpe_id_to_token(t, (int32_t)id, &len);
  if (!s) lua_pushnil(L);
  else lua_pushlstring(L, s, len);
  return 1;
}

/* __gc, __close and close(): one idempotent release */
static int t_close(lua_State *L) {
  l_tok *u = luaL_checkudata(L, 1, L_TOKENIZER_MT);
  ct_bpe_free(u->t);
  u->t = NULL;
  return 0;
}

static int t_closed(lua_State *L) {
  l_tok *u = luaL_checkudata(L, 1, L_TOKENIZER_MT);
  lua_pushboolean(L, u->t == NULL);
  return 1;
}

static int t_tostring(lua_State *L) {
  l_tok *u = luaL_checkudata(L, 1, L_TOKENIZER_MT);
  if (u->t)
    lua_pushfstring(L, "clip.Tokenizer (%d ids)", (int)ct_bpe_vocab_size(u->t));
  else
    lua_pushliteral(L, "clip.Tokenizer (closed)");
  return 1;
}

static const luaL_Reg t_methods[] = {
    {"encode", t_encode},
    {"encode_ctx", t_encode_ctx},
    {"decode", t_decode},
    {"normalize", t_normalize},
    {"pre_tokenize", t_pre_tokenize},
    {"bos", t_bos},
    {"eos", t_eos},
    {"vocab_size", t_vocab_size},
    {"token_to_id", t_token_to_id},
    {"id_to_token", t_id_to_token},
    {"close", t_close},
    {"closed", t_closed},
    {NULL, NULL},
};

static const luaL_Reg t_meta[] = {
    {"__gc", t_close}, {"__close", t_close}, {"__tostring", t_tostring}, {NULL, NULL}};

void l_tokenizer_open(lua_State *L) {
  if (luaL_newmetatable(L, L_BOX_MT)) {
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, L_TOKENIZER_MT)) {
    luaL_newlib(L, t_methods);
    lua_setfield(L, -2, "__index");
    luaL_setfuncs(L, t_meta, 0);
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, l_tokenizer_load);
  lua_setfield(L, -2, "tokenizer_load");
}
