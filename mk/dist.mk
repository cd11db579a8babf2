# mk/dist.mk - MPI (issue #16; docs/distributed.md).
#
#   make MPI=1            the module with MPI collectives (clip.dist) in build/mpi/
#                         (BUILD defaults to build/mpi there, so the plain build in
#                         build/ stays MPI-free); mpi.h and libmpi come from
#                         `pkg-config ompi-c`, else from `mpicc --showme`
#   make test-mpi         builds MPI=1 and runs the distributed specs (spec/dist_spec.lua,
#                         tag "mpi") with 2 and 3 ranks under mpirun on this machine
#   make bench-dist       2 ranks x 1 thread against 1 rank x 2 threads (and 1 x 1) for a
#                         ViT-B/32 training step and image embedding, and the all-reduce of
#                         B/32- and L/14-sized gradients (bench/dist_bench.lua; minutes;
#                         BENCH_DIST_ARGS="--rounds 5 --batch 32" to change it)
# A plain build compiles csrc/lua/l_dist.c without CLIP_MPI: its clip.dist functions
# raise an error naming `make MPI=1`, and nothing links libmpi.
MPI_DEBS := openmpi-bin libopenmpi-dev

ifeq ($(MPI),1)
MPI_CFLAGS ?= $(shell pkg-config --cflags ompi-c 2>/dev/null || mpicc --showme:compile 2>/dev/null)
MPI_LIBS   ?= $(shell pkg-config --libs ompi-c 2>/dev/null || mpicc --showme:link 2>/dev/null)
ifeq ($(strip $(MPI_LIBS)),)
$(error MPI=1: neither `pkg-config ompi-c` nor mpicc finds MPI; install $(MPI_DEBS) (Debian) or pass MPI_CFLAGS= and MPI_LIBS=)
endif
# only the bindings see mpi.h; the kernels and the core stay MPI-free
INC_lua += -DCLIP_MPI $(MPI_CFLAGS)
LIBS    += $(MPI_LIBS)
endif

.PHONY: test-mpi bench-dist

# BUSTED runs in the tree's Lua paths; the spec launches the ranks itself with the
# MPI build (CLIP_MPI_BUILD) and reports "skipped: ..." as pending where mpirun
# cannot start.
test-mpi:
	$(MAKE) deps EXTRA_DEBS="$(MPI_DEBS)"
	$(MAKE) MPI=1 BUILD=build/mpi all
	$(MAKE) all
	$(SPEC_ENV) CLIP_MPI_BUILD="$(CURDIR)/build/mpi" CLIP_DIST_RANKS="2 3" \
	  LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" LUA_CPATH="$(CURDIR)/build/?.so;;" \
	  $(BUSTED) --lua=$(LUA) --tags=mpi --exclude-tags=slow spec/dist_spec.lua

BENCH_DIST_ARGS ?=
bench-dist:
	$(MAKE) deps EXTRA_DEBS="$(MPI_DEBS)"
	$(MAKE) MPI=1 BUILD=build/mpi all
	$(MAKE) bench-models
	LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" LUA_CPATH="$(CURDIR)/build/mpi/?.so;;" \
	  $(LUA) bench/dist_bench.lua $(BENCH_DIST_ARGS)
