-- examples/image_search.lua - search a folder of images by text or by image.
--
--   lua5.4 examples/image_search.lua index  --model DIR --out photos.index photos/
--   lua5.4 examples/image_search.lua query  --model DIR --index photos.index --text "a dog on a beach"
--   lua5.4 examples/image_search.lua query  --model DIR --index photos.index --image query.jpg
--   lua5.4 examples/image_search.lua captions --model DIR --captions "a cat,a dog" photo.jpg
pcall(dofile, (arg and arg[0] or ""):gsub("[^/]*$", "") .. "clip_checkout.lua") -- a checkout's lua/, build/
local clip = require "clip"
local cli, progress = require "clip.cli", require "clip.progress"

local args = cli.parse(arg, {
  name = "image_search.lua",
  usage = "lua5.4 examples/image_search.lua (index FOLDER... | query | captions IMAGE) --model DIR [options]",
  description = "index: embed every image of the folders and save the index (--out).\n"
    .. "query: the --k images closest to --text or --image in --index.\n"
    .. "captions: rank the --captions for an image, best first.",
  options = {
    "model",
    { "out", "DIR", "where index saves", default = "images.index" },
    { "index", "DIR", "the index query reads", default = "images.index" },
    { "text", "TEXT", "query text" },
    { "image", "PATH", "query image" },
    { "captions", "LIST", "candidate captions (comma-separated, repeatable)", type = "list" },
    { "k", "N", "results to show", type = "integer", default = 5 },
    "batch-size",
    { "skip-errors", nil, "leave out images that fail to decode", type = "flag" },
    "quiet",
  },
  positional = { "COMMAND [PATH...]", "index, query or captions, then folders or an image", min = 1 },
})

local function fail(msg) io.stderr:write("image_search.lua: error: ", msg, "\n"); os.exit(2) end
local cmd = args[1]
local model = clip.load(args.model)
if cmd == "index" then
  if #args < 2 then fail("index needs one or more folders") end
  local pr = (not args.quiet) and true or nil
  local idx
  for i = 2, #args do
    local o = { batch_size = args.batch_size, progress = pr, skip_errors = args.skip_errors }
    if idx then idx:add(model, args[i], o) else idx = clip.search.build(model, args[i], o) end
  end
  idx:save(args.out)
  print(("indexed %d images (%d skipped) into %s"):format(idx:size(), #idx.skipped, args.out))
elseif cmd == "query" then
  if not args.text and not args.image then fail("query needs --text or --image") end
  local idx = clip.search.load(args.index)
  local hits = args.text and idx:query_text(model, args.text, args.k) or idx:query_image(model, args.image, args.k)
  for i, h in ipairs(hits) do print(("%2d  %.4f  %s"):format(i, h.score, h.path)) end
elseif cmd == "captions" then
  if #args ~= 2 or #args.captions == 0 then fail("captions needs one image and --captions") end
  local ranked = clip.search.rank_captions(model, args[2], args.captions)
  for i, r in ipairs(ranked) do print(("%2d  %.4f  %s"):format(i, r.score, r.caption)) end
else
  fail("unknown command '" .. tostring(cmd) .. "' (index, query or captions)")
end
model:close()
