-- clip.image - decode JPEG/PNG/GIF/WebP/TIFF/BMP and preprocess like transformers' CLIPImageProcessor.
--
--   local image = require "clip.image"
--   local img = image.load("cat.jpg")            -- clip.Image: img.width, img.height, img:bytes()
--   local proc = image.processor("model_dir")    -- or a preprocessor_config.json, a table, nil
--   local x = proc:preprocess(img)               -- clip.Tensor {3, 224, 224}
--   local xb = proc:preprocess_batch({"a.jpg", img})  -- {2, 3, 224, 224}
--
-- Decoding matches Pillow 9.4's Image.open(p).convert("RGB") bit for bit, resizing
-- matches Pillow's Image.resize, and preprocess matches CLIPImageProcessor (see
-- docs/images.md). Every failure raises an error whose message starts with the path.
local core = require "clip.core"

local M = {}

--- Largest image (in pixels) that is decoded or produced; bigger ones are refused
--- before anything is allocated. Pillow's DecompressionBombError threshold.
M.MAX_PIXELS = core.image_max_pixels

--- The file extensions taken for images where a path must be recognized without
-- opening it (image folders, undeclared dataset columns): the formats the decoder
-- reads (it tells them apart by content, not by extension). Lowercase keys.
M.EXTENSIONS = { jpg = true, jpeg = true, png = true, gif = true, webp = true, bmp = true, tif = true,
  tiff = true }

--- True when p is a string ending in one of M.EXTENSIONS (case-insensitive).
function M.has_image_extension(p)
  local ext = type(p) == "string" and p:match("%.([%w]+)$")
  return ext ~= nil and M.EXTENSIONS[ext:lower()] == true
end

--- Pillow's resampling filter numbers.
M.RESAMPLE = { NEAREST = 0, LANCZOS = 1, BILINEAR = 2, BICUBIC = 3, BOX = 4, HAMMING = 5 }

local function filter_number(f)
  if f == nil then return M.RESAMPLE.BICUBIC end
  if type(f) == "string" then
    local n = M.RESAMPLE[f:upper()]
    if not n then error(("image: unknown resample filter '%s'"):format(f), 3) end
    return n
  end
  return f
end

--- True when x is a clip.Image (open or closed).
function M.is_image(x)
  return core.image_is(x)
end

--- Decode the JPEG or PNG file at path into an RGB clip.Image.
function M.load(path)
  return core.image_load(path)
end

--- Decode JPEG or PNG bytes (a Lua string); name (default "<bytes>") is used in errors.
function M.decode(bytes, name)
  return core.image_decode(bytes, name)
end

--- An Image from raw RGB bytes (HWC, w*h*3 bytes).
function M.from_bytes(w, h, rgb)
  return core.image_from_bytes(w, h, rgb)
end

--- Resize to w x h exactly as Pillow's img.resize((w, h), filter); opts.resample is a
--- Pillow filter number or name (default "bicubic").
function M.resize(img, w, h, opts)
  local resample = opts and opts.resample
  return core.image_resize(img, w, h, filter_number(resample))
end

--- transformers' center_crop: top = (H - h) // 2, left = (W - w) // 2, zero padding
--- where the image is smaller than the crop.
function M.center_crop(img, w, h)
  return core.image_center_crop(img, w, h)
end

-- ------------------------------------------------------------------ processor
local Processor = {}
Processor.__index = Processor

local function copy(t)
  if type(t) ~= "table" then return t end
  local r = {}
  for k, v in pairs(t) do r[k] = copy(v) end
  return r
end

--- image.processor(cfg) -> Processor
---   cfg nil: the OpenAI CLIP defaults (shortest edge 224, crop 224, bicubic, OpenAI mean/std)
---   cfg string: a preprocessor_config.json file, a model directory holding one, or JSON text
---   cfg table: the keys of preprocessor_config.json (size, crop_size, resample, do_resize,
---              do_center_crop, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
--- Fields: size ({shortest_edge = n} or {height, width}), crop_size ({height, width}), mean,
--- std, resample, rescale_factor, do_resize, do_center_crop, do_rescale, do_normalize.
function M.processor(cfg)
  local p
  if cfg == nil then
    p = core.processor_new()
  elseif type(cfg) == "string" then
    if cfg:match("^%s*{") then
      p = core.processor_parse(cfg, "preprocessor config")
    else
      p = core.processor_load(cfg)
    end
  elseif type(cfg) == "table" then
    p = core.processor_new(cfg)
  else
    error("image.processor: expected nil, a path, JSON text or a table, got " .. type(cfg), 2)
  end
  local c = p:config()
  local self = setmetatable({
    _p = p,
    size = c.size,
    crop_size = c.crop_size,
    mean = c.image_mean,
    std = c.image_std,
    resample = c.resample,
    rescale_factor = c.rescale_factor,
    do_resize = c.do_resize,
    do_center_crop = c.do_center_crop,
    do_rescale = c.do_rescale,
    do_normalize = c.do_normalize,
    do_convert_rgb = c.do_convert_rgb,
  }, Processor)
  return self
end

--- The configuration as a table with the keys of preprocessor_config.json.
function Processor:config()
  return copy(self._p:config())
end

--- Size (w, h) of the output for an input of w x h.
function Processor:output_size(w, h)
  return self._p:output_size(w, h)
end

--- Resize + center crop of an Image or a path: the uint8 Image the model would see.
function Processor:resize_crop(img_or_path)
  return self._p:resize_crop(img_or_path)
end

--- The pixel values for one Image or path: a clip.Tensor {3, H, W} (float32, CHW).
function Processor:preprocess(img_or_path)
  return self._p:preprocess(img_or_path)
end

--- A batch of Images and/or paths, decoded and preprocessed on threads (every row bit for bit
--- the serial result).
---   opts.threads: threads that decode, the caller included (default: clip.get_num_threads())
---   opts.skip_errors: false (default): a bad element raises an error naming its index
---     (1-based) and path -> Tensor {n, 3, H, W}.
---     true: bad elements are left out -> Tensor {k, 3, H, W} of the good ones in order,
---     errors ({index =, path =, error =} per bad element; error starts with the path),
---     kept (the 1-based list index of each row).
function Processor:preprocess_batch(list, opts)
  return self._p:preprocess_batch(list, opts)
end

function Processor:__tostring()
  return tostring(self._p)
end

M.Processor = Processor

-- ------------------------------------------------------------------ loader
--- image.loader(proc [, opts]) -> clip.ImageLoader: decodes and preprocesses batches of paths
--- on background threads while the caller does something else (encodes the previous batch).
---   opts.threads: background threads (default 1; docs/performance.md says why)
---   opts.skip_errors: as in preprocess_batch (default false)
---   opts.idle: run the threads at SCHED_IDLE priority (default false): they take only CPU
---     time nothing else wants; under outside load a starved thread delays wait()
--- ld:submit(paths) starts a batch and returns at once (one batch pending at a time);
--- ld:wait() finishes it (the calling thread helps) and returns what preprocess_batch returns;
--- ld:pending(), ld:close() (also <close> and __gc: cancels a pending batch and joins the
--- threads), ld:is_closed(), ld.threads, ld.skip_errors.
function M.loader(proc, opts)
  local p = type(proc) == "table" and proc._p or proc
  return core.image_loader(p, opts)
end

--- for x, errors, kept in image.batches(proc, paths [, opts]) do ... end
--- Preprocessed batches of a list of paths, each decoded in the background while the loop body
--- runs on the one before (a one-batch prefetch). x: Tensor {k, 3, H, W}; kept: the index in
--- paths of each row of x; errors: {index =, path =, error =} for each left-out path (only with
--- skip_errors; indices into paths). Without skip_errors the first bad path raises, its index
--- into paths named. Leaving the loop early (break, error) closes the loader.
---   opts: batch_size (32), threads (1: background threads), skip_errors (false), idle (false)
function M.batches(proc, paths, opts)
  opts = opts or {}
  if type(paths) ~= "table" then error("image.batches: expected a list of paths", 2) end
  local bs = opts.batch_size or 32
  if math.type(bs) ~= "integer" or bs < 1 then
    error("image.batches: batch_size must be a positive integer", 2)
  end
  local n = #paths
  local ld = M.loader(proc, { threads = opts.threads, skip_errors = opts.skip_errors, idle = opts.idle })
  local next_a, cur = 1, nil
  -- an error of the loader, with the item's index into paths, after closing it
  local function fail(msg, a)
    ld:close()
    local i, rest = tostring(msg):match("image loader: item (%d+)(.*)$")
    if i then msg = "image.batches: item " .. (tonumber(i) + a - 1) .. rest end
    error(msg, 3)
  end
  local function submit()
    if next_a > n then return nil end
    local a, b = next_a, math.min(n, next_a + bs - 1)
    local ok, msg = pcall(ld.submit, ld, table.move(paths, a, b, 1, {}))
    if not ok then fail(msg, a) end
    next_a = b + 1
    return a
  end
  cur = submit()
  local function step()
    if not cur then
      ld:close()
      return nil
    end
    local a = cur
    local ok, x, errs, kept = pcall(ld.wait, ld)
    if not ok then fail(x, a) end
    cur = submit() -- the next batch decodes while the caller works on this one
    if not errs then
      kept, errs = {}, {}
      for i = 1, x:size(1) do kept[i] = a + i - 1 end
    else
      for i = 1, #kept do kept[i] = kept[i] + a - 1 end
      for _, e in ipairs(errs) do e.index = e.index + a - 1 end
    end
    return x, errs, kept
  end
  return step, nil, nil, ld
end

return M
