/*
 * test_metrics.c - the fixed-bucket histograms and request counters of
 * src/util/metrics.c: which bucket a value lands in (bounds are
 * inclusive), the cumulative text form, labels, and the request
 * histogram's bounded label values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "streamd/buf.h"
#include "streamd/metrics.h"

/* The value of the sample line starting with prefix (the text up to the value). */
static long long sample(const struct sd_buf *b, const char *prefix) {
  size_t n = strlen(prefix);
  for (const char *p = b->data; p && p < b->data + b->len;) {
    if (strncmp(p, prefix, n) == 0 && p[n] == ' ') return atoll(p + n + 1);
    p = memchr(p, '\n', (size_t)(b->data + b->len - p));
    if (p) p++;
  }
  fail_msg("no sample %s in:\n%.*s", prefix, (int)b->len, b->data);
  return -1;
}

static void test_buckets_inclusive_and_cumulative(void **state) {
  (void)state;
  struct sd_hist h;
  struct sd_buf b = {0};
  memset(&h, 0, sizeof(h));
  sd_hist_observe_ns(&h, 0);              /* le 0.0001 */
  sd_hist_observe_ns(&h, 100000);         /* exactly 100 us: still le 0.0001 */
  sd_hist_observe_ns(&h, 100001);         /* le 0.00025 */
  sd_hist_observe_ns(&h, 1000000000);     /* exactly 1 s */
  sd_hist_observe_ns(&h, 61000000000ull); /* above the last bound: +Inf only */
  assert_int_equal(h.count, 5);
  assert_int_equal(sd_hist_write(&b, "x_seconds", "", &h), 0);
  assert_int_equal(sample(&b, "x_seconds_bucket{le=\"0.0001\"}"), 2);
  assert_int_equal(sample(&b, "x_seconds_bucket{le=\"0.00025\"}"), 3);
  assert_int_equal(sample(&b, "x_seconds_bucket{le=\"0.5\"}"), 3);
  assert_int_equal(sample(&b, "x_seconds_bucket{le=\"1\"}"), 4);
  assert_int_equal(sample(&b, "x_seconds_bucket{le=\"60\"}"), 4);
  assert_int_equal(sample(&b, "x_seconds_bucket{le=\"+Inf\"}"), 5);
  assert_int_equal(sample(&b, "x_seconds_count"), 5);
  assert_non_null(strstr(b.data, "x_seconds_sum 62.000200001\n"));
  sd_buf_free(&b);
}

static void test_labels(void **state) {
  (void)state;
  struct sd_hist h;
  struct sd_buf b = {0};
  memset(&h, 0, sizeof(h));
  sd_hist_observe_ns(&h, 3000000);
  assert_int_equal(sd_hist_write(&b, "y_seconds", "a=\"1\"", &h), 0);
  assert_int_equal(sample(&b, "y_seconds_bucket{a=\"1\",le=\"0.0025\"}"), 0);
  assert_int_equal(sample(&b, "y_seconds_bucket{a=\"1\",le=\"0.005\"}"), 1);
  assert_int_equal(sample(&b, "y_seconds_count{a=\"1\"}"), 1);
  assert_non_null(strstr(b.data, "y_seconds_sum{a=\"1\"} 0.003000000\n"));
  sd_buf_free(&b);
}

static void test_request_series(void **state) {
  (void)state;
  static struct sd_metrics m;
  struct sd_buf b = {0};
  sd_metrics_request(&m, SD_METRICS_ROUTE_PUBLISH, 200, 1000);
  sd_metrics_request(&m, SD_METRICS_ROUTE_PUBLISH, 201, 1000);
  sd_metrics_request(&m, SD_METRICS_ROUTE_PUBLISH, 503, 1000);
  sd_metrics_request(&m, SD_METRICS_ROUTE_WEBSOCKET, 101, 1000);
  sd_metrics_request(&m, SD_METRICS_ROUTE_CONSUME, 0, 1000);   /* no response */
  sd_metrics_request(&m, SD_METRICS_ROUTE_CONSUME, 999, 1000); /* out of range: "none" */
  sd_metrics_request(&m, (enum sd_metrics_route)77, 404, 1000); /* unknown family: "other" */
  assert_int_equal(sd_metrics_write_requests(&b, &m), 0);
  assert_non_null(strstr(b.data, "# TYPE streamd_http_request_duration_seconds histogram\n"));
  const char *p = "streamd_http_request_duration_seconds_count";
  char name[160];
  snprintf(name, sizeof(name), "%s{route=\"publish\",status=\"2xx\"}", p);
  assert_int_equal(sample(&b, name), 2);
  snprintf(name, sizeof(name), "%s{route=\"publish\",status=\"5xx\"}", p);
  assert_int_equal(sample(&b, name), 1);
  snprintf(name, sizeof(name), "%s{route=\"websocket\",status=\"1xx\"}", p);
  assert_int_equal(sample(&b, name), 1);
  snprintf(name, sizeof(name), "%s{route=\"consume\",status=\"none\"}", p);
  assert_int_equal(sample(&b, name), 2);
  snprintf(name, sizeof(name), "%s{route=\"other\",status=\"4xx\"}", p);
  assert_int_equal(sample(&b, name), 1);
  /* Series that never counted a request are left out. */
  assert_null(strstr(b.data, "route=\"health\""));
  assert_null(strstr(b.data, "status=\"3xx\""));
  sd_buf_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buckets_inclusive_and_cumulative),
      cmocka_unit_test(test_labels),
      cmocka_unit_test(test_request_series),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
