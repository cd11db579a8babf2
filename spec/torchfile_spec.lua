-- spec/torchfile_spec.lua - pytorch_model.bin without Python: clip.load_torch and clip.load of a
-- directory holding pytorch_model.bin (csrc/core/zip.c, csrc/core/torchfile.c). Fixtures:
-- spec/fixtures/make_torch.py (torch.save of models/tiny-gelu-fp16's weights, edge cases and
-- hostile files).
local clip = require "clip"
local H = require "spec.helpers"

local T = H.fixtures .. "torch/"
local GELU = H.fixtures .. "models/tiny-gelu-fp16"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local function sh(cmd) assert(os.execute(cmd), cmd) end

local function f32(v) return (string.unpack("<f", string.pack("<f", v))) end

-- bit-identical tensors: same shape, same float32 bits
local function assert_identical(a, b, label)
  assert.same(a:shape(), b:shape(), label)
  local x, y = H.flatten(a:totable()), H.flatten(b:totable())
  for i = 1, #x do
    if string.pack("<f", x[i]) ~= string.pack("<f", y[i]) then
      error(("%s: element %d differs: %.9g vs %.9g"):format(label, i, x[i], y[i]), 2)
    end
  end
end

-- a Hugging Face directory with tiny-gelu-fp16's config and the given .bin as its weights
local function hf_dir(bin, sub)
  local dir = H.tmpdir()
  local hf = sub and (dir .. "/" .. sub) or dir
  if sub then sh("mkdir " .. q(hf)) end
  sh(("cp %s/config.json %s/preprocessor_config.json %s && cp %s %s/pytorch_model.bin")
    :format(q(GELU), q(GELU), q(hf), q(bin), q(hf)))
  if sub then
    local f = assert(io.open(dir .. "/modules.json", "w"))
    f:write(('[{"idx": 0, "name": "0", "path": "%s", "type": "sentence_transformers.models.CLIPModel"}]\n'):format(sub))
    f:close()
  end
  return dir
end

describe("clip.load_torch", function()
  local expect = clip.json.decode(H.read(T .. "edge.json"))

  for _, name in ipairs({ "edge.bin", "edge-deflate.bin", "edge-proto4.bin" }) do
    it("returns names, shapes, dtypes and values (" .. name .. ": tied, strided, every dtype)", function()
      local t, info = clip.load_torch(T .. name)
      local n = 0
      for k, e in pairs(expect) do
        n = n + 1
        assert.is_not_nil(t[k], k)
        assert.same(e.shape, t[k]:shape(), k)
        local dt = ({ float32 = "F32", bfloat16 = "BF16", float64 = "F64", int64 = "I64" })[e.dtype]
        assert.equal(dt, info.dtypes[k], k)
        local got = H.flatten(t[k]:totable())
        assert.equal(#e.values, #got, k)
        for i, v in ipairs(e.values) do
          assert.equal(f32(v), got[i], k .. "[" .. i .. "]")
        end
      end
      local m = 0
      for _ in pairs(t) do m = m + 1 end
      assert.equal(n, m)
      assert.same({}, info.metadata)
    end)
  end

  it("reads the same weights as the safetensors file they were saved from", function()
    local st, sinfo = clip.load_safetensors(GELU .. "/model.safetensors")
    for _, name in ipairs({ "gelu-fp16.bin", "gelu-fp32.bin" }) do
      local t, info = clip.load_torch(T .. name)
      local n = 0
      for k, v in pairs(st) do
        n = n + 1
        assert_identical(t[k], v, name .. " " .. k)
        assert.equal(name == "gelu-fp16.bin" and sinfo.dtypes[k] or "F32", info.dtypes[k])
      end
      local m = 0
      for _ in pairs(t) do m = m + 1 end
      assert.equal(n, m)
    end
  end)
end)

describe("clip.load of a directory with pytorch_model.bin", function()
  local ref, js, base
  setup(function()
    ref = clip.load_safetensors(GELU .. "/reference.safetensors")
    js = clip.json.decode(H.read(GELU .. "/reference.json"))
    base = clip.load(GELU, { tokenizer = false })
  end)
  teardown(function() base:close() end)

  local function check(dir, label)
    local m = clip.load(dir, { tokenizer = false })
    assert.is_true(m.paths.torch)
    assert.truthy(m.paths.weights:match("pytorch_model%.bin$"))
    assert_identical(m:encode_images(ref.pixel_values), base:encode_images(ref.pixel_values), label .. " images")
    assert_identical(m:encode_texts(js.input_ids), base:encode_texts(js.input_ids), label .. " texts")
    H.assert_close(m:encode_texts(js.input_ids), ref.text_embeds, { atol = 1e-4, label = label .. " vs PyTorch" })
    m:close()
  end

  for _, name in ipairs({ "gelu-fp16.bin", "gelu-fp32.bin" }) do
    it("gives embeddings bit-identical to the safetensors load (" .. name .. ")", function()
      local dir = hf_dir(T .. name)
      check(dir, name)
      H.rmtree(dir)
    end)
  end

  it("reads a sentence-transformers directory with only 0_CLIPModel/pytorch_model.bin", function()
    local dir = hf_dir(T .. "gelu-fp16.bin", "0_CLIPModel")
    check(dir, "sentence-transformers")
    H.rmtree(dir)
  end)

  it("keeps F16 weights half with {half = true} where the packed kernel runs", function()
    local dir = hf_dir(T .. "gelu-fp16.bin")
    local m = clip.load(dir, { tokenizer = false, half = true })
    local h = clip.load(GELU, { tokenizer = false, half = true })
    assert.equal(h.core:is_half(), m.core:is_half())
    assert_identical(m:encode_images(ref.pixel_values), h:encode_images(ref.pixel_values), "half images")
    m:close()
    h:close()
    H.rmtree(dir)
  end)

  it("prefers model.safetensors when both are there", function()
    local dir = hf_dir(T .. "gelu-fp16.bin")
    sh(("cp %s/model.safetensors %s"):format(q(GELU), q(dir)))
    local m = clip.load(dir, { tokenizer = false })
    assert.is_false(m.paths.torch)
    m:close()
    H.rmtree(dir)
  end)

  it("names the file and the reason when pytorch_model.bin is hostile", function()
    local dir = hf_dir(T .. "hostile/system.bin")
    local ok, err = pcall(clip.load, dir, { tokenizer = false })
    assert.is_false(ok)
    assert.truthy(err:find(dir .. "/pytorch_model.bin: refuses global 'posix.system'", 1, true), err)
    H.rmtree(dir)
  end)
end)

describe("hostile and unsupported torch files", function()
  local cases = {
    { "hostile/system.bin", "refuses global 'posix.system' (only a state dict's tensors are read: loading never runs code" },
    { "hostile/eval.bin", "refuses global 'builtins.eval'" },
    { "hostile/list.bin", "the pickle holds a list, not a state dict" },
    { "hostile/cycle.bin", "state dict entry 'w' is a list, not a tensor" },
    { "hostile/truncated.bin", "ZIP end of central directory not found (truncated file?)" },
    { "hostile/short-storage.bin", "storage '0' declares 2 F32 elements, but its member _src/data/0 holds 4 bytes" },
    { "hostile/huge-numel.bin", "storage '0' declares 4611686018427387904 F32 elements" },
    { "hostile/huge-size.bin", "tensor 'a' (offset 0, strides reaching element 1099511627775) lies outside its storage '0' of 2 elements" },
    { "legacy.bin", "legacy torch.save format (PyTorch before 1.6): not supported" },
    { "edge.json", "not a torch.save file (expected a ZIP archive)" },
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local ok, err = pcall(clip.load_torch, T .. c[1])
      assert.is_false(ok)
      assert.truthy(err:find(T .. c[1] .. ": ", 1, true), err)
      assert.truthy(err:find(c[2], 1, true), err)
    end)
  end

  it("a missing file and a directory", function()
    local ok, err = pcall(clip.load_torch, T .. "nope.bin")
    assert.is_false(ok)
    assert.truthy(err:find("nope.bin: No such file or directory", 1, true), err)
    ok, err = pcall(clip.load_torch, T .. "hostile")
    assert.is_false(ok)
    assert.truthy(err:find("hostile: is a directory", 1, true), err)
  end)

  it("every truncation of a valid archive is refused, naming the file", function()
    local data = H.read(T .. "edge.bin")
    local dir = H.tmpdir()
    local path = dir .. "/cut.bin"
    for n = 0, #data - 1, 7 do
      local f = assert(io.open(path, "wb"))
      f:write(data:sub(1, n))
      f:close()
      local ok, err = pcall(clip.load_torch, path)
      assert.is_false(ok)
      assert.truthy(err:find(path, 1, true), err)
    end
    H.rmtree(dir)
  end)
end)
