--- clip.Trainer: the Hugging Face / sentence-transformers training loop.
--
--   local trainer = clip.Trainer{
--     model = model, loss = "mnrl", train = train_ds,
--     eval = { eval.TripletEvaluator{...}, eval.RecallEvaluator{...} },
--     eval_datasets = { valid = valid_ds },            -- "valid_loss"
--     epochs = 2, batch_size = 16, lr = 1e-4,
--     out = "runs/x", metric_for_best = "valid_recall@1",
--     early_stopping = { patience = 3 },
--   }
--   trainer:fit()
--
-- Defaults follow transformers' Trainer where nothing else is said: AdamW
-- (lr 5e-5, betas 0.9/0.999, eps 1e-8, weight decay 0), linear decay to 0 with
-- no warmup, max_grad_norm 1.0, 3 epochs, batch 8, seed 42. docs/api.md
-- ("clip.Trainer") lists every option; docs/guide.md ("Training") the files
-- written to `out`.
--
-- Each optimizer step: grad_accumulation micro-batches (each backward scaled
-- by 1 / the number of micro-batches of the step), a NaN/Inf check of the
-- loss and the gradients (clip.guard: parameters and optimizer state stay as
-- before the step), global gradient-norm clipping, opt:step(), schedule
-- step, zero_grad. The batches of epoch e are the training set shuffled by
-- clip.data's splitmix64 generator seeded with seed + e - 1; a checkpoint
-- records the epoch and the micro-batches consumed in it, so a resumed run
-- sees exactly the batches the straight run would have.
--
-- distributed = true (the module built with `make MPI=1`, run under mpirun;
-- docs/distributed.md): batch_size is per rank. Every rank draws the same
-- global batches of batch_size * ranks rows (same shuffle) and takes its
-- contiguous share (clip.dist.shard); the trainable weights are broadcast from
-- rank 0 before the first step; the loss all-gathers the embeddings and
-- backpropagates the local rows (clip.loss, "Data parallel"); the gradients are
-- SUM-all-reduced in buckets before the NaN check, clipping and the optimizer
-- step, so every rank takes the same step as one process at the global batch.
-- Evaluations, checkpoints, best/, logs and the chart happen on rank 0; the
-- others wait (a stop decided there is broadcast after every step).
local core = require "clip.core"
local optim = require "clip.optim"
local guard = require "clip.guard"
local progress = require "clip.progress"
local checkpoint = require "clip.checkpoint"

local M = {}
local Trainer = {}
Trainer.__index = Trainer
Trainer.__name = "clip.Trainer"
M.Trainer = Trainer

-- Losses by name -------------------------------------------------------------

--- Short names of clip.loss constructors (lower case). A full constructor
-- name (any case) works too; add entries here for new losses.
M.loss_aliases = {
  mnrl = "MultipleNegativesRankingLoss",
  multiple_negatives_ranking = "MultipleNegativesRankingLoss",
  mnsrl = "MultipleNegativesSymmetricRankingLoss",
  symmetric_mnrl = "MultipleNegativesSymmetricRankingLoss",
  cmnrl = "CachedMultipleNegativesRankingLoss",
  cached_mnrl = "CachedMultipleNegativesRankingLoss",
  gradcache = "CachedMultipleNegativesRankingLoss",
  clip = "CLIPLoss",
  infonce = "CLIPLoss",
  triplet = "TripletLoss",
  siglip = "SigLIPLoss",
}

local function loss_constructors()
  local lossmod = require "clip.loss"
  local out = {}
  for k, v in pairs(lossmod) do
    if type(v) == "function" and k:match("^%u") then out[k] = v end
  end
  return out
end

--- The names loss = "..." accepts: clip.loss's constructors and the aliases
-- whose constructor exists, sorted.
function M.loss_names()
  local ctors, names = loss_constructors(), {}
  for k in pairs(ctors) do names[#names + 1] = k end
  for a, target in pairs(M.loss_aliases) do
    if ctors[target] then names[#names + 1] = a end
  end
  table.sort(names)
  return names
end

--- resolve_loss(name) -> constructor name, constructor; errors list the known names.
function M.resolve_loss(name)
  local ctors = loss_constructors()
  local want = M.loss_aliases[name:lower()] or name
  for k, f in pairs(ctors) do
    if k:lower() == want:lower() then return k, f end
  end
  local why = want ~= name and (" (it names %s, which clip.loss does not have)"):format(want) or ""
  error(("clip.Trainer: unknown loss '%s'%s; known: %s"):format(name, why, table.concat(M.loss_names(), ", ")), 0)
end

-- Optimizers and schedules ------------------------------------------------------

-- The default optimizer, in one place: transformers' Trainer's AdamW, with
-- weight decay 0 for biases and LayerNorm weights (get_decay_parameter_names;
-- clip.optim.param_groups), over the trainable parameters only.
local function default_optimizer(sources, o)
  return optim.AdamW(optim.param_groups(sources, { weight_decay = o.weight_decay }),
    { lr = o.lr, betas = o.betas, eps = o.eps })
end

local OPTIMIZERS = {
  adamw = default_optimizer,
  sgd = function(sources, o)
    return optim.SGD(sources, { lr = o.lr, momentum = o.momentum, weight_decay = o.weight_decay })
  end,
}

local SCHEDULES = {
  linear = optim.LinearSchedule,
  cosine = optim.CosineSchedule,
  constant = function(opt, o) return optim.ConstantSchedule(opt, { warmup = 0, total = o.total }) end,
  constant_with_warmup = optim.ConstantSchedule,
}

-- Helpers --------------------------------------------------------------------------

local function join(dir, name) return dir:gsub("/+$", "") .. "/" .. name end

local function is_callable(x)
  if type(x) == "function" then return true end
  local mt = type(x) == "table" and getmetatable(x)
  return mt and mt.__call ~= nil or false
end

local function sorted_keys(t)
  local k = {}
  for key in pairs(t) do k[#k + 1] = key end
  table.sort(k, function(a, b) return tostring(a) < tostring(b) end)
  return k
end

local function fmt_number(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v ~= v then return "nan" end
  local s = ("%.15g"):format(v)
  if tonumber(s) ~= v then s = ("%.17g"):format(v) end
  return s
end

local function is_loss_key(k) return k == "loss" or k:match("_loss$") ~= nil end

local function norm_metric(name) return (name:lower():gsub("^eval_", "")) end

-- metric names an evaluator will produce, when they can be known without
-- running it (the clip.eval evaluators, or any with a metric_names method)
local function predict_names(ev, out)
  if type(ev) ~= "table" then return false end
  if type(ev.metric_names) == "function" then
    for _, n in ipairs(ev:metric_names()) do out[#out + 1] = n end
    return true
  end
  local p = (ev.name and ev.name ~= "") and (ev.name .. "_") or ""
  if ev.evaluators then
    for _, e in ipairs(ev.evaluators) do
      if not predict_names(e, out) then return false end
    end
    return true
  elseif ev.anchors and ev.positives and ev.negatives then
    out[#out + 1] = p .. "cosine_accuracy"
    return true
  elseif ev.images and ev.texts and ev.k then
    out[#out + 1] = p .. "Recall@" .. ev.k
    return true
  elseif ev.images and ev.texts then
    for _, d in ipairs({ "image_to_text_", "text_to_image_" }) do
      for _, k in ipairs({ "mean_rank", "median_rank", "mrr" }) do out[#out + 1] = p .. d .. k end
      for _, k in ipairs(ev.ks or { 1, 5, 10 }) do out[#out + 1] = p .. d .. "R@" .. k end
    end
    return true
  elseif (ev.images and ev.classnames) or ev.support_images then
    for _, k in ipairs(ev.ks or { 1, 5 }) do out[#out + 1] = p .. "top" .. k end
    out[#out + 1] = p .. "mean_per_class"
    return true
  end
  return false
end

local OPTIONS = {
  "model", "loss", "loss_opts", "train", "columns", "eval", "eval_datasets", "optimizer", "schedule",
  "lr", "weight_decay", "betas", "eps", "momentum", "warmup_steps", "warmup_ratio", "epochs", "max_steps",
  "batch_size", "eval_batch_size", "grad_accumulation", "max_grad_norm", "shuffle", "drop_last", "seed",
  "eval_every", "eval_on_start", "save_every", "save_total_limit", "out", "overwrite", "resume",
  "metric_for_best", "greater_is_better", "early_stopping", "load_best_at_end", "format", "progress",
  "chart", "chart_title", "on_step", "on_eval", "on_save", "callbacks", "distributed",
}
local KNOWN = {}
for _, k in ipairs(OPTIONS) do KNOWN[k] = true end

local function fail(msg) error("clip.Trainer: " .. msg, 0) end

local function pos_int(o, k, default)
  local v = o[k]
  if v == nil then return default end
  if type(v) ~= "number" or v ~= math.floor(v) or v < 1 then
    fail(("%s must be a positive integer, got %s"):format(k, tostring(v)))
  end
  return math.tointeger(v)
end

local function every(o, k, default)
  local v = o[k]
  if v == nil then return default end
  if v == false or v == "no" then return false end
  if v == "epoch" then return "epoch" end
  if type(v) == "number" and v >= 1 and v == math.floor(v) then return math.tointeger(v) end
  fail(("%s must be \"epoch\", a positive number of steps or false, got %s"):format(k, tostring(v)))
end

-- Construction ------------------------------------------------------------------------

-- Data parallel: the options of distributed = {...}
local DIST_OPTIONS = { bucket_bytes = true, timeout = true, eval_timeout = true, local_loss = true,
  check_weights = true, check_data = true }
local DIST_SHAPE = "distributed must be true, false or a table {bucket_bytes = n, timeout = s, eval_timeout = s, "
  .. "local_loss = bool, check_weights = bool, check_data = bool}"

local function dist_options(dopt)
  if dopt == true then return {} end
  if type(dopt) ~= "table" then fail(DIST_SHAPE) end
  for k in pairs(dopt) do
    if not DIST_OPTIONS[k] then fail(("distributed: unknown option '%s' (%s)"):format(tostring(k), DIST_SHAPE)) end
  end
  for _, k in ipairs({ "timeout", "eval_timeout" }) do
    local v = dopt[k]
    if v ~= nil and v ~= false and (type(v) ~= "number" or v < 0 or v ~= v) then
      fail(("distributed.%s must be seconds >= 0 (0 or false: no limit), got %s"):format(k, tostring(v)))
    end
  end
  local bb = dopt.bucket_bytes
  if bb ~= nil and (math.type(bb) ~= "integer" or bb < 4) then
    fail(("distributed.bucket_bytes must be an integer >= 4, got %s"):format(tostring(bb)))
  end
  return dopt
end

local new_trainer

--- clip.Trainer{...} -> trainer (see docs/api.md for the options).
-- distributed: MPI starts first; everything else is checked on every rank,
-- and an error on any rank (or ranks that disagree on the model, the data or
-- the options) raises the same error on every rank (Trainer:_agree).
function M.new(o)
  if type(o) ~= "table" then fail("expected a table of options") end
  local dopt = o.distributed
  if dopt == nil or dopt == false then return new_trainer(o) end
  dopt = dist_options(dopt)
  local dist = require "clip.dist"
  if not dist.available() then
    fail("distributed = true: this build has no MPI (rebuild with `make MPI=1`; docs/distributed.md)")
  end
  local timeout = dopt.timeout
  if timeout == false then timeout = 0 end
  dist.init({ timeout = timeout })
  if dist.size() == 1 then return new_trainer(o, dist, dopt) end
  local ok, res, fp = xpcall(function()
    local t = new_trainer(o, dist, dopt)
    return t, t:_fingerprint()
  end, function(e) return e end)
  M._agree(dist, "setting up the trainer", ok, ok and fp or res)
  return res
end

function new_trainer(o, dist, dopt)
  for k in pairs(o) do
    if not KNOWN[k] then fail(("unknown option '%s'"):format(tostring(k))) end
  end
  local model = o.model
  if type(model) ~= "table" or not model.core then fail("model must be a clip model (clip.load)") end
  local self = setmetatable({ model = model, o = o, records = {}, _callbacks = {} }, Trainer)

  -- loss
  local loss = o.loss == nil and "MultipleNegativesRankingLoss" or o.loss
  if type(loss) == "string" then
    local name, ctor = M.resolve_loss(loss)
    self.loss_name = name
    loss = ctor(model, o.loss_opts or {})
  elseif type(loss) ~= "table" or type(loss.backward) ~= "function" or type(loss.forward) ~= "function" then
    fail("loss must be a clip.loss object or a loss name (" .. table.concat(M.loss_names(), ", ") .. ")")
  end
  self.loss = loss

  -- data parallel (MPI; M.new started it)
  self.rank, self.world = 0, 1
  if dist then
    if type(loss.distributed) ~= "function" then fail("distributed = true needs a clip.loss loss") end
    self.rank, self.world = dist.rank(), dist.size()
    self.dist = dist
    self.bucket_bytes = dopt.bucket_bytes
    self.local_loss = dopt.local_loss and true or false
    local ok, err = pcall(loss.distributed, loss, self.world > 1 and dist or nil, { local_loss = self.local_loss })
    if not ok then fail(tostring(err)) end
    -- the waits for rank 0's evaluations and files: eval_timeout, else the
    -- larger of the collectives' timeout and 30 minutes (0: no limit)
    local t = dist.get_timeout()
    local et = dopt.eval_timeout
    if et == false then et = 0 end
    self.eval_timeout = et or (t == 0 and 0 or math.max(t, 1800))
    self.check_weights = dopt.check_weights ~= false
    self.check_data = dopt.check_data ~= false
  end

  -- data
  self.train = o.train
  if self.train ~= nil and (type(self.train) ~= "table" or type(self.train.batches) ~= "function") then
    fail("train must be a clip.data Dataset")
  end
  if self.train and self.train:size() == 0 then fail("the training set is empty") end
  self.columns = o.columns
  if self.train and not self.columns then
    if self.train:has_column("anchor") then
      self.columns = {}
      for _, c in ipairs({ "anchor", "positive", "negative" }) do
        if self.train:has_column(c) then self.columns[c] = c end
      end
    else
      self.columns = {}
      for i, c in ipairs(self.train.columns) do self.columns[i] = c end
    end
  end
  if self.train then
    for _, c in pairs(self.columns) do
      if not self.train:has_column(c) then
        fail(("the training set has no column '%s' (columns: %s)"):format(c, table.concat(self.train.columns, ", ")))
      end
    end
  end
  self.eval_datasets = o.eval_datasets or {}
  for name, ds in pairs(self.eval_datasets) do
    if type(name) ~= "string" or type(ds) ~= "table" or type(ds.batches) ~= "function" then
      fail("eval_datasets must map names to clip.data Datasets ({valid = ds})")
    end
  end

  -- evaluators
  local ev = o.eval
  if ev == nil then ev = {}
  elseif is_callable(ev) then ev = { ev } end
  if type(ev) ~= "table" then fail("eval must be an evaluator or a list of evaluators") end
  for i, e in ipairs(ev) do
    if not is_callable(e) then fail(("eval[%d] is not an evaluator (a callable: ev(model) -> metrics)"):format(i)) end
  end
  self.evaluators = ev

  -- numbers
  self.epochs = pos_int(o, "epochs", 3)
  self.max_steps = pos_int(o, "max_steps", nil)
  self.batch_size = pos_int(o, "batch_size", 8)
  self.global_batch = self.batch_size * self.world
  self.eval_batch_size = pos_int(o, "eval_batch_size", self.batch_size)
  self.accum = pos_int(o, "grad_accumulation", 1)
  self.seed = o.seed == nil and 42 or math.tointeger(o.seed) or fail("seed must be an integer")
  self.max_grad_norm = o.max_grad_norm == nil and 1.0 or o.max_grad_norm
  if self.max_grad_norm ~= false and (type(self.max_grad_norm) ~= "number" or self.max_grad_norm < 0) then
    fail("max_grad_norm must be a non-negative number or false")
  end
  if self.max_grad_norm == 0 then self.max_grad_norm = false end
  self.shuffle = o.shuffle ~= false
  self.drop_last = o.drop_last and true or false
  local has_eval = #self.evaluators > 0 or next(self.eval_datasets) ~= nil
  self.eval_every = every(o, "eval_every", has_eval and "epoch" or false)
  self.save_every = every(o, "save_every", self.eval_every or "epoch")
  self.save_total_limit = pos_int(o, "save_total_limit", nil)
  self.out = o.out and tostring(o.out):gsub("/+$", "") or nil
  self.format = o.format or "hf"
  self.resume = o.resume or false
  if self.resume ~= false and self.resume ~= true and type(self.resume) ~= "string" then
    fail("resume must be true (the latest checkpoint in out) or a checkpoint directory")
  end
  if self.resume == true and not self.out then fail("resume = true needs out (where checkpoints/ is)") end

  -- best model, early stopping
  self.metric_for_best = o.metric_for_best
  if self.metric_for_best ~= nil and type(self.metric_for_best) ~= "string" then fail("metric_for_best must be a string") end
  local es = o.early_stopping
  if es ~= nil and es ~= false then
    if type(es) == "number" then es = { patience = es } end
    if type(es) ~= "table" or math.type(es.patience) ~= "integer" or es.patience < 1 then
      fail("early_stopping must be {patience = n} with n >= 1")
    end
    if not self.metric_for_best then fail("early_stopping needs metric_for_best (the metric to watch)") end
    self.early_stopping = { patience = es.patience, threshold = es.threshold or 0 }
  end
  if self.metric_for_best then
    if not self.eval_every then fail("metric_for_best needs evaluations (eval, eval_datasets and eval_every)") end
    local gib = o.greater_is_better
    if gib == nil then gib = not is_loss_key(norm_metric(self.metric_for_best)) end
    self.greater_is_better = gib and true or false
    -- check now when the names can be known before evaluating
    local names, known = { "train_loss" }, true
    for _, name in ipairs(sorted_keys(self.eval_datasets)) do names[#names + 1] = name .. "_loss" end
    for _, e in ipairs(self.evaluators) do
      if not predict_names(e, names) then known = false end
    end
    self:_metric_key(names, not known)
  end
  self.load_best_at_end = o.load_best_at_end and true or false
  if self.load_best_at_end and not self.metric_for_best then fail("load_best_at_end needs metric_for_best") end

  -- optimizer and schedule
  local sources = model
  if type(loss.parameters) == "function" then sources = { model, loss } end
  local opt = o.optimizer
  local hp = { lr = o.lr or 5e-5, weight_decay = o.weight_decay or 0, betas = o.betas or { 0.9, 0.999 },
    eps = o.eps or 1e-8, momentum = o.momentum or 0 }
  if opt == nil or type(opt) == "string" then
    local make = OPTIMIZERS[(opt or "adamw"):lower()]
    if not make then fail(("unknown optimizer '%s' (AdamW, SGD, or an optimizer object)"):format(opt)) end
    opt = make(sources, hp)
  elseif type(opt) ~= "table" or type(opt.step) ~= "function" or type(opt.state_dict) ~= "function" then
    fail("optimizer must be \"AdamW\", \"SGD\" or a clip.optim optimizer")
  end
  self.optimizer = opt
  local trainable = 0
  for _, p in ipairs(opt:parameters()) do if p.requires_grad then trainable = trainable + 1 end end
  if trainable == 0 then fail("no parameter is trainable (model:train_only / set_trainable)") end
  self.warmup_steps = o.warmup_steps or 0
  self.warmup_ratio = o.warmup_ratio or 0
  self._schedule_opt = o.schedule == nil and "linear" or o.schedule
  local sc = self._schedule_opt
  if type(sc) == "string" then
    if not SCHEDULES[sc] then
      fail(("unknown schedule '%s' (%s, a function(opt, {warmup, total}) or a schedule object)")
        :format(sc, table.concat(sorted_keys(SCHEDULES), ", ")))
    end
  elseif type(sc) ~= "function" and (type(sc) ~= "table" or type(sc.step) ~= "function") then
    fail("schedule must be a name, a function(opt, {warmup, total}) or a clip.optim schedule")
  end
  if type(sc) == "table" then self.schedule = sc end

  -- output
  local pmode = o.progress
  if pmode == nil or pmode == true then pmode = "auto" elseif pmode == false then pmode = "quiet" end
  if self.rank ~= 0 then pmode = "quiet" end
  self.progress_mode = pmode
  self.chart = o.chart
  if self.chart == nil then self.chart = self.out ~= nil end
  if self.rank ~= 0 then self.chart = false end
  self.chart_title = o.chart_title or "training"
  for _, k in ipairs({ "on_step", "on_eval", "on_save" }) do
    if o[k] ~= nil and type(o[k]) ~= "function" then fail(k .. " must be a function") end
  end
  if o.callbacks ~= nil and type(o.callbacks) ~= "table" then fail("callbacks must be a list of tables") end
  self.state = nil
  return self
end

setmetatable(M, { __call = function(_, o) return M.new(o) end })

-- Data parallel: agreeing ranks ----------------------------------------------------------

-- A value as Lua source (%q: exact numbers, NaN and Inf included), for the
-- payloads the ranks exchange; tables with string or number keys.
local function ser(v)
  local t = type(v)
  if t == "table" then
    local parts = {}
    for _, k in ipairs(sorted_keys(v)) do parts[#parts + 1] = "[" .. ser(k) .. "]=" .. ser(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "string" or t == "number" or t == "boolean" then
    return ("%q"):format(v)
  end
  return "nil"
end

local function deser(s, who)
  local f, err = load("return " .. s, "=(" .. who .. ")", "t", {})
  if not f then error(("clip.Trainer: distributed: unreadable message from %s: %s"):format(who, err), 0) end
  return f()
end
M._ser, M._deser = ser, deser

-- "path = value" lines of a nested table (sorted), for comparing configurations
local function flatten(t, prefix, out)
  out = out or {}
  for _, k in ipairs(sorted_keys(t)) do
    local v, key = t[k], prefix and (prefix .. "." .. tostring(k)) or tostring(k)
    if type(v) == "table" then flatten(v, key, out)
    else out[#out + 1] = { key, type(v) == "number" and fmt_number(v) or tostring(v) } end
  end
  return out
end

local function lines_of(t)
  local out = {}
  for _, kv in ipairs(flatten(t)) do out[#out + 1] = kv[1] .. " = " .. kv[2] end
  return table.concat(out, "\n")
end

-- the first difference of two lines_of() strings, as "key is a on rank 0, b on rank r"
local function first_difference(a, b, r)
  local ma, mb, keys = {}, {}, {}
  for line in (a .. "\n"):gmatch("(.-)\n") do
    local k, v = line:match("^(.-) = (.*)$")
    if k then ma[k] = v; keys[#keys + 1] = k end
  end
  for line in (b .. "\n"):gmatch("(.-)\n") do
    local k, v = line:match("^(.-) = (.*)$")
    if k then
      mb[k] = v
      if ma[k] == nil then keys[#keys + 1] = k end
    end
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    if ma[k] ~= mb[k] then
      return ("%s is %s on rank 0, %s on rank %d"):format(k, ma[k] or "absent", mb[k] or "absent", r)
    end
  end
  return "they differ"
end

--- M._agree(dist, phase, ok, x): a collective over every rank after a phase
-- that may fail on some ranks only. x is the rank's error when not ok, else
-- its fingerprint: a list of {label = ..., value = ..., show = ..., lines =
-- ..., hint = ...}. An error on any rank raises on every rank
-- "clip.Trainer: distributed: <phase> failed on rank r of n: <message>";
-- then every fingerprint item must equal rank 0's, else every rank raises
-- "clip.Trainer: distributed: the ranks disagree on <label>: ...".
function M._agree(dist, phase, ok, x)
  local payload = ok and { fp = x or {} } or { err = tostring(x) }
  local all = dist.all_gather_string(ser(payload))
  local failed, first = {}, nil
  for i, str in ipairs(all) do
    local p = deser(str, "rank " .. (i - 1))
    all[i] = p
    if p.err then
      failed[#failed + 1] = i - 1
      first = first or { i - 1, p.err }
    end
  end
  if first then
    local msg = first[2]:gsub("^clip%.Trainer: ", "")
    if #failed == 1 then fail(("distributed: %s failed on rank %d of %d: %s"):format(phase, first[1], #all, msg)) end
    fail(("distributed: %s failed on ranks %s of %d; rank %d: %s"):format(phase, table.concat(failed, ", "), #all,
      first[1], msg))
  end
  local ref = all[1].fp
  for r = 2, #all do
    local fp = all[r].fp
    for i, item in ipairs(ref) do
      local other = fp[i] or {}
      if other.value ~= item.value or other.lines ~= item.lines then
        local what
        if item.lines then
          what = first_difference(item.lines, other.lines or "", r - 1)
        else
          what = ("rank 0 has %s, rank %d has %s"):format(item.show or item.value, r - 1, other.show or other.value or "?")
        end
        fail(("distributed: the ranks disagree on %s: %s%s"):format(item.label, what, item.hint or ""))
      end
    end
  end
  return all
end

-- This rank's fingerprint of what every rank must share: the model (its
-- parameters' names and shapes, configuration, trainable set, frozen
-- weights), the training set (size and rows) and the training options.
function Trainer:_fingerprint()
  local model, mc = self.model, self.model.core
  local info = model:parameter_info()
  local names, trainable, frozen, numel = {}, {}, {}, 0
  for i, it in ipairs(info) do
    names[i] = it.name .. ":" .. table.concat(it.shape, "x")
    numel = numel + it.numel
    if mc:requires_grad(it.name) then trainable[#trainable + 1] = it.name else frozen[#frozen + 1] = it.name end
  end
  local cs = self.dist.checksum
  local fp = {
    { label = "the model's parameters (names and shapes)", value = cs({ table.concat(names, "\n") }),
      show = ("%d tensors (%d values)"):format(#info, numel), hint = " (every rank must load the same model)" },
    { label = "the model's configuration (config.json)", lines = lines_of(model.config or {}),
      hint = " (every rank must load the same model)" },
    { label = "the trainable parameters", value = cs({ table.concat(trainable, "\n") }),
      show = ("%d trainable tensors"):format(#trainable), hint = " (the same train_only / set_trainable on every rank)" },
  }
  if self.check_weights then
    local value, show = "not compared", "not compared (half-precision weights are checked by the configuration only)"
    if not mc:lazy() then
      local ts = {}
      for _, n in ipairs(frozen) do ts[#ts + 1] = mc:param(n) end
      value = cs(ts)
      show = ("checksum %s"):format(value)
    end
    fp[#fp + 1] = { label = "the frozen weights", value = value, show = show,
      hint = " (every rank must load the same model files; distributed = {check_weights = false} skips this)" }
  end
  if self.train then
    fp[#fp + 1] = { label = "the training set's size", value = self.train:size(), show = ("%d rows"):format(self.train:size()),
      hint = " (every rank must load the same training set)" }
    if self.check_data then
      local cols = sorted_keys(self.columns)
      local chunks, rows, buf = {}, self.train.rows, {}
      for i = 1, #rows do
        local r = rows[i]
        for _, c in ipairs(cols) do
          local v = r[self.columns[c]]
          buf[#buf + 1] = type(v) == "table" and table.concat(v, ",") or tostring(v)
        end
        if #buf >= 8192 or i == #rows then chunks[#chunks + 1] = cs({ table.concat(buf, "\0") }); buf = {} end
      end
      local value = cs({ table.concat(chunks) })
      fp[#fp + 1] = { label = "the training set's rows", value = value, show = ("checksum %s"):format(value),
        hint = " (every rank must load the same file, with the same image paths; distributed = {check_data = false} skips this)" }
    end
  else
    fp[#fp + 1] = { label = "the training set", value = "none", show = "none",
      hint = " (every rank must pass train)" }
  end
  local opt = self.optimizer
  fp[#fp + 1] = { label = "the training options", hint = " (every rank must run with the same options)",
    lines = lines_of({ batch_size = self.batch_size, grad_accumulation = self.accum, seed = self.seed,
      shuffle = self.shuffle, drop_last = self.drop_last, epochs = self.epochs, max_steps = self.max_steps or "none",
      loss = self.loss_name or getmetatable(self.loss).__name or "custom", local_loss = self.local_loss,
      optimizer = getmetatable(opt) and getmetatable(opt).__name or "custom", lr = opt.lr,
      max_grad_norm = self.max_grad_norm or "none", eval_every = self.eval_every or "no",
      save_every = self.save_every or "no", resume = self.resume == true and "latest" or self.resume or "no",
      bucket_bytes = self.bucket_bytes or "default", timeout = self.dist.get_timeout(),
      eval_timeout = self.eval_timeout }) }
  return fp
end

-- metric_for_best -> the key among names (case-insensitive, "eval_" prefix
-- optional); errors list the names unless `soft`
function Trainer:_metric_key(names, soft)
  local want = norm_metric(self.metric_for_best)
  for _, n in ipairs(names) do
    if norm_metric(n) == want then return n end
  end
  if soft then return nil end
  table.sort(names)
  fail(("metric_for_best '%s' is not a metric of this trainer; the evaluations produce: %s")
    :format(self.metric_for_best, table.concat(names, ", ")))
end

-- Callbacks --------------------------------------------------------------------------

function Trainer:_fire(name, ...)
  local f = self.o[name]
  if f then f(self, ...) end
  for _, cb in ipairs(self.o.callbacks or {}) do
    if type(cb[name]) == "function" then cb[name](cb, self, ...) end
  end
end

--- Ask fit() to stop after the current step (from a callback).
function Trainer:stop() self._stop = true end

-- Steps and epochs ----------------------------------------------------------------------

function Trainer:_micro_per_epoch() return self.train:num_batches(self.global_batch, self.drop_last) end

-- The training batches of epoch ep: global batches of batch_size * ranks rows
-- (the same on every rank), of which each rank takes its contiguous share.
function Trainer:_batches(ep)
  local it = self.train:batches(self.global_batch, { shuffle = self.shuffle, seed = self.seed + ep - 1,
    columns = self.columns, drop_last = self.drop_last })
  if self.world == 1 then return it end
  local dist, rank, world = self.dist, self.rank, self.world
  return function()
    local b, k = it()
    if not b then return nil end
    local first = b[next(b)]
    local n = #first
    if n < world then
      fail(("distributed: a batch of the epoch has %d rows, fewer than the %d ranks (drop_last = true, "
        .. "or a batch_size / dataset size that leaves every rank a row)"):format(n, world))
    end
    local lo, hi = dist.shard(n, rank, world)
    local part = setmetatable({}, getmetatable(b))
    for c, col in pairs(b) do part[c] = table.move(col, lo, hi, 1, {}) end
    return part, k
  end
end

function Trainer:_steps_per_epoch() return (self:_micro_per_epoch() + self.accum - 1) // self.accum end

function Trainer:_epoch_float()
  local s = self.state
  return (s.epoch - 1) + ((s.consumed + self.accum - 1) // self.accum) / s.steps_per_epoch
end

-- Files ----------------------------------------------------------------------------------

local CSV_FIRST = { "type", "step", "epoch" }

-- one CSV line of record r over the columns cols
local function csv_row(r, cols)
  local cells = {}
  for i, k in ipairs(cols) do
    local v = r[k]
    if type(v) == "number" then cells[i] = fmt_number(v)
    elseif v == nil then cells[i] = ""
    else
      local s = tostring(v)
      if s:find('[,"\n]') then s = '"' .. s:gsub('"', '""') .. '"' end
      cells[i] = s
    end
  end
  return table.concat(cells, ",")
end

-- metrics.csv written whole (atomically) from trainer.records: the columns are
-- CSV_FIRST, then every other key of the records, sorted. Later records with no
-- new key are appended by log() through self._csv.
function Trainer:_write_csv()
  if not self.out then return end
  local keys, seen = {}, {}
  for _, k in ipairs(CSV_FIRST) do seen[k] = true end
  for _, r in ipairs(self.records) do
    for k in pairs(r) do if not seen[k] then seen[k] = true; keys[#keys + 1] = k end end
  end
  table.sort(keys)
  local cols = {}
  for _, k in ipairs(CSV_FIRST) do cols[#cols + 1] = k end
  for _, k in ipairs(keys) do cols[#cols + 1] = k end
  local lines = { table.concat(cols, ",") }
  for _, r in ipairs(self.records) do lines[#lines + 1] = csv_row(r, cols) end
  if self._csv then self._csv:close(); self._csv = nil end
  local path = join(self.out, "metrics.csv")
  local ok, err = core.write_file(path, table.concat(lines, "\n") .. "\n")
  if not ok then error(err, 0) end
  self._csv_cols, self._csv_seen = cols, seen
  self._csv = io.open(path, "ab")
end

--- Append a record to metrics.jsonl / metrics.csv (and trainer.records).
-- (The record kept is the one read back from its JSON line - cJSON prints
-- numbers with 15 significant digits when those read back within its
-- tolerance - so that trainer.records, metrics.jsonl and metrics.csv agree,
-- in a resumed run too.)
function Trainer:log(rec)
  local line = core.json_encode(rec)
  local back = core.json_decode(line)
  for k in pairs(rec) do rec[k] = nil end
  for k, v in pairs(back) do rec[k] = v end
  self.records[#self.records + 1] = rec
  if self._log then
    self._log:write(line, "\n")
    self._log:flush()
    -- a record with a key the header lacks rewrites metrics.csv; others append a line
    local new_key = not self._csv
    for k in pairs(rec) do new_key = new_key or not self._csv_seen[k] end
    if new_key then
      self:_write_csv()
    else
      self._csv:write(csv_row(rec, self._csv_cols), "\n")
      self._csv:flush()
    end
  end
  return rec
end

local function finished_checkpoints(dir)
  local list = {}
  if not core.is_dir(dir) then return list end
  for _, name in ipairs(core.listdir(dir) or {}) do
    local n = name:match("^step%-(%d+)$")
    if n and checkpoint.is_checkpoint(join(dir, name)) then list[#list + 1] = { step = tonumber(n), name = name } end
  end
  table.sort(list, function(a, b) return a.step < b.step end)
  return list
end

--- The finished checkpoints under out/checkpoints, oldest first ({step, path}).
function Trainer:checkpoints()
  if not self.out then return {} end
  local dir = join(self.out, "checkpoints")
  local list = finished_checkpoints(dir)
  for _, c in ipairs(list) do c.path = join(dir, c.name); c.name = nil end
  return list
end

-- Preparing a run ---------------------------------------------------------------------------

local function read_records(path, upto)
  local recs = {}
  local f = io.open(path, "rb")
  if not f then return recs end
  for line in f:lines() do
    if line:match("%S") then
      local ok, r = pcall(core.json_decode, line, path)
      if ok and type(r) == "table" and type(r.step) == "number" and r.step <= upto and not r.final then
        recs[#recs + 1] = r
      end
    end
  end
  f:close()
  return recs
end

-- The losses' frozen-feature cache encodes each new image / text in the
-- micro-batch where it first appears, and a tower's features depend (in the
-- last bits) on the batch they were computed in. A resumed run therefore
-- replays the forward passes of the batches before the checkpoint that filled
-- the cache (epoch 1; every epoch with drop_last), so that it continues with
-- the very features the straight run had.
function Trainer:_replay_cache()
  local loss, target = self.loss, self.state_resume
  if type(loss.cache) ~= "table" or (type(loss.opts) == "table" and loss.opts.cache == false) then return end
  if type(loss.clear_cache) == "function" then loss:clear_cache() end
  local mc = self.model.core
  if mc:trainable("vision").below_projection and mc:trainable("text").below_projection then return end
  local function eval_forwards()
    for _, name in ipairs(sorted_keys(self.eval_datasets)) do
      for b in self.eval_datasets[name]:batches(self.eval_batch_size, { columns = self.columns }) do loss:forward(b) end
    end
  end
  -- the eval datasets' items are all cached after the first evaluation, the
  -- training items after epoch 1 (every epoch with drop_last)
  local evaled = next(self.eval_datasets) == nil
  if self.o.eval_on_start and not evaled then eval_forwards(); evaled = true end
  local mpe = self:_micro_per_epoch()
  local step, ep = 0, 1
  while step < target.step do
    local need_train = ep == 1 or self.drop_last
    if not need_train and evaled then break end
    local iter = self:_batches(ep)
    local consumed = 0
    while consumed < mpe and step < target.step do
      local count = math.min(self.accum, mpe - consumed)
      for _ = 1, count do
        local b = iter()
        if need_train then loss:forward(b) end
      end
      step, consumed = step + 1, consumed + count
      if not evaled and self:_eval_due(step, consumed >= mpe) then eval_forwards(); evaled = true end
    end
    ep = ep + 1
  end
end

function Trainer:_eval_due(step, epoch_end)
  return (self.eval_every == "epoch" and epoch_end)
    or (math.type(self.eval_every) == "integer" and step % self.eval_every == 0)
end

--- Check everything, load the checkpoint when resuming and open the logs.
-- fit() and evaluate() call it first; call it yourself to know before
-- training whether a run resumes (trainer.state.step > 0) - nothing is
-- written before every check has passed.
function Trainer:prepare()
  if self.state then return self end
  if self.world == 1 then
    local s, from = self:_prepare_checks()
    self:_prepare_files(s, from)
    self.state = s
    return self
  end
  -- data parallel: the checks on every rank, then rank 0's files, each phase
  -- agreed (an error on one rank is raised on every rank), then rank 0's
  -- trainable weights for every rank
  local errh = function(e) return e end
  local ok, s, from = xpcall(self._prepare_checks, errh, self)
  M._agree(self.dist, "preparing the run", ok, ok and {
    { label = "the checkpoint to resume from", value = from and ("step %d"):format(s.step) or "none",
      hint = " (every rank must see the same out/checkpoints: a shared file system)" } } or s)
  local wok, werr = xpcall(self._prepare_files, errh, self, s, from)
  M._agree(self.dist, "writing the output files", wok, wok and {} or werr)
  for _, p in ipairs(self.optimizer:parameters()) do
    if p.requires_grad then self.dist.broadcast(p.data, 0) end
  end
  self.state = s
  return self
end

-- prepare(), first half: every check, the resumed checkpoint loaded; nothing
-- written. Returns the state and the checkpoint resumed from (or nil).
function Trainer:_prepare_checks()
  local s = { step = 0, epoch = 1, consumed = 0, run_sum = 0, run_n = 0, ep_sum = 0, ep_n = 0, bad_evals = 0 }
  if self.train then
    s.steps_per_epoch = self:_steps_per_epoch()
    s.total_steps = self.max_steps or s.steps_per_epoch * self.epochs
  end
  -- the schedule
  if not self.schedule and self.train then
    local warmup = self.warmup_steps > 0 and self.warmup_steps or math.ceil(self.warmup_ratio * s.total_steps)
    local sc = self._schedule_opt
    local make = type(sc) == "function" and sc or SCHEDULES[sc]
    self.schedule = make(self.optimizer, { warmup = warmup, total = s.total_steps })
    self.warmup = warmup
  end
  -- the checkpoint to resume from
  local from
  if self.resume == true then
    local list = self:checkpoints()
    if #list == 0 then
      fail(("resume: no finished checkpoint in %s (nothing to resume; run without resume to start)")
        :format(join(self.out, "checkpoints")))
    end
    from = list[#list].path
  elseif type(self.resume) == "string" then
    from = self.resume
    if not checkpoint.is_checkpoint(from) then
      fail(("resume: %s is not a finished checkpoint (no trainer_state.json)"):format(from))
    end
  end
  if from then
    if not self.train then fail("resume needs train (the training set)") end
    local st = checkpoint.read_state(from)
    local x = st.extra or {}
    local d = st.data or {}
    if d.size ~= self.train:size() or d.batch_size ~= self.batch_size or d.grad_accumulation ~= self.accum
      or d.shuffle ~= self.shuffle or d.drop_last ~= self.drop_last or (d.world_size or 1) ~= self.world then
      fail(("resume: checkpoint %s was saved with %s rows, batch %s, grad_accumulation %s%s; this run has %d rows, "
        .. "batch %d, grad_accumulation %d%s: the data position would not match")
        :format(from, tostring(d.size), tostring(d.batch_size), tostring(d.grad_accumulation),
          d.shuffle == false and ", no shuffle" or "", self.train:size(), self.batch_size, self.accum,
          self.shuffle and "" or ", no shuffle") .. ((d.world_size or 1) ~= self.world
          and (" (saved with %d ranks, this run has %d)"):format(d.world_size or 1, self.world) or ""))
    end
    if st.rng and st.rng.seed ~= self.seed then
      fail(("resume: checkpoint %s was saved with seed %s, this run has seed %d"):format(from, tostring(st.rng.seed), self.seed))
    end
    local step = checkpoint.load(from, { model = self.model, optimizer = self.optimizer, scheduler = self.schedule,
      loss = self.loss })
    s.step, s.epoch, s.consumed = step, d.epoch, d.consumed
    s.run_sum, s.run_n, s.ep_sum, s.ep_n = tonumber(x.run_sum) or 0, x.run_n or 0, tonumber(x.ep_sum) or 0, x.ep_n or 0
    self.state_resume = s
    s.best_value, s.best_step, s.bad_evals = tonumber(x.best_value), x.best_step, x.bad_evals or 0
    s.resumed_from = from
    self:_replay_cache()
  end
  -- an earlier run's results are never deleted unasked
  if self.out and not from and not self.o.overwrite and self.rank == 0 then
    for _, name in ipairs({ "checkpoints", "best", "metrics.jsonl" }) do
      local p = join(self.out, name)
      if core.is_dir(p) or core.is_file(p) then
        fail(("%s holds an earlier run (%s): pass resume = true to continue it, or overwrite = true "
          .. "to start over and delete it (CLI: --resume / --overwrite)"):format(self.out, p))
      end
    end
  end
  -- the records of the run resumed (every rank reads them: they agree)
  if self.out and from then self.records = read_records(join(self.out, "metrics.jsonl"), s.step) end
  return s, from
end

-- prepare(), second half: the output directory (rank 0 writes; the other
-- ranks keep their records in memory).
function Trainer:_prepare_files(s, from)
  if self.out and self.rank == 0 then
    local ok, err = core.mkdir_p(self.out)
    if not ok then fail(err) end
    local log_path = join(self.out, "metrics.jsonl")
    if from then
      local lines = {}
      for i, r in ipairs(self.records) do lines[i] = core.json_encode(r) end
      local wok, werr = core.write_file(log_path, #lines > 0 and table.concat(lines, "\n") .. "\n" or "")
      if not wok then fail(werr) end
      -- checkpoints after the one resumed from belong to the interrupted run
      for _, c in ipairs(self:checkpoints()) do
        if c.step > s.step then checkpoint.remove_tree(c.path) end
      end
    else
      self.records = {}
    end
    self._log = io.open(log_path, from and "ab" or "wb")
    if not self._log then fail(log_path .. ": cannot write") end
    self:_write_csv()
  end
end

-- Evaluation -------------------------------------------------------------------------

--- The loss over a dataset (no gradients): the mean over its batches of
-- eval_batch_size, weighted by batch size.
function Trainer:eval_loss(ds)
  local sum, n = 0, 0
  for batch in ds:batches(self.eval_batch_size, { columns = self.columns }) do
    local col = batch[next(batch)]
    local b = #col
    sum, n = sum + self.loss:forward(batch) * b, n + b
  end
  return n > 0 and sum / n or nil
end

--- evaluate([opts]) -> metrics, record. Runs the evaluators and the losses
-- over eval_datasets ("<name>_loss"), logs a record {type = "eval", step,
-- epoch, ...} and calls on_eval. opts: eval (other evaluators), losses
-- (false: skip eval_datasets), record (extra fields for the record, e.g.
-- {final = true}), log (false: neither log nor call on_eval).
--
-- Distributed: a collective (call it on every rank): rank 0 evaluates, and
-- every rank gets its metrics and record (logs it, calls on_eval); the others
-- wait up to eval_timeout. An error on rank 0 is raised on every rank.
function Trainer:evaluate(opts)
  opts = opts or {}
  self:prepare()
  if self.world == 1 then return self:_evaluate_here(opts) end
  local payload
  if self.rank == 0 then
    local here = {}
    for k, v in pairs(opts) do here[k] = v end
    here.log = false
    local ok, m, rec = xpcall(self._evaluate_here, function(e) return e end, self, here)
    payload = ser(ok and { m = m, rec = rec } or { err = tostring(m) })
  end
  local got = deser(self.dist.with_timeout(self.eval_timeout, self.dist.broadcast_string, payload, 0), "rank 0")
  if got.err then
    fail(("distributed: the evaluation failed on rank 0: %s"):format((got.err:gsub("^clip%.Trainer: ", ""))))
  end
  local m, rec = got.m, got.rec
  return self:_eval_logged(opts, m, rec)
end

-- an evaluation's record logged and on_eval fired (unless opts.log is false)
function Trainer:_eval_logged(opts, m, rec)
  if opts.log ~= false then
    self:log(rec)
    self:_fire("on_eval", m, rec)
  end
  return m, rec
end

function Trainer:_evaluate_here(opts)
  local evs = self.evaluators
  if opts.eval ~= nil then evs = is_callable(opts.eval) and { opts.eval } or opts.eval end
  local m = {}
  for _, ev in ipairs(evs) do
    for k, v in pairs(ev(self.model)) do m[k] = v end
  end
  if opts.losses ~= false then
    for _, name in ipairs(sorted_keys(self.eval_datasets)) do
      m[name .. "_loss"] = self:eval_loss(self.eval_datasets[name])
    end
  end
  if opts.train_loss then m.train_loss = opts.train_loss end
  local s = self.state
  local rec = { type = "eval", step = s.step, epoch = s.step == 0 and 0 or (self.train and self:_epoch_float() or 0) }
  for k, v in pairs(opts.record or {}) do rec[k] = v end
  for k, v in pairs(m) do rec[k] = v end
  return self:_eval_logged(opts, m, rec)
end

-- best/ : the model of the best evaluation, replaced atomically
function Trainer:_save_best(value, key)
  local dir = join(self.out, "best")
  local tmp, old = dir .. ".tmp", dir .. ".old"
  checkpoint.remove_tree(tmp)
  self.model:save(tmp, { format = self.format })
  local ok, err = core.write_file(join(tmp, "best.json"), core.json_encode({ step = self.state.step, metric = key,
    value = value, greater_is_better = self.greater_is_better }, true) .. "\n")
  if not ok then error(err, 0) end
  if core.is_dir(dir) then
    checkpoint.remove_tree(old)
    assert(os.rename(dir, old))
  end
  assert(os.rename(tmp, dir))
  checkpoint.remove_tree(old)
  self:_fire("on_save", dir, { kind = "best", step = self.state.step, metric = key, value = value })
end

-- after an evaluation during fit: best metric, early stopping; returns
-- {value, key} when best/ is to be written (fit writes it, on rank 0)
function Trainer:_track_best(m)
  if not self.metric_for_best then return end
  local names = {}
  for k in pairs(m) do names[#names + 1] = k end
  local key = self:_metric_key(names)
  local v = m[key]
  local s = self.state
  local th = self.early_stopping and self.early_stopping.threshold or 0
  local better
  if s.best_value == nil then better = true
  elseif self.greater_is_better then better = v > s.best_value and (v - s.best_value) > th
  else better = v < s.best_value and (s.best_value - v) > th end
  if better then
    s.best_value, s.best_step, s.bad_evals = v, s.step, 0
    if self.out then return { v, key } end
  else
    s.bad_evals = s.bad_evals + 1
    if self.early_stopping and s.bad_evals >= self.early_stopping.patience then
      self._stop = true
      s.stopped_early = true
    end
  end
end

-- Checkpoints -------------------------------------------------------------------------------

function Trainer:_save_checkpoint()
  local s = self.state
  local dir = join(join(self.out, "checkpoints"), "step-" .. s.step)
  checkpoint.save(dir, {
    model = self.model, optimizer = self.optimizer, scheduler = self.schedule, loss = self.loss, step = s.step,
    data = { epoch = s.epoch, consumed = s.consumed, size = self.train:size(), batch_size = self.batch_size,
      grad_accumulation = self.accum, shuffle = self.shuffle, drop_last = self.drop_last,
      world_size = self.world > 1 and self.world or nil },
    rng = { kind = "splitmix64", seed = self.seed, epoch_seed = self.seed + s.epoch - 1 },
    -- sums as %.17g strings: cJSON's number printing is not exact
    extra = { run_sum = ("%.17g"):format(s.run_sum), run_n = s.run_n, ep_sum = ("%.17g"):format(s.ep_sum),
      ep_n = s.ep_n, best_value = s.best_value and ("%.17g"):format(s.best_value), best_step = s.best_step,
      bad_evals = s.bad_evals, total_steps = s.total_steps, loss = self.loss_name },
  })
  if self.save_total_limit then
    local list = self:checkpoints()
    for i = 1, #list - self.save_total_limit do checkpoint.remove_tree(list[i].path) end
  end
  self:_fire("on_save", dir, { kind = "checkpoint", step = s.step })
  return dir
end

--- save_model(dir [, {format = ...}]): the model in the Hugging Face (or
-- sentence-transformers) layout; calls on_save.
function Trainer:save_model(dir, opts)
  self.model:save(dir, { format = (opts and opts.format) or self.format })
  self:_fire("on_save", dir, { kind = "model", step = self.state and self.state.step or 0 })
  return dir
end

-- Training ---------------------------------------------------------------------------------

function Trainer:_one_step(iter, count)
  local s, opt, loss = self.state, self.optimizer, self.loss
  local step = s.step + 1
  local sum = 0
  for _ = 1, count do
    sum = sum + guard.backward(opt, loss, iter(), step, count > 1 and 1 / count or nil)
  end
  if self.world > 1 then self:_allreduce_grads() end
  guard.check_step(opt, step)
  local gn = optim.clip_grad_norm(opt, self.max_grad_norm or math.huge)
  local lr = opt.lr
  opt:step()
  self.schedule:step()
  opt:zero_grad()
  return sum / count, lr, gn
end

-- Data parallel: SUM of every trainable gradient over the ranks, in buckets
-- (each rank's gradient is its local rows' share of the global-batch loss's).
function Trainer:_allreduce_grads()
  local list, numel = {}, 0
  for _, p in ipairs(self.optimizer:parameters()) do
    local g = p.requires_grad and p.grad
    if g then list[#list + 1] = g; numel = numel + g:numel() end
  end
  local chk = core.tensor({ #list, numel, -#list, -numel })
  self.dist.allreduce(chk, "max")
  if chk[1] ~= #list or chk[2] ~= numel or -chk[3] ~= #list or -chk[4] ~= numel then
    fail(("distributed: the ranks hold different gradients (%d tensors, %d values on rank %d)")
      :format(#list, numel, self.rank))
  end
  self.dist.allreduce_many(list, "sum", self.bucket_bytes)
end

-- After each step: best/ and the checkpoint due (written by rank 0 alone),
-- then every rank learns whether that failed and whether any rank's callback
-- asked to stop (early stopping is decided alike on every rank: they all see
-- the same evaluations). The others wait for rank 0's files up to
-- eval_timeout. Single process: just the files.
function Trainer:_after_step(best, save_now)
  if self.world == 1 then
    if best then self:_save_best(best[1], best[2]) end
    if save_now then self:_save_checkpoint() end
    return
  end
  local err
  if self.rank == 0 then
    local ok, e = xpcall(function()
      if best then self:_save_best(best[1], best[2]) end
      if save_now then self:_save_checkpoint() end
    end, function(e) return e end)
    if not ok then err = tostring(e) end
  end
  local dist = self.dist
  local limit = (best or save_now) and self.eval_timeout or dist.get_timeout()
  local all = dist.with_timeout(limit, dist.all_gather_string, ser({ stop = self._stop or false, err = err }))
  for r, str in ipairs(all) do
    local p = deser(str, "rank " .. (r - 1))
    if p.err then
      fail(("distributed: writing %s on rank 0 failed at step %d: %s"):format(save_now and "the checkpoint" or "best/",
        self.state.step, (p.err:gsub("^clip%.Trainer: ", ""))))
    end
    if p.stop then self._stop = true end
  end
end

--- fit() -> summary {step, epoch, best_metric, best_value, best_step,
-- stopped_early}. Trains until epochs (or max_steps) are done, early stopping
-- triggers or a callback calls trainer:stop().
function Trainer:fit()
  if not self.train then fail("fit needs train (a Dataset)") end
  self:prepare()
  local s = self.state
  local t0 = progress.clock()
  local mpe = self:_micro_per_epoch()
  local n_epochs = (s.total_steps + s.steps_per_epoch - 1) // s.steps_per_epoch
  self._stop = false
  if self.out and s.step == 0 and not s.cleared and self.rank == 0 then
    -- a run without resume starts over: earlier checkpoints and best/ would
    -- be taken for this run's (only now, after every check has passed)
    checkpoint.remove_tree(join(self.out, "checkpoints"))
    checkpoint.remove_tree(join(self.out, "best"))
    s.cleared = true
  end
  if self.o.eval_on_start and s.step == 0 and #self.records == 0 then
    local m = self:evaluate()
    if self.metric_for_best then
      local names = {}
      for k in pairs(m) do names[#names + 1] = k end
      self:_metric_key(names)
    end
  end
  while s.step < s.total_steps and not self._stop do
    local ep = s.epoch
    local iter = self:_batches(ep)
    for _ = 1, s.consumed do iter() end
    local ep_steps = math.min(s.steps_per_epoch, s.total_steps - (ep - 1) * s.steps_per_epoch)
    local bar = progress.new({ total = ep_steps, label = ("epoch %d/%d"):format(ep, n_epochs), unit = "step",
      mode = self.progress_mode })
    bar.done = (s.consumed + self.accum - 1) // self.accum
    local last_eval
    while s.step < s.total_steps and s.consumed < mpe and not self._stop do
      local count = math.min(self.accum, mpe - s.consumed)
      local value, lr, gn = self:_one_step(iter, count)
      s.step, s.consumed = s.step + 1, s.consumed + count
      s.run_sum, s.run_n = s.run_sum + value, s.run_n + 1
      s.ep_sum, s.ep_n = s.ep_sum + value, s.ep_n + 1
      local epoch_end = s.consumed >= mpe
      local rec = self:log({ type = "train", step = s.step, epoch = self:_epoch_float(), loss = value,
        learning_rate = lr, grad_norm = gn })
      bar:advance(1, ("loss %.4f"):format(value))
      self:_fire("on_step", rec)
      local ep_sum, ep_n = s.ep_sum, s.ep_n
      if epoch_end then
        s.epoch, s.consumed, s.ep_sum, s.ep_n = s.epoch + 1, 0, 0, 0
      end
      local ev_now = self:_eval_due(s.step, epoch_end)
      local best
      if ev_now then -- distributed: every rank, rank 0 evaluates (evaluate)
        local m, r = self:evaluate({ train_loss = s.run_n > 0 and s.run_sum / s.run_n or nil,
          record = { epoch = epoch_end and ep or nil } })
        s.run_sum, s.run_n = 0, 0
        if epoch_end then last_eval = m end
        best = self:_track_best(m)
        if not epoch_end then
          local parts = {}
          for _, k in ipairs(sorted_keys(m)) do parts[#parts + 1] = ("%s %.4f"):format(k, m[k]) end
          bar:log(("step %d: %s"):format(r.step, table.concat(parts, ", ")))
        end
      end
      local save_now = self.out and ((self.save_every == "epoch" and epoch_end)
        or (math.type(self.save_every) == "integer" and s.step % self.save_every == 0))
      self:_after_step(best, save_now)
      if epoch_end or s.step >= s.total_steps or self._stop then
        local extra = ""
        if epoch_end and last_eval then
          for _, name in ipairs(sorted_keys(self.eval_datasets)) do
            local v = last_eval[name .. "_loss"]
            if v then extra = extra .. (", %s loss %.4f"):format(name, v) end
          end
        end
        bar:finish(("epoch %d/%d: %d steps, loss %.4f%s%s, %.1fs"):format(ep, n_epochs, ep_n,
          ep_n > 0 and ep_sum / ep_n or 0 / 0, extra, s.stopped_early and " (early stopping)" or "",
          progress.clock() - t0))
      end
      if epoch_end then break end
    end
  end
  if self.world > 1 then
    self.dist.with_timeout(self.eval_timeout, self.dist.barrier) -- rank 0's files are written
  end
  if self.load_best_at_end and s.best_step and self.out then
    local w = core.load_safetensors(join(join(self.out, "best"), "model.safetensors"))
    for _, it in ipairs(self.model:parameter_info()) do self.model:param(it.name):copy(w[it.name]) end
    if type(self.loss.clear_cache) == "function" then self.loss:clear_cache() end
  end
  if self.out and self.chart then self:write_chart() end
  return { step = s.step, epoch = self:_epoch_float(), best_metric = self.metric_for_best,
    best_value = s.best_value, best_step = s.best_step, stopped_early = s.stopped_early or false }
end

-- Chart ----------------------------------------------------------------------------------------

--- write_chart([path]) -> path: the training loss per step with the eval
-- losses, and the other eval metrics (clip.chart; default out/chart.png).
function Trainer:write_chart(path)
  path = path or join(self.out, "chart.png")
  local loss_pts, losses, metrics, lorder, morder = {}, {}, {}, {}, {}
  local bounded = true
  for _, r in ipairs(self.records) do
    if r.type == "train" then loss_pts[#loss_pts + 1] = { r.step, r.loss } end
    if r.type == "eval" then
      for _, k in ipairs(sorted_keys(r)) do
        local v = r[k]
        if type(v) == "number" and k ~= "step" and k ~= "epoch" and k ~= "train_loss" then
          local dst, order = metrics, morder
          if is_loss_key(k) then dst, order = losses, lorder end
          if not dst[k] then dst[k] = {}; order[#order + 1] = k end
          local pts = dst[k]
          if not (r.final and pts[#pts] and pts[#pts][1] == r.step) then pts[#pts + 1] = { r.step, v } end
          if dst == metrics and (v < 0 or v > 1) then bounded = false end
        end
      end
    end
  end
  local loss_series = { { name = "train loss", points = loss_pts } }
  for _, k in ipairs(lorder) do loss_series[#loss_series + 1] = { name = k:gsub("_", " "), points = losses[k] } end
  local panels = { { title = "loss", x_label = "step", series = loss_series } }
  if #morder > 0 then
    local series = {}
    for _, k in ipairs(morder) do
      series[#series + 1] = { name = k:gsub("_cosine_accuracy", " triplet acc"):gsub("_", " "), points = metrics[k] }
    end
    panels[2] = { title = "metrics", x_label = "step", y_min = bounded and 0 or nil, y_max = bounded and 1 or nil,
      legend = "bottom", series = series }
  end
  require("clip.chart").write(path, { title = self.chart_title, panels = panels })
  return path
end

--- Close the metrics log.
function Trainer:close()
  if self._log then self._log:close(); self._log = nil end
  if self._csv then self._csv:close(); self._csv = nil end
end

return M
