--- bench/embed_folder.lua - embedding a folder of JPEGs end to end against the image tower alone
-- (issue #14 item 4). One process, one model, every case over the same images in batches:
--   tower       encode_pixels on the folder's pixels, preprocessed beforehand (not timed)
--   serial      preprocess_batch on one thread, then encode_pixels, batch after batch (what
--               encode_images did before the pipelined path)
--   parallel    preprocess_batch on clip.get_num_threads() threads, then encode_pixels
--   pipelined   an image.loader with one background thread: submit batch k + 1, encode
--               batch k, wait for batch k + 1 (the caller helps): image.batches' sequence,
--               which model:encode_images runs for a list of paths
--   pipelined2  the same with two background threads
--   idle        pipelined with the background thread at SCHED_IDLE priority
-- The machine is shared, and its load moves within seconds, so the cases are interleaved batch
-- by batch: for each batch, every case runs its step (in an order rotated per batch and per
-- round), and each step's time is compared with the tower's step on the same batch, moments
-- apart. The table gives each case's images/s (median and best over the rounds) and its speed
-- relative to the tower (the median of the per-batch ratios, and best round against best
-- tower round). A pipelined case's step ends with the wait for its next batch, so its
-- background decoding overlaps its own encode only. The embeddings of every case are compared with
-- the tower's, bit for bit (same pixels, same batches: they must be identical).
--
-- usage: lua5.4 bench/embed_folder.lua [model dir] [jpeg folder] [--rounds N] [--batch B]
--          [--images N] [--cases tower,serial,...]
-- defaults: bench/models/b32 (make bench-models), bench/out/jpegs (make_jpegs: 256 photo-like
-- 640x480 JPEGs), 3 rounds, batch 32, every image, every case. `make bench-embed` runs it.
-- Environment: CLIP_THREADS sets clip.set_num_threads (the GEMM pool).
local clip = require "clip"
local image = require "clip.image"
local core = clip.core

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local dir, folder = nil, nil
local rounds, B, limit = 3, 32, nil
local cases = { "tower", "serial", "parallel", "pipelined", "pipelined2", "idle" }
local i = 1
while i <= #arg do
  local a = arg[i]
  if a == "--rounds" then rounds = tonumber(arg[i + 1]); i = i + 1
  elseif a == "--batch" then B = tonumber(arg[i + 1]); i = i + 1
  elseif a == "--images" then limit = tonumber(arg[i + 1]); i = i + 1
  elseif a == "--cases" then
    cases = {}
    for w in arg[i + 1]:gmatch("[^,]+") do cases[#cases + 1] = w end
    i = i + 1
  elseif not dir then dir = a
  elseif not folder then folder = a
  else error("unknown argument " .. a) end
  i = i + 1
end
dir = dir or here .. "models/b32"
folder = folder or here .. "out/jpegs"
if os.getenv("CLIP_THREADS") then clip.set_num_threads(tonumber(os.getenv("CLIP_THREADS"))) end

local clock
do
  local ok, sys = pcall(require, "system")
  if ok and sys.gettime then clock = sys.gettime else clock = require("socket").gettime end
end
local function loadavg()
  local f = io.open("/proc/loadavg")
  if not f then return "?" end
  local s = f:read("l")
  f:close()
  return s:match("^(%S+ %S+ %S+)")
end
local median = dofile(here .. "median.lua")

local paths = {}
do
  local p = io.popen(("ls %q 2>/dev/null"):format(folder))
  for name in p:lines() do
    if name:lower():match("%.jpe?g$") then paths[#paths + 1] = folder .. "/" .. name end
  end
  p:close()
end
if #paths == 0 then
  io.stderr:write(folder, ": no JPEGs (make bench-embed makes them)\n")
  os.exit(2)
end
if limit and limit < #paths then for k = #paths, limit + 1, -1 do paths[k] = nil end end
local N = #paths

local m = clip.load(dir, { tokenizer = false })
local proc = m.processor
local batches = {}
for a = 1, N, B do batches[#batches + 1] = table.move(paths, a, math.min(N, a + B - 1), 1, {}) end
-- the tower's input: every batch preprocessed beforehand (serially)
local pixels = {}
for k, sub in ipairs(batches) do pixels[k] = proc:preprocess_batch(sub, { threads = 1 }) end
m.core:encode_pixels(pixels[1]) -- warm-up: packs the weights

local function enc(px) return (m.core:encode_pixels(px)) end
local nb = #batches

-- One step of each case: what that case does for batch k. The pipelined cases keep a loader
-- and run image.batches' sequence (wait for batch k, submit batch k + 1, encode batch k, wait
-- for batch k + 1, ...) cut so that each step ends with its wait: submit k + 1, encode k, wait
-- k + 1 (step 1 first decodes batch 1: the pipeline's fill). So their background decoding
-- overlaps their own encode and never spills into another case's step.
local loaders, ready = {}, {}
local function pipelined(name, opts)
  return function(k)
    local ld = loaders[name]
    if k == 1 then
      if ld then ld:close() end
      ld = image.loader(proc, opts)
      loaders[name] = ld
      ld:submit(batches[1])
      ready[name] = ld:wait()
    end
    local x = ready[name]
    if k < nb then ld:submit(batches[k + 1]) end
    local out = enc(x)
    ready[name] = k < nb and ld:wait() or nil
    return out
  end
end
local STEP = {
  tower = function(k) return enc(pixels[k]) end,
  serial = function(k) return enc(proc:preprocess_batch(batches[k], { threads = 1 })) end,
  parallel = function(k) return enc(proc:preprocess_batch(batches[k])) end,
  pipelined = pipelined("pipelined", { threads = 1 }),
  pipelined2 = pipelined("pipelined2", { threads = 2 }),
  idle = pipelined("idle", { threads = 1, idle = true }),
}
for _, c in ipairs(cases) do assert(STEP[c], "unknown case " .. c) end

local load0 = loadavg()
io.stderr:write(("%d images (%s), batch %d, %d rounds, %d GEMM threads, load %s\n"):format(
  N, folder, B, rounds, clip.get_num_threads(), load0))
-- Cases are interleaved batch by batch (batch k of every case, in an order rotated per round
-- and per batch), so that a change in the machine's load hits every case alike; each step's
-- time is compared with the tower's step on the same batch, run moments apart.
local rates, ratios = {}, {}
for _, c in ipairs(cases) do rates[c], ratios[c] = {}, {} end
local ref = {}
for r = 1, rounds do
  local total = {}
  for _, c in ipairs(cases) do total[c] = 0 end
  for k = 1, nb do
    local t = {}
    for j = 0, #cases - 1 do
      local c = cases[(j + r + k - 2) % #cases + 1]
      local t0 = clock()
      local out = STEP[c](k)
      t[c] = clock() - t0
      total[c] = total[c] + t[c]
      if r == 1 then -- every case's embeddings must be the tower's, bit for bit
        local key = out:bytes()
        ref[k] = ref[k] or (c == "tower" and key) or nil
        if c ~= "tower" then
          ref[-k] = ref[-k] or {}
          ref[-k][c] = key
        end
      end
    end
    if t.tower then
      for _, c in ipairs(cases) do ratios[c][#ratios[c] + 1] = t.tower / t[c] end
    end
  end
  local line = {}
  for _, c in ipairs(cases) do
    rates[c][r] = N / total[c]
    line[#line + 1] = ("%s %.2f"):format(c, rates[c][r])
  end
  io.stderr:write(("  round %d: %s images/s (load %s)\n"):format(r, table.concat(line, ", "), loadavg()))
end
for _, ld in pairs(loaders) do ld:close() end
local same = true
for k = 1, nb do
  for c, key in pairs(ref[-k] or {}) do
    if ref[k] and key ~= ref[k] then
      same = false
      io.stderr:write(("%s: batch %d differs from the tower's embeddings\n"):format(c, k))
    end
  end
end
local load1 = loadavg()

local function best(t)
  local b = -math.huge
  for _, v in ipairs(t) do b = math.max(b, v) end
  return b
end
print(("embedding %d JPEGs end to end vs the image tower alone: batch %d, %d rounds, cases "
  .. "interleaved batch by batch, %d GEMM threads; load average %s at start, %s at end"):format(
  N, B, rounds, clip.get_num_threads(), load0, load1))
print("| case | images/s (median of rounds) | best round | vs tower (median of per-batch ratios) | best round vs best tower round |")
print("|---|---|---|---|---|")
for _, c in ipairs(cases) do
  print(("| %s | %.2f | %.2f | %s | %s |"):format(c, median(rates[c]), best(rates[c]),
    rates.tower and ("%.3f"):format(median(ratios[c])) or "-",
    rates.tower and ("%.3f"):format(best(rates[c]) / best(rates.tower)) or "-"))
end
print(("embeddings of every case identical to the tower's, batch by batch: %s"):format(
  ref[1] and (same and "yes" or "NO") or "not checked (no tower case)"))
if not same then os.exit(1) end
