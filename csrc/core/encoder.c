/* encoder.c - the ViT image tower and the causal text tower (inference).
 * Matches transformers' CLIPVisionTransformer / CLIPTextTransformer
 * (models/clip/modeling_clip.py): pre-LN blocks
 *   h = h + out_proj(attn(LN1(h))); h = h + fc2(act(fc1(LN2(h)))). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "gemm.h"
#include "kernels.h"
#include "tensor.h"
#include "model.h"

typedef ct_fwd_ws workspace;

/* The scratch of one pass: malloc'd, or one of o->scratch's recycled blocks. */
enum { WS_KEEP_MAX = 64 << 20 };

static void ws_free(workspace *w, const ct_fwd_out *o) {
  if (o->scratch && w->bytes <= WS_KEEP_MAX) ct_scratch_put(o->scratch, w->mem, w->bytes);
  else free(w->mem);
  w->mem = NULL;
}

/* The row stride of the MLP activations [N, I]: I, or I + 16 where rows I floats apart would
 * be a multiple of 2 KiB apart (B/32: 3072 floats, 12 KiB). The micro-kernel stores 12 rows
 * of C at a time, and rows a multiple of 4 KiB apart fall into the same L1 sets; so do the
 * input packing's 16 rows. Measured, one thread, packed kernel, 400 x 3072 x 768: 6-7 % faster
 * with C rows 3088 floats apart (docs/performance.md). */
static int mlp_stride(int I) { return I % 512 == 0 ? I + 16 : I; }

static int ws_alloc(workspace *w, const ct_fwd_out *o, int64_t N, int D, int I, int T, ct_err *e) {
  int ldm = mlp_stride(I);
  size_t nd = (size_t)N * D, nm = (size_t)N * ldm, chain = mlp_chain_floats((int)N, I);
  if (chain > nm) nm = chain; /* the MLP chain's packed fc2 input (mlp_forward_packed) */
  size_t total = 6 * nd + nm + (size_t)T * T;
  float *m;
  if (o->scratch) {
    m = ct_scratch_get(o->scratch, total * sizeof(float), &w->bytes);
  } else {
    m = malloc(total * sizeof(float));
    w->bytes = total * sizeof(float);
  }
  if (!m) return ct_errf(e, "out of memory: forward pass needs %zu MB of scratch",
                         total * sizeof(float) >> 20);
  w->mem = m;
  w->h = m; w->x = m + nd; w->q = m + 2 * nd; w->k = m + 3 * nd; w->v = m + 4 * nd;
  w->att = m + 5 * nd; w->mlp = m + 6 * nd; w->probs = w->mlp + nm;
  w->ldm = ldm;
  w->mlp_floats = nm;
  /* the gaps between MLP rows, which the activation runs over and nothing reads: set once per
   * pass (fc1 never writes them; the vision tower's im2col, which borrows mlp, leaves pixel
   * values there) */
  if (ldm != I)
    for (int64_t i = 0; i < N; i++) memset(w->mlp + i * ldm + I, 0, sizeof(float) * (ldm - I));
  return 0;
}

/* linear_forward with the packed copy pk when there is one (k_linear.c decides by rows); out
 * rows ldc floats apart */
static void lin(float *out, int ldc, const float *inp, const float *w, const ct_pack_blk *pk,
                const void *packed, const float *bias, int N, int IC, int OC) {
  linear_forward_packed(1, &out, ldc, inp, IC, &w, pk ? &packed : NULL, pk ? pk->kind : 0, &bias,
                        N, IC, OC, 0.0f);
}

/* out += inp W^T + bias: the residual branch added in the GEMM's own pass; inp rows lda apart */
static void lin_add(float *out, const float *inp, int lda, const float *w, const ct_pack_blk *pk,
                    const void *packed, const float *bias, int N, int IC, int OC) {
  linear_forward_packed(1, &out, OC, inp, lda, &w, pk ? &packed : NULL, pk ? pk->kind : 0, &bias,
                        N, IC, OC, 1.0f);
}

/* element i of a packed buffer of kind */
static const void *pk_at(const ct_pack_blk *pk, const void *p, size_t i) {
  return (const char *)p + i * ct_pack_elem_size(pk->kind);
}

/* Attention of the pooled rows only: row rows[b] of sequence b attends to every key (to keys
 * 0..rows[b] when causal), the same sums as attention_forward on that row. q, out [B, D];
 * k, v [B, T, D]; p: scratch [T]. */
static void attention_rows(float *out, float *p, const float *q, const float *k, const float *v,
                           const int *rows, int B, int T, int D, int NH, int causal) {
  int hs = D / NH;
  float scale = 1.0f / sqrtf((float)hs);
  for (int bb = 0; bb < B; bb++)
    for (int h = 0; h < NH; h++) {
      const float *qi = q + (size_t)bb * D + h * hs;
      const float *kb = k + (size_t)bb * T * D + h * hs, *vb = v + (size_t)bb * T * D + h * hs;
      int n = causal ? rows[bb] + 1 : T;
      float mx = -INFINITY, sum = 0;
      for (int j = 0; j < n; j++) {
        float d = 0;
        for (int x = 0; x < hs; x++) d += qi[x] * kb[(size_t)j * D + x];
        p[j] = scale * d;
        if (p[j] > mx) mx = p[j];
      }
      for (int j = 0; j < n; j++) {
        p[j] = expf(p[j] - mx);
        sum += p[j];
      }
      float inv = 1.0f / sum, *o = out + (size_t)bb * D + h * hs;
      for (int x = 0; x < hs; x++) o[x] = 0;
      for (int j = 0; j < n; j++) {
        float pj = p[j] * inv;
        for (int x = 0; x < hs; x++) o[x] += pj * vb[(size_t)j * D + x];
      }
    }
}

void ct_block_forward(ct_fwd_ws *w, const ct_block_w *b, const ct_tower_cfg *c, int B, int T,
                      int causal, const int *pool, ct_layer_acts *s) {
  int D = c->hidden, I = c->inter, N = B * T;
  /* a saving (training) forward reads the float weights: its numbers do not depend on which
   * packs exist (a half model's training equals the float model's) */
  const ct_pack_blk *pk = !s && ct_pack_ok(b->pk) ? b->pk : NULL;
  size_t dd = ct_pack_nt_floats(D, D);
  const void *pq = pk ? pk->qkv : NULL, *pkk = pk ? pk_at(pk, pk->qkv, dd) : NULL,
             *pv = pk ? pk_at(pk, pk->qkv, 2 * dd) : NULL;
  if (s) {
    pool = NULL; /* the backward needs every row */
    memcpy(s->inp, w->h, sizeof(float) * (size_t)N * D);
  }
  float *x = s ? s->ln1 : w->x, *q = s ? s->q : w->q, *k = s ? s->k : w->k, *v = s ? s->v : w->v;
  float *att = s ? s->att : w->att;
  /* attention branch: LN1 and K, V over every row (attention reads them), Q and the rest over
   * every row or only the pooled ones */
  layernorm_forward(x, s ? s->ln1_mean : NULL, s ? s->ln1_rstd : NULL, w->h, b->ln1_w, b->ln1_b,
                    N, D, c->eps);
  if (!pool) {
    float *out[3] = {q, k, v};
    const float *wt[3] = {b->q_w, b->k_w, b->v_w}, *bs[3] = {b->q_b, b->k_b, b->v_b};
    const void *pks[3] = {pq, pkk, pv};
    linear_forward_packed(3, out, D, x, D, wt, pk ? pks : NULL, pk ? pk->kind : 0, bs, N, D, D,
                          0.0f);
    attention_forward(att, s ? s->probs : w->probs, q, k, v, B, T, D, c->heads, causal, s != NULL);
  } else {
    float *out[2] = {k, v};
    const float *wt[2] = {b->k_w, b->v_w}, *bs[2] = {b->k_b, b->v_b};
    const void *pks[2] = {pkk, pv};
    linear_forward_packed(2, out, D, x, D, wt, pk ? pks : NULL, pk ? pk->kind : 0, bs, N, D, D,
                          0.0f);
    /* from here on B rows: the pooled ones, gathered to the front of h (row b is read from
     * b * T + pool[b] >= b before it is written) */
    for (int bb = 0; bb < B; bb++) {
      memcpy(att + (size_t)bb * D, x + ((size_t)bb * T + pool[bb]) * D, sizeof(float) * D);
      memmove(w->h + (size_t)bb * D, w->h + ((size_t)bb * T + pool[bb]) * D, sizeof(float) * D);
    }
    lin(q, D, att, b->q_w, pk, pq, b->q_b, B, D, D);
    attention_rows(att, w->probs, q, k, v, pool, B, T, D, c->heads, causal);
    N = B;
  }
  float *mid = w->h; /* h + out_proj(att): in place, or into s->mid (h is the saved input) */
  if (s) {
    mid = s->mid;
    memcpy(mid, w->h, sizeof(float) * (size_t)N * D);
  }
  lin_add(mid, att, D, b->o_w, pk, pk ? pk->o : NULL, b->o_b, N, D, D);
  /* MLP branch */
  x = s ? s->ln2 : w->x;
  layernorm_forward(x, s ? s->ln2_mean : NULL, s ? s->ln2_rstd : NULL, mid, b->ln2_w, b->ln2_b,
                    N, D, c->eps);
  /* inference with packs: fc1 -> activation -> fc2 as one chain, fc1's output never stored */
  if (pk && mlp_forward_packed(w->h, x, D, b->fc1_w, pk->fc1, b->fc1_b, b->fc2_w, pk->fc2,
                               b->fc2_b, pk->kind, N, D, I, c->act, w->mlp, w->mlp_floats))
    return;
  float *fc1 = s ? s->fc1 : w->mlp, *actv = s ? s->actv : w->mlp;
  int ldm = s || !w->ldm ? I : w->ldm; /* the saved activations are packed tight */
  lin(fc1, ldm, x, b->fc1_w, pk, pk ? pk->fc1 : NULL, b->fc1_b, N, D, I);
  if (N > 0) act_forward(actv, fc1, (int64_t)(N - 1) * ldm + I, c->act);
  if (s) memcpy(w->h, mid, sizeof(float) * (size_t)N * D);
  lin_add(w->h, actv, ldm, b->fc2_w, pk, pk ? pk->fc2 : NULL, b->fc2_b, N, I, D);
}

void ct_vision_im2col(float *cols, const float *pixels, int B, const ct_tower_cfg *c) {
  int p = c->patch_size, S = c->image_size, C = c->channels, g = S / p, NP = g * g, K = C * p * p;
  for (int b = 0; b < B; b++)
    for (int gi = 0; gi < g; gi++)
      for (int gj = 0; gj < g; gj++) {
        float *dst = cols + ((size_t)b * NP + gi * g + gj) * K;
        for (int ch = 0; ch < C; ch++)
          for (int u = 0; u < p; u++) {
            const float *src = pixels + (((size_t)b * C + ch) * S + gi * p + u) * S + gj * p;
            memcpy(dst + (ch * p + u) * p, src, sizeof(float) * p);
          }
      }
}

void ct_vision_embed(float *h, float *pe, const float *cols, const ct_model *m, int B,
                     int packed) {
  const ct_tower_cfg *c = &m->cfg.vision;
  int D = c->hidden, g = c->image_size / c->patch_size, NP = g * g;
  int K = c->channels * c->patch_size * c->patch_size;
  const void *pk = packed && ct_patch_pack_ok(m) ? m->patch_pk.p : NULL;
  const float *pw = m->tower[1].patch_w, *nob = NULL;
  linear_forward_packed(1, &pe, D, cols, K, &pw, pk ? &pk : NULL, PK_F32, &nob, B * NP, K, D, 0.0f);
  vision_embed_forward(h, pe, m->tower[1].cls_emb, m->tower[1].pos_emb, B, NP, D);
}

void ct_text_embed(float *h, const ct_model *m, const int32_t *ids, int B, int T_in, int T) {
  int D = m->cfg.text.hidden;
  const ct_tower_w *tw = &m->tower[0];
  if (tw->tok_emb) {
    text_embed_forward(h, ids, tw->tok_emb, tw->pos_emb, B, T_in, T, D);
    return;
  }
  for (int b = 0; b < B; b++) /* half-precision model: the mapped F16 / BF16 rows, converted exactly */
    for (int t = 0; t < T; t++) {
      const uint16_t *te = m->tok_emb_h + (size_t)ids[(size_t)b * T_in + t] * D;
      const float *pe = tw->pos_emb + (size_t)t * D;
      float *dst = h + ((size_t)b * T + t) * D;
      for (int j = 0; j < D; j++)
        dst[j] = (m->half_kind == PK_BF16 ? ct_bf16_to_f32(te[j]) : ct_f16_to_f32(te[j])) + pe[j];
    }
}

/* Every block has its weights: current packs, or float data (a lazy model whose repacking ran
 * out of memory has neither, and is refused rather than read). */
static int weights_present(const ct_block_w *bl, int L, const char *what, ct_err *e) {
  for (int l = 0; l < L; l++) {
    const ct_block_w *b = &bl[l];
    if (ct_pack_ok(b->pk)) continue;
    if (!b->q_w || !b->k_w || !b->v_w || !b->o_w || !b->fc1_w || !b->fc2_w)
      return ct_errf(e, "%s: layer %d has neither packed nor float weights (out of memory "
                        "while packing?)", what, l);
  }
  return 0;
}

/* Sequences (images, texts) per pass of the layers: groups of about one GEMM chunk of rows
 * (ct_packed_max_m, k_linear.c) run through all the layers before the next group, so the
 * workspace is one group's whatever the batch (B/32, 32 images: 12 MB, not 49); the weights
 * are read once per chunk of rows either way, and the speed is the same (CHANGELOG.md).
 * Where the packed kernels run, the grouping changes no bits (the GEMMs' sums run over K in
 * blocks fixed by K, the attention within a sequence, the rest per row). Sequences longer
 * than half a chunk (L/14's 257 patches) run as one group. */
static int tower_group(int T, int B) {
  int G = ct_packed_chunk() / (T > 0 ? T : 1);
  return G >= 2 && G < B ? G : B;
}

int ct_encode_image(const ct_model *m, const float *pixels, int B, ct_fwd_out *o, ct_err *e) {
  const ct_tower_cfg *c = &m->cfg.vision;
  int D = c->hidden, p = c->patch_size, S = c->image_size, C = c->channels;
  int g = S / p, NP = g * g, T = NP + 1, K = C * p * p;
  if (B <= 0) return ct_errf(e, "encode_image: empty batch");
  if (weights_present(m->tower[1].blocks, c->layers, "encode_image", e) != 0) return -1;
  if ((int64_t)B * T > (1 << 30) / (D > 0 ? D : 1))
    return ct_errf(e, "encode_image: batch of %d images is too large", B);
  int G = tower_group(T, B);
  workspace w;
  int64_t N = (int64_t)G * T;
  if (ws_alloc(&w, o, N, D, c->inter, T, e) != 0) return -1;
  /* im2col into w.mlp (N*I >= G*NP*K holds when I >= K; else a separate buffer); the pooled
   * rows of all groups into o->pooled, or a buffer of their own for the projection */
  float *cols = NULL, *pooled = o->pooled, *own = NULL;
  size_t need = (size_t)G * NP * K;
  int L = c->layers, shortcut = L > 0 && !o->last_hidden && !(o->captured && o->capture_layer == L - 1);
  int *rows = shortcut ? calloc((size_t)G, sizeof(int)) : NULL; /* all 0: the CLS row */
  if (need <= (size_t)N * c->inter) cols = w.mlp;
  else cols = malloc(need * sizeof(float));
  if (!pooled && o->embeds) pooled = own = malloc(sizeof(float) * (size_t)B * D);
  if (!cols || (shortcut && !rows) || (o->embeds && !pooled)) {
    if (cols != w.mlp) free(cols);
    free(rows);
    free(own);
    ws_free(&w, o);
    return ct_errf(e, "out of memory");
  }
  for (int g0 = 0; g0 < B; g0 += G) {
    int Bg = B - g0 < G ? B - g0 : G;
    size_t off = (size_t)g0 * T * D; /* this group's rows in [B, T, D] outputs */
    N = (int64_t)Bg * T;
    ct_vision_im2col(cols, pixels + (size_t)g0 * C * S * S, Bg, c);
    ct_vision_embed(w.h, w.x, cols, m, Bg, 1); /* patch projections in w.x [Bg*NP, D] */
    layernorm_forward(w.h, NULL, NULL, w.h, m->tower[1].pre_ln_w, m->tower[1].pre_ln_b, N, D, c->eps);
    /* only the CLS rows are pooled: the last block runs on them alone unless every row of
     * the last hidden state is asked for */
    for (int l = 0; l < L; l++) {
      ct_block_forward(&w, &m->tower[1].blocks[l], c, Bg, T, 0, shortcut && l == L - 1 ? rows : NULL, NULL);
      if (o->captured && o->capture_layer == l) memcpy(o->captured + off, w.h, sizeof(float) * N * D);
    }
    if (o->last_hidden) memcpy(o->last_hidden + off, w.h, sizeof(float) * N * D);
    /* pooled = post_layernorm(h[:, 0]); after the shortcut h holds just those rows */
    if (pooled)
      for (int b = 0; b < Bg; b++)
        layernorm_forward(pooled + (size_t)(g0 + b) * D, NULL, NULL,
                          w.h + (size_t)b * (shortcut ? 1 : T) * D, m->tower[1].ln_w,
                          m->tower[1].ln_b, 1, D, c->eps);
  }
  if (cols != w.mlp) free(cols);
  free(rows);
  if (o->embeds) linear_forward(o->embeds, pooled, m->tower[1].proj, NULL, B, D, m->cfg.projection_dim);
  free(own);
  ws_free(&w, o);
  return 0;
}

int ct_text_eos_index(const ct_config *c, const int32_t *ids, int T) {
  int best = 0;
  if (c->text.eos == 2) { /* legacy configs: argmax of the ids (the first maximum) */
    for (int t = 1; t < T; t++)
      if (ids[t] > ids[best]) best = t;
    return best;
  }
  for (int t = 0; t < T; t++)
    if (ids[t] == c->text.eos) return t;
  return 0; /* transformers: argmax of an all-false mask is 0 */
}

int ct_encode_text(const ct_model *m, const int32_t *ids, int B, int T, ct_fwd_out *o,
                   ct_err *e) {
  const ct_tower_cfg *c = &m->cfg.text;
  int D = c->hidden;
  if (B <= 0) return ct_errf(e, "encode_text: empty batch");
  if (T <= 0) return ct_errf(e, "encode_text: empty sequences");
  if (weights_present(m->tower[0].blocks, c->layers, "encode_text", e) != 0) return -1;
  if (!m->tower[0].tok_emb && !m->tok_emb_h) return ct_errf(e, "encode_text: no token embedding");
  if (T > c->max_pos)
    return ct_errf(e, "encode_text: sequence length %d exceeds max_position_embeddings %d", T,
                   c->max_pos);
  for (int64_t i = 0; i < (int64_t)B * T; i++)
    if (ids[i] < 0 || ids[i] >= c->vocab)
      return ct_errf(e, "encode_text: token id %d (sequence %d, position %d) is outside the vocabulary of %d",
                     ids[i], (int)(i / T) + 1, (int)(i % T) + 1, c->vocab);
  int *eos = malloc(sizeof(int) * (size_t)B);
  if (!eos) return ct_errf(e, "out of memory");
  for (int b = 0; b < B; b++) eos[b] = ct_text_eos_index(&m->cfg, ids + (size_t)b * T, T);
  /* groups of sequences as the image tower (tower_group); with the causal mask, positions
   * after a group's last pooled token change nothing that is pooled: each group computes only
   * up to it unless all rows are asked for */
  int all = o->last_hidden || o->captured, G = tower_group(T, B);
  workspace w;
  if (ws_alloc(&w, o, (int64_t)G * T, D, c->inter, T, e) != 0) {
    free(eos);
    return -1;
  }
  float *pooled = o->pooled, *own = NULL;
  if (!pooled && o->embeds) pooled = own = malloc(sizeof(float) * (size_t)B * D);
  if (o->embeds && !pooled) {
    ws_free(&w, o);
    free(eos);
    return ct_errf(e, "out of memory");
  }
  /* the last block only for the pooled (end-of-text) rows, unless all rows are asked for */
  int L = c->layers, shortcut = L > 0 && !o->last_hidden && !(o->captured && o->capture_layer == L - 1);
  for (int g0 = 0; g0 < B; g0 += G) {
    int Bg = B - g0 < G ? B - g0 : G, Te = 1, *eg = eos + g0;
    for (int b = 0; b < Bg; b++)
      if (eg[b] + 1 > Te) Te = eg[b] + 1;
    if (all) Te = T;
    int64_t N = (int64_t)Bg * Te;
    size_t off = (size_t)g0 * T * D; /* this group's rows in [B, T, D] outputs */
    ct_text_embed(w.h, m, ids + (size_t)g0 * T, Bg, T, Te);
    for (int l = 0; l < L; l++) {
      ct_block_forward(&w, &m->tower[0].blocks[l], c, Bg, Te, 1, shortcut && l == L - 1 ? eg : NULL, NULL);
      if (o->captured && o->capture_layer == l) memcpy(o->captured + off, w.h, sizeof(float) * N * D);
    }
    float *pg = pooled ? pooled + (size_t)g0 * D : NULL;
    if (shortcut) { /* h holds just the pooled rows */
      if (pg) layernorm_forward(pg, NULL, NULL, w.h, m->tower[0].ln_w, m->tower[0].ln_b, Bg, D, c->eps);
    } else if (o->last_hidden) {
      layernorm_forward(o->last_hidden + off, NULL, NULL, w.h, m->tower[0].ln_w, m->tower[0].ln_b, N,
                        D, c->eps);
      if (pg)
        for (int b = 0; b < Bg; b++)
          memcpy(pg + (size_t)b * D, o->last_hidden + off + ((size_t)b * Te + eg[b]) * D,
                 sizeof(float) * D);
    } else if (pg) {
      for (int b = 0; b < Bg; b++)
        layernorm_forward(pg + (size_t)b * D, NULL, NULL, w.h + ((size_t)b * Te + eg[b]) * D,
                          m->tower[0].ln_w, m->tower[0].ln_b, 1, D, c->eps);
    }
  }
  if (o->embeds) linear_forward(o->embeds, pooled, m->tower[0].proj, NULL, B, D, m->cfg.projection_dim);
  free(own);
  ws_free(&w, o);
  free(eos);
  return 0;
}
