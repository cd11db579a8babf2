--- bench/make_models.lua - random-weight CLIP checkpoints for the benchmarks.
-- usage: lua5.4 bench/make_models.lua [outdir] [names...]   (default bench/models, b32 l14)
-- Writes <outdir>/<name>/ in the Hugging Face layout (config.json, model.safetensors in F32,
-- preprocessor_config.json, the tokenizer files of spec/fixtures/tokenizer). The weights are
-- random (seeded): matrices N(0,1)/sqrt(fan_in), LayerNorm weights 1 + 0.1 N, biases 0.02 N,
-- embeddings 0.02 N. bench/models/ is git-ignored; nothing here is ever committed.
local clip = require "clip"
local core = clip.core
local save = require "clip.save"

local CONFIGS = {
  b32 = { text = { 512, 2048, 8, 12 }, vision = { 768, 3072, 12, 12, 32 }, proj = 512 },
  l14 = { text = { 768, 3072, 12, 12 }, vision = { 1024, 4096, 16, 24, 14 }, proj = 768 },
}

local function config_json(c)
  local t, v = c.text, c.vision
  return core.json_encode({
    architectures = { "CLIPModel" }, model_type = "clip", projection_dim = c.proj,
    logit_scale_init_value = 2.6592, torch_dtype = "float32",
    text_config = { hidden_size = t[1], intermediate_size = t[2], num_attention_heads = t[3],
      num_hidden_layers = t[4], max_position_embeddings = 77, vocab_size = 49408,
      hidden_act = "quick_gelu", layer_norm_eps = 1e-5, bos_token_id = 49406,
      eos_token_id = 49407, pad_token_id = 1, projection_dim = c.proj },
    vision_config = { hidden_size = v[1], intermediate_size = v[2], num_attention_heads = v[3],
      num_hidden_layers = v[4], patch_size = v[5], image_size = 224, num_channels = 3,
      hidden_act = "quick_gelu", layer_norm_eps = 1e-5, projection_dim = c.proj },
  }, true)
end

local function fill(mc, seed)
  for i, it in ipairs(mc:param_info()) do
    local p = mc:param(it.name)
    local n = it.name
    local r = core.randn(it.shape, seed * 1000 + i)
    if n:match("norm") or n:match("layrnorm") then
      if n:match("weight$") then r:scale_(0.1):add_(core.ones(it.shape)) else r:scale_(0.02) end
    elseif n:match("bias$") then r:scale_(0.02)
    elseif n:match("embedding") or n == "logit_scale" then
      if n == "logit_scale" then r:fill(2.6592) else r:scale_(0.02) end
    else
      local fan_in = 1
      for d = 2, #it.shape do fan_in = fan_in * it.shape[d] end
      r:scale_(1 / math.sqrt(fan_in))
    end
    p:copy(r)
    r = nil
    if i % 16 == 0 then collectgarbage() end
  end
end

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local out = arg[1] or (here .. "models")
local names = { table.unpack(arg, 2) }
if #names == 0 then names = { "b32", "l14" } end
-- "<name>-f16": the same random weights as <name>, saved in F16 (for the half-precision RSS)
local function half_copy(name)
  local src, dir = out .. "/" .. name:gsub("%-f16$", ""), out .. "/" .. name
  if io.open(dir .. "/model.safetensors", "rb") then
    io.stderr:write(dir, ": exists, kept\n")
    return
  end
  assert(io.open(src .. "/model.safetensors", "rb"), src .. " missing: make it first")
  local t0 = os.clock()
  os.execute(("mkdir -p %q && cp %q/*.json %q/*.txt %q/ 2>/dev/null"):format(dir, src, src, dir))
  local t = core.load_safetensors(src .. "/model.safetensors")
  core.save_safetensors(dir .. "/model.safetensors", t, { dtype = "F16" })
  io.stderr:write(("%s: written (%.1f s)\n"):format(dir, os.clock() - t0))
end

for _, name in ipairs(names) do
  if name:match("%-f16$") then half_copy(name) goto next end
  local c = assert(CONFIGS[name], "unknown model " .. name)
  local dir = out .. "/" .. name
  local f = io.open(dir .. "/model.safetensors", "rb")
  if f then
    f:close()
    io.stderr:write(dir, ": exists, kept\n")
  else
    local t0 = os.clock()
    local mc = core.model_new(config_json(c))
    fill(mc, name == "b32" and 32 or 14)
    local m = require("clip.model").wrap(mc)
    save.save_model(m, dir, { tokenizer_dir = here .. "../spec/fixtures/tokenizer" })
    mc:close()
    collectgarbage()
    io.stderr:write(("%s: written (%.1f s)\n"):format(dir, os.clock() - t0))
  end
  ::next::
end
