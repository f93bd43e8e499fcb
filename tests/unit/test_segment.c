/*
 * test_segment.c - src/storage/segment.c against the format written at the
 * top of that file: header and record bytes checked against an independent
 * encoder, append and byte-exact read-back, lookup by offset and time, pure
 * scans of images, index files, recovery of torn tails, damage detection and
 * bad headers.  Every test works on real files in its own temp directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cmocka.h>

#include "storage/segment.h"
#include "testutil.h"
#include "util/crc.h"

#define SEG 4096u

/* ---- an independent encoder of the documented format ---------------------- */

static void le32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void le64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint64_t rd64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static uint32_t rd32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void enc_header(unsigned char *h, uint32_t partition, uint64_t base, uint64_t ctime) {
  memset(h, 0, 64);
  memcpy(h, "SDSEG\0v1", 8);
  le32(h + 8, 1);
  le32(h + 12, partition);
  le64(h + 16, base);
  le64(h + 24, ctime);
  le32(h + 32, sd_crc32c(h, 32, 0));
}

/* Encodes one record at p; returns its size (padded to 8). */
static size_t enc_record(unsigned char *p, uint64_t offset, uint64_t ts, const char *id, size_t il, const char *json,
                         size_t jl) {
  size_t sz = (32 + il + jl + 7) & ~(size_t)7;
  memset(p, 0, sz);
  le32(p, (uint32_t)jl);
  le64(p + 8, offset);
  le64(p + 16, ts);
  p[24] = (unsigned char)(il & 0xff);
  p[25] = (unsigned char)(il >> 8);
  memcpy(p + 32, id, il);
  memcpy(p + 32 + il, json, jl);
  le32(p + 4, sd_crc32c(p + 8, 24 + il + jl, 0));
  return sz;
}

/* ---- helpers ---------------------------------------------------------------- */

static struct sd_test_env *env(void **state) { return *state; }

static int append_str(struct sd_segment *seg, uint64_t ts, const char *id, const char *json) {
  struct iovec iov = {(void *)json, strlen(json)};
  return sd_segment_append(seg, ts, id, id ? strlen(id) : 0, &iov, 1, strlen(json));
}

static void seg_path(struct sd_test_env *t, uint64_t base, const char *ext, char *buf) {
  sd_segment_path(buf, PATH_MAX, t->dir, base, ext);
}

static void check_record(const struct sd_segment *seg, uint32_t i, uint64_t ts, const char *id, const char *json) {
  struct sd_record rec;
  SD_TEST_RC(sd_segment_record(seg, i, &rec), 0);
  assert_int_equal(rec.partition, seg->partition);
  assert_int_equal(rec.offset, seg->base + i);
  assert_int_equal(rec.timestamp_ms, ts);
  assert_int_equal(rec.json_len, strlen(json));
  assert_memory_equal(rec.json, json, strlen(json));
  if (id == NULL) {
    assert_null(rec.id);
    assert_int_equal(rec.id_len, 0);
  } else {
    assert_non_null(rec.id);
    assert_int_equal(rec.id_len, strlen(id));
    assert_memory_equal(rec.id, id, strlen(id));
  }
}

/* Five records of distinct shapes, timestamps 1000 + 10 * i. */
static const char *const JSON5[5] = {
    "{\"offset\":0,\"a\":1}",
    "{\"b\":\"hello world\"}",
    "{\"c\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]}",
    "{}",
    "{\"e\":\"the last one, a little longer than the others\"}",
};
static const char *const ID5[5] = {NULL, "id-1", NULL, "an-idempotency-id-of-some-length", "x"};

static struct sd_segment *make5(struct sd_test_env *t, uint32_t partition, uint64_t base) {
  struct sd_segment *seg = NULL;
  SD_TEST_RC(sd_segment_create(t->dir, NULL, partition, base, SEG, &seg), 0);
  for (int i = 0; i < 5; i++) SD_TEST_RC(append_str(seg, 1000 + 10 * (uint64_t)i, ID5[i], JSON5[i]), 0);
  assert_int_equal(fdatasync(seg->fd), 0);
  return seg;
}

static void check5(const struct sd_segment *seg, uint32_t n) {
  assert_int_equal(seg->count, n);
  for (uint32_t i = 0; i < n; i++) check_record(seg, i, 1000 + 10 * (uint64_t)i, ID5[i], JSON5[i]);
}

static struct sd_segment *reopen(struct sd_test_env *t, uint32_t partition, uint64_t base, int last,
                                 struct sd_segment_recovery *rep) {
  char path[PATH_MAX];
  struct sd_segment *seg = NULL;
  seg_path(t, base, "seg", path);
  SD_TEST_RC(sd_segment_open(path, partition, base, last, SD_SEG_MAX_BYTES, &seg, rep), 0);
  return seg;
}

/* Asserts bytes [from, to) of the file are zero. */
static void assert_zero_range(const char *path, uint64_t from, uint64_t to) {
  char *img;
  size_t len;
  SD_TEST_RC(sd_test_read_file(path, &img, &len), 0);
  assert_true(to <= len);
  for (uint64_t i = from; i < to; i++)
    if (img[i] != 0) {
      free(img);
      fail_msg("byte %llu of %s is not zero", (unsigned long long)i, path);
    }
  free(img);
}

/* ---- tests ------------------------------------------------------------------ */

static void test_segment_record_size_and_path(void **state) {
  (void)state;
  assert_int_equal(sd_record_size(0, 1), 40);
  assert_int_equal(sd_record_size(0, 8), 40);
  assert_int_equal(sd_record_size(0, 9), 48);
  assert_int_equal(sd_record_size(3, 5), 40);
  assert_int_equal(sd_record_size(128, 1), 168);
  char buf[PATH_MAX];
  sd_segment_path(buf, sizeof(buf), "/d", 42, "seg");
  assert_string_equal(buf, "/d/00000000000000000042.seg");
  sd_segment_path(buf, sizeof(buf), "/d", UINT64_MAX, "idx");
  assert_string_equal(buf, "/d/18446744073709551615.idx");
}

static void test_segment_create_header(void **state) {
  struct sd_test_env *t = env(state);
  char path[PATH_MAX];
  struct sd_segment *seg = NULL;
  uint64_t before = sd_now_ms();
  SD_TEST_RC(sd_segment_create(t->dir, NULL, 3, 100, SEG, &seg), 0);
  uint64_t after = sd_now_ms();
  seg_path(t, 100, "seg", path);
  assert_string_equal(seg->path, path);
  assert_int_equal(sd_test_file_size(path), SEG);
  assert_int_equal(seg->base, 100);
  assert_int_equal(seg->partition, 3);
  assert_int_equal(seg->count, 0);
  assert_int_equal(seg->end, SD_SEG_HEADER_BYTES);
  assert_int_equal(sd_segment_room(seg), SEG - SD_SEG_HEADER_BYTES);
  assert_false(seg->sealed);

  const unsigned char *h = (const unsigned char *)seg->map;
  uint64_t ctime = rd64(h + 24);
  assert_in_range(ctime, before, after);
  unsigned char want[64];
  enc_header(want, 3, 100, ctime);
  assert_memory_equal(h, want, 64);

  SD_TEST_RC(sd_segment_check_header(seg->map, seg->size, 3, 100), 0);
  SD_TEST_RC(sd_segment_check_header(seg->map, seg->size, 4, 100), SD_E_CORRUPT_FILE);
  SD_TEST_RC(sd_segment_check_header(seg->map, seg->size, 3, 101), SD_E_CORRUPT_FILE);
  SD_TEST_RC(sd_segment_check_header(seg->map, 63, 3, 100), SD_E_CORRUPT_FILE);

  sd_segment_unref(seg);
}

static void test_segment_append_read_byte_exact(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = make5(t, 2, 7);
  check5(seg, 5);
  assert_int_equal(seg->first_ts, 1000);
  assert_int_equal(seg->last_ts, 1040);

  /* The bytes on disk are exactly the documented encoding. */
  unsigned char want[SEG];
  size_t pos = 64;
  for (int i = 0; i < 5; i++) {
    assert_int_equal(seg->pos[i], pos);
    const char *id = ID5[i] ? ID5[i] : "";
    pos += enc_record(want + pos, 7 + (uint64_t)i, 1000 + 10 * (uint64_t)i, id, strlen(id), JSON5[i],
                      strlen(JSON5[i]));
  }
  assert_int_equal(seg->end, pos);
  char path[PATH_MAX], *img;
  size_t len;
  seg_path(t, 7, "seg", path);
  SD_TEST_RC(sd_test_read_file(path, &img, &len), 0);
  assert_int_equal(len, SEG);
  assert_memory_equal(img + 64, want + 64, pos - 64);
  for (size_t i = pos; i < len; i++) assert_int_equal(img[i], 0);
  free(img);

  /* JSON given in several pieces is stored as their concatenation. */
  struct iovec iov[3] = {{"{\"x\":", 5}, {"12345", 5}, {"}", 1}};
  SD_TEST_RC(sd_segment_append(seg, 2000, "pieces", 6, iov, 3, 11), 0);
  check_record(seg, 5, 2000, "pieces", "{\"x\":12345}");
  sd_segment_unref(seg);
}

static void test_segment_find_by_offset(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = make5(t, 0, 50);
  assert_int_equal(sd_segment_find(seg, 0), -1);
  assert_int_equal(sd_segment_find(seg, 49), -1);
  for (uint64_t o = 50; o < 55; o++) {
    int64_t i = sd_segment_find(seg, o);
    assert_int_equal(i, (int64_t)(o - 50));
    check_record(seg, (uint32_t)i, 1000 + 10 * (o - 50), ID5[o - 50], JSON5[o - 50]);
  }
  assert_int_equal(sd_segment_find(seg, 55), -1);
  assert_int_equal(sd_segment_find(seg, UINT64_MAX), -1);
  sd_segment_unref(seg);
}

static void test_segment_seek_time(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = NULL;
  SD_TEST_RC(sd_segment_create(t->dir, NULL, 0, 0, SEG, &seg), 0);
  assert_int_equal(sd_segment_seek_time(seg, 0), 0);
  assert_int_equal(sd_segment_seek_time(seg, 12345), 0);
  const uint64_t ts[] = {10, 20, 20, 30, 50};
  for (int i = 0; i < 5; i++) SD_TEST_RC(append_str(seg, ts[i], NULL, "{\"t\":1}"), 0);
  const struct {
    uint64_t ts;
    uint32_t want;
  } cases[] = {{0, 0}, {10, 0}, {11, 1}, {20, 1}, {21, 3}, {30, 3}, {31, 4}, {50, 4}, {51, 5}, {UINT64_MAX, 5}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    assert_int_equal(sd_segment_seek_time(seg, cases[i].ts), cases[i].want);
  sd_segment_unref(seg);
}

static void test_segment_scan_image(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = make5(t, 1, 10);
  uint64_t end = 0, last_ts = 0;
  uint32_t pos[8];
  char *img;
  size_t len;
  SD_TEST_RC(sd_test_read_file(seg->path, &img, &len), 0);

  assert_int_equal(sd_segment_scan(img, len, 10, pos, 8, &end, &last_ts), 5);
  assert_int_equal(end, seg->end);
  assert_int_equal(last_ts, 1040);
  for (int i = 0; i < 5; i++) assert_int_equal(pos[i], seg->pos[i]);
  /* Fewer position slots than records: the count is still complete. */
  memset(pos, 0, sizeof(pos));
  assert_int_equal(sd_segment_scan(img, len, 10, pos, 2, NULL, NULL), 5);
  assert_int_equal(pos[1], seg->pos[1]);
  assert_int_equal(pos[2], 0);
  /* Another base: the first record's offset does not follow, nothing valid. */
  assert_int_equal(sd_segment_scan(img, len, 11, NULL, 0, &end, &last_ts), 0);
  assert_int_equal(end, SD_SEG_HEADER_BYTES);
  assert_int_equal(last_ts, 0);
  /* An image cut anywhere inside record 3 keeps records 0..2. */
  for (uint64_t cut = seg->pos[3]; cut < seg->pos[4]; cut++) {
    assert_int_equal(sd_segment_scan(img, cut, 10, NULL, 0, &end, NULL), 3);
    assert_int_equal(end, seg->pos[3]);
  }
  /* Shorter than a header. */
  assert_int_equal(sd_segment_scan(img, 10, 10, NULL, 0, &end, NULL), 0);
  assert_int_equal(end, 10);

  /* Any single flipped byte of record 2 (padding aside) stops the scan there. */
  for (uint64_t p = seg->pos[2]; p < seg->pos[2] + 32 + strlen(JSON5[2]); p++) {
    img[p] ^= 0x20;
    assert_int_equal(sd_segment_scan(img, len, 10, NULL, 0, &end, NULL), 2);
    assert_int_equal(end, seg->pos[2]);
    img[p] ^= 0x20;
  }
  /* A record whose CRC matches but whose reserved field is not zero. */
  unsigned char *r2 = (unsigned char *)img + seg->pos[2];
  r2[28] = 1;
  le32(r2 + 4, sd_crc32c(r2 + 8, 24 + rd32(r2), 0));
  assert_int_equal(sd_segment_scan(img, len, 10, NULL, 0, NULL, NULL), 2);
  r2[28] = 0;
  /* Flags not zero. */
  r2[26] = 1;
  le32(r2 + 4, sd_crc32c(r2 + 8, 24 + rd32(r2), 0));
  assert_int_equal(sd_segment_scan(img, len, 10, NULL, 0, NULL, NULL), 2);
  r2[26] = 0;
  /* A well-formed record with the wrong offset (a stale one). */
  le64(r2 + 8, 99);
  le32(r2 + 4, sd_crc32c(r2 + 8, 24 + rd32(r2), 0));
  assert_int_equal(sd_segment_scan(img, len, 10, NULL, 0, NULL, NULL), 2);
  free(img);
  sd_segment_unref(seg);
}

/* A segment image built by hand from the documented layout opens and reads. */
static void test_segment_open_spec_fixture(void **state) {
  struct sd_test_env *t = env(state);
  unsigned char img[SEG];
  char path[PATH_MAX];
  memset(img, 0, sizeof(img));
  enc_header(img, 5, 1000, 1700000000000ull);
  size_t pos = 64;
  const char *json[3] = {"{\"k\":\"v\"}", "{\"n\":2}", "{\"s\":\"third\"}"};
  const char *ids[3] = {"", "abc", ""};
  for (int i = 0; i < 3; i++)
    pos += enc_record(img + pos, 1000 + (uint64_t)i, 5000 + (uint64_t)i, ids[i], strlen(ids[i]), json[i],
                      strlen(json[i]));
  seg_path(t, 1000, "seg", path);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, img, sizeof(img)), (ssize_t)sizeof(img));
  assert_int_equal(fsync(fd), 0);
  close(fd);

  for (int last = 0; last <= 1; last++) {
    struct sd_segment_recovery rep;
    struct sd_segment *seg = reopen(t, 5, 1000, last, &rep);
    assert_int_equal(rep.cut_bytes, 0);
    assert_false(rep.damaged);
    assert_false(rep.used_index);
    assert_int_equal(seg->count, 3);
    assert_int_equal(seg->end, pos);
    assert_int_equal(seg->first_ts, 5000);
    assert_int_equal(seg->last_ts, 5002);
    assert_int_equal(seg->sealed, !last);
    for (uint32_t i = 0; i < 3; i++) check_record(seg, i, 5000 + i, i == 1 ? "abc" : NULL, json[i]);
    sd_segment_unref(seg);
  }
}

static void test_segment_index_write_and_reopen(void **state) {
  struct sd_test_env *t = env(state);
  char spath[PATH_MAX], ipath[PATH_MAX];
  struct sd_segment *seg = make5(t, 4, 20);
  uint64_t end = seg->end;
  uint32_t pos[5];
  memcpy(pos, seg->pos, sizeof(pos));
  seg->sealed = 1;
  SD_TEST_RC(sd_segment_write_index(seg), 0);
  sd_segment_unref(seg);

  seg_path(t, 20, "seg", spath);
  seg_path(t, 20, "idx", ipath);
  char tmp[PATH_MAX + 8];
  snprintf(tmp, sizeof(tmp), "%s.tmp", ipath);
  assert_false(sd_test_exists(tmp));
  /* The reserved space is given back. */
  assert_int_equal(sd_test_file_size(spath), (int64_t)end);

  /* The index file is the documented layout. */
  char *idx;
  size_t len;
  SD_TEST_RC(sd_test_read_file(ipath, &idx, &len), 0);
  assert_int_equal(len, 32 + 4 * 5);
  unsigned char *u = (unsigned char *)idx;
  assert_memory_equal(u, "SDIDX\0v1", 8);
  assert_int_equal(rd64(u + 8), 20);
  assert_int_equal(rd32(u + 16), 5);
  assert_int_equal(rd64(u + 24), end);
  for (int i = 0; i < 5; i++) assert_int_equal(rd32(u + 32 + 4 * i), pos[i]);
  uint32_t crc = sd_crc32c(u, 20, 0);
  assert_int_equal(rd32(u + 20), sd_crc32c(u + 32, 20, crc));
  free(idx);

  struct sd_segment_recovery rep;
  seg = reopen(t, 4, 20, 0, &rep);
  assert_true(rep.used_index);
  assert_false(rep.damaged);
  assert_int_equal(rep.cut_bytes, 0);
  assert_true(seg->sealed);
  assert_int_equal(seg->end, end);
  assert_int_equal(seg->first_ts, 1000);
  assert_int_equal(seg->last_ts, 1040);
  assert_memory_equal(seg->pos, pos, sizeof(pos));
  check5(seg, 5);
  assert_int_equal(sd_segment_seek_time(seg, 1015), 2);
  sd_segment_unref(seg);

  /* Reopened as the newest segment, the index is not trusted: a scan. */
  seg = reopen(t, 4, 20, 1, &rep);
  assert_false(rep.used_index);
  assert_int_equal(rep.cut_bytes, 0);
  check5(seg, 5);
  assert_int_equal(sd_segment_room(seg), 0);
  sd_segment_unref(seg);
}

static void test_segment_reopen_without_index(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = make5(t, 0, 0);
  uint64_t end = seg->end;
  sd_segment_unref(seg);
  struct sd_segment_recovery rep;
  seg = reopen(t, 0, 0, 0, &rep);
  assert_false(rep.used_index);
  assert_false(rep.damaged);
  assert_int_equal(rep.cut_bytes, 0);
  assert_true(seg->sealed);
  assert_int_equal(seg->end, end);
  assert_int_equal(seg->first_ts, 1000);
  assert_int_equal(seg->last_ts, 1040);
  check5(seg, 5);
  sd_segment_unref(seg);

  seg = reopen(t, 0, 0, 1, &rep);
  assert_false(rep.used_index);
  assert_int_equal(rep.cut_bytes, 0);
  assert_false(seg->sealed);
  check5(seg, 5);
  /* The newest segment takes appends after reopening. */
  SD_TEST_RC(append_str(seg, 2000, NULL, "{\"after\":1}"), 0);
  check_record(seg, 5, 2000, NULL, "{\"after\":1}");
  sd_segment_unref(seg);
}

static void test_segment_invalid_index_ignored(void **state) {
  struct sd_test_env *t = env(state);
  char ipath[PATH_MAX];
  seg_path(t, 30, "idx", ipath);
  /* Byte positions in the index file to damage: magic, base, count, crc,
   * used length, a position in the middle, the last position. */
  const uint64_t where[] = {0, 8, 16, 20, 24, 32 + 4 * 2, 32 + 4 * 4};
  for (size_t k = 0; k < sizeof(where) / sizeof(where[0]); k++) {
    struct sd_segment *seg = make5(t, 0, 30);
    seg->sealed = 1;
    SD_TEST_RC(sd_segment_write_index(seg), 0);
    sd_segment_unref(seg);
    SD_TEST_RC(sd_test_flip_byte(ipath, where[k], 0x04), 0);
    struct sd_segment_recovery rep;
    seg = reopen(t, 0, 30, 0, &rep);
    if (rep.used_index) fail_msg("index damaged at byte %llu was used", (unsigned long long)where[k]);
    assert_false(rep.damaged);
    check5(seg, 5);
    SD_TEST_RC(sd_segment_unlink(seg), 0);
    sd_segment_unref(seg);
  }
}

/* An index with a correct checksum but positions that cannot be those of
 * its records (past the used bytes, unaligned, not rising, not starting
 * after the header) is not used: readers would index the mapping with
 * them.  The segment is scanned instead. */
static void test_segment_index_bad_positions_ignored(void **state) {
  struct sd_test_env *t = env(state);
  char ipath[PATH_MAX];
  seg_path(t, 40, "idx", ipath);
  const struct {
    int i;
    uint32_t pos;
  } bad[] = {{2, 0x0d000040u}, {2, 0xfffffff8u}, {2, 0}, {1, 68}, {3, 64}, {0, 72}, {0, 0}};
  for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
    struct sd_segment *seg = make5(t, 0, 40);
    seg->sealed = 1;
    SD_TEST_RC(sd_segment_write_index(seg), 0);
    sd_segment_unref(seg);
    char *idx;
    size_t len;
    SD_TEST_RC(sd_test_read_file(ipath, &idx, &len), 0);
    unsigned char *u = (unsigned char *)idx;
    le32(u + 32 + 4 * bad[k].i, bad[k].pos);
    le32(u + 20, sd_crc32c(u + 32, len - 32, sd_crc32c(u, 20, 0)));
    FILE *f = fopen(ipath, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(idx, 1, len, f), len);
    fclose(f);
    free(idx);
    struct sd_segment_recovery rep;
    seg = reopen(t, 0, 40, 0, &rep);
    if (rep.used_index) fail_msg("index with position %u at %d was used", bad[k].pos, bad[k].i);
    check5(seg, 5);
    SD_TEST_RC(sd_segment_unlink(seg), 0);
    sd_segment_unref(seg);
  }
}

static void test_segment_torn_tail_truncated(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = make5(t, 0, 0);
  uint64_t cut_at = seg->pos[4] + 10, keep_end = seg->pos[4];
  char path[PATH_MAX];
  seg_path(t, 0, "seg", path);
  sd_segment_unref(seg);
  assert_int_equal(truncate(path, (off_t)cut_at), 0);

  struct sd_segment_recovery rep;
  seg = reopen(t, 0, 0, 1, &rep);
  assert_int_equal(rep.cut_bytes, cut_at - keep_end);
  assert_false(rep.damaged);
  assert_false(rep.used_index);
  check5(seg, 4);
  assert_int_equal(seg->end, keep_end);
  assert_int_equal(seg->last_ts, 1030);
  assert_zero_range(path, keep_end, cut_at);
  /* The file keeps its (short) length: the freed bytes are the room left. */
  assert_int_equal(seg->size, cut_at);
  assert_int_equal(sd_segment_room(seg), cut_at - keep_end);
  sd_segment_unref(seg);
  /* Grown back (as if pre-allocated), the next record takes the next dense
   * offset and survives a reopen. */
  assert_int_equal(truncate(path, SEG), 0);
  seg = reopen(t, 0, 0, 1, &rep);
  assert_int_equal(rep.cut_bytes, 0);
  SD_TEST_RC(append_str(seg, 3000, NULL, "{}"), 0);
  sd_segment_unref(seg);
  seg = reopen(t, 0, 0, 1, &rep);
  assert_int_equal(rep.cut_bytes, 0);
  assert_int_equal(seg->count, 5);
  check_record(seg, 4, 3000, NULL, "{}");
  sd_segment_unref(seg);
}

/* Every cut point inside the last record, on a pre-allocated file. */
static void test_segment_torn_tail_every_cut(void **state) {
  struct sd_test_env *t = env(state);
  char path[PATH_MAX];
  seg_path(t, 0, "seg", path);
  struct sd_segment *seg = make5(t, 0, 0);
  /* Cuts inside the checksummed bytes (the zero padding is not covered). */
  uint64_t from = seg->pos[4], to = from + 32 + strlen(ID5[4]) + strlen(JSON5[4]);
  sd_segment_unref(seg);
  char *img;
  size_t len;
  SD_TEST_RC(sd_test_read_file(path, &img, &len), 0);
  for (uint64_t cut = from + 1; cut < to; cut++) {
    /* The file keeps its size; bytes after cut read as never written. */
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, img, len, 0), (ssize_t)len);
    static const char zeros[SEG];
    assert_int_equal(pwrite(fd, zeros, len - cut, (off_t)cut), (ssize_t)(len - cut));
    close(fd);
    struct sd_segment_recovery rep;
    seg = reopen(t, 0, 0, 1, &rep);
    if (seg->count != 4) fail_msg("cut at %llu: %u records", (unsigned long long)cut, seg->count);
    assert_int_equal(seg->end, from);
    assert_true(rep.cut_bytes > 0);
    assert_false(rep.damaged);
    sd_segment_unref(seg);
  }
  free(img);
}

static void test_segment_torn_tail_flipped_last(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = make5(t, 0, 0);
  uint64_t flip = seg->pos[4] + 40, keep_end = seg->pos[4];
  char path[PATH_MAX];
  seg_path(t, 0, "seg", path);
  sd_segment_unref(seg);
  SD_TEST_RC(sd_test_flip_byte(path, flip, 0x01), 0);

  struct sd_segment_recovery rep;
  seg = reopen(t, 0, 0, 1, &rep);
  check5(seg, 4);
  assert_int_equal(seg->end, keep_end);
  assert_int_equal(rep.cut_bytes, SEG - keep_end);
  assert_false(rep.damaged);
  assert_int_equal(sd_test_file_size(path), SEG);
  assert_zero_range(path, keep_end, SEG);
  sd_segment_unref(seg);
}

static void test_segment_damaged_middle_of_sealed(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = make5(t, 0, 0);
  uint64_t flip = seg->pos[2] + 33;
  char path[PATH_MAX];
  seg_path(t, 0, "seg", path);
  sd_segment_unref(seg);
  SD_TEST_RC(sd_test_flip_byte(path, flip, 0x80), 0);

  struct sd_segment_recovery rep;
  seg = reopen(t, 0, 0, 0, &rep);
  assert_true(rep.damaged);
  assert_false(rep.used_index);
  assert_true(rep.cut_bytes > 0);
  check5(seg, 2);
  sd_segment_unref(seg);
}

/* With a valid index the open trusts the positions; a damaged middle record
 * must still fail its checksum when read. */
static void test_segment_damage_behind_index_caught_on_read(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = make5(t, 0, 0);
  uint64_t flip = seg->pos[2] + 40;
  seg->sealed = 1;
  SD_TEST_RC(sd_segment_write_index(seg), 0);
  char path[PATH_MAX];
  seg_path(t, 0, "seg", path);
  sd_segment_unref(seg);
  SD_TEST_RC(sd_test_flip_byte(path, flip, 0x02), 0);

  struct sd_segment_recovery rep;
  seg = reopen(t, 0, 0, 0, &rep);
  assert_true(rep.used_index);
  assert_int_equal(seg->count, 5);
  struct sd_record rec;
  SD_TEST_RC(sd_segment_record(seg, 2, &rec), SD_E_CORRUPT);
  check_record(seg, 1, 1010, ID5[1], JSON5[1]);
  check_record(seg, 3, 1030, ID5[3], JSON5[3]);
  sd_segment_unref(seg);
}

static void test_segment_bad_header(void **state) {
  struct sd_test_env *t = env(state);
  char path[PATH_MAX];
  seg_path(t, 0, "seg", path);
  const uint64_t where[] = {0, 5, 8, 12, 16, 24, 32};
  for (size_t k = 0; k < sizeof(where) / sizeof(where[0]); k++) {
    struct sd_segment *seg = make5(t, 0, 0);
    sd_segment_unref(seg);
    SD_TEST_RC(sd_test_flip_byte(path, where[k], 0x10), 0);
    struct sd_segment_recovery rep;
    seg = NULL;
    for (int last = 0; last <= 1; last++) {
      int rc = sd_segment_open(path, 0, 0, last, SD_SEG_MAX_BYTES, &seg, &rep);
      if (rc != SD_E_CORRUPT_FILE)
        fail_msg("header byte %llu flipped: open returned %d (%s)", (unsigned long long)where[k], rc,
                 sd_strerror(rc));
    }
    assert_int_equal(unlink(path), 0);
  }

  /* Right file, wrong partition or base. */
  struct sd_segment *seg = make5(t, 0, 0), *other = NULL;
  sd_segment_unref(seg);
  struct sd_segment_recovery rep;
  SD_TEST_RC(sd_segment_open(path, 1, 0, 1, SD_SEG_MAX_BYTES, &other, &rep), SD_E_CORRUPT_FILE);
  SD_TEST_RC(sd_segment_open(path, 0, 1, 1, SD_SEG_MAX_BYTES, &other, &rep), SD_E_CORRUPT_FILE);
  /* Larger than allowed. */
  SD_TEST_RC(sd_segment_open(path, 0, 0, 1, SEG - 1, &other, &rep), SD_E_CORRUPT_FILE);
  /* Shorter than a header, and empty. */
  assert_int_equal(truncate(path, 40), 0);
  SD_TEST_RC(sd_segment_open(path, 0, 0, 1, SD_SEG_MAX_BYTES, &other, &rep), SD_E_CORRUPT_FILE);
  assert_int_equal(truncate(path, 0), 0);
  SD_TEST_RC(sd_segment_open(path, 0, 0, 1, SD_SEG_MAX_BYTES, &other, &rep), SD_E_CORRUPT_FILE);
  assert_null(other);
  /* Missing file. */
  assert_int_equal(unlink(path), 0);
  SD_TEST_RC(sd_segment_open(path, 0, 0, 1, SD_SEG_MAX_BYTES, &other, &rep), -ENOENT);
}

static void test_segment_truncate_rollback(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = make5(t, 0, 0);
  uint64_t old_end = seg->end, cut = seg->pos[2];
  SD_TEST_RC(sd_segment_truncate(seg, 2), 0);
  assert_int_equal(seg->count, 2);
  assert_int_equal(seg->end, cut);
  assert_int_equal(seg->last_ts, 1010);
  assert_zero_range(seg->path, cut, old_end);
  SD_TEST_RC(sd_segment_truncate(seg, 7), 0); /* past the end: nothing */
  assert_int_equal(seg->count, 2);
  SD_TEST_RC(append_str(seg, 5000, NULL, "{\"again\":2}"), 0);
  check_record(seg, 2, 5000, NULL, "{\"again\":2}");
  SD_TEST_RC(sd_segment_truncate(seg, 0), 0);
  assert_int_equal(seg->count, 0);
  assert_int_equal(seg->end, SD_SEG_HEADER_BYTES);
  assert_int_equal(seg->first_ts, 0);
  assert_int_equal(seg->last_ts, 0);
  SD_TEST_RC(append_str(seg, 6000, NULL, "{\"new\":0}"), 0);
  sd_segment_unref(seg);
  struct sd_segment_recovery rep;
  seg = reopen(t, 0, 0, 1, &rep);
  assert_int_equal(rep.cut_bytes, 0);
  assert_int_equal(seg->count, 1);
  check_record(seg, 0, 6000, NULL, "{\"new\":0}");
  sd_segment_unref(seg);
}

static void test_segment_fill_to_capacity(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = NULL;
  char json[300];
  SD_TEST_RC(sd_segment_create(t->dir, NULL, 0, 0, SEG, &seg), 0);
  uint32_t n = 0;
  for (;;) {
    snprintf(json, sizeof(json), "{\"n\":%u,\"pad\":\"%0200d\"}", n, 0);
    if (sd_record_size(0, strlen(json)) > sd_segment_room(seg)) break;
    SD_TEST_RC(append_str(seg, 100 + n, NULL, json), 0);
    n++;
  }
  assert_true(n >= 10);
  assert_true(seg->end <= SEG);
  sd_segment_unref(seg);
  struct sd_segment_recovery rep;
  seg = reopen(t, 0, 0, 1, &rep);
  assert_int_equal(seg->count, n);
  assert_int_equal(rep.cut_bytes, 0);
  for (uint32_t i = 0; i < n; i++) {
    snprintf(json, sizeof(json), "{\"n\":%u,\"pad\":\"%0200d\"}", i, 0);
    check_record(seg, i, 100 + i, NULL, json);
  }
  sd_segment_unref(seg);
}

static void test_segment_preallocate_and_adopt(void **state) {
  struct sd_test_env *t = env(state);
  char pre[PATH_MAX], path[PATH_MAX];
  snprintf(pre, sizeof(pre), "%s/prealloc.tmp", t->dir);
  SD_TEST_RC(sd_segment_preallocate(pre, 8192), 0);
  assert_int_equal(sd_test_file_size(pre), 8192);
  struct sd_segment *seg = NULL;
  SD_TEST_RC(sd_segment_create(t->dir, pre, 0, 77, 8192, &seg), 0);
  assert_false(sd_test_exists(pre));
  seg_path(t, 77, "seg", path);
  assert_int_equal(sd_test_file_size(path), 8192);
  SD_TEST_RC(sd_segment_check_header(seg->map, seg->size, 0, 77), 0);
  SD_TEST_RC(append_str(seg, 1, NULL, "{}"), 0);
  sd_segment_unref(seg);
  /* Adopting a file that is not there fails without leaving anything. */
  SD_TEST_RC(sd_segment_create(t->dir, pre, 0, 78, 8192, &seg), -ENOENT);
  seg_path(t, 78, "seg", path);
  assert_false(sd_test_exists(path));
}

static void test_segment_unlink_removes_both(void **state) {
  struct sd_test_env *t = env(state);
  char spath[PATH_MAX], ipath[PATH_MAX];
  struct sd_segment *seg = make5(t, 0, 9);
  seg->sealed = 1;
  SD_TEST_RC(sd_segment_write_index(seg), 0);
  seg_path(t, 9, "seg", spath);
  seg_path(t, 9, "idx", ipath);
  assert_true(sd_test_exists(spath));
  assert_true(sd_test_exists(ipath));
  SD_TEST_RC(sd_segment_unlink(seg), 0);
  assert_false(sd_test_exists(spath));
  assert_false(sd_test_exists(ipath));
  SD_TEST_RC(sd_segment_unlink(seg), 0); /* already gone: fine */
  /* The mapping stays readable while referenced. */
  check5(seg, 5);
  sd_segment_unref(seg);
}

static void test_segment_refcount(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = make5(t, 0, 0);
  sd_segment_ref(seg);
  sd_segment_unref(seg);
  check5(seg, 5); /* still alive */
  sd_segment_unref(seg);
  sd_segment_unref(NULL);
}

/* Space is reserved chunk by chunk: a new segment has its first chunk of
 * blocks, the rest of the file is a hole until sd_segment_reserve. */
static uint64_t allocated(const char *path) {
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  return (uint64_t)st.st_blocks * 512u;
}

static void test_segment_reserve_chunks(void **state) {
  struct sd_test_env *t = env(state);
  const uint64_t size = 4u * SD_SEG_RESERVE_CHUNK;
  assert_int_equal(sd_segment_chunk(SEG), SEG);
  assert_int_equal(sd_segment_chunk(size), SD_SEG_RESERVE_CHUNK);
  struct sd_segment *seg = NULL;
  SD_TEST_RC(sd_segment_create(t->dir, NULL, 0, 0, size, &seg), 0);
  assert_int_equal(sd_test_file_size(seg->path), (int64_t)size);
  assert_int_equal(seg->reserved, SD_SEG_RESERVE_CHUNK);
  uint64_t a = allocated(seg->path);
  assert_true(a >= SD_SEG_RESERVE_CHUNK && a < size);
  SD_TEST_RC(sd_segment_reserve(seg, 2u * SD_SEG_RESERVE_CHUNK), 0);
  assert_int_equal(seg->reserved, 2u * SD_SEG_RESERVE_CHUNK);
  assert_true(allocated(seg->path) >= 2u * SD_SEG_RESERVE_CHUNK);
  SD_TEST_RC(sd_segment_reserve(seg, SD_SEG_RESERVE_CHUNK), 0); /* below: nothing */
  assert_int_equal(seg->reserved, 2u * SD_SEG_RESERVE_CHUNK);
  SD_TEST_RC(sd_segment_reserve(seg, 100u * SD_SEG_RESERVE_CHUNK), 0); /* capped at the size */
  assert_int_equal(seg->reserved, size);
  assert_true(allocated(seg->path) >= size);
  sd_segment_unref(seg);
}

/* A torn tail whose remaining bytes past the valid prefix are fewer than 8
 * and start with a zero byte (a json_len that is a multiple of 256) must
 * still be reported as cut.  sd_segment_open reads only one byte of a
 * partial last word. */
static void test_segment_torn_tail_short_remainder_reported(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_segment *seg = NULL;
  char json[257];
  memset(json, 'y', 256);
  json[0] = '{';
  memcpy(json + 1, "\"p\":\"", 5);
  json[254] = '"';
  json[255] = '}';
  json[256] = '\0';
  SD_TEST_RC(sd_segment_create(t->dir, NULL, 0, 0, SEG, &seg), 0);
  SD_TEST_RC(append_str(seg, 1, NULL, json), 0);
  SD_TEST_RC(append_str(seg, 2, NULL, json), 0);
  uint64_t keep_end = seg->pos[1];
  char path[PATH_MAX];
  seg_path(t, 0, "seg", path);
  sd_segment_unref(seg);
  /* The torn record left 3 bytes: json_len 256 = 00 01 00 (little-endian). */
  assert_int_equal(truncate(path, (off_t)(keep_end + 3)), 0);
  struct sd_segment_recovery rep;
  seg = reopen(t, 0, 0, 1, &rep);
  uint32_t count = seg->count;
  uint64_t end = seg->end;
  sd_segment_unref(seg);
  assert_int_equal(count, 1);
  assert_int_equal(end, keep_end);
  assert_int_equal(rep.cut_bytes, 3);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, sd_test_setup, sd_test_teardown)
  const struct CMUnitTest tests[] = {
      T(test_segment_record_size_and_path),
      T(test_segment_create_header),
      T(test_segment_append_read_byte_exact),
      T(test_segment_find_by_offset),
      T(test_segment_seek_time),
      T(test_segment_scan_image),
      T(test_segment_open_spec_fixture),
      T(test_segment_index_write_and_reopen),
      T(test_segment_reopen_without_index),
      T(test_segment_invalid_index_ignored),
      T(test_segment_index_bad_positions_ignored),
      T(test_segment_torn_tail_truncated),
      T(test_segment_torn_tail_every_cut),
      T(test_segment_torn_tail_flipped_last),
      T(test_segment_damaged_middle_of_sealed),
      T(test_segment_damage_behind_index_caught_on_read),
      T(test_segment_bad_header),
      T(test_segment_truncate_rollback),
      T(test_segment_fill_to_capacity),
      T(test_segment_preallocate_and_adopt),
      T(test_segment_unlink_removes_both),
      T(test_segment_refcount),
      T(test_segment_reserve_chunks),
      T(test_segment_torn_tail_short_remainder_reported),
  };
#undef T
  return cmocka_run_group_tests_name("segment", tests, NULL, NULL);
}
