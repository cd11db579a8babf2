-- spec/lifecycle_spec.lua - objects that own memory (models, tokenizers,
-- images, tensors and views) under every lifecycle a host can put them
-- through (issue #5): use after close(), double close, <close> variables,
-- garbage collection (and finalizers closing things) in the middle of an
-- iteration or of a call, and two models used from two Lua states in two
-- threads at once. Nothing may crash; misuse gets a clear error.
-- Run under `make test-asan` / `make test-valgrind` to catch what does not
-- crash outright (use after free, leaks).
local clip = require "clip"
local H = require "spec.helpers"

local TINY = H.fixtures .. "models/tiny"
local IMAGE = H.fixtures .. "images/natural.jpg"
local root = H.spec_dir .. "../"

local function err_of(f, ...)
  local ok, e = pcall(f, ...)
  assert(not ok, "expected an error")
  return tostring(e)
end

local function closed_error(f, ...)
  local e = err_of(f, ...)
  assert(e:find("closed", 1, true), "expected a 'closed' error, got: " .. e)
end

describe("use after close", function()
  it("every method of a closed model raises 'model is closed'", function()
    local m = clip.load(TINY)
    local px = clip.zeros({ 1, 3, 32, 32 })
    m:close()
    assert.is_true(m:is_closed())
    closed_error(m.encode_texts, m, { "a cat" })
    closed_error(m.encode_texts, m, { { 4094, 320, 4095 } })
    closed_error(m.encode_images, m, px)
    closed_error(m.encode_images, m, { IMAGE })
    closed_error(m.param, m, "logit_scale")
    closed_error(m.parameter_info, m)
    closed_error(m.num_parameters, m)
    closed_error(m.tokenize, m, "a cat")
    closed_error(m.save, m, H.tmpdir() .. "/never")
    closed_error(function() return m.logit_scale end)
    closed_error(function() for _ in m:named_parameters() do end end)
    -- and the core object under it, method by method
    local mc = m.core
    local calls = {
      config = {}, config_json = {}, param_info = {}, param = { "logit_scale" },
      encode_pixels = { px }, encode_ids = { { { 4094, 4095 } } },
      set_requires_grad = { "logit_scale", true }, requires_grad = { "logit_scale" },
      grad = { "logit_scale", true }, alloc_grads = {}, zero_grad = {},
      trainable = { "vision" }, forward_train = { px }, project = { clip.zeros({ 1, 48 }), "vision" },
      project_backward = { clip.zeros({ 1, 48 }), clip.zeros({ 1, 24 }), "vision" },
    }
    for name, args in pairs(calls) do
      closed_error(mc[name], mc, table.unpack(args))
    end
  end)

  it("a closed tokenizer and a closed image raise 'closed'", function()
    local tok = clip.tokenizer.load(TINY)
    tok:close()
    assert.is_true(tok:closed())
    for _, f in ipairs({ "encode", "decode", "normalize", "pre_tokenize", "vocab_size", "token_to_id",
      "id_to_token" }) do
      local arg = f == "decode" and { 320 } or f == "id_to_token" and 320 or "a cat"
      closed_error(tok[f], tok, arg)
    end
    local img = clip.image.load(IMAGE)
    img:close()
    closed_error(img.bytes, img)
    closed_error(img.pixel, img, 1, 1)
    closed_error(clip.image.resize, img, 4, 4)
    closed_error(clip.image.center_crop, img, 4, 4)
    local proc = clip.image.processor()
    closed_error(proc.preprocess, proc, img)
  end)

  it("a parameter view taken before close() stays valid until it is collected", function()
    local m = clip.load(TINY)
    local w = m:param("visual_projection.weight")
    local before = w:totable()
    m:close()
    assert.is_true(m:is_closed())
    collectgarbage()
    collectgarbage()
    assert.same(before, w:totable())
    w:fill(1) -- writing into the orphaned weights is harmless
    assert.equal(1, w:get(1, 1))
    w = nil
    collectgarbage()
    collectgarbage() -- the weights go now (ASan/valgrind would see a leak or a bad free)
  end)
end)

describe("double close and collection after close", function()
  it("close() is idempotent on every object, and __gc after close is harmless", function()
    local m = clip.load(TINY)
    m:close()
    m:close()
    m.core:close()
    local tok = clip.tokenizer.load(TINY)
    tok:close()
    tok:close()
    local img = clip.image.load(IMAGE)
    img:close()
    img:close()
    m, tok, img = nil, nil, nil
    collectgarbage()
    collectgarbage()
  end)

  it("closing a model twice with views outstanding frees once", function()
    local m = clip.load(TINY)
    local views = {}
    for i, it in ipairs(m:parameter_info()) do
      if i % 7 == 0 then views[#views + 1] = m:param(it.name) end
    end
    m:close()
    m:close()
    assert.is_true(#views > 3)
    for _, v in ipairs(views) do v:sum() end
    views = nil
    collectgarbage()
    collectgarbage()
  end)
end)

describe("<close> variables", function()
  it("close a model, a tokenizer and an image at the end of the block", function()
    local mref, tref, iref
    do
      local m <close> = clip.load(TINY)
      local tok <close> = clip.tokenizer.load(TINY)
      local img <close> = clip.image.load(IMAGE)
      mref, tref, iref = m, tok, img
      assert.is_false(m:is_closed())
      assert.equal(24, m:encode_texts({ "a cat" }):size(2))
    end
    assert.is_true(mref:is_closed())
    assert.is_true(tref:closed())
    assert.is_true(iref:is_closed())
  end)

  it("close them when the block raises, and the error comes through", function()
    local mref, tref
    local ok, e = pcall(function()
      local m <close> = clip.load(TINY)
      local tok <close> = clip.tokenizer.load(TINY)
      mref, tref = m, tok
      m:encode_texts({ "bad \xff" })
    end)
    assert.is_false(ok)
    assert.truthy(tostring(e):find("invalid UTF-8", 1, true))
    assert.is_true(mref:is_closed())
    assert.is_true(tref:closed())
  end)

  it("a core model closed by hand inside its <close> block is closed once", function()
    do
      local mc <close> = clip.core.model_load(TINY)
      mc:close()
    end
  end)
end)

describe("garbage collection in the middle of an iteration", function()
  it("named_parameters keeps its model alive while the loop runs", function()
    local weak = setmetatable({}, { __mode = "v" })
    local n, sum = 0, 0
    do
      local m = clip.load(TINY)
      weak.m = m
      local it = m:named_parameters()
      m = nil
      for _, p in it do
        collectgarbage()
        n = n + 1
        sum = sum + p.data:numel()
      end
    end
    assert.is_true(n > 40)
    assert.is_true(sum > 0)
    collectgarbage()
    collectgarbage()
    assert.is_nil(weak.m, "the model is collected once the loop is done")
  end)

  it("closing the model in the middle of named_parameters gives 'model is closed'", function()
    local m = clip.load(TINY)
    local seen = 0
    local ok, e = pcall(function()
      for _, p in m:named_parameters() do
        seen = seen + 1
        if seen == 5 then m:close() end
        p.data:sum()
      end
    end)
    assert.is_false(ok)
    assert.truthy(tostring(e):find("model is closed", 1, true), tostring(e))
    assert.equal(5, seen)
  end)

  it("tensors of load_safetensors outlive their table, views outlive their owner", function()
    local t = clip.load_safetensors(TINY .. "/model.safetensors")
    local w = t["visual_projection.weight"]
    local first = w:get(1, 1)
    t = nil
    collectgarbage()
    collectgarbage()
    assert.equal(first, w:get(1, 1))
    local row = clip.randn({ 6, 5 }, 3):rows(2, 3)
    local r = row:totable()
    collectgarbage()
    collectgarbage()
    assert.same(r, row:totable())
  end)

  it("a model closed by a metamethod in the middle of a call raises, without a crash", function()
    -- (before the fix, encode_pixels divided by the zeroed patch size: SIGFPE)
    local mc = clip.core.model_load(TINY)
    local opts = setmetatable({}, { __index = function() mc:close() end })
    assert.equal("model is closed", err_of(mc.encode_pixels, mc, clip.zeros({ 1, 3, 32, 32 }), opts):match("model is closed"))
    local mc2 = clip.core.model_load(TINY)
    local ids = setmetatable({}, {
      __len = function() return 3 end,
      __index = function(_, k)
        if k == 2 then mc2:close() end
        return ({ 4094, 320, 4095 })[k]
      end,
    })
    assert.truthy(err_of(mc2.encode_ids, mc2, { ids }):find("model is closed", 1, true))
    local mc3 = clip.core.model_load(TINY)
    local o3 = setmetatable({}, { __index = function(_, k) if k == "capture_layer" then mc3:close() end end })
    assert.truthy(err_of(mc3.encode_ids, mc3, { { 4094, 4095 } }, o3):find("model is closed", 1, true))
  end)

  it("finalizers that close objects at any allocation inside a call never crash", function()
    -- collect all the time, so that __gc finalizers run at allocations inside
    -- the C functions; each round arms a finalizer to close the object at a
    -- different point of the call sequence. Only "closed" errors may come out.
    local mode = collectgarbage("incremental", 1, 1000) -- pause 1%: a cycle all the time
    local function stress(make, use, rounds)
      local errors = 0
      for round = 1, rounds do
        local obj = make()
        local armed = round
        for _ = 1, 12 do
          setmetatable({}, { __gc = function()
            armed = armed - 1
            if armed == 0 then obj:close() end
          end })
        end
        for _ = 1, 8 do
          local ok, e = pcall(use, obj)
          if not ok then
            errors = errors + 1
            local msg = tostring(e)
            assert(msg:find("closed", 1, true) or msg:find("empty input image", 1, true)
              or msg:find("empty image", 1, true), "unexpected error: " .. msg)
          end
        end
        obj:close()
      end
      return errors
    end
    local ok, e = pcall(function()
      stress(function() return clip.tokenizer.load(TINY) end,
        function(t) return t:encode("a photo of a cat") end, 14)
      stress(function() return clip.core.model_load(TINY) end,
        function(m) return m:encode_ids({ { 4094, 320, 1125, 4095 } }, { pooled = true }) end, 14)
      stress(function() return clip.core.model_load(TINY) end,
        function(m) return m:encode_pixels(clip.zeros({ 1, 3, 32, 32 }), { last_hidden = true }) end, 14)
      stress(function() return clip.core.model_load(TINY) end,
        function(m) return m:param_info() end, 14)
      stress(function() return clip.image.load(IMAGE) end,
        function(img) return clip.image.resize(img, 7, 5):bytes() end, 14)
    end)
    collectgarbage("incremental", 200, 100) -- Lua 5.4's defaults
    if mode == "generational" then collectgarbage("generational") end
    collectgarbage()
    assert(ok, e)
  end)
end)

describe("two models in two Lua states on two threads", function()
  local tmp
  setup(function() tmp = H.tmpdir() end)
  teardown(function() os.execute("rm -rf '" .. tmp .. "'") end)

  it("load and encode concurrently with identical results (spec/host/two_states.c)", function()
    local bin = tmp .. "/two_states"
    local cc = os.getenv("CC") or "cc"
    local build = ("cd '%s' && %s -std=c11 -O1 -g -Wall -Wextra spec/host/two_states.c " ..
      "$(pkg-config --cflags --libs lua5.4 2>/dev/null || echo '-I/usr/include/lua5.4 -llua5.4') " ..
      "-lpthread -o '%s' 2>&1"):format(root, cc, bin)
    local p = io.popen(build)
    local out = p:read("a")
    assert(p:close(), "building two_states failed:\n" .. out)
    local run = ("cd '%s' && LUA_PATH=%q LUA_CPATH=%q '%s' '%s' '%s' 15 2>&1"):format(root,
      package.path, package.cpath, bin, TINY, IMAGE)
    p = io.popen(run)
    out = p:read("a")
    local ok = p:close()
    assert(ok, "two_states failed:\n" .. out)
    assert.truthy(out:find("two_states: ok", 1, true), out)
  end)
end)
