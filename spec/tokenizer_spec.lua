-- spec/tokenizer_spec.lua - clip.tokenizer against the Python reference
-- (spec/fixtures/make_tokens.py wrote tokens.json and unicode.json; this spec
-- never needs Python).
local helpers = require("spec.helpers")
local json = require("dkjson")
local tokenizer = require("clip.tokenizer")
local core = require("clip.core")

local TOKDIR = helpers.fixtures .. "tokenizer"
local BOS, EOS = 49406, 49407

-- "a\u{301}" style rendering for failure messages
local function show(s)
  local ok, out = pcall(function()
    local t = {}
    for _, c in utf8.codes(s) do
      if c >= 0x20 and c < 0x7F and c ~= 0x5C and c ~= 0x22 then
        t[#t + 1] = string.char(c)
      else
        t[#t + 1] = ("\\u{%X}"):format(c)
      end
    end
    return '"' .. table.concat(t) .. '"'
  end)
  return ok and out or ("%q"):format(s)
end

local function ids_str(t)
  local parts = {}
  for i = 1, #t do parts[i] = tostring(math.tointeger(t[i]) or t[i]) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function strs_str(t)
  local parts = {}
  for i = 1, #t do parts[i] = show(t[i]) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function same_list(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do
    if a[i] ~= b[i] then return false end
  end
  return true
end

local function check_ids(got, expected, label, text)
  if not same_list(got, expected) then
    local at = 1
    while got[at] == expected[at] and at <= #got do at = at + 1 end
    error(("%s: ids differ (first at position %d)\n  text:     %s\n  got:      %s\n  expected: %s")
      :format(label, at, show(text), ids_str(got), ids_str(expected)), 2)
  end
end

local function check_strs(got, expected, label, text)
  if not same_list(got, expected) then
    error(("%s: differ\n  text:     %s\n  got:      %s\n  expected: %s")
      :format(label, show(text), strs_str(got), strs_str(expected)), 2)
  end
end

local function raises(pattern, f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error matching " .. pattern)
  err = tostring(err)
  if not err:find(pattern) then
    error(("error %q does not match %q"):format(err, pattern), 2)
  end
  return err
end

local write = require("spec.support.files").write

describe("clip.tokenizer", function()
  local tok, tok_oa

  setup(function()
    tok = tokenizer.load(TOKDIR)
    tok_oa = tokenizer.load(TOKDIR, { mode = "openai" })
  end)

  teardown(function()
    tok:close()
    tok_oa:close()
  end)

  describe("hand-checked values", function()
    it("tokenizes 'a photo of a cat' as CLIP does", function()
      check_ids(tok:encode("a photo of a cat"), { 49406, 320, 1125, 539, 320, 2368, 49407 }, "hf",
        "a photo of a cat")
      check_ids(tok_oa:encode("a photo of a cat"), { 49406, 320, 1125, 539, 320, 2368, 49407 }, "openai",
        "a photo of a cat")
    end)

    it("has CLIP's vocabulary", function()
      assert.are.equal(49408, tok:vocab_size())
      assert.are.equal(BOS, tok.bos_id)
      assert.are.equal(EOS, tok.eos_id)
      assert.are.equal(EOS, tok.pad_id)
      assert.are.equal("a</w>", tok:id_to_token(320))
      assert.are.equal("photo</w>", tok:id_to_token(1125))
      assert.are.equal("of</w>", tok:id_to_token(539))
      assert.are.equal("cat</w>", tok:id_to_token(2368))
      assert.are.equal("!", tok:id_to_token(0))
      assert.are.equal("!</w>", tok:id_to_token(256))
      assert.are.equal("<|startoftext|>", tok:id_to_token(BOS))
      assert.are.equal(2368, tok:token_to_id("cat</w>"))
      assert.is_nil(tok:token_to_id("no such token"))
      assert.is_nil(tok:id_to_token(49408))
      assert.is_nil(tok:id_to_token(-1))
    end)

    it("agrees with the fixture's own hand-checked case", function()
      local doc = json.decode(helpers.read(helpers.fixtures .. "tokens.json"))
      assert.are.equal("a photo of a cat", doc.cases[1].text)
      check_ids(doc.cases[1].hf_ctx, { 49406, 320, 1125, 539, 320, 2368, 49407 }, "fixture", doc.cases[1].text)
      assert.is_true(#doc.cases >= 150)
    end)
  end)

  describe("reference strings", function()
    local doc = json.decode(helpers.read(helpers.fixtures .. "tokens.json"))
    for _, c in ipairs(doc.cases) do
      it("hf: " .. c.name, function()
        assert.are.equal(c.hf_normalized, tok:normalize(c.text),
          "normalized text of " .. show(c.text))
        check_strs(tok:pre_tokenize(c.text), c.hf_pieces, "hf pieces", c.text)
        check_ids(tok:encode(c.text, { special = false }), c.hf, "hf ids", c.text)
        check_ids(tok:encode(c.text), c.hf_ctx, "hf ids with bos/eos, context 77", c.text)
      end)
      it("openai: " .. c.name, function()
        assert.are.equal(c.openai_normalized, tok_oa:normalize(c.text),
          "normalized text of " .. show(c.text))
        check_strs(tok_oa:pre_tokenize(c.text), c.openai_pieces, "openai pieces", c.text)
        check_ids(tok_oa:encode(c.text, { special = false }), c.openai, "openai ids", c.text)
        check_ids(tok_oa:encode(c.text), c.openai_ctx, "openai ids with bos/eos, context 77", c.text)
        check_ids(tok:encode(c.text, { mode = "openai" }), c.openai_ctx, "mode option", c.text)
      end)
    end
  end)

  describe("every code point assigned in Unicode 14", function()
    local U = json.decode(helpers.read(helpers.fixtures .. "unicode.json"))
    local cps, cls = {}, { hf = {}, openai = {} }
    for _, r in ipairs(U.runs) do
      for c = math.tointeger(r[1]), math.tointeger(r[2]) do
        cps[#cps + 1] = c
        cls.hf[c], cls.openai[c] = r[3], r[4]
      end
    end

    local function set_of(ranges)
      local s = {}
      for _, r in ipairs(ranges) do
        for c = math.tointeger(r[1]), math.tointeger(r[2]) do s[c] = true end
      end
      return s
    end

    -- items joined by "|", output split at "|" and compared item by item
    local function check_items(mode, item, expected)
      local parts = {}
      for i, c in ipairs(cps) do parts[i] = item(utf8.char(c)) .. "|" end
      local out = (mode == "hf" and tok or tok_oa):normalize(table.concat(parts))
      local pos, bad = 1, {}
      for _, c in ipairs(cps) do
        local e = expected(c, utf8.char(c))
        local stop = out:find("|", pos, true)
        local got = stop and out:sub(pos, stop - 1) or out:sub(pos)
        if got ~= e and #bad < 10 then
          bad[#bad + 1] = ("U+%04X: got %s, expected %s"):format(c, show(got), show(e))
        end
        pos = (stop or #out) + 1
      end
      assert(#bad == 0, mode .. " mismatches:\n  " .. table.concat(bad, "\n  "))
    end

    it("has the fixture's size", function()
      assert.are.equal("14.0.0", U.unicode_version)
      assert.is_true(#cps > 140000)
    end)

    for _, mode in ipairs({ "hf", "openai" }) do
      it(mode .. " normalization of each character", function()
        local exc = U[mode .. "_norm"]
        check_items(mode, function(ch) return ch end, function(c, ch) return exc[tostring(c)] or ch end)
      end)

      it(mode .. " split class of each character", function()
        local exc = U[mode .. "_split"]
        local k = mode == "hf" and cls.hf or cls.openai
        local parts = {}
        for i, c in ipairs(cps) do
          local ch = utf8.char(c)
          parts[i] = "q" .. ch .. ch
        end
        local got = (mode == "hf" and tok or tok_oa):pre_tokenize(table.concat(parts, " "))
        local at = 1
        for _, c in ipairs(cps) do
          local ch = utf8.char(c)
          local e = exc[tostring(c)]
          if not e then
            local kc = k[c]
            if kc == "L" then e = { "q" .. ch .. ch }
            elseif kc == "N" then e = { "q", ch, ch }
            elseif kc == "O" then e = { "q", ch .. ch }
            else e = { "q" } end
          end
          for j = 1, #e do
            if got[at + j - 1] ~= e[j] then
              local ctx = {}
              for m = at, math.min(at + #e + 2, #got) do ctx[#ctx + 1] = got[m] end
              error(("%s split: U+%04X (class %s): expected %s, got %s"):format(mode, c, k[c],
                strs_str(e), strs_str(ctx)))
            end
          end
          at = at + #e
        end
        assert.are.equal(#got + 1, at)
      end)
    end

    it("openai Final_Sigma: cased/case-ignorable before a capital sigma", function()
      local fam = U.sigma_before
      local final, exc = set_of(fam.final), fam.exceptions
      check_items("openai", function(ch) return "\u{391}" .. ch .. "\u{3A3}" end, function(c, ch)
        return exc[tostring(c)] or ("\u{3B1}" .. ch .. (final[c] and "\u{3C2}" or "\u{3C3}"))
      end)
    end)

    it("openai Final_Sigma: cased/case-ignorable after a capital sigma", function()
      local fam = U.sigma_after
      local final, exc = set_of(fam.final), fam.exceptions
      check_items("openai", function(ch) return "\u{391}\u{3A3}" .. ch end, function(c, ch)
        return exc[tostring(c)] or ("\u{3B1}" .. (final[c] and "\u{3C2}" or "\u{3C3}") .. ch)
      end)
    end)
  end)

  describe("truncation", function()
    it("cuts to 77 with <|endoftext|> last", function()
      local ids = tok:encode(("a "):rep(200))
      assert.are.equal(77, #ids)
      assert.are.equal(BOS, ids[1])
      assert.are.equal(320, ids[76])
      assert.are.equal(EOS, ids[77])
    end)

    it("keeps texts that fit", function()
      assert.are.equal(77, #tok:encode(("a "):rep(75)))
      assert.are.equal(76, #tok:encode(("a "):rep(74)))
      assert.are.equal(EOS, tok:encode(("a "):rep(75))[77])
      assert.are.equal(320, tok:encode(("a "):rep(75))[76])
    end)

    it("honours context_length and context_length = false", function()
      local ids = tok:encode(("a "):rep(20), { context_length = 10 })
      check_ids(ids, { BOS, 320, 320, 320, 320, 320, 320, 320, 320, EOS }, "ctx 10", "")
      assert.are.equal(202, #tok:encode(("a "):rep(200), { context_length = false }))
      check_ids(tok:encode("a b", { context_length = 2 }), { BOS, EOS }, "ctx 2", "a b")
      raises("context_length", tok.encode, tok, "a", { context_length = 1 })
      raises("context_length", tok.encode, tok, "a", { context_length = 2.5 })
      local short = tokenizer.load(TOKDIR, { context_length = 5 })
      check_ids(short:encode("a photo of a cat"), { BOS, 320, 1125, 539, EOS }, "load ctx 5", "")
      short:close()
    end)

    it("special = false gives raw BPE ids, not truncated", function()
      check_ids(tok:encode("a photo of a cat", { special = false }), { 320, 1125, 539, 320, 2368 }, "raw", "")
      assert.are.equal(200, #tok:encode(("a "):rep(200), { special = false }))
      check_ids(tok:encode("", { special = false }), {}, "empty", "")
      check_ids(tok:encode(""), { BOS, EOS }, "empty", "")
    end)
  end)

  describe("encode_batch", function()
    local texts = { "a photo of a cat", "a dog", "" }

    it("pads to context_length by default", function()
      local rows, lengths = tok:encode_batch(texts)
      assert.are.equal(3, #rows)
      check_ids(lengths, { 7, 4, 2 }, "lengths", "")
      for i, t in ipairs(texts) do
        assert.are.equal(77, #rows[i])
        local ids = tok:encode(t)
        for j = 1, 77 do
          assert.are.equal(ids[j] or EOS, rows[i][j])
        end
      end
    end)

    it("pads to the longest with pad = 'longest'", function()
      local rows, lengths = tok:encode_batch(texts, { pad = "longest" })
      check_ids(lengths, { 7, 4, 2 }, "lengths", "")
      check_ids(rows[1], { 49406, 320, 1125, 539, 320, 2368, 49407 }, "row 1", texts[1])
      local dog = tok:encode("a dog")
      check_ids(rows[2], { dog[1], dog[2], dog[3], dog[4], EOS, EOS, EOS }, "row 2", texts[2])
      check_ids(rows[3], { BOS, EOS, EOS, EOS, EOS, EOS, EOS }, "row 3", texts[3])
    end)

    it("does not pad with pad = false, and takes pad_id", function()
      local rows = tok:encode_batch(texts, { pad = false })
      check_ids(rows[2], tok:encode("a dog"), "row 2", "a dog")
      rows = tok:encode_batch(texts, { pad = "longest", pad_id = 0 })
      assert.are.equal(0, rows[3][7])
    end)

    it("passes id lists through", function()
      local rows, lengths = tok:encode_batch({ { BOS, 320, EOS }, "a" }, { pad = "longest" })
      check_ids(rows[1], { BOS, 320, EOS }, "ids", "")
      check_ids(rows[2], { BOS, 320, EOS }, "text", "a")
      check_ids(lengths, { 3, 3 }, "lengths", "")
      check_ids(tok:encode({ 1, 2, 3 }), { 1, 2, 3 }, "encode ids", "")
    end)

    it("truncates each text", function()
      local rows, lengths = tok:encode_batch({ ("a "):rep(100), "a" })
      check_ids(lengths, { 77, 3 }, "lengths", "")
      assert.are.equal(EOS, rows[1][77])
    end)

    it("names the offending item", function()
      raises("texts%[2%] is a number", tok.encode_batch, tok, { "a", 5 })
      raises("texts%[3%]", tok.encode_batch, tok, { "a", "b", { 1, "x" } })
      raises("texts%[1%]", tok.encode_batch, tok, { { 1, 49408 } })
      raises("texts%[1%] gives 80 ids", tok.encode_batch, tok, { (function()
        local t = {}
        for i = 1, 80 do t[i] = 320 end
        return t
      end)() })
      raises("invalid UTF%-8", tok.encode_batch, tok, { "ok", "\xff" })
      raises("texts%[2%] gives 100 ids", tok.encode_batch, tok, { "a", ("a "):rep(100) }, { special = false })
      local rows = tok:encode_batch({ "a", ("a "):rep(100) }, { special = false, pad = "longest" })
      assert.are.equal(100, #rows[1])
      raises("expected a list", tok.encode_batch, tok, "a")
      raises("pad must be", tok.encode_batch, tok, { "a" }, { pad = "left" })
    end)

    it("works in openai mode", function()
      local rows = tok_oa:encode_batch({ "&amp; A", "b" }, { pad = "longest" })
      check_ids(rows[1], tok_oa:encode("&amp; A"), "row 1", "&amp; A")
    end)
  end)

  describe("decode", function()
    local ascii = {
      "a photo of a cat",
      "the quick brown fox jumps over the lazy dog",
      "hello world",
      "a diagram of 3 cats and 2 dogs",
      "x + y = z",
    }

    it("round-trips lowercase ASCII text", function()
      for _, s in ipairs(ascii) do
        assert.are.equal(s, tok:decode(tok:encode(s), { skip_special = true }))
        assert.are.equal(s .. " ", tok_oa:decode(tok_oa:encode(s), { skip_special = true }))
      end
    end)

    it("keeps special tokens unless asked, as CLIPTokenizerFast", function()
      assert.are.equal("<|startoftext|>a photo of a cat <|endoftext|>", tok:decode(tok:encode("a photo of a cat")))
      assert.are.equal("a photo of a cat.", tok:decode(tok:encode("A photo of a cat."), { skip_special = true }))
      assert.are.equal("a photo of a cat . ",
        tok:decode(tok:encode("a photo of a cat."), { skip_special = true, strip = false, clean_up = false }))
    end)

    it("round-trips UTF-8 and replaces broken bytes", function()
      assert.are.equal("日本語 über", tok:decode(tok:encode("日本語 über"), { skip_special = true }))
      local e6 = tok:token_to_id("\u{E6}") -- byte 0xE6 alone
      assert.are.equal("\u{FFFD}", tok:decode({ e6 }))
      assert.are.equal("\u{FFFD}a", tok:decode({ e6, tok:token_to_id("a") }))
      assert.are.equal("", tok:decode({}))
    end)

    it("rejects ids outside the vocabulary", function()
      raises("not in the vocabulary", tok.decode, tok, { 1, 49408 })
      raises("ids%[2%]", tok.decode, tok, { 1, "x" })
      raises("ids%[1%]", tok.decode, tok, { -1 })
    end)
  end)

  describe("errors", function()
    local bad = {
      ["\xff"] = "byte 1",
      ["abc\x80"] = "byte 4: unexpected continuation",
      ["\xc3"] = "truncated",
      ["a\xe2\x82"] = "truncated",
      ["\xe2\x82x"] = "cut short",
      ["\xc0\xaf"] = "overlong",
      ["\xe0\x80\xaf"] = "overlong",
      ["\xf0\x82\x82\xac"] = "overlong",
      ["\xed\xa0\x80"] = "surrogate",
      ["\xed\xbf\xbf"] = "surrogate",
      ["\xf4\x90\x80\x80"] = "above U%+10FFFF",
      ["\xf8\x88\x80\x80\x80"] = "never appears",
      ["ok \xfe"] = "byte 4",
    }

    it("rejects invalid UTF-8 with the byte offset, in both modes", function()
      for s, why in pairs(bad) do
        raises("invalid UTF%-8.*" .. why, tok.encode, tok, s)
        raises("invalid UTF%-8.*" .. why, tok_oa.encode, tok_oa, s)
        raises("invalid UTF%-8", tok.encode, tok, s, { special = false })
        raises("invalid UTF%-8", tok.normalize, tok, s)
      end
    end)

    it("accepts NUL and the largest code point", function()
      assert.are.equal(4, #tok:encode("a\0b", { special = false }) + 1)
      assert.is_true(#tok:encode("\u{10FFFD}") > 2)
    end)

    it("rejects non-strings", function()
      raises("expected a string or a list of ids, got number", tok.encode, tok, 5)
      raises("expected a string", tok.encode, tok, nil)
      raises("text must be a string", tok.normalize, tok, 5)
      raises("mode must be", tok.encode, tok, "a", { mode = "gpt2" })
      raises("mode must be", tokenizer.load, TOKDIR, { mode = "gpt2" })
      raises("expected a directory", tokenizer.load, 5)
    end)

    it("names a missing file", function()
      raises("/nonexistent/dir/vocab.json: No such file", tokenizer.load, "/nonexistent/dir")
      raises("/nope/merges.txt: No such file", tokenizer.load,
        { vocab = TOKDIR .. "/vocab.json", merges = "/nope/merges.txt" })
      raises("is a directory", tokenizer.load, { vocab = TOKDIR, merges = TOKDIR .. "/merges.txt" })
      raises("/nonexistent/dir/vocab.json", core.tokenizer_load, "/nonexistent/dir/vocab.json", "x")
    end)

    it("names a corrupt file and the reason", function()
      local dir = helpers.tmpdir()
      local good_vocab, good_merges = TOKDIR .. "/vocab.json", TOKDIR .. "/merges.txt"
      local function load(v, m) return tokenizer.load({ vocab = v, merges = m }) end
      write(dir .. "/v1.json", "{\"a\": 0, ")
      raises("v1.json: invalid JSON", load, dir .. "/v1.json", good_merges)
      write(dir .. "/v2.json", "[1, 2]")
      raises("v2.json: expected a JSON object", load, dir .. "/v2.json", good_merges)
      write(dir .. "/v3.json", "{\"a\": 0}")
      raises("v3.json: missing the byte%-level token", load, dir .. "/v3.json", good_merges)
      write(dir .. "/v4.json", "{\"a\": -1}")
      raises("v4.json: token \"a\" has id that is not a non%-negative integer", load, dir .. "/v4.json", good_merges)
      write(dir .. "/v5.json", "")
      raises("v5.json: invalid JSON", load, dir .. "/v5.json", good_merges)
      write(dir .. "/m1.txt", "#version: 0.2\ni n\nfoo bar baz\n")
      raises("m1.txt:3: expected two tokens", load, good_vocab, dir .. "/m1.txt")
      write(dir .. "/m2.txt", "#version: 0.2\nnotatoken123 x\n")
      raises("m2.txt:2: token \"notatoken123\" is not in vocab.json", load, good_vocab, dir .. "/m2.txt")
      write(dir .. "/m3.txt", "#version: 0.2\n")
      raises("m3.txt: no merges", load, good_vocab, dir .. "/m3.txt")
      write(dir .. "/m4.txt", "#version: 0.2\ni n\n\nt h\n")
      raises("m4.txt:3:", load, good_vocab, dir .. "/m4.txt")
      os.execute("rm -rf '" .. dir .. "'")
    end)

    it("accepts CRLF merges and no trailing newline", function()
      local dir = helpers.tmpdir()
      local m = helpers.read(TOKDIR .. "/merges.txt")
      write(dir .. "/merges.txt", (m:gsub("\n$", ""):gsub("\n", "\r\n")))
      local t2 = tokenizer.load({ vocab = TOKDIR .. "/vocab.json", merges = dir .. "/merges.txt" })
      check_ids(t2:encode("a photo of a cat"), tok:encode("a photo of a cat"), "crlf", "")
      t2:close()
      os.execute("rm -rf '" .. dir .. "'")
    end)
  end)

  describe("lifetime", function()
    it("closes twice, and raises on use after close", function()
      local t = tokenizer.load(TOKDIR)
      assert.is_false(t:closed())
      t:close()
      t:close()
      assert.is_true(t:closed())
      raises("closed tokenizer", t.encode, t, "a")
      raises("closed tokenizer", t.decode, t, { 1 })
      raises("closed tokenizer", t.vocab_size, t)
      assert.matches("closed", tostring(t))
    end)

    it("works as a to-be-closed variable", function()
      local inner
      do
        local t <close> = tokenizer.load(TOKDIR)
        inner = t
        assert.are.equal(7, #t:encode("a photo of a cat"))
      end
      assert.is_true(inner:closed())
    end)

    it("frees on garbage collection", function()
      for _ = 1, 3 do tokenizer.load(TOKDIR) end
      collectgarbage()
      collectgarbage()
      local ud = core.tokenizer_load(TOKDIR .. "/vocab.json", TOKDIR .. "/merges.txt")
      assert.matches("clip.Tokenizer", tostring(ud))
      ud:close()
      ud:close()
      assert.matches("closed", tostring(ud))
    end)
  end)

  describe("the word cache", function()
    it("gives the same ids when it overflows", function()
      local words, expect = {}, {}
      for i = 1, 40000 do
        words[i] = "w" .. i .. "x"
      end
      for i = 1, #words, 997 do
        for _, id in ipairs(tok:encode(words[i], { special = false })) do expect[#expect + 1] = id end
      end
      local all = tok:encode(table.concat(words, " "), { special = false })
      assert.is_true(#all > 40000)
      local again = {}
      for i = 1, #words, 997 do
        for _, id in ipairs(tok:encode(words[i], { special = false })) do again[#again + 1] = id end
      end
      check_ids(again, expect, "after overflow", "")
    end)
  end)
end)
