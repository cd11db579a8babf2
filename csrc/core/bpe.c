/* bpe.c - CLIP's byte-level BPE tokenizer, exact to Hugging Face's fast CLIP
 * tokenizer (CT_BPE_HF) and, without ftfy, to openai/CLIP's
 * simple_tokenizer.py (CT_BPE_OPENAI).  See bpe.h and docs/tokenizer.md.
 *
 * Unicode data comes from utf8proc (categories, bidi classes, simple case
 * mappings, case folding, NFC) -- no Unicode tables are typed here.  The few
 * documented exceptions below (one SpecialCasing entry, the Word_Break
 * members of Case_Ignorable, the Other_Uppercase/Other_Lowercase characters
 * without case mappings, and one quirk of Python's `regex` module) were
 * checked against Python 3.11 (Unicode 14) for every code point.
 *
 * Layout: small containers; vocab/merge/cache hash maps; loading; UTF-8;
 * character classes; the two normalizers; the split; BPE; encode; decode.
 */
#include "bpe.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <utf8proc.h>

#include "html_entities.h"

#define VOCAB_FILE_MAX ((size_t)256 << 20)
#define MERGES_FILE_MAX ((size_t)256 << 20)
#define CACHE_CAP 65536      /* slots; a power of two */
#define CACHE_MAX_ENTRIES 32768
#define CACHE_MAX_KEY 256    /* longer pieces are not cached */

static const char BOS_TEXT[] = "<|startoftext|>";
static const char EOS_TEXT[] = "<|endoftext|>";
#define EOW "</w>"
#define EOW_LEN 4

/* ------------------------------------------------------------------------ */
/* growable arrays                                                          */

typedef struct {
  uint32_t *v;
  size_t n, cap;
} u32vec;
typedef struct {
  int32_t *v;
  size_t n, cap;
} i32vec;
typedef struct {
  char *v;
  size_t n, cap;
} bytevec;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 16;
  while (c < need) {
    if (c > SIZE_MAX / 2 / elem) return -1;
    c *= 2;
  }
  void *q = realloc(*p, c * elem);
  if (!q) return -1;
  *p = q;
  *cap = c;
  return 0;
}

static int u32_reserve(u32vec *a, size_t need) {
  return grow((void **)&a->v, &a->cap, need, sizeof *a->v);
}
static int u32_push(u32vec *a, uint32_t x) {
  if (a->n == a->cap && u32_reserve(a, a->n + 1)) return -1;
  a->v[a->n++] = x;
  return 0;
}
static int i32_push(i32vec *a, int32_t x) {
  if (a->n == a->cap && grow((void **)&a->v, &a->cap, a->n + 1, sizeof *a->v)) return -1;
  a->v[a->n++] = x;
  return 0;
}
static int i32_append(i32vec *a, const int32_t *x, size_t k) {
  if (grow((void **)&a->v, &a->cap, a->n + k, sizeof *a->v)) return -1;
  if (k) memcpy(a->v + a->n, x, k * sizeof *x);
  a->n += k;
  return 0;
}
static int bytes_append(bytevec *a, const void *x, size_t k) {
  if (grow((void **)&a->v, &a->cap, a->n + k + 1, 1)) return -1;
  if (k) memcpy(a->v + a->n, x, k);
  a->n += k;
  a->v[a->n] = 0;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* hashing                                                                  */

static uint64_t hash_bytes(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 1469598103934665603ULL; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= s[i];
    h *= 1099511628211ULL;
  }
  h ^= h >> 29;
  return h ? h : 1; /* 0 marks an empty slot */
}

static uint64_t hash_u64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb3fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

/* vocab: token string -> id (keys point into t->arena) */
typedef struct {
  uint64_t h;
  const char *key;
  uint32_t len;
  int32_t id;
} vslot;

/* merges: (left id, right id) -> rank, merged id */
typedef struct {
  uint64_t key; /* (left << 32 | right) + 1; 0 = empty */
  int32_t rank, id;
} mslot;

/* cache: piece bytes -> ids.  blk holds nids int32 ids, then the key. */
typedef struct {
  uint64_t h;
  uint32_t klen, nids;
  int32_t *blk;
} cslot;

/* a pending merge for the BPE priority queue */
typedef struct {
  int32_t rank, pos, id;
} qent;

struct ct_bpe {
  char *arena;         /* all token strings, NUL-separated */
  const char **tok;    /* id -> token string (NULL for ids not in vocab) */
  uint32_t *tok_len;
  size_t n_ids;        /* largest id + 1 */
  vslot *vocab;
  size_t vocab_cap;    /* power of two */
  mslot *merges;
  size_t merges_cap;   /* power of two */
  size_t n_merges;
  int32_t byte_id[256], byte_eow_id[256];
  unsigned char char_byte_ok[324]; /* byte-level char -> byte (decode) */
  unsigned char char_byte[324];
  int32_t bos, eos;
  cslot *cache;
  size_t cache_n;
  /* scratch, reused across calls */
  u32vec cp, cp2, cp3;
  bytevec piece;
  i32vec ids;
  int32_t *sym_id, *sym_prev, *sym_next;
  size_t sym_cap;
  qent *heap;
  size_t heap_cap;
};

static int32_t vocab_get(const ct_bpe *t, const char *s, size_t n) {
  uint64_t h = hash_bytes(s, n);
  size_t mask = t->vocab_cap - 1;
  for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
    const vslot *v = &t->vocab[i];
    if (!v->h) return -1;
    if (v->h == h && v->len == n && memcmp(v->key, s, n) == 0) return v->id;
  }
}

/* returns 1 if inserted, 0 if the key was already there (id in *old) */
static int vocab_put(ct_bpe *t, const char *s, size_t n, int32_t id, int32_t *old) {
  uint64_t h = hash_bytes(s, n);
  size_t mask = t->vocab_cap - 1;
  for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
    vslot *v = &t->vocab[i];
    if (!v->h) {
      v->h = h;
      v->key = s;
      v->len = (uint32_t)n;
      v->id = id;
      return 1;
    }
    if (v->h == h && v->len == n && memcmp(v->key, s, n) == 0) {
      *old = v->id;
      return 0;
    }
  }
}

static const mslot *merge_get(const ct_bpe *t, int32_t a, int32_t b) {
  uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
  size_t mask = t->merges_cap - 1;
  for (size_t i = (size_t)hash_u64(key) & mask;; i = (i + 1) & mask) {
    const mslot *m = &t->merges[i];
    if (!m->key) return NULL;
    if (m->key == key) return m;
  }
}

/* later duplicates overwrite earlier ones, as in tokenizers and OpenAI's dict */
static void merge_put(ct_bpe *t, int32_t a, int32_t b, int32_t rank, int32_t id) {
  uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
  size_t mask = t->merges_cap - 1;
  for (size_t i = (size_t)hash_u64(key) & mask;; i = (i + 1) & mask) {
    mslot *m = &t->merges[i];
    if (!m->key || m->key == key) {
      if (!m->key) t->n_merges++;
      m->key = key;
      m->rank = rank;
      m->id = id;
      return;
    }
  }
}

static void cache_clear(ct_bpe *t) {
  if (!t->cache) return;
  for (size_t i = 0; i < CACHE_CAP; i++) {
    free(t->cache[i].blk);
    t->cache[i].blk = NULL;
    t->cache[i].h = 0;
  }
  t->cache_n = 0;
}

static cslot *cache_find(ct_bpe *t, const char *s, size_t n, uint64_t h) {
  size_t mask = CACHE_CAP - 1;
  for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
    cslot *c = &t->cache[i];
    if (!c->h) return c;
    if (c->h == h && c->klen == n && memcmp(c->blk + c->nids, s, n) == 0) return c;
  }
}

/* best effort: a failed allocation just means no caching */
static void cache_put(ct_bpe *t, const char *s, size_t n, uint64_t h, const int32_t *ids,
                      size_t k) {
  if (!t->cache || n > CACHE_MAX_KEY || k > CACHE_MAX_KEY) return;
  if (t->cache_n >= CACHE_MAX_ENTRIES) cache_clear(t);
  cslot *c = cache_find(t, s, n, h);
  if (c->h) return;
  int32_t *blk = malloc(k * sizeof *ids + n + 1);
  if (!blk) return;
  memcpy(blk, ids, k * sizeof *ids);
  memcpy(blk + k, s, n);
  c->h = h;
  c->klen = (uint32_t)n;
  c->nids = (uint32_t)k;
  c->blk = blk;
  t->cache_n++;
}

/* ------------------------------------------------------------------------ */
/* loading                                                                  */

/* GPT-2's bytes_to_unicode(): printable bytes map to themselves, the other
 * 68 to U+0100.. in byte order. */
static uint32_t byte_to_char(int b) {
  if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
    return (uint32_t)b;
  int k = 0;
  for (int x = 0; x < b; x++)
    if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) k++;
  return 256u + (uint32_t)k;
}

static size_t utf8_put(uint32_t c, char *out) {
  if (c < 0x80) {
    out[0] = (char)c;
    return 1;
  }
  if (c < 0x800) {
    out[0] = (char)(0xC0 | (c >> 6));
    out[1] = (char)(0x80 | (c & 0x3F));
    return 2;
  }
  if (c < 0x10000) {
    out[0] = (char)(0xE0 | (c >> 12));
    out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[2] = (char)(0x80 | (c & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (c >> 18));
  out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
  out[3] = (char)(0x80 | (c & 0x3F));
  return 4;
}

static int load_vocab(ct_bpe *t, const char *path, ct_err *e) {
  size_t len = 0;
  char *buf = ct_read_file(path, &len, VOCAB_FILE_MAX, e);
  if (!buf) return -1;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
  if (!root) {
    size_t at = (end && end >= buf && end <= buf + len) ? (size_t)(end - buf) : 0;
    ct_errf(e, "%s: invalid JSON near byte %zu (expected an object of token -> id)", path, at);
    free(buf);
    return -1;
  }
  int rc = -1;
  if (!cJSON_IsObject(root)) {
    ct_errf(e, "%s: expected a JSON object of token -> id", path);
    goto done;
  }
  size_t count = 0, bytes = 0;
  int64_t max_id = -1;
  for (cJSON *it = root->child; it; it = it->next) {
    if (!it->string) {
      ct_errf(e, "%s: entry without a key", path);
      goto done;
    }
    double d = it->valuedouble;
    if (!cJSON_IsNumber(it) || d != d || d < 0 || d > (double)INT32_MAX - 1 || d != (double)(int64_t)d) {
      ct_errf(e, "%s: token \"%.60s\" has id that is not a non-negative integer", path, it->string);
      goto done;
    }
    if ((int64_t)d > max_id) max_id = (int64_t)d;
    count++;
    bytes += strlen(it->string) + 1;
  }
  if (count == 0) {
    ct_errf(e, "%s: empty vocabulary", path);
    goto done;
  }
  t->n_ids = (size_t)max_id + 1;
  t->arena = malloc(bytes);
  t->tok = calloc(t->n_ids, sizeof *t->tok);
  t->tok_len = calloc(t->n_ids, sizeof *t->tok_len);
  t->vocab_cap = 16;
  while (t->vocab_cap < count * 2) t->vocab_cap *= 2;
  t->vocab = calloc(t->vocab_cap, sizeof *t->vocab);
  if (!t->arena || !t->tok || !t->tok_len || !t->vocab) {
    ct_errf(e, "%s: out of memory (%zu tokens)", path, count);
    goto done;
  }
  char *p = t->arena;
  for (cJSON *it = root->child; it; it = it->next) {
    size_t n = strlen(it->string);
    int32_t id = (int32_t)it->valuedouble, old = -1;
    memcpy(p, it->string, n + 1);
    if (!vocab_put(t, p, n, id, &old)) {
      ct_errf(e, "%s: token \"%.60s\" appears twice", path, p);
      goto done;
    }
    if (t->tok[id]) {
      ct_errf(e, "%s: id %d is given to both \"%.60s\" and \"%.60s\"", path, (int)id, t->tok[id], p);
      goto done;
    }
    t->tok[id] = p;
    t->tok_len[id] = (uint32_t)n;
    p += n + 1;
  }
  /* the 256 byte characters, alone and as word ends */
  for (int b = 0; b < 256; b++) {
    char s[8 + EOW_LEN];
    size_t k = utf8_put(byte_to_char(b), s);
    t->byte_id[b] = vocab_get(t, s, k);
    memcpy(s + k, EOW, EOW_LEN);
    t->byte_eow_id[b] = vocab_get(t, s, k + EOW_LEN);
    if (t->byte_id[b] < 0 || t->byte_eow_id[b] < 0) {
      s[k] = 0;
      ct_errf(e, "%s: missing the byte-level token \"%s\"%s for byte 0x%02X (not a CLIP vocabulary?)",
              path, s, t->byte_id[b] < 0 ? "" : EOW, b);
      goto done;
    }
    uint32_t c = byte_to_char(b);
    t->char_byte_ok[c] = 1;
    t->char_byte[c] = (unsigned char)b;
  }
  t->bos = vocab_get(t, BOS_TEXT, sizeof BOS_TEXT - 1);
  t->eos = vocab_get(t, EOS_TEXT, sizeof EOS_TEXT - 1);
  if (t->bos < 0 || t->eos < 0) {
    ct_errf(e, "%s: missing the special token \"%s\"", path, t->bos < 0 ? BOS_TEXT : EOS_TEXT);
    goto done;
  }
  rc = 0;
done:
  cJSON_Delete(root);
  free(buf);
  return rc;
}

static int load_merges(ct_bpe *t, const char *path, ct_err *e) {
  size_t len = 0;
  char *buf = ct_read_file(path, &len, MERGES_FILE_MAX, e);
  if (!buf) return -1;
  size_t lines = 1;
  for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
  t->merges_cap = 16;
  while (t->merges_cap < lines * 2) t->merges_cap *= 2;
  t->merges = calloc(t->merges_cap, sizeof *t->merges);
  if (!t->merges) {
    free(buf);
    return ct_errf(e, "%s: out of memory (%zu lines)", path, lines);
  }
  int rc = -1;
  int32_t rank = 0;
  size_t lineno = 0;
  char *s = buf, *end = buf + len;
  while (s < end) {
    char *nl = memchr(s, '\n', (size_t)(end - s));
    char *le = nl ? nl : end;
    lineno++;
    size_t n = (size_t)(le - s);
    if (n && s[n - 1] == '\r') n--;
    if (n >= 8 && memcmp(s, "#version", 8) == 0) {
      s = le + 1;
      continue;
    }
    if (n == 0 && !nl) break; /* no newline at the end */
    if (n == 0 && le + 1 >= end) break; /* final empty line */
    char *sp = memchr(s, ' ', n);
    if (!sp || sp == s || sp == s + n - 1 || memchr(sp + 1, ' ', (size_t)(s + n - sp - 1))) {
      ct_errf(e, "%s:%zu: expected two tokens separated by one space, got \"%.*s\"", path, lineno,
              (int)(n > 80 ? 80 : n), s);
      goto done;
    }
    size_t na = (size_t)(sp - s), nb = n - na - 1;
    int32_t a = vocab_get(t, s, na), b = vocab_get(t, sp + 1, nb);
    if (a < 0 || b < 0) {
      ct_errf(e, "%s:%zu: token \"%.*s\" is not in vocab.json", path, lineno,
              (int)((a < 0 ? na : nb) > 80 ? 80 : (a < 0 ? na : nb)), a < 0 ? s : sp + 1);
      goto done;
    }
    char tmp[1024];
    if (na + nb > sizeof tmp) {
      ct_errf(e, "%s:%zu: merge too long", path, lineno);
      goto done;
    }
    memcpy(tmp, s, na);
    memcpy(tmp + na, sp + 1, nb);
    int32_t m = vocab_get(t, tmp, na + nb);
    if (m < 0) {
      ct_errf(e, "%s:%zu: merged token \"%.*s\" is not in vocab.json", path, lineno,
              (int)(na + nb > 80 ? 80 : na + nb), tmp);
      goto done;
    }
    if (rank == INT32_MAX) {
      ct_errf(e, "%s: too many merges", path);
      goto done;
    }
    merge_put(t, a, b, rank++, m);
    s = le + 1;
  }
  if (rank == 0) {
    ct_errf(e, "%s: no merges found", path);
    goto done;
  }
  rc = 0;
done:
  free(buf);
  return rc;
}

void ct_bpe_free(ct_bpe *t) {
  if (!t) return;
  cache_clear(t);
  free(t->cache);
  free(t->arena);
  free(t->tok);
  free(t->tok_len);
  free(t->vocab);
  free(t->merges);
  free(t->cp.v);
  free(t->cp2.v);
  free(t->cp3.v);
  free(t->piece.v);
  free(t->ids.v);
  free(t->sym_id);
  free(t->sym_prev);
  free(t->sym_next);
  free(t->heap);
  free(t);
}

ct_bpe *ct_bpe_load(const char *vocab_json_path, const char *merges_txt_path, ct_err *e) {
  if (!vocab_json_path || !merges_txt_path) {
    ct_errf(e, "tokenizer: vocab.json and merges.txt paths are required");
    return NULL;
  }
  ct_bpe *t = calloc(1, sizeof *t);
  if (!t) {
    ct_errf(e, "tokenizer: out of memory");
    return NULL;
  }
  if (load_vocab(t, vocab_json_path, e) || load_merges(t, merges_txt_path, e)) {
    ct_bpe_free(t);
    return NULL;
  }
  t->cache = calloc(CACHE_CAP, sizeof *t->cache); /* NULL: no cache, still works */
  return t;
}

int32_t ct_bpe_bos(const ct_bpe *t) { return t->bos; }
int32_t ct_bpe_eos(const ct_bpe *t) { return t->eos; }
size_t ct_bpe_vocab_size(const ct_bpe *t) { return t->n_ids; }

int32_t ct_bpe_token_to_id(const ct_bpe *t, const char *tok, size_t len) {
  return vocab_get(t, tok, len);
}

const char *ct_bpe_id_to_token(const ct_bpe *t, int32_t id, size_t *len) {
  if (id < 0 || (size_t)id >= t->n_ids || !t->tok[id]) return NULL;
  if (len) *len = t->tok_len[id];
  return t->tok[id];
}

/* ------------------------------------------------------------------------ */
/* UTF-8 in                                                                 */

/* Strict RFC 3629 decoding into out (appending).  Rejects stray continuation
 * bytes, truncated sequences, overlong forms, surrogates and values above
 * U+10FFFF, naming the byte offset. */
static int utf8_decode(const char *text, size_t len, u32vec *out, ct_err *e) {
  const unsigned char *s = (const unsigned char *)text;
  if (u32_reserve(out, out->n + len + 1)) return ct_errf(e, "tokenizer: out of memory");
  size_t i = 0;
  while (i < len) {
    unsigned c = s[i];
    if (c < 0x80) {
      out->v[out->n++] = c;
      i++;
      continue;
    }
    int k;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF) {
      k = 1, cp = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
      k = 2, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
      k = 3, cp = c & 0x07, min = 0x10000;
    } else if (c >= 0x80 && c <= 0xBF) {
      return ct_errf(e, "tokenizer: invalid UTF-8 at byte %zu: unexpected continuation byte 0x%02X",
                     i + 1, c);
    } else {
      return ct_errf(e, "tokenizer: invalid UTF-8 at byte %zu: byte 0x%02X never appears in UTF-8%s",
                     i + 1, c, (c == 0xC0 || c == 0xC1) ? " (overlong encoding)" : "");
    }
    if (len - i <= (size_t)k) {
      for (size_t j = i + 1; j < len; j++)
        if ((s[j] & 0xC0) != 0x80)
          return ct_errf(e, "tokenizer: invalid UTF-8 at byte %zu: sequence starting with 0x%02X "
                            "is cut short by 0x%02X", j + 1, c, s[j]);
      return ct_errf(e, "tokenizer: invalid UTF-8 at byte %zu: truncated sequence at end of text "
                        "(lead byte 0x%02X)", i + 1, c);
    }
    for (int j = 1; j <= k; j++) {
      unsigned d = s[i + (size_t)j];
      if ((d & 0xC0) != 0x80)
        return ct_errf(e, "tokenizer: invalid UTF-8 at byte %zu: sequence starting with 0x%02X "
                          "is cut short by 0x%02X", i + (size_t)j + 1, c, d);
      cp = (cp << 6) | (d & 0x3F);
    }
    if (cp < min)
      return ct_errf(e, "tokenizer: invalid UTF-8 at byte %zu: overlong encoding of U+%04X", i + 1,
                     (unsigned)cp);
    if (cp >= 0xD800 && cp <= 0xDFFF)
      return ct_errf(e, "tokenizer: invalid UTF-8 at byte %zu: encoded surrogate U+%04X", i + 1,
                     (unsigned)cp);
    if (cp > 0x10FFFF)
      return ct_errf(e, "tokenizer: invalid UTF-8 at byte %zu: code point above U+10FFFF", i + 1);
    out->v[out->n++] = cp;
    i += (size_t)k + 1;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* character classes                                                        */

static int cat(uint32_t c) { return utf8proc_category((utf8proc_int32_t)c); }

/* \s of both regex engines (Oniguruma in tokenizers, `regex` in OpenAI's
 * code) = the White_Space property: U+0009..U+000D, U+0085 and the
 * categories Zs, Zl, Zp.  Not U+001C..U+001F, not U+200B, not U+FEFF. */
static int is_ws(uint32_t c) {
  if (c < 0x80) return (c >= 9 && c <= 13) || c == ' ';
  if (c == 0x85) return 1;
  int k = cat(c);
  return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}

/* Python's str.isspace()/str.strip(): bidirectional class WS, B or S, or
 * category Zs (CPython's makeunicodedata.py).  = White_Space + U+001C..1F. */
static int is_pyspace(uint32_t c) {
  if (c < 0x80) return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20);
  const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)c);
  return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
         p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

static int is_letter(uint32_t c) {
  if (c < 0x80) return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
  int k = cat(c);
  return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

static int is_number(uint32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  int k = cat(c);
  return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

/* OpenAI's pattern is compiled with re.IGNORECASE by the `regex` module.
 * Checked over every code point: [\p{L}]+ and [\p{N}] match exactly as
 * without the flag, but U+0345 COMBINING GREEK YPOGEGRAMMENI (Mn, whose case
 * folding is the letter iota) then matches neither [\p{L}] nor
 * [^\s\p{L}\p{N}], so the split silently drops it.  (A regex module quirk;
 * documented in docs/tokenizer.md.) */
static int is_other(uint32_t c, int mode) {
  if (is_ws(c) || is_letter(c) || is_number(c)) return 0;
  return !(mode == CT_BPE_OPENAI && c == 0x345);
}

/* Full lowercase mapping of one character, as Rust's char::to_lowercase()
 * (tokenizers' Lowercase) and Python's str.lower().  utf8proc_tolower() is
 * the simple mapping; the only unconditional entry of SpecialCasing.txt that
 * lowercases to more than one character is U+0130 LATIN CAPITAL LETTER I
 * WITH DOT ABOVE -> U+0069 U+0307 (checked in Python for every code point).
 * Final sigma is context-dependent and handled by the caller. */
static int lower_full(uint32_t c, uint32_t out[2]) {
  if (c < 0x80) {
    out[0] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
    return 1;
  }
  if (c == 0x130) {
    out[0] = 'i';
    out[1] = 0x307;
    return 2;
  }
  out[0] = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
  return 1;
}

/* Case_Ignorable (DerivedCoreProperties): categories Mn, Me, Cf, Lm, Sk,
 * plus Word_Break MidLetter, MidNumLet and Single_Quote, which utf8proc does
 * not expose -- those 17 characters (Unicode 14 WordBreakProperty.txt) are
 * listed here. */
static int is_case_ignorable(uint32_t c) {
  static const uint32_t wb[] = {0x27,   0x2E,   0x3A,   0xB7,   0x387,  0x55F,
                                0x5F4,  0x2018, 0x2019, 0x2024, 0x2027, 0xFE13,
                                0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
  for (size_t i = 0; i < sizeof wb / sizeof wb[0]; i++)
    if (wb[i] == c) return 1;
  int k = cat(c);
  return k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_ME || k == UTF8PROC_CATEGORY_CF ||
         k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_SK;
}

/* Cased (DerivedCoreProperties) = Lu, Ll, Lt, Other_Lowercase,
 * Other_Uppercase.  Most Other_* characters have case mappings (circled
 * letters, Roman numerals) or are Lm (then Case_Ignorable, which wins in the
 * Final_Sigma test); the ones with neither, listed here, are U+00AA, U+00BA
 * and the squared/negative squared Latin capitals U+1F130..U+1F189. */
static int is_cased(uint32_t c) {
  int k = cat(c);
  if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT) return 1;
  if (c == 0xAA || c == 0xBA || (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
      (c >= 0x1F170 && c <= 0x1F189))
    return 1;
  utf8proc_int32_t x = (utf8proc_int32_t)c;
  return utf8proc_tolower(x) != x || utf8proc_toupper(x) != x || utf8proc_totitle(x) != x;
}

/* Python's str.lower() turns U+03A3 into final sigma U+03C2 when
 *   \p{Cased} \p{Case_Ignorable}* U+03A3 !(\p{Case_Ignorable}* \p{Cased})
 * (CPython unicodeobject.c handle_capital_sigma).  Rust's char-wise
 * lowercase in tokenizers never does this. */
static int final_sigma(const uint32_t *s, size_t n, size_t i) {
  size_t j = i;
  while (j > 0 && is_case_ignorable(s[j - 1])) j--;
  if (j == 0 || !is_cased(s[j - 1])) return 0;
  j = i + 1;
  while (j < n && is_case_ignorable(s[j])) j++;
  return j == n || !is_cased(s[j]);
}

/* ------------------------------------------------------------------------ */
/* HF normalizer: NFC, \s+ -> " ", per-character lowercase                  */

static int normalize_hf(ct_bpe *t, const char *text, size_t len, u32vec *out, ct_err *e) {
  t->cp.n = 0;
  if (utf8_decode(text, len, &t->cp, e)) return -1; /* validates */
  out->n = 0;
  if (len == 0) return 0;
  /* NFC via utf8proc: canonical decomposition + reordering, then composition */
  u32vec *d = &t->cp3;
  const utf8proc_option_t opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
  size_t want = t->cp.n + 8;
  for (;;) {
    if (u32_reserve(d, want)) return ct_errf(e, "tokenizer: out of memory");
    utf8proc_ssize_t r = utf8proc_decompose((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len,
                                            (utf8proc_int32_t *)d->v, (utf8proc_ssize_t)d->cap, opt);
    if (r < 0) return ct_errf(e, "tokenizer: NFC failed: %s", utf8proc_errmsg(r));
    if ((size_t)r <= d->cap) {
      r = utf8proc_normalize_utf32((utf8proc_int32_t *)d->v, r, opt);
      if (r < 0) return ct_errf(e, "tokenizer: NFC failed: %s", utf8proc_errmsg(r));
      d->n = (size_t)r;
      break;
    }
    want = (size_t)r;
  }
  if (u32_reserve(out, d->n * 2 + 1)) return ct_errf(e, "tokenizer: out of memory");
  for (size_t i = 0; i < d->n; i++) {
    uint32_t c = d->v[i];
    if (is_ws(c)) {
      while (i + 1 < d->n && is_ws(d->v[i + 1])) i++;
      out->v[out->n++] = ' ';
      continue;
    }
    uint32_t l[2];
    int k = lower_full(c, l);
    for (int j = 0; j < k; j++) out->v[out->n++] = l[j];
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* OpenAI normalizer: html.unescape twice, strip, \s+ -> " ", strip, lower  */

static int find_entity(const char *name) {
  int lo = 0, hi = CT_HTML5_COUNT - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    int r = strcmp(ct_html5_entities[mid].name, name);
    if (r == 0) return mid;
    if (r < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

static int push_utf8_str(u32vec *out, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    uint32_t c;
    int k;
    if (*p < 0x80) c = *p, k = 1;
    else if (*p < 0xE0) c = *p & 0x1F, k = 2;
    else if (*p < 0xF0) c = *p & 0x0F, k = 3;
    else c = *p & 0x07, k = 4;
    for (int j = 1; j < k; j++) c = (c << 6) | (p[j] & 0x3F);
    if (u32_push(out, c)) return -1;
    p += k;
  }
  return 0;
}

/* Python html._replace_charref for a numeric reference */
static int push_charref(u32vec *out, uint32_t num) {
  for (size_t i = 0; i < CT_HTML_INVALID_CHARREFS_COUNT; i++)
    if (ct_html_invalid_charrefs[i][0] == num) return u32_push(out, ct_html_invalid_charrefs[i][1]);
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return u32_push(out, 0xFFFD);
  for (size_t i = 0; i < CT_HTML_INVALID_CODEPOINTS_COUNT; i++)
    if (ct_html_invalid_codepoints[i] == num) return 0;
  return u32_push(out, num);
}

static int hexval(uint32_t c) {
  if (c >= '0' && c <= '9') return (int)(c - '0');
  if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
  if (c >= 'A' && c <= 'F') return (int)(c - 'A' + 10);
  return -1;
}

/* Python's html.unescape(): re.sub of
 *   &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)
 * with html._replace_charref (named references: exact name, else the
 * longest prefix of at least 2 characters that is a name). */
static int html_unescape(const u32vec *in, u32vec *out) {
  out->n = 0;
  const uint32_t *s = in->v;
  size_t n = in->n;
  for (size_t i = 0; i < n;) {
    if (s[i] != '&') {
      if (u32_push(out, s[i++])) return -1;
      continue;
    }
    if (i + 1 < n && s[i + 1] == '#') {
      size_t j = i + 2;
      int base = 10;
      if (j < n && (s[j] == 'x' || s[j] == 'X') && j + 1 < n && hexval(s[j + 1]) >= 0) {
        base = 16;
        j++;
      }
      if (j < n && (base == 16 ? hexval(s[j]) >= 0 : (s[j] >= '0' && s[j] <= '9'))) {
        uint32_t num = 0;
        for (; j < n; j++) {
          int v = base == 16 ? hexval(s[j]) : (s[j] >= '0' && s[j] <= '9') ? (int)(s[j] - '0') : -1;
          if (v < 0) break;
          if (num <= 0x10FFFF) num = num * (uint32_t)base + (uint32_t)v; /* saturates above */
        }
        if (num > 0x10FFFF) num = 0x110000;
        if (j < n && s[j] == ';') j++;
        if (push_charref(out, num)) return -1;
        i = j;
        continue;
      }
      if (u32_push(out, '&')) return -1; /* "&#" with no digits: no match */
      i++;
      continue;
    }
    size_t j = i + 1;
    while (j < n && j - (i + 1) < 32 && s[j] != '\t' && s[j] != '\n' && s[j] != '\f' &&
           s[j] != ' ' && s[j] != '<' && s[j] != '&' && s[j] != '#' && s[j] != ';')
      j++;
    if (j == i + 1) {
      if (u32_push(out, s[i++])) return -1;
      continue;
    }
    if (j < n && s[j] == ';') j++;
    size_t len = j - (i + 1); /* the name s[i+1 .. j), ';' included */
    char name[CT_HTML5_NAME_MAX + 2];
    size_t ascii = 0; /* leading ASCII characters of the name */
    while (ascii < len && ascii < sizeof name - 1 && s[i + 1 + ascii] < 0x80) {
      name[ascii] = (char)s[i + 1 + ascii];
      ascii++;
    }
    int hit = -1;
    size_t used = 0;
    if (ascii == len) {
      name[len] = 0;
      hit = find_entity(name);
      used = len;
    }
    for (size_t x = len - 1; hit < 0 && x >= 2; x--) {
      if (x > ascii) continue;
      name[x] = 0;
      hit = find_entity(name);
      used = x;
    }
    if (hit >= 0) {
      if (push_utf8_str(out, ct_html5_entities[hit].value)) return -1;
      for (size_t k = i + 1 + used; k < j; k++)
        if (u32_push(out, s[k])) return -1;
    } else {
      for (size_t k = i; k < j; k++)
        if (u32_push(out, s[k])) return -1;
    }
    i = j;
  }
  return 0;
}

static int normalize_openai(ct_bpe *t, const char *text, size_t len, u32vec *out, ct_err *e) {
  t->cp.n = 0;
  if (utf8_decode(text, len, &t->cp, e)) return -1;
  /* basic_clean without ftfy: html.unescape(html.unescape(text)).strip() */
  if (html_unescape(&t->cp, &t->cp2) || html_unescape(&t->cp2, &t->cp3))
    return ct_errf(e, "tokenizer: out of memory");
  const uint32_t *s = t->cp3.v;
  size_t a = 0, b = t->cp3.n;
  while (a < b && is_pyspace(s[a])) a++;
  while (b > a && is_pyspace(s[b - 1])) b--;
  /* whitespace_clean: re.sub(r'\s+', ' ', text).strip() */
  t->cp2.n = 0;
  if (u32_reserve(&t->cp2, b - a + 1)) return ct_errf(e, "tokenizer: out of memory");
  for (size_t i = a; i < b; i++) {
    if (is_ws(s[i])) {
      while (i + 1 < b && is_ws(s[i + 1])) i++;
      t->cp2.v[t->cp2.n++] = ' ';
    } else {
      t->cp2.v[t->cp2.n++] = s[i];
    }
  }
  s = t->cp2.v;
  a = 0, b = t->cp2.n;
  while (a < b && is_pyspace(s[a])) a++;
  while (b > a && is_pyspace(s[b - 1])) b--;
  /* .lower() on the whole string (Final_Sigma applies) */
  out->n = 0;
  if (u32_reserve(out, (b - a) * 2 + 1)) return ct_errf(e, "tokenizer: out of memory");
  for (size_t i = a; i < b; i++) {
    if (s[i] == 0x3A3) {
      out->v[out->n++] = final_sigma(s + a, b - a, i - a) ? 0x3C2 : 0x3C3;
      continue;
    }
    uint32_t l[2];
    int k = lower_full(s[i], l);
    for (int j = 0; j < k; j++) out->v[out->n++] = l[j];
  }
  return 0;
}

static int normalize(ct_bpe *t, const char *text, size_t len, int mode, u32vec *out, ct_err *e) {
  if (mode == CT_BPE_HF) return normalize_hf(t, text, len, out, e);
  if (mode == CT_BPE_OPENAI) return normalize_openai(t, text, len, out, e);
  return ct_errf(e, "tokenizer: unknown mode %d (expected CT_BPE_HF or CT_BPE_OPENAI)", mode);
}

/* ------------------------------------------------------------------------ */
/* the split                                                                */

/* OpenAI's literals match case-insensitively: a character matches the ASCII
 * letter p when its case folding is p (in practice: U+017F LONG S matches
 * 's', as Python's regex module does). */
static int ci_eq(uint32_t c, char p) {
  if (c == (uint32_t)(unsigned char)p) return 1;
  if (c < 0x80) return (c | 0x20) == (uint32_t)(unsigned char)p && p >= 'a' && p <= 'z';
  utf8proc_int32_t buf[4];
  int bc = 0;
  utf8proc_ssize_t k = utf8proc_decompose_char((utf8proc_int32_t)c, buf, 4, UTF8PROC_CASEFOLD, &bc);
  return k == 1 && buf[0] == (utf8proc_int32_t)(unsigned char)p;
}

static size_t lit_match(const uint32_t *s, size_t n, size_t i, const char *lit, int icase) {
  size_t k = strlen(lit);
  if (n - i < k) return 0;
  for (size_t j = 0; j < k; j++) {
    uint32_t c = s[i + j];
    if (icase ? !ci_eq(c, lit[j]) : c != (uint32_t)(unsigned char)lit[j]) return 0;
  }
  return k;
}

typedef int (*piece_cb)(ct_bpe *t, const uint32_t *s, size_t n, int32_t special, void *ud);

/* 's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ (leftmost-first
 * alternation, matches kept, the rest dropped); OpenAI mode puts
 * <\|startoftext\|>|<\|endoftext\|> first and ignores case. */
static int split(ct_bpe *t, const uint32_t *s, size_t n, int mode, piece_cb cb, void *ud) {
  static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  int oa = mode == CT_BPE_OPENAI;
  size_t i = 0;
  while (i < n) {
    uint32_t c = s[i];
    size_t k = 0;
    if (oa && c == '<') {
      k = lit_match(s, n, i, BOS_TEXT, 1);
      if (!k) k = lit_match(s, n, i, EOS_TEXT, 1);
    }
    if (!k && c == '\'')
      for (size_t m = 0; m < 7 && !k; m++) k = lit_match(s, n, i, contractions[m], oa);
    if (!k) {
      if (is_letter(c)) {
        k = 1;
        while (i + k < n && is_letter(s[i + k])) k++;
      } else if (is_number(c)) {
        k = 1;
      } else if (is_other(c, mode)) {
        k = 1;
        while (i + k < n && is_other(s[i + k], mode)) k++;
      } else {
        i++; /* whitespace (or, in OpenAI mode, U+0345): not part of any piece */
        continue;
      }
    }
    int r = cb(t, s + i, k, -1, ud);
    if (r) return r;
    i += k;
  }
  return 0;
}

/* HF: the added tokens (normalized: true) are found in the normalized text
 * first (Aho-Corasick, leftmost-longest; the two never overlap), and the
 * split runs on the text between them. */
static int pre_tokenize(ct_bpe *t, const uint32_t *s, size_t n, int mode, piece_cb cb, void *ud) {
  if (n == 0) return 0; /* s may be NULL: no pointer arithmetic on it */
  if (mode != CT_BPE_HF) return split(t, s, n, mode, cb, ud);
  size_t start = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '<') continue;
    size_t k = lit_match(s, n, i, BOS_TEXT, 0);
    int32_t id = t->bos;
    if (!k) {
      k = lit_match(s, n, i, EOS_TEXT, 0);
      id = t->eos;
    }
    if (!k) continue;
    int r = split(t, s + start, i - start, mode, cb, ud);
    if (r) return r;
    r = cb(t, s + i, k, id, ud);
    if (r) return r;
    i += k - 1;
    start = i + 1;
  }
  return split(t, s + start, n - start, mode, cb, ud);
}

/* ------------------------------------------------------------------------ */
/* BPE                                                                      */

static int q_less(const qent *a, const qent *b) {
  return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void q_push(qent *h, size_t *n, qent x) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!q_less(&x, &h[p])) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = x;
}

static qent q_pop(qent *h, size_t *n) {
  qent top = h[0], x = h[--(*n)];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    const qent *best = &x;
    if (l < *n && q_less(&h[l], best)) m = l, best = &h[l];
    if (r < *n && q_less(&h[r], best)) m = r;
    if (m == i) break;
    h[i] = h[m];
    i = m;
  }
  if (*n) h[i] = x;
  return top;
}

/* Merge the word's symbols: always the pair of lowest rank, ties left to
 * right (tokenizers' Word::merge_all).  With a merges list in which every
 * merge ranks after the merges that made its two parts -- true of CLIP's --
 * this equals OpenAI's "merge every occurrence of the best pair" loop.
 * O(n log n) in the word length. */
static int bpe_word(ct_bpe *t, const unsigned char *w, size_t n, i32vec *out, ct_err *e) {
  if (n >= (size_t)INT32_MAX / 2) return ct_errf(e, "tokenizer: word of %zu bytes is too long", n);
  if (n > t->sym_cap) {
    size_t c = n < 64 ? 64 : n;
    int32_t *a = realloc(t->sym_id, c * sizeof *a);
    if (a) t->sym_id = a;
    int32_t *b = realloc(t->sym_prev, c * sizeof *b);
    if (b) t->sym_prev = b;
    int32_t *d = realloc(t->sym_next, c * sizeof *d);
    if (d) t->sym_next = d;
    if (!a || !b || !d) return ct_errf(e, "tokenizer: out of memory");
    t->sym_cap = c;
  }
  if (grow((void **)&t->heap, &t->heap_cap, n + 1, sizeof *t->heap))
    return ct_errf(e, "tokenizer: out of memory");
  int32_t *id = t->sym_id, *prev = t->sym_prev, *next = t->sym_next;
  for (size_t i = 0; i < n; i++) {
    id[i] = i + 1 == n ? t->byte_eow_id[w[i]] : t->byte_id[w[i]];
    prev[i] = (int32_t)i - 1;
    next[i] = i + 1 == n ? -1 : (int32_t)i + 1;
  }
  size_t qn = 0;
  for (size_t i = 0; i + 1 < n; i++) {
    const mslot *m = merge_get(t, id[i], id[i + 1]);
    if (m) q_push(t->heap, &qn, (qent){m->rank, (int32_t)i, m->id});
  }
  /* each merge pops one entry and pushes up to two: grow before pushing */
  while (qn) {
    qent top = q_pop(t->heap, &qn);
    int32_t p = top.pos;
    if (id[p] < 0 || next[p] < 0) continue;
    int32_t nx = next[p];
    const mslot *m = merge_get(t, id[p], id[nx]);
    if (!m || m->id != top.id) continue; /* stale entry */
    id[p] = top.id;
    id[nx] = -1;
    next[p] = next[nx];
    if (next[nx] >= 0) prev[next[nx]] = p;
    if (grow((void **)&t->heap, &t->heap_cap, qn + 3, sizeof *t->heap))
      return ct_errf(e, "tokenizer: out of memory");
    if (prev[p] >= 0) {
      const mslot *q = merge_get(t, id[prev[p]], id[p]);
      if (q) q_push(t->heap, &qn, (qent){q->rank, prev[p], q->id});
    }
    if (next[p] >= 0) {
      const mslot *q = merge_get(t, id[p], id[next[p]]);
      if (q) q_push(t->heap, &qn, (qent){q->rank, p, q->id});
    }
  }
  for (int32_t i = 0; i >= 0; i = next[i])
    if (i32_push(out, id[i])) return ct_errf(e, "tokenizer: out of memory");
  return 0;
}

/* one piece (code points) -> UTF-8 -> ids appended to ctx->out */
typedef struct {
  i32vec *out;
  ct_err *e;
} enc_ctx;

static int encode_piece(ct_bpe *t, const uint32_t *s, size_t n, int32_t special, void *ud) {
  enc_ctx *cx = ud;
  if (special >= 0) return i32_push(cx->out, special) ? ct_errf(cx->e, "tokenizer: out of memory") : 0;
  t->piece.n = 0;
  if (grow((void **)&t->piece.v, &t->piece.cap, n * 4 + 1, 1))
    return ct_errf(cx->e, "tokenizer: out of memory");
  for (size_t i = 0; i < n; i++) t->piece.n += utf8_put(s[i], t->piece.v + t->piece.n);
  const char *w = t->piece.v;
  size_t wn = t->piece.n;
  /* OpenAI's bpe() cache starts with the two special tokens */
  if (wn == sizeof BOS_TEXT - 1 && memcmp(w, BOS_TEXT, wn) == 0)
    return i32_push(cx->out, t->bos) ? ct_errf(cx->e, "tokenizer: out of memory") : 0;
  if (wn == sizeof EOS_TEXT - 1 && memcmp(w, EOS_TEXT, wn) == 0)
    return i32_push(cx->out, t->eos) ? ct_errf(cx->e, "tokenizer: out of memory") : 0;
  uint64_t h = hash_bytes(w, wn);
  if (t->cache) {
    cslot *c = cache_find(t, w, wn, h);
    if (c->h) return i32_append(cx->out, c->blk, c->nids) ? ct_errf(cx->e, "tokenizer: out of memory") : 0;
  }
  size_t before = cx->out->n;
  if (bpe_word(t, (const unsigned char *)w, wn, cx->out, cx->e)) return -1;
  cache_put(t, w, wn, h, cx->out->v + before, cx->out->n - before);
  return 0;
}

static int encode_into(ct_bpe *t, const char *text, size_t len, int mode, i32vec *out, ct_err *e) {
  if (!text && len) return ct_errf(e, "tokenizer: NULL text");
  u32vec norm = {0};
  int rc = normalize(t, text ? text : "", len, mode, &norm, e);
  if (rc == 0) {
    enc_ctx cx = {out, e};
    rc = pre_tokenize(t, norm.v, norm.n, mode, encode_piece, &cx) ? -1 : 0;
  }
  free(norm.v);
  return rc;
}

int ct_bpe_encode(ct_bpe *t, const char *text, size_t len, int mode, int32_t **ids, size_t *n,
                  ct_err *e) {
  *ids = NULL;
  *n = 0;
  i32vec out = {0};
  if (encode_into(t, text, len, mode, &out, e)) {
    free(out.v);
    return -1;
  }
  *ids = out.v;
  *n = out.n;
  return 0;
}

int ct_bpe_encode_ctx(ct_bpe *t, const char *text, size_t len, int mode, int context_length,
                      int32_t *out, int *n, ct_err *e) {
  *n = 0;
  if (context_length < 2)
    return ct_errf(e, "tokenizer: context_length must be at least 2 (bos and eos), got %d",
                   context_length);
  t->ids.n = 0;
  if (encode_into(t, text, len, mode, &t->ids, e)) return -1;
  size_t k = t->ids.n;
  size_t room = (size_t)context_length - 2;
  if (k > room) k = room;
  out[0] = t->bos;
  if (k) memcpy(out + 1, t->ids.v, k * sizeof *out);
  out[k + 1] = t->eos;
  *n = (int)k + 2;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* inspection                                                               */

static int encode_utf8(const uint32_t *s, size_t n, bytevec *b) {
  if (grow((void **)&b->v, &b->cap, b->n + n * 4 + 1, 1)) return -1;
  for (size_t i = 0; i < n; i++) b->n += utf8_put(s[i], b->v + b->n);
  b->v[b->n] = 0;
  return 0;
}

char *ct_bpe_normalize(ct_bpe *t, const char *text, size_t len, int mode, size_t *out_len,
                       ct_err *e) {
  u32vec norm = {0};
  bytevec b = {0};
  if (normalize(t, text ? text : "", text ? len : 0, mode, &norm, e)) {
    free(norm.v);
    return NULL;
  }
  if (encode_utf8(norm.v, norm.n, &b)) {
    free(norm.v);
    free(b.v);
    ct_errf(e, "tokenizer: out of memory");
    return NULL;
  }
  free(norm.v);
  if (out_len) *out_len = b.n;
  return b.v;
}

typedef struct {
  ct_bpe_piece_fn fn;
  void *ud;
  bytevec buf;
  ct_err *e;
  int oom;
} pt_ctx;

static int pt_piece(ct_bpe *t, const uint32_t *s, size_t n, int32_t special, void *ud) {
  (void)t;
  pt_ctx *cx = ud;
  cx->buf.n = 0;
  if (encode_utf8(s, n, &cx->buf)) {
    cx->oom = 1;
    return -1;
  }
  return cx->fn(cx->buf.v, cx->buf.n, special, cx->ud);
}

int ct_bpe_pre_tokenize(ct_bpe *t, const char *text, size_t len, int mode, ct_bpe_piece_fn fn,
                        void *ud, ct_err *e) {
  u32vec norm = {0};
  if (normalize(t, text ? text : "", text ? len : 0, mode, &norm, e)) {
    free(norm.v);
    return -1;
  }
  pt_ctx cx = {fn, ud, {0}, e, 0};
  int r = pre_tokenize(t, norm.v, norm.n, mode, pt_piece, &cx);
  free(norm.v);
  free(cx.buf.v);
  if (cx.oom) return ct_errf(e, "tokenizer: out of memory");
  return r;
}

/* ------------------------------------------------------------------------ */
/* decode                                                                   */

/* bytes -> valid UTF-8, each maximal invalid subpart -> U+FFFD */
static int utf8_lossy(const unsigned char *s, size_t n, bytevec *out) {
  static const char fffd[] = "\xEF\xBF\xBD";
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t k = 0;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      if (bytes_append(out, s + i, 1)) return -1;
      i++;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) k = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
      k = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      k = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    }
    size_t j = 1;
    if (k) {
      for (; j <= k && i + j < n; j++) {
        unsigned d = s[i + j];
        unsigned l = j == 1 ? lo : 0x80, h = j == 1 ? hi : 0xBF;
        if (d < l || d > h) break;
      }
      if (j == k + 1) {
        if (bytes_append(out, s + i, k + 1)) return -1;
        i += k + 1;
        continue;
      }
    }
    if (bytes_append(out, fffd, 3)) return -1;
    i += j; /* the maximal subpart: lead byte plus the valid continuation bytes */
  }
  return 0;
}

char *ct_bpe_decode_ex(ct_bpe *t, const int32_t *ids, size_t n, int skip_special, size_t *len,
                       ct_err *e) {
  bytevec raw = {0}, txt = {0};
  for (size_t i = 0; i < n; i++) {
    int32_t id = ids[i];
    if (id < 0 || (size_t)id >= t->n_ids || !t->tok[id]) {
      free(raw.v);
      ct_errf(e, "decode: id %ld at position %zu is not in the vocabulary (0..%zu)", (long)id, i + 1,
              t->n_ids - 1);
      return NULL;
    }
    int special = id == t->bos || id == t->eos;
    if (special && skip_special) continue;
    const unsigned char *s = (const unsigned char *)t->tok[id];
    size_t k = t->tok_len[id];
    /* byte-level characters back to bytes; a token with other characters
     * (the special tokens' '<', '|' are byte characters too) stays as is */
    size_t mark = raw.n;
    int ok = 1;
    for (size_t j = 0; j < k && ok;) {
      uint32_t c;
      size_t m;
      if (s[j] < 0x80) c = s[j], m = 1;
      else if ((s[j] & 0xE0) == 0xC0 && j + 1 < k) c = ((uint32_t)(s[j] & 0x1F) << 6) | (s[j + 1] & 0x3F), m = 2;
      else c = UINT32_MAX, m = 1;
      if (c < sizeof t->char_byte_ok && t->char_byte_ok[c]) {
        if (bytes_append(&raw, &t->char_byte[c], 1)) goto oom;
      } else {
        ok = 0;
      }
      j += m;
    }
    if (!ok) {
      raw.n = mark;
      if (bytes_append(&raw, s, k)) goto oom;
    }
  }
  if (utf8_lossy((const unsigned char *)raw.v, raw.n, &txt)) goto oom;
  free(raw.v);
  raw.v = NULL;
  /* replace every "</w>" with " " (as both reference decoders do, on the text) */
  size_t w = 0;
  for (size_t r = 0; r < txt.n;) {
    if (r + EOW_LEN <= txt.n && memcmp(txt.v + r, EOW, EOW_LEN) == 0) {
      txt.v[w++] = ' ';
      r += EOW_LEN;
    } else {
      txt.v[w++] = txt.v[r++];
    }
  }
  if (!txt.v && bytes_append(&txt, "", 0)) goto oom;
  txt.n = w;
  txt.v[w] = 0;
  if (len) *len = w;
  return txt.v;
oom:
  free(raw.v);
  free(txt.v);
  ct_errf(e, "decode: out of memory");
  return NULL;
}

char *ct_bpe_decode(ct_bpe *t, const int32_t *ids, size_t n, ct_err *e) {
  return ct_bpe_decode_ex(t, ids, n, 0, NULL, e);
}
