--- clip.templates: prompt templates for zero-shot classification.
--
--   local templates = require "clip.templates"
--   templates.get("openai_imagenet")     -- the 80 templates of the CLIP paper
--   templates.get("openai_imagenet_7")   -- the 7 chosen by forward selection
--   templates.format("a photo of a {}.", "dog")  --> "a photo of a dog."
--
-- "openai_imagenet" is `imagenet_templates` of openai/CLIP's
-- notebooks/Prompt_Engineering_for_ImageNet.ipynb (commit e58d494), verbatim
-- and in order (MIT License, Copyright (c) 2021 OpenAI). "openai_imagenet_7"
-- is the subset that notebook lists as the result of sequential forward
-- selection over the 80, in its order. "simple" is the single prompt of the
-- CLIP README, "a photo of a {}.". A template holds "{}" (or "{c}") where the
-- class name goes. get("@file.txt") reads templates from a file, one a line.
local M = {}

M.openai_imagenet = {
  "a bad photo of a {}.",
  "a photo of many {}.",
  "a sculpture of a {}.",
  "a photo of the hard to see {}.",
  "a low resolution photo of the {}.",
  "a rendering of a {}.",
  "graffiti of a {}.",
  "a bad photo of the {}.",
  "a cropped photo of the {}.",
  "a tattoo of a {}.",
  "the embroidered {}.",
  "a photo of a hard to see {}.",
  "a bright photo of a {}.",
  "a photo of a clean {}.",
  "a photo of a dirty {}.",
  "a dark photo of the {}.",
  "a drawing of a {}.",
  "a photo of my {}.",
  "the plastic {}.",
  "a photo of the cool {}.",
  "a close-up photo of a {}.",
  "a black and white photo of the {}.",
  "a painting of the {}.",
  "a painting of a {}.",
  "a pixelated photo of the {}.",
  "a sculpture of the {}.",
  "a bright photo of the {}.",
  "a cropped photo of a {}.",
  "a plastic {}.",
  "a photo of the dirty {}.",
  "a jpeg corrupted photo of a {}.",
  "a blurry photo of the {}.",
  "a photo of the {}.",
  "a good photo of the {}.",
  "a rendering of the {}.",
  "a {} in a video game.",
  "a photo of one {}.",
  "a doodle of a {}.",
  "a close-up photo of the {}.",
  "a photo of a {}.",
  "the origami {}.",
  "the {} in a video game.",
  "a sketch of a {}.",
  "a doodle of the {}.",
  "a origami {}.",
  "a low resolution photo of a {}.",
  "the toy {}.",
  "a rendition of the {}.",
  "a photo of the clean {}.",
  "a photo of a large {}.",
  "a rendition of a {}.",
  "a photo of a nice {}.",
  "a photo of a weird {}.",
  "a blurry photo of a {}.",
  "a cartoon {}.",
  "art of a {}.",
  "a sketch of the {}.",
  "a embroidered {}.",
  "a pixelated photo of a {}.",
  "itap of the {}.",
  "a jpeg corrupted photo of the {}.",
  "a good photo of a {}.",
  "a plushie {}.",
  "a photo of the nice {}.",
  "a photo of the small {}.",
  "a photo of the weird {}.",
  "the cartoon {}.",
  "art of the {}.",
  "a drawing of the {}.",
  "a photo of the large {}.",
  "a black and white photo of a {}.",
  "the plushie {}.",
  "a dark photo of a {}.",
  "itap of a {}.",
  "graffiti of the {}.",
  "a toy {}.",
  "itap of my {}.",
  "a photo of a cool {}.",
  "a photo of a small {}.",
  "a tattoo of the {}.",
}

M.openai_imagenet_7 = {
  "itap of a {}.",
  "a bad photo of the {}.",
  "a origami {}.",
  "a photo of the large {}.",
  "a {} in a video game.",
  "art of the {}.",
  "a photo of the small {}.",
}

M.simple = { "a photo of a {}." }

local NAMES = { openai_imagenet = true, openai_imagenet_7 = true, simple = true }

--- The names get() accepts.
function M.names()
  local out = {}
  for k in pairs(NAMES) do out[#out + 1] = k end
  table.sort(out)
  return out
end

--- read(path) -> the templates of a text file, one a line (blank lines and
-- surrounding spaces dropped); each must hold "{}" or "{c}".
function M.read(path)
  local f, err = io.open(path, "rb")
  if not f then error(err, 2) end
  local out, n = {}, 0
  for line in f:lines() do
    n = n + 1
    line = line:match("^%s*(.-)%s*$")
    if line ~= "" then
      if not (line:find("{}", 1, true) or line:find("{c}", 1, true)) then
        f:close()
        error(("%s: line %d: a template must hold {} or {c}"):format(path, n), 2)
      end
      out[#out + 1] = line
    end
  end
  f:close()
  if #out == 0 then error(path .. ": no templates", 2) end
  return out
end

--- get(name_or_list) -> a fresh list of templates. A list is checked (each
-- item a string holding "{}" or "{c}") and copied; "@path" reads a file
-- (see read); a string that names no set but holds a placeholder is taken as
-- a single template.
function M.get(x)
  if type(x) == "string" then
    if NAMES[x] then return table.move(M[x], 1, #M[x], 1, {}) end
    if x:sub(1, 1) == "@" then return M.read(x:sub(2)) end
    if x:find("{}", 1, true) or x:find("{c}", 1, true) then return { x } end
    error(("templates: unknown template set '%s' (known: %s)"):format(x, table.concat(M.names(), ", ")), 2)
  end
  if type(x) ~= "table" or #x == 0 then
    error("templates: expected a set name or a non-empty list of templates", 2)
  end
  local out = {}
  for i, t in ipairs(x) do
    if type(t) ~= "string" or not (t:find("{}", 1, true) or t:find("{c}", 1, true)) then
      error(("templates: template %d must be a string holding {} or {c}"):format(i), 2)
    end
    out[i] = t
  end
  return out
end

--- format(template, classname): every "{}" and "{c}" replaced by the name.
function M.format(template, name)
  local s = template:gsub("{c}", function() return name end)
  s = s:gsub("{}", function() return name end)
  return s
end

return M
