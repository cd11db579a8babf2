/* capi.c - the public C API (include/clip.h) on top of the core: a model
 * directory's weights (model.h), its tokenizer (bpe.h) and its image
 * processor (image.h) behind one opaque handle. No Lua here.
 *
 * Every failure is a ct_err copied into the caller's buffer; scratch memory is
 * malloc'd and freed inside one call; no thread is started. Nothing here is
 * static and mutable: two models (or two Lua states, or two hosts in one
 * process) share nothing but OpenBLAS's threads (docs/c-api.md). */
#include "clip.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "bpe.h"
#include "ct.h"
#include "image.h"
#include "model.h"
#include "pool.h"
#include "tensor.h"

#define BATCH 32

struct clip_model {
  ct_model m;
  ct_bpe *bpe;    /* NULL when loaded with CLIP_LOAD_NO_TOKENIZER */
  int bpe_mode;   /* CT_BPE_HF or CT_BPE_OPENAI */
  ct_preproc pp;
};

const char *clip_version(void) { return CLIP_VERSION; }

/* Copy a message into the caller's buffer; returns CLIP_ERROR. */
static int fail(char *err, size_t errlen, const char *msg) {
  if (err && errlen > 0) snprintf(err, errlen, "%s", msg);
  return CLIP_ERROR;
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int failf(char *err, size_t errlen, const char *fmt, ...) {
  if (err && errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return CLIP_ERROR;
}

clip_model *clip_model_load(const char *dir, char *err, size_t errlen) {
  return clip_model_load_ex(dir, 0, err, errlen);
}

clip_model *clip_model_load_ex(const char *dir, unsigned flags, char *err, size_t errlen) {
  if (!dir) {
    fail(err, errlen, "clip_model_load: dir is NULL");
    return NULL;
  }
  if (flags & ~(CLIP_LOAD_NO_TOKENIZER | CLIP_LOAD_OPENAI_TOKENIZER | CLIP_LOAD_NO_PACK |
                CLIP_LOAD_HALF)) {
    failf(err, errlen, "clip_model_load: unknown flags 0x%x", flags);
    return NULL;
  }
  clip_model *cm = calloc(1, sizeof *cm);
  ct_model_paths *p = calloc(1, sizeof *p);
  ct_err e;
  if (!cm || !p) {
    free(cm);
    free(p);
    fail(err, errlen, "clip_model_load: out of memory");
    return NULL;
  }
  if ((flags & CLIP_LOAD_HALF) && (flags & CLIP_LOAD_NO_PACK)) {
    free(cm);
    free(p);
    fail(err, errlen, "clip_model_load: CLIP_LOAD_HALF needs the packed weights (drop CLIP_LOAD_NO_PACK)");
    return NULL;
  }
  ct_pool *prev_pool = ct_pool_make_current(NULL);
  int lrc = ct_model_load_ex(dir, (flags & CLIP_LOAD_HALF) ? CT_LOAD_HALF : 0, &cm->m, p, &e);
  ct_pool_make_current(prev_pool);
  if (lrc != 0) { /* frees what it took on failure */
    free(cm);
    free(p);
    fail(err, errlen, e.msg);
    return NULL;
  }
  cm->bpe_mode = (flags & CLIP_LOAD_OPENAI_TOKENIZER) ? CT_BPE_OPENAI : CT_BPE_HF;
  /* packed now, never later: encodes take a const model and may run concurrently */
  cm->m.pack_off = (flags & CLIP_LOAD_NO_PACK) != 0;
  {
    ct_pool *prev = ct_pool_make_current(NULL);
    if (ct_model_pack(&cm->m, 0, &e) != 0) ct_model_unpack(&cm->m); /* out of memory: unpacked */
    ct_pool_make_current(prev);
  }
  cm->m.pack_off = 1;
  if (!(flags & CLIP_LOAD_NO_TOKENIZER)) {
    if (!ct_file_exists(p->vocab) || !ct_file_exists(p->merges)) {
      failf(err, errlen,
            "%s: missing tokenizer files (vocab.json and merges.txt); load with "
            "CLIP_LOAD_NO_TOKENIZER to use the model without a tokenizer",
            p->root);
      goto fail;
    }
    cm->bpe = ct_bpe_load(p->vocab, p->merges, &e);
    if (!cm->bpe) {
      fail(err, errlen, e.msg);
      goto fail;
    }
  }
  if (ct_file_exists(p->preprocessor)) {
    if (ct_preproc_load(p->preprocessor, &cm->pp, &e) != 0) {
      fail(err, errlen, e.msg);
      goto fail;
    }
  } else { /* OpenAI's defaults at the model's image size, as clip.load does */
    ct_preproc_default(&cm->pp);
    cm->pp.shortest_edge = cm->pp.crop_w = cm->pp.crop_h = cm->m.cfg.vision.image_size;
  }
  free(p);
  return cm;
fail:
  free(p);
  clip_model_free(cm);
  return NULL;
}

void clip_model_free(clip_model *m) {
  if (!m) return;
  ct_model_free(&m->m);
  ct_bpe_free(m->bpe);
  free(m);
}

void clip_model_info(const clip_model *cm, clip_info *info) {
  const ct_config *c = &cm->m.cfg;
  memset(info, 0, sizeof *info);
  info->embed_dim = c->projection_dim;
  info->image_size = c->vision.image_size;
  info->channels = c->vision.channels;
  info->patch_size = c->vision.patch_size;
  info->context_length = c->text.max_pos;
  info->vocab_size = c->text.vocab;
  info->text_hidden = c->text.hidden;
  info->text_layers = c->text.layers;
  info->text_heads = c->text.heads;
  info->vision_hidden = c->vision.hidden;
  info->vision_layers = c->vision.layers;
  info->vision_heads = c->vision.heads;
  snprintf(info->text_act, sizeof info->text_act, "%s", c->text.act_name);
  snprintf(info->vision_act, sizeof info->vision_act, "%s", c->vision.act_name);
  int dtype = -1;
  for (int i = 0; i < cm->m.nparams; i++) {
    const ct_param *p = &cm->m.params[i];
    info->total_params += p->numel;
    if (p->tower == 0) info->text_params += p->numel; /* its projection included */
    if (p->tower == 1) info->vision_params += p->numel;
    if (dtype == -1) dtype = p->dtype;
    else if (dtype != p->dtype) dtype = -2;
  }
  snprintf(info->dtype, sizeof info->dtype, "%s",
           dtype == -2 ? "mixed" : dtype < 0 ? "F32" : ct_dtype_name((ct_dtype)dtype));
  info->logit_scale = cm->m.logit_scale ? cm->m.logit_scale[0] : 0.0f;
  info->has_tokenizer = cm->bpe != NULL;
  info->bos_id = cm->bpe ? ct_bpe_bos(cm->bpe) : c->text.bos;
  info->eos_id = cm->bpe ? ct_bpe_eos(cm->bpe) : c->text.eos;
}

/* ------------------------------------------------------------- tokenize */

/* bos ids eos into out[ctx]; *n ids. */
static int tokenize_ctx(clip_model *cm, const char *text, int32_t *out, int *n, ct_err *e) {
  if (!cm->bpe)
    return ct_errf(e, "model was loaded without a tokenizer (CLIP_LOAD_NO_TOKENIZER)");
  if (!text) return ct_errf(e, "text is NULL");
  return ct_bpe_encode_ctx(cm->bpe, text, strlen(text), cm->bpe_mode, cm->m.cfg.text.max_pos,
                           out, n, e);
}

int clip_tokenize(clip_model *cm, const char *text, int32_t *ids, int cap, char *err,
                  size_t errlen) {
  int ctx = cm->m.cfg.text.max_pos, n = 0;
  if (ctx < 2) return failf(err, errlen, "clip_tokenize: context length %d < 2", ctx);
  int32_t *tmp = malloc(sizeof(int32_t) * (size_t)ctx);
  if (!tmp) return fail(err, errlen, "clip_tokenize: out of memory");
  ct_err e;
  if (tokenize_ctx(cm, text, tmp, &n, &e) != 0) {
    free(tmp);
    return failf(err, errlen, "clip_tokenize: %s", e.msg);
  }
  if (n > cap) {
    free(tmp);
    return failf(err, errlen, "clip_tokenize: %d ids do not fit in a buffer of %d", n, cap);
  }
  memcpy(ids, tmp, sizeof(int32_t) * (size_t)n);
  free(tmp);
  return n;
}

/* ----------------------------------------------------------- preprocess */

static int check_out_size(const clip_model *cm, const ct_image *img, const char *name,
                          ct_err *e) {
  int ow, oh, S = cm->m.cfg.vision.image_size;
  if (ct_preproc_output_size(&cm->pp, img->w, img->h, &ow, &oh, e) != 0) return -1;
  if (ow != S || oh != S)
    return ct_errf(e,
                   "%s: the preprocessor gives %dx%d pixels but the model wants %dx%d "
                   "(check preprocessor_config.json against config.json's image_size)",
                   name, ow, oh, S, S);
  return 0;
}

int clip_preprocess_file(const clip_model *cm, const char *path, float *pixels, char *err,
                         size_t errlen) {
  if (!path) return fail(err, errlen, "clip_preprocess_file: path is NULL");
  int S = cm->m.cfg.vision.image_size;
  ct_err e;
  if (ct_preprocess_file(path, &cm->pp, S, S, pixels, &e) != 0) return fail(err, errlen, e.msg);
  return CLIP_OK;
}

int clip_preprocess_mem(const clip_model *cm, const void *data, size_t len, const char *name,
                        float *pixels, char *err, size_t errlen) {
  if (!name) name = "<bytes>";
  if (!data && len) return failf(err, errlen, "%s: data is NULL", name);
  ct_image img = {0};
  ct_err e;
  int rc = ct_image_decode_mem(data, len, name, &img, &e);
  if (rc == 0) rc = check_out_size(cm, &img, name, &e);
  if (rc == 0) rc = ct_preprocess(&img, &cm->pp, pixels, &e);
  ct_image_free(&img);
  return rc == 0 ? CLIP_OK : fail(err, errlen, e.msg);
}

int clip_preprocess_rgb(const clip_model *cm, const uint8_t *rgb, int width, int height,
                        float *pixels, char *err, size_t errlen) {
  if (width <= 0 || height <= 0 || (int64_t)width * height > CT_IMAGE_MAX_PIXELS)
    return failf(err, errlen, "clip_preprocess_rgb: bad image size %dx%d", width, height);
  if (!rgb) return fail(err, errlen, "clip_preprocess_rgb: rgb is NULL");
  ct_image img = {width, height, (uint8_t *)rgb}; /* read only */
  ct_err e;
  if (check_out_size(cm, &img, "clip_preprocess_rgb", &e) != 0 ||
      ct_preprocess(&img, &cm->pp, pixels, &e) != 0)
    return fail(err, errlen, e.msg);
  return CLIP_OK;
}

/* ---------------------------------------------------------------- encode */

#define CHECK_FLAGS(fn)                                                      \
  if (flags & ~CLIP_NORMALIZE)                                               \
    return failf(err, errlen, fn ": unknown flags 0x%x", flags)

static void finish(const clip_model *cm, float *out, int n, unsigned flags) {
  if (flags & CLIP_NORMALIZE) clip_normalize(out, n, cm->m.cfg.projection_dim);
}

int clip_encode_pixels(const clip_model *cm, const float *pixels, int n, float *out,
                       unsigned flags, char *err, size_t errlen) {
  CHECK_FLAGS("clip_encode_pixels");
  if (n <= 0) return failf(err, errlen, "clip_encode_pixels: batch of %d images", n);
  if (!pixels || !out) return fail(err, errlen, "clip_encode_pixels: NULL buffer");
  const ct_tower_cfg *c = &cm->m.cfg.vision;
  size_t per = (size_t)c->channels * c->image_size * c->image_size;
  for (size_t i = 0; i < per * (size_t)n; i++) {
    float v = pixels[i];
    if (v != v || v - v != 0)
      return failf(err, errlen, "clip_encode_pixels: pixels hold NaN or Inf (image %zu)",
                   i / per);
  }
  ct_fwd_out o = {0};
  o.embeds = out;
  ct_err e;
  ct_pool_make_current(NULL); /* never a pool a Lua state left current */
  if (ct_encode_image(&cm->m, pixels, n, &o, &e) != 0) return fail(err, errlen, e.msg);
  finish(cm, out, n, flags);
  return CLIP_OK;
}

int clip_encode_ids(const clip_model *cm, const int32_t *ids, int n, int len, float *out,
                    unsigned flags, char *err, size_t errlen) {
  CHECK_FLAGS("clip_encode_ids");
  if (n <= 0) return failf(err, errlen, "clip_encode_ids: batch of %d texts", n);
  if (!ids || !out) return fail(err, errlen, "clip_encode_ids: NULL buffer");
  ct_fwd_out o = {0};
  o.embeds = out;
  ct_err e;
  ct_pool_make_current(NULL); /* never a pool a Lua state left current */
  if (ct_encode_text(&cm->m, ids, n, len, &o, &e) != 0) return fail(err, errlen, e.msg);
  finish(cm, out, n, flags);
  return CLIP_OK;
}

int clip_encode_image_files(const clip_model *cm, const char *const *paths, int n, float *out,
                            unsigned flags, char *err, size_t errlen) {
  CHECK_FLAGS("clip_encode_image_files");
  if (n <= 0) return failf(err, errlen, "clip_encode_image_files: batch of %d images", n);
  if (!paths || !out) return fail(err, errlen, "clip_encode_image_files: NULL buffer");
  const ct_tower_cfg *c = &cm->m.cfg.vision;
  size_t per = (size_t)c->channels * c->image_size * c->image_size;
  int bs = n < BATCH ? n : BATCH;
  float *px = malloc(sizeof(float) * per * (size_t)bs);
  if (!px) return fail(err, errlen, "clip_encode_image_files: out of memory");
  ct_err e;
  int rc = CLIP_OK;
  for (int a = 0; a < n && rc == CLIP_OK; a += bs) {
    int k = n - a < bs ? n - a : bs;
    for (int i = 0; i < k; i++) {
      const char *path = paths[a + i];
      if (!path) {
        rc = failf(err, errlen, "clip_encode_image_files: item %d: path is NULL", a + i);
        break;
      }
      if (ct_preprocess_file(path, &cm->pp, c->image_size, c->image_size, px + per * i, &e)) {
        rc = failf(err, errlen, "item %d: %s", a + i, e.msg);
        break;
      }
    }
    if (rc != CLIP_OK) break;
    ct_fwd_out o = {0};
    o.embeds = out + (size_t)a * cm->m.cfg.projection_dim;
    ct_pool_make_current(NULL); /* never a pool a Lua state left current */
    if (ct_encode_image(&cm->m, px, k, &o, &e) != 0) rc = fail(err, errlen, e.msg);
  }
  free(px);
  if (rc == CLIP_OK) finish(cm, out, n, flags);
  return rc;
}

int clip_encode_texts(clip_model *cm, const char *const *texts, int n, float *out,
                      unsigned flags, char *err, size_t errlen) {
  CHECK_FLAGS("clip_encode_texts");
  if (n <= 0) return failf(err, errlen, "clip_encode_texts: batch of %d texts", n);
  if (!texts || !out) return fail(err, errlen, "clip_encode_texts: NULL buffer");
  int ctx = cm->m.cfg.text.max_pos;
  int bs = n < BATCH ? n : BATCH;
  int32_t *ids = malloc(sizeof(int32_t) * (size_t)ctx * bs);
  int32_t *row = malloc(sizeof(int32_t) * (size_t)ctx);
  if (!ids || !row) {
    free(ids);
    free(row);
    return fail(err, errlen, "clip_encode_texts: out of memory");
  }
  int32_t pad = cm->m.cfg.text.eos >= 0 && cm->m.cfg.text.eos < cm->m.cfg.text.vocab
                    ? cm->m.cfg.text.eos : 0;
  ct_err e;
  int rc = CLIP_OK;
  for (int a = 0; a < n && rc == CLIP_OK; a += bs) {
    int k = n - a < bs ? n - a : bs, T = 0;
    int lens[BATCH];
    /* tokenize into rows of ctx, then repack to the longest row */
    for (int i = 0; i < k; i++) {
      if (tokenize_ctx(cm, texts[a + i], ids + (size_t)i * ctx, &lens[i], &e) != 0) {
        rc = failf(err, errlen, "clip_encode_texts: item %d: %s", a + i, e.msg);
        break;
      }
      if (lens[i] > T) T = lens[i];
    }
    if (rc != CLIP_OK) break;
    for (int i = 0; i < k; i++) {
      memcpy(row, ids + (size_t)i * ctx, sizeof(int32_t) * (size_t)lens[i]);
      for (int t = lens[i]; t < T; t++) row[t] = pad;
      memcpy(ids + (size_t)i * T, row, sizeof(int32_t) * (size_t)T);
    }
    ct_fwd_out o = {0};
    o.embeds = out + (size_t)a * cm->m.cfg.projection_dim;
    ct_pool_make_current(NULL); /* never a pool a Lua state left current */
    if (ct_encode_text(&cm->m, ids, k, T, &o, &e) != 0) rc = fail(err, errlen, e.msg);
  }
  free(ids);
  free(row);
  if (rc == CLIP_OK) finish(cm, out, n, flags);
  return rc;
}

/* ---------------------------------------------------------------- helpers */

void clip_normalize(float *x, int n, int dim) {
  if (n > 0 && dim > 0) ct_l2_normalize_rows(x, x, n, dim, 1e-12f);
}

int clip_cosine_similarity(const float *a, int na, const float *b, int nb, int dim,
                           float *out) {
  if (na <= 0 || nb <= 0 || dim <= 0 || !a || !b || !out) return CLIP_ERROR;
  /* the same arithmetic as clip.cosine_similarity: normalize, then one GEMM */
  float *an = malloc(sizeof(float) * (size_t)na * dim);
  float *bn = malloc(sizeof(float) * (size_t)nb * dim);
  int rc = CLIP_ERROR;
  if (an && bn) {
    ct_l2_normalize_rows(an, a, na, dim, 1e-12f);
    ct_l2_normalize_rows(bn, b, nb, dim, 1e-12f);
    ct_sgemm(0, 1, na, nb, dim, 1.0f, an, dim, bn, dim, 0.0f, out, nb);
    rc = CLIP_OK;
  }
  free(an);
  free(bn);
  return rc;
}
