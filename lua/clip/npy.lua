--- clip.npy: read and write NumPy .npy files (format version 1.0).
--
--   local npy = require "clip.npy"
--   npy.save("embeds.npy", model:encode_images(paths))   -- numpy.load("embeds.npy")
--   local t = npy.load("embeds.npy")                     -- clip.Tensor
--
-- Written files are float32 little-endian ('<f4'), C order, with the header of
-- the NumPy format specification 1.0: "\x93NUMPY", version 1.0, a uint16 header
-- length, then a Python dict literal padded with spaces and ending in "\n" so
-- the data starts at a multiple of 64 bytes. Reading accepts versions 1.0, 2.0
-- and 3.0, C order, and the dtypes '<f4' and '>f4' (copied), '<f8', '<f2',
-- '<i4', '<i8', '|u1', '|i1' (converted to float32). Every failure raises an
-- error whose message starts with the path.
local core = require "clip.core"

local M = {}

local MAGIC = "\x93NUMPY"
local LITTLE = string.pack("=i4", 1) == string.pack("<i4", 1)

local function is_tensor(x)
  return type(x) == "userdata" and getmetatable(x) == getmetatable(core.zeros({}))
end

-- the float32 bytes of t in little-endian order
local function le_bytes(t)
  local b = t:bytes()
  if LITTLE then return b end
  return (b:gsub("....", string.reverse))
end

local function shape_literal(shape)
  if #shape == 0 then return "()" end
  if #shape == 1 then return "(" .. shape[1] .. ",)" end
  local parts = {}
  for i, d in ipairs(shape) do parts[i] = tostring(d) end
  return "(" .. table.concat(parts, ", ") .. ")"
end

--- The header of a float32 C-order array of the given shape (a list of sizes).
function M.header(shape)
  local dict = ("{'descr': '<f4', 'fortran_order': False, 'shape': %s, }"):format(shape_literal(shape))
  -- magic (6) + version (2) + length (2) + dict + padding + "\n" = multiple of 64
  local total = 10 + #dict + 1
  local pad = (64 - total % 64) % 64
  local h = dict .. string.rep(" ", pad) .. "\n"
  if #h > 65535 then error("npy: header too long", 2) end
  return MAGIC .. "\1\0" .. string.pack("<I2", #h) .. h
end

--- The bytes of a .npy file holding tensor t (float32).
function M.encode(t)
  if not is_tensor(t) then
    error("npy.encode: expected a clip.Tensor, got " .. type(t), 2)
  end
  return M.header(t:shape()) .. le_bytes(t)
end

--- Write tensor t to path as .npy (through a temporary file renamed into place).
function M.save(path, t)
  if type(path) ~= "string" then error("npy.save: expected a path, got " .. type(path), 2) end
  if not is_tensor(t) then error("npy.save: expected a clip.Tensor, got " .. type(t), 2) end
  local ok, err = core.write_file(path, M.encode(t))
  if not ok then error(err, 2) end
  return path
end

-- ------------------------------------------------------------------ reading
local DTYPES = {
  ["<f4"] = { size = 4, fmt = "<f" }, [">f4"] = { size = 4, fmt = ">f" },
  ["<f8"] = { size = 8, fmt = "<d" }, ["<i4"] = { size = 4, fmt = "<i4" },
  ["<i8"] = { size = 8, fmt = "<i8" }, ["|u1"] = { size = 1, fmt = "B" },
  ["|i1"] = { size = 1, fmt = "b" }, ["<f2"] = { size = 2, fmt = "<I2", half = true },
}
DTYPES["<u1"], DTYPES["<i1"] = DTYPES["|u1"], DTYPES["|i1"]

local function half_to_float(h)
  local s = (h >> 15) & 1
  local e = (h >> 10) & 31
  local m = h & 1023
  local v
  if e == 0 then v = m * 2.0 ^ -24
  elseif e == 31 then v = (m == 0) and math.huge or (0 / 0)
  else v = (1 + m / 1024) * 2.0 ^ (e - 15) end
  return s == 1 and -v or v
end

local function parse_header(h, name)
  local descr = h:match("['\"]descr['\"]%s*:%s*['\"]([^'\"]+)['\"]")
  local fortran = h:match("['\"]fortran_order['\"]%s*:%s*(%a+)")
  local shape_s = h:match("['\"]shape['\"]%s*:%s*(%b())")
  if not descr or not fortran or not shape_s then
    error(("%s: npy header is not a dict with descr, fortran_order and shape: %s"):format(name, h), 3)
  end
  local shape = {}
  for d in shape_s:gmatch("%d+") do shape[#shape + 1] = tonumber(d) end
  if shape_s:find("[^%d%s,()L]") then
    error(("%s: npy shape %s is not a tuple of integers"):format(name, shape_s), 3)
  end
  return descr, fortran, shape
end

--- A Tensor from the bytes of a .npy file; name is used in messages.
function M.decode(s, name)
  name = name or "<npy>"
  if type(s) ~= "string" then error("npy.decode: expected a string, got " .. type(s), 2) end
  if #s < 10 or s:sub(1, 6) ~= MAGIC then
    error(name .. ": not a .npy file (no \\x93NUMPY magic)", 2)
  end
  local major = s:byte(7)
  local hlen, off
  if major == 1 then
    hlen, off = string.unpack("<I2", s, 9)
  elseif major == 2 or major == 3 then
    if #s < 12 then error(name .. ": truncated .npy header", 2) end
    hlen, off = string.unpack("<I4", s, 9)
  else
    error(("%s: unsupported .npy format version %d.%d"):format(name, major, s:byte(8)), 2)
  end
  if off + hlen - 1 > #s then error(name .. ": truncated .npy header", 2) end
  local descr, fortran, shape = parse_header(s:sub(off, off + hlen - 1), name)
  local dt = DTYPES[descr]
  if not dt then
    error(("%s: unsupported dtype '%s' (float32, float64, float16, int32, int64, int8, uint8 are read)")
      :format(name, descr), 2)
  end
  local numel = 1
  for _, d in ipairs(shape) do numel = numel * d end
  if fortran ~= "False" and #shape > 1 then
    error(name .. ": Fortran-order arrays are not supported (save with numpy.ascontiguousarray)", 2)
  end
  local data = off + hlen
  local need = numel * dt.size
  if #s - data + 1 ~= need then
    error(("%s: %d data bytes, shape %s of %s needs %d"):format(name, #s - data + 1,
      shape_literal(shape), descr, need), 2)
  end
  if descr == "<f4" and LITTLE then
    return core.from_bytes(s:sub(data), shape)
  end
  local vals = {}
  local fmt, size = dt.fmt, dt.size
  for i = 0, numel - 1 do
    local v = string.unpack(fmt, s, data + i * size)
    if dt.half then v = half_to_float(v) end
    vals[i + 1] = v
  end
  local t = core.tensor(vals)
  if #shape ~= 1 then t = t:reshape(shape) end
  return t
end

--- Read a .npy file into a Tensor.
function M.load(path)
  if type(path) ~= "string" then error("npy.load: expected a path, got " .. type(path), 2) end
  local f, err = io.open(path, "rb")
  if not f then error(err, 2) end
  local s = f:read("a")
  f:close()
  local ok, t = pcall(M.decode, s, path)
  if not ok then error(t, 2) end
  return t
end

return M
