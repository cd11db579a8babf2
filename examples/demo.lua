#!/usr/bin/env lua5.4
--- The out-of-the-box demo (`make demo`): pretrain a small CLIP on
-- Fashion-MNIST (or reuse the cached one), then run the everyday workflow on
-- it with the same example scripts a user runs on their own data:
-- zero-shot with prompts never seen in training, few-shot, a linear probe,
-- fine-tuning the projections on product titles (before/after table), and a
-- text search over the test images.
--
--   lua5.4 examples/demo.lua [--retrain] [--models DIR] [--epochs N] [--quiet]
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local root = here .. "../"

local opts = { models = "models", epochs = nil, retrain = false, quiet = false }
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    if a == "--retrain" then opts.retrain = true
    elseif a == "--quiet" then opts.quiet = true
    elseif a == "--models" then opts.models = arg[i + 1]; i = i + 1
    elseif a == "--epochs" then opts.epochs = arg[i + 1]; i = i + 1
    else
      io.stderr:write("usage: lua5.4 examples/demo.lua [--retrain] [--models DIR] [--epochs N] [--quiet]\n")
      os.exit(a == "--help" and 0 or 2)
    end
    i = i + 1
  end
end

local model = opts.models .. "/fashion-clip"
local data = opts.models .. "/fashion-data"
local runs = opts.models .. "/demo-runs"
local lua = arg[-1] or "lua5.4"
local q = opts.quiet and " --quiet" or ""

local function exists(p)
  local f = io.open(p, "rb")
  if f then f:close() return true end
  return false
end

local function sh(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function step(title, cmd)
  io.stdout:write(("\n== %s\n$ %s\n"):format(title, cmd))
  io.stdout:flush()
  local t0 = os.time()
  local ok = os.execute(cmd)
  if not ok then
    io.stderr:write(("demo: step failed: %s\n"):format(title))
    os.exit(1)
  end
  io.stdout:write(("(%ds)\n"):format(os.time() - t0))
end

local t_start = os.time()
io.stdout:write("clip demo: a small CLIP trained from scratch on Fashion-MNIST, then the whole workflow on it\n")

if opts.retrain or not exists(model .. "/model.safetensors") then
  step("pretrain a small CLIP on Fashion-MNIST (60,000 images, CLIPLoss, everything trainable)",
    ("%s %sexamples/pretrain_fashion.lua --out %s%s%s"):format(lua, root, sh(model),
      opts.epochs and (" --epochs " .. opts.epochs) or "", q))
else
  io.stdout:write(("\n== reuse the pretrained model in %s (--retrain to train again)\n"):format(model))
end

if not exists(data .. "/titles.csv") then
  step("export the Fashion-MNIST test set as image folders, and a product-title dataset",
    ("%s %sexamples/fashion_export.lua --out %s"):format(lua, root, sh(data)))
end

local fashion = dofile(here .. "fashion_classes.lua")
local classes = table.concat(fashion.names, ",")
local templates = data .. "/eval_templates.txt"
do
  local f = assert(io.open(templates, "w"))
  f:write(table.concat(fashion.eval_templates, "\n"), "\n")
  f:close()
end

step("zero-shot classification of the 10,000 test images, with prompts never used in training",
  ("%s %sexamples/zero_shot.lua --model %s --folder %s --classes %s --templates @%s --batch-size 500%s"):format(
    lua, root, sh(model), sh(data .. "/test"), sh(classes), sh(templates), q))

step("few-shot: 10 labelled examples per class, nearest class prototype",
  ("%s %sexamples/few_shot.lua --model %s --folder %s --k 10 --batch-size 500%s"):format(
    lua, root, sh(model), sh(data .. "/test"), q))

step("linear probe on frozen image embeddings (L2 sweep on a validation split)",
  ("%s %sexamples/linear_probe.lua --model %s --folder %s --batch-size 500%s"):format(
    lua, root, sh(model), sh(data .. "/test"), q))

step("fine-tune the projections on product titles that use the shop's own line names, words pretraining never saw (negative: another line, same shade)",
  ("%s %sexamples/train.lua --model %s --data %s --out %s --overwrite --epochs 4 --batch-size 16 --lr 2e-2%s"):format(
    lua, root, sh(model), sh(data .. "/titles.csv"), sh(runs .. "/titles"), q))

step("text search over the test images",
  ("%s %sexamples/image_search.lua index %s --model %s --out %s --batch-size 500%s && %s %sexamples/image_search.lua query --model %s --index %s --text %s --k 5"):format(
    lua, root, sh(data .. "/test"), sh(model), sh(runs .. "/test.index"), q,
    lua, root, sh(model), sh(runs .. "/test.index"), sh("a pair of running shoes")))

io.stdout:write(("\ndemo finished in %d s\ncharts: %s/pretraining.png (pretraining loss), %s/titles/chart.png (fine-tuning)\n")
  :format(os.time() - t_start, model, runs))
