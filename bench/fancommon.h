/*
 * fancommon.h - shared by bench/wsfan.c and bench/redisfan.c (header-only,
 * each client is one translation unit): options, the paced publisher, the
 * per-subscriber bookkeeping and the result line (the generic helpers are in
 * benchcommon.h).
 *
 * The publisher sends event number s (0, 1, ...) with
 *   data = {"t":<send time, us since the epoch>,"s":<s>,"pad":"xxx..."}
 * at a fixed rate over several connections, one request in flight per
 * connection. A subscriber that receives an event parses t and s; its
 * latency is now - t (both clocks are this process's CLOCK_REALTIME), and
 * s marks the event as seen in the subscriber's bitmap, which gives exact
 * missing and duplicate counts at the end.
 */
#ifndef FANCOMMON_H
#define FANCOMMON_H

#include "benchcommon.h" /* logging, clocks, descriptor limit, histogram */

/* ---------------------------------------------------------------- options */
struct fan_opts {
  const char *host;
  int port;
  const char *stream;   /* streamd stream / Redis key */
  int subs;             /* subscriber connections */
  double rate;          /* events/s */
  double duration;      /* seconds of publishing */
  int pub_conns;        /* publisher connections */
  int data_bytes;       /* approximate size of the data object */
  int connect_parallel; /* subscriber connects/handshakes in flight at once */
  double drain;         /* seconds without any delivery after which the run ends */
  double connect_timeout; /* seconds for all subscribers to be ready */
  int quiet;
};

static void fan_usage(const char *prog) {
  fprintf(stderr,
          "usage: %s -p PORT [-h HOST] [-s STREAM] [-n SUBS] [-r RATE] [-d SECONDS]\n"
          "          [-c PUB_CONNS] [-b DATA_BYTES] [-P CONNECT_PARALLEL] [-w DRAIN_SECONDS]\n"
          "          [-T CONNECT_TIMEOUT] [-q]\n"
          "defaults: -h 127.0.0.1 -s fan -n 100 -r 5000 -d 10 -c 16 -b 100 -P 256 -w 10 -T 60\n"
          "Publishes at RATE for SECONDS (fewer events if the server cannot keep up), then\n"
          "waits until every subscriber has every event or nothing arrived for DRAIN_SECONDS.\n"
          "Prints one line: BENCH_FAN key=value ...\n",
          prog);
  exit(2);
}

static void fan_parse(int argc, char **argv, struct fan_opts *o) {
  o->host = "127.0.0.1";
  o->port = 0;
  o->stream = "fan";
  o->subs = 100;
  o->rate = 5000;
  o->duration = 10;
  o->pub_conns = 16;
  o->data_bytes = 100;
  o->connect_parallel = 256;
  o->drain = 10;
  o->connect_timeout = 60;
  o->quiet = 0;
  int ch;
  while ((ch = getopt(argc, argv, "h:p:s:n:r:d:c:b:P:w:T:q")) != -1) {
    switch (ch) {
      case 'h': o->host = optarg; break;
      case 'p': o->port = atoi(optarg); break;
      case 's': o->stream = optarg; break;
      case 'n': o->subs = atoi(optarg); break;
      case 'r': o->rate = atof(optarg); break;
      case 'd': o->duration = atof(optarg); break;
      case 'c': o->pub_conns = atoi(optarg); break;
      case 'b': o->data_bytes = atoi(optarg); break;
      case 'P': o->connect_parallel = atoi(optarg); break;
      case 'w': o->drain = atof(optarg); break;
      case 'T': o->connect_timeout = atof(optarg); break;
      case 'q': o->quiet = 1; break;
      default: fan_usage(argv[0]);
    }
  }
  if (o->port <= 0 || o->subs < 1 || o->rate <= 0 || o->duration <= 0 || o->pub_conns < 1 ||
      o->connect_parallel < 1 || o->data_bytes < 0)
    fan_usage(argv[0]);
}

/* ---------------------------------------------------------------- payload */
/* Writes the data object for event s into buf; returns its length. */
static int fan_data(char *buf, size_t cap, uint64_t t, uint64_t s, int data_bytes) {
  static char pad[4096];
  if (pad[0] == 0) memset(pad, 'x', sizeof(pad) - 1);
  int head = snprintf(buf, cap, "{\"t\":%" PRIu64 ",\"s\":%" PRIu64 ",\"pad\":\"", t, s);
  int padn = data_bytes - head - 2;
  if (padn < 0) padn = 0;
  if (padn > (int)sizeof(pad) - 1) padn = (int)sizeof(pad) - 1;
  int n = head + snprintf(buf + head, cap - (size_t)head, "%.*s\"}", padn, pad);
  return n;
}

/* Finds "<key>":<unsigned number> in p[0..len); returns 0 on success. */
static int fan_field(const char *p, size_t len, const char *key, uint64_t *out) {
  size_t kl = strlen(key);
  const char *end = p + len;
  for (const char *q = p; q + kl + 3 <= end; q++) {
    q = memchr(q, '"', (size_t)(end - q));
    if (q == NULL || q + kl + 3 > end) return -1;
    if (memcmp(q + 1, key, kl) == 0 && q[kl + 1] == '"' && q[kl + 2] == ':') {
      const char *d = q + kl + 3;
      while (d < end && *d == ' ') d++;
      if (d >= end || *d < '0' || *d > '9') return -1;
      uint64_t v = 0;
      while (d < end && *d >= '0' && *d <= '9') v = v * 10 + (uint64_t)(*d++ - '0');
      *out = v;
      return 0;
    }
  }
  return -1;
}

/* ---------------------------------------------------------------- state */
struct fan_sub_stats {
  uint8_t *seen;       /* bitmap over s */
  int ready;           /* subscribed before the publishing started */
  uint64_t n, dups, bad;
};

struct fan {
  struct fan_opts o;
  uv_loop_t *loop;
  uint64_t total;      /* events to publish */
  uint8_t *ok_bits;    /* s acknowledged with success */
  /* publisher */
  uint64_t pub_start, pub_last_ack, sent, acked, ok, errors, behind_max;
  int *idle, nidle;
  uint64_t *inflight_t; /* per connection: send time of its request */
  struct hist pub_lat;
  uv_timer_t tick;
  int publishing, pub_done;
  void (*send)(int conn, uint64_t s, uint64_t t);
  void (*on_published)(void); /* every ack is in */
  /* subscribers */
  struct fan_sub_stats *ss;
  int subs_ok, subs_failed, subs_closed;
  uint64_t deliveries, first_delivery, last_delivery;
  struct hist lat;
  char err[256];
};

static struct fan F;

static void fan_init(int argc, char **argv) {
  fan_parse(argc, argv, &F.o);
  bench_quiet = F.o.quiet;
  bench_tag = "fan";
  F.loop = uv_default_loop();
  F.total = (uint64_t)(F.o.rate * F.o.duration + 0.5);
  if (F.total == 0) F.total = 1;
  F.ok_bits = calloc(F.total / 8 + 1, 1);
  F.ss = calloc((size_t)F.o.subs, sizeof(*F.ss));
  F.idle = calloc((size_t)F.o.pub_conns, sizeof(int));
  F.inflight_t = calloc((size_t)F.o.pub_conns, sizeof(uint64_t));
  if (!F.ok_bits || !F.ss || !F.idle || !F.inflight_t) bench_die("out of memory");
  raise_nofile(F.o.subs + F.o.pub_conns + 64);
}

static inline void bit_set(uint8_t *b, uint64_t i) { b[i >> 3] |= (uint8_t)(1u << (i & 7)); }
static inline int bit_get(const uint8_t *b, uint64_t i) { return (b[i >> 3] >> (i & 7)) & 1; }

/* A subscriber received an event carrying data; p/len: anything holding
 * the "t" and "s" fields. */
static void fan_delivery(int sub, const char *p, size_t len) {
  uint64_t now = now_us(), t, s;
  struct fan_sub_stats *st = &F.ss[sub];
  if (fan_field(p, len, "t", &t) != 0 || fan_field(p, len, "s", &s) != 0 || s >= F.total) {
    st->bad++;
    return;
  }
  if (st->seen == NULL) {
    st->seen = calloc(F.total / 8 + 1, 1);
    if (st->seen == NULL) bench_die("out of memory");
  }
  if (bit_get(st->seen, s)) st->dups++;
  bit_set(st->seen, s);
  st->n++;
  F.deliveries++;
  if (F.first_delivery == 0) F.first_delivery = now;
  F.last_delivery = now;
  h_add(&F.lat, (int64_t)(now - t));
}

/* ---------------------------------------------------------------- publisher
 * Open loop: event s is due at pub_start + s / rate; due events go out on
 * the idle connections (send time = when it is written, not when it was
 * due). Publishing stops after rate * duration events or after duration
 * seconds, whichever comes first: a server that cannot keep up publishes
 * fewer events (pub_rate, pub_behind_max tell), the run does not get longer. */
static void fan_check_done(void) {
  if (!F.publishing && F.pub_start != 0 && F.acked == F.sent && !F.pub_done) {
    F.pub_done = 1;
    if (F.on_published) F.on_published();
  }
}

static void fan_pump(void) {
  if (!F.publishing) return;
  uint64_t now = now_us();
  double el = (double)(now - F.pub_start) / 1e6;
  uint64_t due = (uint64_t)(el * F.o.rate) + 1;
  if (due > F.total) due = F.total;
  if (el < F.o.duration) {
    while (F.sent < due && F.nidle > 0) {
      int c = F.idle[--F.nidle];
      uint64_t s = F.sent++;
      uint64_t t = now_us();
      F.inflight_t[c] = t;
      F.send(c, s, t);
    }
    if (due > F.sent && due - F.sent > F.behind_max) F.behind_max = due - F.sent;
  }
  if (F.sent == F.total || el >= F.o.duration) {
    F.publishing = 0;
    uv_timer_stop(&F.tick);
    fan_check_done();
  }
}

static void fan_tick(uv_timer_t *t) {
  (void)t;
  fan_pump();
}

/* Connection c (0..pub_conns-1) is ready for its first request. */
static void fan_pub_ready(int c) { F.idle[F.nidle++] = c; }

/* Starts the paced publishing once every publisher connection is ready. */
static void fan_pub_start(void) {
  F.pub_start = now_us();
  F.publishing = 1;
  uv_timer_init(F.loop, &F.tick);
  uv_timer_start(&F.tick, fan_tick, 1, 1);
  fan_pump();
}

/* The request for event s on connection c was answered. */
static void fan_pub_ack(int c, uint64_t s, int ok) {
  uint64_t now = now_us();
  h_add(&F.pub_lat, (int64_t)(now - F.inflight_t[c]));
  F.acked++;
  F.pub_last_ack = now;
  if (ok) {
    F.ok++;
    bit_set(F.ok_bits, s);
  } else {
    F.errors++;
  }
  F.idle[F.nidle++] = c;
  if (F.publishing) fan_pump();
  fan_check_done();
}

/* After the publishing: done when every subscriber has every acknowledged
 * event, or when nothing arrived for drain seconds. */
static int fan_drained(void) {
  uint64_t expected = (uint64_t)F.subs_ok * F.ok;
  uint64_t last = F.last_delivery > F.pub_last_ack ? F.last_delivery : F.pub_last_ack;
  return F.deliveries >= expected || now_us() - last > (uint64_t)(F.o.drain * 1e6);
}

/* ---------------------------------------------------------------- the end */
static void fan_report(const char *target) {
  uint64_t missing = 0, dups = 0, bad = 0, expected = (uint64_t)F.subs_ok * F.ok;
  /* missing: acknowledged events that a subscriber that got its 101 / was
   * blocked in XREAD did not receive */
  for (int i = 0; i < F.o.subs; i++) {
    struct fan_sub_stats *st = &F.ss[i];
    dups += st->dups;
    bad += st->bad;
    if (!st->ready) continue;
    if (st->seen == NULL) {
      missing += F.ok;
      continue;
    }
    for (uint64_t s = 0; s < F.total; s++)
      if (bit_get(F.ok_bits, s) && !bit_get(st->seen, s)) missing++;
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
               (double)ru.ru_stime.tv_usec / 1e6;
  double pub_secs = F.pub_last_ack > F.pub_start ? (double)(F.pub_last_ack - F.pub_start) / 1e6 : 0;
  double secs = F.last_delivery > F.pub_start ? (double)(F.last_delivery - F.pub_start) / 1e6 : 0;
  printf("BENCH_FAN target=%s subs=%d subs_failed=%d subs_closed=%d published=%" PRIu64 " pub_errors=%" PRIu64
         " pub_seconds=%.3f pub_rate=%.1f pub_behind_max=%" PRIu64 " pub_p50_us=%" PRIu64 " pub_p99_us=%" PRIu64
         " expected=%" PRIu64 " deliveries=%" PRIu64 " missing=%" PRIu64 " dups=%" PRIu64 " bad=%" PRIu64
         " seconds=%.3f rate=%.1f p50_us=%" PRIu64 " p99_us=%" PRIu64 " max_us=%" PRIu64 " client_cpu_s=%.2f%s%s\n",
         target, F.subs_ok, F.subs_failed, F.subs_closed, F.ok, F.errors, pub_secs,
         pub_secs > 0 ? (double)F.ok / pub_secs : 0.0, F.behind_max, h_pct(&F.pub_lat, 50), h_pct(&F.pub_lat, 99),
         expected, F.deliveries, missing, dups, bad, secs, secs > 0 ? (double)F.deliveries / secs : 0.0,
         h_pct(&F.lat, 50), h_pct(&F.lat, 99), F.lat.max, cpu, F.err[0] ? " error=" : "", F.err);
  fflush(stdout);
}

static void fan_set_err(const char *fmt, ...) {
  if (F.err[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(F.err, sizeof(F.err), fmt, ap);
  va_end(ap);
  for (char *p = F.err; *p; p++)
    if (*p == ' ') *p = '_';
}

#endif
