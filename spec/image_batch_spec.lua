-- spec/image_batch_spec.lua - decoding and preprocessing batches on threads (issue #14 item 4):
-- proc:preprocess_batch with threads and skip_errors, the background loader
-- (image.loader: submit / wait / close), image.batches, and model:encode_images on top of them.
-- Every row must be bit for bit the serial result (proc:preprocess of the one image), whatever
-- the thread count; a bad file gives an error naming its index, its path and the reason, and
-- with skip_errors it is left out and listed while the other rows stay exact.
local clip = require "clip"
local image = require "clip.image"
local H = require "spec.helpers"

local DIR = H.fixtures .. "images/"
local TINY = H.fixtures .. "models/tiny"

-- every format, odd sizes and layouts included
local MIXED = { "natural.jpg", "cmyk.jpg", "natural_prog.jpg", "rgb.png", "palette_trns.png",
  "interlaced_rgb.png", "gif_small.gif", "gif_interlaced.gif", "webp_lossy.webp",
  "webp_lossless.webp", "tiff_rgb.tif", "tiff_lzw.tif", "bmp_24.bmp", "bmp_8.bmp",
  "portrait.jpg", "small_20x15.png", "thin_7x300.png", "gray16.png" }

local function paths_of(names)
  local t = {}
  for i, n in ipairs(names) do t[i] = n:find("/", 1, true) and n or DIR .. n end
  return t
end

local procs = {
  openai = image.processor(DIR .. "config_openai.json"),
  tiny = image.processor(DIR .. "config_tiny.json"),
}

local err_of, assert_msg = H.err_of, H.assert_msg

-- the serial result of each item, as float32 bytes
local single_cache = setmetatable({}, { __mode = "k" })
local function single(proc, item)
  local c = single_cache[proc] or setmetatable({}, { __mode = "k" })
  single_cache[proc] = c
  if not c[item] then c[item] = proc:preprocess(item):bytes() end
  return c[item]
end

-- rows of x (bytes) equal the single results of items[kept[r]]
local function assert_rows(x, proc, items, kept, label)
  local n = #kept
  assert.are.equal(n, x:shape()[1], label .. ": rows")
  local all = x:bytes()
  local per = n > 0 and #all // n or 0
  for r, i in ipairs(kept) do
    local want = single(proc, items[i])
    if all:sub((r - 1) * per + 1, r * per) ~= want then
      error(("%s: row %d (item %d, %s) differs from the serial result"):format(label, r, i,
        tostring(items[i])), 2)
    end
  end
end

local function range(a, b)
  local t = {}
  for i = a, b do t[#t + 1] = i end
  return t
end

-- threads of this process (Linux), nil elsewhere. A joined thread can linger in /proc for a
-- moment after pthread_join returns, so a count is read until it is the one expected (for up
-- to 2 s); without an expected count, after 50 ms of quiet.
local function os_threads(want)
  local function read()
    local f = io.open("/proc/self/status")
    if not f then return nil end
    local s = f:read("a")
    f:close()
    return tonumber(s:match("Threads:%s*(%d+)"))
  end
  local t0, n = clip.core.clock(), read()
  while n and clip.core.clock() - t0 < (want and 2 or 0.05) do
    if want and n == want then break end
    n = read()
  end
  return n
end

describe("preprocess_batch on threads", function()
  it("equals the serial result bit for bit: every format, 1, 2, 3 and 8 threads, two configs", function()
    local items = paths_of(MIXED)
    for name, proc in pairs(procs) do
      for _, t in ipairs({ 1, 2, 3, 8 }) do
        local x = proc:preprocess_batch(items, { threads = t })
        assert_rows(x, proc, items, range(1, #items), ("%s, %d threads"):format(name, t))
      end
    end
  end)

  it("the default (the pool's thread count) and Images mixed with paths give the same rows", function()
    local proc = procs.tiny
    local items = paths_of(MIXED)
    items[2] = image.load(items[2])
    items[9] = image.load(items[9])
    items[17] = image.load(items[17])
    local x = proc:preprocess_batch(items)
    assert_rows(x, proc, items, range(1, #items), "default threads, Images mixed")
    x = proc:preprocess_batch(items, { threads = 3, skip_errors = true })
    assert_rows(x, proc, items, range(1, #items), "skip_errors, nothing bad")
  end)

  it("without a center crop, rows of the same size on threads equal the serial ones", function()
    local p = image.processor({ do_center_crop = false, size = { shortest_edge = 16 } })
    local items = paths_of({ "natural.jpg", "natural_gray.jpg", "natural_444.jpg", "natural_prog.jpg" })
    for _, t in ipairs({ 1, 2, 3 }) do
      local x = p:preprocess_batch(items, { threads = t })
      assert.are.same({ 4, 3, 16, 24 }, x:shape())
      assert_rows(x, p, items, range(1, 4), t .. " threads, no crop")
    end
    -- a differently sized image is that item's error, the others stay
    local mixed = paths_of({ "natural.jpg", "portrait.jpg", "natural_gray.jpg" })
    assert_msg(err_of(p.preprocess_batch, p, mixed, { threads = 2 }), { "item 2", "portrait.jpg", "differs" })
    local x, errs, kept = p:preprocess_batch(mixed, { threads = 2, skip_errors = true })
    assert.are.same({ 1, 3 }, kept)
    assert_rows(x, p, mixed, kept, "no crop, skip")
    assert.are.equal(2, errs[1].index)
    -- the batch's size comes from the first item that can be read
    local first_bad = paths_of({ "nope.jpg", "natural.jpg", "natural_gray.jpg" })
    x, errs, kept = p:preprocess_batch(first_bad, { skip_errors = true })
    assert.are.same({ 2, 3 }, kept)
    assert.are.same({ 2, 3, 16, 24 }, x:shape())
    assert_msg(errs[1].error, { "nope.jpg", "No such file" })
    assert_msg(err_of(p.preprocess_batch, p, first_bad), { "item 1", "nope.jpg", "No such file" })
  end)
end)

describe("bad files in a batch on threads", function()
  -- a corrupt file at 4 and a missing one at 7, among good ones
  local items = paths_of(MIXED)
  items[4] = DIR .. "badcrc.png"
  items[7] = DIR .. "no_such_file.jpg"
  items[12] = DIR .. "truncated.jpg"

  it("strict: the error names the first bad item, whatever the thread count", function()
    for _, t in ipairs({ 1, 2, 3, 8 }) do
      for _ = 1, 3 do
        local msg = err_of(procs.tiny.preprocess_batch, procs.tiny, items, { threads = t })
        assert_msg(msg, { "preprocess_batch: item 4: ", DIR .. "badcrc.png", "PNG decode failed", "CRC" })
      end
    end
    local only_missing = paths_of(MIXED)
    only_missing[7] = DIR .. "no_such_file.jpg"
    assert_msg(err_of(procs.tiny.preprocess_batch, procs.tiny, only_missing, { threads = 3 }),
      { "item 7: ", "no_such_file.jpg", "No such file or directory" })
  end)

  it("skip_errors: each bad item reported with its index, path and reason; the other rows exact", function()
    for _, t in ipairs({ 1, 2, 3 }) do
      for name, proc in pairs(procs) do
        local x, errs, kept = proc:preprocess_batch(items, { threads = t, skip_errors = true })
        local want_kept = {}
        for i = 1, #items do if i ~= 4 and i ~= 7 and i ~= 12 then want_kept[#want_kept + 1] = i end end
        assert.are.same(want_kept, kept)
        assert_rows(x, proc, items, kept, ("%s, %d threads, skip"):format(name, t))
        assert.are.equal(3, #errs)
        assert.are.same({ 4, 7, 12 }, { errs[1].index, errs[2].index, errs[3].index })
        for _, e in ipairs(errs) do
          assert.are.equal(items[e.index], e.path)
          assert.are.equal(1, e.error:find(e.path, 1, true), "the message starts with the path")
        end
        assert_msg(errs[1].error, { "PNG decode failed", "CRC" })
        assert_msg(errs[2].error, { "No such file or directory" })
        assert_msg(errs[3].error, { "JPEG decode failed", "truncated" })
      end
    end
  end)

  it("skip_errors with nothing good: an empty tensor and every error", function()
    local x, errs, kept = procs.tiny:preprocess_batch(paths_of({ "nope.jpg", "garbage.jpg" }),
      { threads = 2, skip_errors = true })
    assert.are.same({ 0, 3, 32, 32 }, x:shape())
    assert.are.same({}, kept)
    assert.are.equal(2, #errs)
    assert_msg(errs[2].error, { "garbage.jpg", "unsupported image format" })
  end)

  it("wrong arguments raise whatever skip_errors says", function()
    local p = procs.tiny
    assert_msg(err_of(p.preprocess_batch, p, { DIR .. "rgb.png", 42 }, { skip_errors = true }),
      { "item 2 is a number" })
    assert_msg(err_of(p.preprocess_batch, p, { DIR .. "rgb.png" }, { threads = 0 }), { "threads", "1 to 64" })
    assert_msg(err_of(p.preprocess_batch, p, { DIR .. "rgb.png" }, { thread = 2 }), { "unknown option 'thread'" })
    assert_msg(err_of(p.preprocess_batch, p, { DIR .. "rgb.png" }, { skip_errors = 1 }), { "skip_errors", "boolean" })
  end)
end)

describe("image.loader", function()
  local proc = procs.tiny
  local items = paths_of(MIXED)

  it("submit / wait in sequence gives what preprocess_batch gives, batch after batch", function()
    for _, t in ipairs({ 1, 2, 3 }) do
      local ld <close> = image.loader(proc, { threads = t })
      assert.are.equal(t, ld.threads)
      assert.is_false(ld:pending())
      for _, ab in ipairs({ { 1, 5 }, { 6, 18 }, { 3, 3 }, { 1, 18 } }) do
        local sub = table.move(items, ab[1], ab[2], 1, {})
        ld:submit(sub)
        assert.is_true(ld:pending())
        local x = ld:wait()
        assert.is_false(ld:pending())
        assert_rows(x, proc, sub, range(1, #sub), ("loader, %d threads, items %d-%d"):format(t, ab[1], ab[2]))
      end
    end
  end)

  it("skip_errors and strict, as preprocess_batch; the loader stays usable after a bad batch", function()
    local bad = paths_of(MIXED)
    bad[5] = DIR .. "webp_truncated.webp"
    bad[9] = DIR .. "missing.png"
    local ld = image.loader(proc, { threads = 2 })
    ld:submit(bad)
    assert_msg(err_of(ld.wait, ld), { "image loader: item 5: ", "webp_truncated.webp", "WebP decode failed" })
    assert.is_false(ld:pending())
    ld:submit(items)
    assert_rows(ld:wait(), proc, items, range(1, #items), "after a failed batch")
    ld:close()
    local sk = image.loader(proc, { threads = 2, skip_errors = true })
    assert.is_true(sk.skip_errors)
    sk:submit(bad)
    local x, errs, kept = sk:wait()
    assert.are.same({ 5, 9 }, { errs[1].index, errs[2].index })
    assert_msg(errs[2].error, { "missing.png", "No such file" })
    assert_rows(x, proc, bad, kept, "loader, skip")
    sk:close()
  end)

  it("misuse is a clear error: wait without submit, two submits, use after close", function()
    local ld = image.loader(proc)
    assert_msg(err_of(ld.wait, ld), { "wait: nothing submitted" })
    ld:submit(items)
    assert_msg(err_of(ld.submit, ld, items), { "already pending", "wait()" })
    assert_msg(err_of(ld.submit, ld, {}), { "already pending" })
    ld:wait()
    assert_msg(err_of(ld.submit, ld, {}), { "empty list" })
    assert_msg(err_of(ld.submit, ld, { DIR .. "rgb.png", image.load(DIR .. "rgb.png") }),
      { "item 2 is a clip.Image", "expected a path" })
    assert_msg(err_of(image.loader, proc, { threads = 65 }), { "threads", "1 to 64" })
    assert_msg(err_of(image.loader, proc, { batch_size = 3 }), { "unknown option 'batch_size'" })
    ld:close()
    ld:close() -- idempotent
    assert.is_true(ld:is_closed())
    assert.is_false(ld:pending())
    assert_msg(err_of(ld.submit, ld, items), { "closed" })
    assert_msg(err_of(ld.wait, ld), { "closed" })
    assert.are.equal("clip.ImageLoader(closed)", tostring(ld))
  end)

  it("close while a batch is in flight is safe, and joins the threads", function()
    local before = os_threads()
    local many = {}
    for i = 1, 8 do table.move(items, 1, #items, #many + 1, many) end
    for _, t in ipairs({ 1, 3 }) do
      local ld = image.loader(procs.openai, { threads = t })
      if before then assert.are.equal(before + t, os_threads(before + t)) end
      ld:submit(many)
      ld:close()
      assert.is_true(ld:is_closed())
      if before then assert.are.equal(before, os_threads(before)) end
    end
    do -- <close> on the way out of a block, a batch pending
      local ld <close> = image.loader(procs.openai, { threads = 2 })
      ld:submit(many)
    end
    if before then assert.are.equal(before, os_threads(before)) end
  end)

  it("an unclosed loader, even with a batch in flight, is collected and its threads joined", function()
    local before = os_threads()
    for _ = 1, 5 do
      local ld = image.loader(procs.openai, { threads = 2 })
      ld:submit(items)
      ld = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
    end
    if before then assert.are.equal(before, os_threads(before)) end
  end)

  it("idle threads (SCHED_IDLE) give the same rows", function()
    local ld <close> = image.loader(proc, { threads = 2, idle = true })
    ld:submit(items)
    assert_rows(ld:wait(), proc, items, range(1, #items), "idle threads")
  end)
end)

describe("image.batches", function()
  local proc = procs.tiny
  local items = paths_of(MIXED)

  it("yields the batches in order, prefetching the next, rows exact", function()
    for _, bs in ipairs({ 1, 5, 18, 32 }) do
      local seen = {}
      for x, errs, kept in image.batches(proc, items, { batch_size = bs, threads = 2 }) do
        assert.are.same({}, errs)
        assert_rows(x, proc, items, kept, "batch size " .. bs)
        table.move(kept, 1, #kept, #seen + 1, seen)
      end
      assert.are.same(range(1, #items), seen)
    end
  end)

  it("skip_errors reports indices into the whole list; strict names the whole list's index", function()
    local bad = paths_of(MIXED)
    bad[8] = DIR .. "gif_truncated.gif"
    bad[13] = DIR .. "nope.bmp"
    local seen, errors = {}, {}
    for x, errs, kept in image.batches(proc, bad, { batch_size = 5, skip_errors = true }) do
      assert_rows(x, proc, bad, kept, "skip")
      table.move(kept, 1, #kept, #seen + 1, seen)
      table.move(errs, 1, #errs, #errors + 1, errors)
    end
    assert.are.equal(#bad - 2, #seen)
    assert.are.same({ 8, 13 }, { errors[1].index, errors[2].index })
    assert.are.equal(bad[13], errors[2].path)
    local msg = err_of(function()
      for _ in image.batches(proc, bad, { batch_size = 5 }) do end
    end)
    assert_msg(msg, { "image.batches: item 8: ", "gif_truncated.gif", "GIF decode failed" })
  end)

  it("leaving the loop early closes the loader", function()
    local before = os_threads()
    for _ in image.batches(proc, items, { batch_size = 4, threads = 3 }) do break end
    if before then assert.are.equal(before, os_threads(before)) end
    pcall(function()
      for _ in image.batches(proc, items, { batch_size = 4, threads = 3 }) do error("stop") end
    end)
    if before then assert.are.equal(before, os_threads(before)) end
  end)
end)

describe("model:encode_images on the pipelined path", function()
  local items = paths_of(MIXED)

  it("gives the same embeddings, bit for bit, as encoding the preprocessed tensor", function()
    local m <close> = clip.load(TINY)
    for _, bs in ipairs({ 4, 32 }) do
      local want = m:encode_images(m.processor:preprocess_batch(items, { threads = 1 }), { batch_size = bs })
      for _, t in ipairs({ 1, 2 }) do
        local got = m:encode_images(items, { batch_size = bs, decode_threads = t })
        assert.are.equal(want:bytes(), got:bytes(), ("batch %d, %d decode threads"):format(bs, t))
      end
      -- a list holding Images goes the synchronous way, with the same result
      local with_img = { table.unpack(items) }
      with_img[3] = image.load(items[3])
      assert.are.equal(want:bytes(), m:encode_images(with_img, { batch_size = bs }):bytes())
    end
  end)

  it("names the bad item of the whole list, or skips it with skip_errors", function()
    local m <close> = clip.load(TINY)
    local bad = { table.unpack(items) }
    bad[6] = DIR .. "truncated.png"
    bad[11] = DIR .. "gone.webp"
    local msg = err_of(m.encode_images, m, bad, { batch_size = 4 })
    assert_msg(msg, { "encode_images: item 6: ", "truncated.png", "truncated" })
    local emb, errs, kept = m:encode_images(bad, { batch_size = 4, skip_errors = true })
    assert.are.same({ 6, 11 }, { errs[1].index, errs[2].index })
    assert.are.equal(#bad - 2, #kept)
    assert.are.same({ #bad - 2, m.config.projection_dim }, emb:shape())
    -- the good rows: what encoding the good images alone gives (the batches differ, so to 1e-5)
    local good = {}
    for _, i in ipairs(kept) do good[#good + 1] = bad[i] end
    H.assert_close(emb, m:encode_images(good, { batch_size = 4 }), { atol = 1e-5, label = "good rows" })
    local none, nerrs = m:encode_images({ DIR .. "gone.webp" }, { skip_errors = true })
    assert.are.same({ 0, m.config.projection_dim }, none:shape())
    assert.are.equal(1, #nerrs)
    assert_msg(err_of(m.encode_images, m, { DIR .. "rgb.png", image.load(DIR .. "rgb.png"), 7 }),
      { "encode_images: item 3 is a number" })
  end)
end)
