/* l_tokenizer.c - placeholder until the tokenizer area lands. */
#include "lclip.h"
void l_tokenizer_open(lua_State *L) { (void)L; }
