/* two_states.c - a C host that runs two independent lua_States in two
 * pthreads at once, each loading the same model and encoding texts and
 * images repeatedly (spec/lifecycle_spec.lua builds and runs it).
 *
 *   two_states MODEL_DIR IMAGE_PATH [ROUNDS]
 *
 * lua5.4 finds clip through LUA_PATH / LUA_CPATH as usual. Each thread checks
 * that every round gives bit-identical embeddings; main checks that the two
 * threads agree with each other. Prints "two_states: ok ..." and exits 0, or
 * prints the first error to stderr and exits 1. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

static const char *CHUNK =
    "local dir, image, rounds = ...\n"
    "local clip = require 'clip'\n"
    "local m <close> = clip.load(dir)\n"
    "local texts = { 'a photo of a cat', 'two dogs on a sofa', 'ünïcödé ✓ text' }\n"
    "local first\n"
    "for r = 1, rounds do\n"
    "  local t = m:encode_texts(texts)\n"
    "  local i = m:encode_images({ image, image })\n"
    "  local s = t:bytes() .. i:bytes()\n"
    "  if first == nil then first = s\n"
    "  elseif s ~= first then error('round ' .. r .. ' differs from round 1') end\n"
    "  collectgarbage('step')\n"
    "end\n"
    "return first\n";

typedef struct {
  const char *dir, *image;
  int rounds, id;
  pthread_barrier_t *start;
  char *result; /* malloc'd bytes of the embeddings */
  size_t result_len;
  char err[1024];
} job;

static void *run(void *arg) {
  job *j = arg;
  lua_State *L = luaL_newstate();
  if (!L) {
    snprintf(j->err, sizeof j->err, "thread %d: cannot create a Lua state", j->id);
    pthread_barrier_wait(j->start);
    return NULL;
  }
  luaL_openlibs(L);
  int rc = luaL_loadstring(L, CHUNK);
  pthread_barrier_wait(j->start); /* both threads start encoding together */
  if (rc == LUA_OK) {
    lua_pushstring(L, j->dir);
    lua_pushstring(L, j->image);
    lua_pushinteger(L, j->rounds);
    rc = lua_pcall(L, 3, 1, 0);
  }
  if (rc != LUA_OK) {
    snprintf(j->err, sizeof j->err, "thread %d: %s", j->id, lua_tostring(L, -1));
  } else {
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    j->result = malloc(n ? n : 1);
    if (j->result) {
      memcpy(j->result, s, n);
      j->result_len = n;
    }
  }
  lua_close(L);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL_DIR IMAGE_PATH [ROUNDS]\n", argv[0]);
    return 2;
  }
  int rounds = argc > 3 ? atoi(argv[3]) : 20;
  pthread_barrier_t start;
  pthread_barrier_init(&start, NULL, 2);
  job jobs[2];
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    memset(&jobs[i], 0, sizeof jobs[i]);
    jobs[i].dir = argv[1];
    jobs[i].image = argv[2];
    jobs[i].rounds = rounds;
    jobs[i].id = i + 1;
    jobs[i].start = &start;
    if (pthread_create(&th[i], NULL, run, &jobs[i]) != 0) {
      fprintf(stderr, "two_states: pthread_create failed\n");
      return 1;
    }
  }
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&start);
  int bad = 0;
  for (int i = 0; i < 2; i++)
    if (jobs[i].err[0]) {
      fprintf(stderr, "two_states: %s\n", jobs[i].err);
      bad = 1;
    }
  if (!bad && (!jobs[0].result || !jobs[1].result || jobs[0].result_len != jobs[1].result_len ||
               memcmp(jobs[0].result, jobs[1].result, jobs[0].result_len) != 0)) {
    fprintf(stderr, "two_states: the two threads computed different embeddings\n");
    bad = 1;
  }
  if (!bad)
    printf("two_states: ok (2 threads x %d rounds, %zu bytes of embeddings each)\n", rounds,
           jobs[0].result_len);
  free(jobs[0].result);
  free(jobs[1].result);
  return bad;
}
