/* fuzz_common.h - helpers shared by the libFuzzer targets in fuzz/.
 *
 * The targets link the C core (csrc/, no Lua) built with
 * -fsanitize=fuzzer-no-link,address,undefined. A harness must be
 * deterministic: the same input always takes the same path (no clocks, no
 * randomness, no state carried from one input to the next).
 *
 * CHECK(cond, ...) is the harness's own oracle: a broken invariant prints the
 * reason and traps, which libFuzzer reports as a crash with the input saved.
 * (The harness may abort; the core never does.) */
#ifndef CLIP_FUZZ_COMMON_H
#define CLIP_FUZZ_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "fuzz invariant failed at %s:%d: %s: ", __FILE__,    \
              __LINE__, #cond);                                            \
      fprintf(stderr, __VA_ARGS__);                                        \
      fputc('\n', stderr);                                                 \
      __builtin_trap();                                                    \
    }                                                                      \
  } while (0)

/* An error message must be non-empty and start with the name it concerns. */
static inline void check_msg(const char *msg, const char *name) {
  CHECK(msg[0] != 0, "empty error message");
  CHECK(strncmp(msg, name, strlen(name)) == 0, "message does not start with '%s': %s", name,
        msg);
  CHECK(strlen(msg) < 512, "message not terminated");
}

/* A file whose bytes are the fuzz input, reachable by path: a memfd opened
 * as /proc/self/fd/N (no disk traffic). Rewritten for every input. */
typedef struct {
  int fd;
  char path[64];
} memfile;

static inline void memfile_init(memfile *m, const char *name) {
  m->fd = memfd_create(name, MFD_CLOEXEC);
  if (m->fd < 0) {
    perror("memfd_create");
    exit(1);
  }
  snprintf(m->path, sizeof m->path, "/proc/self/fd/%d", m->fd);
}

static inline void memfile_set(memfile *m, const uint8_t *data, size_t size) {
  if (ftruncate(m->fd, 0) != 0 || (size && pwrite(m->fd, data, size, 0) != (ssize_t)size)) {
    perror("memfile_set");
    exit(1);
  }
}

/* Write a whole file (harness setup; exits on failure). */
static inline void write_file(const char *path, const void *data, size_t size) {
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) {
    perror(path);
    exit(1);
  }
}

/* A private scratch directory under $TMPDIR (or /tmp), removed at exit. */
static char fuzz_tmpdir[256];
static inline void rm_tmpdir(void) {
  if (fuzz_tmpdir[0]) {
    char cmd[320];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fuzz_tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", fuzz_tmpdir);
  }
}
static inline const char *make_tmpdir(const char *tag) {
  const char *t = getenv("TMPDIR");
  snprintf(fuzz_tmpdir, sizeof fuzz_tmpdir, "%s/clip-fuzz-%s-XXXXXX", t && *t ? t : "/tmp", tag);
  if (!mkdtemp(fuzz_tmpdir)) {
    perror("mkdtemp");
    exit(1);
  }
  atexit(rm_tmpdir);
  return fuzz_tmpdir;
}

#endif
