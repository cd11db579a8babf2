-- spec/kernels_spec.lua - every fast kernel against its naive twin
local clip = require "clip"
local H = require "spec.helpers"
local K = clip.core.kernels

-- the saved softmax [B, NH, T, T]: each row sums to 1 (within atol), masked scores exactly 0
local function check_probs(probs, causal, atol, label)
  local p = probs:totable()
  for bb = 1, #p do
    for h = 1, #p[bb] do
      local rows = p[bb][h]
      for i = 1, #rows do
        local sum = 0
        for j = 1, #rows[i] do
          sum = sum + rows[i][j]
          if causal and j > i then assert.are.equal(0, rows[i][j], label .. ": a masked score") end
        end
        H.assert_close(sum, 1, { atol = atol, label = label .. ": probs row sum" })
      end
    end
  end
end

describe("kernels vs naive twins", function()
  it("sgemm in all transpose combinations", function()
    for _, tt in ipairs({ { false, false }, { true, false }, { false, true }, { true, true } }) do
      local a = tt[1] and clip.randn({ 37, 13 }, 1) or clip.randn({ 13, 37 }, 1)
      local b = tt[2] and clip.randn({ 29, 37 }, 2) or clip.randn({ 37, 29 }, 2)
      H.assert_close(K.sgemm(a, b, tt[1], tt[2]), K.sgemm(a, b, tt[1], tt[2], true),
        { atol = 1e-4, label = "sgemm" })
    end
  end)

  it("linear with and without bias", function()
    local x, w, b = clip.randn({ 17, 33 }, 3), clip.randn({ 21, 33 }, 4), clip.randn({ 21 }, 5)
    H.assert_close(K.linear(x, w, b), K.linear(x, w, b, true), { atol = 1e-4, label = "linear" })
    H.assert_close(K.linear(x, w), K.linear(x, w, nil, true), { atol = 1e-4, label = "linear nobias" })
  end)

  it("layernorm, including a large offset", function()
    local x = clip.randn({ 9, 48 }, 6) * 3 + 100
    local w, b = clip.randn({ 48 }, 7), clip.randn({ 48 }, 8)
    H.assert_close(K.layernorm(x, w, b, 1e-5), K.layernorm(x, w, b, 1e-5, true), { atol = 2e-5, label = "layernorm" })
  end)

  it("layernorm with row lengths that leave a tail (the vector lanes' edges: 16, 8, 4)", function()
    for _, C in ipairs({ 1, 3, 7, 13, 43 }) do
      local x = clip.randn({ 5, C }, 20 + C) * 2 + 10
      local w, b = clip.randn({ C }, 40 + C), clip.randn({ C }, 60 + C)
      H.assert_close(K.layernorm(x, w, b, 1e-5), K.layernorm(x, w, b, 1e-5, true),
        { atol = 2e-5, label = "layernorm C=" .. C })
    end
  end)

  it("activations", function()
    local x = clip.randn({ 1000 }, 9) * 4
    for _, a in ipairs({ "quick_gelu", "gelu", "gelu_new", "relu" }) do
      H.assert_close(K.act(x, a), K.act(x, a, true), { atol = 2e-6, rtol = 1e-6, label = a })
    end
    -- the vectorized exp's clamps (|1.702 x| > 88) and the masked tail (1003 = 62 x 16 + 11)
    local wide = clip.randn({ 1003 }, 11) * 40
    H.assert_close(K.act(wide, "quick_gelu"), K.act(wide, "quick_gelu", true),
      { atol = 2e-6, rtol = 1e-6, label = "quick_gelu, wide range" })
    -- known values: gelu(1) = 0.8413447, quick_gelu(1) = 1/(1+e^-1.702)
    H.assert_close(K.act(clip.tensor({ 1 }), "gelu"), { 0.8413447460685429 }, { atol = 1e-7 })
    H.assert_close(K.act(clip.tensor({ 1 }), "quick_gelu"), { 1 / (1 + math.exp(-1.702)) }, { atol = 1e-7 })
  end)

  it("attention, causal and not", function()
    local q, k, v = clip.randn({ 2, 11, 24 }, 10), clip.randn({ 2, 11, 24 }, 11), clip.randn({ 2, 11, 24 }, 12)
    for _, causal in ipairs({ false, true }) do
      H.assert_close(K.attention(q, k, v, 3, causal), K.attention(q, k, v, 3, causal, true),
        { atol = 1e-5, label = "attention causal=" .. tostring(causal) })
    end
    -- causal: the first position attends only to itself, so its output is v's first row
    local o = K.attention(q, k, v, 3, true)
    H.assert_close(o[1][1], v[1][1], { atol = 1e-6 })
  end)

  it("attention at the towers' head sizes, over 1, 2 and 3 threads", function()
    -- k_attention.c's own tiles (AVX-512, or AVX2 under CLIP_NO_AVX512=1) over their routes:
    -- whole (b, h) slices per thread or rows of every slice, one column tile of keys (the
    -- softmax on its registers) or several, causal tiles that read only their keys, T past 256
    -- (rows of every slice), a head size (80) and T that take the BLAS route; hs 64 is every
    -- CLIP tower's. Each thread count against the twin, the scores saved for the backward too.
    local before = clip.get_num_threads()
    for _, nt in ipairs({ 1, 2, 3 }) do
      clip.set_num_threads(nt)
      for _, s in ipairs({ { 2, 50, 128, 2 }, { 2, 77, 64, 4 }, { 1, 33, 64, 1 }, { 3, 9, 32, 2 },
        { 2, 50, 192, 3 }, { 1, 77, 128, 2 }, { 3, 64, 32, 1 }, { 1, 65, 64, 4 }, { 1, 257, 64, 1 },
        { 2, 20, 80, 1 }, { 2, 1, 32, 2 } }) do
        local B, T, C, NH = s[1], s[2], s[3], s[4]
        local q, k, v = clip.randn({ B, T, C }, T), clip.randn({ B, T, C }, T + 1), clip.randn({ B, T, C }, T + 2)
        for _, causal in ipairs({ false, true }) do
          local label = ("attention %dx%dx%d, %d heads, causal=%s, %d threads"):format(B, T, C, NH, tostring(causal), nt)
          local want = K.attention(q, k, v, NH, causal, true)
          H.assert_close(K.attention(q, k, v, NH, causal), want, { atol = 2e-5, label = label })
          local out, probs = K.attention_probs(q, k, v, NH, causal)
          H.assert_close(out, want, { atol = 2e-5, label = label .. " (scores saved)" })
          check_probs(probs, causal, 1e-5, label)
        end
      end
    end
    clip.set_num_threads(before)
  end)
end)

-- The comparisons above pass on the scalar loops as well: this checks, in child processes (the
-- CPU check is made once per process), that the vector exp (AVX-512 on x86-64, NEON on aarch64)
-- is the one in use where the CPU has it. quick_gelu's bits were recorded from the AVX-512
-- path; the NEON one (ct_exp4) and the AVX2 one (ct_exp8: the same constants and FMAs) give
-- the same bits. The softmax
-- sums in 16 or 4 lanes, so only its difference from the scalar loop (libm's expf) is checked.
-- LayerNorm's vector sums give the scalar loop's bits on these inputs (double sums), so they
-- have no such check: only the twin comparisons above.
describe("vector paths in use", function()
  local sh = require "spec.support.shell"
  local probe = [[lua5.4 -e 'local c = require("clip"); local H = require("spec.helpers");
    local K = c.core.kernels; local x = c.rand({1003}, 11) * 80 - 40;
    local q, k, v = c.rand({2, 11, 24}, 10), c.rand({2, 11, 24}, 11), c.rand({2, 11, 24}, 12);
    print(table.concat(K.gemm_packed_kernels(), ","), H.bits(K.act(x, "quick_gelu")),
      H.bits(K.attention(q, k, v, 3, false)))']]
  local function run(env)
    local out = sh.must(env .. " " .. probe)
    local ks, g, a = out:match("([%w,]*)\t(%x+)\t(%x+)%s*$")
    assert(ks, "probe output: " .. out)
    return ks, g, a
  end

  it("quick_gelu and the attention softmax take the vector exp where the CPU has one", function()
    local ks, g, a = run("CLIP_NO_AVX512=0")
    local ks0, g0, a0 = run("CLIP_NO_AVX512=1 CLIP_NO_AVX2=1")
    assert.is_nil(ks0:find("avx512") or ks0:find("neon") or ks0:find("avx2"),
      "CLIP_NO_AVX512=1 CLIP_NO_AVX2=1 turn the vector paths off")
    if not (ks:find("avx512") or ks:find("neon")) then
      pending("neither AVX-512 nor NEON here: the scalar loops are the ones in use")
      return
    end
    assert.equal("5358c4d9", g, "quick_gelu's bits with the vector exp (" .. ks .. ")")
    assert.not_equal(g0, g, "quick_gelu: the scalar loop (libm's expf) gives other bits")
    assert.not_equal(a0, a, "attention: the scalar softmax gives other bits")
  end)

  it("quick_gelu and the softmax take the AVX2 exp where AVX-512 is off and AVX2 is on", function()
    local ks, g, a = run("CLIP_NO_AVX512=1")
    if not ks:find("avx2") then
      pending("no AVX2 + FMA here (or CLIP_NO_AVX2 is set): nothing to check")
      return
    end
    local _, _, a0 = run("CLIP_NO_AVX512=1 CLIP_NO_AVX2=1")
    assert.is_nil(ks:find("avx512"), "CLIP_NO_AVX512=1 turns AVX-512 off")
    assert.equal("5358c4d9", g, "quick_gelu's bits with ct_exp8 (" .. ks .. ")")
    assert.not_equal(a0, a, "attention: the scalar softmax gives other bits than the AVX2 one")
  end)
end)

-- ---------------------------------------------------------------- backward
-- Each backward: fast kernel vs naive twin; a NULL gradient (not in `want`)
-- is skipped; gradients accumulate (+=) into tensors passed in `want`.

local function flat(t) return H.flatten(t:totable()) end

local function same_values(a, b, label)
  H.assert_close(a, b, { atol = 0, label = label })
end

-- run(want, ref) -> the backward's results (a list, nil where not wanted);
-- names: the gradient names in order; inputs: tensors that must not change.
local function check_backward(label, names, run, inputs, tol)
  local before = {}
  for i, t in ipairs(inputs) do before[i] = t:clone() end
  local fast, ref = { run(nil, false) }, { run(nil, true) }
  for i, name in ipairs(names) do
    assert.is_not_nil(fast[i], label .. " " .. name)
    H.assert_close(fast[i], ref[i], { atol = tol.atol, rtol = tol.rtol, label = label .. " " .. name .. " fast vs ref" })
  end
  -- the kernels only write their gradients
  for i, t in ipairs(inputs) do same_values(t, before[i], label .. " input " .. i .. " untouched") end
  for _, use_ref in ipairs({ false, true }) do
    local full = use_ref and ref or fast
    local tag = label .. (use_ref and " (ref)" or "")
    -- each gradient alone: the others come back nil (NULL: skipped) and it equals the full call's
    for i, name in ipairs(names) do
      local got = { run({ [name] = true }, use_ref) }
      for j, other in ipairs(names) do
        if j == i then
          same_values(got[j], full[i], tag .. " only " .. name)
        else
          assert.is_nil(got[j], tag .. " only " .. name .. ": " .. other .. " must be skipped")
        end
      end
    end
    -- nothing wanted: nothing computed, nothing returned
    local none = { run({}, use_ref) }
    for j = 1, #names do assert.is_nil(none[j], tag .. " nothing wanted") end
    -- accumulation: into a tensor pre-filled with 1, and calling twice doubles
    local want, ones = {}, {}
    for i, name in ipairs(names) do
      want[name] = full[i]:clone()
      ones[name] = clip.ones(full[i]:shape())
    end
    local once = { run(want, use_ref) }
    for i, name in ipairs(names) do
      assert.are.equal(want[name], once[i]) -- the same tensor comes back
      H.assert_close(once[i], full[i] * 2, { atol = 1e-6, rtol = 1e-6, label = tag .. " twice " .. name })
    end
    local plus1 = { run(ones, use_ref) }
    for i, name in ipairs(names) do
      H.assert_close(plus1[i], full[i] + 1, { atol = 1e-6, rtol = 1e-6, label = tag .. " 1 + " .. name })
    end
  end
  return fast
end

describe("backward kernels vs naive twins", function()
  it("linear_backward: dinp, dweight, dbias (sizes not multiples of 8)", function()
    for _, sz in ipairs({ { 13, 19, 23 }, { 150, 21, 70 }, { 1, 5, 3 } }) do
      local N, IC, OC = sz[1], sz[2], sz[3]
      local x, w = clip.randn({ N, IC }, 20 + N), clip.randn({ OC, IC }, 21 + N)
      local dout = clip.randn({ N, OC }, 22 + N)
      local g = check_backward("linear " .. table.concat(sz, "x"), { "dinp", "dweight", "dbias" },
        function(want, ref) return K.linear_backward(dout, x, w, want, ref) end, { dout, x, w },
        { atol = 1e-4, rtol = 1e-5 })
      -- dbias is the column sum of dout; dinp = dout w; dweight = dout^T x
      H.assert_close(g[3], dout:sum(1), { atol = 1e-4, label = "dbias = colsum" })
      H.assert_close(g[1], K.sgemm(dout, w, false, false, true), { atol = 1e-4, label = "dinp = dout w" })
      H.assert_close(g[2], K.sgemm(dout, x, true, false, true), { atol = 1e-4, label = "dweight = dout^T x" })
    end
  end)

  it("layernorm_stats saves mean and rstd; layernorm_backward", function()
    local N, C, eps = 11, 37, 1e-5
    local x = clip.randn({ N, C }, 30) * 2 + 0.5
    local w, b = clip.randn({ C }, 31), clip.randn({ C }, 32)
    local out, mean, rstd = K.layernorm_stats(x, w, b, eps)
    same_values(out, K.layernorm(x, w, b, eps), "layernorm_stats out")
    local xs = x:totable()
    for i = 1, N do
      local s, v = 0, 0
      for j = 1, C do s = s + xs[i][j] end
      local m = s / C
      for j = 1, C do v = v + (xs[i][j] - m) ^ 2 end
      H.assert_close(mean:get(i), m, { atol = 1e-6, label = "mean" })
      H.assert_close(rstd:get(i), 1 / math.sqrt(v / C + eps), { rtol = 1e-6, atol = 0, label = "rstd" })
    end
    local dout = clip.randn({ N, C }, 33)
    check_backward("layernorm", { "dinp", "dweight", "dbias" },
      function(want, ref) return K.layernorm_backward(dout, x, w, mean, rstd, want, ref) end,
      { dout, x, w, mean, rstd }, { atol = 2e-5, rtol = 1e-5 })
  end)

  -- Above a size threshold the three run over the pool (act_backward and linear_backward's
  -- dbias by element or column block, layernorm_backward by rows for dinp and by 16-column
  -- units for dweight, dbias): every thread count gives the same bits, and the twins agree.
  it("pooled backward kernels: the same values at 1, 2 and 3 threads", function()
    local before = clip.get_num_threads()
    local N, IC, OC, C = 301, 41, 130, 203 -- N*OC, N*C above 32768; C not a multiple of 16
    local x, w, dout = clip.randn({ N, IC }, 50), clip.randn({ OC, IC }, 51), clip.randn({ N, OC }, 52)
    local lx = clip.randn({ N, C }, 53) * 2 + 0.5
    local lw, lb, ld = clip.randn({ C }, 54), clip.randn({ C }, 55), clip.randn({ N, C }, 56)
    local _, mean, rstd = K.layernorm_stats(lx, lw, lb, 1e-5)
    local ax, ad = clip.randn({ 9, 2003 }, 57) * 3, clip.randn({ 9, 2003 }, 58) -- 18027 > 16384
    local function run(ref)
      local r = { select(3, K.linear_backward(dout, x, w, { dbias = true }, ref)) } -- the GEMMs: gemm_spec
      for _, t in ipairs({ K.layernorm_backward(ld, lx, lw, mean, rstd, nil, ref) }) do r[#r + 1] = t end
      for _, a in ipairs({ "quick_gelu", "gelu", "relu" }) do r[#r + 1] = K.act_backward(ad, ax, a, nil, ref) end
      return r
    end
    local names = { "linear dbias", "layernorm dinp",
      "layernorm dweight", "layernorm dbias", "quick_gelu", "gelu", "relu" }
    clip.set_num_threads(1)
    local one, ref = run(false), run(true)
    for _, nt in ipairs({ 2, 3 }) do
      clip.set_num_threads(nt)
      local got = run(false)
      for i, name in ipairs(names) do
        same_values(got[i], one[i], ("%s: %d threads vs 1"):format(name, nt))
      end
    end
    clip.set_num_threads(before)
    for i, name in ipairs(names) do
      H.assert_close(one[i], ref[i], { atol = 1e-4, rtol = 1e-5, label = name .. " vs twin" })
    end
  end)

  -- attention_backward splits its (b, h) slices over the pool: each slice's GEMMs run whole
  -- in one thread, so 1, 2 and 3 threads give the same values; 6 slices (over the threads)
  -- and 1 slice (fewer than the threads: the caller alone), at a tower's head size and T
  it("attention_backward: the same values at 1, 2 and 3 threads, and the twin", function()
    local before = clip.get_num_threads()
    -- 2 x 200 x 128: each slice's GEMMs over 4M FLOPs (general_packed where that route is on)
    for _, sh in ipairs({ { 3, 50, 128, 2, false }, { 1, 15, 64, 1, true }, { 2, 13, 30, 3, true },
        { 2, 200, 128, 2, true } }) do
      local B, T, C, NH, causal = sh[1], sh[2], sh[3], sh[4], sh[5]
      local q, k, v = clip.randn({ B, T, C }, 60), clip.randn({ B, T, C }, 61), clip.randn({ B, T, C }, 62)
      local dout = clip.randn({ B, T, C }, 63)
      local _, probs = K.attention_probs(q, k, v, NH, causal)
      local label = ("attention_backward %dx%dx%d, %d heads"):format(B, T, C, NH)
      clip.set_num_threads(1)
      local one = { K.attention_backward(dout, q, k, v, probs, NH, causal) }
      local ref = { K.attention_backward(dout, q, k, v, probs, NH, causal, nil, true) }
      for _, nt in ipairs({ 2, 3 }) do
        clip.set_num_threads(nt)
        local got = { K.attention_backward(dout, q, k, v, probs, NH, causal) }
        for i, name in ipairs({ "dq", "dk", "dv" }) do
          same_values(got[i], one[i], ("%s %s: %d threads vs 1"):format(label, name, nt))
        end
      end
      for i, name in ipairs({ "dq", "dk", "dv" }) do
        H.assert_close(one[i], ref[i], { atol = 2e-5, rtol = 1e-5, label = label .. " " .. name .. " vs twin" })
      end
    end
    clip.set_num_threads(before)
  end)

  -- The training backward's workspace variants (linear_backward_set, act_backward_set):
  -- dinp is overwritten, never read (a NaN-filled dinp gives the fresh result), while
  -- dweight and dbias still accumulate; small sizes and sizes over the pool's thresholds.
  it("set variants overwrite dinp and accumulate the rest", function()
    for _, sz in ipairs({ { 13, 19, 23 }, { 301, 41, 130 } }) do
      local N, IC, OC = sz[1], sz[2], sz[3]
      local x, w, dout = clip.randn({ N, IC }, 60 + N), clip.randn({ OC, IC }, 61), clip.randn({ N, OC }, 62)
      local fresh = { K.linear_backward(dout, x, w) }
      local got = { K.linear_backward(dout, x, w, { dinp = clip.full({ N, IC }, 0 / 0),
        dweight = clip.ones({ OC, IC }), dbias = clip.ones({ OC }) }, false, true) }
      H.assert_close(got[1], fresh[1], { atol = 0, label = "linear set dinp " .. N })
      H.assert_close(got[2], fresh[2] + 1, { atol = 1e-5, rtol = 1e-6, label = "linear set dweight += " .. N })
      H.assert_close(got[3], fresh[3] + 1, { atol = 1e-5, rtol = 1e-6, label = "linear set dbias += " .. N })
    end
    for _, n in ipairs({ 143, 18027 }) do
      local x, dout = clip.randn({ n }, 63) * 3, clip.randn({ n }, 64)
      x:set(1, 0)
      for _, a in ipairs({ "quick_gelu", "gelu", "gelu_new", "relu" }) do
        local want = K.act_backward(dout, x, a)
        local got = K.act_backward(dout, x, a, { dinp = clip.full({ n }, 0 / 0) }, false, true)
        H.assert_close(got, want, { atol = 0, label = ("act %s set, n=%d"):format(a, n) })
      end
    end
  end)

  it("act_backward for every activation", function()
    local x = clip.randn({ 7, 143 }, 40) * 4
    x:set(1, 1, 0) -- relu'(0) = 0, as torch
    local dout = clip.randn({ 7, 143 }, 41)
    for _, a in ipairs({ "quick_gelu", "gelu", "gelu_new", "relu" }) do
      check_backward("act " .. a, { "dinp" },
        function(want, ref) return K.act_backward(dout, x, a, want, ref) end, { dout, x },
        { atol = 2e-6, rtol = 2e-6 })
    end
    H.assert_close(K.act_backward(clip.ones({ 1 }), clip.zeros({ 1 }), "relu"), { 0 }, { atol = 0 })
    -- known derivatives: gelu'(0) = 0.5, gelu'(1) = Phi(1) + phi(1)
    H.assert_close(K.act_backward(clip.ones({ 2 }), clip.tensor({ 0, 1 }), "gelu"),
      { 0.5, 0.8413447460685429 + math.exp(-0.5) / math.sqrt(2 * math.pi) }, { atol = 1e-6 })
    H.assert_close(K.act_backward(clip.ones({ 1 }), clip.tensor({ 0 }), "quick_gelu"), { 0.5 }, { atol = 1e-7 })
    H.assert_close(K.act_backward(clip.ones({ 1 }), clip.tensor({ 0 }), "gelu_new"), { 0.5 }, { atol = 1e-7 })
  end)

  it("attention_probs saves the softmax; attention_backward, causal and not", function()
    local B, T, C, NH = 2, 13, 30, 3
    local q, k, v = clip.randn({ B, T, C }, 50), clip.randn({ B, T, C }, 51), clip.randn({ B, T, C }, 52)
    local dout = clip.randn({ B, T, C }, 53)
    for _, causal in ipairs({ false, true }) do
      local out, probs = K.attention_probs(q, k, v, NH, causal)
      same_values(out, K.attention(q, k, v, NH, causal), "attention_probs out")
      assert.are.same({ B, NH, T, T }, probs:shape())
      check_probs(probs, causal, 1e-6, "attention_probs causal=" .. tostring(causal))
      check_backward("attention causal=" .. tostring(causal), { "dq", "dk", "dv" },
        function(want, ref) return K.attention_backward(dout, q, k, v, probs, NH, causal, want, ref) end,
        { dout, q, k, v, probs }, { atol = 2e-5, rtol = 1e-5 })
    end
    -- causal: the last key/value position only receives gradient from the last query
    local _, probs = K.attention_probs(q, k, v, NH, true)
    local d0 = dout:clone():fill(0)
    local dt = d0:clone()
    for c = 1, C do dt:set(1, 1, c, 1) end -- dout only at position 1
    local dq, dk, dv = K.attention_backward(dt, q, k, v, probs, NH, true)
    -- query 1 attends only to key 1 (prob 1), so dk is zero everywhere and dv only at row 1
    H.assert_close(dk, d0, { atol = 1e-6, label = "causal dk" })
    H.assert_close(dq, d0, { atol = 1e-6, label = "causal dq" })
    local dvt = dv:totable()
    for c = 1, C do assert.are.equal(1, dvt[1][1][c]) end
  end)

  it("embeddings: the forward as written in transformers, the backward accumulating", function()
    local function f32(x) return (string.unpack("f", string.pack("f", x))) end -- a float32 sum
    local B, NP, C = 2, 3, 4
    local patch, cls, pos = clip.randn({ B, NP, C }, 70), clip.randn({ C }, 71), clip.randn({ NP + 1, C }, 72)
    local out = K.vision_embed(patch, cls, pos)
    for b = 1, B do
      for c = 1, C do
        assert.equal(f32(cls:get(c) + pos:get(1, c)), out:get(b, 1, c))
        for t = 1, NP do assert.equal(f32(patch:get(b, t, c) + pos:get(t + 1, c)), out:get(b, t + 1, c)) end
      end
    end
    local tok, tpos, ids = clip.randn({ 5, C }, 73), clip.randn({ 4, C }, 74), { { 4, 0, 4 } }
    local tout = K.text_embed(ids, tok, tpos)
    for t = 1, 3 do
      for c = 1, C do assert.equal(f32(tok:get(ids[1][t] + 1, c) + tpos:get(t, c)), tout:get(1, t, c)) end
    end
    -- backward adds into given gradients; a gradient not wanted is skipped
    local d = clip.randn({ 1, 3, C }, 75)
    local dtok = clip.ones({ 5, C })
    local dt, dp = K.text_embed_backward(d, ids, 5, 4, { dtok = dtok })
    assert.equal(dtok, dt)
    assert.is_nil(dp)
    for c = 1, C do
      assert.equal(f32(f32(1 + d:get(1, 1, c)) + d:get(1, 3, c)), dtok:get(5, c))
      assert.equal(f32(1 + d:get(1, 2, c)), dtok:get(1, c))
      assert.equal(1, dtok:get(2, c))
    end
    local dpatch, dcls, dpos = K.vision_embed_backward(clip.ones({ B, NP + 1, C }), { dcls = true, dpos = true })
    assert.is_nil(dpatch)
    for c = 1, C do
      assert.equal(B, dcls:get(c))
      assert.equal(B, dpos:get(NP + 1, c))
    end
  end)

  it("rejects bad shapes and aliased gradients", function()
    local x, w = clip.randn({ 4, 5 }, 60), clip.randn({ 3, 5 }, 61)
    local dout = clip.randn({ 4, 3 }, 62)
    assert.has_error(function() K.linear_backward(clip.randn({ 4, 4 }), x, w) end,
      "linear_backward: dout has shape (4,4), expected (4,3)")
    assert.has_error(function() K.linear_backward(dout, x, w, { dweight = clip.zeros({ 5, 3 }) }) end,
      "linear_backward: want.dweight has shape (5,3), expected (3,5)")
    assert.has_error(function() K.linear_backward(dout, x, w, { dinp = x }) end,
      "linear_backward: a gradient shares memory with an input")
    local g = clip.zeros({ 4, 5 })
    assert.has_error(function() K.act_backward(clip.randn({ 4, 5 }), x, "gelu", { dinp = x }) end,
      "act_backward: a gradient shares memory with an input")
    assert.has_error(function() K.act_backward(g, x, "gelu", { dinp = g }) end,
      "act_backward: a gradient shares memory with an input")
    assert.has_error(function() K.act_backward(g, x, "swish") end, "unknown activation 'swish'")
    local q = clip.randn({ 1, 3, 4 })
    assert.has_error(function() K.attention_probs(q, q, q, 3, false) end,
      "attention_probs: C = 4 is not a multiple of NH = 3")
    assert.has_error(function() K.attention_backward(q, q, q, q, clip.zeros({ 1, 1, 3, 3 }), 2, false) end,
      "attention_backward: probs has shape (1,1,3,3), expected (1,2,3,3)")
    local tok, pos = clip.randn({ 5, 4 }), clip.randn({ 3, 4 })
    assert.has_error(function() K.text_embed({ { 1, 5 } }, tok, pos) end,
      "text_embed: ids[1][2] is not a token id in [0, 5)")
    assert.has_error(function() K.text_embed({ { 1, 2, 3, 4 } }, tok, pos) end,
      "text_embed: tok must be {V,C} and pos {P,C} with P >= T = 4")
    assert.has_error(function() K.vision_embed(clip.randn({ 1, 2, 4 }), clip.randn({ 4 }), clip.randn({ 2, 4 })) end,
      "vision_embed: pos has shape (2,4), expected (3,4)")
  end)
end)
