# mk/aarch64.mk - the module on ARM64 (issue 15): cross-compiled on this x86-64
# machine with Debian's gcc-aarch64-linux-gnu against the arm64 multiarch
# libraries, and the specs run under qemu-user (docs/design.md, Platforms).
#
#   make test-aarch64     build/aarch64/clip/core.so (aarch64-linux-gnu-gcc), an
#                         aarch64 Lua interpreter (build/aarch64/lua, from
#                         spec/host/lua_main.c), and busted's specs run by that
#                         interpreter under qemu-aarch64 (AARCH64_SPECS)
#   make aarch64          just the cross build (module and interpreter)
#
# SYSTEM CHANGE: where apt-get exists and something is missing, this target (and
# only this target) turns on Debian multiarch for arm64 (dpkg --add-architecture
# arm64, apt-get update) and installs AARCH64_DEBS beside the amd64 packages: the
# cross compiler, qemu-user, and the arm64 -dev libraries the build links (all
# Multi-Arch: same, so they do not replace the amd64 ones). lua5.4:arm64 cannot
# sit beside lua5.4:amd64 (Multi-Arch: foreign, one /usr/bin/lua5.4), hence the
# interpreter built here; lua-term:arm64 (busted's runner needs term.core) is
# not Multi-Arch: same either, so its .deb is downloaded with apt-get download
# and unpacked under build/aarch64/root, not installed. Without apt-get it says
# what is missing. Everything else goes under build/aarch64 (`make clean`).
#
# How the specs run: busted starts under the host's lua5.4, then re-executes
# itself with --lua=build/aarch64/bin/lua5.4, a wrapper that runs build/aarch64/lua
# under qemu-aarch64 with LUA_CPATH set to the aarch64 module and C libraries
# (it overrides any LUA_CPATH a spec passes to a child, since the host's paths
# hold x86-64 objects); --cpath replaces .busted's build/?.so, where the x86-64
# module is. The wrapper is first on PATH, so the Lua processes the
# specs start (bin/clip, the examples) run on aarch64 too. Before the suite a
# check reads core.so's ELF header (e_machine 183, EM_AARCH64) through the
# emulated interpreter.
#
# What is left out (AARCH64_SKIP, AARCH64_FILTER_OUT), and why: specs that build
# C programs with the host's toolchain and run them natively against the module
# (build_spec: `make`, nm, luarocks on the x86-64 tree; capi_spec: the C API
# library and test program; host_spec: examples/host; lifecycle's two_states).
# Those are architecture-independent checks of the build, and they run in the
# x86-64 `make test`. Every spec of the Lua module runs; the C API library
# (csrc/capi, capi_spec) is built and tested on x86-64 only.
#
# The x86-64 kernels compile out on aarch64 (#if defined(__x86_64__) in gemm.c,
# gemm_packed.c, simd.h and the kernels). The packed GEMM has a NEON micro-kernel
# (gemm_packed.c, chosen as PK_NEON), so weights are packed and spec/packed_spec.lua
# runs it against the naive twin and against the bits the AVX-512 kernel gives;
# quick_gelu and the softmax use the NEON exp (simd.h) and LayerNorm its NEON sums,
# compared with the twins by kernels_spec, which also checks that the vector exp is
# the one in use; ct_gemm_available() is 0 (no NEON small-M kernel), so the other
# GEMMs go to OpenBLAS. The whole run takes 3 to 6 minutes on 2 shared x86-64 cores.

AARCH64_BUILD   := build/aarch64
AARCH64_CC      ?= aarch64-linux-gnu-gcc
AARCH64_TRIPLET := aarch64-linux-gnu
AARCH64_PKGDIR  := /usr/lib/$(AARCH64_TRIPLET)/pkgconfig:/usr/share/pkgconfig
QEMU_AARCH64    ?= qemu-aarch64
AARCH64_DEBS    := gcc-aarch64-linux-gnu qemu-user libc6:arm64 liblua5.4-dev:arm64 \
                   libopenblas-dev:arm64 libjpeg62-turbo-dev:arm64 libpng-dev:arm64 \
                   libcjson-dev:arm64 libutf8proc-dev:arm64 zlib1g-dev:arm64 \
                   libwebp-dev:arm64 libtiff-dev:arm64 libgif-dev:arm64 \
                   lua-system:arm64 lua-filesystem:arm64
AARCH64_ROOT    := $(AARCH64_BUILD)/root
AARCH64_LUALIB  := $(CURDIR)/$(AARCH64_ROOT)/usr/lib/$(AARCH64_TRIPLET)/lua/5.4
AARCH64_SKIP    := spec/build_spec.lua spec/capi_spec.lua spec/host_spec.lua
AARCH64_FILTER_OUT := two_states
AARCH64_SPECS   ?= $(filter-out $(AARCH64_SKIP),$(sort $(wildcard spec/*_spec.lua)))

.PHONY: aarch64 aarch64-deps test-aarch64

# the module the wrapper loads is an aarch64 object (ELF e_machine 183) and loads
AARCH64_CHECK = local p = assert(package.searchpath("clip.core", package.cpath)); \
  local f = assert(io.open(p, "rb")); local h = f:read(20); f:close(); \
  assert(h:sub(1, 4) == "\127ELF" and string.unpack("<I2", h, 19) == 183, p .. ": not an aarch64 object"); \
  io.stderr:write("test-aarch64: ", p, " (aarch64, clip ", require("clip").version, ") under $(QEMU_AARCH64)\n")

aarch64-deps:
	@missing=""; for p in $(AARCH64_DEBS); do \
	  dpkg-query -W -f='$${db:Status-Abbrev}\n' $$p 2>/dev/null | grep -q '^ii' || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "clip: no apt-get here; for make test-aarch64 install an aarch64 cross compiler, qemu-user and the arm64 builds of:$$missing" >&2; \
	  exit 0; \
	fi; \
	SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	if ! dpkg --print-foreign-architectures | grep -qx arm64; then \
	  echo "clip: enabling the arm64 multiarch architecture (dpkg --add-architecture arm64)" >&2; \
	  $$SUDO dpkg --add-architecture arm64; \
	fi; \
	echo "installing:$$missing" >&2; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >&2

# lua-term:arm64 unpacked, not installed (see above)
$(AARCH64_ROOT)/.lua-term:
	@mkdir -p $(AARCH64_BUILD)/debs $(AARCH64_ROOT)
	cd $(AARCH64_BUILD)/debs && rm -f lua-term_*_arm64.deb && apt-get download lua-term:arm64 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true
	dpkg-deb -x $(AARCH64_BUILD)/debs/lua-term_*_arm64.deb $(AARCH64_ROOT)
	@touch $@

$(AARCH64_BUILD)/lua: spec/host/lua_main.c
	@mkdir -p $(dir $@)
	$(AARCH64_CC) -std=c11 -O2 $< $$(PKG_CONFIG_LIBDIR=$(AARCH64_PKGDIR) pkg-config --cflags --libs lua5.4) -o $@

$(AARCH64_BUILD)/bin/lua5.4: mk/aarch64.mk
	@mkdir -p $(dir $@)
	@printf '#!/bin/sh\n# the aarch64 lua under qemu-user, with the aarch64 module and C libraries (mk/aarch64.mk)\nLUA_CPATH="%s" exec %s "%s" "$$@"\n' \
	  "$(CURDIR)/$(AARCH64_BUILD)/?.so;$(AARCH64_LUALIB)/?.so;;" "$(QEMU_AARCH64)" "$(CURDIR)/$(AARCH64_BUILD)/lua" > $@
	@chmod +x $@

aarch64:
	PKG_CONFIG_LIBDIR=$(AARCH64_PKGDIR) $(MAKE) BUILD=$(AARCH64_BUILD) CC=$(AARCH64_CC) all
	$(MAKE) $(AARCH64_BUILD)/lua $(AARCH64_BUILD)/bin/lua5.4

test-aarch64: deps aarch64-deps
	$(MAKE) aarch64 $(AARCH64_ROOT)/.lua-term
	$(SPEC_ENV) $(RB_LUA_ENV) $(AARCH64_BUILD)/bin/lua5.4 -e '$(AARCH64_CHECK)'
	$(SPEC_ENV) $(RB_LUA_ENV) PATH="$(CURDIR)/$(AARCH64_BUILD)/bin:$$PATH" \
	  $(BUSTED) --lua=$(CURDIR)/$(AARCH64_BUILD)/bin/lua5.4 --cpath="$(CURDIR)/$(AARCH64_BUILD)/?.so" \
	  --exclude-tags=slow,mpi \
	  $(foreach f,$(AARCH64_FILTER_OUT),--filter-out=$(f)) $(AARCH64_SPECS)
