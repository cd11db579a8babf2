-- examples/zero_shot.lua - zero-shot classification with prompt ensembling.
--
--   lua5.4 examples/zero_shot.lua --model DIR --classes cat,dog photo1.jpg photo2.jpg
--   lua5.4 examples/zero_shot.lua --model DIR --folder photos/     # photos/<class>/*.jpg: accuracy
pcall(dofile, (arg and arg[0] or ""):gsub("[^/]*$", "") .. "clip_checkout.lua") -- a checkout's lua/, build/
local clip = require "clip"
local cli, progress = require "clip.cli", require "clip.progress"

local args = cli.parse(arg, {
  name = "zero_shot.lua",
  usage = "lua5.4 examples/zero_shot.lua --model DIR (--classes A,B,... IMAGE... | --folder DIR)",
  description = "Classify images by comparing them with text prompts of each class (no training).\n"
    .. "With --folder (one sub-folder per class) it reports accuracy, per-class accuracy and the confusion matrix.",
  options = {
    "model",
    { "classes", "LIST", "class names (with --folder: names for the sub-folders, in sorted order)", type = "list" },
    { "folder", "DIR", "labelled images: DIR/<class>/<image>" },
    { "templates", "SET", "openai_imagenet (80), openai_imagenet_7, simple, @FILE (one a line), or one template with {}",
      default = "openai_imagenet" },
    { "top", "K", "classes shown per image", type = "integer", default = 3 },
    { "batch-size", "N", "images or prompts per forward", type = "integer", default = 32 },
    "quiet",
  },
  positional = { "IMAGE", "images to classify" },
})

local pr = (not args.quiet and progress.stderr_is_tty()) and "bar" or nil
local model = clip.load(args.model)
local eo = { batch_size = args.batch_size, progress = pr }

if args.folder then
  local ds = clip.data.image_folder(args.folder)
  local names = #args.classes > 0 and args.classes or ds.classes
  if #names ~= #ds.classes then
    io.stderr:write(("zero_shot.lua: error: %d names for %d class folders\n"):format(#names, #ds.classes)); os.exit(2)
  end
  local ev = clip.eval.ZeroShotEvaluator({ images = ds:column("image"), labels = ds:column("label"),
    classnames = names, templates = args.templates, batch_size = args.batch_size, progress = pr })
  local r = ev:compute(model)
  print(("%d images, %d classes, %d templates"):format(r.n, #names, #ev.templates))
  print(("top-1 %.4f   top-5 %.4f   mean per class %.4f"):format(r.top1, r.top5, r.mean_per_class or 0))
  print("")
  print(("%-24s %6s %9s"):format("class", "images", "accuracy"))
  for _, c in ipairs(r.per_class) do
    print(("%-24s %6d %9s"):format(c.name, c.n, c.accuracy and ("%.4f"):format(c.accuracy) or "-"))
  end
  print("")
  print("confusion (rows: true class, columns: predicted)")
  for i, row in ipairs(r.confusion) do
    local cells = {}
    for j, v in ipairs(row) do cells[j] = ("%5d"):format(v) end
    print(("%-24s %s"):format(names[i], table.concat(cells)))
  end
else
  if #args.classes < 2 or #args == 0 then
    io.stderr:write("zero_shot.lua: error: give --classes (two or more) and images, or --folder (try --help)\n")
    os.exit(2)
  end
  local w = clip.eval.zero_shot_weights(model, args.classes, args.templates, eo)
  local img = clip.eval.embedder(model):images({ table.unpack(args) }, eo)
  -- probabilities as CLIP reports them: softmax over exp(logit_scale) * cosine
  local logits = clip.cosine_similarity(img, w) * math.exp(model.logit_scale)
  for i, path in ipairs(args) do
    local row = logits:rows(i):totable()[1]
    local mx, z = -math.huge, 0
    for _, v in ipairs(row) do mx = math.max(mx, v) end
    for _, v in ipairs(row) do z = z + math.exp(v - mx) end
    local order = {}
    for c = 1, #row do order[c] = c end
    table.sort(order, function(a, b) return row[a] > row[b] or (row[a] == row[b] and a < b) end)
    local parts = {}
    for j = 1, math.min(args.top, #order) do
      local c = order[j]
      parts[j] = ("%s %.1f%%"):format(args.classes[c], 100 * math.exp(row[c] - mx) / z)
    end
    print(("%s: %s"):format(path, table.concat(parts, ", ")))
  end
end
model:close()
