--- clip.eval: evaluators for CLIP models, usable inside a training loop.
--
-- Two layers:
--  * metric functions on embeddings or scores (Tensors), no model needed:
--      triplet_accuracy, ranks, recall_at_k, retrieval_metrics,
--      information_retrieval_metrics, classification_metrics, prototypes,
--      nearest_prototype_scores, linear_probe
--  * evaluator objects built from data, called with a model, returning a flat
--    table of numbers (the keys prefixed with the evaluator's name):
--      local ev = eval.TripletEvaluator{ anchors = imgs, positives = titles,
--                                         negatives = negs, name = "train" }
--      ev(model)  --> { train_cosine_accuracy = 0.962 }
--    TripletEvaluator, RecallEvaluator, RetrievalEvaluator,
--    InformationRetrievalEvaluator, ImageTextIREvaluator,
--    ZeroShotEvaluator, FewShotEvaluator, SequentialEvaluator.
--
-- Definitions (sentence-transformers 3.3, open_clip, openai/CLIP):
--  * triplet accuracy: mean of cos(a,p) > cos(a,n), strict: a tie is wrong.
--  * rank of a match: its 1-based position when the row's scores are sorted
--    descending, equal scores in index order (the lower index first, as
--    Tensor:topk and Tensor:argmax); NaN sorts last. With several matches the
--    best placed one counts.
--  * Recall@k: the share of rows whose rank is <= k (k larger than the set:
--    every row is a hit). mean_rank: mean of the ranks; median_rank:
--    floor(median of the ranks) (open_clip: floor(median(rank-1)) + 1);
--    MRR: mean of 1/rank.
--  * zero-shot weights: each prompt embedding L2-normalized, the mean over a
--    class's templates, renormalized (the notebook's prompt ensembling).
--  * top-k accuracy: rank of the true class <= k, so top-1 = argmax correct.
--
-- Embedding with a model goes through eval.embedder(model): batched, and
-- when a tower is frozen below its projection (the default fine-tuning
-- setup) each image / text is run through the tower once and only the
-- projection runs again on later calls. A fingerprint of the frozen weights
-- guards the cache: it is rebuilt if they change.
local core = require "clip.core"
local image = require "clip.image"
local templates_mod = require "clip.templates"
local progress = require "clip.progress"

local M = {}

local function is_tensor(x)
  return type(x) == "userdata" and getmetatable(x) == getmetatable(core.zeros({}))
end
M.is_tensor = is_tensor


--- "image" or "text" for a list of inputs (paths with an image extension and
-- clip.Image userdata are images; other strings and id lists are texts).
function M.modality(items)
  if is_tensor(items) then return "image" end
  if type(items) ~= "table" or #items == 0 then error("eval: expected a non-empty list of inputs", 3) end
  local x = items[1]
  if type(x) == "userdata" then return "image" end
  if type(x) == "table" then return "text" end
  if type(x) == "string" then
    if image.has_image_extension(x) then return "image" end
    return "text"
  end
  error("eval: inputs must be image paths, clip.Image, texts or id lists", 3)
end

-- Embedding with a per-model cache of frozen tower features --------------

local Embedder = {}
Embedder.__index = Embedder

local embedders = setmetatable({}, { __mode = "k" })

local function key_of(x)
  if type(x) == "string" then return "s:" .. x end
  if type(x) == "table" then return "i:" .. table.concat(x, ",") end
  return nil
end

--- embedder(model) -> the model's Embedder (one per model, shared by every
-- evaluator): e:images(list [, opts]), e:texts(list [, opts]), e:embed(list),
-- e:clear(). opts: batch_size (32), progress.
function M.embedder(model)
  if type(model) ~= "table" or not model.core then error("eval: expected a clip model", 2) end
  local e = embedders[model]
  if not e then
    e = setmetatable({ model = model, cache = { vision = {}, text = {} }, print = {} }, Embedder)
    embedders[model] = e
  end
  return e
end

--- Forget the cached features of a model (all models when nil).
function M.clear_cache(model)
  if model then embedders[model] = nil else embedders = setmetatable({}, { __mode = "k" }) end
end

function Embedder:clear() self.cache = { vision = {}, text = {} }; self.print = {} end

-- sum of squares of the tower's weights below the projection
local function fingerprint(mc, tower)
  local prefix = tower == "vision" and "vision_model." or "text_model."
  local s = 0
  for _, it in ipairs(mc:param_info()) do
    if it.name:sub(1, #prefix) == prefix then s = s + core.sumsq(mc:param(it.name)) end
  end
  return s
end

function Embedder:_tower(tower, items, opts)
  opts = opts or {}
  local model, mc = self.model, self.model.core
  local bs = opts.batch_size or 32
  local n = is_tensor(items) and items:size(1) or #items
  if n == 0 then error("eval: nothing to embed", 3) end
  local bar = progress.wrap(opts.progress, n, tower == "vision" and "encode images" or "encode texts",
    tower == "vision" and "img" or "txt")
  local tr = mc:trainable(tower)
  local cacheable = opts.cache ~= false and not tr.below_projection and not is_tensor(items)
  if not cacheable then
    local parts = {}
    for a = 1, n, bs do
      local b = math.min(n, a + bs - 1)
      if tower == "vision" then
        local sub = is_tensor(items) and items:rows(a, b) or table.move(items, a, b, 1, {})
        parts[#parts + 1] = model:encode_images(sub, { batch_size = bs })
      else
        parts[#parts + 1] = model:encode_texts(table.move(items, a, b, 1, {}), { batch_size = bs })
      end
      bar:update(b)
    end
    bar:finish()
    return #parts == 1 and parts[1] or core.cat(parts)
  end
  local fp = fingerprint(mc, tower)
  if self.print[tower] ~= fp then
    self.cache[tower] = {}
    self.print[tower] = fp
  end
  local cache = self.cache[tower]
  local rows, missing, mi = {}, {}, {}
  for i, x in ipairs(items) do
    local k = key_of(x)
    local hit = k and cache[k]
    if hit then rows[i] = hit else missing[#missing + 1], mi[#mi + 1] = x, i end
  end
  local done = n - #missing
  bar:update(done)
  for a = 1, #missing, bs do
    local b = math.min(#missing, a + bs - 1)
    local sub = table.move(missing, a, b, 1, {})
    local ex
    if tower == "vision" then
      local ok, px = pcall(model.processor.preprocess_batch, model.processor, sub)
      if not ok then
        error((tostring(px):gsub("item (%d+)", function(i) return "item " .. mi[tonumber(i) + a - 1] end)), 3)
      end
      _, ex = mc:encode_pixels(px, { pooled = true })
    else
      local ids = {}
      for j, x in ipairs(sub) do ids[j] = type(x) == "string" and model:tokenize(x) or x end
      _, ex = mc:encode_ids(ids, { pooled = true })
    end
    for j = 1, b - a + 1 do
      local row = ex.pooled:rows(j)
      local i = mi[a + j - 1]
      rows[i] = row
      local k = key_of(missing[a + j - 1])
      if k then cache[k] = row end
    end
    done = done + (b - a + 1)
    bar:update(done)
  end
  bar:finish()
  local out = {}
  for a = 1, n, 1024 do
    local b = math.min(n, a + 1023)
    local chunk = table.move(rows, a, b, 1, {})
    out[#out + 1] = mc:project(#chunk == 1 and chunk[1] or core.cat(chunk), tower)
  end
  return #out == 1 and out[1] or core.cat(out)
end

--- Embeddings {n, E} of images (paths, clip.Image, or a {n,3,S,S} Tensor).
function Embedder:images(items, opts) return self:_tower("vision", items, opts) end
--- Embeddings {n, E} of texts (strings or token-id lists).
function Embedder:texts(items, opts) return self:_tower("text", items, opts) end
--- Embeddings of images or texts, whichever the list holds.
function Embedder:embed(items, opts)
  if M.modality(items) == "image" then return self:images(items, opts) end
  return self:texts(items, opts)
end

-- Metric functions ---------------------------------------------------------

--- triplet_accuracy(a, p, n) -> accuracy, hits (a list of booleans)
-- Embeddings {N, D}; hit i is cos(a_i, p_i) > cos(a_i, n_i) (a tie is a miss).
function M.triplet_accuracy(a, p, n)
  local N = a:size(1)
  if N == 0 then error("triplet_accuracy: no triplets", 2) end
  if p:size(1) ~= N or n:size(1) ~= N then
    error(("triplet_accuracy: %d anchors, %d positives, %d negatives"):format(N, p:size(1), n:size(1)), 2)
  end
  local an = a:normalize()
  local cp = core.eval_rowdot(an, p:normalize())
  local cn = core.eval_rowdot(an, n:normalize())
  local hits, good = {}, 0
  local tp, tn = cp:totable(), cn:totable()
  for i = 1, N do
    hits[i] = tp[i] > tn[i]
    if hits[i] then good = good + 1 end
  end
  return good / N, hits
end

--- ranks(scores {n,m}, targets) -> list of 1-based ranks (see the module
-- comment); targets[i] is a column or a list of columns.
M.ranks = core.eval_ranks

local function identity(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

--- recall_at_k(scores {n,m}, k [, targets]) -> recall, hits
-- The seed's ImageTextRetrievalEvaluator: row i is a hit when its target
-- (default column i) is among its k best scores.
function M.recall_at_k(scores, k, targets)
  local n = scores:size(1)
  if n == 0 then error("recall_at_k: no rows", 2) end
  local r = core.eval_ranks(scores, targets or identity(n))
  local hits, c = {}, 0
  for i = 1, n do
    hits[i] = r[i] <= k
    if hits[i] then c = c + 1 end
  end
  return c / n, hits
end

local function rank_summary(r, ks, prefix, out)
  local n = #r
  local sum, inv = 0, 0
  local sorted = table.move(r, 1, n, 1, {})
  table.sort(sorted)
  for _, v in ipairs(r) do sum = sum + v; inv = inv + 1 / v end
  local med
  if n % 2 == 1 then med = sorted[(n + 1) // 2] else med = (sorted[n // 2] + sorted[n // 2 + 1]) / 2 end
  out[prefix .. "mean_rank"] = sum / n
  out[prefix .. "median_rank"] = math.floor(med)
  out[prefix .. "mrr"] = inv / n
  for _, k in ipairs(ks) do
    local c = 0
    for _, v in ipairs(r) do if v <= k then c = c + 1 end end
    out[prefix .. "R@" .. k] = c / n
  end
end

--- retrieval_metrics(image_emb {n,D}, text_emb {m,D} [, opts]) -> metrics
-- opts.ks ({1, 5, 10}); opts.text_image: for each text, the index of its
-- image (default: text i belongs to image i, and n must equal m). Keys:
-- image_to_text_{R@k, mean_rank, median_rank, mrr}, text_to_image_{...},
-- and with opts.ranks = true the rank lists (image_to_text_ranks, ...).
function M.retrieval_metrics(img, txt, opts)
  opts = opts or {}
  local n, m = img:size(1), txt:size(1)
  if n == 0 or m == 0 then error("retrieval_metrics: empty set", 2) end
  local t2i = opts.text_image
  if not t2i then
    if n ~= m then
      error(("retrieval_metrics: %d images and %d texts; pass text_image to say which text goes with which image")
        :format(n, m), 2)
    end
    t2i = identity(n)
  end
  if #t2i ~= m then error(("retrieval_metrics: text_image has %d entries for %d texts"):format(#t2i, m), 2) end
  local i2t = {}
  for t, i in ipairs(t2i) do
    if math.type(i) ~= "integer" or i < 1 or i > n then
      error(("retrieval_metrics: text %d maps to image %s, outside 1..%d"):format(t, tostring(i), n), 2)
    end
    i2t[i] = i2t[i] or {}
    table.insert(i2t[i], t)
  end
  for i = 1, n do
    if not i2t[i] then error(("retrieval_metrics: image %d has no text"):format(i), 2) end
  end
  local s = core.cosine_similarity(img, txt)
  local ks = opts.ks or { 1, 5, 10 }
  local out = {}
  local r_i2t = core.eval_ranks(s, i2t)
  local r_t2i = core.eval_ranks(s:t(), t2i)
  rank_summary(r_i2t, ks, "image_to_text_", out)
  rank_summary(r_t2i, ks, "text_to_image_", out)
  if opts.ranks then out.image_to_text_ranks, out.text_to_image_ranks = r_i2t, r_t2i end
  return out
end

--- classification_metrics(scores {N,C}, labels [, opts]) -> result
-- labels: 1-based class of each row. opts.ks ({1, 5}), opts.classnames.
-- result: n, top1, top<k> for each k, mean_per_class (the mean over classes
-- with samples), per_class (a list of {class, name, n, correct, accuracy};
-- accuracy is nil for a class without samples), confusion (C lists of C
-- counts: confusion[true][predicted]), predictions (argmax per row), ranks.
function M.classification_metrics(scores, labels, opts)
  opts = opts or {}
  local N, C = scores:size(1), scores:size(2)
  if N == 0 then error("classification_metrics: no samples", 2) end
  if #labels ~= N then error(("classification_metrics: %d labels for %d rows"):format(#labels, N), 2) end
  local r = core.eval_ranks(scores, labels)
  local pred = scores:argmax()
  local out = { n = N, ranks = r, predictions = pred }
  for _, k in ipairs(opts.ks or { 1, 5 }) do
    local c = 0
    for i = 1, N do if r[i] <= k then c = c + 1 end end
    out["top" .. k] = c / N
  end
  local conf, count, correct = {}, {}, {}
  for c = 1, C do
    conf[c] = {}
    for d = 1, C do conf[c][d] = 0 end
    count[c], correct[c] = 0, 0
  end
  for i = 1, N do
    local y, p = labels[i], pred[i]
    conf[y][p] = conf[y][p] + 1
    count[y] = count[y] + 1
    if p == y then correct[y] = correct[y] + 1 end
  end
  local per, sum, nonempty = {}, 0, 0
  for c = 1, C do
    local acc = count[c] > 0 and correct[c] / count[c] or nil
    per[c] = { class = c, name = opts.classnames and opts.classnames[c], n = count[c], correct = correct[c],
      accuracy = acc }
    if acc then sum, nonempty = sum + acc, nonempty + 1 end
  end
  out.per_class = per
  out.mean_per_class = nonempty > 0 and sum / nonempty or nil
  out.confusion = conf
  return out
end

--- zero_shot_weights(model, classnames, templates [, opts]) -> Tensor {C, E}
-- templates: a list (each holding "{}" or "{c}") or a set name of
-- clip.templates ("openai_imagenet" (default), "openai_imagenet_7",
-- "simple"). Each class: its prompts embedded, each L2-normalized, the mean
-- taken and renormalized. opts: batch_size, progress.
function M.zero_shot_weights(model, classnames, templates, opts)
  opts = opts or {}
  if type(classnames) ~= "table" or #classnames == 0 then
    error("zero_shot_weights: expected a non-empty list of class names", 2)
  end
  local tl = templates_mod.get(templates or "openai_imagenet")
  local texts = {}
  for _, c in ipairs(classnames) do
    for _, t in ipairs(tl) do texts[#texts + 1] = templates_mod.format(t, c) end
  end
  local emb = M.embedder(model):texts(texts, opts):normalize()
  local C, T = #classnames, #tl
  return emb:reshape({ C, T, emb:size(2) }):mean(2):normalize()
end

--- prototypes(emb {N,D}, labels, num_classes [, {normalize = true}])
--   -> Tensor {C, D}, counts
-- The mean of each class's (L2-normalized) embeddings; a class without
-- samples gets a zero row and count 0.
function M.prototypes(emb, labels, num_classes, opts)
  opts = opts or {}
  local N, D = emb:size(1), emb:size(2)
  if #labels ~= N then error(("prototypes: %d labels for %d rows"):format(#labels, N), 2) end
  local x = opts.normalize == false and emb or emb:normalize()
  local by = {}
  for c = 1, num_classes do by[c] = {} end
  for i, y in ipairs(labels) do
    if math.type(y) ~= "integer" or y < 1 or y > num_classes then
      error(("prototypes: label %s of row %d outside 1..%d"):format(tostring(y), i, num_classes), 2)
    end
    table.insert(by[y], x:rows(i))
  end
  local rows, counts = {}, {}
  for c = 1, num_classes do
    counts[c] = #by[c]
    if #by[c] == 0 then
      rows[c] = core.zeros({ 1, D })
    else
      rows[c] = (#by[c] == 1 and by[c][1] or core.cat(by[c])):mean(1):reshape({ 1, D })
    end
  end
  return core.cat(rows), counts
end

--- nearest_prototype_scores(query {N,D}, protos {C,D}, counts) -> {N,C}
-- Cosine similarity to each prototype; classes with count 0 get -inf, so they
-- are never predicted.
function M.nearest_prototype_scores(query, protos, counts)
  local s = core.cosine_similarity(query, protos)
  if counts then
    for c, k in ipairs(counts) do
      if k == 0 then
        for i = 1, s:size(1) do s:set(i, c, -math.huge) end
      end
    end
  end
  return s
end

-- Linear probe ---------------------------------------------------------------

local Probe = {}
Probe.__index = Probe

local function standardize_stats(x)
  local mean = x:mean(1)
  local c = x - mean
  local var = (c * c):mean(1):totable()
  local std = {}
  for i, v in ipairs(var) do std[i] = math.sqrt(v) > 1e-6 and math.sqrt(v) or 1 end
  return mean, core.tensor(std)
end

--- Logits {N, C} of features x {N, D}.
function Probe:scores(x)
  if self.mean then x = (x - self.mean) / self.std end
  return core.matmul(x, self.W, { transpose_b = true }) + self.b
end

--- Predicted classes (argmax) of features x.
function Probe:predict(x) return self:scores(x):argmax() end

--- classification_metrics of features x against labels y.
function Probe:evaluate(x, y, opts) return M.classification_metrics(self:scores(x), y, opts) end

local function train_probe(x, y, C, l2, opts)
  local optim, loss = require "clip.optim", require "clip.loss"
  local D = x:size(2)
  local W = { name = "probe.weight", data = core.zeros({ C, D }), grad = core.zeros({ C, D }), requires_grad = true }
  local b = { name = "probe.bias", data = core.zeros({ C }), grad = core.zeros({ C }), requires_grad = true }
  local opt = optim.AdamW({ W, b }, { lr = opts.lr or 1e-2, weight_decay = 0 })
  local N = x:size(1)
  local bs = opts.batch_size or N
  local rng = require("clip.data").rng(opts.seed or 0)
  local steps = opts.steps or 300
  local last
  for _ = 1, steps do
    local xb, yb = x, y
    if bs < N then
      local idx = rng:permutation(N)
      local rows, ys = {}, {}
      for j = 1, bs do rows[j], ys[j] = x:rows(idx[j]), y[idx[j]] end
      xb, yb = core.cat(rows), ys
    end
    local logits = core.matmul(xb, W.data, { transpose_b = true }) + b.data
    local l, d = loss.cross_entropy(logits, yb)
    W.grad:copy(core.matmul(d, xb, { transpose_a = true }))
    if l2 > 0 then
      W.grad:add_(W.data, l2)
      l = l + 0.5 * l2 * core.sumsq(W.data)
    end
    b.grad:copy(d:sum(1))
    opt:step()
    last = l
  end
  return W.data, b.data, last
end

--- linear_probe(train_x {N,D}, train_y [, opts]) -> Probe
-- Multinomial logistic regression on frozen features: logits = x Wᵀ + b,
-- loss = cross-entropy + (l2/2)·|W|², trained with clip.optim.AdamW
-- (weight_decay 0; the L2 term is in the gradient) from zeros, full batch
-- unless batch_size is given. Features are standardized with the training
-- set's mean and std unless standardize = false.
-- opts: num_classes (default max label), steps (300), lr (1e-2), batch_size,
--       seed (0, for mini-batches), standardize (true),
--       l2: a number (default 0), or with valid_x/valid_y a list to sweep
--           (default {0, 1e-4, 1e-3, 1e-2, 1e-1, 1}): each value is trained on
--           the training set and scored on the validation set; the best top-1
--           wins (ties: the larger l2).
-- probe.W {C,D}, probe.b {C}, probe.l2, probe.sweep ({{l2, valid_top1}}),
-- probe:scores(x), probe:predict(x), probe:evaluate(x, y).
function M.linear_probe(x, y, opts)
  opts = opts or {}
  local N = x:size(1)
  if N == 0 then error("linear_probe: no training samples", 2) end
  if #y ~= N then error(("linear_probe: %d labels for %d rows"):format(#y, N), 2) end
  local C = opts.num_classes or 0
  if C == 0 then for _, v in ipairs(y) do C = math.max(C, v) end end
  local mean, std
  if opts.standardize ~= false then
    mean, std = standardize_stats(x)
    x = (x - mean) / std
  end
  local self = setmetatable({ num_classes = C, mean = mean, std = std, sweep = {} }, Probe)
  local grid = opts.l2
  if opts.valid_x then
    if type(grid) ~= "table" then grid = grid and { grid } or { 0, 1e-4, 1e-3, 1e-2, 1e-1, 1 } end
    local best, best_l2 = -1, nil
    for _, l2 in ipairs(grid) do
      self.W, self.b = train_probe(x, y, C, l2, opts)
      local acc = self:evaluate(opts.valid_x, opts.valid_y).top1
      self.sweep[#self.sweep + 1] = { l2 = l2, valid_top1 = acc }
      if acc > best or (acc == best and l2 > best_l2) then best, best_l2 = acc, l2 end
    end
    self.l2, self.valid_top1 = best_l2, best
  else
    self.l2 = type(grid) == "number" and grid or 0
  end
  self.W, self.b, self.train_loss = train_probe(x, y, C, self.l2, opts)
  return self
end

-- Evaluator objects ------------------------------------------------------------

local function prefix_of(name) return (name and name ~= "") and (name .. "_") or "" end

local function evaluator(cls)
  cls.__index = cls
  cls.__call = function(self, model, ...) return self:metrics(model, ...) end
  return cls
end

local function embed(model, items, opts)
  return M.embedder(model):embed(items, opts)
end

--- TripletEvaluator{anchors, positives, negatives, name, batch_size, progress}
-- (sentence-transformers' TripletEvaluator): ev(model) ->
-- { <name>_cosine_accuracy = ... }. Each column: image paths or texts.
local Triplet = evaluator({})
function M.TripletEvaluator(o)
  for _, k in ipairs({ "anchors", "positives", "negatives" }) do
    if type(o[k]) ~= "table" or #o[k] == 0 then error("TripletEvaluator: " .. k .. " must be a non-empty list", 2) end
  end
  if #o.positives ~= #o.anchors or #o.negatives ~= #o.anchors then
    error(("TripletEvaluator: %d anchors, %d positives, %d negatives"):format(#o.anchors, #o.positives, #o.negatives), 2)
  end
  return setmetatable({ anchors = o.anchors, positives = o.positives, negatives = o.negatives, name = o.name,
    batch_size = o.batch_size, progress = o.progress }, Triplet)
end
function Triplet:compute(model)
  local eo = { batch_size = self.batch_size, progress = self.progress }
  local a = embed(model, self.anchors, eo)
  local p = embed(model, self.positives, eo)
  local n = embed(model, self.negatives, eo)
  local acc, hits = M.triplet_accuracy(a, p, n)
  return { accuracy = acc, hits = hits }
end
function Triplet:metrics(model)
  return { [prefix_of(self.name) .. "cosine_accuracy"] = self:compute(model).accuracy }
end

--- RecallEvaluator{images, texts, k = 1, name} (the seed's
-- ImageTextRetrievalEvaluator): ev(model) -> { <name>_Recall@<k> = ... }
-- the images and the texts of an evaluator, embedded by model
local function embed_images_texts(self, model)
  local e = M.embedder(model)
  local eo = { batch_size = self.batch_size, progress = self.progress }
  return e:images(self.images, eo), e:texts(self.texts, eo)
end

local Recall = evaluator({})
function M.RecallEvaluator(o)
  if type(o.images) ~= "table" or #o.images == 0 then error("RecallEvaluator: images must be a non-empty list", 2) end
  if type(o.texts) ~= "table" or #o.texts ~= #o.images then
    error("RecallEvaluator: texts must be a list as long as images", 2)
  end
  return setmetatable({ images = o.images, texts = o.texts, k = o.k or 1, name = o.name, batch_size = o.batch_size,
    progress = o.progress }, Recall)
end
function Recall:metrics(model)
  local s = core.cosine_similarity(embed_images_texts(self, model))
  return { [prefix_of(self.name) .. "Recall@" .. self.k] = (M.recall_at_k(s, self.k)) }
end

--- RetrievalEvaluator{images, texts, text_image, ks = {1,5,10}, name}:
-- ev(model) -> retrieval_metrics with the name prefix.
local Retrieval = evaluator({})
function M.RetrievalEvaluator(o)
  if type(o.images) ~= "table" or #o.images == 0 then error("RetrievalEvaluator: images must be a non-empty list", 2) end
  if type(o.texts) ~= "table" or #o.texts == 0 then error("RetrievalEvaluator: texts must be a non-empty list", 2) end
  return setmetatable({ images = o.images, texts = o.texts, text_image = o.text_image, ks = o.ks, name = o.name,
    batch_size = o.batch_size, progress = o.progress }, Retrieval)
end
function Retrieval:metrics(model)
  local im, tx = embed_images_texts(self, model)
  local m = M.retrieval_metrics(im, tx, { ks = self.ks, text_image = self.text_image })
  local out, p = {}, prefix_of(self.name)
  for k, v in pairs(m) do out[p .. k] = v end
  return out
end

--- ZeroShotEvaluator{images, labels, classnames, templates, name, ks}:
-- ev(model) -> { <name>_top1, <name>_top5, <name>_mean_per_class };
-- ev:compute(model) -> the full classification_metrics (per class,
-- confusion matrix, predictions).
local ZeroShot = evaluator({})
function M.ZeroShotEvaluator(o)
  if type(o.images) ~= "table" or #o.images == 0 then error("ZeroShotEvaluator: images must be a non-empty list", 2) end
  if type(o.labels) ~= "table" or #o.labels ~= #o.images then
    error("ZeroShotEvaluator: labels must be a list as long as images", 2)
  end
  if type(o.classnames) ~= "table" or #o.classnames == 0 then
    error("ZeroShotEvaluator: classnames must be a non-empty list", 2)
  end
  return setmetatable({ images = o.images, labels = o.labels, classnames = o.classnames,
    templates = templates_mod.get(o.templates or "openai_imagenet"), name = o.name, ks = o.ks,
    batch_size = o.batch_size, progress = o.progress }, ZeroShot)
end
function ZeroShot:compute(model)
  local eo = { batch_size = self.batch_size, progress = self.progress }
  local w = M.zero_shot_weights(model, self.classnames, self.templates, eo)
  local img = M.embedder(model):images(self.images, eo)
  local s = core.cosine_similarity(img, w)
  return M.classification_metrics(s, self.labels, { ks = self.ks, classnames = self.classnames })
end
local function class_summary(r, name, ks)
  local out, p = {}, prefix_of(name)
  for _, k in ipairs(ks or { 1, 5 }) do out[p .. "top" .. k] = r["top" .. k] end
  out[p .. "mean_per_class"] = r.mean_per_class
  return out
end
function ZeroShot:metrics(model) return class_summary(self:compute(model), self.name, self.ks) end

--- FewShotEvaluator{support_images, support_labels, query_images,
-- query_labels, num_classes, classnames, name, ks}: class prototypes (the mean
-- normalized embedding of each class's support images) and nearest-prototype
-- classification of the queries. ev(model) -> { <name>_top1, ... }.
local FewShot = evaluator({})
function M.FewShotEvaluator(o)
  for _, k in ipairs({ "support_images", "support_labels", "query_images", "query_labels" }) do
    if type(o[k]) ~= "table" or #o[k] == 0 then error("FewShotEvaluator: " .. k .. " must be a non-empty list", 2) end
  end
  local C = o.num_classes or (o.classnames and #o.classnames)
  if not C then
    C = 0
    for _, y in ipairs(o.support_labels) do C = math.max(C, y) end
    for _, y in ipairs(o.query_labels) do C = math.max(C, y) end
  end
  return setmetatable({ support_images = o.support_images, support_labels = o.support_labels,
    query_images = o.query_images, query_labels = o.query_labels, num_classes = C, classnames = o.classnames,
    name = o.name, ks = o.ks, batch_size = o.batch_size, progress = o.progress }, FewShot)
end
function FewShot:compute(model)
  local e = M.embedder(model)
  local eo = { batch_size = self.batch_size, progress = self.progress }
  local protos, counts = M.prototypes(e:images(self.support_images, eo), self.support_labels, self.num_classes)
  local s = M.nearest_prototype_scores(e:images(self.query_images, eo), protos, counts)
  local r = M.classification_metrics(s, self.query_labels, { ks = self.ks, classnames = self.classnames })
  r.support_counts = counts
  return r
end
function FewShot:metrics(model) return class_summary(self:compute(model), self.name, self.ks) end

-- Information retrieval ------------------------------------------------------

local IR_KS = {
  accuracy_at_k = { 1, 3, 5, 10 }, precision_recall_at_k = { 1, 3, 5, 10 }, mrr_at_k = { 10 },
  ndcg_at_k = { 10 }, map_at_k = { 100 },
}

local function ks_option(opts, key, who)
  local v = opts[key]
  if v == nil then return IR_KS[key] end
  if type(v) == "number" then v = { v } end
  if type(v) ~= "table" or #v == 0 then error(("%s: %s must be a non-empty list of k"):format(who, key), 3) end
  for _, k in ipairs(v) do
    if math.type(k) ~= "integer" or k < 1 then
      error(("%s: %s holds %s; each k must be an integer >= 1"):format(who, key, tostring(k)), 3)
    end
  end
  return v
end

local LOG2 = {}
local function disc(r) -- 1 / log2(r + 1)
  local d = LOG2[r]
  if not d then
    d = 1 / math.log(r + 1, 2)
    LOG2[r] = d
  end
  return d
end

--- information_retrieval_metrics(scores {Q,C}, relevant [, opts]) -> metrics
-- sentence-transformers' InformationRetrievalEvaluator on a score matrix.
-- relevant[i]: the relevant columns (1-based) of row i, a list; rows with
-- none are skipped (as sentence-transformers skips such queries). Each row is
-- ranked by descending score, equal scores in column order, NaN last. opts:
-- accuracy_at_k ({1,3,5,10}), precision_recall_at_k ({1,3,5,10}),
-- mrr_at_k ({10}), ndcg_at_k ({10}), map_at_k ({100}), per_query (also return
-- per_query[key] = the list of per-row values). Keys: accuracy@k,
-- precision@k, recall@k, mrr@k, ndcg@k, map@k, means over the rows kept;
-- queries (the number kept). Definitions, with hits(k) the relevant items in
-- the top k and R the number of relevant items:
--   accuracy@k = [hits(k) > 0]; precision@k = hits(k) / k (k even past the
--   corpus size); recall@k = hits(k) / R; mrr@k = 1 / rank of the first
--   relevant item if <= k, else 0; ndcg@k = DCG@k / IDCG@k with binary gains,
--   DCG@k = sum over relevant items at rank r <= k of 1 / log2(r + 1), IDCG@k
--   the same for min(R, k) relevant items at ranks 1..; map@k = sum over
--   relevant items at rank r <= k of hits(r) / r, divided by min(k, R).
function M.information_retrieval_metrics(scores, relevant, opts)
  opts = opts or {}
  local who = "information_retrieval_metrics"
  if not is_tensor(scores) or scores:dim() ~= 2 then error(who .. ": expected scores {Q, C}", 2) end
  local Q, C = scores:size(1), scores:size(2)
  if type(relevant) ~= "table" or #relevant ~= Q then
    error(("%s: relevant must be a list of %d lists (one per row)"):format(who, Q), 2)
  end
  if C == 0 then error(who .. ": empty corpus", 2) end
  local ks = {}
  for key in pairs(IR_KS) do ks[key] = ks_option(opts, key, who) end
  local maxk = 0
  for _, list in pairs(ks) do for _, k in ipairs(list) do maxk = math.max(maxk, k) end end
  local kk = math.min(maxk, C)
  local sums, per, kept = {}, {}, 0
  local function add(key, v)
    sums[key] = (sums[key] or 0) + v
    if opts.per_query then
      per[key] = per[key] or {}
      per[key][#per[key] + 1] = v
    end
  end
  local chunk = math.max(1, math.floor(4194304 / C))
  for a = 1, Q, chunk do
    local b = math.min(Q, a + chunk - 1)
    local _, top = scores:rows(a, b):topk(kk)
    for i = a, b do
      local rel, R = {}, 0
      for _, c in ipairs(relevant[i]) do
        if math.type(c) ~= "integer" or c < 1 or c > C then
          error(("%s: row %d lists relevant column %s, outside 1..%d"):format(who, i, tostring(c), C), 2)
        end
        if not rel[c] then rel[c], R = true, R + 1 end
      end
      if R > 0 then
        kept = kept + 1
        local row = top[i - a + 1]
        local hits, first, dcg, ap = {}, nil, {}, {}
        local h, d, s = 0, 0, 0
        for r = 1, kk do
          if rel[row[r]] then
            h = h + 1
            d = d + disc(r)
            s = s + h / r
            first = first or r
          end
          hits[r], dcg[r], ap[r] = h, d, s
        end
        local function at(t, k) return t[math.min(k, kk)] end
        for _, k in ipairs(ks.accuracy_at_k) do add("accuracy@" .. k, at(hits, k) > 0 and 1 or 0) end
        for _, k in ipairs(ks.precision_recall_at_k) do
          add("precision@" .. k, at(hits, k) / k)
          add("recall@" .. k, at(hits, k) / R)
        end
        for _, k in ipairs(ks.mrr_at_k) do add("mrr@" .. k, (first and first <= k) and 1 / first or 0) end
        for _, k in ipairs(ks.ndcg_at_k) do
          local ideal = 0
          for r = 1, math.min(R, k) do ideal = ideal + disc(r) end
          add("ndcg@" .. k, at(dcg, k) / ideal)
        end
        for _, k in ipairs(ks.map_at_k) do add("map@" .. k, at(ap, k) / math.min(k, R)) end
      end
    end
  end
  if kept == 0 then error(who .. ": no row has a relevant item", 2) end
  local out = { queries = kept }
  for key, v in pairs(sums) do out[key] = v / kept end
  if opts.per_query then out.per_query = per end
  return out
end

local function ir_keys(ks)
  local out = {}
  for _, k in ipairs(ks.accuracy_at_k) do out[#out + 1] = "accuracy@" .. k end
  for _, k in ipairs(ks.precision_recall_at_k) do
    out[#out + 1] = "precision@" .. k
    out[#out + 1] = "recall@" .. k
  end
  for _, k in ipairs(ks.mrr_at_k) do out[#out + 1] = "mrr@" .. k end
  for _, k in ipairs(ks.ndcg_at_k) do out[#out + 1] = "ndcg@" .. k end
  for _, k in ipairs(ks.map_at_k) do out[#out + 1] = "map@" .. k end
  return out
end

local function is_embeddings(x) return is_tensor(x) and x:dim() == 2 end

-- the ids of relevant[qid]: a list of ids, or a set {[id] = true}
local function id_list(r)
  local out = {}
  for k, v in pairs(r) do
    if v == true then out[#out + 1] = k elseif math.type(k) == "integer" then out[#out + 1] = v end
  end
  return out
end

--- InformationRetrievalEvaluator{queries, corpus, relevant, query_ids,
--   corpus_ids, name, score_function = "cosine", query_modality,
--   corpus_modality, accuracy_at_k = {1,3,5,10},
--   precision_recall_at_k = {1,3,5,10}, mrr_at_k = {10}, ndcg_at_k = {10},
--   map_at_k = {100}, batch_size, progress}
-- sentence-transformers' InformationRetrievalEvaluator. queries, corpus:
-- lists of texts or images (image→text, text→image, text→text,
-- image→image: the modality of each list as eval.modality, or forced with
-- query_modality / corpus_modality = "image" | "text"), or {n, D} Tensors of
-- precomputed embeddings. relevant[qid] = a list (or set) of corpus ids;
-- the ids are query_ids[i] / corpus_ids[j] when given, else the 1-based
-- positions. Queries without relevant items are skipped (sentence-
-- transformers does the same); an unknown corpus id is an error.
-- score_function: "cosine" or "dot".
-- ev(model) -> { <name>_cosine_accuracy@1 = ..., <name>_cosine_precision@1,
-- <name>_cosine_recall@1, ..., <name>_cosine_mrr@10, <name>_cosine_ndcg@10,
-- <name>_cosine_map@100 } (no "<name>_" without a name);
-- ev:evaluate_embeddings(query_emb, corpus_emb) -> the same from embeddings;
-- ev:compute(model) -> information_retrieval_metrics' table (unprefixed,
-- per_query included); ev.primary_metric = "<name>_cosine_ndcg@<max k>".
local IR = evaluator({})
function M.InformationRetrievalEvaluator(o)
  local who = "InformationRetrievalEvaluator"
  if type(o) ~= "table" then error(who .. ": expected a table of options", 2) end
  for _, k in ipairs({ "queries", "corpus" }) do
    local v = o[k]
    if not is_tensor(v) and (type(v) ~= "table" or #v == 0) then
      error(("%s: %s must be a non-empty list or an embeddings Tensor {n, D}"):format(who, k), 2)
    end
  end
  if type(o.relevant) ~= "table" then error(who .. ": relevant must be a table {[query id] = {corpus id, ...}}", 2) end
  local sf = o.score_function or "cosine"
  if sf ~= "cosine" and sf ~= "dot" then error(who .. ": score_function must be \"cosine\" or \"dot\"", 2) end
  for _, k in ipairs({ "query_modality", "corpus_modality" }) do
    if o[k] ~= nil and o[k] ~= "image" and o[k] ~= "text" then error(who .. ": " .. k .. " must be \"image\" or \"text\"", 2) end
  end
  local nq = is_tensor(o.queries) and o.queries:size(1) or #o.queries
  local nc = is_tensor(o.corpus) and o.corpus:size(1) or #o.corpus
  local col = {}
  if o.corpus_ids then
    if #o.corpus_ids ~= nc then error(("%s: %d corpus_ids for %d corpus items"):format(who, #o.corpus_ids, nc), 2) end
    for j, id in ipairs(o.corpus_ids) do
      if col[id] then error(("%s: corpus id %s appears twice"):format(who, tostring(id)), 2) end
      col[id] = j
    end
  else
    for j = 1, nc do col[j] = j end
  end
  if o.query_ids and #o.query_ids ~= nq then
    error(("%s: %d query_ids for %d queries"):format(who, #o.query_ids, nq), 2)
  end
  local rel, rows = {}, {}
  for i = 1, nq do
    local qid = o.query_ids and o.query_ids[i] or i
    local r = o.relevant[qid]
    local cols = {}
    if r ~= nil then
      if type(r) ~= "table" then r = { r } end
      for _, id in ipairs(id_list(r)) do
        local j = col[id]
        if not j then error(("%s: query %s lists corpus id %s, not in the corpus"):format(who, tostring(qid), tostring(id)), 2) end
        cols[#cols + 1] = j
      end
    end
    if #cols > 0 then rows[#rows + 1], rel[#rel + 1] = i, cols end
  end
  if #rows == 0 then error(who .. ": no query has a relevant corpus item", 2) end
  local self = setmetatable({ queries = o.queries, corpus = o.corpus, rows = rows, relevant = rel,
    score_function = sf, name = o.name, query_modality = o.query_modality, corpus_modality = o.corpus_modality,
    batch_size = o.batch_size, progress = o.progress, ks = {} }, IR)
  for key in pairs(IR_KS) do self.ks[key] = ks_option(o, key, who) end
  local nd = 0
  for _, k in ipairs(self.ks.ndcg_at_k) do nd = math.max(nd, k) end
  self.primary_metric = prefix_of(o.name) .. sf .. "_ndcg@" .. nd
  return self
end

local function embed_side(model, items, modality, eo)
  if is_embeddings(items) then return items end
  if model == nil then error("InformationRetrievalEvaluator: a model is needed to embed the inputs", 4) end
  local e = M.embedder(model)
  modality = modality or M.modality(items)
  if modality == "image" then return e:images(items, eo) end
  return e:texts(items, eo)
end

--- The query and corpus embeddings (the given Tensors, or the model's).
function IR:embed(model)
  local eo = { batch_size = self.batch_size, progress = self.progress }
  return embed_side(model, self.queries, self.query_modality, eo), embed_side(model, self.corpus, self.corpus_modality, eo)
end

function IR:compute_from_embeddings(q, c)
  if not is_embeddings(q) or not is_embeddings(c) then
    error("InformationRetrievalEvaluator: expected query and corpus embeddings {n, D}", 2)
  end
  local nq = is_tensor(self.queries) and self.queries:size(1) or #self.queries
  local nc = is_tensor(self.corpus) and self.corpus:size(1) or #self.corpus
  if q:size(1) ~= nq or c:size(1) ~= nc then
    error(("InformationRetrievalEvaluator: %d query and %d corpus embeddings for %d queries and %d corpus items")
      :format(q:size(1), c:size(1), nq, nc), 2)
  end
  if #self.rows < nq then
    local keep = {}
    for i, r in ipairs(self.rows) do keep[i] = q:rows(r) end
    q = #keep == 1 and keep[1] or core.cat(keep)
  end
  local s
  if self.score_function == "cosine" then s = core.cosine_similarity(q, c) else s = core.matmul(q, c, { transpose_b = true }) end
  local opts = { per_query = true }
  for k, v in pairs(self.ks) do opts[k] = v end
  return M.information_retrieval_metrics(s, self.relevant, opts)
end

function IR:compute(model) return self:compute_from_embeddings(self:embed(model)) end

local function ir_flat(self, r)
  local out, p = {}, prefix_of(self.name) .. self.score_function .. "_"
  for _, key in ipairs(ir_keys(self.ks)) do out[p .. key] = r[key] end
  return out
end

function IR:evaluate_embeddings(q, c) return ir_flat(self, self:compute_from_embeddings(q, c)) end
function IR:metrics(model) return ir_flat(self, self:compute(model)) end

--- ImageTextIREvaluator{images, texts, text_image, name, ...}: the two
-- directions of an image-caption set as InformationRetrievalEvaluators:
-- image→text (each image's relevant items are its texts, several allowed)
-- and text→image (one relevant image per text). text_image[t] = the image of
-- text t (default: text i belongs to image i). images / texts: lists or
-- embedding Tensors. Other options (k lists, score_function, batch_size,
-- progress) go to both. ev(model) -> { <name>_image_to_text_cosine_ndcg@10,
-- ..., <name>_text_to_image_cosine_ndcg@10, ... };
-- ev:evaluate_embeddings(image_emb, text_emb) -> the same.
local IRPair = evaluator({})
function M.ImageTextIREvaluator(o)
  local who = "ImageTextIREvaluator"
  local ni = is_tensor(o.images) and o.images:size(1) or (type(o.images) == "table" and #o.images or 0)
  local nt = is_tensor(o.texts) and o.texts:size(1) or (type(o.texts) == "table" and #o.texts or 0)
  if ni == 0 or nt == 0 then error(who .. ": images and texts must be non-empty lists or embedding Tensors", 2) end
  local t2i = o.text_image
  if not t2i then
    if ni ~= nt then error(("%s: %d images and %d texts; pass text_image"):format(who, ni, nt), 2) end
    t2i = identity(nt)
  end
  if #t2i ~= nt then error(("%s: text_image has %d entries for %d texts"):format(who, #t2i, nt), 2) end
  local i2t, rel_t = {}, {}
  for t, i in ipairs(t2i) do
    if math.type(i) ~= "integer" or i < 1 or i > ni then
      error(("%s: text %d maps to image %s, outside 1..%d"):format(who, t, tostring(i), ni), 2)
    end
    i2t[i] = i2t[i] or {}
    table.insert(i2t[i], t)
    rel_t[t] = { i }
  end
  local p = prefix_of(o.name)
  local function make(queries, corpus, relevant, qm, cm, dir)
    local args = {}
    for k, v in pairs(o) do args[k] = v end
    args.images, args.texts, args.text_image = nil, nil, nil
    args.queries, args.corpus, args.relevant = queries, corpus, relevant
    args.query_modality, args.corpus_modality, args.name = qm, cm, p .. dir
    return M.InformationRetrievalEvaluator(args)
  end
  return setmetatable({
    image_to_text = make(o.images, o.texts, i2t, "image", "text", "image_to_text"),
    text_to_image = make(o.texts, o.images, rel_t, "text", "image", "text_to_image"),
  }, IRPair)
end
function IRPair:evaluate_embeddings(img, txt)
  local out = self.image_to_text:evaluate_embeddings(img, txt)
  for k, v in pairs(self.text_to_image:evaluate_embeddings(txt, img)) do out[k] = v end
  return out
end
function IRPair:metrics(model)
  local img = embed_side(model, self.image_to_text.queries, "image",
    { batch_size = self.image_to_text.batch_size, progress = self.image_to_text.progress })
  local txt = embed_side(model, self.image_to_text.corpus, "text",
    { batch_size = self.image_to_text.batch_size, progress = self.image_to_text.progress })
  return self:evaluate_embeddings(img, txt)
end

--- SequentialEvaluator{ev1, ev2, ...}: ev(model) -> the union of their metrics.
local Seq = evaluator({})
function M.SequentialEvaluator(list)
  return setmetatable({ evaluators = list }, Seq)
end
function Seq:metrics(model)
  local out = {}
  for _, ev in ipairs(self.evaluators) do
    for k, v in pairs(ev(model)) do out[k] = v end
  end
  return out
end

return M
