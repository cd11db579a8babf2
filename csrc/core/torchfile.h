/* torchfile.h - reading PyTorch state dicts (pytorch_model.bin, torch.save's ZIP format) without
 * Python: a ZIP reader (zip.h) and a restricted unpickler that knows only what a state dict
 * needs. Every global outside a fixed allow-list is refused by name, so loading never runs code
 * (docs/robustness.md lists the allow-list and the limits).
 *
 * The result is a ct_st_file, as if the state dict had been a safetensors file: each tensor is
 * copied contiguous (tied weights, offsets and strides into shared storages resolved) into a
 * memfd mapped MAP_PRIVATE, so the model loader's mapping rules (views, dropped pages read back)
 * hold unchanged. Entries keep the storage's dtype (F32, F16, BF16, F64, I64, ...). */
#ifndef CT_TORCHFILE_H
#define CT_TORCHFILE_H

#include "safetensors.h"

#define CT_TORCH_MAX_PICKLE (64u << 20)  /* data.pkl */
#define CT_TORCH_MAX_VALUES (1 << 22)    /* objects the unpickler creates */

/* Open path (a torch.save ZIP archive). Messages start with path. */
int ct_torch_open(const char *path, ct_st_file *f, ct_err *e);
/* The same on bytes in memory (named path in messages); f does not point into buf. The bytes
 * written out are limited to 16 x len + 1 MB (tied weights are copied once per tensor). */
int ct_torch_parse(const char *path, const uint8_t *buf, uint64_t len, ct_st_file *f, ct_err *e);

#endif
