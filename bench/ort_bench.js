// bench/ort_bench.js - the same work as bench/ours.lua in ONNX Runtime (npm onnxruntime-node,
// CPU provider) on the ONNX export of the same random weights (torch_bench.py export).
// usage: node bench/ort_bench.js image|text|rss <model dir> [B] [T] [reps]; prints one JSON line.
// Threads: intraOpNumThreads = CLIP_THREADS or the number of cores, interOpNumThreads 1,
// graphOptimizationLevel 'all' (ORT's defaults otherwise).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const ort = require('onnxruntime-node');

function median(a) {
  const s = a.slice().sort((x, y) => x - y);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

function randn(n, seed) {
  // deterministic pseudo-normal values (sum of uniforms), enough for timing
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let acc = 0;
    for (let k = 0; k < 4; k++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      acc += s / 4294967296;
    }
    out[i] = (acc - 2) * 1.7;
  }
  return out;
}

function idsBatch(B, T) {
  const a = new BigInt64Array(B * T);
  for (let b = 1; b <= B; b++) {
    const row = (b - 1) * T;
    a[row] = 49406n;
    for (let t = 2; t < T; t++) a[row + t - 1] = BigInt(1000 + ((b * 7919 + t * 104729) % 40000));
    a[row + T - 1] = 49407n;
  }
  return a;
}

function vmhwm() {
  const s = fs.readFileSync('/proc/self/status', 'utf8');
  return Number(/VmHWM:\s*(\d+)/.exec(s)[1]);
}

async function main() {
  const [task, dir, a1, a2, a3] = process.argv.slice(2);
  const threads = Number(process.env.CLIP_THREADS || os.cpus().length);
  const opts = { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all',
    executionMode: 'sequential' };
  const emit = (o) => console.log(JSON.stringify(Object.assign({ impl: 'ort', threads }, o)));
  const timeit = async (f, reps) => {
    await f();
    const ts = [];
    for (let i = 0; i < reps; i++) {
      const t0 = process.hrtime.bigint();
      await f();
      ts.push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
    return median(ts);
  };
  if (task === 'image') {
    const B = Number(a1 || 1), reps = Number(a2 || 5);
    const sess = await ort.InferenceSession.create(path.join(dir, 'vision.onnx'), opts);
    const px = new ort.Tensor('float32', randn(B * 3 * 224 * 224, 7), [B, 3, 224, 224]);
    const t = await timeit(() => sess.run({ pixel_values: px }), reps);
    emit({ task: 'image', batch: B, seconds: t, rate: B / t });
  } else if (task === 'text') {
    const B = Number(a1 || 1), T = Number(a2 || 77), reps = Number(a3 || 5);
    const sess = await ort.InferenceSession.create(path.join(dir, 'text.onnx'), opts);
    const ids = new ort.Tensor('int64', idsBatch(B, T), [B, T]);
    const t = await timeit(() => sess.run({ input_ids: ids }), reps);
    emit({ task: 'text', batch: B, tokens: T, seconds: t, rate: B / t });
  } else if (task === 'rss') {
    const v = await ort.InferenceSession.create(path.join(dir, 'vision.onnx'), opts);
    const t = await ort.InferenceSession.create(path.join(dir, 'text.onnx'), opts);
    await v.run({ pixel_values: new ort.Tensor('float32', randn(3 * 224 * 224, 3), [1, 3, 224, 224]) });
    await t.run({ input_ids: new ort.Tensor('int64', idsBatch(1, 15), [1, 15]) });
    const h = vmhwm();
    emit({ task: 'rss', peak_rss_mib: h / 1024 });
  } else if (task === 'check') {
    // print the first embeddings, to compare with the other implementations
    const v = await ort.InferenceSession.create(path.join(dir, 'vision.onnx'), opts);
    const t = await ort.InferenceSession.create(path.join(dir, 'text.onnx'), opts);
    const T = Number(a1 || 15);
    const pv = await v.run({ pixel_values: new ort.Tensor('float32', new Float32Array(3 * 224 * 224), [1, 3, 224, 224]) });
    const pt = await t.run({ input_ids: new ort.Tensor('int64', idsBatch(1, T), [1, T]) });
    emit({ task: 'check', image: Array.from(pv.image_embeds.data.slice(0, 4)),
      text: Array.from(pt.text_embeds.data.slice(0, 4)) });
  } else {
    throw new Error('unknown task ' + task);
  }
}

main().catch((e) => { console.error(e.message || e); process.exit(1); });
