/*
 * groupcommon.h - shared by bench/groupbench.c (streamd) and
 * bench/redisgroup.c (Redis Streams) for bench/run.sh groups (header-only,
 * each client is one translation unit): options, the per-consumer
 * bookkeeping, the exactly-once check and the BENCH_GROUP result line.
 *
 * Both clients run CONSUMERS consumer loops in one libuv loop, each on its
 * own connection, one request in flight: fetch up to LIMIT events for the
 * group, ack them, fetch again. The run ends when the acks have settled
 * EXPECTED events (the sum of what the server says each ack settled), or
 * when every consumer got an empty fetch (then acked < expected: reported),
 * or at the time cap. Every delivered (partition, offset) is marked in a
 * bitmap, which gives exact duplicate and redelivery counts.
 */
#ifndef GROUPCOMMON_H
#define GROUPCOMMON_H

#include "benchcommon.h"

/* ---------------------------------------------------------------- options */
struct grp_opts {
  const char *host;
  int port;
  const char *stream; /* streamd stream / Redis key */
  const char *group;
  int consumers;      /* consumer loops (connections), named c1..cN */
  int limit;          /* events per fetch */
  uint64_t expected;  /* events to ack; the run ends there */
  uint64_t events;    /* events in the stream: offsets (Redis: ids N-0, N-1) are below it */
  double cap;         /* seconds: overall time cap */
  int quiet;
};

static void grp_usage(const char *prog) {
  fprintf(stderr,
          "usage: %s -p PORT -e EXPECTED [-o EVENTS] [-h HOST] [-s STREAM] [-g GROUP] [-n CONSUMERS]\n"
          "          [-l LIMIT] [-T CAP_SECONDS] [-q]\n"
          "defaults: -o EXPECTED -h 127.0.0.1 -s grp -g g -n 4 -l 100 -T 300\n"
          "EVENTS: how many events the stream holds (offsets, Redis ids N-0 minus 1, are below it).\n"
          "The group must exist. CONSUMERS loops (c1..cN) fetch LIMIT events and ack them\n"
          "until EXPECTED events are acked. Prints one line: BENCH_GROUP key=value ...\n",
          prog);
  exit(2);
}

/* ---------------------------------------------------------------- state */
#define GRP_MAX_PARTITIONS 1024

struct grp_cons {
  uint64_t fetches, events, acks, acked, empty;
  int done; /* got an empty fetch, or failed */
};

struct grp {
  struct grp_opts o;
  uv_loop_t *loop;
  struct grp_cons *c;
  uint8_t *seen[GRP_MAX_PARTITIONS]; /* delivered offsets, one bitmap per partition */
  uint64_t delivered, acked, dups, redelivered, bad, ack_short, ranges, fetches, acks, empty;
  uint64_t t_start, t_end; /* mono_us: first fetch sent, the ack that reached expected */
  struct hist cycle;       /* us: fetch sent to its ack answered */
  int finished;
  char err[256];
};

static struct grp G;

static void grp_init(int argc, char **argv, const char *tag) {
  struct grp_opts *o = &G.o;
  o->host = "127.0.0.1";
  o->stream = "grp";
  o->group = "g";
  o->consumers = 4;
  o->limit = 100;
  o->cap = 300;
  int ch;
  while ((ch = getopt(argc, argv, "h:p:s:g:n:l:e:o:T:q")) != -1) {
    switch (ch) {
      case 'h': o->host = optarg; break;
      case 'p': o->port = atoi(optarg); break;
      case 's': o->stream = optarg; break;
      case 'g': o->group = optarg; break;
      case 'n': o->consumers = atoi(optarg); break;
      case 'l': o->limit = atoi(optarg); break;
      case 'e': o->expected = strtoull(optarg, NULL, 10); break;
      case 'o': o->events = strtoull(optarg, NULL, 10); break;
      case 'T': o->cap = atof(optarg); break;
      case 'q': o->quiet = 1; break;
      default: grp_usage(argv[0]);
    }
  }
  if (o->events == 0) o->events = o->expected;
  if (o->port <= 0 || o->consumers < 1 || o->limit < 1 || o->expected < 1 || o->events < o->expected || o->cap <= 0)
    grp_usage(argv[0]);
  bench_quiet = o->quiet;
  bench_tag = tag;
  G.loop = uv_default_loop();
  G.c = calloc((size_t)o->consumers, sizeof(*G.c));
  if (G.c == NULL) bench_die("out of memory");
}

static inline void grp_bit_set(uint8_t *b, uint64_t i) { b[i >> 3] |= (uint8_t)(1u << (i & 7)); }
static inline int grp_bit_get(const uint8_t *b, uint64_t i) { return (b[i >> 3] >> (i & 7)) & 1; }

static void grp_set_err(const char *fmt, ...) {
  if (G.err[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(G.err, sizeof(G.err), fmt, ap);
  va_end(ap);
  bench_log("%s", G.err);
  for (char *p = G.err; *p; p++)
    if (*p == ' ') *p = '_';
}

/* Consumer k got event (partition, offset); deliveries: the server's count,
 * 0 if it has none. Offsets must be below EVENTS (one stream holding EVENTS
 * events, so any partition's offsets are). */
static void grp_delivered(int k, uint64_t partition, uint64_t offset, uint64_t deliveries) {
  G.c[k].events++;
  G.delivered++;
  if (deliveries > 1) G.redelivered++;
  if (partition >= GRP_MAX_PARTITIONS || offset >= G.o.events) {
    G.bad++;
    return;
  }
  uint8_t **b = &G.seen[partition];
  if (*b == NULL && (*b = calloc(G.o.events / 8 + 1, 1)) == NULL) bench_die("out of memory");
  if (grp_bit_get(*b, offset)) G.dups++;
  grp_bit_set(*b, offset);
}

/* Consumer k sent a fetch (the first one starts the clock). */
static void grp_fetch_sent(int k) {
  G.c[k].fetches++;
  G.fetches++;
  if (G.t_start == 0) G.t_start = mono_us();
}

/* Consumer k's fetch came back empty: that consumer is done. */
static void grp_empty(int k) {
  G.c[k].empty++;
  G.empty++;
  G.c[k].done = 1;
}

/* Consumer k's ack of `asked` events settled `settled`; ranges: how many
 * ranges (or ids) it named; sent_us: mono_us when its fetch was sent. */
static void grp_acked(int k, uint64_t asked, uint64_t settled, uint64_t ranges, uint64_t sent_us) {
  uint64_t now = mono_us();
  G.c[k].acks++;
  G.c[k].acked += settled;
  G.acks++;
  G.acked += settled;
  G.ranges += ranges;
  if (settled < asked) G.ack_short += asked - settled;
  h_add(&G.cycle, (int64_t)(now - sent_us));
  if (G.acked >= G.o.expected && G.t_end == 0) G.t_end = now;
}

/* Should the loops stop? Every event acked, or every consumer done. */
static int grp_over(void) {
  if (G.acked >= G.o.expected) return 1;
  for (int k = 0; k < G.o.consumers; k++)
    if (!G.c[k].done) return 0;
  return 1;
}

static void grp_report(const char *target) {
  uint64_t missing = 0;
  /* events never delivered: per partition, unmarked offsets below the
   * highest one seen (a partition's tail that was never fetched shows up
   * as acked < expected instead) */
  for (int p = 0; p < GRP_MAX_PARTITIONS; p++) {
    if (G.seen[p] == NULL) continue;
    uint64_t hi = 0, n = 0;
    for (uint64_t i = 0; i < G.o.events; i++)
      if (grp_bit_get(G.seen[p], i)) {
        hi = i + 1;
        n++;
      }
    missing += hi - n;
  }
  if (G.t_end == 0) G.t_end = mono_us();
  double secs = G.t_start && G.t_end > G.t_start ? (double)(G.t_end - G.t_start) / 1e6 : 0;
  printf("BENCH_GROUP target=%s consumers=%d limit=%d expected=%" PRIu64 " acked=%" PRIu64 " delivered=%" PRIu64
         " dups=%" PRIu64 " redelivered=%" PRIu64 " gaps=%" PRIu64 " bad=%" PRIu64 " ack_short=%" PRIu64
         " fetches=%" PRIu64 " acks=%" PRIu64 " ranges=%" PRIu64 " empty=%" PRIu64
         " seconds=%.3f rate=%.1f cycle_p50_us=%" PRIu64 " cycle_p99_us=%" PRIu64 " client_cpu_s=%.2f",
         target, G.o.consumers, G.o.limit, G.o.expected, G.acked, G.delivered, G.dups, G.redelivered, missing,
         G.bad, G.ack_short, G.fetches, G.acks, G.ranges, G.empty, secs, secs > 0 ? (double)G.acked / secs : 0.0,
         h_pct(&G.cycle, 50), h_pct(&G.cycle, 99), bench_cpu_s());
  printf(" per_consumer=");
  for (int k = 0; k < G.o.consumers; k++) printf("%s%" PRIu64, k ? "," : "", G.c[k].acked);
  printf("%s%s\n", G.err[0] ? " error=" : "", G.err);
  fflush(stdout);
}

/* Ends the run: the result line, exit status 0 unless an error was set. */
static void grp_finish(const char *target) {
  if (G.finished) return;
  G.finished = 1;
  if (G.acked < G.o.expected && !G.err[0])
    grp_set_err("every consumer got an empty fetch with %" PRIu64 " of %" PRIu64 " events acked", G.acked,
                G.o.expected);
  grp_report(target);
  exit(G.err[0] ? 1 : 0);
}

static void grp_cap(uv_timer_t *t) {
  (void)t;
  grp_set_err("time cap of %.0fs reached", G.o.cap);
  grp_finish((const char *)t->data);
}

/* Arms the overall time cap; target names the result line. */
static void grp_start_cap(const char *target) {
  static uv_timer_t cap;
  uv_timer_init(G.loop, &cap);
  cap.data = (void *)target;
  uv_timer_start(&cap, grp_cap, (uint64_t)(G.o.cap * 1000), 0);
  uv_unref((uv_handle_t *)&cap);
}

#endif
