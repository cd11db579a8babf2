--- bench/train_step.lua - one training step at ViT-B/32 shapes (batch 16:
-- 16 images, 16 positive and 16 negative captions of ~15 tokens, MNRL), for
-- each freezing choice (images are PNG paths: decoding and preprocessing
-- count in the naive case):
--   proj-naive   projections trainable, frozen features re-encoded every step
--   proj-cached  projections trainable, pooled features from the loss's cache
--   last2        the last 2 blocks of both towers (+ final norms, projections)
--   full         every parameter
-- forward + backward + clip_grad_norm + AdamW step + zero_grad, wall time,
-- median of --rounds (default 3) after one warm-up step; the warm-up step's own time is printed
-- too (the first step of a case allocates its gradients and optimizer state, and writes the
-- weights mapped from the file: their copy-on-write).
-- --torch: also the same last2 and full steps in PyTorch (bench/torch_bench.py step, Debian's
-- python3-torch, torch.set_num_threads = our threads), in the same run, and the ratios. The
-- machine's speed drifts over minutes, so the two sides alternate: --pairs P (default 2)
-- measurements of ours then PyTorch per step kind, a ratio per pair, and their median.
--   lua5.4 bench/train_step.lua [bench/models/b32] [--rounds N] [--torch] [--pairs P]
local clip = require "clip"

local dir, rounds, torch, pairs = "bench/models/b32", 3, false, 2
local i = 1
while i <= #arg do
  if arg[i] == "--rounds" then rounds = tonumber(arg[i + 1]); i = i + 1
  elseif arg[i] == "--pairs" then pairs = tonumber(arg[i + 1]); i = i + 1
  elseif arg[i] == "--torch" then torch = true
  else dir = arg[i] end
  i = i + 1
end

local function now()
  return clip.core.clock and clip.core.clock() or os.clock()
end

local model = clip.load(dir, { tokenizer = false })
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local px = {}
for b = 1, 16 do px[b] = ("%sout/data/img%02d.png"):format(here, b) end -- from bench/make_data.lua
local caps = dofile(here .. "captions.lua")
local batch = { anchor = px, positive = caps(16, 1), negative = caps(16, 2) }
local MOD = { modalities = { anchor = "image", positive = "text", negative = "text" } }

local cases = {
  { "proj-naive", function(m) m:train_only({ "projection" }) end, true },
  { "proj-cached", function(m) m:train_only({ "projection" }) end, false },
  { "last2", function(m)
      m:train_only({ "projection", "post_layernorm", "final_layer_norm" })
      m:set_trainable("^vision_model%.encoder%.layers%.1[01]%.", true)
      m:set_trainable("^text_model%.encoder%.layers%.1[01]%.", true)
    end, false },
  { "full", function(m) for _, p in m:named_parameters() do p.requires_grad = true end end, false },
}

io.write(("one training step at ViT-B/32 shapes, batch 16, %d threads, median of %d\n"):format(
  clip.get_num_threads(), rounds))
local median = dofile(here .. "median.lua")

-- median of `rounds` steps after one warm-up, for case c
local function measure(c)
  c[2](model)
  local loss = clip.loss.MultipleNegativesRankingLoss(model, MOD)
  local opt = clip.optim.AdamW(model, { lr = 1e-5, weight_decay = 0 })
  local function one()
    if c[3] then loss:clear_cache() end
    local t0 = now()
    loss:backward(batch)
    clip.optim.clip_grad_norm(opt, 1.0)
    opt:step()
    opt:zero_grad()
    return now() - t0
  end
  local first = one() -- warm-up (fills the cache for proj-cached)
  local ts = {}
  for r = 1, rounds do ts[r] = one() end
  return median(ts), first
end

for _, c in ipairs(cases) do
  local first
  c.ours, first = measure(c)
  local _, trainable = model:count_parameters()
  io.write(("%-12s %8.3f s   (%d trainable parameters; first step %.3f s)\n"):format(c[1], c.ours,
    trainable, first))
  io.flush()
end

if torch then
  local by = {}
  for _, c in ipairs(cases) do by[c[1]] = c end
  local here_dir = here:gsub("/$", "")
  for _, mode in ipairs({ "last2", "full" }) do
    local ratios = {}
    for pair = 1, pairs do
      local ours = pair == 1 and by[mode].ours or measure(by[mode])
      local cmd = ("CLIP_THREADS=%d /usr/bin/python3 %s/torch_bench.py step %s %s %d 2>&1")
        :format(clip.get_num_threads(), here_dir, dir, mode, rounds)
      local p = io.popen(cmd)
      local out = p:read("a")
      p:close()
      local secs = tonumber(out:match('"seconds": ([%d.e+-]+)'))
      if not secs then
        io.write(("torch %-6s failed: %s\n"):format(mode, out:sub(-300)))
        break
      end
      ratios[#ratios + 1] = secs / ours
      io.write(("pair %d  %-6s ours %.3f s  torch %.3f s: %.2fx PyTorch\n"):format(pair, mode, ours, secs, secs / ours))
      io.flush()
    end
    if #ratios > 0 then
      io.write(("%-6s median of %d pairs: %.2fx PyTorch\n"):format(mode, #ratios, median(ratios)))
      io.flush()
    end
  end
end
