/*
 * fuzz_jcheck.c - the publish-body check (src/http/jcheck.h) against
 * jansson, its oracle: every input the check accepts must be accepted by
 * jansson with the publish flags, and the envelope it writes must parse to
 * jansson's tree of the input with each event's data replaced by null.
 * Inputs it leaves undecided are jansson's alone and are not checked.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "http/jcheck.h"

#define FLAGS (JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL)

static void null_data(json_t *o) {
  if (json_is_object(o) && json_object_get(o, "data")) json_object_set_new(o, "data", json_null());
}

static json_t *expected(json_t *full) {
  json_t *c = json_deep_copy(full), *x;
  size_t i;
  if (json_is_object(c)) {
    null_data(c);
    json_t *list = json_object_get(c, "events");
    if (json_is_array(list)) json_array_foreach(list, i, x) null_data(x);
  } else {
    json_array_foreach(c, i, x) null_data(x);
  }
  return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static struct sd_buf env;
  int rc = sd_jcheck_publish((const char *)data, size, 32, &env);
  if (rc != 1) return 0;
  json_t *full = json_loadb((const char *)data, size, FLAGS, NULL);
  json_t *e = json_loadb(env.data, env.len, FLAGS, NULL);
  json_t *want = full ? expected(full) : NULL;
  if (full == NULL || e == NULL || !json_equal(e, want)) {
    fprintf(stderr, "jcheck accepted %.*s\nenvelope %.*s\njansson: full %s, envelope %s, equal %d\n", (int)size,
            (const char *)data, (int)env.len, env.data, full ? "ok" : "refused", e ? "ok" : "refused",
            full && e ? json_equal(e, want) : -1);
    abort();
  }
  json_decref(full);
  json_decref(e);
  json_decref(want);
  return 0;
}
