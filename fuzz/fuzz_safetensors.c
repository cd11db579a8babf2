/* fuzz_safetensors.c - the safetensors reader (ct_st_open: header length,
 * JSON header, dtypes, shapes, offsets, overlaps) and, for files it accepts,
 * every conversion to float32 and a write/read round trip of F32 tensors.
 *
 * Oracles: ASan/UBSan; a refused file gets a message that starts with its
 * path; an accepted file only has entries whose bytes lie inside the data
 * section and match shape x dtype size; F32 tensors survive ct_st_write +
 * ct_st_open bit for bit. */
#include "fuzz_common.h"
#include "fuzz_st.h"

#include "safetensors.h"

static memfile in;
static char out_path[320];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  memfile_init(&in, "fuzz.safetensors");
  snprintf(out_path, sizeof out_path, "%s/out.safetensors", make_tmpdir("st"));
  return 0;
}

#define MAX_CONVERT (1u << 22) /* values converted per entry */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  memfile_set(&in, data, size);
  ct_st_file f;
  ct_err e;
  if (ct_st_open(in.path, &f, &e) != 0) {
    check_msg(e.msg, in.path);
    return 0;
  }
  CHECK(f.map_len == size, "mapped %zu of %zu bytes", f.map_len, size);
  CHECK(f.data >= (uint8_t *)f.map && f.data + f.data_len == (uint8_t *)f.map + size,
        "data section outside the file");
  ct_st_out *outs = calloc((size_t)f.n + 1, sizeof *outs);
  float **bufs = calloc((size_t)f.n + 1, sizeof *bufs);
  CHECK(outs && bufs, "out of memory");
  int nout = 0;
  for (int i = 0; i < f.n; i++) {
    const ct_st_entry *t = &f.entries[i];
    check_st_entry(&f, i);
    CHECK(ct_st_find(&f, t->name) <= i, "find");
    if ((uint64_t)t->numel > MAX_CONVERT) continue;
    float *buf = malloc(((size_t)t->numel + 1) * sizeof(float));
    CHECK(buf, "out of memory");
    if (ct_st_to_f32(&f, i, buf, &e) != 0) {
      check_msg(e.msg, in.path);
      free(buf);
      continue;
    }
    if (t->dtype == CT_F32 && ct_st_find(&f, t->name) == i && nout < 64) {
      ct_st_out *o = &outs[nout];
      o->name = t->name;
      o->data = buf;
      o->ndim = t->ndim;
      memcpy(o->shape, t->shape, sizeof o->shape);
      o->dtype = CT_F32;
      bufs[nout++] = buf;
    } else {
      free(buf);
    }
  }
  if (nout > 0) {
    if (ct_st_write(out_path, outs, nout, f.metadata, &e) == 0) {
      ct_st_file g;
      CHECK(ct_st_open(out_path, &g, &e) == 0, "cannot read back what was written: %s", e.msg);
      CHECK(g.n == nout, "wrote %d tensors, read %d", nout, g.n);
      for (int i = 0; i < nout; i++) {
        int k = ct_st_find(&g, outs[i].name);
        CHECK(k >= 0, "tensor '%s' lost", outs[i].name);
        const ct_st_entry *t = &g.entries[k];
        CHECK(t->dtype == CT_F32 && t->ndim == outs[i].ndim, "dtype/ndim changed");
        CHECK(memcmp(ct_st_ptr(&g, k), outs[i].data, (size_t)t->numel * 4) == 0,
              "tensor '%s' changed in the round trip", outs[i].name);
      }
      ct_st_close(&g);
    } else {
      check_msg(e.msg, out_path);
    }
  }
  for (int i = 0; i < nout; i++) free(bufs[i]);
  free(bufs);
  free(outs);
  ct_st_close(&f);
  return 0;
}
