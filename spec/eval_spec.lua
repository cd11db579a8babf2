-- spec/eval_spec.lua - clip.eval against hand-computed cases: triplet accuracy
-- (ties), ranks and Recall@k (ties, k larger than the set, several matches),
-- open_clip's retrieval metrics, classification metrics (empty classes,
-- confusion matrix), prompt ensembling, prototypes, the linear probe, the
-- evaluator objects and the frozen-feature cache; clip.templates.
local clip = require "clip"
local eval = require "clip.eval"
local templates = require "clip.templates"
local H = require "spec.helpers"

local T = clip.tensor
local MODEL = H.fixtures .. "models/tiny"
local IMAGES = H.fixtures .. "images/"

describe("triplet accuracy", function()
  it("is strict: a tie counts as wrong", function()
    local a = T({ { 1, 0 }, { 1, 0 }, { 0, 1 }, { 3, 4 } })
    local p = T({ { 1, 0 }, { 0, 1 }, { 1, 1 }, { 3, 4 } })
    local n = T({ { 0, 1 }, { 0, 1 }, { 1, 1 }, { -3, -4 } })
    local acc, hits = eval.triplet_accuracy(a, p, n)
    -- row 1: 1 > 0; row 2: 0 = 0 (tie); row 3: equal vectors (tie); row 4: 1 > -1
    assert.same({ true, false, false, true }, hits)
    assert.equal(0.5, acc)
    -- cosine: lengths do not matter
    local acc2 = eval.triplet_accuracy(a * 7, p * 0.5, n * 3)
    assert.equal(0.5, acc2)
    assert.has_error(function() eval.triplet_accuracy(a, p:rows(1, 2), n) end)
  end)
end)

describe("ranks and Recall@k", function()
  it("ranks by descending score, ties in index order, NaN last, best of several matches", function()
    local s = T({ { 0.9, 0.1, 0.5 }, { 0.2, 0.2, 0.2 }, { 0.3, 0.8, 0.8 }, { 0.1, 0.9, 0.5 } })
    assert.same({ 1, 2, 2, 2 }, eval.ranks(s, { 1, 2, 3, { 1, 3 } }))
    assert.same({ 1 }, eval.ranks(T({ { 0.2, 0.2, 0.2 } }), { 1 }))
    local nan = T({ { 0 / 0, 0.5 } })
    assert.same({ 2 }, eval.ranks(nan, { 1 }))
    assert.same({ 1 }, eval.ranks(nan, { 2 }))
    assert.has_error(function() eval.ranks(s, { 1, 2, 3 }) end)
    assert.has_error(function() eval.ranks(s, { 1, 2, 3, 4 }) end)
    assert.has_error(function() eval.ranks(s, { 1, 2, 3, {} }) end)
  end)

  it("Recall@k is the seed's: row i hit when i is in its top k; k past the set hits everything", function()
    local s = T({ { 0.9, 0.1, 0.5 }, { 0.2, 0.2, 0.2 }, { 0.3, 0.8, 0.8 } })
    local r1, hits = eval.recall_at_k(s, 1)
    assert.same({ true, false, false }, hits)
    assert.near(1 / 3, r1, 1e-12)
    assert.equal(1, (eval.recall_at_k(s, 2)))
    assert.equal(1, (eval.recall_at_k(s, 3)))
    assert.equal(1, (eval.recall_at_k(s, 100)))
  end)
end)

describe("retrieval metrics (open_clip's definitions)", function()
  it("image->text and text->image R@k, mean rank, floor median rank, MRR", function()
    -- cos: i1=(1,0) i2=(0,1) i3=(1,1)/sqrt2 against t1=(1,0) t2=(1,1)/sqrt2 t3=(0,1)
    local img = T({ { 1, 0 }, { 0, 1 }, { 1, 1 } })
    local txt = T({ { 1, 0 }, { 1, 1 }, { 0, 1 } })
    local m = eval.retrieval_metrics(img, txt, { ks = { 1, 2, 5 }, ranks = true })
    -- i2t: i1 -> t1 first (1); i2: t3 (1.0) before t2 -> 2; i3: t2 (1.0), then t1 = t3 (tie, t1 first) -> 3
    assert.same({ 1, 2, 3 }, m.image_to_text_ranks)
    -- t2i: t1 -> i1 (1); t2: i3 (1.0), then i1 = i2 tie, i1 first -> 3; t3: i2 (1.0) first -> 2
    assert.same({ 1, 3, 2 }, m.text_to_image_ranks)
    for _, d in ipairs({ "image_to_text_", "text_to_image_" }) do
      assert.near(2, m[d .. "mean_rank"], 1e-12)
      assert.equal(2, m[d .. "median_rank"])
      assert.near((1 + 1 / 2 + 1 / 3) / 3, m[d .. "mrr"], 1e-12)
      assert.near(1 / 3, m[d .. "R@1"], 1e-12)
      assert.near(2 / 3, m[d .. "R@2"], 1e-12)
      assert.equal(1, m[d .. "R@5"]) -- k larger than the set
    end
  end)

  it("median rank of an even count is floored (open_clip: floor(median(rank - 1)) + 1)", function()
    local m = eval.retrieval_metrics(T({ { 1, 0 }, { 0, 1 } }), T({ { 1, 0 }, { 1, 0 } }), { ks = { 1 }, ranks = true })
    assert.same({ 1, 2 }, m.image_to_text_ranks) -- row 2: all scores 0, t1 ahead of t2
    assert.equal(1.5, m.image_to_text_mean_rank)
    assert.equal(1, m.image_to_text_median_rank)
    assert.equal(0.5, m["image_to_text_R@1"])
  end)

  it("several texts per image (text_image)", function()
    local img = T({ { 1, 0 }, { 0, 1 } })
    local txt = T({ { 0, 1 }, { 1, 0.1 }, { 1, 1 } }) -- t1, t2 -> i1; t3 -> i2
    local m = eval.retrieval_metrics(img, txt, { text_image = { 1, 1, 2 }, ks = { 1 }, ranks = true })
    -- i1: t2 best (0.995), a match -> 1; i2: t1 (1.0) first, t3 (0.707) -> 2
    assert.same({ 1, 2 }, m.image_to_text_ranks)
    -- t1: i2 (1) before i1 (0) -> 2; t2: i1 -> 1; t3: tie 0.707, i1 first, match is i2 -> 2
    assert.same({ 2, 1, 2 }, m.text_to_image_ranks)
    assert.has_error(function() eval.retrieval_metrics(img, txt) end)
    assert.has_error(function() eval.retrieval_metrics(img, txt, { text_image = { 1, 1, 1 } }) end)
    assert.has_error(function() eval.retrieval_metrics(img, txt, { text_image = { 1, 1, 3 } }) end)
  end)
end)

describe("classification metrics", function()
  it("top-k, per-class accuracy with an empty class, confusion matrix", function()
    local s = T({ { 0.9, 0.1, 0 }, { 0.2, 0.7, 0.1 }, { 0.5, 0.5, 0 }, { 0.1, 0.2, 0.3 } })
    local r = eval.classification_metrics(s, { 1, 2, 2, 1 }, { ks = { 1, 2, 5 }, classnames = { "a", "b", "c" } })
    -- row 3 ties classes 1 and 2: argmax takes 1, so the true class 2 ranks 2
    assert.same({ 1, 1, 2, 3 }, r.ranks)
    assert.same({ 1, 2, 1, 3 }, r.predictions)
    assert.equal(0.5, r.top1)
    assert.equal(0.75, r.top2)
    assert.equal(1, r.top5) -- k larger than the number of classes
    assert.same({ class = 1, name = "a", n = 2, correct = 1, accuracy = 0.5 }, r.per_class[1])
    assert.same({ class = 2, name = "b", n = 2, correct = 1, accuracy = 0.5 }, r.per_class[2])
    assert.same({ class = 3, name = "c", n = 0, correct = 0 }, r.per_class[3]) -- no samples: no accuracy
    assert.equal(0.5, r.mean_per_class)
    assert.same({ { 1, 0, 1 }, { 1, 1, 0 }, { 0, 0, 0 } }, r.confusion)
    assert.has_error(function() eval.classification_metrics(s, { 1, 2 }) end)
  end)
end)

describe("prototypes and the linear probe", function()
  it("prototypes are means of normalized embeddings; empty classes are never predicted", function()
    local e = T({ { 2, 0 }, { 0, 3 }, { 1, 1 } })
    local p, counts = eval.prototypes(e, { 1, 1, 2 }, 3)
    H.assert_close(p, { { 0.5, 0.5 }, { math.sqrt(0.5), math.sqrt(0.5) }, { 0, 0 } }, { atol = 1e-7 })
    assert.same({ 2, 1, 0 }, counts)
    local s = eval.nearest_prototype_scores(T({ { -1, -1 } }), p, counts)
    assert.equal(-math.huge, s:get(1, 3))
    assert.same({ 1 }, s:argmax()) -- class 3's cosine would be 0 > -1, but it is empty
    assert.has_error(function() eval.prototypes(e, { 1, 1, 4 }, 3) end)
  end)

  it("the probe's first step is AdamW on the cross-entropy gradient (from zeros)", function()
    local x = T({ { 1, 2 }, { -1, 0.5 }, { 0.5, -2 } })
    local y = { 1, 2, 2 }
    local probe = eval.linear_probe(x, y, { steps = 1, lr = 0.1, standardize = false })
    -- logits 0 -> softmax 1/2; dlogits = (p - onehot) / N; gW = dᵀ x; gb = Σ d
    local d = { { -0.5, 0.5 }, { 0.5, -0.5 }, { 0.5, -0.5 } }
    local gW = { { 0, 0 }, { 0, 0 } }
    local gb = { 0, 0 }
    for i = 1, 3 do
      for c = 1, 2 do
        gb[c] = gb[c] + d[i][c] / 3
        for j = 1, 2 do gW[c][j] = gW[c][j] + d[i][c] / 3 * x:get(i, j) end
      end
    end
    -- Adam step 1: m̂/(sqrt(v̂)+eps) = g/(|g|+eps) -> -lr * sign(g)
    local function step(g) return g == 0 and 0 or -0.1 * g / (math.abs(g) + 1e-8) end
    H.assert_close(probe.W, { { step(gW[1][1]), step(gW[1][2]) }, { step(gW[2][1]), step(gW[2][2]) } }, { atol = 1e-6 })
    H.assert_close(probe.b, { step(gb[1]), step(gb[2]) }, { atol = 1e-6 })
  end)

  it("separates separable data, sweeps L2 on validation (ties: the larger), and is deterministic", function()
    local rows, y, vrows, vy = {}, {}, {}, {}
    for i = 1, 30 do
      local a = (i % 3) + 1
      rows[i] = { a == 1 and 2 or 0, a == 2 and 2 or 0, a == 3 and 2 or 0, (i % 5) * 0.1 }
      y[i] = a
      if i <= 9 then vrows[i], vy[i] = rows[i], a end
    end
    local x, vx = T(rows), T(vrows)
    local p = eval.linear_probe(x, y, { valid_x = vx, valid_y = vy, l2 = { 0, 0.01, 0.1 }, steps = 100 })
    assert.equal(3, #p.sweep)
    for _, s in ipairs(p.sweep) do assert.equal(1, s.valid_top1) end
    assert.equal(0.1, p.l2)
    assert.equal(1, p:evaluate(x, y).top1)
    assert.same(y, p:predict(x))
    local p2 = eval.linear_probe(x, y, { valid_x = vx, valid_y = vy, l2 = { 0, 0.01, 0.1 }, steps = 100 })
    H.assert_close(p2.W, p.W, { atol = 0 })
    -- L2 shrinks the weights
    local free = eval.linear_probe(x, y, { l2 = 0, steps = 100 })
    local tied = eval.linear_probe(x, y, { l2 = 1, steps = 100 })
    assert.is_true(clip.core.sumsq(tied.W) < clip.core.sumsq(free.W))
    -- mini-batches with a seed
    local mb = eval.linear_probe(x, y, { steps = 50, batch_size = 8, seed = 1 })
    assert.equal(1, mb:evaluate(x, y).top1)
  end)
end)

describe("templates", function()
  it("has the 80 OpenAI ImageNet templates and the 7 selected ones", function()
    local t = templates.get("openai_imagenet")
    assert.equal(80, #t)
    assert.equal("a bad photo of a {}.", t[1])
    assert.equal("a photo of many {}.", t[2])
    assert.equal("a tattoo of the {}.", t[80])
    local seen = {}
    for _, s in ipairs(t) do
      assert.truthy(s:find("{}", 1, true))
      assert.is_nil(seen[s])
      seen[s] = true
    end
    local seven = templates.get("openai_imagenet_7")
    assert.equal(7, #seven)
    for _, s in ipairs(seven) do assert.is_true(seen[s], s) end
    assert.same({ "a photo of a {}." }, templates.get("simple"))
    assert.same({ "a {c} photo" }, templates.get("a {c} photo"))
    assert.equal("a photo of a 50% off sale.", templates.format("a photo of a {}.", "50% off sale"))
    assert.has_error(function() templates.get("nope") end)
    assert.has_error(function() templates.get({ "no placeholder" }) end)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write("a photo of the {}.\n\n  this is a {c}.  \n")
    f:close()
    assert.same({ "a photo of the {}.", "this is a {c}." }, templates.get("@" .. path))
    f = assert(io.open(path, "w"))
    f:write("no placeholder\n")
    f:close()
    assert.has_error(function() templates.get("@" .. path) end, path .. ": line 1: a template must hold {} or {c}")
    os.remove(path)
    t[1] = "changed"
    assert.equal("a bad photo of a {}.", templates.get("openai_imagenet")[1])
  end)
end)

describe("with a model", function()
  local model
  local imgs = { IMAGES .. "natural.jpg", IMAGES .. "portrait.jpg", IMAGES .. "rgb.png", IMAGES .. "gray.png" }
  local txts = { "a red circle", "a tall picture", "a small png", "a gray image" }
  setup(function() model = clip.load(MODEL) end)
  teardown(function() model:close() end)

  it("embeds with the cache exactly as encode_images / encode_texts, and rebuilds it when frozen weights change", function()
    model:train_only({ "projection" })
    eval.clear_cache(model)
    local e = eval.embedder(model)
    H.assert_close(e:images(imgs), model:encode_images(imgs), { atol = 0, label = "images" })
    H.assert_close(e:images(imgs), model:encode_images(imgs), { atol = 0, label = "images, cached" })
    H.assert_close(e:texts(txts), model:encode_texts(txts), { atol = 0, label = "texts" })
    local n = 0
    for _ in pairs(e.cache.vision) do n = n + 1 end
    assert.equal(4, n)
    -- a frozen weight changed by hand: the fingerprint notices
    local w = model:param("vision_model.post_layernorm.weight")
    local saved = w:clone()
    local before = e:images(imgs)
    w:scale_(1.5)
    local after = e:images(imgs)
    H.assert_close(after, model:encode_images(imgs), { atol = 0, label = "after a change" })
    assert.is_true((after - before):max() > 1e-3)
    w:copy(saved)
    -- a changed projection needs no rebuild: it runs on every call
    local vp = model:param("visual_projection.weight")
    local vsaved = vp:clone()
    vp:scale_(2)
    H.assert_close(e:images(imgs), model:encode_images(imgs), { atol = 0, label = "projection changed" })
    vp:copy(vsaved)
    -- trainable below the projection: no cache
    model:set_trainable("^vision_model%.post_layernorm", true)
    H.assert_close(e:images(imgs), model:encode_images(imgs), { atol = 0, label = "trainable tower" })
    model:train_only({ "projection" })
  end)

  it("TripletEvaluator and RecallEvaluator give the metric functions' numbers under the seed's keys", function()
    local neg = { txts[2], txts[3], txts[4], txts[1] }
    local ev = eval.TripletEvaluator({ anchors = imgs, positives = txts, negatives = neg, name = "train" })
    local m = ev(model)
    local want = eval.triplet_accuracy(model:encode_images(imgs), model:encode_texts(txts), model:encode_texts(neg))
    assert.same({ train_cosine_accuracy = want }, m)
    local rv = eval.RecallEvaluator({ images = imgs, texts = txts, k = 2, name = "valid" })
    local s = clip.cosine_similarity(model:encode_images(imgs), model:encode_texts(txts))
    assert.same({ ["valid_Recall@2"] = (eval.recall_at_k(s, 2)) }, rv(model))
    local ret = eval.RetrievalEvaluator({ images = imgs, texts = txts, name = "x" })(model)
    assert.equal(eval.retrieval_metrics(model:encode_images(imgs), model:encode_texts(txts))["image_to_text_R@1"],
      ret["x_image_to_text_R@1"])
    local seq = eval.SequentialEvaluator({ ev, rv })(model)
    assert.truthy(seq.train_cosine_accuracy and seq["valid_Recall@2"])
    assert.has_error(function() eval.TripletEvaluator({ anchors = imgs, positives = txts, negatives = { "x" } }) end)
  end)

  it("zero-shot weights: normalize each prompt, average, renormalize (the notebook's ensembling)", function()
    local classes, tl = { "cat", "dog" }, { "a photo of a {}.", "a drawing of the {}." }
    local w = eval.zero_shot_weights(model, classes, tl)
    assert.same({ 2, 24 }, w:shape())
    for c, name in ipairs(classes) do
      local e = model:encode_texts({ "a photo of a " .. name .. ".", "a drawing of the " .. name .. "." }):normalize()
      local mean = ((e:rows(1) + e:rows(2)) * 0.5):normalize()
      H.assert_close(w:rows(c), mean, { atol = 1e-6, label = name })
    end
    local w80 = eval.zero_shot_weights(model, classes)
    assert.same({ 2, 24 }, w80:shape())
  end)

  it("ZeroShotEvaluator and FewShotEvaluator agree with the metric functions", function()
    local labels = { 1, 1, 1, 2 }
    local zs = eval.ZeroShotEvaluator({ images = imgs, labels = labels, classnames = { "color", "gray" },
      templates = "simple", name = "zs" })
    local r = zs:compute(model)
    local s = clip.cosine_similarity(model:encode_images(imgs), eval.zero_shot_weights(model, { "color", "gray" }, "simple"))
    local want = eval.classification_metrics(s, labels)
    assert.equal(want.top1, r.top1)
    assert.same(want.confusion, r.confusion)
    local m = zs(model)
    assert.equal(want.top1, m.zs_top1)
    assert.equal(1, m.zs_top5)
    -- few-shot with an empty class (3) in the support set
    local fs = eval.FewShotEvaluator({ support_images = { imgs[1], imgs[4] }, support_labels = { 1, 2 },
      query_images = { imgs[2], imgs[3], imgs[4] }, query_labels = { 1, 1, 2 }, num_classes = 3 })
    local fr = fs:compute(model)
    assert.same({ 1, 1, 0 }, fr.support_counts)
    local protos, counts = eval.prototypes(model:encode_images({ imgs[1], imgs[4] }), { 1, 2 }, 3)
    local qs = eval.nearest_prototype_scores(model:encode_images({ imgs[2], imgs[3], imgs[4] }), protos, counts)
    assert.same(qs:argmax(), fr.predictions)
    for _, p in ipairs(fr.predictions) do assert.is_true(p ~= 3) end
    assert.equal(3, fr.n)
  end)
end)
