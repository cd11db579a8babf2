--- bench/gradcache.lua - peak RSS of one training step at a large contrastive
-- batch: plain MultipleNegativesRankingLoss against
-- CachedMultipleNegativesRankingLoss (GradCache, mini-batches of 32), on a
-- ViT-B/32-shaped random model (make bench-models), for two freezing choices:
--   proj    projections trainable (frozen towers run once per row, no tape)
--   last2   the last 2 blocks of both towers + final norms + projections
-- Batch: B random-pixel images {B,3,224,224}, B positive and B negative
-- 15-token captions. One step = loss:backward + clip_grad_norm + AdamW step +
-- zero_grad. Every (freezing, loss) runs in its own child process, which
-- reports VmHWM from /proc/self/status: the peak of the whole process
-- (weights, packed copies, the batch's pixels, optimizer state, the step),
-- and "base", the VmHWM after loading, building the batch and embedding one
-- image and one text (weights read and packed): peak - base is the step's own.
--   lua5.4 bench/gradcache.lua [bench/models/b32] [--batch 256] [--mini 32] [--only proj|last2]
local clip = require "clip"
local core = clip.core
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

local function vm(field)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+)")) / 1024 -- MiB
end

local clock = core.clock -- monotonic wall clock (seconds)

local FREEZE = {
  proj = function(m) m:train_only({ "projection" }) end,
  last2 = function(m)
    m:train_only({ "projection", "post_layernorm", "final_layer_norm" })
    local L = m.config.vision_config.num_hidden_layers
    local T = m.config.text_config.num_hidden_layers
    m:set_trainable(("^vision_model%%.encoder%%.layers%%.%d%%."):format(L - 1), true)
    m:set_trainable(("^vision_model%%.encoder%%.layers%%.%d%%."):format(L - 2), true)
    m:set_trainable(("^text_model%%.encoder%%.layers%%.%d%%."):format(T - 1), true)
    m:set_trainable(("^text_model%%.encoder%%.layers%%.%d%%."):format(T - 2), true)
  end,
}

if arg[1] == "--child" then
  local freeze, kind, dir, B, mb = arg[2], arg[3], arg[4], tonumber(arg[5]), tonumber(arg[6])
  local m = clip.load(dir, { tokenizer = false })
  FREEZE[freeze](m)
  local S = m.config.vision_config.image_size
  local caps = dofile(here .. "captions.lua")
  local batch = { anchor = core.randn({ B, 3, S, S }, 7), positive = caps(B, 1), negative = caps(B, 2) }
  local MOD = { anchor = "image", positive = "text", negative = "text" }
  local loss
  if kind == "plain" then
    loss = clip.loss.MultipleNegativesRankingLoss(m, { modalities = MOD })
  else
    loss = clip.loss.CachedMultipleNegativesRankingLoss(m, { modalities = MOD, mini_batch_size = mb })
  end
  local opt = clip.optim.AdamW(m, { lr = 1e-5, weight_decay = 0 })
  m:encode_images(core.randn({ 1, 3, S, S }, 1)) -- weights read and packed before "base"
  m:encode_texts({ caps(1, 3)[1] })
  local base = vm("VmHWM")
  local t0 = clock()
  local v = loss:backward(batch)
  clip.optim.clip_grad_norm(opt, 1.0)
  opt:step()
  opt:zero_grad()
  local dt = clock() - t0
  local _, trainable = m:count_parameters()
  print(("RESULT %.1f %.1f %.3f %.6f %d"):format(vm("VmHWM"), base, dt, v, trainable))
  os.exit(0)
end

local dir, B, mb, only = "bench/models/b32", 256, 32, nil
local i = 1
while i <= #arg do
  if arg[i] == "--batch" then B = tonumber(arg[i + 1]); i = i + 1
  elseif arg[i] == "--mini" then mb = tonumber(arg[i + 1]); i = i + 1
  elseif arg[i] == "--only" then only = arg[i + 1]; i = i + 1
  else dir = arg[i] end
  i = i + 1
end

local lua = arg[-1] or "lua5.4"
local script = arg[0]
local function child(freeze, kind)
  local cmd = ("%s %s --child %s %s %q %d %d"):format(lua, script, freeze, kind, dir, B, mb)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  local peak, base, dt, v, n = out:match("RESULT (%S+) (%S+) (%S+) (%S+) (%S+)")
  if not peak then error("child failed: " .. cmd .. "\n" .. out) end
  return { peak = tonumber(peak), base = tonumber(base), dt = tonumber(dt), loss = tonumber(v), n = tonumber(n) }
end

io.write(("one MNRL step at batch %d (images + positives + negatives), %s, %d threads; peak RSS (VmHWM) per child process\n"):format(
  B, dir, clip.get_num_threads()))
io.write(("%-6s %-16s %12s %10s %12s %9s %10s\n"):format("freeze", "loss", "trainable", "base MiB", "peak MiB",
  "step s", "loss"))
for _, freeze in ipairs({ "proj", "last2" }) do
  if not only or only == freeze then
    local r = {}
    for _, kind in ipairs({ "plain", "cached" }) do
      r[kind] = child(freeze, kind)
      local x = r[kind]
      io.write(("%-6s %-16s %12d %10.0f %12.0f %9.2f %10.6f\n"):format(freeze,
        kind == "plain" and "MNRL" or ("Cached (mb " .. mb .. ")"), x.n, x.base, x.peak, x.dt, x.loss))
      io.flush()
    end
    io.write(("%-6s peak plain / cached = %.2f; above base: %.0f / %.0f MiB = %.2f\n"):format(freeze,
      r.plain.peak / r.cached.peak, r.plain.peak - r.plain.base, r.cached.peak - r.cached.base,
      (r.plain.peak - r.plain.base) / (r.cached.peak - r.cached.base)))
  end
end
