-- spec/host/save_loop.lua DIR PROGRESS - load the model in DIR and save it
-- back into DIR over and over, with logit_scale set to the save's number
-- (1, 2, ...); after each completed save, append its number to PROGRESS.
-- spec/robustness_spec.lua kills this process (SIGKILL) at a random moment
-- and checks that DIR still holds a complete model.
local clip = require "clip"
local dir, progress = assert(arg[1]), assert(arg[2])
local m = clip.load(dir, { tokenizer = false })
local ls = m:param("logit_scale")
for i = 1, math.huge do
  ls:set(i)
  m:save(dir)
  local f = assert(io.open(progress, "a"))
  f:write(i, "\n")
  f:close()
end
