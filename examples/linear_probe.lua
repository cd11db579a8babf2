-- examples/linear_probe.lua - logistic regression on frozen image features.
--
--   lua5.4 examples/linear_probe.lua --model DIR --folder photos/
-- photos/<class>/<image> is split into train/valid/test (--split, --seed); the
-- L2 strength is chosen on the validation split, the test accuracy reported.
pcall(dofile, (arg and arg[0] or ""):gsub("[^/]*$", "") .. "clip_checkout.lua") -- a checkout's lua/, build/
local clip = require "clip"
local cli, progress = require "clip.cli", require "clip.progress"

local args = cli.parse(arg, {
  name = "linear_probe.lua",
  usage = "lua5.4 examples/linear_probe.lua --model DIR --folder DIR [options]",
  description = "Linear probe: a softmax classifier trained on frozen CLIP image embeddings,\n"
    .. "with an L2 sweep on a validation split.",
  options = {
    "model", "folder",
    { "split", "FRACTIONS", "train,valid,test fractions", type = "list", default = { "0.6", "0.2", "0.2" } },
    { "l2", "LIST", "L2 strengths to try", type = "list", default = { "0", "1e-4", "1e-3", "1e-2", "1e-1", "1" } },
    { "steps", "N", "optimizer steps (full batch)", type = "integer", default = 300 },
    { "lr", "LR", "AdamW learning rate", type = "number", default = 1e-2 },
    { "seed", "N", "split seed", type = "integer", default = 0 },
    "batch-size", "quiet",
  },
})

local f = {}
for i, v in ipairs(args.split) do f[i] = tonumber(v) end
local ds = clip.data.image_folder(args.folder)
local parts = ds:split({ { "train", f[1] }, { "valid", f[2] }, { "test", f[3] } }, { seed = args.seed })
for _, s in ipairs({ "train", "valid", "test" }) do
  if parts[s]:size() == 0 then
    io.stderr:write(("linear_probe.lua: error: the %s split is empty (%d images)\n"):format(s, ds:size())); os.exit(2)
  end
end
local model = clip.load(args.model)
local emb = clip.eval.embedder(model)
local eo = { batch_size = args.batch_size, progress = (not args.quiet and progress.stderr_is_tty()) and "bar" or nil }
local X = {}
for _, s in ipairs({ "train", "valid", "test" }) do X[s] = emb:images(parts[s]:column("image"), eo) end
local grid = {}
for i, v in ipairs(args.l2) do grid[i] = tonumber(v) end
local probe = clip.eval.linear_probe(X.train, parts.train:column("label"), {
  num_classes = #ds.classes, valid_x = X.valid, valid_y = parts.valid:column("label"), l2 = grid,
  steps = args.steps, lr = args.lr })
print(("images: train %d, valid %d, test %d; %d classes; %d-dim features"):format(parts.train:size(),
  parts.valid:size(), parts.test:size(), #ds.classes, X.train:size(2)))
print("")
print(("%10s %12s"):format("l2", "valid top-1"))
for _, s in ipairs(probe.sweep) do
  print(("%10g %12.4f%s"):format(s.l2, s.valid_top1, s.l2 == probe.l2 and "  <- chosen" or ""))
end
local r = probe:evaluate(X.test, parts.test:column("label"), { classnames = ds.classes })
print("")
print(("test top-1 %.4f   mean per class %.4f"):format(r.top1, r.mean_per_class or 0))
model:close()
