/*
 * group.c - consumer groups; see group.h.
 *
 * Per group and partition the state is a window of entries for the offsets
 * [committed, next): each delivered and either pending (with its delivery
 * count, consumer and redelivery deadline), acked, or dead.  committed
 * advances over settled (acked or dead) entries; next is the first offset
 * never delivered.  In auto-ack mode the window is always empty.
 *
 * groups.log: one change per line, "<crc> <json>\n", where <crc> is the
 * CRC32C of the JSON text in 8 lowercase hex digits.  Valid iff the CRC
 * matches and the JSON parses; replay applies the longest valid prefix and
 * cuts the rest.  Records ("t" member):
 *   create {g, mode, ack, ato, md, sto, pos:[per partition start]}
 *   del {g}                 dlv {g,p,f,to,c}   new deliveries f..to to c
 *   rdl {g,p,o,n,c}         redelivery n of o   ack {g,p,f,to}
 *   dead {g,p,o,n}          commit {g,p,o}      auto mode: next = committed = o
 *   skip {g,p,o,n}          retention moved the group to o, n skipped
 *   cons {g,c:[names]}      leave {g,c}
 *   part {g,p,c,n,sk,w:[[o,state,deliveries,consumer],...]}   snapshot of a partition
 *   deadlist {g,count,d:[[p,o,n],...]}                        snapshot of the dead list
 * Compaction writes a snapshot (create, cons, part, deadlist per group)
 * to groups.log.new and switches appends to it; the stream's next sync job
 * syncs it and renames it over groups.log, so no answer that waited for a
 * sync depends on the old file.
 */
#include "streamd/group.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/engine_internal.h"
#include "streamd/buf.h"
#include "streamd/err.h"
#include "streamd/log.h"
#include "util/crc.h"
#include "util/fsutil.h"

enum { E_PENDING = 1, E_ACKED = 2, E_DEAD = 3 };

#define MAX_WINDOW (1u << 20)      /* pending span per partition before delivery pauses */
#define MAX_DEAD_KEPT 10000
#define COMPACT_MIN_BYTES (4u << 20)
#define TICK_MS 50

struct gentry {
  uint8_t state;
  uint16_t deliveries;
  uint32_t consumer;  /* consumer id */
  uint64_t deadline;
};

struct gpart {
  uint64_t committed, next;
  struct gentry *win;
  uint32_t head, cap;
  uint32_t pending;
  int64_t owner;      /* consumer id, -1: none (partitioned mode) */
  int64_t target;     /* the next owner, waiting for the pending to settle; -1: none */
};

struct gcons {
  uint32_t id;
  char *name;
  uint64_t last_seen;
  uint32_t attached;  /* open WebSocket connections: live while any */
};

struct dead_ent {
  uint32_t partition;
  uint16_t deliveries;
  uint64_t offset;
};

struct sd_group {
  struct sd_groups *gs;
  struct sd_list node;
  char *name;
  struct sd_group_config cfg;
  int refs, deleted;
  uint32_t np;
  struct gpart *parts;
  struct gcons *cons;
  uint32_t ncons, capcons, next_id;
  uint64_t pending, dead, skipped;
  struct dead_ent *deadv;
  uint32_t ndead, capdead, dead_head;
  struct sd_list waiters;
  uint32_t rr;
  uint64_t next_due;  /* earliest redelivery deadline, UINT64_MAX: none */
};

struct sd_groups {
  struct sd_stream *s;
  char *dir, *log_path, *new_path;
  int fd;
  uint64_t log_bytes, snapshot_bytes;
  int dirty, rename_pending;
  struct sd_list groups;
  uv_timer_t timer;
  int timer_on;
  struct sd_buf line;
};

void sd_group_config_default(struct sd_group_config *c) {
  memset(c, 0, sizeof(*c));
  c->ack_timeout_ms = 30000;
  c->session_timeout_ms = 30000;
}

/* ---- the log ------------------------------------------------------------- */

static int log_write(struct sd_groups *gs, const char *json, size_t n) {
  char head[10];
  snprintf(head, sizeof(head), "%08x ", sd_crc32c(json, n, 0));
  struct sd_buf *b = &gs->line;
  sd_buf_reset(b);
  if (sd_buf_append(b, head, 9) || sd_buf_append(b, json, n) || sd_buf_append(b, "\n", 1)) return -ENOMEM;
  size_t done = 0;
  while (done < b->len) {
    ssize_t w = write(gs->fd, b->data + done, b->len - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      int rc = -errno;
      /* A full disk can take part of the line: cut it off, or replay would
       * stop at it and drop every record written after it.  log_bytes is
       * the file's length before this line. */
      if (done > 0 && ftruncate(gs->fd, (off_t)gs->log_bytes) != 0)
        SD_ERROR("stream %s: groups.log keeps a torn line: %s", sd_stream_name(gs->s), sd_strerror(-errno));
      return rc;
    }
    done += (size_t)w;
  }
  gs->log_bytes += b->len;
  gs->dirty = 1;
  sd_stream_request_sync(gs->s);
  return 0;
}

/* Appends one record: printf-style JSON (names never need escaping). */
static int logf_(struct sd_groups *gs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int logf_(struct sd_groups *gs, const char *fmt, ...) {
  char stack[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(stack, sizeof(stack), fmt, ap);
  va_end(ap);
  if (n < 0) return -EINVAL;
  if ((size_t)n < sizeof(stack)) return log_write(gs, stack, (size_t)n);
  char *big = malloc((size_t)n + 1);
  if (big == NULL) return -ENOMEM;
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  int rc = log_write(gs, big, (size_t)n);
  free(big);
  return rc;
}

static void start_ticks(struct sd_groups *gs);

static void log_failed(struct sd_groups *gs, int rc) {
  SD_ERROR("stream %s: groups.log write failed: %s", sd_stream_name(gs->s), sd_strerror(rc));
}

/* ---- windows ---------------------------------------------------------------- */

static inline uint32_t win_len(const struct gpart *p) { return (uint32_t)(p->next - p->committed); }
static inline struct gentry *win_at(struct gpart *p, uint32_t i) { return &p->win[(p->head + i) % p->cap]; }

static int win_push(struct gpart *p) {
  uint32_t len = win_len(p);
  if (len == p->cap) {
    uint32_t cap = p->cap ? p->cap * 2 : 64;
    struct gentry *n = malloc(cap * sizeof(*n));
    if (n == NULL) return -ENOMEM;
    for (uint32_t i = 0; i < len; i++) n[i] = p->win[(p->head + i) % p->cap];
    free(p->win);
    p->win = n;
    p->cap = cap;
    p->head = 0;
  }
  memset(win_at(p, len), 0, sizeof(struct gentry));
  p->next++;
  return 0;
}

/* committed passes every settled entry at the front. */
static void win_advance(struct gpart *p) {
  while (p->committed < p->next && win_at(p, 0)->state != E_PENDING) {
    p->head = (p->head + 1) % p->cap;
    p->committed++;
  }
}

/* Records a dead event for listing; the newest MAX_DEAD_KEPT are kept. */
static void dead_push(struct sd_group *g, uint32_t p, uint64_t off, uint16_t deliveries) {
  if (g->ndead == g->capdead && g->capdead < MAX_DEAD_KEPT) {
    uint32_t cap = g->capdead ? g->capdead * 2 : 64;
    struct dead_ent *nd = malloc(cap * sizeof(*nd));
    if (nd) {
      for (uint32_t k = 0; k < g->ndead; k++) nd[k] = g->deadv[(g->dead_head + k) % g->capdead];
      free(g->deadv);
      g->deadv = nd;
      g->capdead = cap;
      g->dead_head = 0;
    }
  }
  if (g->capdead == 0) return;
  if (g->ndead == g->capdead) {
    g->dead_head = (g->dead_head + 1) % g->capdead;
    g->ndead--;
  }
  g->deadv[(g->dead_head + g->ndead++) % g->capdead] = (struct dead_ent){p, deliveries, off};
}

/* ---- consumers -------------------------------------------------------------- */

static struct gcons *cons_find(struct sd_group *g, const char *name) {
  for (uint32_t i = 0; i < g->ncons; i++)
    if (strcmp(g->cons[i].name, name) == 0) return &g->cons[i];
  return NULL;
}

static struct gcons *cons_by_id(struct sd_group *g, uint32_t id) {
  for (uint32_t i = 0; i < g->ncons; i++)
    if (g->cons[i].id == id) return &g->cons[i];
  return NULL;
}

static int cmp_cons(const void *a, const void *b) {
  return strcmp(((const struct gcons *)a)->name, ((const struct gcons *)b)->name);
}

static void wake(struct sd_group *g, int status) {
  struct sd_list local;
  sd_list_init(&local);
  sd_list_splice(&local, &g->waiters);
  while (!sd_list_empty(&local)) {
    struct sd_waiter *w = SD_CONTAINER_OF(local.next, struct sd_waiter, node);
    sd_list_remove(&w->node);
    w->cb(w, status);
  }
}

/* Partitioned mode: partition p belongs to the (p mod n)-th live consumer
 * in name order.  A partition with pending events moves only once they
 * settle (target), so one key is never in two consumers' hands. */
static void rebalance(struct sd_group *g) {
  if (!g->cfg.partitioned) return;
  if (g->ncons > 1) qsort(g->cons, g->ncons, sizeof(*g->cons), cmp_cons);
  int changed = 0;
  for (uint32_t p = 0; p < g->np; p++) {
    struct gpart *gp = &g->parts[p];
    int64_t want = g->ncons ? (int64_t)g->cons[p % g->ncons].id : -1;
    int owner_live = gp->owner >= 0 && cons_by_id(g, (uint32_t)gp->owner) != NULL;
    if (gp->owner == want) {
      gp->target = -1;
      continue;
    }
    if (!owner_live || gp->pending == 0 || want < 0) {
      gp->owner = want;
      gp->target = -1;
    } else {
      gp->target = want;
    }
    changed = 1;
  }
  if (changed) wake(g, 0);
}

/* The partition goes to its next owner once nothing in it is pending, or
 * everything pending has timed out (it will be redelivered to the new
 * owner: the old one's claim has lapsed). */
static void handover_if_settled(struct sd_group *g, struct gpart *gp) {
  if (gp->target < 0) return;
  int lapsed = 1;
  uint64_t now = sd_now_ms();
  for (uint32_t i = 0; i < win_len(gp) && lapsed && gp->pending; i++) {
    struct gentry *e = win_at(gp, i);
    if (e->state == E_PENDING && e->deadline > now) lapsed = 0;
  }
  if (lapsed) {
    gp->owner = gp->target;
    gp->target = -1;
    wake(g, 0);
  }
}

static struct gcons *cons_join(struct sd_group *g, const char *name, uint64_t now) {
  struct gcons *c = cons_find(g, name);
  if (c) {
    c->last_seen = now;
    return c;
  }
  if (g->ncons == g->capcons) {
    uint32_t cap = g->capcons ? g->capcons * 2 : 8;
    struct gcons *n = realloc(g->cons, cap * sizeof(*n));
    if (n == NULL) return NULL;
    g->cons = n;
    g->capcons = cap;
  }
  char *copy = strdup(name);
  if (copy == NULL) return NULL;
  uint32_t id = g->next_id++;
  g->cons[g->ncons++] = (struct gcons){id, copy, now, 0};
  rebalance(g);
  return cons_find(g, name);
}

/* Pending events of consumer id become due now. */
static void release_pending(struct sd_group *g, uint32_t id) {
  for (uint32_t p = 0; p < g->np; p++) {
    struct gpart *gp = &g->parts[p];
    for (uint32_t i = 0; i < win_len(gp); i++) {
      struct gentry *e = win_at(gp, i);
      if (e->state == E_PENDING && e->consumer == id) e->deadline = 0;
    }
  }
  g->next_due = 0;
}

static void cons_remove(struct sd_group *g, struct gcons *c) {
  uint32_t id = c->id;
  free(c->name);
  *c = g->cons[--g->ncons];
  release_pending(g, id);
  for (uint32_t p = 0; p < g->np; p++) {
    if (g->parts[p].owner == (int64_t)id) g->parts[p].owner = -1;
    if (g->parts[p].target == (int64_t)id) g->parts[p].target = -1;
  }
  rebalance(g);
  wake(g, 0);
}

/* ---- groups ------------------------------------------------------------------ */

static struct sd_group *group_alloc(struct sd_groups *gs, const char *name, const struct sd_group_config *cfg) {
  struct sd_group *g = calloc(1, sizeof(*g));
  if (g == NULL) return NULL;
  g->gs = gs;
  g->refs = 1;
  g->cfg = *cfg;
  g->np = sd_stream_config(gs->s)->partitions;
  g->name = strdup(name);
  g->parts = calloc(g->np, sizeof(*g->parts));
  g->next_due = UINT64_MAX;
  sd_list_init(&g->waiters);
  sd_list_init(&g->node);
  if (g->name == NULL || g->parts == NULL) {
    free(g->name);
    free(g->parts);
    free(g);
    return NULL;
  }
  for (uint32_t p = 0; p < g->np; p++) g->parts[p].owner = g->parts[p].target = -1;
  return g;
}

static void group_free(struct sd_group *g) {
  for (uint32_t p = 0; p < g->np; p++) free(g->parts[p].win);
  for (uint32_t i = 0; i < g->ncons; i++) free(g->cons[i].name);
  free(g->cons);
  free(g->parts);
  free(g->deadv);
  free(g->name);
  free(g);
}

void sd_group_ref(struct sd_group *g) { g->refs++; }
void sd_group_unref(struct sd_group *g) {
  if (--g->refs == 0) group_free(g);
}
int sd_group_deleted(const struct sd_group *g) { return g->deleted || sd_stream_deleted(g->gs->s); }
const char *sd_group_name(const struct sd_group *g) { return g->name; }
const struct sd_group_config *sd_group_config(const struct sd_group *g) { return &g->cfg; }
struct sd_stream *sd_group_stream(const struct sd_group *g) { return g->gs->s; }

static struct sd_group *find(struct sd_groups *gs, const char *name) {
  struct sd_list *n;
  for (n = gs->groups.next; n != &gs->groups; n = n->next) {
    struct sd_group *g = SD_CONTAINER_OF(n, struct sd_group, node);
    if (strcmp(g->name, name) == 0) return g;
  }
  return NULL;
}

struct sd_group *sd_group_find(struct sd_stream *s, const char *name) { return find(sd_stream_groups(s), name); }

static int cmp_groups(const void *a, const void *b) {
  return strcmp((*(struct sd_group *const *)a)->name, (*(struct sd_group *const *)b)->name);
}

void sd_group_foreach(struct sd_stream *s, void (*fn)(void *arg, struct sd_group *g), void *arg) {
  struct sd_groups *gs = sd_stream_groups(s);
  size_t n = 0, i = 0;
  struct sd_list *l;
  for (l = gs->groups.next; l != &gs->groups; l = l->next) n++;
  if (n == 0) return;
  struct sd_group **v = malloc(n * sizeof(*v));
  if (v == NULL) return;
  for (l = gs->groups.next; l != &gs->groups; l = l->next) v[i++] = SD_CONTAINER_OF(l, struct sd_group, node);
  qsort(v, n, sizeof(*v), cmp_groups);
  for (i = 0; i < n; i++) fn(arg, v[i]);
  free(v);
}

static void log_create(struct sd_groups *gs, struct sd_group *g, struct sd_buf *b) {
  sd_buf_printf(b, "{\"t\":\"create\",\"g\":\"%s\",\"mode\":\"%s\",\"ack\":\"%s\",\"ato\":%llu,\"md\":%u,\"sto\":%llu,\"pos\":[",
                g->name, g->cfg.partitioned ? "partitioned" : "shared", g->cfg.explicit_ack ? "explicit" : "auto",
                (unsigned long long)g->cfg.ack_timeout_ms, g->cfg.max_deliveries,
                (unsigned long long)g->cfg.session_timeout_ms);
  for (uint32_t p = 0; p < g->np; p++) sd_buf_printf(b, "%s%llu", p ? "," : "", (unsigned long long)g->parts[p].committed);
  SD_BUF_LIT(b, "]}");
  (void)gs;
}

int sd_group_create(struct sd_stream *s, const char *name, const struct sd_group_config *cfg, struct sd_group **out) {
  struct sd_groups *gs = sd_stream_groups(s);
  struct sd_buf b = {0};
  int rc;
  if ((rc = sd_name_check(name, strlen(name))) != 0) return rc;
  if (find(gs, name)) return SD_E_GROUP_EXISTS;
  struct sd_group *g = group_alloc(gs, name, cfg);
  if (g == NULL) return -ENOMEM;
  for (uint32_t p = 0; p < g->np; p++) {
    struct sd_partition_stat ps;
    sd_stream_partition_stat(s, p, &ps);
    g->parts[p].committed = g->parts[p].next = cfg->start_latest ? ps.next_offset : ps.min_offset;
  }
  log_create(gs, g, &b);
  rc = b.data ? log_write(gs, b.data, b.len) : -ENOMEM;
  sd_buf_free(&b);
  if (rc != 0) {
    group_free(g);
    return rc;
  }
  sd_list_push_back(&gs->groups, &g->node);
  start_ticks(gs);
  *out = g;
  return 0;
}

static void group_unlink(struct sd_group *g, int status) {
  g->deleted = 1;
  sd_list_remove(&g->node);
  wake(g, status);
  sd_group_unref(g);
}

int sd_group_delete(struct sd_stream *s, const char *name) {
  struct sd_groups *gs = sd_stream_groups(s);
  struct sd_group *g = find(gs, name);
  if (g == NULL) return SD_E_GROUP_NOT_FOUND;
  int rc = logf_(gs, "{\"t\":\"del\",\"g\":\"%s\"}", name);
  if (rc != 0) return rc;
  group_unlink(g, SD_E_GROUP_NOT_FOUND);
  return 0;
}

/* ---- delivery ------------------------------------------------------------------ */

struct fetch_ctx {
  struct sd_group *g;
  sd_group_visit_fn fn;
  void *arg;
  uint32_t deliveries;
  uint32_t consumer;
  uint64_t now;
  uint64_t first, last;   /* offsets delivered by this read */
  int count;
  int stop;
  size_t bytes, max_bytes;
};

static int count_record(void *arg, const struct sd_record *rec) {
  (void)arg;
  (void)rec;
  return 0;
}

static int deliver_new(void *arg, const struct sd_record *rec) {
  struct fetch_ctx *x = arg;
  struct sd_group *g = x->g;
  struct gpart *gp = &g->parts[rec->partition];
  if (rec->offset != gp->next) return 1;
  if (g->cfg.explicit_ack) {
    if (win_push(gp) != 0) return 1;
    struct gentry *e = win_at(gp, win_len(gp) - 1);
    e->state = E_PENDING;
    e->deliveries = 1;
    e->consumer = x->consumer;
    e->deadline = x->now + g->cfg.ack_timeout_ms;
    if (e->deadline < g->next_due) g->next_due = e->deadline;
    gp->pending++;
    g->pending++;
  } else {
    gp->next++;
    gp->committed = gp->next;
  }
  if (x->count == 0) x->first = rec->offset;
  x->last = rec->offset;
  x->count++;
  x->bytes += rec->json_len;
  return x->fn(x->arg, rec, 1);
}

static int deliver_one(void *arg, const struct sd_record *rec) {
  struct fetch_ctx *x = arg;
  x->count++;
  x->bytes += rec->json_len;
  return x->fn(x->arg, rec, x->deliveries);
}

static int owns(struct sd_group *g, uint32_t p, struct gcons *c) {
  if (!g->cfg.partitioned) return 1;
  return c != NULL && g->parts[p].owner == (int64_t)c->id && g->parts[p].target < 0;
}

/* Skips what retention removed before the group consumed it. */
static void skip_removed(struct sd_group *g, uint32_t p) {
  struct gpart *gp = &g->parts[p];
  struct sd_partition_stat ps;
  sd_stream_partition_stat(g->gs->s, p, &ps);
  if (gp->committed >= ps.min_offset) return;
  uint64_t n = 0;
  while (gp->committed < ps.min_offset && gp->committed < gp->next) {
    struct gentry *e = win_at(gp, 0);
    if (e->state == E_PENDING) {
      gp->pending--;
      g->pending--;
    }
    gp->head = (gp->head + 1) % gp->cap;
    gp->committed++;
    n++;
  }
  if (gp->committed < ps.min_offset) {
    n += ps.min_offset - gp->committed;
    gp->committed = gp->next = ps.min_offset;
  }
  g->skipped += n;
  int rc = logf_(g->gs, "{\"t\":\"skip\",\"g\":\"%s\",\"p\":%u,\"o\":%llu,\"n\":%llu}", g->name, p,
                 (unsigned long long)gp->committed, (unsigned long long)n);
  if (rc != 0) log_failed(g->gs, rc);
  SD_INFO("stream %s group %s partition %u: %llu event(s) removed by retention before they were consumed",
          sd_stream_name(g->gs->s), g->name, p, (unsigned long long)n);
}

uint32_t sd_group_pending_of(const struct sd_group *cg, const char *consumer) {
  struct sd_group *g = (struct sd_group *)cg;
  struct gcons *c = cons_find(g, consumer);
  uint32_t n = 0;
  if (c == NULL) return 0;
  for (uint32_t p = 0; p < g->np; p++) {
    struct gpart *gp = &g->parts[p];
    for (uint32_t i = 0; i < win_len(gp); i++) {
      struct gentry *e = win_at(gp, i);
      if (e->state == E_PENDING && e->consumer == c->id) n++;
    }
  }
  return n;
}

void sd_group_attach(struct sd_group *g, const char *consumer, int delta) {
  struct gcons *c = delta > 0 ? cons_join(g, consumer, sd_now_ms()) : cons_find(g, consumer);
  if (c == NULL) return;
  if (delta > 0)
    c->attached++;
  else if (c->attached > 0)
    c->attached--;
  c->last_seen = sd_now_ms();
}

void sd_group_touch(struct sd_group *g, const char *consumer) {
  if (consumer) cons_join(g, consumer, sd_now_ms());
}

int sd_group_fetch(struct sd_group *g, const char *consumer, uint32_t limit, size_t max_bytes,
                   sd_group_visit_fn fn, void *arg) {
  struct sd_groups *gs = g->gs;
  uint64_t now = sd_now_ms();
  struct gcons *c = NULL;
  int total = 0, rc;
  if (g->cfg.partitioned && consumer == NULL) return SD_E_CONSUMER_REQUIRED;
  if (consumer && (c = cons_join(g, consumer, now)) == NULL) return -ENOMEM;
  uint32_t cid = c ? c->id : UINT32_MAX;
  struct fetch_ctx x = {g, fn, arg, 1, cid, now, 0, 0, 0, 0, 0, max_bytes};

  /* 1. redeliveries due, oldest first */
  if (g->cfg.explicit_ack && g->next_due <= now) {
    uint64_t next_due = UINT64_MAX;
    for (uint32_t p = 0; p < g->np; p++) {
      struct gpart *gp = &g->parts[p];
      if (!owns(g, p, c)) {
        for (uint32_t i = 0; i < win_len(gp); i++) {
          struct gentry *e = win_at(gp, i);
          if (e->state == E_PENDING && e->deadline < next_due) next_due = e->deadline;
        }
        continue;
      }
      for (uint32_t i = 0; i < win_len(gp); i++) {
        struct gentry *e = win_at(gp, i);
        if (e->state != E_PENDING) continue;
        if (e->deadline > now || (uint32_t)total >= limit || (total > 0 && x.bytes >= max_bytes)) {
          if (e->deadline < next_due) next_due = e->deadline;
          continue;
        }
        uint64_t off = gp->committed + i;
        if (g->cfg.max_deliveries && e->deliveries >= g->cfg.max_deliveries) {
          e->state = E_DEAD;
          gp->pending--;
          g->pending--;
          g->dead++;
          dead_push(g, p, off, e->deliveries);
          if ((rc = logf_(gs, "{\"t\":\"dead\",\"g\":\"%s\",\"p\":%u,\"o\":%llu,\"n\":%u}", g->name, p,
                          (unsigned long long)off, e->deliveries)) != 0)
            log_failed(gs, rc);
          continue;
        }
        x.deliveries = (uint32_t)e->deliveries + 1;
        int before = x.count;
        rc = sd_stream_read(gs->s, p, off, 1, SIZE_MAX, deliver_one, &x);
        if (rc == SD_E_OFFSET_OUT_OF_RANGE) break; /* retention: skipped below */
        if (rc < 0) return total ? total : rc;
        if (x.count == before) continue;
        e->deliveries++;
        e->consumer = cid;
        e->deadline = now + g->cfg.ack_timeout_ms;
        if (e->deadline < next_due) next_due = e->deadline;
        total++;
        if ((rc = logf_(gs, "{\"t\":\"rdl\",\"g\":\"%s\",\"p\":%u,\"o\":%llu,\"n\":%u,\"c\":\"%s\"}", g->name, p,
                        (unsigned long long)off, e->deliveries, consumer ? consumer : "")) != 0)
          log_failed(gs, rc);
      }
      win_advance(gp);
      handover_if_settled(g, gp);
    }
    g->next_due = next_due;
  }

  /* 2. new events, taking turns over the partitions */
  for (uint32_t k = 0; k < g->np && (uint32_t)total < limit && !(total > 0 && x.bytes >= max_bytes); k++) {
    uint32_t p = (g->rr + k) % g->np;
    struct gpart *gp = &g->parts[p];
    if (!owns(g, p, c)) continue;
    skip_removed(g, p);
    if (g->cfg.explicit_ack && win_len(gp) >= MAX_WINDOW) continue;
    x.count = 0;
    x.bytes = total ? x.bytes : 0;
    size_t room = total == 0 ? max_bytes : (max_bytes > x.bytes ? max_bytes - x.bytes : 0);
    uint32_t want = limit - (uint32_t)total;
    uint64_t to = 0;
    if (!g->cfg.explicit_ack) {
      /* At most once: the new position is logged before anything is handed
       * out, so a position that cannot be logged (disk full) hands out
       * nothing, and nothing handed out comes back after a restart. */
      int n = sd_stream_read(gs->s, p, gp->next, want, room ? room : 1, count_record, NULL);
      if (n < 0 && n != SD_E_OFFSET_OUT_OF_RANGE) return total ? total : n;
      if (n <= 0) continue;
      to = gp->next + (uint64_t)n;
      if ((rc = logf_(gs, "{\"t\":\"commit\",\"g\":\"%s\",\"p\":%u,\"o\":%llu}", g->name, p,
                      (unsigned long long)to)) != 0) {
        log_failed(gs, rc);
        return total ? total : rc;
      }
      want = (uint32_t)n;
    }
    rc = sd_stream_read(gs->s, p, gp->next, want, room ? room : 1, deliver_new, &x);
    if (to > gp->next &&
        logf_(gs, "{\"t\":\"commit\",\"g\":\"%s\",\"p\":%u,\"o\":%llu}", g->name, p,
              (unsigned long long)gp->next) != 0)
      gp->committed = gp->next = to; /* fewer handed out than logged, and no fix logged: skipped */
    if (rc < 0 && rc != SD_E_OFFSET_OUT_OF_RANGE) return total ? total : rc;
    if (x.count == 0) continue;
    total += x.count;
    if (g->cfg.explicit_ack &&
        (rc = logf_(gs, "{\"t\":\"dlv\",\"g\":\"%s\",\"p\":%u,\"f\":%llu,\"to\":%llu,\"c\":\"%s\"}", g->name,
                    p, (unsigned long long)x.first, (unsigned long long)x.last, consumer ? consumer : "")) != 0)
      log_failed(gs, rc);
  }
  g->rr++;
  return total;
}

int sd_group_ack(struct sd_group *g, const char *consumer, uint32_t partition, uint64_t from, uint64_t to,
                 uint64_t *acked) {
  *acked = 0;
  if (partition >= g->np || from > to) return SD_E_INVALID_PARAMETER;
  if (consumer) cons_join(g, consumer, sd_now_ms());
  if (!g->cfg.explicit_ack) return 0;
  struct gpart *gp = &g->parts[partition];
  uint64_t lo = from > gp->committed ? from : gp->committed;
  uint64_t hi = to < gp->next ? to : gp->next - 1;
  if (gp->next == 0 || lo > hi) return 0;
  uint64_t n = 0;
  for (uint64_t o = lo; o <= hi; o++)
    if (win_at(gp, (uint32_t)(o - gp->committed))->state == E_PENDING) n++;
  if (n == 0) return 0;
  /* Logged first: an ack that cannot be logged (disk full) settles nothing,
   * so the error the client gets is the whole truth. */
  int rc = logf_(g->gs, "{\"t\":\"ack\",\"g\":\"%s\",\"p\":%u,\"f\":%llu,\"to\":%llu}", g->name, partition,
                 (unsigned long long)lo, (unsigned long long)hi);
  if (rc != 0) return rc;
  for (uint64_t o = lo; o <= hi; o++) {
    struct gentry *e = win_at(gp, (uint32_t)(o - gp->committed));
    if (e->state != E_PENDING) continue;
    e->state = E_ACKED;
    gp->pending--;
    g->pending--;
  }
  *acked = n;
  win_advance(gp);
  handover_if_settled(g, gp);
  wake(g, 0); /* consumers held back by their prefetch may go on */
  return rc;
}

int sd_group_leave(struct sd_group *g, const char *consumer) {
  struct gcons *c = cons_find(g, consumer);
  if (c == NULL) return SD_E_CONSUMER_NOT_FOUND;
  int rc = logf_(g->gs, "{\"t\":\"leave\",\"g\":\"%s\",\"c\":\"%s\"}", g->name, consumer);
  if (rc != 0) return rc; /* not logged (disk full): the consumer stays */
  cons_remove(g, c);
  return 0;
}

void sd_group_stat(const struct sd_group *g, struct sd_group_stat *out) {
  out->pending = g->pending;
  out->dead = g->dead;
  out->skipped = g->skipped;
}

uint64_t sd_group_committed(const struct sd_group *g, uint32_t partition) {
  return partition < g->np ? g->parts[partition].committed : 0;
}

void sd_group_consumers(const struct sd_group *cg,
                        void (*fn)(void *arg, const char *name, uint64_t last_seen, const uint32_t *parts,
                                   uint32_t nparts),
                        void *arg) {
  struct sd_group *g = (struct sd_group *)cg;
  uint32_t *parts = malloc((g->np ? g->np : 1) * sizeof(*parts));
  if (parts == NULL) return;
  if (g->ncons > 1) qsort(g->cons, g->ncons, sizeof(*g->cons), cmp_cons);
  for (uint32_t i = 0; i < g->ncons; i++) {
    uint32_t n = 0;
    if (g->cfg.partitioned)
      for (uint32_t p = 0; p < g->np; p++)
        if (g->parts[p].owner == (int64_t)g->cons[i].id) parts[n++] = p;
    fn(arg, g->cons[i].name, g->cons[i].last_seen, parts, n);
  }
  free(parts);
}

int sd_group_dead(struct sd_group *g, uint32_t limit, sd_group_visit_fn fn, void *arg) {
  struct fetch_ctx x = {g, fn, arg, 0, 0, 0, 0, 0, 0, 0, 0, SIZE_MAX};
  int n = 0;
  for (uint32_t i = 0; i < g->ndead && (uint32_t)n < limit; i++) {
    struct dead_ent *d = &g->deadv[(g->dead_head + i) % g->capdead];
    x.deliveries = d->deliveries;
    int before = x.count;
    int rc = sd_stream_read(g->gs->s, d->partition, d->offset, 1, SIZE_MAX, deliver_one, &x);
    if (rc < 0 && rc != SD_E_OFFSET_OUT_OF_RANGE) return rc;
    if (x.count > before) n++;
  }
  return n;
}

void sd_group_wait(struct sd_group *g, struct sd_waiter *w) { sd_list_push_back(&g->waiters, &w->node); }

/* ---- timers: redelivery deadlines and sessions ----------------------------------- */

static void on_tick(uv_timer_t *t) {
  struct sd_groups *gs = t->data;
  uint64_t now = sd_now_ms();
  if (sd_list_empty(&gs->groups)) {
    uv_timer_stop(t);
    gs->timer_on = 0;
    return;
  }
  struct sd_list *n = gs->groups.next;
  while (n != &gs->groups) {
    struct sd_group *g = SD_CONTAINER_OF(n, struct sd_group, node);
    n = n->next;
    for (uint32_t i = 0; i < g->ncons;) {
      struct gcons *c = &g->cons[i];
      if (c->attached) c->last_seen = now;
      if (c->last_seen + g->cfg.session_timeout_ms < now) {
        SD_INFO("stream %s group %s: consumer %s timed out", sd_stream_name(gs->s), g->name, c->name);
        cons_remove(g, c);
        continue;
      }
      i++;
    }
    for (uint32_t p = 0; p < g->np; p++) handover_if_settled(g, &g->parts[p]);
    if (g->next_due <= now && !sd_list_empty(&g->waiters)) wake(g, 0);
  }
}

/* The tick runs while the stream has groups. */
static void start_ticks(struct sd_groups *gs) {
  if (gs->timer_on) return;
  gs->timer_on = 1;
  uv_timer_start(&gs->timer, on_tick, TICK_MS, TICK_MS);
}

/* ---- replay --------------------------------------------------------------------- */

static struct sd_group *replay_group(struct sd_groups *gs, json_t *r) {
  return find(gs, json_string_value(json_object_get(r, "g")) ?: "");
}

static uint64_t ju(json_t *r, const char *k) { return (uint64_t)json_integer_value(json_object_get(r, k)); }

static int replay_one(struct sd_groups *gs, json_t *r, uint64_t now) {
  const char *t = json_string_value(json_object_get(r, "t"));
  struct sd_group *g;
  if (t == NULL) return -1;
  if (strcmp(t, "create") == 0) {
    struct sd_group_config cfg;
    sd_group_config_default(&cfg);
    const char *name = json_string_value(json_object_get(r, "g"));
    const char *mode = json_string_value(json_object_get(r, "mode"));
    const char *ack = json_string_value(json_object_get(r, "ack"));
    json_t *pos = json_object_get(r, "pos");
    if (!name || !mode || !ack || !json_is_array(pos)) return -1;
    cfg.partitioned = strcmp(mode, "partitioned") == 0;
    cfg.explicit_ack = strcmp(ack, "explicit") == 0;
    cfg.ack_timeout_ms = ju(r, "ato");
    cfg.max_deliveries = (uint32_t)ju(r, "md");
    cfg.session_timeout_ms = ju(r, "sto");
    if ((g = find(gs, name)) != NULL) group_unlink(g, SD_E_GROUP_NOT_FOUND);
    if ((g = group_alloc(gs, name, &cfg)) == NULL) return -1;
    for (uint32_t p = 0; p < g->np; p++) g->parts[p].committed = g->parts[p].next = (uint64_t)json_integer_value(json_array_get(pos, p));
    sd_list_push_back(&gs->groups, &g->node);
    return 0;
  }
  if ((g = replay_group(gs, r)) == NULL) return 0; /* a group deleted later in the log */
  uint32_t p = (uint32_t)ju(r, "p");
  if (strcmp(t, "del") == 0) {
    group_unlink(g, SD_E_GROUP_NOT_FOUND);
    return 0;
  }
  if (strcmp(t, "cons") == 0 || strcmp(t, "leave") == 0) {
    if (strcmp(t, "leave") == 0) {
      struct gcons *c = cons_find(g, json_string_value(json_object_get(r, "c")) ?: "");
      if (c) cons_remove(g, c);
      return 0;
    }
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "c"), i, v) if (json_is_string(v)) cons_join(g, json_string_value(v), now);
    return 0;
  }
  if (strcmp(t, "deadlist") == 0) {
    size_t i;
    json_t *v;
    g->dead = ju(r, "count");
    json_array_foreach(json_object_get(r, "d"), i, v) {
      dead_push(g, (uint32_t)json_integer_value(json_array_get(v, 0)), (uint64_t)json_integer_value(json_array_get(v, 1)),
                (uint16_t)json_integer_value(json_array_get(v, 2)));
    }
    return 0;
  }
  if (p >= g->np) return -1;
  struct gpart *gp = &g->parts[p];
  if (strcmp(t, "commit") == 0) {
    gp->committed = gp->next = ju(r, "o");
  } else if (strcmp(t, "skip") == 0) {
    uint64_t o = ju(r, "o");
    while (gp->committed < o && gp->committed < gp->next) {
      if (win_at(gp, 0)->state == E_PENDING) {
        gp->pending--;
        g->pending--;
      }
      gp->head = (gp->head + 1) % gp->cap;
      gp->committed++;
    }
    if (gp->committed < o) gp->committed = gp->next = o;
    g->skipped += ju(r, "n");
  } else if (strcmp(t, "dlv") == 0 || strcmp(t, "part") == 0) {
    const char *cname = json_string_value(json_object_get(r, "c"));
    if (strcmp(t, "part") == 0) {
      gp->committed = gp->next = ju(r, "c");
      g->skipped += ju(r, "sk");
      size_t i;
      json_t *v;
      json_array_foreach(json_object_get(r, "w"), i, v) {
        uint64_t o = (uint64_t)json_integer_value(json_array_get(v, 0));
        while (gp->next <= o)
          if (win_push(gp) != 0) return -1;
        struct gentry *e = win_at(gp, (uint32_t)(o - gp->committed));
        e->state = (uint8_t)json_integer_value(json_array_get(v, 1));
        e->deliveries = (uint16_t)json_integer_value(json_array_get(v, 2));
        const char *cn = json_string_value(json_array_get(v, 3));
        struct gcons *c = cn && *cn ? cons_join(g, cn, now) : NULL;
        e->consumer = c ? c->id : UINT32_MAX;
        e->deadline = 0; /* after a restart pending events are due at once, in offset order */
        if (e->state == E_PENDING) {
          gp->pending++;
          g->pending++;
        }
      }
      if (ju(r, "n") > gp->next) return -1; /* a snapshot lists its whole window */
      return 0;
    }
    struct gcons *c = cname && *cname ? cons_join(g, cname, now) : NULL;
    for (uint64_t o = ju(r, "f"); o <= ju(r, "to"); o++) {
      if (o < gp->next) continue;
      while (gp->next < o) {
        if (win_push(gp) != 0) return -1;
        win_at(gp, win_len(gp) - 1)->state = E_ACKED; /* a gap: never delivered, nothing pending */
      }
      if (win_push(gp) != 0) return -1;
      struct gentry *e = win_at(gp, win_len(gp) - 1);
      e->state = E_PENDING;
      e->deliveries = 1;
      e->consumer = c ? c->id : UINT32_MAX;
      e->deadline = 0; /* after a restart pending events are due at once, in offset order */
      gp->pending++;
      g->pending++;
    }
  } else if (strcmp(t, "rdl") == 0 || strcmp(t, "ack") == 0 || strcmp(t, "dead") == 0) {
    uint64_t lo = strcmp(t, "ack") == 0 ? ju(r, "f") : ju(r, "o");
    uint64_t hi = strcmp(t, "ack") == 0 ? ju(r, "to") : lo;
    for (uint64_t o = lo; o <= hi; o++) {
      if (o < gp->committed || o >= gp->next) continue;
      struct gentry *e = win_at(gp, (uint32_t)(o - gp->committed));
      if (e->state != E_PENDING) continue;
      if (t[0] == 'r') {
        e->deliveries = (uint16_t)ju(r, "n");
        const char *cn = json_string_value(json_object_get(r, "c"));
        struct gcons *c = cn && *cn ? cons_join(g, cn, now) : NULL;
        e->consumer = c ? c->id : UINT32_MAX;
        continue;
      }
      e->state = t[0] == 'a' ? E_ACKED : E_DEAD;
      gp->pending--;
      g->pending--;
      if (e->state == E_DEAD) {
        g->dead++;
        dead_push(g, p, o, (uint16_t)ju(r, "n"));
      }
    }
    win_advance(gp);
  }
  return 0;
}

/* Writes the current state as a fresh log to fd. */
static int write_snapshot(struct sd_groups *gs, int fd) {
  int saved = gs->fd, rc = 0;
  uint64_t saved_bytes = gs->log_bytes;
  gs->fd = fd;
  gs->log_bytes = 0;
  struct sd_buf b = {0};
  struct sd_list *n;
  for (n = gs->groups.next; n != &gs->groups && rc == 0; n = n->next) {
    struct sd_group *g = SD_CONTAINER_OF(n, struct sd_group, node);
    sd_buf_reset(&b);
    log_create(gs, g, &b);
    if ((rc = log_write(gs, b.data, b.len)) != 0) break;
    if (g->ncons) {
      sd_buf_reset(&b);
      sd_buf_printf(&b, "{\"t\":\"cons\",\"g\":\"%s\",\"c\":[", g->name);
      for (uint32_t i = 0; i < g->ncons; i++) sd_buf_printf(&b, "%s\"%s\"", i ? "," : "", g->cons[i].name);
      SD_BUF_LIT(&b, "]}");
      if ((rc = log_write(gs, b.data, b.len)) != 0) break;
    }
    for (uint32_t p = 0; p < g->np && rc == 0; p++) {
      struct gpart *gp = &g->parts[p];
      sd_buf_reset(&b);
      sd_buf_printf(&b, "{\"t\":\"part\",\"g\":\"%s\",\"p\":%u,\"c\":%llu,\"n\":%llu,\"sk\":%llu,\"w\":[", g->name, p,
                    (unsigned long long)gp->committed, (unsigned long long)gp->next,
                    p == 0 ? (unsigned long long)g->skipped : 0ull);
      int first = 1;
      for (uint32_t i = 0; i < win_len(gp); i++) {
        struct gentry *e = win_at(gp, i);
        struct gcons *c = cons_by_id(g, e->consumer);
        sd_buf_printf(&b, "%s[%llu,%u,%u,\"%s\"]", first ? "" : ",", (unsigned long long)(gp->committed + i),
                      e->state, e->deliveries, c ? c->name : "");
        first = 0;
      }
      SD_BUF_LIT(&b, "]}");
      rc = log_write(gs, b.data, b.len);
    }
    if (rc == 0 && g->dead) {
      sd_buf_reset(&b);
      sd_buf_printf(&b, "{\"t\":\"deadlist\",\"g\":\"%s\",\"count\":%llu,\"d\":[", g->name, (unsigned long long)g->dead);
      for (uint32_t i = 0; i < g->ndead; i++) {
        struct dead_ent *d = &g->deadv[(g->dead_head + i) % g->capdead];
        sd_buf_printf(&b, "%s[%u,%llu,%u]", i ? "," : "", d->partition, (unsigned long long)d->offset, d->deliveries);
      }
      SD_BUF_LIT(&b, "]}");
      rc = log_write(gs, b.data, b.len);
    }
  }
  sd_buf_free(&b);
  if (rc != 0) {
    gs->fd = saved;
    gs->log_bytes = saved_bytes; /* the length of the log still in use */
    return rc;
  }
  gs->snapshot_bytes = gs->log_bytes;
  return rc;
}

/* Starts a compaction when the log has grown well past its last snapshot:
 * the snapshot goes to groups.log.new, which takes all later appends and
 * replaces groups.log once the stream's next sync has synced it. */
static void maybe_compact(struct sd_groups *gs) {
  if (gs->rename_pending || gs->log_bytes < COMPACT_MIN_BYTES || gs->log_bytes < 4 * gs->snapshot_bytes) return;
  int fd = open(gs->new_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  int old = gs->fd;
  if (write_snapshot(gs, fd) != 0) {
    close(fd);
    unlink(gs->new_path);
    return;
  }
  close(old);
  gs->rename_pending = 1;
  gs->dirty = 1;
  sd_stream_request_sync(gs->s);
}

int sd_groups_open(struct sd_stream *s, const char *dir, struct sd_groups **out) {
  struct sd_groups *gs = calloc(1, sizeof(*gs));
  int rc = 0;
  if (gs == NULL) return -ENOMEM;
  gs->s = s;
  gs->fd = -1;
  sd_list_init(&gs->groups);
  gs->dir = strdup(dir);
  if (gs->dir == NULL || asprintf(&gs->log_path, "%s/groups.log", dir) < 0 ||
      asprintf(&gs->new_path, "%s/groups.log.new", dir) < 0) {
    rc = -ENOMEM;
    goto fail;
  }
  unlink(gs->new_path); /* an unfinished compaction: groups.log is still whole */
  uv_timer_init(sd_stream_loop(s), &gs->timer);
  gs->timer.data = gs;
  uv_unref((uv_handle_t *)&gs->timer);
  FILE *f = fopen(gs->log_path, "r");
  if (f == NULL) {
    /* A new stream: an empty log, made durable with the stream's directory. */
    gs->fd = open(gs->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (gs->fd < 0) {
      rc = -errno;
      uv_close((uv_handle_t *)&gs->timer, NULL);
      goto fail;
    }
    *out = gs;
    return 0;
  }
  uint64_t good = 0, now = sd_now_ms();
  {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
      if (n < 11 || line[8] != ' ' || line[n - 1] != '\n') break;
      uint32_t crc = (uint32_t)strtoul(line, NULL, 16);
      if (sd_crc32c(line + 9, (size_t)n - 10, 0) != crc) break;
      json_t *r = json_loadb(line + 9, (size_t)n - 10, 0, NULL);
      int bad = r == NULL || replay_one(gs, r, now) != 0;
      json_decref(r);
      if (bad) break;
      good += (uint64_t)n;
    }
    free(line);
    /* Replayed pending events got fresh deadlines: let the first fetch find them. */
    for (struct sd_list *l = gs->groups.next; l != &gs->groups; l = l->next)
      SD_CONTAINER_OF(l, struct sd_group, node)->next_due = 0;
    struct stat st;
    uint64_t size = fstat(fileno(f), &st) == 0 ? (uint64_t)st.st_size : good;
    fclose(f);
    if (size > good) {
      SD_WARN("stream %s: groups.log cut after %llu bytes (torn or damaged tail)", sd_stream_name(s),
              (unsigned long long)good);
      if (truncate(gs->log_path, (off_t)good) != 0) {
        rc = -errno;
        uv_close((uv_handle_t *)&gs->timer, NULL);
        goto fail;
      }
    }
    gs->log_bytes = good;
  }
  int fd = -1;
  if (gs->log_bytes >= COMPACT_MIN_BYTES) {
    /* Start from a compact, synced snapshot. */
    fd = open(gs->new_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
      rc = -errno;
      uv_close((uv_handle_t *)&gs->timer, NULL);
      goto fail;
    }
    rc = write_snapshot(gs, fd);
    if (rc == -ENOSPC || rc == -EDQUOT) {
      /* No room for a snapshot on a full disk: the log as it is will do;
       * a later compaction tries again. */
      SD_WARN("stream %s: groups.log not compacted: %s", sd_stream_name(s), sd_strerror(rc));
      close(fd);
      unlink(gs->new_path);
      fd = -1;
    } else if (rc != 0 || fdatasync(fd) != 0 || rename(gs->new_path, gs->log_path) != 0 ||
               sd_fs_sync_dir(dir) != 0) {
      if (rc == 0) rc = -errno;
      close(fd);
      uv_close((uv_handle_t *)&gs->timer, NULL);
      goto fail;
    }
  }
  if (fd < 0) {
    /* Small enough: append to it as it is (its cut, if any, synced first). */
    fd = open(gs->log_path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0 || fdatasync(fd) != 0) {
      rc = -errno;
      if (fd >= 0) close(fd);
      uv_close((uv_handle_t *)&gs->timer, NULL);
      goto fail;
    }
    gs->snapshot_bytes = gs->log_bytes;
  }
  gs->fd = fd;
  gs->dirty = 0;
  if (!sd_list_empty(&gs->groups)) start_ticks(gs);
  *out = gs;
  return 0;
fail:
  while (!sd_list_empty(&gs->groups)) {
    struct sd_group *g = SD_CONTAINER_OF(gs->groups.next, struct sd_group, node);
    sd_list_remove(&g->node);
    group_free(g);
  }
  free(gs->dir);
  free(gs->log_path);
  free(gs->new_path);
  free(gs);
  return rc;
}

static void timer_closed(uv_handle_t *h) {
  struct sd_groups *gs = h->data;
  sd_buf_free(&gs->line);
  free(gs->dir);
  free(gs->log_path);
  free(gs->new_path);
  free(gs);
}

void sd_groups_free(struct sd_groups *gs) {
  if (gs == NULL) return;
  while (!sd_list_empty(&gs->groups)) {
    struct sd_group *g = SD_CONTAINER_OF(gs->groups.next, struct sd_group, node);
    group_unlink(g, sd_stream_deleted(gs->s) ? SD_E_STREAM_DELETED : SD_E_SHUTTING_DOWN);
  }
  if (gs->fd >= 0) close(gs->fd);
  uv_close((uv_handle_t *)&gs->timer, timer_closed);
}

int sd_groups_sync_begin(struct sd_groups *gs, const char **rename_from, const char **rename_to) {
  *rename_from = *rename_to = NULL;
  if (!gs->dirty || gs->fd < 0) return -1;
  gs->dirty = 0;
  if (gs->rename_pending) {
    *rename_from = gs->new_path;
    *rename_to = gs->log_path;
    gs->rename_pending = 0;
  }
  return dup(gs->fd);
}

int sd_groups_sync_work(int fd, const char *rename_from, const char *rename_to, const char *dir) {
  int rc = fdatasync(fd) == 0 ? 0 : -errno;
  if (rc == 0 && rename_from) {
    if (rename(rename_from, rename_to) != 0) rc = -errno;
    if (rc == 0) rc = sd_fs_sync_dir(dir);
  }
  close(fd);
  return rc;
}

void sd_groups_sync_end(struct sd_groups *gs, int err) {
  if (err != 0) SD_ERROR("stream %s: groups.log sync failed: %s", sd_stream_name(gs->s), sd_strerror(err));
  maybe_compact(gs);
}

int sd_groups_dirty(const struct sd_groups *gs) { return gs->dirty; }

void sd_groups_retention(struct sd_groups *gs) {
  struct sd_list *n;
  for (n = gs->groups.next; n != &gs->groups; n = n->next) {
    struct sd_group *g = SD_CONTAINER_OF(n, struct sd_group, node);
    for (uint32_t p = 0; p < g->np; p++) skip_removed(g, p);
  }
}

void sd_groups_wake(struct sd_groups *gs, int status) {
  struct sd_list *n = gs->groups.next;
  while (n != &gs->groups) {
    struct sd_group *g = SD_CONTAINER_OF(n, struct sd_group, node);
    n = n->next;
    wake(g, status);
  }
}
