--- clip.checkpoint: training checkpoints that resume exactly.
--
--   clip.checkpoint.save(dir, {model = m, optimizer = opt, scheduler = sched, step = k, extra = {...}})
--   local step, extra = clip.checkpoint.load(dir, {model = m, optimizer = opt, scheduler = sched})
--
-- A checkpoint directory holds model/ (the Hugging Face layout, loadable by
-- clip.load and PyTorch), optimizer.safetensors (AdamW moments / SGD momentum
-- buffers) and trainer_state.json (step, learning rates, per-parameter step
-- counts, parameter groups, schedule position, hyper-parameters, your extra
-- table). Checkpoints written before parameter groups load into one-group
-- optimizers. Every file
-- is written to a temporary name and renamed into place; trainer_state.json
-- is written last, so a directory without it is an unfinished checkpoint.
-- load() restores weights, optimizer and schedule in place.
local core = require "clip.core"

local M = {}

local function join(dir, name) return dir:gsub("/+$", "") .. "/" .. name end

function M.save(dir, st)
  if type(st) ~= "table" or not st.model then error("checkpoint.save: {model = ...} is required", 2) end
  assert(core.mkdir_p(dir))
  st.model:save(join(dir, "model"))
  local state = { step = st.step or 0, extra = st.extra, format = "clip-checkpoint-1" }
  if st.optimizer then
    local tensors, meta = st.optimizer:state_dict()
    core.save_safetensors(join(dir, "optimizer.safetensors"), tensors)
    meta.hyper = {
      betas = st.optimizer.betas, eps = st.optimizer.eps, weight_decay = st.optimizer.weight_decay,
      momentum = st.optimizer.momentum, dampening = st.optimizer.dampening, nesterov = st.optimizer.nesterov,
    }
    state.optimizer = meta
  end
  if st.scheduler then
    state.scheduler = st.scheduler:state_dict()
  end
  local ok, err = core.write_file(join(dir, "trainer_state.json"), core.json_encode(state, true) .. "\n")
  if not ok then error(err, 2) end
  return dir
end

function M.load(dir, st)
  if type(st) ~= "table" or not st.model then error("checkpoint.load: {model = ...} is required", 2) end
  local path = join(dir, "trainer_state.json")
  local f = io.open(path, "rb")
  if not f then error(path .. ": missing (not a finished checkpoint)", 2) end
  local state = core.json_decode(f:read("a"), path)
  f:close()
  -- weights, copied into the live parameters
  local wpath = join(dir, "model/model.safetensors")
  local w = core.load_safetensors(wpath)
  for _, it in ipairs(st.model:parameter_info()) do
    local t = w[it.name]
    if not t then error(("%s: missing tensor '%s'"):format(wpath, it.name), 2) end
    if t:numel() ~= it.numel then error(("%s: tensor '%s' has %d values, the model %d"):format(wpath, it.name, t:numel(), it.numel), 2) end
    st.model:param(it.name):copy(t)
  end
  if st.optimizer and state.optimizer then
    if state.optimizer.kind ~= st.optimizer.kind then
      error(("%s: optimizer %s, but a %s was given"):format(path, tostring(state.optimizer.kind), st.optimizer.kind), 2)
    end
    local tensors = core.load_safetensors(join(dir, "optimizer.safetensors"))
    st.optimizer:load_state_dict(tensors, state.optimizer)
  end
  if st.scheduler and state.scheduler then
    st.scheduler:load_state_dict(state.scheduler)
  end
  return state.step, state.extra
end

return M
