--- clip.model: the Model object returned by clip.load.
local core = require "clip.core"

local M = {}

local Model = {}
Model.__name = "clip.Model"

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function is_tensor(x)
  return type(x) == "userdata" and getmetatable(x) == getmetatable(core.zeros({}))
end

--- clip.model.load(dir [, opts]) -> Model
function M.load(dir, opts)
  opts = opts or {}
  if type(dir) ~= "string" then
    error("clip.load: expected a directory path, got " .. type(dir), 2)
  end
  local mc, paths = core.model_load(dir, opts.half == true)
  if opts.pack == false then mc:set_packing(false) end
  local self = { core = mc, paths = paths, dir = dir }
  self.config = mc:config()
  if opts.tokenizer ~= false then
    if not file_exists(paths.vocab) or not file_exists(paths.merges) then
      mc:close()
      error(("%s: missing tokenizer files (vocab.json and merges.txt); pass {tokenizer = false} to load without a tokenizer")
        :format(paths.root), 2)
    end
    local tokenizer = require "clip.tokenizer"
    self.tokenizer = tokenizer.load({ vocab = paths.vocab, merges = paths.merges },
      { mode = opts.tokenizer_mode })
  end
  local image = require "clip.image"
  if file_exists(paths.preprocessor) then
    self.processor = image.processor(paths.preprocessor)
  else
    -- no preprocessor_config.json: OpenAI's defaults at the model's image size
    local s = self.config.vision_config.image_size
    self.processor = image.processor({ size = { shortest_edge = s }, crop_size = { height = s, width = s } })
  end
  return setmetatable(self, Model)
end

-- transformers' CLIPPreTrainedModel._init_weights (initializer_factor 1,
-- initializer_range 0.02): the std of each parameter's normal init, or a
-- constant.
local function init_rule(name, cfg)
  local tc, vc = cfg.text_config, cfg.vision_config
  local tower = name:match("^vision_model") and vc or tc
  local D, L = tower.hidden_size, tower.num_hidden_layers
  if name:match("layer_?norm%d?%.weight$") or name:match("layrnorm%.weight$") then return "const", 1 end
  if name:match("%.bias$") then return "const", 0 end
  if name == "logit_scale" then return "const", cfg.logit_scale_init_value end
  if name == "visual_projection.weight" then return "normal", vc.hidden_size ^ -0.5 end
  if name == "text_projection.weight" then return "normal", tc.hidden_size ^ -0.5 end
  if name:match("class_embedding$") then return "normal", D ^ -0.5 end
  if name:match("embeddings%.") then return "normal", 0.02 end
  local in_std = D ^ -0.5 * (2 * L) ^ -0.5
  if name:match("self_attn%.[qkv]_proj%.weight$") then return "normal", in_std end
  if name:match("self_attn%.out_proj%.weight$") then return "normal", D ^ -0.5 end
  if name:match("mlp%.fc1%.weight$") then return "normal", (2 * D) ^ -0.5 end
  if name:match("mlp%.fc2%.weight$") then return "normal", in_std end
  error("init: no rule for " .. name)
end

--- A new model with random weights, initialized as transformers'
-- CLIPModel._init_weights does. config: a table in config.json's layout
-- (missing keys take transformers' defaults). opts: seed (default 0),
-- tokenizer_dir (vocab.json + merges.txt to attach a tokenizer),
-- preprocessor (a preprocessor_config table or path).
function M.new(config, opts)
  opts = opts or {}
  local mc = core.model_new(core.json_encode(config))
  local self = { core = mc, config = mc:config() }
  setmetatable(self, Model)
  local seed = opts.seed or 0
  for i, it in ipairs(mc:param_info()) do
    local kind, v = init_rule(it.name, self.config)
    local t = mc:param(it.name)
    if kind == "const" then
      t:fill(v)
    else
      t:copy(core.randn(it.shape, seed * 1000003 + i) * v)
    end
  end
  if opts.tokenizer_dir then
    self.tokenizer = require("clip.tokenizer").load(opts.tokenizer_dir)
    self.paths = { root = opts.tokenizer_dir }
  end
  local s = self.config.vision_config.image_size
  self.processor = require("clip.image").processor(opts.preprocessor or
    { size = { shortest_edge = s }, crop_size = { height = s, width = s } })
  self.preprocessor_config = type(opts.preprocessor) == "table" and opts.preprocessor or nil
  return self
end

--- Wrap an existing core model (used by training/building code).
function M.wrap(mc, extra)
  local self = extra or {}
  self.core = mc
  self.config = mc:config()
  return setmetatable(self, Model)
end

function Model.__index(self, k)
  if k == "logit_scale" then
    return rawget(self, "core"):param("logit_scale"):get()
  end
  return Model[k]
end

function Model:__close() self:close() end

function Model:close()
  if self.tokenizer and self.tokenizer.close then self.tokenizer:close() end
  self.core:close()
end

function Model:is_closed() return self.core:is_closed() end

--- Packed weight copies for small batches (on by default; docs/performance.md). Off frees
-- them; the encoders then run OpenBLAS on the original weights.
function Model:set_packing(on)
  self.core:set_packing(on ~= false)
  return self
end

--- Number of transformer blocks whose packed weights are current (0 before the first encode).
function Model:packed_blocks() return self.core:packed() end

--- "F16" or "BF16" when the model keeps its weights in half precision (clip.load(dir,
-- {half = true}) on an F16/BF16 checkpoint), else nil. Reading or writing parameters,
-- training or saving converts it to float32 first.
function Model:is_half() return self.core:is_half() end

--- Preprocess one image (path, clip.Image) -> Tensor {3,N,N}, or a list -> {n,3,N,N}.
function Model:preprocess(x)
  if type(x) == "table" then return self.processor:preprocess_batch(x) end
  return self.processor:preprocess(x)
end

--- Tokenize one text -> id list (with start/end tokens, truncated to the context length).
function Model:tokenize(text)
  if self.core:is_closed() then error("model is closed", 2) end
  if not self.tokenizer then error("model was loaded without a tokenizer", 2) end
  return self.tokenizer:encode(text, { context_length = self.config.text_config.max_position_embeddings })
end

local function chunks(n, size)
  local i = 0
  return function()
    if i >= n then return nil end
    local a = i + 1
    local b = math.min(n, i + size)
    i = b
    return a, b
  end
end

local image_cache
local function image_mod()
  image_cache = image_cache or require("clip.image")
  return image_cache
end

local function finish(out, opts)
  if opts.normalize then return out:normalize() end
  return out
end

--- Embed images: a list of paths or clip.Image, or a preprocessed {n,3,N,N} Tensor.
-- opts: normalize (false), batch_size (32), skip_errors (false), decode_threads.
-- A list of paths is decoded one batch ahead on background threads (image.batches) while the
-- encoder works on the batch before; results are the same bit for bit. decode_threads: those
-- background threads (default 1); a list holding clip.Images is preprocessed batch by batch
-- on decode_threads threads (default clip.get_num_threads()).
-- Returns Tensor {n, projection_dim}; the first bad image raises "encode_images: item i: ...".
-- skip_errors = true: bad images are left out and reported instead -> Tensor {k, D}, errors
-- ({index =, path =, error =} per bad image), kept (the index in the list of each row).
function Model:encode_images(images, opts)
  if self.core:is_closed() then error("encode_images: model is closed", 2) end
  opts = opts or {}
  local bs = opts.batch_size or 32
  if is_tensor(images) then
    local n = images:size(1)
    if n == 0 then error("encode_images: empty batch", 2) end
    local parts = {}
    for a, b in chunks(n, bs) do
      parts[#parts + 1] = (self.core:encode_pixels(images:rows(a, b)))
    end
    return finish(#parts == 1 and parts[1] or core.cat(parts), opts)
  end
  if type(images) ~= "table" then
    if type(images) == "string" or type(images) == "userdata" then
      images = { images }
    else
      error("encode_images: expected a list of image paths or images, or a Tensor {n,3,N,N}", 2)
    end
  end
  if #images == 0 then error("encode_images: empty batch", 2) end
  local skip = opts.skip_errors == true
  local parts, errors, kept = {}, {}, {}
  local function add(px, errs, k)
    if px:size(1) > 0 then parts[#parts + 1] = (self.core:encode_pixels(px)) end
    table.move(errs, 1, #errs, #errors + 1, errors)
    table.move(k, 1, #k, #kept + 1, kept)
  end
  local all_paths = true
  for i = 1, #images do
    if type(images[i]) ~= "string" then all_paths = false break end
  end
  local ok, msg
  if all_paths then
    ok, msg = pcall(function()
      for px, errs, k in image_mod().batches(self.processor, images,
        { batch_size = bs, threads = opts.decode_threads, skip_errors = skip }) do
        add(px, errs, k)
      end
    end)
  else
    ok, msg = pcall(function()
      for a, b in chunks(#images, bs) do
        local sub = table.move(images, a, b, 1, {})
        local ok1, px, errs, k = pcall(self.processor.preprocess_batch, self.processor, sub,
          { threads = opts.decode_threads, skip_errors = skip })
        if not ok1 then -- name the index in the whole list, not in the chunk
          local i, rest = tostring(px):match("preprocess_batch: item (%d+)(.*)$")
          if i then error("image.batches: item " .. (tonumber(i) + a - 1) .. rest, 0) end
          error(px, 0)
        end
        if not skip then
          errs, k = {}, {}
          for i = a, b do k[#k + 1] = i end
        else
          for i = 1, #k do k[i] = k[i] + a - 1 end
          for _, e in ipairs(errs) do e.index = e.index + a - 1 end
        end
        add(px, errs, k)
      end
    end)
  end
  if not ok then
    local tail = type(msg) == "string" and msg:match("image%.batches: (item %d+.*)$")
    if tail then error("encode_images: " .. tail, 2) end
    error(msg, 0) -- the encoder's own errors, as they were
  end
  local out
  if #parts == 0 then
    out = core.zeros({ 0, self.config.projection_dim })
  else
    out = finish(#parts == 1 and parts[1] or core.cat(parts), opts)
  end
  if skip then return out, errors, kept end
  return out
end

--- Embed texts: a list of strings or of token-id lists.
-- opts: normalize (false), batch_size (32). Returns Tensor {n, projection_dim}.
function Model:encode_texts(texts, opts)
  if self.core:is_closed() then error("encode_texts: model is closed", 2) end
  opts = opts or {}
  local bs = opts.batch_size or 32
  if type(texts) == "string" then texts = { texts } end
  if type(texts) ~= "table" then error("encode_texts: expected a list of strings or id lists", 2) end
  if #texts == 0 then error("encode_texts: empty batch", 2) end
  local ctx = self.config.text_config.max_position_embeddings
  local ids = {}
  for i, t in ipairs(texts) do
    if type(t) == "string" then
      if not self.tokenizer then error("encode_texts: model was loaded without a tokenizer; pass id lists", 2) end
      local ok, r = pcall(self.tokenizer.encode, self.tokenizer, t, { context_length = ctx })
      if not ok then error(("encode_texts: item %d: %s"):format(i, tostring(r)), 2) end
      ids[i] = r
    elseif type(t) == "table" then
      ids[i] = t
    else
      error(("encode_texts: item %d is a %s, expected a string or a list of ids"):format(i, type(t)), 2)
    end
  end
  local parts = {}
  for a, b in chunks(#ids, bs) do
    parts[#parts + 1] = (self.core:encode_ids(table.move(ids, a, b, 1, {})))
  end
  return finish(#parts == 1 and parts[1] or core.cat(parts), opts)
end

--- logits_per_image = exp(logit_scale) * cos(image, text): {n_images, n_texts}.
function Model:logits(image_embeds, text_embeds)
  return core.cosine_similarity(image_embeds, text_embeds) * math.exp(self.logit_scale)
end

--- Parameter names, shapes, element counts, checkpoint dtypes, in HF order.
function Model:parameter_info() return self.core:param_info() end

--- A Tensor view of one parameter by its Hugging Face name.
function Model:param(name) return self.core:param(name) end

--- Total number of parameters (as PyTorch's sum(p.numel())).
function Model:num_parameters()
  local n = 0
  for _, p in ipairs(self.core:param_info()) do n = n + p.numel end
  return n
end

-- Parameters ----------------------------------------------------------------

local Parameter = {}
Parameter.__name = "clip.Parameter"

function Parameter.__index(p, k)
  local core_, name = rawget(p, "_core"), rawget(p, "name")
  if k == "data" then
    local d = rawget(p, "_data")
    if not d then
      d = core_:param(name)
      rawset(p, "_data", d)
    end
    return d
  elseif k == "grad" then
    return core_:grad(name)
  elseif k == "requires_grad" then
    return core_:requires_grad(name)
  elseif k == "shape" then
    return p.data:shape()
  end
  return Parameter[k]
end

function Parameter.__newindex(p, k, v)
  if k == "requires_grad" then
    rawget(p, "_core"):set_requires_grad(rawget(p, "name"), v and true or false)
  else
    error("clip.Parameter: cannot set '" .. tostring(k) .. "'", 2)
  end
end

function Parameter.__tostring(p)
  return ("clip.Parameter(%s, %s%s)"):format(p.name, table.concat(p.data:shape(), "x"),
    p.requires_grad and "" or ", frozen")
end

function Parameter:numel() return self.data:numel() end

local function param_obj(self, name, numel)
  local cache = rawget(self, "_params")
  if not cache then
    cache = {}
    rawset(self, "_params", cache)
  end
  local p = cache[name]
  if not p then
    p = setmetatable({ _core = self.core, name = name, _numel = numel }, Parameter)
    cache[name] = p
  end
  return p
end

--- Iterate over (name, Parameter) in Hugging Face order, as PyTorch's
-- model.named_parameters(). p.data is a Tensor view (writes change the model),
-- p.grad a Tensor view or nil, p.requires_grad readable and writable.
function Model:named_parameters()
  local info = self.core:param_info()
  local i = 0
  return function()
    i = i + 1
    local it = info[i]
    if it then return it.name, param_obj(self, it.name, it.numel) end
  end
end

--- List of Parameter objects (all, or only those requiring grad).
function Model:parameters(trainable_only)
  local out = {}
  for _, p in self:named_parameters() do
    if not trainable_only or p.requires_grad then out[#out + 1] = p end
  end
  return out
end

--- Total and trainable parameter counts (as the seed prints them).
function Model:count_parameters()
  local total, trainable = 0, 0
  for _, it in ipairs(self.core:param_info()) do
    total = total + it.numel
    if self.core:requires_grad(it.name) then trainable = trainable + it.numel end
  end
  return total, trainable
end

--- Freeze everything, then make trainable each parameter whose name contains
-- one of the given plain substrings (the seed's `trainable_layers_list`).
function Model:train_only(patterns)
  if type(patterns) == "string" then patterns = { patterns } end
  for _, it in ipairs(self.core:param_info()) do
    local on = false
    for _, pat in ipairs(patterns) do
      if it.name:find(pat, 1, true) then on = true break end
    end
    self.core:set_requires_grad(it.name, on)
  end
  return self
end

--- Set requires_grad on every parameter whose name matches a Lua pattern.
function Model:set_trainable(pattern, flag)
  for _, it in ipairs(self.core:param_info()) do
    if it.name:match(pattern) then self.core:set_requires_grad(it.name, flag ~= false) end
  end
  return self
end

--- Zero every gradient.
function Model:zero_grad() self.core:zero_grad() end

--- Save the model in the Hugging Face layout (config.json, model.safetensors,
-- preprocessor and tokenizer files); {format = "sentence-transformers"} also
-- writes modules.json and config_sentence_transformers.json (files in the
-- root, as sentence-transformers >= 3.1 saves). Every file is written to a
-- temporary name and renamed into place.
function Model:save(dir, opts)
  return require("clip.save").save_model(self, dir, opts)
end

M.Model = Model
M.Parameter = Parameter
return M
