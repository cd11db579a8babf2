--- bench/ours.lua - time one piece of work in this module; prints one line of JSON.
-- usage: lua5.4 bench/ours.lua <task> <model dir> [args]
--   image B [reps]      image tower, B images of random pixels: images/s
--   text B T [reps]     text tower, B sequences of T tokens (eos at T): texts/s
--   load                clip.load to the first use of the weights (one image embedded): ms
--   rss [half]          load (half: {half = true}), embed one image and one text: peak RSS
--                       (VmHWM) and the float32 weight bytes
--   train [cache]       the fine-tuning workload (bench/train_workload.lua): seconds
-- Environment: CLIP_THREADS sets clip.set_num_threads.
local clip = require "clip"
local core = clip.core

local task, dir = arg[1], arg[2]
if not task or not dir then
  io.stderr:write("usage: lua5.4 bench/ours.lua image|text|load|rss|train <model dir> [args]\n")
  os.exit(2)
end
if os.getenv("CLIP_THREADS") then clip.set_num_threads(tonumber(os.getenv("CLIP_THREADS"))) end

-- wall clock: luasystem (a dependency of busted), else luasocket
local clock
do
  local ok, sys = pcall(require, "system")
  if ok and sys.gettime then clock = sys.gettime else clock = require("socket").gettime end
end

local median = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "median.lua")

local function vmhwm()
  local f = io.open("/proc/self/status")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmHWM:%s*(%d+)")) -- KiB
end

local function out(t)
  local parts = {}
  for k, v in pairs(t) do
    parts[#parts + 1] = ("%q:%s"):format(k, type(v) == "string" and ("%q"):format(v) or tostring(v))
  end
  table.sort(parts)
  print("{" .. table.concat(parts, ",") .. "}")
end

local function ids_batch(B, T, vocab)
  local ids = {}
  for b = 1, B do
    local row = { 49406 }
    for t = 2, T - 1 do row[t] = 1000 + ((b * 7919 + t * 104729) % 40000) end
    row[T] = 49407
    ids[b] = row
  end
  return ids
end

-- time f() reps times after one warm-up call; the median
local function timeit(f, reps)
  f()
  local ts = {}
  for i = 1, reps do
    local t0 = clock()
    f()
    ts[i] = clock() - t0
  end
  return median(ts), ts
end

if task == "image" then
  local B, reps = tonumber(arg[3] or 1), tonumber(arg[4] or 5)
  local m = clip.load(dir, { tokenizer = false, half = os.getenv("CLIP_HALF") ~= "0" })
  local S = m.config.vision_config.image_size
  local px = core.randn({ B, 3, S, S }, 7)
  local t = timeit(function() m.core:encode_pixels(px) end, reps)
  out({ task = "image", impl = "ours", batch = B, seconds = t, rate = B / t,
    threads = clip.get_num_threads() })
elseif task == "text" then
  local B, T, reps = tonumber(arg[3] or 1), tonumber(arg[4] or 77), tonumber(arg[5] or 5)
  local m = clip.load(dir, { tokenizer = false })
  local ids = ids_batch(B, T)
  local t = timeit(function() m.core:encode_ids(ids) end, reps)
  out({ task = "text", impl = "ours", batch = B, tokens = T, seconds = t, rate = B / t,
    threads = clip.get_num_threads() })
elseif task == "load" then
  local t0 = clock()
  local m = clip.load(dir, { tokenizer = false })
  local t1 = clock()
  local S = m.config.vision_config.image_size
  m.core:encode_pixels(core.zeros({ 1, 3, S, S }))
  local t2 = clock()
  -- first use of the weights: the first GEMM touching each layer's pages happens in the forward;
  -- report load alone (mapping, parsing) and load + one image
  out({ task = "load", impl = "ours", load_ms = (t1 - t0) * 1000, first_image_ms = (t2 - t0) * 1000 })
elseif task == "rss" then
  local half = arg[3] == "half"
  local m = clip.load(dir, { tokenizer = false, half = half })
  local S = m.config.vision_config.image_size
  m.core:encode_pixels(core.randn({ 1, 3, S, S }, 3))
  m.core:encode_ids(ids_batch(1, 15))
  local bytes = 0
  for _, it in ipairs(m.core:param_info()) do bytes = bytes + it.numel * 4 end
  local hwm = vmhwm()
  out({ task = "rss", impl = "ours", peak_rss_mib = hwm / 1024, weights_mib = bytes / 2 ^ 20,
    ratio = hwm * 1024 / bytes, half = m:is_half() or "no" })
elseif task == "train" then
  local W = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "train_workload.lua")
  local t0 = clock()
  local r = W.run(dir, { cache = arg[3] == "cache" })
  local t = clock() - t0
  out({ task = "train", impl = "ours", seconds = t, final_loss = r.loss, val_loss = r.val })
else
  io.stderr:write("unknown task " .. task .. "\n")
  os.exit(2)
end
