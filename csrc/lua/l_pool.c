/* l_pool.c - the module's thread pool as Lua sees it: one pool per lua_State (a
 * "clip.Pool" userdata in the registry, freed by its __gc), made current (pool.h) for
 * the OS thread that opened the module or last called set_num_threads.
 *
 * clip.core functions added here:
 *   set_num_threads(n)   the pool's size (1 to 256; 1 runs everything in the caller)
 *   get_num_threads() -> n
 * Default size: the online CPUs. l_pool_enter(L) (lclip.h) makes the calling state's
 * pool current; every binding that runs heavy kernels calls it first. */
#include <unistd.h>

#include "lauxlib.h"
#include "lclip.h"
#include "pool.h"

/* The module's thread pool: one per lua_State, a "clip.Pool" userdata in the registry,
 * made current (pool.h) for the OS thread that opened the module or last called
 * set_num_threads. Default size: the online CPUs. */
#define POOL_MT "clip.Pool"
#define POOL_KEY "clip.pool"

static int pool_gc(lua_State *L) {
  ct_pool **pp = luaL_checkudata(L, 1, POOL_MT);
  if (*pp) {
    ct_pool_free(*pp);
    *pp = NULL;
  }
  return 0;
}

static ct_pool *pool_install(lua_State *L, int n) {
  ct_pool **pp = lua_newuserdatauv(L, sizeof(ct_pool *), 0); /* before the threads exist */
  *pp = NULL;
  if (luaL_newmetatable(L, POOL_MT)) {
    lua_pushcfunction(L, pool_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  /* the old pool stops now rather than at the next collection */
  if (lua_getfield(L, LUA_REGISTRYINDEX, POOL_KEY) == LUA_TUSERDATA) {
    ct_pool **old = luaL_testudata(L, -1, POOL_MT);
    if (old && *old) {
      ct_pool_free(*old);
      *old = NULL;
    }
  }
  lua_pop(L, 1);
  *pp = ct_pool_new(n);
  lua_setfield(L, LUA_REGISTRYINDEX, POOL_KEY);
  ct_pool_make_current(*pp);
  return *pp;
}

static ct_pool *pool_get(lua_State *L) {
  ct_pool *p = NULL;
  if (lua_getfield(L, LUA_REGISTRYINDEX, POOL_KEY) == LUA_TUSERDATA) {
    ct_pool **pp = luaL_testudata(L, -1, POOL_MT);
    if (pp) p = *pp;
  }
  lua_pop(L, 1);
  return p;
}

/* Make this lua_State's pool current for the calling OS thread. Every binding
 * that runs heavy kernels calls it first, so a pool pointer left current by
 * another state (or by a state since closed from another thread) is never
 * used. */
void l_pool_enter(lua_State *L) { ct_pool_make_current(pool_get(L)); }

/* clip.set_num_threads(n): the pool's size (n >= 1; 1 runs everything in the caller) */
static int l_set_threads(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  if (n < 1 || n > 256) return luaL_error(L, "set_num_threads: %d threads (1 to 256)", (int)n);
  pool_install(L, (int)n);
  return 0;
}
static int l_get_threads(lua_State *L) {
  ct_pool *p = pool_get(L);
  lua_pushinteger(L, p ? ct_pool_size(p) : 1);
  return 1;
}

void l_pool_open(lua_State *L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  pool_install(L, n < 1 ? 1 : n > 256 ? 256 : (int)n);
  lua_pushcfunction(L, l_set_threads);
  lua_setfield(L, -2, "set_num_threads");
  lua_pushcfunction(L, l_get_threads);
  lua_setfield(L, -2, "get_num_threads");
}
