/*
 * groupbench.c - consumer-group consume + ack benchmark client for streamd
 * (bench/run.sh groups).
 *
 *   groupbench -p PORT -e EXPECTED [-o EVENTS] [-s STREAM] [-g GROUP] [-n CONSUMERS] [-l LIMIT] ...
 *
 * CONSUMERS keep-alive connections (minimal HTTP/1.1, bench/httpmini.h), one
 * per consumer cK (K = 1..CONSUMERS), each looping on
 *   GET /stream/STREAM/group/GROUP/consume?consumer=cK&limit=LIMIT
 *   POST /stream/STREAM/group/GROUP/ack   (Content-Type: application/json)
 *        {"consumer":"cK","acks":[{"partition":P,"from":A,"to":B},...]}
 * with one range per partition present in the batch (one per contiguous run
 * of offsets, should a partition's offsets in a batch not be contiguous:
 * counted in "ranges"). The group must exist with ack: explicit. Until the
 * acks' "acked" add up to EXPECTED; prints one BENCH_GROUP line
 * (groupcommon.h).
 *
 * Build: gcc -O2 -o groupbench bench/groupbench.c -luv
 */
#include "groupcommon.h"
#include "httpmini.h" /* write_copy, http_response */

enum { C_CONNECTING, C_FETCH, C_ACK, C_DONE };

struct ev {
  uint64_t partition, offset;
};

struct conn {
  uv_tcp_t tcp;
  uv_connect_t creq;
  int k, state, next, reconnect; /* next: the request to send (C_FETCH, C_ACK) */
  uint64_t fetch_sent_us, asked;
  uint64_t nranges;
  char *buf; /* response bytes so far */
  size_t len, cap;
  struct ev *evs; /* the batch being acked */
  size_t nevs;
  char *req; /* request being built */
  size_t req_cap;
};

static struct conn *conns;
static struct sockaddr_in addr;
static char rbuf[256 * 1024]; /* shared: every read is consumed in its callback */

static void alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)h;
  (void)sz;
  b->base = rbuf;
  b->len = sizeof(rbuf);
}

static void finish(void) { grp_finish("streamd"); }

static void conn_connect(struct conn *c);
static void send_fetch(struct conn *c);

static void conn_fail(struct conn *c, const char *why) {
  grp_set_err("consumer c%d: %s", c->k + 1, why);
  c->state = C_DONE;
  G.c[c->k].done = 1;
  finish(); /* one broken consumer spoils the figure: stop */
}

/* ---------------------------------------------------------------- JSON
 * A small scanner for the consume answer: a top-level array of objects, of
 * which only the numeric members "partition", "offset" and "deliveries" at
 * depth 1 are read; any other value is skipped (strings with escapes,
 * nested objects and arrays). */
static const char *skip_ws(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
  return p;
}

static const char *skip_string(const char *p, const char *e) { /* p at the opening quote */
  for (p++; p < e; p++) {
    if (*p == '\\') p++;
    else if (*p == '"') return p + 1;
  }
  return NULL;
}

static const char *skip_value(const char *p, const char *e) {
  p = skip_ws(p, e);
  if (p >= e) return NULL;
  if (*p == '"') return skip_string(p, e);
  if (*p == '{' || *p == '[') {
    int depth = 0;
    while (p < e) {
      if (*p == '"') {
        if ((p = skip_string(p, e)) == NULL) return NULL;
        continue;
      }
      if (*p == '{' || *p == '[') depth++;
      else if (*p == '}' || *p == ']') {
        if (--depth == 0) return p + 1;
      }
      p++;
    }
    return NULL;
  }
  while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n') p++;
  return p;
}

/* Appends the batch's events to c->evs; -1 if malformed. */
static int parse_batch(struct conn *c, const char *p, size_t n) {
  const char *e = p + n;
  c->nevs = 0;
  p = skip_ws(p, e);
  if (p >= e || *p != '[') return -1;
  p = skip_ws(p + 1, e);
  if (p < e && *p == ']') return 0;
  for (;;) {
    p = skip_ws(p, e);
    if (p >= e || *p != '{') return -1;
    p++;
    int64_t part = -1, off = -1, dlv = 0;
    for (;;) {
      p = skip_ws(p, e);
      if (p < e && *p == '}') {
        p++;
        break;
      }
      if (p >= e || *p != '"') return -1;
      const char *k = p + 1, *ke = skip_string(p, e);
      if (ke == NULL) return -1;
      size_t kl = (size_t)(ke - 1 - k);
      p = skip_ws(ke, e);
      if (p >= e || *p != ':') return -1;
      p = skip_ws(p + 1, e);
      int64_t *dst = NULL;
      if (kl == 9 && memcmp(k, "partition", 9) == 0) dst = &part;
      else if (kl == 6 && memcmp(k, "offset", 6) == 0) dst = &off;
      else if (kl == 10 && memcmp(k, "deliveries", 10) == 0) dst = &dlv;
      if (dst != NULL) {
        if (p >= e || *p < '0' || *p > '9') return -1;
        int64_t v = 0;
        while (p < e && *p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
        *dst = v;
      } else if ((p = skip_value(p, e)) == NULL) {
        return -1;
      }
      p = skip_ws(p, e);
      if (p < e && *p == ',') p++;
    }
    if (part < 0 || off < 0) return -1;
    grp_delivered(c->k, (uint64_t)part, (uint64_t)off, (uint64_t)dlv);
    if (c->nevs == (size_t)G.o.limit * 2) return -1; /* more than asked for */
    c->evs[c->nevs].partition = (uint64_t)part;
    c->evs[c->nevs].offset = (uint64_t)off;
    c->nevs++;
    p = skip_ws(p, e);
    if (p < e && *p == ',') {
      p++;
      continue;
    }
    if (p < e && *p == ']') return 0;
    return -1;
  }
}

static int ev_cmp(const void *a, const void *b) {
  const struct ev *x = a, *y = b;
  if (x->partition != y->partition) return x->partition < y->partition ? -1 : 1;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* ---------------------------------------------------------------- requests */
static void req_reserve(struct conn *c, size_t n) {
  if (c->req_cap >= n) return;
  c->req_cap = n * 2;
  c->req = realloc(c->req, c->req_cap);
  if (c->req == NULL) bench_die("out of memory");
}

static void send_req(struct conn *c, size_t n) {
  int rc = write_copy((uv_stream_t *)&c->tcp, c->req, n);
  if (rc != 0) conn_fail(c, uv_strerror(rc));
}

static void send_fetch(struct conn *c) {
  req_reserve(c, 1024);
  int n = snprintf(c->req, c->req_cap,
                   "GET /stream/%s/group/%s/consume?consumer=c%d&limit=%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n",
                   G.o.stream, G.o.group, c->k + 1, G.o.limit, G.o.host, G.o.port);
  c->state = C_FETCH;
  grp_fetch_sent(c->k);
  c->fetch_sent_us = mono_us();
  send_req(c, (size_t)n);
}

/* One range per contiguous run of offsets of a partition (sorted batch). */
static void send_ack(struct conn *c) {
  qsort(c->evs, c->nevs, sizeof(*c->evs), ev_cmp);
  char body_head[300];
  int hl = snprintf(body_head, sizeof(body_head), "{\"consumer\":\"c%d\",\"acks\":[", c->k + 1);
  size_t cap = 1024 + (size_t)hl + c->nevs * 80;
  req_reserve(c, cap);
  /* the body first, after room for the header; then the header in front */
  size_t room = 512, bl = 0;
  char *body = c->req + room;
  memcpy(body, body_head, (size_t)hl);
  bl = (size_t)hl;
  c->nranges = 0;
  for (size_t i = 0; i < c->nevs;) {
    size_t j = i;
    while (j + 1 < c->nevs && c->evs[j + 1].partition == c->evs[i].partition &&
           c->evs[j + 1].offset == c->evs[j].offset + 1)
      j++;
    bl += (size_t)snprintf(body + bl, cap - room - bl, "%s{\"partition\":%" PRIu64 ",\"from\":%" PRIu64 ",\"to\":%" PRIu64 "}",
                           c->nranges ? "," : "", c->evs[i].partition, c->evs[i].offset, c->evs[j].offset);
    c->nranges++;
    i = j + 1;
  }
  body[bl++] = ']';
  body[bl++] = '}';
  char head[512];
  int hn = snprintf(head, sizeof(head),
                    "POST /stream/%s/group/%s/ack HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                    "Content-Length: %zu\r\n\r\n",
                    G.o.stream, G.o.group, G.o.host, G.o.port, bl);
  if (hn <= 0 || (size_t)hn > room) bench_die("request header too long");
  char *start = body - hn;
  memcpy(start, head, (size_t)hn);
  c->asked = c->nevs;
  c->state = C_ACK;
  int rc = write_copy((uv_stream_t *)&c->tcp, start, (size_t)hn + bl);
  if (rc != 0) conn_fail(c, uv_strerror(rc));
}

/* ---------------------------------------------------------------- responses */
static void on_response(struct conn *c, const struct http_resp *r) {
  if (c->state == C_FETCH) {
    if (r->status != 200) {
      char why[200];
      snprintf(why, sizeof(why), "consume: HTTP %d %.*s", r->status, (int)(r->body_len > 120 ? 120 : r->body_len),
               r->body);
      conn_fail(c, why);
      return;
    }
    if (parse_batch(c, r->body, r->body_len) != 0) {
      char why[200];
      snprintf(why, sizeof(why), "consume: unexpected answer %.*s", (int)(r->body_len > 120 ? 120 : r->body_len),
               r->body);
      conn_fail(c, why);
      return;
    }
    if (c->nevs == 0) {
      grp_empty(c->k);
      c->state = C_DONE;
      if (grp_over()) finish();
      return;
    }
    c->next = C_ACK;
  } else if (c->state == C_ACK) {
    const char *a = r->status == 200 ? memmem(r->body, r->body_len, "\"acked\":", 8) : NULL;
    if (a == NULL) {
      char why[200];
      snprintf(why, sizeof(why), "ack: HTTP %d %.*s", r->status, (int)(r->body_len > 120 ? 120 : r->body_len),
               r->body);
      conn_fail(c, why);
      return;
    }
    uint64_t settled = strtoull(a + 8, NULL, 10);
    grp_acked(c->k, c->asked, settled, c->nranges, c->fetch_sent_us);
    if (grp_over()) {
      finish();
      return;
    }
    c->next = C_FETCH;
  } else {
    conn_fail(c, "answer without a request");
  }
}

static void send_next(struct conn *c) {
  if (c->next == C_ACK) send_ack(c);
  else send_fetch(c);
}

static void conn_closed(uv_handle_t *h) {
  struct conn *c = h->data;
  if (c->reconnect && c->state != C_DONE) conn_connect(c);
}

static void conn_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b) {
  struct conn *c = st->data;
  if (nread == 0 || c->state == C_DONE) return;
  if (nread < 0) {
    conn_fail(c, nread == UV_EOF ? "connection closed by the server" : uv_strerror((int)nread));
    return;
  }
  if (c->len + (size_t)nread > c->cap) {
    c->cap = (c->len + (size_t)nread) * 2;
    c->buf = realloc(c->buf, c->cap);
    if (c->buf == NULL) bench_die("out of memory");
  }
  memcpy(c->buf + c->len, b->base, (size_t)nread);
  c->len += (size_t)nread;
  struct http_resp r;
  int fr = http_response(c->buf, c->len, &r);
  if (fr == 0) return;
  if (fr < 0) {
    conn_fail(c, "response without Content-Length");
    return;
  }
  if (r.total != c->len) {
    conn_fail(c, "bytes after the response (one request in flight)");
    return;
  }
  on_response(c, &r);
  c->len = 0;
  if (c->state == C_DONE) return;
  if (r.close) { /* the server ends this keep-alive connection: the next request on a new one */
    c->reconnect = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
    return;
  }
  send_next(c);
}

static void conn_connected(uv_connect_t *req, int status) {
  struct conn *c = req->data;
  if (status < 0) {
    char why[160];
    snprintf(why, sizeof(why), "connect to %s:%d: %s", G.o.host, G.o.port, uv_strerror(status));
    conn_fail(c, why);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, conn_read) != 0) bench_die("uv_read_start");
  c->reconnect = 0;
  c->len = 0;
  send_next(c);
}

static void conn_connect(struct conn *c) {
  uv_tcp_init(G.loop, &c->tcp);
  c->tcp.data = c;
  c->creq.data = c;
  int rc = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&addr, conn_connected);
  if (rc != 0) bench_die("connect: %s", uv_strerror(rc));
}

int main(int argc, char **argv) {
  grp_init(argc, argv, "groupbench");
  if (uv_ip4_addr(G.o.host, G.o.port, &addr) != 0) bench_die("bad host %s", G.o.host);
  conns = calloc((size_t)G.o.consumers, sizeof(*conns));
  if (conns == NULL) bench_die("out of memory");
  grp_start_cap("streamd");
  for (int k = 0; k < G.o.consumers; k++) {
    struct conn *c = &conns[k];
    c->k = k;
    c->state = C_CONNECTING;
    c->next = C_FETCH;
    c->evs = malloc(sizeof(*c->evs) * (size_t)G.o.limit * 2);
    if (c->evs == NULL) bench_die("out of memory");
    conn_connect(c);
  }
  bench_log("%d consumers of %s/%s, limit %d, until %" PRIu64 " acked", G.o.consumers, G.o.stream, G.o.group,
            G.o.limit, G.o.expected);
  uv_run(G.loop, UV_RUN_DEFAULT);
  finish();
  return 0;
}
