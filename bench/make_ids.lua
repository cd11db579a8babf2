--- bench/make_ids.lua - token ids of the workload's captions (bench/out/data/captions.txt) with
-- this module's tokenizer, as JSON, for the PyTorch side (no CLIP tokenizer there).
-- usage: lua5.4 bench/make_ids.lua <model dir> [data dir]
local clip = require "clip"
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local data = arg[2] or (here .. "out/data")
local m = clip.load(arg[1])
local ids = {}
for l in io.lines(data .. "/captions.txt") do ids[#ids + 1] = m:tokenize(l) end
local f = assert(io.open(data .. "/ids.json", "wb"))
f:write(clip.json.encode(ids), "\n")
f:close()
io.stderr:write(data, "/ids.json: ", #ids, " captions, ", #ids[1], " tokens in the first\n")
