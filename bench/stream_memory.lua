--- bench/stream_memory.lua - Lua memory while clip.stream reads a large dataset.
--
--   lua5.4 bench/stream_memory.lua [--rows 1000000] [--format jsonl|csv] [--buffer 10000]
--                                  [--files 0] [--keep]
--
-- Writes ROWS rows (an image path and a caption each) to a temporary .jsonl or
-- .csv file (the CSV's captions hold quoted newlines), then streams it through
-- shuffle{buffer} + shard(2, 0) + batches(256) and reports the live Lua memory
-- (collectgarbage("count") after a full collection, sampled every 100 batches)
-- and the peak without collections, against the memory before the pass. With
-- --files N it also walks a flat folder of N empty .jpg files. Run from the
-- source tree after `make` (eval "$(make -s env)", or from the tree's root).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
package.path = here .. "../lua/?.lua;" .. here .. "../lua/?/init.lua;" .. package.path
package.cpath = here .. "../build/?.so;" .. package.cpath
local clip = require "clip"
local stream = require "clip.stream"

local o = { rows = 1000000, format = "jsonl", buffer = 10000, files = 0 }
local i = 1
while arg[i] do
  local a = arg[i]
  if a == "--keep" then o.keep = true
  elseif a:match("^%-%-") and arg[i + 1] then
    o[a:sub(3)] = tonumber(arg[i + 1]) or arg[i + 1]
    i = i + 1
  else error("unknown argument " .. a) end
  i = i + 1
end

local clock = clip.core.clock
local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p '" .. tmp .. "'")
local path = tmp .. "/rows." .. o.format

local t0 = clock()
local f = assert(io.open(path, "wb"))
if o.format == "csv" then f:write("image,caption\n") end
local parts = {}
for r = 1, o.rows do
  if o.format == "csv" then
    parts[#parts + 1] = ('img/%08d.jpg,"a photo of thing %d,\nwith ""quotes"" and words"\n'):format(r, r)
  else
    parts[#parts + 1] = ('{"image": "img/%08d.jpg", "caption": "a photo of thing %d, with some words"}\n'):format(r, r)
  end
  if #parts == 10000 then f:write(table.concat(parts)); parts = {} end
end
f:write(table.concat(parts))
local bytes = f:seek("end")
f:close()
parts = nil
print(("wrote %d rows, %.1f MB, in %.1fs: %s"):format(o.rows, bytes / 1e6, clock() - t0, path))

local function measure(label, s, batch, expect)
  collectgarbage("collect")
  local base = collectgarbage("count")
  local live, peak, n, k = 0, 0, 0, 0
  local t = clock()
  for b in s:batches(batch) do
    local col = b[next(b)]
    n = n + #col
    k = k + 1
    peak = math.max(peak, collectgarbage("count") - base)
    if k % 100 == 0 then
      collectgarbage("collect")
      live = math.max(live, collectgarbage("count") - base)
    end
  end
  local dt = clock() - t
  print(("%s: %d rows in %.1fs (%.0f rows/s); Lua memory above the start: live %.0f KiB, peak %.0f KiB "
    .. "(garbage included)"):format(label, n, dt, n / dt, live, peak))
  if expect and n ~= expect then error(("expected %d rows, got %d"):format(expect, n)) end
end

local s = stream.open(path, { images = { "image" } })
measure(("%s, file order"):format(o.format), s, 256, o.rows)
local sh = s:shuffle({ buffer = o.buffer, seed = 1 })
measure(("%s, shuffle{buffer = %d}:shard(2, 0)"):format(o.format, o.buffer), sh:shard(2, 0), 256,
  (o.rows + 1) // 2)
print(("  shuffle buffer held at most %d rows"):format(sh.stats.max_buffer))

if o.files > 0 then
  local dir = tmp .. "/folder"
  os.execute("mkdir -p '" .. dir .. "'")
  t0 = clock()
  -- empty files through the shell, in batches of names
  local names = {}
  for r = 1, o.files do
    names[#names + 1] = ("%s/%08d.jpg"):format(dir, r)
    if #names == 2000 or r == o.files then
      os.execute("touch " .. table.concat(names, " "))
      names = {}
    end
  end
  print(("made %d files in %.1fs"):format(o.files, clock() - t0))
  measure(("folder of %d files"):format(o.files), stream.open(dir), 256, o.files)
end

if not o.keep then os.execute("rm -rf '" .. tmp .. "'") end
