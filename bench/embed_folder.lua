--- bench/embed_folder.lua - embedding a folder of JPEGs end to end against the image tower alone
-- (issue #14 item 4). One process, one model, every case over the same images in batches:
--   tower       encode_pixels on the folder's pixels, preprocessed beforehand (not timed)
--   serial      preprocess_batch on one thread, then encode_pixels, batch after batch (what
--               encode_images did before the pipelined path)
--   parallel    preprocess_batch on clip.get_num_threads() threads, then encode_pixels
--   pipelined   image.batches (one background thread decodes batch k+1 while batch k is
--               encoded; wait() helps): model:encode_images' path
--   pipelined2  the same with two background threads
--   idle        pipelined with the background thread at SCHED_IDLE priority
-- Rounds rotate which case goes first; the table shows the median images/s of each case over
-- the rounds and its ratio to the tower's median. The embeddings of every case are compared
-- with the tower's, bit for bit (they must be identical: same pixels, same batches).
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
local function median(t)
  local s = { table.unpack(t) }
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

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
local RUN = {
  tower = function()
    local out = {}
    for k = 1, #batches do out[k] = enc(pixels[k]) end
    return out
  end,
  serial = function()
    local out = {}
    for k, sub in ipairs(batches) do out[k] = enc(proc:preprocess_batch(sub, { threads = 1 })) end
    return out
  end,
  parallel = function()
    local out = {}
    for k, sub in ipairs(batches) do out[k] = enc(proc:preprocess_batch(sub)) end
    return out
  end,
}
local function pipelined(opts)
  return function()
    local out = {}
    opts.batch_size = B
    for x in image.batches(proc, paths, opts) do out[#out + 1] = enc(x) end
    return out
  end
end
RUN.pipelined = pipelined({ threads = 1 })
RUN.pipelined2 = pipelined({ threads = 2 })
RUN.idle = pipelined({ threads = 1, idle = true })
for _, c in ipairs(cases) do assert(RUN[c], "unknown case " .. c) end

local ref -- the tower's embeddings, batch by batch
local function check(name, out)
  ref = ref or RUN.tower()
  for k = 1, #batches do
    if out[k]:bytes() ~= ref[k]:bytes() then
      error(("%s: batch %d differs from the tower's embeddings"):format(name, k))
    end
  end
end

local load0 = loadavg()
io.stderr:write(("%d images (%s), batch %d, %d rounds, %d GEMM threads, load %s\n"):format(
  N, folder, B, rounds, clip.get_num_threads(), load0))
local rates = {}
for _, c in ipairs(cases) do rates[c] = {} end
for r = 1, rounds do
  for j = 0, #cases - 1 do
    local c = cases[(j + r - 1) % #cases + 1]
    collectgarbage()
    local t0 = clock()
    local out = RUN[c]()
    local dt = clock() - t0
    rates[c][r] = N / dt
    io.stderr:write(("  round %d %-10s %7.2f images/s  (load %s)\n"):format(r, c, N / dt, loadavg()))
    if r == 1 then check(c, out) end
  end
end
local load1 = loadavg()

local tower = rates.tower and median(rates.tower)
print(("embedding %d JPEGs end to end vs the image tower alone: batch %d, %d rounds (medians), "
  .. "%d GEMM threads; load average %s at start, %s at end"):format(N, B, rounds,
  clip.get_num_threads(), load0, load1))
print("| case | images/s | vs tower |")
print("|---|---|---|")
for _, c in ipairs(cases) do
  local r = median(rates[c])
  print(("| %s | %.2f | %s |"):format(c, r, tower and ("%.3f"):format(r / tower) or "-"))
end
print("embeddings of every case identical to the tower's: yes")
