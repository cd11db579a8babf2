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
JPEG/PNG with CLIPImageProcessor-exact preprocessing, and fine-tune from Lua.
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
}
build = {
   type = "builtin",
   modules = {
      ["clip.core"] = {
         -- keep in sync with csrc/*.c (spec/build_spec.lua checks)
         sources = {
            "csrc/blas.c",
            "csrc/bpe.c",
            "csrc/capi.c",
            "csrc/encoder.c",
            "csrc/encoder_ref.c",
            "csrc/gemm.c",
            "csrc/gemm_packed.c",
            "csrc/image.c",
            "csrc/k_act.c",
            "csrc/k_attention.c",
            "csrc/k_embedding.c",
            "csrc/k_layernorm.c",
            "csrc/k_linear.c",
            "csrc/l_eval.c",
            "csrc/l_fs.c",
            "csrc/l_idx.c",
            "csrc/l_image.c",
            "csrc/l_json.c",
            "csrc/l_kernels.c",
            "csrc/l_loss.c",
            "csrc/l_model.c",
            "csrc/l_png.c",
            "csrc/l_safetensors.c",
            "csrc/l_tensor.c",
            "csrc/l_tokenizer.c",
            "csrc/lclip.c",
            "csrc/loss.c",
            "csrc/model.c",
            "csrc/optim.c",
            "csrc/pool.c",
            "csrc/safetensors.c",
            "csrc/tensor.c",
            "csrc/train.c",
            "csrc/util.c",
         },
         defines = { "_GNU_SOURCE" },
         libraries = { "openblas", "jpeg", "png16", "cjson", "utf8proc", "z", "m", "pthread" },
         incdirs = { "$(JPEG_INCDIR)", "$(PNG_INCDIR)", "$(CJSON_INCDIR)", "$(UTF8PROC_INCDIR)" },
         libdirs = { "$(OPENBLAS_LIBDIR)", "$(JPEG_LIBDIR)", "$(PNG_LIBDIR)", "$(CJSON_LIBDIR)",
                     "$(UTF8PROC_LIBDIR)", "$(ZLIB_LIBDIR)" },
      },
      ["clip"] = "lua/clip/init.lua",
      ["clip.chart"] = "lua/clip/chart.lua",
      ["clip.checkpoint"] = "lua/clip/checkpoint.lua",
      ["clip.cli"] = "lua/clip/cli.lua",
      ["clip.data"] = "lua/clip/data.lua",
      ["clip.eval"] = "lua/clip/eval.lua",
      ["clip.guard"] = "lua/clip/guard.lua",
      ["clip.image"] = "lua/clip/image.lua",
      ["clip.loss"] = "lua/clip/loss.lua",
      ["clip.model"] = "lua/clip/model.lua",
      ["clip.npy"] = "lua/clip/npy.lua",
      ["clip.optim"] = "lua/clip/optim.lua",
      ["clip.progress"] = "lua/clip/progress.lua",
      ["clip.save"] = "lua/clip/save.lua",
      ["clip.search"] = "lua/clip/search.lua",
      ["clip.templates"] = "lua/clip/templates.lua",
      ["clip.tokenizer"] = "lua/clip/tokenizer.lua",
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
   command = "make -s all >/dev/null && busted --exclude-tags=slow",
}
