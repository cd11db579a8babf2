/* bpe.h - CLIP's byte-level BPE tokenizer (no Lua here).
 *
 * Two text pipelines share one BPE model (see docs/tokenizer.md):
 *
 *  CT_BPE_HF      transformers' CLIPTokenizerFast / tokenizers' tokenizer.json:
 *                 NFC; each run of White_Space -> " "; per-character full
 *                 lowercase; the added tokens "<|startoftext|>" and
 *                 "<|endoftext|>" (normalized: true) are matched in the
 *                 normalized text; split with
 *                 's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 *  CT_BPE_OPENAI  openai/CLIP simple_tokenizer.py without ftfy:
 *                 html.unescape twice, strip, \s+ -> " ", strip, str.lower()
 *                 (with Final_Sigma), case-insensitive split that also
 *                 matches the two special tokens.
 *
 * Each piece -> UTF-8 bytes -> GPT-2 byte-to-unicode characters, "</w>" on
 * the last one, then merges in merges.txt order (lowest rank first, all
 * occurrences left to right).
 *
 * A ct_bpe keeps a word cache, so one ct_bpe must not be used by two threads
 * at once.  Functions return 0 (or a pointer) on success and -1 (or NULL) on
 * failure with a message in e.  Nothing here exits, aborts or prints.
 */
#ifndef CT_BPE_H
#define CT_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "ct.h"

typedef struct ct_bpe ct_bpe;

enum { CT_BPE_HF = 0, CT_BPE_OPENAI = 1 };

/* Load vocab.json (token -> id) and merges.txt ("#version" line, then one
 * "a b" merge per line, best first).  Errors name the file and the reason. */
ct_bpe *ct_bpe_load(const char *vocab_json_path, const char *merges_txt_path, ct_err *e);
void ct_bpe_free(ct_bpe *t);

/* BPE ids of text WITHOUT bos/eos; *ids is malloc'd (caller frees; may be
 * NULL when *n is 0).  Invalid UTF-8 -> -1 with the byte offset. */
int ct_bpe_encode(ct_bpe *t, const char *text, size_t len, int mode, int32_t **ids,
                  size_t *n, ct_err *e);

/* bos + ids + eos, truncated to context_length (>= 2) with eos kept last;
 * writes *n (<= context_length) ids into out[context_length]. */
int ct_bpe_encode_ctx(ct_bpe *t, const char *text, size_t len, int mode, int context_length,
                      int32_t *out, int *n, ct_err *e);

int32_t ct_bpe_bos(const ct_bpe *t);
int32_t ct_bpe_eos(const ct_bpe *t);
/* number of ids: largest id in vocab.json + 1 */
size_t ct_bpe_vocab_size(const ct_bpe *t);

/* Decode ids to text: byte-level inverse with each "</w>" -> " "; special
 * tokens give their text unless skip_special.  Bytes that do not form valid
 * UTF-8 become U+FFFD (one per maximal invalid subpart, as Python's
 * errors="replace" and Rust's from_utf8_lossy).  No stripping.  malloc'd,
 * NUL-terminated, length in *len if len is not NULL. */
char *ct_bpe_decode_ex(ct_bpe *t, const int32_t *ids, size_t n, int skip_special, size_t *len,
                       ct_err *e);
/* ct_bpe_decode_ex(t, ids, n, 0, NULL, e) */
char *ct_bpe_decode(ct_bpe *t, const int32_t *ids, size_t n, ct_err *e);

/* The normalized text the split regex sees (for inspection and tests); in HF
 * mode special tokens are not yet separated.  malloc'd UTF-8, length in *len. */
char *ct_bpe_normalize(ct_bpe *t, const char *text, size_t len, int mode, size_t *out_len,
                       ct_err *e);

/* Pre-tokenization: calls fn(piece, piece_len, special_id, ud) for each piece
 * in order; special_id is the id of a special token or -1 for a piece that
 * goes through BPE.  A non-zero return from fn stops and is returned. */
typedef int (*ct_bpe_piece_fn)(const char *piece, size_t len, int32_t special_id, void *ud);
int ct_bpe_pre_tokenize(ct_bpe *t, const char *text, size_t len, int mode, ct_bpe_piece_fn fn,
                        void *ud, ct_err *e);

/* Id of a token string (byte-level form, e.g. "cat</w>"), or -1. */
int32_t ct_bpe_token_to_id(const ct_bpe *t, const char *tok, size_t len);
/* Byte-level string of an id (not NUL-terminated; *len set), or NULL. */
const char *ct_bpe_id_to_token(const ct_bpe *t, int32_t id, size_t *len);

#endif
