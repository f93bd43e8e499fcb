/*
 * wsfan.c - WebSocket fan-out benchmark client for streamd (bench/run.sh fanout).
 *
 *   wsfan -p PORT [-s STREAM] [-n SUBS] [-r RATE] [-d SECONDS] [-c PUB_CONNS] ...
 *
 * Opens SUBS WebSocket connections to ws://HOST:PORT/stream/STREAM/ws/subK
 * (no from_offset: new events only), each with a hand-written RFC 6455
 * client handshake (random Sec-WebSocket-Key, 101 and Sec-WebSocket-Accept
 * checked) and wslay's client event API for the frames. Once every
 * subscriber has its 101, publishes RATE events/s for SECONDS seconds with
 * POST /stream/STREAM/publish (one event per request, PUB_CONNS keep-alive
 * connections, minimal HTTP/1.1), each event's data carrying its send time
 * in microseconds. Waits for the deliveries (at most -w seconds after the
 * last answer) and prints one BENCH_FAN line (see fancommon.h).
 *
 * Build: gcc -O2 -o wsfan bench/wsfan.c -luv -lwslay -lnettle
 */
#define _GNU_SOURCE /* memmem */
#include <nettle/base64.h>
#include <nettle/sha1.h>
#include <strings.h>
#include <wslay/wslay.h>

#include "fancommon.h"
#include "httpmini.h" /* write_copy, find_header, http_response */

enum { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_OPEN, S_DONE };

struct sub {
  uv_tcp_t tcp;
  uv_connect_t creq;
  int idx, state, closed_counted;
  char accept[29];
  char *hs;           /* handshake response so far */
  size_t hs_len;
  wslay_event_context_ptr ctx;
  const uint8_t *in;  /* bytes of the current read, for wslay's recv */
  size_t in_len;
  int64_t last_offset;
};

struct pubc {
  uv_tcp_t tcp;
  uv_connect_t creq;
  int idx, connected, busy, closing;
  uint64_t s;
  char req[8192];
  char resp[8192];
  size_t resp_len;
};

#define HS_CAP 4096
static struct sub *subs;
static struct pubc *pubs;
static int next_sub, subs_inflight, pubs_connected;
static uint64_t out_of_order;
static struct sockaddr_in addr;
static uv_timer_t connect_timer, drain_timer, cap_timer;
static char rbuf[256 * 1024]; /* one shared read buffer: every read is consumed in its callback */

static void alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)h;
  (void)sz;
  b->base = rbuf;
  b->len = sizeof(rbuf);
}

static void finish(int rc) {
  fan_report("streamd");
  exit(rc);
}

/* ---------------------------------------------------------------- subscribers */
static void start_subs(void);
static void start_pubs_or_run(void);

static void sub_closed_cb(uv_handle_t *h) { (void)h; }

static void sub_end(struct sub *s) {
  if (s->state == S_DONE) return;
  int was = s->state;
  s->state = S_DONE;
  if (was == S_OPEN && !s->closed_counted) {
    s->closed_counted = 1;
    F.subs_closed++;
  }
  free(s->hs);
  s->hs = NULL;
  if (!uv_is_closing((uv_handle_t *)&s->tcp)) uv_close((uv_handle_t *)&s->tcp, sub_closed_cb);
}

static void sub_failed(struct sub *s, const char *why) {
  if (!F.err[0]) fan_set_err("subscriber sub%d: %s", s->idx, why);
  F.subs_failed++;
  subs_inflight--;
  sub_end(s);
  start_subs();
}

/* wslay callbacks */
static ssize_t ws_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *user) {
  struct sub *s = user;
  (void)flags;
  if (s->in_len == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  size_t n = s->in_len < len ? s->in_len : len;
  memcpy(buf, s->in, n);
  s->in += n;
  s->in_len -= n;
  return (ssize_t)n;
}

static ssize_t ws_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *user) {
  struct sub *s = user;
  (void)flags;
  if (write_copy((uv_stream_t *)&s->tcp, data, len) != 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return (ssize_t)len;
}

static int ws_genmask(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user) {
  (void)ctx;
  (void)user;
  fill_random(buf, len);
  return 0;
}

static void ws_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg, void *user) {
  struct sub *s = user;
  (void)ctx;
  if (arg->opcode == WSLAY_TEXT_FRAME) {
    uint64_t off;
    const char *m = (const char *)arg->msg;
    if (fan_field(m, arg->msg_length, "offset", &off) == 0) {
      if (s->last_offset >= 0 && (int64_t)off != s->last_offset + 1) out_of_order++;
      s->last_offset = (int64_t)off;
    }
    /* t and s are inside "data"; look there so that no other field can match */
    const char *d = memmem(m, arg->msg_length, "\"data\":", 7);
    if (d == NULL) d = m;
    fan_delivery(s->idx, d, arg->msg_length - (size_t)(d - m));
  } else if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
    if (!s->closed_counted) {
      s->closed_counted = 1;
      F.subs_closed++;
      char why[160];
      snprintf(why, sizeof(why), "sub%d closed by the server: %u %.*s", s->idx, arg->status_code,
               (int)(arg->msg_length > 2 ? arg->msg_length - 2 : 0), (const char *)arg->msg + 2);
      fan_set_err("%s", why);
      bench_log("%s", why);
    }
  }
}

static const struct wslay_event_callbacks ws_cbs = {ws_recv, ws_send, ws_genmask, NULL, NULL, NULL, ws_msg};

static void sub_feed(struct sub *s, const uint8_t *p, size_t n) {
  s->in = p;
  s->in_len = n;
  if (wslay_event_recv(s->ctx) != 0) {
    sub_end(s);
    return;
  }
  if (wslay_event_want_write(s->ctx) && wslay_event_send(s->ctx) != 0) {
    sub_end(s);
    return;
  }
  if (!wslay_event_want_read(s->ctx) && !wslay_event_want_write(s->ctx)) sub_end(s);
}

static void sub_handshake_read(struct sub *s, const char *p, size_t n) {
  if (s->hs_len + n > HS_CAP) {
    sub_failed(s, "handshake response too long");
    return;
  }
  memcpy(s->hs + s->hs_len, p, n);
  s->hs_len += n;
  char *end = memmem(s->hs, s->hs_len, "\r\n\r\n", 4);
  if (end == NULL) return;
  size_t hlen = (size_t)(end - s->hs) + 4;
  if (s->hs_len < 12 || memcmp(s->hs, "HTTP/1.1 101", 12) != 0) {
    char why[200];
    char *eol = memchr(s->hs, '\r', s->hs_len);
    snprintf(why, sizeof(why), "handshake answered '%.*s'", (int)(eol ? eol - s->hs : 40), s->hs);
    sub_failed(s, why);
    return;
  }
  size_t vl;
  const char *v = find_header(s->hs, hlen, "Sec-WebSocket-Accept", &vl);
  if (v == NULL || vl != 28 || memcmp(v, s->accept, 28) != 0) {
    sub_failed(s, "bad or missing Sec-WebSocket-Accept");
    return;
  }
  if (wslay_event_context_client_init(&s->ctx, &ws_cbs, s) != 0) bench_die("wslay: out of memory");
  s->state = S_OPEN;
  F.ss[s->idx].ready = 1;
  if (++F.subs_ok % 1000 == 0) bench_log("%d subscribers ready", F.subs_ok);
  subs_inflight--;
  size_t extra = s->hs_len - hlen;
  char tmp[HS_CAP];
  memcpy(tmp, s->hs + hlen, extra);
  free(s->hs);
  s->hs = NULL;
  if (extra > 0) sub_feed(s, (const uint8_t *)tmp, extra);
  start_subs();
}

static void sub_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b) {
  struct sub *s = st->data;
  if (nread == 0) return;
  if (nread < 0) {
    if (s->state == S_HANDSHAKE) {
      char why[120];
      snprintf(why, sizeof(why), "connection ended during the handshake (%s)", uv_strerror((int)nread));
      sub_failed(s, why);
    } else {
      sub_end(s);
    }
    return;
  }
  if (s->state == S_HANDSHAKE)
    sub_handshake_read(s, b->base, (size_t)nread);
  else if (s->state == S_OPEN)
    sub_feed(s, (const uint8_t *)b->base, (size_t)nread);
}

static void sub_connected(uv_connect_t *req, int status) {
  struct sub *s = req->data;
  if (s->state != S_CONNECTING) return;
  if (status < 0) {
    char why[120];
    snprintf(why, sizeof(why), "connect: %s", uv_strerror(status));
    sub_failed(s, why);
    return;
  }
  uv_tcp_nodelay(&s->tcp, 1);
  uint8_t raw[16];
  char key[25];
  fill_random(raw, sizeof(raw));
  base64_encode_raw(key, sizeof(raw), raw);
  key[24] = 0;
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  struct sha1_ctx sha;
  uint8_t dig[SHA1_DIGEST_SIZE];
  sha1_init(&sha);
  sha1_update(&sha, 24, (const uint8_t *)key);
  sha1_update(&sha, sizeof(guid) - 1, (const uint8_t *)guid);
  sha1_digest(&sha, sizeof(dig), dig);
  base64_encode_raw(s->accept, sizeof(dig), dig);
  s->accept[28] = 0;
  char hreq[1024];
  int n = snprintf(hreq, sizeof(hreq),
                   "GET /stream/%s/ws/sub%d HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                   F.o.stream, s->idx, F.o.host, F.o.port, key);
  s->hs = malloc(HS_CAP);
  if (s->hs == NULL) bench_die("out of memory");
  s->hs_len = 0;
  s->state = S_HANDSHAKE;
  int rc = write_copy((uv_stream_t *)&s->tcp, hreq, (size_t)n);
  if (rc == 0) rc = uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, sub_read);
  if (rc != 0) sub_failed(s, uv_strerror(rc));
}

static void start_subs(void) {
  while (subs_inflight < F.o.connect_parallel && next_sub < F.o.subs) {
    struct sub *s = &subs[next_sub];
    s->idx = next_sub++;
    s->last_offset = -1;
    s->state = S_CONNECTING;
    uv_tcp_init(F.loop, &s->tcp);
    s->tcp.data = s;
    s->creq.data = s;
    subs_inflight++;
    int rc = uv_tcp_connect(&s->creq, &s->tcp, (const struct sockaddr *)&addr, sub_connected);
    if (rc != 0) sub_failed(s, uv_strerror(rc));
  }
  if (next_sub == F.o.subs && subs_inflight == 0 && !F.publishing && !F.pub_done && F.pub_start == 0) {
    uv_timer_stop(&connect_timer);
    bench_log("%d subscribers ready (%d failed); publishing %.0f events/s for %.0fs on %d connections",
            F.subs_ok, F.subs_failed, F.o.rate, F.o.duration, F.o.pub_conns);
    if (F.subs_ok == 0) finish(1);
    fan_pub_start();
  }
}

static void on_connect_timeout(uv_timer_t *t) {
  (void)t;
  bench_log("subscribers not ready after %.0fs", F.o.connect_timeout);
  int started = next_sub;
  F.subs_failed += F.o.subs - started; /* the rest is not tried */
  next_sub = F.o.subs;
  for (int i = 0; i < started; i++)
    if (subs[i].state == S_CONNECTING || subs[i].state == S_HANDSHAKE) sub_failed(&subs[i], "not ready in time");
  start_subs();
}

/* ---------------------------------------------------------------- publishers */
static void pub_connect(struct pubc *p);

static void pub_closed(uv_handle_t *h) {
  struct pubc *p = h->data;
  p->closing = 0;
  if (!F.pub_done) pub_connect(p); /* the server ended a keep-alive connection: again */
}

static void pub_fail(struct pubc *p, const char *why) {
  fan_set_err("publisher connection %d: %s", p->idx, why);
  bench_log("publisher connection %d: %s", p->idx, why);
  int was_busy = p->busy;
  p->busy = 0;
  p->connected = 0;
  p->closing = 1;
  uv_close((uv_handle_t *)&p->tcp, pub_closed);
  if (was_busy) fan_pub_ack(p->idx, p->s, 0);
  /* fan_pub_ack put the connection back as idle; it is not, until reconnected */
  for (int i = 0; i < F.nidle; i++)
    if (F.idle[i] == p->idx) {
      F.idle[i] = F.idle[--F.nidle];
      break;
    }
}

static void pub_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b) {
  struct pubc *p = st->data;
  if (nread == 0) return;
  if (nread < 0) {
    pub_fail(p, nread == UV_EOF ? "closed by the server" : uv_strerror((int)nread));
    return;
  }
  if (p->resp_len + (size_t)nread > sizeof(p->resp)) {
    pub_fail(p, "response too long");
    return;
  }
  memcpy(p->resp + p->resp_len, b->base, (size_t)nread);
  p->resp_len += (size_t)nread;
  for (;;) {
    struct http_resp r;
    int fr = http_response(p->resp, p->resp_len, &r);
    if (fr == 0) return;
    if (fr < 0) {
      pub_fail(p, "response without Content-Length");
      return;
    }
    int status = r.status;
    int ok = status == 200 && memmem(r.body, r.body_len, "\"success\":true", 14) != NULL;
    if (!ok) {
      char why[200];
      snprintf(why, sizeof(why), "HTTP %d %.*s", status, (int)(r.body_len > 120 ? 120 : r.body_len), r.body);
      fan_set_err("publish: %s", why);
    }
    int close_after = r.close;
    memmove(p->resp, p->resp + r.total, p->resp_len - r.total);
    p->resp_len -= r.total;
    if (!p->busy) {
      pub_fail(p, "response without a request");
      return;
    }
    p->busy = 0;
    if (close_after) {
      p->connected = 0;
      p->closing = 1;
      uv_close((uv_handle_t *)&p->tcp, pub_closed);
      fan_pub_ack(p->idx, p->s, ok);
      for (int i = 0; i < F.nidle; i++)
        if (F.idle[i] == p->idx) {
          F.idle[i] = F.idle[--F.nidle];
          break;
        }
      return;
    }
    fan_pub_ack(p->idx, p->s, ok);
  }
}

static void pub_send(int c, uint64_t s, uint64_t t) {
  struct pubc *p = &pubs[c];
  char data[4200], body[4400];
  fan_data(data, sizeof(data), t, s, F.o.data_bytes);
  int bl = snprintf(body, sizeof(body), "{\"event\":\"b\",\"data\":%s}", data);
  int n = snprintf(p->req, sizeof(p->req),
                   "POST /stream/%s/publish HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n%s",
                   F.o.stream, F.o.host, F.o.port, bl, body);
  p->busy = 1;
  p->s = s;
  int rc = write_copy((uv_stream_t *)&p->tcp, p->req, (size_t)n);
  if (rc != 0) pub_fail(p, uv_strerror(rc));
}

static void pub_connected(uv_connect_t *req, int status) {
  struct pubc *p = req->data;
  if (status < 0) {
    bench_die("publisher connect to %s:%d: %s", F.o.host, F.o.port, uv_strerror(status));
  }
  uv_tcp_nodelay(&p->tcp, 1);
  p->connected = 1;
  p->resp_len = 0;
  if (uv_read_start((uv_stream_t *)&p->tcp, alloc_cb, pub_read) != 0) bench_die("uv_read_start");
  fan_pub_ready(p->idx);
  if (F.pub_start == 0) {
    if (++pubs_connected == F.o.pub_conns) start_subs(); /* publishers first, then subscribers */
  } else if (F.publishing) {
    fan_pump();
  }
}

static void pub_connect(struct pubc *p) {
  uv_tcp_init(F.loop, &p->tcp);
  p->tcp.data = p;
  p->creq.data = p;
  int rc = uv_tcp_connect(&p->creq, &p->tcp, (const struct sockaddr *)&addr, pub_connected);
  if (rc != 0) bench_die("connect: %s", uv_strerror(rc));
}

static void start_pubs_or_run(void) {
  for (int i = 0; i < F.o.pub_conns; i++) {
    pubs[i].idx = i;
    pub_connect(&pubs[i]);
  }
}

/* ---------------------------------------------------------------- the end */
static void on_drain(uv_timer_t *t) {
  (void)t;
  if (fan_drained() || F.subs_closed >= F.subs_ok) {
    if (out_of_order) fan_set_err("%" PRIu64 " deliveries out of offset order", out_of_order);
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
  if (uv_ip4_addr(F.o.host, F.o.port, &addr) != 0) bench_die("bad host %s", F.o.host);
  subs = calloc((size_t)F.o.subs, sizeof(*subs));
  pubs = calloc((size_t)F.o.pub_conns, sizeof(*pubs));
  if (!subs || !pubs) bench_die("out of memory");
  uv_timer_init(F.loop, &connect_timer);
  uv_timer_start(&connect_timer, on_connect_timeout, (uint64_t)(F.o.connect_timeout * 1000), 0);
  uv_timer_init(F.loop, &cap_timer);
  uv_timer_start(&cap_timer, on_cap,
                 (uint64_t)((F.o.connect_timeout + F.o.duration * 2 + F.o.drain + 120) * 1000), 0);
  uv_unref((uv_handle_t *)&cap_timer);
  start_pubs_or_run();
  uv_run(F.loop, UV_RUN_DEFAULT);
  fan_set_err("event loop ended early");
  finish(1);
  return 0;
}
