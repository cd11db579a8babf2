--- clip.stream: datasets larger than memory, read row by row.
--
--   local stream = require "clip.stream"             -- also clip.stream, clip.data.stream
--   local s = stream.open("pairs.jsonl", { images = { "image" } })    -- .jsonl .csv .tsv .txt, a folder
--   for row, i in s:rows() do ... end                -- one row at a time, in file order
--   local t = s:shuffle({ buffer = 10000, seed = 42 }):shard(4, rank)  -- rank 0..3
--   for batch in t:batches(32, { columns = { anchor = "image", positive = "title" } }) do
--     loss:backward(batch)
--   end
--   clip.Trainer{ model = model, train = s, ... }   -- a Stream trains like a Dataset
--
-- A Stream is a recipe, not data: every :rows() (or :batches()) opens the source
-- again and reads it lazily, so memory holds the rows in flight (a batch, the
-- shuffle buffer), never the file. Operations return new Streams, in the manner
-- of Hugging Face datasets' IterableDataset: map, filter, skip, take, shard,
-- shuffle (a bounded buffer), batches. Orders are deterministic: file order, or
-- for a folder the depth-first walk with each directory's names sorted (the
-- order of clip.data.list_images), and a shuffle is a function of its seed.
--
-- Sources (open):
--   "x.jsonl" / ".ndjson"  one JSON object per line (blank lines skipped); a bad
--                          line is an error naming the file and the line
--   "x.csv" / ".tsv"       RFC 4180 read in 64 KiB pieces: quoted fields may hold
--                          newlines; the first record is the header
--   "x.txt" (any other)    one text per non-blank line: rows {text = line}
--   "x.jpg" (an image)     one row {image = path, class = ""}
--   "-"                    the lines of stdin (can be read once only)
--   a directory            its image files: rows {image = path, class = the
--                          sub-folder below the root ("" for files in the root)}
--   a list                 rows (tables), or values wrapped as {[column] = value}
--   a clip.data Dataset    its rows
-- Rows read from files carry _line (the line the row starts on), for messages.
local core = require "clip.core"
local data = require "clip.data"
local image = require "clip.image"

local M = {}

local Stream = {}
Stream.__index = Stream
Stream.__name = "clip.Stream"
M.Stream = Stream

local CHUNK = 65536

--- True when x is a Stream.
function M.is_stream(x) return getmetatable(x) == Stream end

local function new(fields)
  local s = setmetatable(fields, Stream)
  s.stats = s.stats or {}
  return s
end

-- a derived stream: the parent's metadata, a new generator and description
local function derive(parent, gen, desc, extra)
  local s = new({ gen = gen, name = parent.name, base = parent.base, columns = parent.columns,
    image_columns = parent.image_columns, once = parent.once, epoch = parent.epoch,
    shuffle_buffer = parent.shuffle_buffer, desc = desc, parent = parent })
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

local function strip_slashes(p)
  if p == "/" then return p end
  return (p:gsub("/+$", ""):gsub("^%./", ""))
end

-- Sources ------------------------------------------------------------------------

local function open_file(path)
  if path == "-" then return io.stdin end
  local f, err = io.open(path, "rb")
  if not f then error(err, 0) end
  return f
end

local function resolver(base, columns)
  if not columns or #columns == 0 then return function() end end
  return function(row)
    for _, c in ipairs(columns) do
      local p = row[c]
      if type(p) == "string" and p ~= "" then row[c] = data.join(base, p) end
    end
  end
end

-- a file's lines, one at a time; a BOM before the first is dropped
local function lines_of(path)
  local f = open_file(path)
  local ln = 0
  return function()
    local l = f:read("l")
    if l == nil then
      if f ~= io.stdin then f:close() end
      return nil
    end
    ln = ln + 1
    if ln == 1 and l:sub(1, 3) == "\239\187\191" then l = l:sub(4) end
    return l, ln
  end
end

local function jsonl_source(path, opts)
  local resolve = resolver(opts.base, opts.images)
  return function()
    local next_line = lines_of(path)
    return function()
      while true do
        local l, ln = next_line()
        if not l then return nil end
        if l:find("%S") then
          local ok, v = pcall(core.json_decode, l, path .. ": line " .. ln)
          if not ok then error(tostring(v), 0) end
          if type(v) ~= "table" or v[1] ~= nil then
            error(("%s: line %d: expected a JSON object"):format(path, ln), 0)
          end
          v._line = ln
          resolve(v)
          return v
        end
      end
    end
  end
end

local function lines_source(path, opts)
  local col = opts.column or "text"
  return function()
    local next_line = lines_of(path)
    return function()
      while true do
        local l, ln = next_line()
        if not l then return nil end
        l = l:gsub("\r$", "")
        if l:find("%S") then return { [col] = l, _line = ln } end
      end
    end
  end
end

-- CSV records from a file read CHUNK bytes at a time; a record that does not
-- end in the buffer gets more text appended (doubling the read, so a huge
-- quoted field costs linear time) and is parsed again from its start.
local function csv_records(path, delim)
  local f = open_file(path)
  local buf, pos, line, eof, first = "", 1, 1, false, true
  local ropts = { delimiter = delim, name = path, final = false }
  local function more(size)
    local chunk = f:read(size)
    if chunk == nil then
      eof = true
      if f ~= io.stdin then f:close() end
      return
    end
    if first then
      first = false
      if chunk:sub(1, 3) == "\239\187\191" then chunk = chunk:sub(4) end
    end
    buf = buf:sub(pos) .. chunk
    pos = 1
  end
  return function()
    while true do
      if pos > #buf then
        if eof then return nil end
        more(CHUNK)
      else
        ropts.final = eof
        local rec, p2, l2 = data.parse_csv_record(buf, pos, line, ropts)
        if rec then
          pos, line = p2, l2
          if not data.csv_blank(rec) then return rec end
        else
          more(math.max(CHUNK, #buf - pos + 1))
        end
      end
    end
  end
end

local function csv_source(path, opts, delim)
  local resolve = resolver(opts.base, opts.images)
  return function()
    local next_rec = csv_records(path, delim)
    local header = next_rec()
    if not header then error(path .. ": empty file (no header row)", 0) end
    data.csv_check_header(path, header)
    return function()
      local rec = next_rec()
      if not rec then return nil end
      local row = data.csv_row(path, header, rec)
      resolve(row)
      return row
    end
  end
end

local function csv_header(path, delim)
  local header = csv_records(path, delim)()
  if not header then error(path .. ": empty file (no header row)", 0) end
  data.csv_check_header(path, header)
  local cols = {}
  for i, c in ipairs(header) do cols[i] = c end
  return cols
end

-- The image files below root, lazily: one directory's names at a time (packed
-- into a string, "\0"-separated, once listed), depth first, names sorted.
local function folder_source(root, opts)
  local ext = image.EXTENSIONS
  if opts.extensions then
    ext = {}
    for _, e in ipairs(opts.extensions) do ext[(e:lower():gsub("^%.", ""))] = true end
  end
  local recursive = opts.recursive ~= false
  local function listing(dir)
    local names, err = core.listdir(dir)
    if not names then error(err, 0) end
    local packed = table.concat(names, "\0")
    return { dir = dir, names = packed, pos = 1, empty = #names == 0 }
  end
  return function()
    local stack = { listing(root) }
    stack[1].class = ""
    return function()
      while #stack > 0 do
        local top = stack[#stack]
        if top.empty or top.pos > #top.names then
          stack[#stack] = nil
        else
          local e = top.names:find("\0", top.pos, true)
          local nm = top.names:sub(top.pos, (e or 0) - 1)
          top.pos = e and e + 1 or #top.names + 1
          if nm:sub(1, 1) ~= "." then
            local p = data.join(top.dir, nm)
            if core.is_dir(p) then
              if recursive then
                local sub = listing(p)
                sub.class = #stack == 1 and nm or top.class
                stack[#stack + 1] = sub
              end
            else
              local x = nm:match("%.([%w]+)$")
              if x and ext[x:lower()] then return { image = p, class = top.class } end
            end
          end
        end
      end
      return nil
    end
  end
end

local function list_source(list, column)
  return function()
    local i = 0
    return function()
      i = i + 1
      local v = list[i]
      if v == nil then return nil end
      if type(v) ~= "table" then return { [column] = v } end
      return v
    end
  end
end

local function format_of(path)
  if path == "-" then return "lines" end
  local ext = (path:match("%.([%w]+)$") or ""):lower()
  if ext == "csv" then return "csv" end
  if ext == "tsv" or ext == "tab" then return "tsv" end
  if ext == "jsonl" or ext == "ndjson" then return "jsonl" end
  if ext == "json" then return "json" end
  if image.EXTENSIONS[ext] then return "image" end
  return "lines"
end

--- format_of(path) -> "jsonl", "csv", "tsv", "json", "image" or "lines", by the
-- extension (as open reads it).
M.format_of = format_of

--- file_size(path) -> bytes, or nil when it cannot be opened.
local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local n = f:seek("end")
  f:close()
  return n
end
M.file_size = file_size

-- count the non-blank lines of a file (as lines_of + find("%S") see them),
-- CHUNK bytes at a time
local function count_lines(path)
  local f = open_file(path)
  local n, partial, first = 0, false, true
  while true do
    local s = f:read(CHUNK)
    if not s then break end
    local pos = 1
    if first then
      first = false
      if s:sub(1, 3) == "\239\187\191" then pos = 4 end
    end
    while true do
      local e = s:find("\n", pos, true)
      local x = s:find("%S", pos)
      if not e then
        if x then partial = true end
        break
      end
      if partial or (x and x < e) then n = n + 1 end
      partial = false
      pos = e + 1
    end
  end
  if partial then n = n + 1 end
  if f ~= io.stdin then f:close() end
  return n
end

--- open(source [, opts]) -> Stream
-- source: a file path (format by extension, or opts.format: "jsonl", "csv",
-- "tsv", "lines"), "-" (stdin lines), a directory, a list, a clip.data Dataset
-- or a Stream (returned as is).
-- opts:
--   format      force the file format
--   images      list of the columns holding image paths (JSONL/CSV): resolved
--               relative to base when read (not checked: a missing file is the
--               reader's error, e.g. a skipped row of clip.embed)
--   base        directory image paths are relative to (default: the file's)
--   columns     the column names, where the file cannot say (JSONL: default
--               the keys of the first row, sorted)
--   delimiter   CSV/TSV
--   column      the key a list's plain values or a text file's lines are
--               stored under (default "value" for lists, "text" for lines)
--   recursive   folders: descend into sub-folders (default true)
--   extensions  folders: the extensions taken (default clip.image.EXTENSIONS)
--   buffer      the shuffle buffer of batches{shuffle = true} (default 1000;
--               clip.Trainer shuffles every epoch through it)
function M.open(source, opts)
  opts = opts or {}
  if M.is_stream(source) then return source end
  local s = M._open(source, opts)
  if opts.buffer then
    local b = math.tointeger(opts.buffer)
    if not b or b < 1 then error("stream.open: buffer must be a positive integer", 2) end
    s.shuffle_buffer = b
  end
  return s
end

function M._open(source, opts)
  if type(source) == "table" and getmetatable(source) == data.Dataset then
    local rows = source.rows
    return new({ gen = list_source(rows, "value"), name = source.name, base = source.base,
      columns = source.columns, image_columns = source.image_columns,
      desc = { type = "dataset", name = source.name, count = #rows },
      count_fast = function() return #rows end })
  end
  if type(source) == "table" then
    local col = opts.column or "value"
    local first, last = source[1], source[#source]
    local cols = opts.columns
    if not cols then
      cols = {}
      if type(first) == "table" then
        for k in pairs(first) do if type(k) == "string" and k:sub(1, 1) ~= "_" then cols[#cols + 1] = k end end
        table.sort(cols)
      elseif first ~= nil then
        cols = { col }
      end
    end
    return new({ gen = list_source(source, col), name = opts.name or "list", columns = cols,
      image_columns = opts.images,
      desc = { type = "list", count = #source, first = type(first) ~= "table" and first or nil,
        last = type(last) ~= "table" and last or nil },
      count_fast = function() return #source end })
  end
  if type(source) ~= "string" then
    error("stream.open: expected a path, a directory, a list, a Dataset or a Stream, got " .. type(source), 3)
  end
  if source ~= "-" and core.is_dir(source) then
    local root = source == "/" and source or (source:gsub("/+$", ""))
    local gen = folder_source(root, opts)
    return new({ gen = gen, name = root, base = root, columns = { "image", "class" },
      image_columns = { "image" },
      desc = { type = "folder", path = strip_slashes(root), recursive = opts.recursive ~= false,
        extensions = opts.extensions },
      count_fast = function()
        local n, it = 0, gen()
        while it() do n = n + 1 end
        return n
      end })
  end
  if source ~= "-" and not core.is_file(source) then error(source .. ": no such file or directory", 3) end
  local fmt = opts.format or (source == "-" and "lines" or format_of(source))
  local base = opts.base or (source == "-" and "." or data.dirname(source))
  local ropts = { base = base, images = opts.images, column = opts.column }
  if type(ropts.images) == "string" then ropts.images = { ropts.images } end
  local s = { name = source, base = base, image_columns = ropts.images or {}, once = source == "-",
    desc = { type = fmt, path = source ~= "-" and strip_slashes(source) or "-", images = ropts.images,
      column = fmt == "lines" and (opts.column or "text") or nil } }
  if fmt == "image" then
    -- one image file: one row, as a folder holding only it would give
    s.gen = function()
      local done = false
      return function()
        if done then return nil end
        done = true
        return { image = source, class = "" }
      end
    end
    s.columns, s.image_columns = { "image", "class" }, { "image" }
    s.count_fast = function() return 1 end
  elseif fmt == "json" then
    error(source .. ": a JSON list is read whole, not streamed: use clip.data.load, or write one object "
      .. "per line (.jsonl)", 3)
  elseif fmt == "jsonl" then
    s.gen = jsonl_source(source, ropts)
    s.count_fast = function() return count_lines(source) end
    if opts.columns then
      s.columns = opts.columns
    elseif source ~= "-" then
      local it = s.gen()
      local first = it()
      local cols = {}
      for k in pairs(first or {}) do if type(k) == "string" and k:sub(1, 1) ~= "_" then cols[#cols + 1] = k end end
      table.sort(cols)
      s.columns = cols
    else
      s.columns = {}
    end
  elseif fmt == "csv" or fmt == "tsv" then
    local delim = opts.delimiter or (fmt == "tsv" and "\t" or ",")
    if #delim ~= 1 then error("stream.open: the delimiter must be one character", 3) end
    s.gen = csv_source(source, ropts, delim)
    s.columns = opts.columns or (source ~= "-" and csv_header(source, delim)) or {}
  elseif fmt == "lines" then
    s.gen = lines_source(source, ropts)
    s.columns = { opts.column or "text" }
    if source ~= "-" then s.count_fast = function() return count_lines(source) end end
  else
    error(("stream.open: unknown format '%s' (jsonl, csv, tsv, lines, image)"):format(tostring(fmt)), 3)
  end
  if source ~= "-" then s.desc.bytes = file_size(source) end
  return new(s)
end

--- from_generator(fn [, {name, columns}]) -> Stream over the rows of the
-- iterator fn() returns (called afresh for every pass, as HF's from_generator).
function M.from_generator(fn, opts)
  opts = opts or {}
  if type(fn) ~= "function" then error("stream.from_generator: expected a function", 2) end
  return new({ gen = function() return fn() end, name = opts.name or "generator", columns = opts.columns or {},
    image_columns = opts.images, desc = { type = "generator", name = opts.name } })
end

--- concat(streams) -> one Stream: the rows of each in turn.
function M.concat(list)
  if type(list) ~= "table" or #list == 0 then error("stream.concat: expected a non-empty list of streams", 2) end
  local parts, descs = {}, {}
  for i, s in ipairs(list) do
    parts[i] = M.open(s)
    descs[i] = parts[i].desc
  end
  local cols, seen, imgs, iseen, once = {}, {}, {}, {}, false
  for _, p in ipairs(parts) do
    for _, c in ipairs(p.columns or {}) do if not seen[c] then seen[c] = true; cols[#cols + 1] = c end end
    for _, c in ipairs(p.image_columns or {}) do if not iseen[c] then iseen[c] = true; imgs[#imgs + 1] = c end end
    once = once or p.once
  end
  return new({
    gen = function(ctx)
      local k, it = 0, nil
      return function()
        while true do
          if not it then
            k = k + 1
            if not parts[k] then return nil end
            it = parts[k].gen(ctx)
          end
          local r = it()
          if r ~= nil then return r end
          it = nil
        end
      end
    end,
    name = parts[1].name, base = parts[1].base, columns = cols, image_columns = imgs, once = once,
    desc = { type = "concat", parts = descs },
    count_fast = function()
      local n = 0
      for _, p in ipairs(parts) do n = n + p:count() end
      return n
    end,
  })
end

-- Iteration ------------------------------------------------------------------------

--- rows() -> iterator of (row, position): position counts the rows of this
-- stream from 1.
function Stream:rows()
  local it = self.gen({ epoch = self.epoch or 0 })
  local i = 0
  return function()
    local r = it()
    if r == nil then return nil end
    i = i + 1
    return r, i
  end
end
Stream.iter = Stream.rows

--- count() -> the number of rows (a pass over the source, without decoding
-- JSON where the format allows; remembered for this Stream object).
function Stream:count()
  if self._count then return self._count end
  if self.once then error(self.name .. ": a stream of stdin can be read once only; it cannot be counted", 2) end
  local n
  if self.count_fast then
    n = self.count_fast()
  else
    n = 0
    for _ in self:rows() do n = n + 1 end
  end
  self._count = n
  return n
end
Stream.size = Stream.count

function Stream:__tostring()
  return ("clip.Stream(%s: %s)"):format(self.name or "?", table.concat(self.columns or {}, ", "))
end

--- has_column(name): the column is among the stream's known columns.
function Stream:has_column(name)
  for _, c in ipairs(self.columns or {}) do if c == name then return true end end
  return false
end

--- describe() -> a JSON-able table of the source and the operations, the
-- identity of the stream (clip.embed compares it when resuming).
function Stream:describe()
  local ops, s = {}, self
  while s.parent do
    table.insert(ops, 1, s.desc)
    s = s.parent
  end
  return { source = s.desc, ops = ops, epoch = self.epoch ~= 0 and self.epoch or nil }
end

-- Operations -----------------------------------------------------------------------

--- map(fn) -> Stream of fn(row, position) (a new row, or the row changed in place).
function Stream:map(fn, name)
  if type(fn) ~= "function" then error("map: expected a function", 2) end
  local parent = self
  return derive(self, function(ctx)
    local it, i = parent.gen(ctx), 0
    return function()
      local r = it()
      if r == nil then return nil end
      i = i + 1
      return fn(r, i)
    end
  end, { op = "map", name = name }, { count_fast = function() return parent:count() end })
end

--- filter(fn) -> Stream of the rows for which fn(row, position) is true.
function Stream:filter(fn, name)
  if type(fn) ~= "function" then error("filter: expected a function", 2) end
  local parent = self
  return derive(self, function(ctx)
    local it, i = parent.gen(ctx), 0
    return function()
      while true do
        local r = it()
        if r == nil then return nil end
        i = i + 1
        if fn(r, i) then return r end
      end
    end
  end, { op = "filter", name = name })
end

local function check_count(n, what)
  local k = math.tointeger(n)
  if not k or k < 0 then error(what .. ": expected an integer >= 0, got " .. tostring(n), 3) end
  return k
end

--- skip(n) -> Stream without its first n rows. A position (the rows consumed
-- so far) resumes a pass: s:skip(position) continues where it stopped.
function Stream:skip(n)
  n = check_count(n, "skip")
  local parent = self
  return derive(self, function(ctx)
    local it = parent.gen(ctx)
    for _ = 1, n do if it() == nil then break end end
    return it
  end, { op = "skip", n = n }, { count_fast = function() return math.max(0, parent:count() - n) end })
end

--- take(n) -> Stream of the first n rows.
function Stream:take(n)
  n = check_count(n, "take")
  local parent = self
  return derive(self, function(ctx)
    local it, i = parent.gen(ctx), 0
    return function()
      if i >= n then return nil end
      i = i + 1
      return it()
    end
  end, { op = "take", n = n }, { count_fast = function() return math.min(n, parent:count()) end })
end

--- shard(num, index) -> Stream of every num-th row starting at index (0-based,
-- as an MPI rank): the rows at positions p with (p - 1) % num == index. The
-- num shards partition the stream: every row is in exactly one, in order.
-- Shard after shuffle (same seed everywhere) to deal a shuffled order out to
-- ranks; shard before shuffle to shuffle each rank's rows on their own.
-- (Hugging Face's split_dataset_by_node does this when the files do not divide
-- evenly among the nodes; its IterableDataset.shard splits by files instead.)
function Stream:shard(num, index)
  num, index = math.tointeger(num), math.tointeger(index)
  if not num or num < 1 then error("shard: num must be a positive integer", 2) end
  if not index or index < 0 or index >= num then
    error(("shard: index must be in 0..%d (0-based), got %s"):format(num - 1, tostring(index)), 2)
  end
  local parent = self
  return derive(self, function(ctx)
    local it, p = parent.gen(ctx), 0
    return function()
      while true do
        local r = it()
        if r == nil then return nil end
        p = p + 1
        if (p - 1) % num == index then return r end
      end
    end
  end, { op = "shard", num = num, index = index }, { count_fast = function()
    local n = parent:count()
    if n <= index then return 0 end
    return (n - index - 1) // num + 1
  end })
end

--- shuffle{buffer = 1000, seed = 0} -> Stream in a shuffled order, as Hugging
-- Face's IterableDataset.shuffle(seed, buffer_size): the first `buffer` rows
-- fill a buffer; then each new row takes the place of one drawn at random from
-- it, which is emitted; at the end the rest of the buffer is emitted in a
-- shuffled order. Memory: `buffer` rows. A row moves at most `buffer`
-- places earlier (any number later); with buffer >= the row count it is the
-- order of Dataset:shuffle(seed). The order is a function of the seed and
-- of set_epoch's epoch (the generator is data.rng(seed + epoch)). `s.stats.
-- max_buffer` records the largest buffer the last pass held.
function Stream:shuffle(opts)
  if type(opts) == "number" then opts = { seed = opts } end
  opts = opts or {}
  local size = math.tointeger(opts.buffer or opts.buffer_size or 1000)
  if not size or size < 1 then error("shuffle: buffer must be a positive integer", 2) end
  local seed = math.tointeger(opts.seed or 0)
  if not seed then error("shuffle: seed must be an integer", 2) end
  local parent = self
  local s
  s = derive(self, function(ctx)
    local it = parent.gen(ctx)
    local rng = data.rng(seed + (ctx.epoch or 0))
    local buf, n, d = {}, 0, nil -- d: the next row to emit once draining
    local stats = s.stats
    stats.max_buffer = 0
    return function()
      if not d then
        while true do
          local r = it()
          if r == nil then
            rng:shuffle(buf)
            d = 1
            break
          end
          if n < size then
            n = n + 1
            buf[n] = r
            if n > stats.max_buffer then stats.max_buffer = n end
          else
            local j = rng:random(size)
            local out = buf[j]
            buf[j] = r
            return out
          end
        end
      end
      if d > n then return nil end
      local out = buf[d]
      buf[d] = nil
      d = d + 1
      return out
    end
  end, { op = "shuffle", buffer = size, seed = seed }, { count_fast = function() return parent:count() end })
  return s
end

--- set_epoch(e) -> the same Stream whose shuffles draw with seed + e (HF's
-- set_epoch), for a new order every epoch.
function Stream:set_epoch(e)
  e = math.tointeger(e)
  if not e then error("set_epoch: expected an integer", 2) end
  local s = setmetatable({}, Stream)
  for k, v in pairs(self) do s[k] = v end
  s.epoch = e
  return s
end

--- batches(size [, opts]) -> iterator of (batch, index), as Dataset:batches: a
-- batch is a table of column lists ({anchor = {...}, positive = {...}}).
-- opts: columns ({out_name = column}; default every known column), drop_last
-- (false), shuffle (false; true: a buffered shuffle with seed and buffer =
-- opts.buffer, else open's buffer, else 1000, before batching - what
-- clip.Trainer asks for each epoch).
-- A stream whose image columns are known (a folder; open's images) types its
-- batches as Dataset:batches does (getmetatable(batch).modalities).
function Stream:batches(size, opts)
  opts = opts or {}
  size = math.tointeger(size)
  if not size or size < 1 then error("batches: size must be a positive integer", 2) end
  local cols = opts.columns
  if not cols then
    cols = {}
    for _, c in ipairs(self.columns or {}) do cols[c] = c end
  end
  if next(cols) == nil then error(("batches: %s: no columns known; pass columns = {...}"):format(self.name or "stream"), 2) end
  local src = self
  if opts.shuffle then
    src = self:shuffle({ buffer = opts.buffer or self.shuffle_buffer or 1000, seed = opts.seed or 0 })
  end
  local mt = self.image_columns and #self.image_columns > 0 and data.batch_meta(self.image_columns, cols) or nil
  local it = src:rows()
  local b, done = 0, false
  return function()
    if done then return nil end
    local batch = setmetatable({}, mt)
    for out in pairs(cols) do batch[out] = {} end
    local k = 0
    while k < size do
      local r = it()
      if r == nil then done = true break end
      k = k + 1
      for out, c in pairs(cols) do batch[out][k] = r[c] end
    end
    if k == 0 or (done and opts.drop_last and k < size) then return nil end
    b = b + 1
    return batch, b
  end
end

--- num_batches(size [, drop_last]) -> count (counts the rows: a pass).
function Stream:num_batches(size, drop_last)
  local n = self:count()
  return drop_last and n // size or (n + size - 1) // size
end

return M
