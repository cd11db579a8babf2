--- clip.loss: contrastive losses over batches of columns, with backward.
--
-- A batch is a table of columns: { anchor = ..., positive = ..., negative = ... }
-- (or a list of columns in order). A column is a list of texts (strings or
-- token-id lists), a list of images (paths or clip.Image), or a preprocessed
-- {n,3,N,N} Tensor. A column is images or texts because it is declared so:
-- opts.modalities = { anchor = "image", positive = "text" } on the loss, or the
-- column types of the Dataset the batch came from (Dataset:batches). Only an
-- undeclared list column is detected, from every row: all existing image
-- files (clip.image.EXTENSIONS) or clip.Images -> images, none ->
-- texts, a mix -> an error naming a row of each kind.
--
-- loss:backward(batch [, {scale = s}]) runs forward and backward and returns
-- the loss as a number; gradients accumulate into the parameters that require
-- them. loss:forward(batch) returns the value without touching gradients.
--
-- Frozen-feature cache: when a tower is frozen below its projection, each
-- image / text is encoded once and later steps reuse its pooled features
-- (the same numbers as re-encoding); only the projection runs per step.
-- The cache grows with the distinct items seen; opts.cache = false keeps
-- nothing (a clip.stream of millions of rows: every step encodes its batch).
--
-- GradCache (opts.mini_batch_size = m, on any loss; the Cached* constructors
-- default it to 32): backward embeds the batch m rows of one column at a time
-- without keeping activations, computes the loss and d(loss)/d(embeddings) on
-- the full batch, then re-runs each mini-batch's training forward and
-- backpropagates its slice of those gradients, releasing each tape before the
-- next. Loss and gradients equal the plain loss at the full batch (up to float
-- summation order) while activation memory is that of m rows.
--
-- Data parallel (loss:distributed(clip.dist), which clip.Trainer{distributed =
-- true} calls; docs/distributed.md): backward embeds this rank's rows, all-gathers
-- every column's embeddings (rank order), computes the loss at the global batch
-- (the same number on every rank) and backpropagates only the local rows' slice
-- of d(loss)/d(embeddings); the loss's own parameters (CLIP's logit_scale,
-- SigLIP's two) get their gradient on rank 0 only (zero elsewhere). A SUM
-- all-reduce of the gradients then gives the single-process gradient at the
-- global batch. loss:distributed(clip.dist, {local_loss = true}): open_clip's
-- local_loss with gather_with_grad - each rank computes only its rows' part
-- of the loss against every column, and the embedding gradients of the
-- gathered rows are reduce-scattered back to their ranks (the same gradients
-- in the end). forward stays local (evaluation runs on one rank).
local core = require "clip.core"
local image = require "clip.image"

local M = {}

local COLUMN_ORDER = { "anchor", "positive", "negative" }

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

local function is_image_path(x)
  return image.has_image_extension(x) and core.is_file(x)
end

local function show(x)
  if type(x) == "string" then return ("%q"):format(#x > 60 and x:sub(1, 57) .. "..." or x) end
  return type(x) == "table" and "an id list" or tostring(x)
end

-- The declared modality of a column: the loss's opts.modalities (by name, or
-- by position for a list batch), else the column types of the dataset the
-- batch came from (Dataset:batches sets them on the batch's metatable).
local function declared(name, opts, batch)
  local m = opts.modalities
  local v = m and (m[name] or m[tonumber(name)])
  if v == nil then
    local mt = getmetatable(batch)
    local bm = type(mt) == "table" and rawget(mt, "modalities")
    v = type(bm) == "table" and bm[name] or nil
  end
  if v ~= nil and v ~= "image" and v ~= "text" then
    error(("loss: modality of column '%s' is %s; expected \"image\" or \"text\""):format(name, show(v)), 5)
  end
  return v
end

-- The modality of a column. Declared: checked against the items (a declared
-- image column's paths must exist; a caption is never read as a path in a
-- text column). Not declared: every row is inspected; an item is an image
-- when it is a clip.Image or an existing file with an image extension, text
-- when it is an id list or any other string; a mix is an error.
local function modality(col, name, opts, batch)
  local want = declared(name, opts, batch)
  if is_tensor(col) then
    if want == "text" then error(("loss: column '%s' is declared text but holds a pixel Tensor"):format(name), 4) end
    return "image"
  end
  if type(col) ~= "table" or #col == 0 then
    error(("loss: column '%s' is empty or not a list"):format(name), 4)
  end
  if want == "image" then
    for i, x in ipairs(col) do
      if type(x) == "string" then
        if not core.is_file(x) then error(("loss: column '%s' row %d: image '%s' not found"):format(name, i, x), 4) end
      elseif type(x) ~= "userdata" then
        error(("loss: column '%s' row %d: %s in an image column"):format(name, i, show(x)), 4)
      end
    end
    return "image"
  elseif want == "text" then
    for i, x in ipairs(col) do
      if type(x) ~= "string" and type(x) ~= "table" then
        error(("loss: column '%s' row %d: %s in a text column"):format(name, i, show(x)), 4)
      end
    end
    return "text"
  end
  local img, txt
  for i, x in ipairs(col) do
    local t = type(x)
    local is_img
    if t == "userdata" then is_img = true
    elseif t == "table" then is_img = false
    elseif t == "string" then is_img = is_image_path(x)
    else error(("loss: column '%s' row %d holds %s items"):format(name, i, t), 4) end
    if is_img then img = img or i else txt = txt or i end
    if img and txt then
      error(("loss: column '%s' mixes images and texts: row %d %s is an image, row %d %s is not " ..
        "(an existing image file, a clip.Image); declare it with opts.modalities = {%s = \"image\" or \"text\"}")
        :format(name, img, show(col[img]), txt, show(col[txt]), name), 4)
    end
  end
  return img and "image" or "text"
end

local function col_len(col) return is_tensor(col) and col:size(1) or #col end

-- rows lo..hi of a column (a Tensor view or a new list)
local function slice(col, lo, hi)
  if is_tensor(col) then return col:rows(lo, hi) end
  return table.move(col, lo, hi, 1, {})
end

-- Base ------------------------------------------------------------------------

local Loss = {}
Loss.__index = Loss

local function new(cls, model, opts)
  if type(model) ~= "table" or not model.core then error("loss: first argument must be a clip model", 3) end
  local mbs = opts and opts.mini_batch_size
  if mbs ~= nil and (math.type(mbs) ~= "integer" or mbs < 1) then
    error("loss: mini_batch_size must be a positive integer", 3)
  end
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
    return emb, function(d) mc:backward(tape, d) end, tape
  end
  -- frozen below the projection: pooled features, cached per item
  local pooled
  if is_tensor(items) then
    local _, ex = mc:encode_pixels(items, { pooled = true })
    pooled = ex.pooled
  else
    -- opts.cache = false: nothing kept (streams of millions of distinct rows)
    local cache = self.opts.cache == false and {} or self.cache[kind]
    local rows, missing, mi = {}, {}, {}
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

-- The batch's columns, their names, modalities and common length (errors
-- are raised at the level of the caller of forward / backward).
function Loss:_columns(batch)
  local cols, names = columns_of(batch)
  if #cols == 0 then error("loss: empty batch", 3) end
  local n = col_len(cols[1])
  if n == 0 then error("loss: empty batch", 3) end
  local kinds = {}
  for i, c in ipairs(cols) do
    if col_len(c) ~= n then
      error(("loss: column '%s' has %d items, column '%s' has %d"):format(names[i], col_len(c), names[1], n), 3)
    end
    kinds[i] = modality(c, names[i], self.opts, batch)
  end
  return cols, names, kinds, n
end

-- Embed every column; same-modality columns go through one forward.
function Loss:_embed(batch, want_grad)
  return self:_embed_columns(want_grad, self:_columns(batch))
end

function Loss:_embed_columns(want_grad, cols, _, kinds, n)
  local groups = { image = {}, text = {} }
  for i = 1, #cols do table.insert(groups[kinds[i]], i) end
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

-- The mini-batch size when GradCache applies to a batch of n rows, else nil.
function Loss:_mini_batch(n)
  local m = self.opts.mini_batch_size
  if m == nil then return nil end
  if math.type(m) ~= "integer" or m < 1 then
    error("loss: mini_batch_size must be a positive integer", 3)
  end
  return n > m and m or nil
end

-- GradCache's first pass: each column in mini-batches of m rows, no
-- activations kept (a training tape is released at once; a frozen tower's
-- projection backward, which holds only pooled features, is kept).
function Loss:_embed_chunks(want_grad, cols, kinds, n, m)
  local embeds, jobs, mc = {}, {}, self.model.core
  for ci, col in ipairs(cols) do
    local parts = {}
    for lo = 1, n, m do
      local hi = math.min(n, lo + m - 1)
      local items = slice(col, lo, hi)
      local emb, back, tape = self:_encode(kinds[ci], items, want_grad)
      if tape then mc:release_tape(tape); back = nil end
      parts[#parts + 1] = emb
      jobs[#jobs + 1] = { ci = ci, lo = lo, hi = hi, items = items, emb = emb, back = back, rerun = tape ~= nil }
    end
    embeds[ci] = #parts == 1 and parts[1] or core.cat(parts)
  end
  return embeds, jobs
end

--- distributed(dist [, {local_loss = false}]): make backward data-parallel
-- over dist's ranks (clip.dist with MPI running; nil turns it off). Returns
-- the loss. local_loss = true: open_clip's local_loss = True with
-- gather_with_grad = True (below).
function Loss:distributed(dist, opts)
  if dist ~= nil and (type(dist) ~= "table" or type(dist.all_gather) ~= "function") then
    error("loss:distributed: expected clip.dist (or nil)", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then error("loss:distributed: opts must be a table", 2) end
  local ll = opts and opts.local_loss and true or false
  if ll and not self.local_rows then
    error(("loss:distributed: local_loss needs a loss that computes row ranges (%s does not)")
      :format(getmetatable(self).__name or "this loss"), 2)
  end
  self.dist = dist
  self.local_loss = ll
  return self
end

-- The loss and d(loss)/d(embeddings) of the local rows. Distributed: every
-- column's embeddings are all-gathered (rank order = row order).
--   default: the loss is computed at the global batch on every rank and the
--     local rows' slice of each column's gradient is kept; the loss
--     parameters' gradient (extra) is applied on rank 0 only.
--   local_loss: each rank computes only its rows' part of the loss (its rows
--     against every column, weighted as in the global batch: loss.h, *_rows),
--     whose gradient reaches every gathered row; those gradients are summed
--     over the ranks and each rank keeps its rows (reduce_scatter, the
--     backward of a gather with grad); extra is applied on every rank (its
--     part). The loss value is the sum of the parts (exchanged exactly).
-- Either way the SUM all-reduce of the parameter gradients that follows gives
-- the single-process gradient at the global batch.
function Loss:_compute_grad(embeds)
  local d = self.dist
  if not d or d.world() == 1 then return self:_compute(embeds, true) end
  local global, lo, hi, counts = {}, nil, nil, nil
  local rank = d.rank()
  for ci, e in ipairs(embeds) do
    local g, c = d.all_gather(e)
    global[ci] = g
    if not lo then
      counts = c
      lo = 1
      for k = 1, rank do lo = lo + c[k] end
      hi = lo + c[rank + 1] - 1
    end
  end
  if self.local_loss then
    local value, dglobal, extra = self:_compute(global, true, { lo, hi })
    local dcols = {}
    for ci, g in ipairs(dglobal) do dcols[ci] = d.reduce_scatter(g, counts) end
    local total = 0
    for _, v in ipairs(d.all_gather_string(("%a"):format(value))) do total = total + tonumber(v) end
    return total, dcols, extra
  end
  local value, dcols, extra = self:_compute(global, true)
  for ci, g in ipairs(dcols) do dcols[ci] = g:rows(lo, hi) end
  local wrapped = extra and function(scale) extra(rank == 0 and scale or 0) end
  return value, dcols, wrapped
end

function Loss:forward(batch)
  local cols, names, kinds, n = self:_columns(batch)
  local m = self:_mini_batch(n)
  local embeds
  if m then
    embeds = self:_embed_chunks(false, cols, kinds, n, m)
  else
    embeds = self:_embed_columns(false, cols, names, kinds, n)
  end
  return (self:_compute(embeds))
end

function Loss:backward(batch, opts)
  local cols, names, kinds, n = self:_columns(batch)
  local scale = opts and opts.scale or 1
  local m = self:_mini_batch(n)
  if m then return self:_backward_cached(cols, kinds, n, m, scale) end
  local embeds, backs = self:_embed_columns(true, cols, names, kinds, n)
  local value, dcols, extra = self:_compute_grad(embeds)
  run_backward(backs, dcols, scale)
  if extra then extra(scale) end
  return value
end

-- GradCache: 1) embed every mini-batch without a graph; 2) loss and
-- d(loss)/d(embeddings) at the full batch; 3) per mini-batch, the training
-- forward again (the same code path on the same rows, so the same embeddings:
-- self.rerun_exact records that they matched bit for bit) and backward of its
-- slice of the gradient, the tape released before the next mini-batch.
function Loss:_backward_cached(cols, kinds, n, m, scale)
  local embeds, jobs = self:_embed_chunks(true, cols, kinds, n, m)
  local value, dcols, extra = self:_compute_grad(embeds)
  local exact = true
  for k, job in ipairs(jobs) do
    local d = dcols[job.ci]:rows(job.lo, job.hi)
    if scale ~= 1 then d = d * scale end
    local back = job.back
    if job.rerun then
      local emb
      emb, back = self:_encode(kinds[job.ci], job.items, true)
      if emb:bytes() ~= job.emb:bytes() then exact = false end
    end
    if back then back(d) end
    jobs[k] = nil
  end
  self.rerun_exact = exact
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
-- _compute(embeds, grad [, rows]): rows = {lo, hi}: the local_loss part of
-- those rows (loss:distributed), with gradients for every row.
MNRL.local_rows = true -- _compute(e, grad, {lo, hi})
function MNRL:_compute(e, grad, rows)
  if #e < 2 then error("MultipleNegativesRankingLoss: needs at least two columns", 3) end
  local others = {}
  for i = 2, #e do others[#others + 1] = e[i] end
  local b = #others == 1 and others[1] or core.cat(others)
  local lo, hi = table.unpack(rows or {})
  local loss, da, db = core.loss_mnrl(e[1], b, self.opts.scale or 20, self.symmetric, lo, hi)
  if not grad then return loss end
  local n = e[1]:size(1)
  local d = { da }
  for i = 2, #e do d[i] = db:rows((i - 2) * n + 1, (i - 1) * n) end
  return loss, d
end

--- MultipleNegativesSymmetricRankingLoss(model, {scale = 20}).
local MNSRL = class("MultipleNegativesSymmetricRankingLoss")
MNSRL._compute = MNRL._compute
MNSRL.local_rows = true
MNSRL.symmetric = true
M.MultipleNegativesSymmetricRankingLoss = function(model, opts)
  return new(MNSRL, model, opts)
end

--- CLIPLoss(model, {clamp = false}): transformers' symmetric InfoNCE with the
-- model's learnable logit_scale; clamp = true keeps logit_scale <= ln 100 (as
-- open_clip does after each step; here before each forward).
local CLIP = class("CLIPLoss")
M.CLIPLoss = function(model, opts) return new(CLIP, model, opts) end
CLIP.local_rows = true -- _compute(e, grad, {lo, hi})
function CLIP:_compute(e, grad, rows)
  if #e ~= 2 then error("CLIPLoss: expects two columns (images, texts)", 3) end
  local ls_t = self.model.core:param("logit_scale")
  if self.opts.clamp then
    local v = ls_t:get()
    if v > math.log(100) then ls_t:set(math.log(100)) elseif v < 0 then ls_t:set(0) end
  end
  local lo, hi = table.unpack(rows or {})
  local loss, da, db, dls = core.loss_clip(e[1], e[2], ls_t:get(), lo, hi)
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
TRIP.local_rows = true -- _compute(e, grad, {lo, hi})
function TRIP:_compute(e, grad, rows)
  if #e ~= 3 then error("TripletLoss: expects three columns (anchor, positive, negative)", 3) end
  if rows then -- rows lo..hi alone, weighted as in the batch of B rows; zero gradient elsewhere
    local lo, hi, B = rows[1], rows[2], e[1]:size(1)
    local w = (hi - lo + 1) / B
    local loss, da, dp, dn = core.loss_triplet(e[1]:rows(lo, hi), e[2]:rows(lo, hi), e[3]:rows(lo, hi),
      self.opts.margin or 5)
    if not grad then return loss * w end
    local E = e[1]:size(2)
    local function place(g)
      local parts = {}
      if lo > 1 then parts[#parts + 1] = core.zeros({ lo - 1, E }) end
      parts[#parts + 1] = g * w
      if hi < B then parts[#parts + 1] = core.zeros({ B - hi, E }) end
      return #parts == 1 and parts[1] or core.cat(parts)
    end
    return loss * w, { place(da), place(dp), place(dn) }
  end
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
SIG.local_rows = true -- _compute(e, grad, {lo, hi})
function SIG:_compute(e, grad, rows)
  if #e ~= 2 then error("SigLIPLoss: expects two columns", 3) end
  local t, b = self.logit_scale.data[1], self.logit_bias.data[1]
  local lo, hi = table.unpack(rows or {})
  local loss, da, db, dt, dbias = core.loss_siglip(e[1], e[2], t, b, lo, hi)
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

-- GradCache variants: the same loss with mini_batch_size defaulting to 32
-- (sentence-transformers' CachedMultipleNegativesRankingLoss default).
local function cached(name, base, ctor)
  local c = setmetatable({}, { __index = base })
  c.__index = c
  c.__name = "clip.loss." .. name
  M[name] = function(model, opts)
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    if o.mini_batch_size == nil then o.mini_batch_size = 32 end
    local self = ctor(model, o)
    return setmetatable(self, c)
  end
end

--- CachedMultipleNegativesRankingLoss(model, {scale = 20, mini_batch_size = 32})
cached("CachedMultipleNegativesRankingLoss", MNRL, M.MultipleNegativesRankingLoss)
--- CachedMultipleNegativesSymmetricRankingLoss(model, {scale = 20, mini_batch_size = 32})
cached("CachedMultipleNegativesSymmetricRankingLoss", MNSRL, M.MultipleNegativesSymmetricRankingLoss)
--- CachedCLIPLoss(model, {clamp = false, mini_batch_size = 32})
cached("CachedCLIPLoss", CLIP, M.CLIPLoss)

--- cross_entropy(logits {n,C}, labels (1-based list)) -> loss, dlogits
M.cross_entropy = core.softmax_xent

return M
