/*
 * test_engine.c - the engine API of include/streamd/engine.h, checked
 * against the contracts written there: stream creation and names, appends
 * (single and batched, across segment boundaries, by key, explicit and
 * round-robin partition), reads (per partition, merged, negative offsets),
 * idempotency ids, durability modes and visibility, waiters, recovery after
 * close and after torn tails, retention by events, bytes and age, deletion
 * and generations.  Each test runs on its own temp directory and uv loop,
 * with 4096-byte segments so that a few events force segment rolls.
 */
#include <dirent.h>
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
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "storage/segment.h"
#include "testutil.h"

#define EV_BYTES 300 /* members of one test event: ~12 records per 4096-byte segment */

static struct sd_test_env *env(void **state) { return *state; }

static struct sd_stream *create(struct sd_test_env *t, const char *name, const struct sd_stream_config *cfg) {
  struct sd_stream *s = NULL;
  int created = 0;
  SD_TEST_RC(sd_engine_create(t->e, name, cfg, 1, &s, &created), 0);
  assert_non_null(s);
  assert_int_equal(created, 1);
  return s;
}

static struct sd_stream_config cfg_parts(uint32_t partitions) {
  struct sd_stream_config c = {partitions, 0, 0, 0};
  return c;
}

/* Members of event i of a test stream: exactly EV_BYTES bytes, tagged. */
static void members_for(char *buf, const char *stream, uint32_t p, uint64_t i) {
  char tag[64];
  snprintf(tag, sizeof(tag), "%s/%u/%llu/", stream, p, (unsigned long long)i);
  sd_test_members(buf, EV_BYTES, tag);
}

/* Checks rec is exactly the served form of members at its offset. */
static void check_json(const struct sd_test_rec *rec, const char *members) {
  char want[EV_BYTES + 256];
  int n = sd_test_expect_json(want, sizeof(want), rec->offset, rec->partition, members, rec->ts);
  if ((size_t)n != rec->json_len || memcmp(want, rec->json, (size_t)n) != 0)
    fail_msg("record p%u o%llu:\n got  %s\n want %s", rec->partition, (unsigned long long)rec->offset, rec->json,
             want);
}

/* Appends n events to partition p (explicit) one by one; checks dense offsets. */
static void append_seq(struct sd_test_env *t, struct sd_stream *s, uint32_t p, uint64_t first, uint64_t n) {
  char m[EV_BYTES + 1];
  for (uint64_t i = first; i < first + n; i++) {
    struct sd_append_result res;
    members_for(m, sd_stream_name(s), p, i);
    int rc = sd_test_append1(s, m, NULL, NULL, (int32_t)p, &res);
    if (t->o.durability == SD_DURABILITY_ALWAYS)
      SD_TEST_RC(rc, SD_PENDING);
    else
      SD_TEST_RC(rc, 0);
    assert_int_equal(res.partition, p);
    assert_int_equal(res.offset, i);
    assert_int_equal(res.duplicate, 0);
  }
}

/* Reads partition p from `from` to the end and checks events from..to-1. */
static void check_seq(struct sd_stream *s, uint32_t p, uint64_t from, uint64_t to) {
  struct sd_test_recs r = {0};
  char m[EV_BYTES + 1];
  int rc = sd_test_read_all(s, p, from, &r);
  if (rc < 0) fail_msg("read p%u from %llu: %s", p, (unsigned long long)from, sd_strerror(rc));
  assert_int_equal(r.n, to - from);
  uint64_t prev_ts = 0;
  for (size_t i = 0; i < r.n; i++) {
    assert_int_equal(r.v[i].offset, from + i);
    assert_int_equal(r.v[i].partition, p);
    assert_true(r.v[i].ts >= prev_ts);
    prev_ts = r.v[i].ts;
    members_for(m, sd_stream_name(s), p, from + i);
    check_json(&r.v[i], m);
  }
  sd_test_recs_free(&r);
}

static int count_ext(const char *dir, const char *ext) {
  int n = 0;
  size_t el = strlen(ext);
  DIR *d = opendir(dir);
  if (d == NULL) return -errno;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    size_t l = strlen(de->d_name);
    if (l > el && strcmp(de->d_name + l - el, ext) == 0) n++;
  }
  closedir(d);
  return n;
}

/* ---- names and creation ------------------------------------------------------ */

static void test_engine_name_check(void **state) {
  struct sd_test_env *t = env(state);
  char longname[SD_MAX_NAME + 2];
  memset(longname, 'n', sizeof(longname));
  longname[SD_MAX_NAME] = '\0';
  const char *good[] = {"a", "A", "0", "orders", "a-b_c.d:e", "x.", "-", "_x", "9.9:9", longname};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    if (sd_name_check(good[i], strlen(good[i])) != 0) fail_msg("'%s' refused", good[i]);
  longname[SD_MAX_NAME] = 'n';
  longname[SD_MAX_NAME + 1] = '\0';
  const char *bad[] = {"", ".", "..", ".hidden", "a/b", "/", "a b", "a\tb", "caf\xc3\xa9", "a*", "a#b", "q?", longname};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    if (sd_name_check(bad[i], strlen(bad[i])) != SD_E_INVALID_NAME) fail_msg("'%s' accepted", bad[i]);
  SD_TEST_RC(sd_name_check("a\0b", 3), SD_E_INVALID_NAME);

  struct sd_stream *s = NULL;
  int created = 0;
  SD_TEST_RC(sd_engine_create(t->e, "..", NULL, 1, &s, &created), SD_E_INVALID_NAME);
  SD_TEST_RC(sd_engine_create(t->e, "a/b", NULL, 1, &s, &created), SD_E_INVALID_NAME);
  SD_TEST_RC(sd_engine_create(t->e, "", NULL, 0, &s, &created), SD_E_INVALID_NAME);
  assert_int_equal(sd_engine_stream_count(t->e), 0);
  /* The longest name is a usable stream. */
  longname[SD_MAX_NAME] = '\0';
  s = create(t, longname, NULL);
  append_seq(t, s, 0, 0, 3);
  check_seq(s, 0, 0, 3);
}

static void test_engine_open_checks_options(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_engine_options d;
  sd_engine_options_default(&d);
  assert_string_equal(d.data_dir, "./streamd-data");
  assert_true(d.segment_bytes >= SD_SEG_MIN_BYTES && d.segment_bytes <= SD_SEG_MAX_BYTES);
  assert_true(d.defaults.partitions >= 1);

  struct sd_engine *e = NULL;
  t->o.segment_bytes = SD_SEG_MIN_BYTES - 1;
  SD_TEST_RC(sd_engine_open(&t->loop, &t->o, &e), SD_E_INVALID_PARAMETER);
  t->o.segment_bytes = (uint64_t)SD_SEG_MAX_BYTES + 1;
  SD_TEST_RC(sd_engine_open(&t->loop, &t->o, &e), SD_E_INVALID_PARAMETER);
  assert_null(e);
  /* The options are copied, the data directory created. */
  t->o.segment_bytes = 4096;
  char dd[PATH_MAX];
  snprintf(dd, sizeof(dd), "%s/nested/dir", t->dir);
  t->o.data_dir = dd;
  SD_TEST_RC(sd_test_env_open(t), 0);
  dd[0] = 'X';
  assert_int_equal(strncmp(sd_engine_options(t->e)->data_dir, t->dir, strlen(t->dir)), 0);
  assert_int_equal(sd_engine_options(t->e)->segment_bytes, 4096);
  dd[0] = '/';
  struct stat st;
  assert_int_equal(stat(dd, &st), 0);
  assert_true(S_ISDIR(st.st_mode));
}

static void test_engine_create_stream(void **state) {
  struct sd_test_env *t = env(state);
  char path[PATH_MAX];
  uint64_t before = sd_now_ms();
  struct sd_stream *s = create(t, "orders", NULL);
  uint64_t after = sd_now_ms();
  assert_string_equal(sd_stream_name(s), "orders");
  const struct sd_stream_config *c = sd_stream_config(s);
  assert_int_equal(c->partitions, t->o.defaults.partitions);
  assert_int_equal(c->retention_hours, t->o.defaults.retention_hours);
  assert_ptr_equal(sd_engine_find(t->e, "orders"), s);
  assert_null(sd_engine_find(t->e, "order"));
  assert_int_equal(sd_engine_stream_count(t->e), 1);
  assert_false(sd_stream_deleted(s));

  struct sd_stream_stat st;
  sd_stream_stat(s, &st);
  assert_in_range(st.created_at_ms, before, after);
  assert_true(st.generation >= 1);
  assert_int_equal(st.total_published, 0);
  struct sd_partition_stat ps = sd_test_pstat(s, 0);
  assert_int_equal(ps.min_offset, 0);
  assert_int_equal(ps.next_offset, 0);
  assert_int_equal(ps.segments, 1);
  assert_false(ps.read_only);
  assert_null(sd_stream_read_only_reason(s, 0));
  SD_TEST_RC(sd_stream_partition_stat(s, 1, &ps), SD_E_INVALID_PARAMETER);

  /* "The new stream's files exist on return." */
  sd_test_path(path, sizeof(path), "%s/streams/orders/stream.json", t->data);
  assert_true(sd_test_exists(path));
  sd_test_path(path, sizeof(path), "%s/streams/orders/0/00000000000000000000.seg", t->data);
  assert_int_equal(sd_test_file_size(path), 4096);

  /* Existing: exclusive refuses, non-exclusive returns it unless cfg differs. */
  struct sd_stream *s2 = NULL;
  int created = 7;
  SD_TEST_RC(sd_engine_create(t->e, "orders", NULL, 1, &s2, &created), SD_E_STREAM_EXISTS);
  SD_TEST_RC(sd_engine_create(t->e, "orders", NULL, 0, &s2, &created), 0);
  assert_ptr_equal(s2, s);
  assert_int_equal(created, 0);
  struct sd_stream_config same = *c, other = *c;
  SD_TEST_RC(sd_engine_create(t->e, "orders", &same, 0, &s2, &created), 0);
  assert_ptr_equal(s2, s);
  other.partitions = 2;
  SD_TEST_RC(sd_engine_create(t->e, "orders", &other, 0, &s2, &created), SD_E_CONFIG_MISMATCH);
  other = *c;
  other.max_events = 5;
  SD_TEST_RC(sd_engine_create(t->e, "orders", &other, 0, &s2, &created), SD_E_CONFIG_MISMATCH);
  other = *c;
  other.retention_bytes = 5;
  SD_TEST_RC(sd_engine_create(t->e, "orders", &other, 0, &s2, &created), SD_E_CONFIG_MISMATCH);
  other = *c;
  other.retention_hours = c->retention_hours + 1;
  SD_TEST_RC(sd_engine_create(t->e, "orders", &other, 0, &s2, &created), SD_E_CONFIG_MISMATCH);
  assert_int_equal(sd_engine_stream_count(t->e), 1);

  /* Bad settings. */
  struct sd_stream_config bad = cfg_parts(0);
  SD_TEST_RC(sd_engine_create(t->e, "bad", &bad, 1, &s2, &created), SD_E_INVALID_PARAMETER);
  bad.partitions = SD_MAX_PARTITIONS + 1;
  SD_TEST_RC(sd_engine_create(t->e, "bad", &bad, 1, &s2, &created), SD_E_INVALID_PARAMETER);
  assert_null(sd_engine_find(t->e, "bad"));
  sd_test_path(path, sizeof(path), "%s/streams/bad", t->data);
  assert_false(sd_test_exists(path));

  /* Several partitions: one directory and segment each. */
  struct sd_stream_config four = {4, 0, 1000, 10};
  struct sd_stream *s4 = create(t, "four", &four);
  assert_int_equal(sd_stream_config(s4)->partitions, 4);
  assert_int_equal(sd_stream_config(s4)->max_events, 10);
  assert_int_equal(sd_stream_config(s4)->retention_bytes, 1000);
  for (int p = 0; p < 4; p++) {
    sd_test_path(path, sizeof(path), "%s/streams/four/%d/00000000000000000000.seg", t->data, p);
    assert_true(sd_test_exists(path));
  }
  struct sd_stream_stat st4;
  sd_stream_stat(s4, &st4);
  assert_true(st4.generation > st.generation);
}

static void test_engine_max_streams(void **state) {
  struct sd_test_env *t = env(state);
  t->o.max_streams = 2;
  SD_TEST_RC(sd_test_env_open(t), 0);
  create(t, "a", NULL);
  create(t, "b", NULL);
  struct sd_stream *s = NULL;
  int created;
  SD_TEST_RC(sd_engine_create(t->e, "c", NULL, 1, &s, &created), SD_E_TOO_MANY_STREAMS);
  /* An existing one is still returned. */
  SD_TEST_RC(sd_engine_create(t->e, "a", NULL, 0, &s, &created), 0);
  SD_TEST_RC(sd_engine_delete(t->e, "a", NULL), 0);
  create(t, "c", NULL);
}

static void collect_name(void *arg, struct sd_stream *s) {
  char *buf = arg;
  strcat(buf, sd_stream_name(s));
  strcat(buf, ",");
}

static void test_engine_foreach_in_name_order(void **state) {
  struct sd_test_env *t = env(state);
  const char *names[] = {"m", "b", "zz", "a", "B", "a.1"};
  for (size_t i = 0; i < 6; i++) create(t, names[i], NULL);
  char buf[128] = "";
  sd_engine_foreach(t->e, collect_name, buf);
  assert_string_equal(buf, "B,a,a.1,b,m,zz,");
}

/* ---- append and read ----------------------------------------------------------- */

static void test_engine_append_single_across_segments(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream *s = create(t, "s", NULL);
  append_seq(t, s, 0, 0, 60);
  struct sd_partition_stat ps = sd_test_pstat(s, 0);
  assert_int_equal(ps.next_offset, 60);
  assert_int_equal(ps.min_offset, 0);
  assert_true(ps.segments >= 5);
  assert_true(ps.bytes >= 60 * EV_BYTES);
  check_seq(s, 0, 0, 60);
  check_seq(s, 0, 13, 60); /* from the middle of a segment */
  char dir[PATH_MAX];
  sd_test_path(dir, sizeof(dir), "%s/streams/s/0", t->data);
  assert_int_equal(count_ext(dir, ".seg"), (int)ps.segments);
  struct sd_stream_stat st;
  sd_stream_stat(s, &st);
  assert_int_equal(st.total_published, 60);
}

static void test_engine_append_batch_across_segments(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream *s = create(t, "s", NULL);
  append_seq(t, s, 0, 0, 5);
  enum { N = 40 };
  static char m[N][EV_BYTES + 1];
  struct sd_event_in ev[N];
  struct sd_append_result res[N];
  for (int i = 0; i < N; i++) {
    members_for(m[i], "s", 0, 5 + (uint64_t)i);
    ev[i] = (struct sd_event_in){m[i], EV_BYTES, NULL, 0, NULL, 0, -1};
  }
  SD_TEST_RC(sd_stream_append(s, ev, N, res), 0);
  for (int i = 0; i < N; i++) {
    assert_int_equal(res[i].partition, 0);
    assert_int_equal(res[i].offset, 5 + (uint64_t)i);
    assert_false(res[i].duplicate);
  }
  assert_true(sd_test_pstat(s, 0).segments >= 4);
  check_seq(s, 0, 0, 5 + N);
  /* All records of one batch carry timestamps in order. */
  append_seq(t, s, 0, 5 + N, 1);
  check_seq(s, 0, 0, 6 + N);
}

static void test_engine_read_limits(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream *s = create(t, "s", NULL);
  append_seq(t, s, 0, 0, 30);
  struct sd_test_recs r = {0};
  assert_int_equal(sd_stream_read(s, 0, 0, 5, SIZE_MAX, sd_test_recs_visit, &r), 5);
  assert_int_equal(r.n, 5);
  assert_int_equal(r.v[4].offset, 4);
  sd_test_recs_free(&r);
  /* max_bytes below one record: at least one is visited. */
  assert_int_equal(sd_stream_read(s, 0, 7, 100, 1, sd_test_recs_visit, &r), 1);
  assert_int_equal(r.v[0].offset, 7);
  size_t one = r.v[0].json_len;
  sd_test_recs_free(&r);
  /* Two and a half records' worth: two. */
  assert_int_equal(sd_stream_read(s, 0, 10, 100, one * 5 / 2, sd_test_recs_visit, &r), 2);
  sd_test_recs_free(&r);
  /* The visitor stops the read. */
  r.stop_after = 3;
  assert_int_equal(sd_stream_read(s, 0, 0, 100, SIZE_MAX, sd_test_recs_visit, &r), 3);
  assert_int_equal(r.n, 3);
  sd_test_recs_free(&r);
  /* Limit 0, at the end, past the end. */
  assert_int_equal(sd_stream_read(s, 0, 0, 0, SIZE_MAX, sd_test_recs_visit, &r), 0);
  assert_int_equal(sd_stream_read(s, 0, 30, 10, SIZE_MAX, sd_test_recs_visit, &r), 0);
  assert_int_equal(sd_stream_read(s, 0, 1000, 10, SIZE_MAX, sd_test_recs_visit, &r), 0);
  assert_int_equal(r.n, 0);
  SD_TEST_RC(sd_stream_read(s, 1, 0, 10, SIZE_MAX, sd_test_recs_visit, &r), SD_E_INVALID_PARAMETER);
}

static void test_engine_batch_all_or_nothing(void **state) {
  struct sd_test_env *t = env(state);
  int rc;
  struct sd_stream_config c = cfg_parts(2);
  struct sd_stream *s = create(t, "s", &c);
  append_seq(t, s, 0, 0, 3);
  char m[EV_BYTES + 1];
  members_for(m, "s", 0, 3);
  struct sd_event_in ev[3] = {{m, EV_BYTES, NULL, 0, NULL, 0, 0},
                              {m, EV_BYTES, NULL, 0, "id-x", 4, 1},
                              {m, EV_BYTES, NULL, 0, NULL, 0, 2}};
  struct sd_append_result res[3];
  SD_TEST_RC(sd_stream_append(s, ev, 3, res), SD_E_INVALID_PARAMETER);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 3);
  assert_int_equal(sd_test_pstat(s, 1).next_offset, 0);
  /* The id of the refused batch was not remembered. */
  ev[2].partition = 1;
  SD_TEST_RC(sd_stream_append(s, ev, 3, res), 0);
  assert_false(res[1].duplicate);
  assert_int_equal(res[0].offset, 3);
  assert_int_equal(res[1].offset, 0);
  assert_int_equal(res[2].offset, 1);

  /* An event far above max_event_bytes (1 MiB by default). */
  size_t big = t->o.max_event_bytes + 8192;
  char *huge = malloc(big + 1);
  assert_non_null(huge);
  sd_test_members(huge, big, "huge");
  struct sd_event_in ev2[2] = {{m, EV_BYTES, NULL, 0, NULL, 0, 0}, {huge, big, NULL, 0, NULL, 0, 0}};
  rc = sd_stream_append(s, ev2, 2, res);
  free(huge);
  SD_TEST_RC(rc, SD_E_EVENT_TOO_LARGE);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 4);
  struct sd_stream_stat st;
  sd_stream_stat(s, &st);
  assert_int_equal(st.total_published, 6);
}

/* "max_event_bytes: largest stored record payload" and the append contract's
 * SD_E_EVENT_TOO_LARGE: an event far above the limit is refused, one below
 * it is stored, whatever the segment size (large records get a larger
 * segment of their own). */
static void test_engine_max_event_bytes_enforced(void **state) {
  struct sd_test_env *t = env(state);
  t->o.max_event_bytes = 6000;
  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream *s = create(t, "s", NULL);
  static char m[20001];
  struct sd_append_result res;
  sd_test_members(m, 200, "small");
  SD_TEST_RC(sd_test_append1(s, m, NULL, NULL, -1, NULL), 0);
  sd_test_members(m, 20000, "big");
  SD_TEST_RC(sd_test_append1(s, m, NULL, NULL, -1, NULL), SD_E_EVENT_TOO_LARGE);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 1);
  /* 5000 bytes: more than a 4096-byte segment, less than the limit. */
  sd_test_members(m, 5000, "five-k");
  SD_TEST_RC(sd_test_append1(s, m, NULL, NULL, -1, &res), 0);
  assert_int_equal(res.offset, 1);
  SD_TEST_RC(sd_test_append1(s, "\"after\":1", NULL, NULL, -1, &res), 0);
  assert_int_equal(res.offset, 2);
  struct sd_test_recs r = {0};
  assert_int_equal(sd_test_read_all(s, 0, 0, &r), 0);
  assert_int_equal(r.n, 3);
  char want[5200];
  sd_test_expect_json(want, sizeof(want), 1, 0, m, r.v[1].ts);
  assert_int_equal(r.v[1].json_len, strlen(want));
  assert_memory_equal(r.v[1].json, want, strlen(want));
  sd_test_recs_free(&r);
  SD_TEST_RC(sd_test_env_close(t), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  assert_non_null(s);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 3);
  assert_int_equal(sd_test_read_all(s, 0, 0, &r), 0);
  assert_int_equal(r.n, 3);
  assert_int_equal(r.v[1].json_len, strlen(want));
  sd_test_recs_free(&r);
}

static void test_engine_partitions_keys_round_robin(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream_config c = cfg_parts(4);
  struct sd_stream *s = create(t, "s", &c);
  uint64_t next[4] = {0};
  struct sd_append_result res;
  char m[EV_BYTES + 1];

  /* Same key, same partition, dense offsets there. */
  uint32_t kp = UINT32_MAX;
  for (int i = 0; i < 30; i++) {
    sd_test_members(m, EV_BYTES, "k");
    SD_TEST_RC(sd_test_append1(s, m, "user-42", NULL, -1, &res), 0);
    if (kp == UINT32_MAX) kp = res.partition;
    assert_int_equal(res.partition, kp);
    assert_int_equal(res.offset, next[kp]++);
  }
  /* Many keys use more than one partition; each key stays put. */
  uint32_t first[40];
  int used[4] = {0};
  for (int round = 0; round < 2; round++)
    for (int k = 0; k < 40; k++) {
      char key[16];
      snprintf(key, sizeof(key), "key-%d", k);
      SD_TEST_RC(sd_test_append1(s, "\"e\":1", key, NULL, -1, &res), 0);
      assert_true(res.partition < 4);
      if (round == 0) first[k] = res.partition;
      assert_int_equal(res.partition, first[k]);
      assert_int_equal(res.offset, next[res.partition]++);
      used[res.partition] = 1;
    }
  assert_true(used[0] + used[1] + used[2] + used[3] >= 2);
  /* Explicit partitions; out of range refused. */
  for (int32_t p = 0; p < 4; p++) {
    SD_TEST_RC(sd_test_append1(s, "\"e\":2", "user-42", NULL, p, &res), 0);
    assert_int_equal(res.partition, (uint32_t)p);
    assert_int_equal(res.offset, next[p]++);
  }
  SD_TEST_RC(sd_test_append1(s, "\"e\":3", NULL, NULL, 4, &res), SD_E_INVALID_PARAMETER);
  SD_TEST_RC(sd_test_append1(s, "\"e\":3", NULL, NULL, INT32_MAX, &res), SD_E_INVALID_PARAMETER);
  /* Round-robin: without key or partition, events rotate over all four. */
  int rr[4] = {0};
  uint32_t prev = UINT32_MAX;
  for (int i = 0; i < 12; i++) {
    SD_TEST_RC(sd_test_append1(s, "\"e\":4", NULL, NULL, -1, &res), 0);
    assert_int_not_equal(res.partition, prev);
    prev = res.partition;
    rr[res.partition]++;
    assert_int_equal(res.offset, next[res.partition]++);
  }
  for (int p = 0; p < 4; p++) assert_int_equal(rr[p], 3);
  /* Each partition reads back dense, with its number in the JSON. */
  for (uint32_t p = 0; p < 4; p++) {
    struct sd_test_recs r = {0};
    assert_true(sd_test_read_all(s, p, 0, &r) >= 0);
    assert_int_equal(r.n, next[p]);
    assert_int_equal(sd_test_pstat(s, p).next_offset, next[p]);
    for (size_t i = 0; i < r.n; i++) {
      char head[64];
      int n = snprintf(head, sizeof(head), "{\"offset\":%zu,\"partition\":%u,", i, p);
      assert_int_equal(r.v[i].offset, i);
      assert_int_equal(r.v[i].partition, p);
      assert_memory_equal(r.v[i].json, head, (size_t)n);
    }
    sd_test_recs_free(&r);
  }
}

static void test_engine_resolve_offset(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream_config c = cfg_parts(2);
  struct sd_stream *s = create(t, "s", &c);
  append_seq(t, s, 0, 0, 10);
  uint64_t o = 999;
  const struct {
    int64_t from;
    uint64_t want;
  } cases[] = {{0, 0}, {5, 5}, {9, 9}, {10, 10}, {100, 100}, {-1, 9}, {-3, 7}, {-10, 0}, {-11, 0}, {INT64_MIN, 0}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    SD_TEST_RC(sd_stream_resolve_offset(s, 0, cases[i].from, &o), 0);
    if (o != cases[i].want)
      fail_msg("resolve(%lld) = %llu, want %llu", (long long)cases[i].from, (unsigned long long)o,
               (unsigned long long)cases[i].want);
  }
  /* An empty partition. */
  SD_TEST_RC(sd_stream_resolve_offset(s, 1, -5, &o), 0);
  assert_int_equal(o, 0);
  SD_TEST_RC(sd_stream_resolve_offset(s, 1, 0, &o), 0);
  assert_int_equal(o, 0);
  SD_TEST_RC(sd_stream_resolve_offset(s, 2, 0, &o), SD_E_INVALID_PARAMETER);
  /* -N then read: the last N records. */
  SD_TEST_RC(sd_stream_resolve_offset(s, 0, -4, &o), 0);
  check_seq(s, 0, o, 10);
}

/* Collects (ts, partition) order checks for merged reads. */
static void check_merged_order(const struct sd_test_recs *r) {
  for (size_t i = 1; i < r->n; i++) {
    const struct sd_test_rec *a = &r->v[i - 1], *b = &r->v[i];
    int ok = a->ts < b->ts || (a->ts == b->ts && a->partition < b->partition) ||
             (a->ts == b->ts && a->partition == b->partition && a->offset < b->offset);
    if (!ok)
      fail_msg("merged order broken at %zu: (%llu,p%u,o%llu) then (%llu,p%u,o%llu)", i, (unsigned long long)a->ts,
               a->partition, (unsigned long long)a->offset, (unsigned long long)b->ts, b->partition,
               (unsigned long long)b->offset);
  }
}

static void test_engine_read_merged(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream_config c = cfg_parts(3);
  struct sd_stream *s = create(t, "s", &c);
  uint64_t next[3] = {0};
  char m[EV_BYTES + 1];
  /* Rounds in which partitions get 0..3 events, some rounds a few ms apart
   * so that timestamps both tie and differ. */
  unsigned x = 12345;
  for (int round = 0; round < 25; round++) {
    for (uint32_t p = 0; p < 3; p++) {
      x = x * 1103515245u + 12345u;
      unsigned k = (x >> 16) % 4;
      for (unsigned j = 0; j < k; j++) {
        members_for(m, "s", p, next[p]);
        SD_TEST_RC(sd_test_append1(s, m, NULL, NULL, (int32_t)p, NULL), 0);
        next[p]++;
      }
    }
    if (round % 3 == 0) usleep(3000);
  }
  uint64_t total = next[0] + next[1] + next[2];
  struct sd_test_recs all = {0};
  assert_int_equal(sd_stream_read_merged(s, 0, 100000, SIZE_MAX, sd_test_recs_visit, &all), (int)total);
  assert_int_equal(all.n, total);
  check_merged_order(&all);
  uint64_t seen[3] = {0};
  for (size_t i = 0; i < all.n; i++) {
    uint32_t p = all.v[i].partition;
    assert_int_equal(all.v[i].offset, seen[p]++);
    members_for(m, "s", p, all.v[i].offset);
    check_json(&all.v[i], m);
  }
  /* -N: the N most recent of the whole stream, i.e. the tail of the order. */
  const uint64_t ns[] = {1, 2, 5, 17, total, total + 10};
  for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
    struct sd_test_recs r = {0};
    int n = sd_stream_read_merged(s, -(int64_t)ns[k], 100000, SIZE_MAX, sd_test_recs_visit, &r);
    uint64_t want = ns[k] < total ? ns[k] : total;
    if ((uint64_t)n != want) fail_msg("merged -%llu returned %d", (unsigned long long)ns[k], n);
    for (size_t i = 0; i < r.n; i++) {
      const struct sd_test_rec *a = &r.v[i], *b = &all.v[total - want + i];
      if (a->partition != b->partition || a->offset != b->offset)
        fail_msg("merged -%llu item %zu: p%u o%llu, want p%u o%llu", (unsigned long long)ns[k], i, a->partition,
                 (unsigned long long)a->offset, b->partition, (unsigned long long)b->offset);
    }
    sd_test_recs_free(&r);
  }
  /* Limit and from >= 0 applying to each partition. */
  struct sd_test_recs r = {0};
  assert_int_equal(sd_stream_read_merged(s, 0, 7, SIZE_MAX, sd_test_recs_visit, &r), 7);
  for (size_t i = 0; i < 7; i++) assert_int_equal(r.v[i].offset, all.v[i].offset);
  sd_test_recs_free(&r);
  assert_true(sd_stream_read_merged(s, 2, 100000, SIZE_MAX, sd_test_recs_visit, &r) >= 0);
  uint64_t want = 0;
  for (int p = 0; p < 3; p++) want += next[p] > 2 ? next[p] - 2 : 0;
  assert_int_equal(r.n, want);
  check_merged_order(&r);
  for (size_t i = 0; i < r.n; i++) assert_true(r.v[i].offset >= 2);
  sd_test_recs_free(&r);
  sd_test_recs_free(&all);
}

/* ---- idempotency --------------------------------------------------------------- */

static void test_engine_idempotent_ids(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream_config c = cfg_parts(3);
  struct sd_stream *s = create(t, "s", &c);
  struct sd_append_result a, b;
  SD_TEST_RC(sd_test_append1(s, "\"n\":1", "k1", "order-1", -1, &a), 0);
  assert_false(a.duplicate);
  SD_TEST_RC(sd_test_append1(s, "\"n\":2", NULL, NULL, -1, NULL), 0);
  /* Same id, other members and key: the first copy's place, nothing added. */
  uint64_t before = sd_test_pstat(s, 0).next_offset + sd_test_pstat(s, 1).next_offset + sd_test_pstat(s, 2).next_offset;
  SD_TEST_RC(sd_test_append1(s, "\"n\":3", "other-key", "order-1", -1, &b), 0);
  assert_true(b.duplicate);
  assert_int_equal(b.partition, a.partition);
  assert_int_equal(b.offset, a.offset);
  uint64_t after = sd_test_pstat(s, 0).next_offset + sd_test_pstat(s, 1).next_offset + sd_test_pstat(s, 2).next_offset;
  assert_int_equal(after, before);
  /* Explicit partition does not matter either. */
  SD_TEST_RC(sd_test_append1(s, "\"n\":4", NULL, "order-1", (int32_t)((a.partition + 1) % 3), &b), 0);
  assert_true(b.duplicate);
  assert_int_equal(b.offset, a.offset);
  /* The stored record carries its id. */
  struct sd_test_recs r = {0};
  assert_int_equal(sd_stream_read(s, a.partition, a.offset, 1, SIZE_MAX, sd_test_recs_visit, &r), 1);
  assert_non_null(r.v[0].id);
  assert_string_equal(r.v[0].id, "order-1");
  assert_non_null(strstr(r.v[0].json, "\"n\":1"));
  sd_test_recs_free(&r);

  /* Within one batch: the second copy is the first one's duplicate. */
  struct sd_event_in ev[3] = {{"\"n\":5", 5, NULL, 0, "batch-id", 8, 2},
                              {"\"n\":6", 5, NULL, 0, "batch-id", 8, 0},
                              {"\"n\":7", 5, NULL, 0, "order-1", 7, 1}};
  struct sd_append_result res[3];
  SD_TEST_RC(sd_stream_append(s, ev, 3, res), 0);
  assert_false(res[0].duplicate);
  assert_int_equal(res[0].partition, 2);
  assert_true(res[1].duplicate);
  assert_int_equal(res[1].partition, 2);
  assert_int_equal(res[1].offset, res[0].offset);
  assert_true(res[2].duplicate);
  assert_int_equal(res[2].offset, a.offset);

  /* An id longer than SD_MAX_ID is refused, nothing appended. */
  char longid[SD_MAX_ID + 2];
  memset(longid, 'i', sizeof(longid));
  longid[SD_MAX_ID + 1] = '\0';
  before = sd_test_pstat(s, 0).next_offset;
  assert_true(sd_test_append1(s, "\"n\":8", NULL, longid, 0, NULL) < 0);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, before);
  longid[SD_MAX_ID] = '\0';
  SD_TEST_RC(sd_test_append1(s, "\"n\":9", NULL, longid, 0, &b), 0);
  assert_false(b.duplicate);
  uint64_t long_off = b.offset;

  /* The window survives close and reopen (rebuilt from the records). */
  SD_TEST_RC(sd_test_env_close(t), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  assert_non_null(s);
  SD_TEST_RC(sd_test_append1(s, "\"n\":10", NULL, "order-1", -1, &b), 0);
  assert_true(b.duplicate);
  assert_int_equal(b.partition, a.partition);
  assert_int_equal(b.offset, a.offset);
  SD_TEST_RC(sd_test_append1(s, "\"n\":11", NULL, "batch-id", -1, &b), 0);
  assert_true(b.duplicate);
  assert_int_equal(b.partition, 2);
  assert_int_equal(b.offset, res[0].offset);
  SD_TEST_RC(sd_test_append1(s, "\"n\":12", NULL, longid, -1, &b), 0);
  assert_true(b.duplicate);
  assert_int_equal(b.offset, long_off);
  SD_TEST_RC(sd_test_append1(s, "\"n\":13", NULL, "order-2", -1, &b), 0);
  assert_false(b.duplicate);
}

static void test_engine_idempotency_window_expires(void **state) {
  struct sd_test_env *t = env(state);
  t->o.dedup_window_ms = 30;
  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream *s = create(t, "s", NULL);
  struct sd_append_result a, b;
  SD_TEST_RC(sd_test_append1(s, "\"n\":1", NULL, "x", -1, &a), 0);
  SD_TEST_RC(sd_test_append1(s, "\"n\":1", NULL, "x", -1, &b), 0);
  assert_true(b.duplicate);
  usleep(80 * 1000);
  SD_TEST_RC(sd_test_append1(s, "\"n\":1", NULL, "x", -1, &b), 0);
  assert_false(b.duplicate);
  assert_int_equal(b.offset, a.offset + 1);
}

/* ---- durability and visibility ----------------------------------------------------- */

static void test_engine_durability_always(void **state) {
  struct sd_test_env *t = env(state);
  t->o.durability = SD_DURABILITY_ALWAYS;
  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream *s = create(t, "s", NULL);
  struct sd_test_waiter *w = sd_test_wait(t, s);
  char m[EV_BYTES + 1];
  members_for(m, "s", 0, 0);
  struct sd_append_result res;
  SD_TEST_RC(sd_test_append1(s, m, NULL, NULL, -1, &res), SD_PENDING);
  assert_int_equal(res.offset, 0);
  /* Not visible, not announced, before its sync. */
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 0);
  struct sd_test_recs r = {0};
  assert_int_equal(sd_stream_read(s, 0, 0, 10, SIZE_MAX, sd_test_recs_visit, &r), 0);
  assert_int_equal(sd_stream_read_merged(s, 0, 10, SIZE_MAX, sd_test_recs_visit, &r), 0);
  assert_int_equal(sd_stream_read_merged(s, -5, 10, SIZE_MAX, sd_test_recs_visit, &r), 0);
  uint64_t o;
  SD_TEST_RC(sd_stream_resolve_offset(s, 0, -1, &o), 0);
  assert_int_equal(o, 0);
  assert_int_equal(w->fired, 0);
  struct sd_test_durable *d = sd_test_when_durable(t, s);
  assert_int_equal(d->fired, 0); /* never re-entrant */
  SD_TEST_RC(sd_test_run_until_flag(&t->loop, &d->fired, 5000), 0);
  SD_TEST_RC(d->status, 0);
  assert_int_equal(d->fired, 1);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 1);
  check_seq(s, 0, 0, 1);
  assert_int_equal(w->fired, 1);
  SD_TEST_RC(w->status, 0);

  /* A batch across segments: pending as a whole, then all visible. */
  enum { N = 30 };
  static char bm[N][EV_BYTES + 1];
  struct sd_event_in ev[N];
  struct sd_append_result br[N];
  for (int i = 0; i < N; i++) {
    members_for(bm[i], "s", 0, 1 + (uint64_t)i);
    ev[i] = (struct sd_event_in){bm[i], EV_BYTES, NULL, 0, NULL, 0, 0};
  }
  SD_TEST_RC(sd_stream_append(s, ev, N, br), SD_PENDING);
  assert_int_equal(br[N - 1].offset, N);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 1);
  SD_TEST_RC(sd_test_durable(t, s), 0);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, N + 1);
  check_seq(s, 0, 0, N + 1);
  /* Single appends, each waited for. */
  for (uint64_t i = N + 1; i < N + 6; i++) {
    members_for(m, "s", 0, i);
    SD_TEST_RC(sd_test_append1(s, m, NULL, NULL, 0, &res), SD_PENDING);
    assert_int_equal(sd_test_pstat(s, 0).next_offset, i);
    SD_TEST_RC(sd_test_durable(t, s), 0);
    assert_int_equal(sd_test_pstat(s, 0).next_offset, i + 1);
  }
  check_seq(s, 0, 0, N + 6);
  /* when_durable with nothing new still completes, later, with 0. */
  d = sd_test_when_durable(t, s);
  assert_int_equal(d->fired, 0);
  SD_TEST_RC(sd_test_run_until_flag(&t->loop, &d->fired, 5000), 0);
  SD_TEST_RC(d->status, 0);
}

static void visible_at_once(struct sd_test_env *t, enum sd_durability mode) {
  t->o.durability = mode;
  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream *s = create(t, "s", NULL);
  append_seq(t, s, 0, 0, 25);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 25);
  check_seq(s, 0, 0, 25);
  /* A durable op still waits for a real sync, started at once. */
  struct sd_test_durable *d = sd_test_when_durable(t, s);
  assert_int_equal(d->fired, 0);
  SD_TEST_RC(sd_test_run_until_flag(&t->loop, &d->fired, 5000), 0);
  SD_TEST_RC(d->status, 0);
  /* And the data survives a close. */
  SD_TEST_RC(sd_test_env_close(t), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  assert_non_null(s);
  check_seq(s, 0, 0, 25);
}

static void test_engine_durability_interval_visible_at_once(void **state) {
  visible_at_once(env(state), SD_DURABILITY_INTERVAL);
}

static void test_engine_durability_never_visible_at_once(void **state) {
  visible_at_once(env(state), SD_DURABILITY_NEVER);
}

/* ---- waiters ------------------------------------------------------------------------ */

static void test_engine_wait_fires_on_append(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream_config c = cfg_parts(2);
  struct sd_stream *s = create(t, "s", &c);
  struct sd_test_waiter *w1 = sd_test_wait(t, s), *w2 = sd_test_wait(t, s), *w3 = sd_test_wait(t, s);
  sd_stream_wait_cancel(&w3->w);
  sd_stream_wait_cancel(&w3->w); /* harmless twice */
  sd_test_run_for(&t->loop, 20);
  assert_int_equal(w1->fired, 0);
  SD_TEST_RC(sd_test_append1(s, "\"e\":1", NULL, NULL, 1, NULL), 0);
  SD_TEST_RC(sd_test_run_until_flag(&t->loop, &w2->fired, 2000), 0);
  assert_int_equal(w1->fired, 1);
  assert_int_equal(w2->fired, 1);
  SD_TEST_RC(w1->status, 0);
  assert_int_equal(w3->fired, 0);
  /* Waiters are one-shot. */
  SD_TEST_RC(sd_test_append1(s, "\"e\":2", NULL, NULL, 0, NULL), 0);
  sd_test_run_for(&t->loop, 20);
  assert_int_equal(w1->fired, 1);
  /* A fresh one fires for the next append, on any partition. */
  struct sd_test_waiter *w4 = sd_test_wait(t, s);
  SD_TEST_RC(sd_test_append1(s, "\"e\":3", NULL, NULL, 0, NULL), 0);
  SD_TEST_RC(sd_test_run_until_flag(&t->loop, &w4->fired, 2000), 0);
  SD_TEST_RC(w4->status, 0);
  /* A cancelled waiter is not called at close either. */
  struct sd_test_waiter *w5 = sd_test_wait(t, s);
  sd_stream_wait_cancel(&w5->w);
  /* A waiter still waiting at close hears about the shutdown. */
  struct sd_test_waiter *w6 = sd_test_wait(t, s);
  SD_TEST_RC(sd_test_env_close(t), 0);
  assert_int_equal(w5->fired, 0);
  assert_int_equal(w6->fired, 1);
  SD_TEST_RC(w6->status, SD_E_SHUTTING_DOWN);
}

static void test_engine_wait_always_mode_after_sync(void **state) {
  struct sd_test_env *t = env(state);
  t->o.durability = SD_DURABILITY_ALWAYS;
  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream *s = create(t, "s", NULL);
  struct sd_test_waiter *w = sd_test_wait(t, s);
  SD_TEST_RC(sd_test_append1(s, "\"e\":1", NULL, NULL, -1, NULL), SD_PENDING);
  assert_int_equal(w->fired, 0);
  SD_TEST_RC(sd_test_run_until_flag(&t->loop, &w->fired, 5000), 0);
  SD_TEST_RC(w->status, 0);
  /* By the time the waiter runs, the record is readable. */
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 1);
}

/* ---- recovery -------------------------------------------------------------------------- */

struct snapshot {
  struct sd_stream_config cfg;
  struct sd_stream_stat st;
  struct sd_partition_stat ps[4];
};

static void snap(struct sd_stream *s, struct snapshot *x) {
  x->cfg = *sd_stream_config(s);
  sd_stream_stat(s, &x->st);
  for (uint32_t p = 0; p < x->cfg.partitions && p < 4; p++) x->ps[p] = sd_test_pstat(s, p);
}

static void same_snapshot(struct sd_stream *s, const struct snapshot *x) {
  struct snapshot y;
  snap(s, &y);
  assert_int_equal(y.cfg.partitions, x->cfg.partitions);
  assert_int_equal(y.cfg.retention_hours, x->cfg.retention_hours);
  assert_int_equal(y.cfg.retention_bytes, x->cfg.retention_bytes);
  assert_int_equal(y.cfg.max_events, x->cfg.max_events);
  assert_int_equal(y.st.created_at_ms, x->st.created_at_ms);
  assert_int_equal(y.st.generation, x->st.generation);
  for (uint32_t p = 0; p < x->cfg.partitions && p < 4; p++) {
    assert_int_equal(y.ps[p].min_offset, x->ps[p].min_offset);
    assert_int_equal(y.ps[p].next_offset, x->ps[p].next_offset);
    assert_int_equal(y.ps[p].bytes, x->ps[p].bytes);
    assert_false(y.ps[p].read_only);
  }
}

static void test_engine_reopen_recovers_everything(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream_config ca = {1, 5, 1u << 30, 1000000};
  struct sd_stream_config cb = cfg_parts(3);
  struct sd_stream *a = create(t, "alpha", &ca);
  struct sd_stream *b = create(t, "beta", &cb);
  create(t, "empty", NULL);
  append_seq(t, a, 0, 0, 40);
  append_seq(t, b, 0, 0, 5);
  append_seq(t, b, 2, 0, 27);
  struct snapshot sa, sb;
  snap(a, &sa);
  snap(b, &sb);
  for (int round = 0; round < 2; round++) {
    SD_TEST_RC(sd_test_env_close(t), 0);
    SD_TEST_RC(sd_test_env_open(t), 0);
    assert_int_equal(sd_engine_stream_count(t->e), 3);
    a = sd_engine_find(t->e, "alpha");
    b = sd_engine_find(t->e, "beta");
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(sd_engine_find(t->e, "empty"));
    assert_int_equal(sd_test_pstat(sd_engine_find(t->e, "empty"), 0).next_offset, 0);
    same_snapshot(a, &sa);
    same_snapshot(b, &sb);
    check_seq(a, 0, 0, 40);
    check_seq(b, 0, 0, 5);
    check_seq(b, 2, 0, 27);
    assert_int_equal(sd_test_pstat(b, 1).next_offset, 0);
  }
  /* Appends go on at the next dense offsets. */
  append_seq(t, a, 0, 40, 3);
  append_seq(t, b, 1, 0, 2);
  check_seq(a, 0, 0, 43);
  /* The new stream's generation is above every recovered one. */
  struct sd_stream *c = create(t, "gamma", NULL);
  struct sd_stream_stat sc;
  sd_stream_stat(c, &sc);
  assert_true(sc.generation > sa.st.generation);
  assert_true(sc.generation > sb.st.generation);
}

static void test_engine_reopen_always_mode(void **state) {
  struct sd_test_env *t = env(state);
  t->o.durability = SD_DURABILITY_ALWAYS;
  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream *s = create(t, "s", NULL);
  append_seq(t, s, 0, 0, 30);
  SD_TEST_RC(sd_test_durable(t, s), 0);
  SD_TEST_RC(sd_test_env_close(t), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  assert_non_null(s);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 30);
  check_seq(s, 0, 0, 30);
}

/* Finds the newest segment of partition p and the position of its last
 * record; returns that record count. */
static uint32_t active_layout(struct sd_test_env *t, const char *stream, uint32_t p, char *path, uint32_t *pos,
                              uint32_t maxpos) {
  char dir[PATH_MAX];
  uint64_t base = 0;
  sd_test_path(dir, sizeof(dir), "%s/streams/%s/%u", t->data, stream, p);
  SD_TEST_RC(sd_test_newest_segment(dir, &base, NULL), 0);
  sd_segment_path(path, PATH_MAX, dir, base, "seg");
  char *img;
  size_t len;
  SD_TEST_RC(sd_test_read_file(path, &img, &len), 0);
  uint32_t n = sd_segment_scan(img, len, base, pos, maxpos, NULL, NULL);
  free(img);
  return n;
}

static void test_engine_torn_tail_recovered(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream *s = create(t, "s", NULL);
  append_seq(t, s, 0, 0, 30);
  struct snapshot before;
  snap(s, &before);
  SD_TEST_RC(sd_test_env_close(t), 0);

  char path[PATH_MAX];
  uint32_t pos[64];
  uint32_t n = active_layout(t, "s", 0, path, pos, 64);
  assert_true(n >= 2);
  /* Cut the file in the middle of the last record's JSON. */
  assert_int_equal(truncate(path, (off_t)pos[n - 1] + 100), 0);

  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  assert_non_null(s);
  struct sd_partition_stat ps = sd_test_pstat(s, 0);
  assert_int_equal(ps.next_offset, 29);
  assert_false(ps.read_only);
  struct sd_stream_stat st;
  sd_stream_stat(s, &st);
  assert_int_equal(st.generation, before.st.generation);
  check_seq(s, 0, 0, 29);
  /* The next append gets the next dense offset, and lasts. */
  append_seq(t, s, 0, 29, 3);
  check_seq(s, 0, 0, 32);
  SD_TEST_RC(sd_test_env_close(t), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  check_seq(s, 0, 0, 32);
}

/* The torn record was the only one of the newest segment: after the cut
 * that segment is empty (and shorter than segment_bytes).  Appending must
 * still work at the next dense offset. */
static void test_engine_torn_first_record_of_active_segment(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream *s = create(t, "s", NULL);
  uint64_t n = 0;
  while (sd_test_pstat(s, 0).segments < 2) append_seq(t, s, 0, n++, 1);
  /* The newest segment holds exactly record n-1. */
  SD_TEST_RC(sd_test_env_close(t), 0);
  char path[PATH_MAX];
  uint32_t pos[4];
  assert_int_equal(active_layout(t, "s", 0, path, pos, 4), 1);
  assert_int_equal(truncate(path, (off_t)pos[0] + 100), 0);

  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  assert_non_null(s);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, n - 1);
  check_seq(s, 0, 0, n - 1);
  char m[EV_BYTES + 1];
  members_for(m, "s", 0, n - 1);
  struct sd_append_result res;
  SD_TEST_RC(sd_test_append1(s, m, NULL, NULL, 0, &res), 0);
  assert_int_equal(res.offset, n - 1);
  check_seq(s, 0, 0, n);
  SD_TEST_RC(sd_test_env_close(t), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  assert_non_null(s);
  check_seq(s, 0, 0, n);
}

/* segment_bytes raised between runs: the recovered, empty active segment is
 * smaller than the new event needs.  The append must work at offset 0. */
static void test_engine_segment_bytes_raised_empty_active(void **state) {
  struct sd_test_env *t = env(state);
  create(t, "s", NULL);
  SD_TEST_RC(sd_test_env_close(t), 0);
  t->o.segment_bytes = 16384;
  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream *s = sd_engine_find(t->e, "s");
  assert_non_null(s);
  char *m = malloc(6001);
  assert_non_null(m);
  sd_test_members(m, 6000, "big");
  struct sd_append_result res;
  int rc = sd_test_append1(s, m, NULL, NULL, 0, &res);
  free(m);
  SD_TEST_RC(rc, 0);
  assert_int_equal(res.offset, 0);
  SD_TEST_RC(sd_test_env_close(t), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  assert_non_null(s);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 1);
  struct sd_test_recs r = {0};
  assert_int_equal(sd_stream_read(s, 0, 0, 10, SIZE_MAX, sd_test_recs_visit, &r), 1);
  assert_int_equal(r.v[0].json_len, 6000 + strlen("{\"offset\":0,\"partition\":0,,\"timestamp\":}") + 13);
  sd_test_recs_free(&r);
}

static void test_engine_damaged_sealed_segment_read_corrupt(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream *s = create(t, "s", NULL);
  append_seq(t, s, 0, 0, 40);
  SD_TEST_RC(sd_test_env_close(t), 0);
  /* Damage record 5 of the first (sealed, indexed) segment. */
  char path[PATH_MAX], *img;
  size_t len;
  sd_test_path(path, sizeof(path), "%s/streams/s/0/00000000000000000000.seg", t->data);
  SD_TEST_RC(sd_test_read_file(path, &img, &len), 0);
  uint32_t pos[64];
  uint32_t n = sd_segment_scan(img, len, 0, pos, 64, NULL, NULL);
  free(img);
  assert_true(n > 6);
  SD_TEST_RC(sd_test_flip_byte(path, pos[5] + 60, 0x01), 0);

  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  assert_non_null(s);
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 40);
  /* Records before the damage are visited, then the read stops. */
  struct sd_test_recs r = {0};
  assert_int_equal(sd_stream_read(s, 0, 0, 100, SIZE_MAX, sd_test_recs_visit, &r), 5);
  sd_test_recs_free(&r);
  assert_true(sd_stream_read(s, 0, 5, 100, SIZE_MAX, sd_test_recs_visit, &r) == SD_E_CORRUPT);
  assert_int_equal(r.n, 0);
  /* Later segments are intact. */
  check_seq(s, 0, n, 40);
}

static void test_engine_bad_segment_header_set_aside(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream *s = create(t, "s", NULL);
  append_seq(t, s, 0, 0, 30);
  SD_TEST_RC(sd_test_env_close(t), 0);
  char path[PATH_MAX];
  uint32_t pos[64];
  uint32_t n = active_layout(t, "s", 0, path, pos, 64);
  assert_true(n >= 1 && n < 30);
  SD_TEST_RC(sd_test_flip_byte(path, 0, 0xff), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  assert_non_null(s);
  /* The damaged newest file is set aside; the rest is served. */
  assert_int_equal(sd_test_pstat(s, 0).next_offset, 30 - n);
  check_seq(s, 0, 0, 30 - n);
  char aside[PATH_MAX + 16];
  snprintf(aside, sizeof(aside), "%s.damaged", path);
  assert_true(sd_test_exists(aside));
  append_seq(t, s, 0, 30 - n, 2);
  check_seq(s, 0, 0, 32 - n);
}

static void test_engine_corrupt_meta_refused(void **state) {
  struct sd_test_env *t = env(state);
  create(t, "s", NULL);
  SD_TEST_RC(sd_test_env_close(t), 0);
  char path[PATH_MAX];
  sd_test_path(path, sizeof(path), "%s/meta.json", t->data);
  assert_true(sd_test_exists(path));
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("{not json", f);
  fclose(f);
  SD_TEST_RC(sd_test_env_open(t), SD_E_CORRUPT_FILE);
  assert_null(t->e);
}

/* The process dies without sd_engine_close (no close-time syncs, index
 * files or metadata writes): every append acknowledged durable in `always`
 * mode is there after restart, with the stream's settings and generation. */
struct crash_report {
  uint64_t acked[2];
  uint64_t generation, created_at;
};

static int crash_child(struct sd_test_env *t, int fd) {
  uv_loop_t loop;
  struct sd_engine *e = NULL;
  struct sd_stream *s = NULL;
  struct sd_engine_options o = t->o;
  struct crash_report rep = {{0, 0}, 0, 0};
  int created;
  o.durability = SD_DURABILITY_ALWAYS;
  if (uv_loop_init(&loop) != 0 || sd_engine_open(&loop, &o, &e) != 0) return 2;
  struct sd_stream_config c = cfg_parts(2);
  if (sd_engine_create(e, "crash", &c, 1, &s, &created) != 0) return 3;
  struct sd_stream_stat st;
  sd_stream_stat(s, &st);
  rep.generation = st.generation;
  rep.created_at = st.created_at_ms;
  char m[EV_BYTES + 1];
  for (uint64_t i = 0; i < 25; i++) {
    for (uint32_t p = 0; p < 2; p++) {
      members_for(m, "crash", p, i);
      struct sd_append_result res;
      if (sd_test_append1(s, m, NULL, NULL, (int32_t)p, &res) != SD_PENDING || res.offset != i) return 4;
    }
    struct sd_test_durable *d = sd_test_when_durable(t, s);
    for (int k = 0; k < 5000 && !d->fired; k++) uv_run(&loop, UV_RUN_ONCE);
    if (!d->fired || d->status != 0) return 5;
    rep.acked[0] = rep.acked[1] = i + 1;
  }
  /* One more, not waited for: it may or may not survive. */
  members_for(m, "crash", 0, 25);
  sd_test_append1(s, m, NULL, NULL, 0, NULL);
  if (write(fd, &rep, sizeof(rep)) != (ssize_t)sizeof(rep)) return 6;
  return 0;
}

static void test_engine_recover_after_crash(void **state) {
  struct sd_test_env *t = env(state);
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    _exit(crash_child(t, fds[1]));
  }
  close(fds[1]);
  struct crash_report rep;
  ssize_t n = read(fds[0], &rep, sizeof(rep));
  close(fds[0]);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  assert_int_equal(n, (ssize_t)sizeof(rep));

  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream *s = sd_engine_find(t->e, "crash");
  assert_non_null(s);
  assert_int_equal(sd_stream_config(s)->partitions, 2);
  struct sd_stream_stat st;
  sd_stream_stat(s, &st);
  assert_int_equal(st.generation, rep.generation);
  assert_int_equal(st.created_at_ms, rep.created_at);
  uint64_t n0 = sd_test_pstat(s, 0).next_offset, n1 = sd_test_pstat(s, 1).next_offset;
  assert_true(n0 == rep.acked[0] || n0 == rep.acked[0] + 1);
  assert_int_equal(n1, rep.acked[1]);
  check_seq(s, 0, 0, n0);
  check_seq(s, 1, 0, n1);
  append_seq(t, s, 1, n1, 2);
  check_seq(s, 1, 0, n1 + 2);
  /* A new stream's generation is above the crashed run's. */
  struct sd_stream *s2 = create(t, "after", NULL);
  struct sd_stream_stat st2;
  sd_stream_stat(s2, &st2);
  assert_true(st2.generation > rep.generation);
}

/* "explicit partition, or -1": other negative values are out of range. */
static void test_engine_negative_partition_refused(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream_config c = cfg_parts(2);
  struct sd_stream *s = create(t, "s", &c);
  SD_TEST_RC(sd_test_append1(s, "\"e\":1", NULL, NULL, -2, NULL), SD_E_INVALID_PARAMETER);
  SD_TEST_RC(sd_test_append1(s, "\"e\":1", NULL, NULL, INT32_MIN, NULL), SD_E_INVALID_PARAMETER);
  assert_int_equal(sd_test_pstat(s, 0).next_offset + sd_test_pstat(s, 1).next_offset, 0);
}

/* ---- retention --------------------------------------------------------------------------- */

struct ret_wait {
  struct sd_stream *s;
  uint64_t min;
};

static int min_reached(void *arg) {
  struct ret_wait *w = arg;
  return sd_test_pstat(w->s, 0).min_offset >= w->min;
}

static void check_below_min(struct sd_stream *s, uint64_t min) {
  struct sd_test_recs r = {0};
  uint64_t o;
  SD_TEST_RC(sd_stream_read(s, 0, 0, 10, SIZE_MAX, sd_test_recs_visit, &r), SD_E_OFFSET_OUT_OF_RANGE);
  SD_TEST_RC(sd_stream_read(s, 0, min - 1, 10, SIZE_MAX, sd_test_recs_visit, &r), SD_E_OFFSET_OUT_OF_RANGE);
  SD_TEST_RC(sd_stream_resolve_offset(s, 0, 0, &o), SD_E_OFFSET_OUT_OF_RANGE);
  SD_TEST_RC(sd_stream_resolve_offset(s, 0, (int64_t)min - 1, &o), SD_E_OFFSET_OUT_OF_RANGE);
  SD_TEST_RC(sd_stream_resolve_offset(s, 0, (int64_t)min, &o), 0);
  SD_TEST_RC(sd_stream_resolve_offset(s, 0, -1000000, &o), 0);
  assert_int_equal(o, min);
  SD_TEST_RC(sd_stream_read_merged(s, 0, 10, SIZE_MAX, sd_test_recs_visit, &r), SD_E_OFFSET_OUT_OF_RANGE);
  assert_int_equal(r.n, 0);
  /* -N of the merged read starts at the oldest kept record at most. */
  assert_true(sd_stream_read_merged(s, -1000000, 100000, SIZE_MAX, sd_test_recs_visit, &r) > 0);
  assert_int_equal(r.v[0].offset, min);
  sd_test_recs_free(&r);
}

/* Waits until the partition directory holds exactly the stat's segments. */
struct files_wait {
  const char *dir;
  struct sd_stream *s;
};
static int files_match(void *arg) {
  struct files_wait *w = arg;
  return count_ext(w->dir, ".seg") == (int)sd_test_pstat(w->s, 0).segments;
}

static void test_engine_retention_max_events(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream_config c = {1, 0, 0, 20};
  struct sd_stream *s = create(t, "s", &c);
  append_seq(t, s, 0, 0, 100);
  struct ret_wait w = {s, 60};
  SD_TEST_RC(sd_test_run_until(&t->loop, min_reached, &w, 5000), 0);
  sd_test_run_for(&t->loop, 100); /* more passes change nothing more */
  struct sd_partition_stat ps = sd_test_pstat(s, 0);
  assert_int_equal(ps.next_offset, 100);
  assert_true(ps.next_offset - ps.min_offset >= 20);
  assert_true(ps.next_offset - ps.min_offset < 20 + 14); /* at most one segment more than needed */
  check_below_min(s, ps.min_offset);
  check_seq(s, 0, ps.min_offset, 100);
  char dir[PATH_MAX];
  sd_test_path(dir, sizeof(dir), "%s/streams/s/0", t->data);
  struct files_wait fw = {dir, s};
  SD_TEST_RC(sd_test_run_until(&t->loop, files_match, &fw, 5000), 0);
  /* Survives a restart; appends continue. */
  SD_TEST_RC(sd_test_env_close(t), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  s = sd_engine_find(t->e, "s");
  assert_int_equal(sd_test_pstat(s, 0).min_offset, ps.min_offset);
  check_below_min(s, ps.min_offset);
  append_seq(t, s, 0, 100, 2);
  check_seq(s, 0, ps.min_offset, 102);
}

static void test_engine_retention_bytes(void **state) {
  struct sd_test_env *t = env(state);
  const uint64_t limit = 8000;
  struct sd_stream_config c = {1, 0, limit, 0};
  struct sd_stream *s = create(t, "s", &c);
  append_seq(t, s, 0, 0, 100);
  uint64_t total = sd_test_pstat(s, 0).bytes;
  assert_true(total > 4 * limit);
  struct ret_wait w = {s, 50};
  SD_TEST_RC(sd_test_run_until(&t->loop, min_reached, &w, 5000), 0);
  sd_test_run_for(&t->loop, 100);
  struct sd_partition_stat ps = sd_test_pstat(s, 0);
  assert_true(ps.bytes >= limit);
  assert_true(ps.bytes < limit + 4096);
  assert_true(ps.min_offset > 0);
  check_below_min(s, ps.min_offset);
  check_seq(s, 0, ps.min_offset, 100);
}

/* Writes a segment of n records with timestamp ts into a partition dir,
 * in the served form, the way the engine would have. */
static void write_segment(const char *dir, uint64_t base, uint32_t n, uint64_t ts, const char *stream) {
  struct sd_segment *seg = NULL;
  char m[EV_BYTES + 1], json[EV_BYTES + 128];
  SD_TEST_RC(sd_segment_create(dir, NULL, 0, base, 4096, &seg), 0);
  for (uint32_t i = 0; i < n; i++) {
    members_for(m, stream, 0, base + i);
    int len = sd_test_expect_json(json, sizeof(json), base + i, 0, m, ts + i);
    struct iovec iov = {json, (size_t)len};
    SD_TEST_RC(sd_segment_append(seg, ts + i, NULL, 0, &iov, 1, (size_t)len), 0);
  }
  assert_int_equal(fdatasync(seg->fd), 0);
  sd_segment_unref(seg);
}

static void replace_partition(struct sd_test_env *t, const char *stream) {
  char dir[PATH_MAX];
  sd_test_path(dir, sizeof(dir), "%s/streams/%s/0", t->data, stream);
  SD_TEST_RC(sd_test_rmtree(dir), 0);
  assert_int_equal(mkdir(dir, 0755), 0);
}

static void test_engine_retention_hours(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream_config c = {1, 1, 0, 0};
  struct sd_stream_config keep = {1, 0, 0, 0};
  create(t, "old", &c);
  create(t, "idle", &c);
  create(t, "keep", &keep);
  SD_TEST_RC(sd_test_env_close(t), 0);

  /* Lay out partitions with events 3 h and 2 h old, and recent ones. */
  uint64_t now = sd_now_ms(), h = 3600000;
  char dir[PATH_MAX];
  replace_partition(t, "old");
  sd_test_path(dir, sizeof(dir), "%s/streams/old/0", t->data);
  write_segment(dir, 0, 5, now - 3 * h, "old");
  write_segment(dir, 5, 5, now - 2 * h, "old");
  write_segment(dir, 10, 3, now - 1000, "old");
  replace_partition(t, "idle");
  sd_test_path(dir, sizeof(dir), "%s/streams/idle/0", t->data);
  write_segment(dir, 0, 4, now - 2 * h, "idle");
  replace_partition(t, "keep");
  sd_test_path(dir, sizeof(dir), "%s/streams/keep/0", t->data);
  write_segment(dir, 0, 5, now - 3 * h, "keep");
  write_segment(dir, 5, 5, now - 2 * h, "keep");

  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream *old = sd_engine_find(t->e, "old"), *idle = sd_engine_find(t->e, "idle");
  struct sd_stream *kp = sd_engine_find(t->e, "keep");
  assert_non_null(old);
  assert_non_null(idle);
  assert_non_null(kp);
  /* Recovered as written, before any retention pass. */
  assert_int_equal(sd_test_pstat(old, 0).next_offset, 13);
  assert_int_equal(sd_test_pstat(idle, 0).next_offset, 4);

  struct ret_wait w1 = {old, 10}, w2 = {idle, 4};
  SD_TEST_RC(sd_test_run_until(&t->loop, min_reached, &w1, 5000), 0);
  SD_TEST_RC(sd_test_run_until(&t->loop, min_reached, &w2, 5000), 0);
  sd_test_run_for(&t->loop, 100);
  struct sd_partition_stat ps = sd_test_pstat(old, 0);
  assert_int_equal(ps.min_offset, 10);
  assert_int_equal(ps.next_offset, 13);
  check_below_min(old, 10);
  check_seq(old, 0, 10, 13);
  /* A partition whose every event expired is empty, but keeps its offsets. */
  ps = sd_test_pstat(idle, 0);
  assert_int_equal(ps.min_offset, 4);
  assert_int_equal(ps.next_offset, 4);
  struct sd_test_recs r = {0};
  SD_TEST_RC(sd_stream_read(idle, 0, 0, 10, SIZE_MAX, sd_test_recs_visit, &r), SD_E_OFFSET_OUT_OF_RANGE);
  assert_int_equal(sd_stream_read(idle, 0, 4, 10, SIZE_MAX, sd_test_recs_visit, &r), 0);
  uint64_t o;
  SD_TEST_RC(sd_stream_resolve_offset(idle, 0, -5, &o), 0);
  assert_int_equal(o, 4);
  append_seq(t, idle, 0, 4, 2);
  check_seq(idle, 0, 4, 6);
  /* Without an age limit nothing goes. */
  assert_int_equal(sd_test_pstat(kp, 0).min_offset, 0);
  check_seq(kp, 0, 0, 10);
  /* The expired files are gone from disk. */
  char path[PATH_MAX];
  sd_test_path(path, sizeof(path), "%s/streams/old/0/00000000000000000000.seg", t->data);
  sd_test_path(dir, sizeof(dir), "%s/streams/old/0/00000000000000000005.seg", t->data);
  for (int i = 0; i < 200 && (sd_test_exists(path) || sd_test_exists(dir)); i++) sd_test_run_for(&t->loop, 10);
  assert_false(sd_test_exists(path));
  assert_false(sd_test_exists(dir));
}

/* A long but allowed age limit (114 years) must not expire recent events. */
static void test_engine_retention_hours_long_limit(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream_config c = {1, 1000000, 0, 0};
  struct sd_stream *s = create(t, "s", &c);
  assert_int_equal(sd_stream_config(s)->retention_hours, 1000000);
  append_seq(t, s, 0, 0, 40);
  sd_test_run_for(&t->loop, 300);
  struct sd_partition_stat ps = sd_test_pstat(s, 0);
  assert_int_equal(ps.min_offset, 0);
  check_seq(s, 0, 0, 40);
}

/* ---- deletion and generations -------------------------------------------------------------- */

static int trash_empty(void *arg) { return sd_test_count_entries(arg) == 0; }

static void test_engine_delete_stream(void **state) {
  struct sd_test_env *t = env(state);
  t->o.durability = SD_DURABILITY_ALWAYS;
  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream_config c = cfg_parts(2);
  struct sd_stream *s = create(t, "gone", &c);
  create(t, "other", NULL);
  append_seq(t, s, 0, 0, 30);
  SD_TEST_RC(sd_test_durable(t, s), 0);
  struct sd_stream_stat st;
  sd_stream_stat(s, &st);
  /* A pending append and a waiter at the moment of deletion. */
  SD_TEST_RC(sd_test_append1(s, "\"late\":1", NULL, NULL, 1, NULL), SD_PENDING);
  struct sd_test_durable *d = sd_test_when_durable(t, s);
  struct sd_test_waiter *w = sd_test_wait(t, s);
  sd_stream_ref(s);
  SD_TEST_RC(sd_engine_delete(t->e, "gone", NULL), 0);
  assert_int_equal(d->fired, 1);
  SD_TEST_RC(d->status, SD_E_STREAM_DELETED);
  assert_int_equal(w->fired, 1);
  SD_TEST_RC(w->status, SD_E_STREAM_DELETED);
  assert_true(sd_stream_deleted(s));
  assert_null(sd_engine_find(t->e, "gone"));
  assert_int_equal(sd_engine_stream_count(t->e), 1);
  SD_TEST_RC(sd_test_append1(s, "\"after\":1", NULL, NULL, -1, NULL), SD_E_STREAM_DELETED);
  sd_stream_unref(s);
  SD_TEST_RC(sd_engine_delete(t->e, "gone", NULL), SD_E_STREAM_NOT_FOUND);

  /* Gone from streams/ at once, and from disk once the loop ran. */
  char path[PATH_MAX], trash[PATH_MAX];
  sd_test_path(path, sizeof(path), "%s/streams/gone", t->data);
  assert_false(sd_test_exists(path));
  sd_test_path(trash, sizeof(trash), "%s/trash", t->data);
  SD_TEST_RC(sd_test_run_until(&t->loop, trash_empty, trash, 5000), 0);
  sd_test_run_for(&t->loop, 50);
  assert_int_equal(sd_test_count_entries(trash), 0);
  assert_false(sd_test_exists(path));

  /* The same name again: a new, empty stream with a higher generation. */
  struct sd_stream *s2 = create(t, "gone", NULL);
  struct sd_stream_stat st2;
  sd_stream_stat(s2, &st2);
  assert_true(st2.generation > st.generation);
  assert_int_equal(sd_test_pstat(s2, 0).next_offset, 0);
  assert_int_equal(sd_stream_config(s2)->partitions, 1);
  append_seq(t, s2, 0, 0, 2);
  SD_TEST_RC(sd_test_durable(t, s2), 0);
  SD_TEST_RC(sd_test_env_close(t), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  s2 = sd_engine_find(t->e, "gone");
  assert_non_null(s2);
  assert_int_equal(sd_stream_config(s2)->partitions, 1);
  check_seq(s2, 0, 0, 2);
}

static void test_engine_delete_then_reopen(void **state) {
  struct sd_test_env *t = env(state);
  struct sd_stream *s = create(t, "a", NULL);
  append_seq(t, s, 0, 0, 20);
  SD_TEST_RC(sd_engine_delete(t->e, "a", NULL), 0);
  SD_TEST_RC(sd_test_env_close(t), 0);
  /* Left-overs in the trash are emptied at start-up. */
  char junk[PATH_MAX];
  sd_test_path(junk, sizeof(junk), "%s/trash/leftover", t->data);
  assert_int_equal(mkdir(junk, 0755), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  assert_null(sd_engine_find(t->e, "a"));
  assert_int_equal(sd_engine_stream_count(t->e), 0);
  assert_false(sd_test_exists(junk));
}

static uint64_t gen_of(struct sd_stream *s) {
  struct sd_stream_stat st;
  sd_stream_stat(s, &st);
  return st.generation;
}

static void test_engine_generation_strictly_increases(void **state) {
  struct sd_test_env *t = env(state);
  uint64_t g1 = gen_of(create(t, "a", NULL));
  uint64_t g2 = gen_of(create(t, "b", NULL));
  assert_true(g2 > g1);
  SD_TEST_RC(sd_engine_delete(t->e, "a", NULL), 0);
  uint64_t g3 = gen_of(create(t, "a", NULL));
  assert_true(g3 > g2);
  SD_TEST_RC(sd_test_env_close(t), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  assert_int_equal(gen_of(sd_engine_find(t->e, "a")), g3);
  assert_int_equal(gen_of(sd_engine_find(t->e, "b")), g2);
  uint64_t g4 = gen_of(create(t, "c", NULL));
  assert_true(g4 > g3);
  /* Delete the newest ones, restart: numbers are not handed out again. */
  SD_TEST_RC(sd_engine_delete(t->e, "c", NULL), 0);
  SD_TEST_RC(sd_engine_delete(t->e, "a", NULL), 0);
  SD_TEST_RC(sd_test_env_close(t), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  uint64_t g5 = gen_of(create(t, "a", NULL));
  assert_true(g5 > g4);
  SD_TEST_RC(sd_engine_delete(t->e, "a", NULL), 0);
  SD_TEST_RC(sd_engine_delete(t->e, "b", NULL), 0);
  SD_TEST_RC(sd_test_env_close(t), 0);
  SD_TEST_RC(sd_test_env_open(t), 0);
  assert_int_equal(sd_engine_stream_count(t->e), 0);
  uint64_t g6 = gen_of(create(t, "z", NULL));
  assert_true(g6 > g5);
}

/* ---- counters and consumers ------------------------------------------------------------------ */

struct consumers {
  char names[8][64];
  uint32_t part[8];
  uint64_t off[8], seen[8];
  int n;
};

static void collect_consumer(void *arg, const struct sd_consumer_pos *p) {
  struct consumers *c = arg;
  assert_true(c->n < 8);
  snprintf(c->names[c->n], sizeof(c->names[0]), "%s", p->consumer);
  c->part[c->n] = p->partition;
  c->off[c->n] = p->offset;
  c->seen[c->n] = p->last_seen_ms;
  c->n++;
}

static void test_engine_consumers_and_counters(void **state) {
  struct sd_test_env *t = env(state);
  t->o.max_consumers_tracked = 3;
  SD_TEST_RC(sd_test_env_open(t), 0);
  struct sd_stream_config cfg = cfg_parts(2);
  struct sd_stream *s = create(t, "s", &cfg);
  sd_stream_consumer_seen(s, "bob", 0, 5, 1000);
  sd_stream_consumer_seen(s, "alice", 1, 7, 2000);
  sd_stream_consumer_seen(s, "bob", 0, 9, 3000); /* update */
  struct consumers c = {0};
  sd_stream_consumers_foreach(s, collect_consumer, &c);
  assert_int_equal(c.n, 2);
  assert_string_equal(c.names[0], "alice");
  assert_int_equal(c.part[0], 1);
  assert_int_equal(c.off[0], 7);
  assert_string_equal(c.names[1], "bob");
  assert_int_equal(c.off[1], 9);
  assert_int_equal(c.seen[1], 3000);
  /* Past the limit the one seen longest ago is forgotten (alice, 2000). */
  sd_stream_consumer_seen(s, "carol", 0, 1, 4000);
  sd_stream_consumer_seen(s, "dave", 1, 2, 5000);
  memset(&c, 0, sizeof(c));
  sd_stream_consumers_foreach(s, collect_consumer, &c);
  assert_int_equal(c.n, 3);
  assert_string_equal(c.names[0], "bob");
  assert_string_equal(c.names[1], "carol");
  assert_string_equal(c.names[2], "dave");

  sd_stream_subscribers_add(s, 3);
  sd_stream_subscribers_add(s, -1);
  sd_stream_count_consumed(s, 11);
  SD_TEST_RC(sd_test_append1(s, "\"e\":1", NULL, NULL, -1, NULL), 0);
  SD_TEST_RC(sd_test_append1(s, "\"e\":1", NULL, "dup", -1, NULL), 0);
  SD_TEST_RC(sd_test_append1(s, "\"e\":1", NULL, "dup", -1, NULL), 0);
  struct sd_stream_stat st;
  sd_stream_stat(s, &st);
  assert_int_equal(st.subscribers, 2);
  assert_int_equal(st.total_consumed, 11);
  assert_int_equal(st.total_published, 2);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, sd_test_setup_open, sd_test_teardown)
#define U(f) cmocka_unit_test_setup_teardown(f, sd_test_setup, sd_test_teardown) /* opens itself */
  const struct CMUnitTest tests[] = {
      T(test_engine_name_check),
      U(test_engine_open_checks_options),
      T(test_engine_create_stream),
      U(test_engine_max_streams),
      T(test_engine_foreach_in_name_order),
      T(test_engine_append_single_across_segments),
      T(test_engine_append_batch_across_segments),
      T(test_engine_read_limits),
      T(test_engine_batch_all_or_nothing),
      U(test_engine_max_event_bytes_enforced),
      T(test_engine_partitions_keys_round_robin),
      T(test_engine_negative_partition_refused),
      T(test_engine_resolve_offset),
      T(test_engine_read_merged),
      T(test_engine_idempotent_ids),
      U(test_engine_idempotency_window_expires),
      U(test_engine_durability_always),
      U(test_engine_durability_interval_visible_at_once),
      U(test_engine_durability_never_visible_at_once),
      T(test_engine_wait_fires_on_append),
      U(test_engine_wait_always_mode_after_sync),
      T(test_engine_reopen_recovers_everything),
      U(test_engine_reopen_always_mode),
      T(test_engine_torn_tail_recovered),
      T(test_engine_torn_first_record_of_active_segment),
      T(test_engine_segment_bytes_raised_empty_active),
      T(test_engine_damaged_sealed_segment_read_corrupt),
      T(test_engine_bad_segment_header_set_aside),
      T(test_engine_corrupt_meta_refused),
      U(test_engine_recover_after_crash),
      T(test_engine_retention_max_events),
      T(test_engine_retention_bytes),
      T(test_engine_retention_hours),
      T(test_engine_retention_hours_long_limit),
      U(test_engine_delete_stream),
      T(test_engine_delete_then_reopen),
      T(test_engine_generation_strictly_increases),
      U(test_engine_consumers_and_counters),
  };
#undef T
#undef U
  return cmocka_run_group_tests_name("engine", tests, NULL, NULL);
}
