/*
 * test_jcheck.c - the publish-body check of src/http/jcheck.h against
 * jansson, its oracle: fixed cases (what it accepts, what it leaves to
 * jansson, the envelope it writes) and a seeded mutation run in which
 * every body it accepts must be accepted by jansson too, with the envelope
 * equal to jansson's tree with each event's data replaced by null.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "http/jcheck.h"

#define FLAGS (JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL)

static int check(const char *text, struct sd_buf *env) { return sd_jcheck_publish(text, strlen(text), 32, env); }

static void assert_envelope(const char *text, const char *want) {
  struct sd_buf env = {0};
  assert_int_equal(check(text, &env), 1);
  assert_int_equal(env.len, strlen(want));
  assert_memory_equal(env.data, want, env.len);
  sd_buf_free(&env);
}

static void assert_undecided(const char *text) {
  struct sd_buf env = {0};
  if (check(text, &env) != 0) fail_msg("accepted: %s", text);
  sd_buf_free(&env);
}

static void test_envelopes(void **state) {
  (void)state;
  assert_envelope("{\"event\":\"a\",\"data\":{\"x\":[1,2]}}", "{\"event\":\"a\",\"data\":null}");
  assert_envelope(" {\"data\" : \"s\" , \"event\":\"a\"}\n", " {\"data\" : null , \"event\":\"a\"}\n");
  /* Batches: top-level array, and {"events":[...]}; data elsewhere stays. */
  assert_envelope("[{\"event\":\"a\",\"data\":1},{\"event\":\"b\",\"data\":[2],\"headers\":{\"data\":\"h\"}}]",
                  "[{\"event\":\"a\",\"data\":null},{\"event\":\"b\",\"data\":null,\"headers\":{\"data\":\"h\"}}]");
  assert_envelope("{\"events\":[{\"event\":\"a\",\"data\":{\"data\":1}}]}", "{\"events\":[{\"event\":\"a\",\"data\":null}]}");
  assert_envelope("[[{\"data\":1}]]", "[[{\"data\":1}]]");
  assert_envelope("{\"event\":\"a\",\"data\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \\u00e9\\n\\\"\"}",
                  "{\"event\":\"a\",\"data\":null}");
  assert_envelope("{\"event\":\"a\",\"data\":[-0,0.5,1e5,-2.5E-7,true,false,null,{}]}", "{\"event\":\"a\",\"data\":null}");
}

static void test_left_to_jansson(void **state) {
  (void)state;
  const char *cases[] = {
      "", "   ", "\"s\"", "1", "null",                            /* not an object or array */
      "{\"a\":1,\"a\":2}", "{\"e\":{\"k\":1,\"k\":1}}",           /* duplicate keys */
      "{\"\\u0061\":1}",                                          /* escaped key */
      "{\"a\":\"\\ud83d\\ude00\"}", "{\"a\":\"\\udc00\"}",        /* surrogate escapes */
      "{\"a\":1e400}", "{\"a\":1e100}",                           /* long exponents */
      "{\"a\":01}", "{\"a\":1.}", "{\"a\":.5}", "{\"a\":-}", "{\"a\":+1}", "{\"a\":0x10}",
      "{\"a\":\"\x01\"}", "{\"a\":\"\xc0\xaf\"}", "{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\xf4\x90\x80\x80\"}",
      "{\"a\":\"\xe2\x82\"}", "{\"a\":\"\\x\"}", "{\"a\":\"\\u12\"}",
      "{\"a\":tru}", "{\"a\":nul}", "{\"a\":1,}", "[1,]", "{\"a\" 1}", "{\"a\":1}x", "{\"a\":1}{}",
      "{\"a\":\"unterminated}", "[", "{", "{\"a\":[1,2}",
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) assert_undecided(cases[i]);
  /* Deeper than max_depth. */
  struct sd_buf env = {0};
  assert_int_equal(sd_jcheck_publish("[[[1]]]", 7, 2, &env), 0);
  assert_int_equal(sd_jcheck_publish("[[[1]]]", 7, 3, &env), 1);
  /* An object of many keys is left to jansson's hash table. */
  char big[2048] = "{";
  for (int k = 0; k < 40; k++) snprintf(big + strlen(big), sizeof(big) - strlen(big), "%s\"k%d\":%d", k ? "," : "", k, k);
  strcat(big, "}");
  assert_int_equal(check(big, &env), 0);
  sd_buf_free(&env);
}

static json_t *expected(json_t *j) {
  json_t *c = json_deep_copy(j), *x;
  size_t i;
  if (json_is_object(c)) {
    if (json_object_get(c, "data")) json_object_set_new(c, "data", json_null());
    json_t *list = json_object_get(c, "events");
    if (json_is_array(list))
      json_array_foreach(list, i, x) if (json_is_object(x) && json_object_get(x, "data")) json_object_set_new(x, "data", json_null());
  } else {
    json_array_foreach(c, i, x) if (json_is_object(x) && json_object_get(x, "data")) json_object_set_new(x, "data", json_null());
  }
  return c;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)rng;
}

static void test_agrees_with_jansson(void **state) {
  (void)state;
  static const char *seeds[] = {
      "{\"event\":\"a\",\"data\":{\"x\":[1,2.5,-3e5,true,false,null,\"s\\u00e9\\n\"]}}",
      "[{\"event\":\"a\",\"data\":1},{\"event\":\"b\",\"data\":{\"data\":2},\"headers\":{\"data\":\"x\"}}]",
      "{\"events\":[{\"event\":\"a\",\"data\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}],\"data\":[]}",
      "{\"event\":\"e\",\"partition_key\":\"k\",\"id\":\"i\",\"data\":{\"a\":{\"b\":{\"c\":[[[]]]}}}}",
      "{\"a\":1,\"b\":2}", "[\"\\ud83d\\ude00\",\"\\u0000\"]", "{\"event\":\"x\",\"data\":0.5e-7}",
  };
  static const char alphabet[] = "{}[]\",:\\u0123456789abcdefntrl-+.eE \t\n\x01\x7f\xc3\xa9\xed\xa0\x80\xf4\x90\xc0\xff";
  struct sd_buf env = {0};
  char buf[1024], tmp[1024];
  long iters = getenv("JCHECK_ITERS") ? atol(getenv("JCHECK_ITERS")) : 200000, accepted = 0, both = 0;
  for (long it = 0; it < iters; it++) {
    const char *s = seeds[rnd() % (sizeof(seeds) / sizeof(*seeds))];
    size_t n = strlen(s);
    memcpy(buf, s, n);
    for (int m = 1 + rnd() % 4; m > 0; m--) {
      uint32_t op = rnd() % 4, pos = n ? rnd() % (uint32_t)n : 0;
      char c = alphabet[rnd() % (sizeof(alphabet) - 1)];
      if (op == 0 && n) {
        buf[pos] = c;
      } else if (op == 1 && n + 1 < sizeof(buf)) {
        memmove(buf + pos + 1, buf + pos, n - pos);
        buf[pos] = c;
        n++;
      } else if (op == 2 && n) {
        memmove(buf + pos, buf + pos + 1, n - pos - 1);
        n--;
      } else if (op == 3 && n) {
        uint32_t a = rnd() % (uint32_t)n, l = rnd() % (uint32_t)(n - a + 1);
        if (n + l < sizeof(buf)) {
          memcpy(tmp, buf + a, l);
          memmove(buf + pos + l, buf + pos, n - pos);
          memcpy(buf + pos, tmp, l);
          n += l;
        }
      }
    }
    int rc = sd_jcheck_publish(buf, n, 32, &env);
    json_t *full = json_loadb(buf, n, FLAGS, NULL);
    if (rc == 1) {
      accepted++;
      json_t *e = json_loadb(env.data, env.len, FLAGS, NULL), *want = full ? expected(full) : NULL;
      if (full == NULL || e == NULL || !json_equal(e, want))
        fail_msg("jcheck accepted what jansson does not agree with: %.*s (envelope %.*s)", (int)n, buf, (int)env.len,
                 env.data);
      json_decref(e);
      json_decref(want);
    }
    if (full) both += rc == 1;
    json_decref(full);
  }
  sd_buf_free(&env);
  print_message("%ld mutated bodies, %ld accepted by the check (all by jansson too)\n", iters, accepted);
  assert_true(accepted > iters / 50); /* the run exercises acceptance, not only refusals */
  assert_int_equal(both, accepted);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_envelopes),
      cmocka_unit_test(test_left_to_jansson),
      cmocka_unit_test(test_agrees_with_jansson),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
