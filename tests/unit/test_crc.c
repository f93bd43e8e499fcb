/*
 * test_crc.c - the CRC32C wrapper of src/util/crc.h (ISA-L underneath):
 * the standard check value, chaining over pieces, and agreement with a
 * bitwise reference implementation over many lengths and alignments.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "util/crc.h"

/* Bitwise CRC32C (reflected, polynomial 0x82F63B78), the reference. */
static uint32_t crc32c_ref(const void *p, size_t n, uint32_t crc) {
  const unsigned char *b = p;
  crc = ~crc;
  for (size_t i = 0; i < n; i++) {
    crc ^= b[i];
    for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return ~crc;
}

/* Deterministic bytes (xorshift). */
static void fill(unsigned char *p, size_t n, uint32_t seed) {
  uint32_t x = seed ? seed : 1;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p[i] = (unsigned char)x;
  }
}

static void test_crc_check_value(void **state) {
  (void)state;
  assert_int_equal(sd_crc32c("123456789", 9, 0), 0xE3069283u);
  assert_int_equal(crc32c_ref("123456789", 9, 0), 0xE3069283u);
}

static void test_crc_empty_is_identity(void **state) {
  (void)state;
  assert_int_equal(sd_crc32c("", 0, 0), 0u);
  uint32_t c = sd_crc32c("abc", 3, 0);
  assert_int_equal(sd_crc32c("", 0, c), c);
}

static void test_crc_known_vectors(void **state) {
  (void)state;
  unsigned char buf[32];
  /* RFC 3720 (iSCSI) B.4 test patterns. */
  memset(buf, 0, sizeof(buf));
  assert_int_equal(sd_crc32c(buf, 32, 0), 0x8A9136AAu);
  memset(buf, 0xff, sizeof(buf));
  assert_int_equal(sd_crc32c(buf, 32, 0), 0x62A8AB43u);
  for (int i = 0; i < 32; i++) buf[i] = (unsigned char)i;
  assert_int_equal(sd_crc32c(buf, 32, 0), 0x46DD794Eu);
  for (int i = 0; i < 32; i++) buf[i] = (unsigned char)(31 - i);
  assert_int_equal(sd_crc32c(buf, 32, 0), 0x113FDB5Cu);
}

static void test_crc_chaining_every_split(void **state) {
  (void)state;
  const char *s = "123456789";
  for (size_t cut = 0; cut <= 9; cut++) {
    uint32_t c = sd_crc32c(s, cut, 0);
    c = sd_crc32c(s + cut, 9 - cut, c);
    assert_int_equal(c, 0xE3069283u);
  }
  /* Three pieces of a larger buffer. */
  unsigned char big[5000];
  fill(big, sizeof(big), 7);
  uint32_t one = sd_crc32c(big, sizeof(big), 0);
  for (size_t a = 0; a < sizeof(big); a += 613)
    for (size_t b = a; b < sizeof(big); b += 1201) {
      uint32_t c = sd_crc32c(big, a, 0);
      c = sd_crc32c(big + a, b - a, c);
      c = sd_crc32c(big + b, sizeof(big) - b, c);
      assert_int_equal(c, one);
    }
}

static void test_crc_matches_reference(void **state) {
  (void)state;
  static unsigned char buf[70000];
  fill(buf, sizeof(buf), 12345);
  /* Every length up to 300 at every alignment up to 16, then big ones. */
  for (size_t off = 0; off < 16; off++)
    for (size_t n = 0; n <= 300; n++) assert_int_equal(sd_crc32c(buf + off, n, 0), crc32c_ref(buf + off, n, 0));
  const size_t big[] = {1023, 1024, 4095, 4096, 4097, 65536, 69999};
  for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
    assert_int_equal(sd_crc32c(buf + 1, big[i], 0), crc32c_ref(buf + 1, big[i], 0));
    assert_int_equal(sd_crc32c(buf, big[i], 0xdeadbeef), crc32c_ref(buf, big[i], 0xdeadbeef));
  }
}

static void test_crc_detects_single_bit_flips(void **state) {
  (void)state;
  unsigned char buf[256];
  fill(buf, sizeof(buf), 99);
  uint32_t c = sd_crc32c(buf, sizeof(buf), 0);
  for (size_t i = 0; i < sizeof(buf); i++)
    for (int bit = 0; bit < 8; bit++) {
      buf[i] ^= (unsigned char)(1u << bit);
      assert_int_not_equal(sd_crc32c(buf, sizeof(buf), 0), c);
      buf[i] ^= (unsigned char)(1u << bit);
    }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crc_check_value),
      cmocka_unit_test(test_crc_empty_is_identity),
      cmocka_unit_test(test_crc_known_vectors),
      cmocka_unit_test(test_crc_chaining_every_split),
      cmocka_unit_test(test_crc_matches_reference),
      cmocka_unit_test(test_crc_detects_single_bit_flips),
  };
  return cmocka_run_group_tests_name("crc", tests, NULL, NULL);
}
