/* encoder_ref.c - the naive twin of the two towers (encoder.c): the same
 * forward built only from the kernels' *_ref twins (plain loops, double
 * accumulation), full sequence length, no threads, no shortcuts. The specs
 * compare the fast towers against it (spec/model_spec.lua, and at ViT-B/32
 * shapes in the slow check). T <= 1024. */
#include <stdlib.h>

#include "kernels.h"
#include "model.h"

static void block_ref(float *h, float *x, float *q, float *k, float *v, float *att, float *mlp,
                      const ct_block_w *b, const ct_tower_cfg *c, int B, int T, int causal) {
  int D = c->hidden, I = c->inter, N = B * T;
  layernorm_forward_ref(x, h, b->ln1_w, b->ln1_b, N, D, c->eps);
  linear_forward_ref(q, x, b->q_w, b->q_b, N, D, D);
  linear_forward_ref(k, x, b->k_w, b->k_b, N, D, D);
  linear_forward_ref(v, x, b->v_w, b->v_b, N, D, D);
  attention_forward_ref(att, q, k, v, B, T, D, c->heads, causal);
  linear_forward_ref(x, att, b->o_w, b->o_b, N, D, D);
  for (size_t i = 0; i < (size_t)N * D; i++) h[i] += x[i];
  layernorm_forward_ref(x, h, b->ln2_w, b->ln2_b, N, D, c->eps);
  linear_forward_ref(mlp, x, b->fc1_w, b->fc1_b, N, D, I);
  act_forward_ref(mlp, mlp, (int64_t)N * I, c->act);
  linear_forward_ref(x, mlp, b->fc2_w, b->fc2_b, N, I, D);
  for (size_t i = 0; i < (size_t)N * D; i++) h[i] += x[i];
}

static float *alloc_ws(size_t N, int D, int I, float **h, float **x, float **q, float **k,
                       float **v, float **att, float **mlp) {
  size_t nd = N * (size_t)D;
  float *m = malloc((6 * nd + N * (size_t)I) * sizeof(float));
  if (!m) return NULL;
  *h = m; *x = m + nd; *q = m + 2 * nd; *k = m + 3 * nd; *v = m + 4 * nd; *att = m + 5 * nd;
  *mlp = m + 6 * nd;
  return m;
}

int ct_encode_image_ref(const ct_model *m, const float *pixels, int B, float *embeds, ct_err *e) {
  const ct_tower_cfg *c = &m->cfg.vision;
  const ct_tower_w *w = &m->tower[1];
  int D = c->hidden, p = c->patch_size, S = c->image_size, C = c->channels;
  int g = S / p, NP = g * g, T = NP + 1, K = C * p * p;
  if (T > 1024) return ct_errf(e, "encode_image_ref: %d tokens (the twin handles <= 1024)", T);
  float *h, *x, *q, *k, *v, *att, *mlp;
  size_t N = (size_t)B * T;
  float *mem = alloc_ws(N, D, c->inter, &h, &x, &q, &k, &v, &att, &mlp);
  size_t NR = (size_t)B * NP; /* patch rows */
  float *cols = malloc(sizeof(float) * NR * K), *pe = malloc(sizeof(float) * NR * D);
  if (!mem || !cols || !pe) {
    free(mem); free(cols); free(pe);
    return ct_errf(e, "out of memory");
  }
  /* the embedding steps are exact data movement and float adds, shared with encoder.c; the
   * patch projection is the naive linear */
  ct_vision_im2col(cols, pixels, B, c);
  linear_forward_ref(pe, cols, w->patch_w, NULL, (int)NR, K, D);
  vision_embed_forward(x, pe, w->cls_emb, w->pos_emb, B, NP, D);
  layernorm_forward_ref(h, x, w->pre_ln_w, w->pre_ln_b, (int64_t)N, D, c->eps);
  for (int l = 0; l < c->layers; l++) block_ref(h, x, q, k, v, att, mlp, &w->blocks[l], c, B, T, 0);
  for (int b = 0; b < B; b++)
    layernorm_forward_ref(q + (size_t)b * D, h + (size_t)b * T * D, w->ln_w, w->ln_b, 1, D, c->eps);
  linear_forward_ref(embeds, q, w->proj, NULL, B, D, m->cfg.projection_dim);
  free(mem); free(cols); free(pe);
  return 0;
}

int ct_encode_text_ref(const ct_model *m, const int32_t *ids, int B, int T, float *embeds, ct_err *e) {
  const ct_tower_cfg *c = &m->cfg.text;
  const ct_tower_w *w = &m->tower[0];
  int D = c->hidden;
  if (T > c->max_pos || T > 1024) return ct_errf(e, "encode_text_ref: %d tokens", T);
  for (int64_t i = 0; i < (int64_t)B * T; i++)
    if (ids[i] < 0 || ids[i] >= c->vocab) return ct_errf(e, "encode_text_ref: id %d outside the vocabulary", ids[i]);
  float *h, *x, *q, *k, *v, *att, *mlp;
  size_t N = (size_t)B * T;
  float *mem = alloc_ws(N, D, c->inter, &h, &x, &q, &k, &v, &att, &mlp);
  if (!mem) return ct_errf(e, "out of memory");
  ct_text_embed(h, m, ids, B, T, T);
  for (int l = 0; l < c->layers; l++) block_ref(h, x, q, k, v, att, mlp, &w->blocks[l], c, B, T, 1);
  for (int b = 0; b < B; b++) {
    int t = ct_text_eos_index(&m->cfg, ids + (size_t)b * T, T);
    layernorm_forward_ref(q + (size_t)b * D, h + ((size_t)b * T + t) * D, w->ln_w, w->ln_b, 1, D, c->eps);
  }
  linear_forward_ref(embeds, q, w->proj, NULL, B, D, m->cfg.projection_dim);
  free(mem);
  return 0;
}
