/*
 * engine.c - streams, partitions, group commit, retention, waiters,
 * idempotency window and consumer positions.
 *
 * Data directory layout:
 *   <data>/meta.json                 {"format":1,"next_generation":N}
 *   <data>/streams/<name>/stream.json the stream's settings, created_at, generation
 *   <data>/streams/<name>/<p>/       one directory per partition, holding
 *       <base:020>.seg, <base:020>.idx  segments (format in storage/segment.c)
 *       prealloc.tmp                 the next segment, reserved ahead of need
 *   <data>/trash/                    deleted streams on their way out
 *
 * Invariants, per partition:
 *   - segs[] is ordered by base; segs[nsegs-1] is the active segment, the
 *     only one appended to; every other segment is sealed.
 *   - min_offset = segs[0]->base <= visible_next <= next_offset, and
 *     next_offset = active->base + active->count.
 *   - In `always` mode visible_next only moves when a sync job that covered
 *     those records succeeds, so a reader never sees a record that a crash
 *     could take back.  In the other modes it follows next_offset.
 *   - Retention removes only segs[0], only when sealed, synced, not in a
 *     job, and never the active segment.
 *
 * Group commit, per stream: every append bumps write_seq and marks its
 * partitions dirty.  At most one sync job per stream runs on the thread
 * pool; it covers everything appended before it started (target_seq).  A
 * job is started from an idle callback, so every append handled in one
 * loop pass shares the next sync.  The sequence is:
 *   1. pwritev records (loop thread)  2. fdatasync segments, write index
 *   files of sealed segments, fsync changed directories and metadata (pool)
 *   3. publish visible_next, complete durable ops, wake waiters (loop).
 * A failed sync is never retried: the partition turns read-only with the
 * reason, and the ops waiting on that job fail.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/engine_internal.h"
#include "storage/segment.h"
#include "streamd/engine.h"
#include "streamd/err.h"
#include "streamd/log.h"
#include "streamd/metrics.h"
#include "util/crc.h"
#include "util/fsutil.h"

enum { PREALLOC_NONE, PREALLOC_RUNNING, PREALLOC_READY };

struct partition {
  uint32_t id;
  char *dir;
  struct sd_segment **segs;
  uint32_t nsegs, segcap;
  uint64_t next_offset, visible_next;
  uint64_t bytes;       /* record bytes in all segments */
  uint64_t last_ts;
  int dirty;            /* appended since the last sync job started */
  int dir_dirty;        /* directory entries changed since then */
  int prealloc;
  int reserving;        /* a reserve job runs for the active segment */
  int staging;          /* always mode: appends are written in one run before each sync */
  char *ro_reason;      /* non-NULL: read-only after a failed sync */
  char *damage;         /* non-NULL: the first damage found in its files (recovery or a read), kept until exit */
  uint64_t damage_found; /* damage findings since start-up */
  uint64_t damage_last;  /* offset of the last damaged record a read met (UINT64_MAX: none), logged once */
  /* batch rollback marks */
  uint32_t mark_nsegs, mark_count;
  uint64_t mark_next, mark_bytes, mark_ts;
  int touched;
};

struct sync_job {
  uv_work_t req;
  struct sd_stream *s;
  uint64_t target_seq;
  struct sd_segment **segs;
  int *seg_err;
  uint8_t *seg_sealed;   /* sealed when the job started: only then is it complete */
  uint32_t nsegs, cap;
  uint64_t *ends;        /* per partition: next_offset when the job started */
  char **dirs;           /* directories to fsync (owned by stream/engine) */
  int *dir_err;
  uint32_t ndirs, dircap;
  int write_meta;
  char *config_file;     /* stream.json to fsync, or NULL */
  int glog_fd;           /* dup of groups.log to sync, or -1 */
  const char *glog_from, *glog_to; /* a compaction's rename */
  int glog_err;
  int flush_err;         /* gathered appends could not be written */
  uint64_t work_ns;      /* duration of sync_work, measured on the pool thread */
  int meta_full;         /* meta.json was not rewritten: no space (not a sync failure) */
};

struct dedup_entry {
  uint64_t ts;
  char *id;
  uint32_t len;
};

struct sd_stream {
  struct sd_engine *e;
  char *name;
  char *dir;
  char *config_path;          /* <dir>/stream.json */
  struct sd_stream_config cfg;
  uint64_t created_at, generation;
  struct partition *parts;
  uint32_t rr;
  int refs;
  int deleted;
  uint64_t write_seq, synced_seq;
  uint64_t failed_seq;        /* ops up to this seq fail: appended before a failed sync was seen */
  int failed_err;             /* non-zero once a sync failed */
  struct sd_list durable_ops;
  struct sd_list waiters;
  struct sync_job job;
  int job_running;
  int sync_wanted;
  struct sd_list sync_node;   /* in engine->sync_list while a job is wanted */
  struct sd_list wake_node;   /* in engine->wake_list while new records await a wake-up */
  int meta_dirty;             /* stream.json and directories need a sync */
  uint64_t total_published, total_consumed;
  uint32_t subscribers;
  json_t *consumers;          /* "consumer#partition" -> [offset, last_seen] */
  json_t *ids;                /* idempotency id -> partition << 54 | offset */
  struct dedup_entry *ring;
  uint32_t ring_head, ring_len, ring_cap;
  struct sd_record *merge_cur; /* scratch for merged reads, one per partition */
  uint64_t *merge_pos;
  struct sd_groups *groups;   /* consumer groups and their log */
};

struct sd_engine {
  uv_loop_t *loop;
  struct sd_engine_options o;
  char *data_dir, *streams_dir, *trash_dir;
  json_t *streams;            /* name -> stream (as a json_integer holding the pointer) */
  struct sd_list sync_list;
  struct sd_list wake_list;   /* streams whose waiters learn of new records on the next pass */
  uv_idle_t idle;
  uv_timer_t interval_timer, retention_timer;
  uint64_t next_generation;
  uv_mutex_t meta_lock;
  uint64_t meta_gen_wanted, meta_gen_written; /* under meta_lock */
  int jobs_running;
  int closing;
  struct verify_chain *verify; /* the start-up check of indexed segments, while it runs */
  uint64_t trash_seq;
  int lock_fd;                /* flock'd <data>/LOCK: one server per directory */
  struct sd_hist sync_hist;   /* sync job durations, folded in by sync_after */
};

static void want_sync(struct sd_stream *s);
static void start_prealloc(struct sd_stream *s, struct partition *p);

/* ---- options, names ------------------------------------------------------ */

void sd_engine_options_default(struct sd_engine_options *o) {
  memset(o, 0, sizeof(*o));
  o->data_dir = "./streamd-data";
  o->durability = SD_DURABILITY_ALWAYS;
  o->interval_ms = 1000;
  o->segment_bytes = 64u << 20;
  o->max_event_bytes = 1u << 20;
  o->max_streams = 10000;
  o->retention_check_ms = 5000;
  o->dedup_window_ms = 120000;
  o->max_consumers_tracked = 10000;
  o->defaults.partitions = 1;
  o->defaults.retention_hours = 24;
  o->verify_on_start = 1;
}

int sd_name_check(const char *name, size_t len) {
  if (len == 0 || len > SD_MAX_NAME || name[0] == '.') return SD_E_INVALID_NAME;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
          c == ':' || c == '-'))
      return SD_E_INVALID_NAME;
  }
  return 0;
}

static int config_check(const struct sd_stream_config *c) {
  if (c->partitions < 1 || c->partitions > SD_MAX_PARTITIONS) return SD_E_INVALID_PARAMETER;
  if (c->retention_hours > 24u * 365 * 1000) return SD_E_INVALID_PARAMETER;
  return 0;
}

static int config_equal(const struct sd_stream_config *a, const struct sd_stream_config *b) {
  return a->partitions == b->partitions && a->retention_hours == b->retention_hours &&
         a->retention_bytes == b->retention_bytes && a->max_events == b->max_events;
}

/* ---- metadata files -------------------------------------------------------- */

static char *path_join(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  char *p = malloc(la + lb + 2);
  if (p == NULL) return NULL;
  memcpy(p, a, la);
  p[la] = '/';
  memcpy(p + la + 1, b, lb + 1);
  return p;
}

/* Writes the stream's settings (temp file and rename; synced by the next job). */
static int stream_write_config(struct sd_stream *s) {
  json_t *j = json_pack("{s:i, s:I, s:I, s:I, s:I, s:I}", "partitions", (int)s->cfg.partitions, "retention_hours",
                        (json_int_t)s->cfg.retention_hours, "retention_bytes", (json_int_t)s->cfg.retention_bytes,
                        "max_events", (json_int_t)s->cfg.max_events, "created_at", (json_int_t)s->created_at,
                        "generation", (json_int_t)s->generation);
  if (j == NULL) return -ENOMEM;
  char *text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (text == NULL) return -ENOMEM;
  int rc = sd_fs_write_file(s->dir, "stream.json", text, strlen(text), 0);
  free(text);
  return rc;
}

/* Thread pool: writes meta.json if a newer generation is wanted. */
static int meta_write(struct sd_engine *e) {
  int rc = 0;
  uv_mutex_lock(&e->meta_lock);
  if (e->meta_gen_wanted > e->meta_gen_written) {
    char text[96];
    int n = snprintf(text, sizeof(text), "{\"format\":1,\"next_generation\":%llu}\n",
                     (unsigned long long)e->meta_gen_wanted);
    rc = sd_fs_write_file(e->data_dir, "meta.json", text, (size_t)n, 1);
    if (rc == 0) e->meta_gen_written = e->meta_gen_wanted;
  }
  uv_mutex_unlock(&e->meta_lock);
  return rc;
}

/* ---- waiters and durable ops --------------------------------------------- */

static void wake_waiters(struct sd_stream *s, int status) {
  if (s->groups) sd_groups_wake(s->groups, status);
  struct sd_list local;
  sd_list_init(&local);
  sd_list_splice(&local, &s->waiters);
  while (!sd_list_empty(&local)) {
    struct sd_waiter *w = SD_CONTAINER_OF(local.next, struct sd_waiter, node);
    sd_list_remove(&w->node);
    w->cb(w, status);
  }
}

void sd_stream_wait(struct sd_stream *s, struct sd_waiter *w) {
  SD_ASSERT(!s->deleted);
  sd_list_push_back(&s->waiters, &w->node);
}

void sd_stream_wait_cancel(struct sd_waiter *w) { sd_list_remove(&w->node); }

/* Completes ops whose target is <= upto with status. */
static void complete_ops(struct sd_stream *s, uint64_t upto, int status) {
  while (!sd_list_empty(&s->durable_ops)) {
    struct sd_durable_op *op = SD_CONTAINER_OF(s->durable_ops.next, struct sd_durable_op, node);
    if (op->target > upto) break;
    sd_list_remove(&op->node);
    op->cb(op, status);
  }
}

void sd_stream_when_durable(struct sd_stream *s, struct sd_durable_op *op) {
  sd_list_init(&op->node);
  op->target = s->write_seq;
  sd_list_push_back(&s->durable_ops, &op->node);
  /* A job completes the op even when there is nothing left to sync, so the
   * callback never runs re-entrantly. */
  want_sync(s);
}

/* ---- sync jobs ------------------------------------------------------------- */

static int job_add_seg(struct sync_job *j, struct sd_segment *seg) {
  if (j->nsegs == j->cap) {
    uint32_t cap = j->cap ? j->cap * 2 : 8;
    struct sd_segment **ns = realloc(j->segs, cap * sizeof(*ns));
    if (ns == NULL) return -ENOMEM;
    j->segs = ns;
    int *ne = realloc(j->seg_err, cap * sizeof(*ne));
    if (ne == NULL) return -ENOMEM;
    j->seg_err = ne;
    uint8_t *nsl = realloc(j->seg_sealed, cap);
    if (nsl == NULL) return -ENOMEM;
    j->seg_sealed = nsl;
    j->cap = cap;
  }
  sd_segment_ref(seg);
  seg->in_job = 1;
  j->seg_err[j->nsegs] = 0;
  j->seg_sealed[j->nsegs] = (uint8_t)seg->sealed;
  j->segs[j->nsegs++] = seg;
  return 0;
}

static int job_add_dir(struct sync_job *j, char *dir) {
  if (j->ndirs == j->dircap) {
    uint32_t cap = j->dircap ? j->dircap * 2 : 8;
    char **nd = realloc(j->dirs, cap * sizeof(*nd));
    if (nd == NULL) return -ENOMEM;
    j->dirs = nd;
    int *ne = realloc(j->dir_err, cap * sizeof(*ne));
    if (ne == NULL) return -ENOMEM;
    j->dir_err = ne;
    j->dircap = cap;
  }
  j->dir_err[j->ndirs] = 0;
  j->dirs[j->ndirs++] = dir;
  return 0;
}

static void sync_work(uv_work_t *req) {
  struct sync_job *j = req->data;
  struct sd_engine *e = j->s->e;
  uint64_t t0 = uv_hrtime();
  for (uint32_t i = 0; i < j->nsegs; i++) {
    struct sd_segment *seg = j->segs[i];
    if (fdatasync(seg->fd) != 0) {
      j->seg_err[i] = -errno;
      continue;
    }
    if (j->seg_sealed[i]) {
      int rc = sd_segment_write_index(seg);
      if (rc != 0) SD_WARN("index for %s not written: %s (a scan will rebuild it)", seg->path, sd_strerror(rc));
    }
  }
  if (j->glog_fd >= 0) j->glog_err = sd_groups_sync_work(j->glog_fd, j->glog_from, j->glog_to, j->s->dir);
  if (j->config_file) {
    int rc = sd_fs_sync_file(j->config_file);
    if (rc != 0 && j->ndirs > 0) j->dir_err[0] = rc;
  }
  if (j->write_meta) {
    int rc = meta_write(e);
    /* No room for meta.json.tmp: the old meta.json is intact and nothing
     * synced is at risk, so this is retried, not a reason for read-only. */
    if (rc == -ENOSPC || rc == -EDQUOT)
      j->meta_full = rc;
    else if (rc != 0 && j->ndirs > 0)
      j->dir_err[0] = rc;
  }
  for (uint32_t i = 0; i < j->ndirs; i++) {
    int rc = sd_fs_sync_dir(j->dirs[i]);
    if (rc != 0) j->dir_err[i] = rc;
  }
  j->work_ns = uv_hrtime() - t0; /* read by sync_after, after the pool hands the job back */
}

static void set_read_only(struct sd_stream *s, struct partition *p, const char *what, int err) {
  if (p->ro_reason) return;
  char buf[512];
  snprintf(buf, sizeof(buf), "%s failed (%s); writes stopped, restart to recover", what, sd_strerror(err));
  p->ro_reason = strdup(buf);
  SD_ERROR("stream %s partition %u: %s", s->name, p->id, buf);
}

static void sync_after(uv_work_t *req, int status) {
  struct sync_job *j = req->data;
  struct sd_stream *s = j->s;
  struct sd_engine *e = s->e;
  int failed = status != 0 ? -EIO : j->flush_err;
  int advanced = 0;
  (void)status;

  if (status == 0 && (j->nsegs > 0 || j->ndirs > 0 || j->glog_fd >= 0)) sd_hist_observe_ns(&e->sync_hist, j->work_ns);
  if (j->meta_full) {
    /* meta.json only carries next_generation, which start-up also derives
     * from the streams found; the next job of this stream tries again. */
    SD_WARN("stream %s: meta.json not rewritten: %s; retried with the next sync", s->name,
            sd_strerror(j->meta_full));
    if (!s->deleted) s->meta_dirty = 1;
  }

  for (uint32_t i = 0; i < j->nsegs; i++) {
    struct sd_segment *seg = j->segs[i];
    seg->in_job = 0;
    if (j->seg_err[i] != 0) {
      failed = j->seg_err[i];
      if (!s->deleted && seg->partition < s->cfg.partitions)
        set_read_only(s, &s->parts[seg->partition], "fdatasync", j->seg_err[i]);
    } else if (j->seg_sealed[i]) {
      seg->synced = 1;
    }
  }
  for (uint32_t i = 0; i < j->ndirs; i++) {
    if (j->dir_err[i] != 0) {
      failed = j->dir_err[i];
      SD_ERROR("stream %s: sync of directory %s failed: %s", s->name, j->dirs[i], sd_strerror(j->dir_err[i]));
      if (!s->deleted)
        for (uint32_t p = 0; p < s->cfg.partitions; p++)
          set_read_only(s, &s->parts[p], "directory sync", j->dir_err[i]);
    }
  }
  if (!s->deleted) {
    for (uint32_t p = 0; p < s->cfg.partitions; p++) {
      struct partition *pt = &s->parts[p];
      if (pt->ro_reason == NULL && j->ends[p] > pt->visible_next) {
        pt->visible_next = j->ends[p];
        advanced = 1;
      }
    }
  }
  if (j->glog_fd >= 0) {
    if (j->glog_err != 0) failed = j->glog_err;
    if (s->groups) sd_groups_sync_end(s->groups, j->glog_err);
    j->glog_fd = -1;
  }
  for (uint32_t i = 0; i < j->nsegs; i++) sd_segment_unref(j->segs[i]);
  j->nsegs = 0;
  j->ndirs = 0;
  s->job_running = 0;
  e->jobs_running--;

  if (failed != 0) {
    /* Everything appended so far may sit behind the lost bytes: none of it
     * may be acknowledged, even if a later sync succeeds. */
    s->failed_seq = s->write_seq;
    s->failed_err = failed;
    /* Ops that come later (a group ack, a publish to a healthy partition)
     * wait for a later sync, not for this failure. */
    s->write_seq++;
  }
  /* failed_err, not failed_seq, says a sync failed: a stream's first sync
   * (its creation) covers write_seq 0. */
  if (s->failed_err) complete_ops(s, s->failed_seq, s->failed_err);
  if (failed == 0) {
    s->synced_seq = j->target_seq;
    complete_ops(s, j->target_seq, s->deleted ? SD_E_STREAM_DELETED : 0);
  }
  if (advanced) wake_waiters(s, 0);
  if (!s->deleted && (s->sync_wanted || !sd_list_empty(&s->durable_ops))) want_sync(s);
  sd_stream_unref(s);
}

/* Starts the stream's sync job; the caller checked none is running. */
static int start_job(struct sd_stream *s) {
  struct sync_job *j = &s->job;
  struct sd_engine *e = s->e;
  int rc;
  j->s = s;
  j->nsegs = 0;
  j->ndirs = 0;
  j->write_meta = 0;
  j->config_file = NULL;
  j->glog_fd = -1;
  j->glog_err = 0;
  j->meta_full = 0;
  j->flush_err = 0;
  j->target_seq = s->write_seq;
  s->sync_wanted = 0;
  if (!s->deleted) {
    for (uint32_t p = 0; p < s->cfg.partitions; p++) {
      struct partition *pt = &s->parts[p];
      j->ends[p] = pt->next_offset;
      if (pt->ro_reason) {
        /* A failed sync is not retried (a second fdatasync may report
         * success for pages the kernel already dropped): a read-only
         * partition is left out of later jobs, so they do not fail again. */
        pt->dirty = 0;
        pt->dir_dirty = 0;
        continue;
      }
      for (uint32_t i = 0; i < pt->nsegs; i++) {
        struct sd_segment *seg = pt->segs[i];
        int need = (seg->sealed && !seg->synced) || (i == pt->nsegs - 1 && pt->dirty);
        if (!need || seg->in_job) continue;
        /* Gathered appends reach the file in one write, just before their sync. */
        int frc = sd_segment_flush(seg);
        if (frc != 0) {
          set_read_only(s, pt, "write", frc);
          j->flush_err = frc;
          continue;
        }
        if ((rc = job_add_seg(j, seg)) != 0) goto fail;
      }
      pt->dirty = 0;
      if (pt->dir_dirty) {
        if ((rc = job_add_dir(j, pt->dir)) != 0) goto fail;
        pt->dir_dirty = 0;
      }
    }
    if (s->groups) j->glog_fd = sd_groups_sync_begin(s->groups, &j->glog_from, &j->glog_to);
    if (s->meta_dirty) {
      /* stream.json, the stream's entry in streams/, and meta.json */
      if ((rc = job_add_dir(j, s->dir)) != 0) goto fail;
      if ((rc = job_add_dir(j, e->streams_dir)) != 0) goto fail;
      if ((rc = job_add_dir(j, e->data_dir)) != 0) goto fail;
      j->write_meta = 1;
      j->config_file = s->config_path;
      s->meta_dirty = 0;
    }
  }
  j->req.data = j;
  sd_stream_ref(s);
  s->job_running = 1;
  e->jobs_running++;
  rc = uv_queue_work(e->loop, &j->req, sync_work, sync_after);
  SD_ASSERT(rc == 0);
  return 0;
fail:
  for (uint32_t i = 0; i < j->nsegs; i++) {
    j->segs[i]->in_job = 0;
    sd_segment_unref(j->segs[i]);
  }
  j->nsegs = 0;
  s->sync_wanted = 1;
  return rc;
}

static void on_idle(uv_idle_t *h);

static void want_sync(struct sd_stream *s) {
  s->sync_wanted = 1;
  if (sd_list_linked(&s->sync_node)) return;
  sd_stream_ref(s);
  sd_list_push_back(&s->e->sync_list, &s->sync_node);
  uv_idle_start(&s->e->idle, on_idle);
}

static void on_idle(uv_idle_t *h) {
  struct sd_engine *e = h->data;
  while (!sd_list_empty(&e->wake_list)) {
    struct sd_stream *s = SD_CONTAINER_OF(e->wake_list.next, struct sd_stream, wake_node);
    sd_list_remove(&s->wake_node);
    if (!s->deleted) wake_waiters(s, 0);
    sd_stream_unref(s);
  }
  while (!sd_list_empty(&e->sync_list)) {
    struct sd_stream *s = SD_CONTAINER_OF(e->sync_list.next, struct sd_stream, sync_node);
    sd_list_remove(&s->sync_node);
    if (s->job_running) {
      /* sync_after will want another job */
      sd_stream_unref(s);
      continue;
    }
    if (start_job(s) != 0) {
      SD_ERROR("stream %s: cannot start sync job: out of memory", s->name);
      complete_ops(s, UINT64_MAX, -ENOMEM);
    }
    sd_stream_unref(s);
  }
  uv_idle_stop(h);
}

static void on_interval(uv_timer_t *t) {
  struct sd_engine *e = t->data;
  const char *key;
  json_t *v;
  json_object_foreach(e->streams, key, v) {
    struct sd_stream *s = (struct sd_stream *)(uintptr_t)json_integer_value(v);
    for (uint32_t p = 0; p < s->cfg.partitions; p++)
      if (s->parts[p].dirty || s->parts[p].dir_dirty) {
        want_sync(s);
        break;
      }
    if (s->meta_dirty || (s->groups && sd_groups_dirty(s->groups))) want_sync(s);
  }
}

/* ---- preallocation ------------------------------------------------------- */

struct prealloc_req {
  uv_work_t req;
  struct sd_stream *s;
  uint32_t partition;
  uint64_t size;
  int rc;
  char path[PATH_MAX];
};

static void prealloc_work(uv_work_t *req) {
  struct prealloc_req *r = req->data;
  r->rc = sd_segment_preallocate(r->path, r->size);
}

static void prealloc_after(uv_work_t *req, int status) {
  struct prealloc_req *r = req->data;
  struct sd_stream *s = r->s;
  if (!s->deleted) {
    struct partition *p = &s->parts[r->partition];
    p->prealloc = (status == 0 && r->rc == 0) ? PREALLOC_READY : PREALLOC_NONE;
    if (r->rc != 0 && r->rc != -ENOSPC)
      SD_WARN("stream %s partition %u: preallocation failed: %s", s->name, p->id, sd_strerror(r->rc));
  }
  s->e->jobs_running--;
  free(r);
  sd_stream_unref(s);
}

static void start_prealloc(struct sd_stream *s, struct partition *p) {
  if (p->prealloc != PREALLOC_NONE || s->e->closing) return;
  struct prealloc_req *r = calloc(1, sizeof(*r));
  if (r == NULL) return;
  r->s = s;
  r->partition = p->id;
  r->size = s->e->o.segment_bytes;
  snprintf(r->path, sizeof(r->path), "%s/prealloc.tmp", p->dir);
  r->req.data = r;
  sd_stream_ref(s);
  p->prealloc = PREALLOC_RUNNING;
  s->e->jobs_running++;
  SD_ASSERT(uv_queue_work(s->e->loop, &r->req, prealloc_work, prealloc_after) == 0);
}

/* ---- space reservation ahead of the writer ----------------------------------- */

struct reserve_req {
  uv_work_t req;
  struct sd_stream *s;
  struct sd_segment *seg;
  uint32_t partition;
  uint64_t from, to;
  int rc;
};

static void reserve_work(uv_work_t *req) {
  struct reserve_req *r = req->data;
  r->rc = sd_segment_reserve_fd(r->seg->fd, r->from, r->to);
}

static void reserve_after(uv_work_t *req, int status) {
  struct reserve_req *r = req->data;
  struct sd_stream *s = r->s;
  if (status == 0 && r->rc == 0 && r->seg->reserved >= r->from && r->seg->reserved < r->to) r->seg->reserved = r->to;
  if (!s->deleted) s->parts[r->partition].reserving = 0;
  s->e->jobs_running--;
  sd_segment_unref(r->seg);
  free(r);
  sd_stream_unref(s);
}

/* Reserves the next chunk of the active segment on the thread pool once
 * less than half a chunk is left, so appends rarely reserve inline. */
static void maybe_reserve(struct sd_stream *s, struct partition *p) {
  struct sd_segment *seg = p->segs[p->nsegs - 1];
  uint64_t chunk = sd_segment_chunk(seg->size);
  if (p->reserving || s->e->closing || seg->reserved >= seg->size || seg->reserved - seg->end >= chunk / 2) return;
  struct reserve_req *r = calloc(1, sizeof(*r));
  if (r == NULL) return;
  r->s = s;
  r->seg = seg;
  r->partition = p->id;
  r->from = seg->reserved;
  r->to = seg->reserved + chunk < seg->size ? seg->reserved + chunk : seg->size;
  r->req.data = r;
  sd_stream_ref(s);
  sd_segment_ref(seg);
  p->reserving = 1;
  s->e->jobs_running++;
  SD_ASSERT(uv_queue_work(s->e->loop, &r->req, reserve_work, reserve_after) == 0);
}

/* ---- segments of a partition ----------------------------------------------- */

/* Makes seg the one that takes appends: staged in always mode, copied into
 * its mapping otherwise (pwritev when the mapping cannot be made writable). */
static void make_active(struct partition *p, struct sd_segment *seg) {
  seg->staging = p->staging;
  if (!p->staging) (void)sd_segment_set_writable(seg, 1);
}

static int push_segment(struct partition *p, struct sd_segment *seg) {
  if (p->nsegs == p->segcap) {
    uint32_t cap = p->segcap ? p->segcap * 2 : 8;
    struct sd_segment **n = realloc(p->segs, cap * sizeof(*n));
    if (n == NULL) return -ENOMEM;
    p->segs = n;
    p->segcap = cap;
  }
  if (p->nsegs) (void)sd_segment_set_writable(p->segs[p->nsegs - 1], 0);
  p->segs[p->nsegs++] = seg;
  make_active(p, seg);
  return 0;
}

static inline struct sd_segment *active_seg(const struct partition *p) { return p->segs[p->nsegs - 1]; }

/* Seals the active segment and starts a new one at next_offset, of
 * segment_bytes or, for a record larger than that, big enough for it. */
static int roll(struct sd_stream *s, struct partition *p, uint64_t record_bytes) {
  struct sd_engine *e = s->e;
  struct sd_segment *seg = NULL;
  char pre[PATH_MAX];
  int rc;
  uint64_t size = e->o.segment_bytes;
  if (record_bytes + SD_SEG_HEADER_BYTES > size) size = (record_bytes + SD_SEG_HEADER_BYTES + 4095) & ~(uint64_t)4095;
  /* Records gathered for the active segment reach its file before the next
   * segment file exists: a crash of the process can then cut only the
   * newest segment's tail, never leave unwritten offsets before a newer
   * segment.  (The sync job still syncs them before they become visible.)
   * A segment that is sealed never gathers again: its buffer goes. */
  struct sd_segment *cur = active_seg(p);
  if (cur->count > 0) {
    if ((rc = sd_segment_flush(cur)) != 0) {
      set_read_only(s, p, "write", rc);
      return rc;
    }
    sd_buf_free(&cur->stage);
  }
  snprintf(pre, sizeof(pre), "%s/prealloc.tmp", p->dir);
  if (p->prealloc == PREALLOC_READY && size == e->o.segment_bytes) {
    p->prealloc = PREALLOC_NONE;
    rc = sd_segment_create(p->dir, pre, p->id, p->next_offset, size, &seg);
    if (rc != 0) unlink(pre);
  } else {
    rc = -1;
  }
  if (rc != 0) rc = sd_segment_create(p->dir, NULL, p->id, p->next_offset, size, &seg);
  if (rc != 0) return rc;
  struct sd_segment *act = active_seg(p);
  if (act->count == 0) {
    /* An empty active segment too small for the record was just replaced
     * on disk (same base); it is dropped, never sealed. */
    make_active(p, seg);
    p->segs[p->nsegs - 1] = seg;
    sd_segment_unref(act);
    p->dir_dirty = 1;
    p->dirty = 1;
    want_sync(s);
    start_prealloc(s, p);
    return 0;
  }
  if ((rc = push_segment(p, seg)) != 0) {
    sd_segment_unlink(seg);
    sd_segment_unref(seg);
    return rc;
  }
  p->segs[p->nsegs - 2]->sealed = 1;
  p->dir_dirty = 1;
  p->dirty = 1;
  want_sync(s);
  start_prealloc(s, p);
  return 0;
}

/* Binary search: index of the last segment with base <= offset. */
static uint32_t seg_for(const struct partition *p, uint64_t offset) {
  uint32_t lo = 0, hi = p->nsegs;
  while (hi - lo > 1) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (p->segs[mid]->base <= offset)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/* Notes damage found in a partition's files: logged at error level, counted,
 * and the first finding kept for stats (sd_stream_damage).  Reads that meet
 * the same damaged offset again are not logged again. */
static void note_damage(const struct sd_stream *s, struct partition *p, uint64_t offset, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void note_damage(const struct sd_stream *s, struct partition *p, uint64_t offset, const char *fmt, ...) {
  char buf[PATH_MAX + 256];
  va_list ap;
  if (offset != UINT64_MAX && offset == p->damage_last) return;
  p->damage_last = offset;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  p->damage_found++;
  if (p->damage == NULL) p->damage = strdup(buf); /* no memory: still logged and counted */
  SD_ERROR("stream %s partition %u: %s", s->name, p->id, buf);
}

/* Record at offset (below visible_next): 0, SD_E_CORRUPT (checksum or a gap
 * left by damage, noted). */
static int record_at(const struct sd_stream *s, struct partition *p, uint64_t offset, struct sd_record *rec) {
  const struct sd_segment *seg = p->segs[seg_for(p, offset)];
  int64_t i = sd_segment_find(seg, offset);
  int rc = i < 0 ? SD_E_CORRUPT : sd_segment_record(seg, (uint32_t)i, rec);
  if (rc == SD_E_CORRUPT)
    note_damage(s, p, offset, "offset %llu: %s; not served", (unsigned long long)offset,
                i < 0 ? "missing (lost to damage)" : "checksum mismatch");
  return rc;
}

static inline uint64_t min_offset(const struct partition *p) { return p->segs[0]->base; }

/* ---- streams: life cycle ---------------------------------------------------- */

static void stream_free(struct sd_stream *s) {
  sd_groups_free(s->groups);
  if (s->parts) {
    for (uint32_t p = 0; p < s->cfg.partitions; p++) {
      struct partition *pt = &s->parts[p];
      for (uint32_t i = 0; i < pt->nsegs; i++) sd_segment_unref(pt->segs[i]);
      free(pt->segs);
      free(pt->dir);
      free(pt->ro_reason);
      free(pt->damage);
    }
  }
  for (uint32_t i = 0; i < s->ring_len; i++) free(s->ring[(s->ring_head + i) % s->ring_cap].id);
  free(s->ring);
  json_decref(s->ids);
  json_decref(s->consumers);
  free(s->parts);
  free(s->job.segs);
  free(s->job.seg_err);
  free(s->job.seg_sealed);
  free(s->job.ends);
  free(s->job.dirs);
  free(s->job.dir_err);
  free(s->merge_cur);
  free(s->merge_pos);
  free(s->name);
  free(s->dir);
  free(s->config_path);
  free(s);
}

void sd_stream_ref(struct sd_stream *s) { s->refs++; }

void sd_stream_unref(struct sd_stream *s) {
  SD_ASSERT(s->refs > 0);
  if (--s->refs == 0) stream_free(s);
}

static struct sd_stream *stream_alloc(struct sd_engine *e, const char *name, const struct sd_stream_config *cfg) {
  struct sd_stream *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->e = e;
  s->refs = 1;
  s->cfg = *cfg;
  sd_list_init(&s->durable_ops);
  sd_list_init(&s->waiters);
  sd_list_init(&s->sync_node);
  sd_list_init(&s->wake_node);
  s->name = strdup(name);
  s->dir = path_join(e->streams_dir, name);
  s->config_path = s->dir ? path_join(s->dir, "stream.json") : NULL;
  s->parts = calloc(cfg->partitions, sizeof(*s->parts));
  s->job.ends = calloc(cfg->partitions, sizeof(*s->job.ends));
  s->merge_cur = calloc(cfg->partitions, sizeof(*s->merge_cur));
  s->merge_pos = calloc(cfg->partitions, sizeof(*s->merge_pos));
  s->consumers = json_object();
  s->ids = json_object();
  if (!s->name || !s->dir || !s->config_path || !s->parts || !s->job.ends || !s->merge_cur || !s->merge_pos || !s->consumers ||
      !s->ids) {
    stream_free(s);
    return NULL;
  }
  for (uint32_t p = 0; p < cfg->partitions; p++) {
    char num[16];
    snprintf(num, sizeof(num), "%u", p);
    s->parts[p].id = p;
    s->parts[p].damage_last = UINT64_MAX;
    s->parts[p].staging = e->o.durability == SD_DURABILITY_ALWAYS;
    s->parts[p].dir = path_join(s->dir, num);
    if (s->parts[p].dir == NULL) {
      stream_free(s);
      return NULL;
    }
  }
  return s;
}

static int register_stream(struct sd_engine *e, struct sd_stream *s) {
  json_t *v = json_integer((json_int_t)(uintptr_t)s);
  if (v == NULL || json_object_set_new(e->streams, s->name, v) != 0) return -ENOMEM;
  return 0;
}

struct sd_stream *sd_engine_find(struct sd_engine *e, const char *name) {
  json_t *v = json_object_get(e->streams, name);
  return v ? (struct sd_stream *)(uintptr_t)json_integer_value(v) : NULL;
}

size_t sd_engine_stream_count(const struct sd_engine *e) { return json_object_size(e->streams); }

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* The keys of a JSON object in byte order; the caller frees the array
 * (the keys belong to the object).  NULL when empty or out of memory. */
static const char **sorted_keys(json_t *o, size_t *n) {
  size_t i = 0;
  *n = json_object_size(o);
  if (*n == 0) return NULL;
  const char **keys = malloc(*n * sizeof(*keys));
  if (keys == NULL) return NULL;
  const char *k;
  json_t *v;
  json_object_foreach(o, k, v) keys[i++] = k;
  qsort(keys, *n, sizeof(*keys), cmp_str);
  return keys;
}

void sd_engine_foreach(struct sd_engine *e, void (*fn)(void *arg, struct sd_stream *s), void *arg) {
  size_t n;
  const char **names = sorted_keys(e->streams, &n);
  if (names == NULL) return;
  for (size_t i = 0; i < n; i++) fn(arg, sd_engine_find(e, names[i]));
  free(names);
}

int sd_engine_create(struct sd_engine *e, const char *name, const struct sd_stream_config *cfg, int exclusive,
                     struct sd_stream **out, int *created) {
  int rc;
  if ((rc = sd_name_check(name, strlen(name))) != 0) return rc;
  if (e->closing) return SD_E_SHUTTING_DOWN;
  struct sd_stream *s = sd_engine_find(e, name);
  if (s != NULL) {
    if (exclusive) return SD_E_STREAM_EXISTS;
    if (cfg && !config_equal(cfg, &s->cfg)) return SD_E_CONFIG_MISMATCH;
    *out = s;
    *created = 0;
    return 0;
  }
  if (cfg == NULL) cfg = &e->o.defaults;
  if ((rc = config_check(cfg)) != 0) return rc;
  if (e->o.max_streams && sd_engine_stream_count(e) >= e->o.max_streams) return SD_E_TOO_MANY_STREAMS;

  s = stream_alloc(e, name, cfg);
  if (s == NULL) return -ENOMEM;
  s->created_at = sd_now_ms();
  s->generation = e->next_generation++;
  uv_mutex_lock(&e->meta_lock);
  e->meta_gen_wanted = e->next_generation;
  uv_mutex_unlock(&e->meta_lock);

  if (mkdir(s->dir, 0755) != 0) {
    rc = -errno;
    goto fail_stream;
  }
  for (uint32_t p = 0; p < cfg->partitions; p++) {
    struct partition *pt = &s->parts[p];
    struct sd_segment *seg;
    if (mkdir(pt->dir, 0755) != 0) {
      rc = -errno;
      goto fail_dir;
    }
    if ((rc = sd_segment_create(pt->dir, NULL, p, 0, e->o.segment_bytes, &seg)) != 0) goto fail_dir;
    if ((rc = push_segment(pt, seg)) != 0) {
      sd_segment_unref(seg);
      goto fail_dir;
    }
    pt->dir_dirty = 1;
    pt->dirty = 1; /* the header */
  }
  if ((rc = stream_write_config(s)) != 0) goto fail_dir;
  if ((rc = sd_groups_open(s, s->dir, &s->groups)) != 0) goto fail_dir;
  if ((rc = register_stream(e, s)) != 0) goto fail_dir;
  s->meta_dirty = 1;
  for (uint32_t p = 0; p < cfg->partitions; p++) start_prealloc(s, &s->parts[p]);
  *out = s;
  *created = 1;
  SD_INFO("stream %s created: %u partition(s), generation %llu", name, cfg->partitions,
          (unsigned long long)s->generation);
  return 0;

fail_dir:
  sd_fs_remove_tree(s->dir);
fail_stream:
  stream_free(s);
  return rc;
}

struct trash_req {
  uv_work_t req;
  struct sd_engine *e;
  char *path;
  struct sd_durable_op *op;
  int sync_rc, rc;
};

/* Makes the rename out of streams/ durable, then removes the files. */
static void trash_work(uv_work_t *req) {
  struct trash_req *r = req->data;
  r->sync_rc = sd_fs_sync_dir(r->e->streams_dir);
  if (r->sync_rc == 0) r->sync_rc = sd_fs_sync_dir(r->e->trash_dir);
  r->rc = sd_fs_remove_tree(r->path);
  if (r->rc == 0) r->rc = sd_fs_sync_dir(r->e->trash_dir);
}

static void trash_after(uv_work_t *req, int status) {
  struct trash_req *r = req->data;
  (void)status;
  if (r->rc != 0) SD_WARN("removing %s: %s", r->path, sd_strerror(r->rc));
  r->e->jobs_running--;
  if (r->op) r->op->cb(r->op, r->sync_rc);
  free(r->path);
  free(r);
}

int sd_engine_delete(struct sd_engine *e, const char *name, struct sd_durable_op *op) {
  struct sd_stream *s = sd_engine_find(e, name);
  char tname[PATH_MAX];
  if (s == NULL) return SD_E_STREAM_NOT_FOUND;
  /* The name alone may already use the 255 bytes a file name can have. */
  snprintf(tname, sizeof(tname), "%llu-%llu", (unsigned long long)s->generation, (unsigned long long)++e->trash_seq);
  char *tpath = path_join(e->trash_dir, tname);
  if (tpath == NULL) return -ENOMEM;
  /* The rename makes the deletion atomic; removal of the files follows off
   * the loop.  The trash is emptied at start-up too. */
  if (rename(s->dir, tpath) != 0) {
    int rc = -errno;
    free(tpath);
    return rc;
  }
  json_object_del(e->streams, name);
  s->deleted = 1;
  if (sd_list_linked(&s->sync_node)) {
    sd_list_remove(&s->sync_node);
    sd_stream_unref(s);
  }
  if (sd_list_linked(&s->wake_node)) {
    sd_list_remove(&s->wake_node);
    sd_stream_unref(s);
  }
  SD_INFO("stream %s deleted", name);
  struct trash_req *r = calloc(1, sizeof(*r));
  if (r != NULL) {
    r->e = e;
    r->path = tpath;
    r->op = op;
    r->req.data = r;
    e->jobs_running++;
    SD_ASSERT(uv_queue_work(e->loop, &r->req, trash_work, trash_after) == 0);
  } else {
    free(tpath);
    if (op) {
      sd_list_init(&op->node);
      op->target = 0;
      sd_list_push_back(&s->durable_ops, &op->node); /* completed just below */
    }
  }
  complete_ops(s, UINT64_MAX, SD_E_STREAM_DELETED);
  wake_waiters(s, SD_E_STREAM_DELETED);
  sd_stream_unref(s); /* the engine's reference */
  return 0;
}

/* ---- streams: accessors ---------------------------------------------------- */

struct sd_groups *sd_stream_groups(const struct sd_stream *s) { return s->groups; }
uv_loop_t *sd_stream_loop(const struct sd_stream *s) { return s->e->loop; }
void sd_stream_request_sync(struct sd_stream *s) {
  if (!s->deleted) want_sync(s);
}

int sd_stream_deleted(const struct sd_stream *s) { return s->deleted; }
const char *sd_stream_name(const struct sd_stream *s) { return s->name; }
const struct sd_stream_config *sd_stream_config(const struct sd_stream *s) { return &s->cfg; }

void sd_stream_stat(const struct sd_stream *s, struct sd_stream_stat *out) {
  out->total_published = s->total_published;
  out->total_consumed = s->total_consumed;
  out->created_at_ms = s->created_at;
  out->generation = s->generation;
  out->subscribers = s->subscribers;
}

int sd_stream_partition_stat(const struct sd_stream *s, uint32_t partition, struct sd_partition_stat *out) {
  if (partition >= s->cfg.partitions) return SD_E_INVALID_PARAMETER;
  const struct partition *p = &s->parts[partition];
  out->min_offset = min_offset(p);
  out->next_offset = p->visible_next;
  if (out->min_offset > out->next_offset) out->min_offset = out->next_offset;
  out->bytes = p->bytes;
  out->segments = p->nsegs;
  out->read_only = p->ro_reason != NULL;
  out->damage_found = p->damage_found;
  return 0;
}

const char *sd_stream_damage(const struct sd_stream *s, uint32_t partition) {
  return partition < s->cfg.partitions ? s->parts[partition].damage : NULL;
}

const char *sd_stream_read_only_reason(const struct sd_stream *s, uint32_t partition) {
  return partition < s->cfg.partitions ? s->parts[partition].ro_reason : NULL;
}

void sd_stream_subscribers_add(struct sd_stream *s, int delta) { s->subscribers = (uint32_t)((int)s->subscribers + delta); }
void sd_stream_count_consumed(struct sd_stream *s, uint64_t n) { s->total_consumed += n; }

/* ---- idempotency window ------------------------------------------------------ */

#define DEDUP_OFFSET_BITS 54

static void dedup_expire(struct sd_stream *s, uint64_t now) {
  uint64_t cutoff = now > s->e->o.dedup_window_ms ? now - s->e->o.dedup_window_ms : 0;
  while (s->ring_len > 0) {
    struct dedup_entry *d = &s->ring[s->ring_head];
    if (d->ts >= cutoff) break;
    json_object_deln(s->ids, d->id, d->len);
    free(d->id);
    s->ring_head = (s->ring_head + 1) % s->ring_cap;
    s->ring_len--;
  }
}

static int dedup_lookup(struct sd_stream *s, const char *id, size_t len, struct sd_append_result *res) {
  json_t *v = json_object_getn(s->ids, id, len);
  if (v == NULL) return 0;
  uint64_t packed = (uint64_t)json_integer_value(v);
  res->partition = (uint32_t)(packed >> DEDUP_OFFSET_BITS);
  res->offset = packed & ((1ull << DEDUP_OFFSET_BITS) - 1);
  res->duplicate = 1;
  return 1;
}

static int dedup_insert(struct sd_stream *s, const char *id, size_t len, uint32_t partition, uint64_t offset,
                        uint64_t ts) {
  if (s->ring_len == s->ring_cap) {
    uint32_t cap = s->ring_cap ? s->ring_cap * 2 : 64;
    struct dedup_entry *n = malloc(cap * sizeof(*n));
    if (n == NULL) return -ENOMEM;
    for (uint32_t i = 0; i < s->ring_len; i++) n[i] = s->ring[(s->ring_head + i) % s->ring_cap];
    free(s->ring);
    s->ring = n;
    s->ring_cap = cap;
    s->ring_head = 0;
  }
  char *copy = malloc(len ? len : 1);
  if (copy == NULL) return -ENOMEM;
  memcpy(copy, id, len);
  json_t *v = json_integer((json_int_t)(((uint64_t)partition << DEDUP_OFFSET_BITS) | offset));
  if (v == NULL || json_object_setn_new(s->ids, id, len, v) != 0) {
    free(copy);
    return -ENOMEM;
  }
  s->ring[(s->ring_head + s->ring_len) % s->ring_cap] = (struct dedup_entry){ts, copy, (uint32_t)len};
  s->ring_len++;
  return 0;
}

/* Drops the newest n entries (rollback of a failed batch). */
static void dedup_pop(struct sd_stream *s, uint32_t n) {
  while (n-- > 0 && s->ring_len > 0) {
    struct dedup_entry *d = &s->ring[(s->ring_head + s->ring_len - 1) % s->ring_cap];
    json_object_deln(s->ids, d->id, d->len);
    free(d->id);
    s->ring_len--;
  }
}

/* ---- append ----------------------------------------------------------------- */

static void mark_partition(struct partition *p) {
  if (p->touched) return;
  p->touched = 1;
  p->mark_nsegs = p->nsegs;
  p->mark_count = active_seg(p)->count;
  p->mark_next = p->next_offset;
  p->mark_bytes = p->bytes;
  p->mark_ts = p->last_ts;
}

/* Undoes the current batch on p: segments it created go, the rest is cut. */
static void rollback_partition(struct partition *p) {
  while (p->nsegs > p->mark_nsegs) {
    struct sd_segment *seg = p->segs[--p->nsegs];
    sd_segment_unlink(seg);
    sd_segment_unref(seg);
    p->dir_dirty = 1;
  }
  struct sd_segment *act = active_seg(p);
  act->sealed = 0;
  int rc = sd_segment_truncate(act, p->mark_count);
  if (rc != 0) SD_WARN("rollback of %s: %s", act->path, sd_strerror(rc));
  p->next_offset = p->mark_next;
  p->bytes = p->mark_bytes;
  p->last_ts = p->mark_ts;
  p->touched = 0;
}

int sd_stream_append(struct sd_stream *s, const struct sd_event_in *ev, size_t n, struct sd_append_result *res) {
  struct sd_engine *e = s->e;
  uint32_t np = s->cfg.partitions, ids_added = 0;
  uint64_t max_record = (uint64_t)e->o.max_event_bytes + 1024; /* plus offset, partition, timestamp, key, id */
  uint64_t now = sd_now_ms(), published = 0;
  char pre[64], post[40];
  int rc = 0;

  if (s->deleted) return SD_E_STREAM_DELETED;
  if (e->closing) return SD_E_SHUTTING_DOWN;
  for (size_t i = 0; i < n; i++) {
    if (ev[i].partition >= (int32_t)np || ev[i].partition < -1) return SD_E_INVALID_PARAMETER;
    if (ev[i].id && (ev[i].id_len == 0 || ev[i].id_len > SD_MAX_ID)) return SD_E_INVALID_PARAMETER;
    if (sd_record_size(ev[i].id_len, ev[i].members_len + sizeof(pre) + sizeof(post)) > max_record ||
        sd_record_size(ev[i].id_len, ev[i].members_len + sizeof(pre) + sizeof(post)) + SD_SEG_HEADER_BYTES >
            SD_SEG_MAX_BYTES)
      return SD_E_EVENT_TOO_LARGE;
  }
  dedup_expire(s, now);

  for (size_t i = 0; i < n; i++) {
    const struct sd_event_in *x = &ev[i];
    if (x->id && dedup_lookup(s, x->id, x->id_len, &res[i])) continue;
    uint32_t pn;
    if (x->partition >= 0)
      pn = (uint32_t)x->partition;
    else if (x->key)
      pn = sd_crc32c(x->key, x->key_len, 0) % np;
    else
      pn = s->rr++ % np;
    struct partition *p = &s->parts[pn];
    if (p->ro_reason) {
      rc = SD_E_READ_ONLY;
      goto rollback;
    }
    mark_partition(p);

    uint64_t off = p->next_offset;
    uint64_t ts = now > p->last_ts ? now : p->last_ts;
    /* {"offset":O,"partition":P,  ...members...  ,"timestamp":T} */
    size_t lp = 0, ls = 0;
    memcpy(pre, "{\"offset\":", 10);
    lp = 10 + sd_fmt_u64(pre + 10, off);
    memcpy(pre + lp, ",\"partition\":", 13);
    lp += 13;
    lp += sd_fmt_u64(pre + lp, pn);
    pre[lp++] = ',';
    memcpy(post, ",\"timestamp\":", 13);
    ls = 13 + sd_fmt_u64(post + 13, ts);
    post[ls++] = '}';
    size_t jlen = (size_t)lp + x->members_len + (size_t)ls;
    uint64_t need = sd_record_size(x->id_len, jlen);
    if (need > sd_segment_room(active_seg(p))) {
      if ((rc = roll(s, p, need)) != 0) goto rollback;
    }
    struct sd_segment *act = active_seg(p);
    if (act->end + need > act->reserved) {
      /* The reservation ahead fell behind: reserve inline. */
      uint64_t want = act->reserved + sd_segment_chunk(act->size);
      if ((rc = sd_segment_reserve(act, want > act->end + need ? want : act->end + need)) != 0) goto rollback;
    }
    struct iovec iov[3] = {{pre, (size_t)lp}, {(void *)x->members, x->members_len}, {post, (size_t)ls}};
    if ((rc = sd_segment_append(active_seg(p), ts, x->id, x->id_len, iov, 3, jlen)) != 0) goto rollback;
    p->next_offset++;
    p->bytes += need;
    p->last_ts = ts;
    res[i] = (struct sd_append_result){pn, off, 0};
    published++;
    if (x->id) {
      if ((rc = dedup_insert(s, x->id, x->id_len, pn, off, ts)) != 0) goto rollback;
      ids_added++;
    }
  }

  int visible_now = e->o.durability != SD_DURABILITY_ALWAYS;
  for (uint32_t p = 0; p < np; p++) {
    struct partition *pt = &s->parts[p];
    if (!pt->touched) continue;
    pt->touched = 0;
    pt->dirty = 1;
    if (visible_now) pt->visible_next = pt->next_offset;
    maybe_reserve(s, pt);
  }
  s->total_published += published;
  s->write_seq++;
  if (!visible_now) {
    want_sync(s);
    return SD_PENDING;
  }
  if (published && !sd_list_linked(&s->wake_node)) {
    /* Waiters learn of new records once per loop pass, not once per publish. */
    sd_stream_ref(s);
    sd_list_push_back(&e->wake_list, &s->wake_node);
    uv_idle_start(&e->idle, on_idle);
  }
  return 0;

rollback:
  dedup_pop(s, ids_added);
  for (uint32_t p = 0; p < np; p++)
    if (s->parts[p].touched) rollback_partition(&s->parts[p]);
  if (rc == -ENOSPC || rc == -EDQUOT)
    SD_WARN("stream %s: disk full, publish refused", s->name);
  return rc;
}

/* ---- reads ------------------------------------------------------------------ */

int sd_stream_resolve_offset(const struct sd_stream *s, uint32_t partition, int64_t from, uint64_t *out) {
  if (partition >= s->cfg.partitions) return SD_E_INVALID_PARAMETER;
  const struct partition *p = &s->parts[partition];
  uint64_t lo = min_offset(p), end = p->visible_next;
  if (lo > end) lo = end;
  if (from < 0) {
    uint64_t back = (uint64_t)(-(from + 1)) + 1;
    uint64_t start = end > back ? end - back : 0;
    *out = start < lo ? lo : start;
    return 0;
  }
  if ((uint64_t)from < lo) return SD_E_OFFSET_OUT_OF_RANGE;
  *out = (uint64_t)from;
  return 0;
}

int sd_stream_read(struct sd_stream *s, uint32_t partition, uint64_t from, uint32_t limit, size_t max_bytes,
                   sd_record_visit_fn fn, void *arg) {
  if (partition >= s->cfg.partitions) return SD_E_INVALID_PARAMETER;
  struct partition *p = &s->parts[partition];
  if (from < min_offset(p)) return SD_E_OFFSET_OUT_OF_RANGE;
  uint64_t end = p->visible_next;
  uint32_t n = 0;
  size_t bytes = 0;
  if (from >= end) return 0;
  uint32_t si = seg_for(p, from);
  for (uint64_t off = from; off < end && n < limit; off++) {
    while (si + 1 < p->nsegs && p->segs[si + 1]->base <= off) si++;
    const struct sd_segment *seg = p->segs[si];
    struct sd_record rec;
    int64_t i = sd_segment_find(seg, off);
    int rc = i < 0 ? SD_E_CORRUPT : sd_segment_record(seg, (uint32_t)i, &rec);
    if (rc != 0) {
      note_damage(s, p, off, "offset %llu: %s; not served", (unsigned long long)off,
                  i < 0 ? "missing (lost to damage)" : "checksum mismatch");
      return n ? (int)n : rc;
    }
    if (n > 0 && bytes + rec.json_len > max_bytes) break;
    bytes += rec.json_len;
    n++;
    if (fn(arg, &rec) != 0) break;
  }
  return (int)n;
}

int sd_stream_resolve_all(struct sd_stream *s, int64_t from, uint64_t *pos) {
  uint32_t np = s->cfg.partitions;
  struct sd_record *cur = s->merge_cur;
  int rc;
  if (from >= 0) {
    for (uint32_t p = 0; p < np; p++)
      if ((rc = sd_stream_resolve_offset(s, p, from, &pos[p])) != 0) return rc;
    return 0;
  }
  /* Walk back from every partition's end, taking the newest record each
   * time, until N are taken; pos[p] ends at the first one taken. */
  uint64_t want = (uint64_t)(-(from + 1)) + 1;
  for (uint32_t p = 0; p < np; p++) {
    struct partition *pt = &s->parts[p];
    pos[p] = pt->visible_next;
    cur[p].json = NULL;
    if (pos[p] > min_offset(pt) && (rc = record_at(s, pt, pos[p] - 1, &cur[p])) != 0) return rc;
  }
  while (want > 0) {
    int best = -1;
    for (uint32_t p = 0; p < np; p++) {
      if (cur[p].json == NULL) continue;
      if (best < 0 || cur[p].timestamp_ms >= cur[best].timestamp_ms) best = (int)p;
    }
    if (best < 0) break;
    struct partition *pt = &s->parts[best];
    pos[best]--;
    want--;
    cur[best].json = NULL;
    if (pos[best] > min_offset(pt) && (rc = record_at(s, pt, pos[best] - 1, &cur[best])) != 0) return rc;
  }
  return 0;
}

int sd_stream_read_merged(struct sd_stream *s, int64_t from, uint32_t limit, size_t max_bytes,
                          sd_record_visit_fn fn, void *arg) {
  uint32_t np = s->cfg.partitions, n = 0;
  uint64_t *pos = s->merge_pos;
  struct sd_record *cur = s->merge_cur;
  size_t bytes = 0;
  int rc;

  if ((rc = sd_stream_resolve_all(s, from, pos)) != 0) return rc;
  /* Forward merge by (timestamp, partition). */
  for (uint32_t p = 0; p < np; p++) {
    cur[p].json = NULL;
    if (pos[p] < s->parts[p].visible_next && (rc = record_at(s, &s->parts[p], pos[p], &cur[p])) != 0) return rc;
  }
  while (n < limit) {
    int best = -1;
    for (uint32_t p = 0; p < np; p++) {
      if (cur[p].json == NULL) continue;
      if (best < 0 || cur[p].timestamp_ms < cur[best].timestamp_ms) best = (int)p;
    }
    if (best < 0) break;
    struct sd_record rec = cur[best];
    if (n > 0 && bytes + rec.json_len > max_bytes) break;
    bytes += rec.json_len;
    n++;
    if (fn(arg, &rec) != 0) break;
    pos[best]++;
    cur[best].json = NULL;
    if (pos[best] < s->parts[best].visible_next && (rc = record_at(s, &s->parts[best], pos[best], &cur[best])) != 0)
      return (int)n;
  }
  return (int)n;
}

/* ---- consumer positions ----------------------------------------------------- */

void sd_stream_consumer_seen(struct sd_stream *s, const char *consumer, uint32_t partition, uint64_t offset,
                             uint64_t now_ms) {
  /* "<consumer>#<partition, 5 digits or more>": sorts by partition number.
   * Built by hand: every delivery to a subscriber comes through here. */
  char key[SD_MAX_NAME + 32], digits[20];
  size_t n = strnlen(consumer, SD_MAX_NAME), nd = sd_fmt_u64(digits, partition);
  memcpy(key, consumer, n);
  key[n++] = '#';
  for (size_t z = nd; z < 5; z++) key[n++] = '0';
  memcpy(key + n, digits, nd);
  key[n + nd] = '\0';
  json_t *v = json_object_get(s->consumers, key);
  if (v != NULL) {
    json_integer_set(json_array_get(v, 0), (json_int_t)offset);
    json_integer_set(json_array_get(v, 1), (json_int_t)now_ms);
    return;
  }
  if (s->e->o.max_consumers_tracked && json_object_size(s->consumers) >= s->e->o.max_consumers_tracked) {
    /* Forget the one seen longest ago. */
    const char *k, *oldest = NULL;
    json_t *x;
    json_int_t t = INT64_MAX;
    json_object_foreach(s->consumers, k, x) {
      if (json_integer_value(json_array_get(x, 1)) < t) {
        t = json_integer_value(json_array_get(x, 1));
        oldest = k;
      }
    }
    if (oldest) json_object_del(s->consumers, oldest);
  }
  json_object_set_new(s->consumers, key, json_pack("[I,I]", (json_int_t)offset, (json_int_t)now_ms));
}

void sd_stream_consumers_foreach(struct sd_stream *s, void (*fn)(void *arg, const struct sd_consumer_pos *p),
                                 void *arg) {
  size_t n;
  json_t *v;
  const char **keys = sorted_keys(s->consumers, &n);
  if (keys == NULL) return;
  for (size_t i = 0; i < n; i++) {
    char name[SD_MAX_NAME + 16];
    const char *hash = strrchr(keys[i], '#');
    size_t len = (size_t)(hash - keys[i]);
    memcpy(name, keys[i], len);
    name[len] = '\0';
    v = json_object_get(s->consumers, keys[i]);
    struct sd_consumer_pos cp = {name, (uint32_t)strtoul(hash + 1, NULL, 10),
                                 (uint64_t)json_integer_value(json_array_get(v, 0)),
                                 (uint64_t)json_integer_value(json_array_get(v, 1))};
    fn(arg, &cp);
  }
  free(keys);
}

/* ---- retention ---------------------------------------------------------------- */

struct unlink_req {
  uv_work_t req;
  struct sd_engine *e;
  struct sd_segment *seg;
  int rc;
};

static void unlink_work(uv_work_t *req) {
  struct unlink_req *r = req->data;
  r->rc = sd_segment_unlink(r->seg);
}

static void unlink_after(uv_work_t *req, int status) {
  struct unlink_req *r = req->data;
  (void)status;
  if (r->rc != 0) SD_WARN("removing %s: %s", r->seg->path, sd_strerror(r->rc));
  sd_segment_unref(r->seg);
  r->e->jobs_running--;
  free(r);
}

static void retention_partition(struct sd_stream *s, struct partition *p, uint64_t now) {
  const struct sd_stream_config *c = &s->cfg;
  uint64_t age = c->retention_hours * 3600000u;
  uint64_t cutoff = c->retention_hours && now > age ? now - age : 0;
  /* An idle active segment whose every event is past the age limit is
   * sealed so that the next pass can remove it. */
  struct sd_segment *act = active_seg(p);
  if (cutoff && act->count > 0 && act->last_ts < cutoff && p->ro_reason == NULL &&
      p->visible_next == p->next_offset) {
    int rc = roll(s, p, 0);
    if (rc != 0) SD_WARN("stream %s partition %u: roll for retention: %s", s->name, p->id, sd_strerror(rc));
  }
  while (p->nsegs > 1) {
    struct sd_segment *seg = p->segs[0];
    if (!seg->sealed || !seg->synced || seg->in_job) break;
    uint64_t seg_bytes = seg->end - SD_SEG_HEADER_BYTES;
    uint64_t seg_end = seg->base + seg->count;
    int expired = (cutoff && seg->last_ts < cutoff) ||
                  (c->retention_bytes && p->bytes - seg_bytes >= c->retention_bytes) ||
                  (c->max_events && p->next_offset - seg_end >= c->max_events);
    if (!expired) break;
    memmove(p->segs, p->segs + 1, (p->nsegs - 1) * sizeof(*p->segs));
    p->nsegs--;
    p->bytes -= seg_bytes;
    p->dir_dirty = 1;
    struct unlink_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
      sd_segment_unref(seg);
      continue;
    }
    r->e = s->e;
    r->seg = seg;
    r->req.data = r;
    s->e->jobs_running++;
    SD_ASSERT(uv_queue_work(s->e->loop, &r->req, unlink_work, unlink_after) == 0);
    SD_DEBUG("stream %s partition %u: segment %llu removed by retention", s->name, p->id,
             (unsigned long long)seg->base);
  }
}

static void on_retention(uv_timer_t *t) {
  struct sd_engine *e = t->data;
  uint64_t now = sd_now_ms();
  const char *key;
  json_t *v;
  json_object_foreach(e->streams, key, v) {
    struct sd_stream *s = (struct sd_stream *)(uintptr_t)json_integer_value(v);
    for (uint32_t p = 0; p < s->cfg.partitions; p++) retention_partition(s, &s->parts[p], now);
    if (s->groups) sd_groups_retention(s->groups);
    dedup_expire(s, now);
  }
}

/* ---- start-up check of indexed segments ------------------------------------------ */

/* A sealed segment loaded from its index had only its last record checked
 * by recovery.  After start-up, one partition at a time (one thread of the
 * pool, so syncs keep the others), every record of those segments is
 * checked against its CRC; damage is noted (logged, shown in stats) like
 * damage found by a read.  The chain holds a reference on each stream it
 * will visit and on the segments of the partition being checked, so
 * deletion and retention may go on meanwhile; sd_engine_close stops it. */
struct verify_chain {
  uv_work_t req;
  struct sd_engine *e;
  struct sd_stream **streams; /* referenced */
  uint32_t nstreams, si, pi;  /* next: stream si, partition pi */
  struct sd_segment **segs;   /* the partition being checked (referenced) */
  uint64_t *bad;              /* per segment: first offset failing its check, UINT64_MAX: none */
  uint32_t nsegs, cap;
  uint64_t checked;           /* records checked */
  uint64_t damaged;           /* segments with a record that failed */
  uint64_t t0;
  atomic_int stop;
};

static void verify_work(uv_work_t *req) {
  struct verify_chain *v = req->data;
  for (uint32_t k = 0; k < v->nsegs; k++) {
    const struct sd_segment *seg = v->segs[k];
    v->bad[k] = UINT64_MAX;
    for (uint32_t i = 0; i < seg->count; i++) {
      struct sd_record rec;
      if ((i & 1023) == 0 && atomic_load_explicit(&v->stop, memory_order_relaxed)) return;
      v->checked++;
      if (sd_segment_record(seg, i, &rec) != 0) {
        v->bad[k] = seg->base + i;
        v->damaged++;
        break;
      }
    }
  }
}

static void verify_next(struct verify_chain *v);

static void verify_after(uv_work_t *req, int status) {
  struct verify_chain *v = req->data;
  struct sd_stream *s = v->streams[v->si];
  (void)status;
  for (uint32_t k = 0; k < v->nsegs; k++) {
    if (v->bad[k] != UINT64_MAX && !s->deleted && !atomic_load(&v->stop))
      note_damage(s, &s->parts[v->pi], v->bad[k], "offset %llu: checksum mismatch in %s (start-up check); not served",
                  (unsigned long long)v->bad[k], v->segs[k]->path);
    sd_segment_unref(v->segs[k]);
  }
  v->nsegs = 0;
  v->e->jobs_running--;
  if (++v->pi >= s->cfg.partitions) {
    v->pi = 0;
    v->si++;
  }
  verify_next(v);
}

/* Queues the check of the next partition that has unchecked segments, or
 * ends the chain. */
static void verify_next(struct verify_chain *v) {
  struct sd_engine *e = v->e;
  while (!e->closing && !atomic_load(&v->stop) && v->si < v->nstreams) {
    struct sd_stream *s = v->streams[v->si];
    struct partition *p = &s->parts[v->pi];
    uint32_t n = 0;
    for (uint32_t i = 0; i < p->nsegs && !s->deleted; i++) n += p->segs[i]->unchecked;
    if (n > v->cap) {
      struct sd_segment **ns = realloc(v->segs, n * sizeof(*ns));
      if (ns) v->segs = ns;
      uint64_t *nb = ns ? realloc(v->bad, n * sizeof(*nb)) : NULL;
      if (nb) v->bad = nb;
      if (!ns || !nb) break; /* no memory: the check ends here, reads still check */
      v->cap = n;
    }
    if (n > 0) {
      for (uint32_t i = 0; i < p->nsegs; i++) {
        struct sd_segment *seg = p->segs[i];
        if (!seg->unchecked) continue;
        seg->unchecked = 0;
        sd_segment_ref(seg);
        v->segs[v->nsegs++] = seg;
      }
      e->jobs_running++;
      v->req.data = v;
      SD_ASSERT(uv_queue_work(e->loop, &v->req, verify_work, verify_after) == 0);
      return;
    }
    if (++v->pi >= s->cfg.partitions) {
      v->pi = 0;
      v->si++;
    }
  }
  if (!e->closing && !atomic_load(&v->stop)) {
    if (v->damaged)
      SD_ERROR("start-up check: %llu records checked in %llu ms, %llu damaged segment(s) found (see above)",
               (unsigned long long)v->checked, (unsigned long long)(sd_now_ms() - v->t0),
               (unsigned long long)v->damaged);
    else
      SD_INFO("start-up check: %llu records checked in %llu ms, no damage", (unsigned long long)v->checked,
              (unsigned long long)(sd_now_ms() - v->t0));
  }
  for (uint32_t i = 0; i < v->nstreams; i++) sd_stream_unref(v->streams[i]);
  free(v->streams);
  free(v->segs);
  free(v->bad);
  e->verify = NULL;
  free(v);
}

/* Starts the check of every stream loaded at start-up.  Without memory it
 * is skipped (reads still check every record they serve). */
static void verify_start(struct sd_engine *e) {
  struct verify_chain *v = calloc(1, sizeof(*v));
  size_t n = json_object_size(e->streams);
  if (v == NULL || (n && (v->streams = calloc(n, sizeof(*v->streams))) == NULL)) {
    free(v);
    SD_WARN("start-up check of stored records skipped: no memory");
    return;
  }
  const char *key;
  json_t *val;
  json_object_foreach(e->streams, key, val) {
    struct sd_stream *s = (struct sd_stream *)(uintptr_t)json_integer_value(val);
    sd_stream_ref(s);
    v->streams[v->nstreams++] = s;
  }
  v->e = e;
  v->t0 = sd_now_ms();
  atomic_init(&v->stop, 0);
  e->verify = v;
  verify_next(v);
}

/* ---- recovery ------------------------------------------------------------------ */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void set_aside(const char *path) {
  char dst[PATH_MAX];
  snprintf(dst, sizeof(dst), "%s.damaged", path);
  if (rename(path, dst) == 0)
    SD_ERROR("%s set aside as %s", path, dst);
  else
    SD_ERROR("%s could not be set aside: %s", path, strerror(errno));
}

static int recover_partition(struct sd_stream *s, struct partition *p) {
  struct sd_engine *e = s->e;
  DIR *d = opendir(p->dir);
  uint64_t *bases = NULL;
  size_t nb = 0, cap = 0;
  int rc = 0;
  if (d == NULL) return -errno;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    const char *dot = strrchr(de->d_name, '.');
    if (dot && (strcmp(dot, ".tmp") == 0 || strcmp(dot, ".new") == 0)) {
      /* unfinished: a reservation, a segment before its rename, an index */
      unlinkat(dirfd(d), de->d_name, 0);
      continue;
    }
    if (dot && strcmp(dot, ".damaged") == 0) {
      /* set aside by an earlier start: still reported until removed */
      note_damage(s, p, UINT64_MAX, "%s/%s was set aside as damaged", p->dir, de->d_name);
      continue;
    }
    if (dot == NULL || strcmp(dot, ".seg") != 0 || dot - de->d_name != 20) continue;
    if (nb == cap) {
      cap = cap ? cap * 2 : 16;
      uint64_t *nbs = realloc(bases, cap * sizeof(*nbs));
      if (nbs == NULL) {
        rc = -ENOMEM;
        goto out;
      }
      bases = nbs;
    }
    bases[nb++] = strtoull(de->d_name, NULL, 10);
  }
  if (nb > 1) qsort(bases, nb, sizeof(*bases), cmp_u64);
  uint64_t expect = 0;
  for (size_t i = 0; i < nb; i++) {
    char path[PATH_MAX];
    struct sd_segment *seg;
    struct sd_segment_recovery rep;
    int last = i + 1 == nb;
    sd_segment_path(path, sizeof(path), p->dir, bases[i], "seg");
    rc = sd_segment_open(path, p->id, bases[i], last, SD_SEG_MAX_BYTES, &seg, &rep);
    if (rc == SD_E_CORRUPT_FILE) {
      note_damage(s, p, UINT64_MAX, "segment %s has a bad header", path);
      set_aside(path);
      rc = 0;
      continue;
    }
    if (rc != 0) goto out;
    if (last && seg->count == 0 && p->nsegs > 0 && seg->base > expect) {
      /* The newest segment holds no record and starts past the end of the
       * one before: a crash during a roll, before the records that filled
       * the older segment were written (in `always` mode they wait in
       * memory for their sync: never acknowledged, never visible).
       * Nothing exists at or after `expect`, so the partition goes on from
       * there, as after a torn tail, instead of keeping a gap that would
       * stop every reader.  The empty file goes; a new one is made below. */
      SD_WARN("stream %s partition %u: offsets %llu..%llu were never written before the empty segment %s (a crash "
              "during a roll); the next offset is %llu",
              s->name, p->id, (unsigned long long)expect, (unsigned long long)seg->base - 1, path,
              (unsigned long long)expect);
      sd_segment_unref(seg);
      if (unlink(path) != 0) {
        rc = -errno;
        goto out;
      }
      p->dir_dirty = 1;
      continue;
    }
    if (p->nsegs > 0 && seg->base != expect) {
      note_damage(s, p, UINT64_MAX, "offsets %llu..%llu are missing before segment %s", (unsigned long long)expect,
                  (unsigned long long)seg->base - 1, path);
    }
    if (rep.cut_bytes) {
      if (rep.damaged)
        note_damage(s, p, UINT64_MAX, "damage in sealed segment %s from offset %llu on; %llu bytes unreadable", path,
                    (unsigned long long)(seg->base + seg->count), (unsigned long long)rep.cut_bytes);
      else
        SD_WARN("stream %s partition %u: torn tail of %s cut; the next offset is %llu", s->name, p->id, path,
                (unsigned long long)(seg->base + seg->count));
    }
    /* A sealed segment with a valid index was synced before its index was
     * written (sync_work); the others may hold data that never reached the
     * disk, and their (possibly cut) contents must be durable before the
     * partition's next offset is built on them. */
    if (!last && !rep.used_index && fdatasync(seg->fd) != 0) {
      rc = -errno;
      sd_segment_unref(seg);
      goto out;
    }
    /* A sealed segment found without a valid index is synced again by the
     * first job, which writes its index. */
    seg->synced = seg->sealed && rep.used_index;
    if (seg->sealed && !seg->synced) p->dirty = 1;
    if ((rc = push_segment(p, seg)) != 0) {
      sd_segment_unref(seg);
      goto out;
    }
    p->bytes += seg->end - SD_SEG_HEADER_BYTES;
    expect = seg->base + seg->count;
    if (seg->count) p->last_ts = seg->last_ts;
  }
  if (p->nsegs == 0) {
    struct sd_segment *seg;
    if ((rc = sd_segment_create(p->dir, NULL, p->id, expect, e->o.segment_bytes, &seg)) != 0) goto out;
    if ((rc = push_segment(p, seg)) != 0) {
      sd_segment_unref(seg);
      goto out;
    }
    p->dir_dirty = 1;
  }
  p->next_offset = p->visible_next = expect;
  if (active_seg(p)->sealed) {
    /* The newest file was set aside or already sealed: appends need a fresh one. */
    struct sd_segment *seg;
    if ((rc = sd_segment_create(p->dir, NULL, p->id, expect, e->o.segment_bytes, &seg)) != 0) goto out;
    if ((rc = push_segment(p, seg)) != 0) {
      sd_segment_unref(seg);
      goto out;
    }
    p->dir_dirty = 1;
  }
out:
  closedir(d);
  free(bases);
  return rc;
}

/* Rebuilds the idempotency window from the records younger than it. */
static int rebuild_ids(struct sd_stream *s) {
  uint64_t now = sd_now_ms();
  uint64_t cutoff = now > s->e->o.dedup_window_ms ? now - s->e->o.dedup_window_ms : 0;
  for (uint32_t p = 0; p < s->cfg.partitions; p++) {
    struct partition *pt = &s->parts[p];
    for (uint32_t i = 0; i < pt->nsegs; i++) {
      struct sd_segment *seg = pt->segs[i];
      if (seg->count == 0 || seg->last_ts < cutoff) continue;
      for (uint32_t r = sd_segment_seek_time(seg, cutoff); r < seg->count; r++) {
        struct sd_record rec;
        /* Only records with an id are read (and checked). */
        if (sd_segment_id_len(seg, r) == 0 || sd_segment_record(seg, r, &rec) != 0) continue;
        int rc = dedup_insert(s, rec.id, rec.id_len, p, rec.offset, rec.timestamp_ms);
        if (rc != 0) return rc;
      }
    }
  }
  return 0;
}

/* Moves a stream directory that cannot be loaded to <data>/damaged/, so
 * that its files are kept for inspection and the name can be used again. */
static void set_stream_aside(struct sd_engine *e, const char *name) {
  char from[PATH_MAX], to[PATH_MAX];
  snprintf(from, sizeof(from), "%s/%s", e->streams_dir, name);
  snprintf(to, sizeof(to), "%s/damaged", e->data_dir);
  if (sd_fs_mkdirs(to) != 0) return;
  snprintf(to, sizeof(to), "%s/damaged/%llu-%llu", e->data_dir, (unsigned long long)sd_now_ms(),
           (unsigned long long)++e->trash_seq);
  if (rename(from, to) == 0)
    SD_ERROR("stream %s: its files were moved to %s", name, to);
  else
    SD_ERROR("stream %s: cannot move %s aside: %s", name, from, strerror(errno));
}

static int load_stream(struct sd_engine *e, const char *name) {
  char path[PATH_MAX];
  json_error_t jerr;
  struct sd_stream_config cfg = {0};
  json_int_t parts = 0, rh = 0, rb = 0, me = 0, created = 0, gen = 0;
  int rc;
  snprintf(path, sizeof(path), "%s/%s/stream.json", e->streams_dir, name);
  json_t *j = json_load_file(path, 0, &jerr);
  if (j == NULL || json_unpack(j, "{s:I, s:I, s:I, s:I, s:I, s:I}", "partitions", &parts, "retention_hours", &rh,
                               "retention_bytes", &rb, "max_events", &me, "created_at", &created, "generation",
                               &gen) != 0) {
    json_decref(j);
    SD_ERROR("stream %s: %s is missing or unreadable; stream not loaded", name, path);
    set_stream_aside(e, name);
    return 0;
  }
  json_decref(j);
  cfg.partitions = (uint32_t)parts;
  cfg.retention_hours = (uint64_t)rh;
  cfg.retention_bytes = (uint64_t)rb;
  cfg.max_events = (uint64_t)me;
  if (sd_name_check(name, strlen(name)) != 0 || config_check(&cfg) != 0) {
    SD_ERROR("stream %s: invalid settings in %s; stream not loaded", name, path);
    set_stream_aside(e, name);
    return 0;
  }
  struct sd_stream *s = stream_alloc(e, name, &cfg);
  if (s == NULL) return -ENOMEM;
  s->created_at = (uint64_t)created;
  s->generation = (uint64_t)gen;
  for (uint32_t p = 0; p < cfg.partitions; p++) {
    struct partition *pt = &s->parts[p];
    if (mkdir(pt->dir, 0755) == 0) pt->dir_dirty = 1;
    if ((rc = recover_partition(s, pt)) != 0) {
      SD_ERROR("stream %s partition %u: recovery failed: %s", name, p, sd_strerror(rc));
      stream_free(s);
      return rc;
    }
  }
  if ((rc = rebuild_ids(s)) != 0 || (rc = sd_groups_open(s, s->dir, &s->groups)) != 0 ||
      (rc = register_stream(e, s)) != 0) {
    stream_free(s);
    return rc;
  }
  if (s->generation >= e->next_generation) e->next_generation = s->generation + 1;
  for (uint32_t p = 0; p < cfg.partitions; p++) {
    start_prealloc(s, &s->parts[p]);
    if (s->parts[p].dirty || s->parts[p].dir_dirty) want_sync(s);
  }
  return 0;
}

static int load_meta(struct sd_engine *e) {
  char path[PATH_MAX];
  json_error_t jerr;
  json_int_t next = 1;
  snprintf(path, sizeof(path), "%s/meta.json", e->data_dir);
  if (access(path, F_OK) != 0) {
    e->next_generation = 1;
    return 0;
  }
  json_t *j = json_load_file(path, 0, &jerr);
  if (j == NULL || json_unpack(j, "{s:I}", "next_generation", &next) != 0 || next < 1) {
    json_decref(j);
    SD_ERROR("%s is unreadable: %s", path, jerr.text);
    return SD_E_CORRUPT_FILE;
  }
  json_decref(j);
  e->next_generation = (uint64_t)next;
  return 0;
}

/* ---- engine -------------------------------------------------------------------- */

/* Takes <dir>/LOCK with flock: a second server on the same directory would
 * interleave appends.  Returns the descriptor, or -EBUSY / -errno. */
static int open_lock(const char *dir) {
  char path[PATH_MAX];
  snprintf(path, sizeof(path), "%s/LOCK", dir);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return -errno;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
    if (rc == -EBUSY) SD_ERROR("data directory %s is in use by another streamd", dir);
    close(fd);
    return rc;
  }
  return fd;
}

int sd_engine_open(uv_loop_t *loop, const struct sd_engine_options *o, struct sd_engine **out) {
  int rc;
  if (o->segment_bytes < SD_SEG_MIN_BYTES || o->segment_bytes > SD_SEG_MAX_BYTES) return SD_E_INVALID_PARAMETER;
  struct sd_engine *e = calloc(1, sizeof(*e));
  if (e == NULL) return -ENOMEM;
  e->loop = loop;
  e->o = *o;
  sd_list_init(&e->sync_list);
  sd_list_init(&e->wake_list);
  e->data_dir = strdup(o->data_dir);
  e->streams = json_object();
  if (e->data_dir == NULL || e->streams == NULL) {
    rc = -ENOMEM;
    goto fail_engine;
  }
  e->o.data_dir = e->data_dir;
  e->streams_dir = path_join(e->data_dir, "streams");
  e->trash_dir = path_join(e->data_dir, "trash");
  if (!e->streams_dir || !e->trash_dir) {
    rc = -ENOMEM;
    goto fail_engine;
  }
  if ((rc = sd_fs_mkdirs(e->data_dir)) != 0 || (rc = sd_fs_mkdirs(e->streams_dir)) != 0 ||
      (rc = sd_fs_mkdirs(e->trash_dir)) != 0)
    goto fail_engine;
  e->lock_fd = open_lock(e->data_dir);
  if (e->lock_fd < 0) {
    rc = e->lock_fd;
    goto fail_engine;
  }
  if ((rc = sd_fs_remove_children(e->trash_dir)) != 0) SD_WARN("emptying %s: %s", e->trash_dir, sd_strerror(rc));
  if ((rc = load_meta(e)) != 0) goto fail_engine;
  if (uv_mutex_init(&e->meta_lock) != 0) {
    rc = -ENOMEM;
    goto fail_engine;
  }

  uv_idle_init(loop, &e->idle);
  e->idle.data = e;
  DIR *d = opendir(e->streams_dir);
  if (d == NULL) {
    rc = -errno;
    goto fail_streams;
  }
  struct dirent *de;
  size_t loaded = 0;
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.') continue;
    if ((rc = load_stream(e, de->d_name)) != 0) {
      closedir(d);
      goto fail_streams;
    }
    loaded++;
  }
  closedir(d);
  e->meta_gen_wanted = e->meta_gen_written = e->next_generation;

  uv_timer_init(loop, &e->retention_timer);
  e->retention_timer.data = e;
  uv_timer_start(&e->retention_timer, on_retention, o->retention_check_ms, o->retention_check_ms);
  uv_timer_init(loop, &e->interval_timer);
  e->interval_timer.data = e;
  if (o->durability == SD_DURABILITY_INTERVAL)
    uv_timer_start(&e->interval_timer, on_interval, o->interval_ms, o->interval_ms);
  SD_INFO("data directory %s: %zu stream(s) recovered", e->data_dir, loaded);
  if (o->verify_on_start) verify_start(e);
  *out = e;
  return 0;

fail_streams: {
  /* Jobs started for the streams loaded so far must end before they go. */
  e->closing = 1;
  while (e->jobs_running > 0) uv_run(loop, UV_RUN_ONCE);
  while (!sd_list_empty(&e->sync_list)) {
    struct sd_stream *s = SD_CONTAINER_OF(e->sync_list.next, struct sd_stream, sync_node);
    sd_list_remove(&s->sync_node);
    sd_stream_unref(s);
  }
  const char *key;
  json_t *v;
  json_object_foreach(e->streams, key, v) stream_free((struct sd_stream *)(uintptr_t)json_integer_value(v));
  uv_close((uv_handle_t *)&e->idle, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}
  uv_mutex_destroy(&e->meta_lock);
fail_engine:
  if (e->lock_fd > 0) close(e->lock_fd);
  json_decref(e->streams);
  free(e->streams_dir);
  free(e->trash_dir);
  free(e->data_dir);
  free(e);
  return rc;
}

const struct sd_engine_options *sd_engine_options(const struct sd_engine *e) { return &e->o; }
const struct sd_hist *sd_engine_sync_latency(const struct sd_engine *e) { return &e->sync_hist; }

int sd_engine_close(struct sd_engine *e) {
  int first_err = 0;
  e->closing = 1;
  if (e->verify) atomic_store(&e->verify->stop, 1);
  uv_timer_stop(&e->retention_timer);
  uv_timer_stop(&e->interval_timer);
  /* Let running jobs finish; then sync what is left, on this thread. */
  while (e->jobs_running > 0 || !sd_list_empty(&e->sync_list) || !sd_list_empty(&e->wake_list))
    uv_run(e->loop, UV_RUN_ONCE);
  const char *key;
  json_t *v;
  void *tmp;
  json_object_foreach_safe(e->streams, tmp, key, v) {
    struct sd_stream *s = (struct sd_stream *)(uintptr_t)json_integer_value(v);
    for (uint32_t p = 0; p < s->cfg.partitions; p++) {
      struct partition *pt = &s->parts[p];
      for (uint32_t i = 0; i < pt->nsegs; i++) {
        struct sd_segment *seg = pt->segs[i];
        if ((seg->sealed && !seg->synced) || i == pt->nsegs - 1) {
          int frc = sd_segment_flush(seg);
          if (frc != 0 && first_err == 0) first_err = frc;
          if (fdatasync(seg->fd) != 0 && first_err == 0) first_err = -errno;
          if (seg->sealed && !seg->synced) sd_segment_write_index(seg);
        }
      }
      sd_fs_sync_dir(pt->dir);
    }
    if (s->meta_dirty) sd_fs_sync_dir(s->dir);
    if (s->groups) {
      const char *from, *to;
      int fd = sd_groups_sync_begin(s->groups, &from, &to);
      if (fd >= 0) {
        int rc = sd_groups_sync_work(fd, from, to, s->dir);
        if (rc != 0 && first_err == 0) first_err = rc;
      }
    }
    complete_ops(s, UINT64_MAX, SD_E_SHUTTING_DOWN);
    wake_waiters(s, SD_E_SHUTTING_DOWN);
    stream_free(s);
  }
  meta_write(e);
  sd_fs_sync_dir(e->streams_dir);
  sd_fs_sync_dir(e->data_dir);
  uv_close((uv_handle_t *)&e->idle, NULL);
  uv_close((uv_handle_t *)&e->retention_timer, NULL);
  uv_close((uv_handle_t *)&e->interval_timer, NULL);
  uv_run(e->loop, UV_RUN_NOWAIT);
  json_decref(e->streams);
  uv_mutex_destroy(&e->meta_lock);
  close(e->lock_fd);
  free(e->streams_dir);
  free(e->trash_dir);
  free(e->data_dir);
  free(e);
  return first_err;
}
