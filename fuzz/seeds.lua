-- fuzz/seeds.lua OUTDIR - write the seed corpora of the fuzz targets into
-- OUTDIR/<target>/ from spec/fixtures (run from the repository root, with
-- LUA_PATH/LUA_CPATH pointing at lua/ and the normal build; `make fuzz-seeds`).
-- Seeds are small: files above 200 KB are left out (libFuzzer mutates whole
-- inputs, and a big one slows every execution down).
local clip = require "clip"
local core = clip.core

local out = assert(arg[1], "usage: lua5.4 fuzz/seeds.lua OUTDIR")
local FX = "spec/fixtures/"
local MAX = 200 * 1024

local function read(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function ls(pattern)
  local r = {}
  local p = io.popen("ls " .. pattern .. " 2>/dev/null")
  for l in p:lines() do r[#r + 1] = l end
  p:close()
  table.sort(r)
  return r
end

local counts = {}
local function seed(target, name, bytes)
  local dir = out .. "/" .. target
  assert(core.mkdir_p(dir))
  if #bytes > MAX then return end
  local f = assert(io.open(dir .. "/" .. name:gsub("[^%w%._-]", "_"), "wb"))
  f:write(bytes)
  f:close()
  counts[target] = (counts[target] or 0) + 1
end

local function copy_files(target, pattern)
  for _, p in ipairs(ls(pattern)) do
    seed(target, p:gsub("^" .. FX, ""), read(p))
  end
end

-- images: every fixture, good and bad
copy_files("jpeg", FX .. "images/*.jpg")
copy_files("png", FX .. "images/*.png")
copy_files("formats", FX .. "images/*.gif " .. FX .. "images/*.webp " .. FX .. "images/*.tif " .. FX .. "images/*.bmp")

-- configs: config.json, preprocessor_config.json, modules.json, index files
copy_files("config", FX .. "models/*/*.json " .. FX .. "models/*/*/*.json " .. FX .. "images/config_*.json")
-- and those of the layouts the specs assemble from models/tiny (modules.json,
-- the sentence-transformers config, the legacy preprocessor form)
do
  local H = require "spec.helpers"
  for _, name in ipairs({ "st", "st-root", "legacy-eos" }) do
    local d = H.layout(name)
    for _, p in ipairs(ls(d .. "/*.json " .. d .. "/*/*.json")) do
      local tiny = io.open(FX .. "models/tiny/" .. p:match("[^/]+$"), "rb")
      local same = tiny and tiny:read("a") == read(p)
      if tiny then tiny:close() end
      if not same then seed("config", "layout-" .. name .. p:sub(#d + 1), read(p)) end
    end
    H.rmtree(d)
  end
end

-- safetensors: the small fixture files, hand-made edge cases, micro models
copy_files("safetensors", FX .. "train/*_projections.safetensors " .. FX .. "train/batch.safetensors " ..
  FX .. "models/tiny/reference.safetensors")
local function st(header, data) return string.pack("<I8", #header) .. header .. (data or "") end
local hand = {
  empty_header = st("{}"),
  metadata_only = st('{"__metadata__":{"format":"pt"}}'),
  f16 = st('{"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}', string.pack("<I2I2I2I2", 0x3C00, 0xC000, 0x7BFF, 1)),
  mixed = st('{"b":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"u":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}',
    string.pack("<I2I2", 0x3F80, 0xC040) .. "\0\7\255\0"),
  ints = st('{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[1,1],"data_offsets":[8,12]},' ..
    '"c":{"dtype":"I16","shape":[],"data_offsets":[12,14]},"d":{"dtype":"F64","shape":[1],"data_offsets":[16,24]}}', ("\1"):rep(24)),
  scalar = st('{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}', string.pack("<f", 2.5)),
  zero_sized = st('{"z":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}}'),
  overlap = st('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', ("x"):rep(12)),
  fp8 = st('{"f":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}', "\1\2"),
}
for k, v in pairs(hand) do seed("safetensors", "hand_" .. k, v) end

-- the micro model of fuzz/micro_config.h, with small random weights
local src = read("fuzz/micro_config.h")
local cfg = src:match('MICRO_CONFIG%[%] =%s*(.-);\n'):gsub('"%s*\n%s*"', ""):gsub('^"', ""):gsub('"$', "")
cfg = cfg:gsub('\\n', "\n"):gsub('\\"', '"')
local mc = core.model_new(cfg)
local tensors = {}
for i, it in ipairs(mc:param_info()) do
  local t = mc:param(it.name)
  t:copy(clip.randn(it.shape, i) * 0.1)
  if it.name:match("norm%d?%.weight$") or it.name:match("layrnorm%.weight$") then t:fill(1) end
  tensors[it.name] = t
end
for _, dt in ipairs({ "F32", "F16", "BF16" }) do
  local p = os.tmpname()
  clip.save_safetensors(p, tensors, { metadata = { format = "pt" }, dtype = dt })
  local bytes = read(p)
  os.remove(p)
  seed("loader", "micro_" .. dt, bytes)
  seed("safetensors", "micro_" .. dt, bytes)
end
-- logit_scale stored as [1], as some checkpoints do
tensors.logit_scale = clip.tensor({ 2.5 })
local p = os.tmpname()
clip.save_safetensors(p, tensors)
seed("loader", "micro_logit_scale_1", read(p))
os.remove(p)
mc:close()

-- tokenizer: every text of the tokenizer fixtures, plus a few odd ones
local js = clip.json.decode(read(FX .. "tokens.json"))
for i, c in ipairs(js.cases) do
  if type(c.text) == "string" then seed("tokenizer", ("case%03d"):format(i), c.text) end
end
for k, v in pairs({ html = "&amp;lt;b&gt; &#x1F600; &#99999999; &notanentity;",
  specials = "<|startoftext|>A <|ENDOFTEXT|>b<|endoftext|>", sigma = "ΣΑΣ ΟΔΟΣ. ὈΔΥΣΣΕΎΣ",
  invalid = "abc\xff\xfe\xc0\xaf\xed\xa0\x80", long_word = ("x"):rep(300), nfc = "e\u{301}\u{fb01}\u{2167}" }) do
  seed("tokenizer", "odd_" .. k, v)
end

-- torch: whole files (first byte 0) and bare data.pkl pickles (first byte 1: the harness wraps
-- them into an archive with storages "0".."15"); see fuzz/fuzz_torch.c
for _, p in ipairs(ls(FX .. "torch/*.bin " .. FX .. "torch/hostile/*.bin")) do
  seed("torch", "file_" .. p:gsub("^" .. FX .. "torch/", ""), "\0" .. read(p))
end
for _, p in ipairs(ls(FX .. "torch/pickles/*.pkl")) do
  seed("torch", "pkl_" .. p:match("[^/]+$"), "\1" .. read(p))
end

-- regression inputs: findings and near-misses, committed under fuzz/regress/<target>/
for _, t in ipairs({ "safetensors", "loader", "config", "jpeg", "png", "formats", "tokenizer", "torch" }) do
  for _, p in ipairs(ls("fuzz/regress/" .. t .. "/*")) do
    seed(t, "regress_" .. p:match("[^/]+$"), read(p))
  end
end

local names = {}
for k, n in pairs(counts) do names[#names + 1] = k .. " " .. n end
table.sort(names)
io.stderr:write("seeds: ", table.concat(names, ", "), "\n")
