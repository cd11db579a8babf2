/* fuzz_tokenizer.c - CLIP's BPE tokenizer on arbitrary bytes, both text
 * pipelines (CT_BPE_HF and CT_BPE_OPENAI): UTF-8 validation, NFC, lowercase,
 * html unescape, pre-tokenization, BPE with the word cache, encode_ctx, and
 * decoding of the ids produced and of the input read as raw ids.
 *
 * bpe.c is included (not linked) so the harness can empty the word cache
 * before each input: every input starts from the same state, and the second
 * encode of each text goes through the cache that the first one filled.
 * The vocabulary is spec/fixtures/tokenizer (the real CLIP one), loaded once;
 * $CLIP_FUZZ_TOKENIZER_DIR overrides the directory.
 *
 * Oracles: ASan/UBSan; invalid UTF-8 is refused by both pipelines alike, with
 * a message that starts with "tokenizer:"; encoding twice (cold, then cached)
 * gives the same ids; every id is in the vocabulary; encode_ctx keeps bos
 * first, eos last and at most context_length ids; decode output is valid
 * UTF-8. */
#include "fuzz_common.h"

#include "bpe.c"

#ifndef CLIP_TOKENIZER_DIR
#define CLIP_TOKENIZER_DIR "spec/fixtures/tokenizer"
#endif

static ct_bpe *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *d = getenv("CLIP_FUZZ_TOKENIZER_DIR");
  if (!d || !*d) d = CLIP_TOKENIZER_DIR;
  char v[512], m[512];
  snprintf(v, sizeof v, "%s/vocab.json", d);
  snprintf(m, sizeof m, "%s/merges.txt", d);
  ct_err e;
  tok = ct_bpe_load(v, m, &e);
  if (!tok) {
    fprintf(stderr, "fuzz_tokenizer: %s\n", e.msg);
    exit(1);
  }
  return 0;
}

static int valid_utf8(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (!k || i + k > n) return 0;
    for (size_t j = 1; j < k; j++)
      if ((s[i + j] & 0xC0) != 0x80) return 0;
    i += k;
  }
  return 1;
}

static void check_ids(const int32_t *ids, size_t n) {
  for (size_t i = 0; i < n; i++)
    CHECK(ids[i] >= 0 && (size_t)ids[i] < ct_bpe_vocab_size(tok), "id %d out of range", ids[i]);
}

static void decode_ok(const int32_t *ids, size_t n, int skip) {
  ct_err e;
  size_t len = 0;
  char *s = ct_bpe_decode_ex(tok, ids, n, skip, &len, &e);
  CHECK(s, "decoding valid ids failed: %s", e.msg);
  CHECK(strlen(s) <= len && valid_utf8((const unsigned char *)s, len), "decode gave bad UTF-8");
  free(s);
}

/* returns 1 if the text was accepted */
static int one_mode(const char *text, size_t len, int mode) {
  ct_err e;
  int32_t *a = NULL, *b = NULL;
  size_t na = 0, nb = 0;
  if (ct_bpe_encode(tok, text, len, mode, &a, &na, &e) != 0) {
    check_msg(e.msg, "tokenizer:");
    free(a);
    return 0;
  }
  CHECK(ct_bpe_encode(tok, text, len, mode, &b, &nb, &e) == 0, "second encode failed: %s", e.msg);
  CHECK(na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0),
        "mode %d: cached encode differs (%zu vs %zu ids)", mode, na, nb);
  check_ids(a, na);
  decode_ok(a, na, mode);
  int32_t ctx[77];
  int nc = 0;
  CHECK(ct_bpe_encode_ctx(tok, text, len, mode, 77, ctx, &nc, &e) == 0, "encode_ctx: %s", e.msg);
  CHECK(nc >= 2 && nc <= 77 && ctx[0] == ct_bpe_bos(tok) && ctx[nc - 1] == ct_bpe_eos(tok),
        "encode_ctx gave %d ids", nc);
  CHECK((size_t)nc == (na + 2 < 77 ? na + 2 : 77) &&
            (nc == 2 || memcmp(ctx + 1, a, (size_t)(nc - 2) * sizeof *a) == 0),
        "encode_ctx disagrees with encode");
  size_t nl = 0;
  char *norm = ct_bpe_normalize(tok, text, len, mode, &nl, &e);
  CHECK(norm, "normalize failed after encode succeeded: %s", e.msg);
  CHECK(valid_utf8((const unsigned char *)norm, nl), "normalize gave bad UTF-8");
  free(norm);
  free(a);
  free(b);
  return 1;
}

/* cache_clear() without its free(NULL) calls and without coverage callbacks
 * on the 65536 slots: the same end state, a hundred times cheaper under
 * ASan + SanitizerCoverage. */
__attribute__((noinline, no_sanitize("coverage"))) static void fuzz_cache_clear(ct_bpe *t) {
  if (!t->cache) return;
  for (size_t i = 0; i < CACHE_CAP; i++)
    if (t->cache[i].h) {
      free(t->cache[i].blk);
      t->cache[i].blk = NULL;
      t->cache[i].h = 0;
    }
  t->cache_n = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_cache_clear(tok);
  const char *text = (const char *)data;
  int hf = one_mode(text, size, CT_BPE_HF);
  int oa = one_mode(text, size, CT_BPE_OPENAI);
  CHECK(hf == oa, "the pipelines disagree on whether the text is valid");
  CHECK(hf == valid_utf8(data, size) || !hf, "accepted invalid UTF-8");
  /* the input read as ids: out-of-range ids are refused, valid ones decode */
  size_t n = size / 4;
  int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
  CHECK(ids, "out of memory");
  memcpy(ids, data, n * 4);
  int bad = 0;
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 0 || (size_t)ids[i] >= ct_bpe_vocab_size(tok)) bad = 1;
  ct_err e;
  char *s = ct_bpe_decode(tok, ids, n, &e);
  if (bad) {
    CHECK(!s, "decode accepted an out-of-range id");
    check_msg(e.msg, "decode:");
  } else {
    CHECK(s, "decode failed: %s", e.msg);
    free(s);
  }
  free(ids);
  return 0;
}
