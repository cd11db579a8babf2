-- spec/safetensors_spec.lua - reading and writing safetensors files
local clip = require "clip"
local H = require "spec.helpers"

local files = require "spec.support.files"
local write, st_bytes = files.write, files.st_bytes

describe("safetensors", function()
  local dir
  setup(function() dir = H.tmpdir() end)
  teardown(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("round-trips F32, F16 and BF16 with metadata", function()
    local a = clip.randn({ 3, 5 }, 11)
    local p = dir .. "/a.safetensors"
    clip.save_safetensors(p, { a = a, b = clip.tensor({ 1, 2, 3 }) }, { metadata = { format = "pt" } })
    local t, info = clip.load_safetensors(p)
    assert.same(a:totable(), t.a:totable())
    assert.same({ 1, 2, 3 }, t.b:totable())
    assert.equal("pt", info.metadata.format)
    assert.equal("F32", info.dtypes.a)
    for _, dt in ipairs({ "F16", "BF16" }) do
      clip.save_safetensors(p, { a = a }, { dtype = dt })
      local r, i2 = clip.load_safetensors(p)
      assert.equal(dt, i2.dtypes.a)
      H.assert_close(r.a, a, { atol = 0, rtol = dt == "F16" and 1e-3 or 8e-3, label = dt })
    end
  end)

  it("reads exact half-precision values", function()
    -- F16: 1.0 = 0x3C00, -2.0 = 0xC000, 65504 = 0x7BFF, smallest subnormal 0x0001
    local data = string.pack("<I2I2I2I2", 0x3C00, 0xC000, 0x7BFF, 0x0001)
    local p = dir .. "/h.safetensors"
    write(p, st_bytes('{"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}', data))
    local t = clip.load_safetensors(p)
    assert.same({ 1, -2, 65504, 2 ^ -24 }, t.h:totable())
    -- BF16 and U8
    data = string.pack("<I2I2", 0x3F80, 0xC040) .. string.char(0, 7, 255, 0)
    write(p, st_bytes('{"b":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"u":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}', data))
    t = clip.load_safetensors(p)
    assert.same({ 1, -3 }, t.b:totable())
    assert.same({ 0, 7, 255, 0 }, t.u:totable())
  end)

  it("writes files PyTorch's layout expects (sorted keys, 8-byte aligned data)", function()
    local p = dir .. "/o.safetensors"
    clip.save_safetensors(p, { zz = clip.ones({ 1 }), aa = clip.ones({ 2 }) })
    local s = H.read(p)
    local n = string.unpack("<I8", s)
    assert.equal(0, n % 8)
    local hdr = s:sub(9, 8 + n)
    assert.truthy(hdr:find('"aa"', 1, true) < hdr:find('"zz"', 1, true))
    assert.equal(8 + n + 12, #s)
  end)

  it("writes the metadata keys sorted: the same call gives the same bytes in every process", function()
    local meta = {}
    for i = 1, 40 do meta[("k%02d"):format(41 - i)] = tostring(i) end
    meta.format, meta.indices = "pt", "[1,2]"
    local p = dir .. "/m.safetensors"
    clip.save_safetensors(p, { t = clip.ones({ 2 }) }, { metadata = meta })
    local s = H.read(p)
    local hdr = s:sub(9, 8 + string.unpack("<I8", s))
    local keys = {}
    for k in hdr:match('"__metadata__":(%b{})'):gmatch('"([^"]+)":"') do keys[#keys + 1] = k end
    assert.equal(42, #keys)
    for i = 2, #keys do assert.is_true(keys[i - 1] < keys[i], keys[i - 1] .. " before " .. keys[i]) end
    -- another process, whose tables have another hash seed: the same bytes
    local p2 = dir .. "/m2.safetensors"
    local code = ([[local clip = require "clip"; local meta = {}
      for i = 1, 40 do meta[("k%%02d"):format(41 - i)] = tostring(i) end
      meta.format, meta.indices = "pt", "[1,2]"
      clip.save_safetensors(%q, { t = clip.ones({ 2 }) }, { metadata = meta })]]):format(p2)
    write(dir .. "/m2.lua", code)
    assert(os.execute(("cd '%s..' && LUA_PATH='lua/?.lua;lua/?/init.lua' LUA_CPATH='build/?.so' lua5.4 '%s/m2.lua'")
      :format(H.spec_dir, dir)))
    assert.equal(s, H.read(p2))
  end)

  local bad = {
    { "missing file", nil, "No such file" },
    { "empty file", "", "shorter than the 8%-byte header" },
    { "huge header length", string.pack("<I8", 1 << 40) .. "{}", "header length" },
    { "header longer than file", string.pack("<I8", 100) .. "{}", "larger than the file" },
    { "not JSON", st_bytes("{not json}   "), "not valid JSON" },
    { "offsets out of range", st_bytes('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', "12345678"), "out of range" },
    { "size mismatch", st_bytes('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', "12345678"), "expected 12" },
    { "overlap", st_bytes('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', ("x"):rep(12)), "overlap" },
    { "unknown dtype", st_bytes('{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}', ("x"):rep(8)), "unknown dtype 'Q4'" },
    { "negative shape", st_bytes('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', ("x"):rep(8)), "invalid shape" },
    { "missing offsets", st_bytes('{"a":{"dtype":"F32","shape":[2]}}', ("x"):rep(8)), "data_offsets" },
  }
  for _, case in ipairs(bad) do
    it("refuses a bad file: " .. case[1], function()
      local p = dir .. "/bad.safetensors"
      os.remove(p)
      if case[2] then write(p, case[2]) end
      local ok, err = pcall(clip.load_safetensors, p)
      assert.is_false(ok)
      assert.truthy(err:find(p, 1, true), "message names the file: " .. err)
      assert.matches(case[3], err)
    end)
  end

  it("refuses a directory", function()
    local ok, err = pcall(clip.load_safetensors, dir)
    assert.is_false(ok)
    assert.matches("directory", err)
  end)

  it("a failed save leaves the previous file intact", function()
    local p = dir .. "/keep.safetensors"
    clip.save_safetensors(p, { a = clip.ones({ 2 }) })
    local ok = pcall(clip.save_safetensors, p, { a = clip.ones({ 2 }) }, { dtype = "Q8" })
    assert.is_false(ok)
    assert.same({ 1, 1 }, clip.load_safetensors(p).a:totable())
    local ok2 = pcall(clip.save_safetensors, "/nonexistent-dir/x.safetensors", { a = clip.ones({ 1 }) })
    assert.is_false(ok2)
  end)
end)
