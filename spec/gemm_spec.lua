-- spec/gemm_spec.lua - csrc/kernels/gemm.c's AVX2/FMA kernel against its naive twin on odd shapes,
-- and the GEMM door (ct_sgemm: own kernel or OpenBLAS, split over the module's thread pool)
-- against the naive twin for every transpose combination, with 1, 2 and 3 threads.
local H = require "spec.helpers"
local clip = require "clip"
local core = clip.core
local K = core.kernels

local function rnd(shape, seed) return core.randn(shape, seed) end

describe("gemm", function()
  local has = K.gemm_available()

  it("reports whether the CPU runs the kernel", function()
    assert.is_boolean(has)
  end)

  it("matches the naive twin on odd shapes (row, column and K edges)", function()
    if not has then return end
    local seed = 1
    for _, M in ipairs({ 1, 2, 3, 4, 5, 7, 50, 97, 100 }) do
      for _, N in ipairs({ 1, 3, 4, 5, 17 }) do
        for _, Kd in ipairs({ 1, 7, 8, 9, 31, 513, 1030 }) do
          seed = seed + 1
          local a, b = rnd({ M, Kd }, seed), rnd({ N, Kd }, seed + 1000)
          local got, want = K.gemm_nt(a, b), K.gemm_nt(a, b, true)
          H.assert_close(got, want, { atol = 1e-4, rtol = 1e-5,
            label = ("gemm_nt %dx%d x %dx%d^T"):format(M, Kd, N, Kd) })
        end
      end
    end
  end)

  it("applies alpha and beta, and ignores C's old values when beta is 0", function()
    if not has then return end
    local a, b = rnd({ 13, 37 }, 5), rnd({ 19, 37 }, 6)
    local c0 = rnd({ 13, 19 }, 7)
    local got = K.gemm_nt(a, b, false, c0:clone(), 0.5, -2)
    local want = K.gemm_nt(a, b, true, c0:clone(), 0.5, -2)
    H.assert_close(got, want, { atol = 1e-4, rtol = 1e-5, label = "alpha/beta" })
    local nan = core.full({ 13, 19 }, 0 / 0)
    local z = K.gemm_nt(a, b, false, nan, 1, 0)
    H.assert_close(z, K.gemm_nt(a, b, true), { atol = 1e-4, rtol = 1e-5, label = "beta 0 over NaN" })
  end)

  it("the GEMM door matches the twin for every transpose, with 1, 2 and 3 threads", function()
    local before = clip.get_num_threads()
    for _, nt in ipairs({ 1, 2, 3 }) do
      clip.set_num_threads(nt)
      assert.equal(nt, clip.get_num_threads())
      for _, s in ipairs({ { 50, 300, 77 }, { 7, 130, 64 }, { 200, 9, 120 }, { 97, 257, 33 } }) do
        local M, N, Kd = s[1], s[2], s[3]
        for _, ta in ipairs({ false, true }) do
          for _, tb in ipairs({ false, true }) do
            local a = ta and rnd({ Kd, M }, M + N) or rnd({ M, Kd }, M + N)
            local b = tb and rnd({ N, Kd }, Kd) or rnd({ Kd, N }, Kd)
            H.assert_close(K.sgemm(a, b, ta, tb), K.sgemm(a, b, ta, tb, true),
              { atol = 1e-4, rtol = 1e-5,
                label = ("sgemm %d threads M=%d N=%d K=%d ta=%s tb=%s"):format(nt, M, N, Kd, ta, tb) })
          end
        end
      end
    end
    clip.set_num_threads(before)
  end)

  it("set_num_threads rejects nonsense", function()
    assert.has_error(function() clip.set_num_threads(0) end)
    assert.has_error(function() clip.set_num_threads(100000) end)
  end)
end)
