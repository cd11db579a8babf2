--- clip.tokenizer - CLIP's byte-level BPE tokenizer.
--
--   local tokenizer = require("clip.tokenizer")
--   local tok <close> = tokenizer.load("path/to/checkpoint")   -- vocab.json + merges.txt
--   tok:encode("a photo of a cat")      --> {49406, 320, 1125, 539, 320, 2368, 49407}
--
-- Ids match transformers' CLIPTokenizerFast exactly (mode "hf", the default)
-- or openai/CLIP's simple_tokenizer without ftfy (mode "openai").  See
-- docs/tokenizer.md for the semantics and the known deviations.
local core = require("clip.core")

local M = {}

M.DEFAULT_CONTEXT_LENGTH = 77

local Tokenizer = {}
Tokenizer.__index = Tokenizer
M.Tokenizer = Tokenizer

local MODES = { hf = true, openai = true }

local function join(dir, name)
  if dir == "" then return name end
  if dir:sub(-1) == "/" then return dir .. name end
  return dir .. "/" .. name
end

local function check_ctx(v, what)
  if math.type(v) ~= "integer" or v < 2 then
    error(("%s: context_length must be an integer >= 2, got %s"):format(what, tostring(v)), 3)
  end
  return v
end

--- Load a tokenizer.
-- dir_or_opts: a directory holding vocab.json and merges.txt, or a table
--   {vocab = path, merges = path} (or {dir = path}); its other fields are
--   read as options when opts is nil.
-- opts (all optional):
--   mode = "hf" (default) | "openai"
--   context_length = 77   default truncation length of encode/encode_batch
-- Missing or corrupt files raise an error naming the file.
function M.load(dir_or_opts, opts)
  local vocab, merges
  if type(dir_or_opts) == "string" then
    vocab, merges = join(dir_or_opts, "vocab.json"), join(dir_or_opts, "merges.txt")
  elseif type(dir_or_opts) == "table" then
    local o = dir_or_opts
    opts = opts or o
    vocab = o.vocab or (o.dir and join(o.dir, "vocab.json"))
    merges = o.merges or (o.dir and join(o.dir, "merges.txt"))
    if type(vocab) ~= "string" or type(merges) ~= "string" then
      error("tokenizer.load: expected {vocab = path, merges = path} or {dir = path}", 2)
    end
  else
    error(("tokenizer.load: expected a directory or {vocab = path, merges = path}, got %s")
      :format(type(dir_or_opts)), 2)
  end
  opts = opts or {}
  local mode = opts.mode or "hf"
  if not MODES[mode] then
    error(("tokenizer.load: mode must be \"hf\" or \"openai\", got %s"):format(tostring(mode)), 2)
  end
  local ctx = check_ctx(opts.context_length or M.DEFAULT_CONTEXT_LENGTH, "tokenizer.load")
  local ok, t = pcall(core.tokenizer_load, vocab, merges)
  if not ok then
    error(tostring(t) .. " (a tokenizer needs vocab.json and merges.txt as in Hugging Face's " ..
      "openai/clip-vit-* checkpoints)", 2)
  end
  local bos, eos = t:bos(), t:eos()
  return setmetatable({
    _t = t,
    mode = mode,
    context_length = ctx,
    bos_id = bos,
    eos_id = eos,
    pad_id = eos, -- CLIPTokenizer's pad_token is <|endoftext|>
    vocab = vocab,
    merges = merges,
  }, Tokenizer)
end

local function check_ids(self, ids, what)
  local n = self._t:vocab_size()
  local out = {}
  for i = 1, #ids do
    local v = ids[i]
    if math.type(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)) then
      error(("%s: id list item %d is a %s, expected an integer id"):format(what, i, type(v)), 3)
    end
    v = math.tointeger(v)
    if not v or v < 0 or v >= n then
      error(("%s: id list item %d = %s is outside [0, %d)"):format(what, i, tostring(ids[i]), n), 3)
    end
    out[i] = v
  end
  return out
end

local function mode_of(self, opts)
  local mode = opts.mode or self.mode
  if not MODES[mode] then
    error(("mode must be \"hf\" or \"openai\", got %s"):format(tostring(mode)), 3)
  end
  return mode
end

--- Encode one text.
-- opts (all optional):
--   special = true          add <|startoftext|> ... <|endoftext|>; false: raw BPE ids only
--   context_length = tok.context_length (77); with special, longer results
--                           are cut to this length with <|endoftext|> kept last;
--                           false disables truncation
--   mode = tok.mode
-- A table of ids is passed through (checked, copied).
function Tokenizer:encode(text, opts)
  opts = opts or {}
  if type(text) == "table" then return check_ids(self, text, "encode") end
  if type(text) ~= "string" then
    error(("encode: expected a string or a list of ids, got %s"):format(type(text)), 2)
  end
  local mode = mode_of(self, opts)
  if opts.special == false then return self._t:encode(text, mode) end
  local ctx = opts.context_length
  if ctx == nil then ctx = self.context_length end
  if ctx == false then
    local ids = self._t:encode(text, mode)
    table.insert(ids, 1, self.bos_id)
    ids[#ids + 1] = self.eos_id
    return ids
  end
  return self._t:encode_ctx(text, mode, check_ctx(ctx, "encode"))
end

--- Encode a list of texts (strings, or id lists passed through as they are).
-- opts: as encode, plus
--   pad = "max_length" (default: every row context_length long) | "longest" | false
--   pad_id = tok.pad_id (49407)
-- Returns rows (a list of id lists) and lengths (ids before padding).
-- With pad = "max_length", a row longer than context_length (an id list, or a
-- text with special = false, which is not truncated) is an error.
function Tokenizer:encode_batch(texts, opts)
  opts = opts or {}
  if type(texts) ~= "table" then
    error(("encode_batch: expected a list of texts, got %s"):format(type(texts)), 2)
  end
  local pad = opts.pad
  if pad == nil then pad = "max_length" end
  if pad ~= "max_length" and pad ~= "longest" and pad ~= false then
    error(("encode_batch: pad must be \"max_length\", \"longest\" or false, got %s"):format(tostring(pad)), 2)
  end
  local ctx = opts.context_length
  if ctx == nil then ctx = self.context_length end
  if ctx ~= false then check_ctx(ctx, "encode_batch") end
  if pad == "max_length" and ctx == false then
    error("encode_batch: pad = \"max_length\" needs a context_length", 2)
  end
  local mode = mode_of(self, opts)
  local pad_id = opts.pad_id or self.pad_id
  local rows, lengths, longest = {}, {}, 0
  for i = 1, #texts do
    local x = texts[i]
    local ids
    if type(x) == "string" then
      ids = self:encode(x, { special = opts.special, context_length = ctx, mode = mode })
    elseif type(x) == "table" then
      ids = check_ids(self, x, ("encode_batch: texts[%d]"):format(i))
    else
      error(("encode_batch: texts[%d] is a %s, expected a string or a list of ids"):format(i, type(x)), 2)
    end
    if pad == "max_length" and #ids > ctx then -- only id lists and special = false get here
      error(("encode_batch: texts[%d] gives %d ids, more than context_length %d")
        :format(i, #ids, ctx), 2)
    end
    rows[i], lengths[i] = ids, #ids
    if #ids > longest then longest = #ids end
  end
  local target = pad == "max_length" and ctx or pad == "longest" and longest or nil
  if target then
    for i = 1, #rows do
      local r = rows[i]
      for j = #r + 1, target do r[j] = pad_id end
    end
  end
  return rows, lengths
end

local CLEANUP = { -- transformers' PreTrainedTokenizerBase.clean_up_tokenization, in order
  { " .", "." }, { " ?", "?" }, { " !", "!" }, { " ,", "," }, { " ' ", "'" },
  { " n't", "n't" }, { " 'm", "'m" }, { " 's", "'s" }, { " 've", "'ve" }, { " 're", "'re" },
}

local function replace_plain(s, from, to)
  local out, i = {}, 1
  while true do
    local a, b = s:find(from, i, true)
    if not a then break end
    out[#out + 1] = s:sub(i, a - 1)
    out[#out + 1] = to
    i = b + 1
  end
  out[#out + 1] = s:sub(i)
  return table.concat(out)
end

--- Decode ids to text.
-- opts (defaults follow the mode):
--   skip_special = false    drop <|startoftext|> / <|endoftext|>
--   strip = (mode == "hf")  trim surrounding whitespace, as CLIPTokenizerFast
--   clean_up = (mode == "hf")  transformers' clean_up_tokenization_spaces
--                           (" ." -> "." etc.; true in CLIP's tokenizer_config)
-- Each "</w>" becomes a space; byte sequences that are not UTF-8 become U+FFFD.
function Tokenizer:decode(ids, opts)
  opts = opts or {}
  if type(ids) ~= "table" then
    error(("decode: expected a list of ids, got %s"):format(type(ids)), 2)
  end
  local mode = mode_of(self, opts)
  local text = self._t:decode(ids, opts.skip_special and true or false)
  local strip, clean = opts.strip, opts.clean_up
  if strip == nil then strip = mode == "hf" end
  if clean == nil then clean = mode == "hf" end
  if strip then
    local a, b = text:find("%S"), #text
    if not a then
      text = ""
    else
      while text:find("^%s", b) do b = b - 1 end
      text = text:sub(a, b)
    end
  end
  if clean then
    for _, r in ipairs(CLEANUP) do text = replace_plain(text, r[1], r[2]) end
  end
  return text
end

--- The normalized text (what the split sees) and the pieces, for inspection.
function Tokenizer:normalize(text, opts)
  return self._t:normalize(text, mode_of(self, opts or {}))
end

function Tokenizer:pre_tokenize(text, opts)
  return self._t:pre_tokenize(text, mode_of(self, opts or {}))
end

function Tokenizer:vocab_size() return self._t:vocab_size() end
function Tokenizer:token_to_id(s) return self._t:token_to_id(s) end
function Tokenizer:id_to_token(id) return self._t:id_to_token(id) end

--- Free the tokenizer now (also on <close> and garbage collection); idempotent.
-- Any later call raises "attempt to use a closed tokenizer".
function Tokenizer:close() self._t:close() end
function Tokenizer:closed() return self._t:closed() end
Tokenizer.__close = Tokenizer.close

function Tokenizer:__tostring()
  return ("clip.tokenizer (%s mode, context_length %d%s)"):format(self.mode, self.context_length,
    self._t:closed() and ", closed" or "")
end

return M
