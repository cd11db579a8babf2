-- spec/host_spec.lua - embedding clip in a C host (examples/host/host.c),
-- through require and statically linked through luaL_requiref; several Lua
-- states side by side and on several threads; and the module's manners: no
-- globals, nothing printed, no exits, errors a host can catch.
local clip = require "clip"
local H = require "spec.helpers"

local root = H.spec_dir .. "../"
local MODEL = H.fixtures .. "models/tiny"
local IMAGE = H.fixtures .. "images/natural.jpg"
local TEXT = "a photo of a cat"

local shell = require "spec.support.shell"
local sh, must = shell.sh, shell.must

-- run a command with stdout and stderr apart
local function run_split(cmd)
  local errf = os.tmpname()
  local p = io.popen("cd '" .. root .. "' && (" .. cmd .. ") 2>'" .. errf .. "'")
  local out = p:read("a")
  local ok, _, code = p:close()
  local err = H.read(errf)
  os.remove(errf)
  return ok, out, err, code
end

local ENV = 'LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua" '

-- what the host's snippet computes, in this process
local function expected_similarity()
  local m = clip.load(MODEL)
  local img = m:encode_images({ IMAGE }, { normalize = true })
  local txt = m:encode_texts({ TEXT }, { normalize = true })
  local s = clip.cosine_similarity(img, txt):get(1, 1)
  m:close()
  return s
end

local function check_host_output(out, mode, states, threads)
  assert.truthy(out:find("^mode: " .. mode), out)
  local want = expected_similarity()
  local n = 0
  for s, v, d in out:gmatch("state (%d+): similarity (%S+) dim (%d+)") do
    n = n + 1
    assert.equal(24, tonumber(d))
    -- another Lua state, possibly another GEMM slicing: last bits only
    assert.is_true(math.abs(tonumber(v) - want) < 1e-5, ("state %s: %s vs %.9g"):format(s, v, want))
  end
  assert.equal(states, n)
  local checks = 0
  for line in out:gmatch("[^\n]+") do
    if line:match("%s(ok)$") or line:match("FAILED$") then
      checks = checks + 1
      assert.truthy(line:match("%sok$"), line)
    end
  end
  -- 4 checks per state, one "works after close" per state but the last, 2 for threads
  assert.equal(states * 4 + (states - 1) + (threads > 0 and 2 or 0), checks)
  assert.truthy(out:find("all checks passed\n$"), out)
  -- every line is the host's own: the module printed nothing
  for line in out:gmatch("[^\n]+") do
    assert.truthy(line:match("^mode: ") or line:match("^state %d+: ") or line:match("^%d+ threads")
      or line == "all checks passed", "unexpected output: " .. line)
  end
end

describe("embedding in a C host", function()
  setup(function() must("make -s all host >/dev/null") end)

  it("loads clip through require (clip/core.so from package.cpath)", function()
    local ok, out, err = run_split(ENV .. 'LUA_CPATH="$PWD/build/?.so" timeout 120 build/host/host ' ..
      ("'%s' '%s' '%s' --states 3 --threads 3"):format(MODEL, IMAGE, TEXT))
    assert.is_true(ok, out .. err)
    assert.equal("", err)
    check_host_output(out, "require", 3, 3)
  end)

  it("links clip.core statically and registers it with luaL_requiref", function()
    -- no shared object can be found: the module must come from the program
    local ok, out, err = run_split(ENV .. 'LUA_CPATH="/nonexistent/?.so" timeout 120 build/host/static_host ' ..
      ("'%s' '%s' '%s' --states 2 --threads 2"):format(MODEL, IMAGE, TEXT))
    assert.is_true(ok, out .. err)
    assert.equal("", err)
    check_host_output(out, "static", 2, 2)
    -- and the plain host cannot run under the same conditions
    local ok2, out2 = sh(ENV .. 'LUA_CPATH="/nonexistent/?.so" timeout 120 build/host/host ' ..
      ("'%s' '%s' '%s'"):format(MODEL, IMAGE, TEXT))
    assert.is_falsy(ok2)
    assert.truthy(out2:find("module 'clip.core' not found", 1, true), out2)
  end)

  it("reports a failing snippet as an error, with exit status 1", function()
    local ok, out, err, code = run_split(ENV .. 'LUA_CPATH="$PWD/build/?.so" timeout 120 build/host/host ' ..
      ("/nonexistent/model '%s' '%s'"):format(IMAGE, TEXT))
    assert.is_falsy(ok)
    assert.equal(1, code)
    assert.truthy(err:find("state 1: .*/nonexistent/model: missing config.json"), err)
    assert.falsy(out:find("similarity", 1, true))
  end)
end)

describe("module manners", function()
  -- a fresh interpreter, so that nothing this busted process loaded interferes
  local SNIPPET = [[
local before = {}
for k in pairs(_G) do before[k] = true end
local clip = require "clip"
local loaded = {}
for f in io.popen("ls lua/clip"):lines() do
  local name = f:match("^(.*)%.lua$")
  if name and name ~= "init" then
    if pcall(require, "clip." .. name) then loaded[#loaded + 1] = name end
  end
end
local _ = clip.tokenizer, clip.image, clip.model, clip.loss, clip.optim
local m <close> = clip.load(MODEL)
local e = m:encode_images({IMAGE}, {normalize = true})
local t = m:encode_texts({"a photo of a cat", "a dog"})
local _ = clip.cosine_similarity(e, t)
m:save(OUT)
local m2 <close> = clip.load(OUT)
local _ = m2:encode_texts({"x"})
require("clip.npy").save(OUT .. "/e.npy", e)
local ok = pcall(clip.load, "/nonexistent/model")
assert(not ok)
collectgarbage()
local added = {}
for k in pairs(_G) do if not before[k] then added[#added + 1] = tostring(k) end end
table.sort(added)
io.stderr:write("LOADED ", #loaded, "\n")
io.stderr:write("ADDED ", table.concat(added, ","), "\n")
]]

  it("creates no globals, prints nothing and returns normally", function()
    local tmp = H.tmpdir()
    local f = assert(io.open(tmp .. "/snippet.lua", "wb"))
    f:write(("local MODEL, IMAGE, OUT = %q, %q, %q\n"):format(MODEL, IMAGE, tmp .. "/saved"), SNIPPET)
    f:close()
    local ok, out, err = run_split(ENV .. 'LUA_CPATH="$PWD/build/?.so" timeout 120 lua5.4 ' .. tmp .. "/snippet.lua")
    os.execute("rm -rf '" .. tmp .. "'")
    assert.is_true(ok, out .. err)
    assert.equal("", out, "the module wrote to stdout")
    assert.truthy(err:find("LOADED %d+\n"), err)
    assert.is_true(tonumber(err:match("LOADED (%d+)")) >= 7, err)
    assert.equal("ADDED \n", err:match("ADDED [^\n]*\n"), "globals created: " .. err)
    -- nothing but the snippet's own lines on stderr
    for line in err:gmatch("[^\n]+") do
      assert.truthy(line:match("^LOADED ") or line:match("^ADDED "), "unexpected stderr: " .. line)
    end
  end)

  it("never calls os.exit in the library (clip.cli, the scripts' argument parser, may)", function()
    local p = io.popen("cd '" .. root .. "' && ls lua/clip/*.lua")
    for f in p:lines() do
      if not f:match("/cli%.lua$") then
        local src = H.read(root .. f):gsub("%-%-%[(=*)%[.-%]%1%]", ""):gsub("%-%-[^\n]*", "")
        assert.falsy(src:find("os%.exit"), f .. " calls os.exit")
      end
    end
    p:close()
  end)
end)
