/* util.c - error formatting and small file helpers shared by the core. */
#include "ct.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
