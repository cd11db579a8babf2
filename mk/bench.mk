# mk/bench.mk - benchmarks (bench/, docs/performance.md). Not tests: nothing here fails on speed.
#   make bench             peak, B/32 image and text towers, load, peak RSS, fine-tuning workload
#   make bench-all         the same plus ViT-L/14 (bench/models/l14, ~1.7 GB, minutes per round)
#   make bench-models      random-weight B/32 (and bench-models-l14: L/14) checkpoints, git-ignored
#   make bench-ort         npm onnxruntime-node into bench/node_modules (git-ignored)
#   make bench-gemm        one-thread GEMM kernels at the towers' shapes (bench/gemm_bench.c)
#   make bench-gradcache   peak RSS of one MNRL step at batch 256, plain vs GradCache (bench/gradcache.lua)
#   BENCH_ROUNDS=N, BENCH_ARGS="--only ours,ort image" to narrow a run.
BENCH_ROUNDS ?= 3
BENCH_ARGS   ?=
BENCH_ENV    := LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;"

.PHONY: bench bench-all bench-models bench-models-l14 bench-ort bench-peak bench-gemm bench-gradcache

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
