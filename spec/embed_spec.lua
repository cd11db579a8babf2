-- spec/embed_spec.lua - clip.embed: chunked embedding into shards + a manifest
-- equals one encode call row for row, resumes after an interruption without
-- recomputing finished shards, skips and names bad files, refuses a folder
-- written with another model or options; the reader, clip.search on its
-- output, and `clip embed --out-dir` / `clip search --index DIR`.
local clip = require "clip"
local embed = require "clip.embed"
local stream = require "clip.stream"
local H = require "spec.helpers"

local MODEL = H.fixtures .. "models/tiny"
local IMG = H.fixtures .. "images/"
local GOOD = { "natural.jpg", "palette.png", "gray.png", "rgb.png", "rgba.png", "portrait.jpg", "odd.jpg",
  "small_20x15.png", "tiny_3x5.png", "wide_300x7.png", "thin_7x300.png", "la.png", "cmyk.jpg", "exact32.png",
  "bmp_24.bmp", "gif_small.gif", "webp_lossy.webp", "tiff_rgb.tif" }

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local function sh(cmd) assert(os.execute(cmd), cmd) end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- a folder of the GOOD images in two sub-folders; returns it and its sorted paths
local function make_folder(root)
  sh("mkdir -p " .. q(root .. "/a") .. " " .. q(root .. "/b"))
  for i, name in ipairs(GOOD) do
    sh(("cp %s %s"):format(q(IMG .. name), q(root .. (i % 2 == 0 and "/a/" or "/b/") .. name)))
  end
  return root, clip.data.list_images(root)
end

local function inode(path)
  local p = io.popen("stat -c %i " .. q(path))
  local s = p:read("a")
  p:close()
  return s
end

local function assert_exact(a, b, label)
  assert.same(b:shape(), a:shape(), label)
  H.assert_close(a, b, { atol = 0, label = label })
end

describe("clip.embed", function()
  local model, tmp, dir, paths
  setup(function() model = clip.load(MODEL) end)
  teardown(function() model:close() end)
  before_each(function()
    tmp = H.tmpdir()
    dir, paths = make_folder(tmp .. "/photos")
  end)
  after_each(function() H.rmtree(tmp) end)

  it("writes shards whose rows equal one model:encode_images call exactly", function()
    local out = tmp .. "/out"
    local seen = {}
    local r = embed.run(model, dir, out, { chunk_size = 4, batch_size = 2,
      progress = function(done, total) seen[#seen + 1] = done .. "/" .. total end })
    -- the progress moves batch by batch (2 rows), the total counted first
    assert.equal("2/18", seen[2])
    assert.equal("18/18", seen[#seen])
    assert.same({ 18, 18, 0, 5, 0, 5 }, { r.rows, r.embedded, r.skipped, r.shards, r.resumed_shards,
      r.computed_shards })
    for k = 0, 4 do assert.is_true(clip.core.is_file(("%s/shard-%05d.safetensors"):format(out, k))) end
    local e = embed.open(out)
    assert.is_true(e.complete)
    assert.equal(5, #e)
    local emb, inputs, indices = e:load()
    assert.same(paths, inputs)
    for i = 1, 18 do assert.equal(i, indices[i]) end
    assert_exact(emb, model:encode_images(paths, { batch_size = 2 }), "chunked vs one call")
    -- one shard: the embeddings of rows 5..8, and a valid `clip search --index` file
    local t, inp, idx, entry = e:shard(2)
    assert.same({ 5, 8, 4, 4 }, { entry.first, entry.last, entry.rows, entry.embedded })
    assert.same({ paths[5], paths[6], paths[7], paths[8] }, inp)
    assert.same({ 5, 6, 7, 8 }, idx)
    assert_exact(t, emb:rows(5, 8), "shard 2")
    local st, info = clip.load_safetensors(out .. "/shard-00001.safetensors")
    assert.same(inp, clip.json.decode(info.metadata.image_paths))
    assert_exact(st.image_embeds, t, "the file")
  end)

  it("writes normalized .npy shards equal to encode_images{normalize = true}", function()
    local out = tmp .. "/npy"
    embed.run(model, dir, out, { chunk_size = 8, batch_size = 4, normalize = true, format = "npy" })
    assert.is_true(clip.core.is_file(out .. "/shard-00002.npy"))
    assert.is_true(clip.core.is_file(out .. "/shard-00002.json"))
    local emb, inputs = embed.open(out):load()
    assert.same(paths, inputs)
    assert_exact(emb, model:encode_images(paths, { batch_size = 4, normalize = true }), "normalized npy")
    assert_exact(clip.npy.load(out .. "/shard-00000.npy"), emb:rows(1, 8), "numpy file")
    -- a shard whose every row was bad: an empty {0, D} array, read back as such
    local bad = tmp .. "/bad"
    sh("mkdir -p " .. q(bad))
    for _, n in ipairs({ "truncated.png", "garbage.jpg", "natural.jpg" }) do sh(("cp %s %s/"):format(q(IMG .. n), q(bad))) end
    local r = embed.run(model, bad, tmp .. "/npy0", { chunk_size = 2, format = "npy" })
    assert.same({ 3, 1, 2, 2 }, { r.rows, r.embedded, r.skipped, r.shards })
    local e = embed.open(tmp .. "/npy0")
    local t0 = e:shard(2) -- garbage.jpg natural.jpg | truncated.png
    assert.same({ 0, 24 }, t0:shape())
    local all, inputs = e:load()
    assert.same({ bad .. "/natural.jpg" }, inputs)
    assert_exact(all, model:encode_images({ bad .. "/natural.jpg" }), "the good one")
  end)

  it("resumes after an interruption without recomputing finished shards", function()
    local out = tmp .. "/resume"
    local decoded = 0
    local function counting(m, list)
      decoded = decoded + #list
      return embed.decode_batch(m, list)
    end
    local ok, err = pcall(embed.run, model, dir, out, { chunk_size = 4, batch_size = 2, decode = counting,
      on_chunk = function(info) if info.shard == 2 then error("simulated kill after shard 2", 0) end end })
    assert.is_false(ok)
    assert.equal("simulated kill after shard 2", err)
    assert.equal(8, decoded)
    local e = embed.open(out)
    assert.is_false(e.complete)
    assert.equal(2, #e)
    assert.is_false(clip.core.is_file(out .. "/shard-00002.safetensors"))
    -- a kill inside shard 3 leaves its temporary file behind
    write(out .. "/shard-00002.safetensors.tmp4242", "partial")
    local before = { H.read(out .. "/shard-00000.safetensors"), H.read(out .. "/shard-00001.safetensors") }
    local inodes = { inode(out .. "/shard-00000.safetensors"), inode(out .. "/shard-00001.safetensors") }
    decoded = 0
    local r = embed.run(model, dir, out, { chunk_size = 4, batch_size = 2, decode = counting })
    assert.equal(10, decoded) -- rows 9..18 only
    assert.same({ 2, 3, 5, 18 }, { r.resumed_shards, r.computed_shards, r.shards, r.embedded })
    assert.equal(before[1], H.read(out .. "/shard-00000.safetensors"))
    assert.equal(before[2], H.read(out .. "/shard-00001.safetensors"))
    assert.same(inodes, { inode(out .. "/shard-00000.safetensors"), inode(out .. "/shard-00001.safetensors") })
    assert.is_false(clip.core.is_file(out .. "/shard-00002.safetensors.tmp4242"))
    local emb, inputs = embed.open(out):load()
    assert.same(paths, inputs)
    assert_exact(emb, model:encode_images(paths, { batch_size = 2 }), "resumed vs one call")
    -- finished: running again decodes nothing
    decoded = 0
    r = embed.run(model, dir, out, { chunk_size = 4, batch_size = 2, decode = counting })
    assert.same({ 0, 5, 0 }, { decoded, r.resumed_shards, r.computed_shards })
    -- a shard that went missing is computed again, with those after it
    os.remove(out .. "/shard-00003.safetensors")
    local lines = {}
    r = embed.run(model, dir, out, { chunk_size = 4, batch_size = 2, decode = counting,
      log = function(l) lines[#lines + 1] = l end })
    assert.same({ 6, 3, 2 }, { decoded, r.resumed_shards, r.computed_shards })
    assert.truthy(lines[1]:find("2 shard(s) listed in the manifest are missing or changed", 1, true), lines[1])
    assert_exact(embed.open(out):load(), emb, "after recomputing")
  end)

  it("skips, names and counts a corrupt image; on_error = 'raise' stops at it", function()
    local bad = dir .. "/a/broken.png"
    sh(("cp %s %s"):format(q(IMG .. "truncated.png"), q(bad)))
    local out = tmp .. "/skip"
    local lines = {}
    local r = embed.run(model, dir, out, { chunk_size = 4, batch_size = 2,
      log = function(l) lines[#lines + 1] = l end })
    assert.same({ 19, 18, 1 }, { r.rows, r.embedded, r.skipped })
    local x = r.skipped_list[1]
    assert.equal(bad, x.input)
    assert.truthy(x.error:find(bad .. ": PNG decode failed", 1, true), x.error)
    assert.equal("skipped " .. x.error, lines[1])
    local e = embed.open(out)
    assert.equal(1, #e.skipped)
    assert.equal(bad, e.skipped[1].input)
    local emb, inputs, indices = e:load()
    assert.same(paths, inputs)
    local pos = {}
    for i, p in ipairs(clip.data.list_images(dir)) do pos[p] = i end
    for i, p in ipairs(inputs) do assert.equal(pos[p], indices[i]) end
    -- each kept row is its own image's embedding (the batches around the bad file differ: 1e-5)
    H.assert_close(emb, model:encode_images(paths, { batch_size = 2 }), { atol = 1e-5, label = "kept rows" })
    local ok, err = pcall(embed.run, model, dir, tmp .. "/strict", { chunk_size = 4, on_error = "raise" })
    assert.is_false(ok)
    assert.truthy(tostring(err):find(bad .. ": PNG decode failed", 1, true), err)
  end)

  it("refuses a folder written with another model, options or source, unless overwrite", function()
    local out = tmp .. "/refuse"
    embed.run(model, dir, out, { chunk_size = 4, batch_size = 2 })
    local function refused(m, src, o, pattern)
      local ok, err = pcall(embed.run, m, src, out, o)
      assert.is_false(ok, pattern)
      assert.truthy(tostring(err):find(pattern, 1, true), err)
      assert.truthy(tostring(err):find("overwrite = true", 1, true), err)
    end
    refused(model, dir, { chunk_size = 3 }, "written with another chunk_size: 4; this run has 3")
    refused(model, dir, { chunk_size = 4, normalize = true }, "another normalize: false; this run has true")
    refused(model, dir, { chunk_size = 4, format = "npy" }, "another format")
    refused(model, stream.open(dir):shuffle({ buffer = 4, seed = 1 }), { chunk_size = 4 }, "another source")
    local other = clip.load(H.fixtures .. "models/tiny-gelu-fp16", { tokenizer = false })
    refused(other, dir, { chunk_size = 4 }, "another model")
    other:close()
    -- the batch size changes no row's identity: resumes
    assert.equal(5, embed.run(model, dir, out, { chunk_size = 4, batch_size = 3 }).resumed_shards)
    -- a file that sorts first shifts every row: caught at the first shard
    sh(("cp %s %s"):format(q(IMG .. "natural.jpg"), q(dir .. "/a/0first.jpg")))
    refused(model, dir, { chunk_size = 4 }, "the source changed since shard-00000.safetensors was written")
    local r = embed.run(model, dir, out, { chunk_size = 3, overwrite = true })
    assert.same({ 19, 7, 0 }, { r.embedded, r.shards, r.resumed_shards })
    assert.is_false(clip.core.is_file(out .. "/shard-00007.safetensors"))
    assert.equal(3, embed.open(out).manifest.chunk_size)
    -- shard files without a manifest are not taken over
    local stray = tmp .. "/stray"
    sh("mkdir -p " .. q(stray))
    write(stray .. "/shard-00000.safetensors", "x")
    local ok, err = pcall(embed.run, model, dir, stray, {})
    assert.is_false(ok)
    assert.truthy(tostring(err):find("holds shard-00000.safetensors but no manifest.json", 1, true), err)
  end)

  it("embeds texts from a text file and a JSONL column, skipping rows without one", function()
    local txt = tmp .. "/texts.txt"
    local texts = {}
    for i = 1, 11 do texts[i] = ("a photo of thing %d"):format(i) end
    write(txt, table.concat(texts, "\n", 1, 5) .. "\n\n" .. table.concat(texts, "\n", 6, 11) .. "\n")
    local out = tmp .. "/texts"
    local r = embed.run(model, txt, out, { chunk_size = 4, batch_size = 2 })
    assert.same({ "text", 11, 3 }, { r.kind, r.embedded, r.shards })
    local e = embed.open(out)
    local emb, inputs = e:load()
    assert.same(texts, inputs)
    assert_exact(emb, model:encode_texts(texts, { batch_size = 2 }), "texts")
    local _, info = clip.load_safetensors(out .. "/shard-00000.safetensors")
    assert.same({ texts[1], texts[2], texts[3], texts[4] }, clip.json.decode(info.metadata.texts))
    local jl = tmp .. "/rows.jsonl"
    write(jl, '{"caption": "a cat"}\n{"other": 1}\n{"caption": 5}\n{"caption": "a dog"}\n')
    r = embed.run(model, jl, tmp .. "/jl", { kind = "text", column = "caption" })
    assert.same({ 4, 2, 2 }, { r.rows, r.embedded, r.skipped })
    assert.same({ 2, 3 }, { r.skipped_list[1].line, r.skipped_list[2].line })
    assert.truthy(r.skipped_list[1].error:find("column 'caption' holds nothing", 1, true))
    assert.truthy(r.skipped_list[2].error:find("column 'caption' holds a number", 1, true))
    assert_exact(embed.open(tmp .. "/jl"):load(), model:encode_texts({ "a cat", "a dog" }), "jsonl texts")
    assert.has_error(function() embed.open(tmp .. "/jl"):index() end)
  end)

  it("takes a decoder that returns one row per path, the failed ones included (the hook's contract)", function()
    local bad = dir .. "/b/zz_broken.jpg"
    sh(("cp %s %s"):format(q(IMG .. "truncated.jpg"), q(bad)))
    local function full(m, list)
      local rows, errs = {}, nil
      for i, p in ipairs(list) do
        local ok, t = pcall(m.processor.preprocess, m.processor, p)
        if not ok then
          errs = errs or {}
          errs[i] = tostring(t)
          t = clip.zeros({ 3, 32, 32 })
        end
        rows[i] = t:reshape({ 1, 3, 32, 32 })
      end
      return clip.cat(rows), errs
    end
    local r1 = embed.run(model, dir, tmp .. "/h1", { chunk_size = 5, batch_size = 5, decode = full })
    local r2 = embed.run(model, dir, tmp .. "/h2", { chunk_size = 5, batch_size = 5 })
    assert.same({ 18, 1 }, { r1.embedded, r1.skipped })
    assert.equal(bad, r1.skipped_list[1].input)
    assert_exact(embed.open(tmp .. "/h1"):load(), embed.open(tmp .. "/h2"):load(), "hook vs default")
    local ok, err = pcall(embed.run, model, dir, tmp .. "/h3", { decode = function(m, list)
      return embed.decode_batch(m, { list[1] })
    end })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("the decoder returned 1 rows for 19 paths with 0 errors", 1, true), err)
  end)

  it("gives clip.search an index of its output", function()
    local out = tmp .. "/idx"
    embed.run(model, dir, out, { chunk_size = 7 })
    local a = clip.search.load(out):query_text(model, "a photo of a cat", 5)
    local b = clip.search.build(model, paths):query_text(model, "a photo of a cat", 5)
    for i = 1, 5 do
      assert.equal(b[i].path, a[i].path)
      assert.truthy(math.abs(a[i].score - b[i].score) < 1e-6)
    end
    assert.equal(18, embed.open(out):index():size())
    -- the reader's own search, one shard at a time: the same ranking
    local q = model:encode_texts({ "a photo of a cat" })
    local c = embed.open(out):search(q, 5)
    for i = 1, 5 do
      assert.equal(b[i].path, c[i].input)
      assert.equal(b[i].index, c[i].index)
      assert.truthy(math.abs(c[i].score - b[i].score) < 1e-6)
    end
    assert.equal(18, #embed.open(out):search(q[1], 50))
  end)

  describe("bin/clip embed --out-dir", function()
    local cli = require("spec.support.shell").clip

    it("streams a folder into shards with a progress line on stderr, resumes, and is an index", function()
      sh(("cp %s %s"):format(q(IMG .. "truncated.png"), q(dir .. "/a/broken.png")))
      local out = tmp .. "/cli"
      local code, so, se = cli(("embed %s %s --out-dir %s --chunk-size 5 --batch-size 2 -r"):format(q(MODEL),
        q(dir), q(out)))
      assert.equal(0, code, se)
      assert.equal(("wrote 18 image embeddings (dim 24) in 4 shards to %s; skipped 1 unreadable input "
        .. "(listed in %s/manifest.json)\n"):format(out, out), so)
      assert.truthy(se:find("skipped " .. dir .. "/a/broken.png: PNG decode failed", 1, true), se)
      assert.truthy(se:find("embed: 19 img in", 1, true), se)
      assert.truthy(se:find("skipped 1", 1, true), se)
      local emb, inputs = embed.open(out):load()
      assert.same(paths, inputs)
      H.assert_close(emb, model:encode_images(paths, { batch_size = 2 }), { atol = 1e-5 })
      -- the same command again: everything kept
      code, so, se = cli(("embed %s %s -o %s/ --chunk-size 5 --batch-size 2 -r --json"):format(q(MODEL),
        q(dir), q(out)))
      assert.equal(0, code, se)
      local j = clip.json.decode(so)
      assert.same({ 4, 0, 18, 1 }, { j.resumed_shards, j.computed_shards, j.embedded, j.skipped })
      assert.equal(dir .. "/a/broken.png", j.skipped_inputs[1].input)
      -- other options: refused, exit 1
      code, so, se = cli(("embed %s %s --out-dir %s --chunk-size 6 -r"):format(q(MODEL), q(dir), q(out)))
      assert.equal(1, code)
      assert.equal("", so)
      assert.truthy(se:find("another chunk_size: 5; this run has 6", 1, true), se)
      -- search it
      code, so, se = cli(("search %s 'a cat' --index %s -k 3 --json"):format(q(MODEL), q(out)))
      assert.equal(0, code, se)
      j = clip.json.decode(so)
      assert.equal(18, j.candidates)
      local want = clip.search.build(model, paths):query_text(model, "a cat", 3)
      for i = 1, 3 do assert.equal(want[i].path, j.results[i].input) end
      -- a file sorting first: refused while skipping, with no progress line left behind
      sh(("cp %s %s"):format(q(IMG .. "natural.jpg"), q(dir .. "/a/000.jpg")))
      code, so, se = cli(("embed %s %s --out-dir %s --chunk-size 5 --batch-size 2 -r"):format(q(MODEL), q(dir),
        q(out)))
      assert.equal(1, code)
      assert.equal("", so)
      assert.equal(("clip: %s: the source changed since shard-00000.safetensors was written: row 1 is %s/a/000.jpg, "
        .. "the manifest has %s/a/broken.png (rerun with overwrite = true to start over)\n"):format(out, dir, dir), se)
    end)

    it("streams texts from a file and stdin, quietly", function()
      local tf = tmp .. "/t.txt"
      write(tf, "a cat\n\na dog\nthree\n")
      local out = tmp .. "/ct"
      local code, so, se = cli(("embed %s --texts-file - --out-dir %s -q < %s"):format(q(MODEL), q(out), q(tf)))
      assert.equal(0, code, se)
      assert.equal("", se)
      assert.equal(("wrote 3 text embeddings (dim 24) in 1 shard to %s\n"):format(out), so)
      local emb, inputs = embed.open(out):load()
      assert.same({ "a cat", "a dog", "three" }, inputs)
      H.assert_close(emb, model:encode_texts(inputs), { atol = 1e-5 })
    end)

    it("keeps the usage rules", function()
      local cases = {
        { "embed " .. q(MODEL) .. " " .. q(dir) .. " -t x --out-dir " .. q(tmp .. "/u"), "--out-dir holds images or texts" },
        { "embed " .. q(MODEL) .. " " .. q(dir) .. " --chunk-size 3", "--chunk-size goes with --out-dir DIR" },
        { "embed " .. q(MODEL) .. " " .. q(dir) .. " --out-dir " .. q(tmp .. "/u") .. " --format csv",
          "--format must be safetensors or npy" },
        { "embed " .. q(MODEL) .. " " .. q(dir) .. " --out-dir " .. q(tmp .. "/u") .. " -o " .. q(tmp .. "/x.npy"),
          "give -o FILE or --out-dir DIR, not both" },
      }
      for _, c in ipairs(cases) do
        local code, so, se = cli(c[1])
        assert.equal(2, code, c[1] .. ": " .. se)
        assert.equal("", so)
        assert.truthy(se:find(c[2], 1, true), se)
      end
      local code, _, se = cli("embed " .. q(MODEL) .. " /nonexistent/x.png --out-dir " .. q(tmp .. "/u"))
      assert.equal(1, code)
      assert.truthy(se:find("/nonexistent/x.png: No such file", 1, true), se)
    end)
  end)
end)
