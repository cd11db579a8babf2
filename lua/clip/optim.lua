--- clip.optim: AdamW and SGD (PyTorch semantics), learning-rate schedules,
-- global gradient-norm clipping.
--
-- An optimizer takes a source of parameters: a clip model, a loss with
-- parameters (SigLIPLoss), a list of Parameter objects, or a list of these.
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

local Optimizer = {}
Optimizer.__index = Optimizer

--- Zero the gradients of every parameter this optimizer holds.
function Optimizer:zero_grad()
  for _, src in ipairs(self.sources) do
    if type(src) == "table" and src.zero_grad and src.core then src:zero_grad() end
  end
  for _, p in ipairs(self.params) do
    local g = p.grad
    if g then g:fill(0) end
  end
end

--- The parameters (Parameter objects) this optimizer holds.
function Optimizer:parameters() return self.params end

local function sources_list(src)
  if type(src) == "table" and (src.core or src.parameters or (src.data and src.name)) then return { src } end
  return src
end

-- An optimizer of this kind over source: self holds the kind's own settings,
-- step its update.
local function new_optimizer(kind, source, lr, self, step)
  self.kind = kind
  self.sources = sources_list(source)
  self.params = collect(source)
  self.lr = lr or 1e-3
  self.initial_lr = self.lr
  self.state = {}
  self.step = step
  return setmetatable(self, Optimizer)
end

--- AdamW(source, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 0.01})
function M.AdamW(source, opts)
  opts = opts or {}
  return new_optimizer("AdamW", source, opts.lr, {
    betas = opts.betas or { 0.9, 0.999 },
    eps = opts.eps or 1e-8,
    weight_decay = opts.weight_decay == nil and 0.01 or opts.weight_decay,
  }, M._adamw_step) -- state: name -> {step, exp_avg, exp_avg_sq}
end

function M._adamw_step(self)
  for _, p in ipairs(self.params) do
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
        core.optim_adamw(p.data, st.exp_avg, st.exp_avg_sq, g, self.lr, self.betas[1], self.betas[2],
          self.eps, self.weight_decay, st.step)
      end
    end
  end
end

--- SGD(source, {lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0, nesterov = false})
function M.SGD(source, opts)
  opts = opts or {}
  return new_optimizer("SGD", source, opts.lr, {
    momentum = opts.momentum or 0,
    dampening = opts.dampening or 0,
    weight_decay = opts.weight_decay or 0,
    nesterov = opts.nesterov or false,
  }, function(s)
    for _, p in ipairs(s.params) do
      if p.requires_grad then
        local g = p.grad
        if g then
          local st = s.state[p.name]
          local first = false
          if not st then
            st = { step = 0, momentum_buffer = s.momentum ~= 0 and core.zeros(p.data:shape()) or nil }
            s.state[p.name] = st
            first = true
          end
          st.step = st.step + 1
          core.optim_sgd(p.data, st.momentum_buffer, g, s.lr, s.momentum, s.dampening, s.weight_decay,
            s.nesterov, first)
        end
      end
    end
  end)
end

--- Optimizer state as tensors + a JSON-able table (for checkpoints).
function Optimizer:state_dict()
  local tensors, meta = {}, { kind = self.kind, lr = self.lr, initial_lr = self.initial_lr, steps = {} }
  for name, st in pairs(self.state) do
    meta.steps[name] = st.step
    for k, v in pairs(st) do
      if type(v) == "userdata" then tensors[k .. "." .. name] = v end
    end
  end
  return tensors, meta
end

function Optimizer:load_state_dict(tensors, meta)
  self.lr = meta.lr or self.lr
  self.initial_lr = meta.initial_lr or self.initial_lr
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

-- Schedules ------------------------------------------------------------------

local Schedule = {}
Schedule.__index = Schedule

function Schedule:step()
  self.last_step = self.last_step + 1
  self.optimizer.lr = self.base_lr * self:factor(self.last_step)
  return self.optimizer.lr
end

function Schedule:get_lr() return self.optimizer.lr end

--- LinearSchedule(opt, {warmup = 0, total = N}): transformers'
-- get_linear_schedule_with_warmup (linear warmup, then linear decay to 0).
function M.LinearSchedule(opt, opts)
  opts = opts or {}
  if not opts.total then error("LinearSchedule: total (number of steps) is required", 2) end
  local s = setmetatable({ optimizer = opt, warmup = opts.warmup or 0, total = opts.total,
    base_lr = opt.initial_lr or opt.lr, last_step = 0 }, Schedule)
  s.factor = function(self_, k)
    if k < self_.warmup then return k / math.max(1, self_.warmup) end
    return math.max(0, (self_.total - k) / math.max(1, self_.total - self_.warmup))
  end
  opt.lr = s.base_lr * s:factor(0)
  return s
end

--- CosineSchedule(opt, {warmup = 0, total = N, cycles = 0.5}): transformers'
-- get_cosine_schedule_with_warmup.
function M.CosineSchedule(opt, opts)
  opts = opts or {}
  if not opts.total then error("CosineSchedule: total (number of steps) is required", 2) end
  local s = setmetatable({ optimizer = opt, warmup = opts.warmup or 0, total = opts.total,
    cycles = opts.cycles or 0.5, base_lr = opt.initial_lr or opt.lr, last_step = 0 }, Schedule)
  s.factor = function(self_, k)
    if k < self_.warmup then return k / math.max(1, self_.warmup) end
    local progress = (k - self_.warmup) / math.max(1, self_.total - self_.warmup)
    return math.max(0, 0.5 * (1 + math.cos(math.pi * self_.cycles * 2 * progress)))
  end
  opt.lr = s.base_lr * s:factor(0)
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
