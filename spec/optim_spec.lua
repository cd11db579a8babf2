-- spec/optim_spec.lua - parameter groups of clip.optim against torch.optim
-- (spec/fixtures/make_optim.py: AdamW, SGD with momentum and AdamW under a
-- LambdaLR linear schedule, two groups with their own options, 3 steps on
-- fixed tensors and gradients), the Hugging Face Trainer's decay / no-decay
-- split, and group state through state_dict / load_state_dict.
-- Tolerances as the single-group AdamW check in train_spec.lua: weights atol
-- 2e-6; exp_avg (and SGD's momentum_buffer) atol 1e-6 rtol 1e-3; exp_avg_sq
-- atol 1e-8 rtol 1e-3.
local clip = require "clip"
local H = require "spec.helpers"

local FX = H.fixtures .. "optim/"
local js = clip.json.decode(H.read(FX .. "groups.json"))
local ref = clip.load_safetensors(FX .. "groups.safetensors")

local TOL = {
  weight = { atol = 2e-6 },
  exp_avg = { atol = 1e-6, rtol = 1e-3 },
  momentum_buffer = { atol = 1e-6, rtol = 1e-3 },
  exp_avg_sq = { atol = 1e-8, rtol = 1e-3 },
}

local function close(a, e, tol, label)
  H.assert_close(a, e, { atol = tol.atol, rtol = tol.rtol, label = label })
end

-- Parameter-like tables holding copies of the fixture's initial values
local function fresh_params()
  local P = {}
  for _, name in ipairs(js.params) do
    P[name] = { name = name, data = ref["init." .. name]:clone(), requires_grad = true }
  end
  return P
end

local function set_grads(P, step)
  for _, name in ipairs(js.params) do P[name].grad = ref[("grad.step%d.%s"):format(step, name)]:clone() end
end

-- the run's groups, as the script gave them to torch
local function build(run, P)
  local groups = {}
  for i, g in ipairs(run.groups) do
    local grp = {}
    for k, v in pairs(g) do grp[k] = v end
    grp.params = {}
    for j, name in ipairs(g.params) do grp.params[j] = P[name] end
    groups[i] = grp
  end
  return clip.optim[run.kind](groups, run.defaults)
end

describe("parameter groups vs torch.optim", function()
  for _, which in ipairs({ "adamw", "sgd", "adamw_linear" }) do
    it(which .. ": two groups, three steps reproduce weights and state buffers", function()
      local run = js.runs[which]
      local P = fresh_params()
      local opt = build(run, P)
      assert.equal(#run.groups, #opt.param_groups)
      -- every option resolved as torch resolved it (own value, else the default)
      for i, want in ipairs(run.resolved_groups) do
        for k, v in pairs(want) do
          if type(v) == "table" then
            H.assert_close(opt.param_groups[i][k], v, { atol = 0, label = which .. " group " .. i .. " " .. k })
          else
            assert.equal(v, opt.param_groups[i][k], which .. " group " .. i .. " " .. k)
          end
        end
      end
      local sched
      if run.schedule then
        sched = clip.optim.LinearSchedule(opt, { warmup = run.schedule.warmup, total = run.schedule.total })
      end
      for step = 1, js.steps do
        for i, lr in ipairs(run.lr_per_step[step]) do
          assert.is_true(math.abs(opt.param_groups[i].lr - lr) < 1e-15, ("lr of group %d at step %d"):format(i, step))
        end
        set_grads(P, step)
        opt:step()
        if sched then sched:step() end
        for _, name in ipairs(js.params) do
          local pre = ("%s.step%d."):format(which, step)
          close(P[name].data, ref[pre .. name], TOL.weight, pre .. name)
          for _, buf in ipairs({ "exp_avg", "exp_avg_sq", "momentum_buffer" }) do
            local want = ref[pre .. buf .. "." .. name]
            if want then close(opt.state[name][buf], want, TOL[buf], pre .. buf .. "." .. name) end
          end
        end
      end
    end)
  end

  it("the fixture holds what the specs read", function()
    for _, which in ipairs({ "adamw", "adamw_linear" }) do
      for _, name in ipairs(js.params) do
        assert.is_not_nil(ref[("%s.step3.exp_avg_sq.%s"):format(which, name)])
      end
    end
    for _, name in ipairs(js.params) do assert.is_not_nil(ref["sgd.step3.momentum_buffer." .. name]) end
  end)
end)

describe("parameter groups", function()
  local function param(name, vals)
    return { name = name, data = clip.tensor(vals), grad = clip.tensor(vals), requires_grad = true }
  end

  it("a plain source is one group with the defaults; opt.lr reads group 1 and sets all", function()
    local a, b = param("a", { 1, 2 }), param("b", { 3 })
    local opt = clip.optim.AdamW({ a, b })
    assert.equal(1, #opt.param_groups)
    local g = opt.param_groups[1]
    assert.equal(1e-3, g.lr)
    assert.equal(0.01, g.weight_decay)
    assert.equal(1e-8, g.eps)
    assert.same({ 0.9, 0.999 }, g.betas)
    assert.equal(1e-3, g.initial_lr)
    assert.equal(0.01, opt.weight_decay)
    local two = clip.optim.SGD({ { params = { a }, lr = 0.5 }, { params = { b } } }, { lr = 0.1, momentum = 0.9 })
    assert.equal(0.5, two.lr)
    assert.same({ 0.5, 0.1 }, two:get_lr())
    assert.equal(0.9, two.param_groups[2].momentum)
    two.lr = 0.25
    assert.same({ 0.25, 0.25 }, two:get_lr())
    assert.equal(2, #two:parameters())
  end)

  it("refuses a parameter in two groups, a list mixing groups and parameters, bad options", function()
    local a, b = param("a", { 1 }), param("b", { 2 })
    assert.has_error(function() clip.optim.AdamW({ { params = { a } }, { params = { a, b } } }) end,
      "AdamW: parameter 'a' is in more than one group")
    assert.has_error(function() clip.optim.AdamW({ { params = { a } }, b }) end)
    assert.has_error(function() clip.optim.AdamW({ { params = { a }, lr = -1 } }) end)
    assert.has_error(function() clip.optim.AdamW({ a }, { betas = { 1, 0.9 } }) end)
  end)

  it("add_param_group inherits the defaults", function()
    local a, b = param("a", { 1 }), param("b", { 2 })
    local opt = clip.optim.AdamW({ a }, { lr = 0.1, weight_decay = 0.2 })
    local g = opt:add_param_group({ params = { b }, weight_decay = 0 })
    assert.equal(0.1, g.lr)
    assert.equal(0, g.weight_decay)
    assert.equal(2, #opt.param_groups)
  end)

  it("clip_grad_norm is global over every group", function()
    local a, b = param("a", { 3, 0 }), param("b", { 4 })
    local opt = clip.optim.AdamW({ { params = { a }, lr = 1 }, { params = { b }, lr = 2 } })
    local norm = clip.optim.clip_grad_norm(opt, 1.0)
    assert.is_true(math.abs(norm - 5) < 1e-6)
    local c = 1 / (5 + 1e-6)
    H.assert_close(a.grad, { 3 * c, 0 }, { atol = 1e-7 })
    H.assert_close(b.grad, { 4 * c }, { atol = 1e-7 })
  end)

  it("schedules scale each group's initial lr by the same factor (LambdaLR)", function()
    local a, b = param("a", { 1 }), param("b", { 2 })
    local opt = clip.optim.AdamW({ { params = { a }, lr = 1.0 }, { params = { b }, lr = 0.25 } })
    local s = clip.optim.LinearSchedule(opt, { warmup = 2, total = 6 })
    local got = { s:get_last_lr() }
    for _ = 1, 6 do s:step(); got[#got + 1] = s:get_last_lr() end
    local f = { 0, 0.5, 1, 0.75, 0.5, 0.25, 0 }
    for k = 1, 7 do H.assert_close(got[k], { f[k], 0.25 * f[k] }, { atol = 1e-15, label = "step " .. (k - 1) }) end
    assert.same({ 1.0, 0.25 }, s.base_lrs)
    local c = clip.optim.CosineSchedule(clip.optim.SGD({ { params = { a }, lr = 2 }, { params = { b }, lr = 1 } }),
      { total = 4 })
    c:step()
    local f1 = 0.5 * (1 + math.cos(math.pi / 4))
    H.assert_close(c:get_last_lr(), { 2 * f1, f1 }, { atol = 1e-15 })
  end)

  -- state through state_dict / load_state_dict and a JSON round trip, as
  -- clip.checkpoint writes it
  local function roundtrip(opt, sched)
    local tensors, meta = opt:state_dict()
    local tmp = H.tmpdir()
    clip.save_safetensors(tmp .. "/o.safetensors", tensors)
    local t2 = clip.load_safetensors(tmp .. "/o.safetensors")
    local m2 = clip.json.decode(clip.json.encode(meta))
    local s2 = sched and clip.json.decode(clip.json.encode(sched:state_dict()))
    os.execute("rm -rf '" .. tmp .. "'")
    return t2, m2, s2
  end

  it("group state resumes exactly (AdamW, linear schedule, 3 + 3 steps)", function()
    local run = js.runs.adamw_linear
    local function start()
      local P = fresh_params()
      local opt = build(run, P)
      local sched = clip.optim.LinearSchedule(opt, { warmup = 1, total = 6 })
      return P, opt, sched
    end
    local function steps(P, opt, sched, a, b)
      for k = a, b do
        set_grads(P, (k - 1) % 3 + 1)
        opt:step(); sched:step()
      end
    end
    local P1, o1, s1 = start()
    steps(P1, o1, s1, 1, 6)
    local P2, o2, s2 = start()
    steps(P2, o2, s2, 1, 3)
    local t, meta, smeta = roundtrip(o2, s2)
    assert.equal(2, #meta.groups)
    assert.same({ "enc.fc.weight", "head.weight" }, meta.groups[1].params)
    assert.equal(0.1, meta.groups[1].weight_decay)
    local P3, o3, s3 = start()
    for _, name in ipairs(js.params) do P3[name].data:copy(P2[name].data) end
    o3:load_state_dict(t, meta)
    s3:load_state_dict(smeta)
    assert.same(o2:get_lr(), o3:get_lr())
    steps(P3, o3, s3, 4, 6)
    for _, name in ipairs(js.params) do
      H.assert_close(P3[name].data, P1[name].data, { atol = 0, label = "resumed " .. name })
    end
    assert.same(o1:get_lr(), o3:get_lr())
  end)

  it("a state saved before groups (no meta.groups) loads into one group, not into two", function()
    local a = param("a", { 1, 2 })
    local opt = clip.optim.AdamW({ a }, { lr = 0.5 })
    opt:step()
    local t, meta = roundtrip(opt)
    meta.groups = nil -- the format of earlier checkpoints
    local fresh = clip.optim.AdamW({ param("a", { 1, 2 }) }, { lr = 0.1 })
    fresh:load_state_dict(t, meta)
    assert.equal(0.5, fresh.lr)
    assert.equal(1, fresh.state.a.step)
    local s = clip.optim.LinearSchedule(fresh, { total = 4 })
    s:load_state_dict({ last_step = 1, base_lr = 0.5, warmup = 0, total = 4 })
    assert.equal(0.375, fresh.lr)
    local two = clip.optim.AdamW({ { params = { param("a", { 1, 2 }) } }, { params = { param("b", { 1 }) } } })
    assert.has_error(function() two:load_state_dict(t, meta) end)
  end)
end)

describe("the Hugging Face Trainer's decay split", function()
  -- transformers' get_decay_parameter_names on CLIPModel: every parameter but
  -- the biases and the LayerNorm parameters decays (logit_scale,
  -- class_embedding and the embeddings included).
  local function no_decay_names(L)
    local out = {}
    for _, tower in ipairs({ "text_model", "vision_model" }) do
      if tower == "vision_model" then
        out[#out + 1] = "vision_model.pre_layrnorm.weight"
        out[#out + 1] = "vision_model.pre_layrnorm.bias"
      end
      for l = 0, L - 1 do
        local p = ("%s.encoder.layers.%d."):format(tower, l)
        for _, n in ipairs({ "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.q_proj.bias",
          "self_attn.out_proj.bias", "layer_norm1.weight", "layer_norm1.bias", "mlp.fc1.bias", "mlp.fc2.bias",
          "layer_norm2.weight", "layer_norm2.bias" }) do
          out[#out + 1] = p .. n
        end
      end
      if tower == "text_model" then
        out[#out + 1] = "text_model.final_layer_norm.weight"
        out[#out + 1] = "text_model.final_layer_norm.bias"
      else
        out[#out + 1] = "vision_model.post_layernorm.weight"
        out[#out + 1] = "vision_model.post_layernorm.bias"
      end
    end
    return out
  end

  local function names(list)
    local out = {}
    for i, p in ipairs(list) do out[i] = p.name end
    return out
  end

  it("puts exactly the biases and LayerNorm parameters of tiny in the no-decay group", function()
    local m = clip.load(H.fixtures .. "models/tiny", { tokenizer = false })
    local groups = clip.optim.param_groups(m, { weight_decay = 0.01 })
    assert.equal(2, #groups)
    assert.equal("decay", groups[1].name)
    assert.equal(0.01, groups[1].weight_decay)
    assert.equal("no_decay", groups[2].name)
    assert.equal(0, groups[2].weight_decay)
    local want = no_decay_names(2)
    assert.equal(46, #want)
    assert.same(want, names(groups[2].params)) -- in named_parameters order
    local decay = names(groups[1].params)
    local expect_decay = {}
    for name in m:named_parameters() do
      if not clip.optim.no_decay(name) then expect_decay[#expect_decay + 1] = name end
    end
    assert.same(expect_decay, decay)
    for _, n in ipairs({ "logit_scale", "vision_model.embeddings.class_embedding", "text_projection.weight",
      "text_model.embeddings.token_embedding.weight", "vision_model.embeddings.patch_embedding.weight",
      "text_model.encoder.layers.1.mlp.fc2.weight" }) do
      assert.is_truthy(table.concat(decay, " "):find(n, 1, true), n)
    end
    local total = 0
    for _ in m:named_parameters() do total = total + 1 end
    assert.equal(total, #decay + #want)
    -- the optimizer built from them keeps each group's weight decay
    local opt = clip.optim.AdamW(groups, { lr = 5e-5 })
    assert.same({ 0.01, 0 }, { opt.param_groups[1].weight_decay, opt.param_groups[2].weight_decay })
    assert.same({ 5e-5, 5e-5 }, opt:get_lr())
    m:close()
  end)

  it("takes only trainable parameters (as the Trainer); empty groups step", function()
    local m = clip.load(H.fixtures .. "models/tiny", { tokenizer = false })
    m:train_only({ "projection", "post_layernorm" })
    local groups = clip.optim.param_groups(m, { weight_decay = 0.1, lr = 1e-3 })
    assert.same({ "visual_projection.weight", "text_projection.weight" }, names(groups[1].params))
    assert.same({ "vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias" }, names(groups[2].params))
    assert.equal(1e-3, groups[1].lr)
    local all = clip.optim.param_groups(m, { trainable_only = false })
    assert.equal(46, #all[2].params)
    m:train_only({ "projection" })
    local opt = clip.optim.AdamW(clip.optim.param_groups(m, { weight_decay = 0.1 }))
    assert.equal(0, #opt.param_groups[2].params)
    opt:step() -- no gradients yet: nothing moves, nothing fails
    -- zero_grad sets the model's gradients back to None, as AdamW(model) does
    m.core:grad("text_projection.weight", true)
    assert.is_not_nil(m:param("text_projection.weight") and m.core:grad("text_projection.weight"))
    opt:zero_grad()
    assert.is_nil(m.core:grad("text_projection.weight"))
    m:close()
  end)

  it("no_decay follows transformers' rule on names", function()
    for name, want in pairs({
      ["a.bias"] = true, ["x.layer_norm1.weight"] = true, ["x.pre_layrnorm.weight"] = true,
      ["x.post_layernorm.weight"] = true, ["text_model.final_layer_norm.weight"] = true,
      ["loss.logit_bias"] = true, ["logit_scale"] = false, ["x.mlp.fc1.weight"] = false,
      ["x.norm.weight"] = true, ["x.normal.weight"] = false, ["visual_projection.weight"] = false,
    }) do
      assert.equal(want, clip.optim.no_decay(name), name)
    end
  end)
end)

describe("clip.checkpoint with parameter groups", function()
  local function run(ckpt, from, to, opt_kind)
    local m = clip.load(H.fixtures .. "models/tiny", { tokenizer = false })
    m:train_only({ "projection", "post_layernorm" })
    local opt = clip.optim.AdamW(clip.optim.param_groups(m, { weight_decay = 0.1 }), { lr = 1e-2 })
    if opt_kind == "one" then opt = clip.optim.AdamW(m, { lr = 1e-2 }) end
    local sched = clip.optim.LinearSchedule(opt, { warmup = 1, total = 5 })
    if from > 1 then
      assert.equal(from - 1, clip.checkpoint.load(ckpt, { model = m, optimizer = opt, scheduler = sched }))
    end
    for step = from, to do
      for k, p in ipairs(m:parameters(true)) do
        m.core:grad(p.name, true):fill(0.01 * k * (step % 3 + 1))
      end
      opt:step(); sched:step(); opt:zero_grad()
    end
    if ckpt and from == 1 then clip.checkpoint.save(ckpt, { model = m, optimizer = opt, scheduler = sched, step = to }) end
    return m, opt
  end

  it("a two-group run saved at step 2 and resumed equals the straight 4-step run", function()
    local tmp = H.tmpdir()
    local straight, o1 = run(nil, 1, 4)
    run(tmp .. "/ck", 1, 2)
    local st = clip.json.decode(H.read(tmp .. "/ck/trainer_state.json"))
    assert.equal(2, #st.optimizer.groups)
    assert.same({ "vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias" }, st.optimizer.groups[2].params)
    assert.same({ 1e-2, 1e-2 }, st.scheduler.base_lrs)
    local resumed, o2 = run(tmp .. "/ck", 3, 4)
    for _, p in ipairs(straight:parameters(true)) do
      H.assert_close(resumed:param(p.name), p.data, { atol = 0, label = "resumed " .. p.name })
    end
    assert.same(o1:get_lr(), o2:get_lr())
    -- a two-group checkpoint does not load into a one-group optimizer
    assert.has_error(function() run(tmp .. "/ck", 3, 3, "one") end)
    -- a checkpoint written before groups (no groups, no base_lrs) loads into one group
    st.optimizer.groups, st.scheduler.base_lrs = nil, nil
    assert(clip.core.write_file(tmp .. "/ck/trainer_state.json", clip.json.encode(st)))
    local _, o3 = run(tmp .. "/ck", 3, 3, "one")
    assert.equal(1, #o3.param_groups)
    straight:close(); resumed:close()
    os.execute("rm -rf '" .. tmp .. "'")
  end)
end)

-- The update kernels (csrc/core/optim.c) against twins written here: AdamW runs vectorized
-- (AVX-512, AVX or NEON, whichever this run has) and over the pool for tensors of 32768
-- elements or more; the twin does torch's float32 operations one rounding at a time (f32
-- below: a double result rounded to float is the float result, for +, -, *, / and sqrt), so
-- every element must match to the bit, with 1 and 2 threads, tail elements included.
-- sumsq adds in double in fixed chunks: within 1e-12 of the plain double sum, and the same
-- bits for any thread count.
describe("optimizer kernels vs twins", function()
  local function f32(x) return (string.unpack("f", string.pack("f", x))) end
  local N = 40003 -- above the threading cut, and not a multiple of 64 or 16

  local function adamw_twin(p, m, v, g, lr, b1, b2, eps, wd, t)
    local decay, w1, fb2, w2, fe = f32(1 - lr * wd), f32(1 - b1), f32(b2), f32(1 - b2), f32(eps)
    local step, bc2s = f32(lr / (1 - b1 ^ t)), f32(math.sqrt(1 - b2 ^ t))
    for i = 1, #p do
      local gi = g[i]
      local mi = f32(m[i] + f32(w1 * f32(gi - m[i])))
      local vi = f32(f32(fb2 * v[i]) + f32(f32(w2 * gi) * gi))
      m[i], v[i] = mi, vi
      local denom = f32(f32(f32(math.sqrt(vi)) / bc2s) + fe)
      p[i] = f32(f32(p[i] * decay) - f32(f32(step * mi) / denom))
    end
  end

  local function values(t)
    local out = {}
    for i = 1, t:numel() do out[i] = t:get(i) end
    return out
  end

  for _, nt in ipairs({ 1, 2 }) do
    it(("AdamW, %d thread(s): three steps equal the float32 twin bit for bit"):format(nt), function()
      local before = clip.get_num_threads()
      clip.set_num_threads(nt)
      local p, m, v = clip.randn({ N }, 11), clip.core.zeros({ N }), clip.core.zeros({ N })
      local tp, tm, tv = values(p), values(m), values(v)
      for t = 1, 3 do
        local g = clip.randn({ N }, 20 + t)
        local lr, wd = 1e-3 * t, 0.01
        clip.core.optim_adamw(p, m, v, g, lr, 0.9, 0.999, 1e-8, wd, t)
        adamw_twin(tp, tm, tv, values(g), lr, 0.9, 0.999, 1e-8, wd, t)
      end
      clip.set_num_threads(before)
      for i = 1, N do
        if p:get(i) ~= tp[i] or m:get(i) ~= tm[i] or v:get(i) ~= tv[i] then
          error(("element %d: p %.9g vs %.9g, m %.9g vs %.9g, v %.9g vs %.9g"):format(
            i, p:get(i), tp[i], m:get(i), tm[i], v:get(i), tv[i]))
        end
      end
    end)
  end

  it("AdamW on a small tensor (the caller's thread, vector body and tail) equals the twin", function()
    local p, m, v = clip.randn({ 37 }, 3), clip.core.zeros({ 37 }), clip.core.zeros({ 37 })
    local g = clip.randn({ 37 }, 4)
    local tp, tm, tv = values(p), values(m), values(v)
    clip.core.optim_adamw(p, m, v, g, 0.5, 0.8, 0.99, 1e-6, 0.1, 1)
    adamw_twin(tp, tm, tv, values(g), 0.5, 0.8, 0.99, 1e-6, 0.1, 1)
    for i = 1, 37 do assert.equal(tp[i], p:get(i)) end
  end)

  it("sumsq: within 1e-12 of the plain double sum, the same for 1 and 2 threads", function()
    local before = clip.get_num_threads()
    for _, n in ipairs({ 1, 15, 16385, 100003 }) do
      local x = clip.randn({ n }, n)
      local s = 0
      for i = 1, n do s = s + x:get(i) * x:get(i) end
      clip.set_num_threads(1)
      local a = clip.core.sumsq(x)
      clip.set_num_threads(2)
      local b = clip.core.sumsq(x)
      assert.equal(a, b)
      assert.is_true(math.abs(a - s) <= 1e-12 * s, ("n %d: %.17g vs %.17g"):format(n, a, s))
    end
    clip.set_num_threads(before)
  end)
end)
