/* lclip.c - the only file with luaopen_clip_core. */
#include "lauxlib.h"
#include "lclip.h"
#include "lua.h"

int luaopen_clip_core(lua_State *L) {
  lua_newtable(L);
  l_tensor_open(L);
  l_safetensors_open(L);
  l_tokenizer_open(L);
  l_image_open(L);
  l_model_open(L);
  l_kernels_open(L);
  l_json_open(L);
  l_loss_open(L);
  l_fs_open(L);
  l_png_open(L);
  l_eval_open(L);
  l_idx_open(L);
  lua_pushliteral(L, "0.1.0");
  lua_setfield(L, -2, "version");
  return 1;
}
