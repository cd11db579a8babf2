-- spec/robustness_spec.lua - the table of bad inputs (issue #5): every
-- hostile or broken input gets an error that names the file (or the item) and
-- the reason; nothing crashes, nothing is allocated for a bomb, and training
-- stops at a NaN loss with the parameters as they were before the step.
--
-- Some cases also live in the area specs (safetensors_spec, image_spec,
-- model_spec, tokenizer_spec); this table keeps them all in one place.
-- With CLIP_ROBUSTNESS_TABLE=path set, the spec writes the table it checked
-- (input -> actual message, temporary paths shortened) as Markdown rows: that
-- is how docs/robustness.md's table was made.
local clip = require "clip"
local H = require "spec.helpers"

local FX = H.fixtures
local IMG = FX .. "images/"
local TINY = FX .. "models/tiny"

local files = require "spec.support.files"
local write, st_bytes = files.write, files.st_bytes

local function sh(cmd)
  local ok = os.execute(cmd)
  assert(ok, "command failed: " .. cmd)
end

-- the same interpreter and module paths for child processes
local function lua_cmd()
  return ("LUA_PATH=%q LUA_CPATH=%q lua5.4"):format(package.path, package.cpath)
end

local tmp = H.tmpdir()
local rows = {} -- area, input, message (for the docs)

-- A model directory: a copy of the tiny model with one edit.
local function model_dir(name, edit)
  local d = tmp .. "/" .. name
  sh(("rm -rf '%s' && cp -r '%s' '%s'"):format(d, TINY, d))
  if edit then edit(d) end
  return d
end

local function edit_config(d, from, to)
  local s = H.read(d .. "/config.json")
  local n
  s, n = s:gsub(from, to)
  assert(n > 0, "config.json edit did not apply: " .. from)
  write(d .. "/config.json", s)
end

-- Every row: area, input description, a function that must raise, and the
-- plain substrings the message must contain (the file or item, the reason).
local CASES = {}
local function case(area, input, f, want) CASES[#CASES + 1] = { area, input, f, want } end

-- files and directories ------------------------------------------------------
case("safetensors", "missing file", function()
  return clip.load_safetensors(tmp .. "/missing.safetensors")
end, { "missing.safetensors", "No such file" })
case("safetensors", "empty file", function()
  write(tmp .. "/empty.safetensors", "")
  return clip.load_safetensors(tmp .. "/empty.safetensors")
end, { "empty.safetensors", "shorter than the 8-byte header length" })
case("safetensors", "a directory", function()
  return clip.load_safetensors(tmp)
end, { tmp, "is a directory" })
case("safetensors", "header length 2^40 (huge)", function()
  write(tmp .. "/huge.safetensors", string.pack("<I8", 1 << 40) .. "{}")
  return clip.load_safetensors(tmp .. "/huge.safetensors")
end, { "huge.safetensors", "header length 1099511627776" })
case("safetensors", "header length 2^64-1", function()
  write(tmp .. "/huge2.safetensors", string.pack("<I8", -1) .. "{}")
  return clip.load_safetensors(tmp .. "/huge2.safetensors")
end, { "huge2.safetensors", "header length" })
case("safetensors", "header not JSON", function()
  write(tmp .. "/nojson.safetensors", st_bytes("{not json}   "))
  return clip.load_safetensors(tmp .. "/nojson.safetensors")
end, { "nojson.safetensors", "not valid JSON" })
case("safetensors", "offsets out of range", function()
  write(tmp .. "/range.safetensors",
    st_bytes('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', "12345678"))
  return clip.load_safetensors(tmp .. "/range.safetensors")
end, { "range.safetensors", "tensor 'a'", "out of range" })
case("safetensors", "offsets overlapping", function()
  write(tmp .. "/overlap.safetensors", st_bytes(
    '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
    ("x"):rep(12)))
  return clip.load_safetensors(tmp .. "/overlap.safetensors")
end, { "overlap.safetensors", "'a' and 'b' overlap" })
case("safetensors", "offsets reversed (begin > end)", function()
  write(tmp .. "/rev.safetensors", st_bytes('{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}', ("x"):rep(8)))
  return clip.load_safetensors(tmp .. "/rev.safetensors")
end, { "rev.safetensors", "tensor 'a'", "invalid data_offsets" })
case("safetensors", "unknown dtype", function()
  write(tmp .. "/dtype.safetensors",
    st_bytes('{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}', ("x"):rep(8)))
  return clip.load_safetensors(tmp .. "/dtype.safetensors")
end, { "dtype.safetensors", "unknown dtype 'Q4'" })
case("safetensors", "byte size disagrees with shape", function()
  write(tmp .. "/size.safetensors",
    st_bytes('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', "12345678"))
  return clip.load_safetensors(tmp .. "/size.safetensors")
end, { "size.safetensors", "expected 12" })
case("safetensors", "shape whose element count overflows", function()
  write(tmp .. "/ovf.safetensors",
    st_bytes('{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}', ("x"):rep(8)))
  return clip.load_safetensors(tmp .. "/ovf.safetensors")
end, { "ovf.safetensors", "invalid shape" })

case("image", "missing file", function()
  return clip.image.load(tmp .. "/missing.jpg")
end, { "missing.jpg", "No such file" })
case("image", "empty file", function()
  return clip.image.load(IMG .. "empty.png")
end, { "empty.png", "empty file" })
case("image", "a directory", function()
  return clip.image.load(tmp)
end, { tmp, "is a directory" })
case("image", "truncated JPEG", function()
  return clip.image.load(IMG .. "truncated.jpg")
end, { "truncated.jpg", "JPEG decode failed", "truncated" })
case("image", "JPEG without its end marker", function()
  return clip.image.load(IMG .. "noeoi.jpg")
end, { "noeoi.jpg", "JPEG decode failed", "truncated" })
case("image", "truncated PNG", function()
  return clip.image.load(IMG .. "truncated.png")
end, { "truncated.png", "PNG decode failed", "truncated" })
case("image", "PNG with a bad CRC (IDAT)", function()
  return clip.image.load(IMG .. "badcrc.png")
end, { "badcrc.png", "PNG decode failed", "CRC" })
case("image", "PNG with a bad CRC (ancillary chunk)", function()
  return clip.image.load(IMG .. "badcrc_text.png")
end, { "badcrc_text.png", "PNG decode failed", "CRC" })
case("image", "PNG with a corrupt zlib stream", function()
  return clip.image.load(IMG .. "badzlib.png")
end, { "badzlib.png", "PNG decode failed" })
case("image", "0x0 PNG", function()
  return clip.image.load(IMG .. "zero.png")
end, { "zero.png", "PNG decode failed", "zero width or height" })
case("image", "0x0 JPEG", function()
  return clip.image.load(IMG .. "zero.jpg")
end, { "zero.jpg", "JPEG decode failed" })
case("image", "PNG header claiming 100000x100000", function()
  return clip.image.load(IMG .. "huge.png")
end, { "huge.png", "image too large", "100000x100000", "limit is 178956970 pixels" })
case("image", "JPEG header claiming 65000x65000", function()
  return clip.image.load(IMG .. "huge.jpg")
end, { "huge.jpg", "image too large", "65000x65000" })
case("image", "truncated GIF", function()
  return clip.image.load(IMG .. "gif_truncated.gif")
end, { "gif_truncated.gif", "GIF decode failed", "truncated" })
case("image", "BMP with RLE8 compression", function()
  return clip.image.load(IMG .. "bmp_rle8.bmp")
end, { "bmp_rle8.bmp", "BMP decode failed", "RLE8" })
case("image", "TIFF header claiming 1000000x1000000", function()
  return clip.image.load(IMG .. "tiff_huge.tif")
end, { "tiff_huge.tif", "image too large", "1000000x1000000" })
case("image", "random bytes", function()
  return clip.image.load(IMG .. "garbage.jpg")
end, { "garbage.jpg", "unsupported image format", "supported: JPEG, PNG, GIF, WebP, TIFF and BMP" })
case("image", "bytes in memory, empty", function()
  return clip.image.decode("", "upload.png")
end, { "upload.png", "empty file" })
case("image", "a bad image in a batch", function()
  local m = clip.load(TINY)
  return m:encode_images({ IMG .. "natural.jpg", IMG .. "truncated.png" })
end, { "item 2", "truncated.png", "truncated" })

case("model dir", "missing directory", function()
  return clip.load(tmp .. "/no-such-model")
end, { "no-such-model", "missing config.json" })
case("model dir", "a file instead of a directory", function()
  return clip.load(TINY .. "/config.json")
end, { "tiny/config.json", "not a directory" })
case("model dir", "no model.safetensors", function()
  return clip.load(model_dir("noweights", function(d) os.remove(d .. "/model.safetensors") end))
end, { "noweights", "missing model.safetensors" })
case("model dir", "model.safetensors is a directory", function()
  return clip.load(model_dir("wdir", function(d)
    os.remove(d .. "/model.safetensors")
    sh(("mkdir '%s/model.safetensors'"):format(d))
  end))
end, { "wdir/model.safetensors", "is a directory, expected a file" })
case("model dir", "model.safetensors empty", function()
  return clip.load(model_dir("wempty", function(d) write(d .. "/model.safetensors", "") end))
end, { "wempty/model.safetensors", "shorter than the 8-byte header length" })
case("model dir", "model.safetensors truncated", function()
  return clip.load(model_dir("wtrunc", function(d)
    local s = H.read(d .. "/model.safetensors")
    write(d .. "/model.safetensors", s:sub(1, #s // 2))
  end))
end, { "wtrunc/model.safetensors", "out of range", "file truncated?" })
case("model dir", "config.json empty", function()
  return clip.load(model_dir("cfgempty", function(d) write(d .. "/config.json", "") end))
end, { "cfgempty/config.json", "not valid JSON" })
case("model dir", "config.json is a directory", function()
  return clip.load(model_dir("cfgdir", function(d)
    os.remove(d .. "/config.json")
    sh(("mkdir '%s/config.json'"):format(d))
  end))
end, { "cfgdir/config.json", "is a directory, expected a file" })
case("model dir", "config.json not JSON", function()
  return clip.load(model_dir("cfgjson", function(d) write(d .. "/config.json", "{oops") end))
end, { "cfgjson/config.json", "not valid JSON" })
case("model dir", "config.json a JSON array", function()
  return clip.load(model_dir("cfgarray", function(d) write(d .. "/config.json", "[1, 2]") end))
end, { "cfgarray/config.json", "expected a JSON object" })
case("model dir", "config.json missing a key (text intermediate_size: default 2048)", function()
  return clip.load(model_dir("cfgmissing", function(d)
    edit_config(d, '"intermediate_size": 72,', "")
  end))
end, { "cfgmissing/model.safetensors", "text_model.encoder.layers.0.mlp.fc1.weight",
  "has shape [72, 32], but config.json implies [2048, 32]" })
case("model dir", "config.json missing text_config", function()
  return clip.load(model_dir("cfgnotext", function(d)
    local s = H.read(d .. "/config.json"):gsub('"text_config": %b{},', "")
    write(d .. "/config.json", s)
  end))
end, { "cfgnotext/model.safetensors", "but config.json implies" })
case("model dir", "config.json wrong-typed key (hidden_size \"32\")", function()
  return clip.load(model_dir("cfgtype", function(d)
    edit_config(d, '"hidden_size": 32', '"hidden_size": "32"')
  end))
end, { "cfgtype/config.json", "text_config.hidden_size must be an integer" })
case("model dir", "config.json wrong-typed key (hidden_act 1)", function()
  return clip.load(model_dir("cfgact", function(d)
    edit_config(d, '"hidden_act": "quick_gelu",', '"hidden_act": 1,')
  end))
end, { "cfgact/config.json", "hidden_act must be a string" })
case("model dir", "config.json negative size", function()
  return clip.load(model_dir("cfgneg", function(d)
    edit_config(d, '"num_attention_heads": 4', '"num_attention_heads": -4')
  end))
end, { "cfgneg/config.json", "num_attention_heads must be an integer >= 1" })
case("model dir", "config.json absurd size (1e9 layers)", function()
  return clip.load(model_dir("cfghuge", function(d)
    edit_config(d, '"num_hidden_layers": 2,', '"num_hidden_layers": 1000000000,')
  end))
end, { "cfghuge/config.json", "num_hidden_layers 1000000000 is too large" })
case("model dir", "tensor shape disagrees with config.json", function()
  return clip.load(model_dir("shape", function(d)
    edit_config(d, '"intermediate_size": 72', '"intermediate_size": 64')
  end))
end, { "shape/model.safetensors", "text_model.encoder.layers.0.mlp.fc1.weight",
  "has shape [72, 32], but config.json implies [64, 32]" })
case("model dir", "tensor missing", function()
  return clip.load(model_dir("missingt", function(d)
    local t = clip.load_safetensors(d .. "/model.safetensors")
    t["vision_model.post_layernorm.bias"] = nil
    clip.save_safetensors(d .. "/model.safetensors", t)
  end))
end, { "missingt/model.safetensors", "missing tensor 'vision_model.post_layernorm.bias'" })
case("model dir", "tensor of an unsupported dtype (I64)", function()
  return clip.load(model_dir("i64", function(d)
    local t = clip.load_safetensors(d .. "/model.safetensors")
    t.logit_scale = nil
    clip.save_safetensors(d .. "/w.safetensors", t)
    -- append logit_scale as I64 by hand: rewrite the header with one more entry
    local s = H.read(d .. "/w.safetensors")
    local n = string.unpack("<I8", s)
    local hdr, data = s:sub(9, 8 + n):gsub("%s+$", ""), s:sub(9 + n)
    hdr = hdr:sub(1, -2) .. (',"logit_scale":{"dtype":"I64","shape":[],"data_offsets":[%d,%d]}}'):format(#data, #data + 8)
    write(d .. "/model.safetensors", st_bytes(hdr, data .. string.pack("<i8", 3)))
    os.remove(d .. "/w.safetensors")
  end))
end, { "i64/model.safetensors", "tensor 'logit_scale' has dtype I64 (expected F32, F16 or BF16)" })
case("model dir", "sharded index naming a file outside the directory", function()
  return clip.load(model_dir("shardesc", function(d)
    os.remove(d .. "/model.safetensors")
    write(d .. "/model.safetensors.index.json", '{"weight_map": {"logit_scale": "../../etc/passwd"}}')
  end))
end, { "shardesc/model.safetensors.index.json", "outside the directory" })
case("model dir", "sharded index naming a missing shard", function()
  return clip.load(model_dir("shardmiss", function(d)
    os.remove(d .. "/model.safetensors")
    write(d .. "/model.safetensors.index.json", '{"weight_map": {"logit_scale": "model-00001-of-00002.safetensors"}}')
  end))
end, { "shardmiss/model-00001-of-00002.safetensors", "No such file" })
case("model dir", "no tokenizer files", function()
  return clip.load(model_dir("notok", function(d)
    os.remove(d .. "/vocab.json")
    os.remove(d .. "/merges.txt")
  end))
end, { "notok", "missing tokenizer files (vocab.json and merges.txt)", "{tokenizer = false}" })
case("model dir", "vocab.json truncated", function()
  return clip.load(model_dir("vocabtrunc", function(d)
    write(d .. "/vocab.json", H.read(d .. "/vocab.json"):sub(1, 1000))
  end))
end, { "vocabtrunc/vocab.json", "invalid JSON" })
case("model dir", "merges.txt naming an unknown token", function()
  return clip.load(model_dir("mergebad", function(d)
    write(d .. "/merges.txt", "#version: 0.2\nzzqq xxyy\n")
  end))
end, { "mergebad/merges.txt:2", "not in vocab.json" })
case("model dir", "preprocessor_config.json wrong-typed key", function()
  return clip.load(model_dir("ppbad", function(d)
    write(d .. "/preprocessor_config.json", '{"crop_size": "big"}')
  end))
end, { "ppbad/preprocessor_config.json", "crop_size", "must be" })
case("model dir", "preprocessor_config.json crop_size 15910 (area over the pixel limit)", function()
  return clip.load(model_dir("ppbomb", function(d)
    write(d .. "/preprocessor_config.json", '{"crop_size": 15910}')
  end))
end, { "ppbomb/preprocessor_config.json", "crop_size 15910x15910 is over the limit of 178956970 pixels" })

-- inputs ------------------------------------------------------------------------
local model = clip.load(TINY)

case("text", "non-UTF-8 text", function()
  return model:encode_texts({ "fine", "bad \xff byte" })
end, { "encode_texts: item 2", "invalid UTF-8 at byte 5", "0xFF" })
case("text", "truncated UTF-8 sequence", function()
  return model.tokenizer:encode("caf\xc3")
end, { "tokenizer", "invalid UTF-8 at byte 4", "truncated sequence" })
case("text", "UTF-8-encoded surrogate", function()
  return model.tokenizer:encode("\xed\xa0\x80")
end, { "tokenizer", "invalid UTF-8 at byte 1", "surrogate" })
case("text", "overlong UTF-8", function()
  return model.tokenizer:encode("\xc0\xaf")
end, { "tokenizer", "invalid UTF-8 at byte 1" })
case("text", "not a string", function()
  return model:encode_texts({ "ok", 42 })
end, { "encode_texts: item 2 is a number" })
case("text", "token id outside the vocabulary", function()
  return model:encode_texts({ { 4094, 4096, 4095 } })
end, { "encode_texts", "token id 4096", "outside the vocabulary of 4096" })
case("text", "more ids than max_position_embeddings", function()
  local t = {}
  for i = 1, 78 do t[i] = 1 end
  return model:encode_texts({ t })
end, { "encode_texts", "78 tokens exceed max_position_embeddings 77" })
case("batch", "empty list of texts", function()
  return model:encode_texts({})
end, { "encode_texts: empty batch" })
case("batch", "empty list of images", function()
  return model:encode_images({})
end, { "encode_images: empty batch" })
case("batch", "pixel tensor with 0 images", function()
  return model:encode_images(clip.zeros({ 0, 3, 32, 32 }))
end, { "encode_images: empty batch" })
case("batch", "empty loss batch", function()
  return clip.loss.MultipleNegativesRankingLoss(model):forward({ anchor = {}, positive = {} })
end, { "loss: empty batch" })
case("batch", "empty embeddings into a loss", function()
  return clip.core.loss_mnrl(clip.zeros({ 0, 24 }), clip.zeros({ 0, 24 }))
end, { "MultipleNegativesRankingLoss: empty batch" })
case("batch", "pixel tensor of the wrong size", function()
  return model:encode_images(clip.zeros({ 1, 3, 16, 16 }))
end, { "encode_images", "expected {n,3,32,32}" })
case("numbers", "NaN in pixels", function()
  local px = clip.zeros({ 2, 3, 32, 32 })
  px:set(2, 1, 5, 5, 0 / 0)
  return model:encode_images(px)
end, { "encode_images: pixel tensor holds NaN or Inf (image 2)" })
case("numbers", "Inf in pixels", function()
  local px = clip.zeros({ 1, 3, 32, 32 })
  px:set(1, 3, 32, 32, -math.huge)
  return model:encode_images(px)
end, { "encode_images: pixel tensor holds NaN or Inf (image 1)" })
case("numbers", "NaN in embeddings given to a loss", function()
  local a = clip.ones({ 2, 24 })
  a:set(1, 1, 0 / 0)
  return clip.core.loss_mnrl(a, clip.ones({ 2, 24 }))
end, { "MultipleNegativesRankingLoss: loss is not finite" })
case("numbers", "Inf in embeddings given to CLIPLoss", function()
  local a = clip.ones({ 2, 24 })
  a:set(2, 2, math.huge)
  return clip.core.loss_clip(a, clip.ones({ 2, 24 }), 2.0)
end, { "loss is not finite" })
case("numbers", "NaN in image_std", function()
  return clip.image.processor({ image_std = { 0 / 0, 1, 1 } })
end, { "image_mean/image_std[0]", "finite nonzero" })

teardown(function()
  model:close()
  local out = os.getenv("CLIP_ROBUSTNESS_TABLE")
  if out and #rows > 0 then
    local f = assert(io.open(out, "w"))
    for _, r in ipairs(rows) do
      f:write(("| %s | %s | `%s` |\n"):format(r[1], r[2], (r[3]:gsub("|", "\\|"))))
    end
    f:close()
  end
  os.execute("rm -rf '" .. tmp .. "'")
end)

describe("bad inputs: a clear error naming the file and the reason", function()

  for _, c in ipairs(CASES) do
    local area, input, f, want = c[1], c[2], c[3], c[4]
    it(area .. ": " .. input, function()
      local ok, err = pcall(f)
      assert.is_false(ok, "expected an error for " .. input)
      err = tostring(err)
      for _, w in ipairs(want) do
        assert(err:find(w, 1, true), ("message %q does not contain %q"):format(err, w))
      end
      -- Lua positions ("lua/clip/x.lua:12: ") are noise for the reader of the table
      local shown = err:gsub("[%w_/%.]+%.lua:%d+: ", ""):gsub(tmp:gsub("%p", "%%%0"), "<tmp>")
        :gsub(FX:gsub("%p", "%%%0"), "")
      rows[#rows + 1] = { area, input, shown }
    end)
  end
end)

describe("bombs are refused before anything is allocated", function()
  it("decodes the 100000x100000 PNG header under a 1 GB address-space limit", function()
    if os.getenv("CLIP_SANITIZER") then
      -- ASan reserves terabytes of shadow memory and valgrind its own heap:
      -- an address-space limit would fail them before the test runs
      return
    end
    local p = io.popen(("ulimit -v 1000000; %s -e %q 2>&1"):format(lua_cmd(), [[
      local clip = require "clip"
      for _, f in ipairs({ "huge.png", "huge.jpg" }) do
        local ok, e = pcall(clip.image.load, "]] .. IMG .. [[" .. f)
        io.write(tostring(ok), " ", tostring(e), "\n")
      end]]))
    local out = p:read("a")
    p:close()
    assert.matches("false [^\n]*huge%.png: image too large", out)
    assert.matches("false [^\n]*huge%.jpg: image too large", out)
    assert.is_nil(out:find("out of memory", 1, true), out)
  end)

  it("refuses a safetensors header length of 2^40 without reading or allocating it", function()
    -- a 16-byte file claiming a terabyte header: the check is against the file size
    local p = tmp .. "/claim.safetensors"
    write(p, string.pack("<I8", 1 << 40) .. "{}      ")
    local before = collectgarbage("count")
    local ok, e = pcall(clip.load_safetensors, p)
    assert.is_false(ok)
    assert.matches("larger than the file", e)
    assert.is_true(collectgarbage("count") - before < 64)
  end)
end)

describe("a loss that turns NaN during training", function()
  local guard = require "clip.guard"
  local MODEL = FX .. "models/tiny-train"
  local batch = clip.load_safetensors(FX .. "train/batch.safetensors")
  local js = clip.json.decode(H.read(FX .. "train/train.json"))
  local MOD = { modalities = { anchor = "image", positive = "text" } }
  local function make_batch()
    return { anchor = batch.anchor_pixel_values, positive = js.batch.positive_input_ids }
  end

  local function snapshot(m)
    local s = {}
    for name, p in m:named_parameters() do s[name] = p.data:bytes() end
    return s
  end

  local function same(m, snap)
    for name, p in m:named_parameters() do
      if p.data:bytes() ~= snap[name] then return false, name end
    end
    return true
  end

  it("stops with the step number and leaves parameters and optimizer state as before the step", function()
    local m = clip.load(MODEL, { tokenizer = false })
    m:train_only({ "projection" })
    local loss = clip.loss.MultipleNegativesRankingLoss(m, MOD)
    -- a learning rate so large that step 1 sends the projections to ~1e38:
    -- the loss of step 2 overflows to NaN
    local opt = clip.optim.SGD(m, { lr = 1e38 })
    local v1 = guard.step(opt, loss, make_batch())
    assert.is_true(v1 == v1 and v1 < math.huge)
    local snap = snapshot(m)
    local state = {}
    for name, st in pairs(opt.state) do state[name] = st.step end
    local ok, err = pcall(guard.step, opt, loss, make_batch())
    assert.is_false(ok, "step 2 should fail")
    assert.matches("^training step 2: loss is NaN", err)
    assert.matches("as before step 2", err)
    local unchanged, which = same(m, snap)
    assert.is_true(unchanged, "parameter changed by the failed step: " .. tostring(which))
    for name, st in pairs(opt.state) do assert.equal(state[name], st.step, name) end
    for _, p in m:named_parameters() do
      local g = p.grad
      if g then assert.equal(0, clip.core.sumsq(g), p.name .. " gradient not zeroed") end
    end
    rows[#rows + 1] = { "training", "loss turns NaN at step 2 (SGD, lr 1e38)", err }
    m:close()
  end)

  it("stops at a NaN in the batch, with the step number given by the caller", function()
    local m = clip.load(MODEL, { tokenizer = false })
    m:train_only({ "projection" })
    local loss = clip.loss.MultipleNegativesRankingLoss(m, MOD)
    local opt = clip.optim.AdamW(m, { lr = 1e-3 })
    local snap = snapshot(m)
    local px = batch.anchor_pixel_values:clone()
    px:set(1, 1, 1, 1, 0 / 0)
    local ok, err = pcall(guard.step, opt, loss, { anchor = px, positive = js.batch.positive_input_ids },
      { step = 17 })
    assert.is_false(ok)
    assert.matches("^training step 17: ", err)
    assert.is_true((same(m, snap)))
    assert.is_nil(next(opt.state), "AdamW state created by a failed step")
    rows[#rows + 1] = { "training", "NaN pixel in a training batch (step 17)", err }
    -- the same optimizer keeps working on good data
    local v = guard.step(opt, loss, make_batch(), { step = 18 })
    assert.is_true(v == v)
    assert.is_false((same(m, snap)))
    m:close()
  end)

  it("checks gradients too: a finite loss with an Inf gradient does not step", function()
    local m = clip.load(MODEL, { tokenizer = false })
    m:train_only({ "projection" })
    local opt = clip.optim.SGD(m, { lr = 0.1 })
    local snap = snapshot(m)
    -- a fake loss whose backward leaves an Inf in one gradient
    local fake = {
      backward = function()
        local g = m.core:grad("visual_projection.weight", true)
        g:set(1, 1, math.huge)
        return 1.5
      end,
    }
    local ok, err = pcall(guard.step, opt, fake, {}, { step = 3 })
    assert.is_false(ok)
    assert.matches("^training step 3: gradient of 'visual_projection.weight' holds NaN or Inf", err)
    assert.is_true((same(m, snap)))
    m:close()
  end)
end)

describe("nothing lost: saving is atomic", function()
  -- a 55 MB model (text tower 256 wide over CLIP's 49408-token vocabulary),
  -- so that a save takes long enough to be interrupted in the middle
  local function big_model(dir)
    local cfg = clip.json.decode(H.read(TINY .. "/config.json"))
    cfg.text_config.vocab_size, cfg.text_config.bos_token_id, cfg.text_config.eos_token_id = 49408, 49406, 49407
    cfg.text_config.hidden_size = 256
    cfg.text_config.intermediate_size = 512
    cfg.text_config.num_attention_heads = 4
    local m = clip.model.wrap(clip.core.model_new(clip.json.encode(cfg)))
    for i, it in ipairs(m:parameter_info()) do
      m:param(it.name):copy(clip.randn(it.shape, i) * 0.02)
    end
    m:param("logit_scale"):set(0)
    m:save(dir)
    m:close()
  end

  local function lines(path)
    local f = io.open(path, "rb")
    if not f then return {} end
    local r = {}
    for l in f:lines() do r[#r + 1] = tonumber(l) end
    f:close()
    return r
  end

  local function gone(pid)
    local f = io.open("/proc/" .. pid .. "/stat", "rb")
    if not f then return true end
    local s = f:read("a") or ""
    f:close()
    return s:match("^%d+ %b() (%a)") == "Z" -- a zombie no longer runs
  end

  local function sleep(s) os.execute(("sleep %.3f"):format(s)) end

  it("a save killed (SIGKILL) at a random moment leaves the last complete model loadable", function()
    local dir = tmp .. "/atomic"
    big_model(dir)
    local ref = clip.load_safetensors(dir .. "/model.safetensors")
    local ref_bytes = {}
    for k, t in pairs(ref) do if k ~= "logit_scale" then ref_bytes[k] = t:bytes() end end
    ref = nil
    local seed = os.time()
    math.randomseed(seed)
    local interrupted = 0
    for round = 1, 3 do
      local progress, pidfile = tmp .. "/progress" .. round, tmp .. "/pid" .. round
      sh(("%s '%sspec/host/save_loop.lua' '%s' '%s' >'%s.log' 2>&1 & echo $! >'%s'")
        :format(lua_cmd(), H.spec_dir .. "../", dir, progress, progress, pidfile))
      local pid = tonumber(H.read(pidfile):match("%d+"))
      -- let it complete one save, then kill it somewhere inside a later one
      local waited = 0
      while #lines(progress) < 1 and waited < 600 and not gone(pid) do
        sleep(0.05)
        waited = waited + 1
      end
      assert(not gone(pid), "the saver died on its own:\n" .. (io.open(progress .. ".log"):read("a") or ""))
      local delay = math.random() * 0.4
      sleep(delay)
      sh("kill -9 " .. pid)
      for _ = 1, 200 do
        if gone(pid) then break end
        sleep(0.02)
      end
      assert(gone(pid), "the saver survived SIGKILL")
      local done = lines(progress)
      local last = done[#done] or 0
      local ctx = ("round %d (seed %d, killed %.3f s after save %d)"):format(round, seed, delay, last)
      -- the directory holds a complete model: the last completed save, or the
      -- one in flight if its rename had happened just before the kill
      local m = clip.load(dir, { tokenizer = false })
      local v = m.logit_scale
      assert(v == last or v == last + 1, ctx .. ": logit_scale " .. v)
      assert.equal(24, m:encode_texts({ { 49406, 320, 49407 } }):size(2))
      m:close()
      local t = clip.load_safetensors(dir .. "/model.safetensors")
      for k, b in pairs(ref_bytes) do
        assert(t[k] and t[k]:bytes() == b, ctx .. ": tensor " .. k .. " differs")
      end
      t = nil
      -- no leftover can be mistaken for the model: besides the model's own
      -- files there is at most a temporary "<file>.tmp<pid>" of the killed write
      for _, name in ipairs(clip.core.listdir(dir)) do
        local known = name == "config.json" or name == "model.safetensors" or name == "preprocessor_config.json"
        local temp = name:match("^[%w_]+%.[%w]+%.tmp%d+$")
        assert(known or temp, ctx .. ": unexpected file " .. name)
        if temp then
          assert.is_nil(name:match("%.safetensors$"))
          assert.is_nil(name:match("%.json$"))
          interrupted = interrupted + 1
          os.remove(dir .. "/" .. name)
        end
      end
    end
    if os.getenv("CLIP_ROBUSTNESS_VERBOSE") then
      io.stderr:write(("atomic save: %d of 3 kills interrupted a write (seed %d)\n"):format(interrupted, seed))
    end
    collectgarbage()
  end)
end)
