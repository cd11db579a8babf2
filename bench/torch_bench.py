#!/usr/bin/python3
"""bench/torch_bench.py - the same work as bench/ours.lua, in PyTorch (Debian's python3-torch).

usage: /usr/bin/python3 bench/torch_bench.py <task> <model dir> [args]; prints one line of JSON.
  image B [reps] | text B T [reps] | load | rss | train reencode|cache | step full|last2 [reps]
  | export
The model is spec/fixtures/make_models.py's CLIPModel (a faithful re-implementation of
transformers' modeling_clip.py) in float32, with the checkpoint's safetensors weights.
`export` writes <dir>/vision.onnx and <dir>/text.onnx (torch.onnx, opset 14, dynamic batch and
sequence) for bench/ort_bench.js, and <dir>/torch_state.pt for the `load` task.
Threads: torch.set_num_threads(CLIP_THREADS or the number of cores)."""
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "spec", "fixtures"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import make_models as mm  # noqa: E402


def out(**kw):
    kw["impl"] = "torch"
    print(json.dumps(kw, sort_keys=True))


def load(d):
    return mm.load_model(d, dtype=torch.float32)[0].eval()


def ids_batch(B, T):
    rows = []
    for b in range(1, B + 1):
        row = [49406] + [1000 + ((b * 7919 + t * 104729) % 40000) for t in range(2, T)] + [49407]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def timeit(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    n = len(ts)
    return ts[n // 2] if n % 2 else (ts[n // 2 - 1] + ts[n // 2]) / 2


def vmhwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])


class Vision(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, pixel_values):
        return mm.vision_forward(self.m, pixel_values)["embeds"]


class Text(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids):
        return mm.text_forward(self.m, input_ids)["embeds"]


MEAN = torch.tensor(mm.OPENAI_MEAN).view(3, 1, 1)
STD = torch.tensor(mm.OPENAI_STD).view(3, 1, 1)


def preprocess(path, S=224):
    """CLIPImageProcessor's steps with PIL: RGB, shortest edge -> S (bicubic), center crop,
    rescale 1/255, normalize."""
    from PIL import Image
    import numpy as np
    im = Image.open(path).convert("RGB")
    w, h = im.size
    if w < h:
        nw, nh = S, int(S * h / w)
    else:
        nw, nh = int(S * w / h), S
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - S) // 2, (nh - S) // 2
    im = im.crop((left, top, left + S, top + S))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - MEAN) / STD


def train(d, mode):
    """The workload of bench/train_workload.lua: 53 + 11 pairs, batch 16, 2 epochs, eval per
    epoch, towers frozen, projections trainable, CLIP loss, AdamW lr 1e-4. Token ids come from
    <data>/ids.json (written by our tokenizer; PyTorch has no CLIP tokenizer here), padded to
    the longest in each batch. mode 'reencode': every step encodes its images and texts;
    'cache': each item's pooled features are computed once and reused."""
    data = os.path.join(HERE, "out", "data")
    with open(os.path.join(data, "ids.json")) as f:
        ids = json.load(f)
    imgs = [os.path.join(data, "img%02d.png" % i) for i in range(1, 65)]
    m = load(d)
    for n, p in m.named_parameters():
        p.requires_grad_("projection" in n)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    cache = {}

    def pooled(lo, hi):
        need = [i for i in range(lo, hi) if mode != "cache" or i not in cache]
        if need:
            with torch.no_grad():
                px = torch.stack([preprocess(imgs[i]) for i in need])
                T = max(len(ids[i]) for i in need)
                tid = torch.tensor([ids[i] + [49407] * (T - len(ids[i])) for i in need])
                pv = mm.vision_forward(m, px)["pooled"]
                pt = mm.text_forward(m, tid)["pooled"]
            for j, i in enumerate(need):
                cache[i] = (pv[j], pt[j])
        v = torch.stack([cache[i][0] for i in range(lo, hi)])
        t = torch.stack([cache[i][1] for i in range(lo, hi)])
        if mode != "cache":
            cache.clear()
        return v, t

    def loss_of(lo, hi):
        v, t = pooled(lo, hi)
        ie = F.linear(v, m.visual_projection.weight)
        te = F.linear(t, m.text_projection.weight)
        lpi, lpt = mm.clip_logits(m, ie, te)
        lab = torch.arange(hi - lo)
        return (F.cross_entropy(lpt, lab) + F.cross_entropy(lpi, lab)) / 2

    last = val = None
    for _ in range(2):
        for a in range(0, 53, 16):
            opt.zero_grad()
            loss = loss_of(a, min(53, a + 16))
            loss.backward()
            opt.step()
            last = float(loss)
        with torch.no_grad():
            val = float(loss_of(53, 64))
    return last, val


def step(d, mode, reps):
    """bench/train_step.lua's step: 16 PNG images (bench/make_data.lua, decoded + preprocessed
    every step), 16 positive and 16 negative 15-token captions (bench/captions.lua's ids),
    MultipleNegativesRankingLoss (cosine similarities x 20, cross-entropy over the positives
    and negatives), backward, clip_grad_norm_(1.0), AdamW(lr 1e-5, weight_decay 0), zero_grad.
    mode 'full': every parameter trainable; 'last2': the last 2 blocks of both towers + final
    norms + projections."""
    import re
    data = os.path.join(HERE, "out", "data")
    imgs = [os.path.join(data, "img%02d.png" % i) for i in range(1, 17)]

    def caps(B, seed):
        return torch.tensor([[49406] + [(b * 7919 + t * 104729 + seed) % 49000 + 1 for t in range(2, 15)]
                             + [49407] for b in range(1, B + 1)])
    pos, neg = caps(16, 1), caps(16, 2)
    m = load(d)
    m.train()
    last2 = re.compile(r"encoder\.layers\.1[01]\.|projection|post_layernorm|final_layer_norm")
    for n, p in m.named_parameters():
        p.requires_grad_(mode == "full" or bool(last2.search(n)))
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0)

    def one():
        px = torch.stack([preprocess(p) for p in imgs])
        a = F.normalize(mm.vision_forward(m, px)["embeds"], dim=-1)
        t = F.normalize(mm.text_forward(m, torch.cat([pos, neg]))["embeds"], dim=-1)
        loss = F.cross_entropy(a @ t.T * 20.0, torch.arange(16))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
    return timeit(one, reps), sum(p.numel() for p in params)


def main():
    task, d = sys.argv[1], sys.argv[2]
    a = sys.argv[3:]
    torch.set_num_threads(int(os.environ.get("CLIP_THREADS", os.cpu_count())))
    if task == "image":
        B, reps = int(a[0]) if a else 1, int(a[1]) if len(a) > 1 else 5
        m = load(d)
        S = m.config["vision_config"]["image_size"]
        px = torch.randn(B, 3, S, S, generator=torch.Generator().manual_seed(7))
        with torch.inference_mode():
            t = timeit(lambda: mm.vision_forward(m, px)["embeds"], reps)
        out(task="image", batch=B, seconds=t, rate=B / t, threads=torch.get_num_threads())
    elif task == "text":
        B, T = int(a[0]) if a else 1, int(a[1]) if len(a) > 1 else 77
        reps = int(a[2]) if len(a) > 2 else 5
        m = load(d)
        ids = ids_batch(B, T)
        with torch.inference_mode():
            t = timeit(lambda: mm.text_forward(m, ids)["embeds"], reps)
        out(task="text", batch=B, tokens=T, seconds=t, rate=B / t, threads=torch.get_num_threads())
    elif task == "load":
        t0 = time.perf_counter()
        cfg = json.load(open(os.path.join(d, "config.json")))
        m = mm.CLIPModel(cfg)
        m.load_state_dict(torch.load(os.path.join(d, "torch_state.pt")), strict=False)
        m.eval()
        t1 = time.perf_counter()
        with torch.inference_mode():
            mm.vision_forward(m, torch.zeros(1, 3, 224, 224))
        t2 = time.perf_counter()
        out(task="load", load_ms=(t1 - t0) * 1000, first_image_ms=(t2 - t0) * 1000)
    elif task == "rss":
        m = load(d)
        with torch.inference_mode():
            mm.vision_forward(m, torch.randn(1, 3, 224, 224))
            mm.text_forward(m, ids_batch(1, 15))
        wb = sum(p.numel() * 4 for p in m.parameters())
        h = vmhwm()
        out(task="rss", peak_rss_mib=h / 1024, weights_mib=wb / 2**20, ratio=h * 1024 / wb)
    elif task == "train":
        mode = a[0] if a else "reencode"
        t0 = time.perf_counter()
        last, val = train(d, mode)
        out(task="train", mode=mode, seconds=time.perf_counter() - t0, final_loss=last, val_loss=val)
    elif task == "step":
        mode = a[0] if a else "full"
        reps = int(a[1]) if len(a) > 1 else 3
        t, n = step(d, mode, reps)
        out(task="step", mode=mode, seconds=t, trainable=n, threads=torch.get_num_threads())
    elif task == "export":
        m = load(d)
        with torch.no_grad():
            torch.save({k: v for k, v in m.state_dict().items()}, os.path.join(d, "torch_state.pt"))
            torch.onnx.export(Vision(m), torch.randn(2, 3, 224, 224), os.path.join(d, "vision.onnx"),
                              input_names=["pixel_values"], output_names=["image_embeds"],
                              dynamic_axes={"pixel_values": {0: "B"}, "image_embeds": {0: "B"}},
                              opset_version=14)
            torch.onnx.export(Text(m), ids_batch(2, 77), os.path.join(d, "text.onnx"),
                              input_names=["input_ids"], output_names=["text_embeds"],
                              dynamic_axes={"input_ids": {0: "B", 1: "T"}, "text_embeds": {0: "B"}},
                              opset_version=14)
        out(task="export", dir=d)
    else:
        raise SystemExit("unknown task " + task)


if __name__ == "__main__":
    main()
