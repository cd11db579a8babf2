/* embed.c - the C API (include/clip.h) in one page: load a model, embed
 * images and texts, compare them. No Lua involved.
 *
 *   make c-example          # build/examples/c/embed, linked with build/libclip.a
 *   build/examples/c/embed MODEL_DIR [-t TEXT]... [IMAGE]...
 *
 * or against an installed library:
 *   cc embed.c $(pkg-config --cflags clip) $(pkg-config --libs clip) -lm        # shared
 *   cc embed.c $(pkg-config --cflags clip) $(pkg-config --static --libs clip)   # static (-lm is in it)
 *
 * Prints the model's shape, every embedding (L2-normalized, %.9g), the token
 * ids of each text and the image x text cosine similarities with softmax
 * probabilities over the texts, as CLIP's zero-shot classification does.
 * Exit status: 0 on success, 1 on a failure (the message goes to stderr),
 * 2 on bad usage. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clip.h"

static void print_row(const char *kind, const char *name, const float *v, int dim) {
  printf("%s \"%s\":", kind, name);
  for (int k = 0; k < dim; k++) printf(" %.9g", v[k]);
  printf("\n");
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    fprintf(stderr, "usage: %s MODEL_DIR [-t TEXT]... [IMAGE]...\n", argv[0]);
    return argc < 2 ? 2 : 0;
  }
  const char **texts = calloc((size_t)argc, sizeof *texts);
  const char **images = calloc((size_t)argc, sizeof *images);
  int nt = 0, ni = 0, status = 1;
  float *ti = NULL, *ie = NULL, *sim = NULL;
  int32_t *ids = NULL;
  clip_model *m = NULL;
  char err[512];
  if (!texts || !images) goto done;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "-t") == 0) {
      if (i + 1 == argc) {
        fprintf(stderr, "%s: -t needs a text\n", argv[0]);
        status = 2;
        goto done;
      }
      texts[nt++] = argv[++i];
    } else {
      images[ni++] = argv[i];
    }
  }

  m = clip_model_load(argv[1], err, sizeof err);
  if (!m) {
    fprintf(stderr, "%s\n", err);
    goto done;
  }
  clip_info info;
  clip_model_info(m, &info);
  printf("clip %s: embed_dim %d, image %dx%d, context %d, dtype %s\n", clip_version(),
         info.embed_dim, info.image_size, info.image_size, info.context_length, info.dtype);
  printf("parameters: %lld (text %lld, vision %lld)\n", (long long)info.total_params,
         (long long)info.text_params, (long long)info.vision_params);

  int D = info.embed_dim;
  ie = malloc(sizeof(float) * (size_t)(ni ? ni : 1) * D);
  ti = malloc(sizeof(float) * (size_t)(nt ? nt : 1) * D);
  sim = malloc(sizeof(float) * (size_t)(ni ? ni : 1) * (nt ? nt : 1));
  ids = malloc(sizeof(int32_t) * (size_t)info.context_length);
  if (!ie || !ti || !sim || !ids) {
    fprintf(stderr, "out of memory\n");
    goto done;
  }
  if (ni && clip_encode_image_files(m, images, ni, ie, CLIP_NORMALIZE, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    goto done;
  }
  if (nt && clip_encode_texts(m, texts, nt, ti, CLIP_NORMALIZE, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    goto done;
  }
  for (int i = 0; i < ni; i++) print_row("image", images[i], ie + (size_t)i * D, D);
  for (int j = 0; j < nt; j++) {
    print_row("text", texts[j], ti + (size_t)j * D, D);
    int n = clip_tokenize(m, texts[j], ids, info.context_length, err, sizeof err);
    if (n < 0) {
      fprintf(stderr, "%s\n", err);
      goto done;
    }
    printf("ids \"%s\":", texts[j]);
    for (int k = 0; k < n; k++) printf(" %d", (int)ids[k]);
    printf("\n");
  }
  if (ni && nt) {
    clip_cosine_similarity(ie, ni, ti, nt, D, sim);
    double scale = exp(info.logit_scale);
    for (int i = 0; i < ni; i++) {
      /* softmax over the texts of exp(logit_scale) * cosine */
      double mx = -INFINITY, z = 0;
      for (int j = 0; j < nt; j++) mx = fmax(mx, scale * sim[i * nt + j]);
      for (int j = 0; j < nt; j++) z += exp(scale * sim[i * nt + j] - mx);
      for (int j = 0; j < nt; j++)
        printf("similarity \"%s\" \"%s\": %.9g p=%.6f\n", images[i], texts[j], sim[i * nt + j],
               exp(scale * sim[i * nt + j] - mx) / z);
    }
  }
  status = 0;
done:
  clip_model_free(m);
  free(ids);
  free(sim);
  free(ti);
  free(ie);
  free(texts);
  free(images);
  return status;
}
