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

  -- The larger GEMMs (>= 4e6 flops) go to the packed AVX-512 micro-kernel where OpenBLAS runs
  -- no AVX-512 kernel (blas.c's general_packed): B and A packed per call (A from its
  -- transposed layout for ta) into the pool's kept scratch,
  -- rows in chunks of CLIP_PACKED_MAX_M. Checked in child processes with CLIP_GEMM=packed
  -- (the route is decided once per process) and a 150-row chunk, so chunk edges are crossed,
  -- against the naive twin with alpha and beta; once with the threads splitting the panels
  -- (a chunk is under 100 rows a thread) and once, CLIP_PACKED_ROWS=50, the rows (each thread
  -- packing its own, from A's transposed layout for ta); and CLIP_GEMM=openblas turns it off.
  it("runs the larger GEMMs on the packed kernel for every transpose, alpha and beta", function()
    local sh = require "spec.support.shell"
    local probe = [[lua5.4 -e '
      local c = require("clip"); local H = require("spec.helpers"); local K = c.core.kernels
      if not K.gemm_general_packed() then print("route off"); return end
      local n = 0
      for _, nt in ipairs({ 1, 2, 3 }) do
        c.set_num_threads(nt)
        for _, s in ipairs({ { 410, 97, 130 }, { 33, 300, 257 }, { 160, 64, 200 } }) do
          local M, N, Kd = s[1], s[2], s[3]
          for _, ta in ipairs({ false, true }) do
            for _, tb in ipairs({ false, true }) do
              local a = ta and c.randn({ Kd, M }, M + N) or c.randn({ M, Kd }, M + N)
              local b = tb and c.randn({ N, Kd }, Kd) or c.randn({ Kd, N }, Kd)
              local c0 = c.randn({ M, N }, 5)
              local got = K.sgemm(a, b, ta, tb, false, c0:clone(), 0.5, -1.5)
              local want = K.sgemm(a, b, ta, tb, true, c0:clone(), 0.5, -1.5)
              H.assert_close(got, want, { atol = 1e-4, rtol = 1e-5,
                label = ("packed route %d threads M=%d N=%d K=%d ta=%s tb=%s"):format(nt, M, N, Kd, ta, tb) })
              local z = K.sgemm(a, b, ta, tb, false, c.full({ M, N }, 0 / 0), 1, 0)
              H.assert_close(z, K.sgemm(a, b, ta, tb, true), { atol = 1e-4, rtol = 1e-5,
                label = "beta 0 over NaN" })
              n = n + 1
            end
          end
        end
      end
      print("checked " .. n)']]
    local out = sh.must("CLIP_GEMM=packed CLIP_PACKED_MAX_M=150 " .. probe)
    local rows = sh.must("CLIP_GEMM=packed CLIP_PACKED_MAX_M=150 CLIP_PACKED_ROWS=50 " .. probe)
    if out:find("route off", 1, true) then
      assert.is_false(clip.core.kernels.gemm_packed_kernels()[1] == "avx512",
        "the AVX-512 kernel runs here, so CLIP_GEMM=packed must turn the route on")
      pending("no AVX-512 packed kernel on this CPU: the route is off (CLIP_GEMM=packed)")
      return
    end
    assert.truthy(out:find("checked 36", 1, true), out)
    assert.truthy(rows:find("checked 36", 1, true), rows)
    assert.truthy(sh.must([[CLIP_GEMM=openblas lua5.4 -e 'print(require("clip").core.kernels.gemm_general_packed())']]):find("false", 1, true))
  end)

  it("set_num_threads rejects nonsense", function()
    assert.has_error(function() clip.set_num_threads(0) end)
    assert.has_error(function() clip.set_num_threads(100000) end)
  end)
end)
