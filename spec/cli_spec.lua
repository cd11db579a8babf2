-- spec/cli_spec.lua - bin/clip: info, embed, classify, search; --help, --json,
-- table output, .npy / .safetensors / .json files, exit codes 0 / 1 / 2.
local clip = require "clip"
local npy = require "clip.npy"
local H = require "spec.helpers"

local MODEL = H.fixtures .. "models/tiny"
local IMG = H.fixtures .. "images/"
local A, B, C = IMG .. "natural.jpg", IMG .. "palette.png", IMG .. "gray.png"

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- run bin/clip; returns exit code, stdout, stderr (124 if it hung for 2 minutes)
local cli = require("spec.support.shell").clip

local function ok_json(args)
  local code, out, err = cli(args .. " --json")
  assert.equal(0, code, err)
  assert.equal("", err)
  return clip.json.decode(out)
end

-- The command runs in another Lua state, whose thread pool may slice the
-- matrix products differently from this one: the last bits may move (see
-- spec/capi_spec.lua), so embeddings are compared to 1e-5.
local TOL = { atol = 1e-5 }

local function assert_rows(rows, t, label)
  assert.equal(t:size(1), #rows, label)
  H.assert_close(rows, t, { atol = TOL.atol, label = label })
end

local function assert_tensor(a, b, label)
  assert.same(b:shape(), a:shape())
  H.assert_close(a, b, { atol = TOL.atol, label = label })
end

describe("bin/clip", function()
  local model, tmp
  setup(function()
    model = clip.load(MODEL)
    tmp = H.tmpdir()
  end)
  teardown(function()
    model:close()
    os.execute("rm -rf " .. q(tmp))
  end)

  describe("help and usage errors", function()
    it("prints the usage with --help (exit 0) and without a command (exit 2)", function()
      local code, out, err = cli("--help")
      assert.equal(0, code)
      assert.truthy(out:find("^usage: clip"))
      assert.equal("", err)
      for _, c in ipairs({ "info", "embed", "classify", "search" }) do
        assert.truthy(out:find("\n  " .. c .. " "), c .. " is listed")
        local c2, o2 = cli(c .. " --help")
        assert.equal(0, c2)
        assert.truthy(o2:find("^usage: clip " .. c), o2)
        local c3, o3 = cli("help " .. c)
        assert.equal(0, c3)
        assert.equal(o2, o3)
      end
      local c4, o4, e4 = cli("")
      assert.equal(2, c4)
      assert.equal("", o4)
      assert.truthy(e4:find("^usage: clip"))
      local c5, o5 = cli("--version")
      assert.equal(0, c5)
      assert.equal("clip " .. clip.version .. "\n", o5)
    end)

    it("exits 2 with a message and a hint for usage mistakes", function()
      local cases = {
        { "frobnicate", "clip: unknown command 'frobnicate'\nTry 'clip --help'." },
        { "info", "clip: info: expected one MODEL directory, got 0 arguments\nTry 'clip info --help'." },
        { "embed " .. q(MODEL), "clip: embed: nothing to embed" },
        { "embed " .. q(MODEL) .. " --frob", "clip: embed: unknown option '--frob'" },
        { "embed " .. q(MODEL) .. " -t", "clip: embed: option -t needs a value" },
        { "embed " .. q(MODEL) .. " -t x --batch-size 0", "clip: embed: --batch-size expects a positive integer, got '0'" },
        { "embed " .. q(MODEL) .. " -t x --normalize=yes", "clip: embed: option --normalize takes no value" },
        { "embed " .. q(MODEL) .. " -t x -o out.csv", "clip: embed: -o out.csv: the file name must end in .npy, .safetensors or .json" },
        { "embed " .. q(MODEL) .. " -t x " .. q(A) .. " -o x.npy", "clip: embed: a .npy file holds one array" },
        { "classify " .. q(MODEL) .. " " .. q(A) .. " -l cat", "clip: classify: give at least two labels" },
        { "classify " .. q(MODEL) .. " -l cat -l dog", "clip: classify: expected image files or directories" },
        { "classify " .. q(MODEL) .. " " .. q(A) .. " -l a -l b --template 'no slot'", "clip: classify: --template must contain {}" },
        { "search " .. q(MODEL), "clip: search: expected MODEL and QUERY" },
        { "search " .. q(MODEL) .. " 'a cat'", "clip: search: nothing to search" },
        { "help frob", "clip: help: unknown command 'frob'" },
      }
      for _, c in ipairs(cases) do
        local code, out, err = cli(c[1])
        assert.equal(2, code, c[1] .. ": " .. err)
        assert.equal("", out, c[1])
        assert.truthy(err:find(c[2], 1, true), c[1] .. ": " .. err)
        assert.truthy(err:find("Try 'clip [%w ]*%-%-help'%.\n$"), err)
      end
    end)

    it("exits 1 for failures of the environment, naming the file", function()
      local cases = {
        { "info /nonexistent/model", "clip: /nonexistent/model: missing config.json" },
        { "embed /nonexistent/model -t x", "clip: /nonexistent/model: missing config.json" },
        { "embed " .. q(MODEL) .. " " .. q(IMG .. "truncated.png"), IMG .. "truncated.png: PNG decode failed" },
        { "embed " .. q(MODEL) .. " /nonexistent/cat.jpg", "/nonexistent/cat.jpg: No such file" },
        { "embed " .. q(MODEL) .. " -t x --texts-file /nonexistent/t.txt", "clip: /nonexistent/t.txt: No such file" },
        { "embed " .. q(MODEL) .. " " .. q(A) .. " -o /nonexistent/dir/e.npy", "/nonexistent/dir/e.npy" },
        { "classify " .. q(MODEL) .. " /nonexistent/cat.jpg -l a -l b", "/nonexistent/cat.jpg: No such file" },
        { "search " .. q(MODEL) .. " x --index /nonexistent/i.safetensors", "clip: /nonexistent/i.safetensors: " },
        { "search " .. q(MODEL) .. " x --index " .. q(MODEL .. "/model.safetensors"), "not an index from `clip embed" },
        { "search " .. q(MODEL) .. " x " .. q(H.fixtures .. "tokenizer"), "no image files (.jpg .jpeg .png .gif .webp .bmp .tif .tiff) in this directory" },
      }
      for _, c in ipairs(cases) do
        local code, out, err = cli(c[1])
        assert.equal(1, code, c[1] .. ": " .. err)
        assert.equal("", out, c[1])
        assert.truthy(err:find(c[2], 1, true), c[1] .. ": " .. err)
        assert.falsy(err:find("%.lua:%d+:"), "a Lua position leaked into: " .. err)
        assert.falsy(err:find("traceback"), err)
      end
    end)
  end)

  describe("info", function()
    it("reports architecture, parameter counts and dtype", function()
      local j = ok_json("info " .. q(MODEL))
      local cfg = model.config
      assert.equal(cfg.projection_dim, j.projection_dim)
      assert.equal(cfg.vision_config.image_size, j.vision.image_size)
      assert.equal(cfg.vision_config.patch_size, j.vision.patch_size)
      assert.equal(16, j.vision.patches)
      assert.equal(cfg.vision_config.num_hidden_layers, j.vision.num_hidden_layers)
      assert.equal(cfg.text_config.max_position_embeddings, j.text.context_length)
      assert.equal(cfg.text_config.vocab_size, j.text.vocab_size)
      assert.equal("quick_gelu", j.text.hidden_act)
      assert.equal(model:num_parameters(), j.parameters.total)
      assert.equal(j.parameters.total, j.parameters.text + j.parameters.vision + j.parameters.other)
      assert.equal(1, j.parameters.other)
      assert.equal("F32", j.dtype)
      assert.is_true(j.mapped)
      assert.is_true(j.tokenizer)
      assert.equal("huggingface", j.layout)
      assert.is_true(math.abs(j.logit_scale - model.logit_scale) < 1e-6)
      local code, out = cli("info " .. q(MODEL))
      assert.equal(0, code)
      assert.truthy(out:find("^field%s+value\n"))
      assert.truthy(out:find("\nparameters%s+198,737\n"), out)
      assert.truthy(out:find("\ndtype%s+F32, mapped\n"), out)
      -- a count of a million or more gets its short form too: tiny's architecture
      -- over CLIP's full 49408-token vocabulary (zero weights)
      local cfg = clip.json.decode(H.read(MODEL .. "/config.json"))
      cfg.text_config.vocab_size = 49408
      local big = clip.model.wrap(clip.core.model_new(clip.json.encode(cfg)))
      local dir = H.tmpdir()
      big:save(dir)
      big:close()
      code, out = cli("info " .. q(dir))
      H.rmtree(dir)
      assert.equal(0, code)
      assert.truthy(out:find("\nparameters%s+1,648,721 %(1%.6M%)\n"), out)
    end)

    it("tells a bf16 checkpoint and a sentence-transformers layout apart", function()
      local j = ok_json("info " .. q(H.fixtures .. "models/tiny-bf16"))
      assert.equal("BF16", j.dtype)
      assert.is_false(j.mapped)
      local mb = clip.load(H.fixtures .. "models/tiny-bf16", { tokenizer = false })
      assert.equal(mb:num_parameters(), j.parameters.total)
      mb:close()
      local st = H.layout("st")
      local s = ok_json("info " .. q(st))
      H.rmtree(st)
      assert.equal("sentence-transformers", s.layout)
      local sh = ok_json("info " .. q(H.fixtures .. "models/tiny-sharded"))
      assert.equal("huggingface (sharded)", sh.layout)
    end)
  end)

  describe("embed", function()
    it("prints every embedding with --json, equal to the Lua API's", function()
      local j = ok_json(("embed %s %s %s -t 'a photo of a cat' --text 'two dogs'"):format(q(MODEL), q(A), q(B)))
      assert.equal(24, j.dim)
      assert.is_false(j.normalized)
      assert.equal(A, j.images[1].input)
      assert.equal("two dogs", j.texts[2].text)
      local ir, tr = {}, {}
      for i, e in ipairs(j.images) do ir[i] = e.embedding end
      for i, e in ipairs(j.texts) do tr[i] = e.embedding end
      assert_rows(ir, model:encode_images({ A, B }), "images")
      assert_rows(tr, model:encode_texts({ "a photo of a cat", "two dogs" }), "texts")
      local n = ok_json(("embed %s %s --normalize"):format(q(MODEL), q(A)))
      assert.is_true(n.normalized)
      assert_rows({ n.images[1].embedding }, model:encode_images({ A }, { normalize = true }), "normalized")
    end)

    it("prints a table by default", function()
      local code, out, err = cli(("embed %s %s -t 'a cat'"):format(q(MODEL), q(A)))
      assert.equal(0, code, err)
      local lines = {}
      for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.equal(3, #lines)
      assert.truthy(lines[1]:match("^kind%s+input%s+norm%s+embedding %(24 values%)$"), lines[1])
      assert.truthy(lines[2]:match("^image%s+" .. A:gsub("%p", "%%%0") .. "%s+%d+%.%d%d%d%d%s+%S+ %S+ %S+ %S+ %.%.%.$"), lines[2])
      assert.truthy(lines[3]:match("^text%s+a cat%s+"), lines[3])
    end)

    it("writes .npy, .safetensors and .json files that hold the same values", function()
      local code, out, err = cli(("embed %s %s %s -o %s"):format(q(MODEL), q(A), q(B), q(tmp .. "/img.npy")))
      assert.equal(0, code, err)
      assert.equal("wrote 2 image and 0 text embeddings (dim 24) to " .. tmp .. "/img.npy\n", out)
      local want = model:encode_images({ A, B })
      assert_tensor(npy.load(tmp .. "/img.npy"), want, "img.npy")

      code, out, err = cli(("embed %s -t one -t two --texts-file - -o %s < %s"):format(q(MODEL),
        q(tmp .. "/txt.npy"), q(H.fixtures .. "images/config_tiny.json")))
      assert.equal(0, code, err)
      local lines = 0
      for l in H.read(H.fixtures .. "images/config_tiny.json"):gmatch("[^\n]+") do
        if l:match("%S") then lines = lines + 1 end
      end
      assert.same({ 2 + lines, 24 }, npy.load(tmp .. "/txt.npy"):shape())

      code, out, err = cli(("embed %s %s -t 'a cat' --normalize -o %s"):format(q(MODEL), q(A), q(tmp .. "/e.safetensors")))
      assert.equal(0, code, err)
      local t, info = clip.load_safetensors(tmp .. "/e.safetensors")
      assert_tensor(t.image_embeds, model:encode_images({ A }, { normalize = true }), "image_embeds")
      assert_tensor(t.text_embeds, model:encode_texts({ "a cat" }, { normalize = true }), "text_embeds")
      assert.same({ A }, clip.json.decode(info.metadata.image_paths))
      assert.same({ "a cat" }, clip.json.decode(info.metadata.texts))
      assert.equal("true", info.metadata.normalized)
      assert.equal("pt", info.metadata.format)

      code, out, err = cli(("embed %s -t 'a cat' -o %s --json"):format(q(MODEL), q(tmp .. "/e.json")))
      assert.equal(0, code, err)
      assert.same({ output = tmp .. "/e.json", dim = 24, images = 0, texts = 1 }, clip.json.decode(out))
      local j = clip.json.decode(H.read(tmp .. "/e.json"))
      assert_rows({ j.texts[1].embedding }, model:encode_texts({ "a cat" }), "json file")
    end)

    it("takes a directory as its .jpg, .jpeg and .png files, sorted", function()
      local d = tmp .. "/imgs"
      os.execute(("mkdir -p %s && cp %s %s/b.jpg && cp %s %s/a.PNG && echo x > %s/notes.txt"):format(
        q(d), q(A), q(d), q(B), q(d), q(d)))
      local j = ok_json(("embed %s %s"):format(q(MODEL), q(d)))
      assert.equal(2, #j.images)
      assert.equal(d .. "/a.PNG", j.images[1].input)
      assert.equal(d .. "/b.jpg", j.images[2].input)
      assert_rows({ j.images[1].embedding, j.images[2].embedding }, model:encode_images({ B, A }),
        "from directory")
    end)
  end)

  describe("classify", function()
    it("gives softmax(exp(logit_scale) * cosine) over the prompts, best first", function()
      local j = ok_json(("classify %s %s %s -l cat -l dog -l 'red car' -k 3"):format(q(MODEL), q(A), q(B)))
      assert.equal("a photo of a {}.", j.template)
      local logits = model:logits(model:encode_images({ A, B }),
        model:encode_texts({ "a photo of a cat.", "a photo of a dog.", "a photo of a red car." })):totable()
      local labels = { "cat", "dog", "red car" }
      for i, r in ipairs(j.results) do
        assert.equal(({ A, B })[i], r.input)
        assert.equal(3, #r.labels)
        local mx, z = -math.huge, 0
        for _, v in ipairs(logits[i]) do mx = math.max(mx, v) end
        for _, v in ipairs(logits[i]) do z = z + math.exp(v - mx) end
        local sum = 0
        for k, l in ipairs(r.labels) do
          local idx
          for n, name in ipairs(labels) do if name == l.label then idx = n end end
          assert.is_true(math.abs(l.probability - math.exp(logits[i][idx] - mx) / z) < 1e-6)
          assert.is_true(math.abs(l.logit - logits[i][idx]) < 1e-5)
          if k > 1 then assert.is_true(r.labels[k - 1].probability >= l.probability) end
          sum = sum + l.probability
        end
        assert.is_true(math.abs(sum - 1) < 1e-6)
      end
    end)

    it("reads labels from a file, takes a template, and prints a table", function()
      local lf = tmp .. "/labels.txt"
      local f = assert(io.open(lf, "wb"))
      f:write("cat\n\ndog\r\nbird\n")
      f:close()
      local j = ok_json(("classify %s %s --labels-file %s --template '{}' -k 2"):format(q(MODEL), q(A), q(lf)))
      assert.equal(2, #j.results[1].labels)
      local code, out, err = cli(("classify %s %s %s --labels-file %s -k 2"):format(q(MODEL), q(A), q(B), q(lf)))
      assert.equal(0, code, err)
      local lines = {}
      for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.equal(5, #lines)
      assert.truthy(lines[1]:match("^image%s+rank%s+label%s+probability$"))
      assert.truthy(lines[2]:match("^" .. A:gsub("%p", "%%%0") .. "%s+1%s+%a+%s+0%.%d%d%d%d$"), lines[2])
      assert.truthy(lines[3]:match("^%s+2%s+%a+%s+0%.%d%d%d%d$"), lines[3])
    end)
  end)

  describe("search", function()
    it("ranks images by cosine similarity to a text", function()
      local j = ok_json(("search %s 'a gray square' %s %s %s"):format(q(MODEL), q(A), q(B), q(C)))
      assert.equal("text", j.query_kind)
      assert.equal(3, j.candidates)
      local sims = clip.cosine_similarity(model:encode_texts({ "a gray square" }),
        model:encode_images({ A, B, C })):totable()[1]
      local order = { 1, 2, 3 }
      table.sort(order, function(a, b) return sims[a] > sims[b] end)
      for r, hit in ipairs(j.results) do
        assert.equal(r, hit.rank)
        assert.equal(({ A, B, C })[order[r]], hit.input)
        assert.is_true(math.abs(hit.score - sims[order[r]]) < 1e-6)
      end
      local code, out = cli(("search %s 'a gray square' %s %s %s -k 2"):format(q(MODEL), q(A), q(B), q(C)))
      assert.equal(0, code)
      local n = 0
      for _ in out:gmatch("[^\n]+") do n = n + 1 end
      assert.equal(3, n)
      assert.truthy(out:find("^rank%s+score%s+image\n1%s+%-?%d%.%d%d%d%d%s+%S+\n"), out)
    end)

    it("searches an index written by embed, and takes an image as the query", function()
      local idx = tmp .. "/index.safetensors"
      local code, _, err = cli(("embed %s %s %s -o %s"):format(q(MODEL), q(A), q(B), q(idx)))
      assert.equal(0, code, err)
      local j = ok_json(("search %s --image-query %s --index %s %s"):format(q(MODEL), q(B), q(idx), q(C)))
      assert.equal("image", j.query_kind)
      assert.equal(3, j.candidates)
      assert.equal(B, j.results[1].input)
      assert.is_true(math.abs(j.results[1].score - 1) < 1e-5)
      local t = ok_json(("search %s 'a cat' --index %s -k 1"):format(q(MODEL), q(idx)))
      assert.equal(1, #t.results)
      -- an index from another model is refused
      local other = tmp .. "/other.safetensors"
      clip.save_safetensors(other, { image_embeds = clip.zeros({ 2, 5 }) },
        { metadata = { image_paths = '["x","y"]' } })
      local c2, _, e2 = cli(("search %s 'a cat' --index %s"):format(q(MODEL), q(other)))
      assert.equal(1, c2)
      assert.truthy(e2:find("embeddings have 5 values, the model gives 24", 1, true), e2)
    end)
  end)

  describe("convert", function()
    local GELU = H.fixtures .. "models/tiny-gelu-fp16"
    local function torch_dir()
      local d = H.tmpdir()
      assert(os.execute(("cp %s/config.json %s/preprocessor_config.json %s && cp %s %s/pytorch_model.bin")
        :format(q(GELU), q(GELU), q(d), q(H.fixtures .. "torch/gelu-fp16.bin"), q(d))))
      return d
    end

    it("writes pytorch_model.bin as the safetensors file it was saved from, byte for byte", function()
      local d = torch_dir()
      local code, out, err = cli(("convert %s %s/out"):format(q(d), q(d)))
      assert.equal(0, code, err)
      assert.truthy(out:find("pytorch_model.bin -> " .. d .. "/out/model.safetensors (F16)", 1, true), out)
      assert.equal(H.read(GELU .. "/model.safetensors"), H.read(d .. "/out/model.safetensors"))
      assert.equal(H.read(GELU .. "/preprocessor_config.json"), H.read(d .. "/out/preprocessor_config.json"))
      local info = ok_json(("info %s/out"):format(q(d)))
      assert.equal("huggingface", info.layout)
      H.rmtree(d)
    end)

    it("takes --dtype and --json; refuses a bad dtype and a hostile file", function()
      local d = torch_dir()
      local js = ok_json(("convert %s %s/out --dtype f32"):format(q(d), q(d)))
      assert.equal("F32", js.dtype)
      local t, info = clip.load_safetensors(d .. "/out/model.safetensors")
      local ref = clip.load_safetensors(GELU .. "/model.safetensors")
      assert.equal("F32", info.dtypes["logit_scale"])
      assert.same(ref["text_projection.weight"]:totable(), t["text_projection.weight"]:totable())
      local code, _, err = cli(("convert %s %s/o2 --dtype F8"):format(q(d), q(d)))
      assert.equal(2, code)
      assert.truthy(err:find("--dtype must be F32, F16 or BF16", 1, true), err)
      assert(os.execute(("cp %s %s/pytorch_model.bin"):format(q(H.fixtures .. "torch/hostile/system.bin"), q(d))))
      code, _, err = cli(("convert %s %s/o3"):format(q(d), q(d)))
      assert.equal(1, code)
      assert.truthy(err:find("pytorch_model.bin: refuses global 'posix.system'", 1, true), err)
      H.rmtree(d)
    end)
  end)
end)
