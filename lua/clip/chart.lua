--- clip.chart: line charts written as PNG (no dependencies beyond libpng).
--
--   local chart = require "clip.chart"
--   chart.write("chart.png", {
--     title = "fine-tuning",
--     panels = {
--       { title = "loss", x_label = "step",
--         series = { { name = "train loss", points = { {1, 2.3}, {2, 1.9} } } } },
--       { title = "metrics", y_min = 0, y_max = 1,
--         series = { { name = "valid Recall@1", points = { {0, 0.64}, {4, 0.82} } } } },
--     },
--   })
--
-- Panels are stacked top to bottom and share the width. Each gets nice axis
-- ticks, a light grid, one colour per series (tab10), markers when a series
-- has few points, and a legend. A point whose y is nil or NaN breaks the line.
-- Text uses a built-in 5x7 pixel font (ASCII; other characters print as ?).
-- The drawing primitives are clip.core.canvas (csrc/lua/l_canvas.c); the file is
-- written to a temporary name and renamed into place.
local core = require "clip.core"

local M = {}

-- 5x7 glyphs: 7 rows, each a byte whose low 5 bits are the pixels (MSB left)
local GLYPHS = { ["0"]="0e11131519110e", ["1"]="040c040404040e", ["2"]="0e11010204081f", ["3"]="1f02040201110e", ["4"]="02060a121f0202", ["5"]="1f101e0101110e", ["6"]="0608101e11110e", ["7"]="1f010204080808", ["8"]="0e11110e11110e", ["9"]="0e11110f01020c", ["A"]="0e11111f111111", ["B"]="1e11111e11111e", ["C"]="0e11101010110e", ["D"]="1c12111111121c", ["E"]="1f10101e10101f", ["F"]="1f10101e101010", ["G"]="0e11101711110f", ["H"]="1111111f111111", ["I"]="0e04040404040e", ["J"]="0702020202120c", ["K"]="11121418141211", ["L"]="1010101010101f", ["M"]="111b1515111111", ["N"]="11111915131111", ["O"]="0e11111111110e", ["P"]="1e11111e101010", ["Q"]="0e11111115120d", ["R"]="1e11111e141211", ["S"]="0f10100e01011e", ["T"]="1f040404040404", ["U"]="1111111111110e", ["V"]="11111111110a04", ["W"]="1111111515150a", ["X"]="11110a040a1111", ["Y"]="11110a04040404", ["Z"]="1f01020408101f", ["a"]="00000e010f110f", ["b"]="1010161911111e", ["c"]="00000e1010110e", ["d"]="01010d1311110f", ["e"]="00000e111f100e", ["f"]="0609081c080808", ["g"]="000f11110f010e", ["h"]="10101619111111", ["i"]="04000c0404040e", ["j"]="0200060202120c", ["k"]="10101214181412", ["l"]="0c04040404040e", ["m"]="00001a15151111", ["n"]="00001619111111", ["o"]="00000e1111110e", ["p"]="00001e111e1010", ["q"]="00000d130f0101", ["r"]="00001619101010", ["s"]="00000e100e011e", ["t"]="08081c08080906", ["u"]="0000111111130d", ["v"]="00001111110a04", ["w"]="0000111115150a", ["x"]="0000110a040a11", ["y"]="000011110f010e", ["z"]="00001f0204081f", ["."]="00000000000c0c", [","]="000000000c0408", ["-"]="0000001f000000", ["+"]="0004041f040400", [":"]="000c0c000c0c00", ["/"]="00010204081000", ["("]="02040808080402", [")"]="08040202020408", ["_"]="0000000000001f", ["@"]="0e11171517100e", ["%"]="18190204081303", ["="]="00001f001f0000", ["#"]="0a0a1f0a1f0a0a", ["?"]="0e110102040004", ["!"]="04040404040004", ["\'"]="04040800000000", ["["]="0e08080808080e", ["]"]="0e02020202020e", ["|"]="04040404040404", ["<"]="02040810080402", [">"]="08040201020408", ["*"]="0004150e150400" }

local FONT = {}
for ch, hex in pairs(GLYPHS) do
  local rows = {}
  for i = 1, 7 do rows[i] = tonumber(hex:sub(2 * i - 1, 2 * i), 16) end
  FONT[ch] = rows
end

M.PALETTE = {
  { 31, 119, 180 }, { 255, 127, 14 }, { 44, 160, 44 }, { 214, 39, 40 }, { 148, 103, 189 },
  { 140, 86, 75 }, { 227, 119, 194 }, { 127, 127, 127 }, { 188, 189, 34 }, { 23, 190, 207 },
}

--- Width in pixels of text drawn at a scale.
function M.text_width(s, scale)
  scale = scale or 1
  if #s == 0 then return 0 end
  return (#s * 6 - 1) * scale
end

--- Draw text with its top-left corner at (x, y).
function M.draw_text(cv, x, y, s, rgb, scale)
  scale = scale or 1
  rgb = rgb or { 0, 0, 0 }
  for i = 1, #s do
    local g = FONT[s:sub(i, i)] or (s:sub(i, i) ~= " " and FONT["?"]) or nil
    if g then
      for r = 1, 7 do
        local bits = g[r]
        if bits ~= 0 then
          for c = 0, 4 do
            if bits & (1 << (4 - c)) ~= 0 then
              cv:fill_rect(x + ((i - 1) * 6 + c) * scale, y + (r - 1) * scale, scale, scale, rgb[1], rgb[2], rgb[3])
            end
          end
        end
      end
    end
  end
end

local function finite(v) return type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge end

--- nice_ticks(lo, hi [, n = 5]) -> ticks, lo', hi' (a 1-2-5 step; the range
-- widened to whole steps)
function M.nice_ticks(lo, hi, n)
  n = n or 5
  if hi < lo then lo, hi = hi, lo end
  if hi - lo < 1e-12 then
    local pad = math.abs(lo) > 1e-12 and math.abs(lo) * 0.1 or 1
    lo, hi = lo - pad, hi + pad
  end
  local raw = (hi - lo) / n
  local mag = 10 ^ math.floor(math.log(raw, 10))
  local step
  for _, m in ipairs({ 1, 2, 2.5, 5, 10 }) do
    step = m * mag
    if step >= raw then break end
  end
  local a, b = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
  local ticks = {}
  local k = 0
  while true do
    local t = a + k * step
    if t > b + step * 1e-6 then break end
    if math.abs(t) < step * 1e-9 then t = 0 end
    ticks[#ticks + 1] = t
    k = k + 1
  end
  return ticks, a, b
end

local function fmt_tick(v)
  if v == 0 then return "0" end
  local a = math.abs(v)
  if a >= 1e5 or a < 1e-3 then return (("%.2g"):format(v):gsub("e%+?(%-?)0*(%d)", "e%1%2")) end
  local s = ("%.4f"):format(v):gsub("0+$", ""):gsub("%.$", "")
  return s
end

local function draw_panel(cv, box, panel, opts)
  local x0, y0, w, h = box[1], box[2], box[3], box[4]
  local ml, mr, mt, mb = 64, 16, 24, 34
  local px, py, pw, ph = x0 + ml, y0 + mt, w - ml - mr, h - mt - mb
  local dark, grid, text = { 60, 60, 60 }, { 228, 228, 228 }, { 30, 30, 30 }
  if panel.title then M.draw_text(cv, px, y0 + 6, panel.title, text, 2) end
  -- ranges
  local xmin, xmax, ymin, ymax = math.huge, -math.huge, math.huge, -math.huge
  for _, s in ipairs(panel.series or {}) do
    for _, p in ipairs(s.points or {}) do
      if finite(p[1]) and finite(p[2]) then
        xmin, xmax = math.min(xmin, p[1]), math.max(xmax, p[1])
        ymin, ymax = math.min(ymin, p[2]), math.max(ymax, p[2])
      end
    end
  end
  if xmin > xmax then xmin, xmax, ymin, ymax = 0, 1, 0, 1 end
  if panel.y_min then ymin = math.min(ymin, panel.y_min) end
  if panel.y_max then ymax = math.max(ymax, panel.y_max) end
  if panel.x_min then xmin = math.min(xmin, panel.x_min) end
  local yt, ylo, yhi = M.nice_ticks(ymin, ymax, panel.y_ticks or 5)
  local xt, xlo, xhi = M.nice_ticks(xmin, xmax, math.max(2, math.min(8, pw // 70)))
  if xmax == math.floor(xmax) and xmin == math.floor(xmin) then
    -- integer x (steps, epochs): no fractional ticks
    local keep = {}
    for _, t in ipairs(xt) do if t == math.floor(t) then keep[#keep + 1] = t end end
    if #keep >= 2 then xt = keep end
  end
  local function X(v) return px + (v - xlo) / (xhi - xlo) * pw end
  local function Y(v) return py + ph - (v - ylo) / (yhi - ylo) * ph end
  -- grid and tick labels
  for _, t in ipairs(yt) do
    local yy = math.floor(Y(t) + 0.5)
    cv:fill_rect(px, yy, pw, 1, grid[1], grid[2], grid[3])
    local s = fmt_tick(t)
    M.draw_text(cv, px - 6 - M.text_width(s), yy - 3, s, text)
  end
  for _, t in ipairs(xt) do
    local xx = math.floor(X(t) + 0.5)
    cv:fill_rect(xx, py, 1, ph, grid[1], grid[2], grid[3])
    cv:fill_rect(xx, py + ph, 1, 4, dark[1], dark[2], dark[3])
    local s = fmt_tick(t)
    M.draw_text(cv, xx - M.text_width(s) // 2, py + ph + 7, s, text)
  end
  -- frame
  cv:fill_rect(px, py, pw, 1, dark[1], dark[2], dark[3])
  cv:fill_rect(px, py + ph, pw + 1, 1, dark[1], dark[2], dark[3])
  cv:fill_rect(px, py, 1, ph, dark[1], dark[2], dark[3])
  cv:fill_rect(px + pw, py, 1, ph, dark[1], dark[2], dark[3])
  if panel.x_label then
    M.draw_text(cv, px + pw - M.text_width(panel.x_label), py + ph + 19, panel.x_label, text)
  end
  -- series
  for si, s in ipairs(panel.series or {}) do
    local c = s.color or M.PALETTE[(si - 1) % #M.PALETTE + 1]
    local pts, prev = s.points or {}, nil
    local marks = #pts <= (opts.marker_max or 40)
    for _, p in ipairs(pts) do
      if finite(p[1]) and finite(p[2]) then
        local xx, yy = X(p[1]), Y(p[2])
        if prev then cv:line(prev[1], prev[2], xx, yy, c[1], c[2], c[3], s.width or 2) end
        if marks then cv:fill_rect(math.floor(xx) - 2, math.floor(yy) - 2, 5, 5, c[1], c[2], c[3]) end
        prev = { xx, yy }
      else
        prev = nil
      end
    end
  end
  -- legend (top right, inside the plot)
  local names = {}
  for si, s in ipairs(panel.series or {}) do if s.name then names[#names + 1] = { si, s } end end
  if #names > 0 then
    local lw = 0
    for _, it in ipairs(names) do lw = math.max(lw, M.text_width(it[2].name)) end
    local bw, bh = lw + 34, #names * 12 + 6
    local bx, by = px + pw - bw - 6, py + 6
    if panel.legend == "bottom" then by = py + ph - bh - 6 end
    cv:fill_rect(bx, by, bw, bh, 255, 255, 255)
    cv:fill_rect(bx, by, bw, 1, 200, 200, 200)
    cv:fill_rect(bx, by + bh - 1, bw, 1, 200, 200, 200)
    cv:fill_rect(bx, by, 1, bh, 200, 200, 200)
    cv:fill_rect(bx + bw - 1, by, 1, bh, 200, 200, 200)
    for j, it in ipairs(names) do
      local si, s = it[1], it[2]
      local c = s.color or M.PALETTE[(si - 1) % #M.PALETTE + 1]
      local ly = by + 4 + (j - 1) * 12
      cv:line(bx + 6, ly + 3.5, bx + 22, ly + 3.5, c[1], c[2], c[3], 2)
      M.draw_text(cv, bx + 28, ly, s.name, text)
    end
  end
end

--- render(spec) -> canvas. spec: width (800), height (260 per panel + 30 for
-- a title), title, panels = { {title, x_label, series = { {name, points =
-- {{x, y}, ...}, color = {r,g,b}, width = 2} }, y_min, y_max, legend =
-- "top"|"bottom"} }.
function M.render(spec)
  local panels = spec.panels or {}
  if #panels == 0 then error("chart: no panels", 2) end
  local top = spec.title and 30 or 6
  local W = spec.width or 800
  local H = spec.height or (top + 260 * #panels)
  local cv = core.canvas(W, H, 255, 255, 255)
  if spec.title then M.draw_text(cv, 12, 8, spec.title, { 0, 0, 0 }, 2) end
  local ph = (H - top) // #panels
  for i, p in ipairs(panels) do draw_panel(cv, { 0, top + (i - 1) * ph, W, ph }, p, spec) end
  return cv
end

--- write(path, spec) -> path; errors name the path.
function M.write(path, spec)
  local cv = M.render(spec)
  local ok, err = cv:write_png(path)
  if not ok then error(err, 2) end
  return path
end

return M
