/*
 * httpmini.h - the minimal HTTP/1.1 keep-alive client pieces that the C
 * benchmark clients share (bench/wsfan.c publisher, bench/groupbench.c):
 * writes that never wait for a callback, a header lookup, and the framing of
 * one response (Content-Length bodies only, which is what streamd sends).
 * Requests are written by the callers by hand, one in flight per connection.
 * All static inline: a client that does not use a piece gets no warning.
 */
#ifndef HTTPMINI_H
#define HTTPMINI_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

/* ---------------------------------------------------------------- writes */
struct http_wr {
  uv_write_t w;
  char data[];
};
static inline void http_wr_done(uv_write_t *w, int status) {
  (void)status;
  free(w);
}
/* Writes len bytes now if the socket takes them, else queues a copy (not one
 * uv_write_t per connection: the answer can be read before the callback of
 * the write that asked for it has run). 0 or a libuv error. */
static inline int write_copy(uv_stream_t *s, const void *data, size_t len) {
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  int n = uv_try_write(s, &b, 1);
  if (n == (int)len) return 0;
  if (n < 0 && n != UV_EAGAIN) return n;
  if (n < 0) n = 0;
  struct http_wr *w = malloc(sizeof(*w) + len - (size_t)n);
  if (w == NULL) return UV_ENOMEM;
  memcpy(w->data, (const char *)data + n, len - (size_t)n);
  b = uv_buf_init(w->data, (unsigned)(len - (size_t)n));
  int rc = uv_write(&w->w, s, &b, 1, http_wr_done);
  if (rc != 0) free(w);
  return rc;
}

/* ---------------------------------------------------------------- parsing */
/* The value of header `name` (case-insensitive) in buf[0..len), trimmed;
 * NULL if absent. */
static inline const char *find_header(const char *buf, size_t len, const char *name, size_t *vlen) {
  size_t nl = strlen(name);
  const char *end = buf + len;
  for (const char *p = buf; p + nl + 3 < end; p++) {
    p = memchr(p, '\n', (size_t)(end - p));
    if (p == NULL || p + nl + 2 >= end) return NULL;
    if (strncasecmp(p + 1, name, nl) == 0 && p[1 + nl] == ':') {
      const char *v = p + 2 + nl, *e;
      while (v < end && (*v == ' ' || *v == '\t')) v++;
      for (e = v; e < end && *e != '\r' && *e != '\n'; e++) {
      }
      while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
      *vlen = (size_t)(e - v);
      return v;
    }
  }
  return NULL;
}

struct http_resp {
  int status;       /* 200, ... (0 if the status line is not HTTP/1.x NNN) */
  const char *body; /* inside the buffer */
  size_t body_len;
  size_t total;     /* header + body bytes: what to drop from the buffer */
  int close;        /* Connection: close */
};

/* Frames the response at the start of buf[0..len).
 * 1: complete, r filled; 0: incomplete, read more; -1: a header without
 * Content-Length (not supported). */
static inline int http_response(const char *buf, size_t len, struct http_resp *r) {
  const char *end = memmem(buf, len, "\r\n\r\n", 4);
  if (end == NULL) return 0;
  size_t hlen = (size_t)(end - buf) + 4, vl;
  r->status = (len > 12 && memcmp(buf, "HTTP/1.", 7) == 0) ? atoi(buf + 9) : 0;
  const char *v = find_header(buf, hlen, "Content-Length", &vl);
  if (v == NULL) return -1;
  size_t clen = (size_t)strtoul(v, NULL, 10);
  if (len < hlen + clen) return 0;
  r->body = buf + hlen;
  r->body_len = clen;
  r->total = hlen + clen;
  r->close = (v = find_header(buf, hlen, "Connection", &vl)) != NULL && vl == 5 && strncasecmp(v, "close", 5) == 0;
  return 1;
}

#endif
