/* model.c - CLIP config parsing, directory layout, parameter table and
 * weight loading. The encoders are in encoder.c. */
#include "model.h"
#include "torchfile.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blas.h"
#include "gemm.h"
#include "kernels.h"
#include "tensor.h"

/* ------------------------------------------------------------- config */

static void tower_defaults(ct_tower_cfg *t, int vision) {
  memset(t, 0, sizeof *t);
  t->act = CT_ACT_QUICK_GELU;
  strcpy(t->act_name, "quick_gelu");
  t->eps = 1e-5f;
  if (vision) { /* transformers CLIPVisionConfig defaults */
    t->hidden = 768; t->inter = 3072; t->heads = 12; t->layers = 12;
    t->image_size = 224; t->patch_size = 32; t->channels = 3;
  } else {      /* CLIPTextConfig defaults */
    t->hidden = 512; t->inter = 2048; t->heads = 8; t->layers = 12;
    t->vocab = 49408; t->max_pos = 77; t->bos = 49406; t->eos = 49407; t->pad = 1;
  }
}

static int get_int(const cJSON *o, const char *key, const char *where, const char *name,
                   int *out, int minv, ct_err *e) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!j || cJSON_IsNull(j)) return 0;
  if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) ||
      j->valuedouble < minv || j->valuedouble > 1e9)
    return ct_errf(e, "%s: %s%s must be an integer >= %d", name, where, key, minv);
  *out = (int)j->valuedouble;
  return 0;
}

static int get_float(const cJSON *o, const char *key, const char *where, const char *name,
                     float *out, ct_err *e) {
  const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!j || cJSON_IsNull(j)) return 0;
  if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
    return ct_errf(e, "%s: %s%s must be a number", name, where, key);
  *out = (float)j->valuedouble;
  return 0;
}

static int parse_act(const char *s, int *act) {
  if (!strcmp(s, "quick_gelu")) *act = CT_ACT_QUICK_GELU;
  else if (!strcmp(s, "gelu")) *act = CT_ACT_GELU;
  else if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh") || !strcmp(s, "gelu_fast"))
    *act = CT_ACT_GELU_TANH;
  else if (!strcmp(s, "relu")) *act = CT_ACT_RELU;
  else return -1;
  return 0;
}

static int parse_tower(const cJSON *o, ct_tower_cfg *t, int vision, const char *where,
                       const char *name, ct_err *e) {
  if (!o) return 0;
  if (!cJSON_IsObject(o)) return ct_errf(e, "%s: %s must be an object", name, where);
  char w[64];
  snprintf(w, sizeof w, "%s.", where);
  if (get_int(o, "hidden_size", w, name, &t->hidden, 1, e) ||
      get_int(o, "intermediate_size", w, name, &t->inter, 1, e) ||
      get_int(o, "num_attention_heads", w, name, &t->heads, 1, e) ||
      get_int(o, "num_hidden_layers", w, name, &t->layers, 0, e) ||
      get_float(o, "layer_norm_eps", w, name, &t->eps, e))
    return -1;
  const cJSON *act = cJSON_GetObjectItemCaseSensitive(o, "hidden_act");
  if (act && !cJSON_IsNull(act)) {
    if (!cJSON_IsString(act))
      return ct_errf(e, "%s: %shidden_act must be a string", name, w);
    if (parse_act(act->valuestring, &t->act) != 0)
      return ct_errf(e, "%s: %shidden_act '%s' is not supported (quick_gelu, gelu, gelu_new, relu)",
                     name, w, act->valuestring);
    snprintf(t->act_name, sizeof t->act_name, "%s", act->valuestring);
  }
  if (vision) {
    if (get_int(o, "image_size", w, name, &t->image_size, 1, e) ||
        get_int(o, "patch_size", w, name, &t->patch_size, 1, e) ||
        get_int(o, "num_channels", w, name, &t->channels, 1, e))
      return -1;
  } else {
    if (get_int(o, "vocab_size", w, name, &t->vocab, 1, e) ||
        get_int(o, "max_position_embeddings", w, name, &t->max_pos, 1, e) ||
        get_int(o, "bos_token_id", w, name, &t->bos, 0, e) ||
        get_int(o, "eos_token_id", w, name, &t->eos, 0, e) ||
        get_int(o, "pad_token_id", w, name, &t->pad, 0, e))
      return -1;
  }
  return 0;
}

/* Upper bounds on sizes read from config.json: far above any CLIP checkpoint
 * (ViT-bigG: 48 layers, width 1664), low enough that every parameter's
 * element count fits int64 and a hostile config cannot make the parameter
 * table itself exhaust memory. */
#define CT_CFG_MAX_LAYERS 1024
#define CT_CFG_MAX_WIDTH 65536
#define CT_CFG_MAX_INTER (1 << 20)
#define CT_CFG_MAX_VOCAB (1 << 24)

static int check_max(int v, int maxv, const char *w, const char *key, const char *name,
                     ct_err *e) {
  if (v > maxv)
    return ct_errf(e, "%s: %s%s%s %d is too large (at most %d)", name, w, *w ? "." : "", key, v,
                   maxv);
  return 0;
}

static int check_tower(const ct_tower_cfg *t, int vision, const char *name, ct_err *e) {
  const char *w = vision ? "vision_config" : "text_config";
  if (check_max(t->layers, CT_CFG_MAX_LAYERS, w, "num_hidden_layers", name, e) ||
      check_max(t->hidden, CT_CFG_MAX_WIDTH, w, "hidden_size", name, e) ||
      check_max(t->inter, CT_CFG_MAX_INTER, w, "intermediate_size", name, e) ||
      (vision && check_max(t->image_size, CT_CFG_MAX_WIDTH, w, "image_size", name, e)) ||
      (!vision && check_max(t->vocab, CT_CFG_MAX_VOCAB, w, "vocab_size", name, e)))
    return -1;
  if (t->hidden % t->heads)
    return ct_errf(e, "%s: %s.hidden_size %d is not divisible by num_attention_heads %d", name,
                   w, t->hidden, t->heads);
  if (!(t->eps > 0)) return ct_errf(e, "%s: %s.layer_norm_eps must be > 0", name, w);
  if (vision) {
    if (t->image_size % t->patch_size)
      return ct_errf(e, "%s: vision_config.image_size %d is not a multiple of patch_size %d",
                     name, t->image_size, t->patch_size);
    if (t->channels != 3)
      return ct_errf(e, "%s: vision_config.num_channels %d is not supported (3)", name,
                     t->channels);
    int g = t->image_size / t->patch_size;
    if ((int64_t)g * g + 1 > 100000)
      return ct_errf(e, "%s: vision_config: too many patches", name);
  } else if (t->max_pos > 100000) {
    return ct_errf(e, "%s: text_config.max_position_embeddings too large", name);
  }
  return 0;
}

int ct_config_parse(const char *json, size_t len, const char *name, ct_config *c, ct_err *e) {
  memset(c, 0, sizeof *c);
  tower_defaults(&c->text, 0);
  tower_defaults(&c->vision, 1);
  c->projection_dim = 512;
  c->logit_scale_init = 2.6592f;
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!root) return ct_errf(e, "%s: not valid JSON", name);
  int rc = 0;
  if (!cJSON_IsObject(root)) {
    rc = ct_errf(e, "%s: expected a JSON object", name);
    goto done;
  }
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
  if (mt && cJSON_IsString(mt) && strcmp(mt->valuestring, "clip") != 0) {
    rc = ct_errf(e, "%s: model_type '%s' is not a CLIP model ('clip')", name, mt->valuestring);
    goto done;
  }
  if (get_int(root, "projection_dim", "", name, &c->projection_dim, 1, e) ||
      get_float(root, "logit_scale_init_value", "", name, &c->logit_scale_init, e)) {
    rc = -1;
    goto done;
  }
  /* old configs keep overrides in *_config_dict; transformers applies them on top */
  if (parse_tower(cJSON_GetObjectItemCaseSensitive(root, "text_config"), &c->text, 0,
                  "text_config", name, e) ||
      parse_tower(cJSON_GetObjectItemCaseSensitive(root, "text_config_dict"), &c->text, 0,
                  "text_config_dict", name, e) ||
      parse_tower(cJSON_GetObjectItemCaseSensitive(root, "vision_config"), &c->vision, 1,
                  "vision_config", name, e) ||
      parse_tower(cJSON_GetObjectItemCaseSensitive(root, "vision_config_dict"), &c->vision, 1,
                  "vision_config_dict", name, e) ||
      check_tower(&c->text, 0, name, e) || check_tower(&c->vision, 1, name, e) ||
      check_max(c->projection_dim, CT_CFG_MAX_WIDTH, "", "projection_dim", name, e)) {
    rc = -1;
    goto done;
  }
done:
  cJSON_Delete(root);
  return rc;
}

char *ct_config_to_json(const ct_config *c) {
  cJSON *r = cJSON_CreateObject(), *t = cJSON_CreateObject(), *v = cJSON_CreateObject();
  cJSON *arch = cJSON_CreateArray();
  cJSON_AddItemToArray(arch, cJSON_CreateString("CLIPModel"));
  cJSON_AddItemToObject(r, "architectures", arch);
  cJSON_AddNumberToObject(r, "initializer_factor", 1.0);
  cJSON_AddNumberToObject(r, "logit_scale_init_value", c->logit_scale_init);
  cJSON_AddStringToObject(r, "model_type", "clip");
  cJSON_AddNumberToObject(r, "projection_dim", c->projection_dim);
  cJSON_AddStringToObject(t, "hidden_act", c->text.act_name);
  cJSON_AddNumberToObject(t, "hidden_size", c->text.hidden);
  cJSON_AddNumberToObject(t, "intermediate_size", c->text.inter);
  cJSON_AddNumberToObject(t, "layer_norm_eps", c->text.eps);
  cJSON_AddNumberToObject(t, "max_position_embeddings", c->text.max_pos);
  cJSON_AddStringToObject(t, "model_type", "clip_text_model");
  cJSON_AddNumberToObject(t, "num_attention_heads", c->text.heads);
  cJSON_AddNumberToObject(t, "num_hidden_layers", c->text.layers);
  cJSON_AddNumberToObject(t, "projection_dim", c->projection_dim);
  cJSON_AddNumberToObject(t, "vocab_size", c->text.vocab);
  cJSON_AddNumberToObject(t, "bos_token_id", c->text.bos);
  cJSON_AddNumberToObject(t, "eos_token_id", c->text.eos);
  cJSON_AddNumberToObject(t, "pad_token_id", c->text.pad);
  cJSON_AddItemToObject(r, "text_config", t);
  cJSON_AddStringToObject(v, "hidden_act", c->vision.act_name);
  cJSON_AddNumberToObject(v, "hidden_size", c->vision.hidden);
  cJSON_AddNumberToObject(v, "image_size", c->vision.image_size);
  cJSON_AddNumberToObject(v, "intermediate_size", c->vision.inter);
  cJSON_AddNumberToObject(v, "layer_norm_eps", c->vision.eps);
  cJSON_AddStringToObject(v, "model_type", "clip_vision_model");
  cJSON_AddNumberToObject(v, "num_attention_heads", c->vision.heads);
  cJSON_AddNumberToObject(v, "num_channels", c->vision.channels);
  cJSON_AddNumberToObject(v, "num_hidden_layers", c->vision.layers);
  cJSON_AddNumberToObject(v, "patch_size", c->vision.patch_size);
  cJSON_AddNumberToObject(v, "projection_dim", c->projection_dim);
  cJSON_AddItemToObject(r, "vision_config", v);
  cJSON_AddStringToObject(r, "torch_dtype", "float32");
  char *s = cJSON_Print(r);
  cJSON_Delete(r);
  return s;
}

/* ------------------------------------------------------------- layout */

/* The parameter table in one place: the names (transformers' CLIPModel state dict, in its
 * order), shapes and the pointer each resolves to. ct_model_layout builds the table from them
 * and records in each parameter its tower, block and slot; every later reader (the weight and
 * gradient resolvers, packing, training) goes by those, never by name. */
enum { SH_D, SH_I, SH_DD, SH_ID, SH_DI, SH_VOCAB, SH_POS, SH_PATCH, SH_PROJ, SH_SCALAR };
#define TW(f) (int)offsetof(ct_tower_w, f)
#define BW(f) (int)offsetof(ct_block_w, f)

/* one block's parameters, "<tower>.encoder.layers.<l>.<suffix>" (CLIPEncoderLayer order) */
static const struct { const char *suffix; int slot, shape; } block_params[] = {
    {"self_attn.k_proj.weight", BW(k_w), SH_DD},   {"self_attn.k_proj.bias", BW(k_b), SH_D},
    {"self_attn.v_proj.weight", BW(v_w), SH_DD},   {"self_attn.v_proj.bias", BW(v_b), SH_D},
    {"self_attn.q_proj.weight", BW(q_w), SH_DD},   {"self_attn.q_proj.bias", BW(q_b), SH_D},
    {"self_attn.out_proj.weight", BW(o_w), SH_DD}, {"self_attn.out_proj.bias", BW(o_b), SH_D},
    {"layer_norm1.weight", BW(ln1_w), SH_D},       {"layer_norm1.bias", BW(ln1_b), SH_D},
    {"mlp.fc1.weight", BW(fc1_w), SH_ID},          {"mlp.fc1.bias", BW(fc1_b), SH_I},
    {"mlp.fc2.weight", BW(fc2_w), SH_DI},          {"mlp.fc2.bias", BW(fc2_b), SH_D},
    {"layer_norm2.weight", BW(ln2_w), SH_D},       {"layer_norm2.bias", BW(ln2_b), SH_D},
};
enum { NBLOCK = sizeof block_params / sizeof *block_params };

/* the rest, in order; name NULL: the tower's blocks go here */
static const struct { int tower; const char *name; int slot, shape; } tower_params[] = {
    {0, "text_model.embeddings.token_embedding.weight", TW(tok_emb), SH_VOCAB},
    {0, "text_model.embeddings.position_embedding.weight", TW(pos_emb), SH_POS},
    {0, NULL, 0, 0},
    {0, "text_model.final_layer_norm.weight", TW(ln_w), SH_D},
    {0, "text_model.final_layer_norm.bias", TW(ln_b), SH_D},
    {1, "vision_model.embeddings.class_embedding", TW(cls_emb), SH_D},
    {1, "vision_model.embeddings.patch_embedding.weight", TW(patch_w), SH_PATCH},
    {1, "vision_model.embeddings.position_embedding.weight", TW(pos_emb), SH_POS},
    {1, "vision_model.pre_layrnorm.weight", TW(pre_ln_w), SH_D},
    {1, "vision_model.pre_layrnorm.bias", TW(pre_ln_b), SH_D},
    {1, NULL, 0, 0},
    {1, "vision_model.post_layernorm.weight", TW(ln_w), SH_D},
    {1, "vision_model.post_layernorm.bias", TW(ln_b), SH_D},
    {1, "visual_projection.weight", TW(proj), SH_PROJ},
    {0, "text_projection.weight", TW(proj), SH_PROJ},
    {-1, "logit_scale", 0, SH_SCALAR},
};
enum { NTOWER = sizeof tower_params / sizeof *tower_params };

/* the six linear weights of a block (packed; kept half in a half model), in pack order */
static const int lin_slot[6] = {BW(q_w), BW(k_w), BW(v_w), BW(o_w), BW(fc1_w), BW(fc2_w)};


static int shape_of(int rule, const ct_config *c, const ct_tower_cfg *t, int vision, int64_t *s) {
  int64_t D = t->hidden, I = t->inter, g = t->patch_size ? t->image_size / t->patch_size : 0;
  switch (rule) {
    case SH_D: s[0] = D; return 1;
    case SH_I: s[0] = I; return 1;
    case SH_DD: s[0] = D; s[1] = D; return 2;
    case SH_ID: s[0] = I; s[1] = D; return 2;
    case SH_DI: s[0] = D; s[1] = I; return 2;
    case SH_VOCAB: s[0] = t->vocab; s[1] = D; return 2;
    case SH_POS: s[0] = vision ? g * g + 1 : t->max_pos; s[1] = D; return 2;
    case SH_PATCH: s[0] = D; s[1] = t->channels; s[2] = t->patch_size; s[3] = t->patch_size; return 4;
    case SH_PROJ: s[0] = c->projection_dim; s[1] = D; return 2;
    default: return 0; /* SH_SCALAR */
  }
}

static int add_param(ct_param **ps, int *n, int *cap, const ct_config *c, int tower, int layer,
                     int slot, int rule, const char *name) {
  if (*n == *cap) {
    int nc = *cap ? *cap * 2 : 64;
    ct_param *np = realloc(*ps, sizeof(ct_param) * (size_t)nc);
    if (!np) return -1;
    *ps = np;
    *cap = nc;
  }
  ct_param *p = &(*ps)[(*n)++];
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "%s", name);
  p->requires_grad = 1;
  p->tower = tower;
  p->layer = layer;
  p->slot = slot;
  p->ndim = shape_of(rule, c, tower ? &c->vision : &c->text, tower == 1, p->shape);
  p->numel = 1;
  for (int i = 0; i < p->ndim; i++) p->numel *= p->shape[i];
  return 0;
}

int ct_model_layout(const ct_config *c, ct_param **params, int *n, ct_err *e) {
  ct_param *ps = NULL;
  int np = 0, cap = 0, fail = 0;
  for (int r = 0; r < NTOWER && !fail; r++) {
    int tw = tower_params[r].tower;
    if (tower_params[r].name) {
      fail = add_param(&ps, &np, &cap, c, tw, -1, tower_params[r].slot, tower_params[r].shape,
                       tower_params[r].name);
      continue;
    }
    for (int l = 0; l < (tw ? c->vision.layers : c->text.layers) && !fail; l++)
      for (int k = 0; k < NBLOCK && !fail; k++) {
        char name[96];
        snprintf(name, sizeof name, "%s.encoder.layers.%d.%s", tw ? "vision_model" : "text_model",
                 l, block_params[k].suffix);
        fail = add_param(&ps, &np, &cap, c, tw, l, block_params[k].slot, block_params[k].shape,
                         name);
      }
  }
  if (fail) {
    free(ps);
    return ct_errf(e, "out of memory building the parameter table");
  }
  *params = ps;
  *n = np;
  return 0;
}

int ct_model_find_param(const ct_model *m, const char *name) {
  for (int i = 0; i < m->nparams; i++)
    if (strcmp(m->params[i].name, name) == 0) return i;
  return -1;
}

/* the pointer of p in the tower pointers tw[2] */
static float **slot_of(ct_tower_w *tw, const ct_param *p) {
  char *base = p->layer < 0 ? (char *)&tw[p->tower] : (char *)&tw[p->tower].blocks[p->layer];
  return (float **)(base + p->slot);
}

ct_param *ct_model_tower_param(ct_model *m, int tower, int slot) {
  for (int i = 0; i < m->nparams; i++)
    if (m->params[i].tower == tower && m->params[i].layer < 0 && m->params[i].slot == slot)
      return &m->params[i];
  return NULL;
}

/* the index of block l's first parameter in a tower (the table's order) */
static int block_base(const ct_config *c, int tower, int l) {
  int i = 0;
  for (int r = 0; r < NTOWER; r++) {
    int L = tower_params[r].tower ? c->vision.layers : c->text.layers;
    if (tower_params[r].name) i++;
    else if (tower_params[r].tower == tower) return i + l * NBLOCK;
    else i += L * NBLOCK;
  }
  return -1;
}

void ct_model_resolve(ct_model *m) {
  for (int i = 0; i < m->nparams; i++) {
    ct_param *p = &m->params[i];
    if (p->tower < 0) m->logit_scale = p->data;
    else *slot_of(m->tower, p) = p->data;
  }
}

const ct_tower_w *ct_model_grads(ct_model *m, int vision) {
  for (int i = 0; i < m->nparams; i++) {
    ct_param *p = &m->params[i];
    if (p->tower != vision) continue;
    float *g = p->requires_grad ? p->grad : NULL;
    if (g) p->has_grad = 1;
    *slot_of(m->grad, p) = g;
  }
  return &m->grad[vision];
}

void *ct_scratch_get(ct_model *m, size_t n, size_t *got) {
  int best = -1;
  for (int i = 0; i < 6; i++)
    if (m->spare[i].p && m->spare[i].n >= n && (best < 0 || m->spare[i].n < m->spare[best].n))
      best = i;
  if (best >= 0) {
    void *p = m->spare[best].p;
    *got = m->spare[best].n;
    m->spare[best].p = NULL;
    m->spare[best].n = 0;
    return p;
  }
  *got = n;
  void *p = malloc(n ? n : 1);
  ct_mem_fault_in(p, n);
  return p;
}

void ct_scratch_put(ct_model *m, void *p, size_t n) {
  if (!p) return;
  int slot = -1;
  for (int i = 0; i < 6 && slot < 0; i++)
    if (!m->spare[i].p) slot = i;
  if (slot < 0) { /* full: replace the smallest if this one is larger */
    slot = 0;
    for (int i = 1; i < 6; i++)
      if (m->spare[i].n < m->spare[slot].n) slot = i;
    if (m->spare[slot].n >= n) {
      free(p);
      return;
    }
    free(m->spare[slot].p);
  }
  m->spare[slot].p = p;
  m->spare[slot].n = n;
}

/* ------------------------------------------------------------ packed weights */

/* Drop the resident pages wholly inside [p, p + n) of a read-only file mapping (they are read
 * back from the file if touched again). */
static void release_range(const void *p, size_t n) {
  long pg = sysconf(_SC_PAGESIZE);
  if (pg <= 0 || !p) return;
  uintptr_t a = (uintptr_t)p, b = a + n;
  uintptr_t a1 = (a + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1), b1 = b & ~((uintptr_t)pg - 1);
  if (b1 > a1) (void)madvise((void *)a1, b1 - a1, MADV_DONTNEED);
}

/* A mapped parameter never written since loading: the packed copy replaces it in the encoders,
 * and any later reader (training, saving, a view) faults the same bytes back from the file. */
static void release_mapped(const ct_param *p) {
  if (p->owned || p->gen != 0) return;
  if (p->data) release_range(p->data, (size_t)p->numel * sizeof(float));
  else release_range(p->half, (size_t)p->numel * sizeof(uint16_t));
}

static void *pack_alloc(int N, int K, size_t es) {
  size_t bytes = ct_pack_nt_floats(N, K) * es;
  bytes = (bytes + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, bytes ? bytes : 64);
  ct_mem_fault_in(p, bytes);
  return p;
}

static void free_packs(ct_pack_blk *pk, int L) {
  if (!pk) return;
  for (int l = 0; l < L; l++) {
    free(pk[l].qkv);
    free(pk[l].o);
    free(pk[l].fc1);
    free(pk[l].fc2);
  }
  free(pk);
}

void ct_model_unpack(ct_model *m) {
  for (int l = 0; l < m->cfg.text.layers && m->tower[0].blocks; l++) m->tower[0].blocks[l].pk = NULL;
  for (int l = 0; l < m->cfg.vision.layers && m->tower[1].blocks; l++) m->tower[1].blocks[l].pk = NULL;
  free_packs(m->tpk, m->cfg.text.layers);
  free_packs(m->vpk, m->cfg.vision.layers);
  m->tpk = m->vpk = NULL;
  free(m->patch_pk.p);
  memset(&m->patch_pk, 0, sizeof m->patch_pk);
}

/* The patch embedding (a GEMM of every image's patches at the start of the vision tower). */
static int pack_patch(ct_model *m, int frozen_only, ct_err *e) {
  if (ct_patch_pack_ok(m)) return 0; /* current: no lookup */
  ct_param *p = ct_model_tower_param(m, 1, TW(patch_w));
  if (!p || !p->data || (frozen_only && p->requires_grad)) return 0;
  m->patch_pk.src = &p->gen;
  const ct_tower_cfg *c = &m->cfg.vision;
  int N = c->hidden, K = c->channels * c->patch_size * c->patch_size;
  m->patch_pk.ready = 0;
  if (!m->patch_pk.p) m->patch_pk.p = pack_alloc(N, K, sizeof(float));
  if (!m->patch_pk.p) return ct_errf(e, "out of memory packing the patch embedding");
  ct_pack_parallel(N, K, p->data, K, m->patch_pk.p, PK_F32);
  m->patch_pk.gen = p->gen;
  m->patch_pk.ready = 1;
  return 0;
}

static int pack_tower(ct_model *m, int tower, ct_pack_blk **pkp, int frozen_only, ct_err *e) {
  const ct_tower_cfg *c = tower ? &m->cfg.vision : &m->cfg.text;
  const char *tw = tower ? "vision_model" : "text_model";
  ct_block_w *blocks = m->tower[tower].blocks;
  int L = c->layers, D = c->hidden, I = c->inter;
  int row[6]; /* where each linear weight sits among a block's parameters */
  for (int i = 0; i < 6; i++)
    for (int k = 0; k < NBLOCK; k++)
      if (block_params[k].slot == lin_slot[i]) row[i] = k;
  if (L <= 0) return 0;
  if (!*pkp) {
    *pkp = calloc((size_t)L, sizeof(ct_pack_blk));
    if (!*pkp) return ct_errf(e, "out of memory packing the %s weights", tw);
  }
  size_t dd = ct_pack_nt_floats(D, D);
  for (int l = 0; l < L; l++) {
    ct_pack_blk *pk = &(*pkp)[l];
    if (ct_pack_ok(pk)) { /* current: nothing to look up (every encode passes here) */
      blocks[l].pk = pk;
      continue;
    }
    ct_param *ps[6];
    int base = block_base(&m->cfg, tower, l);
    for (int i = 0; i < 6; i++) {
      ps[i] = &m->params[base + row[i]];
      pk->src[i] = &ps[i]->gen;
    }
    int frozen = 1;
    for (int i = 0; i < 6; i++) frozen &= !ps[i]->requires_grad;
    if (frozen_only && !frozen) continue;
    blocks[l].pk = NULL;
    pk->ready = 0;
    /* float data, or in a half model the mapped half values (packed half); a float copy
     * dropped after packing in a float model must be converted back first */
    int kind = -1;
    for (int i = 0; i < 6; i++) {
      if (!ps[i]->data && !(m->half_kind && ps[i]->half))
        return ct_errf(e, "packing: %s needs ct_model_materialize", ps[i]->name);
      int k = ps[i]->data ? PK_F32 : m->half_kind;
      if (kind >= 0 && k != kind)
        return ct_errf(e, "packing: %s layer %d mixes float and half weights", tw, l);
      kind = k;
    }
    if (pk->qkv && pk->kind != kind) { /* the model left half precision: new buffers */
      free(pk->qkv); free(pk->o); free(pk->fc1); free(pk->fc2);
      pk->qkv = pk->o = pk->fc1 = pk->fc2 = NULL;
    }
    pk->kind = kind;
    size_t es = ct_pack_elem_size(kind);
    if (!pk->qkv) pk->qkv = aligned_alloc(64, ((3 * dd * es) + 63) & ~(size_t)63);
    if (!pk->o) pk->o = pack_alloc(D, D, es);
    if (!pk->fc1) pk->fc1 = pack_alloc(I, D, es);
    if (!pk->fc2) pk->fc2 = pack_alloc(D, I, es);
    if (!pk->qkv || !pk->o || !pk->fc1 || !pk->fc2)
      return ct_errf(e, "out of memory packing the %s weights", tw);
    char *qkv = pk->qkv;
    void *dst[6] = {qkv, qkv + dd * es, qkv + 2 * dd * es, pk->o, pk->fc1, pk->fc2};
    int rows[6] = {D, D, D, D, I, D}, cols[6] = {D, D, D, D, D, I};
    for (int i = 0; i < 6; i++) { /* a stale block is repacked whole */
      const void *src = ps[i]->data ? (const void *)ps[i]->data : (const void *)ps[i]->half;
      ct_pack_parallel(rows[i], cols[i], src, cols[i], dst[i], kind);
      pk->gen[i] = ps[i]->gen;
      if (ps[i]->owned && ps[i]->half && ps[i]->gen == 0 && !ps[i]->pinned) {
        /* a float copy converted from the file's F16/BF16 and never written: the pack
         * replaces it, and ct_model_materialize converts it again if it is ever needed */
        free(ps[i]->data);
        ps[i]->data = NULL;
        ps[i]->owned = 0;
        *slot_of(m->tower, ps[i]) = NULL;
      }
      release_mapped(ps[i]);
    }
    pk->ready = 1;
    blocks[l].pk = pk;
  }
  return 0;
}

int ct_model_lazy(const ct_model *m) {
  for (int i = 0; i < m->nparams; i++)
    if (!m->params[i].data) return 1;
  return 0;
}

int ct_model_materialize(ct_model *m, ct_err *e) {
  for (int i = 0; i < m->nparams; i++) {
    ct_param *p = &m->params[i];
    if (p->data || !p->half) continue;
    float *d = malloc((size_t)(p->numel ? p->numel : 1) * sizeof(float));
    if (!d) return ct_errf(e, "out of memory converting '%s' to float32", p->name);
    ct_mem_fault_in(d, (size_t)p->numel * sizeof(float));
    for (int64_t j = 0; j < p->numel; j++)
      d[j] = p->dtype == CT_BF16 ? ct_bf16_to_f32(p->half[j]) : ct_f16_to_f32(p->half[j]);
    p->data = d;
    p->owned = 1;
  }
  /* the packs (half or float) hold the same values and stay in use until a weight changes */
  m->half_kind = 0;
  m->tok_emb_h = NULL;
  ct_model_resolve(m);
  return 0;
}

int ct_model_pack(ct_model *m, int frozen_only, ct_err *e) {
  if (m->pack_off || !ct_gemm_packed_available() || !m->params) return 0;
  if (pack_tower(m, 0, &m->tpk, frozen_only, e) != 0 ||
      pack_tower(m, 1, &m->vpk, frozen_only, e) != 0 ||
      pack_patch(m, frozen_only, e) != 0) {
    /* out of memory: back to the float weights, when they are all there */
    if (!ct_model_lazy(m)) ct_model_unpack(m);
    return -1;
  }
  return 0;
}

void ct_model_free(ct_model *m) {
  if (!m) return;
  ct_model_unpack(m);
  for (int i = 0; i < 6; i++) free(m->spare[i].p);
  if (m->params)
    for (int i = 0; i < m->nparams; i++) {
      if (m->params[i].owned) free(m->params[i].data);
      free(m->params[i].grad);
    }
  free(m->params);
  if (m->files)
    for (int i = 0; i < m->nfiles; i++) ct_st_close(&m->files[i]);
  free(m->files);
  for (int t = 0; t < 2; t++) {
    free(m->tower[t].blocks);
    free(m->grad[t].blocks);
  }
  memset(m, 0, sizeof *m);
}

static int alloc_blocks(ct_model *m, ct_err *e) {
  for (int t = 0; t < 2; t++) {
    size_t n = (size_t)(t ? m->cfg.vision.layers : m->cfg.text.layers) + 1;
    m->tower[t].blocks = calloc(n, sizeof(ct_block_w));
    m->grad[t].blocks = calloc(n, sizeof(ct_block_w));
    if (!m->tower[t].blocks || !m->grad[t].blocks) return ct_errf(e, "out of memory");
  }
  return 0;
}

int ct_model_init(const ct_config *cfg, ct_model *m, ct_err *e) {
  memset(m, 0, sizeof *m);
  m->cfg = *cfg;
  if (ct_model_layout(cfg, &m->params, &m->nparams, e) != 0) return -1;
  if (alloc_blocks(m, e) != 0) goto fail;
  for (int i = 0; i < m->nparams; i++) {
    ct_param *p = &m->params[i];
    p->data = calloc((size_t)(p->numel ? p->numel : 1), sizeof(float));
    if (!p->data) {
      ct_errf(e, "out of memory allocating %s", p->name);
      goto fail;
    }
    p->owned = 1;
    p->dtype = CT_F32;
  }
  ct_model_resolve(m);
  return 0;
fail:
  ct_model_free(m);
  return -1;
}

/* ------------------------------------------------------------ directory */

static int read_json_file(const char *path, cJSON **out, ct_err *e) {
  size_t len;
  char *s = ct_read_file(path, &len, 64u << 20, e);
  if (!s) return -1;
  *out = cJSON_ParseWithLength(s, len);
  free(s);
  if (!*out) return ct_errf(e, "%s: not valid JSON", path);
  return 0;
}

int ct_model_find(const char *dir, ct_model_paths *p, ct_err *e) {
  memset(p, 0, sizeof *p);
  char mod[1100];
  if (strlen(dir) >= sizeof p->root) return ct_errf(e, "%s: path too long", dir);
  struct stat st;
  if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode))
    return ct_errf(e, "%s: not a directory (expected a model directory holding config.json)", dir);
  snprintf(p->root, sizeof p->root, "%s", dir);
  if (ct_path_join(mod, sizeof mod, dir, "modules.json") == 0 && ct_file_exists(mod)) {
    cJSON *mj;
    if (read_json_file(mod, &mj, e) != 0) return -1;
    const char *sub = NULL;
    if (cJSON_IsArray(mj)) {
      const cJSON *it;
      cJSON_ArrayForEach(it, mj) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(it, "type");
        const cJSON *pa = cJSON_GetObjectItemCaseSensitive(it, "path");
        if (cJSON_IsString(ty) && cJSON_IsString(pa) && strstr(ty->valuestring, "CLIPModel")) {
          sub = pa->valuestring;
          break;
        }
      }
    }
    if (!sub) {
      cJSON_Delete(mj);
      return ct_errf(e, "%s: no sentence_transformers.models.CLIPModel module listed", mod);
    }
    if (*sub && ct_path_join(p->root, sizeof p->root, dir, sub) != 0) {
      cJSON_Delete(mj);
      return ct_errf(e, "%s: path too long", dir);
    }
    cJSON_Delete(mj);
    p->sentence_transformers = 1;
  }
  if (ct_path_join(p->config, sizeof p->config, p->root, "config.json") ||
      ct_path_join(p->preprocessor, sizeof p->preprocessor, p->root, "preprocessor_config.json") ||
      ct_path_join(p->vocab, sizeof p->vocab, p->root, "vocab.json") ||
      ct_path_join(p->merges, sizeof p->merges, p->root, "merges.txt"))
    return ct_errf(e, "%s: path too long", dir);
  if (stat(p->config, &st) == 0 && S_ISDIR(st.st_mode))
    return ct_errf(e, "%s: is a directory, expected a file", p->config);
  if (!ct_file_exists(p->config))
    return ct_errf(e, "%s: missing config.json (expected a Hugging Face CLIP directory or a sentence-transformers directory with modules.json)",
                   p->root);
  ct_path_join(p->weights, sizeof p->weights, p->root, "model.safetensors");
  if (stat(p->weights, &st) == 0 && S_ISDIR(st.st_mode))
    return ct_errf(e, "%s: is a directory, expected a file", p->weights);
  if (!ct_file_exists(p->weights)) {
    ct_path_join(p->weights, sizeof p->weights, p->root, "model.safetensors.index.json");
    if (!ct_file_exists(p->weights)) {
      ct_path_join(p->weights, sizeof p->weights, p->root, "pytorch_model.bin");
      if (!ct_file_exists(p->weights))
        return ct_errf(e, "%s: missing model.safetensors (or model.safetensors.index.json, or pytorch_model.bin)",
                       p->root);
      p->torch = 1; /* read by the restricted unpickler (torchfile.c) */
    } else {
      p->sharded = 1;
    }
  }
  return 0;
}

/* Open the weight files: one, or the shards named by the index. */
static int open_weights(ct_model *m, const ct_model_paths *p, ct_err *e) {
  if (!p->sharded) {
    m->files = calloc(1, sizeof(ct_st_file));
    if (!m->files) return ct_errf(e, "out of memory");
    if ((p->torch ? ct_torch_open(p->weights, &m->files[0], e)
                  : ct_st_open(p->weights, &m->files[0], e)) != 0)
      return -1;
    m->nfiles = 1;
    return 0;
  }
  cJSON *ix;
  if (read_json_file(p->weights, &ix, e) != 0) return -1;
  const cJSON *wm = cJSON_GetObjectItemCaseSensitive(ix, "weight_map");
  if (!cJSON_IsObject(wm)) {
    cJSON_Delete(ix);
    return ct_errf(e, "%s: missing \"weight_map\" object", p->weights);
  }
  int nf = 0, cap = 0, rc = 0;
  char **names = NULL;
  const cJSON *it;
  cJSON_ArrayForEach(it, wm) {
    if (!cJSON_IsString(it)) {
      rc = ct_errf(e, "%s: weight_map entry '%s' is not a file name", p->weights,
                   it->string ? it->string : "?");
      break;
    }
    const char *fn = it->valuestring;
    if (strchr(fn, '/') || strcmp(fn, "..") == 0) {
      rc = ct_errf(e, "%s: weight_map names a file outside the directory: '%s'", p->weights, fn);
      break;
    }
    int seen = 0;
    for (int i = 0; i < nf && !seen; i++) seen = strcmp(names[i], fn) == 0;
    if (seen) continue;
    if (nf == cap) {
      cap = cap ? cap * 2 : 8;
      char **nn = realloc(names, sizeof(char *) * (size_t)cap);
      if (!nn) {
        rc = ct_errf(e, "out of memory");
        break;
      }
      names = nn;
    }
    names[nf++] = (char *)fn;
  }
  if (!rc) {
    m->files = calloc((size_t)(nf ? nf : 1), sizeof(ct_st_file));
    if (!m->files) rc = ct_errf(e, "out of memory");
  }
  for (int i = 0; !rc && i < nf; i++) {
    char path[1200];
    if (ct_path_join(path, sizeof path, p->root, names[i]) != 0) {
      rc = ct_errf(e, "%s: path too long", p->root);
      break;
    }
    if (ct_st_open(path, &m->files[i], e) != 0) rc = -1;
    else m->nfiles++;
  }
  free(names);
  cJSON_Delete(ix);
  return rc;
}

static int shape_eq(const ct_param *p, const ct_st_entry *t) {
  if (p->ndim != t->ndim) return 0;
  for (int i = 0; i < p->ndim; i++)
    if (p->shape[i] != t->shape[i]) return 0;
  return 1;
}

static void shape_str(char *b, size_t n, int nd, const int64_t *s) {
  size_t k = (size_t)snprintf(b, n, "[");
  for (int i = 0; i < nd && k < n; i++)
    k += (size_t)snprintf(b + k, n - k, i ? ", %lld" : "%lld", (long long)s[i]);
  if (k < n) snprintf(b + k, n - k, "]");
}

/* The weights a half-precision model keeps in F16/BF16: the six linear weights of every
 * block and the token embedding. */
static int half_candidate(const ct_param *p) {
  if (p->layer < 0) return p->tower == 0 && p->slot == TW(tok_emb);
  for (int i = 0; i < 6; i++)
    if (p->slot == lin_slot[i]) return 1;
  return 0;
}

static int convert_param(ct_model *m, ct_param *q, const char *weights, ct_err *e) {
  for (int j = 0; j < m->nfiles; j++) {
    int k = ct_st_find(&m->files[j], q->name);
    if (k < 0) continue;
    q->data = malloc((size_t)(q->numel ? q->numel : 1) * sizeof(float));
    if (!q->data) return ct_errf(e, "%s: out of memory converting '%s'", m->files[j].path, q->name);
    q->owned = 1;
    return ct_st_to_f32(&m->files[j], k, q->data, e);
  }
  return ct_errf(e, "%s: missing tensor '%s'", weights, q->name);
}

int ct_model_load(const char *dir, ct_model *m, ct_model_paths *paths, ct_err *e) {
  return ct_model_load_ex(dir, 0, m, paths, e);
}

int ct_model_load_ex(const char *dir, unsigned flags, ct_model *m, ct_model_paths *paths,
                     ct_err *e) {
  memset(m, 0, sizeof *m);
  int half = (flags & CT_LOAD_HALF) && ct_gemm_packed_available() ? -1 : 0; /* -1: undecided */
  ct_model_paths local;
  ct_model_paths *p = paths ? paths : &local;
  if (ct_model_find(dir, p, e) != 0) return -1;
  size_t len;
  char *js = ct_read_file(p->config, &len, 16u << 20, e);
  if (!js) return -1;
  int rc = ct_config_parse(js, len, p->config, &m->cfg, e);
  free(js);
  if (rc) return -1;
  if (ct_model_layout(&m->cfg, &m->params, &m->nparams, e) != 0) return -1;
  if (alloc_blocks(m, e) != 0 || open_weights(m, p, e) != 0) goto fail;
  for (int i = 0; i < m->nparams; i++) {
    ct_param *q = &m->params[i];
    ct_st_file *f = NULL;
    int k = -1;
    for (int j = 0; j < m->nfiles && k < 0; j++) {
      k = ct_st_find(&m->files[j], q->name);
      if (k >= 0) f = &m->files[j];
    }
    if (k < 0) {
      ct_errf(e, "%s: missing tensor '%s'", p->weights, q->name);
      goto fail;
    }
    const ct_st_entry *t = &f->entries[k];
    if (!shape_eq(q, t)) {
      /* logit_scale is sometimes stored as [1] */
      if (!(q->ndim == 0 && t->numel == 1)) {
        char a[96], b[96];
        shape_str(a, sizeof a, t->ndim, t->shape);
        shape_str(b, sizeof b, q->ndim, q->shape);
        ct_errf(e, "%s: tensor '%s' has shape %s, but config.json implies %s", f->path, q->name,
                a, b);
        goto fail;
      }
    }
    q->dtype = t->dtype;
    void *ptr = ct_st_ptr(f, k);
    if (half && half_candidate(q)) {
      int hk = t->dtype == CT_F16 ? PK_F16 : t->dtype == CT_BF16 ? PK_BF16 : 0;
      if (hk && ((uintptr_t)ptr & 1) == 0 && (half < 0 || half == hk)) {
        half = hk;
        q->half = ptr; /* mapped, kept half; no float copy */
        continue;
      }
      half = 0; /* not uniformly half: the whole model loads as float32 */
    }
    if (t->dtype == CT_F32 && ((uintptr_t)ptr & 3) == 0) {
      q->data = ptr; /* mapped, not copied */
    } else {
      if (t->dtype != CT_F32 && t->dtype != CT_F16 && t->dtype != CT_BF16 && t->dtype != CT_F64) {
        ct_errf(e, "%s: tensor '%s' has dtype %s (expected F32, F16 or BF16)", f->path, q->name,
                ct_dtype_name(t->dtype));
        goto fail;
      }
      q->data = malloc((size_t)(q->numel ? q->numel : 1) * sizeof(float));
      if (!q->data) {
        ct_errf(e, "%s: out of memory converting '%s'", f->path, q->name);
        goto fail;
      }
      q->owned = 1;
      if (ct_st_to_f32(f, k, q->data, e) != 0) goto fail;
      if ((t->dtype == CT_F16 || t->dtype == CT_BF16) && ((uintptr_t)ptr & 1) == 0 &&
          half_candidate(q))
        q->half = ptr; /* the packs may replace the float copy (ct_model_pack) */
      release_range(ptr, (size_t)(t->end - t->begin)); /* the source pages: only the float copy is used now */
    }
  }
  for (int i = 0; i < m->nparams; i++) { /* half refused after all: convert what was kept */
    ct_param *q = &m->params[i];
    if (!q->data && q->half && half <= 0 && convert_param(m, q, p->weights, e) != 0) goto fail;
  }
  ct_model_resolve(m);
  if (half > 0) {
    m->half_kind = half;
    const ct_param *te = ct_model_tower_param(m, 0, TW(tok_emb));
    m->tok_emb_h = te ? te->half : NULL;
    /* the block weights exist only packed: pack now (the encoders have nothing else) */
    if (ct_model_pack(m, 0, e) != 0) goto fail;
  }
  return 0;
fail:
  ct_model_free(m);
  return -1;
}
