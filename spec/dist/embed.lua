-- spec/dist/embed.lua - clip.embed.run of an image folder for spec/dist_spec.lua's
-- sharded-embedding cases, in one process or as one rank under mpirun:
--   [CLIP_EMBED_FAULT=KIND:RANK] lua5.4 spec/dist/embed.lua SRC OUT [distributed]
-- chunk_size 3 (CLIP_EMBED_CHUNK=n: n on every rank), batch_size 3, one thread. Writes OUT.rank<r>.json (OUT.single.json
-- in one process): {ok, error, decoded (the images this process decoded), and the
-- summary's rows, embedded, skipped, shards, resumed_shards, computed_shards,
-- computed_here, world}. KIND, done by rank RANK:
--   kill     kills itself (SIGKILL) right after writing its first shard
--   raise    raises an error right after writing its first shard
--   options  chunk_size 4
--   model    loads another model (spec/fixtures/models/tiny-gelu-fp16)
--   nodata   reads a folder that does not exist
--   source   reads the folder through stream:take(100) (the same rows, another description)
--   rows     reads the folder through a generator that leaves out its last image
--            (the other ranks read the same generator with every image)
--   inputs   the same, with its first image's path changed
-- Every error is written to the rank's file; then the rank finalizes MPI (the
-- errors of a distributed run are raised on every rank) and exits 1.
local clip = require "clip"

local src, out, distributed = arg[1], arg[2], arg[3] == "distributed"
clip.set_num_threads(1)
local root = debug.getinfo(1, "S").source:sub(2):match("(.*/)spec/dist/") or "./"
local kind, frank = (os.getenv("CLIP_EMBED_FAULT") or ""):match("^(%a+):(%d+)$")
frank = tonumber(frank)
local dist = clip.dist
local rank = 0
if distributed then rank = dist.init() end
local mine = kind ~= nil and rank == frank

local result = { ok = false }
local decoded = 0
local ok, err = pcall(function()
  local model_dir = (mine and kind == "model") and "spec/fixtures/models/tiny-gelu-fp16" or "spec/fixtures/models/tiny"
  local model = clip.load(root .. model_dir, { tokenizer = false })
  local source = src
  if mine and kind == "nodata" then source = src .. "-missing-on-this-rank" end
  if mine and kind == "source" then source = clip.stream.open(src):take(100) end
  if kind == "rows" or kind == "inputs" then
    local paths = clip.data.list_images(src)
    if mine and kind == "rows" then paths[#paths] = nil end
    if mine and kind == "inputs" then paths[1] = paths[1] .. "-other" end
    source = clip.stream.from_generator(function()
      local i = 0
      return function()
        i = i + 1
        return paths[i] and { image = paths[i] } or nil
      end
    end, { name = "paths", columns = { "image" } })
  end
  local r = clip.embed.run(model, source, out, {
    chunk_size = (mine and kind == "options") and 4 or tonumber(os.getenv("CLIP_EMBED_CHUNK") or "3"), batch_size = 3,
    distributed = distributed or nil, log = function() end,
    decode = function(m, list)
      decoded = decoded + #list
      return clip.embed.decode_batch(m, list)
    end,
    on_chunk = function(info)
      if mine and kind == "kill" then os.execute("kill -9 $PPID") end
      if mine and kind == "raise" then error(("injected fault on rank %d after %s"):format(rank, info.file), 0) end
    end,
  })
  for _, k in ipairs({ "rows", "embedded", "skipped", "shards", "resumed_shards", "computed_shards", "computed_here",
    "world" }) do result[k] = r[k] end
  result.ok = true
end)
result.decoded = decoded
if not ok then result.error = tostring(err) end
local f = assert(io.open(("%s.%s.json"):format(out, distributed and ("rank" .. rank) or "single"), "wb"))
f:write(clip.json.encode(result))
f:close()
if distributed then dist.finalize() end
os.exit(ok and 0 or 1)
