/* safetensors.h - reading (mapped) and writing safetensors files.
 * Format: u64 little-endian header length N, N bytes of JSON
 * {name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {...}},
 * then the data; offsets are relative to the end of the header. */
#ifndef CT_SAFETENSORS_H
#define CT_SAFETENSORS_H

#include "ct.h"

#define CT_ST_MAXDIM 8
#define CT_ST_MAX_HEADER (100u << 20) /* as the reference library */

typedef enum {
  CT_F64, CT_F32, CT_F16, CT_BF16, CT_I64, CT_I32, CT_I16, CT_I8, CT_U8,
  CT_BOOL, CT_U16, CT_U32, CT_U64, CT_F8_E4M3, CT_F8_E5M2, CT_DTYPE_COUNT
} ct_dtype;

typedef struct ct_st_entry {
  char *name;
  ct_dtype dtype;
  int ndim;
  int64_t shape[CT_ST_MAXDIM];
  int64_t numel;
  uint64_t begin, end; /* relative to data */
} ct_st_entry;

typedef struct ct_st_file {
  char *path;
  void *map;          /* whole file, MAP_PRIVATE (copy-on-write) */
  size_t map_len;
  uint8_t *data;      /* start of the data section */
  uint64_t data_len;
  int n;
  ct_st_entry *entries;
  char *metadata;     /* JSON text of __metadata__ or NULL */
} ct_st_file;

const char *ct_dtype_name(ct_dtype d);
size_t ct_dtype_size(ct_dtype d);

/* Map and validate a file: every offset and shape is checked before any
 * pointer is formed. Fills f; on failure f holds nothing to free. */
int ct_st_open(const char *path, ct_st_file *f, ct_err *e);
void ct_st_close(ct_st_file *f);
int ct_st_find(const ct_st_file *f, const char *name);
/* Pointer to the raw bytes of entry i (inside the mapping). */
void *ct_st_ptr(const ct_st_file *f, int i);
/* Convert entry i to float32 into out[numel]; -1 for dtypes that cannot. */
int ct_st_to_f32(const ct_st_file *f, int i, float *out, ct_err *e);

/* A tensor to write. dtype is CT_F32, CT_F16 or CT_BF16 (converted from f32). */
typedef struct ct_st_out {
  const char *name;
  const float *data;
  int ndim;
  int64_t shape[CT_ST_MAXDIM];
  ct_dtype dtype;
} ct_st_out;

/* Write n tensors (sorted by name as the reference library does) with an
 * optional metadata JSON object text, to path via a temporary file that is
 * renamed into place: a crash never leaves a half-written file. */
int ct_st_write(const char *path, const ct_st_out *t, int n,
                const char *metadata_json, ct_err *e);

#endif
