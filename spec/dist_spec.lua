-- spec/dist_spec.lua - clip.dist (issue 16, docs/distributed.md).
-- Untagged: what every build shows (a plain build's clip.dist names `make MPI=1`).
-- Tag "mpi" (`make test-mpi`): the distributed runs under mpirun with the MPI
-- build in CLIP_MPI_BUILD, compared with one process; where mpirun or the MPI
-- build is missing they are pending with a "skipped: ..." line, never passed.
local clip = require "clip"

describe("clip.dist in this build", function()
  it("is available only in an MPI build, and otherwise names the build option", function()
    if clip.dist.available() then
      assert.is_boolean(clip.dist.initialized())
      return
    end
    assert.is_false(clip.dist.initialized())
    assert.equal(1, clip.dist.world())
    for _, f in ipairs({ "init", "rank", "size", "barrier", "finalize" }) do
      local ok, err = pcall(clip.dist[f])
      assert.is_false(ok)
      assert.matches("this build has no MPI %(rebuild with `make MPI=1`", err)
    end
    local ok, err = pcall(clip.dist.allreduce, clip.zeros({ 2 }), "sum")
    assert.is_false(ok)
    assert.matches("make MPI=1", err)
  end)

  it("splits a global batch into contiguous near-equal shards in rank order", function()
    local function parts(n, size)
      local out = {}
      for r = 0, size - 1 do
        local lo, hi = clip.dist.shard(n, r, size)
        out[#out + 1] = hi - lo + 1
      end
      return table.concat(out, ",")
    end
    assert.equal("2,2", parts(4, 2))
    assert.equal("1,1,2", parts(4, 3))
    assert.equal("2,2,2", parts(6, 3))
    assert.same({ 3, 4 }, { clip.dist.shard(6, 1, 3) })
  end)
end)
