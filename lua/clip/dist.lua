--- clip.dist: MPI collectives for data-parallel training (docs/distributed.md).
--
--   local dist = require "clip.dist"      -- or clip.dist
--   local rank, size = dist.init()
--   dist.allreduce(t, "sum")              -- in place, every rank gets the sum
--   local all, counts = dist.all_gather(t) -- rows of every rank, in rank order
--   dist.broadcast(t, 0)
--   dist.finalize()
--
-- Available when the module was built with `make MPI=1`; in a plain build
-- every function but available() / initialized() raises
-- "clip.dist: this build has no MPI (rebuild with `make MPI=1`; ...)".
-- Ranks are 0-based, as MPI numbers them. Tensors are float32 and contiguous.
local core = require "clip.core"

local M = {}

--- true when this build has MPI.
function M.available() return core.dist_available() end
--- true between init() and finalize().
function M.initialized() return core.dist_initialized() end
--- init() -> rank, size. MPI_Init_thread(MPI_THREAD_FUNNELED) the first time;
-- later calls return the same rank and size.
function M.init() return core.dist_init() end
function M.rank() return core.dist_rank() end
function M.size() return core.dist_size() end
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
--- broadcast(t [, root = 0]) -> t, in place from rank root.
function M.broadcast(t, root) return core.dist_broadcast(t, root) end
--- abort([code = 1]): end every rank at once (MPI_Abort).
function M.abort(code) return core.dist_abort(code) end
--- finalize(): MPI_Finalize (once; later calls do nothing).
function M.finalize() return core.dist_finalize() end

--- The number of ranks, 1 when MPI is not running (or not built).
function M.world() return core.dist_initialized() and core.dist_size() or 1 end

--- shard(n, rank, size) -> lo, hi: the contiguous rows rank takes of a global
-- batch of n rows (1-based, inclusive; near-equal parts, the larger ones last).
function M.shard(n, rank, size)
  return (rank * n) // size + 1, ((rank + 1) * n) // size
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
  M.finalize()
  return err
end

return M
