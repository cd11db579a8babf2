/* model.h - CLIP configuration, parameter table and the two encoders.
 * Usable from C without Lua. */
#ifndef CT_MODEL_H
#define CT_MODEL_H

#include "ct.h"
#include "safetensors.h"

typedef struct ct_tower_cfg {
  int hidden, inter, heads, layers, act;
  float eps;
  char act_name[32];
  /* vision */
  int image_size, patch_size, channels;
  /* text */
  int vocab, max_pos, bos, eos, pad;
} ct_tower_cfg;

typedef struct ct_config {
  ct_tower_cfg text, vision;
  int projection_dim;
  float logit_scale_init;
} ct_config;

/* Parse config.json text (name is used in messages). Missing keys take
 * transformers' CLIPConfig defaults; wrong-typed keys are errors. */
int ct_config_parse(const char *json, size_t len, const char *name, ct_config *c,
                    ct_err *e);
/* Serialize as transformers writes a CLIPModel config.json (malloc'd). */
char *ct_config_to_json(const ct_config *c);

typedef struct ct_param {
  char name[96];
  int ndim;
  int64_t shape[4];
  int64_t numel;
  float *data;   /* into a mapping, or owned (see owned) */
  int owned;     /* data was malloc'd (converted from F16/BF16 or copied) */
  int dtype;     /* ct_dtype in the checkpoint */
  int requires_grad; /* trainable (default 1) */
  float *grad;   /* malloc'd on first backward that needs it, else NULL */
  int has_grad;  /* a backward wrote into grad since the last zero_grad (torch: grad is not None) */
  unsigned gen;  /* bumped by every write through the bindings (tensor views, optimizers);
                    packed copies built from an older gen are stale */
  int pinned;    /* a view of data was handed out: data is never freed or moved */
  const uint16_t *half; /* the F16/BF16 values in the mapped file, for the block weights and
                           token embedding of a half checkpoint: data is NULL in a half model
                           (and once packed, when never written) until ct_model_materialize */
  /* where it belongs (set by ct_model_layout): tower 0 text, 1 vision, -1 the model
   * (logit_scale); layer: its block, or -1; slot: the offset of its pointer in ct_tower_w
   * (layer -1) or in ct_block_w */
  int tower, layer, slot;
} ct_param;

/* The packed copies (gemm.h layout) of one block's linear weights, built by ct_model_pack.
 * qkv holds the q, k and v panels one after the other (each ct_pack_nt_floats(D, D)
 * elements); elements are floats, or F16 / BF16 bits for a model kept in half precision. */
typedef struct ct_pack_blk {
  void *qkv, *o, *fc1, *fc2;
  int kind;               /* PK_F32, PK_F16 or PK_BF16 (gemm.h) */
  unsigned gen[6];        /* the params' gens (q, k, v, o, fc1, fc2) when packed */
  const unsigned *src[6]; /* &param.gen of the same six */
  int ready;              /* the four buffers hold a complete packing */
} ct_pack_blk;

/* 1 when pk holds packs built from the current weights. */
static inline int ct_pack_ok(const ct_pack_blk *pk) {
  if (!pk || !pk->ready) return 0;
  for (int i = 0; i < 6; i++)
    if (*pk->src[i] != pk->gen[i]) return 0;
  return 1;
}

typedef struct ct_block_w {
  float *ln1_w, *ln1_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
  float *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
  const ct_pack_blk *pk; /* packed weights (NULL: none; used only when ct_pack_ok) */
} ct_block_w;

/* The tensors of one tower by role: its weights (ct_model.tower) or its gradients
 * (ct_model.grad). NULL where the tower has no such tensor, or a gradient is not computed. */
typedef struct ct_tower_w {
  float *tok_emb;             /* text: token_embedding.weight [V, D] */
  float *cls_emb, *patch_w;   /* vision: class_embedding [D], patch_embedding.weight [D, C, P, P] */
  float *pos_emb;             /* position_embedding.weight [T, D] */
  float *pre_ln_w, *pre_ln_b; /* vision: pre_layrnorm [D] */
  float *ln_w, *ln_b;         /* vision: post_layernorm, text: final_layer_norm [D] */
  float *proj;                /* visual_projection / text_projection [E, D] */
  ct_block_w *blocks;         /* [layers] */
} ct_tower_w;

typedef struct ct_model {
  ct_config cfg;
  int nparams;
  ct_param *params;
  int nfiles;
  ct_st_file *files;
  /* resolved pointers (ct_model_resolve): tower[0] text, tower[1] vision */
  ct_tower_w tower[2];
  float *logit_scale;
  /* the gradients of one tower, resolved by ct_model_grads */
  ct_tower_w grad[2];
  /* recycled scratch blocks (training tapes, backward buffers), so a training
   * loop does not page-fault fresh memory every step */
  struct { void *p; size_t n; } spare[6];
  /* packed weights, one per block (NULL until ct_model_pack); pack_off: never pack */
  ct_pack_blk *tpk, *vpk;
  struct { /* the patch embedding as a [hidden, channels * patch^2] matrix, packed (float) */
    float *p;
    unsigned gen;
    const unsigned *src;
    int ready;
  } patch_pk;
  int pack_off;
  /* half precision kept (CT_LOAD_HALF): PK_F16 or PK_BF16, 0 when the model is all float;
   * the block weights then exist only packed in that type and tok_emb_h replaces tok_emb */
  int half_kind;
  const uint16_t *tok_emb_h;
} ct_model;

/* 1 when some parameter has no float data: a half-precision model, or block weights of an
 * F16/BF16 checkpoint whose float copy ct_model_pack dropped (their packs replace them). */
int ct_model_lazy(const ct_model *m);
/* Give every parameter float data again (converted exactly from the mapped F16/BF16 values);
 * the model is no longer half (half_kind 0). Needed before anything reads or writes those
 * parameters directly (views, training them, the naive twin). No-op when nothing is lazy. */
int ct_model_materialize(ct_model *m, ct_err *e);

/* Build (or rebuild, where a weight changed since) the packed copies of every block's linear
 * weights, for the encoders' small-batch GEMMs (gemm_packed.c). No-op when the CPU lacks the
 * packed kernel or m->pack_off. Mapped weights never written are then dropped from memory
 * (madvise: they are read back from the file if used again), so packing does not double the
 * resident weights. frozen_only: only blocks whose six weights do not require gradients (the
 * frozen part of a training forward; trainable blocks change every step). Returns -1 with e set when out of memory (the model stays usable,
 * unpacked). */
int ct_model_pack(ct_model *m, int frozen_only, ct_err *e);
/* 1 when the packed patch embedding is built from the current weights. */
static inline int ct_patch_pack_ok(const ct_model *m) {
  return m->patch_pk.ready && m->patch_pk.src && *m->patch_pk.src == m->patch_pk.gen;
}
/* Free the packed copies (the encoders fall back to the original weights). */
void ct_model_unpack(ct_model *m);

/* Take a block of at least n bytes (recycled or malloc'd; contents undefined). */
void *ct_scratch_get(ct_model *m, size_t n, size_t *got);
/* Give a block back (kept for reuse, or freed). */
void ct_scratch_put(ct_model *m, void *p, size_t n);

/* Paths found in a model directory (HF layout, or sentence-transformers with
 * modules.json naming a CLIPModel at "0_CLIPModel" or ""). */
typedef struct ct_model_paths {
  char root[1024];       /* the directory holding config.json */
  char config[1100];
  char preprocessor[1100];
  char vocab[1100];
  char merges[1100];
  char weights[1100];    /* model.safetensors, the index json or pytorch_model.bin */
  int sharded;
  int torch;             /* weights is a torch.save archive (pytorch_model.bin) */
  int sentence_transformers;
} ct_model_paths;

int ct_model_find(const char *dir, ct_model_paths *p, ct_err *e);

/* Build the parameter table for cfg with no data (for counting, building). */
int ct_model_layout(const ct_config *cfg, ct_param **params, int *n, ct_err *e);

/* Load config + weights from a directory. */
int ct_model_load(const char *dir, ct_model *m, ct_model_paths *paths, ct_err *e);
/* flags: CT_LOAD_HALF keeps an F16/BF16 checkpoint's transformer weights and token embedding
 * in half precision (mapped, then packed; converted on the fly by the GEMM kernel), when every
 * one of them has the same half type and the CPU runs the packed kernel; otherwise the model
 * loads as float32, as without the flag (ct_model.half_kind says which). */
enum { CT_LOAD_HALF = 1 };
int ct_model_load_ex(const char *dir, unsigned flags, ct_model *m, ct_model_paths *paths,
                     ct_err *e);
/* Initialise a model from a config with freshly allocated zero weights. */
int ct_model_init(const ct_config *cfg, ct_model *m, ct_err *e);
void ct_model_free(ct_model *m);
int ct_model_find_param(const ct_model *m, const char *name);
/* Re-resolve the weight pointers (tower[], logit_scale) from the parameter table. */
void ct_model_resolve(ct_model *m);
/* The tower-level parameter (not a block's) of tower (0 text, 1 vision) whose pointer sits at
 * slot = offsetof(ct_tower_w, field) of ct_model.tower[tower]; NULL when the tower has none. */
ct_param *ct_model_tower_param(ct_model *m, int tower, int slot);
/* Resolve grad[vision] from the parameter table: the gradient of each of the tower's
 * parameters that requires grad and has one allocated, marked as written (has_grad: a
 * backward is about to accumulate into it), else NULL (torch: its grad stays None). */
const ct_tower_w *ct_model_grads(ct_model *m, int vision);

/* Outputs of a forward pass; any pointer may be NULL. */
typedef struct ct_fwd_out {
  float *embeds;       /* [B, projection_dim] */
  float *pooled;       /* [B, D] */
  float *last_hidden;  /* [B, T, D]: vision before post_layernorm, text after final_layer_norm */
  int capture_layer;   /* with captured: hidden state after block capture_layer (0-based) */
  float *captured;     /* [B, T, D] */
  struct ct_model *scratch; /* non-NULL: take the pass's workspace from this model's scratch
                               blocks (ct_scratch_get) and give it back (up to 64 MB kept), so
                               repeated calls do not fault in fresh pages; only for a caller
                               that owns the model exclusively (the Lua binding), never for
                               concurrent encodes (the C API leaves it NULL) */
} ct_fwd_out;

/* pixels: [B, C, S, S] float32 */
int ct_encode_image(const ct_model *m, const float *pixels, int B, ct_fwd_out *o,
                    ct_err *e);
/* ids: [B, T] int32 (padded); every id must be < vocab. */
int ct_encode_text(const ct_model *m, const int32_t *ids, int B, int T, ct_fwd_out *o,
                   ct_err *e);
/* Embedding steps shared by the inference (encoder.c) and training (train.c) forwards.
 * cols [B*NP, C*P*P]: patches in (channel, row, col) order, grid row-major. Vision: h [B, T, D]
 * = [class_embedding; cols patch_embedding^T] + position_embedding, pe [B*NP, D] receives the
 * patch projections; packed: the packed patch embedding when current (not in training, whose
 * numbers do not depend on packs). Text: h [B, T, D], token +
 * position embeddings of ids [B, T_in] for the first T positions (a half model's token
 * embedding too). */
void ct_vision_im2col(float *cols, const float *pixels, int B, const ct_tower_cfg *c);
void ct_vision_embed(float *h, float *pe, const float *cols, const ct_model *m, int B,
                     int packed);
void ct_text_embed(float *h, const ct_model *m, const int32_t *ids, int B, int T_in, int T);

/* Scratch of a block forward, N = B*T rows: h (the hidden state, updated in place), x, q, k,
 * v, att [N, D], mlp [N, I], probs [T, T]; mem: the owning block. A forward that saves its
 * activations uses only h. */
typedef struct ct_fwd_ws {
  float *h, *x, *q, *k, *v, *att, *mlp, *probs;
  void *mem;
  size_t bytes; /* of mem */
  int ldm;      /* row stride of mlp (0: I, rows packed tight) */
  size_t mlp_floats; /* of mlp: N rows of ldm, or more for the MLP chain's packed input */
} ct_fwd_ws;
/* What the backward of one block needs (train.c's tape), [N, D] unless noted: the input, LN1's
 * output and stats [N], q, k, v, the softmax [B, NH, T, T], the attention output, mid (input +
 * attention branch), LN2's output and stats, fc1's output and the activation [N, I]. */
typedef struct ct_layer_acts {
  float *inp, *ln1, *ln1_mean, *ln1_rstd, *q, *k, *v, *probs, *att;
  float *mid, *ln2, *ln2_mean, *ln2_rstd, *fc1, *actv;
} ct_layer_acts;
/* One pre-LN block, h = h + out_proj(attn(LN1(h))); h = h + fc2(act(fc1(LN2(h)))), over w->h
 * [B, T, D] in place, with the packed weights (b->pk) when they are current and nothing is
 * saved. pool (NULL: every
 * row): the pooled row of each sequence; only those rows are computed past K and V, and w->h
 * ends as [B, D], those rows' outputs (the last block of an encode). save (NULL: keep nothing):
 * keep the activations in it (every row; pool is then ignored). Used by the encoders
 * (encoder.c) and the training forward (train.c). */
void ct_block_forward(ct_fwd_ws *w, const ct_block_w *b, const ct_tower_cfg *c, int B, int T,
                      int causal, const int *pool, ct_layer_acts *save);

/* Naive twins of the two towers (encoder_ref.c): embeddings only, T <= 1024. */
int ct_encode_image_ref(const ct_model *m, const float *pixels, int B, float *embeds, ct_err *e);
int ct_encode_text_ref(const ct_model *m, const int32_t *ids, int B, int T, float *embeds, ct_err *e);
/* Index of the pooled (EOS) token of one sequence, as transformers does. */
int ct_text_eos_index(const ct_config *c, const int32_t *ids, int T);

#endif
