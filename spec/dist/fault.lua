-- spec/dist/fault.lua - a data-parallel training run with an injected fault, for
-- spec/dist_spec.lua's fault cases; one rank under mpirun:
--   CLIP_DIST_FAULT=KIND:RANK[:STEP] lua5.4 spec/dist/fault.lua OUT [resume]
-- Six SGD steps (momentum 0.9) of CLIPLoss with the last blocks and the
-- projections trainable, batch 2 per rank, a checkpoint every 2 steps in
-- OUT/run (resume: continue the last one). The collectives' timeout comes from
-- CLIP_DIST_TIMEOUT (the spec sets 5 s). KIND, done by rank RANK:
--   raise    raises an error at the start of step STEP; the script ends through
--            clip.dist.run (the error on stderr, then MPI_Abort ends every rank)
--   plain    the same error, the script without clip.dist.run: lua5.4 exits 1
--            and mpirun ends the other ranks
--   stall    stops at the start of step STEP without raising, computing for 120 s
--            outside MPI (a rank that hangs): the others time out
--   kill     kills itself (SIGKILL) at the start of step STEP
--   save     (rank 0) exits while writing the checkpoint of step STEP (its model
--            written, trainer_state.json not yet)
--   model    loads another model (spec/fixtures/models/tiny-gelu-fp16)
--   weights  adds 1 to one frozen weight after loading
--   options  another learning rate
--   data     drops the last row of the training set
--   nodata   reads its training set from a file that does not exist (the loading
--            runs in clip.dist.checked)
-- model, weights, options, data and nodata raise the same error on every rank
-- (MPI still works after such an error): each rank writes it to OUT.rank<r>.err,
-- then the ranks meet in a barrier and exit 1. Every run that ends writes
-- OUT.rank<r>.safetensors: the trainable weights.
local clip = require "clip"

local out, resume = arg[1], arg[2] == "resume"
clip.set_num_threads(1)
local root = debug.getinfo(1, "S").source:sub(2):match("(.*/)spec/dist/") or "./"
local kind, frank, fstep = (os.getenv("CLIP_DIST_FAULT") or ""):match("^(%a+):(%d+):?(%d*)$")
frank, fstep = tonumber(frank), tonumber(fstep)
local dist = clip.dist

local function main(rank)
  local mine = kind and rank == frank
  local model_dir = (mine and kind == "model") and "spec/fixtures/models/tiny-gelu-fp16" or "spec/fixtures/models/tiny"
  -- (tiny-gelu-fp16 has no tokenizer files; the run fails before a text is read)
  local m = clip.load(root .. model_dir, { tokenizer = model_dir:find("fp16") == nil })
  m:train_only({ "projection", "text_model.encoder.layers.1.", "vision_model.encoder.layers.1." })
  if mine and kind == "weights" then
    local p = m:param("vision_model.encoder.layers.0.mlp.fc1.bias")
    p[1] = p[1] + 1
  end
  local csv = root .. "examples/data/pairs.csv"
  if mine and kind == "nodata" then csv = root .. "examples/data/missing-on-this-rank.csv" end
  local ds = dist.checked("loading the training set", clip.data.load, csv, { images = { "image" } })
  if mine and kind == "data" then ds = ds:slice(1, ds:size() - 1) end
  local t = clip.Trainer({ model = m, loss = "clip", loss_opts = { modalities = { "image", "text" } }, train = ds,
    columns = { "image", "title" }, optimizer = "SGD", lr = (mine and kind == "options") and 0.07 or 0.05,
    momentum = 0.9, max_steps = 6, batch_size = 2, save_every = 2, out = out .. "/run", resume = resume,
    progress = false, chart = false, distributed = true, seed = 7 })
  if mine and (kind == "raise" or kind == "plain" or kind == "stall" or kind == "kill") then
    local n, backward = 0, t.loss.backward
    t.loss.backward = function(self, ...)
      n = n + 1
      if t.state.step + 1 == fstep then
        if kind == "kill" then os.execute("kill -9 $PPID") end
        if kind == "stall" then
          local t0 = os.clock()
          while os.clock() - t0 < 120 do end
        end
        error(("injected fault on rank %d at step %d"):format(rank, fstep), 0)
      end
      return backward(self, ...)
    end
  end
  if mine and kind == "save" then
    local save, saves = m.save, 0
    m.save = function(self, dir, ...)
      local r = save(self, dir, ...)
      if dir:find(("step%%-%d%%.tmp"):format(fstep)) then os.exit(9) end
      saves = saves + 1
      return r
    end
  end
  t:fit()
  local tensors = {}
  for _, p in ipairs(t.optimizer:parameters()) do
    if p.requires_grad then tensors[p.name] = p.data:clone() end
  end
  clip.save_safetensors(("%s.rank%d.safetensors"):format(out, rank), tensors)
  t:close()
end

local AGREED = { model = true, weights = true, options = true, data = true, nodata = true }
if kind == "plain" then
  local rank = dist.init()
  main(rank)
  dist.finalize()
elseif AGREED[kind] then
  local rank = dist.init()
  local ok, err = pcall(main, rank)
  if ok then
    dist.finalize()
  else
    local f = assert(io.open(("%s.rank%d.err"):format(out, rank), "wb"))
    f:write(tostring(err))
    f:close()
    dist.barrier()
    dist.finalize()
    os.exit(1)
  end
else
  dist.run(main)
end
