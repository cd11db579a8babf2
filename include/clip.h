/* clip.h - the C API of clip: CLIP image and text embeddings without Lua.
 *
 *   clip_model *m = clip_model_load("models/clip-vit-base-patch32", err, sizeof err);
 *   float img[512], txt[512];
 *   const char *paths[] = {"cat.jpg"}, *texts[] = {"a photo of a cat"};
 *   clip_encode_image_files(m, paths, 1, img, CLIP_NORMALIZE, err, sizeof err);
 *   clip_encode_texts(m, texts, 1, txt, CLIP_NORMALIZE, err, sizeof err);
 *   clip_model_free(m);
 *
 * Conventions (docs/c-api.md):
 *  - Every function that can fail returns a negative number (or NULL) and, when
 *    err is not NULL and errlen > 0, writes a NUL-terminated message into
 *    err[errlen] (truncated if needed). Messages name the file first where there
 *    is one: "cat.png: PNG decode failed (truncated IDAT)". Nothing here prints,
 *    exits or aborts, whatever the input.
 *  - Buffers are the caller's: outputs are written into memory you pass, sized
 *    from clip_model_info (embedding width, image side, context length).
 *  - Embeddings are float32, row-major [n, embed_dim]; pixels are float32
 *    [n, 3, S, S] (CHW per image), exactly what transformers' CLIPImageProcessor
 *    produces; token ids are int32 ids of vocab.json.
 *  - A clip_model is immutable after loading except for the tokenizer's word
 *    cache: functions taking a `const clip_model *` may run on one model from
 *    several threads at once; clip_tokenize and clip_encode_texts may not (give
 *    each thread its own model, or lock). Two models never share anything.
 *  - Threads: each call runs in the calling thread; the C API starts no threads.
 *    Matrix products may go to OpenBLAS, whose thread pool and thread count are
 *    process-wide (docs/c-api.md).
 *  - Only clip_* names are public; the static library also carries the core's
 *    ct_* symbols (internal, unstable), which the shared library hides.
 */
#ifndef CLIP_H
#define CLIP_H

#include <stddef.h>
#include <stdint.h>

/* CLIP_API marks the public functions: the only symbols libclip.so exports (the
 * library is built with -fvisibility=hidden). */
#if defined(__GNUC__) || defined(__clang__)
#define CLIP_API __attribute__((visibility("default")))
#else
#define CLIP_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define CLIP_VERSION "0.1.0"
#define CLIP_VERSION_NUM 100 /* major * 10000 + minor * 100 + patch */

/* Status: 0 on success, CLIP_ERROR (-1) on failure with a message in err. */
#define CLIP_OK 0
#define CLIP_ERROR (-1)

/* clip_model_load_ex flags */
#define CLIP_LOAD_NO_TOKENIZER 0x1u     /* do not read vocab.json / merges.txt */
#define CLIP_LOAD_OPENAI_TOKENIZER 0x2u /* openai/CLIP simple_tokenizer rules, not HF's */
#define CLIP_LOAD_NO_PACK 0x4u          /* keep no packed weight copies (see below) */
#define CLIP_LOAD_HALF 0x8u             /* F16/BF16 checkpoints stay half-size (see below) */

/* encode flags */
#define CLIP_NORMALIZE 0x1u /* L2-normalize each embedding (eps 1e-12, as torch) */

typedef struct clip_model clip_model;

/* The library's version string, CLIP_VERSION of the build. */
CLIP_API const char *clip_version(void);

/* ------------------------------------------------------------------ load */

/* Load a model directory: Hugging Face CLIPModel (config.json,
 * model.safetensors or a sharded index, preprocessor_config.json, vocab.json,
 * merges.txt) or sentence-transformers (modules.json). F32 weights are mapped,
 * F16/BF16 converted. Without preprocessor_config.json, OpenAI's defaults at
 * the model's image size are used. The tokenizer files are required;
 * clip_model_load_ex(dir, CLIP_LOAD_NO_TOKENIZER, ...) loads without them.
 * On CPUs with AVX-512 the transformer weights are also packed at load (a copy in the layout
 * of the small-batch GEMM kernel, docs/performance.md; the mapped originals are then released
 * from memory); this reads every weight once, and CLIP_LOAD_NO_PACK skips it. The model is
 * not modified after loading, so encodes may run concurrently from several threads.
 * CLIP_LOAD_HALF: an F16 or BF16 checkpoint keeps its transformer weights and token
 * embedding in that type (packed; the kernel converts each value exactly as it is used), so
 * they take half the memory of float32 and give the same embeddings as loading it without
 * the flag. Checkpoints not uniformly F16 or BF16, or CPUs without AVX-512, load as float32.
 * Returns NULL on failure. */
CLIP_API clip_model *clip_model_load(const char *dir, char *err, size_t errlen);
CLIP_API clip_model *clip_model_load_ex(const char *dir, unsigned flags, char *err, size_t errlen);

/* Release everything the model holds. NULL is accepted. */
CLIP_API void clip_model_free(clip_model *m);

typedef struct clip_info {
  int embed_dim;       /* projection_dim: width of every embedding */
  int image_size;      /* S: pixels are [3, S, S] per image */
  int channels;        /* 3 */
  int patch_size;
  int context_length;  /* max_position_embeddings: most token ids per text */
  int vocab_size;
  int text_hidden, text_layers, text_heads;
  int vision_hidden, vision_layers, vision_heads;
  char text_act[32], vision_act[32]; /* hidden_act, e.g. "quick_gelu" */
  int64_t text_params;   /* text_model.* + text_projection */
  int64_t vision_params; /* vision_model.* + visual_projection */
  int64_t total_params;  /* all, logit_scale included (PyTorch's sum of numel) */
  float logit_scale;     /* stored value; logits use exp(logit_scale) */
  char dtype[8];         /* checkpoint dtype: "F32", "F16", "BF16" or "mixed" */
  int has_tokenizer;     /* 1 if clip_tokenize / clip_encode_texts can be used */
  int bos_id, eos_id;    /* start / end of text ids of the tokenizer (or config) */
} clip_info;

/* Fill info (always succeeds for a loaded model). */
CLIP_API void clip_model_info(const clip_model *m, clip_info *info);

/* ------------------------------------------------------------- tokenize */

/* Token ids of one UTF-8 text: <|startoftext|> ids <|endoftext|>, truncated to
 * the context length with the end token kept last, exactly as
 * CLIPTokenizerFast(text, truncation=True). Writes up to cap ids and returns
 * the number of ids (> 0), or CLIP_ERROR (invalid UTF-8, no tokenizer, or cap
 * too small: cap = info.context_length always suffices). */
CLIP_API int clip_tokenize(clip_model *m, const char *text, int32_t *ids, int cap, char *err,
                  size_t errlen);

/* ----------------------------------------------------------- preprocess */

/* CLIPImageProcessor on one image, into pixels[3 * S * S] (S = image_size):
 * decode (JPEG or PNG, as Pillow's convert("RGB")), resize, center crop,
 * rescale, normalize. The three forms differ in where the image comes from. */
CLIP_API int clip_preprocess_file(const clip_model *m, const char *path, float *pixels, char *err,
                         size_t errlen);
/* Encoded JPEG/PNG bytes in memory; name (may be NULL) is used in messages. */
CLIP_API int clip_preprocess_mem(const clip_model *m, const void *data, size_t len, const char *name,
                        float *pixels, char *err, size_t errlen);
/* Decoded 8-bit RGB, row-major HWC (width * height * 3 bytes). */
CLIP_API int clip_preprocess_rgb(const clip_model *m, const uint8_t *rgb, int width, int height,
                        float *pixels, char *err, size_t errlen);

/* ---------------------------------------------------------------- encode */

/* Image embeddings from preprocessed pixels [n, 3, S, S] into out[n, embed_dim].
 * Refuses NaN / Inf pixels. */
CLIP_API int clip_encode_pixels(const clip_model *m, const float *pixels, int n, float *out,
                       unsigned flags, char *err, size_t errlen);
/* Text embeddings from token ids [n, len] (each row as clip_tokenize gives it,
 * padded to len with any valid id, e.g. eos: positions after a row's first
 * end token do not change its embedding) into out[n, embed_dim]. */
CLIP_API int clip_encode_ids(const clip_model *m, const int32_t *ids, int n, int len, float *out,
                    unsigned flags, char *err, size_t errlen);
/* Convenience: preprocess + encode image files / tokenize + encode texts, in
 * batches of 32. An error names the item (0-based) and the file. */
CLIP_API int clip_encode_image_files(const clip_model *m, const char *const *paths, int n, float *out,
                            unsigned flags, char *err, size_t errlen);
CLIP_API int clip_encode_texts(clip_model *m, const char *const *texts, int n, float *out,
                      unsigned flags, char *err, size_t errlen);

/* ---------------------------------------------------------------- helpers */

/* L2-normalize n rows of width dim in place (x / max(||x||, 1e-12)). */
CLIP_API void clip_normalize(float *x, int n, int dim);
/* Cosine similarity of every row of a [na, dim] with every row of b [nb, dim]
 * into out[na, nb]. Multiply by exp(info.logit_scale) for CLIP's logits.
 * CLIP_ERROR only for empty or NULL arguments or out of memory. */
CLIP_API int clip_cosine_similarity(const float *a, int na, const float *b, int nb, int dim,
                           float *out);

#ifdef __cplusplus
}
#endif

#endif
