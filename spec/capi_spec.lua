-- spec/capi_spec.lua - the C API (include/clip.h, csrc/capi/capi.c): the static and
-- shared libraries, a C program that exercises every function and whose
-- outputs must equal the Lua API's (pixels and ids bit for bit, embeddings to
-- 1e-5), thread use of one model, and
-- `make install` with the pkg-config file (docs/c-api.md).
local clip = require "clip"
local H = require "spec.helpers"

local MODEL = H.fixtures .. "models/tiny"
local IMG1 = H.fixtures .. "images/natural.jpg"
local IMG2 = H.fixtures .. "images/palette_trns.png"
local TEXT1, TEXT2 = "a photo of a cat", "Two dogs, playing in the SNOW!"

local shell = require "spec.support.shell"
local sh, must = shell.sh, shell.must

-- round a number to float32 (values are printed with %.9g, which identifies a float32)
local function f32(x) return (string.unpack("f", string.pack("f", x))) end

local function floats(s)
  local out = {}
  for w in s:gmatch("%S+") do out[#out + 1] = f32(tonumber(w)) end
  return out
end

-- exact: preprocessing and tokenizing share every operation with the Lua side
local function assert_bits(actual, expected, label)
  local e = H.flatten(type(expected) == "userdata" and expected:totable() or expected)
  assert.equal(#e, #actual, label .. ": count")
  for i = 1, #e do
    if f32(e[i]) ~= actual[i] then
      error(("%s: value %d differs: C %.9g, Lua %.9g"):format(label, i, actual[i], e[i]), 2)
    end
  end
end

-- forward passes: the same kernels, but a Lua state may run its GEMMs on its
-- own thread pool, sliced differently from a plain C call, which changes the
-- last bits (observed 2e-7); 1e-5 is far inside docs/numerics.md's 1e-4
local EMB_TOL = 1e-5
local function assert_near(actual, expected, label)
  H.assert_close(actual, expected, { atol = EMB_TOL, label = label })
end

local CHECK_C = [==[
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "clip.h"

static void row(const char *k, const float *v, size_t n) {
  printf("%s:", k);
  for (size_t i = 0; i < n; i++) printf(" %.9g", v[i]);
  printf("\n");
}
static void ids_row(const char *k, const int32_t *v, int n) {
  printf("%s:", k);
  for (int i = 0; i < n; i++) printf(" %d", (int)v[i]);
  printf("\n");
}
static char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)len + 1);
  *n = fread(b, 1, (size_t)len, f);
  fclose(f);
  return b;
}

typedef struct { const clip_model *m; const float *px; float *out; int D; int rc; } job;
static void *worker(void *a) {
  job *j = a;
  for (int k = 0; k < 5 && j->rc == 0; k++)
    j->rc = clip_encode_pixels(j->m, j->px, 2, j->out, 0, NULL, 0);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 9) return 2;
  const char *model = argv[1], *img[2] = {argv[2], argv[3]}, *rgbf = argv[4];
  int W = atoi(argv[5]), Hh = atoi(argv[6]);
  const char *texts[2] = {argv[7], argv[8]};
  char err[512];
  int r;
  printf("version: %s %d\n", clip_version(), strcmp(clip_version(), CLIP_VERSION) == 0);

  clip_model *bad = clip_model_load("/nonexistent/model", err, sizeof err);
  printf("load_missing: %s|%s\n", bad ? "non-null" : "null", err);
  bad = clip_model_load("/nonexistent/model", NULL, 0);
  printf("load_null_err: %s\n", bad ? "non-null" : "null");
  char small[8];
  clip_model_load("/nonexistent/model", small, sizeof small);
  printf("load_small_err: %zu|%s\n", strlen(small), small);
  bad = clip_model_load_ex(model, 0x80, err, sizeof err);
  printf("load_bad_flags: %s|%s\n", bad ? "non-null" : "null", err);
  clip_model_free(NULL);

  clip_model *m = clip_model_load(model, err, sizeof err);
  if (!m) { fprintf(stderr, "%s\n", err); return 1; }
  clip_info info;
  clip_model_info(m, &info);
  printf("info: %d %d %d %d %d %lld %lld %lld %s %d %d %d %d %d %d %s %s\n", info.embed_dim,
         info.image_size, info.patch_size, info.context_length, info.vocab_size,
         (long long)info.total_params, (long long)info.text_params,
         (long long)info.vision_params, info.dtype, info.has_tokenizer, info.bos_id,
         info.eos_id, info.text_layers, info.vision_hidden, info.vision_heads, info.text_act,
         info.vision_act);
  printf("logit_scale: %.9g\n", info.logit_scale);
  int D = info.embed_dim, S = info.image_size, ctx = info.context_length;
  size_t P = (size_t)3 * S * S;

  int32_t *ids = calloc((size_t)2 * ctx, sizeof *ids);
  int n[2];
  for (int i = 0; i < 2; i++) {
    n[i] = clip_tokenize(m, texts[i], ids + (size_t)i * ctx, ctx, err, sizeof err);
    ids_row(i ? "ids2" : "ids1", ids + (size_t)i * ctx, n[i]);
  }
  int32_t tmp[4];
  r = clip_tokenize(m, texts[0], tmp, 2, err, sizeof err);
  printf("tokenize_small: %d|%s\n", r, err);
  r = clip_tokenize(m, "bad \xff utf8", ids + 0, 0, err, sizeof err);
  printf("tokenize_invalid: %d|%s\n", r, err);
  r = clip_tokenize(m, texts[0], ids, ctx, err, sizeof err); /* restore row 1 */

  float *px = malloc(sizeof(float) * 2 * P), *px2 = malloc(sizeof(float) * P);
  for (int i = 0; i < 2; i++) {
    r = clip_preprocess_file(m, img[i], px + P * i, err, sizeof err);
    if (r) { fprintf(stderr, "%s\n", err); return 1; }
  }
  row("pixels1", px, P);
  size_t len;
  char *bytes = slurp(img[0], &len);
  r = clip_preprocess_mem(m, bytes, len, "mem.jpg", px2, err, sizeof err);
  printf("mem_equal: %d %d\n", r, memcmp(px2, px, sizeof(float) * P) == 0);
  r = clip_preprocess_mem(m, bytes, len / 2, "half.jpg", px2, err, sizeof err);
  printf("mem_truncated: %d|%s\n", r, err);
  free(bytes);
  bytes = slurp(rgbf, &len);
  r = clip_preprocess_rgb(m, (const uint8_t *)bytes, W, Hh, px2, err, sizeof err);
  printf("rgb_equal: %d %d %d\n", r, (size_t)W * Hh * 3 == len,
         memcmp(px2, px, sizeof(float) * P) == 0);
  r = clip_preprocess_rgb(m, (const uint8_t *)bytes, 0, Hh, px2, err, sizeof err);
  printf("rgb_bad_size: %d|%s\n", r, err);
  free(bytes);
  r = clip_preprocess_file(m, "/nonexistent/cat.png", px2, err, sizeof err);
  printf("pre_missing: %d|%s\n", r, err);

  float *e = malloc(sizeof(float) * 2 * D), *f = malloc(sizeof(float) * 2 * D);
  r = clip_encode_pixels(m, px, 2, e, 0, err, sizeof err);
  printf("encode_pixels: %d\n", r);
  row("image_embeds", e, (size_t)2 * D);
  r = clip_encode_image_files(m, img, 2, f, 0, err, sizeof err);
  printf("files_equal_pixels: %d %d\n", r, memcmp(e, f, sizeof(float) * 2 * D) == 0);
  r = clip_encode_image_files(m, img, 2, f, CLIP_NORMALIZE, err, sizeof err);
  row("image_embeds_norm", f, (size_t)2 * D);
  const char *withbad[2] = {img[0], "/nonexistent/dog.jpg"};
  r = clip_encode_image_files(m, withbad, 2, f, 0, err, sizeof err);
  printf("files_missing: %d|%s\n", r, err);

  float *te = malloc(sizeof(float) * 2 * D), *tf = malloc(sizeof(float) * 2 * D);
  r = clip_encode_texts(m, texts, 2, te, 0, err, sizeof err);
  printf("encode_texts: %d\n", r);
  row("text_embeds", te, (size_t)2 * D);
  /* the same ids as a padded [2, T] block */
  int T = n[0] > n[1] ? n[0] : n[1];
  int32_t *blk = malloc(sizeof(int32_t) * 2 * T);
  for (int i = 0; i < 2; i++)
    for (int t = 0; t < T; t++) blk[i * T + t] = t < n[i] ? ids[(size_t)i * ctx + t] : info.eos_id;
  r = clip_encode_ids(m, blk, 2, T, tf, 0, err, sizeof err);
  printf("ids_equal_texts: %d %d\n", r, memcmp(te, tf, sizeof(float) * 2 * D) == 0);
  blk[1] = info.vocab_size + 5;
  r = clip_encode_ids(m, blk, 2, T, tf, 0, err, sizeof err);
  printf("bad_id: %d|%s\n", r, err);
  r = clip_encode_ids(m, blk, 1, ctx + 1, tf, 0, err, sizeof err);
  printf("too_long: %d|%s\n", r, err);

  float sim[4];
  r = clip_cosine_similarity(e, 2, te, 2, D, sim);
  printf("cosine_rc: %d\n", r);
  row("cosine", sim, 4);
  clip_normalize(e, 2, D);
  row("normalized", e, (size_t)2 * D);

  px[5] = 0.0f / 0.0f;
  r = clip_encode_pixels(m, px, 2, f, 0, err, sizeof err);
  printf("nan: %d|%s\n", r, err);
  r = clip_preprocess_file(m, img[0], px, err, sizeof err);
  r = clip_encode_pixels(m, px, 2, f, 0x10, err, sizeof err);
  printf("flags: %d|%s\n", r, err);
  r = clip_encode_pixels(m, px, 0, f, 0, err, sizeof err);
  printf("empty: %d|%s\n", r, err);

  /* one model, four threads at once (const functions) */
  clip_encode_pixels(m, px, 2, e, 0, err, sizeof err);
  pthread_t th[4];
  job jobs[4];
  int same = 1;
  for (int t = 0; t < 4; t++) {
    jobs[t] = (job){m, px, malloc(sizeof(float) * 2 * D), D, 0};
    pthread_create(&th[t], NULL, worker, &jobs[t]);
  }
  for (int t = 0; t < 4; t++) {
    pthread_join(th[t], NULL);
    same = same && jobs[t].rc == 0 && memcmp(jobs[t].out, e, sizeof(float) * 2 * D) == 0;
    free(jobs[t].out);
  }
  printf("threads_equal: %d\n", same);

  clip_model *nt = clip_model_load_ex(model, CLIP_LOAD_NO_TOKENIZER, err, sizeof err);
  clip_info ni;
  clip_model_info(nt, &ni);
  r = clip_tokenize(nt, texts[0], ids, ctx, err, sizeof err);
  printf("no_tokenizer: %d %d|%s\n", ni.has_tokenizer, r, err);
  clip_model_free(nt);

  /* an F16 checkpoint kept half (CLIP_LOAD_HALF) gives the float32 load's embeddings */
  {
    char half_dir[1200];
    snprintf(half_dir, sizeof half_dir, "%s-gelu-fp16", model);
    clip_model *hf = clip_model_load_ex(half_dir, CLIP_LOAD_NO_TOKENIZER | CLIP_LOAD_HALF, err, sizeof err);
    clip_model *ff = clip_model_load_ex(half_dir, CLIP_LOAD_NO_TOKENIZER, err, sizeof err);
    clip_model *bad = clip_model_load_ex(half_dir, CLIP_LOAD_HALF | CLIP_LOAD_NO_PACK, err, sizeof err);
    printf("half_nopack: %d|%s\n", bad == NULL, err);
    int eq = 0;
    if (hf && ff) {
      clip_info hi;
      clip_model_info(hf, &hi);
      size_t np = (size_t)3 * hi.image_size * hi.image_size;
      float *hp = malloc(sizeof(float) * np), *o1 = malloc(sizeof(float) * 2 * hi.embed_dim),
            *o2 = malloc(sizeof(float) * 2 * hi.embed_dim);
      for (size_t i = 0; i < np; i++) hp[i] = (float)((i * 7919) % 101) / 50.0f - 1.0f;
      int32_t hid[2][3] = {{1, 320, 2}, {1, 929, 2}}; /* the fixture's vocabulary is 1000 */
      eq = clip_encode_pixels(hf, hp, 1, o1, 0, err, sizeof err) == 0 &&
           clip_encode_pixels(ff, hp, 1, o2, 0, err, sizeof err) == 0 &&
           memcmp(o1, o2, sizeof(float) * hi.embed_dim) == 0 &&
           clip_encode_ids(hf, &hid[0][0], 2, 3, o1, 0, err, sizeof err) == 0 &&
           clip_encode_ids(ff, &hid[0][0], 2, 3, o2, 0, err, sizeof err) == 0 &&
           memcmp(o1, o2, sizeof(float) * 2 * hi.embed_dim) == 0;
      free(hp); free(o1); free(o2);
    }
    printf("half_equal: %d|%s\n", eq, eq ? "" : err);
    clip_model_free(hf);
    clip_model_free(ff);
  }

  clip_model_free(m);
  free(ids); free(px); free(px2); free(e); free(f); free(te); free(tf); free(blk);
  printf("done\n");
  return 0;
}
]==]

local function parse(out)
  local r = {}
  for line in out:gmatch("[^\n]+") do
    local k, v = line:match("^([%w_]+):%s?(.*)$")
    if k then r[k] = v end
  end
  return r
end

describe("C API", function()
  local tmp, libs
  setup(function()
    must("make -s all lib c-example >/dev/null")
    libs = must("make -s capi-libs"):gsub("%s+$", "")
    tmp = H.tmpdir()
    local f = assert(io.open(tmp .. "/check.c", "wb"))
    f:write(CHECK_C)
    f:close()
  end)
  teardown(function() if tmp then os.execute("rm -rf '" .. tmp .. "'") end end)

  it("builds the static library from the core only: no Lua in it", function()
    local members = must("ar t build/libclip.a")
    assert.truthy(members:find("capi.o", 1, true))
    assert.falsy(members:find("l_%w+%.o"), "a binding object is in libclip.a:\n" .. members)
    assert.falsy(members:find("lclip.o", 1, true))
    local undef = must("nm -u build/libclip.a")
    assert.falsy(undef:find("lua_"), "libclip.a refers to the Lua API")
    assert.falsy(undef:find("luaL_"), "libclip.a refers to the Lua API")
  end)

  it("exports only clip_* from the shared library", function()
    local syms = must("nm -D --defined-only build/libclip.so")
    local n = 0
    for name in syms:gmatch("%x+ [TDBR] ([%w_]+)") do
      n = n + 1
      assert.truthy(name:match("^clip_"), "libclip.so exports " .. name)
    end
    assert.is_true(n >= 15, "expected the clip_* functions, found " .. n)
    assert.truthy(must("readelf -d build/libclip.so"):find("SONAME.-libclip%.so%.0"))
  end)

  it("has a header that compiles alone as C99 and as C++ with all warnings as errors", function()
    local f = assert(io.open(tmp .. "/h.c", "wb"))
    f:write('#include "clip.h"\nint main(void) { return clip_version() == 0; }\n')
    f:close()
    must("cc -std=c99 -pedantic -Wall -Wextra -Werror -Iinclude -c '" .. tmp .. "/h.c' -o '" .. tmp .. "/h.o'")
    must("c++ -x c++ -std=c++11 -Wall -Wextra -Werror -Iinclude -c '" .. tmp .. "/h.c' -o '" .. tmp .. "/h2.o'")
  end)

  it("matches the Lua API, statically and dynamically linked", function()
    must(("cc -std=c11 -Wall -Wextra -Werror -O1 -Iinclude -o '%s/check_static' '%s/check.c' build/libclip.a %s -lpthread")
      :format(tmp, tmp, libs))
    local build = must("realpath build"):gsub("%s+$", "")
    must(("cc -std=c11 -Wall -Wextra -Werror -O1 -Iinclude -o '%s/check_shared' '%s/check.c' -Lbuild -lclip -Wl,-rpath,'%s' -lpthread")
      :format(tmp, tmp, build))
    -- the shared one really uses libclip.so
    local ldd = must("ldd '" .. tmp .. "/check_shared'")
    assert.truthy(ldd:find("libclip.so.0 => " .. build .. "/libclip.so.0", 1, true), ldd)

    local img = clip.image.load(IMG1)
    local rgbf = tmp .. "/img1.rgb"
    local f = assert(io.open(rgbf, "wb"))
    f:write(img:bytes())
    f:close()
    local args = ("'%s' '%s' '%s' '%s' %d %d '%s' '%s'"):format(MODEL, IMG1, IMG2, rgbf, img.width,
      img.height, TEXT1, TEXT2)

    local model = clip.load(MODEL)
    local outs = {}
    for _, kind in ipairs({ "static", "shared" }) do
      local out = must("timeout 120 '" .. tmp .. "/check_" .. kind .. "' " .. args)
      outs[kind] = out
      local r = parse(out)
      assert.equal("done", out:match("([^\n]+)\n?$"), out)
      assert.equal("0.1.0 1", r.version)
      assert.equal(clip.version, r.version:match("^%S+"))

      -- errors: NULL result, the message in the buffer, truncation, no crash
      assert.truthy(r.load_missing:find("^null|/nonexistent/model: missing config.json"), r.load_missing)
      assert.equal("null", r.load_null_err)
      assert.equal("7|/nonexi", r.load_small_err)
      assert.truthy(r.load_bad_flags:find("^null|clip_model_load: unknown flags 0x80"), r.load_bad_flags)

      -- info agrees with the Lua side
      local cfg = model.config
      local total, text, vision = 0, 0, 0
      for _, p in ipairs(model:parameter_info()) do
        total = total + p.numel
        if p.name:match("^text_model%.") or p.name == "text_projection.weight" then text = text + p.numel end
        if p.name:match("^vision_model%.") or p.name == "visual_projection.weight" then vision = vision + p.numel end
      end
      assert.equal(table.concat({ cfg.projection_dim, cfg.vision_config.image_size, cfg.vision_config.patch_size,
        cfg.text_config.max_position_embeddings, cfg.text_config.vocab_size, total, text, vision, "F32", 1,
        4094, 4095, cfg.text_config.num_hidden_layers, cfg.vision_config.hidden_size,
        cfg.vision_config.num_attention_heads, "quick_gelu", "quick_gelu" }, " "), r.info)
      assert.equal(f32(model.logit_scale), f32(tonumber(r.logit_scale)))

      -- tokenizer
      assert.equal(table.concat(model:tokenize(TEXT1), " "), r.ids1)
      assert.equal(table.concat(model:tokenize(TEXT2), " "), r.ids2)
      assert.truthy(r.tokenize_small:find("^%-1|clip_tokenize: 7 ids do not fit in a buffer of 2"), r.tokenize_small)
      assert.truthy(r.tokenize_invalid:find("^%-1|clip_tokenize: .*UTF%-8"), r.tokenize_invalid)

      -- preprocessing: file, memory and raw RGB give the Lua processor's pixels
      assert_bits(floats(r.pixels1), model:preprocess(IMG1), kind .. " pixels")
      assert.equal("0 1", r.mem_equal)
      assert.truthy(r.mem_truncated:find("^%-1|half.jpg: "), r.mem_truncated)
      assert.equal("0 1 1", r.rgb_equal)
      assert.truthy(r.rgb_bad_size:find("^%-1|clip_preprocess_rgb: bad image size 0x"), r.rgb_bad_size)
      assert.truthy(r.pre_missing:find("^%-1|/nonexistent/cat.png: "), r.pre_missing)

      -- embeddings
      assert.equal("0", r.encode_pixels)
      assert_near(floats(r.image_embeds), model:encode_images({ IMG1, IMG2 }), kind .. " image embeds")
      assert.equal("0 1", r.files_equal_pixels)
      assert_near(floats(r.image_embeds_norm), model:encode_images({ IMG1, IMG2 }, { normalize = true }),
        kind .. " normalized image embeds")
      assert.truthy(r.files_missing:find("^%-1|item 1: /nonexistent/dog.jpg: "), r.files_missing)
      assert.equal("0", r.encode_texts)
      local te = model:encode_texts({ TEXT1, TEXT2 })
      assert_near(floats(r.text_embeds), te, kind .. " text embeds")
      assert.equal("0 1", r.ids_equal_texts)
      assert.truthy(r.bad_id:find("^%-1|encode_text: token id 4101 "), r.bad_id)
      assert.truthy(r.too_long:find("^%-1|encode_text: sequence length 78 exceeds"), r.too_long)
      assert.equal("0", r.cosine_rc)
      assert_near(floats(r.cosine), clip.cosine_similarity(model:encode_images({ IMG1, IMG2 }), te),
        kind .. " cosine")
      assert_near(floats(r.normalized), model:encode_images({ IMG1, IMG2 }):normalize(), kind .. " normalize")
      assert.truthy(r.nan:find("^%-1|clip_encode_pixels: pixels hold NaN or Inf %(image 0%)"), r.nan)
      assert.truthy(r.flags:find("^%-1|clip_encode_pixels: unknown flags 0x10"), r.flags)
      assert.truthy(r.empty:find("^%-1|clip_encode_pixels: batch of 0 images"), r.empty)
      assert.equal("1", r.threads_equal)
      assert.truthy(r.no_tokenizer:find("^0 %-1|clip_tokenize: model was loaded without a tokenizer"),
        r.no_tokenizer)
      assert.equal("1|", r.half_equal)
      assert.truthy(r.half_nopack:find("^1|clip_model_load: CLIP_LOAD_HALF needs the packed weights"),
        r.half_nopack)
    end
    assert.equal(outs.static, outs.shared)
    model:close()
  end)

  it("runs the C example, which reports failures on stderr with exit status 1", function()
    local ok, out = sh("build/examples/c/embed '" .. MODEL .. "' -t 'a cat' -t 'a dog' '" .. IMG1 .. "'")
    assert.is_true(ok, out)
    local r = parse(out)
    assert.truthy(out:find('similarity "' .. IMG1 .. '" "a cat": %S+ p=0%.%d+'), out)
    local model = clip.load(MODEL)
    local v = {}
    for w in out:match('image "[^"]+":([^\n]+)'):gmatch("%S+") do v[#v + 1] = f32(tonumber(w)) end
    assert_near(v, model:encode_images({ IMG1 }, { normalize = true }), "example image embedding")
    assert.truthy(r.parameters)
    model:close()
    local ok2, out2, code = sh("build/examples/c/embed /nonexistent/model -t x")
    assert.is_falsy(ok2)
    assert.equal(1, code)
    assert.truthy(out2:find("/nonexistent/model: missing config.json", 1, true), out2)
    local ok3, _, code3 = sh("build/examples/c/embed")
    assert.is_falsy(ok3)
    assert.equal(2, code3)
  end)

  it("installs header, libraries, clip.pc, the Lua module and bin/clip with make install", function()
    local prefix = tmp .. "/prefix"
    must("make -s install PREFIX='" .. prefix .. "' >/dev/null")
    for _, f in ipairs({ "include/clip.h", "lib/libclip.a", "lib/libclip.so", "lib/libclip.so.0",
      "lib/libclip.so.0.1.0", "lib/pkgconfig/clip.pc", "bin/clip", "lib/lua/5.4/clip/core.so",
      "share/lua/5.4/clip/init.lua", "share/lua/5.4/clip/npy.lua" }) do
      assert.truthy(clip.core.is_file(prefix .. "/" .. f), f .. " is installed")
    end
    local pc = ("PKG_CONFIG_PATH='%s/lib/pkgconfig' pkg-config"):format(prefix)
    assert.equal("0.1.0", must(pc .. " --modversion clip"):gsub("%s+$", ""))
    local cflags = must(pc .. " --cflags clip"):gsub("%s+$", "")
    assert.equal("-I" .. prefix .. "/include", cflags)
    -- the example against the installed library, shared and static
    must(("cc -o '%s/ex_shared' examples/c/embed.c $(%s --cflags --libs clip) -lm -Wl,-rpath,'%s/lib'")
      :format(tmp, pc, prefix))
    must(("cc -o '%s/ex_static' examples/c/embed.c $(%s --cflags clip) '%s/lib/libclip.a' $(%s --static --libs clip | sed 's/-lclip//')")
      :format(tmp, pc, prefix, pc))
    local a = must("'" .. tmp .. "/ex_shared' '" .. MODEL .. "' -t 'a cat' '" .. IMG1 .. "'")
    local b = must("'" .. tmp .. "/ex_static' '" .. MODEL .. "' -t 'a cat' '" .. IMG1 .. "'")
    assert.equal(a, b)
    assert.truthy(a:find("similarity", 1, true))
    -- the installed command line finds the installed module without LUA_PATH
    local out = must(("env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 '%s/bin/clip' info '%s' --json")
      :format(prefix, MODEL))
    assert.equal(24, clip.json.decode(out).projection_dim)
  end)
end)
