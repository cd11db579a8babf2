-- spec/search_spec.lua - clip.search: building an index from a folder, a list
-- or a Dataset, saving and loading it, text and image queries, undecodable
-- images, caption ranking.
local clip = require "clip"
local search = require "clip.search"
local H = require "spec.helpers"

local IMAGES = H.fixtures .. "images/"
local NAMES = { "natural.jpg", "portrait.jpg", "rgb.png", "gray.png", "palette.png", "odd.jpg" }

describe("search", function()
  local model, tmp
  setup(function()
    model = clip.load(H.fixtures .. "models/tiny")
    tmp = H.tmpdir()
    os.execute(("mkdir -p '%s/photos/sub'"):format(tmp))
    for i, n in ipairs(NAMES) do
      local dst = tmp .. "/photos/" .. (i > 4 and "sub/" or "") .. n
      assert(os.execute(("cp '%s' '%s'"):format(IMAGES .. n, dst)))
    end
    os.execute(("cp '%s' '%s/photos/notes.txt'"):format(IMAGES .. "config_tiny.json", tmp))
  end)
  teardown(function()
    model:close()
    os.execute("rm -rf '" .. tmp .. "'")
  end)

  it("indexes a folder (recursively, sorted) with normalized embeddings", function()
    local calls = 0
    local idx = search.build(model, tmp .. "/photos", { batch_size = 4, progress = function() calls = calls + 1 end })
    assert.equal(6, idx:size())
    assert.equal(24, idx:dim())
    assert.equal(tmp .. "/photos/gray.png", idx.paths[1])
    assert.equal(tmp .. "/photos/sub/palette.png", idx.paths[6])
    assert.equal(2, calls) -- two batches
    local want = model:encode_images(idx.paths):normalize()
    H.assert_close(idx.embeddings, want, { atol = 1e-6, label = "index embeddings" })
    assert.equal(4, search.build(model, tmp .. "/photos", { recursive = false }):size())
  end)

  it("answers text and image queries, best first; k past the index returns everything", function()
    local idx = search.build(model, tmp .. "/photos")
    local hits = idx:query_image(model, tmp .. "/photos/rgb.png", 3)
    assert.equal(3, #hits)
    assert.equal(tmp .. "/photos/rgb.png", hits[1].path)
    assert.near(1, hits[1].score, 1e-5)
    assert.is_true(hits[1].score >= hits[2].score and hits[2].score >= hits[3].score)
    local th = idx:query_text(model, "a red circle", 100)
    assert.equal(6, #th)
    local s = clip.cosine_similarity(model:encode_texts({ "a red circle" }), idx.embeddings):totable()[1]
    local best, bi = -math.huge, nil
    for i, v in ipairs(s) do if v > best then best, bi = v, i end end
    assert.equal(idx.paths[bi], th[1].path)
    assert.near(best, th[1].score, 1e-6)
    local many = idx:query_text(model, { "a red circle", "stripes" }, 2)
    assert.equal(2, #many)
    assert.equal(2, #many[2])
    assert.equal(th[1].path, many[1][1].path)
    assert.has_error(function() idx:query(clip.zeros({ 1, 7 }), 1) end)
  end)

  it("saves and loads (safetensors + paths.json), atomically named files", function()
    local idx = search.build(model, { IMAGES .. "natural.jpg", IMAGES .. "rgb.png" })
    idx:save(tmp .. "/idx")
    assert.is_true(clip.core.is_file(tmp .. "/idx/embeddings.safetensors"))
    assert.is_true(clip.core.is_file(tmp .. "/idx/paths.json"))
    local back = search.load(tmp .. "/idx")
    assert.same(idx.paths, back.paths)
    H.assert_close(back.embeddings, idx.embeddings, { atol = 0 })
    local meta = clip.json.decode(H.read(tmp .. "/idx/paths.json"))
    assert.equal("clip.search.index", meta.format)
    assert.equal(2, meta.count)
    assert.has_error(function() search.load(tmp .. "/nope") end)
    -- paths and embeddings disagree
    clip.core.write_file(tmp .. "/idx/paths.json", clip.json.encode({ format = "clip.search.index", paths = { "a" } }))
    assert.has_error(function() search.load(tmp .. "/idx") end)
  end)

  it("builds from a Dataset column and adds more images", function()
    local ds = clip.data.dataset({ { img = IMAGES .. "gray.png" }, { img = IMAGES .. "odd.jpg" } }, { "img" })
    local idx = search.build(model, ds, { column = "img" })
    assert.same({ IMAGES .. "gray.png", IMAGES .. "odd.jpg" }, idx.paths)
    idx:add(model, { IMAGES .. "rgb.png" })
    assert.equal(3, idx:size())
    assert.equal(3, idx.embeddings:size(1))
  end)

  it("names an undecodable image, or skips it with skip_errors", function()
    local list = { IMAGES .. "natural.jpg", IMAGES .. "garbage.jpg", IMAGES .. "rgb.png" }
    local ok, err = pcall(search.build, model, list)
    assert.is_false(ok)
    assert.matches("garbage.jpg", err, 1, true)
    local idx = search.build(model, list, { skip_errors = true })
    assert.same({ IMAGES .. "natural.jpg", IMAGES .. "rgb.png" }, idx.paths)
    assert.equal(1, #idx.skipped)
    assert.equal(IMAGES .. "garbage.jpg", idx.skipped[1].path)
    assert.has_error(function() search.build(model, tmp .. "/missing") end)
  end)

  it("ranks captions for an image, best first (the best of N candidates)", function()
    local caps = { "a red circle", "a blue square", "stripes", "a red circle" }
    local ranked, best = search.rank_captions(model, IMAGES .. "natural.jpg", caps)
    assert.equal(4, #ranked)
    local s = clip.cosine_similarity(model:encode_images({ IMAGES .. "natural.jpg" }), model:encode_texts(caps)):totable()[1]
    for j = 1, 3 do assert.is_true(ranked[j].score >= ranked[j + 1].score) end
    for _, r in ipairs(ranked) do assert.near(s[r.index], r.score, 1e-6) end
    assert.equal(ranked[1].caption, best)
    -- the duplicate caption ties with itself: the earlier one ranks first
    local pos = {}
    for j, r in ipairs(ranked) do pos[r.index] = j end
    assert.is_true(pos[1] < pos[4])
    assert.has_error(function() search.rank_captions(model, IMAGES .. "natural.jpg", {}) end)
  end)
end)
