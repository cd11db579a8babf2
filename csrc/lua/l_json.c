/* l_json.c - core.json_decode / core.json_encode through cJSON, for config,
 * JSONL datasets, metrics logs and the specs. JSON null decodes to
 * core.json_null (a light userdata); arrays become 1-based lists. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "lclip.h"
#include "lauxlib.h"

static void push_json(lua_State *L, const cJSON *j, int depth) {
  if (depth > 200) luaL_error(L, "json_decode: nesting too deep");
  luaL_checkstack(L, 4, "json_decode");
  if (cJSON_IsNull(j)) {
    lua_pushlightuserdata(L, NULL);
  } else if (cJSON_IsFalse(j)) {
    lua_pushboolean(L, 0);
  } else if (cJSON_IsTrue(j)) {
    lua_pushboolean(L, 1);
  } else if (cJSON_IsNumber(j)) {
    double d = j->valuedouble;
    if (d == floor(d) && fabs(d) < 9007199254740992.0)
      lua_pushinteger(L, (lua_Integer)d);
    else
      lua_pushnumber(L, d);
  } else if (cJSON_IsString(j)) {
    lua_pushstring(L, j->valuestring);
  } else if (cJSON_IsArray(j)) {
    lua_createtable(L, cJSON_GetArraySize(j), 0);
    int i = 1;
    for (const cJSON *c = j->child; c; c = c->next) {
      push_json(L, c, depth + 1);
      lua_rawseti(L, -2, i++);
    }
  } else {
    lua_newtable(L);
    for (const cJSON *c = j->child; c; c = c->next) {
      push_json(L, c, depth + 1);
      lua_setfield(L, -2, c->string ? c->string : "");
    }
  }
}

/* the parsed tree lives in a boxed userdata so an error while converting
 * (out of memory, nesting) cannot leak it */
#define JSON_BOX "clip.JsonBox"
static int box_gc(lua_State *L) {
  cJSON **b = luaL_checkudata(L, 1, JSON_BOX);
  cJSON_Delete(*b);
  *b = NULL;
  return 0;
}

/* core.json_decode(text [, name]) -> value; a parse error raises, naming name */
static int l_json_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *name = luaL_optstring(L, 2, "json");
  cJSON **box = lua_newuserdatauv(L, sizeof(cJSON *), 0);
  *box = NULL;
  luaL_setmetatable(L, JSON_BOX);
  const char *end = NULL;
  *box = cJSON_ParseWithLengthOpts(s, n, &end, 0);
  if (!*box) {
    const char *ep = cJSON_GetErrorPtr();
    size_t off = (ep && ep >= s && ep <= s + n) ? (size_t)(ep - s) : 0;
    return luaL_error(L, "%s: invalid JSON near byte %d", name, (int)off + 1);
  }
  push_json(L, *box, 0);
  cJSON_Delete(*box);
  *box = NULL;
  return 1;
}

static cJSON *to_json(lua_State *L, int idx, int depth);

static int is_array(lua_State *L, int idx, lua_Integer *len) {
  lua_Integer n = 0, max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
      lua_pop(L, 1);
      return 0;
    }
    lua_Integer k = lua_tointeger(L, -1);
    if (k > max) max = k;
    n++;
  }
  *len = n;
  return n == max && n > 0;
}

static cJSON *to_json(lua_State *L, int idx, int depth) {
  idx = lua_absindex(L, idx);
  if (depth > 200) return NULL;
  switch (lua_type(L, idx)) {
  case LUA_TNIL: return cJSON_CreateNull();
  case LUA_TLIGHTUSERDATA:
    return lua_touserdata(L, idx) == NULL ? cJSON_CreateNull() : NULL;
  case LUA_TBOOLEAN: return cJSON_CreateBool(lua_toboolean(L, idx));
  case LUA_TNUMBER: {
    double d = lua_tonumber(L, idx);
    if (!isfinite(d)) return cJSON_CreateNull();
    return cJSON_CreateNumber(d);
  }
  case LUA_TSTRING: return cJSON_CreateString(lua_tostring(L, idx));
  case LUA_TTABLE: {
    lua_Integer n;
    luaL_checkstack(L, 4, "json_encode");
    if (is_array(L, idx, &n)) {
      cJSON *a = cJSON_CreateArray();
      for (lua_Integer i = 1; a && i <= n; i++) {
        lua_geti(L, idx, i);
        cJSON *c = to_json(L, -1, depth + 1);
        lua_pop(L, 1);
        if (!c) {
          cJSON_Delete(a);
          return NULL;
        }
        cJSON_AddItemToArray(a, c);
      }
      return a;
    }
    cJSON *o = cJSON_CreateObject();
    lua_pushnil(L);
    while (o && lua_next(L, idx)) {
      const char *k;
      char buf[32];
      if (lua_type(L, -2) == LUA_TSTRING) {
        k = lua_tostring(L, -2);
      } else if (lua_type(L, -2) == LUA_TNUMBER) {
        lua_Number kn = lua_tonumber(L, -2);
        snprintf(buf, sizeof buf, "%.14g", kn);
        k = buf;
      } else {
        lua_pop(L, 2);
        cJSON_Delete(o);
        return NULL;
      }
      cJSON *c = to_json(L, -1, depth + 1);
      lua_pop(L, 1);
      if (!c) {
        lua_pop(L, 1);
        cJSON_Delete(o);
        return NULL;
      }
      cJSON_AddItemToObject(o, k, c);
    }
    return o;
  }
  default: return NULL;
  }
}

/* core.json_encode(value [, pretty]) -> string */
static int l_json_encode(lua_State *L) {
  int pretty = lua_toboolean(L, 2);
  lua_settop(L, 1);
  cJSON *j = to_json(L, 1, 0);
  if (!j) return luaL_error(L, "json_encode: value cannot be encoded (functions, userdata, cycles or deep nesting)");
  char *s = pretty ? cJSON_Print(j) : cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  if (!s) return luaL_error(L, "json_encode: out of memory");
  lua_pushstring(L, s);
  cJSON_free(s);
  return 1;
}

void l_json_open(lua_State *L) {
  luaL_newmetatable(L, JSON_BOX);
  lua_pushcfunction(L, box_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_json_decode);
  lua_setfield(L, -2, "json_decode");
  lua_pushcfunction(L, l_json_encode);
  lua_setfield(L, -2, "json_encode");
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "json_null");
}
