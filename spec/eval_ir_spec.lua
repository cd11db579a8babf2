-- spec/eval_ir_spec.lua - clip.eval's InformationRetrievalEvaluator
-- (sentence-transformers 3.3): a hand-checked case, and numpy formulas on
-- random embeddings (spec/fixtures/make_ir.py -> fixtures/ir/ir.json,
-- compared at 1e-12; no Python needed here).
local clip = require "clip"
local eval = require "clip.eval"
local H = require "spec.helpers"

local ir = clip.json.decode(H.read(H.fixtures .. "ir/ir.json"))

local function metrics_close(got, want, prefix, label)
  local n = 0
  for key, v in pairs(want) do
    local g = got[prefix .. key]
    assert.is_not_nil(g, label .. ": missing " .. prefix .. key)
    assert.is_true(math.abs(g - v) <= 1e-12, ("%s %s: %.17g, numpy %.17g"):format(label, key, g, v))
    n = n + 1
  end
  local m = 0
  for _ in pairs(got) do m = m + 1 end
  assert.equal(n, m, label .. ": key count")
end

local function emb(rows) return clip.tensor(rows) end

local FIXTURE_KS = {
  accuracy_at_k = ir.ks.accuracy, precision_recall_at_k = ir.ks.precision_recall, mrr_at_k = ir.ks.mrr,
  ndcg_at_k = ir.ks.ndcg, map_at_k = ir.ks.map,
}

describe("information_retrieval_metrics: a hand-checked case", function()
  -- 5 corpus items; rows are queries. Ranking per row (descending score):
  --   q1 {0.9, 0.1, 0.8, 0.3, 0.5}: c1 c3 c5 c4 c2; relevant {3, 4} at ranks 2 and 4
  --   q2 {0.2, 0.7, 0.6, 0.1, 0.9}: c5 c2 c3 c1 c4; relevant {5} at rank 1
  --   q3: no relevant item, skipped (as sentence-transformers)
  --   q4 {0.5, 0.5, 0.4, 0.3, 0.2}: the tie goes to the lower column: c1 c2 ...;
  --      relevant {2} at rank 2
  local scores = clip.tensor({ { 0.9, 0.1, 0.8, 0.3, 0.5 }, { 0.2, 0.7, 0.6, 0.1, 0.9 }, { 1, 0, 0, 0, 0 },
    { 0.5, 0.5, 0.4, 0.3, 0.2 } })
  local relevant = { { 3, 4 }, { 5 }, {}, { 2 } }
  local L = 1 / math.log(3, 2) -- the discount at rank 2: 1/log2(3) = 0.6309
  local want = {
    queries = 3,
    -- any relevant in the top k: q1 no/yes, q2 yes/yes, q4 no/yes
    ["accuracy@1"] = 1 / 3, ["accuracy@3"] = 1, ["accuracy@10"] = 1,
    -- hits(k)/k: @1 (0 + 1 + 0)/3; @3 (1/3 + 1/3 + 1/3)/3; @10 (k past the
    -- 5 items still divides by 10) (2/10 + 1/10 + 1/10)/3
    ["precision@1"] = 1 / 3, ["precision@3"] = 1 / 3, ["precision@10"] = 4 / 30,
    -- hits(k)/R: @1 (0 + 1 + 0)/3; @3 (1/2 + 1 + 1)/3; @10 (1 + 1 + 1)/3
    ["recall@1"] = 1 / 3, ["recall@3"] = 5 / 6, ["recall@10"] = 1,
    -- first relevant at ranks 2, 1, 2: @1 (0 + 1 + 0)/3; @3 (1/2 + 1 + 1/2)/3
    ["mrr@1"] = 1 / 3, ["mrr@3"] = 2 / 3,
    -- q1: DCG L (rank 2), IDCG 1 + L (R = 2); q2: 1/1; q4: L/1
    ["ndcg@3"] = (L / (1 + L) + 1 + L) / 3,
    -- q1: @3 (1/2)/min(3,2) = 1/4, @10 (1/2 + 2/4)/2 = 1/2; q2: 1, 1; q4: 1/2, 1/2
    ["map@3"] = (1 / 4 + 1 + 1 / 2) / 3, ["map@10"] = (1 / 2 + 1 + 1 / 2) / 3,
  }
  local ks = { accuracy_at_k = { 1, 3, 10 }, precision_recall_at_k = { 1, 3, 10 }, mrr_at_k = { 1, 3 },
    ndcg_at_k = { 3 }, map_at_k = { 3, 10 } }

  it("gives the hand-computed numbers", function()
    local m = eval.information_retrieval_metrics(scores, relevant, ks)
    for k, v in pairs(want) do assert.is_true(math.abs(m[k] - v) < 1e-15, k .. ": " .. tostring(m[k])) end
    local n = 0
    for _ in pairs(m) do n = n + 1 end
    assert.equal(15, n) -- 14 metrics and queries
  end)

  it("per_query holds each kept row's values", function()
    local m = eval.information_retrieval_metrics(scores, relevant, { mrr_at_k = { 3 }, per_query = true })
    H.assert_close(m.per_query["mrr@3"], { 1 / 2, 1, 1 / 2 }, { atol = 0 })
    -- q1 at k = 10: both relevant items count, at ranks 2 and 4
    H.assert_close(m.per_query["ndcg@10"], { (L + 1 / math.log(5, 2)) / (1 + L), 1, L }, { atol = 1e-15 })
  end)

  it("the evaluator: ids, sets, skipped queries and sentence-transformers' keys", function()
    -- dot products of one-hot queries with the score columns give the scores above
    local q = clip.tensor({ { 1, 0, 0, 0 }, { 0, 1, 0, 0 }, { 0, 0, 1, 0 }, { 0, 0, 0, 1 } })
    local ev = eval.InformationRetrievalEvaluator({
      queries = q, corpus = scores:t(), score_function = "dot", name = "dev",
      query_ids = { "q1", "q2", "q3", "q4" }, corpus_ids = { "a", "b", "c", "d", "e" },
      relevant = { q1 = { "c", "d" }, q2 = { e = true }, q4 = "b" },
      accuracy_at_k = ks.accuracy_at_k, precision_recall_at_k = ks.precision_recall_at_k, mrr_at_k = ks.mrr_at_k,
      ndcg_at_k = ks.ndcg_at_k, map_at_k = ks.map_at_k,
    })
    local w = {}
    for k, v in pairs(want) do if k ~= "queries" then w[k] = v end end
    local m = ev() -- precomputed embeddings: no model needed
    for k, v in pairs(w) do assert.is_true(math.abs(m["dev_dot_" .. k] - v) < 1e-7, k) end -- float32 scores
    local n = 0
    for _ in pairs(m) do n = n + 1 end
    assert.equal(14, n)
    assert.equal("dev_dot_ndcg@3", ev.primary_metric)
    assert.same(m, ev:evaluate_embeddings(q, scores:t()))
  end)

  it("defaults: sentence-transformers' k lists and key names, no prefix without a name", function()
    local ev = eval.InformationRetrievalEvaluator({ queries = scores, corpus = clip.tensor({ { 1, 0, 0, 0, 0 },
      { 0, 1, 0, 0, 0 }, { 0, 0, 1, 0, 0 }, { 0, 0, 0, 1, 0 }, { 0, 0, 0, 0, 1 } }), relevant = relevant })
    local keys = {}
    for k in pairs(ev:metrics()) do keys[#keys + 1] = k end
    table.sort(keys)
    assert.same({ "cosine_accuracy@1", "cosine_accuracy@10", "cosine_accuracy@3", "cosine_accuracy@5",
      "cosine_map@100", "cosine_mrr@10", "cosine_ndcg@10",
      "cosine_precision@1", "cosine_precision@10", "cosine_precision@3", "cosine_precision@5",
      "cosine_recall@1", "cosine_recall@10", "cosine_recall@3", "cosine_recall@5" }, keys)
    assert.equal("cosine_ndcg@10", ev.primary_metric)
  end)

  it("refuses unknown corpus ids, no relevant query at all, bad k, bad score functions", function()
    local q = clip.tensor({ { 1, 0 } })
    local c = clip.tensor({ { 1, 0 }, { 0, 1 } })
    assert.has_error(function() eval.InformationRetrievalEvaluator({ queries = q, corpus = c, relevant = { { 3 } } }) end,
      "InformationRetrievalEvaluator: query 1 lists corpus id 3, not in the corpus")
    assert.has_error(function() eval.InformationRetrievalEvaluator({ queries = q, corpus = c, relevant = {} }) end)
    assert.has_error(function()
      eval.InformationRetrievalEvaluator({ queries = q, corpus = c, relevant = { { 1 } }, ndcg_at_k = { 0 } })
    end)
    assert.has_error(function()
      eval.InformationRetrievalEvaluator({ queries = q, corpus = c, relevant = { { 1 } }, score_function = "l2" })
    end)
    assert.has_error(function() eval.information_retrieval_metrics(c, { { 1 }, { 3 } }) end)
    local ev = eval.InformationRetrievalEvaluator({ queries = { "a text" }, corpus = c, relevant = { { 1 } } })
    assert.has_error(function() ev() end, "InformationRetrievalEvaluator: a model is needed to embed the inputs")
  end)
end)

describe("InformationRetrievalEvaluator vs numpy formulas (make_ir.py)", function()
  it("random embeddings, 1 to 5 relevant items per query, two queries without any", function()
    local case = ir.cases.random
    local q, c = emb(case.queries), emb(case.corpus)
    -- the float32 ranking is numpy's float64 one (make_ir.py checks the gaps)
    local _, top = clip.cosine_similarity(q, c):topk(10)
    assert.same(case.top10, top)
    local ev = eval.InformationRetrievalEvaluator({ queries = q, corpus = c, relevant = case.relevant, name = "rnd",
      accuracy_at_k = FIXTURE_KS.accuracy_at_k, precision_recall_at_k = FIXTURE_KS.precision_recall_at_k,
      mrr_at_k = FIXTURE_KS.mrr_at_k, ndcg_at_k = FIXTURE_KS.ndcg_at_k, map_at_k = FIXTURE_KS.map_at_k })
    metrics_close(ev(), case.metrics, "rnd_cosine_", "random")
    assert.equal(7, ev:compute().queries)
  end)

  it("image->text (several texts per image) and text->image", function()
    local case = ir.cases.image_text
    local args = { images = emb(case.images), texts = emb(case.texts), text_image = case.text_image, name = "val" }
    for k, v in pairs(FIXTURE_KS) do args[k] = v end
    local ev = eval.ImageTextIREvaluator(args)
    local m = ev()
    local i2t, t2i = {}, {}
    for k, v in pairs(m) do
      if k:find("^val_image_to_text_cosine_") then i2t[k] = v elseif k:find("^val_text_to_image_cosine_") then t2i[k] = v end
    end
    metrics_close(i2t, case.image_to_text, "val_image_to_text_cosine_", "image->text")
    metrics_close(t2i, case.text_to_image, "val_text_to_image_cosine_", "text->image")
    assert.same(m, ev:evaluate_embeddings(emb(case.images), emb(case.texts)))
  end)
end)

describe("InformationRetrievalEvaluator with a model", function()
  local IMAGES = H.fixtures .. "images/"
  local imgs = { IMAGES .. "natural.jpg", IMAGES .. "portrait.jpg", IMAGES .. "rgb.png", IMAGES .. "gray.png" }
  local txts = { "a red circle", "a tall picture", "a small png", "a gray image", "a photo" }
  local text_image = { 1, 2, 3, 4, 1 }

  it("embeds image and text lists and equals the metrics of the model's embeddings", function()
    local model = clip.load(H.fixtures .. "models/tiny")
    local ev = eval.ImageTextIREvaluator({ images = imgs, texts = txts, text_image = text_image, name = "m" })
    local m = ev(model)
    local want = ev:evaluate_embeddings(model:encode_images(imgs), model:encode_texts(txts))
    for k, v in pairs(want) do assert.is_true(math.abs(m[k] - v) < 1e-12, k) end
    assert.is_not_nil(m["m_image_to_text_cosine_ndcg@10"])
    assert.is_not_nil(m["m_text_to_image_cosine_map@100"])
    -- text->text with the same machinery, modality from the lists
    local tt = eval.InformationRetrievalEvaluator({ queries = { "a red circle" }, corpus = txts, relevant = { { 1, 5 } } })
    assert.equal(1, tt(model)["cosine_accuracy@1"])
    -- forced modality: image paths as queries
    local it = eval.InformationRetrievalEvaluator({ queries = imgs, corpus = txts, relevant = { { 1, 5 }, { 2 }, { 3 }, { 4 } },
      query_modality = "image", corpus_modality = "text", name = "i" })
    for k, v in pairs(it(model)) do
      assert.is_true(math.abs(v - m[k:gsub("^i_", "m_image_to_text_")]) < 1e-12, k)
    end
    model:close()
  end)
end)
