--- bench/run.lua - run the benchmarks: this module, and PyTorch and ONNX Runtime when they are
-- installed, side by side. Each round runs every case once per implementation, rotating which
-- goes first; the table shows medians over the rounds and ratios (>1: we are faster).
--
-- usage: lua5.4 bench/run.lua [--rounds N] [--only ours,torch,ort] [suite ...]
-- suites: peak image text l14 load rss train step   (default: peak image text load rss train
--         step; `all` adds l14, which needs bench/models/l14 and takes minutes per round)
--   step: one training step at B/32 shapes (bench/train_step.lua, --rounds as given, with
--         --torch when PyTorch is here: the last2 and full steps against PyTorch's, in
--         alternating pairs), run after the table and printed below it
-- Needs bench/models (make bench-models); PyTorch: /usr/bin/python3 with torch; ONNX Runtime:
-- bench/node_modules (make bench-ort) and the ONNX export (made here on first use if torch is
-- there). Raw results are appended to bench/out/results.jsonl. `make bench` runs it.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local root = here .. "../"
do -- absolute root
  local p = io.popen("cd '" .. root .. "' && pwd")
  root = p:read("l") .. "/"
  p:close()
end
local bench = root .. "bench/"
local env = ("LUA_PATH='%slua/?.lua;%slua/?/init.lua;;' LUA_CPATH='%sbuild/?.so;;' "):format(root, root, root)

local rounds, only, suites = 3, nil, {}
local i = 1
while i <= #arg do
  if arg[i] == "--rounds" then rounds = tonumber(arg[i + 1]); i = i + 1
  elseif arg[i] == "--only" then
    only = {}
    for w in arg[i + 1]:gmatch("[^,]+") do only[w] = true end
    i = i + 1
  else suites[#suites + 1] = arg[i] end
  i = i + 1
end
if #suites == 0 then suites = { "peak", "image", "text", "load", "rss", "train", "step" } end
if #suites == 1 and suites[1] == "all" then suites = { "peak", "image", "text", "l14", "load", "rss", "train", "step" } end

local function sh(cmd)
  local p = io.popen(cmd .. " 2>/dev/null")
  local s = p:read("a")
  p:close()
  return s
end
local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end
local function loadavg() return (sh("cat /proc/loadavg"):match("^(%S+ %S+ %S+)")) end

local have = { ours = true }
have.torch = sh("/usr/bin/python3 -c 'import torch; print(torch.__version__)'"):match("%d") ~= nil
have.ort = exists(bench .. "node_modules/onnxruntime-node/package.json") and sh("node --version"):match("v%d") ~= nil
if only then for k in pairs(have) do have[k] = have[k] and only[k] or false end end

local B32, L14 = bench .. "models/b32", bench .. "models/l14"
local function need_export(dir)
  if have.ort and not (exists(dir .. "/vision.onnx") and exists(dir .. "/text.onnx")) then
    if have.torch then
      io.stderr:write("exporting ", dir, " to ONNX (torch.onnx)\n")
      os.execute("/usr/bin/python3 " .. bench .. "torch_bench.py export " .. dir .. " >/dev/null 2>&1")
    end
    if not exists(dir .. "/vision.onnx") then
      io.stderr:write(dir, ": no ONNX export (needs torch); ONNX Runtime skipped\n")
      have.ort = false
    end
  end
  if have.torch and not exists(dir .. "/torch_state.pt") then
    os.execute("/usr/bin/python3 " .. bench .. "torch_bench.py export " .. dir .. " >/dev/null 2>&1")
  end
end

local CMD = {
  ours = function(a) return env .. "lua5.4 " .. bench .. "ours.lua " .. a end,
  torch = function(a) return "/usr/bin/python3 " .. bench .. "torch_bench.py " .. a end,
  ort = function(a) return "node " .. bench .. "ort_bench.js " .. a end,
}

-- a case: label, metric (the JSON field), better ("high"|"low"), args per implementation
local cases = {}
local function case(label, metric, better, args) cases[#cases + 1] = { label = label, metric = metric, better = better, args = args } end
-- what a suite needs before it runs: a model directory (an error naming the make target), or
-- the images and captions of bench/make_data.lua (written here when missing)
local function need_model(dir, target)
  if not exists(dir .. "/model.safetensors") then error(dir .. " missing: run `make " .. target .. "`") end
end
local function need_data()
  if not (exists(bench .. "out/data/captions.txt") and exists(bench .. "out/data/img16.png")) then
    os.execute(env .. "lua5.4 " .. bench .. "make_data.lua")
  end
end
local peak, step
for _, s in ipairs(suites) do
  if s == "step" then
    need_model(B32, "bench-models")
    need_data()
    step = true
  elseif s == "peak" then
    os.execute("mkdir -p " .. root .. "build/bench && cc -O2 -pthread " .. bench .. "peak.c -o " .. root .. "build/bench/peak")
    peak = true
  elseif s == "image" then
    need_model(B32, "bench-models")
    need_export(B32)
    for _, b in ipairs({ { 1, 10 }, { 8, 3 }, { 32, 2 } }) do
      local a = ("image %s %d %d"):format(B32, b[1], b[2])
      case(("B/32 image, batch %d (images/s)"):format(b[1]), "rate", "high", { ours = a, torch = a, ort = a })
    end
  elseif s == "text" then
    need_export(B32)
    for _, b in ipairs({ { 1, 77, 10 }, { 32, 77, 2 }, { 1, 15, 10 }, { 32, 15, 3 } }) do
      local a = ("text %s %d %d %d"):format(B32, b[1], b[2], b[3])
      case(("B/32 text, batch %d, %d tokens (texts/s)"):format(b[1], b[2]), "rate", "high", { ours = a, torch = a, ort = a })
    end
    -- real captions: ours on 15-token captions vs ORT on the same captions padded to 77
    -- (CLIP's usual padding = "max_length")
    local o = ("text %s 32 15 3"):format(B32)
    case("B/32 text, batch 32, 15-token captions; others padded to 77 (texts/s)", "rate", "high",
      { ours = o, torch = ("text %s 32 77 2"):format(B32), ort = ("text %s 32 77 2"):format(B32) })
  elseif s == "l14" then
    need_model(L14, "bench-models-l14")
    need_export(L14)
    for _, b in ipairs({ { 1, 3 }, { 8, 1 } }) do
      local a = ("image %s %d %d"):format(L14, b[1], b[2])
      case(("L/14 image, batch %d (images/s)"):format(b[1]), "rate", "high", { ours = a, torch = a, ort = a })
    end
  elseif s == "load" then
    need_export(B32)
    local a = "load " .. B32
    case("B/32 load (ms to load)", "load_ms", "low", { ours = a, torch = a })
    case("B/32 load + first image (ms)", "first_image_ms", "low", { ours = a, torch = a })
  elseif s == "rss" then
    local dir = exists(L14 .. "/model.safetensors") and L14 or B32
    local name = dir == L14 and "L/14" or "B/32"
    if dir == L14 then need_export(L14) end
    local a = "rss " .. dir
    case(name .. " peak RSS, load + 1 image + 1 text (MiB)", "peak_rss_mib", "low", { ours = a, torch = a, ort = a })
    case(name .. " peak RSS / fp32 weight bytes", "ratio", "low", { ours = a, torch = a })
    -- the same weights in an F16 checkpoint (make_models.lua l14-f16): loaded as float32, and
    -- kept half ({half = true}); ours only
    local hdir = dir .. "-f16"
    if exists(hdir .. "/model.safetensors") then
      case(name .. " F16 checkpoint, loaded as float32: peak RSS / fp32 weight bytes", "ratio", "low",
        { ours = "rss " .. hdir })
      case(name .. " F16 checkpoint, {half = true}: peak RSS / fp32 weight bytes", "ratio", "low",
        { ours = "rss " .. hdir .. " half" })
    end
  elseif s == "train" then
    need_data()
    if have.torch and not exists(bench .. "out/data/ids.json") then
      os.execute(env .. "lua5.4 " .. bench .. "make_ids.lua " .. B32)
    end
    case("fine-tuning workload, re-encoding in PyTorch (s)", "seconds", "low",
      { ours = "train " .. B32, torch = "train " .. B32 .. " reencode" })
    case("fine-tuning workload, PyTorch caching features (s)", "seconds", "low",
      { ours = "train " .. B32, torch = "train " .. B32 .. " cache" })
  end
end

local results = {} -- [case][impl] = list
local logf = (function()
  os.execute("mkdir -p " .. bench .. "out")
  return io.open(bench .. "out/results.jsonl", "a")
end)()
local impls = { "ours", "torch", "ort" }
local la0 = loadavg()
local peaks, peaks256 = {}, {} -- widest FMA peak (256-bit only under CLIP_NO_AVX512), 256-bit
io.stderr:write(("machine load average at start: %s\n"):format(la0))
local cache_run = {} -- one process per (impl, args) per round: several cases share a run
for r = 1, rounds do
  if peak then
    local j = sh(root .. "build/bench/peak")
    peaks[#peaks + 1] = tonumber(j:match('"peak_nt":([%d.]+)'))
    peaks256[#peaks256 + 1] = tonumber(j:match('"avx2_nt":([%d.]+)'))
    if logf then logf:write(j) end
  end
  cache_run = {}
  for ci, c in ipairs(cases) do
    results[ci] = results[ci] or {}
    local order = {}
    for k = 0, 2 do
      local im = impls[(k + r + ci - 2) % 3 + 1]
      if have[im] and c.args[im] then order[#order + 1] = im end
    end
    for _, im in ipairs(order) do
      local key = im .. " " .. c.args[im]
      local line = cache_run[key]
      if not line then
        line = sh(CMD[im](c.args[im]))
        cache_run[key] = line
        if logf then logf:write(line) end
      end
      local v = tonumber(line:match('"' .. c.metric .. '":%s*([-%d.e+]+)'))
      results[ci][im] = results[ci][im] or {}
      if v then table.insert(results[ci][im], v) end
      io.stderr:write(("round %d  %-62s %-5s %s\n"):format(r, c.label, im, v and ("%.4g"):format(v) or "failed"))
    end
  end
end
if logf then logf:close() end

local median = dofile(here .. "median.lua")
local function fmt(v) return v and ("%.3g"):format(v) or "—" end
local function ratio(c, a, b)
  if not a or not b then return "—" end
  return ("%.2f×"):format(c.better == "high" and a / b or b / a)
end

local cpu = sh("grep -m1 'model name' /proc/cpuinfo"):match(":%s*(.-)%s*$") or "?"
print(("machine: %s, %s cores; load average %s at start, %s at end; %d rounds, medians")
  :format(cpu, sh("nproc"):match("%d+"), la0, loadavg(), rounds))
if peak then
  local no512 = (os.getenv("CLIP_NO_AVX512") or "") ~= "" and os.getenv("CLIP_NO_AVX512") ~= "0"
  print(("FMA peak (bench/peak.c, all cores%s): median %.1f GFLOP/s over %d runs; 256-bit (AVX2) %.1f")
    :format(no512 and ", 256-bit: CLIP_NO_AVX512 is set" or "", median(peaks), #peaks, median(peaks256)))
end
print()
if #cases > 0 then
  print("| case | ours | PyTorch | ONNX Runtime | ours vs PyTorch | ours vs ORT |")
  print("|---|---|---|---|---|---|")
end
for ci, c in ipairs(cases) do
  local o, t, x = median(results[ci].ours), median(results[ci].torch), median(results[ci].ort)
  local extra = ""
  if peak and c.label:match("^B/32 image") and o then
    extra = (" (%.0f%% of peak)"):format(o * 8.8 / median(peaks) * 100)
  end
  print(("| %s | %s%s | %s | %s | %s | %s |"):format(c.label, fmt(o), extra, fmt(t), fmt(x), ratio(c, o, t), ratio(c, o, x)))
end

-- the training step (suite step): bench/train_step.lua's own lines, then the full step against
-- the peak above (0.53 TFLOP a step: issue 15's estimate for B/32, batch 16, MNRL)
if step then
  print()
  print(("one training step (bench/train_step.lua, median of %d%s):"):format(rounds,
    have.torch and ", against PyTorch in alternating pairs" or "; no PyTorch: not installed, or left out by --only"))
  io.stdout:flush()
  local cmd = env .. "lua5.4 " .. bench .. "train_step.lua " .. B32 .. " --rounds " .. rounds ..
    (have.torch and " --torch" or "")
  local p = io.popen(cmd .. " 2>&1")
  local full
  for line in p:lines() do
    print(line)
    io.stdout:flush()
    full = full or tonumber(line:match("^full%s+([%d.]+) s"))
  end
  local ok = p:close()
  if not ok then print("bench/train_step.lua failed") end
  if peak and full then
    print(("full step: 0.53 TFLOP in %.3f s = %.0f GFLOP/s, %.0f%% of the FMA peak above"):format(
      full, 530 / full, 530 / full / median(peaks) * 100))
  end
end
