/* fuzz_st.h - the invariants every entry of a parsed ct_st_file must hold, whichever reader
 * made it (safetensors, pytorch_model.bin): data range, size against shape, dimensions. */
#ifndef FUZZ_ST_H
#define FUZZ_ST_H

#include "fuzz_common.h"
#include "safetensors.h"

static inline void check_st_entry(const ct_st_file *f, int i) {
  const ct_st_entry *t = &f->entries[i];
  CHECK(t->begin <= t->end && t->end <= f->data_len, "entry %d out of range", i);
  CHECK(t->end - t->begin == (uint64_t)t->numel * ct_dtype_size(t->dtype),
        "entry %d: size disagrees with shape", i);
  CHECK(t->ndim >= 0 && t->ndim <= CT_ST_MAXDIM, "entry %d: ndim %d", i, t->ndim);
}

#endif
