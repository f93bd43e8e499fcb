/*
 * segment.c - segment files: format, append, read, recovery, index files.
 *
 * A segment file "<base:020>.seg" holds the records of one partition from
 * offset `base` on.  All integers are little-endian.
 *
 *   Segment header (64 bytes)
 *     0   8  magic "SDSEG\0v1"
 *     8   4  format version (1)
 *     12  4  partition number
 *     16  8  base offset
 *     24  8  creation time, epoch ms
 *     32  4  CRC32C of bytes 0..31
 *     36 28  zero
 *
 *   Record (32-byte header + id + JSON, padded with zeros to 8 bytes)
 *     0   4  json_len  L   (1 .. max_event_bytes + framing)
 *     4   4  CRC32C of bytes 8 .. 32+I+L of the record
 *     8   8  offset
 *     16  8  timestamp, epoch ms
 *     24  2  id_len I  (0 .. 128)
 *     26  2  flags (0)
 *     28  4  zero
 *     32  I  idempotency id
 *     32+I L the served JSON object
 *
 * Validity rule: a record is valid iff it lies inside the file, its CRC
 * matches, its reserved fields are zero and its offset is one past the
 * previous record's (base for the first).  Recovery keeps the longest
 * valid prefix and zeroes the rest of the file, so that stale bytes past a
 * cut can never be taken for records later.
 *
 *   Index file "<base:020>.idx" (written once a segment is sealed)
 *     0   8  magic "SDIDX\0v1"
 *     8   8  base offset
 *     16  4  record count N
 *     20  4  CRC32C of bytes 0..19 and of the positions
 *     24  8  used length of the segment (end of the last record)
 *     32  4N position of each record in the segment
 *   An index is used only if its CRC matches, its positions start at 64
 *   and rise by at least a smallest record (8-aligned), and its last points
 *   at a valid record with offset base+N-1 ending exactly at `used length`.
 *   A missing or invalid index only costs a scan.
 */
#include "segment.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "streamd/err.h"
#include "streamd/log.h"
#include "util/crc.h"

static const char SEG_MAGIC[8] = {'S', 'D', 'S', 'E', 'G', 0, 'v', '1'};
static const char IDX_MAGIC[8] = {'S', 'D', 'I', 'D', 'X', 0, 'v', '1'};
#define IDX_HEADER_BYTES 32u

static inline void put32(char *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
static inline void put64(char *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }
static inline uint32_t get32(const char *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static inline uint64_t get64(const char *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }
static inline uint16_t get16(const char *p) { uint16_t v; memcpy(&v, p, 2); return le16toh(v); }

void sd_segment_path(char *buf, size_t cap, const char *dir, uint64_t base, const char *ext) {
  snprintf(buf, cap, "%s/%020llu.%s", dir, (unsigned long long)base, ext);
}

int sd_segment_check_header(const char *img, uint64_t len, uint32_t partition, uint64_t base) {
  if (len < SD_SEG_HEADER_BYTES) return SD_E_CORRUPT_FILE;
  if (memcmp(img, SEG_MAGIC, 8) != 0) return SD_E_CORRUPT_FILE;
  if (get32(img + 8) != 1) return SD_E_CORRUPT_FILE;
  if (get32(img + 32) != sd_crc32c(img, 32, 0)) return SD_E_CORRUPT_FILE;
  if (get32(img + 12) != partition || get64(img + 16) != base) return SD_E_CORRUPT_FILE;
  return 0;
}

/* Checks the record at pos; returns its on-disk size, or 0 when invalid. */
static uint64_t record_check(const char *img, uint64_t len, uint64_t pos, uint64_t want_offset) {
  if (pos + SD_REC_HEADER_BYTES > len) return 0;
  const char *h = img + pos;
  uint32_t jl = get32(h);
  uint16_t il = get16(h + 24);
  if (jl == 0 || il > SD_MAX_ID || get16(h + 26) != 0 || get32(h + 28) != 0) return 0;
  if (get64(h + 8) != want_offset) return 0;
  uint64_t sz = sd_record_size(il, jl);
  if (sz > len - pos) return 0;
  if (sd_crc32c(h + 8, SD_REC_HEADER_BYTES - 8 + il + jl, 0) != get32(h + 4)) return 0;
  return sz;
}

uint32_t sd_segment_scan(const char *img, uint64_t len, uint64_t base, uint32_t *positions, uint32_t max_positions,
                         uint64_t *end_out, uint64_t *last_ts_out) {
  uint64_t pos = SD_SEG_HEADER_BYTES, last_ts = 0;
  uint32_t n = 0;
  if (len > UINT32_MAX) len = UINT32_MAX; /* positions are 32-bit */
  while (pos < len) {
    uint64_t sz = record_check(img, len, pos, base + n);
    if (sz == 0) break;
    if (positions && n < max_positions) positions[n] = (uint32_t)pos;
    last_ts = get64(img + pos + 16);
    pos += sz;
    n++;
  }
  if (end_out) *end_out = len < SD_SEG_HEADER_BYTES ? len : pos;
  if (last_ts_out) *last_ts_out = last_ts;
  return n;
}

static struct sd_segment *segment_alloc(const char *path, uint32_t partition, uint64_t base) {
  struct sd_segment *seg = calloc(1, sizeof(*seg));
  if (seg == NULL) return NULL;
  seg->path = strdup(path);
  if (seg->path == NULL) {
    free(seg);
    return NULL;
  }
  seg->fd = -1;
  seg->base = base;
  seg->partition = partition;
  seg->refs = 1;
  return seg;
}

static int index_reserve(struct sd_segment *seg, uint32_t n) {
  if (n <= seg->pos_cap) return 0;
  uint32_t cap = seg->pos_cap ? seg->pos_cap : 256;
  while (cap < n) cap *= 2;
  uint32_t *p = realloc(seg->pos, (size_t)cap * sizeof(*p));
  if (p == NULL) return -ENOMEM;
  seg->pos = p;
  seg->pos_cap = cap;
  return 0;
}

static int map_segment(struct sd_segment *seg) {
  void *m = mmap(NULL, seg->size, PROT_READ, MAP_SHARED, seg->fd, 0);
  if (m == MAP_FAILED) return -errno;
  seg->map = m;
  return 0;
}

/* Writes zeros over [from, to), keeping the blocks allocated. */
static int zero_range_inplace(int fd, uint64_t from, uint64_t to) {
  static const char zeros[4096];
  for (uint64_t p = from; p < to;) {
    size_t n = to - p < sizeof(zeros) ? (size_t)(to - p) : sizeof(zeros);
    ssize_t w = pwrite(fd, zeros, n, (off_t)p);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += (uint64_t)w;
  }
  return 0;
}

/* Makes bytes [from, to) of fd read as zeros, releasing their blocks
 * (space is reserved again chunk by chunk as records arrive). */
static int zero_range(int fd, uint64_t from, uint64_t to) {
  if (to <= from) return 0;
  if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)from, (off_t)(to - from)) == 0) return 0;
  if (fallocate(fd, FALLOC_FL_ZERO_RANGE, (off_t)from, (off_t)(to - from)) == 0) return 0;
  return zero_range_inplace(fd, from, to);
}

uint64_t sd_segment_chunk(uint64_t size) { return size < SD_SEG_RESERVE_CHUNK ? size : SD_SEG_RESERVE_CHUNK; }

int sd_segment_reserve_fd(int fd, uint64_t from, uint64_t to) {
  if (to <= from) return 0;
  int e = posix_fallocate(fd, (off_t)from, (off_t)(to - from));
  return e == 0 ? 0 : -e;
}

int sd_segment_reserve(struct sd_segment *seg, uint64_t upto) {
  if (upto > seg->size) upto = seg->size;
  if (upto <= seg->reserved) return 0;
  int rc = sd_segment_reserve_fd(seg->fd, seg->reserved, upto);
  if (rc == 0) seg->reserved = upto;
  return rc;
}

/* Sizes a new segment file: `size` bytes long, the first chunk reserved. */
static int size_new_file(int fd, uint64_t size) {
  if (ftruncate(fd, (off_t)size) != 0) return -errno;
  return sd_segment_reserve_fd(fd, 0, sd_segment_chunk(size));
}

int sd_segment_preallocate(const char *path, uint64_t size) {
  int rc = 0;
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -errno;
  if ((rc = size_new_file(fd, size)) != 0) goto fail_close;
  if (fdatasync(fd) != 0) {
    rc = -errno;
    goto fail_close;
  }
  close(fd);
  return 0;
fail_close:
  close(fd);
  unlink(path);
  return rc;
}

int sd_segment_create(const char *dir, const char *prealloc, uint32_t partition, uint64_t base, uint64_t size,
                      struct sd_segment **out) {
  char path[PATH_MAX], tmp[PATH_MAX];
  char hdr[SD_SEG_HEADER_BYTES];
  int rc;
  sd_segment_path(path, sizeof(path), dir, base, "seg");
  struct sd_segment *seg = segment_alloc(path, partition, base);
  if (seg == NULL) return -ENOMEM;
  seg->size = size;
  seg->end = SD_SEG_HEADER_BYTES;
  seg->reserved = sd_segment_chunk(size);

  /* The file is complete (sized, header written) before it is renamed into
   * place, so a segment file never exists half-made under its real name,
   * and an empty segment with the same base is replaced atomically. */
  if (prealloc != NULL) {
    snprintf(tmp, sizeof(tmp), "%s", prealloc);
    seg->fd = open(tmp, O_RDWR | O_CLOEXEC);
  } else {
    snprintf(tmp, sizeof(tmp), "%s.new", path);
    seg->fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  }
  if (seg->fd < 0) {
    rc = -errno;
    goto fail_seg;
  }
  if (prealloc == NULL && (rc = size_new_file(seg->fd, size)) != 0) goto fail_file;
  memset(hdr, 0, sizeof(hdr));
  memcpy(hdr, SEG_MAGIC, 8);
  put32(hdr + 8, 1);
  put32(hdr + 12, partition);
  put64(hdr + 16, base);
  put64(hdr + 24, sd_now_ms());
  put32(hdr + 32, sd_crc32c(hdr, 32, 0));
  if (pwrite(seg->fd, hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr)) {
    rc = errno ? -errno : -EIO;
    goto fail_file;
  }
  if (rename(tmp, path) != 0) {
    rc = -errno;
    goto fail_file;
  }
  if ((rc = map_segment(seg)) != 0) goto fail_renamed;
  *out = seg;
  return 0;

fail_renamed:
  snprintf(tmp, sizeof(tmp), "%s", path);
fail_file:
  close(seg->fd);
  unlink(tmp);
fail_seg:
  free(seg->path);
  free(seg);
  return rc;
}

/* Loads "<base>.idx" when valid; 1 when used, 0 when not. */
static int load_index(struct sd_segment *seg, uint64_t file_len) {
  char path[PATH_MAX];
  char hdr[IDX_HEADER_BYTES];
  int used = 0;
  size_t plen = strlen(seg->path);
  if (plen < 4 || plen >= sizeof(path)) return 0;
  memcpy(path, seg->path, plen - 3);
  memcpy(path + plen - 3, "idx", 4);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  if (pread(fd, hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr)) goto out;
  if (memcmp(hdr, IDX_MAGIC, 8) != 0 || get64(hdr + 8) != seg->base) goto out;
  uint32_t n = get32(hdr + 16);
  uint64_t end = get64(hdr + 24);
  if (n == 0 || end > file_len || n > (file_len / SD_REC_HEADER_BYTES)) goto out;
  if (index_reserve(seg, n) != 0) goto out;
  size_t bytes = (size_t)n * 4;
  if (pread(fd, seg->pos, bytes, IDX_HEADER_BYTES) != (ssize_t)bytes) goto out;
  uint32_t crc = sd_crc32c(hdr, 20, 0);
  crc = sd_crc32c(seg->pos, bytes, crc);
  if (crc != get32(hdr + 20)) goto out;
  /* Positions must start after the header and rise by at least one
   * smallest record, 8-byte aligned: with the last one checked below, every
   * position then lies inside the used bytes (readers index the mapping
   * with them).  A record behind a plausible position is still checked
   * when it is read. */
  for (uint32_t i = 0; i < n; i++) {
    seg->pos[i] = le32toh(seg->pos[i]);
    if (seg->pos[i] % 8 != 0) goto out;
    if (i == 0 ? seg->pos[0] != SD_SEG_HEADER_BYTES : seg->pos[i] < (uint64_t)seg->pos[i - 1] + sd_record_size(0, 1))
      goto out;
  }
  uint64_t lastpos = seg->pos[n - 1];
  uint64_t sz = record_check(seg->map, file_len, lastpos, seg->base + n - 1);
  if (sz == 0 || lastpos + sz != end) goto out;
  seg->count = n;
  seg->end = end;
  seg->first_ts = get64(seg->map + seg->pos[0] + 16);
  seg->last_ts = get64(seg->map + lastpos + 16);
  used = 1;
out:
  close(fd);
  return used;
}

int sd_segment_open(const char *path, uint32_t partition, uint64_t base, int last, uint64_t max_size,
                    struct sd_segment **out, struct sd_segment_recovery *rep) {
  struct stat st;
  int rc;
  memset(rep, 0, sizeof(*rep));
  struct sd_segment *seg = segment_alloc(path, partition, base);
  if (seg == NULL) return -ENOMEM;
  seg->fd = open(path, O_RDWR | O_CLOEXEC);
  if (seg->fd < 0) {
    rc = -errno;
    goto fail_seg;
  }
  if (fstat(seg->fd, &st) != 0) {
    rc = -errno;
    goto fail_file;
  }
  if ((uint64_t)st.st_size < SD_SEG_HEADER_BYTES || (uint64_t)st.st_size > max_size) {
    rc = SD_E_CORRUPT_FILE;
    goto fail_file;
  }
  seg->size = (uint64_t)st.st_size;
  if ((rc = map_segment(seg)) != 0) goto fail_file;
  if ((rc = sd_segment_check_header(seg->map, seg->size, partition, base)) != 0) goto fail_map;

  if (last || !load_index(seg, seg->size)) {
    uint32_t n = sd_segment_scan(seg->map, seg->size, base, NULL, 0, NULL, NULL);
    if ((rc = index_reserve(seg, n ? n : 1)) != 0) goto fail_map;
    uint64_t end, last_ts;
    seg->count = sd_segment_scan(seg->map, seg->size, base, seg->pos, n, &end, &last_ts);
    seg->end = end;
    seg->last_ts = last_ts;
    seg->first_ts = seg->count ? get64(seg->map + seg->pos[0] + 16) : 0;
    /* Anything non-zero past the valid prefix is a torn or damaged tail. */
    for (uint64_t p = end; p < seg->size; p += 8) {
      uint64_t w = 0;
      memcpy(&w, seg->map + p, seg->size - p >= 8 ? 8 : (size_t)(seg->size - p));
      if (w != 0) {
        rep->cut_bytes = seg->size - end;
        rep->damaged = !last;
        break;
      }
      if (p - end > 1u << 20) break; /* a long run of zeros: the reserved, never-written space */
    }
    if (last || rep->cut_bytes) {
      /* Zero the whole unused tail: stale records past a cut must never
       * line up with later appends.  Whole pages are released; the page
       * holding `end` is zeroed in place. */
      uint64_t page = (end + 4095) & ~(uint64_t)4095;
      if (page > seg->size) page = seg->size;
      if ((rc = zero_range_inplace(seg->fd, end, page)) != 0 || (rc = zero_range(seg->fd, page, seg->size)) != 0)
        goto fail_map;
      seg->reserved = page;
      if (fdatasync(seg->fd) != 0) {
        rc = -errno;
        goto fail_map;
      }
    }
  } else {
    rep->used_index = 1;
    seg->unchecked = 1;
  }
  seg->sealed = !last;
  *out = seg;
  return 0;

fail_map:
  munmap((void *)seg->map, seg->size);
fail_file:
  close(seg->fd);
fail_seg:
  free(seg->pos);
  free(seg->path);
  free(seg);
  return rc;
}

/* pwritev of exactly len bytes, going on after short writes. */
static int write_all(int fd, struct iovec *iov, int n, uint64_t at, size_t len) {
  size_t left = len;
  while (left > 0) {
    ssize_t w = pwritev(fd, iov, n, (off_t)at);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if ((size_t)w == left) break;
    left -= (size_t)w;
    at += (uint64_t)w;
    size_t skip = (size_t)w;
    int k = 0;
    while (skip >= iov[k].iov_len) skip -= iov[k++].iov_len;
    iov[k].iov_base = (char *)iov[k].iov_base + skip;
    iov[k].iov_len -= skip;
    memmove(iov, iov + k, (size_t)(n - k) * sizeof(*iov));
    n -= k;
  }
  return 0;
}

int sd_segment_flush(struct sd_segment *seg) {
  if (seg->stage.len == 0) return 0;
  struct iovec iov = {seg->stage.data, seg->stage.len};
  int rc = write_all(seg->fd, &iov, 1, seg->stage_at, seg->stage.len);
  if (rc == 0) sd_buf_reset(&seg->stage);
  if (seg->sealed && rc == 0) sd_buf_free(&seg->stage);
  return rc;
}

int sd_segment_set_writable(struct sd_segment *seg, int on) {
  on = on ? 1 : 0;
  if (seg->writable == on) return 0;
  if (mprotect((void *)seg->map, seg->size, on ? PROT_READ | PROT_WRITE : PROT_READ) != 0) return -errno;
  seg->writable = on;
  return 0;
}

int sd_segment_append(struct sd_segment *seg, uint64_t timestamp_ms, const char *id, size_t id_len,
                      const struct iovec *json, int json_iovcnt, size_t json_len) {
  char hdr[SD_REC_HEADER_BYTES];
  static const char pad[8];
  struct iovec iov[8];
  int n = 0, rc;
  uint64_t sz = sd_record_size(id_len, json_len);
  SD_ASSERT(sz <= sd_segment_room(seg) && json_iovcnt <= 5 && id_len <= SD_MAX_ID);
  if ((rc = index_reserve(seg, seg->count + 1)) != 0) return rc;

  memset(hdr, 0, sizeof(hdr));
  put32(hdr, (uint32_t)json_len);
  put64(hdr + 8, seg->base + seg->count);
  put64(hdr + 16, timestamp_ms);
  hdr[24] = (char)(id_len & 0xff);
  hdr[25] = (char)(id_len >> 8);
  uint32_t crc = sd_crc32c(hdr + 8, SD_REC_HEADER_BYTES - 8, 0);
  if (id_len) crc = sd_crc32c(id, id_len, crc);
  for (int i = 0; i < json_iovcnt; i++) crc = sd_crc32c(json[i].iov_base, json[i].iov_len, crc);
  put32(hdr + 4, crc);

  iov[n++] = (struct iovec){hdr, sizeof(hdr)};
  if (id_len) iov[n++] = (struct iovec){(void *)id, id_len};
  for (int i = 0; i < json_iovcnt; i++) iov[n++] = json[i];
  size_t padn = (size_t)(sz - SD_REC_HEADER_BYTES - id_len - json_len);
  if (padn) iov[n++] = (struct iovec){(void *)pad, padn};

  if (seg->writable && seg->end + sz <= seg->reserved) {
    /* The blocks exist: a copy into the page cache, no system call. */
    char *w = (char *)seg->map + seg->end;
    for (int i = 0; i < n; i++) {
      memcpy(w, iov[i].iov_base, iov[i].iov_len);
      w += iov[i].iov_len;
    }
  } else if (seg->staging) {
    /* Gathered; sd_segment_flush writes the whole run with one pwrite. */
    if (seg->stage.len == 0) seg->stage_at = seg->end;
    if ((rc = sd_buf_reserve(&seg->stage, (size_t)sz)) != 0) return rc;
    for (int i = 0; i < n; i++) sd_buf_append(&seg->stage, iov[i].iov_base, iov[i].iov_len);
  } else if ((rc = write_all(seg->fd, iov, n, seg->end, (size_t)sz)) != 0) {
    return rc;
  }
  seg->pos[seg->count++] = (uint32_t)seg->end;
  seg->end += sz;
  if (seg->count == 1) seg->first_ts = timestamp_ms;
  seg->last_ts = timestamp_ms;
  return 0;
}

int sd_segment_truncate(struct sd_segment *seg, uint32_t i) {
  if (i >= seg->count) return 0;
  uint64_t from = seg->pos[i];
  int rc = 0;
  if (seg->stage.len && from >= seg->stage_at) {
    seg->stage.len = (size_t)(from - seg->stage_at); /* never written: just forgotten */
  } else {
    seg->stage.len = 0;
    rc = zero_range_inplace(seg->fd, from, seg->end);
  }
  seg->count = i;
  seg->end = from;
  seg->last_ts = i ? get64(seg->map + seg->pos[i - 1] + 16) : 0;
  if (i == 0) seg->first_ts = 0;
  return rc;
}

int sd_segment_record(const struct sd_segment *seg, uint32_t i, struct sd_record *rec) {
  SD_ASSERT(i < seg->count);
  uint64_t pos = seg->pos[i];
  if (record_check(seg->map, seg->end, pos, seg->base + i) == 0) return SD_E_CORRUPT;
  const char *h = seg->map + pos;
  rec->partition = seg->partition;
  rec->offset = seg->base + i;
  rec->timestamp_ms = get64(h + 16);
  rec->id_len = get16(h + 24);
  rec->id = rec->id_len ? h + SD_REC_HEADER_BYTES : NULL;
  rec->json_len = get32(h);
  rec->json = h + SD_REC_HEADER_BYTES + rec->id_len;
  return 0;
}

uint16_t sd_segment_id_len(const struct sd_segment *seg, uint32_t i) {
  SD_ASSERT(i < seg->count);
  return get16(seg->map + seg->pos[i] + 24);
}

uint32_t sd_segment_seek_time(const struct sd_segment *seg, uint64_t ts) {
  uint32_t lo = 0, hi = seg->count;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (get64(seg->map + seg->pos[mid] + 16) < ts)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

int sd_segment_write_index(struct sd_segment *seg) {
  char path[PATH_MAX], tmp[PATH_MAX];
  char hdr[IDX_HEADER_BYTES];
  int rc = 0, fd;
  uint32_t *le = NULL;
  size_t plen = strlen(seg->path);
  SD_ASSERT(seg->sealed && plen > 4 && plen < sizeof(path));
  memcpy(path, seg->path, plen - 3);
  memcpy(path + plen - 3, "idx", 4);
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);

  if (seg->count == 0) return 0;
  size_t bytes = (size_t)seg->count * 4;
  le = malloc(bytes);
  if (le == NULL) return -ENOMEM;
  for (uint32_t i = 0; i < seg->count; i++) le[i] = htole32(seg->pos[i]);
  memset(hdr, 0, sizeof(hdr));
  memcpy(hdr, IDX_MAGIC, 8);
  put64(hdr + 8, seg->base);
  put32(hdr + 16, seg->count);
  put64(hdr + 24, seg->end);
  uint32_t crc = sd_crc32c(hdr, 20, 0);
  put32(hdr + 20, sd_crc32c(le, bytes, crc));

  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    rc = -errno;
    goto out_free;
  }
  struct iovec iov[2] = {{hdr, sizeof(hdr)}, {le, bytes}};
  if (pwritev(fd, iov, 2, 0) != (ssize_t)(sizeof(hdr) + bytes)) {
    rc = errno ? -errno : -EIO;
    goto out_close;
  }
  if (fdatasync(fd) != 0) {
    rc = -errno;
    goto out_close;
  }
  if (rename(tmp, path) != 0) {
    rc = -errno;
    goto out_close;
  }
  /* Give the unused reserved space back; the mapping never reads past end. */
  if (ftruncate(seg->fd, (off_t)seg->end) != 0) rc = -errno;
out_close:
  close(fd);
  if (rc != 0) unlink(tmp);
out_free:
  free(le);
  return rc;
}

int sd_segment_unlink(const struct sd_segment *seg) {
  char path[PATH_MAX];
  size_t plen = strlen(seg->path);
  int rc = 0;
  if (unlink(seg->path) != 0 && errno != ENOENT) rc = -errno;
  if (plen > 4 && plen < sizeof(path)) {
    memcpy(path, seg->path, plen - 3);
    memcpy(path + plen - 3, "idx", 4);
    if (unlink(path) != 0 && errno != ENOENT && rc == 0) rc = -errno;
  }
  return rc;
}

void sd_segment_ref(struct sd_segment *seg) { seg->refs++; }

void sd_segment_unref(struct sd_segment *seg) {
  if (seg == NULL || --seg->refs > 0) return;
  if (seg->map) munmap((void *)seg->map, seg->size);
  if (seg->fd >= 0) close(seg->fd);
  sd_buf_free(&seg->stage);
  free(seg->pos);
  free(seg->path);
  free(seg);
}
