--- bench/dist_bench.lua - data parallel on one machine: ranks against threads (issue 16,
-- docs/distributed.md "Scaling"). `make bench-dist` runs it with the MPI build.
--
-- The driver (no --worker) runs three configurations of the same work and prints a
-- table: 1 rank x 1 thread, 1 rank x 2 threads, 2 ranks x 1 thread (mpirun):
--   step   one training step of a ViT-B/32-shaped random model (bench/models/b32):
--          CLIPLoss over --batch (16) (image, caption) pairs in all - random pixels,
--          bench/captions.lua's 15-token captions - with the last 2 blocks of both towers,
--          the final norms and the projections trainable: forward, backward (2 ranks:
--          the embeddings all-gathered, then the gradients SUM-all-reduced in 25 MiB
--          buckets as the Trainer does), gradient clipping, AdamW step
--   embed  --images (64) images embedded (2 ranks: half each, then all_gather)
-- and, with 2 ranks, the SUM all-reduce of float32 buffers as large as the gradients
-- of ViT-B/32 and ViT-L/14 (parameter counts computed from their configurations,
-- bench/make_models.lua's), polled against the timeout (clip.dist's default) and
-- blocking (timeout 0: MPI_Wait). Times are medians of --rounds (3) after one warm-up.
--
--   lua5.4 bench/dist_bench.lua [--model bench/models/b32] [--rounds N] [--batch N]
--                               [--images N] [--only step,embed,allreduce]
-- The machine's load (uptime) is printed before and after: on a shared machine the
-- numbers move with it.
local clip = require "clip"
local core = clip.core

local opts = { model = "bench/models/b32", rounds = 3, batch = 16, images = 64, threads = 1, only = "step,embed,allreduce" }
local worker = false
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    if a == "--worker" then worker = true
    elseif a:match("^%-%-") and arg[i + 1] then
      local k = a:sub(3)
      if opts[k] == nil then error("dist_bench: unknown option " .. a) end
      opts[k] = type(opts[k]) == "number" and assert(tonumber(arg[i + 1]), a .. " expects a number") or arg[i + 1]
      i = i + 1
    else
      error("dist_bench: unknown argument " .. a)
    end
    i = i + 1
  end
end
local function want(what) return (("," .. opts.only .. ",")):find("," .. what .. ",", 1, true) ~= nil end

local clock = require("clip.progress").clock

local median = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "median.lua")

-- Parameters of a CLIP model from its configuration (transformers' CLIPModel):
-- per layer 4 (w x w + w) attention, 2 LayerNorms (2w each), fc1 (w x f + f), fc2 (f x w + w)
local function layer_params(w, f) return 4 * (w * w + w) + 4 * w + (w * f + f) + (f * w + w) end
local function clip_params(c)
  local t, v = c.text_config, c.vision_config
  local tw, vw, proj = t.hidden_size, v.hidden_size, c.projection_dim
  local text = t.vocab_size * tw + t.max_position_embeddings * tw
    + t.num_hidden_layers * layer_params(tw, t.intermediate_size) + 2 * tw + tw * proj
  local grid = v.image_size // v.patch_size
  local vision = v.num_channels * v.patch_size * v.patch_size * vw + vw + (grid * grid + 1) * vw
    + 2 * vw + v.num_hidden_layers * layer_params(vw, v.intermediate_size) + 2 * vw + vw * proj
  return text + vision + 1 -- logit_scale
end
-- bench/make_models.lua's configurations
local CONFIGS = {
  ["ViT-B/32"] = { projection_dim = 512,
    text_config = { hidden_size = 512, intermediate_size = 2048, num_hidden_layers = 12, vocab_size = 49408,
      max_position_embeddings = 77 },
    vision_config = { hidden_size = 768, intermediate_size = 3072, num_hidden_layers = 12, patch_size = 32,
      image_size = 224, num_channels = 3 } },
  ["ViT-L/14"] = { projection_dim = 768,
    text_config = { hidden_size = 768, intermediate_size = 3072, num_hidden_layers = 12, vocab_size = 49408,
      max_position_embeddings = 77 },
    vision_config = { hidden_size = 1024, intermediate_size = 4096, num_hidden_layers = 24, patch_size = 14,
      image_size = 224, num_channels = 3 } },
}
local ORDER = { "ViT-B/32", "ViT-L/14" }

-- Worker ------------------------------------------------------------------------------

local function run_worker()
  clip.set_num_threads(opts.threads)
  local dist = clip.dist
  local rank, world = 0, 1
  if os.getenv("OMPI_COMM_WORLD_SIZE") or os.getenv("PMI_SIZE") then rank, world = dist.init() end
  local res = { ranks = world, threads = opts.threads }
  local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
  local model = clip.load(opts.model, { tokenizer = false })
  -- the formula against the model it describes
  res.params_model = model:count_parameters()
  res.params_formula = clip_params(model.config)

  local function sync() if world > 1 then dist.barrier() end end

  if want("step") then
    model:train_only({ "projection", "post_layernorm", "final_layer_norm" })
    model:set_trainable("^vision_model%.encoder%.layers%.1[01]%.", true)
    model:set_trainable("^text_model%.encoder%.layers%.1[01]%.", true)
    local loss = clip.loss.CLIPLoss(model, { modalities = { "image", "text" } })
    if world > 1 then loss:distributed(dist) end
    local opt = clip.optim.AdamW(model, { lr = 1e-5, weight_decay = 0 })
    local B = opts.batch
    local lo, hi = dist.shard(B, rank, world)
    local px = core.rand({ B, 3, 224, 224 }, 11)
    local caps = dofile(here .. "captions.lua")(B, 1)
    local batch = { px:rows(lo, hi), table.move(caps, lo, hi, 1, {}) }
    local grads = {}
    local function one()
      sync()
      local t0 = clock()
      loss:backward(batch)
      local t1 = clock()
      if world > 1 then
        grads = {}
        for _, p in ipairs(opt:parameters()) do if p.requires_grad and p.grad then grads[#grads + 1] = p.grad end end
        dist.allreduce_many(grads, "sum")
      end
      local t2 = clock()
      clip.optim.clip_grad_norm(opt, 1.0)
      opt:step()
      opt:zero_grad()
      return clock() - t0, t2 - t1
    end
    one()
    local ts, ar = {}, {}
    for r = 1, opts.rounds do ts[r], ar[r] = one() end
    local _, trainable = model:count_parameters()
    res.step = median(ts)
    res.step_allreduce = median(ar)
    res.trainable = trainable
  end

  if want("embed") then
    local N = opts.images
    local lo, hi = dist.shard(N, rank, world)
    local px = core.rand({ N, 3, 224, 224 }, 12):rows(lo, hi)
    local function one()
      sync()
      local t0 = clock()
      local e = model:encode_images(px, { batch_size = 32 })
      if world > 1 then e = dist.all_gather(e) end
      assert(e:size(1) == N)
      return clock() - t0
    end
    one()
    local ts = {}
    for r = 1, opts.rounds do ts[r] = one() end
    res.embed = median(ts)
  end
  model:close()

  if want("allreduce") and world > 1 then
    res.allreduce = {}
    for _, name in ipairs(ORDER) do
      local n = clip_params(CONFIGS[name])
      local list, left, chunk = {}, n, 8 * 1024 * 1024
      while left > 0 do
        list[#list + 1] = core.full({ math.min(chunk, left) }, 1 / 1024)
        left = left - chunk
      end
      local row = { name = name, params = n }
      for _, mode in ipairs({ "polled", "blocking" }) do
        local old = dist.get_timeout()
        if mode == "blocking" then dist.set_timeout(0) end
        local function one()
          sync()
          local t0 = clock()
          dist.allreduce_many(list, "sum")
          return clock() - t0
        end
        one()
        local ts = {}
        for r = 1, opts.rounds do ts[r] = one() end
        dist.set_timeout(old)
        row[mode] = median(ts)
      end
      res.allreduce[#res.allreduce + 1] = row
      list = nil
      collectgarbage()
    end
  end

  if rank == 0 then
    io.stdout:write("RESULT ", clip.json.encode(res), "\n")
    io.stdout:flush()
  end
  if world > 1 then dist.finalize() end
end

if worker then
  run_worker()
  return
end

-- Driver --------------------------------------------------------------------------------

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok = p:close()
  return ok, out
end

local function uptime() return (select(2, sh("uptime")):gsub("^%s+", ""):gsub("%s+$", "")) end

local self = arg[0]
local common = ("--model %q --rounds %d --batch %d --images %d --only %q"):format(opts.model, opts.rounds, opts.batch,
  opts.images, opts.only)
local root_flag = sh('test "$(id -u)" = 0') and " --allow-run-as-root" or ""
local runs = {
  { label = "1 rank  x 1 thread ", cmd = ("lua5.4 %s --worker --threads 1 %s"):format(self, common) },
  { label = "1 rank  x 2 threads", cmd = ("lua5.4 %s --worker --threads 2 %s"):format(self, common) },
  { label = "2 ranks x 1 thread ", cmd = ("mpirun --oversubscribe --bind-to none%s -np 2 lua5.4 %s --worker --threads 1 %s")
    :format(root_flag, self, common) },
}

io.write(("dist_bench: %s, global batch %d (step), %d images (embed), median of %d; %d CPUs\n"):format(opts.model,
  opts.batch, opts.images, opts.rounds, clip.get_num_threads()))
io.write("load before: ", uptime(), "\n")
io.flush()
local results = {}
for i, r in ipairs(runs) do
  local ok, out = sh(r.cmd)
  local line = out:match("RESULT ([^\n]+)")
  if not ok or not line then
    io.stderr:write(("dist_bench: %s failed:\n%s\n"):format(r.label, out))
    os.exit(1)
  end
  results[i] = clip.json.decode(line)
  io.write(("  ran %s  (load now: %s)\n"):format(r.label, uptime():match("load average: (.*)$") or "?"))
  io.flush()
end
io.write("load after:  ", uptime(), "\n\n")

local base = results[1]
if base.params_model ~= base.params_formula then
  io.write(("WARNING: the parameter formula gives %d for the model, which has %d\n"):format(base.params_formula,
    base.params_model))
end
local function row(label, key)
  if not base[key] then return end
  io.write(("%-6s"):format(label))
  for i, r in ipairs(results) do
    local t = r[key]
    local speed = base[key] / t
    io.write(("  %-20s %7.3f s  x%.2f (eff. %3.0f%%)"):format(runs[i].label, t, speed,
      100 * speed / (i == 1 and 1 or 2)))
    if i < #results then io.write("\n      ") end
  end
  io.write(("\n      2 ranks x 1 thread / 1 rank x 2 threads: %.2f (below 1: the ranks are faster)\n")
    :format(results[3][key] / results[2][key]))
end
io.write("time, speed-up over 1 x 1, parallel efficiency on 2 cores:\n")
row("step", "step")
if results[3].step_allreduce then
  io.write(("      of which the gradient all-reduce (%d trainable values, 2 ranks): %.3f s\n")
    :format(results[3].trainable, results[3].step_allreduce))
end
row("embed", "embed")
if results[3].allreduce then
  io.write("\nSUM all-reduce of float32 gradients, 2 ranks (allreduce_many, 25 MiB buckets):\n")
  for _, a in ipairs(results[3].allreduce) do
    local bytes = a.params * 4
    for _, mode in ipairs({ "polled", "blocking" }) do
      io.write(("  %-9s %11d params %8.1f MB  %-8s %7.3f s  %6.2f GB/s algbw, %6.2f GB/s busbw\n"):format(a.name,
        a.params, bytes / 1e6, mode, a[mode], bytes / a[mode] / 1e9, bytes / a[mode] / 1e9))
    end
  end
  io.write("  (busbw = algbw x 2(N-1)/N, = algbw at N = 2)\n")
end
