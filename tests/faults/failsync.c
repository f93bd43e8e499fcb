/*
 * failsync.c - an LD_PRELOAD shim for the fault tests: makes fsync and
 * fdatasync fail, as a failing disk would, in a real server process.
 * Built only with the tests (libfailsync.so); never linked into streamd.
 *
 * Environment (read at every call, so a test can steer a running server
 * through files only):
 *   FAILSYNC_TRIGGER=PATH  fail while PATH exists
 *   FAILSYNC_AFTER=N       fail every call after the first N (counted over
 *                          the matching calls); with FAILSYNC_TRIGGER both
 *                          must hold
 *   FAILSYNC_MATCH=TEXT    only descriptors whose path (/proc/self/fd/N)
 *                          contains TEXT are affected (default: all)
 *   FAILSYNC_ERRNO=N       errno of a failure (default EIO)
 *   FAILSYNC_ONCE=1        the first failure removes the trigger file, so
 *                          later calls succeed again (as Linux reports a
 *                          writeback error once and then forgets it)
 * Every failure is reported on stderr as "failsync: <call>(<path>) -> errno N".
 * The real call is skipped on failure: nothing is synced.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned long matching_calls; /* racy across threads; a count is all it is */

/* 1 when this call on fd must fail; fills path for the report. */
static int should_fail(int fd, char *path, size_t cap) {
  const char *trigger = getenv("FAILSYNC_TRIGGER");
  const char *after = getenv("FAILSYNC_AFTER");
  const char *match = getenv("FAILSYNC_MATCH");
  if (trigger == NULL && after == NULL) return 0;
  char link[64];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, cap - 1);
  path[n > 0 ? n : 0] = '\0';
  if (match && *match && strstr(path, match) == NULL) return 0;
  unsigned long k = __atomic_add_fetch(&matching_calls, 1, __ATOMIC_RELAXED);
  if (after && k <= strtoul(after, NULL, 10)) return 0;
  if (trigger && access(trigger, F_OK) != 0) return 0;
  if (trigger && getenv("FAILSYNC_ONCE")) unlink(trigger);
  return 1;
}

static int fail(const char *call, const char *path) {
  const char *e = getenv("FAILSYNC_ERRNO");
  int err = e ? atoi(e) : EIO;
  fprintf(stderr, "failsync: %s(%s) -> errno %d\n", call, path, err);
  errno = err;
  return -1;
}

int fsync(int fd) {
  static int (*real)(int);
  char path[PATH_MAX];
  if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  if (should_fail(fd, path, sizeof(path))) return fail("fsync", path);
  return real(fd);
}

int fdatasync(int fd) {
  static int (*real)(int);
  char path[PATH_MAX];
  if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  if (should_fail(fd, path, sizeof(path))) return fail("fdatasync", path);
  return real(fd);
}
