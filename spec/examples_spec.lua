-- spec/examples_spec.lua - the example scripts run as subprocesses on the tiny
-- model (examples/train.lua end to end: table, metrics log, chart, saved
-- model), and the pieces they are made of: clip.cli, clip.progress,
-- clip.chart and the PNG writer.
local clip = require "clip"
local H = require "spec.helpers"

local ROOT = (function()
  local p = io.popen("cd '" .. H.spec_dir .. "..' && pwd")
  local d = p:read("l")
  p:close()
  return d .. "/"
end)()
local TINY = "spec/fixtures/models/tiny"
local DATA = "examples/data/"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- run a command in the repository root; returns ok, stdout, stderr
local function run(cmd, tmp)
  local errf = tmp .. "/stderr.txt"
  local p = io.popen(("cd %s && %s 2>%s"):format(q(ROOT), cmd, q(errf)))
  local out = p:read("a")
  local ok = p:close() == true
  return ok, out, H.read(errf)
end

local function lines(s)
  local t = {}
  for l in s:gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

describe("examples/train.lua", function()
  local tmp
  setup(function() tmp = H.tmpdir() end)
  teardown(function() os.execute("rm -rf '" .. tmp .. "'") end)

  it("runs the seed workflow on the tiny model: table, metrics.jsonl, chart.png, a model that loads", function()
    local out_dir = tmp .. "/run"
    local ok, out, err = run(("lua5.4 examples/train.lua --model %s --data %spairs.csv --out %s --batch-size 4")
      :format(TINY, DATA, q(out_dir)), tmp)
    assert.is_true(ok, err)
    -- the parameter summary and the per-epoch table
    assert.matches("Trainable: visual_projection.weight", out, 1, true)
    assert.matches("Trainable: text_projection.weight", out, 1, true)
    assert.matches("Rows: train 10, valid 3, test 3", out, 1, true)
    assert.matches("Epoch  Training Loss  Validation Loss  train Recall@1  valid Recall@1", out, 1, true)
    assert.matches("\n%s+1%s+%d%.%d+%s+%d%.%d+%s+%d%.%d+%s+%d%.%d+\n", out)
    assert.matches("\n%s+2%s+%d%.%d+%s+%d%.%d+", out)
    -- the before/after table
    local tbl = {}
    for _, l in ipairs(lines(out)) do
      local s, n, a, b, c, d = l:match("^(%a+)%s+(%d+)%s+([%d.]+)%s+([%d.]+)%s+([%d.]+)%s+([%d.]+)$")
      if s then tbl[s] = { rows = tonumber(n), tb = a, ta = b, rb = c, ra = d } end
    end
    assert.same({ 10, 3, 3 }, { tbl.train.rows, tbl.valid.rows, tbl.test.rows })
    -- stderr (not a terminal): one line per epoch
    local el = lines(err)
    assert.equal(2, #el, err)
    assert.matches("^epoch 1/2: 3 steps, loss %d", el[1])
    assert.matches("^epoch 2/2: 3 steps, loss %d", el[2])

    -- metrics log: 6 training steps (10 rows at 4: 4, 4, 2 per epoch) and 4 evaluations
    local recs = {}
    for _, l in ipairs(lines(H.read(out_dir .. "/metrics.jsonl"))) do recs[#recs + 1] = clip.json.decode(l) end
    local train, evals = {}, {}
    for _, r in ipairs(recs) do
      if r.type == "train" then train[#train + 1] = r else evals[#evals + 1] = r end
    end
    assert.equal(6, #train)
    assert.equal(4, #evals)
    for k, r in ipairs(train) do
      assert.equal(k, r.step)
      assert.near(1e-4 * (6 - (k - 1)) / 6, r.learning_rate, 1e-15) -- linear decay, no warmup
      assert.is_true(r.loss > 0 and r.grad_norm > 0)
      assert.near(k / 3, r.epoch, 1e-12)
    end
    assert.equal(0, evals[1].step)
    assert.is_true(evals[4].final)
    assert.equal(tonumber(tbl.train.tb), tonumber(("%.4f"):format(evals[1].train_cosine_accuracy)))
    assert.is_number(evals[2].valid_loss)

    -- chart: a PNG that decodes
    local png = H.read(out_dir .. "/chart.png")
    assert.equal("\137PNG\r\n\26\n", png:sub(1, 8))
    local img = clip.image.load(out_dir .. "/chart.png")
    assert.equal(800, img.width)
    assert.equal(550, img.height)

    -- the saved model loads; only the projections moved; the table's "after" is its metrics
    local orig = clip.load(ROOT .. TINY)
    local m = clip.load(out_dir .. "/model")
    for name in m:named_parameters() do
      local d = (m:param(name) - orig:param(name)):totable()
      local moved = false
      local function scan(t) for _, v in ipairs(t) do if type(v) == "table" then scan(v) elseif v ~= 0 then moved = true end end end
      scan(type(d) == "table" and d or { d })
      assert.equal(name:find("projection", 1, true) ~= nil, moved, name)
    end
    local ds = clip.data.load(ROOT .. DATA .. "pairs.csv"):split_by("split").train
    local ev = clip.eval.TripletEvaluator({ anchors = ds:column("image"), positives = ds:column("title"),
      negatives = ds:column("title_neg") })
    assert.equal(tbl.train.ta, ("%.4f"):format(ev(m).cosine_accuracy))
    local rv = clip.eval.RecallEvaluator({ images = ds:column("image"), texts = ds:column("title") })
    assert.equal(tbl.train.ra, ("%.4f"):format(rv(m)["Recall@1"]))
    m:close()
    orig:close()
  end)

  it("mines negatives, splits by fractions, trains the last block with GradCache, saves sentence-transformers; --quiet", function()
    local out_dir = tmp .. "/run2"
    -- a JSONL without negatives or split column
    local src = clip.data.load(ROOT .. DATA .. "pairs.jsonl")
    local f = assert(io.open(tmp .. "/pairs.jsonl", "w"))
    for _, r in ipairs(src.rows) do f:write(clip.json.encode({ image = r.image, title = r.title }), "\n") end
    f:close()
    local ok, out, err = run(("lua5.4 examples/train.lua --model %s --data %s --out %s --batch-size 8 --epochs 1 "
      .. "--mine hardest --train-last 1 --loss cmnrl --mini-batch-size 3 --format sentence-transformers --quiet "
      .. "--no-chart --lr 1e-3")
      :format(TINY, q(tmp .. "/pairs.jsonl"), q(out_dir)), tmp)
    assert.is_true(ok, err)
    assert.equal("", err)
    local l = lines(out)
    assert.equal(5, #l, out) -- two header lines and three splits
    assert.matches("^train%s+11 ", l[3]) -- floor(0.7 * 16)
    assert.matches("^valid%s+2 ", l[4])
    assert.matches("^test%s+3 ", l[5])
    assert.is_false(clip.core.is_file(out_dir .. "/chart.png"))
    local m = clip.load(out_dir .. "/model")
    assert.is_true(m.paths.sentence_transformers)
    m:close()
  end)

  it("fails clearly: a missing option, a missing image, a bad number", function()
    local ok, _, err = run("lua5.4 examples/train.lua --model " .. TINY, tmp)
    assert.is_false(ok)
    assert.matches("--data is required", err, 1, true)
    local f = assert(io.open(tmp .. "/bad.csv", "w"))
    f:write("image,title\nnope.jpg,x\n")
    f:close()
    ok, _, err = run(("lua5.4 examples/train.lua --model %s --data %s"):format(TINY, q(tmp .. "/bad.csv")), tmp)
    assert.is_false(ok)
    assert.matches("bad.csv: row 1 (line 2): image 'nope.jpg' not found", err, 1, true)
    ok, _, err = run("lua5.4 examples/train.lua --model x --data y --epochs two", tmp)
    assert.is_false(ok)
    assert.matches("--epochs expects an integer, got 'two'", err, 1, true)
    ok, _, err = run(("lua5.4 examples/train.lua --model %s --data %spairs.csv --out %s --loss nope")
      :format(TINY, DATA, q(tmp .. "/nope")), tmp)
    assert.is_false(ok)
    assert.matches("unknown loss 'nope'; known: ", err, 1, true)
    assert.is_false(clip.core.is_dir(tmp .. "/nope"))
  end)

  it("--resume continues the last checkpoint; --eval-every N evaluates by steps", function()
    local out_dir = tmp .. "/run3"
    local base = ("lua5.4 examples/train.lua --model %s --data %spairs.csv --out %s --batch-size 4 --quiet --no-chart ")
      :format(TINY, DATA, q(out_dir))
    local ok, _, err = run(base .. "--epochs 1 --eval-every 2", tmp)
    assert.is_true(ok, err)
    assert.is_true(clip.core.is_dir(out_dir .. "/checkpoints/step-2"))
    ok, _, err = run(base .. "--epochs 2 --eval-every 2 --resume", tmp)
    assert.is_true(ok, err)
    local steps = {}
    for _, l in ipairs(lines(H.read(out_dir .. "/metrics.jsonl"))) do
      local r = clip.json.decode(l)
      if r.type == "train" then steps[#steps + 1] = r.step end
    end
    assert.same({ 1, 2, 3, 4, 5, 6 }, steps) -- the first run's step 3 (after its checkpoint) was redone
    assert.same({ "step-6" }, clip.core.listdir(out_dir .. "/checkpoints"))
  end)
end)

describe("the other examples", function()
  local tmp
  setup(function() tmp = H.tmpdir() end)
  teardown(function() os.execute("rm -rf '" .. tmp .. "'") end)

  it("answer --help", function()
    for _, name in ipairs({ "train", "zero_shot", "few_shot", "linear_probe", "image_search" }) do
      local ok, out = run("lua5.4 examples/" .. name .. ".lua --help", tmp)
      assert.is_true(ok, name)
      assert.matches("^usage: lua5.4 examples/" .. name .. "%.lua", out)
      assert.matches("--model DIR", out, 1, true)
    end
  end)

  it("zero_shot.lua: a labelled folder (accuracy, per class, confusion) and single images", function()
    local ok, out, err = run(("lua5.4 examples/zero_shot.lua --model %s --folder %simages --classes 'color photo,gray photo'")
      :format(TINY, DATA), tmp)
    assert.is_true(ok, err)
    assert.matches("16 images, 2 classes, 80 templates", out, 1, true)
    assert.matches("top%-1 %d%.%d+   top%-5 1%.0000", out)
    assert.matches("\ncolor photo%s+10%s", out)
    assert.matches("\ngray photo%s+6%s", out)
    assert.matches("confusion (rows: true class, columns: predicted)", out, 1, true)
    ok, out, err = run(("lua5.4 examples/zero_shot.lua --model %s --classes cat,dog --templates simple %simages/color/rgb.png")
      :format(TINY, DATA), tmp)
    assert.is_true(ok, err)
    assert.matches("rgb.png: %a+ %d+%.%d%%, %a+ %d+%.%d%%\n", out)
  end)

  it("few_shot.lua and linear_probe.lua on the demo folder", function()
    local ok, out, err = run(("lua5.4 examples/few_shot.lua --model %s --folder %simages --k 2"):format(TINY, DATA), tmp)
    assert.is_true(ok, err)
    assert.matches("2-shot: 4 examples, 12 queries, 2 classes", out, 1, true)
    assert.matches("\ncolor%s+2%s+8%s", out)
    ok, out, err = run(("lua5.4 examples/linear_probe.lua --model %s --folder %simages --steps 50"):format(TINY, DATA), tmp)
    assert.is_true(ok, err)
    assert.matches("images: train 9, valid 3, test 4; 2 classes; 24%-dim features", out)
    assert.matches("<%- chosen", out)
    assert.matches("test top%-1 %d%.%d+", out)
  end)

  it("image_search.lua: index, query by text and by image, rank captions", function()
    local idx = tmp .. "/idx"
    local ok, out, err = run(("lua5.4 examples/image_search.lua index --model %s --out %s --quiet %simages")
      :format(TINY, q(idx), DATA), tmp)
    assert.is_true(ok, err)
    assert.matches("indexed 16 images (0 skipped)", out, 1, true)
    ok, out, err = run(("lua5.4 examples/image_search.lua query --model %s --index %s --text 'a red circle' --k 3")
      :format(TINY, q(idx)), tmp)
    assert.is_true(ok, err)
    assert.equal(3, #lines(out))
    ok, out, err = run(("lua5.4 examples/image_search.lua query --model %s --index %s --image %simages/color/rgb.png --k 1")
      :format(TINY, q(idx), DATA), tmp)
    assert.is_true(ok, err)
    assert.matches("^ 1  1%.0000  .*images/color/rgb%.png\n$", out)
    ok, out, err = run(("lua5.4 examples/image_search.lua captions --model %s --captions 'a cat,a dog' %simages/color/rgb.png")
      :format(TINY, DATA), tmp)
    assert.is_true(ok, err)
    assert.equal(2, #lines(out))
    ok = run(("lua5.4 examples/image_search.lua frobnicate --model %s"):format(TINY), tmp)
    assert.is_false(ok)
  end)
end)

describe("clip.cli", function()
  local cli = require "clip.cli"
  local spec = {
    usage = "x --a N",
    options = {
      { "count", "N", "a count", type = "integer", default = 2 },
      { "rate", "R", "a rate", type = "number" },
      { "name", "S", "a name", required = true },
      { "tags", "LIST", "tags", type = "list", default = { "p" } },
      { "mode", "M", "a mode", type = "choice", choices = { "a", "b" } },
      { "dry-run", nil, "a flag", type = "flag" },
    },
    positional = { "FILE", "files" },
  }

  it("parses options, defaults, lists, flags and positionals", function()
    local a = cli.parse({ "--name", "n", "--rate=0.5", "f1", "--tags", "x,y", "--tags", "z", "--dry-run", "f2" }, spec,
      { exit = false })
    assert.equal("n", a.name)
    assert.equal(2, a.count)
    assert.equal(0.5, a.rate)
    assert.same({ "x", "y", "z" }, a.tags)
    assert.is_true(a.dry_run)
    assert.same({ "f1", "f2" }, { a[1], a[2] })
    local b = cli.parse({ "--name=m", "--no-dry-run", "--", "--literal" }, spec, { exit = false })
    assert.same({ "p" }, b.tags)
    assert.is_false(b.dry_run)
    assert.equal("--literal", b[1])
  end)

  it("reports errors and help without exiting when asked", function()
    local function err(argv) return select(2, cli.parse(argv, spec, { exit = false })) end
    assert.equal("--name is required", err({}))
    assert.equal("--count expects an integer, got '1.5'", err({ "--name", "n", "--count", "1.5" }))
    assert.equal("--mode must be one of a, b, got 'c'", err({ "--name", "n", "--mode", "c" }))
    assert.equal("unknown option --nope", err({ "--name", "n", "--nope" }))
    assert.equal("--rate needs a value", err({ "--name", "n", "--rate" }))
    local _, what, text = cli.parse({ "-h" }, spec, { exit = false })
    assert.equal("help", what)
    assert.matches("usage: x --a N", text, 1, true)
    assert.matches("--count N%s+a count %(default 2%)", text)
  end)
end)

describe("clip.progress", function()
  local progress = require "clip.progress"

  local function capture(mode, fn)
    local f = io.tmpfile()
    local bar = progress.new({ total = 4, label = "enc", unit = "img", stream = f, mode = mode })
    fn(bar)
    f:seek("set")
    local s = f:read("a")
    f:close()
    return s
  end

  it("lines: one summary line; bar: redrawn in place with rate and ETA; quiet: nothing", function()
    local s = capture("lines", function(b) for _ = 1, 4 do b:advance(1) end b:finish() end)
    assert.matches("^enc: 4 img in %d+%.%ds %(%S+ img/s%)\n$", s)
    local t = capture("bar", function(b) b:update(2); b:update(4); b:finish() end)
    assert.matches("\r\27%[Kenc  %[############............%]  2/4  ", t)
    assert.matches("img/s", t, 1, true)
    assert.matches("\n$", t)
    assert.equal("", capture("quiet", function(b) b:advance(4); b:log("x"); b:finish() end))
    assert.equal("x\ndone\n", capture("lines", function(b) b:log("x"); b:finish("done") end))
    -- transient: erased at finish ("bar"), silent ("lines")
    local f = io.tmpfile()
    local tb = progress.new({ total = 2, label = "e", stream = f, mode = "bar", transient = true })
    tb:update(2)
    tb:finish()
    f:seek("set")
    assert.matches("\r\27%[K$", f:read("a"))
    f:close()
    local g = io.tmpfile()
    progress.new({ total = 2, stream = g, mode = "lines", transient = true }):update(2):finish()
    g:seek("set")
    assert.equal("", g:read("a"))
    g:close()
  end)

  it("wrap: nil is silent, a function is called, a mode makes a bar", function()
    local seen = {}
    local w = progress.wrap(function(d, n) seen[#seen + 1] = d .. "/" .. n end, 3)
    w:update(1); w:advance(2); w:finish()
    assert.same({ "1/3", "3/3" }, seen)
    progress.wrap(nil, 3):update(2)
    assert.has_error(function() progress.wrap(42, 3) end)
    assert.equal("1:05", progress.format_duration(65))
    assert.equal("1:01:01", progress.format_duration(3661))
    assert.is_number(progress.clock())
  end)
end)

describe("clip.chart and the PNG writer", function()
  local chart = require "clip.chart"
  local tmp
  setup(function() tmp = H.tmpdir() end)
  teardown(function() os.execute("rm -rf '" .. tmp .. "'") end)

  it("writes RGB PNGs atomically that decode to the same bytes", function()
    local rgb = {}
    for i = 0, 3 * 5 * 3 - 1 do rgb[#rgb + 1] = string.char((i * 37) % 256) end
    rgb = table.concat(rgb)
    assert.is_true(clip.core.png_write(tmp .. "/a.png", 5, 3, rgb))
    local img = clip.image.load(tmp .. "/a.png")
    assert.equal(rgb, img:bytes())
    assert.is_nil(io.open(tmp .. "/a.png.tmp", "rb"))
    local ok, err = clip.core.png_write(tmp .. "/no/such/dir/a.png", 5, 3, rgb)
    assert.is_nil(ok)
    assert.matches("/no/such/dir/a.png: ", err, 1, true)
    assert.has_error(function() clip.core.png_write(tmp .. "/b.png", 5, 3, "short") end)
    assert.has_error(function() clip.core.png_write(tmp .. "/b.png", 0, 3, "") end)
  end)

  it("draws on a canvas: rectangles, clipped; anti-aliased lines", function()
    local cv = clip.core.canvas(10, 10)
    assert.same({ 255, 255, 255 }, { cv:pixel(0, 0) })
    cv:fill_rect(-5, -5, 7, 7, 10, 20, 30)
    assert.same({ 10, 20, 30 }, { cv:pixel(1, 1) })
    assert.same({ 255, 255, 255 }, { cv:pixel(2, 2) })
    cv:line(0, 5.5, 10, 5.5, 0, 0, 0, 1)
    assert.same({ 0, 0, 0 }, { cv:pixel(5, 5) })
    assert.same({ 255, 255, 255 }, { cv:pixel(5, 8) })
    assert.has_error(function() cv:pixel(10, 0) end)
    assert.equal(300, #cv:bytes())
  end)

  it("renders a chart: nice ticks, text, series, legend", function()
    local ticks, lo, hi = chart.nice_ticks(0.013, 0.047)
    assert.same({ 0.01, 0.05 }, { lo, hi })
    assert.equal(5, #ticks)
    local t2 = chart.nice_ticks(3, 3)
    assert.is_true(#t2 >= 2)
    assert.equal(29, chart.text_width("hello"))
    local path = chart.write(tmp .. "/c.png", { title = "t", width = 400, panels = {
      { title = "loss", x_label = "step", series = { { name = "a", points = { { 1, 2 }, { 2, 0 / 0 }, { 3, 1 } } } } },
      { series = {} },
    } })
    local img = clip.image.load(path)
    assert.same({ 400, 30 + 520 }, { img.width, img.height })
    assert.has_error(function() chart.write(tmp .. "/d.png", { panels = {} }) end)
    assert.has_error(function() chart.write(tmp .. "/no/d.png", { panels = { {} } }) end)
  end)
end)
