# mk/robustness.mk - sanitizers, valgrind and fuzzing (issue #5).
#
#   make test-asan        the busted suite against an ASan+UBSan build of the
#                         module (build/asan/clip/core.so, gcc) in an
#                         instrumented interpreter; any report fails the run
#   make test-valgrind    the busted suite under valgrind memcheck (normal
#                         build); fails on any error or a definite leak
#   make test-tsan-decode the batch decoder's threads (csrc/core/image_batch.c)
#                         under ThreadSanitizer, from a C driver without Lua
#   make fuzz             every libFuzzer target for FUZZ_TIME seconds (60),
#                         corpus kept in build/fuzz/corpus/<target>
#   make fuzz-smoke       every target for FUZZ_SMOKE_RUNS executions from
#                         its seeds only (fixed -seed, fresh corpus): CI
#   make fuzz-build       just build the targets (clang, build/fuzz/)
#
# Everything goes under build/ (ignored, removed by `make clean`). clang and
# valgrind are installed with apt-get when missing (the main Makefile's deps
# target, EXTRA_DEBS). docs/robustness.md says what each target covers and
# records the results.

RB_LUA_ENV  = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;"
FUZZ_DEBS   := clang libclang-rt-14-dev
VG_DEBS     := valgrind

.PHONY: test-asan test-valgrind test-tsan-decode fuzz fuzz-smoke fuzz-build fuzz-seeds

# ------------------------------------------------------------ ASan + UBSan
# Debian's lua5.4 is not instrumented. busted runs in build/asan/lua, a
# minimal interpreter (spec/host/lua_main.c) built with ASan+UBSan, so the
# runtime is part of that one executable: processes the specs start (cc, sh,
# cp, ...) do not inherit it. Lua processes the specs start find
# build/asan/bin/lua5.4 first on PATH: Debian's lua5.4 with the ASan runtime
# preloaded, which the instrumented module needs. Those run without
# LeakSanitizer: its stop-the-world crashes ("Tracer caught signal 11") when
# a process leaves through os.exit while the module's thread pool still runs,
# as bin/clip does. The busted process itself is leak-checked.
# use_tls=0: LeakSanitizer's tracer crashed ("Tracer caught signal 11") reading a
# stale dynamic-TLS entry of the busted process once the whole suite had run
# (LSAN_OPTIONS=verbosity=1:log_threads=1 showed "DTLS 7 at 0x59-0x80000115b");
# the halves of the suite pass either way. Not scanning TLS as roots can only
# add leak reports, never hide one.
ASAN_BUILD  := build/asan
ASAN_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=all
ASAN_CFLAGS := -O1 -g -fPIC -fno-omit-frame-pointer $(ASAN_SAN)
ASAN_RT      = $(shell $(CC) -print-file-name=libasan.so)
ASAN_ENV     = ASAN_OPTIONS=detect_leaks=1:exitcode=86:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1 \
               LSAN_OPTIONS=suppressions=$(CURDIR)/fuzz/lsan.supp:print_suppressions=0:use_tls=0 \
               UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=87

$(ASAN_BUILD)/lua: spec/host/lua_main.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O1 -g -fno-omit-frame-pointer $(ASAN_SAN) $< -I$(LUA_INCDIR) \
	  $$(pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4) -o $@

$(ASAN_BUILD)/bin/lua5.4: mk/robustness.mk
	@mkdir -p $(dir $@)
	@printf '#!/bin/sh\n# lua5.4 with the ASan runtime preloaded, without LeakSanitizer (mk/robustness.mk)\nASAN_OPTIONS="$${ASAN_OPTIONS:+$$ASAN_OPTIONS:}detect_leaks=0" LD_PRELOAD="%s$${LD_PRELOAD:+ $$LD_PRELOAD}" exec /usr/bin/$(LUA) "$$@"\n' \
	  "$(ASAN_RT)" > $@
	@chmod +x $@

test-asan: deps
	$(MAKE) BUILD=$(ASAN_BUILD) CFLAGS="$(ASAN_CFLAGS)" all
	$(MAKE) $(ASAN_BUILD)/lua $(ASAN_BUILD)/bin/lua5.4
	$(SPEC_ENV) $(RB_LUA_ENV) LUA_CPATH="$(CURDIR)/$(ASAN_BUILD)/?.so;;" CLIP_SANITIZER=asan $(ASAN_ENV) \
	  PATH="$(CURDIR)/$(ASAN_BUILD)/bin:$$PATH" \
	  $(BUSTED) --lua=$(CURDIR)/$(ASAN_BUILD)/lua --exclude-tags=slow,mpi spec

# ------------------------------------------------- ThreadSanitizer: the batch decoder
# spec/host/decode_threads.c over the image fixtures (every format, bad files), on 1 to 4
# threads and through a background decoder (submit/wait, cancel and free in flight), against
# the image sources built with -fsanitize=thread. The image libraries are Debian's, not
# instrumented: TSan sees our accesses and the threads' synchronization, not their insides.
TSAN_BUILD := build/tsan
TSAN_SRCS  := spec/host/decode_threads.c csrc/core/image.c csrc/core/image_formats.c \
              csrc/core/image_batch.c csrc/core/util.c

$(TSAN_BUILD)/decode_threads: $(TSAN_SRCS) $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -O1 -g -fno-omit-frame-pointer -fsanitize=thread $(PKG_CFLAGS) \
	  -Icsrc/core -Icsrc/kernels $(TSAN_SRCS) $(PKG_LIBS) -lm -lpthread -o $@

test-tsan-decode: $(TSAN_BUILD)/decode_threads
	TSAN_OPTIONS=halt_on_error=1:exitcode=66 $(TSAN_BUILD)/decode_threads spec/fixtures/images/ 5

# ---------------------------------------------------------------- valgrind
# OpenBLAS picks kernels by CPU; valgrind does not emulate AVX-512, so pin a
# core type it handles. Definite leaks and memory errors fail the run
# (exit 99); "possibly lost" (OpenBLAS thread buffers) is not an error.
VG_BUILD := build/valgrind
VG_FLAGS := -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
            --show-leak-kinds=definite --num-callers=40 --track-origins=no \
            --suppressions=$(CURDIR)/fuzz/valgrind.supp

$(VG_BUILD)/lua5.4: mk/robustness.mk
	@mkdir -p $(dir $@)
	@printf '#!/bin/sh\n# lua5.4 under valgrind memcheck (mk/robustness.mk)\nexec valgrind $(VG_FLAGS) $(LUA) "$$@"\n' > $@
	@chmod +x $@

test-valgrind:
	$(MAKE) deps EXTRA_DEBS="$(VG_DEBS)"
	$(MAKE) all
	$(MAKE) $(VG_BUILD)/lua5.4
	$(SPEC_ENV) $(RB_LUA_ENV) LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;" CLIP_SANITIZER=valgrind OPENBLAS_CORETYPE=Haswell \
	  $(BUSTED) --lua=$(CURDIR)/$(VG_BUILD)/lua5.4 --exclude-tags=slow,mpi spec

# ----------------------------------------------------------------- fuzzing
FUZZ_CC      ?= clang
FUZZ_DIR     := build/fuzz
FUZZ_TARGETS := safetensors loader config jpeg png formats tokenizer torch
FUZZ_TIME    ?= 60
FUZZ_SMOKE_RUNS ?= 10000
FUZZ_SMOKE_TIME ?= 30
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS  := -g -O1 -fno-omit-frame-pointer -std=c11 -D_GNU_SOURCE -Wall -Wextra $(FUZZ_SAN) \
               -fsanitize-coverage-ignorelist=$(CURDIR)/fuzz/coverage_ignore.txt
FUZZ_CORE    := $(CORE_SRCS) $(KERNEL_SRCS)
FUZZ_OBJS    := $(patsubst csrc/%.c,$(FUZZ_DIR)/obj/%.o,$(FUZZ_CORE))
FUZZ_LIB     := $(FUZZ_DIR)/libclipcore.a
FUZZ_BINS    := $(addprefix $(FUZZ_DIR)/fuzz_,$(FUZZ_TARGETS))
# per-target libFuzzer options: input size caps keep executions fast
FUZZ_OPTS_safetensors := -max_len=65536
FUZZ_OPTS_loader      := -max_len=16384
FUZZ_OPTS_config      := -max_len=8192
FUZZ_OPTS_jpeg        := -max_len=65536
FUZZ_OPTS_png         := -max_len=65536
FUZZ_OPTS_formats     := -max_len=65536
FUZZ_OPTS_tokenizer   := -max_len=4096 -dict=fuzz/tokenizer.dict
FUZZ_OPTS_torch       := -max_len=65536
# the options of target $$t inside a shell loop: a case over the targets, written by make
# (a make variable named after the shell's $$t cannot be expanded there)
rparen := )
FUZZ_OPTS_CASE = case $$t in $(foreach t,$(FUZZ_TARGETS),$(t)$(rparen) topts='$(FUZZ_OPTS_$(t))';; ) esac
FUZZ_COMMON_OPTS      := -seed=1 -timeout=20 -rss_limit_mb=3072 -malloc_limit_mb=2048 \
                         -print_final_stats=1 -detect_leaks=1

$(FUZZ_DIR)/obj/%.o: csrc/%.c $(HDRS) fuzz/coverage_ignore.txt
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(PKG_CFLAGS) $(INC_$(call layer_of,$@)) -c $< -o $@

$(FUZZ_LIB): $(FUZZ_OBJS)
	@rm -f $@
	ar rcs $@ $(FUZZ_OBJS)

$(FUZZ_DIR)/fuzz_%: fuzz/fuzz_%.c fuzz/fuzz_common.h fuzz/fuzz_st.h fuzz/fuzz_image.h fuzz/micro_config.h $(FUZZ_LIB) $(HDRS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(PKG_CFLAGS) $(INC_core) \
	  -DCLIP_TOKENIZER_DIR='"$(CURDIR)/spec/fixtures/tokenizer"' \
	  $< $(FUZZ_LIB) -o $@ $(LIBS)

fuzz-build:
	$(MAKE) deps EXTRA_DEBS="$(FUZZ_DEBS)"
	$(MAKE) $(FUZZ_BINS)

# seed corpora, written from spec/fixtures by fuzz/seeds.lua with the normal build
fuzz-seeds: all
	rm -rf $(FUZZ_DIR)/seeds
	$(SPEC_ENV) $(RB_LUA_ENV) LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;" $(LUA) fuzz/seeds.lua $(FUZZ_DIR)/seeds

# make fuzz [FUZZ_TIME=s] [FUZZ_TARGETS="png jpeg"]: time-boxed runs; the
# corpus under build/fuzz/corpus/<t> grows from run to run; crashes are
# saved as build/fuzz/artifacts/<t>-crash-*; build/fuzz/<t>.log has the stats.
fuzz: deps fuzz-build fuzz-seeds
	@mkdir -p $(FUZZ_DIR)/artifacts
	@set -e; for t in $(FUZZ_TARGETS); do topts=""; $(FUZZ_OPTS_CASE); \
	  mkdir -p $(FUZZ_DIR)/corpus/$$t; \
	  echo "fuzz_$$t: $(FUZZ_TIME) s" >&2; \
	  $(FUZZ_DIR)/fuzz_$$t $(FUZZ_COMMON_OPTS) $$topts -max_total_time=$(FUZZ_TIME) \
	    -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t- $(FUZZ_DIR)/corpus/$$t $(FUZZ_DIR)/seeds/$$t \
	    > $(FUZZ_DIR)/$$t.log 2>&1 || { tail -60 $(FUZZ_DIR)/$$t.log; exit 1; }; \
	  grep -E '^stat::number_of_executed_units|^stat::new_units_added|^#[0-9]+ +DONE' $(FUZZ_DIR)/$$t.log \
	    | sed "s/^/  $$t: /" >&2; \
	done

# CI: each target runs FUZZ_SMOKE_RUNS inputs from its seeds. Reproducible:
# fixed -seed, a fresh corpus, no corpus reloading (-reload=0: it is timed),
# and no address-space randomization when setarch can turn it off (compared
# pointers otherwise feed libFuzzer's compare table). FUZZ_SMOKE_TIME caps it.
fuzz-smoke: deps fuzz-build fuzz-seeds
	@mkdir -p $(FUZZ_DIR)/artifacts
	@norand=""; setarch $$(uname -m) -R true 2>/dev/null && norand="setarch $$(uname -m) -R"; \
	set -e; for t in $(FUZZ_TARGETS); do topts=""; $(FUZZ_OPTS_CASE); \
	  rm -rf $(FUZZ_DIR)/smoke/$$t; mkdir -p $(FUZZ_DIR)/smoke/$$t; \
	  $$norand $(FUZZ_DIR)/fuzz_$$t $(FUZZ_COMMON_OPTS) $$topts -runs=$(FUZZ_SMOKE_RUNS) -reload=0 \
	    -max_total_time=$(FUZZ_SMOKE_TIME) -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t- \
	    $(FUZZ_DIR)/smoke/$$t $(FUZZ_DIR)/seeds/$$t > $(FUZZ_DIR)/smoke-$$t.log 2>&1 \
	    || { tail -60 $(FUZZ_DIR)/smoke-$$t.log; exit 1; }; \
	  echo "fuzz-smoke $$t: $$(grep -E '^stat::number_of_executed_units' $(FUZZ_DIR)/smoke-$$t.log | sed 's/.*: *//') executions, no findings" >&2; \
	done
