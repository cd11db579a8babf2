-- spec/support/shell.lua - shell commands run in the repository root, stderr
-- merged into the output.
local H = require "spec.helpers"

local root = H.spec_dir .. "../"
local M = {}

-- ok, output, exit code
function M.sh(cmd)
  local p = io.popen("cd '" .. root .. "' && (" .. cmd .. ") 2>&1")
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok, out, code
end

-- the output of a command that must succeed
function M.must(cmd)
  local ok, out = M.sh(cmd)
  assert(ok, cmd .. " failed:\n" .. out)
  return out
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- bin/clip ARGS from the repository's tree (120 s at most): exit code, stdout, stderr
function M.clip(args)
  local errf = os.tmpname()
  local p = io.popen(("cd %s && LUA_PATH=\"$PWD/lua/?.lua;$PWD/lua/?/init.lua\" LUA_CPATH=\"$PWD/build/?.so\" "
    .. "timeout 120 lua5.4 bin/clip %s 2>%s"):format(q(root), args, q(errf)))
  local out = p:read("a")
  local _, _, code = p:close()
  local err = H.read(errf)
  os.remove(errf)
  return code, out, err
end

return M
