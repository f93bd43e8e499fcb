/*
 * segment.h - one segment file of a partition: a fixed-size, pre-allocated
 * file holding records back to back, mapped read-only, written through its
 * descriptor, plus the in-memory offset index of its records.
 *
 * Ownership: the partition (src/engine) owns its segments.  A segment is
 * reference counted so that a sync or deletion job on the thread pool can
 * keep its descriptor open after the partition lets go of it.
 * The byte layout is specified at the top of segment.c.
 */
#ifndef STREAMD_SEGMENT_H
#define STREAMD_SEGMENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "streamd/buf.h"
#include "streamd/engine.h"

#define SD_SEG_HEADER_BYTES 64u
#define SD_REC_HEADER_BYTES 32u
#define SD_SEG_MIN_BYTES 4096u
#define SD_SEG_MAX_BYTES (1024u * 1024u * 1024u)
/* Disk space is reserved ahead of the writer in chunks of this size, so a
 * full disk shows as a clean ENOSPC before any record is written, and a
 * partition costs disk in proportion to its data, not to segment_bytes. */
#define SD_SEG_RESERVE_CHUNK (1024u * 1024u)

struct sd_segment {
  uint64_t base;       /* offset of the first record */
  uint32_t count;      /* records held */
  uint32_t partition;
  uint64_t size;       /* file and mapping length */
  uint64_t end;        /* bytes used: header plus records */
  uint64_t reserved;   /* bytes [0, reserved) have disk blocks (posix_fallocate) */
  uint64_t first_ts;   /* timestamp of the first record (0 when empty) */
  uint64_t last_ts;    /* timestamp of the last record */
  int fd;
  const char *map;     /* mapping of size bytes: PROT_READ, or also PROT_WRITE when writable */
  uint32_t *pos;       /* pos[i]: file position of record base+i */
  uint32_t pos_cap;
  int staging;         /* appends gather in stage until sd_segment_flush */
  int writable;        /* appends inside [0, reserved) are copied into the mapping */
  struct sd_buf stage; /* bytes [stage_at, end) not yet written */
  uint64_t stage_at;
  int sealed;          /* no more appends; index file may be written */
  int synced;          /* sealed and its data synced (index written or tried) */
  int in_job;          /* held by a running sync job */
  int unchecked;       /* loaded from its .idx: its records (but the last) were not checked at start-up */
  int refs;
  char *path;          /* "<dir>/<base:020>.seg" */
};

/* Result of recovering one segment at start-up. */
struct sd_segment_recovery {
  uint64_t cut_bytes;    /* bytes past the valid prefix that were discarded */
  int used_index;        /* positions came from a valid .idx file */
  int damaged;           /* a record failed its check before the file's end */
};

/* Bytes a record occupies on disk, padding included. */
static inline uint64_t sd_record_size(size_t id_len, size_t json_len) {
  return (SD_REC_HEADER_BYTES + id_len + json_len + 7u) & ~(uint64_t)7u;
}

/* Creates "<dir>/<base>.seg" of `size` bytes (space reserved with
 * posix_fallocate), or adopts `prealloc` (a file of that size already
 * reserved, renamed into place) when not NULL.  Writes the header and maps
 * the file.  Errors: -errno (-ENOSPC when the disk is full), -ENOMEM. */
int sd_segment_create(const char *dir, const char *prealloc, uint32_t partition, uint64_t base, uint64_t size,
                      struct sd_segment **out);

/* Prepares a file of `size` bytes at path for a future segment (create,
 * size, reserve the first chunk, fsync).  Blocking: for the thread pool.
 * Errors: -errno. */
int sd_segment_preallocate(const char *path, uint64_t size);

/* The reservation chunk for a segment of `size` bytes. */
uint64_t sd_segment_chunk(uint64_t size);

/* Reserves disk blocks for bytes [from, to) of fd with posix_fallocate.
 * Blocking, safe on any thread.  0 or -errno (-ENOSPC). */
int sd_segment_reserve_fd(int fd, uint64_t from, uint64_t to);

/* Makes sure bytes [0, upto) of the segment have blocks (upto is capped
 * at the file size), updating seg->reserved.  Blocking.  0 or -errno. */
int sd_segment_reserve(struct sd_segment *seg, uint64_t upto);

/* Opens an existing segment.  `last` says it is the partition's newest
 * (its tail may be torn: every record's checksum is checked and the file is
 * cut after the longest valid prefix).  Older segments load their .idx when
 * it is valid, else they are scanned too.  Errors: SD_E_CORRUPT_FILE (bad
 * header), -errno, -ENOMEM. */
int sd_segment_open(const char *path, uint32_t partition, uint64_t base, int last, uint64_t max_size,
                    struct sd_segment **out, struct sd_segment_recovery *rep);

/* Scans a segment image (header included) and reports how many records,
 * starting at base, form the longest valid prefix.  Pure: used by recovery
 * and by the fuzz harness.  positions may be NULL; else it receives up to
 * max_positions record positions.  Returns the number of valid records;
 * *end_out is the byte just past the last valid record. */
uint32_t sd_segment_scan(const char *img, uint64_t len, uint64_t base, uint32_t *positions, uint32_t max_positions,
                         uint64_t *end_out, uint64_t *last_ts_out);

/* Checks a segment header; 0 or SD_E_CORRUPT_FILE. */
int sd_segment_check_header(const char *img, uint64_t len, uint32_t partition, uint64_t base);

/* Bytes free for records. */
static inline uint64_t sd_segment_room(const struct sd_segment *seg) { return seg->size - seg->end; }

/* Appends one record at seg->end, offset base+count: written at once with
 * pwritev, or gathered in seg->stage when seg->staging is set (the caller
 * then flushes before syncing, and readers must not look past what was
 * flushed).  The caller checked the room.  Errors: -errno, -ENOMEM. */
int sd_segment_append(struct sd_segment *seg, uint64_t timestamp_ms, const char *id, size_t id_len,
                      const struct iovec *json, int json_iovcnt, size_t json_len);

/* Writes the records gathered while staging with one pwrite.  0 or
 * -errno (then nothing gathered is lost from memory: it may be retried
 * only by a caller that knows the file is unchanged). */
int sd_segment_flush(struct sd_segment *seg);

/* Makes appends copy records into the mapping (on) instead of writing them
 * with pwritev, or takes write access away (off).  Only bytes below
 * `reserved` are written that way, so a full disk still shows as -ENOSPC
 * from pwritev and never as SIGBUS.  0 or -errno (then nothing changed). */
int sd_segment_set_writable(struct sd_segment *seg, int on);

/* Forgets records from index i on (rollback of an unfinished batch) and
 * zeroes their bytes so no stale record survives a crash.  -errno. */
int sd_segment_truncate(struct sd_segment *seg, uint32_t i);

/* Index of the record with this offset, or -1 when the segment lacks it. */
static inline int64_t sd_segment_find(const struct sd_segment *seg, uint64_t offset) {
  if (offset < seg->base || offset >= seg->base + seg->count) return -1;
  return (int64_t)(offset - seg->base);
}

/* Fills rec with a view of record i (partition set from the segment),
 * after checking its checksum.  SD_E_CORRUPT when it fails. */
int sd_segment_record(const struct sd_segment *seg, uint32_t i, struct sd_record *rec);

/* Length of record i's idempotency id, from its header, unchecked (a
 * cheap filter: sd_segment_record checks the record). */
uint16_t sd_segment_id_len(const struct sd_segment *seg, uint32_t i);

/* Index of the first record with timestamp >= ts (count when none). */
uint32_t sd_segment_seek_time(const struct sd_segment *seg, uint64_t ts);

/* Writes "<base>.idx" next to the segment (temp file, fsync, rename) and
 * shrinks the segment file to its used length.  Blocking: for the thread
 * pool, on a sealed segment.  -errno. */
int sd_segment_write_index(struct sd_segment *seg);

/* Removes the segment's files.  Blocking.  -errno. */
int sd_segment_unlink(const struct sd_segment *seg);

void sd_segment_ref(struct sd_segment *seg);
/* Drops a reference; the last one unmaps, closes and frees. */
void sd_segment_unref(struct sd_segment *seg);

/* "<dir>/<base:020>.seg" / ".idx" into buf (PATH_MAX). */
void sd_segment_path(char *buf, size_t cap, const char *dir, uint64_t base, const char *ext);

#endif
