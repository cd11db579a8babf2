-- examples/clip_checkout.lua - what an example script runs first, by
--   pcall(dofile, (arg and arg[0] or ""):gsub("[^/]*$", "") .. "clip_checkout.lua")
-- Run from a checkout (lua5.4 examples/zero_shot.lua), the checkout's lua/ and
-- build/ join the module paths, so `require "clip"` works without `make env`.
-- A script copied alone finds no such file beside it: the pcall fails quietly
-- and the installed clip is used.
local root = (debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./") .. "../"
local f = io.open(root .. "lua/clip/init.lua")
if f then
  f:close()
  package.path = package.path .. ";" .. root .. "lua/?.lua;" .. root .. "lua/?/init.lua"
  package.cpath = package.cpath .. ";" .. root .. "build/?.so"
end
