/* lclip.c - the only file with luaopen_clip_core: it builds the clip.core table
 * by calling each area's opener (l_<area>_open, lclip.h) in turn. */
#include "clip.h"
#include "lauxlib.h"
#include "lclip.h"
#include "lua.h"

#include <stdarg.h>
#include <stdio.h>

L_EXPORT int luaopen_clip_core(lua_State *L) {
  lua_newtable(L);
  l_pool_open(L); /* first: the other areas' kernels run on it */
  l_tensor_open(L);
  l_safetensors_open(L);
  l_tokenizer_open(L);
  l_image_open(L);
  l_model_open(L);
  l_kernels_open(L);
  l_json_open(L);
  l_loss_open(L);
  l_os_open(L);
  l_canvas_open(L);
  l_ranking_open(L);
  l_dataset_open(L);
  l_dist_open(L); /* MPI collectives, or stubs naming `make MPI=1` */
  lua_pushliteral(L, CLIP_VERSION); /* the one version string: include/clip.h */
  lua_setfield(L, -2, "version");
  return 1;
}

int l_errorf(lua_State *L, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return luaL_error(L, "%s", msg);
}
