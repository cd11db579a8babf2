--- clip.optim: AdamW and SGD (PyTorch semantics), learning-rate schedules,
-- global gradient-norm clipping.
--
-- An optimizer takes a source of parameters: a clip model, a loss with
-- parameters (SigLIPLoss), a list of Parameter objects, or a list of these;
-- or, as torch.optim, a list of parameter groups {params = source, lr = ...,
-- weight_decay = ...} whose unset options come from the defaults.
-- param_groups(model, {weight_decay = wd}) makes the Hugging Face Trainer's
-- two groups (no decay on biases and LayerNorm parameters).
-- Only parameters with requires_grad and a gradient are updated.
local core = require "clip.core"

local M = {}

local function collect(src, out, seen)
  out, seen = out or {}, seen or {}
  if type(src) ~= "table" then error("optim: expected a model, a loss or a list of parameters", 3) end
  if src.named_parameters then
    for _, p in src:named_parameters() do
      if not seen[p] then out[#out + 1], seen[p] = p, true end
    end
  elseif src.parameters and type(src.parameters) == "function" then
    for _, p in ipairs(src:parameters()) do
      if not seen[p] then out[#out + 1], seen[p] = p, true end
    end
  elseif src.data ~= nil and src.name ~= nil then
    if not seen[src] then out[#out + 1], seen[src] = src, true end
  else
    for _, s in ipairs(src) do collect(s, out, seen) end
  end
  return out
end

-- Parameter groups -------------------------------------------------------------
--
-- Every optimizer holds a list of parameter groups (torch's param_groups):
-- opt.param_groups[i] = {params = {Parameter...}, lr = ..., weight_decay = ...,
-- initial_lr = ..., name = ...}. A group's unset options come from the
-- defaults table (the second argument). opt.lr, opt.weight_decay, ... read the
-- first group's value; assigning them sets every group.

local GROUP_KEYS = {
  lr = true, initial_lr = true, betas = true, eps = true, weight_decay = true,
  momentum = true, dampening = true, nesterov = true,
}

local Optimizer = {}
Optimizer.__name = "clip.Optimizer"
Optimizer.__index = function(self, k)
  if GROUP_KEYS[k] then
    local g = rawget(self, "param_groups")[1]
    return g and g[k]
  end
  return Optimizer[k]
end
Optimizer.__newindex = function(self, k, v)
  if GROUP_KEYS[k] then
    for _, g in ipairs(rawget(self, "param_groups")) do g[k] = v end
  else
    rawset(self, k, v)
  end
end

local function sources_list(src)
  if type(src) == "table" and (src.core or src.parameters or (src.data and src.name)) then return { src } end
  return src
end

-- a group table: a plain table with a params field
local function is_group(x) return type(x) == "table" and getmetatable(x) == nil and x.params ~= nil end

local function group_list(source, who)
  if is_group(source) then return { source } end
  if type(source) == "table" and getmetatable(source) == nil and is_group(source[1]) then
    for i, g in ipairs(source) do
      if not is_group(g) then error(("%s: item %d of a list of groups is not a group {params = ...}"):format(who, i), 3) end
    end
    return source
  end
  return nil
end

local function check_number(who, k, v, lo)
  if type(v) ~= "number" or v ~= v or v < lo then
    error(("%s: %s must be a number >= %g, got %s"):format(who, k, lo, tostring(v)), 4)
  end
end

-- defaults: {key = value} for every option of this kind (lr included)
local function make_group(self, g, who)
  local group = {}
  for k, v in pairs(g) do group[k] = v end
  for k, v in pairs(self.defaults) do
    if group[k] == nil then group[k] = v end
  end
  local srcs = sources_list(g.params)
  group.sources = type(srcs) == "table" and table.move(srcs, 1, #srcs, 1, {}) or srcs
  -- models whose zero_grad (gradients back to None) clears this group's gradients
  for _, m in ipairs(g.zero_grad_sources or {}) do group.sources[#group.sources + 1] = m end
  group.zero_grad_sources = nil
  group.params = collect(g.params)
  check_number(who, "lr", group.lr, 0)
  check_number(who, "weight_decay", group.weight_decay, 0)
  if group.eps ~= nil then check_number(who, "eps", group.eps, 0) end
  if group.betas ~= nil then
    local b = group.betas
    if type(b) ~= "table" or type(b[1]) ~= "number" or type(b[2]) ~= "number" or b[1] < 0 or b[1] >= 1
        or b[2] < 0 or b[2] >= 1 then
      error(who .. ": betas must be two numbers in [0, 1)", 4)
    end
  end
  if group.momentum ~= nil then check_number(who, "momentum", group.momentum, 0) end
  if group.initial_lr == nil then group.initial_lr = group.lr end
  return group
end

--- opt:add_param_group({params = source, lr = ..., ...}): a group whose unset
-- options come from the optimizer's defaults (torch add_param_group).
function Optimizer:add_param_group(g, who)
  who = who or (self.kind .. ":add_param_group")
  if not is_group(g) then error(who .. ": expected a group {params = ...}", 2) end
  local group = make_group(self, g, who)
  for _, p in ipairs(group.params) do
    if self._member[p] then
      error(("%s: parameter '%s' is in more than one group"):format(who, tostring(p.name)), 2)
    end
    self._member[p] = group
    self.params[#self.params + 1] = p
  end
  self.param_groups[#self.param_groups + 1] = group
  return group
end

local function new_optimizer(kind, source, opts, defaults, who)
  opts = opts or {}
  for k, v in pairs(opts) do defaults[k] = v end
  local self = setmetatable({ kind = kind, param_groups = {}, params = {}, _member = {}, defaults = defaults,
    state = {} }, Optimizer)
  local groups = group_list(source, who) or { { params = source } }
  for _, g in ipairs(groups) do self:add_param_group(g, who) end
  return self
end

--- Zero the gradients of every parameter this optimizer holds.
function Optimizer:zero_grad()
  for _, group in ipairs(self.param_groups) do
    for _, src in ipairs(group.sources) do
      if type(src) == "table" and src.zero_grad and src.core then src:zero_grad() end
    end
  end
  for _, p in ipairs(self.params) do
    local g = p.grad
    if g then g:fill(0) end
  end
end

--- The parameters (Parameter objects) this optimizer holds, over all groups.
function Optimizer:parameters() return self.params end

--- The current learning rate of each group (torch's scheduler.get_last_lr()).
function Optimizer:get_lr()
  local out = {}
  for i, g in ipairs(self.param_groups) do out[i] = g.lr end
  return out
end

--- AdamW(source_or_groups, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 0.01})
-- source_or_groups: a source (see the module comment), or a list of groups
-- {params = source, lr =, betas =, eps =, weight_decay =, name =} whose unset
-- options come from the second argument (torch.optim.AdamW(param_groups, ...)).
function M.AdamW(source, opts)
  local self = new_optimizer("AdamW", source, opts,
    { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-8, weight_decay = 0.01 }, "AdamW")
  self.step = M._adamw_step
  return self
end

function M._adamw_step(self)
  for _, group in ipairs(self.param_groups) do
    local lr, b1, b2, eps, wd = group.lr, group.betas[1], group.betas[2], group.eps, group.weight_decay
    for _, p in ipairs(group.params) do
      if p.requires_grad then
        local g = p.grad
        if g then
          local st = self.state[p.name]
          if not st then
            local shape = p.data:shape()
            st = { step = 0, exp_avg = core.zeros(shape), exp_avg_sq = core.zeros(shape) }
            self.state[p.name] = st
          end
          st.step = st.step + 1
          core.optim_adamw(p.data, st.exp_avg, st.exp_avg_sq, g, lr, b1, b2, eps, wd, st.step)
        end
      end
    end
  end
end

--- SGD(source_or_groups, {lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0, nesterov = false})
-- Groups as for AdamW, with options lr, momentum, dampening, weight_decay, nesterov.
function M.SGD(source, opts)
  local self = new_optimizer("SGD", source, opts,
    { lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0, nesterov = false }, "SGD")
  self.step = M._sgd_step
  return self
end

function M._sgd_step(self)
  for _, group in ipairs(self.param_groups) do
    for _, p in ipairs(group.params) do
      if p.requires_grad then
        local g = p.grad
        if g then
          local st = self.state[p.name]
          local first = false
          if not st then
            st = { step = 0, momentum_buffer = group.momentum ~= 0 and core.zeros(p.data:shape()) or nil }
            self.state[p.name] = st
            first = true
          end
          st.step = st.step + 1
          core.optim_sgd(p.data, st.momentum_buffer, g, group.lr, group.momentum, group.dampening,
            group.weight_decay, group.nesterov, first)
        end
      end
    end
  end
end

local HYPER = { "lr", "initial_lr", "betas", "eps", "weight_decay", "momentum", "dampening", "nesterov", "name" }

--- Optimizer state as tensors + a JSON-able table (for checkpoints). The
-- table holds kind, lr and initial_lr (of the first group), steps (per
-- parameter name) and groups (each group's options and parameter names).
function Optimizer:state_dict()
  local tensors = {}
  local meta = { kind = self.kind, lr = self.lr, initial_lr = self.initial_lr, steps = {}, groups = {} }
  for name, st in pairs(self.state) do
    meta.steps[name] = st.step
    for k, v in pairs(st) do
      if type(v) == "userdata" then tensors[k .. "." .. name] = v end
    end
  end
  for i, g in ipairs(self.param_groups) do
    local mg = { params = {} }
    for _, k in ipairs(HYPER) do mg[k] = g[k] end
    for j, p in ipairs(g.params) do mg.params[j] = p.name end
    meta.groups[i] = mg
  end
  return tensors, meta
end

--- Restore state_dict()'s output. Each group's options (lr, weight decay,
-- ...) are restored as torch does; a state saved before parameter groups
-- existed (no meta.groups) restores lr and initial_lr into a one-group
-- optimizer.
function Optimizer:load_state_dict(tensors, meta)
  if meta.groups then
    if #meta.groups ~= #self.param_groups then
      error(("load_state_dict: the state has %d parameter groups, the optimizer %d"):format(#meta.groups,
        #self.param_groups), 2)
    end
    for i, mg in ipairs(meta.groups) do
      local g = self.param_groups[i]
      if mg.params and #mg.params ~= #g.params then
        error(("load_state_dict: group %d has %d parameters in the state, %d in the optimizer"):format(i,
          #mg.params, #g.params), 2)
      end
      for _, k in ipairs(HYPER) do
        if mg[k] ~= nil then g[k] = mg[k] end
      end
    end
  else
    if #self.param_groups > 1 then
      error(("load_state_dict: the state has one parameter group, the optimizer %d"):format(#self.param_groups), 2)
    end
    self.lr = meta.lr or self.lr
    self.initial_lr = meta.initial_lr or self.initial_lr
  end
  self.state = {}
  for name, step in pairs(meta.steps or {}) do
    local st = { step = step }
    for _, k in ipairs({ "exp_avg", "exp_avg_sq", "momentum_buffer" }) do
      local t = tensors[k .. "." .. name]
      if t then st[k] = t:clone() end
    end
    self.state[name] = st
  end
end

--- param_groups(source, {weight_decay = 0, lr = nil, no_decay = optim.no_decay,
--   trainable_only = true}) -> {decay group, no-decay group}
-- The Hugging Face Trainer's split (transformers' get_decay_parameter_names):
-- every parameter gets weight_decay except biases and LayerNorm parameters,
-- which get 0. With trainable_only (the default, as the Trainer) only
-- parameters with requires_grad are taken. Pass the result to AdamW / SGD:
--   optim.AdamW(optim.param_groups(model, {weight_decay = 0.01}), {lr = 5e-5})
-- The groups are named "decay" and "no_decay"; either may be empty. A model
-- in source is kept in each group's zero_grad_sources, so opt:zero_grad()
-- resets its gradients to None as for AdamW(model).
function M.param_groups(source, opts)
  opts = opts or {}
  local wd = opts.weight_decay or 0
  local skip = opts.no_decay or M.no_decay
  local decay, nodecay, models = {}, {}, {}
  -- opt:zero_grad() on these groups calls the models' zero_grad, as it does
  -- for AdamW(model): gradients go back to None (torch's set_to_none)
  for _, src in ipairs(sources_list(source)) do
    if type(src) == "table" and src.core and src.zero_grad then models[#models + 1] = src end
  end
  for _, p in ipairs(collect(source)) do
    if opts.trainable_only == false or p.requires_grad then
      if skip(p.name, p) then nodecay[#nodecay + 1] = p else decay[#decay + 1] = p end
    end
  end
  return {
    { params = decay, weight_decay = wd, lr = opts.lr, name = "decay", zero_grad_sources = models },
    { params = nodecay, weight_decay = 0.0, lr = opts.lr, name = "no_decay", zero_grad_sources = models },
  }
end

--- no_decay(name) -> true for the parameters the Hugging Face Trainer does not
-- decay: a name containing "bias", or a parameter of a LayerNorm module,
-- recognized by its module's name ending in "norm" or "norm<digits>" (CLIP's
-- layer_norm1, layer_norm2, pre_layrnorm, post_layernorm, final_layer_norm).
function M.no_decay(name)
  if name:find("bias", 1, true) then return true end
  local module = name:match("([^.]+)%.[^.]+$")
  return module ~= nil and module:match("norm%d*$") ~= nil
end

-- Schedules ------------------------------------------------------------------
--
-- As torch's LambdaLR: each group's lr is its initial_lr (its base lr) times
-- the same factor of the step. sched.base_lrs holds the base lr of each group,
-- sched.base_lr the first one's.

local Schedule = {}
Schedule.__index = Schedule

-- the groups of an optimizer; a plain {lr =, initial_lr =} table is one group
local function groups_of(opt) return rawget(opt, "param_groups") or { opt } end

local function new_schedule(opt, opts, fields)
  local s = setmetatable(fields, Schedule)
  s.optimizer, s.warmup, s.total, s.last_step = opt, opts.warmup or 0, opts.total, 0
  s.base_lrs = {}
  for i, g in ipairs(groups_of(opt)) do
    if g.initial_lr == nil then g.initial_lr = g.lr end
    s.base_lrs[i] = g.initial_lr
  end
  s.base_lr = s.base_lrs[1]
  return s
end

-- set every group's lr for the current step
function Schedule:apply()
  local f = self:factor(self.last_step)
  for i, g in ipairs(groups_of(self.optimizer)) do g.lr = self.base_lrs[i] * f end
  return self.optimizer.lr
end

function Schedule:step()
  self.last_step = self.last_step + 1
  return self:apply()
end

--- The first group's current lr.
function Schedule:get_lr() return self.optimizer.lr end

--- The current lr of every group (torch's get_last_lr()).
function Schedule:get_last_lr()
  local out = {}
  for i, g in ipairs(groups_of(self.optimizer)) do out[i] = g.lr end
  return out
end

--- The schedule's position as a JSON-able table (for checkpoints).
function Schedule:state_dict()
  return { last_step = self.last_step, base_lr = self.base_lr, base_lrs = self.base_lrs, warmup = self.warmup,
    total = self.total }
end

--- Restore state_dict()'s output and set the optimizer's lrs for that step.
-- A state without base_lrs (saved before parameter groups) restores base_lr.
function Schedule:load_state_dict(st)
  self.last_step = st.last_step or self.last_step
  if st.base_lrs then
    if #st.base_lrs ~= #self.base_lrs then
      error(("schedule: the state has %d parameter groups, the optimizer %d"):format(#st.base_lrs, #self.base_lrs), 2)
    end
    self.base_lrs = st.base_lrs
    self.base_lr = st.base_lrs[1]
  elseif st.base_lr then
    self.base_lr = st.base_lr
    self.base_lrs[1] = st.base_lr
  end
  return self:apply()
end

--- LinearSchedule(opt, {warmup = 0, total = N}): transformers'
-- get_linear_schedule_with_warmup (linear warmup, then linear decay to 0).
function M.LinearSchedule(opt, opts)
  opts = opts or {}
  if not opts.total then error("LinearSchedule: total (number of steps) is required", 2) end
  local s = new_schedule(opt, opts, {})
  s.factor = function(self_, k)
    if k < self_.warmup then return k / math.max(1, self_.warmup) end
    return math.max(0, (self_.total - k) / math.max(1, self_.total - self_.warmup))
  end
  s:apply()
  return s
end

--- ConstantSchedule(opt, {warmup = 0}): transformers' get_constant_schedule_with_warmup
-- (linear warmup, then the base lr; warmup 0 is get_constant_schedule).
function M.ConstantSchedule(opt, opts)
  opts = opts or {}
  local s = new_schedule(opt, opts, {})
  s.factor = function(self_, k)
    if k < self_.warmup then return k / math.max(1, self_.warmup) end
    return 1
  end
  s:apply()
  return s
end

--- CosineSchedule(opt, {warmup = 0, total = N, cycles = 0.5}): transformers'
-- get_cosine_schedule_with_warmup.
function M.CosineSchedule(opt, opts)
  opts = opts or {}
  if not opts.total then error("CosineSchedule: total (number of steps) is required", 2) end
  local s = new_schedule(opt, opts, { cycles = opts.cycles or 0.5 })
  s.factor = function(self_, k)
    if k < self_.warmup then return k / math.max(1, self_.warmup) end
    local progress = (k - self_.warmup) / math.max(1, self_.total - self_.warmup)
    return math.max(0, 0.5 * (1 + math.cos(math.pi * self_.cycles * 2 * progress)))
  end
  s:apply()
  return s
end

--- clip_grad_norm(source, max_norm) -> total norm before clipping.
-- torch.nn.utils.clip_grad_norm_: scale every gradient by
-- max_norm / (total + 1e-6) when that is below 1.
function M.clip_grad_norm(source, max_norm)
  local params = source.params and source.kind and source.params or collect(source)
  local grads, ss = {}, 0
  for _, p in ipairs(params) do
    if p.requires_grad then
      local g = p.grad
      if g then
        grads[#grads + 1] = g
        ss = ss + core.sumsq(g)
      end
    end
  end
  local total = math.sqrt(ss)
  local coef = max_norm / (total + 1e-6)
  if coef < 1 then
    for _, g in ipairs(grads) do g:scale_(coef) end
  end
  return total
end

return M
