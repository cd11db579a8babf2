/* torchfile.c - torch.save ZIP archives: a restricted unpickler for state dicts (torchfile.h).
 *
 * The unpickler is a plain loop over opcodes with explicit stacks (no recursion), values in one
 * array (tuples, lists and dicts hold indices, so shared and cyclic references cost nothing),
 * and REDUCE only for the allow-listed callables. */
#include "torchfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zip.h"

enum { V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_TUPLE, V_LIST, V_DICT, V_GLOBAL, V_STORAGE,
       V_TENSOR };
static const char *const VNAME[] = {"None", "bool", "int", "float", "str", "tuple", "list",
                                    "dict", "global", "storage", "tensor"};

enum { G_ODICT, G_REBUILD, G_PARAM, G_SIZE, G_STORAGE };
static const struct {
  const char *mod, *name;
  int kind;
  ct_dtype dt;
} GLOBALS[] = {
    {"collections", "OrderedDict", G_ODICT, CT_F32},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD, CT_F32},
    {"torch._utils", "_rebuild_parameter", G_PARAM, CT_F32},
    {"torch", "Size", G_SIZE, CT_F32},
    {"torch", "FloatStorage", G_STORAGE, CT_F32},
    {"torch", "HalfStorage", G_STORAGE, CT_F16},
    {"torch", "BFloat16Storage", G_STORAGE, CT_BF16},
    {"torch", "DoubleStorage", G_STORAGE, CT_F64},
    {"torch", "LongStorage", G_STORAGE, CT_I64},
    {"torch", "IntStorage", G_STORAGE, CT_I32},
    {"torch", "ShortStorage", G_STORAGE, CT_I16},
    {"torch", "CharStorage", G_STORAGE, CT_I8},
    {"torch", "ByteStorage", G_STORAGE, CT_U8},
    {"torch", "BoolStorage", G_STORAGE, CT_BOOL},
};
#define NGLOBALS ((int)(sizeof GLOBALS / sizeof GLOBALS[0]))

typedef struct pv {
  uint8_t t;
  int32_t n, cap; /* items (tuple, list; dict: key, value pairs) */
  int32_t *it;
  int64_t i;      /* int value; str length; global, storage or tensor index */
  const uint8_t *s;
} pv;

typedef struct storage {
  ct_dtype dt;
  int member;
  uint64_t numel;
  const uint8_t *key;
  int64_t keylen;
} storage;

typedef struct tensor {
  int storage;
  int64_t off;
  int ndim; /* may exceed CT_ST_MAXDIM: refused by name later */
  int64_t size[CT_ST_MAXDIM], stride[CT_ST_MAXDIM];
} tensor;

typedef struct P {
  const char *path;
  const ct_zip *z;
  char prefix[1024]; /* "<archive>/data/" */
  const uint8_t *p;
  size_t len, pos;
  pv *v;
  int32_t nv, capv;
  int32_t *st, nst, capst;
  int32_t *marks, nmarks, capmarks;
  int32_t *memo, nmemo, capmemo; /* nmemo: MEMOIZE's next index */
  storage *sto;
  int32_t nsto, capsto;
  tensor *ten;
  int32_t nten, capten;
  ct_err *e;
} P;

static int grow(void *pa, int32_t *cap, int64_t need, size_t es) {
  void **a = pa;
  if (need <= *cap) return 0;
  if (need > INT32_MAX / 2) return -1;
  int64_t nc = *cap ? (int64_t)*cap * 2 : 16;
  while (nc < need) nc *= 2;
  void *na = realloc(*a, (size_t)nc * es);
  if (!na) return -1;
  *a = na;
  *cap = (int32_t)nc;
  return 0;
}

static int perr(P *s, size_t at, const char *msg, const char *arg) {
  return ct_errf(s->e, "%s: data.pkl byte %zu: %s%s", s->path, at, msg, arg ? arg : "");
}

static int newv(P *s, int t, size_t at) {
  if (s->nv >= CT_TORCH_MAX_VALUES) return perr(s, at, "more objects than the limit of a state dict", NULL);
  if (grow(&s->v, &s->capv, s->nv + 1, sizeof(pv)) != 0) return perr(s, at, "out of memory", NULL);
  pv *x = &s->v[s->nv];
  memset(x, 0, sizeof *x);
  x->t = (uint8_t)t;
  return s->nv++;
}

static int push(P *s, int32_t vi, size_t at) {
  if (grow(&s->st, &s->capst, s->nst + 1, sizeof(int32_t)) != 0)
    return perr(s, at, "out of memory", NULL);
  s->st[s->nst++] = vi;
  return 0;
}

static int additem(P *s, int32_t vi, int32_t item, size_t at) {
  pv *x = &s->v[vi];
  if (grow(&x->it, &x->cap, (int64_t)x->n + 1, sizeof(int32_t)) != 0)
    return perr(s, at, "out of memory", NULL);
  x->it[x->n++] = item;
  return 0;
}

static int need(P *s, size_t n, size_t at) {
  if (s->len - s->pos < n) return perr(s, at, "truncated pickle", NULL);
  return 0;
}

static uint64_t le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

/* the stack top above the last mark, made into a tuple/list/dict's items */
static int pop_mark(P *s, size_t at, int32_t *base) {
  if (!s->nmarks) return perr(s, at, "no MARK on the stack", NULL);
  *base = s->marks[--s->nmarks];
  return 0;
}

static int str_is(const pv *x, const char *lit) {
  size_t n = strlen(lit);
  return x->t == V_STR && (size_t)x->i == n && memcmp(x->s, lit, n) == 0;
}

static int find_global(P *s, const uint8_t *mod, size_t ml, const uint8_t *nm, size_t nl,
                       size_t at) {
  for (int g = 0; g < NGLOBALS; g++)
    if (strlen(GLOBALS[g].mod) == ml && !memcmp(GLOBALS[g].mod, mod, ml) &&
        strlen(GLOBALS[g].name) == nl && !memcmp(GLOBALS[g].name, nm, nl))
      return g;
  char b[200];
  snprintf(b, sizeof b, "%.*s.%.*s", (int)(ml > 90 ? 90 : ml), (const char *)mod,
           (int)(nl > 90 ? 90 : nl), (const char *)nm);
  for (char *c = b; *c; c++)
    if ((unsigned char)*c < 32 || (unsigned char)*c > 126) *c = '?';
  return ct_errf(s->e, "%s: refuses global '%s' (only a state dict's tensors are read: loading never runs code; data.pkl byte %zu)",
                 s->path, b, at) - 1; /* -2: an error, not a global index */
}

static int get_int(const P *s, int32_t vi, int64_t *out) {
  const pv *x = &s->v[vi];
  if (x->t != V_INT && x->t != V_BOOL) return -1;
  *out = x->i;
  return 0;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) */
static int rebuild_tensor(P *s, const pv *a, size_t at) {
  if (a->n < 6 || a->n > 7 || s->v[a->it[0]].t != V_STORAGE)
    return perr(s, at, "_rebuild_tensor_v2 called with arguments other than (storage, offset, size, stride, requires_grad, hooks)", NULL);
  const pv *sz = &s->v[a->it[2]], *sd = &s->v[a->it[3]];
  tensor t;
  memset(&t, 0, sizeof t);
  t.storage = (int)s->v[a->it[0]].i;
  if (get_int(s, a->it[1], &t.off) != 0 || sz->t != V_TUPLE || sd->t != V_TUPLE || sz->n != sd->n)
    return perr(s, at, "_rebuild_tensor_v2: offset, size and stride must be an int and two tuples of ints of one length", NULL);
  t.ndim = sz->n;
  for (int d = 0; d < sz->n && d < CT_ST_MAXDIM; d++)
    if (get_int(s, sz->it[d], &t.size[d]) != 0 || get_int(s, sd->it[d], &t.stride[d]) != 0)
      return perr(s, at, "_rebuild_tensor_v2: size and stride must hold ints", NULL);
  if (grow(&s->ten, &s->capten, s->nten + 1, sizeof(tensor)) != 0) return perr(s, at, "out of memory", NULL);
  s->ten[s->nten] = t;
  int vi = newv(s, V_TENSOR, at);
  if (vi < 0) return -1;
  s->v[vi].i = s->nten++;
  return vi;
}

/* ('storage', <storage class>, key, location, numel) */
static int persistent_load(P *s, int32_t pid, size_t at) {
  const pv *t = &s->v[pid];
  if (t->t != V_TUPLE || t->n != 5 || !str_is(&s->v[t->it[0]], "storage") ||
      s->v[t->it[1]].t != V_GLOBAL || GLOBALS[s->v[t->it[1]].i].kind != G_STORAGE ||
      s->v[t->it[2]].t != V_STR || s->v[t->it[4]].t != V_INT)
    return perr(s, at, "persistent id is not ('storage', <storage type>, key, location, numel)", NULL);
  const pv *key = &s->v[t->it[2]];
  ct_dtype dt = GLOBALS[s->v[t->it[1]].i].dt;
  int64_t numel = s->v[t->it[4]].i;
  char name[1200];
  if (key->i > 100 || memchr(key->s, 0, (size_t)key->i) ||
      snprintf(name, sizeof name, "%s%.*s", s->prefix, (int)key->i, (const char *)key->s) >= (int)sizeof name)
    return perr(s, at, "storage key is not a short name", NULL);
  int m = ct_zip_find(s->z, name);
  if (m < 0)
    return ct_errf(s->e, "%s: storage '%.*s' has no member %s in the archive (data.pkl byte %zu)",
                   s->path, (int)key->i, (const char *)key->s, name, at);
  size_t es = ct_dtype_size(dt);
  if (numel < 0 || (uint64_t)numel > s->z->m[m].usize / es)
    return ct_errf(s->e, "%s: storage '%.*s' declares %lld %s elements, but its member %s holds %llu bytes (truncated or damaged)",
                   s->path, (int)key->i, (const char *)key->s, (long long)numel,
                   ct_dtype_name(dt), name, (unsigned long long)s->z->m[m].usize);
  if (grow(&s->sto, &s->capsto, s->nsto + 1, sizeof(storage)) != 0) return perr(s, at, "out of memory", NULL);
  storage *st = &s->sto[s->nsto];
  st->dt = dt;
  st->member = m;
  st->numel = (uint64_t)numel;
  st->key = key->s;
  st->keylen = key->i;
  int vi = newv(s, V_STORAGE, at);
  if (vi < 0) return -1;
  s->v[vi].i = s->nsto++;
  return vi;
}

static int reduce(P *s, int32_t fn, int32_t args, size_t at) {
  const pv *f = &s->v[fn], *a = &s->v[args];
  if (f->t != V_GLOBAL) return perr(s, at, "REDUCE of something that is not an allowed global", NULL);
  if (a->t != V_TUPLE) return perr(s, at, "REDUCE arguments are not a tuple", NULL);
  switch (GLOBALS[f->i].kind) {
  case G_ODICT:
    if (a->n != 0) return perr(s, at, "OrderedDict called with arguments", NULL);
    return newv(s, V_DICT, at);
  case G_REBUILD: return rebuild_tensor(s, a, at);
  case G_PARAM:
    if (a->n < 1 || s->v[a->it[0]].t != V_TENSOR)
      return perr(s, at, "_rebuild_parameter of something that is not a tensor", NULL);
    return a->it[0];
  case G_SIZE:
    if (a->n != 1 || s->v[a->it[0]].t != V_TUPLE) return perr(s, at, "torch.Size of a non-tuple", NULL);
    return a->it[0];
  default:
    return ct_errf(s->e, "%s: data.pkl byte %zu: global 'torch.%s' is not callable here (loading never runs code)",
                   s->path, at, GLOBALS[f->i].name);
  }
}

/* Run the pickle; *result: the value STOP returned. */
static int run(P *s, int32_t *result) {
  while (s->pos < s->len) {
    size_t at = s->pos;
    uint8_t op = s->p[s->pos++];
    int32_t vi = -1, base = 0;
    switch (op) {
    case 0x80: /* PROTO */
      if (need(s, 1, at)) return -1;
      if (s->p[s->pos] > 5) return perr(s, at, "unknown pickle protocol", NULL);
      s->pos++;
      continue;
    case 0x95: /* FRAME */
      if (need(s, 8, at)) return -1;
      s->pos += 8;
      continue;
    case '.': /* STOP */
      if (s->nst != 1 || s->nmarks) return perr(s, at, "STOP with a stack that does not hold one object", NULL);
      *result = s->st[0];
      return 0;
    case 'c': { /* GLOBAL module\nname\n */
      const uint8_t *m = s->p + s->pos, *nl1 = memchr(m, '\n', s->len - s->pos);
      if (!nl1) return perr(s, at, "truncated GLOBAL", NULL);
      const uint8_t *n = nl1 + 1, *nl2 = memchr(n, '\n', (size_t)(s->p + s->len - n));
      if (!nl2) return perr(s, at, "truncated GLOBAL", NULL);
      s->pos = (size_t)(nl2 + 1 - s->p);
      int g = find_global(s, m, (size_t)(nl1 - m), n, (size_t)(nl2 - n), at);
      if (g < 0) return -1;
      if ((vi = newv(s, V_GLOBAL, at)) < 0) return -1;
      s->v[vi].i = g;
      break;
    }
    case 0x93: { /* STACK_GLOBAL */
      if (s->nst < 2) return perr(s, at, "stack underflow", NULL);
      const pv *m = &s->v[s->st[s->nst - 2]], *n = &s->v[s->st[s->nst - 1]];
      if (m->t != V_STR || n->t != V_STR) return perr(s, at, "STACK_GLOBAL of non-strings", NULL);
      int g = find_global(s, m->s, (size_t)m->i, n->s, (size_t)n->i, at);
      if (g < 0) return -1;
      s->nst -= 2;
      if ((vi = newv(s, V_GLOBAL, at)) < 0) return -1;
      s->v[vi].i = g;
      break;
    }
    case 'q': case 'r': case 0x94: { /* BINPUT, LONG_BINPUT, MEMOIZE */
      uint64_t idx;
      if (op == 0x94) idx = (uint64_t)s->nmemo;
      else {
        int w = op == 'q' ? 1 : 4;
        if (need(s, (size_t)w, at)) return -1;
        idx = le(s->p + s->pos, w);
        s->pos += (size_t)w;
      }
      if (!s->nst) return perr(s, at, "memo of an empty stack", NULL);
      if (idx >= (1u << 22) || idx > s->len) return perr(s, at, "memo index out of range", NULL);
      if (idx >= (uint64_t)s->capmemo) {
        int32_t old = s->capmemo;
        if (grow(&s->memo, &s->capmemo, (int64_t)idx + 1, sizeof(int32_t)) != 0)
          return perr(s, at, "out of memory", NULL);
        for (int32_t k = old; k < s->capmemo; k++) s->memo[k] = -1;
      }
      s->memo[idx] = s->st[s->nst - 1];
      if (idx >= (uint64_t)s->nmemo) s->nmemo = (int32_t)idx + 1;
      continue;
    }
    case 'h': case 'j': { /* BINGET, LONG_BINGET */
      int w = op == 'h' ? 1 : 4;
      if (need(s, (size_t)w, at)) return -1;
      uint64_t idx = le(s->p + s->pos, w);
      s->pos += (size_t)w;
      if (idx >= (uint64_t)s->capmemo || s->memo[idx] < 0) return perr(s, at, "memo entry not set", NULL);
      vi = s->memo[idx];
      break;
    }
    case '(': /* MARK */
      if (grow(&s->marks, &s->capmarks, s->nmarks + 1, sizeof(int32_t)) != 0)
        return perr(s, at, "out of memory", NULL);
      s->marks[s->nmarks++] = s->nst;
      continue;
    case ')': vi = newv(s, V_TUPLE, at); if (vi < 0) return -1; break;
    case ']': vi = newv(s, V_LIST, at); if (vi < 0) return -1; break;
    case '}': vi = newv(s, V_DICT, at); if (vi < 0) return -1; break;
    case 't': case 0x85: case 0x86: case 0x87: { /* TUPLE, TUPLE1..3 */
      if (op == 't') {
        if (pop_mark(s, at, &base)) return -1;
      } else {
        int k = op - 0x84;
        if (s->nst < k) return perr(s, at, "stack underflow", NULL);
        base = s->nst - k;
      }
      if ((vi = newv(s, V_TUPLE, at)) < 0) return -1;
      for (int32_t k = base; k < s->nst; k++)
        if (additem(s, vi, s->st[k], at)) return -1;
      s->nst = base;
      break;
    }
    case 'a': case 'e': { /* APPEND, APPENDS */
      if (op == 'e') {
        if (pop_mark(s, at, &base)) return -1;
      } else base = s->nst - 1;
      if (base < 1 || s->v[s->st[base - 1]].t != V_LIST) return perr(s, at, "APPEND to a non-list", NULL);
      for (int32_t k = base; k < s->nst; k++)
        if (additem(s, s->st[base - 1], s->st[k], at)) return -1;
      s->nst = base;
      continue;
    }
    case 's': case 'u': { /* SETITEM, SETITEMS */
      if (op == 'u') {
        if (pop_mark(s, at, &base)) return -1;
      } else base = s->nst - 2;
      if (base < 1 || (s->nst - base) % 2 || s->v[s->st[base - 1]].t != V_DICT)
        return perr(s, at, "SETITEM on a non-dict", NULL);
      for (int32_t k = base; k < s->nst; k++)
        if (additem(s, s->st[base - 1], s->st[k], at)) return -1;
      s->nst = base;
      continue;
    }
    case 'X': case 0x8c: case 'T': case 'U': case 'B': case 'C': { /* strings and bytes */
      int w = op == 0x8c || op == 'U' || op == 'C' ? 1 : 4;
      if (need(s, (size_t)w, at)) return -1;
      uint64_t n = le(s->p + s->pos, w);
      s->pos += (size_t)w;
      if (n > s->len - s->pos) return perr(s, at, "string runs past the end of the pickle", NULL);
      if ((vi = newv(s, V_STR, at)) < 0) return -1;
      s->v[vi].s = s->p + s->pos;
      s->v[vi].i = (int64_t)n;
      s->pos += n;
      break;
    }
    case 'K': case 'M': case 'J': { /* BININT1, BININT2, BININT */
      int w = op == 'K' ? 1 : op == 'M' ? 2 : 4;
      if (need(s, (size_t)w, at)) return -1;
      uint64_t u = le(s->p + s->pos, w);
      s->pos += (size_t)w;
      if ((vi = newv(s, V_INT, at)) < 0) return -1;
      s->v[vi].i = op == 'J' ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
      break;
    }
    case 0x8a: { /* LONG1 */
      if (need(s, 1, at)) return -1;
      int n = s->p[s->pos++];
      if (n > 8) return perr(s, at, "integer wider than 64 bits", NULL);
      if (need(s, (size_t)n, at)) return -1;
      uint64_t u = le(s->p + s->pos, n);
      if (n && n < 8 && (s->p[s->pos + (size_t)n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n);
      s->pos += (size_t)n;
      if ((vi = newv(s, V_INT, at)) < 0) return -1;
      s->v[vi].i = (int64_t)u;
      break;
    }
    case 'G': /* BINFLOAT */
      if (need(s, 8, at)) return -1;
      s->pos += 8;
      if ((vi = newv(s, V_FLOAT, at)) < 0) return -1;
      break;
    case 'N': vi = newv(s, V_NONE, at); if (vi < 0) return -1; break;
    case 0x88: case 0x89:
      if ((vi = newv(s, V_BOOL, at)) < 0) return -1;
      s->v[vi].i = op == 0x88;
      break;
    case 'Q': /* BINPERSID */
      if (!s->nst) return perr(s, at, "stack underflow", NULL);
      if ((vi = persistent_load(s, s->st[--s->nst], at)) < 0) return -1;
      break;
    case 'R': /* REDUCE */
      if (s->nst < 2) return perr(s, at, "stack underflow", NULL);
      if ((vi = reduce(s, s->st[s->nst - 2], s->st[s->nst - 1], at)) < 0) return -1;
      s->nst -= 2;
      break;
    case 'b': { /* BUILD: state of an OrderedDict (its _metadata) or a tensor, ignored */
      if (s->nst < 2) return perr(s, at, "stack underflow", NULL);
      int t = s->v[s->st[s->nst - 2]].t;
      if (t != V_DICT && t != V_TENSOR) return perr(s, at, "BUILD of a ", VNAME[t]);
      s->nst--;
      continue;
    }
    case '0': /* POP */
      if (s->nst > 0 && (!s->nmarks || s->marks[s->nmarks - 1] < s->nst)) s->nst--;
      else if (s->nmarks) s->nmarks--;
      else return perr(s, at, "stack underflow", NULL);
      continue;
    case '1': /* POP_MARK */
      if (pop_mark(s, at, &base)) return -1;
      s->nst = base;
      continue;
    case '2': /* DUP */
      if (!s->nst) return perr(s, at, "stack underflow", NULL);
      vi = s->st[s->nst - 1];
      break;
    default: {
      char b[64];
      snprintf(b, sizeof b, "0x%02x", op);
      return perr(s, at, "unsupported pickle opcode ", b);
    }
    }
    if (push(s, vi, at)) return -1;
  }
  return perr(s, s->pos, "pickle ends without STOP (truncated)", NULL);
}

/* ------------------------------------------------------------------ output */

static int cmp_name(const void *a, const void *b) {
  return strcmp(((const ct_st_entry *)a)->name, ((const ct_st_entry *)b)->name);
}

/* Check tensor t against its storage; numel and whether it is contiguous. */
static int check_tensor(P *s, const char *name, const tensor *t, int64_t *numel, int *contig) {
  const storage *st = &s->sto[t->storage];
  if (t->ndim > CT_ST_MAXDIM)
    return ct_errf(s->e, "%s: tensor '%s' has %d dimensions (at most %d)", s->path, name, t->ndim,
                   CT_ST_MAXDIM);
  const int64_t lim = (int64_t)1 << 56;
  int64_t n = 1, last = t->off, expect = 1;
  *contig = 1;
  if (t->off < 0 || t->off > lim)
    return ct_errf(s->e, "%s: tensor '%s' has a storage offset of %lld", s->path, name, (long long)t->off);
  for (int d = t->ndim - 1; d >= 0; d--) {
    int64_t z = t->size[d], r = t->stride[d];
    if (z < 0 || r < 0 || z > lim || r > lim)
      return ct_errf(s->e, "%s: tensor '%s' has size %lld and stride %lld in dimension %d (unsupported)",
                     s->path, name, (long long)z, (long long)r, d);
    if (z && n > lim / z)
      return ct_errf(s->e, "%s: tensor '%s' has more than 2^56 elements", s->path, name);
    n *= z;
    if (z > 1 && r != expect) *contig = 0;
    if (z && expect <= lim / z) expect *= z;
    if (z > 1) {
      if ((z - 1) > (lim - last) / (r ? r : 1))
        return ct_errf(s->e, "%s: tensor '%s' reaches past element 2^56 of its storage", s->path, name);
      last += (z - 1) * r;
    }
  }
  if (n > 0 && (uint64_t)last >= st->numel)
    return ct_errf(s->e, "%s: tensor '%s' (offset %lld, strides reaching element %lld) lies outside its storage '%.*s' of %llu elements",
                   s->path, name, (long long)t->off, (long long)last, (int)st->keylen,
                   (const char *)st->key, (unsigned long long)st->numel);
  *numel = n;
  return 0;
}

static int build(P *s, int32_t root, uint64_t limit, ct_st_file *f) {
  const pv *d = &s->v[root];
  if (d->t != V_DICT)
    return ct_errf(s->e, "%s: the pickle holds a %s, not a state dict (an OrderedDict of tensors)",
                   s->path, VNAME[d->t]);
  int n = d->n / 2;
  f->entries = calloc(n ? (size_t)n : 1, sizeof(ct_st_entry));
  const uint8_t **mdata = calloc((size_t)s->z->n + 1, sizeof *mdata);
  void **mown = calloc((size_t)s->z->n + 1, sizeof *mown);
  uint8_t *contig = calloc(n ? (size_t)n : 1, 1);
  int rc = 0;
  int fd = -1;
  uint8_t *w = NULL;
  uint64_t total = 0;
  if (!f->entries || !mdata || !mown || !contig) {
    rc = ct_errf(s->e, "%s: out of memory", s->path);
    goto done;
  }
  for (int k = 0; k < n && !rc; k++) {
    const pv *key = &s->v[d->it[2 * k]], *val = &s->v[d->it[2 * k + 1]];
    if (key->t != V_STR || key->i > 1024 || memchr(key->s, 0, (size_t)key->i)) {
      rc = ct_errf(s->e, "%s: state dict key %d is not a tensor name", s->path, k + 1);
      break;
    }
    ct_st_entry *t = &f->entries[k];
    t->name = malloc((size_t)key->i + 1);
    if (!t->name) {
      rc = ct_errf(s->e, "%s: out of memory", s->path);
      break;
    }
    memcpy(t->name, key->s, (size_t)key->i);
    t->name[key->i] = 0;
    f->n++;
    if (val->t != V_TENSOR) {
      rc = ct_errf(s->e, "%s: state dict entry '%s' is a %s, not a tensor", s->path, t->name,
                   VNAME[val->t]);
      break;
    }
    const tensor *tt = &s->ten[val->i];
    int c = 1;
    if (check_tensor(s, t->name, tt, &t->numel, &c) != 0) {
      rc = -1;
      break;
    }
    contig[k] = (uint8_t)c;
    t->dtype = s->sto[tt->storage].dt;
    t->ndim = tt->ndim;
    for (int j = 0; j < tt->ndim; j++) t->shape[j] = tt->size[j];
    uint64_t bytes = (uint64_t)t->numel * ct_dtype_size(t->dtype);
    total = (total + 63) & ~(uint64_t)63;
    if (bytes > limit || total > limit - bytes) {
      rc = ct_errf(s->e, "%s: the tensors hold more than %llu bytes (16 x the file: too many tensors share storages?)",
                   s->path, (unsigned long long)limit);
      break;
    }
    t->begin = total;
    t->end = total + bytes;
    total += bytes;
  }
  if (!rc && n > 1) { /* names must be unique, as in a safetensors file */
    ct_st_entry *sorted = malloc(sizeof(ct_st_entry) * (size_t)n);
    if (!sorted) rc = ct_errf(s->e, "%s: out of memory", s->path);
    else {
      memcpy(sorted, f->entries, sizeof(ct_st_entry) * (size_t)n);
      qsort(sorted, (size_t)n, sizeof(ct_st_entry), cmp_name);
      for (int k = 1; k < n && !rc; k++)
        if (strcmp(sorted[k - 1].name, sorted[k].name) == 0)
          rc = ct_errf(s->e, "%s: state dict names tensor '%s' twice", s->path, sorted[k].name);
      free(sorted);
    }
  }
  if (rc) goto done;
  size_t maplen = total ? (size_t)total : 64;
  fd = memfd_create("clip-torch", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, (off_t)maplen) != 0) {
    rc = ct_errf(s->e, "%s: cannot create the in-memory copy: %s", s->path, strerror(errno));
    goto done;
  }
  w = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (w == MAP_FAILED) {
    w = NULL;
    rc = ct_errf(s->e, "%s: cannot map the in-memory copy: %s", s->path, strerror(errno));
    goto done;
  }
  for (int k = 0; k < n && !rc; k++) {
    const tensor *tt = &s->ten[s->v[d->it[2 * k + 1]].i];
    const storage *st = &s->sto[tt->storage];
    ct_st_entry *t = &f->entries[k];
    if (t->numel == 0) continue;
    int m = st->member;
    if (!mdata[m] &&
        ct_zip_read(s->z, m, limit, &mdata[m], &mown[m], s->e) != 0) {
      rc = -1;
      break;
    }
    size_t es = ct_dtype_size(t->dtype);
    const uint8_t *src = mdata[m];
    uint8_t *dst = w + t->begin;
    if (contig[k]) {
      memcpy(dst, src + (uint64_t)tt->off * es, (size_t)(t->end - t->begin));
      continue;
    }
    int64_t idx[CT_ST_MAXDIM] = {0};
    for (int64_t q = 0; q < t->numel; q++) {
      int64_t o = tt->off;
      for (int j = 0; j < tt->ndim; j++) o += idx[j] * tt->stride[j];
      memcpy(dst + (size_t)q * es, src + (size_t)o * es, es);
      for (int j = tt->ndim - 1; j >= 0; j--) {
        if (++idx[j] < tt->size[j]) break;
        idx[j] = 0;
      }
    }
  }
  if (rc) goto done;
  munmap(w, maplen);
  w = NULL;
  void *map = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) {
    rc = ct_errf(s->e, "%s: cannot map the in-memory copy: %s", s->path, strerror(errno));
    goto done;
  }
  f->map = map;
  f->map_len = maplen;
  f->data = map;
  f->data_len = total;
done:
  if (w) munmap(w, maplen);
  if (fd >= 0) close(fd);
  if (mown)
    for (int k = 0; k < s->z->n; k++) free(mown[k]);
  free(mown);
  free(mdata);
  free(contig);
  return rc;
}

int ct_torch_parse(const char *path, const uint8_t *buf, uint64_t len, ct_st_file *f, ct_err *e) {
  memset(f, 0, sizeof *f);
  if (!ct_zip_is_zip(buf, len)) {
    if (len >= 2 && buf[0] == 0x80 && buf[1] <= 5)
      return ct_errf(e, "%s: legacy torch.save format (PyTorch before 1.6): not supported; save it again with a recent torch.save, or as safetensors",
                     path);
    if (len >= 262 && memcmp(buf + 257, "ustar", 5) == 0)
      return ct_errf(e, "%s: legacy tar torch.save format: not supported; save it again with a recent torch.save, or as safetensors",
                     path);
    return ct_errf(e, "%s: not a torch.save file (expected a ZIP archive)", path);
  }
  ct_zip z;
  if (ct_zip_open(&z, path, buf, len, e) != 0) return -1;
  P s;
  memset(&s, 0, sizeof s);
  s.path = path;
  s.z = &z;
  s.e = e;
  int pk = -1;
  for (int i = 0; i < z.n && pk < 0; i++) {
    const char *nm = z.m[i].name, *sl = strchr(nm, '/');
    if (sl && strcmp(sl, "/data.pkl") == 0 && (size_t)(sl - nm) < 900) pk = i;
  }
  int rc = 0;
  const uint8_t *pkl = NULL;
  void *pown = NULL;
  int32_t root = -1;
  uint64_t limit = len > (UINT64_MAX - (1u << 20)) / 16 ? UINT64_MAX : 16 * len + (1u << 20);
  if (pk < 0) {
    rc = ct_errf(e, "%s: not a torch.save archive (no <name>/data.pkl member)", path);
  } else {
    snprintf(s.prefix, sizeof s.prefix, "%.*s/data/", (int)(strchr(z.m[pk].name, '/') - z.m[pk].name),
             z.m[pk].name);
    rc = ct_zip_read(&z, pk, CT_TORCH_MAX_PICKLE, &pkl, &pown, e);
  }
  if (!rc) {
    s.p = pkl;
    s.len = (size_t)z.m[pk].usize;
    rc = run(&s, &root);
  }
  if (!rc) {
    f->path = strdup(path);
    rc = f->path ? build(&s, root, limit, f) : ct_errf(e, "%s: out of memory", path);
  }
  for (int32_t k = 0; k < s.nv; k++) free(s.v[k].it);
  free(s.v);
  free(s.st);
  free(s.marks);
  free(s.memo);
  free(s.sto);
  free(s.ten);
  free(pown);
  ct_zip_close(&z);
  if (rc) ct_st_close(f);
  return rc;
}

int ct_torch_open(const char *path, ct_st_file *f, ct_err *e) {
  memset(f, 0, sizeof *f);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ct_errf(e, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return ct_errf(e, "%s: %s", path, S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
  }
  size_t size = (size_t)st.st_size;
  if (size == 0) {
    close(fd);
    return ct_errf(e, "%s: not a torch.save file (0 bytes)", path);
  }
  void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (m == MAP_FAILED) return ct_errf(e, "%s: cannot map file: %s", path, strerror(errno));
  int rc = ct_torch_parse(path, m, size, f, e);
  munmap(m, size);
  return rc;
}
