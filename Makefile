# clip - CLIP for Lua 5.4.  `make` builds build/clip/core.so in the tree;
# `eval "$(make -s env)"` lets lua5.4 find `clip` straight from the tree.
# Variable names follow LuaRocks (CFLAGS, LIBFLAG, LUA_INCDIR, PREFIX, LIBDIR, LUADIR):
# the rockspec's build type "make" runs this file, so `luarocks make` and
# `make install` build and install the same module.
#
# Sources are selected by folder, one folder a layer (docs/design.md):
#   csrc/kernels/  forward/backward kernel pairs, GEMMs, SIMD, the thread pool
#   csrc/core/     the C core: tensors, checkpoints, towers, training, images, tokenizer
#   csrc/capi/     the public C API (include/clip.h)
#   csrc/lua/      the Lua bindings (lclip.c: luaopen_clip_core)
# Each layer sees only the include folders of the layers below it: the kernels
# and the core are compiled without the Lua include path, so a stray lua.h is a
# compile error.

LUA        ?= lua5.4
PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib/lua/5.4
LUADIR     ?= $(PREFIX)/share/lua/5.4
CC         ?= cc
OPT        ?= -O2
CFLAGS     ?= $(OPT) -fPIC
# -fvisibility=hidden: core.so exports luaopen_clip_core alone, libclip.so clip_* alone
WARN       := -std=c11 -Wall -Wextra -D_GNU_SOURCE -fvisibility=hidden
LIBFLAG    ?= -shared

# Libraries through pkg-config (Debian's -dev packages ship the .pc files;
# libgif-dev's libgif.pc is Debian's own, upstream giflib has none: elsewhere
# pass PKG_LIBS=... -lgif). libwebpdemux: WebP through WebPAnimDecoder, as Pillow.
PKGS       := openblas libpng libjpeg libcjson libutf8proc zlib libwebp libwebpdemux libtiff-4 libgif
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
LUA_INCDIR ?= $(patsubst -I%,%,$(filter -I%,$(shell pkg-config --cflags lua5.4 2>/dev/null)))
LIBS       := $(PKG_LIBS) -lm -lpthread

# `make MPI=1`: the module with MPI (clip.dist; mk/dist.mk) in its own folder
ifeq ($(MPI),1)
BUILD      ?= build/mpi
endif
BUILD      ?= build
KERNEL_SRCS := $(sort $(wildcard csrc/kernels/*.c))
CORE_SRCS   := $(sort $(wildcard csrc/core/*.c))
CAPI_SRCS   := $(sort $(wildcard csrc/capi/*.c))
LUA_SRCS    := $(sort $(wildcard csrc/lua/*.c))
obj_of      = $(patsubst csrc/%.c,$(BUILD)/obj/%.o,$(1))
KERNEL_OBJS := $(call obj_of,$(KERNEL_SRCS))
CORE_OBJS   := $(call obj_of,$(CORE_SRCS))
CAPI_OBJS   := $(call obj_of,$(CAPI_SRCS))
LUA_OBJS    := $(call obj_of,$(LUA_SRCS))
SRCS        := $(KERNEL_SRCS) $(CORE_SRCS) $(CAPI_SRCS) $(LUA_SRCS)
HDRS        := $(wildcard csrc/*/*.h) include/clip.h
# the Lua module: the bindings over the core and the kernels (the C API is not in it)
MODULE      := $(BUILD)/clip/core.so
MODULE_OBJS := $(LUA_OBJS) $(CORE_OBJS) $(KERNEL_OBJS)

# include folders per layer
INC_kernels := -Icsrc/kernels
INC_core    := -Icsrc/core -Icsrc/kernels
INC_capi    := -Iinclude -Icsrc/core -Icsrc/kernels
INC_lua     := -Icsrc/lua -Iinclude -Icsrc/core -Icsrc/kernels -I$(LUA_INCDIR)
layer_of     = $(notdir $(patsubst %/,%,$(dir $(1))))

BUSTED     ?= busted
# specs run make themselves (make -s capi-libs ...); a parallel parent make's
# jobserver flags would make those sub-makes warn into the captured output
SPEC_ENV    = MAKEFLAGS= MFLAGS=
DEBS       := lua5.4 liblua5.4-dev libopenblas-dev libjpeg62-turbo-dev libpng-dev \
              libcjson-dev libutf8proc-dev zlib1g-dev libwebp-dev libtiff-dev libgif-dev lua-busted luarocks pkg-config \
              make gcc
DEMO_DEBS  := dataset-fashion-mnist
RUN_ENV     = LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;"

.PHONY: all env test test-slow deps check-build-deps demo install install-lua clean sources

all: $(MODULE)

# Every object depends on every header: a header change rebuilds all (the tree is small).
$(BUILD)/obj/%.o: csrc/%.c $(HDRS) | check-build-deps
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(CFLAGS) $(PKG_CFLAGS) $(INC_$(call layer_of,$@)) -c $< -o $@

$(MODULE): $(MODULE_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(CFLAGS) -o $@ $(MODULE_OBJS) $(LIBS)

# What the build needs, said plainly when pkg-config cannot find it.
check-build-deps:
	@if [ -z "$(strip $(PKG_LIBS))" ] || [ -z "$(strip $(LUA_INCDIR))" ]; then \
	  echo "clip: pkg-config does not find $(PKGS) lua5.4" >&2; \
	  echo "  on Debian/Ubuntu: 'make deps' as root, or apt-get install $(DEBS)" >&2; \
	  echo "  elsewhere: install them, or pass PKG_CFLAGS=, PKG_LIBS= and LUA_INCDIR= to make" >&2; \
	  exit 1; \
	fi

env:
	@echo 'export LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$${LUA_PATH:-;}"'
	@echo 'export LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;$${LUA_CPATH:-;}"'

# Install the Debian packages the build and tests need (skips what is there).
# Where apt-get does not exist it says which packages are missing and leaves it
# to you (the build then finds them through pkg-config).
deps:
	@missing=""; for p in $(DEBS) $(EXTRA_DEBS); do \
	  dpkg-query -W -f='$${Status} $${Architecture}\n' $$p 2>/dev/null \
	    | grep -Eq "installed ($$(dpkg --print-architecture 2>/dev/null)|all)$$" || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "clip: no apt-get here; install the equivalents of these Debian packages yourself:$$missing" >&2; \
	  exit 0; \
	fi; \
	echo "installing:$$missing" >&2; \
	SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >&2

test: deps
	$(MAKE) all
	$(SPEC_ENV) $(RUN_ENV) $(BUSTED) --lua=$(LUA) --exclude-tags=slow,mpi spec

test-slow: all
	$(SPEC_ENV) $(RUN_ENV) $(BUSTED) --lua=$(LUA) --run=slow

demo:
	$(MAKE) deps EXTRA_DEBS="$(DEMO_DEBS)"
	$(MAKE) all
	$(RUN_ENV) $(LUA) examples/demo.lua

sources:
	@echo $(SRCS)

# The Lua module alone (what `luarocks make` installs; bin/clip is the rockspec's
# install.bin there); `make install` adds the C library and bin/clip (mk/capi.mk).
install-lua: all
	install -d $(DESTDIR)$(LIBDIR)/clip $(DESTDIR)$(LUADIR)/clip
	install -m 755 $(MODULE) $(DESTDIR)$(LIBDIR)/clip/core.so
	install -m 644 lua/clip/*.lua $(DESTDIR)$(LUADIR)/clip/

install: install-lua

clean:
	rm -rf $(BUILD)

# Area makefiles (sanitizers and fuzzing, C API and install, benchmarks, ...)
-include mk/*.mk

# make -s print-VAR: a variable's value (the build spec reads the layers' flags)
print-%:
	@echo $($*)
