--- clip.progress: progress reporting for long loops (encoding, training).
--
--   local progress = require "clip.progress"
--   local bar = progress.new({ total = #paths, label = "encode", unit = "img" })
--   for i = 1, #paths do ...; bar:advance(1) end
--   bar:finish()
--
-- Output goes to stderr (opts.stream), never stdout. Modes:
--   "bar"   a bar redrawn in place with the rate and the ETA (at most 10 times
--           a second): "encode [#######.........]  40/100  12.3 img/s  ETA 0:05"
--   "lines" nothing while running; one summary line at finish
--           ("encode: 100 img in 3.2s (31.2 img/s)") - for logs and pipes
--   "quiet" nothing at all
--   "auto"  (default) "bar" when the stream is stderr and stderr is a
--           terminal, "lines" otherwise.
-- With transient = true the bar is erased at finish and "lines" prints
-- nothing: for the short encodes of an evaluation inside a training loop.
--
-- Library functions take an option `progress` and pass it to progress.wrap:
-- nil/false prints nothing, true makes an "auto" bar, a function is called as
-- fn(done, total) after each step, and a table with update/finish methods (a
-- bar of this module) is used as is.
local core = require "clip.core"

local M = {}

--- Seconds of a monotonic wall clock.
M.clock = core.clock

local Bar = {}
Bar.__index = Bar

--- True when stderr is a terminal.
function M.stderr_is_tty() return core.isatty(2) end

local function resolve_mode(mode, stream)
  mode = mode or "auto"
  if mode == "auto" then
    if stream == io.stderr and core.isatty(2) then return "bar" end
    return "lines"
  end
  if mode ~= "bar" and mode ~= "lines" and mode ~= "quiet" then
    error(("progress: unknown mode '%s' (auto, bar, lines, quiet)"):format(tostring(mode)), 3)
  end
  return mode
end

--- "1:05", "12:03:09"
function M.format_duration(s)
  if s ~= s or s == math.huge or s < 0 then return "?" end
  s = math.floor(s + 0.5)
  local h, m, sec = s // 3600, (s % 3600) // 60, s % 60
  if h > 0 then return ("%d:%02d:%02d"):format(h, m, sec) end
  return ("%d:%02d"):format(m, sec)
end

local function format_rate(r)
  if r >= 100 then return ("%.0f"):format(r) end
  if r >= 10 then return ("%.1f"):format(r) end
  return ("%.2f"):format(r)
end

--- new{ total = n, label = "", unit = "it", stream = io.stderr,
--        mode = "auto", width = 24, transient = false, initial = 0 } -> Bar
-- total may be nil (then no bar and no ETA, only the count and the rate).
-- initial: items already done before this run (a resumed job, as tqdm's
-- initial): the bar starts there, and rates and ETAs count only this run's.
function M.new(opts)
  opts = opts or {}
  local stream = opts.stream or io.stderr
  local self = setmetatable({
    total = opts.total,
    label = opts.label or "",
    unit = opts.unit or "it",
    stream = stream,
    mode = resolve_mode(opts.mode, stream),
    width = opts.width or 24,
    done = opts.initial or 0,
    initial = opts.initial or 0,
    start = M.clock(),
    last_draw = -math.huge,
    extra = nil,
    finished = false,
    transient = opts.transient or false,
  }, Bar)
  return self
end

function Bar:_line()
  local elapsed = M.clock() - self.start
  local rate = elapsed > 0 and (self.done - self.initial) / elapsed or 0
  local parts = { self.label }
  if self.total and self.total > 0 then
    local frac = math.min(1, self.done / self.total)
    local fill = math.floor(frac * self.width + 0.5)
    parts[#parts + 1] = "[" .. ("#"):rep(fill) .. ("."):rep(self.width - fill) .. "]"
    local w = #tostring(self.total)
    parts[#parts + 1] = ("%" .. w .. "d/%d"):format(self.done, self.total)
  else
    parts[#parts + 1] = tostring(self.done)
  end
  if self.done > self.initial then parts[#parts + 1] = format_rate(rate) .. " " .. self.unit .. "/s" end
  if self.total and self.done > self.initial and self.done < self.total then
    parts[#parts + 1] = "ETA " .. M.format_duration((self.total - self.done) / rate)
  elseif self.done > 0 then
    parts[#parts + 1] = M.format_duration(elapsed)
  end
  if self.extra then parts[#parts + 1] = self.extra end
  return table.concat(parts, "  ")
end

function Bar:_draw(force)
  if self.mode ~= "bar" then return end
  local now = M.clock()
  if not force and now - self.last_draw < 0.1 then return end
  self.last_draw = now
  self.stream:write("\r\27[K", self:_line())
  self.stream:flush()
end

--- Set the count of finished items; extra (optional) is shown after the ETA
-- (for instance "loss 0.512").
function Bar:update(done, extra)
  self.done = done
  if extra ~= nil then self.extra = extra end
  self:_draw(self.total ~= nil and done >= self.total)
  return self
end

--- Add k (default 1) finished items.
function Bar:advance(k, extra) return self:update(self.done + (k or 1), extra) end

--- Print a line of text without breaking the bar (it is redrawn below).
function Bar:log(line)
  if self.mode == "quiet" then return end
  if self.mode == "bar" then self.stream:write("\r\27[K") end
  self.stream:write(line, "\n")
  if self.mode == "bar" and not self.finished then self:_draw(true) end
  self.stream:flush()
end

--- End the bar. msg (optional) replaces the summary of "lines" mode.
function Bar:finish(msg)
  if self.finished then return self end
  self.finished = true
  if self.mode == "quiet" then return self end
  if self.transient and not msg then
    if self.mode == "bar" then self.stream:write("\r\27[K") end
  elseif self.mode == "bar" then
    self.stream:write("\r\27[K", msg or self:_line(), "\n")
  else
    local elapsed = M.clock() - self.start
    local rate = elapsed > 0 and (self.done - self.initial) / elapsed or 0
    local before = self.initial > 0 and (" (%d done before)"):format(self.initial) or ""
    self.stream:write(msg or ("%s: %d %s%s in %.1fs (%s %s/s)%s"):format(self.label, self.done, self.unit,
      before, elapsed, format_rate(rate), self.unit, self.extra and ("  " .. self.extra) or ""), "\n")
  end
  self.stream:flush()
  return self
end

local Null = {}
Null.__index = Null
function Null:update() return self end
function Null:advance() return self end
function Null:log() end
function Null:finish() return self end

local Callback = {}
Callback.__index = Callback
function Callback:update(done)
  self.done = done
  self.fn(done, self.total)
  return self
end
function Callback:advance(k) return self:update(self.done + (k or 1)) end
function Callback:log() end
function Callback:finish() return self end

--- wrap(opt, total, label, unit [, initial]) -> an object with update/advance/log/finish.
-- opt: nil/false (silent), true (an "auto" bar on stderr), "bar"/"lines"/
-- "quiet", "transient" (an "auto" bar erased at finish), a function
-- fn(done, total), or a ready object.
function M.wrap(opt, total, label, unit, initial)
  if not opt then return setmetatable({}, Null) end
  local o = { total = total, label = label, unit = unit, initial = initial }
  if opt == true then return M.new(o) end
  if opt == "transient" then o.transient = true return M.new(o) end
  if type(opt) == "string" then o.mode = opt return M.new(o) end
  if type(opt) == "function" then return setmetatable({ fn = opt, total = total, done = initial or 0 }, Callback) end
  if type(opt) == "table" and opt.update then return opt end
  error("progress: expected nil, a boolean, a mode name, a function or a progress object", 2)
end

return M
