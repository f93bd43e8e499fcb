/*
 * redisfan.c - the Redis Streams peer of bench/wsfan.c (bench/run.sh fanout).
 *
 *   redisfan -p PORT [-s KEY] [-n SUBS] [-r RATE] [-d SECONDS] [-c PUB_CONNS] ...
 *
 * DELetes KEY, then opens SUBS subscriber connections (hiredis async API,
 * libuv adapter), each looping on XREAD BLOCK 0 STREAMS KEY $ and then
 * XREAD BLOCK 0 STREAMS KEY <last id received>. Once Redis reports every
 * subscriber blocked (INFO clients: blocked_clients), publishes RATE
 * events/s for SECONDS seconds with XADD KEY * event b data <data> on
 * PUB_CONNS connections, one command in flight per connection, where data
 * is the same JSON object as wsfan's (send time in microseconds in "t").
 * Waits for the deliveries (at most -w seconds after the last reply) and
 * prints one BENCH_FAN line (see fancommon.h).
 *
 * Build: gcc -O2 -o redisfan bench/redisfan.c -lhiredis -luv
 */
#include "fancommon.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libuv.h>

struct rsub {
  redisAsyncContext *ac;
  int idx, connected, ended;
  uint64_t last_ms, last_seq;
  char last_id[64];
};

struct rpub {
  redisAsyncContext *ac;
  int idx;
  uint64_t s;
};

static struct rsub *subs;
static struct rpub *pubs;
static redisAsyncContext *ctl;
static int subs_connected, subs_refused, pubs_connected, started;
static uint64_t out_of_order, ready_deadline;
static uv_timer_t ready_timer, drain_timer, cap_timer;

static void finish(int rc) {
  fan_report("redis");
  exit(rc);
}

static redisAsyncContext *connect_ac(void *data, void (*on_connect)(const redisAsyncContext *, int),
                                     void (*on_disconnect)(const redisAsyncContext *, int)) {
  redisAsyncContext *ac = redisAsyncConnect(F.o.host, F.o.port);
  if (ac == NULL) bench_die("redisAsyncConnect: out of memory");
  if (ac->err) bench_die("redis connect to %s:%d: %s", F.o.host, F.o.port, ac->errstr);
  ac->data = data;
  if (redisLibuvAttach(ac, F.loop) != REDIS_OK) bench_die("redisLibuvAttach failed");
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  return ac;
}

/* ---------------------------------------------------------------- subscribers */
static void xread(struct rsub *s);

static void sub_gone(struct rsub *s, const char *why) {
  if (s->ended) return;
  s->ended = 1;
  if (started) {
    F.subs_closed++;
    fan_set_err("sub%d: %s", s->idx, why);
  }
}

static void on_xread(redisAsyncContext *ac, void *r, void *priv) {
  struct rsub *s = priv;
  redisReply *reply = r;
  (void)ac;
  if (reply == NULL) {
    sub_gone(s, "connection lost");
    return;
  }
  if (reply->type == REDIS_REPLY_ERROR) {
    sub_gone(s, reply->str);
    return;
  }
  /* [[key, [[id, [field, value, ...]], ...]]] */
  if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1) {
    redisReply *kv = reply->element[0];
    if (kv->type == REDIS_REPLY_ARRAY && kv->elements == 2 && kv->element[1]->type == REDIS_REPLY_ARRAY) {
      redisReply *entries = kv->element[1];
      for (size_t i = 0; i < entries->elements; i++) {
        redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2) continue;
        redisReply *id = e->element[0], *fv = e->element[1];
        if (id->type == REDIS_REPLY_STRING && id->len < (int)sizeof(s->last_id)) {
          uint64_t ms = strtoull(id->str, NULL, 10), seq = 0;
          const char *dash = strchr(id->str, '-');
          if (dash) seq = strtoull(dash + 1, NULL, 10);
          if (s->last_id[0] && (ms < s->last_ms || (ms == s->last_ms && seq <= s->last_seq))) out_of_order++;
          s->last_ms = ms;
          s->last_seq = seq;
          memcpy(s->last_id, id->str, (size_t)id->len);
          s->last_id[id->len] = 0;
        }
        if (fv->type != REDIS_REPLY_ARRAY) continue;
        for (size_t j = 0; j + 1 < fv->elements; j += 2) {
          redisReply *f = fv->element[j], *v = fv->element[j + 1];
          if (f->type == REDIS_REPLY_STRING && f->len == 4 && memcmp(f->str, "data", 4) == 0 &&
              v->type == REDIS_REPLY_STRING)
            fan_delivery(s->idx, v->str, (size_t)v->len);
        }
      }
    }
  }
  xread(s);
}

static void xread(struct rsub *s) {
  const char *from = s->last_id[0] ? s->last_id : "$";
  if (redisAsyncCommand(s->ac, on_xread, s, "XREAD BLOCK 0 STREAMS %s %s", F.o.stream, from) != REDIS_OK)
    sub_gone(s, "XREAD could not be sent");
}

static void sub_connect_cb(const redisAsyncContext *ac, int status) {
  struct rsub *s = ac->data;
  if (status != REDIS_OK) {
    subs_refused++;
    fan_set_err("sub%d connect: %s", s->idx, ac->errstr);
    s->ended = 1;
    return;
  }
  s->connected = 1;
  subs_connected++;
}

static void sub_disconnect_cb(const redisAsyncContext *ac, int status) {
  struct rsub *s = ac->data;
  if (s->connected) sub_gone(s, status == REDIS_OK ? "disconnected" : ac->errstr);
}

/* ---------------------------------------------------------------- publishers */
static void on_xadd(redisAsyncContext *ac, void *r, void *priv) {
  struct rpub *p = priv;
  redisReply *reply = r;
  (void)ac;
  int ok = reply != NULL && reply->type == REDIS_REPLY_STRING;
  if (!ok) fan_set_err("XADD: %s", reply == NULL ? "connection lost" : reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
  if (reply == NULL) {
    /* the connection is gone: account for the request, do not reuse it */
    fan_pub_ack(p->idx, p->s, 0);
    for (int i = 0; i < F.nidle; i++)
      if (F.idle[i] == p->idx) {
        F.idle[i] = F.idle[--F.nidle];
        break;
      }
    return;
  }
  fan_pub_ack(p->idx, p->s, ok);
}

static void pub_send(int c, uint64_t s, uint64_t t) {
  struct rpub *p = &pubs[c];
  char data[4200];
  int n = fan_data(data, sizeof(data), t, s, F.o.data_bytes);
  p->s = s;
  if (redisAsyncCommand(p->ac, on_xadd, p, "XADD %s * event b data %b", F.o.stream, data, (size_t)n) != REDIS_OK)
    bench_die("XADD could not be sent");
}

static void pub_connect_cb(const redisAsyncContext *ac, int status) {
  struct rpub *p = ac->data;
  if (status != REDIS_OK) bench_die("publisher connect: %s", ac->errstr);
  pubs_connected++;
  fan_pub_ready(p->idx);
}

static void pub_disconnect_cb(const redisAsyncContext *ac, int status) {
  (void)ac;
  (void)status;
}

/* ---------------------------------------------------------------- control */
static void on_info(redisAsyncContext *ac, void *r, void *priv) {
  redisReply *reply = r;
  (void)ac;
  (void)priv;
  if (reply == NULL || reply->type != REDIS_REPLY_STRING) bench_die("INFO clients failed");
  const char *b = strstr(reply->str, "blocked_clients:");
  long blocked = b ? strtol(b + 16, NULL, 10) : -1;
  if (started) return;
  if (subs_connected + subs_refused == F.o.subs && pubs_connected == F.o.pub_conns && blocked >= subs_connected) {
    started = 1;
    uv_timer_stop(&ready_timer);
    for (int i = 0; i < F.o.subs; i++)
      if (subs[i].connected && !subs[i].ended) {
        F.ss[i].ready = 1;
        F.subs_ok++;
      } else {
        F.subs_failed++;
      }
    bench_log("%d subscribers blocked in XREAD (%d failed); publishing %.0f events/s for %.0fs on %d connections",
            F.subs_ok, F.subs_failed, F.o.rate, F.o.duration, F.o.pub_conns);
    if (F.subs_ok == 0) finish(1);
    fan_pub_start();
  } else if (now_us() > ready_deadline) {
    fan_set_err("subscribers not ready: %d connected, %d refused, %ld blocked", subs_connected, subs_refused,
                blocked);
    F.subs_failed = F.o.subs;
    finish(1);
  }
}

static void on_ready_tick(uv_timer_t *t) {
  (void)t;
  if (!started) redisAsyncCommand(ctl, on_info, NULL, "INFO clients");
}

static void on_del(redisAsyncContext *ac, void *r, void *priv) {
  redisReply *reply = r;
  (void)ac;
  (void)priv;
  if (reply == NULL || reply->type == REDIS_REPLY_ERROR) bench_die("DEL %s failed", F.o.stream);
  for (int i = 0; i < F.o.pub_conns; i++) {
    pubs[i].idx = i;
    pubs[i].ac = connect_ac(&pubs[i], pub_connect_cb, pub_disconnect_cb);
  }
  for (int i = 0; i < F.o.subs; i++) {
    subs[i].idx = i;
    subs[i].ac = connect_ac(&subs[i], sub_connect_cb, sub_disconnect_cb);
    xread(&subs[i]);
  }
  ready_deadline = now_us() + (uint64_t)(F.o.connect_timeout * 1e6);
  uv_timer_init(F.loop, &ready_timer);
  uv_timer_start(&ready_timer, on_ready_tick, 10, 10);
}

static void ctl_connect_cb(const redisAsyncContext *ac, int status) {
  if (status != REDIS_OK) bench_die("control connect: %s", ac->errstr);
}
static void ctl_disconnect_cb(const redisAsyncContext *ac, int status) {
  (void)ac;
  (void)status;
}

/* ---------------------------------------------------------------- the end */
static void on_drain(uv_timer_t *t) {
  (void)t;
  if (fan_drained() || F.subs_closed >= F.subs_ok) {
    if (out_of_order) fan_set_err("%" PRIu64 " deliveries out of id order", out_of_order);
    finish(0);
  }
}

static void on_published(void) {
  bench_log("published %" PRIu64 " (%" PRIu64 " failed); waiting for deliveries", F.ok, F.errors);
  uv_timer_init(F.loop, &drain_timer);
  uv_timer_start(&drain_timer, on_drain, 0, 5);
}

static void on_cap(uv_timer_t *t) {
  (void)t;
  fan_set_err("overall time cap reached");
  finish(3);
}

int main(int argc, char **argv) {
  fan_init(argc, argv);
  F.send = pub_send;
  F.on_published = on_published;
  subs = calloc((size_t)F.o.subs, sizeof(*subs));
  pubs = calloc((size_t)F.o.pub_conns, sizeof(*pubs));
  if (!subs || !pubs) bench_die("out of memory");
  uv_timer_init(F.loop, &cap_timer);
  uv_timer_start(&cap_timer, on_cap,
                 (uint64_t)((F.o.connect_timeout + F.o.duration * 2 + F.o.drain + 120) * 1000), 0);
  uv_unref((uv_handle_t *)&cap_timer);
  ctl = connect_ac(NULL, ctl_connect_cb, ctl_disconnect_cb);
  redisAsyncCommand(ctl, on_del, NULL, "DEL %s", F.o.stream);
  uv_run(F.loop, UV_RUN_DEFAULT);
  fan_set_err("event loop ended early");
  finish(1);
  return 0;
}
