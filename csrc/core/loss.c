/* loss.c - contrastive losses with their gradients, computed in double on
 * the (small) score matrices; embeddings are normalized with
 * x / max(|x|, 1e-12) as torch.nn.functional.normalize. */
#include "loss.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NORM_EPS 1e-12

/* xn = x / max(|x|, eps), norms[i] = max(|x_i|, eps) */
static void l2n(double *xn, double *norms, const float *x, int N, int E) {
  for (int i = 0; i < N; i++) {
    double s = 0;
    for (int j = 0; j < E; j++) s += (double)x[(size_t)i * E + j] * x[(size_t)i * E + j];
    double n = sqrt(s);
    if (n < NORM_EPS) n = NORM_EPS;
    norms[i] = n;
    for (int j = 0; j < E; j++) xn[(size_t)i * E + j] = x[(size_t)i * E + j] / n;
  }
}

/* dx = (dxn - xn (xn . dxn)) / n  (when the norm was clamped, dx = dxn / eps) */
static void l2n_back(float *dx, const double *dxn, const double *xn, const double *norms,
                     const float *x, int N, int E) {
  for (int i = 0; i < N; i++) {
    const double *g = dxn + (size_t)i * E, *y = xn + (size_t)i * E;
    double s = 0, ss = 0;
    for (int j = 0; j < E; j++) ss += (double)x[(size_t)i * E + j] * x[(size_t)i * E + j];
    int clamped = sqrt(ss) < NORM_EPS;
    for (int j = 0; j < E; j++) s += y[j] * g[j];
    for (int j = 0; j < E; j++)
      dx[(size_t)i * E + j] = (float)(clamped ? g[j] / norms[i] : (g[j] - y[j] * s) / norms[i]);
  }
}

/* cross-entropy of one row towards target; adds w * (softmax - onehot) into d */
static double xent_row(double *d, const double *s, int n, int target, double w) {
  double m = s[0];
  for (int j = 1; j < n; j++) if (s[j] > m) m = s[j];
  double z = 0;
  for (int j = 0; j < n; j++) z += exp(s[j] - m);
  double lse = m + log(z);
  if (d) {
    for (int j = 0; j < n; j++) d[j] += w * exp(s[j] - lse);
    d[target] -= w;
  }
  return lse - s[target];
}

typedef struct {
  double *an, *bn, *na, *nb, *S, *dS, *dan, *dbn;
  void *mem;
} work;

static int work_alloc(work *w, int B, int M, int E) {
  size_t n = (size_t)B * E * 2 + (size_t)M * E * 2 + B + M + (size_t)B * M * 2;
  double *m = calloc(n, sizeof(double));
  if (!m) return -1;
  w->mem = m;
  w->an = m; m += (size_t)B * E;
  w->bn = m; m += (size_t)M * E;
  w->na = m; m += B;
  w->nb = m; m += M;
  w->S = m; m += (size_t)B * M;
  w->dS = m; m += (size_t)B * M;
  w->dan = m; m += (size_t)B * E;
  w->dbn = m;
  return 0;
}

/* S = an bn^T (cosines) */
static void cosines(work *w, const float *a, const float *b, int B, int M, int E) {
  l2n(w->an, w->na, a, B, E);
  l2n(w->bn, w->nb, b, M, E);
  for (int i = 0; i < B; i++)
    for (int j = 0; j < M; j++) {
      double s = 0;
      for (int k = 0; k < E; k++) s += w->an[(size_t)i * E + k] * w->bn[(size_t)j * E + k];
      w->S[(size_t)i * M + j] = s;
    }
}

/* given dC = dL/dcos (in w->dS), produce da, db */
static void cos_back(work *w, float *da, float *db, const float *a, const float *b, int B, int M,
                     int E) {
  for (int i = 0; i < B; i++)
    for (int k = 0; k < E; k++) {
      double s = 0;
      for (int j = 0; j < M; j++) s += w->dS[(size_t)i * M + j] * w->bn[(size_t)j * E + k];
      w->dan[(size_t)i * E + k] = s;
    }
  for (int j = 0; j < M; j++)
    for (int k = 0; k < E; k++) {
      double s = 0;
      for (int i = 0; i < B; i++) s += w->dS[(size_t)i * M + j] * w->an[(size_t)i * E + k];
      w->dbn[(size_t)j * E + k] = s;
    }
  if (da) l2n_back(da, w->dan, w->an, w->na, a, B, E);
  if (db) l2n_back(db, w->dbn, w->bn, w->nb, b, M, E);
}

double ct_loss_mnrl(float *da, float *db, const float *a, const float *b, int B, int M, int E,
                    double scale, int symmetric) {
  work w;
  if (work_alloc(&w, B, M, E) != 0) return NAN;
  cosines(&w, a, b, B, M, E);
  double *row = malloc(sizeof(double) * (size_t)(M > B ? M : B));
  double *drow = malloc(sizeof(double) * (size_t)(M > B ? M : B));
  double loss = NAN;
  if (row && drow) {
    double fw = 0, bw = 0, wf = symmetric ? 0.5 / B : 1.0 / B;
    for (int i = 0; i < B; i++) {
      for (int j = 0; j < M; j++) row[j] = scale * w.S[(size_t)i * M + j];
      memset(drow, 0, sizeof(double) * M);
      fw += xent_row(drow, row, M, i, wf);
      for (int j = 0; j < M; j++) w.dS[(size_t)i * M + j] += scale * drow[j];
    }
    loss = fw / B;
    if (symmetric) { /* positives (first B columns) against anchors */
      for (int j = 0; j < B; j++) {
        for (int i = 0; i < B; i++) row[i] = scale * w.S[(size_t)i * M + j];
        memset(drow, 0, sizeof(double) * B);
        bw += xent_row(drow, row, B, j, wf);
        for (int i = 0; i < B; i++) w.dS[(size_t)i * M + j] += scale * drow[i];
      }
      loss = (fw / B + bw / B) / 2;
    }
    cos_back(&w, da, db, a, b, B, M, E);
  }
  free(row);
  free(drow);
  free(w.mem);
  return loss;
}

double ct_loss_clip(float *da, float *db, double *dls, const float *a, const float *b, int B,
                    int E, double logit_scale) {
  work w;
  if (work_alloc(&w, B, B, E) != 0) return NAN;
  cosines(&w, a, b, B, B, E); /* S[i][j] = cos(image i, text j) = logits_per_image / s */
  double s = exp(logit_scale), loss = 0;
  double *row = malloc(sizeof(double) * B), *drow = malloc(sizeof(double) * B);
  if (!row || !drow) {
    free(row); free(drow); free(w.mem);
    return NAN;
  }
  /* caption loss: CE over logits_per_text = rows of S^T; image loss: rows of S */
  for (int t = 0; t < B; t++) {
    for (int i = 0; i < B; i++) row[i] = s * w.S[(size_t)i * B + t];
    memset(drow, 0, sizeof(double) * B);
    loss += xent_row(drow, row, B, t, 0.5 / B);
    for (int i = 0; i < B; i++) w.dS[(size_t)i * B + t] += drow[i];
  }
  for (int i = 0; i < B; i++) {
    for (int t = 0; t < B; t++) row[t] = s * w.S[(size_t)i * B + t];
    memset(drow, 0, sizeof(double) * B);
    loss += xent_row(drow, row, B, i, 0.5 / B);
    for (int t = 0; t < B; t++) w.dS[(size_t)i * B + t] += drow[t];
  }
  loss /= 2 * B;
  /* w.dS holds dL/dlogits; dL/dlogit_scale = s * sum dlogits * cos; dL/dcos = s * dlogits */
  double g = 0;
  for (size_t k = 0; k < (size_t)B * B; k++) {
    g += w.dS[k] * w.S[k];
    w.dS[k] *= s;
  }
  if (dls) *dls = s * g;
  cos_back(&w, da, db, a, b, B, B, E);
  free(row);
  free(drow);
  free(w.mem);
  return loss;
}

double ct_loss_triplet(float *da, float *dp, float *dn, const float *a, const float *p,
                       const float *n, int B, int E, double margin) {
  const double eps = 1e-6;
  double loss = 0;
  if (da) memset(da, 0, sizeof(float) * (size_t)B * E);
  if (dp) memset(dp, 0, sizeof(float) * (size_t)B * E);
  if (dn) memset(dn, 0, sizeof(float) * (size_t)B * E);
  for (int i = 0; i < B; i++) {
    const float *ai = a + (size_t)i * E, *pi = p + (size_t)i * E, *ni = n + (size_t)i * E;
    double sp = 0, sn = 0;
    for (int k = 0; k < E; k++) {
      double x = (double)ai[k] - pi[k] + eps, y = (double)ai[k] - ni[k] + eps;
      sp += x * x;
      sn += y * y;
    }
    double dap = sqrt(sp), dan = sqrt(sn), v = dap - dan + margin;
    if (v <= 0) continue;
    loss += v;
    for (int k = 0; k < E; k++) {
      double gp = dap > 0 ? ((double)ai[k] - pi[k] + eps) / dap / B : 0;
      double gn = dan > 0 ? ((double)ai[k] - ni[k] + eps) / dan / B : 0;
      if (da) da[(size_t)i * E + k] += (float)(gp - gn);
      if (dp) dp[(size_t)i * E + k] += (float)(-gp);
      if (dn) dn[(size_t)i * E + k] += (float)(gn);
    }
  }
  return loss / B;
}

static double log_sigmoid(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }
static double sigmoid(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }

double ct_loss_siglip(float *da, float *db, double *dt, double *dbias, const float *a,
                      const float *b, int B, int E, double t, double bias) {
  work w;
  if (work_alloc(&w, B, B, E) != 0) return NAN;
  cosines(&w, a, b, B, B, E);
  double s = exp(t), loss = 0, gt = 0, gb = 0;
  for (int i = 0; i < B; i++)
    for (int j = 0; j < B; j++) {
      double z = i == j ? 1 : -1, l = s * w.S[(size_t)i * B + j] + bias;
      loss -= log_sigmoid(z * l);
      double dl = -z * sigmoid(-z * l) / B; /* dL/dlogit */
      gb += dl;
      gt += dl * w.S[(size_t)i * B + j];
      w.dS[(size_t)i * B + j] = dl * s;
    }
  if (dt) *dt = s * gt;
  if (dbias) *dbias = gb;
  cos_back(&w, da, db, a, b, B, B, E);
  free(w.mem);
  return loss / B;
}

/* Row ranges (open_clip's local_loss = True): the part of a loss that rows r0..r1-1
 * (0-based) of the global batch own - their rows of the score matrix against every
 * column, and for the symmetric terms their columns against every row - with the
 * global batch's weights, so the parts of disjoint ranges that cover the batch add up
 * to the loss and their gradients to its gradient. da and db receive the gradient of
 * the part with respect to every row of a and b (other ranks' rows too: a data-parallel
 * caller reduce-scatters them); dlogit_scale / dt / dbias the part's share. */

typedef struct {
  double *an, *bn, *na, *nb, *dan, *dbn;
  void *mem;
} rwork;

static int rwork_alloc(rwork *w, const float *a, const float *b, int B, int M, int E) {
  size_t n = (size_t)B * E * 2 + (size_t)M * E * 2 + B + M;
  double *m = calloc(n, sizeof(double));
  if (!m) return -1;
  w->mem = m;
  w->an = m; m += (size_t)B * E;
  w->bn = m; m += (size_t)M * E;
  w->dan = m; m += (size_t)B * E;
  w->dbn = m; m += (size_t)M * E;
  w->na = m; m += B;
  w->nb = m;
  l2n(w->an, w->na, a, B, E);
  l2n(w->bn, w->nb, b, M, E);
  return 0;
}

static double rdot(const rwork *w, int i, int j, int E) {
  const double *x = w->an + (size_t)i * E, *y = w->bn + (size_t)j * E;
  double s = 0;
  for (int k = 0; k < E; k++) s += x[k] * y[k];
  return s;
}

/* one score cos(a_i, b_j) with dL/dcos = g */
static void rback(rwork *w, int i, int j, int E, double g) {
  if (g == 0) return;
  const double *x = w->an + (size_t)i * E, *y = w->bn + (size_t)j * E;
  double *dx = w->dan + (size_t)i * E, *dy = w->dbn + (size_t)j * E;
  for (int k = 0; k < E; k++) {
    dx[k] += g * y[k];
    dy[k] += g * x[k];
  }
}

static void rwork_finish(rwork *w, float *da, float *db, const float *a, const float *b, int B, int M, int E) {
  if (da) l2n_back(da, w->dan, w->an, w->na, a, B, E);
  if (db) l2n_back(db, w->dbn, w->bn, w->nb, b, M, E);
  free(w->mem);
}

double ct_loss_mnrl_rows(float *da, float *db, const float *a, const float *b, int B, int M, int E,
                         double scale, int symmetric, int r0, int r1) {
  rwork w;
  if (rwork_alloc(&w, a, b, B, M, E) != 0) return NAN;
  double *row = malloc(sizeof(double) * (size_t)M * 2);
  if (!row) {
    free(w.mem);
    return NAN;
  }
  double *drow = row + M, fw = 0, bw = 0, wf = symmetric ? 0.5 / B : 1.0 / B;
  for (int i = r0; i < r1; i++) {
    for (int j = 0; j < M; j++) row[j] = scale * rdot(&w, i, j, E);
    memset(drow, 0, sizeof(double) * M);
    fw += xent_row(drow, row, M, i, wf);
    for (int j = 0; j < M; j++) rback(&w, i, j, E, scale * drow[j]);
  }
  double loss = fw / B;
  if (symmetric) { /* positive j (of the first B columns) against every anchor */
    for (int j = r0; j < r1; j++) {
      for (int i = 0; i < B; i++) row[i] = scale * rdot(&w, i, j, E);
      memset(drow, 0, sizeof(double) * B);
      bw += xent_row(drow, row, B, j, wf);
      for (int i = 0; i < B; i++) rback(&w, i, j, E, scale * drow[i]);
    }
    loss = (fw / B + bw / B) / 2;
  }
  free(row);
  rwork_finish(&w, da, db, a, b, B, M, E);
  return loss;
}

double ct_loss_clip_rows(float *da, float *db, double *dls, const float *a, const float *b, int B,
                         int E, double logit_scale, int r0, int r1) {
  rwork w;
  if (rwork_alloc(&w, a, b, B, B, E) != 0) return NAN;
  double *row = malloc(sizeof(double) * (size_t)B * 3);
  if (!row) {
    free(w.mem);
    return NAN;
  }
  double *drow = row + B, *cos = row + 2 * (size_t)B;
  double s = exp(logit_scale), loss = 0, g = 0;
  /* image rows i (logits_per_image, target i), then text rows t (logits_per_text, target t) */
  for (int pass = 0; pass < 2; pass++)
    for (int r = r0; r < r1; r++) {
      for (int k = 0; k < B; k++) {
        cos[k] = pass == 0 ? rdot(&w, r, k, E) : rdot(&w, k, r, E);
        row[k] = s * cos[k];
      }
      memset(drow, 0, sizeof(double) * B);
      loss += xent_row(drow, row, B, r, 0.5 / B);
      for (int k = 0; k < B; k++) {
        g += drow[k] * cos[k];
        if (pass == 0) rback(&w, r, k, E, s * drow[k]);
        else rback(&w, k, r, E, s * drow[k]);
      }
    }
  if (dls) *dls = s * g;
  free(row);
  rwork_finish(&w, da, db, a, b, B, B, E);
  return loss / (2 * B);
}

double ct_loss_siglip_rows(float *da, float *db, double *dt, double *dbias, const float *a,
                           const float *b, int B, int E, double t, double bias, int r0, int r1) {
  rwork w;
  if (rwork_alloc(&w, a, b, B, B, E) != 0) return NAN;
  double s = exp(t), loss = 0, gt = 0, gb = 0;
  for (int i = r0; i < r1; i++)
    for (int j = 0; j < B; j++) {
      double c = rdot(&w, i, j, E), z = i == j ? 1 : -1, l = s * c + bias;
      loss -= log_sigmoid(z * l);
      double dl = -z * sigmoid(-z * l) / B;
      gb += dl;
      gt += dl * c;
      rback(&w, i, j, E, dl * s);
    }
  if (dt) *dt = s * gt;
  if (dbias) *dbias = gb;
  rwork_finish(&w, da, db, a, b, B, B, E);
  return loss / B;
}

double ct_softmax_xent(float *dlogits, const float *logits, const int *labels, int N, int C) {
  double *row = malloc(sizeof(double) * (size_t)C * 2);
  if (!row) return NAN;
  double *d = row + C, loss = 0;
  for (int i = 0; i < N; i++) {
    for (int j = 0; j < C; j++) row[j] = logits[(size_t)i * C + j];
    memset(d, 0, sizeof(double) * C);
    loss += xent_row(d, row, C, labels[i], 1.0 / N);
    if (dlogits) for (int j = 0; j < C; j++) dlogits[(size_t)i * C + j] = (float)d[j];
  }
  free(row);
  return loss / N;
}
