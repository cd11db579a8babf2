rockspec_format = "3.0"
package = "clip"
version = "scm-1"
source = {
   url = "git+file:///dev/null", -- replaced by `luarocks make` in a checkout
}
description = {
   summary = "CLIP (contrastive image-text model) for Lua 5.4, in C",
   detailed = [[
Load Hugging Face and sentence-transformers CLIP checkpoints (safetensors,
fp32/fp16/bf16), embed images and texts, tokenize with CLIP's BPE, decode
JPEG/PNG/GIF/WebP/TIFF/BMP with CLIPImageProcessor-exact preprocessing, and fine-tune from Lua.
]],
   license = "MIT",
   labels = { "machine-learning", "clip", "embeddings" },
}
dependencies = {
   "lua >= 5.4, < 5.5",
}
external_dependencies = {
   OPENBLAS = { library = "openblas" },
   JPEG = { header = "jpeglib.h", library = "jpeg" },
   PNG = { header = "png.h", library = "png16" },
   CJSON = { header = "cjson/cJSON.h", library = "cjson" },
   UTF8PROC = { header = "utf8proc.h", library = "utf8proc" },
   ZLIB = { header = "zlib.h", library = "z" },
   WEBP = { header = "webp/decode.h", library = "webp" },
   WEBPDEMUX = { header = "webp/demux.h", library = "webpdemux" },
   TIFF = { library = "tiff" }, -- tiffio.h sits in the multiarch include folder, which pkg-config knows
   GIF = { header = "gif_lib.h", library = "gif" },
}
-- The Makefile is the one build description (objects selected by folder, per-layer
-- include paths, -fvisibility=hidden): `luarocks make` runs it with LuaRocks' own
-- CFLAGS / LIBFLAG / LUA_INCDIR and installs with `make install-lua`, the same Lua
-- module `make install` installs (docs/design.md, deviations from STYLE.md).
build = {
   type = "make",
   build_target = "all",
   build_variables = {
      CFLAGS = "$(CFLAGS)",
      LIBFLAG = "$(LIBFLAG)",
      LUA_INCDIR = "$(LUA_INCDIR)",
      LUA = "$(LUA)",
   },
   install_target = "install-lua",
   install_variables = {
      PREFIX = "$(PREFIX)",
      LIBDIR = "$(LIBDIR)",
      LUADIR = "$(LUADIR)",
   },
   install = {
      bin = { ["clip"] = "bin/clip" },
   },
   copy_directories = { "docs", "examples" },
}
-- `luarocks test` runs busted (.busted: spec/, slow specs excluded) on the
-- in-tree build. type = "busted" would first insist on a busted *rock* in a
-- LuaRocks tree and try to download one; the command form uses the busted on
-- PATH (Debian's lua-busted, or a rock's), so it also works offline.
test = {
   type = "command",
   command = "make -s all >/dev/null && busted --exclude-tags=slow,mpi",
}
