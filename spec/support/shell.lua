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

return M
