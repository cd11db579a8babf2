--- clip.embed: embed a collection larger than memory into a folder of shards,
-- resumably, and read such a folder back.
--
--   local embed = require "clip.embed"                 -- also clip.embed
--   local r = embed.run(model, "photos/", "photos.emb", { progress = true })
--   print(r.embedded, r.skipped)                       -- rows written, bad files left out
--   -- killed half-way? run the same call again: finished shards are kept
--   local e = embed.open("photos.emb")
--   local emb, paths = e:load()                         -- Tensor {n, D}, list of n paths
--   local idx = e:index()                               -- a clip.search Index
--   for t, inputs in e:shards() do ... end              -- one shard at a time
--
-- Layout of the output folder:
--   manifest.json             what was run (model fingerprint, source, options) and
--                             every finished shard; rewritten (temporary file +
--                             rename) after each shard
--   shard-00000.safetensors   the embeddings of stream rows 1..chunk_size that
--                             decoded: tensor image_embeds (or text_embeds) {k, D},
--                             metadata image_paths (or texts) and indices (the
--                             rows' 1-based positions in the stream), JSON lists
--   shard-00000.npy + .json   the same with format = "npy": the array, and
--                             {"inputs": [...], "indices": [...]}
-- A shard is written to a temporary name and renamed, then the manifest; a kill
-- at any moment loses at most the shard in progress. Each shard covers
-- chunk_size consecutive rows of the stream, bad ones included, so the rows a
-- finished shard covers never depend on which files were bad.
local core = require "clip.core"
local stream = require "clip.stream"
local progress = require "clip.progress"
local npy = require "clip.npy"

local M = {}

M.FORMAT = "clip.embed"
M.VERSION = 1
M.CHUNK_SIZE = 4096

local MANIFEST = "manifest.json"

local function join(dir, name) return (dir:gsub("/+$", "")) .. "/" .. name end

-- "lua/clip/image.lua:146: x.png: ..." -> "x.png: ..."
local function clean(msg)
  msg = tostring(msg)
  local prev
  repeat
    prev = msg
    msg = msg:gsub("^[^%s:]+%.lua:%d+: ", ""):gsub("^preprocess_batch: item %d+: ", "")
  until msg == prev
  return msg
end

-- ------------------------------------------------------------------ decoding
--- decode_batch(model, paths [, opts]) -> pixels, errors
-- THE DECODE HOOK: every image run() embeds is decoded and preprocessed here
-- (or by opts.decode, which has the same contract). pixels: a Tensor {k, 3, S,
-- S} of the paths that decoded, in order (or nil when none did); errors: nil, or
-- a table whose entry i is the message for path i if it did not decode (naming
-- the file and the reason; nil or false for the others). A pixels tensor with
-- one row per path (#paths rows, the failed ones holding anything) is accepted
-- too. opts is run()'s options (opts.decode_threads: the threads to decode on;
-- default the module pool's size). This one decodes on threads
-- (Processor:preprocess_batch with skip_errors).
function M.decode_batch(model, paths, opts)
  -- on the module's threads (preprocess_batch's default: the pool's size, which is idle
  -- during the call); bad files left out of the pixels and reported by position
  local threads = opts and opts.decode_threads
  local px, errs = model.processor:preprocess_batch(paths, { skip_errors = true, threads = threads })
  if #errs == 0 then return px, nil end
  local errors = {}
  for _, e in ipairs(errs) do errors[e.index] = e.error end
  if px:size(1) == 0 then return nil, errors end
  return px, errors
end

-- ------------------------------------------------------------------ JSON
-- canonical JSON (sorted keys, integers as integers): the comparison of settings
local function canon(v)
  local t = type(v)
  if t == "table" then
    if v[1] ~= nil or next(v) == nil then
      local parts = {}
      for i = 1, #v do parts[i] = canon(v[i]) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local parts = {}
    for i, k in ipairs(keys) do
      local x = v[k]
      if x == nil then x = v[tonumber(k)] end
      parts[i] = ("%q:%s"):format(k, canon(x))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif t == "number" then
    local i = math.tointeger(v)
    if i then return tostring(i) end
    return ("%.17g"):format(v)
  elseif t == "string" then
    return ("%q"):format(v)
  elseif v == core.json_null then
    return "null"
  end
  return tostring(v)
end
M.canonical_json = canon

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("a")
  f:close()
  return s
end

local file_size = stream.file_size

-- JSON with sorted keys, two-space indents, lists of scalars on one line: a
-- manifest that reads well and diffs well
local function pretty(v, indent)
  local t = type(v)
  if t ~= "table" then
    if t == "number" then return canon(v) end
    if t == "string" then return core.json_encode(v) end
    return canon(v)
  end
  local pad, inner = indent or "", (indent or "") .. "  "
  if v[1] ~= nil or next(v) == nil then
    local flat, parts = true, {}
    for i = 1, #v do
      if type(v[i]) == "table" then flat = false end
      parts[i] = pretty(v[i], inner)
    end
    if flat then return "[" .. table.concat(parts, ", ") .. "]" end
    return "[\n" .. inner .. table.concat(parts, ",\n" .. inner) .. "\n" .. pad .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do parts[i] = core.json_encode(k) .. ": " .. pretty(v[k], inner) end
  return "{\n" .. inner .. table.concat(parts, ",\n" .. inner) .. "\n" .. pad .. "}"
end

local function write_json(path, v)
  local ok, err = core.write_file(path, pretty(v) .. "\n")
  if not ok then error(err, 0) end
end

-- ------------------------------------------------------------------ fingerprint
-- FNV-1a (64-bit, wrapping) over 8-byte little-endian words, then the tail bytes
local PRIME = 0x100000001b3
local function fnv(h, s)
  local n, i = #s, 1
  while i + 7 <= n do
    h = (h ~ string.unpack("<i8", s, i)) * PRIME
    i = i + 8
  end
  for j = i, n do h = (h ~ s:byte(j)) * PRIME end
  return h
end

local function sample_file(h, path)
  local f = io.open(path, "rb")
  if not f then return h end
  local size = f:seek("end")
  h = fnv(h, tostring(size))
  local piece = 65536
  for _, at in ipairs({ 0, size // 2, math.max(0, size - piece) }) do
    f:seek("set", at)
    h = fnv(h, f:read(piece) or "")
  end
  f:close()
  return h
end

--- fingerprint(model) -> 16 hex digits identifying the model's embeddings:
-- its configuration, its preprocessing, the size and three 64 KiB samples of
-- its weights file, and (float32 models) the bytes of both projections and the
-- final layer norms. Equal for the same checkpoint loaded twice, different
-- after a fine-tuning step that changed any of those.
function M.fingerprint(model)
  local h = 0xcbf29ce484222325
  h = fnv(h, model.core:config_json())
  if model.processor then h = fnv(h, canon(model.processor:config())) end
  local w = model.paths and model.paths.weights
  if type(w) == "string" and core.is_file(w) then h = sample_file(h, w) end
  if not model:is_half() then
    for _, it in ipairs(model:parameter_info()) do
      local n = it.name
      if n:find("projection", 1, true) or n:find("post_layernorm", 1, true)
        or n:find("final_layer_norm", 1, true) then
        h = fnv(h, n)
        h = fnv(h, model:param(n):bytes())
      end
    end
  end
  return ("%016x"):format(h)
end

-- ------------------------------------------------------------------ run
local function input_key(v)
  if type(v) == "string" then return v end
  return "<" .. type(v) .. ">"
end

local function shard_name(k) return ("shard-%05d"):format(k - 1) end

-- manifest.rank-R.json: a distributed run's per-rank record of its finished
-- shards (clip.embed_dist), merged into the manifest by rank 0
local function rank_file(name) return name:match("^manifest%.rank%-%d+%.json$") ~= nil end

local function our_file(name)
  return name == MANIFEST or name:match("^manifest%.json%.tmp%d+$")
    or name:match("^shard%-%d+%.safetensors$") or name:match("^shard%-%d+%.npy$")
    or name:match("^shard%-%d+%.json$") or name:match("^shard%-%d+%.[%a]+%.tmp%d+$")
    or rank_file(name) or name:match("^manifest%.rank%-%d+%.json%.tmp%d+$")
end

-- remove the files this module writes (and their temporaries) from dir;
-- temporaries_only: leave finished files
local function clear(dir, temporaries_only)
  local names = core.listdir(dir) or {}
  for _, nm in ipairs(names) do
    if our_file(nm) and (not temporaries_only or nm:match("%.tmp%d+$")) then os.remove(join(dir, nm)) end
  end
end

local function differences(old, new)
  for _, k in ipairs({ "kind", "column", "chunk_size", "normalize", "file_format", "model", "source" }) do
    local a, b = canon(old[k]), canon(new[k])
    if a ~= b then return k, a, b end
  end
end

local function short(s)
  if #s > 300 then return s:sub(1, 300) .. "..." end
  return s
end

-- does the finished shard e still exist as written?
local function shard_ok(dir, e)
  if not e.file or file_size(join(dir, e.file)) ~= e.bytes then return false end
  if e.sidecar and not core.is_file(join(dir, e.sidecar)) then return false end
  return true
end

-- the shards and skipped rows recorded in dir's manifest.rank-R.json files by a
-- distributed run with these settings (files of other settings are ignored)
local function rank_records(dir, settings)
  local shards, skipped, files = {}, {}, {}
  for _, nm in ipairs(core.listdir(dir) or {}) do
    if rank_file(nm) then
      files[#files + 1] = join(dir, nm)
      local text = read_file(join(dir, nm))
      local ok, r = pcall(core.json_decode, text or "", nm)
      if ok and type(r) == "table" and r.format == M.FORMAT .. ".rank" and type(r.settings) == "table"
        and not differences(r.settings, settings) then
        for _, e in ipairs(r.shards or {}) do shards[#shards + 1] = e end
        for _, x in ipairs(r.skipped or {}) do skipped[#skipped + 1] = x end
      end
    end
  end
  return shards, skipped, files
end

-- the embeddings of one chunk: rows is a list of {pos, input, line}
local function embed_chunk(model, kind, rows, o)
  local parts, kept, failed = {}, {}, {}
  local bs = o.batch_size
  for a = 1, #rows, bs do
    local b = math.min(#rows, a + bs - 1)
    local idx, inputs = {}, {}
    for k = a, b do
      local v = rows[k].input
      if type(v) == "string" and (kind == "text" or v ~= "") then
        idx[#idx + 1] = k
        inputs[#inputs + 1] = v
      else
        failed[#failed + 1] = { k, ("column '%s' holds %s, not %s"):format(o.column,
          v == nil and "nothing" or (type(v) == "string" and "an empty string" or "a " .. type(v)),
          kind == "image" and "an image path" or "a text") }
      end
    end
    if #inputs > 0 then
      local emb, good
      if kind == "image" then
        local px, errs = o.decode(model, inputs, o)
        good = {}
        local nerr = 0
        for i = 1, #inputs do
          if errs and errs[i] then
            nerr = nerr + 1
            failed[#failed + 1] = { idx[i], clean(errs[i]) }
          else
            good[#good + 1] = i
          end
        end
        if #good > 0 then
          if px == nil then error("embed: the decoder returned no pixels for images it did not report as failed", 0) end
          local n = px:size(1)
          if n == #inputs and nerr > 0 then
            local sel = {}
            for j, i in ipairs(good) do sel[j] = px:rows(i, i) end
            px = core.cat(sel)
          elseif n ~= #good then
            error(("embed: the decoder returned %d rows for %d paths with %d errors"):format(n, #inputs, nerr), 0)
          end
          emb = model:encode_images(px, { batch_size = bs })
        end
      else
        local ids
        ids, good = {}, {}
        for i, t in ipairs(inputs) do
          local ok, r = pcall(model.tokenize, model, t)
          if ok then
            ids[#ids + 1] = r
            good[#good + 1] = i
          else
            failed[#failed + 1] = { idx[i], clean(r) }
          end
        end
        if #ids > 0 then emb = model:encode_texts(ids, { batch_size = bs }) end
      end
      if emb then
        parts[#parts + 1] = emb
        for _, i in ipairs(good) do kept[#kept + 1] = idx[i] end
      end
    end
    if o.on_batch then o.on_batch(b - a + 1, #failed) end
  end
  table.sort(failed, function(x, y) return x[1] < y[1] end)
  local D = model.config.projection_dim
  local t = #parts == 0 and core.zeros({ 0, D }) or (#parts == 1 and parts[1] or core.cat(parts))
  if o.normalize and t:size(1) > 0 then t = t:normalize() end
  return t, kept, failed
end

local function write_shard(dir, k, kind, t, inputs, indices, o)
  local base = shard_name(k)
  local e = {}
  if o.file_format == "npy" then
    e.file, e.sidecar = base .. ".npy", base .. ".json"
    write_json(join(dir, e.sidecar), { inputs = inputs, indices = indices })
    npy.save(join(dir, e.file), t)
  else
    e.file = base .. ".safetensors"
    local meta = { format = "pt", model = o.model_dir, normalized = tostring(o.normalize),
      indices = core.json_encode(indices) }
    meta[kind == "image" and "image_paths" or "texts"] = core.json_encode(inputs)
    core.save_safetensors(join(dir, e.file), { [kind .. "_embeds"] = t }, { metadata = meta })
  end
  e.bytes = file_size(join(dir, e.file))
  return e
end

--- run(model, source, out_dir [, opts]) -> summary
-- Embeds every row of source (anything clip.stream.open takes: a folder, a
-- .jsonl/.csv/.txt file, a list, a Stream) into out_dir, chunk_size rows per
-- shard. Re-running the same call resumes: finished shards that are still as
-- written are kept (and their rows not read again past the check of their
-- first and last inputs), the rest is computed. A manifest written with
-- another model, source or options is refused, naming the difference, unless
-- overwrite = true (which deletes this module's files in out_dir first).
-- opts:
--   kind        "image" (default) or "text" (default for a .txt source)
--   column      the row's key holding the image path / text (default "image" /
--               "text"; a list of plain values is read under this key)
--   chunk_size  rows per shard (4096)
--   batch_size  rows per forward pass (32)
--   normalize   L2-normalize (false: raw, as CLIPModel's embeds)
--   format      "safetensors" (default) or "npy"
--   overwrite   false
--   on_error    "skip" (default: a row that cannot be read - a bad or missing
--               image, a row without the column - is left out, listed in the
--               manifest's skipped and counted) or "raise" (the first one is an
--               error naming the file and the reason)
--   decode      the decode hook (default M.decode_batch; the same contract)
--   progress    as clip.progress.wrap (unit img / text); total = the rows
--   total       the number of rows, for the progress bar (default: counted
--               with stream:count() when progress is on; false: not counted)
--   log         function(line) for the skipped rows (default: the bar's log)
--   on_chunk    function(info) after each shard and its manifest are written:
--               {shard, file, rows, embedded, first, last, skipped}
--   distributed true or {timeout = s, wait_timeout = s}: every MPI rank runs
--               the same call and embeds its share of the chunks into the one
--               out_dir (clip.embed_dist; docs/distributed.md, "Sharded
--               embedding"); the result equals a single-process run's
-- summary: {out_dir, manifest, kind, dim, rows, embedded, skipped (count),
-- skipped_list, shards, resumed_shards, computed_shards}.
-- the checked options, the stream and the settings a manifest records (the
-- part of run() shared with the distributed run); errors at level lvl
local function setup(model, source, out_dir, opts, lvl)
  if type(model) ~= "table" or not model.core then error("embed.run: expected a clip model", lvl) end
  if type(out_dir) ~= "string" or out_dir == "" then error("embed.run: expected an output directory", lvl) end
  if type(source) == "string" and core.is_file(source) and require("clip.image").has_image_extension(source) then
    source = { source } -- one image
  end
  if type(source) == "string" and source ~= "-" and not core.is_file(source) and not core.is_dir(source) then
    error(source .. ": no such file or directory", lvl)
  end
  local kind = opts.kind
  if kind == nil then
    local lines = type(source) == "string" and not core.is_dir(source) and stream.format_of(source) == "lines"
    kind = lines and "text" or "image"
  end
  if kind ~= "image" and kind ~= "text" then
    error(("embed.run: kind must be \"image\" or \"text\", got %s"):format(tostring(kind)), lvl)
  end
  if kind == "text" and not model.tokenizer then error("embed.run: the model was loaded without a tokenizer", lvl) end
  local column = opts.column or kind
  local chunk = math.tointeger(opts.chunk_size or M.CHUNK_SIZE)
  if not chunk or chunk < 1 then error("embed.run: chunk_size must be a positive integer", lvl) end
  local bs = math.tointeger(opts.batch_size or 32)
  if not bs or bs < 1 then error("embed.run: batch_size must be a positive integer", lvl) end
  local fmt = opts.format or "safetensors"
  if fmt ~= "safetensors" and fmt ~= "npy" then
    error(("embed.run: format must be \"safetensors\" or \"npy\", got %s"):format(tostring(fmt)), lvl)
  end
  local on_error = opts.on_error or "skip"
  if on_error ~= "skip" and on_error ~= "raise" then
    error(("embed.run: on_error must be \"skip\" or \"raise\", got %s"):format(tostring(on_error)), lvl)
  end
  local s = stream.open(source, { column = column, images = kind == "image" and { column } or nil,
    format = (kind == "text" and type(source) == "string" and source == "-") and "lines" or nil })
  local D = model.config.projection_dim
  local settings = {
    kind = kind, column = column, chunk_size = chunk, normalize = opts.normalize == true, file_format = fmt,
    model = { fingerprint = M.fingerprint(model), projection_dim = D },
    source = s:describe(),
  }
  return { kind = kind, column = column, chunk = chunk, bs = bs, fmt = fmt, on_error = on_error, s = s, D = D,
    settings = settings }
end

-- the earlier run's manifest in out_dir to resume, or nil to start afresh
-- (after clear(out_dir, false)); refuses a manifest of other settings, and
-- shard files without a manifest, unless overwrite. Reads only.
local function existing_manifest(out_dir, settings, overwrite, lvl)
  local mpath = join(out_dir, MANIFEST)
  local text = read_file(mpath)
  if text and not overwrite then
    local okj, m = pcall(core.json_decode, text, mpath)
    if not okj then error(clean(m) .. " (rerun with overwrite = true to start over)", lvl) end
    if type(m) ~= "table" or m.format ~= M.FORMAT then
      error(mpath .. ": not a clip.embed manifest (rerun with overwrite = true to replace it)", lvl)
    end
    local k, a, b = differences(m, settings)
    if k then
      error(("%s: this folder was written with another %s: %s; this run has %s. Rerun with overwrite = true "
        .. "(clip embed --overwrite) to start over, or write to another folder"):format(out_dir,
          k == "file_format" and "format" or k, short(a), short(b)), lvl)
    end
    return m
  end
  if not text and not overwrite then
    for _, nm in ipairs(core.listdir(out_dir) or {}) do
      if our_file(nm) and not nm:match("%.tmp%d+$") then
        error(("%s: holds %s but no %s; rerun with overwrite = true to replace it"):format(out_dir, nm, MANIFEST), lvl)
      end
    end
  end
  return nil
end

function M.run(model, source, out_dir, opts)
  opts = opts or {}
  if opts.distributed then return require("clip.embed_dist").run(model, source, out_dir, opts) end
  local c = setup(model, source, out_dir, opts, 3)
  local kind, column, chunk, bs, fmt, on_error, s, D, settings = c.kind, c.column, c.chunk, c.bs, c.fmt,
    c.on_error, c.s, c.D, c.settings
  local ok, err = core.mkdir_p(out_dir)
  if not ok then error(err, 2) end
  local mpath = join(out_dir, MANIFEST)

  -- the manifest: a new one, or the earlier run's to resume
  local man = existing_manifest(out_dir, settings, opts.overwrite, 3)
  if not man then clear(out_dir, false) end
  clear(out_dir, true)
  if not man then
    man = { format = M.FORMAT, version = M.VERSION, shards = {}, skipped = {} }
  end
  for k, v in pairs(settings) do man[k] = v end
  man.model_dir = model.dir
  man.batch_size = bs
  man.shards = man.shards or {}
  man.skipped = man.skipped or {}
  man.complete = false
  man.distributed = nil
  -- a distributed run killed before rank 0 merged its ranks' records: take them
  local rshards, rskipped, rfiles = rank_records(out_dir, settings)
  if #rfiles > 0 then
    local seen = {}
    for _, e in ipairs(man.shards) do seen[e.file or ""] = true end
    for _, e in ipairs(rshards) do
      if not seen[e.file or ""] then
        seen[e.file or ""] = true
        man.shards[#man.shards + 1] = e
      end
    end
    table.sort(man.shards, function(x, y) return (x.first or 0) < (y.first or 0) end)
    local pos = {}
    for _, x in ipairs(man.skipped) do pos[x.position] = true end
    for _, x in ipairs(rskipped) do
      if not pos[x.position] then
        pos[x.position] = true
        man.skipped[#man.skipped + 1] = x
      end
    end
    table.sort(man.skipped, function(x, y) return x.position < y.position end)
  end

  -- keep the longest prefix of finished shards that are still as written and
  -- follow each other (a distributed run finishes shards out of order)
  local keep, next_row, gap = 0, 1, false
  for i, e in ipairs(man.shards) do
    if not shard_ok(out_dir, e) then break end
    if e.first ~= next_row then gap = true break end
    keep, next_row = i, e.last + 1
  end
  local dropped = #man.shards - keep
  for i = #man.shards, keep + 1, -1 do man.shards[i] = nil end
  local done_rows = 0
  for _, e in ipairs(man.shards) do done_rows = done_rows + e.rows end
  local sk = {}
  for _, x in ipairs(man.skipped) do if x.position <= done_rows then sk[#sk + 1] = x end end
  man.skipped = sk
  write_json(mpath, man)
  for _, f in ipairs(rfiles) do os.remove(f) end

  local total = opts.total
  if total == nil and opts.progress and not s.once then total = s:count() end
  if total == false then total = nil end
  local bar = progress.wrap(opts.progress, total, "embed", kind == "image" and "img" or "text", done_rows)
  local log = opts.log or function(line) bar:log(line) end
  if dropped > 0 and gap then
    log(("%s: %d shard(s) of a distributed run come after a missing one; computing them again in order"):format(
      out_dir, dropped))
  elseif dropped > 0 then
    log(("%s: %d shard(s) listed in the manifest are missing or changed; computing them again"):format(out_dir, dropped))
  end
  local o = { batch_size = bs, column = column, normalize = opts.normalize == true, file_format = fmt,
    decode = opts.decode or M.decode_batch, decode_threads = opts.decode_threads, model_dir = model.dir }
  local nskipped = #man.skipped
  -- the bar moves after every batch, not only at the end of a shard
  local shown = done_rows
  o.on_batch = function(n, failed_so_far)
    shown = shown + n
    local sk = nskipped + failed_so_far
    bar:update(shown, sk > 0 and ("skipped " .. sk) or nil)
  end
  local embedded = 0
  for _, e in ipairs(man.shards) do embedded = embedded + e.embedded end
  bar:update(done_rows, nskipped > 0 and ("skipped " .. nskipped) or nil)

  local pos, resumed = done_rows, #man.shards
  -- the pass; on any error the bar is wiped (not left half drawn) and the error goes on
  local okp, perr = pcall(function()
    local it = s:rows()
    -- the finished rows: read (not embedded), their shards' first and last inputs checked
    local si = 1
    for p = 1, done_rows do
      local row = it()
      local e = man.shards[si]
      if row == nil then
        error(("%s: the source has only %d rows, the finished shards cover %d; it changed since they were "
          .. "written (rerun with overwrite = true to start over)"):format(out_dir, p - 1, done_rows), 2)
      end
      local want = (p == e.first and e.first_input) or (p == e.last and e.last_input) or nil
      if want ~= nil and input_key(row[column]) ~= want then
        error(("%s: the source changed since %s was written: row %d is %s, the manifest has %s (rerun with "
          .. "overwrite = true to start over)"):format(out_dir, e.file, p, short(input_key(row[column])),
            short(want)), 2)
      end
      if p == e.last then si = si + 1 end
    end
    local k = #man.shards
    local function flush(rows)
      local t, kept, failed = embed_chunk(model, kind, rows, o)
      if #failed > 0 and on_error == "raise" then
        local r = rows[failed[1][1]]
        error(("%s%s"):format(r.line and ("%s: line %d: "):format(s.name, r.line) or "", failed[1][2]), 0)
      end
      local inputs, indices = {}, {}
      for j, i in ipairs(kept) do
        inputs[j] = rows[i].input
        indices[j] = rows[i].pos
      end
      k = k + 1
      local e = write_shard(out_dir, k, kind, t, inputs, indices, o)
      e.rows, e.embedded, e.skipped = #rows, #kept, #failed
      e.first, e.last = rows[1].pos, rows[#rows].pos
      e.first_input, e.last_input = input_key(rows[1].input), input_key(rows[#rows].input)
      for _, f in ipairs(failed) do
        local r = rows[f[1]]
        local x = { position = r.pos, input = type(r.input) == "string" and r.input or nil, error = f[2],
          line = r.line, shard = e.file }
        man.skipped[#man.skipped + 1] = x
        log(("skipped %s%s"):format(r.line and ("%s line %d: "):format(s.name, r.line) or "", f[2]))
      end
      man.shards[#man.shards + 1] = e
      embedded = embedded + #kept
      nskipped = nskipped + #failed
      man.rows, man.embedded = pos, embedded
      write_json(mpath, man)
      shown = pos
      bar:update(pos, nskipped > 0 and ("skipped " .. nskipped) or nil)
      if opts.on_chunk then
        opts.on_chunk({ shard = k, file = e.file, rows = e.rows, embedded = e.embedded, first = e.first,
          last = e.last, skipped = e.skipped })
      end
    end
    local rows = {}
    while true do
      local row = it()
      if row == nil then break end
      pos = pos + 1
      rows[#rows + 1] = { pos = pos, input = row[column], line = row._line }
      if #rows == chunk then
        flush(rows)
        rows = {}
      end
    end
    if #rows > 0 then flush(rows) end
  end)
  if not okp then
    bar.transient = true
    bar:finish()
    error(perr, 0)
  end
  man.rows, man.embedded, man.complete = pos, embedded, true
  man.dim = D
  write_json(mpath, man)
  bar:finish()
  return { out_dir = out_dir, manifest = mpath, kind = kind, dim = D, rows = pos, embedded = embedded,
    skipped = nskipped, skipped_list = man.skipped, shards = #man.shards, resumed_shards = resumed,
    computed_shards = #man.shards - resumed }
end

-- ------------------------------------------------------------------ reading
local Reader = {}
Reader.__index = Reader
Reader.__name = "clip.embed.Reader"
M.Reader = Reader

--- is_output(dir): dir holds a clip.embed manifest.
function M.is_output(dir)
  return type(dir) == "string" and core.is_file(join(dir, MANIFEST))
end

--- open(dir) -> Reader: reader.manifest, .kind, .dim, .complete (false while
-- a run is unfinished: the finished shards are readable), .rows, .embedded,
-- .skipped (the list), #reader (shards). Errors name the file.
function M.open(dir)
  local mpath = join(dir, MANIFEST)
  local text, err = read_file(mpath)
  if not text then error(err .. " (is " .. dir .. " a folder written by clip.embed.run / clip embed --out-dir?)", 2) end
  local ok, m = pcall(core.json_decode, text, mpath)
  if not ok then error(clean(m), 2) end
  if type(m) ~= "table" or m.format ~= M.FORMAT or type(m.shards) ~= "table" then
    error(mpath .. ": not a clip.embed manifest", 2)
  end
  local embedded = 0
  for _, e in ipairs(m.shards) do embedded = embedded + (e.embedded or 0) end
  return setmetatable({ dir = dir, manifest = m, kind = m.kind, dim = m.model and m.model.projection_dim,
    complete = m.complete == true, rows = m.rows or 0, embedded = embedded, skipped = m.skipped or {} }, Reader)
end

function Reader:__len() return #self.manifest.shards end

--- shard(i) -> embeddings {k, D}, inputs (paths or texts), indices (stream positions), entry
function Reader:shard(i)
  local e = self.manifest.shards[i]
  if not e then error(("%s: no shard %s (it has %d)"):format(self.dir, tostring(i), #self.manifest.shards), 2) end
  local path = join(self.dir, e.file)
  local t, inputs, indices
  if e.sidecar then
    t = npy.load(path)
    local sp = join(self.dir, e.sidecar)
    local s, err = read_file(sp)
    if not s then error(err, 2) end
    local side = core.json_decode(s, sp)
    inputs, indices = side.inputs, side.indices
    if t:dim() == 1 and t:size(1) == 0 then t = core.zeros({ 0, self.dim }) end
  else
    local tensors, info = core.load_safetensors(path)
    t = tensors[self.kind .. "_embeds"]
    if not t then error(("%s: no tensor %s_embeds"):format(path, self.kind), 2) end
    local md = info.metadata or {}
    local list = md[self.kind == "image" and "image_paths" or "texts"]
    inputs = list and core.json_decode(list, path .. ": metadata")
    indices = md.indices and core.json_decode(md.indices, path .. ": metadata indices")
  end
  if type(inputs) ~= "table" or #inputs ~= e.embedded or t:size(1) ~= e.embedded then
    error(("%s: %d embeddings and %s inputs, the manifest says %d"):format(path, t:size(1),
      type(inputs) == "table" and tostring(#inputs) or "no", e.embedded), 2)
  end
  if t:size(1) > 0 and t:size(2) ~= self.dim then
    error(("%s: embeddings of %d values, the manifest says %d"):format(path, t:size(2), self.dim), 2)
  end
  return t, inputs, indices or {}, e
end

--- shards() -> iterator of (embeddings, inputs, indices, entry), one shard at a time.
function Reader:shards()
  local i = 0
  return function()
    i = i + 1
    if i > #self.manifest.shards then return nil end
    return self:shard(i)
  end
end

--- load() -> embeddings {n, D} (every shard, in order), inputs, indices.
function Reader:load()
  local parts, inputs, indices = {}, {}, {}
  for t, inp, idx in self:shards() do
    if t:size(1) > 0 then parts[#parts + 1] = t end
    for _, v in ipairs(inp) do inputs[#inputs + 1] = v end
    for _, v in ipairs(idx) do indices[#indices + 1] = v end
  end
  local t
  if #parts == 0 then t = core.zeros({ 0, self.dim })
  elseif #parts == 1 then t = parts[1]:clone()
  else t = core.cat(parts) end
  return t, inputs, indices
end

--- search(query, k) -> the k best rows for one query embedding ({D} or {1, D}),
-- one shard in memory at a time: a list of {input, score (cosine), index (row
-- in load()'s order)}, best first, ties in row order.
function Reader:search(q, k)
  if q:dim() == 1 then q = q:reshape({ 1, q:size(1) }) end
  if q:dim() ~= 2 or q:size(1) ~= 1 then error("search: expected one query embedding, {D} or {1, D}", 2) end
  if q:size(2) ~= self.dim then
    error(("%s: embeddings of %d values, the query has %d"):format(self.dir, self.dim, q:size(2)), 2)
  end
  k = math.tointeger(k or 10)
  if not k or k < 1 then error("search: k must be a positive integer", 2) end
  local best, offset = {}, 0
  local function key(h) return h.score == h.score and h.score or -math.huge end -- NaN last
  local function better(a, b)
    if key(a) ~= key(b) then return key(a) > key(b) end
    return a.index < b.index
  end
  for t, inputs in self:shards() do
    local n = t:size(1)
    if n > 0 then
      local kk = math.min(k, n)
      local vals, idx = core.cosine_similarity(q, t):topk(kk)
      for j = 1, kk do
        local i = idx[1][j]
        best[#best + 1] = { input = inputs[i], score = vals:get(1, j), index = offset + i }
      end
      table.sort(best, better)
      for j = #best, k + 1, -1 do best[j] = nil end
    end
    offset = offset + n
  end
  return best
end

--- index() -> a clip.search Index of the images (normalized embeddings).
function Reader:index()
  if self.kind ~= "image" then error(self.dir .. ": holds text embeddings; a search index needs images", 2) end
  local t, paths = self:load()
  if t:size(1) == 0 then error(self.dir .. ": no embeddings to index", 2) end
  return require("clip.search").from_embeddings(t, paths,
    { model = self.manifest.model_dir, skipped = self.skipped })
end

-- the pieces run() is made of, for the distributed run (clip.embed_dist)
M._impl = { MANIFEST = MANIFEST, join = join, clean = clean, canon = canon, read_file = read_file,
  file_size = file_size, write_json = write_json, fnv = fnv, input_key = input_key, shard_name = shard_name,
  our_file = our_file, rank_file = rank_file, clear = clear, short = short, shard_ok = shard_ok,
  rank_records = rank_records, embed_chunk = embed_chunk, write_shard = write_shard, setup = setup,
  existing_manifest = existing_manifest }

return M
