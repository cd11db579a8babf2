--- clip.cli: the small argument parser shared by the example scripts.
--
--   local cli = require "clip.cli"
--   local args = cli.parse(arg, {
--     usage = "lua5.4 examples/zero_shot.lua --model DIR --classes a,b,c IMAGE...",
--     description = "Zero-shot classification with prompt ensembling.",
--     options = {
--       "model", -- a common option, by name (M.common)
--       { "batch-size", "N", "images per forward", type = "integer", default = 32 },
--       { "classes", "LIST", "class names", type = "list" },
--       { "quiet", nil, "print only the results", type = "flag" },
--     },
--     positional = { "IMAGE", "image files or folders", min = 0 },
--   })
--   -- args.model, args.batch_size, args.classes (a list), args.quiet, args[1..n]
--
-- Options are written --name VALUE or --name=VALUE; dashes in names become
-- underscores in the result. Types: "string" (default), "number", "integer",
-- "flag" (--name / --no-name), "list" (repeatable and comma-separated),
-- "choice" (with choices = {...}). --help (-h) prints the usage and exits 0;
-- a bad command line prints the error and exits 2. With opts.exit = false,
-- parse returns nil, message instead of exiting (and nil, "help", text for
-- --help).
local M = {}

--- Options that several scripts declare alike: an entry of spec.options may
-- be one of these names instead of the option itself.
M.common = {
  model = { "model", "DIR", "CLIP model directory", required = true },
  folder = { "folder", "DIR", "labelled images: DIR/<class>/<image>", required = true },
  ["batch-size"] = { "batch-size", "N", "images per forward", type = "integer", default = 32 },
  quiet = { "quiet", nil, "no progress output", type = "flag" },
}

-- spec.options with the names of common options replaced by the options
local function options_of(spec)
  local out = {}
  for i, o in ipairs(spec.options or {}) do
    out[i] = type(o) == "string" and (M.common[o] or error("clip.cli: no common option '" .. o .. "'", 3)) or o
  end
  return out
end

local function key_of(name) return (name:gsub("%-", "_")) end

local function split_list(s)
  local out = {}
  for item in (s .. ","):gmatch("(.-),") do
    item = item:match("^%s*(.-)%s*$")
    if item ~= "" then out[#out + 1] = item end
  end
  return out
end

--- The help text of a spec.
function M.help(spec)
  local lines = {}
  if spec.usage then lines[#lines + 1] = "usage: " .. spec.usage end
  if spec.description then lines[#lines + 1] = ""; lines[#lines + 1] = spec.description end
  if spec.positional then
    lines[#lines + 1] = ""
    lines[#lines + 1] = ("  %-24s %s"):format(spec.positional[1], spec.positional[2] or "")
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "options:"
  local opts = options_of(spec)
  opts[#opts + 1] = { "help", nil, "show this help and exit", type = "flag" }
  for _, o in ipairs(opts) do
    local flag = "--" .. o[1] .. (o[2] and (" " .. o[2]) or "")
    local desc = o[3] or ""
    if o.required then
      desc = desc .. " (required)"
    elseif o.default ~= nil and o.type ~= "flag" then
      local d = o.default
      if type(d) == "table" then d = table.concat(d, ",") end
      desc = desc .. (" (default %s)"):format(tostring(d))
    end
    if o.choices then desc = desc .. " [" .. table.concat(o.choices, "|") .. "]" end
    if #flag > 24 then
      lines[#lines + 1] = "  " .. flag
      lines[#lines + 1] = ("  %-24s %s"):format("", desc)
    else
      lines[#lines + 1] = ("  %-24s %s"):format(flag, desc)
    end
  end
  if spec.epilog then lines[#lines + 1] = ""; lines[#lines + 1] = spec.epilog end
  return table.concat(lines, "\n") .. "\n"
end

local function convert(o, v)
  local t = o.type or "string"
  if t == "number" then
    local n = tonumber(v)
    if not n then return nil, ("--%s expects a number, got '%s'"):format(o[1], v) end
    return n
  elseif t == "integer" then
    local n = math.tointeger(tonumber(v))
    if not n then return nil, ("--%s expects an integer, got '%s'"):format(o[1], v) end
    return n
  elseif t == "choice" then
    for _, c in ipairs(o.choices) do if c == v then return v end end
    return nil, ("--%s must be one of %s, got '%s'"):format(o[1], table.concat(o.choices, ", "), v)
  end
  return v
end

--- parse(argv, spec [, opts]) -> args table (see the module comment).
function M.parse(argv, spec, opts)
  opts = opts or {}
  local function fail(msg)
    if opts.exit == false then return nil, msg end
    io.stderr:write((spec.name or (argv and argv[0]) or "lua"), ": error: ", msg, "\n(try --help)\n")
    os.exit(2)
  end
  local options = options_of(spec)
  local byname, out = {}, {}
  for _, o in ipairs(options) do
    byname[o[1]] = o
    local k = key_of(o[1])
    if o.type == "list" then
      out[k] = type(o.default) == "table" and table.move(o.default, 1, #o.default, 1, {}) or {}
    elseif o.type == "flag" then
      out[k] = o.default or false
    else
      out[k] = o.default
    end
  end
  local given = {}
  local i, n = 1, #argv
  local rest_positional = false
  while i <= n do
    local a = argv[i]
    if rest_positional or a == "-" or a:sub(1, 1) ~= "-" then
      out[#out + 1] = a
    elseif a == "--" then
      rest_positional = true
    elseif a == "-h" or a == "--help" then
      local text = M.help(spec)
      if opts.exit == false then return nil, "help", text end
      io.stdout:write(text)
      os.exit(0)
    else
      local name, value = a:match("^%-%-([^=]+)=(.*)$")
      if not name then name = a:match("^%-%-(.+)$") end
      if not name then return fail("unknown option " .. a) end
      local o = byname[name]
      local negated = false
      if not o and name:sub(1, 3) == "no-" and byname[name:sub(4)] and byname[name:sub(4)].type == "flag" then
        o, negated = byname[name:sub(4)], true
      end
      if not o then return fail("unknown option --" .. name) end
      local k = key_of(o[1])
      if o.type == "flag" then
        if value ~= nil then return fail("--" .. name .. " takes no value") end
        out[k] = not negated
      else
        if value == nil then
          i = i + 1
          value = argv[i]
          if value == nil then return fail("--" .. name .. " needs a value") end
        end
        if o.type == "list" then
          if not given[k] then out[k] = {} end
          for _, item in ipairs(split_list(value)) do out[k][#out[k] + 1] = item end
        else
          local v, err = convert(o, value)
          if v == nil then return fail(err) end
          out[k] = v
        end
      end
      given[k] = true
    end
    i = i + 1
  end
  for _, o in ipairs(options) do
    if o.required and not given[key_of(o[1])] then return fail("--" .. o[1] .. " is required") end
  end
  if spec.positional then
    local min, max = spec.positional.min or 0, spec.positional.max
    if #out < min then return fail(("expected at least %d %s"):format(min, spec.positional[1])) end
    if max and #out > max then return fail(("expected at most %d %s"):format(max, spec.positional[1])) end
  elseif #out > 0 then
    return fail("unexpected argument " .. out[1])
  end
  out._given = given
  return out
end

return M
