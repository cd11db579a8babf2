-- spec/packed_spec.lua - packed weights (csrc/kernels/gemm_packed.c, model.c's ct_model_pack):
-- each packed micro-kernel this CPU runs (AVX-512 and AVX2 + FMA on x86-64, NEON on aarch64)
-- against the naive twin on odd shapes, in one thread and split over the pool, and against the
-- bits the AVX-512 kernel gives (recorded), the two x86 kernels also against each other; the
-- run-time choice of kernel; the encoders with packed weights against the same model
-- unpacked; packs rebuilt after every kind of write to a weight; mapped weights released after
-- packing read back exactly the file's bytes.
local H = require "spec.helpers"
local clip = require "clip"
local sh = require "spec.support.shell"
local core = clip.core
local K = core.kernels

local has = K.gemm_packed_available()
local kernels = K.gemm_packed_kernels() -- those this CPU runs ("avx512" dropped by CLIP_NO_AVX512)
local function rnd(shape, seed) return core.randn(shape, seed) end

-- the module's architecture, read from its ELF header (e_machine 183: aarch64), so that the
-- kernels of the other architecture are not reported as skipped
local ARM = (function()
  local f = assert(io.open(assert(package.searchpath("clip.core", package.cpath)), "rb"))
  local h = f:read(20)
  f:close()
  return string.unpack("<I2", h, 19) == 183
end)()
local ISAS = ARM and { "neon" } or { "avx512", "avx2" }

local function maxdiff(a, b)
  local d = a - b
  return math.max(d:max(), -d:min())
end

describe("packed gemm kernels", function()
  if not has then
    pending("no packed kernel selected here (x86-64 without AVX-512F and AVX2+FMA, or CLIP_PACKED_AVX2=0 or CLIP_NO_AVX2=1 without AVX-512F, or CLIP_NO_AVX512 on aarch64): nothing is packed")
    return
  end

  it("the selected one is the widest this CPU runs", function()
    assert.equal(kernels[1], K.gemm_packed_kernel())
  end)

  for _, isa in ipairs(ISAS) do
    local runs = false
    for _, k in ipairs(kernels) do runs = runs or k == isa end
    describe(isa, function()
      if not runs then
        pending("this CPU (or CLIP_NO_AVX512 / CLIP_NO_AVX2) does not run the " .. isa .. " kernel")
        return
      end

      it("matches the naive twin on odd shapes (row blocks, panel halves and K edges)", function()
        local seed = 1
        for _, M in ipairs({ 1, 2, 5, 6, 7, 11, 12, 13, 25, 50, 121, 257 }) do
          for _, N in ipairs({ 1, 8, 9, 16, 17, 24, 32, 33, 64, 100 }) do
            for _, Kd in ipairs({ 1, 7, 16, 193, 769, 1537 }) do
              seed = seed + 1
              local a, b = rnd({ M, Kd }, seed), rnd({ N, Kd }, seed + 1000)
              H.assert_close(K.gemm_packed(a, b, nil, 0, false, "f32", isa), K.gemm_nt(a, b, true),
                { atol = 1e-4, rtol = 1e-5, label = ("%s gemm_packed %dx%d x %dx%d^T"):format(isa, M, Kd, N, Kd) })
            end
          end
        end
      end)

      it("gives the bits the AVX-512 kernel gives (the same FMAs in the same order on every CPU)", function()
        -- inputs from clip.rand (an integer generator, no libm: the same bits on every CPU);
        -- the hashes were recorded from the AVX-512 kernel on x86-64 (K blocks of near-equal size)
        local want = { f32 = "2a18d187", f16 = "bb3f9780", bf16 = "f8893895" }
        for _, pooled in ipairs({ false, true }) do
          local seed = 0
          for _, kind in ipairs({ "f32", "f16", "bf16" }) do
            local h
            for _, M in ipairs({ 1, 7, 13, 50 }) do
              for _, N in ipairs({ 9, 33 }) do
                for _, Kd in ipairs({ 5, 193, 400, 1537 }) do
                  seed = seed + 3
                  local a = clip.rand({ M, Kd }, seed) * 2 - 1
                  local b = clip.rand({ N, Kd }, seed + 1) * 2 - 1
                  local c = clip.rand({ M, N }, seed + 2) * 2 - 1
                  h = H.bits(K.gemm_packed(a, b, c, 0.5, pooled, kind, isa), h)
                end
              end
            end
            assert.equal(want[kind], h, ("%s %s pooled=%s"):format(isa, kind, tostring(pooled)))
          end
        end
      end)

      it("adds beta C, and ignores C's old values when beta is 0", function()
        for _, s in ipairs({ { 13, 70 }, { 7, 9 } }) do
          local a, b = rnd({ s[1], 200 }, 5), rnd({ s[2], 200 }, 6)
          local c0 = rnd({ s[1], s[2] }, 7)
          local want = K.gemm_nt(a, b, true, c0:clone(), 1, -2)
          H.assert_close(K.gemm_packed(a, b, c0:clone(), -2, false, "f32", isa), want,
            { atol = 1e-4, rtol = 1e-5, label = isa .. " beta -2" })
          local nan = core.full({ s[1], s[2] }, 0 / 0)
          H.assert_close(K.gemm_packed(a, b, nan, 0, false, "f32", isa), K.gemm_nt(a, b, true),
            { atol = 1e-4, rtol = 1e-5, label = isa .. " beta 0 over NaN" })
        end
      end)

      -- threads split the panels below 100 rows each (blas.c), the rows above: 257 rows are
      -- split by rows over 2 threads and by panels over 3, 400 by rows over both
      it("split over the pool (1, 2 and 3 threads, by panels or by rows) gives the one thread's bits", function()
        local before = clip.get_num_threads()
        local one = {}
        for _, nt in ipairs({ 1, 2, 3 }) do
          clip.set_num_threads(nt)
          for i, s in ipairs({ { 50, 768, 64 }, { 3, 100, 300 }, { 130, 96, 40 }, { 130, 70, 800 },
            { 257, 100, 300 }, { 400, 96, 800 } }) do
            local a, b = rnd({ s[1], s[3] }, s[1]), rnd({ s[2], s[3] }, s[2])
            local label = ("%s pooled %d threads %dx%dx%d"):format(isa, nt, s[1], s[2], s[3])
            local got = K.gemm_packed(a, b, rnd({ s[1], s[2] }, 7), 0.5, true, "f32", isa)
            one[i] = one[i] or got
            assert.equal(0, maxdiff(got, one[i]), label)
            H.assert_close(got, K.gemm_nt(a, b, true, rnd({ s[1], s[2] }, 7), 1, 0.5),
              { atol = 1e-4, rtol = 1e-5, label = label })
          end
        end
        clip.set_num_threads(before)
      end)

      for _, kind in ipairs({ "f16", "bf16" }) do
        it("converts " .. kind .. " panels exactly (the twin on the rounded weights)", function()
          local seed = 100
          for _, M in ipairs({ 1, 7, 12, 50 }) do
            for _, N in ipairs({ 5, 17, 32, 70 }) do
              for _, Kd in ipairs({ 3, 200, 769 }) do
                seed = seed + 1
                local a, b = rnd({ M, Kd }, seed), rnd({ N, Kd }, seed + 7)
                local got, bh = K.gemm_packed(a, b, nil, 0, false, kind, isa)
                H.assert_close(got, K.gemm_nt(a, bh, true), { atol = 1e-4, rtol = 1e-5,
                  label = ("%s %s %dx%dx%d"):format(isa, kind, M, N, Kd) })
                assert.is_true(maxdiff(bh, b) > 0, "the weights were rounded")
              end
            end
          end
        end)
      end
    end)
  end

  if not ARM then
    it("AVX-512 and AVX2 give bitwise the same results (same FMAs in the same order)", function()
      if #kernels < 2 then pending("needs both kernels (AVX-512 CPU, CLIP_NO_AVX512 unset)") return end
      local seed = 500
      for _, M in ipairs({ 1, 7, 12, 13, 50 }) do
        for _, N in ipairs({ 9, 33, 100 }) do
          for _, Kd in ipairs({ 5, 193, 400, 1537 }) do
            for _, kind in ipairs({ "f32", "f16", "bf16" }) do
              seed = seed + 1
              local a, b, c = rnd({ M, Kd }, seed), rnd({ N, Kd }, seed + 1), rnd({ M, N }, seed + 2)
              local x = K.gemm_packed(a, b, c:clone(), 0.5, false, kind, "avx512")
              local y = K.gemm_packed(a, b, c:clone(), 0.5, false, kind, "avx2")
              assert.equal(0, maxdiff(x, y), ("%s %dx%dx%d"):format(kind, M, N, Kd))
            end
          end
        end
      end
    end)
  end

  it("are chosen at run time: AVX-512, else AVX2 unless CLIP_PACKED_AVX2=0, NEON on aarch64, else nothing packed", function()
    local probe = [[lua5.4 -e 'local c = require("clip"); local K = c.core.kernels;
      local m = c.load("spec/fixtures/models/tiny", {tokenizer = false});
      m:encode_images(c.core.randn({1, 3, 32, 32}, 1));
      print((K.gemm_packed_kernel() or "none") .. " " .. m:packed_blocks())']]
    local function run(env) return (sh.must(env .. " " .. probe):gsub("%s+$", "")) end
    local cpu_avx2 = false
    for _, k in ipairs(kernels) do cpu_avx2 = cpu_avx2 or k == "avx2" end
    local n = run("CLIP_NO_AVX512=0 CLIP_NO_AVX2=0 CLIP_PACKED_AVX2=1"):match("%d+$")
    assert.is_true(tonumber(n) > 0, "packed blocks")
    if cpu_avx2 then
      assert.equal("avx2 " .. n, run("CLIP_NO_AVX512=1 CLIP_NO_AVX2=0 CLIP_PACKED_AVX2=1"))
      -- the default: unset (or anything but 0) selects it
      assert.equal("avx2 " .. n, run("env -u CLIP_PACKED_AVX2 CLIP_NO_AVX512=1 CLIP_NO_AVX2=0"))
    end
    if ARM then assert.equal("neon " .. n, run("CLIP_NO_AVX512=0 CLIP_PACKED_AVX2=0")) end
    assert.equal("none 0", run("CLIP_NO_AVX512=1 CLIP_NO_AVX2=0 CLIP_PACKED_AVX2=0"))
    assert.equal("none 0", run("CLIP_NO_AVX512=1 CLIP_NO_AVX2=1 CLIP_PACKED_AVX2=1"))
  end)
end)

describe("the MLP chain (fc1 -> activation -> fc2 without fc1's output in memory)", function()
  if not has then
    pending("no packed kernel selected here: the chain needs one")
    return
  end
  local ACTS = { "quick_gelu", "gelu", "gelu_new", "relu" }
  -- rows across the single-row-block path (<= 120), the general one, and 400-row chunks (457);
  -- I with a last panel of 4 or 6 columns (100, 70: a last k4 group padded), two K blocks of
  -- fc2 (1536), the tiny model's towers (32 x 72, 48 x 80)
  local SHAPES = { { 1, 16, 32 }, { 7, 32, 72 }, { 13, 48, 80 }, { 50, 64, 100 }, { 121, 40, 70 },
    { 257, 96, 64 }, { 400, 64, 200 }, { 457, 32, 1536 } }

  -- the AVX2 kernel hands inputs of 400 rows and more with float weights to OpenBLAS
  -- (k_linear.c avx2_to_openblas): the chain declines there
  local function runs(N, half)
    return not (K.gemm_packed_kernel() == "avx2" and N >= 400 and (half or "f32") == "f32")
  end

  local function case(N, D, I, seed)
    return rnd({ N, D }, seed), rnd({ I, D }, seed + 1) * 0.2, rnd({ I }, seed + 2),
      rnd({ D, I }, seed + 3) * 0.2, rnd({ D }, seed + 4), rnd({ N, D }, seed + 5)
  end

  it("gives bitwise the three steps it replaces, and the naive twin's values", function()
    local seed = 1
    for _, act in ipairs(ACTS) do
      for _, s in ipairs(SHAPES) do
        seed = seed + 10
        local N, D, I = s[1], s[2], s[3]
        local x, w1, b1, w2, b2, out0 = case(N, D, I, seed)
        local three = K.mlp_packed(x, w1, b1, w2, b2, out0:clone(), act, false)
        local chain, ran = K.mlp_packed(x, w1, b1, w2, b2, out0:clone(), act, true)
        local label = ("%s N=%d D=%d I=%d"):format(act, N, D, I)
        assert.equal(runs(N), ran, label .. ": the chain ran")
        assert.equal(0, maxdiff(chain, ran and three or out0), label)
        local mid = K.act(K.linear(x, w1, b1, true), act, true)
        H.assert_close(three, out0 + K.linear(mid, w2, b2, true),
          { atol = 1e-4, rtol = 1e-4, label = label .. " vs the twin" })
      end
    end
  end)

  it("split over 1, 2 and 3 threads, and with 16-bit weights, gives the three steps' bits", function()
    local before = clip.get_num_threads()
    for _, nt in ipairs({ 1, 2, 3 }) do
      clip.set_num_threads(nt)
      for i, s in ipairs({ { 50, 64, 100 }, { 400, 64, 200 }, { 457, 32, 1536 } }) do
        for _, half in ipairs({ "f32", "f16", "bf16" }) do
          local x, w1, b1, w2, b2, out0 = case(s[1], s[2], s[3], 100 * i)
          local three = K.mlp_packed(x, w1, b1, w2, b2, out0:clone(), "quick_gelu", false, half)
          local chain, ran = K.mlp_packed(x, w1, b1, w2, b2, out0:clone(), "quick_gelu", true, half)
          local label = ("%d threads %s %dx%dx%d"):format(nt, half, s[1], s[2], s[3])
          assert.equal(runs(s[1], half), ran, label)
          assert.equal(0, maxdiff(chain, ran and three or out0), label)
        end
      end
    end
    clip.set_num_threads(before)
  end)

  it("declines, writing nothing, where fc1 takes more than one K block or fc2's don't start on a panel", function()
    for _, s in ipairs({ { 20, 800, 64 }, { 20, 64, 1000 } }) do
      local x, w1, b1, w2, b2, out0 = case(s[1], s[2], s[3], 7)
      local out, ran = K.mlp_packed(x, w1, b1, w2, b2, out0:clone(), "quick_gelu", true)
      assert.is_false(ran, ("D=%d I=%d"):format(s[2], s[3]))
      assert.equal(0, maxdiff(out, out0))
    end
  end)

  it("leaves the encoders' outputs bitwise unchanged (CLIP_MLP_CHAIN=0 turns it off)", function()
    local probe = [[lua5.4 -e 'package.path = "./?.lua;" .. package.path
      local H = require("spec.helpers"); local c = require("clip");
      local m = c.load("spec/fixtures/models/tiny", {tokenizer = false});
      local i = m:encode_images(c.core.randn({5, 3, 32, 32}, 1));
      local t = m:encode_texts({{4094, 5, 6, 7, 4095}, {4094, 9, 4095}});
      print(H.bits(i) .. " " .. H.bits(t) .. " " .. m:packed_blocks())']]
    local on = sh.must("CLIP_MLP_CHAIN=1 " .. probe):gsub("%s+$", "")
    local off = sh.must("CLIP_MLP_CHAIN=0 " .. probe):gsub("%s+$", "")
    assert.is_true(tonumber(on:match("%d+$")) > 0, "packed blocks: " .. on)
    assert.equal(off, on)
  end)
end)

describe("packed weights in the encoders", function()
  local TINY = H.fixtures .. "models/tiny"
  local ref = clip.load_safetensors(H.fixtures .. "models/tiny/reference.safetensors")
  local js = clip.json.decode(H.read(H.fixtures .. "models/tiny/reference.json"))
  local LAYERS -- text + vision blocks of the tiny model

  local function encode(m)
    return m:encode_images(ref.pixel_values), m:encode_texts(js.input_ids)
  end

  -- at 400 rows and more the GEMMs run in 400-row chunks (AVX-512, NEON) or on OpenBLAS (the
  -- AVX2 kernel's default, k_linear.c avx2_to_openblas): each row as when encoded alone
  it("a batch of over 400 token rows gives each row's result encoded alone", function()
    local m = clip.load(TINY, { tokenizer = false })
    local ids = js.input_ids[1]
    local n = 400 // #ids + 2
    local batch = {}
    for i = 1, n do batch[i] = ids end
    local one, all = m:encode_texts({ ids }), m:encode_texts(batch)
    assert.is_true(#ids * n >= 400)
    for i = 1, n do
      local d = maxdiff(all:rows(i), one)
      assert.is_true(d <= 1e-5, ("row %d differs by %g"):format(i, d))
    end
    m:close()
  end)

  it("give the unpacked results, and are built at the first encode", function()
    local m = clip.load(TINY, { tokenizer = false })
    local u = clip.load(TINY, { tokenizer = false, pack = false })
    LAYERS = m.config.text_config.num_hidden_layers + m.config.vision_config.num_hidden_layers
    assert.equal(0, m:packed_blocks())
    local ia, ta = encode(m)
    local ib, tb = encode(u)
    if has then assert.equal(LAYERS, m:packed_blocks()) else assert.equal(0, m:packed_blocks()) end
    assert.equal(0, u:packed_blocks())
    assert.is_true(maxdiff(ia, ib) <= 1e-5, "image embeds differ by " .. maxdiff(ia, ib))
    assert.is_true(maxdiff(ta, tb) <= 1e-5, "text embeds differ by " .. maxdiff(ta, tb))
    m:set_packing(false)
    assert.equal(0, m:packed_blocks())
    local ic = encode(m)
    assert.is_true(maxdiff(ic, ib) == 0, "unpacked after set_packing(false)")
    m:close() u:close()
  end)

  it("are rebuilt after writes through parameter views (set, copy, in-place ops, views of views)", function()
    if not has then pending("no packed kernel on this CPU") return end
    local name = "vision_model.encoder.layers.1.mlp.fc1.weight"
    local writes = {
      function(p) p:scale_(1.5) end,
      function(p) p:copy(p * 0.5) end,
      function(p) p:set(1, 1, 3.0) end,
      function(p) p:rows(2, 3):fill(0.25) end,
      function(p) p:add_(p) end,
    }
    for i, w in ipairs(writes) do
      local m = clip.load(TINY, { tokenizer = false })
      local u = clip.load(TINY, { tokenizer = false, pack = false })
      encode(m)
      assert.equal(LAYERS, m:packed_blocks())
      w(m:param(name))
      w(u:param(name))
      assert.equal(LAYERS - 1, m:packed_blocks(), "write " .. i .. " marks its block stale")
      local ia = encode(m)
      local ib = encode(u)
      assert.equal(LAYERS, m:packed_blocks())
      assert.is_true(maxdiff(ia, ib) <= 1e-5, ("write %d: packed and unpacked differ by %g"):format(i, maxdiff(ia, ib)))
      m:close() u:close()
    end
  end)

  it("include the patch embedding, rebuilt after a write", function()
    local m = clip.load(TINY, { tokenizer = false })
    local u = clip.load(TINY, { tokenizer = false, pack = false })
    local a0, b0 = encode(m), encode(u)
    assert.is_true(maxdiff(a0, b0) <= 1e-5)
    local pn = "vision_model.embeddings.patch_embedding.weight"
    m:param(pn):scale_(-0.5) u:param(pn):scale_(-0.5)
    local a1, b1 = encode(m), encode(u)
    assert.is_true(maxdiff(a1, a0) > 1e-3, "the write changed the embeddings")
    assert.is_true(maxdiff(a1, b1) <= 1e-5, "packed and unpacked agree after the write: " .. maxdiff(a1, b1))
    m:close() u:close()
  end)

  it("are rebuilt after an optimizer step on a trainable block", function()
    local m = clip.load(TINY, { tokenizer = false })
    local u = clip.load(TINY, { tokenizer = false, pack = false })
    for _, model in ipairs({ m, u }) do
      encode(model)
      local loss = clip.loss.MultipleNegativesRankingLoss(model, { modalities = { anchor = "image", positive = "text" } })
      local opt = clip.optim.AdamW(model, { lr = 1e-2 })
      local n = ref.pixel_values:size(1)
      loss:backward({ anchor = ref.pixel_values, positive = table.move(js.input_ids, 1, n, 1, {}) })
      opt:step()
    end
    local ia, ta = encode(m)
    local ib, tb = encode(u)
    assert.is_true(maxdiff(ia, ib) <= 1e-5, "image embeds after a step differ by " .. maxdiff(ia, ib))
    assert.is_true(maxdiff(ta, tb) <= 1e-5, "text embeds after a step differ by " .. maxdiff(ta, tb))
    m:close() u:close()
  end)

  it("release mapped weights that then read back as the file's bytes", function()
    -- blocks of 256 x 1024 weights span many pages, so packing drops whole pages
    local cfg = {
      projection_dim = 64,
      text_config = { hidden_size = 256, intermediate_size = 1024, num_hidden_layers = 1,
        num_attention_heads = 4, max_position_embeddings = 16, vocab_size = 64 },
      vision_config = { hidden_size = 256, intermediate_size = 1024, num_hidden_layers = 1,
        num_attention_heads = 4, image_size = 32, patch_size = 16 },
    }
    local dir = H.tmpdir() .. "/packed-model"
    local g = clip.model.new(cfg, { seed = 3 })
    g:save(dir)
    g:close()
    local file = clip.load_safetensors(dir .. "/model.safetensors")
    local m = clip.load(dir, { tokenizer = false })
    local u = clip.load(dir, { tokenizer = false, pack = false })
    local px = core.randn({ 2, 3, 32, 32 }, 9)
    local ids = { { 1, 5, 9, 63 }, { 1, 7, 63 } }
    local a1 = m:encode_images(px)
    local t1 = m:encode_texts(ids)
    if has then assert.equal(2, m:packed_blocks()) end
    for name, p in m:named_parameters() do
      assert.is_true(maxdiff(p.data, file[name]) == 0, name .. " reads back the file's values")
    end
    H.assert_close(a1, u:encode_images(px), { atol = 1e-5, label = "packed vs unpacked image" })
    H.assert_close(t1, u:encode_texts(ids), { atol = 1e-5, label = "packed vs unpacked text" })
    -- 100 images x 5 tokens = 500 rows: the packed GEMMs run in chunks of 400 rows
    local many = core.randn({ 100, 3, 32, 32 }, 10)
    H.assert_close(m:encode_images(many), u:encode_images(many), { atol = 1e-5, label = "500 rows, chunked" })
    -- a written (copy-on-write) weight is kept, never dropped: packing again keeps the write
    local w = m:param("text_model.encoder.layers.0.mlp.fc2.weight")
    w:scale_(2)
    u:param("text_model.encoder.layers.0.mlp.fc2.weight"):scale_(2)
    local t2 = m:encode_texts(ids)
    H.assert_close(t2, u:encode_texts(ids), { atol = 1e-5, label = "after a write" })
    assert.is_true(maxdiff(m:param("text_model.encoder.layers.0.mlp.fc2.weight"),
      file["text_model.encoder.layers.0.mlp.fc2.weight"] * 2) == 0, "the write survives packing")
    m:close() u:close()
  end)
end)

describe("half-precision models (clip.load(dir, {half = true}))", function()
  local function encode(m, dir)
    local ref = clip.load_safetensors(dir .. "/reference.safetensors")
    local js = clip.json.decode(H.read(dir .. "/reference.json"))
    return m:encode_images(ref.pixel_values), m:encode_texts(js.input_ids)
  end

  for _, c in ipairs({ { "tiny-gelu-fp16", "F16" }, { "tiny-bf16", "BF16" } }) do
    local name, dtype = c[1], c[2]
    local dir = H.fixtures .. "models/" .. name

    it(name .. ": keeps " .. dtype .. " weights and gives the float32 model's embeddings exactly", function()
      local h = clip.load(dir, { tokenizer = false, half = true })
      local f = clip.load(dir, { tokenizer = false })
      if not has then
        assert.is_nil(h:is_half()) -- no packed kernel: loads as float32
      else
        assert.equal(dtype, h:is_half())
        assert.equal(h.config.text_config.num_hidden_layers + h.config.vision_config.num_hidden_layers,
          h:packed_blocks(), "packed at load")
      end
      assert.is_nil(f:is_half())
      local ih, th = encode(h, dir)
      local i_f, t_f = encode(f, dir)
      assert.equal(0, maxdiff(ih, i_f), "image embeds")
      assert.equal(0, maxdiff(th, t_f), "text embeds")
      -- against PyTorch, at the parity tolerance of spec/model_spec.lua
      local ref = clip.load_safetensors(dir .. "/reference.safetensors")
      H.assert_close(ih, ref.image_embeds, { atol = 1e-4, label = "half vs PyTorch image" })
      H.assert_close(th, ref.text_embeds, { atol = 1e-4, label = "half vs PyTorch text" })
      h:close() f:close()
    end)

    it(name .. ": becomes float32 when its parameters are used, with the same values", function()
      local h = clip.load(dir, { tokenizer = false, half = true })
      local f = clip.load(dir, { tokenizer = false })
      encode(h, dir)
      local pn = "text_model.encoder.layers.0.mlp.fc1.weight"
      assert.equal(0, maxdiff(h:param(pn), f:param(pn)))
      assert.is_nil(h:is_half())
      assert.equal(0, maxdiff(h:param("text_model.embeddings.token_embedding.weight"),
        f:param("text_model.embeddings.token_embedding.weight")))
      local ih, th = encode(h, dir)
      local i_f, t_f = encode(f, dir)
      assert.equal(0, maxdiff(ih, i_f), "image embeds after conversion")
      assert.equal(0, maxdiff(th, t_f), "text embeds after conversion")
      h:close() f:close()
    end)

    it(name .. ": trains like the float32 model", function()
      local ref = clip.load_safetensors(dir .. "/reference.safetensors")
      local js = clip.json.decode(H.read(dir .. "/reference.json"))
      local n = ref.pixel_values:size(1)
      local b = { anchor = ref.pixel_values, positive = table.move(js.input_ids, 1, n, 1, {}) }
      for _, set in ipairs({ "projections", "all" }) do
        local vals, embs = {}, {}
        for _, half in ipairs({ true, false }) do
          local m = clip.load(dir, { tokenizer = false, half = half })
          if set == "projections" then m:train_only({ "projection" }) end
          local loss = clip.loss.MultipleNegativesRankingLoss(m, { modalities = { anchor = "image", positive = "text" } })
          local opt = clip.optim.AdamW(m, { lr = 1e-2 })
          vals[#vals + 1] = loss:backward(b)
          opt:step()
          embs[#embs + 1] = m:encode_images(ref.pixel_values)
          -- training the projections leaves the half weights alone; training everything
          -- reads them, and the model became float32
          if half and set == "projections" and has then assert.is_not_nil(m:is_half()) end
          if set == "all" then assert.is_nil(m:is_half()) end
          m:close()
        end
        assert.equal(vals[2], vals[1], set .. ": loss")
        assert.equal(0, maxdiff(embs[1], embs[2]), set .. ": embeddings after a step")
      end
    end)
  end

  it("an F16 checkpoint loaded as float32 keeps only the packs of its block weights, converted back on use", function()
    local dir = H.fixtures .. "models/tiny-gelu-fp16"
    local m = clip.load(dir, { tokenizer = false })
    local u = clip.load(dir, { tokenizer = false, pack = false })
    assert.is_false(m.core:lazy())
    local i1, t1 = encode(m, dir)
    local iu, tu = encode(u, dir)
    assert.equal(has, m.core:lazy(), "float copies dropped after packing")
    assert.equal(0, maxdiff(i1, encode(m, dir)), "same embeddings from the packs alone")
    H.assert_close(i1, iu, { atol = 1e-5 }) H.assert_close(t1, tu, { atol = 1e-5 })
    local file = clip.load_safetensors(dir .. "/model.safetensors")
    for name, p in m:named_parameters() do
      assert.equal(0, maxdiff(p.data, file[name]), name .. " converted back")
    end
    assert.is_false(m.core:lazy())
    -- written weights are never dropped: the write survives repacking
    local pn = "vision_model.encoder.layers.0.mlp.fc2.weight"
    m:param(pn):scale_(-1) u:param(pn):scale_(-1)
    H.assert_close(m:encode_images(clip.load_safetensors(dir .. "/reference.safetensors").pixel_values),
      u:encode_images(clip.load_safetensors(dir .. "/reference.safetensors").pixel_values), { atol = 1e-5 })
    assert.equal(0, maxdiff(m:param(pn), file[pn] * -1))
    m:close() u:close()
  end)

  it("never frees a float copy a view points at (repacking after set_packing)", function()
    local dir = H.fixtures .. "models/tiny-gelu-fp16"
    local m = clip.load(dir, { tokenizer = false })
    local file = clip.load_safetensors(dir .. "/model.safetensors")
    local pn = "text_model.encoder.layers.0.mlp.fc1.weight"
    local w = m:param(pn) -- converted float copy, viewed from here on
    m:set_packing(false)
    m:set_packing(true)
    encode(m, dir) -- packs again: the viewed copy must stay
    assert.equal(0, maxdiff(w, file[pn]))
    collectgarbage()
    assert.equal(0, maxdiff(w, file[pn]))
    m:close()
  end)

  it("a checkpoint not uniformly half loads as float32", function()
    local src = H.fixtures .. "models/tiny-gelu-fp16"
    local dir = H.tmpdir() .. "/mixed-half"
    os.execute(("mkdir -p %q && cp %q/config.json %q/preprocessor_config.json %q/"):format(dir, src, src, dir))
    local t = clip.load_safetensors(src .. "/model.safetensors")
    local a, b, map = {}, {}, {}
    for k, v in pairs(t) do
      if k:match("layers%.0%.mlp%.fc1") then b[k] = v; map[k] = "b.safetensors"
      else a[k] = v; map[k] = "a.safetensors" end
    end
    clip.save_safetensors(dir .. "/a.safetensors", a, { dtype = "F16" })
    clip.save_safetensors(dir .. "/b.safetensors", b, { dtype = "F32" })
    local f = assert(io.open(dir .. "/model.safetensors.index.json", "w"))
    f:write(clip.json.encode({ metadata = {}, weight_map = map }))
    f:close()
    local h = clip.load(dir, { tokenizer = false, half = true })
    assert.is_nil(h:is_half())
    local g = clip.load(src, { tokenizer = false })
    local ref = clip.load_safetensors(src .. "/reference.safetensors")
    H.assert_close(h:encode_images(ref.pixel_values), g:encode_images(ref.pixel_values), { atol = 1e-6 })
    h:close() g:close()
  end)
end)
