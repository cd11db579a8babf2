#!/usr/bin/env lua5.4
--- Export Fashion-MNIST (the Debian package's idx files) as image folders
-- (OUT/<split>/<class>/<index>.png) and a title-style triplet dataset
-- (OUT/titles.csv: image,title,negative,split), so the demo runs the same
-- scripts a user runs on their own photos.
--
--   lua5.4 examples/fashion_export.lua [--out models/fashion-data] [--per-class N]
pcall(dofile, (arg and arg[0] or ""):gsub("[^/]*$", "") .. "clip_checkout.lua") -- a checkout's lua/, build/
local clip = require "clip"
local core = clip.core
local fashion = dofile((debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./") .. "fashion_classes.lua")

local opts = { out = "models/fashion-data", data = "/usr/share/datasets/fashion-mnist", ["per-class"] = 20,
  ["title-rows"] = 1000, seed = 0 }
for i = 1, #arg, 2 do
  local k = (arg[i] or ""):match("^%-%-(.+)$")
  if arg[i] == "--help" or not k or opts[k] == nil or not arg[i + 1] then
    io.stderr:write("usage: lua5.4 examples/fashion_export.lua [--out DIR] [--data DIR] [--per-class N] [--title-rows N] [--seed N]\n")
    os.exit(arg[i] == "--help" and 0 or 2)
  end
  opts[k] = tonumber(arg[i + 1]) or arg[i + 1]
end

local function export(split, images, labels, picks)
  local n = 0
  for _, f in ipairs(fashion.folders) do assert(core.mkdir_p(opts.out .. "/" .. split .. "/" .. f)) end
  local H, W = images:size(2), images:size(3)
  for _, r in ipairs(picks) do
    local img = images[r]
    local gray = img:totable()
    local buf = {}
    for y = 1, H do
      for x = 1, W do
        local v = string.char(math.tointeger(gray[y][x]))
        buf[#buf + 1] = v .. v .. v
      end
    end
    local c = math.tointeger(labels[r]) + 1
    local path = ("%s/%s/%s/%05d.png"):format(opts.out, split, fashion.folders[c], r)
    assert(core.png_write(path, W, H, table.concat(buf)))
    n = n + 1
  end
  return n
end

local t0 = os.time()
local rng = clip.data.rng(opts.seed)
-- test split: all 10,000 images
local timg = core.read_idx(opts.data .. "/t10k-images-idx3-ubyte.gz")
local tlab = core.read_idx(opts.data .. "/t10k-labels-idx1-ubyte.gz")
local all = {}
for i = 1, timg:size(1) do all[i] = i end
local n_test = export("test", timg, tlab, all)
-- few-shot / probe pool: per-class picks from the training images
local img = core.read_idx(opts.data .. "/train-images-idx3-ubyte.gz")
local lab = core.read_idx(opts.data .. "/train-labels-idx1-ubyte.gz")
local by_class = {}
for i = 1, img:size(1) do
  local c = math.tointeger(lab[i]) + 1
  by_class[c] = by_class[c] or {}
  table.insert(by_class[c], i)
end
local picks = {}
local used = {}
for c = 1, 10 do
  local list = table.move(by_class[c], 1, #by_class[c], 1, {})
  rng:shuffle(list)
  for k = 1, math.min(opts["per-class"], #list) do
    picks[#picks + 1] = list[k]
    used[list[k]] = true
  end
end
local n_train = export("train", img, lab, picks)
-- title triplets: images from the training pool; the title names the item by
-- the shop's product line (fashion_classes.lua: words pretraining never saw)
-- and its shade (read off the pixels); the negative is another line in the same
-- shade; 70/15/15 split
local H, W = img:size(2), img:size(3)
local function brightness(r) -- mean over the item's own pixels (non-zero)
  local s, n = 0, 0
  for _, row in ipairs(img[r]:totable()) do
    for _, v in ipairs(row) do if v > 0 then s, n = s + v, n + 1 end end
  end
  return n > 0 and s / n or 0
end
local sample = {}
for k = 1, 2000 do sample[k] = brightness(rng:random(img:size(1))) end
table.sort(sample)
local q = { sample[500], sample[1000], sample[1500] }
local rows = { "image,title,negative,split" }
local title_imgs, used_titles = {}, {}
for k = 1, opts["title-rows"] do
  local c = (k - 1) % 10 + 1
  local r
  repeat r = by_class[c][rng:random(#by_class[c])] until not used[r]
  used[r] = true
  title_imgs[#title_imgs + 1] = r
  local shade = fashion.shade_of(brightness(r), q)
  local t, tries = nil, 0
  repeat -- unique titles; once the combinations run out, number them
    t = fashion.title(c, shade, rng)
    tries = tries + 1
    if tries > 50 then t = t .. (" #%d"):format(k) end
  until not used_titles[t]
  used_titles[t] = true
  local oc = rng:random(9)
  if oc >= c then oc = oc + 1 end
  local neg = fashion.title(oc, shade, rng)
  local split = k <= opts["title-rows"] * 0.7 and "train" or (k <= opts["title-rows"] * 0.85 and "valid" or "test")
  rows[#rows + 1] = ('titles/%s/%05d.png,"%s","%s",%s'):format(fashion.folders[c], r, t, neg, split)
end
local _ = W + H
export("titles", img, lab, title_imgs)
assert(core.write_file(opts.out .. "/titles.csv", table.concat(rows, "\n") .. "\n"))
io.stderr:write(("exported %d test images, %d training images, %d title rows to %s in %ds\n"):format(
  n_test, n_train, #rows - 1, opts.out, os.time() - t0))
