# clip - CLIP for Lua 5.4.  `make` builds build/clip/core.so in the tree;
# `eval "$(make -s env)"` lets lua5.4 find `clip` straight from the tree.
# Variable names follow LuaRocks (CFLAGS, LIBFLAG, LUA_INCDIR, PREFIX, LIBDIR, LUADIR).

LUA        ?= lua5.4
LUA_INCDIR ?= /usr/include/lua5.4
PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib/lua/5.4
LUADIR     ?= $(PREFIX)/share/lua/5.4
CC         ?= cc
OPT        ?= -O2
CFLAGS     ?= $(OPT) -fPIC
WARN       := -std=c11 -Wall -Wextra -D_GNU_SOURCE
LIBFLAG    ?= -shared
PKGS       := openblas libpng libjpeg libcjson libutf8proc zlib
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ifeq ($(strip $(PKG_LIBS)),)
PKG_CFLAGS := -I/usr/include/x86_64-linux-gnu/openblas-pthread -I/usr/include/cjson
PKG_LIBS   := -lopenblas -lpng16 -ljpeg -lcjson -lutf8proc -lz
endif
LIBS       := $(PKG_LIBS) -lm -lpthread

BUILD      ?= build
SRCS       := $(sort $(wildcard csrc/*.c))
OBJS       := $(patsubst csrc/%.c,$(BUILD)/obj/%.o,$(SRCS))
HDRS       := $(wildcard csrc/*.h)
MODULE     := $(BUILD)/clip/core.so

BUSTED     ?= busted
DEBS       := lua5.4 liblua5.4-dev libopenblas-dev libjpeg62-turbo-dev libpng-dev \
              libcjson-dev libutf8proc-dev zlib1g-dev lua-busted luarocks pkg-config \
              make gcc
DEMO_DEBS  := dataset-fashion-mnist

.PHONY: all env test test-slow test-asan deps demo install clean sources

all: $(MODULE)

$(BUILD)/obj/%.o: csrc/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(CFLAGS) $(PKG_CFLAGS) -I$(LUA_INCDIR) -c $< -o $@

$(MODULE): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(CFLAGS) -o $@ $(OBJS) $(LIBS)

env:
	@echo 'export LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$${LUA_PATH:-;}"'
	@echo 'export LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;$${LUA_CPATH:-;}"'

# Install the Debian packages the build and tests need (skips what is there).
deps:
	@missing=""; for p in $(DEBS) $(EXTRA_DEBS); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing" >&2; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >&2; \
	fi

test: deps
	$(MAKE) all
	LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;" \
	  $(BUSTED) --lua=$(LUA) --exclude-tags=slow spec

test-slow: all
	LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;" \
	  $(BUSTED) --lua=$(LUA) --run=slow

demo:
	$(MAKE) deps EXTRA_DEBS="$(DEMO_DEBS)"
	$(MAKE) all
	LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;" \
	  $(LUA) examples/demo.lua

sources:
	@echo $(SRCS)

install: all
	install -d $(DESTDIR)$(LIBDIR)/clip $(DESTDIR)$(LUADIR)/clip
	install -m 755 $(MODULE) $(DESTDIR)$(LIBDIR)/clip/core.so
	install -m 644 lua/clip/*.lua $(DESTDIR)$(LUADIR)/clip/

clean:
	rm -rf $(BUILD)

# Area makefiles (sanitizers and fuzzing, C API and install, benchmarks, ...)
-include mk/*.mk
