--- clip.search: image search by text or by image, and caption ranking.
--
--   local search = require "clip.search"
--   local idx = search.build(model, "photos/", { progress = true })  -- a folder, a list or a Dataset
--   idx:save("photos.index")           -- photos.index/embeddings.safetensors + paths.json
--   local idx = search.load("photos.index")
--   for _, hit in ipairs(idx:query_text(model, "a dog on a beach", 5)) do
--     print(hit.score, hit.path)
--   end
--   idx:query_image(model, "query.jpg", 5)
--   search.rank_captions(model, "photo.jpg", { "a cat", "a dog" })
--
-- The index holds L2-normalized image embeddings {n, E}, so a query is one
-- matrix-vector product and a top-k (ties: the earlier image first). Paths
-- are kept as given when the index was built (relative ones stay relative to
-- the working directory of that time).
local core = require "clip.core"
local progress = require "clip.progress"

local M = {}

local Index = {}
Index.__index = Index
Index.__name = "clip.search.Index"
M.Index = Index

local FORMAT = "clip.search.index"

local function is_tensor(x)
  return type(x) == "userdata" and getmetatable(x) == getmetatable(core.zeros({}))
end

local function image_list(src, opts)
  if type(src) == "string" then
    local data = require "clip.data"
    if core.is_dir(src) then return data.list_images(src, { recursive = opts.recursive }) end
    if core.is_file(src) then return { src } end
    error(src .. ": no such file or directory", 3)
  end
  if type(src) == "table" and src.rows and src.columns then
    return src:column(opts.column or "image")
  end
  if type(src) == "table" then return src end
  error("search: expected a folder, a list of image paths or a Dataset", 3)
end

-- Encode paths in batches; with skip_errors, a failing batch is retried one
-- image at a time and the bad ones are left out.
local function encode_paths(model, paths, opts)
  local bs = opts.batch_size or 32
  local bar = progress.wrap(opts.progress, #paths, "index", "img")
  local parts, kept, skipped = {}, {}, {}
  for a = 1, #paths, bs do
    local b = math.min(#paths, a + bs - 1)
    local sub = table.move(paths, a, b, 1, {})
    local ok, emb = pcall(model.encode_images, model, sub, { batch_size = bs })
    if ok then
      parts[#parts + 1] = emb
      for _, p in ipairs(sub) do kept[#kept + 1] = p end
    elseif opts.skip_errors then
      for _, p in ipairs(sub) do
        local ok1, e1 = pcall(model.encode_images, model, { p })
        if ok1 then
          parts[#parts + 1] = e1
          kept[#kept + 1] = p
        else
          skipped[#skipped + 1] = { path = p, error = tostring(e1) }
          bar:log("skipped " .. tostring(e1))
        end
      end
    else
      bar:finish()
      error(emb, 0)
    end
    bar:update(b)
  end
  bar:finish()
  if #parts == 0 then error("search: no image could be encoded", 3) end
  return core.cat(parts), kept, skipped
end

--- build(model, source [, opts]) -> Index
-- source: a folder (every .jpg/.jpeg/.png below it, sorted), a list of
-- image paths, or a clip.data Dataset (opts.column, default "image").
-- opts: batch_size (32), progress (see clip.progress.wrap), recursive (true),
--       skip_errors (false: an undecodable image is an error naming it;
--       true: it is left out and listed in index.skipped).
function M.build(model, source, opts)
  opts = opts or {}
  if type(model) ~= "table" or not model.core then error("search.build: expected a clip model", 2) end
  local paths = image_list(source, opts)
  if #paths == 0 then error("search.build: no images to index", 2) end
  local emb, kept, skipped = encode_paths(model, paths, opts)
  local self = setmetatable({ embeddings = emb:normalize(), paths = kept, skipped = skipped,
    model = model.dir }, Index)
  return self
end

--- from_embeddings(embeddings, paths [, {model, skipped}]) -> Index of those
-- image embeddings {n, D} (L2-normalized here) and their n paths.
function M.from_embeddings(emb, paths, opts)
  opts = opts or {}
  if not is_tensor(emb) or emb:dim() ~= 2 then error("search.from_embeddings: expected a Tensor {n, D}", 2) end
  if type(paths) ~= "table" or #paths ~= emb:size(1) then
    error(("search.from_embeddings: %d embeddings but %s paths"):format(emb:size(1),
      type(paths) == "table" and tostring(#paths) or "no"), 2)
  end
  return setmetatable({ embeddings = emb:normalize(), paths = paths, skipped = opts.skipped or {},
    model = opts.model }, Index)
end

--- Number of images in the index.
function Index:size() return #self.paths end
Index.__len = Index.size

--- Embedding width.
function Index:dim() return self.embeddings:size(2) end

--- add(model, source [, opts]): encode more images into the index.
function Index:add(model, source, opts)
  opts = opts or {}
  local paths = image_list(source, opts)
  if #paths == 0 then return self end
  local emb, kept, skipped = encode_paths(model, paths, opts)
  self:_check_dim(emb:size(2))
  self.embeddings = core.cat({ self.embeddings, emb:normalize() })
  for _, p in ipairs(kept) do self.paths[#self.paths + 1] = p end
  for _, s in ipairs(skipped) do self.skipped[#self.skipped + 1] = s end
  return self
end

function Index:_check_dim(d)
  if d ~= self:dim() then
    error(("search: the index holds %d-dim embeddings, the query is %d-dim (built with another model?)")
      :format(self:dim(), d), 3)
  end
end

--- save(dir): dir/embeddings.safetensors (tensor "embeddings", F32) and
-- dir/paths.json ({format, version, count, dim, model, paths}); each file is
-- written to a temporary name and renamed into place. Returns dir.
function Index:save(dir)
  local ok, err = core.mkdir_p(dir)
  if not ok then error(err, 2) end
  core.save_safetensors(dir .. "/embeddings.safetensors", { embeddings = self.embeddings },
    { metadata = { format = FORMAT, count = tostring(#self.paths) } })
  local meta = { format = FORMAT, version = 1, count = #self.paths, dim = self:dim(), model = self.model,
    paths = self.paths }
  ok, err = core.write_file(dir .. "/paths.json", core.json_encode(meta, true) .. "\n")
  if not ok then error(err, 2) end
  return dir
end

--- load(dir) -> Index (errors name the file and what is wrong). dir: a
-- folder written by Index:save, or by clip.embed.run (images; its manifest.json).
function M.load(dir)
  local pj = dir .. "/paths.json"
  local f = io.open(pj, "rb")
  if not f and core.is_file(dir .. "/manifest.json") then
    local embed = require "clip.embed"
    local ok, r = pcall(function() return embed.open(dir):index() end)
    if not ok then error(r, 2) end
    return r
  end
  if not f then error(pj .. ": not found (is " .. dir .. " an index saved by clip.search?)", 2) end
  local meta = core.json_decode(f:read("a"), pj)
  f:close()
  if type(meta) ~= "table" or meta.format ~= FORMAT or type(meta.paths) ~= "table" then
    error(pj .. ": not a clip.search index", 2)
  end
  local t = core.load_safetensors(dir .. "/embeddings.safetensors")
  local emb = t.embeddings
  if not emb or emb:dim() ~= 2 then error(dir .. "/embeddings.safetensors: no {n, d} tensor 'embeddings'", 2) end
  if emb:size(1) ~= #meta.paths then
    error(("%s: %d embeddings but %d paths"):format(dir, emb:size(1), #meta.paths), 2)
  end
  return setmetatable({ embeddings = emb:clone(), paths = meta.paths, skipped = {}, model = meta.model }, Index)
end

local function hits_of(self, scores, idx)
  local out = {}
  for j, i in ipairs(idx) do
    out[j] = { path = self.paths[i], score = scores[j], index = i }
  end
  return out
end

--- query(embeddings, k) -> hits, or a list of hit lists for several queries.
-- embeddings: {E} or {1,E} (one query) or {q,E}. A hit is {path, score
-- (cosine similarity), index}; best first; k larger than the index: all.
function Index:query(q, k)
  if not is_tensor(q) then error("query: expected a Tensor of query embeddings", 2) end
  local single = q:dim() == 1 or q:size(1) == 1
  if q:dim() == 1 then q = q:reshape({ 1, q:size(1) }) end
  self:_check_dim(q:size(2))
  k = math.min(k or 10, #self.paths)
  local s = core.cosine_similarity(q, self.embeddings)
  local vals, idx = s:topk(k)
  local v = vals:totable()
  if single then return hits_of(self, v[1], idx[1]) end
  local out = {}
  for r = 1, #idx do out[r] = hits_of(self, v[r], idx[r]) end
  return out
end

--- query_text(model, text_or_texts, k) -> hits (or a list of hit lists)
function Index:query_text(model, texts, k)
  local one = type(texts) == "string"
  local q = model:encode_texts(one and { texts } or texts)
  local r = self:query(q, k)
  if not one and #texts == 1 then return { r } end
  return r
end

--- query_image(model, image_or_images, k) -> hits (or a list of hit lists)
-- image: a path or a clip.Image.
function Index:query_image(model, images, k)
  local one = type(images) ~= "table"
  local q = model:encode_images(one and { images } or images)
  local r = self:query(q, k)
  if not one and #images == 1 then return { r } end
  return r
end

--- rank_captions(model, image, captions) -> ranked, best
-- ranked: the captions best first, each {caption, score (cosine), index};
-- best: the best caption (ties: the earlier one).
function M.rank_captions(model, image, captions)
  if type(captions) ~= "table" or #captions == 0 then error("rank_captions: expected a non-empty list of captions", 2) end
  local img = model:encode_images({ image })
  local txt = model:encode_texts(captions)
  local s = core.cosine_similarity(img, txt)
  local vals, idx = s:topk(#captions)
  local v = vals:totable()[1]
  local out = {}
  for j, i in ipairs(idx[1]) do out[j] = { caption = captions[i], score = v[j], index = i } end
  return out, out[1].caption
end

return M
