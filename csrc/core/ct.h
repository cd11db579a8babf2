/* ct.h - common definitions of the clip C core (no Lua here).
 *
 * Conventions (see docs/design.md):
 *  - Core functions return 0 on success and -1 on failure; on failure they
 *    fill a ct_err with a message that names the file and the reason.
 *  - Nothing in csrc/ calls exit, abort or assert, or prints to stdout.
 *  - Non-static core symbols start with ct_.
 */
#ifndef CT_H
#define CT_H

#include <stddef.h>
#include <stdint.h>

#define CT_ERR_MAX 512

typedef struct ct_err {
  char msg[CT_ERR_MAX];
} ct_err;

/* Format a message into e (if e is not NULL) and return -1. */
int ct_errf(ct_err *e, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Read a whole file into a malloc'd, NUL-terminated buffer. Returns NULL and
 * fills e on failure (missing file, a directory, read error, too large). */
char *ct_read_file(const char *path, size_t *len, size_t max_len, ct_err *e);

/* Join a directory and a file name into out (size n). Returns -1 if too long. */
int ct_path_join(char *out, size_t n, const char *dir, const char *name);

/* 1 if path names an existing regular file. */
int ct_file_exists(const char *path);

/* Memory hints for large buffers (Linux; no-ops elsewhere and where the kernel refuses).
 * ct_mem_prefault_write: make the pages of [p, p + bytes) present and writable now, in one
 * call (MADV_POPULATE_WRITE), instead of a fault per page at the first writes; for weights
 * still mapped from the file, that is their copy-on-write. ct_mem_fault_in: the same for a
 * buffer about to be written whole, of 1 MiB or more, after asking for transparent huge pages
 * over its 2 MiB-aligned part. On this project's VM a fault costs 10-40 us
 * (docs/performance.md: training's first step). */
void ct_mem_fault_in(void *p, size_t bytes);
void ct_mem_prefault_write(void *p, size_t bytes);

/* Atomic file writes: write into a temporary file beside path (f), then ct_atomic_commit
 * flushes, fsyncs and renames it over path; on any failure the temporary file is removed and
 * path keeps what it held before. Messages name path. */
#include <stdio.h>
typedef struct ct_atomic {
  FILE *f;
  char *tmp;
  const char *path;
} ct_atomic;
int ct_atomic_open(ct_atomic *a, const char *path, ct_err *e);
/* werr: nonzero when the caller's own writes failed (the file is then discarded). */
int ct_atomic_commit(ct_atomic *a, int werr, ct_err *e);
/* Discard the temporary file (after an error of the caller's). */
void ct_atomic_abort(ct_atomic *a);

#endif
