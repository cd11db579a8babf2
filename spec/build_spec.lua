-- spec/build_spec.lua - the source tree keeps its layers (kernels and core without Lua,
-- bindings the only lua.h users), the shared objects export only their entry points,
-- `luarocks make` and `make install` install the same module, and the C core keeps its
-- rules (no exit/abort/assert/printf to stdout).
local H = require "spec.helpers"

local root = H.spec_dir .. "../"

local function sh(cmd)
  local p = io.popen("cd '" .. root .. "' && " .. cmd .. " 2>&1")
  local out = p:read("a")
  local ok = p:close()
  return out, ok
end

local function ls(pattern)
  local out = {}
  for l in sh("ls " .. pattern):gmatch("[^\n]+") do
    if not l:find("No such file", 1, true) then out[#out + 1] = l end
  end
  table.sort(out)
  return out
end

local write = require("spec.support.files").write

local LAYERS = { "kernels", "core", "capi", "lua" }

describe("build", function()
  it("has every C source in one of the layer folders", function()
    assert.same({}, ls("csrc/*.c csrc/*.h"))
    local n = 0
    for _, layer in ipairs(LAYERS) do n = n + #ls("csrc/" .. layer .. "/*.c") end
    assert.equal(#ls("csrc/*/*.c"), n)
    local srcs = sh("make -s sources")
    for _, f in ipairs(ls("csrc/*/*.c")) do
      assert.truthy(srcs:find(f, 1, true), f .. " is built")
    end
  end)

  it("keeps exit, abort, assert and stdout printing out of csrc/", function()
    for _, f in ipairs(ls("csrc/*/*.c")) do
      local src = H.read(root .. f)
      -- strip comments and string literals before looking
      src = src:gsub("/%*.-%*/", ""):gsub("//[^\n]*", ""):gsub('"[^"\n]*"', '""')
      for _, bad in ipairs({ "%f[%w_]exit%s*%(", "%f[%w_]abort%s*%(", "%f[%w_]assert%s*%(",
        "%f[%w_]printf%s*%(", "%f[%w_]puts%s*%(", "%f[%w_]putchar%s*%(", "stdout" }) do
        assert.is_nil(src:find(bad), f .. " uses " .. bad)
      end
    end
  end)

  it("gives lua_pushfstring-style calls only the conversions Lua has", function()
    -- luaL_error / lua_pushfstring know %s %d %f %p %c %U %I %%; a C conversion such as
    -- %lld or %zu raises "invalid conversion" instead of the message (l_errorf takes C's)
    local CALLS = { luaL_error = true, lua_pushfstring = true, luaL_argerror = true,
      luaL_typeerror = true }
    local found = {}
    for _, f in ipairs(ls("csrc/lua/*.c")) do
      local src = H.read(root .. f)
      for pos, call in src:gmatch("()(%f[%w_][%w_]+)%s*%(") do
        if CALLS[call] then
          -- the first string literal before the call's first ';' (adjacent literals joined)
          local args = src:sub(pos):match("^[^;]*")
          local lits, i = {}, 1
          while true do -- string literals, escapes kept as written
            local a = args:find('"', i, true)
            if not a then break end
            local j = a + 1
            while j <= #args and args:sub(j, j) ~= '"' do
              j = j + (args:sub(j, j) == "\\" and 2 or 1)
            end
            lits[#lits + 1] = args:sub(a + 1, j - 1)
            i = j + 1
          end
          local fmt = table.concat(lits)
          for conv in fmt:gsub("%%%%", ""):gmatch("%%(.)") do
            if not ("sdfpcUI"):find(conv, 1, true) then
              found[#found + 1] = ("%s: %s(\"%s\") has %%%s"):format(f, call, fmt, conv)
            end
          end
        end
      end
    end
    assert.same({}, found)
    -- and the message of one of the calls that had %lld
    local t = require("clip").tensor({ 1, 2 })
    local ok, err = pcall(t.rows, t, 5, 6)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("rows: range 5..6 out of bounds for 2 rows", 1, true), err)
  end)

  it("has luaopen_clip_core only in lclip.c and lua.h only in csrc/lua/", function()
    for _, f in ipairs(ls("csrc/*/*.c csrc/*/*.h")) do
      local src = H.read(root .. f)
      if f:match("%.c$") and src:find("luaopen_clip_core", 1, true) then
        assert.equal("csrc/lua/lclip.c", f)
      end
      if src:find('#include "lua.h"', 1, true) or src:find('#include "lauxlib.h"', 1, true) then
        assert.truthy(f:match("^csrc/lua/"), f .. " includes lua.h")
      end
    end
  end)

  it("compiles the kernels and the core without the Lua include path", function()
    local tmp = os.tmpname()
    local src = tmp .. ".c"
    for _, layer in ipairs({ "kernels", "core" }) do
      local inc = sh("make -s print-INC_" .. layer):gsub("%s+$", "")
      assert.is_nil(inc:find("lua", 1, true), layer .. " flags: " .. inc)
      assert.truthy(inc:find("csrc/" .. layer, 1, true), layer .. " flags: " .. inc)
      -- a layer header compiles with those flags; adding lua.h makes it an error
      local hdr = layer == "core" and "model.h" or "kernels.h"
      write(src, '#include "' .. hdr .. '"\n')
      local cc = "cc -std=c11 -fsyntax-only $(make -s print-PKG_CFLAGS) " .. inc .. " " .. src
      local out, ok = sh(cc)
      assert.truthy(ok, out)
      write(src, '#include "' .. hdr .. '"\n#include "lua.h"\n')
      out, ok = sh(cc)
      assert.falsy(ok, layer .. " found lua.h")
      assert.truthy(out:find("lua.h", 1, true), out)
    end
    os.remove(src)
    os.remove(tmp)
  end)

  it("exports only luaopen_clip_core from core.so", function()
    local out, ok = sh("nm -D --defined-only build/clip/core.so")
    assert.truthy(ok, out)
    local names = {}
    for name in out:gmatch("%x+ %a ([%w_@.]+)") do names[#names + 1] = name end
    assert.same({ "luaopen_clip_core" }, names)
  end)

  it("defines the version once, in include/clip.h", function()
    local clip = require "clip"
    local v = H.read(root .. "include/clip.h"):match('#define CLIP_VERSION "([^"]+)"')
    assert.equal(v, clip.version)
    for _, f in ipairs(ls("csrc/*/*.c lua/clip/*.lua bin/clip")) do
      assert.is_nil(H.read(root .. f):find(v, 1, true), f .. " repeats the version " .. v)
    end
  end)

  it("builds the rockspec with the Makefile, installing what `make install-lua` installs", function()
    local rs = H.read(root .. "rockspec/clip-scm-1.rockspec")
    assert.truthy(rs:find('type = "make"', 1, true))
    assert.truthy(rs:find('install_target = "install-lua"', 1, true))
    local dest = os.tmpname()
    os.remove(dest)
    local out, ok = sh("make -s install-lua DESTDIR=" .. dest .. " PREFIX=/p LIBDIR=/p/lib LUADIR=/p/lua")
    assert.truthy(ok, out)
    local got = {}
    for l in sh("cd " .. dest .. " && find . -type f | sort"):gmatch("[^\n]+") do got[#got + 1] = l end
    local want = { "./p/lib/clip/core.so" }
    for _, f in ipairs(ls("lua/clip/*.lua")) do want[#want + 1] = "./p/lua/clip/" .. f:match("[^/]+$") end
    table.sort(want)
    assert.same(want, got)
    sh("rm -rf " .. dest)
  end)
end)
