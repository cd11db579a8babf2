# mk/capi.mk - the C API (include/clip.h) as a static and a shared library, a
# pkg-config file, the pieces `make install` adds (header, libraries, clip.pc,
# bin/clip), the embedding host (examples/host) and the C example (examples/c).
#
#   make lib        build/libclip.a, build/libclip.so (core objects only: no Lua)
#   make host       build/host/host (require "clip" through package.cpath) and
#                   build/host/static_host (clip.core linked in, luaL_requiref)
#   make c-example  build/examples/c/embed, linked against build/libclip.a
#   make install    also installs the C library, header, clip.pc and bin/clip
#
# Install directories (besides the main Makefile's LIBDIR / LUADIR for Lua):
CLIBDIR      ?= $(PREFIX)/lib
INCLUDEDIR   ?= $(PREFIX)/include
BINDIR       ?= $(PREFIX)/bin
PKGCONFIGDIR ?= $(CLIBDIR)/pkgconfig
LUA_LIBS     ?= $(shell pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4)
AR           ?= ar

CAPI_VERSION := $(shell sed -n 's/^\#define CLIP_VERSION "\(.*\)"/\1/p' include/clip.h)
CAPI_SONAME  := libclip.so.$(firstword $(subst ., ,$(CAPI_VERSION)))
# libclip: the C API over the core and the kernels (no Lua); the host links the bindings too
CLIB_OBJS    := $(CAPI_OBJS) $(CORE_OBJS) $(KERNEL_OBJS)
BIND_OBJS    := $(LUA_OBJS)
CLIB_A       := $(BUILD)/libclip.a
CLIB_SO      := $(BUILD)/libclip.so
HOST_BINS    := $(BUILD)/host/host $(BUILD)/host/static_host
C_EXAMPLE    := $(BUILD)/examples/c/embed

.PHONY: lib host c-example install-capi install-cli capi-libs

lib: $(CLIB_A) $(CLIB_SO)

$(CLIB_A): $(CLIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $(CLIB_OBJS)

# Only clip_* (CLIP_API in include/clip.h) is exported: everything is compiled with
# -fvisibility=hidden, so the core's ct_* stay internal. build/libclip.so.0 (the
# soname) points at it, so programs linked with -Lbuild -lclip run from the tree
# with an rpath or LD_LIBRARY_PATH.
$(CLIB_SO): $(CLIB_OBJS)
	$(CC) $(LIBFLAG) $(CFLAGS) -Wl,-soname,$(CAPI_SONAME) -o $@ $(CLIB_OBJS) $(LIBS)
	ln -sf libclip.so $(BUILD)/$(CAPI_SONAME)

# The libraries a program linking build/libclip.a needs (used by the specs).
capi-libs:
	@echo $(LIBS)

# ------------------------------------------------------------------ examples
host: $(HOST_BINS)

$(BUILD)/host/host: examples/host/host.c
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(OPT) -I$(LUA_INCDIR) -o $@ $< $(LUA_LIBS) -lm -ldl

$(BUILD)/host/static_host: examples/host/host.c $(BIND_OBJS) $(CLIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(OPT) -DCLIP_STATIC -I$(LUA_INCDIR) -o $@ $< $(BIND_OBJS) $(CLIB_A) \
	  $(LUA_LIBS) $(LIBS) -ldl

c-example: $(C_EXAMPLE)

$(C_EXAMPLE): examples/c/embed.c include/clip.h $(CLIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) $(OPT) -Iinclude -o $@ $< $(CLIB_A) $(LIBS)

# ------------------------------------------------------------------- install
# The main Makefile's install recipe puts the Lua module in LIBDIR / LUADIR;
# these add the C library and the command line.
install: install-capi install-cli

install-capi: lib
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(CLIBDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 644 include/clip.h $(DESTDIR)$(INCLUDEDIR)/clip.h
	install -m 644 $(CLIB_A) $(DESTDIR)$(CLIBDIR)/libclip.a
	install -m 755 $(CLIB_SO) $(DESTDIR)$(CLIBDIR)/libclip.so.$(CAPI_VERSION)
	ln -sf libclip.so.$(CAPI_VERSION) $(DESTDIR)$(CLIBDIR)/$(CAPI_SONAME)
	ln -sf $(CAPI_SONAME) $(DESTDIR)$(CLIBDIR)/libclip.so
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(CLIBDIR)' 'includedir=$(INCLUDEDIR)' '' \
	  'Name: clip' \
	  'Description: CLIP image and text embeddings (C API of the clip Lua module)' \
	  'Version: $(CAPI_VERSION)' \
	  'Cflags: -I$${includedir}' \
	  'Libs: -L$${libdir} -lclip' \
	  'Libs.private: $(strip $(LIBS))' > $(DESTDIR)$(PKGCONFIGDIR)/clip.pc

# bin/clip learns where this install put the Lua module, so it runs from any
# PREFIX without LUA_PATH (a LuaRocks install wraps it instead).
install-cli:
	install -d $(DESTDIR)$(BINDIR)
	sed -e 's|^local INSTALL_LUADIR = nil|local INSTALL_LUADIR = "$(LUADIR)"|' \
	    -e 's|^local INSTALL_LIBDIR = nil|local INSTALL_LIBDIR = "$(LIBDIR)"|' \
	    bin/clip > $(DESTDIR)$(BINDIR)/clip.tmp
	chmod 755 $(DESTDIR)$(BINDIR)/clip.tmp
	mv $(DESTDIR)$(BINDIR)/clip.tmp $(DESTDIR)$(BINDIR)/clip
