--- bench/captions.lua - the step benchmarks' synthetic captions: B token-id lists of 15
-- tokens (start, 13 ids spread over the vocabulary by seed, end), the same in every run.
-- usage: local caps = dofile(here .. "captions.lua"); caps(B, seed)
return function(B, seed)
  local out = {}
  for b = 1, B do
    local ids = { 49406 }
    for t = 2, 14 do ids[t] = (b * 7919 + t * 104729 + seed) % 49000 + 1 end
    ids[15] = 49407
    out[b] = ids
  end
  return out
end
