/*
 * test_engine_model.c - the engine driven by seeded random operations and
 * checked after each one against a reference model kept here: streams with
 * per-partition record lists, idempotency ids and key placement.  Operations:
 * create, append batches (keys, explicit and invalid partitions, duplicate
 * ids), per-partition and merged reads, close/reopen, a torn tail cut into
 * the newest segment while closed, and delete.
 *
 * The seed is printed; STREAMD_TEST_SEED=<n> replays one, STREAMD_TEST_OPS
 * sets the number of operations (default 400).  The default seeds are fixed
 * so that a run is reproducible.
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
#include <unistd.h>

#include <cmocka.h>

#include "storage/segment.h"
#include "testutil.h"

#define NSTREAMS 3
#define NIDS 40
#define NKEYS 8
#define MAXP 4

struct mrec {
  char *members;
  int id; /* index into the id pool, -1 for none */
};

struct mpart {
  struct mrec *v;
  uint64_t n, cap;
};

struct mstream {
  int exists;
  uint32_t partitions;
  struct mpart p[MAXP];
  int64_t id_part[NIDS]; /* -1: id not stored; else partition */
  uint64_t id_off[NIDS];
  int32_t key_part[NKEYS]; /* -1: not seen */
};

struct model {
  struct sd_test_env *t;
  uint64_t seed, rng;
  int op;
  struct mstream s[NSTREAMS];
};

static uint64_t rnd(struct model *m) {
  /* splitmix64 */
  uint64_t z = (m->rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static uint32_t below(struct model *m, uint32_t n) { return (uint32_t)(rnd(m) % n); }

#define CHECK(m, cond, ...)                                                                           \
  do {                                                                                                \
    if (!(cond)) {                                                                                    \
      print_error("seed %llu, operation %d: ", (unsigned long long)(m)->seed, (m)->op);               \
      fail_msg(__VA_ARGS__);                                                                          \
    }                                                                                                 \
  } while (0)

static const char *sname(int i) {
  static const char *const n[NSTREAMS] = {"m0", "m1", "m2"};
  return n[i];
}
static void idname(char *buf, int id) { snprintf(buf, 16, "id-%d", id); }
static void keyname(char *buf, int k) { snprintf(buf, 16, "key-%d", k); }

static void mpart_push(struct mpart *p, char *members, int id) {
  if (p->n == p->cap) {
    p->cap = p->cap ? p->cap * 2 : 64;
    p->v = realloc(p->v, p->cap * sizeof(*p->v));
    assert_non_null(p->v);
  }
  p->v[p->n++] = (struct mrec){members, id};
}

static void mstream_clear(struct mstream *ms) {
  for (int p = 0; p < MAXP; p++) {
    for (uint64_t i = 0; i < ms->p[p].n; i++) free(ms->p[p].v[i].members);
    free(ms->p[p].v);
  }
  memset(ms, 0, sizeof(*ms));
  for (int i = 0; i < NIDS; i++) ms->id_part[i] = -1;
  for (int k = 0; k < NKEYS; k++) ms->key_part[k] = -1;
}

/* ---- checks ------------------------------------------------------------------------ */

static void check_rec(struct model *m, const struct sd_test_rec *r, uint32_t p, uint64_t off,
                      const struct mrec *want) {
  char head[64], idb[16];
  int hl = snprintf(head, sizeof(head), "{\"offset\":%llu,\"partition\":%u,", (unsigned long long)off, p);
  size_t ml = strlen(want->members);
  CHECK(m, r->partition == p && r->offset == off, "record p%u o%llu read as p%u o%llu", p, (unsigned long long)off,
        r->partition, (unsigned long long)r->offset);
  CHECK(m, r->json_len > (size_t)hl + ml && memcmp(r->json, head, (size_t)hl) == 0 &&
               memcmp(r->json + hl, want->members, ml) == 0 &&
               strncmp(r->json + hl + ml, ",\"timestamp\":", 13) == 0,
        "record p%u o%llu: JSON %s does not hold members %s", p, (unsigned long long)off, r->json, want->members);
  if (want->id < 0) {
    CHECK(m, r->id == NULL, "record p%u o%llu has an id", p, (unsigned long long)off);
  } else {
    idname(idb, want->id);
    CHECK(m, r->id != NULL && strcmp(r->id, idb) == 0, "record p%u o%llu: id %s, want %s", p,
          (unsigned long long)off, r->id ? r->id : "(none)", idb);
  }
}

static void check_stream(struct model *m, int si) {
  struct mstream *ms = &m->s[si];
  struct sd_stream *s = sd_engine_find(m->t->e, sname(si));
  if (!ms->exists) {
    CHECK(m, s == NULL, "stream %s exists", sname(si));
    return;
  }
  CHECK(m, s != NULL, "stream %s missing", sname(si));
  CHECK(m, sd_stream_config(s)->partitions == ms->partitions, "stream %s partitions", sname(si));
  for (uint32_t p = 0; p < ms->partitions; p++) {
    struct sd_partition_stat st = sd_test_pstat(s, p);
    CHECK(m, st.next_offset == ms->p[p].n, "%s/%u next_offset %llu, model %llu", sname(si), p,
          (unsigned long long)st.next_offset, (unsigned long long)ms->p[p].n);
    CHECK(m, st.min_offset == 0, "%s/%u min_offset %llu", sname(si), p, (unsigned long long)st.min_offset);
  }
}

static void check_all(struct model *m, int full) {
  for (int si = 0; si < NSTREAMS; si++) {
    check_stream(m, si);
    if (!full || !m->s[si].exists) continue;
    struct sd_stream *s = sd_engine_find(m->t->e, sname(si));
    for (uint32_t p = 0; p < m->s[si].partitions; p++) {
      struct sd_test_recs r = {0};
      int rc = sd_test_read_all(s, p, 0, &r);
      CHECK(m, rc >= 0, "read %s/%u: %s", sname(si), p, sd_strerror(rc));
      CHECK(m, r.n == m->s[si].p[p].n, "%s/%u read %zu records, model %llu", sname(si), p, r.n,
            (unsigned long long)m->s[si].p[p].n);
      for (size_t i = 0; i < r.n; i++) check_rec(m, &r.v[i], p, i, &m->s[si].p[p].v[i]);
      sd_test_recs_free(&r);
    }
  }
}

/* ---- operations ------------------------------------------------------------------------ */

static void op_create(struct model *m, int si) {
  struct mstream *ms = &m->s[si];
  struct sd_stream_config c = {1 + below(m, MAXP), 0, 0, 0};
  struct sd_stream *s = NULL;
  int created = 0;
  int rc = sd_engine_create(m->t->e, sname(si), &c, 0, &s, &created);
  if (ms->exists) {
    if (c.partitions == ms->partitions)
      CHECK(m, rc == 0 && created == 0, "re-create %s: %s", sname(si), sd_strerror(rc));
    else
      CHECK(m, rc == SD_E_CONFIG_MISMATCH, "re-create %s other cfg: %s", sname(si), sd_strerror(rc));
    return;
  }
  CHECK(m, rc == 0 && created == 1, "create %s: %s", sname(si), sd_strerror(rc));
  mstream_clear(ms);
  ms->exists = 1;
  ms->partitions = c.partitions;
}

static void op_append(struct model *m, int si) {
  struct mstream *ms = &m->s[si];
  struct sd_stream *s = sd_engine_find(m->t->e, sname(si));
  enum { MAXB = 6 };
  struct sd_event_in ev[MAXB];
  struct sd_append_result res[MAXB];
  char *mem[MAXB];
  char ids[MAXB][16], keys[MAXB][16];
  int idx[MAXB], kx[MAXB];
  uint32_t n = 1 + below(m, MAXB);
  int invalid = 0;
  for (uint32_t i = 0; i < n; i++) {
    size_t len = 12 + below(m, 380);
    mem[i] = malloc(len + 64);
    assert_non_null(mem[i]);
    int h = snprintf(mem[i], 64, "\"op\":%d,\"i\":%u,\"pad\":\"", m->op, i);
    memset(mem[i] + h, 'a' + (char)below(m, 26), len);
    strcpy(mem[i] + h + len, "\"");
    ev[i] = (struct sd_event_in){mem[i], strlen(mem[i]), NULL, 0, NULL, 0, -1};
    idx[i] = below(m, 3) == 0 ? (int)below(m, NIDS) : -1;
    if (idx[i] >= 0) {
      idname(ids[i], idx[i]);
      ev[i].id = ids[i];
      ev[i].id_len = strlen(ids[i]);
    }
    kx[i] = -1;
    uint32_t route = below(m, 10);
    if (route < 3) {
      kx[i] = (int)below(m, NKEYS);
      keyname(keys[i], kx[i]);
      ev[i].key = keys[i];
      ev[i].key_len = strlen(keys[i]);
    } else if (route < 6) {
      ev[i].partition = (int32_t)below(m, ms->partitions);
    } else if (route == 6 && below(m, 8) == 0) {
      ev[i].partition = (int32_t)(ms->partitions + below(m, 3));
      invalid = 1;
    }
  }
  uint64_t before[MAXP];
  for (uint32_t p = 0; p < ms->partitions; p++) before[p] = ms->p[p].n;
  int rc = sd_stream_append(s, ev, n, res);
  if (invalid) {
    CHECK(m, rc == SD_E_INVALID_PARAMETER, "batch with a bad partition: %s", sd_strerror(rc));
    for (uint32_t i = 0; i < n; i++) free(mem[i]);
    return;
  }
  int always = m->t->o.durability == SD_DURABILITY_ALWAYS;
  CHECK(m, rc == 0 || (always && rc == SD_PENDING), "append of %u: %s", n, sd_strerror(rc));
  uint32_t published = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (idx[i] >= 0 && ms->id_part[idx[i]] >= 0) {
      CHECK(m, res[i].duplicate && res[i].partition == (uint32_t)ms->id_part[idx[i]] &&
                   res[i].offset == ms->id_off[idx[i]],
            "event %u with known id %d: dup=%d p%u o%llu, model p%lld o%llu", i, idx[i], res[i].duplicate,
            res[i].partition, (unsigned long long)res[i].offset, (long long)ms->id_part[idx[i]],
            (unsigned long long)ms->id_off[idx[i]]);
      free(mem[i]);
      continue;
    }
    uint32_t p = res[i].partition;
    CHECK(m, !res[i].duplicate, "event %u flagged duplicate", i);
    CHECK(m, p < ms->partitions, "event %u partition %u", i, p);
    if (ev[i].partition >= 0) CHECK(m, p == (uint32_t)ev[i].partition, "explicit partition not kept");
    if (kx[i] >= 0) {
      if (ms->key_part[kx[i]] < 0) ms->key_part[kx[i]] = (int32_t)p;
      CHECK(m, (int32_t)p == ms->key_part[kx[i]], "key %d moved from p%d to p%u", kx[i], ms->key_part[kx[i]], p);
    }
    CHECK(m, res[i].offset == ms->p[p].n, "event %u offset %llu, model next %llu", i,
          (unsigned long long)res[i].offset, (unsigned long long)ms->p[p].n);
    mpart_push(&ms->p[p], mem[i], idx[i]);
    published++;
    if (idx[i] >= 0) {
      ms->id_part[idx[i]] = p;
      ms->id_off[idx[i]] = res[i].offset;
    }
  }
  if (always && published > 0) CHECK(m, rc == SD_PENDING, "always mode answered at once");
  if (always) {
    /* Nothing new is visible before the sync; all of it after. */
    for (uint32_t p = 0; p < ms->partitions; p++)
      CHECK(m, sd_test_pstat(s, p).next_offset == before[p], "p%u visible before its sync", p);
    rc = sd_test_durable(m->t, s);
    CHECK(m, rc == 0, "durable: %s", sd_strerror(rc));
  }
}

static void op_read(struct model *m, int si) {
  struct mstream *ms = &m->s[si];
  struct sd_stream *s = sd_engine_find(m->t->e, sname(si));
  uint32_t p = below(m, ms->partitions);
  uint64_t n = ms->p[p].n;
  int64_t from = below(m, 2) ? (int64_t)below(m, (uint32_t)n + 3) : -(int64_t)(1 + below(m, (uint32_t)n + 3));
  uint64_t start;
  int rc = sd_stream_resolve_offset(s, p, from, &start);
  CHECK(m, rc == 0, "resolve %lld: %s", (long long)from, sd_strerror(rc));
  uint64_t want_start = from >= 0 ? (uint64_t)from : ((uint64_t)-from >= n ? 0 : n - (uint64_t)-from);
  CHECK(m, start == want_start, "resolve %lld on %llu records = %llu", (long long)from, (unsigned long long)n,
        (unsigned long long)start);
  uint32_t limit = 1 + below(m, 40);
  struct sd_test_recs r = {0};
  rc = sd_stream_read(s, p, start, limit, SIZE_MAX, sd_test_recs_visit, &r);
  uint64_t want = start >= n ? 0 : (n - start < limit ? n - start : limit);
  CHECK(m, rc == (int)want && r.n == want, "read p%u from %llu limit %u: %d, want %llu", p,
        (unsigned long long)start, limit, rc, (unsigned long long)want);
  for (size_t i = 0; i < r.n; i++) check_rec(m, &r.v[i], p, start + i, &ms->p[p].v[start + i]);
  sd_test_recs_free(&r);
}

static void op_read_merged(struct model *m, int si) {
  struct mstream *ms = &m->s[si];
  struct sd_stream *s = sd_engine_find(m->t->e, sname(si));
  uint64_t total = 0;
  for (uint32_t p = 0; p < ms->partitions; p++) total += ms->p[p].n;
  uint64_t k = 1 + below(m, (uint32_t)total + 5);
  struct sd_test_recs r = {0};
  int rc = sd_stream_read_merged(s, -(int64_t)k, 100000, SIZE_MAX, sd_test_recs_visit, &r);
  uint64_t want = k < total ? k : total;
  CHECK(m, rc == (int)want, "merged -%llu of %llu: %d", (unsigned long long)k, (unsigned long long)total, rc);
  uint64_t per[MAXP] = {0};
  for (size_t i = 0; i < r.n; i++) {
    const struct sd_test_rec *a = &r.v[i];
    CHECK(m, a->partition < ms->partitions && a->offset < ms->p[a->partition].n, "merged record out of range");
    check_rec(m, a, a->partition, a->offset, &ms->p[a->partition].v[a->offset]);
    per[a->partition]++;
    if (i > 0) {
      const struct sd_test_rec *b = &r.v[i - 1];
      CHECK(m, b->ts < a->ts || (b->ts == a->ts && b->partition <= a->partition), "merged order");
    }
  }
  /* Each partition contributes a suffix of its records. */
  for (size_t i = 0; i < r.n; i++) {
    const struct sd_test_rec *a = &r.v[i];
    CHECK(m, a->offset >= ms->p[a->partition].n - per[a->partition], "merged -N skipped newer records of p%u",
          a->partition);
  }
  sd_test_recs_free(&r);
}

static void op_reopen(struct model *m) {
  int rc = sd_test_env_close(m->t);
  CHECK(m, rc == 0, "close: %s", sd_strerror(rc));
  rc = sd_test_env_open(m->t);
  CHECK(m, rc == 0, "open: %s", sd_strerror(rc));
}

/* Closes, cuts the last record of one partition's newest segment in half
 * (when that segment holds two records or more), reopens. */
static void op_torn_tail(struct model *m, int si) {
  struct mstream *ms = &m->s[si];
  uint32_t p = below(m, ms->partitions);
  int rc = sd_test_env_close(m->t);
  CHECK(m, rc == 0, "close: %s", sd_strerror(rc));
  char dir[PATH_MAX], path[PATH_MAX], *img;
  size_t len;
  uint64_t base = 0;
  uint32_t pos[128];
  sd_test_path(dir, sizeof(dir), "%s/streams/%s/%u", m->t->data, sname(si), p);
  SD_TEST_RC(sd_test_newest_segment(dir, &base, NULL), 0);
  sd_segment_path(path, sizeof(path), dir, base, "seg");
  SD_TEST_RC(sd_test_read_file(path, &img, &len), 0);
  uint32_t n = sd_segment_scan(img, len, base, pos, 128, NULL, NULL);
  free(img);
  if (n >= 2) {
    CHECK(m, base + n == ms->p[p].n, "newest segment of %s/%u ends at %llu, model %llu", sname(si), p,
          (unsigned long long)(base + n), (unsigned long long)ms->p[p].n);
    assert_int_equal(truncate(path, (off_t)pos[n - 1] + 40), 0);
    struct mrec *last = &ms->p[p].v[--ms->p[p].n];
    if (last->id >= 0) ms->id_part[last->id] = -1;
    free(last->members);
  }
  rc = sd_test_env_open(m->t);
  CHECK(m, rc == 0, "open: %s", sd_strerror(rc));
}

static void op_delete(struct model *m, int si) {
  int rc = sd_engine_delete(m->t->e, sname(si), NULL);
  CHECK(m, rc == 0, "delete %s: %s", sname(si), sd_strerror(rc));
  mstream_clear(&m->s[si]);
}

static void run_model(struct sd_test_env *t, enum sd_durability mode, uint64_t default_seed) {
  struct model *m = calloc(1, sizeof(*m));
  assert_non_null(m);
  const char *es = getenv("STREAMD_TEST_SEED"), *eo = getenv("STREAMD_TEST_OPS");
  m->seed = es ? strtoull(es, NULL, 0) : default_seed;
  m->rng = m->seed;
  int ops = eo ? atoi(eo) : 400;
  print_message("model: seed %llu, %d operations (STREAMD_TEST_SEED=%llu replays)\n", (unsigned long long)m->seed,
                ops, (unsigned long long)m->seed);
  m->t = t;
  for (int i = 0; i < NSTREAMS; i++) mstream_clear(&m->s[i]);
  t->o.durability = mode;
  SD_TEST_RC(sd_test_env_open(t), 0);
  for (m->op = 0; m->op < ops; m->op++) {
    int si = (int)below(m, NSTREAMS);
    uint32_t what = below(m, 100);
    if (!m->s[si].exists || what < 3) {
      op_create(m, si);
    } else if (what < 55) {
      op_append(m, si);
    } else if (what < 75) {
      op_read(m, si);
    } else if (what < 85) {
      op_read_merged(m, si);
    } else if (what < 90) {
      op_reopen(m);
    } else if (what < 95) {
      op_torn_tail(m, si);
    } else if (what < 97) {
      op_delete(m, si);
    } else {
      check_all(m, 1);
    }
    check_all(m, 0);
  }
  check_all(m, 1);
  op_reopen(m);
  check_all(m, 1);
  for (int i = 0; i < NSTREAMS; i++) mstream_clear(&m->s[i]);
  free(m);
}

static void test_model_interval(void **state) { run_model(*state, SD_DURABILITY_INTERVAL, 20261127); }
static void test_model_always(void **state) { run_model(*state, SD_DURABILITY_ALWAYS, 4242); }
static void test_model_never(void **state) { run_model(*state, SD_DURABILITY_NEVER, 777); }

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, sd_test_setup, sd_test_teardown)
  const struct CMUnitTest tests[] = {
      T(test_model_interval),
      T(test_model_always),
      T(test_model_never),
  };
#undef T
  return cmocka_run_group_tests_name("engine_model", tests, NULL, NULL);
}
