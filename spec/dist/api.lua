-- spec/dist/api.lua - clip.dist's collectives checked from inside one rank under mpirun,
-- for spec/dist_spec.lua:  lua5.4 spec/dist/api.lua OUT [stall]
-- Each rank writes OUT.rank<r>.json: {checks = {name = true | "what went wrong"}}.
-- stall: the last rank computes for 30 s outside MPI before its barrier, the others
-- wait with a 2 s timeout: they record the error, then that a later call is refused and
-- that finalize is skipped, write their file and abort the job.
local clip = require "clip"
local dist = clip.dist

local out, stall = arg[1], arg[2] == "stall"
local rank, size = dist.init({ timeout = stall and 2 or 60 })
local checks = {}
local function check(name, fn)
  local ok, err = pcall(fn)
  checks[name] = ok or tostring(err)
end
local function write()
  local f = assert(io.open(("%s.rank%d.json"):format(out, rank), "wb"))
  f:write(clip.json.encode({ checks = checks, rank = rank, size = size }))
  f:close()
end

if not stall then
  check("timeout", function() assert(dist.get_timeout() == 60) end)
  check("all_gather_string", function()
    local all = dist.all_gather_string(("r%d"):rep(rank + 1):format(rank, rank, rank, rank))
    assert(#all == size)
    for r = 0, size - 1 do assert(all[r + 1] == ("r%d"):rep(r + 1):format(r, r, r, r), all[r + 1]) end
  end)
  check("broadcast_string", function()
    assert(dist.broadcast_string(rank == 1 and "from one\0with a zero" or nil, 1) == "from one\0with a zero")
    assert(dist.broadcast_string(rank == 0 and "" or nil, 0) == "")
  end)
  -- reduce_scatter: rank r contributes t[i][j] = (r + 1) * (10 i + j); counts uneven
  check("reduce_scatter", function()
    local counts, R = {}, 0
    for r = 1, size do counts[r] = r; R = R + r end
    local rows = {}
    for i = 1, R do rows[i] = { (rank + 1) * (10 * i + 1), (rank + 1) * (10 * i + 2) } end
    local mine = dist.reduce_scatter(clip.tensor(rows), counts)
    local lo = 1
    for r = 1, rank do lo = lo + counts[r] end
    assert(mine:size(1) == counts[rank + 1], "rows " .. mine:size(1))
    local f = size * (size + 1) / 2 -- the sum of (r + 1)
    for k = 1, mine:size(1) do
      local i = lo + k - 1
      assert(mine[k][1] == f * (10 * i + 1) and mine[k][2] == f * (10 * i + 2), ("row %d"):format(i))
    end
    local ok, err = pcall(dist.reduce_scatter, clip.zeros({ R + 1, 2 }), counts)
    assert(not ok and err:find("counts add up to " .. R .. " rows", 1, true), err)
  end)
  check("checked", function()
    assert(select(2, dist.checked("adding", function(a, b) return "x", a + b end, 2, 3)) == 5)
    local ok, err = pcall(dist.checked, "the step", function() if rank == size - 1 then error("boom", 0) end end)
    assert(not ok and err == ("the step failed on rank %d of %d: boom"):format(size - 1, size), err)
  end)
  check("checksum", function()
    local all = dist.all_gather_string(dist.checksum({ clip.randn({ 5, 3 }, 42), "same" }))
    for r = 2, size do assert(all[r] == all[1]) end
  end)
  check("not broken", function() assert(dist.broken() == nil) end)
  write()
  dist.barrier()
  assert(dist.finalize() == true)
else
  if rank == size - 1 then
    local t0 = os.clock()
    while os.clock() - t0 < 30 do end
  end
  check("timeout", function()
    local ok, err = pcall(dist.barrier)
    assert(not ok, "the barrier returned")
    assert(err:find(("clip.dist.barrier: rank %d of %d timed out after 2."):format(rank, size), 1, true), err)
  end)
  check("refused", function()
    local ok, err = pcall(dist.allreduce, clip.ones({ 2 }))
    assert(not ok and err:find("clip.dist.allreduce: refused: an earlier collective failed on this rank", 1, true), err)
    assert(dist.broken():find("clip.dist.barrier: rank", 1, true))
  end)
  check("finalize skipped", function()
    local ok, msg = dist.finalize()
    assert(ok == false and msg:find("clip.dist.finalize: skipped", 1, true), tostring(msg))
  end)
  write()
  dist.abort(3)
end
