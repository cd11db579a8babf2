/* lua_main.c - a minimal stand-alone Lua 5.4 interpreter, linked against
 * liblua5.4, so that it can be built with -fsanitize=address (mk/robustness.mk,
 * `make test-asan`): with the ASan runtime linked into the executable rather
 * than preloaded, processes the specs start (cc, sh, ...) do not inherit it.
 *
 *   lua_main [-e chunk]... [script [args...]]
 *
 * Like lua.c: `arg` holds the script at 0 and its arguments at 1..n; the exit
 * status is 0, or 1 after printing an uncaught error with a traceback to
 * stderr; os.exit works as usual. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    fprintf(stderr, "lua_main: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return status;
}

static int run(lua_State *L, int nargs) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, 0, base);
  lua_remove(L, base);
  return report(L, status);
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "lua_main: cannot create a state\n");
    return 1;
  }
  luaL_openlibs(L);
  int i = 1, status = LUA_OK;
  while (status == LUA_OK && i + 1 < argc && strcmp(argv[i], "-e") == 0) {
    status = luaL_loadstring(L, argv[i + 1]);
    status = status == LUA_OK ? run(L, 0) : report(L, status);
    i += 2;
  }
  if (status == LUA_OK && i < argc) {
    lua_createtable(L, argc - i, i + 1); /* arg: script at 0, interpreter at -i */
    for (int k = 0; k < argc; k++) {
      lua_pushstring(L, argv[k]);
      lua_rawseti(L, -2, k - i);
    }
    lua_setglobal(L, "arg");
    status = luaL_loadfile(L, argv[i]);
    if (status == LUA_OK) {
      int n = argc - i - 1;
      luaL_checkstack(L, n, "too many arguments");
      for (int k = i + 1; k < argc; k++) lua_pushstring(L, argv[k]);
      status = run(L, n);
    } else {
      report(L, status);
    }
  }
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}
