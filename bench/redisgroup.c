/*
 * redisgroup.c - the Redis Streams peer of bench/groupbench.c (bench/run.sh
 * groups).
 *
 *   redisgroup -p PORT -e EXPECTED [-o EVENTS] [-s KEY] [-g GROUP] [-n CONSUMERS] [-l LIMIT] ...
 *
 * CONSUMERS connections (hiredis async API, libuv adapter), one per consumer
 * cK (K = 1..CONSUMERS), each looping on
 *   XREADGROUP GROUP GROUP cK COUNT LIMIT STREAMS KEY >
 *   XACK KEY GROUP <every id of the batch>
 * until the XACK replies add up to EXPECTED. The group must exist (XGROUP
 * CREATE KEY GROUP 0) on a stream whose entry ids are 1-0 ... EVENTS-0
 * (as bench/benchutil.py redis-resp writes them): id N-0 is marked as
 * offset N-1 of partition 0 for the duplicate check. Prints one BENCH_GROUP
 * line (groupcommon.h).
 *
 * Build: gcc -O2 -o redisgroup bench/redisgroup.c -lhiredis -luv
 */
#include "groupcommon.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libuv.h>

struct rcons {
  redisAsyncContext *ac;
  int k;
  uint64_t fetch_sent_us, asked;
  char name[16];
  /* XACK argv: "XACK", key, group, ids... */
  const char **argv;
  size_t *argvlen;
  char *ids; /* LIMIT ids of up to 48 bytes */
};

static struct rcons *cons;

static void finish(void) { grp_finish("redis"); }

static void cons_fail(struct rcons *c, const char *why) {
  grp_set_err("consumer %s: %s", c->name, why);
  finish();
}

static void xreadgroup(struct rcons *c);

static void on_xack(redisAsyncContext *ac, void *r, void *priv) {
  struct rcons *c = priv;
  redisReply *reply = r;
  (void)ac;
  if (G.finished) return;
  if (reply == NULL) {
    cons_fail(c, "connection lost (XACK)");
    return;
  }
  if (reply->type != REDIS_REPLY_INTEGER) {
    char why[200];
    snprintf(why, sizeof(why), "XACK answered %.*s", reply->type == REDIS_REPLY_ERROR ? (int)reply->len : 4,
             reply->type == REDIS_REPLY_ERROR ? reply->str : "type");
    cons_fail(c, why);
    return;
  }
  grp_acked(c->k, c->asked, (uint64_t)reply->integer, c->asked, c->fetch_sent_us);
  if (grp_over()) {
    finish();
    return;
  }
  xreadgroup(c);
}

static void on_xreadgroup(redisAsyncContext *ac, void *r, void *priv) {
  struct rcons *c = priv;
  redisReply *reply = r;
  (void)ac;
  if (G.finished) return;
  if (reply == NULL) {
    cons_fail(c, "connection lost (XREADGROUP)");
    return;
  }
  if (reply->type == REDIS_REPLY_NIL) { /* nothing new for the group */
    grp_empty(c->k);
    if (grp_over()) finish();
    return;
  }
  /* [[key, [[id, [field, value, ...]], ...]]] */
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 1 || reply->element[0]->type != REDIS_REPLY_ARRAY ||
      reply->element[0]->elements != 2 || reply->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
    char why[200];
    snprintf(why, sizeof(why), "XREADGROUP answered %.*s", reply->type == REDIS_REPLY_ERROR ? (int)reply->len : 20,
             reply->type == REDIS_REPLY_ERROR ? reply->str : "an unexpected shape");
    cons_fail(c, why);
    return;
  }
  redisReply *entries = reply->element[0]->element[1];
  if (entries->elements == 0) {
    grp_empty(c->k);
    if (grp_over()) finish();
    return;
  }
  if (entries->elements > (size_t)G.o.limit) {
    cons_fail(c, "XREADGROUP returned more entries than COUNT");
    return;
  }
  size_t n = 0;
  for (size_t i = 0; i < entries->elements; i++) {
    redisReply *e = entries->element[i];
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 1 || e->element[0]->type != REDIS_REPLY_STRING ||
        e->element[0]->len >= 48) {
      cons_fail(c, "XREADGROUP entry of an unexpected shape");
      return;
    }
    redisReply *id = e->element[0];
    uint64_t ms = strtoull(id->str, NULL, 10);
    grp_delivered(c->k, 0, ms > 0 ? ms - 1 : UINT64_MAX, 1);
    char *slot = c->ids + n * 48;
    memcpy(slot, id->str, id->len);
    c->argv[3 + n] = slot;
    c->argvlen[3 + n] = id->len;
    n++;
  }
  c->asked = n;
  if (redisAsyncCommandArgv(c->ac, on_xack, c, (int)(3 + n), c->argv, c->argvlen) != REDIS_OK)
    cons_fail(c, "XACK could not be sent");
}

static void xreadgroup(struct rcons *c) {
  char count[16];
  snprintf(count, sizeof(count), "%d", G.o.limit);
  grp_fetch_sent(c->k);
  c->fetch_sent_us = mono_us();
  if (redisAsyncCommand(c->ac, on_xreadgroup, c, "XREADGROUP GROUP %s %s COUNT %s STREAMS %s >", G.o.group, c->name,
                        count, G.o.stream) != REDIS_OK)
    cons_fail(c, "XREADGROUP could not be sent");
}

static void on_connect(const redisAsyncContext *ac, int status) {
  struct rcons *c = ac->data;
  if (status != REDIS_OK) {
    cons_fail(c, ac->errstr);
    return;
  }
  xreadgroup(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  struct rcons *c = ac->data;
  if (!G.finished && !G.c[c->k].done) cons_fail(c, status == REDIS_OK ? "disconnected" : ac->errstr);
}

int main(int argc, char **argv) {
  grp_init(argc, argv, "redisgroup");
  cons = calloc((size_t)G.o.consumers, sizeof(*cons));
  if (cons == NULL) bench_die("out of memory");
  grp_start_cap("redis");
  for (int k = 0; k < G.o.consumers; k++) {
    struct rcons *c = &cons[k];
    c->k = k;
    snprintf(c->name, sizeof(c->name), "c%d", k + 1);
    c->argv = calloc((size_t)G.o.limit + 3, sizeof(*c->argv));
    c->argvlen = calloc((size_t)G.o.limit + 3, sizeof(*c->argvlen));
    c->ids = malloc((size_t)G.o.limit * 48);
    if (!c->argv || !c->argvlen || !c->ids) bench_die("out of memory");
    c->argv[0] = "XACK";
    c->argvlen[0] = 4;
    c->argv[1] = G.o.stream;
    c->argvlen[1] = strlen(G.o.stream);
    c->argv[2] = G.o.group;
    c->argvlen[2] = strlen(G.o.group);
    c->ac = redisAsyncConnect(G.o.host, G.o.port);
    if (c->ac == NULL) bench_die("redisAsyncConnect: out of memory");
    if (c->ac->err) bench_die("redis connect to %s:%d: %s", G.o.host, G.o.port, c->ac->errstr);
    c->ac->data = c;
    if (redisLibuvAttach(c->ac, G.loop) != REDIS_OK) bench_die("redisLibuvAttach failed");
    redisAsyncSetConnectCallback(c->ac, on_connect);
    redisAsyncSetDisconnectCallback(c->ac, on_disconnect);
  }
  bench_log("%d consumers of %s/%s, COUNT %d, until %" PRIu64 " acked", G.o.consumers, G.o.stream, G.o.group,
            G.o.limit, G.o.expected);
  uv_run(G.loop, UV_RUN_DEFAULT);
  finish();
  return 0;
}
