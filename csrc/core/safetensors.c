/* safetensors.c - mapped reader and atomic writer for safetensors files. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tensor.h"

static const struct {
  const char *name;
  size_t size;
} DTYPES[CT_DTYPE_COUNT] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
    {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1},
    {"U16", 2}, {"U32", 4}, {"U64", 8}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};

const char *ct_dtype_name(ct_dtype d) {
  return d < CT_DTYPE_COUNT ? DTYPES[d].name : "?";
}
size_t ct_dtype_size(ct_dtype d) { return d < CT_DTYPE_COUNT ? DTYPES[d].size : 0; }

static int parse_dtype(const char *s, ct_dtype *d) {
  for (int i = 0; i < CT_DTYPE_COUNT; i++)
    if (strcmp(s, DTYPES[i].name) == 0) {
      *d = (ct_dtype)i;
      return 0;
    }
  return -1;
}

static void free_entries(ct_st_file *f) {
  if (f->entries)
    for (int i = 0; i < f->n; i++) free(f->entries[i].name);
  free(f->entries);
  f->entries = NULL;
  f->n = 0;
}

void ct_st_close(ct_st_file *f) {
  if (!f) return;
  free_entries(f);
  if (f->map && f->map != MAP_FAILED) munmap(f->map, f->map_len);
  f->map = NULL;
  free(f->path);
  f->path = NULL;
  free(f->metadata);
  f->metadata = NULL;
}

static int cmp_begin(const void *a, const void *b) {
  const ct_st_entry *x = *(ct_st_entry *const *)a, *y = *(ct_st_entry *const *)b;
  return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int read_u64(const cJSON *j, uint64_t *v) {
  if (!cJSON_IsNumber(j)) return -1;
  double d = j->valuedouble;
  if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return -1;
  *v = (uint64_t)d;
  return 0;
}

static int parse_header(ct_st_file *f, const char *json, size_t len, ct_err *e) {
  const char *path = f->path;
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!root) return ct_errf(e, "%s: safetensors header is not valid JSON", path);
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return ct_errf(e, "%s: safetensors header is not a JSON object", path);
  }
  int count = 0;
  for (cJSON *it = root->child; it; it = it->next) count++;
  f->entries = calloc(count ? (size_t)count : 1, sizeof(ct_st_entry));
  if (!f->entries) {
    cJSON_Delete(root);
    return ct_errf(e, "%s: out of memory", path);
  }
  int rc = 0;
  for (cJSON *it = root->child; it; it = it->next) {
    if (!it->string) continue;
    if (strcmp(it->string, "__metadata__") == 0) {
      f->metadata = cJSON_PrintUnformatted(it);
      continue;
    }
    ct_st_entry *t = &f->entries[f->n];
    const char *nm = it->string;
    cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
    cJSON *off = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsObject(it) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) ||
        !cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2) {
      rc = ct_errf(e, "%s: tensor '%s': header entry needs dtype, shape and data_offsets",
                   path, nm);
      break;
    }
    if (parse_dtype(dt->valuestring, &t->dtype) != 0) {
      rc = ct_errf(e, "%s: tensor '%s': unknown dtype '%s'", path, nm, dt->valuestring);
      break;
    }
    int nd = cJSON_GetArraySize(sh);
    if (nd > CT_ST_MAXDIM) {
      rc = ct_errf(e, "%s: tensor '%s': %d dimensions (at most %d)", path, nm, nd, CT_ST_MAXDIM);
      break;
    }
    t->ndim = nd;
    uint64_t numel = 1;
    int bad = 0;
    for (int i = 0; i < nd; i++) {
      uint64_t v;
      if (read_u64(cJSON_GetArrayItem(sh, i), &v) != 0) {
        bad = 1;
        break;
      }
      t->shape[i] = (int64_t)v;
      if (v && numel > (UINT64_MAX / 16) / v) {
        bad = 1;
        break;
      }
      numel *= v;
    }
    if (bad) {
      rc = ct_errf(e, "%s: tensor '%s': invalid shape", path, nm);
      break;
    }
    t->numel = (int64_t)numel;
    if (read_u64(cJSON_GetArrayItem(off, 0), &t->begin) != 0 ||
        read_u64(cJSON_GetArrayItem(off, 1), &t->end) != 0 || t->begin > t->end) {
      rc = ct_errf(e, "%s: tensor '%s': invalid data_offsets", path, nm);
      break;
    }
    if (t->end > f->data_len) {
      rc = ct_errf(e, "%s: tensor '%s': data_offsets [%llu, %llu) out of range (data is %llu bytes; file truncated?)",
                   path, nm, (unsigned long long)t->begin, (unsigned long long)t->end,
                   (unsigned long long)f->data_len);
      break;
    }
    if (t->end - t->begin != numel * ct_dtype_size(t->dtype)) {
      rc = ct_errf(e, "%s: tensor '%s': %llu bytes for %s %llu values (expected %llu)", path,
                   nm, (unsigned long long)(t->end - t->begin), ct_dtype_name(t->dtype),
                   (unsigned long long)numel,
                   (unsigned long long)(numel * ct_dtype_size(t->dtype)));
      break;
    }
    t->name = strdup(nm);
    if (!t->name) {
      rc = ct_errf(e, "%s: out of memory", path);
      break;
    }
    f->n++;
  }
  cJSON_Delete(root);
  if (rc) return rc;
  /* overlapping tensors */
  if (f->n > 1) {
    ct_st_entry **s = malloc(sizeof(*s) * (size_t)f->n);
    if (!s) return ct_errf(e, "%s: out of memory", path);
    for (int i = 0; i < f->n; i++) s[i] = &f->entries[i];
    qsort(s, (size_t)f->n, sizeof(*s), cmp_begin);
    for (int i = 1; i < f->n; i++)
      if (s[i]->begin < s[i - 1]->end) {
        rc = ct_errf(e, "%s: tensors '%s' and '%s' overlap", path, s[i - 1]->name, s[i]->name);
        break;
      }
    free(s);
  }
  return rc;
}

int ct_st_open(const char *path, ct_st_file *f, ct_err *e) {
  memset(f, 0, sizeof *f);
  f->path = strdup(path);
  if (!f->path) return ct_errf(e, "%s: out of memory", path);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    ct_errf(e, "%s: %s", path, strerror(errno));
    ct_st_close(f);
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ct_errf(e, "%s: %s", path, S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
    close(fd);
    ct_st_close(f);
    return -1;
  }
  size_t size = (size_t)st.st_size;
  if (size < 8) {
    ct_errf(e, "%s: not a safetensors file (%zu bytes, shorter than the 8-byte header length)",
            path, size);
    close(fd);
    ct_st_close(f);
    return -1;
  }
  void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  close(fd);
  if (m == MAP_FAILED) {
    ct_errf(e, "%s: cannot map file: %s", path, strerror(errno));
    ct_st_close(f);
    return -1;
  }
  f->map = m;
  f->map_len = size;
  const uint8_t *p = m;
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = (hl << 8) | p[i];
  if (hl > CT_ST_MAX_HEADER || hl > size - 8) {
    ct_errf(e, "%s: safetensors header length %llu is %s", path, (unsigned long long)hl,
            hl > size - 8 ? "larger than the file (truncated or not a safetensors file)"
                          : "over the 100 MB limit");
    ct_st_close(f);
    return -1;
  }
  if (hl < 2 || p[8] != '{') {
    ct_errf(e, "%s: not a safetensors file (header does not start with '{')", path);
    ct_st_close(f);
    return -1;
  }
  f->data = (uint8_t *)m + 8 + hl;
  f->data_len = size - 8 - hl;
  if (parse_header(f, (const char *)p + 8, (size_t)hl, e) != 0) {
    ct_st_close(f);
    return -1;
  }
  return 0;
}

int ct_st_find(const ct_st_file *f, const char *name) {
  for (int i = 0; i < f->n; i++)
    if (strcmp(f->entries[i].name, name) == 0) return i;
  return -1;
}

void *ct_st_ptr(const ct_st_file *f, int i) { return f->data + f->entries[i].begin; }

int ct_st_to_f32(const ct_st_file *f, int i, float *out, ct_err *e) {
  const ct_st_entry *t = &f->entries[i];
  const uint8_t *p = f->data + t->begin;
  int64_t n = t->numel;
  switch (t->dtype) {
  case CT_F32: memcpy(out, p, (size_t)n * 4); break;
  case CT_F16:
    for (int64_t k = 0; k < n; k++) {
      uint16_t h;
      memcpy(&h, p + 2 * k, 2);
      out[k] = ct_f16_to_f32(h);
    }
    break;
  case CT_BF16:
    for (int64_t k = 0; k < n; k++) {
      uint16_t h;
      memcpy(&h, p + 2 * k, 2);
      out[k] = ct_bf16_to_f32(h);
    }
    break;
  case CT_F64:
    for (int64_t k = 0; k < n; k++) {
      double d;
      memcpy(&d, p + 8 * k, 8);
      out[k] = (float)d;
    }
    break;
  case CT_U8: case CT_BOOL:
    for (int64_t k = 0; k < n; k++) out[k] = p[k];
    break;
  case CT_I8:
    for (int64_t k = 0; k < n; k++) out[k] = (int8_t)p[k];
    break;
  case CT_I16: case CT_U16:
    for (int64_t k = 0; k < n; k++) {
      uint16_t v;
      memcpy(&v, p + 2 * k, 2);
      out[k] = t->dtype == CT_I16 ? (float)(int16_t)v : (float)v;
    }
    break;
  case CT_I32: case CT_U32:
    for (int64_t k = 0; k < n; k++) {
      uint32_t v;
      memcpy(&v, p + 4 * k, 4);
      out[k] = t->dtype == CT_I32 ? (float)(int32_t)v : (float)v;
    }
    break;
  case CT_I64: case CT_U64:
    for (int64_t k = 0; k < n; k++) {
      uint64_t v;
      memcpy(&v, p + 8 * k, 8);
      out[k] = t->dtype == CT_I64 ? (float)(int64_t)v : (float)v;
    }
    break;
  default:
    return ct_errf(e, "%s: tensor '%s': dtype %s cannot be read as float32", f->path, t->name,
                   ct_dtype_name(t->dtype));
  }
  return 0;
}

/* ------------------------------------------------------------------ write */

static int cmp_out(const void *a, const void *b) {
  return strcmp((*(const ct_st_out *const *)a)->name, (*(const ct_st_out *const *)b)->name);
}

static int write_all(FILE *fp, const void *p, size_t n) {
  return fwrite(p, 1, n, fp) == n ? 0 : -1;
}

int ct_st_write(const char *path, const ct_st_out *t, int n, const char *metadata_json,
                ct_err *e) {
  const ct_st_out **s = malloc(sizeof(*s) * (size_t)(n ? n : 1));
  if (!s) return ct_errf(e, "%s: out of memory", path);
  for (int i = 0; i < n; i++) s[i] = &t[i];
  qsort(s, (size_t)n, sizeof(*s), cmp_out);
  for (int i = 1; i < n; i++)
    if (strcmp(s[i]->name, s[i - 1]->name) == 0) {
      ct_errf(e, "%s: tensor name '%s' given twice", path, s[i]->name);
      free(s);
      return -1;
    }
  cJSON *root = cJSON_CreateObject();
  char *hdr = NULL;
  int rc = -1;
  if (!root) goto oom;
  if (metadata_json) {
    cJSON *md = cJSON_Parse(metadata_json);
    if (!md || !cJSON_IsObject(md)) {
      cJSON_Delete(md);
      ct_errf(e, "%s: metadata is not a JSON object", path);
      goto done;
    }
    cJSON_AddItemToObject(root, "__metadata__", md);
  }
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    const ct_st_out *o = s[i];
    if (o->dtype != CT_F32 && o->dtype != CT_F16 && o->dtype != CT_BF16) {
      ct_errf(e, "%s: tensor '%s': cannot write dtype %s", path, o->name, ct_dtype_name(o->dtype));
      goto done;
    }
    int64_t numel = 1;
    cJSON *ent = cJSON_CreateObject(), *sh = cJSON_CreateArray(), *of = cJSON_CreateArray();
    if (!ent || !sh || !of) {
      cJSON_Delete(ent);
      cJSON_Delete(sh);
      cJSON_Delete(of);
      goto oom;
    }
    for (int d = 0; d < o->ndim; d++) {
      numel *= o->shape[d];
      cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)o->shape[d]));
    }
    uint64_t bytes = (uint64_t)numel * ct_dtype_size(o->dtype);
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + bytes)));
    cJSON_AddStringToObject(ent, "dtype", ct_dtype_name(o->dtype));
    cJSON_AddItemToObject(ent, "shape", sh);
    cJSON_AddItemToObject(ent, "data_offsets", of);
    cJSON_AddItemToObject(root, o->name, ent);
    off += bytes;
  }
  hdr = cJSON_PrintUnformatted(root);
  if (!hdr) goto oom;
  size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
  ct_atomic at;
  if (ct_atomic_open(&at, path, e) != 0) goto done;
  FILE *fp = at.f;
  uint8_t le[8];
  for (int i = 0; i < 8; i++) le[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  int werr = write_all(fp, le, 8) || write_all(fp, hdr, hl);
  for (size_t i = hl; i < padded && !werr; i++) werr = fputc(' ', fp) == EOF;
  for (int i = 0; i < n && !werr; i++) {
    const ct_st_out *o = s[i];
    int64_t numel = 1;
    for (int d = 0; d < o->ndim; d++) numel *= o->shape[d];
    if (o->dtype == CT_F32) {
      werr = write_all(fp, o->data, (size_t)numel * 4);
    } else {
      uint16_t buf[4096];
      for (int64_t k = 0; k < numel && !werr;) {
        int64_t m = numel - k < 4096 ? numel - k : 4096;
        for (int64_t j = 0; j < m; j++)
          buf[j] = o->dtype == CT_F16 ? ct_f32_to_f16(o->data[k + j]) : ct_f32_to_bf16(o->data[k + j]);
        werr = write_all(fp, buf, (size_t)m * 2);
        k += m;
      }
    }
  }
  if (ct_atomic_commit(&at, werr, e) != 0) goto done;
  rc = 0;
  goto done;
oom:
  ct_errf(e, "%s: out of memory", path);
done:
  free(hdr);
  cJSON_Delete(root);
  free(s);
  return rc;
}
