--- clip: CLIP for Lua 5.4.
-- The friendly layer over the C core `clip.core`: tensors, safetensors,
-- model loading and the two encoders. See docs/api.md.
local core = require "clip.core"

local M = {}

M.version = core.version
M.core = core

-- Tensors (clip.Tensor, float32) -----------------------------------------
M.Tensor = core.Tensor
M.tensor = core.tensor
M.zeros = core.zeros
M.ones = core.ones
M.full = core.full
M.randn = core.randn
M.rand = core.rand
M.arange = core.arange
M.matmul = core.matmul
M.cat = core.cat
M.cosine_similarity = core.cosine_similarity
M.from_bytes = core.from_bytes

--- Threads used by the GEMMs (OpenBLAS). Default: all cores.
M.set_num_threads = core.set_num_threads
M.get_num_threads = core.get_num_threads

--- True if x is a clip.Tensor.
function M.is_tensor(x)
  return type(x) == "userdata" and getmetatable(x) == getmetatable(core.zeros({}))
end

--- Row-wise L2 normalization (eps 1e-12, as torch.nn.functional.normalize).
function M.normalize(t, eps) return t:normalize(eps) end

-- safetensors --------------------------------------------------------------
M.load_safetensors = core.load_safetensors
M.load_torch = core.load_torch
M.save_safetensors = core.save_safetensors

-- JSON (cJSON) --------------------------------------------------------------
M.json = { decode = core.json_decode, encode = core.json_encode, null = core.json_null }

-- Submodules, loaded on first use ------------------------------------------
local lazy = { tokenizer = "clip.tokenizer", image = "clip.image", model = "clip.model",
  loss = "clip.loss", optim = "clip.optim", data = "clip.data", eval = "clip.eval", search = "clip.search",
  checkpoint = "clip.checkpoint", npy = "clip.npy", stream = "clip.stream", embed = "clip.embed",
  dist = "clip.dist", Trainer = "clip.trainer", trainer = "clip.trainer" }
setmetatable(M, {
  __index = function(t, k)
    local name = lazy[k]
    if name then
      local mod = require(name)
      rawset(t, k, mod)
      return mod
    end
  end,
})

--- Load a CLIP model from a directory: a Hugging Face CLIPModel directory
-- (config.json, model.safetensors or a sharded index, preprocessor_config.json,
-- vocab.json + merges.txt) or a sentence-transformers directory (modules.json).
-- opts: tokenizer (default true; false skips the tokenizer files),
--       tokenizer_mode ("hf" default, or "openai").
function M.load(dir, opts)
  return require("clip.model").load(dir, opts)
end

return M
