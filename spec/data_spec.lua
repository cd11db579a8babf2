-- spec/data_spec.lua - clip.data: readers (CSV, TSV, JSONL, JSON), image
-- paths, image folders, seeded shuffling, splits, batches, k-shot sets and
-- triplet mining.
local clip = require "clip"
local data = require "clip.data"
local H = require "spec.helpers"

local IMAGES = H.fixtures .. "images/"

local write = require("spec.support.files").write

local function rows_of(n)
  local rows = {}
  for i = 1, n do rows[i] = { id = i, title = "t" .. i } end
  return data.dataset(rows, { "id", "title" })
end

local function ids(ds)
  local t = {}
  for i, r in ipairs(ds.rows) do t[i] = r.id end
  return t
end

describe("data.rng", function()
  it("is splitmix64: the published first output for seed 0", function()
    assert.equal(0xE220A8397B1DCDAF, data.rng(0):next())
  end)

  it("repeats for a seed, differs between seeds, and stays unbiased in range", function()
    local a, b, c = data.rng(42), data.rng(42), data.rng(43)
    local same, diff = true, false
    for _ = 1, 20 do
      local x, y, z = a:random(10), b:random(10), c:random(10)
      same = same and x == y
      diff = diff or x ~= z
      assert.is_true(x >= 1 and x <= 10)
    end
    assert.is_true(same)
    assert.is_true(diff)
    local p = data.rng(7):permutation(50)
    local seen = {}
    for _, v in ipairs(p) do seen[v] = true end
    for i = 1, 50 do assert.is_true(seen[i]) end
    assert.same(p, data.rng(7):permutation(50))
    local u = data.rng(1):uniform()
    assert.is_true(u >= 0 and u < 1)
  end)

  it("leaves math.random alone", function()
    math.randomseed(5)
    local want = { math.random(1000), math.random(1000) }
    math.randomseed(5)
    data.rng(1):shuffle({ 1, 2, 3, 4 })
    assert.same(want, { math.random(1000), math.random(1000) })
  end)
end)

describe("data readers", function()
  local tmp
  setup(function() tmp = H.tmpdir() end)
  teardown(function() os.execute("rm -rf '" .. tmp .. "'") end)

  it("parses RFC 4180 CSV: quotes, doubled quotes, newlines in fields, CRLF, BOM, empty fields", function()
    local text = '\239\187\191a,b,c\r\n1,"x, y",\r\n2,"say ""hi""","two\nlines"\n3,,z'
    local header, recs = data.parse_csv(text)
    assert.same({ "a", "b", "c" }, header)
    assert.equal(3, #recs)
    assert.same({ "1", "x, y", "" }, { recs[1][1], recs[1][2], recs[1][3] })
    assert.same({ "2", 'say "hi"', "two\nlines" }, { recs[2][1], recs[2][2], recs[2][3] })
    assert.same({ "3", "", "z" }, { recs[3][1], recs[3][2], recs[3][3] })
    assert.equal(2, recs[1].line)
    assert.equal(5, recs[3].line) -- the quoted newline counts
  end)

  it("names the file and line of malformed CSV", function()
    write(tmp .. "/bad.csv", "a,b\n1,2\n3\n")
    local ok, err = pcall(data.read_csv, tmp .. "/bad.csv")
    assert.is_false(ok)
    assert.matches("bad.csv: line 3: 1 fields, the header has 2", err, 1, true)
    assert.has_error(function() data.parse_csv('a\n"open', { name = "q.csv" }) end,
      "q.csv: line 2: unterminated quoted field")
    write(tmp .. "/dup.csv", "a,a\n1,2\n")
    assert.has_error(function() data.load(tmp .. "/dup.csv") end, tmp .. "/dup.csv: column 'a' appears twice in the header")
    local ok2, err2 = pcall(data.load, tmp .. "/bad.csv")
    assert.is_false(ok2)
    assert.matches("line 3", err2)
  end)

  it("loads CSV, TSV, JSONL and JSON with image paths relative to the file", function()
    write(tmp .. "/natural.jpg", H.read(IMAGES .. "natural.jpg"))
    os.execute("mkdir -p '" .. tmp .. "/sub'")
    write(tmp .. "/sub/rgb.png", H.read(IMAGES .. "rgb.png"))
    write(tmp .. "/d.csv", "image,title\nnatural.jpg,a photo\nsub/rgb.png,\"a, png\"\n")
    write(tmp .. "/d.tsv", "image\ttitle\nnatural.jpg\ta photo\nsub/rgb.png\ta, png\n")
    write(tmp .. "/d.jsonl", '{"image": "natural.jpg", "title": "a photo"}\n\n{"image": "sub/rgb.png", "title": "a, png"}\n')
    write(tmp .. "/d.json", '[{"image": "natural.jpg", "title": "a photo"}, {"image": "sub/rgb.png", "title": "a, png"}]')
    for _, ext in ipairs({ "csv", "tsv", "jsonl", "json" }) do
      local ds = data.load(tmp .. "/d." .. ext)
      assert.equal(2, #ds, ext)
      assert.same({ "image" }, ds.image_columns)
      assert.same({ tmp .. "/natural.jpg", tmp .. "/sub/rgb.png" }, ds:column("image"), ext)
      assert.same({ "a photo", "a, png" }, ds:column("title"), ext)
      assert.is_true(ds:has_column("title") and not ds:has_column("_line"))
    end
  end)

  it("gives a clear error for a missing image, naming the row, line and path", function()
    write(tmp .. "/m.csv", "image,title\n" .. tmp .. "/natural.jpg,ok\nnope.jpg,missing\n")
    write(tmp .. "/natural.jpg", H.read(IMAGES .. "natural.jpg"))
    local ok, err = pcall(data.load, tmp .. "/m.csv")
    assert.is_false(ok)
    assert.equal(tmp .. "/m.csv: row 2 (line 3): image 'nope.jpg' not found (looked for " .. tmp .. "/nope.jpg)", err)
    write(tmp .. "/u.jsonl", '{"image": "https://example.com/a.jpg", "t": "x"}\n')
    local ok2, err2 = pcall(data.load, tmp .. "/u.jsonl")
    assert.is_false(ok2)
    assert.matches("is a URL", err2, 1, true)
    -- check_images = false resolves without looking
    local ds = data.load(tmp .. "/m.csv", { check_images = false })
    assert.equal(tmp .. "/nope.jpg", ds.rows[2].image)
  end)

  it("chooses columns by name and rejects unknown ones", function()
    write(tmp .. "/c.csv", "a,b,c\n1,2,3\n")
    local ds = data.load(tmp .. "/c.csv", { columns = { "c", "a" }, images = {} })
    assert.same({ "c", "a" }, ds.columns)
    local ok, err = pcall(data.load, tmp .. "/c.csv", { columns = { "z" } })
    assert.is_false(ok)
    assert.matches("no column 'z' %(columns: a, b, c%)", err)
    assert.has_error(function() ds:column("b2") end)
  end)

  it("reports bad JSONL with its line", function()
    write(tmp .. "/bad.jsonl", '{"a": 1}\n{"a": \n')
    local ok, err = pcall(data.load, tmp .. "/bad.jsonl")
    assert.is_false(ok)
    assert.matches("bad.jsonl: line 2", err, 1, true)
    write(tmp .. "/arr.jsonl", '[1, 2]\n')
    assert.has_error(function() data.read_jsonl(tmp .. "/arr.jsonl") end)
    assert.has_error(function() data.load(tmp .. "/x.parquet") end)
  end)
end)

describe("data.image_folder", function()
  local tmp
  setup(function()
    tmp = H.tmpdir()
    os.execute(("mkdir -p '%s/f/cat/nested' '%s/f/dog' '%s/f/empty' '%s/f/.hidden'"):format(tmp, tmp, tmp, tmp))
    for _, p in ipairs({ "cat/b.png", "cat/a.jpg", "cat/nested/c.PNG", "dog/d.jpg", ".hidden/x.jpg" }) do
      write(tmp .. "/f/" .. p, "x")
    end
    write(tmp .. "/f/cat/notes.txt", "x")
    write(tmp .. "/f/top.jpg", "x")
  end)
  teardown(function() os.execute("rm -rf '" .. tmp .. "'") end)

  it("makes one class per sub-folder (sorted), labels from 1, recursive, empty classes kept", function()
    local ds = data.image_folder(tmp .. "/f")
    assert.same({ "cat", "dog", "empty" }, ds.classes)
    assert.same({ 1, 1, 1, 2 }, ds:column("label"))
    assert.same({ "cat", "cat", "cat", "dog" }, ds:column("class"))
    local names = {}
    for i, p in ipairs(ds:column("image")) do names[i] = p:sub(#tmp + 4) end
    assert.same({ "cat/a.jpg", "cat/b.png", "cat/nested/c.PNG", "dog/d.jpg" }, names)
    assert.has_error(function() data.image_folder(tmp .. "/nope") end)
    assert.equal(5, #data.list_images(tmp .. "/f")) -- hidden folders and non-images skipped
    assert.equal(1, #data.list_images(tmp .. "/f", { recursive = false }))
  end)
end)

describe("Dataset", function()
  it("shuffles deterministically from a seed", function()
    local ds = rows_of(20)
    assert.same(ids(ds:shuffle(3)), ids(ds:shuffle(3)))
    assert.are_not.same(ids(ds:shuffle(3)), ids(ds:shuffle(4)))
    assert.same(ids(rows_of(20)), ids(ds)) -- the original is untouched
  end)

  it("splits as the seed's data preparation: 76 rows -> 53, 11, 12, disjoint", function()
    local ds = rows_of(76)
    local p = ds:split({ train = 0.7, valid = 0.15, test = 0.15 }, { seed = 42 })
    assert.same({ 53, 11, 12 }, { #p.train, #p.valid, #p.test })
    local seen = {}
    for _, s in ipairs({ "train", "valid", "test" }) do
      for _, id in ipairs(ids(p[s])) do
        assert.is_nil(seen[id])
        seen[id] = true
      end
    end
    for i = 1, 76 do assert.is_true(seen[i]) end
    assert.same(ids(p.train), ids(ds:split({ train = 0.7, valid = 0.15, test = 0.15 }, { seed = 42 }).train))
    local q = ds:split({ { "a", 0.5 }, { "b", 0.25 } }, { shuffle = false })
    assert.same({ 38, 19 }, { #q.a, #q.b })
    assert.equal(1, q.a.rows[1].id)
    assert.has_error(function() ds:split({ train = 0.9, test = 0.2 }) end)
  end)

  it("splits by a column", function()
    local ds = data.dataset({ { s = "train", x = 1 }, { s = "test", x = 2 }, { s = "train", x = 3 } })
    local by = ds:split_by("s")
    assert.equal(2, #by.train)
    assert.equal(1, #by.test)
  end)

  it("batches as the Trainer: 53 rows at 16 -> 16, 16, 16, 5; drop_last; shuffled batches cover every row", function()
    local ds = rows_of(53)
    local sizes = {}
    for b, i in ds:batches(16) do sizes[i] = #b.id end
    assert.same({ 16, 16, 16, 5 }, sizes)
    assert.equal(4, ds:num_batches(16))
    local n = 0
    for _ in ds:batches(16, { drop_last = true }) do n = n + 1 end
    assert.equal(3, n)
    local seen, order = {}, {}
    for b in ds:batches(16, { shuffle = true, seed = 9, columns = { anchor = "title", k = "id" } }) do
      assert.is_nil(b.id)
      for j, id in ipairs(b.k) do
        assert.equal("t" .. id, b.anchor[j])
        seen[id] = true
        order[#order + 1] = id
      end
    end
    for i = 1, 53 do assert.is_true(seen[i]) end
    local order2 = {}
    for b in ds:batches(16, { shuffle = true, seed = 9, columns = { k = "id" } }) do
      for _, id in ipairs(b.k) do order2[#order2 + 1] = id end
    end
    assert.same(order, order2)
    assert.has_error(function() ds:batches(0) end)
  end)

  it("selects, filters, maps, renames and concatenates", function()
    local ds = rows_of(5)
    assert.same({ 5, 1 }, ids(ds:select({ 5, 1 })))
    assert.same({ 2, 4 }, ids(ds:filter(function(r) return r.id % 2 == 0 end)))
    local m = ds:map(function(r) return { id = r.id * 10 } end)
    assert.same({ 10, 20, 30, 40, 50 }, ids(m))
    local r = ds:rename({ title = "caption" })
    assert.same({ "id", "caption" }, r.columns)
    assert.equal("t1", r.rows[1].caption)
    assert.equal(10, #ds:concat(ds))
    assert.equal(5, ds:size())
    assert.has_error(function() ds:select({ 6 }) end)
  end)

  it("makes k-shot support and query sets per class", function()
    local rows = {}
    for i = 1, 7 do rows[i] = { id = i, label = i <= 5 and 1 or 2 } end
    rows[8] = { id = 8, label = 3 }
    local ds = data.dataset(rows, { "id", "label" })
    local s, q = ds:k_shot(2, { seed = 1 })
    local per = {}
    for _, r in ipairs(s.rows) do per[r.label] = (per[r.label] or 0) + 1 end
    assert.same({ 2, 2, 1 }, { per[1], per[2], per[3] }) -- class 3 has one image: all of it
    assert.equal(3, #q)
    local s2 = ds:k_shot(2, { seed = 1 })
    assert.same(ids(s), ids(s2))
  end)
end)

describe("data.triplets", function()
  local ds = data.dataset({
    { title = "a" }, { title = "b" }, { title = "c" }, { title = "a" },
  }, { "title" })

  it("random: another row's text, never an equal one; seeded", function()
    local t, idx = data.triplets(ds, { text = "title", seed = 3 })
    for i, r in ipairs(t.rows) do
      assert.are_not.equal(r.title, r.negative)
      assert.are_not.equal(i, idx[i])
    end
    assert.same(idx, select(2, data.triplets(ds, { text = "title", seed = 3 })))
    assert.same({ "title", "negative" }, t.columns)
    assert.is_nil(ds.rows[1].negative) -- the input is untouched
  end)

  it("hardest and easiest follow the embeddings; unique uses each text once (the seed's greedy loop)", function()
    -- cos: rows 1..4 = angles 0, 10, 80, 90 degrees
    local function v(deg) return { math.cos(math.rad(deg)), math.sin(math.rad(deg)) } end
    local e = clip.tensor({ v(0), v(10), v(80), v(90) })
    local d = data.dataset({ { t = "w" }, { t = "x" }, { t = "y" }, { t = "z" } }, { "t" })
    local _, hard = data.triplets(d, { text = "t", strategy = "hardest", embeddings = e })
    assert.same({ 2, 1, 4, 3 }, hard)
    local _, easy = data.triplets(d, { text = "t", strategy = "easiest", embeddings = e })
    assert.same({ 4, 4, 1, 1 }, easy)
    local _, easy_u = data.triplets(d, { text = "t", strategy = "easiest", embeddings = e, unique = true })
    assert.same({ 4, 3, 1, 2 }, easy_u)
    -- texts equal to the row's own are skipped even when most similar
    local d2 = data.dataset({ { t = "same" }, { t = "same" }, { t = "other" } }, { "t" })
    local _, h2 = data.triplets(d2, { text = "t", strategy = "hardest", embeddings = clip.tensor({ v(0), v(1), v(90) }) })
    assert.same({ 3, 3, 2 }, h2)
  end)

  it("mines with a model's text tower", function()
    local m = clip.load(H.fixtures .. "models/tiny")
    local t = data.triplets(ds, { text = "title", strategy = "hardest", model = m })
    for _, r in ipairs(t.rows) do assert.are_not.equal(r.title, r.negative) end
    m:close()
    assert.has_error(function() data.triplets(ds, { text = "title", strategy = "hardest" }) end)
    assert.has_error(function() data.triplets(ds, { text = "title", strategy = "nope" }) end)
    assert.has_error(function()
      data.triplets(data.dataset({ { t = "q" }, { t = "q" } }, { "t" }), { text = "t" })
    end)
  end)
end)
