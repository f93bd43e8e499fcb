/*
 * fuzz_publish.c - publish bodies: the JSON of single and batch publishes,
 * the spans jspan.c finds in it, and the records routes.c makes of it.
 *
 * For every input that jansson accepts (with the flags the server uses),
 * the spans of jspan.c are checked against jansson's own parse: the body
 * spans the whole text, every member of every object is found by
 * sd_jspan_member and its span parses to the same value, every array
 * splits into as many element spans as it has elements, each parsing to
 * the element.  Then the input is sent as the body of
 * POST /stream/fz/publish to the real server: invalid JSON must get 400,
 * no input may get a 5xx, and on 200 every event is read back from the
 * engine at the partition and offset given, with its "event" and "data"
 * equal to what was sent ("data" is stored as received).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_server.h"
#include "http/jspan.h"
#include "streamd/err.h"

#define PARSE_FLAGS (JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL)

static void fail(const char *what, const char *p, size_t n) {
  fprintf(stderr, "fuzz_publish: %s: %.*s\n", what, (int)(n < 300 ? n : 300), p);
  abort();
}

/* The span must parse to a value equal to v. */
static void check_value(const json_t *v, struct sd_span sp, int depth);

static void check_same(const json_t *v, struct sd_span sp, const char *what) {
  json_t *w = json_loadb(sp.p, sp.len, PARSE_FLAGS, NULL);
  if (w == NULL || !json_equal(v, w)) fail(what, sp.p, sp.len);
  json_decref(w);
}

static void check_value(const json_t *v, struct sd_span sp, int depth) {
  check_same(v, sp, "a span does not parse to its value");
  if (depth > 40) return;
  if (json_is_object(v)) {
    const char *k;
    json_t *m;
    json_object_foreach((json_t *)v, k, m) {
      struct sd_span ms;
      if (json_object_get(v, k) != m) continue; /* a key with a NUL: not reachable by name */
      if (!sd_jspan_member(sp, k, &ms)) fail("sd_jspan_member missed a member", sp.p, sp.len);
      check_value(m, ms, depth + 1);
    }
  } else if (json_is_array(v)) {
    size_t n = json_array_size(v);
    struct sd_span *el = n ? malloc(n * sizeof(*el)) : NULL;
    if (n && el == NULL) abort();
    if (sd_jspan_elements(sp, el, n) != n) fail("sd_jspan_elements miscounted", sp.p, sp.len);
    for (size_t i = 0; i < n; i++) check_value(json_array_get(v, i), el[i], depth + 1);
    free(el);
  }
}

struct got {
  json_t *rec;
};

static int keep(void *arg, const struct sd_record *rec) {
  struct got *g = arg;
  g->rec = json_loadb(rec->json, rec->json_len, PARSE_FLAGS, NULL);
  if (g->rec == NULL) fail("a stored record is not JSON", rec->json, rec->json_len);
  return 1;
}

/* Event i as sent was stored at partition p, offset o. */
static void check_stored(struct fz_server *sv, const json_t *ev, json_int_t p, json_int_t o) {
  struct sd_stream *s = sd_engine_find(sv->engine, "fz");
  struct got g = {NULL};
  if (s == NULL || p < 0 || o < 0) fail("a 200 names no stored event", "", 0);
  int rc = sd_stream_read(s, (uint32_t)p, (uint64_t)o, 1, SIZE_MAX, keep, &g);
  if (rc == SD_E_OFFSET_OUT_OF_RANGE) return; /* removed by retention already */
  if (g.rec == NULL) fail("an acknowledged event cannot be read", "", 0);
  if (!json_equal(json_object_get(g.rec, "event"), json_object_get(ev, "event")) ||
      !json_equal(json_object_get(g.rec, "data"), json_object_get(ev, "data"))) {
    char *a = json_dumps(g.rec, JSON_ENCODE_ANY);
    fail("the stored event differs from the one sent", a, a ? strlen(a) : 0);
  }
  json_decref(g.rec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static struct sd_buf req, resp;
  static unsigned runs;
  struct fz_server *sv = fz_server();
  if (++runs % 256 == 0) fz_server_reset(sv);
  const char *text = (const char *)data;

  json_t *j = json_loadb(text, size, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, NULL);
  if (j) {
    struct sd_span body = {sd_jspan_ws(text, text + size), 0};
    body.len = (size_t)(text + size - body.p);
    if (sd_jspan_ws(sd_jspan_skip(body.p, body.p + body.len), body.p + body.len) != body.p + body.len)
      fail("the body's span ends early", text, size);
    check_value(j, body, 0);
  }

  sd_buf_reset(&req);
  if (sd_buf_printf(&req, "POST /stream/fz/publish HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\n"
                          "Content-Length: %zu\r\n\r\n", size) != 0 ||
      sd_buf_append(&req, text, size) != 0)
    abort();
  fz_exchange(sv, req.data, req.len, &resp);
  int status = fz_status(&resp);
  if (status == 0 || status >= 500) fail("publish answered without a 2xx/4xx status", resp.data, resp.len);
  if (j == NULL && status != 400 && status != 413) fail("malformed JSON was not refused", resp.data, resp.len);
  if (status == 200) {
    const char *b = memmem(resp.data, resp.len, "\r\n\r\n", 4);
    json_t *r = b ? json_loadb(b + 4, resp.len - (size_t)(b + 4 - resp.data), 0, NULL) : NULL;
    json_t *list = json_is_array(j) ? j : json_object_get(j, "events");
    json_t *results = json_object_get(r, "results");
    if (r == NULL) fail("a 200 without a JSON body", resp.data, resp.len);
    if (results) {
      if (!json_is_array(list) || json_array_size(results) != json_array_size(list))
        fail("results do not match the events sent", resp.data, resp.len);
      for (size_t i = 0; i < json_array_size(results); i++) {
        json_t *x = json_array_get(results, i);
        if (json_object_get(x, "duplicate")) continue; /* the first copy is stored */
        check_stored(sv, json_array_get(list, i), json_integer_value(json_object_get(x, "partition")),
                     json_integer_value(json_object_get(x, "offset")));
      }
    } else if (!json_object_get(r, "duplicate")) {
      check_stored(sv, j, json_integer_value(json_object_get(r, "partition")),
                   json_integer_value(json_object_get(r, "offset")));
    }
    json_decref(r);
  }
  json_decref(j);
  return 0;
}
