-- spec/image_spec.lua - decoding and CLIP preprocessing against Pillow 9.4 +
-- transformers' CLIPImageProcessor (spec/fixtures/make_images.py writes the
-- inputs and the references). Decoded and cropped bytes must be identical;
-- normalized floats within 1e-6 (every value compared).
local image = require "clip.image"
local core = require "clip.core"
local H = require "spec.helpers"

local DIR = H.fixtures .. "images/"
local M = dofile(DIR .. "manifest.lua")
local ATOL = 1e-6

-- reference bytes: raw files, or 8-bit RGB PNGs for big ones (decoding such a
-- PNG is itself checked against raw bytes on the small images)
local ref_cache = {}
local function ref(file)
  if not ref_cache[file] then
    if file:match("%.png$") then
      ref_cache[file] = image.load(DIR .. file):bytes()
    else
      ref_cache[file] = H.read(DIR .. file)
    end
  end
  return ref_cache[file]
end

-- compare two byte strings, failing with the first difference and its pixel
local function assert_bytes(actual, expected, w, label)
  if actual == expected then return end
  if #actual ~= #expected then
    error(("%s: %d bytes, expected %d"):format(label, #actual, #expected), 2)
  end
  local n, first = 0, nil
  for i = 1, #actual do
    if actual:byte(i) ~= expected:byte(i) then
      n = n + 1
      first = first or i
    end
  end
  local px = (first - 1) // 3
  error(("%s: %d of %d bytes differ; first at pixel (x=%d, y=%d) channel %d: got %d, expected %d")
    :format(label, n, #actual, px % w, px // w, (first - 1) % 3, actual:byte(first),
      expected:byte(first)), 2)
end

local function floats(s)
  local t = {}
  for i = 1, #s, 4 do t[#t + 1] = string.unpack("<f", s, i) end
  return t
end

-- float32 bytes against float32 bytes: identical, or within atol everywhere
local function assert_f32(actual, expected, label)
  if actual == expected then return end
  H.assert_close(floats(actual), floats(expected), { atol = ATOL, label = label })
end

-- the normalized output implied by the reference crop: lut[c][byte]
local function norm_from_lut(lut, crop, w, h)
  local parts, n = {}, w * h
  for c = 0, 2 do
    for i = 0, n - 1 do
      local o = (c * 256 + crop:byte(i * 3 + c + 1)) * 4
      parts[#parts + 1] = lut:sub(o + 1, o + 4)
    end
  end
  return table.concat(parts)
end

local procs = {}
for k, f in pairs(M.configs) do procs[k] = image.processor(DIR .. f) end

local err_of, assert_msg = H.err_of, H.assert_msg

-- ============================================================ decoding
describe("image decoding matches Pillow's convert('RGB')", function()
  for _, e in ipairs(M.images) do
    it(e.name .. " (" .. e.desc .. ", Pillow mode " .. e.mode .. ")", function()
      local img = image.load(DIR .. e.name)
      assert.are.equal(e.w, img.width)
      assert.are.equal(e.h, img.height)
      assert_bytes(img:bytes(), ref(e.decoded), e.w, e.name .. " decoded")
    end)
  end

  it("decodes bytes in memory like files", function()
    for _, name in ipairs({ "natural_prog.jpg", "interlaced_p2.png", "cmyk.jpg" }) do
      local a = image.load(DIR .. name)
      local b = image.decode(H.read(DIR .. name), name)
      assert.are.equal(a:bytes(), b:bytes())
    end
  end)
end)

-- ======================================================= preprocessing
describe("CLIPImageProcessor parity", function()
  local luts = {}
  for k, f in pairs(M.luts) do luts[k] = H.read(DIR .. f) end

  for _, e in ipairs(M.images) do
    for k, c in pairs(e.crops) do
      it(("%s, config %s: resize + crop bytes, normalized values"):format(e.name, k), function()
        local proc = procs[k]
        local img = image.load(DIR .. e.name)
        local crop = proc:resize_crop(img)
        assert.are.equal(c.w, crop.width)
        assert.are.equal(c.h, crop.height)
        local expected = ref(c.file)
        assert_bytes(crop:bytes(), expected, c.w, e.name .. " " .. k .. " crop")
        -- every normalized value: from a path and from the Image
        local want = norm_from_lut(luts[k], expected, c.w, c.h)
        local x = proc:preprocess(DIR .. e.name)
        assert.are.same({ 3, c.h, c.w }, x:shape())
        assert_f32(x:bytes(), want, e.name .. " " .. k .. " normalized")
        assert_f32(proc:preprocess(img):bytes(), want, e.name .. " " .. k .. " normalized (Image)")
        if e.norm[k] then -- the full float32 output written by numpy
          assert_f32(x:bytes(), H.read(DIR .. e.norm[k]), e.name .. " " .. k .. " reference f32")
        end
      end)
    end
  end

  it("rescale + normalize is exact for every byte value (the LUTs, computed by numpy)", function()
    local bytes = {}
    for v = 0, 255 do bytes[#bytes + 1] = string.char(v, v, v) end
    local img = image.from_bytes(256, 1, table.concat(bytes))
    for k, f in pairs(M.configs) do
      local cfg = procs[k]:config()
      cfg.do_resize, cfg.do_center_crop = false, false
      local p = image.processor(cfg)
      local x = p:preprocess(img)
      assert.are.same({ 3, 1, 256 }, x:shape())
      assert.are.equal(luts[k], x:bytes(), "config " .. k .. " (" .. f .. ")")
    end
  end)

  it("preprocess_batch stacks the single results, paths and Images mixed", function()
    local proc = procs.tiny
    local names = { "natural.jpg", "tiny_3x5.png", "gray16.png", "palette_trns.png" }
    local list = { DIR .. names[1], image.load(DIR .. names[2]), DIR .. names[3],
      image.load(DIR .. names[4]) }
    local xb = proc:preprocess_batch(list)
    assert.are.same({ 4, 3, 32, 32 }, xb:shape())
    local all = xb:bytes()
    local per = 3 * 32 * 32 * 4
    for i, name in ipairs(names) do
      local one = proc:preprocess(DIR .. name):bytes()
      assert.are.equal(one, all:sub((i - 1) * per + 1, i * per), name)
    end
  end)

  it("a bad batch element is an error naming its index and path", function()
    local proc = procs.tiny
    local msg = err_of(proc.preprocess_batch, proc,
      { DIR .. "natural.jpg", DIR .. "rgb.png", DIR .. "badcrc.png" })
    assert_msg(msg, { "item 3", "badcrc.png", "PNG decode failed", "CRC" })
    msg = err_of(proc.preprocess_batch, proc, { DIR .. "natural.jpg", DIR .. "nope.jpg" })
    assert_msg(msg, { "item 2", "nope.jpg", "No such file" })
    msg = err_of(proc.preprocess_batch, proc, { DIR .. "natural.jpg", 42 })
    assert_msg(msg, { "item 2", "number" })
    local closed = image.load(DIR .. "tiny_1x1.png")
    closed:close()
    msg = err_of(proc.preprocess_batch, proc, { closed })
    assert_msg(msg, { "item 1", "closed" })
    assert_msg(err_of(proc.preprocess_batch, proc, {}), { "empty" })
  end)

  it("without a center crop, differently sized images cannot share a batch", function()
    local p = image.processor({ do_center_crop = false, size = { shortest_edge = 16 } })
    local x = p:preprocess(DIR .. "natural.jpg")
    assert.are.same({ 3, 16, 24 }, x:shape())
    local msg = err_of(p.preprocess_batch, p, { DIR .. "natural.jpg", DIR .. "portrait.jpg" })
    assert_msg(msg, { "item 2", "portrait.jpg", "differs" })
    assert.are.same({ 2, 3, 16, 24 },
      p:preprocess_batch({ DIR .. "natural.jpg", DIR .. "natural_gray.jpg" }):shape())
  end)
end)

-- ============================================================ resizing
describe("resize and center crop", function()
  for _, c in ipairs(M.resize) do
    it(("image.resize to %dx%d, filter %d, equals Pillow"):format(c.w, c.h, c.filter), function()
      local src = image.load(DIR .. c.src)
      local out = image.resize(src, c.w, c.h, { resample = c.filter })
      assert_bytes(out:bytes(), ref(c.file), c.w, "resize")
    end)
  end

  for _, c in ipairs(M.crop) do
    it(("image.center_crop to %dx%d equals transformers (padding included)"):format(c.w, c.h), function()
      local src = image.load(DIR .. c.src)
      assert_bytes(image.center_crop(src, c.w, c.h):bytes(), ref(c.file), c.w, "center_crop")
    end)
  end

  it("the fused resize+crop equals resize then crop, on random sizes", function()
    local rng_state = 12345
    local function rnd(n) -- deterministic LCG, 1..n
      rng_state = (rng_state * 1103515245 + 12345) % 2147483648
      return rng_state % n + 1
    end
    local src = image.load(DIR .. "natural.jpg")
    for _ = 1, 25 do
      local w, h = rnd(60), rnd(60)
      local img = image.resize(src, w, h)
      local cfg = { size = { shortest_edge = rnd(40) }, crop_size = { height = rnd(48), width = rnd(48) },
        resample = ({ 1, 2, 3, 4, 5 })[rnd(5)] }
      if rnd(3) == 1 then cfg.size = { height = rnd(50), width = rnd(50) } end
      local p = image.processor(cfg)
      local fused = p:resize_crop(img)
      local W, Hh
      if cfg.size.shortest_edge then
        local n = cfg.size.shortest_edge
        if w <= h then W, Hh = n, math.floor(n * h / w) else W, Hh = math.floor(n * w / h), n end
      else
        W, Hh = cfg.size.width, cfg.size.height
      end
      local full = image.resize(img, W, Hh, { resample = cfg.resample })
      local want = image.center_crop(full, cfg.crop_size.width, cfg.crop_size.height)
      assert_bytes(fused:bytes(), want:bytes(), want.width,
        ("fused %dx%d -> %dx%d crop %dx%d f%d"):format(w, h, W, Hh, want.width, want.height, cfg.resample))
    end
  end)
end)

-- ============================================= naive twin of the resampler
-- Pillow's coefficients written plainly in Lua (doubles, like Resample.c),
-- and the two passes in integer arithmetic; plus a float resampler.
local twin = {}
do
  local f32 = function(x) return (string.unpack("f", string.pack("f", x))) end
  local c054, c046 = f32(0.54), f32(0.46)
  local function sinc(x)
    if x == 0.0 then return 1.0 end
    x = x * math.pi
    return math.sin(x) / x
  end
  twin.filters = {
    [1] = { 3.0, function(x) if -3.0 <= x and x < 3.0 then return sinc(x) * sinc(x / 3) end return 0.0 end },
    [2] = { 1.0, function(x) x = math.abs(x); if x < 1.0 then return 1.0 - x end return 0.0 end },
    [3] = { 2.0, function(x)
      local a = -0.5
      x = math.abs(x)
      if x < 1.0 then return ((a + 2.0) * x - (a + 3.0)) * x * x + 1 end
      if x < 2.0 then return (((x - 5) * x + 8) * x - 4) * a end
      return 0.0
    end },
    [4] = { 0.5, function(x) if x > -0.5 and x <= 0.5 then return 1.0 end return 0.0 end },
    [5] = { 1.0, function(x)
      x = math.abs(x)
      if x == 0.0 then return 1.0 end
      if x >= 1.0 then return 0.0 end
      x = x * math.pi
      return math.sin(x) / x * (c054 + c046 * math.cos(x))
    end },
  }
  local function trunc(v) if v < 0 then return math.ceil(v) end return math.floor(v) end

  -- bounds {xmin (0-based), n}, weights (doubles) per output index
  function twin.coeffs(inn, out, filter)
    local support, fn = twin.filters[filter][1], twin.filters[filter][2]
    local scale = inn / out
    local fs = scale < 1.0 and 1.0 or scale
    support = support * fs
    local bounds, ws = {}, {}
    for xx = 0, out - 1 do
      local center = 0.0 + (xx + 0.5) * scale
      local xmin = math.max(trunc(center - support + 0.5), 0)
      local xmax = math.min(trunc(center + support + 0.5), inn) - xmin
      local w, ww = {}, 0.0
      for x = 0, xmax - 1 do
        w[x + 1] = fn((x + xmin - center + 0.5) * (1.0 / fs))
        ww = ww + w[x + 1]
      end
      for x = 1, xmax do if ww ~= 0.0 then w[x] = w[x] / ww end end
      bounds[xx + 1], ws[xx + 1] = { xmin, xmax }, w
    end
    return bounds, ws
  end

  function twin.fixed(ws)
    local r = {}
    for i, w in ipairs(ws) do
      r[i] = {}
      for j, v in ipairs(w) do
        r[i][j] = math.tointeger(trunc(v < 0 and (-0.5 + v * 4194304) or (0.5 + v * 4194304)))
      end
    end
    return r
  end

  -- one separable pass over an array of rows of {r,g,b,...} bytes (0-based
  -- flat tables), integer (Pillow) or float arithmetic
  local function pass(src, sw, sh, out, horizontal, bounds, k, float)
    local dst, dw, dh = {}, horizontal and out or sw, horizontal and sh or out
    for y = 0, dh - 1 do
      for x = 0, dw - 1 do
        local i = horizontal and x or y
        local b, kk = bounds[i + 1], k[i + 1]
        for c = 0, 2 do
          local acc = float and 0.0 or 2097152
          for t = 0, b[2] - 1 do
            local sx, sy = x, y
            if horizontal then sx = b[1] + t else sy = b[1] + t end
            acc = acc + src[(sy * sw + sx) * 3 + c] * kk[t + 1]
          end
          local v
          if float then v = math.floor(acc + 0.5) else v = acc // 4194304 end -- arithmetic shift
          dst[(y * dw + x) * 3 + c] = math.max(0, math.min(255, v))
        end
      end
    end
    return dst, dw, dh
  end

  function twin.resize(bytes, w, h, W, Hh, filter, float)
    local px = {}
    for i = 1, #bytes do px[i - 1] = bytes:byte(i) end
    local cw, ch = w, h
    if W ~= w then
      local b, ws = twin.coeffs(w, W, filter)
      px, cw, ch = pass(px, cw, ch, W, true, b, float and ws or twin.fixed(ws), float)
    end
    if Hh ~= h then
      local b, ws = twin.coeffs(h, Hh, filter)
      px, cw, ch = pass(px, cw, ch, Hh, false, b, float and ws or twin.fixed(ws), float)
    end
    local parts = {}
    for i = 0, cw * ch * 3 - 1 do parts[i + 1] = string.char(px[i]) end
    return table.concat(parts)
  end
end

describe("resampler vs its naive twin", function()
  local rng_state = 777
  local function rnd(n)
    rng_state = (rng_state * 1103515245 + 12345) % 2147483648
    return rng_state % n + 1
  end

  it("coefficients: the C doubles and fixed-point values equal the plain Lua ones", function()
    local cases = { { 300, 224 }, { 200, 224 }, { 7, 224 }, { 224, 224 }, { 1, 5 }, { 9600, 224 }, { 5, 1 } }
    for _ = 1, 40 do cases[#cases + 1] = { rnd(500), rnd(300) } end
    for _, cs in ipairs(cases) do
      for f = 1, 5 do
        local cb, cw = core.image_resize_coeffs(cs[1], cs[2], f, "f64")
        local _, ck = core.image_resize_coeffs(cs[1], cs[2], f)
        local tb, tw = twin.coeffs(cs[1], cs[2], f)
        local tk = twin.fixed(tw)
        local label = ("%d -> %d filter %d"):format(cs[1], cs[2], f)
        assert.are.same(tb, cb, label .. " bounds")
        assert.are.same(tw, cw, label .. " weights")
        assert.are.same(tk, ck, label .. " fixed point")
      end
    end
  end)

  it("random images and sizes: C equals the integer twin exactly, the float twin within 2", function()
    for _ = 1, 30 do
      local w, h, W, Hh = rnd(24), rnd(24), rnd(40), rnd(40)
      local f = rnd(5)
      local t = {}
      for i = 1, w * h * 3 do t[i] = string.char(rnd(256) - 1) end
      local bytes = table.concat(t)
      local img = image.from_bytes(w, h, bytes)
      local got = image.resize(img, W, Hh, { resample = f }):bytes()
      local label = ("%dx%d -> %dx%d filter %d"):format(w, h, W, Hh, f)
      assert_bytes(got, twin.resize(bytes, w, h, W, Hh, f, false), W, label .. " (integer twin)")
      local fl = twin.resize(bytes, w, h, W, Hh, f, true)
      local worst = 0
      for i = 1, #got do worst = math.max(worst, math.abs(got:byte(i) - fl:byte(i))) end
      assert.is_true(worst <= 2, label .. ": float twin differs by " .. worst)
    end
  end)
end)

-- ====================================================== clip.Image object
describe("clip.Image", function()
  it("has width, height, bytes, pixel, size and a tostring", function()
    local img = image.from_bytes(2, 1, "\1\2\3\4\5\6")
    assert.are.equal(2, img.width)
    assert.are.equal(1, img.height)
    assert.are.equal("\1\2\3\4\5\6", img:bytes())
    assert.are.same({ 4, 5, 6 }, { img:pixel(2, 1) })
    assert.are.same({ 2, 1 }, { img:size() })
    assert.are.equal("clip.Image(2x1)", tostring(img))
    assert.is_true(image.is_image(img))
    assert.is_false(image.is_image({}))
    assert_msg(err_of(img.pixel, img, 3, 1), { "outside" })
  end)

  it("close is idempotent, works with <close>, and use after close raises", function()
    local img = image.load(DIR .. "rgb.png")
    img:close()
    img:close()
    assert.is_true(img.closed)
    assert.are.equal("clip.Image(closed)", tostring(img))
    assert_msg(err_of(img.bytes, img), { "closed" })
    assert_msg(err_of(function() return img.width end), { "closed" })
    assert_msg(err_of(image.resize, img, 4, 4), { "closed" })
    assert_msg(err_of(procs.tiny.preprocess, procs.tiny, img), { "closed" })
    local keep
    do
      local c <close> = image.load(DIR .. "rgb.png")
      keep = c
      assert.are.equal(120, c.width)
    end
    assert.is_true(keep.closed)
    collectgarbage()
    collectgarbage()
  end)
end)

-- ============================================================ processor
describe("image.processor", function()
  it("reads the OpenAI config (int sizes) and equals the defaults", function()
    local p = procs.openai
    assert.are.same({ shortest_edge = 224 }, p.size)
    assert.are.same({ height = 224, width = 224 }, p.crop_size)
    assert.are.same({ 0.48145466, 0.4578275, 0.40821073 }, p.mean)
    assert.are.same({ 0.26862954, 0.26130258, 0.27577711 }, p.std)
    assert.are.equal(3, p.resample)
    assert.are.equal(1 / 255, p.rescale_factor)
    assert.are.same(p:config(), image.processor():config())
    assert.are.same(p:config(), image.processor(H.read(DIR .. M.configs.openai)):config())
  end)

  it("reads dict sizes, a model directory, and a table", function()
    assert.are.same({ height = 40, width = 24 }, procs.odd.size)
    assert.are.same({ height = 20, width = 30 }, procs.odd.crop_size)
    local dir = H.tmpdir()
    local f = assert(io.open(dir .. "/preprocessor_config.json", "wb"))
    f:write(H.read(DIR .. M.configs.tiny))
    f:close()
    assert.are.same(procs.tiny:config(), image.processor(dir):config())
    os.remove(dir .. "/preprocessor_config.json")
    os.remove(dir)
    local t = image.processor({ size = 32, crop_size = { 32, 32 }, image_processor_type = "CLIPImageProcessor" })
    assert.are.same({ shortest_edge = 32 }, t.size)
    assert.are.same({ height = 32, width = 32 }, t.crop_size)
    assert.are.same({ 32, 32 }, { t:output_size(100, 7) })
    -- JSON null booleans are false (transformers' None); a single number for mean/std
    local n = image.processor('{"do_center_crop": null, "image_mean": 0.5, "size": [10, 20]}')
    assert.is_false(n.do_center_crop)
    assert.are.same({ 0.5, 0.5, 0.5 }, n.mean)
    assert.are.same({ height = 10, width = 20 }, n.size)
    assert.are.same({ 20, 10 }, { n:output_size(300, 200) })
  end)

  it("rejects bad configs with the key and the reason", function()
    assert_msg(err_of(image.processor, "{ \"size\": }"), { "invalid JSON" })
    assert_msg(err_of(image.processor, '{"size": "big"}'), { "size", "must be" })
    assert_msg(err_of(image.processor, '{"crop_size": 0}'), { "crop_size", "out of range" })
    assert_msg(err_of(image.processor, '{"resample": 0}'), { "NEAREST", "not supported" })
    assert_msg(err_of(image.processor, '{"resample": 9}'), { "unknown resample 9" })
    assert_msg(err_of(image.processor, '{"image_std": [1, 0, 1]}'), { "image_std", "nonzero" })
    assert_msg(err_of(image.processor, '{"image_mean": [1, 2]}'), { "image_mean", "3 numbers" })
    assert_msg(err_of(image.processor, { sise = 3 }), { "unknown option 'sise'" })
    assert_msg(err_of(image.processor, { do_resize = "yes" }), { "do_resize", "boolean" })
    assert_msg(err_of(image.processor, DIR .. "nope.json"), { "nope.json", "No such file" })
  end)
end)

-- =============================================================== errors
describe("image errors name the file and the reason", function()
  for _, er in ipairs(M.errors) do
    it(er.file .. " (Pillow " .. er.pillow .. ")", function()
      assert_msg(err_of(image.load, DIR .. er.file), er.match)
      assert_msg(err_of(image.decode, H.read(DIR .. er.file), er.file), er.match)
      assert_msg(err_of(procs.tiny.preprocess, procs.tiny, DIR .. er.file), er.match)
    end)
  end

  it("missing file, directory", function()
    assert_msg(err_of(image.load, DIR .. "missing.jpg"), { "missing.jpg", "No such file" })
    assert_msg(err_of(image.load, DIR), { "images/", "directory" })
    assert_msg(err_of(procs.tiny.preprocess, procs.tiny, DIR .. "missing.jpg"), { "missing.jpg", "No such file" })
  end)

  it("0-sized and inconsistent requests", function()
    local img = image.load(DIR .. "tiny_3x5.png")
    assert_msg(err_of(image.resize, img, 0, 10), { "resize", "invalid size" })
    assert_msg(err_of(image.resize, img, 10, -1), { "resize", "invalid size" })
    assert_msg(err_of(image.center_crop, img, 0, 5), { "center_crop", "invalid size" })
    assert_msg(err_of(image.from_bytes, 0, 0, ""), { "from_bytes", "invalid size" })
    assert_msg(err_of(image.from_bytes, 2, 2, "abc"), { "from_bytes", "3 bytes", "needs 12" })
    assert_msg(err_of(image.resize, img, 4, 4, { resample = 0 }), { "NEAREST", "not supported" })
    assert_msg(err_of(image.resize, img, 4, 4, { resample = "cubic" }), { "unknown resample filter" })
    assert_msg(err_of(image.resize, img, 100000, 100000), { "over the limit" })
    assert_msg(err_of(image.decode, "", "nothing.png"), { "nothing.png", "empty" })
  end)
end)
