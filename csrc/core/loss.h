/* loss.h - contrastive losses on embeddings: value and gradients.
 * Gradients are written (not accumulated) into the d* buffers, which may be
 * NULL when not wanted. Sizes: a [B,E], b [M,E]. */
#ifndef CT_LOSS_H
#define CT_LOSS_H

/* sentence-transformers MultipleNegativesRankingLoss: scores = scale cos(a, b)
 * [B, M], cross-entropy towards column i for row i, mean. symmetric adds the
 * backward loss over the first B columns (MultipleNegativesSymmetricRankingLoss)
 * and halves the sum. */
double ct_loss_mnrl(float *da, float *db, const float *a, const float *b, int B, int M, int E,
                    double scale, int symmetric);
/* transformers clip_loss with logits = exp(logit_scale) cos(a, b), a = images
 * [B,E], b = texts [B,E]; dlogit_scale written too. */
double ct_loss_clip(float *da, float *db, double *dlogit_scale, const float *a, const float *b,
                    int B, int E, double logit_scale);
/* sentence-transformers TripletLoss (euclidean, torch pairwise_distance eps 1e-6):
 * mean relu(|a - p + eps| - |a - n + eps| + margin) */
double ct_loss_triplet(float *da, float *dp, float *dn, const float *a, const float *p,
                       const float *n, int B, int E, double margin);
/* open_clip SigLipLoss: logits = exp(t) cos(a, b) + bias, labels +1 on the
 * diagonal and -1 elsewhere, loss = -sum logsigmoid(labels * logits) / B */
double ct_loss_siglip(float *da, float *db, double *dt, double *dbias, const float *a,
                      const float *b, int B, int E, double t, double bias);
/* The same losses restricted to rows r0..r1-1 of the batch (open_clip's local_loss):
 * those rows' scores against every column (and for the symmetric terms those columns
 * against every row), weighted as in the whole batch, so disjoint ranges covering the
 * batch add up to the loss above and their gradients to its gradients. da, db: the
 * gradient with respect to every row of a and b. 0 <= r0 < r1 <= B. */
double ct_loss_mnrl_rows(float *da, float *db, const float *a, const float *b, int B, int M, int E,
                         double scale, int symmetric, int r0, int r1);
double ct_loss_clip_rows(float *da, float *db, double *dlogit_scale, const float *a, const float *b,
                         int B, int E, double logit_scale, int r0, int r1);
double ct_loss_siglip_rows(float *da, float *db, double *dt, double *dbias, const float *a,
                           const float *b, int B, int E, double t, double bias, int r0, int r1);
/* mean cross-entropy of logits [N,C] towards labels (0-based); dlogits [N,C] */
double ct_softmax_xent(float *dlogits, const float *logits, const int *labels, int N, int C);

#endif
