/* l_image.c - placeholder until the image area lands. */
#include "lclip.h"
void l_image_open(lua_State *L) { (void)L; }
