--- clip.save: writing models in the Hugging Face / sentence-transformers
-- layouts, and training checkpoints. Every file goes to a temporary name and
-- is renamed into place, so a crash never leaves a half-written file.
local core = require "clip.core"

local M = {}

local function check(ok, err)
  if not ok then error(err, 3) end
  return ok
end

local function join(dir, name) return dir:gsub("/+$", "") .. "/" .. name end

local TOKENIZER_FILES = { "vocab.json", "merges.txt", "tokenizer_config.json",
  "special_tokens_map.json", "tokenizer.json" }

local DEFAULT_PREPROCESSOR = {
  crop_size = { height = 224, width = 224 },
  do_center_crop = true, do_convert_rgb = true, do_normalize = true,
  do_rescale = true, do_resize = true,
  image_mean = { 0.48145466, 0.4578275, 0.40821073 },
  image_processor_type = "CLIPImageProcessor",
  image_std = { 0.26862954, 0.26130258, 0.27577711 },
  resample = 3, rescale_factor = 1 / 255,
  size = { shortest_edge = 224 },
}

--- Save model weights (and files) to dir.
-- opts: format ("hf" | "sentence-transformers"), dtype ("F32" | "F16" | "BF16"),
--       tokenizer_dir (where to copy tokenizer files from; default the model's own)
function M.save_model(model, dir, opts)
  opts = opts or {}
  local fmt = opts.format or "hf"
  if fmt ~= "hf" and fmt ~= "sentence-transformers" then
    error("save: format must be 'hf' or 'sentence-transformers'", 2)
  end
  check(core.mkdir_p(dir))
  -- weights
  local tensors = {}
  for _, it in ipairs(model.core:param_info()) do
    tensors[it.name] = model.core:param(it.name)
  end
  core.save_safetensors(join(dir, "model.safetensors"), tensors,
    { metadata = { format = "pt" }, dtype = opts.dtype })
  -- config: the original text when we have it (keeps keys we do not model),
  -- with torch_dtype updated; otherwise generated
  local cfg
  if model.paths and model.paths.config and core.is_file(model.paths.config) then
    local f = assert(io.open(model.paths.config, "rb"))
    cfg = core.json_decode(f:read("a"), model.paths.config)
    f:close()
  else
    cfg = core.json_decode(model.core:config_json())
  end
  cfg.torch_dtype = ({ F16 = "float16", BF16 = "bfloat16" })[opts.dtype or "F32"] or "float32"
  check(core.write_file(join(dir, "config.json"), core.json_encode(cfg, true) .. "\n"))
  -- preprocessor
  local pp = model.paths and model.paths.preprocessor
  if pp and core.is_file(pp) then
    check(core.copy_file(pp, join(dir, "preprocessor_config.json")))
  else
    local d = {}
    for k, v in pairs(DEFAULT_PREPROCESSOR) do d[k] = v end
    local s = model.config.vision_config.image_size
    d.crop_size = { height = s, width = s }
    d.size = { shortest_edge = s }
    for k, v in pairs(model.preprocessor_config or {}) do d[k] = v end
    check(core.write_file(join(dir, "preprocessor_config.json"), core.json_encode(d, true) .. "\n"))
  end
  -- tokenizer files
  local tdir = opts.tokenizer_dir or (model.paths and model.paths.root)
  if tdir then
    for _, f in ipairs(TOKENIZER_FILES) do
      local src = join(tdir, f)
      if core.is_file(src) and src ~= join(dir, f) then check(core.copy_file(src, join(dir, f))) end
    end
  end
  if fmt == "sentence-transformers" then
    local modules = { { idx = 0, name = "0", path = "", type = "sentence_transformers.models.CLIPModel" } }
    check(core.write_file(join(dir, "modules.json"), core.json_encode(modules, true) .. "\n"))
    check(core.write_file(join(dir, "config_sentence_transformers.json"), core.json_encode({
      __version__ = { sentence_transformers = "3.3.1" },
      prompts = setmetatable({}, { __jsontype = "object" }),
      similarity_fn_name = "cosine",
    }, true) .. "\n"))
  end
  return dir
end

return M
