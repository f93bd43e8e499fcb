/*
 * test_auth.c - the keyring of src/auth/auth.c: hashing against a known
 * SHA-256 value, key lines and keys files accepted and refused, grants
 * matched by glob, lookups, reference counting, loopback addresses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "streamd/auth.h"
#include "streamd/err.h"

#define KEY_A "0123456789abcdef-key-a"
#define KEY_B "0123456789abcdef-key-b"

static void line_for(char *out, size_t cap, const char *name, const char *key, const char *grants) {
  char h[SD_AUTH_HASH_LINE];
  sd_auth_hash(key, strlen(key), h);
  snprintf(out, cap, "%s %s %s\n", name, h, grants);
}

static void test_hash_known_value(void **state) {
  (void)state;
  char h[SD_AUTH_HASH_LINE];
  sd_auth_hash("abc", 3, h);
  assert_string_equal(h, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_key_check(void **state) {
  (void)state;
  char err[256];
  assert_int_equal(sd_auth_key_check(KEY_A, strlen(KEY_A), err, sizeof(err)), 0);
  assert_int_equal(sd_auth_key_check("short", 5, err, sizeof(err)), SD_E_INVALID_PARAMETER);
  assert_int_equal(sd_auth_key_check("0123456789abcdef/", 17, err, sizeof(err)), SD_E_INVALID_PARAMETER);
  assert_int_equal(sd_auth_key_check("0123456789abcdef ", 17, err, sizeof(err)), SD_E_INVALID_PARAMETER);
}

static void test_grants_and_lookup(void **state) {
  (void)state;
  char lines[1024], l2[256], err[256];
  struct sd_auth *a;
  line_for(lines, sizeof(lines), "a", KEY_A, "read:orders.* write:orders.eu admin:tmp-?");
  line_for(l2, sizeof(l2), "b", KEY_B, "read+write+admin:*");
  strcat(lines, "\n   \n");
  strcat(lines, l2);
  assert_int_equal(sd_auth_new(lines, NULL, &a, err, sizeof(err)), 0);
  assert_int_equal(sd_auth_count(a), 2);
  const struct sd_auth_key *ka = sd_auth_find(a, KEY_A, strlen(KEY_A));
  const struct sd_auth_key *kb = sd_auth_find(a, KEY_B, strlen(KEY_B));
  assert_non_null(ka);
  assert_non_null(kb);
  assert_string_equal(sd_auth_key_name(ka), "a");
  assert_string_equal(sd_auth_key_name(kb), "b");
  assert_null(sd_auth_find(a, KEY_A, strlen(KEY_A) - 1));
  assert_null(sd_auth_find(a, "0123456789abcdef-key-c", 22));
  /* read on orders.*, write only on orders.eu, admin on tmp-X */
  assert_true(sd_auth_allows(ka, SD_AUTH_READ, "orders.us"));
  assert_true(sd_auth_allows(ka, SD_AUTH_READ, "orders.eu.west"));
  assert_false(sd_auth_allows(ka, SD_AUTH_READ, "orders"));
  assert_false(sd_auth_allows(ka, SD_AUTH_WRITE, "orders.us"));
  assert_true(sd_auth_allows(ka, SD_AUTH_WRITE, "orders.eu"));
  assert_true(sd_auth_allows(ka, SD_AUTH_READ | SD_AUTH_WRITE, "orders.eu"));
  assert_true(sd_auth_allows(ka, SD_AUTH_ADMIN, "tmp-1"));
  assert_false(sd_auth_allows(ka, SD_AUTH_ADMIN, "tmp-12"));
  assert_false(sd_auth_allows(ka, SD_AUTH_READ, NULL));
  assert_true(sd_auth_allows(kb, SD_AUTH_READ | SD_AUTH_WRITE | SD_AUTH_ADMIN, NULL));
  assert_true(sd_auth_any(ka, "tmp-x"));
  assert_false(sd_auth_any(ka, "billing"));
  /* A reference keeps the keyring (and its keys) alive. */
  struct sd_auth *r = sd_auth_ref(a);
  sd_auth_unref(a);
  assert_string_equal(sd_auth_key_name(sd_auth_find(r, KEY_A, strlen(KEY_A))), "a");
  sd_auth_unref(r);
  sd_auth_unref(NULL);
}

static void test_bad_lines(void **state) {
  (void)state;
  static const char *const bad[] = {
      "a",                                     /* no hash */
      "a sha256:00",                           /* short hash */
      "a sha256:zz00000000000000000000000000000000000000000000000000000000000000 read:*", /* not hex */
      "a md5:0000000000000000000000000000000000000000000000000000000000000000000000 read:*",
      "a sha256:0000000000000000000000000000000000000000000000000000000000000000",         /* no grant */
      "a sha256:0000000000000000000000000000000000000000000000000000000000000000 read",    /* no colon */
      "a sha256:0000000000000000000000000000000000000000000000000000000000000000 read:",   /* empty pattern */
      "a sha256:0000000000000000000000000000000000000000000000000000000000000000 :x",      /* no perms */
      "a sha256:0000000000000000000000000000000000000000000000000000000000000000 reed:x",
      "a sha256:0000000000000000000000000000000000000000000000000000000000000000 read+:x",
      "a sha256:0000000000000000000000000000000000000000000000000000000000000000 read:a/b",
      "a sha256:0000000000000000000000000000000000000000000000000000000000000000 read:*\n"
      "a sha256:1111111111111111111111111111111111111111111111111111111111111111 read:*", /* same name */
      "a sha256:0000000000000000000000000000000000000000000000000000000000000000 read:*\n"
      "b sha256:0000000000000000000000000000000000000000000000000000000000000000 read:*", /* same hash */
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    struct sd_auth *a = NULL;
    char err[256] = "";
    int rc = sd_auth_new(bad[i], NULL, &a, err, sizeof(err));
    if (rc != SD_E_INVALID_PARAMETER) fail_msg("line %zu accepted: %s", i, bad[i]);
    assert_null(a);
    assert_true(strlen(err) > 0);
  }
}

static void test_keys_file(void **state) {
  (void)state;
  char path[] = "/tmp/streamd-keys-XXXXXX", line[256], err[256];
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w");
  line_for(line, sizeof(line), "filekey", KEY_B, "write:x.*");
  fprintf(f, "# comment\n\n  %s", line);
  fclose(f);
  struct sd_auth *a;
  line_for(line, sizeof(line), "cfgkey", KEY_A, "read:*");
  assert_int_equal(sd_auth_new(line, path, &a, err, sizeof(err)), 0);
  assert_int_equal(sd_auth_count(a), 2);
  assert_true(sd_auth_allows(sd_auth_find(a, KEY_B, strlen(KEY_B)), SD_AUTH_WRITE, "x.1"));
  sd_auth_unref(a);
  /* A bad line names the file and line. */
  f = fopen(path, "a");
  fprintf(f, "broken line\n");
  fclose(f);
  assert_int_equal(sd_auth_new(NULL, path, &a, err, sizeof(err)), SD_E_INVALID_PARAMETER);
  assert_non_null(strstr(err, ":4:"));
  unlink(path);
  assert_true(sd_auth_new(NULL, path, &a, err, sizeof(err)) < 0);
  /* No keys at all is a valid, empty keyring. */
  assert_int_equal(sd_auth_new("", "", &a, err, sizeof(err)), 0);
  assert_int_equal(sd_auth_count(a), 0);
  assert_null(sd_auth_find(a, KEY_A, strlen(KEY_A)));
  sd_auth_unref(a);
}

static void test_loopback(void **state) {
  (void)state;
  assert_true(sd_auth_is_loopback("127.0.0.1"));
  assert_true(sd_auth_is_loopback("127.1.2.3"));
  assert_true(sd_auth_is_loopback("::1"));
  assert_true(sd_auth_is_loopback("::ffff:127.0.0.1"));
  assert_false(sd_auth_is_loopback("0.0.0.0"));
  assert_false(sd_auth_is_loopback("::"));
  assert_false(sd_auth_is_loopback("10.0.0.1"));
  assert_false(sd_auth_is_loopback("128.0.0.1"));
  assert_false(sd_auth_is_loopback("::ffff:10.0.0.1"));
  assert_false(sd_auth_is_loopback("localhost"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hash_known_value), cmocka_unit_test(test_key_check),
      cmocka_unit_test(test_grants_and_lookup), cmocka_unit_test(test_bad_lines),
      cmocka_unit_test(test_keys_file),         cmocka_unit_test(test_loopback),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
