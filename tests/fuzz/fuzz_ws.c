/*
 * fuzz_ws.c - the client->server bytes of a WebSocket connection: frames
 * parsed by wslay and handled by ws.c (acks of group consumers, pings and
 * pongs, close, fragments, oversized and malformed frames).
 *
 * Input: one mode byte, then the bytes the client sends once upgraded.
 * Mode bit 0 picks a group consumer (group g: shared, explicit acks; or
 * group gp: partitioned, auto acks) or a plain subscriber; bits 2-3 pick
 * one of four routes and query strings of that kind (see routes[]); bit 1
 * sends the handshake and the frames in one write, so that the server
 * gets them as the bytes read past the handshake (MHD's extra_in), else
 * the frames follow once the server has read the handshake.
 *
 * The connection runs through the real server over a socketpair until the
 * server closes it after the client's EOF.  Checks: the upgrade is
 * answered 101, and what the server sends after it is a sequence of
 * well-formed unmasked frames: text frames holding JSON objects, control
 * frames of at most 125 bytes, a close frame's payload empty or a code.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_server.h"

static void fail(const char *what, const char *p, size_t n) {
  fprintf(stderr, "fuzz_ws: %s: %.*s\n", what, (int)(n < 300 ? n : 300), p);
  abort();
}

/* Checks the server's frames in [p, end); the last may be cut short. */
static void check_frames(const unsigned char *p, const unsigned char *end) {
  while (p < end) {
    if (end - p < 2) return;
    int op = p[0] & 0x0f;
    if (p[0] & 0x70) fail("reserved bits set", "", 0);
    if (p[1] & 0x80) fail("a server frame is masked", "", 0);
    uint64_t len = p[1] & 0x7f;
    const unsigned char *d = p + 2;
    if (len == 126) {
      if (end - d < 2) return;
      len = ((uint64_t)d[0] << 8) | d[1];
      d += 2;
    } else if (len == 127) {
      if (end - d < 8) return;
      len = 0;
      for (int i = 0; i < 8; i++) len = (len << 8) | d[i];
      d += 8;
    }
    if ((uint64_t)(end - d) < len) return; /* cut short by the close */
    if (op >= 8) {
      if (len > 125 || !(p[0] & 0x80)) fail("a malformed control frame", "", 0);
      if (op == 8 && len == 1) fail("a close frame with a 1-byte payload", "", 0);
    } else if (op == 1 && (p[0] & 0x80)) {
      json_t *j = json_loadb((const char *)d, (size_t)len, 0, NULL);
      if (!json_is_object(j)) fail("a text frame that is not a JSON object", (const char *)d, (size_t)len);
      json_decref(j);
    } else if (op != 0 && op != 1 && op != 2) {
      fail("an unknown opcode", "", 0);
    }
    p = d + len;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static struct sd_buf req, resp;
  static unsigned runs;
  struct fz_server *sv = fz_server();
  if (size < 1) return 0;
  if (++runs % 32 == 0) {
    /* Keep the group supplied with events to deliver and ack. */
    static const char pub[] =
        "POST /stream/fz/publish HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\nContent-Length: 54\r\n\r\n"
        "[{\"event\":\"a\",\"data\":1},{\"event\":\"b\",\"data\":[2]}]    ";
    fz_exchange(sv, pub, sizeof(pub) - 1, &resp);
  }
  if (runs % 1024 == 0) fz_server_reset(sv);
  static const char *const routes[2][4] = {
      {"/stream/fz/ws/c1?from_offset=0", "/stream/fz/ws/c1?from_offset=-2&partition=1", "/stream/fz/ws/c2",
       "/stream/fz/ws/c3?partition=0&from_offset=1"},
      {"/stream/fz/group/g/ws/c1?prefetch=2", "/stream/fz/group/g/ws/c2?prefetch=1",
       "/stream/fz/group/g/ws/c1?prefetch=100", "/stream/fz/group/gp/ws/c3"}};
  int group = data[0] & 1, together = data[0] & 2, variant = (data[0] >> 2) & 3;
  sd_buf_reset(&req);
  if (sd_buf_printf(&req,
                    "GET %s HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                    routes[group][variant]) != 0)
    abort();
  size_t hs = req.len;
  if (sd_buf_append(&req, data + 1, size - 1) != 0) abort();
  fz_exchange_split(sv, req.data, req.len, together ? req.len : hs, &resp);
  if (resp.len < 12 || memcmp(resp.data, "HTTP/1.1 101", 12) != 0) fail("the upgrade was refused", resp.data, resp.len);
  const char *body = memmem(resp.data, resp.len, "\r\n\r\n", 4);
  if (body == NULL) fail("no end of the 101 headers", resp.data, resp.len);
  check_frames((const unsigned char *)body + 4, (const unsigned char *)resp.data + resp.len);
  return 0;
}
