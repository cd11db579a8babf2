-- examples/few_shot.lua - k-shot classification with class prototypes.
--
--   lua5.4 examples/few_shot.lua --model DIR --folder photos/ --k 5
-- photos/<class>/<image>: k images per class (chosen with --seed) are the
-- examples; each class's prototype is the mean of their normalized
-- embeddings; every other image is classified by its nearest prototype.
pcall(dofile, (arg and arg[0] or ""):gsub("[^/]*$", "") .. "clip_checkout.lua") -- a checkout's lua/, build/
local clip = require "clip"
local cli, progress = require "clip.cli", require "clip.progress"

local args = cli.parse(arg, {
  name = "few_shot.lua",
  usage = "lua5.4 examples/few_shot.lua --model DIR --folder DIR [--k N] [--seed N]",
  description = "Few-shot classification: k examples per class, nearest class prototype.",
  options = {
    "model", "folder",
    { "k", "N", "examples per class", type = "integer", default = 5 },
    { "seed", "N", "which examples are chosen", type = "integer", default = 0 },
    "batch-size", "quiet",
  },
})

local ds = clip.data.image_folder(args.folder)
local support, query = ds:k_shot(args.k, { label = "label", seed = args.seed })
if query:size() == 0 then
  io.stderr:write("few_shot.lua: error: every image went to the examples; lower --k\n"); os.exit(2)
end
local model = clip.load(args.model)
local ev = clip.eval.FewShotEvaluator({ support_images = support:column("image"),
  support_labels = support:column("label"), query_images = query:column("image"),
  query_labels = query:column("label"), classnames = ds.classes, batch_size = args.batch_size,
  progress = (not args.quiet and progress.stderr_is_tty()) and "bar" or nil })
local r = ev:compute(model)
print(("%d-shot: %d examples, %d queries, %d classes"):format(args.k, support:size(), query:size(), #ds.classes))
print(("top-1 %.4f   top-5 %.4f   mean per class %.4f"):format(r.top1, r.top5, r.mean_per_class or 0))
print("")
print(("%-24s %8s %8s %9s"):format("class", "examples", "queries", "accuracy"))
for c, pc in ipairs(r.per_class) do
  print(("%-24s %8d %8d %9s"):format(pc.name, r.support_counts[c], pc.n,
    pc.accuracy and ("%.4f"):format(pc.accuracy) or "-"))
end
model:close()
