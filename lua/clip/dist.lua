--- clip.dist: MPI collectives for data-parallel training (docs/distributed.md).
--
--   local dist = require "clip.dist"      -- or clip.dist
--   local rank, size = dist.init{timeout = 300}
--   dist.allreduce(t, "sum")              -- in place, every rank gets the sum
--   local all, counts = dist.all_gather(t) -- rows of every rank, in rank order
--   dist.broadcast(t, 0)
--   dist.finalize()
--
-- Available when the module was built with `make MPI=1`; in a plain build
-- every function but available() / initialized() / checksum() raises
-- "clip.dist: this build has no MPI (rebuild with `make MPI=1`; ...)".
-- Ranks are 0-based, as MPI numbers them. Tensors are float32 and contiguous.
--
-- Faults: every collective waits at most `timeout` seconds (init{timeout = s},
-- else the environment's CLIP_DIST_TIMEOUT, else 300; 0: no limit) and then
-- raises "clip.dist.<call>: rank r of n timed out after x s ...". MPI errors
-- are raised as Lua errors too; nothing in the module ends the process. After
-- a collective failed that way MPI cannot be used again in the process: later
-- calls are refused and the job must end (run() aborts it; a rank that exits
-- makes mpirun end the others).
local core = require "clip.core"

local M = {}

M.DEFAULT_TIMEOUT = 300

--- true when this build has MPI.
function M.available() return core.dist_available() end
--- true between init() and finalize().
function M.initialized() return core.dist_initialized() end

-- the timeout of opts / the environment / the default
local function timeout_of(opts, first)
  local t = type(opts) == "table" and opts.timeout or nil
  if t == nil and first then
    local env = os.getenv("CLIP_DIST_TIMEOUT")
    if env and env ~= "" then
      t = tonumber(env)
      if not t or t < 0 then
        error(("clip.dist.init: CLIP_DIST_TIMEOUT must be seconds >= 0 (0: no limit), got '%s'"):format(env), 3)
      end
    else
      t = M.DEFAULT_TIMEOUT
    end
  end
  if t == false or t == math.huge then t = 0 end
  if t ~= nil and (type(t) ~= "number" or t < 0 or t ~= t) then
    error(("clip.dist.init: timeout must be seconds >= 0 (0 or false: no limit), got %s"):format(tostring(t)), 3)
  end
  return t
end

local started = false

--- init([{timeout = s}]) -> rank, size. MPI_Init_thread(MPI_THREAD_FUNNELED)
-- the first time; later calls return the same rank and size (and change the
-- timeout only when they pass one). The first call takes the timeout from
-- opts, else CLIP_DIST_TIMEOUT, else DEFAULT_TIMEOUT (300 s); 0 or false: none.
function M.init(opts)
  if opts ~= nil and type(opts) ~= "table" then error("clip.dist.init: expected a table of options", 2) end
  local t = timeout_of(opts, not started)
  local rank, size = core.dist_init()
  started = true
  if t then core.dist_set_timeout(t) end
  return rank, size
end
function M.rank() return core.dist_rank() end
function M.size() return core.dist_size() end
--- set_timeout(s): the limit of every later collective, seconds (0: none).
function M.set_timeout(s) return core.dist_set_timeout(s == false and 0 or s) end
--- get_timeout() -> seconds (0: none).
function M.get_timeout() return core.dist_get_timeout() end
--- with_timeout(s, fn, ...) -> fn(...)'s results, with the timeout s while fn runs.
function M.with_timeout(s, fn, ...)
  local old = core.dist_get_timeout()
  core.dist_set_timeout(s == false and 0 or s)
  local r = table.pack(pcall(fn, ...))
  core.dist_set_timeout(old)
  if not r[1] then error(r[2], 0) end
  return table.unpack(r, 2, r.n)
end
--- broken() -> nil, or the error of the collective that failed in flight on
-- this rank (MPI cannot be used again in the process).
function M.broken() return core.dist_broken() end
function M.barrier() return core.dist_barrier() end
--- allreduce(t [, op]) -> t, in place; op "sum" (default), "max", "min", "prod", "avg".
function M.allreduce(t, op) return core.dist_allreduce(t, op) end
--- allreduce_many(list [, op [, bucket_bytes]]): every tensor in place, packed
-- into buckets of up to bucket_bytes (default 25 MiB) per MPI call.
function M.allreduce_many(list, op, bucket_bytes) return core.dist_allreduce_many(list, op, bucket_bytes) end
--- all_gather(t) -> g, counts: every rank's t stacked along dim 1 in rank
-- order (row counts may differ; the other dims must agree); counts[r + 1] is
-- rank r's row count.
function M.all_gather(t) return core.dist_all_gather(t) end
--- reduce_scatter(t, counts) -> s: the sum over the ranks of t {R, ...}
-- (R = the sum of counts, the same on every rank), of which this rank gets its
-- counts[rank + 1] rows (rank r's rows start after counts[1] + .. + counts[r]):
-- the backward of all_gather.
function M.reduce_scatter(t, counts) return core.dist_reduce_scatter(t, counts) end
--- broadcast(t [, root = 0]) -> t, in place from rank root.
function M.broadcast(t, root) return core.dist_broadcast(t, root) end
--- all_gather_string(s) -> {s of rank 0, s of rank 1, ...}
function M.all_gather_string(s) return core.dist_all_gather_string(s) end
--- broadcast_string(s [, root = 0]) -> root's s (s is ignored on the other ranks)
function M.broadcast_string(s, root) return core.dist_broadcast_string(s, root) end
--- checksum(list) -> 16 hex digits: FNV-1a over the tensors' shapes and float
-- bits (every build; the same on every machine).
function M.checksum(list) return core.dist_checksum(list) end
--- abort([code = 1]): end every rank at once (MPI_Abort).
function M.abort(code) return core.dist_abort(code) end
--- finalize() -> true, or false and a message when a collective failed in
-- flight on this rank (MPI_Finalize could then wait for the others forever:
-- it is skipped, and the process should end, e.g. with abort()).
function M.finalize() return core.dist_finalize() end

--- The number of ranks, 1 when MPI is not running (or not built).
function M.world() return core.dist_initialized() and core.dist_size() or 1 end

--- shard(n, rank, size) -> lo, hi: the contiguous rows rank takes of a global
-- batch of n rows (1-based, inclusive; near-equal parts, the larger ones last).
function M.shard(n, rank, size)
  return (rank * n) // size + 1, ((rank + 1) * n) // size
end

--- checked(what, fn, ...) -> fn(...)'s results on every rank, or the same error
-- on every rank: fn runs on each rank under pcall, then the ranks exchange
-- whether it failed; when it failed on any, every rank raises
-- "<what> failed on rank r of n: <its message>" (several: "<what> failed on
-- ranks 0, 1 of n; rank 0: <the lowest failing rank's message>"). A collective: every rank
-- must call it. For the steps before training that can fail on one rank only
-- (a file missing on one machine, a model that does not load).
function M.checked(what, fn, ...)
  local r = table.pack(xpcall(fn, function(e) return e end, ...))
  local msg = r[1] and "" or ("!" .. tostring(r[2]))
  local all = M.all_gather_string(msg)
  local failed, first = {}, nil
  for i, m in ipairs(all) do
    if m ~= "" then
      failed[#failed + 1] = i - 1
      first = first or { i - 1, m:sub(2) }
    end
  end
  if first then
    if #failed == 1 then error(("%s failed on rank %d of %d: %s"):format(what, first[1], #all, first[2]), 0) end
    error(("%s failed on ranks %s of %d; rank %d: %s"):format(what, table.concat(failed, ", "), #all, first[1],
      first[2]), 0)
  end
  return table.unpack(r, 2, r.n)
end

--- run(fn, ...): init(), fn(rank, size, ...), finalize(). An error in fn is
-- written to stderr with the rank and ends every rank (abort(1)) instead of
-- leaving the others waiting in a collective.
function M.run(fn, ...)
  local rank, size = M.init()
  local ok, err = xpcall(fn, debug.traceback, rank, size, ...)
  if not ok then
    io.stderr:write(("clip.dist rank %d/%d: %s\n"):format(rank, size, tostring(err)))
    io.stderr:flush()
    M.abort(1)
  end
  local fin, ferr = M.finalize()
  if not fin then
    io.stderr:write(("clip.dist rank %d/%d: %s\n"):format(rank, size, tostring(ferr)))
    io.stderr:flush()
    M.abort(1)
  end
  return err
end

return M
