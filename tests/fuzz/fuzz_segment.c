/*
 * fuzz_segment.c - segment recovery fed arbitrary file contents.
 *
 * Input: one flags byte, one byte of base offset, then the segment file's
 * bytes; when flag INDEX is set, the bytes from the first "SDIDX\0v1" on
 * are the segment's .idx file instead.  With flag FIX the harness makes
 * the header valid and recomputes every checksum the file format has
 * (header, each record that fits, index), so that the fuzzer explores the
 * structure behind them rather than the CRCs.
 *
 * The files are written into a temporary directory and opened with
 * sd_segment_open (as the newest segment of a partition with flag LAST,
 * else as a sealed one).  Then every record it claims is checked: its
 * position inside the used bytes and past the header, positions rising,
 * sd_segment_record succeeding (a checksum failure is allowed only for
 * records an index vouched for without reading), the offset, the JSON
 * inside the file.  Recovery must be idempotent: reopening finds the same
 * records and nothing more to cut.  A recovered last segment must take an
 * append and read it back.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "storage/segment.h"
#include "streamd/err.h"
#include "util/crc.h"

#define F_LAST 1
#define F_FIX 2
#define F_INDEX 4
#define MAX_SIZE (1u << 20)

static const char IDX_MAGIC[8] = {'S', 'D', 'I', 'D', 'X', 0, 'v', '1'};
static const char SEG_MAGIC[8] = {'S', 'D', 'S', 'E', 'G', 0, 'v', '1'};

static char dir[256], seg_path[512], idx_path[512];

static void fail(const char *what, uint32_t i) {
  fprintf(stderr, "fuzz_segment: %s (record %u)\n", what, i);
  abort();
}

static uint32_t get32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t get16(const char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static void put32(char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(char *p, uint64_t v) { memcpy(p, &v, 8); }

/* Recomputes the checksums of the header, of each record that fits, and of the index. */
static void fix(char *seg, size_t len, uint64_t base, char *idx, size_t ilen) {
  if (len >= SD_SEG_HEADER_BYTES) {
    memcpy(seg, SEG_MAGIC, 8);
    put32(seg + 8, 1);
    put32(seg + 12, 0);
    put64(seg + 16, base);
    put32(seg + 32, sd_crc32c(seg, 32, 0));
    for (size_t pos = SD_SEG_HEADER_BYTES; pos + SD_REC_HEADER_BYTES <= len;) {
      uint32_t jl = get32(seg + pos);
      uint16_t il = get16(seg + pos + 24);
      uint64_t sz = sd_record_size(il, jl);
      if (jl == 0 || sz > len - pos) break;
      put32(seg + pos + 4, sd_crc32c(seg + pos + 8, SD_REC_HEADER_BYTES - 8 + il + jl, 0));
      pos += sz;
    }
  }
  if (idx && ilen >= 32) {
    uint64_t n = get32(idx + 16);
    if (n * 4 <= ilen - 32) put32(idx + 20, sd_crc32c(idx + 32, n * 4, sd_crc32c(idx, 20, 0)));
  }
}

static int write_file(const char *path, const char *p, size_t n) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  ssize_t w = write(fd, p, n);
  close(fd);
  return w == (ssize_t)n ? 0 : -1;
}

/* Checks what an opened segment claims; returns its record count. */
static uint32_t check(struct sd_segment *seg, const struct sd_segment_recovery *rep, uint64_t base) {
  if (seg->end < SD_SEG_HEADER_BYTES || seg->end > seg->size) fail("used length outside the file", 0);
  if (seg->base != base) fail("wrong base", 0);
  for (uint32_t i = 0; i < seg->count; i++) {
    uint64_t pos = seg->pos[i];
    if (pos < SD_SEG_HEADER_BYTES || pos + SD_REC_HEADER_BYTES > seg->end) fail("a record position outside the used bytes", i);
    if (i > 0 && pos < (uint64_t)seg->pos[i - 1] + SD_REC_HEADER_BYTES) fail("record positions do not rise", i);
    struct sd_record rec;
    int rc = sd_segment_record(seg, i, &rec);
    if (rc == SD_E_CORRUPT && rep->used_index && i + 1 < seg->count) continue;
    if (rc != 0) fail("a claimed record does not read", i);
    if (rec.offset != base + i) fail("wrong offset", i);
    if (rec.json_len == 0 || rec.json < seg->map + SD_SEG_HEADER_BYTES ||
        rec.json + rec.json_len > seg->map + seg->end)
      fail("record JSON outside the used bytes", i);
    if (rec.id_len != sd_segment_id_len(seg, i) || rec.id_len > SD_MAX_ID) fail("id length", i);
    if (!rep->used_index && i + 1 < seg->count && seg->pos[i + 1] != pos + sd_record_size(rec.id_len, rec.json_len))
      fail("a scanned record is not followed by the next", i);
  }
  if (seg->count) {
    if (sd_segment_seek_time(seg, 0) != 0) fail("seek to time 0", 0);
    if (sd_segment_seek_time(seg, UINT64_MAX) > seg->count) fail("seek past the end", 0);
  }
  return seg->count;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (dir[0] == '\0') {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/streamd-fuzzseg-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) abort();
    sd_segment_path(seg_path, sizeof(seg_path), dir, 0, "seg");
  }
  if (size < 2) return 0;
  int flags = data[0];
  uint64_t base = data[1];
  sd_segment_path(seg_path, sizeof(seg_path), dir, base, "seg");
  sd_segment_path(idx_path, sizeof(idx_path), dir, base, "idx");
  size_t len = size - 2;
  char *img = malloc(len + 1);
  if (img == NULL) abort();
  memcpy(img, data + 2, len);
  char *idx = NULL;
  size_t ilen = 0;
  if (flags & F_INDEX) {
    idx = memmem(img, len, IDX_MAGIC, sizeof(IDX_MAGIC));
    if (idx) {
      ilen = len - (size_t)(idx - img);
      len = (size_t)(idx - img);
    }
  }
  if (flags & F_FIX) fix(img, len, base, idx, ilen);
  if (write_file(seg_path, img, len) != 0 || (idx && write_file(idx_path, idx, ilen) != 0)) abort();

  struct sd_segment *seg = NULL;
  struct sd_segment_recovery rep;
  int last = flags & F_LAST;
  int rc = sd_segment_open(seg_path, 0, base, last, MAX_SIZE, &seg, &rep);
  if (rc == 0) {
    uint32_t n = check(seg, &rep, base);
    uint64_t end = seg->end;
    int used_index = rep.used_index;
    sd_segment_unref(seg);
    /* Recovery is idempotent: a second open finds the same and cuts nothing. */
    seg = NULL;
    rc = sd_segment_open(seg_path, 0, base, last, MAX_SIZE, &seg, &rep);
    if (rc != 0) fail("a recovered segment does not reopen", 0);
    if (check(seg, &rep, base) != n || seg->end != end) fail("reopening finds other records", n);
    if (rep.cut_bytes != 0 && !used_index) fail("reopening cuts again", n);
    if (last && sd_segment_room(seg) >= sd_record_size(3, 2)) {
      struct iovec j = {(void *)"{}", 2};
      if (sd_segment_append(seg, 42, "abc", 3, &j, 1, 2) != 0) fail("append after recovery", n);
      struct sd_record rec;
      if (sd_segment_record(seg, n, &rec) != 0 || rec.offset != base + n || rec.json_len != 2 ||
          memcmp(rec.json, "{}", 2) != 0)
        fail("the record appended after recovery does not read back", n);
    }
    sd_segment_unref(seg);
  } else if (rc != SD_E_CORRUPT_FILE) {
    fprintf(stderr, "fuzz_segment: open failed: %d\n", rc);
    abort();
  }
  unlink(seg_path);
  unlink(idx_path);
  free(img);
  return 0;
}
