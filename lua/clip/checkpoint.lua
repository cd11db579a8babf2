--- clip.checkpoint: training checkpoints that resume exactly.
--
--   clip.checkpoint.save(dir, {model = m, optimizer = opt, scheduler = sched, step = k,
--                              loss = l, data = {...}, rng = {...}, extra = {...}})
--   local step, extra, state = clip.checkpoint.load(dir, {model = m, optimizer = opt,
--                                                         scheduler = sched, loss = l})
--
-- A checkpoint directory holds model/ (the Hugging Face layout, loadable by
-- clip.load and PyTorch), optimizer.safetensors (AdamW moments / SGD momentum
-- buffers), loss.safetensors (the loss's own parameters, SigLIP's temperature
-- and bias, when it has any) and trainer_state.json (step, learning rates,
-- per-parameter step counts, parameter groups, schedule position, hyper-parameters, the data
-- position and RNG state a trainer passes as `data` / `rng`, your extra table).
-- Checkpoints written before parameter groups load into one-group optimizers.
--
-- Saving is atomic at the directory level: everything is written into
-- "<dir>.tmp" (trainer_state.json last), which is then renamed to <dir>; a
-- directory being replaced is moved aside first and removed after. An
-- interrupted save leaves at most a "<dir>.tmp" behind and every earlier
-- checkpoint as it was.
--
-- load() checks everything first - the files, every parameter's name and shape,
-- the model's configuration, the optimizer's kind - and only then restores
-- weights, optimizer and schedule in place: a checkpoint of another model is
-- refused with an error naming the checkpoint and the mismatch, and leaves the
-- model untouched.
local core = require "clip.core"

local M = {}

local function join(dir, name) return dir:gsub("/+$", "") .. "/" .. name end

--- Remove a file or a directory tree (no error when it does not exist).
function M.remove_tree(path)
  if core.is_dir(path) then
    for _, name in ipairs(core.listdir(path) or {}) do M.remove_tree(join(path, name)) end
  end
  os.remove(path)
end

local function shape_str(s) return table.concat(s, "x") end

local function loss_params(loss)
  if type(loss) == "table" and type(loss.parameters) == "function" then
    local ok, ps = pcall(loss.parameters, loss)
    if ok and type(ps) == "table" and #ps > 0 then return ps end
  end
  return nil
end

--- The names of the model's parameters that require gradients, in order.
function M.trainable_names(model)
  local out = {}
  for _, it in ipairs(model:parameter_info()) do
    if model.core:requires_grad(it.name) then out[#out + 1] = it.name end
  end
  return out
end

local function write_all(dir, st)
  assert(core.mkdir_p(dir))
  st.model:save(join(dir, "model"))
  local state = { step = st.step or 0, extra = st.extra, data = st.data, rng = st.rng, format = "clip-checkpoint-1",
    trainable = M.trainable_names(st.model) }
  if st.optimizer then
    local tensors, meta = st.optimizer:state_dict()
    local ok, err = core.save_safetensors(join(dir, "optimizer.safetensors"), tensors)
    if ok == nil and err then error(err, 0) end
    meta.hyper = {
      betas = st.optimizer.betas, eps = st.optimizer.eps, weight_decay = st.optimizer.weight_decay,
      momentum = st.optimizer.momentum, dampening = st.optimizer.dampening, nesterov = st.optimizer.nesterov,
    }
    state.optimizer = meta
  end
  if st.scheduler then
    state.scheduler = st.scheduler:state_dict()
  end
  local lp = loss_params(st.loss)
  if lp then
    local t = {}
    for _, p in ipairs(lp) do t[p.name] = p.data end
    core.save_safetensors(join(dir, "loss.safetensors"), t)
  end
  local ok, err = core.write_file(join(dir, "trainer_state.json"), core.json_encode(state, true) .. "\n")
  if not ok then error(err, 0) end
end

function M.save(dir, st)
  if type(st) ~= "table" or not st.model then error("checkpoint.save: {model = ...} is required", 2) end
  dir = dir:gsub("/+$", "")
  local tmp, old = dir .. ".tmp", dir .. ".old"
  M.remove_tree(tmp)
  local ok, err = pcall(write_all, tmp, st)
  if not ok then
    M.remove_tree(tmp)
    error(("checkpoint.save: %s: %s"):format(dir, tostring(err)), 2)
  end
  if core.is_dir(dir) then
    M.remove_tree(old)
    assert(os.rename(dir, old))
  end
  local rok, rerr = os.rename(tmp, dir)
  if not rok then error(("checkpoint.save: %s: %s"):format(dir, tostring(rerr)), 2) end
  M.remove_tree(old)
  return dir
end

--- True when dir holds a finished checkpoint (trainer_state.json written).
function M.is_checkpoint(dir) return core.is_file(join(dir, "trainer_state.json")) end

--- read_state(dir) -> the decoded trainer_state.json (errors name the file).
function M.read_state(dir)
  local path = join(dir, "trainer_state.json")
  local f = io.open(path, "rb")
  if not f then error(path .. ": missing (not a finished checkpoint)", 2) end
  local s = f:read("a")
  f:close()
  local ok, state = pcall(core.json_decode, s, path)
  if not ok then error(state, 2) end
  if type(state) ~= "table" or state.format ~= "clip-checkpoint-1" then
    error(path .. ": not a clip checkpoint (no format \"clip-checkpoint-1\")", 2)
  end
  return state
end

-- configuration keys that change the function the weights compute
local CONFIG_KEYS = { "hidden_act", "layer_norm_eps", "num_attention_heads", "eos_token_id" }

local function check_config(dir, model)
  local path = join(dir, "model/config.json")
  local f = io.open(path, "rb")
  if not f or not model.config then
    if f then f:close() end
    return
  end
  local ok, cfg = pcall(core.json_decode, f:read("a"), path)
  f:close()
  if not ok or type(cfg) ~= "table" then return end
  for _, tower in ipairs({ "text_config", "vision_config" }) do
    local a, b = cfg[tower] or {}, model.config[tower] or {}
    for _, k in ipairs(CONFIG_KEYS) do
      local x, y = a[k], b[k]
      local same = x == y or (type(x) == "number" and type(y) == "number" and math.abs(x - y) <= 1e-6 * math.abs(x))
      if x ~= nil and y ~= nil and not same then
        error(("checkpoint %s is from another model: %s.%s is %s there, %s in this model")
          :format(dir, tower, k, tostring(a[k]), tostring(b[k])), 0)
      end
    end
  end
end

function M.load(dir, st)
  if type(st) ~= "table" or not st.model then error("checkpoint.load: {model = ...} is required", 2) end
  dir = dir:gsub("/+$", "")
  local ok, state = pcall(M.read_state, dir)
  if not ok then error(state, 2) end
  -- 1. check everything
  local wpath = join(dir, "model/model.safetensors")
  if not core.is_file(wpath) then error(("checkpoint %s: %s is missing"):format(dir, wpath), 2) end
  local w = core.load_safetensors(wpath)
  local info = st.model:parameter_info()
  local known = {}
  for _, it in ipairs(info) do
    known[it.name] = true
    local t = w[it.name]
    if not t then
      error(("checkpoint %s is from another model: it has no tensor '%s'"):format(dir, it.name), 2)
    end
    local ts, ms = t:shape(), it.shape
    if shape_str(ts) ~= shape_str(ms) then
      error(("checkpoint %s is from another model: tensor '%s' is %s there, %s in this model")
        :format(dir, it.name, shape_str(ts), shape_str(ms)), 2)
    end
  end
  for name in pairs(w) do
    if not known[name] and not name:match("position_ids$") then
      error(("checkpoint %s is from another model: this model has no parameter '%s'"):format(dir, name), 2)
    end
  end
  local cok, cerr = pcall(check_config, dir, st.model)
  if not cok then error(cerr, 2) end
  if state.trainable then
    local was, now = {}, {}
    for _, n in ipairs(state.trainable) do was[n] = true end
    for _, n in ipairs(M.trainable_names(st.model)) do
      now[n] = true
      if not was[n] then
        error(("checkpoint %s was saved with '%s' frozen; it is trainable here"):format(dir, n), 2)
      end
    end
    for _, n in ipairs(state.trainable) do
      if not now[n] then error(("checkpoint %s was saved with '%s' trainable; it is frozen here"):format(dir, n), 2) end
    end
  end
  local opt_tensors
  if st.optimizer and state.optimizer then
    if state.optimizer.kind ~= st.optimizer.kind then
      error(("checkpoint %s: optimizer %s, but a %s was given"):format(dir, tostring(state.optimizer.kind),
        tostring(st.optimizer.kind)), 2)
    end
    local trainable = {}
    for _, p in ipairs(st.optimizer:parameters()) do
      if p.requires_grad then trainable[p.name] = true end
    end
    for name in pairs(state.optimizer.steps or {}) do
      if not trainable[name] then
        error(("checkpoint %s: the optimizer state holds '%s', which is not trainable here (was it saved with "
          .. "other parameters trainable?)"):format(dir, name), 2)
      end
    end
    opt_tensors = core.load_safetensors(join(dir, "optimizer.safetensors"))
  end
  local lp, lw = loss_params(st.loss), nil
  if lp then
    local lpath = join(dir, "loss.safetensors")
    if not core.is_file(lpath) then
      error(("checkpoint %s: the loss has parameters but the checkpoint has no loss.safetensors"):format(dir), 2)
    end
    lw = core.load_safetensors(lpath)
    for _, p in ipairs(lp) do
      if not lw[p.name] then error(("checkpoint %s: loss.safetensors has no '%s'"):format(dir, p.name), 2) end
    end
  end
  -- 2. restore
  for _, it in ipairs(info) do st.model:param(it.name):copy(w[it.name]) end
  if opt_tensors then st.optimizer:load_state_dict(opt_tensors, state.optimizer) end
  if lp then
    for _, p in ipairs(lp) do p.data:copy(lw[p.name]) end
  end
  if st.scheduler and state.scheduler then
    st.scheduler:load_state_dict(state.scheduler)
  end
  return state.step, state.extra, state
end

return M
