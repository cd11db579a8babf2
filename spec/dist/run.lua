-- spec/dist/run.lua - one training run for spec/dist_spec.lua, in one process or
-- as one rank under mpirun:
--   lua5.4 spec/dist/run.lua LOSS SET BATCH OUT [distributed [local]]
-- LOSS: mnrl | mnsrl | clip | siglip | triplet | cmnrl (GradCache, mini-batches
-- of 1 row); local: distributed = {local_loss = true};
-- SET: projections (frozen towers: the frozen-feature cache) | block (the last
-- block of both towers and the projections); BATCH: rows per rank (per process).
-- Three optimizer steps of clip.Trainer (SGD with momentum, max_grad_norm 1) on
-- examples/data/pairs.csv (16 rows, no shuffle-dependent drop: 3 steps of 6 rows
-- at 3 ranks x 2 end with an uneven 4-row batch). Writes OUT.rank<r>.safetensors:
-- the trainable weights after the last step ("w:<name>") and the gradients the
-- last step used ("g:<name>", after the all-reduce and clipping), and
-- OUT.rank<r>.json: the loss and gradient norm of each step.
local clip = require "clip"

local lname, set, b, out, distributed = arg[1], arg[2], math.tointeger(tonumber(arg[3])), arg[4], arg[5] == "distributed"
local local_loss = arg[6] == "local"
clip.set_num_threads(1) -- the ranks share the machine's cores
local root = debug.getinfo(1, "S").source:sub(2):match("(.*/)spec/dist/") or "./"

local function main()
  local m = clip.load(root .. "spec/fixtures/models/tiny")
  if set == "projections" then
    m:train_only({ "projection" })
  else
    m:train_only({ "projection", "text_model.encoder.layers.1.", "vision_model.encoder.layers.1." })
  end
  local ds = clip.data.load(root .. "examples/data/pairs.csv", { images = { "image" } })
  local LOSS = { mnrl = "mnrl", mnsrl = "mnsrl", clip = "clip", siglip = "siglip", triplet = "triplet", cmnrl = "cmnrl" }
  local three = lname:find("mnrl") or lname == "triplet"
  local cols = { "image", "title" }
  if three then cols = { anchor = "image", positive = "title", negative = "title_neg" } end
  local loss_opts = { modalities = three and { anchor = "image", positive = "text", negative = "text" }
    or { "image", "text" } }
  if lname == "cmnrl" then loss_opts.mini_batch_size = 1 end
  local t = clip.Trainer({ model = m, loss = LOSS[lname], loss_opts = loss_opts, train = ds, columns = cols,
    optimizer = "SGD", lr = 0.05, momentum = 0.9, max_steps = 3, batch_size = b, progress = false,
    distributed = distributed and (local_loss and { local_loss = true } or true) or nil, seed = 7 })
  local grads = {}
  local opt = t.optimizer
  local step = opt.step
  opt.step = function(self, ...)
    grads = {}
    for _, p in ipairs(self:parameters()) do
      if p.requires_grad and p.grad then grads["g:" .. p.name] = p.grad:clone() end
    end
    return step(self, ...)
  end
  local losses, norms = {}, {}
  t.o.on_step = function(_, rec) losses[#losses + 1] = rec.loss; norms[#norms + 1] = rec.grad_norm end
  t:fit()
  local rank = t.rank
  local tensors = grads
  for _, p in ipairs(opt:parameters()) do
    if p.requires_grad then tensors["w:" .. p.name] = p.data:clone() end
  end
  clip.save_safetensors(("%s.rank%d.safetensors"):format(out, rank), tensors)
  local f = assert(io.open(("%s.rank%d.json"):format(out, rank), "wb"))
  f:write(clip.json.encode({ loss = losses, grad_norm = norms, world = t.world, rank = rank,
    rerun_exact = t.loss.rerun_exact, local_loss = t.loss.local_loss or false }))
  f:close()
  t:close()
end

if distributed then clip.dist.run(main) else main() end
