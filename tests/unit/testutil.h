/*
 * testutil.h - support for the unit tests: a fresh temporary directory and
 * uv loop per test, an engine opened on them, bounded waits on the loop,
 * copies of visited records, and small file helpers.
 *
 * Ownership: struct sd_test_env is allocated by sd_test_env_new and freed by
 * sd_test_env_free, which closes the engine if still open, checks that the
 * loop closes without leaked handles and removes the directory.  Durable ops
 * and waiters handed to the engine live inside the env (not on a test's
 * stack), so that a test that fails half-way leaves nothing dangling that the
 * engine could call back during teardown.
 */
#ifndef STREAMD_TESTUTIL_H
#define STREAMD_TESTUTIL_H

#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "streamd/engine.h"
#include "streamd/err.h"

/* Fails the current cmocka test when got != want, naming both codes. */
#define SD_TEST_RC(got, want) sd_test_rc((int)(got), (int)(want), #got, __FILE__, __LINE__)
void sd_test_rc(int got, int want, const char *expr, const char *file, int line);

#define SD_TEST_SLOTS 32

/* A durable op whose completion is recorded. */
struct sd_test_durable {
  struct sd_durable_op op;
  int fired;  /* times cb ran */
  int status; /* status of the last run */
};

/* A stream waiter whose wake-up is recorded. */
struct sd_test_waiter {
  struct sd_waiter w;
  int fired;
  int status;
};

struct sd_test_env {
  char dir[PATH_MAX];  /* mkdtemp'd directory, removed by sd_test_env_free */
  char data[PATH_MAX]; /* dir/data: the engine's data directory */
  uv_loop_t loop;
  struct sd_engine_options o; /* data_dir points at data[] */
  struct sd_engine *e;        /* NULL when closed */
  struct sd_test_durable dur[SD_TEST_SLOTS];
  struct sd_test_waiter wait[SD_TEST_SLOTS];
  int ndur, nwait; /* next slot to try */
};

/* Creates the temp directory and the loop; options: defaults with
 * durability INTERVAL (interval 50 ms), segment_bytes 4096, retention off,
 * retention_check_ms 20.  The engine is not opened.  0 or -errno. */
int sd_test_env_new(struct sd_test_env **out);
/* Opens t->e with t->o.  Engine errors. */
int sd_test_env_open(struct sd_test_env *t);
/* sd_engine_close; returns its result.  No-op (0) when not open. */
int sd_test_env_close(struct sd_test_env *t);
/* Closes, checks uv_loop_close() == 0 (a failed check fails the test),
 * removes the directory and frees.  Accepts NULL. */
void sd_test_env_free(struct sd_test_env *t);
/* cmocka fixtures around the above (state is the env). */
int sd_test_setup(void **state);
int sd_test_setup_open(void **state);
int sd_test_teardown(void **state);

/* Runs the loop until done(arg) is non-zero or timeout_ms pass; a 5 ms
 * timer keeps each pass short.  0 or -ETIMEDOUT. */
int sd_test_run_until(uv_loop_t *loop, int (*done)(void *arg), void *arg, uint64_t timeout_ms);
/* Until *flag != 0. */
int sd_test_run_until_flag(uv_loop_t *loop, const int *flag, uint64_t timeout_ms);
/* Runs the loop for about ms milliseconds. */
void sd_test_run_for(uv_loop_t *loop, uint64_t ms);

/* Registers a durable op on s (slot from t->dur); returns the slot. */
struct sd_test_durable *sd_test_when_durable(struct sd_test_env *t, struct sd_stream *s);
/* Registers and waits (5 s); returns the op's status or -ETIMEDOUT. */
int sd_test_durable(struct sd_test_env *t, struct sd_stream *s);
/* Registers a waiter on s; returns the slot. */
struct sd_test_waiter *sd_test_wait(struct sd_test_env *t, struct sd_stream *s);

/* A copy of a visited record (json and id NUL-terminated). */
struct sd_test_rec {
  uint32_t partition;
  uint64_t offset;
  uint64_t ts;
  char *json;
  uint32_t json_len;
  char *id; /* NULL when the record has none */
  uint32_t id_len;
};
struct sd_test_recs {
  struct sd_test_rec *v;
  size_t n, cap;
  size_t stop_after; /* visitor returns 1 once n reaches it (0: never) */
};
/* sd_record_visit_fn appending a copy to the sd_test_recs at arg. */
int sd_test_recs_visit(void *arg, const struct sd_record *rec);
void sd_test_recs_free(struct sd_test_recs *r);

/* Reads partition p from `from` to its end into r (appending); returns the
 * read's last result (count or error). */
int sd_test_read_all(struct sd_stream *s, uint32_t p, uint64_t from, struct sd_test_recs *r);

/* Event members of exactly `len` bytes: "event":"t","data":"<tag>xxxx..." */
void sd_test_members(char *buf, size_t len, const char *tag);
/* Expected served JSON for a record. */
int sd_test_expect_json(char *buf, size_t cap, uint64_t offset, uint32_t partition, const char *members,
                        uint64_t ts);

/* Appends one event (members text, optional key/id/partition) and returns
 * the append result code; res may be NULL. */
int sd_test_append1(struct sd_stream *s, const char *members, const char *key, const char *id, int32_t partition,
                    struct sd_append_result *res);

/* Partition stat shortcut (asserts success). */
struct sd_partition_stat sd_test_pstat(const struct sd_stream *s, uint32_t p);

/* Files. */
int sd_test_path(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int sd_test_exists(const char *path);
int64_t sd_test_file_size(const char *path);
/* Reads a whole file into a malloc'd buffer.  0 or -errno. */
int sd_test_read_file(const char *path, char **data, size_t *len);
/* XORs the byte at pos with mask.  0 or -errno. */
int sd_test_flip_byte(const char *path, uint64_t pos, uint8_t mask);
/* rm -rf.  0 or -errno. */
int sd_test_rmtree(const char *path);
/* Number of directory entries other than . and ..; -errno on error. */
int sd_test_count_entries(const char *dir);
/* Base of the newest "<base>.seg" in dir into *base; 0 or -ENOENT. */
int sd_test_newest_segment(const char *dir, uint64_t *base, uint32_t *nsegs);

#endif
