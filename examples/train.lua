-- examples/train.lua - fine-tune CLIP on (image, title, negative title) rows, the
-- seed notebook's workflow end to end, as a command line over clip.Trainer:
-- freeze, evaluate, train (MultipleNegativesRankingLoss by default, the Hugging
-- Face Trainer defaults), evaluate every epoch (or --eval-every N steps) and
-- after, save checkpoints (--resume continues the last one), the model, a
-- metrics log and a chart.
--
--   lua5.4 examples/train.lua --model models/clip-vit-large-patch14 --data pairs.csv
--   lua5.4 examples/train.lua --help
--
-- Data parallel over MPI (the module built with `make MPI=1`; docs/distributed.md):
--   mpirun -n 2 lua5.4 examples/train.lua --distributed --model DIR --data FILE
-- Every rank runs this script: --batch-size is per rank; rank 0 prints, evaluates and
-- writes; an error on one rank is reported and ends every rank.
pcall(dofile, (arg and arg[0] or ""):gsub("[^/]*$", "") .. "clip_checkout.lua") -- a checkout's lua/, build/

local clip = require "clip"
local cli = require "clip.cli"
local data = require "clip.data"
local eval = require "clip.eval"
local progress = require "clip.progress"
local Trainer = require "clip.trainer"

local args = cli.parse(arg, {
  name = "train.lua",
  usage = "lua5.4 examples/train.lua --model DIR --data FILE [options]",
  description = "Fine-tune a CLIP model on image/title pairs (clip.Trainer; MultipleNegativesRankingLoss by default).\n"
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
    { "out", "DIR", "where the model, checkpoints, metrics.jsonl/csv and chart.png go", default = "runs/clip-finetuned" },
    { "loss", "NAME", "training loss: mnrl, mnsrl, clip, siglip, triplet, cmnrl (GradCache) or a clip.loss name",
      default = "mnrl" },
    { "mini-batch-size", "N", "GradCache: embed and backpropagate N rows at a time (any loss; cmnrl: 32)",
      type = "number" },
    { "epochs", "N", "training epochs", type = "integer", default = 2 },
    { "max-steps", "N", "stop after N optimizer steps (overrides --epochs; 0: off)", type = "integer", default = 0 },
    { "batch-size", "N", "pairs per step", type = "integer", default = 16 },
    { "grad-accumulation", "N", "micro-batches of --batch-size per optimizer step", type = "integer", default = 1 },
    { "eval-every", "N", "evaluate every N steps, or 'epoch'", default = "epoch" },
    { "save-every", "N", "checkpoint every N steps, 'epoch' or 'no' (default: as --eval-every)" },
    { "save-total-limit", "N", "keep the last N checkpoints (0: all)", type = "integer", default = 1 },
    { "resume", nil, "continue from the last checkpoint in --out", type = "flag" },
    { "overwrite", nil, "start over in an --out that holds an earlier run (deletes its checkpoints)", type = "flag" },
    { "metric-for-best", "NAME", "keep OUT/best for the best value of this metric (e.g. valid_recall@1)" },
    { "patience", "N", "early stopping: stop after N evaluations without improvement (needs --metric-for-best)",
      type = "integer", default = 0 },
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
    { "threads", "N", "threads per process (0: every CPU; with --distributed: the CPUs / the ranks on this machine)",
      type = "integer", default = 0 },
    { "distributed", nil, "data-parallel over the MPI ranks of mpirun / srun (module built with `make MPI=1`); "
      .. "--batch-size is per rank", type = "flag" },
    { "timeout", "S", "--distributed: seconds a rank waits for the others in a collective before it fails "
      .. "(default: CLIP_DIST_TIMEOUT, else 300; 0: no limit)", type = "number" },
    { "local-loss", nil, "--distributed: each rank computes the loss of its rows only (open_clip's local_loss)",
      type = "flag" },
  },
})

-- Data parallel: MPI first, so that every later failure can be reported on every rank
local dist, rank, world = clip.dist, 0, 1
if args.distributed then
  if not dist.available() then
    io.stderr:write("train.lua: error: --distributed: this build has no MPI (rebuild with `make MPI=1`; "
      .. "docs/distributed.md)\n")
    os.exit(1)
  end
  local ok, r, n = pcall(dist.init, { timeout = args.timeout })
  if not ok then io.stderr:write("train.lua: error: ", tostring(r), "\n"); os.exit(1) end
  rank, world = r, n
elseif args.timeout or args.local_loss then
  io.stderr:write("train.lua: error: --timeout and --local-loss need --distributed\n")
  os.exit(1)
end
local threads = args.threads
if threads == 0 and world > 1 then
  -- the ranks on this machine share its CPUs (OpenMPI / MPICH / Slurm name their count)
  local here = tonumber(os.getenv("OMPI_COMM_WORLD_LOCAL_SIZE") or os.getenv("MPI_LOCALNRANKS")
    or os.getenv("SLURM_NTASKS_PER_NODE") or "")
  if here then threads = math.max(1, clip.get_num_threads() // here) end
end
if threads > 0 then clip.set_num_threads(threads) end

local quiet = args.quiet or rank ~= 0
local function say(...) if not quiet then io.stdout:write(string.format(...), "\n") end end
-- an error ends the run; under MPI every rank (an error of this rank alone would
-- leave the others waiting in a collective)
local function die(msg)
  local who = world > 1 and ("rank %d/%d: "):format(rank, world) or ""
  io.stderr:write(("train.lua: %serror: %s\n"):format(who, tostring(msg))) -- one write: ranks interleave
  io.stderr:flush()
  if world > 1 then dist.abort(1) end
  os.exit(1)
end
-- the steps that can fail on one rank only run on every rank, and their error is
-- raised on every rank (clip.dist.checked)
local function everywhere(what, fn, ...)
  if world == 1 then return fn(...) end
  return dist.checked(what, fn, ...)
end
local tty = progress.stderr_is_tty() and not quiet
local enc_progress = tty and "transient" or nil

-- Model and freezing -----------------------------------------------------------

local ok, model = pcall(everywhere, "loading the model", clip.load, args.model)
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
  local ok2, ds = pcall(everywhere, "loading " .. path, data.load, path, { images = { args.image_col } })
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

local ok_l, loss_name = pcall(Trainer.resolve_loss, args.loss)
if not ok_l then die(tostring(loss_name):gsub("^clip%.Trainer: ", "")) end
local two_columns = loss_name == "CLIPLoss" or loss_name == "SigLIPLoss"
local COLS = { anchor = args.image_col, positive = args.text_col, negative = not two_columns and NEG or nil }
local MOD = { anchor = "image", positive = "text", negative = "text" }

local function every(flag, v)
  if v == nil or v == "epoch" or v == "no" then return v end
  local n = math.tointeger(tonumber(v))
  if not n or n < 1 then die(("--%s expects 'epoch' or a positive number of steps, got '%s'"):format(flag, v)) end
  return n
end

local eval_splits = {}
for _, s in ipairs({ "train", "valid" }) do
  if evaluators[s] then
    eval_splits[#eval_splits + 1] = evaluators[s].triplet
    eval_splits[#eval_splits + 1] = evaluators[s].recall
  end
end
local all_evaluators = {}
for _, s in ipairs(SPLITS) do
  all_evaluators[#all_evaluators + 1] = evaluators[s].triplet
  all_evaluators[#all_evaluators + 1] = evaluators[s].recall
end

local trainer
local per_epoch = args.eval_every == "epoch"
local function table_row(_, m, rec)
  if rec.final or rec.step == 0 or rec.train_loss == nil then return end
  local cells = {}
  for _, s in ipairs({ "train", "valid" }) do
    if splits[s] then cells[#cells + 1] = ("%14.4f"):format(m[s .. "_Recall@" .. K]) end
  end
  say("%5d  %13.4f  %15s  %s", per_epoch and rec.epoch or rec.step, rec.train_loss,
    m.valid_loss and ("%.6f"):format(m.valid_loss) or "-", table.concat(cells, "  "))
end

local ok_t, t = pcall(Trainer.new, {
  model = model, loss = loss_name,
  loss_opts = { scale = args.scale, modalities = MOD, mini_batch_size = args.mini_batch_size },
  train = splits.train, columns = COLS, eval = eval_splits,
  eval_datasets = splits.valid and { valid = splits.valid } or nil,
  epochs = args.epochs, max_steps = args.max_steps > 0 and args.max_steps or nil, batch_size = args.batch_size,
  grad_accumulation = args.grad_accumulation, lr = args.lr, weight_decay = args.weight_decay,
  warmup_steps = args.warmup, warmup_ratio = args.warmup_ratio, max_grad_norm = args.max_grad_norm,
  seed = args.seed, eval_every = every("eval-every", args.eval_every),
  save_every = every("save-every", args.save_every),
  save_total_limit = args.save_total_limit > 0 and args.save_total_limit or nil,
  out = args.out, resume = args.resume, overwrite = args.overwrite, format = args.format,
  metric_for_best = args.metric_for_best,
  early_stopping = args.patience > 0 and { patience = args.patience } or nil,
  progress = quiet and "quiet" or "auto", chart = not args.no_chart,
  distributed = args.distributed and { local_loss = args.local_loss } or nil,
  chart_title = "fine-tuning " .. (args.model:gsub("/+$", ""):match("[^/]+$") or args.model),
  on_eval = table_row,
})
if not ok_t then die(tostring(t):gsub("^clip%.Trainer: ", "")) end
trainer = t
local ok_p, perr = pcall(trainer.prepare, trainer)
if not ok_p then die(tostring(perr):gsub("^clip%.Trainer: ", "")) end
local log_path = args.out .. "/metrics.jsonl"

-- Before training: evaluate every split (a resumed run reads the step-0 record)
local before = {}
if trainer.state.step == 0 then
  local ok_b, b = pcall(trainer.evaluate, trainer, { eval = all_evaluators, losses = false })
  if not ok_b then die(tostring(b):gsub("^clip%.Trainer: ", "")) end
  before = b
else
  for _, r in ipairs(trainer.records) do
    if r.type == "eval" and r.step == 0 then
      for k, v in pairs(r) do if type(v) == "number" then before[k] = v end end
      break
    end
  end
  say("Resuming from %s (step %d)", trainer.state.resumed_from, trainer.state.step)
end
if not quiet then
  say("")
  say("Before training:")
  for _, s in ipairs(SPLITS) do
    local ta, ra = before[s .. "_cosine_accuracy"], before[s .. "_Recall@" .. K]
    say("  %-5s  triplet accuracy %s   Recall@%d %s", s, ta and ("%.4f"):format(ta) or "-", K,
      ra and ("%.4f"):format(ra) or "-")
  end
end

-- Training (clip.Trainer: the Hugging Face Trainer loop) ------------------------------------

local steps_per_epoch = trainer.state.steps_per_epoch
say("")
say("Training: %d epochs x %d steps (batch %s, lr %g, warmup %d, weight decay %g, scale %g, seed %d)",
  args.epochs, steps_per_epoch, world > 1 and ("%d per rank x %d ranks"):format(args.batch_size, world)
  or tostring(args.batch_size), args.lr, trainer.warmup, args.weight_decay, args.scale, args.seed)
local header = ("%5s  %13s  %15s  %s"):format(per_epoch and "Epoch" or "Step", "Training Loss", "Validation Loss",
  table.concat((function()
    local tt = {}
    for _, s in ipairs({ "train", "valid" }) do
      if splits[s] then tt[#tt + 1] = ("%14s"):format(s .. " Recall@" .. K) end
    end
    return tt
  end)(), "  "))
say("%s", header)

local ok_f, ferr = pcall(trainer.fit, trainer)
if not ok_f then die(tostring(ferr):gsub("^clip%.Trainer: ", "")) end

local ok_a, after = pcall(trainer.evaluate, trainer, { eval = all_evaluators, losses = false, record = { final = true } })
if not ok_a then die(tostring(after):gsub("^clip%.Trainer: ", "")) end
trainer:close()

-- Save the model and the chart (rank 0) -------------------------------------------------

local model_dir = args.out .. "/model"
local chart_path
if rank == 0 then
  local ok4, e4 = pcall(trainer.save_model, trainer, model_dir, { format = args.format })
  if not ok4 then die(e4) end
  if not args.no_chart then
    chart_path = args.out .. "/chart.png"
    local ok5, e5 = pcall(trainer.write_chart, trainer, chart_path)
    if not ok5 then die(e5) end
  end
end
if world > 1 then
  model:close()
  if rank ~= 0 then dist.finalize(); return end
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
if world > 1 then dist.finalize() else model:close() end
