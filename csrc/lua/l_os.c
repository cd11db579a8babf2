/* l_os.c - the few operating-system services the Lua layer needs and Lua lacks:
 * files: core.mkdir_p, core.is_dir, core.is_file, core.listdir, core.write_file
 * (atomic: temporary file + fsync + rename), core.copy_file (atomic);
 * terminal and time: core.isatty(fd) (the progress bar, clip.progress) and
 * core.clock() (seconds of a monotonic wall clock, for rates and ETAs).
 * Environment failures return nil, message (path first). */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ct.h"
#include "lauxlib.h"
#include "lclip.h"

/* nil, a message that already names the file (ct_err) */
static int fail_msg(lua_State *L, const char *msg) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

static int fail(lua_State *L, const char *path, const char *what) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", path, what);
  return 2;
}

static int l_mkdir_p(lua_State *L) {
  size_t n;
  const char *p = luaL_checklstring(L, 1, &n);
  luaL_Buffer b;
  char *buf = luaL_buffinitsize(L, &b, n + 1);
  memcpy(buf, p, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] == '/' || buf[i] == 0) {
      char c = buf[i];
      buf[i] = 0;
      if (mkdir(buf, 0777) != 0 && errno != EEXIST) return fail(L, buf, strerror(errno));
      buf[i] = c;
    }
  }
  struct stat st;
  if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) return fail(L, p, "not a directory");
  lua_pushboolean(L, 1);
  return 1;
}

static int l_is_dir(lua_State *L) {
  struct stat st;
  lua_pushboolean(L, stat(luaL_checkstring(L, 1), &st) == 0 && S_ISDIR(st.st_mode));
  return 1;
}

static int l_is_file(lua_State *L) {
  struct stat st;
  lua_pushboolean(L, stat(luaL_checkstring(L, 1), &st) == 0 && S_ISREG(st.st_mode));
  return 1;
}

/* core.listdir(path) -> sorted list of names (no . and ..) */
static int cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}
static int l_listdir(lua_State *L) {
  const char *p = luaL_checkstring(L, 1);
  DIR *d = opendir(p);
  if (!d) return fail(L, p, strerror(errno));
  lua_newtable(L);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    lua_pushstring(L, e->d_name);
    lua_rawseti(L, -2, ++n);
  }
  closedir(d);
  /* sort in Lua for stability across file systems */
  lua_getglobal(L, "table");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, -3);
    lua_call(L, 1, 0);
  }
  lua_pop(L, 1);
  (void)cmp;
  return 1;
}

/* data[0..n) into path, atomically (ct_atomic) */
static int write_atomic(const char *path, const char *data, size_t n, ct_err *e) {
  ct_atomic at;
  if (ct_atomic_open(&at, path, e) != 0) return -1;
  return ct_atomic_commit(&at, fwrite(data, 1, n, at.f) != n, e);
}

/* core.write_file(path, string) - atomic */
static int l_write_file(lua_State *L) {
  size_t n;
  const char *p = luaL_checkstring(L, 1);
  const char *s = luaL_checklstring(L, 2, &n);
  ct_err e;
  if (write_atomic(p, s, n, &e) != 0) return fail_msg(L, e.msg);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.copy_file(src, dst) - atomic at dst */
static int l_copy_file(lua_State *L) {
  const char *src = luaL_checkstring(L, 1), *dst = luaL_checkstring(L, 2);
  FILE *f = fopen(src, "rb");
  if (!f) return fail(L, src, strerror(errno));
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  char chunk[65536];
  size_t r;
  while ((r = fread(chunk, 1, sizeof chunk, f)) > 0) luaL_addlstring(&b, chunk, r);
  int rerr = ferror(f);
  fclose(f);
  if (rerr) return fail(L, src, "read error");
  luaL_pushresult(&b);
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  ct_err e;
  if (write_atomic(dst, s, n, &e) != 0) return fail_msg(L, e.msg);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)) == 1);
  return 1;
}

static int l_clock(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
  return 1;
}

void l_os_open(lua_State *L) {
  static const luaL_Reg fs[] = {{"mkdir_p", l_mkdir_p},     {"is_dir", l_is_dir},
                                {"is_file", l_is_file},     {"listdir", l_listdir},
                                {"write_file", l_write_file}, {"copy_file", l_copy_file},
                                {"isatty", l_isatty},       {"clock", l_clock},
                                {NULL, NULL}};
  luaL_setfuncs(L, fs, 0);
}
