-- spec/build_spec.lua - the rockspec and the Makefile build the same sources,
-- and the C core keeps its rules (no exit/abort/assert/printf to stdout).
local H = require "spec.helpers"

local root = H.spec_dir .. "../"

local function ls(pattern)
  local out = {}
  local p = io.popen("cd '" .. root .. "' && ls " .. pattern .. " 2>/dev/null")
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  table.sort(out)
  return out
end

describe("build", function()
  it("lists every csrc/*.c in the rockspec, and nothing else", function()
    local rs = H.read(root .. "rockspec/clip-scm-1.rockspec")
    local listed = {}
    for f in rs:gmatch('"(csrc/[%w_]+%.c)"') do listed[#listed + 1] = f end
    table.sort(listed)
    assert.same(ls("csrc/*.c"), listed)
  end)

  it("lists every lua/clip/*.lua module in the rockspec", function()
    local rs = H.read(root .. "rockspec/clip-scm-1.rockspec")
    for _, f in ipairs(ls("lua/clip/*.lua")) do
      assert.truthy(rs:find('"' .. f .. '"', 1, true), f .. " is installed by the rockspec")
    end
  end)

  it("keeps exit, abort, assert and stdout printing out of csrc/", function()
    for _, f in ipairs(ls("csrc/*.c")) do
      local src = H.read(root .. f)
      -- strip comments and string literals before looking
      src = src:gsub("/%*.-%*/", ""):gsub("//[^\n]*", ""):gsub('"[^"\n]*"', '""')
      for _, bad in ipairs({ "%f[%w_]exit%s*%(", "%f[%w_]abort%s*%(", "%f[%w_]assert%s*%(",
        "%f[%w_]printf%s*%(", "%f[%w_]puts%s*%(", "%f[%w_]putchar%s*%(", "stdout" }) do
        assert.is_nil(src:find(bad), f .. " uses " .. bad)
      end
    end
  end)

  it("has luaopen_clip_core only in lclip.c and lua.h only in binding files", function()
    for _, f in ipairs(ls("csrc/*.c")) do
      local src = H.read(root .. f)
      if src:find("luaopen_clip_core", 1, true) then assert.equal("csrc/lclip.c", f) end
      if src:find('#include "lua.h"', 1, true) or src:find('#include "lauxlib.h"', 1, true) then
        assert.truthy(f:match("^csrc/l_") or f == "csrc/lclip.c", f .. " includes lua.h")
      end
    end
  end)
end)
