/* fuzz_loader.c - loading a model directory whose model.safetensors is the
 * fuzz input (config.json is the fixed micro model of micro_config.h):
 * ct_model_load (find, config, open, name/shape/dtype matching, mapping or
 * F16/BF16/F64 conversion), then, when it loads, one forward pass of each
 * tower.
 *
 * Oracles: ASan/UBSan; a refused directory gets a message that names a file
 * inside it; a loaded model has every parameter resolved. */
#include "fuzz_common.h"

#include "model.h"
#include "micro_config.h"

static char dir[300], weights[340];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  snprintf(dir, sizeof dir, "%s", make_tmpdir("loader"));
  char cfg[340];
  snprintf(cfg, sizeof cfg, "%s/config.json", dir);
  write_file(cfg, MICRO_CONFIG, sizeof MICRO_CONFIG - 1);
  snprintf(weights, sizeof weights, "%s/model.safetensors", dir);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  write_file(weights, data, size);
  ct_model m;
  ct_model_paths p;
  ct_err e;
  if (ct_model_load(dir, &m, &p, &e) != 0) {
    check_msg(e.msg, dir);
    return 0;
  }
  for (int i = 0; i < m.nparams; i++) CHECK(m.params[i].data != NULL, "param %d unset", i);
  CHECK(m.tower[0].tok_emb && m.tower[1].patch_w && m.logit_scale && m.tower[0].blocks[0].fc2_b &&
            m.tower[1].blocks[0].q_w,
        "unresolved tower pointers");
  float pixels[2 * 3 * 4 * 4];
  for (int i = 0; i < (int)(sizeof pixels / sizeof *pixels); i++) pixels[i] = (float)(i % 7) - 3;
  float emb[2 * 4], pooled[2 * 4];
  ct_fwd_out o = {0};
  o.embeds = emb;
  o.pooled = pooled;
  CHECK(ct_encode_image(&m, pixels, 2, &o, &e) == 0, "encode_image: %s", e.msg);
  int32_t ids[2 * 5] = {6, 1, 2, 3, 7, 6, 5, 7, 7, 7};
  CHECK(ct_encode_text(&m, ids, 2, 5, &o, &e) == 0, "encode_text: %s", e.msg);
  ct_model_free(&m);
  return 0;
}
