-- spec/kernels_spec.lua - every fast kernel against its naive twin
local clip = require "clip"
local H = require "spec.helpers"
local K = clip.core.kernels

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

  it("activations", function()
    local x = clip.randn({ 1000 }, 9) * 4
    for _, a in ipairs({ "quick_gelu", "gelu", "gelu_new", "relu" }) do
      H.assert_close(K.act(x, a), K.act(x, a, true), { atol = 2e-6, rtol = 1e-6, label = a })
    end
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
end)
