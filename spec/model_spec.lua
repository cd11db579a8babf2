-- spec/model_spec.lua - loading checkpoints and the two encoders against the
-- PyTorch reference (spec/fixtures/make_models.py). Tolerance: atol 1e-4 on
-- every output (docs/numerics.md).
local clip = require "clip"
local H = require "spec.helpers"

local MODELS = H.fixtures .. "models/"
local ATOL = 1e-4

local function ref_of(dir)
  local ref = clip.load_safetensors(dir .. "/reference.safetensors")
  local js = clip.json.decode(H.read(dir .. "/reference.json"))
  return ref, js
end

local function cp(src, dst)
  assert(os.execute(("cp -r '%s' '%s'"):format(src, dst)))
end

local cases = {
  { "tiny", "model.safetensors", true },
  { "tiny-gelu-fp16", nil, false },
  { "tiny-bf16", nil, false },
  { "tiny-sharded", nil, false },
  -- tiny's files in other layouts, assembled by H.layout in a temporary directory
  { "st", nil, true, layout = true },
  { "st-root", nil, true, layout = true },
  { "legacy-eos", nil, true, layout = true },
}

describe("model parity with PyTorch", function()
  for _, case in ipairs(cases) do
    local name, has_tok = case[1], case[3]
    describe(name, function()
      local dir = MODELS .. name
      local model, ref, js
      setup(function()
        if case.layout then dir = H.layout(name) end
        model = clip.load(dir, { tokenizer = has_tok })
        ref, js = ref_of(dir)
      end)
      teardown(function()
        model:close()
        if case.layout then H.rmtree(dir) end
      end)

      it("embeds images (projection, pooled, hidden states)", function()
        local emb = model:encode_images(ref.pixel_values)
        H.assert_close(emb, ref.image_embeds, { atol = ATOL, label = name .. " image_embeds" })
        local e2, ex = model.core:encode_pixels(ref.pixel_values, { pooled = true, last_hidden = true, capture_layer = 0 })
        H.assert_close(e2, ref.image_embeds, { atol = ATOL, label = "image_embeds" })
        H.assert_close(ex.pooled, ref.vision_pooled, { atol = ATOL, label = "vision_pooled" })
        H.assert_close(ex.last_hidden, ref.vision_last_hidden, { atol = ATOL, label = "vision_last_hidden" })
        H.assert_close(ex.captured, ref.vision_hidden_1, { atol = ATOL, label = "vision_hidden_1" })
      end)

      it("equals the naive twin of both towers (encoder_ref.c)", function()
        H.assert_close(model.core:encode_pixels(ref.pixel_values), model.core:encode_ref(ref.pixel_values),
          { atol = 2e-5, label = "fast vs naive image tower" })
        H.assert_close(model.core:encode_ids(js.input_ids), model.core:encode_ref(js.input_ids),
          { atol = 2e-5, label = "fast vs naive text tower" })
      end)

      it("embeds token ids (projection, pooled, hidden states)", function()
        local emb = model:encode_texts(js.input_ids)
        H.assert_close(emb, ref.text_embeds, { atol = ATOL, label = name .. " text_embeds" })
        local _, ex = model.core:encode_ids(js.input_ids, { pooled = true, last_hidden = true, capture_layer = 0 })
        H.assert_close(ex.pooled, ref.text_pooled, { atol = ATOL, label = "text_pooled" })
        H.assert_close(ex.last_hidden, ref.text_last_hidden, { atol = ATOL, label = "text_last_hidden" })
        H.assert_close(ex.captured, ref.text_hidden_1, { atol = ATOL, label = "text_hidden_1" })
        for i, p in ipairs(js.pool_index) do
          assert.equal(p + 1, ex.eos_index[i], "pooled position of sequence " .. i)
        end
      end)

      if has_tok then
        it("embeds a full 77-token sequence", function()
          local e = model:encode_texts(js.input_ids_long)
          H.assert_close(e, ref.text_embeds_long, { atol = ATOL, label = "text_embeds_long" })
        end)
      end

      if name == "legacy-eos" then
        it("is tiny with the legacy text config and preprocessor form", function()
          local t = model.config.text_config
          assert.same({ 0, 2, 1 }, { t.bos_token_id, t.eos_token_id, t.pad_token_id })
          assert.equal("argmax", js.pooling)
          local image = require "clip.image"
          assert.same(image.processor(MODELS .. "tiny"):config(), image.processor(dir):config())
        end)
      end

      it("gives logits_per_image and logit_scale", function()
        H.assert_close(model.logit_scale, ref.logit_scale, { atol = 1e-6, label = "logit_scale" })
        local l = model:logits(model:encode_images(ref.pixel_values), model:encode_texts(js.input_ids))
        H.assert_close(l, ref.logits_per_image, { atol = 1e-3, label = "logits_per_image" })
      end)
    end)
  end
end)

describe("model loading", function()
  local tiny = MODELS .. "tiny"
  local tmp
  setup(function() tmp = H.tmpdir() end)
  teardown(function() os.execute("rm -rf '" .. tmp .. "'") end)

  it("exposes the parsed config and counts parameters", function()
    local m = clip.load(tiny)
    assert.equal("quick_gelu", m.config.text_config.hidden_act)
    assert.equal(48, m.config.vision_config.hidden_size)
    assert.equal(24, m.config.projection_dim)
    local n = 0
    for _, p in ipairs(m:parameter_info()) do n = n + p.numel end
    assert.equal(n, m:num_parameters())
    assert.equal("text_model.embeddings.token_embedding.weight", m:parameter_info()[1].name)
    m:close()
    local g = clip.load(MODELS .. "tiny-gelu-fp16", { tokenizer = false })
    assert.equal("gelu", g.config.vision_config.hidden_act)
    assert.equal("F16", g:parameter_info()[1].dtype)
    g:close()
  end)

  it("tokenizes tiny's texts to the ids make_models.py recorded", function()
    -- tiny's tokenizer is CLIP's vocabulary cut to its first 3582 merges, the
    -- special tokens renumbered to 4094/4095 (spec/fixtures/make_models.py);
    -- text_ids were computed by make_tokens.py's Python BPE over those files
    local m <close> = clip.load(tiny)
    local _, js = ref_of(tiny)
    local t = m.config.text_config
    assert.same({ 4096, 4094, 4095 }, { t.vocab_size, t.bos_token_id, t.eos_token_id })
    assert.equal(t.vocab_size, m.tokenizer:vocab_size())
    assert.equal(8, #js.texts)
    assert.equal(#js.texts, #js.text_ids)
    for i, text in ipairs(js.texts) do
      assert.same(js.text_ids[i], m:tokenize(text), ("text %d %q"):format(i, text))
    end
    -- the full vocabulary gives the same tokens wherever its ids all lie below
    -- the cut (special ids mapped), and other pieces for the rare words
    local full <close> = require("clip.tokenizer").load(H.fixtures .. "tokenizer")
    local same, differ = 0, 0
    for i, text in ipairs(js.texts) do
      local ids, below = full:encode(text), true
      for k, id in ipairs(ids) do
        if id == 49406 then ids[k] = 4094
        elseif id == 49407 then ids[k] = 4095
        elseif id >= 4094 then below = false end
      end
      if below then
        assert.same(ids, js.text_ids[i], ("text %d %q"):format(i, text))
        same = same + 1
      else
        assert.are_not.same(ids, js.text_ids[i])
        differ = differ + 1
      end
    end
    assert.is_true(same >= 4 and differ >= 2, same .. " same, " .. differ .. " differ")
  end)

  it("maps fp32 weights instead of copying them", function()
    local m = clip.load(tiny)
    for _, p in ipairs(m:parameter_info()) do
      assert.is_true(p.mapped, p.name .. " is mapped")
    end
    m:close()
    local h = clip.load(MODELS .. "tiny-bf16", { tokenizer = false })
    assert.is_false(h:parameter_info()[1].mapped)
    h:close()
  end)

  it("counts the parameters of real architectures exactly", function()
    local function count(cfg)
      local n = 0
      for _, p in ipairs(clip.core.config_layout(clip.json.encode(cfg))) do n = n + p.numel end
      return n
    end
    local empty = setmetatable({}, { __index = function() return nil end })
    assert.equal(151277313, count({ projection_dim = 512, text_config = { vocab_size = 49408 }, vision_config = { patch_size = 32 } }))
    assert.equal(149620737, count({ projection_dim = 512, text_config = { vocab_size = 49408 }, vision_config = { patch_size = 16 } }))
    local l14 = { projection_dim = 768,
      text_config = { hidden_size = 768, intermediate_size = 3072, num_attention_heads = 12 },
      vision_config = { hidden_size = 1024, intermediate_size = 4096, num_attention_heads = 16, num_hidden_layers = 24, patch_size = 14 } }
    assert.equal(427616513, count(l14))
    l14.vision_config.image_size = 336
    assert.equal(427944193, count(l14))
    local _ = empty
  end)

  it("splits batches without changing results and pads id lists", function()
    local m = clip.load(tiny)
    local ref, js = ref_of(tiny)
    H.assert_close(m:encode_images(ref.pixel_values, { batch_size = 2 }), ref.image_embeds, { atol = ATOL })
    H.assert_close(m:encode_texts(js.input_ids, { batch_size = 3 }), ref.text_embeds, { atol = ATOL })
    -- unpadded lists give the same embeddings (padding after EOS changes nothing)
    local short = {}
    for i, ids in ipairs(js.input_ids) do short[i] = table.move(ids, 1, js.lengths[i], 1, {}) end
    H.assert_close(m:encode_texts(short), ref.text_embeds, { atol = ATOL, label = "unpadded" })
    local n = m:encode_texts(js.input_ids, { normalize = true })
    H.assert_close(n, ref.text_embeds:normalize(), { atol = ATOL })
    m:close()
  end)

  it("rejects bad inputs with clear errors", function()
    local m = clip.load(tiny)
    local function err(f, ...)
      local ok, e = pcall(f, ...)
      assert.is_false(ok)
      return e
    end
    assert.matches("expected {n,3,32,32}", err(m.encode_images, m, clip.zeros({ 1, 3, 16, 16 })))
    assert.matches("token id 4096 .*outside the vocabulary of 4096", err(m.encode_texts, m, { { 4094, 4096, 4095 } }))
    assert.matches("exceed max_position_embeddings", err(m.encode_texts, m, { (function() local t = {} for i = 1, 78 do t[i] = 1 end return t end)() }))
    assert.matches("empty batch", err(m.encode_texts, m, {}))
    assert.matches("empty batch", err(m.encode_images, m, {}))
    local nan = clip.zeros({ 1, 3, 32, 32 })
    nan:set(1, 2, 3, 4, 0 / 0)
    assert.matches("NaN", err(m.encode_images, m, nan))
    m:close()
    assert.matches("closed", err(m.encode_images, m, clip.zeros({ 1, 3, 32, 32 })))
    m:close() -- closing twice is fine
  end)

  it("works as a <close> variable", function()
    local core
    do
      local m <close> = clip.load(tiny)
      core = m.core
      assert.is_false(core:is_closed())
    end
    assert.is_true(core:is_closed())
  end)

  local function bad_dir(name, edit)
    local d = tmp .. "/" .. name
    os.execute("rm -rf '" .. d .. "'")
    cp(tiny, d)
    edit(d)
    return d
  end

  local function load_err(d, opts)
    local ok, e = pcall(clip.load, d, opts)
    assert.is_false(ok, "expected an error")
    return e
  end

  it("names the file when config.json is missing or wrong", function()
    local e = load_err(tmp .. "/nowhere")
    assert.matches("missing config.json", e)
    local d = bad_dir("cfgtype", function(d)
      local s = H.read(d .. "/config.json"):gsub('"hidden_size": 32', '"hidden_size": "32"')
      local f = io.open(d .. "/config.json", "w") f:write(s) f:close()
    end)
    e = load_err(d)
    assert.truthy(e:find("config.json", 1, true))
    assert.matches("text_config.hidden_size must be an integer", e)
    d = bad_dir("cfgjson", function(d)
      local f = io.open(d .. "/config.json", "w") f:write("{oops") f:close()
    end)
    assert.matches("config.json: not valid JSON", load_err(d))
  end)

  it("names the tensor when a shape disagrees with config.json", function()
    local d = bad_dir("shape", function(d)
      local s = H.read(d .. "/config.json"):gsub('"intermediate_size": 72', '"intermediate_size": 64')
      local f = io.open(d .. "/config.json", "w") f:write(s) f:close()
    end)
    local e = load_err(d)
    assert.matches("text_model.encoder.layers.0.mlp.fc1.weight' has shape %[72, 32%], but config.json implies %[64, 32%]", e)
    assert.truthy(e:find("model.safetensors", 1, true))
  end)

  it("names the tensor when one is missing, and tolerates extra keys", function()
    local d = bad_dir("missing", function(d)
      local t = clip.load_safetensors(d .. "/model.safetensors")
      t["vision_model.post_layernorm.bias"] = nil
      t["some.unused.key"] = clip.zeros({ 2 })
      clip.save_safetensors(d .. "/model.safetensors", t)
    end)
    assert.matches("missing tensor 'vision_model.post_layernorm.bias'", load_err(d))
    local d2 = bad_dir("extra", function(d)
      local t = clip.load_safetensors(d .. "/model.safetensors")
      t["some.unused.key"] = clip.zeros({ 2 })
      clip.save_safetensors(d .. "/model.safetensors", t)
    end)
    local m = clip.load(d2)
    m:close()
  end)

  it("reports missing weights and tokenizer files", function()
    local d = bad_dir("noweights", function(d) os.remove(d .. "/model.safetensors") end)
    assert.matches("missing model.safetensors", load_err(d))
    d = bad_dir("notok", function(d) os.remove(d .. "/vocab.json") end)
    assert.matches("missing tokenizer files", load_err(d))
    local m = clip.load(d, { tokenizer = false })
    m:close()
  end)

  it("reports a truncated weights file", function()
    local d = bad_dir("trunc", function(d)
      local s = H.read(d .. "/model.safetensors")
      local f = io.open(d .. "/model.safetensors", "wb") f:write(s:sub(1, #s // 2)) f:close()
    end)
    local e = load_err(d)
    assert.matches("model.safetensors", e)
    assert.matches("out of range", e)
  end)
end)

describe("MLP rows padded apart", function()
  -- intermediate sizes that are multiples of 512 put the MLP activations' rows 16 floats
  -- apart beyond I (encoder.c mlp_stride: no rows a multiple of 2 KiB apart); the fast towers
  -- still equal their naive twins, for the packed and the pooled (last layer) paths
  it("the fast towers equal their naive twins with intermediate sizes 512 and 1024", function()
    local m = clip.model.new({ projection_dim = 32,
      text_config = { hidden_size = 64, intermediate_size = 1024, num_hidden_layers = 2,
        num_attention_heads = 4, max_position_embeddings = 16, vocab_size = 100 },
      vision_config = { hidden_size = 64, intermediate_size = 512, num_hidden_layers = 2,
        num_attention_heads = 4, image_size = 32, patch_size = 8 } }, { seed = 3 })
    for _, p in ipairs(m:parameter_info()) do
      if p.name:match("%.bias$") then m:param(p.name):copy(clip.randn(p.shape, 8) * 0.05) end
    end
    local px = clip.randn({ 9, 3, 32, 32 }, 2) -- 9 x 17 = 153 rows: two row blocks
    H.assert_close(m.core:encode_pixels(px), m.core:encode_ref(px),
      { atol = 1e-5, rtol = 1e-5, label = "image tower, I = 512" })
    local ids = {}
    for b = 1, 9 do
      ids[b] = { 98 }
      for t = 2, 15 do ids[b][t] = (b * 13 + t * 7) % 90 + 1 end
      ids[b][16] = 99
    end
    H.assert_close(m.core:encode_ids(ids), m.core:encode_ref(ids),
      { atol = 1e-5, rtol = 1e-5, label = "text tower, I = 1024" })
    m:close()
  end)
end)

describe("ViT-B/32 shapes #slow", function()
  it("the fast towers equal their naive twins at ViT-B/32 shapes (224px, 50 tokens, 77-token text)", function()
    local m = clip.model.new({ projection_dim = 512, text_config = {}, vision_config = {} }, { seed = 1 })
    -- non-trivial LayerNorm and bias values, as the fixtures use
    for _, p in ipairs(m:parameter_info()) do
      local t = m:param(p.name)
      if p.name:match("norm%d?%.weight$") or p.name:match("layrnorm%.weight$") then
        t:copy(clip.randn(p.shape, 7) * 0.1 + 1)
      elseif p.name:match("%.bias$") then
        t:copy(clip.randn(p.shape, 8) * 0.05)
      end
    end
    local px = clip.randn({ 2, 3, 224, 224 }, 1)
    local fast = m.core:encode_pixels(px)
    local naive = m.core:encode_ref(px)
    assert.same({ 2, 512 }, fast:shape())
    H.assert_close(fast, naive, { atol = 1e-4, rtol = 1e-4, label = "B/32 image tower" })
    local ids = { 49406 }
    for i = 2, 76 do ids[i] = (i * 7919) % 49000 + 1 end
    ids[77] = 49407
    local short = { 49406, 320, 1125, 539, 320, 2368, 49407 }
    H.assert_close(m.core:encode_ids({ ids, short }), m.core:encode_ref({ ids, short }),
      { atol = 1e-4, rtol = 1e-4, label = "B/32 text tower" })
    m:close()
  end)
end)

describe("image and text groups", function()
  -- encode_pixels and encode_ids run the layers on groups of about one GEMM chunk of rows
  -- (encoder.c's tower_group). In a child process with a 40-row chunk (the tiny tower's 17
  -- rows per image: groups of 2; 12-token texts: groups of 3), a batch of 5 against each one
  -- alone, with every output asked for, within 1e-5 (not bit for bit: the tiny towers' GEMMs
  -- take OpenBLAS or gemm.c by their row count, whose sums may depend on the rows beside; a
  -- misplaced group gives other rows' values, far outside 1e-5).
  it("gives each image and text what it gets alone", function()
    local sh = require "spec.support.shell"
    local probe = [[lua5.4 -e '
      local c = require("clip"); local H = require("spec.helpers")
      local function same(a, b, what) H.assert_close(a, b, { atol = 1e-5, label = what }) end
      local m = c.load(H.fixtures .. "models/tiny", { tokenizer = false })
      local S = m.config.vision_config.image_size
      local px = c.randn({ 5, 3, S, S }, 9)
      local n = 0
      for _, opts in ipairs({ {}, { pooled = true, last_hidden = true, capture_layer = 0 } }) do
        local e, ex = m.core:encode_pixels(px, opts)
        for i = 1, 5 do
          local e1, ex1 = m.core:encode_pixels(px:rows(i, i):clone(), opts)
          same(e:rows(i, i), e1, "embeds of image " .. i)
          for _, k in ipairs({ "pooled", "last_hidden", "captured" }) do
            if ex and ex[k] then
              same(ex[k]:rows(i, i), ex1[k], k .. " of image " .. i)
              n = n + 1
            end
          end
        end
      end
      -- texts: 12 tokens (groups of 3), end-of-text at different positions (each group
      -- computes up to its own last one)
      local ids, eot = {}, { 3, 5, 7, 9, 12 }
      for b = 1, 5 do
        ids[b] = {}
        for t = 1, 12 do ids[b][t] = (b * 37 + t * 11) % 4000 + 1 end
        local p = eot[b]
        ids[b][p] = 4095
      end
      for _, opts in ipairs({ {}, { pooled = true, last_hidden = true, capture_layer = 0 } }) do
        local e, ex = m.core:encode_ids(ids, opts)
        for i = 1, 5 do
          local e1, ex1 = m.core:encode_ids({ ids[i] }, opts)
          same(e:rows(i, i), e1, "text embeds of sequence " .. i)
          for _, k in ipairs({ "pooled", "last_hidden", "captured" }) do
            if ex and ex[k] then
              same(ex[k]:rows(i, i), ex1[k], "text " .. k .. " of sequence " .. i)
              n = n + 1
            end
          end
        end
      end
      print("checked " .. n)']]
    local out = sh.must("CLIP_PACKED_MAX_M=40 " .. probe)
    assert.truthy(out:find("checked 30", 1, true), out)
  end)
end)
