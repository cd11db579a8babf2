# mk/bench.mk - benchmarks (bench/, docs/performance.md). Not tests: nothing here fails on speed.
#   make bench             peak, B/32 image and text towers, load, peak RSS, fine-tuning workload, and
#                          one training step per freezing choice (bench/train_step.lua: against
#                          PyTorch's last2 and full steps where /usr/bin/python3 has torch)
#   make bench-all         the same plus ViT-L/14 (bench/models/l14, ~1.7 GB, minutes per round)
#   make bench-models      random-weight B/32 (and bench-models-l14: L/14) checkpoints, git-ignored
#   make bench-ort         npm onnxruntime-node into bench/node_modules (git-ignored)
#   make bench-gemm        one-thread GEMM kernels at the towers' shapes (bench/gemm_bench.c)
#   make bench-gradcache   peak RSS of one MNRL step at batch 256, plain vs GradCache (bench/gradcache.lua)
#   make bench-embed       a folder of 256 JPEGs embedded end to end (serial, parallel, pipelined decoding)
#                          against the B/32 image tower alone, batch 32 (bench/embed_folder.lua)
#   make bench-train-step  one training step at B/32 shapes for each freezing choice, and the last2 / full
#                          steps in PyTorch (python3-torch, installed when missing), alternating with
#                          ours in 2 pairs, with the ratios (bench/train_step.lua --torch)
#   BENCH_ROUNDS=N, BENCH_ARGS="--only ours,ort image" to narrow a run.
BENCH_ROUNDS ?= 3
BENCH_ARGS   ?=
BENCH_ENV    := LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;"

.PHONY: bench-train-step
bench-train-step: all bench-models
	$(MAKE) deps EXTRA_DEBS="python3-torch python3-pil python3-numpy"
	@[ -f bench/out/data/img16.png ] || $(BENCH_ENV) $(LUA) bench/make_data.lua
	$(BENCH_ENV) $(LUA) bench/train_step.lua bench/models/b32 --rounds $(BENCH_ROUNDS) --torch

.PHONY: bench bench-all bench-models bench-models-l14 bench-ort bench-peak bench-gemm bench-gradcache bench-embed bench-jpegs

bench: all bench-models
	$(BENCH_ENV) $(LUA) bench/run.lua --rounds $(BENCH_ROUNDS) $(BENCH_ARGS)

bench-all: all bench-models bench-models-l14
	$(BENCH_ENV) $(LUA) bench/run.lua --rounds $(BENCH_ROUNDS) $(BENCH_ARGS) all

bench-models: all
	$(BENCH_ENV) $(LUA) bench/make_models.lua bench/models b32

bench-models-l14: all
	$(BENCH_ENV) $(LUA) bench/make_models.lua bench/models l14 l14-f16

bench-ort:
	cd bench && npm install --no-audit --no-fund --ignore-scripts

bench-peak:
	@mkdir -p $(BUILD)/bench
	$(CC) -O2 -pthread bench/peak.c -o $(BUILD)/bench/peak
	$(BUILD)/bench/peak

bench-gemm:
	@mkdir -p $(BUILD)/bench
	$(CC) -O2 $(PKG_CFLAGS) -Icsrc/kernels bench/gemm_bench.c csrc/kernels/gemm.c csrc/kernels/gemm_packed.c -lopenblas -lm \
	  -o $(BUILD)/bench/gemm_bench
	$(BUILD)/bench/gemm_bench $(BENCH_ROUNDS)

bench-gradcache: all bench-models
	$(BENCH_ENV) $(LUA) bench/gradcache.lua bench/models/b32 $(BENCH_ARGS)

# 256 photo-like 640x480 JPEGs (every 8th portrait) in bench/out/jpegs, deterministic (bench/make_jpegs.c)
BENCH_JPEGS ?= bench/out/jpegs
bench-jpegs:
	@mkdir -p $(BUILD)/bench $(BENCH_JPEGS)
	$(CC) -O2 $(PKG_CFLAGS) bench/make_jpegs.c $(PKG_LIBS) -lm -o $(BUILD)/bench/make_jpegs
	$(BUILD)/bench/make_jpegs $(BENCH_JPEGS) 256 640 480

bench-embed: all bench-models bench-jpegs
	$(BENCH_ENV) $(LUA) bench/embed_folder.lua bench/models/b32 $(BENCH_JPEGS) --rounds $(BENCH_ROUNDS) --batch 32 $(BENCH_ARGS)
