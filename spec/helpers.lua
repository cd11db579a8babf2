-- spec/helpers.lua - shared test helpers.
local M = {}

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
M.spec_dir = here
M.fixtures = here .. "fixtures/"

local function flatten(x, out)
  out = out or {}
  if type(x) == "table" then
    for i = 1, #x do flatten(x[i], out) end
  else
    out[#out + 1] = x
  end
  return out
end
M.flatten = flatten

-- assert_close(actual, expected, {atol=, rtol=, label=})
-- actual/expected: clip.Tensor, nested tables or numbers. Fails with the label,
-- the largest difference and its (flat, 1-based) index.
function M.assert_close(actual, expected, opts)
  opts = opts or {}
  local atol, rtol = opts.atol or 1e-5, opts.rtol or 0
  local label = opts.label or "values"
  local function tolist(v)
    if type(v) == "userdata" and v.totable then v = v:totable() end
    if type(v) == "number" then return { v } end
    return flatten(v)
  end
  local a, e = tolist(actual), tolist(expected)
  if #a ~= #e then
    error(("%s: %d values, expected %d"):format(label, #a, #e), 2)
  end
  local worst, where, bad = -1, 0, 0
  for i = 1, #a do
    local d = math.abs(a[i] - e[i])
    local tol = atol + rtol * math.abs(e[i])
    if d ~= d or d > tol then bad = bad + 1 end
    if d ~= d then d = math.huge end
    if d > worst then worst, where = d, i end
  end
  if bad > 0 then
    error(("%s: %d of %d values differ; largest difference %.3g at [%d] (got %.9g, expected %.9g; atol %g, rtol %g)")
      :format(label, bad, #a, worst, where, a[where], e[where], atol, rtol), 2)
  end
  return true
end

-- read a whole file
function M.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

function M.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p '" .. p .. "'"))
  return p
end

return M
