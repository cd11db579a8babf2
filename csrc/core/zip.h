/* zip.h - a read-only ZIP reader for archives held in memory (torch.save files).
 * Only what such archives need: one disk, ZIP64 end records and extra fields, stored and
 * deflated members, CRC-32 checked. Every offset and size is checked against the buffer
 * before a pointer is formed. */
#ifndef CT_ZIP_H
#define CT_ZIP_H

#include "ct.h"

typedef struct ct_zip_member {
  char *name;
  uint64_t header;     /* offset of the local header */
  uint64_t csize, usize;
  uint32_t crc;
  int method;          /* 0 stored, 8 deflated */
} ct_zip_member;

typedef struct ct_zip {
  const char *path;    /* for messages; not owned */
  const uint8_t *buf;
  uint64_t len;
  int n;
  ct_zip_member *m;
} ct_zip;

/* 1 if buf starts like a ZIP archive (a local header signature). */
int ct_zip_is_zip(const uint8_t *buf, uint64_t len);
/* Parse the central directory of buf[0, len). On failure z holds nothing to free. */
int ct_zip_open(ct_zip *z, const char *path, const uint8_t *buf, uint64_t len, ct_err *e);
void ct_zip_close(ct_zip *z);
int ct_zip_find(const ct_zip *z, const char *name);
/* The bytes of member i: a pointer into the buffer (stored) or a malloc'd copy returned also in
 * *owned (deflated; the caller frees it). Members whose size is over max are refused before
 * anything is allocated; the CRC-32 is checked. */
int ct_zip_read(const ct_zip *z, int i, uint64_t max, const uint8_t **data, void **owned,
                ct_err *e);

#endif
