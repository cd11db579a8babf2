--- bench/make_data.lua - the fine-tuning workload's data: 64 distinct PNG images (256x256,
-- smooth random patterns) and 64 captions of about 15 tokens, in <outdir> (default bench/out/data).
-- Pure Lua (PNG with stored deflate blocks), so the benchmark needs no image library of its own.
-- usage: lua5.4 bench/make_data.lua [outdir]
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local out = arg[1] or (here .. "out/data")
local N, S = 64, 256

local crc_table = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do c = (c & 1) == 1 and (0xEDB88320 ~ (c >> 1)) or (c >> 1) end
  crc_table[i] = c
end
local function crc32(s, crc)
  crc = (crc or 0) ~ 0xFFFFFFFF
  for i = 1, #s do crc = crc_table[(crc ~ s:byte(i)) & 0xFF] ~ (crc >> 8) end
  return crc ~ 0xFFFFFFFF
end
local function adler32(s)
  local a, b = 1, 0
  for i = 1, #s do
    a = (a + s:byte(i)) % 65521
    b = (b + a) % 65521
  end
  return (b << 16) | a
end
local function chunk(kind, data)
  return string.pack(">I4", #data) .. kind .. data .. string.pack(">I4", crc32(kind .. data))
end
local function png(w, h, rgb_rows)
  local raw = {}
  for y = 1, h do raw[y] = "\0" .. rgb_rows[y] end
  raw = table.concat(raw)
  local z, pos = { "\x78\x01" }, 1
  while pos <= #raw do
    local blk = raw:sub(pos, pos + 65534)
    pos = pos + #blk
    local final = pos > #raw and 1 or 0
    z[#z + 1] = string.char(final) .. string.pack("<I2I2", #blk, (~#blk) & 0xFFFF) .. blk
  end
  z[#z + 1] = string.pack(">I4", adler32(raw))
  return "\x89PNG\r\n\26\n" .. chunk("IHDR", string.pack(">I4I4BBBBB", w, h, 8, 2, 0, 0, 0))
    .. chunk("IDAT", table.concat(z)) .. chunk("IEND", "")
end

local COLORS = { "red", "green", "blue", "yellow", "black", "white", "orange", "purple" }
local THINGS = { "cat", "dog", "car", "bicycle", "teapot", "chair", "bird", "boat" }
local PLACES = { "kitchen table", "sandy beach", "city street", "snowy field", "wooden floor",
  "green lawn", "old bridge", "market stall" }

os.execute("mkdir -p '" .. out .. "'")
local caps = {}
for i = 1, N do
  local path = ("%s/img%02d.png"):format(out, i)
  local f = io.open(path, "rb")
  if f then
    f:close()
  else
    local fx, fy, ph = 1 + i % 5, 1 + (i * 3) % 7, i * 0.37
    local rows = {}
    for y = 0, S - 1 do
      local r = {}
      for x = 0, S - 1 do
        local u, v = x / S, y / S
        local a = math.sin(6.28 * (fx * u + ph)) * math.cos(6.28 * (fy * v - ph))
        local R = math.floor(127.5 + 120 * a)
        local G = math.floor(127.5 + 120 * math.sin(6.28 * (u * v * (i % 4 + 1)) + ph))
        local B = (x * i + y * 3) % 256
        r[#r + 1] = string.char(R, G, B)
      end
      rows[y + 1] = table.concat(r)
    end
    f = assert(io.open(path, "wb"))
    f:write(png(S, S, rows))
    f:close()
  end
  caps[i] = ("a photo of a %s %s resting on the %s in the early morning light"):format(
    COLORS[1 + i % #COLORS], THINGS[1 + (i // 3) % #THINGS], PLACES[1 + (i // 2) % #PLACES])
end
local f = assert(io.open(out .. "/captions.txt", "wb"))
f:write(table.concat(caps, "\n"), "\n")
f:close()
io.stderr:write(out, ": ", N, " images and captions\n")
