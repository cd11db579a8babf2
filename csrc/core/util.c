/* util.c - error formatting and small file helpers shared by the core. */
#include "ct.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

void ct_mem_fault_in(void *p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t h = (uintptr_t)2 << 20;
  if (!p || bytes < ((size_t)1 << 20)) return;
  uintptr_t lo = ((uintptr_t)p + h - 1) & ~(h - 1), hi = ((uintptr_t)p + bytes) & ~(h - 1);
  if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
  ct_mem_prefault_write(p, bytes);
#else
  (void)p; (void)bytes;
#endif
}

void ct_mem_prefault_write(void *p, size_t bytes) {
#ifdef __linux__
  enum { POPULATE_WRITE = 23 }; /* MADV_POPULATE_WRITE (Linux 5.14); older kernels: EINVAL */
  uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
  if (!p || !bytes || pg == 0 || pg == (uintptr_t)-1) return;
  uintptr_t lo = (uintptr_t)p & ~(pg - 1);
  (void)madvise((void *)lo, (uintptr_t)p + bytes - lo, POPULATE_WRITE);
#else
  (void)p; (void)bytes;
#endif
}

int ct_errf(ct_err *e, const char *fmt, ...) {
  if (e) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
  }
  return -1;
}

char *ct_read_file(const char *path, size_t *len, size_t max_len, ct_err *e) {
  struct stat st;
  if (stat(path, &st) != 0) {
    ct_errf(e, "%s: %s", path, strerror(errno));
    return NULL;
  }
  if (S_ISDIR(st.st_mode)) {
    ct_errf(e, "%s: is a directory, expected a file", path);
    return NULL;
  }
  if ((uint64_t)st.st_size > (uint64_t)max_len) {
    ct_errf(e, "%s: file too large (%lld bytes, limit %zu)", path,
            (long long)st.st_size, max_len);
    return NULL;
  }
  FILE *f = fopen(path, "rb");
  if (!f) {
    ct_errf(e, "%s: %s", path, strerror(errno));
    return NULL;
  }
  size_t cap = (size_t)st.st_size;
  char *buf = malloc(cap + 1);
  if (!buf) {
    fclose(f);
    ct_errf(e, "%s: out of memory reading %zu bytes", path, cap);
    return NULL;
  }
  size_t got = fread(buf, 1, cap, f);
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    ct_errf(e, "%s: read error", path);
    return NULL;
  }
  buf[got] = 0;
  if (len) *len = got;
  return buf;
}

int ct_path_join(char *out, size_t n, const char *dir, const char *name) {
  int k;
  if (!dir || !*dir)
    k = snprintf(out, n, "%s", name);
  else if (dir[strlen(dir) - 1] == '/')
    k = snprintf(out, n, "%s%s", dir, name);
  else
    k = snprintf(out, n, "%s/%s", dir, name);
  return (k < 0 || (size_t)k >= n) ? -1 : 0;
}

int ct_file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int ct_atomic_open(ct_atomic *a, const char *path, ct_err *e) {
  size_t n = strlen(path) + 32;
  a->path = path;
  a->f = NULL;
  a->tmp = malloc(n);
  if (!a->tmp) return ct_errf(e, "%s: out of memory", path);
  snprintf(a->tmp, n, "%s.tmp%ld", path, (long)getpid());
  a->f = fopen(a->tmp, "wb");
  if (!a->f) {
    ct_errf(e, "%s: cannot write: %s", path, strerror(errno));
    free(a->tmp);
    a->tmp = NULL;
    return -1;
  }
  return 0;
}

void ct_atomic_abort(ct_atomic *a) {
  if (a->f) fclose(a->f);
  if (a->tmp) {
    unlink(a->tmp);
    free(a->tmp);
  }
  a->f = NULL;
  a->tmp = NULL;
}

int ct_atomic_commit(ct_atomic *a, int werr, ct_err *e) {
  if (!werr) werr = fflush(a->f) != 0 || fsync(fileno(a->f)) != 0;
  if (fclose(a->f) != 0) werr = 1;
  a->f = NULL;
  if (werr) {
    ct_errf(e, "%s: write failed: %s", a->path, strerror(errno));
    ct_atomic_abort(a);
    return -1;
  }
  if (rename(a->tmp, a->path) != 0) {
    ct_errf(e, "%s: cannot rename the temporary file into place: %s", a->path, strerror(errno));
    ct_atomic_abort(a);
    return -1;
  }
  free(a->tmp);
  a->tmp = NULL;
  return 0;
}
