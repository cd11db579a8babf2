-- spec/gradcheck_spec.lua - every backward kernel (fast and naive twin)
-- against central finite differences of its forward.
--
-- Objective: f(inputs) = sum(dout * forward(inputs)) with a fixed random dout,
-- so df/dinput is exactly what backward(dout) returns. f is evaluated by
-- kernels.eval_double: the forward's double twin, the perturbation and the sum
-- all in double, around the float32 point the backward sees. Then
--   fd = (f(x + h e_i) - f(x - h e_i)) / (2 h),  h = 1e-3,
-- is accurate to ~1e-7 relative (truncation h^2 f'''/6, rounding ~1e-16 / h),
-- and the check is |grad - fd| <= 1e-4 * max|fd| (see docs/kernels.md).
local clip = require "clip"
local H = require "spec.helpers"
local K = clip.core.kernels

local STEP = 1e-3 -- h
local RTOL = 1e-4 -- relative to the largest finite-difference gradient
local SUBSET = 60 -- elements checked per tensor when it has more than this

-- element indices to perturb: all of them, or a fixed random subset of SUBSET
local function pick(n, seed)
  local idx = {}
  if n <= SUBSET then
    for i = 1, n do idx[i] = i end
    return idx
  end
  math.randomseed(seed)
  local seen = {}
  while #idx < SUBSET do
    local i = math.random(n)
    if not seen[i] then
      seen[i] = true
      idx[#idx + 1] = i
    end
  end
  table.sort(idx)
  return idx
end

-- gradcheck(op, dout, inputs, opts, grads, label)
-- grads[i]: the analytic gradient for inputs[i] (a Tensor; nil = not checked).
-- Returns the largest error / max|fd| seen (for the record).
local function gradcheck(op, dout, inputs, opts, grads, label)
  local worst = 0
  for i = 1, #inputs do
    local g = grads[i]
    if g then
      local ga = H.flatten(g:totable())
      local idx = pick(inputs[i]:numel(), 1000 + i)
      local fd, an, scale = {}, {}, 0
      for n, j in ipairs(idx) do
        opts.perturb = { i, j, STEP }
        local fp = K.eval_double(op, dout, inputs, opts)
        opts.perturb = { i, j, -STEP }
        local fm = K.eval_double(op, dout, inputs, opts)
        fd[n] = (fp - fm) / (2 * STEP)
        an[n] = ga[j]
        scale = math.max(scale, math.abs(fd[n]))
      end
      opts.perturb = nil
      assert(scale > 1e-2, label .. " input " .. i .. ": gradient too small to check (" .. scale .. ")")
      H.assert_close(an, fd, { atol = RTOL * scale, label = ("%s d(input %d) vs finite differences"):format(label, i) })
      for n = 1, #fd do worst = math.max(worst, math.abs(an[n] - fd[n]) / scale) end
    end
  end
  if os.getenv("CLIP_GRADCHECK_VERBOSE") then
    io.stderr:write(("gradcheck %-40s max |grad - fd| / max|fd| = %.2e\n"):format(label, worst))
  end
  return worst
end

local function both(f) -- run a check with the fast kernel and with its naive twin
  for _, ref in ipairs({ false, true }) do f(ref, ref and " (ref)" or "") end
end

describe("finite-difference gradient checks", function()
  it("eval_double is sum(dout * forward)", function()
    local x, w, b = clip.randn({ 3, 7 }, 1), clip.randn({ 5, 7 }, 2), clip.randn({ 5 }, 3)
    local dout = clip.randn({ 3, 5 }, 4)
    local s = (dout * K.linear(x, w, b)):sum()
    H.assert_close(K.eval_double("linear", dout, { x, w, b }), s, { atol = 1e-5, rtol = 1e-6 })
    -- a perturbation of x[1][1] by d moves the linear objective by d * sum_o dout[1][o] w[o][1]
    local d, g = 0.5, 0
    for o = 1, 5 do g = g + dout:get(1, o) * w:get(o, 1) end
    local f0 = K.eval_double("linear", dout, { x, w, b })
    local f1 = K.eval_double("linear", dout, { x, w, b }, { perturb = { 1, 1, d } })
    H.assert_close(f1 - f0, d * g, { atol = 1e-12 })
  end)

  it("layernorm: dinp, dweight, dbias", function()
    local N, C, eps = 3, 7, 1e-5
    local x = clip.randn({ N, C }, 10) * 2 + 0.5
    local w, b = clip.randn({ C }, 11), clip.randn({ C }, 12)
    local dout = clip.randn({ N, C }, 13)
    local _, mean, rstd = K.layernorm_stats(x, w, b, eps)
    both(function(ref, tag)
      local dx, dw, db = K.layernorm_backward(dout, x, w, mean, rstd, nil, ref)
      gradcheck("layernorm", dout, { x, w, b }, { eps = eps }, { dx, dw, db }, "layernorm" .. tag)
    end)
  end)

  it("linear: dinp, dweight, dbias", function()
    local x, w, b = clip.randn({ 4, 5 }, 20), clip.randn({ 3, 5 }, 21), clip.randn({ 3 }, 22)
    local dout = clip.randn({ 4, 3 }, 23)
    both(function(ref, tag)
      local dx, dw, db = K.linear_backward(dout, x, w, nil, ref)
      gradcheck("linear", dout, { x, w, b }, {}, { dx, dw, db }, "linear" .. tag)
    end)
  end)

  it("each activation", function()
    -- 40 points in [-4, 4], none within 0.05 of 0 (relu's kink) so relu's fd is exact
    local x = clip.randn({ 5, 8 }, 30) * 2
    local xs = H.flatten(x:totable())
    for i, v in ipairs(xs) do
      if math.abs(v) < 0.05 then x:set((i - 1) // 8 + 1, (i - 1) % 8 + 1, v < 0 and -0.3 or 0.3) end
    end
    local dout = clip.randn({ 5, 8 }, 31)
    for _, a in ipairs({ "quick_gelu", "gelu", "gelu_new", "relu" }) do
      both(function(ref, tag)
        local dx = K.act_backward(dout, x, a, nil, ref)
        gradcheck("act", dout, { x }, { act = a }, { dx }, a .. tag)
      end)
    end
  end)

  it("attention: dq, dk, dv, causal and not", function()
    for _, sz in ipairs({ { 2, 5, 6, 2 }, { 1, 11, 15, 3 } }) do -- B, T, C, NH; the second has 165 > 60 elements
      local B, T, C, NH = sz[1], sz[2], sz[3], sz[4]
      local q, k, v = clip.randn({ B, T, C }, 40), clip.randn({ B, T, C }, 41), clip.randn({ B, T, C }, 42)
      local dout = clip.randn({ B, T, C }, 43)
      for _, causal in ipairs({ false, true }) do
        local _, probs = K.attention_probs(q, k, v, NH, causal)
        both(function(ref, tag)
          local dq, dk, dv = K.attention_backward(dout, q, k, v, probs, NH, causal, nil, ref)
          gradcheck("attention", dout, { q, k, v }, { heads = NH, causal = causal }, { dq, dk, dv },
            ("attention %s causal=%s%s"):format(table.concat(sz, ","), tostring(causal), tag))
        end)
      end
    end
  end)

  -- the embeddings have no separate naive twin (plain loops already)
  it("vision embedding: dpatch, dcls, dpos", function()
    local B, NP, C = 2, 4, 5
    local patch, cls, pos = clip.randn({ B, NP, C }, 50), clip.randn({ C }, 51), clip.randn({ NP + 1, C }, 52)
    local dout = clip.randn({ B, NP + 1, C }, 53)
    local dpatch, dcls, dpos = K.vision_embed_backward(dout)
    gradcheck("vision_embed", dout, { patch, cls, pos }, {}, { dpatch, dcls, dpos }, "vision_embed")
  end)

  it("text embedding: dtok (repeated ids accumulate), dpos (T < P)", function()
    local V, P, C = 6, 5, 4
    local ids = { { 3, 0, 3, 5 }, { 1, 3, 2, 2 } } -- row 4 never used: its gradient stays 0
    local tok, pos = clip.randn({ V, C }, 54), clip.randn({ P, C }, 55)
    local dout = clip.randn({ 2, 4, C }, 56)
    local dtok, dpos = K.text_embed_backward(dout, ids, V, P)
    gradcheck("text_embed", dout, { tok, pos }, { ids = ids }, { dtok, dpos }, "text_embed")
    for c = 1, C do
      assert.equal(0, dtok:get(5, c))
      assert.equal(0, dpos:get(5, c))
    end
  end)
end)
