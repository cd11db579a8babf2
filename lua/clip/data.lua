--- clip.data: datasets for training and evaluation.
--
--   local data = require "clip.data"
--   local ds = data.load("pairs.csv", { images = { "image" } })   -- CSV, TSV, JSONL, JSON
--   local parts = ds:split({ train = 0.7, valid = 0.15, test = 0.15 }, { seed = 42 })
--   for batch in parts.train:batches(16, { shuffle = true, seed = 42,
--       columns = { anchor = "image", positive = "title", negative = "title_neg" } }) do
--     loss:backward(batch)
--   end
--   local folder = data.image_folder("photos/")   -- photos/<class>/<image>
--
-- A Dataset is a list of rows (tables keyed by column name) plus the column
-- names. Datasets are values: shuffle, split, select, ... return new Datasets
-- that share the row tables. Image columns hold paths resolved relative to
-- the file they were read from; a missing image is an error that names the
-- file, the row and the path looked for.
--
-- Randomness comes from data.rng(seed) (splitmix64 on Lua integers), so a seed
-- gives the same order on every machine and Lua's math.random is untouched.
local core = require "clip.core"
local image = require "clip.image"

local M = {}

-- Random numbers ----------------------------------------------------------

local Rng = {}
Rng.__index = Rng

--- rng(seed) -> Rng with :next() (64-bit integer), :random(n) (1..n, unbiased),
-- :uniform() ([0,1)), :shuffle(list) (Fisher-Yates, in place),
-- :permutation(n) (a shuffled 1..n).
function M.rng(seed)
  seed = math.tointeger(seed or 0)
  if not seed then error("rng: seed must be an integer", 2) end
  return setmetatable({ state = seed }, Rng)
end

function Rng:next()
  -- splitmix64 (Steele, Lea, Flood 2014); integer arithmetic wraps mod 2^64
  self.state = self.state + 0x9E3779B97F4A7C15
  local z = self.state
  z = (z ~ (z >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  return z ~ (z >> 31)
end

function Rng:uniform() return (self:next() >> 11) * (1.0 / 9007199254740992.0) end

function Rng:random(n)
  if n < 1 then error("rng:random: n must be >= 1", 2) end
  local limit = (math.maxinteger // n) * n -- rejection keeps it unbiased
  while true do
    local r = self:next() >> 1
    if r < limit then return r % n + 1 end
  end
end

function Rng:shuffle(list)
  for i = #list, 2, -1 do
    local j = self:random(i)
    list[i], list[j] = list[j], list[i]
  end
  return list
end

function Rng:permutation(n)
  local p = {}
  for i = 1, n do p[i] = i end
  return self:shuffle(p)
end

-- Paths -------------------------------------------------------------------

local function dirname(path)
  local d = path:match("^(.*)/[^/]*$")
  if d == nil then return "." end
  if d == "" then return "/" end
  return d
end
M.dirname = dirname

local function join(dir, name)
  if name:sub(1, 1) == "/" or dir == "." or dir == "" then return name end
  return (dir:gsub("/+$", "")) .. "/" .. name
end
M.join = join

local function read_all(path)
  local f, err = io.open(path, "rb")
  if not f then error(err, 3) end
  local s = f:read("a")
  f:close()
  return s
end

-- Dataset -----------------------------------------------------------------

local Dataset = {}
Dataset.__index = Dataset
Dataset.__name = "clip.data.Dataset"
M.Dataset = Dataset

--- dataset(rows, columns [, meta]) -> Dataset. columns defaults to the sorted
-- keys of the first row.
function M.dataset(rows, columns, meta)
  if type(rows) ~= "table" then error("dataset: expected a list of rows", 2) end
  if not columns then
    columns = {}
    if rows[1] then
      for k in pairs(rows[1]) do
        if type(k) == "string" and k:sub(1, 1) ~= "_" then columns[#columns + 1] = k end
      end
      table.sort(columns)
    end
  end
  local self = setmetatable({ rows = rows, columns = columns }, Dataset)
  for k, v in pairs(meta or {}) do self[k] = v end
  return self
end

local function derive(self, rows, extra)
  local d = setmetatable({ rows = rows, columns = self.columns, name = self.name, base = self.base,
    classes = self.classes, image_columns = self.image_columns }, Dataset)
  for k, v in pairs(extra or {}) do d[k] = v end
  return d
end

function Dataset:__len() return #self.rows end
function Dataset:size() return #self.rows end

function Dataset:__tostring()
  return ("clip.data.Dataset(%d rows: %s)"):format(#self.rows, table.concat(self.columns, ", "))
end

function Dataset:has_column(name)
  for _, c in ipairs(self.columns) do if c == name then return true end end
  return false
end

local function check_column(self, name, level)
  if not self:has_column(name) then
    error(("%s: no column '%s' (columns: %s)"):format(self.name or "dataset", tostring(name),
      table.concat(self.columns, ", ")), level + 1)
  end
end

--- column(name) -> a list of the column's values, in row order.
function Dataset:column(name)
  check_column(self, name, 2)
  local out = {}
  for i, r in ipairs(self.rows) do out[i] = r[name] end
  return out
end

--- select(indices) -> Dataset of those rows (1-based), in that order.
function Dataset:select(indices)
  local rows = {}
  for i, k in ipairs(indices) do
    local r = self.rows[k]
    if not r then error(("select: index %s outside 1..%d"):format(tostring(k), #self.rows), 2) end
    rows[i] = r
  end
  return derive(self, rows)
end

--- slice(a, b) -> rows a..b
function Dataset:slice(a, b)
  return derive(self, table.move(self.rows, a, math.min(b, #self.rows), 1, {}))
end

--- shuffle(seed) -> Dataset in a deterministic random order.
function Dataset:shuffle(seed)
  local p = M.rng(seed or 0):permutation(#self.rows)
  return self:select(p)
end

--- filter(fn) -> Dataset of the rows for which fn(row, i) is true.
function Dataset:filter(fn)
  local rows = {}
  for i, r in ipairs(self.rows) do if fn(r, i) then rows[#rows + 1] = r end end
  return derive(self, rows)
end

--- map(fn [, columns]) -> Dataset of fn(row, i) (new row tables).
function Dataset:map(fn, columns)
  local rows = {}
  for i, r in ipairs(self.rows) do rows[i] = fn(r, i) end
  local d = derive(self, rows)
  d.columns = columns or (rows[1] and M.dataset(rows).columns) or self.columns
  return d
end

--- rename({old = new, ...}) -> Dataset with those columns renamed.
function Dataset:rename(map)
  for old in pairs(map) do check_column(self, old, 2) end
  local rows = {}
  for i, r in ipairs(self.rows) do
    local n = {}
    for k, v in pairs(r) do n[map[k] or k] = v end
    rows[i] = n
  end
  local cols = {}
  for i, c in ipairs(self.columns) do cols[i] = map[c] or c end
  local imgs
  if self.image_columns then
    imgs = {}
    for i, c in ipairs(self.image_columns) do imgs[i] = map[c] or c end
  end
  return derive(self, rows, { columns = cols, image_columns = imgs })
end

--- concat(other, ...) -> Dataset with the rows of all, in order.
function Dataset:concat(...)
  local rows = table.move(self.rows, 1, #self.rows, 1, {})
  for _, o in ipairs({ ... }) do
    for _, r in ipairs(o.rows) do rows[#rows + 1] = r end
  end
  return derive(self, rows)
end

--- split(fractions [, {seed = 0, shuffle = true}]) -> table of Datasets.
-- fractions: {train = 0.7, valid = 0.15, test = 0.15} (any names; the order
-- is train, valid/validation, test, then the others sorted) or a list of
-- {name, fraction} pairs. Sizes as the seed's data preparation: each part but
-- the last gets floor(fraction * n) rows, the last gets the rest (76 rows ->
-- 53, 11, 12). The rows are shuffled with the seed first unless shuffle =
-- false.
function Dataset:split(fractions, opts)
  opts = opts or {}
  local parts = {}
  if fractions[1] then
    for _, p in ipairs(fractions) do parts[#parts + 1] = { p[1], p[2] } end
  else
    local order = { train = 1, valid = 2, validation = 2, dev = 2, test = 3 }
    for name, f in pairs(fractions) do parts[#parts + 1] = { name, f } end
    table.sort(parts, function(a, b)
      local oa, ob = order[a[1]] or 99, order[b[1]] or 99
      if oa ~= ob then return oa < ob end
      return a[1] < b[1]
    end)
  end
  local total = 0
  for _, p in ipairs(parts) do
    if type(p[2]) ~= "number" or p[2] < 0 then error("split: fractions must be numbers >= 0", 2) end
    total = total + p[2]
  end
  if total > 1 + 1e-9 then error(("split: fractions add up to %g, more than 1"):format(total), 2) end
  local src = opts.shuffle == false and self or self:shuffle(opts.seed or 0)
  local n, at, out = #src.rows, 1, {}
  for i, p in ipairs(parts) do
    local count
    if i == #parts and math.abs(total - 1) < 1e-9 then
      count = n - at + 1
    else
      count = math.floor(p[2] * n + 1e-9)
    end
    out[p[1]] = src:slice(at, at + count - 1)
    at = at + count
  end
  return out
end

--- split_by(column) -> table: value -> Dataset of the rows with that value
-- (for a "split" column holding train / valid / test).
function Dataset:split_by(column)
  check_column(self, column, 2)
  local groups = {}
  for _, r in ipairs(self.rows) do
    local v = r[column]
    if v ~= nil then
      v = tostring(v)
      groups[v] = groups[v] or {}
      table.insert(groups[v], r)
    end
  end
  local out = {}
  for k, rows in pairs(groups) do out[k] = derive(self, rows) end
  return out
end

--- batch_meta(image_columns, cols) -> the metatable of a typed batch: each output
-- column's modality ("image" when its source column is one of image_columns, else
-- "text"), read by the losses (getmetatable(batch).modalities).
function M.batch_meta(image_columns, cols)
  local img, mods = {}, {}
  for _, c in ipairs(image_columns) do img[c] = true end
  for out, c in pairs(cols) do mods[out] = img[c] and "image" or "text" end
  return { __name = "clip.data.Batch", modalities = mods }
end

--- batches(size [, opts]) -> iterator of (batch, index).
-- opts: shuffle (false), seed (0), drop_last (false),
--       columns: {out_name = column} (default: every column, same names).
-- A batch is a table of column lists: { anchor = {...}, positive = {...} }.
function Dataset:batches(size, opts)
  opts = opts or {}
  size = math.tointeger(size)
  if not size or size < 1 then error("batches: size must be a positive integer", 2) end
  local cols = opts.columns
  if not cols then
    cols = {}
    for _, c in ipairs(self.columns) do cols[c] = c end
  end
  for _, c in pairs(cols) do check_column(self, c, 2) end
  local order
  if opts.shuffle then
    order = M.rng(opts.seed or 0):permutation(#self.rows)
  else
    order = {}
    for i = 1, #self.rows do order[i] = i end
  end
  local n = #order
  local nb = opts.drop_last and n // size or (n + size - 1) // size
  local b = 0
  -- a typed dataset (image_columns known) tells the losses each column's
  -- modality through the batch's metatable (no extra key in the batch)
  local mt = self.image_columns and M.batch_meta(self.image_columns, cols) or nil
  return function()
    b = b + 1
    if b > nb then return nil end
    local batch = setmetatable({}, mt)
    for out in pairs(cols) do batch[out] = {} end
    for k = (b - 1) * size + 1, math.min(b * size, n) do
      local r = self.rows[order[k]]
      for out, c in pairs(cols) do table.insert(batch[out], r[c]) end
    end
    return batch, b
  end
end

--- num_batches(size [, drop_last]) -> count
function Dataset:num_batches(size, drop_last)
  local n = #self.rows
  return drop_last and n // size or (n + size - 1) // size
end

--- k_shot(k [, {label = "label", seed = 0}]) -> support, query.
-- For each label value, k rows chosen at random (all of them when a class has
-- k or fewer) go to the support set; every other row goes to the query set.
function Dataset:k_shot(k, opts)
  opts = opts or {}
  local label = opts.label or "label"
  check_column(self, label, 2)
  local rng = M.rng(opts.seed or 0)
  local by, keys = {}, {}
  for i, r in ipairs(self.rows) do
    local v = r[label]
    if by[v] == nil then by[v] = {}; keys[#keys + 1] = v end
    table.insert(by[v], i)
  end
  table.sort(keys, function(a, b)
    if type(a) == type(b) then return a < b end
    return type(a) == "number"
  end)
  local in_support = {}
  for _, v in ipairs(keys) do
    local idx = rng:shuffle(by[v])
    for j = 1, math.min(k, #idx) do in_support[idx[j]] = true end
  end
  local s, q = {}, {}
  for i, r in ipairs(self.rows) do
    if in_support[i] then s[#s + 1] = r else q[#q + 1] = r end
  end
  return derive(self, s), derive(self, q)
end

-- Readers -----------------------------------------------------------------

-- the pattern that ends an unquoted field, per delimiter
local csv_stops = {}
local function csv_stop(delim)
  local s = csv_stops[delim]
  if not s then
    s = "[" .. (delim == "%" and "%%" or ("%" .. delim)) .. "\r\n]"
    csv_stops[delim] = s
  end
  return s
end

--- parse_csv_record(text, pos, line [, {delimiter = ",", name = "<csv>", final = true}])
-- -> record, next_pos, next_line, or nil.
-- One RFC 4180 record of text starting at byte pos (on line number line): a
-- list of strings with .line = line. With final = false the text is a prefix
-- of more to come (a streaming reader's buffer): when the record might go on
-- past its end (an open quoted field, a last field or line end not yet
-- terminated) the result is nil and the caller appends text and asks again
-- from the same pos. With final = true (default) the end of text ends the
-- record, and an open quoted field is an error naming the file and the line.
function M.parse_csv_record(text, pos, line, opts)
  opts = opts or {}
  local delim = opts.delimiter or ","
  local name = opts.name or "<csv>"
  local final = opts.final ~= false
  local stop = csv_stop(delim)
  local n = #text
  local rec, start_line = {}, line
  while true do
    local field
    if text:sub(pos, pos) == '"' then
      local parts, p = {}, pos + 1
      while true do
        local q = text:find('"', p, true)
        if not q then
          if not final then return nil end
          error(("%s: line %d: unterminated quoted field"):format(name, start_line), 0)
        end
        if q == n and not final then return nil end -- a second '"' may follow
        local chunk = text:sub(p, q - 1)
        local _, nl = chunk:gsub("\n", "")
        line = line + nl
        parts[#parts + 1] = chunk
        if text:sub(q + 1, q + 1) == '"' then
          parts[#parts + 1] = '"'
          p = q + 2
        else
          pos = q + 1
          break
        end
      end
      field = table.concat(parts)
      local c = text:sub(pos, pos)
      if c ~= "" and c ~= delim and c ~= "\r" and c ~= "\n" then
        error(("%s: line %d: unexpected character after a quoted field"):format(name, line), 0)
      end
    else
      local e = text:find(stop, pos)
      if e then
        field = text:sub(pos, e - 1)
        pos = e
      else
        if not final then return nil end
        field = text:sub(pos)
        pos = n + 1
      end
    end
    rec[#rec + 1] = field
    local c = text:sub(pos, pos)
    if c == "" and not final then return nil end
    if c == delim then
      pos = pos + 1
    else
      if c == "\r" then
        if pos == n and not final then return nil end -- "\r\n" split between reads
        pos = pos + 1
        c = text:sub(pos, pos)
      end
      if c == "\n" then pos = pos + 1 end
      line = line + 1
      break
    end
  end
  rec.line = start_line
  return rec, pos, line
end

--- True for the record of an empty line (skipped by the readers).
function M.csv_blank(rec) return #rec == 1 and rec[1] == "" end

--- parse_csv(text [, {delimiter = ",", name = "<csv>"}]) -> header, records
-- RFC 4180: quoted fields may hold the delimiter, "" (a quote) and newlines;
-- CRLF or LF line ends; a UTF-8 BOM is skipped. Each record is a list of
-- strings with .line = the line it starts on.
function M.parse_csv(text, opts)
  opts = opts or {}
  local delim = opts.delimiter or ","
  local name = opts.name or "<csv>"
  if #delim ~= 1 then error("parse_csv: the delimiter must be one character", 2) end
  if text:sub(1, 3) == "\239\187\191" then text = text:sub(4) end
  local records, pos, n, line = {}, 1, #text, 1
  local ropts = { delimiter = delim, name = name, final = true }
  while pos <= n do
    local rec
    rec, pos, line = M.parse_csv_record(text, pos, line, ropts)
    if not M.csv_blank(rec) then records[#records + 1] = rec end
  end
  if #records == 0 then error(name .. ": empty file (no header row)", 0) end
  local header = table.remove(records, 1)
  header.line = nil
  return header, records
end

--- csv_check_header(name, header): an error naming the file when a column of
-- the header has no name or appears twice.
function M.csv_check_header(name, header)
  local seen = {}
  for i, h in ipairs(header) do
    if h == "" then error(("%s: column %d of the header has no name"):format(name, i), 0) end
    if seen[h] then error(("%s: column '%s' appears twice in the header"):format(name, h), 0) end
    seen[h] = true
  end
end

--- csv_row(name, header, record) -> the row {column = value, _line = line};
-- a record whose field count differs from the header's is an error naming the
-- file and the line.
function M.csv_row(name, header, rec)
  if #rec ~= #header then
    error(("%s: line %d: %d fields, the header has %d"):format(name, rec.line, #rec, #header), 0)
  end
  local r = {}
  for j, h in ipairs(header) do r[h] = rec[j] end
  r._line = rec.line
  return r
end

local function records_to_rows(name, header, records)
  M.csv_check_header(name, header)
  local rows = {}
  for i, rec in ipairs(records) do rows[i] = M.csv_row(name, header, rec) end
  return rows
end

--- read_csv(path [, {delimiter}]) -> header, rows (each row keyed by column)
function M.read_csv(path, opts)
  opts = opts or {}
  local header, records = M.parse_csv(read_all(path), { delimiter = opts.delimiter, name = path })
  return header, records_to_rows(path, header, records)
end

--- read_jsonl(path) -> columns (union of the keys, first-seen order), rows
-- One JSON object per line; blank lines are skipped.
function M.read_jsonl(path)
  local text = read_all(path)
  if text:sub(1, 3) == "\239\187\191" then text = text:sub(4) end
  local rows, cols, seen, ln = {}, {}, {}, 0
  for l in (text .. "\n"):gmatch("(.-)\r?\n") do
    ln = ln + 1
    if l:match("%S") then
      local ok, v = pcall(core.json_decode, l, path .. ": line " .. ln)
      if not ok then error(tostring(v), 0) end
      if type(v) ~= "table" or v[1] ~= nil then
        error(("%s: line %d: expected a JSON object"):format(path, ln), 0)
      end
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = k end
      table.sort(keys)
      for _, k in ipairs(keys) do
        if not seen[k] then seen[k] = true; cols[#cols + 1] = k end
      end
      v._line = ln
      rows[#rows + 1] = v
    end
  end
  return cols, rows
end

local function read_json_list(path)
  local v = core.json_decode(read_all(path), path)
  if type(v) == "table" and v.data then v = v.data end
  if type(v) ~= "table" then error(path .. ": expected a JSON list of objects", 0) end
  local cols, seen = {}, {}
  for i, r in ipairs(v) do
    if type(r) ~= "table" then error(("%s: item %d is not an object"):format(path, i), 0) end
    local keys = {}
    for k in pairs(r) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do if not seen[k] then seen[k] = true; cols[#cols + 1] = k end end
  end
  return cols, v
end

local IMAGE_EXT = image.EXTENSIONS
M.IMAGE_EXTENSIONS = IMAGE_EXT

--- True when the path ends in an image extension (clip.image.EXTENSIONS:
-- .jpg .jpeg .png .gif .webp .bmp .tif .tiff, case-insensitive).
M.is_image_path = image.has_image_extension

-- the image files below d (hidden names skipped, sub-folders when recursive), in
-- listdir's sorted order, appended to out; ext: the extensions accepted (lowercase keys)
local function walk_images(d, out, recursive, ext)
  local list, err = core.listdir(d)
  if not list then error(err, 0) end
  for _, nm in ipairs(list) do
    if nm:sub(1, 1) ~= "." then
      local p = join(d, nm)
      if core.is_dir(p) then
        if recursive then walk_images(p, out, recursive, ext) end
      else
        local e = nm:match("%.([%w]+)$")
        if e and ext[e:lower()] then out[#out + 1] = p end
      end
    end
  end
end

local function format_of(path)
  local ext = (path:match("%.([%w]+)$") or ""):lower()
  if ext == "csv" then return "csv" end
  if ext == "tsv" or ext == "tab" then return "tsv" end
  if ext == "jsonl" or ext == "ndjson" then return "jsonl" end
  if ext == "json" then return "json" end
  return nil
end

--- load(path [, opts]) -> Dataset
-- Reads CSV (.csv), TSV (.tsv), JSON Lines (.jsonl, .ndjson) or a JSON list
-- of objects (.json); opts.format forces one of "csv", "tsv", "jsonl", "json".
-- opts:
--   columns      list of the columns to keep (an unknown one is an error)
--   images       list of the columns holding image paths; nil = every column
--                whose values ALL end in an image extension (detect_image_column;
--                a column where only some do is an error: declare it)
--   modalities   {column = "image" | "text"}: the same, said per column (no
--                detection at all: undeclared columns are not images)
--   base         directory image paths are relative to (default: the file's)
--   check_images true (default): every image must exist (error otherwise)
--   delimiter    for CSV/TSV
-- Each row remembers the line it came from (row._line) for error messages.
function M.load(path, opts)
  opts = opts or {}
  if type(path) ~= "string" then error("data.load: expected a file path", 2) end
  if not core.is_file(path) then error(path .. ": no such file", 2) end
  local fmt = opts.format or format_of(path)
  local cols, rows
  if fmt == "csv" or fmt == "tsv" then
    cols, rows = M.read_csv(path, { delimiter = opts.delimiter or (fmt == "tsv" and "\t" or ",") })
  elseif fmt == "jsonl" then
    cols, rows = M.read_jsonl(path)
  elseif fmt == "json" then
    cols, rows = read_json_list(path)
  else
    error(path .. ": unknown format; name the file .csv, .tsv, .jsonl or .json, or pass {format = ...}", 2)
  end
  local ds = M.dataset(rows, cols, { name = path, base = opts.base or dirname(path) })
  if opts.columns then
    for _, c in ipairs(opts.columns) do check_column(ds, c, 2) end
    ds.columns = table.move(opts.columns, 1, #opts.columns, 1, {})
  end
  local images = opts.images
  if opts.modalities then
    if images ~= nil then error("data.load: give images or modalities, not both", 2) end
    images = {}
    for _, c in ipairs(ds.columns) do
      local v = opts.modalities[c]
      if v == "image" then images[#images + 1] = c
      elseif v ~= nil and v ~= "text" then
        error(("data.load: modality of column '%s' is %s; expected \"image\" or \"text\""):format(c, tostring(v)), 2)
      end
    end
    for c in pairs(opts.modalities) do check_column(ds, c, 2) end
  elseif images == nil then
    images = {}
    for _, c in ipairs(ds.columns) do
      if M.detect_image_column(ds, c) then images[#images + 1] = c end
    end
  elseif type(images) == "string" then
    images = { images }
  end
  for _, c in ipairs(images) do check_column(ds, c, 2) end
  ds.image_columns = images
  M.resolve_images(ds, images, { base = ds.base, check = opts.check_images ~= false })
  return ds
end

--- detect_image_column(ds, column) -> true when every row's value is a path
-- ending in an image extension, false when none is; a mix is an error naming a
-- row of each kind (declare the column with images = {...} or modalities).
-- By name only (no file is opened): a missing file in an image column is then
-- reported by load as not found, with the path it looked for.
function M.detect_image_column(ds, c)
  local img, other
  for i, r in ipairs(ds.rows) do
    if M.is_image_path(r[c]) then img = img or i else other = other or i end
    if img and other then
      local function where(k)
        local r2 = ds.rows[k]
        return ("row %d%s %q"):format(k, r2._line and (" (line " .. r2._line .. ")") or "", tostring(r2[c]))
      end
      error(("%s: column '%s' mixes image paths and other values: %s is an image path, %s is not; " ..
        "say which with images = {...} or modalities = {%s = \"image\" | \"text\"}")
        :format(ds.name or "dataset", c, where(img), where(other), c), 0)
    end
  end
  return img ~= nil
end

--- resolve_images(ds, columns [, {base, check = true}]): rewrite the image
-- paths of those columns relative to base (in place) and check they exist.
function M.resolve_images(ds, columns, opts)
  opts = opts or {}
  local base = opts.base or ds.base or "."
  for i, r in ipairs(ds.rows) do
    for _, c in ipairs(columns) do
      local p = r[c]
      local where = ("%s: row %d%s"):format(ds.name or "dataset", i, r._line and (" (line " .. r._line .. ")") or "")
      if type(p) ~= "string" or p == "" then
        error(("%s: column '%s' holds no image path"):format(where, c), 0)
      end
      if p:match("^%a[%w+.-]*://") then
        error(("%s: image '%s' is a URL; download the images and put their paths in the file"):format(where, p), 0)
      end
      local full = join(base, p)
      if opts.check ~= false and not core.is_file(full) then
        error(("%s: image '%s' not found (looked for %s)"):format(where, p, full), 0)
      end
      r[c] = full
    end
  end
  return ds
end

--- image_folder(dir [, {extensions = {"jpg","png",...}}]) -> Dataset (default: clip.image.EXTENSIONS)
-- One sub-folder per class (sorted by name; hidden ones skipped); every image
-- below it (recursively) is a row {image = path, label = class index
-- (1-based), class = folder name}. ds.classes lists the class names; a class
-- folder without images is kept as a class with no rows.
function M.image_folder(dir, opts)
  opts = opts or {}
  if not core.is_dir(dir) then error(dir .. ": not a directory", 2) end
  local ext = IMAGE_EXT
  if opts.extensions then
    ext = {}
    for _, e in ipairs(opts.extensions) do ext[e:lower():gsub("^%.", "")] = true end
  end
  local names = assert(core.listdir(dir))
  local classes, rows = {}, {}
  for _, nm in ipairs(names) do
    local p = join(dir, nm)
    if nm:sub(1, 1) ~= "." and core.is_dir(p) then
      classes[#classes + 1] = nm
      local files = {}
      walk_images(p, files, true, ext)
      for _, f in ipairs(files) do rows[#rows + 1] = { image = f, label = #classes, class = nm } end
    end
  end
  if #classes == 0 then error(dir .. ": no class sub-folders (expected " .. dir .. "/<class>/<image>)", 2) end
  return M.dataset(rows, { "image", "label", "class" },
    { name = dir, base = dir, classes = classes, image_columns = { "image" } })
end

--- stream(source [, opts]) -> a clip.stream Stream: the rows of a file or folder
-- read lazily (datasets larger than memory); see lua/clip/stream.lua.
function M.stream(source, opts)
  return require("clip.stream").open(source, opts)
end

--- list_images(dir [, {recursive = true}]) -> sorted list of image paths
function M.list_images(dir, opts)
  opts = opts or {}
  if not core.is_dir(dir) then error(dir .. ": not a directory", 2) end
  local out = {}
  walk_images(dir, out, opts.recursive ~= false, IMAGE_EXT)
  return out
end

-- Triplets ----------------------------------------------------------------

--- triplets(ds, opts) -> Dataset with a negative column added, negatives
-- Picks, for each row, a negative text from another row (never a row whose
-- text equals this row's text).
-- opts:
--   text       the column of positive texts (default "positive")
--   into       the name of the new column (default "negative")
--   strategy   "random" (default), "hardest" (the most similar text) or
--              "easiest" (the least similar - what the seed's data
--              preparation did, with unique = true)
--   unique     true: each row's text is used as a negative at most once, taken
--              greedily in row order (falls back to reuse when none is left)
--   seed       for "random" (default 0)
--   embeddings Tensor {n, d} of the texts, for "hardest"/"easiest"; or
--   model      a clip model: the texts are embedded with its text tower
--   batch_size for the model (32)
-- Returns the new Dataset and the list of chosen row indices.
function M.triplets(ds, opts)
  opts = opts or {}
  local col = opts.text or "positive"
  check_column(ds, col, 2)
  local into = opts.into or "negative"
  local strategy = opts.strategy or "random"
  local n = #ds.rows
  if n < 2 then error("triplets: need at least two rows", 2) end
  local texts = ds:column(col)
  local used, choice = {}, {}
  local function ok(i, j) return j ~= i and texts[j] ~= texts[i] and not (opts.unique and used[j]) end
  local function okany(i, j) return j ~= i and texts[j] ~= texts[i] end
  if strategy == "random" then
    local rng = M.rng(opts.seed or 0)
    for i = 1, n do
      local cand = {}
      for j = 1, n do if ok(i, j) then cand[#cand + 1] = j end end
      if #cand == 0 then for j = 1, n do if okany(i, j) then cand[#cand + 1] = j end end end
      if #cand == 0 then error(("triplets: row %d: every other row has the same text"):format(i), 2) end
      choice[i] = cand[rng:random(#cand)]
      used[choice[i]] = true
    end
  elseif strategy == "hardest" or strategy == "easiest" then
    local emb = opts.embeddings
    if not emb then
      if not opts.model then error("triplets: '" .. strategy .. "' needs embeddings or a model", 2) end
      emb = opts.model:encode_texts(texts, { batch_size = opts.batch_size })
    end
    if emb:size(1) ~= n then error(("triplets: %d embeddings for %d rows"):format(emb:size(1), n), 2) end
    local sign = strategy == "hardest" and 1 or -1
    local block = 256
    for a = 1, n, block do
      local b = math.min(n, a + block - 1)
      local s = core.cosine_similarity(emb:rows(a, b), emb)
      if sign < 0 then s = s * -1 end
      for i = a, b do
        local row = s:rows(i - a + 1):reshape({ n })
        local k, found, fallback = math.min(n, 16), nil, nil
        while true do
          local _, idx = row:topk(k)
          for _, j in ipairs(idx) do
            if okany(i, j) then
              fallback = fallback or j
              if not (opts.unique and used[j]) then found = j break end
            end
          end
          if found or k >= n then break end
          k = math.min(n, k * 4)
        end
        found = found or fallback
        if not found then error(("triplets: row %d: every other row has the same text"):format(i), 2) end
        choice[i] = found
        used[found] = true
      end
    end
  else
    error(("triplets: unknown strategy '%s' (random, hardest, easiest)"):format(tostring(strategy)), 2)
  end
  local rows = {}
  for i, r in ipairs(ds.rows) do
    local c = {}
    for k, v in pairs(r) do c[k] = v end
    c[into] = texts[choice[i]]
    rows[i] = c
  end
  local cols = table.move(ds.columns, 1, #ds.columns, 1, {})
  if not ds:has_column(into) then cols[#cols + 1] = into end
  return derive(ds, rows, { columns = cols }), choice
end

return M
