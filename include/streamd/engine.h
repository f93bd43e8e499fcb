/*
 * engine.h - the storage engine: named streams of partitioned, append-only,
 * durable logs.  It knows nothing of HTTP; any transport drives it through
 * this interface.
 *
 * Threading: every function here runs on the thread of the uv loop given to
 * sd_engine_open.  Blocking disk work (fsync, pre-allocation, deletion) runs
 * on libuv's thread pool; its completions come back on the loop thread.
 *
 * Records are stored in the form in which they are served: one JSON object
 *   {"offset":O,"partition":P,<members>,"timestamp":T}
 * where <members> are the event's own members (event, key, headers, id,
 * data) exactly as the transport supplied them.
 *
 * Visibility: an appended record becomes visible to readers when it is
 * durable per the durability mode: after its sync in SD_DURABILITY_ALWAYS,
 * at once in the other modes.  Readers never see a record that a crash
 * could take back in `always` mode.
 */
#ifndef STREAMD_ENGINE_H
#define STREAMD_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "streamd/list.h"

enum sd_durability {
  SD_DURABILITY_ALWAYS,   /* answer after fdatasync; concurrent appends share one sync */
  SD_DURABILITY_INTERVAL, /* fdatasync every interval_ms */
  SD_DURABILITY_NEVER     /* the OS decides; synced on close */
};

#define SD_MAX_PARTITIONS 1024
#define SD_MAX_NAME 255
#define SD_MAX_ID 128

struct sd_stream_config {
  uint32_t partitions;      /* 1..SD_MAX_PARTITIONS */
  uint64_t retention_hours; /* 0 = unlimited */
  uint64_t retention_bytes; /* per partition, 0 = unlimited */
  uint64_t max_events;      /* per partition, 0 = unlimited */
};

struct sd_engine_options {
  const char *data_dir;              /* created if missing; copied */
  enum sd_durability durability;
  uint32_t interval_ms;              /* SD_DURABILITY_INTERVAL period */
  uint64_t segment_bytes;            /* size of one segment file, >= 4096 */
  uint32_t max_event_bytes;          /* largest stored record payload */
  uint32_t max_streams;              /* 0 = unlimited */
  uint64_t retention_check_ms;       /* how often retention runs */
  uint64_t dedup_window_ms;          /* idempotency window for event ids */
  uint32_t max_consumers_tracked;    /* per stream, oldest forgotten first */
  struct sd_stream_config defaults;  /* for streams created without settings */
  int verify_on_start;               /* check every record of indexed segments in the background after start-up */
};

/* Fills o with the documented defaults (data_dir "./streamd-data"). */
void sd_engine_options_default(struct sd_engine_options *o);

struct sd_engine;
struct sd_durable_op;
struct sd_stream;

/* A record as read: points into a mapped segment, valid only during the
 * visitor call that receives it. */
struct sd_record {
  uint32_t partition;
  uint64_t offset;
  uint64_t timestamp_ms;
  const char *json; /* the served JSON object, not NUL-terminated */
  uint32_t json_len;
  const char *id;   /* idempotency id bytes or NULL */
  uint32_t id_len;
};

/* Returns 0 to go on, anything else to stop the read (the read returns 0). */
typedef int (*sd_record_visit_fn)(void *arg, const struct sd_record *rec);

struct sd_partition_stat {
  uint64_t min_offset;   /* first readable offset (== next_offset when empty) */
  uint64_t next_offset;  /* one past the last visible record */
  uint64_t bytes;        /* bytes of record data held on disk */
  uint32_t segments;
  int read_only;         /* a failed sync stopped writes; reason in sd_stream_read_only_reason */
  uint64_t damage_found; /* damage found in its files since start-up; the first in sd_stream_damage */
};

struct sd_stream_stat {
  uint64_t total_published; /* since start-up */
  uint64_t total_consumed;  /* events returned to readers since start-up */
  uint64_t created_at_ms;
  uint64_t generation;
  uint32_t subscribers;     /* maintained by transports via sd_stream_subscribers_add */
};

/* ---- engine ------------------------------------------------------------ */

/* Opens the data directory, recovering every stream and partition found
 * (torn tails are cut, see docs/storage.md).  Blocks: call before serving.
 * Errors: -errno from the file system, SD_E_CORRUPT_FILE for unreadable
 * metadata, -ENOMEM.  On error nothing is left open. */
int sd_engine_open(uv_loop_t *loop, const struct sd_engine_options *o, struct sd_engine **out);

/* Waits for in-flight disk work, syncs every partition, closes files and
 * frees the engine.  Blocks; call once the transports have stopped.
 * Returns the first sync error, if any (the data may not be on disk). */
int sd_engine_close(struct sd_engine *e);

const struct sd_engine_options *sd_engine_options(const struct sd_engine *e);

/* Durations of the sync jobs that synced anything (segments, directories,
 * group logs): fdatasync and the writes around it, timed on the thread
 * pool and counted on the loop thread when the job completes.  Valid while
 * the engine is open. */
struct sd_hist;
const struct sd_hist *sd_engine_sync_latency(const struct sd_engine *e);

/* Checks a stream, group or consumer name: 1..255 bytes of [A-Za-z0-9._:-],
 * not starting with '.'.  0 or SD_E_INVALID_NAME. */
int sd_name_check(const char *name, size_t len);

/* Creates a stream (cfg NULL: the defaults).  *created says whether it was
 * new.  With exclusive set an existing stream is SD_E_STREAM_EXISTS; else
 * an existing stream whose settings differ from a non-NULL cfg is
 * SD_E_CONFIG_MISMATCH.  Other errors: SD_E_INVALID_NAME,
 * SD_E_INVALID_PARAMETER (bad cfg), SD_E_TOO_MANY_STREAMS, -errno.
 * The new stream's files exist on return; its metadata becomes durable with
 * the first sync (sd_stream_when_durable waits for it). */
int sd_engine_create(struct sd_engine *e, const char *name, const struct sd_stream_config *cfg,
                     int exclusive, struct sd_stream **out, int *created);

/* Looks a stream up; NULL when missing.  The pointer stays valid until the
 * stream is deleted, or longer while referenced (sd_stream_ref). */
struct sd_stream *sd_engine_find(struct sd_engine *e, const char *name);

/* Calls fn for each stream in name order. */
void sd_engine_foreach(struct sd_engine *e, void (*fn)(void *arg, struct sd_stream *s), void *arg);
size_t sd_engine_stream_count(const struct sd_engine *e);

/* Deletes a stream: it disappears from lookups at once, its waiters and
 * pending appends complete with SD_E_STREAM_DELETED, and its directory is
 * removed from disk on the thread pool.  When op is not NULL, op->cb runs
 * once the deletion is durable (0, or -errno when the directory sync
 * failed).  SD_E_STREAM_NOT_FOUND if missing (op is not called). */
int sd_engine_delete(struct sd_engine *e, const char *name, struct sd_durable_op *op);

/* ---- streams ----------------------------------------------------------- */

void sd_stream_ref(struct sd_stream *s);
void sd_stream_unref(struct sd_stream *s);
int sd_stream_deleted(const struct sd_stream *s);
const char *sd_stream_name(const struct sd_stream *s);
const struct sd_stream_config *sd_stream_config(const struct sd_stream *s);
void sd_stream_stat(const struct sd_stream *s, struct sd_stream_stat *out);
/* partition < config.partitions, else SD_E_INVALID_PARAMETER. */
int sd_stream_partition_stat(const struct sd_stream *s, uint32_t partition, struct sd_partition_stat *out);
void sd_stream_subscribers_add(struct sd_stream *s, int delta);
void sd_stream_count_consumed(struct sd_stream *s, uint64_t n);

/* One event to append. */
struct sd_event_in {
  const char *members; /* JSON object members without braces: "event":"x","data":1 */
  size_t members_len;
  const char *key;     /* partition key, or NULL */
  size_t key_len;
  const char *id;      /* idempotency id (1..SD_MAX_ID bytes), or NULL */
  size_t id_len;
  int32_t partition;   /* explicit partition, or -1: by key, else round-robin */
};

struct sd_append_result {
  uint32_t partition;
  uint64_t offset;
  int duplicate;       /* the id was already appended: partition/offset are the first copy's */
};

/* A wait for durability.  Owned by the caller, which fills cb/data and
 * keeps it alive until cb runs.  cb runs once on the loop thread with 0,
 * or a negative error (the data may not be durable; with
 * SD_E_STREAM_DELETED the stream is gone). */
struct sd_durable_op {
  void (*cb)(struct sd_durable_op *op, int status);
  void *data;
  /* private */
  struct sd_list node;
  uint64_t target;
};

/* Appends n events atomically (all or none).  res[i] receives event i's
 * partition and offset.  Returns 0 when every event is durable enough for
 * the mode to answer now, SD_PENDING when the caller must wait
 * (sd_stream_when_durable), or an error with nothing appended:
 * SD_E_INVALID_PARAMETER (partition out of range, id length 0 or over
 * SD_MAX_ID), SD_E_EVENT_TOO_LARGE,
 * SD_E_READ_ONLY, SD_E_STREAM_DELETED, -ENOSPC, -EIO, -ENOMEM. */
#define SD_PENDING 1
int sd_stream_append(struct sd_stream *s, const struct sd_event_in *ev, size_t n, struct sd_append_result *res);

/* Calls op->cb once everything appended to s so far, and its metadata, is
 * synced.  In modes other than `always` it still waits for a real sync,
 * started at once. */
void sd_stream_when_durable(struct sd_stream *s, struct sd_durable_op *op);

/* Resolves a requested start offset for one partition: from >= 0 is taken
 * as is; -N means the last N records.  Returns SD_E_OFFSET_OUT_OF_RANGE
 * when from is below the partition's min_offset. */
int sd_stream_resolve_offset(const struct sd_stream *s, uint32_t partition, int64_t from, uint64_t *out);

/* Resolves a start offset for every partition into pos[0..partitions):
 * from >= 0 applies to each partition (SD_E_OFFSET_OUT_OF_RANGE when below
 * one's min_offset); -N places the starts so that exactly the N most
 * recent records of the whole stream (by timestamp, then partition) lie
 * at or after them. */
int sd_stream_resolve_all(struct sd_stream *s, int64_t from, uint64_t *pos);

/* Visits up to limit visible records of one partition starting at from
 * (already resolved), stopping early when max_bytes of JSON are passed
 * (at least one record is always visited).  Returns the number visited,
 * SD_E_OFFSET_OUT_OF_RANGE, SD_E_CORRUPT (a record failed its checksum; the
 * records before it were visited), or SD_E_INVALID_PARAMETER. */
int sd_stream_read(struct sd_stream *s, uint32_t partition, uint64_t from, uint32_t limit, size_t max_bytes,
                   sd_record_visit_fn fn, void *arg);

/* Reads all partitions merged in (timestamp, partition) order.  from >= 0
 * applies to every partition; -N selects the N most recent records of the
 * whole stream.  Same returns as sd_stream_read. */
int sd_stream_read_merged(struct sd_stream *s, int64_t from, uint32_t limit, size_t max_bytes,
                          sd_record_visit_fn fn, void *arg);

/* A wait for new visible records (or deletion).  Caller-owned, like
 * sd_durable_op.  cb runs once with 0 when any partition of the stream
 * gains visible records, or SD_E_STREAM_DELETED; the waiter is unlinked
 * before cb runs.  sd_stream_wait_cancel is harmless when not waiting. */
struct sd_waiter {
  void (*cb)(struct sd_waiter *w, int status);
  void *data;
  struct sd_list node; /* private */
};
void sd_stream_wait(struct sd_stream *s, struct sd_waiter *w);
void sd_stream_wait_cancel(struct sd_waiter *w);

/* Consumer positions: the last offset a named consumer read per partition
 * and when.  Kept in memory, at most max_consumers_tracked per stream. */
void sd_stream_consumer_seen(struct sd_stream *s, const char *consumer, uint32_t partition, uint64_t offset,
                             uint64_t now_ms);
struct sd_consumer_pos {
  const char *consumer;
  uint32_t partition;
  uint64_t offset;
  uint64_t last_seen_ms;
};
void sd_stream_consumers_foreach(struct sd_stream *s, void (*fn)(void *arg, const struct sd_consumer_pos *p),
                                 void *arg);

/* Why a partition stopped accepting writes, or NULL. */
const char *sd_stream_read_only_reason(const struct sd_stream *s, uint32_t partition);

/* The first damage found in a partition's files since start-up (by
 * recovery, or by a read that met a record failing its checksum or lost
 * to damage), or NULL.  Owned by the stream; valid while it exists. */
const char *sd_stream_damage(const struct sd_stream *s, uint32_t partition);

/* Milliseconds since the epoch, from the wall clock. */
uint64_t sd_now_ms(void);

#endif
