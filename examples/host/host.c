/* host.c - a C program that embeds Lua and uses clip from it.
 *
 * Built twice by `make host` (mk/capi.mk):
 *   build/host/host         require "clip" finds clip/core.so through package.cpath
 *                           (LUA_CPATH), like any Lua C module;
 *   build/host/static_host  compiled with -DCLIP_STATIC: clip.core is linked into
 *                           the program and registered with luaL_requiref, so no
 *                           shared object is loaded. The Lua half (lua/clip/ files)
 *                           still comes from package.path (LUA_PATH).
 *
 * usage: host MODEL_DIR IMAGE TEXT [--states N] [--threads N]
 *
 * For each of N Lua states (default 1), created side by side and closed in
 * turn, it loads clip, embeds IMAGE and TEXT with MODEL_DIR and prints their
 * cosine similarity; it checks that requiring clip added no global, that a
 * failing clip.load is a catchable error (the host goes on), and that closing
 * the state returns every byte Lua allocated. With --threads N it also runs N
 * threads at once, each with its own state, and checks they agree.
 * Exit status: 0 when every check passed, 1 otherwise. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

#ifdef CLIP_STATIC
int luaopen_clip_core(lua_State *L);
#endif

/* ------------------------------------------------ an allocator that counts */
typedef struct counter {
  size_t live; /* bytes currently allocated by this state */
  size_t peak;
} counter;

static void *count_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  counter *c = ud;
  if (ptr == NULL) osize = 0; /* osize then encodes the object type */
  if (nsize == 0) {
    free(ptr);
    c->live -= osize;
    return NULL;
  }
  void *p = realloc(ptr, nsize);
  if (p) {
    c->live = c->live - osize + nsize;
    if (c->live > c->peak) c->peak = c->live;
  }
  return p;
}

/* ------------------------------------------------------------- one state */
typedef struct job {
  const char *model, *image, *text;
  counter mem;
  double similarity;
  int dim;
  int globals_added;
  int load_error_caught;
  char error[512];
} job;

/* The Lua side: everything a script embedding clip would do. */
static const char *SNIPPET =
    "local model_dir, image, text = ...\n"
    "local clip = require 'clip'\n"
    "local m <close> = clip.load(model_dir)\n"
    "local img = m:encode_images({image}, {normalize = true})\n"
    "local txt = m:encode_texts({text}, {normalize = true})\n"
    "return clip.cosine_similarity(img, txt):get(1, 1), img:size(2)\n";

static int count_globals(lua_State *L) {
  int n = 0;
  lua_pushglobaltable(L);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    n++;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return n;
}

static int traceback(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

static lua_State *open_state(job *j) {
  lua_State *L = lua_newstate(count_alloc, &j->mem);
  if (!L) return NULL;
  luaL_openlibs(L);
#ifdef CLIP_STATIC
  /* package.loaded["clip.core"] = luaopen_clip_core(L); no global (glb = 0) */
  luaL_requiref(L, "clip.core", luaopen_clip_core, 0);
  lua_pop(L, 1);
#endif
  return L;
}

/* Run the snippet in L; 0 on success, else j->error is set. */
static int run(lua_State *L, job *j) {
  int before = count_globals(L);
  lua_pushcfunction(L, traceback);
  if (luaL_loadstring(L, SNIPPET) != LUA_OK) {
    snprintf(j->error, sizeof j->error, "%s", lua_tostring(L, -1));
    lua_pop(L, 2);
    return -1;
  }
  lua_pushstring(L, j->model);
  lua_pushstring(L, j->image);
  lua_pushstring(L, j->text);
  if (lua_pcall(L, 3, 2, -5) != LUA_OK) {
    snprintf(j->error, sizeof j->error, "%s", lua_tostring(L, -1));
    lua_pop(L, 2);
    return -1;
  }
  j->similarity = lua_tonumber(L, -2);
  j->dim = (int)lua_tointeger(L, -1);
  lua_pop(L, 3);
  j->globals_added = count_globals(L) - before;

  /* An environment failure is an ordinary Lua error: caught, and we go on. */
  if (luaL_dostring(L, "return pcall(require('clip').load, '/nonexistent/model')") != LUA_OK) {
    snprintf(j->error, sizeof j->error, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  j->load_error_caught = !lua_toboolean(L, -2) && lua_isstring(L, -1);
  lua_pop(L, 2);
  return 0;
}

static void *thread_main(void *arg) {
  job *j = arg;
  lua_State *L = open_state(j);
  if (!L) {
    snprintf(j->error, sizeof j->error, "cannot create a Lua state");
    return NULL;
  }
  run(L, j);
  lua_close(L);
  return NULL;
}

static int check(int ok, const char *what, int *failures) {
  printf("%-44s %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) (*failures)++;
  return ok;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s MODEL_DIR IMAGE TEXT [--states N] [--threads N]\n", argv[0]);
    return 2;
  }
  int nstates = 1, nthreads = 0, failures = 0;
  for (int i = 4; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--states") == 0) nstates = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--threads") == 0) nthreads = atoi(argv[i + 1]);
  }
  if (nstates < 1 || nstates > 16 || nthreads < 0 || nthreads > 16) {
    fprintf(stderr, "%s: --states 1..16, --threads 0..16\n", argv[0]);
    return 2;
  }
#ifdef CLIP_STATIC
  printf("mode: static (luaopen_clip_core via luaL_requiref)\n");
#else
  printf("mode: require (clip.core from package.cpath)\n");
#endif

  /* N states alive at once; each runs, then they are closed one by one while
   * the others stay usable. */
  job jobs[16];
  lua_State *states[16];
  for (int s = 0; s < nstates; s++) {
    memset(&jobs[s], 0, sizeof jobs[s]);
    jobs[s].model = argv[1];
    jobs[s].image = argv[2];
    jobs[s].text = argv[3];
    states[s] = open_state(&jobs[s]);
    if (!states[s]) {
      fprintf(stderr, "cannot create a Lua state\n");
      return 1;
    }
  }
  for (int s = 0; s < nstates; s++) {
    if (run(states[s], &jobs[s]) != 0) {
      fprintf(stderr, "state %d: %s\n", s + 1, jobs[s].error);
      return 1;
    }
    printf("state %d: similarity %.9g dim %d\n", s + 1, jobs[s].similarity, jobs[s].dim);
  }
  for (int s = 0; s < nstates; s++) {
    char what[64];
    snprintf(what, sizeof what, "state %d: no globals added", s + 1);
    check(jobs[s].globals_added == 0, what, &failures);
    snprintf(what, sizeof what, "state %d: failing load is a Lua error", s + 1);
    check(jobs[s].load_error_caught, what, &failures);
    snprintf(what, sizeof what, "state %d: same result as state 1", s + 1);
    check(jobs[s].similarity == jobs[0].similarity, what, &failures);
    lua_close(states[s]);
    snprintf(what, sizeof what, "state %d: closed, %zu bytes left", s + 1, jobs[s].mem.live);
    check(jobs[s].mem.live == 0, what, &failures);
    if (s + 1 < nstates) { /* the next state still works after this one closed */
      lua_State *L = states[s + 1];
      int ok = luaL_loadstring(L, "local clip = require 'clip'\n"
                                    "local m <close> = clip.load(...)\n"
                                    "return m:encode_texts({'x'}):numel()") == LUA_OK;
      if (ok) {
        lua_pushstring(L, argv[1]);
        ok = lua_pcall(L, 1, 1, 0) == LUA_OK && lua_tointeger(L, -1) == jobs[0].dim;
      }
      lua_settop(L, 0);
      snprintf(what, sizeof what, "state %d: works after state %d closed", s + 2, s + 1);
      check(ok, what, &failures);
    }
  }

  if (nthreads > 0) {
    pthread_t th[16];
    job tj[16];
    for (int t = 0; t < nthreads; t++) {
      memset(&tj[t], 0, sizeof tj[t]);
      tj[t].model = argv[1];
      tj[t].image = argv[2];
      tj[t].text = argv[3];
      if (pthread_create(&th[t], NULL, thread_main, &tj[t]) != 0) {
        fprintf(stderr, "pthread_create failed\n");
        return 1;
      }
    }
    int agree = 1, clean = 1;
    for (int t = 0; t < nthreads; t++) {
      pthread_join(th[t], NULL);
      if (tj[t].error[0]) {
        fprintf(stderr, "thread %d: %s\n", t + 1, tj[t].error);
        agree = 0;
      }
      if (tj[t].similarity != jobs[0].similarity || tj[t].globals_added) agree = 0;
      if (tj[t].mem.live != 0) clean = 0;
    }
    char what[64];
    snprintf(what, sizeof what, "%d threads, one state each: same result", nthreads);
    check(agree, what, &failures);
    snprintf(what, sizeof what, "%d threads: every state closed cleanly", nthreads);
    check(clean, what, &failures);
  }
  printf("%s\n", failures ? "FAILED" : "all checks passed");
  return failures ? 1 : 0;
}
