-- spec/trainer_spec.lua - clip.Trainer on the tiny model and examples/data/pairs.csv:
-- resume equals the straight run bit for bit, early stopping, best/, the files
-- eval_every / save_every write, callbacks, and the errors for bad input.
local clip = require "clip"
local H = require "spec.helpers"

local TINY = H.fixtures .. "models/tiny"
local PAIRS = H.spec_dir .. "../examples/data/pairs.csv"
local COLS = { anchor = "image", positive = "title", negative = "title_neg" }
local MOD = { modalities = { anchor = "image", positive = "text", negative = "text" } }

local splits = clip.data.load(PAIRS, { images = { "image" } }):split_by("split")

local function model(set)
  local m = clip.load(TINY)
  m:train_only(set or { "projection" })
  return m
end

local function recall(name, ds)
  return clip.eval.RecallEvaluator({ images = ds:column("image"), texts = ds:column("title"), name = name })
end

local function opts(m, extra)
  local o = { model = m, loss = "mnrl", loss_opts = MOD, train = splits.train, columns = COLS,
    eval = { recall("valid", splits.valid) }, eval_datasets = { valid = splits.valid },
    epochs = 2, batch_size = 2, grad_accumulation = 2, lr = 1e-3, progress = false }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

local function read_jsonl(path)
  local out = {}
  for l in H.read(path):gmatch("[^\n]+") do out[#out + 1] = clip.json.decode(l) end
  return out
end

local function ls(dir)
  local t = clip.core.listdir(dir)
  return t or {}
end

describe("clip.Trainer", function()
  local tmp
  before_each(function() tmp = H.tmpdir() end)
  after_each(function() os.execute("rm -rf '" .. tmp .. "'") end)

  it("builds transformers' default AdamW: no weight decay on biases and LayerNorm weights", function()
    local m = model({ "text_model.encoder.layers.1", "projection" })
    local t = clip.Trainer(opts(m, { weight_decay = 0.1 }))
    local groups = t.optimizer.param_groups
    assert.equal(2, #groups)
    local wd = {}
    for _, g in ipairs(groups) do
      for _, p in ipairs(g.params) do wd[p.name] = g.weight_decay end
    end
    local L = "text_model.encoder.layers.1."
    assert.equal(0.1, wd[L .. "self_attn.q_proj.weight"])
    assert.equal(0.1, wd[L .. "mlp.fc1.weight"])
    assert.equal(0.1, wd["text_projection.weight"])
    assert.equal(0, wd[L .. "self_attn.q_proj.bias"])
    assert.equal(0, wd[L .. "layer_norm1.weight"])
    assert.equal(0, wd[L .. "layer_norm2.bias"])
    assert.is_nil(wd["text_model.encoder.layers.0.mlp.fc1.weight"]) -- frozen: in no group
    t:close()
  end)

  it("never deletes an earlier run in out unless told to (overwrite = true)", function()
    local out = tmp .. "/run"
    local first = clip.Trainer(opts(model(), { out = out, max_steps = 2, save_every = 1, eval_every = 1 }))
    first:fit()
    first:close()
    local before = ls(out .. "/checkpoints")
    local log = H.read(out .. "/metrics.jsonl")
    assert.equal(2, #before)
    local again = clip.Trainer(opts(model(), { out = out, max_steps = 1 }))
    local ok, err = pcall(again.fit, again)
    assert.is_false(ok)
    assert.matches("holds an earlier run", err)
    assert.matches("overwrite = true", err)
    assert.same(before, ls(out .. "/checkpoints"))
    assert.equal(log, H.read(out .. "/metrics.jsonl"))
    local over = clip.Trainer(opts(model(), { out = out, max_steps = 1, save_every = 1, eval_every = 1,
      overwrite = true }))
    over:fit()
    assert.same({ "step-1" }, ls(out .. "/checkpoints"))
    assert.equal(2, #read_jsonl(out .. "/metrics.jsonl")) -- step 0 (before) and step 1
  end)

  it("a run stopped after step 3 and resumed equals the straight 6-step run bit for bit", function()
    -- 10 rows, batch 2, accumulation 2: micro-batches 2+2+1 -> 3 steps per epoch, 6 in all,
    -- shuffled per epoch; checkpoint at step 2 (mid-epoch), interrupted at step 3
    local straight_m = model()
    local straight = clip.Trainer(opts(straight_m, { out = tmp .. "/a", eval_every = 2, save_every = 2 }))
    straight:fit()
    local resumed_m = model()
    local first = clip.Trainer(opts(resumed_m, { out = tmp .. "/b", eval_every = 2, save_every = 2,
      on_step = function(_, rec) if rec.step == 3 then error("simulated crash") end end }))
    local ok, err = pcall(first.fit, first)
    assert.is_false(ok)
    assert.matches("simulated crash", err)
    first:close()
    assert.same({ "step-2" }, ls(tmp .. "/b/checkpoints"))
    resumed_m:close()
    resumed_m = model() -- a fresh process: the base weights again
    local second = clip.Trainer(opts(resumed_m, { out = tmp .. "/b", eval_every = 2, save_every = 2, resume = true }))
    second:prepare()
    assert.equal(2, second.state.step)
    second:fit()
    for name, p in straight_m:named_parameters() do
      H.assert_close(resumed_m:param(name), p.data, { atol = 0, label = "weights " .. name })
    end
    local so, ro = straight.optimizer.state, second.optimizer.state
    for name, st in pairs(so) do
      assert.equal(st.step, ro[name].step)
      H.assert_close(ro[name].exp_avg, st.exp_avg, { atol = 0, label = "exp_avg " .. name })
      H.assert_close(ro[name].exp_avg_sq, st.exp_avg_sq, { atol = 0, label = "exp_avg_sq " .. name })
    end
    assert.equal(straight.optimizer.lr, second.optimizer.lr)
    local a, b = read_jsonl(tmp .. "/a/metrics.jsonl"), read_jsonl(tmp .. "/b/metrics.jsonl")
    assert.equal(9, #a) -- 6 steps, evaluations at 2, 4, 6
    assert.same(a, b)
    assert.equal(H.read(tmp .. "/a/metrics.csv"), H.read(tmp .. "/b/metrics.csv"))
    assert.same({ "step-2", "step-4", "step-6" }, ls(tmp .. "/b/checkpoints"))
    straight:close(); second:close()
    straight_m:close(); resumed_m:close()
  end)

  it("eval_every / save_every write the expected files; metrics.csv has the union of the keys", function()
    local m = model()
    local t = clip.Trainer(opts(m, { out = tmp .. "/r", eval_every = 3, save_every = 2, save_total_limit = 2 }))
    local summary = t:fit()
    assert.equal(6, summary.step)
    -- checkpoints at 2, 4, 6; save_total_limit keeps the last two
    assert.same({ "step-4", "step-6" }, ls(tmp .. "/r/checkpoints"))
    for _, f in ipairs({ "model", "optimizer.safetensors", "trainer_state.json" }) do
      assert.is_true(clip.core.is_file(tmp .. "/r/checkpoints/step-4/" .. f) or clip.core.is_dir(tmp .. "/r/checkpoints/step-4/" .. f), f)
    end
    local st = clip.json.decode(H.read(tmp .. "/r/checkpoints/step-4/trainer_state.json"))
    assert.same({ epoch = 2, consumed = 2, size = 10, batch_size = 2, grad_accumulation = 2, shuffle = true,
      drop_last = false }, st.data)
    assert.same({ kind = "splitmix64", seed = 42, epoch_seed = 43 }, st.rng)
    local recs = read_jsonl(tmp .. "/r/metrics.jsonl")
    local evals = {}
    for _, r in ipairs(recs) do if r.type == "eval" then evals[#evals + 1] = r.step end end
    assert.same({ 3, 6 }, evals)
    local csv = H.read(tmp .. "/r/metrics.csv")
    assert.equal("type,step,epoch,grad_norm,learning_rate,loss,train_loss,valid_Recall@1,valid_loss", csv:match("^[^\n]+"))
    local n = 0
    for _ in csv:gmatch("\n") do n = n + 1 end
    assert.equal(#recs + 1, n)
    assert.equal("\137PNG", H.read(tmp .. "/r/chart.png"):sub(1, 4))
    -- the checkpoint's model loads as a normal model
    clip.load(tmp .. "/r/checkpoints/step-6/model"):close()
    t:close(); m:close()
  end)

  it("early stopping stops after `patience` evaluations without improvement; best/ holds the best weights", function()
    local m = model()
    local evals, best_weights = {}, nil
    -- a metric that improves at the 2nd evaluation and never again
    local fake = { 0.1, 0.5, 0.4, 0.5, 0.3, 0.2 }
    local ev = setmetatable({}, { __call = function()
      evals[#evals + 1] = true
      return { valid_score = fake[#evals] }
    end })
    local t = clip.Trainer(opts(m, { eval = ev, eval_datasets = {}, epochs = 10, eval_every = 1, save_every = 1,
      out = tmp .. "/e", metric_for_best = "valid_score", early_stopping = { patience = 3 },
      on_eval = function(tr, metrics)
        if metrics.valid_score == 0.5 and not best_weights then best_weights = tr.model:param("text_projection.weight"):clone() end
      end }))
    local s = t:fit()
    -- evaluations: 0.1 (best), 0.5 (best), 0.4, 0.5 (not better), 0.3 -> 3 without improvement
    assert.equal(5, #evals)
    assert.equal(5, s.step)
    assert.is_true(s.stopped_early)
    assert.equal(2, s.best_step)
    assert.equal(0.5, s.best_value)
    local best = clip.load(tmp .. "/e/best")
    H.assert_close(best:param("text_projection.weight"), best_weights, { atol = 0, label = "best/" })
    assert.same({ step = 2, metric = "valid_score", value = 0.5, greater_is_better = true },
      clip.json.decode(H.read(tmp .. "/e/best/best.json")))
    best:close(); t:close(); m:close()
  end)

  it("calls on_step, on_eval and on_save with the documented arguments; stop() ends the run", function()
    local m = model()
    local calls = {}
    local t
    t = clip.Trainer(opts(m, { out = tmp .. "/c", eval_every = 2, save_every = 2, metric_for_best = "valid_loss",
      on_step = function(tr, rec)
        assert.equal(t, tr)
        calls[#calls + 1] = ("step %d %s"):format(rec.step, rec.type)
        assert.is_number(rec.loss); assert.is_number(rec.learning_rate); assert.is_number(rec.grad_norm)
        if rec.step == 4 then tr:stop() end
      end,
      on_eval = function(tr, metrics, rec)
        assert.equal(t, tr)
        -- the record is the one read back from its JSON line (Trainer:log): cJSON prints 15
        -- digits when they read back within one ulp, so compare with that read-back
        -- (0.8679305476126119 comes back as 0.867930547612612, on any CPU)
        assert.equal(clip.json.decode(clip.json.encode({ v = metrics.valid_loss })).v, rec.valid_loss)
        calls[#calls + 1] = ("eval %d"):format(rec.step)
      end,
      on_save = function(tr, path, info)
        assert.equal(t, tr)
        assert.is_true(clip.core.is_dir(path))
        calls[#calls + 1] = ("save %s %d %s"):format(info.kind, info.step, path:match("[^/]+$"))
      end }))
    assert.is_false(t.greater_is_better) -- inferred from "loss"
    t:fit()
    -- "save best 4" only when valid_loss went down at step 4
    if calls[9] == "save best 4 best" then table.remove(calls, 9) end
    assert.same({ "step 1 train", "step 2 train", "eval 2", "save best 2 best", "save checkpoint 2 step-2",
      "step 3 train", "step 4 train", "eval 4", "save checkpoint 4 step-4" }, calls)
    t:close(); m:close()
  end)

  it("refuses bad input with errors that name it, before anything is written", function()
    local m = model()
    local function err_of(o)
      local ok, e = pcall(clip.Trainer, o)
      assert.is_false(ok)
      return e
    end
    local e = err_of(opts(m, { loss = "contrastive-ish" }))
    assert.matches("unknown loss 'contrastive-ish'", e, 1, true)
    assert.matches("MultipleNegativesRankingLoss", e, 1, true)
    assert.matches("mnrl", e, 1, true)
    e = err_of(opts(m, { metric_for_best = "valid_recall@5" }))
    assert.matches("metric_for_best 'valid_recall@5'", e, 1, true)
    assert.matches("valid_Recall@1, valid_loss", e, 1, true)
    e = err_of(opts(m, { early_stopping = { patience = 2 } }))
    assert.matches("early_stopping needs metric_for_best", e, 1, true)
    e = err_of(opts(m, { batchsize = 4 }))
    assert.matches("unknown option 'batchsize'", e, 1, true)
    e = err_of(opts(m, { columns = { anchor = "picture", positive = "title" } }))
    assert.matches("no column 'picture'", e, 1, true)
    -- names accepted in any case, and through aliases
    assert.equal("CLIPLoss", clip.Trainer(opts(m, { loss = "cliploss", loss_opts = {} })).loss_name)
    assert.equal("MultipleNegativesRankingLoss",
      clip.Trainer(opts(m, { metric_for_best = "eval_valid_recall@1" })).loss_name)

    -- a metric no evaluator announces is refused at the first evaluation
    local ev = function() return { valid_x = 1 } end
    local t = clip.Trainer(opts(m, { eval = ev, eval_datasets = {}, metric_for_best = "valid_y", out = tmp .. "/m" }))
    local ok
    ok, e = pcall(t.fit, t)
    assert.is_false(ok)
    assert.matches("metric_for_best 'valid_y' is not a metric of this trainer; the evaluations produce: "
      .. "train_loss, valid_x", e, 1, true)
    t:close()

    -- a checkpoint of another model: the error names it; the model and out/ are untouched
    local run = tmp .. "/x"
    clip.Trainer(opts(m, { out = run, epochs = 1 })):fit()
    local before = H.read(run .. "/metrics.jsonl")
    local other = model({ "projection", "encoder.layers.1." })
    t = clip.Trainer(opts(other, { out = run, epochs = 1, resume = true }))
    local w0 = other:param("text_projection.weight"):clone()
    ok, e = pcall(t.fit, t)
    assert.is_false(ok)
    assert.matches("checkpoints/step-3 was saved with 'text_model.encoder.layers.1.self_attn.k_proj.weight' frozen; "
      .. "it is trainable here", e, 1, true)
    H.assert_close(other:param("text_projection.weight"), w0, { atol = 0, label = "untouched" })
    assert.equal(before, H.read(run .. "/metrics.jsonl"))
    assert.same({ "step-3" }, ls(run .. "/checkpoints"))
    -- different shapes: tiny-train has another vocabulary
    local tt = clip.load(H.fixtures .. "models/tiny-train", { tokenizer = false })
    tt:train_only({ "projection" })
    ok, e = pcall(clip.checkpoint.load, run .. "/checkpoints/step-3", { model = tt })
    assert.is_false(ok)
    assert.matches("checkpoints/step-3 is from another model: tensor '", e, 1, true)
    tt:close()
    -- resume = true without a checkpoint
    t = clip.Trainer(opts(m, { out = tmp .. "/none", resume = true }))
    ok, e = pcall(t.fit, t)
    assert.is_false(ok)
    assert.matches("no finished checkpoint in", e, 1, true)
    other:close(); m:close()
  end)

  it("a NaN loss stops with the step named and the weights as before it", function()
    local m = model()
    local t = clip.Trainer(opts(m, { epochs = 1, eval = {}, eval_datasets = {} }))
    t:prepare()
    local w0 = m:param("visual_projection.weight"):clone()
    local real = t.loss.backward
    t.loss.backward = function(self, batch, o)
      local v = real(self, batch, o)
      return 0 / 0
    end
    local ok, e = pcall(t.fit, t)
    assert.is_false(ok)
    assert.matches("training step 1: loss is NaN", e, 1, true)
    H.assert_close(m:param("visual_projection.weight"), w0, { atol = 0, label = "unchanged" })
    m:close()
  end)
end)
