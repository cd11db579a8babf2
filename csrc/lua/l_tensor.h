/* l_tensor.h - the clip.Tensor userdata, shared by every binding file.
 *
 * A Tensor is float32, contiguous, row-major, up to CT_MAXDIM dims.
 * Owned tensors keep their bytes inside the userdata (so Lua's GC counts
 * them); views point into another object's memory and keep that object
 * alive through user value 1.
 */
#ifndef L_TENSOR_H
#define L_TENSOR_H

#include <stdint.h>

#include "lauxlib.h"
#include "lua.h"

#define CT_MAXDIM 8
#define L_TENSOR_MT "clip.Tensor"

typedef struct l_tensor {
  float *data;
  int64_t numel;
  int ndim;
  int readonly; /* 1 for views of read-only mapped memory */
  unsigned *wgen; /* views of a model parameter: its write counter (bumped by every write
                     through a binding, so packed copies know they are stale); else NULL */
  int64_t shape[CT_MAXDIM];
} l_tensor;

/* Push a new owned, zero-filled tensor; returns it (data is 64-byte aligned). */
l_tensor *l_tensor_new(lua_State *L, int ndim, const int64_t *shape);
/* Push a view of memory owned by the object at owner_idx (kept alive). */
l_tensor *l_tensor_view(lua_State *L, int owner_idx, float *data, int ndim,
                        const int64_t *shape, int readonly);
/* Call before writing into t's data: raises "tensor is read-only" for read-only views, and
 * counts the write for a model parameter's view. */
void l_tensor_writing(lua_State *L, l_tensor *t);
/* Check that idx is a Tensor; raise a Lua error otherwise. */
l_tensor *l_checktensor(lua_State *L, int idx);
/* Tensor at idx or NULL. */
l_tensor *l_totensor(lua_State *L, int idx);
/* Read a shape table {d1, d2, ...} at idx; returns ndim. */
int l_checkshape(lua_State *L, int idx, int64_t *shape);
/* "(2,3,4)" into buf. */
const char *l_shape_str(const l_tensor *t, char *buf, size_t n);

void l_tensor_open(lua_State *L);

#endif
