-- spec/support/files.lua - test inputs written to disk: any bytes, and the
-- bytes of a safetensors file (8-byte little-endian header length, header, data).
local M = {}

function M.write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

function M.st_bytes(header, data)
  return string.pack("<I8", #header) .. header .. (data or "")
end

return M
