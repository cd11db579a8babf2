-- examples/train.lua - fine-tune CLIP on (image, title, negative title) rows, the
-- seed notebook's workflow end to end: freeze, evaluate, train with
-- MultipleNegativesRankingLoss and the Hugging Face Trainer defaults, evaluate
-- every epoch and after, save the model, a metrics log and a chart.
--
--   lua5.4 examples/train.lua --model models/clip-vit-large-patch14 --data pairs.csv
--   lua5.4 examples/train.lua --help
pcall(dofile, (arg and arg[0] or ""):gsub("[^/]*$", "") .. "clip_checkout.lua") -- a checkout's lua/, build/

local clip = require "clip"
local cli = require "clip.cli"
local data = require "clip.data"
local eval = require "clip.eval"
local progress = require "clip.progress"
local chart = require "clip.chart"

local args = cli.parse(arg, {
  name = "train.lua",
  usage = "lua5.4 examples/train.lua --model DIR --data FILE [options]",
  description = "Fine-tune a CLIP model on image/title pairs with MultipleNegativesRankingLoss.\n"
    .. "Splits: the files given with --valid/--test, else the data's split column, else --split.\n"
    .. "Negatives: the --neg-col column, or mined with --mine (within each split).",
  options = {
    { "model", "DIR", "Hugging Face or sentence-transformers CLIP directory", required = true },
    { "data", "FILE", "CSV, TSV, JSONL or JSON rows (image paths relative to the file)", required = true },
    { "valid", "FILE", "validation rows in their own file" },
    { "test", "FILE", "test rows in their own file" },
    { "image-col", "NAME", "column of image paths", default = "image" },
    { "text-col", "NAME", "column of titles", default = "title" },
    { "neg-col", "NAME", "column of negative titles (default: title_neg, else negative)" },
    { "split-col", "NAME", "column naming each row's split (train/valid/test)", default = "split" },
    { "split", "FRACTIONS", "train,valid,test fractions when there is no split column", type = "list",
      default = { "0.7", "0.15", "0.15" } },
    { "mine", "HOW", "make the negatives: random, hardest or easiest (the seed's)", type = "choice",
      choices = { "random", "hardest", "easiest" } },
    { "out", "DIR", "where the model, metrics.jsonl and chart.png go", default = "runs/clip-finetuned" },
    { "epochs", "N", "training epochs", type = "integer", default = 2 },
    { "batch-size", "N", "pairs per step", type = "integer", default = 16 },
    { "lr", "LR", "peak learning rate (AdamW)", type = "number", default = 1e-4 },
    { "warmup", "STEPS", "linear warmup steps", type = "integer", default = 0 },
    { "warmup-ratio", "R", "warmup as a share of all steps (used when --warmup is 0)", type = "number", default = 0 },
    { "weight-decay", "WD", "AdamW weight decay", type = "number", default = 0 },
    { "scale", "S", "MultipleNegativesRankingLoss scale", type = "number", default = 20 },
    { "max-grad-norm", "N", "global gradient-norm clipping", type = "number", default = 1 },
    { "seed", "N", "seed for shuffling, splits and mining", type = "integer", default = 42 },
    { "trainable", "PATTERNS", "train parameters whose name contains one of these", type = "list",
      default = { "projection" } },
    { "train-last", "N", "also train the last N blocks of both towers and their final norms", type = "integer",
      default = 0 },
    { "train-all", nil, "train every parameter", type = "flag" },
    { "k", "K", "Recall@k to report", type = "integer", default = 1 },
    { "eval-batch-size", "N", "images/texts per forward when evaluating", type = "integer", default = 32 },
    { "format", "FMT", "saved layout", type = "choice", choices = { "hf", "sentence-transformers" }, default = "hf" },
    { "no-chart", nil, "do not write chart.png", type = "flag" },
    { "quiet", nil, "print only the before/after table", type = "flag" },
  },
})

local quiet = args.quiet
local function say(...) if not quiet then io.stdout:write(string.format(...), "\n") end end
local function die(msg) io.stderr:write("train.lua: error: ", tostring(msg), "\n"); os.exit(1) end
local tty = progress.stderr_is_tty() and not quiet
local enc_progress = tty and "transient" or nil

-- Model and freezing -----------------------------------------------------------

local ok, model = pcall(clip.load, args.model)
if not ok then die(model) end
local cfg = model.config

local function freeze()
  if args.train_all then
    for _, p in model:named_parameters() do p.requires_grad = true end
    return
  end
  model:train_only(args.trainable)
  local n = args.train_last
  if n > 0 then
    for _, tower in ipairs({ { "vision_model", cfg.vision_config.num_hidden_layers, "post_layernorm" },
      { "text_model", cfg.text_config.num_hidden_layers, "final_layer_norm" } }) do
      for i = math.max(0, tower[2] - n), tower[2] - 1 do
        model:set_trainable("^" .. tower[1] .. "%.encoder%.layers%." .. i .. "%.", true)
      end
      model:set_trainable("^" .. tower[1] .. "%." .. tower[3] .. "%.", true)
    end
  end
end
freeze()
local total, trainable = model:count_parameters()
if trainable == 0 then die("no parameter is trainable (check --trainable)") end
if not quiet then
  for name, p in model:named_parameters() do if p.requires_grad then say("Trainable: %s", name) end end
end
local function commas(n) return tostring(n):reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", "") end
say("Total parameters: %s", commas(total))
say("Trainable parameters: %s", commas(trainable))
say("Percentage of trainable parameters: %.2f%%", 100 * trainable / total)

-- Data ---------------------------------------------------------------------------

local function load(path)
  local ok2, ds = pcall(data.load, path, { images = { args.image_col } })
  if not ok2 then die(ds) end
  if not ds:has_column(args.text_col) then
    die(("%s: no column '%s' (columns: %s); use --text-col"):format(path, args.text_col, table.concat(ds.columns, ", ")))
  end
  return ds
end

local all = load(args.data)
local splits = {}
if args.valid or args.test then
  splits.train = all
  if args.valid then splits.valid = load(args.valid) end
  if args.test then splits.test = load(args.test) end
elseif all:has_column(args.split_col) then
  local by = all:split_by(args.split_col)
  splits.train = by.train
  splits.valid = by.valid or by.validation or by.dev
  splits.test = by.test
  if not splits.train then die(("%s: no row has %s = train"):format(args.data, args.split_col)) end
else
  local f = {}
  for i, v in ipairs(args.split) do f[i] = tonumber(v) or die("--split expects numbers, got " .. v) end
  splits = all:split({ { "train", f[1] or 1 }, { "valid", f[2] or 0 }, { "test", f[3] or 0 } }, { seed = args.seed })
end
local SPLITS = {}
for _, s in ipairs({ "train", "valid", "test" }) do
  if splits[s] and splits[s]:size() > 0 then SPLITS[#SPLITS + 1] = s else splits[s] = nil end
end

local NEG = args.neg_col
if not NEG then NEG = (not all:has_column("title_neg") and all:has_column("negative")) and "negative" or "title_neg" end
for _, s in ipairs(SPLITS) do
  local ds = splits[s]
  if args.mine or not ds:has_column(NEG) then
    if ds:size() < 2 then die(("the %s split has %d row; mining a negative needs two"):format(s, ds:size())) end
    local how = args.mine or "random"
    if not args.mine then say("%s: no column '%s'; mining random negatives", s, NEG) end
    local ok2, mined = pcall(data.triplets, ds, { text = args.text_col, into = NEG, strategy = how,
      seed = args.seed, unique = how == "easiest", model = how ~= "random" and model or nil })
    if not ok2 then die(mined) end
    splits[s] = mined
  end
end
say("Rows: %s", table.concat((function()
  local t = {}
  for _, s in ipairs(SPLITS) do t[#t + 1] = s .. " " .. splits[s]:size() end
  return t
end)(), ", "))

-- Evaluation ---------------------------------------------------------------------

local K = args.k
local evaluators = {}
for _, s in ipairs(SPLITS) do
  local ds = splits[s]
  evaluators[s] = {
    triplet = eval.TripletEvaluator({ anchors = ds:column(args.image_col), positives = ds:column(args.text_col),
      negatives = ds:column(NEG), name = s, batch_size = args.eval_batch_size, progress = enc_progress }),
    recall = eval.RecallEvaluator({ images = ds:column(args.image_col), texts = ds:column(args.text_col), k = K,
      name = s, batch_size = args.eval_batch_size, progress = enc_progress }),
  }
end

local function evaluate(which)
  local out = {}
  for _, s in ipairs(which or SPLITS) do
    if evaluators[s] then
      for k, v in pairs(evaluators[s].triplet(model)) do out[k] = v end
      for k, v in pairs(evaluators[s].recall(model)) do out[k] = v end
    end
  end
  return out
end

local COLS = { anchor = args.image_col, positive = args.text_col, negative = NEG }
local MOD = { modalities = { anchor = "image", positive = "text", negative = "text" } }
local loss = clip.loss.MultipleNegativesRankingLoss(model, { scale = args.scale, modalities = MOD.modalities })

-- Texts go to the loss as token ids: clip.loss tokenizes strings only on its
-- frozen-tower path, so ids work for every freezing choice.
local ids_of = {}
local function tokenized(batch)
  for _, col in ipairs({ "positive", "negative" }) do
    local t = batch[col]
    for i, s in ipairs(t) do
      local ids = ids_of[s]
      if not ids then ids = model:tokenize(s); ids_of[s] = ids end
      t[i] = ids
    end
  end
  return batch
end

local function eval_loss(ds)
  local sum, n = 0, 0
  for batch in ds:batches(args.batch_size, { columns = COLS }) do
    tokenized(batch)
    local b = #batch.anchor
    sum, n = sum + loss:forward(batch) * b, n + b
  end
  return sum / n
end

-- Logging ---------------------------------------------------------------------------

local ok3, err = clip.core.mkdir_p(args.out)
if not ok3 then die(err) end
local log_path = args.out .. "/metrics.jsonl"
local log = io.open(log_path, "w") or die(log_path .. ": cannot write")
local records = {}
local function record(r)
  records[#records + 1] = r
  log:write(clip.json.encode(r), "\n")
  log:flush()
end

local before = evaluate()
local rec0 = { type = "eval", step = 0, epoch = 0 }
for k, v in pairs(before) do rec0[k] = v end
record(rec0)
if not quiet then
  say("")
  say("Before training:")
  for _, s in ipairs(SPLITS) do
    say("  %-5s  triplet accuracy %.4f   Recall@%d %.4f", s, before[s .. "_cosine_accuracy"], K,
      before[s .. "_Recall@" .. K])
  end
end

-- Training (the Hugging Face Trainer loop) ---------------------------------------------

local train = splits.train
local bs = args.batch_size
local steps_per_epoch = train:num_batches(bs)
local total_steps = steps_per_epoch * args.epochs
local warmup = args.warmup > 0 and args.warmup or math.ceil(args.warmup_ratio * total_steps)
local opt = clip.optim.AdamW(model, { lr = args.lr, weight_decay = args.weight_decay })
local sched = clip.optim.LinearSchedule(opt, { warmup = warmup, total = total_steps })

say("")
say("Training: %d epochs x %d steps (batch %d, lr %g, warmup %d, weight decay %g, scale %g, seed %d)",
  args.epochs, steps_per_epoch, bs, args.lr, warmup, args.weight_decay, args.scale, args.seed)
local header = ("%5s  %13s  %15s  %s"):format("Epoch", "Training Loss", "Validation Loss",
  table.concat((function()
    local t = {}
    for _, s in ipairs({ "train", "valid" }) do
      if splits[s] then t[#t + 1] = ("%14s"):format(s .. " Recall@" .. K) end
    end
    return t
  end)(), "  "))
say("%s", header)

local step = 0
local t_start = progress.clock()
for epoch = 1, args.epochs do
  local bar = progress.new({ total = steps_per_epoch, label = ("epoch %d/%d"):format(epoch, args.epochs),
    unit = "step", mode = quiet and "quiet" or (tty and "bar" or "lines") })
  local ep_sum, ep_n = 0, 0
  for batch in train:batches(bs, { shuffle = true, seed = args.seed + epoch - 1, columns = COLS }) do
    step = step + 1
    local lr = opt.lr
    local v = loss:backward(tokenized(batch))
    local gn = clip.optim.clip_grad_norm(opt, args.max_grad_norm)
    opt:step()
    sched:step()
    opt:zero_grad()
    ep_sum, ep_n = ep_sum + v, ep_n + 1
    record({ type = "train", step = step, epoch = step / steps_per_epoch, loss = v, learning_rate = lr,
      grad_norm = gn })
    bar:advance(1, ("loss %.4f"):format(v))
  end
  local m = evaluate({ "train", "valid" })
  local vloss = splits.valid and eval_loss(splits.valid) or nil
  local r = { type = "eval", step = step, epoch = epoch, train_loss = ep_sum / ep_n, valid_loss = vloss }
  for k, v in pairs(m) do r[k] = v end
  record(r)
  bar:finish(("epoch %d/%d: %d steps, loss %.4f%s, %.1fs"):format(epoch, args.epochs, ep_n, ep_sum / ep_n,
    vloss and (", valid loss %.4f"):format(vloss) or "", progress.clock() - t_start))
  local cells = {}
  for _, s in ipairs({ "train", "valid" }) do
    if splits[s] then cells[#cells + 1] = ("%14.4f"):format(m[s .. "_Recall@" .. K]) end
  end
  say("%5d  %13.4f  %15s  %s", epoch, ep_sum / ep_n, vloss and ("%.6f"):format(vloss) or "-",
    table.concat(cells, "  "))
end

local after = evaluate()
local recN = { type = "eval", step = step, epoch = args.epochs, final = true }
for k, v in pairs(after) do recN[k] = v end
record(recN)
log:close()

-- Save the model and the chart ----------------------------------------------------------

local model_dir = args.out .. "/model"
local ok4, e4 = pcall(model.save, model, model_dir, { format = args.format })
if not ok4 then die(e4) end

local chart_path
if not args.no_chart then
  local loss_pts, vloss_pts, metric_series = {}, {}, {}
  local order = {}
  for _, r in ipairs(records) do
    if r.type == "train" then loss_pts[#loss_pts + 1] = { r.step, r.loss } end
    if r.type == "eval" and r.valid_loss then vloss_pts[#vloss_pts + 1] = { r.step, r.valid_loss } end
    if r.type == "eval" then
      for _, s in ipairs(SPLITS) do
        for _, key in ipairs({ s .. "_Recall@" .. K, s .. "_cosine_accuracy" }) do
          if r[key] then
            if not metric_series[key] then metric_series[key] = {}; order[#order + 1] = key end
            local pts = metric_series[key]
            if not (r.final and pts[#pts] and pts[#pts][1] == r.step) then pts[#pts + 1] = { r.step, r[key] } end
          end
        end
      end
    end
  end
  local series = {}
  for _, key in ipairs(order) do
    series[#series + 1] = { name = key:gsub("_cosine_accuracy", " triplet acc"):gsub("_", " "), points = metric_series[key] }
  end
  local loss_series = { { name = "train loss", points = loss_pts } }
  if #vloss_pts > 0 then loss_series[2] = { name = "valid loss", points = vloss_pts } end
  chart_path = args.out .. "/chart.png"
  local ok5, e5 = pcall(chart.write, chart_path, {
    title = "fine-tuning " .. (args.model:gsub("/+$", ""):match("[^/]+$") or args.model),
    panels = {
      { title = "loss", x_label = "step", series = loss_series },
      { title = "metrics", x_label = "step", y_min = 0, y_max = 1, legend = "bottom", series = series },
    },
  })
  if not ok5 then die(e5) end
end

-- The before/after table -------------------------------------------------------------

local function cell(t, key) return t[key] and ("%.4f"):format(t[key]) or "-" end
print("")
print((("%-6s %5s   %-17s   %-17s"):format("", "", "triplet accuracy", "Recall@" .. K):gsub("%s+$", "")))
print(("%-6s %5s   %8s %8s   %8s %8s"):format("split", "rows", "before", "after", "before", "after"))
for _, s in ipairs(SPLITS) do
  print(("%-6s %5d   %8s %8s   %8s %8s"):format(s, splits[s]:size(),
    cell(before, s .. "_cosine_accuracy"), cell(after, s .. "_cosine_accuracy"),
    cell(before, s .. "_Recall@" .. K), cell(after, s .. "_Recall@" .. K)))
end
say("")
say("model:   %s", model_dir)
say("metrics: %s", log_path)
if chart_path then say("chart:   %s", chart_path) end
model:close()
