/*
 * test_engine_faults.c - the engine's durability sequence under controlled
 * syncs.  This binary defines fdatasync(), which takes precedence over the C
 * library's for the engine linked into it: every call goes to the real
 * fdatasync (so data really reaches the disk) and is recorded by inode,
 * except when a test arms a fault, which can hold a call on the thread pool
 * until the test releases it, or fail it with EIO.
 *
 * Covered: a failed sync turns the partition read-only, its records never
 * become visible and its waiters fail; appends made while a failed sync was
 * in flight are not acknowledged as durable; a segment sealed while a sync
 * of it was running is synced again before its records are published;
 * close syncs every written segment and reports a failed sync.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "testutil.h"

/* ---- the interposed fdatasync -------------------------------------------------- */

#define MAX_SYNCS 4096

struct sync_rec {
  dev_t dev;
  ino_t ino;
  uint64_t seq;
};

/* All fields under mu. */
static struct {
  pthread_mutex_t mu;
  uint64_t seq;              /* fdatasync calls so far */
  struct sync_rec rec[MAX_SYNCS];
  int nrec;                  /* successful real syncs */
  const char *match;         /* faults apply to paths containing this */
  int fail_next;             /* matching calls to fail with EIO; -1: all */
  int hold_next;             /* matching calls to hold (then sync or fail) */
  int holding;               /* a call is held now */
  int released;
} F = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void fault_reset(void) {
  pthread_mutex_lock(&F.mu);
  F.match = NULL;
  F.fail_next = 0;
  F.hold_next = 0;
  F.released = 1; /* frees a held call, if any */
  pthread_mutex_unlock(&F.mu);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

int fdatasync(int fd) {
  static int (*real)(int);
  if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  char link[64], path[PATH_MAX];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof(path) - 1);
  path[n > 0 ? n : 0] = '\0';

  pthread_mutex_lock(&F.mu);
  int match = F.match != NULL && strstr(path, F.match) != NULL;
  int hold = match && F.hold_next > 0;
  int fail = match && F.fail_next != 0;
  if (hold) {
    F.hold_next--;
    F.released = 0;
  }
  if (fail && F.fail_next > 0) F.fail_next--;
  pthread_mutex_unlock(&F.mu);

  int rc = fail ? -1 : real(fd);
  int err = fail ? EIO : errno;
  /* Numbered when the sync really happened, not when a held call returns. */
  pthread_mutex_lock(&F.mu);
  uint64_t seq = ++F.seq;
  struct stat st;
  if (rc == 0 && fstat(fd, &st) == 0 && F.nrec < MAX_SYNCS)
    F.rec[F.nrec++] = (struct sync_rec){st.st_dev, st.st_ino, seq};
  if (hold) F.holding = 1; /* seen by the test only once the sync is recorded */
  pthread_mutex_unlock(&F.mu);
  if (hold) {
    /* Held (after the real sync, if any) until released, 10 s at most. */
    for (int i = 0; i < 10000; i++) {
      pthread_mutex_lock(&F.mu);
      int done = F.released;
      pthread_mutex_unlock(&F.mu);
      if (done) break;
      sleep_ms(1);
    }
    pthread_mutex_lock(&F.mu);
    F.holding = 0;
    pthread_mutex_unlock(&F.mu);
  }
  errno = err;
  return rc;
}

static uint64_t sync_seq(void) {
  pthread_mutex_lock(&F.mu);
  uint64_t s = F.seq;
  pthread_mutex_unlock(&F.mu);
  return s;
}

/* Whether path's inode had a successful fdatasync numbered above `after`. */
static int synced_after(const char *path, uint64_t after) {
  struct stat st;
  int found = 0;
  if (stat(path, &st) != 0) return 0;
  pthread_mutex_lock(&F.mu);
  for (int i = 0; i < F.nrec; i++)
    if (F.rec[i].dev == st.st_dev && F.rec[i].ino == st.st_ino && F.rec[i].seq > after) found = 1;
  pthread_mutex_unlock(&F.mu);
  return found;
}

/* Spins (without running the loop) until a call is held; 5 s at most. */
static int wait_holding(void) {
  for (int i = 0; i < 5000; i++) {
    pthread_mutex_lock(&F.mu);
    int h = F.holding;
    pthread_mutex_unlock(&F.mu);
    if (h) return 0;
    sleep_ms(1);
  }
  return -ETIMEDOUT;
}

static void release(void) {
  pthread_mutex_lock(&F.mu);
  F.released = 1;
  pthread_mutex_unlock(&F.mu);
}

/* ---- fixtures ---------------------------------------------------------------------- */

static int setup(void **state) {
  fault_reset();
  return sd_test_setup(state);
}

static int teardown(void **state) {
  fault_reset();
  return sd_test_teardown(state);
}

static struct sd_stream *open_always(struct sd_test_env *t, const char *name) {
  t->o.durability = SD_DURABILITY_ALWAYS;
  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream *s = NULL;
  int created;
  SD_TEST_RC(sd_engine_create(t->e, name, NULL, 1, &s, &created), 0);
  /* Let metadata sync and the next segment's pre-allocation settle. */
  SD_TEST_RC(sd_test_durable(t, s), 0);
  sd_test_run_for(&t->loop, 30);
  return s;
}

static void seg_file(struct sd_test_env *t, const char *stream, uint64_t base, char *buf) {
  char dir[PATH_MAX];
  sd_test_path(dir, sizeof(dir), "%s/streams/%s/0", t->data, stream);
  sd_test_path(buf, PATH_MAX, "%s/%020llu.seg", dir, (unsigned long long)base);
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_faults_failed_sync_read_only(void **state) {
  struct sd_test_env *t = *state;
  struct sd_stream *s = open_always(t, "s");
  struct sd_stream *other = NULL;
  int created;
  SD_TEST_RC(sd_engine_create(t->e, "other", NULL, 1, &other, &created), 0);
  SD_TEST_RC(sd_test_durable(t, other), 0);

  pthread_mutex_lock(&F.mu);
  F.match = "/streams/s/0/000"; /* segment files only */
  F.fail_next = 1;
  pthread_mutex_unlock(&F.mu);
  struct sd_test_waiter *w = sd_test_wait(t, s);
  SD_TEST_RC(sd_test_append1(s, "\"e\":1", NULL, NULL, -1, NULL), SD_PENDING);
  int rc = sd_test_durable(t, s);
  assert_true(rc < 0);
  assert_int_not_equal(rc, -ETIMEDOUT);
  /* Read-only with a reason; the record never becomes visible. */
  struct sd_partition_stat ps = sd_test_pstat(s, 0);
  assert_true(ps.read_only);
  assert_int_equal(ps.next_offset, 0);
  const char *why = sd_stream_read_only_reason(s, 0);
  assert_non_null(why);
  assert_non_null(strstr(why, "fdatasync"));
  assert_int_equal(w->fired, 0);
  SD_TEST_RC(sd_test_append1(s, "\"e\":2", NULL, NULL, -1, NULL), SD_E_READ_ONLY);
  sd_test_run_for(&t->loop, 50);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 0);
  /* Other streams go on. */
  SD_TEST_RC(sd_test_append1(other, "\"e\":1", NULL, NULL, -1, NULL), SD_PENDING);
  SD_TEST_RC(sd_test_durable(t, other), 0);
  assert_int_equal(sd_test_pstat(other, 0).next_offset, 1);
}

/* A sync fails while a later append waits for the next one.  The later
 * record sits behind the lost one in the file (recovery keeps only the
 * longest valid prefix), so it must not be acknowledged as durable. */
static void test_faults_append_during_failed_sync_not_acked(void **state) {
  struct sd_test_env *t = *state;
  struct sd_stream *s = open_always(t, "s");
  pthread_mutex_lock(&F.mu);
  F.match = "/streams/s/0/000"; /* segment files only */
  F.hold_next = 1;
  F.fail_next = 1;
  pthread_mutex_unlock(&F.mu);

  SD_TEST_RC(sd_test_append1(s, "\"e\":0", NULL, NULL, -1, NULL), SD_PENDING);
  struct sd_test_durable *d1 = sd_test_when_durable(t, s);
  uv_run(&t->loop, UV_RUN_NOWAIT); /* starts the sync job */
  SD_TEST_RC(wait_holding(), 0);
  SD_TEST_RC(sd_test_append1(s, "\"e\":1", NULL, NULL, -1, NULL), SD_PENDING);
  struct sd_test_durable *d2 = sd_test_when_durable(t, s);
  release();
  SD_TEST_RC(sd_test_run_until_flag(&t->loop, &d1->fired, 5000), 0);
  SD_TEST_RC(sd_test_run_until_flag(&t->loop, &d2->fired, 5000), 0);
  assert_true(d1->status < 0);
  assert_true(sd_test_pstat(s, 0).read_only);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 0);
  if (d2->status == 0)
    fail_msg("append made while a failed sync was in flight was acknowledged durable "
             "(its partition is read-only and the record before it was not synced)");
}

/* The active segment is sealed (rolled) while a sync job that covers it is
 * running: its last records were written after that job's fdatasync.  They
 * must be synced before they are published. */
static void test_faults_segment_sealed_during_sync_is_synced(void **state) {
  struct sd_test_env *t = *state;
  struct sd_stream *s = open_always(t, "s");
  char first[PATH_MAX];
  seg_file(t, "s", 0, first);
  assert_true(sd_test_exists(first));
  pthread_mutex_lock(&F.mu);
  F.match = "/streams/s/0/00000000000000000000.seg";
  F.hold_next = 1;
  pthread_mutex_unlock(&F.mu);

  char m[301];
  sd_test_members(m, 300, "e");
  SD_TEST_RC(sd_test_append1(s, m, NULL, NULL, -1, NULL), SD_PENDING);
  uv_run(&t->loop, UV_RUN_NOWAIT); /* the job syncs segment 0 and is held */
  SD_TEST_RC(wait_holding(), 0);
  uint64_t epoch = sync_seq();
  /* Fill segment 0 and roll to segment 1 while that job is out. */
  uint64_t n = 1;
  while (sd_test_pstat(s, 0).segments < 2) {
    SD_TEST_RC(sd_test_append1(s, m, NULL, NULL, -1, NULL), SD_PENDING);
    n++;
  }
  release();
  SD_TEST_RC(sd_test_durable(t, s), 0);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, n);
  if (!synced_after(first, epoch))
    fail_msg("segment 0 was sealed while its sync job ran; records %llu..%llu written after that job's "
             "fdatasync were published without another fdatasync of segment 0",
             1ull, (unsigned long long)(n - 2));
}

/* In `never` mode nothing is synced until close, which syncs every segment
 * that was written. */
static void test_faults_close_syncs_everything(void **state) {
  struct sd_test_env *t = *state;
  t->o.durability = SD_DURABILITY_NEVER;
  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream *s = NULL;
  int created;
  SD_TEST_RC(sd_engine_create(t->e, "s", NULL, 1, &s, &created), 0);
  uint64_t epoch = sync_seq();
  char m[301];
  sd_test_members(m, 300, "e");
  for (int i = 0; i < 35; i++) SD_TEST_RC(sd_test_append1(s, m, NULL, NULL, -1, NULL), 0);
  uint32_t nsegs = sd_test_pstat(s, 0).segments;
  assert_true(nsegs >= 3);
  /* The segment files present, by base. */
  uint64_t bases[16];
  int nb = 0;
  for (uint64_t b = 0; b < 35 && nb < 16; b++) {
    char p[PATH_MAX];
    seg_file(t, "s", b, p);
    if (sd_test_exists(p)) bases[nb++] = b;
  }
  assert_int_equal(nb, (int)nsegs);
  SD_TEST_RC(sd_test_env_close(t), 0);
  for (int i = 0; i < nb; i++) {
    char p[PATH_MAX];
    seg_file(t, "s", bases[i], p);
    if (!synced_after(p, epoch)) fail_msg("segment %llu not synced by close", (unsigned long long)bases[i]);
  }
}

static void test_faults_close_reports_sync_error(void **state) {
  struct sd_test_env *t = *state;
  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream *s = NULL;
  int created;
  SD_TEST_RC(sd_engine_create(t->e, "s", NULL, 1, &s, &created), 0);
  SD_TEST_RC(sd_test_append1(s, "\"e\":1", NULL, NULL, -1, NULL), 0);
  pthread_mutex_lock(&F.mu);
  F.match = "/streams/s/0/000"; /* segment files only */
  F.fail_next = -1;
  pthread_mutex_unlock(&F.mu);
  int rc = sd_test_env_close(t);
  fault_reset();
  SD_TEST_RC(rc, -EIO);
  /* What was written is still there for the next start. */
  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  assert_non_null(s);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 1);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_faults_failed_sync_read_only),
      T(test_faults_append_during_failed_sync_not_acked),
      T(test_faults_segment_sealed_during_sync_is_synced),
      T(test_faults_close_syncs_everything),
      T(test_faults_close_reports_sync_error),
  };
#undef T
  return cmocka_run_group_tests_name("engine_faults", tests, NULL, NULL);
}
