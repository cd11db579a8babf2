/* train.h - training forward (saving activations) and backward through the
 * two towers, down to the lowest trainable parameter only. */
#ifndef CT_TRAIN_H
#define CT_TRAIN_H

#include "model.h"

typedef struct ct_tape {
  int vision;           /* 1: image tower, 0: text tower */
  int B, T, D, I, NH, L;
  int first;            /* layers first..L-1 have saved activations */
  int emb;              /* embedding parameters trainable: their inputs saved */
  int need_pool;        /* something below the projection is trainable */
  float *mem;           /* every saved buffer lives in this one block */
  size_t mem_bytes;
  ct_layer_acts *la;    /* [L - first] */
  float *pool_in, *pool_mean, *pool_rstd, *pooled; /* [B,D], [B], [B], [B,D] */
  float *x, *pre_mean, *pre_rstd;                  /* vision: pre-LN input [N,D], stats [N] */
  float *cols;                                     /* vision: im2col [B*NP, K] */
  int32_t *ids;                                    /* text: [B, T] */
  int *pool;                                       /* [B] pooled row per sequence */
} ct_tape;

/* Which parts of a tower are trainable. */
typedef struct ct_trainable {
  int emb, post, proj, first_layer; /* first_layer = L when no block is trainable */
} ct_trainable;

void ct_tower_trainable(const ct_model *m, int vision, ct_trainable *t);

/* Allocate (zeroed) gradients of every parameter that requires grad and has none. */
int ct_model_alloc_grads(ct_model *m, ct_err *e);
void ct_model_zero_grads(ct_model *m);

/* Forward one tower, keeping what backward needs. pixels [B,3,S,S] (vision)
 * or ids [B,T] (text). embeds [B,E] is written. */
int ct_forward_train(ct_model *m, int vision, const float *pixels, const int32_t *ids,
                     int B, int T, float *embeds, ct_tape *tape, ct_err *e);
/* Scratch of a block backward, N = B*T rows: dln, datt, dq, dk, dv [N, D], dact, dfc1
 * [N, I], scratch [T, T]. */
typedef struct ct_bwd_ws {
  float *dln, *datt, *dq, *dk, *dv, *dact, *dfc1, *scratch;
} ct_bwd_ws;
/* Backward through one saved block (s, from ct_block_forward): dh [N, D] holds the gradient of
 * the block's output and receives that of its input (when need_dinp; else it is left
 * undefined); the parameters' gradients accumulate into g's non-NULL pointers (w: the
 * weights). */
void ct_block_backward(float *dh, ct_bwd_ws *ws, const ct_block_w *g, const ct_block_w *w,
                       const ct_layer_acts *s, const ct_tower_cfg *c, int B, int T, int causal,
                       int need_dinp);
/* Accumulate parameter gradients from dembeds [B,E]. Grads must be allocated. */
int ct_backward(ct_model *m, const ct_tape *tape, const float *dembeds, ct_err *e);
void ct_tape_free(ct_tape *t);
/* Free a tape, giving its memory back to the model for reuse. */
void ct_tape_release(ct_model *m, ct_tape *t);

#endif
