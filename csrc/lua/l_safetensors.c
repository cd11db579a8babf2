/* l_safetensors.c - clip.load_safetensors / clip.save_safetensors.
 *
 * load: F32 tensors become views into the mapped file (zero-copy; the
 * mapping is private, so writing to a view never touches the file); other
 * dtypes are converted to float32 copies. The mapping lives in a
 * "clip.SafetensorsFile" userdata that the views keep alive. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "l_tensor.h"
#include "lclip.h"
#include "safetensors.h"
#include "torchfile.h"

#define ST_MT "clip.SafetensorsFile"

static int stf_gc(lua_State *L) {
  ct_st_file *f = luaL_checkudata(L, 1, ST_MT);
  ct_st_close(f);
  return 0;
}

static void push_metadata(lua_State *L, const char *json) {
  lua_newtable(L);
  if (!json) return;
  cJSON *m = cJSON_Parse(json);
  if (!m) return;
  for (cJSON *it = m->child; it; it = it->next) {
    if (it->string && cJSON_IsString(it)) {
      lua_pushstring(L, it->valuestring);
      lua_setfield(L, -2, it->string);
    }
  }
  cJSON_Delete(m);
}

/* clip.load_safetensors(path) -> {name = Tensor}, {metadata = {}, dtypes = {}};
 * clip.load_torch(path) the same for a torch.save archive (pytorch_model.bin), read by the
 * restricted unpickler of torchfile.c into an in-memory safetensors-like file. */
static int load_with(lua_State *L, int (*open_fn)(const char *, ct_st_file *, ct_err *)) {
  const char *path = luaL_checkstring(L, 1);
  ct_st_file *f = lua_newuserdatauv(L, sizeof(ct_st_file), 0); /* before acquiring */
  memset(f, 0, sizeof *f);
  luaL_setmetatable(L, ST_MT);
  int fidx = lua_gettop(L);
  ct_err e;
  if (open_fn(path, f, &e) != 0) return luaL_error(L, "%s", e.msg);
  lua_createtable(L, 0, f->n); /* tensors */
  lua_newtable(L);             /* info */
  push_metadata(L, f->metadata);
  lua_setfield(L, -2, "metadata");
  lua_newtable(L);
  for (int i = 0; i < f->n; i++) {
    ct_st_entry *t = &f->entries[i];
    lua_pushstring(L, ct_dtype_name(t->dtype));
    lua_setfield(L, -2, t->name);
  }
  lua_setfield(L, -2, "dtypes");
  int tidx = lua_gettop(L) - 1;
  for (int i = 0; i < f->n; i++) {
    ct_st_entry *t = &f->entries[i];
    void *p = ct_st_ptr(f, i);
    if (t->dtype == CT_F32 && ((uintptr_t)p & 3) == 0) {
      l_tensor_view(L, fidx, p, t->ndim, t->shape, 0);
    } else {
      l_tensor *o = l_tensor_new(L, t->ndim, t->shape);
      if (ct_st_to_f32(f, i, o->data, &e) != 0) return luaL_error(L, "%s", e.msg);
    }
    lua_setfield(L, tidx, t->name);
  }
  return 2;
}

static int l_load(lua_State *L) { return load_with(L, ct_st_open); }
static int l_load_torch(lua_State *L) { return load_with(L, ct_torch_open); }

static int parse_dtype_opt(lua_State *L, const char *s) {
  if (!s || strcmp(s, "F32") == 0 || strcmp(s, "float32") == 0) return CT_F32;
  if (strcmp(s, "F16") == 0 || strcmp(s, "float16") == 0) return CT_F16;
  if (strcmp(s, "BF16") == 0 || strcmp(s, "bfloat16") == 0) return CT_BF16;
  return luaL_error(L, "save_safetensors: unknown dtype '%s' (F32, F16 or BF16)", s);
}

static int cmp_key(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* clip.save_safetensors(path, {name = Tensor}, {metadata = {k = "v"}, dtype = "F32"}) */
static int l_save(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  const char *dts = NULL;
  char *meta = NULL;
  if (lua_istable(L, 3)) {
    lua_getfield(L, 3, "dtype");
    dts = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  int dtype = parse_dtype_opt(L, dts);
  int n = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      return luaL_error(L, "save_safetensors: %s: tensor names must be strings", path);
    if (!l_totensor(L, -1))
      return luaL_error(L, "save_safetensors: %s: '%s' is not a Tensor", path,
                        lua_tostring(L, -2));
    n++;
    lua_pop(L, 1);
  }
  /* scratch arrays live in a userdata so an error cannot leak them */
  ct_st_out *outs = lua_newuserdatauv(L, sizeof(ct_st_out) * (size_t)(n ? n : 1), 0);
  int k = 0;
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    l_tensor *t = l_totensor(L, -1);
    outs[k].name = lua_tostring(L, -2); /* key stays referenced by the table */
    outs[k].data = t->data;
    outs[k].ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) outs[k].shape[d] = t->shape[d];
    outs[k].dtype = (ct_dtype)dtype;
    k++;
    lua_pop(L, 1);
  }
  if (lua_istable(L, 3)) {
    lua_getfield(L, 3, "metadata");
    if (lua_istable(L, -1)) {
      /* keys sorted, so the same call writes the same bytes in every process
       * (Lua's table order depends on a per-process hash seed) */
      int mt = lua_gettop(L), nk = 0;
      lua_pushnil(L);
      while (lua_next(L, mt)) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1)) nk++;
        lua_pop(L, 1);
      }
      const char **keys = lua_newuserdatauv(L, sizeof(char *) * (size_t)(nk ? nk : 1), 0);
      int i = 0;
      lua_pushnil(L);
      while (lua_next(L, mt)) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1) && i < nk)
          keys[i++] = lua_tostring(L, -2); /* key stays referenced by the table */
        lua_pop(L, 1);
      }
      qsort(keys, (size_t)i, sizeof(*keys), cmp_key);
      cJSON *m = cJSON_CreateObject();
      for (int j = 0; j < i; j++) {
        lua_getfield(L, mt, keys[j]);
        cJSON_AddStringToObject(m, keys[j], lua_tostring(L, -1));
        lua_pop(L, 1);
      }
      meta = cJSON_PrintUnformatted(m);
      cJSON_Delete(m);
      lua_pop(L, 1); /* keys */
    }
    lua_pop(L, 1);
  }
  ct_err e;
  int rc = ct_st_write(path, outs, n, meta, &e);
  cJSON_free(meta);
  if (rc != 0) return luaL_error(L, "%s", e.msg);
  lua_pushboolean(L, 1);
  return 1;
}

void l_safetensors_open(lua_State *L) {
  luaL_newmetatable(L, ST_MT);
  lua_pushcfunction(L, stf_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_load);
  lua_setfield(L, -2, "load_safetensors");
  lua_pushcfunction(L, l_load_torch);
  lua_setfield(L, -2, "load_torch");
  lua_pushcfunction(L, l_save);
  lua_setfield(L, -2, "save_safetensors");
}
