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

  it("refuses clip.Trainer{distributed = true} in a build without MPI, naming the option", function()
    if clip.dist.available() then return end
    local m = clip.load(require("spec.helpers").fixtures .. "models/tiny")
    m:train_only({ "projection" })
    local ok, err = pcall(clip.Trainer, { model = m, loss = "clip", distributed = true })
    assert.is_false(ok)
    assert.matches("distributed = true: this build has no MPI %(rebuild with `make MPI=1`", err)
    ok, err = pcall(clip.Trainer, { model = m, loss = "clip", distributed = "yes" })
    assert.is_false(ok)
    assert.matches("distributed must be true, false or a table {bucket_bytes = n, timeout = s", err, 1, true)
    ok, err = pcall(clip.Trainer, { model = m, loss = "clip", distributed = { timeot = 5 } })
    assert.is_false(ok)
    assert.matches("distributed: unknown option 'timeot'", err, 1, true)
    ok, err = pcall(clip.Trainer, { model = m, loss = "clip", distributed = { timeout = -1 } })
    assert.is_false(ok)
    assert.matches("distributed.timeout must be seconds >= 0", err, 1, true)
  end)

  it("checksums tensors and strings alike on every build (FNV-1a over 32-bit words)", function()
    -- the value computed independently (Python: ndim, shape halves, float bits; length halves, bytes)
    assert.equal("662038500c4114ed", clip.dist.checksum({ clip.tensor({ 1, 2, 3 }), "abc", clip.zeros({ 2, 2 }) }))
    assert.equal("cbf29ce484222325", clip.dist.checksum({}))
    assert.are_not.equal(clip.dist.checksum({ "ab" }), clip.dist.checksum({ "ba" }))
    assert.are_not.equal(clip.dist.checksum({ clip.zeros({ 4 }) }), clip.dist.checksum({ clip.zeros({ 2, 2 }) }))
  end)

  -- local_loss: the parts of disjoint row ranges (as the ranks hold them) add up
  -- to the whole loss, its gradients and its temperature / bias gradients
  it("splits each loss into row-range parts that add up to the whole (local_loss)", function()
    local core = clip.core
    local a, b, c = core.randn({ 7, 5 }, 1), core.randn({ 7, 5 }, 2), core.randn({ 14, 5 }, 3)
    local function maxabs(t) return math.max(t:max(), -t:min()) end
    local cases = {
      { "clip", function(lo, hi) return core.loss_clip(a, b, 2.0, lo, hi) end },
      { "siglip", function(lo, hi) return core.loss_siglip(a, b, 2.3, -10, lo, hi) end },
      { "mnrl", function(lo, hi) return core.loss_mnrl(a, c, 20, false, lo, hi) end },
      { "mnsrl", function(lo, hi) return core.loss_mnrl(a, c, 20, true, lo, hi) end },
    }
    for _, case in ipairs(cases) do
      local whole = table.pack(case[2]())
      local sum = {}
      for _, r in ipairs({ { 1, 2 }, { 3, 3 }, { 4, 7 } }) do
        local part = table.pack(case[2](r[1], r[2]))
        for i = 1, part.n do sum[i] = sum[i] and sum[i] + part[i] or part[i] end
      end
      for i = 1, whole.n do
        local label = ("%s result %d"):format(case[1], i)
        if type(whole[i]) == "number" then
          assert.is_true(math.abs(whole[i] - sum[i]) <= 1e-12 * math.max(1, math.abs(whole[i])), label)
        else
          assert.is_true(maxabs(whole[i] - sum[i]) <= 1e-6 * maxabs(whole[i]), label)
        end
      end
    end
    local ok, err = pcall(core.loss_clip, a, b, 2.0, 3, 8)
    assert.is_false(ok)
    assert.matches("CLIPLoss: rows 3..8 are not within the batch of 7", err, 1, true)
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

-- Distributed runs: spec/dist/run.lua under mpirun with N ranks of batch b against
-- one process with batch N*b (the same loss, gradients and weights after 3 steps).
local H = require "spec.helpers"
local ROOT = H.spec_dir .. "../"
local BUILD = os.getenv("CLIP_MPI_BUILD") or (ROOT .. "build/mpi")
local RANKS = {}
for n in (os.getenv("CLIP_DIST_RANKS") or "2 3"):gmatch("%d+") do RANKS[#RANKS + 1] = tonumber(n) end
local TOL = 1e-5

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok = p:close()
  return ok, out
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local ENV = ("env LUA_PATH=%s LUA_CPATH=%s"):format(q(ROOT .. "lua/?.lua;" .. ROOT .. "lua/?/init.lua;;"),
  q(BUILD .. "/?.so;;"))
local function mpirun(n)
  local root_flag = sh("test \"$(id -u)\" = 0") and " --allow-run-as-root" or ""
  return ("mpirun --oversubscribe%s -np %d"):format(root_flag, n)
end

-- why the distributed specs cannot run here, or nil (probed once, in the first
-- test that runs: a plain `make test` excludes the tag and never starts mpirun)
local probed, probe_reason
local function skip_reason()
  if probed then return probe_reason end
  probed = true
  probe_reason = (function()
    if not sh("command -v mpirun") then
      return "skipped: mpirun not found (Debian: apt-get install openmpi-bin libopenmpi-dev; `make test-mpi` does)"
    end
    if not clip.core.is_file(BUILD .. "/clip/core.so") then
      return ("skipped: no MPI build at %s/clip/core.so (`make MPI=1`, or `make test-mpi`)"):format(BUILD)
    end
    local ok, out = sh(("timeout 120 %s %s lua5.4 -e %s"):format(mpirun(2), ENV,
      q('local d = require("clip.dist"); d.run(function(r, n) assert(n == 2) end)')))
    if not ok then
      return "skipped: mpirun cannot start 2 ranks here: " .. out:gsub("%s+$", ""):sub(-400)
    end
    return nil
  end)()
  return probe_reason
end

local function read_run(prefix, rank)
  local w = clip.load_safetensors(("%s.rank%d.safetensors"):format(prefix, rank))
  local js = clip.json.decode(H.read(("%s.rank%d.json"):format(prefix, rank)))
  return w, js
end

local function maxabs(t) return math.max(t:max(), -t:min()) end

-- max over tensors of max|a - r| / scale, scale = max|r| of the tensor; the
-- gradient of a k_proj bias is zero in exact arithmetic (softmax is shift
-- invariant: float noise alone) and is measured against the largest gradient
-- over all tensors instead (as spec/gradcache_spec.lua does)
local function rel_diff(a, r)
  local worst, where = 0, nil
  local gmax = 0
  for k, ref in pairs(r) do
    if k:sub(1, 2) == "g:" then gmax = math.max(gmax, maxabs(ref)) end
  end
  for k, ref in pairs(r) do
    local got = assert(a[k], "missing " .. k)
    local scale = math.max(maxabs(ref), 1e-12)
    if k:sub(1, 2) == "g:" and k:find("k_proj.bias", 1, true) then scale = math.max(scale, gmax) end
    local d = maxabs(got - ref) / scale
    if d > worst or not where then worst, where = d, k end
  end
  for k in pairs(a) do assert(r[k], "unexpected " .. k) end
  return worst, where
end

describe("data-parallel training under mpirun #mpi", function()
  local tmp
  setup(function() tmp = H.tmpdir() end)
  local CONFIGS = {
    { "mnrl", "projections" }, -- frozen towers: each rank's frozen-feature cache
    { "clip", "block" },        -- logit_scale: the loss parameter in the model
    { "siglip", "block" },      -- the loss's own two parameters
    { "cmnrl", "block" },       -- GradCache on each rank's rows, mini-batches of 1
    -- local_loss (open_clip's local_loss + gather_with_grad): each rank's rows
    -- against every column, the gathered rows' gradients reduce-scattered
    { "clip", "block", "local" },
    { "siglip", "block", "local" },
    { "mnsrl", "projections", "local" }, -- the symmetric terms: columns against rows
    { "triplet", "block", "local" },     -- row-wise: the rows alone, weighted by their share
    { "cmnrl", "block", "local" },       -- GradCache with local_loss
  }
  local b = 2
  for _, n in ipairs(RANKS) do
    for _, cfg in ipairs(CONFIGS) do
      local lname, set, loc = cfg[1], cfg[2], cfg[3]
      local label = ("%s/%s%s: %d ranks x batch %d == 1 process x batch %d"):format(lname, set,
        loc and " local_loss" or "", n, b, n * b)
      it(label, function()
          local reason = skip_reason()
          if reason then pending(reason) end
          local ref = ("%s/%s-%s-ref%d"):format(tmp, lname, set, n * b)
          local ok, out = sh(("cd %s && %s lua5.4 spec/dist/run.lua %s %s %d %s"):format(q(ROOT), ENV, lname, set, n * b, q(ref)))
          assert(ok, out)
          local pre = ("%s/%s-%s-n%d%s"):format(tmp, lname, set, n, loc and "-local" or "")
          ok, out = sh(("cd %s && timeout 300 %s %s lua5.4 spec/dist/run.lua %s %s %d %s distributed %s")
            :format(q(ROOT), mpirun(n), ENV, lname, set, b, q(pre), loc or ""))
          assert(ok, out)
          local rw, rj = read_run(ref, 0)
          local w0 = read_run(pre, 0)
          local worst_t, where = 0, nil
          local worst_l = 0
          for r = 0, n - 1 do
            local w, js = read_run(pre, r)
            assert.equal(n, js.world)
            assert.equal(loc == "local", js.local_loss)
            assert.equal(3, #js.loss)
            for s = 1, 3 do
              worst_l = math.max(worst_l, math.abs(js.loss[s] - rj.loss[s]) / math.abs(rj.loss[s]))
            end
            local d, k = rel_diff(w, rw)
            if d >= worst_t then worst_t, where = d, k end
            -- every rank holds the very same weights and gradients
            for k2, t in pairs(w0) do assert.equal(t:bytes(), w[k2]:bytes(), ("rank %d %s"):format(r, k2)) end
          end
          print(("\n  dist %-28s max rel: loss %.1e, weights/grads %.1e (%s)"):format(
            ("%s/%s%s N=%d"):format(lname, set, loc and "/local" or "", n), worst_l, worst_t, where))
          assert.is_true(worst_l <= TOL, ("loss rel %.3g"):format(worst_l))
          assert.is_true(worst_t <= TOL, ("%s rel %.3g"):format(where, worst_t))
      end)
    end
  end
  teardown(function() if tmp then os.execute("rm -rf " .. q(tmp)) end end)
end)

-- Faults: spec/dist/fault.lua under mpirun with 2 ranks and CLIP_DIST_TIMEOUT=5;
-- CLIP_DIST_FAULT injects the fault (see the script). Every run must end by
-- itself well before the 120 s the shell gives it.
describe("faults under mpirun #mpi", function()
  local tmp, straight
  setup(function() tmp = H.tmpdir() end)
  teardown(function() if tmp then os.execute("rm -rf " .. q(tmp)) end end)
  local clock = require("clip.progress").clock
  local LIMIT = 60

  -- run the worker; returns ok, output, seconds
  local function fault_run(fault, out, resume)
    local t0 = clock()
    local ok, text = sh(("cd %s && %s CLIP_DIST_TIMEOUT=5 CLIP_DIST_FAULT=%s timeout 120 %s lua5.4 spec/dist/fault.lua %s %s")
      :format(q(ROOT), ENV, q(fault or ""), mpirun(2), q(out), resume and "resume" or ""))
    return ok, text, clock() - t0
  end

  local function weights(prefix, rank) return clip.load_safetensors(("%s.rank%d.safetensors"):format(prefix, rank)) end

  -- the uninterrupted run (6 steps), once
  local function straight_run()
    if not straight then
      local ok, out = fault_run(nil, tmp .. "/straight")
      assert(ok, out)
      straight = weights(tmp .. "/straight", 0)
    end
    return straight
  end

  local function assert_same_weights(w, label)
    local ref, n = straight_run(), 0
    for k, t in pairs(ref) do
      assert(w[k], label .. ": missing " .. k)
      assert.equal(t:bytes(), w[k]:bytes(), label .. ": " .. k .. " differs from the uninterrupted run")
      n = n + 1
    end
    assert.is_true(n > 0)
  end

  local function train_losses(run_dir)
    local out = {}
    for line in io.lines(run_dir .. "/metrics.jsonl") do
      local r = clip.json.decode(line)
      if r.type == "train" then out[#out + 1] = { r.step, r.loss } end
    end
    return out
  end

  it("a rank that raises mid-training ends the job at once (clip.dist.run: its error, then MPI_Abort)", function()
    local reason = skip_reason()
    if reason then pending(reason) end
    local ok, out, secs = fault_run("raise:1:3", tmp .. "/raise")
    assert.is_not_true(ok, out)
    assert.matches("clip.dist rank 1/2: training step 3: injected fault on rank 1 at step 3", out, 1, true)
    -- (OpenMPI's "MPI_ABORT was invoked" notice is not always printed: not checked)
    assert.is_true(secs < LIMIT, ("took %.1f s"):format(secs))
    print(("\n  raise: ended in %.1f s"):format(secs))
  end)

  it("a rank that raises in a script without clip.dist.run: lua5.4 exits 1 and mpirun ends the others", function()
    local reason = skip_reason()
    if reason then pending(reason) end
    local ok, out, secs = fault_run("plain:1:3", tmp .. "/plain")
    assert.is_not_true(ok, out)
    assert.matches("injected fault on rank 1 at step 3", out, 1, true)
    assert.matches("returned\na non-zero exit code", out, 1, true)
    assert.is_true(secs < LIMIT, ("took %.1f s"):format(secs))
    print(("\n  plain: ended in %.1f s"):format(secs))
  end)

  it("a rank that hangs: the other times out after 5 s naming the collective, its rank and the time", function()
    local reason = skip_reason()
    if reason then pending(reason) end
    local ok, out, secs = fault_run("stall:1:3", tmp .. "/stall")
    assert.is_not_true(ok, out)
    assert.matches("clip.dist rank 0/2: training step 3: clip.dist.all_gather: rank 0 of 2 timed out after 5.%d s "
      .. "%(timeout 5 s%) waiting for the other ranks", out)
    assert.is_true(secs >= 5 and secs < LIMIT, ("took %.1f s"):format(secs))
    print(("\n  stall: ended in %.1f s"):format(secs))
  end)

  for _, case in ipairs({
    { "model", "the model's parameters %(names and shapes%): rank 0 has 78 tensors %(%d+ values%), rank 1 has 110 tensors" },
    { "weights", "the frozen weights: rank 0 has checksum %x+, rank 1 has checksum %x+" },
    { "options", "the training options: lr is 0.05 on rank 0, 0.07 on rank 1" },
    { "data", "the training set's size: rank 0 has 16 rows, rank 1 has 15 rows" },
    { "nodata", "^loading the training set failed on rank 1 of 2: .*missing%-on%-this%-rank%.csv: no such file" },
  }) do
    it(("a rank with another %s: the same clear error on every rank, no checkpoint"):format(case[1]), function()
      local reason = skip_reason()
      if reason then pending(reason) end
      local pre = tmp .. "/" .. case[1]
      local ok, out, secs = fault_run(case[1] .. ":1", pre)
      assert.is_not_true(ok, out)
      local errs = {}
      for r = 0, 1 do
        local path = ("%s.rank%d.err"):format(pre, r)
        assert.is_true(clip.core.is_file(path), "no error written by rank " .. r .. ":\n" .. out)
        errs[r + 1] = H.read(path)
      end
      assert.equal(errs[1], errs[2])
      if case[1] ~= "nodata" then
        assert.matches("^clip%.Trainer: distributed: the ranks disagree on " .. case[2], errs[1])
      else
        assert.matches(case[2], errs[1])
      end
      assert.is_false(clip.core.is_dir(pre .. "/run/checkpoints"))
      assert.is_true(secs < LIMIT, ("took %.1f s"):format(secs))
      print(("\n  %-8s %s"):format(case[1], errs[1]))
    end)
  end

  it("a rank killed at step 5 ends the job; resumed, the run continues from step 4 and ends as the uninterrupted one, bit for bit", function()
    local reason = skip_reason()
    if reason then pending(reason) end
    local pre = tmp .. "/kill"
    local ok, out, secs = fault_run("kill:1:5", pre)
    assert.is_not_true(ok, out)
    assert.matches("exited on signal 9", out, 1, true)
    assert.is_true(secs < LIMIT, ("took %.1f s"):format(secs))
    assert.same({ "step-2", "step-4" }, clip.core.listdir(pre .. "/run/checkpoints"))
    ok, out = fault_run(nil, pre, true)
    assert(ok, out)
    for r = 0, 1 do assert_same_weights(weights(pre, r), "rank " .. r) end
    assert.same(train_losses(tmp .. "/straight/run"), train_losses(pre .. "/run"))
  end)

  it("a crash while rank 0 writes a checkpoint leaves it unfinished (step-4.tmp); resumed from step 2, the run ends bit for bit as the uninterrupted one", function()
    local reason = skip_reason()
    if reason then pending(reason) end
    local pre = tmp .. "/save"
    local ok, out, secs = fault_run("save:0:4", pre)
    assert.is_not_true(ok, out)
    assert.is_true(secs < LIMIT, ("took %.1f s"):format(secs))
    local dir = pre .. "/run/checkpoints"
    local names = clip.core.listdir(dir)
    table.sort(names)
    assert.same({ "step-2", "step-4.tmp" }, names)
    assert.is_false(clip.core.is_file(dir .. "/step-4.tmp/trainer_state.json"))
    ok, out = fault_run(nil, pre, true)
    assert(ok, out)
    names = clip.core.listdir(dir)
    table.sort(names)
    assert.same({ "step-2", "step-4", "step-6" }, names)
    for r = 0, 1 do assert_same_weights(weights(pre, r), "rank " .. r) end
    assert.same(train_losses(tmp .. "/straight/run"), train_losses(pre .. "/run"))
  end)
end)

-- examples/train.lua --distributed: 2 ranks x batch 2 against one process x batch 4
describe("examples/train.lua --distributed under mpirun #mpi", function()
  local tmp
  setup(function() tmp = H.tmpdir() end)
  teardown(function() if tmp then os.execute("rm -rf " .. q(tmp)) end end)
  local ARGS = "--model spec/fixtures/models/tiny --data examples/data/pairs.csv --epochs 1 --threads 1"

  local function losses(dir)
    local out = {}
    for line in io.lines(dir .. "/metrics.jsonl") do
      local r = clip.json.decode(line)
      if r.type == "train" then out[#out + 1] = r.loss end
    end
    return out
  end

  it("trains as one process with the global batch; rank 0 alone prints and writes", function()
    local reason = skip_reason()
    if reason then pending(reason) end
    local ok, out = sh(("cd %s && %s lua5.4 examples/train.lua %s --batch-size 4 --out %s/single --quiet")
      :format(q(ROOT), ENV, ARGS, q(tmp)))
    assert(ok, out)
    local dout
    ok, dout = sh(("cd %s && timeout 300 %s %s lua5.4 examples/train.lua %s --distributed --batch-size 2 --out %s/dist")
      :format(q(ROOT), mpirun(2), ENV, ARGS, q(tmp)))
    assert(ok, dout)
    assert.matches("batch 2 per rank x 2 ranks", dout, 1, true)
    local _, tables = dout:gsub("split   rows", "")
    assert.equal(1, tables)
    assert.is_true(clip.core.is_file(tmp .. "/dist/model/model.safetensors"))
    local a, b = losses(tmp .. "/single"), losses(tmp .. "/dist")
    assert.equal(3, #b)
    assert.equal(#a, #b)
    for i = 1, #a do assert.is_true(math.abs(a[i] - b[i]) <= 1e-5 * math.abs(a[i]), ("step %d: %.9g vs %.9g"):format(i, a[i], b[i])) end
  end)

  it("a missing data file: an error naming it on the ranks, the job ends", function()
    local reason = skip_reason()
    if reason then pending(reason) end
    local ok, out = sh(("cd %s && timeout 120 %s %s lua5.4 examples/train.lua --model spec/fixtures/models/tiny "
      .. "--data examples/data/missing.csv --distributed --out %s/missing --quiet"):format(q(ROOT), mpirun(2), ENV, q(tmp)))
    assert.is_not_true(ok, out)
    assert.matches("train.lua: rank %d/2: error: loading examples/data/missing.csv failed on ranks 0, 1 of 2; rank 0: "
      .. "examples/data/missing.csv: no such file", out)
  end)
end)

-- clip.dist's own collectives, checked inside the ranks (spec/dist/api.lua)
describe("clip.dist collectives under mpirun #mpi", function()
  local tmp
  setup(function() tmp = H.tmpdir() end)
  teardown(function() if tmp then os.execute("rm -rf " .. q(tmp)) end end)
  local clock = require("clip.progress").clock

  local function checks_of(pre, r)
    local js = clip.json.decode(H.read(("%s.rank%d.json"):format(pre, r)))
    return js.checks
  end

  for _, n in ipairs(RANKS) do
    it(("reduce_scatter (uneven counts), the string collectives, checked and checksum on %d ranks"):format(n), function()
      local reason = skip_reason()
      if reason then pending(reason) end
      local pre = ("%s/api%d"):format(tmp, n)
      local ok, out = sh(("cd %s && timeout 120 %s %s lua5.4 spec/dist/api.lua %s"):format(q(ROOT), mpirun(n), ENV, q(pre)))
      assert(ok, out)
      for r = 0, n - 1 do
        local c = checks_of(pre, r)
        for _, name in ipairs({ "timeout", "all_gather_string", "broadcast_string", "reduce_scatter", "checked",
          "checksum", "not broken" }) do
          assert.equal(true, c[name], ("rank %d %s"):format(r, name))
        end
      end
    end)
  end

  it("a timed-out barrier: the error, later calls refused, finalize skipped; the job ends by abort before the stalled rank wakes", function()
    local reason = skip_reason()
    if reason then pending(reason) end
    local pre = tmp .. "/stall"
    local t0 = clock()
    local ok, out = sh(("cd %s && timeout 120 %s %s lua5.4 spec/dist/api.lua %s stall"):format(q(ROOT), mpirun(2), ENV, q(pre)))
    local secs = clock() - t0
    assert.is_not_true(ok, out)
    local c = checks_of(pre, 0)
    for _, name in ipairs({ "timeout", "refused", "finalize skipped" }) do assert.equal(true, c[name], name) end
    assert.is_true(secs >= 2 and secs < 25, ("took %.1f s"):format(secs))
  end)
end)

-- Sharded embedding (clip.embed.run{distributed = true}, `clip embed --distributed`):
-- spec/dist/embed.lua embeds a folder of 18 fixture images and a corrupt one (19
-- rows, chunk_size 3: 7 shards) under mpirun; the folder must equal one process's,
-- file for file and byte for byte (one thread per process everywhere: other thread
-- counts change the last bits of the rows), the manifest apart from its
-- `distributed` record.
local GOOD_IMAGES = { "natural.jpg", "palette.png", "gray.png", "rgb.png", "rgba.png", "portrait.jpg", "odd.jpg",
  "small_20x15.png", "tiny_3x5.png", "wide_300x7.png", "thin_7x300.png", "la.png", "cmyk.jpg", "exact32.png",
  "bmp_24.bmp", "gif_small.gif", "webp_lossy.webp", "tiff_rgb.tif" }

local function make_photos(root)
  assert(os.execute(("mkdir -p %s %s"):format(q(root .. "/a"), q(root .. "/b"))))
  for i, name in ipairs(GOOD_IMAGES) do
    assert(os.execute(("cp %s %s"):format(q(H.fixtures .. "images/" .. name), q(root .. (i % 2 == 0 and "/a/" or "/b/")
      .. name))))
  end
  assert(os.execute(("cp %s %s"):format(q(H.fixtures .. "images/truncated.png"), q(root .. "/a/broken.png"))))
  return root
end

local function shard_files(dir)
  local out = {}
  for _, nm in ipairs(clip.core.listdir(dir) or {}) do
    if nm:match("^shard%-") then out[#out + 1] = nm end
  end
  table.sort(out)
  return out
end

-- dir holds what the single-process run wrote in ref: the same shard files, byte
-- for byte, the same manifest but for `distributed`, no rank records left
local function assert_same_folder(dir, ref, one_process)
  local names = shard_files(ref)
  assert.equal(7, #names)
  assert.same(names, shard_files(dir))
  for _, nm in ipairs(names) do
    assert.is_true(H.read(ref .. "/" .. nm) == H.read(dir .. "/" .. nm), nm .. " differs from the single-process file")
  end
  local a = clip.json.decode(H.read(dir .. "/manifest.json"))
  local b = clip.json.decode(H.read(ref .. "/manifest.json"))
  if one_process then assert.is_nil(a.distributed) else assert.is_table(a.distributed) end
  a.distributed = nil
  assert.equal(clip.embed.canonical_json(b), clip.embed.canonical_json(a))
  for _, nm in ipairs(clip.core.listdir(dir)) do assert.is_nil(nm:match("^manifest%.rank"), nm) end
  local e = clip.embed.open(dir)
  assert.is_true(e.complete)
  assert.same({ 19, 18, 1 }, { e.rows, e.embedded, #e.skipped })
  local t, inputs = e:load()
  local rt, rinputs = clip.embed.open(ref):load()
  assert.same(rinputs, inputs)
  assert.equal(rt:bytes(), t:bytes())
end

local function inode(path)
  local p = io.popen("stat -c %i " .. q(path))
  local s = p:read("a")
  p:close()
  return s
end

-- the shards an interrupted run finished: manifest.json's and the ranks' records
local function finished_shards(dir)
  local rows, files = {}, {}
  local lists = { clip.json.decode(H.read(dir .. "/manifest.json")).shards }
  for _, nm in ipairs(clip.core.listdir(dir)) do
    if nm:match("^manifest%.rank%-%d+%.json$") then lists[#lists + 1] = clip.json.decode(H.read(dir .. "/" .. nm)).shards end
  end
  for _, list in ipairs(lists) do
    for _, e in ipairs(list) do
      if not files[e.file] then
        files[e.file] = inode(dir .. "/" .. e.file)
        rows[#rows + 1] = e.rows
      end
    end
  end
  local n, total = 0, 0
  for _, r in ipairs(rows) do n = n + 1; total = total + r end
  return files, n, total
end

describe("sharded embedding under mpirun #mpi", function()
  local tmp, photos, ref
  setup(function() tmp = H.tmpdir() end)
  teardown(function() if tmp then os.execute("rm -rf " .. q(tmp)) end end)

  local function worker(n, out, fault, chunk)
    local cmd
    if n then
      cmd = ("cd %s && %s CLIP_DIST_TIMEOUT=20 CLIP_EMBED_FAULT=%s CLIP_EMBED_CHUNK=%d timeout 120 %s lua5.4 "
        .. "spec/dist/embed.lua %s %s distributed"):format(q(ROOT), ENV, q(fault or ""), chunk or 3, mpirun(n),
        q(photos), q(out))
    else
      cmd = ("cd %s && %s timeout 120 lua5.4 spec/dist/embed.lua %s %s"):format(q(ROOT), ENV, q(photos), q(out))
    end
    return sh(cmd)
  end
  local function results(out, n)
    local list = {}
    for r = 0, n - 1 do
      local path = ("%s.rank%d.json"):format(out, r)
      assert.is_true(clip.core.is_file(path), "rank " .. r .. " wrote no result")
      list[r + 1] = clip.json.decode(H.read(path))
    end
    return list
  end
  -- the single-process reference, once
  local function reference()
    if not ref then
      photos = make_photos(tmp .. "/photos")
      local ok, out = worker(nil, tmp .. "/single")
      assert(ok, out)
      ref = tmp .. "/single"
    end
    return ref
  end

  for _, n in ipairs(RANKS) do
    it(("%d ranks write the shard files and manifest of one process, byte for byte (a corrupt file skipped)"):format(n),
      function()
        local reason = skip_reason()
        if reason then pending(reason) end
        reference()
        local out = ("%s/n%d"):format(tmp, n)
        local ok, text = worker(n, out)
        assert(ok, text)
        assert_same_folder(out, ref)
        local here, decoded = 0, 0
        for r, res in ipairs(results(out, n)) do
          assert.is_true(res.ok, res.error)
          assert.same({ 19, 18, 1, 7, 0, 7, n }, { res.rows, res.embedded, res.skipped, res.shards,
            res.resumed_shards, res.computed_shards, res.world }, "rank " .. (r - 1))
          here, decoded = here + res.computed_here, decoded + res.decoded
        end
        assert.same({ 7, 19 }, { here, decoded }) -- every chunk once, every row decoded once
      end)
  end

  it("a rank killed after its first shard ends the job; rerun with 3 ranks (and in one process) it completes "
    .. "without recomputing the finished shards", function()
    local reason = skip_reason()
    if reason then pending(reason) end
    reference()
    local out = tmp .. "/kill"
    local ok, text = worker(2, out, "kill:1")
    assert.is_not_true(ok, text)
    assert.matches("exited on signal 9", text, 1, true)
    local m = clip.json.decode(H.read(out .. "/manifest.json"))
    assert.is_false(m.complete)
    local files, nfin, rows_fin = finished_shards(out)
    assert.is_true(nfin >= 1 and nfin < 7, "finished " .. nfin)
    assert.is_true(clip.core.is_file(out .. "/manifest.rank-1.json"))
    -- a copy resumed by one process: the contiguous finished shards kept, the rest computed
    assert(os.execute(("cp -a %s %s"):format(q(out), q(tmp .. "/kill-single"))))
    local oks, texts = sh(("cd %s && %s timeout 120 lua5.4 spec/dist/embed.lua %s %s"):format(q(ROOT), ENV, q(photos),
      q(tmp .. "/kill-single")))
    assert(oks, texts)
    assert_same_folder(tmp .. "/kill-single", ref, true)
    -- rerun with 3 ranks
    ok, text = worker(3, out)
    assert(ok, text)
    assert_same_folder(out, ref)
    local decoded = 0
    for _, res in ipairs(results(out, 3)) do
      assert.is_true(res.ok, res.error)
      assert.same({ nfin, 7 - nfin }, { res.resumed_shards, res.computed_shards })
      decoded = decoded + res.decoded
    end
    assert.equal(19 - rows_fin, decoded) -- only the rows of the missing shards
    for f, ino in pairs(files) do assert.equal(ino, inode(out .. "/" .. f), f .. " was written again") end
    print(("\n  kill: %d of 7 shards finished before the kill, %d rows decoded on resume"):format(nfin, decoded))
  end)

  it("a rank that raises: the same error on every rank after the others finish; rerun with 2 ranks completes", function()
    local reason = skip_reason()
    if reason then pending(reason) end
    reference()
    local out = tmp .. "/raise"
    local ok, text = worker(3, out, "raise:1")
    assert.is_not_true(ok, text)
    local errs = {}
    for r, res in ipairs(results(out, 3)) do
      assert.is_false(res.ok)
      errs[r] = res.error
    end
    assert.equal("embed.run: distributed: embedding failed on rank 1 of 3: injected fault on rank 1 after "
      .. "shard-00001.safetensors", errs[1])
    assert.same({ errs[1], errs[1] }, { errs[2], errs[3] })
    local _, nfin, rows_fin = finished_shards(out)
    assert.equal(6, nfin) -- rank 1's second chunk (shard-00004) is missing
    ok, text = worker(2, out)
    assert(ok, text)
    assert_same_folder(out, ref)
    local decoded = 0
    for _, res in ipairs(results(out, 2)) do decoded = decoded + res.decoded end
    assert.equal(19 - rows_fin, decoded)
    -- the finished folder run again with another chunk_size (on every rank): refused on
    -- every rank, the folder untouched
    local before = H.read(out .. "/manifest.json")
    ok, text = worker(2, out, nil, 4)
    assert.is_not_true(ok, text)
    local res = results(out, 2)
    assert.equal(res[1].error, res[2].error)
    assert.equal(("embed.run: distributed: preparing the run failed on rank 0 of 2: %s: this folder was written "
      .. "with another chunk_size: 3; this run has 4. Rerun with overwrite = true (clip embed --overwrite) to start "
      .. "over, or write to another folder"):format(out), res[1].error)
    assert.equal(before, H.read(out .. "/manifest.json"))
    assert_same_folder(out, ref)
  end)

  for _, case in ipairs({
    { "options", "the ranks disagree on the options: chunk_size is 3 on rank 0, 4 on rank 1", "another chunk_size" },
    { "model", "the ranks disagree on the model: rank 0 has fingerprint %x+ %(.-tiny%), rank 1 has %x+ "
      .. "%(.-tiny%-gelu%-fp16%)", "another model" },
    { "nodata", "preparing the run failed on rank 1 of 2: .-photos%-missing%-on%-this%-rank: no such file or directory",
      "a folder missing" },
    { "source", "the ranks disagree on the source: rank 0 has {.-\"type\":\"folder\".-}, rank 1 has {.-"
      .. "\"op\":\"take\".-}", "the source read through another stream operation" },
    { "rows", "the ranks disagree on the source's size: rank 0 has 19 rows, rank 1 has 18 rows", "a row fewer" },
    { "inputs", "the ranks disagree on the source's rows: rank 0 has checksum %x+, rank 1 has %x+",
      "another path in the first row" },
  }) do
    it(("a rank with %s: the same error on every rank, nothing written"):format(case[3]), function()
      local reason = skip_reason()
      if reason then pending(reason) end
      reference()
      local out = tmp .. "/bad-" .. case[1]
      local ok, text = worker(2, out, case[1] .. ":1")
      assert.is_not_true(ok, text)
      local res = results(out, 2)
      assert.equal(res[1].error, res[2].error)
      assert.matches("^embed%.run: distributed: " .. case[2], res[1].error)
      assert.is_false(clip.core.is_dir(out), "the output folder was created")
      print(("\n  %-8s %s"):format(case[1], res[1].error))
    end)
  end

  it("`clip embed --distributed` under mpirun writes what `clip embed --out-dir` writes; rank 0 alone prints", function()
    local reason = skip_reason()
    if reason then pending(reason) end
    reference()
    local args = ("embed spec/fixtures/models/tiny %s -r --chunk-size 3 --batch-size 3 --threads 1"):format(q(photos))
    -- stdout alone
    local function run_out(cmd)
      local p = io.popen(cmd .. " 2>/dev/null")
      local text = p:read("a")
      return p:close(), text
    end
    local ok, out = run_out(("cd %s && %s timeout 120 lua5.4 bin/clip %s --out-dir %s -q"):format(q(ROOT), ENV,
      args, q(tmp .. "/cli1")))
    assert(ok, out)
    local dout
    ok, dout = run_out(("cd %s && %s timeout 120 %s lua5.4 bin/clip %s --out-dir %s --distributed")
      :format(q(ROOT), ENV, mpirun(2), args, q(tmp .. "/cli2")))
    assert(ok, dout)
    assert.equal(out:gsub("cli1", "cli2"), dout)
    assert.matches("^wrote 18 image embeddings %(dim 24%) in 7 shards to .-cli2; skipped 1 unreadable input", dout)
    assert_same_folder(tmp .. "/cli2", tmp .. "/cli1") -- (the worker's files name the model ./spec/...)
    -- an input missing: rank 0 prints the error once, every rank exits 1
    local bad
    ok, bad = sh(("cd %s && %s timeout 120 %s lua5.4 bin/clip embed spec/fixtures/models/tiny %s/nowhere --out-dir %s "
      .. "--distributed"):format(q(ROOT), ENV, mpirun(2), q(tmp), q(tmp .. "/cli3")))
    assert.is_not_true(ok, bad)
    local _, count = bad:gsub("clip: embed %-%-distributed: loading the model and the inputs failed on ranks 0, 1 of 2; "
      .. "rank 0: [^\n]*/nowhere: No such file or directory", "")
    assert.equal(1, count, bad)
    assert.is_false(clip.core.is_dir(tmp .. "/cli3"))
  end)
end)

-- Sharded embedding, what every build shows: the build option named, the CLI's
-- usage, and one process resuming a folder that a distributed run left (its
-- ranks' records, shards finished out of order)
describe("sharded embedding in this build", function()
  local tmp
  before_each(function() tmp = H.tmpdir() end)
  after_each(function() H.rmtree(tmp) end)

  local cli = require("spec.support.shell").clip

  it("refuses embed.run{distributed = true} without MPI, naming the build option, and bad distributed options",
    function()
      local photos = make_photos(tmp .. "/photos")
      local m = clip.load(H.fixtures .. "models/tiny", { tokenizer = false })
      if not clip.dist.available() then
        local ok, err = pcall(clip.embed.run, m, photos, tmp .. "/out", { distributed = true })
        assert.is_false(ok)
        assert.matches("embed.run: distributed = true: this build has no MPI (rebuild with `make MPI=1`", err, 1, true)
        assert.is_false(clip.core.is_dir(tmp .. "/out"))
      end
      for _, c in ipairs({
        { "yes", "distributed must be true or a table {timeout = s, wait_timeout = s}" },
        { { timeot = 5 }, "distributed: unknown option 'timeot' (timeout, wait_timeout)" },
        { { wait_timeout = -1 }, "distributed.wait_timeout must be seconds >= 0" },
      }) do
        local ok, err = pcall(clip.embed.run, m, photos, tmp .. "/out", { distributed = c[1] })
        assert.is_false(ok)
        assert.matches(c[2], err, 1, true)
      end
      m:close()
      assert.is_false(clip.core.is_dir(tmp .. "/out"))
    end)

  it("`clip embed --distributed`: the build option named without MPI, and its usage rules", function()
    local photos = make_photos(tmp .. "/photos")
    if not clip.dist.available() then
      local code, so, se = cli(("embed spec/fixtures/models/tiny %s --out-dir %s --distributed"):format(q(photos),
        q(tmp .. "/out")))
      assert.equal(1, code, se)
      assert.equal("", so)
      assert.equal("clip: embed --distributed: this build has no MPI (rebuild with `make MPI=1`; "
        .. "docs/distributed.md)\n", se)
      assert.is_false(clip.core.is_dir(tmp .. "/out"))
    end
    for _, c in ipairs({
      { "--distributed", "--distributed goes with --out-dir DIR" },
      { "--out-dir " .. q(tmp .. "/o") .. " --timeout 5", "--timeout goes with --distributed" },
      { "--out-dir " .. q(tmp .. "/o") .. " --distributed --timeout soon", "--timeout expects seconds >= 0" },
    }) do
      local code, so, se = cli(("embed spec/fixtures/models/tiny %s %s"):format(q(photos), c[1]))
      assert.equal(2, code, se)
      assert.equal("", so)
      assert.truthy(se:find(c[2], 1, true), se)
    end
  end)

  it("one process resumes a folder a distributed run left: the ranks' records merged, the shards in order kept", function()
    local photos = make_photos(tmp .. "/photos")
    local m = clip.load(H.fixtures .. "models/tiny", { tokenizer = false })
    local ref = tmp .. "/ref"
    clip.embed.run(m, photos, ref, { chunk_size = 3, batch_size = 3 })
    -- what two ranks killed mid-run leave: manifest.json with shards 0 and 2, rank 1's
    -- record with shards 1 and 4 (and the skipped row of shard 0 in rank 0's), shard 3 missing
    local out = tmp .. "/out"
    assert(os.execute(("cp -a %s %s"):format(q(ref), q(out))))
    local man = clip.json.decode(H.read(ref .. "/manifest.json"))
    local sh_ = man.shards
    os.remove(out .. "/shard-00003.safetensors")
    os.remove(out .. "/shard-00005.safetensors")
    os.remove(out .. "/shard-00006.safetensors")
    local settings = { kind = man.kind, column = man.column, chunk_size = man.chunk_size, normalize = man.normalize,
      file_format = man.file_format, model = man.model, source = man.source }
    local skipped = man.skipped
    man.shards, man.skipped, man.complete = { sh_[1], sh_[3] }, {}, false
    man.rows, man.embedded, man.dim = nil, nil, nil
    man.distributed = { ranks = 2, run = "x" }
    assert(clip.core.write_file(out .. "/manifest.json", clip.json.encode(man)))
    assert(clip.core.write_file(out .. "/manifest.rank-1.json", clip.json.encode({ format = "clip.embed.rank",
      version = 1, rank = 1, world = 2, run = "x", settings = settings, shards = { sh_[2], sh_[5] }, skipped = {} })))
    assert(clip.core.write_file(out .. "/manifest.rank-0.json", clip.json.encode({ format = "clip.embed.rank",
      version = 1, rank = 0, world = 2, run = "x", settings = settings, shards = { sh_[1] }, skipped = skipped })))
    local decoded, lines = 0, {}
    local r = clip.embed.run(m, photos, out, { chunk_size = 3, batch_size = 3, log = function(l) lines[#lines + 1] = l end,
      decode = function(mm, list)
        decoded = decoded + #list
        return clip.embed.decode_batch(mm, list)
      end })
    m:close()
    -- shards 0, 1, 2 follow each other: kept; 4 comes after the missing 3: computed again with it
    assert.same({ 3, 4, 10 }, { r.resumed_shards, r.computed_shards, decoded })
    assert.truthy(lines[1]:find("1 shard(s) of a distributed run come after a missing one", 1, true), lines[1])
    assert.is_false(clip.core.is_file(out .. "/manifest.rank-1.json"))
    assert.is_false(clip.core.is_file(out .. "/manifest.rank-0.json"))
    local a = clip.json.decode(H.read(out .. "/manifest.json"))
    local b = clip.json.decode(H.read(ref .. "/manifest.json"))
    assert.is_nil(a.distributed)
    assert.equal(clip.embed.canonical_json(b), clip.embed.canonical_json(a))
    for _, nm in ipairs(shard_files(ref)) do
      assert.is_true(H.read(ref .. "/" .. nm) == H.read(out .. "/" .. nm), nm)
    end
  end)
end)
