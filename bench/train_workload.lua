--- bench/train_workload.lua - the fine-tuning workload, end to end, in this module:
-- load ViT-B/32 shapes, 53 training pairs + 11 validation pairs (PNG paths + captions from
-- bench/make_data.lua), both towers frozen, visual_projection and text_projection trainable,
-- CLIPLoss, AdamW (lr 1e-4), batch 16 in file order, 2 epochs, validation loss after each epoch.
-- The loss caches the frozen towers' pooled features per item (clip.loss does this by itself).
-- bench/torch_bench.py runs the same steps in PyTorch.
local clip = require "clip"

local W = {}

function W.run(dir, opts)
  opts = opts or {}
  local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
  local data = opts.data or (here .. "out/data")
  local caps = {}
  for l in io.lines(data .. "/captions.txt") do caps[#caps + 1] = l end
  local imgs = {}
  for i = 1, 64 do imgs[i] = ("%s/img%02d.png"):format(data, i) end
  local model = clip.load(dir)
  for _, p in model:named_parameters() do
    p.requires_grad = p.name:match("projection") ~= nil
  end
  local loss = clip.loss.CLIPLoss(model)
  local opt = clip.optim.AdamW(model, { lr = 1e-4 })
  local last, val
  local ntrain, bs = 53, 16
  for _ = 1, 2 do
    for a = 1, ntrain, bs do
      local b = math.min(ntrain, a + bs - 1)
      opt:zero_grad()
      last = loss:backward({ table.move(imgs, a, b, 1, {}), table.move(caps, a, b, 1, {}) })
      opt:step()
    end
    val = loss:forward({ table.move(imgs, 54, 64, 1, {}), table.move(caps, 54, 64, 1, {}) })
  end
  model:close()
  return { loss = last, val = val }
end

return W
