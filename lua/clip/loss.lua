--- clip.loss: contrastive losses over batches of columns, with backward.
--
-- A batch is a table of columns: { anchor = ..., positive = ..., negative = ... }
-- (or a list of columns in order). A column is a list of texts (strings or
-- token-id lists), a list of images (paths or clip.Image), or a preprocessed
-- {n,3,N,N} Tensor. A list of strings is taken as image paths when its first
-- item ends in .jpg/.jpeg/.png/.bmp/.gif/.webp, else as texts; say it
-- explicitly with opts.modalities = { anchor = "image", positive = "text" }.
--
-- loss:backward(batch [, {scale = s}]) runs forward and backward and returns
-- the loss as a number; gradients accumulate into the parameters that require
-- them. loss:forward(batch) returns the value without touching gradients.
--
-- Frozen-feature cache: when a tower is frozen below its projection, each
-- image / text is encoded once and later steps reuse its pooled features
-- (the same numbers as re-encoding); only the projection runs per step.
local core = require "clip.core"

local M = {}

local COLUMN_ORDER = { "anchor", "positive", "negative" }
local IMAGE_EXT = { jpg = true, jpeg = true, png = true, bmp = true, gif = true, webp = true }

local function is_tensor(x)
  return type(x) == "userdata" and getmetatable(x) == getmetatable(core.zeros({}))
end

local function columns_of(batch)
  local cols, names = {}, {}
  if batch[1] ~= nil then
    for i, c in ipairs(batch) do cols[i], names[i] = c, tostring(i) end
    return cols, names
  end
  local seen = {}
  for _, k in ipairs(COLUMN_ORDER) do
    if batch[k] ~= nil then cols[#cols + 1], names[#names + 1], seen[k] = batch[k], k, true end
  end
  local extra = {}
  for k in pairs(batch) do
    if not seen[k] and type(k) == "string" then extra[#extra + 1] = k end
  end
  table.sort(extra)
  for _, k in ipairs(extra) do cols[#cols + 1], names[#names + 1] = batch[k], k end
  return cols, names
end

local function modality(col, name, opts)
  if opts.modalities and opts.modalities[name] then return opts.modalities[name] end
  if is_tensor(col) then return "image" end
  if type(col) ~= "table" or #col == 0 then
    error(("loss: column '%s' is empty or not a list"):format(name), 4)
  end
  local x = col[1]
  if type(x) == "userdata" then return "image" end
  if type(x) == "table" then return "text" end -- id list
  if type(x) == "string" then
    local ext = x:match("%.(%w+)$")
    if ext and IMAGE_EXT[ext:lower()] then return "image" end
    return "text"
  end
  error(("loss: column '%s' holds %s items"):format(name, type(x)), 4)
end

local function col_len(col) return is_tensor(col) and col:size(1) or #col end

-- Base ------------------------------------------------------------------------

local Loss = {}
Loss.__index = Loss

local function new(cls, model, opts)
  if type(model) ~= "table" or not model.core then error("loss: first argument must be a clip model", 3) end
  local self = setmetatable({ model = model, opts = opts or {}, cache = { image = {}, text = {} } }, cls)
  return self
end

--- Forget cached frozen features (call after changing frozen weights by hand).
function Loss:clear_cache() self.cache = { image = {}, text = {} } end

-- cache key of one item, or nil when it cannot be cached
local function key_of(x)
  if type(x) == "string" then return "s:" .. x end
  if type(x) == "table" then return "i:" .. table.concat(x, ",") end
  return nil
end

-- Encode all items of one modality. Returns embeds and a backward closure.
function Loss:_encode(kind, items, want_grad)
  local model, mc = self.model, self.model.core
  local vision = kind == "image"
  local tr = mc:trainable(vision and "vision" or "text")
  if want_grad and tr.below_projection then
    self.cache[kind] = {} -- weights below change: nothing cached is valid
    local input = items
    if vision and not is_tensor(items) then
      input = model.processor:preprocess_batch(items)
    elseif not vision then
      input = {}
      for i, x in ipairs(items) do
        if type(x) == "string" then
          if not model.tokenizer then error("loss: texts given but the model has no tokenizer; pass id lists", 4) end
          input[i] = model:tokenize(x)
        else
          input[i] = x
        end
      end
    end
    local emb, tape = mc:forward_train(input)
    return emb, function(d) mc:backward(tape, d) end
  end
  -- frozen below the projection: pooled features, cached per item
  local pooled
  if is_tensor(items) then
    local _, ex = mc:encode_pixels(items, { pooled = true })
    pooled = ex.pooled
  else
    local cache, rows, missing, mi = self.cache[kind], {}, {}, {}
    for i, x in ipairs(items) do
      local k = key_of(x)
      local hit = k and cache[k]
      if hit then rows[i] = hit else missing[#missing + 1], mi[#mi + 1] = x, i end
    end
    if #missing > 0 then
      local ex
      if vision then
        _, ex = mc:encode_pixels(model.processor:preprocess_batch(missing), { pooled = true })
      else
        local ids = {}
        for j, x in ipairs(missing) do
          ids[j] = type(x) == "string" and model:tokenize(x) or x
        end
        _, ex = mc:encode_ids(ids, { pooled = true })
      end
      for j, i in ipairs(mi) do
        local row = ex.pooled:rows(j)
        rows[i] = row
        local k = key_of(missing[j])
        if k then cache[k] = row end
      end
    end
    pooled = #rows == 1 and rows[1] or core.cat(rows)
  end
  local emb = mc:project(pooled, kind == "image" and "vision" or "text")
  if want_grad and tr.proj then
    return emb, function(d) mc:project_backward(pooled, d, kind == "image" and "vision" or "text") end
  end
  return emb, nil
end

-- Embed every column; same-modality columns go through one forward.
function Loss:_embed(batch, want_grad)
  local cols, names = columns_of(batch)
  if #cols == 0 then error("loss: empty batch", 3) end
  local n = col_len(cols[1])
  if n == 0 then error("loss: empty batch", 3) end
  local kinds, groups = {}, { image = {}, text = {} }
  for i, c in ipairs(cols) do
    if col_len(c) ~= n then
      error(("loss: column '%s' has %d items, column '%s' has %d"):format(names[i], col_len(c), names[1], n), 3)
    end
    kinds[i] = modality(c, names[i], self.opts)
    table.insert(groups[kinds[i]], i)
  end
  local embeds, backs = {}, {}
  for kind, idx in pairs(groups) do
    if #idx > 0 then
      local items
      if #idx == 1 then
        items = cols[idx[1]]
      elseif is_tensor(cols[idx[1]]) then
        local parts = {}
        for j, ci in ipairs(idx) do parts[j] = cols[ci] end
        items = core.cat(parts)
      else
        items = {}
        for _, ci in ipairs(idx) do
          if is_tensor(cols[ci]) then error("loss: mix of Tensor and list columns of one modality", 3) end
          for _, x in ipairs(cols[ci]) do items[#items + 1] = x end
        end
      end
      local emb, back = self:_encode(kind, items, want_grad)
      for j, ci in ipairs(idx) do embeds[ci] = emb:rows((j - 1) * n + 1, j * n) end
      backs[#backs + 1] = { idx = idx, back = back, n = n }
    end
  end
  return embeds, backs
end

-- Route gradients of each column's embeddings back through its tower.
local function run_backward(backs, dcols, scale)
  for _, g in ipairs(backs) do
    if g.back then
      local parts = {}
      for j, ci in ipairs(g.idx) do parts[j] = dcols[ci] end
      local d = #parts == 1 and parts[1] or core.cat(parts)
      if scale and scale ~= 1 then d = d * scale end
      g.back(d)
    end
  end
end

function Loss:forward(batch)
  local embeds = self:_embed(batch, false)
  return (self:_compute(embeds))
end

function Loss:backward(batch, opts)
  local embeds, backs = self:_embed(batch, true)
  local value, dcols, extra = self:_compute(embeds, true)
  local scale = opts and opts.scale or 1
  run_backward(backs, dcols, scale)
  if extra then extra(scale) end
  return value
end

-- The losses -------------------------------------------------------------------

local function class(name)
  local c = setmetatable({}, { __index = Loss })
  c.__index = c
  c.__name = "clip.loss." .. name
  return c
end

--- MultipleNegativesRankingLoss(model, {scale = 20}): sentence-transformers'.
local MNRL = class("MultipleNegativesRankingLoss")
M.MultipleNegativesRankingLoss = function(model, opts)
  return new(MNRL, model, opts)
end
function MNRL:_compute(e, grad)
  if #e < 2 then error("MultipleNegativesRankingLoss: needs at least two columns", 3) end
  local others = {}
  for i = 2, #e do others[#others + 1] = e[i] end
  local b = #others == 1 and others[1] or core.cat(others)
  local loss, da, db = core.loss_mnrl(e[1], b, self.opts.scale or 20, self.symmetric)
  if not grad then return loss end
  local n = e[1]:size(1)
  local d = { da }
  for i = 2, #e do d[i] = db:rows((i - 2) * n + 1, (i - 1) * n) end
  return loss, d
end

--- MultipleNegativesSymmetricRankingLoss(model, {scale = 20}).
local MNSRL = class("MultipleNegativesSymmetricRankingLoss")
MNSRL._compute = MNRL._compute
MNSRL.symmetric = true
M.MultipleNegativesSymmetricRankingLoss = function(model, opts)
  return new(MNSRL, model, opts)
end

--- CLIPLoss(model, {clamp = false}): transformers' symmetric InfoNCE with the
-- model's learnable logit_scale; clamp = true keeps logit_scale <= ln 100 (as
-- open_clip does after each step; here before each forward).
local CLIP = class("CLIPLoss")
M.CLIPLoss = function(model, opts) return new(CLIP, model, opts) end
function CLIP:_compute(e, grad)
  if #e ~= 2 then error("CLIPLoss: expects two columns (images, texts)", 3) end
  local ls_t = self.model.core:param("logit_scale")
  if self.opts.clamp then
    local v = ls_t:get()
    if v > math.log(100) then ls_t:set(math.log(100)) elseif v < 0 then ls_t:set(0) end
  end
  local loss, da, db, dls = core.loss_clip(e[1], e[2], ls_t:get())
  if not grad then return loss end
  local mc = self.model.core
  return loss, { da, db }, function(scale)
    if mc:requires_grad("logit_scale") then
      local g = mc:grad("logit_scale", true)
      g:set(g:get() + dls * scale)
    end
  end
end

--- TripletLoss(model, {margin = 5}): euclidean, sentence-transformers' default.
local TRIP = class("TripletLoss")
M.TripletLoss = function(model, opts) return new(TRIP, model, opts) end
function TRIP:_compute(e, grad)
  if #e ~= 3 then error("TripletLoss: expects three columns (anchor, positive, negative)", 3) end
  local loss, da, dp, dn = core.loss_triplet(e[1], e[2], e[3], self.opts.margin or 5)
  if not grad then return loss end
  return loss, { da, dp, dn }
end

--- SigLIPLoss(model, {init_logit_scale = ln 10, init_bias = -10}): open_clip's
-- sigmoid loss; its temperature and bias are parameters of the loss
-- (loss:parameters()), trained by passing the loss to the optimizer too.
local SIG = class("SigLIPLoss")
M.SigLIPLoss = function(model, opts)
  local self = new(SIG, model, opts)
  local o = self.opts
  self.logit_scale = { name = "loss.logit_scale", data = core.tensor({ o.init_logit_scale or math.log(10) }), requires_grad = true }
  self.logit_bias = { name = "loss.logit_bias", data = core.tensor({ o.init_bias or -10 }), requires_grad = true }
  return self
end
function SIG:parameters() return { self.logit_scale, self.logit_bias } end
function SIG:_compute(e, grad)
  if #e ~= 2 then error("SigLIPLoss: expects two columns", 3) end
  local t, b = self.logit_scale.data[1], self.logit_bias.data[1]
  local loss, da, db, dt, dbias = core.loss_siglip(e[1], e[2], t, b)
  if not grad then return loss end
  return loss, { da, db }, function(scale)
    for _, pg in ipairs({ { self.logit_scale, dt }, { self.logit_bias, dbias } }) do
      local p, g = pg[1], pg[2]
      if p.requires_grad then
        p.grad = p.grad or core.zeros({ 1 })
        p.grad[1] = p.grad[1] + g * scale
      end
    end
  end
end

--- cross_entropy(logits {n,C}, labels (1-based list)) -> loss, dlogits
M.cross_entropy = core.softmax_xent

return M
