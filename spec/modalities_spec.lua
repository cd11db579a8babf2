-- spec/modalities_spec.lua - a column is images or texts because the loss or
-- the dataset says so, never because a caption ends in .png; undeclared
-- columns are detected from every row, and a mix is an error.
local clip = require "clip"
local H = require "spec.helpers"

local IMAGES = H.fixtures .. "images/"

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

describe("modalities", function()
  local tmp, m, png, captions
  setup(function()
    tmp = H.tmpdir()
    png = tmp .. "/logo.png"
    write(png, H.read(IMAGES .. "rgb.png"))
    write(tmp .. "/see logo.png", H.read(IMAGES .. "rgb.png")) -- a file named like the caption
    m = clip.load(H.fixtures .. "models/tiny")
    m:train_only({ "projection" })
  end)
  teardown(function()
    m:close()
    H.rmtree(tmp)
  end)

  local function pixels(n) return clip.randn({ n, 3, 32, 32 }, 5) end
  local function ids(texts)
    local out = {}
    for i, t in ipairs(texts) do out[i] = m:tokenize(t) end
    return out
  end

  it("a caption that names a .png stays text when the column is declared text", function()
    -- "see logo.png" does not exist relative to the working directory; the
    -- second caption is the path of an existing PNG file
    for _, cap in ipairs({ "see logo.png", tmp .. "/see logo.png", png }) do
      local texts = { cap, "a cat", "a red car" }
      local loss = clip.loss.MultipleNegativesRankingLoss(m, { modalities = { anchor = "image", positive = "text" } })
      local b = { anchor = pixels(3), positive = texts }
      local v = loss:forward(b)
      local want = loss:forward({ anchor = b.anchor, positive = ids(texts) })
      assert.equal(want, v, cap)
      assert.equal(want, loss:backward(b), cap)
    end
  end)

  it("undeclared: every row is inspected; texts that merely end in .png are texts", function()
    local loss = clip.loss.MultipleNegativesRankingLoss(m)
    local texts = { "a cat", "see logo.png", "a red car" } -- no such file: not an image
    assert.equal(loss:forward({ anchor = pixels(3), positive = ids(texts) }),
      loss:forward({ anchor = pixels(3), positive = texts }))
    -- all existing image files: images
    local paths = { png, tmp .. "/see logo.png", IMAGES .. "rgb.png" }
    local v = loss:forward({ anchor = paths, positive = texts })
    local v2 = clip.loss.MultipleNegativesRankingLoss(m, { modalities = { anchor = "image", positive = "text" } })
      :forward({ anchor = paths, positive = texts })
    assert.equal(v2, v)
  end)

  it("undeclared: a column mixing image files and texts is an error naming a row of each", function()
    local loss = clip.loss.MultipleNegativesRankingLoss(m)
    local err = err_of(loss.forward, loss, { anchor = pixels(3), positive = { "a cat", png, "a dog" } })
    assert.matches("loss: column 'positive' mixes images and texts", err, 1, true)
    assert.matches("row 2 \"" .. png .. "\" is an image", err, 1, true)
    assert.matches("row 1 \"a cat\" is not", err, 1, true)
    -- a missing file among image paths reads as a mix too (and names it)
    err = err_of(loss.backward, loss, { anchor = { png, tmp .. "/gone.png" }, positive = { "a", "b" } })
    assert.matches("column 'anchor' mixes images and texts", err, 1, true)
    assert.matches(tmp .. "/gone.png", err, 1, true)
  end)

  it("a declared image column with a missing file is an error naming the file", function()
    local loss = clip.loss.CLIPLoss(m, { modalities = { anchor = "image", positive = "text" } })
    local err = err_of(loss.backward, loss, { anchor = { png, tmp .. "/missing.png" }, positive = { "a", "b" } })
    assert.matches("loss: column 'anchor' row 2: image '" .. tmp .. "/missing.png' not found", err, 1, true)
    -- a declared image column of captions: the first caption is the missing file
    err = err_of(loss.forward, loss, { anchor = { "see logo.png", "a cat" }, positive = { "a", "b" } })
    assert.matches("row 1: image 'see logo.png' not found", err, 1, true)
  end)

  it("rejects an unknown modality and a pixel Tensor declared text", function()
    local bad = clip.loss.MultipleNegativesRankingLoss(m, { modalities = { anchor = "picture" } })
    assert.matches("modality of column 'anchor' is \"picture\"",
      err_of(bad.forward, bad, { anchor = pixels(2), positive = { "a", "b" } }), 1, true)
    local t = clip.loss.MultipleNegativesRankingLoss(m, { modalities = { anchor = "text" } })
    assert.matches("column 'anchor' is declared text but holds a pixel Tensor",
      err_of(t.forward, t, { anchor = pixels(2), positive = { "a", "b" } }), 1, true)
  end)

  it("list batches are declared by position", function()
    local loss = clip.loss.MultipleNegativesRankingLoss(m, { modalities = { [1] = "image", [2] = "text" } })
    local texts = { png, "a cat" } -- an existing image path, declared text
    assert.equal(loss:forward({ pixels(2), ids(texts) }), loss:forward({ pixels(2), texts }))
  end)

  describe("typed datasets", function()
    it("batches carry the dataset's column types to the loss", function()
      write(tmp .. "/pairs.csv", "image,title\nlogo.png,see logo.png\nsee logo.png,a cat\n")
      local ds = clip.data.load(tmp .. "/pairs.csv", { images = { "image" } })
      local batch = ds:batches(2, { columns = { anchor = "image", positive = "title" } })()
      assert.same({ anchor = "image", positive = "text" }, getmetatable(batch).modalities)
      local n = 0
      for _ in pairs(batch) do n = n + 1 end
      assert.equal(2, n, "no extra key in the batch")
      -- "see logo.png" exists next to the CSV but is a caption here
      write("see logo.png", H.read(IMAGES .. "rgb.png"))
      local ok, v = pcall(function() return clip.loss.MultipleNegativesRankingLoss(m):forward(batch) end)
      os.remove("see logo.png")
      assert.is_true(ok, tostring(v))
      local want = clip.loss.MultipleNegativesRankingLoss(m)
        :forward({ anchor = batch.anchor, positive = ids({ "see logo.png", "a cat" }) })
      assert.equal(want, v)
      -- the loss's own declaration wins over the dataset's
      local l2 = clip.loss.MultipleNegativesRankingLoss(m, { modalities = { positive = "image" } })
      assert.matches("column 'positive' row 1: image 'see logo.png' not found",
        err_of(l2.forward, l2, batch), 1, true)
    end)

    it("data.load: modalities = {...} declares the columns; detection checks every row", function()
      -- detection reads every row: one caption of two ends in .png -> an error
      write(tmp .. "/m.csv", "image,title\nlogo.png,a cat\nlogo.png,see logo.png\n")
      local err = err_of(clip.data.load, tmp .. "/m.csv")
      assert.matches("column 'title' mixes image paths and other values", err, 1, true)
      assert.matches("row 2 (line 3) \"see logo.png\" is an image path, row 1 (line 2) \"a cat\" is not", err, 1, true)
      local d2 = clip.data.load(tmp .. "/m.csv", { modalities = { image = "image", title = "text" } })
      assert.same({ "image" }, d2.image_columns)
      assert.equal("see logo.png", d2.rows[2].title)
      assert.same({ "image" }, clip.data.load(tmp .. "/m.csv", { images = { "image" } }).image_columns)
      local b = d2:batches(2)()
      assert.same({ image = "image", title = "text" }, getmetatable(b).modalities)
      assert.matches("no column 'nope'", err_of(clip.data.load, tmp .. "/m.csv", { modalities = { nope = "text" } }), 1, true)
    end)
  end)
end)
