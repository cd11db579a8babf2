--- clip.guard: stop training at the first non-finite loss or gradient, before
-- the optimizer changes anything.
--
--   local guard = require "clip.guard"
--   for step = 1, n do
--     local loss_value = guard.step(opt, loss, next_batch(), { step = step, max_grad_norm = 1.0 })
--   end
--
-- A NaN or Inf loss (or gradient) raises
--   "training step 7: loss is NaN; parameters and optimizer state are unchanged (as before step 7)"
-- and leaves every parameter, and the optimizer's moments and step counts,
-- exactly as they were before the step: the check runs after backward (which
-- only writes gradients) and before opt:step(); the gradients of the failed
-- step are zeroed. Catch the error (pcall) to lower the learning rate, skip
-- the batch, or save the last good model.
local core = require "clip.core"
local optim = require "clip.optim"

local M = {}

local function describe(v)
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  return tostring(v)
end

local function fail(step, what)
  error(("training step %d: %s; parameters and optimizer state are unchanged (as before step %d)")
    :format(step, what, step), 0)
end

--- Raise (naming the step) unless the loss value is a finite number.
function M.check_loss(value, step)
  if type(value) ~= "number" or value ~= value or value == math.huge or value == -math.huge then
    fail(step or 0, "loss is " .. (type(value) == "number" and describe(value) or type(value)))
  end
  return value
end

--- Raise (naming the step and the first bad parameter) unless every gradient
-- the optimizer would use is finite.
function M.check_grads(opt, step)
  for _, p in ipairs(opt:parameters()) do
    if p.requires_grad then
      local g = p.grad
      if g and not core.all_finite(g) then
        fail(step or 0, ("gradient of '%s' holds NaN or Inf"):format(p.name))
      end
    end
  end
end

--- A guarded backward: loss:backward(batch, {scale}) whose failure or non-finite
-- loss zeroes the gradients and raises "training step N: ...; parameters and
-- optimizer state are unchanged". Returns the loss value. Several calls (gradient
-- accumulation) may precede one M.check_step.
function M.backward(opt, loss, batch, step, scale)
  local ok, value = pcall(loss.backward, loss, batch, scale and { scale = scale } or nil)
  if not ok then
    opt:zero_grad()
    -- without the Lua position of the raise ("lua/clip/loss.lua:223: ")
    local msg = tostring(value):gsub("^[^%s:]+%.lua:%d+: ", "")
    -- the loss kernels refuse a non-finite loss before writing any gradient
    if msg:find("not finite", 1, true) then fail(step, "loss is NaN or Inf (" .. msg .. ")") end
    fail(step, msg)
  end
  if type(value) ~= "number" or value ~= value or value == math.huge or value == -math.huge then
    opt:zero_grad()
    M.check_loss(value, step)
  end
  return value
end

--- Before opt:step(): every gradient finite, or the gradients are zeroed and
-- the step's error raised (parameters and optimizer state untouched).
function M.check_step(opt, step)
  local gok, gerr = pcall(M.check_grads, opt, step)
  if not gok then
    opt:zero_grad()
    error(gerr, 0)
  end
end

--- One guarded training step: backward, checks, optional gradient clipping,
-- opt:step(), optional schedule step, zero_grad. Returns the loss value.
-- opts: step (number used in messages; default: one more than the last
--       guarded step of this optimizer), max_grad_norm (clip first),
--       schedule (a clip.optim schedule to advance), scale (loss:backward's).
function M.step(opt, loss, batch, opts)
  opts = opts or {}
  local step = opts.step or ((opt._guard_steps or 0) + 1)
  local value = M.backward(opt, loss, batch, step, opts.scale)
  M.check_step(opt, step)
  if opts.max_grad_norm then optim.clip_grad_norm(opt, opts.max_grad_norm) end
  opt:step()
  if opts.schedule then opts.schedule:step() end
  opt:zero_grad()
  opt._guard_steps = step
  return value
end

return M
