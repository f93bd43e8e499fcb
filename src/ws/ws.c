/*
 * ws.c - WebSocket subscriber connections; see ws.h.
 *
 * Life of a connection: sd_ws_conn_new (at the handshake) -> sd_ws_upgraded
 * (MHD hands over the socket) -> reads from the log, framing each event
 * straight into c->out (wslay parses what the client sends and frames the
 * control frames, into c->out too), one send() per pass -> close: a close frame is
 * queued, the connection ends once it is sent (or at the next ping tick)
 * -> the poll handle closes -> MHD_upgrade_action(CLOSE) gives the socket
 * back to MHD, which closes it.
 *
 * Invariants: queued(c) = wslay's queued bytes + unsent bytes in c->out
 * stays under window + one record; next[p] is the next offset to queue for
 * partition p; a connection is in srv->conns from upgrade to destruction.
 */
#include "ws/ws.h"

#include <errno.h>
#include <nettle/base64.h>
#include <nettle/sha1.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <wslay/wslay.h>

#include "streamd/buf.h"
#include "streamd/err.h"
#include "streamd/group.h"
#include <jansson.h>
#include "streamd/list.h"
#include "streamd/log.h"

#define READ_BATCH 256
#define OUT_CAP_EXTRA (64u * 1024u)
/* Bytes read from one connection per loop pass, so that a client sending
 * without pause cannot keep the loop from everyone else. */
#define READ_BUDGET (16u * 1024u)
/* Pings answered per ping interval; past it the connection is not read
 * until the next tick, so a client that sends pings and never reads the
 * pongs cannot grow the queue of pongs. */
#define PINGS_PER_INTERVAL 256

struct sd_ws_server {
  uv_loop_t *loop;
  const struct sd_config *cfg;
  void (*kick)(void *);
  void *kick_arg;
  struct sd_list conns;
  size_t count;
  uv_timer_t ping;
  int closing;
  int freeing;
  uint64_t events[2];     /* queued since start-up: [0] stream, [1] group */
};

struct sd_ws_conn {
  struct sd_list node;
  struct sd_ws_server *srv;
  struct MHD_UpgradeResponseHandle *urh;
  int fd;
  int tls_fd;         /* TLS: the TCP socket MHD relays to fd; -1 without TLS */
  int upgraded;
  int closing;        /* a close frame is queued; end once it is sent */
  uint16_t end_code;  /* non-zero: close with this once the queued events are sent */
  char end_reason[124];   /* the close reason, kept until the queue is sent (at most 123 bytes) */
  int dead;           /* destruction started */
  int awaiting_pong;
  int close_ticks;
  uv_poll_t poll;
  int poll_events;
  wslay_event_context_ptr ctx;
  struct sd_stream *stream;
  struct sd_group *group;   /* a group consumer; NULL: a plain subscriber */
  uint32_t prefetch;        /* group: most unacked events */
  uint32_t inflight;        /* group: delivered here, not yet acked here */
  int acking;               /* inside sd_group_ack for this connection */
  int32_t partition;  /* -1: every partition */
  uint32_t nparts;
  uint32_t rr;
  uint64_t *next;
  struct sd_waiter waiter;
  struct sd_buf out;
  size_t out_off;
  char *extra;        /* bytes read by MHD past the handshake */
  size_t extra_len, extra_off;
  size_t read_budget; /* bytes on_recv may still read in this pass */
  uint32_t pings;     /* pings received since the last tick */
  int read_paused;    /* PINGS_PER_INTERVAL reached: not read until the next tick */
  int read_stopped;   /* a frame header broke the protocol: nothing more is read */
  uint8_t fh[14];     /* the client frame header being watched (watch_frames) */
  uint8_t fh_len;
  uint64_t fh_remain; /* payload bytes of the current client frame still to pass */
  char consumer[SD_MAX_NAME + 1];
};

static void conn_update(struct sd_ws_conn *c);
static void conn_close(struct sd_ws_conn *c, uint16_t code, const char *reason);
static void conn_close_after_queue(struct sd_ws_conn *c, uint16_t code, const char *reason);
static void conn_destroy(struct sd_ws_conn *c);

/* ---- handshake ---------------------------------------------------------- */

int sd_ws_accept_key(const char *key, char accept[29]) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  struct base64_decode_ctx d;
  uint8_t raw[20];
  size_t n = sizeof(raw);
  if (key == NULL || strlen(key) != 24) return SD_E_INVALID_PARAMETER;
  base64_decode_init(&d);
  if (!base64_decode_update(&d, &n, raw, 24, key) || !base64_decode_final(&d) || n != 16)
    return SD_E_INVALID_PARAMETER;
  struct sha1_ctx sha;
  uint8_t digest[SHA1_DIGEST_SIZE];
  sha1_init(&sha);
  sha1_update(&sha, 24, (const uint8_t *)key);
  sha1_update(&sha, sizeof(guid) - 1, (const uint8_t *)guid);
  sha1_digest(&sha, sizeof(digest), digest);
  base64_encode_raw(accept, sizeof(digest), digest);
  accept[28] = '\0';
  return 0;
}

/* ---- wslay callbacks ----------------------------------------------------- */

/* Header bytes of the client frame in c->fh: 2, then the extended length
 * and the mask key once the second byte is known. */
static size_t fh_need(const struct sd_ws_conn *c) {
  if (c->fh_len < 2) return 2;
  uint8_t l = c->fh[1] & 0x7f;
  return 2u + (l == 126 ? 2u : l == 127 ? 8u : 0u) + (c->fh[1] & 0x80 ? 4u : 0u);
}

/* Checks the header of every client frame as its bytes pass to wslay.
 * wslay checks a frame's size only once payload bytes arrive (a header
 * announcing 1 TiB, then nothing, would hold the connection), and on some
 * malformed headers gives up without a close code.  Returns how many of
 * the n bytes wslay may have: all, or those before a header that breaks
 * the protocol, after which the close is queued and reading stops. */
static size_t watch_frames(struct sd_ws_conn *c, const uint8_t *buf, size_t n) {
  size_t i = 0;
  while (i < n) {
    if (c->fh_remain > 0) {
      uint64_t k = n - i < c->fh_remain ? n - i : c->fh_remain;
      i += (size_t)k;
      c->fh_remain -= k;
      continue;
    }
    size_t start = c->fh_len ? 0 : i;
    while (i < n && c->fh_len < fh_need(c)) c->fh[c->fh_len++] = buf[i++];
    if (c->fh_len < fh_need(c)) break;
    uint8_t b0 = c->fh[0], b1 = c->fh[1], op = b0 & 0x0f, l = b1 & 0x7f;
    uint64_t len = l;
    if (l == 126) len = (uint64_t)c->fh[2] << 8 | c->fh[3];
    if (l == 127)
      for (int k = 0; k < 8; k++) len = len << 8 | c->fh[2 + k];
    c->fh_len = 0;
    c->fh_remain = len;
    const char *why = NULL;
    uint16_t code = 1002;
    if (b0 & 0x70)
      why = "reserved bits set";
    else if (!(b1 & 0x80))
      why = "client frames must be masked";
    else if ((op > 2 && op < 8) || op > 10)
      why = "reserved opcode";
    else if (op >= 8 && (len > 125 || !(b0 & 0x80)))
      why = "control frames must be unfragmented and at most 125 bytes";
    else if (op == 8 && len == 1)
      why = "a close frame body is empty or at least 2 bytes";
    else if ((l == 126 && len < 126) || (l == 127 && (len < 65536 || len >> 63)))
      why = "frame length not in its shortest form, or past 2^63";
    else if (len > c->srv->cfg->ws_max_message_bytes)
      why = "message larger than ws_max_message_bytes", code = 1009;
    if (why != NULL) {
      c->read_stopped = 1;
      wslay_event_shutdown_read(c->ctx);
      conn_close(c, code, why);
      return start;
    }
  }
  return n;
}

/* Hands n bytes read from the client to wslay, through the header watch. */
static ssize_t recv_pass(wslay_event_context_ptr ctx, struct sd_ws_conn *c, const uint8_t *buf, size_t n) {
  size_t ok = watch_frames(c, buf, n);
  c->read_budget = n < c->read_budget ? c->read_budget - n : 0;
  if (ok == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  return (ssize_t)ok;
}

static ssize_t on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *user) {
  struct sd_ws_conn *c = user;
  (void)flags;
  if (c->read_stopped || c->read_paused || c->read_budget == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK); /* the rest waits for the next pass */
    return -1;
  }
  if (len > c->read_budget) len = c->read_budget;
  if (c->extra_off < c->extra_len) {
    size_t n = c->extra_len - c->extra_off;
    if (n > len) n = len;
    memcpy(buf, c->extra + c->extra_off, n);
    c->extra_off += n;
    return recv_pass(ctx, c, buf, n);
  }
  for (;;) {
    ssize_t r = recv(c->fd, buf, len, 0);
    if (r > 0) return recv_pass(ctx, c, buf, (size_t)r);
    if (r == 0) {
      wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
      return -1;
    }
    if (errno == EINTR) continue;
    wslay_event_set_error(ctx, errno == EAGAIN || errno == EWOULDBLOCK ? WSLAY_ERR_WOULDBLOCK
                                                                        : WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
}

/* Frames go to c->out; one send() per pass writes them (conn_flush). */
static ssize_t on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *user) {
  struct sd_ws_conn *c = user;
  (void)flags;
  if (c->out.len - c->out_off > c->srv->cfg->ws_window_bytes + OUT_CAP_EXTRA) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  if (sd_buf_append(&c->out, data, len) != 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return (ssize_t)len;
}

/* -1: not an ack.  0: handled; *store_err is set when the ack could not be
 * logged (disk full, I/O error), in which case it settled nothing. */
static int ack_item(struct sd_ws_conn *c, json_t *a, int *store_err) {
  json_t *p = json_object_get(a, "partition"), *o = json_object_get(a, "offset");
  json_t *f = json_object_get(a, "from"), *t = json_object_get(a, "to");
  json_int_t pv = p ? json_integer_value(p) : 0;
  json_int_t lo = json_is_integer(o) ? json_integer_value(o) : json_integer_value(f);
  json_int_t hi = json_is_integer(o) ? json_integer_value(o) : json_integer_value(t);
  uint64_t acked = 0;
  if ((p && !json_is_integer(p)) || !(json_is_integer(o) || (json_is_integer(f) && json_is_integer(t))) || pv < 0 ||
      pv >= (json_int_t)c->nparts || lo < 0 || hi < lo)
    return -1;
  /* The ack wakes the group's waiters, this connection among them; it
   * refills once the frame is handled (conn_update), with inflight right. */
  c->acking = 1;
  int rc = sd_group_ack(c->group, c->consumer, (uint32_t)pv, (uint64_t)lo, (uint64_t)hi, &acked);
  c->acking = 0;
  if (rc == SD_E_INVALID_PARAMETER) return -1;
  if (rc != 0) {
    if (*store_err == 0) *store_err = rc;
    return 0;
  }
  c->inflight = acked >= c->inflight ? 0 : c->inflight - (uint32_t)acked;
  return 0;
}

/* Group consumers send acks; anything else from a client is ignored. */
static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg, void *user) {
  struct sd_ws_conn *c = user;
  (void)ctx;
  if (arg->opcode == WSLAY_PONG) c->awaiting_pong = 0;
  if (arg->opcode == WSLAY_PING && ++c->pings >= PINGS_PER_INTERVAL) c->read_paused = 1;
  if (c->group == NULL || c->closing || (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)) return;
  if (arg->opcode == WSLAY_BINARY_FRAME) {
    conn_close(c, 1007, "acks are text frames");
    return;
  }
  json_t *j = json_loadb((const char *)arg->msg, arg->msg_length, 0, NULL);
  json_t *ack = json_object_get(j, "ack");
  int bad = ack == NULL, store_err = 0;
  if (json_is_array(ack)) {
    size_t i;
    json_t *a;
    json_array_foreach(ack, i, a) bad |= ack_item(c, a, &store_err) != 0;
  } else if (ack) {
    bad = ack_item(c, ack, &store_err) != 0;
  }
  json_decref(j);
  if (bad) {
    conn_close(c, 1007, "expected {\"ack\":{\"partition\":P,\"offset\":O}}");
  } else if (store_err) {
    /* The client has no other way to learn that its ack was not kept. */
    char reason[120];
    snprintf(reason, sizeof(reason), "ack not stored: %s", sd_strerror(store_err));
    conn_close(c, 1011, reason);
  }
}

/* ---- the send path --------------------------------------------------------- */

static size_t queued(struct sd_ws_conn *c) {
  return wslay_event_get_queued_msg_length(c->ctx) + (c->out.len - c->out_off);
}

/* Writes what c->out holds; returns 0, or -1 when the peer is gone. */
static int conn_flush(struct sd_ws_conn *c) {
  int rc = wslay_event_send(c->ctx);
  if (rc != 0 && rc != WSLAY_ERR_WOULDBLOCK) return -1;
  while (c->out_off < c->out.len) {
    ssize_t w = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return -1;
    }
    c->out_off += (size_t)w;
    /* wslay may have more frames now that there is room. */
    if (c->out_off == c->out.len) {
      sd_buf_reset(&c->out);
      c->out_off = 0;
      if (wslay_event_want_write(c->ctx)) {
        rc = wslay_event_send(c->ctx);
        if (rc != 0 && rc != WSLAY_ERR_WOULDBLOCK) return -1;
      }
    }
  }
  if (c->out_off == c->out.len) {
    sd_buf_reset(&c->out);
    c->out_off = 0;
  }
  return 0;
}

/* Appends one unfragmented, unmasked text frame holding a then b to c->out,
 * bypassing wslay's queue: events are the bulk of what a connection sends,
 * and this is one copy from the mapped log, with no allocation.  wslay's own
 * frames (pong, ping, close) land in c->out between whole frames, since
 * on_send takes every byte it is given. */
static int out_text_frame(struct sd_ws_conn *c, const char *a, size_t alen, const char *b, size_t blen) {
  uint8_t hdr[10];
  size_t hlen, len = alen + blen;
  hdr[0] = 0x81; /* FIN, text */
  if (len < 126) {
    hdr[1] = (uint8_t)len;
    hlen = 2;
  } else if (len <= 0xffff) {
    hdr[1] = 126;
    hdr[2] = (uint8_t)(len >> 8);
    hdr[3] = (uint8_t)len;
    hlen = 4;
  } else {
    hdr[1] = 127;
    for (int i = 0; i < 8; i++) hdr[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    hlen = 10;
  }
  if (c->out_off > 0 && c->out_off >= c->out.len / 2) {
    /* The sent half goes, so c->out stays within twice what is unsent. */
    memmove(c->out.data, c->out.data + c->out_off, c->out.len - c->out_off);
    c->out.len -= c->out_off;
    c->out_off = 0;
  }
  if (sd_buf_reserve(&c->out, hlen + len) != 0) return -1;
  sd_buf_append(&c->out, hdr, hlen);
  sd_buf_append(&c->out, a, alen);
  if (blen) sd_buf_append(&c->out, b, blen);
  return 0;
}

static int queue_record(void *arg, const struct sd_record *rec) {
  struct sd_ws_conn *c = arg;
  if (out_text_frame(c, rec->json, rec->json_len, NULL, 0) != 0) return 1;
  c->next[rec->partition] = rec->offset + 1;
  return 0;
}

static void on_wake(struct sd_waiter *w, int status);

static int queue_group_record(void *arg, const struct sd_record *rec, uint32_t deliveries) {
  struct sd_ws_conn *c = arg;
  char tail[40];
  int n = snprintf(tail, sizeof(tail), ",\"deliveries\":%u}", deliveries);
  /* The event as stored without its closing brace, then the count. */
  if (out_text_frame(c, rec->json, rec->json_len - 1, tail, (size_t)n) != 0) return 1;
  c->inflight++;
  c->srv->events[1]++;
  sd_stream_count_consumed(c->stream, 1); /* like a group consume over HTTP */
  return 0;
}

/* Group consumers: fetch from the group while prefetch and window allow. */
static void group_refill(struct sd_ws_conn *c) {
  const struct sd_config *cfg = c->srv->cfg;
  if (sd_group_deleted(c->group)) {
    conn_close(c, 4404, sd_stream_deleted(c->stream) ? "stream deleted" : "group deleted");
    return;
  }
  for (;;) {
    size_t q = queued(c);
    if (q >= cfg->ws_window_bytes) return;
    if (c->inflight >= c->prefetch) {
      /* Events may have been settled elsewhere (timed out, acked over HTTP). */
      c->inflight = sd_group_pending_of(c->group, c->consumer);
      if (c->inflight >= c->prefetch) {
        if (!sd_list_linked(&c->waiter.node)) sd_group_wait(c->group, &c->waiter);
        return;
      }
    }
    int n = sd_group_fetch(c->group, c->consumer, c->prefetch - c->inflight, cfg->ws_window_bytes - q,
                           queue_group_record, c);
    if (n < 0) {
      char reason[120];
      snprintf(reason, sizeof(reason), "read failed: %s", sd_strerror(n));
      conn_close_after_queue(c, 1011, n == SD_E_CORRUPT ? "the next stored record is damaged" : reason);
      return;
    }
    if (n == 0) {
      if (!sd_list_linked(&c->waiter.node)) sd_group_wait(c->group, &c->waiter);
      return;
    }
  }
}

/* Reads from the cursors into wslay's queue until the window is full or
 * the log is exhausted; then waits for new records. */
static void conn_refill(struct sd_ws_conn *c) {
  const struct sd_config *cfg = c->srv->cfg;
  uint32_t first = c->partition >= 0 ? (uint32_t)c->partition : 0;
  uint32_t count = c->partition >= 0 ? 1 : c->nparts;
  /* Nothing may follow a close frame, even one wslay sent on its own. */
  if (c->closing || c->dead || wslay_event_get_close_sent(c->ctx)) return;
  if (c->end_code) {
    /* Stopping: nothing more is read; close once the queue is sent. */
    if (queued(c) == 0) conn_close(c, c->end_code, c->end_reason);
    return;
  }
  if (c->group) {
    group_refill(c);
    return;
  }
  if (sd_stream_deleted(c->stream)) {
    conn_close(c, 4404, "stream deleted");
    return;
  }
  for (;;) {
    size_t q = queued(c);
    if (q >= cfg->ws_window_bytes) return; /* resumes when the socket drains */
    int progressed = 0;
    for (uint32_t k = 0; k < count; k++) {
      uint32_t p = first + (c->rr + k) % count;
      struct sd_partition_stat ps;
      sd_stream_partition_stat(c->stream, p, &ps);
      if (c->next[p] >= ps.next_offset) continue;
      if (c->next[p] < ps.min_offset) {
        conn_close_after_queue(c, 4416, "fell behind retention: the next event was removed");
        return;
      }
      uint64_t before = c->next[p];
      int n = sd_stream_read(c->stream, p, c->next[p], READ_BATCH, cfg->ws_window_bytes - q, queue_record, c);
      if (n < 0) {
        conn_close_after_queue(c, 1011, n == SD_E_CORRUPT ? "the next stored record is damaged" : "read failed");
        return;
      }
      if (c->next[p] > before) {
        progressed = 1;
        sd_stream_consumer_seen(c->stream, c->consumer, p, c->next[p] - 1, sd_now_ms());
        sd_stream_count_consumed(c->stream, c->next[p] - before);
        c->srv->events[0] += c->next[p] - before;
      }
      q = queued(c);
      if (q >= cfg->ws_window_bytes) break;
    }
    c->rr++;
    if (!progressed) {
      if (!sd_list_linked(&c->waiter.node)) sd_stream_wait(c->stream, &c->waiter);
      return;
    }
  }
}

static void on_wake(struct sd_waiter *w, int status) {
  struct sd_ws_conn *c = w->data;
  if (status == 0 && c->acking) return; /* conn_update follows the ack */
  if (status == SD_E_STREAM_DELETED) {
    conn_close(c, 4404, "stream deleted");
  } else if (status == SD_E_GROUP_NOT_FOUND) {
    conn_close(c, 4404, "group deleted");
  } else if (status != 0) {
    conn_close(c, 1001, "server shutting down");
  } else {
    conn_refill(c);
  }
  conn_update(c);
}

/* ---- poll and life cycle -------------------------------------------------- */

static void on_poll(uv_poll_t *h, int status, int events) {
  struct sd_ws_conn *c = h->data;
  if (status < 0) {
    conn_destroy(c);
    return;
  }
  if (events & UV_READABLE) {
    c->read_budget = READ_BUDGET;
    int rc = wslay_event_recv(c->ctx);
    if (rc != 0) {
      conn_destroy(c);
      return;
    }
  }
  conn_update(c);
}

/* After any activity: fill, flush, and watch what is needed, or end. */
static void conn_update(struct sd_ws_conn *c) {
  if (c->dead) return;
  if (!c->closing && wslay_event_get_close_received(c->ctx) && !wslay_event_get_close_sent(c->ctx))
    c->closing = 1; /* wslay queued the reply close */
  /* Fill and write until the socket pushes back or the log is exhausted
   * (then a waiter is registered, or the connection is closing). */
  for (;;) {
    conn_refill(c);
    if (conn_flush(c) != 0) {
      conn_destroy(c);
      return;
    }
    int blocked = c->out_off < c->out.len || wslay_event_want_write(c->ctx);
    if (blocked || c->closing || sd_list_linked(&c->waiter.node)) break;
  }
  int pending = c->out_off < c->out.len || wslay_event_want_write(c->ctx);
  if (c->closing && !pending && wslay_event_get_close_sent(c->ctx)) {
    conn_destroy(c);
    return;
  }
  if (!wslay_event_want_read(c->ctx) && !pending) {
    conn_destroy(c);
    return;
  }
  /* Window refills when the socket drains: watch writability while frames wait. */
  int ev = (wslay_event_want_read(c->ctx) && !c->read_paused ? UV_READABLE : 0) | (pending ? UV_WRITABLE : 0);
  if (ev != c->poll_events) {
    c->poll_events = ev;
    uv_poll_start(&c->poll, ev, on_poll);
  }
}

static void conn_close(struct sd_ws_conn *c, uint16_t code, const char *reason) {
  if (c->closing || c->dead) return;
  c->closing = 1;
  sd_stream_wait_cancel(&c->waiter);
  wslay_event_queue_close(c->ctx, code, (const uint8_t *)reason, strlen(reason));
}

/* Ends a subscription that cannot go on (damage, retention) after the events
 * already queued are sent: they were read in order before the reason to
 * stop, so the subscriber gets every event it could be given, then the
 * close.  Control frames jump wslay's queue, so the close waits here. */
static void conn_close_after_queue(struct sd_ws_conn *c, uint16_t code, const char *reason) {
  if (c->closing || c->dead) return;
  if (queued(c) == 0) {
    conn_close(c, code, reason);
    return;
  }
  if (c->end_code == 0) {
    c->end_code = code;
    snprintf(c->end_reason, sizeof(c->end_reason), "%s", reason);
    sd_stream_wait_cancel(&c->waiter);
  }
}

static void conn_free(struct sd_ws_conn *c) {
  if (c->ctx) wslay_event_context_free(c->ctx);
  sd_buf_free(&c->out);
  free(c->extra);
  free(c->next);
  if (c->group) sd_group_unref(c->group);
  if (c->stream) sd_stream_unref(c->stream);
  free(c);
}

static void poll_closed(uv_handle_t *h) {
  struct sd_ws_conn *c = h->data;
  struct sd_ws_server *srv = c->srv;
  /* With TLS, MHD closes the TCP connection only once both directions of
   * its relay have ended; the client-to-server one ends when a read sees
   * EOF, which a client waiting for our close never sends.  Shutting the
   * receiving side makes that read happen now; what we sent still goes out. */
  if (c->tls_fd >= 0) shutdown(c->tls_fd, SHUT_RD);
  MHD_upgrade_action(c->urh, MHD_UPGRADE_ACTION_CLOSE);
  if (srv->kick && !srv->freeing) srv->kick(srv->kick_arg);
  conn_free(c);
}

static void conn_destroy(struct sd_ws_conn *c) {
  if (c->dead) return;
  c->dead = 1;
  sd_stream_wait_cancel(&c->waiter);
  sd_list_remove(&c->node);
  c->srv->count--;
  sd_stream_subscribers_add(c->stream, -1);
  if (c->group && !sd_group_deleted(c->group)) sd_group_attach(c->group, c->consumer, -1);
  uv_poll_stop(&c->poll);
  uv_close((uv_handle_t *)&c->poll, poll_closed);
}

struct sd_ws_conn *sd_ws_conn_new(struct sd_ws_server *srv, struct sd_stream *s, int32_t partition,
                                  const uint64_t *starts, const char *consumer) {
  static const struct wslay_event_callbacks cbs = {on_recv, on_send, NULL, NULL, NULL, NULL, on_msg};
  struct sd_ws_conn *c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  c->srv = srv;
  c->fd = -1;
  c->tls_fd = -1;
  c->partition = partition;
  c->nparts = sd_stream_config(s)->partitions;
  c->next = malloc(c->nparts * sizeof(*c->next));
  if (c->next == NULL || wslay_event_context_server_init(&c->ctx, &cbs, c) != 0) {
    conn_free(c);
    return NULL;
  }
  wslay_event_config_set_max_recv_msg_length(c->ctx, srv->cfg->ws_max_message_bytes);
  memcpy(c->next, starts, c->nparts * sizeof(*c->next));
  snprintf(c->consumer, sizeof(c->consumer), "%s", consumer);
  sd_list_init(&c->node);
  c->waiter.cb = on_wake;
  c->waiter.data = c;
  sd_stream_ref(s);
  c->stream = s;
  return c;
}

struct sd_ws_conn *sd_ws_conn_new_group(struct sd_ws_server *srv, struct sd_group *g, const char *consumer,
                                        uint32_t prefetch) {
  struct sd_stream *s = sd_group_stream(g);
  uint64_t *starts = calloc(sd_stream_config(s)->partitions, sizeof(*starts));
  if (starts == NULL) return NULL;
  struct sd_ws_conn *c = sd_ws_conn_new(srv, s, -1, starts, consumer);
  free(starts);
  if (c == NULL) return NULL;
  sd_group_ref(g);
  c->group = g;
  c->prefetch = prefetch;
  sd_group_touch(g, consumer);
  return c;
}

void sd_ws_conn_discard(struct sd_ws_conn *c) {
  if (c != NULL && !c->upgraded) conn_free(c);
}

void sd_ws_upgraded(void *cls, struct MHD_Connection *connection, void *con_cls, const char *extra_in,
                    size_t extra_in_size, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh) {
  struct sd_ws_conn *c = cls;
  struct sd_ws_server *srv = c->srv;
  (void)con_cls;
  c->upgraded = 1;
  c->fd = sock;
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (ci != NULL && ci->connect_fd != sock) c->tls_fd = ci->connect_fd;
  c->urh = urh;
  /* libmicrohttpd leaves the socket with Nagle on after the upgrade; frames
   * are already gathered per pass, so each send should leave at once. */
  int one = 1;
  setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (extra_in_size > 0) {
    c->extra = malloc(extra_in_size);
    if (c->extra) {
      memcpy(c->extra, extra_in, extra_in_size);
      c->extra_len = extra_in_size;
    }
  }
  uv_poll_init_socket(srv->loop, &c->poll, sock);
  c->poll.data = c;
  sd_list_push_back(&srv->conns, &c->node);
  srv->count++;
  sd_stream_subscribers_add(c->stream, 1);
  if (c->group) sd_group_attach(c->group, c->consumer, 1);
  if (srv->closing) conn_close(c, 1001, "server shutting down");
  if (c->extra_len) {
    c->read_budget = READ_BUDGET;
    if (wslay_event_recv(c->ctx) != 0) {
      conn_destroy(c);
      return;
    }
  }
  conn_update(c);
}

/* ---- the server ------------------------------------------------------------- */

/* Every interval: a peer that did not answer the last ping is dropped, the
 * others get a new one; connections stuck closing are ended. */
static void on_ping(uv_timer_t *t) {
  struct sd_ws_server *srv = t->data;
  struct sd_list *n = srv->conns.next;
  while (n != &srv->conns) {
    struct sd_ws_conn *c = SD_CONTAINER_OF(n, struct sd_ws_conn, node);
    n = n->next;
    if (c->closing) {
      if (++c->close_ticks >= 2) conn_destroy(c);
      continue;
    }
    if (c->awaiting_pong) {
      SD_DEBUG("ws: subscriber %s did not answer a ping; dropped", c->consumer);
      conn_destroy(c);
      continue;
    }
    if (c->group) sd_group_touch(c->group, c->consumer); /* connected: alive */
    c->pings = 0;
    c->read_paused = 0;
    struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"", 0};
    wslay_event_queue_msg(c->ctx, &m);
    c->awaiting_pong = 1;
    conn_update(c);
  }
}

int sd_ws_server_new(uv_loop_t *loop, const struct sd_config *cfg, void (*kick)(void *), void *arg,
                     struct sd_ws_server **out) {
  struct sd_ws_server *srv = calloc(1, sizeof(*srv));
  if (srv == NULL) return -ENOMEM;
  srv->loop = loop;
  srv->cfg = cfg;
  srv->kick = kick;
  srv->kick_arg = arg;
  sd_list_init(&srv->conns);
  uv_timer_init(loop, &srv->ping);
  srv->ping.data = srv;
  uint64_t ms = (uint64_t)cfg->ws_ping_interval_ms;
  uv_timer_start(&srv->ping, on_ping, ms, ms);
  uv_unref((uv_handle_t *)&srv->ping);
  *out = srv;
  return 0;
}

size_t sd_ws_server_count(const struct sd_ws_server *srv) { return srv->count; }
void sd_ws_server_events(const struct sd_ws_server *srv, uint64_t out[2]) {
  out[0] = srv->events[0];
  out[1] = srv->events[1];
}

void sd_ws_server_shutdown(struct sd_ws_server *srv) {
  srv->closing = 1;
  struct sd_list *n = srv->conns.next;
  while (n != &srv->conns) {
    struct sd_ws_conn *c = SD_CONTAINER_OF(n, struct sd_ws_conn, node);
    n = n->next;
    conn_close(c, 1001, "server shutting down");
    conn_update(c);
  }
}

static void ping_closed(uv_handle_t *h) {
  struct sd_ws_server *srv = h->data;
  free(srv);
}

void sd_ws_server_free(struct sd_ws_server *srv) {
  sd_ws_server_shutdown(srv);
  while (!sd_list_empty(&srv->conns)) conn_destroy(SD_CONTAINER_OF(srv->conns.next, struct sd_ws_conn, node));
  /* The poll handles close on the next pass; MHD gets the sockets back then. */
  uv_run(srv->loop, UV_RUN_NOWAIT);
  srv->freeing = 1;
  uv_close((uv_handle_t *)&srv->ping, ping_closed);
}
