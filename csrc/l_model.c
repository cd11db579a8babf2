/* l_model.c - placeholder until the model area lands. */
#include "lclip.h"
void l_model_open(lua_State *L) { (void)L; }
