/*
 * make_segment_seeds.c - writes the seed inputs of fuzz_segment from
 * segments made by the storage code itself (sd_segment_create, append,
 * write_index): a live segment with its zeroed tail, a sealed one with
 * its index, and one with a torn last record.
 * Usage: make_segment_seeds DIR
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/segment.h"

static size_t slurp(const char *path, char *buf, size_t cap) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, cap);
  close(fd);
  return n > 0 ? (size_t)n : 0;
}

static void seed(const char *out_dir, const char *name, int flags, uint64_t base, const char *a, size_t alen,
                 const char *b, size_t blen) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", out_dir, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL) exit(1);
  fputc(flags, f);
  fputc((int)base, f);
  fwrite(a, 1, alen, f);
  if (b) fwrite(b, 1, blen, f);
  fclose(f);
}

static struct sd_segment *make(const char *dir, uint64_t base, int n) {
  struct sd_segment *seg;
  if (sd_segment_create(dir, NULL, 0, base, 4096, &seg) != 0) exit(1);
  for (int i = 0; i < n; i++) {
    char json[128];
    int len = snprintf(json, sizeof(json), "{\"event\":\"e%d\",\"data\":{\"n\":%d},\"partition\":0,\"offset\":%d}", i, i,
                       (int)base + i);
    struct iovec iov = {json, (size_t)len};
    const char *id = i == 1 ? "id-1" : NULL;
    if (sd_segment_append(seg, 1700000000000ull + (uint64_t)i, id, id ? 4 : 0, &iov, 1, (size_t)len) != 0) exit(1);
  }
  return seg;
}

int main(int argc, char **argv) {
  static char a[8192], b[8192];
  char tmp[] = "/tmp/streamd-seeds-XXXXXX", p[512], q[512];
  if (argc != 2 || mkdtemp(tmp) == NULL) return 2;

  struct sd_segment *seg = make(tmp, 0, 3);
  sd_segment_path(p, sizeof(p), tmp, 0, "seg");
  size_t n = slurp(p, a, sizeof(a));
  seed(argv[1], "live-3-records", 1, 0, a, n, NULL, 0);
  /* A torn tail: the last record half there. */
  uint64_t cut = seg->pos[2] + 20;
  memset(a + cut, 0, n - cut);
  a[cut - 1] = 0x5a;
  seed(argv[1], "torn-tail", 1, 0, a, n, NULL, 0);
  sd_segment_unref(seg);

  seg = make(tmp, 7, 4);
  seg->sealed = 1;
  if (sd_segment_write_index(seg) != 0) return 1;
  sd_segment_path(p, sizeof(p), tmp, 7, "seg");
  sd_segment_path(q, sizeof(q), tmp, 7, "idx");
  n = slurp(p, a, sizeof(a));
  size_t m = slurp(q, b, sizeof(b));
  seed(argv[1], "sealed-with-index", 4, 7, a, n, b, m);
  seed(argv[1], "sealed-with-index-fix", 6, 7, a, n, b, m);
  sd_segment_unref(seg);
  seed(argv[1], "header-only-fix", 3, 0, a, 64, NULL, 0);

  unlink(p);
  unlink(q);
  sd_segment_path(p, sizeof(p), tmp, 0, "seg");
  unlink(p);
  rmdir(tmp);
  return 0;
}
