-- spec/npy_spec.lua - clip.npy: .npy files (NumPy format 1.0) that numpy.load
-- reads, byte for byte what numpy.save writes for float32 C-order arrays.
local clip = require "clip"
local npy = require "clip.npy"
local H = require "spec.helpers"

-- headers as numpy 1.24's np.save writes them for float32 arrays
local function numpy_header(shape_literal)
  local dict = "{'descr': '<f4', 'fortran_order': False, 'shape': " .. shape_literal .. ", }"
  local len = 10 + #dict + 1
  local pad = (64 - len % 64) % 64
  return "\x93NUMPY\1\0" .. string.pack("<I2", #dict + pad + 1) .. dict .. string.rep(" ", pad) .. "\n"
end

local function have_numpy()
  local ok = os.execute("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1")
  return ok == true
end

describe("clip.npy", function()
  local tmp
  setup(function() tmp = H.tmpdir() end)
  teardown(function() os.execute("rm -rf '" .. tmp .. "'") end)

  it("writes the NumPy 1.0 header: magic, version, length, dict, 64-byte alignment", function()
    for _, c in ipairs({ { {}, "()" }, { { 5 }, "(5,)" }, { { 2, 3 }, "(2, 3)" },
      { { 0, 4 }, "(0, 4)" }, { { 2, 3, 4, 5 }, "(2, 3, 4, 5)" } }) do
      local h = npy.header(c[1])
      assert.equal(numpy_header(c[2]), h)
      assert.equal(0, #h % 64)
      assert.equal("\x93NUMPY", h:sub(1, 6))
      assert.equal("\1\0", h:sub(7, 8))
      assert.equal(#h - 10, string.unpack("<I2", h, 9))
      assert.equal("\n", h:sub(-1))
    end
  end)

  it("encodes float32 little-endian data after the header", function()
    local t = clip.tensor({ { 1, 2, 3 }, { 4, 5, -6.5 } })
    local s = npy.encode(t)
    local h = numpy_header("(2, 3)")
    assert.equal(h, s:sub(1, #h))
    assert.equal(string.pack("<ffffff", 1, 2, 3, 4, 5, -6.5), s:sub(#h + 1))
  end)

  it("round-trips shapes, including scalars and empty arrays", function()
    for _, shape in ipairs({ { 7 }, { 3, 4 }, { 2, 3, 4 }, {}, { 0, 4 } }) do
      local t = clip.randn(shape)
      if #shape == 0 then t = clip.tensor({ 1.25 }):reshape({}) end
      local path = tmp .. "/rt.npy"
      assert.equal(path, npy.save(path, t))
      local u = npy.load(path)
      assert.same(t:shape(), u:shape())
      assert.equal(t:bytes(), u:bytes())
    end
  end)

  it("reads other dtypes and versions 2.0 / 3.0, converting to float32", function()
    local function file(descr, shape, data, major)
      local dict = ("{'descr': '%s', 'fortran_order': False, 'shape': %s, }"):format(descr, shape)
      major = major or 1
      local hl = major == 1 and string.pack("<I2", #dict + 1) or string.pack("<I4", #dict + 1)
      return "\x93NUMPY" .. string.char(major, 0) .. hl .. dict .. "\n" .. data
    end
    local cases = {
      { file("<f8", "(2, 2)", string.pack("<dddd", 1, -2, 0.5, 1e10)), { 1, -2, 0.5, 1e10 } },
      { file(">f4", "(3,)", string.pack(">fff", 1, 2, 3)), { 1, 2, 3 } },
      { file("<i4", "(2,)", string.pack("<i4i4", -7, 9)), { -7, 9 } },
      { file("<i8", "(2,)", string.pack("<i8i8", 3, 4)), { 3, 4 } },
      { file("|u1", "(3,)", "\0\127\255"), { 0, 127, 255 } },
      { file("<f2", "(3,)", string.pack("<I2I2I2", 0x3C00, 0xC000, 0x7BFF)), { 1, -2, 65504 } },
      { file("<f4", "(2,)", string.pack("<ff", 1.5, 2.5), 2), { 1.5, 2.5 } },
      { file("<f4", "(2,)", string.pack("<ff", 1.5, 2.5), 3), { 1.5, 2.5 } },
    }
    for i, c in ipairs(cases) do
      local t = npy.decode(c[1], "case" .. i)
      H.assert_close(t, c[2], { atol = 0, label = "case " .. i })
    end
    assert.same({ 2, 2 }, npy.decode(cases[1][1]):shape())
  end)

  it("refuses what it cannot read, naming the file", function()
    local good = npy.encode(clip.tensor({ 1, 2 }))
    local function err_of(s)
      local ok, e = pcall(npy.decode, s, "x.npy")
      assert.is_false(ok)
      return e
    end
    assert.truthy(err_of("PK\3\4 not npy"):find("x.npy: not a .npy file", 1, true))
    assert.truthy(err_of(good:sub(1, 20)):find("x.npy: truncated .npy header", 1, true))
    assert.truthy(err_of(good:sub(1, -2)):find("x.npy: 7 data bytes, shape (2,) of <f4 needs 8", 1, true))
    assert.truthy(err_of(good:gsub("<f4", "<c8")):find("x.npy: unsupported dtype '<c8'", 1, true))
    -- a 1-D array is the same in Fortran order
    assert.same({ 1, 2 }, npy.decode((good:gsub("False", "True ")), "x.npy"):totable())
    local f2 = npy.encode(clip.zeros({ 2, 2 })):gsub("False", "True ")
    assert.truthy(err_of(f2):find("x.npy: Fortran-order arrays are not supported", 1, true))
    assert.truthy(err_of("\x93NUMPY\9\0\0\0"):find("x.npy: unsupported .npy format version 9.0", 1, true))
    local ok, e = pcall(npy.load, tmp .. "/missing.npy")
    assert.is_false(ok)
    assert.truthy(e:find(tmp .. "/missing.npy: No such file", 1, true), e)
    assert.has_error(function() npy.save(tmp .. "/x.npy", { 1, 2 }) end,
      "npy.save: expected a clip.Tensor, got table")
    local ok2, e2 = pcall(npy.save, "/nonexistent/dir/x.npy", clip.zeros({ 1 }))
    assert.is_false(ok2)
    assert.truthy(e2:find("/nonexistent/dir/x.npy", 1, true), e2)
  end)

  it("is what numpy.save writes and what numpy.load reads (with /usr/bin/python3 and numpy)", function()
    if not have_numpy() then
      pending("numpy not available")
      return
    end
    local t = clip.tensor({ { 0.1, -2.5, 3e-8 }, { 1e30, 0, -0.0 } })
    npy.save(tmp .. "/ours.npy", t)
    npy.save(tmp .. "/scalar.npy", clip.tensor({ 7.5 }):reshape({}))
    local py = ([[
import numpy as np
a = np.load('%s/ours.npy')
assert a.dtype == np.dtype('<f4') and a.shape == (2, 3), (a.dtype, a.shape)
np.save('%s/theirs.npy', a)
s = np.load('%s/scalar.npy')
assert s.shape == () and float(s) == 7.5
np.save('%s/f8.npy', np.arange(6.0).reshape(3, 2) / 4)
print(repr(a.tolist()))
]]):format(tmp, tmp, tmp, tmp)
    local f = assert(io.open(tmp .. "/check.py", "wb"))
    f:write(py)
    f:close()
    local p = io.popen("/usr/bin/python3 '" .. tmp .. "/check.py' 2>&1")
    local out = p:read("a")
    assert.is_true(p:close(), out)
    -- numpy writes back exactly our bytes
    assert.equal(H.read(tmp .. "/ours.npy"), H.read(tmp .. "/theirs.npy"))
    local u = npy.load(tmp .. "/f8.npy")
    assert.same({ 3, 2 }, u:shape())
    H.assert_close(u, { 0, 0.25, 0.5, 0.75, 1, 1.25 }, { atol = 0 })
  end)
end)
