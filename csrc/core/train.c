/* train.c - the towers' training forward and backward.
 *
 * Forward runs the frozen bottom of a tower like inference (nothing kept),
 * then keeps, for each block from the lowest trainable one up, exactly what
 * the backward kernels need (llm.c style named buffers). Backward walks the
 * blocks top-down with a NULL gradient for every frozen parameter, so frozen
 * work costs nothing, and stops at the lowest trainable parameter. */
#include "train.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "optim.h"

/* ---------------------------------------------------------- trainability */

void ct_tower_trainable(const ct_model *m, int vision, ct_trainable *t) {
  int L = vision ? m->cfg.vision.layers : m->cfg.text.layers;
  memset(t, 0, sizeof *t);
  t->first_layer = L;
  for (int i = 0; i < m->nparams; i++) {
    const ct_param *p = &m->params[i];
    if (!p->requires_grad || p->tower != vision) continue;
    if (p->layer >= 0) {
      if (p->layer < t->first_layer) t->first_layer = p->layer;
    } else if (p->slot == (int)offsetof(ct_tower_w, proj)) {
      t->proj = 1;
    } else if (p->slot == (int)offsetof(ct_tower_w, ln_w) || p->slot == (int)offsetof(ct_tower_w, ln_b)) {
      t->post = 1; /* post_layernorm / final_layer_norm */
    } else {
      t->emb = 1; /* embeddings, pre_layrnorm */
    }
  }
  if (t->emb) t->first_layer = 0;
}

int ct_model_alloc_grads(ct_model *m, ct_err *e) {
  for (int i = 0; i < m->nparams; i++) {
    ct_param *p = &m->params[i];
    if (p->requires_grad && !p->grad) {
      p->grad = calloc((size_t)(p->numel ? p->numel : 1), sizeof(float));
      if (!p->grad) return ct_errf(e, "out of memory allocating the gradient of %s", p->name);
      ct_mem_fault_in(p->grad, (size_t)p->numel * sizeof(float));
    }
  }
  return 0;
}

void ct_model_zero_grads(ct_model *m) {
  for (int i = 0; i < m->nparams; i++) {
    if (m->params[i].grad) ct_zero(m->params[i].grad, m->params[i].numel);
    m->params[i].has_grad = 0;
  }
}

void ct_tape_release(ct_model *m, ct_tape *t) {
  if (!t) return;
  ct_scratch_put(m, t->mem, t->mem_bytes);
  t->mem = NULL;
  ct_tape_free(t);
}

void ct_tape_free(ct_tape *t) {
  if (!t) return;
  free(t->mem);
  free(t->la);
  free(t->pool);
  memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------- the arena */

typedef struct {
  float *base;
  size_t used, cap;
} arena;

static float *take(arena *a, size_t n) {
  n = (n + 15) & ~(size_t)15; /* keep 64-byte alignment */
  if (a->base == NULL) { a->used += n; return NULL; }
  float *p = a->base + a->used;
  a->used += n;
  return p;
}

/* Lay out the tape's buffers; called twice: once to size, once to assign. */
static void layout(ct_tape *t, arena *a, int NP, int K) {
  size_t N = (size_t)t->B * t->T, D = (size_t)t->D, I = (size_t)t->I;
  for (int l = t->first; l < t->L; l++) {
    ct_layer_acts *x = &t->la[l - t->first];
    x->inp = take(a, N * D); x->ln1 = take(a, N * D);
    x->ln1_mean = take(a, N); x->ln1_rstd = take(a, N);
    x->q = take(a, N * D); x->k = take(a, N * D); x->v = take(a, N * D);
    x->probs = take(a, (size_t)t->B * t->NH * t->T * t->T);
    x->att = take(a, N * D); x->mid = take(a, N * D); x->ln2 = take(a, N * D);
    x->ln2_mean = take(a, N); x->ln2_rstd = take(a, N);
    x->fc1 = take(a, N * I); x->actv = take(a, N * I);
  }
  t->pool_in = take(a, (size_t)t->B * D);
  t->pool_mean = take(a, t->B);
  t->pool_rstd = take(a, t->B);
  t->pooled = take(a, (size_t)t->B * D);
  if (t->emb && t->vision) {
    t->x = take(a, N * D);
    t->pre_mean = take(a, N);
    t->pre_rstd = take(a, N);
    t->cols = take(a, (size_t)t->B * NP * K);
  }
  if (!t->vision) t->ids = (int32_t *)take(a, ((size_t)t->B * t->T + 1) / 1 + 1);
}

/* ---------------------------------------------------------- forward */

int ct_forward_train(ct_model *m, int vision, const float *pixels, const int32_t *ids,
                     int B, int T, float *embeds, ct_tape *t, ct_err *e) {
  memset(t, 0, sizeof *t);
  const ct_tower_cfg *c = vision ? &m->cfg.vision : &m->cfg.text;
  ct_trainable tr;
  ct_tower_trainable(m, vision, &tr);
  int D = c->hidden, E = m->cfg.projection_dim, NP = 0, K = 0, g = 0;
  if (B <= 0) return ct_errf(e, "forward: empty batch");
  t->vision = vision;
  t->B = B; t->D = D; t->I = c->inter; t->NH = c->heads; t->L = c->layers;
  t->first = tr.first_layer;
  t->emb = tr.emb;
  t->need_pool = tr.emb || tr.first_layer < c->layers || tr.post;
  t->pool = calloc((size_t)B, sizeof(int));
  if (!t->pool) return ct_errf(e, "out of memory");
  if (vision) {
    g = c->image_size / c->patch_size;
    NP = g * g;
    K = c->channels * c->patch_size * c->patch_size;
    t->T = NP + 1;
  } else {
    if (T <= 0 || T > c->max_pos) {
      ct_tape_free(t);
      return ct_errf(e, "forward: sequence length %d (max_position_embeddings %d)", T, c->max_pos);
    }
    for (int64_t i = 0; i < (int64_t)B * T; i++)
      if (ids[i] < 0 || ids[i] >= c->vocab) {
        ct_tape_free(t);
        return ct_errf(e, "forward: token id %d is outside the vocabulary of %d", ids[i], c->vocab);
      }
    int Te = 1;
    for (int b = 0; b < B; b++) {
      t->pool[b] = ct_text_eos_index(&m->cfg, ids + (size_t)b * T, T);
      if (t->pool[b] + 1 > Te) Te = t->pool[b] + 1;
    }
    t->T = Te; /* causal: later positions cannot reach the pooled rows */
  }
  int Tt = t->T;
  size_t N = (size_t)B * Tt;
  t->la = calloc((size_t)(t->L - t->first + 1), sizeof(ct_layer_acts));
  if (!t->la) {
    ct_tape_free(t);
    return ct_errf(e, "out of memory");
  }
  arena a = {0};
  layout(t, &a, NP, K);
  /* plain-forward scratch for the frozen bottom and the final hidden state */
  size_t scratch = 6 * N * D + N * (size_t)c->inter + (size_t)Tt * Tt;
  if (vision) scratch += (size_t)B * NP * K;
  size_t total = a.used + scratch + 16;
  t->mem = ct_scratch_get(m, total * sizeof(float), &t->mem_bytes);
  if (!t->mem) {
    ct_tape_free(t);
    return ct_errf(e, "out of memory: training forward needs %zu MB", total * sizeof(float) >> 20);
  }
  a.base = t->mem;
  a.used = 0;
  layout(t, &a, NP, K);
  float *h = t->mem + a.used, *x = h + N * D, *q = x + N * D, *k = q + N * D, *v = k + N * D,
        *att = v + N * D, *mlp = att + N * D, *probs = mlp + N * (size_t)c->inter;
  float *cols = probs + (size_t)Tt * Tt;

  /* embeddings */
  if (vision) {
    float *cl = t->cols ? t->cols : cols;
    ct_vision_im2col(cl, pixels, B, c);
    ct_vision_embed(h, x, cl, m, B, 0); /* the float weights, as the saved blocks */
    if (t->x) memcpy(t->x, h, sizeof(float) * N * D);
    layernorm_forward(h, t->pre_mean, t->pre_rstd, h, m->tower[1].pre_ln_w, m->tower[1].pre_ln_b,
                      (int64_t)N, D, c->eps);
  } else {
    for (int b = 0; b < B; b++)
      memcpy(t->ids + (size_t)b * Tt, ids + (size_t)b * T, sizeof(int32_t) * Tt);
    ct_text_embed(h, m, ids, B, T, Tt);
  }
  /* the frozen bottom keeps nothing; from the first trainable block on, everything is saved */
  const ct_tower_w *w = &m->tower[vision];
  ct_fwd_ws ws = {h, x, q, k, v, att, mlp, probs, NULL, 0, 0, (size_t)N * c->inter}; /* mlp rows packed tight */
  for (int l = 0; l < t->L; l++)
    ct_block_forward(&ws, &w->blocks[l], c, B, Tt, !vision, NULL,
                     l < t->first ? NULL : &t->la[l - t->first]);
  /* pooled rows (vision: row 0) -> final LN -> projection */
  for (int b = 0; b < B; b++)
    memcpy(t->pool_in + (size_t)b * D, h + ((size_t)b * Tt + t->pool[b]) * D, sizeof(float) * D);
  layernorm_forward(t->pooled, t->pool_mean, t->pool_rstd, t->pool_in, w->ln_w, w->ln_b, B, D,
                    c->eps);
  linear_forward(embeds, t->pooled, w->proj, NULL, B, D, E);
  return 0;
}

/* ---------------------------------------------------------- backward */

void ct_block_backward(float *dh, ct_bwd_ws *ws, const ct_block_w *g, const ct_block_w *w,
                       const ct_layer_acts *s, const ct_tower_cfg *c, int B, int T, int causal,
                       int need_dinp) {
  int D = c->hidden, I = c->inter, N = B * T;
  size_t ND = (size_t)N * D, NI = (size_t)N * I;
  /* MLP branch: out = mid + fc2(act(fc1(ln2(mid)))) */
  linear_backward_set(ws->dact, g->fc2_w, g->fc2_b, dh, s->actv, w->fc2_w, N, I, D);
  act_backward_set(ws->dfc1, ws->dact, s->fc1, (int64_t)NI, c->act);
  linear_backward_set(ws->dln, g->fc1_w, g->fc1_b, ws->dfc1, s->ln2, w->fc1_w, N, D, I);
  /* dh becomes the gradient of mid (the residual's dh plus the MLP branch's), in place: the
   * output's gradient is not read again */
  layernorm_backward(dh, g->ln2_w, g->ln2_b, ws->dln, s->mid, w->ln2_w, s->ln2_mean,
                     s->ln2_rstd, N, D);
  /* attention branch: mid = inp + out_proj(attn(q, k, v)) */
  linear_backward_set(ws->datt, g->o_w, g->o_b, dh, s->att, w->o_w, N, D, D);
  memset(ws->dq, 0, sizeof(float) * ND);
  memset(ws->dk, 0, sizeof(float) * ND);
  memset(ws->dv, 0, sizeof(float) * ND);
  attention_backward(ws->dq, ws->dk, ws->dv, ws->scratch, ws->datt, s->q, s->k, s->v, s->probs, B,
                     T, D, c->heads, causal);
  linear_backward_set(ws->dln, g->q_w, g->q_b, ws->dq, s->ln1, w->q_w, N, D, D);
  linear_backward(ws->dln, g->k_w, g->k_b, ws->dk, s->ln1, w->k_w, N, D, D);
  linear_backward(ws->dln, g->v_w, g->v_b, ws->dv, s->ln1, w->v_w, N, D, D);
  layernorm_backward(need_dinp ? dh : NULL, g->ln1_w, g->ln1_b, ws->dln, s->inp, w->ln1_w,
                     s->ln1_mean, s->ln1_rstd, N, D);
}

int ct_backward(ct_model *m, const ct_tape *t, const float *dembeds, ct_err *e) {
  int vision = t->vision, B = t->B, Tt = t->T, D = t->D, I = t->I, E = m->cfg.projection_dim;
  const ct_tower_cfg *c = vision ? &m->cfg.vision : &m->cfg.text;
  const ct_tower_w *w = &m->tower[vision], *g = ct_model_grads(m, vision);
  if (!t->need_pool) { /* only the projection (or nothing) trains */
    if (g->proj) linear_backward(NULL, g->proj, NULL, dembeds, t->pooled, w->proj, B, D, E);
    return 0;
  }
  size_t N = (size_t)B * Tt, ND = N * D, NI = N * (size_t)I;
  size_t total = 6 * ND + 2 * NI + (size_t)Tt * Tt + 2 * (size_t)B * D + 16;
  size_t mem_bytes;
  float *mem = ct_scratch_get(m, total * sizeof(float), &mem_bytes);
  if (!mem) return ct_errf(e, "out of memory: backward needs %zu MB", total * sizeof(float) >> 20);
  float *dh = mem, *dpooled = dh + ND, *dpin = dpooled + (size_t)B * D;
  ct_bwd_ws ws;
  ws.dln = dpin + (size_t)B * D;
  ws.datt = ws.dln + ND;
  ws.dq = ws.datt + ND;
  ws.dk = ws.dq + ND;
  ws.dv = ws.dk + ND;
  ws.dact = ws.dv + ND;
  ws.dfc1 = ws.dact + NI;
  ws.scratch = ws.dfc1 + NI;
  memset(dh, 0, sizeof(float) * (ND + 2 * (size_t)B * D));
  /* projection, then the final LN of the pooled rows */
  linear_backward(dpooled, g->proj, NULL, dembeds, t->pooled, w->proj, B, D, E);
  layernorm_backward(dpin, g->ln_w, g->ln_b, dpooled, t->pool_in, w->ln_w, t->pool_mean,
                     t->pool_rstd, B, D);
  /* the blocks, top down to the lowest trainable one */
  if (t->first < t->L || t->emb) {
    for (int b = 0; b < B; b++)
      memcpy(dh + ((size_t)b * Tt + t->pool[b]) * D, dpin + (size_t)b * D, sizeof(float) * D);
    for (int l = t->L - 1; l >= t->first; l--)
      ct_block_backward(dh, &ws, &g->blocks[l], &w->blocks[l], &t->la[l - t->first], c, B, Tt,
                        !vision, l > t->first || t->emb);
  }
  /* pre-LN and the embeddings */
  if (t->emb && vision) {
    int gs = c->image_size / c->patch_size, NP = gs * gs;
    int K = c->channels * c->patch_size * c->patch_size;
    float *dx = ws.dln, *dpe = g->patch_w ? ws.dq : NULL; /* dpe: the patch projections' [B*NP, D] */
    memset(dx, 0, sizeof(float) * ND);
    layernorm_backward(dx, g->pre_ln_w, g->pre_ln_b, dh, t->x, w->pre_ln_w, t->pre_mean,
                       t->pre_rstd, (int64_t)N, D);
    if (dpe) memset(dpe, 0, sizeof(float) * (size_t)B * NP * D);
    vision_embed_backward(dpe, g->cls_emb, g->pos_emb, dx, B, NP, D);
    if (dpe) linear_backward(NULL, g->patch_w, NULL, dpe, t->cols, w->patch_w, B * NP, K, D);
  } else if (t->emb) {
    text_embed_backward(g->tok_emb, g->pos_emb, dh, t->ids, B, Tt, Tt, D);
  }
  ct_scratch_put(m, mem, mem_bytes);
  return 0;
}
