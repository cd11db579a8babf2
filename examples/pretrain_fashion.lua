#!/usr/bin/env lua5.4
--- Pretrain a small CLIP from scratch on Fashion-MNIST (Debian package
-- dataset-fashion-mnist), with captions drawn from varied templates and
-- synonyms, CLIPLoss and everything trainable; save it in the Hugging Face
-- layout (loadable by clip.load and by PyTorch).
--
--   lua5.4 examples/pretrain_fashion.lua [--out models/fashion-clip] [--epochs 10]
--        [--batch 256] [--lr 2e-3] [--seed 0] [--data DIR] [--limit N] [--quiet]
local clip = require "clip"
local core = clip.core

local function usage()
  io.stderr:write([[
usage: lua5.4 examples/pretrain_fashion.lua [options]
  --out DIR       where to save the model (default models/fashion-clip)
  --data DIR      Fashion-MNIST idx files (default /usr/share/datasets/fashion-mnist)
  --epochs N      training epochs (default 10)
  --batch N       batch size (default 256)
  --lr X          peak learning rate (default 2e-3), cosine decay, 5% warmup
  --seed N        random seed (default 0): same seed, same model
  --limit N       use only the first N training images (quick runs)
  --threads N     threads (default: all cores)
  --quiet         no progress output
]])
end

local opts = { out = "models/fashion-clip", data = "/usr/share/datasets/fashion-mnist",
  epochs = 10, batch = 256, lr = 2e-3, seed = 0, quiet = false }
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    if a == "--help" or a == "-h" then usage() os.exit(0)
    elseif a == "--quiet" then opts.quiet = true
    elseif a:match("^%-%-") and arg[i + 1] then
      local k = a:sub(3)
      if opts[k] == nil and k ~= "limit" and k ~= "threads" then usage() os.exit(2) end
      local v = arg[i + 1]
      opts[k] = tonumber(v) or v
      i = i + 1
    else usage() os.exit(2) end
    i = i + 1
  end
end
if opts.threads then clip.set_num_threads(opts.threads) end

local function log(fmt, ...)
  if not opts.quiet then io.stderr:write(fmt:format(...)) end
end

-- The classes, the words used for them in training captions, and templates.
local fashion = dofile((debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./") .. "fashion_classes.lua")

-- Data ------------------------------------------------------------------------
local t0 = os.clock()
local wall0 = os.time()
local images = core.read_idx(opts.data .. "/train-images-idx3-ubyte.gz")
local labels = core.read_idx(opts.data .. "/train-labels-idx1-ubyte.gz")
local N = images:size(1)
if opts.limit then N = math.min(N, opts.limit) end
log("fashion-mnist: %d training images\n", N)

-- The model: a small ViT (28x28 images, 7x7 patches) and a small causal text
-- transformer over the real CLIP BPE vocabulary.
local config = {
  projection_dim = 64,
  logit_scale_init_value = math.log(1 / 0.07),
  text_config = { hidden_size = 64, intermediate_size = 256, num_attention_heads = 4,
    num_hidden_layers = 2, max_position_embeddings = 32, hidden_act = "quick_gelu" },
  vision_config = { hidden_size = 64, intermediate_size = 256, num_attention_heads = 4,
    num_hidden_layers = 4, image_size = 28, patch_size = 7, hidden_act = "quick_gelu" },
}
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local tokdir = here .. "../spec/fixtures/tokenizer"
local preprocessor = {
  crop_size = { height = 28, width = 28 }, size = { shortest_edge = 28 },
  do_center_crop = true, do_convert_rgb = true, do_normalize = true, do_rescale = true, do_resize = true,
  image_mean = { fashion.mean, fashion.mean, fashion.mean },
  image_std = { fashion.std, fashion.std, fashion.std },
  image_processor_type = "CLIPImageProcessor", resample = 3, rescale_factor = 1 / 255,
}
local model = clip.model.new(config, { seed = opts.seed, tokenizer_dir = tokdir, preprocessor = preprocessor })
local total_params = model:count_parameters()
log("model: %d parameters\n", total_params)

-- every training caption, tokenized once
local captions = {} -- captions[class] = list of id lists
for c = 1, 10 do
  captions[c] = {}
  for _, w in ipairs(fashion.train_words[c]) do
    for _, t in ipairs(fashion.train_templates) do
      captions[c][#captions[c] + 1] = model:tokenize((t:gsub("{}", w)))
    end
  end
end

-- Training ----------------------------------------------------------------------
math.randomseed(opts.seed)
local loss = clip.loss.CLIPLoss(model, { clamp = true, modalities = { [1] = "image", [2] = "text" } })
local opt = clip.optim.AdamW(model, { lr = opts.lr, weight_decay = 0.1 })
local steps_per_epoch = N // opts.batch
local total = steps_per_epoch * opts.epochs
local sched = clip.optim.CosineSchedule(opt, { warmup = math.max(1, total // 20), total = total })
local order = {}
for i = 1, N do order[i] = i end

local tty = require("clip.progress").stderr_is_tty()
local step = 0
local loss_points, temp_points = {}, {}
for epoch = 1, opts.epochs do
  for i = N, 2, -1 do -- Fisher-Yates, seeded
    local j = math.random(i)
    order[i], order[j] = order[j], order[i]
  end
  local sum, n = 0, 0
  for s = 1, steps_per_epoch do
    local rows, ids, flips = {}, {}, {}
    for b = 1, opts.batch do
      local r = order[(s - 1) * opts.batch + b]
      rows[b] = r
      flips[b] = math.random() < 0.5
      local caps = captions[math.tointeger(labels[r]) + 1]
      ids[b] = caps[math.random(#caps)]
    end
    local px = core.gray_pixels(images, rows, fashion.mean, fashion.std, flips)
    local v = loss:backward({ px, ids })
    if v ~= v then error(("pretrain: loss is NaN at step %d"):format(step + 1)) end
    clip.optim.clip_grad_norm(opt, 1.0)
    opt:step()
    sched:step()
    opt:zero_grad()
    step = step + 1
    sum, n = sum + v, n + 1
    if step % 10 == 0 then
      loss_points[#loss_points + 1] = { step, v }
      temp_points[#temp_points + 1] = { step, math.exp(model.logit_scale) }
    end
    -- a live line on a terminal; otherwise one line per epoch
    if not opts.quiet and ((tty and s % 20 == 0) or s == steps_per_epoch) then
      io.stderr:write(("%sepoch %d/%d  step %d/%d  loss %.4f  lr %.2e  T %.1f  %.0fs%s"):format(
        tty and "\r" or "", epoch, opts.epochs, s, steps_per_epoch, sum / n, opt.lr,
        math.exp(model.logit_scale), os.time() - wall0, tty and "" or "\n"))
    end
  end
  if tty then log("\n") end
end

-- Save ----------------------------------------------------------------------------
model:save(opts.out)
local ok, err = pcall(require("clip.chart").write, opts.out .. "/pretraining.png", {
  title = "pretraining on Fashion-MNIST (CLIPLoss)",
  panels = {
    { title = "loss", x_label = "step", series = { { name = "train loss", points = loss_points } } },
    { title = "temperature exp(logit_scale)", x_label = "step",
      series = { { name = "exp(logit_scale)", points = temp_points } } },
  },
})
if not ok then log("chart not written: %s\n", tostring(err)) end
log("saved %s and its loss chart pretraining.png (%d steps, %.0f s wall, %.0f s cpu)\n", opts.out, step, os.time() - wall0, os.clock() - t0)
