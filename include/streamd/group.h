/*
 * group.h - consumer groups: a position kept on the server per group, and
 * every event of a stream handed to one of the group's consumers.
 *
 * Modes: shared (any consumer gets the next events) or partitioned (each
 * partition owned by one live consumer, rebalanced on join, leave and
 * session timeout; a partition changes hands only once its pending events
 * are settled, i.e. at a committed position).  Acks: auto (done on
 * delivery) or explicit (pending until acked; redelivered after
 * ack_timeout_ms; set aside as dead after max_deliveries).
 *
 * State is kept in <stream>/groups.log, an append-only log of changes
 * synced with the stream's group commit (format in group.c), compacted
 * into a snapshot when it grows.  Runs on the loop thread, like engine.h.
 */
#ifndef STREAMD_GROUP_H
#define STREAMD_GROUP_H

#include <stddef.h>
#include <stdint.h>

#include "streamd/engine.h"

struct sd_group;

struct sd_group_config {
  int partitioned;             /* 0: shared */
  int explicit_ack;            /* 0: auto */
  int start_latest;            /* 0: earliest */
  uint64_t ack_timeout_ms;     /* explicit: redelivery after this */
  uint32_t max_deliveries;     /* explicit: dead after this many, 0 = unlimited */
  uint64_t session_timeout_ms; /* a consumer is live while seen within this */
};

void sd_group_config_default(struct sd_group_config *c);

/* Creates a group at the start of every partition (earliest) or at the end
 * (latest).  SD_E_GROUP_EXISTS, SD_E_INVALID_NAME, SD_E_INVALID_PARAMETER,
 * -ENOMEM, -errno (its log record could not be written). */
int sd_group_create(struct sd_stream *s, const char *name, const struct sd_group_config *cfg, struct sd_group **out);
/* NULL when missing. */
struct sd_group *sd_group_find(struct sd_stream *s, const char *name);
/* Calls fn for each group of s in name order. */
void sd_group_foreach(struct sd_stream *s, void (*fn)(void *arg, struct sd_group *g), void *arg);
/* Deletes a group; its waiters get SD_E_GROUP_NOT_FOUND.  SD_E_GROUP_NOT_FOUND. */
int sd_group_delete(struct sd_stream *s, const char *name);

void sd_group_ref(struct sd_group *g);
void sd_group_unref(struct sd_group *g);
int sd_group_deleted(const struct sd_group *g);
const char *sd_group_name(const struct sd_group *g);
const struct sd_group_config *sd_group_config(const struct sd_group *g);
struct sd_stream *sd_group_stream(const struct sd_group *g);

/* Delivers up to limit events to consumer (NULL: the anonymous shared
 * cursor; required in partitioned mode): first events due for redelivery,
 * then new ones.  fn gets each with its delivery count (1 the first time);
 * views are valid during the call.  Returns the number delivered, or
 * SD_E_CONSUMER_REQUIRED, SD_E_CORRUPT, -errno. */
typedef int (*sd_group_visit_fn)(void *arg, const struct sd_record *rec, uint32_t deliveries);
int sd_group_fetch(struct sd_group *g, const char *consumer, uint32_t limit, size_t max_bytes,
                   sd_group_visit_fn fn, void *arg);

/* Settles offsets from..to (inclusive) of a partition; *acked counts the
 * ones this call settled (already settled or never delivered: 0).  In auto
 * mode nothing is settled.  SD_E_INVALID_PARAMETER (partition). */
int sd_group_ack(struct sd_group *g, const char *consumer, uint32_t partition, uint64_t from, uint64_t to,
                 uint64_t *acked);

/* A consumer leaves: its pending events go back to the group, its
 * partitions are rebalanced.  SD_E_CONSUMER_NOT_FOUND. */
int sd_group_leave(struct sd_group *g, const char *consumer);

/* Pending events last delivered to consumer. */
uint32_t sd_group_pending_of(const struct sd_group *g, const char *consumer);

/* A WebSocket connection of consumer opens (+1) or closes (-1): a
 * consumer with an open connection stays live. */
void sd_group_attach(struct sd_group *g, const char *consumer, int delta);

/* Marks consumer as seen now (joining it if new). */
void sd_group_touch(struct sd_group *g, const char *consumer);

struct sd_group_stat {
  uint64_t pending;  /* delivered, not settled */
  uint64_t dead;     /* set aside after max_deliveries */
  uint64_t skipped;  /* removed by retention before the group consumed them */
};
void sd_group_stat(const struct sd_group *g, struct sd_group_stat *out);
/* Committed offset (first not settled) of a partition. */
uint64_t sd_group_committed(const struct sd_group *g, uint32_t partition);
/* Calls fn for each live consumer in name order with its partitions
 * (partitioned mode; none in shared mode). */
void sd_group_consumers(const struct sd_group *g,
                        void (*fn)(void *arg, const char *name, uint64_t last_seen, const uint32_t *parts,
                                   uint32_t nparts),
                        void *arg);
/* Visits up to limit dead events, oldest first, with their delivery counts. */
int sd_group_dead(struct sd_group *g, uint32_t limit, sd_group_visit_fn fn, void *arg);

/* Waits until fetch may find something: new records, a redelivery due,
 * a rebalance; cb gets SD_E_GROUP_NOT_FOUND / SD_E_STREAM_DELETED when
 * the group or stream goes.  Like sd_stream_wait. */
void sd_group_wait(struct sd_group *g, struct sd_waiter *w);

/* ---- for engine.c ---- */
struct sd_groups;
int sd_groups_open(struct sd_stream *s, const char *dir, struct sd_groups **out);
void sd_groups_free(struct sd_groups *gs);
/* Called by the stream's sync job: a dup'd descriptor of the log to sync
 * (or -1), and a compaction rename to make (paths owned by gs). */
int sd_groups_sync_begin(struct sd_groups *gs, const char **rename_from, const char **rename_to);
/* Thread pool side of the sync: fdatasync, the rename, the directory. */
int sd_groups_sync_work(int fd, const char *rename_from, const char *rename_to, const char *dir);
void sd_groups_sync_end(struct sd_groups *gs, int err);
/* Retention moved min offsets: skip what the groups never consumed. */
void sd_groups_retention(struct sd_groups *gs);
/* Wakes group waiters (new records). */
void sd_groups_wake(struct sd_groups *gs, int status);

#endif
