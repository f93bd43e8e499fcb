/*
 * testutil.c - see testutil.h.  Owns nothing beyond the env it hands out;
 * the directory removal here is independent of src/util/fsutil.c so that a
 * bug there cannot hide files from the tests.
 */
#include "testutil.h"
#include "util/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "streamd/log.h"

void sd_test_rc(int got, int want, const char *expr, const char *file, int line) {
  if (got == want) return;
  print_error("%s:%d: %s returned %d (%s), expected %d (%s)\n", file, line, expr, got, sd_strerror(got), want,
              sd_strerror(want));
  _fail(file, line);
}

/* ---- env -------------------------------------------------------------------- */

int sd_test_env_new(struct sd_test_env **out) {
  int rc;
  struct sd_test_env *t = calloc(1, sizeof(*t));
  if (t == NULL) return -ENOMEM;
  snprintf(t->dir, sizeof(t->dir), "/tmp/streamd-unit-XXXXXX");
  if (mkdtemp(t->dir) == NULL) {
    rc = -errno;
    goto fail_env;
  }
  snprintf(t->data, sizeof(t->data), "%s/data", t->dir);
  if ((rc = uv_loop_init(&t->loop)) != 0) goto fail_dir;
  sd_engine_options_default(&t->o);
  t->o.data_dir = t->data;
  t->o.durability = SD_DURABILITY_INTERVAL;
  t->o.interval_ms = 50;
  t->o.segment_bytes = 4096;
  t->o.retention_check_ms = 20;
  t->o.defaults.retention_hours = 0;
  sd_log_set_level(SD_LOG_WARN);
  *out = t;
  return 0;

fail_dir:
  rmdir(t->dir);
fail_env:
  free(t);
  return rc;
}

int sd_test_env_open(struct sd_test_env *t) {
  if (t->e != NULL) return -EBUSY;
  return sd_engine_open(&t->loop, &t->o, &t->e);
}

int sd_test_env_close(struct sd_test_env *t) {
  if (t->e == NULL) return 0;
  int rc = sd_engine_close(t->e);
  t->e = NULL;
  return rc;
}

void sd_test_env_free(struct sd_test_env *t) {
  if (t == NULL) return;
  sd_test_env_close(t);
  /* Let close callbacks of our own helpers run, then require a clean loop. */
  uv_run(&t->loop, UV_RUN_NOWAIT);
  int lrc = uv_loop_close(&t->loop);
  if (lrc != 0) uv_print_all_handles(&t->loop, stderr);
  sd_test_rmtree(t->dir);
  free(t);
  assert_int_equal(lrc, 0);
}

int sd_test_setup(void **state) {
  struct sd_test_env *t;
  int rc = sd_test_env_new(&t);
  if (rc != 0) return rc;
  *state = t;
  return 0;
}

int sd_test_setup_open(void **state) {
  int rc = sd_test_setup(state);
  if (rc != 0) return rc;
  if ((rc = sd_test_env_open(*state)) != 0) {
    print_error("sd_engine_open: %s\n", sd_strerror(rc));
    sd_test_env_free(*state);
    *state = NULL;
    return rc;
  }
  return 0;
}

int sd_test_teardown(void **state) {
  sd_test_env_free(*state);
  *state = NULL;
  return 0;
}

/* ---- loop ------------------------------------------------------------------- */

static void tick(uv_timer_t *h) { (void)h; }

int sd_test_run_until(uv_loop_t *loop, int (*done)(void *arg), void *arg, uint64_t timeout_ms) {
  uv_timer_t timer;
  int rc = -ETIMEDOUT;
  uv_update_time(loop);
  uint64_t deadline = uv_now(loop) + timeout_ms;
  uv_timer_init(loop, &timer);
  uv_timer_start(&timer, tick, 5, 5);
  for (;;) {
    if (done(arg)) {
      rc = 0;
      break;
    }
    uv_update_time(loop);
    if (uv_now(loop) >= deadline) break;
    uv_run(loop, UV_RUN_ONCE);
  }
  uv_close((uv_handle_t *)&timer, NULL);
  uv_run(loop, UV_RUN_NOWAIT); /* the close callback: the timer lives on this stack */
  return rc;
}

static int flag_set(void *arg) { return *(const int *)arg != 0; }

int sd_test_run_until_flag(uv_loop_t *loop, const int *flag, uint64_t timeout_ms) {
  return sd_test_run_until(loop, flag_set, (void *)flag, timeout_ms);
}

static int never(void *arg) {
  (void)arg;
  return 0;
}

void sd_test_run_for(uv_loop_t *loop, uint64_t ms) { sd_test_run_until(loop, never, NULL, ms); }

/* ---- ops and waiters ---------------------------------------------------------- */

static void durable_cb(struct sd_durable_op *op, int status) {
  struct sd_test_durable *d = op->data;
  d->fired++;
  d->status = status;
}

struct sd_test_durable *sd_test_when_durable(struct sd_test_env *t, struct sd_stream *s) {
  /* Slots are reused round-robin once their op has completed. */
  int slot = -1;
  for (int k = 0; k < SD_TEST_SLOTS && slot < 0; k++) {
    int i = (t->ndur + k) % SD_TEST_SLOTS;
    if (t->dur[i].op.cb == NULL || t->dur[i].fired) slot = i;
  }
  if (slot < 0) {
    print_error("all %d durable op slots are pending\n", SD_TEST_SLOTS);
    abort();
  }
  t->ndur = (slot + 1) % SD_TEST_SLOTS;
  struct sd_test_durable *d = &t->dur[slot];
  memset(d, 0, sizeof(*d));
  d->op.cb = durable_cb;
  d->op.data = d;
  sd_stream_when_durable(s, &d->op);
  return d;
}

int sd_test_durable(struct sd_test_env *t, struct sd_stream *s) {
  struct sd_test_durable *d = sd_test_when_durable(t, s);
  if (sd_test_run_until_flag(&t->loop, &d->fired, 5000) != 0) return -ETIMEDOUT;
  return d->status;
}

static void waiter_cb(struct sd_waiter *w, int status) {
  struct sd_test_waiter *x = w->data;
  x->fired++;
  x->status = status;
}

struct sd_test_waiter *sd_test_wait(struct sd_test_env *t, struct sd_stream *s) {
  assert_true(t->nwait < SD_TEST_SLOTS);
  struct sd_test_waiter *x = &t->wait[t->nwait++];
  memset(x, 0, sizeof(*x));
  x->w.cb = waiter_cb;
  x->w.data = x;
  sd_stream_wait(s, &x->w);
  return x;
}

/* ---- records -------------------------------------------------------------------- */

int sd_test_recs_visit(void *arg, const struct sd_record *rec) {
  struct sd_test_recs *r = arg;
  if (r->n == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 64;
    struct sd_test_rec *v = realloc(r->v, cap * sizeof(*v));
    assert_non_null(v);
    r->v = v;
    r->cap = cap;
  }
  struct sd_test_rec *x = &r->v[r->n++];
  memset(x, 0, sizeof(*x));
  x->partition = rec->partition;
  x->offset = rec->offset;
  x->ts = rec->timestamp_ms;
  x->json_len = rec->json_len;
  x->json = malloc(rec->json_len + 1u);
  assert_non_null(x->json);
  memcpy(x->json, rec->json, rec->json_len);
  x->json[rec->json_len] = '\0';
  if (rec->id != NULL) {
    x->id_len = rec->id_len;
    x->id = malloc(rec->id_len + 1u);
    assert_non_null(x->id);
    memcpy(x->id, rec->id, rec->id_len);
    x->id[rec->id_len] = '\0';
  }
  return r->stop_after && r->n >= r->stop_after;
}

void sd_test_recs_free(struct sd_test_recs *r) {
  for (size_t i = 0; i < r->n; i++) {
    free(r->v[i].json);
    free(r->v[i].id);
  }
  free(r->v);
  memset(r, 0, sizeof(*r));
}

int sd_test_read_all(struct sd_stream *s, uint32_t p, uint64_t from, struct sd_test_recs *r) {
  int rc;
  for (;;) {
    rc = sd_stream_read(s, p, from, 1000, SIZE_MAX, sd_test_recs_visit, r);
    if (rc <= 0) return rc;
    from = r->v[r->n - 1].offset + 1;
  }
}

void sd_test_members(char *buf, size_t len, const char *tag) {
  /* "event":"t","data":"<tag>xxx" -> fixed framing of 22 bytes */
  static const char head[] = "\"event\":\"t\",\"data\":\"";
  size_t hl = sizeof(head) - 1, tl = strlen(tag);
  assert_true(len >= hl + tl + 1);
  memcpy(buf, head, hl);
  memcpy(buf + hl, tag, tl);
  memset(buf + hl + tl, 'x', len - hl - tl - 1);
  buf[len - 1] = '"';
  buf[len] = '\0';
}

int sd_test_expect_json(char *buf, size_t cap, uint64_t offset, uint32_t partition, const char *members,
                        uint64_t ts) {
  return snprintf(buf, cap, "{\"offset\":%llu,\"partition\":%u,%s,\"timestamp\":%llu}", (unsigned long long)offset,
                  partition, members, (unsigned long long)ts);
}

int sd_test_append1(struct sd_stream *s, const char *members, const char *key, const char *id, int32_t partition,
                    struct sd_append_result *res) {
  struct sd_append_result tmp;
  struct sd_event_in ev = {members, strlen(members), key, key ? strlen(key) : 0, id, id ? strlen(id) : 0,
                           partition};
  return sd_stream_append(s, &ev, 1, res ? res : &tmp);
}

struct sd_partition_stat sd_test_pstat(const struct sd_stream *s, uint32_t p) {
  struct sd_partition_stat st;
  memset(&st, 0, sizeof(st));
  SD_TEST_RC(sd_stream_partition_stat(s, p, &st), 0);
  return st;
}

/* ---- files ---------------------------------------------------------------------- */

int sd_test_path(char *buf, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, cap, fmt, ap);
  va_end(ap);
  return n;
}

int sd_test_exists(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

int64_t sd_test_file_size(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) return -errno;
  return (int64_t)st.st_size;
}

int sd_test_read_file(const char *path, char **data, size_t *len) {
  int rc = 0;
  struct stat st;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  if (fstat(fd, &st) != 0) {
    rc = -errno;
    goto out_close;
  }
  char *p = malloc((size_t)st.st_size + 1);
  if (p == NULL) {
    rc = -ENOMEM;
    goto out_close;
  }
  if (pread(fd, p, (size_t)st.st_size, 0) != (ssize_t)st.st_size) {
    rc = -EIO;
    free(p);
    goto out_close;
  }
  *data = p;
  *len = (size_t)st.st_size;
out_close:
  close(fd);
  return rc;
}

int sd_test_flip_byte(const char *path, uint64_t pos, uint8_t mask) {
  int rc = 0;
  unsigned char c;
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return -errno;
  if (pread(fd, &c, 1, (off_t)pos) != 1) {
    rc = -EIO;
    goto out_close;
  }
  c ^= mask;
  if (pwrite(fd, &c, 1, (off_t)pos) != 1) rc = -EIO;
  if (rc == 0 && fsync(fd) != 0) rc = -errno;
out_close:
  close(fd);
  return rc;
}

int sd_test_rmtree(const char *path) { return sd_fs_remove_tree(path); }

int sd_test_count_entries(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  if (d == NULL) return -errno;
  struct dirent *de;
  while ((de = readdir(d)) != NULL)
    if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) n++;
  closedir(d);
  return n;
}

int sd_test_newest_segment(const char *dir, uint64_t *base, uint32_t *nsegs) {
  DIR *d = opendir(dir);
  int found = 0;
  uint32_t n = 0;
  if (d == NULL) return -errno;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    size_t l = strlen(de->d_name);
    if (l != 24 || strcmp(de->d_name + 20, ".seg") != 0) continue;
    uint64_t b = strtoull(de->d_name, NULL, 10);
    if (!found || b > *base) *base = b;
    found = 1;
    n++;
  }
  closedir(d);
  if (nsegs) *nsegs = n;
  return found ? 0 : -ENOENT;
}
