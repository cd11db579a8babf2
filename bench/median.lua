--- bench/median.lua - the median of a list of numbers (the mean of the two middle ones for an
-- even count; nil for none), the list left as it was. The benchmarks' one copy:
--   local median = dofile(here .. "median.lua")
return function(t)
  if not t or #t == 0 then return nil end
  local s = { table.unpack(t) }
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end
