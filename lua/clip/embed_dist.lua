--- clip.embed_dist: clip.embed.run over the ranks of an MPI job, for
-- embed.run(model, source, out_dir, {distributed = true, ...}) and
-- `clip embed --distributed` (docs/distributed.md, "Sharded embedding").
--
-- Every rank makes the same call. The unit of work is the chunk: chunk k holds
-- stream rows (k-1)*chunk_size + 1 .. k*chunk_size and becomes shard-<k-1>, as
-- in a single-process run. The chunks still to do are dealt out round-robin
-- (the j-th to rank (j-1) % size) and each rank writes the shards of its own
-- into the one out_dir, which every rank must see (a shared file system). The
-- shard files are those one process writes, so the folder equals a
-- single-process run's row for row whatever the number of ranks, and a run can
-- be resumed with another number of ranks.
--
--   1. prepare, on every rank: the options, the stream, the model's
--      fingerprint, and a pass over the source counting its rows and hashing
--      their inputs (read, not decoded). Rank 0 also reads what an earlier run
--      left (manifest.json and the ranks' manifest.rank-R.json; read only) and
--      checks its finished shards: the files as recorded, their first and last
--      inputs still those of the source.
--   2. agree: one all-gather. An error on any rank, or ranks that disagree on
--      the options, the model, the source, its row count or its inputs, is
--      raised on every rank, the same message; nothing has been written.
--   3. start: rank 0 creates the folder and writes manifest.json listing the
--      finished shards (complete = false, a run id); every rank then reads it
--      back (a rank that cannot see it is not on the shared file system).
--   4. embed: each rank reads the stream, skipping the rows of chunks that are
--      not its own without decoding them, and embeds its chunks; after each
--      shard it rewrites its record manifest.rank-R.json (temporary file +
--      rename) with the shards it finished and the rows it skipped, so the
--      work of a rank killed later is kept. No collective runs meanwhile.
--   5. finish: the ranks exchange their shards, or their error (raised on
--      every rank: the finished shards stay for a resume); rank 0 checks it
--      sees every shard file, writes manifest.json, complete, and removes the
--      records.
local core = require "clip.core"
local progress = require "clip.progress"

local M = {}

--- The default limit, in seconds, of the waits that follow long work on each
-- rank (the counting pass, the embedding pass): the ranks may drift apart by
-- up to this much. distributed = {wait_timeout = s} changes it (0: none).
M.WAIT_TIMEOUT = 86400

--- The error of the last failed distributed run raised the same on every rank
-- (true), or on this rank alone (false): `clip embed --distributed` ends the
-- job gracefully in the first case and aborts it in the second.
M.last_error_everywhere = false

local PREFIX = "embed.run: distributed: "

local function fail(msg)
  M.last_error_everywhere = true
  error(PREFIX .. msg, 0)
end

local function dist_options(d)
  if d == true then return {} end
  if type(d) ~= "table" then
    error("embed.run: distributed must be true or a table {timeout = s, wait_timeout = s}", 4)
  end
  for k in pairs(d) do
    if k ~= "timeout" and k ~= "wait_timeout" then
      error(("embed.run: distributed: unknown option '%s' (timeout, wait_timeout)"):format(tostring(k)), 4)
    end
  end
  local w = d.wait_timeout
  if w ~= nil and w ~= false and (type(w) ~= "number" or w < 0 or w ~= w) then
    error(("embed.run: distributed.wait_timeout must be seconds >= 0 (0 or false: no limit), got %s"):format(
      tostring(w)), 4)
  end
  return d
end

-- one all-gather of every rank's outcome of a phase: (true, value) or (false,
-- error). An error on any rank is raised on every rank; else the values, in
-- rank order.
local function exchange(dist, phase, ok, value)
  local msg = core.json_encode(ok and { v = value } or { err = tostring(value) })
  local all = dist.all_gather_string(msg)
  local failed, first, size = {}, nil, #all
  for i = 1, size do
    local s = all[i]
    local okj, p = pcall(core.json_decode, s, "rank " .. (i - 1))
    if not okj or type(p) ~= "table" then fail(("%s: rank %d sent a message that is not JSON"):format(phase, i - 1)) end
    all[i] = p.v
    if p.err then
      failed[#failed + 1] = i - 1
      first = first or { i - 1, (p.err:gsub("^embed%.run: ", "")) }
    end
  end
  if first then
    if #failed == 1 then fail(("%s failed on rank %d of %d: %s"):format(phase, first[1], size, first[2])) end
    fail(("%s failed on ranks %s of %d; rank %d: %s"):format(phase, table.concat(failed, ", "), size, first[1],
      first[2]))
  end
  return all
end

-- the chunk (1-based) a shard entry is for, from its file name
local function chunk_of(e)
  local n = type(e) == "table" and type(e.file) == "string" and e.file:match("^shard%-(%d+)%.")
  return n and tonumber(n) + 1 or nil
end

local function by_first(x, y) return x.first < y.first end
local function by_position(x, y) return x.position < y.position end

-- the skipped rows of the given shards (files), one per position, in order
local function skipped_of(list, files)
  local out, seen = {}, {}
  for _, x in ipairs(list) do
    if type(x) == "table" and files[x.shard] and x.position and not seen[x.position] then
      seen[x.position] = true
      out[#out + 1] = x
    end
  end
  table.sort(out, by_position)
  return out
end

--- run(model, source, out_dir, opts): embed.run with opts.distributed (see
-- clip.embed.run for the options and the summary; the summary adds rank,
-- world and computed_here, the shards this rank wrote).
function M.run(model, source, out_dir, opts)
  local E = require "clip.embed"
  local P = E._impl
  local dist = require "clip.dist"
  M.last_error_everywhere = false
  local dopt = dist_options(opts.distributed)
  if not dist.available() then
    error("embed.run: distributed = true: this build has no MPI (rebuild with `make MPI=1`; docs/distributed.md)", 3)
  end
  local rank, size = dist.init({ timeout = dopt.timeout })
  local wait = dopt.wait_timeout
  if wait == nil then
    local t = dist.get_timeout()
    wait = t == 0 and 0 or math.max(t, M.WAIT_TIMEOUT)
  end
  if wait == false then wait = 0 end
  local mpath = P.join(out_dir ~= nil and tostring(out_dir) or "", P.MANIFEST)

  -- 1. prepare -----------------------------------------------------------------
  local st
  local okp, fp = xpcall(function()
    local c = P.setup(model, source, out_dir, opts, 0)
    if c.s.once then
      error(("%s: stdin is read by one process only: write it to a file for a distributed run"):format(c.s.name), 0)
    end
    local chunk = c.chunk
    st = { c = c, byk = {}, listed = {}, skipped = {}, changed = 0, resume = false, rank_files = {} }
    local want = {}
    if rank == 0 then
      local man = P.existing_manifest(out_dir, c.settings, opts.overwrite, 0)
      if man then
        st.resume = true
        local rs, rk, rf = P.rank_records(out_dir, c.settings)
        st.rank_files = rf
        local cands = {}
        for _, e in ipairs(type(man.shards) == "table" and man.shards or {}) do cands[#cands + 1] = e end
        for _, e in ipairs(rs) do cands[#cands + 1] = e end
        -- the first entry of a chunk whose file is as recorded (the manifest's before the records')
        for _, e in ipairs(cands) do
          local k = chunk_of(e)
          if k then
            st.listed[k] = true
            if not st.byk[k] and e.first == (k - 1) * chunk + 1 and type(e.last) == "number"
              and e.rows == e.last - e.first + 1 and P.shard_ok(out_dir, e) then
              st.byk[k] = e
              want[e.first], want[e.last] = e, e
            end
          end
        end
        for _, x in ipairs(type(man.skipped) == "table" and man.skipped or {}) do st.skipped[#st.skipped + 1] = x end
        for _, x in ipairs(rk) do st.skipped[#st.skipped + 1] = x end
      end
    end
    -- the counting pass: rows and a hash of their inputs (rank 0: the finished
    -- shards' first and last inputs checked against the source)
    local n, h = 0, 0xcbf29ce484222325
    for row in c.s:rows() do
      n = n + 1
      local key = P.input_key(row[c.column])
      h = P.fnv(h, key)
      h = P.fnv(h, "\0")
      local e = want[n]
      if e then
        local expect = (n == e.first and e.first_input) or (n == e.last and e.last_input) or nil
        if expect ~= nil and key ~= expect then
          error(("%s: the source changed since %s was written: row %d is %s, the manifest has %s (rerun with "
            .. "overwrite = true to start over)"):format(out_dir, e.file, n, P.short(key), P.short(expect)), 0)
        end
      end
    end
    st.rows, st.digest = n, ("%016x"):format(h)
    -- a finished shard whose chunk no longer ends where it did (rows added or
    -- removed at the end of a folder) is computed again
    for k, e in pairs(st.byk) do
      if e.last ~= math.min(k * chunk, n) then st.byk[k] = nil end
    end
    for k in pairs(st.listed) do if not st.byk[k] then st.changed = st.changed + 1 end end
    local s = c.settings
    local function str(v) return type(v) == "string" and v or P.canon(v) end
    return {
      options = { kind = c.kind, column = str(c.column), chunk_size = tostring(chunk), batch_size = tostring(c.bs),
        normalize = tostring(s.normalize), format = c.fmt, on_error = c.on_error,
        overwrite = tostring(opts.overwrite == true) },
      model = s.model.fingerprint, model_dir = tostring(model.dir),
      source = P.canon(s.source), rows = tostring(n), digest = st.digest,
    }
  end, function(e) return e end)

  -- 2. agree ------------------------------------------------------------------
  local all = dist.with_timeout(wait, exchange, dist, "preparing the run", okp, fp)
  local ref = all[1]
  for r = 2, size do
    local o = all[r]
    for _, k in ipairs({ "kind", "column", "chunk_size", "batch_size", "normalize", "format", "on_error",
      "overwrite" }) do
      if ref.options[k] ~= o.options[k] then
        fail(("the ranks disagree on the options: %s is %s on rank 0, %s on rank %d (every rank must make the "
          .. "same call)"):format(k, ref.options[k], o.options[k], r - 1))
      end
    end
    if ref.model ~= o.model then
      fail(("the ranks disagree on the model: rank 0 has fingerprint %s (%s), rank %d has %s (%s) (every rank "
        .. "must load the same model)"):format(ref.model, ref.model_dir, r - 1, o.model, o.model_dir))
    end
    if ref.source ~= o.source then
      fail(("the ranks disagree on the source: rank 0 has %s, rank %d has %s (every rank must read the same "
        .. "source)"):format(P.short(ref.source), r - 1, P.short(o.source)))
    end
    if ref.rows ~= o.rows then
      fail(("the ranks disagree on the source's size: rank 0 has %s rows, rank %d has %s rows (every rank must "
        .. "read the same data)"):format(ref.rows, r - 1, o.rows))
    end
    if ref.digest ~= o.digest then
      fail(("the ranks disagree on the source's rows: rank 0 has checksum %s, rank %d has %s (every rank must "
        .. "read the same inputs, in the same order, at the same paths)"):format(ref.digest, r - 1, o.digest))
    end
  end

  local c = st.c
  local kind, chunk, n = c.kind, c.chunk, st.rows
  local nchunks = (n + chunk - 1) // chunk

  -- 3. start ------------------------------------------------------------------
  local okst, plan = pcall(function()
    if rank ~= 0 then return nil end
    local ok, err = core.mkdir_p(out_dir)
    if not ok then error(err, 0) end
    if not st.resume then P.clear(out_dir, false) end
    P.clear(out_dir, true)
    local done, files = {}, {}
    for _, e in pairs(st.byk) do
      done[#done + 1] = e
      files[e.file] = true
    end
    table.sort(done, by_first)
    local run_id = ("%x-%x-%d"):format(os.time(), math.random(0, 0x7fffffff), size)
    local man = { format = E.FORMAT, version = E.VERSION, shards = done, skipped = skipped_of(st.skipped, files),
      model_dir = model.dir, batch_size = c.bs, complete = false, distributed = { ranks = size, run = run_id } }
    for k, v in pairs(c.settings) do man[k] = v end
    P.write_json(mpath, man)
    for _, f in ipairs(st.rank_files) do os.remove(f) end
    return { run = run_id, done = done, skipped = man.skipped, changed = st.changed }
  end)
  plan = exchange(dist, "starting the output folder", okst, plan)[1]
  exchange(dist, "opening the output folder", pcall(function()
    local text, err = P.read_file(mpath)
    local okj, m = pcall(core.json_decode, text or "", mpath)
    if not text or not okj or type(m) ~= "table" or type(m.distributed) ~= "table" or m.distributed.run ~= plan.run then
      error(("%s: rank %d does not see the manifest rank 0 has just written (%s): the output folder must be on a "
        .. "file system every rank shares"):format(out_dir, rank, text and "another run's, or unreadable"
          or tostring(err)), 0)
    end
  end))

  -- 4. embed ------------------------------------------------------------------
  local done = {}
  for _, e in ipairs(plan.done) do done[chunk_of(e)] = true end
  -- the chunks to do, dealt out round-robin: the j-th to rank (j - 1) % size
  local mine, mine_list, mine_rows, j = {}, {}, 0, 0
  for k = 1, nchunks do
    if not done[k] then
      j = j + 1
      if (j - 1) % size == rank then
        mine[k] = true
        mine_list[#mine_list + 1] = k
        mine_rows = mine_rows + math.min(k * chunk, n) - (k - 1) * chunk
      end
    end
  end
  local unit = kind == "image" and "img" or "text"
  local bar = progress.wrap(rank == 0 and opts.progress or nil, mine_rows,
    ("embed (rank 0 of %d)"):format(size), unit, 0)
  local who = ("rank %d/%d: "):format(rank, size)
  local log = opts.log
  if not log then
    if rank == 0 then
      log = function(line) bar:log(line) end
    else
      log = function(line) io.stderr:write(line, "\n") end
    end
  end
  if rank == 0 and plan.changed > 0 then
    log(("%s%s: %d shard(s) listed by an earlier run are missing or changed; computing them again"):format(who,
      out_dir, plan.changed))
  end
  local o = { batch_size = c.bs, column = c.column, normalize = opts.normalize == true, file_format = c.fmt,
    decode = opts.decode or E.decode_batch, model_dir = model.dir }
  local shown, nskipped = 0, 0
  o.on_batch = function(k, failed_so_far)
    shown = shown + k
    local sk = nskipped + failed_so_far
    bar:update(shown, sk > 0 and ("skipped " .. sk) or nil)
  end
  local my_shards, my_skipped = {}, {}
  local record = P.join(out_dir, ("manifest.rank-%d.json"):format(rank))
  local okr, rerr = xpcall(function()
    if #mine_list == 0 then return end
    local function flush(k, rows)
      local t, kept, failed = P.embed_chunk(model, kind, rows, o)
      if #failed > 0 and c.on_error == "raise" then
        local r = rows[failed[1][1]]
        error(("%s%s"):format(r.line and ("%s: line %d: "):format(c.s.name, r.line) or "", failed[1][2]), 0)
      end
      local inputs, indices = {}, {}
      for q, i in ipairs(kept) do
        inputs[q] = rows[i].input
        indices[q] = rows[i].pos
      end
      local e = P.write_shard(out_dir, k, kind, t, inputs, indices, o)
      e.rows, e.embedded, e.skipped = #rows, #kept, #failed
      e.first, e.last = rows[1].pos, rows[#rows].pos
      e.first_input, e.last_input = P.input_key(rows[1].input), P.input_key(rows[#rows].input)
      for _, f in ipairs(failed) do
        local r = rows[f[1]]
        my_skipped[#my_skipped + 1] = { position = r.pos, input = type(r.input) == "string" and r.input or nil,
          error = f[2], line = r.line, shard = e.file }
        log(("%sskipped %s%s"):format(size > 1 and who or "", r.line and ("%s line %d: "):format(c.s.name, r.line)
          or "", f[2]))
      end
      my_shards[#my_shards + 1] = e
      nskipped = nskipped + #failed
      P.write_json(record, { format = E.FORMAT .. ".rank", version = E.VERSION, rank = rank, world = size,
        run = plan.run, settings = c.settings, shards = my_shards, skipped = my_skipped })
      bar:update(shown, nskipped > 0 and ("skipped " .. nskipped) or nil)
      if opts.on_chunk then
        opts.on_chunk({ shard = k, file = e.file, rows = e.rows, embedded = e.embedded, first = e.first,
          last = e.last, skipped = e.skipped, rank = rank })
      end
    end
    local last = mine_list[#mine_list]
    local rows, pos = {}, 0
    for row in c.s:rows() do
      pos = pos + 1
      local k = (pos - 1) // chunk + 1
      if mine[k] then
        rows[#rows + 1] = { pos = pos, input = row[c.column], line = row._line }
        if pos == math.min(k * chunk, n) then
          flush(k, rows)
          rows = {}
          if k == last then break end
        end
      end
    end
    if pos < math.min(last * chunk, n) then
      error(("%s: the source ended at row %d while counting found %d: it changed during the run"):format(
        c.s.name or "source", pos, n), 0)
    end
  end, function(e) return e end)
  if not okr then bar.transient = true end
  bar:finish()

  -- 5. finish -----------------------------------------------------------------
  local results = dist.with_timeout(wait, exchange, dist, "embedding", okr,
    okr and { shards = my_shards, skipped = my_skipped } or rerr)
  local shards, skipped, computed_here = {}, {}, #my_shards
  for _, e in ipairs(plan.done) do shards[#shards + 1] = e end
  for _, x in ipairs(plan.skipped) do skipped[#skipped + 1] = x end
  for _, r in ipairs(results) do
    for _, e in ipairs(r.shards or {}) do shards[#shards + 1] = e end
    for _, x in ipairs(r.skipped or {}) do skipped[#skipped + 1] = x end
  end
  table.sort(shards, by_first)
  table.sort(skipped, by_position)
  for k = 1, nchunks do
    if chunk_of(shards[k]) ~= k then
      fail(("%s: shard %s is missing after every rank finished (%d shards for %d chunks)"):format(out_dir,
        P.shard_name(k), #shards, nchunks))
    end
  end
  if #shards ~= nchunks then fail(("%s: %d shards for %d chunks"):format(out_dir, #shards, nchunks)) end
  local embedded = 0
  for _, e in ipairs(shards) do embedded = embedded + e.embedded end
  exchange(dist, "writing the manifest", pcall(function()
    if rank ~= 0 then return end
    for _, e in ipairs(shards) do
      if not P.shard_ok(out_dir, e) then
        error(("%s: rank 0 does not see %s as its rank wrote it (%d bytes): the output folder must be on a file "
          .. "system every rank shares"):format(out_dir, e.file, e.bytes or 0), 0)
      end
    end
    local man = { format = E.FORMAT, version = E.VERSION, shards = shards, skipped = skipped, model_dir = model.dir,
      batch_size = c.bs, rows = n, embedded = embedded, complete = true, dim = c.D,
      distributed = { ranks = size, run = plan.run } }
    for k, v in pairs(c.settings) do man[k] = v end
    P.write_json(mpath, man)
    for _, nm in ipairs(core.listdir(out_dir) or {}) do
      if P.rank_file(nm) then os.remove(P.join(out_dir, nm)) end
    end
  end))
  return { out_dir = out_dir, manifest = mpath, kind = kind, dim = c.D, rows = n, embedded = embedded,
    skipped = #skipped, skipped_list = skipped, shards = #shards, resumed_shards = #plan.done,
    computed_shards = nchunks - #plan.done, rank = rank, world = size, computed_here = computed_here }
end

return M
