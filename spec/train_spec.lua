-- spec/train_spec.lua - losses, gradients of every parameter and optimizer
-- steps against PyTorch autograd / torch.optim (spec/fixtures/make_train.py).
-- Gradient tolerance: |g - ref| <= 2e-3 * max(max|ref| of the tensor, 1e-3 *
-- the largest |ref| over all tensors) -- the floor covers gradients that are
-- exactly zero in exact arithmetic (k_proj biases). docs/numerics.md.
local clip = require "clip"
local H = require "spec.helpers"

local FX = H.fixtures .. "train/"
local MODEL = H.fixtures .. "models/tiny-train"
local js = clip.json.decode(H.read(FX .. "train.json"))
local batch = clip.load_safetensors(FX .. "batch.safetensors")
local MOD = { modalities = { anchor = "image", positive = "text", negative = "text" } }

local function maxabs(t)
  local m = 0
  for _, v in ipairs(H.flatten(t:totable())) do m = math.max(m, math.abs(v)) end
  return m
end

local CTOR = {
  mnrl = "MultipleNegativesRankingLoss", mnrl_sym = "MultipleNegativesSymmetricRankingLoss",
  clip = "CLIPLoss", triplet = "TripletLoss", siglip = "SigLIPLoss",
}

local function make_batch(lname)
  local b = { anchor = batch.anchor_pixel_values, positive = js.batch.positive_input_ids }
  if #js.columns[lname] == 3 then b.negative = js.batch.negative_input_ids end
  return b
end

local function load(set)
  local m = clip.load(MODEL, { tokenizer = false })
  if set == "projections" then m:train_only({ "projection" }) end
  return m
end

-- projections trainable, MNRL, the mnrl batch: after one backward, the value and a
-- copy of the gradient of `name`; the gradients are zeroed again
local function mnrl_once(name)
  local m = load("projections")
  local loss = clip.loss.MultipleNegativesRankingLoss(m, MOD)
  local b = make_batch("mnrl")
  local v = loss:backward(b)
  local g = m.core:grad(name):clone()
  m:zero_grad()
  return m, loss, b, v, g
end

describe("losses and gradients vs PyTorch autograd", function()
  for _, lname in ipairs({ "mnrl", "mnrl_sym", "clip", "triplet", "siglip" }) do
    for _, set in ipairs({ "projections", "all" }) do
      it(lname .. " with " .. set .. " trainable", function()
        local model = load(set)
        local loss = clip.loss[CTOR[lname]](model, MOD)
        local b = make_batch(lname)
        local fwd = loss:forward(b)
        local v = loss:backward(b)
        assert.is_true(math.abs(v - js.loss[lname]) <= 1e-5 * math.max(1, math.abs(js.loss[lname])),
          ("%s loss %.9g, expected %.9g"):format(lname, v, js.loss[lname]))
        -- forward runs the inference kernels (packed weights), backward the training ones:
        -- the same sums in another order, so they agree to float rounding (docs/numerics.md)
        assert.is_true(math.abs(fwd - v) < 1e-6 * math.max(1, math.abs(v)),
          ("forward %.9g backward %.9g"):format(fwd, v))
        local ref = clip.load_safetensors(FX .. lname .. "_" .. set .. ".safetensors")
        local global = 0
        for k, t in pairs(ref) do if k:match("^grad%.") then global = math.max(global, maxabs(t)) end end
        local checked = 0
        for name, p in model:named_parameters() do
          local rg = ref["grad." .. name]
          if set == "projections" and not name:find("projection", 1, true) then
            assert.is_false(p.requires_grad)
            assert.is_nil(p.grad, name .. " has no gradient when frozen")
          elseif rg then
            local g = p.grad
            if g == nil then
              assert.equal(0, maxabs(rg), name .. " has no gradient")
            else
              local tol = 2e-3 * math.max(maxabs(rg), 1e-3 * global)
              H.assert_close(g, rg, { atol = tol, label = lname .. "/" .. set .. " grad " .. name })
              checked = checked + 1
            end
          end
        end
        assert.is_true(checked >= (set == "all" and 70 or 2), "checked " .. checked .. " gradients")
        if lname == "siglip" then
          H.assert_close(loss.logit_scale.grad, ref["grad.siglip.logit_scale"], { atol = 1e-4, label = "siglip t" })
          H.assert_close(loss.logit_bias.grad, ref["grad.siglip.logit_bias"], { atol = 1e-4, label = "siglip bias" })
        end
        model:close()
      end)
    end
  end

  it("keeps no activations and computes nothing below the lowest trainable block", function()
    local m = load("projections")
    assert.is_false(m.core:trainable("vision").below_projection)
    m:set_trainable("^vision_model%.encoder%.layers%.1%.", true)
    local tr = m.core:trainable("vision")
    assert.equal(2, tr.first_layer) -- 1-based: only block index 1 (0-based) is saved
    local loss = clip.loss.MultipleNegativesRankingLoss(m, MOD)
    loss:backward(make_batch("mnrl"))
    assert.is_nil(m:param("vision_model.encoder.layers.0.mlp.fc1.weight") and m.core:grad("vision_model.encoder.layers.0.mlp.fc1.weight"))
    assert.is_not_nil(m.core:grad("vision_model.encoder.layers.1.mlp.fc1.weight"))
    -- gradients of the trainable block equal those of the fully trainable run
    local ref = clip.load_safetensors(FX .. "mnrl_all.safetensors")
    local rg = ref["grad.vision_model.encoder.layers.1.mlp.fc1.weight"]
    H.assert_close(m.core:grad("vision_model.encoder.layers.1.mlp.fc1.weight"), rg,
      { atol = 2e-3 * maxabs(rg), label = "last-block grad" })
    m:close()
  end)

  it("caches frozen features: the same numbers as re-encoding, and fewer forwards", function()
    local m, loss, b, v1, g1 = mnrl_once("visual_projection.weight")
    local v2 = loss:backward(b) -- texts now come from the cache
    assert.equal(v1, v2)
    H.assert_close(m.core:grad("visual_projection.weight"), g1, { atol = 0 })
    local n = 0
    for _ in pairs(loss.cache.text) do n = n + 1 end
    assert.equal(8, n)
    m:close()
  end)

  it("scales gradients for accumulation over micro-batches", function()
    local m, loss, b, _, g = mnrl_once("text_projection.weight")
    loss:backward(b, { scale = 0.5 })
    loss:backward(b, { scale = 0.5 })
    H.assert_close(m.core:grad("text_projection.weight"), g, { atol = 1e-6 })
    m:close()
  end)

  it("cross-entropy for a classification head", function()
    local logits = clip.tensor({ { 1, 2, 3 }, { 0, 0, 5 } })
    local l, d = clip.loss.cross_entropy(logits, { 3, 1 })
    local function ce(r, y)
      local z = 0
      for _, x in ipairs(r) do z = z + math.exp(x) end
      return math.log(z) - r[y]
    end
    assert.is_true(math.abs(l - (ce({ 1, 2, 3 }, 3) + ce({ 0, 0, 5 }, 1)) / 2) < 1e-9)
    H.assert_close(d:sum(2), { 0, 0 }, { atol = 1e-7 })
  end)
end)

describe("optimizers vs torch.optim", function()
  local opt_ref
  setup(function() opt_ref = clip.load_safetensors(FX .. "optim.safetensors") end)

  local function projections() return { "visual_projection.weight", "text_projection.weight" } end

  -- MNRL on the projections, n optimizer steps (the losses before them as in cfg);
  -- after each step check(step, name, m, opt) for every projection
  local function optim_steps(cfg, n, make_opt, check)
    local m = load("projections")
    local loss = clip.loss.MultipleNegativesRankingLoss(m, MOD)
    local opt = make_opt(m)
    for step = 1, n do
      local v = loss:backward(make_batch("mnrl"))
      assert.is_true(math.abs(v - cfg.loss[step]) < 1e-5, "loss before step " .. step)
      opt:step()
      opt:zero_grad()
      for _, name in ipairs(projections()) do check(step, name, m, opt) end
    end
    m:close()
  end

  it("AdamW: two steps reproduce weights and moment buffers", function()
    local cfg = js.optim.adamw
    optim_steps(cfg, 2, function(m)
      return clip.optim.AdamW(m, { lr = cfg.lr, betas = cfg.betas, eps = cfg.eps, weight_decay = cfg.weight_decay })
    end, function(step, name, m, opt)
      local pre = ("adamw.step%d."):format(step)
      local st = opt.state[name]
      H.assert_close(m:param(name), opt_ref[pre .. name], { atol = 2e-6, label = pre .. name })
      H.assert_close(st.exp_avg, opt_ref[pre .. "exp_avg." .. name], { atol = 1e-6, rtol = 1e-3, label = "exp_avg" })
      H.assert_close(st.exp_avg_sq, opt_ref[pre .. "exp_avg_sq." .. name], { atol = 1e-8, rtol = 1e-3, label = "exp_avg_sq" })
    end)
  end)

  it("SGD with momentum: three steps", function()
    local cfg = js.optim.sgd
    optim_steps(cfg, 3, function(m)
      return clip.optim.SGD(m, { lr = cfg.lr, momentum = cfg.momentum })
    end, function(step, name, m)
      local key = ("sgd.step%d.%s"):format(step, name)
      if opt_ref[key] then H.assert_close(m:param(name), opt_ref[key], { atol = 2e-6, label = key }) end
    end)
  end)

  for _, which in ipairs({ "trainer_proj", "trainer_all" }) do
    it(which .. ": the HF Trainer loop (clip 1.0, linear schedule) gives the same loss trajectory", function()
      local cfg = js.optim[which]
      local m = load(which == "trainer_proj" and "projections" or "all")
      local loss = clip.loss.MultipleNegativesRankingLoss(m, MOD)
      local opt = clip.optim.AdamW(m, { lr = cfg.lr, weight_decay = cfg.weight_decay })
      local sched = clip.optim.LinearSchedule(opt, { warmup = cfg.warmup_steps, total = cfg.steps })
      for step = 1, cfg.steps do
        assert.is_true(math.abs(opt.lr - cfg.lr_per_step[step]) < 1e-12, "lr at step " .. step)
        local v = loss:backward(make_batch("mnrl"))
        assert.is_true(math.abs(v - cfg.loss[step]) < 2e-5 * math.max(1, cfg.loss[step]),
          ("loss at step %d: %.8g, expected %.8g"):format(step, v, cfg.loss[step]))
        local norm = clip.optim.clip_grad_norm(opt, cfg.max_grad_norm)
        assert.is_true(math.abs(norm - cfg.grad_norm[step]) < 1e-4 * cfg.grad_norm[step], "grad norm at step " .. step)
        opt:step()
        sched:step()
        opt:zero_grad()
      end
      local after = loss:forward(make_batch("mnrl"))
      assert.is_true(math.abs(after - cfg.loss_after) < 5e-5, ("final loss %.8g, expected %.8g"):format(after, cfg.loss_after))
      local prefix = which == "trainer_proj" and "trainer_proj.step6." or "trainer_all.final."
      for k, t in pairs(opt_ref) do
        if k:sub(1, #prefix) == prefix then
          local name = k:sub(#prefix + 1)
          H.assert_close(m:param(name), t, { atol = 2e-5, label = k })
        end
      end
      m:close()
    end)
  end

  it("schedules: linear with warmup and cosine follow transformers", function()
    local o = { lr = 1.0, initial_lr = 1.0 }
    local s = clip.optim.LinearSchedule(o, { warmup = 2, total = 6 })
    local got = { o.lr }
    for _ = 1, 6 do got[#got + 1] = s:step() end
    H.assert_close(got, { 0, 0.5, 1, 0.75, 0.5, 0.25, 0 }, { atol = 1e-12 })
    local o2 = { lr = 1.0, initial_lr = 1.0 }
    local c = clip.optim.CosineSchedule(o2, { warmup = 0, total = 4 })
    local g2 = { o2.lr }
    for _ = 1, 4 do g2[#g2 + 1] = c:step() end
    H.assert_close(g2, { 1, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0 }, { atol = 1e-12 })
  end)
end)

describe("saving", function()
  local tmp
  setup(function() tmp = H.tmpdir() end)
  teardown(function() os.execute("rm -rf '" .. tmp .. "'") end)

  it("writes an HF directory that loads back with the same outputs", function()
    local m = clip.load(H.fixtures .. "models/tiny")
    local ref = clip.load_safetensors(H.fixtures .. "models/tiny/reference.safetensors")
    m:param("visual_projection.weight"):scale_(2)
    local want = m:encode_images(ref.pixel_values)
    m:save(tmp .. "/hf")
    for _, f in ipairs({ "config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt" }) do
      assert.is_true(clip.core.is_file(tmp .. "/hf/" .. f), f)
    end
    local m2 = clip.load(tmp .. "/hf")
    H.assert_close(m2:encode_images(ref.pixel_values), want, { atol = 0, label = "reloaded" })
    m2:close()
    m:save(tmp .. "/st", { format = "sentence-transformers" })
    local m3 = clip.load(tmp .. "/st")
    H.assert_close(m3:encode_images(ref.pixel_values), want, { atol = 0, label = "reloaded st" })
    assert.is_true(m3.paths.sentence_transformers)
    m3:close()
    m:close()
  end)
end)

describe("losses on raw strings", function()
  it("tokenizes texts when the text tower is trainable below the projection", function()
    local m = clip.load(H.fixtures .. "models/tiny")
    local ref = clip.load_safetensors(H.fixtures .. "models/tiny/reference.safetensors")
    local loss = clip.loss.MultipleNegativesRankingLoss(m, MOD)
    local texts = { "a photo of a cat", "a dog", "a red car" }
    local v1 = loss:backward({ anchor = ref.pixel_values, positive = texts })
    local ids = {}
    for i, t in ipairs(texts) do ids[i] = m:tokenize(t) end
    m:zero_grad()
    local v2 = loss:backward({ anchor = ref.pixel_values, positive = ids })
    assert.equal(v1, v2)
    assert.is_not_nil(m.core:grad("text_model.encoder.layers.0.mlp.fc1.weight"))
    m:close()
  end)
end)

describe("checkpoints", function()
  it("a run saved at step 3 and resumed equals the straight 6-step run", function()
    local cfg = js.optim.trainer_proj
    local function run(steps_a, ckpt, steps_b)
      local m = load("projections")
      local loss = clip.loss.MultipleNegativesRankingLoss(m, MOD)
      local opt = clip.optim.AdamW(m, { lr = cfg.lr, weight_decay = 0.01 })
      local sched = clip.optim.LinearSchedule(opt, { warmup = 0, total = 6 })
      local start = 1
      if ckpt and not steps_a then
        start = clip.checkpoint.load(ckpt, { model = m, optimizer = opt, scheduler = sched }) + 1
      end
      for step = start, steps_a or steps_b do
        loss:backward(make_batch("mnrl"))
        clip.optim.clip_grad_norm(opt, 1.0)
        opt:step(); sched:step(); opt:zero_grad()
      end
      if ckpt and steps_a then clip.checkpoint.save(ckpt, { model = m, optimizer = opt, scheduler = sched, step = steps_a }) end
      return m
    end
    local tmp = H.tmpdir()
    local straight = run(6)
    run(3, tmp .. "/ck")
    local resumed = run(nil, tmp .. "/ck", 6)
    for _, name in ipairs({ "visual_projection.weight", "text_projection.weight" }) do
      H.assert_close(resumed:param(name), straight:param(name), { atol = 0, label = "resumed " .. name })
    end
    -- the saved model directory is a normal HF directory
    local m3 = clip.load(tmp .. "/ck/model", { tokenizer = false })
    m3:close()
    os.execute("rm -rf '" .. tmp .. "'")
  end)
end)
