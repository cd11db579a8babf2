/* l_safetensors.c - placeholder until the safetensors area lands. */
#include "lclip.h"
void l_safetensors_open(lua_State *L) { (void)L; }
