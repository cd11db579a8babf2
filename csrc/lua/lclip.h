/* lclip.h - area openers called by luaopen_clip_core (lclip.c), and the
 * small helpers the areas share.
 * Each opener is called with the module table on top of the stack and adds
 * its functions and metatables to it; it leaves the stack as it found it. */
#ifndef LCLIP_H
#define LCLIP_H
#include "lua.h"

/* luaopen_clip_core is the one symbol core.so exports (built with -fvisibility=hidden) */
#define L_EXPORT __attribute__((visibility("default")))

void l_tensor_open(lua_State *L);
void l_safetensors_open(lua_State *L);
void l_tokenizer_open(lua_State *L);
void l_image_open(lua_State *L);
void l_model_open(lua_State *L);
void l_kernels_open(lua_State *L);
void l_json_open(lua_State *L);
void l_loss_open(lua_State *L);
void l_os_open(lua_State *L);
void l_canvas_open(lua_State *L);
void l_ranking_open(lua_State *L);
void l_dataset_open(lua_State *L);
void l_pool_open(lua_State *L);
void l_dist_open(lua_State *L);

/* t[k] = v for the table on top of the stack (the bindings' result tables). */
static inline void l_set_int(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}
static inline void l_set_num(lua_State *L, const char *k, lua_Number v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}
static inline void l_set_str(lua_State *L, const char *k, const char *v) {
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}
static inline void l_set_bool(lua_State *L, const char *k, int v) {
  lua_pushboolean(L, v);
  lua_setfield(L, -2, k);
}

/* luaL_error with C's printf conversions (lua_pushfstring has only %s %d %f %p %c %U %I
 * and %%: a %lld or %zu there raises "invalid conversion" instead of the message). The
 * message is cut at 1023 bytes. */
int l_errorf(lua_State *L, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Make the calling state's thread pool current (l_pool.c); call at the
 * start of every binding that runs heavy kernels. */
void l_pool_enter(lua_State *L);

#endif
