/* zip.c - read-only ZIP reader (see zip.h). */
#include "zip.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static uint32_t rd16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t rd32(const uint8_t *p) { return rd16(p) | rd16(p + 2) << 16; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

int ct_zip_is_zip(const uint8_t *buf, uint64_t len) {
  return len >= 4 && rd32(buf) == 0x04034b50u;
}

void ct_zip_close(ct_zip *z) {
  if (!z) return;
  if (z->m)
    for (int i = 0; i < z->n; i++) free(z->m[i].name);
  free(z->m);
  z->m = NULL;
  z->n = 0;
}

int ct_zip_find(const ct_zip *z, const char *name) {
  for (int i = 0; i < z->n; i++)
    if (strcmp(z->m[i].name, name) == 0) return i;
  return -1;
}

/* the values a ZIP64 extra field (id 1) holds for the fields that read 0xFFFFFFFF */
static int zip64_extra(const uint8_t *x, uint32_t xlen, ct_zip_member *m, uint32_t off32) {
  int need_u = m->usize == 0xFFFFFFFFu, need_c = m->csize == 0xFFFFFFFFu,
      need_o = off32 == 0xFFFFFFFFu;
  if (!need_u && !need_c && !need_o) return 0;
  uint32_t k = 0;
  while (k + 4 <= xlen) {
    uint32_t id = rd16(x + k), sz = rd16(x + k + 2);
    if (sz > xlen - k - 4) return -1;
    if (id == 1) {
      const uint8_t *p = x + k + 4;
      uint32_t left = sz;
      if (need_u) {
        if (left < 8) return -1;
        m->usize = rd64(p), p += 8, left -= 8;
      }
      if (need_c) {
        if (left < 8) return -1;
        m->csize = rd64(p), p += 8, left -= 8;
      }
      if (need_o) {
        if (left < 8) return -1;
        m->header = rd64(p);
      }
      return 0;
    }
    k += 4 + sz;
  }
  return -1;
}

int ct_zip_open(ct_zip *z, const char *path, const uint8_t *buf, uint64_t len, ct_err *e) {
  memset(z, 0, sizeof *z);
  z->path = path;
  z->buf = buf;
  z->len = len;
  if (len < 22) return ct_errf(e, "%s: not a ZIP archive (%llu bytes)", path, (unsigned long long)len);
  /* the end of central directory record: the last signature whose comment ends the file */
  uint64_t eocd = UINT64_MAX;
  uint64_t lo = len - 22 > 65535 ? len - 22 - 65535 : 0;
  for (uint64_t k = len - 22 + 1; k-- > lo;) {
    if (rd32(buf + k) == 0x06054b50u && k + 22 + rd16(buf + k + 20) == len) {
      eocd = k;
      break;
    }
  }
  if (eocd == UINT64_MAX)
    return ct_errf(e, "%s: ZIP end of central directory not found (truncated file?)", path);
  const uint8_t *q = buf + eocd;
  uint64_t count = rd16(q + 10), cd_size = rd32(q + 12), cd_off = rd32(q + 16);
  if (eocd >= 20 && rd32(buf + eocd - 20) == 0x07064b50u) { /* ZIP64 locator */
    uint64_t r = rd64(buf + eocd - 20 + 8);
    if (r > eocd - 20 || eocd - 20 - r < 56 || rd32(buf + r) != 0x06064b50u)
      return ct_errf(e, "%s: bad ZIP64 end of central directory record", path);
    const uint8_t *z64 = buf + r;
    if (rd32(z64 + 16) != 0 || rd32(z64 + 20) != 0 || rd64(z64 + 24) != rd64(z64 + 32))
      return ct_errf(e, "%s: multi-disk ZIP archives are not supported", path);
    count = rd64(z64 + 32);
    cd_size = rd64(z64 + 40);
    cd_off = rd64(z64 + 48);
  } else if (rd16(q + 4) != 0 || rd16(q + 6) != 0 || rd16(q + 8) != rd16(q + 10)) {
    return ct_errf(e, "%s: multi-disk ZIP archives are not supported", path);
  } else if (count == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu) {
    return ct_errf(e, "%s: ZIP64 archive without its end of central directory locator", path);
  }
  if (cd_off > eocd || cd_size > eocd - cd_off)
    return ct_errf(e, "%s: ZIP central directory [%llu, +%llu) lies outside the file (truncated?)",
                   path, (unsigned long long)cd_off, (unsigned long long)cd_size);
  if (count > cd_size / 46)
    return ct_errf(e, "%s: ZIP central directory of %llu bytes cannot hold %llu entries", path,
                   (unsigned long long)cd_size, (unsigned long long)count);
  z->m = calloc(count ? (size_t)count : 1, sizeof(ct_zip_member));
  if (!z->m) return ct_errf(e, "%s: out of memory", path);
  const uint8_t *c = buf + cd_off, *end = c + cd_size;
  for (uint64_t i = 0; i < count; i++) {
    if (end - c < 46 || rd32(c) != 0x02014b50u) {
      ct_zip_close(z);
      return ct_errf(e, "%s: ZIP central directory entry %llu is damaged", path,
                     (unsigned long long)i);
    }
    uint32_t nlen = rd16(c + 28), xlen = rd16(c + 30), clen = rd16(c + 32);
    if ((uint64_t)(end - c) - 46 < (uint64_t)nlen + xlen + clen) {
      ct_zip_close(z);
      return ct_errf(e, "%s: ZIP central directory entry %llu runs past the directory", path,
                     (unsigned long long)i);
    }
    ct_zip_member *m = &z->m[z->n];
    m->method = (int)rd16(c + 10) | (rd16(c + 8) & 1 ? 0x10000 : 0); /* bit 0: encrypted */
    m->crc = rd32(c + 16);
    m->csize = rd32(c + 20);
    m->usize = rd32(c + 24);
    uint32_t off32 = rd32(c + 42);
    m->header = off32;
    m->name = malloc(nlen + 1u);
    if (!m->name) {
      ct_zip_close(z);
      return ct_errf(e, "%s: out of memory", path);
    }
    memcpy(m->name, c + 46, nlen);
    m->name[nlen] = 0;
    z->n++;
    if (memchr(c + 46, 0, nlen) || zip64_extra(c + 46 + nlen, xlen, m, off32) != 0) {
      ct_zip_close(z);
      return ct_errf(e, "%s: ZIP central directory entry %llu has a bad name or ZIP64 field", path,
                     (unsigned long long)i);
    }
    c += 46 + nlen + xlen + clen;
  }
  return 0;
}

int ct_zip_read(const ct_zip *z, int i, uint64_t max, const uint8_t **data, void **owned,
                ct_err *e) {
  const ct_zip_member *m = &z->m[i];
  *data = NULL;
  *owned = NULL;
  if (m->method & 0x10000)
    return ct_errf(e, "%s: ZIP member '%s' is encrypted", z->path, m->name);
  if (m->method != 0 && m->method != 8)
    return ct_errf(e, "%s: ZIP member '%s' uses compression method %d (only stored and deflated)",
                   z->path, m->name, m->method);
  uint64_t h = m->header;
  if (h > z->len || z->len - h < 30 || rd32(z->buf + h) != 0x04034b50u)
    return ct_errf(e, "%s: ZIP member '%s': local header at %llu is missing (truncated file?)",
                   z->path, m->name, (unsigned long long)h);
  uint64_t d = h + 30 + rd16(z->buf + h + 26) + rd16(z->buf + h + 28);
  if (d > z->len || m->csize > z->len - d)
    return ct_errf(e, "%s: ZIP member '%s' ([%llu, +%llu)) runs past the end of the file (truncated?)",
                   z->path, m->name, (unsigned long long)d, (unsigned long long)m->csize);
  if (m->usize > max || (m->method == 0 && m->usize != m->csize))
    return ct_errf(e, "%s: ZIP member '%s' declares %llu bytes (%s)", z->path, m->name,
                   (unsigned long long)m->usize,
                   m->usize > max ? "over the limit for this file" : "stored size differs");
  const uint8_t *src = z->buf + d;
  const uint8_t *out = src;
  uint8_t *buf = NULL;
  if (m->method == 8) {
    buf = malloc(m->usize ? (size_t)m->usize : 1);
    if (!buf) return ct_errf(e, "%s: out of memory inflating '%s'", z->path, m->name);
    z_stream s;
    memset(&s, 0, sizeof s);
    if (inflateInit2(&s, -15) != Z_OK) {
      free(buf);
      return ct_errf(e, "%s: cannot start inflating '%s'", z->path, m->name);
    }
    uint64_t in_left = m->csize, out_left = m->usize;
    const uint8_t *ip = src;
    uint8_t *op = buf;
    int rc = Z_OK;
    uint8_t spare;
    while (rc == Z_OK) {
      uInt ia = in_left > 1u << 30 ? 1u << 30 : (uInt)in_left;
      uInt oa = out_left > 1u << 30 ? 1u << 30 : (uInt)out_left;
      s.next_in = (Bytef *)ip;
      s.avail_in = ia;
      s.next_out = oa ? op : &spare; /* one spare byte: output beyond the size is an error */
      s.avail_out = oa ? oa : 1;
      rc = inflate(&s, Z_NO_FLUSH);
      ip += ia - s.avail_in;
      in_left -= ia - s.avail_in;
      if (!oa) {
        if (s.avail_out == 0) rc = Z_DATA_ERROR;
      } else {
        op += oa - s.avail_out;
        out_left -= oa - s.avail_out;
      }
    }
    inflateEnd(&s);
    if (rc != Z_STREAM_END || out_left != 0) {
      free(buf);
      return ct_errf(e, "%s: ZIP member '%s' does not inflate to its declared %llu bytes (damaged)",
                     z->path, m->name, (unsigned long long)m->usize);
    }
    out = buf;
  }
  uLong crc = crc32(0L, Z_NULL, 0);
  for (uint64_t k = 0; k < m->usize;) {
    uInt n = m->usize - k > 1u << 30 ? 1u << 30 : (uInt)(m->usize - k);
    crc = crc32(crc, out + k, n);
    k += n;
  }
  if ((uint32_t)crc != m->crc) {
    free(buf);
    return ct_errf(e, "%s: ZIP member '%s' fails its CRC-32 check (damaged)", z->path, m->name);
  }
  *data = out;
  *owned = buf;
  return 0;
}
