/* fuzz_config.c - config.json and preprocessor_config.json parsing on
 * arbitrary bytes: ct_config_parse, then for an accepted config the parameter
 * table (ct_model_layout) and the config.json writer; ct_preproc_parse, then
 * for an accepted one the output sizes of a few image shapes.
 *
 * Oracles: ASan/UBSan; a refused config gets a message that starts with its
 * name; an accepted config yields a parameter table with non-negative sizes,
 * and ct_config_to_json + ct_config_parse gives back the same config. */
#include "fuzz_common.h"

#include "image.h"
#include "model.h"

static void same_tower(const ct_tower_cfg *a, const ct_tower_cfg *b, int vision) {
  CHECK(a->hidden == b->hidden && a->inter == b->inter && a->heads == b->heads &&
            a->layers == b->layers && a->act == b->act && a->eps == b->eps &&
            strcmp(a->act_name, b->act_name) == 0,
        "%s tower changed in the round trip", vision ? "vision" : "text");
  if (vision)
    CHECK(a->image_size == b->image_size && a->patch_size == b->patch_size &&
              a->channels == b->channels,
          "vision geometry changed in the round trip");
  else
    CHECK(a->vocab == b->vocab && a->max_pos == b->max_pos && a->bos == b->bos &&
              a->eos == b->eos && a->pad == b->pad,
          "text ids changed in the round trip");
}

static void fuzz_model_config(const uint8_t *data, size_t size) {
  ct_config c, c2;
  ct_err e;
  if (ct_config_parse((const char *)data, size, "config.json", &c, &e) != 0) {
    check_msg(e.msg, "config.json");
    return;
  }
  ct_param *ps = NULL;
  int n = 0;
  if (ct_model_layout(&c, &ps, &n, &e) == 0) {
    for (int i = 0; i < n; i++) {
      CHECK(ps[i].numel >= 0, "parameter %s has numel %lld", ps[i].name, (long long)ps[i].numel);
      for (int d = 0; d < ps[i].ndim; d++) CHECK(ps[i].shape[d] >= 0, "negative dim");
    }
    free(ps);
  }
  char *js = ct_config_to_json(&c);
  CHECK(js, "ct_config_to_json failed");
  CHECK(ct_config_parse(js, strlen(js), "written", &c2, &e) == 0,
        "the written config does not parse: %s\n%s", e.msg, js);
  free(js);
  CHECK(c.projection_dim == c2.projection_dim && c.logit_scale_init == c2.logit_scale_init,
        "top-level keys changed in the round trip");
  same_tower(&c.text, &c2.text, 0);
  same_tower(&c.vision, &c2.vision, 1);
}

static void fuzz_preproc(const uint8_t *data, size_t size) {
  ct_preproc p;
  ct_err e;
  if (ct_preproc_parse((const char *)data, size, "preprocessor_config.json", &p, &e) != 0) {
    check_msg(e.msg, "preprocessor_config.json");
    return;
  }
  static const int sizes[][2] = {{1, 1}, {3, 5}, {224, 224}, {4000, 3}, {1, 100000}};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    int w = 0, h = 0;
    if (ct_preproc_output_size(&p, sizes[i][0], sizes[i][1], &w, &h, &e) == 0)
      CHECK(w >= 1 && h >= 1 && (int64_t)w * h <= CT_IMAGE_MAX_PIXELS, "output size %dx%d", w,
            h);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_model_config(data, size);
  fuzz_preproc(data, size);
  return 0;
}
