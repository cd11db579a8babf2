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

-- bits(t [, h]) -> a 32-bit FNV-1a hash (8 hex digits) of a tensor's float32 values, in order:
-- equal hashes mean bitwise equal results, so a spec can hold the bits of a kernel's output on
-- one CPU and compare another CPU's (or another kernel's) with them. h continues a hash.
function M.bits(t, h)
  h = h and tonumber(h, 16) or 2166136261
  for _, x in ipairs(flatten(t:totable())) do
    local s = string.pack("<f", x)
    for i = 1, 4 do h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff end
  end
  return ("%08x"):format(h)
end

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
-- the message of the error f(...) raises (it must raise)
function M.err_of(f, ...)
  local ok, msg = pcall(f, ...)
  assert(not ok, "expected an error")
  return tostring(msg)
end

-- msg contains every string of parts (plain find); the failure names the missing one
function M.assert_msg(msg, parts)
  for _, p in ipairs(parts) do
    if not msg:find(p, 1, true) then
      error(("error message %q does not contain %q"):format(msg, p), 2)
    end
  end
end

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

local function sh(cmd)
  assert(os.execute(cmd), cmd)
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Other layouts of the tiny model, assembled from models/tiny's files in a fresh
-- temporary directory (the same thing make_models.py's assemble_layout does):
--   "st"          sentence-transformers: modules.json -> 0_CLIPModel/ holding
--                 the HF files; the reference files in the root
--   "st-root"     sentence-transformers >= 3.1: modules.json path "", the HF
--                 files in the root
--   "legacy-eos"  text bos/eos/pad 0/2/1 in config.json (argmax pooling), the
--                 older CLIPFeatureExtractor preprocessor_config.json; its own
--                 reference files (fixtures/layouts/legacy-eos/)
-- Returns the directory; remove it with M.rmtree when done.
function M.layout(name)
  local src = M.fixtures .. "models/tiny"
  local dir = M.tmpdir()
  local hf = dir
  if name == "st" then
    hf = dir .. "/0_CLIPModel"
    sh("mkdir " .. q(hf))
  elseif name ~= "st-root" and name ~= "legacy-eos" then
    error("unknown layout " .. tostring(name), 2)
  end
  sh(("cp %s/* %s && rm %s/reference.json %s/reference.safetensors"):format(q(src), q(hf), q(hf), q(hf)))
  local rdir = src
  if name == "st" or name == "st-root" then
    write(dir .. "/modules.json", ('[{"idx": 0, "name": "0", "path": "%s", '
      .. '"type": "sentence_transformers.models.CLIPModel"}]\n'):format(name == "st" and "0_CLIPModel" or ""))
    write(dir .. "/config_sentence_transformers.json", '{\n  "__version__": {\n'
      .. '    "pytorch": "2.5.1",\n    "sentence_transformers": "3.3.1",\n    "transformers": "4.48.0"\n  },\n'
      .. '  "default_prompt_name": null,\n  "prompts": {},\n  "similarity_fn_name": "cosine"\n}\n')
  else -- legacy-eos
    local cfg = M.read(src .. "/config.json")
    for key, v in pairs({ bos_token_id = 0, eos_token_id = 2, pad_token_id = 1 }) do
      local n
      cfg, n = cfg:gsub('("' .. key .. '": )%d+', "%1" .. v)
      assert(n == 1, key)
    end
    write(hf .. "/config.json", cfg)
    local pp = M.read(src .. "/preprocessor_config.json")
    local S = assert(pp:match('"shortest_edge": (%d+)'))
    local mean, std = assert(pp:match('"image_mean": (%b[])')), assert(pp:match('"image_std": (%b[])'))
    write(hf .. "/preprocessor_config.json", ('{\n  "crop_size": %s,\n  "do_center_crop": true,\n'
      .. '  "do_normalize": true,\n  "do_resize": true,\n  "feature_extractor_type": "CLIPFeatureExtractor",\n'
      .. '  "image_mean": %s,\n  "image_std": %s,\n  "resample": 3,\n  "size": %s\n}\n'):format(S, mean, std, S))
    rdir = M.fixtures .. "layouts/legacy-eos"
  end
  sh(("cp %s/reference.json %s/reference.safetensors %s"):format(q(rdir), q(rdir), q(dir)))
  return dir
end

function M.rmtree(dir)
  assert(dir:match("^/tmp/"), dir)
  sh("rm -rf " .. q(dir))
end

return M
